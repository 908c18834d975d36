//! Domain registration and access-list updates.

mod common;

use common::*;
use domfs_proto::ttp::{RegisterDomainRequest, UpdateAccessListRequest};
use tonic::Code;

fn register(
    message: &[u8],
    signature: &[u8],
    key: &ed25519_dalek::SigningKey,
) -> RegisterDomainRequest {
    RegisterDomainRequest {
        signed_message: message.to_vec(),
        signature: signature.to_vec(),
        manager_key: key.verifying_key().to_bytes().to_vec(),
    }
}

fn update(message: &[u8], signature: &[u8]) -> UpdateAccessListRequest {
    UpdateAccessListRequest {
        signed_message: message.to_vec(),
        signature: signature.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_then_update_with_the_pinned_key_only() -> anyhow::Result<()> {
    let mut ttp = Ttp::new()?;
    let alice = ttp.manager("alice")?;
    let mallory = ttp.manager("mallory")?;
    ttp.start(300)?;
    let mut client = ttp.client("alice").await?;
    let id = domain_id(1);

    let (m1, s1) = signed(&alice, id, 1, b"ward 7", &[("db1", RW)])?;
    let answer = client
        .register_domain(register(&m1, &s1, &alice))
        .await?
        .into_inner();
    assert_eq!(answer.domain_id, hex::encode(id));
    // A retry of the same registration is answered the same way.
    client.register_domain(register(&m1, &s1, &alice)).await?;
    // Anything else under that id is not.
    let (other, other_sig) = signed(&mallory, id, 1, b"ward 7", &[("evil", RW)])?;
    assert_eq!(
        code(
            client
                .register_domain(register(&other, &other_sig, &mallory))
                .await
        ),
        Code::AlreadyExists
    );

    // Version 2, signed with the pinned key.
    let (m2, s2) = signed(&alice, id, 2, b"ward 7", &[("db1", RW), ("db2", RO)])?;
    assert_eq!(
        client
            .update_access_list(update(&m2, &s2))
            .await?
            .into_inner()
            .version,
        2
    );
    // Equal and older versions are refused.
    let (again, again_sig) = signed(&alice, id, 2, b"ward 7", &[("db3", RW)])?;
    let status = refusal(client.update_access_list(update(&again, &again_sig)).await);
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("not newer"), "{status:?}");
    assert_eq!(
        code(client.update_access_list(update(&m1, &s1)).await),
        Code::PermissionDenied
    );
    // Another added manager's key is not the pinned one.
    let (m3, s3) = signed(&mallory, id, 3, b"ward 7", &[("evil", RW)])?;
    let status = refusal(client.update_access_list(update(&m3, &s3)).await);
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("pinned"), "{status:?}");
    // An edited message no longer matches its signature.
    let (mut m3, s3) = signed(&alice, id, 3, b"ward 7", &[("db1", RW)])?;
    let at = m3.len() - 20;
    m3[at] ^= 0x20;
    assert_eq!(
        code(client.update_access_list(update(&m3, &s3)).await),
        Code::PermissionDenied
    );
    // Metadata is part of the key: it cannot change.
    let (m3, s3) = signed(&alice, id, 3, b"ward 8", &[("db1", RW)])?;
    assert_eq!(
        code(client.update_access_list(update(&m3, &s3)).await),
        Code::InvalidArgument
    );
    // An unknown domain.
    let (m, s) = signed(&alice, domain_id(9), 2, b"x", &[])?;
    assert_eq!(
        code(client.update_access_list(update(&m, &s)).await),
        Code::NotFound
    );

    let listing = ttp.admin(&["domains", "list", "--json"])?;
    let domains: serde_json::Value = serde_json::from_str(&listing)?;
    assert_eq!(domains[0]["domain_id"], hex::encode(id));
    assert_eq!(domains[0]["access_list_version"], 2);
    assert_eq!(domains[0]["manager"], "alice");
    assert_eq!(domains[0]["meta"], "ward 7");
    assert_eq!(
        domains[0]["grants"],
        serde_json::json!(["db1=rw", "db2=ro"])
    );
    let log = ttp.log();
    assert!(log.contains(&format!(
        "GRANTED op=register-domain host=alice domain={} mode=- version=1",
        hex::encode(id)
    )));
    assert!(log.contains(&format!(
        "REFUSED op=update-access-list host=alice domain={} mode=- version=2 \
         code=PERMISSION_DENIED",
        hex::encode(id)
    )));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_needs_an_added_key_and_a_valid_signature() -> anyhow::Result<()> {
    let mut ttp = Ttp::new()?;
    let alice = ttp.manager("alice")?;
    ttp.issue("eve", "manager")?;
    ttp.start(300)?;
    let mut client = ttp.client("eve").await?;
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);

    let (m, s) = signed(&stranger, domain_id(1), 1, b"m", &[("db1", RW)])?;
    let status = refusal(client.register_domain(register(&m, &s, &stranger)).await);
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("managers add"), "{status:?}");

    // Signed by the stranger but claiming alice's key.
    assert_eq!(
        code(client.register_domain(register(&m, &s, &alice)).await),
        Code::PermissionDenied
    );
    // Malformed pieces.
    let (m, s) = signed(&alice, domain_id(1), 1, b"m", &[("db1", RW)])?;
    let mut bad = register(&m, &s, &alice);
    bad.manager_key.truncate(31);
    assert_eq!(
        code(client.register_domain(bad).await),
        Code::InvalidArgument
    );
    let mut bad = register(&m, &s, &alice);
    bad.signature.push(0);
    assert_eq!(
        code(client.register_domain(bad).await),
        Code::InvalidArgument
    );
    let mut bad = register(&m, &s, &alice);
    bad.signed_message.truncate(20);
    assert_eq!(
        code(client.register_domain(bad).await),
        Code::InvalidArgument
    );

    // Any manager certificate may register a message signed with an added key (the key,
    // not the certificate, is the manager's authority).
    client.register_domain(register(&m, &s, &alice)).await?;
    let listing = ttp.admin(&["domains", "list"])?;
    assert!(listing.contains(&hex::encode(domain_id(1))), "{listing}");
    Ok(())
}
