//! `domfs audit`: a volume's audit trail, newest first (`--json`, `--fhir`), and
//! `--verify`, which walks the whole chain and exits 0 only when it is intact.
//!
//! Where the entries come from is an [`AuditSource`]: the volume itself, read offline with
//! its key file ([`VolumeFile`]), or a mounted volume's daemon through its control socket
//! (a mount point given: [`live::Live`]). Either way the CLI filters and judges alike.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use super::Global;
use super::exit::{INTEGRITY, OK, USAGE};
use super::key::read_key_file;
use crate::audit::query::{
    Filter, UserMatch, fhir_audit_event, json_object, newest_first, parse_since,
};
use crate::audit::{AuditRecord, LogScan, read_log};
use crate::crypto::DomainKey;
use crate::device::{Access, FileDevice};
use crate::store::{BlockStore, StoreOptions};
use crate::types::VolumeId;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Key file of the volume (needed to read a volume that is not mounted).
    #[arg(long, value_name = "KEY")]
    key_file: Option<PathBuf>,
    /// Only entries of this path inside the volume (`/ward3/p1.txt`) and everything
    /// below it; a rename counts for both its old and its new path.
    #[arg(long, value_name = "P")]
    path: Option<String>,
    /// Only entries of this user (a uid, or a user name as recorded).
    #[arg(long, value_name = "UID")]
    user: Option<String>,
    /// Only entries since T: an RFC 3339 time (2026-01-02T03:04:05Z, or a date) or a
    /// duration back from now (90s, 15m, 2h, 3d, 1w).
    #[arg(long, value_name = "T")]
    since: Option<String>,
    /// One flat JSON object per line (time, uid, user, gid, pid, process, host, inode,
    /// path, op, mode, result, seq, detail).
    #[arg(long, conflicts_with = "fhir")]
    json: bool,
    /// One FHIR R4 AuditEvent resource (JSON) per line.
    #[arg(long)]
    fhir: bool,
    /// Check the whole chain from its first entry to the head in the filesystem
    /// superblock: exit 0 only when it is intact, 4 otherwise (naming the first bad entry).
    #[arg(long, conflicts_with_all = ["json", "fhir"])]
    verify: bool,
    /// The volume (file or block device), or the mount point of a mounted volume.
    #[arg(value_name = "VOLUME|MOUNTPOINT")]
    target: PathBuf,
}

/// The whole log of one volume, as a source returns it.
pub struct AuditLog {
    pub volume: VolumeId,
    pub scan: LogScan,
}

/// Where a volume's audit entries are read from.
pub trait AuditSource {
    /// What is read, for messages.
    fn describe(&self) -> String;
    /// Every entry, oldest first, with what the walk over the chain found.
    fn read(&self) -> Result<AuditLog>;
}

/// A volume that is not mounted read-write, read with its key.
pub struct VolumeFile {
    pub path: PathBuf,
    pub key: DomainKey,
}

impl AuditSource for VolumeFile {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn read(&self) -> Result<AuditLog> {
        let path = &self.path;
        // A read-write daemon holds the volume's lock exclusively and rewrites blocks the
        // last commit dropped: its log is read through the daemon, not from under it.
        let lock = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        match lock.try_lock_shared() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "{} is mounted read-write by a domfs daemon: give its mount point instead \
                 (`domfs audit MOUNTPOINT` asks the daemon), or unmount it first",
                path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        let dev = FileDevice::open(path, Access::ReadOnly)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let store = BlockStore::open(Arc::new(dev), &self.key, StoreOptions::read_only())
            .with_context(|| format!("cannot open {}", path.display()))?;
        let volume = store.header().volume_id;
        let scan = read_log(&store, store.audit_key(), &volume)
            .with_context(|| format!("cannot read the audit log of {}", path.display()))?;
        drop(lock);
        Ok(AuditLog { volume, scan })
    }
}

#[path = "audit_live.rs"]
pub mod live;

/// The source for `target`: a volume file or device (with its key), or a mount point.
fn source_for(args: &Args) -> Result<Box<dyn AuditSource>> {
    let meta = std::fs::metadata(&args.target)
        .with_context(|| format!("cannot open {}", args.target.display()))?;
    if meta.is_dir() {
        if !live::is_live(&args.target) {
            bail!(
                "{} is a directory but not a domfs mount: give a mount point or a volume",
                args.target.display()
            );
        }
        return Ok(Box::new(live::Live {
            mountpoint: args.target.clone(),
        }));
    }
    let Some(key_file) = &args.key_file else {
        bail!(
            "reading {} needs its key: --key-file KEY (an agent-mode volume is read through \
             its mount)",
            args.target.display()
        );
    };
    Ok(Box::new(VolumeFile {
        path: args.target.clone(),
        key: read_key_file(key_file)?,
    }))
}

pub fn run(args: Args, global: Global) -> Result<u8> {
    let since_us = match args
        .since
        .as_deref()
        .map(|t| parse_since(t, AuditRecord::now_us()))
    {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            eprintln!("domfs: --since: {e}");
            return Ok(USAGE);
        }
    };
    let filter = Filter {
        path: args.path.clone(),
        user: args.user.as_deref().map(UserMatch::parse),
        since_us,
    };
    let source = source_for(&args)?;
    let log = source.read()?;
    let scan = &log.scan;
    if args.verify {
        return Ok(verify(&source.describe(), scan, global));
    }
    let shown = newest_first(&scan.entries, &filter);
    let written = print(&args, &log, &shown);
    match written {
        Ok(()) => {}
        // `domfs audit … | head`: the reader has seen enough.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(e).context("cannot write the listing"),
    }
    if scan.is_intact() {
        return Ok(OK);
    }
    eprintln!(
        "domfs: the audit log of {} does not verify: {} ({} problem(s); `domfs audit --verify` lists them)",
        source.describe(),
        scan.problems[0],
        scan.problems.len()
    );
    Ok(INTEGRITY)
}

fn verify(name: &str, scan: &LogScan, global: Global) -> u8 {
    if scan.is_intact() {
        if !global.quiet {
            println!(
                "{name}: audit log intact: {} entries, head at entry {} ({} bytes)",
                scan.entries.len(),
                scan.head.seq,
                scan.head.len
            );
        }
        return OK;
    }
    println!(
        "{name}: audit log broken; first bad entry: {}",
        scan.problems[0]
    );
    for problem in &scan.problems[1..] {
        println!("  also: {problem}");
    }
    println!(
        "{} entries could be read; the head (filesystem superblock) is at entry {}",
        scan.entries.len(),
        scan.head.seq
    );
    INTEGRITY
}

fn print(args: &Args, log: &AuditLog, shown: &[&AuditRecord]) -> std::io::Result<()> {
    let mut out = BufWriter::new(std::io::stdout().lock());
    if args.json {
        for r in shown {
            writeln!(out, "{}", json_object(r))?;
        }
    } else if args.fhir {
        for r in shown {
            writeln!(out, "{}", fhir_audit_event(r, &log.volume))?;
        }
    } else {
        write!(out, "{}", crate::audit::query::table(shown))?;
    }
    out.flush()
}
