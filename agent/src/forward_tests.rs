//! Checkpoint, AppendAudit and ReadAudit through the agent, against the fake TPM and TTP:
//! lease mapping, the checkpoint in GetDomainKey answers (fresh and cached), bounds, and
//! the TTP's codes passed through (UNAVAILABLE when it does not answer).

use std::sync::atomic::Ordering;

use domfs_proto::acl::Access;
use domfs_proto::ttp::Checkpoint;
use domfs_proto::{MAX_AUDIT_ENTRIES, MAX_AUDIT_ENTRY};

use super::*;
use crate::fakes::*;

fn state(sequence: u64) -> Checkpoint {
    Checkpoint {
        sequence,
        generation: sequence * 10,
        root: vec![sequence as u8; 48],
        audit_sequence: sequence,
        audit_head: vec![1; 32],
        ..Checkpoint::default()
    }
}

/// The code of a call that must fail.
fn code<T>(result: Result<T, Status>) -> Code {
    match result {
        Ok(_) => panic!("expected a refusal"),
        Err(status) => status.code(),
    }
}

fn sequence_of(grant: &Grant) -> Option<u64> {
    grant.checkpoint.as_ref().map(|c| c.sequence)
}

#[tokio::test]
async fn a_checkpoint_goes_to_the_ttp_under_the_ttp_lease_and_domain() {
    let agent = agent();
    agent.ttp.state().grants.insert(D1, Access::ReadWrite);
    let (grant, _) = get(&agent, D1, Mode::ReadWrite, &caller(11, true))
        .await
        .unwrap();
    assert_eq!(grant.checkpoint, None);

    let (anchored, domain) = agent
        .checkpoint(&grant.lease_id, Some(state(3)))
        .await
        .unwrap();
    assert_eq!(domain, D1);
    assert_eq!((anchored.sequence, anchored.host.as_str()), (3, HOST));
    assert_eq!(anchored.time_unix, 1234, "the TTP's copy, not the request");
    assert_eq!(
        agent.ttp.state().forwarded,
        vec![(grant.lease_id.clone(), D1.to_vec())]
    );
    assert_eq!(
        agent.ttp.state().checkpoints.get(&D1).map(|c| c.sequence),
        Some(3)
    );

    // The TTP's refusal comes back as it is.
    let status = agent
        .checkpoint(&grant.lease_id, Some(state(2)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status
            .message()
            .starts_with("checkpoint would go back from sequence 3 to 2"),
        "{status:?}"
    );
}

#[tokio::test]
async fn get_domain_key_answers_carry_the_checkpoint_fresh_and_cached() {
    let agent = agent();
    agent.ttp.state().grants.insert(D1, Access::ReadWrite);
    agent.ttp.state().checkpoints.insert(D1, state(4));

    // Fresh from the TTP.
    let (ro, source) = get(&agent, D1, Mode::ReadOnly, &caller(11, true))
        .await
        .unwrap();
    assert_eq!((source, sequence_of(&ro)), (Source::Ttp, Some(4)));
    let (rw, _) = get(&agent, D1, Mode::ReadWrite, &caller(13, true))
        .await
        .unwrap();
    assert_eq!(sequence_of(&rw), Some(4));

    // A checkpoint the TTP accepted reaches every lease of the domain.
    agent
        .checkpoint(&rw.lease_id, Some(state(7)))
        .await
        .unwrap();
    let (cached, source) = get(&agent, D1, Mode::ReadOnly, &caller(15, true))
        .await
        .unwrap();
    assert_eq!((source, sequence_of(&cached)), (Source::Cache, Some(7)));
    assert_eq!(
        cached.checkpoint.as_ref().map(|c| c.root.clone()),
        Some(vec![7; 48])
    );
    assert_eq!(agent.ttp.get_calls.load(Ordering::SeqCst), 2);

    // A refused one changes nothing.
    assert!(
        agent
            .checkpoint(&rw.lease_id, Some(state(5)))
            .await
            .is_err()
    );
    let (cached, _) = get(&agent, D1, Mode::ReadOnly, &caller(17, true))
        .await
        .unwrap();
    assert_eq!(sequence_of(&cached), Some(7));

    // Another domain is not touched.
    agent.ttp.state().grants.insert(D2, Access::ReadOnly);
    let (other, _) = get(&agent, D2, Mode::ReadOnly, &caller(11, true))
        .await
        .unwrap();
    assert_eq!(other.checkpoint, None);
}

#[tokio::test]
async fn an_unreachable_ttp_is_unavailable_and_the_cache_keeps_its_checkpoint() {
    let agent = agent();
    agent.ttp.state().grants.insert(D1, Access::ReadWrite);
    let (rw, _) = get(&agent, D1, Mode::ReadWrite, &caller(11, true))
        .await
        .unwrap();
    agent
        .checkpoint(&rw.lease_id, Some(state(2)))
        .await
        .unwrap();
    agent.ttp.state().down = true;

    let status = agent
        .checkpoint(&rw.lease_id, Some(state(3)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("cannot be reached") && status.message().contains("try again"),
        "{status:?}"
    );
    let status = agent
        .append_audit(&rw.lease_id, vec![b"opened".to_vec()])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let status = agent
        .read_audit(header(D1), vec![0; 64], 0, 0)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);

    // The key still comes from the cache, with the last accepted checkpoint.
    let (cached, source) = get(&agent, D1, Mode::ReadWrite, &caller(11, true))
        .await
        .unwrap();
    assert_eq!((source, sequence_of(&cached)), (Source::Cache, Some(2)));
}

#[tokio::test]
async fn audit_entries_go_under_the_lease_and_come_back() {
    let agent = agent();
    agent.ttp.state().grants.insert(D1, Access::ReadOnly);
    let (ro, _) = get(&agent, D1, Mode::ReadOnly, &caller(11, true))
        .await
        .unwrap();
    let (stored, last, domain) = agent
        .append_audit(&ro.lease_id, vec![b"a".to_vec(), b"b".to_vec()])
        .await
        .unwrap();
    assert_eq!((stored, last, domain), (2, 2, D1));
    agent
        .append_audit(&ro.lease_id, vec![b"c".to_vec()])
        .await
        .unwrap();
    assert_eq!(
        agent.ttp.state().forwarded[0],
        (ro.lease_id.clone(), D1.to_vec())
    );
    let read = agent
        .read_audit(header(D1), vec![0; 64], 1, 0)
        .await
        .unwrap();
    let entries: Vec<&[u8]> = read.entries.iter().map(|e| e.entry.as_slice()).collect();
    assert_eq!(entries, [b"b", b"c"]);
}

#[tokio::test]
async fn a_lease_the_ttp_granted_again_keeps_its_local_id() {
    let agent = agent();
    agent.ttp.state().grants.insert(D1, Access::ReadOnly);
    let (ro, _) = get(&agent, D1, Mode::ReadOnly, &caller(11, true))
        .await
        .unwrap();
    // The TTP restarts and forgets the read-only lease: NOT_FOUND comes back, and the
    // renewal task is asked to look at the lease now.
    agent.ttp.state().leases.clear();
    let status = agent
        .append_audit(&ro.lease_id, vec![b"a".to_vec()])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let (tasks, _) = agent.table().due(now_ms(), &agent.alive);
    let Some(crate::leases::Task::Renew { local_id, lease }) = tasks.into_iter().next() else {
        panic!("no renewal due at once");
    };
    assert_eq!(local_id, ro.lease_id);
    // The renewal asks again (here directly); a checkpoint made meanwhile comes with it.
    agent.ttp.state().checkpoints.insert(D1, state(6));
    agent.reacquire(&local_id, &lease).await.unwrap();
    let new_ttp_lease = agent.table().ttp_lease_of(&ro.lease_id).unwrap().lease_id;
    assert_ne!(new_ttp_lease, ro.lease_id);

    // The daemon's retry under its old id goes out under the new TTP lease.
    agent
        .append_audit(&ro.lease_id, vec![b"a".to_vec()])
        .await
        .unwrap();
    let forwarded = agent.ttp.state().forwarded.clone();
    assert_eq!(forwarded.last(), Some(&(new_ttp_lease, D1.to_vec())));
    let (cached, source) = get(&agent, D1, Mode::ReadOnly, &caller(13, true))
        .await
        .unwrap();
    assert_eq!((source, sequence_of(&cached)), (Source::Cache, Some(6)));
}

#[tokio::test]
async fn bad_requests_are_refused_before_the_ttp_is_asked() {
    let agent = agent();
    agent.ttp.state().grants.insert(D1, Access::ReadOnly);
    let (ro, _) = get(&agent, D1, Mode::ReadOnly, &caller(11, true))
        .await
        .unwrap();

    // Checkpoint: a read-only lease, an unknown one, none, a malformed checkpoint.
    assert_eq!(
        code(agent.checkpoint(&ro.lease_id, Some(state(1))).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(agent.checkpoint(&[9; 16], Some(state(1))).await),
        Code::NotFound
    );
    assert_eq!(
        code(agent.checkpoint(&[], Some(state(1))).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(agent.checkpoint(&ro.lease_id, None).await),
        Code::InvalidArgument
    );
    let mut short = state(1);
    short.root.truncate(47);
    assert_eq!(
        code(agent.checkpoint(&ro.lease_id, Some(short)).await),
        Code::InvalidArgument
    );

    // AppendAudit: too many, too big, empty, unknown lease.
    for entries in [
        vec![vec![1]; MAX_AUDIT_ENTRIES + 1],
        vec![vec![1; MAX_AUDIT_ENTRY + 1]],
        vec![Vec::new()],
        vec![vec![1; MAX_AUDIT_ENTRY]; 13],
    ] {
        assert_eq!(
            code(agent.append_audit(&ro.lease_id, entries).await),
            Code::InvalidArgument
        );
    }
    assert_eq!(
        code(agent.append_audit(&[9; 16], vec![b"a".to_vec()]).await),
        Code::NotFound
    );

    // ReadAudit: a signature of the wrong size, an absurd limit.
    assert_eq!(
        code(agent.read_audit(header(D1), vec![0; 63], 0, 0).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            agent
                .read_audit(header(D1), vec![0; 64], 0, MAX_AUDIT_READ + 1)
                .await
        ),
        Code::InvalidArgument
    );
    assert!(agent.ttp.state().forwarded.is_empty());
}
