//! Property tests of the tag tree and the space map: any sequence of writes, discards,
//! commits and reopens leaves a volume that reads back like a plain map of blocks, passes
//! fsck (every block verifies, the space map marks exactly the referenced blocks), and
//! accounts its space exactly.

mod common;

use std::collections::HashMap;

use common::{TestVolume, pattern};
use domfs::store::StoreOptions;
use domfs::types::{BLOCK_SIZE, LogicalBlock};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Write(u64),
    Discard(u64),
    Commit,
    Reopen,
}

/// Block numbers clustered so that some share tree nodes and some do not.
fn block() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..200u64,
        7000..7300u64,
        Just(0),
        Just(84),
        Just(85),
        Just(7224)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => block().prop_map(Op::Write),
        2 => block().prop_map(Op::Discard),
        1 => Just(Op::Commit),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn tree_matches_a_model(ops in proptest::collection::vec(op(), 1..120)) {
        let vol = TestVolume::new(32 << 20);
        let options = StoreOptions { cache_bytes: 256 * 1024, ..StoreOptions::default() };
        let mut store = vol.open_with(options.clone());
        let mut current: HashMap<u64, u64> = HashMap::new();
        let mut committed = current.clone();
        for (step, op) in ops.iter().enumerate() {
            match *op {
                Op::Write(n) => {
                    store.write(LogicalBlock(n), &pattern(step as u64, n)).expect("write");
                    current.insert(n, step as u64);
                }
                Op::Discard(n) => {
                    store.discard(LogicalBlock(n)).expect("discard");
                    current.remove(&n);
                }
                Op::Commit => {
                    store.commit().expect("commit");
                    committed = current.clone();
                }
                Op::Reopen => {
                    drop(store);
                    store = vol.open_with(options.clone());
                    current = committed.clone();
                }
            }
        }
        store.close().expect("close");
        let report = vol.fsck();
        prop_assert!(report.is_clean(), "{:?}", report);
        prop_assert_eq!(report.data_blocks, current.len() as u64);
        let store = vol.open_with(options);
        for n in (0..200u64).chain(7000..7300) {
            let mut got = [0u8; BLOCK_SIZE];
            store.read(LogicalBlock(n), &mut got).expect("read");
            match current.get(&n) {
                Some(&s) => prop_assert_eq!(&got, &*pattern(s, n), "block {}", n),
                None => prop_assert_eq!(&got, &[0u8; BLOCK_SIZE], "block {}", n),
            }
        }
        // Space accounting: allocated = data blocks + the tree nodes and map blocks above.
        let space = store.space();
        prop_assert!(space.allocated_blocks >= current.len() as u64);
        prop_assert!(space.allocated_blocks <= current.len() as u64 * 2 + 8);
    }
}
