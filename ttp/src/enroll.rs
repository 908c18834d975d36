//! Enrollment (role host): a fresh nonce per host name, then the TPM evidence, checked by
//! [`crate::attest::verify_enrollment`]. An enrolled host waits as pending for the
//! operator's approval; re-enrolling resets an approval to pending (and ends the host's
//! leases); a revoked host stays revoked.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use domfs_proto::ttp::{
    BeginEnrollmentResponse, EnrollRequest, EnrollResponse, HostState as WireState,
    HostStatusResponse,
};
use subtle::ConstantTimeEq;

use crate::attest::EnrolledKey;
use crate::core::{TtpCore, exact, now_unix, require_role};
use crate::decision_log::Subject;
use crate::pki::{Peer, Role};
use crate::records::{HostRecord, HostState};
use crate::refusal::Refusal;
use crate::registry::{Lookup, Registry};

pub const NONCE_LIFETIME: Duration = Duration::from_secs(300);
const MAX_OUTSTANDING: usize = 100_000;
const MAX_EVIDENCE: usize = 1024;
const MAX_PCRS: usize = 24;

/// The outstanding nonce of each host name: one at a time, single use, five minutes.
#[derive(Default)]
pub struct EnrollmentNonces {
    map: Mutex<HashMap<String, (Instant, [u8; 32])>>,
}

impl EnrollmentNonces {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, (Instant, [u8; 32])>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn issue(&self, host: &str) -> Result<[u8; 32], Refusal> {
        let mut nonce = [0u8; 32];
        crate::error::random(&mut nonce)?;
        let mut map = self.lock();
        if map.len() >= MAX_OUTSTANDING {
            map.retain(|_, (issued, _)| issued.elapsed() < NONCE_LIFETIME);
        }
        if map.len() >= MAX_OUTSTANDING && !map.contains_key(host) {
            return Err(Refusal::new(
                tonic::Code::ResourceExhausted,
                "too many enrollments in progress",
            ));
        }
        map.insert(host.to_string(), (Instant::now(), nonce));
        Ok(nonce)
    }

    /// Takes the host's nonce (it is used up whatever the outcome) if `presented` is it.
    fn take(&self, host: &str, presented: &[u8; 32]) -> Result<[u8; 32], Refusal> {
        let (issued, nonce) = self.lock().remove(host).ok_or_else(|| {
            Refusal::denied(format!(
                "no enrollment nonce is outstanding for {host} (call BeginEnrollment first)"
            ))
        })?;
        if issued.elapsed() >= NONCE_LIFETIME {
            return Err(Refusal::denied("the enrollment nonce expired"));
        }
        if !bool::from(nonce.ct_eq(presented)) {
            return Err(Refusal::denied(
                "the nonce is not the one this TTP handed out",
            ));
        }
        Ok(nonce)
    }
}

fn check_evidence(request: &EnrollRequest) -> Result<(), Refusal> {
    let fields: [(&str, &[u8]); 6] = [
        ("attestation_key_public", &request.attestation_key_public),
        ("decryption_key_public", &request.decryption_key_public),
        ("certify_info", &request.certify_info),
        ("certify_signature", &request.certify_signature),
        ("quote_info", &request.quote_info),
        ("quote_signature", &request.quote_signature),
    ];
    for (name, bytes) in fields {
        crate::core::bounded(name, bytes, MAX_EVIDENCE)?;
    }
    if request.pcr_values.len() > MAX_PCRS {
        return Err(Refusal::invalid(format!(
            "{} PCR values (at most {MAX_PCRS})",
            request.pcr_values.len()
        )));
    }
    for pcr in &request.pcr_values {
        if pcr.bank.len() > 16 || pcr.value.len() > 64 || pcr.index > 23 {
            return Err(Refusal::invalid("a PCR value is out of range"));
        }
    }
    Ok(())
}

pub(crate) fn wire_state(state: Option<HostState>) -> WireState {
    match state {
        None => WireState::Unknown,
        Some(HostState::Pending) => WireState::Pending,
        Some(HostState::Approved) => WireState::Approved,
        Some(HostState::Revoked) => WireState::Revoked,
    }
}

/// Records a verified enrollment of `name`: pending (a revoked host stays revoked). Leases
/// granted to its previous key are refused at their next renewal (the host is no longer
/// approved).
///
/// This is what `Enroll` does once the TPM evidence has verified. Tests and tools that
/// have no TPM (the TTP's own integration tests) call it directly on a registry with the
/// server stopped, then approve the host like an operator would.
pub fn store_enrollment(
    registry: &Registry,
    name: &str,
    key: EnrolledKey,
) -> crate::Result<HostRecord> {
    let now = now_unix();
    let write = registry.write()?;
    let state = match write.host(name)?.map(|h| h.state) {
        Some(HostState::Revoked) => HostState::Revoked,
        _ => HostState::Pending,
    };
    let record = HostRecord {
        state,
        decryption_key_spki: key.decryption_key_spki,
        attestation_key_fingerprint: key.attestation_key_fingerprint,
        pcr_selection: key.pcr_selection,
        pcr_digest: key.pcr_digest,
        enrolled_unix: now,
        changed_unix: now,
    };
    write.put_host(name, &record)?;
    write.commit()?;
    Ok(record)
}

impl TtpCore {
    pub fn begin_enrollment(&self, peer: &Peer) -> Result<BeginEnrollmentResponse, Refusal> {
        let subject = Subject::new("begin-enrollment", &peer.name);
        let result = require_role(peer, Role::Host)
            .and_then(|()| self.enrollment.issue(&peer.name))
            .map(|nonce| {
                (
                    BeginEnrollmentResponse {
                        nonce: nonce.to_vec(),
                    },
                    "nonce issued".to_string(),
                )
            });
        self.log.record(&subject, result)
    }

    pub fn enroll(&self, peer: &Peer, request: &EnrollRequest) -> Result<EnrollResponse, Refusal> {
        let subject = Subject::new("enroll", &peer.name);
        let result = self.enroll_inner(peer, request);
        self.log.record(&subject, result)
    }

    fn enroll_inner(
        &self,
        peer: &Peer,
        request: &EnrollRequest,
    ) -> Result<(EnrollResponse, String), Refusal> {
        require_role(peer, Role::Host)?;
        let presented = exact::<32>("nonce", &request.nonce)?;
        check_evidence(request)?;
        let nonce = self.enrollment.take(&peer.name, &presented)?;
        let key = crate::attest::verify_enrollment(request, &nonce)
            .map_err(|e| Refusal::denied(e.to_string()))?;
        let record = store_enrollment(&self.registry, &peer.name, key)?;
        let state = record.state;
        let detail = format!(
            "enrolled as {} (attestation key {}, PCRs {})",
            state.as_str(),
            record.attestation_key_fingerprint,
            record.pcr_selection,
        );
        Ok((
            EnrollResponse {
                state: wire_state(Some(state)) as i32,
                attestation_key_fingerprint: record.attestation_key_fingerprint,
            },
            detail,
        ))
    }

    /// Where the calling host stands. Not a decision: not logged.
    pub fn host_status(&self, peer: &Peer) -> Result<HostStatusResponse, Refusal> {
        require_role(peer, Role::Host)?;
        let host = self.registry.read()?.host(&peer.name)?;
        Ok(HostStatusResponse {
            name: peer.name.clone(),
            state: wire_state(host.as_ref().map(|h| h.state)) as i32,
            attestation_key_fingerprint: host
                .map(|h| h.attestation_key_fingerprint)
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_single_use_and_per_host() {
        let nonces = EnrollmentNonces::default();
        let a = nonces.issue("a").expect("nonce");
        let b = nonces.issue("b").expect("nonce");
        assert_ne!(a, b);
        assert!(nonces.take("a", &b).is_err());
        // The failed attempt used the nonce up.
        assert!(nonces.take("a", &a).is_err());
        assert_eq!(nonces.take("b", &b).ok(), Some(b));
        assert!(nonces.take("b", &b).is_err());
    }
}
