//! File contents and attributes: read, write, truncate, fallocate, setattr, xattrs, statfs.

use super::alloc::AllocIo;
use super::bmap::MAX_FILE_BLOCKS;
use super::inode::{Inode, S_IFMT, Timestamp};
use super::state::State;
use super::{BlockIo, Caller, Entry, Filesystem, hidden};
use crate::Result;
use crate::error::Posix;
use crate::types::BLOCK_SIZE;

const BS: u64 = BLOCK_SIZE as u64;
/// The largest file size (and truncate target) a file may have.
pub const MAX_FILE_SIZE: u64 = MAX_FILE_BLOCKS * BS;

const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;

/// A new value for a timestamp.
#[derive(Clone, Copy, Debug)]
pub enum TimeSet {
    Now,
    At(Timestamp),
}

/// The attributes a `setattr` changes (None: unchanged).
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub ctime: Option<Timestamp>,
}

/// What `statfs` reports, in 4 KiB blocks.
#[derive(Clone, Copy, Debug)]
pub struct StatFs {
    /// The container's blocks less those hidden versions hold.
    pub blocks: u64,
    /// Not in use (includes the reserve kept for rewrites of existing blocks).
    pub free: u64,
    /// What new data may still take.
    pub available: u64,
    pub files: u64,
    pub files_free: u64,
}

impl Filesystem {
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        self.inspect(|st, io| {
            let inode = st.inode(io, ino)?;
            if inode.is_dir() {
                return Err(Posix::IsDirectory.into());
            }
            read_range(io, &inode, offset, size)
        })
    }

    pub fn write(&self, ino: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(Posix::FileTooLarge)?;
        let blocks = (data.len() as u64).div_ceil(BS) + 1;
        self.mutate(blocks, |st, io| {
            let mut inode = st.inode(io, ino)?;
            if inode.is_dir() {
                return Err(Posix::IsDirectory.into());
            }
            write_blocks(st, io, &mut inode, offset, data)?;
            inode.size = inode.size.max(end);
            let now = Timestamp::now();
            inode.mtime = now;
            inode.ctime = now;
            st.put_inode(io, ino, &inode)?;
            Ok(data.len() as u32)
        })
    }

    /// Changes attributes. Cutting a file short keeps what is cut as a hidden version
    /// (by `caller`), unless its path is not kept.
    pub fn setattr(&self, ino: u64, set: SetAttr, caller: Caller) -> Result<Entry> {
        self.setattr_by(ino, set, caller).map(|(entry, _)| entry)
    }

    /// [`Filesystem::setattr`], and the hidden version a cut kept.
    pub fn setattr_by(
        &self,
        ino: u64,
        set: SetAttr,
        caller: Caller,
    ) -> Result<(Entry, Option<hidden::HiddenVersion>)> {
        if set.size.is_some_and(|s| s > MAX_FILE_SIZE) {
            return Err(Posix::FileTooLarge.into());
        }
        // Keeping what a cut discards needs room for the version's block map and record,
        // known once the file is looked at: such a cut runs again with that room (one
        // that keeps nothing needs none, so it works on a full volume).
        let mut room = 0;
        loop {
            let mut kept = None;
            let result = self.mutate(room, |st, io| {
                let mut inode = st.inode(io, ino)?;
                if let Some(size) = set.size {
                    if inode.is_dir() {
                        return Err(Posix::IsDirectory.into());
                    }
                    if let Some(needed) = self.cut_keeps(st, io, ino, &inode, size)?
                        && needed > room
                    {
                        return Ok(Err(needed));
                    }
                }
                let now = Timestamp::now();
                if let Some(mode) = set.mode {
                    inode.mode = (inode.mode & S_IFMT) | (mode & !S_IFMT);
                }
                if let Some(uid) = set.uid {
                    inode.uid = uid;
                }
                if let Some(gid) = set.gid {
                    inode.gid = gid;
                }
                if let Some(size) = set.size {
                    kept = self.keep_cut(st, io, ino, &mut inode, size, caller)?;
                    truncate(st, io, &mut inode, size)?;
                    inode.mtime = now;
                }
                let resolve = |t: TimeSet| match t {
                    TimeSet::Now => now,
                    TimeSet::At(t) => t,
                };
                if let Some(t) = set.atime {
                    inode.atime = resolve(t);
                }
                if let Some(t) = set.mtime {
                    inode.mtime = resolve(t);
                }
                inode.ctime = set.ctime.unwrap_or(now);
                st.put_inode(io, ino, &inode)?;
                Ok(Ok(Entry { ino, inode }))
            })?;
            match result {
                // Nothing was changed: again, with the room it needs.
                Err(needed) => room = needed,
                Ok(entry) => {
                    self.report_hidden(kept.clone());
                    return Ok((entry, kept));
                }
            }
        }
    }

    /// [`Filesystem::fallocate_by`] by an unknown caller (uid, gid and pid 0 in a version
    /// it keeps).
    pub fn fallocate(&self, ino: u64, offset: u64, length: u64, mode: i32) -> Result<()> {
        self.fallocate_by(ino, offset, length, mode, Caller::default())
            .map(|_| ())
    }

    /// Allocates `[offset, offset + length)` (mode 0, or `KEEP_SIZE`), or punches a hole
    /// there (`PUNCH_HOLE | KEEP_SIZE`). A punch that discards data (a byte that is not
    /// zero) keeps it as a hidden version by `caller`, unless the file's path is not kept;
    /// that version is returned.
    pub fn fallocate_by(
        &self,
        ino: u64,
        offset: u64,
        length: u64,
        mode: i32,
        caller: Caller,
    ) -> Result<Option<hidden::HiddenVersion>> {
        let end = offset
            .checked_add(length)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(Posix::FileTooLarge)?;
        if length == 0 {
            return Err(Posix::Invalid.into());
        }
        let punch = mode & FALLOC_FL_PUNCH_HOLE != 0;
        let keep_size = mode & FALLOC_FL_KEEP_SIZE != 0;
        if mode & !(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE) != 0 || (punch && !keep_size) {
            return Err(Posix::NotSupported.into());
        }
        // A punch that keeps what it discards needs room for the version's block map, its
        // edges and its record: known once the file is looked at, so such a punch runs
        // again with that room (a punch that keeps nothing needs none, as before).
        let mut blocks = if punch { 0 } else { length.div_ceil(BS) + 1 };
        loop {
            let mut kept = None;
            let room = blocks;
            let more = self.mutate(room, |st, io| {
                let mut inode = st.inode(io, ino)?;
                if inode.is_dir() {
                    return Err(Posix::IsDirectory.into());
                }
                if punch {
                    let stop = end.min(inode.size);
                    match self.punch_plan(st, io, ino, &inode, offset..stop)? {
                        Some(plan) if plan.room > room => return Ok(Some(plan.room)),
                        Some(plan) => {
                            kept = Some(self.keep_punch(st, io, &mut inode, plan, caller)?);
                        }
                        None => zero_range(st, io, &mut inode, offset, stop, false)?,
                    }
                } else {
                    allocate(st, io, &mut inode, offset, end)?;
                    if !keep_size {
                        inode.size = inode.size.max(end);
                    }
                }
                let now = Timestamp::now();
                inode.mtime = now;
                inode.ctime = now;
                st.put_inode(io, ino, &inode)?;
                Ok(None)
            })?;
            match more {
                // Nothing was changed: again, with the room it needs.
                Some(needed) => blocks = needed,
                None => {
                    self.report_hidden(kept.clone());
                    return Ok(kept);
                }
            }
        }
    }

    pub fn statfs(&self) -> StatFs {
        let space = self.store.space();
        let st = self.lock();
        StatFs {
            // Hidden versions are kept, not free: the capacity left for visible data.
            blocks: space.usable_blocks.saturating_sub(st.sb.hidden_blocks),
            free: space.free_blocks,
            available: space.available_blocks,
            files: st.sb.inodes_used + space.available_blocks * super::inode::INODES_PER_BLOCK,
            files_free: space.available_blocks * super::inode::INODES_PER_BLOCK,
        }
    }
}

/// Up to `size` bytes of `inode`'s content from `offset` (fewer at its end; holes read as
/// zeros).
pub(crate) fn read_range(
    io: &dyn BlockIo,
    inode: &Inode,
    offset: u64,
    size: u32,
) -> Result<Vec<u8>> {
    let end = offset.saturating_add(u64::from(size)).min(inode.size);
    if offset >= end {
        return Ok(Vec::new());
    }
    let mut out = vec![0u8; (end - offset) as usize];
    let mut block = Box::new([0u8; BLOCK_SIZE]);
    let mut pos = offset;
    while pos < end {
        let index = pos / BS;
        let within = (pos % BS) as usize;
        let take = ((BS - pos % BS).min(end - pos)) as usize;
        let dst = (pos - offset) as usize;
        if let Some(b) = inode.map.get(io, index)? {
            io.read_block(b, &mut block)?;
            out[dst..dst + take].copy_from_slice(&block[within..within + take]);
        }
        pos += take as u64;
    }
    Ok(out)
}

/// Writes `data` at `offset` into the file's blocks (allocating), without touching its
/// size or times.
pub(crate) fn write_blocks(
    st: &mut State,
    io: &dyn BlockIo,
    inode: &mut Inode,
    offset: u64,
    data: &[u8],
) -> Result<()> {
    let mut block = Box::new([0u8; BLOCK_SIZE]);
    let mut pos = offset;
    let end = offset + data.len() as u64;
    let mut hint = 0;
    while pos < end {
        let index = pos / BS;
        let within = (pos % BS) as usize;
        let take = ((BS - pos % BS).min(end - pos)) as usize;
        let mut alloc = AllocIo {
            alloc: &mut st.alloc,
            io,
        };
        let mapped = inode.map.get_or_alloc(io, &mut alloc, index, hint)?;
        inode.blocks += mapped.allocated;
        if take < BLOCK_SIZE {
            if mapped.fresh {
                block.fill(0);
            } else {
                io.read_block(mapped.block, &mut block)?;
            }
        }
        let src = (pos - offset) as usize;
        block[within..within + take].copy_from_slice(&data[src..src + take]);
        io.write_block(mapped.block, &block)?;
        hint = mapped.block + 1;
        pos += take as u64;
    }
    Ok(())
}

/// Maps every block of `[start, end)` that is a hole to a new block of zeros.
fn allocate(
    st: &mut State,
    io: &dyn BlockIo,
    inode: &mut Inode,
    start: u64,
    end: u64,
) -> Result<()> {
    let mut hint = inode.map.root;
    let zeros = Box::new([0u8; BLOCK_SIZE]);
    for index in start / BS..end.div_ceil(BS) {
        let mut alloc = AllocIo {
            alloc: &mut st.alloc,
            io,
        };
        let mapped = inode.map.get_or_alloc(io, &mut alloc, index, hint)?;
        inode.blocks += mapped.allocated;
        if mapped.fresh {
            io.write_block(mapped.block, &zeros)?;
        }
        hint = mapped.block + 1;
    }
    Ok(())
}

/// Sets the size; shrinking frees whole blocks past the end and zeroes the tail of the
/// last one, so growing again later reads zeros.
fn truncate(st: &mut State, io: &dyn BlockIo, inode: &mut Inode, size: u64) -> Result<()> {
    if size < inode.size {
        zero_range(st, io, inode, size, inode.size, true)?;
    }
    inode.size = size;
    Ok(())
}

/// Makes `[start, end)` read as zeros: whole blocks are freed, partial ones zeroed. With
/// `to_eof`, every block from the first whole one on is freed.
fn zero_range(
    st: &mut State,
    io: &dyn BlockIo,
    inode: &mut Inode,
    start: u64,
    end: u64,
    to_eof: bool,
) -> Result<()> {
    if start >= end {
        return Ok(());
    }
    let first_whole = start.div_ceil(BS);
    let last_whole = if to_eof { u64::MAX } else { end / BS };
    if !start.is_multiple_of(BS) {
        let index = start / BS;
        let block_end = (index + 1) * BS;
        zero_in_block(
            io,
            inode,
            index,
            start % BS,
            end.min(block_end) - index * BS,
        )?;
    }
    if !to_eof && !end.is_multiple_of(BS) && end / BS >= first_whole {
        zero_in_block(io, inode, end / BS, 0, end % BS)?;
    }
    if first_whole < last_whole {
        let mut alloc = AllocIo {
            alloc: &mut st.alloc,
            io,
        };
        let freed = inode.map.punch(io, &mut alloc, first_whole, last_whole)?;
        inode.blocks = inode.blocks.saturating_sub(freed);
    }
    Ok(())
}

/// Zeroes bytes `[from, to)` of file block `index`, if it is mapped.
fn zero_in_block(io: &dyn BlockIo, inode: &Inode, index: u64, from: u64, to: u64) -> Result<()> {
    if let Some(b) = inode.map.get(io, index)? {
        let mut block = Box::new([0u8; BLOCK_SIZE]);
        io.read_block(b, &mut block)?;
        block[from as usize..to as usize].fill(0);
        io.write_block(b, &block)?;
    }
    Ok(())
}
