//! `domfs-agent`: the host's secure component (SC in the paper's section V). It enrolls
//! the host's TPM with the TTP, asks the TTP for domain keys, has the TPM unwrap them in a
//! PolicyPCR session, caches them for their lease, and hands them to local mounts over a
//! Unix socket.
#![deny(unsafe_code)]

pub mod tpm;
