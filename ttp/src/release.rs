//! Key release (role host): GetDomainKey, RenewLease, ReleaseLease.
//!
//! GetDomainKey verifies the presented message with the domain's pinned manager key and
//! refuses a version other than the newest registered one (older: a rollback to a list
//! that may still name a revoked host; newer: never registered). The decision itself is
//! made on the *registered* list ([`crate::core::authorise`]). A read-only grant reads one
//! registry snapshot and keeps its lease in memory (no sync on this path); a read-write
//! grant decides, takes the domain's one read-write lease and commits, all in one write
//! transaction, so two hosts cannot both win it. Every grant carries the domain's newest
//! checkpoint ([`crate::checkpoint`]) from the same snapshot.

use domfs_proto::KEY_LEN;
use domfs_proto::acl::{Access, DomainId};
use domfs_proto::ttp::{
    GetDomainKeyRequest, GetDomainKeyResponse, ReleaseLeaseRequest, ReleaseLeaseResponse,
    RenewLeaseRequest, RenewLeaseResponse,
};

use crate::core::{
    Authorised, TtpCore, authorise, check_presented, claimed, exact, format_unix, mode_of,
    now_unix, proto_mode, require_role,
};
use crate::decision_log::Subject;
use crate::derive;
use crate::leases::RoLease;
use crate::pki::{Peer, Role};
use crate::records::RwLease;
use crate::refusal::Refusal;
use crate::registry::Lookup;
use crate::secret::SecretBytes;

/// The keys of a grant, wrapped to the host.
struct Wrapped {
    wrapped_keys: Vec<u8>,
    writer_public_key: [u8; 32],
    version: u64,
}

impl TtpCore {
    pub fn get_domain_key(
        &self,
        peer: &Peer,
        request: &GetDomainKeyRequest,
    ) -> Result<GetDomainKeyResponse, Refusal> {
        let mut subject = Subject::new("get-domain-key", &peer.name);
        let result = self.get_domain_key_inner(peer, request, &mut subject);
        self.log.record(&subject, result)
    }

    fn get_domain_key_inner(
        &self,
        peer: &Peer,
        request: &GetDomainKeyRequest,
        subject: &mut Subject,
    ) -> Result<(GetDomainKeyResponse, String), Refusal> {
        require_role(peer, Role::Host)?;
        let mode = mode_of(request.mode)?;
        subject.mode = Some(mode);
        let claim = claimed(&request.signed_message)?;
        let id = claim.domain_id;
        subject.domain = Some(id);
        subject.version = Some(claim.version);
        exact::<64>("signature", &request.signature)?;
        let now = now_unix();
        let expires = self.lease_until(now);
        let mut lease_id = [0u8; 16];
        crate::error::random(&mut lease_id)?;

        let (wrapped, checkpoint) = match mode {
            Access::ReadOnly => {
                let read = self.registry.read()?;
                let authorised = self.check(&read, peer, &id, request, mode)?;
                let checkpoint = read.checkpoint(&id)?;
                let wrapped = self.wrap(peer, &id, &authorised, mode)?;
                self.ro_leases.insert(
                    lease_id,
                    RoLease {
                        host: peer.name.clone(),
                        domain: id,
                        expires_unix: expires,
                    },
                    now,
                )?;
                (wrapped, checkpoint)
            }
            Access::ReadWrite => {
                let write = self.registry.write()?;
                let authorised = self.check(&write, peer, &id, request, mode)?;
                if let Some(lease) = write.rw_lease(&id)?
                    && lease.expires_unix > now
                {
                    return Err(Refusal::held(format!(
                        "host {} holds the read-write lease of domain {} until {}",
                        lease.holder,
                        hex::encode(id),
                        format_unix(lease.expires_unix)
                    )));
                }
                let checkpoint = write.checkpoint(&id)?;
                let wrapped = self.wrap(peer, &id, &authorised, mode)?;
                write.put_rw_lease(
                    &id,
                    &RwLease {
                        holder: peer.name.clone(),
                        lease_id,
                        expires_unix: expires,
                        version: wrapped.version,
                    },
                )?;
                write.commit()?;
                (wrapped, checkpoint)
            }
        };
        let detail = format!(
            "granted: lease {} for {} s, {}",
            hex::encode(lease_id),
            self.lease_seconds,
            match &checkpoint {
                Some(c) => format!("checkpoint {}", c.sequence),
                None => "no checkpoint yet".to_string(),
            }
        );
        Ok((
            GetDomainKeyResponse {
                wrapped_keys: wrapped.wrapped_keys,
                writer_public_key: wrapped.writer_public_key.to_vec(),
                granted_mode: proto_mode(mode) as i32,
                lease_id: lease_id.to_vec(),
                lease_seconds: self.lease_seconds,
                access_list_version: wrapped.version,
                checkpoint: checkpoint.map(|c| c.to_wire()),
            },
            detail,
        ))
    }

    /// Checks the presented message against the registry, and the host against the
    /// registered list.
    fn check(
        &self,
        view: &impl Lookup,
        peer: &Peer,
        id: &DomainId,
        request: &GetDomainKeyRequest,
        mode: Access,
    ) -> Result<Authorised, Refusal> {
        let domain = view
            .domain(id)?
            .ok_or_else(|| Refusal::not_found(format!("unknown domain {}", hex::encode(id))))?;
        if domain.destroyed() {
            return Err(Refusal::denied(format!(
                "domain {} was destroyed",
                hex::encode(id)
            )));
        }
        check_presented(&domain, &request.signed_message, &request.signature)?;
        authorise(view, &peer.name, id, mode)
    }

    /// Derives the domain's keys and wraps them to the host's TPM key.
    fn wrap(
        &self,
        peer: &Peer,
        id: &DomainId,
        authorised: &Authorised,
        mode: Access,
    ) -> Result<Wrapped, Refusal> {
        let r = self
            .registry
            .nonce(id, &authorised.domain)?
            .ok_or_else(|| Refusal::denied(format!("domain {} was destroyed", hex::encode(id))))?;
        let key = derive::domain_key(&self.master, id, &authorised.domain.meta, &r);
        let seed = derive::writer_seed(&self.master, id, &r);
        let writer_public_key = derive::writer_public(&seed);
        let mut plaintext = SecretBytes::with_capacity(2 * KEY_LEN);
        plaintext.extend(key.expose());
        if mode == Access::ReadWrite {
            plaintext.extend(seed.expose());
        }
        let wrapped_keys =
            crate::wrap::wrap_for_host(&authorised.host.decryption_key_spki, plaintext.expose())
                .map_err(|e| {
                    Refusal::internal(&crate::Error::Certificate(format!(
                        "cannot wrap to the key of host {}: {e}",
                        peer.name
                    )))
                })?;
        Ok(Wrapped {
            wrapped_keys,
            writer_public_key,
            version: authorised.domain.version,
        })
    }

    pub fn renew_lease(
        &self,
        peer: &Peer,
        request: &RenewLeaseRequest,
    ) -> Result<RenewLeaseResponse, Refusal> {
        let mut subject = Subject::new("renew-lease", &peer.name);
        let result = self.renew_inner(peer, request, &mut subject);
        self.log.record(&subject, result)
    }

    fn renew_inner(
        &self,
        peer: &Peer,
        request: &RenewLeaseRequest,
        subject: &mut Subject,
    ) -> Result<(RenewLeaseResponse, String), Refusal> {
        require_role(peer, Role::Host)?;
        let lease_id = exact::<16>("lease id", &request.lease_id)?;
        let id = exact::<16>("domain id", &request.domain_id)?;
        subject.domain = Some(id);
        let now = now_unix();
        let expires = self.lease_until(now);
        let unknown = || {
            Refusal::not_found(
                "no such lease (it expired, was released, or the TTP restarted): ask for the \
                 key again",
            )
        };
        let response = RenewLeaseResponse {
            lease_seconds: self.lease_seconds,
        };
        let detail = format!(
            "lease {} renewed for {} s",
            hex::encode(lease_id),
            self.lease_seconds
        );

        if let Some(lease) = self.ro_leases.get(&lease_id) {
            subject.mode = Some(Access::ReadOnly);
            if lease.host != peer.name || lease.domain != id || lease.expires_unix <= now {
                return Err(unknown());
            }
            let read = self.registry.read()?;
            match authorise(&read, &peer.name, &id, Access::ReadOnly) {
                Ok(ok) => subject.version = Some(ok.domain.version),
                Err(refusal) => {
                    self.ro_leases.remove(&lease_id);
                    return Err(refusal);
                }
            }
            if !self.ro_leases.extend(&lease_id, expires) {
                return Err(unknown());
            }
            return Ok((response, detail));
        }

        subject.mode = Some(Access::ReadWrite);
        let write = self.registry.write()?;
        let mut lease = write
            .rw_lease(&id)?
            .filter(|l| l.lease_id == lease_id && l.holder == peer.name && l.expires_unix > now)
            .ok_or_else(unknown)?;
        match authorise(&write, &peer.name, &id, Access::ReadWrite) {
            Ok(ok) => {
                subject.version = Some(ok.domain.version);
                lease.version = ok.domain.version;
                lease.expires_unix = expires;
                write.put_rw_lease(&id, &lease)?;
            }
            Err(refusal) if refusal.code != tonic::Code::Internal => {
                // The grant is withdrawn: the lease ends here, freeing the domain.
                write.remove_rw_lease(&id)?;
                write.commit()?;
                return Err(refusal);
            }
            Err(refusal) => return Err(refusal),
        }
        write.commit()?;
        Ok((response, detail))
    }

    pub fn release_lease(
        &self,
        peer: &Peer,
        request: &ReleaseLeaseRequest,
    ) -> Result<ReleaseLeaseResponse, Refusal> {
        let mut subject = Subject::new("release-lease", &peer.name);
        let result = self.release_inner(peer, request, &mut subject);
        self.log.record(&subject, result)
    }

    fn release_inner(
        &self,
        peer: &Peer,
        request: &ReleaseLeaseRequest,
        subject: &mut Subject,
    ) -> Result<(ReleaseLeaseResponse, String), Refusal> {
        require_role(peer, Role::Host)?;
        let lease_id = exact::<16>("lease id", &request.lease_id)?;
        let id = exact::<16>("domain id", &request.domain_id)?;
        subject.domain = Some(id);
        let lease_hex = hex::encode(lease_id);
        if let Some(lease) = self.ro_leases.get(&lease_id)
            && lease.host == peer.name
            && lease.domain == id
        {
            subject.mode = Some(Access::ReadOnly);
            self.ro_leases.remove(&lease_id);
            return Ok((
                ReleaseLeaseResponse {},
                format!("lease {lease_hex} released"),
            ));
        }
        let write = self.registry.write()?;
        let held = write
            .rw_lease(&id)?
            .is_some_and(|l| l.lease_id == lease_id && l.holder == peer.name);
        if !held {
            // Releasing twice, or after expiry, is not an error.
            return Ok((
                ReleaseLeaseResponse {},
                format!("lease {lease_hex}: nothing to release"),
            ));
        }
        subject.mode = Some(Access::ReadWrite);
        write.remove_rw_lease(&id)?;
        write.commit()?;
        Ok((
            ReleaseLeaseResponse {},
            format!("lease {lease_hex} released"),
        ))
    }
}
