//! The `domfs` command end to end: messages, exit codes, and a real `kill -9` of a
//! process in the middle of committing.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use assert_cmd::cargo::CommandCargoExt;
use domfs::cli::debug::{content_seed, model_after, pattern};
use domfs::crypto::DomainKey;
use domfs::device::{Access, FileDevice};
use domfs::store::{BlockStore, StoreOptions};
use domfs::types::{BLOCK_SIZE, LogicalBlock};

fn domfs() -> Command {
    Command::cargo_bin("domfs").expect("domfs binary")
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str], dir: &Path) -> Run {
    let out = domfs()
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run domfs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn setup(size: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(run(&["key", "new", "k"], dir.path()).code, 0);
    let r = run(
        &["create", "--size", size, "--key-file", "k", "v.vol"],
        dir.path(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let vol = dir.path().join("v.vol");
    (dir, vol)
}

#[test]
fn help_is_on_every_command() {
    for args in [
        vec!["--help"],
        vec!["create", "--help"],
        vec!["fsck", "--help"],
        vec!["header", "show", "--help"],
        vec!["key", "new", "--help"],
    ] {
        let out = domfs().args(&args).output().expect("run");
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
    let out = domfs().arg("frobnicate").output().expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn key_file_is_private_and_not_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(run(&["key", "new", "k"], dir.path()).code, 0);
    let meta = std::fs::metadata(dir.path().join("k")).expect("key file");
    assert_eq!(meta.mode() & 0o777, 0o600);
    let key = std::fs::read(dir.path().join("k")).expect("read key");
    DomainKey::parse_key_file(&key).expect("a valid key file");
    let again = run(&["key", "new", "k"], dir.path());
    assert_eq!(again.code, 8, "{}", again.stderr);
    assert!(again.stderr.contains("--force"));
    assert_eq!(std::fs::read(dir.path().join("k")).expect("read"), key);
}

#[test]
fn huge_sparse_volume_is_created_instantly_and_checks_clean() {
    let (dir, vol) = setup("1T");
    let meta = std::fs::metadata(&vol).expect("volume");
    assert_eq!(meta.len(), 1 << 40);
    assert!(
        meta.blocks() * 512 < 4 << 20,
        "allocated {} bytes",
        meta.blocks() * 512
    );
    let r = run(&["fsck", "--key-file", "k", "v.vol"], dir.path());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("clean"));
}

#[test]
fn create_refuses_to_overwrite_without_force() {
    let (dir, _vol) = setup("8M");
    let r = run(
        &["create", "--size", "8M", "--key-file", "k", "v.vol"],
        dir.path(),
    );
    assert_eq!(r.code, 8);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    std::fs::write(dir.path().join("data"), b"precious").expect("write");
    let r = run(
        &["create", "--size", "8M", "--key-file", "k", "data"],
        dir.path(),
    );
    assert_eq!(r.code, 8);
    assert_eq!(
        std::fs::read(dir.path().join("data")).expect("read"),
        b"precious"
    );
    let r = run(
        &[
            "create",
            "--size",
            "8M",
            "--key-file",
            "k",
            "--force",
            "data",
        ],
        dir.path(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(&["create", "--key-file", "k", "nosize"], dir.path());
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("--size"));
    let r = run(
        &["create", "--size", "12Q", "--key-file", "k", "x"],
        dir.path(),
    );
    assert_eq!(r.code, 2);
}

#[test]
fn bad_input_gets_one_clear_line_and_an_exit_code() {
    let (dir, vol) = setup("8M");
    // Wrong key.
    assert_eq!(run(&["key", "new", "other"], dir.path()).code, 0);
    let r = run(&["fsck", "--key-file", "other", "v.vol"], dir.path());
    assert_eq!(r.code, 3);
    assert!(r.stderr.contains("wrong key"), "{}", r.stderr);
    // Bad key file.
    std::fs::write(dir.path().join("bad"), b"not a key").expect("write");
    let r = run(&["fsck", "--key-file", "bad", "v.vol"], dir.path());
    assert_eq!(r.code, 3);
    assert!(r.stderr.contains("bad key file"), "{}", r.stderr);
    // Not a volume.
    std::fs::write(dir.path().join("junk"), vec![0x5a; 300_000]).expect("write");
    let r = run(&["fsck", "--key-file", "k", "junk"], dir.path());
    assert_eq!(r.code, 5);
    assert!(r.stderr.contains("not a domfs volume"), "{}", r.stderr);
    // Missing file.
    let r = run(&["fsck", "--key-file", "k", "missing"], dir.path());
    assert_eq!(r.code, 7);
    // Truncated.
    let copy = dir.path().join("cut.vol");
    std::fs::copy(&vol, &copy).expect("copy");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&copy)
        .and_then(|f| f.set_len(3 << 20))
        .expect("truncate");
    let r = run(&["fsck", "--key-file", "k", "cut.vol"], dir.path());
    assert_eq!(r.code, 5);
    assert!(r.stderr.contains("truncated"), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

#[test]
fn header_show_prints_no_secret() {
    let (dir, _vol) = setup("8M");
    let key_hex = std::fs::read_to_string(dir.path().join("k")).expect("key");
    for args in [
        vec!["header", "show", "v.vol"],
        vec!["header", "show", "--key-file", "k", "v.vol"],
        vec!["header", "show", "--json", "--key-file", "k", "v.vol"],
    ] {
        let r = run(&args, dir.path());
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stdout.contains("volume"), "{}", r.stdout);
        assert!(!r.stdout.contains(key_hex.trim()));
        assert!(!r.stdout.contains(&key_hex.trim()[..16]));
    }
    let r = run(&["header", "show", "--json", "v.vol"], dir.path());
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert!(doc.get("superblocks").is_some());
}

#[test]
fn fsck_names_a_damaged_block() {
    let (dir, vol) = setup("16M");
    let key =
        DomainKey::parse_key_file(&std::fs::read(dir.path().join("k")).expect("key")).expect("key");
    let dev = Arc::new(FileDevice::open(&vol, Access::ReadWrite).expect("open"));
    let store = BlockStore::open(dev, &key, StoreOptions::default()).expect("store");
    for n in 0..10 {
        store.write(LogicalBlock(n), &pattern(5, n)).expect("write");
    }
    store.close().expect("close");
    // The first data block written lands at the start of the block area (1 MiB).
    let bytes = std::fs::read(&vol).expect("read");
    let first = (1 << 20..bytes.len())
        .step_by(BLOCK_SIZE)
        .find(|&off| bytes[off..off + BLOCK_SIZE].iter().any(|&b| b != 0))
        .expect("some block was written");
    let mut damaged = bytes.clone();
    damaged[first + 100] ^= 0x01;
    std::fs::write(&vol, &damaged).expect("write back");
    let r = run(&["fsck", "--key-file", "k", "v.vol"], dir.path());
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    let phys = first / BLOCK_SIZE;
    assert!(
        r.stdout.contains(&format!("physical block {phys}")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("bad block"), "{}", r.stdout);
}

/// Starts the write loop, lets it commit for a while, kills it with SIGKILL, and checks
/// that the volume holds exactly the last acknowledged transaction or the one after it.
#[test]
fn kill_9_in_the_middle_of_commits_loses_nothing_acknowledged() {
    let (span, txn_blocks) = (3000u64, 48u64);
    for (round, wait_ms) in [(1u64, 150u64), (2, 400), (3, 900)] {
        let (dir, vol) = setup("64M");
        let mut child = domfs()
            .args(["debug", "write-loop", "--key-file", "k", "--seed"])
            .arg(round.to_string())
            .args([
                "--span",
                &span.to_string(),
                "--txn-blocks",
                &txn_blocks.to_string(),
                "v.vol",
            ])
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn write loop");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            let mut last = 0u64;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("committed ") {
                    last = n.parse().expect("number");
                }
            }
            last
        });
        std::thread::sleep(Duration::from_millis(wait_ms));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        let acknowledged = reader.join().expect("reader");
        assert!(
            acknowledged > 0,
            "round {round}: nothing committed in {wait_ms} ms"
        );

        let r = run(&["fsck", "--key-file", "k", "v.vol"], dir.path());
        assert_eq!(r.code, 0, "round {round}: {}{}", r.stdout, r.stderr);

        let key = DomainKey::parse_key_file(&std::fs::read(dir.path().join("k")).expect("key"))
            .expect("key");
        let dev = Arc::new(FileDevice::open(&vol, Access::ReadOnly).expect("open"));
        let store = BlockStore::open(dev, &key, StoreOptions::read_only()).expect("reopen");
        let matches = |txns: u64| {
            let model = model_after(round, txns, span, txn_blocks);
            (0..span).all(|n| {
                let mut got = [0u8; BLOCK_SIZE];
                store.read(LogicalBlock(n), &mut got).expect("read");
                match model.get(&n) {
                    Some(&t) => got == *pattern(content_seed(round, t), n),
                    None => got == [0u8; BLOCK_SIZE],
                }
            })
        };
        assert!(
            matches(acknowledged) || matches(acknowledged + 1),
            "round {round}: the volume holds neither transaction {acknowledged} nor the next"
        );
    }
}

/// A loop device stands in for a real disk. Needs root (CI runs as root).
struct LoopDevice(String);

impl LoopDevice {
    fn attach(file: &Path) -> Self {
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .expect("losetup must be installed (util-linux) and this test run as root");
        assert!(
            out.status.success(),
            "losetup failed (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        LoopDevice(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn a_block_device_is_used_whole_and_protected_from_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backing = dir.path().join("disk.img");
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(32 << 20))
        .expect("backing file");
    let dev = LoopDevice::attach(&backing);
    assert_eq!(run(&["key", "new", "k"], dir.path()).code, 0);
    let r = run(&["create", "--key-file", "k", &dev.0], dir.path());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("32.0 MiB"), "{}", r.stdout);
    let r = run(&["create", "--key-file", "k", &dev.0], dir.path());
    assert_eq!(r.code, 8, "a second create must refuse: {}", r.stderr);
    let r = run(
        &[
            "debug",
            "write-loop",
            "--count",
            "3",
            "--key-file",
            "k",
            &dev.0,
        ],
        dir.path(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(&["fsck", "--key-file", "k", &dev.0], dir.path());
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = run(
        &["create", "--force", "--key-file", "k", &dev.0],
        dir.path(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}
