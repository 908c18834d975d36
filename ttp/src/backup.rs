//! Encrypted backups of the whole TTP, and restoring one into a new state directory.
//!
//! The TTP's registry is as precious as the data: losing r (or K_TTP) loses every domain
//! key. A backup holds K_TTP, the CA and server key pairs, a consistent snapshot of every
//! registry table (one read transaction) and the r of every live domain in it, encrypted
//! with AES-256-GCM under a 32-byte key the operator keeps elsewhere.
//!
//! | size | field |
//! |---|---|
//! | 16 | `"DOMFSTTP-BACKUP1"` (also the AEAD's associated data) |
//! | 12 | random nonce |
//! | n + 16 | AES-256-GCM ciphertext and tag of the payload |
//!
//! Payload: `u8 1`, `u32` entry count, then per entry a `u32`-length-prefixed name and a
//! `u32`-length-prefixed body. Entries: the files `master.key`, `ca.crt`, `ca.key`,
//! `server.crt`, `server.key`; `table:NAME` for `managers`, `hosts`, `domains`,
//! `rw_leases` and `checkpoints` (body: `u32` row count, rows of prefixed key and value,
//! the registry's own record encodings; backups made before volumes were anchored have no
//! `checkpoints`); `nonces` (body: `u32` count, then 16-byte domain id ‖ 32-byte r).
//!
//! The audit entries read-only hosts stored (`audit.redb`, up to the audit cap per
//! domain) are not in a backup: copy that file while the server is stopped.
//!
//! Restore (`domfs-ttp restore --state NEWDIR --from FILE --key KEYFILE`) writes a new
//! state directory (which must not exist or be empty) with the same K_TTP, CA, server
//! certificate and registry, so every domain key derives exactly as before. A domain
//! destroyed while the snapshot was taken comes back destroyed. Backups taken before a
//! domain was destroyed still hold its r: crypto-shredding is complete only once those are
//! gone too. Restoring an old backup brings back older checkpoints: volumes then
//! still mount (their sequence is ahead), but a rollback to a copy between the backup's
//! checkpoint and the latest one goes unnoticed.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use domfs_proto::acl::DomainId;

use crate::error::{Error, Result};
use crate::records::{DomainRecord, Reader, Writer};
use crate::registry::{Lookup, Registry, domain_id};
use crate::secret::{Secret32, SecretBytes};
use crate::state::{self, StateDir};

const MAGIC: &[u8; 16] = b"DOMFSTTP-BACKUP1";
const FILES: [&str; 5] = [
    state::MASTER_KEY,
    state::CA_CERT,
    state::CA_KEY,
    state::SERVER_CERT,
    state::SERVER_KEY,
];
const TABLES: [&str; 5] = ["managers", "hosts", "domains", "rw_leases", "checkpoints"];
/// Certificates and keys are a few KiB; a bound keeps a damaged backup from asking much.
const MAX_FILE: usize = 64 * 1024;
const MAX_BODY: usize = 1 << 30;

fn key(backup_key: &Secret32) -> Result<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, backup_key.expose())
        .map(LessSafeKey::new)
        .map_err(|_| Error::Backup("cannot use the backup key".into()))
}

/// A consistent, encrypted copy of the TTP in `state` (whose registry is `registry`).
pub fn create(registry: &Registry, state: &StateDir, backup_key: &Secret32) -> Result<Vec<u8>> {
    let read = registry.read()?;
    let tables = read.dump()?;
    let mut nonces = SecretBytes::with_capacity(4 + 48 * 64);
    let mut live: Vec<(DomainId, Secret32)> = Vec::new();
    for (id, record, _) in read.domains()? {
        if let Some(r) = registry.nonce(&id, &record)? {
            live.push((id, r));
        }
    }
    nonces.extend(&(live.len() as u32).to_le_bytes());
    for (id, r) in &live {
        nonces.extend(id);
        nonces.extend(r.expose());
    }

    let mut entries: Vec<(String, SecretBytes)> = Vec::new();
    for name in FILES {
        entries.push((name.to_string(), SecretBytes::from_vec(state.read(name)?)));
    }
    for (name, rows) in tables {
        let mut w = Writer::bare();
        w.raw(&(rows.len() as u32).to_le_bytes());
        for (k, v) in rows {
            w.bytes(&k);
            w.bytes(&v);
        }
        entries.push((format!("table:{name}"), SecretBytes::from_vec(w.0)));
    }
    entries.push(("nonces".to_string(), nonces));

    let total: usize = entries
        .iter()
        .map(|(n, b)| 8 + n.len() + b.expose().len())
        .sum();
    let mut payload = SecretBytes::with_capacity(5 + total + 16);
    payload.extend(&[1]);
    payload.extend(&(entries.len() as u32).to_le_bytes());
    for (name, body) in &entries {
        payload.extend(&(name.len() as u32).to_le_bytes());
        payload.extend(name.as_bytes());
        payload.extend(&(body.expose().len() as u32).to_le_bytes());
        payload.extend(body.expose());
    }

    let mut nonce = [0u8; NONCE_LEN];
    crate::error::random(&mut nonce)?;
    let mut sealed = payload.expose().to_vec();
    key(backup_key)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(MAGIC),
            &mut sealed,
        )
        .map_err(|_| Error::Backup("encryption failed".into()))?;
    let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + sealed.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Decrypts `backup` and writes a new state directory at `target` from it.
pub fn restore(target: &StateDir, backup: &[u8], backup_key: &Secret32) -> Result<()> {
    let payload = open(backup, backup_key)?;
    let mut files: Vec<(String, SecretBytes)> = Vec::new();
    let mut tables: Vec<(String, Vec<u8>)> = Vec::new();
    let mut nonces: Vec<(DomainId, Secret32)> = Vec::new();
    let mut r = Reader::bare(payload.expose(), "the backup".into());
    if r.u8()? != 1 {
        return Err(Error::Backup("unknown payload format".into()));
    }
    let count = r.u32()?;
    for _ in 0..count {
        let name = r.text(64)?;
        let body = r.bytes(MAX_BODY)?;
        if FILES.contains(&name.as_str()) {
            if body.len() > MAX_FILE {
                return Err(Error::Backup(format!("{name} is too large")));
            }
            files.push((name, SecretBytes::from_vec(body.to_vec())));
        } else if let Some(table) = name.strip_prefix("table:") {
            tables.push((table.to_string(), body.to_vec()));
        } else if name == "nonces" {
            let mut n = Reader::bare(body, "the backup's nonces".into());
            for _ in 0..n.u32()? {
                let id: DomainId = n.array()?;
                let secret = Secret32::from_slice(n.take(32)?)
                    .ok_or_else(|| Error::Backup("a nonce is short".into()))?;
                nonces.push((id, secret));
            }
            n.finish()?;
        } else {
            return Err(Error::Backup(format!("unknown entry {name:?}")));
        }
    }
    r.finish()?;
    for name in FILES {
        if !files.iter().any(|(n, _)| n == name) {
            return Err(Error::Backup(format!("{name} is missing")));
        }
    }
    if Secret32::from_slice(
        files
            .iter()
            .find(|(n, _)| n == state::MASTER_KEY)
            .map(|(_, b)| b.expose())
            .unwrap_or_default(),
    )
    .is_none()
    {
        return Err(Error::Backup("master.key is not 32 bytes".into()));
    }

    target.create_root()?;
    for (name, body) in &files {
        let mode = if name.ends_with(".crt") { 0o644 } else { 0o600 };
        target.write_new(name, body.expose(), mode)?;
    }
    Registry::create(target.root())?;
    target.restrict(crate::registry::REGISTRY_FILE)?;
    let registry = Registry::open(target.root())?;
    let write = registry.write()?;
    for (table, body) in &tables {
        if !TABLES.contains(&table.as_str()) {
            return Err(Error::Backup(format!("unknown table {table:?}")));
        }
        let mut rows = Reader::bare(body, format!("the backup's table {table}"));
        for _ in 0..rows.u32()? {
            let key = rows.bytes(MAX_BODY)?;
            let value = rows.bytes(MAX_BODY)?;
            if *table == "domains" {
                let id = domain_id(key)?;
                let mut record = DomainRecord::decode(&id, value)?;
                let live = !record.destroyed();
                record.nonce_slot = match nonces.iter().find(|(n, _)| *n == id) {
                    // r is synced into its slot before the record naming it commits.
                    Some((_, r)) if live => Some(registry.nonces().store(&id, r)?),
                    _ => None,
                };
                if live && record.destroyed() {
                    // Destroyed while the snapshot was taken.
                    record.destroyed_unix = crate::core::now_unix();
                }
                write.put_domain(&id, &record)?;
            } else {
                write.put_raw(table, key, value)?;
            }
        }
        rows.finish()?;
    }
    write.commit()?;
    // Every record must decode, or the restore is refused now rather than at first use.
    let read = registry.read()?;
    read.managers()?;
    read.hosts()?;
    for (id, _, _) in read.domains()? {
        read.domain(&id)?;
    }
    Ok(())
}

fn open(backup: &[u8], backup_key: &Secret32) -> Result<SecretBytes> {
    if backup.len() < MAGIC.len() + NONCE_LEN + 16 || &backup[..MAGIC.len()] != MAGIC {
        return Err(Error::Backup("not a domfs-ttp backup".into()));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&backup[MAGIC.len()..MAGIC.len() + NONCE_LEN]);
    let mut sealed = backup[MAGIC.len() + NONCE_LEN..].to_vec();
    let plain_len = key(backup_key)?
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(MAGIC),
            &mut sealed,
        )
        .map_err(|_| {
            Error::Backup(
                "the backup does not decrypt with this key (wrong key, or damaged)".into(),
            )
        })?
        .len();
    sealed.truncate(plain_len);
    Ok(SecretBytes::from_vec(sealed))
}

/// A 32-byte key from a key file: 32 raw bytes, or 64 hex digits (surrounding white space
/// allowed).
pub fn parse_key_file(bytes: &[u8]) -> Option<Secret32> {
    if bytes.len() == 32 {
        return Secret32::from_slice(bytes);
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let mut decoded = hex::decode(text).ok()?;
    let key = Secret32::from_slice(&decoded);
    zeroize::Zeroize::zeroize(&mut decoded);
    key
}
