//! The daemon as a library: [`Server::bind`] takes the registry (redb's lock makes it the
//! one writer), binds the TLS port and the admin socket; [`Server::run`] serves both until
//! the shutdown future completes, then removes the socket.
//!
//! Limits: messages of at most [`MAX_MESSAGE_BYTES`] both ways on the TLS port; at most
//! [`MAX_IN_FLIGHT`] requests in flight in all, [`MAX_STREAMS_PER_CONNECTION`] per
//! connection; a TLS handshake must finish within 10 s and a request within 30 s. At
//! shutdown, open connections get [`SHUTDOWN_GRACE`] to finish.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use domfs_proto::MAX_MESSAGE_BYTES;
use domfs_proto::ttp::ttp_admin_server::TtpAdminServer;
use domfs_proto::ttp::ttp_server::TtpServer;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::admin_service::{AdminService, MAX_ADMIN_MESSAGE};
use crate::core::{CoreConfig, TtpCore};
use crate::error::{Error, Result};
use crate::service::TtpService;
use crate::state;

pub const MAX_IN_FLIGHT: usize = 256;
pub const MAX_STREAMS_PER_CONNECTION: u32 = 32;
/// How long a shutdown waits for open connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub struct Server {
    core: Arc<TtpCore>,
    tcp: TcpListener,
    local_addr: SocketAddr,
    admin: UnixListener,
    admin_path: PathBuf,
}

impl Server {
    /// Opens the state directory and binds `listen` (port 0 picks a free port) and
    /// `DIR/admin.sock`.
    pub async fn bind(config: &CoreConfig, listen: SocketAddr) -> Result<Server> {
        let core = Arc::new(TtpCore::open(config)?);
        let tcp = TcpListener::bind(listen)
            .await
            .map_err(|e| Error::io(listen.to_string(), e))?;
        let local_addr = tcp
            .local_addr()
            .map_err(|e| Error::io(listen.to_string(), e))?;
        let admin_path = config.state.admin_socket();
        // We hold the registry lock, so a socket file left here is a dead server's.
        match fs::remove_file(&admin_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(&admin_path, e));
            }
            _ => {}
        }
        let admin = UnixListener::bind(&admin_path).map_err(|e| Error::io(&admin_path, e))?;
        fs::set_permissions(&admin_path, fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(&admin_path, e))?;
        Ok(Server {
            core,
            tcp,
            local_addr,
            admin,
            admin_path,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn core(&self) -> &Arc<TtpCore> {
        &self.core
    }

    /// Serves until `shutdown` completes; in-flight requests finish first.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let state = self.core.state().clone();
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                state.read(state::SERVER_CERT)?,
                state.read(state::SERVER_KEY)?,
            ))
            .client_ca_root(Certificate::from_pem(state.read(state::CA_CERT)?))
            .timeout(Duration::from_secs(10));
        let ttp = TtpServer::new(TtpService::new(self.core.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let admin = TtpAdminServer::new(AdminService::new(self.core.clone(), state.owner_uid()?))
            .max_decoding_message_size(1024 * 1024)
            .max_encoding_message_size(MAX_ADMIN_MESSAGE);

        let (stop, stopped) = tokio::sync::watch::channel(false);
        let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            // An error means the sender is gone: stop as well.
            let _ = rx.wait_for(|stop| *stop).await;
        };

        let incoming = TcpIncoming::from(self.tcp)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        let tls_server = tonic::transport::Server::builder()
            .tls_config(tls)
            .map_err(|e| Error::Certificate(e.to_string()))?
            .timeout(Duration::from_secs(30))
            .concurrency_limit_per_connection(MAX_STREAMS_PER_CONNECTION as usize)
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .http2_keepalive_interval(Some(Duration::from_secs(60)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                MAX_IN_FLIGHT,
            ))
            .add_service(ttp)
            .serve_with_incoming_shutdown(incoming, wait(stopped.clone()));
        let admin_server = tonic::transport::Server::builder()
            .timeout(Duration::from_secs(600))
            .add_service(admin)
            .serve_with_incoming_shutdown(
                UnixListenerStream::new(self.admin),
                wait(stopped.clone()),
            );

        let servers = async { tokio::join!(tls_server, admin_server) };
        tokio::pin!(servers);
        let results = tokio::select! {
            results = &mut servers => Some(results),
            () = shutdown => {
                let _ = stop.send(true);
                // Connections get GOAWAY and in-flight calls finish; a client that keeps
                // its connection open does not hold the shutdown up for long.
                match tokio::time::timeout(SHUTDOWN_GRACE, &mut servers).await {
                    Ok(results) => Some(results),
                    Err(_) => {
                        tracing::warn!(
                            "connections still open {} s after shutdown began; closing them",
                            SHUTDOWN_GRACE.as_secs()
                        );
                        None
                    }
                }
            }
        };
        let _ = fs::remove_file(&self.admin_path);
        if let Some((tls_result, admin_result)) = results {
            tls_result.map_err(|e| Error::Serve(format!("TLS port: {e}")))?;
            admin_result.map_err(|e| Error::Serve(format!("admin socket: {e}")))?;
        }
        Ok(())
    }
}
