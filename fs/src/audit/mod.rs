//! The audit trail (layer 6 of DESIGN.md): who opened, created, changed, renamed, hid,
//! restored or purged what, when, from which process on which host, with what result —
//! and every integrity error.
//!
//! - [`record`]: one entry and its bounded byte encoding.
//! - [`chain`]: entries chained with HMAC-SHA256 under the audit key (an HKDF subkey of
//!   the domain key), the head kept in the filesystem superblock, and the walk that
//!   verifies the whole chain.
//! - [`query`]: filters and the text, JSON and FHIR `AuditEvent` forms.
//! - [`remote`]: the entries the TTP keeps for read-only hosts, and their merge with the
//!   volume's own.
//!
//! The log itself is an internal file of the filesystem (its inode and the chain's head
//! are in the filesystem superblock); `crate::filesystem` appends to it in batches that
//! are committed with the data they describe (`filesystem/audit_log.rs`), and `domfs
//! audit` reads it offline.
//!
//! # Scope
//!
//! domfs sees files, not records: under a database every access is the database
//! process's (`postgres` opened `base/16384/2619`), so record-level viewing history needs
//! the application; domfs gives the file-level history. The open is the viewing event:
//! reads served from the kernel's page cache never reach domfs, so reads are not logged
//! one by one. Permission checks are the kernel's (`default_permissions`): a request the
//! kernel refuses never reaches domfs and is not in this trail.

pub mod chain;
pub mod query;
pub mod record;
pub mod remote;

pub use chain::{ChainHead, ChainProblem, LogBlocks, LogScan, scan, seal_entries};
pub use query::Filter;
pub use record::{AccessMode, AuditOp, AuditRecord};

use crate::Result;
use crate::filesystem::BlockIo;
use crate::filesystem::inode::Inode;
use crate::types::{BLOCK_SIZE, Block};

/// The log's blocks through its inode's block map (holes read as zeros).
pub struct FileLog<'a> {
    pub io: &'a dyn BlockIo,
    pub inode: &'a Inode,
}

impl LogBlocks for FileLog<'_> {
    fn block(&mut self, index: u64) -> Result<Box<Block>> {
        let mut out = Box::new([0u8; BLOCK_SIZE]);
        if let Some(b) = self.inode.map.get(self.io, index)? {
            self.io.read_block(b, &mut out)?;
        }
        Ok(out)
    }
}

/// Reads and verifies the whole audit log of a filesystem whose superblock is logical
/// block 0 of `io`. An unformatted volume has an empty log.
pub fn read_log(
    io: &dyn BlockIo,
    key: &crate::crypto::MacKey,
    volume: &crate::types::VolumeId,
) -> Result<LogScan> {
    let mut block = Box::new([0u8; BLOCK_SIZE]);
    io.read_block(0, &mut block)?;
    let Some(sb) = crate::filesystem::meta::FsSuper::decode(&block)? else {
        return Ok(LogScan::default());
    };
    let mut found = scan(
        key,
        volume,
        &sb.audit_head,
        &mut FileLog {
            io,
            inode: &sb.audit,
        },
    );
    if sb.audit.size != sb.audit_head.len {
        found.problems.push(ChainProblem {
            seq: sb.audit_head.seq,
            offset: sb.audit_head.len,
            what: format!(
                "the log's inode says {} bytes, the head {}",
                sb.audit.size, sb.audit_head.len
            ),
        });
    }
    Ok(found)
}
