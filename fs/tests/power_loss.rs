//! Power loss and I/O errors: a crash at any write or sync leaves a volume that opens,
//! passes fsck, and holds exactly the last commit that returned, or the one in flight.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::devices::{CrashDevice, FaultyDevice, MemDevice, Op, Survivors};
use common::pattern;
use domfs::crypto::{BlockCodec, DomainKey, VolumeKeys};
use domfs::device::{Access, Device};
use domfs::format::SUPERBLOCK_OFFSETS;
use domfs::format::header::{KeyMode, read_header};
use domfs::store::fsck::fsck;
use domfs::store::geometry::Geometry;
use domfs::store::pointer::{ARITY, Pointer};
use domfs::store::slots::read_slots;
use domfs::store::{BlockStore, StoreOptions};
use domfs::types::{BLOCK_SIZE, LogicalBlock};
use domfs::volume::{CreateOptions, create_volume};
use domfs::{Error, Result};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// 4096 physical blocks.
const VOLUME_SIZE: usize = 16 << 20;
/// Logical blocks the workloads touch (several level-1 nodes).
const SPAN: u64 = 3000;
const KEY: [u8; 32] = [0x5a; 32];

/// Logical block → the `pattern` seed it holds (absent: zeros).
type Model = BTreeMap<u64, u64>;

fn key() -> DomainKey {
    DomainKey::from_bytes(&KEY).expect("key")
}

/// A small cache: reads go to the device, and transactions over 128 blocks commit by
/// themselves in the middle of `write`.
fn options() -> StoreOptions {
    StoreOptions {
        cache_bytes: 1 << 20,
        ..StoreOptions::default()
    }
}

fn read_only() -> StoreOptions {
    StoreOptions {
        access: Access::ReadOnly,
        ..options()
    }
}

/// A committed volume the crash tests start from.
struct Base {
    image: Vec<u8>,
    model: Model,
    /// The workloads write logical blocks `0..span`.
    span: u64,
}

fn create(size: usize) -> Arc<MemDevice> {
    let mem = Arc::new(MemDevice::new(size));
    create_volume(
        mem.as_ref(),
        CreateOptions {
            meta: b"power loss".to_vec(),
            key_mode: KeyMode::KeyFile,
        },
        Some(&key()),
    )
    .expect("create volume");
    mem
}

/// A volume holding 300 blocks written by its first commit, at the start of the block
/// area; scratch blocks written and discarded since have moved the allocation cursor
/// close to the end of the container. The workloads therefore wrap around and allocate
/// among live blocks that they also rewrite: a commit must not reuse a block the last
/// durable commit still references.
fn base() -> Base {
    let mem = create(VOLUME_SIZE);
    let store = BlockStore::open(mem.clone(), &key(), options()).expect("open");
    let mut rng = StdRng::seed_from_u64(0xba5e);
    let mut model = Model::new();
    while model.len() < 300 {
        let n = rng.random_range(0..SPAN);
        store.write(LogicalBlock(n), &pattern(1, n)).expect("write");
        model.insert(n, 1);
    }
    store.commit().expect("commit");
    let physical = store.geometry().physical_blocks;
    let scratch = SPAN..SPAN + 400;
    while store.superblock().alloc_cursor < physical - 600 {
        for n in scratch.clone().step_by(4) {
            store.write(LogicalBlock(n), &pattern(2, n)).expect("write");
        }
        store.commit().expect("commit");
        for n in scratch.clone().step_by(4) {
            store.discard(LogicalBlock(n)).expect("discard");
        }
        store.commit().expect("commit");
    }
    drop(store);
    Base {
        image: mem.snapshot(),
        model,
        span: SPAN,
    }
}

/// A 4 MiB volume (768 usable blocks) filled until a write said `NoSpace`: the workloads
/// run into the reserves, `NoSpace`, and commits started by a write to make room.
fn nearly_full_base() -> Base {
    let mem = create(4 << 20);
    let store = BlockStore::open(mem.clone(), &key(), options()).expect("open");
    let span = 766;
    let mut rng = StdRng::seed_from_u64(0xf011);
    let mut model = Model::new();
    // Until the first NoSpace: full, with only the reserves left.
    loop {
        let n = rng.random_range(0..span);
        match store.write(LogicalBlock(n), &pattern(1, n)) {
            Ok(()) => model.insert(n, 1),
            Err(Error::NoSpace) => break,
            Err(e) => panic!("filling the volume: {e}"),
        };
    }
    store.commit().expect("commit");
    drop(store);
    Base {
        image: mem.snapshot(),
        model,
        span,
    }
}

/// The first seed a workload of `seed` uses for its transactions' patterns (above every
/// seed of the base volume and of earlier rounds).
fn first_txn(seed: u64, round: u64) -> u64 {
    1_000_000 + seed * 1000 + round * 100
}

/// What a workload got to before its device failed.
struct Run {
    /// After the last commit that returned Ok (those started by `write` included).
    committed: Model,
    /// What the commit that returned an error would have made durable: the transaction,
    /// or, for a commit started by a write to make room, possibly the transaction without
    /// that write.
    in_flight: Vec<Model>,
    error: Option<Error>,
}

impl Run {
    fn failed(committed: Model, in_flight: Vec<Model>, error: Error) -> Self {
        Self {
            committed,
            in_flight,
            error: Some(error),
        }
    }
}

/// Opens the store on `dev` and runs `txns` random transactions over blocks `0..span`,
/// each committed. `NoSpace` is an answer, not a failure: that write is dropped.
fn workload(
    dev: Arc<dyn Device>,
    start: &Model,
    span: u64,
    (seed, round): (u64, u64),
    txns: u64,
) -> Run {
    let mut rng = StdRng::seed_from_u64(seed ^ (round << 32));
    let mut committed = start.clone();
    // Half of the writes rewrite a block of the starting state.
    let live: Vec<u64> = start.keys().copied().collect();
    let store = match BlockStore::open(dev, &key(), options()) {
        Ok(store) => store,
        Err(e) => return Run::failed(committed, Vec::new(), e),
    };
    for t in 0..txns {
        let txn = first_txn(seed, round) + t;
        let mut current = committed.clone();
        let writes = if rng.random_ratio(1, 10) {
            rng.random_range(100..300)
        } else {
            rng.random_range(1..40)
        };
        for _ in 0..writes {
            let n = if !live.is_empty() && rng.random_bool(0.5) {
                live[rng.random_range(0..live.len())]
            } else {
                rng.random_range(0..span)
            };
            let sequence = store.superblock().sequence;
            let without = current.clone();
            let result = if rng.random_ratio(1, 8) {
                current.remove(&n);
                store.discard(LogicalBlock(n))
            } else {
                current.insert(n, txn);
                store.write(LogicalBlock(n), &pattern(txn, n))
            };
            let committed_by_itself = store.superblock().sequence != sequence;
            match result {
                Ok(()) if committed_by_itself => {
                    // Either the transaction grew past the dirty limit (the commit took
                    // this write), or space was short (the commit came first).
                    committed = if store.space().dirty_blocks == 0 {
                        current.clone()
                    } else {
                        without
                    };
                }
                Ok(()) => {}
                Err(Error::NoSpace) => {
                    current = without;
                    if committed_by_itself {
                        committed = current.clone();
                    }
                }
                Err(e) => return Run::failed(committed, vec![without, current], e),
            }
        }
        match store.commit() {
            Ok(_) => committed = current,
            Err(e) => return Run::failed(committed, vec![current], e),
        }
    }
    Run {
        committed,
        in_flight: Vec::new(),
        error: None,
    }
}

/// Which state a recovered volume must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Committed,
    InFlight,
    Either,
}

/// Which pattern seed `got` is, for messages.
fn identify(got: &[u8; BLOCK_SIZE], n: u64, models: &[&Model]) -> String {
    if got.iter().all(|&b| b == 0) {
        return "zeros".into();
    }
    for model in models {
        if let Some(&s) = model.get(&n)
            && *pattern(s, n) == *got
        {
            return format!("pattern seed {s}");
        }
    }
    "unknown bytes".into()
}

/// Checks a post-crash image: fsck is clean, it opens, and blocks `0..span` hold
/// `committed` or one of `in_flight` exactly (as `expect` allows). Returns the device and
/// the state it holds.
fn check_recovered(
    image: Vec<u8>,
    committed: &Model,
    in_flight: &[Model],
    expect: Expect,
    (span, ctx): (u64, &str),
) -> (Arc<MemDevice>, Model) {
    let mem = Arc::new(MemDevice::from_bytes(image));
    let report = fsck(mem.clone(), &key(), &|_, _| {})
        .unwrap_or_else(|e| panic!("{ctx}: fsck cannot check the crashed volume: {e}"));
    assert!(
        report.is_clean(),
        "{ctx}: the crashed volume is not clean: {report:?}"
    );
    let store = BlockStore::open(mem.clone(), &key(), read_only())
        .unwrap_or_else(|e| panic!("{ctx}: the crashed volume does not open: {e}"));
    // The candidates: committed first, then the states in flight.
    let mut candidates: Vec<&Model> = Vec::new();
    if expect != Expect::InFlight {
        candidates.push(committed);
    }
    if expect != Expect::Committed {
        candidates.extend(in_flight);
    }
    let mut matching = vec![true; candidates.len()];
    let mut mismatches = Vec::new();
    let mut got = Box::new([0u8; BLOCK_SIZE]);
    for n in 0..span {
        store
            .read(LogicalBlock(n), &mut got)
            .unwrap_or_else(|e| panic!("{ctx}: reading block {n} after the crash: {e}"));
        let mut any_failed = false;
        for (model, matches) in candidates.iter().zip(&mut matching) {
            let ok = match model.get(&n) {
                Some(&s) => *pattern(s, n) == *got,
                None => *got == [0u8; BLOCK_SIZE],
            };
            any_failed |= *matches && !ok;
            *matches &= ok;
        }
        if any_failed && mismatches.len() < 6 {
            let all: Vec<&Model> = std::iter::once(committed).chain(in_flight).collect();
            mismatches.push(format!(
                "block {n}: got {}, committed {:?}, in flight {:?}",
                identify(&got, n, &all),
                committed.get(&n),
                in_flight.iter().map(|m| m.get(&n)).collect::<Vec<_>>(),
            ));
        }
    }
    let state = candidates
        .iter()
        .zip(&matching)
        .find(|(_, m)| **m)
        .map(|(model, _)| (*model).clone())
        .unwrap_or_else(|| {
            panic!(
                "{ctx}: the recovered volume holds neither the last commit nor the one in \
                 flight (expected {expect:?}); first mismatches: {mismatches:#?}"
            )
        });
    assert_eq!(
        report.data_blocks,
        state.len() as u64,
        "{ctx}: fsck's data block count"
    );
    (mem, state)
}

/// The recovered volume takes new writes and rewrites, commits them, and still reads and
/// checks clean. New blocks may meet `NoSpace` on a full volume; rewrites may not.
fn keep_writing(mem: Arc<MemDevice>, mut state: Model, (span, seed): (u64, u64), ctx: &str) {
    let store = BlockStore::open(mem.clone(), &key(), options())
        .unwrap_or_else(|e| panic!("{ctx}: read-write open after the crash: {e}"));
    let mut rng = StdRng::seed_from_u64(seed);
    let txn = first_txn(seed, 9);
    let existing: Vec<u64> = state.keys().copied().collect();
    for i in 0..40 {
        let rewrite = i % 2 == 0 && !existing.is_empty();
        let n = if rewrite {
            existing[rng.random_range(0..existing.len())]
        } else {
            rng.random_range(0..span)
        };
        match store.write(LogicalBlock(n), &pattern(txn, n)) {
            Ok(()) => {
                state.insert(n, txn);
            }
            Err(Error::NoSpace) if !state.contains_key(&n) => {}
            Err(e) => panic!("{ctx}: write of block {n} after recovery: {e}"),
        }
    }
    store
        .commit()
        .unwrap_or_else(|e| panic!("{ctx}: commit after recovery: {e}"));
    drop(store);
    let report = fsck(mem.clone(), &key(), &|_, _| {}).expect("fsck");
    assert!(
        report.is_clean(),
        "{ctx}: after writing on the recovered volume: {report:?}"
    );
    let store = BlockStore::open(mem, &key(), read_only()).expect("reopen");
    let mut got = Box::new([0u8; BLOCK_SIZE]);
    for (&n, &s) in &state {
        store.read(LogicalBlock(n), &mut got).expect("read");
        assert!(
            *got == *pattern(s, n),
            "{ctx}: block {n} after writing on the recovered volume"
        );
    }
}

fn is_power_loss(e: &Error) -> bool {
    matches!(e, Error::Io { .. })
}

/// Crashes `seeds` times twice in a row (the second time on the recovered volume) at
/// random writes and syncs, and checks each recovery.
/// Returns how many recoveries found the commit in flight.
fn random_crashes(base: &Base, seeds: u64, txns: u64) -> u64 {
    let span = base.span;
    // How many writes and syncs a workload issues, to spread the crash points over them.
    let dry = Arc::new(CrashDevice::new(base.image.clone(), 0));
    let run = workload(dry.clone(), &base.model, span, (0, 0), txns);
    assert!(run.error.is_none(), "dry run: {:?}", run.error);
    let total_ops = dry.ops();
    assert!(
        total_ops > 40,
        "a workload issues only {total_ops} operations"
    );

    let (mut in_open, mut at_commit, mut none, mut new_state) = (0u64, 0u64, 0u64, 0u64);
    for seed in 0..seeds {
        let mut image = base.image.clone();
        let mut model = base.model.clone();
        let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9));
        for round in 0..2u64 {
            let ctx = format!("seed {seed} round {round}");
            let dev = Arc::new(CrashDevice::new(image, seed * 2 + round));
            let countdown = rng.random_range(0..total_ops + 4);
            dev.arm(countdown);
            let run = workload(dev.clone(), &model, span, (seed, round), txns);
            match &run.error {
                Some(e) => assert!(is_power_loss(e), "{ctx}: unexpected error {e}"),
                None => {
                    none += 1;
                    dev.power_cut();
                }
            }
            if run.error.is_some() && run.in_flight.is_empty() {
                in_open += 1;
            } else if run.error.is_some() {
                at_commit += 1;
            }
            let image_after = dev.take_post_crash_image().expect("the power was cut");
            let ctx = format!(
                "{ctx} (crash at operation {countdown}: {:?})",
                dev.log().last()
            );
            let (mem, state) = check_recovered(
                image_after,
                &run.committed,
                &run.in_flight,
                Expect::Either,
                (span, &ctx),
            );
            new_state += u64::from(state != run.committed);
            model = state;
            image = Arc::try_unwrap(mem).map_or_else(|m| m.snapshot(), MemDevice::into_bytes);
        }
        if seed % 10 == 0 {
            let mem = Arc::new(MemDevice::from_bytes(image));
            keep_writing(mem, model, (span, seed), &format!("seed {seed}"));
        }
    }
    eprintln!(
        "{} crashes: {in_open} while opening, {at_commit} in a commit ({new_state} recovered \
         to the commit in flight), {none} after the workload",
        seeds * 2
    );
    assert!(
        at_commit > seeds,
        "too few crashes landed in a commit ({at_commit})"
    );
    assert!(new_state < at_commit, "{new_state} of {at_commit}");
    new_state
}

/// Crash, recover, crash the recovered volume again, recover: at random points, many seeds.
#[test]
fn random_crashes_recover_to_a_commit_boundary() {
    let new_state = random_crashes(&base(), 200, 10);
    assert!(new_state > 0, "no crash landed after a superblock write");
}

/// The same on a nearly full volume: reserves, `NoSpace`, commits started to make room.
#[test]
fn random_crashes_on_a_nearly_full_volume() {
    random_crashes(&nearly_full_base(), 60, 10);
}

/// A crash at each write and sync of `BlockStore::open` (it commits a superblock).
#[test]
fn crash_while_opening() {
    let base = base();
    for seed in 0..24u64 {
        let ctx = format!("seed {seed}");
        let dev = Arc::new(CrashDevice::new(base.image.clone(), seed));
        // 0: at the superblock write, 1: at its sync, 2: at the first write of a commit.
        dev.arm(seed % 3);
        let run = workload(dev.clone(), &base.model, base.span, (seed, 0), 2);
        let err = run.error.unwrap_or_else(|| panic!("{ctx}: no crash"));
        assert!(is_power_loss(&err), "{ctx}: {err}");
        if seed % 3 < 2 {
            assert!(run.in_flight.is_empty(), "{ctx}: the open did not fail");
        }
        // No superblock of a new tree was written: the state is the base volume's.
        let image = dev.post_crash_image().expect("crashed");
        let (mem, state) = check_recovered(
            image,
            &base.model,
            &run.in_flight,
            Expect::Committed,
            (base.span, &ctx),
        );
        keep_writing(mem, state, (base.span, seed), &ctx);
    }
}

/// A crash exactly at each superblock write of a workload and at the sync after it, with
/// the write lost or kept: lost gives exactly the previous commit, kept exactly the new one.
/// A crash at the data sync gives the previous commit whatever reached the disk.
#[test]
fn crash_at_the_superblock_write_is_the_commit_point() {
    let base = base();
    let seed = 77;
    const TXNS: u64 = 8;
    let dry = Arc::new(CrashDevice::new(base.image.clone(), seed));
    let dry_run = workload(dry.clone(), &base.model, base.span, (seed, 0), TXNS);
    assert!(dry_run.error.is_none());
    let log = dry.log();
    let is_superblock = |op: &Op| match op {
        Op::Write { offset, len } => SUPERBLOCK_OFFSETS.contains(offset) && *len == 512,
        Op::Sync => false,
    };
    let is_data_write = |op: &Op| matches!(op, Op::Write { .. }) && !is_superblock(op);
    // A commit's superblock follows its data writes and their sync; the others (the one
    // `open` writes, generation marks) change no content.
    let mut cases = Vec::new();
    let mut tree_commits = 0;
    for i in 0..log.len() {
        if !is_superblock(&log[i]) {
            continue;
        }
        let commit = i >= 2 && log[i - 1] == Op::Sync && is_data_write(&log[i - 2]);
        tree_commits += usize::from(commit);
        for keep in [false, true] {
            let expect = if keep && commit {
                Expect::InFlight
            } else {
                Expect::Committed
            };
            cases.push((i as u64, keep, "superblock write", expect));
            cases.push((
                i as u64 + 1,
                keep,
                "sync after the superblock write",
                expect,
            ));
        }
        if commit {
            for keep in [false, true] {
                cases.push((i as u64 - 1, keep, "data sync", Expect::Committed));
            }
        }
    }
    assert!(tree_commits >= TXNS as usize, "{log:?}");
    for (at, keep, what, expect) in cases {
        let ctx = format!(
            "crash at operation {at} ({what}), unsynced writes {}",
            if keep { "kept" } else { "lost" }
        );
        let dev = Arc::new(CrashDevice::new(base.image.clone(), seed));
        dev.arm(at);
        dev.set_survivors(Survivors::Probability(if keep { 1.0 } else { 0.0 }), false);
        let run = workload(dev.clone(), &base.model, base.span, (seed, 0), TXNS);
        let seen = dev.log();
        assert_eq!(
            &seen[..],
            &log[..seen.len()],
            "{ctx}: the workload is not deterministic"
        );
        assert_eq!(seen.len() as u64, at + 1, "{ctx}");
        let err = run
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("{ctx}: no crash"));
        assert!(is_power_loss(err), "{ctx}: {err}");
        if expect == Expect::InFlight {
            assert!(!run.in_flight.is_empty(), "{ctx}: no commit in flight");
        }
        let image = dev.post_crash_image().expect("crashed");
        let (mem, state) = check_recovered(
            image,
            &run.committed,
            &run.in_flight,
            expect,
            (base.span, &ctx),
        );
        if keep && what == "data sync" {
            keep_writing(mem, state, (base.span, seed + at), &ctx);
        }
    }
}

/// Every block the current tree of `image` references: physical block → (generation,
/// ciphertext). Walks the tree with the key, verifying each block.
fn live_blocks(image: &[u8]) -> BTreeMap<u64, (u64, Vec<u8>)> {
    let mem = MemDevice::from_bytes(image.to_vec());
    let header = read_header(&mem).expect("header").header;
    let keys = VolumeKeys::derive(&key(), &header.volume_id);
    let slots = read_slots(&mem, &keys, &header).expect("slots");
    let sb = slots.current().expect("a superblock").clone();
    let geometry = Geometry::for_container(header.container_size).expect("geometry");
    let codec = BlockCodec::new(keys, header.volume_id);
    let mut live = BTreeMap::new();
    let mut stack = vec![(geometry.root(), sb.root)];
    while let Some((id, ptr)) = stack.pop() {
        if ptr.is_null() {
            continue;
        }
        let mut block = Box::new([0u8; BLOCK_SIZE]);
        mem.read_at(&mut block[..], ptr.phys.byte_offset())
            .expect("read");
        let ciphertext = block.to_vec();
        codec
            .open(ptr.phys, ptr.generation, &ptr.tag, &mut block)
            .unwrap_or_else(|_| panic!("{id:?} at {} does not verify", ptr.phys));
        let before = live.insert(ptr.phys.0, (ptr.generation.0, ciphertext));
        assert!(before.is_none(), "{} referenced twice", ptr.phys);
        if id.level > 0 {
            for slot in 0..ARITY {
                let child = id.child(slot);
                if child.level > 0 || child.index < geometry.leaves() {
                    stack.push((child, Pointer::read_entry(&block, slot)));
                }
            }
        }
    }
    live
}

/// A commit lost to a crash after its blocks reached the disk leaves them there; the
/// commit that replaces it after recovery reuses those physical blocks, but never their
/// write generations (the XTS tweak would repeat with other plaintext).
#[test]
fn generations_of_a_lost_commit_are_never_reused() {
    let base = base();
    let seed = 78;
    const TXNS: u64 = 4;
    let dry = Arc::new(CrashDevice::new(base.image.clone(), seed));
    assert!(
        workload(dry.clone(), &base.model, base.span, (seed, 0), TXNS)
            .error
            .is_none()
    );
    let log = dry.log();
    // The superblock write of the last commit: everything before it is synced.
    let last_superblock = log
        .iter()
        .rposition(
            |op| matches!(op, Op::Write { offset, .. } if SUPERBLOCK_OFFSETS.contains(offset)),
        )
        .expect("a superblock write");
    // The lost commit as it would have been: the dry run completed it.
    dry.power_cut();
    let lost = live_blocks(&dry.take_post_crash_image().expect("image"));

    let dev = Arc::new(CrashDevice::new(base.image.clone(), seed));
    dev.arm(last_superblock as u64);
    dev.set_survivors(Survivors::Probability(0.0), false);
    let run = workload(dev.clone(), &base.model, base.span, (seed, 0), TXNS);
    assert!(run.error.is_some() && run.in_flight.len() == 1);
    let image = dev.take_post_crash_image().expect("crashed");
    let (mem, _) = check_recovered(
        image,
        &run.committed,
        &run.in_flight,
        Expect::Committed,
        (base.span, "lost commit"),
    );
    // The blocks of the lost transaction again, with other data: the allocator hands
    // out the same physical blocks.
    let in_flight = &run.in_flight[0];
    let changed: BTreeSet<u64> = in_flight
        .keys()
        .chain(run.committed.keys())
        .filter(|n| in_flight.get(n) != run.committed.get(n))
        .copied()
        .collect();
    let store = BlockStore::open(mem.clone(), &key(), options()).expect("open");
    for &n in &changed {
        store
            .write(LogicalBlock(n), &pattern(42, n))
            .expect("write");
    }
    store.commit().expect("commit");
    drop(store);
    let after = live_blocks(&mem.snapshot());
    let mut reused_phys = 0;
    for (phys, (generation, ciphertext)) in &after {
        if let Some((lost_generation, lost_ciphertext)) = lost.get(phys)
            && lost_ciphertext != ciphertext
        {
            reused_phys += 1;
            assert_ne!(
                generation, lost_generation,
                "physical block {phys} rewritten with the generation of the lost commit"
            );
        }
    }
    assert!(
        reused_phys > 0,
        "the test never reused a block of the lost commit"
    );
}

/// After a failed sync or write the store refuses everything (the kernel may have dropped
/// the dirty pages) and the volume reopens clean at the last good commit.
#[test]
fn a_failed_sync_or_write_stops_the_store_and_the_last_commit_survives() {
    let base = base();
    for fault in ["sync", "write"] {
        let mem = Arc::new(MemDevice::from_bytes(base.image.clone()));
        let faulty = Arc::new(FaultyDevice::new(mem.clone()));
        let store = BlockStore::open(faulty.clone(), &key(), options()).expect("open");
        let mut good = base.model.clone();
        for n in 0..50 {
            store.write(LogicalBlock(n), &pattern(1, n)).expect("write");
            good.insert(n, 1);
        }
        store.commit().expect("commit");
        for n in 25..75 {
            store.write(LogicalBlock(n), &pattern(2, n)).expect("write");
        }
        match fault {
            "sync" => faulty.set_fail_syncs(true),
            _ => faulty.set_fail_writes(true),
        }
        let err = store.commit().expect_err("the commit must fail");
        assert!(matches!(err, Error::Io { .. }), "{fault}: {err}");
        faulty.set_fail_syncs(false);
        faulty.set_fail_writes(false);
        let block = pattern(3, 0);
        let refused: [(&str, Result<()>); 3] = [
            ("write", store.write(LogicalBlock(0), &block)),
            ("discard", store.discard(LogicalBlock(1))),
            ("commit", store.commit().map(|_| ())),
        ];
        for (what, result) in refused {
            assert!(
                matches!(result, Err(Error::Failed)),
                "{fault}: {what} after the failure: {result:?}"
            );
        }
        drop(store);
        let (mem, state) = check_recovered(
            mem.snapshot(),
            &good,
            &[],
            Expect::Committed,
            (base.span, fault),
        );
        keep_writing(mem, state, (base.span, 5), fault);
    }
}

/// A read error is reported as an I/O error, not as tampering, and does not stick.
#[test]
fn a_read_error_is_io_not_integrity() {
    let base = base();
    let mem = Arc::new(MemDevice::from_bytes(base.image.clone()));
    let faulty = Arc::new(FaultyDevice::new(mem.clone()));
    let store = BlockStore::open(faulty.clone(), &key(), read_only()).expect("open");
    let (&n, &s) = base.model.iter().next().expect("a block");
    store.drop_caches();
    faulty.set_fail_reads(true);
    let mut got = Box::new([0u8; BLOCK_SIZE]);
    let err = store
        .read(LogicalBlock(n), &mut got)
        .expect_err("read must fail");
    assert!(matches!(err, Error::Io { .. }), "{err}");
    let err = fsck(faulty.clone(), &key(), &|_, _| {}).expect_err("fsck cannot read");
    assert!(matches!(err, Error::Io { .. }), "{err}");
    faulty.set_fail_reads(false);
    store
        .read(LogicalBlock(n), &mut got)
        .expect("read after the error");
    assert!(*got == *pattern(s, n));
}
