//! What one audited open costs the daemon, without FUSE and the kernel around it: the
//! entry built (user and process names from their caches, the path from the name cache)
//! and queued, with the log writes it leads to (a queue past 1 MiB goes into the log file
//! at the next change) amortized in; and the encoding and MAC of one entry alone.
//! `bench/audit-cost.sh` measures the same through a mount, against auditing off.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use domfs::audit::{AccessMode, AuditOp, AuditRecord, ChainHead, seal_entries};
use domfs::crypto::{DomainKey, MacKey};
use domfs::device::{Access, FileDevice};
use domfs::filesystem::inode::{ROOT_INO, S_IFREG};
use domfs::filesystem::{Caller, Filesystem};
use domfs::format::header::KeyMode;
use domfs::fuse::audit::Auditor;
use domfs::store::{BlockStore, StoreOptions};
use domfs::types::VolumeId;
use domfs::volume::{CreateOptions, create_volume};

fn open_fs(dir: &tempfile::TempDir) -> Filesystem {
    let path = dir.path().join("bench.vol");
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(1 << 30).expect("size");
    let key = DomainKey::from_bytes(&[7u8; 32]).expect("key");
    let dev = FileDevice::open(&path, Access::ReadWrite).expect("open");
    create_volume(
        &dev,
        CreateOptions {
            meta: Vec::new(),
            key_mode: KeyMode::KeyFile,
        },
        Some(&key),
    )
    .expect("create volume");
    let store = BlockStore::open(
        Arc::new(dev),
        &key,
        StoreOptions {
            auto_commit: false,
            ..StoreOptions::default()
        },
    )
    .expect("store");
    Filesystem::open(Arc::new(store), false).expect("filesystem")
}

fn bench_audit(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = open_fs(&dir);
    let me = Caller {
        uid: 1000,
        gid: 100,
        pid: std::process::id(),
    };
    let ward = fs.mkdir(ROOT_INO, b"ward-3", 0o755, me).expect("mkdir");
    let file = fs
        .mknod(ward.ino, b"patient-0042.txt", S_IFREG | 0o600, 0, me)
        .expect("create");
    fs.remember_name(ROOT_INO, b"ward-3", ward.ino);
    fs.remember_name(ward.ino, b"patient-0042.txt", file.ino);
    let auditor = Auditor::new();

    let mut group = c.benchmark_group("audit");
    group.sample_size(30);
    group.measurement_time(std::time::Duration::from_secs(4));
    group.warm_up_time(std::time::Duration::from_secs(1));

    let mut opens = 0u64;
    group.bench_function("open_entry_queued", |b| {
        b.iter(|| {
            let record = AuditRecord {
                inode: file.ino,
                path: fs.path_of(file.ino).unwrap_or_default(),
                mode: AccessMode::Read,
                ..auditor.record(me.uid, me.gid, me.pid, AuditOp::Open)
            };
            fs.audit(record).expect("audit");
            opens += 1;
            // A commit now and then, as fsyncs and the 5-second committer do.
            if opens.is_multiple_of(50_000) {
                fs.sync().expect("sync");
            }
        });
    });

    let key = MacKey::new(&[9u8; 32]);
    let volume = VolumeId([1u8; 16]);
    let record = AuditRecord {
        inode: file.ino,
        path: "/ward-3/patient-0042.txt".into(),
        mode: AccessMode::Read,
        ..auditor.record(me.uid, me.gid, me.pid, AuditOp::Open)
    };
    let mut head = ChainHead::default();
    let mut out = Vec::with_capacity(1 << 20);
    group.bench_function("seal_one_entry", |b| {
        b.iter(|| {
            if out.len() > (1 << 20) {
                out.clear();
            }
            seal_entries(&key, &volume, &mut head, [record.clone()], &mut out);
        });
    });
    group.finish();
    fs.sync().expect("final sync");
}

criterion_group!(benches, bench_audit);
criterion_main!(benches);
