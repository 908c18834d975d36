//! Key release: what is granted, what is refused and why, and the read-write lease.

mod common;

use std::time::Duration;

use common::*;
use domfs_proto::ttp::ttp_client::TtpClient;
use domfs_proto::ttp::{
    GetDomainKeyResponse, Mode, RegisterDomainRequest, ReleaseLeaseRequest, RenewLeaseRequest,
    UpdateAccessListRequest,
};
use ed25519_dalek::SigningKey;
use tonic::Code;
use tonic::transport::Channel;

async fn update(
    ttp: &Ttp,
    manager: &SigningKey,
    id: [u8; 16],
    version: u64,
    grants: &[(&str, domfs_proto::acl::Access)],
) -> anyhow::Result<Domain> {
    let (message, signature) = signed(manager, id, version, b"ward 7", grants)?;
    ttp.client("alice")
        .await?
        .update_access_list(UpdateAccessListRequest {
            signed_message: message.clone(),
            signature: signature.clone(),
        })
        .await?;
    Ok(Domain {
        id,
        message,
        signature,
    })
}

async fn renew(
    client: &mut TtpClient<Channel>,
    grant: &GetDomainKeyResponse,
    id: [u8; 16],
) -> Result<u32, tonic::Status> {
    client
        .renew_lease(RenewLeaseRequest {
            lease_id: grant.lease_id.clone(),
            domain_id: id.to_vec(),
        })
        .await
        .map(|r| r.into_inner().lease_seconds)
}

async fn release(
    client: &mut TtpClient<Channel>,
    grant: &GetDomainKeyResponse,
    id: [u8; 16],
) -> anyhow::Result<()> {
    client
        .release_lease(ReleaseLeaseRequest {
            lease_id: grant.lease_id.clone(),
            domain_id: id.to_vec(),
        })
        .await?;
    Ok(())
}

/// Needs the real `wrap::wrap_for_host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_unwrap_to_one_domain_key_and_rw_gets_the_writer_seed() -> anyhow::Result<()> {
    let mut ttp = Ttp::new()?;
    let alice = ttp.manager("alice")?;
    let db1 = ttp.host("db1", true)?;
    let db2 = ttp.host("db2", true)?;
    ttp.start(300)?;
    let domain = register(&ttp, &alice, domain_id(1), &[("db1", RW), ("db2", RO)]).await?;

    let rw = ttp
        .client("db1")
        .await?
        .get_domain_key(domain.ask(Mode::ReadWrite))
        .await?
        .into_inner();
    assert_eq!(rw.granted_mode, Mode::ReadWrite as i32);
    assert_eq!(rw.lease_seconds, 300);
    assert_eq!(rw.access_list_version, 1);
    assert_eq!(rw.lease_id.len(), 16);
    let keys = db1.unwrap(&rw.wrapped_keys)?;
    assert_eq!(keys.len(), 64);
    let seed: [u8; 32] = keys[32..].try_into()?;
    assert_eq!(
        SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes()
            .as_slice(),
        rw.writer_public_key.as_slice()
    );

    let ro = ttp
        .client("db2")
        .await?
        .get_domain_key(domain.ask(Mode::ReadOnly))
        .await?
        .into_inner();
    assert_eq!(ro.granted_mode, Mode::ReadOnly as i32);
    let key = db2.unwrap(&ro.wrapped_keys)?;
    assert_eq!(key.len(), 32, "a read-only grant carries no writer seed");
    assert_eq!(key.as_slice(), &keys[..32], "one domain, one key");
    assert_eq!(ro.writer_public_key, rw.writer_public_key);
    // The key is wrapped to db1's TPM key, not db2's.
    assert!(db2.unwrap(&rw.wrapped_keys).is_err());

    // A read-write host may also ask for read-only, any number of times.
    let again = ttp
        .client("db1")
        .await?
        .get_domain_key(domain.ask(Mode::ReadOnly))
        .await?
        .into_inner();
    assert_eq!(db1.unwrap(&again.wrapped_keys)?, key);
    let log = ttp.log();
    assert!(log.contains(&format!(
        "GRANTED op=get-domain-key host=db1 domain={} mode=rw version=1",
        hex::encode(domain.id)
    )));
    // No key, seed or K_TTP in the log or on stderr.
    let stderr = std::fs::read_to_string(ttp.dir.path().join("serve.err"))?;
    let master = std::fs::read(ttp.state.join("master.key"))?;
    for secret in [&keys[..32], &keys[32..], master.as_slice()] {
        assert!(!log.contains(&hex::encode(secret)));
        assert!(!stderr.contains(&hex::encode(secret)));
    }
    assert!(
        stderr.contains("GRANTED op=get-domain-key host=db2"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_refusals() -> anyhow::Result<()> {
    let mut ttp = Ttp::new()?;
    let alice = ttp.manager("alice")?;
    ttp.host("reader", true)?;
    ttp.host("outsider", true)?;
    ttp.host("waiting", false)?;
    ttp.host("gone", true)?;
    ttp.start(300)?;
    let grants = [("reader", RO), ("waiting", RW), ("gone", RW)];
    let v1 = register(&ttp, &alice, domain_id(1), &grants).await?;
    let v2 = update(&ttp, &alice, domain_id(1), 2, &grants).await?;
    ttp.admin(&["hosts", "revoke", "gone"])?;

    let expect = |status: tonic::Status, code: Code, text: &str| {
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(text), "{status:?} lacks {text:?}");
    };
    let mut outsider = ttp.client("outsider").await?;
    expect(
        refusal(outsider.get_domain_key(v2.ask(Mode::ReadOnly)).await),
        Code::PermissionDenied,
        "outsider is not in access list version 2",
    );
    let mut reader = ttp.client("reader").await?;
    expect(
        refusal(reader.get_domain_key(v2.ask(Mode::ReadWrite)).await),
        Code::PermissionDenied,
        "only ro access",
    );
    // The header rolled back to the older list.
    expect(
        refusal(reader.get_domain_key(v1.ask(Mode::ReadOnly)).await),
        Code::PermissionDenied,
        "access list version 1 is older than the registered version 2",
    );
    // A list the manager signed but never registered.
    let (m3, s3) = signed(&alice, domain_id(1), 3, b"ward 7", &grants)?;
    let v3 = Domain {
        id: domain_id(1),
        message: m3,
        signature: s3,
    };
    expect(
        refusal(reader.get_domain_key(v3.ask(Mode::ReadOnly)).await),
        Code::PermissionDenied,
        "never registered",
    );
    // An edited header.
    let mut edited = v2.ask(Mode::ReadOnly);
    let at = edited.signed_message.len() - 30;
    edited.signed_message[at] ^= 1;
    expect(
        refusal(reader.get_domain_key(edited).await),
        Code::PermissionDenied,
        "signature does not verify",
    );
    expect(
        refusal(
            ttp.client("waiting")
                .await?
                .get_domain_key(v2.ask(Mode::ReadOnly))
                .await,
        ),
        Code::PermissionDenied,
        "not approved",
    );
    expect(
        refusal(
            ttp.client("gone")
                .await?
                .get_domain_key(v2.ask(Mode::ReadOnly))
                .await,
        ),
        Code::PermissionDenied,
        "gone is revoked",
    );
    // Approving a revoked host is refused: revocation is final.
    let err = ttp.admin_fails(&["hosts", "approve", "gone"])?;
    assert!(err.contains("revoked"), "{err}");

    ttp.admin(&["domains", "destroy", &hex::encode(domain_id(1))])?;
    expect(
        refusal(reader.get_domain_key(v2.ask(Mode::ReadOnly)).await),
        Code::PermissionDenied,
        "destroyed",
    );
    // The id is never reused.
    let (m, s) = signed(&alice, domain_id(1), 1, b"ward 7", &grants)?;
    let status = refusal(
        ttp.client("alice")
            .await?
            .register_domain(RegisterDomainRequest {
                signed_message: m,
                signature: s,
                manager_key: alice.verifying_key().to_bytes().to_vec(),
            })
            .await,
    );
    assert_eq!(status.code(), Code::AlreadyExists);

    let log = ttp.log();
    let domain = hex::encode(domain_id(1));
    for line in [
        format!(
            "REFUSED op=get-domain-key host=outsider domain={domain} mode=ro version=2 code=PERMISSION_DENIED reason=\"host outsider is not in access list version 2\""
        ),
        format!(
            "REFUSED op=get-domain-key host=reader domain={domain} mode=rw version=2 code=PERMISSION_DENIED"
        ),
        format!(
            "REFUSED op=get-domain-key host=reader domain={domain} mode=ro version=1 code=PERMISSION_DENIED reason=\"access list version 1 is older than the registered version 2\""
        ),
        format!("REFUSED op=get-domain-key host=gone domain={domain} mode=ro version=2"),
        format!("REFUSED op=get-domain-key host=waiting domain={domain} mode=ro version=2"),
        "GRANTED op=admin-revoke-host host=gone".to_string(),
    ] {
        assert!(log.contains(&line), "log lacks {line:?}:\n{log}");
    }
    Ok(())
}

/// Needs the real `wrap::wrap_for_host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_read_write_lease_per_domain() -> anyhow::Result<()> {
    let (ttp, alice) = Ttp::with_hosts(&["db1", "db2"], 2)?;
    let domain = register(&ttp, &alice, domain_id(1), &[("db1", RW), ("db2", RW)]).await?;
    let mut db1 = ttp.client("db1").await?;
    let mut db2 = ttp.client("db2").await?;

    let first = db1
        .get_domain_key(domain.ask(Mode::ReadWrite))
        .await?
        .into_inner();
    let status = refusal(db2.get_domain_key(domain.ask(Mode::ReadWrite)).await);
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status
            .message()
            .contains("host db1 holds the read-write lease"),
        "{status:?}"
    );
    // The same host does not get a second one either.
    assert_eq!(
        code(db1.get_domain_key(domain.ask(Mode::ReadWrite)).await),
        Code::FailedPrecondition
    );
    // Reading goes on meanwhile.
    db2.get_domain_key(domain.ask(Mode::ReadOnly)).await?;

    // Released: db2 may take it at once; db1's old lease is gone.
    release(&mut db1, &first, domain.id).await?;
    let second = db2
        .get_domain_key(domain.ask(Mode::ReadWrite))
        .await?
        .into_inner();
    assert_eq!(
        code(renew(&mut db1, &first, domain.id).await),
        Code::NotFound
    );
    // Another host cannot renew or release db2's lease.
    assert_eq!(
        code(renew(&mut db1, &second, domain.id).await),
        Code::NotFound
    );
    release(&mut db1, &second, domain.id).await?;
    assert_eq!(
        code(db1.get_domain_key(domain.ask(Mode::ReadWrite)).await),
        Code::FailedPrecondition
    );
    // Expired (the lease is 2 s): free again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        code(renew(&mut db2, &second, domain.id).await),
        Code::NotFound
    );
    db1.get_domain_key(domain.ask(Mode::ReadWrite)).await?;
    assert!(ttp.log().contains(&format!(
        "REFUSED op=get-domain-key host=db2 domain={} mode=rw version=1 code=FAILED_PRECONDITION",
        hex::encode(domain.id)
    )));
    Ok(())
}

/// Needs the real `wrap::wrap_for_host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_checks_everything_again() -> anyhow::Result<()> {
    let (ttp, alice) = Ttp::with_hosts(&["db1", "db2", "db3"], 300)?;
    let domain = register(
        &ttp,
        &alice,
        domain_id(1),
        &[("db1", RO), ("db2", RW), ("db3", RW)],
    )
    .await?;
    let mut db1 = ttp.client("db1").await?;
    let mut db2 = ttp.client("db2").await?;
    let mut db3 = ttp.client("db3").await?;

    let ro = db1
        .get_domain_key(domain.ask(Mode::ReadOnly))
        .await?
        .into_inner();
    let rw = db2
        .get_domain_key(domain.ask(Mode::ReadWrite))
        .await?
        .into_inner();
    assert_eq!(renew(&mut db1, &ro, domain.id).await?, 300);
    assert_eq!(renew(&mut db2, &rw, domain.id).await?, 300);
    // Unknown lease, wrong domain.
    let mut other = ro.clone();
    other.lease_id = vec![9; 16];
    assert_eq!(
        code(renew(&mut db1, &other, domain.id).await),
        Code::NotFound
    );
    assert_eq!(
        code(renew(&mut db1, &ro, domain_id(2)).await),
        Code::NotFound
    );

    // Revoked: the read-only lease is not renewed.
    ttp.admin(&["hosts", "revoke", "db1"])?;
    let status = refusal(renew(&mut db1, &ro, domain.id).await);
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("db1 is revoked"), "{status:?}");

    // A new list gives db2 only read access: its read-write lease is not renewed, and
    // the domain is free for db3.
    update(&ttp, &alice, domain.id, 2, &[("db2", RO), ("db3", RW)]).await?;
    let status = refusal(renew(&mut db2, &rw, domain.id).await);
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("only ro access"), "{status:?}");
    let newest = update(&ttp, &alice, domain.id, 3, &[("db2", RO), ("db3", RW)]).await?;
    let db3_lease = db3
        .get_domain_key(newest.ask(Mode::ReadWrite))
        .await?
        .into_inner();
    assert_eq!(db3_lease.access_list_version, 3);

    // Destroyed: nothing is renewed.
    ttp.admin(&["domains", "destroy", &hex::encode(domain.id)])?;
    let status = refusal(renew(&mut db3, &db3_lease, domain.id).await);
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("destroyed"), "{status:?}");
    // A refused renewal ends the lease.
    assert_eq!(
        code(renew(&mut db3, &db3_lease, domain.id).await),
        Code::NotFound
    );
    assert!(ttp.log().contains("REFUSED op=renew-lease host=db1"));
    Ok(())
}

/// Needs the real `wrap::wrap_for_host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_write_lease_survives_a_restart() -> anyhow::Result<()> {
    let (mut ttp, alice) = Ttp::with_hosts(&["db1", "db2"], 300)?;
    let domain = register(&ttp, &alice, domain_id(1), &[("db1", RW), ("db2", RW)]).await?;
    let rw = ttp
        .client("db1")
        .await?
        .get_domain_key(domain.ask(Mode::ReadWrite))
        .await?
        .into_inner();
    let ro = ttp
        .client("db2")
        .await?
        .get_domain_key(domain.ask(Mode::ReadOnly))
        .await?
        .into_inner();
    ttp.stop()?;
    assert!(
        !ttp.state.join("admin.sock").exists(),
        "the socket is removed at exit"
    );
    ttp.start(300)?;
    let mut db1 = ttp.client("db1").await?;
    let mut db2 = ttp.client("db2").await?;
    assert_eq!(
        code(db2.get_domain_key(domain.ask(Mode::ReadWrite)).await),
        Code::FailedPrecondition
    );
    renew(&mut db1, &rw, domain.id).await?;
    // Read-only leases live in memory: after a restart the host asks again.
    assert_eq!(code(renew(&mut db2, &ro, domain.id).await), Code::NotFound);
    Ok(())
}
