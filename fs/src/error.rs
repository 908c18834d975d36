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

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
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
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}
