//! The harness of the end-to-end tests: real processes on loopback and Unix sockets — a
//! software TPM per host (swtpm), a TTP (`domfs-ttp serve`), an agent per host
//! (`domfs-agent serve`), and `domfs` itself for the manager's and the hosts' commands.
//! Every process is stopped when its guard drops; every mount is checked away.
//!
//! The binaries are the workspace's own, built by `cargo test --workspace` before any
//! test runs (an integration-test crate cannot name other packages' binaries, so they are
//! found next to the test executable).
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)] // a harness: a failed step is a failed test

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use domfs_agent::swtpm::Swtpm;

/// `target/debug` (or whichever profile built this test).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/e2e-xxxx → target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`; `cargo test --workspace` does it)",
        path.display()
    );
    path
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs a command to completion with stdin closed.
pub fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .env("TSS2_LOG", "all+none")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

/// Like [`run`], and fails the test with both outputs unless it exits 0.
pub fn run_ok(program: &Path, args: &[&str]) -> Output {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{} {:?} failed ({}):\nstdout: {}\nstderr: {}",
        program.display(),
        args,
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

pub fn domfs(args: &[&str]) -> Output {
    run(&bin("domfs"), args)
}

pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks that this test can mount and run TPMs: root, /dev/fuse, swtpm. A test that
/// needs them fails without them; it never skips.
pub fn require_environment() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: the end-to-end tests mount volumes (install fuse3, run as root)"
    );
    assert!(
        nix::unistd::geteuid().is_root(),
        "the end-to-end tests mount volumes: run them as root (CI does)"
    );
    assert!(
        Command::new("swtpm").arg("--version").output().is_ok(),
        "swtpm is missing: `apt-get install swtpm swtpm-tools` (scripts/install-deps does)"
    );
}

/// A long-running child whose stdout announces readiness with a line starting with
/// `ready_prefix`; killed (SIGTERM, then SIGKILL) on drop.
pub struct Daemon {
    pub name: String,
    child: Option<Child>,
    /// The rest of the readiness line.
    pub ready: String,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[&str],
        ready_prefix: &str,
        log: &Path,
    ) -> Daemon {
        let stderr = std::fs::File::create(log.with_extension("stderr")).unwrap();
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .env("TSS2_LOG", "all+none")
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let prefix = ready_prefix.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix(&prefix) {
                    let _ = tx.send(rest.trim().to_string());
                }
            }
        });
        let ready = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(rest) => rest,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!(
                    "{name} did not become ready ({status:?}); its stderr:\n{}",
                    std::fs::read_to_string(log.with_extension("stderr")).unwrap_or_default()
                );
            }
        };
        Daemon {
            name: name.to_string(),
            child: Some(child),
            ready,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGTERM and wait (SIGKILL after 20 s).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let stopped = wait_until(Duration::from_secs(20), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What the daemon logged to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.log.with_extension("stderr")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The three TLS files of one identity.
#[derive(Clone, Debug)]
pub struct Identity {
    pub name: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Identity {
    /// `--tls-ca A --tls-cert B --tls-key C`
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--tls-ca".into(),
            s(&self.ca).into(),
            "--tls-cert".into(),
            s(&self.cert).into(),
            "--tls-key".into(),
            s(&self.key).into(),
        ]
    }
}

/// A TTP: state directory, server, admin commands.
pub struct Ttp {
    pub state: PathBuf,
    pub url: String,
    pub daemon: Option<Daemon>,
    dir: PathBuf,
    lease_seconds: u32,
}

impl Ttp {
    pub fn start(dir: &Path, lease_seconds: u32) -> Ttp {
        let state = dir.join("ttp");
        run_ok(&bin("domfs-ttp"), &["init", "--state", s(&state)]);
        let mut ttp = Ttp {
            state,
            url: String::new(),
            daemon: None,
            dir: dir.to_path_buf(),
            lease_seconds,
        };
        ttp.serve();
        ttp
    }

    /// (Re)starts the server on a free port.
    pub fn serve(&mut self) {
        let lease = self.lease_seconds.to_string();
        let listen = match self.url.strip_prefix("https://") {
            Some(addr) => addr.to_string(),
            None => "127.0.0.1:0".to_string(),
        };
        let daemon = Daemon::spawn(
            "domfs-ttp",
            &bin("domfs-ttp"),
            &[
                "serve",
                "--state",
                s(&self.state),
                "--listen",
                &listen,
                "--lease",
                &lease,
            ],
            "domfs-ttp: listening on ",
            &self.dir.join("ttp-serve.log"),
        );
        self.url = daemon.ready.clone();
        assert!(self.url.starts_with("https://"), "{}", self.url);
        self.daemon = Some(daemon);
    }

    pub fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
    }

    pub fn admin(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--state", s(&self.state)]);
        run(&bin("domfs-ttp"), &all)
    }

    pub fn admin_ok(&self, args: &[&str]) -> String {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--state", s(&self.state)]);
        text(&run_ok(&bin("domfs-ttp"), &all).stdout)
    }

    pub fn issue(&self, name: &str, role: &str) -> Identity {
        let out = self.dir.join("certs").join(name);
        std::fs::create_dir_all(&out).unwrap();
        run_ok(
            &bin("domfs-ttp"),
            &[
                "cert",
                "issue",
                "--state",
                s(&self.state),
                "--name",
                name,
                "--role",
                role,
                "--out",
                s(&out),
            ],
        );
        Identity {
            name: name.to_string(),
            ca: out.join("ca.crt"),
            cert: out.join(format!("{name}.crt")),
            key: out.join(format!("{name}.key")),
        }
    }

    /// The TTP's decision log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("ttp.log")).unwrap_or_default()
    }
}

impl Drop for Ttp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One host: a software TPM and an agent.
pub struct Host {
    pub name: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub identity: Identity,
    pub swtpm: Swtpm,
    pub agent: Option<Daemon>,
    ttp_url: String,
}

impl Host {
    /// Starts swtpm and the agent, which enrolls; then has the TTP operator approve it.
    pub fn start(ttp: &Ttp, name: &str, dir: &Path) -> Host {
        let host = Host::start_unapproved(ttp, name, dir);
        ttp.admin_ok(&["hosts", "approve", name]);
        host
    }

    /// Starts swtpm and the agent, and waits until the TTP lists the host as enrolled.
    pub fn start_unapproved(ttp: &Ttp, name: &str, dir: &Path) -> Host {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let swtpm = Swtpm::start(Some(&dir.join("swtpm"))).expect("start swtpm");
        let identity = ttp.issue(name, "host");
        let mut host = Host {
            name: name.to_string(),
            socket: dir.join("agent.sock"),
            dir,
            identity,
            swtpm,
            agent: None,
            ttp_url: ttp.url.clone(),
        };
        host.start_agent();
        let enrolled = wait_until(Duration::from_secs(30), || {
            ttp.admin_ok(&["hosts", "list"]).contains(name)
        });
        assert!(
            enrolled,
            "host {name} did not enroll; agent stderr:\n{}",
            host.agent_stderr()
        );
        host
    }

    pub fn start_agent(&mut self) {
        let state = self.dir.join("agent");
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--state".into(),
            s(&state).into(),
            "--socket".into(),
            s(&self.socket).into(),
            "--ttp".into(),
            self.ttp_url.clone(),
            "--tcti".into(),
            self.swtpm.tcti(),
            "--pcrs".into(),
            "sha256:16".into(),
            "--grace".into(),
            "5".into(),
        ];
        args.extend(self.identity.flags());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.agent = Some(Daemon::spawn(
            &format!("domfs-agent {}", self.name),
            &bin("domfs-agent"),
            &refs,
            "domfs-agent: serving ",
            &self.dir.join("agent-serve.log"),
        ));
    }

    pub fn stop_agent(&mut self) {
        if let Some(mut d) = self.agent.take() {
            d.stop();
        }
    }

    pub fn agent_stderr(&self) -> String {
        self.agent.as_ref().map(Daemon::stderr).unwrap_or_default()
    }

    /// The agent's decision log.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent").join("agent.log")).unwrap_or_default()
    }

    /// `domfs mount --agent SOCKET VOLUME DIR [extra…]`.
    pub fn mount(&self, volume: &Path, dir: &Path, extra: &[&str]) -> Output {
        std::fs::create_dir_all(dir).unwrap();
        let mut args = vec!["mount", "--agent", s(&self.socket)];
        args.extend_from_slice(extra);
        args.extend([s(volume), s(dir)]);
        domfs(&args)
    }

    /// [`Host::mount`], which must be refused the key: exit status 3, and `why` in its
    /// message (an empty `why`: any message). Returns the message.
    pub fn mount_refused(&self, volume: &Path, dir: &Path, extra: &[&str], why: &str) -> String {
        let out = self.mount(volume, dir, extra);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert!(stderr.contains(why), "the refusal lacks {why:?}: {stderr}");
        stderr
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop_agent();
    }
}

/// The usual cast: a TTP (30 s leases), the manager `ward-manager`, the host `ward-db`
/// (enrolled and approved) and `ward.vol` (32M) that grants it read-write.
pub fn one_ward(scratch: &Scratch) -> (Ttp, Manager, Host, PathBuf) {
    require_environment();
    let ttp = Ttp::start(scratch.path(), 30);
    let manager = Manager::new(&ttp, scratch.path(), "ward-manager");
    let host = Host::start(&ttp, "ward-db", scratch.path());
    let volume = scratch.path().join("ward.vol");
    let out = manager.create(&volume, "32M", &["ward-db=rw"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    (ttp, manager, host, volume)
}

/// The domain manager: a key pair and a TLS identity with the manager role.
pub struct Manager {
    pub key: PathBuf,
    pub identity: Identity,
    pub ttp_url: String,
}

impl Manager {
    pub fn new(ttp: &Ttp, dir: &Path, name: &str) -> Manager {
        let key = dir.join(format!("{name}.key"));
        let out = domfs(&["manager", "keygen", "--out", s(&key)]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let public = format!("{}.pub", s(&key));
        ttp.admin_ok(&["managers", "add", name, &public]);
        Manager {
            key,
            identity: ttp.issue(name, "manager"),
            ttp_url: ttp.url.clone(),
        }
    }

    fn ttp_flags(&self) -> Vec<String> {
        let mut flags = vec!["--ttp".to_string(), self.ttp_url.clone()];
        flags.extend(self.identity.flags());
        flags
    }

    /// `domfs create --ttp … --grant …` of a `size` volume at `volume`.
    pub fn create(&self, volume: &Path, size: &str, grants: &[&str]) -> Output {
        let mut args: Vec<String> = vec!["create".into()];
        args.extend(self.ttp_flags());
        args.extend([
            "--manager-key".into(),
            s(&self.key).into(),
            "--meta".into(),
            "melior:test-ward".into(),
        ]);
        for g in grants {
            args.extend(["--grant".into(), (*g).into()]);
        }
        args.extend(["--size".into(), size.into(), s(volume).into()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        domfs(&refs)
    }

    /// `domfs grant|revoke --manager-key K … VOLUME HOST [MODE]`.
    pub fn change(&self, verb: &str, volume: &Path, host: &str, mode: Option<&str>) -> Output {
        let mut args: Vec<String> = vec![verb.into(), "--manager-key".into(), s(&self.key).into()];
        args.extend(self.ttp_flags());
        args.extend([s(volume).into(), host.into()]);
        if let Some(m) = mode {
            args.push(m.into());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        domfs(&refs)
    }
}

/// A directory for one test, readable by the `postgres` user where needed (mktemp makes
/// 0700); removed at the end after checking nothing is left mounted under it.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix("domfs-e2e-")
            .tempdir()
            .unwrap();
        Scratch { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Unmount whatever a failed test left, then fail loudly if something stayed.
        let prefix = s(self.dir.path()).to_string();
        let mounted = || -> Vec<String> {
            std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split(' ').nth(4).map(String::from))
                .filter(|mp| mp.starts_with(&prefix))
                .collect()
        };
        for mp in mounted() {
            let _ = Command::new("umount").args(["-l", &mp]).status();
        }
        if !std::thread::panicking() {
            assert!(mounted().is_empty(), "leftover mounts under {prefix}");
        }
    }
}

/// `domfs unmount DIR`, asserting success.
pub fn unmount(dir: &Path) {
    let out = domfs(&["unmount", s(dir)]);
    assert!(
        out.status.success(),
        "unmount {}: {}",
        dir.display(),
        text(&out.stderr)
    );
}

pub fn is_mounted(dir: &Path) -> bool {
    let needle = format!(" {} ", s(dir));
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains(&needle))
}
