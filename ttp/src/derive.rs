//! The two per-domain derivations from the master key K_TTP (DESIGN.md, "Key release"):
//!
//! - the domain key
//!   `K = HMAC-SHA256(K_TTP, "domfs domain key v1\0" ‖ domain id ‖ u32-le len(meta) ‖ meta ‖ r)`;
//! - the writer key seed
//!   `seed = HMAC-SHA256(K_TTP, "domfs writer key v1\0" ‖ domain id ‖ r)`, whose Ed25519
//!   public half every host gets and whose seed only read-write grants get.
//!
//! `meta` and `r` come from the TTP's registry, never from the request. The length prefix
//! keeps (meta, r) pairs unambiguous; r has a fixed length.

use domfs_proto::acl::DomainId;
use hmac::{KeyInit, Mac};
use sha2::Sha256;

use crate::secret::Secret32;

pub const DOMAIN_KEY_LABEL: &[u8] = b"domfs domain key v1\0";
pub const WRITER_KEY_LABEL: &[u8] = b"domfs writer key v1\0";

type HmacSha256 = hmac::Hmac<Sha256>;

fn mac(master: &Secret32) -> HmacSha256 {
    // HMAC takes keys of any length: this cannot fail for 32 bytes.
    match <HmacSha256 as KeyInit>::new_from_slice(master.expose()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts a 32-byte key"),
    }
}

fn finish(mac: HmacSha256) -> Secret32 {
    let mut out = Secret32::zero();
    let mut tag = mac.finalize().into_bytes();
    out.as_mut().copy_from_slice(&tag);
    zeroize::Zeroize::zeroize(tag.as_mut_slice());
    out
}

/// The domain key K.
pub fn domain_key(master: &Secret32, domain: &DomainId, meta: &[u8], r: &Secret32) -> Secret32 {
    let mut mac = mac(master);
    mac.update(DOMAIN_KEY_LABEL);
    mac.update(domain);
    // Metadata is at most 4096 bytes (domfs_proto::acl::MAX_META_LEN).
    mac.update(&(meta.len() as u32).to_le_bytes());
    mac.update(meta);
    mac.update(r.expose());
    finish(mac)
}

/// The seed of the domain's Ed25519 writer key.
pub fn writer_seed(master: &Secret32, domain: &DomainId, r: &Secret32) -> Secret32 {
    let mut mac = mac(master);
    mac.update(WRITER_KEY_LABEL);
    mac.update(domain);
    mac.update(r.expose());
    finish(mac)
}

/// The Ed25519 public key of a writer seed.
pub fn writer_public(seed: &Secret32) -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(seed.expose())
        .verifying_key()
        .to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(byte: u8) -> Secret32 {
        Secret32::from_slice(&[byte; 32]).expect("32 bytes")
    }

    /// Vectors computed independently (Python's hmac/hashlib and the `cryptography`
    /// package's Ed25519): a change to the derivation shows here.
    #[test]
    fn known_answers() {
        let master = s(0x11);
        let r = s(0x22);
        let domain = [0x33; 16];
        let k = domain_key(&master, &domain, b"ward 7", &r);
        assert_eq!(
            hex::encode(k.expose()),
            "34466b389220dbf5987874b15155f9b40d227ebbff378ebc4cccd698bcdfbfe1"
        );
        let seed = writer_seed(&master, &domain, &r);
        assert_eq!(
            hex::encode(seed.expose()),
            "090a4f1cf2f3316c64e9f14aac4ce3126903ab0bbdc26ce6bc9930950025f865"
        );
        assert_eq!(
            hex::encode(writer_public(&seed)),
            "b2a7e2c119794a50e1aceb3257c5b541865d0b3a6d19269a0176e3dfa957992d"
        );
    }

    #[test]
    fn matches_plain_hmac_over_the_concatenation() {
        let master = s(0x5a);
        let r = s(0xa5);
        let domain = [9u8; 16];
        let meta = b"patient records, ward 12";
        let mut input = Vec::new();
        input.extend_from_slice(b"domfs domain key v1\0");
        input.extend_from_slice(&domain);
        input.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        input.extend_from_slice(meta);
        input.extend_from_slice(&[0xa5; 32]);
        let mut plain = <HmacSha256 as KeyInit>::new_from_slice(&[0x5a; 32]).expect("key");
        plain.update(&input);
        let expected = plain.finalize().into_bytes();
        assert_eq!(
            domain_key(&master, &domain, meta, &r).expose().as_slice(),
            expected.as_slice()
        );

        let mut input = Vec::new();
        input.extend_from_slice(b"domfs writer key v1\0");
        input.extend_from_slice(&domain);
        input.extend_from_slice(&[0xa5; 32]);
        let mut plain = <HmacSha256 as KeyInit>::new_from_slice(&[0x5a; 32]).expect("key");
        plain.update(&input);
        let expected = plain.finalize().into_bytes();
        assert_eq!(
            writer_seed(&master, &domain, &r).expose().as_slice(),
            expected.as_slice()
        );
    }

    #[test]
    fn every_input_matters() {
        let (m, r, d) = (s(1), s(2), [3u8; 16]);
        let base = *domain_key(&m, &d, b"meta", &r).expose();
        assert_ne!(base, *domain_key(&s(9), &d, b"meta", &r).expose());
        assert_ne!(base, *domain_key(&m, &d, b"meta", &s(9)).expose());
        assert_ne!(base, *domain_key(&m, &[4; 16], b"meta", &r).expose());
        assert_ne!(base, *domain_key(&m, &d, b"metb", &r).expose());
        assert_ne!(base, *writer_seed(&m, &d, &r).expose());
    }

    #[test]
    fn writer_public_is_the_seed_public_key() {
        let seed = s(7);
        let signing = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        assert_eq!(writer_public(&seed), signing.verifying_key().to_bytes());
    }
}
