//! The audit trail of a live mount, through its daemon's control socket: the CLI's
//! [`Live`] source and [`serve`], the daemon's answer to `audit` requests. The daemon
//! commits what is queued first (read-write mounts), then reads and verifies the whole
//! log itself; the answer carries every entry (encoded as in the log), what the walk over
//! the chain found, and the head, so the CLI filters, prints and judges exactly as it
//! does for a volume file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};

use super::{AuditLog, AuditSource};
use crate::audit::{AuditRecord, ChainHead, ChainProblem, LogScan};
use crate::control::client::Connection;
use crate::control::protocol::{Answer, Request};
use crate::control::server::write_answer;
use crate::filesystem::Filesystem;
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
pub fn serve(fs: &Filesystem, request: &Request, out: &mut dyn Write) -> std::io::Result<bool> {
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
    let payload = serde_json::to_vec(&to_json(&fs.store().header().volume_id, &scan))
        .map_err(std::io::Error::other)?;
    write_answer(out, &Answer::bytes(payload.len() as u64))?;
    out.write_all(&payload)?;
    out.flush()?;
    Ok(true)
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
    Ok(AuditLog {
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
