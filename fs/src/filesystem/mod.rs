//! The filesystem inside a domain volume (layer 5 of DESIGN.md): inodes, directories,
//! block maps and allocation, all stored in the logical blocks of the [`crate::store`], so
//! names, sizes and the tree are encrypted and authenticated like everything else.
//!
//! Every operation runs between two commits: the store commits only when the filesystem
//! asks (between operations), so each operation is atomic across a crash.

pub mod bmap;
pub mod dir;

use crate::Result;
use crate::types::Block;

/// Logical-block I/O as the filesystem uses it (the block store implements it; tests use
/// an in-memory map).
pub trait BlockIo {
    fn read_block(&self, block: u64, out: &mut Block) -> Result<()>;
    fn write_block(&self, block: u64, data: &Block) -> Result<()>;
    /// The block's content is no longer needed (it reads as zeros afterwards).
    fn discard_block(&self, block: u64) -> Result<()>;
}

/// Hands out and takes back logical blocks.
pub trait BlockAlloc {
    /// A free logical block, preferably near `hint`, now marked used.
    fn alloc(&mut self, hint: u64) -> Result<u64>;
    /// Marks `block` free (the caller has already discarded or will discard it).
    fn free(&mut self, block: u64) -> Result<()>;
}
