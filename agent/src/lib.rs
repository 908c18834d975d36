//! `domfs-agent`: the host's secure component (SC in the paper's section V). It enrolls
//! the host's TPM with the TTP, asks the TTP for domain keys, has the TPM unwrap them in a
//! PolicyPCR session, caches them for their lease, and hands them to local mounts over a
//! Unix socket.
//!
//! ## Map
//!
//! - [`server`]: `serve` and `enroll` assembled; [`server::run`] serves a bound socket.
//! - [`service`]: the gRPC service: caller check ([`peer`]), logging, hand-off to [`agent`].
//! - [`agent`]: the key decisions: cache or TTP, MODE_BEST, TPM unwrap, release; and
//!   Checkpoint, AppendAudit and ReadAudit forwarded to the TTP under the mount's lease.
//! - [`leases`]: the lease table and its rules (sharing, exclusivity, renewal, grace).
//! - [`renew`]: the background renewal task.
//! - [`enroll`]: enrollment with the TTP.
//! - [`ttp`] and [`unwrapper`]: the TTP and the TPM as the agent sees them (traits).
//! - [`keys`]: the key material, zeroized on drop.
//! - [`socket`], [`logging`], [`error`]: the socket file, the log, the error type.
//! - [`tpm`]: the host's TPM through tss-esapi.
#![deny(unsafe_code)]

pub mod swtpm;
pub mod tpm;

pub mod agent;
pub mod enroll;
pub mod error;
#[cfg(test)]
mod fakes;
pub mod keys;
pub mod leases;
pub mod logging;
pub mod peer;
pub mod renew;
pub mod server;
pub mod service;
pub mod socket;
pub mod ttp;
pub mod unwrapper;

pub use error::AgentError;
