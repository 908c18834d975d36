//! The in-memory index of the live records (by id, path and inode), the names of inodes
//! seen lately, and the process-name cache.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::BS;
use super::record::Record;
use super::table::read_table;
use super::who::process_name;
use crate::Result;
use crate::filesystem::BlockIo;
use crate::filesystem::inode::Inode;

/// Most names remembered at once.
const MAX_NAMES: usize = 1 << 18;
/// How long a process name is trusted (pids are reused).
const PROCESS_TTL: Duration = Duration::from_secs(1);
/// Process names cached at most.
const MAX_PROCESSES: usize = 4096;

/// The live records, indexed (built at open, kept under the filesystem's lock), and the
/// names of inodes seen lately.
#[derive(Default)]
pub(crate) struct HiddenIndex {
    /// Live records by id, with their byte offset in the table.
    pub(super) records: BTreeMap<u64, (u64, Record)>,
    /// Path → ids of its live versions, ascending.
    pub(super) by_path: BTreeMap<Vec<u8>, Vec<u64>>,
    /// Inode → id of its live version.
    pub(super) by_ino: HashMap<u64, u64>,
    /// Live records per table block.
    pub(super) live_in_block: HashMap<u64, u32>,
    pub(super) last_id: u64,
    /// Inode → (parent directory, name), checked before use.
    pub(super) names: HashMap<u64, (u64, Box<[u8]>)>,
    /// Process names by pid, trusted for [`PROCESS_TTL`] (pids are reused).
    processes: HashMap<u32, (Vec<u8>, Instant)>,
}

impl HiddenIndex {
    pub fn load(io: &dyn BlockIo, table: &Inode) -> Result<Self> {
        let mut index = Self::default();
        read_table(io, table, &mut |offset, record| {
            index.last_id = index.last_id.max(record.id);
            if record.is_live() {
                index.insert(offset, record);
            }
            Ok(())
        })?;
        Ok(index)
    }

    pub(super) fn insert(&mut self, offset: u64, record: Record) {
        let id = record.id;
        self.by_path
            .entry(record.path.clone())
            .or_default()
            .push(id);
        self.by_ino.insert(record.ino, id);
        *self.live_in_block.entry(offset / BS).or_insert(0) += 1;
        self.records.insert(id, (offset, record));
    }

    pub(super) fn remove(&mut self, id: u64) -> Option<(u64, Record)> {
        let (offset, record) = self.records.remove(&id)?;
        if let Some(ids) = self.by_path.get_mut(&record.path) {
            ids.retain(|&i| i != id);
            if ids.is_empty() {
                self.by_path.remove(&record.path);
            }
        }
        if self.by_ino.get(&record.ino) == Some(&id) {
            self.by_ino.remove(&record.ino);
        }
        Some((offset, record))
    }

    /// The id of version `number` (1 = most recent) of `path`.
    pub(super) fn find(&self, path: &[u8], number: u32) -> Option<u64> {
        let ids = self.by_path.get(path)?;
        let n = usize::try_from(number).ok()?;
        if n == 0 || n > ids.len() {
            return None;
        }
        ids.get(ids.len() - n).copied()
    }

    pub(super) fn number_of(&self, record: &Record) -> u32 {
        self.by_path
            .get(&record.path)
            .and_then(|ids| ids.iter().rev().position(|&i| i == record.id))
            .map_or(0, |p| p as u32 + 1)
    }

    /// The number of live versions.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The name of the process `pid` belongs to, read at most once per [`PROCESS_TTL`]
    /// (a `rm -r` of ten thousand files reads it once, not ten thousand times).
    pub fn process_name(&mut self, pid: u32) -> Vec<u8> {
        if let Some((name, when)) = self.processes.get(&pid)
            && when.elapsed() < PROCESS_TTL
        {
            return name.clone();
        }
        let name = process_name(pid);
        if self.processes.len() >= MAX_PROCESSES {
            self.processes.clear();
        }
        self.processes.insert(pid, (name.clone(), Instant::now()));
        name
    }

    /// `ino` is called `name` in `parent`.
    pub fn remember(&mut self, parent: u64, name: &[u8], ino: u64) {
        if let Some((p, n)) = self.names.get(&ino)
            && *p == parent
            && **n == *name
        {
            return;
        }
        if self.names.len() >= MAX_NAMES {
            self.names.clear();
        }
        self.names.insert(ino, (parent, name.into()));
    }
}
