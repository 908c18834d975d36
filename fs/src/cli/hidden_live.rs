//! Hidden versions of a live mount, through its daemon's control socket
//! ([`crate::control`]): the CLI's [`Live`] source, and [`serve`], the daemon's answer
//! to the four `hidden-*` requests (the mount's control handler hands them here).
//!
//! The wire form of a version is the object `domfs hidden list --json` prints. A purge
//! carries the domain manager's Ed25519 signature over
//! [`purge_message`] (volume id, path, version,
//! the version's volume-wide id, time); the daemon checks it against the manager key in
//! the volume's header, refuses a signature older or newer than [`PURGE_WINDOW`] seconds,
//! and purges only the version with that id. Ids are never reused, so a signature, once
//! used, names nothing (no replay, even across daemon restarts), and one that was signed
//! before a newer version of the path was hidden does not purge that newer one.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde_json::{Value, json};

use super::HiddenSource;
use crate::audit::AuditOp;
use crate::control::client::Connection;
use crate::control::peer::Peer;
use crate::control::protocol::{Answer, Request, purge_message};
use crate::control::server::write_answer;
use crate::error::Posix;
use crate::filesystem::inode::Timestamp;
use crate::filesystem::{Caller, Filesystem, HiddenEvent, HiddenVersion};
use crate::format::header::{KeyMode, read_header};
use crate::fuse::mountinfo;

/// How far a purge's signing time may be from the daemon's clock (seconds).
pub const PURGE_WINDOW: u64 = 300;
/// How much of a version the daemon reads at a time while sending it.
const SEND_CHUNK: u32 = 1 << 20;

/// The mount at `mountpoint`, through its daemon.
pub struct Live {
    mountpoint: PathBuf,
}

impl Live {
    pub fn new(mountpoint: &Path) -> Self {
        Self {
            mountpoint: mountpoint.to_path_buf(),
        }
    }

    fn call(&self, request: &Request) -> Result<(Connection, Answer)> {
        let mp = mountinfo::resolve(&self.mountpoint)
            .with_context(|| format!("cannot find {}", self.mountpoint.display()))?;
        let socket = crate::control::socket_path(&mp);
        if !socket.exists() {
            return Err(anyhow!(
                "the daemon of {} has no control socket ({}), so its hidden versions cannot be reached through the mount; unmount it (`domfs unmount {}`) and give the volume instead",
                mp.display(),
                socket.display(),
                mp.display()
            ));
        }
        let mut conn = Connection::open(&mp)?;
        let answer = conn.call(request)?;
        Ok((conn, answer))
    }

    /// The mounted volume's id (what a manager's purge signature names).
    fn volume_id(&self) -> Result<[u8; 16]> {
        let mp = mountinfo::resolve(&self.mountpoint)?;
        let entry =
            mountinfo::find(&mp)?.ok_or_else(|| anyhow!("{} is not mounted", mp.display()))?;
        let dev = crate::device::FileDevice::open(
            Path::new(&entry.source),
            crate::device::Access::ReadOnly,
        )
        .with_context(|| format!("cannot read the header of {}", entry.source))?;
        Ok(read_header(&dev)?.header.volume_id.0)
    }
}

fn result_version(answer: Answer) -> Result<HiddenVersion> {
    let value = answer
        .result
        .ok_or_else(|| anyhow!("the daemon's answer has no result"))?;
    version_from_json(&value)
}

impl HiddenSource for Live {
    fn list(&self, prefix: Option<&str>) -> Result<Vec<HiddenVersion>> {
        let (_, answer) = self.call(&Request::HiddenList {
            prefix: prefix.map(str::to_string),
        })?;
        match answer.result {
            Some(Value::Array(items)) => items.iter().map(version_from_json).collect(),
            _ => Err(anyhow!("the daemon's answer has no list")),
        }
    }

    fn show(&self, path: &str, version: u32, out: &mut dyn Write) -> Result<u64> {
        let (mut conn, answer) = self.call(&Request::HiddenShow {
            path: path.to_string(),
            version,
        })?;
        let len = answer
            .len
            .ok_or_else(|| anyhow!("the daemon's answer announces no content"))?;
        conn.copy_bytes(len, out)?;
        Ok(len)
    }

    fn restore(&self, path: &str, version: u32, to: Option<&str>) -> Result<HiddenVersion> {
        let (_, answer) = self.call(&Request::HiddenRestore {
            path: path.to_string(),
            version,
            to: to.map(str::to_string),
        })?;
        result_version(answer)
    }

    fn purge(&self, path: &str, version: u32, manager: &SigningKey) -> Result<HiddenVersion> {
        // The signature names the version's id: look it up first.
        let wanted = crate::filesystem::hidden::normalize_path(path.as_bytes());
        let target = self
            .list(Some(path))?
            .into_iter()
            .find(|v| v.path == wanted && v.version == version)
            .ok_or_else(|| anyhow!("{path} has no hidden version {version}"))?;
        let signed_at = crate::store::unix_now();
        let message = purge_message(&self.volume_id()?, path, version, target.id, signed_at);
        let signature = manager.sign(&message);
        let (_, answer) = self.call(&Request::HiddenPurge {
            path: path.to_string(),
            version,
            id: target.id,
            signature: hex::encode(signature.to_bytes()),
            signed_at,
        })?;
        result_version(answer)
    }
}

/// A version as `domfs hidden list --json` prints it (and the control socket carries it).
pub fn version_json(v: &HiddenVersion) -> Value {
    let utf8 = std::str::from_utf8(&v.path).ok();
    json!({
        "path": v.path_text(),
        "path_hex": utf8.is_none().then(|| hex::encode(&v.path)),
        "version": v.version,
        "id": v.id,
        "ino": v.ino,
        "size": v.size,
        "blocks": v.blocks,
        "when": super::when(v),
        "when_unix": v.time.secs,
        "when_nanos": v.time.nanos,
        "uid": v.uid,
        "user": super::user_name(v.uid),
        "gid": v.gid,
        "pid": v.pid,
        "process": v.process,
        "host": v.host,
        "event": v.event.name(),
        "cut_at": matches!(v.event, HiddenEvent::Truncate | HiddenEvent::Punch { .. })
            .then_some(v.cut_at),
        "punch_length": v.punched().map(|(_, length)| length),
        "open": v.open,
        "mode": v.mode,
        "kind": v.kind().map(|k| format!("{k:?}").to_lowercase()),
    })
}

/// The version [`version_json`] describes.
pub fn version_from_json(value: &Value) -> Result<HiddenVersion> {
    let bad = |what: &str| anyhow!("the daemon's answer has a malformed version ({what})");
    let u64_of = |key: &str| value[key].as_u64().ok_or_else(|| bad(key));
    let u32_of = |key: &str| {
        value[key]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad(key))
    };
    let str_of = |key: &str| value[key].as_str().ok_or_else(|| bad(key));
    let path = match value["path_hex"].as_str() {
        Some(h) => hex::decode(h).map_err(|_| bad("path_hex"))?,
        None => str_of("path")?.as_bytes().to_vec(),
    };
    let cut_at = value["cut_at"].as_u64().unwrap_or(0);
    let punch_end = value["punch_length"]
        .as_u64()
        .and_then(|length| cut_at.checked_add(length))
        .unwrap_or(cut_at);
    let event = HiddenEvent::from_name(str_of("event")?, punch_end).ok_or_else(|| bad("event"))?;
    Ok(HiddenVersion {
        path,
        version: u32_of("version")?,
        id: u64_of("id")?,
        ino: u64_of("ino")?,
        event,
        time: Timestamp {
            secs: value["when_unix"]
                .as_i64()
                .ok_or_else(|| bad("when_unix"))?,
            nanos: u32_of("when_nanos")?,
        },
        uid: u32_of("uid")?,
        gid: u32_of("gid")?,
        pid: u32_of("pid")?,
        process: str_of("process")?.to_string(),
        host: str_of("host")?.to_string(),
        mode: u32_of("mode")?,
        size: u64_of("size")?,
        blocks: u64_of("blocks")?,
        cut_at,
        open: value["open"].as_bool().ok_or_else(|| bad("open"))?,
    })
}

/// The exit code and message for a failed request.
fn failure(e: &crate::Error, path: &str, version: u32) -> Answer {
    match e {
        crate::Error::Posix(Posix::NotFound) => Answer::failed(
            format!("{path}: no hidden version {version}, or its directory does not exist"),
            crate::cli::exit::FAILURE,
        ),
        crate::Error::Posix(Posix::Exists) => Answer::failed(
            format!("{path}: the target exists: restore with --to NEWPATH, or move it away first"),
            crate::cli::exit::REFUSED,
        ),
        crate::Error::Posix(Posix::IsDirectory) => Answer::failed(
            format!("{path}: a directory has no content to show"),
            crate::cli::exit::FAILURE,
        ),
        crate::Error::NoSpace => {
            Answer::failed("the volume is full".to_string(), crate::cli::exit::NO_SPACE)
        }
        e => Answer::failed(e.to_string(), crate::cli::exit::FAILURE),
    }
}

/// Whether the manager of the volume `fs` serves signed this purge now; the refusal
/// otherwise.
fn check_purge(
    fs: &Filesystem,
    path: &str,
    version: u32,
    id: u64,
    signature: &str,
    signed_at: u64,
) -> std::result::Result<(), Answer> {
    let header = fs.store().header();
    if header.key_mode != KeyMode::Ttp {
        return Err(Answer::failed(
            "a key-file volume has no domain manager: its hidden versions cannot be purged",
            crate::cli::exit::REFUSED,
        ));
    }
    let refused = |why: &str| Answer::failed(why.to_string(), crate::cli::exit::KEY);
    let key = <[u8; 32]>::try_from(&header.manager_key[..])
        .ok()
        .and_then(|k| VerifyingKey::from_bytes(&k).ok())
        .ok_or_else(|| refused("the volume's header has no usable manager key"))?;
    let bytes: [u8; 64] = hex::decode(signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| refused("the purge signature is malformed"))?;
    let now = crate::store::unix_now();
    if now.abs_diff(signed_at) > PURGE_WINDOW {
        return Err(refused(
            "the purge was signed too long ago (or in the future): sign it again",
        ));
    }
    let message = purge_message(&header.volume_id.0, path, version, id, signed_at);
    key.verify(&message, &Signature::from_bytes(&bytes))
        .map_err(|_| refused("the purge is not signed by this domain's manager"))?;
    match fs.hidden_get(path.as_bytes(), version) {
        Ok(v) if v.id == id => Ok(()),
        Ok(v) => Err(refused(&format!(
            "version {version} of {path} is no longer the version signed (id {id}; now id \
             {}): it was purged already or a newer version was hidden since; list and sign again",
            v.id
        ))),
        Err(_) => Err(refused(&format!(
            "{path} has no hidden version {version} (the signed version, id {id}, was purged \
             already?)"
        ))),
    }
}

/// The audit detail of a restore.
pub(crate) fn restore_detail(v: &HiddenVersion, target: &str) -> String {
    format!(
        "hidden version {} (id {}, {} of {}) to /{target}",
        v.version,
        v.id,
        v.event.name(),
        super::when(v)
    )
}

/// The audit detail of a manager's purge.
pub(crate) fn purge_detail(v: &HiddenVersion, manager_key: &[u8]) -> String {
    use sha2::Digest;
    let fingerprint = sha2::Sha256::digest(manager_key);
    format!(
        "hidden version {} (id {}, {} bytes) by the domain manager (key {})",
        v.version,
        v.id,
        v.size,
        hex::encode(&fingerprint[..8])
    )
}

/// [`serve_as`] without an audit trail of who asked (tests, tools).
pub fn serve(fs: &Filesystem, request: &Request, out: &mut dyn Write) -> std::io::Result<bool> {
    serve_inner(fs, request, None, out)
}

/// The daemon's answer to a `hidden-*` request from `peer`, written to `out`; reading a
/// version's content, restoring and purging (or a refused purge) are audited as
/// `peer`'s. Returns `Ok(false)` (and writes nothing) for any other request. The caller
/// has checked that the peer is root or in the operator group.
pub fn serve_as(
    fs: &Filesystem,
    request: &Request,
    peer: &Peer,
    out: &mut dyn Write,
) -> std::io::Result<bool> {
    serve_inner(fs, request, Some(peer), out)
}

fn serve_inner(
    fs: &Filesystem,
    request: &Request,
    peer: Option<&Peer>,
    out: &mut dyn Write,
) -> std::io::Result<bool> {
    let audit = |op: AuditOp, v: &HiddenVersion, detail: String, result: i32| {
        if let Some(peer) = peer {
            let who = Caller {
                uid: peer.uid,
                gid: peer.gid,
                pid: peer.pid,
            };
            fs.audit_done(fs.hidden_audit_record(op, who, v, detail, result));
        }
    };
    let answer = match request {
        Request::HiddenList { prefix } => {
            match fs.hidden_list(prefix.as_deref().map(str::as_bytes)) {
                Ok(list) => Answer::value(Value::Array(list.iter().map(version_json).collect())),
                Err(e) => failure(&e, prefix.as_deref().unwrap_or(""), 0),
            }
        }
        Request::HiddenShow { path, version } => {
            let v = match fs.hidden_get(path.as_bytes(), *version) {
                Ok(v) if v.kind() == Some(crate::filesystem::dir::FileKind::Directory) => {
                    Err(crate::Error::Posix(Posix::IsDirectory))
                }
                other => other,
            };
            match v {
                Ok(v) => {
                    audit(
                        AuditOp::Open,
                        &v,
                        format!("hidden version {} (id {}) shown", v.version, v.id),
                        0,
                    );
                    // The size is fixed while hidden (an open version is shown as now).
                    write_answer(out, &Answer::bytes(v.size))?;
                    let mut offset = 0;
                    while offset < v.size {
                        let chunk = fs
                            .hidden_read(path.as_bytes(), *version, offset, SEND_CHUNK)
                            .map_err(std::io::Error::other)?;
                        if chunk.is_empty() {
                            // Cannot happen for a hidden inode; never send short.
                            return Err(std::io::Error::other("the version shrank"));
                        }
                        out.write_all(&chunk)?;
                        offset += chunk.len() as u64;
                    }
                    out.flush()?;
                    return Ok(true);
                }
                Err(e) => failure(&e, path, *version),
            }
        }
        Request::HiddenRestore { path, version, to } => {
            let before = fs.hidden_get(path.as_bytes(), *version).ok();
            let result =
                fs.hidden_restore(path.as_bytes(), *version, to.as_deref().map(str::as_bytes));
            if let Some(v) = &before {
                let target = super::clean(to.as_deref().unwrap_or(path));
                let errno = result.as_ref().err().map_or(0, crate::Error::errno);
                audit(AuditOp::Restore, v, restore_detail(v, &target), errno);
            }
            let result = result.and_then(|v| fs.sync().map(|()| v));
            match result {
                Ok(v) => Answer::value(version_json(&v)),
                Err(e) => failure(&e, to.as_deref().unwrap_or(path), *version),
            }
        }
        Request::HiddenPurge {
            path,
            version,
            id,
            signature,
            signed_at,
        } => match check_purge(fs, path, *version, *id, signature, *signed_at) {
            Err(refusal) => {
                if let Ok(v) = fs.hidden_get(path.as_bytes(), *version) {
                    let why = refusal.error.clone().unwrap_or_default();
                    audit(
                        AuditOp::Purge,
                        &v,
                        format!("refused: {why}"),
                        crate::error::libc_errno::EACCES,
                    );
                }
                refusal
            }
            Ok(()) => match fs.hidden_purge_exact(path.as_bytes(), *version, *id) {
                Ok(v) => {
                    let key = &fs.store().header().manager_key;
                    audit(AuditOp::Purge, &v, purge_detail(&v, key), 0);
                    match fs.sync() {
                        Ok(()) => Answer::value(version_json(&v)),
                        Err(e) => failure(&e, path, *version),
                    }
                }
                Err(e) => failure(&e, path, *version),
            },
        },
        _ => return Ok(false),
    };
    write_answer(out, &answer)?;
    Ok(true)
}

#[cfg(test)]
#[path = "hidden_live_tests.rs"]
mod tests;
