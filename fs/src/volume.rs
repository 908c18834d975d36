//! Creating a domain volume: the one place where a container gets its header and, when
//! the creator holds the key, its first superblocks.

use std::sync::Arc;

use crate::crypto::DomainKey;
use crate::device::{Access, Device};
use crate::format::header::{
    CipherSuite, DomainHeader, Extension, KeyMode, read_header, write_header,
};
use crate::format::{HEADER_OFFSETS, HEADER_SLOT_SIZE, MIN_CONTAINER_SIZE, SUPERBLOCK_OFFSETS};
use crate::store::{BlockStore, StoreOptions, format_volume};
use crate::types::{BLOCK_SIZE, VolumeId};
use crate::{Error, Result};

/// What `domfs create` decides.
pub struct CreateOptions {
    pub meta: Vec<u8>,
    pub key_mode: KeyMode,
}

/// Writes a new header (and with `key`, formats the block store) on `dev`. The caller has
/// already decided that `dev` may be overwritten.
pub fn create_volume(
    dev: &dyn Device,
    options: CreateOptions,
    key: Option<&DomainKey>,
) -> Result<DomainHeader> {
    create_volume_with(dev, options, Vec::new(), key)
}

/// [`create_volume`] with header extensions (e.g. the retention policy,
/// [`crate::format::retention::Retention::to_extension`]).
pub fn create_volume_with(
    dev: &dyn Device,
    options: CreateOptions,
    extensions: Vec<Extension>,
    key: Option<&DomainKey>,
) -> Result<DomainHeader> {
    let size = usable_size(dev)?;
    let header = DomainHeader {
        volume_id: VolumeId::random()?,
        block_size: BLOCK_SIZE as u32,
        cipher_suite: CipherSuite::Aes256XtsHmacSha256,
        key_mode: options.key_mode,
        container_size: size,
        created_unix: crate::store::unix_now(),
        meta: options.meta,
        signed_message: Vec::new(),
        signature: Vec::new(),
        manager_key: Vec::new(),
        extensions,
    };
    install(dev, header, key)
}

/// The manager-signed part of an agent-mode header.
pub struct SignedAccessList {
    pub message: Vec<u8>,
    pub signature: Vec<u8>,
    pub manager_key: Vec<u8>,
}

/// Writes the header of an agent-mode volume whose id was chosen (and registered at the
/// TTP) beforehand, with `extensions` (e.g. the retention policy). No superblocks: the
/// creator never holds the domain key, so the first read-write mount formats the volume
/// (and binds the header, extensions included, to it).
pub fn create_ttp_volume(
    dev: &dyn Device,
    volume_id: VolumeId,
    meta: Vec<u8>,
    signed: SignedAccessList,
    extensions: Vec<Extension>,
) -> Result<DomainHeader> {
    let header = DomainHeader {
        volume_id,
        block_size: BLOCK_SIZE as u32,
        cipher_suite: CipherSuite::Aes256XtsHmacSha256,
        key_mode: KeyMode::Ttp,
        container_size: usable_size(dev)?,
        created_unix: crate::store::unix_now(),
        meta,
        signed_message: signed.message,
        signature: signed.signature,
        manager_key: signed.manager_key,
        extensions,
    };
    install(dev, header, None)
}

/// The container size a volume on `dev` gets: whole 4 KiB blocks, at least the minimum.
pub fn usable_size(dev: &dyn Device) -> Result<u64> {
    let size = dev.size() - dev.size() % BLOCK_SIZE as u64;
    if size < MIN_CONTAINER_SIZE {
        return Err(Error::Invalid(format!(
            "the container holds {} bytes; a volume needs at least {MIN_CONTAINER_SIZE}",
            dev.size()
        )));
    }
    Ok(size)
}

fn install(
    dev: &dyn Device,
    header: DomainHeader,
    key: Option<&DomainKey>,
) -> Result<DomainHeader> {
    // Clear stale superblocks first: a leftover from an older volume must never be taken
    // for this one's (it would fail its MAC anyway, but an empty slot is clearer).
    let zeros = vec![0u8; BLOCK_SIZE];
    for offset in SUPERBLOCK_OFFSETS {
        dev.write_at(&zeros, offset)
            .map_err(|e| Error::io(format!("clearing {}", dev.name()), e))?;
    }
    write_header(dev, &header)?;
    if let Some(key) = key {
        format_volume(dev, &header, key, None)?;
    }
    Ok(header)
}

/// Opens the block store of `dev`. A volume created without its key (agent mode: the
/// domain manager never holds it) has no superblocks yet; the first read-write open
/// writes them, signed with the writer key in `options`.
pub fn open_store(
    dev: Arc<dyn Device>,
    key: &DomainKey,
    options: StoreOptions,
) -> Result<BlockStore> {
    match BlockStore::open(dev.clone(), key, options.clone()) {
        Err(Error::Unformatted) if options.access == Access::ReadWrite => {
            let header = read_header(dev.as_ref())?.header;
            tracing::info!("{}: first read-write open, formatting", dev.name());
            format_volume(dev.as_ref(), &header, key, options.writer.clone())?;
            BlockStore::open(dev, key, options)
        }
        other => other,
    }
}

/// Whether the container already holds something worth protecting: a domfs header, or
/// any non-zero byte in its first megabyte.
pub fn looks_used(dev: &dyn Device) -> Result<bool> {
    let probe = (HEADER_OFFSETS[1] + HEADER_SLOT_SIZE)
        .max(1024 * 1024)
        .min(dev.size());
    let mut buf = vec![0u8; probe as usize];
    dev.read_at(&mut buf, 0)
        .map_err(|e| Error::io(format!("reading {}", dev.name()), e))?;
    Ok(buf.iter().any(|&b| b != 0))
}
