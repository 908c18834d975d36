//! The domain header for people (`domfs header show`) and for programs (`--json`).
//!
//! Both renderings state the same facts. Nothing in the header is secret, but the signed
//! message, the signature and the manager key are shown as fingerprints (the first 16 hex
//! digits of their SHA-256) rather than in full: enough to compare, short enough to read.

use std::fmt::Write as _;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{CopyState, DomainHeader, KeyMode};
use crate::format::FORMAT_VERSION;
use crate::format::retention::{Retention, format_duration};

/// 10000-01-01T00:00:00Z: RFC 3339 has four-digit years.
const YEAR_10000_UNIX: u64 = 253_402_300_800;
const SECS_PER_DAY: u64 = 86_400;

impl DomainHeader {
    /// Human-readable text, one fact per line, ending in a newline.
    pub fn show(&self, copies: &[CopyState; 2]) -> String {
        let mut lines: Vec<(&str, String)> = vec![
            ("volume id", self.volume_id.to_string()),
            ("format version", FORMAT_VERSION.to_string()),
            ("block size", size_text(self.block_size.into())),
            ("container size", size_text(self.container_size)),
            ("cipher suite", self.cipher_suite.name().to_string()),
            ("key mode", key_mode_text(self.key_mode).to_string()),
            ("created", created_text(self.created_unix)),
            (
                "metadata",
                format!("\"{}\" ({} bytes)", escape(&self.meta), self.meta.len()),
            ),
            ("signed message", blob_text(&self.signed_message)),
            ("signature", blob_text(&self.signature)),
            ("manager key", blob_text(&self.manager_key)),
        ];
        let extensions = self
            .extensions
            .iter()
            .map(|e| {
                let critical = if e.is_critical() { " critical" } else { "" };
                format!("{:#06x}{critical} ({} bytes)", e.kind, e.data.len())
            })
            .collect::<Vec<_>>();
        lines.push(("retention", retention_text(self)));
        lines.push((
            "extensions",
            if extensions.is_empty() {
                "none".to_string()
            } else {
                extensions.join(", ")
            },
        ));
        lines.push(("header copy A", copy_text(&copies[0])));
        lines.push(("header copy B", copy_text(&copies[1])));

        let mut out = String::new();
        for (label, value) in lines {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "{:<16}{value}", format!("{label}:"));
        }
        out
    }

    /// The same facts as [`DomainHeader::show`], as a JSON object.
    pub fn to_json(&self, copies: &[CopyState; 2]) -> Value {
        let utf8 = std::str::from_utf8(&self.meta).ok();
        // Hex only when the metadata is not UTF-8 text, so that nothing is lost.
        let meta_hex = utf8.is_none().then(|| hex::encode(&self.meta));
        let key_mode = match self.key_mode {
            KeyMode::KeyFile => "key-file",
            KeyMode::Ttp => "ttp",
        };
        json!({
            "format_version": FORMAT_VERSION,
            "volume_id": self.volume_id.to_string(),
            "block_size": self.block_size,
            "container_size": self.container_size,
            "cipher_suite": {
                "id": self.cipher_suite as u16,
                "name": self.cipher_suite.name(),
            },
            "key_mode": key_mode,
            "created_unix": self.created_unix,
            "created": rfc3339(self.created_unix),
            "meta": utf8,
            "meta_len": self.meta.len(),
            "meta_hex": meta_hex,
            "signed_message": blob_json(&self.signed_message),
            "signature": blob_json(&self.signature),
            "manager_key": blob_json(&self.manager_key),
            "retention": retention_json(self),
            "extensions": self.extensions.iter().map(|e| json!({
                "kind": e.kind,
                "critical": e.is_critical(),
                "len": e.data.len(),
            })).collect::<Vec<_>>(),
            "copies": { "a": copy_json(&copies[0]), "b": copy_json(&copies[1]) },
        })
    }
}

/// `keep-all (nothing is ever freed)`, or `keep-for=30d`, then the no-keep patterns.
fn retention_text(header: &DomainHeader) -> String {
    match Retention::from_header(header) {
        Ok(r) => {
            let policy = match r.keep_for {
                None => "keep-all (hidden versions are never freed)".to_string(),
                Some(_) => format!(
                    "{} (hidden versions older than that are freed)",
                    r.policy_text()
                ),
            };
            if r.no_keep.is_empty() {
                policy
            } else {
                let patterns: Vec<String> = r
                    .no_keep
                    .iter()
                    .map(|p| format!("\"{}\"", escape(p.as_bytes())))
                    .collect();
                format!("{policy}; not kept: {}", patterns.join(", "))
            }
        }
        Err(e) => format!("unreadable: {e}"),
    }
}

fn retention_json(header: &DomainHeader) -> Value {
    match Retention::from_header(header) {
        Ok(r) => json!({
            "policy": if r.keep_for.is_some() { "keep-for" } else { "keep-all" },
            "keep_for_secs": r.keep_for,
            "keep_for": r.keep_for.map(format_duration),
            "no_keep": r.no_keep,
        }),
        Err(e) => json!({ "error": e.to_string() }),
    }
}

fn key_mode_text(mode: KeyMode) -> &'static str {
    match mode {
        KeyMode::KeyFile => "key file (a local 32-byte key)",
        KeyMode::Ttp => {
            "TTP (the trusted third party releases the key to hosts in the access list)"
        }
    }
}

/// "4 KiB (4096 bytes)", "1.50 GiB (1610612736 bytes)", "512 bytes".
fn size_text(n: u64) -> String {
    const UNITS: [(u64, &str); 6] = [
        (1 << 60, "EiB"),
        (1 << 50, "PiB"),
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    match UNITS.into_iter().find(|&(unit, _)| n >= unit) {
        None => format!("{n} bytes"),
        Some((unit, name)) if n.is_multiple_of(unit) => format!("{} {name} ({n} bytes)", n / unit),
        Some((unit, name)) => format!("{:.2} {name} ({n} bytes)", n as f64 / unit as f64),
    }
}

fn created_text(secs: u64) -> String {
    rfc3339(secs).unwrap_or_else(|| format!("{secs} seconds after 1970 (beyond the year 9999)"))
}

/// UTC, RFC 3339 ("2024-02-29T23:59:59Z"); `None` from the year 10000 on.
pub(crate) fn rfc3339(secs: u64) -> Option<String> {
    if secs >= YEAR_10000_UNIX {
        return None;
    }
    let (days, rem) = (secs / SECS_PER_DAY, secs % SECS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    Some(format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    ))
}

/// (year, month, day) of a day count since 1970-01-01, proleptic Gregorian; Howard
/// Hinnant's `civil_from_days`, for non-negative days (callers bound them to year 9999).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01, so leap days fall at the end of a (March-based) year.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // day of the 400-year era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the March-based year
    let mp = (5 * doy + 2) / 153; // March = 0
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Text with control, invisible and bidirectional-override characters, quotes and
/// backslashes escaped, and bytes that are not UTF-8 as `\xNN`, so metadata cannot play
/// tricks on a terminal or pass for other output. (A fixed list of invisible characters,
/// not the whole Unicode "format" category.)
fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' | '\\' => {
                    out.push('\\');
                    out.push(c);
                }
                c if c.is_control() || is_invisible(c) => out.extend(c.escape_default()),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

fn is_invisible(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

fn fingerprint(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    hex::encode(digest.get(..8).unwrap_or_default())
}

fn blob_text(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        "none".to_string()
    } else {
        format!("{} bytes, fingerprint {}", bytes.len(), fingerprint(bytes))
    }
}

fn blob_json(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        Value::Null
    } else {
        json!({ "len": bytes.len(), "fingerprint": fingerprint(bytes) })
    }
}

fn copy_text(state: &CopyState) -> String {
    match state {
        CopyState::Valid => "valid".to_string(),
        CopyState::Damaged(reason) => format!("damaged: {reason}"),
        CopyState::Differs => {
            "valid but differs from copy A (an interrupted update; writing the header again \
             repairs it)"
                .to_string()
        }
    }
}

fn copy_json(state: &CopyState) -> Value {
    match state {
        CopyState::Valid => json!({ "state": "valid" }),
        CopyState::Damaged(reason) => json!({ "state": "damaged", "reason": reason }),
        CopyState::Differs => json!({ "state": "differs" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::header::{CipherSuite, Extension};
    use crate::types::VolumeId;

    #[test]
    fn dates_match_known_values() {
        // Checked against `date -u -d @N`.
        for (secs, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_234_567_890, "2009-02-13T23:31:30Z"),
            (1_709_251_199, "2024-02-29T23:59:59Z"),
            (4_102_444_800, "2100-01-01T00:00:00Z"),
            (YEAR_10000_UNIX - 1, "9999-12-31T23:59:59Z"),
        ] {
            assert_eq!(rfc3339(secs).as_deref(), Some(text), "{secs}");
        }
        assert_eq!(rfc3339(YEAR_10000_UNIX), None);
        assert!(created_text(u64::MAX).contains("beyond the year 9999"));
    }

    #[test]
    fn sizes_use_binary_units_and_exact_bytes() {
        assert_eq!(size_text(512), "512 bytes");
        assert_eq!(size_text(4096), "4 KiB (4096 bytes)");
        assert_eq!(size_text(3 << 29), "1.50 GiB (1610612736 bytes)");
        assert_eq!(
            size_text(u64::MAX),
            "16.00 EiB (18446744073709551615 bytes)"
        );
    }

    #[test]
    fn metadata_is_escaped() {
        assert_eq!(escape("avd. 7 – Örebro".as_bytes()), "avd. 7 – Örebro");
        assert_eq!(
            escape(b"a\"b\\c\nd\x1b[2J\xff"),
            "a\\\"b\\\\c\\nd\\u{1b}[2J\\xff"
        );
        assert_eq!(escape("x\u{202e}y".as_bytes()), "x\\u{202e}y");
    }

    #[test]
    fn show_and_json_state_the_same_facts() {
        let header = DomainHeader {
            volume_id: VolumeId([0xab; 16]),
            block_size: 4096,
            cipher_suite: CipherSuite::Aes256XtsHmacSha256,
            key_mode: KeyMode::Ttp,
            container_size: 1 << 30,
            created_unix: 1_234_567_890,
            meta: b"ward=cardiology".to_vec(),
            signed_message: vec![1; 100],
            signature: vec![2; 64],
            manager_key: Vec::new(),
            extensions: vec![Extension {
                kind: 0x0007,
                data: vec![0; 3],
            }],
        };
        let copies = [
            CopyState::Valid,
            CopyState::Damaged("checksum mismatch".into()),
        ];
        let text = header.show(&copies);
        for expected in [
            "abababab-abab-abab-abab-abababababab",
            "1 GiB (1073741824 bytes)",
            "AES-256-XTS + HMAC-SHA256 (HKDF-SHA256 subkeys)",
            "2009-02-13T23:31:30Z",
            "\"ward=cardiology\" (15 bytes)",
            &format!("100 bytes, fingerprint {}", fingerprint(&[1; 100])),
            "manager key:    none",
            "0x0007 (3 bytes)",
            "header copy A:  valid",
            "header copy B:  damaged: checksum mismatch",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from\n{text}");
        }
        let json = header.to_json(&copies);
        assert_eq!(json["volume_id"], "abababab-abab-abab-abab-abababababab");
        assert_eq!(json["container_size"], 1u64 << 30);
        assert_eq!(json["key_mode"], "ttp");
        assert_eq!(json["created"], "2009-02-13T23:31:30Z");
        assert_eq!(json["meta"], "ward=cardiology");
        assert_eq!(json["meta_hex"], Value::Null);
        assert_eq!(json["signature"]["fingerprint"], fingerprint(&[2; 64]));
        assert_eq!(json["manager_key"], Value::Null);
        assert_eq!(json["extensions"][0]["kind"], 7);
        assert_eq!(json["retention"]["policy"], "keep-all");
        assert!(text.contains("retention:      keep-all"), "{text}");
        let kept = DomainHeader {
            extensions: vec![
                Retention {
                    keep_for: Some(86_400),
                    no_keep: vec!["pg_wal/*".into()],
                }
                .to_extension()
                .unwrap(),
            ],
            ..header
        };
        let text = kept.show(&copies);
        assert!(
            text.contains(
                "keep-for=1d (hidden versions older than that are freed); not kept: \"pg_wal/*\""
            ),
            "{text}"
        );
        let json = kept.to_json(&copies);
        assert_eq!(json["retention"]["keep_for_secs"], 86_400);
        assert_eq!(json["retention"]["keep_for"], "1d");
        assert_eq!(json["retention"]["no_keep"][0], "pg_wal/*");
        assert_eq!(json["copies"]["b"]["reason"], "checksum mismatch");
    }
}
