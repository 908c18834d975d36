//! The superblock: the commit point of the volume.
//!
//! Two slots; commit `seq` goes to slot `seq % 2`, so the previous commit stays intact
//! until the new one is durable. A superblock is one 512-byte sector (atomic on every
//! disk), MAC'd under a subkey of the domain key; it holds no secret.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `DOMFS\0SB` |
//! | 8 | 4 | format version (u32 LE) |
//! | 12 | 4 | flags (0) |
//! | 16 | 16 | volume id (equals the domain header's) |
//! | 32 | 8 | sequence: the commit counter |
//! | 40 | 8 | generation high-water mark: no block was written with a generation ≥ this |
//! | 48 | 8 | logical data blocks |
//! | 56 | 8 | physical blocks in the container |
//! | 64 | 1 | tree height (levels of pointer nodes above the blocks) |
//! | 65 | 7 | zero |
//! | 72 | 48 | root pointer: physical block, generation, tag |
//! | 120 | 8 | allocated physical blocks |
//! | 128 | 32 | binding hash of the domain header's immutable fields |
//! | 160 | 32 | key check value (HKDF output: tells a wrong key from damage) |
//! | 192 | 8 | commit time (Unix seconds) |
//! | 200 | 8 | allocation cursor (a hint) |
//! | 208 | 64 | writer signature: Ed25519 by the domain's writer key over bytes 0..208 (agent mode); zero in key-file mode |
//! | 272 | 208 | reserved, zero (audit head: a later version) |
//! | 480 | 32 | HMAC-SHA256 over bytes 0..480 |

use crate::crypto::VolumeKeys;
use crate::crypto::writer::WRITER_SIGNATURE_LEN;
use crate::format::{FORMAT_VERSION, SUPERBLOCK_LEN};
use crate::store::pointer::Pointer;
use crate::types::{Generation, PhysBlock, Tag, VolumeId};

const MAGIC: &[u8; 8] = b"DOMFS\0SB";
const MAC_OFFSET: usize = SUPERBLOCK_LEN - 32;
const MAC_DOMAIN: &[u8] = b"domfs superblock v1";
/// The writer signature covers the fields before it.
const SIGNED_LEN: usize = 208;

/// A verified superblock.
#[derive(Clone, Debug)]
pub struct Superblock {
    pub volume_id: VolumeId,
    pub sequence: u64,
    pub generation_hwm: Generation,
    pub logical_blocks: u64,
    pub physical_blocks: u64,
    pub height: u8,
    pub root: Pointer,
    pub allocated: u64,
    pub header_binding: [u8; 32],
    pub commit_time: u64,
    pub alloc_cursor: u64,
}

/// What one slot holds.
#[derive(Clone, Debug)]
pub enum SlotState {
    /// All zero: never written.
    Empty,
    Valid(Box<Superblock>),
    /// The key check value does not match: the key is wrong (or that field was damaged).
    WrongKey,
    Damaged(String),
    /// The MAC verifies but the writer signature does not: written by a holder of the
    /// domain key without write access (a read-only host), or by a key-file tool.
    Unsigned,
}

impl Superblock {
    pub fn encode(&self, keys: &VolumeKeys) -> [u8; SUPERBLOCK_LEN] {
        let mut b = [0u8; SUPERBLOCK_LEN];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[16..32].copy_from_slice(&self.volume_id.0);
        b[32..40].copy_from_slice(&self.sequence.to_le_bytes());
        b[40..48].copy_from_slice(&self.generation_hwm.0.to_le_bytes());
        b[48..56].copy_from_slice(&self.logical_blocks.to_le_bytes());
        b[56..64].copy_from_slice(&self.physical_blocks.to_le_bytes());
        b[64] = self.height;
        b[72..120].copy_from_slice(&self.root.encode());
        b[120..128].copy_from_slice(&self.allocated.to_le_bytes());
        b[128..160].copy_from_slice(&self.header_binding);
        b[160..192].copy_from_slice(&keys.key_check.0);
        b[192..200].copy_from_slice(&self.commit_time.to_le_bytes());
        b[200..208].copy_from_slice(&self.alloc_cursor.to_le_bytes());
        if let Some(signature) = keys.writer.as_ref().and_then(|w| w.sign(&b[..SIGNED_LEN])) {
            b[SIGNED_LEN..SIGNED_LEN + WRITER_SIGNATURE_LEN].copy_from_slice(&signature);
        }
        let mac = keys.superblock_mac.tag(&[MAC_DOMAIN, &b[..MAC_OFFSET]]);
        b[MAC_OFFSET..].copy_from_slice(&mac.0);
        b
    }

    /// Parses and verifies one slot. `volume_id` is the domain header's.
    pub fn decode(b: &[u8; SUPERBLOCK_LEN], keys: &VolumeKeys, volume_id: &VolumeId) -> SlotState {
        if b.iter().all(|&x| x == 0) {
            return SlotState::Empty;
        }
        if &b[0..8] != MAGIC {
            return SlotState::Damaged("bad magic".into());
        }
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION {
            return SlotState::Damaged(format!("format version {version}"));
        }
        if b[16..32] != volume_id.0 {
            return SlotState::Damaged("belongs to another volume".into());
        }
        let mut kcv = [0u8; 32];
        kcv.copy_from_slice(&b[160..192]);
        if !Tag(kcv).ct_eq(&keys.key_check) {
            return SlotState::WrongKey;
        }
        let mut mac = [0u8; 32];
        mac.copy_from_slice(&b[MAC_OFFSET..]);
        let expected = keys.superblock_mac.tag(&[MAC_DOMAIN, &b[..MAC_OFFSET]]);
        if !expected.ct_eq(&Tag(mac)) {
            return SlotState::Damaged("MAC does not verify".into());
        }
        // Past the MAC, the fields were written by a key holder; still check the ones the
        // code relies on so a bug elsewhere cannot turn into a panic.
        if u32_at(b, 12) != 0 || b[65..72].iter().any(|&x| x != 0) {
            return SlotState::Damaged("unknown flags".into());
        }
        if let Some(writer) = &keys.writer {
            let mut signature = [0u8; WRITER_SIGNATURE_LEN];
            signature.copy_from_slice(&b[SIGNED_LEN..SIGNED_LEN + WRITER_SIGNATURE_LEN]);
            if !writer.verify(&b[..SIGNED_LEN], &signature) {
                return SlotState::Unsigned;
            }
        }
        SlotState::Valid(Box::new(Self::fields(b, volume_id)))
    }

    /// The fields of a slot that starts with the superblock magic, NOT verified: for
    /// `domfs header show` without a key. `None` when the slot holds no superblock.
    pub fn peek_unverified(b: &[u8; SUPERBLOCK_LEN]) -> Option<Superblock> {
        if &b[0..8] != MAGIC {
            return None;
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[16..32]);
        Some(Self::fields(b, &VolumeId(id)))
    }

    fn fields(b: &[u8; SUPERBLOCK_LEN], volume_id: &VolumeId) -> Superblock {
        let mut binding = [0u8; 32];
        binding.copy_from_slice(&b[128..160]);
        let mut root = [0u8; Pointer::ENCODED_LEN];
        root.copy_from_slice(&b[72..120]);
        Superblock {
            volume_id: *volume_id,
            sequence: u64_at(b, 32),
            generation_hwm: Generation(u64_at(b, 40)),
            logical_blocks: u64_at(b, 48),
            physical_blocks: u64_at(b, 56),
            height: b[64],
            root: Pointer::decode(&root),
            allocated: u64_at(b, 120),
            header_binding: binding,
            commit_time: u64_at(b, 192),
            alloc_cursor: u64_at(b, 200),
        }
    }

    /// The slot a superblock with this sequence number is written to.
    pub fn slot(&self) -> usize {
        (self.sequence % 2) as usize
    }

    pub fn root_phys(&self) -> PhysBlock {
        self.root.phys
    }
}

fn u32_at(b: &[u8; SUPERBLOCK_LEN], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8; SUPERBLOCK_LEN], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}
