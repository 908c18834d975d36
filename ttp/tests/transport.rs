//! Who may talk to the TTP at all, and what malformed or oversized requests get.

mod common;

use common::*;
use domfs_proto::MAX_MESSAGE_BYTES;
use domfs_proto::client::TlsFiles;
use domfs_proto::ttp::ttp_client::TtpClient;
use domfs_proto::ttp::{
    BeginEnrollmentRequest, EnrollRequest, GetDomainKeyRequest, HostState, HostStatusRequest, Mode,
    RegisterDomainRequest, RenewLeaseRequest, UpdateAccessListRequest,
};
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

async fn host_status(tls: &TlsFiles, url: &str) -> Result<(), tonic::Status> {
    let mut client = match domfs_proto::client::connect_ttp(url, tls).await {
        Ok(client) => client,
        // Refused during the handshake: as good as refused at the first call.
        Err(e) => return Err(tonic::Status::unavailable(e.to_string())),
    };
    client.host_status(HostStatusRequest {}).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_certificate_of_this_ca_are_refused_at_the_first_call()
-> anyhow::Result<()> {
    let mut ttp = Ttp::new()?;
    let good = ttp.issue("db1", "host")?;
    let other = Ttp::new()?;
    let foreign = other.issue("db1", "host")?;
    ttp.start(300)?;

    // No client certificate at all.
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&good.ca)?))
        .domain_name("127.0.0.1");
    let bare = Endpoint::from_shared(ttp.url.clone())?.tls_config(config)?;
    let refused = match bare.connect().await {
        Ok(channel) => TtpClient::new(channel)
            .host_status(HostStatusRequest {})
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(refused, "a client without a certificate got an answer");

    // A certificate from another TTP's CA (trusting ours for the server).
    let mixed = TlsFiles {
        ca: good.ca.clone(),
        ..foreign
    };
    assert!(host_status(&mixed, &ttp.url).await.is_err());

    // The right one works, and the server kept serving through the refusals.
    host_status(&good, &ttp.url).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_wants_its_role() -> anyhow::Result<()> {
    let mut ttp = Ttp::new()?;
    let manager = ttp.manager("alice")?;
    ttp.host("db1", true)?;
    ttp.start(300)?;
    let mut host = ttp.client("db1").await?;
    let mut mgr = ttp.client("alice").await?;
    let (message, signature) = signed(&manager, domain_id(1), 1, b"m", &[("db1", RW)])?;

    let status = refusal(
        host.register_domain(RegisterDomainRequest {
            signed_message: message.clone(),
            signature: signature.clone(),
            manager_key: manager.verifying_key().to_bytes().to_vec(),
        })
        .await,
    );
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("manager certificate"),
        "{status:?}"
    );
    assert_eq!(
        code(
            host.update_access_list(UpdateAccessListRequest {
                signed_message: message.clone(),
                signature: signature.clone(),
            })
            .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            mgr.get_domain_key(GetDomainKeyRequest {
                signed_message: message,
                signature,
                mode: Mode::ReadOnly as i32,
            })
            .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(mgr.begin_enrollment(BeginEnrollmentRequest {}).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(mgr.host_status(HostStatusRequest {}).await),
        Code::PermissionDenied
    );
    let status = host.host_status(HostStatusRequest {}).await?.into_inner();
    assert_eq!(status.name, "db1");
    assert_eq!(status.state, HostState::Approved as i32);
    assert!(ttp.log().contains("REFUSED op=get-domain-key host=alice"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_nonces_are_checked_before_the_evidence() -> anyhow::Result<()> {
    let mut ttp = Ttp::new()?;
    ttp.issue("db9", "host")?;
    ttp.start(300)?;
    let mut host = ttp.client("db9").await?;
    let status = host.host_status(HostStatusRequest {}).await?.into_inner();
    assert_eq!(status.state, HostState::Unknown as i32);

    // No nonce outstanding.
    let status = refusal(
        host.enroll(EnrollRequest {
            nonce: vec![0; 32],
            ..Default::default()
        })
        .await,
    );
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("BeginEnrollment"), "{status:?}");

    let nonce = host
        .begin_enrollment(BeginEnrollmentRequest {})
        .await?
        .into_inner()
        .nonce;
    assert_eq!(nonce.len(), 32);
    // A wrong nonce uses the real one up.
    let mut wrong = nonce.clone();
    wrong[0] ^= 1;
    let request = |nonce: Vec<u8>| EnrollRequest {
        nonce,
        ..Default::default()
    };
    assert_eq!(
        code(host.enroll(request(wrong)).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(host.enroll(request(nonce)).await),
        Code::PermissionDenied
    );
    // Malformed: a nonce of the wrong size, oversized evidence.
    assert_eq!(
        code(host.enroll(request(vec![1; 5])).await),
        Code::InvalidArgument
    );
    let nonce = host
        .begin_enrollment(BeginEnrollmentRequest {})
        .await?
        .into_inner()
        .nonce;
    let oversized = EnrollRequest {
        nonce,
        quote_info: vec![0; 2000],
        ..Default::default()
    };
    assert_eq!(code(host.enroll(oversized).await), Code::InvalidArgument);
    assert!(ttp.log().contains("REFUSED op=enroll host=db9"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_are_refused_and_the_server_goes_on() -> anyhow::Result<()>
{
    let mut ttp = Ttp::new()?;
    ttp.host("db1", true)?;
    ttp.start(300)?;
    let mut host = ttp.client("db1").await?;
    let get = |message: Vec<u8>, signature: Vec<u8>, mode: i32| GetDomainKeyRequest {
        signed_message: message,
        signature,
        mode,
    };
    assert_eq!(
        code(
            host.get_domain_key(get(b"garbage".to_vec(), vec![0; 64], 1))
                .await
        ),
        Code::InvalidArgument
    );
    // Over 48 KiB but under the transport limit: refused by the service.
    assert_eq!(
        code(
            host.get_domain_key(get(vec![0; 60 * 1024], vec![0; 64], 1))
                .await
        ),
        Code::InvalidArgument
    );
    // Over the transport limit: refused unread by the server (this client would not
    // even send it, so lift its own limit).
    let mut unlimited = ttp
        .client("db1")
        .await?
        .max_encoding_message_size(usize::MAX);
    let huge = code(
        unlimited
            .get_domain_key(get(vec![0; MAX_MESSAGE_BYTES + 1], vec![0; 64], 1))
            .await,
    );
    assert!(
        matches!(
            huge,
            Code::ResourceExhausted | Code::OutOfRange | Code::InvalidArgument
        ),
        "{huge:?}"
    );
    let manager_key = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let (message, _) = signed(&manager_key, domain_id(3), 1, b"m", &[("db1", RO)])?;
    assert_eq!(
        code(
            host.get_domain_key(get(message.clone(), vec![0; 63], 1))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            host.get_domain_key(get(message.clone(), vec![0; 64], 0))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            host.get_domain_key(get(message.clone(), vec![0; 64], 7))
                .await
        ),
        Code::InvalidArgument
    );
    // Well-formed, but the domain was never registered.
    assert_eq!(
        code(host.get_domain_key(get(message, vec![0; 64], 1)).await),
        Code::NotFound
    );
    assert_eq!(
        code(
            host.renew_lease(RenewLeaseRequest {
                lease_id: vec![1; 3],
                domain_id: vec![0; 16],
            })
            .await
        ),
        Code::InvalidArgument
    );
    // Still serving, on the same connection and on a new one.
    host.host_status(HostStatusRequest {}).await?;
    ttp.client("db1")
        .await?
        .host_status(HostStatusRequest {})
        .await?;
    Ok(())
}
