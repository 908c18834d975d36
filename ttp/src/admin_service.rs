//! The `TtpAdmin` gRPC service on the admin socket (`DIR/admin.sock`, mode 0600, in a
//! directory of mode 0700). Every call checks the caller's peer credentials: root, or the
//! owner of the state directory.

use std::sync::Arc;

use domfs_proto::ttp::ttp_admin_server::TtpAdmin;
use domfs_proto::ttp::{
    AddManagerRequest, AddManagerResponse, BackupRequest, BackupResponse, DestroyDomainRequest,
    DomainRecord, HostNameRequest, HostRecord, ListDomainsRequest, ListDomainsResponse,
    ListHostsRequest, ListHostsResponse, ListManagersRequest, ListManagersResponse,
};
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::admin::Admin;
use crate::core::TtpCore;
use crate::secret::Secret32;

/// Backups travel whole over the socket; this bounds them (and every admin message).
pub const MAX_ADMIN_MESSAGE: usize = 256 * 1024 * 1024;

#[derive(Clone)]
pub struct AdminService {
    core: Arc<TtpCore>,
    owner_uid: u32,
}

impl AdminService {
    pub fn new(core: Arc<TtpCore>, owner_uid: u32) -> AdminService {
        AdminService { core, owner_uid }
    }

    fn check_caller<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let uid = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .map(|cred| cred.uid());
        match uid {
            Some(uid) if uid == 0 || uid == self.owner_uid => Ok(()),
            Some(uid) => {
                tracing::warn!("admin socket: refused uid {uid}");
                Err(Status::permission_denied(format!(
                    "uid {uid} is neither root nor the owner of the state directory"
                )))
            }
            None => Err(Status::permission_denied(
                "the caller's credentials are unknown",
            )),
        }
    }

    async fn call<Q, A>(
        &self,
        request: Request<Q>,
        f: impl FnOnce(&Admin<'_>, Q) -> crate::Result<A> + Send + 'static,
    ) -> Result<Response<A>, Status>
    where
        Q: Send + 'static,
        A: Send + 'static,
    {
        self.check_caller(&request)?;
        let core = self.core.clone();
        let message = request.into_inner();
        let result = tokio::task::spawn_blocking(move || {
            let admin = Admin {
                registry: core.registry(),
                state: core.state(),
                log: core.decision_log(),
            };
            f(&admin, message)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        result.map(Response::new).map_err(|e| e.to_status())
    }
}

#[tonic::async_trait]
impl TtpAdmin for AdminService {
    async fn add_manager(
        &self,
        request: Request<AddManagerRequest>,
    ) -> Result<Response<AddManagerResponse>, Status> {
        self.call(request, |admin, r| {
            admin
                .add_manager(&r.name, &r.public_key)
                .map(|()| AddManagerResponse {})
        })
        .await
    }

    async fn list_managers(
        &self,
        request: Request<ListManagersRequest>,
    ) -> Result<Response<ListManagersResponse>, Status> {
        self.call(request, |admin, _| {
            admin
                .list_managers()
                .map(|managers| ListManagersResponse { managers })
        })
        .await
    }

    async fn list_hosts(
        &self,
        request: Request<ListHostsRequest>,
    ) -> Result<Response<ListHostsResponse>, Status> {
        self.call(request, |admin, _| {
            admin.list_hosts().map(|hosts| ListHostsResponse { hosts })
        })
        .await
    }

    async fn approve_host(
        &self,
        request: Request<HostNameRequest>,
    ) -> Result<Response<HostRecord>, Status> {
        self.call(request, |admin, r| admin.approve_host(&r.name))
            .await
    }

    async fn revoke_host(
        &self,
        request: Request<HostNameRequest>,
    ) -> Result<Response<HostRecord>, Status> {
        self.call(request, |admin, r| admin.revoke_host(&r.name))
            .await
    }

    async fn list_domains(
        &self,
        request: Request<ListDomainsRequest>,
    ) -> Result<Response<ListDomainsResponse>, Status> {
        self.call(request, |admin, _| {
            admin
                .list_domains()
                .map(|domains| ListDomainsResponse { domains })
        })
        .await
    }

    async fn destroy_domain(
        &self,
        request: Request<DestroyDomainRequest>,
    ) -> Result<Response<DomainRecord>, Status> {
        self.call(request, |admin, r| admin.destroy_domain(&r.domain_id))
            .await
    }

    async fn backup(
        &self,
        request: Request<BackupRequest>,
    ) -> Result<Response<BackupResponse>, Status> {
        self.call(request, |admin, mut r| {
            let key = Secret32::from_slice(&r.backup_key);
            zeroize::Zeroize::zeroize(&mut r.backup_key);
            let key =
                key.ok_or_else(|| crate::Error::Invalid("the backup key must be 32 bytes".into()))?;
            admin
                .backup(&key)
                .map(|encrypted| BackupResponse { encrypted })
        })
        .await
    }
}
