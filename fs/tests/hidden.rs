//! Hidden, not deleted: unlink, rmdir, rename-over and truncation keep the old content as
//! a hidden version (who, when), never shown by lookup, readdir or getattr; list, show,
//! restore and purge; no-keep paths; keep-all on a full volume; keep-for; statfs; crash
//! safety. First through the library, then `domfs hidden` on an unmounted volume, then
//! through a real FUSE mount.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::devices::{CrashDevice, MemDevice};
use common::mount::{Volume, domfs, fuse_available, path_str, text};
use common::prng_bytes;
use domfs::Error;
use domfs::crypto::DomainKey;
use domfs::device::{Access, Device, FileDevice};
use domfs::error::Posix;
use domfs::filesystem::inode::{ROOT_INO, S_IFREG, Timestamp};
use domfs::filesystem::{
    Caller, Filesystem, FsOptions, HiddenEvent, HiddenSink, HiddenVersion, PurgeReason,
    RenameFlags, SetAttr,
};
use domfs::format::header::KeyMode;
use domfs::format::retention::Retention;
use domfs::store::{BlockStore, StoreOptions};
use domfs::volume::{CreateOptions, create_volume_with};

const WHO: Caller = Caller {
    uid: 1234,
    gid: 5678,
    pid: 0,
};

/// The test process as the caller (its name is in the records).
fn me() -> Caller {
    Caller {
        pid: std::process::id(),
        ..WHO
    }
}

fn my_name() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .expect("comm")
        .trim()
        .to_string()
}

/// A volume in a temporary file, with a retention policy.
struct Vol {
    _dir: tempfile::TempDir,
    path: PathBuf,
    key: [u8; 32],
}

impl Vol {
    fn new(size: u64, retention: &Retention) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v.vol");
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(size))
            .expect("container");
        let key: [u8; 32] = rand::random();
        let dev = FileDevice::open(&path, Access::ReadWrite).expect("open");
        create_volume_with(
            &dev,
            CreateOptions {
                meta: b"hidden".to_vec(),
                key_mode: KeyMode::KeyFile,
            },
            vec![retention.to_extension().expect("policy")],
            Some(&DomainKey::from_bytes(&key).expect("key")),
        )
        .expect("create");
        Self {
            _dir: dir,
            path,
            key,
        }
    }

    fn store(&self, access: Access) -> Arc<BlockStore> {
        let dev = Arc::new(FileDevice::open(&self.path, access).expect("open"));
        let key = DomainKey::from_bytes(&self.key).expect("key");
        Arc::new(
            BlockStore::open(
                dev,
                &key,
                StoreOptions {
                    access,
                    auto_commit: false,
                    ..StoreOptions::default()
                },
            )
            .expect("store"),
        )
    }

    fn fs(&self) -> Filesystem {
        self.fs_with(options())
    }

    fn fs_with(&self, options: FsOptions) -> Filesystem {
        Filesystem::open_with(self.store(Access::ReadWrite), false, options).expect("fs")
    }

    fn fsck(&self) {
        let key = DomainKey::from_bytes(&self.key).expect("key");
        let dev = Arc::new(FileDevice::open(&self.path, Access::ReadOnly).expect("open"));
        let report = domfs::store::fsck::fsck(dev, &key, &|_, _| {}).expect("store fsck");
        assert!(report.is_clean(), "{report:?}");
        let store = self.store(Access::ReadOnly);
        let report = domfs::filesystem::fsck::check(&*store, &[])
            .expect("fs check")
            .expect("a filesystem");
        assert!(report.is_clean(), "{report:?}");
    }
}

fn options() -> FsOptions {
    FsOptions {
        host: Some("test-host".into()),
        ..FsOptions::default()
    }
}

fn keep_all() -> Retention {
    Retention::keep_all()
}

fn posix<T: std::fmt::Debug>(r: Result<T, Error>) -> Posix {
    match r {
        Err(Error::Posix(p)) => p,
        other => panic!("expected a POSIX error, got {other:?}"),
    }
}

/// Creates `name` in `parent` with `data`; the kernel's reference is dropped (as after the
/// kernel forgets it), so a removal hides it at once.
fn file(fs: &Filesystem, parent: u64, name: &str, data: &[u8]) -> u64 {
    let e = fs
        .mknod(parent, name.as_bytes(), S_IFREG | 0o640, 0, WHO)
        .expect("create");
    if !data.is_empty() {
        fs.write(e.ino, 0, data).expect("write");
    }
    fs.forget(e.ino, 1);
    e.ino
}

fn dir(fs: &Filesystem, parent: u64, name: &str) -> u64 {
    let e = fs
        .mkdir(parent, name.as_bytes(), 0o755, WHO)
        .expect("mkdir");
    fs.forget(e.ino, 1);
    e.ino
}

/// The whole content of a version.
fn content(fs: &Filesystem, path: &str, version: u32) -> Vec<u8> {
    let v = fs.hidden_get(path.as_bytes(), version).expect("version");
    let mut out = Vec::new();
    while (out.len() as u64) < v.size {
        let chunk = fs
            .hidden_read(path.as_bytes(), version, out.len() as u64, 1 << 20)
            .expect("read");
        assert!(!chunk.is_empty());
        out.extend(chunk);
    }
    out
}

fn names(fs: &Filesystem, dir: u64) -> Vec<String> {
    fs.readdir(dir, 0, 10_000)
        .expect("readdir")
        .into_iter()
        .map(|(_, e)| String::from_utf8_lossy(&e.name).into_owned())
        .collect()
}

fn truncate(fs: &Filesystem, ino: u64, size: u64) {
    fs.setattr(
        ino,
        SetAttr {
            size: Some(size),
            ..SetAttr::default()
        },
        me(),
    )
    .expect("truncate");
}

/// Writes to `ino` until the volume is full (1 MiB at a time, then 4 KiB); the bytes
/// written.
fn fill(fs: &Filesystem, ino: u64) -> u64 {
    let chunk = prng_bytes(1 << 20, 99);
    let mut filled = 0u64;
    for piece in [&chunk[..], &chunk[..4096]] {
        loop {
            match fs.write(ino, filled, piece) {
                Ok(_) => filled += piece.len() as u64,
                Err(Error::NoSpace) => break,
                Err(e) => panic!("unexpected {e}"),
            }
        }
    }
    filled
}

/// `fallocate(PUNCH_HOLE | KEEP_SIZE)`.
const PUNCH: i32 = 0x02 | 0x01;

/// Punches `[offset, offset + length)` out of `ino` as the test process; the version kept.
fn punch(fs: &Filesystem, ino: u64, offset: u64, length: u64) -> Option<HiddenVersion> {
    fs.fallocate_by(ino, offset, length, PUNCH, me())
        .expect("punch")
}

/// Collects what a sink is told.
#[derive(Default)]
struct Events(Mutex<Vec<String>>);

impl HiddenSink for Events {
    fn hidden(&self, v: &HiddenVersion) {
        self.push(format!("hidden {} {}", v.path_text(), v.event.name()));
    }
    fn restored(&self, v: &HiddenVersion, to: &[u8]) {
        self.push(format!(
            "restored {} to {}",
            v.path_text(),
            String::from_utf8_lossy(to)
        ));
    }
    fn purged(&self, v: &HiddenVersion, why: PurgeReason) {
        self.push(format!("purged {} {why:?}", v.path_text()));
    }
}

impl Events {
    fn push(&self, s: String) {
        self.0.lock().expect("events").push(s);
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().expect("events"))
    }
}

// ---- the library ----------------------------------------------------------------------

#[test]
fn unlink_keeps_the_file_hidden_and_restore_brings_it_back_byte_for_byte() {
    let vol = Vol::new(64 << 20, &keep_all());
    let events = Arc::new(Events::default());
    let fs = vol.fs_with(FsOptions {
        hidden_sink: Some(events.clone()),
        ..options()
    });
    let ward = dir(&fs, ROOT_INO, "ward");
    let data = prng_bytes(3 * 4096 + 123, 7);
    let ino = file(&fs, ward, "chart.txt", &data);
    let before = fs.statfs();
    fs.unlink(ward, b"chart.txt", me()).expect("unlink");

    // Gone from view: lookup, readdir, and getattr of its (never reused) number.
    assert_eq!(posix(fs.lookup(ward, b"chart.txt")), Posix::NotFound);
    assert_eq!(names(&fs, ward), [".", ".."]);
    assert_eq!(posix(fs.getattr(ino)), Posix::NotFound);
    assert_eq!(posix(fs.read(ino, 0, 10)), Posix::NotFound);
    assert_eq!(posix(fs.write(ino, 0, b"x")), Posix::NotFound);

    let list = fs.hidden_list(None).expect("list");
    assert_eq!(list.len(), 1);
    let v = &list[0];
    assert_eq!(v.path, b"ward/chart.txt");
    assert_eq!(v.version, 1);
    assert_eq!(v.event, HiddenEvent::Unlink);
    assert_eq!((v.uid, v.gid, v.pid), (1234, 5678, std::process::id()));
    assert_eq!(v.process, my_name());
    assert_eq!(v.host, "test-host");
    assert_eq!(v.size, data.len() as u64);
    assert_eq!(v.blocks, 5, "four data blocks and the block map's");
    assert!(!v.open);
    let age = Timestamp::now().secs - v.time.secs;
    assert!((0..60).contains(&age), "recorded {age} s ago");
    assert_eq!(content(&fs, "ward/chart.txt", 1), data);
    assert_eq!(events.take(), ["hidden ward/chart.txt unlink"]);

    // Keeping cost no data block; statfs counts them out of the total.
    let after = fs.statfs();
    assert_eq!(after.blocks, before.blocks - 5);
    assert!(after.free + 8 >= before.free, "no data was copied");
    assert_eq!(fs.hidden_usage(), (1, 5));

    // It survives a reopen, then comes back whole.
    fs.sync().expect("sync");
    drop(fs);
    vol.fsck();
    let fs = vol.fs_with(FsOptions {
        hidden_sink: Some(events.clone()),
        ..options()
    });
    assert_eq!(
        content(&fs, "/ward/chart.txt/", 1),
        data,
        "paths are normalized"
    );
    let restored = fs
        .hidden_restore(b"ward/chart.txt", 1, None)
        .expect("restore");
    assert_eq!(restored.ino, ino);
    let e = fs.lookup(ward, b"chart.txt").expect("back");
    assert_eq!(e.ino, ino, "the same inode, linked back");
    assert_eq!(e.inode.nlink, 1);
    assert_eq!(fs.read(ino, 0, 1 << 20).expect("read"), data);
    assert!(fs.hidden_list(None).expect("list").is_empty());
    assert_eq!(fs.statfs().blocks, before.blocks);
    assert_eq!(events.take(), ["restored ward/chart.txt to ward/chart.txt"]);
    fs.sync().expect("sync");
    drop(fs);
    vol.fsck();
}

#[test]
fn rmdir_and_rename_over_keep_what_they_remove() {
    let vol = Vol::new(64 << 20, &keep_all());
    let fs = vol.fs();
    let d = dir(&fs, ROOT_INO, "empty");
    fs.setxattr(d, b"user.ward", b"12", 0).expect("xattr");
    fs.rmdir(ROOT_INO, b"empty", me()).expect("rmdir");
    let old = prng_bytes(10_000, 1);
    let new = prng_bytes(5_000, 2);
    file(&fs, ROOT_INO, "report", &old);
    let tmp = file(&fs, ROOT_INO, "report.tmp", &new);
    fs.rename(
        ROOT_INO,
        b"report.tmp",
        ROOT_INO,
        b"report",
        RenameFlags::default(),
        me(),
    )
    .expect("rename over");
    assert_eq!(fs.lookup(ROOT_INO, b"report").expect("report").ino, tmp);

    let list = fs.hidden_list(None).expect("list");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].path, b"report");
    assert_eq!(list[0].event, HiddenEvent::RenameOver);
    assert_eq!(list[1].path, b"empty");
    assert_eq!(list[1].event, HiddenEvent::Rmdir);
    assert_eq!(
        list[1].kind(),
        Some(domfs::filesystem::dir::FileKind::Directory)
    );
    assert_eq!(content(&fs, "report", 1), old);
    assert_eq!(
        posix(fs.hidden_read(b"empty", 1, 0, 10)),
        Posix::IsDirectory
    );

    // The directory comes back with its attributes; files can be made in it.
    fs.hidden_restore(b"empty", 1, None).expect("restore dir");
    let back = fs.lookup(ROOT_INO, b"empty").expect("dir back");
    assert_eq!(back.ino, d);
    assert_eq!(back.inode.nlink, 2);
    assert_eq!(fs.getxattr(d, b"user.ward").expect("xattr kept"), b"12");
    file(&fs, d, "inside", b"x");
    assert_eq!(fs.getattr(ROOT_INO).expect("root").inode.nlink, 3);
    // The replaced report goes under a new name.
    fs.hidden_restore(b"report", 1, Some(b"report.before"))
        .expect("restore --to");
    let e = fs.lookup(ROOT_INO, b"report.before").expect("restored");
    assert_eq!(fs.read(e.ino, 0, 1 << 20).expect("read"), old);
    fs.sync().expect("sync");
    drop(fs);
    vol.fsck();
}

#[test]
fn truncation_keeps_the_cut_blocks_without_copying_them() {
    let vol = Vol::new(128 << 20, &keep_all());
    let fs = vol.fs();
    const BS: u64 = 4096;
    // (file size, cut to): to zero (O_TRUNC), inside the first block, a small prefix kept
    // (the cut side is larger), a large prefix kept, a block boundary, past the end.
    let cases: [(u64, u64); 6] = [
        (50_000, 0),
        (50_000, 100),
        (300 * BS + 17, 5 * BS + 99),
        (300 * BS + 17, 290 * BS + 1),
        (20 * BS, 8 * BS),
        (10 * BS, 10 * BS),
    ];
    for (i, &(size, cut)) in cases.iter().enumerate() {
        let name = format!("f{i}");
        let data = prng_bytes(size as usize, i as u64 + 10);
        let ino = file(&fs, ROOT_INO, &name, &data);
        fs.sync().expect("sync");
        let used_before = fs.statfs().free;
        truncate(&fs, ino, cut);
        fs.sync().expect("sync");
        // No data copied: at most the one block of the cut point, block-map blocks, the
        // table's block and the tree above them.
        let taken = used_before.saturating_sub(fs.statfs().free);
        assert!(taken <= 16, "case {i}: {taken} blocks taken");
        // The file: its first `cut` bytes; growing it again reads zeros.
        let attr = fs.getattr(ino).expect("attr").inode;
        assert_eq!(attr.size, cut);
        assert_eq!(
            fs.read(ino, 0, size as u32).expect("read"),
            &data[..cut as usize]
        );
        truncate(&fs, ino, size);
        let regrown = fs.read(ino, 0, size as u32).expect("read");
        assert!(regrown[cut as usize..].iter().all(|&b| b == 0), "case {i}");
        // Cutting only zeros again keeps nothing more.
        truncate(&fs, ino, cut);
        if cut == size {
            assert!(
                fs.hidden_list(Some(name.as_bytes()))
                    .expect("list")
                    .is_empty()
            );
            continue;
        }
        let list = fs.hidden_list(Some(name.as_bytes())).expect("list");
        assert_eq!(list.len(), 1, "case {i}: only the first cut kept data");
        let v = &list[0];
        assert_eq!(v.event, HiddenEvent::Truncate);
        assert_eq!((v.size, v.cut_at), (size, cut));
        assert_eq!(v.process, my_name());
        // The version: zeros before the block of the cut point, the old bytes after.
        let kept = content(&fs, &name, 1);
        let from = (cut / BS * BS) as usize;
        assert!(kept[..from].iter().all(|&b| b == 0), "case {i}");
        assert_eq!(&kept[from..], &data[from..], "case {i}");
    }
    // A truncation that cuts nothing (holes only) keeps nothing.
    let sparse = fs
        .mknod(ROOT_INO, b"sparse", S_IFREG | 0o600, 0, WHO)
        .expect("sparse");
    fs.write(sparse.ino, 0, b"head").expect("write");
    truncate(&fs, sparse.ino, 1 << 20);
    truncate(&fs, sparse.ino, 8192);
    assert!(fs.hidden_list(Some(b"sparse")).expect("list").is_empty());
    fs.sync().expect("sync");
    drop(fs);
    vol.fsck();
}

#[test]
fn a_punched_hole_keeps_what_it_discards_without_copying_whole_blocks() {
    let vol = Vol::new(128 << 20, &keep_all());
    let events = Arc::new(Events::default());
    let fs = vol.fs_with(FsOptions {
        hidden_sink: Some(events.clone()),
        ..options()
    });
    const BS: u64 = 4096;
    let size = 300 * BS + 17;
    // (offset, length): inside one block, across a block edge, whole blocks, whole blocks
    // with partial edges, past the end, most of the file (what lies outside the range
    // moves), all of it.
    let cases: [(u64, u64); 7] = [
        (100, 200),
        (5 * BS - 10, 30),
        (8 * BS, 20 * BS),
        (3 * BS + 1, 50 * BS),
        (size - 5000, 1 << 20),
        (BS + 7, size - 3 * BS),
        (0, size),
    ];
    let mut wanted = Vec::new();
    for (i, &(offset, length)) in cases.iter().enumerate() {
        let name = format!("p{i}");
        let data = prng_bytes(size as usize, i as u64 + 30);
        let ino = file(&fs, ROOT_INO, &name, &data);
        // An xattr block: the file's own, it stays with the file.
        fs.setxattr(ino, b"user.note", b"chart", 0).expect("xattr");
        fs.sync().expect("sync");
        let before = fs.statfs();
        let blocks_before = fs.getattr(ino).expect("attr").inode.blocks;
        let v = punch(&fs, ino, offset, length).expect("a version");
        fs.sync().expect("sync");
        let after = fs.statfs();
        let stop = (offset + length).min(size);
        let range = offset as usize..stop as usize;
        // The file: its size, the range reads as zeros, the rest as before.
        let mut expected = data.clone();
        expected[range.clone()].fill(0);
        let attr = fs.getattr(ino).expect("attr").inode;
        assert_eq!(attr.size, size, "case {i}");
        assert_eq!(fs.read(ino, 0, size as u32 + 1).expect("read"), expected);
        // The version: the file's size, the punched bytes at their offsets, zeros around.
        assert_eq!(v.event, HiddenEvent::Punch { end: stop }, "case {i}");
        assert_eq!(v.punched(), Some((offset, stop - offset)));
        assert_eq!(
            (v.size, v.cut_at, v.path_text()),
            (size, offset, name.clone())
        );
        assert_eq!(
            (v.uid, v.gid, v.process.clone()),
            (WHO.uid, WHO.gid, my_name())
        );
        let mut want = vec![0u8; size as usize];
        want[range.clone()].copy_from_slice(&data[range]);
        assert_eq!(content(&fs, &name, 1), want, "case {i}");
        // No whole block copied: at most the two edges, block-map blocks, the inode's and
        // the table's blocks, and the tree above them.
        let taken = before.free.saturating_sub(after.free);
        assert!(taken <= 16, "case {i}: {taken} blocks taken");
        // The version's blocks moved out of the file's; statfs leaves them out.
        assert_eq!(before.blocks - after.blocks, v.blocks, "case {i}");
        assert!(
            attr.blocks + v.blocks <= blocks_before + 4,
            "case {i}: {} + {} blocks, {blocks_before} before",
            attr.blocks,
            v.blocks
        );
        assert_eq!(fs.hidden_usage().1, before_hidden(&fs, &wanted) + v.blocks);
        assert_eq!(events.take(), [format!("hidden {name} punch")]);
        // The range is zeros now: punching it again keeps nothing more.
        assert!(punch(&fs, ino, offset, length).is_none(), "case {i}");
        wanted.push((name, v, want));
    }
    fs.sync().expect("sync");
    drop(fs);
    vol.fsck();

    // The records read back (with their ranges); a version restores byte for byte.
    let fs = vol.fs();
    for (name, v, want) in &wanted {
        let got = fs.hidden_get(name.as_bytes(), 1).expect("version");
        assert_eq!(
            (got.event, got.cut_at, got.blocks),
            (v.event, v.cut_at, v.blocks)
        );
        assert_eq!(content(&fs, name, 1), *want);
    }
    let (name, v, want) = &wanted[3];
    let restored = fs
        .hidden_restore(name.as_bytes(), 1, Some(b"p3.restored"))
        .expect("restore");
    assert_eq!(restored.id, v.id);
    let e = fs.lookup(ROOT_INO, b"p3.restored").expect("restored");
    assert_eq!(e.inode.size, size);
    assert_eq!(fs.read(e.ino, 0, size as u32 + 1).expect("read"), *want);
    assert!(fs.hidden_get(name.as_bytes(), 1).is_err());
    // Hidden in turn, the files' inodes go through fsck's count of the blocks a version
    // holds: their counts after the punch were right too.
    for (name, _, _) in &wanted {
        fs.unlink(ROOT_INO, name.as_bytes(), me()).expect("unlink");
    }
    fs.sync().expect("sync");
    drop(fs);
    vol.fsck();
}

/// The blocks the versions listed before hold.
fn before_hidden(fs: &Filesystem, listed: &[(String, HiddenVersion, Vec<u8>)]) -> u64 {
    listed
        .iter()
        .map(|(name, _, _)| fs.hidden_get(name.as_bytes(), 1).expect("version").blocks)
        .sum()
}

#[test]
fn a_punch_that_discards_nothing_or_is_not_kept_keeps_nothing() {
    const BS: u64 = 4096;
    let policy = Retention {
        keep_for: None,
        no_keep: vec!["*.tmp".into()],
    };
    let vol = Vol::new(64 << 20, &policy);
    let fs = vol.fs();
    // Data, a hole, written zeros, data.
    let head = prng_bytes(BS as usize, 1);
    let ino = file(&fs, ROOT_INO, "sparse", &head);
    fs.write(ino, 10 * BS, &vec![0u8; 10 * BS as usize])
        .expect("zeros");
    fs.write(ino, 20 * BS, &head).expect("tail");
    let blocks = fs.getattr(ino).expect("attr").inode.blocks;
    assert!(punch(&fs, ino, BS, 19 * BS).is_none(), "holes and zeros");
    assert!(
        fs.getattr(ino).expect("attr").inode.blocks <= blocks - 10,
        "the zero blocks are freed"
    );
    // Wholly past the end of the file.
    assert!(punch(&fs, ino, 21 * BS, BS).is_none());
    assert!(punch(&fs, ino, 100 * BS, 1 << 30).is_none());
    assert_eq!(fs.read(ino, 0, BS as u32).expect("read"), head);
    assert_eq!(fs.read(ino, 20 * BS, BS as u32).expect("read"), head);
    // A path that is not kept: the punch frees the data as before.
    let data = prng_bytes(1 << 20, 2);
    let tmp = file(&fs, ROOT_INO, "work.tmp", &data);
    fs.sync().expect("sync");
    let free = fs.statfs().free;
    assert!(punch(&fs, tmp, 1000, (1 << 20) - 2000).is_none());
    fs.sync().expect("sync");
    assert!(fs.statfs().free >= free + 250, "its blocks are free again");
    let mut expected = data.clone();
    expected[1000..(1 << 20) - 1000].fill(0);
    assert_eq!(fs.read(tmp, 0, 1 << 20).expect("read"), expected);
    // The same punch of a kept path keeps it.
    let kept = file(&fs, ROOT_INO, "work.dat", &data);
    assert!(punch(&fs, kept, 1000, (1 << 20) - 2000).is_some());
    // fallocate without a caller punches too (who is unknown).
    let other = file(&fs, ROOT_INO, "other.dat", &data);
    fs.fallocate(other, 0, BS, PUNCH).expect("punch");
    let v = fs.hidden_get(b"other.dat", 1).expect("kept");
    assert_eq!((v.uid, v.pid, v.punched()), (0, 0, Some((0, BS))));
    let list = fs.hidden_list(None).expect("list");
    assert_eq!(list.len(), 2, "{list:?}");
    fs.sync().expect("sync");
    drop(fs);
    vol.fsck();
}

#[test]
fn a_full_volume_refuses_a_punch_it_cannot_keep() {
    const BS: u64 = 4096;
    let policy = Retention {
        keep_for: None,
        no_keep: vec!["*.tmp".into()],
    };
    let vol = Vol::new(8 << 20, &policy);
    let fs = vol.fs();
    let data = prng_bytes(1 << 20, 4);
    let chart = file(&fs, ROOT_INO, "chart", &data);
    // Fill the volume a block at a time.
    let filler = file(&fs, ROOT_INO, "filler.tmp", b"");
    let filled = fill(&fs, filler);
    // Keeping the punch needs room the volume does not have: refused, nothing changed.
    match fs.fallocate_by(chart, BS + 1, 100 * BS, PUNCH, me()) {
        Err(Error::NoSpace) => {}
        other => panic!("expected ENOSPC, got {other:?}"),
    }
    assert_eq!(fs.read(chart, 0, 1 << 20).expect("read"), data);
    assert!(fs.hidden_list(None).expect("list").is_empty());
    // A punch that keeps nothing needs no room: it makes some.
    assert!(punch(&fs, filler, 0, filled).is_none());
    let v = punch(&fs, chart, BS + 1, 100 * BS).expect("kept now");
    assert_eq!(v.punched(), Some((BS + 1, 100 * BS)));
    fs.sync().expect("sync");
    drop(fs);
    vol.fsck();
}

/// On a full volume a truncation that would keep a version is refused with nothing
/// changed, and one of a scratch file (no version to keep) goes through and frees space
/// (it used to reserve room for a version it would not keep, and answered ENOSPC).
#[test]
fn a_full_volume_truncates_scratch_files_and_refuses_cuts_it_cannot_keep() {
    const BS: u64 = 4096;
    let policy = Retention {
        keep_for: None,
        no_keep: vec!["*-journal".into()],
    };
    let vol = Vol::new(8 << 20, &policy);
    let fs = vol.fs();
    let data = prng_bytes(1 << 20, 6);
    let chart = file(&fs, ROOT_INO, "chart", &data);
    file(&fs, ROOT_INO, "note", b"a record");
    file(&fs, ROOT_INO, "old-journal", &data[..BS as usize]);
    file(&fs, ROOT_INO, "new-journal", &data[..BS as usize]);
    file(&fs, ROOT_INO, "note.draft", b"a newer record");
    let journal = file(&fs, ROOT_INO, "db-journal", b"");
    let filled = fill(&fs, journal);
    let cut = |ino: u64, size: u64| {
        fs.setattr(
            ino,
            SetAttr {
                size: Some(size),
                ..SetAttr::default()
            },
            me(),
        )
    };
    // Deleting a record needs room for its version's record: refused, nothing changed;
    // deleting a scratch file keeps nothing and goes through.
    match fs.unlink(ROOT_INO, b"note", me()) {
        Err(Error::NoSpace) => {}
        other => panic!("expected ENOSPC, got {other:?}"),
    }
    assert!(fs.lookup(ROOT_INO, b"note").is_ok());
    let over = |from: &str, to: &str| {
        fs.rename(
            ROOT_INO,
            from.as_bytes(),
            ROOT_INO,
            to.as_bytes(),
            RenameFlags::default(),
            me(),
        )
    };
    match over("note.draft", "note") {
        Err(Error::NoSpace) => {}
        other => panic!("expected ENOSPC for a rename over a record, got {other:?}"),
    }
    assert!(fs.lookup(ROOT_INO, b"note.draft").is_ok());
    over("new-journal", "old-journal").expect("a rename over a scratch file on a full volume");
    fs.unlink(ROOT_INO, b"old-journal", me())
        .expect("a scratch file is deleted on a full volume");
    // The record's cut needs room the volume does not have.
    match cut(chart, BS / 2) {
        Err(Error::NoSpace) => {}
        other => panic!("expected ENOSPC, got {other:?}"),
    }
    assert_eq!(fs.read(chart, 0, 1 << 20).expect("read"), data);
    assert!(fs.hidden_list(None).expect("list").is_empty());
    // The journal's cut keeps nothing: it needs no room and makes some.
    let free_before = fs.statfs().free;
    cut(journal, 0).expect("a scratch file truncates on a full volume");
    fs.sync().expect("sync");
    assert!(fs.statfs().free > free_before + filled / BS / 2);
    assert!(fs.hidden_list(None).expect("list").is_empty());
    // Now the record's cut is kept.
    cut(chart, BS / 2).expect("kept now");
    let v = fs.hidden_get(b"chart", 1).expect("the cut is a version");
    assert_eq!(v.event, HiddenEvent::Truncate);
    assert_eq!(content(&fs, "chart", 1)[BS as usize..], data[BS as usize..]);
    fs.sync().expect("sync");
    drop(fs);
    vol.fsck();
}

/// Blocks preallocated past the end of a file (fallocate KEEP_SIZE) are not content: a
/// kept truncation leaves them to the file, which frees them, so the version holds only
/// what was cut and the room asked for is enough even on a nearly full volume (moving the
/// preallocated blocks too needed more room than was reserved and stopped the filesystem).
#[test]
fn a_cut_keeps_content_not_the_blocks_preallocated_past_the_end() {
    const BS: u64 = 4096;
    const KEEP_SIZE: i32 = 0x01;
    let policy = Retention {
        keep_for: None,
        no_keep: vec!["*.tmp".into()],
    };
    let vol = Vol::new(512 << 20, &policy);
    let fs = vol.fs();
    let data = prng_bytes(8 * BS as usize, 8);
    let chart = file(&fs, ROOT_INO, "chart", &data);
    fs.fallocate_by(chart, 8 * BS, 30_000 * BS, KEEP_SIZE, me())
        .expect("preallocate");
    fs.sync().expect("sync");
    // Fill the rest, then give 128 blocks back: room for a cut of content, not for moving
    // the 30,000 preallocated blocks too.
    let filler = file(&fs, ROOT_INO, "filler.tmp", b"");
    fill(&fs, filler);
    let block = &prng_bytes(BS as usize, 9)[..];
    assert!(punch(&fs, filler, 0, 128 * BS).is_none());
    fs.sync().expect("sync");
    let free = fs.statfs().free;
    fs.setattr(
        chart,
        SetAttr {
            size: Some(8 * BS - 100),
            ..SetAttr::default()
        },
        me(),
    )
    .expect("a kept cut on a nearly full volume");
    fs.write(filler, 0, block)
        .expect("the filesystem still works");
    let v = fs.hidden_get(b"chart", 1).expect("the cut is kept");
    assert!(v.blocks <= 2, "the version holds {} blocks", v.blocks);
    assert_eq!(
        content(&fs, "chart", 1)[7 * BS as usize..],
        data[7 * BS as usize..]
    );
    fs.sync().expect("sync");
    assert!(
        fs.statfs().free > free + 29_000,
        "the preallocated blocks were not freed"
    );
    drop(fs);
    vol.fsck();
}

#[test]
fn versions_are_numbered_per_path_newest_first() {
    let vol = Vol::new(64 << 20, &keep_all());
    let fs = vol.fs();
    let d = dir(&fs, ROOT_INO, "notes");
    for round in 1..=3u8 {
        file(&fs, d, "today", &[round; 100]);
        fs.unlink(d, b"today", me()).expect("unlink");
        file(&fs, ROOT_INO, "other", &[round + 10; 10]);
        fs.unlink(ROOT_INO, b"other", me()).expect("unlink");
    }
    let mine = fs.hidden_list(Some(b"notes")).expect("list");
    assert_eq!(mine.len(), 3);
    for (i, v) in mine.iter().enumerate() {
        assert_eq!(v.version, i as u32 + 1);
        assert_eq!(content(&fs, "notes/today", v.version), [3 - i as u8; 100]);
    }
    assert!(mine[0].id > mine[1].id && mine[1].id > mine[2].id);
    // A prefix is a whole path component.
    file(&fs, ROOT_INO, "notes2", b"z");
    fs.unlink(ROOT_INO, b"notes2", me()).expect("unlink");
    assert_eq!(fs.hidden_list(Some(b"notes")).expect("list").len(), 3);
    assert_eq!(fs.hidden_list(Some(b"notes/today")).expect("list").len(), 3);
    assert_eq!(fs.hidden_list(None).expect("list").len(), 7);
    assert_eq!(posix(fs.hidden_get(b"notes/today", 4)), Posix::NotFound);
    assert_eq!(posix(fs.hidden_get(b"notes/today", 0)), Posix::NotFound);
    // Taking version 2 out renumbers: the oldest becomes 2.
    fs.hidden_restore(b"notes/today", 2, Some(b"notes/today.2"))
        .expect("restore");
    let left = fs.hidden_list(Some(b"notes/today")).expect("list");
    assert_eq!(left.len(), 2);
    assert_eq!(content(&fs, "notes/today", 2), [1; 100]);
    fs.sync().expect("sync");
    drop(fs);
    vol.fsck();
}

#[test]
fn restore_refuses_an_existing_target_and_a_missing_directory() {
    let vol = Vol::new(32 << 20, &keep_all());
    let fs = vol.fs();
    file(&fs, ROOT_INO, "a", b"old");
    fs.unlink(ROOT_INO, b"a", me()).expect("unlink");
    file(&fs, ROOT_INO, "a", b"new");
    assert_eq!(posix(fs.hidden_restore(b"a", 1, None)), Posix::Exists);
    assert_eq!(
        posix(fs.hidden_restore(b"a", 1, Some(b"nodir/a"))),
        Posix::NotFound
    );
    assert_eq!(
        posix(fs.hidden_restore(b"a", 1, Some(b"a/b"))),
        Posix::NotDirectory
    );
    assert_eq!(posix(fs.hidden_restore(b"a", 2, None)), Posix::NotFound);
    assert_eq!(fs.hidden_list(None).expect("list").len(), 1, "still hidden");
    fs.hidden_restore(b"a", 1, Some(b"a.old")).expect("restore");
    let e = fs.lookup(ROOT_INO, b"a.old").expect("a.old");
    assert_eq!(fs.read(e.ino, 0, 10).expect("read"), b"old");
    fs.sync().expect("sync");
    drop(fs);
    vol.fsck();
}

#[test]
fn a_file_unlinked_while_open_is_kept_as_of_its_last_close() {
    let vol = Vol::new(32 << 20, &keep_all());
    let fs = vol.fs();
    let e = fs
        .mknod(ROOT_INO, b"log", S_IFREG | 0o600, 0, WHO)
        .expect("create");
    fs.opened(e.ino);
    fs.write(e.ino, 0, b"first ").expect("write");
    fs.unlink(ROOT_INO, b"log", me()).expect("unlink");
    let v = fs.hidden_get(b"log", 1).expect("listed at once");
    assert!(v.open);
    // Still usable through the handle; writes after the unlink are kept too.
    fs.write(e.ino, 6, b"and last").expect("write after unlink");
    assert_eq!(fs.getattr(e.ino).expect("fstat").inode.nlink, 0);
    fs.released(e.ino);
    fs.forget(e.ino, 1);
    let v = fs.hidden_get(b"log", 1).expect("version");
    assert!(!v.open);
    assert_eq!(v.size, 14);
    assert_eq!(content(&fs, "log", 1), b"first and last");
    assert_eq!(posix(fs.getattr(e.ino)), Posix::NotFound);
    fs.sync().expect("sync");
    drop(fs);
    vol.fsck();
}

#[test]
fn no_keep_paths_are_freed_at_once() {
    let policy = Retention {
        keep_for: None,
        no_keep: vec!["*-journal".into(), "pg_wal/*".into(), "/scratch/**".into()],
    };
    let vol = Vol::new(64 << 20, &policy);
    let fs = vol.fs();
    assert_eq!(fs.retention(), &policy);
    let app = dir(&fs, ROOT_INO, "app");
    let pg = dir(&fs, ROOT_INO, "pgdata");
    let wal = dir(&fs, pg, "pg_wal");
    let base = dir(&fs, pg, "base");
    let scratch = dir(&fs, ROOT_INO, "scratch");
    let deep = dir(&fs, scratch, "x");
    let big = prng_bytes(1 << 20, 3);
    let free_before = fs.statfs().free;
    file(&fs, app, "db.sqlite-journal", &big);
    fs.unlink(app, b"db.sqlite-journal", me())
        .expect("unlink journal");
    file(&fs, wal, "000000010000000000000001", &big);
    fs.unlink(wal, b"000000010000000000000001", me())
        .expect("unlink wal");
    let seg = file(&fs, wal, "000000010000000000000002", &big);
    truncate(&fs, seg, 0);
    fs.unlink(wal, b"000000010000000000000002", me())
        .expect("unlink wal");
    file(&fs, deep, "y", &big);
    fs.unlink(deep, b"y", me()).expect("unlink scratch");
    fs.rmdir(scratch, b"x", me()).expect("rmdir scratch");
    fs.sync().expect("sync");
    assert!(fs.hidden_list(None).expect("list").is_empty());
    assert!(
        fs.statfs().free + 64 >= free_before,
        "the scratch files' blocks are free again"
    );
    // Records elsewhere are kept.
    file(&fs, base, "16384", &big[..8192]);
    fs.unlink(base, b"16384", me()).expect("unlink");
    let list = fs.hidden_list(None).expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].path, b"pgdata/base/16384");
    drop(fs);
    vol.fsck();
}

#[test]
fn a_full_keep_all_volume_answers_enospc_and_keeps_every_version() {
    let vol = Vol::new(8 << 20, &keep_all());
    let fs = vol.fs();
    let chunk = prng_bytes(256 * 1024, 9);
    let mut kept = Vec::new();
    // Fill, remove, fill again: removing frees nothing, so writes run out of space.
    'fill: for n in 0.. {
        let name = format!("f{n}");
        let e = fs
            .mknod(ROOT_INO, name.as_bytes(), S_IFREG | 0o600, 0, WHO)
            .expect("create");
        fs.forget(e.ino, 1);
        let mut written = 0u64;
        loop {
            match fs.write(e.ino, written, &chunk) {
                Ok(n) => written += u64::from(n),
                Err(Error::NoSpace) => break 'fill,
                Err(e) => panic!("unexpected {e}"),
            }
            if written >= 1 << 20 {
                break;
            }
        }
        match fs.unlink(ROOT_INO, name.as_bytes(), me()) {
            Ok(()) => kept.push((name, written)),
            Err(Error::NoSpace) => break,
            Err(e) => panic!("unexpected {e}"),
        }
        assert!(n < 100, "never ran out of space");
    }
    assert!(kept.len() >= 3, "only {} versions fit", kept.len());
    fs.sync().expect("sync after ENOSPC");
    let st = fs.statfs();
    assert!(st.available < 300, "the volume is full");
    drop(fs);
    vol.fsck();
    let fs = vol.fs();
    let list = fs.hidden_list(None).expect("list");
    assert_eq!(list.len(), kept.len(), "no version was dropped");
    for (name, written) in &kept {
        let v = fs.hidden_get(name.as_bytes(), 1).expect("kept");
        assert_eq!(v.size, *written);
        let head = fs
            .hidden_read(name.as_bytes(), 1, 0, 4096)
            .expect("readable");
        assert_eq!(head, &chunk[..4096]);
    }
    // Only the domain manager's purge makes room; then a version can be restored.
    let (first, _) = &kept[0];
    fs.hidden_purge(first.as_bytes(), 1).expect("purge");
    let (second, written) = &kept[1];
    fs.hidden_restore(second.as_bytes(), 1, None)
        .expect("restore");
    let e = fs.lookup(ROOT_INO, second.as_bytes()).expect("restored");
    assert_eq!(e.inode.size, *written);
    fs.sync().expect("sync");
    drop(fs);
    vol.fsck();
}

#[test]
fn keep_for_frees_old_versions_at_open_and_purge_frees_on_demand() {
    let policy = Retention {
        keep_for: Some(86_400),
        no_keep: Vec::new(),
    };
    let vol = Vol::new(64 << 20, &policy);
    let two_days_ago = Timestamp {
        secs: Timestamp::now().secs - 2 * 86_400,
        nanos: 0,
    };
    let old_clock: domfs::filesystem::hidden::Clock = Arc::new(move || two_days_ago);
    let data = prng_bytes(1 << 20, 4);
    {
        let fs = vol.fs_with(FsOptions {
            clock: Some(old_clock),
            ..options()
        });
        for name in ["old1", "old2"] {
            file(&fs, ROOT_INO, name, &data);
            fs.unlink(ROOT_INO, name.as_bytes(), me()).expect("unlink");
        }
        fs.sync().expect("sync");
    }
    let events = Arc::new(Events::default());
    let fs = vol.fs_with(FsOptions {
        hidden_sink: Some(events.clone()),
        ..options()
    });
    // The sweep at open freed both (older than a day) and told the sink.
    assert!(fs.hidden_list(None).expect("list").is_empty());
    let mut told = events.take();
    told.sort();
    assert_eq!(told, ["purged old1 Retention", "purged old2 Retention"]);
    assert_eq!(fs.hidden_usage(), (0, 0));
    // New versions stay; a sweep now frees nothing.
    for name in ["new1", "new2"] {
        file(&fs, ROOT_INO, name, &data);
        fs.unlink(ROOT_INO, name.as_bytes(), me()).expect("unlink");
    }
    assert!(fs.sweep_hidden().expect("sweep").is_empty());
    // The sweep's purges are in the audit trail.
    fs.sync().expect("sync");
    let log = fs.read_audit_log().expect("audit log");
    assert!(log.is_intact());
    let purges: Vec<_> = log
        .entries
        .iter()
        .filter(|e| e.op == domfs::audit::AuditOp::Purge)
        .collect();
    assert_eq!(purges.len(), 2, "{:?}", log.entries);
    assert!(
        purges
            .iter()
            .all(|e| e.detail.starts_with("retention keep-for=1d"))
    );
    assert_eq!(purges[0].path, "/old1");
    assert_eq!(fs.hidden_list(None).expect("list").len(), 2);
    // The manager's purge.
    let total = fs.statfs().blocks;
    let v = fs.hidden_purge(b"new1", 1).expect("purge");
    assert_eq!(v.blocks, 257);
    assert_eq!(fs.statfs().blocks, total + 257);
    assert_eq!(
        events.take().last().map(String::as_str),
        Some("purged new1 Manager")
    );
    assert_eq!(posix(fs.hidden_purge(b"new1", 1)), Posix::NotFound);
    fs.sync().expect("sync");
    drop(fs);
    vol.fsck();
}

/// Hiding is one operation like any other: a power cut at any write or sync leaves the
/// file either intact or hidden with all its bytes (unlink, truncation, a punched hole),
/// and a clean filesystem.
#[test]
fn a_crash_while_hiding_leaves_the_file_whole_or_hidden_whole() {
    let size = 16 << 20;
    let key = DomainKey::from_bytes(&[0x42; 32]).expect("key");
    let base = MemDevice::new(size);
    create_volume_with(
        &base,
        CreateOptions {
            meta: Vec::new(),
            key_mode: KeyMode::KeyFile,
        },
        vec![keep_all().to_extension().expect("policy")],
        Some(&key),
    )
    .expect("create");
    let old = prng_bytes(40_000, 5);
    let cut = prng_bytes(30_000, 6);
    let punched = prng_bytes(50_000, 7);
    // What the punch of `PUNCHED` discards, and what the file keeps.
    const PUNCHED: std::ops::Range<usize> = 3000..41_000;
    let mut discarded = vec![0u8; punched.len()];
    discarded[PUNCHED].copy_from_slice(&punched[PUNCHED]);
    let mut holed = punched.clone();
    holed[PUNCHED].fill(0);
    let open_fs = |dev: Arc<dyn Device>| {
        let store = BlockStore::open(
            dev,
            &key,
            StoreOptions {
                auto_commit: false,
                cache_bytes: 1 << 20,
                ..StoreOptions::default()
            },
        )?;
        Filesystem::open(Arc::new(store), false)
    };
    let image = {
        let dev: Arc<MemDevice> = Arc::new(base);
        let fs = open_fs(dev.clone() as Arc<dyn Device>).expect("fs");
        file(&fs, ROOT_INO, "a", &old);
        file(&fs, ROOT_INO, "b", &cut);
        file(&fs, ROOT_INO, "c", &punched);
        fs.sync().expect("sync");
        drop(fs);
        dev.snapshot()
    };
    let workload = |fs: &Filesystem| -> domfs::Result<()> {
        fs.unlink(ROOT_INO, b"a", me())?;
        let b = fs.lookup(ROOT_INO, b"b")?;
        fs.setattr(
            b.ino,
            SetAttr {
                size: Some(1000),
                ..SetAttr::default()
            },
            me(),
        )?;
        // The punch in a commit of its own, and one after it (so that a crash can come
        // after it too).
        fs.sync()?;
        let c = fs.lookup(ROOT_INO, b"c")?;
        let len = (PUNCHED.end - PUNCHED.start) as u64;
        fs.fallocate_by(c.ino, PUNCHED.start as u64, len, PUNCH, me())?;
        fs.sync()?;
        fs.write(c.ino, 0, b"after")?;
        fs.sync()
    };
    let mut points = 0;
    let mut seen_punched = false;
    for at in 0.. {
        let dev = Arc::new(CrashDevice::new(image.clone(), at));
        dev.arm(at);
        let done = open_fs(dev.clone() as Arc<dyn Device>).and_then(|fs| workload(&fs));
        if done.is_ok() && !dev.crashed() {
            break;
        }
        points += 1;
        dev.power_cut();
        let after = Arc::new(MemDevice::from_bytes(
            dev.take_post_crash_image().expect("post-crash image"),
        ));
        let fs = open_fs(after.clone() as Arc<dyn Device>).expect("opens after the crash");
        match fs.lookup(ROOT_INO, b"a") {
            Ok(e) => {
                assert_eq!(fs.read(e.ino, 0, 1 << 20).expect("read"), old, "at {at}");
                assert!(fs.hidden_get(b"a", 1).is_err());
            }
            Err(_) => assert_eq!(content(&fs, "a", 1), old, "at {at}"),
        }
        let b = fs.lookup(ROOT_INO, b"b").expect("b");
        match fs.hidden_get(b"b", 1) {
            Ok(_) => {
                assert_eq!(b.inode.size, 1000);
                assert_eq!(content(&fs, "b", 1), cut, "at {at}");
            }
            Err(_) => assert_eq!(fs.read(b.ino, 0, 1 << 20).expect("read"), cut, "at {at}"),
        }
        let c = fs.lookup(ROOT_INO, b"c").expect("c");
        assert_eq!(c.inode.size, punched.len() as u64);
        // The write after the punch may be there too.
        let head = fs.read(c.ino, 0, 5).expect("read");
        assert!(head == punched[..5] || head == b"after", "at {at}");
        let holed = [&head[..], &holed[5..]].concat();
        match fs.hidden_get(b"c", 1) {
            Ok(_) => {
                seen_punched = true;
                assert_eq!(content(&fs, "c", 1), discarded, "at {at}");
                assert_eq!(fs.read(c.ino, 0, 1 << 20).expect("read"), holed, "at {at}");
            }
            Err(_) => assert_eq!(
                fs.read(c.ino, 0, 1 << 20).expect("read"),
                punched,
                "at {at}"
            ),
        }
        drop(fs);
        let report = domfs::filesystem::fsck::check(
            &BlockStore::open(after, &key, StoreOptions::read_only()).expect("store"),
            &[],
        )
        .expect("check")
        .expect("fs");
        assert!(report.is_clean(), "at {at}: {report:?}");
    }
    assert!(points > 5, "only {points} crash points");
    assert!(seen_punched, "no crash came after the punch");
}

/// The cost of keeping against freeing (run by hand: `-- --ignored --nocapture`).
#[test]
#[ignore = "a measurement, not a check"]
fn cost_of_hiding_against_freeing() {
    for (what, policy) in [
        (
            "freed (no-keep *)",
            Retention {
                keep_for: None,
                no_keep: vec!["*".into()],
            },
        ),
        ("hidden (keep-all)", keep_all()),
    ] {
        let vol = Vol::new(1 << 30, &policy);
        let fs = vol.fs();
        let n = 10_000;
        let data = prng_bytes(8192, 1);
        for i in 0..n {
            file(&fs, ROOT_INO, &format!("file-{i:05}"), &data);
        }
        fs.sync().expect("sync");
        let free = fs.statfs().free;
        let start = std::time::Instant::now();
        for i in 0..n {
            fs.unlink(ROOT_INO, format!("file-{i:05}").as_bytes(), me())
                .expect("unlink");
        }
        fs.sync().expect("sync");
        let took = start.elapsed();
        let table = fs.hidden_usage();
        println!(
            "{what}: {n} unlinks of 8 KiB files in {took:?} ({:.1} µs each); free blocks {} → {}; hidden versions {}, blocks {}",
            took.as_secs_f64() * 1e6 / f64::from(n),
            free,
            fs.statfs().free,
            table.0,
            table.1
        );
        let start = std::time::Instant::now();
        drop(fs);
        let fs = vol.fs();
        println!(
            "  reopen (index of {} versions built) in {:?}",
            fs.hidden_usage().0,
            start.elapsed()
        );
        // Truncations of a 256 MiB file: to half (blocks move between maps), to zero.
        let big = fs
            .mknod(ROOT_INO, b"big", S_IFREG | 0o600, 0, WHO)
            .expect("create");
        let chunk = prng_bytes(1 << 20, 2);
        for i in 0..256u64 {
            fs.write(big.ino, i << 20, &chunk).expect("write");
        }
        fs.sync().expect("sync");
        for (what, size) in [("to half", 128u64 << 20), ("to zero", 0)] {
            let free = fs.statfs().free;
            let start = std::time::Instant::now();
            truncate(&fs, big.ino, size);
            fs.sync().expect("sync");
            println!(
                "  truncate {what}: {:?}, free blocks {} → {}",
                start.elapsed(),
                free,
                fs.statfs().free
            );
        }
        // A 64 MiB hole punched (not block-aligned: two edges copied) in the middle of a
        // 128 MiB file (its blocks move), and in a 66 MiB file (what lies outside moves).
        for (what, size) in [("of 128 MiB", 128u64 << 20), ("of 66 MiB", 66 << 20)] {
            let name = format!("punched {what}");
            let f = fs
                .mknod(ROOT_INO, name.as_bytes(), S_IFREG | 0o600, 0, WHO)
                .expect("create");
            for i in 0..size >> 20 {
                fs.write(f.ino, i << 20, &chunk).expect("write");
            }
            fs.sync().expect("sync");
            let free = fs.statfs().free;
            let start = std::time::Instant::now();
            let kept = punch(&fs, f.ino, (1 << 20) + 100, 64 << 20);
            fs.sync().expect("sync");
            println!(
                "  punch 64 MiB {what}: {:?}, free blocks {} → {}, version of {} blocks",
                start.elapsed(),
                free,
                fs.statfs().free,
                kept.map_or(0, |v| v.blocks)
            );
        }
    }
}

// ---- `domfs hidden` on an unmounted volume ---------------------------------------------

/// A key-file volume made by `domfs create`, with hidden versions made through the library.
fn cli_volume(extra: &[&str]) -> Volume {
    let vol = Volume::with_size("64M");
    if !extra.is_empty() {
        let mut args = vec!["-q", "create", "--force", "--size", "64M", "--key-file"];
        args.push(path_str(&vol.key));
        args.extend_from_slice(extra);
        args.push(path_str(&vol.path));
        let out = domfs(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    vol
}

fn offline_fs(vol: &Volume) -> Filesystem {
    let key = std::fs::read_to_string(&vol.key).expect("key file");
    let key = domfs::crypto::DomainKey::parse_key_file(key.as_bytes()).expect("key");
    let dev = Arc::new(FileDevice::open(&vol.path, Access::ReadWrite).expect("open"));
    let store = BlockStore::open(
        dev,
        &key,
        StoreOptions {
            auto_commit: false,
            ..StoreOptions::default()
        },
    )
    .expect("store");
    Filesystem::open_with(Arc::new(store), false, options()).expect("fs")
}

fn run_ok(args: &[&str]) -> String {
    let out = domfs(args);
    assert!(
        out.status.success(),
        "domfs {args:?} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn run_fails(args: &[&str], code: i32, message: &str) {
    let out = domfs(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "domfs {args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains(message),
        "domfs {args:?}: {:?} not in {}",
        message,
        text(&out.stderr)
    );
}

#[test]
fn cli_lists_shows_and_restores_on_an_unmounted_volume() {
    let vol = cli_volume(&["--retention", "keep-for=30d", "--no-keep", "*.tmp"]);
    let shown = run_ok(&["header", "show", path_str(&vol.path)]);
    assert!(
        shown.contains("keep-for=30d") && shown.contains("\"*.tmp\""),
        "{shown}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&run_ok(&["header", "show", "--json", path_str(&vol.path)]))
            .expect("json");
    assert_eq!(json["retention"]["keep_for_secs"], 30 * 86_400);
    assert_eq!(json["retention"]["no_keep"][0], "*.tmp");

    let v1 = prng_bytes(70_000, 11);
    let v2 = prng_bytes(1234, 12);
    {
        let fs = offline_fs(&vol);
        let d = dir(&fs, ROOT_INO, "ward 7");
        file(&fs, d, "chart", &v1);
        fs.unlink(d, b"chart", me()).expect("unlink");
        file(&fs, d, "chart", &v2);
        fs.unlink(d, b"chart", me()).expect("unlink");
        file(&fs, d, "x.tmp", &v2);
        fs.unlink(d, b"x.tmp", me()).expect("unlink");
        file(&fs, d, "chart", b"current");
        fs.sync().expect("sync");
    }
    let key = path_str(&vol.key);
    let volume = path_str(&vol.path);
    let table = run_ok(&["hidden", "list", volume, "--key-file", key]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    for column in ["PATH", "VERSION", "SIZE", "WHEN (UTC)", "WHO", "EVENT"] {
        assert!(lines[0].contains(column), "{table}");
    }
    assert!(lines[1].starts_with("ward 7/chart"), "{table}");
    assert!(
        lines[1].contains(" 1 ") && lines[1].contains("1234"),
        "{table}"
    );
    assert!(
        lines[2].contains(" 2 ") && lines[2].contains("70000"),
        "{table}"
    );
    assert!(
        lines[1].contains(&format!(
            "1234 pid {} {} @test-host",
            std::process::id(),
            my_name()
        )),
        "{table}"
    );
    assert!(lines[1].ends_with("unlink"), "{table}");
    // The columns line up.
    let at = lines[0].find("SIZE").expect("SIZE") + 4;
    assert!(
        lines
            .iter()
            .skip(1)
            .all(|l| l.get(at - 1..at).is_some_and(|c| c != " "))
    );

    let out = run_ok(&[
        "hidden",
        "list",
        volume,
        "ward 7",
        "--json",
        "--key-file",
        key,
    ]);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["path"], "ward 7/chart");
    assert_eq!(rows[0]["version"], 1);
    assert_eq!(rows[1]["size"], 70_000);
    assert_eq!(rows[0]["uid"], 1234);
    assert_eq!(rows[0]["event"], "unlink");
    assert_eq!(rows[0]["host"], "test-host");
    assert_eq!(
        run_ok(&["hidden", "list", volume, "nothing/here", "--key-file", key]),
        "no hidden versions\n"
    );

    let out = domfs(&[
        "hidden",
        "show",
        volume,
        "/ward 7/chart",
        "--version",
        "2",
        "--key-file",
        key,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, v1, "show writes the version byte for byte");
    run_fails(
        &[
            "hidden",
            "show",
            volume,
            "ward 7/chart",
            "--version",
            "3",
            "--key-file",
            key,
        ],
        1,
        "no hidden version 3",
    );

    // The current chart is in the way.
    run_fails(
        &[
            "hidden",
            "restore",
            volume,
            "ward 7/chart",
            "--version",
            "2",
            "--key-file",
            key,
        ],
        8,
        "exists",
    );
    let out = run_ok(&[
        "hidden",
        "restore",
        volume,
        "ward 7/chart",
        "--version",
        "2",
        "--to",
        "ward 7/chart.old",
        "--key-file",
        key,
    ]);
    assert!(out.contains("restored ward 7/chart"), "{out}");
    {
        let fs = offline_fs(&vol);
        let d = fs.lookup(ROOT_INO, b"ward 7").expect("dir").ino;
        let e = fs.lookup(d, b"chart.old").expect("restored");
        assert_eq!(fs.read(e.ino, 0, 1 << 20).expect("read"), v1);
        let left = fs.hidden_list(None).expect("list");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].size, v2.len() as u64);
    }
    vol.fsck();
    // The restore is in the audit trail, by this command.
    let trail = run_ok(&["audit", "--json", "--key-file", key, volume]);
    let restore = trail
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .find(|e| e["op"] == "restore")
        .unwrap_or_else(|| panic!("no restore entry in\n{trail}"));
    assert_eq!(restore["path"], "/ward 7/chart");
    assert_eq!(restore["process"], "domfs");
    assert!(
        restore["detail"]
            .as_str()
            .is_some_and(|d| d.ends_with("to /ward 7/chart.old")),
        "{restore}"
    );
    // Purging needs a domain manager; a key-file volume has none.
    let manager = vol.dir.path().join("manager.key");
    run_ok(&["manager", "keygen", "--out", path_str(&manager)]);
    run_fails(
        &[
            "hidden",
            "purge",
            volume,
            "ward 7/chart",
            "--version",
            "1",
            "--manager-key",
            path_str(&manager),
            "--key-file",
            key,
        ],
        8,
        "no domain manager",
    );
    // Bad retention input is refused before anything is written.
    run_fails(
        &[
            "create",
            "--size",
            "8M",
            "--key-file",
            key,
            "--retention",
            "keep-for=0d",
            "/tmp/x",
        ],
        2,
        "more than zero",
    );
    run_fails(
        &[
            "create",
            "--size",
            "8M",
            "--key-file",
            key,
            "--no-keep",
            "a//b",
            "/tmp/x",
        ],
        2,
        "components",
    );
}

#[test]
fn cli_purge_checks_the_manager_key_of_an_agent_mode_volume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manager = dir.path().join("manager.key");
    let other = dir.path().join("other.key");
    run_ok(&["manager", "keygen", "--out", path_str(&manager)]);
    run_ok(&["manager", "keygen", "--out", path_str(&other)]);
    let path = dir.path().join("v.vol");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(8 << 20))
        .expect("container");
    let signing = {
        let seed = std::fs::read_to_string(&manager).expect("manager key");
        let seed = hex::decode(seed.trim()).expect("hex");
        ed25519_dalek::SigningKey::from_bytes(&seed.try_into().expect("32 bytes"))
    };
    let dev = FileDevice::open(&path, Access::ReadWrite).expect("open");
    domfs::volume::create_ttp_volume(
        &dev,
        domfs::types::VolumeId::random().expect("id"),
        b"agent".to_vec(),
        domfs::volume::SignedAccessList {
            message: b"signed".to_vec(),
            signature: vec![1; 64],
            manager_key: signing.verifying_key().to_bytes().to_vec(),
        },
        Vec::new(),
    )
    .expect("create");
    let volume = path_str(&path);
    let socket = dir.path().join("no-agent.sock");
    run_fails(
        &[
            "hidden",
            "purge",
            volume,
            "a",
            "--version",
            "1",
            "--manager-key",
            path_str(&other),
            "--agent",
            path_str(&socket),
        ],
        3,
        "not the key of this domain's manager",
    );
    // The right manager gets as far as asking the agent for the volume's key.
    run_fails(
        &[
            "hidden",
            "purge",
            volume,
            "a",
            "--version",
            "1",
            "--manager-key",
            path_str(&manager),
            "--agent",
            path_str(&socket),
        ],
        1,
        "cannot reach the domfs agent",
    );
}

// ---- through a FUSE mount -------------------------------------------------------------

fn sh(mountpoint: &Path, script: &str) {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(mountpoint)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{script}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn fuse_removals_and_truncations_leave_hidden_versions() {
    assert!(fuse_available());
    let vol = Volume::new();
    let mp = vol.mountpoint("mnt");
    let mount = vol.mount(&mp, &["--allow-other"]);
    let m = |name: &str| mount.path(name);
    let big = prng_bytes(3 << 20, 21);
    let small = prng_bytes(10_000, 22);
    std::fs::create_dir(m("ward")).expect("mkdir");
    std::fs::create_dir(m("gone")).expect("mkdir");
    for name in ["ward/a", "ward/b", "ward/c", "ward/d", "ward/open"] {
        std::fs::write(m(name), &small).expect("write");
    }
    std::fs::write(m("ward/big"), &big).expect("write");
    std::fs::write(m("ward/new"), b"replacement").expect("write");
    std::fs::create_dir(m("shared")).expect("mkdir");
    std::fs::write(m("shared/e"), &small).expect("write");
    sh(&mp, "chmod 777 shared && chmod 666 shared/e");

    let before = nix::sys::statvfs::statvfs(&mp).expect("statvfs");
    sh(&mp, "rm ward/big");
    // The version is hidden once the kernel forgets the inode (right after the unlink).
    assert!(
        common::mount::wait_until(std::time::Duration::from_secs(5), || {
            let now = nix::sys::statvfs::statvfs(&mp).expect("statvfs");
            before.blocks() - now.blocks() >= 768
        }),
        "statfs total drops by the hidden blocks"
    );
    let after = nix::sys::statvfs::statvfs(&mp).expect("statvfs");
    assert!(
        after.blocks_free() + 16 >= before.blocks_free(),
        "nothing was copied"
    );
    sh(&mp, "rmdir gone");
    sh(&mp, "mv ward/new ward/a");
    sh(&mp, ": > ward/b"); // O_TRUNC by the shell
    sh(&mp, "truncate -s 100 ward/c"); // ftruncate
    sh(
        &mp,
        "setpriv --reuid=4321 --regid=4321 --clear-groups rm shared/e",
    );
    // Unlinked while open: kept as of the last close.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(m("ward/open"))
            .expect("open");
        std::fs::remove_file(m("ward/open")).expect("unlink while open");
        f.write_all(b"written after the unlink").expect("write");
        f.sync_all().expect("fsync");
    }
    assert!(std::fs::metadata(m("ward/big")).is_err());
    let listing: Vec<String> = std::fs::read_dir(m("ward"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !listing.iter().any(|n| n == "big" || n == "open"),
        "{listing:?}"
    );
    // Offline access is refused while the volume is mounted; the mount point answers
    // through its daemon (root here; another user is refused).
    run_fails(
        &[
            "hidden",
            "list",
            path_str(&vol.path),
            "--key-file",
            path_str(&vol.key),
        ],
        8,
        "mounted",
    );
    let live = run_ok(&["hidden", "list", path_str(&mp)]);
    for path in [
        "ward/big",
        "gone",
        "ward/a",
        "ward/b",
        "ward/c",
        "shared/e",
        "ward/open",
    ] {
        assert!(
            live.lines().any(|l| l.starts_with(&format!("{path} "))),
            "{path} not listed through the mount:\n{live}"
        );
    }
    let out = domfs(&["hidden", "show", path_str(&mp), "ward/big"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, big, "show through the mount");
    run_fails(&["hidden", "restore", path_str(&mp), "ward/b"], 8, "exists");
    let manager = vol.dir.path().join("manager.key");
    run_ok(&["manager", "keygen", "--out", path_str(&manager)]);
    run_fails(
        &[
            "hidden",
            "purge",
            path_str(&mp),
            "ward/b",
            "--version",
            "1",
            "--manager-key",
            path_str(&manager),
        ],
        8,
        "no domain manager",
    );
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=4321", "--regid=4321", "--clear-groups"])
        .arg(common::mount::domfs_bin())
        .args(["hidden", "list", path_str(&mp)])
        .output()
        .expect("run domfs as another user");
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("only root or the mount's operator group"),
        "{}",
        text(&out.stderr)
    );
    mount.unmount();
    vol.fsck();

    let out = run_ok(&[
        "hidden",
        "list",
        path_str(&vol.path),
        "--json",
        "--key-file",
        path_str(&vol.key),
    ]);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let row = |path: &str| {
        rows.iter()
            .find(|r| r["path"] == path)
            .unwrap_or_else(|| panic!("no version of {path} in {out}"))
            .clone()
    };
    let checks: [(&str, &str, &str, u64); 7] = [
        ("ward/big", "unlink", "rm", 3 << 20),
        ("gone", "rmdir", "rmdir", 0),
        ("ward/a", "rename-over", "mv", 10_000),
        ("ward/b", "truncate", "sh", 10_000),
        ("ward/c", "truncate", "truncate", 10_000),
        ("shared/e", "unlink", "rm", 10_000),
        ("ward/open", "unlink", &my_name(), 10_024),
    ];
    for (path, event, process, size) in checks {
        let r = row(path);
        assert_eq!(r["event"], event, "{path}");
        assert_eq!(r["process"], process, "{path}");
        if event != "rmdir" {
            assert_eq!(r["size"], size, "{path}");
        }
        let uid = if path == "shared/e" { 4321 } else { 0 };
        assert_eq!(r["uid"], uid, "{path}");
        assert!(!r["host"].as_str().unwrap_or_default().is_empty(), "{path}");
    }
    assert_eq!(row("ward/c")["cut_at"], 100);
    let show = |path: &str| {
        let out = domfs(&[
            "hidden",
            "show",
            path_str(&vol.path),
            path,
            "--key-file",
            path_str(&vol.key),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        out.stdout
    };
    assert_eq!(show("ward/big"), big);
    assert_eq!(show("ward/a"), small);
    assert_eq!(show("ward/b"), small);
    // Cut at 100: the version keeps the whole first block (the file has a copy).
    assert_eq!(show("ward/c"), small);
    assert_eq!(
        show("ward/open"),
        [&small[..], b"written after the unlink"].concat()
    );

    // Restore, then see it through a new mount.
    run_ok(&[
        "hidden",
        "restore",
        path_str(&vol.path),
        "ward/big",
        "--key-file",
        path_str(&vol.key),
    ]);
    let mount = vol.mount(&mp, &[]);
    assert_eq!(
        std::fs::read(mount.path("ward/big")).expect("restored"),
        big
    );
    // And through the live mount: at once visible there.
    run_ok(&[
        "hidden",
        "restore",
        path_str(&mp),
        "ward/a",
        "--to",
        "ward/a.before",
    ]);
    assert_eq!(
        std::fs::read(mount.path("ward/a.before")).expect("restored live"),
        small
    );
    mount.unmount();
    vol.fsck();
}

#[test]
fn fuse_a_punched_hole_leaves_a_hidden_version() {
    assert!(fuse_available());
    let vol = Volume::new();
    let mp = vol.mountpoint("mnt");
    let mount = vol.mount(&mp, &[]);
    let data = prng_bytes(1 << 20, 23);
    std::fs::create_dir(mount.path("ward")).expect("mkdir");
    std::fs::write(mount.path("ward/db"), &data).expect("write");
    std::fs::write(mount.path("ward/zeros"), vec![0u8; 1 << 20]).expect("write");
    sh(&mp, "sync");
    let before = nix::sys::statvfs::statvfs(&mp).expect("statvfs");
    // Two partial blocks at the edges (5000..8192 and 303104..305000), 72 whole blocks.
    sh(&mp, "fallocate -p -o 5000 -l 300000 ward/db");
    sh(&mp, "fallocate -p -o 0 -l 65536 ward/zeros");
    let range = 5000..305_000;
    let mut holed = data.clone();
    holed[range.clone()].fill(0);
    let mut kept = vec![0u8; data.len()];
    kept[range.clone()].copy_from_slice(&data[range.clone()]);
    assert_eq!(std::fs::read(mount.path("ward/db")).expect("read"), holed);
    // Punching it again discards nothing more.
    sh(&mp, "fallocate -p -o 5000 -l 300000 ward/db && sync");
    let after = nix::sys::statvfs::statvfs(&mp).expect("statvfs");
    // The version holds the 72 blocks, the two edges and a block-map block: statfs
    // leaves them out of the total.
    assert_eq!(before.blocks() - after.blocks(), 75);
    // Through the daemon: the range, and who punched (fallocate, this test's uid).
    let json = run_ok(&["hidden", "list", "--json", path_str(&mp)]);
    let row: serde_json::Value = serde_json::from_str(json.trim()).expect("json");
    assert_eq!(
        (&row["event"], &row["cut_at"], &row["punch_length"]),
        (
            &serde_json::Value::from("punch"),
            &serde_json::Value::from(5000),
            &serde_json::Value::from(300_000)
        ),
        "{row}"
    );
    assert_eq!(row["process"], "fallocate");
    mount.unmount();
    vol.fsck();
    // The trail has the punch as a hide by fallocate (and only the one that kept data).
    let key = ["--key-file", path_str(&vol.key)];
    let trail = run_ok(&[&["audit", "--json", path_str(&vol.path)][..], &key].concat());
    let hides: Vec<serde_json::Value> = trail
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .filter(|e| e["op"] == "hide")
        .collect();
    assert_eq!(hides.len(), 1, "{trail}");
    assert_eq!(hides[0]["path"], "/ward/db");
    assert_eq!(hides[0]["process"], "fallocate");
    assert!(
        hides[0]["detail"]
            .as_str()
            .expect("detail")
            .starts_with("punch 300000 bytes at 5000"),
        "{}",
        hides[0]
    );

    let list = run_ok(&[&["hidden", "list", path_str(&vol.path)][..], &key].concat());
    let rows: Vec<&str> = list.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "only the punch that discarded data:\n{list}");
    assert!(rows[0].starts_with("ward/db "), "{list}");
    assert!(rows[0].ends_with("punch (300000 bytes at 5000)"), "{list}");
    let json = run_ok(&[&["hidden", "list", path_str(&vol.path), "--json"][..], &key].concat());
    let row: serde_json::Value = serde_json::from_str(json.trim()).expect("json");
    assert_eq!(row["event"], "punch");
    assert_eq!(
        (row["size"].as_u64(), row["blocks"].as_u64()),
        (Some(1 << 20), Some(75))
    );
    let out = domfs(
        &[
            &["hidden", "show", path_str(&vol.path), "ward/db"][..],
            &key,
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, kept);
    run_ok(
        &[
            &[
                "hidden",
                "restore",
                path_str(&vol.path),
                "ward/db",
                "--to",
                "ward/db.punched",
            ][..],
            &key,
        ]
        .concat(),
    );
    let mount = vol.mount(&mp, &[]);
    assert_eq!(
        std::fs::read(mount.path("ward/db.punched")).expect("restored"),
        kept
    );
    assert_eq!(std::fs::read(mount.path("ward/db")).expect("read"), holed);
    mount.unmount();
    vol.fsck();
}
