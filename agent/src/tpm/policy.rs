//! PolicyPCR sessions: a trial session computes the policy a new decryption key is bound
//! to; a real one authorizes a decryption.

use std::convert::TryFrom;

use tss_esapi::{
    Context,
    attributes::SessionAttributesBuilder,
    constants::SessionType,
    handles::{KeyHandle, ObjectHandle, SessionHandle},
    interface_types::session_handles::PolicySession,
    interface_types::{algorithm::HashingAlgorithm, session_handles::AuthSession},
    structures::{Digest, SymmetricDefinition},
};

use super::worker::tss_error;
use super::{PcrSelection, TpmError};

fn session_handle(session: AuthSession) -> ObjectHandle {
    SessionHandle::from(session).into()
}

fn flush_session(ctx: &mut Context, session: AuthSession) {
    if let Err(e) = ctx.flush_context(session_handle(session)) {
        tracing::warn!(error = %e, "cannot flush a TPM session");
    }
}

/// The PolicyPCR digest of the current values of `pcrs`, as the TPM computes it in a trial
/// session: SHA-256(0^32 || TPM_CC_PolicyPCR || TPML_PCR_SELECTION || SHA-256(values)).
pub(crate) fn trial_policy_pcr(ctx: &mut Context, pcrs: &PcrSelection) -> Result<Digest, TpmError> {
    let list = pcrs.to_tpm()?;
    let session = ctx
        .start_auth_session(
            None,
            None,
            None,
            SessionType::Trial,
            SymmetricDefinition::Null,
            HashingAlgorithm::Sha256,
        )
        .map_err(|e| tss_error("starting a trial session", e))?
        .ok_or_else(|| TpmError::Failed("the TPM returned no trial session".into()))?;
    let result = PolicySession::try_from(session)
        .and_then(|policy| {
            ctx.policy_pcr(policy, Digest::default(), list)?;
            ctx.policy_get_digest(policy)
        })
        .map_err(|e| tss_error("computing the PolicyPCR digest", e));
    flush_session(ctx, session);
    result
}

/// Runs `f` with a policy session that has passed PolicyPCR over `pcrs` (their current
/// values), and flushes the session afterwards whatever happened.
///
/// The session is salted with the storage primary key and encrypts the response's first
/// parameter, so what the TPM decrypts crosses the TPM's bus (or swtpm's socket) under
/// AES-128-CFB rather than in the clear.
pub(crate) fn with_policy_session<T>(
    ctx: &mut Context,
    salt_key: KeyHandle,
    pcrs: &PcrSelection,
    f: impl FnOnce(&mut Context, AuthSession) -> Result<T, TpmError>,
) -> Result<T, TpmError> {
    let list = pcrs.to_tpm()?;
    let session = ctx
        .start_auth_session(
            Some(salt_key),
            None,
            None,
            SessionType::Policy,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .map_err(|e| tss_error("starting a policy session", e))?
        .ok_or_else(|| TpmError::Failed("the TPM returned no policy session".into()))?;
    let result = (|| {
        let (attributes, mask) = SessionAttributesBuilder::new()
            .with_continue_session(true)
            .with_encrypt(true)
            .build();
        ctx.tr_sess_set_attributes(session, attributes, mask)
            .map_err(|e| tss_error("setting the policy session's attributes", e))?;
        let policy = PolicySession::try_from(session)
            .map_err(|e| tss_error("starting a policy session", e))?;
        ctx.policy_pcr(policy, Digest::default(), list)
            .map_err(|e| tss_error("PolicyPCR", e))?;
        f(ctx, session)
    })();
    flush_session(ctx, session);
    result
}
