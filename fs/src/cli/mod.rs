//! The `domfs` command line. Each subcommand is a module with an `Args` struct and a
//! `run`; this file parses, sets up logging, and maps errors to a message and an exit
//! code (see [`exit`]).

mod acl;
pub mod audit;
mod create;
pub mod debug;
pub mod exit;
mod fsck;
mod header;
pub mod hidden;
mod key;
mod manager;
mod mount;
mod mount_agent;
mod mount_anchor;
mod mount_control;
mod output;
pub mod size;
mod ttp;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Encrypted, authenticated domain volumes for electronic health records.
///
/// A volume is a file or block device holding one domain's data: every 4 KiB block is
/// encrypted (AES-256-XTS) and authenticated (HMAC-SHA256 in a Merkle tree), and commits
/// are crash-safe.
#[derive(Parser, Debug)]
#[command(name = "domfs", version, propagate_version = true)]
pub struct Cli {
    /// More detail (repeat for debug logs).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a domain volume in a file or on a block device.
    Create(create::Args),
    /// Verify a volume: header, superblocks, every block and the space map.
    Fsck(fsck::Args),
    /// Inspect the volume header.
    #[command(subcommand)]
    Header(header::Command),
    /// Manage key files.
    #[command(subcommand)]
    Key(key::Command),
    /// Hidden versions: what unlink, rmdir, rename-over and truncation removed from view
    /// (list, show, restore; purge by the domain manager).
    #[command(subcommand)]
    Hidden(hidden::Command),
    /// Give a host access to an agent-mode volume (a new signed list, registered at the
    /// TTP and written into the header).
    Grant(acl::ChangeArgs),
    /// Take a host's access away (or only its right to write, with `rw`).
    Revoke(acl::ChangeArgs),
    /// Show a volume's access list.
    #[command(subcommand)]
    Acl(acl::AclCommand),
    /// Domain manager keys.
    #[command(subcommand)]
    Manager(manager::Command),
    /// Mount a volume on a directory (returns once the mount is ready, unless -f).
    Mount(mount::Args),
    /// Unmount a volume; returns after the final commit and the release of the volume.
    Unmount(mount::UnmountArgs),
    /// The audit trail of a volume, newest first: who opened, created, changed, renamed or
    /// hid what, when, from which process on which host; `--verify` checks its MAC chain.
    Audit(audit::Args),
    /// Developer tools for tests (not a stable interface).
    #[command(subcommand, hide = true)]
    Debug(debug::Command),
}

/// Options every subcommand shares.
#[derive(Clone, Copy, Debug)]
pub struct Global {
    pub verbose: u8,
    pub quiet: bool,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let global = Global {
        verbose: cli.verbose,
        quiet: cli.quiet,
    };
    output::init_logging(global);
    let result = match cli.command {
        Command::Create(args) => create::run(args, global),
        Command::Fsck(args) => fsck::run(args, global),
        Command::Header(cmd) => header::run(cmd, global),
        Command::Key(cmd) => key::run(cmd, global),
        Command::Hidden(cmd) => hidden::run(cmd, global),
        Command::Grant(args) => acl::run_change(acl::Change::Grant, args, global),
        Command::Revoke(args) => acl::run_change(acl::Change::Revoke, args, global),
        Command::Acl(cmd) => acl::run_show(cmd, global),
        Command::Manager(cmd) => manager::run(cmd, global),
        Command::Mount(args) => mount::run(args, global),
        Command::Unmount(args) => mount::run_unmount(args, global),
        Command::Audit(args) => audit::run(args, global),
        Command::Debug(cmd) => debug::run(cmd, global),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("domfs: {}", output::error_chain(&e));
            if let Some(hint) = exit::hint(&e) {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(exit::code_for(&e))
        }
    }
}
