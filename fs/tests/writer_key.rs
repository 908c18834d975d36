//! The writer signature on superblocks (agent mode): a volume created without its key is
//! formatted at the first read-write open with the writer key, read-only hosts verify the
//! signature, and a superblock a read-only host computed with the domain key alone (valid
//! MAC, no signature) is refused as forged.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns, same rules

mod common;

use std::sync::Arc;

use common::devices::MemDevice;
use domfs::Error;
use domfs::crypto::{DomainKey, VolumeKeys, WriterKeys};
use domfs::device::{Access, Device};
use domfs::format::SUPERBLOCK_OFFSETS;
use domfs::format::header::KeyMode;
use domfs::store::{BlockStore, StoreOptions};
use domfs::types::{BLOCK_SIZE, LogicalBlock};
use domfs::volume::{CreateOptions, create_volume, open_store};

const SIZE: usize = 16 << 20;

fn writer_pair(seed: u8) -> (Arc<WriterKeys>, Arc<WriterKeys>) {
    let seed = [seed; 32];
    let public = ed25519_public(&seed);
    (
        Arc::new(WriterKeys::signer(&seed, &public).unwrap()),
        Arc::new(WriterKeys::verifier(&public).unwrap()),
    )
}

fn ed25519_public(seed: &[u8; 32]) -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(seed)
        .verifying_key()
        .to_bytes()
}

fn options(access: Access, writer: Option<Arc<WriterKeys>>) -> StoreOptions {
    StoreOptions {
        access,
        writer,
        ..StoreOptions::default()
    }
}

/// An agent-mode volume as `domfs create --ttp` leaves it: a header, no superblocks.
fn agent_volume() -> Arc<MemDevice> {
    let dev = Arc::new(MemDevice::new(SIZE));
    create_volume(
        dev.as_ref(),
        CreateOptions {
            meta: b"ward".to_vec(),
            key_mode: KeyMode::Ttp,
        },
        None,
    )
    .unwrap();
    dev
}

#[test]
fn first_read_write_open_formats_and_signs() {
    let dev = agent_volume();
    let key = DomainKey::from_bytes(&[9; 32]).unwrap();
    let (signer, verifier) = writer_pair(1);
    // Read-only before the first read-write mount: nothing to read yet.
    assert!(matches!(
        BlockStore::open(
            dev.clone(),
            &key,
            options(Access::ReadOnly, Some(verifier.clone()))
        ),
        Err(Error::Unformatted)
    ));
    let store = open_store(dev.clone(), &key, options(Access::ReadWrite, Some(signer))).unwrap();
    let block = Box::new([0x5au8; BLOCK_SIZE]);
    store.write(LogicalBlock(3), &block).unwrap();
    store.commit().unwrap();
    drop(store);

    let ro =
        BlockStore::open(dev.clone(), &key, options(Access::ReadOnly, Some(verifier))).unwrap();
    let mut out = Box::new([0u8; BLOCK_SIZE]);
    ro.read(LogicalBlock(3), &mut out).unwrap();
    assert_eq!(out, block);

    // Another domain's writer key does not verify these superblocks.
    let (_, stranger) = writer_pair(2);
    assert!(matches!(
        BlockStore::open(dev.clone(), &key, options(Access::ReadOnly, Some(stranger))),
        Err(Error::ForgedSuperblock(_))
    ));
}

#[test]
fn read_write_open_without_the_private_half_is_refused() {
    let dev = agent_volume();
    let key = DomainKey::from_bytes(&[9; 32]).unwrap();
    let (signer, verifier) = writer_pair(1);
    drop(open_store(dev.clone(), &key, options(Access::ReadWrite, Some(signer))).unwrap());
    for writer in [None, Some(verifier)] {
        let refused = open_store(dev.clone(), &key, options(Access::ReadWrite, writer));
        assert!(
            matches!(&refused, Err(Error::Invalid(why)) if why.contains("writer key")),
            "{:?}",
            refused.err()
        );
    }
}

#[test]
fn a_superblock_forged_with_the_domain_key_alone_is_refused() {
    let dev = agent_volume();
    let key = DomainKey::from_bytes(&[9; 32]).unwrap();
    let (signer, verifier) = writer_pair(1);
    let store = open_store(dev.clone(), &key, options(Access::ReadWrite, Some(signer))).unwrap();
    store
        .write(LogicalBlock(0), &Box::new([1u8; BLOCK_SIZE]))
        .unwrap();
    store.commit().unwrap();
    let mut sb = store.superblock();
    drop(store);

    // What a read-only host can do: it holds K, so it can MAC a superblock (here, the
    // current one moved to the next commit number), but it cannot sign it.
    let keys = VolumeKeys::derive(&key, &sb.volume_id);
    sb.sequence += 1;
    dev.write_at(&sb.encode(&keys), SUPERBLOCK_OFFSETS[sb.slot()])
        .unwrap();

    for access in [Access::ReadOnly, Access::ReadWrite] {
        let writer = if access == Access::ReadOnly {
            verifier.clone()
        } else {
            writer_pair(1).0
        };
        let opened = BlockStore::open(dev.clone(), &key, options(access, Some(writer)));
        assert!(
            matches!(&opened, Err(Error::ForgedSuperblock(why)) if why.contains(&format!("slot {}", sb.slot()))),
            "{access:?}: {:?}",
            opened.err()
        );
    }
}
