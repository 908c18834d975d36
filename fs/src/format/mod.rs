//! The structures at fixed places in the container (see `fs/FORMAT.md`):
//!
//! | offset | size | what |
//! |---|---|---|
//! | 0 | 64 KiB | domain header, copy A |
//! | 64 KiB | 64 KiB | domain header, copy B |
//! | 128 KiB | 4 KiB slot (512 B used) | superblock slot 0 |
//! | 132 KiB | 4 KiB slot (512 B used) | superblock slot 1 |
//! | 136 KiB | | unused up to 1 MiB (alignment) |
//! | 1 MiB | rest | sealed 4 KiB blocks: data, tree nodes, space map |

pub mod header;
pub mod reader;
pub mod retention;
pub mod superblock;

/// The on-disk format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Each domain header copy gets a slot of this size.
pub const HEADER_SLOT_SIZE: u64 = 64 * 1024;
/// Byte offsets of the two domain header copies.
pub const HEADER_OFFSETS: [u64; 2] = [0, HEADER_SLOT_SIZE];
/// Byte offsets of the two superblock slots.
pub const SUPERBLOCK_OFFSETS: [u64; 2] = [128 * 1024, 132 * 1024];
/// A superblock is one 512-byte sector, so a power cut cannot tear it (sector writes are
/// atomic on every disk): an invalid superblock is damage, never an interrupted commit.
pub const SUPERBLOCK_LEN: usize = 512;
/// The first physical block of the block area (1 MiB, aligned for every device).
pub const FIRST_PHYS_BLOCK: u64 = 256;
/// The smallest container that holds the fixed area and a useful block area (1 MiB + 1 MiB).
pub const MIN_CONTAINER_SIZE: u64 = 2 * 1024 * 1024;
