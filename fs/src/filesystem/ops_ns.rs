//! Namespace operations: lookup, create, link, unlink, rename, and the orphan list that
//! keeps unlinked-but-open files alive until their last reference goes.

use super::dir::{DirEntry, FileKind};
use super::hidden::{self, HiddenEvent, HiddenVersion, Keep, RECORD_ROOM};
use super::inode::{Inode, ROOT_INO, S_IFDIR, S_IFLNK, S_IFMT, Timestamp, kind_of};
use super::state::{State, free_blocks};
use super::{BlockIo, Caller, Entry, Filesystem};
use crate::error::Posix;
use crate::types::BLOCK_SIZE;
use crate::{Error, Result};

/// The longest symlink target (PATH_MAX less its terminating NUL).
pub const MAX_SYMLINK: usize = 4095;
const MAX_LINKS: u32 = 65_000;

/// `renameat2` flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    pub no_replace: bool,
    pub exchange: bool,
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > 255 {
        return Err(Posix::NameTooLong.into());
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(Posix::Invalid.into());
    }
    Ok(())
}

impl Filesystem {
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Entry> {
        if name.len() > 255 {
            return Err(Posix::NameTooLong.into());
        }
        self.inspect(|st, io| {
            let ino = match name {
                b"." => parent,
                b".." => st.inode(io, parent)?.parent,
                _ => {
                    st.with_dir(io, parent, |dir, _| Ok(dir.lookup(name)))?
                        .ok_or(Posix::NotFound)?
                        .0
                }
            };
            let inode = st.inode(io, ino)?;
            *st.lookups.entry(ino).or_insert(0) += 1;
            if name != b"." && name != b".." {
                st.hidden.remember(parent, name, ino);
            }
            Ok(Entry { ino, inode })
        })
    }

    pub fn getattr(&self, ino: u64) -> Result<Entry> {
        self.inspect(|st, io| {
            Ok(Entry {
                ino,
                inode: st.inode(io, ino)?,
            })
        })
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        let release = {
            let mut st = self.lock();
            let left = st.lookups.get(&ino).copied().unwrap_or(0).saturating_sub(n);
            if left == 0 {
                st.lookups.remove(&ino);
            } else {
                st.lookups.insert(ino, left);
            }
            left == 0
        };
        if release {
            self.release_if_unlinked(ino);
        }
    }

    pub fn opened(&self, ino: u64) {
        *self.lock().open.entry(ino).or_insert(0) += 1;
    }

    pub fn released(&self, ino: u64) {
        let last = {
            let mut st = self.lock();
            let count = st.open.entry(ino).or_insert(1);
            *count = count.saturating_sub(1);
            if *count == 0 {
                st.open.remove(&ino);
                true
            } else {
                false
            }
        };
        if last {
            self.release_if_unlinked(ino);
        }
    }

    fn release_if_unlinked(&self, ino: u64) {
        if self.read_only {
            return;
        }
        let result = self.mutate(0, |st, io| {
            if st.lookups.contains_key(&ino) || st.open.contains_key(&ino) {
                return Ok(());
            }
            match st.inode(io, ino) {
                Ok(inode) if inode.nlink == 0 => {
                    // Kept as a hidden version as of now, its last close, or freed.
                    if !hidden::finish_open(st, io, ino)? {
                        free_inode(st, io, ino, inode)?;
                    }
                    let name = ino.to_string();
                    st.with_orphans(io, |dir, storage| {
                        match dir.remove(storage, name.as_bytes()) {
                            Ok(_) | Err(Error::Posix(Posix::NotFound)) => Ok(()),
                            Err(e) => Err(e),
                        }
                    })
                }
                _ => Ok(()),
            }
        });
        if let Err(e) = result {
            tracing::warn!("freeing unlinked inode {ino}: {e}");
        }
    }

    /// Creates a regular file, FIFO, socket or device node (the kind is in `mode`).
    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u64,
        caller: Caller,
    ) -> Result<Entry> {
        let kind = kind_of(mode).map_err(|_| Posix::Invalid)?;
        if kind == FileKind::Directory || kind == FileKind::Symlink {
            return Err(Posix::Invalid.into());
        }
        self.create_node(parent, name, mode, rdev, caller, None)
    }

    pub fn mkdir(&self, parent: u64, name: &[u8], mode: u32, caller: Caller) -> Result<Entry> {
        self.create_node(parent, name, S_IFDIR | (mode & !S_IFMT), 0, caller, None)
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        caller: Caller,
    ) -> Result<Entry> {
        if target.is_empty() {
            return Err(Posix::NotFound.into());
        }
        if target.len() > MAX_SYMLINK {
            return Err(Posix::NameTooLong.into());
        }
        self.create_node(parent, name, S_IFLNK | 0o777, 0, caller, Some(target))
    }

    fn create_node(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u64,
        caller: Caller,
        target: Option<&[u8]>,
    ) -> Result<Entry> {
        check_name(name)?;
        let kind = kind_of(mode)?;
        self.mutate(2, |st, io| {
            let dir_inode = st.inode(io, parent)?;
            if !dir_inode.is_dir() {
                return Err(Posix::NotDirectory.into());
            }
            if dir_inode.nlink == 0 {
                return Err(Posix::NotFound.into());
            }
            if st
                .with_dir(io, parent, |dir, _| Ok(dir.lookup(name)))?
                .is_some()
            {
                return Err(Posix::Exists.into());
            }
            if kind == FileKind::Directory && dir_inode.nlink >= MAX_LINKS {
                return Err(Posix::TooManyLinks.into());
            }
            let now = Timestamp::now();
            // setgid directories pass their group (and, to directories, the bit) on.
            let setgid_dir = dir_inode.mode & 0o2000 != 0;
            let mut mode = mode;
            if setgid_dir && kind == FileKind::Directory {
                mode |= 0o2000;
            }
            let ino = st.new_ino();
            let mut inode = Inode {
                mode,
                uid: caller.uid,
                gid: if setgid_dir {
                    dir_inode.gid
                } else {
                    caller.gid
                },
                nlink: if kind == FileKind::Directory { 2 } else { 1 },
                atime: now,
                mtime: now,
                ctime: now,
                crtime: now,
                rdev,
                generation: 1,
                parent,
                ..Inode::default()
            };
            if let Some(target) = target {
                let mut block = Box::new([0u8; BLOCK_SIZE]);
                block[..target.len()].copy_from_slice(target);
                super::ops_data::write_blocks(st, io, &mut inode, 0, &block[..target.len()])?;
                inode.size = target.len() as u64;
            }
            st.put_inode(io, ino, &inode)?;
            st.with_dir(io, parent, |dir, storage| {
                dir.insert(storage, name, ino, kind)
            })?;
            let mut dir_inode = st.inode(io, parent)?;
            if kind == FileKind::Directory {
                dir_inode.nlink += 1;
            }
            dir_inode.mtime = now;
            dir_inode.ctime = now;
            st.put_inode(io, parent, &dir_inode)?;
            *st.lookups.entry(ino).or_insert(0) += 1;
            st.hidden.remember(parent, name, ino);
            Ok(Entry { ino, inode })
        })
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let entry = self.getattr(ino)?;
        if entry.inode.mode & S_IFMT != S_IFLNK {
            return Err(Posix::Invalid.into());
        }
        self.read(ino, 0, entry.inode.size.min(MAX_SYMLINK as u64) as u32)
    }

    pub fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> Result<Entry> {
        check_name(new_name)?;
        self.mutate(2, |st, io| {
            let mut inode = st.inode(io, ino)?;
            if inode.is_dir() {
                return Err(Posix::NotPermitted.into());
            }
            if inode.nlink >= MAX_LINKS {
                return Err(Posix::TooManyLinks.into());
            }
            if st
                .with_dir(io, new_parent, |dir, _| Ok(dir.lookup(new_name)))?
                .is_some()
            {
                return Err(Posix::Exists.into());
            }
            let kind = inode.kind()?;
            st.with_dir(io, new_parent, |dir, storage| {
                dir.insert(storage, new_name, ino, kind)
            })?;
            let now = Timestamp::now();
            inode.nlink += 1;
            inode.ctime = now;
            inode.parent = new_parent;
            st.put_inode(io, ino, &inode)?;
            touch_dir(st, io, new_parent, now, 0)?;
            *st.lookups.entry(ino).or_insert(0) += 1;
            st.hidden.remember(new_parent, new_name, ino);
            Ok(Entry { ino, inode })
        })
    }

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
        let hidden = loop {
            let outcome = self.mutate(room, |st, io| {
                self.remove_in(st, io, parent, name, directory, caller, room)
            })?;
            match outcome {
                Ok(hidden) => break hidden,
                // Nothing was changed: again, with the room it needs.
                Err(needed) => room = needed,
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
        let hidden = self.mutate(2 + RECORD_ROOM, |st, io| {
            let (ino, kind) = st
                .with_dir(io, parent, |dir, _| Ok(dir.lookup(name)))?
                .ok_or(Posix::NotFound)?;
            let target = st.with_dir(io, new_parent, |dir, _| Ok(dir.lookup(new_name)))?;
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
                return Ok(None);
            }
            if let Some((other, other_kind)) = target {
                if flags.no_replace {
                    return Err(Posix::Exists.into());
                }
                if other == ino {
                    // Two names of one file: POSIX says do nothing.
                    return Ok(None);
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
            Ok(hidden)
        })?;
        self.report_hidden(hidden);
        Ok(())
    }

    /// Directory entries after `offset` (0 = from the start): `.` and `..` first, then
    /// the entries in their stable order. Each comes with the offset of the next.
    pub fn readdir(&self, ino: u64, offset: u64, max: usize) -> Result<Vec<(u64, DirEntry)>> {
        self.inspect(|st, io| {
            let inode = st.inode(io, ino)?;
            if !inode.is_dir() {
                return Err(Posix::NotDirectory.into());
            }
            let mut out = Vec::new();
            if offset == 0 {
                out.push((
                    1,
                    DirEntry {
                        name: b".".to_vec(),
                        ino,
                        kind: FileKind::Directory,
                    },
                ));
            }
            if offset <= 1 {
                out.push((
                    2,
                    DirEntry {
                        name: b"..".to_vec(),
                        ino: inode.parent,
                        kind: FileKind::Directory,
                    },
                ));
            }
            let from = offset.saturating_sub(2);
            st.with_dir(io, ino, |dir, _| {
                out.extend(
                    dir.entries_from(from)
                        .take(max.saturating_sub(out.len()))
                        .map(|(pos, entry)| (pos + 3, entry)),
                );
                Ok(())
            })?;
            Ok(out)
        })
    }
}

/// Updates a directory's times and, for subdirectories arriving or leaving, its links.
fn touch_dir(st: &mut State, io: &dyn BlockIo, ino: u64, now: Timestamp, links: i32) -> Result<()> {
    let mut dir = st.inode(io, ino)?;
    dir.mtime = now;
    dir.ctime = now;
    dir.nlink = dir.nlink.saturating_add_signed(links);
    st.put_inode(io, ino, &dir)
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

pub(crate) fn free_inode(
    st: &mut State,
    io: &dyn BlockIo,
    ino: u64,
    mut inode: Inode,
) -> Result<()> {
    free_blocks(st, io, &mut inode)?;
    st.dirs.remove(&ino);
    st.put_inode(io, ino, &Inode::default())?;
    st.sb.inodes_used = st.sb.inodes_used.saturating_sub(1);
    st.sb_dirty = true;
    Ok(())
}

/// At mount: whatever was unlinked while open when the volume last stopped is freed.
pub(crate) fn free_orphans(st: &mut State, io: &dyn BlockIo) -> Result<()> {
    let orphans: Vec<u64> = st.with_orphans(io, |dir, _| {
        Ok(dir.entries_from(0).map(|(_, e)| e.ino).collect())
    })?;
    for ino in orphans {
        if let Ok(inode) = st.inode(io, ino)
            && !hidden::finish_open(st, io, ino)?
        {
            free_inode(st, io, ino, inode)?;
        }
    }
    let mut orphan_inode = st.sb.orphans.clone();
    free_blocks(st, io, &mut orphan_inode)?;
    orphan_inode.size = 0;
    if orphan_inode != st.sb.orphans {
        st.sb.orphans = orphan_inode;
        st.sb_dirty = true;
    }
    Ok(())
}
