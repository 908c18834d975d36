//! Encrypting a domain key to a host's TPM decryption key: RSA-OAEP-SHA256 with the label
//! [`domfs_proto::KEY_WRAP_LABEL`] (the TPM wants a label that ends in NUL; the same bytes
//! are used on both sides).

use aws_lc_rs::{
    encoding::AsDer,
    rsa::{
        OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey, PublicKeyComponents,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum WrapError {
    #[error("cannot encrypt to the host key: {0}")]
    Failed(String),
}

/// The RSA key sizes a host key may have (TPM keys are RSA-2048; 3072 and 4096 exist on
/// some TPMs).
const KEY_BITS: [usize; 3] = [2048, 3072, 4096];

/// `plaintext` encrypted to the RSA public key `spki_der` (SubjectPublicKeyInfo DER).
pub fn wrap_for_host(spki_der: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, WrapError> {
    let key = PublicEncryptingKey::from_der(spki_der)
        .map_err(|e| WrapError::Failed(format!("not an RSA public key: {e}")))?;
    if !KEY_BITS.contains(&key.key_size_bits()) {
        return Err(WrapError::Failed(format!(
            "an RSA key of {} bits; host keys have 2048, 3072 or 4096",
            key.key_size_bits()
        )));
    }
    let key = OaepPublicEncryptingKey::new(key)
        .map_err(|_| WrapError::Failed("cannot use the key for RSA-OAEP".into()))?;
    let max = key.max_plaintext_size(&OAEP_SHA256_MGF1SHA256);
    if plaintext.len() > max {
        return Err(WrapError::Failed(format!(
            "{} bytes to wrap; this key takes at most {max}",
            plaintext.len()
        )));
    }
    let mut out = vec![0u8; key.ciphertext_size()];
    let len = key
        .encrypt(
            &OAEP_SHA256_MGF1SHA256,
            plaintext,
            &mut out,
            Some(domfs_proto::KEY_WRAP_LABEL),
        )
        .map_err(|_| WrapError::Failed("RSA-OAEP encryption failed".into()))?
        .len();
    out.truncate(len);
    Ok(out)
}

/// The SubjectPublicKeyInfo DER of the RSA public key (`modulus`, `exponent`), both
/// big-endian; leading zero bytes are ignored. This is what [`wrap_for_host`] takes.
pub fn rsa_spki_der(modulus: &[u8], exponent: &[u8]) -> Result<Vec<u8>, WrapError> {
    let strip = |b: &[u8]| -> Vec<u8> {
        let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
        b[start..].to_vec()
    };
    let (n, e) = (strip(modulus), strip(exponent));
    if n.is_empty() || e.is_empty() {
        return Err(WrapError::Failed("an RSA key with a zero component".into()));
    }
    let der = PublicKeyComponents { n, e }
        .as_der()
        .map_err(|_| WrapError::Failed("cannot encode the RSA public key".into()))?;
    Ok(der.as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rsa::{KeySize, OaepPrivateDecryptingKey, PrivateDecryptingKey};

    /// DER: a definite length.
    fn der_len(len: usize) -> Vec<u8> {
        if len < 0x80 {
            vec![len as u8]
        } else if len < 0x100 {
            vec![0x81, len as u8]
        } else {
            vec![0x82, (len >> 8) as u8, len as u8]
        }
    }

    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend(der_len(body.len()));
        out.extend_from_slice(body);
        out
    }

    /// A DER INTEGER of a positive big-endian number (a leading zero when the top bit is
    /// set).
    fn integer(n: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        if n[0] & 0x80 != 0 {
            body.push(0);
        }
        body.extend_from_slice(n);
        tlv(0x02, &body)
    }

    /// An independent SubjectPublicKeyInfo encoder (RFC 5280, RFC 8017 A.1.1) to check the
    /// library's against.
    fn spki_by_hand(n: &[u8], e: &[u8]) -> Vec<u8> {
        let rsa_public_key = tlv(0x30, &[integer(n), integer(e)].concat());
        let algorithm = tlv(
            0x30,
            &[
                // rsaEncryption 1.2.840.113549.1.1.1
                tlv(
                    0x06,
                    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
                ),
                vec![0x05, 0x00],
            ]
            .concat(),
        );
        let bits = tlv(0x03, &[&[0u8][..], &rsa_public_key].concat());
        tlv(0x30, &[algorithm, bits].concat())
    }

    #[test]
    fn spki_matches_an_independent_encoding() {
        let mut n = vec![0xc5u8; 256];
        n[255] = 0x01;
        let der = rsa_spki_der(&n, &[0x01, 0x00, 0x01]).expect("encodes");
        assert_eq!(der, spki_by_hand(&n, &[0x01, 0x00, 0x01]));
        // Leading zeros are not part of the number.
        let padded = [&[0u8, 0][..], &n].concat();
        assert_eq!(
            rsa_spki_der(&padded, &[0, 0, 0x01, 0x00, 0x01]).expect("encodes"),
            der
        );
        // A modulus whose top bit is clear needs no sign byte.
        let mut small = vec![0x45u8; 256];
        small[255] = 0x03;
        assert_eq!(
            rsa_spki_der(&small, &[0x03]).expect("encodes"),
            spki_by_hand(&small, &[0x03])
        );
        assert!(rsa_spki_der(&[0, 0], &[1, 0, 1]).is_err());
        assert!(rsa_spki_der(&n, &[]).is_err());
    }

    #[test]
    fn wraps_to_a_key_built_from_its_components() {
        let private = PrivateDecryptingKey::generate(KeySize::Rsa2048).expect("key");
        let spki = private
            .public_key()
            .as_der()
            .expect("der")
            .as_ref()
            .to_vec();
        let private = OaepPrivateDecryptingKey::new(private).expect("oaep");
        for len in [0usize, 32, 64, 190] {
            let plaintext: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let wrapped = wrap_for_host(&spki, &plaintext).expect("wraps");
            assert_eq!(wrapped.len(), 256);
            let mut out = vec![0u8; 256];
            let got = private
                .decrypt(
                    &OAEP_SHA256_MGF1SHA256,
                    &wrapped,
                    &mut out,
                    Some(domfs_proto::KEY_WRAP_LABEL),
                )
                .expect("decrypts");
            assert_eq!(got, &plaintext[..]);
            // Another label does not decrypt.
            assert!(
                private
                    .decrypt(
                        &OAEP_SHA256_MGF1SHA256,
                        &wrapped,
                        &mut out,
                        Some(b"other\0")
                    )
                    .is_err()
            );
        }
        assert!(wrap_for_host(&spki, &[0u8; 191]).is_err());
        assert!(wrap_for_host(b"not a key", b"x").is_err());
        assert!(wrap_for_host(&[], b"x").is_err());
    }
}
