//! The hidden-version table on disk: reading it, appending a record, rewriting one in
//! place, and retiring one (giving back a table block left with no live record).

use super::BS;
use super::record::{Record, STATE_OPEN};
use crate::filesystem::BlockIo;
use crate::filesystem::alloc::AllocIo;
use crate::filesystem::inode::Inode;
use crate::filesystem::state::State;
use crate::types::BLOCK_SIZE;
use crate::{Error, Result};

/// Blocks appending a record may take (a table block and its block-map path).
pub(crate) const RECORD_ROOM: u64 = 6;

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

/// Appends `record` (its id assigned here) to the table and the index.
pub(super) fn append(st: &mut State, io: &dyn BlockIo, mut record: Record) -> Result<Record> {
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
pub(super) fn patch(st: &mut State, io: &dyn BlockIo, offset: u64, record: &Record) -> Result<()> {
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
pub(super) fn retire(st: &mut State, io: &dyn BlockIo, id: u64, state: u8) -> Result<Record> {
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
