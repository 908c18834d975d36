//! Who made a version, as a record keeps it: the caller's process name and this machine's
//! host name, bounded to their fields.

pub(super) const MAX_PROCESS: usize = 16;
pub(super) const MAX_HOST: usize = 255;

/// This machine's host name (empty when it cannot be read).
pub(super) fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// At most `max` bytes of `bytes`, cut at a UTF-8 boundary when it is text.
pub(super) fn bounded(bytes: &[u8], max: usize) -> &[u8] {
    if bytes.len() <= max {
        return bytes;
    }
    let mut end = max;
    if let Ok(text) = std::str::from_utf8(bytes) {
        while !text.is_char_boundary(end) {
            end -= 1;
        }
    }
    &bytes[..end]
}

/// The name of the process `pid` belongs to (FUSE gives the calling thread's id; the
/// process's name is its main thread's), empty for pid 0 or when it is gone. One read of
/// `/proc/PID/status` for a process's main thread, and `/proc/TGID/comm` for another.
pub(super) fn process_name(pid: u32) -> Vec<u8> {
    if pid == 0 {
        return Vec::new();
    }
    let Ok(status) = std::fs::read(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    let mut name: Option<&[u8]> = None;
    let mut tgid = pid;
    for line in status.split(|&b| b == b'\n') {
        if let Some(n) = line.strip_prefix(b"Name:\t") {
            name = Some(n);
        } else if let Some(t) = line.strip_prefix(b"Tgid:") {
            tgid = std::str::from_utf8(t)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(pid);
            break;
        }
    }
    let name = match name {
        // The status file escapes a newline and a backslash in the name.
        Some(n) if tgid == pid && !n.contains(&b'\\') => n.to_vec(),
        _ => match std::fs::read(format!("/proc/{tgid}/comm")) {
            Ok(mut n) => {
                while n.last() == Some(&b'\n') {
                    n.pop();
                }
                n
            }
            Err(_) => return Vec::new(),
        },
    };
    bounded(&name, MAX_PROCESS).to_vec()
}
