//! `domfs-ttp`: the trusted third party of the paper's section V. It holds the master key
//! K_TTP, which never leaves it, registers domains and hosts, and releases a domain key
//! only to an enrolled, approved host named in the domain's manager-signed access list,
//! encrypted to that host's TPM key.
#![deny(unsafe_code)]

pub mod attest;
pub mod wrap;
