//! Reading the TPM structures of enrollment evidence (with tss-esapi's unmarshalling, which
//! returns errors on bad input rather than panicking) and the checks on each.
//!
//! Every structure must also be in its canonical encoding: unmarshalled and marshalled
//! again it must give back exactly the bytes received. The TPM's own encodings are
//! canonical; this rules out trailing bytes and any reading of the bytes other than the
//! TPM's (the signatures and names are over the bytes, the checks over the parsed values).

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use sha2::{Digest as _, Sha256};
use tss_esapi::{
    attributes::{ObjectAttributes, ObjectAttributesBuilder},
    interface_types::{algorithm::HashingAlgorithm, key_bits::RsaKeyBits},
    structures::{
        Attest, HashScheme, Public, PublicRsaParameters, RsaScheme, Signature,
        SymmetricDefinitionObject,
    },
    traits::{Marshall, UnMarshall},
};

use super::AttestError;

/// TPM_GENERATED_VALUE: the first four bytes of every TPMS_ATTEST the TPM signs.
const TPM_GENERATED: [u8; 4] = [0xff, 0x54, 0x43, 0x47];
/// TPM_ALG_SHA256, the name algorithm.
const TPM_ALG_SHA256: [u8; 2] = [0x00, 0x0b];
/// An RSA public exponent of 0 in a TPM public area means the default, 2^16 + 1.
const DEFAULT_EXPONENT: u32 = 65537;
/// RSA-2048: the modulus is 256 bytes.
const MODULUS_BYTES: usize = 256;

fn refuse(why: impl Into<String>) -> AttestError {
    AttestError::Refused(why.into())
}

fn canonical<T: Marshall>(what: &str, value: &T, bytes: &[u8]) -> Result<(), AttestError> {
    match value.marshall() {
        Ok(again) if again == bytes => Ok(()),
        _ => Err(refuse(format!(
            "the {what} is not in the TPM's canonical encoding"
        ))),
    }
}

/// Unmarshals a TPMT_PUBLIC.
fn public(what: &str, bytes: &[u8]) -> Result<Public, AttestError> {
    let public = Public::unmarshall(bytes)
        .map_err(|e| refuse(format!("the {what} is not a TPM public area: {e}")))?;
    canonical(what, &public, bytes)?;
    Ok(public)
}

/// Unmarshals a TPMS_ATTEST.
pub(crate) fn attest(what: &str, bytes: &[u8]) -> Result<Attest, AttestError> {
    if bytes.get(..4) != Some(&TPM_GENERATED[..]) {
        return Err(refuse(format!(
            "the {what} does not start with TPM_GENERATED_VALUE"
        )));
    }
    let attest = Attest::unmarshall(bytes)
        .map_err(|e| refuse(format!("the {what} is not a TPMS_ATTEST: {e}")))?;
    canonical(what, &attest, bytes)?;
    Ok(attest)
}

/// An RSA public key as the TTP uses it: modulus and exponent, big-endian.
pub(crate) struct RsaKey {
    pub modulus: Vec<u8>,
    pub exponent: Vec<u8>,
}

/// The parts of an RSA public area the checks look at.
struct RsaArea<'a> {
    attributes: ObjectAttributes,
    name_alg: HashingAlgorithm,
    auth_policy: &'a [u8],
    parameters: PublicRsaParameters,
    key: RsaKey,
}

fn rsa_area<'a>(what: &str, public: &'a Public) -> Result<RsaArea<'a>, AttestError> {
    let Public::Rsa {
        object_attributes,
        name_hashing_algorithm,
        auth_policy,
        parameters,
        unique,
    } = public
    else {
        return Err(refuse(format!("the {what} is not an RSA key")));
    };
    if parameters.key_bits() != RsaKeyBits::Rsa2048 || unique.value().len() != MODULUS_BYTES {
        return Err(refuse(format!("the {what} is not an RSA-2048 key")));
    }
    let exponent = match parameters.exponent().value() {
        0 => DEFAULT_EXPONENT,
        e => e,
    };
    if exponent != DEFAULT_EXPONENT {
        return Err(refuse(format!(
            "the {what} has public exponent {exponent}, not 65537"
        )));
    }
    if *name_hashing_algorithm != HashingAlgorithm::Sha256 {
        return Err(refuse(format!(
            "the {what}'s name algorithm is not SHA-256"
        )));
    }
    Ok(RsaArea {
        attributes: *object_attributes,
        name_alg: *name_hashing_algorithm,
        auth_policy: auth_policy.value(),
        parameters: *parameters,
        key: RsaKey {
            modulus: unique.value().to_vec(),
            exponent: exponent
                .to_be_bytes()
                .into_iter()
                .skip_while(|&b| b == 0)
                .collect(),
        },
    })
}

/// The bits of TPMA_OBJECT that TPM 2.0 defines; a TPM never creates an object with any
/// other bit set.
const DEFINED_ATTRIBUTES: u32 = 0x000f_0cf6;

/// The object attributes every host key must have: created inside this TPM, and never to
/// leave it or its parent.
fn check_fixed(what: &str, a: ObjectAttributes) -> Result<(), AttestError> {
    if u32::from(a) & !DEFINED_ATTRIBUTES != 0 {
        return Err(refuse(format!(
            "the {what} has reserved attribute bits set"
        )));
    }
    if !a.fixed_tpm() {
        return Err(refuse(format!("the {what} is not fixedTPM")));
    }
    if !a.fixed_parent() {
        return Err(refuse(format!("the {what} is not fixedParent")));
    }
    if !a.sensitive_data_origin() {
        return Err(refuse(format!(
            "the {what} was not generated inside the TPM (sensitiveDataOrigin)"
        )));
    }
    Ok(())
}

/// The attestation key: a restricted RSA-2048 signing key, RSASSA-SHA256, with exactly
/// the attributes a domfs agent gives it and no policy.
///
/// Nothing but the key itself (modulus and exponent) is bound to the signatures, so the
/// rest of this public area is the host's claim: these checks refuse a host that claims
/// the wrong kind of key, they do not prove the claim (see the module docs). Pinning the
/// exact attributes at least leaves one public area, and so one fingerprint, per key.
pub(crate) fn attestation_key(bytes: &[u8]) -> Result<RsaKey, AttestError> {
    const WHAT: &str = "attestation key";
    let public = public(WHAT, bytes)?;
    let area = rsa_area(WHAT, &public)?;
    let a = area.attributes;
    if !a.restricted() || !a.sign_encrypt() || a.decrypt() {
        return Err(refuse(
            "the attestation key is not a restricted signing key",
        ));
    }
    check_fixed(WHAT, a)?;
    let expected = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(true)
        .with_sign_encrypt(true)
        .build()
        .map_err(|e| refuse(format!("attestation key attributes: {e}")))?;
    if a != expected {
        return Err(refuse(format!(
            "the attestation key's attributes {:#010x} are not those of a domfs attestation key ({:#010x})",
            u32::from(a),
            u32::from(expected)
        )));
    }
    if !area.auth_policy.is_empty() {
        return Err(refuse("the attestation key has an authPolicy"));
    }
    if area.parameters.rsa_scheme() != RsaScheme::RsaSsa(HashScheme::new(HashingAlgorithm::Sha256))
    {
        return Err(refuse("the attestation key's scheme is not RSASSA-SHA256"));
    }
    if area.parameters.symmetric_definition_object() != SymmetricDefinitionObject::Null {
        return Err(refuse("the attestation key has a symmetric algorithm"));
    }
    Ok(area.key)
}

/// The decryption key as checked: its key, its Name and its authPolicy.
pub(crate) struct DecryptionKey {
    pub key: RsaKey,
    /// nameAlg || SHA-256(TPMT_PUBLIC): what TPM2_Certify names.
    pub name: Vec<u8>,
    pub auth_policy: Vec<u8>,
}

/// The decryption key: RSA-2048, decrypt only, OAEP-SHA256 (or no scheme, which leaves it
/// to the caller), fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth = 0 and a
/// SHA-256 authPolicy.
pub(crate) fn decryption_key(bytes: &[u8]) -> Result<DecryptionKey, AttestError> {
    const WHAT: &str = "decryption key";
    let public = public(WHAT, bytes)?;
    let area = rsa_area(WHAT, &public)?;
    let a = area.attributes;
    if !a.decrypt() || a.sign_encrypt() || a.restricted() {
        return Err(refuse(
            "the decryption key is not an unrestricted decrypt-only key",
        ));
    }
    check_fixed(WHAT, a)?;
    if a.user_with_auth() {
        return Err(refuse(
            "the decryption key allows use with its auth value (userWithAuth = 1), \
             not only through its PCR policy",
        ));
    }
    match area.parameters.rsa_scheme() {
        RsaScheme::Null => {}
        RsaScheme::Oaep(hash) if hash.hashing_algorithm() == HashingAlgorithm::Sha256 => {}
        _ => return Err(refuse("the decryption key's scheme is not OAEP-SHA256")),
    }
    if area.parameters.symmetric_definition_object() != SymmetricDefinitionObject::Null {
        return Err(refuse("the decryption key has a symmetric algorithm"));
    }
    if area.auth_policy.len() != 32 {
        return Err(refuse(
            "the decryption key has no SHA-256 authPolicy (it must be bound to PCRs)",
        ));
    }
    debug_assert_eq!(area.name_alg, HashingAlgorithm::Sha256);
    let mut name = TPM_ALG_SHA256.to_vec();
    name.extend_from_slice(&Sha256::digest(bytes));
    Ok(DecryptionKey {
        key: area.key,
        name,
        auth_policy: area.auth_policy.to_vec(),
    })
}

/// Checks that `signature` (a TPMT_SIGNATURE) is `key`'s RSASSA-PKCS1-v1_5 SHA-256
/// signature of `message`.
pub(crate) fn verify_signature(
    what: &str,
    key: &RsaKey,
    message: &[u8],
    signature: &[u8],
) -> Result<(), AttestError> {
    let parsed = Signature::unmarshall(signature)
        .map_err(|e| refuse(format!("the {what} signature is not a TPMT_SIGNATURE: {e}")))?;
    canonical(&format!("{what} signature"), &parsed, signature)?;
    let Signature::RsaSsa(rsa) = parsed else {
        return Err(refuse(format!("the {what} signature is not RSASSA")));
    };
    if rsa.hashing_algorithm() != HashingAlgorithm::Sha256 {
        return Err(refuse(format!("the {what} signature is not over SHA-256")));
    }
    RsaPublicKeyComponents {
        n: key.modulus.as_slice(),
        e: key.exponent.as_slice(),
    }
    .verify(
        &RSA_PKCS1_2048_8192_SHA256,
        message,
        rsa.signature().value(),
    )
    .map_err(|_| {
        refuse(format!(
            "the {what} signature does not verify with the attestation key"
        ))
    })
}
