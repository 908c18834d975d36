//! The operator's CLI: init, certificates, admin commands with the server running and
//! stopped, backup and restore.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use domfs_proto::acl::DomainId;
use domfs_proto::ttp::{GetDomainKeyRequest, Mode, RegisterDomainRequest};
use domfs_ttp::registry::{Lookup, Registry};
use domfs_ttp::state::StateDir;

fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0)
}

#[test]
fn init_and_cert_issue() -> anyhow::Result<()> {
    let ttp = Ttp::new()?;
    // Never over an existing state directory.
    let err = fails(&["init", "--state", ttp.state_arg()])?;
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert_eq!(mode_of(&ttp.state), 0o700);
    assert_eq!(mode_of(&ttp.state.join("master.key")), 0o600);
    assert_eq!(std::fs::read(ttp.state.join("master.key"))?.len(), 32);

    ttp.issue("ward-db-1", "host")?;
    assert_eq!(mode_of(&ttp.certs.join("ward-db-1.key")), 0o600);
    assert!(ttp.certs.join("ca.crt").is_file());
    // Not twice without --force; not for names an access list cannot hold.
    assert!(ttp.issue("ward-db-1", "host").is_err());
    for bad in ["-x", "a b", "a/b", "ca"] {
        let err = fails(&[
            "cert",
            "issue",
            "--state",
            ttp.state_arg(),
            "--name",
            bad,
            "--out",
            path(&ttp.certs),
        ])?;
        assert!(!err.is_empty(), "{bad}");
    }
    let err = fails(&[
        "cert",
        "issue",
        "--state",
        ttp.state_arg(),
        "--name",
        "m",
        "--role",
        "admin",
        "--out",
        path(&ttp.certs),
    ])?;
    assert!(err.contains("admin"), "{err}");
    // Without a state directory.
    let err = fails(&[
        "cert",
        "issue",
        "--state",
        "/nonexistent/ttp",
        "--name",
        "x",
        "--out",
        path(&ttp.certs),
    ])?;
    assert!(err.contains("does not exist"), "{err}");
    // --help everywhere.
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["cert", "issue", "--help"],
        vec!["hosts", "approve", "--help"],
        vec!["domains", "destroy", "--help"],
        vec!["restore", "--help"],
    ] {
        ok(&args)?;
    }
    Ok(())
}

/// Every admin command, first on the registry directly, then through the running server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_with_and_without_the_server() -> anyhow::Result<()> {
    let mut ttp = Ttp::new()?;
    let alice = ttp.manager("alice")?;
    ttp.host("db1", false)?;

    let hosts = ttp.admin(&["hosts", "list"])?;
    assert!(
        hosts.contains("db1") && hosts.contains("pending"),
        "{hosts}"
    );
    ttp.admin(&["hosts", "approve", "db1"])?;
    let managers: serde_json::Value =
        serde_json::from_str(&ttp.admin(&["managers", "list", "--json"])?)?;
    assert_eq!(managers[0]["name"], "alice");
    assert_eq!(
        managers[0]["public_key"],
        hex::encode(alice.verifying_key().to_bytes())
    );
    // A key file of 32 raw bytes works too; bad ones and duplicates do not.
    let raw = ttp.dir.path().join("bob.key");
    std::fs::write(
        &raw,
        ed25519_dalek::SigningKey::from_bytes(&[3; 32])
            .verifying_key()
            .to_bytes(),
    )?;
    ttp.admin(&["managers", "add", "bob", path(&raw)])?;
    let err = ttp.admin_fails(&["managers", "add", "bob2", path(&raw)])?;
    assert!(err.contains("already"), "{err}");
    std::fs::write(&raw, "not hex\n")?;
    assert!(
        ttp.admin_fails(&["managers", "add", "carol", path(&raw)])?
            .contains("64 hex")
    );
    let err = ttp.admin_fails(&["hosts", "approve", "nobody"])?;
    assert!(err.contains("nobody"), "{err}");
    let err = ttp.admin_fails(&["domains", "destroy", "xyz"])?;
    assert!(err.contains("not a domain id"), "{err}");

    ttp.start(300)?;
    assert!(ttp.state.join("admin.sock").exists());
    assert_eq!(mode_of(&ttp.state.join("admin.sock")), 0o600);
    // Through the socket now (the registry is locked by the server).
    assert!(Registry::open(&ttp.state).is_err());
    let (message, signature) = signed(&alice, domain_id(5), 1, b"meta", &[("db1", RO)])?;
    ttp.client("alice")
        .await?
        .register_domain(RegisterDomainRequest {
            signed_message: message,
            signature,
            manager_key: alice.verifying_key().to_bytes().to_vec(),
        })
        .await?;
    let domains = ttp.admin(&["domains", "list"])?;
    assert!(domains.contains(&hex::encode(domain_id(5))), "{domains}");
    assert!(
        domains.contains("db1=ro") && domains.contains("live"),
        "{domains}"
    );
    ttp.admin(&["hosts", "revoke", "db1"])?;
    let hosts: serde_json::Value = serde_json::from_str(&ttp.admin(&["hosts", "list", "--json"])?)?;
    assert_eq!(hosts[0]["state"], "revoked");
    ttp.admin(&["domains", "destroy", &hex::encode(domain_id(5))])?;
    let domains: serde_json::Value =
        serde_json::from_str(&ttp.admin(&["domains", "list", "--json"])?)?;
    assert_eq!(domains[0]["destroyed"], true);
    let err = ttp.admin_fails(&["domains", "destroy", &hex::encode(domain_id(6))])?;
    assert!(err.contains("unknown domain"), "{err}");
    ttp.stop()?;

    // The destroyed domain's r is gone from the nonce file: only zeros after the header.
    let nonces = std::fs::read(ttp.state.join("domain-nonces"))?;
    assert!(
        nonces[16..].iter().all(|&b| b == 0),
        "r survived destruction"
    );
    let log = ttp.log();
    for op in [
        "admin-add-manager",
        "admin-approve-host",
        "admin-revoke-host",
        "admin-destroy-domain",
    ] {
        assert!(log.contains(&format!("GRANTED op={op}")), "{op}:\n{log}");
    }
    Ok(())
}

fn derived_key(state: &std::path::Path, id: &DomainId) -> anyhow::Result<[u8; 32]> {
    let dir = StateDir::new(state);
    let registry = Registry::open(state)?;
    let record = registry
        .read()?
        .domain(id)?
        .ok_or_else(|| anyhow::anyhow!("no domain"))?;
    let r = registry
        .nonce(id, &record)?
        .ok_or_else(|| anyhow::anyhow!("no r"))?;
    let key = domfs_ttp::derive::domain_key(&dir.master_key()?, id, &record.meta, &r);
    Ok(*key.expose())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_then_restore_derives_the_same_keys() -> anyhow::Result<()> {
    let (mut ttp, alice) = Ttp::with_hosts(&["db1"], 300)?;
    let live = domain_id(1);
    let doomed = domain_id(2);
    let mut requests = Vec::new();
    for id in [live, doomed] {
        let (message, signature) = signed(&alice, id, 1, b"ward", &[("db1", RO)])?;
        ttp.client("alice")
            .await?
            .register_domain(RegisterDomainRequest {
                signed_message: message.clone(),
                signature: signature.clone(),
                manager_key: alice.verifying_key().to_bytes().to_vec(),
            })
            .await?;
        requests.push(GetDomainKeyRequest {
            signed_message: message,
            signature,
            mode: Mode::ReadOnly as i32,
        });
    }
    ttp.admin(&["domains", "destroy", &hex::encode(doomed)])?;

    let key_file = ttp.dir.path().join("backup.key");
    std::fs::write(&key_file, format!("{}\n", hex::encode([0x5c; 32])))?;
    let backup = ttp.dir.path().join("ttp.backup");
    // Through the running server.
    ttp.admin(&["backup", "--out", path(&backup), "--key", path(&key_file)])?;
    assert_eq!(mode_of(&backup), 0o600);
    // Not over an existing file.
    assert!(
        ttp.admin_fails(&["backup", "--out", path(&backup), "--key", path(&key_file)])
            .is_ok()
    );
    ttp.stop()?;
    // And with the server stopped.
    let backup2 = ttp.dir.path().join("ttp.backup2");
    ttp.admin(&["backup", "--out", path(&backup2), "--key", path(&key_file)])?;

    // The wrong key, or a damaged file, restores nothing.
    let wrong = ttp.dir.path().join("wrong.key");
    std::fs::write(&wrong, [0x11; 32])?;
    let target = ttp.dir.path().join("restored");
    let err = fails(&[
        "restore",
        "--state",
        path(&target),
        "--from",
        path(&backup),
        "--key",
        path(&wrong),
    ])?;
    assert!(err.contains("does not decrypt"), "{err}");
    let mut damaged = std::fs::read(&backup)?;
    let at = damaged.len() / 2;
    damaged[at] ^= 1;
    let damaged_file = ttp.dir.path().join("damaged.backup");
    std::fs::write(&damaged_file, damaged)?;
    assert!(
        fails(&[
            "restore",
            "--state",
            path(&target),
            "--from",
            path(&damaged_file),
            "--key",
            path(&key_file),
        ])
        .is_ok()
    );

    for (n, file) in [&backup, &backup2].into_iter().enumerate() {
        let target = ttp.dir.path().join(format!("restored{n}"));
        ok(&[
            "restore",
            "--state",
            path(&target),
            "--from",
            path(file),
            "--key",
            path(&key_file),
        ])?;
        assert_eq!(mode_of(&target), 0o700);
        assert_eq!(
            derived_key(&target, &live)?,
            derived_key(&ttp.state, &live)?
        );
        let registry = Registry::open(&target)?;
        let record = registry
            .read()?
            .domain(&doomed)?
            .ok_or_else(|| anyhow::anyhow!("gone"))?;
        assert!(
            record.destroyed(),
            "a destroyed domain comes back destroyed"
        );
        drop(registry);
        // Not over an existing state directory.
        assert!(
            fails(&[
                "restore",
                "--state",
                path(&target),
                "--from",
                path(file),
                "--key",
                path(&key_file),
            ])
            .is_ok()
        );
    }

    Ok(())
}

/// Needs the real `wrap::wrap_for_host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_ttp_releases_the_same_key() -> anyhow::Result<()> {
    let mut ttp = Ttp::new()?;
    let alice = ttp.manager("alice")?;
    let db1 = ttp.host("db1", true)?;
    ttp.start(300)?;
    let id = domain_id(1);
    let (message, signature) = signed(&alice, id, 1, b"ward", &[("db1", RW)])?;
    ttp.client("alice")
        .await?
        .register_domain(RegisterDomainRequest {
            signed_message: message.clone(),
            signature: signature.clone(),
            manager_key: alice.verifying_key().to_bytes().to_vec(),
        })
        .await?;
    let ask = GetDomainKeyRequest {
        signed_message: message,
        signature,
        mode: Mode::ReadOnly as i32,
    };
    let before = db1.unwrap(
        &ttp.client("db1")
            .await?
            .get_domain_key(ask.clone())
            .await?
            .into_inner()
            .wrapped_keys,
    )?;
    let restored = ttp.restored_copy([0x77; 32])?;
    ttp.stop()?;
    // The same CA, so the same client certificates work.
    ttp.state = restored;
    ttp.start(300)?;
    let after = db1.unwrap(
        &ttp.client("db1")
            .await?
            .get_domain_key(ask)
            .await?
            .into_inner()
            .wrapped_keys,
    )?;
    assert_eq!(before, after);
    ttp.stop()?;
    assert_eq!(before, derived_key(&ttp.state, &id)?.to_vec());
    Ok(())
}
