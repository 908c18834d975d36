//! The agent's log: every line to stderr and, for `serve`, appended to a file (0600).
//!
//! Line format (no colours, UTC):
//!
//! ```text
//! 2026-11-29T09:13:00.123456Z  INFO key granted domain=00112233445566778899aabbccddeeff mode="rw" asked="MODE_BEST" source="ttp" lease=… uid=0 pid=4242 process="domfs" mount_point="/mnt/ward"
//! 2026-11-29T09:13:05.000000Z  WARN socket access refused: not root, not the agent's user, not in the agent's group rpc="Status" uid=65534 gid=65534 pid=4250 process="domfs-agent"
//! ```
//!
//! The message comes first, then `key=value` fields; strings from callers are quoted.
//! Keys are never logged.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

use crate::error::AgentError;

fn filter(verbosity: u8) -> EnvFilter {
    let level = match verbosity {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    // Only this crate's own lines at debug and above; dependencies stay at warn.
    EnvFilter::new(format!("warn,domfs_agent={level}"))
}

/// Logs to stderr and, with `file`, appends to it too.
pub fn init(file: Option<&Path>, verbosity: u8) -> Result<(), AgentError> {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(verbosity))
        .with_ansi(false)
        .with_target(false);
    let result = match file {
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| AgentError::io("cannot open the log file", path, e))?;
            builder
                .with_writer(std::io::stderr.and(Mutex::new(file)))
                .try_init()
        }
        None => builder.with_writer(std::io::stderr).try_init(),
    };
    result.map_err(|e| AgentError::Config(format!("cannot set up logging: {e}")))
}
