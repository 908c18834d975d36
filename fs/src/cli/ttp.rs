//! What every command that talks to the TTP or the agent shares: the TLS flags, a small
//! async runtime, and turning gRPC refusals into messages and exit codes.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use domfs_proto::client::{TlsFiles, connect_ttp, describe_status};
use domfs_proto::ttp::ttp_client::TtpClient;
use tonic::Code;
use tonic::transport::Channel;

use super::exit::KeyRefused;

/// The TTP's address and this client's TLS identity (`domfs-ttp cert issue` writes the
/// three files).
#[derive(clap::Args, Debug, Clone)]
pub struct TtpArgs {
    /// The trusted third party, e.g. https://ttp.example:7443.
    #[arg(long, value_name = "URL")]
    pub ttp: Option<String>,
    /// The TTP's CA certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This client's certificate (PEM), issued by the TTP's CA.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// This client's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

impl TtpArgs {
    pub fn given(&self) -> bool {
        self.ttp.is_some()
    }

    /// The URL and TLS files, all four required.
    pub fn resolve(&self) -> Result<(String, TlsFiles)> {
        let missing = |flag: &str| {
            anyhow!(
                "{flag} is required to talk to the TTP (--ttp URL --tls-ca FILE --tls-cert FILE --tls-key FILE)"
            )
        };
        let url = self.ttp.clone().ok_or_else(|| missing("--ttp"))?;
        let tls = TlsFiles {
            ca: self.tls_ca.clone().ok_or_else(|| missing("--tls-ca"))?,
            cert: self.tls_cert.clone().ok_or_else(|| missing("--tls-cert"))?,
            key: self.tls_key.clone().ok_or_else(|| missing("--tls-key"))?,
        };
        Ok((url, tls))
    }

    pub async fn connect(&self) -> Result<TtpClient<Channel>> {
        let (url, tls) = self.resolve()?;
        connect_ttp(&url, &tls)
            .await
            .with_context(|| "is domfs-ttp running there, and are the TLS files from its CA?")
    }
}

/// A runtime for one command's few calls; single-threaded, so nothing runs behind the
/// command's back.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A failed call as an error with the right exit code: policy refusals are [`KeyRefused`]
/// (exit 3), the rest plain failures.
pub fn call_failed(what: &str, status: tonic::Status) -> anyhow::Error {
    let text = format!("{what}: {}", describe_status(&status));
    match status.code() {
        Code::PermissionDenied | Code::FailedPrecondition | Code::NotFound => {
            KeyRefused(text).into()
        }
        Code::Unavailable | Code::DeadlineExceeded => {
            anyhow!("{text} (is the service running and reachable?)")
        }
        Code::Unknown
            if status.message().contains("handshake")
                || status.message().contains("certificate") =>
        {
            anyhow!(
                "{text} (the TLS handshake failed: are --tls-cert/--tls-key issued by the TTP's CA?)"
            )
        }
        _ => anyhow!(text),
    }
}
