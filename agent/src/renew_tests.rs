//! The renewal task, in real time with one-second leases, against the fake TPM and TTP.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::Status;

use domfs_proto::acl::Access;
use domfs_proto::agent::watch_event::Kind;
use domfs_proto::agent::{Mode, WatchEvent};

use crate::agent::{Agent, Source};
use crate::fakes::*;
use crate::peer::ProcessRef;

async fn next_event(rx: &mut mpsc::Receiver<Result<WatchEvent, Status>>) -> Option<WatchEvent> {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no watch event within 10 s")
        .map(|e| e.unwrap())
}

async fn leased(
    grace: Duration,
    renewals: Renewals,
) -> (
    Arc<Agent<FakeTpm, FakeTtp>>,
    Vec<u8>,
    mpsc::Receiver<Result<WatchEvent, Status>>,
) {
    let ttp = FakeTtp::new();
    ttp.state().grants.insert(D1, Access::ReadOnly);
    ttp.state().lease_seconds = 1;
    ttp.state().renewals = renewals;
    let agent = agent_with(ttp, grace);
    let (grant, _) = get(&agent, D1, Mode::ReadOnly, &caller(11, true))
        .await
        .unwrap();
    let rx = agent
        .table()
        .watch(
            &grant.lease_id,
            Some(ProcessRef {
                pid: 11,
                start_time: 1,
            }),
        )
        .unwrap();
    tokio::spawn(super::run(agent.clone()));
    (agent, grant.lease_id, rx)
}

#[tokio::test]
async fn renewal_extends_the_lease() {
    let (agent, _, mut rx) = leased(Duration::from_secs(60), Renewals::Grant(1)).await;
    for _ in 0..2 {
        assert_eq!(next_event(&mut rx).await.unwrap().kind(), Kind::Renewed);
    }
    assert!(agent.ttp.renew_calls.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn a_refused_renewal_revokes_the_lease() {
    let (agent, _, mut rx) = leased(Duration::from_secs(60), Renewals::Refuse).await;
    let event = next_event(&mut rx).await.unwrap();
    assert_eq!(event.kind(), Kind::LeaseRevoked);
    assert!(event.message.contains("host revoked"), "{event:?}");
    assert!(next_event(&mut rx).await.is_none(), "the stream ends");
    assert!(agent.table().is_empty());
}

#[tokio::test]
async fn an_outage_runs_into_the_grace_period_and_then_ends_the_lease() {
    let (agent, _, mut rx) = leased(Duration::from_secs(2), Renewals::Down).await;
    let event = next_event(&mut rx).await.unwrap();
    assert_eq!(event.kind(), Kind::TtpUnreachable);
    assert!(event.grace_until_unix > 0);
    // The cached key is served during the outage.
    let (_, source) = get(&agent, D1, Mode::ReadOnly, &caller(13, true))
        .await
        .unwrap();
    assert_eq!(source, Source::Cache);
    assert_eq!(
        next_event(&mut rx).await.unwrap().kind(),
        Kind::GraceExpired
    );
    assert!(next_event(&mut rx).await.is_none());
    assert!(agent.table().is_empty());
}

#[tokio::test]
async fn the_ttp_coming_back_ends_the_outage() {
    let (agent, _, mut rx) = leased(Duration::from_secs(60), Renewals::Down).await;
    assert_eq!(
        next_event(&mut rx).await.unwrap().kind(),
        Kind::TtpUnreachable
    );
    agent.ttp.state().renewals = Renewals::Grant(1);
    let event = next_event(&mut rx).await.unwrap();
    assert_eq!(event.kind(), Kind::Renewed);
    assert_eq!(event.grace_until_unix, 0);
}

#[tokio::test]
async fn a_lease_that_ran_out_in_an_outage_is_granted_again() {
    let (agent, id, mut rx) = leased(Duration::from_secs(60), Renewals::Down).await;
    assert_eq!(
        next_event(&mut rx).await.unwrap().kind(),
        Kind::TtpUnreachable
    );
    // Wait until the lease has run out, then the TTP answers but has forgotten it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    agent.ttp.state().renewals = Renewals::Forgotten;
    let event = next_event(&mut rx).await.unwrap();
    assert_eq!(event.kind(), Kind::Renewed, "{event:?}");
    assert!(event.message.contains("granted the key again"));
    assert_eq!(agent.ttp.get_calls.load(Ordering::SeqCst), 2);
    // Callers keep the lease id they were given.
    let (grant, source) = get(&agent, D1, Mode::ReadOnly, &caller(13, true))
        .await
        .unwrap();
    assert_eq!((grant.lease_id, source), (id, Source::Cache));
}

#[tokio::test]
async fn an_unused_lease_is_released_instead_of_renewed() {
    let ttp = FakeTtp::new();
    ttp.state().grants.insert(D1, Access::ReadWrite);
    ttp.state().lease_seconds = 1;
    let agent = agent_with(ttp, Duration::from_secs(60));
    // The daemon that took the key is gone and nobody watches the lease.
    let (grant, _) = get(&agent, D1, Mode::ReadWrite, &caller(12, false))
        .await
        .unwrap();
    tokio::spawn(super::run(agent.clone()));
    for _ in 0..100 {
        if !agent.ttp.state().released.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(agent.ttp.state().released, vec![grant.lease_id]);
    assert!(agent.table().is_empty());
    assert_eq!(agent.ttp.renew_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_lease_the_ttp_forgot_is_granted_again_or_revoked() {
    // The TTP restarted (it keeps read-only leases in memory): no outage, just NOT_FOUND.
    let (agent, id, mut rx) = leased(Duration::from_secs(60), Renewals::Forgotten).await;
    let event = next_event(&mut rx).await.unwrap();
    assert_eq!(event.kind(), Kind::Renewed, "{event:?}");
    assert_eq!(agent.ttp.get_calls.load(Ordering::SeqCst), 2);
    assert_eq!(agent.table().infos().len(), 1);
    // If the fresh request is refused (here: the host was revoked meanwhile), the lease ends.
    agent.ttp.state().host_state = domfs_proto::ttp::HostState::Revoked;
    let event = next_event(&mut rx).await.unwrap();
    assert_eq!(event.kind(), Kind::LeaseRevoked, "{event:?}");
    assert!(
        event.message.contains("granting it again failed"),
        "{event:?}"
    );
    assert!(next_event(&mut rx).await.is_none());
    assert!(agent.table().is_empty());
    assert!(agent.release_key(&id, &caller(11, true)).await.is_err());
}
