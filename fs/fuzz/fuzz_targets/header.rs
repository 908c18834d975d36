//! Fuzzes the domain header decoder.
//!
//! Each input is decoded twice: as it is (a whole slot, as read from a container), and
//! sealed, that is behind a valid magic, version, length and checksum, so that the field
//! parser is reached too (random bytes almost never carry a matching SHA-256).
//!
//! Decoding must never panic; a header that decodes must encode back to exactly the bytes
//! of its record (the encoding is canonical); rendering it must not panic either.
#![no_main]

use domfs::format::header::{CopyState, DomainHeader};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    check(data);
    check(&sealed(data));
});

fn check(slot: &[u8]) {
    let Ok(header) = DomainHeader::decode(slot) else {
        return;
    };
    let encoded = header.encode().expect("a decoded header encodes");
    assert!(slot.starts_with(&encoded), "the encoding is not canonical");
    let _ = header.binding_hash();
    let copies = [CopyState::Valid, CopyState::Damaged("fuzz".into())];
    let _ = header.show(&copies);
    let _ = header.to_json(&copies);
}

/// `body` as the fields of a record with a valid frame (see the byte table in
/// `fs/src/format/header.rs`).
fn sealed(body: &[u8]) -> Vec<u8> {
    let total = u32::try_from(16 + body.len() + 32).unwrap_or(u32::MAX);
    let mut record = b"DOMFS\0HD".to_vec();
    record.extend_from_slice(&1u32.to_le_bytes());
    record.extend_from_slice(&total.to_le_bytes());
    record.extend_from_slice(body);
    let checksum = Sha256::digest(&record);
    record.extend_from_slice(&checksum);
    record
}
