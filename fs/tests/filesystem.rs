//! The filesystem layer without FUSE: namespace, data, attributes, link counts, orphans,
//! persistence across reopen, and ENOSPC before any change.

mod common;

use std::sync::Arc;

use common::TestVolume;
use domfs::Error;
use domfs::error::Posix;
use domfs::filesystem::inode::{ROOT_INO, S_IFIFO, S_IFREG};
use domfs::filesystem::{Caller, Filesystem, RenameFlags, SetAttr};
use domfs::store::StoreOptions;

/// The filesystem check finds nothing wrong.
fn assert_fsck_clean(vol: &TestVolume) {
    let store = vol.open_with(StoreOptions::read_only());
    let report = domfs::filesystem::fsck::check(&store, &[])
        .expect("check runs")
        .expect("a filesystem");
    assert!(report.is_clean(), "{report:?}");
}

fn open(vol: &TestVolume) -> Filesystem {
    let store = vol.open_with(StoreOptions {
        auto_commit: false,
        ..StoreOptions::default()
    });
    Filesystem::open(Arc::new(store), false).expect("open filesystem")
}

const ME: Caller = Caller {
    uid: 1000,
    gid: 100,
    pid: 1,
};

fn posix(result: Result<impl std::fmt::Debug, Error>) -> Posix {
    match result {
        Err(Error::Posix(p)) => p,
        other => panic!("expected a POSIX error, got {other:?}"),
    }
}

fn names(fs: &Filesystem, dir: u64) -> Vec<String> {
    let mut out: Vec<String> = fs
        .readdir(dir, 0, usize::MAX)
        .expect("readdir")
        .into_iter()
        .map(|(_, e)| String::from_utf8_lossy(&e.name).into_owned())
        .collect();
    out.sort();
    out
}

#[test]
fn files_and_directories_survive_reopen() {
    let vol = TestVolume::new(64 << 20);
    {
        let fs = open(&vol);
        let dir = fs.mkdir(ROOT_INO, b"records", 0o750, ME).expect("mkdir");
        assert_eq!(dir.inode.uid, 1000);
        let file = fs
            .mknod(dir.ino, b"patient-1.txt", S_IFREG | 0o640, 0, ME)
            .expect("create");
        let text = b"blood type: 0+\n".repeat(1000);
        fs.write(file.ino, 0, &text).expect("write");
        fs.write(file.ino, 10_000_000, b"tail")
            .expect("sparse write");
        fs.sync().expect("sync");
        assert_eq!(fs.getattr(ROOT_INO).expect("root").inode.nlink, 3);
    }
    let fs = open(&vol);
    let dir = fs.lookup(ROOT_INO, b"records").expect("lookup dir");
    let file = fs.lookup(dir.ino, b"patient-1.txt").expect("lookup file");
    assert_eq!(file.inode.size, 10_000_004);
    assert_eq!(file.inode.mode, S_IFREG | 0o640);
    let text = b"blood type: 0+\n".repeat(1000);
    assert_eq!(fs.read(file.ino, 0, text.len() as u32).expect("read"), text);
    assert_eq!(
        fs.read(file.ino, 9_999_998, 100).expect("read"),
        b"\0\0tail"
    );
    assert_eq!(fs.read(file.ino, 5_000_000, 4).expect("hole"), vec![0; 4]);
    assert!(
        file.inode.blocks < 20,
        "sparse file owns {} blocks",
        file.inode.blocks
    );
    assert_eq!(names(&fs, dir.ino), [".", "..", "patient-1.txt"]);
    drop(fs);
    assert_fsck_clean(&vol);
}

#[test]
fn unsynced_operations_are_lost_whole_on_reopen() {
    let vol = TestVolume::new(32 << 20);
    {
        let fs = open(&vol);
        fs.mknod(ROOT_INO, b"kept", S_IFREG | 0o600, 0, ME)
            .expect("create");
        fs.sync().expect("sync");
        fs.mknod(ROOT_INO, b"lost", S_IFREG | 0o600, 0, ME)
            .expect("create");
    }
    let fs = open(&vol);
    assert_eq!(names(&fs, ROOT_INO), [".", "..", "kept"]);
}

#[test]
fn names_links_and_renames_follow_posix() {
    let vol = TestVolume::new(32 << 20);
    let fs = open(&vol);
    let a = fs.mknod(ROOT_INO, b"a", S_IFREG | 0o644, 0, ME).expect("a");
    assert_eq!(
        posix(fs.mknod(ROOT_INO, b"a", S_IFREG | 0o644, 0, ME)),
        Posix::Exists
    );
    assert_eq!(
        posix(fs.mknod(ROOT_INO, &[b'x'; 256], S_IFREG, 0, ME)),
        Posix::NameTooLong
    );
    fs.mknod(ROOT_INO, &[b'x'; 255], S_IFREG, 0, ME)
        .expect("255-byte name");
    assert_eq!(posix(fs.lookup(ROOT_INO, b"missing")), Posix::NotFound);

    fs.link(a.ino, ROOT_INO, b"b").expect("hard link");
    assert_eq!(fs.getattr(a.ino).expect("a").inode.nlink, 2);
    fs.unlink(ROOT_INO, b"a", ME).expect("unlink a");
    assert_eq!(fs.getattr(a.ino).expect("b").inode.nlink, 1);

    let d1 = fs.mkdir(ROOT_INO, b"d1", 0o755, ME).expect("d1");
    let d2 = fs.mkdir(ROOT_INO, b"d2", 0o755, ME).expect("d2");
    let sub = fs.mkdir(d1.ino, b"sub", 0o755, ME).expect("sub");
    assert_eq!(fs.getattr(d1.ino).expect("d1").inode.nlink, 3);
    // A directory cannot move into itself.
    assert_eq!(
        posix(fs.rename(ROOT_INO, b"d1", sub.ino, b"x", RenameFlags::default(), ME)),
        Posix::Invalid
    );
    fs.rename(d1.ino, b"sub", d2.ino, b"sub", RenameFlags::default(), ME)
        .expect("move dir");
    assert_eq!(fs.getattr(d1.ino).expect("d1").inode.nlink, 2);
    assert_eq!(fs.getattr(d2.ino).expect("d2").inode.nlink, 3);
    assert_eq!(fs.lookup(sub.ino, b"..").expect("..").ino, d2.ino);
    // Rename over an existing file replaces it atomically.
    let c = fs.mknod(ROOT_INO, b"c", S_IFREG | 0o644, 0, ME).expect("c");
    fs.write(c.ino, 0, b"new").expect("write");
    fs.rename(ROOT_INO, b"c", ROOT_INO, b"b", RenameFlags::default(), ME)
        .expect("rename over");
    let b = fs.lookup(ROOT_INO, b"b").expect("b");
    assert_eq!(b.ino, c.ino);
    // The replaced file lives on while the kernel remembers it, then is freed.
    assert_eq!(fs.getattr(a.ino).expect("still referenced").inode.nlink, 0);
    fs.forget(a.ino, 2);
    assert_eq!(posix(fs.getattr(a.ino)), Posix::NotFound);
    // No-replace and exchange.
    fs.mknod(ROOT_INO, b"e", S_IFREG | 0o644, 0, ME).expect("e");
    let no_replace = RenameFlags {
        no_replace: true,
        exchange: false,
    };
    assert_eq!(
        posix(fs.rename(ROOT_INO, b"e", ROOT_INO, b"b", no_replace, ME)),
        Posix::Exists
    );
    let exchange = RenameFlags {
        no_replace: false,
        exchange: true,
    };
    fs.rename(ROOT_INO, b"e", d2.ino, b"sub", exchange, ME)
        .expect("exchange");
    assert_eq!(fs.lookup(ROOT_INO, b"e").expect("e").ino, sub.ino);
    assert_eq!(fs.getattr(sub.ino).expect("sub").inode.parent, ROOT_INO);
    // Directories: rmdir of a non-empty one fails, unlink of a directory fails.
    fs.mknod(d2.ino, b"f", S_IFREG, 0, ME).expect("f");
    assert_eq!(posix(fs.rmdir(ROOT_INO, b"d2", ME)), Posix::NotEmpty);
    assert_eq!(posix(fs.unlink(ROOT_INO, b"d2", ME)), Posix::IsDirectory);
    assert_eq!(posix(fs.rmdir(ROOT_INO, b"b", ME)), Posix::NotDirectory);
    fs.unlink(d2.ino, b"f", ME).expect("unlink f");
    fs.unlink(d2.ino, b"sub", ME)
        .expect("unlink the exchanged file");
    fs.rmdir(ROOT_INO, b"d2", ME).expect("rmdir");
    // Symlinks and FIFOs.
    let l = fs
        .symlink(ROOT_INO, b"link", b"/etc/hostname", ME)
        .expect("symlink");
    assert_eq!(fs.readlink(l.ino).expect("readlink"), b"/etc/hostname");
    assert_eq!(
        posix(fs.symlink(ROOT_INO, b"long", &[b'a'; 4096], ME)),
        Posix::NameTooLong
    );
    let p = fs
        .mknod(ROOT_INO, b"pipe", S_IFIFO | 0o600, 0, ME)
        .expect("fifo");
    assert_eq!(p.inode.mode, S_IFIFO | 0o600);
    // The kernel forgets what it looked up; then the volume checks clean.
    for ino in [b.ino, d1.ino, sub.ino, l.ino, p.ino] {
        fs.forget(ino, 100);
    }
    fs.sync().expect("sync");
    drop(fs);
    assert_fsck_clean(&vol);
}

#[test]
fn truncate_and_fallocate_keep_contents_right() {
    let vol = TestVolume::new(32 << 20);
    let fs = open(&vol);
    let f = fs.mknod(ROOT_INO, b"f", S_IFREG | 0o644, 0, ME).expect("f");
    fs.write(f.ino, 0, &[7u8; 10_000]).expect("write");
    let shrink = SetAttr {
        size: Some(5000),
        ..SetAttr::default()
    };
    fs.setattr(f.ino, shrink, ME).expect("shrink");
    let grow = SetAttr {
        size: Some(12_000),
        ..SetAttr::default()
    };
    fs.setattr(f.ino, grow, ME).expect("grow");
    let data = fs.read(f.ino, 0, 20_000).expect("read");
    assert_eq!(data.len(), 12_000);
    assert!(data[..5000].iter().all(|&b| b == 7));
    assert!(
        data[5000..].iter().all(|&b| b == 0),
        "stale bytes after truncate"
    );
    // A huge truncate allocates nothing.
    let huge = SetAttr {
        size: Some(1 << 40),
        ..SetAttr::default()
    };
    let e = fs.setattr(f.ino, huge, ME).expect("huge truncate");
    assert!(e.inode.blocks < 8);
    let too_big = SetAttr {
        size: Some(u64::MAX / 2),
        ..SetAttr::default()
    };
    assert_eq!(posix(fs.setattr(f.ino, too_big, ME)), Posix::FileTooLarge);
    // fallocate mode 0 extends; punching a hole zeroes.
    let g = fs.mknod(ROOT_INO, b"g", S_IFREG | 0o644, 0, ME).expect("g");
    fs.fallocate(g.ino, 0, 100_000, 0).expect("fallocate");
    let g_attr = fs.getattr(g.ino).expect("g");
    assert_eq!(g_attr.inode.size, 100_000);
    assert!(g_attr.inode.blocks >= 25);
    fs.write(g.ino, 0, &[1u8; 100_000]).expect("fill");
    fs.fallocate(g.ino, 5000, 20_000, 0x01 | 0x02)
        .expect("punch");
    let data = fs.read(g.ino, 0, 100_000).expect("read");
    assert!(data[..5000].iter().all(|&b| b == 1));
    assert!(data[5000..25_000].iter().all(|&b| b == 0));
    assert!(data[25_000..].iter().all(|&b| b == 1));
    fs.sync().expect("sync");
    drop(fs);
    assert_fsck_clean(&vol);
}

#[test]
fn unlinked_open_files_live_until_released_and_orphans_are_kept_at_mount() {
    let vol = TestVolume::new(32 << 20);
    let (used_before, total_before);
    {
        let fs = open(&vol);
        used_before = fs.statfs().free;
        total_before = fs.statfs().blocks;
        let f = fs
            .mknod(ROOT_INO, b"tmp", S_IFREG | 0o600, 0, ME)
            .expect("create");
        fs.opened(f.ino);
        fs.write(f.ino, 0, &[9u8; 1 << 20]).expect("write");
        fs.unlink(ROOT_INO, b"tmp", ME).expect("unlink");
        assert_eq!(fs.read(f.ino, 0, 4).expect("read via handle"), [9, 9, 9, 9]);
        fs.sync().expect("sync");
        // Crash with the file still open.
    }
    // At the next mount the orphan is not freed but becomes a hidden version (the
    // default policy keeps everything; see tests/hidden.rs for no-keep paths).
    let fs = open(&vol);
    assert_eq!(names(&fs, ROOT_INO), [".", ".."]);
    fs.sync().expect("sync");
    let versions = fs.hidden_list(None).expect("list");
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].path, b"tmp");
    assert_eq!(versions[0].size, 1 << 20);
    assert!(!versions[0].open);
    assert!(
        fs.statfs().free + 250 <= used_before,
        "the version's blocks are kept"
    );
    assert_eq!(
        fs.statfs().blocks + fs.hidden_usage().1,
        total_before,
        "statfs counts them out of the total"
    );
    drop(fs);
    assert_fsck_clean(&vol);
}

#[test]
fn xattrs_round_trip() {
    let vol = TestVolume::new(32 << 20);
    let fs = open(&vol);
    let f = fs.mknod(ROOT_INO, b"f", S_IFREG | 0o644, 0, ME).expect("f");
    fs.setxattr(f.ino, b"user.ward", b"12", 0).expect("set");
    fs.setxattr(f.ino, b"user.doctor", b"house", 0)
        .expect("set");
    assert_eq!(fs.getxattr(f.ino, b"user.ward").expect("get"), b"12");
    assert_eq!(
        posix(fs.setxattr(f.ino, b"user.ward", b"13", 1)),
        Posix::Exists
    );
    assert_eq!(
        posix(fs.setxattr(f.ino, b"user.none", b"1", 2)),
        Posix::NoAttribute
    );
    assert_eq!(
        fs.listxattr(f.ino).expect("list"),
        b"user.ward\0user.doctor\0"
    );
    fs.removexattr(f.ino, b"user.ward").expect("remove");
    assert_eq!(posix(fs.getxattr(f.ino, b"user.ward")), Posix::NoAttribute);
}

#[test]
fn a_full_volume_refuses_before_changing_anything() {
    let vol = TestVolume::new(8 << 20);
    let fs = open(&vol);
    let f = fs
        .mknod(ROOT_INO, b"big", S_IFREG | 0o644, 0, ME)
        .expect("create");
    let chunk = vec![3u8; 256 * 1024];
    let mut written = 0u64;
    loop {
        match fs.write(f.ino, written, &chunk) {
            Ok(n) => written += u64::from(n),
            Err(Error::NoSpace) => break,
            Err(e) => panic!("unexpected {e}"),
        }
        assert!(written < 16 << 20, "never ran out of space");
    }
    assert!(written > 4 << 20, "only {written} bytes fit");
    fs.sync().expect("sync after ENOSPC");
    let size = fs.getattr(f.ino).expect("attr").inode.size;
    assert_eq!(size, written);
    drop(fs);
    let fs = open(&vol);
    let data = fs.read(f.ino, written - 10, 10).expect("read tail");
    assert_eq!(data, vec![3u8; 10]);
    fs.unlink(ROOT_INO, b"big", ME).expect("unlink");
    fs.sync().expect("sync");
    fs.mknod(ROOT_INO, b"after", S_IFREG | 0o644, 0, ME)
        .expect("space is back");
    fs.sync().expect("sync");
    drop(fs);
    assert_fsck_clean(&vol);
}

#[test]
fn fsck_names_the_file_a_damaged_block_belongs_to() {
    let vol = TestVolume::new(32 << 20);
    let fs = open(&vol);
    let dir = fs.mkdir(ROOT_INO, b"ward", 0o755, ME).expect("mkdir");
    let f = fs
        .mknod(dir.ino, b"patient.txt", S_IFREG | 0o644, 0, ME)
        .expect("create");
    fs.write(f.ino, 0, &[5u8; 3 * 4096]).expect("write");
    fs.sync().expect("sync");
    let inode = fs.getattr(f.ino).expect("attr").inode;
    let logical = inode
        .map
        .get(&**fs.store(), 1)
        .expect("map")
        .expect("mapped");
    let phys = fs
        .store()
        .locate(domfs::types::LogicalBlock(logical))
        .expect("locate")
        .expect("written");
    drop(fs);
    let mut bytes = std::fs::read(&vol.path).expect("read");
    bytes[phys.byte_offset() as usize + 17] ^= 0x40;
    std::fs::write(&vol.path, &bytes).expect("write");
    std::fs::write(vol.dir.path().join("k"), vol.key_bytes).expect("key");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_domfs"))
        .args(["fsck", "--key-file"])
        .arg(vol.dir.path().join("k"))
        .arg(&vol.path)
        .output()
        .expect("run fsck");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{stdout}");
    assert!(
        stdout.contains("affected: /ward/patient.txt: 1 damaged block(s) at byte offset 4096"),
        "{stdout}"
    );
}
