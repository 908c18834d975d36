//! The filesystem's own superblock, in logical block 0 of the store.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `"DOMFS\0FS"` |
//! | 8 | 4 | filesystem format version (1) |
//! | 12 | 4 | zero |
//! | 16 | 8 | next inode number (never reused) |
//! | 24 | 8 | inodes in use |
//! | 32 | 8 | logical blocks in use |
//! | 40 | 8 | first block of the allocation bitmap (1) |
//! | 48 | 8 | logical blocks covered by the bitmap |
//! | 56 | 8 | logical blocks held by hidden versions (the blocks of every hidden inode) |
//! | 64 | 256 | the inode table's own inode |
//! | 320 | 256 | the orphan list's inode (a directory of unlinked, still open files) |
//! | 576 | 256 | the hidden-version table's inode (an internal file of records; zeros: none) |
//! | 832 | 256 | the audit log's inode (an append-only internal file; zeros: empty log) |
//! | 1088 | 48 | the audit chain's head: last sequence `u64`, log bytes `u64`, last MAC (32) |
//! | 1136 | 2960 | zero |

use super::inode::{INODE_SIZE, Inode};
use crate::audit::chain::{ChainHead, HEAD_LEN};
use crate::types::{BLOCK_SIZE, Block};
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"DOMFS\0FS";
const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsSuper {
    pub next_ino: u64,
    pub inodes_used: u64,
    pub blocks_used: u64,
    pub bitmap_start: u64,
    pub total_blocks: u64,
    pub table: Inode,
    pub orphans: Inode,
    /// The hidden-version table (see [`super::hidden`]); a free inode is an empty table.
    pub hidden: Inode,
    /// Logical blocks held by hidden versions (what `statfs` takes off the total).
    pub hidden_blocks: u64,
    /// The audit log (see [`crate::audit`]); a free inode is an empty log.
    pub audit: Inode,
    /// The end of the audit chain, committed with the log.
    pub audit_head: ChainHead,
}

/// Where the hidden-version table's inode is.
const HIDDEN_INODE_AT: usize = 576;
/// Where the audit log's inode and the chain's head are.
const AUDIT_INODE_AT: usize = 832;
const AUDIT_HEAD_AT: usize = 1088;

impl FsSuper {
    pub fn encode(&self) -> Box<Block> {
        let mut b = Box::new([0u8; BLOCK_SIZE]);
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.next_ino.to_le_bytes());
        b[24..32].copy_from_slice(&self.inodes_used.to_le_bytes());
        b[32..40].copy_from_slice(&self.blocks_used.to_le_bytes());
        b[40..48].copy_from_slice(&self.bitmap_start.to_le_bytes());
        b[48..56].copy_from_slice(&self.total_blocks.to_le_bytes());
        b[56..64].copy_from_slice(&self.hidden_blocks.to_le_bytes());
        b[64..64 + INODE_SIZE].copy_from_slice(&self.table.encode());
        b[320..320 + INODE_SIZE].copy_from_slice(&self.orphans.encode());
        b[HIDDEN_INODE_AT..HIDDEN_INODE_AT + INODE_SIZE].copy_from_slice(&self.hidden.encode());
        b[AUDIT_INODE_AT..AUDIT_INODE_AT + INODE_SIZE].copy_from_slice(&self.audit.encode());
        b[AUDIT_HEAD_AT..AUDIT_HEAD_AT + HEAD_LEN].copy_from_slice(&self.audit_head.encode());
        b
    }

    pub fn has_magic(b: &Block) -> bool {
        &b[0..8] == MAGIC
    }

    /// `None` for a block of zeros: the filesystem was never formatted.
    pub fn decode(b: &Block) -> Result<Option<Self>> {
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        if &b[0..8] != MAGIC {
            return Err(Error::CorruptFilesystem("no filesystem superblock".into()));
        }
        let u64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(x)
        };
        let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if version != VERSION {
            return Err(Error::CorruptFilesystem(format!(
                "filesystem format version {version} (this build reads {VERSION})"
            )));
        }
        let inode_at = |at: usize| {
            let mut x = [0u8; INODE_SIZE];
            x.copy_from_slice(&b[at..at + INODE_SIZE]);
            Inode::decode(&x)
        };
        Ok(Some(FsSuper {
            next_ino: u64_at(16),
            inodes_used: u64_at(24),
            blocks_used: u64_at(32),
            bitmap_start: u64_at(40),
            total_blocks: u64_at(48),
            table: inode_at(64)?,
            orphans: inode_at(320)?,
            hidden: inode_at(HIDDEN_INODE_AT)?,
            hidden_blocks: u64_at(56),
            audit: inode_at(AUDIT_INODE_AT)?,
            audit_head: {
                let mut head = [0u8; HEAD_LEN];
                head.copy_from_slice(&b[AUDIT_HEAD_AT..AUDIT_HEAD_AT + HEAD_LEN]);
                ChainHead::decode(&head)
            },
        }))
    }
}
