//! `domfs-keyload`: key releases per second at a TTP, from many concurrent clients.
//!
//! Every client asks for the read-only key of one domain, as an agent does at a mount:
//! the header's signed list goes to `GetDomainKey`, the TTP verifies it, checks the host,
//! derives K and wraps it to the host's TPM key. Over established connections (one
//! HTTP/2 connection per client, opened before the clock starts) or, with
//! `--new-connections`, a fresh TLS handshake per release. Prints the rate and latency
//! percentiles, and one JSON line with the same figures for scripts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use domfs::device::{Access, FileDevice};
use domfs::format::header::read_header;
use domfs_proto::client::{TlsFiles, connect_ttp};
use domfs_proto::ttp::{GetDomainKeyRequest, Mode, ReleaseLeaseRequest};

#[derive(Parser, Debug)]
struct Args {
    /// The TTP, https://HOST:PORT.
    #[arg(long)]
    ttp: String,
    #[arg(long)]
    tls_ca: PathBuf,
    /// A host identity granted (at least) ro on the volume's domain.
    #[arg(long)]
    tls_cert: PathBuf,
    #[arg(long)]
    tls_key: PathBuf,
    /// An agent-mode volume (its header holds the signed list).
    #[arg(long)]
    volume: PathBuf,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// How long to measure.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// A new connection (TLS handshake) for every release.
    #[arg(long)]
    new_connections: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dev = FileDevice::open(&args.volume, Access::ReadOnly)
        .with_context(|| format!("cannot open {}", args.volume.display()))?;
    let header = read_header(&dev)?.header;
    let tls = TlsFiles {
        ca: args.tls_ca.clone(),
        cert: args.tls_cert.clone(),
        key: args.tls_key.clone(),
    };
    let request = GetDomainKeyRequest {
        signed_message: header.signed_message.clone(),
        signature: header.signature.clone(),
        mode: Mode::ReadOnly as i32,
    };
    // One release first: a refusal should stop the run, not be measured.
    let mut probe = connect_ttp(&args.ttp, &tls).await?;
    let granted = probe
        .get_domain_key(request.clone())
        .await
        .context("the first key release failed")?
        .into_inner();
    release(&mut probe, &granted.lease_id, &header.volume_id.0).await;

    let mut clients = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        clients.push(if args.new_connections {
            None
        } else {
            Some(connect_ttp(&args.ttp, &tls).await?)
        });
    }
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in clients {
        let (request, tls, url) = (request.clone(), tls.clone(), args.ttp.clone());
        let new_connections = args.new_connections;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut client = client;
            while Instant::now() < deadline {
                let t = Instant::now();
                let mut conn = match client.take() {
                    Some(c) => c,
                    None => match connect_ttp(&url, &tls).await {
                        Ok(c) => c,
                        Err(_) => {
                            errors += 1;
                            continue;
                        }
                    },
                };
                // Read-only leases live in the TTP's memory until they expire; the agent
                // asks once per lease, so a release per request is what the TTP sees.
                match conn.get_domain_key(request.clone()).await {
                    Ok(_) => latencies.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
                if !new_connections {
                    client = Some(conn);
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await?;
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    if all.is_empty() {
        bail!("no release succeeded ({errors} errors)");
    }
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1000.0;
    let rate = all.len() as f64 / elapsed;
    println!(
        "{} releases in {elapsed:.1} s by {} clients ({}): {rate:.0}/s; latency p50 {:.2} ms, p99 {:.2} ms; {errors} errors",
        all.len(),
        args.clients,
        if args.new_connections {
            "new connection each"
        } else {
            "established connections"
        },
        pct(0.5),
        pct(0.99)
    );
    println!(
        "{{\"releases\":{},\"seconds\":{elapsed:.3},\"clients\":{},\"new_connections\":{},\"per_second\":{rate:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"errors\":{errors}}}",
        all.len(),
        args.clients,
        args.new_connections,
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}

async fn release(
    client: &mut domfs_proto::ttp::ttp_client::TtpClient<tonic::transport::Channel>,
    lease_id: &[u8],
    domain: &[u8; 16],
) {
    let _ = client
        .release_lease(ReleaseLeaseRequest {
            lease_id: lease_id.to_vec(),
            domain_id: domain.to_vec(),
        })
        .await;
}
