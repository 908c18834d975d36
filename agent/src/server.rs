//! `domfs-agent serve`, assembled: state directory, TPM, TTP link, enrollment, socket,
//! gRPC server and renewal task. [`run`] is the testable core: it serves an already bound
//! listener with any TPM and TTP until `shutdown` resolves.

use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;

use domfs_proto::MAX_MESSAGE_BYTES;
use domfs_proto::agent::agent_server::AgentServer;
use domfs_proto::client::TlsFiles;

use crate::agent::{Agent, Settings};
use crate::enroll::{Enrollment, Keys, ensure_enrolled, retry_until_enrolled};
use crate::error::AgentError;
use crate::peer::AccessRule;
use crate::service::AgentService;
use crate::tpm::{PcrSelection, Tpm, TpmConfig};
use crate::ttp::{TtpApi, TtpLink, host_name_from_cert};
use crate::unwrapper::KeyUnwrapper;
use crate::{renew, socket};

/// How long open connections (watch streams) get to finish after shutdown is asked for.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);
/// How long the enrollment at start may take before the agent serves anyway.
const ENROLL_AT_START: Duration = Duration::from_secs(45);

/// What `domfs-agent serve` and `enroll` need to reach the TPM and the TTP.
#[derive(Clone, Debug)]
pub struct HostConfig {
    pub state_dir: PathBuf,
    pub ttp_url: String,
    pub tls: TlsFiles,
    pub tcti: String,
    pub pcrs: PcrSelection,
}

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub host: HostConfig,
    pub socket: PathBuf,
    pub socket_mode: u32,
    /// A group (name or number) whose members may use the agent.
    pub group: Option<String>,
    pub grace: Duration,
}

/// Creates the state directory (0700) and starts the TPM thread.
async fn open_host(config: &HostConfig) -> Result<(Tpm, TtpLink, String), AgentError> {
    let dir = &config.state_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| AgentError::io("cannot create the state directory", dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| AgentError::io("cannot set the mode of", dir, e))?;
    let host_name = host_name_from_cert(&config.tls.cert)?;
    let tpm_config = TpmConfig {
        tcti: config.tcti.clone(),
        state_dir: dir.join("tpm"),
        pcrs: config.pcrs.clone(),
    };
    let tpm = tokio::task::spawn_blocking(move || Tpm::start(tpm_config))
        .await
        .map_err(|e| AgentError::Serve(format!("the TPM start-up task failed: {e}")))??;
    let ttp = TtpLink::new(&config.ttp_url, &config.tls)?;
    Ok((tpm, ttp, host_name))
}

/// `domfs-agent enroll`: enrolls (with `Keys::Fresh`, new keys) and returns the outcome
/// and the host's name.
pub async fn enroll(config: &HostConfig, keys: Keys) -> Result<(Enrollment, String), AgentError> {
    let (tpm, ttp, host) = open_host(config).await?;
    let enrollment = ensure_enrolled(&tpm, &ttp, &host, keys).await?;
    Ok((enrollment, host))
}

/// Resolves `--group`: a group name, or a number.
pub fn resolve_group(group: &str) -> Result<u32, AgentError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(AgentError::Config(format!("no group named {group}"))),
        Err(e) => Err(AgentError::Config(format!(
            "cannot look up group {group}: {e}"
        ))),
    }
}

/// `domfs-agent serve`. Prints "domfs-agent: serving PATH" to stdout once the socket
/// accepts connections; returns after `shutdown` resolves (removing the socket).
pub async fn serve(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    let group = config.group.as_deref().map(resolve_group).transpose()?;
    let (tpm, ttp, host_name) = open_host(&config.host).await?;
    tracing::info!(
        host = %host_name,
        ttp = %config.host.ttp_url,
        pcrs = %config.host.pcrs,
        "agent starting"
    );
    let settings = Settings {
        host_name: host_name.clone(),
        ttp_url: config.host.ttp_url.clone(),
        grace: config.grace,
    };
    let agent = Arc::new(Agent::new(tpm, ttp, settings));

    let first = tokio::time::timeout(
        ENROLL_AT_START,
        ensure_enrolled(&agent.tpm, &agent.ttp, &host_name, Keys::IfNeeded),
    )
    .await;
    let retry = match first {
        Ok(Ok(_)) => false,
        Ok(Err(e @ AgentError::TtpUnreachable { .. })) => {
            tracing::warn!(error = %e, "serving anyway; enrollment will be retried in the background");
            true
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            tracing::warn!(
                "the TTP did not answer within {ENROLL_AT_START:?}; serving anyway, retrying enrollment in the background"
            );
            true
        }
    };
    let enrolling = retry.then(|| {
        let agent = agent.clone();
        let host = host_name.clone();
        tokio::spawn(async move { retry_until_enrolled(&agent.tpm, &agent.ttp, &host).await })
    });

    if group.is_some() && config.socket_mode & 0o060 != 0o060 {
        tracing::warn!(
            mode = format!("{:o}", config.socket_mode),
            "--group is set but the socket mode does not let the group read and write it \
             (use --socket-mode 0660)"
        );
    }
    let listener = socket::bind(&config.socket, config.socket_mode, group)?;
    let rule = AccessRule {
        own_uid: nix::unistd::getuid().as_raw(),
        group,
    };
    tracing::info!(socket = %config.socket.display(), mode = format!("{:o}", config.socket_mode), group = ?group, "serving");
    println!("domfs-agent: serving {}", config.socket.display());
    let result = run(listener, agent, rule, shutdown).await;
    if let Some(task) = enrolling {
        task.abort();
    }
    let _ = std::fs::remove_file(&config.socket);
    tracing::info!("agent stopped");
    result
}

/// Serves `listener` until `shutdown` resolves. Open watch streams get a moment to end,
/// then are cut.
pub async fn run<U: KeyUnwrapper, T: TtpApi>(
    listener: UnixListener,
    agent: Arc<Agent<U, T>>,
    rule: AccessRule,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    let renewals = tokio::spawn(renew::run(agent.clone()));
    let service = AgentServer::new(AgentService::new(agent, rule))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
            let _ = stopped.await;
        });
    tokio::pin!(server);
    let result = tokio::select! {
        result = &mut server => result,
        () = shutdown => {
            let _ = stop.send(());
            tokio::time::timeout(SHUTDOWN_WAIT, &mut server).await.unwrap_or(Ok(()))
        }
    };
    renewals.abort();
    result.map_err(|e| AgentError::Serve(domfs_proto::client::error_chain(&e)))
}
