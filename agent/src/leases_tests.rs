//! The lease table's rules, with synthetic time and a fake notion of which processes live.

use super::*;

const GRACE: Duration = Duration::from_secs(100);
const T0: u64 = 1_000_000_000;
const DOMAIN: DomainId = [7; 16];

/// Processes with an odd start time are alive.
fn alive(p: &ProcessRef) -> bool {
    p.start_time % 2 == 1
}

fn live(pid: u32) -> Option<ProcessRef> {
    Some(ProcessRef { pid, start_time: 1 })
}

fn dead(pid: u32) -> Option<ProcessRef> {
    Some(ProcessRef { pid, start_time: 2 })
}

fn lease(id: u8, mode: Granted, seconds: u32) -> NewLease {
    let plain: Vec<u8> = (0..64).map(|i| i ^ id).collect();
    let keys = match mode {
        Granted::ReadOnly => DomainKeys::from_unwrapped(&plain[..32], false),
        Granted::ReadWrite => DomainKeys::from_unwrapped(&plain, true),
    };
    NewLease {
        ttp_lease_id: vec![id; 16],
        domain: DOMAIN,
        mode,
        keys: keys.unwrap(),
        writer_public_key: vec![9; 32],
        access_list_version: 3,
        lease_seconds: seconds,
        rw_refused: false,
        signed_message: b"message".to_vec(),
        signature: vec![0; 64],
        checkpoint: None,
    }
}

fn kinds(rx: &mut mpsc::Receiver<Result<WatchEvent, Status>>) -> Vec<Kind> {
    let mut kinds = Vec::new();
    while let Ok(event) = rx.try_recv() {
        kinds.push(event.unwrap().kind());
    }
    kinds
}

fn lookup(table: &mut LeaseTable, mode: Granted, caller: Option<ProcessRef>) -> Lookup {
    table.lookup(DOMAIN, mode, false, caller, T0, &alive)
}

#[test]
fn a_cached_lease_serves_later_requests_and_counts_its_uses() {
    let mut table = LeaseTable::new(GRACE);
    assert!(matches!(
        lookup(&mut table, Granted::ReadOnly, live(1)),
        Lookup::Miss
    ));
    let first = table.insert(lease(1, Granted::ReadOnly, 60), live(1), T0);
    assert_eq!(first.lease_seconds, 60);
    assert!(first.writer_secret.is_none());
    let Lookup::Hit(second) = table.lookup(
        DOMAIN,
        Granted::ReadOnly,
        false,
        live(3),
        T0 + 10_500,
        &alive,
    ) else {
        panic!("expected a cache hit");
    };
    assert_eq!(second.lease_id, first.lease_id);
    assert_eq!(*second.domain_key, *first.domain_key);
    assert_eq!(second.lease_seconds, 49);
    assert_eq!(second.access_list_version, 3);
    // Read-only and read-write are separate leases.
    assert!(matches!(
        lookup(&mut table, Granted::ReadWrite, live(1)),
        Lookup::Miss
    ));
    let infos = table.infos();
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[0].mounts, 2);
    assert_eq!(infos[0].domain_id, hex::encode(DOMAIN));
    assert_eq!(infos[0].until_unix, (T0 + 60_000) / 1000);
}

#[test]
fn read_write_is_exclusive_among_live_processes() {
    let mut table = LeaseTable::new(GRACE);
    let grant = table.insert(lease(1, Granted::ReadWrite, 60), live(1), T0);
    assert!(grant.writer_secret.is_some());
    // Another live process: refused. The holder itself: served again.
    assert!(matches!(
        lookup(&mut table, Granted::ReadWrite, live(3)),
        Lookup::HeldElsewhere { pid: 1 }
    ));
    assert!(matches!(
        lookup(&mut table, Granted::ReadWrite, live(1)),
        Lookup::Hit(_)
    ));
    // Both uses give back: the second is the last.
    assert_eq!(
        table.release(&grant.lease_id, live(1), &alive),
        Ok(Release::Kept { uses: 1 })
    );
    assert!(matches!(
        table.release(&grant.lease_id, live(1), &alive),
        Ok(Release::Last(_))
    ));
    assert!(table.is_empty());

    // A holder that died (a crashed daemon) leaves the lease to the next request.
    let grant = table.insert(lease(2, Granted::ReadWrite, 60), dead(5), T0);
    let Lookup::Hit(again) = lookup(&mut table, Granted::ReadWrite, live(7)) else {
        panic!("a dead holder must not block");
    };
    assert_eq!(again.lease_id, grant.lease_id);

    // A process watching the lease holds it too (the daemon after its parent exited).
    let _rx = table.watch(&grant.lease_id, live(9)).unwrap();
    table.release(&grant.lease_id, live(7), &alive).unwrap();
    assert!(matches!(
        lookup(&mut table, Granted::ReadWrite, live(11)),
        Lookup::HeldElsewhere { pid: 9 }
    ));
}

#[test]
fn release_takes_the_callers_use_or_a_dead_ones() {
    let mut table = LeaseTable::new(GRACE);
    let grant = table.insert(lease(1, Granted::ReadOnly, 60), dead(2), T0);
    let id = grant.lease_id.clone();
    assert!(matches!(
        lookup(&mut table, Granted::ReadOnly, live(3)),
        Lookup::Hit(_)
    ));
    // pid 5 holds nothing, but the use of dead pid 2 may be given back by anyone (the
    // daemon a mount command forked).
    assert_eq!(
        table.release(&id, live(5), &alive),
        Ok(Release::Kept { uses: 1 })
    );
    // Now only live pid 3 holds it: pid 5 cannot take its use away.
    assert_eq!(
        table.release(&id, live(5), &alive),
        Err(ReleaseError::NotHolder)
    );
    let Ok(Release::Last(lease)) = table.release(&id, live(3), &alive) else {
        panic!("the last use releases the lease");
    };
    assert_eq!(lease.lease_id, id);
    assert_eq!(lease.mode, Granted::ReadOnly);
    assert_eq!(
        table.release(&id, live(3), &alive),
        Err(ReleaseError::NotFound)
    );
    assert!(matches!(
        lookup(&mut table, Granted::ReadOnly, live(3)),
        Lookup::Miss
    ));
}

#[test]
fn renewal_falls_due_at_half_the_lease_and_is_not_dispatched_twice() {
    let mut table = LeaseTable::new(GRACE);
    let grant = table.insert(lease(1, Granted::ReadOnly, 60), live(1), T0);
    let mut rx = table.watch(&grant.lease_id, live(1)).unwrap();
    let (tasks, next) = table.due(T0 + 29_999, &alive);
    assert!(tasks.is_empty());
    assert_eq!(next, Some(T0 + 30_000));
    let (tasks, next) = table.due(T0 + 30_000, &alive);
    assert_eq!(tasks.len(), 1);
    assert!(matches!(&tasks[0], Task::Renew { local_id, .. } if *local_id == grant.lease_id));
    assert_eq!(next, None, "a lease being renewed is not scheduled");
    assert!(table.due(T0 + 31_000, &alive).0.is_empty());

    table.renewed(&grant.lease_id, 60, T0 + 31_000);
    assert_eq!(kinds(&mut rx), vec![Kind::Renewed]);
    let (tasks, next) = table.due(T0 + 31_000, &alive);
    assert!(tasks.is_empty());
    assert_eq!(next, Some(T0 + 61_000));
    assert_eq!(table.infos()[0].until_unix, (T0 + 91_000) / 1000);
}

#[test]
fn an_unused_lease_is_released_when_renewal_falls_due() {
    let mut table = LeaseTable::new(GRACE);
    let grant = table.insert(lease(1, Granted::ReadWrite, 60), dead(2), T0);
    let (tasks, _) = table.due(T0 + 30_000, &alive);
    assert_eq!(
        tasks,
        vec![Task::ReleaseIdle(TtpLease {
            lease_id: grant.lease_id,
            domain: DOMAIN,
            mode: Granted::ReadWrite,
        })]
    );
    assert!(table.is_empty());

    // A closed watch stream does not count as a user either.
    let grant = table.insert(lease(2, Granted::ReadOnly, 60), dead(2), T0);
    drop(table.watch(&grant.lease_id, live(3)).unwrap());
    let (tasks, _) = table.due(T0 + 30_000, &alive);
    assert!(matches!(tasks[..], [Task::ReleaseIdle(_)]));
}

#[test]
fn a_refusal_revokes_at_once_and_ends_the_streams() {
    let mut table = LeaseTable::new(GRACE);
    let grant = table.insert(lease(1, Granted::ReadOnly, 60), live(1), T0);
    let mut rx = table.watch(&grant.lease_id, live(1)).unwrap();
    table.due(T0 + 30_000, &alive);
    let dropped = table.revoked(&grant.lease_id, "host revoked").unwrap();
    assert_eq!(dropped.lease_id, grant.lease_id);
    let event = rx.try_recv().unwrap().unwrap();
    assert_eq!(event.kind(), Kind::LeaseRevoked);
    assert!(event.message.contains("host revoked"));
    assert!(matches!(
        rx.try_recv(),
        Err(mpsc::error::TryRecvError::Disconnected)
    ));
    assert!(table.is_empty());
    assert!(matches!(
        lookup(&mut table, Granted::ReadOnly, live(1)),
        Lookup::Miss
    ));
    assert!(table.revoked(&grant.lease_id, "again").is_none());
}

#[test]
fn an_outage_serves_the_key_until_the_grace_period_ends() {
    let mut table = LeaseTable::new(GRACE);
    let grant = table.insert(lease(1, Granted::ReadOnly, 60), live(1), T0);
    let id = grant.lease_id.clone();
    let mut rx = table.watch(&id, live(1)).unwrap();
    table.due(T0 + 30_000, &alive);
    // The grace period counts from the first failure, and never ends before the lease.
    let grace_until = table.unreachable(&id, T0 + 30_000, "connection refused");
    assert_eq!(grace_until, Some(T0 + 130_000));
    let event = rx.try_recv().unwrap().unwrap();
    assert_eq!(event.kind(), Kind::TtpUnreachable);
    assert_eq!(event.grace_until_unix, (T0 + 130_000) / 1000);
    // Retried every quarter lease (15 s); later failures change nothing and say nothing.
    let (tasks, next) = table.due(T0 + 44_999, &alive);
    assert!(tasks.is_empty());
    assert_eq!(next, Some(T0 + 45_000));
    assert_eq!(table.due(T0 + 45_000, &alive).0.len(), 1);
    assert_eq!(table.unreachable(&id, T0 + 45_000, "again"), None);
    assert!(kinds(&mut rx).is_empty());
    // A late watcher hears about the outage at once.
    let mut late = table.watch(&id, live(3)).unwrap();
    assert_eq!(kinds(&mut late), vec![Kind::TtpUnreachable]);
    // Past the lease's end the key is still served.
    assert!(matches!(
        table.lookup(
            DOMAIN,
            Granted::ReadOnly,
            false,
            live(1),
            T0 + 120_000,
            &alive
        ),
        Lookup::Hit(_)
    ));
    // Then the grace period ends.
    let (tasks, _) = table.due(T0 + 130_000, &alive);
    assert!(matches!(tasks[..], [Task::GraceExpired(_)]));
    assert_eq!(kinds(&mut rx), vec![Kind::GraceExpired]);
    assert!(rx.is_closed() || rx.try_recv().is_err());
    assert!(table.is_empty());
}

#[test]
fn the_ttp_answering_again_ends_the_outage() {
    let mut table = LeaseTable::new(GRACE);
    let grant = table.insert(lease(1, Granted::ReadOnly, 60), live(1), T0);
    let id = grant.lease_id.clone();
    let mut rx = table.watch(&id, live(1)).unwrap();
    table.due(T0 + 30_000, &alive);
    table.unreachable(&id, T0 + 30_000, "down");
    table.due(T0 + 45_000, &alive);
    table.renewed(&id, 60, T0 + 46_000);
    let events: Vec<WatchEvent> = std::iter::from_fn(|| rx.try_recv().ok())
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].kind(), Kind::Renewed);
    assert!(events[1].message.contains("answers again"));
    assert_eq!(events[1].grace_until_unix, 0);
    // No grace expiry any more.
    let (tasks, next) = table.due(T0 + 130_000, &alive);
    assert!(matches!(tasks[..], [Task::Renew { .. }]));
    assert!(next.is_none());
}

#[test]
fn a_forgotten_lease_granted_again_keeps_its_local_id_if_the_keys_match() {
    let mut table = LeaseTable::new(GRACE);
    let grant = table.insert(lease(1, Granted::ReadWrite, 60), live(1), T0);
    let id = grant.lease_id.clone();
    let mut rx = table.watch(&id, live(1)).unwrap();
    table.due(T0 + 30_000, &alive);
    table.unreachable(&id, T0 + 30_000, "down");
    assert_eq!(
        table.request_of(&id),
        Some((b"message".to_vec(), vec![0; 64]))
    );
    let other = lease(2, Granted::ReadWrite, 60);
    assert!(!table.reacquired(&id, vec![2; 16], &other.keys, 60, T0 + 70_000));
    let same = lease(1, Granted::ReadWrite, 60);
    assert!(table.reacquired(&id, vec![3; 16], &same.keys, 60, T0 + 70_000));
    assert_eq!(kinds(&mut rx), vec![Kind::TtpUnreachable, Kind::Renewed]);
    // The TTP's new id is what renewals use; callers keep the old one.
    let (tasks, _) = table.due(T0 + 100_000, &alive);
    let [Task::Renew { local_id, lease }] = &tasks[..] else {
        panic!("expected a renewal, got {tasks:?}");
    };
    assert_eq!(*local_id, id);
    assert_eq!(lease.lease_id, vec![3; 16]);
    assert!(table.release(&id, live(1), &alive).is_ok());
}

#[test]
fn best_requests_use_a_read_only_lease_only_after_read_write_was_refused() {
    let mut table = LeaseTable::new(GRACE);
    table.insert(lease(1, Granted::ReadOnly, 60), live(1), T0);
    assert!(matches!(
        table.lookup(DOMAIN, Granted::ReadOnly, true, live(1), T0, &alive),
        Lookup::Miss
    ));
    table.note_rw_refused(DOMAIN);
    assert!(matches!(
        table.lookup(DOMAIN, Granted::ReadOnly, true, live(1), T0, &alive),
        Lookup::Hit(_)
    ));
}

#[test]
fn retry_interval_is_a_quarter_lease_within_bounds() {
    assert_eq!(retry_ms(1), 1000);
    assert_eq!(retry_ms(60), 15_000);
    assert_eq!(retry_ms(3600), 30_000);
}
