//! Directories: the on-disk record format and the in-memory index built from it.
//!
//! # On-disk format
//!
//! A directory's content is a sequence of 4096-byte blocks (stored in the directory
//! inode's blocks, reached through [`DirStorage`]). Each block is a chain of records, 8-byte
//! aligned, starting at offset 0; each record's `rec_len` leads to the next, and the chain
//! covers exactly the 4096 bytes of the block. All integers are little-endian.
//!
//! | Offset         | Size                      | Field      | Meaning |
//! |----------------|---------------------------|------------|---------|
//! | 0              | 8                         | `ino`      | u64 inode number; **0 = free space** |
//! | 8              | 2                         | `rec_len`  | u16 bytes from this record to the next: ≥ 16, a multiple of 8, ends within the block |
//! | 10             | 1                         | `name_len` | 1..=255 on a live record; 0 on free space (ignored there) |
//! | 11             | 1                         | `kind`     | 1 regular, 2 directory, 3 symlink, 4 fifo, 5 socket, 6 char device, 7 block device; 0 on free space (ignored there) |
//! | 12             | `name_len`                | name       | the name's bytes, no terminator: no `/`, no NUL, never `.` or `..` |
//! | 12 + `name_len`| `rec_len` − 12 − `name_len` | padding  | zeros (writers zero it; readers do not check) |
//!
//! A live record needs `size(n) = (12 + n + 7) & !7` bytes (16..=272); whatever its
//! `rec_len` holds beyond that is its *slack*. A free record (`ino` = 0) is all slack.
//! `.` and `..` are not stored: the caller synthesizes them from the inode.
//!
//! The *position* of a record is `block_index × 4096 + offset`. Live records never move,
//! so a position is a stable readdir cookie for as long as its entry lives.
//!
//! - **Insert** takes the first record (live or free) of the first block whose slack fits
//!   `size(n)`: a free record becomes the new record whole; a live record is cut to
//!   `size(its name)` and the new record takes the rest of its `rec_len`. With no room
//!   anywhere, a fresh block holding one record of `rec_len` 4096 is appended.
//! - **Remove** merges the record's bytes into the previous record of its block (whose
//!   `rec_len` grows) and zeroes them; the first record of a block instead becomes free
//!   (`ino`, `name_len`, `kind`, name zeroed, `rec_len` kept). A block whose entries are all
//!   removed is a single free record of 4096 bytes, reused by later inserts.
//! - **Replace** rewrites `ino` and `kind` in place.
//!
//! Each operation reads and rewrites exactly one block. Loading validates every block and
//! refuses (as [`Error::CorruptFilesystem`] naming the block) a `rec_len` below 16, not a
//! multiple of 8 or past the block end, a chain ending short of the block end, a live
//! record with an empty, overrunning or invalid name or an unknown kind, and duplicate
//! names. Error messages never contain names.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::error::Posix;
use crate::types::{BLOCK_SIZE, Block};
use crate::{Error, Result};

/// The longest name a directory entry may have, in bytes.
pub const MAX_NAME_LEN: usize = 255;

const HEADER: usize = 12;
const MIN_REC: usize = 16;
const BLOCK: u64 = BLOCK_SIZE as u64;

/// The bytes a live record with a name of `name_len` bytes occupies (its padded size).
fn rec_size(name_len: usize) -> usize {
    (HEADER + name_len + 7) & !7
}

/// A directory's blocks, as the caller stores them in the directory inode.
pub trait DirStorage {
    fn block_count(&self) -> u64;
    fn read(&mut self, index: u64, out: &mut Block) -> Result<()>;
    /// `index == block_count()` appends a block.
    fn write(&mut self, index: u64, data: &Block) -> Result<()>;
}

/// The type of the inode an entry names (stored in the entry, so readdir needs no inode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FileKind {
    Regular = 1,
    Directory = 2,
    Symlink = 3,
    Fifo = 4,
    Socket = 5,
    CharDevice = 6,
    BlockDevice = 7,
}

impl FileKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => FileKind::Regular,
            2 => FileKind::Directory,
            3 => FileKind::Symlink,
            4 => FileKind::Fifo,
            5 => FileKind::Socket,
            6 => FileKind::CharDevice,
            7 => FileKind::BlockDevice,
            _ => return None,
        })
    }
}

/// One entry as readdir returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    pub kind: FileKind,
}

/// Whether `name` may be stored in a directory (also the load-time check).
fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != b"."
        && name != b".."
        && !name.iter().any(|&c| c == b'/' || c == 0)
}

/// The name rules of insert and replace.
fn check_new_name(name: &[u8]) -> Result<()> {
    if name.len() > MAX_NAME_LEN {
        Err(Posix::NameTooLong.into())
    } else if !valid_name(name) {
        Err(Posix::Invalid.into())
    } else {
        Ok(())
    }
}

fn check_ino(ino: u64) -> Result<()> {
    if ino == 0 {
        return Err(Error::Invalid(
            "a directory entry cannot name inode 0".into(),
        ));
    }
    Ok(())
}

/// One parsed record of a block.
#[derive(Clone, Copy, Debug)]
struct Rec {
    off: usize,
    rec_len: usize,
    name_len: usize,
    /// `(ino, kind)` of a live record; `None` for free space.
    live: Option<(u64, FileKind)>,
}

impl Rec {
    fn slack(&self) -> usize {
        match self.live {
            Some(_) => self.rec_len - rec_size(self.name_len),
            None => self.rec_len,
        }
    }

    fn name<'a>(&self, block: &'a Block) -> &'a [u8] {
        &block[self.off + HEADER..self.off + HEADER + self.name_len]
    }
}

fn corrupt(index: u64, what: std::fmt::Arguments<'_>) -> Error {
    Error::CorruptFilesystem(format!("directory block {index}: {what}"))
}

/// Parses and validates the record at `off` (a multiple of 8 below the block size).
fn parse_rec(b: &Block, index: u64, off: usize) -> Result<Rec> {
    let left = BLOCK_SIZE - off;
    if left < MIN_REC {
        return Err(corrupt(
            index,
            format_args!("the record chain ends {left} bytes short of the block end"),
        ));
    }
    let mut ino = [0u8; 8];
    ino.copy_from_slice(&b[off..off + 8]);
    let ino = u64::from_le_bytes(ino);
    let rec_len = usize::from(u16::from_le_bytes([b[off + 8], b[off + 9]]));
    let (name_len, kind) = (usize::from(b[off + 10]), b[off + 11]);
    let bad = |what: std::fmt::Arguments<'_>| corrupt(index, format_args!("offset {off}: {what}"));
    if rec_len < MIN_REC || !rec_len.is_multiple_of(8) {
        return Err(bad(format_args!("bad rec_len {rec_len}")));
    }
    if rec_len > left {
        return Err(bad(format_args!(
            "rec_len {rec_len} runs past the block end"
        )));
    }
    if ino == 0 {
        return Ok(Rec {
            off,
            rec_len,
            name_len,
            live: None,
        });
    }
    if name_len == 0 {
        return Err(bad(format_args!("live record with an empty name")));
    }
    if HEADER + name_len > rec_len {
        return Err(bad(format_args!(
            "name of {name_len} bytes overruns rec_len {rec_len}"
        )));
    }
    let Some(kind) = FileKind::from_u8(kind) else {
        return Err(bad(format_args!("unknown file kind {kind}")));
    };
    let rec = Rec {
        off,
        rec_len,
        name_len,
        live: Some((ino, kind)),
    };
    if !valid_name(rec.name(b)) {
        return Err(bad(format_args!("invalid name")));
    }
    Ok(rec)
}

/// The records of a block in chain order; stops after the first error.
struct Records<'a> {
    block: &'a Block,
    index: u64,
    off: usize,
}

fn records(block: &Block, index: u64) -> Records<'_> {
    Records {
        block,
        index,
        off: 0,
    }
}

impl Iterator for Records<'_> {
    type Item = Result<Rec>;

    fn next(&mut self) -> Option<Result<Rec>> {
        if self.off >= BLOCK_SIZE {
            return None;
        }
        let rec = parse_rec(self.block, self.index, self.off);
        self.off = match &rec {
            Ok(r) => self.off + r.rec_len,
            Err(_) => BLOCK_SIZE,
        };
        Some(rec)
    }
}

/// The largest slack of any record of a (valid) block.
fn block_slack(block: &Block, index: u64) -> Result<u16> {
    let mut best = 0;
    for rec in records(block, index) {
        best = best.max(rec?.slack());
    }
    // At most BLOCK_SIZE, so it fits.
    Ok(best as u16)
}

fn put_u16(b: &mut Block, at: usize, v: usize) {
    b[at..at + 2].copy_from_slice(&(v as u16).to_le_bytes());
}

/// Writes a live record at `off` spanning `rec_len` bytes, zeroing its padding.
fn write_rec(b: &mut Block, off: usize, rec_len: usize, name: &[u8], ino: u64, kind: FileKind) {
    b[off..off + 8].copy_from_slice(&ino.to_le_bytes());
    put_u16(b, off + 8, rec_len);
    b[off + 10] = name.len() as u8;
    b[off + 11] = kind as u8;
    b[off + HEADER..off + HEADER + name.len()].copy_from_slice(name);
    b[off + HEADER + name.len()..off + rec_len].fill(0);
}

/// A max-segment tree over the blocks' largest slack: finds the first block with room
/// for a record in O(log blocks).
#[derive(Debug, Default)]
struct SlackTree {
    len: usize,
    cap: usize,
    tree: Vec<u16>,
}

impl SlackTree {
    fn build(leaves: &[u16], cap: usize) -> Self {
        let cap = cap.max(leaves.len()).max(1).next_power_of_two();
        let mut tree = vec![0u16; 2 * cap];
        tree[cap..cap + leaves.len()].copy_from_slice(leaves);
        for n in (1..cap).rev() {
            tree[n] = tree[2 * n].max(tree[2 * n + 1]);
        }
        Self {
            len: leaves.len(),
            cap,
            tree,
        }
    }

    /// Sets block `i`'s slack; `i == len` appends a block.
    fn set(&mut self, i: usize, v: u16) {
        if i == self.len {
            if self.len == self.cap {
                let leaves = self
                    .tree
                    .get(self.cap..self.cap + self.len)
                    .unwrap_or(&[])
                    .to_vec();
                *self = Self::build(&leaves, self.cap * 2);
            }
            self.len += 1;
        }
        let mut n = self.cap + i;
        self.tree[n] = v;
        while n > 1 {
            n /= 2;
            self.tree[n] = self.tree[2 * n].max(self.tree[2 * n + 1]);
        }
    }

    /// The first block whose largest slack is at least `need`.
    fn first_fit(&self, need: u16) -> Option<usize> {
        if self.len == 0 || self.tree[1] < need {
            return None;
        }
        let mut n = 1;
        while n < self.cap {
            n = if self.tree[2 * n] >= need {
                2 * n
            } else {
                2 * n + 1
            };
        }
        Some(n - self.cap)
    }
}

/// What the index knows of a live entry.
#[derive(Clone, Copy, Debug)]
struct Slot {
    pos: u64,
    ino: u64,
    kind: FileKind,
}

/// A directory's entries, indexed by name (hashed) and by position (ordered), with a
/// summary of each block's free space. Mutations go through [`DirStorage`] block by block.
#[derive(Debug, Default)]
pub struct Directory {
    by_name: HashMap<Arc<[u8]>, Slot>,
    by_pos: BTreeMap<u64, Arc<[u8]>>,
    slack: SlackTree,
}

impl Directory {
    /// A new directory with no blocks.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Reads every block of `storage`, validates it and builds the index.
    pub fn load(storage: &mut dyn DirStorage) -> Result<Self> {
        let count = storage.block_count();
        let mut dir = Self::default();
        let mut leaves = Vec::new();
        let mut buf: Box<Block> = Box::new([0; BLOCK_SIZE]);
        for index in 0..count {
            storage.read(index, &mut buf)?;
            let mut best = 0;
            for rec in records(&buf, index) {
                let rec = rec?;
                best = best.max(rec.slack());
                let Some((ino, kind)) = rec.live else {
                    continue;
                };
                let name: Arc<[u8]> = Arc::from(rec.name(&buf));
                let pos = index * BLOCK + rec.off as u64;
                match dir.by_name.entry(name.clone()) {
                    Entry::Occupied(first) => {
                        return Err(corrupt(
                            index,
                            format_args!(
                                "offset {}: duplicate name (first at position {})",
                                rec.off,
                                first.get().pos
                            ),
                        ));
                    }
                    Entry::Vacant(v) => {
                        v.insert(Slot { pos, ino, kind });
                    }
                }
                dir.by_pos.insert(pos, name);
            }
            leaves.push(best as u16);
        }
        dir.slack = SlackTree::build(&leaves, 0);
        Ok(dir)
    }

    pub fn lookup(&self, name: &[u8]) -> Option<(u64, FileKind)> {
        self.by_name.get(name).map(|s| (s.ino, s.kind))
    }

    /// The position (readdir cookie) of `name`'s entry.
    pub fn position(&self, name: &[u8]) -> Option<u64> {
        self.by_name.get(name).map(|s| s.pos)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The number of blocks the directory occupies.
    pub fn block_count(&self) -> u64 {
        self.slack.len as u64
    }

    /// Entries with position ≥ `from`, in position order: (position, entry). Positions
    /// are stable while the entry lives; resume a readdir with `entries_from(last + 1)`.
    pub fn entries_from(&self, from: u64) -> impl Iterator<Item = (u64, DirEntry)> + '_ {
        self.by_pos.range(from..).filter_map(|(&pos, name)| {
            let slot = self.by_name.get(name)?;
            Some((
                pos,
                DirEntry {
                    name: name.to_vec(),
                    ino: slot.ino,
                    kind: slot.kind,
                },
            ))
        })
    }

    /// Adds `name → ino`; [`Posix::Exists`] if the name is present.
    pub fn insert(
        &mut self,
        storage: &mut dyn DirStorage,
        name: &[u8],
        ino: u64,
        kind: FileKind,
    ) -> Result<()> {
        check_new_name(name)?;
        check_ino(ino)?;
        if self.by_name.contains_key(name) {
            return Err(Posix::Exists.into());
        }
        self.check_count(storage)?;
        let need = rec_size(name.len());
        let mut buf: Box<Block> = Box::new([0; BLOCK_SIZE]);
        let (index, off) = match self.slack.first_fit(need as u16) {
            Some(i) => {
                let index = i as u64;
                storage.read(index, &mut buf)?;
                let mut fit = None;
                for rec in records(&buf, index) {
                    let rec = rec?;
                    if rec.slack() >= need {
                        fit = Some(rec);
                        break;
                    }
                }
                let Some(rec) = fit else {
                    return Err(stale(index));
                };
                let off = match rec.live {
                    None => rec.off,
                    Some(_) => {
                        let own = rec_size(rec.name_len);
                        put_u16(&mut buf, rec.off + 8, own);
                        rec.off + own
                    }
                };
                write_rec(&mut buf, off, rec.off + rec.rec_len - off, name, ino, kind);
                (index, off)
            }
            None => {
                write_rec(&mut buf, 0, BLOCK_SIZE, name, ino, kind);
                (self.block_count(), 0)
            }
        };
        let best = block_slack(&buf, index)?;
        storage.write(index, &buf)?;
        self.slack.set(index as usize, best);
        let pos = index * BLOCK + off as u64;
        let name: Arc<[u8]> = Arc::from(name);
        self.by_name.insert(name.clone(), Slot { pos, ino, kind });
        self.by_pos.insert(pos, name);
        Ok(())
    }

    /// Removes `name`, returning what it named; [`Posix::NotFound`] if absent.
    pub fn remove(&mut self, storage: &mut dyn DirStorage, name: &[u8]) -> Result<(u64, FileKind)> {
        if name.len() > MAX_NAME_LEN {
            return Err(Posix::NameTooLong.into());
        }
        let Some(&slot) = self.by_name.get(name) else {
            return Err(Posix::NotFound.into());
        };
        self.check_count(storage)?;
        let mut buf: Box<Block> = Box::new([0; BLOCK_SIZE]);
        let (index, prev, rec) = self.locate(storage, &mut buf, name, slot)?;
        let off = rec.off;
        match prev {
            Some(p) => {
                put_u16(&mut buf, p.off + 8, p.rec_len + rec.rec_len);
                buf[off..off + rec.rec_len].fill(0);
            }
            None => {
                buf[off..off + 8].fill(0);
                buf[off + 10..off + rec.rec_len].fill(0);
            }
        }
        let best = block_slack(&buf, index)?;
        storage.write(index, &buf)?;
        self.slack.set(index as usize, best);
        self.by_name.remove(name);
        self.by_pos.remove(&slot.pos);
        Ok((slot.ino, slot.kind))
    }

    /// Points an existing name at another inode in place (rename over an existing name),
    /// returning what it named before; [`Posix::NotFound`] if absent.
    pub fn replace(
        &mut self,
        storage: &mut dyn DirStorage,
        name: &[u8],
        ino: u64,
        kind: FileKind,
    ) -> Result<(u64, FileKind)> {
        check_new_name(name)?;
        check_ino(ino)?;
        let Some(&slot) = self.by_name.get(name) else {
            return Err(Posix::NotFound.into());
        };
        self.check_count(storage)?;
        let mut buf: Box<Block> = Box::new([0; BLOCK_SIZE]);
        let (index, _, rec) = self.locate(storage, &mut buf, name, slot)?;
        buf[rec.off..rec.off + 8].copy_from_slice(&ino.to_le_bytes());
        buf[rec.off + 11] = kind as u8;
        storage.write(index, &buf)?;
        if let Some(s) = self.by_name.get_mut(name) {
            s.ino = ino;
            s.kind = kind;
        }
        Ok((slot.ino, slot.kind))
    }

    /// Reads the block of `slot` into `buf` and finds its record and the one before it,
    /// checking that the block still says what the index says.
    fn locate(
        &self,
        storage: &mut dyn DirStorage,
        buf: &mut Block,
        name: &[u8],
        slot: Slot,
    ) -> Result<(u64, Option<Rec>, Rec)> {
        let (index, off) = (slot.pos / BLOCK, (slot.pos % BLOCK) as usize);
        storage.read(index, buf)?;
        let mut prev = None;
        for rec in records(buf, index) {
            let rec = rec?;
            if rec.off == off {
                if rec.live != Some((slot.ino, slot.kind)) || rec.name(buf) != name {
                    break;
                }
                return Ok((index, prev, rec));
            }
            if rec.off > off {
                break;
            }
            prev = Some(rec);
        }
        Err(stale(index))
    }

    fn check_count(&self, storage: &dyn DirStorage) -> Result<()> {
        let (have, want) = (storage.block_count(), self.block_count());
        if have != want {
            return Err(Error::CorruptFilesystem(format!(
                "directory has {have} blocks but its index expects {want}"
            )));
        }
        Ok(())
    }
}

fn stale(index: u64) -> Error {
    corrupt(
        index,
        format_args!("the block no longer matches the directory index"),
    )
}

#[cfg(test)]
#[path = "dir_tests.rs"]
mod tests;
