//! The audit log inside the filesystem, without FUSE: entries wait in memory and are
//! committed with the data, verify after a reopen, survive nothing they should not (a cut
//! tail against the head, a damaged block), never get dropped on a full volume, and wait
//! in a bounded queue on read-only volumes. Paths at the time come from `path_of`.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use common::TestVolume;
use domfs::Error;
use domfs::audit::{AccessMode, AuditOp, AuditRecord, LogScan, read_log};
use domfs::filesystem::inode::{ROOT_INO, S_IFREG};
use domfs::filesystem::meta::FsSuper;
use domfs::filesystem::{AUDIT_LOG_PATH, Caller, Filesystem, READ_ONLY_QUEUE, RenameFlags};
use domfs::store::{BlockStore, StoreOptions};
use domfs::types::{BLOCK_SIZE, LogicalBlock};

const ME: Caller = Caller {
    uid: 1000,
    gid: 100,
    pid: 1,
};

fn open(vol: &TestVolume) -> Filesystem {
    let store = vol.open_with(StoreOptions {
        auto_commit: false,
        ..StoreOptions::default()
    });
    Filesystem::open(Arc::new(store), false).expect("open filesystem")
}

fn open_read_only(vol: &TestVolume) -> Filesystem {
    Filesystem::open(Arc::new(vol.open_with(StoreOptions::read_only())), true)
        .expect("open read-only")
}

/// The committed log, read the way `domfs audit` reads it.
fn committed_log(vol: &TestVolume) -> LogScan {
    let store = vol.open_with(StoreOptions::read_only());
    read_log(&store, store.audit_key(), &store.header().volume_id).expect("read the log")
}

fn record(op: AuditOp, ino: u64, path: &str) -> AuditRecord {
    AuditRecord {
        time_us: AuditRecord::now_us(),
        uid: 1000,
        gid: 100,
        pid: 4242,
        user: "alice".into(),
        process: "cat".into(),
        host: "ward-3".into(),
        inode: ino,
        path: path.into(),
        op,
        mode: if op == AuditOp::Open {
            AccessMode::Read
        } else {
            AccessMode::None
        },
        ..AuditRecord::default()
    }
}

fn fsck_clean(vol: &TestVolume) {
    let store = vol.open_with(StoreOptions::read_only());
    let report = domfs::filesystem::fsck::check(&store, &[])
        .expect("check runs")
        .expect("a filesystem");
    assert!(report.is_clean(), "{report:?}");
}

fn fs_super(store: &BlockStore) -> FsSuper {
    let mut block = [0u8; BLOCK_SIZE];
    store.read(LogicalBlock(0), &mut block).expect("read");
    FsSuper::decode(&block).expect("decode").expect("formatted")
}

#[test]
fn a_filesystem_without_a_log_opens_with_an_empty_one() {
    // A filesystem written before the audit log (zeros at 832..1136) has an empty log.
    let vol = TestVolume::new(32 << 20);
    {
        let fs = open(&vol);
        fs.mknod(ROOT_INO, b"f", S_IFREG | 0o600, 0, ME)
            .expect("create");
        fs.sync().expect("sync");
    }
    let store = vol.open_with(StoreOptions::read_only());
    let sb = fs_super(&store);
    assert!(sb.audit.is_free());
    assert!(sb.audit_head.is_empty());
    let mut raw = [0u8; BLOCK_SIZE];
    store.read(LogicalBlock(0), &mut raw).expect("read");
    assert!(raw[832..1136].iter().all(|&b| b == 0));
    drop(store);
    let log = committed_log(&vol);
    assert!(log.is_intact() && log.entries.is_empty());
    // And it takes entries from then on.
    let fs = open(&vol);
    fs.audit(record(AuditOp::Open, 2, "/f")).expect("audit");
    fs.sync().expect("sync");
    drop(fs);
    assert_eq!(committed_log(&vol).entries.len(), 1);
    fsck_clean(&vol);
}

#[test]
fn entries_are_committed_with_the_data_and_verify_after_reopen() {
    let vol = TestVolume::new(32 << 20);
    let fs = open(&vol);
    let file = fs
        .mknod(ROOT_INO, b"p1.txt", S_IFREG | 0o600, 0, ME)
        .expect("create");
    fs.audit_done(record(AuditOp::Create, file.ino, "/p1.txt"));
    fs.audit(record(AuditOp::Open, file.ino, "/p1.txt"))
        .expect("audit");
    fs.write(file.ino, 0, b"blood type 0+").expect("write");
    assert_eq!(fs.audit_pending(), 2);
    // Queued, not yet in the volume: nothing was committed since.
    assert!(committed_log(&vol).entries.is_empty());
    fs.sync().expect("sync");
    assert_eq!(fs.audit_pending(), 0);
    assert_eq!(fs.audit_head().seq, 2);
    let log = committed_log(&vol);
    assert!(log.is_intact(), "{:?}", log.problems);
    let ops: Vec<(u64, AuditOp)> = log.entries.iter().map(|e| (e.seq, e.op)).collect();
    assert_eq!(ops, [(1, AuditOp::Create), (2, AuditOp::Open)]);
    assert_eq!(log.entries[1].path, "/p1.txt");
    assert_eq!(log.entries[1].process, "cat");
    // The live mount reads the same, through the filesystem.
    let live = fs.read_audit_log().expect("read the live log");
    assert!(live.is_intact());
    assert_eq!(live.entries, log.entries);
    // What a checkpoint anchors: the commit and the audit head inside it, as a pair.
    let durable = fs.durable_state();
    assert_eq!(durable.audit_head, fs.audit_head());
    assert_eq!(
        durable.superblock.sequence,
        fs.store().superblock().sequence
    );
    fs.audit(record(AuditOp::Open, file.ino, "/p1.txt"))
        .expect("audit");
    fs.write(file.ino, 0, b"blood type A+").expect("write");
    assert_eq!(
        fs.durable_state().audit_head.seq,
        2,
        "nothing new is durable yet"
    );
    fs.sync().expect("sync");
    assert_eq!(fs.durable_state().audit_head.seq, 3);
    assert!(fs.durable_state().superblock.sequence > durable.superblock.sequence);

    // More entries chain on, across a reopen.
    drop(fs);
    let fs = open(&vol);
    assert_eq!(fs.audit_head().seq, 3);
    assert_eq!(fs.durable_state().audit_head, fs.audit_head());
    for i in 0..100 {
        fs.audit(record(AuditOp::Open, file.ino, &format!("/p{i}")))
            .expect("audit");
    }
    fs.sync().expect("sync");
    drop(fs);
    let log = committed_log(&vol);
    assert!(log.is_intact(), "{:?}", log.problems);
    assert_eq!(log.entries.len(), 103);
    assert_eq!(log.head.seq, 103);
    assert!(log.head.len > BLOCK_SIZE as u64, "the log spans blocks");
    fsck_clean(&vol);
}

#[test]
fn a_large_queue_is_written_at_the_next_change() {
    let vol = TestVolume::new(64 << 20);
    let fs = open(&vol);
    let mut big = record(AuditOp::Open, 2, &format!("/{}", "x".repeat(4000)));
    big.detail = "d".repeat(1000);
    let mut n = 0;
    while fs.audit_head().seq == 0 {
        fs.audit(big.clone()).expect("audit");
        n += 1;
        assert!(n < 1000, "the queue never went into the log");
    }
    // Past 1 MiB of entries: written into the log (not committed yet) by themselves.
    let entry_bytes = big.encoded_len() + domfs::audit::chain::FRAME_OVERHEAD;
    assert!(n * entry_bytes > domfs::filesystem::FLUSH_BYTES, "{n}");
    assert!(
        (n - 1) * entry_bytes <= domfs::filesystem::FLUSH_BYTES,
        "{n}"
    );
    assert!(committed_log(&vol).entries.is_empty());
    fs.sync().expect("sync");
    drop(fs);
    let log = committed_log(&vol);
    assert!(log.is_intact(), "{:?}", log.problems);
    assert_eq!(log.entries.len(), n);
    fsck_clean(&vol);
}

#[test]
fn a_cut_tail_is_detected_against_the_head() {
    let vol = TestVolume::new(32 << 20);
    {
        let fs = open(&vol);
        for i in 0..5 {
            fs.audit(record(AuditOp::Open, 2, &format!("/f{i}")))
                .expect("audit");
        }
        fs.sync().expect("sync");
    }
    let entry = committed_log(&vol);
    assert!(entry.is_intact());
    let total = entry.head.len;
    let last = {
        let mut one = domfs::audit::ChainHead::default();
        let mut bytes = Vec::new();
        let store = vol.open_with(StoreOptions::read_only());
        domfs::audit::seal_entries(
            store.audit_key(),
            &store.header().volume_id,
            &mut one,
            [entry.entries[4].clone()],
            &mut bytes,
        );
        bytes.len() as u64
    };
    // Someone who can write the volume cuts the last entry off the log (and the length
    // in the head), but cannot make the head's MAC and sequence number match.
    {
        let store = vol.open_with(StoreOptions::default());
        let mut sb = fs_super(&store);
        sb.audit.size = total - last;
        sb.audit_head.len = total - last;
        store.write(LogicalBlock(0), &sb.encode()).expect("write");
        store.commit().expect("commit");
    }
    let log = committed_log(&vol);
    assert!(!log.is_intact());
    assert_eq!(log.entries.len(), 4);
    assert!(
        log.problems[0].what.contains("cut off"),
        "{:?}",
        log.problems
    );
}

#[test]
fn a_damaged_last_block_is_reported_and_the_log_goes_on_after_it() {
    let vol = TestVolume::new(32 << 20);
    {
        let fs = open(&vol);
        for i in 0..3 {
            fs.audit(record(AuditOp::Open, 2, &format!("/f{i}")))
                .expect("audit");
        }
        fs.sync().expect("sync");
    }
    // Flip a byte of the log's (only) block in the container.
    let phys = {
        let store = vol.open_with(StoreOptions::read_only());
        let sb = fs_super(&store);
        let logical = sb.audit.map.get(&store, 0).expect("map").expect("mapped");
        store
            .locate(LogicalBlock(logical))
            .expect("locate")
            .expect("stored")
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&vol.path)
        .expect("open container");
    let at = phys.0 * BLOCK_SIZE as u64 + 100;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, at).expect("read");
    file.write_all_at(&[byte[0] ^ 0x40], at).expect("write");
    drop(file);

    let log = committed_log(&vol);
    assert!(!log.is_intact());
    assert_eq!(log.problems[0].seq, 1, "{:?}", log.problems);

    // The next mount appends after the damaged block, with an entry about it.
    {
        let fs = open(&vol);
        fs.audit(record(AuditOp::Open, 2, "/after")).expect("audit");
        fs.sync().expect("sync despite the damaged log block");
    }
    let log = committed_log(&vol);
    assert!(!log.is_intact(), "the damage stays visible");
    let ops: Vec<(AuditOp, &str)> = log
        .entries
        .iter()
        .map(|e| (e.op, e.path.as_str()))
        .collect();
    assert_eq!(
        ops,
        [
            (AuditOp::IntegrityError, AUDIT_LOG_PATH),
            (AuditOp::Open, "/after")
        ]
    );
    assert_eq!(log.entries[0].seq, 4, "the chain numbering goes on");
    assert_eq!(log.problems.len(), 1, "{:?}", log.problems);
}

#[test]
fn a_full_volume_refuses_the_open_rather_than_drop_its_entry() {
    let vol = TestVolume::new(16 << 20);
    let fs = open(&vol);
    let file = fs
        .mknod(ROOT_INO, b"big", S_IFREG | 0o600, 0, ME)
        .expect("create");
    let chunk = vec![0x5au8; 256 << 10];
    let mut offset = 0u64;
    loop {
        match fs.write(file.ino, offset, &chunk) {
            Ok(_) => offset += chunk.len() as u64,
            Err(Error::NoSpace) => break,
            Err(e) => panic!("write: {e}"),
        }
    }
    fs.sync().expect("sync");
    // Entries are taken while the log has room, then refused — never dropped.
    let mut big = record(AuditOp::Open, file.ino, &format!("/{}", "y".repeat(4000)));
    big.detail = "z".repeat(1000);
    let mut accepted = 0usize;
    let refused = loop {
        match fs.audit(big.clone()) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 100_000, "never refused");
    };
    assert!(matches!(refused, Error::NoSpace), "{refused}");
    assert_eq!(refused.errno(), 28, "ENOSPC");
    fs.sync().expect("what was accepted is written");
    drop(fs);
    let log = committed_log(&vol);
    assert!(log.is_intact(), "{:?}", log.problems);
    assert_eq!(log.entries.len(), accepted);
    fsck_clean(&vol);
}

#[test]
fn read_only_volumes_queue_entries_for_draining() {
    let vol = TestVolume::new(32 << 20);
    drop(open(&vol));
    let fs = open_read_only(&vol);
    for i in 0..5 {
        fs.audit(record(AuditOp::Open, 2, &format!("/r{i}")))
            .expect("audit");
    }
    assert_eq!(fs.audit_pending(), 5);
    fs.sync().expect("a read-only sync writes nothing");
    let drained = fs.drain_pending();
    assert_eq!(drained.dropped, 0);
    let paths: Vec<&str> = drained.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["/r0", "/r1", "/r2", "/r3", "/r4"]);
    assert_eq!(fs.audit_pending(), 0);
    // Bounded: the oldest go first, and are counted.
    for i in 0..READ_ONLY_QUEUE + 3 {
        fs.audit_done(record(AuditOp::Open, 2, &format!("/q{i}")));
    }
    let drained = fs.drain_pending();
    assert_eq!(drained.entries.len(), READ_ONLY_QUEUE);
    assert_eq!(drained.dropped, 3);
    assert_eq!(drained.entries[0].path, "/q3");
    drop(fs);
    assert!(committed_log(&vol).entries.is_empty());
}

#[test]
fn paths_at_the_time_follow_names_and_renames() {
    let vol = TestVolume::new(32 << 20);
    let fs = open(&vol);
    let a = fs.mkdir(ROOT_INO, b"ward", 0o755, ME).expect("mkdir");
    let b = fs.mkdir(a.ino, b"room 2", 0o755, ME).expect("mkdir");
    let f = fs
        .mknod(b.ino, b"p\xff.txt", S_IFREG | 0o600, 0, ME)
        .expect("create");
    assert_eq!(fs.path_of(ROOT_INO).as_deref(), Some("/"));
    // Directories are found through their parents even when nobody told the cache.
    assert_eq!(fs.path_of(b.ino).as_deref(), Some("/ward/room 2"));
    // Files need the name the kernel learnt them by.
    assert_eq!(fs.path_of(f.ino), None);
    fs.remember_name(b.ino, b"p\xff.txt", f.ino);
    assert_eq!(
        fs.path_of(f.ino).as_deref(),
        Some("/ward/room 2/p\\xff.txt")
    );
    assert_eq!(
        fs.path_in(b.ino, b"new").as_deref(),
        Some("/ward/room 2/new")
    );
    assert_eq!(fs.child_ino(b.ino, b"p\xff.txt"), Some(f.ino));
    assert_eq!(fs.child_ino(b.ino, b"missing"), None);
    // A renamed directory: everything below follows.
    fs.rename(
        ROOT_INO,
        b"ward",
        ROOT_INO,
        b"icu",
        RenameFlags::default(),
        ME,
    )
    .expect("rename");
    fs.remember_name(ROOT_INO, b"icu", a.ino);
    assert_eq!(fs.path_of(f.ino).as_deref(), Some("/icu/room 2/p\\xff.txt"));
}
