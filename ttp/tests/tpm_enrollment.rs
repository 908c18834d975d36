//! Host enrollment and key unwrap against a real (software) TPM: the agent's `Tpm` produces
//! the evidence, the TTP's `verify_enrollment` checks it, `wrap_for_host` encrypts to the
//! key it returns, and the TPM decrypts only while the PCRs are as enrolled.
//!
//! Each test starts its own swtpm (the Debian package `swtpm`); without it they fail.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

use domfs_agent::swtpm::Swtpm;
use domfs_agent::tpm::{PcrSelection, Tpm, TpmConfig, TpmError, templates};
use domfs_proto::ttp::EnrollRequest;
use domfs_ttp::attest::{AttestError, EnrolledKey, verify_enrollment};
use domfs_ttp::wrap::wrap_for_host;
use sha2::{Digest as _, Sha256};
use tss_esapi::{
    Context,
    attributes::ObjectAttributesBuilder,
    constants::{
        CapabilityType, SessionType,
        response_code::Tss2ResponseCodeKind,
        tss::{TPM2_ACTIVE_SESSION_FIRST, TPM2_LOADED_SESSION_FIRST, TPM2_TRANSIENT_FIRST},
    },
    handles::{KeyHandle, SessionHandle},
    interface_types::{
        algorithm::{HashingAlgorithm, PublicAlgorithm},
        key_bits::RsaKeyBits,
        resource_handles::Hierarchy,
        session_handles::{AuthSession, PolicySession},
    },
    structures::{
        CapabilityData, Data, Digest, Public, PublicBuilder, PublicKeyRsa, PublicRsaParameters,
        RsaExponent, RsaScheme, SignatureScheme, SymmetricDefinition, SymmetricDefinitionObject,
    },
    traits::{Marshall, UnMarshall},
};

const PCRS: &str = "sha256:7,16";

fn swtpm() -> Swtpm {
    Swtpm::start(None).unwrap_or_else(|e| {
        panic!("cannot start swtpm ({e}); install it with `apt-get install swtpm swtpm-tools`")
    })
}

fn pcrs() -> PcrSelection {
    PCRS.parse().expect("selection")
}

fn config(swtpm: &Swtpm, state_dir: &Path) -> TpmConfig {
    TpmConfig {
        tcti: swtpm.tcti(),
        state_dir: state_dir.to_path_buf(),
        pcrs: pcrs(),
    }
}

fn start(swtpm: &Swtpm, state_dir: &Path) -> Tpm {
    Tpm::start(config(swtpm, state_dir)).expect("Tpm::start")
}

fn nonce() -> Vec<u8> {
    let mut nonce = vec![0u8; 32];
    getrandom::fill(&mut nonce).expect("random");
    nonce
}

fn sha256(parts: &[&[u8]]) -> Vec<u8> {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part);
    }
    hash.finalize().to_vec()
}

/// Enrolls: evidence from the TPM over a fresh nonce, checked by the TTP.
async fn enroll(tpm: &Tpm, fresh_keys: bool) -> (EnrollRequest, EnrolledKey) {
    let nonce = nonce();
    let request = tpm
        .enrollment_evidence(nonce.clone(), fresh_keys)
        .await
        .expect("enrollment evidence");
    let enrolled = verify_enrollment(&request, &nonce).expect("the TTP accepts the evidence");
    (request, enrolled)
}

fn refused_for(result: Result<EnrolledKey, AttestError>, expect: &str) {
    match result {
        Err(AttestError::Refused(why)) => assert!(
            why.contains(expect),
            "refused, but for {why:?} rather than {expect:?}"
        ),
        Ok(_) => panic!("the TTP accepted evidence it must refuse ({expect})"),
    }
}

async fn round_trip(tpm: &Tpm, enrolled: &EnrolledKey, plaintext: &[u8]) {
    let wrapped = wrap_for_host(&enrolled.decryption_key_spki, plaintext).expect("wrap");
    let unwrapped = tpm.unwrap(wrapped).await.expect("unwrap");
    assert_eq!(unwrapped.as_slice(), plaintext);
}

#[tokio::test]
async fn enrollment_verifies_and_wrapped_keys_unwrap() {
    let swtpm = swtpm();
    let state = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    let tpm = start(&swtpm, state.path());
    let t_start = t.elapsed();
    assert!(!tpm.has_keys().await.expect("has_keys"));
    assert!(matches!(
        tpm.unwrap(vec![0; 256]).await,
        Err(TpmError::NotEnrolled)
    ));

    let t = Instant::now();
    let (request, enrolled) = enroll(&tpm, false).await;
    let t_first = t.elapsed();
    assert!(tpm.has_keys().await.expect("has_keys"));

    // What the TTP keeps.
    assert_eq!(enrolled.pcr_selection, PCRS);
    assert_eq!(enrolled.pcr_digest, sha256(&[&[0u8; 32], &[0u8; 32]]));
    assert_eq!(
        enrolled.attestation_key_fingerprint,
        hex::encode(sha256(&[&request.attestation_key_public]))
    );
    assert_eq!(
        enrolled.decryption_key_public,
        request.decryption_key_public
    );
    assert_eq!(
        enrolled.attestation_key_public,
        request.attestation_key_public
    );
    assert_eq!(request.pcr_values.len(), 2);
    assert_eq!(
        (request.pcr_values[0].index, request.pcr_values[1].index),
        (7, 16)
    );
    let Public::Rsa { unique, .. } =
        Public::unmarshall(&request.decryption_key_public).expect("public")
    else {
        panic!("not RSA")
    };
    assert_eq!(
        enrolled.decryption_key_spki,
        domfs_ttp::wrap::rsa_spki_der(unique.value(), &[1, 0, 1]).expect("spki")
    );

    // Evidence again, with the same keys: the same key, new statements.
    let t = Instant::now();
    let (again, enrolled_again) = enroll(&tpm, false).await;
    let t_evidence = t.elapsed();
    assert_eq!(again.decryption_key_public, request.decryption_key_public);
    assert_eq!(again.attestation_key_public, request.attestation_key_public);
    assert_ne!(again.quote_info, request.quote_info);
    assert_eq!(enrolled_again, enrolled);

    // Domain keys wrapped by the TTP unwrap in the TPM: a 32-byte key, and a key with a
    // writer seed (64 bytes).
    let t = Instant::now();
    round_trip(&tpm, &enrolled, &[0x42; 32]).await;
    let t_unwrap = t.elapsed();
    let key_and_seed: Vec<u8> = (0..64u8).collect();
    round_trip(&tpm, &enrolled, &key_and_seed).await;
    round_trip(&tpm, &enrolled, &[]).await;

    // Garbage and a ciphertext for another key are refused, not "decrypted".
    let other = wrap_for_host(&other_spki(), &[1; 32]).expect("wrap");
    assert!(matches!(tpm.unwrap(other).await, Err(TpmError::Failed(_))));
    assert!(matches!(
        tpm.unwrap(vec![0x55; 256]).await,
        Err(TpmError::Failed(_))
    ));
    assert!(matches!(
        tpm.unwrap(vec![1; 10]).await,
        Err(TpmError::Failed(_))
    ));
    // The TPM still works after refusals (sessions and objects were flushed).
    round_trip(&tpm, &enrolled, &[0x43; 32]).await;

    // The key file: one file, 0600, in a 0700 directory.
    let dir = state.path().join("tpm");
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("host-keys.json")), 0o600);

    eprintln!(
        "swtpm timings: start (connect, flush, primary) {t_start:?}; first enrollment \
         (create AK + DK, certify, quote) {t_first:?}; enrollment with existing keys \
         (certify + quote) {t_evidence:?}; unwrap {t_unwrap:?}"
    );
    // Timing report for the record: unwrap a few more times.
    let wrapped = wrap_for_host(&enrolled.decryption_key_spki, &[9; 32]).expect("wrap");
    let t = Instant::now();
    for _ in 0..10 {
        tpm.unwrap(wrapped.clone()).await.expect("unwrap");
    }
    eprintln!("swtpm timings: unwrap, mean of 10: {:?}", t.elapsed() / 10);
}

/// The SPKI of some other RSA-2048 key.
fn other_spki() -> Vec<u8> {
    use aws_lc_rs::encoding::AsDer;
    aws_lc_rs::rsa::PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .expect("key")
        .public_key()
        .as_der()
        .expect("der")
        .as_ref()
        .to_vec()
}

/// All 24 PCRs: more than one TPM2_PCR_Read (eight values each), and the TTP's limit.
#[tokio::test]
async fn all_twenty_four_pcrs() {
    let swtpm = swtpm();
    swtpm.extend_pcr(23, b"something").expect("extend");
    let state = tempfile::tempdir().expect("tempdir");
    let all = (0..24).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let tpm = Tpm::start(TpmConfig {
        pcrs: format!("sha256:{all}").parse().expect("selection"),
        ..config(&swtpm, state.path())
    })
    .expect("Tpm::start");
    let (request, enrolled) = enroll(&tpm, false).await;
    assert_eq!(request.pcr_values.len(), 24);
    assert!(
        request
            .pcr_values
            .iter()
            .enumerate()
            .all(|(i, v)| v.index == i as u32 && v.bank == "sha256")
    );
    assert_ne!(request.pcr_values[23].value, vec![0u8; 32]);
    assert_eq!(enrolled.pcr_selection, format!("sha256:{all}"));
    round_trip(&tpm, &enrolled, &[1; 32]).await;

    // A key bound to other PCRs than configured is replaced at the next enrollment.
    drop(tpm);
    let tpm = start(&swtpm, state.path());
    let (_, narrower) = enroll(&tpm, false).await;
    assert_eq!(narrower.pcr_selection, PCRS);
    assert_ne!(narrower.decryption_key_spki, enrolled.decryption_key_spki);
}

#[tokio::test]
async fn evidence_over_another_nonce_is_refused() {
    let swtpm = swtpm();
    let state = tempfile::tempdir().expect("tempdir");
    let tpm = start(&swtpm, state.path());
    let nonce = nonce();
    let request = tpm
        .enrollment_evidence(nonce.clone(), false)
        .await
        .expect("evidence");
    assert!(verify_enrollment(&request, &nonce).is_ok());

    // The TTP handed out another nonce.
    refused_for(verify_enrollment(&request, &self::nonce()), "nonce");
    // The request claims the TTP's nonce, but the TPM's statements are over another.
    let ttp_nonce = self::nonce();
    let mut replayed = request.clone();
    replayed.nonce = ttp_nonce.clone();
    refused_for(
        verify_enrollment(&replayed, &ttp_nonce),
        "certification is not over this nonce",
    );
    // A nonce the TPM cannot take.
    assert!(tpm.enrollment_evidence(vec![], false).await.is_err());
    assert!(tpm.enrollment_evidence(vec![1; 65], false).await.is_err());
}

fn blob(request: &mut EnrollRequest, field: usize) -> (&'static str, &mut Vec<u8>) {
    match field {
        0 => (
            "attestation_key_public",
            &mut request.attestation_key_public,
        ),
        1 => ("decryption_key_public", &mut request.decryption_key_public),
        2 => ("certify_info", &mut request.certify_info),
        3 => ("certify_signature", &mut request.certify_signature),
        4 => ("quote_info", &mut request.quote_info),
        _ => ("quote_signature", &mut request.quote_signature),
    }
}

#[tokio::test]
async fn any_tampering_is_refused_without_panicking() {
    let swtpm = swtpm();
    let state = tempfile::tempdir().expect("tempdir");
    let tpm = start(&swtpm, state.path());
    let nonce = nonce();
    let request = tpm
        .enrollment_evidence(nonce.clone(), false)
        .await
        .expect("evidence");
    assert!(verify_enrollment(&request, &nonce).is_ok());

    let mut checked = 0usize;
    for field in 0..6 {
        let len = blob(&mut request.clone(), field).1.len();
        // Every byte, with one bit and with all bits flipped.
        for at in 0..len {
            for mask in [0x01u8, 0xff] {
                let mut bad = request.clone();
                let (name, b) = blob(&mut bad, field);
                b[at] ^= mask;
                assert!(
                    verify_enrollment(&bad, &nonce).is_err(),
                    "{name}: byte {at} ^ {mask:#x} accepted"
                );
                checked += 1;
            }
        }
        // Every truncation, and a byte appended.
        for cut in 0..len {
            let mut bad = request.clone();
            let (name, b) = blob(&mut bad, field);
            b.truncate(cut);
            assert!(
                verify_enrollment(&bad, &nonce).is_err(),
                "{name} truncated to {cut} accepted"
            );
            checked += 1;
        }
        let mut bad = request.clone();
        let (name, b) = blob(&mut bad, field);
        b.push(0);
        refused_for(verify_enrollment(&bad, &nonce), "canonical");
        let _ = name;
    }
    // The blobs swapped: the decryption key's public area as the attestation key's, the
    // quote as the certification, a signature for the other statement.
    let mut bad = request.clone();
    std::mem::swap(
        &mut bad.attestation_key_public,
        &mut bad.decryption_key_public,
    );
    assert!(verify_enrollment(&bad, &nonce).is_err());
    let mut bad = request.clone();
    std::mem::swap(&mut bad.certify_info, &mut bad.quote_info);
    std::mem::swap(&mut bad.certify_signature, &mut bad.quote_signature);
    refused_for(verify_enrollment(&bad, &nonce), "not a TPM2_Certify");
    let mut bad = request.clone();
    std::mem::swap(&mut bad.certify_signature, &mut bad.quote_signature);
    refused_for(verify_enrollment(&bad, &nonce), "does not verify");

    // The PCR values: changed, renumbered, missing, extra, reordered, other bank.
    let mut bad = request.clone();
    bad.pcr_values[1].value[0] ^= 1;
    refused_for(verify_enrollment(&bad, &nonce), "digest");
    let mut bad = request.clone();
    bad.pcr_values[1].index = 17;
    refused_for(verify_enrollment(&bad, &nonce), "quoted selection");
    let mut bad = request.clone();
    bad.pcr_values.pop();
    refused_for(verify_enrollment(&bad, &nonce), "PCR values sent");
    let mut bad = request.clone();
    bad.pcr_values.push(bad.pcr_values[0].clone());
    refused_for(verify_enrollment(&bad, &nonce), "PCR values sent");
    let mut bad = request.clone();
    bad.pcr_values.swap(0, 1);
    refused_for(verify_enrollment(&bad, &nonce), "quoted selection");
    let mut bad = request.clone();
    bad.pcr_values[0].bank = "sha1".into();
    refused_for(verify_enrollment(&bad, &nonce), "quoted selection");
    let mut bad = request.clone();
    bad.pcr_values[0].value.push(0);
    refused_for(verify_enrollment(&bad, &nonce), "quoted selection");

    // The untouched request is still fine.
    assert!(verify_enrollment(&request, &nonce).is_ok());
    eprintln!("{checked} tampered requests refused");
}

#[tokio::test]
async fn a_changed_pcr_stops_unwrap_until_fresh_keys_are_enrolled() {
    let swtpm = swtpm();
    let state = tempfile::tempdir().expect("tempdir");
    let tpm = start(&swtpm, state.path());
    let (first_request, first) = enroll(&tpm, false).await;
    let wrapped = wrap_for_host(&first.decryption_key_spki, &[7; 32]).expect("wrap");
    assert_eq!(
        tpm.unwrap(wrapped.clone())
            .await
            .expect("unwrap")
            .as_slice(),
        &[7; 32]
    );

    // The host's measured state changes under the running agent: the next unwrap fails.
    let pcr16 = swtpm.extend_pcr(16, b"a different kernel").expect("extend");
    assert_ne!(pcr16, vec![0; 32]);
    assert!(matches!(
        tpm.unwrap(wrapped.clone()).await,
        Err(TpmError::PolicyFailed)
    ));
    // And after a restart of the agent (dropping the last handle closes its connection).
    drop(tpm);
    let tpm = start(&swtpm, state.path());
    assert!(tpm.has_keys().await.expect("has_keys"));
    assert!(matches!(
        tpm.unwrap(wrapped.clone()).await,
        Err(TpmError::PolicyFailed)
    ));
    // Enrolling the old key again is pointless: its policy no longer matches.
    assert!(matches!(
        tpm.enrollment_evidence(nonce(), false).await,
        Err(TpmError::PolicyFailed)
    ));
    // Refusals leave no handle behind: the same connection keeps working.
    assert!(matches!(
        tpm.unwrap(wrapped.clone()).await,
        Err(TpmError::PolicyFailed)
    ));

    // Fresh keys: a new decryption key bound to the new values.
    let (second_request, second) = enroll(&tpm, true).await;
    assert_ne!(
        second_request.decryption_key_public,
        first_request.decryption_key_public
    );
    assert_ne!(
        second_request.attestation_key_public,
        first_request.attestation_key_public
    );
    assert_ne!(second.decryption_key_spki, first.decryption_key_spki);
    assert_ne!(second.pcr_digest, first.pcr_digest);
    assert_eq!(second.pcr_digest, sha256(&[&[0u8; 32], &pcr16]));
    round_trip(&tpm, &second, &[8; 32]).await;
    // A key wrapped to the old host key is of no use now.
    assert!(tpm.unwrap(wrapped).await.is_err());
}

#[tokio::test]
async fn a_restarted_agent_and_a_rebooted_tpm_still_unwrap() {
    let mut swtpm = swtpm();
    let state = tempfile::tempdir().expect("tempdir");
    let tpm = start(&swtpm, state.path());
    let (_, enrolled) = enroll(&tpm, false).await;
    let wrapped = wrap_for_host(&enrolled.decryption_key_spki, &[5; 32]).expect("wrap");
    drop(tpm);

    // A new agent process: the keys come from the state directory.
    let tpm = start(&swtpm, state.path());
    assert!(tpm.has_keys().await.expect("has_keys"));
    assert_eq!(
        tpm.unwrap(wrapped.clone())
            .await
            .expect("unwrap")
            .as_slice(),
        &[5; 32]
    );
    // A clone shares the connection; the last one dropped closes it.
    let clone = tpm.clone();
    drop(tpm);
    assert!(clone.has_keys().await.expect("has_keys"));
    drop(clone);

    // A reboot (TPM reset: PCRs back to their boot values, which these are), under a
    // running agent and with an agent started afterwards.
    let running = start(&swtpm, state.path());
    swtpm.extend_pcr(16, b"before the reboot").expect("extend");
    assert!(matches!(
        running.unwrap(wrapped.clone()).await,
        Err(TpmError::PolicyFailed)
    ));
    swtpm.restart().expect("restart swtpm");
    assert_eq!(
        running
            .unwrap(wrapped.clone())
            .await
            .expect("unwrap after the reboot")
            .as_slice(),
        &[5; 32]
    );
    drop(running);
    let tpm = start(&swtpm, state.path());
    assert_eq!(
        tpm.unwrap(wrapped.clone())
            .await
            .expect("unwrap")
            .as_slice(),
        &[5; 32]
    );
    // The same evidence verifies again (same keys, same PCRs).
    let (_, again) = enroll(&tpm, false).await;
    assert_eq!(again, enrolled);
    drop(tpm);

    // Another TPM (a new owner seed) cannot load the keys: the agent starts without them,
    // and enrolling creates new ones.
    let other = self::swtpm();
    let tpm = start(&other, state.path());
    assert!(!tpm.has_keys().await.expect("has_keys"));
    assert!(matches!(
        tpm.unwrap(wrapped.clone()).await,
        Err(TpmError::NotEnrolled)
    ));
    let (_, on_other) = enroll(&tpm, false).await;
    assert_ne!(on_other.decryption_key_spki, enrolled.decryption_key_spki);
    drop(tpm);

    // A damaged key file: the agent starts without keys, and enrolling replaces the file.
    let file = state.path().join("tpm").join("host-keys.json");
    std::fs::write(&file, b"{ not json").expect("damage the key file");
    let tpm = start(&other, state.path());
    assert!(!tpm.has_keys().await.expect("has_keys"));
    let (_, replaced) = enroll(&tpm, false).await;
    round_trip(&tpm, &replaced, &[6; 32]).await;
    drop(tpm);
    let tpm = start(&other, state.path());
    round_trip(&tpm, &replaced, &[6; 32]).await;
}

fn handles(ctx: &mut Context, first: u32) -> tss_esapi::Result<usize> {
    let (data, _) = ctx.get_capability(CapabilityType::Handles, first, 64)?;
    Ok(match data {
        CapabilityData::Handles(list) => list.into_inner().len(),
        _ => 0,
    })
}

const LEAK_ENV: &str = "DOMFS_TEST_LEAK_HANDLES_TCTI";

/// The "crashed process": fills swtpm's three object slots, leaves an HMAC and a policy
/// session loaded and a third session context-saved, then exits without flushing anything.
fn leak_handles_and_exit(tcti: &str) -> ! {
    let mut ctx = Context::new(tcti.parse().expect("tcti")).expect("connect");
    for _ in 0..3 {
        ctx.execute_with_nullauth_session(|ctx| {
            ctx.create_primary(
                Hierarchy::Owner,
                templates::storage_primary()?,
                None,
                None,
                None,
                None,
            )
        })
        .expect("create_primary");
    }
    let mut session = |kind| {
        ctx.start_auth_session(
            None,
            None,
            None,
            kind,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .expect("session")
        .expect("a session")
    };
    session(SessionType::Hmac);
    session(SessionType::Policy);
    let saved = session(SessionType::Hmac);
    ctx.context_save(SessionHandle::from(saved).into())
        .expect("context_save");
    std::process::exit(0);
}

#[tokio::test]
async fn start_after_a_crash_that_leaked_handles() {
    if let Ok(tcti) = std::env::var(LEAK_ENV) {
        leak_handles_and_exit(&tcti);
    }
    let swtpm = swtpm();
    let status = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "start_after_a_crash_that_leaked_handles",
            "--test-threads=1",
        ])
        .env(LEAK_ENV, swtpm.tcti())
        .status()
        .expect("run the crashing child");
    assert!(status.success(), "the child failed: {status}");

    // The leak is real: three objects and three sessions are left, and the TPM has no
    // room for another object.
    let (objects, sessions, saved, create) = swtpm
        .with_raw_context(|ctx| {
            let objects = handles(ctx, TPM2_TRANSIENT_FIRST)?;
            let sessions = handles(ctx, TPM2_LOADED_SESSION_FIRST)?;
            let saved = handles(ctx, TPM2_ACTIVE_SESSION_FIRST)?;
            let create = ctx
                .execute_with_nullauth_session(|ctx| {
                    ctx.create_primary(
                        Hierarchy::Owner,
                        templates::storage_primary()?,
                        None,
                        None,
                        None,
                        None,
                    )
                })
                .map(|_| ());
            Ok((objects, sessions, saved, create))
        })
        .expect("inspect swtpm");
    assert_eq!((objects, sessions, saved), (3, 2, 1));
    match create {
        Err(tss_esapi::Error::Tss2Error(rc)) => {
            assert_eq!(rc.kind(), Some(Tss2ResponseCodeKind::ObjectMemory))
        }
        other => panic!("a fourth object should not fit: {other:?}"),
    }

    // The agent starts anyway, and works.
    let state = tempfile::tempdir().expect("tempdir");
    let tpm = start(&swtpm, state.path());
    let (_, enrolled) = enroll(&tpm, false).await;
    round_trip(&tpm, &enrolled, &[3; 32]).await;
    drop(tpm);

    // And leaves nothing behind when it stops.
    let left = swtpm
        .with_raw_context(|ctx| {
            Ok((
                handles(ctx, TPM2_TRANSIENT_FIRST)?,
                handles(ctx, TPM2_LOADED_SESSION_FIRST)?,
                handles(ctx, TPM2_ACTIVE_SESSION_FIRST)?,
            ))
        })
        .expect("inspect swtpm");
    assert_eq!(left, (0, 0, 0));
}

/// Evidence built with a raw context from arbitrary key templates: what a host with a
/// modified agent could send. Returns the request, or the TPM's error message.
#[derive(Clone)]
struct Templates {
    attestation: Public,
    /// Built from the PolicyPCR digest of the current PCR values.
    decryption: fn(Digest) -> tss_esapi::Result<Public>,
}

fn raw_evidence(
    swtpm: &Swtpm,
    templates: Templates,
    nonce: Vec<u8>,
) -> Result<EnrollRequest, String> {
    let list = pcrs().to_tpm().expect("selection");
    swtpm
        .with_raw_context(move |ctx| {
            let primary = ctx
                .execute_with_nullauth_session(|ctx| {
                    ctx.create_primary(
                        Hierarchy::Owner,
                        templates::storage_primary()?,
                        None,
                        None,
                        None,
                        None,
                    )
                })?
                .key_handle;
            let policy = trial_policy(ctx, list.clone())?;
            let ak = create_and_load(ctx, primary, templates.attestation.clone())?;
            let dk = create_and_load(ctx, primary, (templates.decryption)(policy)?)?;
            let data = Data::try_from(nonce.clone())?;
            let (certify_info, certify_signature) = ctx.execute_with_sessions(
                (
                    Some(AuthSession::Password),
                    Some(AuthSession::Password),
                    None,
                ),
                |ctx| ctx.certify(dk.0.into(), ak.0, data.clone(), SignatureScheme::Null),
            )?;
            let (quote_info, quote_signature) = ctx
                .execute_with_sessions((Some(AuthSession::Password), None, None), |ctx| {
                    ctx.quote(ak.0, data, SignatureScheme::Null, list.clone())
                })?;
            let (_, _, digests) = ctx.pcr_read(list.clone())?;
            let request = EnrollRequest {
                nonce,
                attestation_key_public: ak.1.marshall()?,
                decryption_key_public: dk.1.marshall()?,
                certify_info: certify_info.marshall()?,
                certify_signature: certify_signature.marshall()?,
                quote_info: quote_info.marshall()?,
                quote_signature: quote_signature.marshall()?,
                pcr_values: [7u32, 16]
                    .iter()
                    .zip(digests.value())
                    .map(|(&index, d)| domfs_proto::ttp::PcrValue {
                        bank: "sha256".into(),
                        index,
                        value: d.value().to_vec(),
                    })
                    .collect(),
            };
            for handle in [dk.0, ak.0, primary] {
                ctx.flush_context(handle.into())?;
            }
            Ok(request)
        })
        .map_err(|e| match e {
            domfs_agent::swtpm::SwtpmError::Tpm(e) => e,
            other => panic!("swtpm: {other}"),
        })
}

fn trial_policy(
    ctx: &mut Context,
    list: tss_esapi::structures::PcrSelectionList,
) -> tss_esapi::Result<Digest> {
    let session = ctx
        .start_auth_session(
            None,
            None,
            None,
            SessionType::Trial,
            SymmetricDefinition::Null,
            HashingAlgorithm::Sha256,
        )?
        .expect("session");
    let policy = PolicySession::try_from(session)?;
    ctx.policy_pcr(policy, Digest::default(), list)?;
    let digest = ctx.policy_get_digest(policy)?;
    ctx.flush_context(SessionHandle::from(session).into())?;
    Ok(digest)
}

fn create_and_load(
    ctx: &mut Context,
    primary: KeyHandle,
    template: Public,
) -> tss_esapi::Result<(KeyHandle, Public)> {
    ctx.execute_with_nullauth_session(|ctx| {
        let key = ctx.create(primary, template, None, None, None, None)?;
        let handle = ctx.load(primary, key.out_private, key.out_public.clone())?;
        Ok((handle, key.out_public))
    })
}

fn good_templates() -> Templates {
    Templates {
        attestation: templates::attestation_key().expect("template"),
        decryption: templates::decryption_key,
    }
}

#[test]
fn keys_without_the_pcr_binding_are_refused() {
    let swtpm = swtpm();
    let check = |templates: Templates, expect: &str| {
        let nonce = nonce();
        let request = raw_evidence(&swtpm, templates, nonce.clone()).expect("raw evidence");
        refused_for(verify_enrollment(&request, &nonce), expect);
    };

    // The raw builder itself makes acceptable evidence from the agent's templates.
    let nonce = nonce();
    let good = raw_evidence(&swtpm, good_templates(), nonce.clone()).expect("raw evidence");
    verify_enrollment(&good, &nonce).expect("good evidence verifies");

    // userWithAuth = 1: the key could be used with its (empty) auth value, no PCRs needed.
    check(
        Templates {
            decryption: |policy| {
                let attributes = ObjectAttributesBuilder::new()
                    .with_fixed_tpm(true)
                    .with_fixed_parent(true)
                    .with_sensitive_data_origin(true)
                    .with_user_with_auth(true)
                    .with_decrypt(true)
                    .build()?;
                templates::decryption_key_with_attributes(attributes, policy)
            },
            ..good_templates()
        },
        "userWithAuth",
    );
    // No policy at all.
    check(
        Templates {
            decryption: |_| templates::decryption_key(Digest::default()),
            ..good_templates()
        },
        "no SHA-256 authPolicy",
    );
    // A policy for other PCR values than the quoted ones.
    check(
        Templates {
            decryption: |_| templates::decryption_key(Digest::try_from(vec![0x11; 32])?),
            ..good_templates()
        },
        "authPolicy is not the PolicyPCR digest",
    );
    // A key that may leave the TPM (duplicable: not fixedTPM, not fixedParent).
    check(
        Templates {
            decryption: |policy| {
                let attributes = ObjectAttributesBuilder::new()
                    .with_sensitive_data_origin(true)
                    .with_decrypt(true)
                    .build()?;
                templates::decryption_key_with_attributes(attributes, policy)
            },
            ..good_templates()
        },
        "fixedTPM",
    );
    // A decryption key that also signs (such a key has no scheme of its own).
    check(
        Templates {
            decryption: |policy| {
                let attributes = ObjectAttributesBuilder::new()
                    .with_fixed_tpm(true)
                    .with_fixed_parent(true)
                    .with_sensitive_data_origin(true)
                    .with_decrypt(true)
                    .with_sign_encrypt(true)
                    .build()?;
                PublicBuilder::new()
                    .with_public_algorithm(PublicAlgorithm::Rsa)
                    .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
                    .with_object_attributes(attributes)
                    .with_auth_policy(policy)
                    .with_rsa_parameters(PublicRsaParameters::new(
                        SymmetricDefinitionObject::Null,
                        RsaScheme::Null,
                        RsaKeyBits::Rsa2048,
                        RsaExponent::default(),
                    ))
                    .with_rsa_unique_identifier(PublicKeyRsa::default())
                    .build()
            },
            ..good_templates()
        },
        "decrypt-only",
    );
    // An unrestricted attestation key would sign anything, a forged quote included.
    check(
        Templates {
            attestation: templates::attestation_key_with_attributes(
                ObjectAttributesBuilder::new()
                    .with_fixed_tpm(true)
                    .with_fixed_parent(true)
                    .with_sensitive_data_origin(true)
                    .with_user_with_auth(true)
                    .with_sign_encrypt(true)
                    .build()
                    .expect("attributes"),
            )
            .expect("template"),
            ..good_templates()
        },
        "restricted signing key",
    );

    // Editing the good key's public area after the fact (userWithAuth set, re-marshalled)
    // no longer matches the name the TPM certified.
    let Public::Rsa {
        object_attributes,
        name_hashing_algorithm,
        auth_policy,
        parameters,
        unique,
    } = Public::unmarshall(&good.decryption_key_public).expect("public")
    else {
        panic!("not RSA")
    };
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(object_attributes.fixed_tpm())
        .with_fixed_parent(object_attributes.fixed_parent())
        .with_sensitive_data_origin(object_attributes.sensitive_data_origin())
        .with_decrypt(true)
        .with_user_with_auth(true)
        .build()
        .expect("attributes");
    let edited = Public::Rsa {
        object_attributes: attributes,
        name_hashing_algorithm,
        auth_policy,
        parameters,
        unique,
    };
    let mut bad = good.clone();
    bad.decryption_key_public = edited.marshall().expect("marshall");
    refused_for(verify_enrollment(&bad, &nonce), "userWithAuth");
    // Even with the policy check passing, the name check catches a re-labelled key:
    // edit only something the TTP does not check (noDA).
    let Public::Rsa {
        object_attributes,
        name_hashing_algorithm,
        auth_policy,
        parameters,
        unique,
    } = Public::unmarshall(&good.decryption_key_public).expect("public")
    else {
        panic!("not RSA")
    };
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(object_attributes.fixed_tpm())
        .with_fixed_parent(object_attributes.fixed_parent())
        .with_sensitive_data_origin(object_attributes.sensitive_data_origin())
        .with_decrypt(true)
        .with_no_da(true)
        .build()
        .expect("attributes");
    let edited = Public::Rsa {
        object_attributes: attributes,
        name_hashing_algorithm,
        auth_policy,
        parameters,
        unique,
    };
    let mut bad = good.clone();
    bad.decryption_key_public = edited.marshall().expect("marshall");
    refused_for(
        verify_enrollment(&bad, &nonce),
        "certification is of another key",
    );
}

/// Why the decryption key has adminWithPolicy clear: TPM2_Certify needs the ADMIN role of
/// the certified key. With adminWithPolicy set, the auth value cannot provide it
/// (TPM_RC_AUTH_TYPE), and a PolicyPCR session cannot either (the policy would have to
/// include PolicyCommandCode(Certify)): such a key could never be certified.
#[test]
fn admin_with_policy_keys_cannot_be_certified() {
    let swtpm = swtpm();
    let list = pcrs().to_tpm().expect("selection");
    let (with_password, with_policy) = swtpm
        .with_raw_context(move |ctx| {
            let primary = ctx
                .execute_with_nullauth_session(|ctx| {
                    ctx.create_primary(
                        Hierarchy::Owner,
                        templates::storage_primary()?,
                        None,
                        None,
                        None,
                        None,
                    )
                })?
                .key_handle;
            let policy = trial_policy(ctx, list.clone())?;
            let attributes = ObjectAttributesBuilder::new()
                .with_fixed_tpm(true)
                .with_fixed_parent(true)
                .with_sensitive_data_origin(true)
                .with_admin_with_policy(true)
                .with_decrypt(true)
                .build()?;
            let ak = create_and_load(ctx, primary, templates::attestation_key()?)?.0;
            let dk = create_and_load(
                ctx,
                primary,
                templates::decryption_key_with_attributes(attributes, policy)?,
            )?
            .0;
            let data = Data::try_from(vec![1u8; 32])?;
            let with_password = ctx
                .execute_with_sessions(
                    (
                        Some(AuthSession::Password),
                        Some(AuthSession::Password),
                        None,
                    ),
                    |ctx| ctx.certify(dk.into(), ak, data.clone(), SignatureScheme::Null),
                )
                .map(|_| ());
            let session = ctx
                .start_auth_session(
                    None,
                    None,
                    None,
                    SessionType::Policy,
                    SymmetricDefinition::AES_128_CFB,
                    HashingAlgorithm::Sha256,
                )?
                .expect("session");
            ctx.policy_pcr(PolicySession::try_from(session)?, Digest::default(), list)?;
            let with_policy = ctx
                .execute_with_sessions((Some(session), Some(AuthSession::Password), None), |ctx| {
                    ctx.certify(dk.into(), ak, data.clone(), SignatureScheme::Null)
                })
                .map(|_| ());
            ctx.flush_context(SessionHandle::from(session).into())?;
            for handle in [dk, ak, primary] {
                ctx.flush_context(handle.into())?;
            }
            Ok((with_password, with_policy))
        })
        .expect("swtpm");
    let kind = |r: tss_esapi::Result<()>| match r {
        Err(tss_esapi::Error::Tss2Error(rc)) => rc.kind(),
        other => panic!("certify of an adminWithPolicy key: {other:?}"),
    };
    assert_eq!(kind(with_password), Some(Tss2ResponseCodeKind::AuthType));
    assert_eq!(kind(with_policy), Some(Tss2ResponseCodeKind::PolicyFail));
}
