//! The CLI's side of the control socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::protocol::{Answer, Request};
use super::socket_path;
use crate::fuse::mountinfo::{self, FSTYPE};

/// The longest answer header accepted: it may carry a whole listing (the daemon is
/// trusted; the bound only stops a runaway).
const MAX_ANSWER_LINE: u64 = 256 << 20;

/// A connection to the daemon serving `mountpoint`.
pub struct Connection {
    reader: BufReader<UnixStream>,
}

/// Whether `path` is a live domfs mount (so commands go to its daemon).
pub fn is_domfs_mount(path: &Path) -> bool {
    mountinfo::resolve(path)
        .ok()
        .and_then(|mp| mountinfo::find(&mp).ok().flatten())
        .is_some_and(|entry| entry.fstype == FSTYPE)
}

impl Connection {
    pub fn open(mountpoint: &Path) -> Result<Connection> {
        let mp = mountinfo::resolve(mountpoint)
            .with_context(|| format!("cannot find {}", mountpoint.display()))?;
        match mountinfo::find(&mp)? {
            Some(entry) if entry.fstype == FSTYPE => {}
            _ => bail!("{} is not a domfs mount", mp.display()),
        }
        let socket = socket_path(&mp);
        let stream = UnixStream::connect(&socket).with_context(|| {
            format!(
                "cannot reach the daemon of {} at {} (only root or the mount's operator group may)",
                mp.display(),
                socket.display()
            )
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(300)))?;
        Ok(Connection {
            reader: BufReader::new(stream),
        })
    }

    /// Sends `request`; returns the answer's header (failures are `Err` with the
    /// daemon's message and exit code).
    pub fn call(&mut self, request: &Request) -> Result<Answer> {
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        self.reader.get_mut().write_all(&line)?;
        let mut header = Vec::new();
        (&mut self.reader)
            .take(MAX_ANSWER_LINE)
            .read_until(b'\n', &mut header)
            .context("the daemon did not answer")?;
        if header.is_empty() {
            bail!("the daemon closed the connection without an answer");
        }
        let answer: Answer =
            serde_json::from_slice(&header).context("the daemon's answer is malformed")?;
        if !answer.ok {
            return Err(Failed {
                message: answer.error.unwrap_or_else(|| "failed".into()),
                code: answer.code.unwrap_or(1),
            }
            .into());
        }
        Ok(answer)
    }

    /// After an answer announcing `len` bytes: copies them to `out`.
    pub fn copy_bytes(&mut self, len: u64, out: &mut dyn Write) -> Result<()> {
        let copied = std::io::copy(&mut (&mut self.reader).take(len), out)?;
        if copied != len {
            bail!("the daemon sent {copied} of {len} bytes");
        }
        Ok(())
    }
}

/// The daemon refused or failed; `code` is the exit code to end with.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failed {
    pub message: String,
    pub code: u8,
}
