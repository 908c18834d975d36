//! The `Ttp` gRPC service: the caller's identity from its TLS certificate, then one
//! [`TtpCore`] call on a blocking thread (the registry syncs on commit, and RSA takes a
//! little CPU), then its answer or its refusal as a status.

use std::sync::Arc;

use domfs_proto::ttp::ttp_server::Ttp;
use domfs_proto::ttp::{
    AppendAuditRequest, AppendAuditResponse, BeginEnrollmentRequest, BeginEnrollmentResponse,
    CheckpointRequest, CheckpointResponse, EnrollRequest, EnrollResponse, GetDomainKeyRequest,
    GetDomainKeyResponse, HostStatusRequest, HostStatusResponse, ReadAuditRequest,
    ReadAuditResponse, RegisterDomainRequest, RegisterDomainResponse, ReleaseLeaseRequest,
    ReleaseLeaseResponse, RenewLeaseRequest, RenewLeaseResponse, UpdateAccessListRequest,
    UpdateAccessListResponse,
};
use tonic::{Request, Response, Status};

use crate::core::TtpCore;
use crate::decision_log::Subject;
use crate::pki::{self, Peer};
use crate::refusal::Refusal;

#[derive(Clone)]
pub struct TtpService {
    core: Arc<TtpCore>,
}

impl TtpService {
    pub fn new(core: Arc<TtpCore>) -> TtpService {
        TtpService { core }
    }

    /// The caller's name and role. The TLS layer has already checked the chain to our CA.
    fn peer<T>(&self, op: &'static str, request: &Request<T>) -> Result<Peer, Status> {
        let identified = match request.peer_certs() {
            Some(certs) => match certs.first() {
                Some(leaf) => pki::identify(leaf.as_ref()),
                None => Err("no client certificate".to_string()),
            },
            None => Err("no client certificate".to_string()),
        };
        identified.map_err(|reason| {
            let refusal = Refusal::new(tonic::Code::Unauthenticated, reason);
            self.core
                .decision_log()
                .refused(&Subject::new(op, "-"), &refusal);
            refusal.into()
        })
    }

    async fn call<Q, A>(
        &self,
        op: &'static str,
        request: Request<Q>,
        f: fn(&TtpCore, &Peer, &Q) -> Result<A, Refusal>,
    ) -> Result<Response<A>, Status>
    where
        Q: Send + 'static,
        A: Send + 'static,
    {
        let peer = self.peer(op, &request)?;
        let core = self.core.clone();
        let message = request.into_inner();
        match tokio::task::spawn_blocking(move || f(&core, &peer, &message)).await {
            Ok(Ok(answer)) => Ok(Response::new(answer)),
            Ok(Err(refusal)) => Err(refusal.into()),
            Err(e) => {
                tracing::error!("{op} failed: {e}");
                Err(Status::internal("internal error at the TTP (see its log)"))
            }
        }
    }
}

#[tonic::async_trait]
impl Ttp for TtpService {
    async fn begin_enrollment(
        &self,
        request: Request<BeginEnrollmentRequest>,
    ) -> Result<Response<BeginEnrollmentResponse>, Status> {
        self.call("begin-enrollment", request, |core, peer, _| {
            core.begin_enrollment(peer)
        })
        .await
    }

    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        self.call("enroll", request, TtpCore::enroll).await
    }

    async fn host_status(
        &self,
        request: Request<HostStatusRequest>,
    ) -> Result<Response<HostStatusResponse>, Status> {
        self.call("host-status", request, |core, peer, _| {
            core.host_status(peer)
        })
        .await
    }

    async fn register_domain(
        &self,
        request: Request<RegisterDomainRequest>,
    ) -> Result<Response<RegisterDomainResponse>, Status> {
        self.call("register-domain", request, TtpCore::register_domain)
            .await
    }

    async fn update_access_list(
        &self,
        request: Request<UpdateAccessListRequest>,
    ) -> Result<Response<UpdateAccessListResponse>, Status> {
        self.call("update-access-list", request, TtpCore::update_access_list)
            .await
    }

    async fn get_domain_key(
        &self,
        request: Request<GetDomainKeyRequest>,
    ) -> Result<Response<GetDomainKeyResponse>, Status> {
        self.call("get-domain-key", request, TtpCore::get_domain_key)
            .await
    }

    async fn renew_lease(
        &self,
        request: Request<RenewLeaseRequest>,
    ) -> Result<Response<RenewLeaseResponse>, Status> {
        self.call("renew-lease", request, TtpCore::renew_lease)
            .await
    }

    async fn release_lease(
        &self,
        request: Request<ReleaseLeaseRequest>,
    ) -> Result<Response<ReleaseLeaseResponse>, Status> {
        self.call("release-lease", request, TtpCore::release_lease)
            .await
    }

    async fn checkpoint(
        &self,
        request: Request<CheckpointRequest>,
    ) -> Result<Response<CheckpointResponse>, Status> {
        self.call("checkpoint", request, TtpCore::checkpoint).await
    }

    async fn append_audit(
        &self,
        request: Request<AppendAuditRequest>,
    ) -> Result<Response<AppendAuditResponse>, Status> {
        self.call("append-audit", request, TtpCore::append_audit)
            .await
    }

    async fn read_audit(
        &self,
        request: Request<ReadAuditRequest>,
    ) -> Result<Response<ReadAuditResponse>, Status> {
        self.call("read-audit", request, TtpCore::read_audit).await
    }
}
