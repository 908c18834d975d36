//! The filesystem's in-memory state and the helpers every operation uses: the inode
//! table, directories, and a file's blocks. Everything here runs under the filesystem's
//! lock, inside one operation.

use std::collections::HashMap;

use super::BlockIo;
use super::alloc::{AllocIo, Allocator};
use super::bmap::BlockMap;
use super::dir::{DirStorage, Directory};
use super::hidden::HiddenIndex;
use super::inode::{INODE_SIZE, INODES_PER_BLOCK, Inode};
use super::meta::FsSuper;
use crate::error::Posix;
use crate::types::{BLOCK_SIZE, Block};
use crate::{Error, Result};

pub(crate) struct State {
    pub sb: FsSuper,
    pub sb_dirty: bool,
    pub alloc: Allocator,
    pub inodes: HashMap<u64, Inode>,
    pub dirs: HashMap<u64, Directory>,
    /// Kernel references (lookup counts) per inode.
    pub lookups: HashMap<u64, u64>,
    /// Open handles per inode.
    pub open: HashMap<u64, u64>,
    /// The live hidden versions ([`super::hidden`]).
    pub hidden: HiddenIndex,
}

impl State {
    pub fn new(sb: FsSuper) -> Self {
        let alloc = Allocator::new(sb.bitmap_start, sb.total_blocks, sb.blocks_used);
        Self {
            sb,
            sb_dirty: false,
            alloc,
            inodes: HashMap::new(),
            dirs: HashMap::new(),
            lookups: HashMap::new(),
            open: HashMap::new(),
            hidden: HiddenIndex::default(),
        }
    }

    /// A live inode; a free or hidden one is [`Posix::NotFound`].
    pub fn inode(&mut self, io: &dyn BlockIo, ino: u64) -> Result<Inode> {
        let inode = self.raw_inode(io, ino)?;
        if inode.is_hidden() {
            return Err(Posix::NotFound.into());
        }
        Ok(inode)
    }

    /// An inode in use, hidden versions included.
    pub fn raw_inode(&mut self, io: &dyn BlockIo, ino: u64) -> Result<Inode> {
        if let Some(inode) = self.inodes.get(&ino) {
            return Ok(inode.clone());
        }
        let inode = self.read_inode_record(io, ino)?;
        if inode.is_free() {
            return Err(Posix::NotFound.into());
        }
        self.inodes.insert(ino, inode.clone());
        Ok(inode)
    }

    fn read_inode_record(&self, io: &dyn BlockIo, ino: u64) -> Result<Inode> {
        let Some(block) = self.sb.table.map.get(io, ino / INODES_PER_BLOCK)? else {
            return Ok(Inode::default());
        };
        let mut buf = [0u8; BLOCK_SIZE];
        io.read_block(block, &mut buf)?;
        let at = (ino % INODES_PER_BLOCK) as usize * INODE_SIZE;
        let mut record = [0u8; INODE_SIZE];
        record.copy_from_slice(&buf[at..at + INODE_SIZE]);
        Inode::decode(&record)
    }

    /// Writes an inode record (a free inode is written as zeros, and a table block that
    /// becomes all zeros is given back).
    pub fn put_inode(&mut self, io: &dyn BlockIo, ino: u64, inode: &Inode) -> Result<()> {
        let index = ino / INODES_PER_BLOCK;
        let at = (ino % INODES_PER_BLOCK) as usize * INODE_SIZE;
        let mut table = self.sb.table.clone();
        let mut alloc = AllocIo {
            alloc: &mut self.alloc,
            io,
        };
        let mut buf = Box::new([0u8; BLOCK_SIZE]);
        let block = if inode.is_free() {
            match table.map.get(io, index)? {
                Some(block) => block,
                None => return Ok(()),
            }
        } else {
            let mapped = table.map.get_or_alloc(io, &mut alloc, index, 0)?;
            table.blocks += mapped.allocated;
            if mapped.fresh {
                io.write_block(mapped.block, &buf)?;
            }
            mapped.block
        };
        io.read_block(block, &mut buf)?;
        buf[at..at + INODE_SIZE].copy_from_slice(&inode.encode());
        if inode.is_free() && buf.iter().all(|&b| b == 0) {
            table.blocks -= table.map.punch(io, &mut alloc, index, index + 1)?;
        } else {
            io.write_block(block, &buf)?;
        }
        if table != self.sb.table {
            self.sb.table = table;
            self.sb_dirty = true;
        }
        if inode.is_free() {
            self.inodes.remove(&ino);
        } else {
            self.inodes.insert(ino, inode.clone());
        }
        Ok(())
    }

    pub fn new_ino(&mut self) -> u64 {
        let ino = self.sb.next_ino;
        self.sb.next_ino += 1;
        self.sb.inodes_used += 1;
        self.sb_dirty = true;
        ino
    }

    /// Runs `f` on directory `ino` and the storage of its blocks; writes the directory's
    /// inode back when its size or blocks changed.
    pub fn with_dir<R>(
        &mut self,
        io: &dyn BlockIo,
        ino: u64,
        f: impl FnOnce(&mut Directory, &mut dyn DirStorage) -> Result<R>,
    ) -> Result<R> {
        let mut inode = self.inode(io, ino)?;
        if !inode.is_dir() {
            return Err(Posix::NotDirectory.into());
        }
        let before = (inode.size, inode.blocks, inode.map);
        let cached = self.dirs.remove(&ino);
        let (dir, result) = on_directory(io, &mut self.alloc, &mut inode, cached, f)?;
        self.dirs.insert(ino, dir);
        if (inode.size, inode.blocks, inode.map) != before {
            self.put_inode(io, ino, &inode)?;
        }
        result
    }

    /// The blocks of the orphan list (it lives in the superblock, not the inode table).
    pub fn with_orphans<R>(
        &mut self,
        io: &dyn BlockIo,
        f: impl FnOnce(&mut Directory, &mut dyn DirStorage) -> Result<R>,
    ) -> Result<R> {
        let mut inode = self.sb.orphans.clone();
        let (_, result) = on_directory(io, &mut self.alloc, &mut inode, None, f)?;
        if inode != self.sb.orphans {
            self.sb.orphans = inode;
            self.sb_dirty = true;
        }
        result
    }
}

/// Runs `f` on the directory stored in `inode`'s blocks (loading it unless `cached`);
/// returns the directory for caching and what `f` returned.
fn on_directory<R>(
    io: &dyn BlockIo,
    alloc: &mut Allocator,
    inode: &mut Inode,
    cached: Option<Directory>,
    f: impl FnOnce(&mut Directory, &mut dyn DirStorage) -> Result<R>,
) -> Result<(Directory, Result<R>)> {
    let mut dir = match cached {
        Some(dir) => dir,
        None => Directory::load(&mut FileBlocks { io, alloc, inode })?,
    };
    let result = f(&mut dir, &mut FileBlocks { io, alloc, inode });
    Ok((dir, result))
}

/// A file's content as blocks (what a directory is stored in).
pub(crate) struct FileBlocks<'a> {
    pub io: &'a dyn BlockIo,
    pub alloc: &'a mut Allocator,
    pub inode: &'a mut Inode,
}

impl DirStorage for FileBlocks<'_> {
    fn block_count(&self) -> u64 {
        self.inode.size / BLOCK_SIZE as u64
    }

    fn read(&mut self, index: u64, out: &mut Block) -> Result<()> {
        match self.inode.map.get(self.io, index)? {
            Some(block) => self.io.read_block(block, out),
            None => {
                out.fill(0);
                Ok(())
            }
        }
    }

    fn write(&mut self, index: u64, data: &Block) -> Result<()> {
        let count = self.block_count();
        if index > count {
            return Err(Error::CorruptFilesystem(
                "directory write past its end".into(),
            ));
        }
        let hint = self.inode.map.root;
        let mapped = self.inode.map.get_or_alloc(
            self.io,
            &mut AllocIo {
                alloc: self.alloc,
                io: self.io,
            },
            index,
            hint,
        )?;
        self.inode.blocks += mapped.allocated;
        self.io.write_block(mapped.block, data)?;
        if index == count {
            self.inode.size += BLOCK_SIZE as u64;
        }
        Ok(())
    }
}

/// Frees every block of an inode (data, block map, xattr block).
pub(crate) fn free_blocks(state: &mut State, io: &dyn BlockIo, inode: &mut Inode) -> Result<()> {
    let mut alloc = AllocIo {
        alloc: &mut state.alloc,
        io,
    };
    let freed = inode.map.punch(io, &mut alloc, 0, u64::MAX)?;
    inode.blocks = inode.blocks.saturating_sub(freed);
    if inode.xattr_block != 0 {
        state.alloc.free(io, inode.xattr_block)?;
        io.discard_block(inode.xattr_block)?;
        inode.xattr_block = 0;
        inode.blocks = inode.blocks.saturating_sub(1);
    }
    inode.map = BlockMap::default();
    Ok(())
}
