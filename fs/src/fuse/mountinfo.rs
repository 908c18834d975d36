//! Finding and ending domfs mounts: `/proc/self/mountinfo`, unmounting, and waiting for
//! a daemon to let go of its locks.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The filesystem type of a domfs mount as the kernel lists it.
pub const FSTYPE: &str = "fuse.domfs";

/// One line of `/proc/self/mountinfo`, the fields domfs needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fstype: String,
    /// The mount's source: for domfs, the volume's path (`fsname`).
    pub source: String,
    pub read_only: bool,
}

/// Undoes the kernel's octal escapes (`\040` for a space, `\134` for a backslash, …).
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn path_of(bytes: Vec<u8>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            if sep < 6 || fields.len() < sep + 3 {
                return None;
            }
            let options = |f: &str| f.split(',').any(|o| o == "ro");
            Some(MountEntry {
                mount_point: path_of(unescape(fields[4])),
                fstype: fields[sep + 1].to_string(),
                source: String::from_utf8_lossy(&unescape(fields[sep + 2])).into_owned(),
                read_only: options(fields[5]) || fields.get(sep + 3).is_some_and(|f| options(f)),
            })
        })
        .collect()
}

pub fn read() -> io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The topmost mount at `mount_point` (an absolute, resolved path), if any.
pub fn find(mount_point: &Path) -> io::Result<Option<MountEntry>> {
    Ok(read()?
        .into_iter()
        .rev()
        .find(|e| e.mount_point == mount_point))
}

/// `path` made absolute with symlinks resolved, also when it is the mount point of a
/// daemon that died (stat on it fails with ENOTCONN): then its parent is resolved.
pub fn resolve(path: &Path) -> io::Result<PathBuf> {
    match path.canonicalize() {
        Ok(p) => Ok(p),
        Err(e) => {
            let absolute = std::path::absolute(path)?;
            match (absolute.parent(), absolute.file_name()) {
                (Some(parent), Some(name)) => Ok(parent.canonicalize()?.join(name)),
                _ => Err(e),
            }
        }
    }
}

/// Why an unmount did not happen.
#[derive(Debug)]
pub enum UnmountError {
    /// Something has a file open or its working directory in the mount.
    Busy,
    /// Nothing is mounted there (any more).
    NotMounted,
    Other(String),
}

impl std::fmt::Display for UnmountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnmountError::Busy => write!(f, "the mount is busy"),
            UnmountError::NotMounted => write!(f, "nothing is mounted there"),
            UnmountError::Other(text) => write!(f, "{text}"),
        }
    }
}

/// Unmounts `mount_point`: umount2(2) as root, `fusermount3 -u` otherwise. The kernel
/// writes every dirty page back before the unmount completes. With `detach_if_busy`, a
/// busy mount is detached instead (it disappears from the namespace now; the session
/// ends, and the daemon makes its final commit, when the last user lets go).
pub fn unmount(mount_point: &Path, detach_if_busy: bool) -> Result<(), UnmountError> {
    use nix::errno::Errno;
    use nix::mount::{MntFlags, umount2};
    if nix::unistd::geteuid().is_root() {
        match umount2(mount_point, MntFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(Errno::EBUSY) if detach_if_busy => {
                tracing::warn!(
                    "{} is busy: detaching it; the final commit follows when the last process using it lets go",
                    mount_point.display()
                );
                return umount2(mount_point, MntFlags::MNT_DETACH)
                    .map_err(|e| UnmountError::Other(format!("detaching: {e}")));
            }
            Err(Errno::EBUSY) => return Err(UnmountError::Busy),
            Err(Errno::EINVAL | Errno::ENOENT) => return Err(UnmountError::NotMounted),
            // No privilege after all (e.g. in a user namespace): try the helper.
            Err(Errno::EPERM) => {}
            Err(e) => return Err(UnmountError::Other(e.to_string())),
        }
    }
    match fusermount(mount_point, false) {
        Err(UnmountError::Busy) if detach_if_busy => {
            tracing::warn!(
                "{} is busy: detaching it; the final commit follows when the last process using it lets go",
                mount_point.display()
            );
            fusermount(mount_point, true)
        }
        other => other,
    }
}

fn fusermount(mount_point: &Path, lazy: bool) -> Result<(), UnmountError> {
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd
        .arg("--")
        .arg(mount_point)
        .output()
        .map_err(|e| UnmountError::Other(format!("cannot run fusermount3: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if stderr.contains("busy") {
        Err(UnmountError::Busy)
    } else if stderr.contains("not found in") || stderr.contains("Invalid argument") {
        Err(UnmountError::NotMounted)
    } else {
        Err(UnmountError::Other(format!("fusermount3 -u: {stderr}")))
    }
}

/// Whether an exclusive lock on `path` can be taken now (it is released again at once).
/// A missing file counts as free.
pub fn lock_is_free(path: &Path) -> io::Result<bool> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Waits until an exclusive lock on `path` can be taken; false on timeout.
pub fn wait_for_lock(path: &Path, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if lock_is_free(path)? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
61 22 0:52 / /tmp/my\\040mount rw,nosuid,nodev,relatime shared:30 - fuse.domfs /srv/a\\040b.vol rw,user_id=0,group_id=0,default_permissions
62 22 0:53 / /mnt/ro ro,nosuid,nodev,relatime - fuse.domfs /srv/c.vol ro,user_id=0,group_id=0
garbage line
";

    #[test]
    fn parses_mountinfo_with_escapes() {
        let entries = parse(SAMPLE);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[1].mount_point, PathBuf::from("/tmp/my mount"));
        assert_eq!(entries[1].fstype, FSTYPE);
        assert_eq!(entries[1].source, "/srv/a b.vol");
        assert!(!entries[1].read_only);
        assert!(entries[2].read_only);
        assert_eq!(unescape("a\\134b"), b"a\\b");
        assert_eq!(unescape("trailing\\04"), b"trailing\\04");
    }
}
