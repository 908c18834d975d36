//! `domfs create`: allocate a container and write a new volume into it.

use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::Global;
use super::exit::{OK, Refused};
use super::key::read_key_file;
use super::size::{human, parse_size};
use crate::device::{Access, Device, FileDevice};
use crate::format::header::KeyMode;
use crate::store::geometry::Geometry;
use crate::types::BLOCK_SIZE;
use crate::volume::{CreateOptions, create_volume, looks_used};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Container size (e.g. 256M, 10G, 1T). Required for a file, which is created sparse
    /// (instant at any size); a block device is always used whole.
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Key file (32 raw bytes or 64 hex digits; `domfs key new KEY` makes one).
    #[arg(long, value_name = "KEY")]
    key_file: PathBuf,
    /// Domain metadata stored in the header (e.g. "melior:ward-12").
    #[arg(long, default_value = "")]
    meta: String,
    /// Overwrite a container that already holds data or a volume.
    #[arg(long)]
    force: bool,
    /// The file or block device to create the volume in.
    volume: PathBuf,
}

pub fn run(args: Args, global: Global) -> Result<u8> {
    let key = read_key_file(&args.key_file)?;
    let existing = std::fs::metadata(&args.volume).ok();
    let is_block = existing
        .as_ref()
        .is_some_and(|m| m.file_type().is_block_device());
    if let Some(meta) = &existing {
        if !is_block && !meta.is_file() {
            bail!(
                "{} is neither a regular file nor a block device",
                args.volume.display()
            );
        }
        if !args.force && (is_block || meta.len() > 0) {
            let dev = FileDevice::open(&args.volume, Access::ReadOnly)
                .with_context(|| format!("cannot open {}", args.volume.display()))?;
            if looks_used(&dev)? {
                return Err(Refused(format!(
                    "{} already holds data or a volume; use --force to overwrite it (everything on it is lost)",
                    args.volume.display()
                ))
                .into());
            }
        }
    }
    let dev = if is_block {
        open_block_device(&args)?
    } else {
        let Some(size) = args.size else {
            bail!("--size is required when creating a volume in a file (e.g. --size 256M)");
        };
        Geometry::for_container(size)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&args.volume)
            .with_context(|| format!("cannot create {}", args.volume.display()))?;
        // Dropping old contents first keeps the new container sparse.
        file.set_len(0)
            .and_then(|()| file.set_len(size - size % BLOCK_SIZE as u64))
            .with_context(|| format!("cannot size {}", args.volume.display()))?;
        FileDevice::from_file(file, &args.volume)?
    };
    let header = create_volume(
        &dev,
        CreateOptions {
            meta: args.meta.into_bytes(),
            key_mode: KeyMode::KeyFile,
        },
        Some(&key),
    )?;
    let geometry = Geometry::for_container(header.container_size)?;
    if !global.quiet {
        println!("created domfs volume {}", args.volume.display());
        println!("  volume id   {}", header.volume_id);
        println!(
            "  size        {} ({} bytes)",
            human(header.container_size),
            header.container_size
        );
        println!(
            "  data blocks {} of 4 KiB (less ~1.2% for tags and tree once written)",
            geometry.logical_blocks
        );
        println!(
            "next: `domfs fsck --key-file {} {}` checks it",
            args.key_file.display(),
            args.volume.display()
        );
    }
    Ok(OK)
}

fn open_block_device(args: &Args) -> Result<FileDevice> {
    let dev = FileDevice::open(&args.volume, Access::ReadWrite)
        .with_context(|| format!("cannot open {}", args.volume.display()))?;
    if let Some(size) = args.size
        && size < dev.size()
    {
        bail!(
            "--size {} is smaller than the device ({} bytes); a block device is used whole (omit --size)",
            size,
            dev.size()
        );
    }
    Ok(dev)
}
