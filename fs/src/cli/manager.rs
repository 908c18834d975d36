//! `domfs manager keygen`: the domain manager's Ed25519 key pair, which signs access lists.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use ed25519_dalek::SigningKey;

use super::Global;
use super::exit::{OK, Refused};
use super::key::read_key_file;
use crate::crypto::DomainKey;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write a new manager key pair: FILE (the private key, mode 0600) and FILE.pub (the
    /// public key the TTP operator adds with `domfs-ttp managers add NAME FILE.pub`).
    Keygen {
        /// Where to write the private key; the public key goes to FILE.pub.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Replace an existing key (lists signed with the old one can no longer be
        /// changed by this manager).
        #[arg(long)]
        force: bool,
    },
}

pub fn run(cmd: Command, global: Global) -> Result<u8> {
    match cmd {
        Command::Keygen { out, force } => keygen(&out, force, global),
    }
}

fn public_path(private: &Path) -> PathBuf {
    let mut name = private.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

fn keygen(out: &Path, force: bool, global: Global) -> Result<u8> {
    let public_out = public_path(out);
    if !force && (out.exists() || public_out.exists()) {
        return Err(Refused(format!(
            "{} exists; replacing a manager key locks its domains' lists (use --force to replace it)",
            out.display()
        ))
        .into());
    }
    // The seed is drawn like a domain key: 32 random bytes, kept zeroized.
    let seed = DomainKey::generate()?;
    let signing = SigningKey::from_bytes(seed.expose());
    write_file(out, seed.to_hex().as_bytes(), 0o600)?;
    write_file(
        &public_out,
        hex::encode(signing.verifying_key().as_bytes()).as_bytes(),
        0o644,
    )?;
    if !global.quiet {
        eprintln!(
            "wrote the manager key {} and its public half {}",
            out.display(),
            public_out.display()
        );
        eprintln!(
            "next: the TTP operator runs `domfs-ttp managers add NAME {}`",
            public_out.display()
        );
    }
    Ok(OK)
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.write_all(b"\n")?;
    file.sync_all()
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The manager's signing key from FILE (64 hex digits or 32 raw bytes, as `keygen`
/// writes it; the same format as a domain key file).
pub fn read_manager_key(path: &Path) -> Result<SigningKey> {
    let seed = read_key_file(path).with_context(|| "reading the manager key")?;
    Ok(SigningKey::from_bytes(seed.expose()))
}
