//! Requests and answers on the control socket.

use serde::{Deserialize, Serialize};

/// The longest request or header line accepted.
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Hidden versions under `prefix` (or all), newest first.
    HiddenList { prefix: Option<String> },
    /// The bytes of one hidden version, sent after the header.
    HiddenShow { path: String, version: u32 },
    /// Brings a hidden version back at its path or at `to`.
    HiddenRestore {
        path: String,
        version: u32,
        to: Option<String>,
    },
    /// Frees a hidden version for good: the domain manager's signature over
    /// [`purge_message`] authorises it.
    HiddenPurge {
        path: String,
        version: u32,
        /// The version's volume-wide id, which the signature names: ids are never
        /// reused, so a signature purges that one version once and no other.
        id: u64,
        /// Hex Ed25519 signature by the domain's manager key.
        signature: String,
        /// Unix seconds the request was signed at (refused when far from now).
        signed_at: u64,
    },
    /// Audit entries, newest first, as JSON objects.
    AuditQuery {
        path: Option<String>,
        uid: Option<u32>,
        since_unix: Option<u64>,
        limit: Option<u32>,
    },
    /// Checks the whole audit chain.
    AuditVerify {},
}

/// What a manager signs to purge hidden version `id` (version `version` of `path` when
/// signed) of a domain.
pub fn purge_message(
    volume_id: &[u8; 16],
    path: &str,
    version: u32,
    id: u64,
    signed_at: u64,
) -> Vec<u8> {
    let mut m = b"domfs purge hidden version v2\0".to_vec();
    m.extend_from_slice(volume_id);
    m.extend_from_slice(&signed_at.to_le_bytes());
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(&version.to_le_bytes());
    m.extend_from_slice(path.as_bytes());
    m
}

/// The header line of an answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Answer {
    pub ok: bool,
    /// On failure: the message for the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// On failure: the `domfs` exit code to end with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
    /// Structured result (a list of versions, audit entries, a verification report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Raw bytes following the header line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub len: Option<u64>,
}

impl Answer {
    pub fn value(result: serde_json::Value) -> Self {
        Self {
            ok: true,
            error: None,
            code: None,
            result: Some(result),
            len: None,
        }
    }

    pub fn bytes(len: u64) -> Self {
        Self {
            ok: true,
            error: None,
            code: None,
            result: None,
            len: Some(len),
        }
    }

    pub fn failed(error: impl Into<String>, code: u8) -> Self {
        Self {
            ok: false,
            error: Some(error.into()),
            code: Some(code),
            result: None,
            len: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_unknown_fields_are_refused() {
        let r = Request::HiddenRestore {
            path: "ward/a.txt".into(),
            version: 2,
            to: None,
        };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), r);
        assert!(serde_json::from_str::<Request>(r#"{"op":"audit-verify","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"format-disk"}"#).is_err());
    }
}
