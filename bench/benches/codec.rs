//! Throughput of the sealed-block codec on one 4 KiB block, and of its two halves.
//!
//! - `seal_4k`: AES-256-XTS encrypt + HMAC-SHA256 tag (what every block write costs).
//! - `open_4k`: tag verification + XTS decrypt (what every block read costs).
//! - `xts_encrypt_4k`, `hmac_4k`: the two primitives alone, to see which one limits.
//!
//! Results land in `target/criterion/codec/<name>/new/estimates.json`;
//! `bench/openssl-compare.sh` compares them with `openssl speed`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use domfs::crypto::{BlockCodec, DomainKey, VolumeKeys};
use domfs::types::{BLOCK_SIZE, Block, Generation, PhysBlock, VolumeId};
use rand::RngCore;

fn codec() -> BlockCodec {
    let key = DomainKey::generate().expect("the OS random generator works");
    let volume = VolumeId::random().expect("the OS random generator works");
    BlockCodec::new(VolumeKeys::derive(&key, &volume), volume)
}

fn random_block() -> Block {
    let mut block = [0u8; BLOCK_SIZE];
    rand::rng().fill_bytes(&mut block);
    block
}

fn bench_codec(c: &mut Criterion) {
    let codec = codec();
    let phys = PhysBlock(12_345);
    let generation = Generation(67_890);

    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Bytes(BLOCK_SIZE as u64));

    group.bench_function("seal_4k", |b| {
        // Sealing ciphertext again costs the same as sealing plaintext.
        let mut block = random_block();
        b.iter(|| codec.seal(phys, generation, black_box(&mut block)));
    });

    group.bench_function("open_4k", |b| {
        let mut sealed = random_block();
        let tag = codec.seal(phys, generation, &mut sealed);
        // Each iteration opens a fresh copy of the sealed block (the copy is not timed):
        // opening in place turns the buffer into plaintext, which would then fail fast.
        b.iter_batched_ref(
            || sealed,
            |block| {
                codec
                    .open(phys, generation, &tag, black_box(block))
                    .expect("the sealed block verifies")
            },
            BatchSize::SmallInput,
        );
    });

    group.bench_function("xts_encrypt_4k", |b| {
        let mut block = random_block();
        let tweak = [7u8; 16];
        b.iter(|| {
            codec
                .keys()
                .xts
                .encrypt_sector(black_box(&mut block), tweak)
                .expect("4096 bytes is a valid sector")
        });
    });

    group.bench_function("hmac_4k", |b| {
        let block = random_block();
        b.iter(|| codec.keys().block_mac.tag(&[black_box(&block[..])]));
    });

    group.finish();
}

fn config() -> Criterion {
    // Short runs: four benchmarks finish in well under a minute.
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_codec
}
criterion_main!(benches);
