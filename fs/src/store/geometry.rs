//! Where everything sits in the tree: pure arithmetic, no I/O.
//!
//! The tree's leaves are the logical data blocks `0..logical_blocks`, followed by the
//! space-map blocks (one bit per physical block). Level 0 is the leaves; a node at level
//! `l ≥ 1`, index `i` holds the pointers to children `i·85 .. i·85+84` of level `l-1`;
//! the root is the single node at level `height`, and its pointer is in the superblock.

use crate::format::FIRST_PHYS_BLOCK;
use crate::store::pointer::ARITY;
use crate::types::BLOCK_SIZE;
use crate::{Error, Result};

/// Physical blocks covered by one space-map block.
pub const BITS_PER_MAP_BLOCK: u64 = (BLOCK_SIZE * 8) as u64;

/// A position in the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    pub level: u8,
    pub index: u64,
}

impl NodeId {
    pub fn leaf(index: u64) -> Self {
        NodeId { level: 0, index }
    }

    pub fn parent(self) -> NodeId {
        NodeId {
            level: self.level + 1,
            index: self.index / ARITY as u64,
        }
    }

    /// This node's entry in its parent.
    pub fn slot(self) -> usize {
        (self.index % ARITY as u64) as usize
    }

    pub fn child(self, slot: usize) -> NodeId {
        NodeId {
            level: self.level - 1,
            index: self.index * ARITY as u64 + slot as u64,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Blocks in the whole container, fixed area included.
    pub physical_blocks: u64,
    /// Blocks the filesystem can address.
    pub logical_blocks: u64,
    pub map_blocks: u64,
    pub height: u8,
}

impl Geometry {
    pub fn for_container(size_bytes: u64) -> Result<Self> {
        let physical_blocks = size_bytes / BLOCK_SIZE as u64;
        if physical_blocks < 2 * FIRST_PHYS_BLOCK {
            return Err(Error::Invalid(format!(
                "a volume needs at least {} bytes",
                2 * FIRST_PHYS_BLOCK * BLOCK_SIZE as u64
            )));
        }
        // Logical space as large as the block area: the physical free count is what limits
        // writes, and the tree over a never-written range costs nothing.
        let logical_blocks = physical_blocks - FIRST_PHYS_BLOCK;
        let map_blocks = physical_blocks.div_ceil(BITS_PER_MAP_BLOCK);
        let leaves = logical_blocks + map_blocks;
        let mut height = 1u8;
        let mut span = ARITY as u64;
        while span < leaves {
            span = span.saturating_mul(ARITY as u64);
            height += 1;
        }
        Ok(Self {
            physical_blocks,
            logical_blocks,
            map_blocks,
            height,
        })
    }

    pub fn root(&self) -> NodeId {
        NodeId {
            level: self.height,
            index: 0,
        }
    }

    pub fn leaves(&self) -> u64 {
        self.logical_blocks + self.map_blocks
    }

    /// The leaf holding the space-map bits of physical block `phys`, and the bit in it.
    pub fn map_position(&self, phys: u64) -> (NodeId, usize) {
        (
            NodeId::leaf(self.logical_blocks + phys / BITS_PER_MAP_BLOCK),
            (phys % BITS_PER_MAP_BLOCK) as usize,
        )
    }

    pub fn is_map_leaf(&self, id: NodeId) -> bool {
        id.level == 0 && id.index >= self.logical_blocks
    }

    /// Physical blocks available for blocks of any kind.
    pub fn usable_blocks(&self) -> u64 {
        self.physical_blocks - FIRST_PHYS_BLOCK
    }

    /// Blocks one commit may rewrite for the space map: every map block and every node
    /// above them. Kept free at all times so a commit can always complete.
    pub fn map_reserve(&self) -> u64 {
        let mut total = self.map_blocks;
        let (mut first, mut last) = (self.logical_blocks, self.leaves() - 1);
        for _ in 0..self.height {
            first /= ARITY as u64;
            last /= ARITY as u64;
            total += last - first + 1;
        }
        total
    }

    /// Indexes of the space-map blocks in the subtree of `id`.
    pub fn map_leaves_below(&self, id: NodeId) -> std::ops::Range<u64> {
        let width = (ARITY as u64).saturating_pow(u32::from(id.level));
        let start = id.index.saturating_mul(width);
        let end = start.saturating_add(width).min(self.leaves());
        let first_map = start.max(self.logical_blocks);
        if end <= first_map {
            return 0..0;
        }
        (first_map - self.logical_blocks)..(end - self.logical_blocks)
    }

    /// Logical blocks covered by tree node `id`: `[start, end)`, clipped to data blocks.
    pub fn span(&self, id: NodeId) -> (u64, u64) {
        let width = (ARITY as u64).saturating_pow(u32::from(id.level));
        let start = id.index.saturating_mul(width);
        let end = start.saturating_add(width).min(self.logical_blocks);
        (start.min(self.logical_blocks), end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_volume_has_height_that_covers_all_leaves() {
        let g = Geometry::for_container(256 * 1024 * 1024).unwrap();
        assert_eq!(g.physical_blocks, 65536);
        assert_eq!(g.logical_blocks, 65536 - 256);
        assert_eq!(g.map_blocks, 2);
        assert!(85u64.pow(u32::from(g.height)) >= g.leaves());
        assert!(85u64.pow(u32::from(g.height) - 1) < g.leaves());
    }

    #[test]
    fn huge_volume_geometry_is_cheap() {
        let g = Geometry::for_container(1 << 40).unwrap();
        assert_eq!(g.height, 5);
        assert_eq!(g.map_blocks, 8192);
        assert!(g.map_reserve() < 8192 + 200);
    }

    #[test]
    fn tiny_container_is_refused() {
        assert!(Geometry::for_container(1024 * 1024).is_err());
    }

    #[test]
    fn parent_and_child_are_inverse() {
        let id = NodeId {
            level: 2,
            index: 1000,
        };
        for slot in [0, 1, 84] {
            let c = id.child(slot);
            assert_eq!(c.parent(), id);
            assert_eq!(c.slot(), slot);
        }
    }
}
