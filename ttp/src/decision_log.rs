//! The decision log: one line per request the TTP decides, granted or refused, appended to
//! the log file (default `DIR/ttp.log`) and echoed to stderr. Keys never appear in it.
//!
//! ```text
//! 2026-11-05T09:12:44Z GRANTED op=get-domain-key host=ward-db-1 domain=00112233445566778899aabbccddeeff mode=rw version=3 reason="granted: lease 6f1c...a9 for 300 s"
//! 2026-11-05T09:12:51Z REFUSED op=get-domain-key host=ward-db-2 domain=00112233445566778899aabbccddeeff mode=ro version=2 code=PERMISSION_DENIED reason="access list version 2 is older than the registered version 3"
//! ```
//!
//! Fields are `key=value`, in this order; an unknown field is `-`. `op` is one of
//! `begin-enrollment`, `enroll`, `host-status`, `register-domain`, `update-access-list`,
//! `get-domain-key`, `renew-lease`, `release-lease`, `checkpoint`, `append-audit`
//! (one line per call, not per entry), `read-audit`, and for operator actions `admin-*`.
//! `host` is the caller's certificate name (for admin actions the host acted on).
//! `reason` is quoted; `"` and `\` are escaped with `\`, control characters as `\xNN`.
//! Log lines are not synced (the release path stays free of fsync); the registry is the
//! durable record of state.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use domfs_proto::acl::{Access, DomainId};

use crate::error::{Error, Result};
use crate::refusal::Refusal;

pub struct DecisionLog {
    file: Option<Mutex<File>>,
    echo: bool,
}

/// What a decision was about; filled in as the request is understood.
#[derive(Clone, Debug)]
pub struct Subject {
    pub op: &'static str,
    pub host: String,
    pub domain: Option<DomainId>,
    pub mode: Option<Access>,
    pub version: Option<u64>,
}

impl Subject {
    pub fn new(op: &'static str, host: &str) -> Subject {
        Subject {
            op,
            host: host.to_string(),
            domain: None,
            mode: None,
            version: None,
        }
    }
}

impl DecisionLog {
    /// Appends to `path` (created with mode 0600); `echo` also writes each line to stderr.
    pub fn open(path: &Path, echo: bool) -> Result<DecisionLog> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(DecisionLog {
            file: Some(Mutex::new(file)),
            echo,
        })
    }

    /// Only stderr (or nothing): for operator commands without a server.
    pub fn stderr_only(echo: bool) -> DecisionLog {
        DecisionLog { file: None, echo }
    }

    pub fn granted(&self, subject: &Subject, detail: &str) {
        self.write(&line(subject, "GRANTED", None, detail));
    }

    pub fn refused(&self, subject: &Subject, refusal: &Refusal) {
        self.write(&line(
            subject,
            "REFUSED",
            Some(refusal.code_name()),
            &refusal.reason,
        ));
    }

    /// Logs `result` and passes it on.
    pub fn record<T>(
        &self,
        subject: &Subject,
        result: std::result::Result<(T, String), Refusal>,
    ) -> std::result::Result<T, Refusal> {
        match result {
            Ok((value, detail)) => {
                self.granted(subject, &detail);
                Ok(value)
            }
            Err(refusal) => {
                self.refused(subject, &refusal);
                Err(refusal)
            }
        }
    }

    fn write(&self, line: &str) {
        if let Some(file) = &self.file {
            let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = file.write_all(line.as_bytes()) {
                tracing::error!("cannot write the decision log: {e}");
            }
        }
        if self.echo {
            eprint!("{line}");
        }
    }
}

pub(crate) fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "-".into())
}

fn line(subject: &Subject, outcome: &str, code: Option<&str>, reason: &str) -> String {
    let mut out = format!(
        "{} {outcome} op={} host={} domain={} mode={} version={}",
        now_rfc3339(),
        subject.op,
        field(&subject.host),
        subject
            .domain
            .map(hex::encode)
            .unwrap_or_else(|| "-".into()),
        subject.mode.map(|m| m.as_str()).unwrap_or("-"),
        subject
            .version
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into()),
    );
    if let Some(code) = code {
        out.push_str(" code=");
        out.push_str(code);
    }
    out.push_str(" reason=\"");
    escape_into(&mut out, reason);
    out.push_str("\"\n");
    out
}

/// A bare field: the certificate name is already a host name, but stay safe.
fn field(value: &str) -> String {
    if value == "-" || (!value.is_empty() && domfs_proto::acl::valid_host_name(value)) {
        value.to_string()
    } else {
        let mut out = String::from("\"");
        escape_into(&mut out, value);
        out.push('"');
        out
    }
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_line_and_escaped() {
        let mut subject = Subject::new("get-domain-key", "db1");
        subject.domain = Some([0xab; 16]);
        subject.mode = Some(Access::ReadWrite);
        subject.version = Some(3);
        let l = line(
            &subject,
            "REFUSED",
            Some("PERMISSION_DENIED"),
            "bad \"x\"\ny\\",
        );
        assert!(l.ends_with('\n'));
        assert_eq!(l.matches('\n').count(), 1);
        assert!(l.contains(
            " REFUSED op=get-domain-key host=db1 domain=abababababababababababababababab \
             mode=rw version=3 code=PERMISSION_DENIED reason=\"bad \\\"x\\\"\\x0ay\\\\\"\n"
        ));
        let anon = line(&Subject::new("enroll", "a b\n"), "GRANTED", None, "ok");
        assert!(anon.contains("host=\"a b\\x0a\" domain=- mode=- version=- reason=\"ok\""));
    }
}
