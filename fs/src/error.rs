//! The one error type of the domfs library.
//!
//! Integrity failures are a single variant naming the block: callers (and attackers) learn
//! which block failed verification, nothing about why.

use std::io;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which on-disk object failed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damaged {
    /// A data block, by logical number, and where it was stored.
    Data { logical: u64, phys: u64 },
    /// A tree node (`level` ≥ 1: level 1 holds the pointers to data blocks).
    Node { level: u8, index: u64, phys: u64 },
    /// A block of the free-space bitmap.
    Bitmap { index: u64, phys: u64 },
}

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damaged::Data { logical, phys } => {
                write!(f, "data block {logical} (physical block {phys})")
            }
            Damaged::Node { level, index, phys } => {
                write!(
                    f,
                    "tree node level {level} index {index} (physical block {phys})"
                )
            }
            Damaged::Bitmap { index, phys } => {
                write!(f, "space-map block {index} (physical block {phys})")
            }
        }
    }
}

/// Filesystem-level refusals, each with its POSIX errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Posix {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDirectory,
    #[error("is a directory")]
    IsDirectory,
    #[error("directory not empty")]
    NotEmpty,
    #[error("file name too long")]
    NameTooLong,
    #[error("file too large")]
    FileTooLarge,
    #[error("invalid argument")]
    Invalid,
    #[error("permission denied")]
    Access,
    #[error("operation not permitted")]
    NotPermitted,
    #[error("too many links")]
    TooManyLinks,
    #[error("no such attribute")]
    NoAttribute,
    #[error("result too large for the buffer")]
    Range,
    #[error("operation not supported")]
    NotSupported,
    #[error("directory loop")]
    Loop,
}

impl Posix {
    pub fn errno(self) -> i32 {
        match self {
            Posix::NotFound => libc_errno::ENOENT,
            Posix::Exists => libc_errno::EEXIST,
            Posix::NotDirectory => libc_errno::ENOTDIR,
            Posix::IsDirectory => libc_errno::EISDIR,
            Posix::NotEmpty => libc_errno::ENOTEMPTY,
            Posix::NameTooLong => libc_errno::ENAMETOOLONG,
            Posix::FileTooLarge => libc_errno::EFBIG,
            Posix::Invalid => libc_errno::EINVAL,
            Posix::Access => libc_errno::EACCES,
            Posix::NotPermitted => libc_errno::EPERM,
            Posix::TooManyLinks => libc_errno::EMLINK,
            Posix::NoAttribute => libc_errno::ENODATA,
            Posix::Range => libc_errno::ERANGE,
            Posix::NotSupported => libc_errno::EOPNOTSUPP,
            Posix::Loop => libc_errno::ELOOP,
        }
    }
}

/// Linux errno values (the only platform domfs serves).
pub mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const EACCES: i32 = 13;
    pub const EEXIST: i32 = 17;
    pub const EXDEV: i32 = 18;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const EFBIG: i32 = 27;
    pub const ENOSPC: i32 = 28;
    pub const EROFS: i32 = 30;
    pub const EMLINK: i32 = 31;
    pub const ERANGE: i32 = 34;
    pub const ENAMETOOLONG: i32 = 36;
    pub const ENOTEMPTY: i32 = 39;
    pub const ELOOP: i32 = 40;
    pub const ENODATA: i32 = 61;
    pub const EOPNOTSUPP: i32 = 95;
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{0}")]
    Posix(#[from] Posix),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("not a domfs volume (no domfs header in either header copy)")]
    NotDomfs,
    #[error("unsupported domfs format version {0} (this build reads version 1)")]
    UnsupportedVersion(u32),
    #[error("corrupt volume header: {0}")]
    CorruptHeader(String),
    #[error("volume is truncated: the header says {expected} bytes, the container has {actual}")]
    Truncated { expected: u64, actual: u64 },
    #[error("wrong key for this volume")]
    WrongKey,
    #[error("bad key file: {0}")]
    BadKeyFile(String),
    #[error("integrity error: {0} does not verify")]
    Integrity(Damaged),
    #[error("corrupt superblock: {0}")]
    CorruptSuperblock(String),
    #[error("refusing to open read-write: {0}")]
    DamagedSuperblock(String),
    #[error("forged superblock: {0}")]
    ForgedSuperblock(String),
    #[error("access to this volume was revoked by the TTP; the mount no longer holds its key")]
    Revoked,
    #[error("corrupt filesystem structure: {0} (run domfs fsck)")]
    CorruptFilesystem(String),
    #[error("volume is not formatted yet (no superblock)")]
    Unformatted,
    #[error("no space left on the volume")]
    NoSpace,
    #[error("{0} is beyond the end of the volume")]
    OutOfRange(crate::types::LogicalBlock),
    #[error("volume is open read-only")]
    ReadOnly,
    #[error(
        "volume failed after an earlier write or sync error; nothing more is written, remount it"
    )]
    Failed,
    #[error("random number generator failed: {0}")]
    Random(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl Error {
    /// The errno a filesystem request that failed with this error answers.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Posix(p) => p.errno(),
            Error::NoSpace => libc_errno::ENOSPC,
            Error::ReadOnly => libc_errno::EROFS,
            Error::OutOfRange(_) => libc_errno::EFBIG,
            Error::Invalid(_) => libc_errno::EINVAL,
            Error::Revoked => libc_errno::EACCES,
            _ => libc_errno::EIO,
        }
    }

    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}
