//! The command line: help everywhere, usage errors (exit 2), and clear failures (exit 1)
//! that need neither a TPM nor a TTP.
#![allow(clippy::unwrap_used)] // a test: a panic is a failure with its message

use assert_cmd::Command;
use predicates::str::contains;

fn agent() -> Command {
    Command::cargo_bin("domfs-agent").unwrap()
}

#[test]
fn every_command_has_help() {
    agent()
        .arg("--help")
        .assert()
        .success()
        .stdout(contains("serve"))
        .stdout(contains("enroll"))
        .stdout(contains("status"));
    for (command, flag) in [
        ("serve", "--socket-mode"),
        ("serve", "--grace"),
        ("serve", "sha256:7]"),
        ("enroll", "--force"),
        ("status", "--json"),
    ] {
        agent()
            .args([command, "--help"])
            .assert()
            .success()
            .stdout(contains(flag));
    }
}

#[test]
fn usage_errors_exit_2() {
    agent().assert().code(2);
    agent()
        .args(["serve", "--socket-mode", "0999", "--socket", "/x"])
        .assert()
        .code(2)
        .stderr(contains("not an octal file mode"));
    agent().args(["status"]).assert().code(2);
}

#[test]
fn status_without_an_agent_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    agent()
        .args(["status", "--socket"])
        .arg(dir.path().join("agent.sock"))
        .assert()
        .code(1)
        .stderr(contains("cannot connect to"));
}

#[test]
fn serve_reports_a_missing_certificate_in_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let missing = dir.path().join("missing.pem");
    agent()
        .args(["serve", "--ttp", "https://ttp.invalid:7000", "--tcti"])
        .arg("swtpm:host=127.0.0.1,port=1")
        .args(["--pcrs", "sha256:16"])
        .arg("--state")
        .arg(&state)
        .arg("--socket")
        .arg(dir.path().join("agent.sock"))
        .arg("--tls-ca")
        .arg(&missing)
        .arg("--tls-cert")
        .arg(&missing)
        .arg("--tls-key")
        .arg(&missing)
        .assert()
        .code(1)
        .stderr(contains("cannot read"))
        .stderr(contains("missing.pem"))
        .stdout("");
    let log = std::fs::read_to_string(state.join("agent.log")).unwrap();
    assert!(log.contains("ERROR cannot read"), "{log}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&state).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700);
    assert!(!dir.path().join("agent.sock").exists());
}
