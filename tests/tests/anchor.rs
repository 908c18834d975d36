#![allow(clippy::unwrap_used)] // helpers outside #[test] fns, same rules as the tests
//! The volume's anchor at the TTP: a read-write mount checkpoints (sequence, root, audit
//! head) at unmount; a mount of an older copy is refused unless `--accept-rollback`; a
//! volume ahead of its anchor (a crash before the checkpoint) mounts. Read-only mounts
//! ship their audit entries to the TTP.

use std::time::Duration;

use domfs_e2e::*;
use domfs_proto::agent::AgentReadAuditRequest;

#[test]
fn an_older_copy_of_the_volume_is_refused() {
    let scratch = Scratch::new();
    let (ttp, _manager, host, volume) = one_ward(&scratch);
    let dir = scratch.path().join("m");
    assert!(host.mount(&volume, &dir, &[]).status.success());
    std::fs::write(dir.join("chart.txt"), b"v1").unwrap();
    unmount(&dir);
    let old = scratch.path().join("old.vol");
    std::fs::copy(&volume, &old).unwrap();

    assert!(host.mount(&volume, &dir, &[]).status.success());
    std::fs::write(dir.join("chart.txt"), b"v2: the newer record").unwrap();
    unmount(&dir);
    assert!(ttp.log().contains("op=checkpoint"), "{}", ttp.log());

    // Someone puts the old copy back.
    std::fs::copy(&old, &volume).unwrap();
    let out = host.mount(&volume, &dir, &[]);
    assert!(!out.status.success(), "an older copy was mounted");
    assert!(
        text(&out.stderr).contains("older copy"),
        "{}",
        text(&out.stderr)
    );

    // Disaster recovery, on purpose.
    let out = host.mount(&volume, &dir, &["--accept-rollback"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(dir.join("chart.txt")).unwrap(), b"v1");
    unmount(&dir);
    // The recovered volume numbers its commits after the anchor: the TTP took its
    // checkpoint, and it mounts normally from now on.
    assert!(!ttp.log().contains("would go back"), "{}", ttp.log());
    let out = host.mount(&volume, &dir, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    unmount(&dir);
}

#[test]
fn a_crash_before_the_checkpoint_is_not_a_rollback() {
    let scratch = Scratch::new();
    let (_ttp, _manager, host, volume) = one_ward(&scratch);
    let dir = scratch.path().join("m");
    assert!(host.mount(&volume, &dir, &[]).status.success());
    std::fs::write(dir.join("a"), b"anchored").unwrap();
    unmount(&dir);

    // Commit (fsync) and die before any checkpoint: the volume is ahead of its anchor.
    assert!(host.mount(&volume, &dir, &[]).status.success());
    let f = std::fs::File::create(dir.join("b")).unwrap();
    use std::io::Write;
    (&f).write_all(b"durable, not anchored").unwrap();
    f.sync_all().unwrap();
    drop(f);
    let pid = daemon_of(&dir);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        std::process::Command::new("umount")
            .args(["-l", s(&dir)])
            .status()
            .is_ok()
            && !is_mounted(&dir)
    }));
    // The dead daemon's rw lease must run out first (30 s lease): wait for the TTP.
    let mounted = wait_until(Duration::from_secs(70), || {
        host.mount(&volume, &dir, &[]).status.success()
    });
    assert!(mounted, "a volume ahead of its anchor was refused");
    assert_eq!(
        std::fs::read(dir.join("b")).unwrap(),
        b"durable, not anchored"
    );
    unmount(&dir);
}

#[test]
fn read_only_mounts_ship_their_audit_entries_to_the_ttp() {
    let scratch = Scratch::new();
    require_environment();
    let ttp = Ttp::start(scratch.path(), 30);
    let manager = Manager::new(&ttp, scratch.path(), "ward-manager");
    let writer = Host::start(&ttp, "db-primary", scratch.path());
    let reader = Host::start(&ttp, "db-replica", scratch.path());
    let volume = scratch.path().join("ward.vol");
    assert!(
        manager
            .create(&volume, "32M", &["db-primary=rw", "db-replica=ro"])
            .status
            .success()
    );
    let dir = scratch.path().join("m");
    assert!(writer.mount(&volume, &dir, &[]).status.success());
    std::fs::write(dir.join("chart.txt"), b"x").unwrap();
    unmount(&dir);

    let ro = scratch.path().join("ro");
    assert!(reader.mount(&volume, &ro, &[]).status.success());
    assert_eq!(std::fs::read(ro.join("chart.txt")).unwrap(), b"x");
    // The read-only mount's own view: its daemon ships what it queued before the TTP is
    // asked, so the open just made is there at once (not only after the 15 s round).
    let own = domfs(&["audit", "--json", "--path", "/chart.txt", s(&ro)]);
    assert!(own.status.success(), "{}", text(&own.stderr));
    assert!(
        text(&own.stdout).lines().any(|l| {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            e["source"] == "ttp" && e["op"] == "open" && e["sender"] == "db-replica"
        }),
        "the ro mount's open is not shown at once:\n{}",
        text(&own.stdout)
    );
    unmount(&ro);

    let header = {
        let dev =
            domfs::device::FileDevice::open(&volume, domfs::device::Access::ReadOnly).unwrap();
        domfs::format::header::read_header(&dev).unwrap().header
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let entries = rt
        .block_on(async {
            let mut agent = domfs_proto::client::connect_agent(&reader.socket).await?;
            let reply = agent
                .read_audit(AgentReadAuditRequest {
                    signed_message: header.signed_message.clone(),
                    signature: header.signature.clone(),
                    after: 0,
                    limit: 0,
                })
                .await?;
            Ok::<_, Box<dyn std::error::Error>>(reply.into_inner().entries)
        })
        .unwrap();
    let opens: Vec<_> = entries
        .iter()
        .filter(|e| e.host == "db-replica")
        .filter_map(|e| domfs::audit::AuditRecord::decode(&e.entry).ok())
        .filter(|r| r.op == domfs::audit::AuditOp::Open && r.path.ends_with("chart.txt"))
        .collect();
    assert!(
        !opens.is_empty(),
        "no open of chart.txt from the ro host at the TTP: {entries:?}"
    );

    // `domfs audit` shows both: the volume's own log and what the TTP keeps, offline
    // (the key from the agent) and on a live mount (through the daemon and its agent).
    let offline = domfs(&["audit", "--json", "--agent", s(&writer.socket), s(&volume)]);
    assert_both_sources(&offline, "offline");
    assert!(writer.mount(&volume, &dir, &[]).status.success());
    let live = domfs(&["audit", "--json", s(&dir)]);
    assert_both_sources(&live, "live");
    let table = domfs(&["audit", "--path", "/chart.txt", s(&dir)]);
    assert!(table.status.success(), "{}", text(&table.stderr));
    assert!(
        text(&table.stdout).contains("db-replica via ttp"),
        "{}",
        text(&table.stdout)
    );
    let local = domfs(&["audit", "--json", "--no-ttp", s(&dir)]);
    assert!(local.status.success(), "{}", text(&local.stderr));
    assert!(!text(&local.stdout).contains("\"source\":\"ttp\""));
    assert!(text(&local.stdout).contains("\"source\":\"volume\""));
    // An agent that cannot be reached: the volume's entries, then a clear failure.
    let gone = scratch.path().join("no-agent.sock");
    let failed = domfs(&["audit", "--json", "--agent", s(&gone), s(&dir)]);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed.stderr));
    assert!(text(&failed.stdout).contains("\"source\":\"volume\""));
    assert!(
        text(&failed.stderr).contains("cannot reach the domfs agent")
            && text(&failed.stderr).contains("--no-ttp"),
        "{}",
        text(&failed.stderr)
    );
    unmount(&dir);
}

/// `out` (of `domfs audit --json`) has the writer's create of chart.txt from the volume
/// and the read-only host's open of it from the TTP, newest first.
fn assert_both_sources(out: &std::process::Output, how: &str) {
    assert!(out.status.success(), "{how}: {}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let position = |source: &str, op: &str| {
        lines
            .iter()
            .position(|e| e["source"] == source && e["op"] == op && e["path"] == "/chart.txt")
    };
    let read = position("ttp", "open").unwrap_or_else(|| panic!("{how}: no TTP entry: {lines:?}"));
    let created =
        position("volume", "create").unwrap_or_else(|| panic!("{how}: no create: {lines:?}"));
    assert!(read < created, "{how}: not newest first: {lines:?}");
    assert_eq!(lines[read]["sender"], "db-replica", "{how}");
    assert_eq!(lines[read]["mode"], "r", "{how}");
    assert!(lines[read]["ttp_seq"].as_u64().unwrap() >= 1, "{how}");
}

/// The pid of the daemon serving `dir` (the holder of the mount point's lock).
fn daemon_of(dir: &std::path::Path) -> i32 {
    // The daemon is the domfs process whose command line names the mount point.
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if args.first().is_some_and(|a| a.ends_with(b"domfs"))
            && args.iter().any(|a| *a == s(dir).as_bytes())
        {
            return pid;
        }
    }
    panic!("no daemon serves {}", dir.display());
}
