//! Conversions between the filesystem's types and fuser's: attributes, file kinds, times.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, Generation, INodeNo, TimeOrNow};

use crate::filesystem::dir::FileKind;
use crate::filesystem::inode::{
    Inode, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFSOCK, Timestamp,
};
use crate::filesystem::{Entry, TimeSet};

/// How long the kernel may cache attributes and names. Every change goes through this
/// mount, so the kernel's caches never go stale behind its back; the TTL only bounds how
/// long a cached entry is trusted.
pub const TTL: Duration = Duration::from_secs(1);

/// `stat`'s block size.
pub const BLKSIZE: u32 = 4096;

pub fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Regular => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

/// The kind from a mode's type bits (an inode that decoded has a valid one; anything
/// else is shown as a regular file rather than failing `stat`).
pub fn kind_of_mode(mode: u32) -> FileType {
    match mode & S_IFMT {
        S_IFDIR => FileType::Directory,
        S_IFLNK => FileType::Symlink,
        S_IFIFO => FileType::NamedPipe,
        S_IFSOCK => FileType::Socket,
        S_IFCHR => FileType::CharDevice,
        S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

pub fn file_attr(ino: u64, inode: &Inode) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: inode.size,
        // The inode counts 4 KiB blocks; stat counts 512-byte units.
        blocks: inode.blocks.saturating_mul(8),
        atime: inode.atime.to_system(),
        mtime: inode.mtime.to_system(),
        ctime: inode.ctime.to_system(),
        crtime: inode.crtime.to_system(),
        kind: kind_of_mode(inode.mode),
        perm: (inode.mode & 0o7777) as u16,
        nlink: inode.nlink,
        uid: inode.uid,
        gid: inode.gid,
        // The kernel's 32-bit encoding (new_encode_dev), stored as the kernel gave it.
        rdev: inode.rdev as u32,
        blksize: BLKSIZE,
        flags: 0,
    }
}

pub fn entry_attr(entry: &Entry) -> (FileAttr, Generation) {
    (
        file_attr(entry.ino, &entry.inode),
        Generation(entry.inode.generation),
    )
}

/// A time the kernel sent, as fuser 0.18.0 decoded it.
///
/// fuser builds `UNIX_EPOCH - Duration::new(-secs, nsecs)` for a negative `tv_sec`, which
/// is off by the nanoseconds twice: the kernel's (-5 s, 7 ns) means -4.999999993 s, fuser
/// makes -5.000000007 s of it. Undoing that construction gives back the kernel's exact
/// pair. (Times after the epoch are decoded correctly.) fuser is pinned to =0.18.0, so
/// this cannot change under us unnoticed; the unit test below pins the behaviour.
pub fn kernel_time(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(_) => Timestamp::from_system(t),
        Err(e) => {
            let d = e.duration();
            Timestamp {
                secs: -i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: d.subsec_nanos(),
            }
        }
    }
}

pub fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(kernel_time(t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filesystem::inode::S_IFREG;

    #[test]
    fn attributes_follow_the_inode() {
        let inode = Inode {
            mode: S_IFREG | 0o4750,
            uid: 7,
            gid: 8,
            nlink: 2,
            size: 10_000,
            blocks: 3,
            rdev: 0,
            generation: 5,
            mtime: Timestamp {
                secs: 1_700_000_000,
                nanos: 42,
            },
            ..Inode::default()
        };
        let attr = file_attr(9, &inode);
        assert_eq!(attr.ino, INodeNo(9));
        assert_eq!(attr.kind, FileType::RegularFile);
        assert_eq!(attr.perm, 0o4750);
        assert_eq!(attr.blocks, 24);
        assert_eq!(attr.blksize, 4096);
        assert_eq!(attr.nlink, 2);
        assert_eq!(Timestamp::from_system(attr.mtime), inode.mtime);
        let fifo = Inode {
            mode: S_IFIFO | 0o600,
            ..Inode::default()
        };
        assert_eq!(file_attr(1, &fifo).kind, FileType::NamedPipe);
    }

    #[test]
    fn kernel_times_before_the_epoch_keep_their_nanoseconds() {
        // What fuser 0.18.0 hands over for the kernel's (tv_sec -5, tv_nsec 7).
        let from_fuser = UNIX_EPOCH - Duration::new(5, 7);
        assert_eq!(kernel_time(from_fuser), Timestamp { secs: -5, nanos: 7 });
        let after = UNIX_EPOCH + Duration::new(1_700_000_000, 999);
        assert_eq!(kernel_time(after), Timestamp::from_system(after));
    }
}
