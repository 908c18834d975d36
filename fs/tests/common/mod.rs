//! Helpers shared by the integration tests of the `domfs` crate.
#![allow(dead_code)]

pub mod devices;
pub mod mount;
pub mod postgres;

use std::path::PathBuf;
use std::sync::Arc;

use domfs::crypto::DomainKey;
use domfs::device::{Access, Device, FileDevice};
use domfs::format::header::Extension;
use domfs::format::header::KeyMode;
use domfs::store::{BlockStore, StoreOptions};
use domfs::types::Block;
use domfs::volume::{CreateOptions, create_volume_with};

pub struct TestVolume {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub key_bytes: [u8; 32],
}

impl TestVolume {
    pub fn new(size: u64) -> Self {
        Self::with_extensions(size, Vec::new())
    }

    /// A volume whose header carries `extensions` (e.g. a retention policy).
    pub fn with_extensions(size: u64, extensions: Vec<Extension>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("test.vol");
        let file = std::fs::File::create(&path).expect("create container");
        file.set_len(size).expect("size container");
        let key_bytes: [u8; 32] = rand::random();
        let dev = FileDevice::open(&path, Access::ReadWrite).expect("open container");
        create_volume_with(
            &dev,
            CreateOptions {
                meta: b"test".to_vec(),
                key_mode: KeyMode::KeyFile,
            },
            extensions,
            Some(&DomainKey::from_bytes(&key_bytes).expect("key")),
        )
        .expect("create volume");
        Self {
            dir,
            path,
            key_bytes,
        }
    }

    pub fn key(&self) -> DomainKey {
        DomainKey::from_bytes(&self.key_bytes).expect("key")
    }

    pub fn device(&self, access: Access) -> Arc<dyn Device> {
        Arc::new(FileDevice::open(&self.path, access).expect("open container"))
    }

    pub fn open(&self) -> BlockStore {
        self.open_with(StoreOptions::default())
    }

    pub fn open_with(&self, options: StoreOptions) -> BlockStore {
        let dev = self.device(options.access);
        BlockStore::open(dev, &self.key(), options).expect("open store")
    }

    pub fn fsck(&self) -> domfs::store::fsck::FsckReport {
        domfs::store::fsck::fsck(self.device(Access::ReadOnly), &self.key(), &|_, _| {})
            .expect("fsck runs")
    }
}

/// A block whose bytes are derived from (`seed`, `n`): easy to check, different per version.
pub fn pattern(seed: u64, n: u64) -> Box<Block> {
    domfs::cli::debug::pattern(seed, n)
}

/// Deterministic contents for a write: a cheap PRNG stream keyed by `fill`. Never all
/// zeros, so that data is told apart from holes.
pub fn prng_bytes(len: usize, fill: u64) -> Vec<u8> {
    let mut x = fill | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
