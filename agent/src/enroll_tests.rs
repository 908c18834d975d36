//! When the agent enrolls, and with which keys, against the fake TPM and TTP.

use std::sync::atomic::Ordering;

use super::*;
use crate::fakes::*;

async fn run(tpm: &FakeTpm, ttp: &FakeTtp, keys: Keys) -> Result<Enrollment, AgentError> {
    ensure_enrolled(tpm, ttp, HOST, keys).await
}

#[tokio::test]
async fn a_known_host_with_keys_does_not_enroll_again() {
    let (tpm, ttp) = (FakeTpm::default(), FakeTtp::new());
    let enrollment = run(&tpm, &ttp, Keys::IfNeeded).await.unwrap();
    assert_eq!(
        enrollment,
        Enrollment {
            state: HostState::Approved,
            fingerprint: "f0".into(),
            enrolled_now: false,
        }
    );
    assert!(tpm.evidence_calls.lock().unwrap().is_empty());
    assert_eq!(ttp.state().enrolls, 0);
}

#[tokio::test]
async fn no_keys_means_new_keys_and_a_pending_enrollment() {
    let (tpm, ttp) = (FakeTpm::default(), FakeTtp::new());
    tpm.no_keys.store(true, Ordering::SeqCst);
    let enrollment = run(&tpm, &ttp, Keys::IfNeeded).await.unwrap();
    assert_eq!(enrollment.state, HostState::Pending);
    assert_eq!(enrollment.fingerprint, "f1");
    assert!(enrollment.enrolled_now);
    assert_eq!(*tpm.evidence_calls.lock().unwrap(), vec![true]);
}

#[tokio::test]
async fn a_host_the_ttp_does_not_know_enrolls_its_existing_keys() {
    let (tpm, ttp) = (FakeTpm::default(), FakeTtp::new());
    ttp.state().host_state = HostState::Unknown;
    run(&tpm, &ttp, Keys::IfNeeded).await.unwrap();
    assert_eq!(*tpm.evidence_calls.lock().unwrap(), vec![false]);
    assert_eq!(ttp.state().enrolls, 1);

    // Unless the TPM refuses them (PCRs changed): then new ones.
    let (tpm, ttp) = (FakeTpm::default(), FakeTtp::new());
    ttp.state().host_state = HostState::Unknown;
    tpm.stale_keys.store(true, Ordering::SeqCst);
    run(&tpm, &ttp, Keys::IfNeeded).await.unwrap();
    assert_eq!(*tpm.evidence_calls.lock().unwrap(), vec![false, true]);
}

#[tokio::test]
async fn force_makes_new_keys_even_for_an_approved_host() {
    let (tpm, ttp) = (FakeTpm::default(), FakeTtp::new());
    let enrollment = run(&tpm, &ttp, Keys::Fresh).await.unwrap();
    assert_eq!(enrollment.state, HostState::Pending);
    assert_eq!(*tpm.evidence_calls.lock().unwrap(), vec![true]);
}

#[tokio::test]
async fn an_unreachable_ttp_is_told_apart_from_a_refusal() {
    let (tpm, ttp) = (FakeTpm::default(), FakeTtp::new());
    ttp.state().down = true;
    let error = run(&tpm, &ttp, Keys::IfNeeded).await.unwrap_err();
    assert!(
        matches!(
            error,
            AgentError::TtpUnreachable {
                call: "HostStatus",
                ..
            }
        ),
        "{error}"
    );
    let error = run(&tpm, &ttp, Keys::Fresh).await.unwrap_err();
    assert!(
        matches!(
            error,
            AgentError::TtpUnreachable {
                call: "BeginEnrollment",
                ..
            }
        ),
        "{error}"
    );
    assert!(matches!(
        ttp_error("Enroll", Status::permission_denied("wrong role")),
        AgentError::TtpRefused { call: "Enroll", .. }
    ));
}
