//! The authenticated, crash-safe block store.
//!
//! # Design: redirect-on-write with the superblock as the commit point
//!
//! Every block (data, tree node, space map) is sealed with AES-256-XTS and tagged with
//! HMAC-SHA256 ([`crate::crypto::block`]). Its tag lives in the pointer its parent holds, and
//! the root pointer lives in the MAC'd superblock, so the tags form a Merkle tree: a
//! modified, swapped or rolled-back block or tag is detected when read.
//!
//! Nothing the last commit references is ever overwritten. A transaction keeps its dirty
//! blocks in memory; its commit gives every dirty block — and every tree node and
//! space-map block above it — a new, free physical block, writes them all, syncs, then
//! writes the new superblock into the other slot and syncs again. The superblock write
//! (one sector) is the atomic switch: after a crash at any point the volume holds exactly
//! the last commit whose superblock is durable, and no block it references was touched
//! since. Data is written once (no journal), and nothing unverified is ever accepted
//! after a crash (unlike dm-integrity's bitmap mode). Blocks freed by a commit become
//! allocatable only after that commit is durable.
//!
//! Write generations come from a volume-wide counter; the superblock holds a high-water
//! mark above every generation used since that commit, and opening a volume read-write
//! first commits a jump past it, so a generation is never reused.
//!
//! Free space is reserved when a block first becomes dirty, so a write that cannot be
//! committed fails at once with [`Error::NoSpace`], never at commit time.

pub mod cache;
pub(crate) mod commit;
pub mod fsck;
pub mod geometry;
pub mod pointer;
pub mod slots;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::crypto::{BlockCodec, DomainKey, VolumeKeys, WriterKeys};
use crate::device::{Access, Device};
use crate::error::Damaged;
use crate::format::header::{DomainHeader, read_header};
use crate::format::superblock::Superblock;
use crate::types::{BLOCK_SIZE, Block, LogicalBlock, PhysBlock};
use crate::{Error, Result};

use cache::BlockCache;
use geometry::{Geometry, NodeId};
use pointer::Pointer;

pub use slots::{SlotReport, format_volume, now as unix_now};

/// Default size of the block cache.
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// How a store is opened.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub access: Access,
    pub cache_bytes: usize,
    /// Dirty data above this fraction of the cache starts a commit by itself.
    pub dirty_fraction: f32,
    /// Open read-write even though a superblock slot is damaged (disaster recovery: the
    /// damaged slot may have held the newest commit, which is then given up for good).
    pub accept_damaged_superblock: bool,
    /// Commit by itself when dirty data passes the limit or space runs short. A
    /// filesystem on top turns this off and commits between its operations, so that no
    /// operation is ever split across two commits.
    pub auto_commit: bool,
    /// The domain's writer key (agent mode): superblocks must carry its signature, and a
    /// read-write open needs its private half. `None` in key-file mode.
    pub writer: Option<Arc<WriterKeys>>,
    /// Disaster recovery from an older copy (agent mode, `--accept-rollback`): a
    /// read-write open continues numbering after this (sequence, generation) — the
    /// anchor the TTP holds — so no commit number or block generation is used twice and
    /// the next checkpoint moves forward.
    pub continue_after: Option<(u64, u64)>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            access: Access::ReadWrite,
            cache_bytes: DEFAULT_CACHE_BYTES,
            dirty_fraction: 0.5,
            accept_damaged_superblock: false,
            auto_commit: true,
            writer: None,
            continue_after: None,
        }
    }
}

impl StoreOptions {
    /// Read-only, everything else as default (fsck, inspection, read-only mounts).
    pub fn read_only() -> Self {
        Self {
            access: Access::ReadOnly,
            ..Self::default()
        }
    }
}

/// Space accounting, in blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpaceStats {
    /// Blocks the filesystem can address.
    pub logical_blocks: u64,
    /// Physical blocks of the block area.
    pub usable_blocks: u64,
    /// Physical blocks the last commit references (data, tree, space map).
    pub allocated_blocks: u64,
    /// Blocks a new write may still take.
    pub available_blocks: u64,
    /// Blocks not in use: `available_blocks` plus the reserve only rewrites of existing
    /// blocks may take.
    pub free_blocks: u64,
    /// Dirty data blocks waiting for the next commit.
    pub dirty_blocks: u64,
}

/// What a commit did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitInfo {
    pub sequence: u64,
    pub blocks_written: u64,
}

/// A commit between [`BlockStore::begin_commit`] and its completion.
pub struct CommitTicket<'a> {
    store: &'a BlockStore,
    _serial: MutexGuard<'a, ()>,
    prepared: Option<commit::Prepared>,
}

impl CommitTicket<'_> {
    /// Takes the snapshot: everything written so far belongs to this commit.
    pub fn prepare(&mut self) -> Result<()> {
        let mut inner = self.store.lock();
        self.prepared = self.store.prepare(&mut inner)?;
        Ok(())
    }

    /// Writes the snapshot and makes it current; durable when this returns.
    pub fn complete(self) -> Result<CommitInfo> {
        let Some(prepared) = self.prepared else {
            return Ok(CommitInfo {
                sequence: self.store.lock().sb.sequence,
                blocks_written: 0,
            });
        };
        let written = self.store.write_prepared(&prepared);
        let mut inner = self.store.lock();
        self.store.finish(&mut inner, prepared, written)
    }
}

/// What a block becoming dirty asks of the free space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Claim {
    NewBlock,
    Rewrite,
    Discard,
}

enum Pending {
    Data(Box<Block>),
    Discard,
}

struct Inner {
    sb: Superblock,
    next_generation: u64,
    cache: BlockCache,
    /// Data leaves changed since the last commit.
    dirty: HashMap<u64, Pending>,
    /// Data leaves of the commit being written (readable until it is done).
    committing: HashMap<u64, Pending>,
    /// Blocks the commit being written allocates (not in `sb.allocated` yet).
    in_flight: u64,
    /// Tree nodes the next commit rewrites (the ancestors of `dirty`).
    pending_nodes: HashSet<NodeId>,
    /// Physical blocks promised to the next commit.
    reserved: u64,
    dirty_limit: usize,
    auto_commit: bool,
    failed: bool,
}

/// An open domain volume's block store.
pub struct BlockStore {
    dev: Arc<dyn Device>,
    codec: BlockCodec,
    header: DomainHeader,
    geometry: Geometry,
    access: Access,
    /// Blocks only rewrites may take (see [`BlockStore::available`]).
    rewrite_reserve: u64,
    /// Threads that seal a large commit (cores, asked once: the question is costly).
    seal_threads: usize,
    /// Held for a whole commit, so commits happen one at a time. Lock order: `serial`,
    /// then `inner` (never wait for `serial` while holding `inner`).
    serial: Mutex<()>,
    inner: Mutex<Inner>,
}

impl BlockStore {
    /// Opens a formatted volume. Read-write opens commit a generation jump first (crash
    /// recovery needs nothing else: the last durable superblock is the state).
    pub fn open(dev: Arc<dyn Device>, key: &DomainKey, options: StoreOptions) -> Result<Self> {
        let header = read_header(dev.as_ref())?.header;
        let geometry = Geometry::for_container(header.container_size)?;
        let keys = VolumeKeys::derive(key, &header.volume_id).with_writer(options.writer.clone());
        if options.access == Access::ReadWrite {
            slots::check_can_write(&header, &keys)?;
        }
        let report = slots::read_slots(dev.as_ref(), &keys, &header)?;
        let sb = report.current()?.clone();
        slots::check_against_header(&sb, &header, &geometry)?;
        let problems = report.problems();
        for problem in &problems {
            tracing::warn!("{}: {problem}", dev.name());
        }
        if !problems.is_empty()
            && options.access == Access::ReadWrite
            && !options.accept_damaged_superblock
        {
            // Writing now would overwrite the evidence (and perhaps the newest commit).
            return Err(Error::DamagedSuperblock(problems.join("; ")));
        }
        let codec = BlockCodec::new(keys, header.volume_id);
        let dirty_limit = ((options.cache_bytes as f64) * f64::from(options.dirty_fraction))
            .max((64 * BLOCK_SIZE) as f64) as usize;
        // Enough for one full transaction of rewrites (dirty limit plus the nodes above),
        // but never more than a sixteenth of a small volume.
        let dirty_blocks = (dirty_limit / BLOCK_SIZE) as u64;
        let rewrite_reserve = (dirty_blocks + dirty_blocks / 8 + u64::from(geometry.height))
            .min(geometry.usable_blocks() / 16);
        let store = Self {
            dev,
            rewrite_reserve,
            serial: Mutex::new(()),
            seal_threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(commit::MAX_SEAL_THREADS),
            codec,
            header,
            geometry,
            access: options.access,
            inner: Mutex::new(Inner {
                next_generation: sb.generation_hwm.0,
                sb,
                cache: BlockCache::new(options.cache_bytes),
                dirty: HashMap::new(),
                committing: HashMap::new(),
                in_flight: 0,
                pending_nodes: HashSet::new(),
                reserved: 0,
                dirty_limit,
                auto_commit: options.auto_commit,
                failed: false,
            }),
        };
        if options.access == Access::ReadWrite {
            let mut inner = store.lock();
            if let Some((sequence, generation)) = options.continue_after {
                inner.sb.sequence = inner.sb.sequence.max(sequence);
                inner.next_generation = inner.next_generation.max(generation);
            }
            store.write_superblock(&mut inner, None, 0)?;
            if !problems.is_empty() {
                // Recovery: rewrite the other slot too, so both verify again.
                store.write_superblock(&mut inner, None, 0)?;
            }
        }
        Ok(store)
    }

    /// The header as it was read at open.
    pub fn header(&self) -> &DomainHeader {
        &self.header
    }

    /// The header as it is on the device now: `domfs grant` and `revoke` rewrite the
    /// access list of a mounted volume, and the TTP answers only for the newest list.
    pub fn current_header(&self) -> Result<DomainHeader> {
        Ok(read_header(self.dev.as_ref())?.header)
    }

    /// The key that chains the audit log's entries (an HKDF subkey of the domain key).
    pub fn audit_key(&self) -> &crate::crypto::MacKey {
        &self.codec.keys().audit_chain
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    pub fn logical_blocks(&self) -> u64 {
        self.geometry.logical_blocks
    }

    /// The last committed superblock.
    pub fn superblock(&self) -> Superblock {
        self.lock().sb.clone()
    }

    pub fn read(&self, block: LogicalBlock, out: &mut Block) -> Result<()> {
        self.check_range(block)?;
        let mut inner = self.lock();
        let pending = inner
            .dirty
            .get(&block.0)
            .or_else(|| inner.committing.get(&block.0));
        match pending {
            Some(Pending::Data(data)) => {
                out.copy_from_slice(&data[..]);
                return Ok(());
            }
            Some(Pending::Discard) => {
                out.fill(0);
                return Ok(());
            }
            None => {}
        }
        self.with_block(&mut inner, NodeId::leaf(block.0), |content| {
            out.copy_from_slice(content)
        })
    }

    pub fn write(&self, block: LogicalBlock, data: &Block) -> Result<()> {
        self.check_range(block)?;
        self.check_writable()?;
        let mut inner = self.lock();
        if inner.failed {
            return Err(Error::Failed);
        }
        if let Some(Pending::Data(existing)) = inner.dirty.get_mut(&block.0) {
            existing.copy_from_slice(data);
            return Ok(());
        }
        let kind = if self
            .pointer_of(&mut inner, NodeId::leaf(block.0))?
            .is_null()
        {
            Claim::NewBlock
        } else {
            Claim::Rewrite
        };
        self.reserve_for(&mut inner, block.0, kind)?;
        inner.cache.remove(&NodeId::leaf(block.0));
        inner.dirty.insert(block.0, Pending::Data(Box::new(*data)));
        if inner.auto_commit && inner.dirty.len() * BLOCK_SIZE > inner.dirty_limit {
            self.commit_locked(&mut inner)?;
        }
        Ok(())
    }

    /// Forgets a block: it reads as zeros and its space is freed at the next commit.
    pub fn discard(&self, block: LogicalBlock) -> Result<()> {
        self.check_range(block)?;
        self.check_writable()?;
        let mut inner = self.lock();
        if inner.failed {
            return Err(Error::Failed);
        }
        match inner.dirty.get(&block.0) {
            Some(Pending::Discard) => return Ok(()),
            Some(Pending::Data(_)) => {
                inner.dirty.insert(block.0, Pending::Discard);
                return Ok(());
            }
            None => {}
        }
        if self
            .pointer_of(&mut inner, NodeId::leaf(block.0))?
            .is_null()
        {
            return Ok(());
        }
        self.reserve_for(&mut inner, block.0, Claim::Discard)?;
        inner.cache.remove(&NodeId::leaf(block.0));
        inner.dirty.insert(block.0, Pending::Discard);
        Ok(())
    }

    /// Makes every write so far durable. Returns once the new superblock is on disk.
    pub fn commit(&self) -> Result<CommitInfo> {
        let mut ticket = self.begin_commit()?;
        ticket.prepare()?;
        ticket.complete()
    }

    /// A commit in two steps, for callers that must take the snapshot at a moment of
    /// their choosing (between their own operations, under their own lock) but write it
    /// without holding anything: `prepare`, release your lock, `complete`. Waits for a
    /// commit in flight first.
    pub fn begin_commit(&self) -> Result<CommitTicket<'_>> {
        self.check_writable()?;
        let serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        Ok(CommitTicket {
            store: self,
            _serial: serial,
            prepared: None,
        })
    }

    /// Where the last commit stored a logical block (`None`: never written, reads as
    /// zeros). For diagnostics and tests.
    pub fn locate(&self, block: LogicalBlock) -> Result<Option<PhysBlock>> {
        self.check_range(block)?;
        let mut inner = self.lock();
        let ptr = self.pointer_of(&mut inner, NodeId::leaf(block.0))?;
        Ok((!ptr.is_null()).then_some(ptr.phys))
    }

    /// Whether dirty data has passed the limit (for callers that commit themselves).
    pub fn wants_commit(&self) -> bool {
        let inner = self.lock();
        inner.dirty.len() * BLOCK_SIZE > inner.dirty_limit
    }

    /// Makes sure `blocks` new blocks (each with its path of tree nodes) can be written,
    /// committing first if that frees enough; [`Error::NoSpace`] otherwise. Callers that
    /// commit themselves call this between operations, so that an operation never runs
    /// out of space half-way.
    pub fn ensure_available(&self, blocks: u64) -> Result<()> {
        if self.has_room_for(blocks) {
            return Ok(());
        }
        if self.access == Access::ReadWrite {
            self.commit()?;
        }
        if self.has_room_for(blocks) {
            Ok(())
        } else {
            Err(Error::NoSpace)
        }
    }

    /// Whether `blocks` new blocks (each with its path of tree nodes) fit now.
    pub fn has_room_for(&self, blocks: u64) -> bool {
        let need = blocks.saturating_mul(1 + u64::from(self.geometry.height));
        let inner = self.lock();
        self.available(&inner, Claim::NewBlock) >= need
    }

    pub fn space(&self) -> SpaceStats {
        let inner = self.lock();
        SpaceStats {
            logical_blocks: self.geometry.logical_blocks,
            usable_blocks: self.geometry.usable_blocks(),
            allocated_blocks: inner.sb.allocated,
            available_blocks: self.available(&inner, Claim::NewBlock),
            free_blocks: self.available(&inner, Claim::Rewrite),
            dirty_blocks: inner.dirty.len() as u64,
        }
    }

    /// Drops every cached plaintext block (dirty data stays until its commit).
    pub fn drop_caches(&self) {
        self.lock().cache.clear();
    }

    /// Commits what is dirty and closes the store.
    pub fn close(self) -> Result<()> {
        if self.access == Access::ReadWrite {
            self.commit()?;
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves no half-applied on-disk state (disk changes
        // only through whole commits), so the data behind a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_range(&self, block: LogicalBlock) -> Result<()> {
        if block.0 >= self.geometry.logical_blocks {
            return Err(Error::OutOfRange(block));
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        match self.access {
            Access::ReadWrite => Ok(()),
            Access::ReadOnly => Err(Error::ReadOnly),
        }
    }

    /// Blocks a claim may still take. New blocks leave the rewrite reserve alone, so that
    /// a database can always overwrite the pages it already has on a full volume.
    fn available(&self, inner: &Inner, claim: Claim) -> u64 {
        let free = self
            .geometry
            .usable_blocks()
            .saturating_sub(inner.sb.allocated)
            .saturating_sub(inner.reserved)
            .saturating_sub(inner.in_flight)
            .saturating_sub(self.geometry.map_reserve());
        match claim {
            Claim::NewBlock => free.saturating_sub(self.rewrite_reserve),
            Claim::Rewrite | Claim::Discard => free,
        }
    }

    /// Reserves space for `leaf` becoming dirty: a block for itself (unless discarded)
    /// plus one for each tree node above it that the next commit does not rewrite yet.
    /// When space is short, a commit (which turns the last commit's garbage into free
    /// space) is tried first.
    fn reserve_for(&self, inner: &mut Inner, leaf: u64, claim: Claim) -> Result<()> {
        let own = match claim {
            Claim::NewBlock | Claim::Rewrite => 1,
            Claim::Discard => 0,
        };
        let mut new_nodes = Vec::new();
        let mut id = NodeId::leaf(leaf);
        while id.level < self.geometry.height {
            id = id.parent();
            if inner.pending_nodes.contains(&id) {
                break;
            }
            new_nodes.push(id);
        }
        let need = own + new_nodes.len() as u64;
        if self.available(inner, claim) < need {
            if inner.dirty.is_empty() || !inner.auto_commit {
                return Err(Error::NoSpace);
            }
            self.commit_locked(inner)?;
            return self.reserve_for(inner, leaf, claim);
        }
        inner.reserved += need;
        inner.pending_nodes.extend(new_nodes);
        Ok(())
    }

    /// The committed pointer to `id`.
    fn pointer_of(&self, inner: &mut Inner, id: NodeId) -> Result<Pointer> {
        if id.level == self.geometry.height {
            return Ok(inner.sb.root);
        }
        let slot = id.slot();
        self.with_block(inner, id.parent(), |parent| {
            Pointer::read_entry(parent, slot)
        })
    }

    /// A copy of the committed, verified plaintext of `id`.
    fn load(&self, inner: &mut Inner, id: NodeId) -> Result<Box<Block>> {
        self.with_block(inner, id, |block| Box::new(*block))
    }

    /// Runs `f` on the committed, verified plaintext of `id`, through the cache (no copy
    /// when cached: a read walks the whole path from the root).
    fn with_block<R>(
        &self,
        inner: &mut Inner,
        id: NodeId,
        f: impl FnOnce(&Block) -> R,
    ) -> Result<R> {
        if let Some(block) = inner.cache.get(&id) {
            return Ok(f(block));
        }
        let ptr = self.pointer_of(inner, id)?;
        let block = if ptr.is_null() {
            Box::new([0u8; BLOCK_SIZE])
        } else {
            self.read_sealed(id, &ptr)?
        };
        let result = f(&block);
        inner.cache.insert(id, block);
        Ok(result)
    }

    /// Reads and verifies one block straight from the device.
    pub(crate) fn read_sealed(&self, id: NodeId, ptr: &Pointer) -> Result<Box<Block>> {
        let mut block = Box::new([0u8; BLOCK_SIZE]);
        self.dev
            .read_at(&mut block[..], ptr.phys.byte_offset())
            .map_err(|e| Error::io(format!("reading {} of {}", ptr.phys, self.dev.name()), e))?;
        self.codec
            .open(ptr.phys, ptr.generation, &ptr.tag, &mut block)
            .map_err(|_| Error::Integrity(self.damaged(id, ptr.phys)))?;
        Ok(block)
    }

    pub(crate) fn damaged(&self, id: NodeId, phys: PhysBlock) -> Damaged {
        if id.level > 0 {
            Damaged::Node {
                level: id.level,
                index: id.index,
                phys: phys.0,
            }
        } else if self.geometry.is_map_leaf(id) {
            Damaged::Bitmap {
                index: id.index - self.geometry.logical_blocks,
                phys: phys.0,
            }
        } else {
            Damaged::Data {
                logical: id.index,
                phys: phys.0,
            }
        }
    }
}
