//! Connecting to the services: the TTP over mutual TLS, the agent over its Unix socket.
//! Every binary that talks to either uses these, so the TLS set-up and the message-size
//! bounds are the same everywhere.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use crate::MAX_MESSAGE_BYTES;
use crate::agent::agent_client::AgentClient;
use crate::ttp::ttp_client::TtpClient;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a valid https://HOST:PORT address of a TTP")]
    BadUrl(String),
    #[error("cannot connect to {target}: {detail}")]
    Connect { target: String, detail: String },
}

/// The three PEM files every TTP client presents: the TTP's CA, and this client's
/// certificate and key (`domfs-ttp cert issue` writes all three).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Picks aws-lc-rs as rustls's one crypto provider, once per process. tonic and rustls
/// refuse to guess when the build could offer more than one.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A TLS client configuration for the TTP from `tls`, checking the server's name
/// against `url`'s host.
pub fn ttp_endpoint(url: &str, tls: &TlsFiles) -> Result<Endpoint, ClientError> {
    install_crypto_provider();
    let uri: Uri = url.parse().map_err(|_| ClientError::BadUrl(url.into()))?;
    if uri.scheme_str() != Some("https") {
        return Err(ClientError::BadUrl(url.into()));
    }
    let host = uri
        .host()
        .ok_or_else(|| ClientError::BadUrl(url.into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&tls.ca)?))
        .identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?))
        .domain_name(host);
    Endpoint::from(uri)
        .tls_config(config)
        .map_err(|e| ClientError::Connect {
            target: url.into(),
            detail: e.to_string(),
        })
        .map(|e| {
            e.connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(30))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(true)
        })
}

/// Connects to the TTP at `url` (`https://HOST:PORT`). With TLS 1.3 a handshake the
/// server rejects (no or a foreign client certificate) only shows at the first call, so
/// callers should make one early and report its error.
pub async fn connect_ttp(url: &str, tls: &TlsFiles) -> Result<TtpClient<Channel>, ClientError> {
    let channel = ttp_endpoint(url, tls)?
        .connect()
        .await
        .map_err(|e| ClientError::Connect {
            target: url.into(),
            detail: error_chain(&e),
        })?;
    Ok(TtpClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Connects to the agent's Unix socket at `path`.
pub async fn connect_agent(path: &Path) -> Result<AgentClient<Channel>, ClientError> {
    let socket = path.to_path_buf();
    // The URI is a placeholder: the connector below ignores it.
    let channel = Endpoint::from_static("http://agent.invalid")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| ClientError::Connect {
            target: path.display().to_string(),
            detail: error_chain(&e),
        })?;
    Ok(AgentClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// An error and its causes on one line (tonic's transport errors hide the useful part
/// in the source chain).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A gRPC status as one line for an operator: the message when the server gave one.
pub fn describe_status(status: &tonic::Status) -> String {
    let message = status.message();
    if message.is_empty() {
        format!("{:?}", status.code())
    } else {
        message.to_string()
    }
}
