//! The wire formats the domfs binaries share:
//!
//! - the gRPC services of the TTP (`domfs.ttp.v1`: [`ttp`]) and of the host agent
//!   (`domfs.agent.v1`: [`agent`]), generated from `proto/domfs/**.proto`;
//! - the domain manager's signed access list ([`acl`]), which the volume header carries
//!   and the TTP checks before it releases a key (the paper's section V, step 1).
#![forbid(unsafe_code)]

pub mod acl;
pub mod client;

/// `domfs.ttp.v1`: key release, enrollment, domain registration, and the operator's admin
/// service.
#[allow(clippy::all, missing_docs)]
pub mod ttp {
    tonic::include_proto!("domfs.ttp.v1");
}

/// `domfs.agent.v1`: what a mount daemon asks of its host's agent.
#[allow(clippy::all, missing_docs)]
pub mod agent {
    tonic::include_proto!("domfs.agent.v1");
}

/// The largest gRPC message either side accepts (decoded), in bytes: the biggest
/// legitimate one carries a 48 KiB signed message.
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024;

/// The RSA-OAEP label the TTP wraps domain keys under and the TPM unwraps them with. The
/// TPM wants a label that ends in a NUL byte, and the same bytes on both sides.
pub const KEY_WRAP_LABEL: &[u8] = b"domfs domain key v1\0";

/// Length of a domain key and of a writer key seed.
pub const KEY_LEN: usize = 32;
