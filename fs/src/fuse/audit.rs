//! The audit hooks of the FUSE adapter: who asked (uid, gid, pid from the request; the
//! user's name and the process's name looked up and cached; the host named at mount), and
//! one entry per open, create, setattr, rename, link, hide and integrity error. The
//! filesystem queues the entries and commits them with the data ([`Filesystem::audit`]).
//!
//! Reads and writes are not audited one by one (the open is the viewing event), so the
//! data path does no audit work at all.
//!
//! For measuring what auditing costs, `DOMFS_BENCH_NO_AUDIT=1` in the daemon's
//! environment turns the hooks off — only on key-file volumes (which make no security
//! claim; see DESIGN.md), and with an error in the log. An agent-mode mount ignores it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use fuser::{Errno, Request};

use super::{DomFuse, errno};
use crate::Error;
use crate::audit::{AccessMode, AuditOp, AuditRecord};
use crate::filesystem::{Filesystem, SetAttr};
use crate::format::header::KeyMode;

/// The environment variable that turns auditing off for a benchmark (key-file mode only).
pub const BENCH_NO_AUDIT: &str = "DOMFS_BENCH_NO_AUDIT";
/// How long a process name is trusted (pids are reused).
const PROCESS_TTL: Duration = Duration::from_secs(1);
/// Names cached at most (each cache starts over beyond).
const MAX_CACHED: usize = 4096;
/// Entries wait at most about this long for a commit when nothing else commits.
pub const AUDIT_COMMIT_INTERVAL: Duration = Duration::from_secs(5);

/// What the hooks need besides the filesystem.
pub struct Auditor {
    host: String,
    users: Mutex<HashMap<u32, String>>,
    processes: Mutex<HashMap<u32, (String, Instant)>>,
}

impl Default for Auditor {
    fn default() -> Self {
        Self::new()
    }
}

impl Auditor {
    /// The host is named once, now (at mount).
    pub fn new() -> Self {
        Self {
            host: host_name(),
            users: Mutex::new(HashMap::new()),
            processes: Mutex::new(HashMap::new()),
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// An entry by (`uid`, `gid`, `pid`), stamped now.
    pub fn record(&self, uid: u32, gid: u32, pid: u32, op: AuditOp) -> AuditRecord {
        AuditRecord {
            time_us: AuditRecord::now_us(),
            uid,
            gid,
            pid,
            user: self.user_name(uid),
            process: self.process_name(pid),
            host: self.host.clone(),
            op,
            ..AuditRecord::default()
        }
    }

    /// The user's name (empty when the system knows none).
    pub fn user_name(&self, uid: u32) -> String {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(name) = users.get(&uid) {
            return name.clone();
        }
        let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_default();
        if users.len() >= MAX_CACHED {
            users.clear();
        }
        users.insert(uid, name.clone());
        name
    }

    /// The process's name (`/proc/PID/comm`), cached briefly; `kernel` for requests the
    /// kernel makes on its own (pid 0), empty for a process already gone.
    pub fn process_name(&self, pid: u32) -> String {
        if pid == 0 {
            return "kernel".into();
        }
        let mut processes = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((name, when)) = processes.get(&pid)
            && when.elapsed() < PROCESS_TTL
        {
            return name.clone();
        }
        let name = std::fs::read(format!("/proc/{pid}/comm"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .trim_end_matches('\n')
                    .to_string()
            })
            .unwrap_or_default();
        if processes.len() >= MAX_CACHED {
            processes.clear();
        }
        processes.insert(pid, (name.clone(), Instant::now()));
        name
    }
}

/// This host's name (`/proc/sys/kernel/hostname`).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether this mount audits: always, except for a benchmark on a key-file volume.
pub fn auditor_for(fs: &Filesystem) -> Option<Arc<Auditor>> {
    if std::env::var_os(BENCH_NO_AUDIT).is_some_and(|v| v == "1") {
        if fs.store().header().key_mode == KeyMode::KeyFile {
            tracing::error!(
                "{BENCH_NO_AUDIT}=1: AUDITING IS OFF for this mount (a benchmark of its cost; key-file volumes only)"
            );
            return None;
        }
        tracing::error!("{BENCH_NO_AUDIT} is ignored: this volume is in agent mode, and audits");
    }
    Some(Arc::new(Auditor::new()))
}

/// Commits queued audit entries that have waited [`AUDIT_COMMIT_INTERVAL`], so viewing
/// events reach the volume even when nothing else commits, and runs the retention sweep
/// when it is due, so versions past a keep-for are freed on a volume nobody writes to.
/// Stops with the filesystem or when `stop` is set.
pub fn spawn_audit_committer(fs: Weak<Filesystem>, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("domfs-audit".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(250));
                let Some(fs) = fs.upgrade() else { return };
                if stop.load(Ordering::SeqCst) || fs.is_read_only() || fs.is_revoked() {
                    continue;
                }
                fs.maybe_sweep(Some(&stop));
                if fs
                    .audit_pending_age()
                    .is_none_or(|age| age < AUDIT_COMMIT_INTERVAL)
                {
                    continue;
                }
                match fs.sync() {
                    Ok(()) => {}
                    // The filesystem stopped: nothing will be committed any more.
                    Err(crate::Error::Failed | crate::Error::Revoked) => return,
                    Err(e) => {
                        tracing::error!("committing the audit log: {e}");
                        std::thread::sleep(AUDIT_COMMIT_INTERVAL);
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the audit committer (entries wait for the next fsync): {e}");
    }
}

/// What an entry is about.
pub(super) struct Event {
    pub op: AuditOp,
    pub ino: u64,
    pub path: Option<String>,
    pub mode: AccessMode,
    pub detail: String,
}

impl Event {
    pub fn new(op: AuditOp, ino: u64, path: Option<String>) -> Self {
        Self {
            op,
            ino,
            path,
            mode: AccessMode::None,
            detail: String::new(),
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    pub fn mode(mut self, mode: AccessMode) -> Self {
        self.mode = mode;
        self
    }
}

impl DomFuse {
    fn entry(&self, auditor: &Auditor, req: &Request, event: Event, result: i32) -> AuditRecord {
        AuditRecord {
            inode: event.ino,
            path: event.path.unwrap_or_default(),
            mode: event.mode,
            result,
            detail: event.detail,
            ..auditor.record(req.uid(), req.gid(), req.pid(), event.op)
        }
    }

    /// Records an operation that has been done (or refused) and is about to be answered.
    pub(super) fn note<T>(&self, req: &Request, event: Event, result: &crate::Result<T>) {
        let Some(auditor) = &self.audit else { return };
        match result {
            Ok(_) => {
                let record = self.entry(auditor, req, event, 0);
                self.fs.audit_done(record);
            }
            // Nothing is left to record on a volume that stopped.
            Err(Error::Revoked | Error::Failed) => {}
            Err(e) => {
                // A refusal changed nothing; on a full volume its entry may not fit.
                let record = self.entry(auditor, req, event, e.errno());
                if let Err(full) = self.fs.audit(record) {
                    tracing::warn!("the audit entry of a refused request was not recorded: {full}");
                }
            }
        }
    }

    /// Records an open (the viewing event) before it is answered; an entry that cannot be
    /// recorded fails the open.
    pub(super) fn note_open(
        &self,
        req: &Request,
        ino: u64,
        flags: i32,
        directory: bool,
    ) -> Result<(), Errno> {
        let Some(auditor) = &self.audit else {
            return Ok(());
        };
        let mut event = Event::new(AuditOp::Open, ino, self.fs.path_of(ino))
            .mode(AccessMode::from_open_flags(flags));
        if directory {
            event = event.detail("directory");
        }
        let record = self.entry(auditor, req, event, 0);
        self.fs
            .audit(record)
            .map_err(|e| errno("open (audit entry)", ino, &e))
    }

    /// The errno for a failed request — and an `integrity-error` entry when a block did not
    /// verify. Every failed reply goes through here.
    pub(super) fn fail(&self, req: &Request, op: &str, ino: u64, e: &Error) -> Errno {
        if let (Some(auditor), Error::Integrity(_) | Error::ForgedSuperblock(_)) = (&self.audit, e)
        {
            let event = Event::new(AuditOp::IntegrityError, ino, self.fs.path_of(ino))
                .detail(format!("{op}: {e}"));
            let record = self.entry(auditor, req, event, e.errno());
            self.fs.audit_done(record);
        }
        errno(op, ino, e)
    }

    /// The daemon's own entry (mount, unmount).
    pub(super) fn note_daemon(&self, op: AuditOp, detail: String) {
        let Some(auditor) = &self.audit else { return };
        let record = AuditRecord {
            path: "/".into(),
            inode: crate::filesystem::inode::ROOT_INO,
            detail,
            ..auditor.record(
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
                std::process::id(),
                op,
            )
        };
        self.fs.audit_done(record);
    }
}

/// What a setattr changes, for its entry (`mode=0644 size=0 mtime`).
pub(super) fn describe_setattr(set: &SetAttr) -> String {
    let mut parts = Vec::new();
    if let Some(mode) = set.mode {
        parts.push(format!("mode={:04o}", mode & 0o7777));
    }
    if let Some(uid) = set.uid {
        parts.push(format!("uid={uid}"));
    }
    if let Some(gid) = set.gid {
        parts.push(format!("gid={gid}"));
    }
    if let Some(size) = set.size {
        parts.push(format!("size={size}"));
    }
    if set.atime.is_some() {
        parts.push("atime".into());
    }
    if set.mtime.is_some() {
        parts.push("mtime".into());
    }
    if parts.is_empty() && set.ctime.is_some() {
        parts.push("ctime".into());
    }
    parts.join(" ")
}
