//! Hidden developer commands used by the crash tests: a process that commits a known,
//! reproducible sequence of transactions, so that a test can `kill -9` it at any moment
//! and check the volume against the sequence.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::Global;
use super::exit::OK;
use super::key::read_key_file;
use crate::device::{Access, FileDevice};
use crate::store::{BlockStore, StoreOptions};
use crate::types::{BLOCK_SIZE, Block, LogicalBlock};

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Commit transactions of reproducible writes, printing `committed N` after each.
    WriteLoop {
        #[arg(long, value_name = "KEY")]
        key_file: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Blocks 0..SPAN are written.
        #[arg(long, default_value_t = 2000)]
        span: u64,
        /// Blocks written per transaction.
        #[arg(long, default_value_t = 64)]
        txn_blocks: u64,
        /// Stop after this many transactions (default: never).
        #[arg(long)]
        count: Option<u64>,
        volume: PathBuf,
    },
}

pub fn run(cmd: Command, _global: Global) -> Result<u8> {
    let Command::WriteLoop {
        key_file,
        seed,
        span,
        txn_blocks,
        count,
        volume,
    } = cmd;
    let key = read_key_file(&key_file)?;
    let dev = FileDevice::open(&volume, Access::ReadWrite)
        .with_context(|| format!("cannot open {}", volume.display()))?;
    let store = BlockStore::open(Arc::new(dev), &key, StoreOptions::default())?;
    let mut stdout = std::io::stdout().lock();
    let mut txn = 1;
    while count.is_none_or(|c| txn <= c) {
        for n in txn_writes(seed, txn, span, txn_blocks) {
            store.write(LogicalBlock(n), &pattern(content_seed(seed, txn), n))?;
        }
        store.commit()?;
        writeln!(stdout, "committed {txn}")?;
        stdout.flush()?;
        txn += 1;
    }
    store.close()?;
    Ok(OK)
}

/// The blocks transaction `txn` writes.
pub fn txn_writes(seed: u64, txn: u64, span: u64, txn_blocks: u64) -> Vec<u64> {
    let mut x = splitmix(seed ^ txn.wrapping_mul(0xA076_1D64_78BD_642F));
    (0..txn_blocks)
        .map(|_| {
            x = splitmix(x);
            x % span
        })
        .collect()
}

/// The seed of the contents transaction `txn` writes.
pub fn content_seed(seed: u64, txn: u64) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(txn)
}

/// Which transaction last wrote each block after `txns` transactions.
pub fn model_after(seed: u64, txns: u64, span: u64, txn_blocks: u64) -> HashMap<u64, u64> {
    let mut model = HashMap::new();
    for txn in 1..=txns {
        for n in txn_writes(seed, txn, span, txn_blocks) {
            model.insert(n, txn);
        }
    }
    model
}

/// A block whose bytes follow from (`seed`, `n`): easy to check, different per version.
pub fn pattern(seed: u64, n: u64) -> Box<Block> {
    let mut b = Box::new([0u8; BLOCK_SIZE]);
    let mut x = splitmix(seed ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03));
    for chunk in b.chunks_exact_mut(8) {
        x = splitmix(x);
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    b
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
