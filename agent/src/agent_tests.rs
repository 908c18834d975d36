//! The key service against the fake TPM and TTP.

use std::sync::atomic::Ordering;

use domfs_proto::acl::Access;

use super::*;
use crate::fakes::*;

#[tokio::test]
async fn the_ttp_is_asked_once_per_lease() {
    let agent = agent();
    agent.ttp.state().grants.insert(D1, Access::ReadOnly);
    let (first, source) = get(&agent, D1, Mode::ReadOnly, &caller(11, true))
        .await
        .unwrap();
    assert_eq!(source, Source::Ttp);
    assert_eq!(*first.domain_key, vec![1; 32]);
    assert!(first.writer_secret.is_none());
    assert_eq!(first.writer_public_key, vec![1; 32]);
    let (second, source) = get(&agent, D1, Mode::ReadOnly, &caller(13, true))
        .await
        .unwrap();
    assert_eq!(source, Source::Cache);
    assert_eq!(second.lease_id, first.lease_id);
    assert_eq!(agent.ttp.get_calls.load(Ordering::SeqCst), 1);
    assert_eq!(agent.table().infos()[0].mounts, 2);
}

#[tokio::test]
async fn best_falls_back_to_read_only_when_read_write_is_refused() {
    let agent = agent();
    agent.ttp.state().grants.insert(D1, Access::ReadOnly);
    let (grant, source) = get(&agent, D1, Mode::Best, &caller(11, true))
        .await
        .unwrap();
    assert_eq!((grant.mode, source), (Granted::ReadOnly, Source::Ttp));
    assert_eq!(agent.ttp.get_calls.load(Ordering::SeqCst), 2);
    // The next BEST request knows read-write was refused and uses the cached lease.
    let (again, source) = get(&agent, D1, Mode::Best, &caller(13, true))
        .await
        .unwrap();
    assert_eq!((again.mode, source), (Granted::ReadOnly, Source::Cache));
    assert_eq!(again.lease_id, grant.lease_id);
    assert_eq!(agent.ttp.get_calls.load(Ordering::SeqCst), 2);

    // A read-write host gets read-write for BEST, with the writer secret.
    agent.ttp.state().grants.insert(D2, Access::ReadWrite);
    let (rw, _) = get(&agent, D2, Mode::Best, &caller(11, true))
        .await
        .unwrap();
    assert_eq!(rw.mode, Granted::ReadWrite);
    assert_eq!(rw.writer_secret.as_deref(), Some(&vec![2 ^ 0xff; 32]));
}

#[tokio::test]
async fn best_uses_an_existing_read_only_lease_after_a_refusal() {
    let agent = agent();
    agent.ttp.state().grants.insert(D1, Access::ReadOnly);
    let (ro, _) = get(&agent, D1, Mode::ReadOnly, &caller(11, true))
        .await
        .unwrap();
    let (best, source) = get(&agent, D1, Mode::Best, &caller(13, true))
        .await
        .unwrap();
    assert_eq!(source, Source::Cache);
    assert_eq!(best.lease_id, ro.lease_id);
    assert_eq!(agent.table().len(), 1);
}

#[tokio::test]
async fn a_read_write_lease_held_elsewhere_is_not_downgraded() {
    let agent = agent();
    agent.ttp.state().grants.insert(D1, Access::ReadWrite);
    agent.ttp.state().held_elsewhere.push(D1);
    let status = get(&agent, D1, Mode::Best, &caller(11, true))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("another host"), "{status:?}");
    assert_eq!(agent.ttp.get_calls.load(Ordering::SeqCst), 1);
    assert!(agent.table().is_empty());
}

#[tokio::test]
async fn a_local_read_write_mount_excludes_another_until_its_process_is_gone() {
    let agent = agent();
    agent.ttp.state().grants.insert(D1, Access::ReadWrite);
    let (grant, _) = get(&agent, D1, Mode::ReadWrite, &caller(11, true))
        .await
        .unwrap();
    let status = get(&agent, D1, Mode::ReadWrite, &caller(13, true))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("pid 11"), "{status:?}");

    // The holder crashes (its process is gone): the next daemon gets the cached lease.
    let agent2 = agent_with(FakeTtp::new(), Duration::from_secs(3600));
    agent2.ttp.state().grants.insert(D1, Access::ReadWrite);
    let (crashed, _) = get(&agent2, D1, Mode::ReadWrite, &caller(12, false))
        .await
        .unwrap();
    let (restarted, source) = get(&agent2, D1, Mode::ReadWrite, &caller(13, true))
        .await
        .unwrap();
    assert_eq!(source, Source::Cache);
    assert_eq!(restarted.lease_id, crashed.lease_id);
    drop(grant);
}

#[tokio::test]
async fn the_last_release_gives_the_lease_back() {
    let agent = agent();
    agent.ttp.state().grants.insert(D1, Access::ReadOnly);
    let (grant, _) = get(&agent, D1, Mode::ReadOnly, &caller(11, true))
        .await
        .unwrap();
    get(&agent, D1, Mode::ReadOnly, &caller(13, true))
        .await
        .unwrap();
    let mut watch = agent.table().watch(&grant.lease_id, None).unwrap();
    assert_eq!(
        agent
            .release_key(&grant.lease_id, &caller(11, true))
            .await
            .unwrap(),
        1
    );
    assert!(agent.ttp.state().released.is_empty());
    let status = agent
        .release_key(&grant.lease_id, &caller(11, true))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        agent
            .release_key(&grant.lease_id, &caller(13, true))
            .await
            .unwrap(),
        0
    );
    assert_eq!(agent.ttp.state().released, vec![grant.lease_id.clone()]);
    assert!(agent.table().is_empty());
    // The watch stream ends without an event.
    assert!(watch.recv().await.is_none());
    let status = agent
        .release_key(&grant.lease_id, &caller(13, true))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::NotFound);
    // The next request asks the TTP again.
    let (_, source) = get(&agent, D1, Mode::ReadOnly, &caller(11, true))
        .await
        .unwrap();
    assert_eq!(source, Source::Ttp);
}

#[tokio::test]
async fn changed_pcrs_get_a_clear_refusal_and_the_lease_is_given_back() {
    let agent = agent();
    agent.ttp.state().grants.insert(D1, Access::ReadWrite);
    agent.tpm.policy_failed.store(true, Ordering::SeqCst);
    let status = get(&agent, D1, Mode::ReadWrite, &caller(11, true))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status
            .message()
            .contains("the TPM refused: PCRs changed since enrollment"),
        "{status:?}"
    );
    assert_eq!(agent.ttp.state().released.len(), 1);
    assert!(agent.table().is_empty());
}

#[tokio::test]
async fn a_malformed_grant_is_refused_and_given_back() {
    let agent = agent();
    agent.ttp.state().grants.insert(D1, Access::ReadOnly);
    agent.ttp.state().bad_grant = true;
    let status = get(&agent, D1, Mode::ReadOnly, &caller(11, true))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::Internal);
    assert!(status.message().contains("20 bytes"), "{status:?}");
    assert_eq!(agent.ttp.state().released.len(), 1);
}

#[tokio::test]
async fn refusals_are_explained_by_the_hosts_enrollment() {
    let agent = agent();
    agent.ttp.state().grants.insert(D1, Access::ReadWrite);
    agent.ttp.state().host_state = HostState::Pending;
    let status = get(&agent, D1, Mode::Best, &caller(11, true))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "this host (ward-db-1) is enrolled but not approved yet: run \
         `domfs-ttp hosts approve ward-db-1` on the TTP"
    );
    agent.ttp.state().host_state = HostState::Revoked;
    let status = get(&agent, D1, Mode::ReadOnly, &caller(11, true))
        .await
        .err()
        .unwrap();
    assert!(status.message().contains("revoked"), "{status:?}");
    // An approved host not in the list sees the TTP's own reason.
    agent.ttp.state().host_state = HostState::Approved;
    let status = get(&agent, D2, Mode::ReadOnly, &caller(11, true))
        .await
        .err()
        .unwrap();
    assert_eq!(
        status.message(),
        "the TTP refused: host not in the access list"
    );
}

#[tokio::test]
async fn an_unreachable_ttp_without_a_cached_key_fails_clearly() {
    let agent = agent();
    agent.ttp.state().down = true;
    let status = get(&agent, D1, Mode::ReadOnly, &caller(11, true))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status
            .message()
            .starts_with("the TTP at https://ttp.test:7000 cannot be reached"),
        "{status:?}"
    );
    assert!(status.message().contains("no key for domain 0101"));
}

#[tokio::test]
async fn bad_requests_are_refused_before_anything_else() {
    let agent = agent();
    let who = caller(11, true);
    let cases = [
        (b"garbage".to_vec(), vec![0; 64], Mode::ReadOnly),
        (header(D1), vec![0; 63], Mode::ReadOnly),
        (vec![0; MAX_SIGNED_MESSAGE + 1], vec![0; 64], Mode::ReadOnly),
        (header(D1), vec![0; 64], Mode::Unspecified),
    ];
    for (message, signature, mode) in cases {
        let status = agent
            .get_domain_key(message, signature, mode, &who)
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    assert_eq!(agent.ttp.get_calls.load(Ordering::SeqCst), 0);
}
