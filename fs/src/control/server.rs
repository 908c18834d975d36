//! The daemon's side of the control socket: accept, check the caller, hand the request to
//! the mount's handler, write its answer. One thread accepts; each connection gets a
//! short-lived thread (an operator's command, not a hot path).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::unistd::Gid;

use super::peer::Peer;
use super::protocol::{Answer, MAX_LINE, Request};

/// What a mount does with a request. `out` is the connection: write the answer with
/// [`write_answer`] (and the raw bytes after it, if the answer announced any).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request, peer: &Peer, out: &mut dyn Write) -> std::io::Result<()>;
}

/// A bound control socket; removed when dropped.
pub struct ControlServer {
    path: PathBuf,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` (replacing a stale socket nobody listens on), lets root and
/// `operator_group` connect, and serves `handler` on a background thread.
pub fn spawn(
    path: &Path,
    operator_group: Option<Gid>,
    handler: Arc<dyn Handler>,
) -> std::io::Result<ControlServer> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by another mount daemon", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    // The peer check below is the real gate; the mode keeps everyone else from even
    // connecting.
    let mode = if operator_group.is_some() {
        0o660
    } else {
        0o600
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(group) = operator_group {
        nix::unistd::chown(path, None, Some(group)).map_err(std::io::Error::from)?;
    }
    std::thread::Builder::new()
        .name("domfs-control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let handler = handler.clone();
                let _ = std::thread::Builder::new()
                    .name("domfs-control-conn".into())
                    .spawn(move || serve_connection(stream, operator_group, handler.as_ref()));
            }
        })?;
    Ok(ControlServer {
        path: path.to_path_buf(),
    })
}

fn serve_connection(stream: UnixStream, operator_group: Option<Gid>, handler: &dyn Handler) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut out = match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    };
    let peer = match Peer::of(&stream) {
        Ok(p) => p,
        Err(e) => {
            let _ = write_answer(
                &mut out,
                &Answer::failed(format!("cannot identify the caller: {e}"), 1),
            );
            return;
        }
    };
    if !peer.allowed(operator_group) {
        tracing::warn!(
            "control socket: refused uid {} pid {} ({}): not root and not in the operator group",
            peer.uid,
            peer.pid,
            peer.process()
        );
        let _ = write_answer(
            &mut out,
            &Answer::failed(
                "only root or the mount's operator group may use this (domfs mount --operator-group GROUP)",
                8,
            ),
        );
        return;
    }
    let mut line = Vec::new();
    let read = BufReader::new(stream.take(MAX_LINE as u64 + 1)).read_until(b'\n', &mut line);
    let request = match read {
        Ok(_) if line.len() > MAX_LINE => Err("request too long".to_string()),
        Ok(_) => serde_json::from_slice::<Request>(&line).map_err(|e| format!("bad request: {e}")),
        Err(e) => Err(format!("cannot read the request: {e}")),
    };
    match request {
        Ok(request) => {
            tracing::info!(
                "control socket: {:?} from uid {} pid {} ({})",
                request_name(&request),
                peer.uid,
                peer.pid,
                peer.process()
            );
            if let Err(e) = handler.handle(request, &peer, &mut out) {
                tracing::warn!("control socket: answering failed: {e}");
            }
        }
        Err(e) => {
            let _ = write_answer(&mut out, &Answer::failed(e, 2));
        }
    }
}

fn request_name(request: &Request) -> &'static str {
    match request {
        Request::HiddenList { .. } => "hidden list",
        Request::HiddenShow { .. } => "hidden show",
        Request::HiddenRestore { .. } => "hidden restore",
        Request::HiddenPurge { .. } => "hidden purge",
        Request::AuditQuery { .. } => "audit",
        Request::AuditVerify {} => "audit verify",
    }
}

/// Writes an answer's header line.
pub fn write_answer(out: &mut dyn Write, answer: &Answer) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(answer).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;

    impl Handler for Echo {
        fn handle(
            &self,
            request: Request,
            peer: &Peer,
            out: &mut dyn Write,
        ) -> std::io::Result<()> {
            let text = format!("{request:?} from {}", peer.uid);
            write_answer(out, &Answer::bytes(text.len() as u64))?;
            out.write_all(text.as_bytes())
        }
    }

    fn ask(path: &Path, line: &[u8]) -> (Answer, Vec<u8>) {
        let mut stream = UnixStream::connect(path).unwrap();
        stream.write_all(line).unwrap();
        let mut reader = BufReader::new(stream);
        let mut header = Vec::new();
        reader.read_until(b'\n', &mut header).unwrap();
        let answer: Answer = serde_json::from_slice(&header).unwrap();
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        (answer, rest)
    }

    #[test]
    fn serves_requests_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let server = spawn(&path, None, Arc::new(Echo)).unwrap();
        // A second daemon may not take over a live socket.
        assert!(spawn(&path, None, Arc::new(Echo)).is_err());
        let (answer, rest) = ask(&path, b"{\"op\":\"audit-verify\"}\n");
        assert!(answer.ok);
        assert_eq!(answer.len, Some(rest.len() as u64));
        let uid = nix::unistd::getuid().as_raw();
        assert_eq!(
            String::from_utf8(rest).unwrap(),
            format!("AuditVerify from {uid}")
        );
        let (answer, _) = ask(&path, b"{\"op\":\"rm -rf\"}\n");
        assert!(!answer.ok && answer.code == Some(2), "{answer:?}");
        // An overlong line is refused (the daemon may close before reading it all, so
        // the client sees either the refusal or a reset — never a served request).
        let mut long = vec![b'x'; MAX_LINE + 10];
        long.push(b'\n');
        let mut stream = UnixStream::connect(&path).unwrap();
        let _ = stream.write_all(&long);
        let mut header = Vec::new();
        let _ = BufReader::new(stream).read_until(b'\n', &mut header);
        if !header.is_empty() {
            let answer: Answer = serde_json::from_slice(&header).unwrap();
            assert!(!answer.ok, "{answer:?}");
        }
        drop(server);
        assert!(!path.exists(), "the socket is removed with the server");
    }

    #[test]
    fn only_root_or_the_operator_group() {
        let peer = |uid, gid, groups: Vec<u32>| Peer {
            uid,
            gid,
            pid: 1,
            groups,
        };
        let ops = Some(Gid::from_raw(4242));
        assert!(peer(0, 0, vec![]).allowed(None));
        assert!(!peer(1000, 1000, vec![]).allowed(None));
        assert!(!peer(1000, 1000, vec![27]).allowed(ops));
        assert!(peer(1000, 4242, vec![]).allowed(ops));
        assert!(peer(1000, 1000, vec![4242]).allowed(ops));
    }
}
