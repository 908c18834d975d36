//! Background mode of `domfs mount`: fork before any thread exists, detach, and tell the
//! waiting parent "ready" (or the error) through a pipe.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use anyhow::{Context, Result, bail};

use super::super::exit::{FAILURE, OK};
use super::super::output::error_chain;
use super::{KeySource, Prepared, lifecycle, mounted_message, serve, start};

enum Forked {
    Parent(nix::unistd::Pid),
    Child,
}

/// fork(2), refused unless this process has exactly one thread.
#[allow(unsafe_code)]
fn fork_single_threaded() -> Result<Forked> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|dir| dir.count())
        .context("cannot count this process's threads")?;
    if threads != 1 {
        bail!("internal error: cannot fork the mount daemon while {threads} threads run");
    }
    // SAFETY: the process is single-threaded (checked just above: nothing since `main`
    // has started a thread — argument parsing, logging set-up and reading the key file
    // do not), so the child is a complete copy of the only thread and may allocate, take
    // locks and start threads of its own without inheriting a lock some other thread held.
    match unsafe { nix::unistd::fork() }.context("cannot fork the mount daemon")? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

pub(super) fn daemonize(p: Prepared, key: KeySource) -> Result<u8> {
    let (ready_read, ready_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("cannot create a pipe")?;
    match fork_single_threaded()? {
        Forked::Parent(child) => {
            drop(ready_write);
            drop(key);
            wait_until_ready(ready_read, child, p.quiet)
        }
        Forked::Child => {
            drop(ready_read);
            Ok(daemon_main(&p, key, ready_write))
        }
    }
}

/// The parent: waits for the child's word. "OK" means mounted; "ERR code" is followed by
/// the message to print; end of file without a word means the child died.
fn wait_until_ready(ready: OwnedFd, child: nix::unistd::Pid, quiet: bool) -> Result<u8> {
    let mut text = String::new();
    File::from(ready)
        .read_to_string(&mut text)
        .context("cannot hear from the mount daemon")?;
    if let Some(what) = text.strip_prefix("OK") {
        if !quiet && !what.trim().is_empty() {
            eprintln!("{}", what.trim());
        }
        return Ok(OK);
    }
    if let Some(rest) = text.strip_prefix("ERR ") {
        let (code, message) = rest.split_once('\n').unwrap_or((rest, ""));
        eprint!("{message}");
        return Ok(code.trim().parse().unwrap_or(FAILURE));
    }
    let status = nix::sys::wait::waitpid(child, None)
        .map(|s| format!("{s:?}"))
        .unwrap_or_else(|e| e.to_string());
    bail!("the mount daemon ended before the mount was ready ({status})")
}

/// The child: becomes a daemon, mounts, reports, serves. Returns the exit code.
fn daemon_main(p: &Prepared, key: KeySource, ready: OwnedFd) -> u8 {
    let mut ready = File::from(ready);
    let report_error = |ready: &mut File, e: anyhow::Error| {
        let mut message = format!("domfs: {}\n", error_chain(&e));
        if let Some(hint) = super::super::exit::hint(&e) {
            message.push_str(&format!("hint: {hint}\n"));
        }
        let code = super::super::exit::code_for(&e);
        // The parent prints it; if the parent is gone, there is no one to tell.
        let _ = write!(ready, "ERR {code}\n{message}");
        code
    };
    if let Err(e) = detach() {
        return report_error(&mut ready, e);
    }
    let mounted = match start(p, key) {
        Ok(m) => m,
        Err(e) => return report_error(&mut ready, e),
    };
    // From now on stderr is the log file (or nothing): the caller's terminal or pipe must
    // not be held open by a daemon, or `$(domfs mount …)` would never return.
    if let Err(e) = redirect_stderr(p) {
        return report_error(&mut ready, e);
    }
    lifecycle(p, &mounted_message(p, mounted.read_only));
    let _ = ready.write_all(format!("OK {}\n", mounted_message(p, mounted.read_only)).as_bytes());
    drop(ready);
    match serve(mounted, p) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{}", error_chain(&e));
            FAILURE
        }
    }
}

/// A new session (no controlling terminal, no SIGHUP from the caller's), `/` as working
/// directory (the daemon keeps no directory busy), stdin and stdout on /dev/null.
fn detach() -> Result<()> {
    nix::unistd::setsid().context("setsid")?;
    std::env::set_current_dir("/").context("chdir /")?;
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("cannot open /dev/null")?;
    nix::unistd::dup2_stdin(&null).context("redirecting stdin")?;
    nix::unistd::dup2_stdout(&null).context("redirecting stdout")?;
    Ok(())
}

pub(super) fn redirect_stderr(p: &Prepared) -> Result<()> {
    match &p.log {
        Some(log) => nix::unistd::dup2_stderr(log).context("redirecting stderr to the log")?,
        None => {
            let null = OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .context("cannot open /dev/null")?;
            nix::unistd::dup2_stderr(&null).context("redirecting stderr")?;
        }
    }
    Ok(())
}
