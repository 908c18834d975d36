//! The hidden-version table on its own: record encoding (and reading records written
//! before extra fields existed), appends across blocks, the index built at open, retiring
//! records (and giving back emptied table blocks), path bounds, how a punch falls on
//! blocks. The filesystem-level behaviour is tested in `fs/tests/hidden.rs`.

use std::collections::HashMap;
use std::sync::Mutex;

use super::index::HiddenIndex;
use super::naming::{join, normalize_path};
use super::punch::{PUNCH_SLACK, Shape, room_for};
use super::record::{MAX_PATH, Record, STATE_KEPT, STATE_PURGED};
use super::table::{RECORD_ROOM, append, read_table, retire};
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

#[test]
fn a_punch_record_keeps_its_range_in_an_extra_field() {
    let r = Record {
        event: HiddenEvent::Punch { end: 90_000 },
        cut_at: 5_000,
        id: 3,
        ..record("ward/12/data.db", 9)
    };
    let bytes = r.encode();
    // Path 15 + process 4 + host 12 = 31 bytes of text, padded to 32; then the end.
    assert_eq!(bytes.len(), 80 + 32 + 8);
    assert_eq!(bytes[3], 5);
    assert_eq!(bytes[76], 1, "one extra field");
    assert_eq!(bytes[112..120], 90_000u64.to_le_bytes());
    let (back, len) = Record::decode(&bytes, 0).unwrap().unwrap();
    assert_eq!((back.clone(), len), (r, bytes.len()));
    assert_eq!(back.version(1).punched(), Some((5_000, 85_000)));
    assert_eq!(back.version(1).event.name(), "punch");
    // Other events have no extra field: their records are as before.
    let plain = record("ward/12/data.db", 9).encode();
    assert_eq!((plain.len(), plain[76]), (80 + 32, 0));
    let corrupt = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = bytes.clone();
        f(&mut b);
        Record::decode(&b, 0).is_err()
    };
    assert!(corrupt(&|b| b[76] = 0)); // a punch without its range
    assert!(corrupt(&|b| b[76] = 2)); // past the record
    assert!(corrupt(&|b| b[76] = 9)); // too many
    assert!(corrupt(
        &|b| b[112..120].copy_from_slice(&5_000u64.to_le_bytes())
    )); // empty range
    // A field this build does not know (a later one) is skipped.
    let mut later = bytes.clone();
    later[0..2].copy_from_slice(&128u16.to_le_bytes());
    later[76] = 2;
    later.extend_from_slice(&7u64.to_le_bytes());
    let (back, len) = Record::decode(&later, 0).unwrap().unwrap();
    assert_eq!((back.event, len), (HiddenEvent::Punch { end: 90_000 }, 128));
}

/// A record as a build before extra fields wrote it (bytes 76..80 reserved, zero), laid
/// out here by hand: it reads as it did.
#[test]
fn records_written_before_extra_fields_still_read() {
    let (path, process, host) = (&b"ward/p1.txt"[..], &b"truncate"[..], &b"db-1"[..]);
    let len = (80 + path.len() + process.len() + host.len()).next_multiple_of(8);
    let mut b = vec![0u8; len];
    b[0..2].copy_from_slice(&(len as u16).to_le_bytes());
    b[2] = 2; // kept
    b[3] = 4; // truncate
    b[4..8].copy_from_slice(&0o100640u32.to_le_bytes());
    b[8..16].copy_from_slice(&41u64.to_le_bytes());
    b[16..24].copy_from_slice(&1234u64.to_le_bytes());
    b[24..32].copy_from_slice(&1_700_000_000i64.to_le_bytes());
    b[32..36].copy_from_slice(&7u32.to_le_bytes());
    b[36..40].copy_from_slice(&1000u32.to_le_bytes());
    b[40..44].copy_from_slice(&100u32.to_le_bytes());
    b[44..48].copy_from_slice(&4242u32.to_le_bytes());
    b[48..56].copy_from_slice(&50_000u64.to_le_bytes());
    b[56..64].copy_from_slice(&12u64.to_le_bytes());
    b[64..72].copy_from_slice(&100u64.to_le_bytes());
    b[72..74].copy_from_slice(&(path.len() as u16).to_le_bytes());
    b[74] = process.len() as u8;
    b[75] = host.len() as u8;
    b[80..80 + path.len() + process.len() + host.len()]
        .copy_from_slice(&[path, process, host].concat());
    let (r, read) = Record::decode(&b, 0).unwrap().unwrap();
    assert_eq!(read, len);
    assert_eq!(r.event, HiddenEvent::Truncate);
    assert_eq!(
        (r.id, r.ino, r.size, r.blocks, r.cut_at),
        (41, 1234, 50_000, 12, 100)
    );
    assert_eq!(
        (&r.path[..], &r.process[..], &r.host[..]),
        (path, process, host)
    );
    assert_eq!(r.version(1).punched(), None);
    // And this build writes it back the same, byte for byte.
    assert_eq!(r.encode(), b);
}

#[test]
fn shapes_of_punches() {
    let s = |start: u64, end: u64, size: u64| Shape::new(start..end, size);
    // Inside one block.
    let one = s(100, 200, 10 * BS);
    assert_eq!(one.edges, vec![(0, 100..200)]);
    assert!(one.whole.is_empty());
    // Across a block edge: two partial blocks, nothing whole.
    let across = s(BS - 10, BS + 10, 10 * BS);
    assert_eq!(across.edges, vec![(0, 4086..4096), (1, 0..10)]);
    assert!(across.whole.is_empty());
    // Whole blocks only.
    let whole = s(2 * BS, 5 * BS, 10 * BS);
    assert!(whole.edges.is_empty());
    assert_eq!(whole.whole, 2..5);
    assert_eq!((whole.inside(), whole.outside()), (3, 7));
    // Partial edges around whole blocks.
    let both = s(BS + 1, 4 * BS + 1, 10 * BS);
    assert_eq!(both.edges, vec![(1, 1..4096), (4, 0..1)]);
    assert_eq!(both.whole, 2..4);
    // Up to the end of the file: its last block moves whole (past the end it is zeros).
    let tail = s(BS + 1, 3 * BS + 5, 3 * BS + 5);
    assert_eq!(tail.edges, vec![(1, 1..4096)]);
    assert_eq!(tail.whole, 2..4);
    assert_eq!(tail.outside(), 2);
    // Inside the last block, up to the end.
    let last = s(3 * BS + 1, 3 * BS + 5, 3 * BS + 5);
    assert_eq!(last.edges, vec![(3, 1..5)]);
    assert!(last.whole.is_empty());
    // Everything.
    let all = s(0, 3 * BS + 5, 3 * BS + 5);
    assert!(all.edges.is_empty());
    assert_eq!((all.whole.clone(), all.outside()), (0..4, 0));
}

#[test]
fn punch_room_follows_the_blocks_that_move() {
    let slack = PUNCH_SLACK + RECORD_ROOM;
    assert_eq!(room_for(0), slack);
    assert_eq!(room_for(499), slack);
    // One block-map block per 512 moved, with room to spare for ranges that straddle.
    assert_eq!(room_for(40_010), 80 + slack);
    // The smaller side moves: most of a file punched moves what lies outside the range.
    let most = Shape::new(BS + 7..299 * BS, 300 * BS + 17);
    assert_eq!((most.inside(), most.outside()), (297, 4));
}
