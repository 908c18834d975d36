//! Read-only leases, kept in memory.
//!
//! A read-only lease protects nothing another host could want (any number of hosts may
//! read), so it needs no durable record: it only lets the TTP re-check the grant at each
//! renewal. After a TTP restart the leases are gone and renewals get `NOT_FOUND`; the
//! agent then asks for the key again (which checks everything anew). Read-write leases
//! are in the registry ([`crate::records::RwLease`]).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use domfs_proto::acl::DomainId;

use crate::refusal::Refusal;

/// More outstanding read-only leases than this (after dropping expired ones) is refused
/// with `RESOURCE_EXHAUSTED`: the table cannot grow without bound.
pub const MAX_RO_LEASES: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoLease {
    pub host: String,
    pub domain: DomainId,
    pub expires_unix: u64,
}

#[derive(Default)]
pub struct RoLeases {
    map: Mutex<HashMap<[u8; 16], RoLease>>,
}

impl RoLeases {
    fn lock(&self) -> MutexGuard<'_, HashMap<[u8; 16], RoLease>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, id: [u8; 16], lease: RoLease, now: u64) -> Result<(), Refusal> {
        let mut map = self.lock();
        if map.len() >= MAX_RO_LEASES {
            map.retain(|_, l| l.expires_unix > now);
        }
        if map.len() >= MAX_RO_LEASES {
            return Err(Refusal::new(
                tonic::Code::ResourceExhausted,
                "too many outstanding read-only leases",
            ));
        }
        map.insert(id, lease);
        Ok(())
    }

    pub fn get(&self, id: &[u8; 16]) -> Option<RoLease> {
        self.lock().get(id).cloned()
    }

    /// Extends a lease that still exists.
    pub fn extend(&self, id: &[u8; 16], expires_unix: u64) -> bool {
        match self.lock().get_mut(id) {
            Some(lease) => {
                lease.expires_unix = expires_unix;
                true
            }
            None => false,
        }
    }

    pub fn remove(&self, id: &[u8; 16]) -> Option<RoLease> {
        self.lock().remove(id)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_extend_remove() {
        let leases = RoLeases::default();
        let lease = |host: &str, domain: u8| RoLease {
            host: host.into(),
            domain: [domain; 16],
            expires_unix: 100,
        };
        assert!(leases.insert([1; 16], lease("a", 1), 0).is_ok());
        assert!(leases.insert([2; 16], lease("b", 1), 0).is_ok());
        assert!(leases.extend(&[1; 16], 200));
        assert_eq!(leases.get(&[1; 16]).map(|l| l.expires_unix), Some(200));
        assert!(!leases.extend(&[9; 16], 200));
        assert_eq!(
            leases.remove(&[2; 16]).map(|l| l.host),
            Some("b".to_string())
        );
        assert_eq!(leases.len(), 1);
    }
}
