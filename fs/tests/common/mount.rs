//! Mounting volumes in tests: a fresh key and volume per test, a mount guard that fails
//! the test loudly on a leftover mount, and helpers to wait for daemons.
#![allow(dead_code)]

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn domfs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_domfs")
}

pub fn domfs(args: &[&str]) -> Output {
    Command::new(domfs_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run domfs")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Checks that FUSE mounts can be made here: root and /dev/fuse (as in CI). Without them
/// the test fails; it never skips.
pub fn fuse_available() -> bool {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: these tests need FUSE (run them as root on a machine with fuse3)"
    );
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests mount as root: run them as root (CI does)"
    );
    true
}

/// Lines of /proc/self/mountinfo that mount something on `mountpoint`.
pub fn mount_lines(mountpoint: &Path) -> Vec<String> {
    let needle = format!(" {} ", path_str(mountpoint).replace(' ', "\\040"));
    fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.contains(&needle))
        .map(String::from)
        .collect()
}

pub fn is_mounted(mountpoint: &Path) -> bool {
    !mount_lines(mountpoint).is_empty()
}

/// Fails if anything is still mounted anywhere below `dir`.
pub fn assert_nothing_mounted_under(dir: &Path) {
    let prefix = path_str(dir);
    let left: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|mp| mp.starts_with(prefix)))
        .map(String::from)
        .collect();
    assert!(left.is_empty(), "leftover mounts: {left:#?}");
}

pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether nobody holds a lock on `path` (the daemon keeps the volume locked until it
/// has made its final commit and exited).
pub fn lock_is_free(path: &Path) -> bool {
    File::open(path)
        .expect("open for locking")
        .try_lock()
        .is_ok()
}

/// A key and a fresh volume in a temporary directory of its own.
pub struct Volume {
    pub dir: tempfile::TempDir,
    pub key: PathBuf,
    pub path: PathBuf,
}

impl Volume {
    pub fn new() -> Self {
        Self::with_size("256M")
    }

    pub fn with_size(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("k");
        let path = dir.path().join("v.vol");
        let out = domfs(&["-q", "key", "new", path_str(&key)]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = domfs(&[
            "-q",
            "create",
            "--size",
            size,
            "--key-file",
            path_str(&key),
            path_str(&path),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        Self { dir, key, path }
    }

    pub fn mountpoint(&self, name: &str) -> PathBuf {
        let mp = self.dir.path().join(name);
        fs::create_dir_all(&mp).expect("mkdir mount point");
        mp
    }

    pub fn mount_args<'a>(&'a self, mountpoint: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["mount", "--key-file", path_str(&self.key)];
        args.extend_from_slice(extra);
        args.push(path_str(&self.path));
        args.push(path_str(mountpoint));
        args
    }

    /// Mounts in the background; the mount is ready when this returns.
    pub fn mount(&self, mountpoint: &Path, extra: &[&str]) -> Mount {
        let out = domfs(&self.mount_args(mountpoint, extra));
        assert!(
            out.status.success(),
            "domfs mount failed: {}",
            text(&out.stderr)
        );
        let lines = mount_lines(mountpoint);
        assert!(
            lines.iter().any(|l| l.contains(" - fuse.domfs ")
                && l.contains(&format!(" {} ", path_str(&self.path)))),
            "not mounted as fuse.domfs of the volume right after `domfs mount` returned: {lines:?}"
        );
        Mount {
            mountpoint: mountpoint.to_path_buf(),
            live: true,
        }
    }

    pub fn fsck(&self) {
        let out = domfs(&[
            "fsck",
            "--key-file",
            path_str(&self.key),
            path_str(&self.path),
        ]);
        assert!(
            out.status.success(),
            "fsck failed:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

/// A live mount. `unmount` ends it the proper way; dropping it while still mounted
/// cleans up and fails the test.
pub struct Mount {
    pub mountpoint: PathBuf,
    pub live: bool,
}

impl Mount {
    pub fn path(&self, name: &str) -> PathBuf {
        self.mountpoint.join(name)
    }

    pub fn unmount(mut self) {
        let out = domfs(&["unmount", path_str(&self.mountpoint)]);
        assert!(
            out.status.success(),
            "domfs unmount failed: {}",
            text(&out.stderr)
        );
        assert!(
            !is_mounted(&self.mountpoint),
            "still mounted after `domfs unmount` returned"
        );
        self.live = false;
    }

    /// The mount ended some other way (a signal, fusermount3): wait until it is gone.
    pub fn wait_gone(mut self, volume: &Path) {
        assert!(
            wait_until(Duration::from_secs(10), || !is_mounted(&self.mountpoint)),
            "{} is still mounted",
            self.mountpoint.display()
        );
        assert!(
            wait_until(Duration::from_secs(10), || lock_is_free(volume)),
            "the daemon did not release {}",
            volume.display()
        );
        self.live = false;
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.live || !is_mounted(&self.mountpoint) {
            return;
        }
        let _ = domfs(&["unmount", "--timeout", "10", path_str(&self.mountpoint)]);
        if is_mounted(&self.mountpoint) {
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
        if !std::thread::panicking() {
            panic!(
                "leftover mount at {} (the test did not unmount it)",
                self.mountpoint.display()
            );
        }
    }
}

/// The pid of the daemon serving `mountpoint` (its command line names the mount point).
pub fn daemon_pid(mountpoint: &Path) -> i32 {
    let want = path_str(mountpoint);
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if args.contains(&&b"mount"[..]) && args.contains(&want.as_bytes()) {
            found.push(pid);
        }
    }
    assert_eq!(found.len(), 1, "daemons for {want}: {found:?}");
    found[0]
}
