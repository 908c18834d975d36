//! The thread that owns the ESAPI context: connects, cleans up after a crashed run, then
//! serves commands until every [`super::Tpm`] handle is gone.
//!
//! Between commands the agent holds nothing in the TPM: each command creates the storage
//! primary key (a few milliseconds for an ECC key; the same key every time, since it is
//! derived from the owner seed), loads the host key it needs, and flushes both. So a TPM
//! without a resource manager (swtpm has room for three objects, shared by all its
//! clients) is never left full, another client flushing everything (as `Tpm::start` does)
//! cannot break a running agent, and an agent survives a TPM restart (swtpm restarted
//! under it, a TPM reset).

use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::oneshot;
use tss_esapi::{
    Context, TctiNameConf, WrapperErrorKind,
    constants::{
        CapabilityType,
        tss::{TPM2_ACTIVE_SESSION_FIRST, TPM2_LOADED_SESSION_FIRST, TPM2_TRANSIENT_FIRST},
    },
    handles::{KeyHandle, ObjectHandle},
    interface_types::resource_handles::Hierarchy,
    structures::CapabilityData,
};
use zeroize::Zeroizing;

use super::keyfile::{self, HostKeys, KeyBlobs};
use super::{TpmConfig, TpmError, templates};

/// A request to the TPM thread, with the channel its answer goes back on.
pub(crate) enum Command {
    HasKeys {
        reply: oneshot::Sender<Result<bool, TpmError>>,
    },
    Evidence {
        nonce: Vec<u8>,
        fresh_keys: bool,
        reply: oneshot::Sender<Result<domfs_proto::ttp::EnrollRequest, TpmError>>,
    },
    Unwrap {
        wrapped: Vec<u8>,
        reply: oneshot::Sender<Result<Zeroizing<Vec<u8>>, TpmError>>,
    },
}

pub(crate) struct Worker {
    pub(crate) ctx: Context,
    pub(crate) config: TpmConfig,
    /// The host keys, as blobs (loaded only for the command that uses them).
    pub(crate) keys: Option<HostKeys>,
}

/// The raw TSS2_RC of an error from the TSS stack (tss-esapi does not expose it; its
/// Display of a response code does).
fn raw_rc(e: &tss_esapi::Error) -> Option<u32> {
    use tss_esapi::constants::response_code::Tss2ResponseCode;
    let text = match e {
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatZero(rc)) => rc.to_string(),
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatOne(rc)) => rc.to_string(),
        _ => return None,
    };
    let hex = text.rsplit("0x").next()?;
    u32::from_str_radix(hex.trim(), 16).ok()
}

/// Whether `e` comes from the transport (the TCTI layer of the TSS): the TPM went away.
fn is_transport_error(e: &tss_esapi::Error) -> bool {
    const TSS2_TCTI_RC_LAYER: u32 = 10 << 16;
    raw_rc(e).is_some_and(|rc| rc & 0x00ff_0000 == TSS2_TCTI_RC_LAYER)
}

/// Maps a TSS error to a [`TpmError`], naming the step that failed.
pub(crate) fn tss_error(step: &str, e: tss_esapi::Error) -> TpmError {
    if is_transport_error(&e) {
        TpmError::Unavailable(format!("{step}: {e}"))
    } else {
        TpmError::Failed(format!("{step}: {e}"))
    }
}

impl Worker {
    /// Connects to the TPM and prepares it: flushes leftovers, checks that the storage
    /// primary key can be created, reads and test-loads the host keys.
    pub(crate) fn open(config: TpmConfig) -> Result<Worker, TpmError> {
        let tcti: TctiNameConf = config
            .tcti
            .parse()
            .map_err(|e| TpmError::Unavailable(format!("bad TCTI {:?}: {e}", config.tcti)))?;
        let mut ctx = Context::new(tcti).map_err(|e| {
            TpmError::Unavailable(format!("cannot connect to the TPM at {}: {e}", config.tcti))
        })?;
        let flushed = flush_leftovers(&mut ctx)?;
        if flushed > 0 {
            tracing::info!(flushed, "flushed TPM handles a previous run left behind");
        }
        let mut worker = Worker {
            ctx,
            keys: None,
            config,
        };
        worker.with_primary(|_, _| Ok(()))?;
        let file = keyfile::path(&worker.config.state_dir);
        worker.keys = match keyfile::load(&worker.config.state_dir)? {
            keyfile::Stored::Nothing => None,
            keyfile::Stored::Unusable(why) => {
                tracing::warn!(file = %file.display(), problem = %why,
                    "the host key file is damaged; the next enrollment replaces it");
                None
            }
            keyfile::Stored::Keys(keys) => match worker.check_loadable(&keys) {
                Ok(()) => Some(*keys),
                Err(e @ TpmError::Unavailable(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e,
                        "the host keys do not load into this TPM (was it cleared or replaced?); \
                         the next enrollment creates new ones");
                    None
                }
            },
        };
        Ok(worker)
    }

    /// Serves commands until every sender is gone, then closes the connection.
    pub(crate) fn run(mut self, commands: mpsc::Receiver<Command>) {
        while let Ok(command) = commands.recv() {
            match command {
                Command::HasKeys { reply } => {
                    let _ = reply.send(Ok(self.keys.is_some()));
                }
                Command::Evidence {
                    nonce,
                    fresh_keys,
                    reply,
                } => {
                    let _ = reply.send(self.enrollment_evidence(nonce, fresh_keys));
                }
                Command::Unwrap { wrapped, reply } => {
                    let _ = reply.send(self.unwrap(&wrapped));
                }
            }
        }
        // Dropping the context closes the connection.
    }

    /// Runs `f` with the storage primary key loaded, and flushes it afterwards.
    pub(crate) fn with_primary<T>(
        &mut self,
        f: impl FnOnce(&mut Self, KeyHandle) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let started = Instant::now();
        let primary = self
            .ctx
            .execute_with_nullauth_session(|ctx| {
                ctx.create_primary(
                    Hierarchy::Owner,
                    templates::storage_primary()?,
                    None,
                    None,
                    None,
                    None,
                )
            })
            .map_err(|e| tss_error("creating the storage primary key", e))?
            .key_handle;
        tracing::trace!(
            us = started.elapsed().as_micros() as u64,
            "created the storage primary key"
        );
        let result = f(self, primary);
        self.flush(primary.into());
        result
    }

    /// Loads `key` under `primary`; the caller flushes it with [`Self::flush`].
    pub(crate) fn load(
        &mut self,
        primary: KeyHandle,
        key: &KeyBlobs,
        which: &str,
    ) -> Result<KeyHandle, TpmError> {
        let (private, public) = (key.private.clone(), key.public.clone());
        self.ctx
            .execute_with_nullauth_session(|ctx| ctx.load(primary, private, public))
            .map_err(|e| tss_error(&format!("loading the {which}"), e))
    }

    /// Flushes a loaded object or session; a failure is only logged (nothing more can be
    /// done, and the next start flushes leftovers anyway).
    pub(crate) fn flush(&mut self, handle: ObjectHandle) {
        if let Err(e) = self.ctx.flush_context(handle) {
            tracing::warn!(error = %e, "cannot flush a TPM handle");
        }
    }

    fn check_loadable(&mut self, keys: &HostKeys) -> Result<(), TpmError> {
        self.with_primary(|w, primary| {
            let ak = w.load(primary, &keys.attestation, "attestation key")?;
            w.flush(ak.into());
            let dk = w.load(primary, &keys.decryption, "decryption key")?;
            w.flush(dk.into());
            Ok(())
        })
    }
}

/// Flushes every transient object and session the TPM holds. Without a resource manager
/// (swtpm, `/dev/tpm0`) a process that dies leaves its objects and sessions loaded, and
/// swtpm has room for only three of each; through `/dev/tpmrm0` the kernel's resource
/// manager shows this connection only its own handles, so there is nothing to flush.
///
/// A handle that cannot be flushed is logged and skipped: if it matters, the next command
/// that needs room fails with a clear error.
fn flush_leftovers(ctx: &mut Context) -> Result<usize, TpmError> {
    let mut flushed = 0;
    // Transient objects, loaded sessions, saved (context-saved, not loaded) sessions.
    for first in [
        TPM2_TRANSIENT_FIRST,
        TPM2_LOADED_SESSION_FIRST,
        TPM2_ACTIVE_SESSION_FIRST,
    ] {
        let (data, _more) = ctx
            .get_capability(CapabilityType::Handles, first, 64)
            .map_err(|e| tss_error("listing the TPM's handles", e))?;
        let CapabilityData::Handles(handles) = data else {
            continue;
        };
        for handle in handles.into_inner() {
            let raw = u32::from(handle);
            let result = ctx
                .tr_from_tpm_public(handle)
                .and_then(|object| ctx.flush_context(object));
            match result {
                Ok(()) => flushed += 1,
                // tss-esapi 7.7 flushes a policy session but then complains that its
                // bookkeeping did not expect that handle type to be flushed.
                Err(tss_esapi::Error::WrapperError(WrapperErrorKind::InvalidHandleState)) => {
                    flushed += 1
                }
                Err(e) => {
                    if is_transport_error(&e) {
                        return Err(tss_error("flushing a leftover TPM handle", e));
                    }
                    tracing::warn!(handle = format_args!("{raw:#010x}"), error = %e,
                        "cannot flush a leftover TPM handle");
                }
            }
        }
    }
    Ok(flushed)
}

/// Creates a new attestation key and a decryption key under `primary`, the latter bound
/// to the current values of `config.pcrs`.
pub(crate) fn create_keys(worker: &mut Worker, primary: KeyHandle) -> Result<HostKeys, TpmError> {
    let pcrs = worker.config.pcrs.clone();
    let started = Instant::now();
    let policy = super::policy::trial_policy_pcr(&mut worker.ctx, &pcrs)?;
    let ak = worker
        .ctx
        .execute_with_nullauth_session(|ctx| {
            ctx.create(
                primary,
                templates::attestation_key()?,
                None,
                None,
                None,
                None,
            )
        })
        .map_err(|e| tss_error("creating the attestation key", e))?;
    let dk = worker
        .ctx
        .execute_with_nullauth_session(|ctx| {
            ctx.create(
                primary,
                templates::decryption_key(policy)?,
                None,
                None,
                None,
                None,
            )
        })
        .map_err(|e| tss_error("creating the decryption key", e))?;
    tracing::info!(
        ms = started.elapsed().as_millis() as u64,
        pcrs = %pcrs,
        "created new host keys"
    );
    Ok(HostKeys {
        pcrs,
        attestation: KeyBlobs {
            public: ak.out_public,
            private: ak.out_private,
        },
        decryption: KeyBlobs {
            public: dk.out_public,
            private: dk.out_private,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_errors_are_recognised_by_layer() {
        use tss_esapi::constants::response_code::Tss2ResponseCode;
        // TSS2_TCTI_RC_IO_ERROR and TSS2_ESYS_RC_BAD_REFERENCE.
        let io = tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(0x000a_000a));
        let esys = tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(0x0007_0005));
        // TPM_RC_POLICY_FAIL on session 1.
        let policy = tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(0x0000_099d));
        assert_eq!(raw_rc(&io), Some(0x000a_000a));
        assert!(is_transport_error(&io));
        assert!(!is_transport_error(&esys));
        assert!(!is_transport_error(&policy));
        assert_eq!(raw_rc(&policy), Some(0x99d));
    }
}
