//! Mounting: getting a /dev/fuse connection mounted on a directory, and the fuser session
//! on it.
//!
//! domfs mounts by itself instead of through `fuser::Session::new`, because fuser 0.18.0
//! unmounts the mount point again whenever a session ends: its "is it still mounted?"
//! check (`is_mounted`, a poll of the fuse fd) reads POLLERR — the sign of a dead
//! connection — as "mounted", so after every unmount it calls umount(2) on the path once
//! more. That fails with EINVAL (a warning in the log) when the path is empty, and
//! unmounts someone else's file system when something new was mounted there meanwhile
//! (e.g. after a busy mount was detached). With `Session::from_fd` fuser never unmounts:
//! unmounting is [`super::mountinfo::unmount`]'s job alone.
//!
//! As root the mount is a direct mount(2); otherwise the setuid `fusermount3` (Debian
//! `fuse3`) mounts and hands the connection back over a socket (`_FUSE_COMMFD`), as
//! libfuse does.

use std::fs::OpenOptions;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use fuser::{Config, Session, SessionACL};
use nix::mount::MsFlags;

use super::DomFuse;

/// Dispatch threads, each reading requests from its own clone of the /dev/fuse fd (the
/// kernel sends many requests at once; 2 cores here, and requests often wait for I/O).
pub const THREADS: usize = 4;

/// How a volume is mounted.
#[derive(Clone, Debug)]
pub struct MountSettings {
    /// Shown as the mount's source (`fsname`): the volume's path.
    pub fsname: String,
    pub read_only: bool,
    /// Let other users (e.g. a database running as `postgres`) use the mount.
    pub allow_other: bool,
}

impl MountSettings {
    /// The options both mount paths share: subtype `domfs` (the mount shows as
    /// `fuse.domfs`), kernel permission checks, and `allow_other` if asked.
    fn common_options(&self) -> Vec<&'static str> {
        let mut options = vec!["subtype=domfs", "default_permissions"];
        if self.allow_other {
            options.push("allow_other");
        }
        options
    }

    /// fuser's session configuration: who may send requests, and the dispatch threads.
    pub fn session_config(&self) -> Config {
        let mut config = Config::default();
        config.acl = self.acl();
        config.n_threads = Some(THREADS);
        config.clone_fd = true;
        config
    }

    fn acl(&self) -> SessionACL {
        if self.allow_other {
            SessionACL::All
        } else {
            SessionACL::Owner
        }
    }
}

/// Mounts `fs` on `mountpoint` and completes the INIT handshake with the kernel. The
/// returned session serves requests once `run` is called; until then they wait in the
/// kernel. If the handshake fails, the mount is taken away again.
pub fn mount(
    fs: DomFuse,
    mountpoint: &Path,
    settings: &MountSettings,
) -> io::Result<Session<DomFuse>> {
    if settings.fsname.contains(',') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a mount's source may not contain a comma",
        ));
    }
    let fd = if nix::unistd::geteuid().is_root() {
        match kernel_mount(mountpoint, settings) {
            Ok(fd) => fd,
            // Root without the capability (a user namespace): the helper may still work.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                fusermount_mount(mountpoint, settings)?
            }
            Err(e) => return Err(e),
        }
    } else {
        fusermount_mount(mountpoint, settings)?
    };
    Session::from_fd(fs, fd, settings.acl(), settings.session_config()).inspect_err(|_| {
        // Mounted, but no one will serve it: leave no dead mount behind.
        let _ = super::mountinfo::unmount(mountpoint, true);
    })
}

fn kernel_mount(mountpoint: &Path, settings: &MountSettings) -> io::Result<OwnedFd> {
    let root_mode = std::fs::metadata(mountpoint)?.mode();
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open /dev/fuse ({e}); is the fuse module loaded?"),
            )
        })?;
    let mut data = format!(
        "fd={},rootmode={:o},user_id={},group_id={}",
        dev.as_raw_fd(),
        root_mode & libc::S_IFMT,
        nix::unistd::getuid(),
        nix::unistd::getgid()
    );
    for option in settings.common_options() {
        data.push(',');
        data.push_str(option);
    }
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if settings.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    nix::mount::mount(
        Some(settings.fsname.as_str()),
        mountpoint,
        Some("fuse"),
        flags,
        Some(data.as_str()),
    )
    .map_err(io::Error::from)?;
    Ok(OwnedFd::from(dev))
}

fn fusermount_mount(mountpoint: &Path, settings: &MountSettings) -> io::Result<OwnedFd> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    // fusermount3 must inherit its end (and only it: ours stays close-on-exec).
    fcntl(&theirs, FcntlArg::F_SETFD(FdFlag::empty()))?;
    let mut options = vec![
        format!("fsname={}", settings.fsname),
        "nosuid".into(),
        "nodev".into(),
        if settings.read_only { "ro" } else { "rw" }.into(),
    ];
    options.extend(settings.common_options().into_iter().map(String::from));
    let child = Command::new("fusermount3")
        .arg("-o")
        .arg(options.join(","))
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run fusermount3: {e}")))?;
    drop(theirs);
    let received = receive_fd(&ours);
    drop(ours);
    let out = child.wait_with_output()?;
    match received {
        Ok(fd) if out.status.success() => Ok(fd),
        _ => {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            Err(io::Error::other(if stderr.is_empty() {
                format!("fusermount3 failed ({})", out.status)
            } else {
                stderr
            }))
        }
    }
}

/// The /dev/fuse fd fusermount3 sends over the socket (SCM_RIGHTS).
#[allow(unsafe_code)]
fn receive_fd(socket: &OwnedFd) -> io::Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(std::os::fd::RawFd);
    let msg = loop {
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other?,
        }
    };
    let mut received = None;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                if fd < 0 {
                    continue;
                }
                // SAFETY: the kernel has just installed `fd` in this process for this
                // message (SCM_RIGHTS); nothing else knows or owns it, so the OwnedFd
                // becomes its only owner (closing it on drop).
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if received.is_none() {
                    received = Some(owned);
                }
            }
        }
    }
    received.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "fusermount3 sent no /dev/fuse connection",
        )
    })
}
