//! One audit record and its byte encoding (see `fs/FORMAT.md`, *Audit log*).
//!
//! The body of a record, version 1 (all integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | record version (1) |
//! | 1 | 1 | operation ([`AuditOp`]) |
//! | 2 | 1 | access mode (0 none, 1 r, 2 w, 3 rw) |
//! | 3 | 1 | zero |
//! | 4 | 8 | sequence number (1, 2, …) |
//! | 12 | 8 | time, `i64` microseconds since 1970-01-01 UTC |
//! | 20 | 4 | uid |
//! | 24 | 4 | gid |
//! | 28 | 4 | pid |
//! | 32 | 4 | result, `i32`: 0 = ok, else the errno the request was answered with |
//! | 36 | 8 | inode number (0: none) |
//! | 44 | 2 + n | user name: `u16` length ≤ 256, UTF-8 |
//! | | 2 + n | process name: `u16` length ≤ 256, UTF-8 |
//! | | 2 + n | host name: `u16` length ≤ 256, UTF-8 |
//! | | 2 + n | path at the time: `u16` length ≤ 4096, UTF-8 |
//! | | 2 + n | detail (what changed, where to, which block): `u16` length ≤ 1024, UTF-8 |
//!
//! Nothing else follows: the body's length is exactly what the fields take. Encoding
//! cuts a field that is too long (at a character boundary, marked with `…`); decoding
//! refuses anything out of bounds, any trailing byte, and text that is not UTF-8.

use crate::{Error, Result};

pub const RECORD_VERSION: u8 = 1;
/// Bytes of the fixed part of a record's body.
pub const FIXED_LEN: usize = 44;
pub const MAX_NAME: usize = 256;
pub const MAX_PATH: usize = 4096;
pub const MAX_DETAIL: usize = 1024;
/// The smallest and largest body a record can have.
pub const MIN_RECORD: usize = FIXED_LEN + 5 * 2;
pub const MAX_RECORD: usize = MIN_RECORD + 3 * MAX_NAME + MAX_PATH + MAX_DETAIL;

/// What happened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AuditOp {
    /// A file or directory was opened: the viewing event (reads served from the kernel's
    /// page cache never reach domfs).
    #[default]
    Open,
    /// A file, directory, symlink or device node was created (and, for files, opened).
    Create,
    /// Attributes changed: mode, owner, size (truncate), times, extended attributes.
    Setattr,
    Rename,
    /// A new name for an existing file (hard link).
    Link,
    /// A name was removed (unlink, rmdir): the content is kept as a hidden version.
    Hide,
    /// A hidden version was brought back.
    Restore,
    /// A hidden version was destroyed for good.
    Purge,
    /// A block did not verify (the request failed with EIO).
    IntegrityError,
    Mount,
    Unmount,
    /// An operation this build does not know (written by a newer one).
    Other(u8),
}

impl AuditOp {
    pub fn code(self) -> u8 {
        match self {
            AuditOp::Open => 1,
            AuditOp::Create => 2,
            AuditOp::Setattr => 3,
            AuditOp::Rename => 4,
            AuditOp::Hide => 5,
            AuditOp::Restore => 6,
            AuditOp::Purge => 7,
            AuditOp::IntegrityError => 8,
            AuditOp::Mount => 9,
            AuditOp::Unmount => 10,
            AuditOp::Link => 11,
            AuditOp::Other(code) => code,
        }
    }

    pub fn from_code(code: u8) -> Self {
        match code {
            1 => AuditOp::Open,
            2 => AuditOp::Create,
            3 => AuditOp::Setattr,
            4 => AuditOp::Rename,
            5 => AuditOp::Hide,
            6 => AuditOp::Restore,
            7 => AuditOp::Purge,
            8 => AuditOp::IntegrityError,
            9 => AuditOp::Mount,
            10 => AuditOp::Unmount,
            11 => AuditOp::Link,
            other => AuditOp::Other(other),
        }
    }

    /// The name used in listings and JSON (`open`, `integrity-error`, …).
    pub fn name(self) -> String {
        match self {
            AuditOp::Open => "open".into(),
            AuditOp::Create => "create".into(),
            AuditOp::Setattr => "setattr".into(),
            AuditOp::Rename => "rename".into(),
            AuditOp::Link => "link".into(),
            AuditOp::Hide => "hide".into(),
            AuditOp::Restore => "restore".into(),
            AuditOp::Purge => "purge".into(),
            AuditOp::IntegrityError => "integrity-error".into(),
            AuditOp::Mount => "mount".into(),
            AuditOp::Unmount => "unmount".into(),
            AuditOp::Other(code) => format!("op-{code}"),
        }
    }
}

/// How a file was opened (only for [`AuditOp::Open`] and [`AuditOp::Create`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AccessMode {
    #[default]
    None,
    Read,
    Write,
    ReadWrite,
}

impl AccessMode {
    pub fn code(self) -> u8 {
        match self {
            AccessMode::None => 0,
            AccessMode::Read => 1,
            AccessMode::Write => 2,
            AccessMode::ReadWrite => 3,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => AccessMode::None,
            1 => AccessMode::Read,
            2 => AccessMode::Write,
            3 => AccessMode::ReadWrite,
            _ => return None,
        })
    }

    /// From `open(2)` flags.
    pub fn from_open_flags(flags: i32) -> Self {
        match flags & 0o3 {
            0 => AccessMode::Read,
            1 => AccessMode::Write,
            _ => AccessMode::ReadWrite,
        }
    }

    /// `r`, `w`, `rw`, or empty.
    pub fn name(self) -> &'static str {
        match self {
            AccessMode::None => "",
            AccessMode::Read => "r",
            AccessMode::Write => "w",
            AccessMode::ReadWrite => "rw",
        }
    }
}

/// One entry of the audit trail.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditRecord {
    /// Position in the chain (1, 2, …); 0 until the record is written into the log.
    pub seq: u64,
    /// Microseconds since 1970-01-01 UTC.
    pub time_us: i64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub user: String,
    pub process: String,
    pub host: String,
    /// 0 when the event concerns no inode (mount, unmount).
    pub inode: u64,
    /// The path inside the volume at the time, from its root (`/dir/file`); empty when
    /// unknown.
    pub path: String,
    pub op: AuditOp,
    pub mode: AccessMode,
    /// 0 = ok, else the errno the request was answered with.
    pub result: i32,
    /// What changed (setattr), the new path (rename), the damaged block (integrity error).
    pub detail: String,
}

impl AuditRecord {
    /// Microseconds since the epoch, now.
    pub fn now_us() -> i64 {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
        }
    }

    /// The body's length once encoded (fields cut to their bounds).
    pub fn encoded_len(&self) -> usize {
        FIXED_LEN
            + 5 * 2
            + cut(&self.user, MAX_NAME).len()
            + cut(&self.process, MAX_NAME).len()
            + cut(&self.host, MAX_NAME).len()
            + cut(&self.path, MAX_PATH).len()
            + cut(&self.detail, MAX_DETAIL).len()
    }

    /// Appends the body to `out` (fields longer than their bound are cut).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.push(RECORD_VERSION);
        out.push(self.op.code());
        out.push(self.mode.code());
        out.push(0);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.time_us.to_le_bytes());
        out.extend_from_slice(&self.uid.to_le_bytes());
        out.extend_from_slice(&self.gid.to_le_bytes());
        out.extend_from_slice(&self.pid.to_le_bytes());
        out.extend_from_slice(&self.result.to_le_bytes());
        out.extend_from_slice(&self.inode.to_le_bytes());
        for (text, max) in [
            (&self.user, MAX_NAME),
            (&self.process, MAX_NAME),
            (&self.host, MAX_NAME),
            (&self.path, MAX_PATH),
            (&self.detail, MAX_DETAIL),
        ] {
            let text = cut(text, max);
            out.extend_from_slice(&(text.len() as u16).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Parses a body; any deviation from the format is an error, never a panic.
    pub fn decode(body: &[u8]) -> Result<Self> {
        if body.len() < MIN_RECORD || body.len() > MAX_RECORD {
            return Err(bad(format!("a record of {} bytes", body.len())));
        }
        if body[0] != RECORD_VERSION {
            return Err(bad(format!("record version {}", body[0])));
        }
        let mode = AccessMode::from_code(body[2])
            .ok_or_else(|| bad(format!("access mode {}", body[2])))?;
        if body[3] != 0 {
            return Err(bad("a reserved byte is set".into()));
        }
        let mut r = Reader { b: body, at: 4 };
        let seq = r.u64()?;
        let time_us = r.u64()? as i64;
        let uid = r.u32()?;
        let gid = r.u32()?;
        let pid = r.u32()?;
        let result = r.u32()? as i32;
        let inode = r.u64()?;
        let user = r.text(MAX_NAME)?;
        let process = r.text(MAX_NAME)?;
        let host = r.text(MAX_NAME)?;
        let path = r.text(MAX_PATH)?;
        let detail = r.text(MAX_DETAIL)?;
        if r.at != body.len() {
            return Err(bad(format!("{} bytes after the record", body.len() - r.at)));
        }
        Ok(Self {
            seq,
            time_us,
            uid,
            gid,
            pid,
            user,
            process,
            host,
            inode,
            path,
            op: AuditOp::from_code(body[1]),
            mode,
            result,
            detail,
        })
    }
}

fn bad(what: String) -> Error {
    Error::CorruptFilesystem(format!("audit record: {what}"))
}

/// `text` cut to at most `max` bytes at a character boundary, ending in `…` when cut.
pub fn cut(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    const MARK: &str = "…";
    let mut end = max - MARK.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}{MARK}", &text[..end]))
}

/// Bytes as text: valid UTF-8 as it is, every other byte as `\xNN`.
pub fn text_of(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| bad("a field runs past the record".into()))?;
        let out = &self.b[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32> {
        let mut x = [0u8; 4];
        x.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(x))
    }

    fn u64(&mut self) -> Result<u64> {
        let mut x = [0u8; 8];
        x.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(x))
    }

    fn text(&mut self, max: usize) -> Result<String> {
        let mut len = [0u8; 2];
        len.copy_from_slice(self.take(2)?);
        let len = usize::from(u16::from_le_bytes(len));
        if len > max {
            return Err(bad(format!("a text field of {len} bytes (at most {max})")));
        }
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| bad("a text field is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> AuditRecord {
        AuditRecord {
            seq: 7,
            time_us: 1_767_225_600_123_456,
            uid: 1000,
            gid: 100,
            pid: 4242,
            user: "alice".into(),
            process: "cat".into(),
            host: "ward-3".into(),
            inode: 12,
            path: "/patients/åsa.txt".into(),
            op: AuditOp::Open,
            mode: AccessMode::Read,
            result: 0,
            detail: String::new(),
        }
    }

    #[test]
    fn a_record_round_trips() {
        let r = sample();
        let body = r.encode();
        assert_eq!(body.len(), r.encoded_len());
        assert_eq!(AuditRecord::decode(&body).unwrap(), r);
        let empty = AuditRecord::default();
        assert_eq!(AuditRecord::decode(&empty.encode()).unwrap(), empty);
        assert_eq!(empty.encode().len(), MIN_RECORD);
    }

    #[test]
    fn long_fields_are_cut_at_their_bounds_and_still_decode() {
        let mut r = sample();
        r.path = format!("/{}", "é".repeat(3000));
        r.detail = "x".repeat(5000);
        r.user = "u".repeat(300);
        let body = r.encode();
        assert!(body.len() <= MAX_RECORD);
        let back = AuditRecord::decode(&body).unwrap();
        assert!(back.path.len() <= MAX_PATH && back.path.ends_with('…'));
        assert!(back.path.starts_with("/éé"));
        assert_eq!(back.detail.len(), MAX_DETAIL);
        assert_eq!(back.user.len(), MAX_NAME);
        // The largest record is exactly MAX_RECORD.
        let big = AuditRecord {
            user: "a".repeat(MAX_NAME),
            process: "b".repeat(MAX_NAME),
            host: "c".repeat(MAX_NAME),
            path: "d".repeat(MAX_PATH),
            detail: "e".repeat(MAX_DETAIL),
            ..sample()
        };
        assert_eq!(big.encode().len(), MAX_RECORD);
    }

    #[test]
    fn out_of_bounds_input_is_refused() {
        let body = sample().encode();
        assert!(AuditRecord::decode(&body[..body.len() - 1]).is_err());
        let mut longer = body.clone();
        longer.push(0);
        assert!(AuditRecord::decode(&longer).is_err());
        let mut version = body.clone();
        version[0] = 2;
        assert!(AuditRecord::decode(&version).is_err());
        let mut mode = body.clone();
        mode[2] = 9;
        assert!(AuditRecord::decode(&mode).is_err());
        // A user name longer than its bound.
        let mut r = body[..FIXED_LEN].to_vec();
        r.extend_from_slice(&300u16.to_le_bytes());
        r.extend(std::iter::repeat_n(b'a', 300));
        for _ in 0..4 {
            r.extend_from_slice(&0u16.to_le_bytes());
        }
        assert!(AuditRecord::decode(&r).is_err());
        // Not UTF-8.
        let mut r = body[..FIXED_LEN].to_vec();
        r.extend_from_slice(&1u16.to_le_bytes());
        r.push(0xff);
        for _ in 0..4 {
            r.extend_from_slice(&0u16.to_le_bytes());
        }
        assert!(AuditRecord::decode(&r).is_err());
    }

    #[test]
    fn unknown_operations_are_kept() {
        let mut body = sample().encode();
        body[1] = 200;
        let r = AuditRecord::decode(&body).unwrap();
        assert_eq!(r.op, AuditOp::Other(200));
        assert_eq!(r.op.name(), "op-200");
        assert_eq!(r.encode(), body);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_escaped() {
        assert_eq!(text_of(b"a\xffb/\xc3\xa5"), "a\\xffb/å");
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..6200)) {
            let _ = AuditRecord::decode(&bytes);
        }

        #[test]
        fn mutated_records_never_panic(flips in proptest::collection::vec((0usize..200, any::<u8>()), 1..8)) {
            let mut body = sample().encode();
            for (at, x) in flips {
                let at = at % body.len();
                body[at] ^= x;
            }
            if let Ok(r) = AuditRecord::decode(&body) {
                prop_assert_eq!(r.encode(), body);
            }
        }

        #[test]
        fn any_record_round_trips(
            seq in any::<u64>(), time_us in any::<i64>(), uid in any::<u32>(), pid in any::<u32>(),
            result in any::<i32>(), inode in any::<u64>(), op in any::<u8>(), mode in 0u8..4,
            user in ".{0,40}", path in ".{0,300}", detail in ".{0,100}",
        ) {
            let r = AuditRecord {
                seq, time_us, uid, gid: uid ^ 1, pid, user, process: "p".into(),
                host: "h".into(), inode, path, op: AuditOp::from_code(op),
                mode: AccessMode::from_code(mode).unwrap(), result, detail,
            };
            prop_assert_eq!(AuditRecord::decode(&r.encode()).unwrap(), r);
        }
    }
}
