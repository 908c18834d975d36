//! PostgreSQL's DROP TABLE on a domfs mount leaves every file of the dropped table as a
//! hidden version whose bytes equal the file as it was just before the DROP.
//!
//! The table (a primary key, a TOAST table with data, a few MiB of rows, vacuumed so
//! that its free-space map and visibility map exist) is flushed with a CHECKPOINT; then
//! every file of every relation the DROP removes (heap, its index, the TOAST table and
//! its index: main fork, segments, `_fsm`, `_vm`) is copied through the mount, and the
//! table is dropped. PostgreSQL truncates a main fork to 0 bytes at commit and unlinks it
//! at the next checkpoint; the other forks are unlinked at once. Then, through `domfs
//! hidden show` on the live mount and again on the unmounted volume (`--key-file`), some
//! hidden version of each of those paths equals its copy byte for byte; one version is
//! brought back with `domfs hidden restore --to`; `domfs audit` has the postgres
//! process's hide (and truncating setattr) entries for those paths; `domfs fsck` passes.
//!
//! Needs root, /dev/fuse and PostgreSQL (scripts/install-deps), as in CI: missing tools
//! fail the test, it never skips. `--nocapture` shows the versions seen and the timing.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use common::mount::*;
use common::postgres::*;
use serde_json::Value;

/// Rows of the table (about 8 MiB of heap).
const ROWS: u32 = 60_000;
/// Rows with a note big enough (and random enough) to be stored out of line, in TOAST.
const TOASTED_ROWS: u32 = 200;

/// A fresh volume with the retention README suggests under PostgreSQL: keep-all (the
/// default) except the WAL and temporary files.
fn postgres_volume() -> Volume {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("k");
    let path = dir.path().join("v.vol");
    let out = domfs(&["-q", "key", "new", path_str(&key)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = domfs(&[
        "-q",
        "create",
        "--size",
        "1G",
        "--no-keep",
        "pg_wal/*",
        "--no-keep",
        "pgsql_tmp*",
        "--key-file",
        path_str(&key),
        path_str(&path),
    ]);
    assert!(out.status.success(), "domfs create: {}", text(&out.stderr));
    let header = domfs(&["header", "show", path_str(&path)]);
    assert!(header.status.success(), "{}", text(&header.stderr));
    let header = text(&header.stdout);
    assert!(
        header.contains("keep-all") && header.contains("pg_wal/*"),
        "the header does not show the retention asked for:\n{header}"
    );
    Volume { dir, key, path }
}

/// `domfs hidden` on a live mount (through its daemon) or on an unmounted volume.
struct Hidden<'a> {
    target: &'a Path,
    key_file: Option<&'a Path>,
    what: &'static str,
}

impl<'a> Hidden<'a> {
    fn live(mountpoint: &'a Path) -> Self {
        Self {
            target: mountpoint,
            key_file: None,
            what: "live mount",
        }
    }

    fn offline(vol: &'a Volume) -> Self {
        Self {
            target: &vol.path,
            key_file: Some(&vol.key),
            what: "unmounted volume",
        }
    }

    fn run(&self, args: &[&str]) -> Vec<u8> {
        let mut all = vec!["hidden", args[0], path_str(self.target)];
        all.extend_from_slice(&args[1..]);
        if let Some(key) = self.key_file {
            all.extend(["--key-file", path_str(key)]);
        }
        let out = domfs(&all);
        assert!(
            out.status.success(),
            "domfs {all:?} ({}) failed ({}): {}",
            self.what,
            out.status,
            text(&out.stderr)
        );
        out.stdout
    }

    /// Every hidden version, newest first (`--json`).
    fn list(&self) -> Vec<Value> {
        text(&self.run(&["list", "--json"]))
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect()
    }

    fn show(&self, path: &str, version: u64) -> Vec<u8> {
        self.run(&["show", path, "--version", &version.to_string()])
    }
}

/// One file of the dropped table: its path inside the volume and its bytes just before
/// the DROP (after a CHECKPOINT).
struct Before {
    relation: String,
    path: String,
    bytes: Vec<u8>,
}

impl Before {
    /// The first segment of a main fork (`16384`, not `16384.1` or `16384_fsm`): the one
    /// file PostgreSQL unlinks only at the next checkpoint.
    fn unlinked_at_checkpoint(&self) -> bool {
        let name = self.path.rsplit('/').next().unwrap_or_default();
        name.bytes().all(|b| b.is_ascii_digit())
    }
}

/// (event, size, cut_at) of each version, in the order given.
fn events(versions: &[&Value]) -> Vec<(String, u64, Option<u64>)> {
    versions
        .iter()
        .map(|v| {
            (
                str_of(v, "event").to_owned(),
                u64_of(v, "size"),
                v["cut_at"].as_u64(),
            )
        })
        .collect()
}

/// Where `a` and `b` first differ, and in how many 8 KiB pages (for a failure message).
fn difference(a: &[u8], b: &[u8]) -> String {
    if a.len() != b.len() {
        return format!("{} bytes instead of {}", a.len(), b.len());
    }
    let first = a.iter().zip(b).position(|(x, y)| x != y);
    let pages = a
        .chunks(8192)
        .zip(b.chunks(8192))
        .filter(|(x, y)| x != y)
        .count();
    format!("first difference at byte {first:?}, {pages} pages of 8 KiB differ")
}

fn str_of<'v>(v: &'v Value, key: &str) -> &'v str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key} in {v}"))
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key} in {v}"))
}

/// The versions of `path` in `list`, as listed.
fn versions_of<'v>(list: &'v [Value], path: &str) -> Vec<&'v Value> {
    list.iter().filter(|v| str_of(v, "path") == path).collect()
}

/// "event size [cut_at] [open]" of each version, for the log and the failure messages.
fn describe(versions: &[&Value]) -> String {
    versions
        .iter()
        .map(|v| {
            let mut s = format!(
                "v{} {} {} bytes",
                u64_of(v, "version"),
                str_of(v, "event"),
                u64_of(v, "size")
            );
            if let Some(cut) = v["cut_at"].as_u64() {
                s += &format!(" cut at {cut}");
            }
            if v["open"].as_bool() == Some(true) {
                s += " (open)";
            }
            s += &format!(" by {}/{}", str_of(v, "process"), u64_of(v, "uid"));
            s
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// For every copied file: some hidden version of its path, read through `source`, equals
/// the copy byte for byte, and it was hidden by a postgres process. Returns, per path,
/// the version that matched.
fn assert_versions_match(
    source: &Hidden,
    copies: &[Before],
    postgres_uid: u64,
) -> BTreeMap<String, Value> {
    let list = source.list();
    let mut matched = BTreeMap::new();
    for copy in copies {
        let versions = versions_of(&list, &copy.path);
        eprintln!(
            "  {} {} ({}, {} bytes before the DROP): {}",
            source.what,
            copy.path,
            copy.relation,
            copy.bytes.len(),
            describe(&versions)
        );
        assert!(
            !versions.is_empty(),
            "{}: no hidden version of {} ({}, {} bytes before the DROP)",
            source.what,
            copy.path,
            copy.relation,
            copy.bytes.len()
        );
        let mut differences = Vec::new();
        for v in &versions {
            assert_eq!(
                (str_of(v, "process"), u64_of(v, "uid")),
                ("postgres", postgres_uid),
                "{}: version of {} not hidden by the postgres server: {v}",
                source.what,
                copy.path
            );
            let content = source.show(&copy.path, u64_of(v, "version"));
            assert_eq!(
                content.len() as u64,
                u64_of(v, "size"),
                "{}: `hidden show` of {} gives another size than `hidden list`: {v}",
                source.what,
                copy.path
            );
            if content == copy.bytes {
                matched.insert(copy.path.clone(), (*v).clone());
                break;
            }
            differences.push(format!(
                "v{} {}: {}",
                u64_of(v, "version"),
                str_of(v, "event"),
                difference(&content, &copy.bytes)
            ));
        }
        assert!(
            matched.contains_key(&copy.path),
            "{}: no hidden version of {} ({}) equals the file before the DROP: {differences:#?}",
            source.what,
            copy.path,
            copy.relation
        );
    }
    matched
}

#[test]
fn drop_table_leaves_its_files_as_hidden_versions() {
    if !fuse_available() {
        return;
    }
    let mut phases = Phases::new("pg_hidden");
    let bindir = postgres_bindir();
    postgres_tool(&bindir, "psql");
    let postgres_uid = u64::from(
        nix::unistd::User::from_name("postgres")
            .expect("look up the postgres user")
            .expect("no postgres user: install postgresql (scripts/install-deps)")
            .uid
            .as_raw(),
    );

    let vol = postgres_volume();
    let mp = vol.mountpoint("m");
    let cluster = PgCluster::on_mount(bindir, vol.dir.path(), &mp);
    let m = vol.mount(&mp, &["--allow-other"]);
    cluster.create_data();
    cluster.initdb();
    let server = cluster.start();
    phases.done("create (keep-all, no-keep pg_wal/* pgsql_tmp*), mount, initdb, start");

    // Autovacuum stays away from the table: once the CHECKPOINT below has flushed it,
    // nothing writes its pages before the DROP.
    cluster.psql(&format!(
        "CREATE TABLE charts (id int PRIMARY KEY, patient text NOT NULL, note text NOT NULL) \
             WITH (autovacuum_enabled = false, toast.autovacuum_enabled = false);
         INSERT INTO charts \
             SELECT i, 'patient-' || lpad(i::text, 6, '0'), repeat(md5(i::text), 3) \
             FROM generate_series(1, {ROWS}) i;
         UPDATE charts SET note = \
             (SELECT string_agg(md5(id::text || '/' || j::text), '') \
              FROM generate_series(1, 200) j) \
             WHERE id <= {TOASTED_ROWS};
         DELETE FROM charts WHERE id % 10 = 0;"
    ));
    // Its own command: VACUUM cannot run inside the transaction of a multi-statement -c.
    cluster.psql("VACUUM charts");
    let summary = cluster.psql(
        "SELECT count(*), pg_relation_size('charts'), \
                pg_relation_size('charts', 'fsm'), pg_relation_size('charts', 'vm'), \
                pg_relation_size(reltoastrelid) \
         FROM charts, pg_class WHERE pg_class.oid = 'charts'::regclass \
         GROUP BY reltoastrelid",
    );
    let expected_rows = ROWS - ROWS / 10;
    let sizes: Vec<u64> = summary
        .split('|')
        .map(|s| s.parse().expect("a number"))
        .collect();
    assert_eq!(sizes[0], u64::from(expected_rows), "rows: {summary}");
    assert!(
        sizes[1] > 4 << 20 && sizes[2] > 0 && sizes[3] > 0 && sizes[4] > 0,
        "the table should have a few MiB of heap, a free-space map, a visibility map and \
         TOAST data (count, heap, fsm, vm, toast): {summary}"
    );

    // Every relation the DROP removes, and its file path (relative to the data directory).
    let relations: Vec<(String, String)> = cluster
        .psql(
            "WITH t AS (SELECT oid, reltoastrelid FROM pg_class WHERE oid = 'charts'::regclass) \
             SELECT c.relname, pg_relation_filepath(c.oid) FROM pg_class c, t \
             WHERE c.oid IN (t.oid, t.reltoastrelid) \
                OR c.oid IN (SELECT indexrelid FROM pg_index \
                             WHERE indrelid IN (t.oid, t.reltoastrelid)) \
             ORDER BY 1",
        )
        .lines()
        .map(|l| {
            let (name, path) = l.split_once('|').expect("relname|path");
            (name.to_owned(), path.to_owned())
        })
        .collect();
    assert_eq!(
        relations.len(),
        4,
        "charts, charts_pkey, its TOAST table and TOAST index: {relations:?}"
    );

    // Flush the table, then copy every file of those relations through the mount: main
    // fork, any further segments (N.1, …), and the other forks (N_fsm, N_vm, …).
    cluster.psql("CHECKPOINT");
    let mut copies = Vec::new();
    for (relation, relpath) in &relations {
        let rel = Path::new(relpath);
        let node = rel.file_name().expect("file name").to_string_lossy();
        let dir = cluster.data.join(rel.parent().expect("directory"));
        let mut names: Vec<String> = fs::read_dir(&dir)
            .expect("read the database directory")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.as_str() == node
                    || n.strip_prefix(node.as_ref())
                        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('_'))
            })
            .collect();
        names.sort();
        assert!(
            names.contains(&node.to_string()),
            "{relation}: {relpath} is missing ({names:?})"
        );
        for name in names {
            let file = dir.join(&name);
            let path = file
                .strip_prefix(&mp)
                .expect("inside the mount")
                .to_string_lossy()
                .into_owned();
            copies.push(Before {
                relation: relation.clone(),
                bytes: fs::read(&file).unwrap_or_else(|e| panic!("read {path}: {e}")),
                path,
            });
        }
    }
    let heap_node = &relations
        .iter()
        .find(|(r, _)| r == "charts")
        .expect("charts")
        .1;
    let heap = format!("pgdata/{heap_node}");
    assert_eq!(
        copies
            .iter()
            .find(|c| c.path == heap)
            .map(|c| c.bytes.len() as u64),
        Some(sizes[1]),
        "the heap's main fork is pg_relation_size('charts') bytes"
    );
    for fork in ["", "_fsm", "_vm"] {
        assert!(
            copies.iter().any(|c| c.path == format!("{heap}{fork}")),
            "the heap has no {heap}{fork}"
        );
    }
    for copy in &copies {
        assert!(!copy.bytes.is_empty(), "{} is empty", copy.path);
    }
    let total: usize = copies.iter().map(|c| c.bytes.len()).sum();
    phases.done(&format!(
        "table of {expected_rows} rows, VACUUM, CHECKPOINT, copy {} files ({total} bytes)",
        copies.len()
    ));
    let before_drop: Vec<String> = Hidden::live(&mp)
        .list()
        .iter()
        .map(|v| str_of(v, "path").to_owned())
        .collect();
    for copy in &copies {
        assert!(
            !before_drop.contains(&copy.path),
            "{} has hidden versions before the DROP",
            copy.path
        );
    }

    // The DROP: at commit the main forks are truncated to 0 bytes (unlinked at the next
    // checkpoint), the other forks unlinked.
    cluster.psql("DROP TABLE charts");
    for copy in &copies {
        let left = fs::metadata(mp.join(&copy.path)).map(|m| m.len());
        if copy.unlinked_at_checkpoint() {
            assert_eq!(left.ok(), Some(0), "{} after the DROP", copy.path);
        } else {
            assert!(
                left.as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound),
                "{} is still there after the DROP: {left:?}",
                copy.path
            );
        }
    }
    // What PostgreSQL does (md.c, mdunlinkfork): it truncates every fork to 0 bytes
    // ("prevent other backends' fds from holding on to the disk space") and unlinks it,
    // except the main fork's first segment, whose unlink waits for the next checkpoint.
    // Each truncation keeps the whole file as a truncate version cut at 0; each unlink
    // keeps the empty file.
    let after_drop = Hidden::live(&mp).list();
    eprintln!("hidden versions right after the DROP:");
    for copy in &copies {
        let versions = versions_of(&after_drop, &copy.path);
        eprintln!("  {}: {}", copy.path, describe(&versions));
        let size = copy.bytes.len() as u64;
        let mut expected = vec![("truncate".to_owned(), size, Some(0))];
        if !copy.unlinked_at_checkpoint() {
            expected.insert(0, ("unlink".to_owned(), 0, None));
        }
        assert_eq!(
            events(&versions),
            expected,
            "hidden versions of {} right after the DROP",
            copy.path
        );
    }
    phases.done("DROP TABLE");

    cluster.psql("CHECKPOINT");
    for copy in &copies {
        assert!(
            !mp.join(&copy.path).exists(),
            "{} is still there after the CHECKPOINT",
            copy.path
        );
    }
    phases.done("CHECKPOINT (unlinks the main forks)");

    let after_checkpoint = Hidden::live(&mp).list();
    for copy in &copies {
        assert_eq!(
            events(&versions_of(&after_checkpoint, &copy.path)),
            [
                ("unlink".to_owned(), 0, None),
                ("truncate".to_owned(), copy.bytes.len() as u64, Some(0))
            ],
            "hidden versions of {} after the CHECKPOINT",
            copy.path
        );
    }

    eprintln!("hidden versions of the dropped table's files:");
    let live = assert_versions_match(&Hidden::live(&mp), &copies, postgres_uid);
    for (path, v) in &live {
        assert_eq!(
            str_of(v, "event"),
            "truncate",
            "{path}: the version holding the bytes"
        );
    }
    phases.done("every file equals a hidden version (hidden show on the live mount)");

    server.stop("fast");
    m.unmount();
    phases.done("stop postgres, unmount");

    let offline = assert_versions_match(&Hidden::offline(&vol), &copies, postgres_uid);
    assert_eq!(
        live, offline,
        "the versions that match differ between the live mount and the unmounted volume"
    );
    phases.done("every file equals a hidden version (hidden show on the unmounted volume)");

    // Restore the version holding the heap's bytes, beside the data directory.
    let m = vol.mount(&mp, &["--allow-other"]);
    let heap_version = &live[&heap];
    let heap_copy = copies.iter().find(|c| c.path == heap).expect("heap copy");
    let out = domfs(&[
        "hidden",
        "restore",
        path_str(&mp),
        &heap,
        "--version",
        &u64_of(heap_version, "version").to_string(),
        "--to",
        "restored-charts",
    ]);
    assert!(
        out.status.success(),
        "domfs hidden restore: {}",
        text(&out.stderr)
    );
    let restored = fs::read(m.path("restored-charts")).expect("read the restored file");
    assert!(
        restored == heap_copy.bytes,
        "the restored heap differs from the file before the DROP: {}",
        difference(&restored, &heap_copy.bytes)
    );
    assert!(
        restored.windows(14).any(|w| w == b"patient-012345"),
        "the restored heap does not hold row 12345"
    );
    let left = Hidden::live(&mp).list();
    assert!(
        versions_of(&left, &heap)
            .iter()
            .all(|v| v["id"] != heap_version["id"]),
        "the restored version is still listed as hidden"
    );
    m.unmount();
    phases.done("hidden restore --to restored-charts: byte for byte");

    // The audit trail: the postgres server hid each file (the main forks' truncation at
    // commit is a setattr to size 0), and the restore is recorded.
    let out = domfs(&[
        "audit",
        "--key-file",
        path_str(&vol.key),
        "--json",
        path_str(&vol.path),
    ]);
    assert!(out.status.success(), "domfs audit: {}", text(&out.stderr));
    let entries: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let by_postgres = |op: &str, path: &str| -> Vec<&Value> {
        entries
            .iter()
            .filter(|e| {
                e["op"] == op
                    && e["path"] == format!("/{path}").as_str()
                    && e["process"] == "postgres"
                    && e["user"] == "postgres"
                    && u64_of(e, "uid") == postgres_uid
                    && e["result"] == "ok"
            })
            .collect()
    };
    eprintln!("audit entries of the dropped table's files:");
    for copy in &copies {
        let mine: Vec<String> = entries
            .iter()
            .filter(|e| e["path"] == format!("/{}", copy.path).as_str())
            .map(|e| format!("{} {}", str_of(e, "op"), str_of(e, "detail")))
            .collect();
        eprintln!("  /{}: {mine:?}", copy.path);
        assert!(
            by_postgres("setattr", &copy.path)
                .iter()
                .any(|e| str_of(e, "detail").split(' ').any(|d| d == "size=0")),
            "no setattr size=0 entry by postgres for /{}",
            copy.path
        );
        assert!(
            !by_postgres("hide", &copy.path).is_empty(),
            "no hide entry by postgres for /{}; its entries: {:#?}",
            copy.path,
            entries
                .iter()
                .filter(|e| e["path"] == format!("/{}", copy.path).as_str())
                .collect::<Vec<_>>()
        );
    }
    assert!(
        entries.iter().any(|e| e["op"] == "restore"
            && e["result"] == "ok"
            && str_of(e, "detail").ends_with("to /restored-charts")),
        "the restore of /{heap} is not in the audit trail"
    );
    phases.done("domfs audit: hide entries by postgres");

    vol.fsck();
    phases.done("domfs fsck");
    assert_nothing_mounted_under(vol.dir.path());
}
