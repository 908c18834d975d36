//! AppendAudit and ReadAudit: the audit trail of mounts that cannot write their volume.
//!
//! A read-only mount cannot add to the audit trail inside the volume (it has no writer key,
//! and must not write the volume at all), so its entries (who opened what, when) go
//! through the agent to the TTP, which keeps them per domain in [`crate::audit_store`]:
//! in arrival order, numbered from 1, with the sending host and the arrival time. Any
//! host holding a live lease on the domain may append (read-write mounts normally write
//! their own trail, but may use this too). Each domain may store up to the audit cap
//! (`domfs-ttp serve --audit-cap`, default 1 GiB); a call that would pass it is refused
//! whole with RESOURCE_EXHAUSTED, never dropped in part or silently. One log line per
//! call, not per entry.
//!
//! ReadAudit (for `domfs audit`) names the domain by the header's signed message, checked
//! as GetDomainKey checks it, and is answered to a host the newest registered list names
//! (any right; enrolled, approved, not revoked, the domain not destroyed) and to the
//! domain's manager: a manager certificate whose name is the name the domain's pinned
//! manager key was added under (`domfs-ttp managers add NAME`; the registry records that
//! name with the domain) — also after the domain was destroyed.

use domfs_proto::acl::Access;
use domfs_proto::ttp::{
    AppendAuditRequest, AppendAuditResponse, ReadAuditRequest, ReadAuditResponse,
};
use domfs_proto::{MAX_AUDIT_READ, MAX_MESSAGE_BYTES};
use tonic::Code;

use crate::audit_store::Appended;
use crate::core::{TtpCore, authorise, check_presented, claimed, exact, now_unix, require_role};
use crate::decision_log::Subject;
use crate::pki::{Peer, Role};
use crate::refusal::Refusal;
use crate::registry::Lookup;

/// A ReadAudit answer holds entries up to about this many bytes, well inside the message
/// limit.
pub const READ_BUDGET: usize = MAX_MESSAGE_BYTES - 8 * 1024;

impl TtpCore {
    pub fn append_audit(
        &self,
        peer: &Peer,
        request: &AppendAuditRequest,
    ) -> Result<AppendAuditResponse, Refusal> {
        let mut subject = Subject::new("append-audit", &peer.name);
        let result = self.append_audit_inner(peer, request, &mut subject);
        self.log.record(&subject, result)
    }

    fn append_audit_inner(
        &self,
        peer: &Peer,
        request: &AppendAuditRequest,
        subject: &mut Subject,
    ) -> Result<(AppendAuditResponse, String), Refusal> {
        require_role(peer, Role::Host)?;
        let id = exact::<16>("domain id", &request.domain_id)?;
        subject.domain = Some(id);
        let lease_id = exact::<16>("lease id", &request.lease_id)?;
        let entries = &request.entries;
        domfs_proto::check_audit_batch(entries).map_err(Refusal::invalid)?;
        let now = now_unix();
        let mode = self.live_lease(&self.registry.read()?, peer, &id, &lease_id, now)?;
        subject.mode = mode;
        if mode.is_none() {
            return Err(Refusal::not_found(format!(
                "host {} holds no live lease {} on domain {} (it expired, was released, or \
                 the TTP restarted): ask for the key again",
                peer.name,
                hex::encode(lease_id),
                hex::encode(id)
            )));
        }
        match self
            .audit
            .append(&id, &peer.name, now, entries, self.audit_cap)?
        {
            Appended::Stored(usage) => {
                let count = entries.len() as u64;
                let detail = if count == 0 {
                    "no entries to store".to_string()
                } else {
                    format!(
                        "stored {count} audit entries ({} to {}), {} of {} bytes used",
                        usage.last_sequence + 1 - count,
                        usage.last_sequence,
                        usage.bytes,
                        self.audit_cap
                    )
                };
                Ok((
                    AppendAuditResponse {
                        stored: count,
                        last_sequence: usage.last_sequence,
                    },
                    detail,
                ))
            }
            Appended::Full { used, needed } => Err(Refusal::new(
                Code::ResourceExhausted,
                format!(
                    "the TTP's audit store for domain {} is full: {used} of {} bytes used, \
                     {needed} more needed for {} entries; nothing was stored (the TTP operator \
                     can raise `domfs-ttp serve --audit-cap`)",
                    hex::encode(id),
                    self.audit_cap,
                    entries.len()
                ),
            )),
        }
    }

    pub fn read_audit(
        &self,
        peer: &Peer,
        request: &ReadAuditRequest,
    ) -> Result<ReadAuditResponse, Refusal> {
        let mut subject = Subject::new("read-audit", &peer.name);
        let result = self.read_audit_inner(peer, request, &mut subject);
        self.log.record(&subject, result)
    }

    fn read_audit_inner(
        &self,
        peer: &Peer,
        request: &ReadAuditRequest,
        subject: &mut Subject,
    ) -> Result<(ReadAuditResponse, String), Refusal> {
        let claim = claimed(&request.signed_message)?;
        let id = claim.domain_id;
        subject.domain = Some(id);
        subject.version = Some(claim.version);
        exact::<64>("signature", &request.signature)?;
        let limit = match request.limit {
            0 => MAX_AUDIT_READ,
            n if n > MAX_AUDIT_READ => {
                return Err(Refusal::invalid(format!(
                    "a limit of {n} entries (at most {MAX_AUDIT_READ})"
                )));
            }
            n => n,
        };
        let read = self.registry.read()?;
        let domain = read
            .domain(&id)?
            .ok_or_else(|| Refusal::not_found(format!("unknown domain {}", hex::encode(id))))?;
        check_presented(&domain, &request.signed_message, &request.signature)?;
        match peer.role {
            Role::Host => {
                authorise(&read, &peer.name, &id, Access::ReadOnly)?;
            }
            Role::Manager if peer.name == domain.manager_name => {}
            Role::Manager => {
                return Err(Refusal::denied(format!(
                    "{} is not the manager of domain {} (its key was added as manager {})",
                    peer.name,
                    hex::encode(id),
                    domain.manager_name
                )));
            }
        }
        drop(read);
        let (entries, more) = self
            .audit
            .read(&id, request.after, limit as usize, READ_BUDGET)?;
        let detail = format!(
            "{} audit entries after {}{}",
            entries.len(),
            request.after,
            if more { ", more follow" } else { "" }
        );
        Ok((
            ReadAuditResponse {
                entries: entries.iter().map(|e| e.to_wire()).collect(),
                more,
            },
            detail,
        ))
    }
}
