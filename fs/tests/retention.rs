//! The retention sweep of a mounted volume runs on a timer (the mount daemon's audit
//! committer), not only when an operation happens: versions past keep-for are freed on a
//! volume nobody writes to, and the purge is in the audit trail.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use common::TestVolume;
use domfs::audit::AuditOp;
use domfs::filesystem::hidden::Clock;
use domfs::filesystem::inode::{ROOT_INO, S_IFREG, Timestamp};
use domfs::filesystem::{Caller, Filesystem, FsOptions};
use domfs::format::retention::Retention;
use domfs::fuse::audit::spawn_audit_committer;

#[test]
fn an_idle_mount_frees_versions_past_keep_for() {
    let policy = Retention {
        keep_for: Some(86_400),
        no_keep: Vec::new(),
    };
    let vol = TestVolume::with_extensions(64 << 20, vec![policy.to_extension().expect("policy")]);
    // The test moves the filesystem's clock; the sweep reads no other.
    let ahead = Arc::new(AtomicI64::new(0));
    let clock: Clock = {
        let ahead = ahead.clone();
        Arc::new(move || {
            let now = Timestamp::now();
            Timestamp {
                secs: now.secs + ahead.load(Ordering::SeqCst),
                nanos: now.nanos,
            }
        })
    };
    let fs = Arc::new(
        Filesystem::open_with(
            Arc::new(vol.open()),
            false,
            FsOptions {
                clock: Some(clock),
                ..FsOptions::default()
            },
        )
        .expect("open"),
    );
    let who = Caller {
        uid: 0,
        gid: 0,
        pid: std::process::id(),
    };
    let e = fs
        .mknod(ROOT_INO, b"chart.txt", S_IFREG | 0o640, 0, who)
        .expect("create");
    fs.write(e.ino, 0, &[7u8; 20_000]).expect("write");
    fs.forget(e.ino, 1);
    fs.unlink(ROOT_INO, b"chart.txt", who).expect("unlink");
    fs.sync().expect("sync");

    let stop = Arc::new(AtomicBool::new(false));
    spawn_audit_committer(Arc::downgrade(&fs), stop.clone());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        fs.hidden_list(None).expect("list").len(),
        1,
        "a version younger than keep-for was freed"
    );

    // Two days pass with no operation on the volume.
    ahead.store(2 * 86_400, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fs.hidden_list(None).expect("list").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the version past keep-for was not freed without an operation"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The committer commits the sweep's audit entries on its own as well.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = fs.read_audit_log().expect("audit log");
        assert!(log.is_intact());
        if log
            .entries
            .iter()
            .any(|r| r.op == AuditOp::Purge && r.detail.starts_with("retention keep-for=1d"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the retention purge is not in the committed audit log: {:?}",
            log.entries
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    assert_eq!(fs.hidden_usage(), (0, 0));
    fs.sync().expect("sync");
    drop(fs);
    assert!(vol.fsck().is_clean(), "fsck after the sweep");
}
