//! The retention policy of hidden versions: a header extension (critical kind
//! [`RETENTION_EXTENSION`], so a build that does not know it refuses the volume rather
//! than ignore the policy), set by `domfs create` and bound to the volume by the binding
//! hash like every other header field except the signed access list.
//!
//! ## Encoding (the extension's data; integers little-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | encoding version (1) |
//! | 1 | 1 | policy: 1 = keep-all, 2 = keep-for |
//! | 2 | 8 | keep-for, `u64` seconds (> 0); 0 with keep-all |
//! | 10 | 2 | no-keep pattern count n, `u16` ≤ [`MAX_PATTERNS`] |
//! | 12 | n × (2 + l) | each pattern: `u16` length l (1 ..= [`MAX_PATTERN_LEN`]), then l bytes of UTF-8 |
//!
//! A volume without the extension keeps everything (keep-all, no patterns).
//!
//! ## No-keep patterns
//!
//! A pattern is matched against the path of a removed or truncated file, relative to the
//! volume's root (`pgdata/pg_wal/000000010000000000000001`). Components are separated by
//! `/`; in a component `*` matches any run of bytes and `?` one byte (never a `/`); a
//! component that is exactly `**` matches any number of whole components, none included.
//! A pattern that starts with `/` is anchored at the root; any other pattern matches at
//! any depth (as if it began with `**/`): `pg_wal/*` matches `pg_wal/0001` and
//! `pgdata/pg_wal/0001`, but not `pgdata/pg_wal/archive_status/0001.ready` (write
//! `pg_wal/**` for that); `*-journal` matches an SQLite journal in any directory. There
//! are no character classes and no escapes.

use super::header::{DomainHeader, Extension};
use super::reader::Reader;
use crate::{Error, Result};

/// The extension kind of the retention policy (critical).
pub const RETENTION_EXTENSION: u16 = 0x8001;
/// At most this many no-keep patterns.
pub const MAX_PATTERNS: usize = 64;
/// A pattern is at most this many bytes.
pub const MAX_PATTERN_LEN: usize = 1024;
/// keep-for is at most 1000 years.
pub const MAX_KEEP_FOR_SECS: u64 = 1000 * 365 * 86_400;
const ENCODING_VERSION: u8 = 1;
const POLICY_KEEP_ALL: u8 = 1;
const POLICY_KEEP_FOR: u8 = 2;

/// How long hidden versions are kept, and which paths are never kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// `None`: keep-all (nothing is ever freed but by the domain manager's purge).
    /// `Some(s)`: versions hidden more than `s` seconds ago are freed.
    pub keep_for: Option<u64>,
    /// Paths freed at once instead of kept (scratch files, not records).
    pub no_keep: Vec<String>,
}

impl Retention {
    /// The default: keep everything.
    pub fn keep_all() -> Self {
        Self::default()
    }

    /// The policy of a header (keep-all when it has none).
    pub fn from_header(header: &DomainHeader) -> Result<Self> {
        match header
            .extensions
            .iter()
            .find(|e| e.kind == RETENTION_EXTENSION)
        {
            Some(ext) => Self::decode(&ext.data).map_err(Error::CorruptHeader),
            None => Ok(Self::keep_all()),
        }
    }

    /// The header extension carrying this policy.
    pub fn to_extension(&self) -> Result<Extension> {
        Ok(Extension {
            kind: RETENTION_EXTENSION,
            data: self.encode()?,
        })
    }

    pub fn encode(&self) -> Result<Vec<u8>> {
        self.check().map_err(Error::Invalid)?;
        let mut out =
            Vec::with_capacity(12 + self.no_keep.iter().map(|p| 2 + p.len()).sum::<usize>());
        out.push(ENCODING_VERSION);
        match self.keep_for {
            None => {
                out.push(POLICY_KEEP_ALL);
                out.extend_from_slice(&0u64.to_le_bytes());
            }
            Some(secs) => {
                out.push(POLICY_KEEP_FOR);
                out.extend_from_slice(&secs.to_le_bytes());
            }
        }
        // `check` bounded the count and each length.
        out.extend_from_slice(&(self.no_keep.len() as u16).to_le_bytes());
        for p in &self.no_keep {
            out.extend_from_slice(&(p.len() as u16).to_le_bytes());
            out.extend_from_slice(p.as_bytes());
        }
        if out.len() > super::header::MAX_EXTENSION_LEN {
            return Err(Error::Invalid(format!(
                "the retention policy takes {} bytes, at most {} fit in the header",
                out.len(),
                super::header::MAX_EXTENSION_LEN
            )));
        }
        Ok(out)
    }

    /// Parses the extension's data; the reason when it is malformed.
    pub fn decode(data: &[u8]) -> std::result::Result<Self, String> {
        let mut r = Reader::new(data);
        let e = |what: &str| {
            let what = what.to_string();
            move |err| format!("retention policy {what}: {err}")
        };
        let version = r.u8().map_err(e("version"))?;
        if version != ENCODING_VERSION {
            return Err(format!("retention policy encoding {version} is unknown"));
        }
        let policy = r.u8().map_err(e("policy"))?;
        let secs = r.u64().map_err(e("keep-for"))?;
        let keep_for = match (policy, secs) {
            (POLICY_KEEP_ALL, 0) => None,
            (POLICY_KEEP_FOR, s) if s > 0 => Some(s),
            _ => return Err(format!("retention policy {policy} with {secs} seconds")),
        };
        let count = r.u16().map_err(e("pattern count"))?;
        let mut no_keep = Vec::with_capacity(usize::from(count).min(MAX_PATTERNS));
        for _ in 0..count {
            let len = r.u16().map_err(e("pattern length"))?;
            let bytes = r.bytes(usize::from(len)).map_err(e("pattern"))?;
            let text = std::str::from_utf8(bytes)
                .map_err(|_| "a no-keep pattern is not UTF-8".to_string())?;
            no_keep.push(text.to_string());
        }
        if !r.is_empty() {
            return Err(format!(
                "{} bytes after the retention policy",
                r.remaining()
            ));
        }
        let policy = Retention { keep_for, no_keep };
        policy.check()?;
        Ok(policy)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if let Some(secs) = self.keep_for
            && (secs == 0 || secs > MAX_KEEP_FOR_SECS)
        {
            return Err(format!(
                "keep-for must be between 1 second and 1000 years, not {secs} seconds"
            ));
        }
        if self.no_keep.len() > MAX_PATTERNS {
            return Err(format!(
                "{} no-keep patterns, at most {MAX_PATTERNS} allowed",
                self.no_keep.len()
            ));
        }
        for (i, p) in self.no_keep.iter().enumerate() {
            validate_pattern(p)?;
            if self.no_keep[..i].contains(p) {
                return Err(format!("no-keep pattern {p:?} is given twice"));
            }
        }
        Ok(())
    }

    /// Whether the content of `path` (relative to the root) is kept when removed.
    pub fn keeps(&self, path: &[u8]) -> bool {
        !self.no_keep.iter().any(|p| glob_matches(p, path))
    }

    /// `keep-all` or `keep-for=30d`, as `domfs create --retention` takes it.
    pub fn policy_text(&self) -> String {
        match self.keep_for {
            None => "keep-all".to_string(),
            Some(secs) => format!("keep-for={}", format_duration(secs)),
        }
    }

    /// Parses `keep-all` or `keep-for=DURATION`.
    pub fn parse_policy(text: &str) -> std::result::Result<Option<u64>, String> {
        match text {
            "keep-all" => Ok(None),
            _ => match text.strip_prefix("keep-for=") {
                Some(d) => parse_duration(d).map(Some),
                None => Err(format!(
                    "{text:?}: write keep-all or keep-for=DURATION (e.g. keep-for=30d)"
                )),
            },
        }
    }
}

/// `30d`, `12h`, `90m`, `45s`, `2w` → seconds.
pub fn parse_duration(text: &str) -> std::result::Result<u64, String> {
    let bad = || {
        format!(
            "{text:?} is not a duration: write a whole number and a unit, s, m, h, d or w (e.g. 30d)"
        )
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    let secs = n
        .checked_mul(unit_secs)
        .filter(|&s| s <= MAX_KEEP_FOR_SECS)
        .ok_or_else(|| format!("{text:?} is longer than 1000 years"))?;
    if secs == 0 {
        return Err(format!("{text:?}: the duration must be more than zero"));
    }
    Ok(secs)
}

/// Seconds in the largest unit that divides them: `2592000` → `30d`.
pub fn format_duration(secs: u64) -> String {
    for (unit, name) in [(7 * 86_400, "w"), (86_400, "d"), (3600, "h"), (60, "m")] {
        if secs >= unit && secs.is_multiple_of(unit) {
            return format!("{}{name}", secs / unit);
        }
    }
    format!("{secs}s")
}

/// Whether `pattern` is a usable no-keep pattern (see the module doc); the reason if not.
pub fn validate_pattern(pattern: &str) -> std::result::Result<(), String> {
    if pattern.is_empty() || pattern.len() > MAX_PATTERN_LEN {
        return Err(format!(
            "a no-keep pattern has 1 to {MAX_PATTERN_LEN} bytes, not {}",
            pattern.len()
        ));
    }
    if pattern.contains('\0') {
        return Err("a no-keep pattern cannot contain a NUL byte".into());
    }
    let body = pattern.strip_prefix('/').unwrap_or(pattern);
    for component in body.split('/') {
        if component.is_empty() || component == "." || component == ".." {
            return Err(format!(
                "no-keep pattern {pattern:?}: empty, `.` and `..` components are not allowed"
            ));
        }
    }
    Ok(())
}

/// Whether `path` (relative to the root, components separated by `/`) matches `pattern`
/// (see the module doc).
pub fn glob_matches(pattern: &str, path: &[u8]) -> bool {
    let (anchored, body) = match pattern.strip_prefix('/') {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    let mut pat: Vec<&[u8]> = Vec::new();
    if !anchored {
        pat.push(b"**");
    }
    pat.extend(body.split('/').map(str::as_bytes));
    let comps: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    // match_from[j]: whether pat[i..] matches comps[j..], computed for i from the end.
    let n = comps.len();
    let mut next = vec![false; n + 1];
    next[n] = true;
    for p in pat.iter().rev() {
        let mut cur = vec![false; n + 1];
        for j in (0..=n).rev() {
            cur[j] = if *p == b"**" {
                next[j] || (j < n && cur[j + 1])
            } else {
                j < n && next[j + 1] && component_matches(p, comps[j])
            };
        }
        next = cur;
    }
    next[0]
}

/// `*` and `?` within one component.
fn component_matches(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_documented() {
        let yes = [
            ("pg_wal/*", "pgdata/pg_wal/000000010000000000000001"),
            ("pg_wal/*", "pg_wal/0001"),
            ("*-journal", "app/db.sqlite-journal"),
            ("*-journal", "db-journal"),
            ("pgsql_tmp*", "pgdata/base/pgsql_tmp/pgsql_tmp1234.0"),
            ("pgsql_tmp*", "pgdata/base/pgsql_tmp"),
            ("/scratch/**", "scratch/a/b/c"),
            ("/scratch/**", "scratch"),
            ("a/**/z", "a/z"),
            ("a/**/z", "x/a/b/c/z"),
            ("?.tmp", "d/x.tmp"),
            ("*", "anything/at/all"),
            ("pg_wal/**", "pgdata/pg_wal/archive_status/0001.ready"),
        ];
        for (p, path) in yes {
            assert!(glob_matches(p, path.as_bytes()), "{p} should match {path}");
        }
        let no = [
            ("pg_wal/*", "pgdata/pg_wal/archive_status/0001.ready"),
            ("pg_wal/*", "pgdata/pg_wal"),
            ("/pg_wal/*", "pgdata/pg_wal/0001"),
            ("*-journal", "db-journal/x"),
            ("?.tmp", "xy.tmp"),
            ("records/*.pdf", "records/a/b.pdf"),
            ("a/**/z", "a/zz"),
        ];
        for (p, path) in no {
            assert!(
                !glob_matches(p, path.as_bytes()),
                "{p} should not match {path}"
            );
        }
        // Many stars stay cheap.
        let long = "a".repeat(3000);
        assert!(!glob_matches("**/**/**/**/*a*a*a*a*a*b", long.as_bytes()));
    }

    #[test]
    fn policies_round_trip_and_bad_ones_are_refused() {
        let p = Retention {
            keep_for: Some(30 * 86_400),
            no_keep: vec!["*-journal".into(), "pg_wal/*".into()],
        };
        let data = p.encode().unwrap();
        assert_eq!(Retention::decode(&data).unwrap(), p);
        assert_eq!(p.policy_text(), "keep-for=30d");
        assert!(!p.keeps(b"x/db-journal"));
        assert!(p.keeps(b"x/db"));
        let all = Retention::keep_all();
        assert_eq!(Retention::decode(&all.encode().unwrap()).unwrap(), all);
        for bad in [
            Retention {
                keep_for: Some(0),
                no_keep: vec![],
            },
            Retention {
                keep_for: None,
                no_keep: vec!["a//b".into()],
            },
            Retention {
                keep_for: None,
                no_keep: vec!["x".into(), "x".into()],
            },
            Retention {
                keep_for: None,
                no_keep: (0..65).map(|i| format!("p{i}")).collect(),
            },
        ] {
            assert!(bad.encode().is_err(), "{bad:?}");
        }
        // Truncated and padded data, unknown versions and policies.
        assert!(Retention::decode(&data[..data.len() - 1]).is_err());
        assert!(Retention::decode(&[data.clone(), vec![0]].concat()).is_err());
        let mut v2 = data.clone();
        v2[0] = 2;
        assert!(Retention::decode(&v2).is_err());
        let mut policy3 = data;
        policy3[1] = 3;
        assert!(Retention::decode(&policy3).is_err());
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("30d"), Ok(30 * 86_400));
        assert_eq!(parse_duration("12h"), Ok(12 * 3600));
        assert_eq!(parse_duration("90m"), Ok(5400));
        assert_eq!(parse_duration("2w"), Ok(14 * 86_400));
        for bad in [
            "",
            "d",
            "30",
            "0d",
            "-1d",
            "1.5d",
            "30 d",
            "30y",
            "99999999999999w",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(30 * 86_400), "30d");
        assert_eq!(format_duration(5400), "90m");
        assert_eq!(format_duration(14 * 86_400), "2w");
        assert_eq!(format_duration(61), "61s");
        assert_eq!(Retention::parse_policy("keep-all"), Ok(None));
        assert_eq!(Retention::parse_policy("keep-for=1h"), Ok(Some(3600)));
        assert!(Retention::parse_policy("keep-some").is_err());
    }
}
