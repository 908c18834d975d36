//! The TTP's certificate authority (the paper's CA of the cloud platform) and what a
//! certificate says about its holder.
//!
//! Every certificate the CA issues carries the holder's name as its subject common name
//! and its role as the subject organizational unit:
//!
//! | role | subject | extended key usage |
//! |---|---|---|
//! | host | `O=domfs, OU=domfs-host, CN=<host name>` | clientAuth |
//! | manager | `O=domfs, OU=domfs-manager, CN=<name>` | clientAuth |
//! | the TTP server | `O=domfs, OU=domfs-ttp, CN=domfs-ttp` + DNS/IP SANs | serverAuth |
//!
//! Names are host names in the sense of [`domfs_proto::acl::valid_host_name`], the names
//! access lists use. Keys are ECDSA P-256. The server requires a client certificate from
//! this CA on every connection (rustls checks the chain and the clientAuth usage); the
//! service then reads the name and role from the leaf with [`identify`]. There is no
//! certificate revocation list: a host is revoked in the registry (`domfs-ttp hosts
//! revoke`), and a manager's authority is its Ed25519 key, not its certificate.

use std::fmt;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::error::{Error, Result};

const ORGANIZATION: &str = "domfs";
const CA_NAME: &str = "domfs TTP CA";
pub const SERVER_NAME: &str = "domfs-ttp";
pub const CA_DAYS: i64 = 20 * 365;
pub const DEFAULT_DAYS: i64 = 825;

/// What a certificate entitles its holder to call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A host's agent: enrollment, key release, leases.
    Host,
    /// A domain manager (or the cloud platform on its behalf): domain registration and
    /// access-list updates.
    Manager,
}

impl Role {
    pub fn unit(self) -> &'static str {
        match self {
            Role::Host => "domfs-host",
            Role::Manager => "domfs-manager",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::Manager => "manager",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "host" => Some(Role::Host),
            "manager" => Some(Role::Manager),
            _ => None,
        }
    }

    fn from_unit(unit: &str) -> Option<Role> {
        [Role::Host, Role::Manager]
            .into_iter()
            .find(|r| r.unit() == unit)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caller, as its certificate names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub role: Role,
}

/// A certificate and its private key, both PEM.
pub struct IssuedPem {
    pub cert: String,
    /// PKCS#8 PEM; write it with mode 0600.
    pub key: String,
}

fn cert_error(e: impl fmt::Display) -> Error {
    Error::Certificate(e.to_string())
}

fn subject(unit: &str, name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::OrganizationalUnitName, unit);
    dn.push(DnType::CommonName, name);
    dn
}

fn validity(params: &mut CertificateParams, days: i64) -> Result<()> {
    if !(1..=CA_DAYS).contains(&days) {
        return Err(Error::Invalid(format!(
            "validity of {days} days (1 to {CA_DAYS})"
        )));
    }
    let now = OffsetDateTime::now_utc();
    // A little slack for clocks that are slightly behind.
    params.not_before = now - Duration::minutes(10);
    params.not_after = now + Duration::days(days);
    let mut serial = [0u8; 16];
    crate::error::random(&mut serial)?;
    serial[0] &= 0x7f;
    params.serial_number = Some(serial.to_vec().into());
    Ok(())
}

/// A new self-signed CA.
pub fn new_ca() -> Result<IssuedPem> {
    let key = KeyPair::generate().map_err(cert_error)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject("domfs-ca", CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, CA_DAYS)?;
    let cert = params.self_signed(&key).map_err(cert_error)?;
    Ok(IssuedPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The CA, loaded from its PEM files, ready to sign.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let key = KeyPair::from_pem(key_pem).map_err(cert_error)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(cert_error)?;
        Ok(Ca { issuer })
    }

    /// A client certificate for `name` in `role`.
    pub fn issue_client(&self, name: &str, role: Role, days: i64) -> Result<IssuedPem> {
        if !domfs_proto::acl::valid_host_name(name) {
            return Err(Error::Invalid(format!(
                "{name:?} is not a valid name: 1-64 of A-Z a-z 0-9 . _ -, not starting with . or -"
            )));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(role.unit(), name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, days)?;
        self.sign(params)
    }

    /// The server's certificate for `sans` (DNS names or IP addresses).
    pub fn issue_server(&self, sans: &[String], days: i64) -> Result<IssuedPem> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
        for san in sans {
            let not_a_name = || Error::Invalid(format!("{san:?} is not a DNS name or IP address"));
            let entry = match san.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) if valid_dns_name(san) => {
                    SanType::DnsName(san.clone().try_into().map_err(|_| not_a_name())?)
                }
                Err(_) => return Err(not_a_name()),
            };
            if !params.subject_alt_names.contains(&entry) {
                params.subject_alt_names.push(entry);
            }
        }
        params.distinguished_name = subject(SERVER_NAME, SERVER_NAME);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, days)?;
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<IssuedPem> {
        let key = KeyPair::generate().map_err(cert_error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(cert_error)?;
        Ok(IssuedPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// The name and role in a (chain-verified) client certificate, DER.
pub fn identify(cert_der: &[u8]) -> std::result::Result<Peer, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| format!("the client certificate does not parse: {e}"))?;
    let subject = cert.subject();
    let single = |mut values: Vec<&str>, what: &str| match values.len() {
        1 => Ok(values.remove(0).to_string()),
        n => Err(format!(
            "the client certificate has {n} {what} entries (want 1)"
        )),
    };
    let names: Vec<&str> = subject
        .iter_common_name()
        .filter_map(|a| a.as_str().ok())
        .collect();
    let units: Vec<&str> = subject
        .iter_organizational_unit()
        .filter_map(|a| a.as_str().ok())
        .collect();
    let name = single(names, "common name")?;
    let unit = single(units, "organizational unit")?;
    if !domfs_proto::acl::valid_host_name(&name) {
        return Err(format!(
            "the client certificate names {name:?}, not a host name"
        ));
    }
    let role = Role::from_unit(&unit)
        .ok_or_else(|| format!("the client certificate's role {unit:?} is not host or manager"))?;
    Ok(Peer { name, role })
}

/// The machine's host name, if it is a usable DNS name.
pub fn local_host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    valid_dns_name(name).then(|| name.to_string())
}

/// Letters, digits and `-` in dot-separated labels of 1-63 characters, not starting or
/// ending with `-`; 253 characters at most.
pub fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem_text: &str) -> Vec<u8> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).expect("PEM");
        pem.contents
    }

    #[test]
    fn client_certificates_carry_name_and_role() -> Result<()> {
        let ca_pem = new_ca()?;
        let ca = Ca::from_pem(&ca_pem.cert, &ca_pem.key)?;
        let host = ca.issue_client("ward-db-1", Role::Host, 30)?;
        assert_eq!(
            identify(&der(&host.cert)),
            Ok(Peer {
                name: "ward-db-1".into(),
                role: Role::Host
            })
        );
        let manager = ca.issue_client("alice", Role::Manager, 30)?;
        assert_eq!(
            identify(&der(&manager.cert)).map(|p| p.role),
            Ok(Role::Manager)
        );
        // The server's own certificate is no client identity.
        let server = ca.issue_server(&["localhost".into(), "127.0.0.1".into()], 30)?;
        assert!(identify(&der(&server.cert)).is_err());
        assert!(identify(&der(&ca_pem.cert)).is_err());
        assert!(identify(b"garbage").is_err());
        Ok(())
    }

    #[test]
    fn bad_names_and_validity_are_refused() -> Result<()> {
        let ca_pem = new_ca()?;
        let ca = Ca::from_pem(&ca_pem.cert, &ca_pem.key)?;
        for bad in ["", "-x", ".x", "a b", "a/b", &"x".repeat(65)] {
            assert!(ca.issue_client(bad, Role::Host, 30).is_err(), "{bad:?}");
        }
        assert!(ca.issue_client("ok", Role::Host, 0).is_err());
        assert!(ca.issue_server(&["not a name".into()], 30).is_err());
        Ok(())
    }
}
