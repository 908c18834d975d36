//! The domain's writer key: an Ed25519 key pair the TTP derives per domain. Read-write
//! grants receive the private half and sign every superblock with it; read-only hosts
//! receive only the public half and check it. A read-only host holds the domain key (it
//! must decrypt and verify blocks), so it could compute valid block tags and a valid
//! superblock MAC; what it cannot compute is this signature, so a volume it rewrote is
//! refused everywhere: read-only is enforced by cryptography, not only by a mount flag.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use crate::{Error, Result};

pub const WRITER_SEED_LEN: usize = 32;
pub const WRITER_PUBLIC_LEN: usize = 32;
pub const WRITER_SIGNATURE_LEN: usize = 64;
/// Prepended to what is signed, so the signature means nothing outside a superblock.
const CONTEXT: &[u8] = b"domfs superblock writer v1\0";

/// The public half, and the private half when this host may write.
pub struct WriterKeys {
    verify: VerifyingKey,
    /// Zeroized on drop (ed25519-dalek's `zeroize` feature).
    sign: Option<Box<SigningKey>>,
}

impl std::fmt::Debug for WriterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterKeys")
            .field("public", &hex::encode(self.verify.as_bytes()))
            .field("can_sign", &self.sign.is_some())
            .finish()
    }
}

impl WriterKeys {
    /// Both halves from the 32-byte seed; `public` (as the TTP sent it) must match.
    pub fn signer(seed: &[u8], public: &[u8]) -> Result<Self> {
        let seed: Zeroizing<[u8; WRITER_SEED_LEN]> =
            Zeroizing::new(seed.try_into().map_err(|_| {
                Error::Invalid(format!(
                    "a writer key seed has {WRITER_SEED_LEN} bytes, not {}",
                    seed.len()
                ))
            })?);
        let sign = Box::new(SigningKey::from_bytes(&seed));
        let keys = Self {
            verify: sign.verifying_key(),
            sign: Some(sign),
        };
        if keys.verify.as_bytes()[..] != *public {
            return Err(Error::Invalid(
                "the writer key does not match its public half".into(),
            ));
        }
        Ok(keys)
    }

    /// Only the public half: this host may read, not write.
    pub fn verifier(public: &[u8]) -> Result<Self> {
        let bytes: [u8; WRITER_PUBLIC_LEN] = public.try_into().map_err(|_| {
            Error::Invalid(format!(
                "a writer public key has {WRITER_PUBLIC_LEN} bytes, not {}",
                public.len()
            ))
        })?;
        let verify = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| Error::Invalid("the writer public key is not a valid key".into()))?;
        Ok(Self { verify, sign: None })
    }

    pub fn can_sign(&self) -> bool {
        self.sign.is_some()
    }

    pub fn public(&self) -> [u8; WRITER_PUBLIC_LEN] {
        self.verify.to_bytes()
    }

    /// The signature of `message`, or `None` for a read-only host.
    pub fn sign(&self, message: &[u8]) -> Option<[u8; WRITER_SIGNATURE_LEN]> {
        let key = self.sign.as_ref()?;
        Some(key.sign(&with_context(message)).to_bytes())
    }

    pub fn verify(&self, message: &[u8], signature: &[u8; WRITER_SIGNATURE_LEN]) -> bool {
        self.verify
            .verify_strict(&with_context(message), &Signature::from_bytes(signature))
            .is_ok()
    }
}

fn with_context(message: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(CONTEXT.len() + message.len());
    input.extend_from_slice(CONTEXT);
    input.extend_from_slice(message);
    input
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signer_signs_and_verifier_checks() {
        let seed = [5u8; 32];
        let public = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
        let signer = WriterKeys::signer(&seed, &public).unwrap();
        let verifier = WriterKeys::verifier(&public).unwrap();
        assert!(signer.can_sign() && !verifier.can_sign());
        let sig = signer.sign(b"superblock").unwrap();
        assert!(verifier.verify(b"superblock", &sig));
        assert!(!verifier.verify(b"superblocK", &sig));
        assert!(verifier.sign(b"superblock").is_none());
        assert!(WriterKeys::signer(&seed, &[0u8; 32]).is_err());
        assert!(WriterKeys::verifier(&public[..31]).is_err());
    }
}
