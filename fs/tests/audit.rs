//! The audit trail through a real mount and `domfs audit` on the unmounted volume: who
//! opened (with which access mode), created, changed and hid what, newest first, with the
//! filters; an fsync'ed write has its open in the log after `kill -9`; a flipped byte in
//! the log fails `--verify` (and is itself recorded at the next mount); a block that does
//! not verify is recorded with the file's path. Needs root and /dev/fuse (as in CI).

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::mount::*;
use domfs::crypto::DomainKey;
use domfs::device::{Access, FileDevice};
use domfs::filesystem::Filesystem;
use domfs::filesystem::inode::ROOT_INO;
use domfs::filesystem::meta::FsSuper;
use domfs::store::{BlockStore, StoreOptions};
use domfs::types::{BLOCK_SIZE, LogicalBlock};
use serde_json::Value;

fn open_to_all(dir: &Path) {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// `domfs audit --key-file KEY VOLUME ARGS…`.
fn audit(vol: &Volume, args: &[&str]) -> Output {
    let mut all = vec!["audit", "--key-file", path_str(&vol.key)];
    all.extend_from_slice(args);
    all.push(path_str(&vol.path));
    domfs(&all)
}

/// The `--json` lines of `domfs audit`, which must succeed.
fn entries(vol: &Volume, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = audit(vol, &all);
    assert!(
        out.status.success(),
        "domfs audit {args:?}: {}",
        text(&out.stderr)
    );
    json_lines(&out)
}

fn json_lines(out: &Output) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

/// (op, uid, mode) of each entry, in the order given.
fn summary(entries: &[Value]) -> Vec<(String, u64, String)> {
    entries
        .iter()
        .map(|e| {
            (
                e["op"].as_str().expect("op").to_string(),
                e["uid"].as_u64().expect("uid"),
                e["mode"].as_str().expect("mode").to_string(),
            )
        })
        .collect()
}

fn key_of(vol: &Volume) -> DomainKey {
    DomainKey::parse_key_file(&fs::read(&vol.key).expect("key file")).expect("key")
}

fn read_only_store(vol: &Volume) -> BlockStore {
    let dev = FileDevice::open(&vol.path, Access::ReadOnly).expect("open volume");
    BlockStore::open(Arc::new(dev), &key_of(vol), StoreOptions::read_only()).expect("store")
}

/// Flips one bit of physical block `phys` of the container.
fn flip(vol: &Volume, phys: u64, within: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&vol.path)
        .expect("open container");
    let at = phys * BLOCK_SIZE as u64 + within;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, at).expect("read");
    file.write_all_at(&[byte[0] ^ 0x10], at).expect("write");
    file.sync_all().expect("sync");
}

#[test]
fn the_viewing_history_names_who_opened_what_newest_first() {
    fuse_available();
    let vol = Volume::new();
    open_to_all(vol.dir.path());
    let mp = vol.mountpoint("m");
    open_to_all(&mp);
    let started = std::time::SystemTime::now();
    let m = vol.mount(&mp, &["--allow-other"]);
    open_to_all(&mp);
    let notes = m.path("notes.txt");
    fs::write(&notes, b"allergies: penicillin\n").expect("root writes");
    fs::set_permissions(&notes, fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "cat",
        ])
        .arg(&notes)
        .output()
        .expect("setpriv cat");
    assert!(out.status.success(), "cat: {}", text(&out.stderr));
    assert_eq!(out.stdout, b"allergies: penicillin\n");
    let rm = Command::new("rm").arg(&notes).status().expect("rm");
    assert!(rm.success(), "root deletes");
    // Deleted, not destroyed: one hidden version, deleted by root's rm.
    let hidden = |mp: &std::path::Path| {
        let out = domfs(&["hidden", "list", "--json", path_str(mp)]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        json_lines(&out)
    };
    let versions = hidden(&mp);
    assert_eq!(versions.len(), 1, "{versions:#?}");
    let v = &versions[0];
    assert_eq!(
        (
            &v["path"],
            &v["version"],
            &v["event"],
            &v["uid"],
            &v["process"]
        ),
        (
            &Value::from("notes.txt"),
            &Value::from(1),
            &Value::from("unlink"),
            &Value::from(0),
            &Value::from("rm")
        ),
        "{v}"
    );
    assert_eq!(v["size"], 22);
    let out = domfs(&["hidden", "restore", path_str(&mp), "notes.txt"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        fs::read(&notes).expect("restored"),
        b"allergies: penicillin\n"
    );
    assert!(
        hidden(&mp).is_empty(),
        "the restored version is still listed"
    );
    m.unmount();

    let all = entries(&vol, &[]);
    let of_notes: Vec<Value> = all
        .iter()
        .filter(|e| e["path"] == "/notes.txt")
        .cloned()
        .collect();
    assert_eq!(
        summary(&of_notes),
        [
            ("open".into(), 0, "r".into()),
            ("restore".into(), 0, "".into()),
            ("hide".into(), 0, "".into()),
            ("open".into(), 65534, "r".into()),
            ("setattr".into(), 0, "".into()),
            ("create".into(), 0, "w".into()),
        ],
        "{all:#?}"
    );
    assert_eq!(of_notes[1]["process"], "domfs", "the restore is the CLI's");
    assert_eq!(of_notes[2]["process"], "rm", "the delete is rm's");
    let open = &of_notes[3];
    assert_eq!(open["process"], "cat");
    assert_eq!(open["user"], "nobody");
    assert_eq!(open["gid"], 65534);
    assert!(open["pid"].as_u64().expect("pid") > 0);
    assert_eq!(open["result"], "ok");
    assert!(open["inode"].as_u64().expect("inode") > ROOT_INO);
    let host = fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    assert_eq!(open["host"], host.trim());
    assert!(
        of_notes[4]["detail"]
            .as_str()
            .expect("detail")
            .contains("mode=0644")
    );
    for field in [
        "time", "uid", "user", "gid", "pid", "process", "host", "inode", "path", "op", "mode",
        "result",
    ] {
        assert!(open.get(field).is_some(), "no {field} in {open}");
    }
    // Newest first, from the unmount back to the mount.
    let seqs: Vec<u64> = all
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "{seqs:?}");
    assert_eq!(all[0]["op"], "unmount");
    assert_eq!(all.last().expect("entries")["op"], "mount");

    // Filters.
    assert_eq!(
        summary(&entries(&vol, &["--path", "/notes.txt"])),
        summary(&of_notes)
    );
    let nobody = entries(&vol, &["--user", "65534"]);
    assert_eq!(summary(&nobody), [("open".into(), 65534, "r".into())]);
    assert_eq!(
        summary(&entries(&vol, &["--user", "nobody"])),
        summary(&nobody)
    );
    assert!(entries(&vol, &["--since", "2999-01-01T00:00:00Z"]).is_empty());
    assert_eq!(entries(&vol, &["--since", "1h"]).len(), all.len());
    let since_start = format!("{}s", started.elapsed().expect("clock").as_secs() + 2);
    assert_eq!(entries(&vol, &["--since", &since_start]).len(), all.len());
    let out = audit(&vol, &["--since", "yesterday-ish"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // The text table and FHIR.
    let out = audit(&vol, &["--path", "/notes.txt"]);
    assert!(out.status.success());
    let table = text(&out.stdout);
    assert!(
        table.contains("nobody(65534)") && table.contains("cat["),
        "{table}"
    );
    let out = audit(&vol, &["--fhir", "--user", "65534"]);
    assert!(out.status.success());
    let fhir = json_lines(&out);
    assert_eq!(fhir.len(), 1);
    assert_eq!(fhir[0]["resourceType"], "AuditEvent");
    assert_eq!(fhir[0]["action"], "R");
    assert_eq!(fhir[0]["entity"][0]["what"]["display"], "/notes.txt");

    let out = audit(&vol, &["--verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("intact"));
    vol.fsck();
}

#[test]
fn an_fsynced_write_has_its_open_in_the_log_after_kill_9() {
    fuse_available();
    let vol = Volume::new();
    let mp = vol.mountpoint("m");
    let m = vol.mount(&mp, &[]);
    let chart = m.path("chart.txt");
    fs::write(&chart, b"v1\n").expect("create");
    {
        let mut f = OpenOptions::new().write(true).open(&chart).expect("open w");
        f.write_all(b"v2\n").expect("write");
        f.sync_all().expect("fsync");
    }
    let pid = daemon_pid(&mp);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    assert!(
        wait_until(Duration::from_secs(10), || !Path::new(&format!(
            "/proc/{pid}"
        ))
        .exists()),
        "the daemon is still there"
    );
    let out = domfs(&["unmount", path_str(&mp)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut m = m;
    m.live = false;

    let found = |vol: &Volume| {
        entries(vol, &["--path", "/chart.txt"])
            .iter()
            .any(|e| e["op"] == "open" && e["mode"] == "w" && e["uid"] == 0)
    };
    assert!(
        found(&vol),
        "the open of the fsync'ed write is not in the log"
    );
    // And after a remount.
    let m = vol.mount(&mp, &[]);
    assert_eq!(fs::read(m.path("chart.txt")).expect("read"), b"v2\n");
    m.unmount();
    assert!(found(&vol));
    let out = audit(&vol, &["--verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

#[test]
fn a_flipped_byte_in_the_log_fails_verify_and_is_recorded_at_the_next_mount() {
    fuse_available();
    let vol = Volume::new();
    let mp = vol.mountpoint("m");
    let m = vol.mount(&mp, &[]);
    fs::write(m.path("a.txt"), b"a").expect("write");
    assert_eq!(fs::read(m.path("a.txt")).expect("read"), b"a");
    m.unmount();
    assert_eq!(audit(&vol, &["--verify"]).status.code(), Some(0));

    let phys = {
        let store = read_only_store(&vol);
        let mut block = [0u8; BLOCK_SIZE];
        store.read(LogicalBlock(0), &mut block).expect("read");
        let sb = FsSuper::decode(&block).expect("decode").expect("formatted");
        let logical = sb.audit.map.get(&store, 0).expect("map").expect("mapped");
        store
            .locate(LogicalBlock(logical))
            .expect("locate")
            .expect("stored")
            .0
    };
    flip(&vol, phys, 77);

    let out = audit(&vol, &["--verify"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stdout));
    let said = text(&out.stdout);
    assert!(said.contains("first bad entry: entry 1 "), "{said}");
    assert!(said.contains("does not verify"), "{said}");
    // Reading it fails the same way.
    let out = audit(&vol, &["--json"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(text(&out.stderr).contains("does not verify"));

    // The next mount records the damage (and goes on writing after it).
    let m = vol.mount(&mp, &[]);
    m.unmount();
    let out = audit(&vol, &["--json"]);
    assert_eq!(out.status.code(), Some(4));
    let after = json_lines(&out);
    let ops: Vec<&str> = after
        .iter()
        .map(|e| e["op"].as_str().expect("op"))
        .collect();
    assert_eq!(ops, ["unmount", "mount", "integrity-error"], "{after:#?}");
    assert_eq!(after[2]["path"], "(audit log)");
    assert_eq!(after[2]["result"], "EIO");
    assert_eq!(audit(&vol, &["--verify"]).status.code(), Some(4));
}

#[test]
fn a_block_that_does_not_verify_is_recorded_with_the_files_path() {
    fuse_available();
    let vol = Volume::new();
    let mp = vol.mountpoint("m");
    let m = vol.mount(&mp, &[]);
    fs::create_dir(m.path("ward")).expect("mkdir");
    fs::write(m.path("ward/record.txt"), vec![b'r'; 8192]).expect("write");
    m.unmount();

    let phys = {
        let store = Arc::new(read_only_store(&vol));
        let fs = Filesystem::open(store.clone(), true).expect("filesystem");
        let ward = fs.lookup(ROOT_INO, b"ward").expect("ward");
        let file = fs.lookup(ward.ino, b"record.txt").expect("record");
        let logical = file
            .inode
            .map
            .get(&*store, 1)
            .expect("map")
            .expect("mapped");
        store
            .locate(LogicalBlock(logical))
            .expect("locate")
            .expect("stored")
            .0
    };
    flip(&vol, phys, 5);

    let m = vol.mount(&mp, &[]);
    let err = fs::read(m.path("ward/record.txt")).expect_err("a damaged block is an error");
    assert_eq!(err.raw_os_error(), Some(5), "EIO");
    m.unmount();

    let bad: Vec<Value> = entries(&vol, &["--path", "/ward"])
        .into_iter()
        .filter(|e| e["op"] == "integrity-error")
        .collect();
    assert!(!bad.is_empty());
    assert_eq!(bad[0]["path"], "/ward/record.txt");
    assert_eq!(bad[0]["result"], "EIO");
    assert_eq!(bad[0]["uid"], 0);
    assert!(
        bad[0]["detail"]
            .as_str()
            .expect("detail")
            .contains("does not verify")
    );
    // The log itself is intact: it records the damage, it is not damaged.
    assert_eq!(audit(&vol, &["--verify"]).status.code(), Some(0));
}

#[test]
fn a_live_mount_is_read_through_its_daemon_by_root_only() {
    fuse_available();
    let vol = Volume::new();
    let mp = vol.mountpoint("m");
    let m = vol.mount(&mp, &[]);
    std::fs::write(mp.join("live.txt"), b"seen").expect("write");
    // Through the daemon's control socket: the entries not yet committed are included.
    let out = domfs(&["audit", "--json", "--path", "/live.txt", path_str(&mp)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\"op\":\"create\""),
        "{}",
        text(&out.stdout)
    );
    let out = domfs(&["audit", "--verify", path_str(&mp)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Anyone else is refused by the daemon (the socket is root's).
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(domfs_bin())
        .args(["audit", path_str(&mp)])
        .output()
        .expect("setpriv");
    assert!(!out.status.success(), "nobody read the audit trail");
    // A volume mounted read-write is not read from under its daemon.
    let out = audit(&vol, &[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("mounted read-write"));
    m.unmount();
    // Without its key, nothing can be read.
    let out = domfs(&["audit", path_str(&vol.path)]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--key-file"));
}

#[test]
fn the_benchmark_switch_turns_auditing_off_on_key_file_volumes_only() {
    fuse_available();
    let vol = Volume::new();
    let mp = vol.mountpoint("m");
    let out = Command::new(domfs_bin())
        .args(vol.mount_args(&mp, &[]))
        .env("DOMFS_BENCH_NO_AUDIT", "1")
        .stdin(Stdio::null())
        .output()
        .expect("mount");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("AUDITING IS OFF"),
        "not said loudly: {}",
        text(&out.stderr)
    );
    let m = Mount {
        mountpoint: mp.clone(),
        live: true,
    };
    fs::write(m.path("x"), b"x").expect("write");
    let _ = File::open(m.path("x")).expect("open");
    m.unmount();
    assert!(entries(&vol, &[]).is_empty());
}

/// A truncation that keeps what it cuts is a hide in the trail (besides its setattr), by
/// the process that cut: `truncate -s` and a shell's `>` (O_TRUNC) alike.
#[test]
fn a_kept_cut_is_a_hide_entry() {
    fuse_available();
    let vol = Volume::new();
    let mp = vol.mountpoint("m");
    let m = vol.mount(&mp, &[]);
    fs::write(m.path("lab.txt"), vec![b'7'; 10_000]).expect("write");
    fs::write(m.path("plan.txt"), b"old plan").expect("write");
    for script in ["truncate -s 100 lab.txt", ": > plan.txt"] {
        let out = Command::new("sh")
            .args(["-c", script])
            .current_dir(&mp)
            .output()
            .expect("sh");
        assert!(out.status.success(), "{script}: {}", text(&out.stderr));
    }
    m.unmount();
    let hides: Vec<Value> = entries(&vol, &[])
        .into_iter()
        .filter(|e| e["op"] == "hide")
        .collect();
    assert_eq!(hides.len(), 2, "{hides:#?}");
    let by_path = |p: &str| {
        hides
            .iter()
            .find(|e| e["path"] == p)
            .unwrap_or_else(|| panic!("no hide of {p}: {hides:#?}"))
    };
    let lab = by_path("/lab.txt");
    assert_eq!(lab["process"], "truncate");
    assert!(
        lab["detail"]
            .as_str()
            .expect("detail")
            .starts_with("truncate to 100: hidden version id "),
        "{lab}"
    );
    let plan = by_path("/plan.txt");
    assert_eq!(plan["process"], "sh");
    assert!(
        plan["detail"]
            .as_str()
            .expect("detail")
            .starts_with("truncate to 0: "),
        "{plan}"
    );
}
