//! The mount daemon's control handler: `domfs hidden …` and `domfs audit …` on a live
//! mount arrive here through the control socket (see [`crate::control`]), already checked
//! to come from root or the operator group.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use fuser::{INodeNo, Notifier};

use crate::control::peer::Peer;
use crate::control::protocol::{Answer, Request};
use crate::control::server::{Handler, write_answer};
use crate::filesystem::Filesystem;
use crate::filesystem::inode::ROOT_INO;

pub struct MountControl {
    pub fs: Arc<Filesystem>,
    /// The agent that released the key (agent mode): `domfs audit` asks it for the
    /// entries the TTP keeps.
    pub agent: Option<PathBuf>,
    /// The mount's lease (agent mode): a read-only mount ships its queued entries to the
    /// TTP before `domfs audit` reads them there.
    pub lease: Option<super::mount_agent::Lease>,
    /// The FUSE session's notifier, set once mounted: a restore tells the kernel to drop
    /// what it remembers of the name (a cached "no such file" would hide the restored
    /// file for up to the entry timeout).
    pub kernel: Arc<OnceLock<Notifier>>,
}

impl Handler for MountControl {
    fn handle(&self, request: Request, peer: &Peer, out: &mut dyn Write) -> std::io::Result<()> {
        if self.fs.is_revoked() {
            return write_answer(out, &Answer::failed("access to this volume was revoked", 3));
        }
        if let Request::HiddenRestore { path, to, .. } = &request {
            // The kernel forgets the name before the caller hears the restore is done
            // (the answer is small: held back until then).
            let mut answer = Vec::new();
            super::hidden::live::serve_as(&self.fs, &request, peer, &mut answer)?;
            self.forget_name(to.as_deref().unwrap_or(path));
            out.write_all(&answer)?;
            return out.flush();
        }
        if super::hidden::live::serve_as(&self.fs, &request, peer, out)? {
            return Ok(());
        }
        if matches!(
            request,
            Request::AuditVerify {} | Request::AuditQuery { .. }
        ) && self.fs.is_read_only()
            && let Some(lease) = &self.lease
            && let Err(e) = super::mount_anchor::ship_now(lease, &self.fs)
        {
            tracing::warn!("shipping the audit entries before `domfs audit`: {e:#}");
        }
        if super::audit::live::serve(&self.fs, self.agent.as_deref(), &request, out)? {
            return Ok(());
        }
        write_answer(
            out,
            &Answer::failed("this daemon does not serve that request", 2),
        )
    }
}

impl MountControl {
    /// Drops the kernel's cached entry for `path` (relative to the volume's root), if its
    /// directory exists; harmless when nothing was cached.
    fn forget_name(&self, path: &str) {
        let Some(kernel) = self.kernel.get() else {
            return;
        };
        let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let Some(name) = parts.pop() else {
            return;
        };
        let mut parent = ROOT_INO;
        for part in parts {
            match self.fs.lookup(parent, part.as_bytes()) {
                Ok(entry) => {
                    // `lookup` counts a kernel reference; this one is not the kernel's.
                    self.fs.forget(entry.ino, 1);
                    parent = entry.ino;
                }
                Err(_) => return,
            }
        }
        if let Err(e) = kernel.inval_entry(INodeNo(parent), OsStr::from_bytes(name.as_bytes())) {
            tracing::debug!("telling the kernel about the restored /{path}: {e}");
        }
    }
}
