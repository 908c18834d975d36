//! The agent's Unix socket: bound with the configured mode and group, replacing a socket
//! file a dead agent left behind but never one a live agent serves on.
//!
//! The mode is set right after bind(2); a client that connects in between still passes
//! the peer-credential check of every RPC, which is the real gate (the mode only keeps
//! others from connecting at all).

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;

use tokio::net::UnixListener;

use crate::error::AgentError;

/// Binds `path`: creates its directory (0755) if missing, removes a stale socket there,
/// sets `mode` and, with `group`, the socket's group.
pub fn bind(path: &Path, mode: u32, group: Option<u32>) -> Result<UnixListener, AgentError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| AgentError::io("cannot create the socket's directory", parent, e))?;
    }
    remove_stale(path)?;
    let listener =
        UnixListener::bind(path).map_err(|e| AgentError::io("cannot bind the socket", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| AgentError::io("cannot set the mode of", path, e))?;
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|e| {
            AgentError::io("cannot set the group of", path, std::io::Error::from(e))
        })?;
    }
    Ok(listener)
}

/// Removes a socket file nothing listens on; refuses a live socket or any other file.
fn remove_stale(path: &Path) -> Result<(), AgentError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(AgentError::io("cannot examine", path, e)),
    };
    if !meta.file_type().is_socket() {
        return Err(AgentError::NotASocket(path.to_path_buf()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(AgentError::SocketInUse(path.to_path_buf())),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused || e.kind() == ErrorKind::NotFound => {
            tracing::info!(socket = %path.display(), "removing a stale socket (nothing listens on it)");
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(e) => Err(AgentError::io("cannot remove the stale socket", path, e)),
            }
        }
        Err(e) => Err(AgentError::io("cannot probe the existing socket", path, e)),
    }
}

/// Parses an octal mode such as `0600` or `660`.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!("{text} is not an octal file mode (such as 0600)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replaces_a_stale_socket_but_not_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/agent.sock");

        // A live socket is left alone.
        let live = bind(&path, 0o600, None).unwrap();
        let error = bind(&path, 0o600, None).unwrap_err();
        assert!(matches!(error, AgentError::SocketInUse(_)), "{error}");
        assert!(
            std::os::unix::net::UnixStream::connect(&path).is_ok(),
            "the live socket must still accept connections"
        );

        // Once its listener is gone the file is stale and is replaced.
        drop(live);
        assert!(path.exists());
        let again = bind(&path, 0o640, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        drop(again);

        // Anything else at the path is refused.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"not a socket").unwrap();
        let error = bind(&path, 0o600, None).unwrap_err();
        assert!(matches!(error, AgentError::NotASocket(_)), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0o666"), Ok(0o666));
        assert!(parse_mode("0800").is_err());
        assert!(parse_mode("7777").is_err());
        assert!(parse_mode("").is_err());
    }
}
