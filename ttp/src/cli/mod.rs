//! The binary's own helpers: writing certificate files, reading key files, and printing
//! the operator's listings as aligned text or JSON.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};
use domfs_proto::ttp::{DomainRecord, HostRecord, ManagerRecord};
use domfs_ttp::core::format_unix;
use domfs_ttp::pki::Role;
use domfs_ttp::secret::Secret32;
use domfs_ttp::state::StateDir;
use serde_json::json;

/// `cert issue`: NAME.crt, NAME.key and ca.crt in `out`.
pub fn issue_certificate(
    state: &StateDir,
    name: &str,
    role: Role,
    out: &Path,
    days: i64,
    force: bool,
) -> anyhow::Result<()> {
    if name == "ca" {
        bail!("the name \"ca\" would overwrite ca.crt; choose another");
    }
    state.check()?;
    let issued = state.ca()?.issue_client(name, role, days)?;
    let ca_cert = state.read(domfs_ttp::state::CA_CERT)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    let cert_path = out.join(format!("{name}.crt"));
    let key_path = out.join(format!("{name}.key"));
    for path in [&cert_path, &key_path] {
        if path.exists() && !force {
            bail!("{} exists (--force replaces it)", path.display());
        }
    }
    write_file(&key_path, issued.key.as_bytes(), 0o600, force)?;
    write_file(&cert_path, issued.cert.as_bytes(), 0o644, force)?;
    write_file(&out.join("ca.crt"), &ca_cert, 0o644, true)?;
    println!(
        "issued a {role} certificate for {name}: {}, {} (and ca.crt)",
        cert_path.display(),
        key_path.display()
    );
    Ok(())
}

/// Writes a file that must not exist.
pub fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    write_file(path, bytes, mode, false)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32, replace: bool) -> anyhow::Result<()> {
    if replace {
        // Written beside and renamed, so a reader never sees half a file.
        let tmp = path.with_extension("tmp-domfs-ttp");
        let _ = fs::remove_file(&tmp);
        write_file(&tmp, bytes, mode, false)?;
        return fs::rename(&tmp, path)
            .with_context(|| format!("cannot replace {}", path.display()));
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(bytes))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

pub fn read_backup_key(path: &Path) -> anyhow::Result<Secret32> {
    let bytes = fs::read(path).with_context(|| {
        format!(
            "cannot read the key file {} (make one with: head -c 32 /dev/urandom > FILE; \
             chmod 600 FILE)",
            path.display()
        )
    })?;
    domfs_ttp::backup::parse_key_file(&bytes)
        .with_context(|| format!("{} must hold 32 bytes, or 64 hex digits", path.display()))
}

/// Prints rows under a header, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", text.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.into()
    }
}

fn when(unix: u64) -> String {
    if unix == 0 {
        "-".into()
    } else {
        format_unix(unix)
    }
}

fn print_json(value: serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

pub fn print_managers(managers: &[ManagerRecord], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return print_json(json!(
            managers
                .iter()
                .map(|m| json!({
                    "name": m.name,
                    "public_key": hex::encode(&m.public_key),
                    "added_unix": m.added_unix,
                }))
                .collect::<Vec<_>>()
        ));
    }
    let rows: Vec<Vec<String>> = managers
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                when(m.added_unix),
                hex::encode(&m.public_key),
            ]
        })
        .collect();
    table(&["NAME", "ADDED", "PUBLIC KEY"], &rows);
    Ok(())
}

pub fn print_hosts(hosts: &[HostRecord], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return print_json(json!(
            hosts
                .iter()
                .map(|h| json!({
                    "name": h.name,
                    "state": h.state,
                    "attestation_key_fingerprint": h.attestation_key_fingerprint,
                    "pcr_selection": h.pcr_selection,
                    "pcr_digest": h.pcr_digest,
                    "enrolled_unix": h.enrolled_unix,
                }))
                .collect::<Vec<_>>()
        ));
    }
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            vec![
                h.name.clone(),
                h.state.clone(),
                when(h.enrolled_unix),
                or_dash(&h.pcr_selection),
                or_dash(&h.attestation_key_fingerprint),
            ]
        })
        .collect();
    table(
        &["NAME", "STATE", "ENROLLED", "PCRS", "ATTESTATION KEY"],
        &rows,
    );
    Ok(())
}

pub fn print_domains(domains: &[DomainRecord], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return print_json(json!(
            domains
                .iter()
                .map(|d| json!({
                    "domain_id": d.domain_id,
                    "meta": d.meta,
                    "manager": d.manager,
                    "access_list_version": d.access_list_version,
                    "grants": d.grants,
                    "destroyed": d.destroyed,
                    "rw_lease_holder": d.rw_lease_holder,
                    "rw_lease_until_unix": d.rw_lease_until_unix,
                    "registered_unix": d.registered_unix,
                    "checkpoint": d.checkpoint.as_ref().map(|c| json!({
                        "sequence": c.sequence,
                        "generation": c.generation,
                        "root": hex::encode(&c.root),
                        "audit_sequence": c.audit_sequence,
                        "audit_head": hex::encode(&c.audit_head),
                        "time_unix": c.time_unix,
                        "host": c.host,
                    })),
                }))
                .collect::<Vec<_>>()
        ));
    }
    let rows: Vec<Vec<String>> = domains
        .iter()
        .map(|d| {
            let lease = if d.rw_lease_holder.is_empty() {
                "-".to_string()
            } else {
                format!(
                    "{} until {}",
                    d.rw_lease_holder,
                    when(d.rw_lease_until_unix)
                )
            };
            let checkpoint = match &d.checkpoint {
                Some(c) => format!("{} at {}", c.sequence, when(c.time_unix)),
                None => "-".to_string(),
            };
            vec![
                d.domain_id.clone(),
                if d.destroyed { "destroyed" } else { "live" }.to_string(),
                d.access_list_version.to_string(),
                d.manager.clone(),
                lease,
                checkpoint,
                or_dash(&d.grants.join(",")),
            ]
        })
        .collect();
    table(
        &[
            "DOMAIN",
            "STATE",
            "VERSION",
            "MANAGER",
            "RW LEASE",
            "CHECKPOINT",
            "GRANTS",
        ],
        &rows,
    );
    Ok(())
}
