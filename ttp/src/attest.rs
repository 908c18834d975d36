//! Checking a host's enrollment evidence: its TPM decryption key is fixed to the TPM,
//! usable only through PolicyPCR, and bound to the quoted PCR state. STUB: the interface
//! the server is written against; filled in by the TPM work.

use domfs_proto::ttp::EnrollRequest;

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

/// Verifies `request` against the nonce the TTP handed out.
pub fn verify_enrollment(
    request: &EnrollRequest,
    expected_nonce: &[u8],
) -> Result<EnrolledKey, AttestError> {
    let _ = (request, expected_nonce);
    Err(AttestError::Refused("not built yet".into()))
}
