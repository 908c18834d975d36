//! How an operator command reaches the registry: through the running server's admin
//! socket if one answers, otherwise by opening the registry itself (redb's file lock keeps
//! this safe: if a server holds the registry but its socket does not answer, the command
//! fails instead of writing beside it).

use std::time::Duration;

use domfs_proto::client::describe_status;
use domfs_proto::ttp::ttp_admin_client::TtpAdminClient;
use domfs_proto::ttp::{
    AddManagerRequest, BackupRequest, DestroyDomainRequest, DomainRecord, HostNameRequest,
    HostRecord, ListDomainsRequest, ListHostsRequest, ListManagersRequest, ManagerRecord,
};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::admin::Admin;
use crate::admin_service::MAX_ADMIN_MESSAGE;
use crate::decision_log::DecisionLog;
use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::secret::Secret32;
use crate::state::StateDir;

pub enum AdminConnection {
    Socket(TtpAdminClient<Channel>),
    Direct {
        registry: Registry,
        state: StateDir,
        log: DecisionLog,
    },
}

fn from_status(status: tonic::Status) -> Error {
    let message = describe_status(&status);
    match status.code() {
        tonic::Code::InvalidArgument => Error::Invalid(message),
        tonic::Code::NotFound => Error::NotFound(message),
        tonic::Code::FailedPrecondition => Error::Conflict(message),
        _ => Error::Serve(message),
    }
}

async fn connect_socket(state: &StateDir) -> Option<TtpAdminClient<Channel>> {
    let socket = state.admin_socket();
    if !socket.exists() {
        return None;
    }
    let channel = Endpoint::from_static("http://admin.invalid")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .ok()?;
    Some(
        TtpAdminClient::new(channel)
            .max_decoding_message_size(MAX_ADMIN_MESSAGE)
            .max_encoding_message_size(1024 * 1024),
    )
}

impl AdminConnection {
    /// The server's socket if it answers, else the registry in `state` directly.
    pub async fn open(state: &StateDir) -> Result<AdminConnection> {
        state.check()?;
        if let Some(client) = connect_socket(state).await {
            return Ok(AdminConnection::Socket(client));
        }
        let registry = Registry::open(state.root())?;
        let log = DecisionLog::open(&state.default_log(), false)?;
        Ok(AdminConnection::Direct {
            registry,
            state: state.clone(),
            log,
        })
    }

    pub fn via_socket(&self) -> bool {
        matches!(self, AdminConnection::Socket(_))
    }

    fn direct<T>(&self, f: impl FnOnce(&Admin<'_>) -> Result<T>) -> Result<T> {
        match self {
            AdminConnection::Direct {
                registry,
                state,
                log,
            } => f(&Admin {
                registry,
                state,
                log,
            }),
            AdminConnection::Socket(_) => Err(Error::Serve("not a direct connection".into())),
        }
    }

    pub async fn add_manager(&mut self, name: &str, public_key: &[u8; 32]) -> Result<()> {
        match self {
            AdminConnection::Socket(client) => client
                .add_manager(AddManagerRequest {
                    name: name.into(),
                    public_key: public_key.to_vec(),
                })
                .await
                .map(|_| ())
                .map_err(from_status),
            _ => self.direct(|a| a.add_manager(name, public_key)),
        }
    }

    pub async fn list_managers(&mut self) -> Result<Vec<ManagerRecord>> {
        match self {
            AdminConnection::Socket(client) => client
                .list_managers(ListManagersRequest {})
                .await
                .map(|r| r.into_inner().managers)
                .map_err(from_status),
            _ => self.direct(|a| a.list_managers()),
        }
    }

    pub async fn list_hosts(&mut self) -> Result<Vec<HostRecord>> {
        match self {
            AdminConnection::Socket(client) => client
                .list_hosts(ListHostsRequest {})
                .await
                .map(|r| r.into_inner().hosts)
                .map_err(from_status),
            _ => self.direct(|a| a.list_hosts()),
        }
    }

    pub async fn approve_host(&mut self, name: &str) -> Result<HostRecord> {
        match self {
            AdminConnection::Socket(client) => client
                .approve_host(HostNameRequest { name: name.into() })
                .await
                .map(|r| r.into_inner())
                .map_err(from_status),
            _ => self.direct(|a| a.approve_host(name)),
        }
    }

    pub async fn revoke_host(&mut self, name: &str) -> Result<HostRecord> {
        match self {
            AdminConnection::Socket(client) => client
                .revoke_host(HostNameRequest { name: name.into() })
                .await
                .map(|r| r.into_inner())
                .map_err(from_status),
            _ => self.direct(|a| a.revoke_host(name)),
        }
    }

    pub async fn list_domains(&mut self) -> Result<Vec<DomainRecord>> {
        match self {
            AdminConnection::Socket(client) => client
                .list_domains(ListDomainsRequest {})
                .await
                .map(|r| r.into_inner().domains)
                .map_err(from_status),
            _ => self.direct(|a| a.list_domains()),
        }
    }

    pub async fn destroy_domain(&mut self, id: &str) -> Result<DomainRecord> {
        match self {
            AdminConnection::Socket(client) => client
                .destroy_domain(DestroyDomainRequest {
                    domain_id: id.into(),
                })
                .await
                .map(|r| r.into_inner())
                .map_err(from_status),
            _ => self.direct(|a| a.destroy_domain(id)),
        }
    }

    /// The encrypted backup.
    pub async fn backup(&mut self, backup_key: &Secret32) -> Result<Vec<u8>> {
        match self {
            AdminConnection::Socket(client) => client
                .backup(BackupRequest {
                    backup_key: backup_key.expose().to_vec(),
                })
                .await
                .map(|r| r.into_inner().encrypted)
                .map_err(from_status),
            _ => self.direct(|a| a.backup(backup_key)),
        }
    }
}
