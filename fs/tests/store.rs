//! The block store against a model: random writes, discards, commits and reopens.

mod common;

use std::collections::HashMap;

use common::{TestVolume, pattern};
use domfs::Error;
use domfs::device::Access;
use domfs::store::StoreOptions;
use domfs::types::{BLOCK_SIZE, LogicalBlock};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn read(store: &domfs::store::BlockStore, n: u64) -> Box<[u8; BLOCK_SIZE]> {
    let mut out = Box::new([0u8; BLOCK_SIZE]);
    store.read(LogicalBlock(n), &mut out).expect("read");
    out
}

#[test]
fn fresh_volume_reads_zeros_and_is_clean() {
    let vol = TestVolume::new(64 << 20);
    let store = vol.open();
    assert_eq!(*read(&store, 0), [0u8; BLOCK_SIZE]);
    assert_eq!(*read(&store, store.logical_blocks() - 1), [0u8; BLOCK_SIZE]);
    store.close().expect("close");
    let report = vol.fsck();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.data_blocks, 0);
}

#[test]
fn out_of_range_is_an_error() {
    let vol = TestVolume::new(8 << 20);
    let store = vol.open();
    let n = store.logical_blocks();
    let mut buf = [0u8; BLOCK_SIZE];
    assert!(matches!(
        store.read(LogicalBlock(n), &mut buf),
        Err(Error::OutOfRange(_))
    ));
    assert!(matches!(
        store.write(LogicalBlock(n), &buf),
        Err(Error::OutOfRange(_))
    ));
}

#[test]
fn random_operations_match_a_model_across_reopens() {
    let vol = TestVolume::new(32 << 20);
    let mut rng = StdRng::seed_from_u64(7);
    let mut committed: HashMap<u64, u64> = HashMap::new();
    let mut current: HashMap<u64, u64> = HashMap::new();
    let small_cache = StoreOptions {
        cache_bytes: 512 * 1024,
        ..StoreOptions::default()
    };
    let mut store = vol.open_with(small_cache.clone());
    let span = 3000u64; // crosses several level-1 nodes
    for step in 0..6000u64 {
        let n = rng.random_range(0..span);
        match rng.random_range(0..100) {
            0..60 => {
                store
                    .write(LogicalBlock(n), &pattern(step, n))
                    .expect("write");
                current.insert(n, step);
            }
            60..70 => {
                store.discard(LogicalBlock(n)).expect("discard");
                current.remove(&n);
            }
            70..95 => {
                let expected = current.get(&n).map(|&s| pattern(s, n));
                let got = read(&store, n);
                match expected {
                    Some(b) => assert_eq!(got, b, "block {n} at step {step}"),
                    None => assert_eq!(*got, [0u8; BLOCK_SIZE], "block {n} at step {step}"),
                }
            }
            95..98 => {
                store.commit().expect("commit");
                committed = current.clone();
            }
            _ => {
                // Reopen without committing: only the committed state survives.
                drop(store);
                store = vol.open_with(small_cache.clone());
                current = committed.clone();
            }
        }
    }
    store.commit().expect("commit");
    drop(store);
    let store = vol.open_with(StoreOptions {
        access: Access::ReadOnly,
        ..small_cache
    });
    for n in 0..span {
        let got = read(&store, n);
        match current.get(&n) {
            Some(&s) => assert_eq!(got, pattern(s, n), "block {n}"),
            None => assert_eq!(*got, [0u8; BLOCK_SIZE], "block {n}"),
        }
    }
    let report = vol.fsck();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.data_blocks, current.len() as u64);
}

#[test]
fn a_full_volume_says_no_space_at_write_time_and_stays_consistent() {
    let vol = TestVolume::new(4 << 20);
    let store = vol.open();
    let mut written = 0u64;
    let err = loop {
        match store.write(LogicalBlock(written), &pattern(1, written)) {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
        assert!(written < store.logical_blocks(), "never ran out of space");
    };
    assert!(matches!(err, Error::NoSpace), "{err}");
    // Everything accepted can be committed, and rewriting accepted blocks still works.
    store.commit().expect("commit after ENOSPC");
    for n in 0..written.min(50) {
        store
            .write(LogicalBlock(n), &pattern(2, n))
            .expect("rewrite");
    }
    store.commit().expect("commit rewrites");
    drop(store);
    let store = vol.open();
    for n in 0..written {
        let seed = if n < 50 { 2 } else { 1 };
        assert_eq!(read(&store, n), pattern(seed, n), "block {n}");
    }
    // Discarding frees space for new writes.
    for n in 0..100 {
        store.discard(LogicalBlock(n)).expect("discard");
    }
    store.commit().expect("commit discards");
    assert!(store.space().available_blocks >= 90, "{:?}", store.space());
    store.close().expect("close");
    assert!(vol.fsck().is_clean());
}

#[test]
fn read_only_store_refuses_writes() {
    let vol = TestVolume::new(8 << 20);
    let store = vol.open_with(StoreOptions::read_only());
    let buf = [0u8; BLOCK_SIZE];
    assert!(matches!(
        store.write(LogicalBlock(0), &buf),
        Err(Error::ReadOnly)
    ));
    assert!(matches!(store.commit(), Err(Error::ReadOnly)));
}

#[test]
fn wrong_key_is_told_apart() {
    let vol = TestVolume::new(8 << 20);
    let other = domfs::crypto::DomainKey::from_bytes(&[9u8; 32]).expect("key");
    let err = domfs::store::BlockStore::open(
        vol.device(Access::ReadOnly),
        &other,
        StoreOptions::default(),
    )
    .err()
    .expect("must fail");
    assert!(matches!(err, Error::WrongKey), "{err}");
}

/// A device whose `sync` waits at a gate, standing in for a slow disk.
struct GatedDevice {
    inner: std::sync::Arc<dyn domfs::device::Device>,
    gate: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    syncing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl domfs::device::Device for GatedDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn sync(&self) -> std::io::Result<()> {
        self.syncing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let (open, cv) = &*self.gate;
        let mut guard = open.lock().expect("gate");
        while !*guard {
            guard = cv.wait(guard).expect("gate");
        }
        self.inner.sync()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn name(&self) -> String {
        self.inner.name()
    }
}

#[test]
fn reads_and_writes_go_on_while_a_commit_waits_for_the_disk() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    let vol = TestVolume::new(16 << 20);
    {
        let store = vol.open();
        store.write(LogicalBlock(1), &pattern(1, 1)).expect("write");
        store.close().expect("close");
    }
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let syncing = Arc::new(AtomicBool::new(false));
    let dev = Arc::new(GatedDevice {
        inner: vol.device(Access::ReadWrite),
        gate: gate.clone(),
        syncing: syncing.clone(),
    });
    // Opening read-write syncs once (the generation jump): let that through.
    *gate.0.lock().expect("gate") = true;
    let store = Arc::new(
        domfs::store::BlockStore::open(dev, &vol.key(), StoreOptions::default()).expect("open"),
    );
    *gate.0.lock().expect("gate") = false;
    syncing.store(false, Ordering::SeqCst);
    store.write(LogicalBlock(2), &pattern(2, 2)).expect("write");
    let committer = {
        let store = store.clone();
        std::thread::spawn(move || store.commit().expect("commit"))
    };
    while !syncing.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    // The commit is stuck in sync; everything else must still work.
    assert_eq!(read(&store, 1), pattern(1, 1));
    assert_eq!(read(&store, 2), pattern(2, 2), "the block being committed");
    store
        .write(LogicalBlock(3), &pattern(3, 3))
        .expect("write during commit");
    store
        .write(LogicalBlock(2), &pattern(4, 2))
        .expect("rewrite during commit");
    assert_eq!(read(&store, 2), pattern(4, 2));
    {
        let (open, cv) = &*gate;
        *open.lock().expect("gate") = true;
        cv.notify_all();
    }
    committer.join().expect("commit thread");
    store.commit().expect("second commit");
    drop(store);
    let store = vol.open();
    assert_eq!(read(&store, 2), pattern(4, 2));
    assert_eq!(read(&store, 3), pattern(3, 3));
    drop(store);
    assert!(vol.fsck().is_clean());
}
