//! The domain key K and the subkeys derived from it.
//!
//! Every subkey is `HKDF-SHA256(salt = "domfs v1", ikm = K, info = label ‖ volume id)`, so
//! two volumes never share a subkey even under one K, and the subkeys for XTS, block tags,
//! the superblock, the audit chain and the key check value are independent. Keys live in
//! boxed buffers that are zeroized on drop (a move of a boxed key copies only the pointer)
//! and have no `Debug`/`Display`.

use hkdf::Hkdf;
use hmac::{KeyInit, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::xts::Xts256;
use crate::types::{Tag, VolumeId};
use crate::{Error, Result};

pub const DOMAIN_KEY_LEN: usize = 32;

const HKDF_SALT: &[u8] = b"domfs v1";
const LABEL_XTS: &[u8] = b"domfs xts data+tweak key";
const LABEL_BLOCK_MAC: &[u8] = b"domfs block tag key";
const LABEL_SUPERBLOCK_MAC: &[u8] = b"domfs superblock mac key";
const LABEL_KEY_CHECK: &[u8] = b"domfs key check value";
const LABEL_AUDIT_CHAIN: &[u8] = b"domfs audit chain key";

/// The 32-byte domain key K (from the TTP through the agent, or from a key file).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct DomainKey(Box<[u8; DOMAIN_KEY_LEN]>);

impl DomainKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != DOMAIN_KEY_LEN {
            return Err(Error::BadKeyFile(format!(
                "a domain key is {DOMAIN_KEY_LEN} bytes, got {}",
                bytes.len()
            )));
        }
        // Straight into the heap: no stack copy of the key is left behind.
        let mut boxed = Box::new([0u8; DOMAIN_KEY_LEN]);
        boxed.copy_from_slice(bytes);
        Ok(Self(boxed))
    }

    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Result<Self> {
        let mut boxed = Box::new([0u8; DOMAIN_KEY_LEN]);
        getrandom::fill(&mut boxed[..]).map_err(|e| Error::Random(e.to_string()))?;
        Ok(Self(boxed))
    }

    /// Parses a key file: exactly 32 raw bytes, or 64 hex digits with optional surrounding
    /// whitespace.
    pub fn parse_key_file(contents: &[u8]) -> Result<Self> {
        if contents.len() == DOMAIN_KEY_LEN {
            // 32 hex digits are far more likely a 128-bit key in hex (or half of ours)
            // than 32 random bytes that all happen to be hex digits.
            if contents.iter().all(u8::is_ascii_hexdigit) {
                return Err(Error::BadKeyFile(
                    "32 hex digits is a 128-bit key; domfs needs 256 bits (64 hex digits or 32 raw bytes)".into(),
                ));
            }
            return Self::from_bytes(contents);
        }
        let text = std::str::from_utf8(contents)
            .map_err(|_| bad_key_file(contents.len()))?
            .trim();
        if text.len() != 2 * DOMAIN_KEY_LEN {
            return Err(bad_key_file(contents.len()));
        }
        let mut raw = Zeroizing::new([0u8; DOMAIN_KEY_LEN]);
        hex::decode_to_slice(text, &mut raw[..]).map_err(|_| bad_key_file(contents.len()))?;
        Self::from_bytes(&raw[..])
    }

    /// The key as 64 lowercase hex digits, for writing a key file.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(&self.0[..]))
    }

    pub fn expose(&self) -> &[u8; DOMAIN_KEY_LEN] {
        &self.0
    }
}

fn bad_key_file(len: usize) -> Error {
    Error::BadKeyFile(format!(
        "expected {DOMAIN_KEY_LEN} raw bytes or {} hex digits, found {len} bytes; make one with `domfs key new FILE`",
        2 * DOMAIN_KEY_LEN
    ))
}

/// An HMAC-SHA256 key, keyed once so each tag costs only the message's compressions.
#[derive(Clone)]
pub struct MacKey(hmac::Hmac<Sha256>);

impl MacKey {
    /// HMAC takes a key of any length (RFC 2104); domfs's own subkeys are 32 bytes.
    pub fn new(key: &[u8]) -> Self {
        Self(
            <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key)
                .expect("HMAC accepts keys of any length"),
        )
    }

    /// The tag over the concatenation of `parts`.
    pub fn tag(&self, parts: &[&[u8]]) -> Tag {
        let mut mac = self.0.clone();
        for part in parts {
            mac.update(part);
        }
        Tag(mac.finalize().into_bytes().into())
    }
}

/// All subkeys of one volume.
pub struct VolumeKeys {
    pub xts: Xts256,
    pub block_mac: MacKey,
    pub superblock_mac: MacKey,
    /// Chains the entries of the audit log inside the volume (see [`crate::audit`]).
    pub audit_chain: MacKey,
    /// Stored in the superblock so that a wrong key is told apart from a damaged volume.
    /// It is a PRF output: it says nothing about K.
    pub key_check: Tag,
    /// The domain's writer key (agent mode): superblocks are signed with its private half
    /// and checked with its public half. `None` in key-file mode.
    pub writer: Option<std::sync::Arc<super::WriterKeys>>,
}

impl VolumeKeys {
    /// Boxed, so that moving the keys around moves a pointer, not copies of the expanded
    /// AES keys and keyed HMAC states that zeroize could not reach.
    pub fn derive(key: &DomainKey, volume: &VolumeId) -> Box<Self> {
        let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), key.expose());
        let expand = |label: &[u8], out: &mut [u8]| {
            let mut info = Vec::with_capacity(label.len() + 16);
            info.extend_from_slice(label);
            info.extend_from_slice(&volume.0);
            // Output lengths here are at most 64 bytes, far below HKDF's 255 × 32 limit.
            hk.expand(&info, out)
                .expect("HKDF output of at most 64 bytes is always valid");
        };
        let mut xts_key = Zeroizing::new([0u8; 64]);
        expand(LABEL_XTS, &mut xts_key[..]);
        let mut block_mac = Zeroizing::new([0u8; 32]);
        expand(LABEL_BLOCK_MAC, &mut block_mac[..]);
        let mut sb_mac = Zeroizing::new([0u8; 32]);
        expand(LABEL_SUPERBLOCK_MAC, &mut sb_mac[..]);
        let mut audit_chain = Zeroizing::new([0u8; 32]);
        expand(LABEL_AUDIT_CHAIN, &mut audit_chain[..]);
        let mut key_check = [0u8; 32];
        expand(LABEL_KEY_CHECK, &mut key_check);
        Box::new(Self {
            xts: Xts256::new(&xts_key),
            block_mac: MacKey::new(&block_mac[..]),
            superblock_mac: MacKey::new(&sb_mac[..]),
            audit_chain: MacKey::new(&audit_chain[..]),
            key_check: Tag(key_check),
            writer: None,
        })
    }

    /// The same keys, with superblocks signed (or, for a read-only host, only checked)
    /// with the domain's writer key.
    pub fn with_writer(
        mut self: Box<Self>,
        writer: Option<std::sync::Arc<super::WriterKeys>>,
    ) -> Box<Self> {
        self.writer = writer;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirty_two_hex_digits_are_refused_as_a_short_key() {
        let err = DomainKey::parse_key_file(b"00112233445566778899aabbccddeeff")
            .err()
            .expect("a 128-bit hex key must be refused");
        assert!(err.to_string().contains("128-bit"), "{err}");
        // 32 raw bytes that are not all hex digits are a raw key.
        assert!(DomainKey::parse_key_file(&[0xffu8; 32]).is_ok());
    }
}
