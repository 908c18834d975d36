//! Checking a host's enrollment evidence: its TPM decryption key is fixed to the TPM,
//! usable only through PolicyPCR, and bound to the quoted PCR state.
//!
//! What the evidence proves, and what it does not: the quote and the certification are
//! signed by the attestation key over the TTP's fresh nonce, and the attestation key is a
//! restricted key, which signs only what the TPM itself generated. So *if* the attestation
//! key lives in a TPM, the decryption key is in the same TPM, cannot leave it, can only be
//! used in a PolicyPCR session, and its policy is the one for the quoted PCR values.
//! Whether the attestation key lives in a real TPM is not proven here (no endorsement key
//! certificate chain, no TPM2_MakeCredential round): that is what the operator's approval
//! of the attestation key fingerprint vouches for.
//!
//! Modules: `tpm` (unmarshalling and the checks on each structure), `policy` (the
//! PolicyPCR digest).

mod policy;
mod tpm;

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use tss_esapi::{interface_types::algorithm::HashingAlgorithm, structures::AttestInfo};

use domfs_proto::ttp::EnrollRequest;

use policy::Sha256Selection;

/// The largest TPM structure the TTP reads (each of the six blobs).
pub const MAX_BLOB_BYTES: usize = 1024;
/// The most PCR values a request may carry.
pub const MAX_PCR_VALUES: usize = 24;
/// The longest nonce (the TPM's qualifying data is at most 64 bytes).
const MAX_NONCE_BYTES: usize = 64;

/// What the TTP keeps of a verified enrollment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrolledKey {
    /// The decryption key as SubjectPublicKeyInfo DER (what the key wrap encrypts to).
    pub decryption_key_spki: Vec<u8>,
    /// The marshalled TPMT_PUBLIC areas, as sent.
    pub decryption_key_public: Vec<u8>,
    pub attestation_key_public: Vec<u8>,
    /// Hex SHA-256 of the attestation key's public area.
    pub attestation_key_fingerprint: String,
    /// e.g. "sha256:7,16".
    pub pcr_selection: String,
    /// The quoted digest of the selected PCR values.
    pub pcr_digest: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("enrollment evidence refused: {0}")]
    Refused(String),
}

fn refuse(why: impl Into<String>) -> AttestError {
    AttestError::Refused(why.into())
}

/// Hex SHA-256 of a marshalled public area: how operators tell attestation keys apart.
pub fn fingerprint(public: &[u8]) -> String {
    hex::encode(Sha256::digest(public))
}

fn check_sizes(request: &EnrollRequest) -> Result<(), AttestError> {
    for (name, blob) in [
        ("attestation_key_public", &request.attestation_key_public),
        ("decryption_key_public", &request.decryption_key_public),
        ("certify_info", &request.certify_info),
        ("certify_signature", &request.certify_signature),
        ("quote_info", &request.quote_info),
        ("quote_signature", &request.quote_signature),
    ] {
        if blob.is_empty() {
            return Err(refuse(format!("{name} is empty")));
        }
        if blob.len() > MAX_BLOB_BYTES {
            return Err(refuse(format!(
                "{name} is {} bytes, over the {MAX_BLOB_BYTES}-byte limit",
                blob.len()
            )));
        }
    }
    if request.nonce.len() > MAX_NONCE_BYTES {
        return Err(refuse("the nonce is too long"));
    }
    if request.pcr_values.len() > MAX_PCR_VALUES {
        return Err(refuse(format!(
            "{} PCR values, over the limit of {MAX_PCR_VALUES}",
            request.pcr_values.len()
        )));
    }
    for value in &request.pcr_values {
        if value.bank.len() > 16 || value.value.len() > 64 {
            return Err(refuse("an oversized PCR value"));
        }
    }
    Ok(())
}

/// The selection a quote covers: exactly one bank, SHA-256, at least one PCR.
fn quoted_selection(
    info: &tss_esapi::structures::QuoteInfo,
) -> Result<Sha256Selection, AttestError> {
    let [selection] = info.pcr_selection().get_selections() else {
        return Err(refuse("the quote does not cover exactly one PCR bank"));
    };
    if selection.hashing_algorithm() != HashingAlgorithm::Sha256 {
        return Err(refuse("the quote is not of the SHA-256 PCR bank"));
    }
    let indices: Vec<u8> = selection
        .selected()
        .into_iter()
        .map(|slot| u32::from(slot).trailing_zeros() as u8)
        .collect();
    if indices.is_empty() {
        return Err(refuse("the quote covers no PCR"));
    }
    Ok(Sha256Selection {
        size_of_select: selection.size_of_select().as_u8(),
        indices,
    })
}

/// Verifies `request` against the nonce the TTP handed out.
pub fn verify_enrollment(
    request: &EnrollRequest,
    expected_nonce: &[u8],
) -> Result<EnrolledKey, AttestError> {
    check_sizes(request)?;
    let nonce = request.nonce.as_slice();
    if expected_nonce.is_empty()
        || nonce.len() != expected_nonce.len()
        || !bool::from(nonce.ct_eq(expected_nonce))
    {
        return Err(refuse("the nonce is not the one this TTP handed out"));
    }

    // The keys.
    let ak = tpm::attestation_key(&request.attestation_key_public)?;
    let dk = tpm::decryption_key(&request.decryption_key_public)?;

    // Both statements are the TPM's, signed by the attestation key.
    let certify = tpm::attest("certification", &request.certify_info)?;
    tpm::verify_signature(
        "certification",
        &ak,
        &request.certify_info,
        &request.certify_signature,
    )?;
    let quote = tpm::attest("quote", &request.quote_info)?;
    tpm::verify_signature("quote", &ak, &request.quote_info, &request.quote_signature)?;
    if certify.qualified_signer().value() != quote.qualified_signer().value() {
        return Err(refuse(
            "the certification and the quote name different signing keys",
        ));
    }

    // The certification: of the decryption key, over this nonce.
    let AttestInfo::Certify { info } = certify.attested() else {
        return Err(refuse("the certification is not a TPM2_Certify statement"));
    };
    if certify.extra_data().value() != nonce {
        return Err(refuse("the certification is not over this nonce"));
    }
    if info.name().value() != dk.name.as_slice() {
        return Err(refuse(
            "the certification is of another key than the decryption key sent",
        ));
    }

    // The quote: over this nonce, of one SHA-256 selection.
    let AttestInfo::Quote { info } = quote.attested() else {
        return Err(refuse("the quote is not a TPM2_Quote statement"));
    };
    if quote.extra_data().value() != nonce {
        return Err(refuse("the quote is not over this nonce"));
    }
    let selection = quoted_selection(info)?;
    let pcr_digest = info.pcr_digest().value();
    if pcr_digest.len() != 32 {
        return Err(refuse("the quoted PCR digest is not SHA-256"));
    }

    // The PCR values sent are the quoted ones, in the TPM's order.
    if request.pcr_values.len() != selection.indices.len() {
        return Err(refuse(format!(
            "{} PCR values sent for the {} quoted PCRs",
            request.pcr_values.len(),
            selection.indices.len()
        )));
    }
    let mut hash = Sha256::new();
    for (value, &index) in request.pcr_values.iter().zip(&selection.indices) {
        if value.bank != "sha256" || value.index != u32::from(index) || value.value.len() != 32 {
            return Err(refuse(format!(
                "the PCR values sent do not match the quoted selection {}",
                selection.describe()
            )));
        }
        hash.update(&value.value);
    }
    if hash.finalize().as_slice() != pcr_digest {
        return Err(refuse(
            "the PCR values sent do not digest to the quoted PCR digest",
        ));
    }

    // The decryption key can only be used while the PCRs hold the quoted values.
    let expected_policy = policy::policy_pcr_digest(&selection, pcr_digest);
    if dk.auth_policy.as_slice() != expected_policy {
        return Err(refuse(format!(
            "the decryption key's authPolicy is not the PolicyPCR digest of the quoted \
             values of {}",
            selection.describe()
        )));
    }

    let spki = crate::wrap::rsa_spki_der(&dk.key.modulus, &dk.key.exponent)
        .map_err(|e| refuse(format!("the decryption key: {e}")))?;
    Ok(EnrolledKey {
        decryption_key_spki: spki,
        decryption_key_public: request.decryption_key_public.clone(),
        attestation_key_public: request.attestation_key_public.clone(),
        attestation_key_fingerprint: fingerprint(&request.attestation_key_public),
        pcr_selection: selection.describe(),
        pcr_digest: pcr_digest.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use domfs_proto::ttp::PcrValue;

    fn request() -> EnrollRequest {
        EnrollRequest {
            nonce: vec![7; 32],
            attestation_key_public: vec![1; 10],
            decryption_key_public: vec![1; 10],
            certify_info: vec![1; 10],
            certify_signature: vec![1; 10],
            quote_info: vec![1; 10],
            quote_signature: vec![1; 10],
            pcr_values: vec![],
        }
    }

    fn refused(request: &EnrollRequest, nonce: &[u8], expect: &str) {
        match verify_enrollment(request, nonce) {
            Err(AttestError::Refused(why)) => {
                assert!(why.contains(expect), "refused for {why:?}, not {expect:?}")
            }
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn bounds_sizes_before_anything_else() {
        let mut r = request();
        r.quote_info = vec![0; MAX_BLOB_BYTES + 1];
        refused(&r, &[7; 32], "quote_info is 1025 bytes");
        let mut r = request();
        r.certify_signature.clear();
        refused(&r, &[7; 32], "certify_signature is empty");
        let mut r = request();
        r.pcr_values = vec![PcrValue::default(); MAX_PCR_VALUES + 1];
        refused(&r, &[7; 32], "over the limit of 24");
        let mut r = request();
        r.nonce = vec![7; 65];
        refused(&r, &[7; 65], "nonce is too long");
    }

    #[test]
    fn refuses_another_nonce() {
        refused(&request(), &[8; 32], "nonce");
        refused(&request(), &[7; 31], "nonce");
        refused(&request(), &[], "nonce");
        // Then the blobs are read, and these are garbage.
        refused(&request(), &[7; 32], "attestation key");
    }

    #[test]
    fn garbage_never_panics() {
        // A small deterministic generator: every length 0..=300 of pseudo-random bytes in
        // every field.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        };
        for len in 0..=300usize {
            let mut blob: Vec<u8> = (0..len).map(|_| next()).collect();
            if len >= 4 && len % 3 == 0 {
                blob[..4].copy_from_slice(&[0xff, 0x54, 0x43, 0x47]);
            }
            for field in 0..6 {
                let mut r = request();
                let target = match field {
                    0 => &mut r.attestation_key_public,
                    1 => &mut r.decryption_key_public,
                    2 => &mut r.certify_info,
                    3 => &mut r.certify_signature,
                    4 => &mut r.quote_info,
                    _ => &mut r.quote_signature,
                };
                *target = blob.clone();
                assert!(verify_enrollment(&r, &[7; 32]).is_err());
            }
        }
    }
}
