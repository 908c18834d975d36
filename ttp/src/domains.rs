//! Domain registration and access-list updates (role manager), and destruction (operator).
//!
//! Registration pins the manager key the message verifies with (it must be one the
//! operator added) and draws r; every later list must verify with the pinned key, carry
//! a higher version and the same metadata (metadata is part of the key derivation).

use domfs_proto::acl::{self, AclError, DomainId};
use domfs_proto::ttp::{
    RegisterDomainRequest, RegisterDomainResponse, UpdateAccessListRequest,
    UpdateAccessListResponse,
};

use crate::core::{TtpCore, claimed, exact, now_unix, require_role};
use crate::decision_log::Subject;
use crate::error::Error;
use crate::pki::{Peer, Role};
use crate::records::DomainRecord;
use crate::refusal::Refusal;
use crate::registry::{Lookup, Registry};
use crate::secret::Secret32;

/// A signature or key that does not verify is a policy refusal; a message that verifies
/// but does not parse is malformed.
pub(crate) fn acl_refusal(e: AclError, whose: &str) -> Refusal {
    match e {
        AclError::BadSignature => Refusal::denied(format!(
            "the access list signature does not verify with {whose}"
        )),
        AclError::BadKey => Refusal::denied(format!("{whose} is not a valid Ed25519 key")),
        other => Refusal::invalid(other.to_string()),
    }
}

impl TtpCore {
    pub fn register_domain(
        &self,
        peer: &Peer,
        request: &RegisterDomainRequest,
    ) -> Result<RegisterDomainResponse, Refusal> {
        let mut subject = Subject::new("register-domain", &peer.name);
        let result = self.register_inner(peer, request, &mut subject);
        self.log.record(&subject, result)
    }

    fn register_inner(
        &self,
        peer: &Peer,
        request: &RegisterDomainRequest,
        subject: &mut Subject,
    ) -> Result<(RegisterDomainResponse, String), Refusal> {
        require_role(peer, Role::Manager)?;
        let claim = claimed(&request.signed_message)?;
        subject.domain = Some(claim.domain_id);
        subject.version = Some(claim.version);
        let signature = exact::<64>("signature", &request.signature)?;
        let key = exact::<32>("manager key", &request.manager_key)?;
        let manager = self.registry.read()?.manager_by_key(&key)?.ok_or_else(|| {
            Refusal::denied(
                "this manager key was not added to the TTP (`domfs-ttp managers add NAME KEYFILE`)",
            )
        })?;
        let verified = acl::verify(&request.signed_message, &signature, &key)
            .map_err(|e| acl_refusal(e, &format!("the key of manager {manager}")))?;
        let id = verified.message.domain_id;
        let record = DomainRecord {
            meta: verified.message.meta.clone(),
            manager_name: manager.clone(),
            manager_key: key,
            signed_message: request.signed_message.clone(),
            signature,
            version: verified.message.version,
            nonce_slot: None,
            registered_unix: now_unix(),
            destroyed_unix: 0,
        };
        let outcome = register(&self.registry, &id, record)?;
        let detail = match outcome {
            Registered::New => format!(
                "registered, manager key of {manager} pinned, {} hosts in the list",
                verified.list.grants.len()
            ),
            Registered::Again => "already registered with this very message".to_string(),
        };
        Ok((
            RegisterDomainResponse {
                domain_id: hex::encode(id),
            },
            detail,
        ))
    }

    pub fn update_access_list(
        &self,
        peer: &Peer,
        request: &UpdateAccessListRequest,
    ) -> Result<UpdateAccessListResponse, Refusal> {
        let mut subject = Subject::new("update-access-list", &peer.name);
        let result = self.update_inner(peer, request, &mut subject);
        self.log.record(&subject, result)
    }

    fn update_inner(
        &self,
        peer: &Peer,
        request: &UpdateAccessListRequest,
        subject: &mut Subject,
    ) -> Result<(UpdateAccessListResponse, String), Refusal> {
        require_role(peer, Role::Manager)?;
        let claim = claimed(&request.signed_message)?;
        let id = claim.domain_id;
        subject.domain = Some(id);
        subject.version = Some(claim.version);
        let signature = exact::<64>("signature", &request.signature)?;
        let write = self.registry.write()?;
        let mut record = write
            .domain(&id)?
            .ok_or_else(|| Refusal::not_found(format!("unknown domain {}", hex::encode(id))))?;
        if record.destroyed() {
            return Err(Refusal::denied(format!(
                "domain {} was destroyed",
                hex::encode(id)
            )));
        }
        let verified = acl::verify(&request.signed_message, &signature, &record.manager_key)
            .map_err(|e| acl_refusal(e, "the manager key pinned for this domain"))?;
        if verified.message.meta != record.meta {
            return Err(Refusal::invalid(
                "the metadata differs from the registered metadata (it is part of the key \
                 derivation and cannot change)",
            ));
        }
        if verified.message.version <= record.version {
            return Err(Refusal::denied(format!(
                "access list version {} is not newer than the registered version {}",
                verified.message.version, record.version
            )));
        }
        let previous = record.version;
        record.signed_message = request.signed_message.clone();
        record.signature = signature;
        record.version = verified.message.version;
        write.put_domain(&id, &record)?;
        write.commit()?;
        Ok((
            UpdateAccessListResponse {
                version: record.version,
            },
            format!(
                "access list version {} replaces version {previous}, {} hosts",
                record.version,
                verified.list.grants.len()
            ),
        ))
    }
}

pub(crate) enum Registered {
    New,
    /// The same message was registered before (a retry).
    Again,
}

/// Stores a new domain: r first (synced), then the record that names its slot.
pub(crate) fn register(
    registry: &Registry,
    id: &DomainId,
    record: DomainRecord,
) -> Result<Registered, Refusal> {
    let existing = |found: &DomainRecord| -> Result<Registered, Refusal> {
        if found.destroyed() {
            Err(Refusal::new(
                tonic::Code::AlreadyExists,
                format!(
                    "domain {} was destroyed; a domain id is never reused",
                    hex::encode(id)
                ),
            ))
        } else if found.signed_message == record.signed_message
            && found.signature == record.signature
            && found.manager_key == record.manager_key
        {
            Ok(Registered::Again)
        } else {
            Err(Refusal::new(
                tonic::Code::AlreadyExists,
                format!("domain {} is already registered", hex::encode(id)),
            ))
        }
    };
    if let Some(found) = registry.read()?.domain(id)? {
        return existing(&found);
    }
    let r = Secret32::random()?;
    let slot = registry.nonces().store(id, &r)?;
    let stored = (|| -> Result<Registered, Refusal> {
        let write = registry.write()?;
        if let Some(found) = write.domain(id)? {
            return existing(&found);
        }
        let record = DomainRecord {
            nonce_slot: Some(slot),
            ..record.clone()
        };
        write.put_domain(id, &record)?;
        write.commit()?;
        Ok(Registered::New)
    })();
    if !matches!(stored, Ok(Registered::New)) {
        // Nothing names the slot: erase it now (or at the next open, if this fails too).
        if let Err(e) = registry.nonces().erase(slot) {
            tracing::warn!("cannot erase nonce slot {slot}: {e}");
        }
    }
    stored
}

/// Crypto-shredding: erases r, so K can never be derived again; the record stays, marked
/// destroyed, so the id is never reused. Leases are refused at their next renewal.
/// Destroying twice is not an error.
pub fn destroy(registry: &Registry, id: &DomainId) -> crate::Result<DomainRecord> {
    let write = registry.write()?;
    let mut record = write
        .domain(id)?
        .ok_or_else(|| Error::NotFound(format!("unknown domain {}", hex::encode(id))))?;
    let slot = record.nonce_slot.take();
    if slot.is_some() {
        record.destroyed_unix = now_unix();
        write.put_domain(id, &record)?;
    }
    write.commit()?;
    if let Some(slot) = slot {
        registry.nonces().erase(slot)?;
    }
    Ok(record)
}
