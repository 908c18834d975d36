//! Agent mode: the volume's anchor at the TTP. A read-write mount sends the TTP the pair
//! (sequence, root) of its newest durable superblock, with the audit head, periodically
//! and at unmount; every mount compares the anchor the TTP handed out with the volume
//! before serving it, so a volume rolled back to an older copy (or a log cut short, which
//! needs the same) is refused. The volume being *ahead* of the anchor is normal: a power
//! cut between a commit and its checkpoint.
//!
//! A read-only mount cannot write its audit entries into the volume: it ships them
//! through the agent to the TTP, which keeps them per domain.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use domfs_proto::agent::{AgentAppendAuditRequest, AgentCheckpointRequest};
use domfs_proto::client::{connect_agent, describe_status};
use domfs_proto::ttp::Checkpoint;
use domfs_proto::{MAX_AUDIT_BATCH, MAX_AUDIT_ENTRIES};

use super::mount_agent::Lease;
use crate::filesystem::Filesystem;
use crate::format::superblock::Superblock;

/// How often a read-write mount anchors a new commit, and a read-only one ships entries.
const PERIOD: Duration = Duration::from_secs(15);

/// Refuses to serve a volume older than its anchor (or a fork of it).
pub fn check_against_anchor(sb: &Superblock, anchor: Option<&Checkpoint>) -> Result<()> {
    let Some(anchor) = anchor else {
        return Ok(());
    };
    if sb.sequence < anchor.sequence {
        bail!(
            "the volume is at commit {} but the TTP anchored commit {} (from {} at {}): this is an older copy of the volume (rolled back, or restored from an old backup); \
             mounting it would lose everything since. Use the newest copy, or --accept-rollback for disaster recovery (it is audited)",
            sb.sequence,
            anchor.sequence,
            anchor.host,
            crate::audit::query::rfc3339(i64::try_from(anchor.time_unix).unwrap_or(0) * 1_000_000)
        );
    }
    // At an equal sequence the root decides: the audit head lives inside the tree it
    // authenticates.
    if sb.sequence == anchor.sequence && sb.root.encode()[..] != anchor.root[..] {
        bail!(
            "the volume's commit {} has another root than the one the TTP anchored: a forked or tampered copy; --accept-rollback overrides (audited)",
            sb.sequence
        );
    }
    Ok(())
}

/// The anchor for the volume as it is now.
fn anchor_of(fs: &Filesystem) -> Checkpoint {
    // The last commit's superblock and the audit head inside it, as one pair.
    let durable = fs.durable_state();
    let (sb, head) = (durable.superblock, durable.audit_head);
    Checkpoint {
        sequence: sb.sequence,
        generation: sb.generation_hwm.0,
        root: sb.root.encode().to_vec(),
        audit_sequence: head.seq,
        audit_head: if head.seq == 0 {
            Vec::new()
        } else {
            head.mac.to_vec()
        },
        time_unix: 0,
        host: String::new(),
    }
}

/// Sends the anchor of the volume's newest durable commit if it moved since `last`;
/// returns the sequence anchored.
pub async fn checkpoint(lease: &Lease, fs: &Filesystem, last: u64) -> Result<u64> {
    let anchor = anchor_of(fs);
    if anchor.sequence == last {
        return Ok(last);
    }
    let sequence = anchor.sequence;
    let mut agent = connect_agent(lease.socket()).await?;
    agent
        .checkpoint(AgentCheckpointRequest {
            lease_id: lease.id().to_vec(),
            checkpoint: Some(anchor),
        })
        .await
        .map_err(|s| {
            anyhow::anyhow!(
                "the TTP did not take the checkpoint: {}",
                describe_status(&s)
            )
        })?;
    Ok(sequence)
}

/// Ships a read-only mount's queued audit entries (and any an earlier round could not
/// send, from the lease's outbox, first); what the TTP does not take goes back to the
/// outbox, oldest first, for the next round. Lost only if the filesystem's queue
/// overflows (counted in the next entry the TTP stores).
async fn ship_audit(lease: &Lease, fs: &Filesystem) -> Result<()> {
    let drained = fs.drain_pending();
    if drained.dropped > 0 {
        tracing::warn!(
            "{} audit entries were dropped: the queue for the TTP overflowed",
            drained.dropped
        );
    }
    let mut waiting = lease.take_outbox();
    waiting.extend(drained.entries.iter().map(|r| r.encode()));
    let mut waiting = std::collections::VecDeque::from(waiting);
    while !waiting.is_empty() {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(entry) = waiting.front() {
            if batch.len() == MAX_AUDIT_ENTRIES || bytes + entry.len() > MAX_AUDIT_BATCH {
                break;
            }
            bytes += entry.len();
            batch.extend(waiting.pop_front());
        }
        if batch.is_empty() {
            // Larger than a call may carry (records are bounded well below it): never
            // sendable, and it must not stop the ones behind it.
            if let Some(entry) = waiting.pop_front() {
                tracing::error!(
                    "an audit entry of {} bytes cannot be sent; dropped",
                    entry.len()
                );
            }
            continue;
        }
        let sent = match tokio::time::timeout(CALL_TIMEOUT, send_batch(lease, batch.clone())).await
        {
            Ok(sent) => sent,
            Err(_) => Err(anyhow::anyhow!(
                "the agent did not answer within {} s",
                CALL_TIMEOUT.as_secs()
            )),
        };
        if let Err(e) = sent {
            batch.extend(waiting);
            lease.return_to_outbox(batch);
            return Err(
                e.context("the TTP did not take the audit entries; they wait for the next round")
            );
        }
    }
    Ok(())
}

/// How long one call to the agent may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

async fn send_batch(lease: &Lease, entries: Vec<Vec<u8>>) -> Result<()> {
    let mut agent = connect_agent(lease.socket()).await?;
    agent
        .append_audit(AgentAppendAuditRequest {
            lease_id: lease.id().to_vec(),
            entries,
        })
        .await
        .map_err(|status| anyhow::anyhow!("{}", describe_status(&status)))?;
    Ok(())
}

/// The background half: anchors (read-write) or ships audit entries (read-only) every
/// [`PERIOD`] until the task is dropped.
pub async fn keep_anchored(lease: Lease, fs: Arc<Filesystem>) {
    let mut last = 0;
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tick.tick().await;
        if fs.is_revoked() {
            return;
        }
        let done = if fs.is_read_only() {
            ship_audit(&lease, &fs).await
        } else {
            checkpoint(&lease, &fs, last).await.map(|s| last = s)
        };
        if let Err(e) = done {
            tracing::warn!("{e:#}");
        }
    }
}

/// Ships a read-only volume's queued audit entries now, waiting for the TTP to take
/// them (an offline read of an agent-mode volume: its entries must be kept before
/// anything is shown).
pub fn ship_now(lease: &Lease, fs: &Filesystem) -> Result<()> {
    super::ttp::runtime()?.block_on(ship_audit(lease, fs))
}

/// At unmount, after the final commit: the last anchor (read-write) or the last entries
/// (read-only).
pub fn finish(lease: &Lease, fs: &Filesystem) {
    let result = super::ttp::runtime().and_then(|rt| {
        rt.block_on(async {
            if fs.is_read_only() {
                ship_audit(lease, fs).await
            } else {
                checkpoint(lease, fs, 0).await.map(|_| ())
            }
        })
    });
    if let Err(e) = result {
        tracing::warn!("at unmount: {e:#}");
    }
}
