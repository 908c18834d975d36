//! Hidden, not deleted (layer 6 of DESIGN.md): unlink, rmdir, rename over an existing
//! file and truncation keep the old content as a *hidden version*, with who and when.
//!
//! - **Unlink, rmdir, rename-over** of a file's last name keep the inode itself: it gets
//!   the hidden flag (`FLAG_HIDDEN`, link count 0) instead of being freed, so keeping
//!   costs no copy and no new data block. A file still open at that moment stays on the
//!   orphan list as before and becomes hidden at its last close (its content is what it
//!   was then); its record is written at once, in state *open*.
//! - **Truncation** (setattr to a smaller size, `O_TRUNC`) moves the cut data blocks into
//!   a new hidden inode at the same offsets ([`BlockMap::move_range`]: no data copy; the
//!   one block the cut falls inside is copied, the file keeps the copy). The version's
//!   size is the old size; what lay before the block of the cut point reads as zeros in it.
//!
//! A hidden inode is never answered by lookup, readdir or getattr (inode numbers are never
//! reused, so nothing can reach it by number either); only this module reads it.
//!
//! ## The table
//!
//! Records are appended to an internal file whose inode is in the filesystem superblock
//! (offset 576; a zero inode is an empty table), and the superblock counts the blocks
//! hidden inodes hold (offset 56; `statfs` reports the total less those). A record never
//! crosses a 4 KiB block; the rest of a block after its last record is zeros (a record
//! length of 0 ends the block). Integers are little-endian.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | record length L (a multiple of 8, 80 ≤ L ≤ 4096) |
//! | 2 | 1 | state: 1 open (kept at its last close), 2 kept, 3 restored, 4 purged |
//! | 3 | 1 | event: 1 unlink, 2 rmdir, 3 rename-over, 4 truncate |
//! | 4 | 4 | mode of the file |
//! | 8 | 8 | version id (volume-wide, increasing) |
//! | 16 | 8 | inode of the hidden content |
//! | 24 | 12 | when (i64 seconds, u32 nanoseconds) |
//! | 36 | 4 | uid of the process |
//! | 40 | 4 | gid |
//! | 44 | 4 | pid |
//! | 48 | 8 | size in bytes |
//! | 56 | 8 | blocks held |
//! | 64 | 8 | truncate: the size the file was cut to; otherwise 0 |
//! | 72 | 2 | path length p (≤ 3584) |
//! | 74 | 1 | process name length c (≤ 16) |
//! | 75 | 1 | host length h (≤ 255) |
//! | 76 | 4 | zero |
//! | 80 | p + c + h | path (from the root, no leading `/`), process name (`/proc/PID/comm`), host |
//!
//! Restoring or purging a version rewrites its state in place; a table block whose
//! records are all restored or purged is given back (except the last block, so the
//! highest version id is always on disk). The in-memory index (by path, by inode) is
//! built at open. A path longer than 3584 bytes is kept as `…/` and its end.
//!
//! Hiding is one operation like any other (one commit), so crash safety is the
//! filesystem's: after a crash a version is either fully hidden or the file is intact.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::alloc::AllocIo;
use super::bmap::BlockMap;
use super::dir::FileKind;
use super::inode::{FLAG_HIDDEN, Inode, ROOT_INO, Timestamp};
use super::state::{State, free_blocks};
use super::{BlockIo, Caller, Filesystem};
use crate::audit::{AccessMode, AuditOp, AuditRecord};
use crate::error::Posix;
use crate::format::retention::Retention;
use crate::types::BLOCK_SIZE;
use crate::{Error, Result};

const BS: u64 = BLOCK_SIZE as u64;
/// The longest path a record keeps.
pub const MAX_PATH: usize = 3584;
const MAX_PROCESS: usize = 16;
const MAX_HOST: usize = 255;
const HEADER_LEN: usize = 80;
/// Blocks appending a record may take (a table block and its block-map path).
pub(crate) const RECORD_ROOM: u64 = 6;
/// Versions freed per operation by the retention sweep.
const SWEEP_BATCH: usize = 256;
/// The retention sweep runs at most this often (seconds) during operations.
const SWEEP_EVERY: i64 = 3600;
/// The deepest path followed when naming a version.
const MAX_DEPTH: usize = 4096;
/// Most names remembered at once.
const MAX_NAMES: usize = 1 << 18;
/// How long a process name is trusted (pids are reused).
const PROCESS_TTL: Duration = Duration::from_secs(1);
/// Process names cached at most.
const MAX_PROCESSES: usize = 4096;

const STATE_OPEN: u8 = 1;
const STATE_KEPT: u8 = 2;
const STATE_RESTORED: u8 = 3;
const STATE_PURGED: u8 = 4;

/// What made a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HiddenEvent {
    Unlink = 1,
    Rmdir = 2,
    RenameOver = 3,
    Truncate = 4,
}

impl HiddenEvent {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => HiddenEvent::Unlink,
            2 => HiddenEvent::Rmdir,
            3 => HiddenEvent::RenameOver,
            4 => HiddenEvent::Truncate,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            HiddenEvent::Unlink => "unlink",
            HiddenEvent::Rmdir => "rmdir",
            HiddenEvent::RenameOver => "rename-over",
            HiddenEvent::Truncate => "truncate",
        }
    }
}

/// One hidden version, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HiddenVersion {
    /// The path at the time, from the volume's root, without a leading `/`.
    pub path: Vec<u8>,
    /// 1 = the most recent hidden version of this path.
    pub version: u32,
    /// Volume-wide, increasing.
    pub id: u64,
    pub ino: u64,
    pub event: HiddenEvent,
    pub time: Timestamp,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// The process name (`/proc/PID/comm`) at the time; empty when unknown.
    pub process: String,
    pub host: String,
    /// `st_mode` of the file (type and permissions).
    pub mode: u32,
    pub size: u64,
    /// 4 KiB blocks the version holds.
    pub blocks: u64,
    /// Truncate: the size the file was cut to (the version holds what lay past it).
    pub cut_at: u64,
    /// The file was still open: its content is kept as of its last close, which has not
    /// happened yet (size and blocks are as of the event until then).
    pub open: bool,
}

impl HiddenVersion {
    pub fn path_text(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }

    pub fn kind(&self) -> Option<FileKind> {
        super::inode::kind_of(self.mode).ok()
    }
}

/// Why a version was freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PurgeReason {
    /// Older than the volume's keep-for.
    Retention,
    /// `domfs hidden purge`, on the domain manager's authority.
    Manager,
}

/// Told about hidden versions as they come and go (the audit trail hooks in here). Calls
/// come after the operation, outside the filesystem's lock. Every method defaults to
/// doing nothing.
pub trait HiddenSink: Send + Sync {
    fn hidden(&self, _version: &HiddenVersion) {}
    fn restored(&self, _version: &HiddenVersion, _to: &[u8]) {}
    fn purged(&self, _version: &HiddenVersion, _why: PurgeReason) {}
}

struct NoSink;
impl HiddenSink for NoSink {}

/// A clock for the records (tests set the time).
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// What [`Filesystem::open_with`] may be told.
#[derive(Clone, Default)]
pub struct FsOptions {
    /// The host named in hidden-version records; `None`: this machine's host name.
    pub host: Option<String>,
    /// The time of records and of the retention sweep; `None`: the system clock.
    pub clock: Option<Clock>,
    /// Told about hidden, restored and purged versions (including those the retention
    /// sweep frees at open).
    pub hidden_sink: Option<Arc<dyn HiddenSink>>,
}

/// The filesystem's hidden-version settings, fixed at open.
pub(crate) struct HiddenConfig {
    pub retention: Retention,
    host: Vec<u8>,
    clock: Option<Clock>,
    sink: RwLock<Arc<dyn HiddenSink>>,
    /// Seconds of the last retention sweep.
    last_sweep: AtomicI64,
}

impl HiddenConfig {
    pub fn new(retention: Retention, options: &FsOptions) -> Self {
        let host = options.host.clone().unwrap_or_else(this_host);
        Self {
            retention,
            host: bounded(host.as_bytes(), MAX_HOST).to_vec(),
            clock: options.clock.clone(),
            sink: RwLock::new(
                options
                    .hidden_sink
                    .clone()
                    .unwrap_or_else(|| Arc::new(NoSink)),
            ),
            last_sweep: AtomicI64::new(i64::MIN),
        }
    }

    fn now(&self) -> Timestamp {
        match &self.clock {
            Some(clock) => clock(),
            None => Timestamp::now(),
        }
    }

    fn sink(&self) -> Arc<dyn HiddenSink> {
        self.sink.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// This machine's host name (empty when it cannot be read).
fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// At most `max` bytes of `bytes`, cut at a UTF-8 boundary when it is text.
fn bounded(bytes: &[u8], max: usize) -> &[u8] {
    if bytes.len() <= max {
        return bytes;
    }
    let mut end = max;
    if let Ok(text) = std::str::from_utf8(bytes) {
        while !text.is_char_boundary(end) {
            end -= 1;
        }
    }
    &bytes[..end]
}

/// The name of the process `pid` belongs to (FUSE gives the calling thread's id; the
/// process's name is its main thread's), empty for pid 0 or when it is gone. One read of
/// `/proc/PID/status` for a process's main thread, and `/proc/TGID/comm` for another.
fn process_name(pid: u32) -> Vec<u8> {
    if pid == 0 {
        return Vec::new();
    }
    let Ok(status) = std::fs::read(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    let mut name: Option<&[u8]> = None;
    let mut tgid = pid;
    for line in status.split(|&b| b == b'\n') {
        if let Some(n) = line.strip_prefix(b"Name:\t") {
            name = Some(n);
        } else if let Some(t) = line.strip_prefix(b"Tgid:") {
            tgid = std::str::from_utf8(t)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(pid);
            break;
        }
    }
    let name = match name {
        // The status file escapes a newline and a backslash in the name.
        Some(n) if tgid == pid && !n.contains(&b'\\') => n.to_vec(),
        _ => match std::fs::read(format!("/proc/{tgid}/comm")) {
            Ok(mut n) => {
                while n.last() == Some(&b'\n') {
                    n.pop();
                }
                n
            }
            Err(_) => return Vec::new(),
        },
    };
    bounded(&name, MAX_PROCESS).to_vec()
}

/// A record as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub state: u8,
    pub event: HiddenEvent,
    pub mode: u32,
    pub id: u64,
    pub ino: u64,
    pub time: Timestamp,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub size: u64,
    pub blocks: u64,
    pub cut_at: u64,
    pub path: Vec<u8>,
    pub process: Vec<u8>,
    pub host: Vec<u8>,
}

impl Record {
    fn len(&self) -> usize {
        (HEADER_LEN + self.path.len() + self.process.len() + self.host.len()).next_multiple_of(8)
    }

    fn is_live(&self) -> bool {
        self.state == STATE_OPEN || self.state == STATE_KEPT
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.len()];
        b[0..2].copy_from_slice(&(self.len() as u16).to_le_bytes());
        b[2] = self.state;
        b[3] = self.event as u8;
        b[4..8].copy_from_slice(&self.mode.to_le_bytes());
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..24].copy_from_slice(&self.ino.to_le_bytes());
        b[24..32].copy_from_slice(&self.time.secs.to_le_bytes());
        b[32..36].copy_from_slice(&self.time.nanos.to_le_bytes());
        b[36..40].copy_from_slice(&self.uid.to_le_bytes());
        b[40..44].copy_from_slice(&self.gid.to_le_bytes());
        b[44..48].copy_from_slice(&self.pid.to_le_bytes());
        b[48..56].copy_from_slice(&self.size.to_le_bytes());
        b[56..64].copy_from_slice(&self.blocks.to_le_bytes());
        b[64..72].copy_from_slice(&self.cut_at.to_le_bytes());
        b[72..74].copy_from_slice(&(self.path.len() as u16).to_le_bytes());
        b[74] = self.process.len() as u8;
        b[75] = self.host.len() as u8;
        let mut at = HEADER_LEN;
        for part in [&self.path, &self.process, &self.host] {
            b[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        b
    }

    /// The record at the start of `b` (the rest of a table block) and its length; `None`
    /// at the end of the block's records.
    fn decode(b: &[u8], offset: u64) -> Result<Option<(Self, usize)>> {
        let bad = |why: &str| {
            Error::CorruptFilesystem(format!("hidden-version table, byte {offset}: {why}"))
        };
        let u16_at = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(x)
        };
        if b.len() < 2 {
            return Ok(None);
        }
        let len = usize::from(u16_at(0));
        if len == 0 {
            return Ok(None);
        }
        if len < HEADER_LEN || !len.is_multiple_of(8) || len > b.len() {
            return Err(bad(&format!("record length {len}")));
        }
        let (p, c, h) = (
            usize::from(u16_at(72)),
            usize::from(b[74]),
            usize::from(b[75]),
        );
        if p > MAX_PATH || c > MAX_PROCESS || HEADER_LEN + p + c + h > len {
            return Err(bad("field lengths"));
        }
        let state = b[2];
        if !(STATE_OPEN..=STATE_PURGED).contains(&state) {
            return Err(bad(&format!("state {state}")));
        }
        let event = HiddenEvent::from_u8(b[3]).ok_or_else(|| bad("unknown event"))?;
        let time = Timestamp {
            secs: u64_at(24) as i64,
            nanos: u32_at(32),
        };
        if time.nanos >= 1_000_000_000 {
            return Err(bad("time out of range"));
        }
        let text = &b[HEADER_LEN..HEADER_LEN + p + c + h];
        let record = Record {
            state,
            event,
            mode: u32_at(4),
            id: u64_at(8),
            ino: u64_at(16),
            time,
            uid: u32_at(36),
            gid: u32_at(40),
            pid: u32_at(44),
            size: u64_at(48),
            blocks: u64_at(56),
            cut_at: u64_at(64),
            path: text[..p].to_vec(),
            process: text[p..p + c].to_vec(),
            host: text[p + c..].to_vec(),
        };
        Ok(Some((record, len)))
    }

    fn version(&self, number: u32) -> HiddenVersion {
        HiddenVersion {
            path: self.path.clone(),
            version: number,
            id: self.id,
            ino: self.ino,
            event: self.event,
            time: self.time,
            uid: self.uid,
            gid: self.gid,
            pid: self.pid,
            process: String::from_utf8_lossy(&self.process).into_owned(),
            host: String::from_utf8_lossy(&self.host).into_owned(),
            mode: self.mode,
            size: self.size,
            blocks: self.blocks,
            cut_at: self.cut_at,
            open: self.state == STATE_OPEN,
        }
    }
}

/// Calls `f(offset, record)` for every record of the table, in order (all states).
pub(crate) fn read_table(
    io: &dyn BlockIo,
    table: &Inode,
    f: &mut dyn FnMut(u64, Record) -> Result<()>,
) -> Result<()> {
    let mut buf = Box::new([0u8; BLOCK_SIZE]);
    table.map.for_each(io, &mut |index, block| {
        io.read_block(block, &mut buf)?;
        let mut at = 0usize;
        while let Some((record, len)) = Record::decode(&buf[at..], index * BS + at as u64)? {
            f(index * BS + at as u64, record)?;
            at += len;
        }
        Ok(())
    })
}

/// The live records, indexed (built at open, kept under the filesystem's lock), and the
/// names of inodes seen lately.
#[derive(Default)]
pub(crate) struct HiddenIndex {
    /// Live records by id, with their byte offset in the table.
    records: BTreeMap<u64, (u64, Record)>,
    /// Path → ids of its live versions, ascending.
    by_path: BTreeMap<Vec<u8>, Vec<u64>>,
    /// Inode → id of its live version.
    by_ino: HashMap<u64, u64>,
    /// Live records per table block.
    live_in_block: HashMap<u64, u32>,
    last_id: u64,
    /// Inode → (parent directory, name), checked before use.
    names: HashMap<u64, (u64, Box<[u8]>)>,
    /// Process names by pid, trusted for [`PROCESS_TTL`] (pids are reused).
    processes: HashMap<u32, (Vec<u8>, Instant)>,
}

impl HiddenIndex {
    pub fn load(io: &dyn BlockIo, table: &Inode) -> Result<Self> {
        let mut index = Self::default();
        read_table(io, table, &mut |offset, record| {
            index.last_id = index.last_id.max(record.id);
            if record.is_live() {
                index.insert(offset, record);
            }
            Ok(())
        })?;
        Ok(index)
    }

    fn insert(&mut self, offset: u64, record: Record) {
        let id = record.id;
        self.by_path
            .entry(record.path.clone())
            .or_default()
            .push(id);
        self.by_ino.insert(record.ino, id);
        *self.live_in_block.entry(offset / BS).or_insert(0) += 1;
        self.records.insert(id, (offset, record));
    }

    fn remove(&mut self, id: u64) -> Option<(u64, Record)> {
        let (offset, record) = self.records.remove(&id)?;
        if let Some(ids) = self.by_path.get_mut(&record.path) {
            ids.retain(|&i| i != id);
            if ids.is_empty() {
                self.by_path.remove(&record.path);
            }
        }
        if self.by_ino.get(&record.ino) == Some(&id) {
            self.by_ino.remove(&record.ino);
        }
        Some((offset, record))
    }

    /// The id of version `number` (1 = most recent) of `path`.
    fn find(&self, path: &[u8], number: u32) -> Option<u64> {
        let ids = self.by_path.get(path)?;
        let n = usize::try_from(number).ok()?;
        if n == 0 || n > ids.len() {
            return None;
        }
        ids.get(ids.len() - n).copied()
    }

    fn number_of(&self, record: &Record) -> u32 {
        self.by_path
            .get(&record.path)
            .and_then(|ids| ids.iter().rev().position(|&i| i == record.id))
            .map_or(0, |p| p as u32 + 1)
    }

    /// The number of live versions.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The name of the process `pid` belongs to, read at most once per [`PROCESS_TTL`]
    /// (a `rm -r` of ten thousand files reads it once, not ten thousand times).
    pub fn process_name(&mut self, pid: u32) -> Vec<u8> {
        if let Some((name, when)) = self.processes.get(&pid)
            && when.elapsed() < PROCESS_TTL
        {
            return name.clone();
        }
        let name = process_name(pid);
        if self.processes.len() >= MAX_PROCESSES {
            self.processes.clear();
        }
        self.processes.insert(pid, (name.clone(), Instant::now()));
        name
    }

    /// `ino` is called `name` in `parent`.
    pub fn remember(&mut self, parent: u64, name: &[u8], ino: u64) {
        if let Some((p, n)) = self.names.get(&ino)
            && *p == parent
            && **n == *name
        {
            return;
        }
        if self.names.len() >= MAX_NAMES {
            self.names.clear();
        }
        self.names.insert(ino, (parent, name.into()));
    }
}

/// The live versions, for fsck: (inode, still open, version id).
pub(crate) fn live_inodes(io: &dyn BlockIo, table: &Inode) -> Result<Vec<(u64, bool, u64)>> {
    let mut out = Vec::new();
    read_table(io, table, &mut |_, r| {
        if r.is_live() {
            out.push((r.ino, r.state == STATE_OPEN, r.id));
        }
        Ok(())
    })?;
    Ok(out)
}

// ---- the table ------------------------------------------------------------------------

/// Appends `record` (its id assigned here) to the table and the index.
fn append(st: &mut State, io: &dyn BlockIo, mut record: Record) -> Result<Record> {
    st.hidden.last_id += 1;
    record.id = st.hidden.last_id;
    let bytes = record.encode();
    let mut pos = st.sb.hidden.size;
    if pos % BS + bytes.len() as u64 > BS {
        pos = pos.next_multiple_of(BS);
    }
    let index = pos / BS;
    let within = (pos % BS) as usize;
    let mut table = st.sb.hidden.clone();
    let mapped = table.map.get_or_alloc(
        io,
        &mut AllocIo {
            alloc: &mut st.alloc,
            io,
        },
        index,
        table.map.root,
    )?;
    table.blocks += mapped.allocated;
    let mut buf = Box::new([0u8; BLOCK_SIZE]);
    if !mapped.fresh {
        io.read_block(mapped.block, &mut buf)?;
    }
    buf[within..within + bytes.len()].copy_from_slice(&bytes);
    io.write_block(mapped.block, &buf)?;
    table.size = pos + bytes.len() as u64;
    st.sb.hidden = table;
    st.sb_dirty = true;
    st.hidden.insert(pos, record.clone());
    Ok(record)
}

/// Rewrites the fixed fields of the record at `offset` (state, size, blocks).
fn patch(st: &mut State, io: &dyn BlockIo, offset: u64, record: &Record) -> Result<()> {
    let block = st.sb.hidden.map.get(io, offset / BS)?.ok_or_else(|| {
        Error::CorruptFilesystem(format!("hidden-version table: byte {offset} is a hole"))
    })?;
    let mut buf = Box::new([0u8; BLOCK_SIZE]);
    io.read_block(block, &mut buf)?;
    let at = (offset % BS) as usize;
    buf[at + 2] = record.state;
    buf[at + 48..at + 56].copy_from_slice(&record.size.to_le_bytes());
    buf[at + 56..at + 64].copy_from_slice(&record.blocks.to_le_bytes());
    io.write_block(block, &buf)
}

/// Ends a live record (restored or purged): its state is rewritten, and a table block
/// left with no live record is given back (never the last one).
fn retire(st: &mut State, io: &dyn BlockIo, id: u64, state: u8) -> Result<Record> {
    let (offset, mut record) = st
        .hidden
        .remove(id)
        .ok_or_else(|| Error::CorruptFilesystem(format!("hidden version {id} is not live")))?;
    record.state = state;
    patch(st, io, offset, &record)?;
    let index = offset / BS;
    let left = match st.hidden.live_in_block.get_mut(&index) {
        Some(n) => {
            *n = n.saturating_sub(1);
            *n
        }
        None => 0,
    };
    let last = st.sb.hidden.size.saturating_sub(1) / BS;
    if left == 0 {
        st.hidden.live_in_block.remove(&index);
        if index != last {
            let mut table = st.sb.hidden.clone();
            let freed = table.map.punch(
                io,
                &mut AllocIo {
                    alloc: &mut st.alloc,
                    io,
                },
                index,
                index + 1,
            )?;
            table.blocks = table.blocks.saturating_sub(freed);
            st.sb.hidden = table;
            st.sb_dirty = true;
        }
    }
    Ok(record)
}

// ---- paths ----------------------------------------------------------------------------

/// `parent`'s name for `ino`: the remembered one if still right, else a search.
fn name_in(st: &mut State, io: &dyn BlockIo, parent: u64, ino: u64) -> Result<Option<Vec<u8>>> {
    if let Some((p, name)) = st.hidden.names.get(&ino).cloned()
        && p == parent
        && st
            .with_dir(io, parent, |dir, _| Ok(dir.lookup(&name)))
            .ok()
            .flatten()
            .is_some_and(|(i, _)| i == ino)
    {
        return Ok(Some(name.to_vec()));
    }
    let found = match st.with_dir(io, parent, |dir, _| {
        Ok(dir
            .entries_from(0)
            .find(|(_, e)| e.ino == ino)
            .map(|(_, e)| e.name))
    }) {
        Ok(found) => found,
        Err(Error::Posix(_)) => None,
        Err(e) => return Err(e),
    };
    if let Some(name) = &found {
        st.hidden.remember(parent, name, ino);
    }
    Ok(found)
}

/// The path of directory `dir` from the root (empty for the root); `None` if unknown.
fn dir_path(st: &mut State, io: &dyn BlockIo, dir: u64) -> Result<Option<Vec<Vec<u8>>>> {
    let mut parts = Vec::new();
    let mut at = dir;
    for _ in 0..MAX_DEPTH {
        if at == ROOT_INO {
            parts.reverse();
            return Ok(Some(parts));
        }
        let parent = match st.inode(io, at) {
            Ok(inode) if inode.is_dir() && inode.parent != 0 => inode.parent,
            Ok(_) | Err(Error::Posix(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        match name_in(st, io, parent, at)? {
            Some(name) => parts.push(name),
            None => return Ok(None),
        }
        at = parent;
    }
    Ok(None)
}

/// Joins components, keeping the end of a path longer than [`MAX_PATH`].
fn join(parts: &[Vec<u8>]) -> Vec<u8> {
    let path = parts.join(&b'/');
    if path.len() <= MAX_PATH {
        return path;
    }
    const CUT: &[u8] = "…/".as_bytes();
    let keep = MAX_PATH - CUT.len();
    let tail = &path[path.len() - keep..];
    let tail = match tail.iter().position(|&b| b == b'/') {
        Some(slash) if slash + 1 < tail.len() => &tail[slash + 1..],
        _ => tail,
    };
    [CUT, tail].concat()
}

fn unknown_path(ino: u64) -> Vec<u8> {
    format!(".domfs-unknown-path/inode-{ino}").into_bytes()
}

/// The path of `name` in directory `parent`.
fn entry_path(
    st: &mut State,
    io: &dyn BlockIo,
    parent: u64,
    name: &[u8],
    ino: u64,
) -> Result<Vec<u8>> {
    Ok(match dir_path(st, io, parent)? {
        Some(mut parts) => {
            parts.push(name.to_vec());
            join(&parts)
        }
        None => unknown_path(ino),
    })
}

/// The path of file `ino` (through its parent hint and remembered names).
fn file_path(st: &mut State, io: &dyn BlockIo, ino: u64, inode: &Inode) -> Result<Vec<u8>> {
    let mut parents = Vec::with_capacity(2);
    if let Some((p, _)) = st.hidden.names.get(&ino) {
        parents.push(*p);
    }
    if inode.parent != 0 && !parents.contains(&inode.parent) {
        parents.push(inode.parent);
    }
    for parent in parents {
        if let Some(name) = name_in(st, io, parent, ino)? {
            return entry_path(st, io, parent, &name, ino);
        }
    }
    Ok(unknown_path(ino))
}

/// `a/b/c` from what a caller wrote (`/a/b/c/`, `a//b`, `./a`).
pub fn normalize_path(path: &[u8]) -> Vec<u8> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect::<Vec<_>>()
        .join(&b'/')
}

// ---- hiding ---------------------------------------------------------------------------

/// What is needed to keep a file that loses its last name.
pub(crate) struct Keep {
    path: Vec<u8>,
    event: HiddenEvent,
    caller: Caller,
    process: Vec<u8>,
    time: Timestamp,
    host: Vec<u8>,
}

impl Filesystem {
    /// How to keep `ino`, called `name` in `parent`, if this removal drops its last name
    /// and its path is to be kept; `None` when it is freed as before.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn keep_for(
        &self,
        st: &mut State,
        io: &dyn BlockIo,
        parent: u64,
        name: &[u8],
        ino: u64,
        event: HiddenEvent,
        caller: Caller,
    ) -> Result<Option<Keep>> {
        let inode = st.inode(io, ino)?;
        if !inode.is_dir() && inode.nlink > 1 {
            return Ok(None);
        }
        let path = entry_path(st, io, parent, name, ino)?;
        if !self.hidden_cfg.retention.keeps(&path) {
            return Ok(None);
        }
        Ok(Some(Keep {
            path,
            event,
            caller,
            process: st.hidden.process_name(caller.pid),
            time: self.hidden_cfg.now(),
            host: self.hidden_cfg.host.clone(),
        }))
    }

    /// The hidden-version sink (the audit trail sets it).
    pub fn set_hidden_sink(&self, sink: Arc<dyn HiddenSink>) {
        *self
            .hidden_cfg
            .sink
            .write()
            .unwrap_or_else(|p| p.into_inner()) = sink;
    }

    /// The retention policy read from the header at open.
    pub fn retention(&self) -> &Retention {
        &self.hidden_cfg.retention
    }

    pub(crate) fn report_hidden(&self, version: Option<HiddenVersion>) {
        if let Some(v) = version {
            self.hidden_cfg.sink().hidden(&v);
        }
    }
}

fn record_for(keep: &Keep, inode: &Inode, ino: u64, state: u8) -> Record {
    Record {
        state,
        event: keep.event,
        mode: inode.mode,
        id: 0,
        ino,
        time: keep.time,
        uid: keep.caller.uid,
        gid: keep.caller.gid,
        pid: keep.caller.pid,
        size: inode.size,
        blocks: inode.blocks,
        cut_at: 0,
        path: keep.path.clone(),
        process: keep.process.clone(),
        host: keep.host.clone(),
    }
}

/// Makes `inode` (its last name gone, link count 0) a hidden version: at once when nothing
/// references it, else at its last close (it stays an orphan until then).
pub(crate) fn hide(
    st: &mut State,
    io: &dyn BlockIo,
    ino: u64,
    mut inode: Inode,
    keep: &Keep,
    referenced: bool,
) -> Result<HiddenVersion> {
    let state = if referenced { STATE_OPEN } else { STATE_KEPT };
    if !referenced {
        inode.flags |= FLAG_HIDDEN;
        inode.nlink = 0;
        st.dirs.remove(&ino);
        st.put_inode(io, ino, &inode)?;
        st.sb.hidden_blocks += inode.blocks;
        st.sb_dirty = true;
    }
    let record = append(st, io, record_for(keep, &inode, ino, state))?;
    Ok(record.version(1))
}

/// An unlinked file's last reference went: if it has an open record, it becomes hidden
/// now (true); else the caller frees it.
pub(crate) fn finish_open(st: &mut State, io: &dyn BlockIo, ino: u64) -> Result<bool> {
    let Some(&id) = st.hidden.by_ino.get(&ino) else {
        return Ok(false);
    };
    let Some((offset, mut record)) = st.hidden.records.get(&id).cloned() else {
        return Ok(false);
    };
    if record.state != STATE_OPEN {
        return Ok(false);
    }
    let mut inode = st.raw_inode(io, ino)?;
    inode.flags |= FLAG_HIDDEN;
    inode.nlink = 0;
    st.dirs.remove(&ino);
    st.put_inode(io, ino, &inode)?;
    st.sb.hidden_blocks += inode.blocks;
    st.sb_dirty = true;
    record.state = STATE_KEPT;
    record.size = inode.size;
    record.blocks = inode.blocks;
    patch(st, io, offset, &record)?;
    if let Some(entry) = st.hidden.records.get_mut(&id) {
        entry.1 = record;
    }
    Ok(true)
}

/// Whether any data lies at or past file block `start`.
fn has_blocks_from(io: &dyn BlockIo, map: &BlockMap, start: u64) -> Result<bool> {
    let mut found = false;
    let walk = map.for_each_in(io, start, u64::MAX, &mut |_, _| {
        found = true;
        // Stops the walk; never seen by anyone.
        Err(Error::Failed)
    });
    if found {
        return Ok(true);
    }
    walk.map(|()| false)
}

/// Whether cutting `inode` to `new_size` discards anything: a mapped block past the one
/// the cut falls inside, or a byte that is not zero in that one.
fn cut_discards(io: &dyn BlockIo, inode: &Inode, new_size: u64) -> Result<bool> {
    let cut_start = new_size / BS;
    let within = (new_size % BS) as usize;
    if within == 0 {
        return has_blocks_from(io, &inode.map, cut_start);
    }
    if has_blocks_from(io, &inode.map, cut_start + 1)? {
        return Ok(true);
    }
    let Some(block) = inode.map.get(io, cut_start)? else {
        return Ok(false);
    };
    let mut buf = Box::new([0u8; BLOCK_SIZE]);
    io.read_block(block, &mut buf)?;
    Ok(buf[within..].iter().any(|&b| b != 0))
}

/// Blocks a truncation of a `old`-byte file to `new` bytes may allocate when it keeps
/// what is cut (the smaller side moves to a new block map), beyond the record.
pub(crate) fn cut_room(old: u64, new: u64) -> u64 {
    let kept = new / BS;
    let cut = old.div_ceil(BS).saturating_sub(kept);
    kept.min(cut) / 500 + 12 + RECORD_ROOM
}

impl Filesystem {
    /// Truncation of `inode` to `new_size`: what is cut becomes a hidden version (blocks
    /// moved, not copied), unless nothing is cut or the path is not kept. Sets the size
    /// when it keeps; the caller truncates as before otherwise.
    pub(crate) fn keep_cut(
        &self,
        st: &mut State,
        io: &dyn BlockIo,
        ino: u64,
        inode: &mut Inode,
        new_size: u64,
        caller: Caller,
    ) -> Result<Option<HiddenVersion>> {
        let old_size = inode.size;
        if new_size >= old_size {
            return Ok(None);
        }
        let cut_start = new_size / BS;
        if !cut_discards(io, inode, new_size)? {
            return Ok(None);
        }
        let path = file_path(st, io, ino, inode)?;
        if !self.hidden_cfg.retention.keeps(&path) {
            return Ok(None);
        }
        let now = self.hidden_cfg.now();
        let hidden_ino = st.new_ino();
        let mut hidden = Inode {
            mode: inode.mode,
            uid: inode.uid,
            gid: inode.gid,
            nlink: 0,
            size: old_size,
            atime: inode.atime,
            mtime: inode.mtime,
            ctime: now,
            crtime: now,
            generation: 1,
            flags: FLAG_HIDDEN,
            parent: inode.parent,
            ..Inode::default()
        };
        let xattr = u64::from(inode.xattr_block != 0);
        let kept_blocks = cut_start;
        let cut_blocks = old_size.div_ceil(BS).saturating_sub(cut_start);
        // The whole map changes hands; then the smaller side moves back or over.
        let mut alloc = AllocIo {
            alloc: &mut st.alloc,
            io,
        };
        if cut_start == 0 || kept_blocks <= cut_blocks {
            hidden.map = std::mem::take(&mut inode.map);
            hidden.blocks = inode.blocks.saturating_sub(xattr);
            inode.blocks = xattr;
            if cut_start > 0 {
                let m = hidden
                    .map
                    .move_range(&mut inode.map, io, &mut alloc, 0, cut_start)?;
                hidden.blocks = hidden.blocks.saturating_sub(m.data + m.freed);
                inode.blocks += m.data + m.allocated;
            }
        } else {
            let m = inode
                .map
                .move_range(&mut hidden.map, io, &mut alloc, cut_start, u64::MAX)?;
            inode.blocks = inode.blocks.saturating_sub(m.data + m.freed);
            hidden.blocks = m.data + m.allocated;
        }
        // The block the cut falls inside: the version has the original, the file a copy
        // with its tail zeroed.
        let within = (new_size % BS) as usize;
        if within != 0
            && let Some(original) = hidden.map.get(io, cut_start)?
        {
            let mut buf = Box::new([0u8; BLOCK_SIZE]);
            io.read_block(original, &mut buf)?;
            buf[within..].fill(0);
            let mapped = inode
                .map
                .get_or_alloc(io, &mut alloc, cut_start, original)?;
            inode.blocks += mapped.allocated;
            io.write_block(mapped.block, &buf)?;
        }
        inode.size = new_size;
        st.put_inode(io, hidden_ino, &hidden)?;
        st.sb.hidden_blocks += hidden.blocks;
        st.sb_dirty = true;
        let keep = Keep {
            path,
            event: HiddenEvent::Truncate,
            caller,
            process: st.hidden.process_name(caller.pid),
            time: now,
            host: self.hidden_cfg.host.clone(),
        };
        let mut record = record_for(&keep, &hidden, hidden_ino, STATE_KEPT);
        record.cut_at = new_size;
        let record = append(st, io, record)?;
        Ok(Some(record.version(1)))
    }
}

// ---- the library API ------------------------------------------------------------------

impl Filesystem {
    /// Hidden versions whose path is `prefix` or below it (all with `None` or an empty
    /// prefix), newest first.
    pub fn hidden_list(&self, prefix: Option<&[u8]>) -> Result<Vec<HiddenVersion>> {
        let prefix = normalize_path(prefix.unwrap_or_default());
        self.inspect(|st, io| {
            let mut found = Vec::new();
            for (path, ids) in st.hidden.by_path.range(prefix.clone()..) {
                if !path.starts_with(&prefix) {
                    break;
                }
                if !prefix.is_empty() && path.len() > prefix.len() && path[prefix.len()] != b'/' {
                    continue;
                }
                for (n, id) in ids.iter().rev().enumerate() {
                    found.push((*id, n as u32 + 1));
                }
            }
            let mut out = Vec::with_capacity(found.len());
            for (id, number) in found {
                out.push(view(st, io, id, number)?);
            }
            out.sort_by_key(|v| std::cmp::Reverse(v.id));
            Ok(out)
        })
    }

    /// One hidden version (1 = the most recent of `path`).
    pub fn hidden_get(&self, path: &[u8], version: u32) -> Result<HiddenVersion> {
        let path = normalize_path(path);
        self.inspect(|st, io| {
            let id = st.hidden.find(&path, version).ok_or(Posix::NotFound)?;
            view(st, io, id, version)
        })
    }

    /// Up to `len` bytes of a hidden version's content from `offset` (fewer at its end).
    /// A directory has none ([`Posix::IsDirectory`]); a symlink's content is its target.
    pub fn hidden_read(&self, path: &[u8], version: u32, offset: u64, len: u32) -> Result<Vec<u8>> {
        let path = normalize_path(path);
        self.inspect(|st, io| {
            let id = st.hidden.find(&path, version).ok_or(Posix::NotFound)?;
            let ino = st.hidden.records.get(&id).ok_or(Posix::NotFound)?.1.ino;
            let inode = st.raw_inode(io, ino)?;
            if inode.is_dir() {
                return Err(Posix::IsDirectory.into());
            }
            super::ops_data::read_range(io, &inode, offset, len)
        })
    }

    /// Brings a hidden version back, byte for byte, at its path or at `to` (both from the
    /// root). The parent directory must exist and the name must be free
    /// ([`Posix::Exists`]); the version leaves the hidden list.
    pub fn hidden_restore(
        &self,
        path: &[u8],
        version: u32,
        to: Option<&[u8]>,
    ) -> Result<HiddenVersion> {
        let path = normalize_path(path);
        let target = normalize_path(to.unwrap_or(&path));
        let (dir_parts, name) = match target.iter().rposition(|&b| b == b'/') {
            Some(slash) => (&target[..slash], &target[slash + 1..]),
            None => (&target[..0], &target[..]),
        };
        if name.is_empty() || name == b".." {
            return Err(Posix::Invalid.into());
        }
        if name.len() > 255 {
            return Err(Posix::NameTooLong.into());
        }
        let restored = self.mutate(2, |st, io| {
            let id = st.hidden.find(&path, version).ok_or(Posix::NotFound)?;
            let record = st.hidden.records.get(&id).ok_or(Posix::NotFound)?.1.clone();
            let mut parent = ROOT_INO;
            for part in dir_parts.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
                match st.with_dir(io, parent, |dir, _| Ok(dir.lookup(part)))? {
                    Some((ino, FileKind::Directory)) => parent = ino,
                    Some(_) => return Err(Posix::NotDirectory.into()),
                    None => return Err(Posix::NotFound.into()),
                }
            }
            if st
                .with_dir(io, parent, |dir, _| Ok(dir.lookup(name)))?
                .is_some()
            {
                return Err(Posix::Exists.into());
            }
            let mut inode = st.raw_inode(io, record.ino)?;
            let kind = inode.kind()?;
            let now = Timestamp::now();
            if record.state == STATE_OPEN {
                let orphan = record.ino.to_string();
                st.with_orphans(io, |dir, storage| {
                    match dir.remove(storage, orphan.as_bytes()) {
                        Ok(_) | Err(Error::Posix(Posix::NotFound)) => Ok(()),
                        Err(e) => Err(e),
                    }
                })?;
            } else {
                st.sb.hidden_blocks = st.sb.hidden_blocks.saturating_sub(inode.blocks);
                st.sb_dirty = true;
            }
            inode.flags &= !FLAG_HIDDEN;
            inode.nlink = if kind == FileKind::Directory { 2 } else { 1 };
            inode.parent = parent;
            inode.ctime = now;
            st.put_inode(io, record.ino, &inode)?;
            st.with_dir(io, parent, |dir, storage| {
                dir.insert(storage, name, record.ino, kind)
            })?;
            let mut dir = st.inode(io, parent)?;
            dir.mtime = now;
            dir.ctime = now;
            if kind == FileKind::Directory {
                dir.nlink += 1;
            }
            st.put_inode(io, parent, &dir)?;
            st.hidden.remember(parent, name, record.ino);
            let number = st.hidden.number_of(&record);
            let retired = retire(st, io, id, STATE_RESTORED)?;
            Ok(retired.version(number))
        })?;
        self.hidden_cfg.sink().restored(&restored, &target);
        Ok(restored)
    }

    /// Frees a hidden version for good (its blocks become free space). The caller has
    /// checked the domain manager's authority. A version still open is forgotten now and
    /// freed at its last close.
    pub fn hidden_purge(&self, path: &[u8], version: u32) -> Result<HiddenVersion> {
        let path = normalize_path(path);
        let purged = self.mutate(0, |st, io| {
            let id = st.hidden.find(&path, version).ok_or(Posix::NotFound)?;
            let number = st
                .hidden
                .number_of(&st.hidden.records.get(&id).ok_or(Posix::NotFound)?.1);
            purge_one(st, io, id).map(|r| r.version(number))
        })?;
        self.hidden_cfg.sink().purged(&purged, PurgeReason::Manager);
        Ok(purged)
    }

    /// Frees the versions older than the volume's keep-for (nothing under keep-all), and
    /// returns them. Runs at every read-write open and, during operations, hourly.
    pub fn sweep_hidden(&self) -> Result<Vec<HiddenVersion>> {
        let Some(keep_for) = self.hidden_cfg.retention.keep_for else {
            return Ok(Vec::new());
        };
        if self.read_only {
            return Ok(Vec::new());
        }
        let now = self.hidden_cfg.now();
        self.hidden_cfg
            .last_sweep
            .store(now.secs, Ordering::Relaxed);
        let cutoff = now
            .secs
            .saturating_sub(i64::try_from(keep_for).unwrap_or(i64::MAX));
        let mut freed = Vec::new();
        loop {
            let batch = self.mutate(0, |st, io| {
                let old: Vec<(u64, u32)> = st
                    .hidden
                    .records
                    .values()
                    .filter(|(_, r)| r.state == STATE_KEPT && r.time.secs < cutoff)
                    .take(SWEEP_BATCH)
                    .map(|(_, r)| (r.id, st.hidden.number_of(r)))
                    .collect();
                let mut out = Vec::with_capacity(old.len());
                for (id, number) in old {
                    out.push(purge_one(st, io, id)?.version(number));
                }
                Ok(out)
            })?;
            let done = batch.len() < SWEEP_BATCH;
            let sink = self.hidden_cfg.sink();
            let me = nix::unistd::getuid().as_raw();
            let group = nix::unistd::getgid().as_raw();
            for v in &batch {
                sink.purged(v, PurgeReason::Retention);
                let detail = format!(
                    "retention keep-for={}: version {} (id {}) hidden {} s ago",
                    crate::format::retention::format_duration(keep_for),
                    v.version,
                    v.id,
                    now.secs.saturating_sub(v.time.secs)
                );
                self.audit_done(self.hidden_audit_record(
                    AuditOp::Purge,
                    Caller {
                        uid: me,
                        gid: group,
                        pid: std::process::id(),
                    },
                    v,
                    detail,
                    0,
                ));
            }
            freed.extend(batch);
            if done {
                break;
            }
        }
        if !freed.is_empty() {
            tracing::info!(
                "retention: freed {} hidden version(s) older than {}",
                freed.len(),
                crate::format::retention::format_duration(keep_for)
            );
        }
        Ok(freed)
    }

    /// Runs the retention sweep when the last one is an hour old.
    pub(crate) fn maybe_sweep(&self) {
        if self.hidden_cfg.retention.keep_for.is_none() || self.read_only {
            return;
        }
        let now = self.hidden_cfg.now().secs;
        let last = self.hidden_cfg.last_sweep.load(Ordering::Relaxed);
        if now.saturating_sub(last) < SWEEP_EVERY {
            return;
        }
        if let Err(e) = self.sweep_hidden() {
            tracing::warn!("retention sweep: {e}");
        }
    }

    /// An audit entry about hidden version `v` by `who` (restore, purge, or the read of
    /// its content), stamped now, with this filesystem's host. `result` is 0 or the errno
    /// the request was answered with.
    pub fn hidden_audit_record(
        &self,
        op: AuditOp,
        who: Caller,
        v: &HiddenVersion,
        detail: String,
        result: i32,
    ) -> AuditRecord {
        AuditRecord {
            time_us: AuditRecord::now_us(),
            uid: who.uid,
            gid: who.gid,
            pid: who.pid,
            user: nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(who.uid))
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_default(),
            process: String::from_utf8_lossy(&process_name(who.pid)).into_owned(),
            host: String::from_utf8_lossy(&self.hidden_cfg.host).into_owned(),
            inode: v.ino,
            path: format!("/{}", v.path_text()),
            op,
            mode: if op == AuditOp::Open {
                AccessMode::Read
            } else {
                AccessMode::None
            },
            result,
            detail,
            ..AuditRecord::default()
        }
    }

    /// The number of hidden versions and the blocks they hold.
    pub fn hidden_usage(&self) -> (u64, u64) {
        let st = self.lock();
        (st.hidden.len() as u64, st.sb.hidden_blocks)
    }
}

/// A live version as listed. One whose file was open at the event shows its content now,
/// and is `open` only while this filesystem still has the file open (on a volume opened
/// after a stop, its last close has happened: it becomes hidden at the next read-write
/// open).
fn view(st: &mut State, io: &dyn BlockIo, id: u64, number: u32) -> Result<HiddenVersion> {
    let record = st.hidden.records.get(&id).ok_or(Posix::NotFound)?.1.clone();
    let mut version = record.version(number);
    if record.state == STATE_OPEN {
        if let Ok(inode) = st.raw_inode(io, record.ino) {
            version.size = inode.size;
            version.blocks = inode.blocks;
        }
        version.open = st.lookups.contains_key(&record.ino) || st.open.contains_key(&record.ino);
    }
    Ok(version)
}

/// Frees one live version (an open one is only forgotten: its last close frees it).
fn purge_one(st: &mut State, io: &dyn BlockIo, id: u64) -> Result<Record> {
    let record = st.hidden.records.get(&id).ok_or(Posix::NotFound)?.1.clone();
    if record.state == STATE_KEPT {
        let mut inode = st.raw_inode(io, record.ino)?;
        st.sb.hidden_blocks = st.sb.hidden_blocks.saturating_sub(inode.blocks);
        free_blocks(st, io, &mut inode)?;
        st.dirs.remove(&record.ino);
        st.put_inode(io, record.ino, &Inode::default())?;
        st.sb.inodes_used = st.sb.inodes_used.saturating_sub(1);
        st.sb_dirty = true;
    }
    retire(st, io, id, STATE_PURGED)
}

/// Test hooks: the time of records, set from outside.
#[cfg(test)]
#[path = "hidden_tests.rs"]
mod tests;
