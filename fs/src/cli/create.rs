//! `domfs create`: allocate a container and write a new volume into it.

use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::Global;
use super::exit::{OK, Refused};
use super::key::read_key_file;
use super::manager::read_manager_key;
use super::size::{human, parse_size};
use super::ttp::{TtpArgs, call_failed, runtime};
use crate::crypto::DomainKey;
use crate::device::{Access, Device, FileDevice};
use crate::format::header::KeyMode;
use crate::format::retention::{Retention, validate_pattern};
use crate::store::geometry::Geometry;
use crate::types::BLOCK_SIZE;
use crate::types::VolumeId;
use crate::volume::{CreateOptions, create_volume_with, looks_used};
use crate::volume::{SignedAccessList, create_ttp_volume};
use domfs_proto::acl::{Access as Right, AccessList, SignedMessage, valid_host_name};
use domfs_proto::ttp::RegisterDomainRequest;
use std::collections::BTreeMap;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Container size (e.g. 256M, 10G, 1T). Required for a file, which is created sparse
    /// (instant at any size); a block device is always used whole.
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Key-file mode: the domain key file (32 raw bytes or 64 hex digits; `domfs key new
    /// KEY` makes one). Without it, --ttp and --manager-key make an agent-mode volume.
    #[arg(long, value_name = "KEY", conflicts_with_all = ["ttp", "manager_key", "grant"])]
    key_file: Option<PathBuf>,
    #[command(flatten)]
    ttp: TtpArgs,
    /// Agent mode: the domain manager's private key (`domfs manager keygen`), which signs
    /// the access list. The TTP must know its public half (`domfs-ttp managers add`).
    #[arg(long, value_name = "FILE", requires = "ttp")]
    manager_key: Option<PathBuf>,
    /// Agent mode: a host allowed to mount the domain, as HOST=rw or HOST=ro (repeat for
    /// more hosts); HOST is the name in the host's TLS certificate.
    #[arg(long, value_name = "HOST=MODE", requires = "ttp")]
    grant: Vec<String>,
    /// Domain metadata stored in the header (e.g. "melior:ward-12").
    #[arg(long, default_value = "")]
    meta: String,
    /// How long removed and overwritten content is kept as hidden versions: keep-all
    /// (nothing is ever freed but by the domain manager's purge) or keep-for=DURATION
    /// (e.g. keep-for=30d; also h, m, s, w). Fixed at creation.
    #[arg(long, value_name = "POLICY", default_value = "keep-all", value_parser = parse_retention)]
    retention: RetentionPolicy,
    /// Paths whose removed content is freed at once, not kept: scratch files, not records
    /// (repeat for more). Relative to the volume's root; `*` and `?` match within a
    /// component, `**` any number of components; without a leading `/` a pattern matches
    /// at any depth. E.g. '*-journal' (SQLite); for PostgreSQL 'pg_wal/*', 'pgsql_tmp*',
    /// 'pgsql_tmp/**', 'pg_subtrans/*', 'pg_internal.init*' (README: why each).
    #[arg(long, value_name = "PATTERN", value_parser = parse_pattern)]
    no_keep: Vec<String>,
    /// Overwrite a container that already holds data or a volume.
    #[arg(long)]
    force: bool,
    /// The file or block device to create the volume in.
    volume: PathBuf,
}

/// `--retention`, parsed: keep-for seconds, or keep-all.
#[derive(Clone, Copy, Debug)]
struct RetentionPolicy(Option<u64>);

fn parse_retention(text: &str) -> std::result::Result<RetentionPolicy, String> {
    Retention::parse_policy(text).map(RetentionPolicy)
}

fn parse_pattern(text: &str) -> std::result::Result<String, String> {
    validate_pattern(text).map(|()| text.to_string())
}

pub fn run(args: Args, global: Global) -> Result<u8> {
    let retention = Retention {
        keep_for: args.retention.0,
        no_keep: args.no_keep.clone(),
    };
    let extensions = vec![
        retention
            .to_extension()
            .map_err(|e| anyhow::anyhow!("--retention/--no-keep: {e}"))?,
    ];
    let mode = if let Some(key_file) = &args.key_file {
        Mode::KeyFile(read_key_file(key_file)?)
    } else if args.ttp.given() {
        let Some(manager_key) = &args.manager_key else {
            bail!("--manager-key FILE is required with --ttp (the manager signs the access list)");
        };
        let manager = read_manager_key(manager_key)?;
        let list = AccessList {
            domain_id: [0; 16],
            version: 1,
            grants: parse_grants(&args.grant)?,
        };
        if list.grants.is_empty() {
            tracing::warn!("no --grant given: no host can mount the volume until `domfs grant`");
        }
        Mode::Ttp {
            manager: Box::new(manager),
            list,
        }
    } else {
        bail!(
            "say where the key comes from: --key-file KEY (key-file mode), or --ttp URL with --tls-ca/--tls-cert/--tls-key, --manager-key FILE and --grant HOST=rw (agent mode)"
        );
    };
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
    let header = match mode {
        Mode::KeyFile(key) => create_volume_with(
            &dev,
            CreateOptions {
                meta: args.meta.clone().into_bytes(),
                key_mode: KeyMode::KeyFile,
            },
            extensions,
            Some(&key),
        )?,
        Mode::Ttp { manager, mut list } => {
            let volume_id = VolumeId::random()?;
            list.domain_id = volume_id.0;
            let message = SignedMessage::new(&list, args.meta.as_bytes())?;
            let (bytes, signature) = message.sign(&manager);
            let manager_key = manager.verifying_key().to_bytes().to_vec();
            runtime()?.block_on(async {
                let mut ttp = args.ttp.connect().await?;
                ttp.register_domain(RegisterDomainRequest {
                    signed_message: bytes.clone(),
                    signature: signature.to_vec(),
                    manager_key: manager_key.clone(),
                })
                .await
                .map_err(|s| call_failed("the TTP refused to register the domain", s))
            })?;
            create_ttp_volume(
                &dev,
                volume_id,
                args.meta.clone().into_bytes(),
                SignedAccessList {
                    message: bytes,
                    signature: signature.to_vec(),
                    manager_key,
                },
                extensions,
            )?
        }
    };
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
        println!("  retention   {}", retention.policy_text());
        for pattern in &retention.no_keep {
            println!("  not kept    {pattern}");
        }
        match &args.key_file {
            Some(key_file) => println!(
                "next: `domfs fsck --key-file {} {}` checks it",
                key_file.display(),
                args.volume.display()
            ),
            None => println!(
                "registered at the TTP; next: on a granted host, `domfs mount {} DIR` (the first read-write mount formats it)",
                args.volume.display()
            ),
        }
    }
    Ok(OK)
}

enum Mode {
    KeyFile(DomainKey),
    Ttp {
        manager: Box<ed25519_dalek::SigningKey>,
        list: AccessList,
    },
}

fn parse_grants(grants: &[String]) -> Result<BTreeMap<String, Right>> {
    let mut out = BTreeMap::new();
    for grant in grants {
        let (host, mode) = grant
            .split_once('=')
            .with_context(|| format!("--grant {grant}: write HOST=rw or HOST=ro"))?;
        if !valid_host_name(host) {
            bail!("--grant {grant}: {host:?} is not a host name (1-64 of A-Z a-z 0-9 . _ -)");
        }
        let access = Right::parse(mode)
            .with_context(|| format!("--grant {grant}: the mode must be rw or ro"))?;
        if out.insert(host.to_string(), access).is_some() {
            bail!("--grant: {host} is given twice");
        }
    }
    Ok(out)
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
