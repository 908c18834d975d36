//! Real database servers on a domfs mount, run unchanged: the sqlite3 CLI (a database in
//! WAL mode and one in rollback-journal mode) and PostgreSQL (initdb, pgbench, a crash
//! with `pg_ctl -m immediate stop`, recovery, pg_amcheck). Every test starts what it needs
//! and stops it through guards, even when it fails; `domfs fsck` must pass at the end.
//!
//! Needs root, /dev/fuse, sqlite3 and PostgreSQL (scripts/install-deps), as in CI. Missing
//! tools fail the tests; they never skip. Run with `--nocapture` to see the timing of each
//! phase. The PostgreSQL harness (cluster, server guard, psql) is `common::postgres`.

mod common;

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::mount::*;
use common::postgres::*;

// ---------------------------------------------------------------------------------------
// SQLite
// ---------------------------------------------------------------------------------------

const SQLITE_ROWS: u64 = 100_000;
const SQLITE_BATCH: u64 = 1_000;

/// Runs the sqlite3 CLI on `db` with `script` on stdin; fails on any error (`-bail`) or
/// anything written to stderr. Returns stdout.
fn sqlite(db: &Path, script: &str) -> String {
    let mut cmd = Command::new("sqlite3");
    cmd.arg("-bail")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run sqlite3 (install it with scripts/install-deps): {e}")
    });
    let mut stdin = child.stdin.take().expect("stdin");
    let script = script.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
    let out = child.wait_with_output().expect("wait for sqlite3");
    let written = writer.join().expect("stdin writer");
    check(&out, &format!("sqlite3 on {}", db.display()), &cmd);
    written.expect("write the script to sqlite3");
    assert!(
        out.stderr.is_empty(),
        "sqlite3 on {} wrote to stderr:\n{}",
        db.display(),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The value column of row `id`: varying lengths, so rows spread over pages unevenly and
/// some overflow pages appear.
fn sqlite_value(id: u64) -> String {
    format!(
        "patient-{id:06}-{}",
        "abcdefghij".repeat((id % 23) as usize)
    ) + &"#".repeat(if id.is_multiple_of(997) { 5000 } else { 0 })
}

fn sqlite_key(id: u64) -> i64 {
    ((id * 7919) % 100_003) as i64
}

/// What the table must hold: per id, `Some((k, v))` or `None` once deleted; and the row
/// counts a concurrent reader may see, in the order the transactions commit them.
struct SqliteModel {
    rows: Vec<Option<(i64, String)>>,
    counts: Vec<u64>,
}

impl SqliteModel {
    fn new() -> Self {
        Self {
            rows: vec![None; SQLITE_ROWS as usize + 1],
            counts: vec![0],
        }
    }

    fn committed(&mut self) {
        let n = self.rows.iter().filter(|r| r.is_some()).count() as u64;
        if self.counts.last() != Some(&n) {
            self.counts.push(n);
        }
    }

    fn insert(&mut self, id: u64, k: i64, v: String) {
        if self.rows.len() <= id as usize {
            self.rows.resize(id as usize + 1, None);
        }
        self.rows[id as usize] = Some((k, v));
    }

    /// The answer `sqlite_check_sql` must give.
    fn expected(&self) -> String {
        let mut count = 0u64;
        let (mut sum_k, mut sum_idk, mut sum_len, mut upd) = (0i64, 0i64, 0i64, 0u64);
        for (id, row) in self.rows.iter().enumerate() {
            if let Some((k, v)) = row {
                count += 1;
                sum_k += k;
                sum_idk += id as i64 * k;
                sum_len += v.len() as i64;
                upd += u64::from(v.ends_with("-upd"));
            }
        }
        let v12345 = self.rows[12345].as_ref().map_or("", |(_, v)| v.as_str());
        format!("ok\n{count}|{sum_k}|{sum_idk}|{sum_len}|{upd}\n{v12345}\n")
    }
}

/// Checks structure and content: integrity, count, checksums, and one row by its key.
const SQLITE_CHECK: &str = "PRAGMA integrity_check;\n\
    SELECT count(*), sum(k), sum(id * k), sum(length(v)), \
    sum(v LIKE '%-upd') FROM t;\n\
    SELECT v FROM t WHERE id = 12345;\n";

/// Fills `db` (already created with table `t`) with 100,000 rows in transactions of
/// 1,000, then updates, deletes and a rolled-back transaction; returns what it holds.
fn sqlite_fill(db: &Path) -> SqliteModel {
    let mut model = SqliteModel::new();
    let mut script = String::with_capacity(16 << 20);
    script.push_str(".timeout 60000\nPRAGMA synchronous = FULL;\n");
    for batch in 0..SQLITE_ROWS / SQLITE_BATCH {
        script.push_str("BEGIN;\n");
        for id in batch * SQLITE_BATCH + 1..=(batch + 1) * SQLITE_BATCH {
            let (k, v) = (sqlite_key(id), sqlite_value(id));
            writeln!(script, "INSERT INTO t(id, k, v) VALUES ({id}, {k}, '{v}');").expect("format");
            model.insert(id, k, v);
        }
        script.push_str("COMMIT;\n");
        model.committed();
    }
    // Updates: 10% of the rows, in one transaction; then single-statement ones.
    script.push_str(
        "BEGIN;\nUPDATE t SET k = k * 3 + 1, v = v || '-upd' WHERE id % 10 = 3;\nCOMMIT;\n",
    );
    for (id, row) in model.rows.iter_mut().enumerate() {
        if id % 10 == 3
            && let Some((k, v)) = row
        {
            *k = *k * 3 + 1;
            v.push_str("-upd");
        }
    }
    for id in (5..SQLITE_ROWS).step_by(9_973) {
        writeln!(script, "UPDATE t SET k = -k WHERE id = {id};").expect("format");
        if let Some((k, _)) = &mut model.rows[id as usize] {
            *k = -*k;
        }
    }
    // Deletes: every 7th row, then a range.
    script.push_str("DELETE FROM t WHERE id % 7 = 0;\n");
    for (id, row) in model.rows.iter_mut().enumerate() {
        if id % 7 == 0 {
            *row = None;
        }
    }
    model.committed();
    script.push_str("DELETE FROM t WHERE id BETWEEN 50001 AND 50500;\n");
    for row in &mut model.rows[50_001..=50_500] {
        *row = None;
    }
    model.committed();
    // A big transaction rolled back: none of it may remain.
    script.push_str(
        "BEGIN;\nUPDATE t SET k = 0, v = 'gone';\nDELETE FROM t WHERE id < 60000;\n\
         INSERT INTO t(id, k, v) VALUES (1000001, 1, 'rolled back');\nROLLBACK;\n",
    );
    let out = sqlite(db, &script);
    assert_eq!(out, "", "unexpected output of the fill script");
    model
}

/// Reads the row count of `t` over and over, in fresh sqlite3 processes, while `stop` is
/// unset; returns the counts seen.
fn sqlite_reader(db: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let out = Command::new("sqlite3")
                .arg("-bail")
                .arg(&db)
                .arg(".timeout 60000")
                .arg("SELECT count(*) FROM t;")
                .stdin(Stdio::null())
                .output()
                .expect("run sqlite3 reader");
            assert!(
                out.status.success() && out.stderr.is_empty(),
                "concurrent sqlite3 reader failed ({}): {}",
                out.status,
                text(&out.stderr)
            );
            let n: u64 = text(&out.stdout).trim().parse().expect("a count");
            seen.push(n);
            std::thread::sleep(Duration::from_millis(50));
        }
        seen
    })
}

/// One database in `mode` ("wal" or "delete"): created, filled while a second process
/// reads it, checked. Returns the model of its content.
fn sqlite_database(db: &Path, mode: &str, phases: &mut Phases) -> SqliteModel {
    let out = sqlite(
        db,
        &format!(
            "PRAGMA journal_mode = {mode};\n\
             CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v TEXT NOT NULL);\n\
             CREATE INDEX t_k ON t(k);\n"
        ),
    );
    assert_eq!(out.trim(), mode, "journal mode not set");

    let stop = Arc::new(AtomicBool::new(false));
    let reader = sqlite_reader(db.to_path_buf(), stop.clone());
    let filled = std::panic::catch_unwind(|| sqlite_fill(db));
    stop.store(true, Ordering::Relaxed);
    let seen = reader.join();
    let model = filled.unwrap_or_else(|e| std::panic::resume_unwind(e));
    let seen = seen.unwrap_or_else(|e| std::panic::resume_unwind(e));
    let mut distinct = seen.clone();
    distinct.dedup();
    phases.done(&format!(
        "sqlite {mode}: 100,000 rows in 100 transactions, updates, deletes, a rollback \
         ({} concurrent reads saw {} states)",
        seen.len(),
        distinct.len()
    ));
    // Every count seen is that of a committed state, and states come in commit order.
    assert!(!seen.is_empty(), "the concurrent reader never ran");
    let states: Vec<usize> = seen
        .iter()
        .map(|n| {
            model.counts.iter().position(|c| c == n).unwrap_or_else(|| {
                panic!("a concurrent reader saw {n} rows: part of a transaction ({seen:?})")
            })
        })
        .collect();
    assert!(
        states.is_sorted(),
        "a concurrent reader saw commits out of order: {seen:?}"
    );

    assert_eq!(
        sqlite(db, SQLITE_CHECK),
        model.expected(),
        "{mode} database"
    );
    let files: Vec<String> = fs::read_dir(db.parent().expect("parent"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let name = db.file_name().expect("name").to_string_lossy().into_owned();
    assert!(
        !files.contains(&format!("{name}-journal")),
        "a hot rollback journal was left behind: {files:?}"
    );
    phases.done(&format!("sqlite {mode}: integrity_check and checksums"));
    model
}

#[test]
fn sqlite_wal_and_rollback_journal_databases() {
    if !fuse_available() {
        return;
    }
    let mut phases = Phases::new("sqlite");
    let vol = Volume::new();
    let mp = vol.mountpoint("m");
    let m = vol.mount(&mp, &[]);
    phases.done("create and mount a volume");

    fs::create_dir(m.path("db")).expect("mkdir");
    let wal_db = m.path("db/wal.sqlite");
    let delete_db = m.path("db/journal.sqlite");
    let mut wal = sqlite_database(&wal_db, "wal", &mut phases);
    let mut delete = sqlite_database(&delete_db, "delete", &mut phases);

    m.unmount();
    phases.done("unmount");
    let m = vol.mount(&mp, &[]);
    phases.done("mount again");

    // Everything committed is there after the remount, and the databases stay writable.
    for (db, mode, model) in [
        (&wal_db, "wal", &mut wal),
        (&delete_db, "delete", &mut delete),
    ] {
        assert_eq!(
            sqlite(db, "PRAGMA journal_mode;").trim(),
            mode,
            "journal mode after the remount"
        );
        assert_eq!(
            sqlite(db, SQLITE_CHECK),
            model.expected(),
            "{mode} database after the remount"
        );
        let mut script = String::from("BEGIN;\n");
        for id in SQLITE_ROWS + 1..=SQLITE_ROWS + 10 {
            let (k, v) = (sqlite_key(id), sqlite_value(id));
            writeln!(script, "INSERT INTO t(id, k, v) VALUES ({id}, {k}, '{v}');").expect("format");
            model.insert(id, k, v);
        }
        script.push_str("COMMIT;\n");
        assert_eq!(sqlite(db, &script), "");
        assert_eq!(
            sqlite(db, SQLITE_CHECK),
            model.expected(),
            "{mode} database written after the remount"
        );
    }
    phases.done("check both databases after the remount, write more");

    m.unmount();
    let m = vol.mount(&mp, &["--read-only"]);
    for (db, mode, model) in [(&wal_db, "wal", &wal), (&delete_db, "delete", &delete)] {
        // A read-only mount: sqlite opens the databases read-only (WAL needs the -shm
        // file, which sqlite3 cannot create here, hence `immutable`).
        let uri = format!("file:{}?mode=ro&immutable=1", path_str(db));
        let out = run(
            Command::new("sqlite3").args(["-bail", &uri, SQLITE_CHECK]),
            "sqlite3 on the read-only mount",
        );
        assert_eq!(out, model.expected(), "{mode} database, read-only mount");
    }
    m.unmount();
    phases.done("check again on a read-only mount");

    vol.fsck();
    phases.done("domfs fsck");
    assert_nothing_mounted_under(vol.dir.path());
}

// ---------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------

/// The pgbench tables' row counts and balance sums (which pgbench keeps equal).
fn pgbench_state(cluster: &PgCluster) -> PgbenchState {
    let line = cluster.psql(
        "SELECT (SELECT count(*) FROM pgbench_accounts), \
                (SELECT count(*) FROM pgbench_branches), \
                (SELECT count(*) FROM pgbench_tellers), \
                (SELECT count(*) FROM pgbench_history), \
                (SELECT sum(abalance) FROM pgbench_accounts), \
                (SELECT sum(bbalance) FROM pgbench_branches), \
                (SELECT sum(tbalance) FROM pgbench_tellers), \
                (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
    );
    let v: Vec<i64> = line
        .split('|')
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("unexpected psql output {line:?}"))
        })
        .collect();
    assert_eq!(v.len(), 8, "unexpected psql output {line:?}");
    PgbenchState {
        accounts: v[0],
        branches: v[1],
        tellers: v[2],
        history: v[3],
        sum_abalance: v[4],
        sum_bbalance: v[5],
        sum_tbalance: v[6],
        sum_delta: v[7],
    }
}

#[derive(Debug, PartialEq, Eq)]
struct PgbenchState {
    accounts: i64,
    branches: i64,
    tellers: i64,
    history: i64,
    sum_abalance: i64,
    sum_bbalance: i64,
    sum_tbalance: i64,
    sum_delta: i64,
}

impl PgbenchState {
    /// pgbench's invariants: every transaction adds the same delta to one account, one
    /// teller, one branch and one history row.
    fn assert_consistent(&self, scale: i64) {
        assert_eq!(
            (self.accounts, self.branches, self.tellers),
            (100_000 * scale, scale, 10 * scale),
            "pgbench table sizes: {self:?}"
        );
        assert!(
            self.sum_abalance == self.sum_delta
                && self.sum_bbalance == self.sum_delta
                && self.sum_tbalance == self.sum_delta,
            "pgbench balances disagree: {self:?}"
        );
    }
}

/// The number pgbench reports in "number of transactions actually processed: N[/M]".
fn pgbench_processed(out: &str) -> i64 {
    let line = out
        .lines()
        .find(|l| l.starts_with("number of transactions actually processed:"))
        .unwrap_or_else(|| panic!("no transaction count in pgbench's output:\n{out}"));
    line.split(':')
        .nth(1)
        .and_then(|s| s.trim().split('/').next()?.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line:?}"))
}

const PGBENCH_SCALE: i64 = 10;

#[test]
fn postgresql_pgbench_survives_a_crash() {
    if !fuse_available() {
        return;
    }
    let mut phases = Phases::new("postgresql");
    let bindir = postgres_bindir();
    // Every client tool is there before anything starts.
    for tool in ["psql", "pgbench", "pg_amcheck"] {
        postgres_tool(&bindir, tool);
    }

    let vol = Volume::with_size("2G");
    let mp = vol.mountpoint("m");
    let cluster = PgCluster::on_mount(bindir, vol.dir.path(), &mp);

    let m = vol.mount(&mp, &["--allow-other"]);
    cluster.create_data();
    phases.done("create and mount a 2 GiB volume");

    cluster.initdb();
    phases.done("initdb");
    let server = cluster.start();
    phases.done("start");
    let init = run(
        cluster
            .tool("pgbench")
            .args(["-i", "-s", &PGBENCH_SCALE.to_string(), "-q"]),
        "pgbench -i",
    );
    phases.done(&format!("pgbench -i -s {PGBENCH_SCALE}"));
    let initial = pgbench_state(&cluster);
    initial.assert_consistent(PGBENCH_SCALE);
    assert_eq!(
        (initial.history, initial.sum_delta),
        (0, 0),
        "after pgbench -i:\n{init}"
    );

    let bench = run(
        cluster
            .tool("pgbench")
            .args(["-c", "4", "-j", "2", "-T", "20"]),
        "pgbench",
    );
    let processed = pgbench_processed(&bench);
    phases.done(&format!(
        "pgbench -c 4 -j 2 -T 20: {processed} transactions, {}",
        bench
            .lines()
            .find(|l| l.starts_with("tps"))
            .unwrap_or("(no tps line)")
    ));
    assert!(processed > 0, "pgbench committed nothing:\n{bench}");
    let recorded = pgbench_state(&cluster);
    recorded.assert_consistent(PGBENCH_SCALE);
    assert_eq!(
        recorded.history, processed,
        "history rows differ from the transactions pgbench counted: {recorded:?}"
    );

    // The crash: no shutdown checkpoint, the next start replays the WAL.
    server.stop("immediate");
    phases.done("pg_ctl -m immediate stop (crash)");
    let log_before = cluster.log_text().len();
    let server = cluster.start();
    let restart_log = cluster.log_text()[log_before..].to_owned();
    assert!(
        restart_log.contains("automatic recovery in progress")
            && restart_log.contains("database system is ready to accept connections"),
        "the restart after the crash did not recover:\n{restart_log}"
    );
    phases.done("start again: crash recovery");
    assert_eq!(
        pgbench_state(&cluster),
        recorded,
        "data committed before the crash is not what it was"
    );
    phases.done("counts and sums after recovery");

    // pg_amcheck exits non-zero on corruption and prints nothing when all is well.
    let amcheck = run(
        cluster
            .tool("pg_amcheck")
            .args(["--install-missing", "--all", "--heapallindexed"]),
        "pg_amcheck",
    );
    phases.done("pg_amcheck --all --heapallindexed");
    assert_eq!(amcheck.trim(), "", "pg_amcheck reported problems");

    // More work after recovery (-n: without pgbench's vacuum, which empties the history
    // table), then a clean shutdown.
    let more = run(
        cluster.tool("pgbench").args(["-n", "-c", "2", "-t", "200"]),
        "pgbench after recovery",
    );
    let after = pgbench_state(&cluster);
    after.assert_consistent(PGBENCH_SCALE);
    assert_eq!(after.history, recorded.history + pgbench_processed(&more));
    server.stop("fast");
    phases.done("pgbench -c 2 -t 200, clean stop");

    m.unmount();
    phases.done("unmount");

    // Everything is on the volume: a fresh mount starts without recovery and holds the same.
    let m = vol.mount(&mp, &["--allow-other"]);
    let log_before = cluster.log_text().len();
    let server = cluster.start();
    let restart_log = cluster.log_text()[log_before..].to_owned();
    assert!(
        !restart_log.contains("automatic recovery in progress"),
        "a cleanly stopped server needed recovery after a remount:\n{restart_log}"
    );
    assert_eq!(pgbench_state(&cluster), after, "after the remount");
    server.stop("fast");
    m.unmount();
    phases.done("remount, start, check, stop, unmount");

    vol.fsck();
    phases.done("domfs fsck");
    assert_nothing_mounted_under(vol.dir.path());
}
