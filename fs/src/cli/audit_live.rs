//! The audit trail of a live mount, through its daemon's control socket: the CLI's
//! [`Live`] source and [`serve`], the daemon's answer to `audit` requests. The daemon
//! commits what is queued first (read-write mounts), then reads and verifies the whole
//! log itself; the answer carries every entry (encoded as in the log), what the walk over
//! the chain found, and the head, so the CLI filters, prints and judges exactly as it
//! does for a volume file. For an agent-mode volume it adds the header's signed access
//! list as on the device now, with which the CLI asks the TTP for its entries.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};

use super::{AuditLog, AuditSource, DomainRef};
use crate::audit::{AuditRecord, ChainHead, ChainProblem, LogScan};
use crate::control::client::Connection;
use crate::control::protocol::{Answer, Request};
use crate::control::server::write_answer;
use crate::filesystem::Filesystem;
use crate::format::header::KeyMode;
use crate::types::VolumeId;

/// The mount at `mountpoint`, through its daemon.
pub struct Live {
    pub mountpoint: PathBuf,
}

impl AuditSource for Live {
    fn describe(&self) -> String {
        format!("the mount at {}", self.mountpoint.display())
    }

    fn read(&self) -> Result<AuditLog> {
        let mut conn = Connection::open(&self.mountpoint)?;
        let answer = conn.call(&Request::AuditVerify {})?;
        let len = answer
            .len
            .ok_or_else(|| anyhow!("the daemon's answer carries no log"))?;
        let mut payload = Vec::new();
        conn.copy_bytes(len, &mut payload)?;
        let value: Value =
            serde_json::from_slice(&payload).context("the daemon's log is malformed")?;
        from_json(&value).context("the daemon's log is malformed")
    }
}

/// Whether `path` names a live mount (a directory with a domfs mount on it).
pub fn is_live(path: &Path) -> bool {
    crate::control::client::is_domfs_mount(path)
}

/// The daemon's answer to an `audit` request; `Ok(false)` (nothing written) for others.
/// `agent`: the socket of the agent that released the key (agent mode).
pub fn serve(
    fs: &Filesystem,
    agent: Option<&Path>,
    request: &Request,
    out: &mut dyn Write,
) -> std::io::Result<bool> {
    if !matches!(
        request,
        Request::AuditVerify {} | Request::AuditQuery { .. }
    ) {
        return Ok(false);
    }
    // What is queued goes into the log first, so the answer includes the caller's own
    // open of … nothing (the socket is not a file), but every request before it.
    if !fs.is_read_only()
        && let Err(e) = fs.sync()
    {
        write_answer(
            out,
            &Answer::failed(format!("cannot commit the queued entries: {e}"), 1),
        )?;
        return Ok(true);
    }
    let scan = match fs.read_audit_log() {
        Ok(scan) => scan,
        Err(e) => {
            write_answer(
                out,
                &Answer::failed(format!("cannot read the audit log: {e}"), 4),
            )?;
            return Ok(true);
        }
    };
    let domain = match domain_of(fs, agent) {
        Ok(domain) => domain,
        Err(e) => {
            write_answer(
                out,
                &Answer::failed(format!("cannot read the volume's header: {e}"), 5),
            )?;
            return Ok(true);
        }
    };
    let mut value = to_json(&fs.store().header().volume_id, &scan);
    if let Some(domain) = domain {
        value["domain"] = json!({
            "signed_message": hex::encode(&domain.signed_message),
            "signature": hex::encode(&domain.signature),
            "agent": domain.agent.as_ref().map(|a| a.to_string_lossy().into_owned()),
        });
    }
    let payload = serde_json::to_vec(&value).map_err(std::io::Error::other)?;
    write_answer(out, &Answer::bytes(payload.len() as u64))?;
    out.write_all(&payload)?;
    out.flush()?;
    Ok(true)
}

/// An agent-mode volume's access list as on the device now (`domfs grant` may have
/// rewritten it since the mount, and the TTP answers only for the newest).
fn domain_of(fs: &Filesystem, agent: Option<&Path>) -> crate::Result<Option<DomainRef>> {
    if fs.store().header().key_mode != KeyMode::Ttp {
        return Ok(None);
    }
    let header = fs.store().current_header()?;
    Ok(Some(DomainRef {
        signed_message: header.signed_message,
        signature: header.signature,
        agent: agent.map(Path::to_path_buf),
    }))
}

fn to_json(volume: &VolumeId, scan: &LogScan) -> Value {
    json!({
        "volume": hex::encode(volume.0),
        "entries": scan.entries.iter().map(|r| hex::encode(r.encode())).collect::<Vec<_>>(),
        "problems": scan.problems.iter().map(|p| json!({
            "seq": p.seq, "offset": p.offset, "what": p.what,
        })).collect::<Vec<_>>(),
        "head": {
            "seq": scan.head.seq,
            "len": scan.head.len,
            "mac": hex::encode(scan.head.mac),
        },
    })
}

fn from_json(value: &Value) -> Result<AuditLog> {
    let text = |v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("a text field is missing"))
    };
    let number = |v: &Value| {
        v.as_u64()
            .ok_or_else(|| anyhow!("a number field is missing"))
    };
    let volume: [u8; 16] = hex::decode(text(&value["volume"])?)?
        .try_into()
        .map_err(|_| anyhow!("bad volume id"))?;
    let mut entries = Vec::new();
    for e in value["entries"].as_array().into_iter().flatten() {
        entries.push(AuditRecord::decode(&hex::decode(text(e)?)?)?);
    }
    let mut problems = Vec::new();
    for p in value["problems"].as_array().into_iter().flatten() {
        problems.push(ChainProblem {
            seq: number(&p["seq"])?,
            offset: number(&p["offset"])?,
            what: text(&p["what"])?,
        });
    }
    let head = &value["head"];
    let mac: [u8; 32] = hex::decode(text(&head["mac"])?)?
        .try_into()
        .map_err(|_| anyhow!("bad head MAC"))?;
    let domain = match &value["domain"] {
        Value::Null => None,
        d => Some(DomainRef {
            signed_message: hex::decode(text(&d["signed_message"])?)?,
            signature: hex::decode(text(&d["signature"])?)?,
            agent: d["agent"].as_str().map(PathBuf::from),
        }),
    };
    Ok(AuditLog {
        domain,
        volume: VolumeId(volume),
        scan: LogScan {
            entries,
            problems,
            head: ChainHead {
                seq: number(&head["seq"])?,
                len: number(&head["len"])?,
                mac,
            },
        },
    })
}
