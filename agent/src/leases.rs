//! The lease table: which domain keys the agent holds, for whom, until when. A plain state
//! machine (no I/O, time passed in), driven by the key service and the renewal task.
//!
//! ## Lease semantics
//!
//! - One entry per TTP lease, found by (domain id, granted mode). The TTP is asked once per
//!   lease; every later request for the same domain and mode is answered from the entry
//!   while it lives (repeated mounts, a mount daemon restarting after a crash).
//! - An entry records its *uses*: one per successful GetDomainKey, naming the calling
//!   process (pid and start time). ReleaseKey removes the caller's own use, or else one
//!   whose process has gone (a mount command that fetched the key and forked a daemon
//!   that releases it). When the last use is removed the lease is given back to the TTP
//!   and the keys are zeroized, for read-only and read-write alike.
//! - Read-only leases are shared: any number of local mounts use one. A read-write lease
//!   is exclusive: while another live process holds a use of it, or another process
//!   watches it, a second read-write request for the domain fails (FAILED_PRECONDITION).
//!   A read-write lease whose holders have all gone (a crashed daemon) is handed to the
//!   next request. The mount daemon additionally locks the container file.
//! - A mount keeps a Watch stream open for as long as it runs; that is how the agent
//!   knows it is alive after the process that asked for the key has exited.
//! - An entry nobody uses any more (no live process holds a use, nobody watches) when its
//!   renewal falls due is released at the TTP and dropped: a crashed daemon has half a
//!   lease to come back and find its key cached.
//! - Renewal at half the lease. PERMISSION_DENIED ends the lease at once (LEASE_REVOKED).
//!   NOT_FOUND (the TTP forgot the lease: it ran out during an outage, or the TTP
//!   restarted) makes the agent ask for the key again with the same header; the TTP
//!   checks everything anew, the TPM unwraps anew, and if the keys are the same the local
//!   lease goes on under its old id (RENEWED), otherwise it is revoked. Any other failure
//!   counts as the TTP being unreachable and starts the grace period: the key is served
//!   until max(lease end, first failure + grace), then dropped (GRACE_EXPIRED); a renewal
//!   that succeeds in between ends the outage (RENEWED).
//! - Each entry keeps the domain's checkpoint (the volume anchor at the TTP) it was
//!   granted with, and every cached answer carries it. A checkpoint the TTP accepted
//!   through this agent, or one a fresh grant for the domain brings, replaces it in every
//!   entry of the domain when its sequence is not lower. So a cached checkpoint is the
//!   TTP's, or older (another host anchored since), never newer: a mount may miss a
//!   rollback younger than its anchor, but never sees a false one.
//! - Leases live in memory only: an agent restart forgets them (the TTP's read-write
//!   lease then runs out on its own), and an agent shutdown does not release them, since
//!   running mounts may still be using their keys.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::Status;
use zeroize::Zeroizing;

use domfs_proto::acl::DomainId;
use domfs_proto::agent::{LeaseInfo, Mode, WatchEvent, watch_event::Kind};
use domfs_proto::ttp::Checkpoint;

use crate::keys::DomainKeys;
use crate::peer::ProcessRef;

/// Events a watcher may have queued before it is considered stuck (later ones are dropped
/// for it; the final LEASE_REVOKED/GRACE_EXPIRED still arrives because the stream then ends).
const WATCH_QUEUE: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granted {
    ReadOnly,
    ReadWrite,
}

impl Granted {
    pub fn as_str(self) -> &'static str {
        match self {
            Granted::ReadOnly => "ro",
            Granted::ReadWrite => "rw",
        }
    }

    pub fn agent_mode(self) -> Mode {
        match self {
            Granted::ReadOnly => Mode::ReadOnly,
            Granted::ReadWrite => Mode::ReadWrite,
        }
    }

    pub fn ttp_mode(self) -> domfs_proto::ttp::Mode {
        match self {
            Granted::ReadOnly => domfs_proto::ttp::Mode::ReadOnly,
            Granted::ReadWrite => domfs_proto::ttp::Mode::ReadWrite,
        }
    }
}

/// What the TTP granted, unwrapped, ready to be cached.
pub struct NewLease {
    pub ttp_lease_id: Vec<u8>,
    pub domain: DomainId,
    pub mode: Granted,
    pub keys: DomainKeys,
    pub writer_public_key: Vec<u8>,
    pub access_list_version: u64,
    pub lease_seconds: u32,
    /// A read-only lease taken because the TTP refused read-write (MODE_BEST): later BEST
    /// requests use it without asking for read-write again.
    pub rw_refused: bool,
    /// The header's signed message and signature, to ask again for a lease the TTP
    /// forgot.
    pub signed_message: Vec<u8>,
    pub signature: Vec<u8>,
    /// The domain's checkpoint at the TTP, as the grant brought it.
    pub checkpoint: Option<Checkpoint>,
}

/// What one caller gets: copies of the keys and the lease's particulars.
pub struct Grant {
    pub lease_id: Vec<u8>,
    pub domain_key: Zeroizing<Vec<u8>>,
    pub writer_secret: Option<Zeroizing<Vec<u8>>>,
    pub writer_public_key: Vec<u8>,
    pub mode: Granted,
    /// Seconds until the lease's current end (at least 1).
    pub lease_seconds: u32,
    pub access_list_version: u64,
    pub checkpoint: Option<Checkpoint>,
}

pub enum Lookup {
    Hit(Box<Grant>),
    Miss,
    /// A read-write lease another live process holds.
    HeldElsewhere {
        pid: u32,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum Release {
    /// Other uses remain.
    Kept { uses: usize },
    /// The last use: the entry is gone (keys zeroized); give the lease back to the TTP.
    Last(TtpLease),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReleaseError {
    #[error("no such lease (it was released, revoked or expired)")]
    NotFound,
    #[error("this process holds no use of the lease")]
    NotHolder,
}

/// A lease as the TTP knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TtpLease {
    pub lease_id: Vec<u8>,
    pub domain: DomainId,
    pub mode: Granted,
}

/// Work the renewal task has to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Task {
    /// Ask the TTP to extend this lease (local id, and the TTP's view).
    Renew { local_id: Vec<u8>, lease: TtpLease },
    /// Nobody uses it: it was dropped; release it at the TTP.
    ReleaseIdle(TtpLease),
    /// The grace period ran out: it was dropped; nothing to tell the TTP.
    GraceExpired(TtpLease),
}

struct Watcher {
    process: Option<ProcessRef>,
    tx: mpsc::Sender<Result<WatchEvent, Status>>,
}

struct Entry {
    ttp_lease_id: Vec<u8>,
    domain: DomainId,
    mode: Granted,
    keys: DomainKeys,
    writer_public_key: Vec<u8>,
    access_list_version: u64,
    lease_seconds: u32,
    rw_refused: bool,
    signed_message: Vec<u8>,
    signature: Vec<u8>,
    checkpoint: Option<Checkpoint>,
    until_ms: u64,
    renew_at_ms: u64,
    renewing: bool,
    unreachable_since_ms: Option<u64>,
    uses: Vec<Option<ProcessRef>>,
    watchers: Vec<Watcher>,
}

impl Entry {
    fn ttp_lease(&self) -> TtpLease {
        TtpLease {
            lease_id: self.ttp_lease_id.clone(),
            domain: self.domain,
            mode: self.mode,
        }
    }

    fn grant(&self, local_id: &[u8], now_ms: u64) -> Grant {
        let left = self.until_ms.saturating_sub(now_ms) / 1000;
        Grant {
            lease_id: local_id.to_vec(),
            domain_key: self.keys.domain_key.expose_copy(),
            writer_secret: self.keys.writer_secret.as_ref().map(|k| k.expose_copy()),
            writer_public_key: self.writer_public_key.clone(),
            mode: self.mode,
            lease_seconds: u32::try_from(left).unwrap_or(u32::MAX).max(1),
            access_list_version: self.access_list_version,
            checkpoint: self.checkpoint.clone(),
        }
    }

    /// Another live process holds or watches it (read-write exclusivity).
    fn holder_other_than(
        &self,
        caller: Option<ProcessRef>,
        alive: &dyn Fn(&ProcessRef) -> bool,
    ) -> Option<u32> {
        let other = |p: &Option<ProcessRef>| match p {
            Some(p) => caller != Some(*p) && alive(p),
            None => true,
        };
        self.uses
            .iter()
            .find(|p| other(p))
            .or_else(|| {
                self.watchers
                    .iter()
                    .filter(|w| !w.tx.is_closed())
                    .map(|w| &w.process)
                    .find(|p| other(p))
            })
            .map(|p| p.map(|p| p.pid).unwrap_or(0))
    }

    fn idle(&mut self, alive: &dyn Fn(&ProcessRef) -> bool) -> bool {
        self.watchers.retain(|w| !w.tx.is_closed());
        self.watchers.is_empty() && !self.uses.iter().any(|p| p.as_ref().is_none_or(alive))
    }

    fn grace_until_ms(&self, grace_ms: u64) -> Option<u64> {
        self.unreachable_since_ms
            .map(|since| self.until_ms.max(since.saturating_add(grace_ms)))
    }

    fn event(&self, kind: Kind, message: String, grace_ms: u64) -> WatchEvent {
        WatchEvent {
            kind: kind as i32,
            message,
            lease_until_unix: self.until_ms / 1000,
            grace_until_unix: self.grace_until_ms(grace_ms).unwrap_or(0) / 1000,
        }
    }

    fn send(&mut self, event: WatchEvent) {
        self.watchers.retain(|w| !w.tx.is_closed());
        for watcher in &self.watchers {
            // A full queue means a stuck watcher: it misses this event, not the stream's end.
            let _ = watcher.tx.try_send(Ok(event.clone()));
        }
    }

    fn extend(&mut self, seconds: u32, now_ms: u64) {
        let ms = u64::from(seconds.max(1)) * 1000;
        self.lease_seconds = seconds.max(1);
        self.until_ms = now_ms + ms;
        self.renew_at_ms = now_ms + ms / 2;
    }
}

/// How long to wait before trying an unreachable TTP again: a quarter lease, 1–30 s.
fn retry_ms(lease_seconds: u32) -> u64 {
    (u64::from(lease_seconds) * 250).clamp(1000, 30_000)
}

pub struct LeaseTable {
    entries: HashMap<Vec<u8>, Entry>,
    by_domain: HashMap<(DomainId, Granted), Vec<u8>>,
    grace_ms: u64,
}

impl LeaseTable {
    pub fn new(grace: Duration) -> LeaseTable {
        LeaseTable {
            entries: HashMap::new(),
            by_domain: HashMap::new(),
            grace_ms: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cached lease for (domain, mode), adding a use by `caller` on a hit. With
    /// `only_after_rw_refused`, a read-only entry counts only if it was taken because
    /// read-write was refused.
    pub fn lookup(
        &mut self,
        domain: DomainId,
        mode: Granted,
        only_after_rw_refused: bool,
        caller: Option<ProcessRef>,
        now_ms: u64,
        alive: &dyn Fn(&ProcessRef) -> bool,
    ) -> Lookup {
        let Some(id) = self.by_domain.get(&(domain, mode)).cloned() else {
            return Lookup::Miss;
        };
        let Some(entry) = self.entries.get_mut(&id) else {
            self.by_domain.remove(&(domain, mode));
            return Lookup::Miss;
        };
        if only_after_rw_refused && !entry.rw_refused {
            return Lookup::Miss;
        }
        if mode == Granted::ReadWrite
            && let Some(pid) = entry.holder_other_than(caller, alive)
        {
            return Lookup::HeldElsewhere { pid };
        }
        entry.uses.push(caller);
        Lookup::Hit(Box::new(entry.grant(&id, now_ms)))
    }

    /// Caches a fresh lease with one use by `caller`. The local lease id is the TTP's.
    pub fn insert(&mut self, lease: NewLease, caller: Option<ProcessRef>, now_ms: u64) -> Grant {
        let id = lease.ttp_lease_id.clone();
        let mut entry = Entry {
            ttp_lease_id: lease.ttp_lease_id,
            domain: lease.domain,
            mode: lease.mode,
            keys: lease.keys,
            writer_public_key: lease.writer_public_key,
            access_list_version: lease.access_list_version,
            lease_seconds: 0,
            rw_refused: lease.rw_refused,
            signed_message: lease.signed_message,
            signature: lease.signature,
            checkpoint: lease.checkpoint,
            until_ms: 0,
            renew_at_ms: 0,
            renewing: false,
            unreachable_since_ms: None,
            uses: vec![caller],
            watchers: Vec::new(),
        };
        entry.extend(lease.lease_seconds, now_ms);
        // A fresh grant's checkpoint is the TTP's newest: the domain's other entries take it.
        if let Some(checkpoint) = &entry.checkpoint {
            self.note_checkpoint(entry.domain, checkpoint.clone());
        }
        let grant = entry.grant(&id, now_ms);
        // A per-domain lock in the caller keeps two fresh leases for one key from racing;
        // if one still replaced another here, the older stays tracked under its own id.
        self.by_domain
            .insert((entry.domain, entry.mode), id.clone());
        self.entries.insert(id, entry);
        grant
    }

    fn remove(&mut self, id: &[u8]) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        let key = (entry.domain, entry.mode);
        if self.by_domain.get(&key).is_some_and(|i| i == id) {
            self.by_domain.remove(&key);
        }
        Some(entry)
    }

    /// Marks the read-only lease of `domain` as one that BEST requests may use.
    pub fn note_rw_refused(&mut self, domain: DomainId) {
        if let Some(id) = self.by_domain.get(&(domain, Granted::ReadOnly))
            && let Some(entry) = self.entries.get_mut(id)
        {
            entry.rw_refused = true;
        }
    }

    pub fn domain_of(&self, id: &[u8]) -> Option<DomainId> {
        self.entries.get(id).map(|e| e.domain)
    }

    /// The TTP's lease behind a local lease id (it changes when the TTP forgot the lease
    /// and granted it again).
    pub fn ttp_lease_of(&self, id: &[u8]) -> Option<TtpLease> {
        self.entries.get(id).map(Entry::ttp_lease)
    }

    /// A checkpoint of `domain` the TTP holds (it accepted it, or granted with it): every
    /// entry of the domain keeps it unless it already has a later one.
    pub fn note_checkpoint(&mut self, domain: DomainId, checkpoint: Checkpoint) {
        for entry in self.entries.values_mut().filter(|e| e.domain == domain) {
            let newer = entry
                .checkpoint
                .as_ref()
                .is_none_or(|c| c.sequence <= checkpoint.sequence);
            if newer {
                entry.checkpoint = Some(checkpoint.clone());
            }
        }
    }

    /// Has the renewal task look at the lease now (the TTP said it does not know it: a
    /// renewal finds out and asks for it again).
    pub fn renew_soon(&mut self, id: &[u8], now_ms: u64) {
        if let Some(entry) = self.entries.get_mut(id)
            && !entry.renewing
        {
            entry.renew_at_ms = entry.renew_at_ms.min(now_ms);
        }
    }

    /// The signed message and signature a lease was granted for.
    pub fn request_of(&self, id: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        self.entries
            .get(id)
            .map(|e| (e.signed_message.clone(), e.signature.clone()))
    }

    /// A fresh TTP lease replaces one the TTP forgot (run out during an outage, or the
    /// TTP restarted), if it unlocks the same keys. Returns false (changing nothing) if the lease is gone or the keys differ.
    pub fn reacquired(
        &mut self,
        id: &[u8],
        ttp_lease_id: Vec<u8>,
        keys: &DomainKeys,
        seconds: u32,
        now_ms: u64,
    ) -> bool {
        let grace_ms = self.grace_ms;
        let Some(entry) = self.entries.get_mut(id) else {
            return false;
        };
        if !entry.keys.same_as(keys) {
            return false;
        }
        entry.ttp_lease_id = ttp_lease_id;
        entry.renewing = false;
        entry.unreachable_since_ms = None;
        entry.extend(seconds, now_ms);
        let event = entry.event(
            Kind::Renewed,
            "the TTP had forgotten the lease and granted the key again".into(),
            grace_ms,
        );
        entry.send(event);
        true
    }

    /// Gives back one use (see the module notes for whose).
    pub fn release(
        &mut self,
        id: &[u8],
        caller: Option<ProcessRef>,
        alive: &dyn Fn(&ProcessRef) -> bool,
    ) -> Result<Release, ReleaseError> {
        let entry = self.entries.get_mut(id).ok_or(ReleaseError::NotFound)?;
        let position = entry
            .uses
            .iter()
            .position(|p| p.is_some() && *p == caller)
            .or_else(|| {
                entry
                    .uses
                    .iter()
                    .position(|p| p.as_ref().is_some_and(|p| !alive(p)))
            })
            .ok_or(ReleaseError::NotHolder)?;
        entry.uses.swap_remove(position);
        if !entry.uses.is_empty() {
            return Ok(Release::Kept {
                uses: entry.uses.len(),
            });
        }
        let lease = entry.ttp_lease();
        // Dropping the entry zeroizes the keys and ends every watch stream.
        self.remove(id);
        Ok(Release::Last(lease))
    }

    /// A stream of events for the lease; None if there is no such lease. A watcher that
    /// joins during an outage hears about it at once.
    pub fn watch(
        &mut self,
        id: &[u8],
        process: Option<ProcessRef>,
    ) -> Option<mpsc::Receiver<Result<WatchEvent, Status>>> {
        let grace_ms = self.grace_ms;
        let entry = self.entries.get_mut(id)?;
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        if entry.unreachable_since_ms.is_some() {
            let event = entry.event(
                Kind::TtpUnreachable,
                "the TTP cannot be reached; the key stays usable until the grace period ends"
                    .into(),
                grace_ms,
            );
            let _ = tx.try_send(Ok(event));
        }
        entry.watchers.push(Watcher { process, tx });
        Some(rx)
    }

    /// What falls due at `now_ms`, and when to look again.
    pub fn due(
        &mut self,
        now_ms: u64,
        alive: &dyn Fn(&ProcessRef) -> bool,
    ) -> (Vec<Task>, Option<u64>) {
        let grace_ms = self.grace_ms;
        let mut tasks = Vec::new();
        let mut dropped = Vec::new();
        for (id, entry) in &mut self.entries {
            if let Some(grace_until) = entry.grace_until_ms(grace_ms)
                && now_ms >= grace_until
            {
                let event = entry.event(
                    Kind::GraceExpired,
                    "the TTP stayed unreachable for the whole grace period".into(),
                    grace_ms,
                );
                entry.send(event);
                tasks.push(Task::GraceExpired(entry.ttp_lease()));
                dropped.push(id.clone());
                continue;
            }
            if entry.renewing || now_ms < entry.renew_at_ms {
                continue;
            }
            if entry.idle(alive) {
                tasks.push(Task::ReleaseIdle(entry.ttp_lease()));
                dropped.push(id.clone());
                continue;
            }
            entry.renewing = true;
            tasks.push(Task::Renew {
                local_id: id.clone(),
                lease: entry.ttp_lease(),
            });
        }
        for id in dropped {
            self.remove(&id);
        }
        let next = self
            .entries
            .values()
            .filter(|e| !e.renewing)
            .map(|e| match e.grace_until_ms(grace_ms) {
                Some(grace_until) => e.renew_at_ms.min(grace_until),
                None => e.renew_at_ms,
            })
            .min();
        (tasks, next)
    }

    /// The TTP extended the lease by `seconds`.
    pub fn renewed(&mut self, id: &[u8], seconds: u32, now_ms: u64) {
        let grace_ms = self.grace_ms;
        let Some(entry) = self.entries.get_mut(id) else {
            return;
        };
        entry.renewing = false;
        entry.extend(seconds, now_ms);
        let message = if entry.unreachable_since_ms.take().is_some() {
            "the TTP answers again; lease renewed"
        } else {
            "lease renewed"
        };
        let event = entry.event(Kind::Renewed, message.into(), grace_ms);
        entry.send(event);
    }

    /// The TTP refused to renew: the lease ends now. Returns what was dropped.
    pub fn revoked(&mut self, id: &[u8], why: &str) -> Option<TtpLease> {
        let grace_ms = self.grace_ms;
        let entry = self.entries.get_mut(id)?;
        let event = entry.event(
            Kind::LeaseRevoked,
            format!("the TTP refused to renew the lease: {why}"),
            grace_ms,
        );
        entry.send(event);
        let lease = entry.ttp_lease();
        self.remove(id);
        Some(lease)
    }

    /// The TTP could not be reached. Returns the end of the grace period (unix ms) when
    /// this starts an outage for the lease, None when it continues one.
    pub fn unreachable(&mut self, id: &[u8], now_ms: u64, why: &str) -> Option<u64> {
        let grace_ms = self.grace_ms;
        let entry = self.entries.get_mut(id)?;
        entry.renewing = false;
        entry.renew_at_ms = now_ms + retry_ms(entry.lease_seconds);
        if entry.unreachable_since_ms.is_some() {
            return None;
        }
        entry.unreachable_since_ms = Some(now_ms);
        let event = entry.event(
            Kind::TtpUnreachable,
            format!("the TTP cannot be reached ({why}); the key stays usable until the grace period ends"),
            grace_ms,
        );
        entry.send(event);
        entry.grace_until_ms(grace_ms)
    }

    /// The leases for Status.
    pub fn infos(&self) -> Vec<LeaseInfo> {
        let mut infos: Vec<LeaseInfo> = self
            .entries
            .values()
            .map(|e| LeaseInfo {
                domain_id: hex::encode(e.domain),
                mode: e.mode.agent_mode() as i32,
                until_unix: e.until_ms / 1000,
                mounts: u32::try_from(e.uses.len()).unwrap_or(u32::MAX),
            })
            .collect();
        infos.sort_by(|a, b| (&a.domain_id, a.mode).cmp(&(&b.domain_id, b.mode)));
        infos
    }
}

#[cfg(test)]
#[path = "leases_tests.rs"]
mod tests;
