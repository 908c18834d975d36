//! The two copies of the domain header: reading both and choosing one, writing both.
//!
//! Copy A (at 0) is always written first and synced before copy B (at 64 KiB), so a crash
//! leaves at least one whole copy: either A is new and B old (A is used, B reported as
//! differing), or A is torn and B old (B is used, A reported as damaged).

use super::{DomainHeader, MAGIC};
use crate::device::Device;
use crate::format::{FORMAT_VERSION, HEADER_OFFSETS, HEADER_SLOT_SIZE};
use crate::{Error, Result};

/// The copies by name and offset.
const COPIES: [(&str, u64); 2] = [("A", HEADER_OFFSETS[0]), ("B", HEADER_OFFSETS[1])];

/// What [`read_header`] found in one of the two copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyState {
    Valid,
    /// Unreadable, with the reason.
    Damaged(String),
    /// Valid, but not equal to copy A, which was used (an update interrupted between the
    /// two writes; writing the header again repairs it).
    Differs,
}

/// The header chosen by [`read_header`], and the state of copies A and B.
#[derive(Clone, Debug)]
pub struct HeaderRead {
    pub header: DomainHeader,
    pub copies: [CopyState; 2],
}

impl CopyState {
    pub fn is_valid(&self) -> bool {
        matches!(self, CopyState::Valid)
    }
}

/// Reads both header copies and chooses one: A if it is valid, else B.
///
/// Errors: `NotDomfs` if neither copy starts with the magic; `Truncated` if the container
/// ends inside the two slots and no copy is whole and valid, or is shorter than the chosen
/// header's container size; `UnsupportedVersion` if no copy is valid and one is of another
/// format version; otherwise `CorruptHeader` naming both reasons. An I/O error is returned
/// as such only when it leaves no way to tell whether this is a domfs volume.
pub fn read_header(dev: &dyn Device) -> Result<HeaderRead> {
    let size = dev.size();
    let [a, b] = COPIES.map(|(name, offset)| read_copy(dev, name, offset));
    let (header, copies) = match (a, b) {
        (
            CopyRead {
                outcome: Ok(ha),
                short: false,
                ..
            },
            CopyRead {
                outcome: Ok(hb),
                short: false,
                ..
            },
        ) => {
            let state_b = if ha == hb {
                CopyState::Valid
            } else {
                CopyState::Differs
            };
            (ha, [CopyState::Valid, state_b])
        }
        (
            CopyRead {
                outcome: Ok(ha),
                short: false,
                ..
            },
            b,
        ) => (ha, [CopyState::Valid, b.damage()]),
        (
            a,
            CopyRead {
                outcome: Ok(hb),
                short: false,
                ..
            },
        ) => (hb, [a.damage(), CopyState::Valid]),
        (a, b) => return Err(neither_valid(size, a, b)),
    };
    if size < header.container_size {
        return Err(Error::Truncated {
            expected: header.container_size,
            actual: size,
        });
    }
    Ok(HeaderRead { header, copies })
}

/// Writes the header to both slots, zero-padded: copy A, sync, copy B, sync.
pub fn write_header(dev: &dyn Device, header: &DomainHeader) -> Result<()> {
    let record = header.encode()?;
    let mut slot = vec![0u8; HEADER_SLOT_SIZE as usize];
    slot.get_mut(..record.len())
        .ok_or_else(|| Error::Invalid("the header is larger than its slot".into()))?
        .copy_from_slice(&record);
    for (name, offset) in COPIES {
        let what = || format!("writing header copy {name} of {}", dev.name());
        dev.write_at(&slot, offset)
            .map_err(|e| Error::io(what(), e))?;
        dev.sync().map_err(|e| Error::io(what(), e))?;
    }
    Ok(())
}

/// One slot as read.
struct CopyRead {
    outcome: Result<DomainHeader>,
    /// The slot starts with the magic: a failure is damage, not a foreign container.
    has_magic: bool,
    /// The container ends inside the slot. The copy is then unusable, but a record that
    /// still decodes tells how long the container should be.
    short: bool,
}

impl CopyRead {
    fn damage(&self) -> CopyState {
        CopyState::Damaged(self.reason())
    }

    fn reason(&self) -> String {
        if self.short {
            return "the container ends inside this copy".to_string();
        }
        match &self.outcome {
            Ok(_) => "valid".to_string(),
            Err(Error::CorruptHeader(reason)) => reason.clone(),
            Err(Error::NotDomfs) => "no domfs magic".to_string(),
            Err(Error::UnsupportedVersion(v)) => {
                format!("format version {v}, this build reads {FORMAT_VERSION}")
            }
            Err(e) => e.to_string(),
        }
    }
}

fn read_copy(dev: &dyn Device, name: &str, offset: u64) -> CopyRead {
    let available = dev.size().saturating_sub(offset).min(HEADER_SLOT_SIZE);
    let short = available < HEADER_SLOT_SIZE;
    // At most one slot (64 KiB), so the conversion is exact.
    let mut buf = vec![0u8; available as usize];
    // The container may end before this slot begins: then there is nothing to read.
    let read = if buf.is_empty() {
        Ok(())
    } else {
        dev.read_at(&mut buf, offset)
    };
    if let Err(e) = read {
        let what = format!("reading header copy {name} of {}", dev.name());
        return CopyRead {
            outcome: Err(Error::io(what, e)),
            has_magic: false,
            short,
        };
    }
    CopyRead {
        outcome: DomainHeader::decode(&buf),
        has_magic: buf.starts_with(&MAGIC),
        short,
    }
}

fn neither_valid(size: u64, a: CopyRead, b: CopyRead) -> Error {
    if !a.has_magic && !b.has_magic {
        // A copy that could not be read may still hold a header: report the I/O error.
        return match (a.outcome, b.outcome) {
            (Err(e @ Error::Io { .. }), _) | (_, Err(e @ Error::Io { .. })) => e,
            _ => Error::NotDomfs,
        };
    }
    let slots_end = HEADER_OFFSETS[1] + HEADER_SLOT_SIZE;
    if size < slots_end {
        let said = [&a, &b]
            .iter()
            .filter_map(|c| c.outcome.as_ref().ok())
            .map(|h| h.container_size)
            .max();
        return Error::Truncated {
            expected: said.unwrap_or(0).max(slots_end),
            actual: size,
        };
    }
    for c in [&a, &b] {
        if let Err(Error::UnsupportedVersion(v)) = c.outcome {
            return Error::UnsupportedVersion(v);
        }
    }
    Error::CorruptHeader(format!("copy A: {}; copy B: {}", a.reason(), b.reason()))
}
