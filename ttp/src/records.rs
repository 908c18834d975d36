//! The registry's records and their byte encoding.
//!
//! Every record is `u8 format (= 1)` followed by its fields; integers are little-endian,
//! byte strings and text are `u32` length-prefixed with a bound per field. Decoding goes
//! through one bounds-checked [`Reader`] and fails (never panics) on anything short, long
//! or out of range, so a damaged registry gives an error naming the record.

use domfs_proto::acl::{DomainId, MAX_HOST_NAME_LEN, MAX_META_LEN, PUBLIC_KEY_LEN, SIGNATURE_LEN};
use domfs_proto::{AUDIT_HEAD_LEN, CHECKPOINT_ROOT_LEN};

use crate::error::{Error, Result};

const FORMAT: u8 = 1;
/// A signed message is at most 48 KiB (the header's bound).
pub const MAX_SIGNED_MESSAGE: usize = 48 * 1024;
const MAX_BLOB: usize = 4096;
const MAX_TEXT: usize = 256;

/// An operator-added domain manager key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagerRecord {
    pub public_key: [u8; PUBLIC_KEY_LEN],
    pub added_unix: u64,
}

/// Where a host stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostState {
    /// Enrolled, waiting for `domfs-ttp hosts approve`.
    Pending,
    Approved,
    /// Final: re-enrolling does not undo it.
    Revoked,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Pending => "pending",
            HostState::Approved => "approved",
            HostState::Revoked => "revoked",
        }
    }

    fn code(self) -> u8 {
        match self {
            HostState::Pending => 1,
            HostState::Approved => 2,
            HostState::Revoked => 3,
        }
    }

    fn from_code(code: u8) -> Option<HostState> {
        match code {
            1 => Some(HostState::Pending),
            2 => Some(HostState::Approved),
            3 => Some(HostState::Revoked),
            _ => None,
        }
    }
}

/// An enrolled (or pre-emptively revoked) host. A host revoked before it ever enrolled has
/// an empty key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRecord {
    pub state: HostState,
    /// The TPM decryption key as SubjectPublicKeyInfo DER: what domain keys are wrapped to.
    pub decryption_key_spki: Vec<u8>,
    pub attestation_key_fingerprint: String,
    pub pcr_selection: String,
    pub pcr_digest: Vec<u8>,
    pub enrolled_unix: u64,
    /// Last change of state (enrollment, approval, revocation).
    pub changed_unix: u64,
}

/// A registered domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainRecord {
    pub meta: Vec<u8>,
    /// The name the pinned key was added under (for the operator's listings).
    pub manager_name: String,
    pub manager_key: [u8; PUBLIC_KEY_LEN],
    /// The newest registered signed message, its signature and version.
    pub signed_message: Vec<u8>,
    pub signature: [u8; SIGNATURE_LEN],
    pub version: u64,
    /// The slot of r in the nonce store; `None` once destroyed.
    pub nonce_slot: Option<u64>,
    pub registered_unix: u64,
    /// When the domain was destroyed; 0 while it lives.
    pub destroyed_unix: u64,
}

impl DomainRecord {
    pub fn destroyed(&self) -> bool {
        self.nonce_slot.is_none()
    }
}

/// The read-write lease of a domain (at most one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RwLease {
    pub holder: String,
    pub lease_id: [u8; 16],
    pub expires_unix: u64,
    /// The list version the lease was granted (or last renewed) under.
    pub version: u64,
}

/// A domain's newest checkpoint: the anchor a mount checks its volume against
/// ([`crate::checkpoint`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointRecord {
    /// The superblock's commit counter.
    pub sequence: u64,
    pub generation: u64,
    pub root: [u8; CHECKPOINT_ROOT_LEN],
    pub audit_sequence: u64,
    /// Empty (no audit entry yet) or [`AUDIT_HEAD_LEN`] bytes.
    pub audit_head: Vec<u8>,
    /// When the TTP accepted it.
    pub time_unix: u64,
    /// The host that reported it.
    pub host: String,
}

impl CheckpointRecord {
    /// Whether `other` describes the same volume state (the TTP's time and the host
    /// aside): the same sequence must always come with the same contents.
    pub fn same_state(&self, other: &CheckpointRecord) -> bool {
        self.sequence == other.sequence
            && self.generation == other.generation
            && self.root == other.root
            && self.audit_sequence == other.audit_sequence
            && self.audit_head == other.audit_head
    }

    pub fn to_wire(&self) -> domfs_proto::ttp::Checkpoint {
        domfs_proto::ttp::Checkpoint {
            sequence: self.sequence,
            generation: self.generation,
            root: self.root.to_vec(),
            audit_sequence: self.audit_sequence,
            audit_head: self.audit_head.clone(),
            time_unix: self.time_unix,
            host: self.host.clone(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.sequence);
        w.u64(self.generation);
        w.raw(&self.root);
        w.u64(self.audit_sequence);
        w.bytes(&self.audit_head);
        w.u64(self.time_unix);
        w.bytes(self.host.as_bytes());
        w.0
    }

    pub fn decode(id: &DomainId, bytes: &[u8]) -> Result<CheckpointRecord> {
        let mut r = Reader::open(bytes, || format!("checkpoint of {}", hex::encode(id)))?;
        let record = CheckpointRecord {
            sequence: r.u64()?,
            generation: r.u64()?,
            root: r.array()?,
            audit_sequence: r.u64()?,
            audit_head: r.bytes(AUDIT_HEAD_LEN)?.to_vec(),
            time_unix: r.u64()?,
            host: r.text(MAX_HOST_NAME_LEN)?,
        };
        r.finish()?;
        Ok(record)
    }
}

impl ManagerRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(&self.public_key);
        w.u64(self.added_unix);
        w.0
    }

    pub fn decode(name: &str, bytes: &[u8]) -> Result<ManagerRecord> {
        let mut r = Reader::open(bytes, || format!("manager {name}"))?;
        let record = ManagerRecord {
            public_key: r.array()?,
            added_unix: r.u64()?,
        };
        r.finish()?;
        Ok(record)
    }
}

impl HostRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(self.state.code());
        w.bytes(&self.decryption_key_spki);
        w.bytes(self.attestation_key_fingerprint.as_bytes());
        w.bytes(self.pcr_selection.as_bytes());
        w.bytes(&self.pcr_digest);
        w.u64(self.enrolled_unix);
        w.u64(self.changed_unix);
        w.0
    }

    pub fn decode(name: &str, bytes: &[u8]) -> Result<HostRecord> {
        let mut r = Reader::open(bytes, || format!("host {name}"))?;
        let code = r.u8()?;
        let state = HostState::from_code(code).ok_or_else(|| r.error("host state"))?;
        let record = HostRecord {
            state,
            decryption_key_spki: r.bytes(MAX_BLOB)?.to_vec(),
            attestation_key_fingerprint: r.text(MAX_TEXT)?,
            pcr_selection: r.text(MAX_TEXT)?,
            pcr_digest: r.bytes(MAX_TEXT)?.to_vec(),
            enrolled_unix: r.u64()?,
            changed_unix: r.u64()?,
        };
        r.finish()?;
        Ok(record)
    }
}

impl DomainRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes(&self.meta);
        w.bytes(self.manager_name.as_bytes());
        w.raw(&self.manager_key);
        w.bytes(&self.signed_message);
        w.raw(&self.signature);
        w.u64(self.version);
        match self.nonce_slot {
            Some(slot) => {
                w.u8(1);
                w.u64(slot);
            }
            None => w.u8(0),
        }
        w.u64(self.registered_unix);
        w.u64(self.destroyed_unix);
        w.0
    }

    pub fn decode(id: &DomainId, bytes: &[u8]) -> Result<DomainRecord> {
        let mut r = Reader::open(bytes, || format!("domain {}", hex::encode(id)))?;
        let meta = r.bytes(MAX_META_LEN)?.to_vec();
        let manager_name = r.text(MAX_TEXT)?;
        let manager_key = r.array()?;
        let signed_message = r.bytes(MAX_SIGNED_MESSAGE)?.to_vec();
        let signature = r.array()?;
        let version = r.u64()?;
        let nonce_slot = match r.u8()? {
            0 => None,
            1 => Some(r.u64()?),
            _ => return Err(r.error("nonce slot flag")),
        };
        let record = DomainRecord {
            meta,
            manager_name,
            manager_key,
            signed_message,
            signature,
            version,
            nonce_slot,
            registered_unix: r.u64()?,
            destroyed_unix: r.u64()?,
        };
        r.finish()?;
        Ok(record)
    }
}

impl RwLease {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes(self.holder.as_bytes());
        w.raw(&self.lease_id);
        w.u64(self.expires_unix);
        w.u64(self.version);
        w.0
    }

    pub fn decode(id: &DomainId, bytes: &[u8]) -> Result<RwLease> {
        let mut r = Reader::open(bytes, || format!("lease of {}", hex::encode(id)))?;
        let lease = RwLease {
            holder: r.text(MAX_HOST_NAME_LEN)?,
            lease_id: r.array()?,
            expires_unix: r.u64()?,
            version: r.u64()?,
        };
        r.finish()?;
        Ok(lease)
    }
}

/// Appends fields to a record.
pub(crate) struct Writer(pub(crate) Vec<u8>);

impl Writer {
    pub(crate) fn new() -> Writer {
        Writer(vec![FORMAT])
    }

    /// A writer without the record format byte (for other framings).
    pub(crate) fn bare() -> Writer {
        Writer(Vec::new())
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    /// Callers keep every field far below 4 GiB (the bounds above).
    pub(crate) fn bytes(&mut self, bytes: &[u8]) {
        self.0
            .extend_from_slice(&(bytes.len().min(u32::MAX as usize) as u32).to_le_bytes());
        self.0.extend_from_slice(bytes);
    }
}

/// Reads fields of a record, checking every bound.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    what: String,
}

impl<'a> Reader<'a> {
    /// Checks the format byte of a record named by `what`.
    pub(crate) fn open(bytes: &'a [u8], what: impl FnOnce() -> String) -> Result<Reader<'a>> {
        let mut reader = Reader::bare(bytes, what());
        let format = reader.u8()?;
        if format != FORMAT {
            return Err(reader.error(&format!("format {format} (this build reads {FORMAT})")));
        }
        Ok(reader)
    }

    pub(crate) fn bare(bytes: &'a [u8], what: String) -> Reader<'a> {
        Reader { bytes, at: 0, what }
    }

    pub(crate) fn error(&self, field: &str) -> Error {
        Error::corrupt(
            self.what.clone(),
            format!("bad {field} at byte {}", self.at),
        )
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let slice = self
            .at
            .checked_add(n)
            .and_then(|end| self.bytes.get(self.at..end))
            .ok_or_else(|| self.error("length (truncated)"))?;
        self.at += n;
        Ok(slice)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(crate) fn bytes(&mut self, max: usize) -> Result<&'a [u8]> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(self.error(&format!("length {len} (at most {max})")));
        }
        self.take(len)
    }

    pub(crate) fn text(&mut self, max: usize) -> Result<String> {
        let bytes = self.bytes(max)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.error("text (not UTF-8)"))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.at == self.bytes.len()
    }

    pub(crate) fn finish(&self) -> Result<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.error("end (trailing bytes)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain() -> DomainRecord {
        DomainRecord {
            meta: b"ward".to_vec(),
            manager_name: "alice".into(),
            manager_key: [1; 32],
            signed_message: vec![2; 100],
            signature: [3; 64],
            version: 7,
            nonce_slot: Some(5),
            registered_unix: 1000,
            destroyed_unix: 0,
        }
    }

    #[test]
    fn records_round_trip() {
        let d = domain();
        assert_eq!(DomainRecord::decode(&[0; 16], &d.encode()).ok(), Some(d));
        let h = HostRecord {
            state: HostState::Approved,
            decryption_key_spki: vec![4; 294],
            attestation_key_fingerprint: "ab".into(),
            pcr_selection: "sha256:7,16".into(),
            pcr_digest: vec![5; 32],
            enrolled_unix: 1,
            changed_unix: 2,
        };
        assert_eq!(HostRecord::decode("h", &h.encode()).ok(), Some(h));
        let m = ManagerRecord {
            public_key: [9; 32],
            added_unix: 3,
        };
        assert_eq!(ManagerRecord::decode("m", &m.encode()).ok(), Some(m));
        let l = RwLease {
            holder: "db1".into(),
            lease_id: [6; 16],
            expires_unix: 4,
            version: 2,
        };
        assert_eq!(RwLease::decode(&[0; 16], &l.encode()).ok(), Some(l));
        let c = CheckpointRecord {
            sequence: 9,
            generation: 40,
            root: [7; CHECKPOINT_ROOT_LEN],
            audit_sequence: 3,
            audit_head: vec![8; AUDIT_HEAD_LEN],
            time_unix: 5,
            host: "db1".into(),
        };
        assert_eq!(
            CheckpointRecord::decode(&[0; 16], &c.encode()).ok(),
            Some(c)
        );
    }

    #[test]
    fn every_truncation_and_extension_is_an_error() {
        let bytes = domain().encode();
        for n in 0..bytes.len() {
            assert!(DomainRecord::decode(&[0; 16], &bytes[..n]).is_err(), "{n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(DomainRecord::decode(&[0; 16], &longer).is_err());
        let mut other_format = bytes;
        other_format[0] = 2;
        assert!(DomainRecord::decode(&[0; 16], &other_format).is_err());
    }

    #[test]
    fn huge_lengths_are_refused() {
        let mut w = Writer::new();
        w.raw(&u32::MAX.to_le_bytes());
        assert!(DomainRecord::decode(&[0; 16], &w.0).is_err());
    }
}
