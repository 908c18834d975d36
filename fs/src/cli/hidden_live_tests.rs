//! The daemon's side of `domfs hidden` on a live mount, without a daemon: requests handed
//! to [`serve`] with a real filesystem, answers parsed as the client parses them.

use std::sync::Arc;

use ed25519_dalek::SigningKey;

use super::*;
use crate::crypto::{DomainKey, WriterKeys};
use crate::device::{Access, FileDevice};
use crate::filesystem::Caller;
use crate::filesystem::inode::{ROOT_INO, S_IFREG};
use crate::format::header::KeyMode;
use crate::store::StoreOptions;
use crate::types::VolumeId;
use crate::volume::{CreateOptions, SignedAccessList, create_ttp_volume, create_volume};

const WHO: Caller = Caller {
    uid: 77,
    gid: 88,
    pid: 0,
};

/// An agent-mode volume (manager `manager`) formatted with a known key and writer key,
/// or a key-file one.
fn volume(dir: &Path, manager: Option<&SigningKey>) -> Filesystem {
    let path = dir.join("v.vol");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(32 << 20))
        .expect("container");
    let dev = FileDevice::open(&path, Access::ReadWrite).expect("open");
    let key = DomainKey::from_bytes(&[9; 32]).expect("key");
    let seed = [3u8; 32];
    let writer = manager.map(|_| {
        let public = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
        Arc::new(WriterKeys::signer(&seed, &public).expect("writer"))
    });
    match manager {
        Some(m) => {
            create_ttp_volume(
                &dev,
                VolumeId::random().expect("id"),
                b"live".to_vec(),
                SignedAccessList {
                    message: b"list".to_vec(),
                    signature: vec![1; 64],
                    manager_key: m.verifying_key().to_bytes().to_vec(),
                },
                Vec::new(),
            )
            .expect("create");
        }
        None => {
            create_volume(
                &dev,
                CreateOptions {
                    meta: Vec::new(),
                    key_mode: KeyMode::KeyFile,
                },
                Some(&key),
            )
            .expect("create");
        }
    }
    let store = crate::volume::open_store(
        Arc::new(FileDevice::open(&path, Access::ReadWrite).expect("open")),
        &key,
        StoreOptions {
            auto_commit: false,
            writer,
            ..StoreOptions::default()
        },
    )
    .expect("store");
    Filesystem::open(Arc::new(store), false).expect("fs")
}

fn hide(fs: &Filesystem, name: &str, data: &[u8]) {
    let e = fs
        .mknod(ROOT_INO, name.as_bytes(), S_IFREG | 0o600, 0, WHO)
        .expect("create");
    fs.write(e.ino, 0, data).expect("write");
    fs.forget(e.ino, 1);
    fs.unlink(ROOT_INO, name.as_bytes(), WHO).expect("unlink");
}

/// The answer's header and the bytes after it.
fn ask(fs: &Filesystem, request: Request) -> (Answer, Vec<u8>) {
    let mut out = Vec::new();
    assert!(serve(fs, &request, &mut out).expect("served"));
    let end = out.iter().position(|&b| b == b'\n').expect("a header line");
    let answer: Answer = serde_json::from_slice(&out[..end]).expect("json");
    (answer, out[end + 1..].to_vec())
}

#[test]
fn list_show_and_restore_through_the_control_protocol() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = volume(dir.path(), None);
    hide(&fs, "a", b"first");
    hide(&fs, "a", &[7u8; 10_000]);
    let (answer, rest) = ask(&fs, Request::HiddenList { prefix: None });
    assert!(answer.ok && rest.is_empty(), "{answer:?}");
    let Some(Value::Array(items)) = answer.result else {
        panic!("no list")
    };
    let versions: Vec<HiddenVersion> = items
        .iter()
        .map(|v| version_from_json(v).expect("parses"))
        .collect();
    assert_eq!(
        versions,
        fs.hidden_list(None).expect("list"),
        "the wire loses nothing"
    );
    assert_eq!(versions[0].uid, 77);

    let (answer, bytes) = ask(
        &fs,
        Request::HiddenShow {
            path: "a".into(),
            version: 2,
        },
    );
    assert_eq!(answer.len, Some(5));
    assert_eq!(bytes, b"first");
    let (answer, _) = ask(
        &fs,
        Request::HiddenShow {
            path: "a".into(),
            version: 3,
        },
    );
    assert!(!answer.ok && answer.code == Some(1), "{answer:?}");

    let (answer, _) = ask(
        &fs,
        Request::HiddenRestore {
            path: "a".into(),
            version: 1,
            to: None,
        },
    );
    assert!(answer.ok, "{answer:?}");
    assert_eq!(
        version_from_json(&answer.result.expect("result"))
            .expect("parses")
            .size,
        10_000
    );
    let (answer, _) = ask(
        &fs,
        Request::HiddenRestore {
            path: "a".into(),
            version: 1,
            to: None,
        },
    );
    assert_eq!(answer.code, Some(8), "the target exists: {answer:?}");
    // Not a hidden request: left to the caller.
    assert!(!serve(&fs, &Request::AuditVerify {}, &mut Vec::new()).expect("io"));

    // Served for a peer, reading and restoring are audited as the peer's.
    hide(&fs, "b", b"second");
    let peer = Peer {
        uid: 4321,
        gid: 99,
        pid: std::process::id(),
        groups: Vec::new(),
    };
    for request in [
        Request::HiddenShow {
            path: "b".into(),
            version: 1,
        },
        Request::HiddenRestore {
            path: "b".into(),
            version: 1,
            to: Some("c".into()),
        },
    ] {
        let mut out = Vec::new();
        assert!(serve_as(&fs, &request, &peer, &mut out).expect("served"));
    }
    fs.sync().expect("sync");
    let log = fs.read_audit_log().expect("log");
    let mine: Vec<_> = log.entries.iter().filter(|e| e.uid == 4321).collect();
    assert_eq!(mine.len(), 2, "{:?}", log.entries);
    assert_eq!(mine[0].op, crate::audit::AuditOp::Open);
    assert_eq!(mine[0].path, "/b");
    assert_eq!(mine[1].op, crate::audit::AuditOp::Restore);
    assert!(mine[1].detail.ends_with("to /c"), "{}", mine[1].detail);
    assert_eq!(mine[1].result, 0);
}

#[test]
fn purge_needs_a_fresh_signature_of_the_domains_manager() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manager = SigningKey::from_bytes(&[5; 32]);
    let other = SigningKey::from_bytes(&[6; 32]);
    let fs = volume(dir.path(), Some(&manager));
    hide(&fs, "chart", b"x");
    hide(&fs, "chart", b"y");
    let id = fs.store().header().volume_id.0;
    let now = crate::store::unix_now();
    let version_id =
        |fs: &Filesystem, version: u32| fs.hidden_get(b"chart", version).expect("a version").id;
    let signed = |key: &SigningKey, version: u32, vid: u64, at: u64| Request::HiddenPurge {
        path: "chart".into(),
        version,
        id: vid,
        signature: hex::encode(
            key.sign(&purge_message(&id, "chart", version, vid, at))
                .to_bytes(),
        ),
        signed_at: at,
    };
    let purge = |key: &SigningKey, version: u32, at: u64| {
        signed(key, version, version_id(&fs, version), at)
    };
    for (request, why) in [
        (purge(&other, 1, now), "not signed by this domain's manager"),
        (purge(&manager, 1, now - 3600), "too long ago"),
        (
            Request::HiddenPurge {
                path: "chart".into(),
                version: 2,
                id: version_id(&fs, 2),
                signature: hex::encode(
                    manager
                        .sign(&purge_message(&id, "chart", 1, version_id(&fs, 1), now))
                        .to_bytes(),
                ),
                signed_at: now,
            },
            "not signed",
        ),
        // Signed for version 1's id, sent for version 2 (whose id differs).
        (
            signed(&manager, 2, version_id(&fs, 1), now),
            "no longer the version signed",
        ),
    ] {
        let (answer, _) = ask(&fs, request);
        assert_eq!(answer.code, Some(3), "{answer:?}");
        assert!(
            answer.error.as_deref().unwrap_or("").contains(why),
            "{answer:?}"
        );
    }
    assert_eq!(
        fs.hidden_list(None).expect("list").len(),
        2,
        "nothing purged"
    );
    // Signed when version 1 was "y"; then a newer version is hidden (now version 1 is
    // the new one): the signature still names only "y".
    let good = purge(&manager, 1, now);
    let y_id = version_id(&fs, 1);
    hide(&fs, "chart", b"z");
    let (answer, _) = ask(&fs, good.clone());
    assert_eq!(answer.code, Some(3), "{answer:?}");
    assert!(
        answer
            .error
            .as_deref()
            .unwrap_or("")
            .contains("no longer the version signed"),
        "{answer:?}"
    );
    assert_eq!(
        fs.hidden_list(None).expect("list").len(),
        3,
        "nothing purged"
    );
    let good = signed(&manager, 2, y_id, now);
    let peer = Peer {
        uid: 0,
        gid: 0,
        pid: std::process::id(),
        groups: Vec::new(),
    };
    let mut out = Vec::new();
    assert!(serve_as(&fs, &good, &peer, &mut out).expect("served"));
    let end = out.iter().position(|&b| b == b'\n').expect("a header line");
    let answer: Answer = serde_json::from_slice(&out[..end]).expect("json");
    assert!(answer.ok, "{answer:?}");
    let log = fs.read_audit_log().expect("log");
    let purge_entry = log
        .entries
        .iter()
        .find(|e| e.op == crate::audit::AuditOp::Purge)
        .expect("the purge is audited");
    assert!(
        purge_entry.detail.contains("by the domain manager (key "),
        "{}",
        purge_entry.detail
    );
    assert_eq!(fs.hidden_list(None).expect("list").len(), 2);
    assert!(
        fs.hidden_list(None)
            .expect("list")
            .iter()
            .all(|v| v.id != y_id)
    );
    // The same signed request again would purge the next version 2: refused, also by
    // a daemon that never saw it (nothing is remembered: the id is gone for good).
    let (answer, _) = ask(&fs, good);
    assert_eq!(answer.code, Some(3), "{answer:?}");
    assert_eq!(fs.hidden_list(None).expect("list").len(), 2);

    // A key-file volume has no manager.
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = volume(dir.path(), None);
    hide(&fs, "chart", b"x");
    let (answer, _) = ask(&fs, purge(&manager, 1, now));
    assert_eq!(answer.code, Some(8), "{answer:?}");
}
