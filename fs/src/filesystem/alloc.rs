//! The logical-block allocator: one bit per logical block in a bitmap at a fixed place
//! (logical blocks 1 … B), so allocating never needs the allocator. Bitmap blocks touched
//! by an operation are kept here and written back at its end.

use std::collections::HashMap;

use super::{BlockAlloc, BlockIo};
use crate::types::{BLOCK_SIZE, Block};
use crate::{Error, Result};

pub const BITS_PER_BLOCK: u64 = (BLOCK_SIZE * 8) as u64;

pub struct Allocator {
    /// First logical block of the bitmap.
    start: u64,
    /// Logical blocks the bitmap covers.
    total: u64,
    used: u64,
    cursor: u64,
    touched: HashMap<u64, (Box<Block>, bool)>,
}

impl Allocator {
    pub fn new(start: u64, total: u64, used: u64) -> Self {
        Self {
            start,
            total,
            used,
            cursor: 0,
            touched: HashMap::new(),
        }
    }

    /// Bitmap blocks needed for `total` logical blocks.
    pub fn bitmap_blocks(total: u64) -> u64 {
        total.div_ceil(BITS_PER_BLOCK)
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    fn bitmap(&mut self, io: &dyn BlockIo, index: u64) -> Result<&mut (Box<Block>, bool)> {
        if !self.touched.contains_key(&index) {
            let mut block = Box::new([0u8; BLOCK_SIZE]);
            io.read_block(self.start + index, &mut block)?;
            self.touched.insert(index, (block, false));
        }
        self.touched
            .get_mut(&index)
            .ok_or_else(|| Error::CorruptFilesystem("bitmap cache".into()))
    }

    pub fn is_used(&mut self, io: &dyn BlockIo, block: u64) -> Result<bool> {
        let (map, _) = self.bitmap(io, block / BITS_PER_BLOCK)?;
        let bit = (block % BITS_PER_BLOCK) as usize;
        Ok(map[bit / 8] & (1 << (bit % 8)) != 0)
    }

    /// Marks `block` used without searching (formatting marks the fixed area this way).
    pub fn mark_used(&mut self, io: &dyn BlockIo, block: u64) -> Result<()> {
        let (map, dirty) = self.bitmap(io, block / BITS_PER_BLOCK)?;
        let bit = (block % BITS_PER_BLOCK) as usize;
        if map[bit / 8] & (1 << (bit % 8)) == 0 {
            map[bit / 8] |= 1 << (bit % 8);
            *dirty = true;
            self.used += 1;
        }
        Ok(())
    }

    pub fn alloc(&mut self, io: &dyn BlockIo, hint: u64) -> Result<u64> {
        if self.used >= self.total {
            return Err(Error::NoSpace);
        }
        let start = if hint > 0 && hint < self.total {
            hint
        } else {
            self.cursor
        };
        let mut block = start;
        let mut wrapped = false;
        loop {
            if block >= self.total {
                block = 0;
                wrapped = true;
            }
            if wrapped && block >= start {
                return Err(Error::NoSpace);
            }
            let index = block / BITS_PER_BLOCK;
            let base = index * BITS_PER_BLOCK;
            let end = (base + BITS_PER_BLOCK).min(self.total);
            let limit = if wrapped { end.min(start) } else { end };
            let (map, dirty) = self.bitmap(io, index)?;
            if let Some(found) = first_clear(map, block - base, limit - base) {
                let bit = found as usize;
                map[bit / 8] |= 1 << (bit % 8);
                *dirty = true;
                self.used += 1;
                self.cursor = base + found + 1;
                return Ok(base + found);
            }
            block = limit.max(block + 1);
        }
    }

    pub fn free(&mut self, io: &dyn BlockIo, block: u64) -> Result<()> {
        if block >= self.total {
            return Err(Error::CorruptFilesystem(format!(
                "freeing block {block} beyond the volume"
            )));
        }
        let (map, dirty) = self.bitmap(io, block / BITS_PER_BLOCK)?;
        let bit = (block % BITS_PER_BLOCK) as usize;
        if map[bit / 8] & (1 << (bit % 8)) == 0 {
            return Err(Error::CorruptFilesystem(format!(
                "block {block} freed twice"
            )));
        }
        map[bit / 8] &= !(1 << (bit % 8));
        *dirty = true;
        self.used -= 1;
        Ok(())
    }

    /// Writes back the bitmap blocks changed since the last flush.
    pub fn flush(&mut self, io: &dyn BlockIo) -> Result<()> {
        for (index, (block, dirty)) in self.touched.drain() {
            if dirty {
                io.write_block(self.start + index, &block)?;
            }
        }
        Ok(())
    }

    /// Forgets unflushed changes (after a failed operation the whole filesystem stops).
    pub fn forget(&mut self) {
        self.touched.clear();
    }
}

/// The first clear bit in `[from, limit)` of a bitmap block.
fn first_clear(map: &Block, from: u64, limit: u64) -> Option<u64> {
    let mut bit = from;
    while bit < limit {
        if bit.is_multiple_of(64) && limit - bit >= 64 {
            let at = (bit / 8) as usize;
            let mut word = [0u8; 8];
            word.copy_from_slice(&map[at..at + 8]);
            if u64::from_le_bytes(word) == u64::MAX {
                bit += 64;
                continue;
            }
        }
        let b = bit as usize;
        if map[b / 8] & (1 << (b % 8)) == 0 {
            return Some(bit);
        }
        bit += 1;
    }
    None
}

/// The allocator together with the I/O it needs, as the block map wants it.
pub struct AllocIo<'a> {
    pub alloc: &'a mut Allocator,
    pub io: &'a dyn BlockIo,
}

impl BlockAlloc for AllocIo<'_> {
    fn alloc(&mut self, hint: u64) -> Result<u64> {
        self.alloc.alloc(self.io, hint)
    }

    fn free(&mut self, block: u64) -> Result<()> {
        self.alloc.free(self.io, block)
    }
}
