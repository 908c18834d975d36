//! Keeping what a punched hole discards (`fallocate(PUNCH_HOLE | KEEP_SIZE)`): the whole
//! blocks of the range move to a new hidden inode at their offsets (no data copy); the
//! punched bytes of the blocks at its two edges are copied there and zeroed in the file.

use std::ops::Range;

use super::cut::has_blocks_from;
use super::keep::{Keep, record_for};
use super::naming::file_path;
use super::record::STATE_KEPT;
use super::table::{RECORD_ROOM, append};
use super::{BS, HiddenEvent, HiddenVersion};
use crate::filesystem::alloc::AllocIo;
use crate::filesystem::bmap::BlockMap;
use crate::filesystem::inode::Inode;
use crate::filesystem::state::State;
use crate::filesystem::{BlockIo, Caller, Filesystem};
use crate::types::BLOCK_SIZE;
use crate::{Error, Result};

/// Blocks besides the moved ones' block-map blocks: the new inode's table block and its
/// path, the two edge copies and their paths, the boundary leaves of the moves.
pub(super) const PUNCH_SLACK: u64 = 32;

/// How a punch of a file falls on its blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Shape {
    /// The punched range, within the file's size.
    range: Range<u64>,
    /// The file's size.
    size: u64,
    /// The partial blocks at the edges: (file block, bytes within it).
    pub(super) edges: Vec<(u64, Range<usize>)>,
    /// The file blocks that move whole. A range that reaches the end of the file takes its
    /// last block whole (past the end it holds zeros).
    pub(super) whole: Range<u64>,
}

impl Shape {
    /// `range` is not empty and ends at or before `size`.
    pub(super) fn new(range: Range<u64>, size: u64) -> Self {
        let (start, end) = (range.start, range.end);
        let first = start.div_ceil(BS);
        let last = if end >= size {
            end.div_ceil(BS)
        } else {
            end / BS
        };
        let mut edges = Vec::with_capacity(2);
        if !start.is_multiple_of(BS) {
            let index = start / BS;
            let to = end.min((index + 1) * BS) - index * BS;
            edges.push((index, (start % BS) as usize..to as usize));
        }
        if end < size && !end.is_multiple_of(BS) && end / BS >= first {
            edges.push((end / BS, 0..(end % BS) as usize));
        }
        Self {
            range,
            size,
            edges,
            whole: first..last.max(first),
        }
    }

    /// File blocks outside the whole-block range, up to the end of the file.
    pub(super) fn outside(&self) -> u64 {
        self.whole.start + self.size.div_ceil(BS).saturating_sub(self.whole.end)
    }

    pub(super) fn inside(&self) -> u64 {
        self.whole.end - self.whole.start
    }
}

/// Blocks keeping a punch may allocate when `moved` data blocks change maps, beyond the
/// record.
pub(super) fn room_for(moved: u64) -> u64 {
    moved / 500 + PUNCH_SLACK + RECORD_ROOM
}

/// A punch that will be kept: what [`Filesystem::keep_punch`] does.
pub(crate) struct PunchPlan {
    shape: Shape,
    path: Vec<u8>,
    /// The whole map moves to the version and what lies outside the range moves back
    /// (fewer blocks than the range holds, and none past the end of the file).
    swap: bool,
    /// Blocks the operation may allocate.
    pub(crate) room: u64,
}

/// Whether any byte of `range` in the data block `block` is not zero; the block's content
/// in `buf`.
fn edge_has_data(
    io: &dyn BlockIo,
    block: u64,
    range: &Range<usize>,
    buf: &mut [u8; BLOCK_SIZE],
) -> Result<bool> {
    io.read_block(block, buf)?;
    Ok(buf[range.clone()].iter().any(|&b| b != 0))
}

/// Whether a punch of `shape` discards data: a byte that is not zero in an edge, or in a
/// whole block (read until the first one found).
fn punch_discards(io: &dyn BlockIo, map: &BlockMap, shape: &Shape) -> Result<bool> {
    let mut buf = Box::new([0u8; BLOCK_SIZE]);
    for (index, range) in &shape.edges {
        if let Some(block) = map.get(io, *index)?
            && edge_has_data(io, block, range, &mut buf)?
        {
            return Ok(true);
        }
    }
    let mut found = false;
    let walk = map.for_each_in(io, shape.whole.start, shape.whole.end, &mut |_, block| {
        io.read_block(block, &mut buf)?;
        if buf.iter().any(|&b| b != 0) {
            found = true;
            // Stops the walk; never seen by anyone.
            return Err(Error::Failed);
        }
        Ok(())
    });
    if found {
        return Ok(true);
    }
    walk.map(|()| false)
}

impl Filesystem {
    /// Whether punching `range` (within its size) out of `inode` is to be kept, and how;
    /// `None` when it discards nothing (holes and zeros only) or its path is not kept.
    /// Changes nothing.
    pub(crate) fn punch_plan(
        &self,
        st: &mut State,
        io: &dyn BlockIo,
        ino: u64,
        inode: &Inode,
        range: Range<u64>,
    ) -> Result<Option<PunchPlan>> {
        let end = range.end.min(inode.size);
        if range.start >= end {
            return Ok(None);
        }
        let shape = Shape::new(range.start..end, inode.size);
        if !punch_discards(io, &inode.map, &shape)? {
            return Ok(None);
        }
        let path = file_path(st, io, ino, inode)?;
        if !self.hidden_cfg.retention.keeps(&path) {
            return Ok(None);
        }
        let swap = shape.outside() < shape.inside()
            && !has_blocks_from(io, &inode.map, inode.size.div_ceil(BS))?;
        let moved = if swap {
            shape.outside()
        } else {
            shape.inside()
        };
        Ok(Some(PunchPlan {
            room: room_for(moved),
            shape,
            path,
            swap,
        }))
    }

    /// Punches the hole of `plan` (from [`Filesystem::punch_plan`] on this `inode`, under
    /// the same lock) and keeps what it discards as a hidden version by `caller`. The
    /// file's size stays; the caller writes its inode.
    pub(crate) fn keep_punch(
        &self,
        st: &mut State,
        io: &dyn BlockIo,
        inode: &mut Inode,
        plan: PunchPlan,
        caller: Caller,
    ) -> Result<HiddenVersion> {
        let PunchPlan {
            shape, path, swap, ..
        } = plan;
        let now = self.hidden_cfg.now();
        let hidden_ino = st.new_ino();
        let mut hidden = super::cut::version_inode(inode, now);
        let xattr = u64::from(inode.xattr_block != 0);
        let mut alloc = AllocIo {
            alloc: &mut st.alloc,
            io,
        };
        let (first, last) = (shape.whole.start, shape.whole.end);
        if swap {
            // The whole map changes hands; what lies outside the range moves back.
            hidden.map = std::mem::take(&mut inode.map);
            hidden.blocks = inode.blocks.saturating_sub(xattr);
            inode.blocks = xattr;
            for (from, to) in [(0, first), (last, u64::MAX)] {
                if from >= to {
                    continue;
                }
                let m = hidden
                    .map
                    .move_range(&mut inode.map, io, &mut alloc, from, to)?;
                hidden.blocks = hidden.blocks.saturating_sub(m.data + m.freed);
                inode.blocks += m.data + m.allocated;
            }
        } else if first < last {
            let m = inode
                .map
                .move_range(&mut hidden.map, io, &mut alloc, first, last)?;
            inode.blocks = inode.blocks.saturating_sub(m.data + m.freed);
            hidden.blocks += m.data + m.allocated;
        }
        // The edges: the version gets the punched bytes (zeros around them), the file
        // keeps its block with them zeroed.
        let mut buf = Box::new([0u8; BLOCK_SIZE]);
        for (index, range) in &shape.edges {
            let Some(block) = inode.map.get(io, *index)? else {
                continue;
            };
            if !edge_has_data(io, block, range, &mut buf)? {
                continue;
            }
            let mut copy = Box::new([0u8; BLOCK_SIZE]);
            copy[range.clone()].copy_from_slice(&buf[range.clone()]);
            let mapped = hidden.map.get_or_alloc(io, &mut alloc, *index, block)?;
            hidden.blocks += mapped.allocated;
            io.write_block(mapped.block, &copy)?;
            buf[range.clone()].fill(0);
            io.write_block(block, &buf)?;
        }
        st.put_inode(io, hidden_ino, &hidden)?;
        st.sb.hidden_blocks += hidden.blocks;
        st.sb_dirty = true;
        let keep = Keep {
            path,
            event: HiddenEvent::Punch {
                end: shape.range.end,
            },
            caller,
            process: st.hidden.process_name(caller.pid),
            time: now,
            host: self.hidden_cfg.host.clone(),
        };
        let mut record = record_for(&keep, &hidden, hidden_ino, STATE_KEPT);
        record.cut_at = shape.range.start;
        let record = append(st, io, record)?;
        Ok(record.version(1))
    }
}
