//! Audit entries of read-only mounts, kept at the TTP: appended under a live lease, read
//! back in order by listed hosts and the domain's manager, bounded, capped.

mod common;

use common::*;
use domfs_proto::ttp::ttp_client::TtpClient;
use domfs_proto::ttp::{
    AppendAuditRequest, HostStatusRequest, Mode, ReadAuditRequest, ReadAuditResponse,
};
use domfs_proto::{MAX_AUDIT_ENTRIES, MAX_AUDIT_ENTRY};
use tonic::Code;
use tonic::transport::Channel;

/// A lease of `host` on `domain`.
async fn lease(ttp: &Ttp, host: &str, domain: &Domain, mode: Mode) -> anyhow::Result<Vec<u8>> {
    Ok(ttp
        .client(host)
        .await?
        .get_domain_key(domain.ask(mode))
        .await?
        .into_inner()
        .lease_id)
}

async fn append(
    client: &mut TtpClient<Channel>,
    domain: &Domain,
    lease_id: &[u8],
    entries: Vec<Vec<u8>>,
) -> Result<(u64, u64), tonic::Status> {
    client
        .append_audit(AppendAuditRequest {
            domain_id: domain.id.to_vec(),
            lease_id: lease_id.to_vec(),
            entries,
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            (r.stored, r.last_sequence)
        })
}

async fn read(
    client: &mut TtpClient<Channel>,
    domain: &Domain,
    after: u64,
    limit: u32,
) -> Result<ReadAuditResponse, tonic::Status> {
    client
        .read_audit(ReadAuditRequest {
            signed_message: domain.message.clone(),
            signature: domain.signature.clone(),
            after,
            limit,
        })
        .await
        .map(|r| r.into_inner())
}

fn entry(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_entries_are_kept_in_order_and_read_by_listed_hosts_and_the_manager()
-> anyhow::Result<()> {
    let mut ttp = Ttp::new()?;
    let alice = ttp.manager("alice")?;
    ttp.manager("bob")?;
    ttp.host("db1", true)?;
    ttp.host("db2", true)?;
    ttp.host("db4", true)?;
    ttp.start(300)?;
    let domain = register(&ttp, &alice, domain_id(1), &[("db1", RW), ("db2", RO)]).await?;
    let second = register(&ttp, &alice, domain_id(2), &[("db2", RO)]).await?;

    let ro = lease(&ttp, "db2", &domain, Mode::ReadOnly).await?;
    let mut db2 = ttp.client("db2").await?;
    assert_eq!(
        append(
            &mut db2,
            &domain,
            &ro,
            vec![entry("a"), entry("b"), entry("c")]
        )
        .await?,
        (3, 3)
    );
    assert_eq!(
        append(&mut db2, &domain, &ro, vec![entry("d"), entry("e")]).await?,
        (2, 5)
    );
    // A read-write holder may send entries too; nothing at all is fine.
    let rw = lease(&ttp, "db1", &domain, Mode::ReadWrite).await?;
    let mut db1 = ttp.client("db1").await?;
    assert_eq!(
        append(&mut db1, &domain, &rw, vec![entry("f")]).await?,
        (1, 6)
    );
    assert_eq!(append(&mut db1, &domain, &rw, Vec::new()).await?, (0, 6));
    // Another domain numbers its own.
    let ro2 = lease(&ttp, "db2", &second, Mode::ReadOnly).await?;
    assert_eq!(
        append(&mut db2, &second, &ro2, vec![entry("x")]).await?,
        (1, 1)
    );

    // Read back in order, with host and time, by a listed host.
    let all = read(&mut db2, &domain, 0, 0).await?;
    assert!(!all.more);
    let texts: Vec<&[u8]> = all.entries.iter().map(|e| e.entry.as_slice()).collect();
    assert_eq!(texts, [b"a", b"b", b"c", b"d", b"e", b"f"]);
    let sequences: Vec<u64> = all.entries.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, [1, 2, 3, 4, 5, 6]);
    let hosts: Vec<&str> = all.entries.iter().map(|e| e.host.as_str()).collect();
    assert_eq!(hosts, ["db2", "db2", "db2", "db2", "db2", "db1"]);
    assert!(all.entries.iter().all(|e| e.received_unix > 0));
    // Paged.
    let page = read(&mut db1, &domain, 2, 2).await?;
    assert_eq!(
        page.entries.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [3, 4]
    );
    assert!(page.more);
    assert!(read(&mut db1, &domain, 6, 10).await?.entries.is_empty());
    // By the domain's manager; the other domain apart.
    let mut manager = ttp.client("alice").await?;
    assert_eq!(read(&mut manager, &domain, 0, 100).await?.entries.len(), 6);
    let other = read(&mut manager, &second, 0, 100).await?;
    assert_eq!(other.entries.len(), 1);
    assert_eq!(other.entries[0].entry, b"x");

    // Not to another manager, an unlisted host, a forged signature, an absurd limit.
    let mut bob = ttp.client("bob").await?;
    let status = refusal(read(&mut bob, &domain, 0, 0).await);
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("not the manager"), "{status:?}");
    let mut db4 = ttp.client("db4").await?;
    assert_eq!(
        code(read(&mut db4, &domain, 0, 0).await),
        Code::PermissionDenied
    );
    let mut forged = Domain {
        id: domain.id,
        message: domain.message.clone(),
        signature: domain.signature.clone(),
    };
    forged.signature[0] ^= 1;
    assert_eq!(
        code(read(&mut db2, &forged, 0, 0).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(read(&mut db2, &domain, 0, 10_001).await),
        Code::InvalidArgument
    );

    // Appending needs a live lease of the caller on that domain.
    assert_eq!(
        code(append(&mut db4, &domain, &ro, vec![entry("z")]).await),
        Code::NotFound
    );
    assert_eq!(
        code(append(&mut db2, &second, &ro, vec![entry("z")]).await),
        Code::NotFound
    );
    assert_eq!(
        code(append(&mut db2, &domain, &[], vec![entry("z")]).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(append(&mut manager, &domain, &ro, vec![entry("z")]).await),
        Code::PermissionDenied
    );

    // One log line per call, naming the count.
    let log = ttp.log();
    let id = hex::encode(domain.id);
    assert!(
        log.contains(&format!(
            "GRANTED op=append-audit host=db2 domain={id} mode=ro version=- reason=\"stored 3 \
             audit entries (1 to 3),"
        )),
        "{log}"
    );
    assert_eq!(log.matches("GRANTED op=append-audit").count(), 5, "{log}");
    assert!(log.contains("REFUSED op=read-audit host=bob"), "{log}");
    assert!(log.contains("REFUSED op=read-audit host=db4"), "{log}");

    // Durable: still there after a restart.
    ttp.stop()?;
    ttp.start(300)?;
    let mut manager = ttp.client("alice").await?;
    assert_eq!(read(&mut manager, &domain, 0, 0).await?.entries.len(), 6);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_and_the_cap_are_refused_and_the_server_goes_on() -> anyhow::Result<()> {
    let mut ttp = Ttp::new()?;
    let alice = ttp.manager("alice")?;
    ttp.host("db2", true)?;
    ttp.start_with(300, &["--audit-cap", "4K"])?;
    let domain = register(&ttp, &alice, domain_id(1), &[("db2", RO)]).await?;
    let ro = lease(&ttp, "db2", &domain, Mode::ReadOnly).await?;
    let mut db2 = ttp.client("db2").await?;

    // Bounds: an oversized entry, an empty one, too many, too many bytes in all, a
    // message over the transport's limit.
    for entries in [
        vec![vec![1; MAX_AUDIT_ENTRY + 1]],
        vec![Vec::new()],
        vec![vec![1]; MAX_AUDIT_ENTRIES + 1],
        vec![vec![1; MAX_AUDIT_ENTRY]; 13],
    ] {
        let status = refusal(append(&mut db2, &domain, &ro, entries).await);
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    // (A client that sends it anyway: the server refuses it unread.)
    let mut unbounded = ttp.client("db2").await?.max_encoding_message_size(1 << 20);
    let huge = refusal(
        append(
            &mut unbounded,
            &domain,
            &ro,
            vec![vec![1; MAX_AUDIT_ENTRY]; 17],
        )
        .await,
    );
    assert_eq!(huge.code(), Code::OutOfRange, "{huge:?}");

    // The cap: 4 KiB for the domain. Three entries of 1000 bytes fit, a fourth does not;
    // nothing of the refused call is stored, and a smaller one still fits.
    assert_eq!(
        append(&mut db2, &domain, &ro, vec![vec![7; 1000]; 3]).await?,
        (3, 3)
    );
    let status = refusal(append(&mut db2, &domain, &ro, vec![vec![8; 1000]]).await);
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("is full") && status.message().contains("--audit-cap"),
        "{status:?}"
    );
    assert_eq!(
        append(&mut db2, &domain, &ro, vec![vec![9; 100]]).await?,
        (1, 4)
    );
    let all = read(&mut db2, &domain, 0, 0).await?;
    assert_eq!(all.entries.len(), 4);
    assert_eq!(all.entries[3].entry, vec![9; 100]);
    assert!(
        ttp.log().contains(&format!(
            "REFUSED op=append-audit host=db2 domain={} mode=ro version=- code=RESOURCE_EXHAUSTED",
            hex::encode(domain.id)
        )),
        "{}",
        ttp.log()
    );

    // The server still serves.
    let status = db2.host_status(HostStatusRequest {}).await?.into_inner();
    assert_eq!(status.name, "db2");
    assert!(ttp.running());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_audit_answer_stays_inside_the_message_limit() -> anyhow::Result<()> {
    let (ttp, alice) = Ttp::with_hosts(&["db2"], 300)?;
    let domain = register(&ttp, &alice, domain_id(1), &[("db2", RO)]).await?;
    let ro = lease(&ttp, "db2", &domain, Mode::ReadOnly).await?;
    let mut db2 = ttp.client("db2").await?;
    // 40 entries of 8 KiB (320 KiB) in 4 calls: more than one answer can hold.
    for _ in 0..4 {
        append(&mut db2, &domain, &ro, vec![vec![5; MAX_AUDIT_ENTRY]; 10]).await?;
    }
    let mut seen = Vec::new();
    let mut after = 0;
    let mut answers = 0;
    loop {
        let page = read(&mut db2, &domain, after, 0).await?;
        answers += 1;
        assert!(!page.entries.is_empty());
        seen.extend(page.entries.iter().map(|e| e.sequence));
        after = page.entries.last().map(|e| e.sequence).unwrap_or(after);
        if !page.more {
            break;
        }
    }
    assert_eq!(seen, (1..=40).collect::<Vec<u64>>());
    assert!(answers >= 3, "{answers}");
    Ok(())
}
