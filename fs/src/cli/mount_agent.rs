//! Agent mode of `domfs mount`: the domain key comes from the host's domfs-agent (which
//! got it from the TTP and had the TPM unwrap it), and the mount lives only as long as
//! its lease.
//!
//! A thread watches the lease through the agent. When the TTP refuses a renewal (host
//! revoked, domain destroyed, grant withdrawn) or the grace period after losing the TTP
//! runs out, the filesystem is revoked (every request answers EACCES, cached plaintext is
//! dropped) and the mount is detached; the keys are zeroized when the session ends. If
//! the agent itself goes away (restarted), the mount asks it for the key again; it keeps
//! serving until the lease it knew of runs out, and stops then if the agent has not
//! granted a new one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use domfs_proto::agent::watch_event::Kind;
use domfs_proto::agent::{GetDomainKeyRequest, Mode, ReleaseKeyRequest, WatchRequest};
use domfs_proto::client::{connect_agent, describe_status};
use zeroize::Zeroize;

use super::exit::KeyRefused;
use super::ttp::runtime;
use crate::crypto::{DomainKey, WriterKeys};
use crate::filesystem::Filesystem;
use crate::format::header::{DomainHeader, KeyMode};
use crate::fuse::mountinfo::{self, UnmountError};

/// Where `domfs-agent serve` listens unless told otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/domfs/agent.sock";

/// What the mount asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Read-write when granted, else read-only.
    Best,
    ReadOnly,
    ReadWrite,
}

impl Want {
    fn mode(self) -> Mode {
        match self {
            Want::Best => Mode::Best,
            Want::ReadOnly => Mode::ReadOnly,
            Want::ReadWrite => Mode::ReadWrite,
        }
    }
}

/// A lease the agent holds for this mount.
#[derive(Clone, Debug)]
pub struct Lease {
    socket: PathBuf,
    id: Vec<u8>,
    seconds: u32,
    /// What to ask for again if the agent loses the lease: the mode granted first.
    again: Want,
    signed_message: Vec<u8>,
    signature: Vec<u8>,
    mountpoint: String,
    /// A read-only mount's encoded audit entries not yet taken by the TTP, oldest first:
    /// one queue for every clone (the periodic shipper, `domfs audit`, the unmount).
    outbox: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl Lease {
    /// Takes the entries waiting for the TTP.
    pub fn take_outbox(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.outbox.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts back entries the TTP did not take, ahead of any queued since.
    pub fn return_to_outbox(&self, mut unsent: Vec<Vec<u8>>) {
        let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        unsent.append(&mut outbox);
        *outbox = unsent;
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn id(&self) -> &[u8] {
        &self.id
    }
}

/// What the agent released.
pub struct Granted {
    pub key: DomainKey,
    pub writer: Arc<WriterKeys>,
    pub read_only: bool,
    pub lease: Lease,
    /// The volume's newest anchor at the TTP (none before the first checkpoint).
    pub anchor: Option<domfs_proto::ttp::Checkpoint>,
}

/// Asks the agent at `socket` for the key of the volume with `header`.
pub fn acquire(
    socket: &Path,
    header: &DomainHeader,
    want: Want,
    mountpoint: &Path,
) -> Result<Granted> {
    if header.key_mode != KeyMode::Ttp {
        bail!("this is a key-file volume: mount it with --key-file KEY");
    }
    let mut lease = Lease {
        socket: socket.to_path_buf(),
        id: Vec::new(),
        seconds: 0,
        again: want,
        signed_message: header.signed_message.clone(),
        signature: header.signature.clone(),
        mountpoint: mountpoint.display().to_string(),
        outbox: Arc::default(),
    };
    let rt = runtime()?;
    let granted = rt.block_on(ask(&mut lease, want))?;
    Ok(granted)
}

/// Why asking failed: the policy said no (the lease is over for good), or something that
/// may pass (the agent restarting, our own read-write lease not yet expired at the TTP).
enum AskFailure {
    Denied(String),
    Other(anyhow::Error),
}

async fn ask(lease: &mut Lease, want: Want) -> Result<Granted> {
    ask_once(lease, want)
        .await
        .map_err(|failure| match failure {
            AskFailure::Denied(text) => KeyRefused(text).into(),
            AskFailure::Other(e) => e,
        })
}

async fn ask_once(lease: &mut Lease, want: Want) -> Result<Granted, AskFailure> {
    let mut agent = connect_agent(&lease.socket)
        .await
        .with_context(|| {
            format!(
                "cannot reach the domfs agent at {} (is `domfs-agent serve` running? --agent SOCKET names another socket)",
                lease.socket.display()
            )
        })
        .map_err(AskFailure::Other)?;
    let reply = agent
        .get_domain_key(GetDomainKeyRequest {
            signed_message: lease.signed_message.clone(),
            signature: lease.signature.clone(),
            mode: want.mode() as i32,
            mount_point: lease.mountpoint.clone(),
        })
        .await;
    let mut reply = match reply {
        Ok(reply) => reply.into_inner(),
        Err(status) => {
            let text = format!(
                "the agent did not release the key: {}",
                describe_status(&status)
            );
            return Err(match status.code() {
                tonic::Code::PermissionDenied => AskFailure::Denied(text),
                // Not the policy's no: the agent is starting, the TTP unreachable, our
                // own read-write lease still live at the TTP, … The first mount reports
                // it as a refusal all the same (exit 3).
                _ => AskFailure::Other(KeyRefused(text).into()),
            });
        }
    };
    granted(lease, want, &mut reply).map_err(AskFailure::Other)
}

fn granted(
    lease: &mut Lease,
    want: Want,
    reply: &mut domfs_proto::agent::GetDomainKeyResponse,
) -> Result<Granted> {
    let key = DomainKey::from_bytes(&reply.domain_key);
    reply.domain_key.zeroize();
    let read_only = match Mode::try_from(reply.granted_mode) {
        Ok(Mode::ReadWrite) => false,
        Ok(Mode::ReadOnly) => true,
        _ => bail!("the agent granted an unknown mode {}", reply.granted_mode),
    };
    if want == Want::ReadWrite && read_only {
        bail!("the agent granted read-only access where read-write was asked for");
    }
    let writer = if read_only {
        WriterKeys::verifier(&reply.writer_public_key)
    } else {
        WriterKeys::signer(&reply.writer_secret, &reply.writer_public_key)
    };
    reply.writer_secret.zeroize();
    lease.id = std::mem::take(&mut reply.lease_id);
    lease.seconds = reply.lease_seconds;
    lease.again = if read_only {
        Want::ReadOnly
    } else {
        Want::ReadWrite
    };
    Ok(Granted {
        key: key.context("the agent sent a malformed domain key")?,
        writer: Arc::new(writer.context("the agent sent a malformed writer key")?),
        read_only,
        lease: lease.clone(),
        anchor: reply.checkpoint.take(),
    })
}

/// Starts the thread that ends the mount when the lease does.
pub fn spawn_watch(lease: Lease, fs: Arc<Filesystem>, mountpoint: PathBuf) -> Result<()> {
    std::thread::Builder::new()
        .name("domfs-lease".into())
        .spawn(move || {
            let reason = match runtime() {
                Ok(rt) => rt.block_on(async {
                    tokio::select! {
                        reason = watch(lease.clone(), &fs) => reason,
                        () = super::mount_anchor::keep_anchored(lease, fs.clone()) => {
                            "the anchor task ended".to_string()
                        }
                    }
                }),
                Err(e) => format!("cannot watch the lease: {e:#}"),
            };
            tracing::error!("{reason}: revoking the mount of {}", mountpoint.display());
            fs.revoke();
            match mountinfo::unmount(&mountpoint, true) {
                Ok(()) | Err(UnmountError::NotMounted) => {}
                Err(e) => tracing::error!("unmounting {}: {e}", mountpoint.display()),
            }
        })
        .context("cannot start the lease thread")?;
    Ok(())
}

/// Follows the lease until it ends; returns why.
async fn watch(mut lease: Lease, fs: &Filesystem) -> String {
    let mut until = Instant::now() + Duration::from_secs(u64::from(lease.seconds));
    loop {
        if fs.is_revoked() {
            return "the filesystem was revoked".into();
        }
        match follow(&lease, &mut until).await {
            Ok(reason) => return reason,
            Err(problem) => {
                tracing::warn!("lease watch: {problem}");
            }
        }
        // The agent is gone or lost the lease: ask again until the lease we knew of ends.
        loop {
            if Instant::now() >= until {
                return "the lease ran out and the agent did not renew it".into();
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let again = lease.again;
            match ask_once(&mut lease, again).await {
                Ok(granted) => {
                    // Same domain, same key: nothing else to do than to follow the new lease.
                    drop(granted.key);
                    until = Instant::now() + Duration::from_secs(u64::from(lease.seconds));
                    tracing::info!("the agent granted a new lease");
                    break;
                }
                Err(AskFailure::Denied(why)) => return why,
                Err(AskFailure::Other(e)) => tracing::warn!("{e:#}"),
            }
        }
    }
}

/// One watch stream. `Ok(reason)`: the lease ended for good. `Err`: the stream broke.
async fn follow(lease: &Lease, until: &mut Instant) -> Result<String, String> {
    let mut agent = connect_agent(&lease.socket)
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = agent
        .watch(WatchRequest {
            lease_id: lease.id.clone(),
        })
        .await
        .map_err(|s| describe_status(&s))?
        .into_inner();
    loop {
        let event = match stream.message().await {
            Ok(Some(event)) => event,
            Ok(None) => return Err("the agent ended the watch".into()),
            Err(status) => return Err(describe_status(&status)),
        };
        match Kind::try_from(event.kind) {
            Ok(Kind::Renewed) => {
                *until = deadline(event.lease_until_unix);
                tracing::debug!("lease renewed");
            }
            Ok(Kind::TtpUnreachable) => {
                *until = deadline(event.grace_until_unix);
                tracing::warn!(
                    "the TTP is unreachable: {}; the mount goes on during the grace period",
                    event.message
                );
            }
            Ok(Kind::LeaseRevoked) => {
                return Ok(format!("the TTP revoked the lease: {}", event.message));
            }
            Ok(Kind::GraceExpired) => {
                return Ok(format!(
                    "the grace period without the TTP ran out: {}",
                    event.message
                ));
            }
            _ => tracing::warn!("unknown lease event {}", event.kind),
        }
    }
}

fn deadline(unix: u64) -> Instant {
    let now = crate::store::unix_now();
    Instant::now() + Duration::from_secs(unix.saturating_sub(now))
}

/// Gives the lease back at unmount, so another host may mount read-write at once.
pub fn release(lease: &Lease) {
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let mut agent = connect_agent(&lease.socket).await?;
            agent
                .release_key(ReleaseKeyRequest {
                    lease_id: lease.id.clone(),
                })
                .await
                .map_err(|s| anyhow::anyhow!(describe_status(&s)))?;
            Ok(())
        })
    });
    if let Err(e) = result {
        tracing::warn!("could not give the lease back to the agent (it ends by itself): {e:#}");
    }
}
