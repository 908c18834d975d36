//! Extended attributes: all of a file's attributes in one block of its own.
//!
//! Block format: `count: u16`, then `count` records of `name_len: u8 | value_len: u16 |
//! name | value`, the rest zeros. Names are 1..=255 bytes; everything must fit in 4 KiB.

use super::alloc::AllocIo;
use super::inode::Timestamp;
use super::state::State;
use super::{BlockAlloc, BlockIo, Filesystem};
use crate::error::Posix;
use crate::types::BLOCK_SIZE;
use crate::{Error, Result};

pub const XATTR_CREATE: i32 = 1;
pub const XATTR_REPLACE: i32 = 2;

type Attrs = Vec<(Vec<u8>, Vec<u8>)>;

fn decode(block: &[u8]) -> Result<Attrs> {
    let bad = || Error::CorruptFilesystem("extended attribute block".into());
    let count = u16::from_le_bytes([block[0], block[1]]) as usize;
    let mut at = 2;
    let mut attrs = Vec::with_capacity(count);
    for _ in 0..count {
        let header = block.get(at..at + 3).ok_or_else(bad)?;
        let name_len = header[0] as usize;
        let value_len = u16::from_le_bytes([header[1], header[2]]) as usize;
        at += 3;
        let name = block.get(at..at + name_len).ok_or_else(bad)?.to_vec();
        at += name_len;
        let value = block.get(at..at + value_len).ok_or_else(bad)?.to_vec();
        at += value_len;
        attrs.push((name, value));
    }
    Ok(attrs)
}

fn encode(attrs: &Attrs) -> Result<Box<[u8; BLOCK_SIZE]>> {
    let mut block = Box::new([0u8; BLOCK_SIZE]);
    block[0..2].copy_from_slice(&(attrs.len() as u16).to_le_bytes());
    let mut at = 2;
    for (name, value) in attrs {
        let need = 3 + name.len() + value.len();
        if at + need > BLOCK_SIZE {
            return Err(Error::NoSpace);
        }
        block[at] = name.len() as u8;
        block[at + 1..at + 3].copy_from_slice(&(value.len() as u16).to_le_bytes());
        block[at + 3..at + 3 + name.len()].copy_from_slice(name);
        block[at + 3 + name.len()..at + need].copy_from_slice(value);
        at += need;
    }
    Ok(block)
}

fn load(st: &mut State, io: &dyn BlockIo, ino: u64) -> Result<Attrs> {
    let inode = st.inode(io, ino)?;
    if inode.xattr_block == 0 {
        return Ok(Vec::new());
    }
    let mut block = Box::new([0u8; BLOCK_SIZE]);
    io.read_block(inode.xattr_block, &mut block)?;
    decode(&block[..])
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name.len() > 255 {
        return Err(Posix::Range.into());
    }
    Ok(())
}

impl Filesystem {
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        check_name(name)?;
        self.inspect(|st, io| {
            load(st, io, ino)?
                .into_iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v)
                .ok_or_else(|| Posix::NoAttribute.into())
        })
    }

    /// The names, each followed by a NUL, as `listxattr(2)` returns them.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        self.inspect(|st, io| {
            let mut out = Vec::new();
            for (name, _) in load(st, io, ino)? {
                out.extend_from_slice(&name);
                out.push(0);
            }
            Ok(out)
        })
    }

    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        check_name(name)?;
        if value.len() > BLOCK_SIZE - 2 - 3 - name.len() {
            return Err(Posix::Range.into());
        }
        self.change_xattrs(ino, |attrs| {
            let existing = attrs.iter().position(|(n, _)| n == name);
            match (existing, flags & (XATTR_CREATE | XATTR_REPLACE)) {
                (Some(_), XATTR_CREATE) => return Err(Posix::Exists.into()),
                (None, XATTR_REPLACE) => return Err(Posix::NoAttribute.into()),
                _ => {}
            }
            match existing {
                Some(i) => attrs[i].1 = value.to_vec(),
                None => attrs.push((name.to_vec(), value.to_vec())),
            }
            Ok(())
        })
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> Result<()> {
        check_name(name)?;
        self.change_xattrs(ino, |attrs| {
            let i = attrs
                .iter()
                .position(|(n, _)| n == name)
                .ok_or(Posix::NoAttribute)?;
            attrs.remove(i);
            Ok(())
        })
    }

    fn change_xattrs(&self, ino: u64, f: impl FnOnce(&mut Attrs) -> Result<()>) -> Result<()> {
        self.mutate(1, |st, io| {
            let mut attrs = load(st, io, ino)?;
            f(&mut attrs)?;
            let mut inode = st.inode(io, ino)?;
            if attrs.is_empty() {
                if inode.xattr_block != 0 {
                    AllocIo {
                        alloc: &mut st.alloc,
                        io,
                    }
                    .free(inode.xattr_block)?;
                    io.discard_block(inode.xattr_block)?;
                    inode.xattr_block = 0;
                    inode.blocks = inode.blocks.saturating_sub(1);
                }
            } else {
                // Refuse before anything changes when the attributes no longer fit.
                let block = encode(&attrs).map_err(|_| Posix::Range)?;
                if inode.xattr_block == 0 {
                    inode.xattr_block = st.alloc.alloc(io, 0)?;
                    inode.blocks += 1;
                }
                io.write_block(inode.xattr_block, &block)?;
            }
            inode.ctime = Timestamp::now();
            st.put_inode(io, ino, &inode)
        })
    }
}
