//! The agent's one error type for everything outside a single RPC (start-up, the socket,
//! enrollment). Errors inside an RPC are `tonic::Status`es built where the decision is made.

use std::path::PathBuf;

use crate::tpm::TpmError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    // The I/O error is part of the message rather than a `source`, so a printed chain
    // does not say it twice.
    #[error("{what} {path}: {error}")]
    Io {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("another agent is already serving {0} (it accepts connections); stop it first")]
    SocketInUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Tpm(#[from] TpmError),
    #[error(transparent)]
    Client(#[from] domfs_proto::client::ClientError),
    #[error("the TTP refused {call}: {message}")]
    TtpRefused { call: &'static str, message: String },
    #[error("the TTP cannot be reached for {call}: {message}")]
    TtpUnreachable { call: &'static str, message: String },
    #[error("the agent's server failed: {0}")]
    Serve(String),
}

impl AgentError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        AgentError::Io {
            what,
            path: path.into(),
            error,
        }
    }
}
