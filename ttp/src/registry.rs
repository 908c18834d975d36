//! The TTP's registry: managers, hosts, domains, read-write leases and the domains'
//! checkpoints (volume anchors) in a redb database
//! (`registry.redb`, crash-safe: every write transaction is synced on commit), and the
//! domains' nonces r in the in-place [`NonceStore`].
//!
//! One process has the registry open at a time (redb locks the file): the server while it
//! runs, otherwise an operator command. Reads go through [`ReadCtx`] (a snapshot; no
//! locks, no syncs), writes through [`WriteCtx`] (serialised by redb, atomic on commit);
//! both answer the [`Lookup`] questions, so a decision reads the same way in either.

use std::path::{Path, PathBuf};

use domfs_proto::acl::DomainId;
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::{Error, Result};
use crate::nonces::NonceStore;
use crate::records::{CheckpointRecord, DomainRecord, HostRecord, ManagerRecord, RwLease};
use crate::secret::Secret32;

pub(crate) const MANAGERS: TableDefinition<&str, &[u8]> = TableDefinition::new("managers");
pub(crate) const HOSTS: TableDefinition<&str, &[u8]> = TableDefinition::new("hosts");
pub(crate) const DOMAINS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("domains");
pub(crate) const LEASES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("rw_leases");
/// Added after format 1 was first written: a registry made before has no such table until
/// the first checkpoint is stored (reads treat a missing table as empty).
pub(crate) const CHECKPOINTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("checkpoints");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FORMAT: u64 = 1;

pub const REGISTRY_FILE: &str = "registry.redb";
pub const NONCE_FILE: &str = "domain-nonces";

/// A table's raw (key, value) pairs.
pub(crate) type Rows = Vec<(Vec<u8>, Vec<u8>)>;

pub struct Registry {
    db: Database,
    nonces: NonceStore,
    path: PathBuf,
}

/// The questions a decision asks, answered from a read or a write transaction.
pub trait Lookup {
    fn domain(&self, id: &DomainId) -> Result<Option<DomainRecord>>;
    fn host(&self, name: &str) -> Result<Option<HostRecord>>;
    fn rw_lease(&self, id: &DomainId) -> Result<Option<RwLease>>;
    fn manager(&self, name: &str) -> Result<Option<ManagerRecord>>;
    /// The name a manager key was added under.
    fn manager_by_key(&self, key: &[u8]) -> Result<Option<String>>;
    /// The domain's newest checkpoint.
    fn checkpoint(&self, id: &DomainId) -> Result<Option<CheckpointRecord>>;
}

/// A consistent read-only snapshot of the registry.
pub struct ReadCtx {
    txn: ReadTransaction,
}

/// A write transaction: nothing is visible to others, or durable, before [`WriteCtx::commit`].
pub struct WriteCtx {
    txn: redb::WriteTransaction,
}

impl Registry {
    /// Creates an empty registry in `dir` (the files must not exist).
    pub fn create(dir: &Path) -> Result<()> {
        let path = dir.join(REGISTRY_FILE);
        if path.exists() {
            return Err(Error::state(dir, "a registry already exists"));
        }
        let db = Database::create(&path).map_err(|e| open_error(&path, e))?;
        let txn = db.begin_write()?;
        {
            txn.open_table(MANAGERS)?;
            txn.open_table(HOSTS)?;
            txn.open_table(DOMAINS)?;
            txn.open_table(LEASES)?;
            txn.open_table(CHECKPOINTS)?;
            txn.open_table(META)?.insert("format", FORMAT)?;
        }
        txn.commit()?;
        NonceStore::create(&dir.join(NONCE_FILE))
    }

    /// Opens the registry in `dir`, and zeroes any nonce slot no live domain names.
    pub fn open(dir: &Path) -> Result<Registry> {
        let path = dir.join(REGISTRY_FILE);
        if !path.is_file() {
            return Err(Error::state(
                dir,
                "no registry (run `domfs-ttp init` first)",
            ));
        }
        let db = Database::open(&path).map_err(|e| open_error(&path, e))?;
        let format = {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            meta.get("format")?.map(|v| v.value())
        };
        if format != Some(FORMAT) {
            return Err(Error::corrupt(
                path.display().to_string(),
                format!("registry format {format:?} (this build reads {FORMAT})"),
            ));
        }
        let nonces = NonceStore::open(&dir.join(NONCE_FILE))?;
        let registry = Registry { db, nonces, path };
        registry.sweep_nonces()?;
        Ok(registry)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn read(&self) -> Result<ReadCtx> {
        Ok(ReadCtx {
            txn: self.db.begin_read()?,
        })
    }

    pub fn write(&self) -> Result<WriteCtx> {
        Ok(WriteCtx {
            txn: self.db.begin_write()?,
        })
    }

    pub(crate) fn nonces(&self) -> &NonceStore {
        &self.nonces
    }

    /// The nonce r of a live domain; `None` once it is destroyed.
    pub fn nonce(&self, id: &DomainId, record: &DomainRecord) -> Result<Option<Secret32>> {
        match record.nonce_slot {
            Some(slot) => self.nonces.read(slot, id),
            None => Ok(None),
        }
    }

    fn sweep_nonces(&self) -> Result<()> {
        let read = self.read()?;
        for (slot, id) in self.nonces.occupied()? {
            let named = read.domain(&id)?.and_then(|d| d.nonce_slot) == Some(slot);
            if !named {
                tracing::info!(
                    "erasing an unused nonce slot {slot} (domain {}): left by an interrupted \
                     registration or destruction",
                    hex::encode(id)
                );
                self.nonces.erase(slot)?;
            }
        }
        Ok(())
    }
}

fn open_error(path: &Path, e: redb::DatabaseError) -> Error {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::RegistryLocked {
            path: path.to_path_buf(),
        },
        other => Error::Registry(other.into()),
    }
}

macro_rules! lookup_impl {
    ($ctx:ty) => {
        impl Lookup for $ctx {
            fn domain(&self, id: &DomainId) -> Result<Option<DomainRecord>> {
                let table = self.txn.open_table(DOMAINS)?;
                let value = table.get(id.as_slice())?;
                value
                    .map(|v| DomainRecord::decode(id, v.value()))
                    .transpose()
            }

            fn host(&self, name: &str) -> Result<Option<HostRecord>> {
                let table = self.txn.open_table(HOSTS)?;
                let value = table.get(name)?;
                value
                    .map(|v| HostRecord::decode(name, v.value()))
                    .transpose()
            }

            fn rw_lease(&self, id: &DomainId) -> Result<Option<RwLease>> {
                let table = self.txn.open_table(LEASES)?;
                let value = table.get(id.as_slice())?;
                value.map(|v| RwLease::decode(id, v.value())).transpose()
            }

            fn manager(&self, name: &str) -> Result<Option<ManagerRecord>> {
                let table = self.txn.open_table(MANAGERS)?;
                let value = table.get(name)?;
                value
                    .map(|v| ManagerRecord::decode(name, v.value()))
                    .transpose()
            }

            fn manager_by_key(&self, key: &[u8]) -> Result<Option<String>> {
                let table = self.txn.open_table(MANAGERS)?;
                for entry in table.iter()? {
                    let (name, value) = entry?;
                    let record = ManagerRecord::decode(name.value(), value.value())?;
                    if record.public_key.as_slice() == key {
                        return Ok(Some(name.value().to_string()));
                    }
                }
                Ok(None)
            }

            fn checkpoint(&self, id: &DomainId) -> Result<Option<CheckpointRecord>> {
                let table = match self.txn.open_table(CHECKPOINTS) {
                    Ok(table) => table,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                let value = table.get(id.as_slice())?;
                value
                    .map(|v| CheckpointRecord::decode(id, v.value()))
                    .transpose()
            }
        }
    };
}
lookup_impl!(ReadCtx);
lookup_impl!(WriteCtx);

impl ReadCtx {
    pub fn managers(&self) -> Result<Vec<(String, ManagerRecord)>> {
        let table = self.txn.open_table(MANAGERS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (name, value) = entry?;
            let name = name.value().to_string();
            let record = ManagerRecord::decode(&name, value.value())?;
            out.push((name, record));
        }
        Ok(out)
    }

    pub fn hosts(&self) -> Result<Vec<(String, HostRecord)>> {
        let table = self.txn.open_table(HOSTS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (name, value) = entry?;
            let name = name.value().to_string();
            let record = HostRecord::decode(&name, value.value())?;
            out.push((name, record));
        }
        Ok(out)
    }

    pub fn domains(&self) -> Result<Vec<(DomainId, DomainRecord, Option<RwLease>)>> {
        let table = self.txn.open_table(DOMAINS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (id, value) = entry?;
            let id = domain_id(id.value())?;
            let record = DomainRecord::decode(&id, value.value())?;
            let lease = self.rw_lease(&id)?;
            out.push((id, record, lease));
        }
        Ok(out)
    }

    /// Every table as raw (key, value) pairs, for a backup.
    pub(crate) fn dump(&self) -> Result<Vec<(&'static str, Rows)>> {
        let mut out = Vec::new();
        for (name, def) in [("managers", MANAGERS), ("hosts", HOSTS)] {
            let table = self.txn.open_table(def)?;
            let mut rows = Vec::new();
            for entry in table.iter()? {
                let (k, v) = entry?;
                rows.push((k.value().as_bytes().to_vec(), v.value().to_vec()));
            }
            out.push((name, rows));
        }
        for (name, def) in [
            ("domains", DOMAINS),
            ("rw_leases", LEASES),
            ("checkpoints", CHECKPOINTS),
        ] {
            let table = match self.txn.open_table(def) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            let mut rows = Vec::new();
            for entry in table.iter()? {
                let (k, v) = entry?;
                rows.push((k.value().to_vec(), v.value().to_vec()));
            }
            out.push((name, rows));
        }
        Ok(out)
    }
}

impl WriteCtx {
    pub fn put_manager(&self, name: &str, record: &ManagerRecord) -> Result<()> {
        self.txn
            .open_table(MANAGERS)?
            .insert(name, record.encode().as_slice())?;
        Ok(())
    }

    pub fn put_host(&self, name: &str, record: &HostRecord) -> Result<()> {
        self.txn
            .open_table(HOSTS)?
            .insert(name, record.encode().as_slice())?;
        Ok(())
    }

    pub fn put_domain(&self, id: &DomainId, record: &DomainRecord) -> Result<()> {
        self.txn
            .open_table(DOMAINS)?
            .insert(id.as_slice(), record.encode().as_slice())?;
        Ok(())
    }

    pub fn put_rw_lease(&self, id: &DomainId, lease: &RwLease) -> Result<()> {
        self.txn
            .open_table(LEASES)?
            .insert(id.as_slice(), lease.encode().as_slice())?;
        Ok(())
    }

    pub fn put_checkpoint(&self, id: &DomainId, checkpoint: &CheckpointRecord) -> Result<()> {
        self.txn
            .open_table(CHECKPOINTS)?
            .insert(id.as_slice(), checkpoint.encode().as_slice())?;
        Ok(())
    }

    pub fn remove_rw_lease(&self, id: &DomainId) -> Result<()> {
        self.txn.open_table(LEASES)?.remove(id.as_slice())?;
        Ok(())
    }

    /// Writes raw rows into a table (restoring a backup).
    pub(crate) fn put_raw(&self, table: &str, key: &[u8], value: &[u8]) -> Result<()> {
        let text_key = || {
            std::str::from_utf8(key)
                .map_err(|_| Error::Backup(format!("a {table} key is not UTF-8")))
        };
        match table {
            "managers" => {
                self.txn.open_table(MANAGERS)?.insert(text_key()?, value)?;
            }
            "hosts" => {
                self.txn.open_table(HOSTS)?.insert(text_key()?, value)?;
            }
            "domains" => {
                self.txn.open_table(DOMAINS)?.insert(key, value)?;
            }
            "rw_leases" => {
                self.txn.open_table(LEASES)?.insert(key, value)?;
            }
            "checkpoints" => {
                CheckpointRecord::decode(&domain_id(key)?, value)?;
                self.txn.open_table(CHECKPOINTS)?.insert(key, value)?;
            }
            other => return Err(Error::Backup(format!("unknown table {other:?}"))),
        }
        Ok(())
    }

    /// Makes the writes durable and visible.
    pub fn commit(self) -> Result<()> {
        self.txn.commit()?;
        Ok(())
    }
}

pub(crate) fn domain_id(bytes: &[u8]) -> Result<DomainId> {
    DomainId::try_from(bytes).map_err(|_| Error::corrupt("domains", "a key is not 16 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::HostState;

    #[test]
    fn create_open_and_lock() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        Registry::create(dir.path())?;
        assert!(Registry::create(dir.path()).is_err());
        let registry = Registry::open(dir.path())?;
        assert!(matches!(
            Registry::open(dir.path()),
            Err(Error::RegistryLocked { .. })
        ));
        let host = HostRecord {
            state: HostState::Pending,
            decryption_key_spki: vec![1, 2],
            attestation_key_fingerprint: "f".into(),
            pcr_selection: "sha256:7".into(),
            pcr_digest: vec![3],
            enrolled_unix: 1,
            changed_unix: 1,
        };
        let w = registry.write()?;
        w.put_host("db1", &host)?;
        w.commit()?;
        // A write transaction that is dropped uncommitted changes nothing.
        let w = registry.write()?;
        w.put_host("db2", &host)?;
        drop(w);
        drop(registry);
        let registry = Registry::open(dir.path())?;
        let read = registry.read()?;
        assert_eq!(read.host("db1")?, Some(host));
        assert_eq!(read.host("db2")?, None);
        Ok(())
    }

    #[test]
    fn open_erases_slots_no_record_names() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        Registry::create(dir.path())?;
        let registry = Registry::open(dir.path())?;
        let r = Secret32::random()?;
        // A registration that crashed after writing r but before its record committed.
        registry.nonces().store(&[7; 16], &r)?;
        assert_eq!(registry.nonces().occupied()?.len(), 1);
        drop(registry);
        let registry = Registry::open(dir.path())?;
        assert!(registry.nonces().occupied()?.is_empty());
        Ok(())
    }
}
