//! The mount daemon's control socket: how `domfs hidden` and `domfs audit` reach a live
//! mount. One Unix socket per mount, at a path derived from the mount point (so a client
//! given the mount point finds it), mode 0660 with the operator group, and every
//! connection's peer credentials checked (SO_PEERCRED): root, or a member of the
//! operator group given at mount (`domfs mount --operator-group GROUP`). Ordinary
//! processes cannot reach hidden data or the audit trail through the mount at all.
//!
//! Protocol: one JSON request line; the answer is one JSON header line
//! (`{"ok":true,...}` or `{"ok":false,"error":"…","code":N}`), optionally followed by
//! `len` raw bytes (file contents for `hidden show`). Lines are bounded.

pub mod client;
pub mod peer;
pub mod protocol;
pub mod server;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Where control sockets live.
pub const SOCKET_DIR: &str = "/run/domfs/mounts";

/// The control socket of the mount at `mountpoint` (canonical path).
pub fn socket_path(mountpoint: &Path) -> PathBuf {
    let digest = Sha256::digest(mountpoint.as_os_str().as_encoded_bytes());
    PathBuf::from(SOCKET_DIR).join(format!("{}.sock", hex::encode(&digest[..12])))
}
