//! Small typed values parsed out of untrusted bytes, so that a block number, a generation
//! and a volume id can never be mixed up.

use std::fmt;
use subtle::ConstantTimeEq;

/// Size of every block in the container, data and tree alike.
pub const BLOCK_SIZE: usize = 4096;

/// A 4 KiB block buffer.
pub type Block = [u8; BLOCK_SIZE];

/// The random identity of a domain volume (16 bytes), fixed at creation.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VolumeId(pub [u8; 16]);

impl VolumeId {
    pub fn random() -> crate::Result<Self> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| crate::Error::Random(e.to_string()))?;
        Ok(Self(id))
    }
}

impl fmt::Display for VolumeId {
    /// UUID-style grouping, so operators can read and compare it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

impl fmt::Debug for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VolumeId({self})")
    }
}

/// A physical block number: byte offset `n * BLOCK_SIZE` in the container. 0 is "no block".
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct PhysBlock(pub u64);

impl PhysBlock {
    pub const NONE: PhysBlock = PhysBlock(0);

    pub fn is_none(self) -> bool {
        self.0 == 0
    }

    pub fn byte_offset(self) -> u64 {
        self.0 * BLOCK_SIZE as u64
    }
}

impl fmt::Display for PhysBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "physical block {} (offset {})",
            self.0,
            self.byte_offset()
        )
    }
}

/// A logical block number as the filesystem sees it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct LogicalBlock(pub u64);

impl fmt::Display for LogicalBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "logical block {}", self.0)
    }
}

/// A write generation: drawn from one volume-wide counter, never reused, so the XTS tweak
/// (physical block, generation) never repeats with different plaintext. 0 means "never
/// written".
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Generation(pub u64);

/// An HMAC-SHA256 tag. Equality is constant-time; there is deliberately no `PartialEq`.
#[derive(Clone, Copy, Default)]
pub struct Tag(pub [u8; 32]);

impl Tag {
    pub fn ct_eq(&self, other: &Tag) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({})", hex::encode(&self.0[..8]))
    }
}
