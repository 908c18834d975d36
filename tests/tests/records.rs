#![allow(clippy::unwrap_used)] // helpers outside #[test] fns, same rules as the tests
//! Hidden versions and the audit trail on a live agent-mode mount: a deleted record is
//! listed, shown and restored through the daemon; only the domain manager's key purges
//! it, and the purge is in the audit trail. Read offline with the agent's key, a
//! version's content is shown only once the read is recorded at the TTP.

use domfs_e2e::*;

#[test]
fn deleted_records_are_hidden_restorable_and_purged_only_by_the_manager() {
    let scratch = Scratch::new();
    let (_ttp, manager, host, volume) = one_ward(&scratch);
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

    // Offline, with the agent's key: reading a version is recorded at the TTP (the
    // volume is opened read-only) before anything is shown.
    std::fs::write(dir.join("note.txt"), b"seen offline\n").unwrap();
    std::fs::remove_file(dir.join("note.txt")).unwrap();
    unmount(&dir);
    let agent = ["--agent", s(&host.socket)];
    let mut show = vec!["hidden", "show"];
    show.extend(agent);
    show.extend([s(&volume), "note.txt"]);
    let out = domfs(&show);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"seen offline\n");
    let mut audit = vec!["audit", "--json", "--path", "/note.txt"];
    audit.extend(agent);
    audit.push(s(&volume));
    let out = domfs(&audit);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let offline_read = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["source"] == "ttp" && e["op"] == "open")
        .unwrap_or_else(|| panic!("no offline read at the TTP:\n{}", text(&out.stdout)));
    assert!(
        offline_read["detail"]
            .as_str()
            .unwrap()
            .ends_with("shown offline"),
        "{offline_read}"
    );
    assert_eq!(offline_read["sender"], "ward-db");
    assert_eq!(offline_read["process"], "domfs");
}
