//! The domain manager's signed access list.
//!
//! The paper's manager signs {domain id, metadata, access list} and the cloud platform
//! stores it with the volume. Here the signed bytes are one length-prefixed record, so
//! nothing about them depends on XML canonicalisation; the access list inside is XML, as
//! in the paper, and repeats the domain id and version so that the list read on its own
//! still says what it belongs to.
//!
//! ## Signed message (integers little-endian)
//!
//! | size | field |
//! |---|---|
//! | 8 | magic `"DOMFSACL"` |
//! | 4 | format, `u32` = 1 |
//! | 16 | domain id (the volume id) |
//! | 8 | access-list version, `u64` ≥ 1 |
//! | 4 + m | metadata: `u32` length m ≤ 4096, m bytes |
//! | 4 + x | access list: `u32` length x ≤ [`MAX_XML_LEN`], x bytes of XML |
//!
//! The Ed25519 signature covers [`SIGNATURE_CONTEXT`] followed by the record, and is
//! checked with `verify_strict` (no malleable or small-order keys).
//!
//! ## Access list XML
//!
//! ```xml
//! <accessList domain="00112233445566778899aabbccddeeff" version="2">
//!   <host name="ward-db-1" access="rw"/>
//!   <host name="ward-db-2" access="ro"/>
//! </accessList>
//! ```
//!
//! Host names are the names in the hosts' TLS certificates. The parser is strict: no
//! DTD, no entities, no unknown elements or attributes, no duplicate hosts, bounded size.

use std::collections::BTreeMap;
use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use quick_xml::events::{BytesStart, Event};

pub const MAGIC: [u8; 8] = *b"DOMFSACL";
pub const FORMAT: u32 = 1;
pub const DOMAIN_ID_LEN: usize = 16;
pub const MAX_META_LEN: usize = 4096;
/// Leaves room for the rest of the record inside the header's 48 KiB signed message.
pub const MAX_XML_LEN: usize = 44 * 1024;
pub const MAX_HOSTS: usize = 1024;
pub const MAX_HOST_NAME_LEN: usize = 64;
/// Prepended to the record before signing, so a signature over it means nothing else.
pub const SIGNATURE_CONTEXT: &[u8] = b"domfs signed access list v1\0";
pub const SIGNATURE_LEN: usize = 64;
pub const PUBLIC_KEY_LEN: usize = 32;

pub type DomainId = [u8; DOMAIN_ID_LEN];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AclError {
    #[error("the signed message is malformed: {0}")]
    Malformed(String),
    #[error("the access list XML is invalid: {0}")]
    Xml(String),
    #[error("the access list signature does not verify with the manager key")]
    BadSignature,
    #[error("the manager key is not a valid Ed25519 public key")]
    BadKey,
}

/// A host's right on a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::ReadOnly => "ro",
            Access::ReadWrite => "rw",
        }
    }

    pub fn parse(s: &str) -> Option<Access> {
        match s {
            "ro" => Some(Access::ReadOnly),
            "rw" => Some(Access::ReadWrite),
            _ => None,
        }
    }

    /// Whether holding `self` allows `wanted`.
    pub fn allows(self, wanted: Access) -> bool {
        self >= wanted
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `name` may name a host: 1–64 of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
pub fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_HOST_NAME_LEN
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The access list: which hosts may open the domain, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessList {
    pub domain_id: DomainId,
    pub version: u64,
    pub grants: BTreeMap<String, Access>,
}

impl AccessList {
    pub fn access_of(&self, host: &str) -> Option<Access> {
        self.grants.get(host).copied()
    }

    /// The XML form (deterministic: hosts in name order).
    pub fn to_xml(&self) -> String {
        let mut xml = format!(
            "<accessList domain=\"{}\" version=\"{}\">\n",
            hex::encode(self.domain_id),
            self.version
        );
        for (name, access) in &self.grants {
            // Names are validated to need no escaping.
            xml.push_str(&format!("  <host name=\"{name}\" access=\"{access}\"/>\n"));
        }
        xml.push_str("</accessList>\n");
        xml
    }

    pub fn from_xml(xml: &[u8]) -> Result<AccessList, AclError> {
        parse_xml(xml)
    }

    fn check(&self) -> Result<(), AclError> {
        if self.version == 0 {
            return Err(AclError::Xml("the version must be at least 1".into()));
        }
        if self.grants.len() > MAX_HOSTS {
            return Err(AclError::Xml(format!("more than {MAX_HOSTS} hosts")));
        }
        if let Some(bad) = self.grants.keys().find(|n| !valid_host_name(n)) {
            return Err(AclError::Xml(format!("invalid host name {bad:?}")));
        }
        Ok(())
    }
}

/// The record the manager signs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedMessage {
    pub domain_id: DomainId,
    pub version: u64,
    pub meta: Vec<u8>,
    pub xml: Vec<u8>,
}

impl SignedMessage {
    /// The message for `list` with `meta`; fails if either is over its bounds.
    pub fn new(list: &AccessList, meta: &[u8]) -> Result<SignedMessage, AclError> {
        list.check()?;
        let message = SignedMessage {
            domain_id: list.domain_id,
            version: list.version,
            meta: meta.to_vec(),
            xml: list.to_xml().into_bytes(),
        };
        message.check_bounds()?;
        Ok(message)
    }

    fn check_bounds(&self) -> Result<(), AclError> {
        if self.meta.len() > MAX_META_LEN {
            return Err(AclError::Malformed(format!(
                "metadata of {} bytes (at most {MAX_META_LEN})",
                self.meta.len()
            )));
        }
        if self.xml.len() > MAX_XML_LEN {
            return Err(AclError::Malformed(format!(
                "access list of {} bytes (at most {MAX_XML_LEN})",
                self.xml.len()
            )));
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.meta.len() + self.xml.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT.to_le_bytes());
        out.extend_from_slice(&self.domain_id);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.meta);
        out.extend_from_slice(&(self.xml.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.xml);
        out
    }

    /// Parses the record (not the XML inside; see [`SignedMessage::access_list`]).
    pub fn decode(bytes: &[u8]) -> Result<SignedMessage, AclError> {
        let mut r = Cursor { bytes, at: 0 };
        if r.take(8)? != MAGIC {
            return Err(AclError::Malformed("not a domfs signed access list".into()));
        }
        let format = u32::from_le_bytes(r.array()?);
        if format != FORMAT {
            return Err(AclError::Malformed(format!(
                "format {format} (this build reads {FORMAT})"
            )));
        }
        let domain_id = r.array()?;
        let version = u64::from_le_bytes(r.array()?);
        let meta = r.prefixed(MAX_META_LEN, "metadata")?.to_vec();
        let xml = r.prefixed(MAX_XML_LEN, "access list")?.to_vec();
        if r.at != bytes.len() {
            return Err(AclError::Malformed(format!(
                "{} bytes after the end of the record",
                bytes.len() - r.at
            )));
        }
        Ok(SignedMessage {
            domain_id,
            version,
            meta,
            xml,
        })
    }

    /// The access list inside, checked against the record's domain id and version.
    pub fn access_list(&self) -> Result<AccessList, AclError> {
        let list = parse_xml(&self.xml)?;
        if list.domain_id != self.domain_id {
            return Err(AclError::Xml(
                "the list names another domain than the signed record".into(),
            ));
        }
        if list.version != self.version {
            return Err(AclError::Xml(format!(
                "the list says version {} but the signed record {}",
                list.version, self.version
            )));
        }
        Ok(list)
    }

    /// Encodes and signs; returns (message bytes, signature).
    pub fn sign(&self, key: &SigningKey) -> (Vec<u8>, [u8; SIGNATURE_LEN]) {
        let bytes = self.encode();
        let signature = key.sign(&signing_input(&bytes));
        (bytes, signature.to_bytes())
    }
}

fn signing_input(message: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(SIGNATURE_CONTEXT.len() + message.len());
    input.extend_from_slice(SIGNATURE_CONTEXT);
    input.extend_from_slice(message);
    input
}

/// A verified message and its parsed list.
#[derive(Clone, Debug)]
pub struct Verified {
    pub message: SignedMessage,
    pub list: AccessList,
}

/// Checks `signature` over `message` with `manager_key`, then parses both layers. Nothing
/// is parsed before the signature holds.
pub fn verify(message: &[u8], signature: &[u8], manager_key: &[u8]) -> Result<Verified, AclError> {
    let key_bytes: [u8; PUBLIC_KEY_LEN] = manager_key.try_into().map_err(|_| AclError::BadKey)?;
    let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| AclError::BadKey)?;
    let signature: [u8; SIGNATURE_LEN] =
        signature.try_into().map_err(|_| AclError::BadSignature)?;
    key.verify_strict(&signing_input(message), &Signature::from_bytes(&signature))
        .map_err(|_| AclError::BadSignature)?;
    let message = SignedMessage::decode(message)?;
    let list = message.access_list()?;
    Ok(Verified { message, list })
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], AclError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| AclError::Malformed("the record is truncated".into()))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], AclError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn prefixed(&mut self, max: usize, what: &str) -> Result<&'a [u8], AclError> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        if len > max {
            return Err(AclError::Malformed(format!(
                "{what} of {len} bytes (at most {max})"
            )));
        }
        self.take(len)
    }
}

fn parse_xml(xml: &[u8]) -> Result<AccessList, AclError> {
    if xml.len() > MAX_XML_LEN {
        return Err(AclError::Xml(format!("longer than {MAX_XML_LEN} bytes")));
    }
    let text = std::str::from_utf8(xml).map_err(|_| AclError::Xml("not UTF-8".into()))?;
    let mut reader = quick_xml::Reader::from_str(text);
    reader.config_mut().trim_text(true);
    let mut root: Option<(DomainId, u64)> = None;
    let mut closed = false;
    let mut grants = BTreeMap::new();
    loop {
        let event = reader
            .read_event()
            .map_err(|e| AclError::Xml(format!("at byte {}: {e}", reader.buffer_position())))?;
        match event {
            Event::Eof => break,
            Event::Decl(_) | Event::Comment(_) => {}
            Event::Text(t) if t.as_ref().trim().is_empty() => {}
            Event::Start(e) if root.is_none() && !closed => {
                if e.name().0 != "accessList" {
                    return Err(AclError::Xml(
                        "the root element must be <accessList>".into(),
                    ));
                }
                root = Some(root_attributes(&e)?);
            }
            Event::Empty(e) if root.is_some() && !closed => {
                if e.name().0 != "host" {
                    return Err(AclError::Xml(format!(
                        "unexpected element <{}>",
                        e.name().0
                    )));
                }
                let (name, access) = host_attributes(&e)?;
                if grants.len() >= MAX_HOSTS {
                    return Err(AclError::Xml(format!("more than {MAX_HOSTS} hosts")));
                }
                if grants.insert(name.clone(), access).is_some() {
                    return Err(AclError::Xml(format!("host {name:?} is listed twice")));
                }
            }
            Event::End(e) if root.is_some() && !closed && e.name().0 == "accessList" => {
                closed = true;
            }
            Event::DocType(_) => {
                return Err(AclError::Xml("a DOCTYPE is not allowed".into()));
            }
            other => {
                return Err(AclError::Xml(format!(
                    "unexpected content at byte {}: {other:?}",
                    reader.buffer_position()
                )));
            }
        }
    }
    let Some((domain_id, version)) = root else {
        return Err(AclError::Xml("no <accessList> element".into()));
    };
    if !closed {
        return Err(AclError::Xml("<accessList> is not closed".into()));
    }
    let list = AccessList {
        domain_id,
        version,
        grants,
    };
    list.check()?;
    Ok(list)
}

fn attributes(e: &BytesStart<'_>) -> Result<Vec<(String, String)>, AclError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for attribute in e.attributes() {
        let attribute = attribute.map_err(|err| AclError::Xml(err.to_string()))?;
        let key = attribute.key.0.to_string();
        let value = attribute
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|err| AclError::Xml(err.to_string()))?
            .into_owned();
        if out.iter().any(|(k, _)| *k == key) {
            return Err(AclError::Xml(format!("attribute {key} given twice")));
        }
        out.push((key, value));
    }
    Ok(out)
}

fn root_attributes(e: &BytesStart<'_>) -> Result<(DomainId, u64), AclError> {
    let (mut domain, mut version) = (None, None);
    for (key, value) in attributes(e)? {
        match key.as_str() {
            "domain" => {
                let bytes = hex::decode(&value)
                    .ok()
                    .and_then(|b| DomainId::try_from(b.as_slice()).ok())
                    .ok_or_else(|| {
                        AclError::Xml(format!("domain {value:?} is not 32 hex digits"))
                    })?;
                domain = Some(bytes);
            }
            "version" => {
                let v = value
                    .parse::<u64>()
                    .map_err(|_| AclError::Xml(format!("version {value:?} is not a number")))?;
                version = Some(v);
            }
            other => {
                return Err(AclError::Xml(format!(
                    "unknown attribute {other} on <accessList>"
                )));
            }
        }
    }
    match (domain, version) {
        (Some(d), Some(v)) => Ok((d, v)),
        _ => Err(AclError::Xml(
            "<accessList> needs both domain and version".into(),
        )),
    }
}

fn host_attributes(e: &BytesStart<'_>) -> Result<(String, Access), AclError> {
    let (mut name, mut access) = (None, None);
    for (key, value) in attributes(e)? {
        match key.as_str() {
            "name" => {
                if !valid_host_name(&value) {
                    return Err(AclError::Xml(format!("invalid host name {value:?}")));
                }
                name = Some(value);
            }
            "access" => {
                access = Some(Access::parse(&value).ok_or_else(|| {
                    AclError::Xml(format!("access {value:?} is neither rw nor ro"))
                })?);
            }
            other => {
                return Err(AclError::Xml(format!(
                    "unknown attribute {other} on <host>"
                )));
            }
        }
    }
    match (name, access) {
        (Some(n), Some(a)) => Ok((n, a)),
        _ => Err(AclError::Xml("<host> needs both name and access".into())),
    }
}

#[cfg(test)]
#[path = "acl_tests.rs"]
mod tests;
