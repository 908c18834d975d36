//! An attacker without the key edits the container of a committed volume. Every read of a
//! written block then returns exactly the right bytes or fails with `Error::Integrity`,
//! never other bytes; blocks the edit did not reach still read; fsck names the damage.
//!
//! The attacker cannot decrypt tree nodes, so these tests find their targets the way an
//! attacker would: allocated blocks are the non-zero 4 KiB blocks past 1 MiB (the container
//! is sparse), and what a commit wrote is what changed in the container.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{TestVolume, pattern};
use domfs::Error;
use domfs::device::Access;
use domfs::error::Damaged;
use domfs::format::{HEADER_OFFSETS, SUPERBLOCK_LEN, SUPERBLOCK_OFFSETS};
use domfs::store::fsck::{FsckReport, fsck};
use domfs::store::{BlockStore, StoreOptions};
use domfs::types::{BLOCK_SIZE, LogicalBlock};
use rand::{Rng, SeedableRng, rngs::StdRng};
use sha2::{Digest, Sha256};

const VOLUME_SIZE: u64 = 16 << 20;
/// Logical blocks the volumes use (a few dozen level-1 nodes).
const SPAN: u64 = 3000;
const FIRST_BLOCK_BYTE: u64 = 1 << 20;
const BS: u64 = BLOCK_SIZE as u64;

/// Logical block → the `pattern` seed it holds.
type Model = BTreeMap<u64, u64>;

fn read_only() -> StoreOptions {
    StoreOptions {
        access: Access::ReadOnly,
        cache_bytes: 1 << 20,
        ..StoreOptions::default()
    }
}

// ---- the attacker's tools: bytes of the container file --------------------------------

fn file_read(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let file = std::fs::File::open(path).expect("open container");
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .expect("read container");
    buf
}

fn file_write(path: &Path, offset: u64, bytes: &[u8]) {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open container");
    file.write_all_at(bytes, offset).expect("write container");
    file.sync_all().expect("sync container");
}

/// XORs the byte at `offset` with `mask` (non-zero).
fn flip(path: &Path, offset: u64, mask: u8) {
    assert_ne!(mask, 0);
    let mut b = file_read(path, offset, 1);
    b[0] ^= mask;
    file_write(path, offset, &b);
}

fn random_mask(rng: &mut StdRng) -> u8 {
    rng.random_range(1..=255)
}

/// The physical blocks past the fixed area that hold anything: the allocated ones.
fn nonzero_blocks(image: &[u8]) -> Vec<u64> {
    image
        .chunks_exact(BLOCK_SIZE)
        .enumerate()
        .skip((FIRST_BLOCK_BYTE / BS) as usize)
        .filter(|(_, b)| b.iter().any(|&x| x != 0))
        .map(|(i, _)| i as u64)
        .collect()
}

/// The physical blocks whose bytes differ between two images (the fixed area excluded).
fn changed_blocks(before: &[u8], after: &[u8]) -> Vec<u64> {
    before
        .chunks_exact(BLOCK_SIZE)
        .zip(after.chunks_exact(BLOCK_SIZE))
        .enumerate()
        .skip((FIRST_BLOCK_BYTE / BS) as usize)
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i as u64)
        .collect()
}

fn copy_block(path: &Path, from_image: &[u8], phys: u64) {
    let at = (phys * BS) as usize;
    file_write(path, phys * BS, &from_image[at..at + BLOCK_SIZE]);
}

/// The superblock slot holding the higher sequence (bytes 32..40 are cleartext).
fn current_slot(path: &Path) -> usize {
    let seq = |slot: usize| {
        let b = file_read(path, SUPERBLOCK_OFFSETS[slot] + 32, 8);
        u64::from_le_bytes(b.try_into().expect("8 bytes"))
    };
    usize::from(seq(1) > seq(0))
}

/// The header record's length (bytes 12..16 of a copy).
fn header_record_len(path: &Path, copy: usize) -> usize {
    let b = file_read(path, HEADER_OFFSETS[copy] + 12, 4);
    u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize
}

/// Rewrites header copy `copy` with `edit` applied and a fixed checksum (it is a plain
/// SHA-256: anyone can recompute it).
fn edit_header(path: &Path, copy: usize, edit: impl Fn(&mut [u8])) {
    let len = header_record_len(path, copy);
    let mut record = file_read(path, HEADER_OFFSETS[copy], len);
    edit(&mut record);
    let checksum = Sha256::digest(&record[..len - 32]);
    record[len - 32..].copy_from_slice(&checksum);
    file_write(path, HEADER_OFFSETS[copy], &record);
}

// ---- volumes ----------------------------------------------------------------------------

/// A volume with 300 blocks written by one commit, so that every non-zero block of the
/// block area is referenced by it.
fn written_volume(seed: u64) -> (TestVolume, Model) {
    let vol = TestVolume::new(VOLUME_SIZE);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Model::new();
    while model.len() < 300 {
        model.insert(rng.random_range(0..SPAN), 1);
    }
    let store = vol.open();
    for (&n, &s) in &model {
        store.write(LogicalBlock(n), &pattern(s, n)).expect("write");
    }
    store.commit().expect("commit");
    let allocated = store.space().allocated_blocks;
    store.close().expect("close");
    let image = std::fs::read(&vol.path).expect("read container");
    assert_eq!(
        nonzero_blocks(&image).len() as u64,
        allocated,
        "the non-zero blocks are exactly the allocated ones"
    );
    assert!(vol.fsck().is_clean());
    (vol, model)
}

/// Writes `versions` (logical → seed) in one commit; returns the new model.
fn commit_versions(vol: &TestVolume, model: &Model, versions: &Model) -> Model {
    let store = vol.open();
    for (&n, &s) in versions {
        store.write(LogicalBlock(n), &pattern(s, n)).expect("write");
    }
    store.commit().expect("commit");
    store.close().expect("close");
    let mut model = model.clone();
    model.extend(versions);
    model
}

// ---- what the volume must do after an attack --------------------------------------------

/// What the reads and fsck of a tampered volume gave.
struct Checked {
    /// Written blocks whose read failed, and the block named.
    failed: BTreeMap<u64, Damaged>,
    report: FsckReport,
}

impl Checked {
    fn bad_phys(&self) -> BTreeSet<u64> {
        self.report
            .bad_blocks
            .iter()
            .map(|b| phys_of(&b.what))
            .collect()
    }
}

fn phys_of(d: &Damaged) -> u64 {
    match d {
        Damaged::Data { phys, .. } | Damaged::Node { phys, .. } | Damaged::Bitmap { phys, .. } => {
            *phys
        }
    }
}

/// Names `got` for a message: which version of block `n` it is, if any.
fn identify(got: &[u8; BLOCK_SIZE], n: u64, versions: &[u64]) -> String {
    if got.iter().all(|&b| b == 0) {
        return "zeros".into();
    }
    versions
        .iter()
        .find(|&&s| *pattern(s, n) == *got)
        .map_or("unknown bytes".into(), |s| {
            format!("the version with seed {s}")
        })
}

/// Reopens the volume read-only and reads every block of `model`: each gives exactly its
/// bytes or `Integrity`. Runs fsck, and checks that the reads and fsck agree: a read fails
/// exactly when fsck reports a damaged block covering it, and names that block.
/// `versions` are every seed ever written, to name wrong bytes.
fn check_reads(vol: &TestVolume, model: &Model, versions: &[u64], ctx: &str) -> Checked {
    let store = BlockStore::open(vol.device(Access::ReadOnly), &vol.key(), read_only())
        .unwrap_or_else(|e| panic!("{ctx}: the volume does not open: {e}"));
    let mut failed = BTreeMap::new();
    let mut got = Box::new([0u8; BLOCK_SIZE]);
    for (&n, &s) in model {
        // Twice: a failure must not leave anything behind in the cache.
        let mut first: Option<Result<(), String>> = None;
        for _ in 0..2 {
            let outcome = match store.read(LogicalBlock(n), &mut got) {
                Ok(()) => {
                    assert!(
                        *got == *pattern(s, n),
                        "{ctx}: block {n} returned wrong bytes: {} instead of seed {s}",
                        identify(&got, n, versions)
                    );
                    Ok(())
                }
                Err(Error::Integrity(d)) => {
                    failed.insert(n, d.clone());
                    Err(d.to_string())
                }
                Err(e) => panic!("{ctx}: block {n}: an error other than Integrity: {e}"),
            };
            if let Some(f) = &first {
                assert_eq!(f, &outcome, "{ctx}: block {n} read twice");
            }
            first = Some(outcome);
        }
    }
    // Blocks never written: zeros, or Integrity when a node above them is damaged.
    let end = SPAN.min(store.logical_blocks());
    for n in (0..end).step_by(97).filter(|n| !model.contains_key(n)) {
        match store.read(LogicalBlock(n), &mut got) {
            Ok(()) => assert!(
                got.iter().all(|&b| b == 0),
                "{ctx}: unwritten block {n} is not zeros"
            ),
            Err(Error::Integrity(_)) => {}
            Err(e) => panic!("{ctx}: unwritten block {n}: {e}"),
        }
    }
    drop(store);
    let report = fsck(vol.device(Access::ReadOnly), &vol.key(), &|_, _| {})
        .unwrap_or_else(|e| panic!("{ctx}: fsck cannot check the volume: {e}"));
    for &n in model.keys() {
        let covering: Vec<&Damaged> = report
            .bad_blocks
            .iter()
            .filter(|b| b.lost.0 <= n && n < b.lost.1)
            .map(|b| &b.what)
            .collect();
        match failed.get(&n) {
            Some(d) => assert!(
                covering.contains(&d),
                "{ctx}: the read of block {n} named {d}, fsck reports {:?}",
                report.bad_blocks
            ),
            None => assert!(
                covering.is_empty(),
                "{ctx}: block {n} reads correctly, but fsck says {covering:?} lost it"
            ),
        }
    }
    Checked { failed, report }
}

/// Damage was found, and only in `touched` physical blocks.
fn assert_named(checked: &Checked, touched: &BTreeSet<u64>, ctx: &str) {
    let report = &checked.report;
    assert!(!report.is_clean(), "{ctx}: fsck finds nothing");
    let bad = checked.bad_phys();
    assert!(!bad.is_empty(), "{ctx}: fsck names no block: {report:?}");
    assert!(
        bad.is_subset(touched),
        "{ctx}: fsck names {bad:?}, the attack touched {touched:?}"
    );
}

// ---- the attacks ------------------------------------------------------------------------

/// One flipped byte in each allocated block in turn (data, tree nodes, space map): fsck
/// names exactly that block; reads below it fail, every other read is correct.
#[test]
fn a_flipped_byte_in_any_allocated_block_is_named() {
    let (vol, model) = written_volume(1);
    let image = std::fs::read(&vol.path).expect("read container");
    let blocks = nonzero_blocks(&image);
    let mut rng = StdRng::seed_from_u64(11);
    let mut kinds = BTreeSet::new();
    for &phys in &blocks {
        let offset = phys * BS + rng.random_range(0..BS);
        let ctx = format!("byte {offset} flipped (physical block {phys})");
        flip(&vol.path, offset, random_mask(&mut rng));
        let checked = check_reads(&vol, &model, &[1], &ctx);
        let names: Vec<&Damaged> = checked.report.bad_blocks.iter().map(|b| &b.what).collect();
        assert_eq!(
            checked.bad_phys(),
            BTreeSet::from([phys]),
            "{ctx}: fsck names {names:?}"
        );
        let what = &checked.report.bad_blocks[0].what;
        kinds.insert(match what {
            Damaged::Data { .. } => "data",
            Damaged::Node { .. } => "node",
            Damaged::Bitmap { .. } => "space map",
        });
        if let Damaged::Data { logical, .. } = what {
            assert_eq!(
                checked.failed.keys().copied().collect::<Vec<_>>(),
                vec![*logical],
                "{ctx}: only the damaged data block fails"
            );
        }
        copy_block(&vol.path, &image, phys);
    }
    assert_eq!(
        kinds.len(),
        3,
        "data, node and space-map blocks were all hit: {kinds:?}"
    );
    assert!(
        vol.fsck().is_clean(),
        "restoring the bytes restores the volume"
    );
}

/// Flipped bytes in several random allocated blocks at once.
#[test]
fn flipped_bytes_in_many_blocks_fail_only_what_they_cover() {
    let (vol, model) = written_volume(2);
    let image = std::fs::read(&vol.path).expect("read container");
    let blocks = nonzero_blocks(&image);
    for seed in 0..8u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let count = rng.random_range(2..=12);
        let touched: BTreeSet<u64> = (0..count)
            .map(|_| blocks[rng.random_range(0..blocks.len())])
            .collect();
        for &phys in &touched {
            flip(
                &vol.path,
                phys * BS + rng.random_range(0..BS),
                random_mask(&mut rng),
            );
        }
        let ctx = format!("seed {seed}: {touched:?} flipped");
        let checked = check_reads(&vol, &model, &[1], &ctx);
        assert_named(&checked, &touched, &ctx);
        std::fs::write(&vol.path, &image).expect("restore");
    }
}

/// Two allocated blocks swapped (each is valid ciphertext, in the wrong place).
#[test]
fn swapped_blocks_are_detected() {
    let (vol, model) = written_volume(3);
    let image = std::fs::read(&vol.path).expect("read container");
    let blocks = nonzero_blocks(&image);
    let mut rng = StdRng::seed_from_u64(33);
    for trial in 0..20 {
        let p = blocks[rng.random_range(0..blocks.len())];
        let q = blocks[rng.random_range(0..blocks.len())];
        if p == q {
            continue;
        }
        let at = |x: u64| &image[(x * BS) as usize..((x + 1) * BS) as usize];
        file_write(&vol.path, p * BS, at(q));
        file_write(&vol.path, q * BS, at(p));
        let ctx = format!("trial {trial}: physical blocks {p} and {q} swapped");
        let checked = check_reads(&vol, &model, &[1], &ctx);
        assert_named(&checked, &BTreeSet::from([p, q]), &ctx);
        copy_block(&vol.path, &image, p);
        copy_block(&vol.path, &image, q);
    }
    // A block copied over another (a duplicate of valid ciphertext).
    let (p, q) = (blocks[0], blocks[blocks.len() / 2]);
    copy_block(&vol.path, &image, p);
    file_write(
        &vol.path,
        q * BS,
        &image[(p * BS) as usize..((p + 1) * BS) as usize],
    );
    let ctx = format!("physical block {p} copied over {q}");
    let checked = check_reads(&vol, &model, &[1], &ctx);
    assert_named(&checked, &BTreeSet::from([q]), &ctx);
}

/// Replay: old contents of blocks the volume has since rewritten (with the current
/// superblocks kept) give current data or Integrity, never the old bytes.
#[test]
fn replayed_old_blocks_never_return_old_data() {
    // Small, so that the allocator wraps around and rewrites blocks of the first commit.
    let vol = TestVolume::new(4 << 20);
    let mut rng = StdRng::seed_from_u64(44);
    let mut model = Model::new();
    while model.len() < 200 {
        model.insert(rng.random_range(0..700), 1);
    }
    model = commit_versions(&vol, &Model::new(), &model);
    let old = std::fs::read(&vol.path).expect("read container");
    let old_blocks: BTreeSet<u64> = nonzero_blocks(&old).into_iter().collect();
    let mut versions = vec![1];
    // Rewrite until many blocks that held the first commit hold something else.
    let mut seed = 1;
    let (new, overwritten) = loop {
        seed += 1;
        versions.push(seed);
        let keys: Vec<u64> = model.keys().copied().collect();
        let rewrite: Model = (0..60)
            .map(|_| (keys[rng.random_range(0..keys.len())], seed))
            .collect();
        model = commit_versions(&vol, &model, &rewrite);
        let new = std::fs::read(&vol.path).expect("read container");
        let overwritten: Vec<u64> = changed_blocks(&old, &new)
            .into_iter()
            .filter(|p| old_blocks.contains(p))
            .collect();
        if overwritten.len() >= 100 {
            break (new, overwritten);
        }
        assert!(seed < 100, "the allocator never reuses blocks");
    };
    let changed = changed_blocks(&old, &new);
    assert!(vol.fsck().is_clean());

    // Everything that changed since the first commit, back to its old bytes.
    for &p in &changed {
        copy_block(&vol.path, &old, p);
    }
    let ctx = format!("{} changed blocks replayed", changed.len());
    let checked = check_reads(&vol, &model, &versions, &ctx);
    assert_named(&checked, &changed.iter().copied().collect(), &ctx);
    assert!(!checked.failed.is_empty(), "{ctx}: no read failed");
    std::fs::write(&vol.path, &new).expect("restore");

    // Only some of them: some reads still work, none returns old bytes.
    let mut failures = 0;
    for trial in 0..6 {
        let some: BTreeSet<u64> = overwritten
            .iter()
            .copied()
            .filter(|_| rng.random_ratio(1, 4 + trial))
            .collect();
        for &p in &some {
            copy_block(&vol.path, &old, p);
        }
        let ctx = format!("trial {trial}: {} blocks replayed", some.len());
        let checked = check_reads(&vol, &model, &versions, &ctx);
        // A replayed block the current tree no longer references changes nothing.
        if !checked.report.bad_blocks.is_empty() {
            assert_named(&checked, &some, &ctx);
        }
        failures += checked.failed.len();
        std::fs::write(&vol.path, &new).expect("restore");
    }
    assert!(failures > 0, "no partial replay was detected by a read");
    assert!(vol.fsck().is_clean());
}

/// A volume with two commits: `first`, then `second` rewriting some of its blocks.
fn two_commits() -> (TestVolume, Model, Model) {
    let (vol, first) = written_volume(5);
    let rewrite: Model = first.keys().step_by(3).map(|&n| (n, 2)).collect();
    let second = commit_versions(&vol, &first, &rewrite);
    (vol, first, second)
}

/// Bytes of a superblock slot worth flipping: magic, version, volume id, sequence, root
/// pointer, allocated count, binding, key check value, cursor, reserved, MAC.
const SUPERBLOCK_BYTES: [u64; 12] = [0, 9, 20, 32, 72, 90, 121, 140, 170, 205, 300, 500];

#[test]
fn a_damaged_current_superblock_falls_back_to_the_previous_commit() {
    let (vol, first, second) = two_commits();
    let image = std::fs::read(&vol.path).expect("read container");
    let current = current_slot(&vol.path);
    let mut rng = StdRng::seed_from_u64(55);
    for &byte in &SUPERBLOCK_BYTES {
        let ctx = format!("byte {byte} of the current superblock (slot {current}) flipped");
        flip(
            &vol.path,
            SUPERBLOCK_OFFSETS[current] + byte,
            random_mask(&mut rng),
        );
        match BlockStore::open(vol.device(Access::ReadOnly), &vol.key(), read_only()) {
            Ok(store) => {
                drop(store);
                // The previous commit, whole and exactly.
                let checked = check_reads(&vol, &first, &[1, 2], &ctx);
                assert!(checked.failed.is_empty(), "{ctx}: {:?}", checked.failed);
                let problems = &checked.report.metadata_problems;
                assert!(
                    problems
                        .iter()
                        .any(|p| p.contains(&format!("superblock slot {current}"))),
                    "{ctx}: fsck does not name the slot: {problems:?}"
                );
                assert!(
                    checked.report.bad_blocks.is_empty()
                        && checked.report.structure_problems.is_empty()
                );
            }
            Err(e) => panic!("{ctx}: the previous superblock is intact, yet: {e}"),
        }
        std::fs::write(&vol.path, &image).expect("restore");
    }
    // The other slot damaged: the current commit is used, and fsck names that slot.
    let other = 1 - current;
    for &byte in &SUPERBLOCK_BYTES {
        let ctx = format!("byte {byte} of the previous superblock (slot {other}) flipped");
        flip(
            &vol.path,
            SUPERBLOCK_OFFSETS[other] + byte,
            random_mask(&mut rng),
        );
        let checked = check_reads(&vol, &second, &[1, 2], &ctx);
        assert!(checked.failed.is_empty(), "{ctx}: {:?}", checked.failed);
        let problems = &checked.report.metadata_problems;
        assert!(
            problems
                .iter()
                .any(|p| p.contains(&format!("superblock slot {other}"))),
            "{ctx}: fsck does not name the slot: {problems:?}"
        );
        std::fs::write(&vol.path, &image).expect("restore");
    }
    // Both: a clean error.
    for &byte in &SUPERBLOCK_BYTES {
        for slot in [0, 1] {
            flip(
                &vol.path,
                SUPERBLOCK_OFFSETS[slot] + byte,
                random_mask(&mut rng),
            );
        }
        let err = BlockStore::open(vol.device(Access::ReadOnly), &vol.key(), read_only())
            .err()
            .unwrap_or_else(|| panic!("byte {byte} of both superblocks flipped: the volume opens"));
        assert!(
            matches!(err, Error::CorruptSuperblock(_) | Error::WrongKey),
            "byte {byte} of both superblocks flipped: {err}"
        );
        let err = fsck(vol.device(Access::ReadOnly), &vol.key(), &|_, _| {}).expect_err("fsck");
        assert!(
            matches!(err, Error::CorruptSuperblock(_) | Error::WrongKey),
            "{err}"
        );
        std::fs::write(&vol.path, &image).expect("restore");
    }
}

#[test]
fn a_damaged_header_copy_a_is_survived_and_both_are_refused() {
    let (vol, model) = written_volume(6);
    let image = std::fs::read(&vol.path).expect("read container");
    let len = header_record_len(&vol.path, 0) as u64;
    let mut rng = StdRng::seed_from_u64(66);
    for _ in 0..12 {
        let byte = rng.random_range(0..len);
        let ctx = format!("byte {byte} of header copy A flipped");
        flip(&vol.path, HEADER_OFFSETS[0] + byte, random_mask(&mut rng));
        let checked = check_reads(&vol, &model, &[1], &ctx);
        assert!(checked.failed.is_empty(), "{ctx}");
        let problems = &checked.report.metadata_problems;
        assert!(
            problems.iter().any(|p| p.contains("copy A"))
                && !problems.iter().any(|p| p.contains("copy B")),
            "{ctx}: {problems:?}"
        );
        // And in copy B too: no header, a clean error.
        let byte_b = rng.random_range(0..len);
        flip(&vol.path, HEADER_OFFSETS[1] + byte_b, random_mask(&mut rng));
        let ctx = format!("{ctx}, and byte {byte_b} of copy B");
        let err = BlockStore::open(vol.device(Access::ReadOnly), &vol.key(), read_only())
            .err()
            .unwrap_or_else(|| panic!("{ctx}: the volume opens"));
        assert!(
            matches!(
                err,
                Error::CorruptHeader(_) | Error::NotDomfs | Error::UnsupportedVersion(_)
            ),
            "{ctx}: {err}"
        );
        assert!(
            fsck(vol.device(Access::ReadOnly), &vol.key(), &|_, _| {}).is_err(),
            "{ctx}"
        );
        std::fs::write(&vol.path, &image).expect("restore");
    }
    // Copy B alone damaged: fsck names B.
    flip(&vol.path, HEADER_OFFSETS[1] + 20, 0x40);
    let checked = check_reads(&vol, &model, &[1], "copy B damaged");
    let problems = &checked.report.metadata_problems;
    assert!(
        problems.iter().any(|p| p.contains("copy B")),
        "{problems:?}"
    );
}

/// Header fields edited with a recomputed checksum: the superblock's binding hash (MAC'd
/// under the key) catches every field but the manager-signed ones.
#[test]
fn an_edited_header_with_a_fixed_checksum_is_refused() {
    let (vol, _model) = written_volume(7);
    let image = std::fs::read(&vol.path).expect("read container");
    // (what, byte range in the record, a new value)
    let edits: [(&str, usize, &[u8]); 5] = [
        ("creation time", 48, &[0x11; 8]),
        ("metadata", 60, b"X"),
        ("volume id", 16, &[0xee; 16]),
        ("key mode", 38, &2u16.to_le_bytes()),
        ("container size", 40, &(VOLUME_SIZE / 2).to_le_bytes()),
    ];
    for (what, at, value) in edits {
        for copies in [vec![0], vec![0, 1]] {
            for &copy in &copies {
                edit_header(&vol.path, copy, |r| {
                    r[at..at + value.len()].copy_from_slice(value)
                });
            }
            let ctx = format!("{what} edited in copies {copies:?}");
            let err = BlockStore::open(vol.device(Access::ReadOnly), &vol.key(), read_only())
                .err()
                .unwrap_or_else(|| panic!("{ctx}: the volume opens"));
            assert!(
                matches!(err, Error::CorruptHeader(_) | Error::CorruptSuperblock(_)),
                "{ctx}: {err}"
            );
            std::fs::write(&vol.path, &image).expect("restore");
        }
    }
}

#[test]
fn a_truncated_container_is_a_clean_error() {
    let (vol, _model) = written_volume(8);
    let image = std::fs::read(&vol.path).expect("read container");
    let lengths = [
        0,
        4,
        100,
        HEADER_OFFSETS[1] + 100,
        SUPERBLOCK_OFFSETS[0] + 100,
        SUPERBLOCK_OFFSETS[1] + 4096,
        FIRST_BLOCK_BYTE,
        VOLUME_SIZE / 2 + 1234,
        VOLUME_SIZE - BS,
        VOLUME_SIZE - 1,
    ];
    for len in lengths {
        let file = OpenOptions::new()
            .write(true)
            .open(&vol.path)
            .expect("open");
        file.set_len(len).expect("truncate");
        drop(file);
        let open = || BlockStore::open(vol.device(Access::ReadOnly), &vol.key(), read_only());
        let err = open()
            .err()
            .unwrap_or_else(|| panic!("truncated to {len}: the volume opens"));
        let check = fsck(vol.device(Access::ReadOnly), &vol.key(), &|_, _| {});
        let fsck_err = check
            .err()
            .unwrap_or_else(|| panic!("truncated to {len}: fsck runs"));
        for err in [&err, &fsck_err] {
            if len < 8 {
                // Not even the magic is left.
                assert!(
                    matches!(
                        err,
                        Error::NotDomfs | Error::Truncated { .. } | Error::Io { .. }
                    ),
                    "{len}: {err}"
                );
            } else {
                assert!(
                    matches!(err, Error::Truncated { .. } | Error::Io { .. }),
                    "truncated to {len}: {err}"
                );
            }
        }
        std::fs::write(&vol.path, &image).expect("restore");
    }
}

/// Another volume's header over this one: an error, never data (of either volume).
#[test]
fn another_volumes_header_is_refused() {
    let (vol, model) = written_volume(9);
    let image = std::fs::read(&vol.path).expect("read container");
    let other = TestVolume::new(VOLUME_SIZE);
    let store = other.open();
    for &n in model.keys() {
        store.write(LogicalBlock(n), &pattern(2, n)).expect("write");
    }
    store.close().expect("close");
    let other_image = std::fs::read(&other.path).expect("read other");

    // Both header copies (the first 128 KiB), this volume's superblocks kept.
    let headers = &other_image[..SUPERBLOCK_OFFSETS[0] as usize];
    file_write(&vol.path, 0, headers);
    for (who, key) in [
        ("this volume's key", vol.key()),
        ("the other volume's key", other.key()),
    ] {
        let err = BlockStore::open(vol.device(Access::ReadOnly), &key, read_only())
            .err()
            .unwrap_or_else(|| panic!("the other header, {who}: the volume opens"));
        assert!(
            matches!(
                err,
                Error::CorruptSuperblock(_) | Error::CorruptHeader(_) | Error::WrongKey
            ),
            "the other header, {who}: {err}"
        );
        assert!(fsck(vol.device(Access::ReadOnly), &key, &|_, _| {}).is_err());
    }

    // The other volume's whole fixed area (headers and superblocks) over this volume's
    // blocks: with the other key it opens as the other volume, and every read of a block
    // it wrote fails (the bytes there are this volume's), never returning anything.
    file_write(&vol.path, 0, &other_image[..FIRST_BLOCK_BYTE as usize]);
    let err = BlockStore::open(vol.device(Access::ReadOnly), &vol.key(), read_only())
        .err()
        .expect("this key does not open the other volume's superblocks");
    assert!(matches!(err, Error::WrongKey), "{err}");
    let spliced = TestVolume {
        dir: tempfile::tempdir().expect("tempdir"),
        path: vol.path.clone(),
        key_bytes: other.key_bytes,
    };
    let other_model: Model = model.keys().map(|&n| (n, 2)).collect();
    let checked = check_reads(
        &spliced,
        &other_model,
        &[1, 2],
        "the other volume's fixed area",
    );
    assert_eq!(checked.failed.len(), other_model.len(), "every read fails");
    assert!(!checked.report.is_clean());
    std::fs::write(&vol.path, &image).expect("restore");
    assert!(vol.fsck().is_clean());
}

/// The two superblock slots swapped, or the current one copied over the previous: the
/// current commit is still read, and fsck reports the slots. A read-write open refuses,
/// unless asked to recover, which repairs the slots.
#[test]
fn swapped_or_duplicated_superblock_slots_are_reported() {
    let (vol, _first, second) = two_commits();
    let image = std::fs::read(&vol.path).expect("read container");
    let slot = |i: usize| file_read(&vol.path, SUPERBLOCK_OFFSETS[i], SUPERBLOCK_LEN);
    let (s0, s1) = (slot(0), slot(1));
    let current = current_slot(&vol.path);
    let current_bytes = if current == 0 { &s0 } else { &s1 };
    for (what, new0, new1) in [
        ("slots swapped", &s1, &s0),
        (
            "current slot copied over the other",
            current_bytes,
            current_bytes,
        ),
    ] {
        file_write(&vol.path, SUPERBLOCK_OFFSETS[0], new0);
        file_write(&vol.path, SUPERBLOCK_OFFSETS[1], new1);
        let checked = check_reads(&vol, &second, &[1, 2], what);
        assert!(checked.failed.is_empty(), "{what}: {:?}", checked.failed);
        let problems = &checked.report.metadata_problems;
        assert!(
            problems.iter().any(|p| p.contains("superblock slot")),
            "{what}: fsck does not report the slots: {problems:?}"
        );
        // A read-write open refuses (it would overwrite the evidence) unless told to
        // recover, and then commits a new superblock into the right slot.
        let refused = BlockStore::open(
            vol.device(Access::ReadWrite),
            &vol.key(),
            StoreOptions::default(),
        );
        assert!(
            matches!(refused, Err(domfs::Error::DamagedSuperblock(_))),
            "{what}: a read-write open must refuse"
        );
        vol.open_with(StoreOptions {
            accept_damaged_superblock: true,
            ..StoreOptions::default()
        })
        .close()
        .expect("close");
        let checked = check_reads(&vol, &second, &[1, 2], what);
        assert!(checked.report.is_clean(), "{what}: {:?}", checked.report);
        std::fs::write(&vol.path, &image).expect("restore");
    }
}
