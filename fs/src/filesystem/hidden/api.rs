//! The library API: list, read, restore and purge hidden versions, and the audit entries
//! about them.

use super::naming::normalize_path;
use super::record::{Record, STATE_KEPT, STATE_OPEN, STATE_PURGED, STATE_RESTORED};
use super::table::retire;
use super::who::process_name;
use super::{HiddenVersion, PurgeReason};
use crate::audit::{AccessMode, AuditOp, AuditRecord};
use crate::error::Posix;
use crate::filesystem::dir::FileKind;
use crate::filesystem::inode::{FLAG_HIDDEN, Inode, ROOT_INO, Timestamp};
use crate::filesystem::state::{State, free_blocks};
use crate::filesystem::{BlockIo, Caller, Filesystem};
use crate::{Error, Result};

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
            crate::filesystem::ops_data::read_range(io, &inode, offset, len)
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
        self.purge_version(path, version, None)
    }

    /// [`Filesystem::hidden_purge`] of version `version` of `path` only while it is the
    /// version with volume-wide id `id` (what the manager signed); `NotFound` otherwise.
    /// Ids are never reused, so the same request cannot purge a second version.
    pub fn hidden_purge_exact(&self, path: &[u8], version: u32, id: u64) -> Result<HiddenVersion> {
        self.purge_version(path, version, Some(id))
    }

    fn purge_version(
        &self,
        path: &[u8],
        version: u32,
        expected: Option<u64>,
    ) -> Result<HiddenVersion> {
        let path = normalize_path(path);
        let purged = self.mutate(0, |st, io| {
            let id = st.hidden.find(&path, version).ok_or(Posix::NotFound)?;
            if expected.is_some_and(|expected| expected != id) {
                return Err(Posix::NotFound.into());
            }
            let number = st
                .hidden
                .number_of(&st.hidden.records.get(&id).ok_or(Posix::NotFound)?.1);
            purge_one(st, io, id).map(|r| r.version(number))
        })?;
        self.hidden_cfg.sink().purged(&purged, PurgeReason::Manager);
        Ok(purged)
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
pub(super) fn purge_one(st: &mut State, io: &dyn BlockIo, id: u64) -> Result<Record> {
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
