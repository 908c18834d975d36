//! A small volume made by format version 1, checked in, so that a format change is a
//! visible decision: this build must still open it, verify it and read its contents.
//!
//! The container is stored sparse as text (`offset hex` per non-zero 512-byte sector). To
//! make a new golden volume after a deliberate format change, run
//! `cargo test -p domfs --test golden -- --ignored regenerate` and commit the file.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use domfs::crypto::DomainKey;
use domfs::device::{Access, FileDevice};
use domfs::store::{BlockStore, StoreOptions};
use domfs::types::{BLOCK_SIZE, LogicalBlock};

const GOLDEN_KEY: [u8; 32] = *b"domfs golden volume key, v1 fmt!";
const GOLDEN_SIZE: u64 = 4 << 20;
/// (logical block, pattern seed) written in the first commit, then the second.
const FIRST: &[(u64, u64)] = &[(0, 1), (1, 1), (84, 1), (85, 1), (700, 1)];
const SECOND: &[(u64, u64)] = &[(1, 2), (760, 2)];
const DISCARDED: u64 = 84;

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1.sparse")
}

fn expected(n: u64) -> Option<u64> {
    if n == DISCARDED {
        return None;
    }
    SECOND
        .iter()
        .chain(FIRST)
        .find(|(b, _)| *b == n)
        .map(|(_, seed)| *seed)
}

#[test]
fn golden_v1_volume_opens_verifies_and_reads() {
    let text = std::fs::read_to_string(golden_path()).expect("golden volume file");
    let mut image = vec![0u8; GOLDEN_SIZE as usize];
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (offset, hex) = line.split_once(' ').expect("offset hex");
        let offset: usize = offset.parse().expect("offset");
        let bytes = hex::decode(hex).expect("hex");
        image[offset..offset + bytes.len()].copy_from_slice(&bytes);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("golden.vol");
    std::fs::write(&path, &image).expect("write");
    let key = DomainKey::from_bytes(&GOLDEN_KEY).expect("key");
    let dev = Arc::new(FileDevice::open(&path, Access::ReadOnly).expect("open"));
    let report = domfs::store::fsck::fsck(dev.clone(), &key, &|_, _| {}).expect("fsck");
    assert!(report.is_clean(), "{report:?}");
    let store = BlockStore::open(dev, &key, StoreOptions::read_only()).expect("open golden volume");
    assert_eq!(store.header().meta, b"golden");
    for n in 0..store.logical_blocks() {
        let mut got = [0u8; BLOCK_SIZE];
        store.read(LogicalBlock(n), &mut got).expect("read");
        match expected(n) {
            Some(seed) => assert_eq!(got, *common::pattern(seed, n), "block {n}"),
            None => assert_eq!(got, [0u8; BLOCK_SIZE], "block {n}"),
        }
    }
}

#[test]
#[ignore = "writes the golden volume; run only after a deliberate format change"]
fn regenerate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("golden.vol");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(GOLDEN_SIZE))
        .expect("create");
    let key = DomainKey::from_bytes(&GOLDEN_KEY).expect("key");
    let dev = Arc::new(FileDevice::open(&path, Access::ReadWrite).expect("open"));
    domfs::volume::create_volume(
        dev.as_ref(),
        domfs::volume::CreateOptions {
            meta: b"golden".to_vec(),
            key_mode: domfs::format::header::KeyMode::KeyFile,
        },
        Some(&key),
    )
    .expect("create");
    let store = BlockStore::open(dev, &key, StoreOptions::default()).expect("store");
    for &(n, seed) in FIRST {
        store
            .write(LogicalBlock(n), &common::pattern(seed, n))
            .expect("write");
    }
    store.commit().expect("commit");
    for &(n, seed) in SECOND {
        store
            .write(LogicalBlock(n), &common::pattern(seed, n))
            .expect("write");
    }
    store.discard(LogicalBlock(DISCARDED)).expect("discard");
    store.close().expect("close");
    let image = std::fs::read(&path).expect("read");
    let mut text =
        String::from("# domfs format v1 golden volume (4 MiB); see fs/tests/golden.rs\n");
    for (i, sector) in image.chunks(512).enumerate() {
        if sector.iter().any(|&b| b != 0) {
            text.push_str(&format!("{} {}\n", i * 512, hex::encode(sector)));
        }
    }
    std::fs::write(golden_path(), text).expect("write golden file");
}
