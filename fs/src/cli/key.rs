//! `domfs key new`: write a fresh domain key file (key-file mode).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;

use super::Global;
use super::exit::{OK, Refused};
use crate::crypto::DomainKey;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write 32 random bytes as 64 hex digits to KEY (mode 0600).
    New {
        /// Where to write the key.
        key: PathBuf,
        /// Replace an existing key file (the volumes made with it become unreadable).
        #[arg(long)]
        force: bool,
    },
}

pub fn run(cmd: Command, global: Global) -> Result<u8> {
    match cmd {
        Command::New { key, force } => {
            if key.exists() && !force {
                return Err(Refused(format!(
                    "{} exists; a volume made with it would become unreadable if it were replaced (use --force to replace it)",
                    key.display()
                ))
                .into());
            }
            let fresh = DomainKey::generate()?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&key)
                .with_context(|| format!("cannot write {}", key.display()))?;
            // An existing file keeps its old mode on open: tighten it before the key lands.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            let hex = fresh.to_hex();
            file.write_all(hex.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            if !global.quiet {
                eprintln!(
                    "wrote a new domain key to {}; keep a copy somewhere safe: without it the volume cannot be read",
                    key.display()
                );
            }
            Ok(OK)
        }
    }
}

/// Reads a key file, warning when others can read it.
pub fn read_key_file(path: &Path) -> Result<DomainKey> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    if meta.len() > 4096 {
        return Err(
            crate::Error::BadKeyFile(format!("{} is far too large", path.display())).into(),
        );
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "key file {} is readable by other users; chmod 600 it",
            path.display()
        );
    }
    let contents = zeroize::Zeroizing::new(
        std::fs::read(path).with_context(|| format!("cannot read key file {}", path.display()))?,
    );
    DomainKey::parse_key_file(&contents).with_context(|| format!("key file {}", path.display()))
}
