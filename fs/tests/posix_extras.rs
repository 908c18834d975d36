//! POSIX behaviour that databases and tools rely on, through a real mount: mmap reads and
//! writes, flock and fcntl locks between processes, sticky directories, and setuid/setgid
//! bits cleared on writes and chown. Needs root and /dev/fuse (as in CI); other users'
//! actions run through `runuser`.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use common::mount::*;

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run helper command")
}

fn python(script: &str, args: &[&Path]) -> Output {
    run(Command::new("python3").arg("-c").arg(script).args(args))
}

fn as_user(user: &str, shell: &str) -> Output {
    run(Command::new("runuser").args(["-u", user, "--", "sh", "-c", shell]))
}

fn open_to_all(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[test]
fn mmap_reads_and_writes_go_through_the_page_cache_to_the_volume() {
    fuse_available();
    let vol = Volume::new();
    let mp = vol.mountpoint("m");
    let m = vol.mount(&mp, &[]);
    let file = m.path("mapped.bin");
    let out = python(
        r#"
import mmap, os, sys
path = sys.argv[1]
with open(path, "w+b") as f:
    f.truncate(3 * 4096 + 100)
    with mmap.mmap(f.fileno(), 0) as mm:
        mm[0:5] = b"hello"
        mm[4096 * 3 + 10:4096 * 3 + 15] = b"world"
        mm.flush()
    os.fsync(f.fileno())
with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
    assert mm[0:5] == b"hello", mm[0:5]
    assert mm[4096 * 3 + 10:4096 * 3 + 15] == b"world"
print("ok")
"#,
        &[&file],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    m.unmount();
    let m = vol.mount(&mp, &[]);
    let data = std::fs::read(m.path("mapped.bin")).expect("read back");
    assert_eq!(&data[0..5], b"hello");
    assert_eq!(&data[4096 * 3 + 10..4096 * 3 + 15], b"world");
    assert_eq!(data.len(), 3 * 4096 + 100);
    m.unmount();
    vol.fsck();
}

#[test]
fn flock_and_fcntl_locks_exclude_other_processes() {
    fuse_available();
    let vol = Volume::new();
    let mp = vol.mountpoint("m");
    let m = vol.mount(&mp, &[]);
    let file = m.path("db.lock");
    std::fs::write(&file, b"x").expect("create");
    // One process holds the lock while a second one tries to take it.
    let out = python(
        r#"
import fcntl, subprocess, sys
path = sys.argv[1]
probe = '''
import fcntl, sys
f = open(sys.argv[1], "r+")
try:
    if sys.argv[2] == "flock":
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
    print("taken")
except BlockingIOError:
    print("busy")
'''
for kind in ("flock", "lockf"):
    with open(path, "r+") as f:
        if kind == "flock":
            fcntl.flock(f, fcntl.LOCK_EX)
        else:
            fcntl.lockf(f, fcntl.LOCK_EX, 1, 0)
        held = subprocess.run([sys.executable, "-c", probe, path, kind], capture_output=True, text=True).stdout.strip()
        assert held == "busy", (kind, held)
    free = subprocess.run([sys.executable, "-c", probe, path, kind], capture_output=True, text=True).stdout.strip()
    assert free == "taken", (kind, free)
print("ok")
"#,
        &[&file],
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    m.unmount();
}

#[test]
fn sticky_directories_and_setuid_clearing_follow_the_kernel_rules() {
    fuse_available();
    let vol = Volume::new();
    open_to_all(vol.dir.path());
    let mp = vol.mountpoint("m");
    open_to_all(&mp);
    let m = vol.mount(&mp, &["--allow-other"]);
    open_to_all(&mp);

    // A sticky, world-writable directory: others may create, not delete each other's files.
    let shared = m.path("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let owned = shared.join("nobodys");
    let out = as_user("nobody", &format!("echo mine > '{}'", owned.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = as_user("daemon", &format!("rm -f '{}'", owned.display()));
    assert!(
        !out.status.success(),
        "another user deleted a file in a sticky directory"
    );
    assert!(owned.exists());
    let out = as_user("nobody", &format!("rm '{}'", owned.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A setuid/setgid file written by another user loses both bits.
    let prog = m.path("prog");
    std::fs::write(&prog, b"#!/bin/sh\n").expect("create");
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o6777)).expect("chmod");
    assert_eq!(
        std::fs::metadata(&prog).expect("stat").mode() & 0o7777,
        0o6777
    );
    let out = as_user("nobody", &format!("echo more >> '{}'", prog.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&prog).expect("stat").mode() & 0o7777;
    assert_eq!(
        mode & 0o6000,
        0,
        "setuid/setgid kept after a write: {mode:o}"
    );

    // chown clears setuid too.
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o4755)).expect("chmod");
    std::os::unix::fs::chown(&prog, Some(65534), None).expect("chown");
    let mode = std::fs::metadata(&prog).expect("stat").mode() & 0o7777;
    assert_eq!(mode & 0o4000, 0, "setuid kept after chown: {mode:o}");
    m.unmount();
    vol.fsck();
}
