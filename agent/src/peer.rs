//! Who is calling: the socket peer's credentials (SO_PEERCRED, which the kernel fills in
//! at connect time and the caller cannot forge), its supplementary groups and name from
//! `/proc/PID/`, and the rule that decides whether it may talk to the agent.
//!
//! `/proc` is read after the fact, so a caller that exits (and whose pid is reused) in
//! between could be described wrongly; the decision itself rests on uid and gid from the
//! kernel, and the supplementary groups are only ever an additional way in.

use tonic::Request;
use tonic::transport::server::UdsConnectInfo;

/// A process, told apart from a later one with the same pid by its start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcessRef {
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat` (clock ticks since boot); 0 if unknown.
    pub start_time: u64,
}

impl ProcessRef {
    pub fn of(pid: u32) -> ProcessRef {
        ProcessRef {
            pid,
            start_time: start_time(pid).unwrap_or(0),
        }
    }

    /// Whether this process still runs (the same one, not a reuse of its pid).
    pub fn alive(&self) -> bool {
        match start_time(self.pid) {
            Some(now) => self.start_time == 0 || now == self.start_time,
            None => false,
        }
    }
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name in field 2 may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest starts at field 3 (state); start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The caller of one RPC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub process: Option<ProcessRef>,
    /// Supplementary groups (from `/proc/PID/status`); empty if unknown.
    pub groups: Vec<u32>,
    /// `/proc/PID/comm`, or "?".
    pub name: String,
}

impl Peer {
    /// The credentials of a Unix-socket request; None for any other transport.
    pub fn of<T>(request: &Request<T>) -> Option<Peer> {
        let cred = request
            .extensions()
            .get::<UdsConnectInfo>()?
            .peer_cred
            .as_ref()?;
        let pid = cred.pid().and_then(|p| u32::try_from(p).ok());
        Some(Peer::describe(cred.uid(), cred.gid(), pid))
    }

    pub fn describe(uid: u32, gid: u32, pid: Option<u32>) -> Peer {
        Peer {
            uid,
            gid,
            process: pid.map(ProcessRef::of),
            groups: pid.map(supplementary_groups).unwrap_or_default(),
            name: pid.and_then(process_name).unwrap_or_else(|| "?".into()),
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.map(|p| p.pid).unwrap_or(0)
    }
}

fn supplementary_groups(pid: u32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    parse_groups(&status)
}

fn parse_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|groups| {
            groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn process_name(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    // comm is at most 16 bytes, but keep log lines clean whatever it holds.
    Some(
        comm.trim_end()
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect(),
    )
}

/// Who may use the agent: root, the agent's own user, and members of one group.
#[derive(Clone, Debug)]
pub struct AccessRule {
    pub own_uid: u32,
    pub group: Option<u32>,
}

impl AccessRule {
    pub fn allows(&self, peer: &Peer) -> bool {
        peer.uid == 0
            || peer.uid == self.own_uid
            || self
                .group
                .is_some_and(|g| peer.gid == g || peer.groups.contains(&g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            process: None,
            groups: groups.to_vec(),
            name: "t".into(),
        }
    }

    #[test]
    fn rule() {
        let rule = AccessRule {
            own_uid: 0,
            group: Some(990),
        };
        assert!(rule.allows(&peer(0, 0, &[])));
        assert!(rule.allows(&peer(1000, 990, &[])));
        assert!(rule.allows(&peer(1000, 1000, &[27, 990])));
        assert!(!rule.allows(&peer(1000, 1000, &[27])));
        let no_group = AccessRule {
            own_uid: 500,
            group: None,
        };
        assert!(no_group.allows(&peer(500, 500, &[])));
        assert!(!no_group.allows(&peer(1000, 990, &[990])));
    }

    #[test]
    fn proc_parsing() {
        let status = "Name:\tbash\nUid:\t0\t0\t0\t0\nGroups:\t4 24 990 \nVmPeak:\t1 kB\n";
        assert_eq!(parse_groups(status), vec![4, 24, 990]);
        assert_eq!(parse_groups("Groups:\n"), Vec::<u32>::new());
        assert_eq!(parse_groups("garbage"), Vec::<u32>::new());
        let me = ProcessRef::of(std::process::id());
        assert!(me.start_time > 0);
        assert!(me.alive());
        let gone = ProcessRef {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        assert!(!gone.alive());
        let described = Peer::describe(0, 0, Some(std::process::id()));
        assert!(!described.name.is_empty() && described.name != "?");
    }
}
