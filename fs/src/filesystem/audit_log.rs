//! The audit log's writing side: entries wait in memory and go into the log file inside
//! the commit that makes the data they describe durable.
//!
//! - [`Filesystem::audit`] queues an entry: one short lock, no I/O. On a read-write
//!   volume it first checks that the log has room for everything queued (an entry that
//!   cannot be written later must not be accepted now): without room the caller's request
//!   fails with `ENOSPC` and the entry is not queued. [`Filesystem::audit_done`] queues
//!   the entry of an operation that already happened — its room was checked with the
//!   operation ([`Filesystem::mutate`] counts the queued entries in), so it is never
//!   refused.
//! - [`Filesystem::sync`] writes the queued entries into the log file under the
//!   filesystem's lock, right before it takes the commit's snapshot: a write that is
//!   durable has its audit entries durable too. A queue past [`FLUSH_BYTES`] is also
//!   written at the next change to the filesystem.
//! - Read-only volumes cannot write: their entries stay in a queue of at most
//!   [`READ_ONLY_QUEUE`] entries (the oldest are dropped beyond, and counted) until
//!   [`Filesystem::drain_pending`] takes them (to ship them through the agent to the TTP).
//!
//! If the log's last block does not verify (the container was changed), the log goes on
//! at the next 4 KiB boundary after an `integrity-error` entry about it, chained to the
//! head in the filesystem superblock, which is intact: the damage stays visible to
//! `domfs audit --verify`, and the volume stays usable.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::inode::{Inode, S_IFREG, Timestamp};
use super::state::State;
use super::{BlockIo, Filesystem, finish};
use crate::audit::FileLog;
use crate::audit::chain::{ChainHead, FRAME_OVERHEAD, LogScan, seal_entries};
use crate::audit::record::{AuditOp, AuditRecord};
use crate::error::libc_errno;
use crate::format::superblock::Superblock;
use crate::types::BLOCK_SIZE;
use crate::{Error, Result};

/// Queued entry bytes past which the next change to the filesystem writes them.
pub const FLUSH_BYTES: usize = 1 << 20;
/// Entries a read-only volume keeps until they are drained.
pub const READ_ONLY_QUEUE: usize = 16_384;
const BS: u64 = BLOCK_SIZE as u64;

/// The path recorded for events about the log itself.
pub const AUDIT_LOG_PATH: &str = "(audit log)";

/// Entries waiting for the log (or, read-only, for [`Filesystem::drain_pending`]).
#[derive(Default)]
pub(crate) struct AuditQueue(Mutex<Queue>);

#[derive(Default)]
struct Queue {
    entries: VecDeque<AuditRecord>,
    /// Bytes the entries take in the log.
    bytes: usize,
    oldest: Option<Instant>,
    /// Read-only: entries dropped because the queue was full, since the last drain.
    dropped: u64,
}

impl AuditQueue {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Log blocks the queued entries need (0 when none are queued).
    pub(crate) fn blocks_needed(&self) -> u64 {
        blocks_for(self.lock().bytes)
    }

    fn over_bound(&self) -> bool {
        self.lock().bytes > FLUSH_BYTES
    }
}

/// Blocks `bytes` of new entries may take: data blocks (one more for a partly filled
/// last block, one for a skip past a damaged one), and block-map blocks.
fn blocks_for(bytes: usize) -> u64 {
    if bytes == 0 {
        return 0;
    }
    let data = (bytes as u64).div_ceil(BS) + 2;
    data + data / 512 + 3
}

/// What the last commit made durable: its superblock and the audit head inside it, as
/// one pair (what a checkpoint at the TTP anchors).
#[derive(Clone, Debug)]
pub struct DurableState {
    pub superblock: Superblock,
    pub audit_head: ChainHead,
}

/// [`DurableState`], and the order of syncs that keeps it a pair.
pub(crate) struct Durable {
    order: Mutex<()>,
    state: Mutex<DurableState>,
}

impl Durable {
    pub(crate) fn new(superblock: Superblock, audit_head: ChainHead) -> Self {
        Self {
            order: Mutex::new(()),
            state: Mutex::new(DurableState {
                superblock,
                audit_head,
            }),
        }
    }

    /// Held by a sync from before its commit until [`Durable::set`].
    pub(crate) fn order(&self) -> MutexGuard<'_, ()> {
        self.order.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set(&self, superblock: Superblock, audit_head: ChainHead) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = DurableState {
            superblock,
            audit_head,
        };
    }
}

/// Entries taken out of a read-only volume's queue.
#[derive(Debug, Default)]
pub struct DrainedAudit {
    /// Oldest first; their `seq` is 0 (they are not in any chain).
    pub entries: Vec<AuditRecord>,
    /// Entries lost since the last drain because the queue was full.
    pub dropped: u64,
}

impl Filesystem {
    /// Queues the entry of a request about to be answered (an open): no I/O. On a
    /// read-write volume without room left for the log, fails with [`Error::NoSpace`]
    /// and queues nothing: the caller must fail its request (an entry is never dropped).
    pub fn audit(&self, record: AuditRecord) -> Result<()> {
        if self.is_revoked() {
            return Err(Error::Revoked);
        }
        if self.read_only {
            self.queue_read_only(record);
            return Ok(());
        }
        if self.failed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Failed);
        }
        let size = record.encoded_len() + FRAME_OVERHEAD;
        let mut committed = false;
        loop {
            let need = blocks_for(self.audit.lock().bytes + size);
            if self.store.has_room_for(need) {
                break;
            }
            if committed {
                return Err(Error::NoSpace);
            }
            // A commit frees what the last one dropped (and writes what is queued).
            self.sync()?;
            committed = true;
        }
        let over = self.push(record, size);
        if over {
            // A change with nothing to change: `mutate` writes the queue first.
            self.mutate(0, |_, _| Ok(()))?;
        }
        Ok(())
    }

    /// Queues the entry of an operation that has happened (its room was checked with the
    /// operation). Never refused; on a revoked or stopped volume it is dropped with
    /// everything else that was not committed.
    pub fn audit_done(&self, record: AuditRecord) {
        // A stopped filesystem commits nothing more (the error is in the daemon's log).
        if self.is_revoked() || self.failed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if self.read_only {
            self.queue_read_only(record);
            return;
        }
        let size = record.encoded_len() + FRAME_OVERHEAD;
        self.push(record, size);
    }

    /// Entries waiting (for the log, or read-only for [`Filesystem::drain_pending`]).
    pub fn audit_pending(&self) -> usize {
        self.audit.lock().entries.len()
    }

    /// How long the oldest waiting entry has waited.
    pub fn audit_pending_age(&self) -> Option<Duration> {
        self.audit.lock().oldest.map(|t| t.elapsed())
    }

    /// Read-only volumes: takes every queued entry out, oldest first. A read-write volume
    /// writes its entries into the log and returns none here.
    pub fn drain_pending(&self) -> DrainedAudit {
        if !self.read_only {
            return DrainedAudit::default();
        }
        let mut q = self.audit.lock();
        let entries = std::mem::take(&mut q.entries).into();
        let dropped = std::mem::take(&mut q.dropped);
        q.bytes = 0;
        q.oldest = None;
        DrainedAudit { entries, dropped }
    }

    /// The end of the audit chain as written so far (committed at the next sync).
    pub fn audit_head(&self) -> ChainHead {
        self.lock().sb.audit_head
    }

    /// The last commit's superblock and the audit head it holds, as one pair: what a
    /// checkpoint must anchor (the volume's commit and its log agree). Unlike
    /// [`Filesystem::audit_head`] and the store's superblock read one after the other,
    /// no commit can fall between the two.
    pub fn durable_state(&self) -> DurableState {
        self.durable
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The whole log as written so far, verified from its first entry to the head (for
    /// a live mount's `domfs audit`; [`Filesystem::sync`] first to include what is
    /// queued). The log only grows, so it is read after the filesystem's lock is let go:
    /// other requests go on meanwhile.
    pub fn read_audit_log(&self) -> Result<LogScan> {
        let (head, inode) = self.inspect(|st, _| Ok((st.sb.audit_head, st.sb.audit.clone())))?;
        let key = self.store.audit_key();
        let volume = self.store.header().volume_id;
        let io: &dyn BlockIo = &*self.store;
        Ok(crate::audit::scan(
            key,
            &volume,
            &head,
            &mut FileLog { io, inode: &inode },
        ))
    }

    /// Queues `record`; whether the queue has passed [`FLUSH_BYTES`].
    fn push(&self, record: AuditRecord, size: usize) -> bool {
        let mut q = self.audit.lock();
        q.bytes += size;
        q.oldest.get_or_insert_with(Instant::now);
        q.entries.push_back(record);
        q.bytes > FLUSH_BYTES
    }

    fn queue_read_only(&self, record: AuditRecord) {
        let mut q = self.audit.lock();
        if q.entries.len() >= READ_ONLY_QUEUE {
            q.entries.pop_front();
            q.dropped += 1;
            if q.dropped.is_power_of_two() {
                tracing::warn!(
                    "read-only mount: {} audit entries dropped since the last drain (queue full)",
                    q.dropped
                );
            }
        }
        q.oldest.get_or_insert_with(Instant::now);
        q.entries.push_back(record);
    }

    /// Under the filesystem's lock, between operations: writes the queued entries into
    /// the log (and the superblock with the new head). Nothing is written when there is
    /// no room ([`Error::NoSpace`], the entries stay queued); any other failure stops the
    /// filesystem, as a failed operation does.
    pub(super) fn write_audit(&self, st: &mut State, io: &dyn BlockIo) -> Result<()> {
        let (records, bytes) = {
            let mut q = self.audit.lock();
            if q.entries.is_empty() {
                return Ok(());
            }
            let bytes = std::mem::take(&mut q.bytes);
            q.oldest = None;
            (std::mem::take(&mut q.entries), bytes)
        };
        if !self.store.has_room_for(blocks_for(bytes)) {
            let mut q = self.audit.lock();
            let newer = std::mem::replace(&mut q.entries, records);
            q.entries.extend(newer);
            q.bytes += bytes;
            q.oldest.get_or_insert_with(Instant::now);
            return Err(Error::NoSpace);
        }
        let result = append(self, st, io, records).and_then(|()| finish(st, io));
        if let Err(e) = &result {
            tracing::error!("filesystem stopped after failing to write the audit log: {e}");
            self.failed.store(true, std::sync::atomic::Ordering::SeqCst);
            st.alloc.forget();
        }
        result
    }

    /// Writes the queue if it has grown past [`FLUSH_BYTES`] (from `mutate`).
    pub(super) fn write_audit_if_large(&self, st: &mut State, io: &dyn BlockIo) -> Result<()> {
        if self.audit.over_bound() {
            self.write_audit(st, io)
        } else {
            Ok(())
        }
    }
}

/// Appends `records` to the log file and moves the head.
fn append(
    fs: &Filesystem,
    st: &mut State,
    io: &dyn BlockIo,
    records: VecDeque<AuditRecord>,
) -> Result<()> {
    let key = fs.store.audit_key();
    let volume = fs.store.header().volume_id;
    let now = Timestamp::now();
    let mut head = st.sb.audit_head;
    let mut inode = st.sb.audit.clone();
    if inode.is_free() {
        inode = Inode {
            mode: S_IFREG | 0o600,
            nlink: 1,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            generation: 1,
            ..Inode::default()
        };
    }
    let mut first = Vec::new();
    if !head.len.is_multiple_of(BS) {
        // The new entries go on in the last block: it must still be what was written.
        let index = head.len / BS;
        let mut block = Box::new([0u8; BLOCK_SIZE]);
        let read = inode.map.get(io, index).and_then(|b| match b {
            Some(b) => io.read_block(b, &mut block),
            None => Ok(()),
        });
        match read {
            Ok(()) => {}
            Err(Error::Integrity(damaged)) => {
                let skip_to = (index + 1) * BS;
                tracing::error!(
                    "the audit log's last block ({damaged}) does not verify; the log goes on at byte {skip_to}"
                );
                let like = records.front().cloned().unwrap_or_default();
                first.push(AuditRecord {
                    time_us: AuditRecord::now_us(),
                    uid: nix::unistd::geteuid().as_raw(),
                    gid: nix::unistd::getegid().as_raw(),
                    pid: std::process::id(),
                    process: "domfs".into(),
                    host: like.host,
                    path: AUDIT_LOG_PATH.into(),
                    op: AuditOp::IntegrityError,
                    result: libc_errno::EIO,
                    detail: format!(
                        "log bytes {}..{skip_to} ({damaged}) do not verify: the entries stored there cannot be read",
                        index * BS
                    ),
                    ..AuditRecord::default()
                });
                head.len = skip_to;
            }
            Err(e) => return Err(e),
        }
    }
    let offset = head.len;
    let mut bytes = Vec::new();
    seal_entries(
        key,
        &volume,
        &mut head,
        first.into_iter().chain(records),
        &mut bytes,
    );
    super::ops_data::write_blocks(st, io, &mut inode, offset, &bytes)?;
    inode.size = head.len;
    inode.mtime = now;
    inode.ctime = now;
    st.sb.audit = inode;
    st.sb.audit_head = head;
    st.sb_dirty = true;
    Ok(())
}
