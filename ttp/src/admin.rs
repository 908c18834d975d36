//! The operator's commands, on a registry: the admin socket's server calls them with the
//! running TTP's registry, and the CLI calls them directly when no server runs. Both
//! answer with the admin protocol's records, so the CLI prints them the same way.
//! Every change is written to the decision log as an `admin-*` line.

use domfs_proto::acl::{DomainId, SignedMessage, valid_host_name};
use domfs_proto::ttp as wire;
use ed25519_dalek::VerifyingKey;

use crate::core::now_unix;
use crate::decision_log::{DecisionLog, Subject};
use crate::error::{Error, Result};
use crate::records::{
    CheckpointRecord, DomainRecord, HostRecord, HostState, ManagerRecord, RwLease,
};
use crate::registry::{Lookup, Registry};
use crate::secret::Secret32;
use crate::state::StateDir;

pub struct Admin<'a> {
    pub registry: &'a Registry,
    pub state: &'a StateDir,
    pub log: &'a DecisionLog,
}

/// An Ed25519 public key from a key file: 64 hex digits (what `domfs manager keygen`
/// writes to FILE.pub, surrounding white space allowed) or 32 raw bytes.
pub fn parse_manager_key(bytes: &[u8]) -> Result<[u8; 32]> {
    let from_hex = std::str::from_utf8(bytes)
        .ok()
        .and_then(|t| hex::decode(t.trim()).ok())
        .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok());
    from_hex
        .or_else(|| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| {
            Error::Invalid(
                "a manager public key file holds 64 hex digits or 32 raw bytes".to_string(),
            )
        })
}

pub fn parse_domain_id(text: &str) -> Result<DomainId> {
    hex::decode(text.trim())
        .ok()
        .and_then(|b| DomainId::try_from(b.as_slice()).ok())
        .ok_or_else(|| Error::Invalid(format!("{text:?} is not a domain id (32 hex digits)")))
}

fn check_name(name: &str, what: &str) -> Result<()> {
    if valid_host_name(name) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{name:?} is not a valid {what} name: 1-64 of A-Z a-z 0-9 . _ -, not starting \
             with . or -"
        )))
    }
}

pub fn host_record(name: &str, host: &HostRecord) -> wire::HostRecord {
    wire::HostRecord {
        name: name.to_string(),
        state: host.state.as_str().to_string(),
        attestation_key_fingerprint: host.attestation_key_fingerprint.clone(),
        pcr_selection: host.pcr_selection.clone(),
        pcr_digest: hex::encode(&host.pcr_digest),
        enrolled_unix: host.enrolled_unix,
    }
}

pub fn domain_record(
    id: &DomainId,
    domain: &DomainRecord,
    lease: Option<&RwLease>,
    checkpoint: Option<&CheckpointRecord>,
    now: u64,
) -> wire::DomainRecord {
    let grants = SignedMessage::decode(&domain.signed_message)
        .and_then(|m| m.access_list())
        .map(|list| {
            list.grants
                .iter()
                .map(|(host, access)| format!("{host}={access}"))
                .collect()
        })
        .unwrap_or_else(|e| vec![format!("(unreadable: {e})")]);
    let live = lease.filter(|l| l.expires_unix > now);
    wire::DomainRecord {
        domain_id: hex::encode(id),
        meta: String::from_utf8_lossy(&domain.meta).into_owned(),
        manager: domain.manager_name.clone(),
        access_list_version: domain.version,
        grants,
        destroyed: domain.destroyed(),
        rw_lease_holder: live.map(|l| l.holder.clone()).unwrap_or_default(),
        rw_lease_until_unix: live.map(|l| l.expires_unix).unwrap_or_default(),
        registered_unix: domain.registered_unix,
        checkpoint: checkpoint.map(CheckpointRecord::to_wire),
    }
}

impl Admin<'_> {
    fn logged<T>(&self, op: &'static str, name: &str, result: Result<(T, String)>) -> Result<T> {
        self.logged_about(&Subject::new(op, name), result)
    }

    fn logged_about<T>(&self, subject: &Subject, result: Result<(T, String)>) -> Result<T> {
        match result {
            Ok((value, detail)) => {
                self.log.granted(subject, &detail);
                Ok(value)
            }
            Err(e) => {
                let refusal = crate::refusal::Refusal::new(e.to_status().code(), e.to_string());
                self.log.refused(subject, &refusal);
                Err(e)
            }
        }
    }

    pub fn add_manager(&self, name: &str, public_key: &[u8]) -> Result<()> {
        let result = (|| {
            check_name(name, "manager")?;
            let key = <[u8; 32]>::try_from(public_key)
                .map_err(|_| Error::Invalid("a manager key is 32 bytes".into()))?;
            let valid = VerifyingKey::from_bytes(&key).is_ok_and(|k| !k.is_weak());
            if !valid {
                return Err(Error::Invalid(
                    "not a usable Ed25519 public key (invalid or of small order)".into(),
                ));
            }
            let write = self.registry.write()?;
            if write.manager(name)?.is_some() {
                return Err(Error::Conflict(format!("manager {name} exists already")));
            }
            if let Some(other) = write.manager_by_key(&key)? {
                return Err(Error::Conflict(format!(
                    "this key was added already, as manager {other}"
                )));
            }
            write.put_manager(
                name,
                &ManagerRecord {
                    public_key: key,
                    added_unix: now_unix(),
                },
            )?;
            write.commit()?;
            Ok(((), format!("manager key {} added", hex::encode(key))))
        })();
        self.logged("admin-add-manager", name, result)
    }

    pub fn list_managers(&self) -> Result<Vec<wire::ManagerRecord>> {
        Ok(self
            .registry
            .read()?
            .managers()?
            .into_iter()
            .map(|(name, m)| wire::ManagerRecord {
                name,
                public_key: m.public_key.to_vec(),
                added_unix: m.added_unix,
            })
            .collect())
    }

    pub fn list_hosts(&self) -> Result<Vec<wire::HostRecord>> {
        Ok(self
            .registry
            .read()?
            .hosts()?
            .iter()
            .map(|(name, h)| host_record(name, h))
            .collect())
    }

    pub fn approve_host(&self, name: &str) -> Result<wire::HostRecord> {
        let result = (|| {
            check_name(name, "host")?;
            let write = self.registry.write()?;
            let mut host = write
                .host(name)?
                .ok_or_else(|| Error::NotFound(format!("no host {name} has enrolled")))?;
            match host.state {
                HostState::Revoked => {
                    return Err(Error::Conflict(format!(
                        "host {name} is revoked, and revocation is final (enroll the machine \
                         under a new name with a new certificate)"
                    )));
                }
                HostState::Approved => {}
                HostState::Pending => {
                    host.state = HostState::Approved;
                    host.changed_unix = now_unix();
                    write.put_host(name, &host)?;
                    write.commit()?;
                }
            }
            let detail = format!(
                "approved (attestation key {}, PCRs {} = {})",
                host.attestation_key_fingerprint,
                host.pcr_selection,
                hex::encode(&host.pcr_digest)
            );
            Ok((host_record(name, &host), detail))
        })();
        self.logged("admin-approve-host", name, result)
    }

    /// Revokes `name` for good. A name that never enrolled is revoked too (a leaked
    /// certificate can be revoked before it is ever used). Its leases are left to be
    /// refused at their next renewal (or to expire): a read-write lease freed now could
    /// be taken by another host while the revoked one still writes.
    pub fn revoke_host(&self, name: &str) -> Result<wire::HostRecord> {
        let result = (|| {
            check_name(name, "host")?;
            let now = now_unix();
            let write = self.registry.write()?;
            let mut host = write.host(name)?.unwrap_or(HostRecord {
                state: HostState::Revoked,
                decryption_key_spki: Vec::new(),
                attestation_key_fingerprint: String::new(),
                pcr_selection: String::new(),
                pcr_digest: Vec::new(),
                enrolled_unix: 0,
                changed_unix: now,
            });
            host.state = HostState::Revoked;
            host.changed_unix = now;
            write.put_host(name, &host)?;
            write.commit()?;
            let detail = "revoked; its leases end at their next renewal".to_string();
            Ok((host_record(name, &host), detail))
        })();
        self.logged("admin-revoke-host", name, result)
    }

    pub fn list_domains(&self) -> Result<Vec<wire::DomainRecord>> {
        let now = now_unix();
        let read = self.registry.read()?;
        read.domains()?
            .iter()
            .map(|(id, d, lease)| {
                let checkpoint = read.checkpoint(id)?;
                Ok(domain_record(
                    id,
                    d,
                    lease.as_ref(),
                    checkpoint.as_ref(),
                    now,
                ))
            })
            .collect()
    }

    pub fn destroy_domain(&self, id_text: &str) -> Result<wire::DomainRecord> {
        let result = (|| {
            let id = parse_domain_id(id_text)?;
            let record = crate::domains::destroy(self.registry, &id)?;
            let checkpoint = self.registry.read()?.checkpoint(&id)?;
            Ok((
                domain_record(&id, &record, None, checkpoint.as_ref(), now_unix()),
                "destroyed: r erased; leases end at their next renewal".to_string(),
            ))
        })();
        let mut subject = Subject::new("admin-destroy-domain", "-");
        subject.domain = parse_domain_id(id_text).ok();
        self.logged_about(&subject, result)
    }

    pub fn backup(&self, backup_key: &Secret32) -> Result<Vec<u8>> {
        let result = crate::backup::create(self.registry, self.state, backup_key)
            .map(|b| (b, "backup written".to_string()));
        self.logged("admin-backup", "-", result)
    }
}
