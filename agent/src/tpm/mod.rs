//! The host's TPM 2.0, through tss-esapi on one dedicated thread (an ESAPI context is not
//! Sync and its calls block for milliseconds to seconds); the async side talks to it by
//! message. STUB: the interface the agent server is written against; filled in by the TPM
//! work.

use std::path::PathBuf;

use zeroize::Zeroizing;

/// Which PCRs the decryption key is bound to, e.g. `sha256:7,16`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcrSelection {
    /// Only "sha256" for now.
    pub bank: String,
    pub indices: Vec<u8>,
}

impl std::str::FromStr for PcrSelection {
    type Err = TpmError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let _ = s;
        Err(TpmError::Failed("not built yet".into()))
    }
}

impl std::fmt::Display for PcrSelection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let indices: Vec<String> = self.indices.iter().map(|i| i.to_string()).collect();
        write!(f, "{}:{}", self.bank, indices.join(","))
    }
}

#[derive(Clone, Debug)]
pub struct TpmConfig {
    /// A TCTI string, e.g. `swtpm:host=127.0.0.1,port=2321` or `device:/dev/tpmrm0`.
    pub tcti: String,
    /// Where the key blobs live (`DIR/tpm/`), encrypted by the TPM itself.
    pub state_dir: PathBuf,
    pub pcrs: PcrSelection,
}

#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    #[error("the TPM cannot be reached: {0}")]
    Unavailable(String),
    #[error("the TPM refused to use the host key: the PCR values differ from those it was bound to at enrollment (re-enroll with `domfs-agent enroll --force` and have the TTP operator approve again)")]
    PolicyFailed,
    #[error("no host key yet: the agent has not enrolled")]
    NotEnrolled,
    #[error("TPM operation failed: {0}")]
    Failed(String),
}

/// A handle to the TPM thread; cheap to clone.
#[derive(Clone)]
pub struct Tpm {}

impl Tpm {
    /// Connects, flushes handles a crashed run left behind, and loads the host keys from
    /// `state_dir` if there are any.
    pub fn start(config: TpmConfig) -> Result<Tpm, TpmError> {
        let _ = config;
        Err(TpmError::Failed("not built yet".into()))
    }

    /// Whether host keys exist (the agent has enrolled at least once).
    pub async fn has_keys(&self) -> Result<bool, TpmError> {
        Err(TpmError::Failed("not built yet".into()))
    }

    /// The evidence for `Enroll` over `nonce`. With `fresh_keys`, or when none exist yet,
    /// first creates a new attestation key and a new decryption key bound to the current
    /// values of the selected PCRs (replacing the old ones on disk).
    pub async fn enrollment_evidence(
        &self,
        nonce: Vec<u8>,
        fresh_keys: bool,
    ) -> Result<domfs_proto::ttp::EnrollRequest, TpmError> {
        let _ = (nonce, fresh_keys);
        Err(TpmError::Failed("not built yet".into()))
    }

    /// Decrypts `wrapped` (RSA-OAEP-SHA256, label [`domfs_proto::KEY_WRAP_LABEL`]) with the
    /// host's decryption key in a PolicyPCR session.
    pub async fn unwrap(&self, wrapped: Vec<u8>) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let _ = wrapped;
        Err(TpmError::Failed("not built yet".into()))
    }
}
