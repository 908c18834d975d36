//! Crash: `kill -9` the domfs daemon in the middle of writes with fsyncs, then clean up
//! the dead mount with `domfs unmount`, `domfs fsck` must find the volume clean, and after
//! a remount every write that an fsync had acknowledged is there with its exact bytes.
//!
//! Each round creates a few files (fsynced, as is their directory), then writer threads
//! write to them — pwrites at random offsets (overwrites, extensions, sparse gaps) and now
//! and then an ftruncate — and fsync (one thread) or fdatasync (the other) a file after
//! every few writes to it. Every operation is logged before it is issued; when a sync of a
//! file returns success, the operations on that file so far are acknowledged. Once some
//! syncs have been acknowledged and a round-specific delay has passed, the daemon gets
//! SIGKILL. The writers then see their calls fail (ENOTCONN/EIO: expected), and stop.
//!
//! After the remount, every byte of a file must be what its acknowledged operations left
//! there, unless an unacknowledged operation (which may or may not have reached the volume
//! before the kill) may have changed it: its data, zeros where it grew or cut the file.
//! Unacknowledged writes may be there in part: domfs commits between requests, but the
//! kernel splits one write() into several requests (a partial page that is not cached
//! goes alone), so a write() is not atomic across a crash — nor does POSIX ask it to be.
//! Files of earlier rounds must still hold what they held after their round's recovery.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::mount::*;
use common::prng_bytes as data;

/// Files per writer thread.
const FILES_PER_WRITER: usize = 3;
/// Files grow to about this size at most.
const MAX_SIZE: u64 = 1 << 20;

/// One logged operation on a file.
#[derive(Clone, Copy, Debug)]
enum FileOp {
    Write { offset: u64, len: usize, fill: u64 },
    Truncate(u64),
}

/// What a writer did to one file.
#[derive(Clone, Debug, Default)]
struct FileLog {
    ops: Vec<FileOp>,
    /// How many of `ops` a successful fsync/fdatasync covered.
    acked: usize,
    syncs: usize,
}

fn apply(content: &mut Vec<u8>, op: FileOp) {
    match op {
        FileOp::Write { offset, len, fill } => {
            let end = offset as usize + len;
            if content.len() < end {
                content.resize(end, 0);
            }
            content[offset as usize..end].copy_from_slice(&data(len, fill));
        }
        FileOp::Truncate(size) => content.resize(size as usize, 0),
    }
}

/// The file's contents after its first `k` operations, starting from `base`.
fn replay(base: &[u8], ops: &[FileOp]) -> Vec<u8> {
    let mut c = base.to_vec();
    for &op in ops {
        apply(&mut c, op);
    }
    c
}

/// The largest `k` ≥ `log.acked` whose state equals `found`, if any.
fn matching_prefix(base: &[u8], log: &FileLog, found: &[u8]) -> Option<usize> {
    let mut state = replay(base, &log.ops[..log.acked]);
    let mut hit = (state == found).then_some(log.acked);
    for (i, &op) in log.ops.iter().enumerate().skip(log.acked) {
        apply(&mut state, op);
        if state == found {
            hit = Some(i + 1);
        }
    }
    hit
}

/// Checks `found` against the acknowledged state `acked`: every byte must be what the
/// acknowledged operations left there, or what an unacknowledged operation may have put
/// there: its data (a write may land in part: the kernel splits one write() into several
/// requests at page boundaries), zeros where the file grew (holes) or was truncated. The
/// size must be one that some mix of the unacknowledged operations can produce. Returns
/// the offending byte ranges (empty: fine).
fn check_acknowledged(acked: &[u8], unacked: &[FileOp], found: &[u8]) -> Vec<(usize, usize)> {
    // Replay the unacknowledged operations to learn the sizes they pass through.
    let mut size = acked.len() as u64;
    let mut max_size = size;
    // From here on, a byte may read as zero or be missing (a truncate cut it).
    let mut cut_from = u64::MAX;
    let mut writes = Vec::new();
    for &op in unacked {
        match op {
            FileOp::Write { offset, len, fill } => {
                writes.push((offset, data(len, fill)));
                size = size.max(offset + len as u64);
            }
            FileOp::Truncate(to) => {
                cut_from = cut_from.min(to.min(size));
                size = to;
            }
        }
        max_size = max_size.max(size);
    }
    let mut bad: Vec<(usize, usize)> = Vec::new();
    if found.len() as u64 > max_size {
        bad.push((max_size as usize, found.len()));
    }
    for p in 0..acked.len().max(found.len()).min(max_size as usize) {
        let (a, f) = (acked.get(p).copied(), found.get(p).copied());
        if a == f {
            continue;
        }
        let pos = p as u64;
        let ok = match f {
            None => pos >= cut_from,
            Some(f) => {
                (f == 0 && (pos >= cut_from || p >= acked.len()))
                    || writes.iter().any(|(offset, d)| {
                        pos >= *offset
                            && pos < offset + d.len() as u64
                            && d[p - *offset as usize] == f
                    })
            }
        };
        if !ok {
            match bad.last_mut() {
                Some((_, end)) if *end == p => *end = p + 1,
                _ => bad.push((p, p + 1)),
            }
        }
    }
    bad
}

/// The checker accepts what a crash may leave and refuses lost acknowledged bytes.
fn checker_self_test() {
    let acked = data(10_000, 1);
    let w = FileOp::Write {
        offset: 5000,
        len: 8000,
        fill: 2,
    };
    let mut whole = acked.clone();
    apply(&mut whole, w);
    // The write's first request only, or its second one only (which grew the file).
    let first = [&whole[..8192], &acked[8192..]].concat();
    let second = [&acked[..8192], &whole[8192..]].concat();
    assert!(check_acknowledged(&acked, &[], &acked).is_empty());
    assert!(check_acknowledged(&acked, &[w], &acked).is_empty());
    assert!(check_acknowledged(&acked, &[w], &whole).is_empty());
    assert!(check_acknowledged(&acked, &[w], &first).is_empty());
    assert!(check_acknowledged(&acked, &[w], &second).is_empty());
    assert!(check_acknowledged(&acked, &[w, FileOp::Truncate(100)], &acked[..100]).is_empty());
    // Lost or changed acknowledged bytes, and a file too long or too short.
    let mut lost = acked.clone();
    lost[4999] ^= 1;
    assert_eq!(check_acknowledged(&acked, &[w], &lost), [(4999, 5000)]);
    assert!(!check_acknowledged(&acked, &[], &acked[..9999]).is_empty());
    assert!(!check_acknowledged(&acked, &[w], &[&whole[..], &[0]].concat()).is_empty());
    let mut zeroed = acked.clone();
    zeroed[100..200].fill(0);
    assert!(!check_acknowledged(&acked, &[w], &zeroed).is_empty());
}

fn first_difference(want: &[u8], got: &[u8]) -> String {
    match want.iter().zip(got).position(|(a, b)| a != b) {
        Some(i) => format!(
            "acknowledged size {}, found {}; first difference at byte {i}",
            want.len(),
            got.len()
        ),
        None => format!(
            "acknowledged size {}, found {} (equal up to the shorter)",
            want.len(),
            got.len()
        ),
    }
}

/// Writes to `files` until a call fails (the daemon is gone). Returns each file's log.
fn writer(
    paths: Vec<PathBuf>,
    seed: u64,
    data_sync: bool,
    acked_syncs: Arc<AtomicUsize>,
) -> Vec<FileLog> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut logs = vec![FileLog::default(); paths.len()];
    let mut sizes = vec![0u64; paths.len()];
    let mut since_sync = vec![0usize; paths.len()];
    let files: Vec<File> = paths
        .iter()
        .map(|p| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .expect("open for writing")
        })
        .collect();
    let every: Vec<usize> = (0..paths.len()).map(|_| rng.random_range(1..=8)).collect();
    loop {
        let i = rng.random_range(0..files.len());
        let op = if rng.random_bool(0.08) {
            FileOp::Truncate(rng.random_range(0..=sizes[i] + 8192))
        } else {
            let offset = match rng.random_range(0..10) {
                0..6 => rng.random_range(0..=sizes[i].min(MAX_SIZE)),
                6..9 => rng.random_range(0..MAX_SIZE),
                _ => sizes[i].min(MAX_SIZE),
            };
            let len = if rng.random_bool(0.7) {
                rng.random_range(1..=8192)
            } else {
                rng.random_range(8193..=65536)
            };
            FileOp::Write {
                offset,
                len,
                fill: rng.random(),
            }
        };
        // Logged before it is issued: a failed call may still have reached the volume.
        logs[i].ops.push(op);
        let result = match op {
            FileOp::Write { offset, len, fill } => {
                match files[i].write_at(&data(len, fill), offset) {
                    Ok(n) if n == len => Ok(()),
                    // The daemon died while the kernel was sending the write's parts.
                    Ok(_) => return logs,
                    Err(e) => Err(e),
                }
            }
            FileOp::Truncate(size) => files[i].set_len(size),
        };
        if result.is_err() {
            return logs;
        }
        sizes[i] = match op {
            FileOp::Write { offset, len, .. } => sizes[i].max(offset + len as u64),
            FileOp::Truncate(size) => size,
        };
        since_sync[i] += 1;
        if since_sync[i] >= every[i] {
            since_sync[i] = 0;
            let synced = if data_sync {
                files[i].sync_data()
            } else {
                files[i].sync_all()
            };
            if synced.is_err() {
                return logs;
            }
            logs[i].acked = logs[i].ops.len();
            logs[i].syncs += 1;
            acked_syncs.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Creates `names` empty under the mount and makes them (and the directory) durable.
fn create_durably(mountpoint: &Path, names: &[String]) {
    for name in names {
        let f = File::create(mountpoint.join(name)).expect("create");
        f.sync_all().expect("fsync new file");
    }
    File::open(mountpoint)
        .expect("open mount root")
        .sync_all()
        .expect("fsync directory");
}

struct Round {
    /// How long the writers run after the first acknowledged syncs before the kill.
    delay: Duration,
    seed: u64,
}

#[test]
fn acknowledged_writes_survive_kill_9_of_the_daemon() {
    if !fuse_available() {
        return;
    }
    checker_self_test();
    let vol = Volume::new();
    let mp = vol.mountpoint("m");
    let rounds = [
        Round {
            delay: Duration::ZERO,
            seed: 11,
        },
        Round {
            delay: Duration::from_millis(250),
            seed: 12,
        },
        Round {
            delay: Duration::from_millis(900),
            seed: 13,
        },
        Round {
            delay: Duration::from_millis(2000),
            seed: 14,
        },
    ];
    // Files of finished rounds and what they must keep holding.
    let mut settled: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (r, round) in rounds.iter().enumerate() {
        let started = Instant::now();
        let m = vol.mount(&mp, &[]);
        for (name, want) in &settled {
            assert_eq!(
                &fs::read(m.path(name)).unwrap(),
                want,
                "round {r}: {name} changed since its round"
            );
        }
        let writers: Vec<Vec<String>> = (0..2)
            .map(|t| {
                (0..FILES_PER_WRITER)
                    .map(|i| format!("r{r}-w{t}-f{i}"))
                    .collect()
            })
            .collect();
        for names in &writers {
            create_durably(&mp, names);
        }

        // Acknowledged syncs per writer.
        let acked_syncs: Vec<Arc<AtomicUsize>> = writers
            .iter()
            .map(|_| Arc::new(AtomicUsize::new(0)))
            .collect();
        let (tx, rx) = mpsc::channel();
        for (t, names) in writers.iter().enumerate() {
            let paths: Vec<PathBuf> = names.iter().map(|n| mp.join(n)).collect();
            let acked = acked_syncs[t].clone();
            let tx = tx.clone();
            let seed = round.seed * 100 + t as u64;
            std::thread::spawn(move || {
                let logs = writer(paths, seed, t == 1, acked);
                let _ = tx.send((t, logs));
            });
        }
        drop(tx);

        // Kill in the middle: both writers have had syncs acknowledged and are going on.
        let synced = || -> Vec<usize> {
            acked_syncs
                .iter()
                .map(|a| a.load(Ordering::SeqCst))
                .collect()
        };
        assert!(
            wait_until(Duration::from_secs(30), || synced().iter().all(|&n| n >= 2)),
            "round {r}: the writers got no syncs acknowledged: {:?}",
            synced()
        );
        std::thread::sleep(round.delay);
        let pid = daemon_pid(&mp);
        let syncs_before_kill: usize = synced().iter().sum();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();

        // The writers notice (their calls fail) and stop.
        let mut logs: BTreeMap<usize, Vec<FileLog>> = BTreeMap::new();
        for _ in 0..writers.len() {
            let (t, l) = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("a writer did not stop after the daemon was killed");
            logs.insert(t, l);
        }
        assert!(
            wait_until(Duration::from_secs(10), || {
                !Path::new(&format!("/proc/{pid}")).exists()
            }),
            "the killed daemon {pid} is still there"
        );

        // The dead mount: `domfs unmount` takes it away.
        let out = domfs(&["unmount", path_str(&mp)]);
        assert!(
            out.status.success(),
            "round {r}: domfs unmount of a mount whose daemon died: {}",
            text(&out.stderr)
        );
        assert!(!is_mounted(&mp), "round {r}: still mounted");
        let mut m = m;
        m.live = false;
        assert!(
            lock_is_free(&vol.path),
            "round {r}: the volume is still locked"
        );

        // fsck: clean.
        vol.fsck();

        // Remount: every acknowledged write is there.
        let m = vol.mount(&mp, &[]);
        let mut total_ops = 0;
        let mut total_acked = 0;
        let mut unacked_found = 0;
        let mut torn = 0;
        for (t, names) in writers.iter().enumerate() {
            for (name, log) in names.iter().zip(&logs[&t]) {
                let found = fs::read(m.path(name))
                    .unwrap_or_else(|e| panic!("round {r}: {name} after the crash: {e}"));
                total_ops += log.ops.len();
                total_acked += log.acked;
                let acked = replay(&[], &log.ops[..log.acked]);
                let unacked = &log.ops[log.acked..];
                let bad = check_acknowledged(&acked, unacked, &found);
                assert!(
                    bad.is_empty(),
                    "round {r}: {name} after the crash: ACKNOWLEDGED DATA IS NOT THERE \
                     ({}; {} of {} operations acknowledged): wrong bytes at {:?}; \
                     unacknowledged operations: {unacked:?}",
                    first_difference(&acked, &found),
                    log.acked,
                    log.ops.len(),
                    &bad[..bad.len().min(12)],
                );
                // For the record: whole unacknowledged operations, or parts of them.
                match matching_prefix(&[], log, &found) {
                    Some(k) => unacked_found += k - log.acked,
                    None => torn += 1,
                }
                settled.insert(name.clone(), found);
            }
        }
        m.unmount();
        vol.fsck();
        println!(
            "round {r}: killed {:?} after the first syncs ({syncs_before_kill} syncs \
             acknowledged); {total_ops} operations issued, {total_acked} acknowledged, \
             {unacked_found} unacknowledged ones found whole on the volume, {torn} files \
             with an unacknowledged write there in part; {:.1} s",
            round.delay,
            started.elapsed().as_secs_f64()
        );
    }
    assert_nothing_mounted_under(vol.dir.path());
}
