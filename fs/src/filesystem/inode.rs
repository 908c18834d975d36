//! Inodes: 256-byte records in the inode table (a sparse internal file indexed by inode
//! number). Inode numbers are handed out in increasing order and never reused, so the
//! kernel can never confuse a new file with one it still remembers.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | mode (`st_mode`: type and permission bits, exactly as given) |
//! | 4 | 4 | uid |
//! | 8 | 4 | gid |
//! | 12 | 4 | link count |
//! | 16 | 8 | size in bytes |
//! | 24 | 8 | blocks owned (data, block-map and xattr blocks) |
//! | 32 | 12 | atime (i64 seconds, u32 nanoseconds) |
//! | 44 | 12 | mtime |
//! | 56 | 12 | ctime |
//! | 68 | 12 | birth time |
//! | 80 | 8 | rdev (device nodes) |
//! | 88 | 8 | generation |
//! | 96 | 4 | flags: bit 0 = a hidden version (reachable only through the hidden-version table); other bits zero |
//! | 100 | 9 | block map: height, root block |
//! | 109 | 3 | zero |
//! | 112 | 8 | xattr block (0: none) |
//! | 120 | 8 | parent directory: for a directory it answers `..`; for another file it is the directory of its latest name (a hint for naming hidden versions; 0 if unknown) |
//! | 128 | 128 | zero (reserved) |
//!
//! A free slot is all zeros (mode 0).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::bmap::BlockMap;
use super::dir::FileKind;
use crate::{Error, Result};

pub const INODE_SIZE: usize = 256;
pub const INODES_PER_BLOCK: u64 = (crate::types::BLOCK_SIZE / INODE_SIZE) as u64;
/// The root directory's inode number (FUSE's root id).
pub const ROOT_INO: u64 = 1;

/// Inode flag: a hidden version (no name; never answered by lookup or getattr).
pub const FLAG_HIDDEN: u32 = 1;
const KNOWN_FLAGS: u32 = FLAG_HIDDEN;

pub const S_IFMT: u32 = 0o170000;
pub const S_IFSOCK: u32 = 0o140000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFIFO: u32 = 0o010000;

/// A point in time as stored: seconds since the epoch (may be negative) and nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn now() -> Self {
        Self::from_system(SystemTime::now())
    }

    pub fn from_system(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                if d.subsec_nanos() == 0 {
                    Timestamp { secs, nanos: 0 }
                } else {
                    Timestamp {
                        secs: secs - 1,
                        nanos: 1_000_000_000 - d.subsec_nanos(),
                    }
                }
            }
        }
    }

    pub fn to_system(self) -> SystemTime {
        if self.secs >= 0 {
            UNIX_EPOCH + Duration::new(self.secs as u64, self.nanos)
        } else {
            UNIX_EPOCH - Duration::from_secs(self.secs.unsigned_abs())
                + Duration::from_nanos(u64::from(self.nanos))
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inode {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub crtime: Timestamp,
    pub rdev: u64,
    pub generation: u64,
    /// [`FLAG_HIDDEN`] or 0.
    pub flags: u32,
    pub map: BlockMap,
    pub xattr_block: u64,
    pub parent: u64,
}

impl Inode {
    pub fn is_free(&self) -> bool {
        self.mode == 0
    }

    pub fn kind(&self) -> Result<FileKind> {
        kind_of(self.mode)
    }

    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }

    /// A hidden version's content (see [`super::hidden`]).
    pub fn is_hidden(&self) -> bool {
        self.flags & FLAG_HIDDEN != 0
    }

    pub fn encode(&self) -> [u8; INODE_SIZE] {
        let mut b = [0u8; INODE_SIZE];
        b[0..4].copy_from_slice(&self.mode.to_le_bytes());
        b[4..8].copy_from_slice(&self.uid.to_le_bytes());
        b[8..12].copy_from_slice(&self.gid.to_le_bytes());
        b[12..16].copy_from_slice(&self.nlink.to_le_bytes());
        b[16..24].copy_from_slice(&self.size.to_le_bytes());
        b[24..32].copy_from_slice(&self.blocks.to_le_bytes());
        for (at, t) in [
            (32, self.atime),
            (44, self.mtime),
            (56, self.ctime),
            (68, self.crtime),
        ] {
            b[at..at + 8].copy_from_slice(&t.secs.to_le_bytes());
            b[at + 8..at + 12].copy_from_slice(&t.nanos.to_le_bytes());
        }
        b[80..88].copy_from_slice(&self.rdev.to_le_bytes());
        b[88..96].copy_from_slice(&self.generation.to_le_bytes());
        b[96..100].copy_from_slice(&self.flags.to_le_bytes());
        b[100..109].copy_from_slice(&self.map.to_bytes());
        b[112..120].copy_from_slice(&self.xattr_block.to_le_bytes());
        b[120..128].copy_from_slice(&self.parent.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; INODE_SIZE]) -> Result<Self> {
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(x)
        };
        let time_at = |at: usize| Timestamp {
            secs: u64_at(at) as i64,
            nanos: u32_at(at + 8),
        };
        let mut map = [0u8; 9];
        map.copy_from_slice(&b[100..109]);
        let inode = Inode {
            mode: u32_at(0),
            uid: u32_at(4),
            gid: u32_at(8),
            nlink: u32_at(12),
            size: u64_at(16),
            blocks: u64_at(24),
            atime: time_at(32),
            mtime: time_at(44),
            ctime: time_at(56),
            crtime: time_at(68),
            rdev: u64_at(80),
            generation: u64_at(88),
            flags: u32_at(96),
            map: BlockMap::from_bytes(&map)?,
            xattr_block: u64_at(112),
            parent: u64_at(120),
        };
        if !inode.is_free() {
            inode.kind()?;
        }
        if inode.flags & !KNOWN_FLAGS != 0 {
            return Err(Error::CorruptFilesystem(format!(
                "inode flags {:#x} are unknown",
                inode.flags
            )));
        }
        if [inode.atime, inode.mtime, inode.ctime, inode.crtime]
            .iter()
            .any(|t| t.nanos >= 1_000_000_000)
        {
            return Err(Error::CorruptFilesystem(
                "inode timestamp out of range".into(),
            ));
        }
        Ok(inode)
    }
}

pub fn kind_of(mode: u32) -> Result<FileKind> {
    Ok(match mode & S_IFMT {
        S_IFREG => FileKind::Regular,
        S_IFDIR => FileKind::Directory,
        S_IFLNK => FileKind::Symlink,
        S_IFIFO => FileKind::Fifo,
        S_IFSOCK => FileKind::Socket,
        S_IFCHR => FileKind::CharDevice,
        S_IFBLK => FileKind::BlockDevice,
        _ => {
            return Err(Error::CorruptFilesystem(format!(
                "inode mode {mode:o} has no file type"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_round_trips() {
        let inode = Inode {
            mode: S_IFREG | 0o4755,
            uid: 1000,
            gid: 100,
            nlink: 3,
            size: 123_456_789,
            blocks: 77,
            atime: Timestamp { secs: -5, nanos: 7 },
            mtime: Timestamp {
                secs: 1_700_000_000,
                nanos: 999_999_999,
            },
            ctime: Timestamp::now(),
            crtime: Timestamp::default(),
            rdev: 0x0801,
            generation: 9,
            flags: FLAG_HIDDEN,
            map: BlockMap {
                height: 2,
                root: 4242,
            },
            xattr_block: 17,
            parent: 0,
        };
        assert_eq!(Inode::decode(&inode.encode()).unwrap(), inode);
        assert!(Inode::decode(&[0u8; INODE_SIZE]).unwrap().is_free());
    }

    #[test]
    fn timestamps_before_the_epoch_round_trip() {
        let t = UNIX_EPOCH - Duration::new(10, 250);
        assert_eq!(Timestamp::from_system(t).to_system(), t);
    }
}
