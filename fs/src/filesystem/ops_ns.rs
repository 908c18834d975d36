//! Namespace operations: lookup, create, link, readdir, and the orphan list that keeps
//! unlinked-but-open files alive until their last reference goes (unlink, rmdir and
//! rename are in `ops_remove`).

use super::dir::{DirEntry, FileKind};
use super::hidden;
use super::inode::{Inode, S_IFDIR, S_IFLNK, S_IFMT, Timestamp, kind_of};
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

pub(super) fn check_name(name: &[u8]) -> Result<()> {
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
pub(super) fn touch_dir(
    st: &mut State,
    io: &dyn BlockIo,
    ino: u64,
    now: Timestamp,
    links: i32,
) -> Result<()> {
    let mut dir = st.inode(io, ino)?;
    dir.mtime = now;
    dir.ctime = now;
    dir.nlink = dir.nlink.saturating_add_signed(links);
    st.put_inode(io, ino, &dir)
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
