//! Names that go away: unlink, rmdir and rename (over an existing name too). Here a file
//! that loses its last name becomes a hidden version (or an orphan until its last close),
//! so each operation first finds out whether it keeps something and reserves the room for
//! that record only then (a scratch path keeps nothing and works on a full volume).

use super::dir::FileKind;
use super::hidden::{self, HiddenEvent, HiddenVersion, Keep, RECORD_ROOM};
use super::inode::{ROOT_INO, Timestamp};
use super::ops_ns::{RenameFlags, check_name, free_inode, touch_dir};
use super::state::State;
use super::{BlockIo, Caller, Filesystem};
use crate::error::Posix;
use crate::{Error, Result};

impl Filesystem {
    /// Removes a name. `caller` is who asks (recorded when the content is kept).
    pub fn unlink(&self, parent: u64, name: &[u8], caller: Caller) -> Result<()> {
        self.remove(parent, name, false, caller)
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, parent: u64, name: &[u8], caller: Caller) -> Result<()> {
        self.remove(parent, name, true, caller)
    }

    fn remove(&self, parent: u64, name: &[u8], directory: bool, caller: Caller) -> Result<()> {
        if name.len() > 255 {
            return Err(Posix::NameTooLong.into());
        }
        if name == b"." {
            return Err(Posix::Invalid.into());
        }
        if name == b".." {
            return Err(Posix::NotEmpty.into());
        }
        // Keeping the file takes room for its record, known once the name is looked up:
        // such a removal runs again with that room. One that keeps nothing (a scratch
        // path, another link left) needs none, so it works on a full volume. Unless the
        // volume is nearly full, the room is there from the start (one pass).
        let mut room = if self.store.has_room_for(RECORD_ROOM + super::OP_SLACK) {
            RECORD_ROOM
        } else {
            0
        };
        let mut retried = false;
        let hidden = loop {
            let outcome = self.mutate(room, |st, io| {
                self.remove_in(st, io, parent, name, directory, caller, room)
            });
            match outcome {
                Ok(Ok(hidden)) => break hidden,
                // Nothing was changed: again, with the room it needs.
                Ok(Err(needed)) => room = needed,
                // The room guessed up front is gone: once more without it, in case
                // this removal keeps nothing.
                Err(Error::NoSpace) if room > 0 && !retried => {
                    retried = true;
                    room = 0;
                }
                Err(e) => return Err(e),
            }
        };
        self.report_hidden(hidden);
        Ok(())
    }

    /// One pass of [`Filesystem::remove`] with `room` reserved: `Ok(Err(needed))`, with
    /// nothing changed, when keeping the file needs more.
    #[allow(clippy::too_many_arguments)]
    fn remove_in(
        &self,
        st: &mut State,
        io: &dyn BlockIo,
        parent: u64,
        name: &[u8],
        directory: bool,
        caller: Caller,
        room: u64,
    ) -> Result<std::result::Result<Option<HiddenVersion>, u64>> {
        let (ino, kind) = st
            .with_dir(io, parent, |dir, _| Ok(dir.lookup(name)))?
            .ok_or(Posix::NotFound)?;
        if directory && kind != FileKind::Directory {
            return Err(Posix::NotDirectory.into());
        }
        if !directory && kind == FileKind::Directory {
            return Err(Posix::IsDirectory.into());
        }
        if directory && !st.with_dir(io, ino, |dir, _| Ok(dir.is_empty()))? {
            return Err(Posix::NotEmpty.into());
        }
        let event = if directory {
            HiddenEvent::Rmdir
        } else {
            HiddenEvent::Unlink
        };
        let keep = self.keep_for(st, io, parent, name, ino, event, caller)?;
        if keep.is_some() && room < RECORD_ROOM {
            return Ok(Err(RECORD_ROOM));
        }
        st.with_dir(io, parent, |dir, storage| dir.remove(storage, name))?;
        let now = Timestamp::now();
        touch_dir(st, io, parent, now, if directory { -1 } else { 0 })?;
        drop_link(st, io, ino, now, keep.as_ref()).map(Ok)
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: RenameFlags,
        caller: Caller,
    ) -> Result<()> {
        check_name(new_name)?;
        if name.len() > 255 {
            return Err(Posix::NameTooLong.into());
        }
        if flags.exchange && flags.no_replace {
            return Err(Posix::Invalid.into());
        }
        // As in `remove`: room only for what this rename does — a new name may grow the
        // directory (2 blocks), a replaced file that is kept needs its record; replacing
        // or exchanging names in place and dropping a scratch file need none (so they work
        // on a full volume).
        let mut room = if self.store.has_room_for(2 + RECORD_ROOM + super::OP_SLACK) {
            2 + RECORD_ROOM
        } else {
            0
        };
        let mut retried = false;
        let hidden = loop {
            let outcome = self.mutate(room, |st, io| {
                let (ino, kind) = st
                    .with_dir(io, parent, |dir, _| Ok(dir.lookup(name)))?
                    .ok_or(Posix::NotFound)?;
                let target = st.with_dir(io, new_parent, |dir, _| Ok(dir.lookup(new_name)))?;
                let new_name_room = if target.is_none() { 2 } else { 0 };
                if new_name_room > room {
                    // Nothing was changed yet.
                    return Ok(Err(new_name_room));
                }
                if kind == FileKind::Directory
                    && parent != new_parent
                    && is_ancestor(st, io, ino, new_parent)?
                {
                    return Err(Posix::Invalid.into());
                }
                let now = Timestamp::now();
                let mut hidden = None;
                if flags.exchange {
                    let (other, other_kind) = target.ok_or(Posix::NotFound)?;
                    if other_kind == FileKind::Directory
                        && parent != new_parent
                        && is_ancestor(st, io, other, parent)?
                    {
                        return Err(Posix::Invalid.into());
                    }
                    st.with_dir(io, parent, |dir, s| dir.replace(s, name, other, other_kind))?;
                    st.with_dir(io, new_parent, |dir, s| dir.replace(s, new_name, ino, kind))?;
                    if parent != new_parent {
                        let delta = i32::from(kind == FileKind::Directory)
                            - i32::from(other_kind == FileKind::Directory);
                        reparent(st, io, ino, kind, new_parent, now)?;
                        reparent(st, io, other, other_kind, parent, now)?;
                        touch_dir(st, io, parent, now, -delta)?;
                        touch_dir(st, io, new_parent, now, delta)?;
                    } else {
                        touch_dir(st, io, parent, now, 0)?;
                    }
                    st.hidden.remember(parent, name, other);
                    st.hidden.remember(new_parent, new_name, ino);
                    return Ok(Ok(None));
                }
                if let Some((other, other_kind)) = target {
                    if flags.no_replace {
                        return Err(Posix::Exists.into());
                    }
                    if other == ino {
                        // Two names of one file: POSIX says do nothing.
                        return Ok(Ok(None));
                    }
                    match (
                        kind == FileKind::Directory,
                        other_kind == FileKind::Directory,
                    ) {
                        (true, false) => return Err(Posix::NotDirectory.into()),
                        (false, true) => return Err(Posix::IsDirectory.into()),
                        (true, true) if !st.with_dir(io, other, |dir, _| Ok(dir.is_empty()))? => {
                            return Err(Posix::NotEmpty.into());
                        }
                        _ => {}
                    }
                    let keep = self.keep_for(
                        st,
                        io,
                        new_parent,
                        new_name,
                        other,
                        HiddenEvent::RenameOver,
                        caller,
                    )?;
                    if keep.is_some() && room < RECORD_ROOM {
                        // Nothing was changed yet.
                        return Ok(Err(RECORD_ROOM));
                    }
                    st.with_dir(io, new_parent, |dir, s| dir.replace(s, new_name, ino, kind))?;
                    st.with_dir(io, parent, |dir, s| dir.remove(s, name))?;
                    let dirs_moved = i32::from(kind == FileKind::Directory);
                    // A replaced directory leaves the new parent; a moved one arrives from
                    // another parent (net zero) or was already counted there (net minus one).
                    let arriving = if parent != new_parent { dirs_moved } else { 0 };
                    touch_dir(st, io, new_parent, now, arriving - dirs_moved)?;
                    if parent != new_parent {
                        touch_dir(st, io, parent, now, -dirs_moved)?;
                    }
                    hidden = drop_link(st, io, other, now, keep.as_ref())?;
                } else {
                    st.with_dir(io, new_parent, |dir, s| dir.insert(s, new_name, ino, kind))?;
                    st.with_dir(io, parent, |dir, s| dir.remove(s, name))?;
                    let dirs_moved = i32::from(kind == FileKind::Directory);
                    if parent != new_parent {
                        touch_dir(st, io, parent, now, -dirs_moved)?;
                        touch_dir(st, io, new_parent, now, dirs_moved)?;
                    } else {
                        touch_dir(st, io, parent, now, 0)?;
                    }
                }
                reparent(st, io, ino, kind, new_parent, now)?;
                st.hidden.remember(new_parent, new_name, ino);
                Ok(Ok(hidden))
            });
            match outcome {
                Ok(Ok(hidden)) => break hidden,
                Ok(Err(needed)) => room = needed,
                Err(Error::NoSpace) if room > 0 && !retried => {
                    retried = true;
                    room = 0;
                }
                Err(e) => return Err(e),
            }
        };
        self.report_hidden(hidden);
        Ok(())
    }
}

fn reparent(
    st: &mut State,
    io: &dyn BlockIo,
    ino: u64,
    _kind: FileKind,
    parent: u64,
    now: Timestamp,
) -> Result<()> {
    let mut inode = st.inode(io, ino)?;
    inode.parent = parent;
    inode.ctime = now;
    st.put_inode(io, ino, &inode)
}

/// Whether `ancestor` is `ino` or above it.
fn is_ancestor(st: &mut State, io: &dyn BlockIo, ancestor: u64, mut ino: u64) -> Result<bool> {
    for _ in 0..4096 {
        if ino == ancestor {
            return Ok(true);
        }
        if ino == ROOT_INO {
            return Ok(false);
        }
        ino = st.inode(io, ino)?.parent;
    }
    Err(Error::CorruptFilesystem(
        "directory parents form a loop".into(),
    ))
}

/// One name of `ino` is gone. With its last name it is kept as a hidden version (with
/// `keep`) or freed — in both cases only once nothing references it any more: until then
/// it is an orphan.
fn drop_link(
    st: &mut State,
    io: &dyn BlockIo,
    ino: u64,
    now: Timestamp,
    keep: Option<&Keep>,
) -> Result<Option<HiddenVersion>> {
    let mut inode = st.inode(io, ino)?;
    inode.nlink = if inode.is_dir() {
        0
    } else {
        inode.nlink.saturating_sub(1)
    };
    inode.ctime = now;
    if inode.nlink > 0 {
        st.put_inode(io, ino, &inode)?;
        return Ok(None);
    }
    let referenced = st.lookups.contains_key(&ino) || st.open.contains_key(&ino);
    let version = match keep {
        Some(keep) => Some(hidden::hide(st, io, ino, inode.clone(), keep, referenced)?),
        None => None,
    };
    if referenced {
        st.put_inode(io, ino, &inode)?;
        let name = ino.to_string();
        let kind = inode.kind()?;
        st.with_orphans(io, |dir, storage| {
            dir.insert(storage, name.as_bytes(), ino, kind)
        })?;
    } else if version.is_none() {
        free_inode(st, io, ino, inode)?;
    }
    Ok(version)
}
