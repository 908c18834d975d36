//! `domfs mount` and `domfs unmount`: serve a volume through FUSE, and end that cleanly.
//!
//! `mount` runs the daemon. Without `-f` it forks *before any thread exists* (arguments
//! parsed, key file read, paths checked — then fork); the child starts a new session,
//! in agent mode asks the host's agent for the key (see `mount_agent`), locks the container, opens the store and the filesystem, mounts, and tells the waiting
//! parent "ready" (or the error) through a pipe, so the command returns once the mount can
//! be used, or fails with the daemon's own message.
//!
//! Locks: the container is flock'ed (read-write mounts exclusively, read-only mounts
//! shared), so one read-write daemon at a time serves a volume. The daemon also holds a
//! shared lock on the mount-point directory underneath the mount; `domfs unmount` waits for
//! both to be released, which happens only when the daemon exits after its final commit.
//!
//! Shutdown: SIGTERM, SIGINT and SIGHUP make the daemon unmount itself (detaching a busy
//! mount; the session then ends when its last user leaves); an outside unmount
//! (`domfs unmount`, `fusermount3 -u`, `umount`) ends the session directly. Either way the
//! kernel writes back its dirty pages first, then the session's `destroy` commits, and the
//! daemon exits 0 (1 if that final commit failed).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{SigSet, Signal};

use super::Global;
use super::exit::{FAILURE, OK};
use super::key::read_key_file;
use super::mount_agent::{DEFAULT_AGENT_SOCKET, Lease, Want, acquire, release, spawn_watch};
use super::mount_anchor::check_against_anchor;
use super::size::parse_size;
use crate::crypto::DomainKey;
use crate::crypto::WriterKeys;
use crate::device::{Access, FileDevice};
use crate::filesystem::Filesystem;
use crate::format::header::read_header;
use crate::fuse::mountinfo::{self, FSTYPE, UnmountError};
use crate::fuse::{DomFuse, MountSettings};
use crate::store::StoreOptions;
use crate::volume::open_store;
use domfs_proto::ttp::Checkpoint;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Key file of the volume (key-file mode). Without it the key comes from the host's
    /// domfs-agent (agent mode).
    #[arg(long, value_name = "KEY", conflicts_with = "agent")]
    key_file: Option<PathBuf>,
    /// The agent's socket (agent mode, the default).
    #[arg(long, value_name = "SOCKET", env = "DOMFS_AGENT_SOCKET")]
    agent: Option<PathBuf>,
    /// Mount read-only (any number of read-only mounts may share a volume). In agent
    /// mode the mount is read-only anyway when this host was granted only ro.
    #[arg(long, conflicts_with = "read_write")]
    read_only: bool,
    /// Agent mode: fail unless this host is granted read-write (instead of falling back
    /// to a read-only mount).
    #[arg(long)]
    read_write: bool,
    /// Besides root, the members of this group may list, show and restore hidden versions
    /// and read the audit trail of this mount (`domfs hidden`, `domfs audit`).
    #[arg(long, value_name = "GROUP")]
    operator_group: Option<String>,
    /// Agent mode, disaster recovery: mount even though the volume is older than (or
    /// forked from) the commit the TTP anchored. Recorded in the audit trail.
    #[arg(long)]
    accept_rollback: bool,
    /// Let other users use the mount (e.g. a database server running as `postgres`).
    #[arg(long)]
    allow_other: bool,
    /// Stay in the foreground until unmounted, logging to stderr (or to --log once
    /// mounted).
    #[arg(short = 'f', long)]
    foreground: bool,
    /// Memory for decrypted, verified blocks (e.g. 64M, 1G); half of it may hold data
    /// written since the last commit.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256M")]
    cache_size: u64,
    /// Let the kernel cache writes (faster small writes). The price: on a full volume
    /// write() still succeeds and the ENOSPC comes later, from fsync or close — which a
    /// database treats as fatal. Use it only on volumes that never run full.
    #[arg(long)]
    writeback_cache: bool,
    /// Where the daemon appends its log once the mount is ready (default: nowhere).
    /// domfs logs inode numbers and block numbers, never file names, contents or keys.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// The volume (file or block device).
    volume: PathBuf,
    /// An existing directory to mount the volume on.
    mountpoint: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct UnmountArgs {
    /// Seconds to wait for the daemon's final commit after the unmount.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    timeout: u64,
    /// Where a volume is mounted.
    mountpoint: PathBuf,
}

/// Everything checked before the fork.
struct Prepared {
    volume: PathBuf,
    mountpoint: PathBuf,
    read_only: bool,
    allow_other: bool,
    writeback_cache: bool,
    cache_bytes: usize,
    log: Option<File>,
    quiet: bool,
    accept_rollback: bool,
    operator_group: Option<nix::unistd::Gid>,
}

/// Where the domain key comes from.
enum KeySource {
    File(DomainKey),
    Agent { socket: PathBuf, want: Want },
}

pub fn run(args: Args, global: Global) -> Result<u8> {
    let prepared = prepare(&args, global)?;
    let key = match args.key_file.as_deref() {
        Some(key_file) => KeySource::File(read_key_file(key_file)?),
        None => KeySource::Agent {
            socket: args
                .agent
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_AGENT_SOCKET)),
            want: if args.read_only {
                Want::ReadOnly
            } else if args.read_write {
                Want::ReadWrite
            } else {
                Want::Best
            },
        },
    };
    if args.foreground {
        let mounted = start(&prepared, key)?;
        lifecycle(&prepared, &mounted_message(&prepared, mounted.read_only));
        if prepared.log.is_some() {
            redirect_stderr(&prepared)?;
        }
        return serve(mounted, &prepared);
    }
    daemonize(prepared, key)
}

fn prepare(args: &Args, global: Global) -> Result<Prepared> {
    let volume = args
        .volume
        .canonicalize()
        .with_context(|| format!("cannot open volume {}", args.volume.display()))?;
    let meta = std::fs::metadata(&volume)
        .with_context(|| format!("cannot open volume {}", volume.display()))?;
    if !meta.is_file() && !meta.file_type().is_block_device() {
        bail!(
            "{} is neither a regular file nor a block device",
            volume.display()
        );
    }
    if volume.to_string_lossy().contains(',') {
        bail!(
            "{}: a volume path with a comma cannot be a mount's source (rename or link it)",
            volume.display()
        );
    }
    let mountpoint = mountinfo::resolve(&args.mountpoint)
        .with_context(|| format!("cannot use mount point {}", args.mountpoint.display()))?;
    if let Some(entry) = mountinfo::find(&mountpoint)?
        && entry.fstype == FSTYPE
    {
        bail!(
            "{} is already a domfs mount (of {}); `domfs unmount {}` first",
            mountpoint.display(),
            entry.source,
            mountpoint.display()
        );
    }
    let dir = std::fs::metadata(&mountpoint)
        .with_context(|| format!("cannot use mount point {}", mountpoint.display()))?;
    if !dir.is_dir() {
        bail!("mount point {} is not a directory", mountpoint.display());
    }
    if args.cache_size < 1 << 20 {
        bail!("--cache-size must be at least 1M");
    }
    let cache_bytes =
        usize::try_from(args.cache_size).map_err(|_| anyhow!("--cache-size is too large"))?;
    let log = match &args.log {
        Some(path) => Some(
            OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot open log file {}", path.display()))?,
        ),
        None => None,
    };
    Ok(Prepared {
        volume,
        mountpoint,
        read_only: args.read_only,
        allow_other: args.allow_other,
        writeback_cache: args.writeback_cache,
        cache_bytes,
        log,
        quiet: global.quiet,
        accept_rollback: args.accept_rollback,
        operator_group: match &args.operator_group {
            None => None,
            Some(name) => Some(
                nix::unistd::Group::from_name(name)
                    .with_context(|| format!("cannot look up group {name}"))?
                    .with_context(|| format!("--operator-group: there is no group {name}"))?
                    .gid,
            ),
        },
    })
}

/// A live mount and what it holds.
struct Mounted {
    session: fuser::Session<DomFuse>,
    fs: Arc<Filesystem>,
    read_only: bool,
    /// Agent mode: given back at unmount.
    lease: Option<Lease>,
    /// Removes the control socket when the daemon ends.
    _control: crate::control::server::ControlServer,
    /// Released when the process exits, after the final commit.
    _volume_lock: File,
    _mountpoint_lock: File,
}

/// The signals that unmount (blocked in every thread; one thread waits for them).
fn shutdown_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set
}

/// Agent mode: compares the volume with the TTP's anchor before anything is written.
/// Returns the refusal text when `--accept-rollback` overrode it (to be audited).
fn check_anchor(
    volume: &Path,
    key: &DomainKey,
    writer: Option<Arc<WriterKeys>>,
    anchor: Option<&Checkpoint>,
    accept_rollback: bool,
) -> Result<Option<String>> {
    if anchor.is_none() {
        return Ok(None);
    }
    let probe = match crate::store::BlockStore::open(
        Arc::new(
            FileDevice::open(volume, Access::ReadOnly)
                .with_context(|| format!("cannot open {}", volume.display()))?,
        ),
        key,
        StoreOptions {
            writer,
            ..StoreOptions::read_only()
        },
    ) {
        Ok(store) => store,
        // Not formatted yet: nothing to compare (the first mount formats it).
        Err(crate::Error::Unformatted) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    match check_against_anchor(&probe.superblock(), anchor) {
        Ok(()) => Ok(None),
        Err(e) if accept_rollback => {
            tracing::warn!("{e:#}");
            Ok(Some(format!("{e:#}")))
        }
        Err(e) => Err(e),
    }
}

/// Locks, opens and mounts. The key is dropped (zeroized) once the store has its subkeys.
fn start(p: &Prepared, source: KeySource) -> Result<Mounted> {
    // Blocked before any thread exists, so every thread inherits the mask and only the
    // signal thread below ever takes these signals (a signal during start-up waits).
    let signals = shutdown_signals();
    signals
        .thread_block()
        .context("cannot block shutdown signals")?;

    // The daemon holds the volume's subkeys for as long as it runs: no core dumps of
    // it, and no ptrace by other processes of the same user.
    nix::sys::prctl::set_dumpable(false).context("cannot make the daemon non-dumpable")?;
    let (key, writer, read_only, lease, anchor) = match source {
        KeySource::File(key) => (key, None, p.read_only, None, None),
        KeySource::Agent { socket, want } => {
            let dev = FileDevice::open(&p.volume, Access::ReadOnly)
                .with_context(|| format!("cannot open {}", p.volume.display()))?;
            let header = read_header(&dev)?.header;
            let granted = acquire(&socket, &header, want, &p.mountpoint)?;
            (
                granted.key,
                Some(granted.writer),
                granted.read_only,
                Some(granted.lease),
                granted.anchor,
            )
        }
    };
    let opened = open_and_mount(p, key, writer, read_only, lease.clone(), anchor);
    if opened.is_err()
        && let Some(lease) = &lease
    {
        release(lease);
    }
    opened
}

fn open_and_mount(
    p: &Prepared,
    key: DomainKey,
    writer: Option<Arc<WriterKeys>>,
    read_only: bool,
    lease: Option<Lease>,
    anchor: Option<Checkpoint>,
) -> Result<Mounted> {
    let signals = shutdown_signals();
    let volume_lock = lock_volume(&p.volume, read_only)?;
    let mountpoint_lock = lock_mountpoint(&p.mountpoint)?;
    let access = if read_only {
        Access::ReadOnly
    } else {
        Access::ReadWrite
    };
    let dev = FileDevice::open(&p.volume, access)
        .with_context(|| format!("cannot open {}", p.volume.display()))?;
    let rollback = check_anchor(
        &p.volume,
        &key,
        writer.clone(),
        anchor.as_ref(),
        p.accept_rollback,
    )?;
    // Accepted: carry on numbering after the anchor, which the TTP never lets go back.
    let continue_after = rollback
        .as_ref()
        .and(anchor.as_ref())
        .map(|a| (a.sequence, a.generation));
    let store = open_store(
        Arc::new(dev),
        &key,
        StoreOptions {
            access,
            cache_bytes: p.cache_bytes,
            // The filesystem commits between its operations, never the store by itself.
            auto_commit: false,
            writer,
            continue_after,
            ..StoreOptions::default()
        },
    )
    .with_context(|| format!("cannot open {}", p.volume.display()))?;
    drop(key);
    let fs = Arc::new(
        Filesystem::open(Arc::new(store), read_only)
            .with_context(|| format!("cannot open the filesystem of {}", p.volume.display()))?,
    );
    if let Some(why) = rollback {
        let record = crate::audit::AuditRecord {
            time_us: crate::audit::AuditRecord::now_us(),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            pid: std::process::id(),
            process: "domfs".into(),
            op: crate::audit::AuditOp::Mount,
            detail: format!("--accept-rollback: {why}"),
            ..Default::default()
        };
        fs.audit(record)
            .and_then(|()| fs.sync())
            .context("cannot record the accepted rollback in the audit trail")?;
    }
    let settings = MountSettings {
        fsname: p.volume.to_string_lossy().into_owned(),
        read_only,
        allow_other: p.allow_other,
    };
    let kernel = Arc::new(std::sync::OnceLock::new());
    let control = crate::control::server::spawn(
        &crate::control::socket_path(&p.mountpoint),
        p.operator_group,
        Arc::new(super::mount_control::MountControl {
            fs: fs.clone(),
            agent: lease.as_ref().map(|l| l.socket().to_path_buf()),
            kernel: kernel.clone(),
            lease: lease.clone(),
        }),
    )
    .context("cannot open the mount's control socket")?;
    let adapter = DomFuse::new(fs.clone()).with_writeback_cache(p.writeback_cache);
    let session = crate::fuse::mount(adapter, &p.mountpoint, &settings)
        .with_context(|| format!("cannot mount on {}", p.mountpoint.display()))?;
    let _ = kernel.set(session.notifier());
    let threads = spawn_signal_thread(signals, p.mountpoint.clone()).and_then(|()| match &lease {
        Some(lease) => spawn_watch(lease.clone(), fs.clone(), p.mountpoint.clone()),
        None => Ok(()),
    });
    if let Err(e) = threads {
        let _ = mountinfo::unmount(&p.mountpoint, true);
        return Err(e);
    }
    Ok(Mounted {
        session,
        fs,
        read_only,
        lease,
        _control: control,
        _volume_lock: volume_lock,
        _mountpoint_lock: mountpoint_lock,
    })
}

fn lock_volume(volume: &Path, read_only: bool) -> Result<File> {
    let file = File::open(volume).with_context(|| format!("cannot open {}", volume.display()))?;
    let taken = if read_only {
        file.try_lock_shared()
    } else {
        file.try_lock()
    };
    match taken {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            // Who holds it: a shared lock can still be had when only readers do.
            let readers_only = !read_only && file.try_lock_shared().is_ok();
            if readers_only {
                bail!(
                    "{} is mounted read-only by another domfs process; unmount it before mounting read-write",
                    volume.display()
                )
            }
            bail!(
                "{} is already mounted read-write by another domfs process",
                volume.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", volume.display()))
        }
    }
}

/// A shared lock on the directory underneath the mount: `domfs unmount` takes it
/// exclusively to learn that this daemon has exited. Only `domfs unmount` probing at the
/// same moment can hold it exclusively, so a refusal is retried briefly.
fn lock_mountpoint(mountpoint: &Path) -> Result<File> {
    let dir = File::open(mountpoint)
        .with_context(|| format!("cannot open mount point {}", mountpoint.display()))?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match dir.try_lock_shared() {
            Ok(()) => return Ok(dir),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "{} is still being unmounted by another domfs process; try again",
                mountpoint.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", mountpoint.display()));
            }
        }
    }
}

fn spawn_signal_thread(signals: SigSet, mountpoint: PathBuf) -> Result<()> {
    std::thread::Builder::new()
        .name("domfs-signals".into())
        .spawn(move || {
            loop {
                let signal = match signals.wait() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!("waiting for signals: {e}");
                        return;
                    }
                };
                tracing::info!("{signal}: unmounting {}", mountpoint.display());
                match mountinfo::unmount(&mountpoint, true) {
                    Ok(()) | Err(UnmountError::NotMounted) => {}
                    Err(e) => tracing::error!("unmounting {}: {e}", mountpoint.display()),
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

/// Serves requests until the session ends, then reports the final commit.
fn serve(mounted: Mounted, p: &Prepared) -> Result<u8> {
    let Mounted {
        session, fs, lease, ..
    } = mounted;
    let ended = session.run();
    // `destroy` made the final commit; this one only reports its outcome (it has
    // nothing left to write when that commit succeeded).
    let committed = fs.sync();
    if let Some(lease) = &lease {
        if committed.is_ok() && !fs.is_revoked() {
            super::mount_anchor::finish(lease, &fs);
        }
        release(lease);
    }
    if fs.is_revoked() {
        lifecycle(
            p,
            &format!(
                "access revoked: {} unmounted without a final commit; the key is dropped",
                p.mountpoint.display()
            ),
        );
        return Ok(FAILURE);
    }
    if let Err(e) = &ended {
        tracing::error!("the FUSE session ended with an error: {e}");
        // Nothing serves the mount any more: take it away rather than leave it dead.
        match mountinfo::unmount(&p.mountpoint, true) {
            Ok(()) | Err(UnmountError::NotMounted) => {}
            Err(e) => tracing::error!("unmounting {}: {e}", p.mountpoint.display()),
        }
    }
    match committed {
        Ok(()) => {
            lifecycle(
                p,
                &format!("unmounted {}; final commit done", p.mountpoint.display()),
            );
            Ok(if ended.is_ok() { OK } else { FAILURE })
        }
        Err(e) => {
            tracing::error!(
                "final commit of {} failed: {e}; the volume holds the last successful commit",
                p.volume.display()
            );
            Ok(FAILURE)
        }
    }
}

fn mounted_message(p: &Prepared, read_only: bool) -> String {
    format!(
        "mounted {} on {}{}{}",
        p.volume.display(),
        p.mountpoint.display(),
        if read_only { " (read-only)" } else { "" },
        if p.writeback_cache {
            " with the writeback cache"
        } else {
            ""
        }
    )
}

/// A timestamped line about the daemon's life (mounted, unmounted) on stderr — the log
/// file once the daemon is in the background.
fn lifecycle(p: &Prepared, what: &str) {
    if !p.quiet {
        eprintln!("{} domfs[{}]: {what}", utc_now(), std::process::id());
    }
}

/// `2026-11-20T22:16:05Z`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[path = "mount_daemon.rs"]
mod daemon;
use daemon::{daemonize, redirect_stderr};

// ---- unmount --------------------------------------------------------------------------

pub fn run_unmount(args: UnmountArgs, global: Global) -> Result<u8> {
    let mountpoint = mountinfo::resolve(&args.mountpoint)
        .with_context(|| format!("cannot find {}", args.mountpoint.display()))?;
    let entry = match mountinfo::find(&mountpoint).context("cannot read the mount table")? {
        Some(entry) if entry.fstype == FSTYPE => entry,
        Some(entry) => bail!(
            "{} is not a domfs mount (it is a {} mount of {})",
            mountpoint.display(),
            entry.fstype,
            entry.source
        ),
        None => bail!(
            "{} is not a domfs mount (nothing is mounted there)",
            mountpoint.display()
        ),
    };
    match mountinfo::unmount(&mountpoint, false) {
        Ok(()) | Err(UnmountError::NotMounted) => {}
        Err(UnmountError::Busy) => bail!(
            "{} is busy: a process has a file open or its working directory there \
             (`fuser -vm {}` lists them); nothing was unmounted",
            mountpoint.display(),
            mountpoint.display()
        ),
        Err(e) => bail!("cannot unmount {}: {e}", mountpoint.display()),
    }
    let timeout = Duration::from_secs(args.timeout);
    let start = Instant::now();
    let daemon_gone = mountinfo::wait_for_lock(&mountpoint, timeout)
        .with_context(|| format!("cannot lock {}", mountpoint.display()))?;
    let volume = PathBuf::from(&entry.source);
    let volume_free = daemon_gone
        && (entry.read_only
            || mountinfo::wait_for_lock(&volume, timeout.saturating_sub(start.elapsed()))
                .with_context(|| format!("cannot lock {}", volume.display()))?);
    if !volume_free {
        bail!(
            "{} is unmounted, but its daemon has not finished with {} after {} s \
             (still making its final commit?); see its log",
            mountpoint.display(),
            volume.display(),
            args.timeout
        );
    }
    if global.verbose > 0 {
        eprintln!(
            "unmounted {}; {} is committed and released",
            mountpoint.display(),
            volume.display()
        );
    }
    Ok(OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        let text = utc_now();
        assert_eq!(text.len(), 20, "{text}");
        assert!(text.starts_with("20"), "{text}");
        assert!(text.ends_with('Z'));
    }
}
