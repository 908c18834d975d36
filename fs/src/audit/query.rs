//! Reading the trail: filters, and the text, JSON and FHIR forms of an entry.

use serde_json::{Value, json};

use super::record::{AccessMode, AuditOp, AuditRecord};
use super::remote::{Kept, Shown};
use crate::types::VolumeId;

/// Which entries a listing shows.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// A path inside the volume (from its root): entries of it and of everything below.
    pub path: Option<String>,
    pub user: Option<UserMatch>,
    /// Only entries at or after this time (µs since the epoch).
    pub since_us: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserMatch {
    Uid(u32),
    Name(String),
}

impl UserMatch {
    /// A number is a uid, anything else a user name.
    pub fn parse(text: &str) -> Self {
        match text.parse() {
            Ok(uid) => UserMatch::Uid(uid),
            Err(_) => UserMatch::Name(text.to_string()),
        }
    }
}

impl Filter {
    pub fn matches(&self, r: &AuditRecord) -> bool {
        if let Some(since) = self.since_us
            && r.time_us < since
        {
            return false;
        }
        match &self.user {
            Some(UserMatch::Uid(uid)) if r.uid != *uid => return false,
            Some(UserMatch::Name(name)) if r.user != *name => return false,
            _ => {}
        }
        match &self.path {
            None => true,
            Some(p) => {
                let p = normalize(p);
                let under = |path: &str| {
                    p == "/"
                        || path == p
                        || path
                            .strip_prefix(p.as_str())
                            .is_some_and(|rest| rest.starts_with('/'))
                };
                under(&r.path)
                    || (r.op == AuditOp::Rename && r.detail.strip_prefix("to ").is_some_and(&under))
            }
        }
    }
}

/// `/a/b` for `a/b/`, `/a//b`, `/a/b`.
fn normalize(p: &str) -> String {
    let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

/// `ok`, or the errno's name (`ENOENT`; `errno 300` for one without a name).
pub fn result_name(result: i32) -> String {
    if result == 0 {
        return "ok".into();
    }
    match nix::errno::Errno::from_raw(result) {
        nix::errno::Errno::UnknownErrno => format!("errno {result}"),
        e => format!("{e:?}"),
    }
}

/// RFC 3339 in UTC with microseconds: `2026-01-02T03:04:05.123456Z`.
pub fn rfc3339(time_us: i64) -> String {
    let secs = time_us.div_euclid(1_000_000);
    let micros = time_us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// (year, month, day) of a day counted from 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Days from 1970-01-01 to a civil date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `--since`: an RFC 3339 time (`2026-01-02T03:04:05Z`, `…+01:00`, fractions allowed; a
/// bare date `2026-01-02` is its midnight UTC), or a duration back from `now_us` (`90s`,
/// `15m`, `2h`, `3d`, `1w`).
pub fn parse_since(text: &str, now_us: i64) -> Result<i64, String> {
    let text = text.trim();
    if let Some(duration) = parse_duration(text) {
        return Ok(now_us.saturating_sub(duration));
    }
    parse_rfc3339(text).ok_or_else(|| {
        format!(
            "'{text}' is neither an RFC 3339 time (2026-01-02T03:04:05Z) nor a duration (90s, 15m, 2h, 3d, 1w)"
        )
    })
}

/// Microseconds of `2h`, `15m`, … (None if `text` is not one).
fn parse_duration(text: &str) -> Option<i64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().ok()?;
    let secs: i64 = match unit {
        "s" | "sec" | "secs" => 1,
        "m" | "min" | "mins" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        "w" | "week" | "weeks" => 7 * 86_400,
        _ => return None,
    };
    n.checked_mul(secs)?.checked_mul(1_000_000)
}

fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if b.len() == 10 {
        return Some(days * 86_400 * 1_000_000);
    }
    if b.len() < 20 || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut at = 19;
    let mut micros = 0i64;
    if b[at] == b'.' {
        let start = at + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        if end == start {
            return None;
        }
        let digits = &text[start..end.min(start + 6)];
        micros = digits.parse::<i64>().ok()? * 10i64.pow(6 - digits.len() as u32);
        at = end;
    }
    let offset_secs = match &text[at..] {
        "Z" | "z" => 0,
        zone if zone.len() == 6 && matches!(zone.as_bytes()[0], b'+' | b'-') => {
            if zone.as_bytes()[3] != b':' {
                return None;
            }
            let h = num(at + 1..at + 3)?;
            let m = num(at + 4..at + 6)?;
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(secs * 1_000_000 + micros)
}

/// One flat JSON object (the `--json` line of an entry).
/// `source` says where it was kept (`volume`, or `ttp` with `ttp_seq` and `sender`, the
/// certificate name of the read-only host that sent it; `seq` is then 0: not in the
/// volume's chain).
pub fn json_object(shown: &Shown) -> Value {
    let r = shown.record;
    let mut object = json!({
        "seq": r.seq,
        "time": rfc3339(r.time_us),
        "uid": r.uid,
        "user": r.user,
        "gid": r.gid,
        "pid": r.pid,
        "process": r.process,
        "host": r.host,
        "inode": r.inode,
        "path": r.path,
        "op": r.op.name(),
        "mode": r.mode.name(),
        "result": result_name(r.result),
        "detail": r.detail,
        "source": shown.kept.name(),
    });
    if let Kept::Ttp { sequence, sender } = shown.kept {
        object["ttp_seq"] = json!(sequence);
        object["sender"] = json!(sender);
    }
    object
}

/// The host column of the table: the recorded host, and for an entry the TTP keeps, the
/// host that sent it when that is another name.
fn host_cell(shown: &Shown) -> String {
    match shown.kept {
        Kept::Volume => shown.record.host.clone(),
        Kept::Ttp { sender, .. } if sender == shown.record.host => format!("{sender} via ttp"),
        Kept::Ttp { sender, .. } => format!("{} ({sender} via ttp)", shown.record.host),
    }
}

/// The entry as a FHIR R4 `AuditEvent` resource (compare IHE ATNA): type and subtype, the
/// action (C/R/U/D/E), when, the outcome, who (user and process), where (the host), and
/// what (the path and inode).
/// An entry the TTP keeps has the TTP as its observer and its sequence number in its id.
pub fn fhir_audit_event(shown: &Shown, volume: &VolumeId) -> Value {
    let r = shown.record;
    const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
    let (type_code, type_display) = match r.op {
        AuditOp::IntegrityError => ("110113", "Security Alert"),
        AuditOp::Mount | AuditOp::Unmount => ("110100", "Application Activity"),
        _ => ("110110", "Patient Record"),
    };
    let mut subtype = vec![json!({
        "system": "urn:domfs:audit-op",
        "code": r.op.name(),
        "display": r.op.name(),
    })];
    match r.op {
        AuditOp::Mount => subtype.push(json!({
            "system": DCM, "code": "110120", "display": "Application Start"
        })),
        AuditOp::Unmount => subtype.push(json!({
            "system": DCM, "code": "110121", "display": "Application Stop"
        })),
        _ => {}
    }
    let action = match (r.op, r.mode) {
        (AuditOp::Open, AccessMode::Read | AccessMode::None) => "R",
        (AuditOp::Open, _) => "U",
        (AuditOp::Create | AuditOp::Link, _) => "C",
        (AuditOp::Setattr | AuditOp::Rename | AuditOp::Restore, _) => "U",
        (AuditOp::Hide | AuditOp::Purge, _) => "D",
        _ => "E",
    };
    // 0 success, 4 minor failure (a refused request), 8 serious failure (damage).
    let outcome = match (r.result, r.op) {
        (_, AuditOp::IntegrityError) => "8",
        (0, _) => "0",
        _ => "4",
    };
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": match shown.kept {
            Kept::Volume => format!("domfs-{}-{}", hex::encode(volume.0), r.seq),
            Kept::Ttp { sequence, .. } => format!("domfs-{}-ttp-{sequence}", hex::encode(volume.0)),
        },
        "type": { "system": DCM, "code": type_code, "display": type_display },
        "subtype": subtype,
        "action": action,
        "recorded": rfc3339(r.time_us),
        "outcome": outcome,
        "agent": [
            {
                "type": { "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                    "code": "IRCP", "display": "information recipient"
                }]},
                "who": {
                    "identifier": { "system": "urn:domfs:uid", "value": r.uid.to_string() },
                    "display": r.user,
                },
                "altId": format!("uid {} gid {}", r.uid, r.gid),
                "name": r.user,
                "requestor": true,
            },
            {
                "who": {
                    "identifier": { "system": "urn:domfs:pid", "value": r.pid.to_string() },
                    "display": r.process,
                },
                "name": r.process,
                "requestor": false,
                "network": { "address": r.host, "type": "1" },
            }
        ],
        "source": {
            "site": r.host,
            "observer": { "display": match shown.kept {
                Kept::Volume => format!("domfs volume {}", hex::encode(volume.0)),
                Kept::Ttp { sender, .. } => format!(
                    "domfs TTP for volume {} (sent by host {sender})",
                    hex::encode(volume.0)
                ),
            } },
            "type": [{
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "4", "display": "Application Server"
            }],
        },
        "entity": [{
            "what": {
                "identifier": { "system": "urn:domfs:path", "value": r.path },
                "display": r.path,
            },
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "2", "display": "System Object"
            },
            "name": r.path,
            "detail": [
                { "type": "inode", "valueString": r.inode.to_string() },
                { "type": "seq", "valueString": r.seq.to_string() },
            ],
        }],
    });
    if r.result != 0 || r.op == AuditOp::IntegrityError {
        event["outcomeDesc"] = json!(if r.detail.is_empty() {
            result_name(r.result)
        } else {
            format!("{}: {}", result_name(r.result), r.detail)
        });
    }
    if let Some(details) = event["entity"][0]["detail"].as_array_mut() {
        if !r.mode.name().is_empty() {
            details.push(json!({ "type": "mode", "valueString": r.mode.name() }));
        }
        if !r.detail.is_empty() {
            details.push(json!({ "type": "detail", "valueString": r.detail }));
        }
    }
    event
}

/// A text table of `entries` (already in the order to show), with a header line.
pub fn table(entries: &[Shown]) -> String {
    let mut rows = vec![[
        "TIME".to_string(),
        "USER".into(),
        "PROCESS".into(),
        "HOST".into(),
        "OP".into(),
        "MODE".into(),
        "RESULT".into(),
        "PATH".into(),
    ]];
    for shown in entries {
        let r = shown.record;
        let mut path = if r.path.is_empty() {
            format!("(inode {})", r.inode)
        } else {
            r.path.clone()
        };
        if !r.detail.is_empty() {
            path.push_str(&format!(" [{}]", r.detail));
        }
        rows.push([
            rfc3339(r.time_us),
            format!(
                "{}({})",
                if r.user.is_empty() { "?" } else { &r.user },
                r.uid
            ),
            format!("{}[{}]", r.process, r.pid),
            host_cell(shown),
            r.op.name(),
            r.mode.name().to_string(),
            result_name(r.result),
            path,
        ]);
    }
    // Paths, names and details may hold anything a host wrote (a read-only host writes
    // the entries the TTP keeps): a newline or an escape sequence must not forge a row.
    for row in rows.iter_mut() {
        for cell in row.iter_mut() {
            if cell.chars().any(char::is_control) {
                *cell = printable(cell);
            }
        }
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(w - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `text` with control characters written as escapes (`\n`, `\u{1b}`): what a name or a
/// host wrote cannot play tricks on a terminal or forge a table row.
pub fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &str, uid: u32, time_us: i64) -> AuditRecord {
        AuditRecord {
            path: path.into(),
            uid,
            user: format!("u{uid}"),
            time_us,
            ..AuditRecord::default()
        }
    }

    #[test]
    fn times_format_and_parse() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(1_767_323_045_123_456),
            "2026-01-02T03:04:05.123456Z"
        );
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999999Z");
        let now = 1_767_323_045_000_000;
        assert_eq!(
            parse_since("2026-01-02T03:04:05Z", 0).unwrap(),
            1_767_323_045_000_000
        );
        assert_eq!(
            parse_since("2026-01-02T04:04:05.5+01:00", 0).unwrap(),
            1_767_323_045_500_000
        );
        assert_eq!(parse_since("2026-01-02", 0).unwrap(), 1_767_312_000_000_000);
        assert_eq!(parse_since("2h", now).unwrap(), now - 7_200_000_000);
        assert_eq!(parse_since("90s", now).unwrap(), now - 90_000_000);
        assert_eq!(parse_since("1w", now).unwrap(), now - 604_800_000_000);
        for bad in [
            "",
            "2h30",
            "yesterday",
            "2026-13-01",
            "2026-01-02T03:04",
            "h",
        ] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
        for t in [0i64, 1_767_323_045_123_456, 951_782_400_000_000] {
            assert_eq!(parse_since(&rfc3339(t), 0).unwrap(), t);
        }
    }

    #[test]
    fn filters_select_by_path_user_and_time() {
        let entries = vec![
            rec("/a", 0, 10),
            rec("/a/b", 1000, 20),
            rec("/ab", 1000, 30),
            rec("/c", 65534, 40),
        ];
        let paths = |f: &Filter| -> Vec<String> {
            super::super::remote::merged_newest_first(&entries, &[], f)
                .iter()
                .map(|s| s.record.path.clone())
                .collect()
        };
        assert_eq!(paths(&Filter::default()), ["/c", "/ab", "/a/b", "/a"]);
        let by_path = Filter {
            path: Some("a/".into()),
            ..Filter::default()
        };
        assert_eq!(paths(&by_path), ["/a/b", "/a"]);
        let by_user = Filter {
            user: Some(UserMatch::parse("1000")),
            ..Filter::default()
        };
        assert_eq!(paths(&by_user), ["/ab", "/a/b"]);
        let by_name = Filter {
            user: Some(UserMatch::parse("u65534")),
            ..Filter::default()
        };
        assert_eq!(paths(&by_name), ["/c"]);
        let since = Filter {
            since_us: Some(20),
            ..Filter::default()
        };
        assert_eq!(paths(&since), ["/c", "/ab", "/a/b"]);
    }

    #[test]
    fn results_are_named() {
        assert_eq!(result_name(0), "ok");
        assert_eq!(result_name(2), "ENOENT");
        assert_eq!(result_name(5), "EIO");
        assert_eq!(result_name(100_000), "errno 100000");
    }

    #[test]
    fn json_and_fhir_carry_the_fields() {
        let r = AuditRecord {
            seq: 3,
            op: AuditOp::Open,
            mode: AccessMode::Read,
            host: "ward".into(),
            process: "cat".into(),
            ..rec("/p", 65534, 1_767_323_045_000_000)
        };
        let shown = Shown {
            record: &r,
            kept: Kept::Volume,
        };
        let j = json_object(&shown);
        for field in [
            "time", "uid", "user", "gid", "pid", "process", "host", "inode", "path", "op", "mode",
            "result",
        ] {
            assert!(j.get(field).is_some(), "{field}");
        }
        assert_eq!(j["mode"], "r");
        assert_eq!(j["result"], "ok");
        assert_eq!(j["source"], "volume");
        let f = fhir_audit_event(&shown, &VolumeId([1; 16]));
        assert_eq!(f["resourceType"], "AuditEvent");
        assert_eq!(f["action"], "R");
        assert_eq!(f["outcome"], "0");
        assert_eq!(f["source"]["site"], "ward");
        assert_eq!(f["entity"][0]["what"]["display"], "/p");
        assert_eq!(f["agent"][0]["who"]["identifier"]["value"], "65534");
        let bad = AuditRecord {
            op: AuditOp::IntegrityError,
            result: 5,
            ..r
        };
        let kept = Kept::Ttp {
            sequence: 7,
            sender: "ward-b",
        };
        let shown = Shown { record: &bad, kept };
        let f = fhir_audit_event(&shown, &VolumeId([1; 16]));
        assert_eq!(f["outcome"], "8");
        assert_eq!(f["type"]["code"], "110113");
        assert!(f["id"].as_str().unwrap().ends_with("-ttp-7"));
        let j = json_object(&shown);
        assert_eq!(j["source"], "ttp");
        assert_eq!(j["ttp_seq"], 7);
        assert_eq!(j["sender"], "ward-b");
        assert!(table(&[shown]).contains("ward (ward-b via ttp)"));
        let forged = AuditRecord {
            path: "/p\n2026-01-01T00:00:00.000000Z  root(0)  evil\u{1b}[2J".into(),
            ..bad
        };
        let rows = table(&[Shown {
            record: &forged,
            kept,
        }]);
        assert_eq!(rows.lines().count(), 2, "{rows}");
        assert!(
            rows.contains("/p\\n2026") && rows.contains("\\u{1b}[2J"),
            "{rows}"
        );
    }
}
