//! Hidden, not deleted (layer 6 of DESIGN.md): unlink, rmdir, rename over an existing
//! file, truncation and a punched hole keep the old content as a *hidden version*, with
//! who and when.
//!
//! - **Unlink, rmdir, rename-over** of a file's last name keep the inode itself: it gets
//!   the hidden flag (`FLAG_HIDDEN`, link count 0) instead of being freed, so keeping
//!   costs no copy and no new data block. A file still open at that moment stays on the
//!   orphan list as before and becomes hidden at its last close (its content is what it
//!   was then); its record is written at once, in state *open*.
//! - **Truncation** (setattr to a smaller size, `O_TRUNC`) moves the cut data blocks into
//!   a new hidden inode at the same offsets ([`BlockMap::move_range`]: no data copy; the
//!   one block the cut falls inside is copied, the file keeps the copy). The version's
//!   size is the old size; what lay before the block of the cut point reads as zeros in it.
//! - **A punched hole** (`fallocate(PUNCH_HOLE | KEEP_SIZE)`) that discards data: the
//!   range's whole blocks move to a new hidden inode at their offsets, the punched bytes
//!   of the two edge blocks are copied there (`punch.rs`); the version reads as zeros
//!   outside the range.
//!
//! A hidden inode is never answered by lookup, readdir or getattr (inode numbers are never
//! reused, so nothing can reach it by number either); only this module reads it.
//!
//! ## The table
//!
//! Records are appended to an internal file whose inode is in the filesystem superblock
//! (offset 576; a zero inode is an empty table), and the superblock counts the blocks
//! hidden inodes hold (offset 56; `statfs` reports the total less those). A record never
//! crosses a 4 KiB block; the rest of a block after its last record is zeros (a record
//! length of 0 ends the block). Integers are little-endian.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | record length L (a multiple of 8, 80 ≤ L ≤ 4096) |
//! | 2 | 1 | state: 1 open (kept at its last close), 2 kept, 3 restored, 4 purged |
//! | 3 | 1 | event: 1 unlink, 2 rmdir, 3 rename-over, 4 truncate, 5 punch |
//! | 4 | 4 | mode of the file |
//! | 8 | 8 | version id (volume-wide, increasing) |
//! | 16 | 8 | inode of the hidden content |
//! | 24 | 12 | when (i64 seconds, u32 nanoseconds) |
//! | 36 | 4 | uid of the process |
//! | 40 | 4 | gid |
//! | 44 | 4 | pid |
//! | 48 | 8 | size in bytes |
//! | 56 | 8 | blocks held |
//! | 64 | 8 | truncate: the size the file was cut to; punch: the range's start; else 0 |
//! | 72 | 2 | path length p (≤ 3584) |
//! | 74 | 1 | process name length c (≤ 16) |
//! | 75 | 1 | host length h (≤ 255) |
//! | 76 | 1 | extra field count n (0 before punches existed) |
//! | 77 | 3 | zero |
//! | 80 | p + c + h | path (from the root, no leading `/`), process name (`/proc/PID/comm`), host |
//! | 8-aligned | 8 n | extra `u64` fields; a punch has one: the range's end (exclusive) |
//!
//! `fs/FORMAT.md` has the exact rules (alignment, bounds, unknown fields).
//! Restoring or purging a version rewrites its state in place; a table block whose
//! records are all restored or purged is given back (except the last block, so the
//! highest version id is always on disk). The in-memory index (by path, by inode) is
//! built at open. A path longer than 3584 bytes is kept as `…/` and its end.
//!
//! Hiding is one operation like any other (one commit), so crash safety is the
//! filesystem's: after a crash a version is either fully hidden or the file is intact.
//!
//! [`BlockMap::move_range`]: super::bmap::BlockMap::move_range

mod api;
mod config;
mod cut;
mod index;
mod keep;
mod naming;
mod punch;
mod record;
mod sweep;
mod table;
mod version;
mod who;

pub(crate) use config::HiddenConfig;
pub use config::{Clock, FsOptions, HiddenSink};
pub(crate) use index::HiddenIndex;
pub(crate) use keep::{Keep, finish_open, hide};
pub use naming::normalize_path;
pub use record::MAX_PATH;
pub(crate) use table::{RECORD_ROOM, live_inodes};
pub use version::{HiddenEvent, HiddenVersion, PurgeReason};

use crate::types::BLOCK_SIZE;

const BS: u64 = BLOCK_SIZE as u64;

/// Test hooks: the time of records, set from outside.
#[cfg(test)]
mod tests;
