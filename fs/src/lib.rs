//! domfs: encrypted, authenticated domain volumes for electronic health records.
//!
//! The map of this crate, bottom-up (see `../shared/DESIGN.md` and `fs/FORMAT.md`):
//!
//! - [`device`]: the raw container (a regular file or a block device).
//! - [`crypto`]: the domain key, its HKDF subkeys, AES-256-XTS and the per-block HMAC tag.
//! - [`format`](mod@format): the on-disk structures with fixed places: the domain header (two copies)
//!   and the superblock (two alternating copies, the commit point).
//! - [`store`]: the authenticated, crash-safe block store: a redirect-on-write Merkle tree
//!   of block pointers, the allocator, the cache, transactions and fsck.
//! - [`audit`]: the audit trail's records, their MAC chain, and how they are read.
//! - [`cli`]: the `domfs` command line (the binary in `main.rs` only calls into it).
//!
//! Untrusted bytes (the container) are parsed once into the types of [`types`]; every
//! failure is an [`Error`], never a panic.
#![deny(unsafe_code)]

pub mod audit;
pub mod cli;
pub mod control;
pub mod crypto;
pub mod device;
pub mod error;
pub mod filesystem;
pub mod format;
pub mod fuse;
pub mod store;
pub mod types;
pub mod volume;

pub use error::{Error, Result};
