//! The path a version is kept under: a file's name in its directory, a directory's path
//! from the root, and paths as callers write them.

use super::record::MAX_PATH;
use crate::filesystem::BlockIo;
use crate::filesystem::inode::{Inode, ROOT_INO};
use crate::filesystem::state::State;
use crate::{Error, Result};

/// The deepest path followed when naming a version.
const MAX_DEPTH: usize = 4096;

/// `parent`'s name for `ino`: the remembered one if still right, else a search.
fn name_in(st: &mut State, io: &dyn BlockIo, parent: u64, ino: u64) -> Result<Option<Vec<u8>>> {
    if let Some((p, name)) = st.hidden.names.get(&ino).cloned()
        && p == parent
        && st
            .with_dir(io, parent, |dir, _| Ok(dir.lookup(&name)))
            .ok()
            .flatten()
            .is_some_and(|(i, _)| i == ino)
    {
        return Ok(Some(name.to_vec()));
    }
    let found = match st.with_dir(io, parent, |dir, _| {
        Ok(dir
            .entries_from(0)
            .find(|(_, e)| e.ino == ino)
            .map(|(_, e)| e.name))
    }) {
        Ok(found) => found,
        Err(Error::Posix(_)) => None,
        Err(e) => return Err(e),
    };
    if let Some(name) = &found {
        st.hidden.remember(parent, name, ino);
    }
    Ok(found)
}

/// The path of directory `dir` from the root (empty for the root); `None` if unknown.
fn dir_path(st: &mut State, io: &dyn BlockIo, dir: u64) -> Result<Option<Vec<Vec<u8>>>> {
    let mut parts = Vec::new();
    let mut at = dir;
    for _ in 0..MAX_DEPTH {
        if at == ROOT_INO {
            parts.reverse();
            return Ok(Some(parts));
        }
        let parent = match st.inode(io, at) {
            Ok(inode) if inode.is_dir() && inode.parent != 0 => inode.parent,
            Ok(_) | Err(Error::Posix(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        match name_in(st, io, parent, at)? {
            Some(name) => parts.push(name),
            None => return Ok(None),
        }
        at = parent;
    }
    Ok(None)
}

/// Joins components, keeping the end of a path longer than [`MAX_PATH`].
pub(super) fn join(parts: &[Vec<u8>]) -> Vec<u8> {
    let path = parts.join(&b'/');
    if path.len() <= MAX_PATH {
        return path;
    }
    const CUT: &[u8] = "…/".as_bytes();
    let keep = MAX_PATH - CUT.len();
    let tail = &path[path.len() - keep..];
    let tail = match tail.iter().position(|&b| b == b'/') {
        Some(slash) if slash + 1 < tail.len() => &tail[slash + 1..],
        _ => tail,
    };
    [CUT, tail].concat()
}

fn unknown_path(ino: u64) -> Vec<u8> {
    format!(".domfs-unknown-path/inode-{ino}").into_bytes()
}

/// The path of `name` in directory `parent`.
pub(super) fn entry_path(
    st: &mut State,
    io: &dyn BlockIo,
    parent: u64,
    name: &[u8],
    ino: u64,
) -> Result<Vec<u8>> {
    Ok(match dir_path(st, io, parent)? {
        Some(mut parts) => {
            parts.push(name.to_vec());
            join(&parts)
        }
        None => unknown_path(ino),
    })
}

/// The path of file `ino` (through its parent hint and remembered names).
pub(super) fn file_path(
    st: &mut State,
    io: &dyn BlockIo,
    ino: u64,
    inode: &Inode,
) -> Result<Vec<u8>> {
    let mut parents = Vec::with_capacity(2);
    if let Some((p, _)) = st.hidden.names.get(&ino) {
        parents.push(*p);
    }
    if inode.parent != 0 && !parents.contains(&inode.parent) {
        parents.push(inode.parent);
    }
    for parent in parents {
        if let Some(name) = name_in(st, io, parent, ino)? {
            return entry_path(st, io, parent, &name, ino);
        }
    }
    Ok(unknown_path(ino))
}

/// `a/b/c` from what a caller wrote (`/a/b/c/`, `a//b`, `./a`).
pub fn normalize_path(path: &[u8]) -> Vec<u8> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect::<Vec<_>>()
        .join(&b'/')
}
