//! [`TtpCore`]: the state a running TTP decides with (registry, K_TTP, leases, enrollment
//! nonces, audit store, decision log), and the checks every request shares. The requests
//! themselves are in [`crate::enroll`], [`crate::domains`], [`crate::release`],
//! [`crate::checkpoint`] and [`crate::remote_audit`]; [`crate::service`] puts them on gRPC.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use domfs_proto::acl::{Access, AccessList, DomainId, SignedMessage};

use crate::audit_store::{AUDIT_FILE, AuditStore};
use crate::decision_log::DecisionLog;
use crate::domains::acl_refusal;
use crate::enroll::EnrollmentNonces;
use crate::leases::RoLeases;
use crate::pki::{Peer, Role};
use crate::records::{DomainRecord, HostRecord, HostState};
use crate::refusal::Refusal;
use crate::registry::{Lookup, Registry};
use crate::secret::Secret32;
use crate::state::StateDir;

/// Bounds on request fields.
pub const MAX_SIGNED_MESSAGE: usize = crate::records::MAX_SIGNED_MESSAGE;
pub const DEFAULT_LEASE_SECONDS: u32 = 300;

pub struct TtpCore {
    pub(crate) registry: Arc<Registry>,
    pub(crate) master: Secret32,
    pub(crate) state: StateDir,
    pub(crate) lease_seconds: u32,
    pub(crate) ro_leases: RoLeases,
    pub(crate) enrollment: EnrollmentNonces,
    pub(crate) log: DecisionLog,
    pub(crate) audit: AuditStore,
    pub(crate) audit_cap: u64,
}

/// How a [`TtpCore`] is set up.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub state: StateDir,
    pub lease_seconds: u32,
    /// The decision log (default `DIR/ttp.log`).
    pub log_file: Option<PathBuf>,
    /// Echo decisions to stderr.
    pub echo: bool,
    /// The most audit bytes one domain may store ([`crate::audit_store::DEFAULT_AUDIT_CAP`]).
    pub audit_cap: u64,
}

impl TtpCore {
    /// Opens the registry and K_TTP of `config.state`.
    pub fn open(config: &CoreConfig) -> crate::Result<TtpCore> {
        config.state.check()?;
        if config.lease_seconds == 0 {
            return Err(crate::Error::Invalid(
                "the lease must be at least 1 second".into(),
            ));
        }
        let registry = Arc::new(Registry::open(config.state.root())?);
        let master = config.state.master_key()?;
        let log_path = config
            .log_file
            .clone()
            .unwrap_or_else(|| config.state.default_log());
        let log = DecisionLog::open(&log_path, config.echo)?;
        let audit = AuditStore::open(&config.state.file(AUDIT_FILE))?;
        Ok(TtpCore {
            registry,
            master,
            state: config.state.clone(),
            lease_seconds: config.lease_seconds,
            ro_leases: RoLeases::default(),
            enrollment: EnrollmentNonces::default(),
            log,
            audit,
            audit_cap: config.audit_cap,
        })
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn state(&self) -> &StateDir {
        &self.state
    }

    pub fn decision_log(&self) -> &DecisionLog {
        &self.log
    }

    pub fn ro_leases(&self) -> &RoLeases {
        &self.ro_leases
    }

    pub fn audit_store(&self) -> &AuditStore {
        &self.audit
    }

    pub(crate) fn lease_until(&self, now: u64) -> u64 {
        now.saturating_add(u64::from(self.lease_seconds))
    }

    /// The mode of the caller's live lease `lease_id` on domain `id`; `None` when it holds
    /// no such lease (unknown, another host's, another domain's, expired, released).
    pub(crate) fn live_lease(
        &self,
        view: &impl Lookup,
        peer: &Peer,
        id: &DomainId,
        lease_id: &[u8; 16],
        now: u64,
    ) -> Result<Option<Access>, Refusal> {
        if let Some(lease) = self.ro_leases.get(lease_id)
            && lease.host == peer.name
            && lease.domain == *id
            && lease.expires_unix > now
        {
            return Ok(Some(Access::ReadOnly));
        }
        let rw = view.rw_lease(id)?.is_some_and(|l| {
            l.lease_id == *lease_id && l.holder == peer.name && l.expires_unix > now
        });
        Ok(rw.then_some(Access::ReadWrite))
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A unix time as RFC 3339 UTC, e.g. `2026-11-05T09:12:44Z`.
pub fn format_unix(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("unix time {unix}"))
}

pub(crate) fn require_role(peer: &Peer, role: Role) -> Result<(), Refusal> {
    if peer.role == role {
        Ok(())
    } else {
        Err(Refusal::denied(format!(
            "this call needs a {role} certificate; {} presented a {} certificate",
            peer.name, peer.role
        )))
    }
}

pub(crate) fn bounded(field: &str, bytes: &[u8], max: usize) -> Result<(), Refusal> {
    if bytes.len() > max {
        Err(Refusal::invalid(format!(
            "{field} of {} bytes (at most {max})",
            bytes.len()
        )))
    } else {
        Ok(())
    }
}

pub(crate) fn exact<const N: usize>(field: &str, bytes: &[u8]) -> Result<[u8; N], Refusal> {
    bytes
        .try_into()
        .map_err(|_| Refusal::invalid(format!("{field} of {} bytes (must be {N})", bytes.len())))
}

/// The domain a signed message claims to be about, before anything about it is trusted.
pub(crate) fn claimed(message: &[u8]) -> Result<SignedMessage, Refusal> {
    bounded("signed message", message, MAX_SIGNED_MESSAGE)?;
    SignedMessage::decode(message).map_err(|e| Refusal::invalid(e.to_string()))
}

pub(crate) fn mode_of(mode: i32) -> Result<Access, Refusal> {
    use domfs_proto::ttp::Mode;
    match Mode::try_from(mode) {
        Ok(Mode::ReadOnly) => Ok(Access::ReadOnly),
        Ok(Mode::ReadWrite) => Ok(Access::ReadWrite),
        _ => Err(Refusal::invalid(format!(
            "mode {mode} (must be READ_ONLY or READ_WRITE)"
        ))),
    }
}

pub(crate) fn proto_mode(access: Access) -> domfs_proto::ttp::Mode {
    match access {
        Access::ReadOnly => domfs_proto::ttp::Mode::ReadOnly,
        Access::ReadWrite => domfs_proto::ttp::Mode::ReadWrite,
    }
}

/// The registered (newest) access list of a domain. It was verified when it was stored.
pub(crate) fn registered_list(record: &DomainRecord) -> Result<AccessList, Refusal> {
    SignedMessage::decode(&record.signed_message)
        .and_then(|m| m.access_list())
        .map_err(|e| {
            Refusal::internal(&crate::Error::corrupt(
                "a registered access list",
                e.to_string(),
            ))
        })
}

/// Checks a signed message a host presents (as read from a volume header) against the
/// domain's registry record: it must verify with the pinned manager key and carry the
/// newest registered version (older: a rollback to a list that may still name a revoked
/// host; newer: never registered).
pub(crate) fn check_presented(
    domain: &DomainRecord,
    message: &[u8],
    signature: &[u8],
) -> Result<(), Refusal> {
    let presented = domfs_proto::acl::verify(message, signature, &domain.manager_key)
        .map_err(|e| acl_refusal(e, "the manager key pinned for this domain"))?;
    let (asked, registered) = (presented.message.version, domain.version);
    if asked < registered {
        return Err(Refusal::denied(format!(
            "access list version {asked} is older than the registered version {registered}"
        )));
    }
    if asked > registered {
        return Err(Refusal::denied(format!(
            "access list version {asked} was never registered (the newest registered is \
             {registered})"
        )));
    }
    Ok(())
}

/// What an authorised host gets to work with.
pub(crate) struct Authorised {
    pub domain: DomainRecord,
    pub host: HostRecord,
}

/// The checks every grant and every renewal makes: the domain exists and lives, the host
/// is enrolled, approved and not revoked, and the newest registered list gives it `mode`.
pub(crate) fn authorise(
    view: &impl Lookup,
    host_name: &str,
    id: &DomainId,
    mode: Access,
) -> Result<Authorised, Refusal> {
    let domain = view
        .domain(id)?
        .ok_or_else(|| Refusal::not_found(format!("unknown domain {}", hex::encode(id))))?;
    if domain.destroyed() {
        return Err(Refusal::denied(format!(
            "domain {} was destroyed",
            hex::encode(id)
        )));
    }
    let host = view.host(host_name)?.ok_or_else(|| {
        Refusal::denied(format!("host {host_name} has not enrolled with this TTP"))
    })?;
    match host.state {
        HostState::Approved => {}
        HostState::Pending => {
            return Err(Refusal::denied(format!(
                "host {host_name} is enrolled but not approved (`domfs-ttp hosts approve {host_name}`)"
            )));
        }
        HostState::Revoked => {
            return Err(Refusal::denied(format!("host {host_name} is revoked")));
        }
    }
    let list = registered_list(&domain)?;
    match list.access_of(host_name) {
        None => Err(Refusal::denied(format!(
            "host {host_name} is not in access list version {}",
            domain.version
        ))),
        Some(access) if !access.allows(mode) => Err(Refusal::denied(format!(
            "host {host_name} has only {access} access in access list version {} ({mode} asked)",
            domain.version
        ))),
        Some(_) => Ok(Authorised { domain, host }),
    }
}
