//! The commit: give every changed block a new home, write them, switch the superblock.
//!
//! Planning happens entirely in memory before anything is written: each dirty leaf, each
//! tree node above it and each space-map block that the allocation itself changes is
//! "adopted" into the transaction; adopting a block releases its old home and queues it
//! for a new one, and allocating or releasing a home adopts the space-map block that
//! records it. That closure is finite (each block is adopted once), so planning ends with
//! a complete, final space map. Then blocks are sealed bottom-up (a child's tag goes into
//! its parent before the parent is sealed), written in physical order, synced, and the
//! superblock is written to the other slot and synced.

use std::collections::{HashMap, HashSet};

use super::slots::{GENERATION_STEP, now};
use super::{BlockStore, CommitInfo, Inner, Pending};
use crate::format::superblock::Superblock;
use crate::format::{FIRST_PHYS_BLOCK, SUPERBLOCK_OFFSETS};
use crate::store::geometry::{BITS_PER_MAP_BLOCK, NodeId};
use crate::store::pointer::Pointer;
use crate::types::{BLOCK_SIZE, Block, Generation, PhysBlock, Tag};
use crate::{Error, Result};

/// Longest run of adjacent blocks sent to the device in one write.
const MAX_WRITE_BLOCKS: usize = 256;
/// Sealing runs on up to this many threads…
pub(super) const MAX_SEAL_THREADS: usize = 4;
/// …each with at least this many blocks (fewer are not worth a thread).
const MIN_BLOCKS_PER_THREAD: usize = 64;

#[derive(Default)]
struct Txn {
    /// Working copies of the tree nodes and space-map blocks this commit rewrites.
    work: HashMap<NodeId, Box<Block>>,
    /// New homes of everything this commit writes, data included.
    placed: HashMap<NodeId, PhysBlock>,
    queue: Vec<NodeId>,
    /// Homes the last commit references and this one drops: not reusable until it is
    /// durable.
    released: HashSet<u64>,
    allocated: u64,
    freed: u64,
    cursor: u64,
}

/// A commit planned and sealed, not yet written: what `prepare` hands to `write`.
pub(super) struct Prepared {
    writes: Vec<(u64, Box<Block>)>,
    superblock: Superblock,
    work: HashMap<NodeId, Box<Block>>,
}

impl BlockStore {
    /// A whole commit while holding the state lock (stores that commit by themselves).
    /// Skipped when another commit is in flight.
    pub(super) fn commit_locked(&self, inner: &mut Inner) -> Result<CommitInfo> {
        let Ok(_serial) = self.serial.try_lock() else {
            return Ok(CommitInfo {
                sequence: inner.sb.sequence,
                blocks_written: 0,
            });
        };
        match self.prepare(inner)? {
            None => Ok(CommitInfo {
                sequence: inner.sb.sequence,
                blocks_written: 0,
            }),
            Some(prepared) => {
                let written = self.write_prepared(&prepared);
                self.finish(inner, prepared, written)
            }
        }
    }

    /// Plans and seals everything dirty, and moves it aside: from here on, new writes go
    /// to a fresh transaction while this one is written. `None` when nothing is dirty.
    pub(super) fn prepare(&self, inner: &mut Inner) -> Result<Option<Prepared>> {
        if inner.failed {
            return Err(Error::Failed);
        }
        if inner.dirty.is_empty() {
            return Ok(None);
        }
        let mut txn = Txn {
            cursor: inner.sb.alloc_cursor,
            ..Txn::default()
        };
        self.plan(inner, &mut txn)?;
        let count = txn.placed.len() as u64;
        if inner.next_generation + count >= inner.sb.generation_hwm.0 {
            self.write_superblock(inner, None, count)?;
        }
        let (root, writes) = self.seal_all(inner, &mut txn);
        let mut superblock = inner.sb.clone();
        superblock.sequence += 1;
        superblock.root = root;
        superblock.allocated = inner.sb.allocated + txn.allocated - txn.freed;
        superblock.alloc_cursor = txn.cursor;
        superblock.generation_hwm = Generation(inner.next_generation + GENERATION_STEP);
        superblock.commit_time = now();
        inner.committing = std::mem::take(&mut inner.dirty);
        inner.pending_nodes.clear();
        inner.in_flight = inner.reserved;
        inner.reserved = 0;
        Ok(Some(Prepared {
            writes,
            superblock,
            work: txn.work,
        }))
    }

    /// Writes a prepared commit: its blocks, a sync, the superblock, a sync. Needs no
    /// state lock, so reads and new writes go on meanwhile.
    pub(super) fn write_prepared(&self, prepared: &Prepared) -> Result<()> {
        self.write_blocks(&prepared.writes)?;
        let bytes = prepared.superblock.encode(self.codec.keys());
        self.dev
            .write_at(&bytes, SUPERBLOCK_OFFSETS[prepared.superblock.slot()])
            .and_then(|()| self.dev.sync())
            .map_err(|e| Error::io(format!("writing the superblock of {}", self.dev.name()), e))
    }

    /// Makes a written commit the current state (or, if writing failed, stops the store).
    pub(super) fn finish(
        &self,
        inner: &mut Inner,
        prepared: Prepared,
        written: Result<()>,
    ) -> Result<CommitInfo> {
        inner.in_flight = 0;
        if let Err(e) = written {
            // After a failed write or sync the kernel may have dropped dirty pages: what
            // is on disk is unknown, so nothing more is committed on top of it. What was
            // accepted stays readable from memory.
            inner.failed = true;
            return Err(e);
        }
        let blocks_written = prepared.writes.len() as u64;
        inner.sb = prepared.superblock;
        for (leaf, pending) in std::mem::take(&mut inner.committing) {
            if let Pending::Data(block) = pending {
                inner.cache.insert(NodeId::leaf(leaf), block);
            }
        }
        for (id, block) in prepared.work {
            inner.cache.insert(id, block);
        }
        Ok(CommitInfo {
            sequence: inner.sb.sequence,
            blocks_written,
        })
    }

    fn plan(&self, inner: &mut Inner, txn: &mut Txn) -> Result<()> {
        let mut leaves: Vec<u64> = inner.dirty.keys().copied().collect();
        leaves.sort_unstable();
        for leaf in leaves {
            let id = NodeId::leaf(leaf);
            let old = self.pointer_of(inner, id)?;
            if !old.is_null() {
                self.release(inner, txn, old.phys)?;
            }
            if matches!(inner.dirty.get(&leaf), Some(Pending::Data(_))) {
                txn.queue.push(id);
            }
            self.adopt(inner, txn, id.parent())?;
        }
        while let Some(id) = txn.queue.pop() {
            let phys = self.allocate(inner, txn)?;
            txn.placed.insert(id, phys);
        }
        Ok(())
    }

    /// Brings a tree node or space-map block into the transaction (once).
    fn adopt(&self, inner: &mut Inner, txn: &mut Txn, id: NodeId) -> Result<()> {
        if txn.work.contains_key(&id) {
            return Ok(());
        }
        let content = self.load(inner, id)?;
        txn.work.insert(id, content);
        let old = self.pointer_of(inner, id)?;
        if !old.is_null() {
            self.release(inner, txn, old.phys)?;
        }
        txn.queue.push(id);
        if id.level < self.geometry.height {
            self.adopt(inner, txn, id.parent())?;
        }
        Ok(())
    }

    fn release(&self, inner: &mut Inner, txn: &mut Txn, phys: PhysBlock) -> Result<()> {
        let (map_leaf, bit) = self.geometry.map_position(phys.0);
        self.adopt(inner, txn, map_leaf)?;
        let map = txn.work.get_mut(&map_leaf).expect("adopted just above");
        if !bit_is_set(map, bit) {
            return Err(Error::CorruptSuperblock(format!(
                "{phys} is referenced but marked free in the space map (run domfs fsck)"
            )));
        }
        clear_bit(map, bit);
        txn.released.insert(phys.0);
        txn.freed += 1;
        Ok(())
    }

    /// Finds a free home: next fit from the cursor, skipping what this commit released.
    fn allocate(&self, inner: &mut Inner, txn: &mut Txn) -> Result<PhysBlock> {
        let total = self.geometry.physical_blocks;
        let start = txn.cursor.clamp(FIRST_PHYS_BLOCK, total - 1);
        let mut phys = start;
        let mut wrapped = false;
        loop {
            if phys >= total {
                phys = FIRST_PHYS_BLOCK;
                wrapped = true;
            }
            if wrapped && phys >= start {
                return Err(Error::NoSpace);
            }
            let (map_leaf, first_bit) = self.geometry.map_position(phys);
            let map_end = (phys - first_bit as u64 + BITS_PER_MAP_BLOCK).min(total);
            let limit = if wrapped { map_end.min(start) } else { map_end };
            let found = {
                let map: &Block = match txn.work.get(&map_leaf) {
                    Some(m) => m,
                    None => &*self.load(inner, map_leaf)?,
                };
                find_free(map, phys, limit, &txn.released)
            };
            match found {
                Some(free) => {
                    self.adopt(inner, txn, map_leaf)?;
                    let (_, bit) = self.geometry.map_position(free);
                    set_bit(txn.work.get_mut(&map_leaf).expect("adopted"), bit);
                    txn.allocated += 1;
                    txn.cursor = free + 1;
                    return Ok(PhysBlock(free));
                }
                None => phys = limit.max(phys + 1),
            }
        }
    }

    /// Seals every placed block bottom-up; returns the new root and the writes.
    fn seal_all(&self, inner: &mut Inner, txn: &mut Txn) -> (Pointer, Vec<(u64, Box<Block>)>) {
        for (&leaf, pending) in &inner.dirty {
            if matches!(pending, Pending::Discard) {
                let id = NodeId::leaf(leaf);
                let parent = txn.work.get_mut(&id.parent()).expect("parents are adopted");
                Pointer::NULL.write_entry(parent, id.slot());
            }
        }
        let mut order: Vec<(NodeId, PhysBlock)> =
            txn.placed.iter().map(|(i, p)| (*i, *p)).collect();
        order.sort_unstable_by_key(|(id, _)| (id.level, id.index));
        let mut writes = Vec::with_capacity(order.len());
        let mut root = Pointer::NULL;
        // Level by level: a node can only be sealed once its children's tags are in it;
        // within a level the blocks are independent and sealed in parallel.
        for level in order.chunk_by(|a, b| a.0.level == b.0.level) {
            let mut jobs: Vec<(NodeId, PhysBlock, Generation, Box<Block>)> = level
                .iter()
                .map(|&(id, phys)| {
                    let plain = match (id.level, inner.dirty.get(&id.index)) {
                        (0, Some(Pending::Data(data))) if !self.geometry.is_map_leaf(id) => {
                            data.clone()
                        }
                        _ => txn
                            .work
                            .get(&id)
                            .expect("placed blocks are adopted")
                            .clone(),
                    };
                    let generation = Generation(inner.next_generation);
                    inner.next_generation += 1;
                    (id, phys, generation, plain)
                })
                .collect();
            let tags = self.seal_parallel(&mut jobs);
            for ((id, phys, generation, sealed), tag) in jobs.into_iter().zip(tags) {
                let ptr = Pointer {
                    phys,
                    generation,
                    tag,
                };
                if id.level == self.geometry.height {
                    root = ptr;
                } else {
                    let parent = txn.work.get_mut(&id.parent()).expect("parents are adopted");
                    ptr.write_entry(parent, id.slot());
                }
                writes.push((phys.0, sealed));
            }
        }
        writes.sort_unstable_by_key(|(phys, _)| *phys);
        (root, writes)
    }

    /// Seals every job's block in place, on as many cores as are worth it.
    fn seal_parallel(&self, jobs: &mut [(NodeId, PhysBlock, Generation, Box<Block>)]) -> Vec<Tag> {
        // Small commits (an fsync of a few blocks) stay on this thread: spawning, and even
        // asking how many cores there are, costs more than sealing them.
        let threads = self
            .seal_threads
            .min(jobs.len() / MIN_BLOCKS_PER_THREAD)
            .max(1);
        if threads == 1 {
            return jobs
                .iter_mut()
                .map(|(_, phys, generation, block)| self.codec.seal(*phys, *generation, block))
                .collect();
        }
        let per_thread = jobs.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = jobs
                .chunks_mut(per_thread)
                .map(|chunk| {
                    scope.spawn(move || {
                        chunk
                            .iter_mut()
                            .map(|(_, phys, generation, block)| {
                                self.codec.seal(*phys, *generation, block)
                            })
                            .collect::<Vec<Tag>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("sealing never panics"))
                .collect()
        })
    }

    fn write_blocks(&self, writes: &[(u64, Box<Block>)]) -> Result<()> {
        let mut run: Vec<u8> = Vec::with_capacity(MAX_WRITE_BLOCKS * BLOCK_SIZE);
        let mut run_start = 0u64;
        let flush = |run: &mut Vec<u8>, start: u64| -> Result<()> {
            if !run.is_empty() {
                let offset = PhysBlock(start).byte_offset();
                self.dev.write_at(run, offset).map_err(|e| {
                    Error::io(format!("writing {} at offset {offset}", self.dev.name()), e)
                })?;
                run.clear();
            }
            Ok(())
        };
        for (phys, block) in writes {
            let contiguous = run_start + (run.len() / BLOCK_SIZE) as u64 == *phys;
            if !contiguous || run.len() >= MAX_WRITE_BLOCKS * BLOCK_SIZE {
                flush(&mut run, run_start)?;
                run_start = *phys;
            }
            run.extend_from_slice(&block[..]);
        }
        flush(&mut run, run_start)?;
        self.dev
            .sync()
            .map_err(|e| Error::io(format!("syncing {}", self.dev.name()), e))
    }

    /// Writes the next superblock: a new tree (`update`) or, with `None`, only a higher
    /// generation mark (`reserve` more generations are about to be used).
    pub(super) fn write_superblock(
        &self,
        inner: &mut Inner,
        update: Option<(Pointer, u64, u64)>,
        reserve: u64,
    ) -> Result<()> {
        let mut sb = inner.sb.clone();
        sb.sequence += 1;
        if let Some((root, allocated, cursor)) = update {
            sb.root = root;
            sb.allocated = allocated;
            sb.alloc_cursor = cursor;
        }
        sb.generation_hwm = Generation(inner.next_generation + reserve + GENERATION_STEP);
        sb.commit_time = now();
        let bytes = sb.encode(self.codec.keys());
        let result = self
            .dev
            .write_at(&bytes, SUPERBLOCK_OFFSETS[sb.slot()])
            .and_then(|()| self.dev.sync())
            .map_err(|e| Error::io(format!("writing the superblock of {}", self.dev.name()), e));
        match result {
            Ok(()) => {
                inner.sb = sb;
                Ok(())
            }
            Err(e) => {
                inner.failed = true;
                Err(e)
            }
        }
    }
}

pub(crate) fn bit_is_set(map: &Block, bit: usize) -> bool {
    map[bit / 8] & (1 << (bit % 8)) != 0
}

fn set_bit(map: &mut Block, bit: usize) {
    map[bit / 8] |= 1 << (bit % 8);
}

fn clear_bit(map: &mut Block, bit: usize) {
    map[bit / 8] &= !(1 << (bit % 8));
}

/// The first clear bit for a physical block in `[from, limit)` (all within `map`'s range)
/// that is not in `released`.
fn find_free(map: &Block, from: u64, limit: u64, released: &HashSet<u64>) -> Option<u64> {
    let base = from - from % BITS_PER_MAP_BLOCK;
    let mut phys = from;
    while phys < limit {
        let bit = (phys - base) as usize;
        if bit.is_multiple_of(64) && limit - phys >= 64 {
            let word =
                u64::from_le_bytes(map[bit / 8..bit / 8 + 8].try_into().unwrap_or([0xff; 8]));
            if word == u64::MAX {
                phys += 64;
                continue;
            }
        }
        if !bit_is_set(map, bit) && !released.contains(&phys) {
            return Some(phys);
        }
        phys += 1;
    }
    None
}
