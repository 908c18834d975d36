//! Who may use the agent's socket: `domfs-agent status` run under other uids and groups
//! (through `setpriv`) against an agent served in-process with a fake TPM and TTP.
//! Needs root, which the test machines give; without it this fails rather than skips.
#![allow(clippy::unwrap_used)] // a test: a panic is a failure with its message

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::Status;
use zeroize::Zeroizing;

use domfs_agent::agent::{Agent, Settings};
use domfs_agent::peer::AccessRule;
use domfs_agent::tpm::TpmError;
use domfs_agent::ttp::TtpApi;
use domfs_agent::unwrapper::KeyUnwrapper;
use domfs_proto::ttp::{
    AppendAuditRequest, AppendAuditResponse, CheckpointRequest, CheckpointResponse, EnrollRequest,
    EnrollResponse, GetDomainKeyRequest, GetDomainKeyResponse, HostState, HostStatusResponse,
    ReadAuditRequest, ReadAuditResponse,
};

const AGENT_UID: u32 = 4321;
const AGENT_GROUP: u32 = 4242;
const NOBODY: u32 = 65534;

struct NoTpm;

impl KeyUnwrapper for NoTpm {
    async fn has_keys(&self) -> Result<bool, TpmError> {
        Ok(true)
    }
    async fn evidence(&self, _: Vec<u8>, _: bool) -> Result<EnrollRequest, TpmError> {
        Err(TpmError::Failed("no TPM in this test".into()))
    }
    async fn unwrap(&self, _: Vec<u8>) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        Err(TpmError::Failed("no TPM in this test".into()))
    }
}

/// Answers HostStatus only.
struct StatusOnlyTtp;

impl TtpApi for StatusOnlyTtp {
    async fn begin_enrollment(&self) -> Result<Vec<u8>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn enroll(&self, _: EnrollRequest) -> Result<EnrollResponse, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn host_status(&self) -> Result<HostStatusResponse, Status> {
        Ok(HostStatusResponse {
            name: "ward-db-1".into(),
            state: HostState::Approved as i32,
            attestation_key_fingerprint: String::new(),
        })
    }
    async fn get_domain_key(&self, _: GetDomainKeyRequest) -> Result<GetDomainKeyResponse, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn renew_lease(&self, _: Vec<u8>, _: Vec<u8>) -> Result<u32, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn release_lease(&self, _: Vec<u8>, _: Vec<u8>) -> Result<(), Status> {
        Err(Status::unimplemented("test"))
    }
    async fn checkpoint(&self, _: CheckpointRequest) -> Result<CheckpointResponse, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn append_audit(&self, _: AppendAuditRequest) -> Result<AppendAuditResponse, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn read_audit(&self, _: ReadAuditRequest) -> Result<ReadAuditResponse, Status> {
        Err(Status::unimplemented("test"))
    }
}

/// Collects the agent's log lines.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct Outcome {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `domfs-agent status` as `uid`/`gid` with the supplementary groups given.
async fn status_as(socket: &std::path::Path, uid: u32, gid: u32, groups: &[u32]) -> Outcome {
    let mut command = tokio::process::Command::new("setpriv");
    command
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    if groups.is_empty() {
        command.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        command.arg(format!("--groups={}", list.join(",")));
    }
    command
        .arg(env!("CARGO_BIN_EXE_domfs-agent"))
        .arg("status")
        .arg("--socket")
        .arg(socket);
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("status did not finish within 30 s")
        .expect("cannot run setpriv");
    Outcome {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_root_the_agents_user_and_its_group_get_in() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test switches uids with setpriv and must run as root"
    );
    let log = LogBuffer::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("agent.sock");
    // World-connectable, so the credential check is the only gate being tested.
    let listener = domfs_agent::socket::bind(&socket, 0o666, None).unwrap();
    let settings = Settings {
        host_name: "ward-db-1".into(),
        ttp_url: "https://ttp.test:7000".into(),
        grace: Duration::from_secs(60),
    };
    let agent = Arc::new(Agent::new(NoTpm, StatusOnlyTtp, settings));
    let rule = AccessRule {
        own_uid: AGENT_UID,
        group: Some(AGENT_GROUP),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(domfs_agent::server::run(listener, agent, rule, async {
        let _ = stopped.await;
    }));

    // Root, the agent's own uid, and the group (supplementary or primary) get in.
    for (uid, gid, groups) in [
        (0, 0, vec![]),
        (AGENT_UID, AGENT_UID, vec![]),
        (NOBODY, NOBODY, vec![100, AGENT_GROUP]),
        (NOBODY, AGENT_GROUP, vec![]),
    ] {
        let outcome = status_as(&socket, uid, gid, &groups).await;
        assert!(
            outcome.ok,
            "uid {uid} gid {gid} groups {groups:?} was refused: {}",
            outcome.stderr
        );
        assert!(
            outcome.stdout.contains("host: ward-db-1"),
            "{}",
            outcome.stdout
        );
        assert!(
            outcome.stdout.contains("enrollment: approved"),
            "{}",
            outcome.stdout
        );
    }

    // Anyone else is refused, and the refusal is logged with who it was.
    let outcome = status_as(&socket, NOBODY, NOBODY, &[100]).await;
    assert!(!outcome.ok, "nobody got in: {}", outcome.stdout);
    assert!(
        outcome
            .stderr
            .contains("uid 65534 may not use the domfs agent"),
        "{}",
        outcome.stderr
    );
    assert!(outcome.stdout.is_empty(), "{}", outcome.stdout);
    let text = log.text();
    let line = text
        .lines()
        .find(|l| l.contains("socket access refused"))
        .unwrap_or_else(|| panic!("no refusal in the log:\n{text}"));
    assert!(line.contains("uid=65534"), "{line}");
    assert!(line.contains("rpc=\"Status\""), "{line}");
    assert!(line.contains("process=\"domfs-agent\""), "{line}");
    assert!(line.contains("pid="), "{line}");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
