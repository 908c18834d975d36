//! Unwrapping a domain key: RSA-OAEP-SHA256 decryption with the host's decryption key,
//! authorized by a PolicyPCR session.

use std::time::Instant;

use tss_esapi::{
    constants::response_code::Tss2ResponseCodeKind,
    interface_types::algorithm::HashingAlgorithm,
    structures::{Data, HashScheme, PublicKeyRsa, RsaDecryptionScheme},
};
use zeroize::Zeroizing;

use super::worker::{Worker, tss_error};
use super::{TpmError, policy};

/// Whether the TPM refused the policy session: the PCRs differ from those the key is bound
/// to (TPM_RC_POLICY_FAIL), or changed between PolicyPCR and the decryption
/// (TPM_RC_PCR_CHANGED).
fn is_policy_failure(e: &tss_esapi::Error) -> bool {
    matches!(
        e,
        tss_esapi::Error::Tss2Error(rc) if matches!(
            rc.kind(),
            Some(Tss2ResponseCodeKind::PolicyFail | Tss2ResponseCodeKind::PcrChanged)
        )
    )
}

impl Worker {
    pub(crate) fn unwrap(&mut self, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let keys = self.keys.clone().ok_or(TpmError::NotEnrolled)?;
        if wrapped.len() != 256 {
            return Err(TpmError::Failed(format!(
                "a wrapped key for RSA-2048 is 256 bytes, not {}",
                wrapped.len()
            )));
        }
        let cipher_text = PublicKeyRsa::try_from(wrapped.to_vec())
            .map_err(|e| TpmError::Failed(format!("the wrapped key: {e}")))?;
        let label = Data::try_from(domfs_proto::KEY_WRAP_LABEL.to_vec())
            .map_err(|e| TpmError::Failed(format!("the key wrap label: {e}")))?;
        let started = Instant::now();
        let result = self.with_primary(|w, primary| {
            let dk = w.load(primary, &keys.decryption, "decryption key")?;
            let result =
                policy::with_policy_session(&mut w.ctx, primary, &keys.pcrs, |ctx, session| {
                    let scheme =
                        RsaDecryptionScheme::Oaep(HashScheme::new(HashingAlgorithm::Sha256));
                    ctx.execute_with_session(Some(session), |ctx| {
                        ctx.rsa_decrypt(dk, cipher_text, scheme, label)
                    })
                    .map(|message| Zeroizing::new(message.value().to_vec()))
                    .map_err(|e| {
                        if is_policy_failure(&e) {
                            TpmError::PolicyFailed
                        } else {
                            tss_error("RSA decryption of the wrapped key", e)
                        }
                    })
                });
            w.flush(dk.into());
            result
        });
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "unwrapped a key"
        );
        result
    }
}
