//! Reading, choosing and first writing the two superblock slots.

use std::sync::Arc;

use crate::crypto::{DomainKey, VolumeKeys, WriterKeys};
use crate::device::Device;
use crate::format::header::{DomainHeader, KeyMode};
use crate::format::superblock::{SlotState, Superblock};
use crate::format::{SUPERBLOCK_LEN, SUPERBLOCK_OFFSETS};
use crate::store::geometry::Geometry;
use crate::store::pointer::Pointer;
use crate::types::Generation;
use crate::{Error, Result};

/// Generations a session may use before its superblock must record a higher mark.
pub(crate) const GENERATION_STEP: u64 = 1 << 32;

/// Both slots as found on disk.
pub struct SlotReport {
    pub slots: [SlotState; 2],
}

impl SlotReport {
    /// The newest valid superblock.
    pub fn current(&self) -> Result<&Superblock> {
        let valid = self.slots.iter().filter_map(|s| match s {
            SlotState::Valid(sb) => Some(&**sb),
            _ => None,
        });
        if let Some(unsigned) = self
            .slots
            .iter()
            .position(|s| matches!(s, SlotState::Unsigned))
        {
            return Err(Error::ForgedSuperblock(format!(
                "superblock slot {unsigned} (offset {}) verifies under the domain key but is not signed by the domain's writer key: \
                 a host without write access, or a key-file tool, wrote it",
                SUPERBLOCK_OFFSETS[unsigned]
            )));
        }
        if let Some(best) = valid.max_by_key(|sb| sb.sequence) {
            return Ok(best);
        }
        if self.slots.iter().any(|s| matches!(s, SlotState::WrongKey)) {
            return Err(Error::WrongKey);
        }
        if self.slots.iter().all(|s| matches!(s, SlotState::Empty)) {
            return Err(Error::Unformatted);
        }
        let reasons: Vec<String> = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| format!("slot {i}: {}", describe(s)))
            .collect();
        Err(Error::CorruptSuperblock(reasons.join("; ")))
    }

    /// Problems worth reporting although the volume opens. Power loss never causes any
    /// (a superblock is one atomic sector, and both slots are written at format time), so
    /// each is damage or tampering — and a damaged slot may have held the newest commit.
    pub fn problems(&self) -> Vec<String> {
        let Ok(current) = self.current() else {
            return Vec::new();
        };
        let mut problems = Vec::new();
        for (i, state) in self.slots.iter().enumerate() {
            match state {
                SlotState::Valid(sb) if sb.slot() != i => problems.push(format!(
                    "superblock slot {i} holds commit {}, which belongs in slot {} (slots swapped or copied)",
                    sb.sequence,
                    sb.slot()
                )),
                SlotState::Valid(_) => {}
                state => problems.push(format!(
                    "superblock slot {i} (offset {}) {}; the volume opens from commit {} in slot {}, and a newer commit may have been lost",
                    SUPERBLOCK_OFFSETS[i],
                    describe(state),
                    current.sequence,
                    current.slot()
                )),
            }
        }
        problems
    }
}

pub fn describe(state: &SlotState) -> String {
    match state {
        SlotState::Empty => "is empty".into(),
        SlotState::Valid(sb) => format!("holds commit {}", sb.sequence),
        SlotState::WrongKey => "has a key check value that does not match this key".into(),
        SlotState::Damaged(why) => format!("is damaged: {why}"),
        SlotState::Unsigned => "is not signed by the domain's writer key".into(),
    }
}

pub fn read_slots(
    dev: &dyn Device,
    keys: &VolumeKeys,
    header: &DomainHeader,
) -> Result<SlotReport> {
    let mut slots = [SlotState::Empty, SlotState::Empty];
    for (slot, offset) in slots.iter_mut().zip(SUPERBLOCK_OFFSETS) {
        let mut buf = [0u8; SUPERBLOCK_LEN];
        dev.read_at(&mut buf, offset)
            .map_err(|e| Error::io(format!("reading the superblock of {}", dev.name()), e))?;
        *slot = Superblock::decode(&buf, keys, &header.volume_id);
    }
    Ok(SlotReport { slots })
}

/// Refuses a superblock that does not describe the container the header describes.
pub(crate) fn check_against_header(
    sb: &Superblock,
    header: &DomainHeader,
    geometry: &Geometry,
) -> Result<()> {
    if sb.header_binding != header.binding_hash() {
        return Err(Error::CorruptHeader(
            "the header's fixed fields were changed since the volume was formatted".into(),
        ));
    }
    if sb.physical_blocks != geometry.physical_blocks
        || sb.logical_blocks != geometry.logical_blocks
        || sb.height != geometry.height
        || sb.allocated > geometry.usable_blocks()
    {
        return Err(Error::CorruptSuperblock(
            "its geometry does not match the header".into(),
        ));
    }
    Ok(())
}

/// Refuses to write superblocks another host could not verify: an agent-mode volume is
/// written only with the domain's writer key.
pub(crate) fn check_can_write(header: &DomainHeader, keys: &VolumeKeys) -> Result<()> {
    if header.key_mode == KeyMode::Ttp && !keys.writer.as_ref().is_some_and(|w| w.can_sign()) {
        return Err(Error::Invalid(
            "this volume's superblocks are signed with the domain's writer key, which only a read-write grant from the TTP carries; open it read-only, or mount it through the agent".into(),
        ));
    }
    Ok(())
}

/// Writes the first superblocks of an empty volume (both slots, so that an empty slot is
/// never normal later). The header must already be on the device.
pub fn format_volume(
    dev: &dyn Device,
    header: &DomainHeader,
    key: &DomainKey,
    writer: Option<Arc<WriterKeys>>,
) -> Result<()> {
    let geometry = Geometry::for_container(header.container_size)?;
    let keys = VolumeKeys::derive(key, &header.volume_id).with_writer(writer);
    check_can_write(header, &keys)?;
    let mut sb = Superblock {
        volume_id: header.volume_id,
        sequence: 0,
        generation_hwm: Generation(GENERATION_STEP),
        logical_blocks: geometry.logical_blocks,
        physical_blocks: geometry.physical_blocks,
        height: geometry.height,
        root: Pointer::NULL,
        allocated: 0,
        header_binding: header.binding_hash(),
        commit_time: now(),
        alloc_cursor: 0,
    };
    for sequence in [0, 1] {
        sb.sequence = sequence;
        dev.write_at(&sb.encode(&keys), SUPERBLOCK_OFFSETS[sb.slot()])
            .map_err(|e| Error::io(format!("writing the superblock of {}", dev.name()), e))?;
    }
    dev.sync()
        .map_err(|e| Error::io(format!("syncing {}", dev.name()), e))
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
