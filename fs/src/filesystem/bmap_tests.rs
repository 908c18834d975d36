//! Tests of the block map (see `bmap.rs`).

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
struct MemIo {
    blocks: Mutex<HashMap<u64, Box<Block>>>,
    reads: AtomicU64,
    /// Some(n): the write after n more successful ones fails.
    fail_write_after: Mutex<Option<u64>>,
}

impl BlockIo for MemIo {
    fn read_block(&self, block: u64, out: &mut Block) -> Result<()> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        match self.blocks.lock().unwrap().get(&block) {
            Some(d) => out.copy_from_slice(&d[..]),
            None => out.fill(0),
        }
        Ok(())
    }
    fn write_block(&self, block: u64, data: &Block) -> Result<()> {
        let mut fail = self.fail_write_after.lock().unwrap();
        if let Some(n) = *fail {
            if n == 0 {
                return Err(Error::io("test write", std::io::Error::other("injected")));
            }
            *fail = Some(n - 1);
        }
        self.blocks.lock().unwrap().insert(block, Box::new(*data));
        Ok(())
    }
    fn discard_block(&self, block: u64) -> Result<()> {
        self.blocks.lock().unwrap().remove(&block);
        Ok(())
    }
}

#[derive(Default)]
struct MemAlloc {
    next: u64,
    used: HashSet<u64>,
    /// Some(n): n more allocations succeed, then NoSpace.
    fail_after: Option<u64>,
    hints: Vec<u64>,
}

impl BlockAlloc for MemAlloc {
    fn alloc(&mut self, hint: u64) -> Result<u64> {
        if let Some(n) = self.fail_after {
            if n == 0 {
                return Err(Error::NoSpace);
            }
            self.fail_after = Some(n - 1);
        }
        self.hints.push(hint);
        self.next += 1;
        self.used.insert(self.next);
        Ok(self.next)
    }
    fn free(&mut self, block: u64) -> Result<()> {
        if self.used.remove(&block) {
            Ok(())
        } else {
            Err(Error::CorruptFilesystem(format!("double free of {block}")))
        }
    }
}

fn owned(map: &BlockMap, io: &MemIo) -> HashSet<u64> {
    let mut set = HashSet::new();
    map.for_each_block(io, &mut |b, indirect| {
        assert!(set.insert(b), "block {b} reachable twice");
        if indirect {
            assert!(
                io.blocks.lock().unwrap().contains_key(&b),
                "indirect {b} unwritten"
            );
        }
        Ok(())
    })
    .unwrap();
    set
}

/// for_each matches the model in order; reachable blocks are exactly the used ones.
fn check(map: &BlockMap, io: &MemIo, alloc: &MemAlloc, model: &BTreeMap<u64, u64>) {
    let mut seen = Vec::new();
    map.for_each(io, &mut |i, b| {
        seen.push((i, b));
        Ok(())
    })
    .unwrap();
    let want: Vec<_> = model.iter().map(|(&i, &b)| (i, b)).collect();
    assert_eq!(seen, want);
    assert_eq!(owned(map, io), alloc.used);
}

fn random_index(rng: &mut StdRng) -> u64 {
    match rng.random_range(0..3) {
        0 => rng.random_range(0..2_000),
        1 => rng.random_range(0..100_000),
        _ => rng.random_range(0..10_000_000_000),
    }
}

#[test]
fn random_against_model() {
    for seed in 0..6u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let (io, mut alloc) = (MemIo::default(), MemAlloc::default());
        let mut map = BlockMap::default();
        let mut model = BTreeMap::new();
        let mut count = 0u64; // allocated − freed, as an inode would keep it
        for step in 0..1500 {
            let op = rng.random_range(0..100);
            if op < 65 {
                let index = random_index(&mut rng);
                let m = map.get_or_alloc(&io, &mut alloc, index, index).unwrap();
                match model.get(&index) {
                    Some(&b) => assert_eq!(
                        m,
                        Mapped {
                            block: b,
                            fresh: false,
                            allocated: 0
                        }
                    ),
                    None => {
                        assert!(m.fresh && m.allocated >= 1);
                        model.insert(index, m.block);
                    }
                }
                count += m.allocated;
            } else if op < 82 {
                let index = if rng.random_bool(0.5) && !model.is_empty() {
                    *model.keys().nth(rng.random_range(0..model.len())).unwrap()
                } else {
                    random_index(&mut rng)
                };
                assert_eq!(map.get(&io, index).unwrap(), model.get(&index).copied());
            } else {
                let start = random_index(&mut rng);
                let end = match rng.random_range(0..20) {
                    0 => u64::MAX,
                    1..=4 => start + rng.random_range(0..10_000_000),
                    _ => start + rng.random_range(0..3_000),
                };
                let gone: Vec<u64> = model.range(start..end).map(|(&i, _)| i).collect();
                let before = alloc.used.len() as u64;
                let freed = map.punch(&io, &mut alloc, start, end).unwrap();
                assert_eq!(before - alloc.used.len() as u64, freed);
                assert!(freed >= gone.len() as u64);
                for i in gone {
                    model.remove(&i);
                }
                count -= freed;
            }
            assert_eq!(count, alloc.used.len() as u64);
            if step % 10 == 0 {
                check(&map, &io, &alloc, &model);
            }
        }
        check(&map, &io, &alloc, &model);
        let freed = map.punch(&io, &mut alloc, 0, u64::MAX).unwrap();
        assert_eq!(freed, count);
        assert_eq!(map, BlockMap::default());
        assert!(alloc.used.is_empty(), "leak: {:?}", alloc.used);
        assert!(io.blocks.lock().unwrap().is_empty());
    }
}

#[test]
fn growth_keeps_data_and_for_each_orders() {
    let (io, mut alloc) = (MemIo::default(), MemAlloc::default());
    let mut map = BlockMap::default();
    let mut model = BTreeMap::new();
    let indices = [
        0,
        1,
        511,
        512,
        262_143,
        262_144,
        1_000_000_000,
        MAX_FILE_BLOCKS - 1,
    ];
    let heights = [0, 1, 1, 2, 2, 3, 4, 5];
    for (&index, &h) in indices.iter().zip(&heights) {
        let m = map.get_or_alloc(&io, &mut alloc, index, 0).unwrap();
        assert!(m.fresh);
        model.insert(index, m.block);
        assert_eq!(map.height, h);
        for (&i, &b) in &model {
            assert_eq!(map.get(&io, i).unwrap(), Some(b));
        }
        check(&map, &io, &alloc, &model);
    }
    // An empty map takes the needed height directly.
    let mut empty = BlockMap { height: 3, root: 0 };
    let m = empty.get_or_alloc(&io, &mut alloc, 5, 0).unwrap();
    assert_eq!((empty.height, empty.root, m.allocated), (1, m.block - 1, 2));
    assert_eq!(empty.get(&io, 5).unwrap(), Some(m.block));
    assert_eq!(empty.get(&io, 512).unwrap(), None);
}

#[test]
fn hints_stay_local() {
    let (io, mut alloc) = (MemIo::default(), MemAlloc::default());
    let mut map = BlockMap::default();
    map.get_or_alloc(&io, &mut alloc, 1000, 77).unwrap();
    // Level-2 root (hint), its level-1 child (hint = parent 1), data (hint).
    assert_eq!(alloc.hints, vec![77, 1, 77]);
}

#[test]
fn too_large() {
    let (io, mut alloc) = (MemIo::default(), MemAlloc::default());
    let mut map = BlockMap::default();
    for index in [MAX_FILE_BLOCKS, u64::MAX] {
        let r = map.get_or_alloc(&io, &mut alloc, index, 0);
        assert!(matches!(r, Err(Error::Posix(Posix::FileTooLarge))));
        assert_eq!(map.get(&io, index).unwrap(), None);
    }
    assert!(alloc.used.is_empty());
}

fn small_map(io: &MemIo, alloc: &mut MemAlloc) -> (BlockMap, BTreeMap<u64, u64>) {
    let mut map = BlockMap::default();
    let mut model = BTreeMap::new();
    for i in [0, 7, 700] {
        model.insert(i, map.get_or_alloc(io, alloc, i, 0).unwrap().block);
    }
    (map, model)
}

#[test]
fn no_space_midway_leaves_map_unchanged() {
    // Growth (height 2 → 4: two new roots, three path blocks, data), link into an
    // existing indirect block, and an empty map.
    for (index, total) in [(10_000_000_000u64, 6u64), (300, 1), (600_000, 4)] {
        for k in 0..=total {
            let (io, mut alloc) = (MemIo::default(), MemAlloc::default());
            let (mut map, mut model) = small_map(&io, &mut alloc);
            let (before, used) = (map, alloc.used.clone());
            alloc.fail_after = Some(k);
            let r = map.get_or_alloc(&io, &mut alloc, index, 0);
            if k < total {
                assert!(matches!(r, Err(Error::NoSpace)), "{index} {k}: {r:?}");
                assert_eq!(map, before);
                assert_eq!(alloc.used, used);
            } else {
                let m = r.unwrap();
                assert_eq!(m.allocated, total);
                model.insert(index, m.block);
            }
            check(&map, &io, &alloc, &model);
            alloc.fail_after = None;
            map.punch(&io, &mut alloc, 0, u64::MAX).unwrap();
            assert_eq!(map, BlockMap::default());
            assert!(alloc.used.is_empty());
        }
    }
    let (io, mut alloc) = (
        MemIo::default(),
        MemAlloc {
            fail_after: Some(2),
            ..Default::default()
        },
    );
    let mut map = BlockMap::default();
    assert!(matches!(
        map.get_or_alloc(&io, &mut alloc, 1 << 20, 0),
        Err(Error::NoSpace)
    ));
    assert_eq!(map, BlockMap::default());
    assert!(alloc.used.is_empty());
}

#[test]
fn write_failure_never_dangles() {
    // (index, new blocks written, blocks left allocated when the last write fails).
    // Growth links the new root in memory: nothing is ever left allocated. A link into
    // an existing indirect block is the last write: if it fails, the new blocks stay.
    let cases = [
        (10_000_000_000u64, 5u64, 0usize),
        (600_000, 3, 0),
        (300, 1, 1),
        (2000, 2, 2),
    ];
    for (index, writes, link_leak) in cases {
        for k in 0..writes {
            let (io, mut alloc) = (MemIo::default(), MemAlloc::default());
            let (mut map, model) = small_map(&io, &mut alloc);
            let before = map;
            *io.fail_write_after.lock().unwrap() = Some(k);
            assert!(map.get_or_alloc(&io, &mut alloc, index, 0).is_err());
            *io.fail_write_after.lock().unwrap() = None;
            assert_eq!(map, before);
            let reach = owned(&map, &io);
            assert!(reach.is_subset(&alloc.used));
            let leaked = alloc.used.len() - reach.len();
            let want = if k + 1 == writes { link_leak } else { 0 };
            assert_eq!(leaked, want, "index {index}, failed write {k}");
            let mut seen = BTreeMap::new();
            map.for_each(&io, &mut |i, b| {
                seen.insert(i, b);
                Ok(())
            })
            .unwrap();
            assert_eq!(seen, model);
            map.punch(&io, &mut alloc, 0, u64::MAX).unwrap();
            assert_eq!(alloc.used.len(), leaked);
        }
    }
}

#[test]
fn sparse_punch_touches_few_blocks() {
    let (io, mut alloc) = (MemIo::default(), MemAlloc::default());
    let mut map = BlockMap::default();
    let mut blocks = Vec::new();
    for i in [0u64, 1_000_000, 100_000_000_000] {
        blocks.push(map.get_or_alloc(&io, &mut alloc, i, 0).unwrap().block);
    }
    assert_eq!(map.height, 5);
    let mut indirect = 0u64;
    map.for_each_block(&io, &mut |_, ind| {
        indirect += u64::from(ind);
        Ok(())
    })
    .unwrap();
    assert_eq!(indirect, 11); // 1 root + 4 + 2 + 4 on the three paths

    // Keep index 0: walks only the paths, then shrinks back to height 0.
    let mut partial = map;
    io.reads.store(0, Ordering::Relaxed);
    let freed = partial.punch(&io, &mut alloc, 1, u64::MAX).unwrap();
    let reads = io.reads.load(Ordering::Relaxed);
    // Each indirect block once to punch or free, plus the kept path again to shrink.
    assert!(reads <= indirect + 5, "{reads} reads");
    assert_eq!(freed, alloc.hints.len() as u64 - 1);
    assert_eq!(
        partial,
        BlockMap {
            height: 0,
            root: blocks[0]
        }
    );
    assert_eq!(alloc.used, HashSet::from([blocks[0]]));
    partial.punch(&io, &mut alloc, 0, u64::MAX).unwrap();
    assert!(alloc.used.is_empty());

    // The whole range reads each indirect block once.
    let (io, mut alloc) = (MemIo::default(), MemAlloc::default());
    let mut map = BlockMap::default();
    for i in [0u64, 1_000_000, 100_000_000_000] {
        map.get_or_alloc(&io, &mut alloc, i, 0).unwrap();
    }
    io.reads.store(0, Ordering::Relaxed);
    let freed = map.punch(&io, &mut alloc, 0, u64::MAX).unwrap();
    assert_eq!(io.reads.load(Ordering::Relaxed), indirect);
    assert_eq!(freed, indirect + 3);
    assert_eq!(map, BlockMap::default());
    assert!(alloc.used.is_empty());
}

#[test]
fn encoding() {
    let map = BlockMap {
        height: 5,
        root: 0x0102_0304_0506_0708,
    };
    assert_eq!(BlockMap::from_bytes(&map.to_bytes()).unwrap(), map);
    let mut bad = map.to_bytes();
    bad[0] = 6;
    assert!(matches!(
        BlockMap::from_bytes(&bad),
        Err(Error::CorruptFilesystem(_))
    ));
    let bad = BlockMap {
        height: 200,
        root: 1,
    };
    let (io, mut alloc) = (MemIo::default(), MemAlloc::default());
    assert!(matches!(bad.get(&io, 0), Err(Error::CorruptFilesystem(_))));
    assert!(bad.clone().punch(&io, &mut alloc, 0, 1).is_err());
}

#[test]
fn corrupt_entries_do_not_panic() {
    // A loop: an indirect block pointing at itself.
    let (io, mut alloc) = (MemIo::default(), MemAlloc::default());
    let mut map = BlockMap::default();
    map.get_or_alloc(&io, &mut alloc, 1000, 0).unwrap();
    let mut node = Node::read(&io, map.root).unwrap();
    node.set(3, map.root);
    io.write_block(map.root, &node.0).unwrap();
    let is_corrupt = |r: Result<()>| matches!(r, Err(Error::CorruptFilesystem(_)));
    assert!(matches!(
        map.get(&io, 3 * 512),
        Err(Error::CorruptFilesystem(_))
    ));
    assert!(is_corrupt(map.for_each(&io, &mut |_, _| Ok(()))));
    assert!(is_corrupt(map.for_each_block(&io, &mut |_, _| Ok(()))));
    assert!(map.clone().punch(&io, &mut alloc, 1024, 2048).is_err());
    assert!(map.clone().punch(&io, &mut alloc, 0, u64::MAX).is_err());

    // Garbage roots: any result, no panic.
    let mut rng = StdRng::seed_from_u64(99);
    for _ in 0..50 {
        let (io, mut alloc) = (
            MemIo::default(),
            MemAlloc {
                next: 1000,
                ..Default::default()
            },
        );
        let mut block = [0u8; BLOCK_SIZE];
        rng.fill(&mut block[..]);
        io.write_block(1, &block).unwrap();
        let mut map = BlockMap {
            height: rng.random_range(1..=MAX_HEIGHT),
            root: 1,
        };
        let _ = map.get(&io, rng.random());
        let _ = map.for_each(&io, &mut |_, _| Ok(()));
        let _ = map.for_each_block(&io, &mut |_, _| Ok(()));
        let _ = map.get_or_alloc(&io, &mut alloc, rng.random_range(0..MAX_FILE_BLOCKS), 0);
        let _ = map.punch(&io, &mut alloc, rng.random(), u64::MAX);
    }
}

#[test]
fn move_range_moves_blocks_without_copying() {
    for seed in 0..8u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let (io, mut alloc) = (MemIo::default(), MemAlloc::default());
        let mut src = BlockMap::default();
        let mut model = BTreeMap::new();
        for _ in 0..rng.random_range(1..400) {
            let index = random_index(&mut rng);
            let m = src.get_or_alloc(&io, &mut alloc, index, 0).unwrap();
            io.write_block(m.block, &[index as u8; BLOCK_SIZE]).unwrap();
            model.insert(index, m.block);
        }
        let keys: Vec<u64> = model.keys().copied().collect();
        let start = keys[rng.random_range(0..keys.len())] + u64::from(rng.random_bool(0.3));
        let end = if rng.random_bool(0.5) {
            u64::MAX
        } else {
            start + rng.random_range(0..1_000_000_000)
        };
        let mut in_range = Vec::new();
        src.for_each_in(&io, start, end, &mut |i, b| {
            in_range.push((i, b));
            Ok(())
        })
        .unwrap();
        let want: Vec<(u64, u64)> = model.range(start..end).map(|(&i, &b)| (i, b)).collect();
        assert_eq!(in_range, want);
        let data_before = alloc.used.len();
        let mut dest = BlockMap::default();
        let moved = src
            .move_range(&mut dest, &io, &mut alloc, start, end)
            .unwrap();
        assert_eq!(moved.data, want.len() as u64);
        assert_eq!(
            alloc.used.len() as u64,
            data_before as u64 + moved.allocated - moved.freed
        );
        let mut got_dest = Vec::new();
        dest.for_each(&io, &mut |i, b| {
            got_dest.push((i, b));
            Ok(())
        })
        .unwrap();
        assert_eq!(got_dest, want, "seed {seed}");
        for (i, b) in &got_dest {
            let mut block = [0u8; BLOCK_SIZE];
            io.read_block(*b, &mut block).unwrap();
            assert_eq!(block[0], *i as u8, "data moved intact");
        }
        let rest: BTreeMap<u64, u64> = model
            .iter()
            .filter(|(i, _)| !(start..end).contains(*i))
            .map(|(&i, &b)| (i, b))
            .collect();
        let mut got_src = Vec::new();
        src.for_each(&io, &mut |i, b| {
            got_src.push((i, b));
            Ok(())
        })
        .unwrap();
        assert_eq!(got_src, rest.into_iter().collect::<Vec<_>>());
        let mut all = owned(&src, &io);
        let d = owned(&dest, &io);
        assert!(all.is_disjoint(&d));
        all.extend(d);
        assert_eq!(all, alloc.used, "every allocated block owned by one map");
        // set refuses a mapped index.
        if let Some(&(i, _)) = got_dest.first() {
            assert!(dest.set(&io, &mut alloc, i, 999_999).is_err());
        }
    }
}
