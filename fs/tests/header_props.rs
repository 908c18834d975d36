//! Properties of the domain header encoding, and reading and writing its two copies on an
//! in-memory device.
#![allow(clippy::unwrap_used)] // in tests, a panic is the failure report

use std::io;
use std::sync::Mutex;

use domfs::Error;
use domfs::device::Device;
use domfs::format::header::{
    CipherSuite, CopyState, DomainHeader, Extension, KeyMode, MANAGER_KEY_LEN, MAX_META_LEN,
    SIGNATURE_LEN, read_header, write_header,
};
use domfs::format::reader::Writer;
use domfs::format::{HEADER_OFFSETS, HEADER_SLOT_SIZE};
use domfs::types::VolumeId;
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use sha2::{Digest, Sha256};

const SLOT: usize = HEADER_SLOT_SIZE as usize;

fn arb_header() -> impl Strategy<Value = DomainHeader> {
    let signed = prop_oneof![
        4 => vec(any::<u8>(), 0..=512),
        1 => vec(any::<u8>(), 0..=48 * 1024),
    ];
    (
        any::<[u8; 16]>(),
        prop_oneof![Just(KeyMode::KeyFile), Just(KeyMode::Ttp)],
        any::<u64>(),
        any::<u64>(),
        vec(any::<u8>(), 0..=MAX_META_LEN),
        signed,
        option::of(vec(any::<u8>(), SIGNATURE_LEN)),
        option::of(vec(any::<u8>(), MANAGER_KEY_LEN)),
        // Unique, non-critical kinds (no kind is defined yet, so every critical one is refused).
        btree_map(0u16..0x8000, vec(any::<u8>(), 0..=256), 0..=8),
    )
        .prop_map(
            |(id, key_mode, container_size, created_unix, meta, signed, sig, key, exts)| {
                DomainHeader {
                    volume_id: VolumeId(id),
                    block_size: 4096,
                    cipher_suite: CipherSuite::Aes256XtsHmacSha256,
                    key_mode,
                    container_size,
                    created_unix,
                    meta,
                    signed_message: signed,
                    signature: sig.unwrap_or_default(),
                    manager_key: key.unwrap_or_default(),
                    extensions: exts
                        .into_iter()
                        .map(|(kind, data)| Extension { kind, data })
                        .collect(),
                }
            },
        )
}

/// A record with a valid magic, version, length and checksum around an arbitrary body, so
/// that decoding gets past the checksum into the fields.
fn sealed(body: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    w.bytes(b"DOMFS\0HD");
    w.u32(1);
    w.u32((16 + body.len() + 32) as u32);
    w.bytes(body);
    let checksum = Sha256::digest(w.as_slice());
    w.bytes(&checksum);
    w.into_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn encode_decode_round_trip(h in arb_header(), pad in any::<u8>()) {
        let bytes = h.encode().unwrap();
        prop_assert!(bytes.len() <= SLOT);
        prop_assert_eq!(&DomainHeader::decode(&bytes).unwrap(), &h);
        // As read from a slot: whatever follows the record is ignored.
        let mut slot = bytes.clone();
        slot.resize(SLOT, pad);
        let decoded = DomainHeader::decode(&slot).unwrap();
        prop_assert_eq!(decoded.encode().unwrap(), bytes);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in vec(any::<u8>(), 0..400)) {
        let _ = DomainHeader::decode(&bytes);
        let mut prefixed = b"DOMFS\0HD\x01\0\0\0".to_vec();
        prefixed.extend_from_slice(&bytes);
        let _ = DomainHeader::decode(&prefixed);
        // Past the checksum: only the field parser stands between these bytes and a header.
        if let Ok(h) = DomainHeader::decode(&sealed(&bytes)) {
            prop_assert_eq!(h.encode().unwrap(), sealed(&bytes));
        }
    }

    #[test]
    fn a_flipped_byte_never_yields_another_header(
        h in arb_header(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..,
    ) {
        let record_len = h.encode().unwrap().len();
        let mut slot = h.encode().unwrap();
        slot.resize(record_len + 64, 0);
        let at = at.index(slot.len());
        slot[at] ^= mask;
        match DomainHeader::decode(&slot) {
            Err(_) => prop_assert!(at < record_len, "a flip after the record at {} was refused", at),
            Ok(decoded) => {
                prop_assert!(at >= record_len, "a flip at {} inside the record went unnoticed", at);
                prop_assert_eq!(decoded, h);
            }
        }
    }

    #[test]
    fn binding_hash_ignores_only_the_signed_part(
        h in arb_header(),
        signed in vec(any::<u8>(), 0..64),
        sig in option::of(vec(any::<u8>(), SIGNATURE_LEN)),
        key in option::of(vec(any::<u8>(), MANAGER_KEY_LEN)),
        which in 0usize..9,
        byte in any::<u8>(),
    ) {
        let regranted = DomainHeader {
            signed_message: signed,
            signature: sig.unwrap_or_default(),
            manager_key: key.unwrap_or_default(),
            ..h.clone()
        };
        prop_assert_eq!(regranted.binding_hash(), h.binding_hash());

        // Every other field. (The cipher suite has one value, so it cannot change yet.)
        let mut edited = h.clone();
        match which {
            0 => edited.volume_id.0[usize::from(byte) % 16] ^= 1,
            1 => edited.block_size ^= 1 << (byte % 32),
            2 => {
                edited.key_mode = match h.key_mode {
                    KeyMode::KeyFile => KeyMode::Ttp,
                    KeyMode::Ttp => KeyMode::KeyFile,
                }
            }
            3 => edited.container_size ^= 1 << (byte % 64),
            4 => edited.created_unix ^= 1 << (byte % 64),
            5 => edited.meta.push(byte),
            6 => edited.extensions.push(Extension { kind: 0x9000, data: vec![byte] }),
            7 => match edited.extensions.first_mut() {
                Some(e) => e.data.push(byte),
                None => edited.extensions.push(Extension { kind: 1, data: vec![] }),
            },
            _ => match edited.extensions.first_mut() {
                Some(e) => e.kind ^= 0x4000,
                None => edited.meta = b"moved".to_vec(),
            },
        }
        prop_assume!(edited != h);
        prop_assert_ne!(edited.binding_hash(), h.binding_hash());
    }
}

#[test]
fn binding_hash_separates_fields() {
    // The same bytes, moved from the metadata into an extension.
    let a = DomainHeader {
        meta: b"ab".to_vec(),
        extensions: vec![],
        ..header()
    };
    let b = DomainHeader {
        meta: b"a".to_vec(),
        extensions: vec![Extension {
            kind: u16::from(b'b'),
            data: vec![],
        }],
        ..header()
    };
    assert_ne!(a.binding_hash(), b.binding_hash());
}

fn header() -> DomainHeader {
    DomainHeader {
        volume_id: VolumeId([0x5a; 16]),
        block_size: 4096,
        cipher_suite: CipherSuite::Aes256XtsHmacSha256,
        key_mode: KeyMode::Ttp,
        container_size: 1 << 20,
        created_unix: 1_700_000_000,
        meta: b"hospital=melior-test".to_vec(),
        signed_message: b"<signed list v1>".to_vec(),
        signature: vec![1; SIGNATURE_LEN],
        manager_key: vec![2; MANAGER_KEY_LEN],
        extensions: vec![],
    }
}

/// What a [`MemDevice`] was asked to do.
#[derive(Debug, PartialEq, Eq)]
enum Op {
    Write { offset: u64, len: usize },
    Sync,
}

/// A container in memory; reads of one chosen offset can be made to fail.
struct MemDevice {
    data: Mutex<Vec<u8>>,
    ops: Mutex<Vec<Op>>,
    failing_read_at: Option<u64>,
}

impl MemDevice {
    fn new(size: usize) -> Self {
        Self {
            data: Mutex::new(vec![0; size]),
            ops: Mutex::new(vec![]),
            failing_read_at: None,
        }
    }

    fn with(h: &DomainHeader) -> Self {
        let dev = Self::new(h.container_size as usize);
        write_header(&dev, h).unwrap();
        dev
    }

    fn poke(&self, offset: usize, f: impl FnOnce(&mut u8)) {
        f(&mut self.data.lock().unwrap()[offset]);
    }

    fn truncated(&self, size: usize) -> Self {
        let mut data = self.data.lock().unwrap().clone();
        data.truncate(size);
        Self {
            data: Mutex::new(data),
            ops: Mutex::new(vec![]),
            failing_read_at: None,
        }
    }
}

impl Device for MemDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.failing_read_at == Some(offset) {
            return Err(io::Error::other("injected read error"));
        }
        let data = self.data.lock().unwrap();
        let src = data
            .get(offset as usize..offset as usize + buf.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut data = self.data.lock().unwrap();
        let dst = data
            .get_mut(offset as usize..offset as usize + buf.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        dst.copy_from_slice(buf);
        self.ops.lock().unwrap().push(Op::Write {
            offset,
            len: buf.len(),
        });
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.ops.lock().unwrap().push(Op::Sync);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }

    fn name(&self) -> String {
        "memory".to_string()
    }
}

const A: usize = HEADER_OFFSETS[0] as usize;
const B: usize = HEADER_OFFSETS[1] as usize;

#[test]
fn write_then_read_uses_both_slots_in_order() {
    let h = header();
    let dev = MemDevice::with(&h);
    assert_eq!(
        *dev.ops.lock().unwrap(),
        [
            Op::Write {
                offset: 0,
                len: SLOT
            },
            Op::Sync,
            Op::Write {
                offset: SLOT as u64,
                len: SLOT
            },
            Op::Sync
        ]
    );
    let read = read_header(&dev).unwrap();
    assert_eq!(read.header, h);
    assert_eq!(read.copies, [CopyState::Valid, CopyState::Valid]);
    // The slots are zero-padded.
    let data = dev.data.lock().unwrap();
    let len = h.encode().unwrap().len();
    assert!(
        data[A + len..B]
            .iter()
            .chain(&data[B + len..2 * SLOT])
            .all(|&b| b == 0)
    );
}

#[test]
fn damaged_copy_a_falls_back_to_b() {
    let dev = MemDevice::with(&header());
    dev.poke(A + 40, |b| *b ^= 0x10);
    let read = read_header(&dev).unwrap();
    assert_eq!(read.header, header());
    assert_eq!(
        read.copies,
        [
            CopyState::Damaged("checksum mismatch".into()),
            CopyState::Valid
        ]
    );
}

#[test]
fn damaged_copy_b_is_reported() {
    let dev = MemDevice::with(&header());
    dev.poke(B + 8, |b| *b = 9);
    let read = read_header(&dev).unwrap();
    assert_eq!(read.header, header());
    assert_eq!(read.copies[0], CopyState::Valid);
    assert!(matches!(&read.copies[1], CopyState::Damaged(r) if r.contains("format version 9")));
}

#[test]
fn unreadable_copy_a_falls_back_to_b() {
    let dev = MemDevice {
        failing_read_at: Some(0),
        ..MemDevice::with(&header())
    };
    let read = read_header(&dev).unwrap();
    assert!(
        matches!(&read.copies[0], CopyState::Damaged(r) if r.contains("injected read error")),
        "{:?}",
        read.copies
    );
    assert_eq!(read.copies[1], CopyState::Valid);
}

#[test]
fn both_damaged_is_an_error_naming_both() {
    let dev = MemDevice::with(&header());
    dev.poke(A + 40, |b| *b ^= 1);
    dev.poke(B + 15, |b| *b = 0xff);
    match read_header(&dev) {
        Err(Error::CorruptHeader(r)) => {
            assert!(r.contains("copy A: checksum mismatch"), "{r}");
            assert!(r.contains("copy B: record length"), "{r}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn another_version_in_both_copies_is_unsupported() {
    let dev = MemDevice::with(&header());
    dev.poke(A + 8, |b| *b = 2);
    dev.poke(B + 8, |b| *b = 2);
    assert!(matches!(
        read_header(&dev),
        Err(Error::UnsupportedVersion(2))
    ));
}

#[test]
fn no_magic_is_not_domfs() {
    assert!(matches!(
        read_header(&MemDevice::new(1 << 20)),
        Err(Error::NotDomfs)
    ));
    assert!(matches!(
        read_header(&MemDevice::new(1000)),
        Err(Error::NotDomfs)
    ));
    assert!(matches!(
        read_header(&MemDevice::new(0)),
        Err(Error::NotDomfs)
    ));
}

#[test]
fn interrupted_update_prefers_copy_a() {
    let old = header();
    let dev = MemDevice::with(&old);
    let new = DomainHeader {
        signed_message: b"<signed list v2>".to_vec(),
        ..old.clone()
    };
    let record = new.encode().unwrap();
    dev.write_at(&record, 0).unwrap(); // crash before copy B
    let read = read_header(&dev).unwrap();
    assert_eq!(read.header, new);
    assert_eq!(read.copies, [CopyState::Valid, CopyState::Differs]);
}

#[test]
fn container_shorter_than_its_header_says_is_truncated() {
    let dev = MemDevice::with(&header()).truncated(1 << 19);
    match read_header(&dev) {
        Err(Error::Truncated { expected, actual }) => {
            assert_eq!((expected, actual), (1 << 20, 1 << 19))
        }
        other => panic!("{other:?}"),
    }
    // Copy B cut off: copy A still tells the size the container should have.
    let dev = MemDevice::with(&header()).truncated(SLOT + 100);
    assert!(matches!(
        read_header(&dev),
        Err(Error::Truncated { expected: 1_048_576, actual }) if actual == SLOT as u64 + 100
    ));
    // Cut inside copy A: no copy is whole, but there is a header.
    let dev = MemDevice::with(&header()).truncated(100);
    assert!(matches!(
        read_header(&dev),
        Err(Error::Truncated { actual: 100, .. })
    ));
}
