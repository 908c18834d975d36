//! The TTP's integration-test kit: a state directory made with the real CLI, the real
//! `domfs-ttp serve` on 127.0.0.1:0, certificates issued by the CLI, clients connected
//! with `domfs_proto::client::connect_ttp`, manager keys and signed access lists.
//!
//! Hosts without a TPM are enrolled through the library's documented test hook,
//! [`domfs_ttp::enroll::store_enrollment`] (what `Enroll` does once the TPM evidence
//! verifies), on the registry while the server is stopped, with an RSA-2048 key made
//! here; the test keeps the private half to unwrap what the TTP releases.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, PrivateDecryptingKey,
};
use domfs_proto::acl::{Access, AccessList, SignedMessage};
use domfs_proto::client::{TlsFiles, connect_ttp};
use domfs_proto::ttp::ttp_client::TtpClient;
use domfs_proto::ttp::{GetDomainKeyRequest, Mode, RegisterDomainRequest};
use domfs_ttp::attest::EnrolledKey;
use domfs_ttp::registry::Registry;
use ed25519_dalek::SigningKey;
use tempfile::TempDir;
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_domfs-ttp");

pub struct Ttp {
    pub dir: TempDir,
    pub state: PathBuf,
    pub certs: PathBuf,
    child: Option<Child>,
    pub url: String,
}

/// A host's TPM stand-in: the private half of the key the TTP wraps to.
pub struct HostKey {
    pub private: PrivateDecryptingKey,
    pub spki: Vec<u8>,
}

impl HostKey {
    pub fn generate() -> anyhow::Result<HostKey> {
        let private = PrivateDecryptingKey::generate(KeySize::Rsa2048)
            .map_err(|_| anyhow::anyhow!("RSA key generation failed"))?;
        let spki = private
            .public_key()
            .as_der()
            .map_err(|_| anyhow::anyhow!("SPKI encoding failed"))?
            .as_ref()
            .to_vec();
        Ok(HostKey { private, spki })
    }

    /// RSA-OAEP-SHA256 decryption with the key-wrap label, as the TPM does it.
    pub fn unwrap(&self, wrapped: &[u8]) -> anyhow::Result<Vec<u8>> {
        let key = OaepPrivateDecryptingKey::new(self.private.clone())
            .map_err(|_| anyhow::anyhow!("OAEP key"))?;
        let mut out = vec![0u8; key.min_output_size()];
        let plain = key
            .decrypt(
                &OAEP_SHA256_MGF1SHA256,
                wrapped,
                &mut out,
                Some(domfs_proto::KEY_WRAP_LABEL),
            )
            .map_err(|_| anyhow::anyhow!("OAEP decryption failed"))?;
        Ok(plain.to_vec())
    }
}

pub fn run(args: &[&str]) -> anyhow::Result<Output> {
    Command::new(BIN)
        .args(args)
        .env_remove("DOMFS_TTP_STATE")
        .output()
        .context("cannot run domfs-ttp")
}

/// Runs and insists on success; returns stdout.
pub fn ok(args: &[&str]) -> anyhow::Result<String> {
    let out = run(args)?;
    if !out.status.success() {
        bail!(
            "domfs-ttp {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs and insists on failure; returns stderr.
pub fn fails(args: &[&str]) -> anyhow::Result<String> {
    let out = run(args)?;
    if out.status.success() {
        bail!(
            "domfs-ttp {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

pub fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

impl Ttp {
    /// An initialised state directory; no server yet.
    pub fn new() -> anyhow::Result<Ttp> {
        domfs_proto::client::install_crypto_provider();
        let dir = tempfile::tempdir()?;
        let state = dir.path().join("state");
        let certs = dir.path().join("certs");
        ok(&["init", "--state", path(&state)])?;
        Ok(Ttp {
            dir,
            state,
            certs,
            child: None,
            url: String::new(),
        })
    }

    /// A server started with `lease`-second leases, manager alice (her key is returned),
    /// and the `hosts` enrolled and approved.
    pub fn with_hosts(hosts: &[&str], lease: u32) -> anyhow::Result<(Ttp, SigningKey)> {
        let mut ttp = Ttp::new()?;
        let alice = ttp.manager("alice")?;
        for host in hosts {
            ttp.host(host, true)?;
        }
        ttp.start(lease)?;
        Ok((ttp, alice))
    }

    pub fn state_arg(&self) -> &str {
        path(&self.state)
    }

    /// `domfs-ttp ARGS --state DIR`, expecting success.
    pub fn admin(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = args.to_vec();
        all.extend(["--state", self.state_arg()]);
        ok(&all)
    }

    pub fn admin_fails(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = args.to_vec();
        all.extend(["--state", self.state_arg()]);
        fails(&all)
    }

    /// A client certificate from the CLI.
    pub fn issue(&self, name: &str, role: &str) -> anyhow::Result<TlsFiles> {
        ok(&[
            "cert",
            "issue",
            "--state",
            self.state_arg(),
            "--name",
            name,
            "--role",
            role,
            "--out",
            path(&self.certs),
        ])?;
        Ok(self.tls(name))
    }

    pub fn tls(&self, name: &str) -> TlsFiles {
        TlsFiles {
            ca: self.certs.join("ca.crt"),
            cert: self.certs.join(format!("{name}.crt")),
            key: self.certs.join(format!("{name}.key")),
        }
    }

    /// Starts `domfs-ttp serve` and waits for its "listening" line.
    pub fn start(&mut self, lease: u32) -> anyhow::Result<()> {
        self.start_with(lease, &[])
    }

    /// Starts `domfs-ttp serve` with more options (e.g. `--audit-cap`).
    pub fn start_with(&mut self, lease: u32, options: &[&str]) -> anyhow::Result<()> {
        let stderr = std::fs::File::create(self.dir.path().join("serve.err"))?;
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--state",
                self.state_arg(),
                "--listen",
                "127.0.0.1:0",
                "--lease",
                &lease.to_string(),
            ])
            .args(options)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("cannot start domfs-ttp serve")?;
        let stdout = child.stdout.take().context("no stdout")?;
        self.child = Some(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(address) = line.trim().strip_prefix("domfs-ttp: listening on ") else {
            bail!(
                "serve did not start: {line:?}; stderr: {}",
                std::fs::read_to_string(self.dir.path().join("serve.err")).unwrap_or_default()
            );
        };
        self.url = address.to_string();
        Ok(())
    }

    /// SIGTERM, and wait for the exit (which removes the admin socket).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("serve exited with {status}");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                child.kill()?;
                bail!("serve did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A backup under a backup key of `key` bytes, restored into a new state directory
    /// (returned).
    pub fn restored_copy(&self, key: [u8; 32]) -> anyhow::Result<PathBuf> {
        let key_file = self.dir.path().join("backup.key");
        std::fs::write(&key_file, key)?;
        let backup = self.dir.path().join("ttp.backup");
        self.admin(&["backup", "--out", path(&backup), "--key", path(&key_file)])?;
        let restored = self.dir.path().join("restored");
        ok(&[
            "restore",
            "--state",
            path(&restored),
            "--from",
            path(&backup),
            "--key",
            path(&key_file),
        ])?;
        Ok(restored)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("ttp.log")).unwrap_or_default()
    }

    pub async fn client(&self, name: &str) -> anyhow::Result<TtpClient<Channel>> {
        Ok(connect_ttp(&self.url, &self.tls(name)).await?)
    }

    /// A manager: its certificate, and its Ed25519 key added with `managers add`.
    pub fn manager(&self, name: &str) -> anyhow::Result<SigningKey> {
        self.issue(name, "manager")?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("{e}"))?;
        let key = SigningKey::from_bytes(&seed);
        let file = self.dir.path().join(format!("{name}.pub"));
        std::fs::write(
            &file,
            format!("{}\n", hex::encode(key.verifying_key().to_bytes())),
        )?;
        self.admin(&["managers", "add", name, path(&file)])?;
        Ok(key)
    }

    /// A host: its certificate, and an enrollment stored in the registry (server
    /// stopped), then approved with the CLI if `approve`.
    pub fn host(&self, name: &str, approve: bool) -> anyhow::Result<HostKey> {
        if self.running() {
            bail!("enroll test hosts while the server is stopped");
        }
        self.issue(name, "host")?;
        let key = HostKey::generate()?;
        let registry = Registry::open(&self.state)?;
        domfs_ttp::enroll::store_enrollment(
            &registry,
            name,
            EnrolledKey {
                decryption_key_spki: key.spki.clone(),
                decryption_key_public: Vec::new(),
                attestation_key_public: Vec::new(),
                attestation_key_fingerprint: format!("test-ak-{name}"),
                pcr_selection: "sha256:7,16".into(),
                pcr_digest: vec![0x16; 32],
            },
        )?;
        drop(registry);
        if approve {
            self.admin(&["hosts", "approve", name])?;
        }
        Ok(key)
    }
}

impl Drop for Ttp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn domain_id(byte: u8) -> [u8; 16] {
    let mut id = [byte; 16];
    id[0] = 0xd0;
    id
}

/// A signed message for `id` at `version` granting `grants`.
pub fn signed(
    key: &SigningKey,
    id: [u8; 16],
    version: u64,
    meta: &[u8],
    grants: &[(&str, Access)],
) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let list = AccessList {
        domain_id: id,
        version,
        grants: grants.iter().map(|(n, a)| (n.to_string(), *a)).collect(),
    };
    let (message, signature) = SignedMessage::new(&list, meta)?.sign(key);
    Ok((message, signature.to_vec()))
}

/// A registered domain: its id and the signed access list a host presents.
pub struct Domain {
    pub id: [u8; 16],
    pub message: Vec<u8>,
    pub signature: Vec<u8>,
}

impl Domain {
    /// The request for the domain key in `mode`.
    pub fn ask(&self, mode: Mode) -> GetDomainKeyRequest {
        GetDomainKeyRequest {
            signed_message: self.message.clone(),
            signature: self.signature.clone(),
            mode: mode as i32,
        }
    }
}

/// Registers domain `id` (through alice's certificate) with `manager`'s access list
/// version 1 granting `grants`.
pub async fn register(
    ttp: &Ttp,
    manager: &SigningKey,
    id: [u8; 16],
    grants: &[(&str, Access)],
) -> anyhow::Result<Domain> {
    let (message, signature) = signed(manager, id, 1, b"ward 7", grants)?;
    ttp.client("alice")
        .await?
        .register_domain(RegisterDomainRequest {
            signed_message: message.clone(),
            signature: signature.clone(),
            manager_key: manager.verifying_key().to_bytes().to_vec(),
        })
        .await?;
    Ok(Domain {
        id,
        message,
        signature,
    })
}

pub const RO: Access = Access::ReadOnly;
pub const RW: Access = Access::ReadWrite;

/// The status code of a call that must fail.
pub fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> tonic::Code {
    match result {
        Ok(value) => panic!("expected a refusal, got {value:?}"),
        Err(status) => status.code(),
    }
}

/// The status of a call that must fail.
pub fn refusal<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> tonic::Status {
    match result {
        Ok(value) => panic!("expected a refusal, got {value:?}"),
        Err(status) => status,
    }
}
