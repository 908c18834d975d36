//! 32-byte secrets (K_TTP, a domain's nonce r, a derived key): boxed once so moves do not
//! leave copies behind, wiped on drop, and never printed (no `Debug`, no `Display`).

use zeroize::Zeroize;

/// A 32-byte secret. The bytes are reachable only through [`Secret32::expose`].
pub struct Secret32(Box<[u8; 32]>);

impl Secret32 {
    /// A secret from the system random number generator.
    pub fn random() -> crate::Result<Secret32> {
        let mut secret = Secret32::zero();
        crate::error::random(secret.0.as_mut_slice())?;
        Ok(secret)
    }

    /// Copies `bytes` (exactly 32) into a new secret.
    pub fn from_slice(bytes: &[u8]) -> Option<Secret32> {
        let mut secret = Secret32::zero();
        if bytes.len() != 32 {
            return None;
        }
        secret.0.copy_from_slice(bytes);
        Some(secret)
    }

    pub(crate) fn zero() -> Secret32 {
        Secret32(Box::new([0u8; 32]))
    }

    pub(crate) fn as_mut(&mut self) -> &mut [u8; 32] {
        &mut self.0
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Drop for Secret32 {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Clone for Secret32 {
    fn clone(&self) -> Secret32 {
        let mut copy = Secret32::zero();
        copy.0.copy_from_slice(self.0.as_slice());
        copy
    }
}

/// A byte buffer that is wiped on drop (the plaintext of a key wrap, a backup).
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn with_capacity(n: usize) -> SecretBytes {
        SecretBytes(Vec::with_capacity(n))
    }

    /// Appends without reallocating when the capacity was reserved up front (a reallocation
    /// would leave an unwiped copy).
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.0.len() + bytes.len() > self.0.capacity() {
            let mut bigger = Vec::with_capacity((self.0.len() + bytes.len()).max(64) * 2);
            bigger.extend_from_slice(&self.0);
            self.0.zeroize();
            self.0 = bigger;
        }
        self.0.extend_from_slice(bytes);
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn from_vec(bytes: Vec<u8>) -> SecretBytes {
        SecretBytes(bytes)
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_slice_wants_32_bytes() {
        assert!(Secret32::from_slice(&[1; 31]).is_none());
        assert!(Secret32::from_slice(&[1; 33]).is_none());
        assert_eq!(
            Secret32::from_slice(&[7; 32]).map(|s| *s.expose()),
            Some([7; 32])
        );
    }

    #[test]
    fn secret_bytes_grow_keeps_content() {
        let mut b = SecretBytes::with_capacity(2);
        b.extend(&[1, 2]);
        b.extend(&[3; 100]);
        assert_eq!(b.expose().len(), 102);
        assert_eq!(&b.expose()[..3], &[1, 2, 3]);
    }
}
