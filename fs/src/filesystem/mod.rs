//! The filesystem inside a domain volume (layer 5 of DESIGN.md): inodes, directories,
//! block maps and allocation, all stored in the logical blocks of the [`crate::store`], so
//! names, sizes and the tree are encrypted and authenticated like everything else.
//!
//! Logical block 0 holds the filesystem superblock ([`meta`]), blocks 1 … B the allocation
//! bitmap ([`alloc`]); everything else is allocated: the inode table (a sparse internal
//! file indexed by inode number, [`inode`]), directories ([`dir`]) and file data, each
//! file's blocks found through its block map ([`bmap`]).
//!
//! Every operation runs under one lock and between two commits: the store commits only
//! when the filesystem asks, between operations, so each operation is atomic across a
//! crash. An operation first makes sure the store has room for everything it may write,
//! so it never runs out of space half-way (`ENOSPC` comes before any change).

pub mod alloc;
mod audit_log;
pub mod bmap;
pub mod dir;
pub mod fsck;
pub mod hidden;
pub mod inode;
pub mod meta;
mod ops_data;
mod ops_ns;
mod ops_remove;
mod paths;
mod state;
pub mod xattr;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::store::BlockStore;
use crate::types::{BLOCK_SIZE, Block, LogicalBlock};
use crate::{Error, Result};

use alloc::Allocator;
use inode::{Inode, ROOT_INO, S_IFDIR, Timestamp};
use meta::FsSuper;
use state::State;

pub use audit_log::{AUDIT_LOG_PATH, DrainedAudit, DurableState, FLUSH_BYTES, READ_ONLY_QUEUE};
pub use hidden::{FsOptions, HiddenEvent, HiddenSink, HiddenVersion, PurgeReason};
pub use ops_data::{SetAttr, StatFs, TimeSet};
pub use ops_ns::RenameFlags;

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

impl BlockIo for BlockStore {
    fn read_block(&self, block: u64, out: &mut Block) -> Result<()> {
        self.read(LogicalBlock(block), out)
    }

    fn write_block(&self, block: u64, data: &Block) -> Result<()> {
        self.write(LogicalBlock(block), data)
    }

    fn discard_block(&self, block: u64) -> Result<()> {
        self.discard(LogicalBlock(block))
    }
}

/// Who asks: the requesting process's credentials.
#[derive(Clone, Copy, Debug, Default)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// An inode and its number, as lookups and attribute calls return them.
#[derive(Clone, Debug)]
pub struct Entry {
    pub ino: u64,
    pub inode: Inode,
}

/// Blocks every operation may touch besides its data: block-map levels, bitmap, inode
/// table, directory and superblock blocks.
const OP_SLACK: u64 = 24;

pub struct Filesystem {
    store: Arc<BlockStore>,
    state: Mutex<State>,
    read_only: bool,
    failed: AtomicBool,
    /// The TTP withdrew this host's access: every request is refused (EACCES) and nothing
    /// more is committed.
    revoked: AtomicBool,
    /// Audit entries waiting for the next commit ([`audit_log`]).
    audit: audit_log::AuditQueue,
    /// The names the kernel knows inodes by ([`paths`]).
    names: paths::Names,
    /// The last commit's superblock and audit head, as one pair ([`audit_log`]).
    durable: audit_log::Durable,
    /// Host, clock, retention policy and sink of the hidden versions ([`hidden`]).
    hidden_cfg: hidden::HiddenConfig,
}

impl Filesystem {
    /// Opens the filesystem of an open store, formatting it on the first read-write open
    /// (the creator of a domain never holds its key, so it cannot format it). Unlinked
    /// files that were still open at a crash are freed (or, when they are to be kept,
    /// become hidden versions), and hidden versions older than the volume's keep-for
    /// are freed.
    pub fn open(store: Arc<BlockStore>, read_only: bool) -> Result<Self> {
        Self::open_with(store, read_only, FsOptions::default())
    }

    /// [`Filesystem::open`] with the host name, clock and hidden-version sink given.
    pub fn open_with(store: Arc<BlockStore>, read_only: bool, options: FsOptions) -> Result<Self> {
        let retention = crate::format::retention::Retention::from_header(store.header())?;
        let mut block = Box::new([0u8; BLOCK_SIZE]);
        store.read(LogicalBlock(0), &mut block)?;
        let sb = match FsSuper::decode(&block)? {
            Some(sb) => sb,
            None if read_only => return Err(Error::Unformatted),
            None => format(&store)?,
        };
        let durable = audit_log::Durable::new(store.superblock(), sb.audit_head);
        let fs = Self {
            store,
            state: Mutex::new(State::new(sb)),
            read_only,
            failed: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
            audit: audit_log::AuditQueue::default(),
            names: paths::Names::default(),
            durable,
            hidden_cfg: hidden::HiddenConfig::new(retention, &options),
        };
        {
            let mut st = fs.lock();
            st.hidden = hidden::HiddenIndex::load(&*fs.store, &st.sb.hidden)?;
        }
        if !read_only {
            fs.mutate(0, |st, io| ops_ns::free_orphans(st, io))?;
            fs.sweep_hidden()?;
            fs.sync()?;
        }
        Ok(fs)
    }

    pub fn store(&self) -> &Arc<BlockStore> {
        &self.store
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Access was revoked: from now on every operation fails with EACCES, nothing is
    /// committed, and the decrypted blocks in memory are dropped. The caller unmounts; the
    /// keys are zeroized when the store is dropped.
    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::SeqCst);
        // Wait for a running operation to end, then drop what it may have left cached.
        let _between_operations = self.lock();
        self.store.drop_caches();
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::SeqCst)
    }

    /// Makes everything done so far durable, with the audit entries queued so far. The
    /// snapshot is taken between operations; the writing happens without the filesystem's
    /// lock, so other files stay readable and writable while a sync waits for the disk.
    pub fn sync(&self) -> Result<()> {
        if self.is_revoked() {
            return Err(Error::Revoked);
        }
        if self.read_only {
            return Ok(());
        }
        if self.failed.load(Ordering::SeqCst) {
            return Err(Error::Failed);
        }
        // One sync at a time from here to the record of what became durable.
        let _in_order = self.durable.order();
        let mut ticket = self.store.begin_commit()?;
        let head = {
            let mut st = self.lock();
            self.write_audit(&mut st, &*self.store)?;
            ticket.prepare()?;
            st.sb.audit_head
        };
        ticket.complete()?;
        self.durable.set(self.store.superblock(), head);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a read-only step.
    fn inspect<R>(&self, f: impl FnOnce(&mut State, &dyn BlockIo) -> Result<R>) -> Result<R> {
        if self.is_revoked() {
            return Err(Error::Revoked);
        }
        let mut st = self.lock();
        f(&mut st, &*self.store)
    }

    /// Runs a changing operation: room for `blocks` new blocks first, then the change,
    /// then the bitmap and superblock written back, and a commit if enough is dirty.
    fn mutate<R>(
        &self,
        blocks: u64,
        f: impl FnOnce(&mut State, &dyn BlockIo) -> Result<R>,
    ) -> Result<R> {
        if self.is_revoked() {
            return Err(Error::Revoked);
        }
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        if self.failed.load(Ordering::SeqCst) {
            return Err(Error::Failed);
        }
        let mut committed = false;
        let mut st = loop {
            let st = self.lock();
            // Room for the queued audit entries too: they are written before this commits.
            if self
                .store
                .has_room_for(blocks + OP_SLACK + self.audit.blocks_needed())
            {
                break st;
            }
            // A commit turns the last commit's garbage into free space; it must not run
            // under our lock (lock order: commit, filesystem, store).
            drop(st);
            if committed {
                return Err(Error::NoSpace);
            }
            self.sync()?;
            committed = true;
        };
        let io: &dyn BlockIo = &*self.store;
        self.write_audit_if_large(&mut st, io)?;
        let result = f(&mut st, io).and_then(|r| {
            finish(&mut st, io)?;
            Ok(r)
        });
        match &result {
            Ok(_) => {}
            // Refusals are decided before anything changes.
            Err(Error::Posix(_)) => finish(&mut st, io)?,
            Err(e) => {
                // Half an operation may be in the store's dirty blocks: never commit it.
                tracing::error!("filesystem stopped after a failed operation: {e}");
                self.failed.store(true, Ordering::SeqCst);
                st.alloc.forget();
            }
        }
        drop(st);
        if result.is_ok() && self.store.wants_commit() {
            self.sync()?;
        }
        if result.is_ok() {
            self.maybe_sweep(None);
        }
        result
    }
}

/// Writes back what an operation changed outside the blocks it wrote itself.
fn finish(st: &mut State, io: &dyn BlockIo) -> Result<()> {
    st.alloc.flush(io)?;
    if st.sb.blocks_used != st.alloc.used() {
        st.sb.blocks_used = st.alloc.used();
        st.sb_dirty = true;
    }
    if st.sb_dirty {
        io.write_block(0, &st.sb.encode())?;
        st.sb_dirty = false;
    }
    Ok(())
}

/// Formats an empty filesystem: superblock, bitmap (marking itself), root directory.
fn format(store: &BlockStore) -> Result<FsSuper> {
    let total = store.logical_blocks();
    let bitmap_start = 1;
    let bitmap_blocks = Allocator::bitmap_blocks(total);
    let now = Timestamp::now();
    let root = Inode {
        mode: S_IFDIR | 0o755,
        nlink: 2,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        generation: 1,
        parent: ROOT_INO,
        ..Inode::default()
    };
    let sb = FsSuper {
        next_ino: ROOT_INO + 1,
        inodes_used: 1,
        blocks_used: 0,
        bitmap_start,
        total_blocks: total,
        table: Inode::default(),
        orphans: Inode::default(),
        hidden: Inode::default(),
        hidden_blocks: 0,
        audit: Inode::default(),
        audit_head: Default::default(),
    };
    let mut st = State::new(sb);
    for block in 0..bitmap_start + bitmap_blocks {
        st.alloc.mark_used(store, block)?;
    }
    st.put_inode(store, ROOT_INO, &root)?;
    st.sb_dirty = true;
    finish(&mut st, store)?;
    store.commit()?;
    Ok(st.sb)
}
