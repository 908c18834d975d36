//! The differential tester: a seeded random sequence of file operations applied both to a
//! domfs mount and to a plain directory on the host's filesystem, comparing the two after
//! every step.
//!
//! Each step is one operation (see [`Op`]) run on both sides; its result (the bytes read,
//! the count written, the new offset, the errno of a refusal, …) must be the same on both.
//! After every step the whole tree is compared: the set of paths, file types, modes, link
//! counts, owners, sizes, whole contents of regular files, symlink targets, which paths are
//! hard links of one another, and mtimes the test set explicitly (see below); and every
//! open handle is `fstat`ed on both sides (unlinked-but-open files included). The mount's
//! files are read with `O_DIRECT`, so the contents come from the daemon, not from the
//! kernel's page cache. Every 1000 steps and at the end, every handle is closed, the
//! volume unmounted, `domfs fsck` must pass, and after a fresh mount the tree must still
//! match (persistence).
//!
//! Operations: create (with and without `O_EXCL`, `O_TRUNC`), opens of any path with any
//! access mode (± `O_APPEND`, `O_TRUNC`), a table of open handles (several per file),
//! close, pwrite/pread at random offsets (beyond EOF too: sparse files), cursor
//! read/write/seek (`O_APPEND` writes), writes through a path, truncate/ftruncate (grow and
//! shrink), fallocate mode 0, a write far beyond EOF (GiB offsets) and a truncate to a huge
//! size, each followed by a shrink back, rename (over files, across directories,
//! directories into other directories and into their own subdirectories,
//! `RENAME_NOREPLACE`, `RENAME_EXCHANGE`), link/unlink, mkdir/rmdir, symlink/readlink,
//! mkfifo, chmod, utimensat (explicit times, `UTIME_NOW`, `UTIME_OMIT`, on symlinks too),
//! fsync/fdatasync, fsync of a directory, and every handle operation on files that have
//! been unlinked or renamed meanwhile. Names come from a small pool so that collisions
//! (`EEXIST`, renames over existing entries, non-empty directories) are frequent; now and
//! then a path goes through a file (`ENOTDIR`), through a missing directory (`ENOENT`), or
//! has a name of 255 or 256 bytes (`ENAMETOOLONG`).
//!
//! Known, allowed differences (not compared):
//! - the size of a directory: domfs reports the bytes its records occupy, ext4 multiples
//!   of 4096;
//! - `st_blocks`: allocation granularity differs (ext4 preallocates, keeps extent blocks).
//!   Only roughly: a write far beyond EOF allocates about its data's blocks on both sides,
//!   cutting the file back frees them, and a huge truncate allocates nothing;
//! - atime (relatime on the host, domfs's own rules) and ctime (neither side's value can
//!   be set, so there is nothing exact to compare against);
//! - mtimes the test did not set itself: both sides set "now" at slightly different
//!   instants. An mtime set with utimensat is compared exactly while the host still shows
//!   it; once an operation changes it on the host, domfs must have changed it as well
//!   (it must no longer show the explicit value);
//! - lseek on a directory handle (offsets in a directory are each filesystem's cookies;
//!   ext4 refuses SEEK_END on an indexed directory): not done;
//! - the mtime of a FIFO: pipe I/O through an open FIFO updates it in the kernel's inode
//!   only, which on FUSE never reaches the filesystem (true of every FUSE filesystem);
//! - sizes beyond ext4's limit of 16 TiB (domfs allows 4 PiB): the huge truncate stays
//!   below 1 TiB.
//!
//! Environment: `DOMFS_DIFF_SEED` (a number, a comma-separated list, or `random`; default:
//! three fixed seeds) and `DOMFS_DIFF_OPS` (operations per seed, default 1500). On a
//! mismatch the test panics with the seed, the step, the operation and the last operations
//! before it, and prints the command that replays it; `DOMFS_DIFF_TRACE=1` prints every
//! operation as it runs. At the end of a seed, a summary counts each operation's results
//! (how often it succeeded, which errors it met). `bench/soak.sh` runs it longer.

mod common;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::fcntl::{AT_FDCWD, FallocateFlags, RenameFlags};
use nix::sys::stat::{Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::mount::*;
use common::prng_bytes as data;

const DEFAULT_SEEDS: &[u64] = &[0x5eed_0001, 0x5eed_0002, 0x5eed_0003];
const DEFAULT_OPS: usize = 1500;
/// Names in the pool: few, so that operations collide often.
const NAMES: &[&str] = &["a", "b", "c", "d", "e", "f"];
/// Directories nest at most this deep (new directories further down go to the root).
const MAX_DEPTH: usize = 3;
const MAX_HANDLES: usize = 12;
/// Regular writes stay below this offset (sparse files up to a few MiB).
const SPARSE_LIMIT: u64 = 3 << 20;
/// Above this much file data in the tree, the largest file is cut now and then (every
/// step reads all data on both sides; long soak runs would otherwise slow down).
const DATA_BUDGET: u64 = 12 << 20;
/// Every this many steps (and at the end), all handles are closed and the volume is
/// unmounted, checked and mounted again. A fixed interval, so that a failure replays
/// with `DOMFS_DIFF_OPS` set to its step + 1.
const REMOUNT_EVERY: usize = 1000;
/// How many operations the failure report shows.
const HISTORY: usize = 20;

// ---- operations -------------------------------------------------------------------------

/// What an open asks for.
#[derive(Clone, Copy, Debug)]
enum Access {
    Read,
    Write,
    ReadWrite,
}

#[derive(Clone, Debug)]
enum Op {
    /// open(O_CREAT [| O_EXCL] [| O_TRUNC] [| O_APPEND]) and keep the handle.
    Create {
        path: String,
        mode: u32,
        excl: bool,
        trunc: bool,
        append: bool,
        access: Access,
    },
    /// open() of whatever is at `path` (any kind), kept as a handle.
    Open {
        path: String,
        access: Access,
        append: bool,
        trunc: bool,
    },
    Close {
        h: usize,
    },
    Pwrite {
        h: usize,
        offset: u64,
        len: usize,
        fill: u64,
    },
    Pread {
        h: usize,
        offset: u64,
        len: usize,
    },
    /// write() at the handle's position (at EOF for an O_APPEND handle).
    Write {
        h: usize,
        len: usize,
        fill: u64,
    },
    /// read() at the handle's position.
    Read {
        h: usize,
        len: usize,
    },
    Seek {
        h: usize,
        to: SeekTo,
    },
    /// open(O_WRONLY), pwrite, close.
    WritePath {
        path: String,
        offset: u64,
        len: usize,
        fill: u64,
    },
    Truncate {
        path: String,
        size: u64,
    },
    Ftruncate {
        h: usize,
        size: u64,
    },
    Fallocate {
        h: usize,
        offset: u64,
        len: u64,
    },
    /// pwrite far beyond EOF, fstat, pread around it and in the hole, then ftruncate back.
    FarWrite {
        h: usize,
        offset: u64,
        len: usize,
        fill: u64,
    },
    /// ftruncate to a huge size (nothing allocated), fstat, pread in the hole, and back.
    HugeTruncate {
        h: usize,
        size: u64,
    },
    Rename {
        from: String,
        to: String,
        flags: RenameKind,
    },
    Link {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    Readlink {
        path: String,
    },
    Mkfifo {
        path: String,
        mode: u32,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Utimes {
        path: String,
        atime: TimeArg,
        mtime: TimeArg,
        nofollow: bool,
    },
    Fsync {
        h: usize,
        data_only: bool,
    },
    FsyncDir {
        path: String,
    },
    Fstat {
        h: usize,
    },
    /// Lists a directory (names and kinds as readdir returns them).
    ReadDir {
        path: String,
    },
}

#[derive(Clone, Copy, Debug)]
enum SeekTo {
    Start(u64),
    Current(i64),
    End(i64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RenameKind {
    Plain,
    NoReplace,
    Exchange,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimeArg {
    At(i64, i64),
    Now,
    Omit,
}

impl TimeArg {
    fn spec(self) -> TimeSpec {
        match self {
            TimeArg::At(s, ns) => TimeSpec::new(s, ns),
            TimeArg::Now => TimeSpec::UTIME_NOW,
            TimeArg::Omit => TimeSpec::UTIME_OMIT,
        }
    }
}

/// What an operation returned, compared between the two sides.
#[derive(Clone, PartialEq, Eq)]
enum Val {
    Unit,
    Count(usize),
    Pos(u64),
    Bytes(Vec<u8>),
    Name(Vec<u8>),
    Stat(Stat),
    /// A check that must come out the same on both sides (e.g. "allocated little").
    Flag(bool),
    List(Vec<Res>),
}

type Res = Result<Val, i32>;

impl fmt::Debug for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Unit => write!(f, "ok"),
            Val::Count(n) => write!(f, "{n} bytes"),
            Val::Pos(p) => write!(f, "offset {p}"),
            Val::Bytes(b) => write!(f, "{}", describe_bytes(b)),
            Val::Name(n) => write!(f, "{:?}", String::from_utf8_lossy(n)),
            Val::Stat(s) => write!(f, "{s:?}"),
            Val::Flag(b) => write!(f, "{b}"),
            Val::List(l) => f.debug_list().entries(l.iter().map(ShowRes)).finish(),
        }
    }
}

struct ShowRes<'a>(&'a Res);

impl fmt::Debug for ShowRes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Ok(v) => write!(f, "{v:?}"),
            Err(e) => write!(f, "{}", errno_name(*e)),
        }
    }
}

/// The attributes of an open handle that must match (mtime is checked separately).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stat {
    mode: u32,
    nlink: u64,
    size: u64,
    uid: u32,
    gid: u32,
}

fn errno_name(e: i32) -> String {
    format!("{:?}", nix::errno::Errno::from_raw(e))
}

fn describe_bytes(b: &[u8]) -> String {
    let nonzero = b.iter().filter(|&&x| x != 0).count();
    let head: Vec<u8> = b.iter().take(8).copied().collect();
    format!(
        "{} bytes ({nonzero} non-zero, starting {head:02x?})",
        b.len()
    )
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// The comparable attributes (a directory's size is not: it differs by design).
fn stat_of(m: &fs::Metadata) -> Stat {
    Stat {
        mode: m.mode(),
        nlink: m.nlink(),
        size: if m.is_dir() { 0 } else { m.len() },
        uid: m.uid(),
        gid: m.gid(),
    }
}

fn open_options(access: Access, append: bool, trunc: bool) -> OpenOptions {
    let mut o = OpenOptions::new();
    match access {
        Access::Read => o.read(true),
        Access::Write => o.write(true),
        Access::ReadWrite => o.read(true).write(true),
    };
    // O_APPEND and O_TRUNC are passed as they are: std refuses some combinations itself
    // (O_RDONLY|O_TRUNC, O_APPEND|O_TRUNC), and the kernels are to decide on both sides.
    // Non-blocking, so that opening a FIFO never waits for a peer.
    let mut flags = libc::O_NONBLOCK;
    if append {
        flags |= libc::O_APPEND;
    }
    if trunc {
        flags |= libc::O_TRUNC;
    }
    o.custom_flags(flags);
    o
}

/// Runs `op` on one side: `root` is the side's top directory, `handle(i)` its file of
/// handle `i`. Returns the result to compare and, for opens, the new file.
fn exec(op: &Op, root: &Path, files: &[&File]) -> (Res, Option<File>) {
    let handle = |h: usize| files[h];
    let p = |rel: &str| root.join(rel);
    let unit = |r: io::Result<()>| r.map(|()| Val::Unit).map_err(|e| errno(&e));
    let nix_unit = |r: nix::Result<()>| r.map(|()| Val::Unit).map_err(|e| e as i32);
    match op {
        Op::Create {
            path,
            mode,
            excl,
            trunc,
            append,
            access,
        } => {
            let mut o = open_options(*access, *append, *trunc);
            o.mode(*mode);
            if *excl {
                o.create_new(true);
            } else {
                o.create(true);
            }
            match o.open(p(path)) {
                Ok(f) => (Ok(Val::Unit), Some(f)),
                Err(e) => (Err(errno(&e)), None),
            }
        }
        Op::Open {
            path,
            access,
            append,
            trunc,
        } => match open_options(*access, *append, *trunc).open(p(path)) {
            Ok(f) => (Ok(Val::Unit), Some(f)),
            Err(e) => (Err(errno(&e)), None),
        },
        Op::Close { .. } => (Ok(Val::Unit), None),
        Op::Pwrite {
            h,
            offset,
            len,
            fill,
        } => {
            let r = handle(*h).write_at(&data(*len, *fill), *offset);
            (r.map(Val::Count).map_err(|e| errno(&e)), None)
        }
        Op::Pread { h, offset, len } => (pread(handle(*h), *offset, *len), None),
        Op::Write { h, len, fill } => {
            let r = handle(*h).write(&data(*len, *fill));
            (r.map(Val::Count).map_err(|e| errno(&e)), None)
        }
        Op::Read { h, len } => {
            let mut buf = vec![0u8; *len];
            let r = handle(*h).read(&mut buf).map(|n| {
                buf.truncate(n);
                Val::Bytes(buf)
            });
            (r.map_err(|e| errno(&e)), None)
        }
        Op::Seek { h, to } => {
            let to = match *to {
                SeekTo::Start(o) => SeekFrom::Start(o),
                SeekTo::Current(o) => SeekFrom::Current(o),
                SeekTo::End(o) => SeekFrom::End(o),
            };
            let r = handle(*h).seek(to);
            (r.map(Val::Pos).map_err(|e| errno(&e)), None)
        }
        Op::WritePath {
            path,
            offset,
            len,
            fill,
        } => {
            let r = open_options(Access::Write, false, false)
                .open(p(path))
                .and_then(|f| f.write_at(&data(*len, *fill), *offset));
            (r.map(Val::Count).map_err(|e| errno(&e)), None)
        }
        Op::Truncate { path, size } => {
            let r = nix::unistd::truncate(&p(path), *size as libc::off_t);
            (nix_unit(r), None)
        }
        Op::Ftruncate { h, size } => (unit(handle(*h).set_len(*size)), None),
        Op::Fallocate { h, offset, len } => {
            let r = nix::fcntl::fallocate(
                handle(*h),
                FallocateFlags::empty(),
                *offset as libc::off_t,
                *len as libc::off_t,
            );
            (nix_unit(r), None)
        }
        Op::FarWrite {
            h,
            offset,
            len,
            fill,
        } => {
            let f = handle(*h);
            let before = f.metadata().map(|m| stat_of(&m).size);
            let blocks = blocks_of(f);
            let mut out = vec![before.as_ref().map(|&s| Val::Pos(s)).map_err(errno)];
            out.push(
                f.write_at(&data(*len, *fill), *offset)
                    .map(Val::Count)
                    .map_err(|e| errno(&e)),
            );
            out.push(
                f.metadata()
                    .map(|m| Val::Stat(stat_of(&m)))
                    .map_err(|e| errno(&e)),
            );
            // The hole is not allocated: the data's blocks and a few for the mapping.
            let data_units = (*len as u64).div_ceil(4096) * 8;
            out.push(Ok(Val::Flag(blocks_of(f) <= blocks + data_units + 64)));
            out.push(pread(f, offset - 4096, len + 8192));
            out.push(pread(f, offset / 2, 8192));
            if let Ok(size) = before {
                out.push(unit(f.set_len(size)));
                // Cut back: the far blocks are freed again. (An O_APPEND handle wrote at
                // EOF instead: the partial last block may now be allocated, and a block of
                // the block map for it, which domfs counts in st_blocks.)
                out.push(Ok(Val::Flag(blocks_of(f) <= blocks + 24)));
            }
            (Ok(Val::List(out)), None)
        }
        Op::HugeTruncate { h, size } => {
            let f = handle(*h);
            let before = f.metadata().map(|m| stat_of(&m).size);
            let blocks = blocks_of(f);
            let mut out = vec![before.as_ref().map(|&s| Val::Pos(s)).map_err(errno)];
            out.push(unit(f.set_len(*size)));
            out.push(
                f.metadata()
                    .map(|m| Val::Stat(stat_of(&m)))
                    .map_err(|e| errno(&e)),
            );
            // A huge truncate allocates nothing.
            out.push(Ok(Val::Flag(blocks_of(f) <= blocks + 8)));
            out.push(pread(f, size / 3, 8192));
            out.push(pread(f, size - 100, 8192));
            if let Ok(size) = before {
                out.push(unit(f.set_len(size)));
            }
            (Ok(Val::List(out)), None)
        }
        Op::Rename { from, to, flags } => {
            let r = match flags {
                RenameKind::Plain => unit(fs::rename(p(from), p(to))),
                RenameKind::NoReplace | RenameKind::Exchange => {
                    let f = if *flags == RenameKind::NoReplace {
                        RenameFlags::RENAME_NOREPLACE
                    } else {
                        RenameFlags::RENAME_EXCHANGE
                    };
                    nix_unit(nix::fcntl::renameat2(
                        AT_FDCWD,
                        &p(from),
                        AT_FDCWD,
                        &p(to),
                        f,
                    ))
                }
            };
            (r, None)
        }
        Op::Link { from, to } => (unit(fs::hard_link(p(from), p(to))), None),
        Op::Unlink { path } => (unit(fs::remove_file(p(path))), None),
        Op::Mkdir { path, mode } => {
            let r = nix::unistd::mkdir(&p(path), Mode::from_bits_truncate(*mode));
            (nix_unit(r), None)
        }
        Op::Rmdir { path } => (unit(fs::remove_dir(p(path))), None),
        Op::Symlink { target, path } => (unit(std::os::unix::fs::symlink(target, p(path))), None),
        Op::Readlink { path } => {
            let r = fs::read_link(p(path)).map(|t| Val::Name(t.as_os_str().as_bytes().to_vec()));
            (r.map_err(|e| errno(&e)), None)
        }
        Op::Mkfifo { path, mode } => {
            let r = nix::unistd::mkfifo(&p(path), Mode::from_bits_truncate(*mode));
            (nix_unit(r), None)
        }
        Op::Chmod { path, mode } => (
            unit(fs::set_permissions(
                p(path),
                fs::Permissions::from_mode(*mode),
            )),
            None,
        ),
        Op::Utimes {
            path,
            atime,
            mtime,
            nofollow,
        } => {
            let flag = if *nofollow {
                UtimensatFlags::NoFollowSymlink
            } else {
                UtimensatFlags::FollowSymlink
            };
            let r =
                nix::sys::stat::utimensat(AT_FDCWD, &p(path), &atime.spec(), &mtime.spec(), flag);
            (nix_unit(r), None)
        }
        Op::Fsync { h, data_only } => {
            let f = handle(*h);
            (
                unit(if *data_only {
                    f.sync_data()
                } else {
                    f.sync_all()
                }),
                None,
            )
        }
        Op::FsyncDir { path } => {
            let r = open_options(Access::Read, false, false)
                .open(p(path))
                .and_then(|d| d.sync_all());
            (unit(r), None)
        }
        Op::Fstat { h } => {
            let r = handle(*h).metadata().map(|m| Val::Stat(stat_of(&m)));
            (r.map_err(|e| errno(&e)), None)
        }
        Op::ReadDir { path } => {
            let r = fs::read_dir(p(path)).and_then(|rd| {
                let mut names = Vec::new();
                for e in rd {
                    let e = e?;
                    let kind = kind_char(&e.file_type()?);
                    let mut n = e.file_name().as_bytes().to_vec();
                    n.push(b' ');
                    n.push(kind as u8);
                    names.push(Ok(Val::Name(n)));
                }
                names.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
                Ok(Val::List(names))
            });
            (r.map_err(|e| errno(&e)), None)
        }
    }
}

/// The handle an operation works on.
fn handle_of(op: &Op) -> Option<usize> {
    match op {
        Op::Close { h }
        | Op::Pwrite { h, .. }
        | Op::Pread { h, .. }
        | Op::Write { h, .. }
        | Op::Read { h, .. }
        | Op::Seek { h, .. }
        | Op::Ftruncate { h, .. }
        | Op::Fallocate { h, .. }
        | Op::FarWrite { h, .. }
        | Op::HugeTruncate { h, .. }
        | Op::Fsync { h, .. }
        | Op::Fstat { h } => Some(*h),
        _ => None,
    }
}

fn op_kind(op: &Op) -> &'static str {
    match op {
        Op::Create { .. } => "Create",
        Op::Open { .. } => "Open",
        Op::Close { .. } => "Close",
        Op::Pwrite { .. } => "Pwrite",
        Op::Pread { .. } => "Pread",
        Op::Write { .. } => "Write",
        Op::Read { .. } => "Read",
        Op::Seek { .. } => "Seek",
        Op::WritePath { .. } => "WritePath",
        Op::Truncate { .. } => "Truncate",
        Op::Ftruncate { .. } => "Ftruncate",
        Op::Fallocate { .. } => "Fallocate",
        Op::FarWrite { .. } => "FarWrite",
        Op::HugeTruncate { .. } => "HugeTruncate",
        Op::Rename { .. } => "Rename",
        Op::Link { .. } => "Link",
        Op::Unlink { .. } => "Unlink",
        Op::Mkdir { .. } => "Mkdir",
        Op::Rmdir { .. } => "Rmdir",
        Op::Symlink { .. } => "Symlink",
        Op::Readlink { .. } => "Readlink",
        Op::Mkfifo { .. } => "Mkfifo",
        Op::Chmod { .. } => "Chmod",
        Op::Utimes { .. } => "Utimes",
        Op::Fsync { .. } => "Fsync",
        Op::FsyncDir { .. } => "FsyncDir",
        Op::Fstat { .. } => "Fstat",
        Op::ReadDir { .. } => "ReadDir",
    }
}

/// `st_blocks` (512-byte units) of an open file, 0 if it cannot be had.
fn blocks_of(f: &File) -> u64 {
    f.metadata().map_or(0, |m| m.blocks())
}

fn pread(f: &File, offset: u64, len: usize) -> Res {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    // Loop like a careful reader: a short read is only the end of the file.
    loop {
        match f.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                if got == len {
                    break;
                }
            }
            Err(e) => return Err(errno(&e)),
        }
    }
    buf.truncate(got);
    Ok(Val::Bytes(buf))
}

fn kind_char(t: &fs::FileType) -> char {
    if t.is_dir() {
        'd'
    } else if t.is_symlink() {
        'l'
    } else if t.is_file() {
        'f'
    } else if t.is_fifo() {
        'p'
    } else {
        '?'
    }
}

// ---- tree snapshots ---------------------------------------------------------------------

struct Node {
    kind: char,
    mode: u32,
    nlink: u64,
    uid: u32,
    gid: u32,
    /// None for directories (their sizes differ by design).
    size: Option<u64>,
    ino: u64,
    mtime: (i64, i64),
    content: Option<Vec<u8>>,
    target: Option<Vec<u8>>,
}

/// Every path below `root` (relative, "" for the root itself) with its attributes and, for
/// regular files, contents.
fn snapshot(root: &Path, direct: bool) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut todo = vec![String::new()];
    while let Some(rel) = todo.pop() {
        let path = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let m =
            fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
        let kind = kind_char(&m.file_type());
        let target = (kind == 'l').then(|| {
            fs::read_link(&path)
                .unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()))
                .as_os_str()
                .as_bytes()
                .to_vec()
        });
        if kind == 'd' {
            for e in
                fs::read_dir(&path).unwrap_or_else(|e| panic!("readdir {}: {e}", path.display()))
            {
                let e = e.expect("readdir entry");
                let name = e.file_name().into_string().expect("utf-8 name");
                todo.push(if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                });
            }
        }
        out.insert(
            rel,
            Node {
                kind,
                mode: m.mode(),
                nlink: m.nlink(),
                uid: m.uid(),
                gid: m.gid(),
                size: (kind != 'd').then_some(m.len()),
                ino: m.ino(),
                mtime: (m.mtime(), m.mtime_nsec()),
                content: None,
                target,
            },
        );
    }
    // Contents once per file: read through the first of its names (hard links are
    // compared as such).
    let mut seen = std::collections::HashSet::new();
    for (rel, node) in out.iter_mut() {
        if node.kind == 'f' && seen.insert(node.ino) {
            let path = root.join(rel);
            node.content = Some(
                read_whole(&path, direct)
                    .unwrap_or_else(|e| panic!("read {}: {e}", path.display())),
            );
        }
    }
    out
}

/// A whole file; with `direct`, through `O_DIRECT` (on the mount: from the daemon, not
/// from the kernel's page cache).
fn read_whole(path: &Path, direct: bool) -> io::Result<Vec<u8>> {
    let mut o = OpenOptions::new();
    o.read(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    let mut out = Vec::new();
    o.open(path)?.read_to_end(&mut out)?;
    Ok(out)
}

/// The whole file behind an open handle (also when it has no name any more), through a
/// new open of `/proc/self/fd/N` (with `direct`: `O_DIRECT`, from the daemon).
fn read_through_handle(f: &File, direct: bool) -> io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    read_whole(
        Path::new(&format!("/proc/self/fd/{}", f.as_raw_fd())),
        direct,
    )
}

/// For every path, the first path (in order) that is the same inode: equal on both sides
/// when the hard links are the same.
fn link_groups(tree: &BTreeMap<String, Node>) -> HashMap<&str, &str> {
    let mut first: HashMap<u64, &str> = HashMap::new();
    let mut out = HashMap::new();
    for (path, node) in tree {
        let f = *first.entry(node.ino).or_insert(path.as_str());
        out.insert(path.as_str(), f);
    }
    out
}

fn first_difference(a: &[u8], b: &[u8]) -> String {
    let at = a.iter().zip(b).position(|(x, y)| x != y);
    match at {
        Some(i) => format!(
            "sizes {} and {}, first difference at byte {i}: host {:02x?} domfs {:02x?}",
            a.len(),
            b.len(),
            &a[i..a.len().min(i + 8)],
            &b[i..b.len().min(i + 8)]
        ),
        None => format!(
            "sizes {} and {} (equal up to the shorter)",
            a.len(),
            b.len()
        ),
    }
}

// ---- the run ----------------------------------------------------------------------------

struct Handle {
    host: File,
    dom: File,
    /// What was opened, for the report.
    what: String,
}

struct Run {
    seed: u64,
    rng: StdRng,
    host: PathBuf,
    dom: PathBuf,
    handles: Vec<Handle>,
    /// Host inode → the mtime the test set explicitly and the host still shows.
    pinned: HashMap<u64, (i64, i64)>,
    history: VecDeque<String>,
    step: usize,
    /// The host tree after the last step: (path, kind), the root excluded.
    paths: Vec<(String, char)>,
    /// Per operation kind: how often it succeeded, and its errors (a coverage summary).
    stats: BTreeMap<String, (usize, BTreeMap<String, usize>)>,
    /// File bytes compared, over all steps.
    bytes_compared: u64,
    /// File bytes in the tree after the last step, and its largest file.
    data_bytes: u64,
    largest: Option<(String, u64)>,
}

impl Run {
    fn fail(&self, what: &str) -> ! {
        let mut history = String::new();
        for line in &self.history {
            history.push_str("  ");
            history.push_str(line);
            history.push('\n');
        }
        let mut handles = String::new();
        for (i, h) in self.handles.iter().enumerate() {
            let state = |f: &File| {
                let pos = (&*f).stream_position().map_err(|e| errno_name(errno(&e)));
                match f.metadata() {
                    Ok(m) => format!(
                        "ino {} size {} nlink {} offset {pos:?}",
                        m.ino(),
                        m.len(),
                        m.nlink()
                    ),
                    Err(e) => format!("fstat: {e}"),
                }
            };
            handles.push_str(&format!(
                "  {i}: {}\n      host {}; domfs {}\n",
                h.what,
                state(&h.host),
                state(&h.dom)
            ));
        }
        panic!(
            "domfs differs from the host directory\n  seed {seed}, step {step}: {what}\n\
             open handles:\n{handles}\
             last operations (newest last):\n{history}\
             replay: DOMFS_DIFF_SEED={seed} DOMFS_DIFF_OPS={ops} cargo test -p domfs --test differential -- --nocapture",
            seed = self.seed,
            step = self.step,
            ops = self.step + 1,
        );
    }

    // -- generating operations --

    fn name(&mut self) -> String {
        match self.rng.random_range(0..200) {
            0 => "n".repeat(255),
            1 => "N".repeat(256),
            _ => NAMES[self.rng.random_range(0..NAMES.len())].to_string(),
        }
    }

    fn depth(path: &str) -> usize {
        if path.is_empty() {
            0
        } else {
            path.matches('/').count() + 1
        }
    }

    fn dirs(&self) -> Vec<String> {
        let mut d: Vec<String> = self
            .paths
            .iter()
            .filter(|(_, k)| *k == 'd')
            .map(|(p, _)| p.clone())
            .collect();
        d.push(String::new());
        d
    }

    fn join(dir: &str, name: &str) -> String {
        if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        }
    }

    /// A path: mostly an existing one, else a (maybe new) name in an existing directory,
    /// and now and then one that cannot be resolved. Never the root itself: the host's
    /// root is a plain directory, the mount's root a mount point (rmdir and rename of it
    /// differ by nature, and the host's would escape the test's tree).
    fn path(&mut self) -> String {
        let r = self.rng.random_range(0..100);
        if r < 60 && !self.paths.is_empty() {
            let i = self.rng.random_range(0..self.paths.len());
            return self.paths[i].0.clone();
        }
        if (60..63).contains(&r) {
            // Through a non-directory, or through a missing directory.
            let files: Vec<String> = self
                .paths
                .iter()
                .filter(|(_, k)| *k != 'd')
                .map(|(p, _)| p.clone())
                .collect();
            let name = self.name();
            if !files.is_empty() && self.rng.random_bool(0.5) {
                let f = &files[self.rng.random_range(0..files.len())];
                return format!("{f}/{name}");
            }
            return format!("missing/{name}");
        }
        let dirs = self.dirs();
        let dir = dirs[self.rng.random_range(0..dirs.len())].clone();
        let name = self.name();
        Self::join(&dir, &name)
    }

    /// A path for something new: mostly a name in an existing directory (which may still
    /// exist), else any path.
    fn fresh_path(&mut self) -> String {
        if self.rng.random_bool(0.3) {
            return self.path();
        }
        let dirs = self.dirs();
        let dir = dirs[self.rng.random_range(0..dirs.len())].clone();
        let name = self.name();
        Self::join(&dir, &name)
    }

    /// A path for a new directory: not deeper than MAX_DEPTH.
    fn dir_path(&mut self) -> String {
        let p = self.fresh_path();
        if Self::depth(&p) > MAX_DEPTH {
            let name = self.name();
            return name;
        }
        p
    }

    /// Like [`Self::existing`], and now and then the root (for chmod, utimes, readdir,
    /// fsync of a directory).
    fn existing_or_root(&mut self, kind: Option<char>) -> String {
        if self.rng.random_bool(0.05) {
            return String::new();
        }
        self.existing(kind)
    }

    fn existing(&mut self, kind: Option<char>) -> String {
        let fitting: Vec<&String> = self
            .paths
            .iter()
            .filter(|(_, k)| kind.is_none_or(|want| *k == want))
            .map(|(p, _)| p)
            .collect();
        if fitting.is_empty() || self.rng.random_bool(0.1) {
            return self.path();
        }
        fitting[self.rng.random_range(0..fitting.len())].clone()
    }

    fn access(&mut self) -> Access {
        match self.rng.random_range(0..4) {
            0 => Access::Read,
            1 => Access::Write,
            _ => Access::ReadWrite,
        }
    }

    fn handle(&mut self) -> Option<usize> {
        (!self.handles.is_empty()).then(|| self.rng.random_range(0..self.handles.len()))
    }

    /// The host size of handle `h`'s file, to aim offsets near it.
    fn size_of(&self, h: usize) -> u64 {
        self.handles[h].host.metadata().map_or(0, |m| m.len())
    }

    fn offset_near(&mut self, size: u64) -> u64 {
        match self.rng.random_range(0..100) {
            0..62 => self.rng.random_range(0..=size),
            62..94 => self.rng.random_range(0..=size + (64 << 10)),
            _ => self.rng.random_range(0..SPARSE_LIMIT),
        }
    }

    fn len(&mut self) -> usize {
        match self.rng.random_range(0..100) {
            0 => 0,
            1..70 => self.rng.random_range(1..=4096),
            70..97 => self.rng.random_range(4097..=65536),
            _ => self.rng.random_range(65537..=(1 << 20) + 4097),
        }
    }

    fn mode(&mut self) -> u32 {
        match self.rng.random_range(0..10) {
            0..5 => [0o644, 0o600, 0o755, 0o444, 0o666][self.rng.random_range(0..5)],
            _ => self.rng.random_range(0..0o10000),
        }
    }

    fn time(&mut self) -> TimeArg {
        match self.rng.random_range(0..100) {
            0..70 => TimeArg::At(
                self.rng.random_range(-1_000_000_000..1_600_000_000),
                self.rng.random_range(0..1_000_000_000),
            ),
            70..85 => TimeArg::Now,
            _ => TimeArg::Omit,
        }
    }

    fn symlink_target(&mut self, link: &str) -> String {
        match self.rng.random_range(0..20) {
            // Something that exists below the link's directory. Never `..` nor an
            // absolute target: a symlink moved elsewhere later must not lead out of the
            // tree (on each side it would reach something different, outside the test).
            0..10 => {
                let dir = link.rsplit_once('/').map_or("", |(d, _)| d);
                let below: Vec<String> = self
                    .paths
                    .iter()
                    .filter_map(|(p, _)| {
                        if dir.is_empty() {
                            Some(p.clone())
                        } else {
                            p.strip_prefix(&format!("{dir}/")).map(str::to_string)
                        }
                    })
                    .collect();
                if below.is_empty() {
                    return self.name();
                }
                below[self.rng.random_range(0..below.len())].clone()
            }
            10 => {
                let n = self.rng.random_range(200..=4095);
                let mut t: String = (0..n)
                    .map(|i| if i % 50 == 49 { '/' } else { 'x' })
                    .collect();
                t.truncate(n);
                t
            }
            11 => "loop".to_string(),
            _ => {
                let n = self.name();
                if self.rng.random_bool(0.3) {
                    let m = self.name();
                    format!("{n}/{m}")
                } else {
                    n
                }
            }
        }
    }

    fn next_op(&mut self) -> Op {
        loop {
            if let Some(op) = self.try_gen() {
                return op;
            }
        }
    }

    /// One random operation, or None when the one drawn needs a handle and none is open
    /// (or a new handle and the table is full).
    fn try_gen(&mut self) -> Option<Op> {
        // Long runs: keep the data compared per step bounded.
        if self.data_bytes > DATA_BUDGET && self.rng.random_bool(0.3) {
            let (path, size) = self.largest.clone()?;
            return Some(Op::Truncate {
                path,
                size: self.rng.random_range(0..=size / 4),
            });
        }
        let r = self.rng.random_range(0..120);
        let op = match r {
            0..10 => {
                if self.handles.len() >= MAX_HANDLES {
                    return None;
                }
                let path = self.path();
                Op::Create {
                    path,
                    mode: self.mode(),
                    excl: self.rng.random_bool(0.4),
                    trunc: self.rng.random_bool(0.15),
                    append: self.rng.random_bool(0.2),
                    access: if self.rng.random_bool(0.5) {
                        Access::Write
                    } else {
                        Access::ReadWrite
                    },
                }
            }
            10..17 => {
                if self.handles.len() >= MAX_HANDLES {
                    return None;
                }
                let path = self.existing(None);
                Op::Open {
                    path,
                    access: self.access(),
                    append: self.rng.random_bool(0.25),
                    trunc: self.rng.random_bool(0.05),
                }
            }
            17..22 => Op::Close { h: self.handle()? },
            22..38 => {
                let h = self.handle()?;
                let size = self.size_of(h);
                Op::Pwrite {
                    h,
                    offset: self.offset_near(size),
                    len: self.len(),
                    fill: self.rng.random(),
                }
            }
            38..46 => {
                let h = self.handle()?;
                let size = self.size_of(h);
                Op::Pread {
                    h,
                    offset: self.offset_near(size + 100),
                    len: self.len(),
                }
            }
            46..52 => Op::Write {
                h: self.handle()?,
                len: self.len(),
                fill: self.rng.random(),
            },
            52..55 => Op::Read {
                h: self.handle()?,
                len: self.len(),
            },
            55..58 => {
                let h = self.handle()?;
                if self.handles[h].host.metadata().is_ok_and(|m| m.is_dir()) {
                    // Directory offsets are each filesystem's own cookies.
                    return None;
                }
                let size = self.size_of(h) as i64;
                let to = match self.rng.random_range(0..3) {
                    0 => SeekTo::Start(self.rng.random_range(0..=size as u64 + 8192)),
                    1 => SeekTo::Current(self.rng.random_range(-8192..8192)),
                    _ => SeekTo::End(self.rng.random_range(-size - 100..8192)),
                };
                Op::Seek { h, to }
            }
            58..62 => {
                let path = self.existing(Some('f'));
                let size = fs::symlink_metadata(self.host.join(&path)).map_or(0, |m| m.len());
                Op::WritePath {
                    path,
                    offset: self.offset_near(size),
                    len: self.len(),
                    fill: self.rng.random(),
                }
            }
            62..65 => {
                let path = self.existing(Some('f'));
                let size = fs::symlink_metadata(self.host.join(&path)).map_or(0, |m| m.len());
                Op::Truncate {
                    path,
                    size: self.truncate_size(size),
                }
            }
            65..69 => {
                let h = self.handle()?;
                let size = self.size_of(h);
                Op::Ftruncate {
                    h,
                    size: self.truncate_size(size),
                }
            }
            69..72 => {
                let h = self.handle()?;
                let size = self.size_of(h);
                Op::Fallocate {
                    h,
                    offset: self.offset_near(size),
                    len: self.rng.random_range(0..=(256 << 10)),
                }
            }
            72 => Op::FarWrite {
                h: self.handle()?,
                offset: self.rng.random_range((1 << 30)..(8 << 30)),
                len: self.rng.random_range(1..=20_000),
                fill: self.rng.random(),
            },
            73 => Op::HugeTruncate {
                h: self.handle()?,
                size: self.rng.random_range((1 << 32)..(1 << 40)),
            },
            74..82 => {
                let from = self.existing(None);
                let to = if self.rng.random_bool(0.15) && !from.is_empty() {
                    // Into itself (a directory into its own subtree must fail).
                    let dirs: Vec<String> = self
                        .dirs()
                        .into_iter()
                        .filter(|d| d.starts_with(&format!("{from}/")))
                        .collect();
                    let name = self.name();
                    if !dirs.is_empty() && self.rng.random_bool(0.5) {
                        let d = &dirs[self.rng.random_range(0..dirs.len())];
                        Self::join(d, &name)
                    } else {
                        Self::join(&from, &name)
                    }
                } else {
                    self.path()
                };
                let flags = match self.rng.random_range(0..10) {
                    0 => RenameKind::NoReplace,
                    1 => RenameKind::Exchange,
                    _ => RenameKind::Plain,
                };
                Op::Rename { from, to, flags }
            }
            82..87 => Op::Link {
                from: self.existing(None),
                to: self.fresh_path(),
            },
            87..93 => Op::Unlink {
                path: self.existing(None),
            },
            93..98 => Op::Mkdir {
                path: self.dir_path(),
                mode: self.mode(),
            },
            98..101 => {
                // Half of the time an empty directory (else most would be ENOTEMPTY).
                let empty: Vec<String> = self
                    .paths
                    .iter()
                    .filter(|(p, k)| {
                        *k == 'd'
                            && !self
                                .paths
                                .iter()
                                .any(|(q, _)| q.starts_with(&format!("{p}/")))
                    })
                    .map(|(p, _)| p.clone())
                    .collect();
                let path = if !empty.is_empty() && self.rng.random_bool(0.5) {
                    empty[self.rng.random_range(0..empty.len())].clone()
                } else {
                    self.existing(Some('d'))
                };
                Op::Rmdir { path }
            }
            101..104 => {
                let path = self.fresh_path();
                Op::Symlink {
                    target: self.symlink_target(&path),
                    path,
                }
            }
            104..106 => Op::Readlink {
                path: self.existing(None),
            },
            106 => Op::Mkfifo {
                path: self.fresh_path(),
                mode: self.mode(),
            },
            107..110 => Op::Chmod {
                path: self.existing_or_root(None),
                mode: self.mode(),
            },
            110..114 => Op::Utimes {
                path: self.existing_or_root(None),
                atime: self.time(),
                mtime: self.time(),
                nofollow: self.rng.random_bool(0.3),
            },
            114..116 => Op::Fsync {
                h: self.handle()?,
                data_only: self.rng.random_bool(0.5),
            },
            116 => Op::FsyncDir {
                path: self.existing_or_root(Some('d')),
            },
            117..119 => Op::Fstat { h: self.handle()? },
            _ => Op::ReadDir {
                path: self.existing_or_root(Some('d')),
            },
        };
        Some(op)
    }

    fn truncate_size(&mut self, size: u64) -> u64 {
        match self.rng.random_range(0..20) {
            0..9 => self.rng.random_range(0..=size),
            9..19 => self.rng.random_range(0..=size + (64 << 10)),
            _ => self.rng.random_range(0..SPARSE_LIMIT),
        }
    }

    // -- running and comparing --

    fn describe(&self, op: &Op) -> String {
        match handle_of(op) {
            Some(h) => format!("{op:?}  [handle {h}: {}]", self.handles[h].what),
            None => format!("{op:?}"),
        }
    }

    /// The operation's kind for the summary; handle operations on files unlinked while
    /// open are counted apart.
    fn kind(&self, op: &Op) -> String {
        let unlinked = handle_of(op).is_some_and(|h| {
            self.handles[h]
                .host
                .metadata()
                .is_ok_and(|m| m.is_file() && m.nlink() == 0)
        });
        if unlinked {
            format!("{} (unlinked file)", op_kind(op))
        } else {
            op_kind(op).to_string()
        }
    }

    fn apply(&mut self, op: &Op) {
        let line = format!("#{} {}", self.step, self.describe(op));
        let kind = self.kind(op);
        self.history.push_back(line);
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }
        let host_files: Vec<&File> = self.handles.iter().map(|h| &h.host).collect();
        let dom_files: Vec<&File> = self.handles.iter().map(|h| &h.dom).collect();
        let (host_res, host_file) = exec(op, &self.host, &host_files);
        let (dom_res, dom_file) = exec(op, &self.dom, &dom_files);
        if std::env::var_os("DOMFS_DIFF_TRACE").is_some() {
            println!("{}", self.history.back().map_or("", String::as_str));
        }
        let entry = self.stats.entry(kind).or_default();
        match &host_res {
            Ok(_) => entry.0 += 1,
            Err(e) => *entry.1.entry(errno_name(*e)).or_default() += 1,
        }
        if host_res != dom_res {
            self.fail(&format!(
                "results differ: host {:?}, domfs {:?}",
                ShowRes(&host_res),
                ShowRes(&dom_res)
            ));
        }
        match (host_file, dom_file) {
            (Some(host), Some(dom)) => {
                let what = format!("#{} {op:?}", self.step);
                self.handles.push(Handle { host, dom, what });
            }
            (None, None) => {}
            _ => unreachable!("equal results, one side opened"),
        }
        if let Op::Close { h } = op {
            self.handles.swap_remove(*h);
        }
        if let (
            Op::Utimes {
                path,
                mtime,
                nofollow,
                ..
            },
            Ok(_),
        ) = (op, &host_res)
        {
            let m = if *nofollow {
                fs::symlink_metadata(self.host.join(path))
            } else {
                fs::metadata(self.host.join(path))
            };
            // With both times UTIME_OMIT, utimensat succeeds without looking at the path.
            let Ok(m) = m else {
                return;
            };
            let ino = m.ino();
            match mtime {
                // Pipe I/O through an open FIFO updates its times in the kernel's inode
                // only (a FUSE filesystem never hears of it): not compared.
                _ if m.file_type().is_fifo() => {
                    self.pinned.remove(&ino);
                }
                TimeArg::At(s, ns) => {
                    self.pinned.insert(ino, (*s, *ns));
                }
                TimeArg::Now => {
                    self.pinned.remove(&ino);
                }
                TimeArg::Omit => {}
            }
        }
    }

    /// Checks one mtime against the pins: returns an error text, and whether to unpin.
    fn check_mtime(
        &self,
        host_ino: u64,
        host: (i64, i64),
        dom: (i64, i64),
    ) -> (Option<String>, bool) {
        let Some(&pin) = self.pinned.get(&host_ino) else {
            return (None, false);
        };
        if host == pin {
            if dom != pin {
                return (
                    Some(format!(
                        "mtime set to {pin:?} with utimensat: host still shows it, domfs shows {dom:?}"
                    )),
                    false,
                );
            }
            (None, false)
        } else if dom == pin {
            (
                Some(format!(
                    "mtime set to {pin:?} with utimensat: the host changed it to {host:?}, domfs still shows it"
                )),
                true,
            )
        } else {
            (None, true)
        }
    }

    fn compare(&mut self) {
        let host = snapshot(&self.host, false);
        let dom = snapshot(&self.dom, true);
        let largest = host
            .iter()
            .filter_map(|(p, n)| Some((n.content.as_ref()?.len() as u64, p)))
            .max();
        self.largest = largest.map(|(size, p)| (p.clone(), size));
        self.data_bytes = host
            .values()
            .map(|n| n.content.as_ref().map_or(0, Vec::len) as u64)
            .sum::<u64>();
        self.bytes_compared += self.data_bytes;
        // The tester's own invariant: no symlink may lead out of the tree.
        for (path, node) in &host {
            if let Some(t) = &node.target {
                assert!(
                    !t.starts_with(b"/") && !t.split(|&b| b == b'/').any(|c| c == b".."),
                    "the tester made a symlink {path} -> {:?} that may leave the tree",
                    String::from_utf8_lossy(t)
                );
            }
        }
        let host_names: Vec<&String> = host.keys().collect();
        let dom_names: Vec<&String> = dom.keys().collect();
        if host_names != dom_names {
            let only_host: Vec<&&String> = host_names
                .iter()
                .filter(|n| !dom.contains_key(**n))
                .collect();
            let only_dom: Vec<&&String> = dom_names
                .iter()
                .filter(|n| !host.contains_key(**n))
                .collect();
            self.fail(&format!(
                "trees differ: only on the host {only_host:?}, only on domfs {only_dom:?}"
            ));
        }
        let host_groups = link_groups(&host);
        let dom_groups = link_groups(&dom);
        let mut unpin = Vec::new();
        for (path, h) in &host {
            let d = &dom[path];
            let show = if path.is_empty() { "/" } else { path.as_str() };
            let mut diffs = Vec::new();
            if h.kind != d.kind {
                diffs.push(format!("kind {} vs {}", h.kind, d.kind));
            }
            if h.mode != d.mode {
                diffs.push(format!("mode {:o} vs {:o}", h.mode, d.mode));
            }
            if h.nlink != d.nlink {
                diffs.push(format!("nlink {} vs {}", h.nlink, d.nlink));
            }
            if (h.uid, h.gid) != (d.uid, d.gid) {
                diffs.push(format!("owner {}:{} vs {}:{}", h.uid, h.gid, d.uid, d.gid));
            }
            if h.size != d.size {
                diffs.push(format!("size {:?} vs {:?}", h.size, d.size));
            }
            if h.target != d.target {
                diffs.push(format!(
                    "symlink target {:?} vs {:?}",
                    h.target.as_deref().map(String::from_utf8_lossy),
                    d.target.as_deref().map(String::from_utf8_lossy)
                ));
            }
            if let (Some(a), Some(b)) = (&h.content, &d.content)
                && a != b
            {
                diffs.push(format!("contents: {}", first_difference(a, b)));
            }
            if host_groups[path.as_str()] != dom_groups[path.as_str()] {
                diffs.push(format!(
                    "hard links: on the host the same file as {:?}, on domfs as {:?}",
                    host_groups[path.as_str()],
                    dom_groups[path.as_str()]
                ));
            }
            let (err, drop_pin) = self.check_mtime(h.ino, h.mtime, d.mtime);
            diffs.extend(err);
            if drop_pin {
                unpin.push(h.ino);
            }
            if !diffs.is_empty() {
                self.fail(&format!(
                    "{show} differs (host vs domfs): {}",
                    diffs.join("; ")
                ));
            }
        }
        let mut unlinked_seen = std::collections::HashSet::new();
        for (i, handle) in self.handles.iter().enumerate() {
            let h = handle.host.metadata().expect("fstat host handle");
            let d = match handle.dom.metadata() {
                Ok(d) => d,
                Err(e) => self.fail(&format!(
                    "fstat of handle {i} ({}) on domfs: {e}",
                    handle.what
                )),
            };
            if stat_of(&h) != stat_of(&d) {
                self.fail(&format!(
                    "fstat of handle {i} ({}): host {:?}, domfs {:?}",
                    handle.what,
                    stat_of(&h),
                    stat_of(&d)
                ));
            }
            let (err, drop_pin) = self.check_mtime(
                h.ino(),
                (h.mtime(), h.mtime_nsec()),
                (d.mtime(), d.mtime_nsec()),
            );
            if let Some(err) = err {
                self.fail(&format!("handle {i} ({}): {err}", handle.what));
            }
            if drop_pin {
                unpin.push(h.ino());
            }
            // Files unlinked while open are not in the tree: compare their contents
            // through the handle (once per file; through O_DIRECT on the mount).
            if h.is_file() && h.nlink() == 0 && unlinked_seen.insert(h.ino()) {
                let a = read_through_handle(&handle.host, false);
                let b = read_through_handle(&handle.dom, true);
                match (a, b) {
                    (Ok(a), Ok(b)) if a == b => {}
                    (Ok(a), Ok(b)) => self.fail(&format!(
                        "contents of the unlinked file of handle {i} ({}): {}",
                        handle.what,
                        first_difference(&a, &b)
                    )),
                    (a, b) => self.fail(&format!(
                        "reading the unlinked file of handle {i} ({}): host {:?}, domfs {:?}",
                        handle.what,
                        a.map(|v| v.len()),
                        b.map(|v| v.len())
                    )),
                }
            }
        }
        for ino in unpin {
            self.pinned.remove(&ino);
        }
        self.paths = host
            .iter()
            .filter(|(p, _)| !p.is_empty())
            .map(|(p, n)| (p.clone(), n.kind))
            .collect();
    }

    /// Closes every handle (the files unlinked while open go with them).
    fn close_all(&mut self) {
        self.handles.clear();
        // An inode number may be reused by the host once its last handle is gone.
        let live: std::collections::HashSet<u64> = snapshot(&self.host, false)
            .values()
            .map(|n| n.ino)
            .collect();
        self.pinned.retain(|ino, _| live.contains(ino));
    }
}

fn seeds() -> Vec<u64> {
    match std::env::var("DOMFS_DIFF_SEED") {
        Ok(s) if s.trim() == "random" => {
            let seed: u64 = rand::random();
            println!("DOMFS_DIFF_SEED=random: seed {seed}");
            vec![seed]
        }
        Ok(s) => s
            .split(',')
            .map(|x| {
                let x = x.trim();
                x.strip_prefix("0x")
                    .map_or_else(|| x.parse(), |h| u64::from_str_radix(h, 16))
                    .unwrap_or_else(|e| panic!("DOMFS_DIFF_SEED: {x:?}: {e}"))
            })
            .collect(),
        Err(_) => DEFAULT_SEEDS.to_vec(),
    }
}

fn ops_per_seed() -> usize {
    std::env::var("DOMFS_DIFF_OPS").map_or(DEFAULT_OPS, |s| {
        s.trim()
            .parse()
            .unwrap_or_else(|e| panic!("DOMFS_DIFF_OPS: {s:?}: {e}"))
    })
}

/// Ends the mount (all handles closed), checks the volume, mounts it again and compares.
fn remount(vol: &Volume, mp: &Path, m: Mount, run: &mut Run, why: &str) -> Mount {
    run.close_all();
    m.unmount();
    vol.fsck();
    let m = vol.mount(mp, &[]);
    run.history.push_back(format!(
        "-- {why}: closed every handle, unmounted, fsck, mounted again --"
    ));
    run.compare();
    m
}

fn run_seed(seed: u64, ops: usize) {
    let started = Instant::now();
    let vol = Volume::with_size("512M");
    let mp = vol.mountpoint("m");
    let host = vol.dir.path().join("host");
    fs::create_dir(&host).expect("mkdir host");
    // The root of a fresh domfs volume is 0755, root-owned.
    fs::set_permissions(&host, fs::Permissions::from_mode(0o755)).expect("chmod host");
    let mut m = vol.mount(&mp, &[]);
    let mut run = Run {
        seed,
        rng: StdRng::seed_from_u64(seed),
        host,
        dom: mp.clone(),
        handles: Vec::new(),
        pinned: HashMap::new(),
        history: VecDeque::new(),
        step: 0,
        paths: Vec::new(),
        stats: BTreeMap::new(),
        bytes_compared: 0,
        data_bytes: 0,
        largest: None,
    };
    run.compare();
    for step in 0..ops {
        run.step = step;
        if step > 0 && step % REMOUNT_EVERY == 0 {
            m = remount(&vol, &mp, m, &mut run, "periodic remount");
        }
        let op = run.next_op();
        run.apply(&op);
        run.compare();
    }
    run.step = ops;
    m = remount(&vol, &mp, m, &mut run, "at the end");
    let files = run.paths.len();
    m.unmount();
    vol.fsck();
    assert_nothing_mounted_under(vol.dir.path());
    // Nothing was made beside the two trees.
    let mut beside: Vec<String> = fs::read_dir(vol.dir.path())
        .expect("read the test's directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    beside.sort();
    assert_eq!(
        beside,
        ["host", "k", "m", "v.vol"],
        "entries beside the trees"
    );
    let mut summary = String::new();
    for (kind, (ok, errors)) in &run.stats {
        summary.push_str(&format!("  {kind}: {ok} ok"));
        for (e, n) in errors {
            summary.push_str(&format!(", {n} {e}"));
        }
        summary.push('\n');
    }
    println!("seed {seed}: results per operation (host side):\n{summary}");
    println!(
        "seed {seed}: {ops} operations compared, {files} paths at the end, {} MiB of \
         contents compared, {:.1} s",
        run.bytes_compared >> 20,
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn domfs_behaves_like_the_host_filesystem() {
    if !fuse_available() {
        return;
    }
    let ops = ops_per_seed();
    for seed in seeds() {
        run_seed(seed, ops);
    }
}
