//! The domains' nonces r, outside the registry database.
//!
//! redb is copy-on-write: overwriting a record leaves its old bytes in a free page until
//! that page is reused, so "erase r" inside the database would not erase anything. The
//! nonces therefore live in their own file, `domain-nonces`, one fixed slot per domain,
//! written in place; destroying a domain overwrites its slot with zeros and syncs, and the
//! freed slot is reused by the next registration. (Below the file system, a journal with
//! `data=journal`, a copy-on-write file system or an SSD's remapping can still keep old
//! blocks: put the state directory on storage that overwrites in place, or encrypt it.)
//!
//! | offset | size | content |
//! |---|---|---|
//! | 0 | 16 | `"DOMFS-NONCES v1\n"` |
//! | 16 + 48·i | 16 | slot i: domain id (zeros: free) |
//! | 32 + 48·i | 32 | slot i: r |
//!
//! The registry records each domain's slot. A slot is written and synced *before* the
//! record that names it commits, and zeroed *after* the record that stops naming it
//! commits; [`crate::registry::Registry::open`] zeroes any slot no live record names (a
//! crash between the two steps).

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use domfs_proto::acl::DomainId;

use crate::error::{Error, Result};
use crate::secret::Secret32;

const MAGIC: &[u8; 16] = b"DOMFS-NONCES v1\n";
const SLOT_LEN: u64 = 48;
/// A bound on the file the store reads whole at open (about 20 million domains).
const MAX_SLOTS: u64 = 1 << 24;

pub struct NonceStore {
    file: File,
    path: PathBuf,
    slots: Mutex<Slots>,
}

struct Slots {
    free: BTreeSet<u64>,
    /// Slots in the file.
    count: u64,
}

impl NonceStore {
    /// Creates an empty store at `path` (which must not exist).
    pub fn create(path: &Path) -> Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        file.write_all_at(MAGIC, 0)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(path, e))
    }

    pub fn open(path: &Path) -> Result<NonceStore> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let body = len.saturating_sub(MAGIC.len() as u64);
        if len < MAGIC.len() as u64 || body % SLOT_LEN != 0 || body / SLOT_LEN > MAX_SLOTS {
            return Err(Error::corrupt(
                path.display().to_string(),
                format!("length {len} is not a nonce file's"),
            ));
        }
        let mut magic = [0u8; 16];
        file.read_exact_at(&mut magic, 0)
            .map_err(|e| Error::io(path, e))?;
        if &magic != MAGIC {
            return Err(Error::corrupt(
                path.display().to_string(),
                "not a domfs nonce file",
            ));
        }
        let store = NonceStore {
            file,
            path: path.to_path_buf(),
            slots: Mutex::new(Slots {
                free: BTreeSet::new(),
                count: body / SLOT_LEN,
            }),
        };
        let used: BTreeSet<u64> = store.occupied()?.into_iter().map(|(s, _)| s).collect();
        let mut slots = store.lock();
        slots.free = (0..slots.count).filter(|s| !used.contains(s)).collect();
        drop(slots);
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        // A panic while holding the lock cannot leave the slot sets inconsistent with the
        // file in a way that matters: a slot wrongly thought used is only not reused.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn offset(slot: u64) -> u64 {
        MAGIC.len() as u64 + slot * SLOT_LEN
    }

    fn io(&self, e: std::io::Error) -> Error {
        Error::io(&self.path, e)
    }

    /// Every slot that holds a domain: (slot, domain id).
    pub fn occupied(&self) -> Result<Vec<(u64, DomainId)>> {
        let count = self.lock().count;
        let mut out = Vec::new();
        let mut buf = vec![0u8; (count * SLOT_LEN) as usize];
        self.file
            .read_exact_at(&mut buf, MAGIC.len() as u64)
            .map_err(|e| self.io(e))?;
        for (slot, chunk) in buf.chunks_exact(SLOT_LEN as usize).enumerate() {
            let mut id = DomainId::default();
            id.copy_from_slice(&chunk[..16]);
            if id != DomainId::default() {
                out.push((slot as u64, id));
            }
        }
        zeroize::Zeroize::zeroize(&mut buf);
        Ok(out)
    }

    /// r of `domain` from `slot`; `None` when the slot no longer holds that domain (it was
    /// destroyed after the caller read its record).
    pub fn read(&self, slot: u64, domain: &DomainId) -> Result<Option<Secret32>> {
        if slot >= self.lock().count {
            return Ok(None);
        }
        let mut id = DomainId::default();
        let mut r = Secret32::zero();
        self.file
            .read_exact_at(&mut id, Self::offset(slot))
            .and_then(|()| self.file.read_exact_at(r.as_mut(), Self::offset(slot) + 16))
            .map_err(|e| self.io(e))?;
        // Checked after reading r: an erase between the two reads zeroes the id first.
        let mut again = DomainId::default();
        self.file
            .read_exact_at(&mut again, Self::offset(slot))
            .map_err(|e| self.io(e))?;
        if id == *domain && again == *domain && *domain != DomainId::default() {
            Ok(Some(r))
        } else {
            Ok(None)
        }
    }

    /// Writes r for `domain` into a free slot and syncs it; returns the slot.
    pub fn store(&self, domain: &DomainId, r: &Secret32) -> Result<u64> {
        if *domain == DomainId::default() {
            return Err(Error::Invalid(
                "the all-zero domain id is reserved".to_string(),
            ));
        }
        let mut slots = self.lock();
        let slot = match slots.free.pop_first() {
            Some(slot) => slot,
            None if slots.count < MAX_SLOTS => {
                slots.count += 1;
                slots.count - 1
            }
            None => return Err(Error::Conflict("the nonce store is full".into())),
        };
        let mut record = [0u8; SLOT_LEN as usize];
        record[..16].copy_from_slice(domain);
        record[16..].copy_from_slice(r.expose());
        let written = self
            .file
            .write_all_at(&record, Self::offset(slot))
            .and_then(|()| self.file.sync_data());
        zeroize::Zeroize::zeroize(&mut record);
        if let Err(e) = written {
            slots.free.insert(slot);
            return Err(self.io(e));
        }
        Ok(slot)
    }

    /// Overwrites `slot` with zeros (domain id first) and syncs.
    pub fn erase(&self, slot: u64) -> Result<()> {
        let mut slots = self.lock();
        if slot >= slots.count {
            return Ok(());
        }
        self.file
            .write_all_at(&[0u8; SLOT_LEN as usize], Self::offset(slot))
            .and_then(|()| self.file.sync_data())
            .map_err(|e| self.io(e))?;
        slots.free.insert(slot);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_read_erase_reuse() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let path = dir.path().join("n");
        NonceStore::create(&path)?;
        let store = NonceStore::open(&path)?;
        let r1 = Secret32::from_slice(&[1; 32]).ok_or(Error::Invalid("len".into()))?;
        let r2 = Secret32::from_slice(&[2; 32]).ok_or(Error::Invalid("len".into()))?;
        let s1 = store.store(&[1; 16], &r1)?;
        let s2 = store.store(&[2; 16], &r2)?;
        assert_ne!(s1, s2);
        assert_eq!(
            store.read(s1, &[1; 16])?.map(|r| *r.expose()),
            Some([1; 32])
        );
        assert!(store.read(s1, &[2; 16])?.is_none());
        assert!(store.read(99, &[1; 16])?.is_none());
        store.erase(s1)?;
        assert!(store.read(s1, &[1; 16])?.is_none());
        drop(store);

        let store = NonceStore::open(&path)?;
        assert_eq!(store.occupied()?, vec![(s2, [2; 16])]);
        // The erased slot is reused, and its bytes really are zero.
        assert_eq!(store.store(&[3; 16], &r1)?, s1);
        store.erase(s1)?;
        let raw = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let at = NonceStore::offset(s1) as usize;
        assert_eq!(&raw[at..at + 48], &[0u8; 48]);
        Ok(())
    }

    #[test]
    fn damaged_files_are_refused() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let path = dir.path().join("n");
        std::fs::write(&path, b"DOMFS-NONCES v1\nshort").map_err(|e| Error::io(&path, e))?;
        assert!(NonceStore::open(&path).is_err());
        std::fs::write(&path, [0u8; 64]).map_err(|e| Error::io(&path, e))?;
        assert!(NonceStore::open(&path).is_err());
        Ok(())
    }
}
