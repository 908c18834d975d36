//! Enrollment: making the host's TPM key known to the TTP (BeginEnrollment → evidence
//! from the TPM → Enroll). The TTP then holds the host as pending until its operator
//! approves it; re-enrolling (fresh keys) resets that approval.

use std::time::Duration;

use tonic::Status;

use domfs_proto::client::describe_status;
use domfs_proto::ttp::HostState;

use crate::error::AgentError;
use crate::tpm::TpmError;
use crate::ttp::{TtpApi, is_answer};
use crate::unwrapper::KeyUnwrapper;

/// Whether to make new TPM keys even if some exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keys {
    /// Enroll only if the TPM has no keys or the TTP does not know this host; reuse the
    /// keys there are.
    IfNeeded,
    /// New keys and a new enrollment, whatever the state (`domfs-agent enroll --force`).
    Fresh,
}

/// The TTP's word for a host state, as Status reports it.
pub fn state_name(state: HostState) -> &'static str {
    match state {
        HostState::Pending => "pending",
        HostState::Approved => "approved",
        HostState::Revoked => "revoked",
        HostState::Unknown | HostState::Unspecified => "unknown",
    }
}

fn ttp_error(call: &'static str, status: Status) -> AgentError {
    let message = describe_status(&status);
    if is_answer(&status) {
        AgentError::TtpRefused { call, message }
    } else {
        AgentError::TtpUnreachable { call, message }
    }
}

/// Where the host stands at the TTP after [`ensure_enrolled`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrollment {
    pub state: HostState,
    /// Hex SHA-256 of the attestation key's public area, as the TTP reports it.
    pub fingerprint: String,
    /// Whether this run sent an Enroll (as opposed to finding the host known).
    pub enrolled_now: bool,
}

/// Enrolls if needed (see [`Keys`]) and returns where the host stands at the TTP.
///
/// When the TTP does not know the host, existing keys are enrolled as they are, unless
/// the TPM refuses them (their PCR policy no longer matches): then new keys are made,
/// which costs nothing since there is no approval to lose.
pub async fn ensure_enrolled<U: KeyUnwrapper, T: TtpApi>(
    tpm: &U,
    ttp: &T,
    host: &str,
    keys: Keys,
) -> Result<Enrollment, AgentError> {
    let has_keys = tpm.has_keys().await?;
    if keys == Keys::IfNeeded && has_keys {
        let status = ttp
            .host_status()
            .await
            .map_err(|s| ttp_error("HostStatus", s))?;
        let state = status.state();
        if !matches!(state, HostState::Unknown | HostState::Unspecified) {
            tracing::info!(
                host,
                state = state_name(state),
                attestation_key = %status.attestation_key_fingerprint,
                "enrollment at the TTP"
            );
            match state {
                HostState::Pending => waiting(host),
                HostState::Revoked => tracing::warn!(
                    host,
                    "this host is revoked at the TTP: no keys will be released to it"
                ),
                _ => {}
            }
            return Ok(Enrollment {
                state,
                fingerprint: status.attestation_key_fingerprint,
                enrolled_now: false,
            });
        }
        tracing::info!(
            host,
            "the TTP does not know this host: enrolling the existing TPM keys"
        );
    }
    let fresh = keys == Keys::Fresh || !has_keys;
    let nonce = ttp
        .begin_enrollment()
        .await
        .map_err(|s| ttp_error("BeginEnrollment", s))?;
    let evidence = match tpm.evidence(nonce.clone(), fresh).await {
        Err(TpmError::PolicyFailed) if !fresh => {
            tracing::info!(
                host,
                "the existing TPM keys are bound to other PCR values: making new ones"
            );
            tpm.evidence(nonce, true).await?
        }
        other => other?,
    };
    let response = ttp
        .enroll(evidence)
        .await
        .map_err(|s| ttp_error("Enroll", s))?;
    let state = response.state();
    tracing::info!(
        host,
        state = state_name(state),
        attestation_key = %response.attestation_key_fingerprint,
        fresh_keys = fresh,
        "enrolled with the TTP"
    );
    if state == HostState::Pending {
        waiting(host);
    }
    Ok(Enrollment {
        state,
        fingerprint: response.attestation_key_fingerprint,
        enrolled_now: true,
    })
}

/// What the operator has to do next.
pub fn approval_hint(host: &str) -> String {
    format!("waiting for approval: run `domfs-ttp hosts approve {host}` on the TTP")
}

fn waiting(host: &str) {
    tracing::info!("{}", approval_hint(host));
}

/// Retries enrollment in the background after the TTP was unreachable at start: every
/// 5 s at first, backing off to every 5 minutes, until it succeeds once.
pub async fn retry_until_enrolled<U: KeyUnwrapper, T: TtpApi>(tpm: &U, ttp: &T, host: &str) {
    let mut delay = Duration::from_secs(5);
    loop {
        tokio::time::sleep(delay).await;
        match ensure_enrolled(tpm, ttp, host, Keys::IfNeeded).await {
            Ok(_) => return,
            Err(e @ AgentError::TtpUnreachable { .. }) => {
                tracing::debug!(error = %e, "enrollment retry: the TTP is still unreachable");
            }
            Err(e) => tracing::error!(error = %e, "enrollment failed; retrying later"),
        }
        delay = (delay * 2).min(Duration::from_secs(300));
    }
}

#[cfg(test)]
#[path = "enroll_tests.rs"]
mod tests;
