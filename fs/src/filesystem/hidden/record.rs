//! A table record as stored (the layout is in the [module doc](super)): encoding,
//! decoding, and its view as a [`HiddenVersion`].
//!
//! Byte 76 counts *extra fields*: `u64`s after the text (path, process, host), from the
//! first multiple of 8 after it; the record length covers them. A punch (event 5) has one,
//! the end of the punched range. Records written before extra fields existed have a zero
//! there (the byte was reserved and written as zero), so they read as before; a reader
//! ignores extra fields it does not know.

use super::who::MAX_PROCESS;
use super::{HiddenEvent, HiddenVersion};
use crate::filesystem::inode::Timestamp;
use crate::{Error, Result};

/// The longest path a record keeps.
pub const MAX_PATH: usize = 3584;
const HEADER_LEN: usize = 80;
/// Most extra fields a record may have.
const MAX_EXTRA: usize = 8;

pub(super) const STATE_OPEN: u8 = 1;
pub(super) const STATE_KEPT: u8 = 2;
pub(super) const STATE_RESTORED: u8 = 3;
pub(super) const STATE_PURGED: u8 = 4;

/// A record as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub state: u8,
    pub event: HiddenEvent,
    pub mode: u32,
    pub id: u64,
    pub ino: u64,
    pub time: Timestamp,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub size: u64,
    pub blocks: u64,
    pub cut_at: u64,
    pub path: Vec<u8>,
    pub process: Vec<u8>,
    pub host: Vec<u8>,
}

impl Record {
    /// Where the extra fields start.
    fn extra_at(&self) -> usize {
        HEADER_LEN + (self.path.len() + self.process.len() + self.host.len()).next_multiple_of(8)
    }

    /// The extra fields this record's event has.
    fn extra(&self) -> Vec<u64> {
        match self.event {
            HiddenEvent::Punch { end } => vec![end],
            _ => Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.extra_at() + 8 * self.extra().len()
    }

    pub(super) fn is_live(&self) -> bool {
        self.state == STATE_OPEN || self.state == STATE_KEPT
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.len()];
        b[0..2].copy_from_slice(&(self.len() as u16).to_le_bytes());
        b[2] = self.state;
        b[3] = self.event.code();
        b[4..8].copy_from_slice(&self.mode.to_le_bytes());
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..24].copy_from_slice(&self.ino.to_le_bytes());
        b[24..32].copy_from_slice(&self.time.secs.to_le_bytes());
        b[32..36].copy_from_slice(&self.time.nanos.to_le_bytes());
        b[36..40].copy_from_slice(&self.uid.to_le_bytes());
        b[40..44].copy_from_slice(&self.gid.to_le_bytes());
        b[44..48].copy_from_slice(&self.pid.to_le_bytes());
        b[48..56].copy_from_slice(&self.size.to_le_bytes());
        b[56..64].copy_from_slice(&self.blocks.to_le_bytes());
        b[64..72].copy_from_slice(&self.cut_at.to_le_bytes());
        b[72..74].copy_from_slice(&(self.path.len() as u16).to_le_bytes());
        b[74] = self.process.len() as u8;
        b[75] = self.host.len() as u8;
        let extra = self.extra();
        b[76] = extra.len() as u8;
        let mut at = HEADER_LEN;
        for part in [&self.path, &self.process, &self.host] {
            b[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        let mut at = self.extra_at();
        for field in extra {
            b[at..at + 8].copy_from_slice(&field.to_le_bytes());
            at += 8;
        }
        b
    }

    /// The record at the start of `b` (the rest of a table block) and its length; `None`
    /// at the end of the block's records.
    pub(super) fn decode(b: &[u8], offset: u64) -> Result<Option<(Self, usize)>> {
        let bad = |why: &str| {
            Error::CorruptFilesystem(format!("hidden-version table, byte {offset}: {why}"))
        };
        let u16_at = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(x)
        };
        if b.len() < 2 {
            return Ok(None);
        }
        let len = usize::from(u16_at(0));
        if len == 0 {
            return Ok(None);
        }
        if len < HEADER_LEN || !len.is_multiple_of(8) || len > b.len() {
            return Err(bad(&format!("record length {len}")));
        }
        let (p, c, h) = (
            usize::from(u16_at(72)),
            usize::from(b[74]),
            usize::from(b[75]),
        );
        let n = usize::from(b[76]);
        let extra_at = HEADER_LEN + (p + c + h).next_multiple_of(8);
        if p > MAX_PATH || c > MAX_PROCESS || n > MAX_EXTRA || extra_at + 8 * n > len {
            return Err(bad("field lengths"));
        }
        let extra: Vec<u64> = (0..n).map(|i| u64_at(extra_at + 8 * i)).collect();
        let state = b[2];
        if !(STATE_OPEN..=STATE_PURGED).contains(&state) {
            return Err(bad(&format!("state {state}")));
        }
        let cut_at = u64_at(64);
        let event = match b[3] {
            1 => HiddenEvent::Unlink,
            2 => HiddenEvent::Rmdir,
            3 => HiddenEvent::RenameOver,
            4 => HiddenEvent::Truncate,
            5 => match extra.first() {
                Some(&end) if end > cut_at => HiddenEvent::Punch { end },
                _ => return Err(bad("punch without its range")),
            },
            _ => return Err(bad("unknown event")),
        };
        let time = Timestamp {
            secs: u64_at(24) as i64,
            nanos: u32_at(32),
        };
        if time.nanos >= 1_000_000_000 {
            return Err(bad("time out of range"));
        }
        let text = &b[HEADER_LEN..HEADER_LEN + p + c + h];
        let record = Record {
            state,
            event,
            mode: u32_at(4),
            id: u64_at(8),
            ino: u64_at(16),
            time,
            uid: u32_at(36),
            gid: u32_at(40),
            pid: u32_at(44),
            size: u64_at(48),
            blocks: u64_at(56),
            cut_at,
            path: text[..p].to_vec(),
            process: text[p..p + c].to_vec(),
            host: text[p + c..].to_vec(),
        };
        Ok(Some((record, len)))
    }

    pub(super) fn version(&self, number: u32) -> HiddenVersion {
        HiddenVersion {
            path: self.path.clone(),
            version: number,
            id: self.id,
            ino: self.ino,
            event: self.event,
            time: self.time,
            uid: self.uid,
            gid: self.gid,
            pid: self.pid,
            process: String::from_utf8_lossy(&self.process).into_owned(),
            host: String::from_utf8_lossy(&self.host).into_owned(),
            mode: self.mode,
            size: self.size,
            blocks: self.blocks,
            cut_at: self.cut_at,
            open: self.state == STATE_OPEN,
        }
    }
}
