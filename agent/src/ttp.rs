//! The agent's side of the TTP: the calls it makes, as a trait ([`TtpApi`]) so the lease
//! logic can be tested against a fake, and the real mTLS client ([`TtpLink`]).
//!
//! The real client's channel is lazy: it connects on the first call and reconnects after
//! a failure by itself, so a TTP that is down when the agent starts, or restarts later,
//! needs no special handling here. Every call carries the endpoint's 30 s timeout.

use std::future::Future;
use std::path::Path;

use tonic::transport::Channel;
use tonic::{Code, Status};

use domfs_proto::MAX_MESSAGE_BYTES;
use domfs_proto::client::{ClientError, TlsFiles, ttp_endpoint};
use domfs_proto::ttp::ttp_client::TtpClient;
use domfs_proto::ttp::{
    AppendAuditRequest, AppendAuditResponse, BeginEnrollmentRequest, CheckpointRequest,
    CheckpointResponse, EnrollRequest, EnrollResponse, GetDomainKeyRequest, GetDomainKeyResponse,
    HostStatusRequest, HostStatusResponse, ReadAuditRequest, ReadAuditResponse,
    ReleaseLeaseRequest, RenewLeaseRequest,
};

use crate::error::AgentError;

/// The TTP calls the agent makes. Errors are gRPC statuses; transport failures arrive as
/// UNAVAILABLE (connect), CANCELLED (timeout) or UNKNOWN, see [`Failure::of`].
pub trait TtpApi: Send + Sync + 'static {
    fn begin_enrollment(&self) -> impl Future<Output = Result<Vec<u8>, Status>> + Send;
    fn enroll(
        &self,
        request: EnrollRequest,
    ) -> impl Future<Output = Result<EnrollResponse, Status>> + Send;
    fn host_status(&self) -> impl Future<Output = Result<HostStatusResponse, Status>> + Send;
    fn get_domain_key(
        &self,
        request: GetDomainKeyRequest,
    ) -> impl Future<Output = Result<GetDomainKeyResponse, Status>> + Send;
    /// The new lease length in seconds.
    fn renew_lease(
        &self,
        lease_id: Vec<u8>,
        domain_id: Vec<u8>,
    ) -> impl Future<Output = Result<u32, Status>> + Send;
    fn release_lease(
        &self,
        lease_id: Vec<u8>,
        domain_id: Vec<u8>,
    ) -> impl Future<Output = Result<(), Status>> + Send;
    /// Anchors a volume (the read-write lease holder).
    fn checkpoint(
        &self,
        request: CheckpointRequest,
    ) -> impl Future<Output = Result<CheckpointResponse, Status>> + Send;
    /// Stores a read-only mount's audit entries.
    fn append_audit(
        &self,
        request: AppendAuditRequest,
    ) -> impl Future<Output = Result<AppendAuditResponse, Status>> + Send;
    fn read_audit(
        &self,
        request: ReadAuditRequest,
    ) -> impl Future<Output = Result<ReadAuditResponse, Status>> + Send;
}

/// How a failed TTP call is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The TTP answered and said no (PERMISSION_DENIED, NOT_FOUND): a lease ends at once.
    Refused,
    /// Anything else: the TTP could not be reached, timed out, or failed internally. A
    /// lease goes on until the grace period runs out.
    Unreachable,
}

impl Failure {
    pub fn of(status: &Status) -> Failure {
        match status.code() {
            Code::PermissionDenied | Code::NotFound => Failure::Refused,
            _ => Failure::Unreachable,
        }
    }
}

/// Whether a status is an answer from the TTP about the request (as opposed to the TTP
/// not answering at all).
pub fn is_answer(status: &Status) -> bool {
    !matches!(
        status.code(),
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Unknown
    )
}

/// The real TTP, over mutual TLS.
#[derive(Clone)]
pub struct TtpLink {
    client: TtpClient<Channel>,
}

impl TtpLink {
    /// Reads the TLS files now (a missing file is a start-up error) but connects lazily.
    /// Must be called inside a tokio runtime.
    pub fn new(url: &str, tls: &TlsFiles) -> Result<TtpLink, ClientError> {
        let channel = ttp_endpoint(url, tls)?.connect_lazy();
        Ok(TtpLink {
            client: TtpClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        })
    }
}

impl TtpApi for TtpLink {
    fn begin_enrollment(&self) -> impl Future<Output = Result<Vec<u8>, Status>> + Send {
        let mut client = self.client.clone();
        async move {
            let response = client.begin_enrollment(BeginEnrollmentRequest {}).await?;
            Ok(response.into_inner().nonce)
        }
    }

    fn enroll(
        &self,
        request: EnrollRequest,
    ) -> impl Future<Output = Result<EnrollResponse, Status>> + Send {
        let mut client = self.client.clone();
        async move { Ok(client.enroll(request).await?.into_inner()) }
    }

    fn host_status(&self) -> impl Future<Output = Result<HostStatusResponse, Status>> + Send {
        let mut client = self.client.clone();
        async move { Ok(client.host_status(HostStatusRequest {}).await?.into_inner()) }
    }

    fn get_domain_key(
        &self,
        request: GetDomainKeyRequest,
    ) -> impl Future<Output = Result<GetDomainKeyResponse, Status>> + Send {
        let mut client = self.client.clone();
        async move { Ok(client.get_domain_key(request).await?.into_inner()) }
    }

    fn renew_lease(
        &self,
        lease_id: Vec<u8>,
        domain_id: Vec<u8>,
    ) -> impl Future<Output = Result<u32, Status>> + Send {
        let mut client = self.client.clone();
        async move {
            let request = RenewLeaseRequest {
                lease_id,
                domain_id,
            };
            Ok(client
                .renew_lease(request)
                .await?
                .into_inner()
                .lease_seconds)
        }
    }

    fn release_lease(
        &self,
        lease_id: Vec<u8>,
        domain_id: Vec<u8>,
    ) -> impl Future<Output = Result<(), Status>> + Send {
        let mut client = self.client.clone();
        async move {
            let request = ReleaseLeaseRequest {
                lease_id,
                domain_id,
            };
            client.release_lease(request).await?;
            Ok(())
        }
    }

    fn checkpoint(
        &self,
        request: CheckpointRequest,
    ) -> impl Future<Output = Result<CheckpointResponse, Status>> + Send {
        let mut client = self.client.clone();
        async move { Ok(client.checkpoint(request).await?.into_inner()) }
    }

    fn append_audit(
        &self,
        request: AppendAuditRequest,
    ) -> impl Future<Output = Result<AppendAuditResponse, Status>> + Send {
        let mut client = self.client.clone();
        async move { Ok(client.append_audit(request).await?.into_inner()) }
    }

    fn read_audit(
        &self,
        request: ReadAuditRequest,
    ) -> impl Future<Output = Result<ReadAuditResponse, Status>> + Send {
        let mut client = self.client.clone();
        async move { Ok(client.read_audit(request).await?.into_inner()) }
    }
}

/// The host's name: the common name of its TLS client certificate, which is what the TTP
/// and the access lists know it by.
pub fn host_name_from_cert(path: &Path) -> Result<String, AgentError> {
    let pem = std::fs::read(path).map_err(|e| AgentError::io("cannot read", path, e))?;
    let bad = |why: String| {
        AgentError::Config(format!(
            "{} is not a usable client certificate: {why}",
            path.display()
        ))
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| bad(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| bad("no common name".into()))?;
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_outages_are_told_apart() {
        assert_eq!(
            Failure::of(&Status::permission_denied("revoked")),
            Failure::Refused
        );
        assert_eq!(
            Failure::of(&Status::not_found("no lease")),
            Failure::Refused
        );
        assert_eq!(
            Failure::of(&Status::unavailable("connect")),
            Failure::Unreachable
        );
        assert_eq!(
            Failure::of(&Status::cancelled("Timeout expired")),
            Failure::Unreachable
        );
        assert_eq!(Failure::of(&Status::internal("db")), Failure::Unreachable);
        assert!(is_answer(&Status::failed_precondition("held")));
        assert!(!is_answer(&Status::unavailable("down")));
    }
}
