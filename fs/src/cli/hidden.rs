//! `domfs hidden list|show|restore|purge`: the hidden versions of a volume (content that
//! unlink, rmdir, rename-over, truncation or a punched hole removed from view, kept with
//! who and when).
//!
//! The first argument is a mount point or a volume. Each backend is a [`HiddenSource`]:
//!
//! - **A volume (unmounted)**: opened here, with `--key-file KEY` or, for an agent-mode
//!   volume, the key from the host's agent (as `domfs mount` gets it). list and show open
//!   it read-only beside any read-only mounts; restore and purge open it read-write and
//!   refuse while it is mounted (the same lock as `domfs mount`). Being able to read the
//!   key file (or being granted the key by the agent) is the authority here.
//! - **A mount point**: served by the mount's daemon through its control socket
//!   ([`live`]), which checks that the caller is root or in the mount's operator group;
//!   a purge is signed with the manager's key here and checked by the daemon.
//!
//! PATH is relative to the volume's root (a leading `/` is ignored); version 1 is the
//! most recent hidden version of a path. Purging needs the domain manager's key, and only
//! an agent-mode volume has a domain manager.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use ed25519_dalek::SigningKey;

use super::Global;
use super::exit::{KeyRefused, OK, Refused};
use super::key::read_key_file;
use super::manager::read_manager_key;
use super::mount_agent::{DEFAULT_AGENT_SOCKET, Lease, Want, acquire, release};
use crate::audit::AuditOp;
use crate::device::{Access, FileDevice};
use crate::error::Posix;
use crate::filesystem::{Filesystem, FsOptions, HiddenVersion};
use crate::format::header::{DomainHeader, KeyMode, read_header, rfc3339};
use crate::store::StoreOptions;
use crate::volume::open_store;

/// How much of a version `show` reads at a time.
const SHOW_CHUNK: u32 = 1 << 20;

/// Where the volume's key comes from (volume form only).
#[derive(clap::Args, Debug, Clone)]
pub struct KeyArgs {
    /// Key file of the volume (key-file mode). Without it the key comes from the host's
    /// domfs-agent (agent mode).
    #[arg(long, value_name = "KEY", conflicts_with = "agent")]
    key_file: Option<PathBuf>,
    /// The agent's socket (agent mode, the default).
    #[arg(long, value_name = "SOCKET", env = "DOMFS_AGENT_SOCKET")]
    agent: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List hidden versions (newest first): path, version, size, when, by whom, event.
    List {
        /// A mount point, or an unmounted volume (file or block device).
        target: PathBuf,
        /// Only versions of this path and below it (relative to the volume's root).
        path: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Write a hidden version's content to stdout.
    #[command(disable_version_flag = true)]
    Show {
        /// A mount point, or an unmounted volume (file or block device).
        target: PathBuf,
        /// The path the version had (relative to the volume's root).
        path: String,
        /// 1 = the most recent hidden version of PATH.
        #[arg(long, value_name = "N", default_value_t = 1)]
        version: u32,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Bring a hidden version back, byte for byte, at its path or at --to (which must not
    /// exist; its directory must).
    #[command(disable_version_flag = true)]
    Restore {
        /// A mount point, or an unmounted volume (file or block device).
        target: PathBuf,
        /// The path the version had, relative to the volume's root.
        path: String,
        /// 1 = the most recent hidden version of PATH.
        #[arg(long, value_name = "N", default_value_t = 1)]
        version: u32,
        /// Restore under this path instead (relative to the volume's root).
        #[arg(long, value_name = "NEWPATH")]
        to: Option<String>,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Free a hidden version for good: the domain manager's deliberate act (audited). On
    /// a mount point the request is signed with the manager's key and checked by the
    /// daemon; on a volume the key must match the header's manager key.
    #[command(disable_version_flag = true)]
    Purge {
        /// A mount point, or an unmounted volume (file or block device).
        target: PathBuf,
        /// The path the version had, relative to the volume's root.
        path: String,
        /// 1 = the most recent hidden version of PATH.
        #[arg(long, value_name = "N")]
        version: u32,
        /// The domain manager's private key (`domfs manager keygen`); it must match the
        /// manager key in the volume's header.
        #[arg(long, value_name = "FILE")]
        manager_key: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
    },
}

/// Where hidden versions come from: an unmounted volume opened here, or a live mount's
/// daemon.
pub trait HiddenSource {
    fn list(&self, prefix: Option<&str>) -> Result<Vec<HiddenVersion>>;
    /// Writes the version's content to `out`; returns the bytes written.
    fn show(&self, path: &str, version: u32, out: &mut dyn Write) -> Result<u64>;
    fn restore(&self, path: &str, version: u32, to: Option<&str>) -> Result<HiddenVersion>;
    /// On the authority of `manager`, the domain manager's key.
    fn purge(&self, path: &str, version: u32, manager: &SigningKey) -> Result<HiddenVersion>;
}

#[path = "hidden_live.rs"]
pub mod live;

pub fn run(cmd: Command, global: Global) -> Result<u8> {
    match cmd {
        Command::List {
            target,
            path,
            json,
            key,
        } => {
            let source = open_source(&target, &key, false)?;
            let versions = source.list(path.as_deref())?;
            if json {
                let mut out = std::io::stdout().lock();
                for v in &versions {
                    writeln!(out, "{}", live::version_json(v))?;
                }
            } else if versions.is_empty() {
                if !global.quiet {
                    println!("no hidden versions");
                }
            } else {
                print!("{}", table(&versions));
            }
            Ok(OK)
        }
        Command::Show {
            target,
            path,
            version,
            key,
        } => {
            let source = open_source(&target, &key, false)?;
            let mut out = std::io::stdout().lock();
            source.show(&path, version, &mut out)?;
            out.flush()?;
            Ok(OK)
        }
        Command::Restore {
            target,
            path,
            version,
            to,
            key,
        } => {
            let source = open_source(&target, &key, true)?;
            let v = source.restore(&path, version, to.as_deref())?;
            if !global.quiet {
                println!(
                    "restored {} (version {}, {} bytes, {} by {}) as {}",
                    v.path_text(),
                    v.version,
                    v.size,
                    v.event.name(),
                    who(&v),
                    to.as_deref().map_or_else(|| v.path_text(), clean)
                );
            }
            Ok(OK)
        }
        Command::Purge {
            target,
            path,
            version,
            manager_key,
            key,
        } => {
            let manager = if std::fs::metadata(&target).is_ok_and(|m| m.is_dir()) {
                read_manager_key(&manager_key)?
            } else {
                check_manager(&target, &manager_key)?
            };
            let source = open_source(&target, &key, true)?;
            let v = source.purge(&path, version, &manager)?;
            if !global.quiet {
                println!(
                    "purged {} version {} ({} bytes, {} blocks freed)",
                    v.path_text(),
                    v.version,
                    v.size,
                    v.blocks
                );
            }
            Ok(OK)
        }
    }
}

/// `a/b` from what the user wrote (`/a/b/`).
fn clean(path: &str) -> String {
    String::from_utf8_lossy(&crate::filesystem::hidden::normalize_path(path.as_bytes()))
        .into_owned()
}

fn open_source(target: &Path, key: &KeyArgs, write: bool) -> Result<Box<dyn HiddenSource>> {
    let meta =
        std::fs::metadata(target).with_context(|| format!("cannot open {}", target.display()))?;
    if meta.is_dir() {
        if !crate::control::client::is_domfs_mount(target) {
            bail!(
                "{} is a directory but not a domfs mount: give a mount point or a volume",
                target.display()
            );
        }
        if key.key_file.is_some() {
            tracing::warn!("a live mount needs no --key-file; it is not used");
        }
        return Ok(Box::new(live::Live::new(target)));
    }
    Ok(Box::new(Offline::open(target, key, write)?))
}

/// Purging is the domain manager's act: its key must be the header's manager key.
fn check_manager(target: &Path, manager_key: &Path) -> Result<SigningKey> {
    let dev = FileDevice::open(target, Access::ReadOnly)
        .with_context(|| format!("cannot open {}", target.display()))?;
    let header = read_header(&dev)?.header;
    if header.key_mode != KeyMode::Ttp || header.manager_key.is_empty() {
        return Err(Refused(format!(
            "{} is a key-file volume: it has no domain manager, so its hidden versions cannot be purged",
            target.display()
        ))
        .into());
    }
    let key = read_manager_key(manager_key)?;
    if key.verifying_key().as_bytes()[..] != header.manager_key[..] {
        return Err(KeyRefused(format!(
            "{} is not the key of this domain's manager (the volume's header names another)",
            manager_key.display()
        ))
        .into());
    }
    Ok(key)
}

/// An unmounted volume, opened here (and locked like a mount) for as long as this runs.
struct Offline {
    fs: Filesystem,
    lease: Option<Lease>,
    _lock: File,
}

impl Offline {
    fn open(volume: &Path, key: &KeyArgs, write: bool) -> Result<Self> {
        let lock = lock_volume(volume, write)?;
        let dev = FileDevice::open(volume, Access::ReadOnly)
            .with_context(|| format!("cannot open {}", volume.display()))?;
        let header = read_header(&dev)?.header;
        drop(dev);
        let (key, writer, lease) = match &key.key_file {
            Some(path) => (read_key_file(path)?, None, None),
            None => agent_key(volume, key, &header, write)?,
        };
        let access = if write {
            Access::ReadWrite
        } else {
            Access::ReadOnly
        };
        let opened = (|| -> Result<Filesystem> {
            let dev = FileDevice::open(volume, access)
                .with_context(|| format!("cannot open {}", volume.display()))?;
            let store = open_store(
                Arc::new(dev),
                &key,
                StoreOptions {
                    access,
                    auto_commit: false,
                    writer,
                    ..StoreOptions::default()
                },
            )
            .with_context(|| format!("cannot open {}", volume.display()))?;
            Filesystem::open_with(Arc::new(store), !write, FsOptions::default())
                .with_context(|| format!("cannot open the filesystem of {}", volume.display()))
        })();
        drop(key);
        match opened {
            Ok(fs) => Ok(Self {
                fs,
                lease,
                _lock: lock,
            }),
            Err(e) => {
                if let Some(lease) = &lease {
                    release(lease);
                }
                Err(e)
            }
        }
    }
}

impl Drop for Offline {
    fn drop(&mut self) {
        if let Some(lease) = &self.lease {
            release(lease);
        }
    }
}

fn agent_key(
    volume: &Path,
    key: &KeyArgs,
    header: &DomainHeader,
    write: bool,
) -> Result<(
    crate::crypto::DomainKey,
    Option<Arc<crate::crypto::WriterKeys>>,
    Option<Lease>,
)> {
    if header.key_mode != KeyMode::Ttp {
        bail!(
            "{} is a key-file volume: give its key with --key-file KEY",
            volume.display()
        );
    }
    let socket = key
        .agent
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_AGENT_SOCKET));
    let want = if write {
        Want::ReadWrite
    } else {
        Want::ReadOnly
    };
    let granted = acquire(&socket, header, want, volume)?;
    if write && granted.read_only {
        release(&granted.lease);
        return Err(KeyRefused(
            "this host is granted read-only access: restore and purge need read-write".into(),
        )
        .into());
    }
    Ok((granted.key, Some(granted.writer), Some(granted.lease)))
}

/// The lock `domfs mount` takes: shared to read beside read-only mounts, exclusive to
/// write (refused while anything has it mounted).
fn lock_volume(volume: &Path, write: bool) -> Result<File> {
    let file = File::open(volume).with_context(|| format!("cannot open {}", volume.display()))?;
    let taken = if write {
        file.try_lock()
    } else {
        file.try_lock_shared()
    };
    match taken {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Refused(format!(
            "{} is mounted{}: use its mount point, or unmount it first",
            volume.display(),
            if write { "" } else { " read-write" }
        ))
        .into()),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", volume.display()))
        }
    }
}

fn not_found(path: &str, version: u32) -> impl FnOnce(crate::Error) -> anyhow::Error {
    let path = clean(path);
    move |e| match e {
        crate::Error::Posix(Posix::NotFound) => {
            anyhow!("{path}: no hidden version {version} (`domfs hidden list` shows what there is)")
        }
        e => e.into(),
    }
}

impl HiddenSource for Offline {
    fn list(&self, prefix: Option<&str>) -> Result<Vec<HiddenVersion>> {
        Ok(self.fs.hidden_list(prefix.map(str::as_bytes))?)
    }

    fn show(&self, path: &str, version: u32, out: &mut dyn Write) -> Result<u64> {
        let v = self
            .fs
            .hidden_get(path.as_bytes(), version)
            .map_err(not_found(path, version))?;
        if v.kind() == Some(crate::filesystem::dir::FileKind::Directory) {
            bail!("{}: a directory has no content to show", clean(path));
        }
        self.record_show(&v)?;
        let mut offset = 0u64;
        while offset < v.size {
            let chunk = self
                .fs
                .hidden_read(path.as_bytes(), version, offset, SHOW_CHUNK)
                .map_err(|e| match e {
                    crate::Error::Posix(Posix::IsDirectory) => {
                        anyhow!("{}: a directory has no content to show", clean(path))
                    }
                    e => e.into(),
                })?;
            if chunk.is_empty() {
                break;
            }
            out.write_all(&chunk)?;
            offset += chunk.len() as u64;
        }
        Ok(offset)
    }

    fn restore(&self, path: &str, version: u32, to: Option<&str>) -> Result<HiddenVersion> {
        let target = clean(to.unwrap_or(path));
        let before = self.fs.hidden_get(path.as_bytes(), version).ok();
        let result = self
            .fs
            .hidden_restore(path.as_bytes(), version, to.map(str::as_bytes));
        if let Some(v) = &before {
            let errno = result.as_ref().err().map_or(0, crate::Error::errno);
            self.fs.audit_done(self.fs.hidden_audit_record(
                AuditOp::Restore,
                this_process(),
                v,
                live::restore_detail(v, &target),
                errno,
            ));
        }
        let v = result.map_err(|e| match e {
            crate::Error::Posix(Posix::Exists) => Refused(format!(
                "{target} exists: restore with --to NEWPATH, or move it away first"
            ))
            .into(),
            crate::Error::Posix(Posix::NotFound)
                if self.fs.hidden_get(path.as_bytes(), version).is_ok() =>
            {
                anyhow!("{target}: its directory does not exist (restore that first, or use --to)")
            }
            e => not_found(path, version)(e),
        })?;
        self.fs.sync()?;
        Ok(v)
    }

    /// The caller checked `manager` against the header ([`check_manager`]).
    fn purge(&self, path: &str, version: u32, manager: &SigningKey) -> Result<HiddenVersion> {
        let v = self
            .fs
            .hidden_purge(path.as_bytes(), version)
            .map_err(not_found(path, version))?;
        self.fs.audit_done(self.fs.hidden_audit_record(
            AuditOp::Purge,
            this_process(),
            &v,
            live::purge_detail(&v, manager.verifying_key().as_bytes()),
            0,
        ));
        self.fs.sync()?;
        Ok(v)
    }
}

impl Offline {
    /// An offline read of a version's content is a viewing event like the read of a live
    /// mount. An agent-mode volume read offline is opened read-only, so the entry goes
    /// through the agent to the TTP, and nothing is shown unless the TTP took it. (A
    /// key-file volume read offline keeps no entry: whoever holds its key file can read
    /// the container without domfs anyway.)
    fn record_show(&self, v: &HiddenVersion) -> Result<()> {
        let Some(lease) = &self.lease else {
            return Ok(());
        };
        self.fs.audit(self.fs.hidden_audit_record(
            AuditOp::Open,
            this_process(),
            v,
            format!("hidden version {} (id {}) shown offline", v.version, v.id),
            0,
        ))?;
        super::mount_anchor::ship_now(lease, &self.fs)
            .context("the read could not be recorded at the TTP, so nothing is shown")
    }
}

/// This command's own credentials, for its audit entries.
fn this_process() -> crate::filesystem::Caller {
    crate::filesystem::Caller {
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        pid: std::process::id(),
    }
}

/// `uid/user pid N process @host`.
fn who(v: &HiddenVersion) -> String {
    let user = user_name(v.uid)
        .map(|u| format!("{}/{u}", v.uid))
        .unwrap_or_else(|| v.uid.to_string());
    let process = if v.process.is_empty() {
        "?"
    } else {
        &v.process
    };
    let host = if v.host.is_empty() { "?" } else { &v.host };
    format!("{user} pid {} {process} @{host}", v.pid)
}

fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

fn when(v: &HiddenVersion) -> String {
    u64::try_from(v.time.secs)
        .ok()
        .and_then(rfc3339)
        .unwrap_or_else(|| format!("{} s", v.time.secs))
}

fn event_text(v: &HiddenVersion) -> String {
    let mut text = v.event.name().to_string();
    if v.event == crate::filesystem::HiddenEvent::Truncate {
        text.push_str(&format!(" (cut at {})", v.cut_at));
    }
    if let Some((offset, length)) = v.punched() {
        text.push_str(&format!(" ({length} bytes at {offset})"));
    }
    if v.open {
        text.push_str(" (still open)");
    }
    text
}

fn table(versions: &[HiddenVersion]) -> String {
    let header = ["PATH", "VERSION", "SIZE", "WHEN (UTC)", "WHO", "EVENT"];
    let rows: Vec<[String; 6]> = versions
        .iter()
        .map(|v| {
            [
                crate::audit::query::printable(&v.path_text()),
                v.version.to_string(),
                v.size.to_string(),
                when(v),
                crate::audit::query::printable(&who(v)),
                event_text(v),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else if i == 1 || i == 2 {
                text.push_str(&format!("{cell:>w$}  "));
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}
