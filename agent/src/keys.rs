//! The key material of one lease, as the TPM unwrapped it: the 32-byte domain key and, for
//! a read-write grant, the 32-byte seed of the domain's writer key.
//!
//! Both live in boxed arrays allocated once (a move of the owner moves a pointer, not the
//! bytes) and are zeroized on drop. The type has no `Debug` or `Display`, so it cannot end
//! up in a log line by accident. What this cannot protect: the copies that go out in the
//! gRPC response (prost's encode buffer, hyper's write buffer) are freed without wiping.

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use domfs_proto::KEY_LEN;

/// A key-sized secret in one heap allocation, zeroized on drop.
pub struct SecretKey(Box<[u8; KEY_LEN]>);

impl SecretKey {
    fn from_slice(bytes: &[u8]) -> Option<SecretKey> {
        if bytes.len() != KEY_LEN {
            return None;
        }
        let mut key = Box::new([0u8; KEY_LEN]);
        key.copy_from_slice(bytes);
        Some(SecretKey(key))
    }

    /// A copy for a response; the caller hands it to gRPC.
    pub fn expose_copy(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.to_vec())
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl PartialEq for SecretKey {
    /// Constant time.
    fn eq(&self, other: &SecretKey) -> bool {
        self.0[..].ct_eq(&other.0[..]).into()
    }
}

/// What one lease unlocks.
pub struct DomainKeys {
    pub domain_key: SecretKey,
    /// Present for a read-write grant only.
    pub writer_secret: Option<SecretKey>,
}

/// The unwrapped plaintext had the wrong length for the grant.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the unwrapped key material is {got} bytes, but a {mode} grant carries {want}")]
pub struct BadKeyLength {
    pub got: usize,
    pub want: usize,
    pub mode: &'static str,
}

impl DomainKeys {
    /// Splits the TPM's plaintext: K (read-only) or K ‖ writer seed (read-write).
    pub fn from_unwrapped(plain: &[u8], read_write: bool) -> Result<DomainKeys, BadKeyLength> {
        let (want, mode) = if read_write {
            (2 * KEY_LEN, "read-write")
        } else {
            (KEY_LEN, "read-only")
        };
        let bad = || BadKeyLength {
            got: plain.len(),
            want,
            mode,
        };
        if plain.len() != want {
            return Err(bad());
        }
        let (key, rest) = plain.split_at(KEY_LEN);
        let domain_key = SecretKey::from_slice(key).ok_or_else(bad)?;
        let writer_secret = if read_write {
            Some(SecretKey::from_slice(rest).ok_or_else(bad)?)
        } else {
            None
        };
        Ok(DomainKeys {
            domain_key,
            writer_secret,
        })
    }

    /// Whether both hold the same key material (constant time per key).
    pub fn same_as(&self, other: &DomainKeys) -> bool {
        let writer_same = match (&self.writer_secret, &other.writer_secret) {
            (Some(a), Some(b)) => a == b,
            (None, None) => true,
            _ => false,
        };
        (self.domain_key == other.domain_key) & writer_same
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_by_mode_and_refuses_other_lengths() {
        let plain: Vec<u8> = (0..64).collect();
        let rw = DomainKeys::from_unwrapped(&plain, true).unwrap();
        assert_eq!(*rw.domain_key.expose_copy(), plain[..32].to_vec());
        assert_eq!(
            *rw.writer_secret.as_ref().unwrap().expose_copy(),
            plain[32..].to_vec()
        );
        let ro = DomainKeys::from_unwrapped(&plain[..32], false).unwrap();
        assert!(ro.writer_secret.is_none());
        assert!(DomainKeys::from_unwrapped(&plain, false).is_err());
        assert!(DomainKeys::from_unwrapped(&plain[..32], true).is_err());
        assert!(DomainKeys::from_unwrapped(&[], false).is_err());
        assert!(!rw.same_as(&ro));
        assert!(ro.same_as(&DomainKeys::from_unwrapped(&plain[..32], false).unwrap()));
    }
}
