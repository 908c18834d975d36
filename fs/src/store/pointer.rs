//! A block pointer: where a child block lives, which write generation it carries, and its
//! tag. Pointers are the tag area: they sit in the parent node, never beside the block, so
//! data blocks stay 4 KiB-aligned and every tag is itself covered by its parent's tag, up
//! to the root pointer in the superblock (a Merkle tree).

use crate::types::{Block, Generation, PhysBlock, Tag};

/// Pointers in one 4 KiB node: 85 × 48 = 4080 bytes; the last 16 bytes are zero.
pub const ARITY: usize = 85;

#[derive(Clone, Copy, Debug, Default)]
pub struct Pointer {
    pub phys: PhysBlock,
    pub generation: Generation,
    pub tag: Tag,
}

impl Pointer {
    pub const ENCODED_LEN: usize = 48;
    /// An empty subtree: never written, reads as zeros. It costs nothing on disk, so a huge
    /// empty volume needs no tree at all.
    pub const NULL: Pointer = Pointer {
        phys: PhysBlock(0),
        generation: Generation(0),
        tag: Tag([0; 32]),
    };

    pub fn is_null(&self) -> bool {
        self.phys.is_none()
    }

    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut b = [0u8; Self::ENCODED_LEN];
        b[0..8].copy_from_slice(&self.phys.0.to_le_bytes());
        b[8..16].copy_from_slice(&self.generation.0.to_le_bytes());
        b[16..48].copy_from_slice(&self.tag.0);
        b
    }

    pub fn decode(b: &[u8; Self::ENCODED_LEN]) -> Self {
        let mut phys = [0u8; 8];
        phys.copy_from_slice(&b[0..8]);
        let mut generation = [0u8; 8];
        generation.copy_from_slice(&b[8..16]);
        let mut tag = [0u8; 32];
        tag.copy_from_slice(&b[16..48]);
        Pointer {
            phys: PhysBlock(u64::from_le_bytes(phys)),
            generation: Generation(u64::from_le_bytes(generation)),
            tag: Tag(tag),
        }
    }

    /// Entry `slot` (< ARITY) of a node block.
    pub fn read_entry(node: &Block, slot: usize) -> Pointer {
        let at = slot * Self::ENCODED_LEN;
        let mut b = [0u8; Self::ENCODED_LEN];
        b.copy_from_slice(&node[at..at + Self::ENCODED_LEN]);
        Self::decode(&b)
    }

    pub fn write_entry(&self, node: &mut Block, slot: usize) {
        let at = slot * Self::ENCODED_LEN;
        node[at..at + Self::ENCODED_LEN].copy_from_slice(&self.encode());
    }
}
