//! `domfs fsck`: verify every block of a volume and report each bad one.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::Global;
use super::exit::{INTEGRITY, OK};
use super::key::read_key_file;
use super::output::progress;
use crate::device::{Access, FileDevice};
use crate::store::fsck::fsck;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Key file of the volume.
    #[arg(long, value_name = "KEY")]
    key_file: PathBuf,
    /// The volume (file or block device). It is only read.
    volume: PathBuf,
}

pub fn run(args: Args, global: Global) -> Result<u8> {
    let key = read_key_file(&args.key_file)?;
    let dev = FileDevice::open(&args.volume, Access::ReadOnly)
        .with_context(|| format!("cannot open {}", args.volume.display()))?;
    let bar = progress(global, 0, "verifying");
    let report = fsck(Arc::new(dev), &key, &|done, total| {
        bar.set_length(total.max(done));
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let report = report.with_context(|| format!("cannot check {}", args.volume.display()))?;
    for problem in &report.metadata_problems {
        println!("damaged: {problem}");
    }
    for bad in &report.bad_blocks {
        let (start, end) = bad.lost;
        if end > start + 1
            || (end == start + 1 && !matches!(bad.what, crate::error::Damaged::Data { .. }))
        {
            println!(
                "bad block: {} (data blocks {start}..{end} unreadable)",
                bad.what
            );
        } else {
            println!("bad block: {}", bad.what);
        }
    }
    for problem in &report.structure_problems {
        println!("inconsistent: {problem}");
    }
    let fs_report = check_filesystem(&args, &key, &report)?;
    if let Some(fs) = &fs_report {
        for problem in &fs.problems {
            println!("filesystem: {problem}");
        }
        for file in &fs.affected {
            println!("affected: {file}");
        }
        if global.verbose > 0 {
            println!(
                "filesystem: {} files in {} directories",
                fs.files, fs.directories
            );
        }
    }
    let fs_clean = fs_report.as_ref().is_none_or(|r| r.is_clean());
    if global.verbose > 0 {
        println!(
            "commit {}: verified {} blocks ({} data)",
            report.sequence, report.blocks_verified, report.data_blocks
        );
    }
    if report.is_clean() && fs_clean {
        if !global.quiet {
            println!("{}: clean", args.volume.display());
        }
        Ok(OK)
    } else {
        let count = report.metadata_problems.len()
            + report.bad_blocks.len()
            + report.structure_problems.len();
        println!(
            "{}: {count} problem(s) found; reads of the blocks named above fail with an I/O error, everything else is intact",
            args.volume.display()
        );
        Ok(INTEGRITY)
    }
}

/// The filesystem's check, on the store opened read-only; the blocks the store found
/// damaged are named by file.
fn check_filesystem(
    args: &Args,
    key: &crate::crypto::DomainKey,
    report: &crate::store::fsck::FsckReport,
) -> Result<Option<crate::filesystem::fsck::FsReport>> {
    use crate::error::Damaged;
    use crate::store::{BlockStore, StoreOptions};
    let dev = FileDevice::open(&args.volume, Access::ReadOnly)
        .with_context(|| format!("cannot open {}", args.volume.display()))?;
    let store = BlockStore::open(Arc::new(dev), key, StoreOptions::read_only())?;
    let bad: Vec<std::ops::Range<u64>> = report
        .bad_blocks
        .iter()
        .filter_map(|b| match b.what {
            Damaged::Data { logical, .. } => Some(logical..logical + 1),
            Damaged::Node { .. } => Some(b.lost.0..b.lost.1),
            Damaged::Bitmap { .. } => None,
        })
        .collect();
    match crate::filesystem::fsck::check(&store, &bad) {
        Ok(r) => Ok(r),
        // The filesystem's own superblock is unreadable: the store's report says why.
        Err(crate::Error::Integrity(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
