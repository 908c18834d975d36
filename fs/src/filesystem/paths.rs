//! Paths at the time: which path an inode has now, for the audit trail (and anyone else
//! who must name a file, e.g. the hidden versions).
//!
//! Inodes store no names, and regular files not even their parent, so the filesystem
//! remembers the name under which the kernel last came to know each inode (lookup,
//! create, link, rename: [`Filesystem::remember_name`]) until the kernel forgets the inode.
//! A path is then the walk up those names to the root. A directory the cache does not
//! know is found through its parent pointer and a search of its parent (and remembered);
//! a file the cache does not know has no path (`None`).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::Filesystem;
use super::inode::ROOT_INO;
use crate::audit::record::text_of;

/// Most names remembered at once; past it the cache starts over (paths of files then stay
/// unknown until the kernel looks them up again).
const MAX_NAMES: usize = 1 << 18;
/// Deepest path followed (a loop in corrupt metadata stops here).
const MAX_DEPTH: usize = 4096;

/// Inode → (parent directory, name).
type NameMap = HashMap<u64, (u64, Box<[u8]>)>;

#[derive(Default)]
pub(crate) struct Names(Mutex<NameMap>);

impl Names {
    fn lock(&self) -> MutexGuard<'_, NameMap> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Filesystem {
    /// `ino` is called `name` in directory `parent` (after a lookup, create, link or
    /// rename that succeeded).
    pub fn remember_name(&self, parent: u64, name: &[u8], ino: u64) {
        let mut names = self.names.lock();
        if let Some((p, n)) = names.get(&ino)
            && *p == parent
            && **n == *name
        {
            return;
        }
        if names.len() >= MAX_NAMES {
            names.clear();
        }
        names.insert(ino, (parent, name.into()));
    }

    /// The kernel may have dropped its last reference to `ino`: forget its name if so.
    pub fn forget_name(&self, ino: u64) {
        let referenced = self.lock().lookups.contains_key(&ino);
        if !referenced {
            self.names.lock().remove(&ino);
        }
    }

    /// The path of `ino` from the volume's root (`/` for the root), or `None` when it is
    /// not known.
    pub fn path_of(&self, ino: u64) -> Option<String> {
        let mut parts: Vec<Box<[u8]>> = Vec::new();
        let mut at = ino;
        for _ in 0..MAX_DEPTH {
            if at == ROOT_INO {
                return Some(join(&parts));
            }
            let known = self.names.lock().get(&at).cloned();
            let (parent, name) = match known {
                Some(known) => known,
                None => self.find_directory_name(at)?,
            };
            parts.push(name);
            at = parent;
        }
        None
    }

    /// The path of `name` in directory `parent`.
    pub fn path_in(&self, parent: u64, name: &[u8]) -> Option<String> {
        let dir = self.path_of(parent)?;
        let name = text_of(name);
        Some(if dir == "/" {
            format!("/{name}")
        } else {
            format!("{dir}/{name}")
        })
    }

    /// The inode `name` in `parent` refers to, without counting a kernel reference.
    pub fn child_ino(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.inspect(|st, io| st.with_dir(io, parent, |dir, _| Ok(dir.lookup(name))))
            .ok()
            .flatten()
            .map(|(ino, _)| ino)
    }

    /// A directory's (parent, name), from its parent pointer and a search of the parent.
    fn find_directory_name(&self, ino: u64) -> Option<(u64, Box<[u8]>)> {
        let found = self
            .inspect(|st, io| {
                let inode = st.inode(io, ino)?;
                if !inode.is_dir() || inode.parent == 0 {
                    return Ok(None);
                }
                let parent = inode.parent;
                let name = st.with_dir(io, parent, |dir, _| {
                    Ok(dir
                        .entries_from(0)
                        .find(|(_, e)| e.ino == ino)
                        .map(|(_, e)| e.name))
                })?;
                Ok(name.map(|n| (parent, n.into_boxed_slice())))
            })
            .ok()
            .flatten()?;
        self.remember_name(found.0, &found.1, ino);
        Some(found)
    }
}

/// `/a/b` from the names leaf first.
fn join(parts: &[Box<[u8]>]) -> String {
    if parts.is_empty() {
        return "/".into();
    }
    let mut out = String::new();
    for part in parts.iter().rev() {
        out.push('/');
        out.push_str(&text_of(part));
    }
    out
}
