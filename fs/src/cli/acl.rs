//! The domain manager's commands on a volume's access list: `domfs grant`, `domfs revoke`
//! and `domfs acl show`. A change is a new list, version + 1, signed with the manager key,
//! registered at the TTP first (so the TTP refuses every older list from then on) and then
//! written into both header copies.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use domfs_proto::acl::{self, Access, AccessList, SignedMessage, Verified};
use domfs_proto::ttp::UpdateAccessListRequest;
use serde_json::json;

use super::Global;
use super::exit::{INTEGRITY, OK, Refused};
use super::manager::read_manager_key;
use super::ttp::{TtpArgs, call_failed, runtime};
use crate::device::{Access as DevAccess, FileDevice};
use crate::format::header::{DomainHeader, KeyMode, read_header, write_header};

#[derive(clap::Args, Debug)]
pub struct ChangeArgs {
    /// The domain manager's private key (`domfs manager keygen`).
    #[arg(long, value_name = "FILE")]
    manager_key: PathBuf,
    #[command(flatten)]
    ttp: TtpArgs,
    /// The volume whose list changes.
    volume: PathBuf,
    /// The host, as named in its TLS certificate.
    host: String,
    /// grant: the right to give (default ro). revoke: `rw` takes only the right to write
    /// (the host keeps ro); without it the host loses all access.
    mode: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum AclCommand {
    /// Print a volume's access list and whether its signature verifies.
    Show {
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
        volume: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Grant,
    Revoke,
}

fn parse_mode(mode: Option<&str>) -> Result<Option<Access>> {
    mode.map(|m| Access::parse(m).with_context(|| format!("mode {m:?} is neither rw nor ro")))
        .transpose()
}

/// The header and its verified list; fails unless the volume is in agent mode and the
/// list verifies with the manager key in the header.
pub fn verified_list(volume: &Path) -> Result<(DomainHeader, Verified)> {
    let dev = FileDevice::open(volume, DevAccess::ReadOnly)
        .with_context(|| format!("cannot open {}", volume.display()))?;
    let header = read_header(&dev)?.header;
    if header.key_mode != KeyMode::Ttp {
        bail!(
            "{} is a key-file volume: it has no access list (volumes with one are made with `domfs create --ttp`)",
            volume.display()
        );
    }
    let verified = acl::verify(
        &header.signed_message,
        &header.signature,
        &header.manager_key,
    )
    .with_context(|| format!("the access list in {}", volume.display()))?;
    if verified.message.domain_id != header.volume_id.0 {
        bail!(
            "the access list in {} belongs to another domain ({})",
            volume.display(),
            hex::encode(verified.message.domain_id)
        );
    }
    Ok((header, verified))
}

pub fn run_change(change: Change, args: ChangeArgs, global: Global) -> Result<u8> {
    if !acl::valid_host_name(&args.host) {
        bail!(
            "{:?} is not a host name (1-64 of A-Z a-z 0-9 . _ -)",
            args.host
        );
    }
    let mode = parse_mode(args.mode.as_deref())?;
    let manager = read_manager_key(&args.manager_key)?;
    let (mut header, verified) = verified_list(&args.volume)?;
    if manager.verifying_key().as_bytes()[..] != header.manager_key[..] {
        return Err(Refused(format!(
            "{} is not the key that signed this domain's list (its manager key is {})",
            args.manager_key.display(),
            hex::encode(&header.manager_key)
        ))
        .into());
    }
    let old = verified.list;
    let mut list = AccessList {
        version: old.version + 1,
        ..old.clone()
    };
    let summary = match (change, mode) {
        (Change::Grant, mode) => {
            let mode = mode.unwrap_or(Access::ReadOnly);
            list.grants.insert(args.host.clone(), mode);
            format!("granted {} {mode}", args.host)
        }
        (Change::Revoke, Some(Access::ReadWrite)) => {
            if old.access_of(&args.host) != Some(Access::ReadWrite) {
                bail!("{} has no read-write access to revoke", args.host);
            }
            list.grants.insert(args.host.clone(), Access::ReadOnly);
            format!("revoked write access of {} (it keeps ro)", args.host)
        }
        (Change::Revoke, _) => {
            if list.grants.remove(&args.host).is_none() {
                bail!("{} is not in the access list", args.host);
            }
            format!("revoked all access of {}", args.host)
        }
    };
    if old.grants == list.grants {
        if !global.quiet {
            eprintln!("{} already has that access; nothing changed", args.host);
        }
        return Ok(OK);
    }
    let message = SignedMessage::new(&list, &verified.message.meta)?;
    let (bytes, signature) = message.sign(&manager);

    let rt = runtime()?;
    rt.block_on(async {
        let mut ttp = args.ttp.connect().await?;
        ttp.update_access_list(UpdateAccessListRequest {
            signed_message: bytes.clone(),
            signature: signature.to_vec(),
        })
        .await
        .map_err(|s| call_failed("the TTP refused the new access list", s))
    })?;

    header.signed_message = bytes;
    header.signature = signature.to_vec();
    let dev = FileDevice::open(&args.volume, DevAccess::ReadWrite)
        .with_context(|| format!("cannot open {}", args.volume.display()))?;
    write_header(&dev, &header).with_context(|| {
        format!(
            "the TTP has list version {} but writing it into {} failed; hosts mounting this copy are refused until it is written (run the same command again)",
            list.version,
            args.volume.display()
        )
    })?;
    if !global.quiet {
        eprintln!(
            "{summary}: access list version {} registered at the TTP and written to {}",
            list.version,
            args.volume.display()
        );
        if change == Change::Revoke {
            eprintln!("running mounts on that host lose the key when their lease is next renewed");
        }
    }
    Ok(OK)
}

pub fn run_show(cmd: AclCommand, _global: Global) -> Result<u8> {
    let AclCommand::Show { json, volume } = cmd;
    let dev = FileDevice::open(&volume, DevAccess::ReadOnly)
        .with_context(|| format!("cannot open {}", volume.display()))?;
    let header = read_header(&dev)?.header;
    if header.key_mode != KeyMode::Ttp {
        bail!(
            "{} is a key-file volume: it has no access list",
            volume.display()
        );
    }
    let checked = acl::verify(
        &header.signed_message,
        &header.signature,
        &header.manager_key,
    );
    // Show what is there even when it does not verify: that is when an operator looks.
    let (message, list, signature) = match &checked {
        Ok(v) => (v.message.clone(), Some(v.list.clone()), "valid".to_string()),
        Err(e) => {
            let message = SignedMessage::decode(&header.signed_message)
                .with_context(|| format!("the access list in {}", volume.display()))?;
            let list = message.access_list().ok();
            (message, list, format!("INVALID: {e}"))
        }
    };
    let same_domain = message.domain_id == header.volume_id.0;
    if json {
        let grants: serde_json::Map<String, serde_json::Value> = list
            .iter()
            .flat_map(|l| l.grants.iter())
            .map(|(h, a)| (h.clone(), json!(a.as_str())))
            .collect();
        let doc = json!({
            "domain_id": hex::encode(message.domain_id),
            "volume_id": header.volume_id.to_string(),
            "version": message.version,
            "meta": String::from_utf8_lossy(&message.meta),
            "manager_key": hex::encode(&header.manager_key),
            "signature": signature,
            "grants": grants,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("domain       {}", hex::encode(message.domain_id));
        println!("meta         {}", String::from_utf8_lossy(&message.meta));
        println!("version      {}", message.version);
        println!("manager key  {}", hex::encode(&header.manager_key));
        println!("signature    {signature}");
        match &list {
            Some(l) if l.grants.is_empty() => println!("hosts        (none)"),
            Some(l) => {
                for (i, (host, access)) in l.grants.iter().enumerate() {
                    let label = if i == 0 { "hosts" } else { "" };
                    println!("{label:<12} {host} {access}");
                }
            }
            None => println!("hosts        (the list does not parse)"),
        }
    }
    Ok(if checked.is_ok() && same_domain {
        OK
    } else {
        INTEGRITY
    })
}
