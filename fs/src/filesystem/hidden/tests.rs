//! The hidden-version table on its own: record encoding, appends across blocks, the index
//! built at open, retiring records (and giving back emptied table blocks), path bounds.
//! The filesystem-level behaviour is tested in `fs/tests/hidden.rs`.

use std::collections::HashMap;
use std::sync::Mutex;

use super::index::HiddenIndex;
use super::naming::{join, normalize_path};
use super::record::{MAX_PATH, Record, STATE_KEPT, STATE_PURGED};
use super::table::{append, read_table, retire};
use super::who::bounded;
use super::{BS, HiddenEvent};
use crate::Result;
use crate::filesystem::BlockIo;
use crate::filesystem::inode::{Inode, Timestamp};
use crate::filesystem::meta::FsSuper;
use crate::filesystem::state::State;
use crate::types::Block;

#[derive(Default)]
struct MemIo(Mutex<HashMap<u64, Box<Block>>>);

impl BlockIo for MemIo {
    fn read_block(&self, block: u64, out: &mut Block) -> Result<()> {
        match self.0.lock().unwrap().get(&block) {
            Some(b) => out.copy_from_slice(&b[..]),
            None => out.fill(0),
        }
        Ok(())
    }
    fn write_block(&self, block: u64, data: &Block) -> Result<()> {
        self.0.lock().unwrap().insert(block, Box::new(*data));
        Ok(())
    }
    fn discard_block(&self, block: u64) -> Result<()> {
        self.0.lock().unwrap().remove(&block);
        Ok(())
    }
}

fn state() -> State {
    let sb = FsSuper {
        next_ino: 2,
        inodes_used: 1,
        blocks_used: 0,
        bitmap_start: 1,
        total_blocks: 4096,
        table: Inode::default(),
        orphans: Inode::default(),
        hidden: Inode::default(),
        hidden_blocks: 0,
        audit: Inode::default(),
        audit_head: Default::default(),
    };
    let mut st = State::new(sb);
    // Block 0 (superblock) and 1 (bitmap) are in use.
    st.alloc.mark_used(&MemIo::default(), 0).unwrap();
    st
}

fn record(path: &str, ino: u64) -> Record {
    Record {
        state: STATE_KEPT,
        event: HiddenEvent::Unlink,
        mode: 0o100644,
        id: 0,
        ino,
        time: Timestamp {
            secs: 1_700_000_000,
            nanos: 5,
        },
        uid: 1000,
        gid: 100,
        pid: 4242,
        size: 12_345,
        blocks: 4,
        cut_at: 0,
        path: path.as_bytes().to_vec(),
        process: b"psql".to_vec(),
        host: b"db-1.example".to_vec(),
    }
}

#[test]
fn records_round_trip_and_bad_ones_are_refused() {
    let r = Record {
        id: 77,
        ..record("ward/12/journal.txt", 9)
    };
    let bytes = r.encode();
    assert_eq!(bytes.len() % 8, 0);
    let (back, len) = Record::decode(&bytes, 0).unwrap().unwrap();
    assert_eq!(back, r);
    assert_eq!(len, bytes.len());
    // The end of a block's records.
    assert!(Record::decode(&[0u8; 64], 0).unwrap().is_none());
    let corrupt = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = bytes.clone();
        f(&mut b);
        Record::decode(&b, 0).is_err()
    };
    assert!(corrupt(&|b| b[0] = 7)); // length not a multiple of 8
    assert!(corrupt(&|b| b[0..2].copy_from_slice(&4096u16.to_le_bytes())));
    assert!(corrupt(&|b| b[2] = 9)); // state
    assert!(corrupt(&|b| b[3] = 0)); // event
    assert!(corrupt(
        &|b| b[32..36].copy_from_slice(&2_000_000_000u32.to_le_bytes())
    ));
    assert!(corrupt(
        &|b| b[72..74].copy_from_slice(&4000u16.to_le_bytes())
    ));
    assert!(corrupt(&|b| b[75] = 255)); // past the record
}

#[test]
fn appends_fill_blocks_and_the_index_is_rebuilt_at_open() {
    let io = MemIo::default();
    let mut st = state();
    let mut ids = Vec::new();
    for i in 0..300u64 {
        let path = format!("dir/{}", "x".repeat((i % 50) as usize));
        ids.push(append(&mut st, &io, record(&path, 100 + i)).unwrap().id);
    }
    assert_eq!(ids, (1..=300).collect::<Vec<_>>());
    assert!(st.sb.hidden.size > BS, "several table blocks");
    let mut seen = 0;
    read_table(&io, &st.sb.hidden, &mut |offset, r| {
        // No record crosses a block.
        assert!(offset % BS + r.encode().len() as u64 <= BS);
        seen += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, 300);
    let index = HiddenIndex::load(&io, &st.sb.hidden).unwrap();
    assert_eq!(index.len(), 300);
    assert_eq!(index.last_id, 300);
    // Versions of one path, newest first.
    let path = format!("dir/{}", "x".repeat(7));
    let newest = index.find(path.as_bytes(), 1).unwrap();
    let second = index.find(path.as_bytes(), 2).unwrap();
    assert!(newest > second);
    assert_eq!(index.find(path.as_bytes(), 0), None);
    assert_eq!(index.find(path.as_bytes(), 7), None);
    assert_eq!(index.number_of(&index.records[&second].1), 2);
}

#[test]
fn retired_records_leave_the_index_and_empty_blocks_are_given_back() {
    let io = MemIo::default();
    let mut st = state();
    for i in 0..200u64 {
        append(&mut st, &io, record(&format!("f{i}"), 1000 + i)).unwrap();
    }
    let table_blocks = st.sb.hidden.blocks;
    let used = st.alloc.used();
    for id in 1..=200 {
        retire(&mut st, &io, id, STATE_PURGED).unwrap();
    }
    assert_eq!(st.hidden.len(), 0);
    // Only the last block (it holds the highest id) stays, with its indirect block.
    assert_eq!(st.sb.hidden.blocks, 2, "was {table_blocks}");
    let mut mapped = 0;
    st.sb
        .hidden
        .map
        .for_each(&io, &mut |_, _| {
            mapped += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(mapped, 1);
    assert!(st.alloc.used() < used);
    let index = HiddenIndex::load(&io, &st.sb.hidden).unwrap();
    assert_eq!(index.len(), 0);
    assert_eq!(index.last_id, 200, "ids are never reused");
    // The next record gets a new id.
    let mut st2 = st;
    st2.hidden = index;
    assert_eq!(append(&mut st2, &io, record("again", 5)).unwrap().id, 201);
}

#[test]
fn long_paths_keep_their_end_and_paths_are_normalized() {
    let parts: Vec<Vec<u8>> = (0..200)
        .map(|i| format!("dir{i:04}xxxxxxxxxxxx").into_bytes())
        .collect();
    let joined = join(&parts);
    assert!(joined.len() <= MAX_PATH);
    assert!(joined.starts_with("…/".as_bytes()));
    assert!(joined.ends_with(b"dir0199xxxxxxxxxxxx"));
    assert_eq!(join(&[b"a".to_vec(), b"b".to_vec()]), b"a/b");
    assert_eq!(normalize_path(b"/a//b/./c/"), b"a/b/c");
    assert_eq!(normalize_path(b"/"), b"");
    assert_eq!(bounded("ééé".as_bytes(), 3), "é".as_bytes());
}
