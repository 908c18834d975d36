//! The entries the TTP keeps for an agent-mode volume's read-only hosts, read through
//! this host's agent (`Agent.ReadAudit`, which the TTP answers for hosts in the access
//! list and for the domain's manager).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use domfs_proto::agent::AgentReadAuditRequest;
use domfs_proto::client::{connect_agent, describe_status};

use super::super::exit::KeyRefused;
use super::super::ttp::runtime;
use crate::audit::remote::RawRemote;

/// Which domain: the header's signed access list, as the TTP knows it.
#[derive(Clone, Debug)]
pub struct DomainRef {
    pub signed_message: Vec<u8>,
    pub signature: Vec<u8>,
    /// The agent a live mount got its key from (`domfs audit` asks it unless told
    /// `--agent`).
    pub agent: Option<PathBuf>,
}

/// Pages asked for at most (a page is at most 10,000 entries and about 120 KiB, so this
/// is at least a few million entries: more than the TTP's default cap of 1 GiB holds).
const MAX_PAGES: usize = 10_000;
/// How long one call to the agent may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Every entry the TTP keeps for the domain, oldest first.
pub fn read_from_ttp(socket: &Path, domain: &DomainRef) -> Result<Vec<RawRemote>> {
    runtime()?.block_on(read_all(socket, domain))
}

async fn read_all(socket: &Path, domain: &DomainRef) -> Result<Vec<RawRemote>> {
    let mut agent = connect_agent(socket).await.with_context(|| {
        format!(
            "cannot reach the domfs agent at {} (is `domfs-agent serve` running? --agent \
             SOCKET names another socket)",
            socket.display()
        )
    })?;
    let mut out: Vec<RawRemote> = Vec::new();
    let mut after = 0;
    for _ in 0..MAX_PAGES {
        let call = agent.read_audit(AgentReadAuditRequest {
            signed_message: domain.signed_message.clone(),
            signature: domain.signature.clone(),
            after,
            limit: 0,
        });
        let page = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the agent did not answer within {} s",
                    CALL_TIMEOUT.as_secs()
                )
            })?
            .map_err(|status| {
                let text = format!(
                    "the TTP did not give its audit entries for this domain: {}",
                    describe_status(&status)
                );
                match status.code() {
                    tonic::Code::PermissionDenied => KeyRefused(text).into(),
                    _ => anyhow::anyhow!(text),
                }
            })?
            .into_inner();
        let last = page.entries.last().map(|e| e.sequence);
        for e in page.entries {
            if e.sequence <= after {
                bail!(
                    "the TTP answered out of order (entry {} after {after})",
                    e.sequence
                );
            }
            after = e.sequence;
            out.push((e.sequence, e.host, e.received_unix, e.entry));
        }
        if !page.more || last.is_none() {
            return Ok(out);
        }
    }
    bail!("the TTP keeps more than {MAX_PAGES} pages of entries for this domain")
}
