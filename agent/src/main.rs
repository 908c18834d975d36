//! `domfs-agent`: parse arguments, set up logging, call the library, map errors to a
//! message and an exit code (0 ok, 1 failure, 2 usage).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::os::unix::fs::DirBuilderExt;

use domfs_agent::enroll::{Keys, approval_hint, state_name};
use domfs_agent::server::{HostConfig, ServeConfig};
use domfs_agent::tpm::PcrSelection;
use domfs_agent::{logging, server, socket};
use domfs_proto::agent::{Mode, StatusRequest};
use domfs_proto::client::{TlsFiles, connect_agent, describe_status};
use domfs_proto::ttp::HostState;

/// The domfs host agent (the secure component): enrolls this host's TPM with the TTP and
/// hands domain keys to local mounts over a Unix socket.
#[derive(Parser)]
#[command(name = "domfs-agent", version)]
struct Cli {
    /// More log detail (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: enroll if needed, then serve key requests on the socket.
    Serve(ServeArgs),
    /// Enroll this host's TPM with the TTP (the agent must not be running).
    Enroll(EnrollArgs),
    /// Ask a running agent how it stands.
    Status(StatusArgs),
}

#[derive(Args)]
struct HostArgs {
    /// The agent's state directory (TPM key blobs, log); created 0700.
    #[arg(long, value_name = "DIR")]
    state: PathBuf,
    /// The TTP, https://HOST:PORT.
    #[arg(long, value_name = "URL")]
    ttp: String,
    /// How to reach the TPM: device:/dev/tpmrm0, or swtpm:host=127.0.0.1,port=2321.
    #[arg(long, value_name = "TCTI")]
    tcti: String,
    /// PCRs the host key is bound to. The default, PCR 7 (Secure Boot state), suits real
    /// hosts; tests use sha256:16, which can be reset.
    #[arg(long, value_name = "BANK:LIST", default_value = "sha256:7")]
    pcrs: String,
    /// The TTP's CA certificate (PEM).
    #[arg(long, value_name = "FILE")]
    tls_ca: PathBuf,
    /// This host's certificate (PEM); its common name is the host's name at the TTP.
    #[arg(long, value_name = "FILE")]
    tls_cert: PathBuf,
    /// This host's private key (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: PathBuf,
}

impl HostArgs {
    fn config(&self) -> Result<HostConfig> {
        let pcrs: PcrSelection = self
            .pcrs
            .parse()
            .with_context(|| format!("--pcrs {}", self.pcrs))?;
        Ok(HostConfig {
            state_dir: self.state.clone(),
            ttp_url: self.ttp.clone(),
            tls: TlsFiles {
                ca: self.tls_ca.clone(),
                cert: self.tls_cert.clone(),
                key: self.tls_key.clone(),
            },
            tcti: self.tcti.clone(),
            pcrs,
        })
    }
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    host: HostArgs,
    /// The Unix socket to serve on.
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// A group whose members may use the agent (besides root and the agent's own user);
    /// the socket is given this group.
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    /// The socket's mode, octal (use 0660 with --group).
    #[arg(long, value_name = "MODE", default_value = "0600", value_parser = socket::parse_mode)]
    socket_mode: u32,
    /// How long cached keys stay usable after the TTP became unreachable, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 14400)]
    grace: u64,
    /// The log file, appended to [default: DIR/agent.log].
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
}

#[derive(Args)]
struct EnrollArgs {
    #[command(flatten)]
    host: HostArgs,
    /// Make new TPM keys and enroll again, even if enrolled: the TTP operator must approve
    /// the host again.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct StatusArgs {
    /// The agent's socket.
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// An error already written to the log (and so to stderr).
#[derive(Debug, thiserror::Error)]
#[error("see the log")]
struct Logged;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("domfs-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args, cli.verbose).await,
            Command::Enroll(args) => enroll(args, cli.verbose).await,
            Command::Status(args) => status(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.downcast_ref::<Logged>().is_none() {
                eprintln!("domfs-agent: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs, verbose: u8) -> Result<()> {
    let host = args.host.config()?;
    // The log lives in the state directory: create it (0700) before logging starts.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&host.state_dir)
        .with_context(|| format!("cannot create {}", host.state_dir.display()))?;
    let log = args
        .log
        .clone()
        .unwrap_or_else(|| host.state_dir.join("agent.log"));
    logging::init(Some(&log), verbose)?;
    // Keep the keys out of core dumps and away from ptrace by other processes of this user.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot mark the agent non-dumpable");
    }
    let config = ServeConfig {
        host,
        socket: args.socket,
        socket_mode: args.socket_mode,
        group: args.group,
        grace: Duration::from_secs(args.grace),
    };
    if let Err(e) = server::serve(config, shutdown_signal()).await {
        // Into the log file too; the log also writes it to stderr.
        tracing::error!("{e}");
        return Err(Logged.into());
    }
    Ok(())
}

/// Resolves on SIGTERM, SIGINT or SIGHUP.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        // Without signal handlers the process still dies by the default action.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = hup.recv() => {}
    }
    tracing::info!("signal received: stopping");
}

async fn enroll(args: EnrollArgs, verbose: u8) -> Result<()> {
    logging::init(None, verbose)?;
    let host = args.host.config()?;
    let keys = if args.force {
        Keys::Fresh
    } else {
        Keys::IfNeeded
    };
    let (enrollment, name) = server::enroll(&host, keys).await?;
    println!("host: {name}");
    println!("enrollment: {}", state_name(enrollment.state));
    println!("attestation key: {}", enrollment.fingerprint);
    if enrollment.state == HostState::Pending {
        println!("{}", approval_hint(&name));
    }
    Ok(())
}

async fn status(args: StatusArgs) -> Result<()> {
    let mut client = connect_agent(&args.socket).await?;
    let status = client
        .status(StatusRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", describe_status(&s)))?
        .into_inner();
    if args.json {
        let leases: Vec<serde_json::Value> = status
            .leases
            .iter()
            .map(|l| {
                serde_json::json!({
                    "domain_id": l.domain_id,
                    "mode": mode_name(l.mode),
                    "until_unix": l.until_unix,
                    "mounts": l.mounts,
                })
            })
            .collect();
        let json = serde_json::json!({
            "host_name": status.host_name,
            "enrollment": status.enrollment,
            "ttp_reachable": status.ttp_reachable,
            "leases": leases,
        });
        println!("{json:#}");
        return Ok(());
    }
    println!("host: {}", status.host_name);
    println!("enrollment: {}", status.enrollment);
    println!(
        "ttp: {}",
        if status.ttp_reachable {
            "reachable"
        } else {
            "unreachable"
        }
    );
    if status.leases.is_empty() {
        println!("leases: none");
    }
    for lease in &status.leases {
        println!(
            "lease: domain {} {} until {} (unix), {} mount(s)",
            lease.domain_id,
            mode_name(lease.mode),
            lease.until_unix,
            lease.mounts
        );
    }
    Ok(())
}

fn mode_name(mode: i32) -> &'static str {
    match Mode::try_from(mode) {
        Ok(Mode::ReadOnly) => "ro",
        Ok(Mode::ReadWrite) => "rw",
        _ => "?",
    }
}
