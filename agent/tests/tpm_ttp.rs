//! Key release through the agent with a real (software) TPM and the real TTP, both in
//! this process except swtpm: enrollment and approval, MODE_BEST, the cache, release,
//! renewal, the TPM refusing after a PCR change, re-enrollment, and revocation; then the
//! `domfs-agent serve` binary itself, from start to SIGTERM, and checkpoints and audit
//! entries through it.
//!
//! Each test starts its own swtpm (Debian package `swtpm`) and its own TTP; without swtpm
//! they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its message

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use tokio::sync::oneshot;
use tonic::Code;

use domfs_agent::agent::{Agent, Settings};
use domfs_agent::enroll::{Keys, ensure_enrolled};
use domfs_agent::peer::AccessRule;
use domfs_agent::swtpm::Swtpm;
use domfs_agent::tpm::{Tpm, TpmConfig};
use domfs_agent::ttp::TtpLink;
use domfs_proto::acl::{Access, AccessList, SignedMessage};
use domfs_proto::agent::agent_client::AgentClient;
use domfs_proto::agent::watch_event::Kind;
use domfs_proto::agent::{
    AgentAppendAuditRequest, AgentCheckpointRequest, AgentReadAuditRequest, GetDomainKeyRequest,
    GetDomainKeyResponse, Mode, ReleaseKeyRequest, StatusRequest, WatchRequest,
};
use domfs_proto::client::{TlsFiles, connect_agent, connect_ttp};
use domfs_proto::ttp::{Checkpoint, HostState, RegisterDomainRequest};
use domfs_ttp::admin::Admin;
use domfs_ttp::core::{CoreConfig, TtpCore};
use domfs_ttp::pki::Role;
use domfs_ttp::registry::Lookup;
use domfs_ttp::server::Server;
use domfs_ttp::state::{self, StateDir};

const HOST: &str = "ward-db-1";
const DOMAIN: [u8; 16] = *b"ward-records-001";
/// Short, so renewals happen during the test (at half the lease).
const LEASE_SECONDS: u32 = 2;

/// The domain manager's key (fixed, so the signed header is the same in every test).
fn manager() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// The volume header's signed message and signature: the list grants HOST read-write.
fn header() -> (Vec<u8>, Vec<u8>) {
    let list = AccessList {
        domain_id: DOMAIN,
        version: 1,
        grants: [(HOST.to_string(), Access::ReadWrite)].into(),
    };
    let (message, signature) = SignedMessage::new(&list, b"ward 7 records")
        .unwrap()
        .sign(&manager());
    (message, signature.to_vec())
}

/// The TTP's state directory (K_TTP, CA) and the client identities; no server yet.
struct TtpFiles {
    _dir: tempfile::TempDir,
    state: StateDir,
    host_tls: TlsFiles,
    manager_tls: TlsFiles,
}

impl TtpFiles {
    fn new() -> TtpFiles {
        domfs_proto::client::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::init(dir.path().join("ttp"), &[]).unwrap();
        let host_tls = write_identity(dir.path(), HOST, &state, Role::Host);
        let manager_tls = write_identity(dir.path(), "records-office", &state, Role::Manager);
        TtpFiles {
            _dir: dir,
            state,
            host_tls,
            manager_tls,
        }
    }
}

/// A TTP serving on 127.0.0.1, with the domain registered.
struct TestTtp {
    files: TtpFiles,
    core: Arc<TtpCore>,
    url: String,
    stop: Option<oneshot::Sender<()>>,
}

fn write_identity(dir: &Path, name: &str, state: &StateDir, role: Role) -> TlsFiles {
    let issued = state.ca().unwrap().issue_client(name, role, 30).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, issued.cert).unwrap();
    std::fs::write(&key, issued.key).unwrap();
    TlsFiles {
        ca: state.file(state::CA_CERT),
        cert,
        key,
    }
}

impl TestTtp {
    async fn start() -> TestTtp {
        TestTtp::serve(TtpFiles::new(), "127.0.0.1:0".parse().unwrap()).await
    }

    async fn serve(files: TtpFiles, listen: SocketAddr) -> TestTtp {
        let config = CoreConfig {
            state: files.state.clone(),
            lease_seconds: LEASE_SECONDS,
            log_file: None,
            echo: false,
            audit_cap: domfs_ttp::audit_store::DEFAULT_AUDIT_CAP,
        };
        let server = Server::bind(&config, listen).await.unwrap();
        let url = format!("https://{}", server.local_addr());
        let core = server.core().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        let ttp = TestTtp {
            files,
            core,
            url,
            stop: Some(stop),
        };

        // The domain manager registers the domain, as `domfs create --ttp` does.
        let manager = manager();
        ttp.admin()
            .add_manager("records-office", manager.verifying_key().as_bytes())
            .unwrap();
        let (signed_message, signature) = header();
        let mut client = connect_ttp(&ttp.url, &ttp.files.manager_tls).await.unwrap();
        client
            .register_domain(RegisterDomainRequest {
                signed_message,
                signature,
                manager_key: manager.verifying_key().as_bytes().to_vec(),
            })
            .await
            .unwrap();
        ttp
    }

    fn host_tls(&self) -> &TlsFiles {
        &self.files.host_tls
    }

    fn admin(&self) -> Admin<'_> {
        Admin {
            registry: self.core.registry(),
            state: self.core.state(),
            log: self.core.decision_log(),
        }
    }
}

impl Drop for TestTtp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn swtpm() -> Swtpm {
    Swtpm::start(None).unwrap_or_else(|e| {
        panic!("cannot start swtpm ({e}); install it with `apt-get install swtpm swtpm-tools`")
    })
}

async fn get(
    client: &mut AgentClient<tonic::transport::Channel>,
    mode: Mode,
) -> Result<GetDomainKeyResponse, tonic::Status> {
    let (signed_message, signature) = header();
    client
        .get_domain_key(GetDomainKeyRequest {
            signed_message,
            signature,
            mode: mode as i32,
            mount_point: "/srv/ward7".into(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn release(client: &mut AgentClient<tonic::transport::Channel>, lease_id: &[u8]) {
    client
        .release_key(ReleaseKeyRequest {
            lease_id: lease_id.to_vec(),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_flow_from_the_ttp_through_the_tpm_to_a_mount() {
    let ttp = TestTtp::start().await;
    let swtpm = swtpm();
    let dir = tempfile::tempdir().unwrap();
    let tpm = Tpm::start(TpmConfig {
        tcti: swtpm.tcti(),
        state_dir: dir.path().join("tpm"),
        pcrs: "sha256:16".parse().unwrap(),
    })
    .unwrap();
    let link = TtpLink::new(&ttp.url, ttp.host_tls()).unwrap();

    // Enrollment: new TPM keys, accepted by the TTP's evidence check, pending approval.
    let enrollment = ensure_enrolled(&tpm, &link, HOST, Keys::IfNeeded)
        .await
        .unwrap();
    assert_eq!(enrollment.state, HostState::Pending);
    assert!(enrollment.enrolled_now);
    assert_eq!(enrollment.fingerprint.len(), 64);

    let settings = Settings {
        host_name: HOST.into(),
        ttp_url: ttp.url.clone(),
        grace: Duration::from_secs(60),
    };
    let agent = Arc::new(Agent::new(tpm.clone(), link.clone(), settings));
    let socket = dir.path().join("agent.sock");
    let listener = domfs_agent::socket::bind(&socket, 0o600, None).unwrap();
    let rule = AccessRule {
        own_uid: 0,
        group: None,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(domfs_agent::server::run(listener, agent, rule, async {
        let _ = stopped.await;
    }));
    let mut client = connect_agent(&socket).await.unwrap();

    // Not approved yet: a clear refusal.
    let status = get(&mut client, Mode::Best).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "this host (ward-db-1) is enrolled but not approved yet: run \
         `domfs-ttp hosts approve ward-db-1` on the TTP"
    );

    // Approved: BEST gets read-write, with a writer key pair that belongs together.
    ttp.admin().approve_host(HOST).unwrap();
    let first = get(&mut client, Mode::Best).await.unwrap();
    assert_eq!(first.granted_mode, Mode::ReadWrite as i32);
    assert_eq!(first.domain_key.len(), 32);
    let writer = SigningKey::from_bytes(&first.writer_secret.clone().try_into().unwrap());
    assert_eq!(
        writer.verifying_key().as_bytes().as_slice(),
        first.writer_public_key.as_slice()
    );
    assert_eq!(first.access_list_version, 1);

    // A second request is served from the cache: same lease.
    let second = get(&mut client, Mode::ReadWrite).await.unwrap();
    assert_eq!(second.lease_id, first.lease_id);
    assert_eq!(second.domain_key, first.domain_key);
    let status = client.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.host_name, HOST);
    assert_eq!(status.enrollment, "approved");
    assert!(status.ttp_reachable);
    assert_eq!(status.leases.len(), 1);
    assert_eq!(status.leases[0].mounts, 2);
    assert_eq!(status.leases[0].domain_id, hex::encode(DOMAIN));

    // The lease is renewed at the TTP while it is watched.
    let mut watch = client
        .watch(WatchRequest {
            lease_id: first.lease_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let event = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("no renewal within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(event.kind(), Kind::Renewed, "{event:?}");
    drop(watch);

    // Both uses given back: the lease ends at the TTP, and the next request asks the TTP
    // (a held read-write lease would be refused there) and unwraps the same key again.
    release(&mut client, &first.lease_id).await;
    release(&mut client, &first.lease_id).await;
    let status = client.status(StatusRequest {}).await.unwrap().into_inner();
    assert!(status.leases.is_empty());
    let again = get(&mut client, Mode::ReadWrite).await.unwrap();
    assert_ne!(again.lease_id, first.lease_id);
    assert_eq!(again.domain_key, first.domain_key);
    assert_eq!(again.writer_secret, first.writer_secret);
    release(&mut client, &again.lease_id).await;

    // The host's measured state changes: the TPM refuses, and the TTP lease that came with
    // the refused key is given back (else the second try would meet a held lease).
    swtpm
        .extend_pcr(16, b"an unexpected boot component")
        .unwrap();
    for _ in 0..2 {
        let status = get(&mut client, Mode::ReadWrite).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status
                .message()
                .starts_with("the TPM refused: PCRs changed since enrollment"),
            "{status:?}"
        );
    }

    // Re-enrolling with fresh keys resets approval; approved again, the key flows again.
    let enrollment = ensure_enrolled(&tpm, &link, HOST, Keys::Fresh)
        .await
        .unwrap();
    assert_eq!(enrollment.state, HostState::Pending);
    ttp.admin().approve_host(HOST).unwrap();
    let after = get(&mut client, Mode::Best).await.unwrap();
    assert_eq!(after.domain_key, first.domain_key);

    // Revocation at the TTP ends the lease at its next renewal.
    let mut watch = client
        .watch(WatchRequest {
            lease_id: after.lease_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    ttp.admin().revoke_host(HOST).unwrap();
    let revoked = loop {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("no lease event within 10 s")
            .unwrap()
            .expect("the stream ended without LEASE_REVOKED");
        if event.kind() != Kind::Renewed {
            break event;
        }
    };
    assert_eq!(revoked.kind(), Kind::LeaseRevoked, "{revoked:?}");
    assert!(watch.message().await.unwrap().is_none(), "the stream ends");
    let status = client.status(StatusRequest {}).await.unwrap().into_inner();
    assert!(status.leases.is_empty());
    assert_eq!(status.enrollment, "revoked");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// `domfs-agent serve` as a child process; stopped with SIGTERM on drop.
struct ServeProcess {
    child: std::process::Child,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(ttp: &TestTtp, swtpm: &Swtpm, state: &Path, socket: &Path) -> ServeProcess {
    serve_with(&ttp.url, ttp.host_tls(), swtpm, state, socket)
}

fn serve_with(
    url: &str,
    tls: &TlsFiles,
    swtpm: &Swtpm,
    state: &Path,
    socket: &Path,
) -> ServeProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_domfs-agent"))
        .arg("serve")
        .arg("--state")
        .arg(state)
        .arg("--socket")
        .arg(socket)
        .args(["--ttp", url, "--tcti", &swtpm.tcti(), "--pcrs", "sha256:16"])
        .arg("--tls-ca")
        .arg(&tls.ca)
        .arg("--tls-cert")
        .arg(&tls.cert)
        .arg("--tls-key")
        .arg(&tls.key)
        .env("TSS2_LOG", "all+none")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    ServeProcess { child, stdout }
}

fn log_of(state: &Path) -> String {
    std::fs::read_to_string(state.join("agent.log")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serve_command_enrolls_serves_and_stops_cleanly() {
    let ttp = TestTtp::start().await;
    let swtpm = swtpm();
    let dir = tempfile::tempdir().unwrap();
    let state: PathBuf = dir.path().join("state");
    let socket = dir.path().join("run/agent.sock");
    let mut agent = serve(&ttp, &swtpm, &state, &socket);

    let mut line = String::new();
    let read = tokio::task::block_in_place(|| agent.stdout.read_line(&mut line)).unwrap();
    assert!(read > 0, "serve exited early; its log:\n{}", log_of(&state));
    assert_eq!(
        line.trim_end(),
        format!("domfs-agent: serving {}", socket.display())
    );
    let log = log_of(&state);
    assert!(log.contains("enrolled with the TTP"), "{log}");
    assert!(
        log.contains("waiting for approval: run `domfs-ttp hosts approve ward-db-1` on the TTP"),
        "{log}"
    );

    ttp.admin().approve_host(HOST).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_domfs-agent"))
        .args(["status", "--json", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(status.status.success());
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["host_name"], HOST);
    assert_eq!(json["enrollment"], "approved");

    let mut client = connect_agent(&socket).await.unwrap();
    let grant = get(&mut client, Mode::Best).await.unwrap();
    assert_eq!(grant.granted_mode, Mode::ReadWrite as i32);
    let log = log_of(&state);
    assert!(log.contains("key granted"), "{log}");
    assert!(log.contains("mount_point=\"/srv/ward7\""), "{log}");
    // The keys themselves never reach the log.
    assert!(!log.contains(&hex::encode(&grant.domain_key)), "{log}");
    drop(client);

    let pid = nix::unistd::Pid::from_raw(agent.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let exit = tokio::task::block_in_place(|| agent.child.wait()).unwrap();
    assert!(exit.success(), "{exit:?}; log:\n{}", log_of(&state));
    assert!(!socket.exists(), "the socket is removed at exit");
    assert!(log_of(&state).contains("agent stopped"));
}

fn checkpoint(sequence: u64) -> Checkpoint {
    Checkpoint {
        sequence,
        generation: sequence * 10,
        root: vec![sequence as u8; 48],
        audit_sequence: sequence,
        audit_head: vec![0xa5; 32],
        ..Checkpoint::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_and_audit_entries_go_through_the_agent_to_the_ttp() {
    let ttp = TestTtp::start().await;
    let swtpm = swtpm();
    let dir = tempfile::tempdir().unwrap();
    let state: PathBuf = dir.path().join("state");
    let socket = dir.path().join("run/agent.sock");
    let mut agent = serve(&ttp, &swtpm, &state, &socket);
    let mut line = String::new();
    let read = tokio::task::block_in_place(|| agent.stdout.read_line(&mut line)).unwrap();
    assert!(read > 0, "serve exited early; its log:\n{}", log_of(&state));
    ttp.admin().approve_host(HOST).unwrap();
    let mut client = connect_agent(&socket).await.unwrap();

    // No anchor yet; the mount anchors its volume through the agent.
    let rw = get(&mut client, Mode::ReadWrite).await.unwrap();
    assert_eq!(rw.checkpoint, None);
    let anchored = client
        .checkpoint(AgentCheckpointRequest {
            lease_id: rw.lease_id.clone(),
            checkpoint: Some(checkpoint(3)),
        })
        .await
        .unwrap()
        .into_inner()
        .checkpoint
        .unwrap();
    assert_eq!((anchored.sequence, anchored.host.as_str()), (3, HOST));
    assert!(anchored.time_unix > 0);
    let anchor = ttp
        .core
        .registry()
        .read()
        .unwrap()
        .checkpoint(&DOMAIN)
        .unwrap();
    assert_eq!(anchor.map(|c| c.sequence), Some(3));

    // Going back is refused by the TTP, and the agent passes its code and words on.
    let status = client
        .checkpoint(AgentCheckpointRequest {
            lease_id: rw.lease_id.clone(),
            checkpoint: Some(checkpoint(2)),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().starts_with(
            "checkpoint would go back from sequence 3 to 2: rollback or a forked volume"
        ),
        "{status:?}"
    );

    // A cached answer carries the accepted checkpoint.
    let cached = get(&mut client, Mode::ReadWrite).await.unwrap();
    assert_eq!(cached.lease_id, rw.lease_id);
    assert_eq!(cached.checkpoint, Some(anchored.clone()));

    // Audit entries, stored at the TTP under the lease and read back through the agent.
    let stored = client
        .append_audit(AgentAppendAuditRequest {
            lease_id: rw.lease_id.clone(),
            entries: vec![b"open /a".to_vec(), b"open /b".to_vec()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stored.stored, stored.last_sequence), (2, 2));
    let (signed_message, signature) = header();
    let read = client
        .read_audit(AgentReadAuditRequest {
            signed_message,
            signature,
            after: 0,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let entries: Vec<(&str, &[u8])> = read
        .entries
        .iter()
        .map(|e| (e.host.as_str(), e.entry.as_slice()))
        .collect();
    assert_eq!(entries, [(HOST, &b"open /a"[..]), (HOST, &b"open /b"[..])]);
    assert!(!read.more);

    // Both uses given back: a fresh grant from the TTP carries the anchor too.
    release(&mut client, &rw.lease_id).await;
    release(&mut client, &rw.lease_id).await;
    let fresh = get(&mut client, Mode::ReadWrite).await.unwrap();
    assert_ne!(fresh.lease_id, rw.lease_id);
    assert_eq!(fresh.checkpoint, Some(anchored));

    let log = log_of(&state);
    assert!(log.contains("checkpoint anchored at the TTP"), "{log}");
    assert!(log.contains("checkpoint refused"), "{log}");
    assert!(log.contains("audit entries stored at the TTP"), "{log}");
    assert!(log.contains("audit entries read from the TTP"), "{log}");

    // The TTP goes away: UNAVAILABLE, so the daemon keeps its checkpoint and retries.
    drop(ttp);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        let status = client
            .checkpoint(AgentCheckpointRequest {
                lease_id: fresh.lease_id.clone(),
                checkpoint: Some(checkpoint(4)),
            })
            .await
            .unwrap_err();
        if status.code() == Code::Unavailable || std::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("cannot be reached"), "{status:?}");
}

/// A free loopback port (free when this returns; the test takes it soon after).
fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_goes_on_without_the_ttp_and_enrolls_once_it_answers() {
    // The TTP's certificates exist, but the TTP is not running yet.
    let files = TtpFiles::new();
    let address = free_port();
    let url = format!("https://{address}");
    let swtpm = swtpm();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let socket = dir.path().join("agent.sock");
    let mut agent = serve_with(&url, &files.host_tls, &swtpm, &state, &socket);
    let mut line = String::new();
    tokio::task::block_in_place(|| agent.stdout.read_line(&mut line)).unwrap();
    assert!(
        line.starts_with("domfs-agent: serving"),
        "{line:?}; log:\n{}",
        log_of(&state)
    );
    assert!(
        log_of(&state).contains("serving anyway"),
        "{}",
        log_of(&state)
    );

    let mut client = connect_agent(&socket).await.unwrap();
    let status = client.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.enrollment, "unreachable");
    assert!(!status.ttp_reachable);
    let refused = get(&mut client, Mode::Best).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("cannot be reached"),
        "{refused:?}"
    );

    // The TTP comes up on the address the agent was given: the agent enrolls by itself
    // (its first retry is 5 s after start).
    let ttp = TestTtp::serve(files, address).await;
    let mut enrolled = false;
    for _ in 0..300 {
        if ttp
            .admin()
            .list_hosts()
            .unwrap()
            .iter()
            .any(|h| h.name == HOST)
        {
            enrolled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        enrolled,
        "the agent did not enroll; log:\n{}",
        log_of(&state)
    );
    ttp.admin().approve_host(HOST).unwrap();
    let status = client.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.enrollment, "approved");
    let grant = get(&mut client, Mode::Best).await.unwrap();
    assert_eq!(grant.granted_mode, Mode::ReadWrite as i32);
}
