//! The host's TPM 2.0, through tss-esapi on one dedicated thread (an ESAPI context is not
//! Sync and its calls block for milliseconds to seconds); the async side talks to it by
//! message.
//!
//! Keys (see [`templates`]): a storage primary key re-created for every command (it is
//! derived from the owner seed, so it is the same key each time and nothing has to be
//! persisted in the TPM's NV memory; ECC, so that takes milliseconds), and under it the
//! host's attestation key and PolicyPCR-bound decryption key, kept as TPM-encrypted blobs
//! in `STATE_DIR/tpm/host-keys.json`. Between commands the agent holds no TPM object or
//! session at all (see `worker`).
//!
//! Modules: [`pcr`] (the PCR selection), [`templates`] (key templates), `keyfile` (the blobs
//! on disk), `worker` (the thread: connect, clean up, command loop, key creation),
//! `policy` (PolicyPCR sessions), `evidence` (certify + quote), `unwrap` (decryption).
//!
//! The TSS library prints warnings to stderr when a command fails (e.g. a policy failure);
//! run the agent with `TSS2_LOG=all+none` to silence it (the variable cannot be set from
//! inside the process without `unsafe`).

mod evidence;
mod keyfile;
pub mod pcr;
mod policy;
pub mod templates;
mod unwrap;
mod worker;

use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use tokio::sync::oneshot;
use zeroize::Zeroizing;

pub use pcr::PcrSelection;
use worker::{Command, Worker};

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
    #[error(
        "the TPM refused to use the host key: the PCR values differ from those it was bound to at enrollment (re-enroll with `domfs-agent enroll --force` and have the TTP operator approve again)"
    )]
    PolicyFailed,
    #[error("no host key yet: the agent has not enrolled")]
    NotEnrolled,
    #[error("TPM operation failed: {0}")]
    Failed(String),
}

/// A handle to the TPM thread; cheap to clone.
///
/// The thread and its TPM connection live as long as any handle: dropping the last one
/// closes the command channel, waits for the command in progress (if any) to finish, and
/// closes the connection (and ends the thread) before `drop` returns. Between commands
/// the agent holds no object or session in the TPM.
#[derive(Clone)]
pub struct Tpm {
    inner: Arc<Inner>,
}

struct Inner {
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.commands.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the TPM thread panicked");
        }
    }
}

fn thread_gone() -> TpmError {
    TpmError::Unavailable("the TPM thread has stopped".into())
}

impl Tpm {
    /// Connects, flushes handles a crashed run left behind, and loads the host keys from
    /// `state_dir` if there are any.
    ///
    /// Blocks while it connects and checks the keys (milliseconds with swtpm; a hardware
    /// TPM may take a second or so).
    pub fn start(config: TpmConfig) -> Result<Tpm, TpmError> {
        let (commands, receiver) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("domfs-tpm".into())
            .spawn(move || match Worker::open(config) {
                Ok(worker) => {
                    let _ = ready_tx.send(Ok(()));
                    worker.run(receiver);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| TpmError::Failed(format!("cannot start the TPM thread: {e}")))?;
        let ready = ready_rx.recv();
        match ready {
            Ok(Ok(())) => Ok(Tpm {
                inner: Arc::new(Inner {
                    commands: Some(commands),
                    thread: Some(thread),
                }),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(thread_gone())
            }
        }
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, TpmError>>) -> Command,
    ) -> Result<T, TpmError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .commands
            .as_ref()
            .ok_or_else(thread_gone)?
            .send(command(reply))
            .map_err(|_| thread_gone())?;
        answer.await.map_err(|_| thread_gone())?
    }

    /// Whether host keys exist (the agent has enrolled at least once).
    pub async fn has_keys(&self) -> Result<bool, TpmError> {
        self.ask(|reply| Command::HasKeys { reply }).await
    }

    /// The evidence for `Enroll` over `nonce`. With `fresh_keys`, or when none exist yet,
    /// first creates a new attestation key and a new decryption key bound to the current
    /// values of the selected PCRs (replacing the old ones on disk).
    ///
    /// Keys bound to another PCR selection than the configured one are replaced as well.
    /// Existing keys whose policy no longer matches the current PCR values give
    /// [`TpmError::PolicyFailed`] (the TTP would refuse them): enroll with `fresh_keys`.
    pub async fn enrollment_evidence(
        &self,
        nonce: Vec<u8>,
        fresh_keys: bool,
    ) -> Result<domfs_proto::ttp::EnrollRequest, TpmError> {
        self.ask(|reply| Command::Evidence {
            nonce,
            fresh_keys,
            reply,
        })
        .await
    }

    /// Decrypts `wrapped` (RSA-OAEP-SHA256, label [`domfs_proto::KEY_WRAP_LABEL`]) with the
    /// host's decryption key in a PolicyPCR session.
    pub async fn unwrap(&self, wrapped: Vec<u8>) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        self.ask(|reply| Command::Unwrap { wrapped, reply }).await
    }
}
