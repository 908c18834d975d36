//! `domfs-ttp`: the trusted third party of the paper's section V. It holds the master key
//! K_TTP, which never leaves it, registers domains and hosts, and releases a domain key
//! only to an enrolled, approved host named in the domain's manager-signed access list,
//! encrypted to that host's TPM key.
//!
//! The map, bottom-up:
//!
//! - [`state`]: the state directory (K_TTP, CA, server certificate, registry, socket, log);
//! - [`pki`]: the CA, certificate issue, and the caller's name and role from its certificate;
//! - [`records`], [`nonces`], [`registry`]: what the TTP remembers, crash-safe, with the
//!   domains' r in a file that is overwritten in place when a domain is destroyed;
//! - [`derive`]: K and the writer key from K_TTP; [`attest`] and [`wrap`]: the TPM side;
//! - [`core`] with [`enroll`], [`domains`], [`release`], [`checkpoint`] (volume anchors)
//!   and [`remote_audit`] (read-only hosts' audit entries, kept in [`audit_store`]): the
//!   decisions, each logged by [`decision_log`] and refused with a [`refusal::Refusal`];
//! - [`service`] and [`admin_service`]: the gRPC services; [`admin`]: the operator's
//!   commands, reaching the server over its socket or the registry directly
//!   ([`admin_client`]); [`backup`];
//! - [`server`]: `run(listener, shutdown)`, the daemon as a library.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admin_client;
pub mod admin_service;
pub mod attest;
pub mod audit_store;
pub mod backup;
pub mod checkpoint;
pub mod core;
pub mod decision_log;
pub mod derive;
pub mod domains;
pub mod enroll;
mod error;
pub mod leases;
pub mod nonces;
pub mod pki;
pub mod records;
pub mod refusal;
pub mod registry;
pub mod release;
pub mod remote_audit;
pub mod secret;
pub mod server;
pub mod service;
pub mod state;
pub mod wrap;

pub use error::{Error, Result};
