//! The retention sweep: versions older than the volume's keep-for are freed at every
//! read-write open and hourly after that — checked after operations and, on a mount, by
//! the daemon's audit committer, so an idle volume is swept too.

use std::sync::atomic::{AtomicBool, Ordering};

use super::api::purge_one;
use super::record::STATE_KEPT;
use super::{HiddenVersion, PurgeReason};
use crate::Result;
use crate::audit::AuditOp;
use crate::filesystem::{Caller, Filesystem};

/// Versions freed per operation by the retention sweep.
const SWEEP_BATCH: usize = 256;
/// The retention sweep runs at most this often (seconds) during operations.
const SWEEP_EVERY: i64 = 3600;

impl Filesystem {
    /// Frees the versions older than the volume's keep-for (nothing under keep-all), and
    /// returns them. Runs at every read-write open and then hourly (see the module doc).
    pub fn sweep_hidden(&self) -> Result<Vec<HiddenVersion>> {
        self.sweep_until(None)
    }

    /// [`Filesystem::sweep_hidden`] that stops between batches once `stop` is set (the
    /// mount is ending: nothing more after its final commit).
    fn sweep_until(&self, stop: Option<&AtomicBool>) -> Result<Vec<HiddenVersion>> {
        let Some(keep_for) = self.hidden_cfg.retention.keep_for else {
            return Ok(Vec::new());
        };
        if self.read_only {
            return Ok(Vec::new());
        }
        let now = self.hidden_cfg.now();
        self.hidden_cfg
            .last_sweep
            .store(now.secs, Ordering::Relaxed);
        let cutoff = now
            .secs
            .saturating_sub(i64::try_from(keep_for).unwrap_or(i64::MAX));
        let mut freed = Vec::new();
        loop {
            let batch = self.mutate(0, |st, io| {
                let old: Vec<(u64, u32)> = st
                    .hidden
                    .records
                    .values()
                    .filter(|(_, r)| r.state == STATE_KEPT && r.time.secs < cutoff)
                    .take(SWEEP_BATCH)
                    .map(|(_, r)| (r.id, st.hidden.number_of(r)))
                    .collect();
                let mut out = Vec::with_capacity(old.len());
                for (id, number) in old {
                    out.push(purge_one(st, io, id)?.version(number));
                }
                Ok(out)
            })?;
            let done = batch.len() < SWEEP_BATCH;
            let sink = self.hidden_cfg.sink();
            let me = nix::unistd::getuid().as_raw();
            let group = nix::unistd::getgid().as_raw();
            for v in &batch {
                sink.purged(v, PurgeReason::Retention);
                let detail = format!(
                    "retention keep-for={}: version {} (id {}) hidden {} s ago",
                    crate::format::retention::format_duration(keep_for),
                    v.version,
                    v.id,
                    now.secs.saturating_sub(v.time.secs)
                );
                self.audit_done(self.hidden_audit_record(
                    AuditOp::Purge,
                    Caller {
                        uid: me,
                        gid: group,
                        pid: std::process::id(),
                    },
                    v,
                    detail,
                    0,
                ));
            }
            freed.extend(batch);
            if done || stop.is_some_and(|stop| stop.load(Ordering::SeqCst)) {
                break;
            }
        }
        if !freed.is_empty() {
            tracing::info!(
                "retention: freed {} hidden version(s) older than {}",
                freed.len(),
                crate::format::retention::format_duration(keep_for)
            );
        }
        Ok(freed)
    }

    /// Runs the retention sweep when the last one is an hour old; `stop`: as for
    /// [`Filesystem::sweep_until`].
    pub(crate) fn maybe_sweep(&self, stop: Option<&AtomicBool>) {
        if self.hidden_cfg.retention.keep_for.is_none() || self.read_only {
            return;
        }
        let now = self.hidden_cfg.now().secs;
        let last = self.hidden_cfg.last_sweep.load(Ordering::Relaxed);
        if now.saturating_sub(last) < SWEEP_EVERY {
            return;
        }
        if let Err(e) = self.sweep_until(stop) {
            tracing::warn!("retention sweep: {e}");
        }
    }
}
