//! `domfs header show`: the domain header and both superblocks. Nothing here is secret.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;

use super::Global;
use super::exit::OK;
use super::key::read_key_file;
use crate::crypto::VolumeKeys;
use crate::device::{Access, Device, FileDevice};
use crate::format::header::read_header;
use crate::format::superblock::{SlotState, Superblock};
use crate::format::{SUPERBLOCK_LEN, SUPERBLOCK_OFFSETS};
use crate::store::slots::describe;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the domain header and the superblocks (verified when a key is given).
    Show {
        /// Verify the superblocks with this key (without it their fields are shown
        /// unverified).
        #[arg(long, value_name = "KEY")]
        key_file: Option<PathBuf>,
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
        volume: PathBuf,
    },
}

pub fn run(cmd: Command, _global: Global) -> Result<u8> {
    let Command::Show {
        key_file,
        json,
        volume,
    } = cmd;
    let dev = FileDevice::open(&volume, Access::ReadOnly)
        .with_context(|| format!("cannot open {}", volume.display()))?;
    let read = read_header(&dev)?;
    let slots = match &key_file {
        Some(path) => {
            let key = read_key_file(path)?;
            let keys = VolumeKeys::derive(&key, &read.header.volume_id);
            crate::store::slots::read_slots(&dev, &keys, &read.header)?
                .slots
                .map(|s| (Some(describe(&s)), slot_fields(&s)))
        }
        None => peek_slots(&dev)?.map(|sb| (None, sb)),
    };
    if json {
        let superblocks: Vec<_> = slots
            .iter()
            .enumerate()
            .map(|(i, (state, sb))| {
                json!({
                    "slot": i,
                    "verified": state.is_some(),
                    "state": state,
                    "sequence": sb.as_ref().map(|s| s.sequence),
                    "generation_high_water_mark": sb.as_ref().map(|s| s.generation_hwm.0),
                    "root_tag": sb.as_ref().map(|s| hex::encode(s.root.tag.0)),
                    "allocated_blocks": sb.as_ref().map(|s| s.allocated),
                    "commit_time": sb.as_ref().map(|s| s.commit_time),
                })
            })
            .collect();
        let mut doc = read.header.to_json(&read.copies);
        if let Some(obj) = doc.as_object_mut() {
            obj.insert("superblocks".into(), superblocks.into());
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(OK);
    }
    print!("{}", read.header.show(&read.copies));
    if !read.header.show(&read.copies).ends_with('\n') {
        println!();
    }
    for (i, (state, sb)) in slots.iter().enumerate() {
        let verified = match state {
            Some(state) => format!("verified: {state}"),
            None => "not verified (no --key-file)".into(),
        };
        match sb {
            Some(sb) => println!(
                "superblock {i}: commit {} ({verified}); generation mark {}, {} blocks allocated, root tag {}…",
                sb.sequence,
                sb.generation_hwm.0,
                sb.allocated,
                hex::encode(&sb.root.tag.0[..8])
            ),
            None => println!("superblock {i}: none ({verified})"),
        }
    }
    Ok(OK)
}

fn slot_fields(state: &SlotState) -> Option<Superblock> {
    match state {
        SlotState::Valid(sb) => Some((**sb).clone()),
        _ => None,
    }
}

fn peek_slots(dev: &dyn Device) -> Result<[Option<Superblock>; 2]> {
    let mut out = [None, None];
    for (slot, offset) in out.iter_mut().zip(SUPERBLOCK_OFFSETS) {
        let mut buf = [0u8; SUPERBLOCK_LEN];
        dev.read_at(&mut buf, offset)
            .with_context(|| format!("reading the superblock of {}", dev.name()))?;
        *slot = Superblock::peek_unverified(&buf);
    }
    Ok(out)
}
