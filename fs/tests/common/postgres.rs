//! PostgreSQL on a domfs mount, for the integration tests: the server binaries, one
//! cluster run as the `postgres` user (initdb, start, stop, psql), a guard that stops the
//! server even when a test fails, and the small helpers those tests share (running a
//! command that must succeed, timing phases).
//!
//! Needs PostgreSQL (scripts/install-deps): missing binaries or a missing `postgres` user
//! fail the test, they never skip it.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::mount::{path_str, text, wait_until};

/// Times the phases of a test and prints each one (visible with `--nocapture`).
pub struct Phases {
    test: &'static str,
    start: Instant,
    last: Instant,
}

impl Phases {
    pub fn new(test: &'static str) -> Self {
        let now = Instant::now();
        Self {
            test,
            start: now,
            last: now,
        }
    }

    pub fn done(&mut self, phase: &str) {
        let now = Instant::now();
        eprintln!(
            "[{}] {phase}: {:.1} s (total {:.1} s)",
            self.test,
            (now - self.last).as_secs_f64(),
            (now - self.start).as_secs_f64()
        );
        self.last = now;
    }
}

/// Runs `cmd` and fails the test with its output unless it succeeds; returns stdout.
pub fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    check(&out, what, cmd);
    text(&out.stdout)
}

/// Fails the test with the output of `cmd` unless it succeeded.
pub fn check(out: &Output, what: &str, cmd: &Command) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {cmd:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The directory holding initdb, pg_ctl and postgres: Debian's /usr/lib/postgresql/N/bin,
/// the newest installed.
pub fn postgres_bindir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .expect("PostgreSQL server binaries (initdb) not found under /usr/lib/postgresql/*/bin: install postgresql (scripts/install-deps)")
}

/// A PostgreSQL client program: from the server's bindir, or else on PATH (`which`).
pub fn postgres_tool(bindir: &Path, name: &str) -> PathBuf {
    let own = bindir.join(name);
    if own.exists() {
        return own;
    }
    let out = Command::new("which").arg(name).output().expect("run which");
    let path = text(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && !path.is_empty(),
        "{name} is missing: neither in {} nor on PATH. It ships with Debian's \
         postgresql-client; install it (scripts/install-deps)",
        bindir.display()
    );
    PathBuf::from(path)
}

/// Everything needed to run one PostgreSQL cluster as the `postgres` user.
pub struct PgCluster {
    pub bindir: PathBuf,
    /// A directory postgres can search (the working directory of its commands).
    pub base: PathBuf,
    pub data: PathBuf,
    pub socket_dir: PathBuf,
    pub log: PathBuf,
    pub port: u16,
}

impl PgCluster {
    /// A cluster whose data directory will be `mountpoint/pgdata`, with its socket and
    /// log in `base/run`. Opens `base` and `mountpoint` to postgres (mode 0755) and
    /// creates `base/run`; the data directory itself is made by [`PgCluster::create_data`]
    /// once the volume is mounted.
    pub fn on_mount(bindir: PathBuf, base: &Path, mountpoint: &Path) -> Self {
        // The server runs as postgres: it must reach the mount point and its own directories.
        fs::set_permissions(base, fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::set_permissions(mountpoint, fs::Permissions::from_mode(0o755)).expect("chmod");
        let run_dir = base.join("run");
        fs::create_dir(&run_dir).expect("mkdir");
        chown_postgres(&run_dir);
        Self {
            bindir,
            base: base.to_path_buf(),
            data: mountpoint.join("pgdata"),
            socket_dir: run_dir.clone(),
            log: run_dir.join("postgres.log"),
            port: free_port(),
        }
    }

    /// Creates the (empty) data directory, owned by postgres.
    pub fn create_data(&self) {
        fs::create_dir(&self.data).expect("mkdir pgdata");
        chown_postgres(&self.data);
    }

    /// A command running `program` as postgres, connected to this cluster by default.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"])
            .arg(program)
            .current_dir(&self.base)
            .env("PGHOST", &self.socket_dir)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "postgres")
            .env("PGDATABASE", "postgres")
            .env("LC_ALL", "C.UTF-8")
            .env_remove("PGDATA")
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE");
        cmd
    }

    pub fn tool(&self, name: &str) -> Command {
        self.command(&postgres_tool(&self.bindir, name))
    }

    pub fn pg_ctl(&self) -> Command {
        let mut cmd = self.command(&self.bindir.join("pg_ctl"));
        cmd.arg("-D").arg(&self.data);
        cmd
    }

    pub fn initdb(&self) {
        run(
            self.command(&self.bindir.join("initdb"))
                .arg("-D")
                .arg(&self.data)
                .args(["-A", "trust", "-E", "UTF8", "--no-locale"]),
            "initdb",
        );
    }

    /// Starts the server (returns once it accepts connections, after any recovery).
    pub fn start(&self) -> PgServer<'_> {
        let server = PgServer {
            cluster: self,
            live: true,
        };
        let options = format!(
            "-p {} -k {} -c listen_addresses=''",
            self.port,
            path_str(&self.socket_dir)
        );
        let mut cmd = self.pg_ctl();
        cmd.args(["-w", "-t", "600", "-l"])
            .arg(&self.log)
            .args(["-o", &options, "start"]);
        let out = cmd.stdin(Stdio::null()).output().expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed ({}):\n{}\n{}\n--- server log\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr),
            self.log_text()
        );
        server
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Runs `sql` (one or more statements) with psql; fails on any error. Returns the
    /// unaligned, tuples-only output, trimmed.
    pub fn psql(&self, sql: &str) -> String {
        run(
            self.tool("psql")
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]),
            "psql",
        )
        .trim()
        .to_owned()
    }
}

/// A running server; dropping it without `stop` kills it (immediate stop) so the mount
/// can go. Declare it after the `Mount` it runs on: it must be dropped first.
pub struct PgServer<'a> {
    cluster: &'a PgCluster,
    live: bool,
}

impl PgServer<'_> {
    /// `pg_ctl -m MODE stop` (smart, fast or immediate — the last is a crash).
    pub fn stop(mut self, mode: &str) {
        run(
            self.cluster
                .pg_ctl()
                .args(["-w", "-t", "300", "-m", mode, "stop"]),
            &format!("pg_ctl -m {mode} stop"),
        );
        self.live = false;
    }
}

impl Drop for PgServer<'_> {
    fn drop(&mut self) {
        if !self.live {
            return;
        }
        let c = self.cluster;
        let _ = c
            .pg_ctl()
            .args(["-w", "-t", "30", "-m", "immediate", "stop"])
            .stdin(Stdio::null())
            .output();
        // Still there: kill the postmaster (its children exit when it is gone).
        if let Some(pid) = fs::read_to_string(c.data.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            wait_until(Duration::from_secs(10), || {
                nix::sys::signal::kill(pid, None).is_err()
            });
            std::thread::sleep(Duration::from_millis(500));
        }
        if std::thread::panicking() {
            let log = c.log_text();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- end of the server log");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local address")
        .port()
}

pub fn chown_postgres(path: &Path) {
    let user = nix::unistd::User::from_name("postgres")
        .expect("look up the postgres user")
        .expect("no postgres user: install postgresql (scripts/install-deps)");
    nix::unistd::chown(path, Some(user.uid), Some(user.gid)).expect("chown to postgres");
}
