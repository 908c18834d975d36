//! Sequential and random block I/O through the whole store (tree, cache, space map,
//! commit) on a file container. The file sits in the OS page cache, so this measures what
//! domfs adds: crypto, tree maintenance, allocation. Compare with `codec` and OpenSSL
//! (`bench/openssl-compare.sh`).

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use domfs::crypto::DomainKey;
use domfs::device::{Access, FileDevice};
use domfs::format::header::KeyMode;
use domfs::store::{BlockStore, StoreOptions};
use domfs::types::{BLOCK_SIZE, LogicalBlock};
use domfs::volume::{CreateOptions, create_volume};
use rand::{Rng, SeedableRng, rngs::StdRng};

const BATCH: u64 = 1024; // 4 MiB per iteration
const SPAN: u64 = 16 * 1024; // 64 MiB of data

fn open_store(dir: &tempfile::TempDir) -> BlockStore {
    let path = dir.path().join("bench.vol");
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(512 << 20).expect("size");
    let key = DomainKey::from_bytes(&[7u8; 32]).expect("key");
    let dev = FileDevice::open(&path, Access::ReadWrite).expect("open");
    create_volume(
        &dev,
        CreateOptions {
            meta: Vec::new(),
            key_mode: KeyMode::KeyFile,
        },
        Some(&key),
    )
    .expect("create volume");
    BlockStore::open(Arc::new(dev), &key, StoreOptions::default()).expect("store")
}

fn bench_store(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(&dir);
    let data = [0xA5u8; BLOCK_SIZE];
    for n in 0..SPAN {
        store.write(LogicalBlock(n), &data).expect("fill");
    }
    store.commit().expect("commit");

    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Bytes(BATCH * BLOCK_SIZE as u64));
    group.sample_size(20);
    group.measurement_time(std::time::Duration::from_secs(4));
    group.warm_up_time(std::time::Duration::from_secs(1));

    let mut next = 0u64;
    group.bench_function("seq_write_commit_4m", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                store
                    .write(LogicalBlock(next % SPAN), &data)
                    .expect("write");
                next += 1;
            }
            store.commit().expect("commit");
        })
    });
    let mut rng = StdRng::seed_from_u64(1);
    group.bench_function("rand_write_commit_4m", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                store
                    .write(LogicalBlock(rng.random_range(0..SPAN)), &data)
                    .expect("write");
            }
            store.commit().expect("commit");
        })
    });
    let mut out = [0u8; BLOCK_SIZE];
    let mut start = 0u64;
    group.bench_function("seq_read_cold_4m", |b| {
        b.iter(|| {
            store.drop_caches();
            for i in 0..BATCH {
                store
                    .read(LogicalBlock((start + i) % SPAN), &mut out)
                    .expect("read");
            }
            start += BATCH;
        })
    });
    group.bench_function("rand_read_cold_4m", |b| {
        b.iter(|| {
            store.drop_caches();
            for _ in 0..BATCH {
                store
                    .read(LogicalBlock(rng.random_range(0..SPAN)), &mut out)
                    .expect("read");
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench_store);
criterion_main!(benches);
