//! The per-file block map: a radix tree from a file's block index to a logical block of the
//! volume (0 = hole).
//!
//! A map of height `h` covers `512^h` file blocks. Height 0: `root` is the data block of
//! file block 0. Height `h ≥ 1`: `root` is an indirect block of 512 little-endian `u64`
//! entries, each covering `512^(h-1)` file blocks. `root == 0` is the empty map (any height).
//!
//! Consistency on errors: no operation ever leaves the map (on disk or in `self`) pointing
//! at a freed block, and on an error `self` is still the current map (store it).
//! - `get_or_alloc` allocates every block it needs *before* writing anything; if an
//!   allocation fails (e.g. [`Error::NoSpace`]) the blocks it already got are freed again
//!   and the map is unchanged. New indirect blocks are written bottom-up and linked last (one
//!   entry of an existing indirect block, or the in-memory root), so a failed write of a new
//!   block also frees them all; only a failure of that final linking write leaves them
//!   allocated (they may or may not be reachable: fsck reconciles).
//! - `punch` first unlinks (writing the shortened indirect blocks), then frees: an error
//!   midway may leak blocks (allocated, unreachable; fsck reclaims them), never dangle.
//!
//! Indirect blocks are authenticated by the layers below, but their entries are still never
//! trusted for indexing; an entry pointing back at an indirect block on its own path is
//! [`Error::CorruptFilesystem`]. Depth is bounded by the height (≤ [`MAX_HEIGHT`]).

use super::{BlockAlloc, BlockIo};
use crate::Result;
use crate::error::{Error, Posix};
use crate::types::{BLOCK_SIZE, Block};

/// Entries per indirect block.
pub const PTRS_PER_BLOCK: u64 = 512;
/// Largest file: 2^40 blocks of 4 KiB (4 PiB).
pub const MAX_FILE_BLOCKS: u64 = 1 << 40;
/// Largest valid height (512^5 = 2^45 ≥ [`MAX_FILE_BLOCKS`]).
pub const MAX_HEIGHT: u8 = 5;

const SHIFT: u32 = 9;

/// The root of a file's block map, stored in the inode (9 bytes, see [`BlockMap::to_bytes`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockMap {
    pub height: u8,
    pub root: u64,
}

/// The result of [`BlockMap::get_or_alloc`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapped {
    /// The data block of the requested file block.
    pub block: u64,
    /// The data block was just allocated: its content is undefined, the caller writes it.
    pub fresh: bool,
    /// Blocks (data + indirect) this call allocated, for the inode's block count.
    pub allocated: u64,
}

/// What [`BlockMap::move_range`] did, in blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    /// Data blocks moved.
    pub data: u64,
    /// Indirect blocks the destination allocated.
    pub allocated: u64,
    /// Indirect blocks the source freed.
    pub freed: u64,
}

/// File blocks covered by a subtree of height `level`.
fn span(level: u8) -> u64 {
    1u64 << (SHIFT * u32::from(level.min(MAX_HEIGHT)))
}

/// The entry of `index` in an indirect block of height `level ≥ 1`.
fn slot(index: u64, level: u8) -> usize {
    let shift = SHIFT * u32::from(level.clamp(1, MAX_HEIGHT) - 1);
    ((index >> shift) & (PTRS_PER_BLOCK - 1)) as usize
}

/// The smallest height that covers `index`.
fn height_for(index: u64) -> u8 {
    let mut h = 0;
    while h < MAX_HEIGHT && index >= span(h) {
        h += 1;
    }
    h
}

fn corrupt(msg: String) -> Error {
    Error::CorruptFilesystem(msg)
}

/// Rejects an entry that points back at an indirect block on its own path (a loop).
fn check_entry(entry: u64, ancestors: &[u64]) -> Result<()> {
    if ancestors.contains(&entry) {
        return Err(corrupt(format!(
            "block map entry {entry} points back at an indirect block on its own path"
        )));
    }
    Ok(())
}

/// An indirect block's content.
struct Node(Box<Block>);

impl Node {
    fn zeroed() -> Self {
        Node(Box::new([0u8; BLOCK_SIZE]))
    }

    fn read(io: &dyn BlockIo, block: u64) -> Result<Self> {
        let mut node = Self::zeroed();
        io.read_block(block, &mut node.0)?;
        Ok(node)
    }

    fn get(&self, i: usize) -> u64 {
        self.0
            .get(i.saturating_mul(8)..)
            .and_then(|s| s.first_chunk::<8>())
            .map_or(0, |c| u64::from_le_bytes(*c))
    }

    fn set(&mut self, i: usize, value: u64) {
        if let Some(c) = self
            .0
            .get_mut(i.saturating_mul(8)..)
            .and_then(|s| s.first_chunk_mut::<8>())
        {
            *c = value.to_le_bytes();
        }
    }

    /// Non-zero entries, in order.
    fn entries(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.0
            .chunks_exact(8)
            .enumerate()
            .filter_map(|(i, c)| c.first_chunk::<8>().map(|c| (i, u64::from_le_bytes(*c))))
            .filter(|&(_, e)| e != 0)
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|&b| b == 0)
    }
}

/// A block (or subtree) unlinked by `punch`, freed once all unlinking writes are done.
enum Doomed {
    /// Just this block (an indirect block whose entries were already collected).
    One(u64),
    /// The block and everything below it (`level` = its height; 0 = data block).
    Tree(u64, u8),
}

/// Allocates one block for `get_or_alloc`, recording it; on failure releases all recorded.
fn take(
    io: &dyn BlockIo,
    alloc: &mut dyn BlockAlloc,
    got: &mut Vec<u64>,
    hint: u64,
) -> Result<u64> {
    match alloc.alloc(hint) {
        Ok(0) => {
            release(io, alloc, got);
            Err(corrupt("the allocator handed out block 0".into()))
        }
        Ok(b) => {
            got.push(b);
            Ok(b)
        }
        Err(e) => {
            release(io, alloc, got);
            Err(e)
        }
    }
}

/// Best-effort return of blocks allocated by a failed `get_or_alloc` (none are linked yet).
fn release(io: &dyn BlockIo, alloc: &mut dyn BlockAlloc, got: &mut Vec<u64>) {
    for b in got.drain(..).rev() {
        let _ = io.discard_block(b);
        let _ = alloc.free(b);
    }
}

fn free_one(io: &dyn BlockIo, alloc: &mut dyn BlockAlloc, block: u64) -> Result<u64> {
    io.discard_block(block)?;
    alloc.free(block)?;
    Ok(1)
}

/// Frees a subtree bottom-up (with `keep_data`, only its indirect blocks); returns the
/// number of blocks freed.
fn free_tree(
    io: &dyn BlockIo,
    alloc: &mut dyn BlockAlloc,
    block: u64,
    level: u8,
    keep_data: bool,
    ancestors: &mut Vec<u64>,
) -> Result<u64> {
    let mut n = 0u64;
    if level > 0 {
        let node = Node::read(io, block)?;
        ancestors.push(block);
        for (_, e) in node.entries() {
            check_entry(e, ancestors)?;
            n = n.saturating_add(free_tree(io, alloc, e, level - 1, keep_data, ancestors)?);
        }
        ancestors.pop();
    } else if keep_data {
        return Ok(0);
    }
    Ok(n.saturating_add(free_one(io, alloc, block)?))
}

/// Unlinks the part of `[start, end)` below `block` (height `level ≥ 1`, first index `base`;
/// the range overlaps the block's and `end ≤ base + span(level)`), collecting what to free.
/// Returns true when the block is now all holes (it is then not written: the caller unlinks
/// and dooms it).
#[allow(clippy::too_many_arguments)]
fn punch_node(
    io: &dyn BlockIo,
    block: u64,
    level: u8,
    base: u64,
    start: u64,
    end: u64,
    doomed: &mut Vec<Doomed>,
    ancestors: &mut Vec<u64>,
) -> Result<bool> {
    let mut node = Node::read(io, block)?;
    let child_span = span(level - 1);
    let first = (start.saturating_sub(base) / child_span).min(PTRS_PER_BLOCK) as usize;
    let last = (end.saturating_sub(base).div_ceil(child_span)).min(PTRS_PER_BLOCK) as usize;
    let mut changed = false;
    ancestors.push(block);
    for i in first..last {
        let e = node.get(i);
        if e == 0 {
            continue;
        }
        check_entry(e, ancestors)?;
        let child_base = base.saturating_add((i as u64).saturating_mul(child_span));
        let whole = start <= child_base && child_base.saturating_add(child_span) <= end;
        if whole || level == 1 {
            doomed.push(Doomed::Tree(e, level - 1));
        } else if punch_node(io, e, level - 1, child_base, start, end, doomed, ancestors)? {
            doomed.push(Doomed::One(e));
        } else {
            continue;
        }
        node.set(i, 0);
        changed = true;
    }
    ancestors.pop();
    if node.is_empty() {
        return Ok(true);
    }
    if changed {
        io.write_block(block, &node.0)?;
    }
    Ok(false)
}

impl BlockMap {
    /// The inode encoding: height, then the root as little-endian `u64`.
    pub fn to_bytes(&self) -> [u8; 9] {
        let mut out = [0u8; 9];
        out[0] = self.height;
        out[1..].copy_from_slice(&self.root.to_le_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8; 9]) -> Result<Self> {
        let [height, root @ ..] = *bytes;
        let map = BlockMap {
            height,
            root: u64::from_le_bytes(root),
        };
        map.check()?;
        Ok(map)
    }

    fn check(&self) -> Result<()> {
        if self.height > MAX_HEIGHT {
            return Err(corrupt(format!(
                "block map height {} exceeds {MAX_HEIGHT}",
                self.height
            )));
        }
        Ok(())
    }

    /// The data block of file block `index`; None for a hole or beyond the map's capacity.
    pub fn get(&self, io: &dyn BlockIo, index: u64) -> Result<Option<u64>> {
        self.check()?;
        if self.root == 0 || index >= span(self.height) {
            return Ok(None);
        }
        let mut ancestors = [0u64; MAX_HEIGHT as usize];
        let (mut block, mut level) = (self.root, self.height);
        while level > 0 {
            let e = Node::read(io, block)?.get(slot(index, level));
            if e == 0 {
                return Ok(None);
            }
            let depth = usize::from(self.height - level);
            if let Some(a) = ancestors.get_mut(depth) {
                *a = block;
            }
            check_entry(e, ancestors.get(..=depth).unwrap_or(&[]))?;
            block = e;
            level -= 1;
        }
        Ok(Some(block))
    }

    /// The data block of file block `index`, allocating it (and any indirect blocks, growing
    /// the height) when it is a hole. See the module doc for what happens on errors.
    pub fn get_or_alloc(
        &mut self,
        io: &dyn BlockIo,
        alloc: &mut dyn BlockAlloc,
        index: u64,
        hint: u64,
    ) -> Result<Mapped> {
        self.map_index(io, alloc, index, hint, None)
    }

    /// Maps file block `index`, a hole, to `block`, a data block the caller already owns
    /// (it moves from another map: no data is copied). Allocates indirect blocks as
    /// needed; returns how many. A mapped `index` is an error.
    pub fn set(
        &mut self,
        io: &dyn BlockIo,
        alloc: &mut dyn BlockAlloc,
        index: u64,
        block: u64,
    ) -> Result<u64> {
        if block == 0 {
            return Err(corrupt("mapping a file block to block 0".into()));
        }
        let mapped = self.map_index(io, alloc, index, block, Some(block))?;
        if mapped.block != block {
            return Err(corrupt(format!(
                "file block {index} is already mapped (to {})",
                mapped.block
            )));
        }
        Ok(mapped.allocated)
    }

    fn map_index(
        &mut self,
        io: &dyn BlockIo,
        alloc: &mut dyn BlockAlloc,
        index: u64,
        hint: u64,
        given: Option<u64>,
    ) -> Result<Mapped> {
        self.check()?;
        if index >= MAX_FILE_BLOCKS {
            return Err(Posix::FileTooLarge.into());
        }
        let need = height_for(index);
        // The deepest existing indirect block on the path, where the new chain hangs.
        let mut link: Option<(u64, u8, Node)> = None;
        let mut grow = 0u8;
        if self.root != 0 {
            if self.height < need {
                grow = need - self.height;
            } else if self.height == 0 {
                let block = self.root;
                return Ok(Mapped {
                    block,
                    fresh: false,
                    allocated: 0,
                });
            } else {
                let mut ancestors = Vec::with_capacity(usize::from(MAX_HEIGHT));
                let (mut block, mut level) = (self.root, self.height);
                loop {
                    let node = Node::read(io, block)?;
                    let e = node.get(slot(index, level));
                    if e == 0 {
                        link = Some((block, level, node));
                        break;
                    }
                    ancestors.push(block);
                    check_entry(e, &ancestors)?;
                    if level == 1 {
                        return Ok(Mapped {
                            block: e,
                            fresh: false,
                            allocated: 0,
                        });
                    }
                    block = e;
                    level -= 1;
                }
            }
        }
        // New indirect blocks on the path, at heights path_top down to 1.
        let path_top = match (&link, grow) {
            (Some((_, level, _)), _) => level - 1,
            (None, 0) => need,
            (None, _) => need - 1,
        };

        // Allocate everything first (growth roots, path top-down, data).
        let mut got = Vec::with_capacity(usize::from(grow) + usize::from(path_top) + 1);
        let mut grown = Vec::with_capacity(usize::from(grow));
        for _ in 0..grow {
            grown.push(take(io, alloc, &mut got, hint)?);
        }
        let mut parent = grown
            .last()
            .copied()
            .or(link.as_ref().map(|l| l.0))
            .unwrap_or(hint);
        let mut path = Vec::with_capacity(usize::from(path_top));
        for _ in 0..path_top {
            parent = take(io, alloc, &mut got, parent)?;
            path.push(parent);
        }
        let data = match given {
            Some(block) => block,
            None => take(io, alloc, &mut got, hint)?,
        };

        // Write the new indirect blocks bottom-up, so each points only at written blocks.
        let mut child = data;
        for (k, &b) in path.iter().enumerate().rev() {
            let mut node = Node::zeroed();
            node.set(slot(index, path_top - k as u8), child);
            if let Err(e) = io.write_block(b, &node.0) {
                release(io, alloc, &mut got);
                return Err(e);
            }
            child = b;
        }
        let mut below = self.root;
        for (k, &b) in grown.iter().enumerate() {
            let level = self.height + 1 + k as u8;
            let mut node = Node::zeroed();
            node.set(0, below);
            if level == need {
                // index ≥ 512^(need-1), so this slot is never 0.
                node.set(slot(index, level), child);
            }
            if let Err(e) = io.write_block(b, &node.0) {
                release(io, alloc, &mut got);
                return Err(e);
            }
            below = b;
        }
        let allocated = got.len() as u64;
        if let Some((b, level, mut node)) = link {
            node.set(slot(index, level), child);
            io.write_block(b, &node.0)?;
        } else {
            self.root = if grow > 0 { below } else { child };
            self.height = need;
        }
        Ok(Mapped {
            block: data,
            fresh: given.is_none(),
            allocated,
        })
    }

    /// Unmaps and frees every data block with index in `[start, end)`, and every indirect
    /// block left all holes; each freed block is discarded, then freed. Hole subtrees are
    /// skipped. Returns the number of blocks freed (data + indirect). The height shrinks
    /// while only entry 0 of the root remains; an emptied map becomes the default.
    pub fn punch(
        &mut self,
        io: &dyn BlockIo,
        alloc: &mut dyn BlockAlloc,
        start: u64,
        end: u64,
    ) -> Result<u64> {
        self.unmap(io, alloc, start, end, false)
    }

    /// Like [`BlockMap::punch`], except that the data blocks are neither discarded nor
    /// freed: they stay allocated, to be mapped elsewhere ([`BlockMap::set`]). Returns the
    /// number of indirect blocks freed.
    pub fn detach(
        &mut self,
        io: &dyn BlockIo,
        alloc: &mut dyn BlockAlloc,
        start: u64,
        end: u64,
    ) -> Result<u64> {
        self.unmap(io, alloc, start, end, true)
    }

    /// Moves the data blocks of `[start, end)` to `dest` at the same indices (holes
    /// there), without copying data: `dest` gets the indirect blocks it needs, `self`
    /// frees those left all holes.
    pub fn move_range(
        &mut self,
        dest: &mut BlockMap,
        io: &dyn BlockIo,
        alloc: &mut dyn BlockAlloc,
        start: u64,
        end: u64,
    ) -> Result<Moved> {
        let mut blocks = Vec::new();
        self.for_each_in(io, start, end, &mut |index, block| {
            blocks.push((index, block));
            Ok(())
        })?;
        let mut moved = Moved {
            data: blocks.len() as u64,
            ..Moved::default()
        };
        // Unlink first, so a failure never leaves a block mapped twice.
        moved.freed = self.detach(io, alloc, start, end)?;
        for (index, block) in blocks {
            moved.allocated += dest.set(io, alloc, index, block)?;
        }
        Ok(moved)
    }

    fn unmap(
        &mut self,
        io: &dyn BlockIo,
        alloc: &mut dyn BlockAlloc,
        start: u64,
        end: u64,
        keep_data: bool,
    ) -> Result<u64> {
        self.check()?;
        let cap = span(self.height);
        let end = end.min(cap);
        if self.root == 0 || start >= end {
            return Ok(0);
        }
        let mut doomed = Vec::new();
        if start == 0 && end == cap {
            doomed.push(Doomed::Tree(self.root, self.height));
            *self = Self::default();
        } else {
            // Height ≥ 1 here: at height 0 the only non-empty range is the whole map.
            let mut ancestors = Vec::with_capacity(usize::from(MAX_HEIGHT));
            let (root, height) = (self.root, self.height);
            if punch_node(io, root, height, 0, start, end, &mut doomed, &mut ancestors)? {
                doomed.push(Doomed::One(root));
                *self = Self::default();
            } else if !doomed.is_empty() {
                self.shrink(io, &mut doomed)?;
            }
        }
        let mut freed = 0u64;
        let mut ancestors = Vec::with_capacity(usize::from(MAX_HEIGHT));
        for d in doomed {
            freed = freed.saturating_add(match d {
                Doomed::One(b) => free_one(io, alloc, b)?,
                Doomed::Tree(_, 0) if keep_data => 0,
                Doomed::Tree(b, level) => {
                    free_tree(io, alloc, b, level, keep_data, &mut ancestors)?
                }
            });
        }
        Ok(freed)
    }

    /// Drops root levels whose only non-hole entry is entry 0.
    fn shrink(&mut self, io: &dyn BlockIo, doomed: &mut Vec<Doomed>) -> Result<()> {
        while self.height > 0 && self.root != 0 {
            let node = Node::read(io, self.root)?;
            let mut entries = node.entries();
            let only = match (entries.next(), entries.next()) {
                (Some((0, e)), None) => e,
                _ => break,
            };
            check_entry(only, &[self.root])?;
            doomed.push(Doomed::One(self.root));
            self.root = only;
            self.height -= 1;
        }
        Ok(())
    }

    /// Calls `f(index, block)` for every mapped data block, in index order.
    pub fn for_each(
        &self,
        io: &dyn BlockIo,
        f: &mut dyn FnMut(u64, u64) -> Result<()>,
    ) -> Result<()> {
        self.walk(io, &mut |index, block, indirect| {
            if indirect { Ok(()) } else { f(index, block) }
        })
    }

    /// Calls `f(index, block)` for every mapped data block with index in `[start, end)`,
    /// in index order, visiting only the subtrees that overlap the range.
    pub fn for_each_in(
        &self,
        io: &dyn BlockIo,
        start: u64,
        end: u64,
        f: &mut dyn FnMut(u64, u64) -> Result<()>,
    ) -> Result<()> {
        self.check()?;
        if self.root == 0 || start >= end.min(span(self.height)) {
            return Ok(());
        }
        let mut ancestors = Vec::with_capacity(usize::from(MAX_HEIGHT));
        walk_range(io, self.root, self.height, 0, start, end, &mut ancestors, f)
    }

    /// Calls `f(block, is_indirect)` for every block the map owns (indirect blocks before
    /// their children).
    pub fn for_each_block(
        &self,
        io: &dyn BlockIo,
        f: &mut dyn FnMut(u64, bool) -> Result<()>,
    ) -> Result<()> {
        self.walk(io, &mut |_, block, indirect| f(block, indirect))
    }

    fn walk(
        &self,
        io: &dyn BlockIo,
        f: &mut dyn FnMut(u64, u64, bool) -> Result<()>,
    ) -> Result<()> {
        self.check()?;
        if self.root == 0 {
            return Ok(());
        }
        let mut ancestors = Vec::with_capacity(usize::from(MAX_HEIGHT));
        walk_node(io, self.root, self.height, 0, &mut ancestors, f)
    }
}

#[allow(clippy::too_many_arguments)]
fn walk_range(
    io: &dyn BlockIo,
    block: u64,
    level: u8,
    base: u64,
    start: u64,
    end: u64,
    ancestors: &mut Vec<u64>,
    f: &mut dyn FnMut(u64, u64) -> Result<()>,
) -> Result<()> {
    if level == 0 {
        return f(base, block);
    }
    let node = Node::read(io, block)?;
    let child_span = span(level - 1);
    ancestors.push(block);
    for (i, e) in node.entries() {
        let child_base = base.saturating_add((i as u64).saturating_mul(child_span));
        if child_base.saturating_add(child_span) <= start {
            continue;
        }
        if child_base >= end {
            break;
        }
        check_entry(e, ancestors)?;
        walk_range(io, e, level - 1, child_base, start, end, ancestors, f)?;
    }
    ancestors.pop();
    Ok(())
}

fn walk_node(
    io: &dyn BlockIo,
    block: u64,
    level: u8,
    base: u64,
    ancestors: &mut Vec<u64>,
    f: &mut dyn FnMut(u64, u64, bool) -> Result<()>,
) -> Result<()> {
    if level == 0 {
        return f(base, block, false);
    }
    f(base, block, true)?;
    let node = Node::read(io, block)?;
    let child_span = span(level - 1);
    ancestors.push(block);
    for (i, e) in node.entries() {
        check_entry(e, ancestors)?;
        let child_base = base.saturating_add((i as u64).saturating_mul(child_span));
        walk_node(io, e, level - 1, child_base, ancestors, f)?;
    }
    ancestors.pop();
    Ok(())
}

#[cfg(test)]
#[path = "bmap_tests.rs"]
mod tests;
