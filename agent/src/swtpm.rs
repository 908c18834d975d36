//! A software TPM ([swtpm](https://github.com/stefanberger/swtpm)) for tests and the demo:
//! one `swtpm socket` process on free loopback ports with its own state directory.
//!
//! Connections, as checked with swtpm 0.7.1 and tpm2-tss 3.2: swtpm serves one TCP
//! connection at a time (while a client holds one open, another client's connect succeeds
//! but swtpm reads nothing from it until the first disconnects). The swtpm TCTI, however,
//! opens a new connection for every TPM command and closes it after the response, so
//! clients that go through the TCTI (a [`crate::tpm::Tpm`], the helpers here, tpm2-tools)
//! interleave command by command and never wait for each other longer than one command.
//! The helpers can therefore run while an agent is connected, e.g. to extend a PCR under
//! a running agent; they give up with an error after the helper timeout if something
//! holds the connection open.
//!
//! What clients do share is the TPM: there is no resource manager, so transient objects
//! and sessions (swtpm has three slots of each) are visible to, and flushable by, every
//! client, and a client that dies leaves its own behind. `Tpm::start` flushes all of them;
//! a running agent holds none between commands, so that cannot hurt it, but two agents
//! working at the same instant on one swtpm could flush each other's objects mid-command:
//! one agent per swtpm.
//!
//! swtpm does not use libtss2, so `TSS2_LOG` does not concern it; the helpers' own TSS
//! logging (in this process) follows `TSS2_LOG` as usual.

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tss_esapi::{
    Context,
    handles::{ObjectHandle, PcrHandle},
    interface_types::algorithm::HashingAlgorithm,
    structures::{Digest, DigestValues, PcrSelectSize, PcrSelectionList, PcrSlot},
};

/// How long a helper waits for swtpm to answer before it reports that another client
/// holds the connection open (by default; see [`Swtpm::set_helper_timeout`]).
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long swtpm may take to listen on its ports.
const START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SwtpmError {
    #[error(
        "swtpm is not installed: install the Debian packages `swtpm` and `swtpm-tools` (apt-get install swtpm swtpm-tools)"
    )]
    NotInstalled,
    #[error("swtpm: {0}")]
    Failed(String),
    #[error("TPM command through swtpm failed: {0}")]
    Tpm(String),
}

/// A running swtpm; killed (and its own temporary state directory removed) on drop.
pub struct Swtpm {
    child: Option<Child>,
    port: u16,
    state_dir: PathBuf,
    /// Whether `state_dir` is a temporary directory this value created (and removes).
    owns_dir: bool,
    helper_timeout: Duration,
}

static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_dir() -> Result<PathBuf, SwtpmError> {
    for _ in 0..100 {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random)
            .map_err(|e| SwtpmError::Failed(format!("no randomness for a directory name: {e}")))?;
        let dir = std::env::temp_dir().join(format!(
            "domfs-swtpm-{}-{}-{}",
            std::process::id(),
            DIR_COUNTER.fetch_add(1, Ordering::Relaxed),
            hex::encode(random)
        ));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(SwtpmError::Failed(format!(
                    "cannot create {}: {e}",
                    dir.display()
                )));
            }
        }
    }
    Err(SwtpmError::Failed(
        "cannot create a temporary directory".into(),
    ))
}

/// A port P such that P and P + 1 are both free on 127.0.0.1 right now (the swtpm TCTI
/// expects the control channel on the port after the server's).
fn free_port_pair() -> Result<u16, SwtpmError> {
    for _ in 0..100 {
        let first = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| SwtpmError::Failed(format!("cannot bind a loopback port: {e}")))?;
        let port = first
            .local_addr()
            .map_err(|e| SwtpmError::Failed(format!("local address: {e}")))?
            .port();
        if port == u16::MAX {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err(SwtpmError::Failed(
        "no two adjacent free loopback ports".into(),
    ))
}

/// The inodes of the sockets process `pid` has open.
fn socket_inodes(pid: u32) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return inodes;
    };
    for entry in entries.flatten() {
        if let Ok(target) = fs::read_link(entry.path())
            && let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse().ok())
        {
            inodes.insert(inode);
        }
    }
    inodes
}

/// The inodes of the sockets listening on 127.0.0.1:`port`, from `/proc/net/tcp`.
fn listening_inodes(tcp_table: &str, port: u16) -> HashSet<u64> {
    let local = format!("0100007F:{port:04X}");
    tcp_table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
            (fields.len() > 9 && fields[1] == local && fields[3] == "0A")
                .then(|| fields[9].parse().ok())
                .flatten()
        })
        .collect()
}

/// Whether the child itself (not some other process that happens to use the port)
/// listens on both ports.
fn child_listens(pid: u32, port: u16) -> bool {
    let Ok(table) = fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let mine = socket_inodes(pid);
    [port, port + 1]
        .iter()
        .all(|p| !listening_inodes(&table, *p).is_disjoint(&mine))
}

enum SpawnError {
    /// The ports were taken in the meantime: try others.
    PortTaken,
    Fatal(SwtpmError),
}

/// Whether `port` and `port + 1` are free on 127.0.0.1 right now.
fn port_pair_free(port: u16) -> bool {
    port < u16::MAX
        && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok()
}

/// Starts swtpm on `prefer` (when given and free) or on free ports.
fn spawn(state_dir: &Path, prefer: Option<u16>) -> Result<(Child, u16), SwtpmError> {
    let dir = state_dir
        .to_str()
        .filter(|d| !d.contains(','))
        .ok_or_else(|| {
            SwtpmError::Failed(format!(
                "the state directory {} must be UTF-8 without commas (swtpm option syntax)",
                state_dir.display()
            ))
        })?;
    for attempt in 0..20 {
        let port = match prefer {
            Some(port) if attempt == 0 && port_pair_free(port) => port,
            _ => free_port_pair()?,
        };
        match spawn_on(dir, port) {
            Ok(child) => return Ok((child, port)),
            Err(SpawnError::PortTaken) => continue,
            Err(SpawnError::Fatal(e)) => return Err(e),
        }
    }
    Err(SwtpmError::Failed(
        "the loopback ports were taken again each time".into(),
    ))
}

fn spawn_on(dir: &str, port: u16) -> Result<Child, SpawnError> {
    let log_path = Path::new(dir).join("swtpm.log");
    let log = File::create(&log_path).map_err(|e| {
        SpawnError::Fatal(SwtpmError::Failed(format!(
            "cannot create {}: {e}",
            log_path.display()
        )))
    })?;
    let log_err = log
        .try_clone()
        .map_err(|e| SpawnError::Fatal(SwtpmError::Failed(format!("log file: {e}"))))?;
    let mut child = Command::new("swtpm")
        .args([
            "socket",
            "--tpmstate",
            &format!("dir={dir}"),
            "--tpm2",
            "--server",
            &format!("type=tcp,port={port},bindaddr=127.0.0.1"),
            "--ctrl",
            &format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1),
            "--flags",
            "not-need-init,startup-clear",
        ])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| {
            SpawnError::Fatal(if e.kind() == std::io::ErrorKind::NotFound {
                SwtpmError::NotInstalled
            } else {
                SwtpmError::Failed(format!("cannot start swtpm: {e}"))
            })
        })?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                if log.contains("in use") || log.contains("bind") {
                    return Err(SpawnError::PortTaken);
                }
                return Err(SpawnError::Fatal(SwtpmError::Failed(format!(
                    "swtpm exited at start ({status}): {}",
                    log.trim()
                ))));
            }
            Ok(None) => {}
            Err(e) => {
                return Err(SpawnError::Fatal(SwtpmError::Failed(format!(
                    "waiting for swtpm: {e}"
                ))));
            }
        }
        if child_listens(child.id(), port) {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SpawnError::Fatal(SwtpmError::Failed(format!(
                "swtpm did not listen on 127.0.0.1:{port} within {START_TIMEOUT:?}"
            ))));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn pcr_handle(index: u8) -> Result<PcrHandle, SwtpmError> {
    if index > 23 {
        return Err(SwtpmError::Failed(format!("no PCR {index}")));
    }
    PcrHandle::try_from(ObjectHandle::from(u32::from(index)))
        .map_err(|e| SwtpmError::Failed(format!("PCR {index}: {e}")))
}

fn read_sha256_pcr(ctx: &mut Context, index: u8) -> tss_esapi::Result<Vec<u8>> {
    let slot = PcrSlot::try_from(1u32 << index)?;
    let list = PcrSelectionList::builder()
        .with_size_of_select(PcrSelectSize::ThreeOctets)
        .with_selection(HashingAlgorithm::Sha256, &[slot])
        .build()?;
    let (_, _, digests) = ctx.pcr_read(list)?;
    digests
        .value()
        .first()
        .map(|d| d.value().to_vec())
        .ok_or(tss_esapi::Error::WrapperError(
            tss_esapi::WrapperErrorKind::WrongValueFromTpm,
        ))
}

impl Swtpm {
    /// Starts swtpm on the TPM state in `state_dir` (created if missing, kept on drop), or
    /// with a fresh TPM in a temporary state directory (removed on drop).
    pub fn start(state_dir: Option<&Path>) -> Result<Swtpm, SwtpmError> {
        let (state_dir, owns_dir) = match state_dir {
            Some(dir) => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| {
                        SwtpmError::Failed(format!("cannot create {}: {e}", dir.display()))
                    })?;
                (dir.to_path_buf(), false)
            }
            None => (temp_dir()?, true),
        };
        let mut swtpm = Swtpm {
            child: None,
            port: 0,
            state_dir,
            owns_dir,
            helper_timeout: HELPER_TIMEOUT,
        };
        swtpm.launch()?;
        Ok(swtpm)
    }

    fn launch(&mut self) -> Result<(), SwtpmError> {
        let prefer = (self.port != 0).then_some(self.port);
        let (child, port) = spawn(&self.state_dir, prefer)?;
        self.child = Some(child);
        self.port = port;
        Ok(())
    }

    /// The TCTI string for tss-esapi / `TpmConfig::tcti`.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The TPM command port (the control channel is the next one).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// How long the helpers wait for swtpm before giving up ([`HELPER_TIMEOUT`] unless
    /// set).
    pub fn set_helper_timeout(&mut self, timeout: Duration) {
        self.helper_timeout = timeout;
    }

    /// Stops swtpm (SIGTERM, then SIGKILL after a second). The TPM state stays in the
    /// state directory until `self` is dropped. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops swtpm and starts it again on the same state: a reboot. The PCRs start from
    /// zero again, keys created under the owner seed still load. The same ports are used
    /// when they are still free (so a running agent's TCTI string stays valid); otherwise
    /// read [`Self::tcti`] again.
    pub fn restart(&mut self) -> Result<(), SwtpmError> {
        self.stop();
        self.launch()
    }

    /// Runs `f` on a new, short-lived connection to this swtpm, in a helper thread, and
    /// gives up after the helper timeout (another client holds the connection; the thread
    /// finishes once that client disconnects).
    fn with_context<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Context) -> tss_esapi::Result<T> + Send + 'static,
    ) -> Result<T, SwtpmError> {
        if self.child.is_none() {
            return Err(SwtpmError::Failed("swtpm is stopped".into()));
        }
        let tcti = self.tcti();
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("swtpm-helper".into())
            .spawn(move || {
                let result = tcti
                    .parse()
                    .and_then(Context::new)
                    .and_then(|mut ctx| f(&mut ctx));
                let _ = tx.send(result);
            })
            .map_err(|e| SwtpmError::Failed(format!("cannot start a helper thread: {e}")))?;
        let timeout = self.helper_timeout;
        match rx.recv_timeout(timeout) {
            Ok(result) => result.map_err(|e| SwtpmError::Tpm(e.to_string())),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(SwtpmError::Failed(format!(
                "no answer within {timeout:?}: swtpm serves one connection at a time, \
                 and another client (a running Tpm?) holds it"
            ))),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(SwtpmError::Failed("the helper thread panicked".into()))
            }
        }
    }

    /// Extends SHA-256 PCR `index` with SHA-256(`data`) and returns its new value.
    pub fn extend_pcr(&self, index: u8, data: &[u8]) -> Result<Vec<u8>, SwtpmError> {
        let handle = pcr_handle(index)?;
        let digest = Digest::try_from(Sha256::digest(data).to_vec())
            .map_err(|e| SwtpmError::Failed(format!("digest: {e}")))?;
        self.with_context(move |ctx| {
            let mut values = DigestValues::new();
            values.set(HashingAlgorithm::Sha256, digest);
            ctx.execute_with_nullauth_session(|ctx| ctx.pcr_extend(handle, values))?;
            read_sha256_pcr(ctx, index)
        })
    }

    /// The value of SHA-256 PCR `index`.
    pub fn read_pcr(&self, index: u8) -> Result<Vec<u8>, SwtpmError> {
        pcr_handle(index)?;
        self.with_context(move |ctx| read_sha256_pcr(ctx, index))
    }

    /// Resets PCR `index` to zero (only the resettable ones: 16 and 23).
    pub fn reset_pcr(&self, index: u8) -> Result<(), SwtpmError> {
        let handle = pcr_handle(index)?;
        self.with_context(move |ctx| ctx.execute_with_nullauth_session(|ctx| ctx.pcr_reset(handle)))
    }

    /// Runs `f` on a new ESAPI context of this swtpm (for tests that need raw TPM access,
    /// e.g. to look at or leave behind handles). Objects `f` leaves loaded are flushed
    /// when the context is dropped.
    pub fn with_raw_context<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Context) -> tss_esapi::Result<T> + Send + 'static,
    ) -> Result<T, SwtpmError> {
        self.with_context(f)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
        if self.owns_dir {
            let _ = fs::remove_dir_all(&self.state_dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_listening_sockets_in_the_tcp_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100007F:5EE1 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0\n\
            1: 0100007F:5EE2 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4243 1 0000000000000000 100 0 0 10 0\n\
            2: 0100007F:5EE1 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 4244 1 0000000000000000 20 4 30 10 -1\n\
            3: 00000000:5EE1 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4245 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(listening_inodes(table, 0x5EE1), HashSet::from([4242]));
        assert_eq!(listening_inodes(table, 0x5EE2), HashSet::from([4243]));
        assert!(listening_inodes(table, 0x5EE3).is_empty());
    }

    #[test]
    fn starts_extends_reads_and_stops() {
        let mut swtpm =
            Swtpm::start(None).expect("swtpm starts (apt-get install swtpm swtpm-tools)");
        assert!(swtpm.tcti().ends_with(&format!("port={}", swtpm.port())));
        assert_eq!(swtpm.read_pcr(16).expect("read"), vec![0u8; 32]);
        let extended = swtpm.extend_pcr(16, b"hello").expect("extend");
        let mut expected = Sha256::new();
        expected.update([0u8; 32]);
        expected.update(Sha256::digest(b"hello"));
        assert_eq!(extended, expected.finalize().to_vec());
        assert_eq!(swtpm.read_pcr(16).expect("read"), extended);
        // A reboot resets the PCRs.
        swtpm.restart().expect("restart");
        assert_eq!(swtpm.read_pcr(16).expect("read"), vec![0u8; 32]);
        let dir = swtpm.state_dir().to_path_buf();
        assert!(dir.join("tpm2-00.permall").exists());
        swtpm.stop();
        assert!(swtpm.read_pcr(16).is_err());
        drop(swtpm);
        assert!(!dir.exists());

        // A given state directory is kept, and the TPM in it survives a new swtpm.
        let given = tempfile::tempdir().expect("tempdir");
        let dir = given.path().join("tpm");
        let swtpm = Swtpm::start(Some(&dir)).expect("swtpm");
        let value = swtpm.extend_pcr(23, b"x").expect("extend");
        drop(swtpm);
        assert!(dir.join("tpm2-00.permall").exists());
        let swtpm = Swtpm::start(Some(&dir)).expect("swtpm");
        // A new swtpm is a reboot: PCRs reset.
        assert_ne!(swtpm.read_pcr(23).expect("read"), value);
    }

    /// swtpm serves one TCP connection at a time, but the TCTI connects per command: a
    /// raw connection held open blocks other clients, a connected `Tpm` does not.
    #[test]
    fn connections_are_per_command() {
        use crate::tpm::{Tpm, TpmConfig};
        let mut swtpm =
            Swtpm::start(None).expect("swtpm starts (apt-get install swtpm swtpm-tools)");
        swtpm.set_helper_timeout(Duration::from_millis(300));

        let held = std::net::TcpStream::connect(("127.0.0.1", swtpm.port())).expect("connect");
        let started = Instant::now();
        match swtpm.read_pcr(16) {
            Err(SwtpmError::Failed(why)) => assert!(why.contains("one connection at a time")),
            other => panic!("a second connection was served: {other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(300));
        drop(held);
        swtpm.set_helper_timeout(HELPER_TIMEOUT);
        assert_eq!(swtpm.read_pcr(16).expect("served"), vec![0u8; 32]);

        let state = tempfile::tempdir().expect("tempdir");
        let tpm = Tpm::start(TpmConfig {
            tcti: swtpm.tcti(),
            state_dir: state.path().to_path_buf(),
            pcrs: "sha256:16".parse().expect("pcrs"),
        })
        .expect("Tpm::start");
        // The agent is connected and the helpers still work.
        let value = swtpm.extend_pcr(16, b"x").expect("extend beside a Tpm");
        assert_eq!(swtpm.read_pcr(16).expect("read"), value);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        assert!(!runtime.block_on(tpm.has_keys()).expect("has_keys"));
        // A restart keeps the ports, so the agent's TCTI string stays valid.
        let port = swtpm.port();
        swtpm.restart().expect("restart");
        assert_eq!(swtpm.port(), port);
        assert_eq!(swtpm.read_pcr(16).expect("read"), vec![0u8; 32]);
    }
}
