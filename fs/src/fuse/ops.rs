//! The kernel's requests: the `fuser::Filesystem` implementation of [`DomFuse`], one
//! filesystem call and one reply each (the kernel options chosen at `init` are in the
//! [module documentation](super)).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use fuser::{
    Errno, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::attr::{TTL, entry_attr, file_attr, file_type, kernel_time, time_set};
use super::audit::{Event, describe_setattr};
use super::{
    DomFuse, MAX_BACKGROUND, MAX_WRITE, READDIR_BATCH, attr, audit, caller, name_bytes, reply_xattr,
};
use crate::Error;
use crate::audit::{AccessMode, AuditOp};
use crate::filesystem::inode::{S_IFMT, S_IFREG};
use crate::filesystem::{RenameFlags, SetAttr};

impl fuser::Filesystem for DomFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        if let Err(nearest) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(nearest);
        }
        let _ = config.set_max_background(MAX_BACKGROUND);
        let mut wanted = vec![
            (InitFlags::FUSE_ASYNC_READ, "async reads"),
            (
                InitFlags::FUSE_PARALLEL_DIROPS,
                "parallel directory operations",
            ),
            (InitFlags::FUSE_ASYNC_DIO, "async direct I/O"),
            (InitFlags::FUSE_CACHE_SYMLINKS, "symlink caching"),
        ];
        if self.writeback_cache && !self.fs.is_read_only() {
            wanted.push((InitFlags::FUSE_WRITEBACK_CACHE, "a writeback cache"));
        }
        for (flag, what) in wanted {
            if config.add_capabilities(flag).is_err() {
                tracing::warn!("the kernel does not offer {what}; going without");
            }
        }
        if self.audit.is_some() {
            let how = if self.fs.is_read_only() {
                "read-only"
            } else {
                "read-write"
            };
            self.note_daemon(AuditOp::Mount, how.into());
            audit::spawn_audit_committer(Arc::downgrade(&self.fs), self.stop_committer.clone());
        }
        Ok(())
    }

    /// Unmount: the final commit. The kernel has written back every dirty page before
    /// the session ends, so this commit holds everything written through the mount (and
    /// the unmount's audit entry).
    fn destroy(&mut self) {
        self.stop_committer.store(true, Ordering::SeqCst);
        self.note_daemon(AuditOp::Unmount, String::new());
        match self.fs.sync() {
            Ok(()) => tracing::info!("final commit done"),
            Err(e) => tracing::error!("final commit failed: {e}"),
        }
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(parent.0, name_bytes(name)) {
            Ok(entry) => {
                self.fs.remember_name(parent.0, name_bytes(name), entry.ino);
                let (attr, generation) = entry_attr(&entry);
                reply.entry(&TTL, &attr, generation);
            }
            Err(Error::Posix(crate::error::Posix::NotFound)) => {
                // A negative entry: the kernel remembers the absence for TTL (creating
                // the name through this mount replaces it at once).
                let attr = file_attr(0, &Default::default());
                reply.entry(&TTL, &attr, Generation(0));
            }
            Err(e) => reply.error(self.fail(req, "lookup", parent.0, &e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
        self.fs.forget_name(ino.0);
    }

    // batch_forget: fuser's default calls `forget` for each node (its element type is
    // not nameable outside fuser 0.18).

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(entry) => reply.attr(&TTL, &file_attr(entry.ino, &entry.inode)),
            Err(e) => reply.error(self.fail(req, "getattr", ino.0, &e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ctime: ctime.map(kernel_time),
        };
        let result = self.fs.setattr_by(ino.0, set, caller(req));
        let path = self.fs.path_of(ino.0);
        let event =
            Event::new(AuditOp::Setattr, ino.0, path.clone()).detail(describe_setattr(&set));
        self.note(req, event, &result);
        if let Ok((_, Some(kept))) = &result {
            // What the cut discarded is kept: a hide, as for an unlink or a punch.
            let event = Event::new(AuditOp::Hide, ino.0, path).detail(format!(
                "truncate to {}: hidden version id {}",
                kept.cut_at, kept.id
            ));
            self.note(req, event, &result);
        }
        match result {
            Ok((entry, _)) => reply.attr(&TTL, &file_attr(entry.ino, &entry.inode)),
            Err(e) => reply.error(self.fail(req, "setattr", ino.0, &e)),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(self.fail(req, "readlink", ino.0, &e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        // The kernel has applied the umask already (FUSE_DONT_MASK is not asked for).
        let result = self.fs.mknod(
            parent.0,
            name_bytes(name),
            mode,
            u64::from(rdev),
            caller(req),
        );
        self.created(req, parent.0, name, "node", &result);
        self.reply_entry(req, reply, result, "mknod", parent.0);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let result = self.fs.mkdir(parent.0, name_bytes(name), mode, caller(req));
        self.created(req, parent.0, name, "directory", &result);
        self.reply_entry(req, reply, result, "mkdir", parent.0);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let event = self.hide_event(parent.0, name, "unlink");
        let result = self.fs.unlink(parent.0, name_bytes(name), caller(req));
        self.note(req, event, &result);
        self.reply_empty(req, reply, result, "unlink", parent.0);
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let event = self.hide_event(parent.0, name, "rmdir");
        let result = self.fs.rmdir(parent.0, name_bytes(name), caller(req));
        self.note(req, event, &result);
        self.reply_empty(req, reply, result, "rmdir", parent.0);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let result = self.fs.symlink(
            parent.0,
            name_bytes(link_name),
            target.as_os_str().as_bytes(),
            caller(req),
        );
        self.created(req, parent.0, link_name, "symlink", &result);
        self.reply_entry(req, reply, result, "symlink", parent.0);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(fuser::RenameFlags::RENAME_WHITEOUT)
            || !(fuser::RenameFlags::RENAME_NOREPLACE | fuser::RenameFlags::RENAME_EXCHANGE)
                .contains(flags)
        {
            reply.error(Errno::EINVAL);
            return;
        }
        let flags = RenameFlags {
            no_replace: flags.contains(fuser::RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(fuser::RenameFlags::RENAME_EXCHANGE),
        };
        let moving = self.rename_events(parent.0, name, newparent.0, newname, flags);
        let result = self.fs.rename(
            parent.0,
            name_bytes(name),
            newparent.0,
            name_bytes(newname),
            flags,
            caller(req),
        );
        self.renamed(req, moving, &result);
        self.reply_empty(req, reply, result, "rename", parent.0);
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let result = self.fs.link(ino.0, newparent.0, name_bytes(newname));
        let event = Event::new(
            AuditOp::Link,
            ino.0,
            self.fs.path_in(newparent.0, name_bytes(newname)),
        )
        .detail(
            self.fs
                .path_of(ino.0)
                .map_or_else(String::new, |p| format!("of {p}")),
        );
        self.note(req, event, &result);
        self.reply_entry(req, reply, result, "link", ino.0);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        // Any access mode and O_DIRECT are fine: handles carry no state, and the kernel
        // has checked permissions (default_permissions) and O_RDONLY on a ro mount.
        if let Err(e) = self.note_open(req, ino.0, flags.0, false) {
            reply.error(e);
            return;
        }
        self.fs.opened(ino.0);
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(self.fail(req, "read", ino.0, &e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // The offset is final: the kernel has placed the write (O_APPEND included).
        match self.fs.write(ino.0, offset, data) {
            Ok(written) => reply.written(written),
            Err(e) => reply.error(self.fail(req, "write", ino.0, &e)),
        }
    }

    /// Called on every close(): not a durability point (fsync is), but never ENOSYS.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.released(ino.0);
        reply.ok();
    }

    /// fsync and fdatasync: durable when the reply is sent (the whole volume commits, so
    /// fdatasync is no cheaper than fsync). Never ENOSYS: after an ENOSYS the kernel stops
    /// sending fsync altogether and reports success without syncing.
    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.sync(req, "fsync", ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        // Listing a directory shows its names: a viewing event too.
        if let Err(e) = self.note_open(req, ino.0, flags.0, true) {
            reply.error(e);
            return;
        }
        self.fs.opened(ino.0);
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.fs.readdir(ino.0, offset, READDIR_BATCH) {
            Ok(entries) => {
                for (next, entry) in entries {
                    let kind: FileType = file_type(entry.kind);
                    if reply.add(
                        INodeNo(entry.ino),
                        next,
                        kind,
                        OsStr::from_bytes(&entry.name),
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(self.fail(req, "readdir", ino.0, &e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.released(ino.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.sync(req, "fsyncdir", ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let st = self.fs.statfs();
        reply.statfs(
            st.blocks,
            st.free,
            st.available,
            st.files,
            st.files_free,
            attr::BLKSIZE,
            255,
            attr::BLKSIZE,
        );
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let result = self.fs.setxattr(ino.0, name_bytes(name), value, flags);
        let event = Event::new(AuditOp::Setattr, ino.0, self.fs.path_of(ino.0)).detail(format!(
            "xattr {} set",
            crate::audit::record::text_of(name_bytes(name))
        ));
        self.note(req, event, &result);
        self.reply_empty(req, reply, result, "setxattr", ino.0);
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(ino.0, name_bytes(name)) {
            Ok(value) => reply_xattr(reply, &value, size),
            Err(e) => reply.error(self.fail(req, "getxattr", ino.0, &e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(ino.0) {
            Ok(names) => reply_xattr(reply, &names, size),
            Err(e) => reply.error(self.fail(req, "listxattr", ino.0, &e)),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.fs.removexattr(ino.0, name_bytes(name));
        let event = Event::new(AuditOp::Setattr, ino.0, self.fs.path_of(ino.0)).detail(format!(
            "xattr {} removed",
            crate::audit::record::text_of(name_bytes(name))
        ));
        self.note(req, event, &result);
        self.reply_empty(req, reply, result, "removexattr", ino.0);
    }

    /// create = mknod of a regular file + open.
    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mode = S_IFREG | (mode & !S_IFMT);
        let result = self
            .fs
            .mknod(parent.0, name_bytes(name), mode, 0, caller(req));
        let path = self.fs.path_in(parent.0, name_bytes(name));
        let ino = result.as_ref().map_or(0, |e| e.ino);
        if ino != 0 {
            self.fs.remember_name(parent.0, name_bytes(name), ino);
        }
        let event = Event::new(AuditOp::Create, ino, path).mode(AccessMode::from_open_flags(flags));
        self.note(req, event, &result);
        match result {
            Ok(entry) => {
                self.fs.opened(entry.ino);
                let (attr, generation) = entry_attr(&entry);
                reply.created(
                    &TTL,
                    &attr,
                    generation,
                    FileHandle(0),
                    FopenFlags::FOPEN_KEEP_CACHE,
                );
            }
            Err(e) => reply.error(self.fail(req, "create", parent.0, &e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let result = self
            .fs
            .fallocate_by(ino.0, offset, length, mode, caller(req));
        if let Ok(Some(kept)) = &result
            && let Some((at, bytes)) = kept.punched()
        {
            // What the punch discarded is kept: a hide, as for an unlink or a cut.
            let event = Event::new(AuditOp::Hide, ino.0, self.fs.path_of(ino.0)).detail(format!(
                "punch {bytes} bytes at {at}: hidden version id {}",
                kept.id
            ));
            self.note(req, event, &result);
        }
        self.reply_empty(req, reply, result.map(|_| ()), "fallocate", ino.0);
    }

    // What domfs does not offer is refused quietly: fuser's defaults log a warning per
    // request, and e.g. every `isatty()` check on a file sends an ioctl.

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    /// ENOSYS once: the kernel then seeks by itself (SEEK_DATA/SEEK_HOLE see one extent).
    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// ENOSYS once: the kernel then copies through read and write.
    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// ENOSYS once: regular files are then always ready, as on a local filesystem.
    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn bmap(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _blocksize: u32,
        _idx: u64,
        reply: fuser::ReplyBmap,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// Never sent under `default_permissions`: the kernel checks permissions itself.
    /// Answered by existence alone, should it come.
    fn access(&self, req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        match self.fs.getattr(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(self.fail(req, "access", ino.0, &e)),
        }
    }
}
