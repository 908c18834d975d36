//! Keeping what a truncation cuts: the cut blocks move to a new hidden inode (no data
//! copy but the one block the cut falls inside).

use super::keep::{Keep, record_for};
use super::naming::file_path;
use super::record::STATE_KEPT;
use super::table::{RECORD_ROOM, append};
use super::{BS, HiddenEvent, HiddenVersion};
use crate::filesystem::alloc::AllocIo;
use crate::filesystem::bmap::BlockMap;
use crate::filesystem::inode::{FLAG_HIDDEN, Inode, Timestamp};
use crate::filesystem::state::State;
use crate::filesystem::{BlockIo, Caller, Filesystem};
use crate::types::BLOCK_SIZE;
use crate::{Error, Result};

/// Whether any data lies at or past file block `start`.
pub(super) fn has_blocks_from(io: &dyn BlockIo, map: &BlockMap, start: u64) -> Result<bool> {
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
/// what is cut (the smaller side moves to a new block map; always the cut side when
/// blocks lie past the end of the file), beyond the record.
pub(crate) fn cut_room(old: u64, new: u64, past_eof: bool) -> u64 {
    let kept = new / BS;
    let cut = old.div_ceil(BS).saturating_sub(kept);
    let moved = if past_eof { cut } else { kept.min(cut) };
    moved / 500 + 12 + RECORD_ROOM
}

impl Filesystem {
    /// The room (blocks) keeping what a cut of `inode` to `new_size` discards takes, or
    /// `None` when it keeps nothing (nothing is cut, or the path is scratch): a truncation
    /// that keeps nothing needs no room, so it works on a full volume and frees space.
    pub(crate) fn cut_keeps(
        &self,
        st: &mut State,
        io: &dyn BlockIo,
        ino: u64,
        inode: &Inode,
        new_size: u64,
    ) -> Result<Option<u64>> {
        if new_size >= inode.size || !cut_discards(io, inode, new_size)? {
            return Ok(None);
        }
        let path = file_path(st, io, ino, inode)?;
        if !self.hidden_cfg.retention.keeps(&path) {
            return Ok(None);
        }
        let past_eof = has_blocks_from(io, &inode.map, inode.size.div_ceil(BS))?;
        Ok(Some(cut_room(inode.size, new_size, past_eof)))
    }

    /// Truncation of `inode` to `new_size`: what is cut becomes a hidden version (blocks
    /// moved, not copied), unless nothing is cut or the path is not kept. Sets the size
    /// when it keeps; the caller truncates as before otherwise. The caller reserved the
    /// room [`Filesystem::cut_keeps`] asked for.
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
        let mut hidden = version_inode(inode, now);
        let xattr = u64::from(inode.xattr_block != 0);
        let end = old_size.div_ceil(BS);
        let kept_blocks = cut_start;
        let cut_blocks = end.saturating_sub(cut_start);
        // Blocks preallocated past the end (fallocate KEEP_SIZE) are not content: they
        // stay with the file, and the truncation frees them.
        let past_eof = has_blocks_from(io, &inode.map, end)?;
        // The whole map changes hands; then the smaller side moves back or over.
        let mut alloc = AllocIo {
            alloc: &mut st.alloc,
            io,
        };
        if !past_eof && (cut_start == 0 || kept_blocks <= cut_blocks) {
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
                .move_range(&mut hidden.map, io, &mut alloc, cut_start, end)?;
            inode.blocks = inode.blocks.saturating_sub(m.data + m.freed);
            hidden.blocks = m.data + m.allocated;
            if past_eof {
                let freed = inode.map.punch(io, &mut alloc, end, u64::MAX)?;
                inode.blocks = inode.blocks.saturating_sub(freed);
            }
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

/// The inode of a new hidden version of `inode` made `now`: its owner, mode, times and
/// size, the hidden flag, no blocks yet (the caller moves them in).
pub(super) fn version_inode(inode: &Inode, now: Timestamp) -> Inode {
    Inode {
        mode: inode.mode,
        uid: inode.uid,
        gid: inode.gid,
        nlink: 0,
        size: inode.size,
        atime: inode.atime,
        mtime: inode.mtime,
        ctime: now,
        crtime: now,
        generation: 1,
        flags: FLAG_HIDDEN,
        parent: inode.parent,
        ..Inode::default()
    }
}
