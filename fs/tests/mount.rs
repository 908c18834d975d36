//! `domfs mount` and `domfs unmount` end to end, through the kernel's FUSE: POSIX
//! operations with std::fs, durability across unmount and remount, the volume lock,
//! SIGTERM and `fusermount3 -u`, and foreground mode.
//!
//! Needs root and /dev/fuse (as in CI). Every test has its own temporary directory and
//! mount points; a mount left behind is removed by a guard and fails the test loudly.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::mount::*;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

#[test]
fn posix_operations_work_and_survive_a_remount() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::new();
    let mp = vol.mountpoint("m");
    let m = vol.mount(&mp, &[]);

    // Create, write, read, append, pwrite.
    fs::write(m.path("notes.txt"), b"hello\n").unwrap();
    assert_eq!(fs::read(m.path("notes.txt")).unwrap(), b"hello\n");
    let mut f = OpenOptions::new()
        .append(true)
        .open(m.path("notes.txt"))
        .unwrap();
    f.write_all(b"world\n").unwrap();
    drop(f);
    assert_eq!(fs::read(m.path("notes.txt")).unwrap(), b"hello\nworld\n");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("notes.txt"))
        .unwrap();
    f.write_all_at(b"J", 6).unwrap();
    let mut buf = [0u8; 5];
    f.read_exact_at(&mut buf, 6).unwrap();
    assert_eq!(&buf, b"Jorld");
    drop(f);

    // Large writes (several max_write requests) read back exactly.
    let big = pattern(3 << 20, 7);
    fs::write(m.path("big"), &big).unwrap();
    assert_eq!(fs::read(m.path("big")).unwrap(), big);

    // Directories.
    fs::create_dir(m.path("dir")).unwrap();
    fs::create_dir(m.path("dir/sub")).unwrap();
    fs::write(m.path("dir/x"), b"x").unwrap();
    fs::write(m.path("dir/y"), b"y").unwrap();
    let mut names: Vec<String> = fs::read_dir(m.path("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["sub", "x", "y"]);
    assert_eq!(fs::metadata(m.path("dir")).unwrap().nlink(), 3);

    // Rename across directories, and over an existing file.
    fs::rename(m.path("notes.txt"), m.path("dir/notes.txt")).unwrap();
    assert!(!m.path("notes.txt").exists());
    fs::rename(m.path("dir/x"), m.path("dir/y")).unwrap();
    assert!(!m.path("dir/x").exists());
    assert_eq!(fs::read(m.path("dir/y")).unwrap(), b"x");

    // Hard link, symlink.
    fs::hard_link(m.path("dir/notes.txt"), m.path("link.txt")).unwrap();
    let a = fs::metadata(m.path("dir/notes.txt")).unwrap();
    let b = fs::metadata(m.path("link.txt")).unwrap();
    assert_eq!((a.ino(), a.nlink(), b.nlink()), (b.ino(), 2, 2));
    std::os::unix::fs::symlink("dir/notes.txt", m.path("sym")).unwrap();
    assert_eq!(
        fs::read_link(m.path("sym")).unwrap(),
        PathBuf::from("dir/notes.txt")
    );
    assert_eq!(fs::read(m.path("sym")).unwrap(), b"hello\nJorld\n");

    // Truncate: grow (reads zeros), shrink, grow again (the cut part stays zero).
    let data = pattern(10_000, 3);
    fs::write(m.path("trunc"), &data).unwrap();
    let f = OpenOptions::new()
        .write(true)
        .open(m.path("trunc"))
        .unwrap();
    f.set_len(100_000).unwrap();
    let grown = fs::read(m.path("trunc")).unwrap();
    assert_eq!(grown.len(), 100_000);
    assert_eq!(&grown[..10_000], &data[..]);
    assert!(grown[10_000..].iter().all(|&b| b == 0));
    f.set_len(10).unwrap();
    assert_eq!(fs::read(m.path("trunc")).unwrap(), &data[..10]);
    f.set_len(5000).unwrap();
    let regrown = fs::read(m.path("trunc")).unwrap();
    assert_eq!(&regrown[..10], &data[..10]);
    assert!(regrown[10..].iter().all(|&b| b == 0));
    drop(f);

    // chmod, mode kept exactly.
    fs::set_permissions(m.path("trunc"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        fs::metadata(m.path("trunc")).unwrap().permissions().mode() & 0o7777,
        0o640
    );

    // fsync, fdatasync, fsync of a directory.
    let mut f = File::create(m.path("synced")).unwrap();
    f.write_all(b"durable").unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    File::open(m.path("dir")).unwrap().sync_all().unwrap();
    drop(f);

    // A FIFO.
    nix::unistd::mkfifo(
        &m.path("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    assert!(fs::metadata(m.path("fifo")).unwrap().file_type().is_fifo());

    // O_DIRECT opens work.
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.path("big"))
        .unwrap();
    let mut raw = vec![0u8; 3 * 4096];
    let at = raw.as_ptr().align_offset(4096);
    f.read_exact_at(&mut raw[at..at + 4096], 4096).unwrap();
    assert_eq!(&raw[at..at + 4096], &big[4096..8192]);
    drop(f);

    // Unlinked while open: the open handle still reads and writes the file.
    fs::write(m.path("open.txt"), b"still here").unwrap();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("open.txt"))
        .unwrap();
    fs::remove_file(m.path("open.txt")).unwrap();
    assert!(!m.path("open.txt").exists());
    let mut content = String::new();
    f.read_to_string(&mut content).unwrap();
    assert_eq!(content, "still here");
    f.write_all(b", and more").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    content.clear();
    f.read_to_string(&mut content).unwrap();
    assert_eq!(content, "still here, and more");
    f.sync_all().unwrap();
    drop(f);

    // statfs.
    let st = nix::sys::statvfs::statvfs(&mp).unwrap();
    assert_eq!(st.block_size(), 4096);
    assert_eq!(st.fragment_size(), 4096);
    assert_eq!(st.name_max(), 255);
    assert!(st.blocks() > 0 && st.blocks_free() <= st.blocks());
    assert!(st.blocks_available() > 0);

    m.unmount();
    let m = vol.mount(&mp, &[]);

    // Everything is still there after the final commit and a fresh mount.
    assert_eq!(
        fs::read(m.path("dir/notes.txt")).unwrap(),
        b"hello\nJorld\n"
    );
    assert_eq!(fs::read(m.path("link.txt")).unwrap(), b"hello\nJorld\n");
    assert_eq!(fs::metadata(m.path("link.txt")).unwrap().nlink(), 2);
    assert_eq!(
        fs::read_link(m.path("sym")).unwrap(),
        PathBuf::from("dir/notes.txt")
    );
    assert_eq!(fs::read(m.path("big")).unwrap(), big);
    assert_eq!(fs::read(m.path("dir/y")).unwrap(), b"x");
    assert_eq!(fs::read(m.path("synced")).unwrap(), b"durable");
    assert_eq!(fs::read(m.path("trunc")).unwrap().len(), 5000);
    assert_eq!(
        fs::metadata(m.path("trunc")).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    assert!(fs::metadata(m.path("fifo")).unwrap().file_type().is_fifo());
    let mut names: Vec<String> = fs::read_dir(&mp)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["big", "dir", "fifo", "link.txt", "sym", "synced", "trunc"]
    );
    m.unmount();

    vol.fsck();
    assert_nothing_mounted_under(vol.dir.path());
}

#[test]
fn one_read_write_mount_per_volume() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::new();
    let m1 = vol.mountpoint("m1");
    let m2 = vol.mountpoint("m2");
    let first = vol.mount(&m1, &[]);
    fs::write(first.path("f"), b"data").unwrap();

    for extra in [&[][..], &["--read-only"][..]] {
        let out = domfs(&vol.mount_args(&m2, extra));
        assert!(
            !out.status.success(),
            "a second mount ({extra:?}) succeeded"
        );
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("is already mounted read-write by another domfs process"),
            "{stderr}"
        );
        assert!(!is_mounted(&m2));
    }
    // Mounting twice on one mount point is refused too.
    let out = domfs(&vol.mount_args(&m1, &[]));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("already a domfs mount"));
    first.unmount();

    // Read-only mounts share the volume; a read-write one waits for them to go.
    let a = vol.mount(&m1, &["--read-only"]);
    let b = vol.mount(&m2, &["--read-only"]);
    assert_eq!(fs::read(a.path("f")).unwrap(), b"data");
    assert_eq!(fs::read(b.path("f")).unwrap(), b"data");
    let err = fs::write(a.path("g"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let m3 = vol.mountpoint("m3");
    let out = domfs(&vol.mount_args(&m3, &[]));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is mounted read-only by another domfs process"),
        "{}",
        text(&out.stderr)
    );
    a.unmount();
    b.unmount();
    vol.fsck();
    assert_nothing_mounted_under(vol.dir.path());
}

#[test]
fn sigterm_and_fusermount_unmount_cleanly_and_commit() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::new();
    let mp = vol.mountpoint("m");

    // SIGTERM: the daemon unmounts itself; what was written (no fsync) is committed.
    let m = vol.mount(&mp, &[]);
    fs::write(m.path("before-sigterm"), pattern(100_000, 1)).unwrap();
    let pid = daemon_pid(&mp);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    m.wait_gone(&vol.path);

    // fusermount3 -u (or umount): the session ends, destroy commits.
    let m = vol.mount(&mp, &[]);
    assert_eq!(
        fs::read(m.path("before-sigterm")).unwrap(),
        pattern(100_000, 1)
    );
    fs::write(m.path("before-fusermount"), b"kept").unwrap();
    let status = Command::new("fusermount3")
        .arg("-u")
        .arg(&mp)
        .status()
        .or_else(|_| Command::new("umount").arg(&mp).status())
        .unwrap();
    assert!(status.success());
    m.wait_gone(&vol.path);

    let m = vol.mount(&mp, &[]);
    assert_eq!(
        fs::read(m.path("before-sigterm")).unwrap(),
        pattern(100_000, 1)
    );
    assert_eq!(fs::read(m.path("before-fusermount")).unwrap(), b"kept");
    m.unmount();
    vol.fsck();
    assert_nothing_mounted_under(vol.dir.path());
}

#[test]
fn foreground_mode_serves_until_unmounted() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::new();
    let mp = vol.mountpoint("m");
    let mut args = vol.mount_args(&mp, &["-f"]);
    args.insert(0, "-q");
    let mut child = Command::new(domfs_bin())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let m = Mount {
        mountpoint: mp.clone(),
        live: true,
    };
    assert!(
        wait_until(Duration::from_secs(10), || is_mounted(&mp)),
        "the foreground daemon did not mount"
    );
    fs::write(m.path("fg"), b"foreground").unwrap();
    m.unmount();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the foreground daemon did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "exit {status}: {stderr}");

    let m = vol.mount(&mp, &[]);
    assert_eq!(fs::read(m.path("fg")).unwrap(), b"foreground");
    m.unmount();
    assert_nothing_mounted_under(vol.dir.path());
}

#[test]
fn refusals_are_clear() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::new();
    let mp = vol.mountpoint("m");

    // Without --key-file the key would come from the agent; a key-file volume says so.
    let out = domfs(&["mount", path_str(&vol.path), path_str(&mp)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("key-file volume: mount it with --key-file"),
        "{}",
        text(&out.stderr)
    );

    let out = domfs(&["unmount", path_str(&mp)]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is not a domfs mount"),
        "{}",
        text(&out.stderr)
    );

    let missing = vol.dir.path().join("missing");
    let out = domfs(&vol.mount_args(&missing, &[]));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("mount point"),
        "{}",
        text(&out.stderr)
    );

    let wrong_key = vol.dir.path().join("k2");
    assert!(
        domfs(&["-q", "key", "new", path_str(&wrong_key)])
            .status
            .success()
    );
    let out = domfs(&[
        "mount",
        "--key-file",
        path_str(&wrong_key),
        path_str(&vol.path),
        path_str(&mp),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("wrong key"),
        "{}",
        text(&out.stderr)
    );
    assert!(!is_mounted(&mp));
    assert_nothing_mounted_under(vol.dir.path());
}

#[test]
fn a_full_volume_fails_the_write_not_the_fsync() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::with_size("48M");
    let mp = vol.mountpoint("m");
    let m = vol.mount(&mp, &[]);
    let mut f = File::create(m.path("fill")).unwrap();
    let chunk = pattern(1 << 20, 9);
    let mut written = 0u64;
    let err = loop {
        match f.write_all(&chunk) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => break e,
        }
        assert!(written < 64 << 20, "wrote {written} bytes to a 48M volume");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    // Everything write() accepted is committed: fsync has nothing left to fail on.
    f.sync_all().unwrap();
    let size = f.metadata().unwrap().len();
    assert!(size >= written, "{size} < {written}");
    drop(f);
    m.unmount();
    vol.fsck();
    let m = vol.mount(&mp, &[]);
    let back = fs::read(m.path("fill")).unwrap();
    assert_eq!(back.len() as u64, size);
    assert!(back.chunks(1 << 20).all(|c| c == &chunk[..c.len()]));
    m.unmount();
    assert_nothing_mounted_under(vol.dir.path());
}

/// A name the kernel has seen missing is remembered as missing for the entry timeout; a
/// restore through the daemon makes the kernel forget that at once.
#[test]
fn a_restored_file_is_there_at_once_though_the_kernel_saw_it_missing() {
    fuse_available();
    let vol = Volume::new();
    let mp = vol.mountpoint("m");
    let m = vol.mount(&mp, &[]);
    fs::create_dir(m.path("ward")).unwrap();
    fs::write(m.path("ward/chart.txt"), b"allergy: none\n").unwrap();
    fs::remove_file(m.path("ward/chart.txt")).unwrap();
    // The kernel now holds a negative entry for ward/chart.txt.
    assert!(fs::metadata(m.path("ward/chart.txt")).is_err());
    let out = domfs(&["hidden", "restore", path_str(&mp), "ward/chart.txt"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Well within the entry timeout (1 s): the restore invalidated the entry.
    assert_eq!(
        fs::read(m.path("ward/chart.txt")).expect("restored file visible at once"),
        b"allergy: none\n"
    );
    // Finding the name's directory took no reference the kernel would have to give
    // back: the directory, removed now, is a hidden version at once, not one still open.
    fs::remove_file(m.path("ward/chart.txt")).unwrap();
    fs::remove_dir(m.path("ward")).unwrap();
    let out = domfs(&["hidden", "list", "--json", path_str(&mp), "ward"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir_version = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["path"] == "ward")
        .unwrap_or_else(|| panic!("no version of ward: {}", text(&out.stdout)));
    assert_eq!(dir_version["open"], false, "{dir_version}");
    m.unmount();
}
