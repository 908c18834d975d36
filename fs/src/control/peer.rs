//! Who is on the other end of a Unix socket, and whether they may use it.

use std::os::unix::net::UnixStream;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::Gid;

/// The caller's credentials (SO_PEERCRED) and supplementary groups.
#[derive(Clone, Debug)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub groups: Vec<u32>,
}

impl Peer {
    pub fn of(stream: &UnixStream) -> std::io::Result<Peer> {
        let cred = getsockopt(stream, PeerCredentials).map_err(std::io::Error::from)?;
        let pid = u32::try_from(cred.pid()).unwrap_or(0);
        Ok(Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid,
            groups: supplementary_groups(pid),
        })
    }

    /// Root, or a member of `operator_group`.
    pub fn allowed(&self, operator_group: Option<Gid>) -> bool {
        if self.uid == 0 {
            return true;
        }
        match operator_group {
            Some(g) => self.gid == g.as_raw() || self.groups.contains(&g.as_raw()),
            None => false,
        }
    }

    /// The process name, for logs.
    pub fn process(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/comm", self.pid))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into())
    }
}

/// The `Groups:` line of /proc/PID/status (empty if the process is gone).
fn supplementary_groups(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| {
                l.strip_prefix("Groups:").map(|g| {
                    g.split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect()
                })
            })
        })
        .unwrap_or_default()
}
