//! The crate's one error type, for everything but the gRPC refusals of a request (those are
//! [`crate::refusal::Refusal`], which carry a status code and are logged as decisions).

use std::path::PathBuf;

/// What can go wrong in the state directory, the registry, the PKI, or an operator command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The state directory is missing, incomplete, not ours, or already initialised.
    #[error("state directory {}: {reason}", path.display())]
    State { path: PathBuf, reason: String },
    /// Another process (normally `domfs-ttp serve`) has the registry open.
    #[error(
        "the registry in {} is open in another process (is `domfs-ttp serve` running?)",
        path.display()
    )]
    RegistryLocked { path: PathBuf },
    #[error("registry: {0}")]
    Registry(#[from] redb::Error),
    /// A registry record that does not decode: the file was altered or is from a newer build.
    #[error("registry record {what} is corrupt: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("certificate: {0}")]
    Certificate(String),
    /// An operator's input is invalid (a name, a key file, an id).
    #[error("{0}")]
    Invalid(String),
    /// The named manager, host or domain does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The operation contradicts the current state (e.g. approving a revoked host).
    #[error("{0}")]
    Conflict(String),
    /// A backup that does not decrypt or does not parse.
    #[error("backup: {0}")]
    Backup(String),
    /// The gRPC server failed.
    #[error("server: {0}")]
    Serve(String),
    /// The random number generator failed.
    #[error("the system random number generator failed: {0}")]
    Random(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn state(path: impl Into<PathBuf>, reason: impl Into<String>) -> Error {
        Error::State {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// The gRPC status an admin call answers with for this error.
    pub fn to_status(&self) -> tonic::Status {
        let message = self.to_string();
        match self {
            Error::Invalid(_) => tonic::Status::invalid_argument(message),
            Error::NotFound(_) => tonic::Status::not_found(message),
            Error::Conflict(_) => tonic::Status::failed_precondition(message),
            _ => tonic::Status::internal(message),
        }
    }
}

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Error {
                Error::Registry(e.into())
            }
        }
    )*};
}
redb_errors!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Fills `out` from the operating system's random number generator.
pub(crate) fn random(out: &mut [u8]) -> Result<()> {
    getrandom::fill(out).map_err(|e| Error::Random(e.to_string()))
}
