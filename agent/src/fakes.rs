//! Test doubles for the key service and the renewal task: a TPM that "unwraps" by XOR
//! and an in-memory TTP with switchable answers. Tests only.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::Status;
use zeroize::Zeroizing;

use domfs_proto::acl::{Access, AccessList, DomainId, SignedMessage};
use domfs_proto::agent::Mode;
use domfs_proto::ttp::{
    AppendAuditRequest, AppendAuditResponse, Checkpoint, CheckpointRequest, CheckpointResponse,
    EnrollRequest, EnrollResponse, GetDomainKeyRequest, GetDomainKeyResponse, HostState,
    HostStatusResponse, ReadAuditRequest, ReadAuditResponse, RemoteAuditEntry,
};

use crate::agent::{Agent, Settings, Source};
use crate::leases::{Grant, Granted};
use crate::peer::{Peer, ProcessRef};
use crate::tpm::TpmError;
use crate::ttp::TtpApi;
use crate::unwrapper::KeyUnwrapper;

pub const HOST: &str = "ward-db-1";

/// The fake TPM "unwraps" by XOR with 0x5a; it can be told its PCRs changed.
#[derive(Default)]
pub struct FakeTpm {
    pub policy_failed: AtomicBool,
    pub no_keys: AtomicBool,
    /// Evidence from the existing keys fails with PolicyFailed (their PCRs changed).
    pub stale_keys: AtomicBool,
    /// The `fresh_keys` flag of every evidence call.
    pub evidence_calls: Mutex<Vec<bool>>,
}

pub fn wrap(plain: &[u8]) -> Vec<u8> {
    plain.iter().map(|b| b ^ 0x5a).collect()
}

impl KeyUnwrapper for FakeTpm {
    async fn has_keys(&self) -> Result<bool, TpmError> {
        Ok(!self.no_keys.load(Ordering::SeqCst))
    }
    async fn evidence(&self, nonce: Vec<u8>, fresh: bool) -> Result<EnrollRequest, TpmError> {
        self.evidence_calls.lock().unwrap().push(fresh);
        if !fresh && self.stale_keys.load(Ordering::SeqCst) {
            return Err(TpmError::PolicyFailed);
        }
        self.no_keys.store(false, Ordering::SeqCst);
        Ok(EnrollRequest {
            nonce,
            ..EnrollRequest::default()
        })
    }
    async fn unwrap(&self, wrapped: Vec<u8>) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        if self.policy_failed.load(Ordering::SeqCst) {
            return Err(TpmError::PolicyFailed);
        }
        Ok(Zeroizing::new(wrap(&wrapped)))
    }
}

/// How the fake TTP answers RenewLease.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Renewals {
    Grant(u32),
    Refuse,
    Down,
    Forgotten,
}

pub struct TtpState {
    pub host_state: HostState,
    pub grants: HashMap<DomainId, Access>,
    pub down: bool,
    pub lease_seconds: u32,
    pub renewals: Renewals,
    /// Domains whose read-write lease some other host holds.
    pub held_elsewhere: Vec<DomainId>,
    pub leases: BTreeMap<Vec<u8>, (DomainId, Granted)>,
    pub next_lease: u8,
    pub released: Vec<Vec<u8>>,
    /// Wrapped keys of the wrong length.
    pub bad_grant: bool,
    /// Enroll calls accepted.
    pub enrolls: usize,
    /// The newest checkpoint per domain (kept monotonic, as the TTP does).
    pub checkpoints: HashMap<DomainId, Checkpoint>,
    /// Every forwarded Checkpoint, AppendAudit and ReadAudit: (TTP lease id, domain).
    pub forwarded: Vec<(Vec<u8>, Vec<u8>)>,
    /// Stored audit entries per domain, in order.
    pub audit: HashMap<DomainId, Vec<Vec<u8>>>,
}

pub struct FakeTtp {
    pub state: Mutex<TtpState>,
    pub get_calls: AtomicUsize,
    pub renew_calls: AtomicUsize,
}

impl FakeTtp {
    pub fn new() -> FakeTtp {
        FakeTtp {
            state: Mutex::new(TtpState {
                host_state: HostState::Approved,
                grants: HashMap::new(),
                down: false,
                lease_seconds: 60,
                renewals: Renewals::Grant(60),
                held_elsewhere: Vec::new(),
                leases: BTreeMap::new(),
                next_lease: 1,
                released: Vec::new(),
                bad_grant: false,
                enrolls: 0,
                checkpoints: HashMap::new(),
                forwarded: Vec::new(),
                audit: HashMap::new(),
            }),
            get_calls: AtomicUsize::new(0),
            renew_calls: AtomicUsize::new(0),
        }
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, TtpState> {
        self.state.lock().unwrap()
    }

    pub fn key_of(domain: DomainId) -> Vec<u8> {
        let mut plain = vec![domain[0]; 32];
        plain.extend_from_slice(&[domain[0] ^ 0xff; 32]);
        plain
    }
}

pub fn down() -> Status {
    Status::unavailable("tcp connect error: Connection refused")
}

impl TtpApi for FakeTtp {
    async fn begin_enrollment(&self) -> Result<Vec<u8>, Status> {
        if self.state().down {
            return Err(down());
        }
        Ok(vec![0xee; 32])
    }
    async fn enroll(&self, request: EnrollRequest) -> Result<EnrollResponse, Status> {
        let mut state = self.state();
        if state.down {
            return Err(down());
        }
        if request.nonce != [0xee; 32] {
            return Err(Status::permission_denied("wrong nonce"));
        }
        state.enrolls += 1;
        state.host_state = HostState::Pending;
        Ok(EnrollResponse {
            state: HostState::Pending as i32,
            attestation_key_fingerprint: "f1".into(),
        })
    }
    async fn host_status(&self) -> Result<HostStatusResponse, Status> {
        let state = self.state();
        if state.down {
            return Err(down());
        }
        Ok(HostStatusResponse {
            name: HOST.into(),
            state: state.host_state as i32,
            attestation_key_fingerprint: "f0".into(),
        })
    }
    async fn get_domain_key(
        &self,
        request: GetDomainKeyRequest,
    ) -> Result<GetDomainKeyResponse, Status> {
        self.get_calls.fetch_add(1, Ordering::SeqCst);
        let mut state = self.state();
        if state.down {
            return Err(down());
        }
        if state.host_state != HostState::Approved {
            return Err(Status::permission_denied("host not approved"));
        }
        let domain = SignedMessage::decode(&request.signed_message)
            .unwrap()
            .domain_id;
        let rw = request.mode == domfs_proto::ttp::Mode::ReadWrite as i32;
        match state.grants.get(&domain) {
            None => return Err(Status::permission_denied("host not in the access list")),
            Some(Access::ReadOnly) if rw => {
                return Err(Status::permission_denied("host may only read"));
            }
            _ => {}
        }
        if rw && state.held_elsewhere.contains(&domain) {
            return Err(Status::failed_precondition(
                "another host holds the read-write lease",
            ));
        }
        let mut plain = FakeTtp::key_of(domain);
        if !rw {
            plain.truncate(32);
        }
        if state.bad_grant {
            plain.truncate(20);
        }
        let lease_id = vec![state.next_lease; 16];
        state.next_lease += 1;
        let mode = if rw {
            Granted::ReadWrite
        } else {
            Granted::ReadOnly
        };
        state.leases.insert(lease_id.clone(), (domain, mode));
        let checkpoint = state.checkpoints.get(&domain).cloned();
        Ok(GetDomainKeyResponse {
            wrapped_keys: wrap(&plain),
            writer_public_key: vec![1; 32],
            granted_mode: request.mode,
            lease_id,
            lease_seconds: state.lease_seconds,
            access_list_version: 1,
            checkpoint,
        })
    }
    async fn renew_lease(&self, lease_id: Vec<u8>, _: Vec<u8>) -> Result<u32, Status> {
        self.renew_calls.fetch_add(1, Ordering::SeqCst);
        let state = self.state();
        if state.down {
            return Err(down());
        }
        match state.renewals {
            Renewals::Grant(seconds) if state.leases.contains_key(&lease_id) => Ok(seconds),
            Renewals::Grant(_) | Renewals::Forgotten => Err(Status::not_found("no such lease")),
            Renewals::Refuse => Err(Status::permission_denied("host revoked")),
            Renewals::Down => Err(down()),
        }
    }
    async fn release_lease(&self, lease_id: Vec<u8>, _: Vec<u8>) -> Result<(), Status> {
        let mut state = self.state();
        if state.down {
            return Err(down());
        }
        state.leases.remove(&lease_id);
        state.released.push(lease_id);
        Ok(())
    }
    async fn checkpoint(&self, request: CheckpointRequest) -> Result<CheckpointResponse, Status> {
        let mut state = self.state();
        if state.down {
            return Err(down());
        }
        state
            .forwarded
            .push((request.lease_id.clone(), request.domain_id.clone()));
        let domain = state.lease_domain(&request.lease_id, &request.domain_id)?;
        let mut checkpoint = request.checkpoint.unwrap_or_default();
        if let Some(old) = state.checkpoints.get(&domain)
            && old.sequence >= checkpoint.sequence
        {
            return Err(Status::failed_precondition(format!(
                "checkpoint would go back from sequence {} to {}: rollback or a forked volume",
                old.sequence, checkpoint.sequence
            )));
        }
        checkpoint.host = HOST.into();
        checkpoint.time_unix = 1234;
        state.checkpoints.insert(domain, checkpoint.clone());
        Ok(CheckpointResponse {
            checkpoint: Some(checkpoint),
        })
    }
    async fn append_audit(
        &self,
        request: AppendAuditRequest,
    ) -> Result<AppendAuditResponse, Status> {
        let mut state = self.state();
        if state.down {
            return Err(down());
        }
        state
            .forwarded
            .push((request.lease_id.clone(), request.domain_id.clone()));
        let domain = state.lease_domain(&request.lease_id, &request.domain_id)?;
        let stored = state.audit.entry(domain).or_default();
        stored.extend(request.entries.iter().cloned());
        Ok(AppendAuditResponse {
            stored: request.entries.len() as u64,
            last_sequence: stored.len() as u64,
        })
    }
    async fn read_audit(&self, request: ReadAuditRequest) -> Result<ReadAuditResponse, Status> {
        let mut state = self.state();
        if state.down {
            return Err(down());
        }
        let domain = SignedMessage::decode(&request.signed_message)
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .domain_id;
        state.forwarded.push((Vec::new(), domain.to_vec()));
        let entries = state.audit.get(&domain).cloned().unwrap_or_default();
        Ok(ReadAuditResponse {
            entries: entries
                .into_iter()
                .enumerate()
                .map(|(i, entry)| RemoteAuditEntry {
                    sequence: i as u64 + 1,
                    host: HOST.into(),
                    received_unix: 1234,
                    entry,
                })
                .filter(|e| e.sequence > request.after)
                .collect(),
            more: false,
        })
    }
}

impl TtpState {
    /// The domain of a live lease, as the TTP checks it.
    fn lease_domain(&self, lease_id: &[u8], domain_id: &[u8]) -> Result<DomainId, Status> {
        match self.leases.get(lease_id) {
            Some((domain, _)) if domain.as_slice() == domain_id => Ok(*domain),
            _ => Err(Status::not_found("no such lease")),
        }
    }
}

/// Processes with an odd start time are alive.
pub fn fake_alive(p: &ProcessRef) -> bool {
    p.start_time % 2 == 1
}

pub fn caller(pid: u32, alive: bool) -> Peer {
    Peer {
        uid: 0,
        gid: 0,
        process: Some(ProcessRef {
            pid,
            start_time: if alive { 1 } else { 2 },
        }),
        groups: Vec::new(),
        name: "domfs".into(),
    }
}

pub fn agent_with(ttp: FakeTtp, grace: Duration) -> Arc<Agent<FakeTpm, FakeTtp>> {
    let settings = Settings {
        host_name: HOST.into(),
        ttp_url: "https://ttp.test:7000".into(),
        grace,
    };
    let mut agent = Agent::new(FakeTpm::default(), ttp, settings);
    agent.alive = fake_alive;
    Arc::new(agent)
}

pub fn agent() -> Arc<Agent<FakeTpm, FakeTtp>> {
    agent_with(FakeTtp::new(), Duration::from_secs(3600))
}

pub fn header(domain: DomainId) -> Vec<u8> {
    let list = AccessList {
        domain_id: domain,
        version: 1,
        grants: [(HOST.to_string(), Access::ReadWrite)].into(),
    };
    SignedMessage::new(&list, b"meta").unwrap().encode()
}

pub async fn get(
    agent: &Agent<FakeTpm, FakeTtp>,
    domain: DomainId,
    mode: Mode,
    who: &Peer,
) -> Result<(Grant, Source), Status> {
    agent
        .get_domain_key(header(domain), vec![0; 64], mode, who)
        .await
}

pub const D1: DomainId = [1; 16];
pub const D2: DomainId = [2; 16];
