//! The wire formats the domfs binaries share:
//!
//! - the gRPC services of the TTP (`domfs.ttp.v1`: [`ttp`]) and of the host agent
//!   (`domfs.agent.v1`: [`agent`]), generated from `proto/domfs/**.proto`;
//! - the domain manager's signed access list ([`acl`]), which the volume header carries
//!   and the TTP checks before it releases a key (the paper's section V, step 1).
#![forbid(unsafe_code)]

pub mod acl;
pub mod client;

/// The generated code, in modules that follow the proto packages (so that the agent's
/// messages can name `domfs.ttp.v1` types); use it through [`ttp`] and [`agent`].
#[allow(clippy::all, missing_docs)]
pub mod pb {
    pub mod domfs {
        pub mod ttp {
            pub mod v1 {
                tonic::include_proto!("domfs.ttp.v1");
            }
        }
        pub mod agent {
            pub mod v1 {
                tonic::include_proto!("domfs.agent.v1");
            }
        }
    }
}

/// `domfs.ttp.v1`: key release, enrollment, domain registration, volume checkpoints and
/// remote audit entries, and the operator's admin service.
pub use pb::domfs::ttp::v1 as ttp;

/// `domfs.agent.v1`: what a mount daemon asks of its host's agent.
pub use pb::domfs::agent::v1 as agent;

/// The largest gRPC message either side accepts (decoded), in bytes: the biggest
/// legitimate one carries a 48 KiB signed message.
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024;

/// The RSA-OAEP label the TTP wraps domain keys under and the TPM unwraps them with. The
/// TPM wants a label that ends in a NUL byte, and the same bytes on both sides.
pub const KEY_WRAP_LABEL: &[u8] = b"domfs domain key v1\0";

/// Length of a domain key and of a writer key seed.
pub const KEY_LEN: usize = 32;

/// Length of a checkpoint's root pointer (physical block, generation, tag), in bytes.
pub const CHECKPOINT_ROOT_LEN: usize = 48;
/// Length of a checkpoint's audit head (the MAC of the last audit entry), in bytes.
pub const AUDIT_HEAD_LEN: usize = 32;

/// The largest audit entry AppendAudit takes, in bytes.
pub const MAX_AUDIT_ENTRY: usize = 8 * 1024;
/// The most entries one AppendAudit call takes.
pub const MAX_AUDIT_ENTRIES: usize = 1024;
/// The most entry bytes one AppendAudit call takes in all: the request must stay within
/// [`MAX_MESSAGE_BYTES`], so a daemon batches by this as well as by count.
pub const MAX_AUDIT_BATCH: usize = 96 * 1024;

/// Whether one AppendAudit call's entries keep the bounds above (the agent checks before
/// forwarding, the TTP again on arrival); the refusal's text if not.
pub fn check_audit_batch(entries: &[Vec<u8>]) -> Result<(), String> {
    if entries.len() > MAX_AUDIT_ENTRIES {
        return Err(format!(
            "{} audit entries in one call (at most {MAX_AUDIT_ENTRIES})",
            entries.len()
        ));
    }
    if let Some((i, entry)) = entries
        .iter()
        .enumerate()
        .find(|(_, e)| e.is_empty() || e.len() > MAX_AUDIT_ENTRY)
    {
        return Err(format!(
            "audit entry {i} of {} bytes (1 to {MAX_AUDIT_ENTRY})",
            entry.len()
        ));
    }
    let total: usize = entries.iter().map(Vec::len).sum();
    if total > MAX_AUDIT_BATCH {
        return Err(format!(
            "{total} bytes of audit entries in one call (at most {MAX_AUDIT_BATCH})"
        ));
    }
    Ok(())
}
/// The most entries one ReadAudit answer holds (also the limit a request may ask for).
pub const MAX_AUDIT_READ: u32 = 10_000;
