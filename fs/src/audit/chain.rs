//! The hash chain over the audit log: framing, MACs, the head, and verification.
//!
//! The log is a byte stream of entries, each `u32` body length ‖ body ‖ MAC:
//!
//! - `mac_0 = HMAC-SHA256(audit key, "domfs audit chain v1\0" ‖ volume id)`;
//! - `mac_i = HMAC-SHA256(audit key, mac_{i-1} ‖ u32 length ‖ body_i)`.
//!
//! The head — sequence number of the last entry, byte length of the log, and the last
//! MAC — lives in the filesystem superblock and is committed with the log, so a log cut
//! short (or rolled back as a whole file) no longer matches it. An entry changed,
//! removed, inserted or moved breaks the MAC of the first entry it touches.
//!
//! An unreadable block (its block tag does not verify) cannot be read around: the reader
//! reports it and looks for the next entry at the next 4 KiB boundary of the log, where a
//! writer that found the log's last block damaged continues (see
//! `filesystem/audit_log.rs`).

use std::fmt;

use subtle::ConstantTimeEq;

use super::record::{AuditRecord, MAX_RECORD, MIN_RECORD};
use crate::crypto::MacKey;
use crate::types::{BLOCK_SIZE, Block, VolumeId};
use crate::{Error, Result};

pub const MAC_LEN: usize = 32;
/// Bytes of an entry besides its body: the length prefix and the MAC.
pub const FRAME_OVERHEAD: usize = 4 + MAC_LEN;
/// The largest entry in the log.
pub const MAX_ENTRY: usize = MAX_RECORD + FRAME_OVERHEAD;
/// Bytes of the encoded head.
pub const HEAD_LEN: usize = 48;
const GENESIS_LABEL: &[u8] = b"domfs audit chain v1\0";
const BS: u64 = BLOCK_SIZE as u64;

/// The end of the chain, as the filesystem superblock records it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainHead {
    /// The last entry's sequence number (0: the log is empty).
    pub seq: u64,
    /// Bytes of the log.
    pub len: u64,
    /// The last entry's MAC (zeros while the log is empty).
    pub mac: [u8; MAC_LEN],
}

impl ChainHead {
    pub fn encode(&self) -> [u8; HEAD_LEN] {
        let mut b = [0u8; HEAD_LEN];
        b[0..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.len.to_le_bytes());
        b[16..48].copy_from_slice(&self.mac);
        b
    }

    pub fn decode(b: &[u8; HEAD_LEN]) -> Self {
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&b[0..8]);
        let mut len = [0u8; 8];
        len.copy_from_slice(&b[8..16]);
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&b[16..48]);
        Self {
            seq: u64::from_le_bytes(seq),
            len: u64::from_le_bytes(len),
            mac,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.seq == 0
    }

    /// The MAC the next entry is chained to.
    pub fn prev_mac(&self, key: &MacKey, volume: &VolumeId) -> [u8; MAC_LEN] {
        if self.is_empty() {
            genesis(key, volume)
        } else {
            self.mac
        }
    }
}

/// `mac_0`: where every chain of this volume starts.
pub fn genesis(key: &MacKey, volume: &VolumeId) -> [u8; MAC_LEN] {
    key.tag(&[GENESIS_LABEL, &volume.0]).0
}

/// `mac_i` of an entry whose frame (length prefix and body) is `frame`.
pub fn entry_mac(key: &MacKey, prev: &[u8; MAC_LEN], frame: &[u8]) -> [u8; MAC_LEN] {
    key.tag(&[prev, frame]).0
}

/// Appends `records` to the chain whose end is `head`: each gets the next sequence
/// number, and its entry (length, body, MAC) is appended to `out`. `head` then describes
/// the chain with them (its `len` grows by the bytes appended).
pub fn seal_entries(
    key: &MacKey,
    volume: &VolumeId,
    head: &mut ChainHead,
    records: impl IntoIterator<Item = AuditRecord>,
    out: &mut Vec<u8>,
) {
    let mut prev = head.prev_mac(key, volume);
    for mut record in records {
        record.seq = head.seq + 1;
        let start = out.len();
        out.extend_from_slice(&[0u8; 4]);
        record.encode_into(out);
        let body_len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
        let mac = entry_mac(key, &prev, &out[start..]);
        out.extend_from_slice(&mac);
        head.seq = record.seq;
        head.len += (out.len() - start) as u64;
        head.mac = mac;
        prev = mac;
    }
}

/// The log's content, 4 KiB at a time (block `i` holds log bytes `i`·4096 …).
pub trait LogBlocks {
    fn block(&mut self, index: u64) -> Result<Box<Block>>;
}

/// A log held in memory (tests, and logs read some other way).
impl LogBlocks for &[u8] {
    fn block(&mut self, index: u64) -> Result<Box<Block>> {
        let mut out = Box::new([0u8; BLOCK_SIZE]);
        let start = usize::try_from(index.saturating_mul(BS)).unwrap_or(usize::MAX);
        if start < self.len() {
            let end = (start + BLOCK_SIZE).min(self.len());
            out[..end - start].copy_from_slice(&self[start..end]);
        }
        Ok(out)
    }
}

/// Something wrong with the chain, located at the first entry it affects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainProblem {
    /// The sequence number the affected entry has (or should have).
    pub seq: u64,
    /// Where in the log it starts.
    pub offset: u64,
    pub what: String,
}

impl fmt::Display for ChainProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "entry {} (log byte {}): {}",
            self.seq, self.offset, self.what
        )
    }
}

/// What a walk over the whole log found.
#[derive(Clone, Debug, Default)]
pub struct LogScan {
    /// Every entry that could be read, oldest first.
    pub entries: Vec<AuditRecord>,
    /// Empty when the chain is intact from `mac_0` to the head.
    pub problems: Vec<ChainProblem>,
    pub head: ChainHead,
}

impl LogScan {
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Reads log bytes through a one-block cache.
struct Bytes<'a> {
    src: &'a mut dyn LogBlocks,
    cached: Option<(u64, Box<Block>)>,
}

/// A block of the log that could not be read.
struct Unreadable {
    index: u64,
    error: Error,
}

impl Bytes<'_> {
    fn read(&mut self, pos: u64, len: usize) -> Result<Vec<u8>, Unreadable> {
        let mut out = Vec::with_capacity(len);
        let mut at = pos;
        let end = pos + len as u64;
        while at < end {
            let index = at / BS;
            let block = match self.cached.take() {
                Some((i, block)) if i == index => block,
                _ => self
                    .src
                    .block(index)
                    .map_err(|error| Unreadable { index, error })?,
            };
            let block = &self.cached.insert((index, block)).1;
            let within = (at % BS) as usize;
            let take = ((BS - at % BS).min(end - at)) as usize;
            out.extend_from_slice(&block[within..within + take]);
            at += take as u64;
        }
        Ok(out)
    }
}

/// Walks the whole log from `mac_0` to `head`, checking every link, and returns every
/// entry it could read together with everything wrong it found.
pub fn scan(key: &MacKey, volume: &VolumeId, head: &ChainHead, src: &mut dyn LogBlocks) -> LogScan {
    let mut out = LogScan {
        head: *head,
        ..LogScan::default()
    };
    let mut bytes = Bytes { src, cached: None };
    let mut prev = genesis(key, volume);
    // Whether `prev` is the MAC of the entry just before `pos` (false after damage: the
    // next entry that reads cleanly starts the chain again, unverified).
    let mut linked = true;
    let mut expect = 1u64;
    let mut pos = 0u64;
    let end = head.len;
    // After damage, further failures to find an entry are the same damage.
    let problem = |out: &mut LogScan, linked: bool, seq: u64, offset: u64, what: String| {
        if linked {
            out.problems.push(ChainProblem { seq, offset, what });
        }
    };
    let next_boundary = |pos: u64| (pos / BS + 1) * BS;
    while pos < end {
        let frame = match read_frame(&mut bytes, pos, end) {
            Ok(frame) => frame,
            Err(FrameError::Unreadable(u)) => {
                problem(
                    &mut out,
                    linked,
                    expect,
                    pos,
                    format!(
                        "log block {} (bytes {}..{}) cannot be read: {}",
                        u.index,
                        u.index * BS,
                        (u.index + 1) * BS,
                        u.error
                    ),
                );
                linked = false;
                pos = next_boundary(pos).max((u.index + 1) * BS);
                continue;
            }
            Err(FrameError::Malformed(what)) => {
                problem(&mut out, linked, expect, pos, what);
                linked = false;
                pos = next_boundary(pos);
                continue;
            }
        };
        let (framed, mac, record) = frame;
        if linked {
            let want = entry_mac(key, &prev, &framed);
            if !bool::from(want.ct_eq(&mac)) {
                problem(
                    &mut out,
                    true,
                    expect,
                    pos,
                    "its MAC does not verify: the entry was changed, or an entry before it was removed, inserted or moved".into(),
                );
            }
            if record.seq != expect {
                problem(
                    &mut out,
                    true,
                    expect,
                    pos,
                    format!(
                        "it carries sequence number {} where {expect} was due: entries were removed, inserted or reordered",
                        record.seq
                    ),
                );
            }
        }
        pos += framed.len() as u64 + MAC_LEN as u64;
        prev = mac;
        linked = true;
        expect = record.seq.wrapping_add(1);
        out.entries.push(record);
    }
    let last = out.entries.last().map_or(0, |r| r.seq);
    if head.is_empty() {
        if !out.entries.is_empty() || head.len != 0 {
            out.problems.push(ChainProblem {
                seq: 1,
                offset: 0,
                what: format!(
                    "the head (filesystem superblock) says the log is empty, but it holds {} bytes",
                    head.len
                ),
            });
        }
    } else if last != head.seq || !bool::from(prev.ct_eq(&head.mac)) {
        out.problems.push(ChainProblem {
            seq: last.wrapping_add(1),
            offset: pos.min(end),
            what: format!(
                "the log ends with entry {last}, but the head (filesystem superblock) says {}{}: entries were cut off the end, or the log was replaced",
                head.seq,
                if last == head.seq {
                    " with another last MAC"
                } else {
                    ""
                }
            ),
        });
    }
    out
}

enum FrameError {
    Unreadable(Unreadable),
    Malformed(String),
}

/// The entry at `pos`: its frame (length and body), its MAC and the decoded record.
fn read_frame(
    bytes: &mut Bytes<'_>,
    pos: u64,
    end: u64,
) -> Result<(Vec<u8>, [u8; MAC_LEN], AuditRecord), FrameError> {
    if end - pos < 4 {
        return Err(FrameError::Malformed(format!(
            "{} stray bytes at the end of the log",
            end - pos
        )));
    }
    let prefix = bytes.read(pos, 4).map_err(FrameError::Unreadable)?;
    let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if !(MIN_RECORD..=MAX_RECORD).contains(&len) {
        return Err(FrameError::Malformed(format!(
            "a record length of {len} bytes (a record has {MIN_RECORD}..={MAX_RECORD})"
        )));
    }
    let total = (4 + len + MAC_LEN) as u64;
    if end - pos < total {
        return Err(FrameError::Malformed(format!(
            "an entry of {total} bytes runs past the end of the log"
        )));
    }
    let mut framed = bytes
        .read(pos, 4 + len + MAC_LEN)
        .map_err(FrameError::Unreadable)?;
    let mut mac = [0u8; MAC_LEN];
    mac.copy_from_slice(&framed[4 + len..]);
    framed.truncate(4 + len);
    let record = AuditRecord::decode(&framed[4..])
        .map_err(|e| FrameError::Malformed(format!("the entry does not decode ({e})")))?;
    Ok((framed, mac, record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::AuditOp;

    fn key() -> MacKey {
        MacKey::new(&[7u8; 32])
    }

    const VOLUME: VolumeId = VolumeId([3u8; 16]);

    fn record(i: u64) -> AuditRecord {
        AuditRecord {
            time_us: 1_700_000_000_000_000 + i as i64,
            uid: 1000 + i as u32,
            pid: 77,
            user: "alice".into(),
            process: "cat".into(),
            host: "h".into(),
            inode: i,
            path: format!("/f{i}"),
            op: AuditOp::Open,
            ..AuditRecord::default()
        }
    }

    /// A log of `n` entries; also returns where each entry starts.
    fn log(n: u64) -> (Vec<u8>, ChainHead, Vec<usize>) {
        let mut head = ChainHead::default();
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for i in 1..=n {
            starts.push(bytes.len());
            seal_entries(&key(), &VOLUME, &mut head, [record(i)], &mut bytes);
        }
        (bytes, head, starts)
    }

    fn check(bytes: &[u8], head: &ChainHead) -> LogScan {
        let mut src: &[u8] = bytes;
        scan(&key(), &VOLUME, head, &mut src)
    }

    #[test]
    fn an_intact_log_verifies_and_reads_back() {
        let (bytes, head, _) = log(5);
        assert_eq!(head.seq, 5);
        assert_eq!(head.len, bytes.len() as u64);
        let s = check(&bytes, &head);
        assert!(s.is_intact(), "{:?}", s.problems);
        assert_eq!(s.entries.len(), 5);
        for (i, e) in s.entries.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1);
            assert_eq!(e.path, format!("/f{}", i + 1));
        }
        // Batches chain exactly like single appends.
        let mut batch_head = ChainHead::default();
        let mut batch = Vec::new();
        seal_entries(
            &key(),
            &VOLUME,
            &mut batch_head,
            (1..=5).map(record),
            &mut batch,
        );
        assert_eq!((batch, batch_head), (bytes, head));
        // An empty log is intact.
        assert!(check(&[], &ChainHead::default()).is_intact());
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let (bytes, head, _) = log(4);
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x01;
            let s = check(&bad, &head);
            assert!(!s.is_intact(), "flipping byte {at} went unnoticed");
        }
    }

    #[test]
    fn the_first_bad_entry_is_named() {
        let (bytes, head, starts) = log(4);
        // A changed uid: the entry still decodes, only its MAC fails.
        let mut bad = bytes.clone();
        bad[starts[2] + 4 + 20] ^= 0x80;
        let s = check(&bad, &head);
        assert_eq!(s.problems[0].seq, 3, "{:?}", s.problems);
        assert_eq!(s.problems[0].offset, starts[2] as u64);
        assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
        assert_eq!(s.entries.len(), 4);
        // A user name that is no longer UTF-8: the entry does not decode.
        let mut bad = bytes.clone();
        bad[starts[2] + 4 + 46] ^= 0x80;
        let s = check(&bad, &head);
        assert_eq!(s.problems[0].seq, 3, "{:?}", s.problems);
        assert!(
            s.problems[0].what.contains("does not decode"),
            "{:?}",
            s.problems
        );
    }

    #[test]
    fn a_removed_entry_is_detected() {
        let (bytes, head, starts) = log(5);
        for k in 0..5 {
            let end = starts.get(k + 1).copied().unwrap_or(bytes.len());
            let mut cut = bytes[..starts[k]].to_vec();
            cut.extend_from_slice(&bytes[end..]);
            // Even with the head's length adjusted to match.
            let mut h = head;
            h.len = cut.len() as u64;
            let s = check(&cut, &h);
            assert!(!s.is_intact(), "removing entry {} went unnoticed", k + 1);
            assert_eq!(s.problems[0].seq, k as u64 + 1, "{:?}", s.problems);
        }
    }

    #[test]
    fn a_cut_tail_is_detected_against_the_head() {
        let (bytes, head, starts) = log(5);
        for k in 1..5 {
            let cut = &bytes[..starts[k]];
            let mut h = head;
            h.len = cut.len() as u64;
            let s = check(cut, &h);
            assert!(!s.is_intact(), "cutting after entry {k} went unnoticed");
            assert_eq!(s.entries.len(), k);
            assert!(s.problems[0].what.contains("cut off"), "{:?}", s.problems);
        }
        // The whole log dropped, the head kept.
        let mut h = head;
        h.len = 0;
        assert!(!check(&[], &h).is_intact());
    }

    #[test]
    fn a_reordered_pair_is_detected() {
        let (bytes, head, starts) = log(5);
        for k in 0..4 {
            let a = &bytes[starts[k]..starts[k + 1]];
            let b_end = starts.get(k + 2).copied().unwrap_or(bytes.len());
            let b = &bytes[starts[k + 1]..b_end];
            let mut swapped = bytes[..starts[k]].to_vec();
            swapped.extend_from_slice(b);
            swapped.extend_from_slice(a);
            swapped.extend_from_slice(&bytes[b_end..]);
            let s = check(&swapped, &head);
            assert!(!s.is_intact(), "swapping entries {} and {}", k + 1, k + 2);
            assert_eq!(s.problems[0].seq, k as u64 + 1, "{:?}", s.problems);
        }
    }

    #[test]
    fn another_volume_or_key_does_not_verify() {
        let (bytes, head, _) = log(2);
        let mut src: &[u8] = &bytes;
        assert!(!scan(&key(), &VolumeId([4u8; 16]), &head, &mut src).is_intact());
        let mut src: &[u8] = &bytes;
        assert!(!scan(&MacKey::new(&[8u8; 32]), &VOLUME, &head, &mut src).is_intact());
    }

    /// A log whose block is unreadable, and a writer that went on at the next boundary.
    struct Damaged<'a> {
        bytes: &'a [u8],
        bad: u64,
    }

    impl LogBlocks for Damaged<'_> {
        fn block(&mut self, index: u64) -> Result<Box<Block>> {
            if index == self.bad {
                return Err(Error::CorruptFilesystem("test damage".into()));
            }
            let mut src = self.bytes;
            src.block(index)
        }
    }

    #[test]
    fn entries_after_an_unreadable_block_are_found_at_the_next_boundary() {
        let (mut bytes, mut head, _) = log(3);
        // The writer found block 0 damaged: it went on at byte 4096.
        bytes.resize(BLOCK_SIZE, 0);
        head.len = BLOCK_SIZE as u64;
        seal_entries(
            &key(),
            &VOLUME,
            &mut head,
            [record(4), record(5)],
            &mut bytes,
        );
        let s = scan(
            &key(),
            &VOLUME,
            &head,
            &mut Damaged {
                bytes: &bytes,
                bad: 0,
            },
        );
        assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
        assert_eq!(s.problems[0].seq, 1);
        assert!(s.problems[0].what.contains("cannot be read"));
        let seqs: Vec<u64> = s.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [4, 5]);
    }

    #[test]
    fn head_round_trips() {
        let h = ChainHead {
            seq: 9,
            len: 12345,
            mac: [0xab; 32],
        };
        assert_eq!(ChainHead::decode(&h.encode()), h);
        assert!(ChainHead::decode(&[0u8; HEAD_LEN]).is_empty());
    }
}
