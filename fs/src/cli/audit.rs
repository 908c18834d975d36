//! `domfs audit`: a volume's audit trail, newest first (`--json`, `--fhir`), and
//! `--verify`, which walks the whole chain and exits 0 only when it is intact.
//!
//! Where the entries come from is an [`AuditSource`]: the volume itself, read offline with
//! its key file or, in agent mode, the key from this host's agent ([`VolumeFile`]), or a
//! mounted volume's daemon through its control socket (a mount point given:
//! [`live::Live`]). Either way the CLI filters and judges alike.
//!
//! An agent-mode volume also has entries the TTP keeps: read-only mounts cannot write the
//! log, so theirs go to the TTP ([`remote`]); the listing merges them in (`--no-ttp`
//! leaves them out). `--verify` judges the volume's chain alone: the TTP's entries are
//! not chained.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use super::Global;
use super::exit::{INTEGRITY, OK, USAGE, code_for};
use super::key::read_key_file;
use super::mount_agent::{DEFAULT_AGENT_SOCKET, Want, acquire, release};
use crate::audit::query::{Filter, UserMatch, fhir_audit_event, json_object, parse_since};
use crate::audit::remote::{RemoteRecord, Shown, decode_remote, merged_newest_first};
use crate::audit::{AuditRecord, LogScan, read_log};
use crate::crypto::DomainKey;
use crate::device::{Access, FileDevice};
use crate::format::header::{KeyMode, read_header};
use crate::store::{BlockStore, StoreOptions};
use crate::types::VolumeId;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Key file of the volume (to read a key-file volume that is not mounted).
    #[arg(long, value_name = "KEY", conflicts_with = "agent")]
    key_file: Option<PathBuf>,
    /// The agent's socket: it gives the key of an unmounted agent-mode volume and passes
    /// on the entries the TTP keeps for its read-only hosts [default: for a mount point,
    /// the agent the mount got its key from; else /run/domfs/agent.sock].
    #[arg(long, value_name = "SOCKET")]
    agent: Option<PathBuf>,
    /// Only the volume's own log: do not ask the TTP for the entries of read-only hosts.
    #[arg(long)]
    no_ttp: bool,
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
    /// path, op, mode, result, seq, detail, source; ttp_seq and sender for an entry the
    /// TTP keeps).
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
    /// An agent-mode volume's domain (its header as on the device now), for the TTP.
    pub domain: Option<DomainRef>,
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
    pub key: VolumeKey,
}

/// Where the key of a [`VolumeFile`] comes from.
pub enum VolumeKey {
    File(DomainKey),
    /// This host's agent, asked for a read-only lease (given back once the log is read).
    Agent(PathBuf),
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
        let header = read_header(&dev)?.header;
        let domain = (header.key_mode == KeyMode::Ttp).then(|| DomainRef {
            signed_message: header.signed_message.clone(),
            signature: header.signature.clone(),
            agent: None,
        });
        let granted;
        let (key, lease) = match &self.key {
            VolumeKey::File(key) => (key, None),
            VolumeKey::Agent(socket) => {
                if header.key_mode != KeyMode::Ttp {
                    bail!(
                        "{} is a key-file volume: give its key with --key-file KEY",
                        path.display()
                    );
                }
                granted = acquire(socket, &header, Want::ReadOnly, path)?;
                (&granted.key, Some(&granted.lease))
            }
        };
        let read = read_volume_log(path, dev, key);
        if let Some(lease) = lease {
            release(lease);
        }
        drop(lock);
        let (volume, scan) = read?;
        Ok(AuditLog {
            volume,
            scan,
            domain,
        })
    }
}

fn read_volume_log(path: &Path, dev: FileDevice, key: &DomainKey) -> Result<(VolumeId, LogScan)> {
    let store = BlockStore::open(Arc::new(dev), key, StoreOptions::read_only())
        .with_context(|| format!("cannot open {}", path.display()))?;
    let volume = store.header().volume_id;
    let scan = read_log(&store, store.audit_key(), &volume)
        .with_context(|| format!("cannot read the audit log of {}", path.display()))?;
    Ok((volume, scan))
}

#[path = "audit_live.rs"]
pub mod live;

#[path = "audit_remote.rs"]
pub mod remote;

use remote::DomainRef;

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
    let key = match &args.key_file {
        Some(key_file) => VolumeKey::File(read_key_file(key_file)?),
        None => VolumeKey::Agent(agent_socket(args)),
    };
    Ok(Box::new(VolumeFile {
        path: args.target.clone(),
        key,
    }))
}

fn agent_socket(args: &Args) -> PathBuf {
    args.agent
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_AGENT_SOCKET))
}

/// The TTP's entries for `log`'s domain: none for a key-file volume or with `--no-ttp`;
/// what could not be read is an error, reported after the volume's entries are shown.
fn ttp_entries(args: &Args, log: &AuditLog) -> (Vec<RemoteRecord>, Option<anyhow::Error>) {
    let Some(domain) = log.domain.as_ref().filter(|_| !args.no_ttp) else {
        return (Vec::new(), None);
    };
    let socket = match (&args.agent, &domain.agent) {
        (None, Some(mount_agent)) => mount_agent.clone(),
        _ => agent_socket(args),
    };
    match remote::read_from_ttp(&socket, domain) {
        Ok(raw) => {
            let (records, undecodable) = decode_remote(raw);
            for bad in &undecodable {
                eprintln!(
                    "domfs: warning: entry {} the TTP keeps (sent by host {}) is not an audit \
                     record ({}); left out",
                    bad.sequence, bad.sender, bad.what
                );
            }
            (records, None)
        }
        Err(e) => (Vec::new(), Some(e)),
    }
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
    let (remote, remote_failed) = ttp_entries(&args, &log);
    let shown = merged_newest_first(&scan.entries, &remote, &filter);
    let written = print(&args, &log, &shown);
    match written {
        Ok(()) => {}
        // `domfs audit … | head`: the reader has seen enough.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(e).context("cannot write the listing"),
    }
    if let Some(e) = &remote_failed
        && !scan.is_intact()
    {
        eprintln!("domfs: {e:#}");
    }
    if !scan.is_intact() {
        eprintln!(
            "domfs: the audit log of {} does not verify: {} ({} problem(s); `domfs audit --verify` lists them)",
            source.describe(),
            scan.problems[0],
            scan.problems.len()
        );
        return Ok(INTEGRITY);
    }
    if let Some(e) = remote_failed {
        eprintln!(
            "domfs: {:#}\nShown: the volume's own log only, without the entries of read-only \
             hosts the TTP keeps (--no-ttp asks for just that).",
            e
        );
        return Ok(code_for(&e));
    }
    Ok(OK)
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

fn print(args: &Args, log: &AuditLog, shown: &[Shown]) -> std::io::Result<()> {
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
