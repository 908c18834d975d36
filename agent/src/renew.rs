//! The renewal task: asks the lease table what falls due, talks to the TTP, and feeds
//! the answers back (see [`crate::leases`] for the rules). Runs until aborted.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Code, Status};

use domfs_proto::client::describe_status;

use crate::agent::{Agent, now_ms};
use crate::leases::{Task, TtpLease};
use crate::ttp::{Failure, TtpApi, is_answer};
use crate::unwrapper::KeyUnwrapper;

/// The longest the task sleeps without looking at the table.
const MAX_SLEEP: Duration = Duration::from_secs(60);

pub async fn run<U: KeyUnwrapper, T: TtpApi>(agent: Arc<Agent<U, T>>) {
    loop {
        let now = now_ms();
        let (tasks, next) = agent.table().due(now, &agent.alive);
        for task in tasks {
            match task {
                Task::Renew { local_id, lease } => {
                    tokio::spawn(renew_one(agent.clone(), local_id, lease));
                }
                Task::ReleaseIdle(lease) => {
                    tracing::info!(
                        domain = %hex::encode(lease.domain),
                        mode = lease.mode.as_str(),
                        "lease unused (no mount holds or watches it): released, keys zeroized"
                    );
                    let agent = agent.clone();
                    tokio::spawn(async move {
                        let domain = lease.domain.to_vec();
                        if let Err(status) = agent.ttp.release_lease(lease.lease_id, domain).await {
                            tracing::debug!(error = %describe_status(&status), "release of an unused lease failed");
                        }
                    });
                }
                Task::GraceExpired(lease) => {
                    tracing::warn!(
                        domain = %hex::encode(lease.domain),
                        mode = lease.mode.as_str(),
                        "grace period over and the TTP still unreachable: lease dropped, keys zeroized"
                    );
                }
            }
        }
        let sleep = next
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms())))
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = agent.renew_wake.notified() => {}
        }
    }
}

async fn renew_one<U: KeyUnwrapper, T: TtpApi>(
    agent: Arc<Agent<U, T>>,
    local_id: Vec<u8>,
    lease: TtpLease,
) {
    let domain = hex::encode(lease.domain);
    let result = agent
        .ttp
        .renew_lease(lease.lease_id.clone(), lease.domain.to_vec())
        .await;
    let result = match result {
        // The TTP no longer knows the lease: it ran out during an outage, or the TTP
        // restarted (it keeps read-only leases in memory). It says "ask again", and a
        // fresh grant re-checks everything.
        Err(status) if status.code() == Code::NotFound => {
            tracing::info!(
                domain = %domain,
                mode = lease.mode.as_str(),
                reason = %describe_status(&status),
                "the TTP does not know the lease any more; asking for the key again"
            );
            // Any answer other than a grant of the same keys ends the lease; no answer
            // continues the outage.
            agent
                .reacquire(&local_id, &lease)
                .await
                .map(|()| None)
                .map_err(|s| {
                    if is_answer(&s) {
                        Status::permission_denied(format!(
                            "granting it again failed: {}",
                            describe_status(&s)
                        ))
                    } else {
                        s
                    }
                })
        }
        other => other.map(Some),
    };
    match result {
        Ok(Some(seconds)) => {
            tracing::debug!(domain = %domain, mode = lease.mode.as_str(), seconds, "lease renewed");
            agent.table().renewed(&local_id, seconds, now_ms());
        }
        Ok(None) => {
            tracing::info!(domain = %domain, mode = lease.mode.as_str(), "lease granted again");
        }
        Err(status) => failed(&agent, &local_id, &lease, &status),
    }
    agent.renew_wake.notify_one();
}

fn failed<U: KeyUnwrapper, T: TtpApi>(
    agent: &Agent<U, T>,
    local_id: &[u8],
    lease: &TtpLease,
    status: &Status,
) {
    let domain = hex::encode(lease.domain);
    let why = describe_status(status);
    match Failure::of(status) {
        Failure::Refused => {
            if agent.table().revoked(local_id, &why).is_some() {
                tracing::warn!(
                    domain = %domain,
                    mode = lease.mode.as_str(),
                    reason = %why,
                    "lease revoked: the TTP refused renewal; keys zeroized, mounts told to stop"
                );
            }
        }
        Failure::Unreachable => {
            if let Some(grace_until) = agent.table().unreachable(local_id, now_ms(), &why) {
                tracing::warn!(
                    domain = %domain,
                    mode = lease.mode.as_str(),
                    reason = %why,
                    grace_until_unix = grace_until / 1000,
                    "the TTP cannot be reached to renew the lease; serving the cached key until the grace period ends"
                );
            } else {
                tracing::debug!(domain = %domain, reason = %why, "renewal retry failed");
            }
        }
    }
}

#[cfg(test)]
#[path = "renew_tests.rs"]
mod tests;
