#![allow(clippy::unwrap_used)] // helpers outside #[test] fns, same rules as the tests
//! Read-only is enforced by cryptography: a host granted only ro holds the domain key K
//! (it must decrypt and verify), so it can seal blocks, compute their tags and MAC a
//! superblock — but it cannot sign the superblock with the domain's writer key. A volume it
//! rewrote is refused by every host.

use std::sync::Arc;

use domfs::crypto::{DomainKey, WriterKeys};
use domfs::device::{Access, FileDevice};
use domfs::filesystem::Filesystem;
use domfs::store::{BlockStore, StoreOptions};
use domfs_e2e::*;
use domfs_proto::agent::{GetDomainKeyRequest, Mode};

#[test]
fn a_read_only_host_cannot_forge_a_volume() {
    require_environment();
    let scratch = Scratch::new();
    let ttp = Ttp::start(scratch.path(), 30);
    let manager = Manager::new(&ttp, scratch.path(), "ward-manager");
    let writer = Host::start(&ttp, "db-primary", scratch.path());
    let reader = Host::start(&ttp, "db-replica", scratch.path());
    let volume = scratch.path().join("ward.vol");
    let out = manager.create(&volume, "32M", &["db-primary=rw", "db-replica=ro"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = scratch.path().join("m");
    assert!(writer.mount(&volume, &dir, &[]).status.success());
    std::fs::write(dir.join("dose.txt"), b"5 mg").unwrap();
    unmount(&dir);

    // The read-only host asks its agent for the key, as its mount would.
    let header = {
        let dev = FileDevice::open(&volume, Access::ReadOnly).unwrap();
        domfs::format::header::read_header(&dev).unwrap().header
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reply = rt
        .block_on(async {
            let mut agent = domfs_proto::client::connect_agent(&reader.socket).await?;
            let reply = agent
                .get_domain_key(GetDomainKeyRequest {
                    signed_message: header.signed_message.clone(),
                    signature: header.signature.clone(),
                    mode: Mode::ReadOnly as i32,
                    mount_point: "forgery-test".into(),
                })
                .await?;
            Ok::<_, Box<dyn std::error::Error>>(reply.into_inner())
        })
        .unwrap();
    assert!(
        reply.writer_secret.is_empty(),
        "a read-only grant carried the writer key"
    );
    let key = DomainKey::from_bytes(&reply.domain_key).unwrap();

    // With K alone it rewrites the file's blocks and commits: every block tag and the
    // superblock MAC are valid; the superblock signature is its own key's, not the
    // domain's writer key's.
    let made_up = [0x42u8; 32];
    let made_up_public = ed25519_dalek_public(&made_up);
    let forger = Arc::new(WriterKeys::signer(&made_up, &made_up_public).unwrap());
    resign_superblocks(&volume, &key, header.volume_id, forger.clone());
    let dev = FileDevice::open(&volume, Access::ReadWrite).unwrap();
    let store = BlockStore::open(
        Arc::new(dev),
        &key,
        StoreOptions {
            access: Access::ReadWrite,
            auto_commit: false,
            writer: Some(forger),
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let fs = Filesystem::open(Arc::new(store), false).unwrap();
    let root = fs.lookup(1, b"dose.txt").unwrap();
    fs.write(root.ino, 0, b"50 mg").unwrap();
    fs.sync().unwrap();
    drop(fs);

    // Every host refuses it: the writer cannot mount it, the reader cannot either.
    let out = writer.mount(&volume, &dir, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("writer key"),
        "{}",
        text(&out.stderr)
    );
    let out = reader.mount(&volume, &scratch.path().join("ro"), &[]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
}

/// What the forger does first: both superblock slots MAC'd again with K (valid) and
/// signed with its own key instead of the domain's writer key.
fn resign_superblocks(
    volume: &std::path::Path,
    key: &DomainKey,
    volume_id: domfs::types::VolumeId,
    forger: Arc<WriterKeys>,
) {
    use domfs::crypto::VolumeKeys;
    use domfs::device::Device;
    use domfs::format::superblock::{SlotState, Superblock};
    use domfs::format::{SUPERBLOCK_LEN, SUPERBLOCK_OFFSETS};
    let dev = FileDevice::open(volume, Access::ReadWrite).unwrap();
    let unsigned = VolumeKeys::derive(key, &volume_id);
    let signed = VolumeKeys::derive(key, &volume_id).with_writer(Some(forger));
    for offset in SUPERBLOCK_OFFSETS {
        let mut b = [0u8; SUPERBLOCK_LEN];
        dev.read_at(&mut b, offset).unwrap();
        let SlotState::Valid(sb) = Superblock::decode(&b, &unsigned, &volume_id) else {
            panic!("slot at {offset} does not verify under K");
        };
        dev.write_at(&sb.encode(&signed), offset).unwrap();
    }
    dev.sync().unwrap();
}

fn ed25519_dalek_public(seed: &[u8; 32]) -> Vec<u8> {
    ed25519_dalek::SigningKey::from_bytes(seed)
        .verifying_key()
        .to_bytes()
        .to_vec()
}
