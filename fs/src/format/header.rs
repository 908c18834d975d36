//! The domain header: the cleartext description of a domain volume, written twice (copy A
//! at 0, copy B at 64 KiB), each in its own 64 KiB slot.
//!
//! Nothing in it is secret: it names the volume, its geometry and cipher, and carries the
//! domain manager's signed access list, which the TTP checks before it releases the key.
//! It is not authenticated by the domain key either (the manager rewrites the signed part
//! when hosts are granted or revoked, without the key); instead the superblock, which is
//! MAC'd, stores [`DomainHeader::binding_hash`] over every field except the signed part, so
//! a key holder detects any edit of the rest. The checksum below only catches accidents.
//!
//! ## Encoding (format version 1; integers little-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `"DOMFS\0HD"` |
//! | 8 | 4 | format version, `u32` = 1 |
//! | 12 | 4 | record length `L`, `u32`: every byte of the record including the checksum; 106 ≤ L ≤ 65536 |
//! | 16 | 16 | volume id |
//! | 32 | 4 | block size, `u32` = 4096 |
//! | 36 | 2 | cipher suite, `u16`: 1 = AES-256-XTS + HMAC-SHA256 |
//! | 38 | 2 | key mode, `u16`: 1 = key file, 2 = TTP |
//! | 40 | 8 | container size in bytes at creation, `u64` |
//! | 48 | 8 | creation time, `u64` seconds since 1970-01-01 UTC |
//! | 56 | 4 + m | metadata: `u32` length m ≤ 4096, then m bytes (UTF-8 text in practice) |
//! | | 4 + s | signed message: `u32` length s ≤ 49152, then s bytes (empty in key-file mode) |
//! | | 4 + g | signature: `u32` length g ∈ {0, 64}, then g bytes (Ed25519) |
//! | | 4 + k | manager key: `u32` length k ∈ {0, 32}, then k bytes (Ed25519 public key) |
//! | | 2 | extension count n, `u16` ≤ 64 |
//! | | n × (6 + d) | each extension: kind `u16`, `u32` length d ≤ 8192, d bytes; each kind at most once |
//! | L − 32 | 32 | SHA-256 of bytes 0 .. L − 32 |
//!
//! The rest of the slot is zeros when written and ignored when read. Worked sizes: a
//! key-file header with 20 bytes of metadata is 106 + 20 = 126 bytes; a TTP header with
//! 200 bytes of metadata, a 3000-byte signed message, a signature and a manager key is
//! 106 + 200 + 3000 + 64 + 32 = 3402 bytes.
//!
//! Extension kinds with the high bit set (≥ 0x8000) are critical: a reader that does not
//! know one refuses the header. Unknown non-critical kinds are kept and written back
//! unchanged. Defined kinds: 0x8001, the retention policy of hidden versions (critical;
//! see [`super::retention`]), whose data must decode for the header to be valid.
//!
//! Decoding is strict: the magic, then the version (so a newer format is reported as such,
//! whatever its layout), then the record length, then the checksum, and only then the
//! fields; every bound is checked, and a record must end exactly where its length says.

use sha2::{Digest, Sha256};

use super::reader::{CodecError, Reader, Writer};
use super::{FORMAT_VERSION, HEADER_SLOT_SIZE};
use crate::types::{BLOCK_SIZE, VolumeId};
use crate::{Error, Result};

#[path = "header_copies.rs"]
mod copies;
#[path = "header_show.rs"]
mod show;

pub use copies::{CopyState, HeaderRead, read_header, write_header};
pub(crate) use show::rfc3339;

pub const MAGIC: [u8; 8] = *b"DOMFS\0HD";
pub const MAX_META_LEN: usize = 4096;
pub const MAX_SIGNED_MESSAGE_LEN: usize = 48 * 1024;
pub const SIGNATURE_LEN: usize = 64;
pub const MANAGER_KEY_LEN: usize = 32;
pub const MAX_EXTENSIONS: usize = 64;
pub const MAX_EXTENSION_LEN: usize = 8 * 1024;
/// Extension kinds with this bit set must be understood by the reader.
pub const CRITICAL_EXTENSION: u16 = 0x8000;
/// The extension kinds this build understands.
const KNOWN_EXTENSIONS: &[u16] = &[super::retention::RETENTION_EXTENSION];
const CHECKSUM_LEN: usize = 32;
/// Where the record length sits (after the magic and the version).
const LENGTH_FIELD_OFFSET: usize = 12;
/// A record with every variable field empty.
pub const MIN_RECORD_LEN: usize = 56 + 4 * 4 + 2 + CHECKSUM_LEN;
/// Domain separation of [`DomainHeader::binding_hash`].
const BINDING_LABEL: &[u8] = b"domfs header binding v1\0";

/// The domain header, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainHeader {
    pub volume_id: VolumeId,
    /// Always [`BLOCK_SIZE`].
    pub block_size: u32,
    pub cipher_suite: CipherSuite,
    pub key_mode: KeyMode,
    /// Bytes, as at creation.
    pub container_size: u64,
    /// Seconds since 1970-01-01 UTC.
    pub created_unix: u64,
    /// Domain metadata, ≤ [`MAX_META_LEN`] bytes.
    pub meta: Vec<u8>,
    /// The manager-signed {domain id, meta, access-list XML, version}; empty in key-file
    /// mode; ≤ [`MAX_SIGNED_MESSAGE_LEN`] bytes.
    pub signed_message: Vec<u8>,
    /// Empty or [`SIGNATURE_LEN`] bytes (Ed25519).
    pub signature: Vec<u8>,
    /// Empty or [`MANAGER_KEY_LEN`] bytes (an Ed25519 public key).
    pub manager_key: Vec<u8>,
    /// At most [`MAX_EXTENSIONS`], each kind once.
    pub extensions: Vec<Extension>,
}

/// How blocks are sealed. Stored as a `u16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CipherSuite {
    /// AES-256-XTS with a (block, generation) tweak, HMAC-SHA256 tags, HKDF-SHA256 subkeys.
    Aes256XtsHmacSha256 = 1,
}

/// Where the domain key comes from. Stored as a `u16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyMode {
    /// A local 32-byte key file (standalone use and tests).
    KeyFile = 1,
    /// Released by the trusted third party through the host's agent.
    Ttp = 2,
}

/// A later format addition (retention policy, …), kept opaque by readers that predate it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extension {
    pub kind: u16,
    pub data: Vec<u8>,
}

impl DomainHeader {
    /// The record, checksum included (not padded to the slot). Fails with `Error::Invalid`
    /// if a field is over its bound, so that whatever is written can be read back.
    pub fn encode(&self) -> Result<Vec<u8>> {
        self.check().map_err(Error::Invalid)?;
        let mut w =
            Writer::with_capacity(MIN_RECORD_LEN + self.meta.len() + self.signed_message.len());
        w.bytes(&MAGIC);
        w.u32(FORMAT_VERSION);
        w.u32(0); // the record length, patched below
        w.bytes(&self.volume_id.0);
        w.u32(self.block_size);
        w.u16(self.cipher_suite as u16);
        w.u16(self.key_mode as u16);
        w.u64(self.container_size);
        w.u64(self.created_unix);
        let too_long =
            |what: &'static str| move |e: CodecError| Error::Invalid(format!("header {what}: {e}"));
        w.prefixed_bytes(&self.meta, MAX_META_LEN)
            .map_err(too_long("metadata"))?;
        w.prefixed_bytes(&self.signed_message, MAX_SIGNED_MESSAGE_LEN)
            .map_err(too_long("signed message"))?;
        w.prefixed_bytes(&self.signature, SIGNATURE_LEN)
            .map_err(too_long("signature"))?;
        w.prefixed_bytes(&self.manager_key, MANAGER_KEY_LEN)
            .map_err(too_long("manager key"))?;
        // `check` bounded the count by MAX_EXTENSIONS, so it fits a u16.
        w.u16(self.extensions.len() as u16);
        for ext in &self.extensions {
            w.u16(ext.kind);
            w.prefixed_bytes(&ext.data, MAX_EXTENSION_LEN)
                .map_err(too_long("extension"))?;
        }
        let total = w.len() + CHECKSUM_LEN;
        let total32 = u32::try_from(total)
            .ok()
            .filter(|&t| u64::from(t) <= HEADER_SLOT_SIZE)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "the header would be {total} bytes, over its {HEADER_SLOT_SIZE}-byte slot"
                ))
            })?;
        w.patch_u32(LENGTH_FIELD_OFFSET, total32)
            .map_err(too_long("record length"))?;
        let checksum = Sha256::digest(w.as_slice());
        w.bytes(&checksum);
        Ok(w.into_vec())
    }

    /// Parses the record at the start of `slot` (a whole header slot: bytes after the
    /// record are ignored).
    pub fn decode(slot: &[u8]) -> Result<Self> {
        let mut r = Reader::new(slot);
        match r.array::<8>() {
            Ok(magic) if magic == MAGIC => {}
            Err(_) if !slot.is_empty() && MAGIC.starts_with(slot) => {
                return Err(corrupt("the record ends inside the magic"));
            }
            _ => return Err(Error::NotDomfs),
        }
        let version = r.u32().map_err(field("format version"))?;
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let total = r.u32().map_err(field("record length"))?;
        let total = usize::try_from(total)
            .ok()
            .filter(|&t| (MIN_RECORD_LEN as u64..=HEADER_SLOT_SIZE).contains(&(t as u64)))
            .ok_or_else(|| {
                corrupt(format!(
                    "record length {total} is outside {MIN_RECORD_LEN}..={HEADER_SLOT_SIZE}"
                ))
            })?;
        let record = slot.get(..total).ok_or_else(|| {
            corrupt(format!(
                "record length {total} is beyond the {} bytes available",
                slot.len()
            ))
        })?;
        let (body, checksum) = total
            .checked_sub(CHECKSUM_LEN)
            .and_then(|n| record.split_at_checked(n))
            .ok_or_else(|| corrupt("record shorter than its checksum"))?;
        if Sha256::digest(body).as_slice() != checksum {
            return Err(corrupt("checksum mismatch"));
        }

        let mut r = Reader::new(body);
        // The magic, version and length, checked above.
        r.bytes(LENGTH_FIELD_OFFSET + 4)
            .map_err(field("record frame"))?;
        let volume_id = VolumeId(r.array().map_err(field("volume id"))?);
        let block_size = r.u32().map_err(field("block size"))?;
        let suite = r.u16().map_err(field("cipher suite"))?;
        let cipher_suite = CipherSuite::from_u16(suite)
            .ok_or_else(|| corrupt(format!("unknown cipher suite {suite}")))?;
        let mode = r.u16().map_err(field("key mode"))?;
        let key_mode =
            KeyMode::from_u16(mode).ok_or_else(|| corrupt(format!("unknown key mode {mode}")))?;
        let container_size = r.u64().map_err(field("container size"))?;
        let created_unix = r.u64().map_err(field("creation time"))?;
        let meta = r
            .prefixed_bytes(MAX_META_LEN)
            .map_err(field("metadata"))?
            .to_vec();
        let signed_message = r
            .prefixed_bytes(MAX_SIGNED_MESSAGE_LEN)
            .map_err(field("signed message"))?
            .to_vec();
        let signature = r
            .prefixed_bytes(SIGNATURE_LEN)
            .map_err(field("signature"))?
            .to_vec();
        let manager_key = r
            .prefixed_bytes(MANAGER_KEY_LEN)
            .map_err(field("manager key"))?
            .to_vec();
        let count = r.u16().map_err(field("extension count"))?;
        if usize::from(count) > MAX_EXTENSIONS {
            return Err(corrupt(format!(
                "{count} extensions, at most {MAX_EXTENSIONS} allowed"
            )));
        }
        let mut extensions = Vec::with_capacity(count.into());
        for _ in 0..count {
            let kind = r.u16().map_err(field("extension kind"))?;
            let data = r
                .prefixed_bytes(MAX_EXTENSION_LEN)
                .map_err(field("extension data"))?;
            extensions.push(Extension {
                kind,
                data: data.to_vec(),
            });
        }
        if !r.is_empty() {
            return Err(corrupt(format!(
                "{} bytes of trailing garbage inside the record",
                r.remaining()
            )));
        }
        let header = DomainHeader {
            volume_id,
            block_size,
            cipher_suite,
            key_mode,
            container_size,
            created_unix,
            meta,
            signed_message,
            signature,
            manager_key,
            extensions,
        };
        header.check().map_err(Error::CorruptHeader)?;
        Ok(header)
    }

    /// SHA-256 over a domain-separated encoding of every field except `signed_message`,
    /// `signature` and `manager_key` (the part the domain manager may rewrite without the
    /// domain key). The superblock stores it.
    pub fn binding_hash(&self) -> [u8; 32] {
        // Lengths are u64 here, so this cannot fail whatever the field sizes.
        let mut w = Writer::new();
        w.bytes(BINDING_LABEL);
        w.u32(FORMAT_VERSION);
        w.bytes(&self.volume_id.0);
        w.u32(self.block_size);
        w.u16(self.cipher_suite as u16);
        w.u16(self.key_mode as u16);
        w.u64(self.container_size);
        w.u64(self.created_unix);
        w.u64(self.meta.len() as u64);
        w.bytes(&self.meta);
        w.u64(self.extensions.len() as u64);
        for ext in &self.extensions {
            w.u16(ext.kind);
            w.u64(ext.data.len() as u64);
            w.bytes(&ext.data);
        }
        Sha256::digest(w.as_slice()).into()
    }

    /// The rules the types do not enforce; the reason if one is broken.
    fn check(&self) -> std::result::Result<(), String> {
        if self.block_size as usize != BLOCK_SIZE {
            return Err(format!(
                "block size {}, expected {BLOCK_SIZE}",
                self.block_size
            ));
        }
        let bound = |what: &str, len: usize, max: usize| {
            if len > max {
                Err(format!("{what} is {len} bytes, at most {max} allowed"))
            } else {
                Ok(())
            }
        };
        bound("metadata", self.meta.len(), MAX_META_LEN)?;
        bound(
            "signed message",
            self.signed_message.len(),
            MAX_SIGNED_MESSAGE_LEN,
        )?;
        if ![0, SIGNATURE_LEN].contains(&self.signature.len()) {
            return Err(format!(
                "signature is {} bytes, expected 0 or {SIGNATURE_LEN}",
                self.signature.len()
            ));
        }
        if ![0, MANAGER_KEY_LEN].contains(&self.manager_key.len()) {
            return Err(format!(
                "manager key is {} bytes, expected 0 or {MANAGER_KEY_LEN}",
                self.manager_key.len()
            ));
        }
        if self.extensions.len() > MAX_EXTENSIONS {
            return Err(format!(
                "{} extensions, at most {MAX_EXTENSIONS} allowed",
                self.extensions.len()
            ));
        }
        for (i, ext) in self.extensions.iter().enumerate() {
            bound("extension data", ext.data.len(), MAX_EXTENSION_LEN)?;
            if self.extensions.iter().take(i).any(|e| e.kind == ext.kind) {
                return Err(format!("extension kind {:#06x} appears twice", ext.kind));
            }
            if ext.is_critical() && !KNOWN_EXTENSIONS.contains(&ext.kind) {
                return Err(format!("unknown critical extension {:#06x}", ext.kind));
            }
            if ext.kind == super::retention::RETENTION_EXTENSION {
                super::retention::Retention::decode(&ext.data)?;
            }
        }
        Ok(())
    }
}

impl CipherSuite {
    pub fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(CipherSuite::Aes256XtsHmacSha256),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CipherSuite::Aes256XtsHmacSha256 => "AES-256-XTS + HMAC-SHA256 (HKDF-SHA256 subkeys)",
        }
    }
}

impl KeyMode {
    pub fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(KeyMode::KeyFile),
            2 => Some(KeyMode::Ttp),
            _ => None,
        }
    }
}

impl Extension {
    pub fn is_critical(&self) -> bool {
        self.kind & CRITICAL_EXTENSION != 0
    }
}

fn corrupt(reason: impl Into<String>) -> Error {
    Error::CorruptHeader(reason.into())
}

fn field(what: &'static str) -> impl FnOnce(CodecError) -> Error {
    move |e| corrupt(format!("{what}: {e}"))
}

#[cfg(test)]
#[path = "header_tests.rs"]
mod tests;
