use super::*;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn list(version: u64) -> AccessList {
    let mut grants = BTreeMap::new();
    grants.insert("ward-db-1".to_string(), Access::ReadWrite);
    grants.insert("ward-db-2".to_string(), Access::ReadOnly);
    AccessList {
        domain_id: [7; 16],
        version,
        grants,
    }
}

#[test]
fn signed_message_round_trips_and_verifies() {
    let message = SignedMessage::new(&list(3), b"melior:ward-12").unwrap();
    let (bytes, signature) = message.sign(&key(1));
    let verified = verify(&bytes, &signature, key(1).verifying_key().as_bytes()).unwrap();
    assert_eq!(verified.message, message);
    assert_eq!(verified.list, list(3));
    assert_eq!(
        verified.list.access_of("ward-db-1"),
        Some(Access::ReadWrite)
    );
    assert_eq!(verified.list.access_of("ward-db-2"), Some(Access::ReadOnly));
    assert_eq!(verified.list.access_of("elsewhere"), None);
}

#[test]
fn any_flipped_bit_or_other_key_fails_verification() {
    let (bytes, signature) = SignedMessage::new(&list(1), b"m").unwrap().sign(&key(1));
    let public = key(1).verifying_key();
    for i in 0..bytes.len() {
        let mut edited = bytes.clone();
        edited[i] ^= 0x10;
        assert_eq!(
            verify(&edited, &signature, public.as_bytes()).unwrap_err(),
            AclError::BadSignature,
            "byte {i}"
        );
    }
    assert_eq!(
        verify(&bytes, &signature, key(2).verifying_key().as_bytes()).unwrap_err(),
        AclError::BadSignature
    );
    assert_eq!(
        verify(&bytes, &signature[..63], public.as_bytes()).unwrap_err(),
        AclError::BadSignature
    );
    assert_eq!(
        verify(&bytes, &signature, &[1; 31]).unwrap_err(),
        AclError::BadKey
    );
}

#[test]
fn truncated_or_padded_records_are_malformed() {
    let bytes = SignedMessage::new(&list(1), b"meta").unwrap().encode();
    for len in 0..bytes.len() {
        assert!(matches!(
            SignedMessage::decode(&bytes[..len]),
            Err(AclError::Malformed(_))
        ));
    }
    let mut padded = bytes.clone();
    padded.push(0);
    assert!(matches!(
        SignedMessage::decode(&padded),
        Err(AclError::Malformed(_))
    ));
}

#[test]
fn xml_must_agree_with_the_record() {
    let mut message = SignedMessage::new(&list(2), b"").unwrap();
    message.version = 3;
    assert!(matches!(message.access_list(), Err(AclError::Xml(_))));
    let mut other = SignedMessage::new(&list(2), b"").unwrap();
    other.domain_id = [8; 16];
    assert!(matches!(other.access_list(), Err(AclError::Xml(_))));
}

#[test]
fn strict_xml_parser_refuses_what_it_does_not_know() {
    let id = "07070707070707070707070707070707";
    let bad = [
        format!("<!DOCTYPE x [<!ENTITY e \"boom\">]><accessList domain=\"{id}\" version=\"1\"/>"),
        format!(
            "<accessList domain=\"{id}\" version=\"1\"><host name=\"a\" access=\"rw\"/><host name=\"a\" access=\"ro\"/></accessList>"
        ),
        format!(
            "<accessList domain=\"{id}\" version=\"1\"><host name=\"a\" access=\"admin\"/></accessList>"
        ),
        format!(
            "<accessList domain=\"{id}\" version=\"1\"><host name=\"a b\" access=\"rw\"/></accessList>"
        ),
        format!(
            "<accessList domain=\"{id}\" version=\"1\"><guest name=\"a\" access=\"rw\"/></accessList>"
        ),
        format!("<accessList domain=\"{id}\" version=\"1\" extra=\"x\"></accessList>"),
        format!("<accessList domain=\"{id}\" version=\"0\"></accessList>"),
        format!("<accessList domain=\"{id}\"></accessList>"),
        "<accessList domain=\"zz\" version=\"1\"></accessList>".to_string(),
        format!("<accessList domain=\"{id}\" version=\"1\">"),
        format!(
            "<accessList domain=\"{id}\" version=\"1\"></accessList><accessList domain=\"{id}\" version=\"1\"></accessList>"
        ),
        format!("<accessList domain=\"{id}\" version=\"1\">text</accessList>"),
        String::new(),
    ];
    for xml in bad {
        assert!(
            AccessList::from_xml(xml.as_bytes()).is_err(),
            "accepted {xml:?}"
        );
    }
    let good = format!(
        "<?xml version=\"1.0\"?>\n<!-- ward 12 -->\n<accessList domain=\"{id}\" version=\"4\">\n <host name=\"db1\" access=\"ro\"/>\n</accessList>\n"
    );
    let parsed = AccessList::from_xml(good.as_bytes()).unwrap();
    assert_eq!(parsed.version, 4);
    assert_eq!(parsed.access_of("db1"), Some(Access::ReadOnly));
}

#[test]
fn rw_allows_ro_but_not_the_other_way() {
    assert!(Access::ReadWrite.allows(Access::ReadOnly));
    assert!(Access::ReadWrite.allows(Access::ReadWrite));
    assert!(Access::ReadOnly.allows(Access::ReadOnly));
    assert!(!Access::ReadOnly.allows(Access::ReadWrite));
}

proptest::proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let _ = SignedMessage::decode(&bytes);
        let _ = AccessList::from_xml(&bytes);
    }
}
