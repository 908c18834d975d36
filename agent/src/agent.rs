//! The agent's state and its two key decisions: handing out a domain key (from the lease
//! cache, or from the TTP through the TPM) and taking one back; and the calls a mount
//! makes under its lease that the agent forwards to the TTP (Checkpoint, AppendAudit) or
//! passes on (ReadAudit), see "Forwarding" below. The gRPC layer
//! ([`crate::service`]) checks the caller and logs; the renewal task ([`crate::renew`])
//! keeps leases alive.
//!
//! ## MODE_BEST
//!
//! The agent first asks the TTP for read-write. If the TTP refuses that with
//! PERMISSION_DENIED (the usual reason: the list grants this host read-only), it asks once
//! more for read-only; if that is refused too, the second refusal is what the caller sees,
//! since it names the more basic reason (not in the list, revoked, not approved). Any
//! other error of the first request — in particular FAILED_PRECONDITION, a read-write
//! lease held elsewhere — is returned as it is: a busy domain is never silently mounted
//! read-only. A read-only lease taken this way is remembered as such, so later BEST
//! requests for the domain use it without asking for read-write again.
//!
//! ## Forwarding
//!
//! Checkpoint and AppendAudit name a local lease id; the agent sends them under the TTP
//! lease and domain behind it (the TTP lease changes when the TTP forgot it and granted it
//! again; the local id does not). Inputs are bounded here as the TTP bounds them. The
//! TTP's refusals come back with its code; a TTP that does not answer becomes UNAVAILABLE
//! (the daemon keeps what it wanted to send and retries). NOT_FOUND (the TTP forgot the
//! lease) also has the renewal task look at the lease at once, which asks for it again,
//! so the daemon's retry finds it. An accepted checkpoint is kept with the domain's leases
//! for later GetDomainKey answers from the cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tonic::{Code, Status};

use domfs_proto::acl::{DomainId, MAX_HOST_NAME_LEN, SIGNATURE_LEN, SignedMessage};
use domfs_proto::agent::Mode;
use domfs_proto::client::describe_status;
use domfs_proto::ttp::{
    AppendAuditRequest, Checkpoint, CheckpointRequest, GetDomainKeyRequest, GetDomainKeyResponse,
    HostState, ReadAuditRequest, ReadAuditResponse,
};
use domfs_proto::{AUDIT_HEAD_LEN, CHECKPOINT_ROOT_LEN, KEY_LEN, MAX_AUDIT_READ};

use crate::keys::DomainKeys;
use crate::leases::{
    Grant, Granted, LeaseTable, Lookup, NewLease, Release, ReleaseError, TtpLease,
};
use crate::peer::{Peer, ProcessRef};
use crate::tpm::TpmError;
use crate::ttp::{TtpApi, is_answer};
use crate::unwrapper::KeyUnwrapper;

/// The header's signed message is at most 48 KiB.
pub const MAX_SIGNED_MESSAGE: usize = 48 * 1024;
/// Bounds on what the TTP sends back (an RSA-2048 ciphertext is 256 bytes).
const MAX_WRAPPED: usize = 1024;
const MAX_LEASE_ID: usize = 64;
/// How long a status query may take before the TTP counts as unreachable.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Where a grant came from, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Cache,
    Ttp,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Ttp => "ttp",
        }
    }
}

pub struct Settings {
    /// The host's name at the TTP (its certificate's common name).
    pub host_name: String,
    pub ttp_url: String,
    pub grace: Duration,
}

/// The agent: TPM, TTP, lease table. Shared by the RPC handlers and background tasks.
pub struct Agent<U, T> {
    pub(crate) tpm: U,
    pub(crate) ttp: T,
    pub(crate) settings: Settings,
    table: Mutex<LeaseTable>,
    /// Serializes fetching and releasing per domain, so two mounts starting together
    /// share one lease instead of racing for two.
    domain_locks: Mutex<HashMap<DomainId, Arc<tokio::sync::Mutex<()>>>>,
    /// Wakes the renewal task when a lease is added or a renewal finished.
    pub(crate) renew_wake: Notify,
    /// Whether a process still runs (the real check reads /proc; tests may replace it).
    pub(crate) alive: fn(&ProcessRef) -> bool,
}

impl<U: KeyUnwrapper, T: TtpApi> Agent<U, T> {
    pub fn new(tpm: U, ttp: T, settings: Settings) -> Agent<U, T> {
        Agent {
            tpm,
            ttp,
            table: Mutex::new(LeaseTable::new(settings.grace)),
            settings,
            domain_locks: Mutex::new(HashMap::new()),
            renew_wake: Notify::new(),
            alive: ProcessRef::alive,
        }
    }

    /// The lease table. A poisoned lock (a panic elsewhere while holding it) still holds
    /// consistent data: every mutation completes before it returns.
    pub(crate) fn table(&self) -> MutexGuard<'_, LeaseTable> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn domain_lock(&self, domain: DomainId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .domain_locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(domain).or_default().clone()
    }

    /// GetDomainKey: the key for the domain whose header carries `signed_message`.
    pub async fn get_domain_key(
        &self,
        signed_message: Vec<u8>,
        signature: Vec<u8>,
        mode: Mode,
        caller: &Peer,
    ) -> Result<(Grant, Source), Status> {
        if signed_message.len() > MAX_SIGNED_MESSAGE {
            return Err(Status::invalid_argument(format!(
                "the signed message is {} bytes (at most {MAX_SIGNED_MESSAGE})",
                signed_message.len()
            )));
        }
        if signature.len() != SIGNATURE_LEN {
            return Err(Status::invalid_argument(format!(
                "the signature is {} bytes (an Ed25519 signature is {SIGNATURE_LEN})",
                signature.len()
            )));
        }
        let domain = SignedMessage::decode(&signed_message)
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .domain_id;
        let (first, best) = match mode {
            Mode::ReadOnly => (Granted::ReadOnly, false),
            Mode::ReadWrite => (Granted::ReadWrite, false),
            Mode::Best => (Granted::ReadWrite, true),
            Mode::Unspecified => {
                return Err(Status::invalid_argument(
                    "no mode given (read-only, read-write or best)",
                ));
            }
        };

        let lock = self.domain_lock(domain);
        let _guard = lock.lock().await;

        if let Some(grant) = self.cached(domain, first, false, caller)? {
            return Ok((grant, Source::Cache));
        }
        if best && let Some(grant) = self.cached(domain, Granted::ReadOnly, true, caller)? {
            return Ok((grant, Source::Cache));
        }

        let request = GetDomainKeyRequest {
            signed_message,
            signature,
            mode: first.ttp_mode() as i32,
        };
        let (response, granted, rw_refused) = match self.ttp.get_domain_key(request.clone()).await {
            Ok(response) => (response, first, false),
            Err(status) if best && status.code() == Code::PermissionDenied => {
                tracing::info!(
                    domain = %hex::encode(domain),
                    refusal = %describe_status(&status),
                    "read-write refused; asking for read-only"
                );
                // A read-only lease this host already holds serves a BEST request too.
                if let Some(grant) = self.cached(domain, Granted::ReadOnly, false, caller)? {
                    self.table().note_rw_refused(domain);
                    return Ok((grant, Source::Cache));
                }
                let read_only = GetDomainKeyRequest {
                    mode: Granted::ReadOnly.ttp_mode() as i32,
                    ..request.clone()
                };
                match self.ttp.get_domain_key(read_only).await {
                    Ok(response) => (response, Granted::ReadOnly, true),
                    Err(status) => return Err(self.explain(status, domain).await),
                }
            }
            Err(status) => return Err(self.explain(status, domain).await),
        };
        let lease_id = response.lease_id.clone();
        let keys = self.unwrap_grant(response.clone(), domain, granted).await?;
        let lease = NewLease {
            ttp_lease_id: lease_id,
            domain,
            mode: granted,
            keys,
            writer_public_key: response.writer_public_key,
            access_list_version: response.access_list_version,
            lease_seconds: response.lease_seconds,
            rw_refused,
            signed_message: request.signed_message,
            signature: request.signature,
            checkpoint: response.checkpoint,
        };
        let grant = self.table().insert(lease, caller.process, now_ms());
        self.renew_wake.notify_one();
        Ok((grant, Source::Ttp))
    }

    fn cached(
        &self,
        domain: DomainId,
        mode: Granted,
        only_after_rw_refused: bool,
        caller: &Peer,
    ) -> Result<Option<Grant>, Status> {
        let lookup = self.table().lookup(
            domain,
            mode,
            only_after_rw_refused,
            caller.process,
            now_ms(),
            &self.alive,
        );
        match lookup {
            Lookup::Hit(grant) => Ok(Some(*grant)),
            Lookup::Miss => Ok(None),
            Lookup::HeldElsewhere { pid } => Err(Status::failed_precondition(format!(
                "the domain is already mounted read-write on this host (by pid {pid}); \
                 a read-write lease is exclusive"
            ))),
        }
    }

    /// Checks the TTP's grant and has the TPM unwrap it. On failure the lease is given
    /// back to the TTP at once.
    async fn unwrap_grant(
        &self,
        response: GetDomainKeyResponse,
        domain: DomainId,
        granted: Granted,
    ) -> Result<DomainKeys, Status> {
        let lease_id = response.lease_id.clone();
        if let Err(why) = check_grant(&response, granted) {
            self.give_back(lease_id, domain).await;
            return Err(Status::internal(format!(
                "the TTP sent an invalid grant: {why}"
            )));
        }
        let plain = match self.tpm.unwrap(response.wrapped_keys).await {
            Ok(plain) => plain,
            Err(e) => {
                self.give_back(lease_id, domain).await;
                return Err(tpm_status(e));
            }
        };
        match DomainKeys::from_unwrapped(&plain, granted == Granted::ReadWrite) {
            Ok(keys) => Ok(keys),
            Err(e) => {
                self.give_back(lease_id, domain).await;
                Err(Status::internal(e.to_string()))
            }
        }
    }

    /// The TTP no longer knows a lease (it ran out during an outage, or the TTP
    /// restarted): ask for the same grant again (everything is checked anew, the PCRs
    /// included) and keep the local lease if it unlocks the same keys.
    pub(crate) async fn reacquire(&self, local_id: &[u8], lease: &TtpLease) -> Result<(), Status> {
        let (signed_message, signature) = self
            .table()
            .request_of(local_id)
            .ok_or_else(|| Status::not_found("the lease is gone"))?;
        let request = GetDomainKeyRequest {
            signed_message,
            signature,
            mode: lease.mode.ttp_mode() as i32,
        };
        let response = self.ttp.get_domain_key(request).await?;
        let new_id = response.lease_id.clone();
        let seconds = response.lease_seconds;
        let checkpoint = response.checkpoint.clone();
        let keys = self
            .unwrap_grant(response, lease.domain, lease.mode)
            .await?;
        let kept = {
            let mut table = self.table();
            let kept = table.reacquired(local_id, new_id.clone(), &keys, seconds, now_ms());
            if kept && let Some(checkpoint) = checkpoint {
                table.note_checkpoint(lease.domain, checkpoint);
            }
            kept
        };
        if kept {
            return Ok(());
        }
        self.give_back(new_id, lease.domain).await;
        Err(Status::permission_denied(
            "the TTP granted the domain again, but with different keys",
        ))
    }

    /// Releases a lease the agent will not use (best effort: it runs out by itself).
    async fn give_back(&self, lease_id: Vec<u8>, domain: DomainId) {
        if lease_id.is_empty() || lease_id.len() > MAX_LEASE_ID {
            return;
        }
        if let Err(status) = self.ttp.release_lease(lease_id, domain.to_vec()).await {
            tracing::warn!(
                domain = %hex::encode(domain),
                error = %describe_status(&status),
                "could not give an unused lease back to the TTP; it will run out by itself"
            );
        }
    }

    /// A TTP error as the caller should see it. A refusal is checked against the host's
    /// enrollment, which explains most refusals better than the TTP's generic words.
    async fn explain(&self, status: Status, domain: DomainId) -> Status {
        let name = &self.settings.host_name;
        if !is_answer(&status) {
            return Status::unavailable(format!(
                "the TTP at {} cannot be reached ({}) and no key for domain {} is cached",
                self.settings.ttp_url,
                describe_status(&status),
                hex::encode(domain)
            ));
        }
        if !matches!(
            status.code(),
            Code::PermissionDenied | Code::FailedPrecondition | Code::Unauthenticated
        ) {
            return status;
        }
        let state = match tokio::time::timeout(STATUS_TIMEOUT, self.ttp.host_status()).await {
            Ok(Ok(response)) => response.state(),
            _ => HostState::Unspecified,
        };
        let message = match state {
            HostState::Pending => format!(
                "this host ({name}) is enrolled but not approved yet: run \
                 `domfs-ttp hosts approve {name}` on the TTP"
            ),
            HostState::Unknown => format!(
                "this host ({name}) is not enrolled at the TTP: restart the agent or run \
                 `domfs-agent enroll`"
            ),
            HostState::Revoked => format!("this host ({name}) has been revoked at the TTP"),
            HostState::Approved | HostState::Unspecified => {
                format!("the TTP refused: {}", describe_status(&status))
            }
        };
        Status::new(status.code(), message)
    }

    /// ReleaseKey: gives back the caller's use of a lease; the last use gives the lease
    /// back to the TTP. Returns the uses left.
    pub async fn release_key(&self, lease_id: &[u8], caller: &Peer) -> Result<usize, Status> {
        let domain = self
            .table()
            .domain_of(lease_id)
            .ok_or_else(|| Status::not_found(ReleaseError::NotFound.to_string()))?;
        let lock = self.domain_lock(domain);
        let _guard = lock.lock().await;
        let released = self.table().release(lease_id, caller.process, &self.alive);
        match released {
            Ok(Release::Kept { uses }) => Ok(uses),
            Ok(Release::Last(lease)) => {
                if let Err(status) = self
                    .ttp
                    .release_lease(lease.lease_id, lease.domain.to_vec())
                    .await
                {
                    tracing::warn!(
                        domain = %hex::encode(lease.domain),
                        mode = lease.mode.as_str(),
                        error = %describe_status(&status),
                        "the TTP did not take the lease back; it will run out by itself"
                    );
                }
                Ok(0)
            }
            Err(e @ ReleaseError::NotFound) => Err(Status::not_found(e.to_string())),
            Err(e @ ReleaseError::NotHolder) => Err(Status::failed_precondition(e.to_string())),
        }
    }

    /// The TTP lease behind a local lease id.
    fn ttp_lease(&self, lease_id: &[u8]) -> Result<TtpLease, Status> {
        if lease_id.is_empty() || lease_id.len() > MAX_LEASE_ID {
            return Err(Status::invalid_argument(format!(
                "a lease id of {} bytes",
                lease_id.len()
            )));
        }
        self.table()
            .ttp_lease_of(lease_id)
            .ok_or_else(|| Status::not_found(ReleaseError::NotFound.to_string()))
    }

    /// A TTP error of a forwarded call as the caller should see it (see "Forwarding").
    fn forwarded(&self, status: Status, local_id: &[u8], what: &str) -> Status {
        if !is_answer(&status) {
            return Status::unavailable(format!(
                "the TTP at {} cannot be reached ({}): keep the {what} and try again",
                self.settings.ttp_url,
                describe_status(&status)
            ));
        }
        if status.code() == Code::NotFound && !local_id.is_empty() {
            self.table().renew_soon(local_id, now_ms());
            self.renew_wake.notify_one();
        }
        status
    }

    /// Checkpoint: anchors the volume of a read-write lease at the TTP. Returns the
    /// checkpoint as the TTP keeps it.
    pub async fn checkpoint(
        &self,
        lease_id: &[u8],
        checkpoint: Option<Checkpoint>,
    ) -> Result<(Checkpoint, DomainId), Status> {
        let checkpoint = checkpoint
            .ok_or_else(|| Status::invalid_argument("the request carries no checkpoint"))?;
        check_checkpoint(&checkpoint)
            .map_err(|e| Status::invalid_argument(format!("a checkpoint with {e}")))?;
        let lease = self.ttp_lease(lease_id)?;
        if lease.mode != Granted::ReadWrite {
            return Err(Status::permission_denied(
                "the lease is read-only: only a read-write mount anchors its volume",
            ));
        }
        let request = CheckpointRequest {
            domain_id: lease.domain.to_vec(),
            lease_id: lease.lease_id,
            checkpoint: Some(checkpoint.clone()),
        };
        let response = self
            .ttp
            .checkpoint(request)
            .await
            .map_err(|status| self.forwarded(status, lease_id, "checkpoint"))?;
        let anchored = response
            .checkpoint
            .filter(|c| check_checkpoint(c).is_ok() && c.host.len() <= MAX_HOST_NAME_LEN)
            .unwrap_or_else(|| Checkpoint {
                time_unix: now_ms() / 1000,
                host: self.settings.host_name.clone(),
                ..checkpoint
            });
        self.table().note_checkpoint(lease.domain, anchored.clone());
        Ok((anchored, lease.domain))
    }

    /// AppendAudit: a mount's audit entries, stored at the TTP. Returns how many were
    /// stored, the TTP's sequence number of the last, and the domain.
    pub async fn append_audit(
        &self,
        lease_id: &[u8],
        entries: Vec<Vec<u8>>,
    ) -> Result<(u64, u64, DomainId), Status> {
        domfs_proto::check_audit_batch(&entries).map_err(Status::invalid_argument)?;
        let lease = self.ttp_lease(lease_id)?;
        let request = AppendAuditRequest {
            domain_id: lease.domain.to_vec(),
            lease_id: lease.lease_id,
            entries,
        };
        let response = self
            .ttp
            .append_audit(request)
            .await
            .map_err(|status| self.forwarded(status, lease_id, "entries"))?;
        Ok((response.stored, response.last_sequence, lease.domain))
    }

    /// ReadAudit: the entries the TTP keeps for the domain of a header.
    pub async fn read_audit(
        &self,
        signed_message: Vec<u8>,
        signature: Vec<u8>,
        after: u64,
        limit: u32,
    ) -> Result<ReadAuditResponse, Status> {
        if signed_message.len() > MAX_SIGNED_MESSAGE {
            return Err(Status::invalid_argument(format!(
                "the signed message is {} bytes (at most {MAX_SIGNED_MESSAGE})",
                signed_message.len()
            )));
        }
        if signature.len() != SIGNATURE_LEN {
            return Err(Status::invalid_argument(format!(
                "the signature is {} bytes (an Ed25519 signature is {SIGNATURE_LEN})",
                signature.len()
            )));
        }
        if limit > MAX_AUDIT_READ {
            return Err(Status::invalid_argument(format!(
                "a limit of {limit} entries (at most {MAX_AUDIT_READ})"
            )));
        }
        let request = ReadAuditRequest {
            signed_message,
            signature,
            after,
            limit,
        };
        self.ttp
            .read_audit(request)
            .await
            .map_err(|status| self.forwarded(status, &[], "request"))
    }
}

/// The checks on a TTP grant before anything is unwrapped.
fn check_grant(response: &GetDomainKeyResponse, granted: Granted) -> Result<(), String> {
    if response.granted_mode != granted.ttp_mode() as i32 {
        return Err(format!(
            "mode {} for a {} request",
            response.granted_mode,
            granted.as_str()
        ));
    }
    if response.lease_id.is_empty() || response.lease_id.len() > MAX_LEASE_ID {
        return Err(format!("a lease id of {} bytes", response.lease_id.len()));
    }
    if response.wrapped_keys.is_empty() || response.wrapped_keys.len() > MAX_WRAPPED {
        return Err(format!(
            "wrapped keys of {} bytes",
            response.wrapped_keys.len()
        ));
    }
    if response.writer_public_key.len() != KEY_LEN {
        return Err(format!(
            "a writer public key of {} bytes",
            response.writer_public_key.len()
        ));
    }
    if response.lease_seconds == 0 {
        return Err("a lease of 0 seconds".into());
    }
    if let Some(checkpoint) = &response.checkpoint {
        check_checkpoint(checkpoint).map_err(|e| format!("a checkpoint with {e}"))?;
        if checkpoint.host.len() > MAX_HOST_NAME_LEN {
            return Err("a checkpoint with an overlong host name".into());
        }
    }
    Ok(())
}

/// The sizes of a checkpoint's root and audit head.
fn check_checkpoint(checkpoint: &Checkpoint) -> Result<(), String> {
    if checkpoint.root.len() != CHECKPOINT_ROOT_LEN {
        return Err(format!(
            "a root of {} bytes (must be {CHECKPOINT_ROOT_LEN})",
            checkpoint.root.len()
        ));
    }
    if !checkpoint.audit_head.is_empty() && checkpoint.audit_head.len() != AUDIT_HEAD_LEN {
        return Err(format!(
            "an audit head of {} bytes (must be {AUDIT_HEAD_LEN}, or empty before the first \
             audit entry)",
            checkpoint.audit_head.len()
        ));
    }
    Ok(())
}

/// The one place TPM errors become statuses.
pub fn tpm_status(error: TpmError) -> Status {
    match error {
        TpmError::PolicyFailed => Status::failed_precondition(
            "the TPM refused: PCRs changed since enrollment (if the change is legitimate, \
             re-enroll with `domfs-agent enroll --force` and have the TTP operator approve \
             the host again)",
        ),
        TpmError::NotEnrolled => Status::failed_precondition(error.to_string()),
        TpmError::Unavailable(_) => Status::unavailable(error.to_string()),
        TpmError::Failed(_) => Status::internal(error.to_string()),
    }
}

#[cfg(test)]
#[path = "agent_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "forward_tests.rs"]
mod forward_tests;
