//! Checkpoint (role host, holding the domain's live read-write lease): the volume's anchor.
//!
//! The read-write mount reports what a durable superblock says — its commit counter
//! (sequence), generation high-water mark, root pointer, and the audit trail's last
//! sequence and head — once it is durable, at unmount and periodically. The TTP keeps the
//! newest per domain in the registry (`checkpoints`, committed before it answers) and
//! hands it out with every grant, so a mount can tell a volume rolled back to an older
//! copy, or with its log truncated, from a current one.
//!
//! Checkpoints never go backwards. Against the stored one, a new checkpoint with
//!
//! - a higher sequence replaces it;
//! - the same sequence and the same contents (generation, root, audit sequence and head)
//!   is accepted and changes nothing (a retry after a lost answer);
//! - the same sequence and other contents, or a lower sequence, is refused with
//!   FAILED_PRECONDITION: the reporting volume is an older copy, or a fork (another
//!   history with the same commit count). The log line says which.
//!
//! Only the checks of the lease are made here: a host whose grant was withdrawn (revoked,
//! list changed, domain destroyed) still anchors what it writes until its next renewal
//! ends the lease.

use domfs_proto::acl::Access;
use domfs_proto::ttp::{CheckpointRequest, CheckpointResponse};
use domfs_proto::{AUDIT_HEAD_LEN, CHECKPOINT_ROOT_LEN};
use tonic::Code;

use crate::core::{TtpCore, exact, format_unix, now_unix, require_role};
use crate::decision_log::Subject;
use crate::pki::{Peer, Role};
use crate::records::CheckpointRecord;
use crate::refusal::Refusal;
use crate::registry::Lookup;

/// Why a checkpoint that would go backwards is refused, for the caller and the log.
fn backwards(reason: String) -> Refusal {
    Refusal::new(Code::FailedPrecondition, reason)
}

impl TtpCore {
    pub fn checkpoint(
        &self,
        peer: &Peer,
        request: &CheckpointRequest,
    ) -> Result<CheckpointResponse, Refusal> {
        let mut subject = Subject::new("checkpoint", &peer.name);
        let result = self.checkpoint_inner(peer, request, &mut subject);
        self.log.record(&subject, result)
    }

    fn checkpoint_inner(
        &self,
        peer: &Peer,
        request: &CheckpointRequest,
        subject: &mut Subject,
    ) -> Result<(CheckpointResponse, String), Refusal> {
        require_role(peer, Role::Host)?;
        let id = exact::<16>("domain id", &request.domain_id)?;
        subject.domain = Some(id);
        let lease_id = exact::<16>("lease id", &request.lease_id)?;
        let wire = request
            .checkpoint
            .as_ref()
            .ok_or_else(|| Refusal::invalid("the request carries no checkpoint"))?;
        let root = exact::<CHECKPOINT_ROOT_LEN>("checkpoint root", &wire.root)?;
        if !wire.audit_head.is_empty() {
            exact::<AUDIT_HEAD_LEN>("checkpoint audit head", &wire.audit_head)?;
        }
        let now = now_unix();
        let new = CheckpointRecord {
            sequence: wire.sequence,
            generation: wire.generation,
            root,
            audit_sequence: wire.audit_sequence,
            audit_head: wire.audit_head.clone(),
            time_unix: now,
            host: peer.name.clone(),
        };

        let write = self.registry.write()?;
        match self.live_lease(&write, peer, &id, &lease_id, now)? {
            Some(Access::ReadWrite) => subject.mode = Some(Access::ReadWrite),
            Some(Access::ReadOnly) => {
                subject.mode = Some(Access::ReadOnly);
                return Err(Refusal::denied(format!(
                    "lease {} is read-only: only the holder of the domain's read-write lease \
                     anchors the volume",
                    hex::encode(lease_id)
                )));
            }
            None => {
                return Err(Refusal::not_found(format!(
                    "host {} holds no live lease {} on domain {} (it expired, was released, \
                     or the TTP restarted): ask for the key again",
                    peer.name,
                    hex::encode(lease_id),
                    hex::encode(id)
                )));
            }
        }
        let summary = format!(
            "sequence {} (generation {}, audit {})",
            new.sequence, new.generation, new.audit_sequence
        );
        let detail = match write.checkpoint(&id)? {
            Some(old) if new.sequence < old.sequence => {
                return Err(backwards(format!(
                    "checkpoint would go back from sequence {} to {}: rollback or a forked \
                     volume (sequence {} was anchored by {} at {})",
                    old.sequence,
                    new.sequence,
                    old.sequence,
                    old.host,
                    format_unix(old.time_unix)
                )));
            }
            Some(old) if new.sequence == old.sequence => {
                if old.same_state(&new) {
                    // A retry: the first answer was lost. Nothing changes.
                    return Ok((
                        CheckpointResponse {
                            checkpoint: Some(old.to_wire()),
                        },
                        format!("{summary} anchored already (a repeat)"),
                    ));
                }
                return Err(backwards(format!(
                    "checkpoint would go back from sequence {} to {}: rollback or a forked \
                     volume (sequence {} was anchored by {} at {} with another root or audit \
                     head)",
                    old.sequence,
                    new.sequence,
                    old.sequence,
                    old.host,
                    format_unix(old.time_unix)
                )));
            }
            Some(old) => format!("{summary} anchored, after sequence {}", old.sequence),
            None => format!("{summary} anchored, the domain's first checkpoint"),
        };
        write.put_checkpoint(&id, &new)?;
        write.commit()?;
        Ok((
            CheckpointResponse {
                checkpoint: Some(new.to_wire()),
            },
            detail,
        ))
    }
}
