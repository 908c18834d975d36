//! What the agent needs of the host's TPM, as a small trait: the real [`Tpm`] implements
//! it, and the lease tests use an in-process fake. Nothing here touches tss-esapi.

use std::future::Future;

use zeroize::Zeroizing;

use domfs_proto::ttp::EnrollRequest;

use crate::tpm::{Tpm, TpmError};

pub trait KeyUnwrapper: Send + Sync + 'static {
    /// Whether host keys exist (the agent has enrolled at least once).
    fn has_keys(&self) -> impl Future<Output = Result<bool, TpmError>> + Send;

    /// The evidence for `Enroll` over `nonce`; with `fresh_keys`, new host keys first.
    fn evidence(
        &self,
        nonce: Vec<u8>,
        fresh_keys: bool,
    ) -> impl Future<Output = Result<EnrollRequest, TpmError>> + Send;

    /// Decrypts what the TTP wrapped to the host's PolicyPCR-bound key.
    fn unwrap(
        &self,
        wrapped: Vec<u8>,
    ) -> impl Future<Output = Result<Zeroizing<Vec<u8>>, TpmError>> + Send;
}

impl KeyUnwrapper for Tpm {
    fn has_keys(&self) -> impl Future<Output = Result<bool, TpmError>> + Send {
        Tpm::has_keys(self)
    }

    fn evidence(
        &self,
        nonce: Vec<u8>,
        fresh_keys: bool,
    ) -> impl Future<Output = Result<EnrollRequest, TpmError>> + Send {
        Tpm::enrollment_evidence(self, nonce, fresh_keys)
    }

    fn unwrap(
        &self,
        wrapped: Vec<u8>,
    ) -> impl Future<Output = Result<Zeroizing<Vec<u8>>, TpmError>> + Send {
        Tpm::unwrap(self, wrapped)
    }
}
