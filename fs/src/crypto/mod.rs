//! The cryptography of a domain volume: the domain key and its subkeys ([`keys`]),
//! AES-256-XTS over whole sectors ([`xts`]), and the sealed block format that puts them
//! together, encrypt-then-MAC ([`block`]).
//!
//! Only constructions live here; the primitives are RustCrypto's (`aes`, `hmac`, `sha2`,
//! `hkdf`). Each construction is tested against a published vector (IEEE 1619, RFC 4231,
//! RFC 5869) in `fs/tests/vectors.rs`.

pub mod block;
pub mod keys;
pub mod writer;
pub mod xts;

pub use block::BlockCodec;
pub use keys::{DomainKey, MacKey, VolumeKeys};
pub use writer::WriterKeys;
pub use xts::Xts256;
