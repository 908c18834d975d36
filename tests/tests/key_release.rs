#![allow(clippy::unwrap_used)] // helpers outside #[test] fns, same rules as the tests
//! The key-release chain end to end (the paper's section V): a manager creates a domain
//! at the TTP, hosts with their own swtpm and agent enroll and are approved, and mounts get
//! the key — or a clear refusal, logged where it was decided.

use std::time::Duration;

use domfs_e2e::*;

const LEASE: u32 = 4;

fn setup(scratch: &Scratch) -> (Ttp, Manager) {
    require_environment();
    let ttp = Ttp::start(scratch.path(), LEASE);
    let manager = Manager::new(&ttp, scratch.path(), "ward-manager");
    (ttp, manager)
}

fn code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

#[test]
fn two_hosts_one_writes_then_the_other_reads() {
    let scratch = Scratch::new();
    let (ttp, manager) = setup(&scratch);
    let writer = Host::start(&ttp, "db-primary", scratch.path());
    let reader = Host::start(&ttp, "db-replica", scratch.path());
    let volume = scratch.path().join("ward.vol");
    let out = manager.create(&volume, "64M", &["db-primary=rw", "db-replica=ro"]);
    assert!(out.status.success(), "create: {}", text(&out.stderr));

    let show = domfs(&["acl", "show", "--json", s(&volume)]);
    assert!(show.status.success(), "{}", text(&show.stderr));
    let acl = text(&show.stdout);
    assert!(
        acl.contains("\"db-primary\": \"rw\"") && acl.contains("\"db-replica\": \"ro\""),
        "{acl}"
    );
    assert!(acl.contains("\"signature\": \"valid\""), "{acl}");

    // The first read-write mount formats the volume.
    let rw_dir = scratch.path().join("rw");
    let out = writer.mount(&volume, &rw_dir, &[]);
    assert!(
        out.status.success(),
        "rw mount: {}\nagent: {}",
        text(&out.stderr),
        writer.agent_stderr()
    );
    std::fs::write(
        rw_dir.join("record.txt"),
        b"patient 4711: allergy to penicillin\n",
    )
    .unwrap();

    // While the primary holds the read-write lease, nobody else gets one.
    let second = reader.mount(&volume, &scratch.path().join("second"), &["--read-write"]);
    assert_ne!(code(&second), Some(0), "a second rw mount must be refused");
    unmount(&rw_dir);

    // The replica was granted ro only: its mount is read-only without asking.
    let ro_dir = scratch.path().join("ro");
    let out = reader.mount(&volume, &ro_dir, &[]);
    assert!(
        out.status.success(),
        "ro mount: {}\nagent: {}",
        text(&out.stderr),
        reader.agent_stderr()
    );
    assert_eq!(
        std::fs::read(ro_dir.join("record.txt")).unwrap(),
        b"patient 4711: allergy to penicillin\n"
    );
    let write = std::fs::write(ro_dir.join("other.txt"), b"x");
    assert!(write.is_err(), "a read-only mount accepted a write");
    // Asking for rw explicitly is refused: the list says ro.
    reader.mount_refused(&volume, &scratch.path().join("rw2"), &["--read-write"], "");
    unmount(&ro_dir);

    // The lease was given back at unmount: the primary may mount read-write again.
    let out = writer.mount(&volume, &rw_dir, &["--read-write"]);
    assert!(out.status.success(), "rw remount: {}", text(&out.stderr));
    assert!(rw_dir.join("record.txt").exists());
    unmount(&rw_dir);

    let log = ttp.log();
    assert!(
        log.contains("GRANTED op=get-domain-key host=db-primary"),
        "{log}"
    );
    assert!(
        log.contains("REFUSED op=get-domain-key host=db-replica"),
        "{log}"
    );
}

#[test]
fn refusals_are_clear_and_logged() {
    let scratch = Scratch::new();
    let (ttp, manager) = setup(&scratch);
    let granted = Host::start(&ttp, "granted", scratch.path());
    let stranger = Host::start(&ttp, "stranger", scratch.path());
    let volume = scratch.path().join("ward.vol");
    let out = manager.create(&volume, "32M", &["granted=rw"]);
    assert!(out.status.success(), "create: {}", text(&out.stderr));

    // A host not in the list.
    stranger.mount_refused(
        &volume,
        &scratch.path().join("m1"),
        &[],
        "not in access list",
    );
    assert!(ttp.log().contains("stranger"), "{}", ttp.log());

    // An edited list without a new signature.
    let edited = scratch.path().join("edited.vol");
    std::fs::copy(&volume, &edited).unwrap();
    edit_signed_list(&edited, "stranger");
    stranger.mount_refused(&edited, &scratch.path().join("m2"), &[], "signature");

    // A header rolled back to an older list that still named a revoked host.
    let old_header = scratch.path().join("old.vol");
    std::fs::copy(&volume, &old_header).unwrap();
    let out = manager.change("revoke", &volume, "granted", None);
    assert!(out.status.success(), "revoke: {}", text(&out.stderr));
    granted.mount_refused(&old_header, &scratch.path().join("m3"), &[], "older");
    granted.mount_refused(&volume, &scratch.path().join("m3"), &[], "");

    // Granted again, then the host is revoked at the TTP.
    let out = manager.change("grant", &volume, "granted", Some("rw"));
    assert!(out.status.success(), "grant: {}", text(&out.stderr));
    let dir = scratch.path().join("m4");
    let out = granted.mount(&volume, &dir, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    unmount(&dir);
    ttp.admin_ok(&["hosts", "revoke", "granted"]);
    granted.mount_refused(&volume, &dir, &[], "revoked");

    // A destroyed domain is never released again.
    let out = manager.change("grant", &volume, "stranger", Some("rw"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let domain = domain_id(&volume);
    ttp.admin_ok(&["domains", "destroy", &domain]);
    stranger.mount_refused(&volume, &scratch.path().join("m5"), &[], "destroyed");

    let log = ttp.log();
    for why in [
        "not in access list",
        "signature",
        "older",
        "revoked",
        "destroyed",
    ] {
        assert!(log.contains(why), "the TTP log lacks {why:?}:\n{log}");
    }
}

#[test]
fn an_unapproved_host_and_a_foreign_certificate_get_nothing() {
    let scratch = Scratch::new();
    let (ttp, manager) = setup(&scratch);
    let volume = scratch.path().join("ward.vol");
    // A host that enrolled but that the operator has not approved.
    let dir = scratch.path().join("pending");
    std::fs::create_dir_all(&dir).unwrap();
    let mut pending = Host::start_unapproved(&ttp, "pending", scratch.path());
    let out = manager.create(&volume, "32M", &["pending=rw"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    pending.mount_refused(&volume, &scratch.path().join("m"), &[], "approv");
    pending.stop_agent();

    // A client whose certificate another CA issued.
    let other_scratch = scratch.path().join("other");
    std::fs::create_dir_all(&other_scratch).unwrap();
    let other_ttp = Ttp::start(&other_scratch, LEASE);
    let foreign = other_ttp.issue("ward-manager", "manager");
    let impostor = Manager {
        key: manager.key.clone(),
        identity: Identity {
            ca: manager.identity.ca.clone(),
            ..foreign
        },
        ttp_url: ttp.url.clone(),
    };
    let out = impostor.create(&scratch.path().join("x.vol"), "32M", &["pending=rw"]);
    assert_ne!(code(&out), Some(0), "a foreign certificate was accepted");
}

#[test]
fn revoking_a_live_mount_ends_it_within_a_lease() {
    let scratch = Scratch::new();
    let (ttp, manager) = setup(&scratch);
    let host = Host::start(&ttp, "ward-db", scratch.path());
    let volume = scratch.path().join("ward.vol");
    assert!(
        manager
            .create(&volume, "32M", &["ward-db=rw"])
            .status
            .success()
    );
    let dir = scratch.path().join("m");
    let out = host.mount(&volume, &dir, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::write(dir.join("f"), b"data").unwrap();

    ttp.admin_ok(&["hosts", "revoke", "ward-db"]);
    let gone = wait_until(Duration::from_secs(u64::from(LEASE) * 3), || {
        !is_mounted(&dir)
    });
    assert!(
        gone,
        "the mount outlived its revoked lease; agent:\n{}",
        host.agent_stderr()
    );
    assert!(host.agent_log().contains("revoked"), "{}", host.agent_log());
}

#[test]
fn changed_pcrs_mean_no_key() {
    let scratch = Scratch::new();
    let (ttp, manager) = setup(&scratch);
    let mut host = Host::start(&ttp, "ward-db", scratch.path());
    let volume = scratch.path().join("ward.vol");
    assert!(
        manager
            .create(&volume, "32M", &["ward-db=rw"])
            .status
            .success()
    );
    let dir = scratch.path().join("m");
    let out = host.mount(&volume, &dir, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    unmount(&dir);

    // The host's measured state changes (think: another boot loader); the agent restarts.
    host.stop_agent();
    host.swtpm
        .extend_pcr(16, b"a different boot")
        .expect("extend PCR 16");
    host.start_agent();
    host.mount_refused(&volume, &dir, &[], "PCR");
    assert!(host.agent_log().contains("PCR"), "{}", host.agent_log());
}

/// Adds `host` with read-write access to the list inside both header copies (fixing the
/// header checksum, which anyone can), keeping the manager's old signature.
fn edit_signed_list(volume: &std::path::Path, host: &str) {
    use domfs::device::{Access, FileDevice};
    use domfs::format::header::{read_header, write_header};
    use domfs_proto::acl::{Access as Right, SignedMessage};
    let dev = FileDevice::open(volume, Access::ReadWrite).unwrap();
    let mut header = read_header(&dev).unwrap().header;
    let mut message = SignedMessage::decode(&header.signed_message).unwrap();
    let mut list = message.access_list().unwrap();
    list.grants.insert(host.to_string(), Right::ReadWrite);
    message.xml = list.to_xml().into_bytes();
    header.signed_message = message.encode();
    write_header(&dev, &header).unwrap();
}

fn domain_id(volume: &std::path::Path) -> String {
    let out = domfs(&["acl", "show", "--json", s(volume)]);
    let doc = text(&out.stdout);
    let at = doc.find("\"domain_id\": \"").expect("domain id") + 14;
    doc[at..at + 32].to_string()
}
