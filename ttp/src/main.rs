//! `domfs-ttp`: parse the command line, make one library call, print its result. Exit
//! status 0 on success, 1 on any error (with one `domfs-ttp: ...` line on stderr), 2 for
//! usage errors (clap).
#![forbid(unsafe_code)]

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use domfs_ttp::admin_client::AdminConnection;
use domfs_ttp::core::{CoreConfig, DEFAULT_LEASE_SECONDS};
use domfs_ttp::pki::{self, Role};
use domfs_ttp::server::Server;
use domfs_ttp::state::StateDir;

/// domfs trusted third party: holds K_TTP, registers domains and hosts, and releases
/// domain keys to enrolled, approved hosts named in a domain's signed access list.
#[derive(Parser)]
#[command(name = "domfs-ttp", version, propagate_version = true)]
struct Cli {
    /// More diagnostics on stderr (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct State {
    /// The state directory (K_TTP, CA, registry).
    #[arg(long, value_name = "DIR", env = "DOMFS_TTP_STATE")]
    state: PathBuf,
}

#[derive(Args)]
struct Listing {
    #[command(flatten)]
    state: State,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Create a state directory: K_TTP, the CA, the server certificate, an empty registry.
    Init {
        #[command(flatten)]
        state: State,
        /// An extra DNS name or IP address for the server certificate (repeatable); the
        /// certificate always covers localhost, 127.0.0.1, ::1 and this machine's name.
        #[arg(long, value_name = "NAME")]
        san: Vec<String>,
    },
    /// Client certificates from the TTP's CA.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Run the TTP: gRPC over mutual TLS on ADDR, the admin socket in DIR.
    Serve {
        #[command(flatten)]
        state: State,
        /// Address to listen on, e.g. 0.0.0.0:7400 (port 0: any free port, printed).
        #[arg(long, value_name = "ADDR")]
        listen: SocketAddr,
        /// Lease length in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_LEASE_SECONDS,
              value_parser = clap::value_parser!(u32).range(1..=86400))]
        lease: u32,
        /// The decision log (appended to); default DIR/ttp.log.
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
        /// The most audit entries one domain may store for its read-only hosts, in bytes
        /// (suffixes K, M, G, T: powers of 1024); beyond it AppendAudit is refused.
        #[arg(long, value_name = "BYTES", default_value = "1G", value_parser = parse_size)]
        audit_cap: u64,
    },
    /// Domain manager keys the TTP accepts for new domains.
    #[command(subcommand)]
    Managers(ManagersCommand),
    /// Enrolled hosts: list, approve, revoke.
    #[command(subcommand)]
    Hosts(HostsCommand),
    /// Registered domains: list, destroy (crypto-shredding).
    #[command(subcommand)]
    Domains(DomainsCommand),
    /// Write an encrypted backup of K_TTP, the CA and the registry.
    Backup {
        #[command(flatten)]
        state: State,
        /// The backup file to create.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// A 32-byte key (raw, or 64 hex digits), e.g. from `head -c 32 /dev/urandom`.
        #[arg(long, value_name = "KEYFILE")]
        key: PathBuf,
    },
    /// Create a new state directory from a backup.
    Restore {
        #[command(flatten)]
        state: State,
        /// The backup file.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// The key the backup was made with.
        #[arg(long, value_name = "KEYFILE")]
        key: PathBuf,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Issue a certificate and key: OUT/NAME.crt, OUT/NAME.key (0600) and OUT/ca.crt.
    Issue {
        #[command(flatten)]
        state: State,
        /// The holder's name (a host name as access lists use it).
        #[arg(long)]
        name: String,
        /// What the holder may call.
        #[arg(long, default_value = "host", value_parser = ["host", "manager"])]
        role: String,
        /// Where to write the files (created 0700 if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = pki::DEFAULT_DAYS)]
        days: i64,
        /// Replace existing NAME.crt and NAME.key.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum ManagersCommand {
    /// Accept a manager's Ed25519 key (PUBKEY_FILE: 64 hex digits or 32 raw bytes).
    Add {
        #[command(flatten)]
        state: State,
        name: String,
        pubkey_file: PathBuf,
    },
    /// List the accepted manager keys.
    List(Listing),
}

#[derive(Subcommand)]
enum HostsCommand {
    /// List enrolled hosts.
    List(Listing),
    /// Approve an enrolled host (compare its attestation key fingerprint first).
    Approve {
        #[command(flatten)]
        state: State,
        name: String,
    },
    /// Revoke a host for good and end its leases.
    Revoke {
        #[command(flatten)]
        state: State,
        name: String,
    },
}

#[derive(Subcommand)]
enum DomainsCommand {
    /// List registered domains.
    List(Listing),
    /// Erase the domain's r: its key can never be derived again.
    Destroy {
        #[command(flatten)]
        state: State,
        /// The domain id (32 hex digits).
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DOMFS_TTP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|runtime| runtime.block_on(run(cli.command)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("domfs-ttp: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init { state, san } => {
            let dir = StateDir::init(&state.state, &san)?;
            println!(
                "domfs-ttp: initialised {} (CA: {})",
                dir.root().display(),
                dir.file(domfs_ttp::state::CA_CERT).display()
            );
            Ok(())
        }
        Command::Cert(CertCommand::Issue {
            state,
            name,
            role,
            out,
            days,
            force,
        }) => {
            let role = Role::parse(&role).context("role must be host or manager")?;
            cli::issue_certificate(&StateDir::new(state.state), &name, role, &out, days, force)
        }
        Command::Serve {
            state,
            listen,
            lease,
            log,
            audit_cap,
        } => serve(state, listen, lease, log, audit_cap).await,
        Command::Managers(ManagersCommand::Add {
            state,
            name,
            pubkey_file,
        }) => {
            let bytes = std::fs::read(&pubkey_file)
                .with_context(|| format!("cannot read {}", pubkey_file.display()))?;
            let key = domfs_ttp::admin::parse_manager_key(&bytes)
                .with_context(|| format!("{}", pubkey_file.display()))?;
            let mut admin = connect(&state).await?;
            admin.add_manager(&name, &key).await?;
            println!("manager {name} added ({})", hex::encode(key));
            Ok(())
        }
        Command::Managers(ManagersCommand::List(listing)) => {
            let managers = connect(&listing.state).await?.list_managers().await?;
            cli::print_managers(&managers, listing.json)
        }
        Command::Hosts(HostsCommand::List(listing)) => {
            let hosts = connect(&listing.state).await?.list_hosts().await?;
            cli::print_hosts(&hosts, listing.json)
        }
        Command::Hosts(HostsCommand::Approve { state, name }) => {
            let host = connect(&state).await?.approve_host(&name).await?;
            println!("host {} is {}", host.name, host.state);
            Ok(())
        }
        Command::Hosts(HostsCommand::Revoke { state, name }) => {
            let host = connect(&state).await?.revoke_host(&name).await?;
            println!("host {} is {}", host.name, host.state);
            Ok(())
        }
        Command::Domains(DomainsCommand::List(listing)) => {
            let domains = connect(&listing.state).await?.list_domains().await?;
            cli::print_domains(&domains, listing.json)
        }
        Command::Domains(DomainsCommand::Destroy { state, id }) => {
            let domain = connect(&state).await?.destroy_domain(&id).await?;
            println!(
                "domain {} destroyed: its key can no longer be derived",
                domain.domain_id
            );
            Ok(())
        }
        Command::Backup { state, out, key } => {
            let key = cli::read_backup_key(&key)?;
            let blob = connect(&state).await?.backup(&key).await?;
            cli::write_new_file(&out, &blob, 0o600)?;
            println!("backup written to {} ({} bytes)", out.display(), blob.len());
            Ok(())
        }
        Command::Restore { state, from, key } => {
            let key = cli::read_backup_key(&key)?;
            let blob =
                std::fs::read(&from).with_context(|| format!("cannot read {}", from.display()))?;
            let target = StateDir::new(&state.state);
            domfs_ttp::backup::restore(&target, &blob, &key)?;
            println!(
                "restored {} from {}",
                target.root().display(),
                from.display()
            );
            Ok(())
        }
    }
}

async fn connect(state: &State) -> anyhow::Result<AdminConnection> {
    let dir = StateDir::new(&state.state);
    let connection = AdminConnection::open(&dir).await?;
    tracing::info!(
        "{}",
        if connection.via_socket() {
            "talking to the running server"
        } else {
            "no server answers: using the registry directly"
        }
    );
    Ok(connection)
}

async fn serve(
    state: State,
    listen: SocketAddr,
    lease: u32,
    log: Option<PathBuf>,
    audit_cap: u64,
) -> anyhow::Result<()> {
    // K_TTP must not end up in a core dump.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!("cannot disable core dumps: {e}");
    }
    domfs_proto::client::install_crypto_provider();
    let config = CoreConfig {
        state: StateDir::new(&state.state),
        lease_seconds: lease,
        log_file: log,
        echo: true,
        audit_cap,
    };
    let server = Server::bind(&config, listen).await?;
    println!("domfs-ttp: listening on https://{}", server.local_addr());
    use std::io::Write;
    std::io::stdout().flush().context("stdout")?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot handle SIGTERM")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
    };
    server.run(shutdown).await?;
    Ok(())
}

/// A size in bytes: digits, optionally followed by K, M, G or T (powers of 1024).
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown size suffix {c:?} (K, M, G or T)")),
            };
            (&text[..i], shift)
        }
        _ => (text, 0),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 1G, 512M, 1048576)"))?;
    match value.checked_mul(1u64 << shift) {
        Some(0) => Err("the size must be more than 0".to_string()),
        Some(bytes) => Ok(bytes),
        None => Err(format!("{text} is too large")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("1G"), Ok(1 << 30));
        assert_eq!(super::parse_size("512m"), Ok(512 << 20));
        assert_eq!(super::parse_size("4096"), Ok(4096));
        assert!(super::parse_size("0").is_err());
        assert!(super::parse_size("1X").is_err());
        assert!(super::parse_size("G").is_err());
        assert!(super::parse_size("99999999999T").is_err());
    }
}
