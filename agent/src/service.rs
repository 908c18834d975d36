//! The gRPC face of the agent: checks every caller's credentials, hands the request to
//! [`Agent`], and logs each decision (who, which domain, which mode, granted or refused and
//! why). Keys never reach a log line: only their lease id and domain id do.
//!
//! Untrusted strings (process names, mount points) are logged with Debug quoting, so a
//! crafted name cannot forge a log line.

use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use domfs_proto::acl::SignedMessage;
use domfs_proto::agent::agent_server::Agent as AgentRpc;
use domfs_proto::agent::{
    AgentAppendAuditRequest, AgentAppendAuditResponse, AgentCheckpointRequest,
    AgentCheckpointResponse, AgentReadAuditRequest, AgentReadAuditResponse, GetDomainKeyRequest,
    GetDomainKeyResponse, Mode, ReleaseKeyRequest, ReleaseKeyResponse, StatusRequest,
    StatusResponse, WatchEvent, WatchRequest,
};
use domfs_proto::client::describe_status;

use crate::agent::{Agent, STATUS_TIMEOUT};
use crate::enroll::state_name;
use crate::peer::{AccessRule, Peer};
use crate::ttp::{TtpApi, is_answer};
use crate::unwrapper::KeyUnwrapper;

/// Longest mount point logged, in characters.
const MAX_LOGGED_PATH: usize = 512;

pub struct AgentService<U, T> {
    agent: Arc<Agent<U, T>>,
    rule: AccessRule,
}

impl<U: KeyUnwrapper, T: TtpApi> AgentService<U, T> {
    pub fn new(agent: Arc<Agent<U, T>>, rule: AccessRule) -> AgentService<U, T> {
        AgentService { agent, rule }
    }

    /// The caller, if it may use the agent; logs a refusal.
    fn admit<R>(&self, request: &Request<R>, rpc: &'static str) -> Result<Peer, Status> {
        let Some(peer) = Peer::of(request) else {
            tracing::warn!(
                rpc,
                "socket access refused: the caller's credentials are unknown"
            );
            return Err(Status::permission_denied(
                "the agent cannot tell who is calling",
            ));
        };
        if self.rule.allows(&peer) {
            return Ok(peer);
        }
        tracing::warn!(
            rpc,
            uid = peer.uid,
            gid = peer.gid,
            pid = peer.pid(),
            process = ?peer.name,
            "socket access refused: not root, not the agent's user, not in the agent's group"
        );
        let group = match self.rule.group {
            Some(gid) => format!(", or a member of group {gid}"),
            None => String::new(),
        };
        Err(Status::permission_denied(format!(
            "uid {} may not use the domfs agent: callers must be root, uid {}{group}",
            peer.uid, self.rule.own_uid
        )))
    }
}

fn shorten(text: &str) -> String {
    text.chars().take(MAX_LOGGED_PATH).collect()
}

#[tonic::async_trait]
impl<U: KeyUnwrapper, T: TtpApi> AgentRpc for AgentService<U, T> {
    async fn get_domain_key(
        &self,
        request: Request<GetDomainKeyRequest>,
    ) -> Result<Response<GetDomainKeyResponse>, Status> {
        let peer = self.admit(&request, "GetDomainKey")?;
        let request = request.into_inner();
        let mode = Mode::try_from(request.mode).unwrap_or(Mode::Unspecified);
        let mount_point = shorten(&request.mount_point);
        // For the log only; the agent decodes (and bounds) the message itself.
        let domain = SignedMessage::decode(&request.signed_message)
            .map(|m| hex::encode(m.domain_id))
            .unwrap_or_else(|_| "?".into());
        let result = self
            .agent
            .get_domain_key(request.signed_message, request.signature, mode, &peer)
            .await;
        match result {
            Ok((grant, source)) => {
                tracing::info!(
                    domain = %domain,
                    mode = grant.mode.as_str(),
                    asked = mode.as_str_name(),
                    source = source.as_str(),
                    lease = %hex::encode(&grant.lease_id),
                    checkpoint = ?grant.checkpoint.as_ref().map(|c| c.sequence),
                    uid = peer.uid,
                    pid = peer.pid(),
                    process = ?peer.name,
                    mount_point = ?mount_point,
                    "key granted"
                );
                Ok(Response::new(GetDomainKeyResponse {
                    domain_key: grant.domain_key.to_vec(),
                    writer_secret: grant
                        .writer_secret
                        .as_ref()
                        .map(|k| k.to_vec())
                        .unwrap_or_default(),
                    writer_public_key: grant.writer_public_key,
                    granted_mode: grant.mode.agent_mode() as i32,
                    lease_id: grant.lease_id,
                    lease_seconds: grant.lease_seconds,
                    access_list_version: grant.access_list_version,
                    checkpoint: grant.checkpoint,
                }))
            }
            Err(status) => {
                tracing::warn!(
                    domain = %domain,
                    asked = mode.as_str_name(),
                    uid = peer.uid,
                    pid = peer.pid(),
                    process = ?peer.name,
                    mount_point = ?mount_point,
                    code = ?status.code(),
                    reason = %describe_status(&status),
                    "key refused"
                );
                Err(status)
            }
        }
    }

    type WatchStream = ReceiverStream<Result<WatchEvent, Status>>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let peer = self.admit(&request, "Watch")?;
        let lease_id = request.into_inner().lease_id;
        let receiver = self.agent.table().watch(&lease_id, peer.process);
        match receiver {
            Some(receiver) => {
                tracing::debug!(
                    lease = %hex::encode(&lease_id),
                    pid = peer.pid(),
                    process = ?peer.name,
                    "watching a lease"
                );
                Ok(Response::new(ReceiverStream::new(receiver)))
            }
            None => Err(Status::not_found(
                "no such lease (it was released, revoked or expired)",
            )),
        }
    }

    async fn release_key(
        &self,
        request: Request<ReleaseKeyRequest>,
    ) -> Result<Response<ReleaseKeyResponse>, Status> {
        let peer = self.admit(&request, "ReleaseKey")?;
        let lease_id = request.into_inner().lease_id;
        match self.agent.release_key(&lease_id, &peer).await {
            Ok(uses) => {
                tracing::info!(
                    lease = %hex::encode(&lease_id),
                    uses_left = uses,
                    uid = peer.uid,
                    pid = peer.pid(),
                    process = ?peer.name,
                    "{}",
                    if uses == 0 {
                        "key released: lease given back, keys zeroized"
                    } else {
                        "key released: the lease stays for its other users"
                    }
                );
                Ok(Response::new(ReleaseKeyResponse {}))
            }
            Err(status) => {
                tracing::warn!(
                    lease = %hex::encode(&lease_id),
                    uid = peer.uid,
                    pid = peer.pid(),
                    process = ?peer.name,
                    reason = %describe_status(&status),
                    "release refused"
                );
                Err(status)
            }
        }
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.admit(&request, "Status")?;
        let host = tokio::time::timeout(STATUS_TIMEOUT, self.agent.ttp.host_status()).await;
        let (enrollment, reachable) = match host {
            Ok(Ok(status)) => (state_name(status.state()), true),
            Ok(Err(status)) if is_answer(&status) => ("unknown", true),
            _ => ("unreachable", false),
        };
        Ok(Response::new(StatusResponse {
            host_name: self.agent.settings.host_name.clone(),
            enrollment: enrollment.into(),
            ttp_reachable: reachable,
            leases: self.agent.table().infos(),
        }))
    }

    async fn checkpoint(
        &self,
        request: Request<AgentCheckpointRequest>,
    ) -> Result<Response<AgentCheckpointResponse>, Status> {
        let peer = self.admit(&request, "Checkpoint")?;
        let request = request.into_inner();
        let sequence = request.checkpoint.as_ref().map(|c| c.sequence);
        match self
            .agent
            .checkpoint(&request.lease_id, request.checkpoint)
            .await
        {
            Ok((anchored, domain)) => {
                tracing::info!(
                    domain = %hex::encode(domain),
                    lease = %hex::encode(&request.lease_id),
                    sequence = anchored.sequence,
                    generation = anchored.generation,
                    audit_sequence = anchored.audit_sequence,
                    pid = peer.pid(),
                    process = ?peer.name,
                    "checkpoint anchored at the TTP"
                );
                Ok(Response::new(AgentCheckpointResponse {
                    checkpoint: Some(anchored),
                }))
            }
            Err(status) => {
                tracing::warn!(
                    lease = %hex::encode(&request.lease_id),
                    sequence = ?sequence,
                    pid = peer.pid(),
                    process = ?peer.name,
                    code = ?status.code(),
                    reason = %describe_status(&status),
                    "checkpoint refused"
                );
                Err(status)
            }
        }
    }

    async fn append_audit(
        &self,
        request: Request<AgentAppendAuditRequest>,
    ) -> Result<Response<AgentAppendAuditResponse>, Status> {
        let peer = self.admit(&request, "AppendAudit")?;
        let request = request.into_inner();
        let count = request.entries.len();
        match self
            .agent
            .append_audit(&request.lease_id, request.entries)
            .await
        {
            Ok((stored, last_sequence, domain)) => {
                tracing::info!(
                    domain = %hex::encode(domain),
                    lease = %hex::encode(&request.lease_id),
                    stored,
                    last_sequence,
                    pid = peer.pid(),
                    process = ?peer.name,
                    "audit entries stored at the TTP"
                );
                Ok(Response::new(AgentAppendAuditResponse {
                    stored,
                    last_sequence,
                }))
            }
            Err(status) => {
                tracing::warn!(
                    lease = %hex::encode(&request.lease_id),
                    entries = count,
                    pid = peer.pid(),
                    process = ?peer.name,
                    code = ?status.code(),
                    reason = %describe_status(&status),
                    "audit entries not stored"
                );
                Err(status)
            }
        }
    }

    async fn read_audit(
        &self,
        request: Request<AgentReadAuditRequest>,
    ) -> Result<Response<AgentReadAuditResponse>, Status> {
        let peer = self.admit(&request, "ReadAudit")?;
        let request = request.into_inner();
        let domain = SignedMessage::decode(&request.signed_message)
            .map(|m| hex::encode(m.domain_id))
            .unwrap_or_else(|_| "?".into());
        let after = request.after;
        match self
            .agent
            .read_audit(
                request.signed_message,
                request.signature,
                request.after,
                request.limit,
            )
            .await
        {
            Ok(response) => {
                tracing::info!(
                    domain = %domain,
                    after,
                    entries = response.entries.len(),
                    more = response.more,
                    uid = peer.uid,
                    pid = peer.pid(),
                    process = ?peer.name,
                    "audit entries read from the TTP"
                );
                Ok(Response::new(AgentReadAuditResponse {
                    entries: response.entries,
                    more: response.more,
                }))
            }
            Err(status) => {
                tracing::warn!(
                    domain = %domain,
                    after,
                    uid = peer.uid,
                    pid = peer.pid(),
                    process = ?peer.name,
                    code = ?status.code(),
                    reason = %describe_status(&status),
                    "audit read refused"
                );
                Err(status)
            }
        }
    }
}
