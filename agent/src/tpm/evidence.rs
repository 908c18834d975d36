//! Enrollment evidence: TPM2_Certify of the decryption key by the attestation key, and a
//! quote of the bound PCRs, both over the TTP's nonce.

use std::time::Instant;

use sha2::{Digest as _, Sha256};
use tss_esapi::{
    handles::KeyHandle,
    interface_types::session_handles::AuthSession,
    structures::{AttestInfo, Data, SignatureScheme},
    traits::Marshall,
};

use domfs_proto::ttp::{EnrollRequest, PcrValue};

use super::keyfile::{self, HostKeys};
use super::worker::{Worker, create_keys, tss_error};
use super::{PcrSelection, TpmError, policy};

/// The most the TPM takes as qualifying data (TPM2B_DATA).
const MAX_NONCE: usize = 64;

/// How often the quote is retried when a PCR changes between reading and quoting.
const QUOTE_ATTEMPTS: usize = 3;

fn marshall(what: &str, m: &impl Marshall) -> Result<Vec<u8>, TpmError> {
    m.marshall()
        .map_err(|e| TpmError::Failed(format!("marshalling the {what}: {e}")))
}

impl Worker {
    pub(crate) fn enrollment_evidence(
        &mut self,
        nonce: Vec<u8>,
        fresh_keys: bool,
    ) -> Result<EnrollRequest, TpmError> {
        if nonce.is_empty() || nonce.len() > MAX_NONCE {
            return Err(TpmError::Failed(format!(
                "the enrollment nonce must be 1 to {MAX_NONCE} bytes, not {}",
                nonce.len()
            )));
        }
        let stale = match &self.keys {
            None => true,
            Some(keys) if keys.pcrs != self.config.pcrs => {
                tracing::info!(
                    bound = %keys.pcrs,
                    configured = %self.config.pcrs,
                    "the host key is bound to other PCRs than configured: creating new keys"
                );
                true
            }
            Some(_) => false,
        };
        self.with_primary(|w, primary| {
            if fresh_keys || stale {
                let keys = create_keys(w, primary)?;
                keyfile::save(&w.config.state_dir, &keys)?;
                w.keys = Some(keys);
            }
            let keys = w.keys.clone().ok_or(TpmError::NotEnrolled)?;

            // The policy must still match the PCRs, or the TTP would refuse the evidence.
            let current = policy::trial_policy_pcr(&mut w.ctx, &keys.pcrs)?;
            if current.value() != keys.decryption.public.auth_policy().value() {
                return Err(TpmError::PolicyFailed);
            }

            let ak = w.load(primary, &keys.attestation, "attestation key")?;
            let result = match w.load(primary, &keys.decryption, "decryption key") {
                Ok(dk) => {
                    let result = w.attest(ak, dk, &keys, nonce);
                    w.flush(dk.into());
                    result
                }
                Err(e) => Err(e),
            };
            w.flush(ak.into());
            result
        })
    }

    fn attest(
        &mut self,
        ak: KeyHandle,
        dk: KeyHandle,
        keys: &HostKeys,
        nonce: Vec<u8>,
    ) -> Result<EnrollRequest, TpmError> {
        let started = Instant::now();
        let data = Data::try_from(nonce.clone())
            .map_err(|e| TpmError::Failed(format!("the enrollment nonce: {e}")))?;
        // Certify: the ADMIN role of the certified key and the USER role of the signing
        // key, both with their empty auth values.
        let (certify_info, certify_signature) = self
            .ctx
            .execute_with_sessions(
                (
                    Some(AuthSession::Password),
                    Some(AuthSession::Password),
                    None,
                ),
                |ctx| ctx.certify(dk.into(), ak, data.clone(), SignatureScheme::Null),
            )
            .map_err(|e| tss_error("TPM2_Certify of the decryption key", e))?;

        let list = keys.pcrs.to_tpm()?;
        let mut attempt = 0;
        let (quote_info, quote_signature, values) = loop {
            attempt += 1;
            let values = read_pcrs(&mut self.ctx, &keys.pcrs)?;
            let (quote, signature) = self
                .ctx
                .execute_with_sessions((Some(AuthSession::Password), None, None), |ctx| {
                    ctx.quote(ak, data.clone(), SignatureScheme::Null, list.clone())
                })
                .map_err(|e| tss_error("TPM2_Quote", e))?;
            let AttestInfo::Quote { info } = quote.attested() else {
                return Err(TpmError::Failed("TPM2_Quote returned no quote".into()));
            };
            let mut hash = Sha256::new();
            for (_, value) in &values {
                hash.update(value);
            }
            if hash.finalize().as_slice() == info.pcr_digest().value() {
                break (quote, signature, values);
            }
            if attempt >= QUOTE_ATTEMPTS {
                return Err(TpmError::Failed(
                    "the PCR values keep changing while they are quoted".into(),
                ));
            }
        };
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            "certified the decryption key and quoted the PCRs"
        );

        Ok(EnrollRequest {
            nonce,
            attestation_key_public: marshall("attestation key", &keys.attestation.public)?,
            decryption_key_public: marshall("decryption key", &keys.decryption.public)?,
            certify_info: marshall("certification", &certify_info)?,
            certify_signature: marshall("certification signature", &certify_signature)?,
            quote_info: marshall("quote", &quote_info)?,
            quote_signature: marshall("quote signature", &quote_signature)?,
            pcr_values: values
                .into_iter()
                .map(|(index, value)| PcrValue {
                    bank: keys.pcrs.bank.clone(),
                    index: u32::from(index),
                    value,
                })
                .collect(),
        })
    }
}

/// The values of the selected PCRs, in ascending index order (the order the TPM digests
/// them in a quote). TPM2_PCR_Read returns at most eight values a call.
pub(crate) fn read_pcrs(
    ctx: &mut tss_esapi::Context,
    pcrs: &PcrSelection,
) -> Result<Vec<(u8, Vec<u8>)>, TpmError> {
    let mut remaining = pcrs.indices.clone();
    let mut values = Vec::with_capacity(remaining.len());
    while !remaining.is_empty() {
        let ask = PcrSelection {
            bank: pcrs.bank.clone(),
            indices: remaining.clone(),
        };
        let list = ask.to_tpm()?;
        let (_, read, digests) = ctx
            .execute_without_session(|ctx| ctx.pcr_read(list))
            .map_err(|e| tss_error("reading the PCRs", e))?;
        let read: Vec<u8> = read
            .get_selections()
            .iter()
            .flat_map(|s| s.selected())
            .map(|slot| u32::from(slot).trailing_zeros() as u8)
            .collect();
        if read.is_empty() || read.len() != digests.value().len() {
            return Err(TpmError::Failed(format!(
                "the TPM cannot read PCRs {ask} (no such bank or PCR?)"
            )));
        }
        if !read.iter().all(|i| remaining.contains(i)) {
            return Err(TpmError::Failed(format!(
                "the TPM returned other PCRs than {ask} asked for"
            )));
        }
        for (index, digest) in read.iter().zip(digests.value()) {
            values.push((*index, digest.value().to_vec()));
        }
        remaining.retain(|i| !read.contains(i));
    }
    values.sort_by_key(|(index, _)| *index);
    Ok(values)
}
