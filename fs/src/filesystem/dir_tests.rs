//! Tests of the directory format and index (see `dir.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// In-memory directory blocks that count writes.
#[derive(Default)]
struct Mem {
    blocks: Vec<Box<Block>>,
    writes: usize,
}

impl DirStorage for Mem {
    fn block_count(&self) -> u64 {
        self.blocks.len() as u64
    }

    fn read(&mut self, index: u64, out: &mut Block) -> Result<()> {
        let b = self
            .blocks
            .get(index as usize)
            .ok_or_else(|| Error::Invalid("read past end".into()))?;
        out.copy_from_slice(&b[..]);
        Ok(())
    }

    fn write(&mut self, index: u64, data: &Block) -> Result<()> {
        let i = index as usize;
        if i == self.blocks.len() {
            self.blocks.push(Box::new(*data));
        } else {
            **self
                .blocks
                .get_mut(i)
                .ok_or_else(|| Error::Invalid("write past end".into()))? = *data;
        }
        self.writes += 1;
        Ok(())
    }
}

fn all(dir: &Directory) -> Vec<(u64, DirEntry)> {
    dir.entries_from(0).collect()
}

fn is_posix(r: Result<impl std::fmt::Debug>, p: Posix) -> bool {
    matches!(r, Err(Error::Posix(q)) if q == p)
}

fn is_corrupt(r: Result<Directory>, block: u64) -> bool {
    match r {
        Err(Error::CorruptFilesystem(m)) => m.contains(&format!("directory block {block}:")),
        _ => false,
    }
}

fn kind(i: u64) -> FileKind {
    FileKind::from_u8((i % 7) as u8 + 1).expect("1..=7")
}

/// A name of `len` bytes derived from `i` (distinct for distinct `i` when len ≥ 8).
fn name(i: u64, len: usize) -> Vec<u8> {
    let mut n = format!("{i:08x}").into_bytes();
    n.resize(len.max(n.len()), b'a' + (i % 26) as u8);
    n
}

#[test]
fn kinds_round_trip() {
    for v in 0..=255u8 {
        match FileKind::from_u8(v) {
            Some(k) => assert_eq!(k as u8, v),
            None => assert!(v == 0 || v > 7),
        }
    }
}

#[test]
fn model_random() {
    let mut rng = StdRng::seed_from_u64(0xd1f5);
    let pool: Vec<Vec<u8>> = (0..400)
        .map(|i| name(i, rng.random_range(8..=255)))
        .collect();
    let mut st = Mem::default();
    let mut dir = Directory::empty();
    let mut model: HashMap<Vec<u8>, (u64, FileKind)> = HashMap::new();
    let mut positions: HashMap<Vec<u8>, u64> = HashMap::new();
    for step in 0..6000u64 {
        let n = &pool[rng.random_range(0..pool.len())];
        let ino = rng.random_range(1..u64::MAX);
        let before = st.writes;
        let ok = match rng.random_range(0..10) {
            0..=4 => {
                let r = dir.insert(&mut st, n, ino, kind(ino));
                if model.contains_key(n) {
                    assert!(is_posix(r, Posix::Exists));
                    false
                } else {
                    r.expect("insert");
                    model.insert(n.clone(), (ino, kind(ino)));
                    positions.insert(n.clone(), dir.position(n).expect("inserted"));
                    true
                }
            }
            5..=7 => {
                let r = dir.remove(&mut st, n);
                match model.remove(n) {
                    Some(old) => {
                        assert_eq!(r.expect("remove"), old);
                        positions.remove(n);
                        true
                    }
                    None => {
                        assert!(is_posix(r, Posix::NotFound));
                        false
                    }
                }
            }
            _ => {
                let r = dir.replace(&mut st, n, ino, kind(ino));
                match model.insert(n.clone(), (ino, kind(ino))) {
                    Some(old) => {
                        assert_eq!(r.expect("replace"), old);
                        true
                    }
                    None => {
                        model.remove(n);
                        assert!(is_posix(r, Posix::NotFound));
                        false
                    }
                }
            }
        };
        // Exactly one block written per change, none per refusal.
        assert_eq!(st.writes - before, usize::from(ok), "step {step}");
        assert_eq!(dir.len(), model.len());
        if step % 25 == 0 {
            for (n, v) in &model {
                assert_eq!(dir.lookup(n), Some(*v));
                assert_eq!(
                    dir.position(n),
                    positions.get(n).copied(),
                    "entries never move"
                );
            }
            let loaded = Directory::load(&mut st).expect("load");
            assert_eq!(all(&loaded), all(&dir));
            assert_eq!(loaded.block_count(), dir.block_count());
            assert_eq!(dir.block_count(), st.block_count());
        }
    }
    assert!(!model.is_empty());
}

#[test]
fn readdir_in_chunks_while_mutating() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut st = Mem::default();
    let mut dir = Directory::empty();
    for i in 0..2000 {
        dir.insert(&mut st, &name(i, rng.random_range(8..120)), i + 1, kind(i))
            .expect("insert");
    }
    let initial: Vec<Vec<u8>> = all(&dir).into_iter().map(|(_, e)| e.name).collect();
    let mut removed = HashSet::new();
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut next = 10_000;
    let mut cookie = 0;
    loop {
        let chunk: Vec<_> = dir.entries_from(cookie).take(13).collect();
        let Some(&(last, _)) = chunk.last() else {
            break;
        };
        for (pos, e) in chunk {
            assert!(pos >= cookie);
            *seen.entry(e.name).or_default() += 1;
        }
        cookie = last + 1;
        for _ in 0..5 {
            if rng.random_bool(0.5) {
                let victim = &initial[rng.random_range(0..initial.len())];
                if removed.insert(victim.clone()) {
                    dir.remove(&mut st, victim).expect("remove");
                }
            } else {
                next += 1;
                dir.insert(
                    &mut st,
                    &name(next, rng.random_range(8..200)),
                    next,
                    kind(next),
                )
                .expect("insert");
            }
        }
    }
    for n in initial.iter().filter(|n| !removed.contains(*n)) {
        assert_eq!(
            seen.get(n),
            Some(&1),
            "every entry living throughout is seen exactly once"
        );
    }
    assert!(seen.values().all(|&c| c == 1));
    assert!(removed.len() > 100);
    let loaded = Directory::load(&mut st).expect("load");
    assert_eq!(all(&loaded), all(&dir));
}

#[test]
fn space_is_reused() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut st = Mem::default();
    let mut dir = Directory::empty();
    let mut live: Vec<Vec<u8>> = Vec::new();
    let mut next = 0;
    // Full insert/remove cycles: an emptied directory is all free records.
    for cycle in 0..20 {
        for _ in 0..500 {
            next += 1;
            let n = name(next, rng.random_range(8..=255));
            dir.insert(&mut st, &n, next, kind(next)).expect("insert");
            live.push(n);
        }
        let blocks = dir.block_count();
        while let Some(n) = live.pop() {
            dir.remove(&mut st, &n).expect("remove");
        }
        assert!(dir.is_empty());
        assert!(all(&Directory::load(&mut st).expect("load")).is_empty());
        if cycle == 0 {
            assert!(blocks > 10);
        }
        assert!(
            dir.block_count() <= 60,
            "cycle {cycle}: {} blocks",
            dir.block_count()
        );
    }
    // Steady churn around 1000 entries stays within a bounded number of blocks.
    for _ in 0..20_000 {
        if live.len() < 1000 || (rng.random_bool(0.5) && live.len() < 1200) {
            next += 1;
            let n = name(next, rng.random_range(8..=255));
            dir.insert(&mut st, &n, next, kind(next)).expect("insert");
            live.push(n);
        } else {
            let n = live.swap_remove(rng.random_range(0..live.len()));
            dir.remove(&mut st, &n).expect("remove");
        }
    }
    // 1200 records of at most 272 bytes fill at most 80 blocks plus fragmentation.
    assert!(dir.block_count() <= 160, "{} blocks", dir.block_count());
    assert_eq!(all(&Directory::load(&mut st).expect("load")), all(&dir));
}

#[test]
fn freed_first_record_is_reused_in_place() {
    let mut st = Mem::default();
    let mut dir = Directory::empty();
    dir.insert(&mut st, b"a", 1, FileKind::Regular)
        .expect("insert");
    dir.insert(&mut st, b"b", 2, FileKind::Directory)
        .expect("insert");
    assert_eq!(dir.position(b"a"), Some(0));
    assert_eq!(dir.position(b"b"), Some(16));
    assert_eq!(
        dir.remove(&mut st, b"a").expect("remove"),
        (1, FileKind::Regular)
    );
    assert_eq!(dir.position(b"b"), Some(16));
    dir.insert(&mut st, b"c", 3, FileKind::Symlink)
        .expect("insert");
    assert_eq!(dir.position(b"c"), Some(0));
    assert_eq!(
        dir.replace(&mut st, b"c", 9, FileKind::Fifo)
            .expect("replace"),
        (3, FileKind::Symlink)
    );
    assert_eq!(dir.position(b"c"), Some(0));
    assert_eq!(dir.block_count(), 1);
    let loaded = Directory::load(&mut st).expect("load");
    assert_eq!(loaded.lookup(b"c"), Some((9, FileKind::Fifo)));
    assert_eq!(all(&loaded), all(&dir));
}

#[test]
fn hundred_thousand_entries() {
    let n = 100_000u64;
    let mut st = Mem::default();
    let mut dir = Directory::empty();
    let t = Instant::now();
    for i in 0..n {
        dir.insert(&mut st, &name(i, 200), i + 1, kind(i))
            .expect("insert");
    }
    let t_insert = t.elapsed();
    let t = Instant::now();
    for i in 0..n {
        assert_eq!(dir.lookup(&name(i, 200)), Some((i + 1, kind(i))));
    }
    let t_lookup = t.elapsed();
    let t = Instant::now();
    for i in (0..n).step_by(2) {
        dir.remove(&mut st, &name(i, 200)).expect("remove");
    }
    let t_remove = t.elapsed();
    let t = Instant::now();
    let loaded = Directory::load(&mut st).expect("load");
    let t_load = t.elapsed();
    eprintln!(
        "100k entries, {} blocks: insert {t_insert:?}, lookup {t_lookup:?}, remove half {t_remove:?}, load {t_load:?}",
        st.block_count()
    );
    assert_eq!(loaded.len(), 50_000);
    assert_eq!(all(&loaded), all(&dir));
    assert_eq!(loaded.lookup(&name(1, 200)), Some((2, kind(1))));
    assert_eq!(loaded.lookup(&name(0, 200)), None);
}

#[test]
fn name_rules() {
    let mut st = Mem::default();
    let mut dir = Directory::empty();
    let long = vec![b'x'; 255];
    dir.insert(&mut st, &long, 5, FileKind::Regular)
        .expect("255 bytes are fine");
    assert_eq!(dir.lookup(&long), Some((5, FileKind::Regular)));
    let too_long = vec![b'x'; 256];
    assert!(is_posix(
        dir.insert(&mut st, &too_long, 5, FileKind::Regular),
        Posix::NameTooLong
    ));
    assert!(is_posix(
        dir.replace(&mut st, &too_long, 5, FileKind::Regular),
        Posix::NameTooLong
    ));
    assert!(is_posix(dir.remove(&mut st, &too_long), Posix::NameTooLong));
    assert_eq!(dir.lookup(&too_long), None);
    for bad in [&b"/"[..], b"a/b", b".", b"..", b"a\0b", b"\0", b""] {
        assert!(is_posix(
            dir.insert(&mut st, bad, 5, FileKind::Regular),
            Posix::Invalid
        ));
        assert!(is_posix(
            dir.replace(&mut st, bad, 5, FileKind::Regular),
            Posix::Invalid
        ));
        assert!(is_posix(dir.remove(&mut st, bad), Posix::NotFound));
        assert_eq!(dir.lookup(bad), None);
    }
    assert!(is_posix(
        dir.insert(&mut st, &long, 6, FileKind::Regular),
        Posix::Exists
    ));
    assert!(matches!(
        dir.insert(&mut st, b"zero", 0, FileKind::Regular),
        Err(Error::Invalid(_))
    ));
    for ok in [&b"..."[..], b".a", b"a.", b" ", b"\xff\xfe"] {
        dir.insert(&mut st, ok, 7, FileKind::Socket)
            .expect("valid name");
    }
    assert_eq!(st.writes, 6);
    assert_eq!(all(&Directory::load(&mut st).expect("load")), all(&dir));
}

/// A block with a live record at 0 ("a", ino 1) and a free record covering the rest.
fn good_block() -> Box<Block> {
    let mut b: Box<Block> = Box::new([0; BLOCK_SIZE]);
    write_rec(&mut b, 0, 16, b"a", 1, FileKind::Regular);
    put_u16(&mut b, 16 + 8, BLOCK_SIZE - 16);
    b
}

fn load_blocks(blocks: Vec<Box<Block>>) -> Result<Directory> {
    Directory::load(&mut Mem { blocks, writes: 0 })
}

#[test]
fn corrupt_blocks_are_refused() {
    let mut other: Box<Block> = Box::new([0; BLOCK_SIZE]);
    write_rec(&mut other, 0, BLOCK_SIZE, b"zz", 2, FileKind::Directory);
    assert!(load_blocks(vec![other.clone(), good_block()]).is_ok());
    type Damage = Box<dyn Fn(&mut Block)>;
    let cases: Vec<(&str, Damage)> = vec![
        ("rec_len 0", Box::new(|b| put_u16(b, 8, 0))),
        ("rec_len 8", Box::new(|b| put_u16(b, 8, 8))),
        ("rec_len 20", Box::new(|b| put_u16(b, 8, 20))),
        (
            "rec_len past end",
            Box::new(|b| put_u16(b, 8, BLOCK_SIZE + 8)),
        ),
        (
            "free rec_len past end",
            Box::new(|b| put_u16(b, 24, BLOCK_SIZE - 8)),
        ),
        (
            "short chain end",
            Box::new(|b| put_u16(b, 24, BLOCK_SIZE - 24)),
        ),
        ("overrunning name", Box::new(|b| b[10] = 5)),
        ("empty name", Box::new(|b| b[10] = 0)),
        ("kind 0", Box::new(|b| b[11] = 0)),
        ("kind 8", Box::new(|b| b[11] = 8)),
        ("slash", Box::new(|b| b[12] = b'/')),
        ("dot", Box::new(|b| b[12] = b'.')),
        ("nul", Box::new(|b| b[12] = 0)),
        (
            "duplicate across blocks",
            Box::new(|b| write_rec(b, 0, 16, b"zz", 3, FileKind::Fifo)),
        ),
        (
            "duplicate in block",
            Box::new(|b| write_rec(b, 16, BLOCK_SIZE - 16, b"a", 3, FileKind::Fifo)),
        ),
    ];
    for (what, damage) in cases {
        let mut b = good_block();
        damage(&mut b);
        let r = load_blocks(vec![other.clone(), b]);
        assert!(is_corrupt(r, 1), "{what}");
    }
}

#[test]
fn storage_out_of_step_is_an_error() {
    let mut st = Mem::default();
    let mut dir = Directory::empty();
    dir.insert(&mut st, b"a", 1, FileKind::Regular)
        .expect("insert");
    let mut changed = st.blocks[0].clone();
    changed[0] = 9;
    st.blocks[0] = changed;
    assert!(matches!(
        dir.remove(&mut st, b"a"),
        Err(Error::CorruptFilesystem(_))
    ));
    assert!(matches!(
        dir.replace(&mut st, b"a", 2, FileKind::Regular),
        Err(Error::CorruptFilesystem(_))
    ));
    st.blocks.push(good_block());
    assert!(matches!(
        dir.insert(&mut st, b"b", 1, FileKind::Regular),
        Err(Error::CorruptFilesystem(_))
    ));
    assert_eq!(dir.lookup(b"a"), Some((1, FileKind::Regular)));
}

#[test]
fn slack_tree_finds_first_fit() {
    let mut t = SlackTree::default();
    assert_eq!(t.first_fit(16), None);
    for (i, v) in [0u16, 40, 16, 4096, 272].into_iter().enumerate() {
        t.set(i, v);
    }
    assert_eq!(t.first_fit(16), Some(1));
    assert_eq!(t.first_fit(48), Some(3));
    t.set(3, 0);
    assert_eq!(t.first_fit(48), Some(4));
    assert_eq!(t.first_fit(280), None);
    let model: BTreeMap<usize, u16> = (0..1000).map(|i| (i, (i * 37 % 513) as u16 * 8)).collect();
    let t = SlackTree::build(&model.values().copied().collect::<Vec<_>>(), 0);
    for need in (16..=4096).step_by(8) {
        let want = model.iter().find(|&(_, &v)| v >= need).map(|(&i, _)| i);
        assert_eq!(t.first_fit(need), want);
    }
}

proptest! {
    #[test]
    fn arbitrary_block_never_panics(bytes in proptest::collection::vec(any::<u8>(), BLOCK_SIZE)) {
        let mut b: Box<Block> = Box::new([0; BLOCK_SIZE]);
        b.copy_from_slice(&bytes);
        let _ = load_blocks(vec![b]);
    }

    #[test]
    fn damaged_valid_block_never_panics(
        seed in any::<u64>(),
        hits in proptest::collection::vec((0..BLOCK_SIZE, any::<u8>()), 1..6),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut st = Mem::default();
        let mut dir = Directory::empty();
        let names: Vec<_> = (0..40).map(|i| name(i, rng.random_range(8..60))).collect();
        for (i, n) in (0..).zip(&names) {
            dir.insert(&mut st, n, i + 1, kind(i)).expect("insert");
        }
        for n in names.iter().step_by(3) {
            dir.remove(&mut st, n).expect("remove");
        }
        for (at, v) in hits {
            st.blocks[0][at] = v;
        }
        if let Ok(d) = Directory::load(&mut st) {
            // Whatever loads is usable.
            let names: Vec<_> = all(&d).into_iter().map(|(_, e)| e.name).collect();
            let mut d = d;
            for n in names {
                d.remove(&mut st, &n).expect("remove what loaded");
            }
        }
    }
}
