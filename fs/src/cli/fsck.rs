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
    if global.verbose > 0 {
        println!(
            "commit {}: verified {} blocks ({} data)",
            report.sequence, report.blocks_verified, report.data_blocks
        );
    }
    if report.is_clean() {
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
