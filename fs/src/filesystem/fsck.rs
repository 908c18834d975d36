//! The filesystem half of `domfs fsck`: every inode reachable, link counts right, every
//! block owned by exactly one file and marked in the bitmap, nothing leaked — and, for
//! blocks the store found damaged, which files they belong to.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;

use super::BlockIo;
use super::alloc::{Allocator, BITS_PER_BLOCK};
use super::dir::{DirStorage, Directory, FileKind};
use super::inode::{INODE_SIZE, INODES_PER_BLOCK, Inode, ROOT_INO};
use super::meta::FsSuper;
use crate::types::{BLOCK_SIZE, Block};
use crate::{Error, Result};

#[derive(Debug, Default)]
pub struct FsReport {
    /// Structural problems (wrong link counts, leaks, double ownership, unreadable
    /// metadata).
    pub problems: Vec<String>,
    /// Files whose content includes a damaged block.
    pub affected: Vec<String>,
    pub files: u64,
    pub directories: u64,
}

impl FsReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.affected.is_empty()
    }
}

struct Checker<'a> {
    io: &'a dyn BlockIo,
    bad: &'a [Range<u64>],
    owned: Vec<u64>,
    total: u64,
    report: FsReport,
}

impl Checker<'_> {
    fn is_bad(&self, block: u64) -> bool {
        self.bad.iter().any(|r| r.contains(&block))
    }

    fn own(&mut self, block: u64, owner: &str) {
        if block >= self.total {
            self.report
                .problems
                .push(format!("{owner}: block {block} is beyond the volume"));
            return;
        }
        let (word, bit) = ((block / 64) as usize, block % 64);
        if self.owned[word] & (1 << bit) != 0 {
            self.report.problems.push(format!(
                "{owner}: block {block} is also owned by another file"
            ));
        }
        self.owned[word] |= 1 << bit;
    }

    /// Claims every block of an inode; names damaged data blocks. Returns the blocks it
    /// holds (block map, data and xattr blocks), `None` when its map cannot be read.
    fn own_file(&mut self, inode: &Inode, owner: &str) -> Option<u64> {
        let mut owned = Vec::new();
        let mut damaged = Vec::new();
        let walk = inode.map.for_each_block(self.io, &mut |block, _| {
            owned.push(block);
            Ok(())
        });
        let data = inode.map.for_each(self.io, &mut |index, block| {
            if self.is_bad(block) {
                damaged.push(index);
            }
            Ok(())
        });
        let held = owned.len() as u64 + u64::from(inode.xattr_block != 0);
        let readable = walk.is_ok() && data.is_ok();
        for block in owned {
            self.own(block, owner);
        }
        if inode.xattr_block != 0 {
            self.own(inode.xattr_block, owner);
            if self.is_bad(inode.xattr_block) {
                self.report
                    .affected
                    .push(format!("{owner}: its extended attributes are damaged"));
            }
        }
        for result in [walk, data] {
            if let Err(e) = result {
                self.report
                    .affected
                    .push(format!("{owner}: its block map cannot be read ({e})"));
            }
        }
        if !damaged.is_empty() {
            let shown: Vec<String> = damaged
                .iter()
                .take(8)
                .map(|i| (i * BLOCK_SIZE as u64).to_string())
                .collect();
            self.report.affected.push(format!(
                "{owner}: {} damaged block(s) at byte offset {}{}",
                damaged.len(),
                shown.join(", "),
                if damaged.len() > 8 { ", …" } else { "" }
            ));
        }
        readable.then_some(held)
    }
}

/// A directory's blocks, read-only.
struct ReadBlocks<'a> {
    io: &'a dyn BlockIo,
    inode: &'a Inode,
}

impl DirStorage for ReadBlocks<'_> {
    fn block_count(&self) -> u64 {
        self.inode.size / BLOCK_SIZE as u64
    }

    fn read(&mut self, index: u64, out: &mut Block) -> Result<()> {
        match self.inode.map.get(self.io, index)? {
            Some(b) => self.io.read_block(b, out),
            None => {
                out.fill(0);
                Ok(())
            }
        }
    }

    fn write(&mut self, _: u64, _: &Block) -> Result<()> {
        Err(Error::ReadOnly)
    }
}

/// Checks the filesystem of a store whose damaged logical blocks are in `bad`. `None`
/// when the volume has no filesystem yet.
pub fn check(io: &dyn BlockIo, bad: &[Range<u64>]) -> Result<Option<FsReport>> {
    let mut block = Box::new([0u8; BLOCK_SIZE]);
    io.read_block(0, &mut block)?;
    if !FsSuper::has_magic(&block) {
        // Never formatted, or used as a raw block store (tests, tools).
        return Ok(None);
    }
    let Some(sb) = FsSuper::decode(&block)? else {
        return Ok(None);
    };
    let mut c = Checker {
        io,
        bad,
        owned: vec![0u64; sb.total_blocks.div_ceil(64) as usize],
        total: sb.total_blocks,
        report: FsReport::default(),
    };
    let bitmap_blocks = Allocator::bitmap_blocks(sb.total_blocks);
    for b in 0..sb.bitmap_start + bitmap_blocks {
        c.own(b, "filesystem superblock and bitmap");
    }
    c.own_file(&sb.table, "the inode table");
    c.own_file(&sb.orphans, "the orphan list");
    c.own_file(&sb.hidden, "the hidden-version table");
    c.own_file(&sb.audit, "the audit log");
    if sb.audit.size != sb.audit_head.len {
        c.report.problems.push(format!(
            "the audit log holds {} bytes, its head in the superblock says {}",
            sb.audit.size, sb.audit_head.len
        ));
    }
    let inodes = read_inode_table(&mut c, &sb);
    // Live hidden versions: inode → (still open, version id).
    let mut versions: HashMap<u64, (bool, u64)> = HashMap::new();
    match super::hidden::live_inodes(io, &sb.hidden) {
        Ok(live) => {
            for (ino, open, id) in live {
                if let Some((_, first)) = versions.insert(ino, (open, id)) {
                    c.report.problems.push(format!(
                        "hidden versions {first} and {id} both hold inode {ino}"
                    ));
                }
            }
        }
        Err(e) => c
            .report
            .problems
            .push(format!("the hidden-version table cannot be read: {e}")),
    }
    let orphans: HashSet<u64> = match Directory::load(&mut ReadBlocks {
        io,
        inode: &sb.orphans,
    }) {
        Ok(dir) => dir.entries_from(0).map(|(_, e)| e.ino).collect(),
        Err(e) => {
            c.report
                .problems
                .push(format!("the orphan list cannot be read: {e}"));
            HashSet::new()
        }
    };
    let mut links: HashMap<u64, u32> = HashMap::new();
    let mut subdirs: HashMap<u64, u32> = HashMap::new();
    let mut paths: HashMap<u64, String> = HashMap::new();
    let mut queue = VecDeque::from([(ROOT_INO, String::from("/"))]);
    paths.insert(ROOT_INO, "/".into());
    while let Some((dir_ino, path)) = queue.pop_front() {
        let Some(dir_inode) = inodes.get(&dir_ino) else {
            c.report
                .problems
                .push(format!("{path}: its inode {dir_ino} is free"));
            continue;
        };
        c.report.directories += 1;
        let dir = match Directory::load(&mut ReadBlocks {
            io,
            inode: dir_inode,
        }) {
            Ok(dir) => dir,
            Err(e) => {
                c.report
                    .affected
                    .push(format!("{path}: the directory cannot be read ({e})"));
                continue;
            }
        };
        for (_, entry) in dir.entries_from(0) {
            let name = String::from_utf8_lossy(&entry.name);
            let child_path = if path == "/" {
                format!("/{name}")
            } else {
                format!("{path}/{name}")
            };
            let Some(inode) = inodes.get(&entry.ino) else {
                c.report
                    .problems
                    .push(format!("{child_path}: names free inode {}", entry.ino));
                continue;
            };
            if inode.kind().ok() != Some(entry.kind) {
                c.report.problems.push(format!(
                    "{child_path}: the entry's type differs from the inode's"
                ));
            }
            *links.entry(entry.ino).or_insert(0) += 1;
            if entry.kind == FileKind::Directory {
                *subdirs.entry(dir_ino).or_insert(0) += 1;
                if inode.parent != dir_ino {
                    c.report
                        .problems
                        .push(format!("{child_path}: its parent pointer is wrong"));
                }
                if paths.insert(entry.ino, child_path.clone()).is_some() {
                    c.report
                        .problems
                        .push(format!("{child_path}: a directory with two names"));
                    continue;
                }
                queue.push_back((entry.ino, child_path));
            } else if let std::collections::hash_map::Entry::Vacant(v) = paths.entry(entry.ino) {
                v.insert(child_path);
                c.report.files += 1;
            }
        }
    }
    let mut hidden_blocks = 0u64;
    for (&ino, inode) in &inodes {
        let owner = match paths.get(&ino) {
            Some(path) => path.clone(),
            None if inode.is_hidden() => format!("hidden version (inode {ino})"),
            None => format!("inode {ino}"),
        };
        let held = c.own_file(inode, &owner);
        if inode.is_hidden() {
            hidden_blocks += inode.blocks;
            // The superblock's count of hidden blocks (what statfs leaves out) is the sum
            // of these counts, so each must be what the version holds.
            if let Some(held) = held
                && held != inode.blocks
            {
                c.report.problems.push(format!(
                    "{owner}: holds {held} blocks, its inode counts {}",
                    inode.blocks
                ));
            }
            if paths.contains_key(&ino) {
                c.report
                    .problems
                    .push(format!("{owner}: a hidden version that has a name"));
            } else if inode.nlink != 0 {
                c.report
                    .problems
                    .push(format!("{owner}: link count {} (0 expected)", inode.nlink));
            } else if versions.get(&ino).is_none_or(|&(open, _)| open) {
                c.report.problems.push(format!(
                    "{owner}: no hidden-version record holds it (leaked)"
                ));
            }
            continue;
        }
        if !paths.contains_key(&ino) {
            if orphans.contains(&ino) && inode.nlink == 0 {
                continue;
            }
            c.report
                .problems
                .push(format!("inode {ino} is in no directory (leaked)"));
            continue;
        }
        let expected = if inode.is_dir() {
            2 + subdirs.get(&ino).copied().unwrap_or(0)
        } else {
            links.get(&ino).copied().unwrap_or(0)
        };
        if inode.nlink != expected {
            c.report.problems.push(format!(
                "{owner}: link count {} but {expected} name(s)",
                inode.nlink
            ));
        }
    }
    for (&ino, &(open, id)) in &versions {
        match inodes.get(&ino) {
            None => c
                .report
                .problems
                .push(format!("hidden version {id}: its inode {ino} is free")),
            Some(inode) if open && (inode.is_hidden() || !orphans.contains(&ino)) => {
                c.report.problems.push(format!(
                    "hidden version {id}: waits for the last close of inode {ino}, which is not an unlinked open file"
                ));
            }
            Some(inode) if !open && !inode.is_hidden() => c.report.problems.push(format!(
                "hidden version {id}: its inode {ino} is not marked hidden"
            )),
            Some(_) => {}
        }
    }
    if hidden_blocks != sb.hidden_blocks {
        c.report.problems.push(format!(
            "the superblock counts {} blocks in hidden versions, the hidden inodes hold {hidden_blocks}",
            sb.hidden_blocks
        ));
    }
    if inodes.len() as u64 != sb.inodes_used {
        c.report.problems.push(format!(
            "the superblock counts {} inodes, the table holds {}",
            sb.inodes_used,
            inodes.len()
        ));
    }
    compare_bitmap(&mut c, &sb, bitmap_blocks);
    Ok(Some(c.report))
}

fn read_inode_table(c: &mut Checker<'_>, sb: &FsSuper) -> HashMap<u64, Inode> {
    let mut inodes = HashMap::new();
    let mut problems = Vec::new();
    let io = c.io;
    let walk = sb.table.map.for_each(io, &mut |index, block| {
        let mut buf = Box::new([0u8; BLOCK_SIZE]);
        if let Err(e) = io.read_block(block, &mut buf) {
            problems.push(format!(
                "inodes {}..{} cannot be read: {e}",
                index * INODES_PER_BLOCK,
                (index + 1) * INODES_PER_BLOCK
            ));
            return Ok(());
        }
        for slot in 0..INODES_PER_BLOCK {
            let at = slot as usize * INODE_SIZE;
            let mut record = [0u8; INODE_SIZE];
            record.copy_from_slice(&buf[at..at + INODE_SIZE]);
            let ino = index * INODES_PER_BLOCK + slot;
            match Inode::decode(&record) {
                Ok(inode) if !inode.is_free() => {
                    inodes.insert(ino, inode);
                }
                Ok(_) => {}
                Err(e) => problems.push(format!("inode {ino}: {e}")),
            }
        }
        Ok(())
    });
    if let Err(e) = walk {
        problems.push(format!("the inode table cannot be read: {e}"));
    }
    c.report.problems.extend(problems);
    inodes
}

fn compare_bitmap(c: &mut Checker<'_>, sb: &FsSuper, bitmap_blocks: u64) {
    let (mut leaked, mut unmarked, mut used) = (0u64, 0u64, 0u64);
    let mut first_leak = None;
    let mut block = Box::new([0u8; BLOCK_SIZE]);
    for index in 0..bitmap_blocks {
        if let Err(e) = c.io.read_block(sb.bitmap_start + index, &mut block) {
            c.report
                .problems
                .push(format!("bitmap block {index} cannot be read: {e}"));
            continue;
        }
        for (w, chunk) in block.chunks_exact(8).enumerate() {
            let base = index * BITS_PER_BLOCK + 64 * w as u64;
            if base >= c.total {
                break;
            }
            let valid = if c.total - base >= 64 {
                u64::MAX
            } else {
                (1u64 << (c.total - base)) - 1
            };
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            let marked = u64::from_le_bytes(bytes) & valid;
            let owned = c.owned[(base / 64) as usize] & valid;
            used += u64::from(marked.count_ones());
            let leak = marked & !owned;
            if leak != 0 && first_leak.is_none() {
                first_leak = Some(base + u64::from(leak.trailing_zeros()));
            }
            leaked += u64::from(leak.count_ones());
            unmarked += u64::from((owned & !marked).count_ones());
        }
    }
    if leaked > 0 {
        c.report.problems.push(format!(
            "{leaked} block(s) marked in use but owned by no file (first: {})",
            first_leak.unwrap_or(0)
        ));
    }
    if unmarked > 0 {
        c.report.problems.push(format!(
            "{unmarked} block(s) owned by files but marked free"
        ));
    }
    if used != sb.blocks_used {
        c.report.problems.push(format!(
            "the superblock counts {} used blocks, the bitmap {used}",
            sb.blocks_used
        ));
    }
}
