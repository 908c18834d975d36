//! Checkpoints (volume anchors): only the read-write lease holder makes them, they never go
//! backwards, they survive a restart, and every grant carries the newest one.

mod common;

use common::*;
use domfs_proto::ttp::ttp_client::TtpClient;
use domfs_proto::ttp::{
    Checkpoint, CheckpointRequest, GetDomainKeyResponse, Mode, ReleaseLeaseRequest,
};
use tonic::Code;
use tonic::transport::Channel;

/// A checkpoint as a superblock would give it.
fn state(sequence: u64, root: u8, head: u8) -> Checkpoint {
    Checkpoint {
        sequence,
        generation: sequence * 10,
        root: vec![root; 48],
        audit_sequence: sequence * 2,
        audit_head: vec![head; 32],
        ..Checkpoint::default()
    }
}

async fn anchor(
    client: &mut TtpClient<Channel>,
    domain: &Domain,
    lease_id: &[u8],
    checkpoint: Checkpoint,
) -> Result<Checkpoint, tonic::Status> {
    client
        .checkpoint(CheckpointRequest {
            domain_id: domain.id.to_vec(),
            lease_id: lease_id.to_vec(),
            checkpoint: Some(checkpoint),
        })
        .await
        .map(|r| r.into_inner().checkpoint.unwrap_or_default())
}

async fn grant(
    ttp: &Ttp,
    host: &str,
    domain: &Domain,
    mode: Mode,
) -> anyhow::Result<GetDomainKeyResponse> {
    Ok(ttp
        .client(host)
        .await?
        .get_domain_key(domain.ask(mode))
        .await?
        .into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_read_write_holder_checkpoints() -> anyhow::Result<()> {
    let (ttp, alice) = Ttp::with_hosts(&["db1", "db2", "db3"], 300)?;
    let domain = register(
        &ttp,
        &alice,
        domain_id(1),
        &[("db1", RW), ("db2", RO), ("db3", RW)],
    )
    .await?;

    // No checkpoint yet: grants say so.
    let rw = grant(&ttp, "db1", &domain, Mode::ReadWrite).await?;
    assert_eq!(rw.checkpoint, None);
    let ro = grant(&ttp, "db2", &domain, Mode::ReadOnly).await?;
    assert_eq!(ro.checkpoint, None);

    // The read-write holder anchors; the TTP sets the time and the host.
    let mut db1 = ttp.client("db1").await?;
    let anchored = anchor(&mut db1, &domain, &rw.lease_id, state(5, 1, 1)).await?;
    assert_eq!(anchored.sequence, 5);
    assert_eq!(anchored.host, "db1");
    assert!(anchored.time_unix > 0);

    // A read-only holder, another host with the holder's lease id or a made-up one, a
    // manager, and the holder without its lease are all refused.
    let mut db2 = ttp.client("db2").await?;
    let status = refusal(anchor(&mut db2, &domain, &ro.lease_id, state(6, 1, 1)).await);
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("read-only"), "{status:?}");
    let mut db3 = ttp.client("db3").await?;
    assert_eq!(
        code(anchor(&mut db3, &domain, &rw.lease_id, state(6, 1, 1)).await),
        Code::NotFound
    );
    assert_eq!(
        code(anchor(&mut db3, &domain, &[9; 16], state(6, 1, 1)).await),
        Code::NotFound
    );
    assert_eq!(
        code(anchor(&mut db1, &domain, &[9; 16], state(6, 1, 1)).await),
        Code::NotFound
    );
    assert_eq!(
        code(anchor(&mut db1, &domain, &[], state(6, 1, 1)).await),
        Code::InvalidArgument
    );
    let mut manager = ttp.client("alice").await?;
    assert_eq!(
        code(anchor(&mut manager, &domain, &rw.lease_id, state(6, 1, 1)).await),
        Code::PermissionDenied
    );

    // Malformed checkpoints.
    let mut short_root = state(6, 1, 1);
    short_root.root.pop();
    let mut long_head = state(6, 1, 1);
    long_head.audit_head.push(0);
    for bad in [short_root, long_head] {
        assert_eq!(
            code(anchor(&mut db1, &domain, &rw.lease_id, bad).await),
            Code::InvalidArgument
        );
    }
    let missing = db1
        .checkpoint(CheckpointRequest {
            domain_id: domain.id.to_vec(),
            lease_id: rw.lease_id.clone(),
            checkpoint: None,
        })
        .await;
    assert_eq!(code(missing), Code::InvalidArgument);
    // No audit entry yet: an empty head is fine.
    let mut fresh = state(6, 1, 1);
    fresh.audit_head.clear();
    fresh.audit_sequence = 0;
    anchor(&mut db1, &domain, &rw.lease_id, fresh).await?;

    // Every refusal was logged, and the first checkpoint too.
    let log = ttp.log();
    let id = hex::encode(domain.id);
    assert!(
        log.contains(&format!(
            "GRANTED op=checkpoint host=db1 domain={id} mode=rw version=- reason=\"sequence 5 \
             (generation 50, audit 10) anchored, the domain's first checkpoint\""
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "REFUSED op=checkpoint host=db2 domain={id} mode=ro version=- code=PERMISSION_DENIED"
        )),
        "{log}"
    );
    assert!(log.contains("REFUSED op=checkpoint host=db3"), "{log}");
    assert!(log.contains("REFUSED op=checkpoint host=alice"), "{log}");

    // Once released, the lease anchors nothing.
    db1.release_lease(ReleaseLeaseRequest {
        lease_id: rw.lease_id.clone(),
        domain_id: domain.id.to_vec(),
    })
    .await?;
    assert_eq!(
        code(anchor(&mut db1, &domain, &rw.lease_id, state(7, 1, 1)).await),
        Code::NotFound
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_never_go_back_and_survive_a_restart() -> anyhow::Result<()> {
    let (mut ttp, alice) = Ttp::with_hosts(&["db1", "db2"], 300)?;
    let domain = register(&ttp, &alice, domain_id(2), &[("db1", RW), ("db2", RO)]).await?;
    let other = register(&ttp, &alice, domain_id(3), &[("db1", RW)]).await?;
    let rw = grant(&ttp, "db1", &domain, Mode::ReadWrite).await?;
    let mut db1 = ttp.client("db1").await?;
    let first = anchor(&mut db1, &domain, &rw.lease_id, state(5, 1, 1)).await?;

    // Lower: refused, with the words the mount daemon shows.
    let status = refusal(anchor(&mut db1, &domain, &rw.lease_id, state(4, 1, 1)).await);
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().starts_with(
            "checkpoint would go back from sequence 5 to 4: rollback or a forked volume"
        ),
        "{status:?}"
    );
    // Equal with another root, another head, another generation: a fork.
    let mut other_generation = state(5, 1, 1);
    other_generation.generation += 1;
    for forked in [state(5, 2, 1), state(5, 1, 2), other_generation] {
        let status = refusal(anchor(&mut db1, &domain, &rw.lease_id, forked).await);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(
            status.message().contains("rollback or a forked volume"),
            "{status:?}"
        );
    }
    // Equal and identical: a retry, accepted, the first anchoring kept.
    let again = anchor(&mut db1, &domain, &rw.lease_id, state(5, 1, 1)).await?;
    assert_eq!(again, first);
    // Higher: accepted.
    let newer = anchor(&mut db1, &domain, &rw.lease_id, state(9, 3, 3)).await?;
    assert_eq!(newer.sequence, 9);

    // Grants carry it, read-only ones too; the other domain has none.
    let ro = grant(&ttp, "db2", &domain, Mode::ReadOnly).await?;
    assert_eq!(ro.checkpoint.as_ref().map(|c| c.sequence), Some(9));
    assert_eq!(
        ro.checkpoint.as_ref().map(|c| c.root.clone()),
        Some(vec![3; 48])
    );
    assert_eq!(
        grant(&ttp, "db1", &other, Mode::ReadWrite)
            .await?
            .checkpoint,
        None
    );
    let log = ttp.log();
    assert!(
        log.contains(&format!(
            "REFUSED op=checkpoint host=db1 domain={} mode=rw version=- code=FAILED_PRECONDITION \
             reason=\"checkpoint would go back from sequence 5 to 4: rollback or a forked volume",
            hex::encode(domain.id)
        )),
        "{log}"
    );
    assert!(
        log.contains("reason=\"sequence 5 (generation 50, audit 10) anchored already (a repeat)\"")
    );

    // Listed by the operator.
    let listing: serde_json::Value =
        serde_json::from_str(&ttp.admin(&["domains", "list", "--json"])?)?;
    let listed = listing
        .as_array()
        .and_then(|domains| {
            domains
                .iter()
                .find(|d| d["domain_id"] == hex::encode(domain.id))
        })
        .cloned()
        .unwrap_or_default();
    assert_eq!(listed["checkpoint"]["sequence"], 9);
    assert_eq!(listed["checkpoint"]["host"], "db1");
    assert_eq!(listed["checkpoint"]["root"], hex::encode([3u8; 48]));
    assert!(listed["checkpoint"]["time_unix"].as_u64().unwrap_or(0) > 0);
    let text = ttp.admin(&["domains", "list"])?;
    assert!(
        text.lines().next().unwrap_or("").contains("CHECKPOINT"),
        "{text}"
    );
    assert!(text.contains(" 9 at 20"), "{text}");

    // After a restart (the read-write lease is durable) the anchor is the same and still
    // does not go back.
    ttp.stop()?;
    let offline = ttp.admin(&["domains", "list", "--json"])?;
    assert!(offline.contains("\"sequence\": 9"), "{offline}");
    ttp.start(300)?;
    let mut db1 = ttp.client("db1").await?;
    assert_eq!(
        code(anchor(&mut db1, &domain, &rw.lease_id, state(8, 1, 1)).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        anchor(&mut db1, &domain, &rw.lease_id, state(9, 3, 3)).await?,
        newer
    );
    let ro = grant(&ttp, "db2", &domain, Mode::ReadOnly).await?;
    assert_eq!(ro.checkpoint, Some(newer));

    // Backups hold the checkpoints.
    let restored = ttp.restored_copy([7u8; 32])?;
    let listing = ok(&["domains", "list", "--json", "--state", path(&restored)])?;
    assert!(listing.contains("\"sequence\": 9"), "{listing}");
    Ok(())
}
