#![allow(clippy::unwrap_used)] // helpers outside #[test] fns, same rules as the tests
//! Hidden versions and the audit trail on a live agent-mode mount: a deleted record is
//! listed, shown and restored through the daemon; only the domain manager's key purges
//! it, and the purge is in the audit trail.

use domfs_e2e::*;

#[test]
fn deleted_records_are_hidden_restorable_and_purged_only_by_the_manager() {
    require_environment();
    let scratch = Scratch::new();
    let ttp = Ttp::start(scratch.path(), 30);
    let manager = Manager::new(&ttp, scratch.path(), "ward-manager");
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

    std::fs::write(dir.join("chart.txt"), b"allergy: penicillin\n").unwrap();
    std::fs::remove_file(dir.join("chart.txt")).unwrap();
    assert!(!dir.join("chart.txt").exists());

    let out = domfs(&["hidden", "list", "--json", s(&dir)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("chart.txt"),
        "{}",
        text(&out.stdout)
    );
    let out = domfs(&["hidden", "show", s(&dir), "chart.txt"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"allergy: penicillin\n");
    let out = domfs(&[
        "hidden",
        "restore",
        s(&dir),
        "chart.txt",
        "--to",
        "chart-restored.txt",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(dir.join("chart-restored.txt")).unwrap(),
        b"allergy: penicillin\n"
    );

    // Delete again; a key that is not the manager's cannot purge; the manager's can.
    std::fs::remove_file(dir.join("chart-restored.txt")).unwrap();
    let stranger = scratch.path().join("stranger.key");
    assert!(
        domfs(&["manager", "keygen", "--out", s(&stranger)])
            .status
            .success()
    );
    let out = domfs(&[
        "hidden",
        "purge",
        s(&dir),
        "chart-restored.txt",
        "--version",
        "1",
        "--manager-key",
        s(&stranger),
    ]);
    assert!(!out.status.success(), "a stranger purged a record");
    let out = domfs(&[
        "hidden",
        "purge",
        s(&dir),
        "chart-restored.txt",
        "--version",
        "1",
        "--manager-key",
        s(&manager.key),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = domfs(&["hidden", "list", "--json", s(&dir), "chart-restored.txt"]);
    assert!(
        !text(&out.stdout).contains("chart-restored.txt"),
        "{}",
        text(&out.stdout)
    );

    let out = domfs(&["audit", "--json", s(&dir)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let trail = text(&out.stdout);
    for op in ["\"op\":\"hide\"", "\"op\":\"restore\"", "\"op\":\"purge\""] {
        assert!(trail.contains(op), "{op} missing from the trail:\n{trail}");
    }
    let out = domfs(&["audit", "--verify", s(&dir)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    unmount(&dir);
}
