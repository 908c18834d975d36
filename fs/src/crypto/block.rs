//! The sealed block: what every 4 KiB block of the container (data, tree node, space map)
//! looks like on disk, and the tag that authenticates it.
//!
//! - ciphertext = AES-256-XTS(plaintext), tweak = physical block number (u64 LE) ‖ write
//!   generation (u64 LE). The generation changes on every write, so two versions of one
//!   block do not show which 16-byte pieces changed (dm-crypt's plain64 tweak does).
//! - tag = HMAC-SHA256(block key, "domfs block v1" ‖ volume id ‖ physical block (u64 LE) ‖
//!   generation (u64 LE) ‖ ciphertext): encrypt-then-MAC. The tag is not stored beside the
//!   block but in its parent's pointer, so a swapped, moved or rolled-back block fails.

use crate::types::{BLOCK_SIZE, Block, Generation, PhysBlock, Tag, VolumeId};

use super::keys::VolumeKeys;

const TAG_DOMAIN: &[u8] = b"domfs block v1";

/// Seals and opens blocks for one volume.
pub struct BlockCodec {
    keys: Box<VolumeKeys>,
    volume: VolumeId,
}

/// A sealed block failed verification. Deliberately carries no detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadTag;

impl BlockCodec {
    pub fn new(keys: Box<VolumeKeys>, volume: VolumeId) -> Self {
        Self { keys, volume }
    }

    pub fn keys(&self) -> &VolumeKeys {
        &self.keys
    }

    /// Encrypts `block` in place and returns its tag.
    pub fn seal(&self, phys: PhysBlock, generation: Generation, block: &mut Block) -> Tag {
        self.keys
            .xts
            .encrypt_sector(block, tweak(phys, generation))
            .expect("a 4096-byte sector is always a valid XTS sector");
        self.tag(phys, generation, block)
    }

    /// Verifies `block` (ciphertext) against `expected`, then decrypts it in place. On
    /// failure the buffer is left as ciphertext: unverified plaintext never exists.
    pub fn open(
        &self,
        phys: PhysBlock,
        generation: Generation,
        expected: &Tag,
        block: &mut Block,
    ) -> Result<(), BadTag> {
        if !self.tag(phys, generation, block).ct_eq(expected) {
            return Err(BadTag);
        }
        self.keys
            .xts
            .decrypt_sector(block, tweak(phys, generation))
            .expect("a 4096-byte sector is always a valid XTS sector");
        Ok(())
    }

    fn tag(&self, phys: PhysBlock, generation: Generation, ciphertext: &Block) -> Tag {
        debug_assert_eq!(ciphertext.len(), BLOCK_SIZE);
        self.keys.block_mac.tag(&[
            TAG_DOMAIN,
            &self.volume.0,
            &phys.0.to_le_bytes(),
            &generation.0.to_le_bytes(),
            ciphertext,
        ])
    }
}

fn tweak(phys: PhysBlock, generation: Generation) -> [u8; 16] {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&phys.0.to_le_bytes());
    t[8..].copy_from_slice(&generation.0.to_le_bytes());
    t
}
