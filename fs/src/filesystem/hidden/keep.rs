//! Keeping a file that loses its last name (unlink, rmdir, rename-over): the inode itself
//! becomes the hidden version, at once or at its last close.

use super::naming::entry_path;
use super::record::{Record, STATE_KEPT, STATE_OPEN};
use super::table::{append, patch};
use super::{HiddenEvent, HiddenVersion};
use crate::Result;
use crate::filesystem::inode::{FLAG_HIDDEN, Inode, Timestamp};
use crate::filesystem::state::State;
use crate::filesystem::{BlockIo, Caller, Filesystem};

/// What is needed to keep a file that loses its last name.
pub(crate) struct Keep {
    pub(super) path: Vec<u8>,
    pub(super) event: HiddenEvent,
    pub(super) caller: Caller,
    pub(super) process: Vec<u8>,
    pub(super) time: Timestamp,
    pub(super) host: Vec<u8>,
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
}

pub(super) fn record_for(keep: &Keep, inode: &Inode, ino: u64, state: u8) -> Record {
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
