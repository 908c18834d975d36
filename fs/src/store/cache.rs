//! An LRU of verified plaintext blocks (data, tree nodes and space map alike), bounded in
//! bytes. Only clean blocks live here: dirty data is held by the transaction until its
//! commit, so eviction never writes.

use std::num::NonZeroUsize;

use lru::LruCache;

use crate::store::geometry::NodeId;
use crate::types::{BLOCK_SIZE, Block};

pub struct BlockCache {
    lru: LruCache<NodeId, Box<Block>>,
}

impl BlockCache {
    /// The smallest useful cache: one path from the root plus some data.
    const MIN_BLOCKS: usize = 64;

    pub fn new(bytes: usize) -> Self {
        let blocks = (bytes / BLOCK_SIZE).max(Self::MIN_BLOCKS);
        Self {
            lru: LruCache::new(NonZeroUsize::new(blocks).unwrap_or(NonZeroUsize::MIN)),
        }
    }

    pub fn get(&mut self, id: &NodeId) -> Option<&Block> {
        self.lru.get(id).map(|b| &**b)
    }

    pub fn insert(&mut self, id: NodeId, block: Box<Block>) {
        self.lru.put(id, block);
    }

    pub fn remove(&mut self, id: &NodeId) {
        self.lru.pop(id);
    }

    pub fn clear(&mut self) {
        self.lru.clear();
    }

    pub fn capacity_bytes(&self) -> usize {
        self.lru.cap().get() * BLOCK_SIZE
    }
}
