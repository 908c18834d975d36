//! Unit tests of the header encoding: one test per error path, and the byte table of the
//! module doc written out independently of `encode`.
#![allow(clippy::unwrap_used)] // in tests, a panic is the failure report

use super::*;

fn header() -> DomainHeader {
    DomainHeader {
        volume_id: VolumeId(*b"0123456789abcdef"),
        block_size: 4096,
        cipher_suite: CipherSuite::Aes256XtsHmacSha256,
        key_mode: KeyMode::Ttp,
        container_size: 4 << 20,
        created_unix: 1_700_000_000,
        meta: b"region=orebro".to_vec(),
        signed_message: b"<signed access list>".to_vec(),
        signature: vec![7; SIGNATURE_LEN],
        manager_key: vec![9; MANAGER_KEY_LEN],
        extensions: vec![Extension {
            kind: 0x0042,
            data: b"keep me".to_vec(),
        }],
    }
}

/// The byte table of the module doc, written out independently of `encode` and without
/// its bounds, so that bad records can be made with a valid checksum.
#[derive(Clone)]
struct Raw {
    block_size: u32,
    suite: u16,
    mode: u16,
    meta: Vec<u8>,
    signed: Vec<u8>,
    signature: Vec<u8>,
    key: Vec<u8>,
    extensions: Vec<(u16, Vec<u8>)>,
    trailing: Vec<u8>,
}

impl Raw {
    fn of(h: &DomainHeader) -> Self {
        Raw {
            block_size: h.block_size,
            suite: h.cipher_suite as u16,
            mode: h.key_mode as u16,
            meta: h.meta.clone(),
            signed: h.signed_message.clone(),
            signature: h.signature.clone(),
            key: h.manager_key.clone(),
            extensions: h
                .extensions
                .iter()
                .map(|e| (e.kind, e.data.clone()))
                .collect(),
            trailing: Vec::new(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let h = header();
        let mut w = Writer::new();
        w.bytes(b"DOMFS\0HD");
        w.u32(1);
        w.u32(0);
        w.bytes(&h.volume_id.0);
        w.u32(self.block_size);
        w.u16(self.suite);
        w.u16(self.mode);
        w.u64(h.container_size);
        w.u64(h.created_unix);
        for field in [&self.meta, &self.signed, &self.signature, &self.key] {
            w.prefixed_bytes(field, usize::MAX).unwrap();
        }
        w.u16(self.extensions.len() as u16);
        for (kind, data) in &self.extensions {
            w.u16(*kind);
            w.prefixed_bytes(data, usize::MAX).unwrap();
        }
        w.bytes(&self.trailing);
        let mut bytes = w.into_vec();
        let total = (bytes.len() + 32) as u32;
        bytes[12..16].copy_from_slice(&total.to_le_bytes());
        let checksum = Sha256::digest(&bytes);
        bytes.extend_from_slice(&checksum);
        bytes
    }
}

/// Decoding `raw` fails with a `CorruptHeader` containing `reason`.
fn assert_corrupt(raw: &Raw, reason: &str) {
    match DomainHeader::decode(&raw.encode()) {
        Err(Error::CorruptHeader(r)) => assert!(r.contains(reason), "{r:?} lacks {reason:?}"),
        other => panic!("expected CorruptHeader({reason:?}), got {other:?}"),
    }
}

fn assert_invalid(h: &DomainHeader, reason: &str) {
    match h.encode() {
        Err(Error::Invalid(r)) => assert!(r.contains(reason), "{r:?} lacks {reason:?}"),
        other => panic!("expected Invalid({reason:?}), got {other:?}"),
    }
}

#[test]
fn encoding_matches_the_byte_table_and_round_trips() {
    let h = header();
    let bytes = h.encode().unwrap();
    assert_eq!(bytes, Raw::of(&h).encode());
    assert_eq!(bytes.len(), MIN_RECORD_LEN + 13 + 20 + 64 + 32 + 6 + 7);
    let mut slot = bytes.clone();
    slot.resize(HEADER_SLOT_SIZE as usize, 0xee); // bytes after the record are ignored
    assert_eq!(DomainHeader::decode(&slot).unwrap(), h);
    let empty = DomainHeader {
        signature: vec![],
        manager_key: vec![],
        ..h
    };
    assert_eq!(
        DomainHeader::decode(&empty.encode().unwrap()).unwrap(),
        empty
    );
}

#[test]
fn wrong_magic_is_not_domfs() {
    let mut bytes = header().encode().unwrap();
    bytes[5] = b'X';
    assert!(matches!(DomainHeader::decode(&bytes), Err(Error::NotDomfs)));
    assert!(matches!(DomainHeader::decode(&[]), Err(Error::NotDomfs)));
    assert!(matches!(
        DomainHeader::decode(&[0; 65536]),
        Err(Error::NotDomfs)
    ));
    assert!(matches!(
        DomainHeader::decode(b"DOMF"),
        Err(Error::CorruptHeader(_))
    ));
}

#[test]
fn other_version_is_unsupported() {
    let mut bytes = header().encode().unwrap();
    bytes[8] = 2;
    assert!(matches!(
        DomainHeader::decode(&bytes),
        Err(Error::UnsupportedVersion(2))
    ));
}

#[test]
fn checksum_mismatch_is_corrupt() {
    for at in [16, 60, MIN_RECORD_LEN] {
        let mut bytes = header().encode().unwrap();
        bytes[at] ^= 1;
        match DomainHeader::decode(&bytes) {
            Err(Error::CorruptHeader(r)) => assert_eq!(r, "checksum mismatch"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn record_length_must_fit() {
    let bytes = header().encode().unwrap();
    for (total, reason) in [
        (105u32, "outside"),
        (65537, "outside"),
        (u32::MAX, "outside"),
        (4000, "beyond"),
    ] {
        let mut b = bytes.clone();
        b[12..16].copy_from_slice(&total.to_le_bytes());
        match DomainHeader::decode(&b) {
            Err(Error::CorruptHeader(r)) => assert!(r.contains(reason), "{total}: {r}"),
            other => panic!("{total}: {other:?}"),
        }
    }
    assert!(DomainHeader::decode(&bytes[..bytes.len() - 1]).is_err());
}

#[test]
fn block_size_cipher_and_key_mode_are_checked() {
    let raw = Raw::of(&header());
    assert_corrupt(
        &Raw {
            block_size: 512,
            ..raw.clone()
        },
        "block size 512",
    );
    assert_corrupt(
        &Raw {
            suite: 2,
            ..raw.clone()
        },
        "unknown cipher suite 2",
    );
    assert_corrupt(
        &Raw {
            mode: 0,
            ..raw.clone()
        },
        "unknown key mode 0",
    );
    assert_corrupt(&Raw { mode: 3, ..raw }, "unknown key mode 3");
    assert_invalid(
        &DomainHeader {
            block_size: 8192,
            ..header()
        },
        "block size 8192",
    );
}

#[test]
fn metadata_bound() {
    let raw = Raw::of(&header());
    assert_corrupt(
        &Raw {
            meta: vec![b'm'; MAX_META_LEN + 1],
            ..raw
        },
        "metadata",
    );
    assert_invalid(
        &DomainHeader {
            meta: vec![b'm'; MAX_META_LEN + 1],
            ..header()
        },
        "metadata",
    );
    let max = DomainHeader {
        meta: vec![b'm'; MAX_META_LEN],
        ..header()
    };
    assert_eq!(DomainHeader::decode(&max.encode().unwrap()).unwrap(), max);
}

#[test]
fn signed_message_bound() {
    let raw = Raw::of(&header());
    let long = vec![0; MAX_SIGNED_MESSAGE_LEN + 1];
    assert_corrupt(
        &Raw {
            signed: long.clone(),
            ..raw
        },
        "signed message",
    );
    assert_invalid(
        &DomainHeader {
            signed_message: long,
            ..header()
        },
        "signed message",
    );
}

#[test]
fn signature_and_manager_key_lengths() {
    let raw = Raw::of(&header());
    assert_corrupt(
        &Raw {
            signature: vec![1; 63],
            ..raw.clone()
        },
        "signature is 63 bytes",
    );
    assert_corrupt(
        &Raw {
            signature: vec![1; 65],
            ..raw.clone()
        },
        "signature",
    );
    assert_corrupt(
        &Raw {
            key: vec![1; 31],
            ..raw.clone()
        },
        "manager key is 31 bytes",
    );
    assert_corrupt(
        &Raw {
            key: vec![1; 33],
            ..raw
        },
        "manager key",
    );
    assert_invalid(
        &DomainHeader {
            signature: vec![1; 1],
            ..header()
        },
        "signature",
    );
    assert_invalid(
        &DomainHeader {
            manager_key: vec![1; 64],
            ..header()
        },
        "manager key",
    );
}

#[test]
fn extension_bounds() {
    let raw = Raw::of(&header());
    let many: Vec<_> = (0..=MAX_EXTENSIONS as u16).map(|k| (k, vec![])).collect();
    assert_corrupt(
        &Raw {
            extensions: many.clone(),
            ..raw.clone()
        },
        "65 extensions",
    );
    let long = vec![(1, vec![0; MAX_EXTENSION_LEN + 1])];
    assert_corrupt(
        &Raw {
            extensions: long,
            ..raw.clone()
        },
        "extension data",
    );
    assert_corrupt(
        &Raw {
            extensions: vec![(5, vec![]), (5, vec![1])],
            ..raw
        },
        "appears twice",
    );
    let exts = many
        .into_iter()
        .map(|(kind, data)| Extension { kind, data })
        .collect();
    assert_invalid(
        &DomainHeader {
            extensions: exts,
            ..header()
        },
        "65 extensions",
    );
    // Within every bound but over the slot.
    let big = (0..8)
        .map(|kind| Extension {
            kind,
            data: vec![0; MAX_EXTENSION_LEN],
        })
        .collect();
    assert_invalid(
        &DomainHeader {
            extensions: big,
            ..header()
        },
        "over its 65536-byte slot",
    );
}

#[test]
fn trailing_garbage_inside_the_record() {
    let raw = Raw {
        trailing: vec![0; 3],
        ..Raw::of(&header())
    };
    assert_corrupt(&raw, "3 bytes of trailing garbage");
}

#[test]
fn unknown_critical_extension_is_refused_and_others_are_kept() {
    let raw = Raw {
        extensions: vec![(0x8002, b"x".to_vec())],
        ..Raw::of(&header())
    };
    assert_corrupt(&raw, "unknown critical extension 0x8002");
    let critical = vec![Extension {
        kind: 0x8002,
        data: vec![],
    }];
    assert_invalid(
        &DomainHeader {
            extensions: critical,
            ..header()
        },
        "unknown critical",
    );

    let kept = vec![(0x7fff, b"later".to_vec()), (0x0001, vec![])];
    let bytes = Raw {
        extensions: kept,
        ..Raw::of(&header())
    }
    .encode();
    let h = DomainHeader::decode(&bytes).unwrap();
    assert_eq!(h.extensions.len(), 2);
    assert_eq!(h.encode().unwrap(), bytes);
}

#[test]
fn the_retention_policy_is_a_known_critical_extension_that_must_decode() {
    use crate::format::retention::{RETENTION_EXTENSION, Retention};
    let policy = Retention {
        keep_for: Some(3600),
        no_keep: vec!["*-journal".into()],
    };
    let h = DomainHeader {
        extensions: vec![policy.to_extension().unwrap()],
        ..header()
    };
    let bytes = h.encode().unwrap();
    let back = DomainHeader::decode(&bytes).unwrap();
    assert_eq!(Retention::from_header(&back).unwrap(), policy);
    assert_eq!(
        Retention::from_header(&header()).unwrap(),
        Retention::keep_all()
    );
    let raw = Raw {
        extensions: vec![(RETENTION_EXTENSION, b"x".to_vec())],
        ..Raw::of(&header())
    };
    assert_corrupt(&raw, "retention policy");
}
