//! `domfs fsck`: verify the header copies, both superblocks, every block the tree
//! references (data, nodes, space map), and that the space map marks exactly the blocks
//! the tree references.
//!
//! A damaged tree node makes everything below it unreadable; the report names the node
//! and the logical range it covered, and goes on with the rest.

use std::sync::Arc;

use crate::crypto::{DomainKey, VolumeKeys};
use crate::device::{Access, Device};
use crate::error::Damaged;
use crate::format::FIRST_PHYS_BLOCK;
use crate::format::header::{CopyState, read_header};
use crate::store::geometry::{BITS_PER_MAP_BLOCK, NodeId};
use crate::store::pointer::{ARITY, Pointer};
use crate::store::{BlockStore, StoreOptions, slots};
use crate::{Error, Result};

/// A block that failed verification, with the data it made unreadable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadBlock {
    pub what: Damaged,
    /// Logical data blocks `[start, end)` that cannot be read because of it.
    pub lost: (u64, u64),
}

#[derive(Debug, Default)]
pub struct FsckReport {
    /// Problems with the domain header copies or superblock slots.
    pub metadata_problems: Vec<String>,
    pub bad_blocks: Vec<BadBlock>,
    /// The tree and the space map disagree (a bug or a forged commit, never a crash).
    pub structure_problems: Vec<String>,
    pub blocks_verified: u64,
    pub data_blocks: u64,
    pub sequence: u64,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.metadata_problems.is_empty()
            && self.bad_blocks.is_empty()
            && self.structure_problems.is_empty()
    }
}

/// Checks a volume. Errors only when the volume cannot be opened at all (not a domfs
/// volume, wrong key, no valid superblock); everything else goes into the report.
/// `progress(done, total)` is called as blocks are verified.
pub fn fsck(
    dev: Arc<dyn Device>,
    key: &DomainKey,
    progress: &dyn Fn(u64, u64),
) -> Result<FsckReport> {
    let mut report = FsckReport::default();
    let header = read_header(dev.as_ref())?;
    for (i, copy) in header.copies.iter().enumerate() {
        let name = ["A", "B"][i];
        match copy {
            CopyState::Valid => {}
            CopyState::Damaged(why) => report
                .metadata_problems
                .push(format!("domain header copy {name} is damaged: {why}")),
            CopyState::Differs => report.metadata_problems.push(format!(
                "domain header copy {name} differs from copy A (an interrupted header update, or an edit)"
            )),
        }
    }
    let keys = VolumeKeys::derive(key, &header.header.volume_id);
    let slot_report = slots::read_slots(dev.as_ref(), &keys, &header.header)?;
    report.metadata_problems.extend(slot_report.problems());
    let store = BlockStore::open(
        dev,
        key,
        StoreOptions {
            access: Access::ReadOnly,
            cache_bytes: 4 * 1024 * 1024,
            ..StoreOptions::default()
        },
    )?;
    store.verify_tree(&mut report, progress)?;
    Ok(report)
}

impl BlockStore {
    fn verify_tree(&self, report: &mut FsckReport, progress: &dyn Fn(u64, u64)) -> Result<()> {
        let sb = self.superblock();
        report.sequence = sb.sequence;
        let g = *self.geometry();
        let mut referenced = vec![0u64; g.physical_blocks.div_ceil(64) as usize];
        let mut maps: Vec<Box<crate::types::Block>> =
            vec![Box::new([0u8; crate::types::BLOCK_SIZE]); g.map_blocks as usize];
        let mut map_damaged = vec![false; g.map_blocks as usize];
        let mut stack: Vec<(NodeId, Pointer)> = vec![(g.root(), sb.root)];
        while let Some((id, ptr)) = stack.pop() {
            if ptr.is_null() {
                // Never written: space-map blocks below read as all-free, as `maps` starts.
                continue;
            }
            let phys = ptr.phys.0;
            if phys < FIRST_PHYS_BLOCK || phys >= g.physical_blocks {
                report.structure_problems.push(format!(
                    "{} points outside the block area",
                    self.damaged(id, ptr.phys)
                ));
                continue;
            }
            let (word, bit) = ((phys / 64) as usize, phys % 64);
            if referenced[word] & (1 << bit) != 0 {
                report.structure_problems.push(format!(
                    "physical block {phys} is referenced twice (again by {})",
                    self.damaged(id, ptr.phys)
                ));
                continue;
            }
            referenced[word] |= 1 << bit;
            report.blocks_verified += 1;
            if report.blocks_verified.is_multiple_of(1024) {
                progress(report.blocks_verified, sb.allocated);
            }
            let block = match self.read_sealed(id, &ptr) {
                Ok(block) => block,
                Err(Error::Integrity(what)) => {
                    for map in g.map_leaves_below(id) {
                        map_damaged[map as usize] = true;
                    }
                    report.bad_blocks.push(BadBlock {
                        what,
                        lost: g.span(id),
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            if id.level > 0 {
                for slot in (0..ARITY).rev() {
                    let child = id.child(slot);
                    if child.level == 0 && child.index >= g.leaves() {
                        continue;
                    }
                    stack.push((child, Pointer::read_entry(&block, slot)));
                }
            } else if g.is_map_leaf(id) {
                maps[(id.index - g.logical_blocks) as usize] = block;
            } else {
                report.data_blocks += 1;
            }
        }
        progress(report.blocks_verified, sb.allocated);
        self.compare_space_map(report, &referenced, &maps, &map_damaged, sb.allocated);
        Ok(())
    }

    fn compare_space_map(
        &self,
        report: &mut FsckReport,
        referenced: &[u64],
        maps: &[Box<crate::types::Block>],
        map_damaged: &[bool],
        allocated: u64,
    ) {
        let g = self.geometry();
        let (mut leaked, mut unmarked, mut marked) = (Vec::new(), Vec::new(), 0u64);
        for (index, map) in maps.iter().enumerate() {
            if map_damaged[index] {
                continue;
            }
            let first = index as u64 * BITS_PER_MAP_BLOCK;
            let end = (first + BITS_PER_MAP_BLOCK).min(g.physical_blocks);
            // Word by word: a 1 TiB volume has 2^28 bits to compare.
            for (w, chunk) in map.chunks_exact(8).enumerate() {
                let base = first + 64 * w as u64;
                if base >= end {
                    break;
                }
                let valid = if end - base >= 64 {
                    u64::MAX
                } else {
                    (1u64 << (end - base)) - 1
                };
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(chunk);
                let in_map = u64::from_le_bytes(bytes) & valid;
                let in_tree = referenced[(base / 64) as usize] & valid;
                marked += u64::from(in_map.count_ones());
                let diff = in_map ^ in_tree;
                if diff == 0 {
                    continue;
                }
                for bit in 0..64 {
                    if diff & (1 << bit) != 0 {
                        let phys = base + bit;
                        if in_map & (1 << bit) != 0 {
                            leaked.push(phys);
                        } else {
                            unmarked.push(phys);
                        }
                    }
                }
            }
        }
        let sample = |v: &[u64]| {
            let shown: Vec<String> = v.iter().take(8).map(|p| p.to_string()).collect();
            format!(
                "{}{}",
                shown.join(", "),
                if v.len() > 8 { ", …" } else { "" }
            )
        };
        if !leaked.is_empty() {
            let why = if report.bad_blocks.is_empty() {
                ""
            } else {
                " (blocks below a damaged node cannot be reached)"
            };
            report.structure_problems.push(format!(
                "{} physical blocks are marked in use but not referenced{why}: {}",
                leaked.len(),
                sample(&leaked)
            ));
        }
        if !unmarked.is_empty() {
            report.structure_problems.push(format!(
                "{} referenced physical blocks are marked free: {}",
                unmarked.len(),
                sample(&unmarked)
            ));
        }
        let damaged_maps = map_damaged.iter().any(|d| *d);
        if marked != allocated && !damaged_maps {
            report.structure_problems.push(format!(
                "the superblock counts {allocated} allocated blocks, the space map {marked}"
            ));
        }
    }
}
