//! Encrypting a domain key to a host's TPM decryption key: RSA-OAEP-SHA256 with the label
//! [`domfs_proto::KEY_WRAP_LABEL`]. STUB: filled in by the TPM work.

#[derive(Debug, thiserror::Error)]
pub enum WrapError {
    #[error("cannot encrypt to the host key: {0}")]
    Failed(String),
}

/// `plaintext` encrypted to the RSA public key `spki_der` (SubjectPublicKeyInfo DER).
pub fn wrap_for_host(spki_der: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, WrapError> {
    let _ = (spki_der, plaintext);
    Err(WrapError::Failed("not built yet".into()))
}
