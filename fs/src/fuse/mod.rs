//! The FUSE adapter (layer 7 of DESIGN.md): kernel requests in, filesystem calls out.
//!
//! Thin by design: every request is translated into one [`crate::filesystem::Filesystem`]
//! call and answered with exactly one reply; errors become their errno through
//! [`crate::Error::errno`]. No policy lives here: permission checks are the kernel's
//! (`default_permissions`), durability and space accounting the filesystem's.
//!
//! # Kernel options chosen at `init`, and why
//!
//! - **max_write 1 MiB** (the kernel's cap): a 1 MiB sequential write is one request, not
//!   eight; needs `FUSE_MAX_PAGES`, which fuser asks for when the kernel offers it.
//! - **async reads** (`FUSE_ASYNC_READ`, fuser's default): read-ahead and concurrent reads
//!   of one file are sent in parallel instead of one at a time.
//! - **writeback cache** (`FUSE_WRITEBACK_CACHE`): only when asked for
//!   ([`DomFuse::with_writeback_cache`], `domfs mount --writeback-cache`). It makes small
//!   buffered writes cheap (they land in the kernel's page cache and reach the daemon in
//!   batches), but the kernel then accepts every write() without asking the daemon, so a
//!   full volume shows up late: write() succeeds, the writeback gets ENOSPC, and fsync or
//!   close reports it (measured: 200 MiB "written" to a 64 MiB volume, then fsync ENOSPC).
//!   No reserve can prevent that, since nothing reaches the daemon at write() time. A
//!   database treats a failed fsync as fatal (PostgreSQL panics), and the volume must
//!   report ENOSPC at write time, so the default is write-through: every write() is a
//!   request (of up to max_write bytes) and fails at once when the volume is full. The
//!   price is small: one fio run here showed +30% for 4 KiB random writes with an fsync
//!   every 32 writes with the cache, while bench/compare.sh (two full runs) showed none —
//!   and no difference for 1 MiB sequential writes or 8 KiB 70/30 with fdatasync. With the
//!   writeback cache on, the kernel reads through write-only handles (handles here carry
//!   no access mode) and writes at offsets of its own choosing.
//!   Either way the kernel resolves `O_APPEND` (it places the write at its size), so the
//!   daemon writes at exactly the offset it is given and never looks at `O_APPEND`; and
//!   every durability point (fsync, fdatasync, close of the last handle, unmount) has the
//!   kernel send all its data first.
//! - **parallel directory operations** (`FUSE_PARALLEL_DIROPS`): lookups and readdirs in
//!   one directory are not serialised by the kernel.
//! - **async direct I/O** (`FUSE_ASYNC_DIO`): a large `O_DIRECT` request is split into
//!   requests that are in flight together.
//! - **cached symlinks** (`FUSE_CACHE_SYMLINKS`): a symlink's target never changes.
//! - **max_background 64**: enough read-ahead (and writeback) requests in flight for the
//!   several dispatch threads the mount runs ([`THREADS`]).
//! - Not chosen: remote POSIX/flock locks (the kernel's local locking is right on one host),
//!   `FUSE_HANDLE_KILLPRIV` (the kernel clears setuid/setgid itself and sends the new mode),
//!   `FUSE_DONT_MASK` (the kernel applies the umask), readdirplus (the kernel looks up
//!   what it needs), `FUSE_EXPORT_SUPPORT` (no NFS export).
//!
//! Opens reply `FOPEN_KEEP_CACHE`: nothing changes a file behind the kernel's back, so its
//! cached pages stay valid across opens. `O_DIRECT` opens are accepted as they are (the
//! kernel bypasses the page cache for them). A name that does not exist is answered with
//! a negative entry (inode 0) for [`attr::TTL`], so repeated probes for absent files
//! (databases look for their journals all the time) are answered by the kernel.

pub mod attr;
pub mod audit;
pub mod mount;
pub mod mountinfo;
mod ops;

pub use mount::{MountSettings, THREADS, mount};

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use fuser::{Errno, ReplyEmpty, ReplyEntry, ReplyXattr, Request};

use crate::Error;
use crate::audit::AuditOp;
use crate::filesystem::{Caller, Entry, Filesystem, RenameFlags};

use attr::{TTL, entry_attr};
use audit::{Auditor, Event};

/// An audit event and the name its inode gets when the operation succeeds.
type NamedEvent = (Event, Option<(u64, Vec<u8>)>);

/// The largest write request the kernel sends (its own cap).
pub const MAX_WRITE: u32 = 1 << 20;
/// Pending background requests (read-ahead, writeback) the kernel may have in flight.
pub const MAX_BACKGROUND: u16 = 64;
/// Directory entries fetched per readdir request (a 32 KiB getdents buffer holds at most
/// ~1000 entries; the reply stops early when the kernel's buffer is full).
const READDIR_BATCH: usize = 1024;

/// The `fuser::Filesystem` over a domfs [`Filesystem`].
pub struct DomFuse {
    fs: Arc<Filesystem>,
    writeback_cache: bool,
    /// `None` only for a benchmark of auditing's cost ([`audit::auditor_for`]).
    audit: Option<Arc<Auditor>>,
    /// Stops the thread that commits waiting audit entries.
    stop_committer: Arc<AtomicBool>,
}

impl DomFuse {
    pub fn new(fs: Arc<Filesystem>) -> Self {
        let audit = audit::auditor_for(&fs);
        Self {
            fs,
            writeback_cache: false,
            audit,
            stop_committer: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Asks the kernel for its writeback cache (see the module documentation for what a
    /// full volume then does). Ignored on a read-only filesystem.
    pub fn with_writeback_cache(mut self, on: bool) -> Self {
        self.writeback_cache = on;
        self
    }

    pub fn filesystem(&self) -> &Arc<Filesystem> {
        &self.fs
    }
}

/// The errno for a failed request; integrity and I/O failures are logged (refusals are
/// the caller's business and only show at debug level).
fn errno(op: &str, ino: u64, e: &Error) -> Errno {
    match e {
        Error::Posix(_)
        | Error::NoSpace
        | Error::ReadOnly
        | Error::OutOfRange(_)
        | Error::Invalid(_) => {
            tracing::debug!("{op} (inode {ino}): {e}");
        }
        _ => tracing::error!("{op} (inode {ino}): {e}"),
    }
    Errno::from_i32(e.errno())
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn name_bytes(name: &OsStr) -> &[u8] {
    name.as_bytes()
}

/// The reply to a getxattr/listxattr: the size for a size-0 probe, the bytes when they
/// fit, ERANGE when they do not.
fn reply_xattr(reply: ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        match u32::try_from(value.len()) {
            Ok(len) => reply.size(len),
            Err(_) => reply.error(Errno::E2BIG),
        }
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

impl DomFuse {
    fn reply_entry(
        &self,
        req: &Request,
        reply: ReplyEntry,
        result: crate::Result<Entry>,
        op: &str,
        parent: u64,
    ) {
        match result {
            Ok(entry) => {
                let (attr, generation) = entry_attr(&entry);
                reply.entry(&TTL, &attr, generation);
            }
            Err(e) => reply.error(self.fail(req, op, parent, &e)),
        }
    }

    fn reply_empty(
        &self,
        req: &Request,
        reply: ReplyEmpty,
        result: crate::Result<()>,
        op: &str,
        ino: u64,
    ) {
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(req, op, ino, &e)),
        }
    }

    /// Creates a node and records it (`create` entry with the kind in its detail).
    fn created(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        kind: &str,
        result: &crate::Result<Entry>,
    ) {
        let path = self.fs.path_in(parent, name_bytes(name));
        let ino = result.as_ref().map_or(0, |e| e.ino);
        if ino != 0 {
            self.fs.remember_name(parent, name_bytes(name), ino);
        }
        self.note(
            req,
            Event::new(AuditOp::Create, ino, path).detail(kind),
            result,
        );
    }

    /// The entry a removal of `name` will get: the name goes, the content is kept hidden.
    fn hide_event(&self, parent: u64, name: &OsStr, how: &str) -> Event {
        let name = name_bytes(name);
        Event::new(
            AuditOp::Hide,
            self.fs.child_ino(parent, name).unwrap_or(0),
            self.fs.path_in(parent, name),
        )
        .detail(how)
    }

    /// The entries a rename will get, taken before it: the file moved, and the file it
    /// replaces (hidden) or exchanges with (moved the other way).
    fn rename_events(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Vec<NamedEvent> {
        let (name, newname) = (name_bytes(name), name_bytes(newname));
        let from = self.fs.path_in(parent, name);
        let to = self.fs.path_in(newparent, newname);
        let ino = self.fs.child_ino(parent, name).unwrap_or(0);
        let other = self.fs.child_ino(newparent, newname);
        let to_text = |p: &Option<String>| format!("to {}", p.as_deref().unwrap_or("?"));
        let mut events = vec![(
            Event::new(AuditOp::Rename, ino, from.clone()).detail(to_text(&to)),
            Some((newparent, newname.to_vec())),
        )];
        match other {
            Some(other) if flags.exchange => events.push((
                Event::new(AuditOp::Rename, other, to).detail(to_text(&from)),
                Some((parent, name.to_vec())),
            )),
            Some(other) if other != ino => events.push((
                Event::new(AuditOp::Hide, other, to).detail("replaced by a rename"),
                None,
            )),
            _ => {}
        }
        events
    }

    /// Records a rename's entries (only the first when it failed) and learns the names.
    fn renamed(&self, req: &Request, events: Vec<NamedEvent>, result: &crate::Result<()>) {
        for (i, (event, new_name)) in events.into_iter().enumerate() {
            if result.is_err() && i > 0 {
                break;
            }
            if result.is_ok()
                && event.ino != 0
                && let Some((dir, name)) = &new_name
            {
                self.fs.remember_name(*dir, name, event.ino);
            }
            self.note(req, event, result);
        }
    }

    /// A durability point: everything done so far is committed when this returns Ok.
    fn sync(&self, req: &Request, op: &str, ino: u64) -> Result<(), Errno> {
        self.fs.sync().map_err(|e| {
            tracing::error!("{op} (inode {ino}): commit failed: {e}");
            // A block that did not verify is recorded like any other.
            if matches!(e, Error::Integrity(_) | Error::ForgedSuperblock(_)) {
                self.fail(req, op, ino, &e);
            }
            // Whatever went wrong, the caller must learn that its data is not durable.
            Errno::EIO
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_config_runs_threads_and_honours_allow_other() {
        let settings = MountSettings {
            fsname: "/srv/v.vol".into(),
            read_only: true,
            allow_other: true,
        };
        let config = settings.session_config();
        assert_eq!(config.acl, fuser::SessionACL::All);
        assert_eq!(config.n_threads, Some(THREADS));
        assert!(config.clone_fd);
    }
}
