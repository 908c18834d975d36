//! Where the TTP keeps the audit entries of mounts that cannot write their volume
//! (read-only hosts): `DIR/audit.redb`, a redb database of its own beside the registry.
//! It grows (up to the cap per domain) and is not part of a backup, while the registry
//! stays small and is; the server opens it, operator commands do not.
//!
//! Tables (integers big-endian in keys, so entries sort by sequence; records as in
//! [`crate::records`]):
//!
//! | table | key | value |
//! |---|---|---|
//! | `entries` | domain id (16) ‖ sequence (`u64` BE) | `u8 1`, host (text), received (`u64`), entry (bytes) |
//! | `usage` | domain id (16) | `u8 1`, last sequence (`u64`), bytes stored (`u64`) |
//!
//! Every append is one write transaction, synced on commit before the caller is answered:
//! all of a call's entries are stored, or none.

use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use domfs_proto::MAX_AUDIT_ENTRY;
use domfs_proto::acl::{DomainId, MAX_HOST_NAME_LEN};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::{Error, Result};
use crate::records::{Reader, Writer};

pub const AUDIT_FILE: &str = "audit.redb";
/// The default cap on what one domain may store (`domfs-ttp serve --audit-cap`).
pub const DEFAULT_AUDIT_CAP: u64 = 1 << 30;

const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
const USAGE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("usage");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FORMAT: u64 = 1;
const KEY_LEN: usize = 16 + 8;

/// One stored entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEntry {
    pub sequence: u64,
    pub host: String,
    pub received_unix: u64,
    pub entry: Vec<u8>,
}

impl StoredEntry {
    /// An upper bound on its size inside a ReadAudit answer: the bytes plus at most 32 of
    /// protobuf tags and lengths.
    pub fn wire_size(&self) -> usize {
        self.entry.len() + self.host.len() + 32
    }

    pub fn to_wire(&self) -> domfs_proto::ttp::RemoteAuditEntry {
        domfs_proto::ttp::RemoteAuditEntry {
            sequence: self.sequence,
            host: self.host.clone(),
            received_unix: self.received_unix,
            entry: self.entry.clone(),
        }
    }
}

/// What a domain has stored so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// The last sequence number given out (0: none yet).
    pub last_sequence: u64,
    /// Keys and values stored, in bytes: what the cap counts.
    pub bytes: u64,
}

/// The outcome of an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Stored and durable; the usage after it.
    Stored(Usage),
    /// Nothing stored: the entries would take the domain past the cap.
    Full { used: u64, needed: u64 },
}

pub struct AuditStore {
    db: Database,
    path: PathBuf,
}

fn key(id: &DomainId, sequence: u64) -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    key[..16].copy_from_slice(id);
    key[16..].copy_from_slice(&sequence.to_be_bytes());
    key
}

fn encode_usage(usage: &Usage) -> Vec<u8> {
    let mut w = Writer::new();
    w.u64(usage.last_sequence);
    w.u64(usage.bytes);
    w.0
}

fn decode_usage(id: &DomainId, bytes: &[u8]) -> Result<Usage> {
    let mut r = Reader::open(bytes, || format!("audit usage of {}", hex::encode(id)))?;
    let usage = Usage {
        last_sequence: r.u64()?,
        bytes: r.u64()?,
    };
    r.finish()?;
    Ok(usage)
}

fn decode_entry(key: &[u8], bytes: &[u8]) -> Result<StoredEntry> {
    let sequence = key
        .get(16..KEY_LEN)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| Error::corrupt("audit entries", "a key is not 24 bytes"))?;
    let mut r = Reader::open(bytes, || format!("audit entry {sequence}"))?;
    let entry = StoredEntry {
        sequence,
        host: r.text(MAX_HOST_NAME_LEN)?,
        received_unix: r.u64()?,
        entry: r.bytes(MAX_AUDIT_ENTRY)?.to_vec(),
    };
    r.finish()?;
    Ok(entry)
}

impl AuditStore {
    /// Opens `path`, creating it (mode 0600) if it does not exist.
    pub fn open(path: &Path) -> Result<AuditStore> {
        // Created empty with the right mode first; redb initialises an empty file.
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(path, e))?;
        let db = Database::create(path).map_err(|e| Error::Registry(e.into()))?;
        let txn = db.begin_write()?;
        let format = {
            let mut meta = txn.open_table(META)?;
            let format = meta.get("format")?.map(|v| v.value());
            if format.is_none() {
                meta.insert("format", FORMAT)?;
            }
            txn.open_table(ENTRIES)?;
            txn.open_table(USAGE)?;
            format.unwrap_or(FORMAT)
        };
        txn.commit()?;
        if format != FORMAT {
            return Err(Error::corrupt(
                path.display().to_string(),
                format!("audit store format {format} (this build reads {FORMAT})"),
            ));
        }
        Ok(AuditStore {
            db,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn usage(&self, id: &DomainId) -> Result<Usage> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(USAGE)?;
        let value = table.get(id.as_slice())?;
        value
            .map(|v| decode_usage(id, v.value()))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// Stores `entries` for `id`, numbered on from the domain's last sequence, unless they
    /// would take its usage past `cap` bytes. Durable when it returns.
    pub fn append(
        &self,
        id: &DomainId,
        host: &str,
        received_unix: u64,
        entries: &[Vec<u8>],
        cap: u64,
    ) -> Result<Appended> {
        let values: Vec<Vec<u8>> = entries
            .iter()
            .map(|entry| {
                let mut w = Writer::new();
                w.bytes(host.as_bytes());
                w.u64(received_unix);
                w.bytes(entry);
                w.0
            })
            .collect();
        let needed: u64 = values.iter().map(|v| (KEY_LEN + v.len()) as u64).sum();
        let txn = self.db.begin_write()?;
        let usage = {
            let mut usage_table = txn.open_table(USAGE)?;
            let mut usage = usage_table
                .get(id.as_slice())?
                .map(|v| decode_usage(id, v.value()))
                .transpose()?
                .unwrap_or_default();
            if usage.bytes.saturating_add(needed) > cap {
                return Ok(Appended::Full {
                    used: usage.bytes,
                    needed,
                });
            }
            let mut table = txn.open_table(ENTRIES)?;
            for value in &values {
                usage.last_sequence += 1;
                table.insert(key(id, usage.last_sequence).as_slice(), value.as_slice())?;
            }
            usage.bytes += needed;
            usage_table.insert(id.as_slice(), encode_usage(&usage).as_slice())?;
            usage
        };
        txn.commit()?;
        Ok(Appended::Stored(usage))
    }

    /// The entries of `id` after sequence `after`, in order: at most `limit`, and no more
    /// than fit in `max_bytes` by [`StoredEntry::wire_size`] (always at least one). The
    /// flag says whether more follow.
    pub fn read(
        &self,
        id: &DomainId,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<StoredEntry>, bool)> {
        let Some(first) = after.checked_add(1) else {
            return Ok((Vec::new(), false));
        };
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ENTRIES)?;
        let (from, to) = (key(id, first), key(id, u64::MAX));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for row in table.range(from.as_slice()..=to.as_slice())? {
            let (k, v) = row?;
            let entry = decode_entry(k.value(), v.value())?;
            let size = entry.wire_size();
            if out.len() >= limit || (!out.is_empty() && bytes + size > max_bytes) {
                return Ok((out, true));
            }
            bytes += size;
            out.push(entry);
        }
        Ok((out, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_cap_and_reopen() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let path = dir.path().join(AUDIT_FILE);
        let store = AuditStore::open(&path)?;
        let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o600));
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let entries: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let Appended::Stored(usage) = store.append(&a, "db2", 100, &entries, 1 << 20)? else {
            panic!("not stored");
        };
        assert_eq!(usage.last_sequence, 5);
        store.append(&b, "db3", 101, &entries[..1], 1 << 20)?;
        let (read, more) = store.read(&a, 0, 100, 1 << 20)?;
        assert!(!more);
        assert_eq!(read.len(), 5);
        assert_eq!(
            read.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(read[3].entry, entries[3]);
        assert_eq!((read[0].host.as_str(), read[0].received_unix), ("db2", 100));
        // Paging by count and by size; past the end; the other domain apart.
        let (page, more) = store.read(&a, 1, 2, 1 << 20)?;
        assert_eq!((page.len(), page[0].sequence, more), (2, 2, true));
        let (page, more) = store.read(&a, 0, 100, 1)?;
        assert_eq!((page.len(), more), (1, true));
        assert_eq!(store.read(&a, 5, 100, 1 << 20)?, (Vec::new(), false));
        assert_eq!(store.read(&a, u64::MAX, 100, 1 << 20)?, (Vec::new(), false));
        assert_eq!(store.read(&b, 0, 100, 1 << 20)?.0.len(), 1);

        // The cap: nothing of a call that does not fit is stored.
        let used = store.usage(&a)?.bytes;
        assert_eq!(
            store.append(&a, "db2", 102, &entries, used + 10)?,
            Appended::Full {
                used,
                needed: usage.bytes
            }
        );
        assert_eq!(store.usage(&a)?.last_sequence, 5);
        drop(store);
        let store = AuditStore::open(&path)?;
        assert_eq!(store.usage(&a)?, usage);
        let Appended::Stored(after) = store.append(&a, "db2", 103, &entries[..1], 1 << 20)? else {
            panic!("not stored");
        };
        assert_eq!(after.last_sequence, 6);
        Ok(())
    }
}
