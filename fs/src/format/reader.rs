//! Bounds-checked reading and writing of on-disk records.
//!
//! Every untrusted byte of the container (the domain header, the superblock) is read through
//! one [`Reader`]: each read either returns the bytes it asked for or a [`CodecError`], never
//! panics, and never indexes with a number that came from the input. [`Writer`] has the same
//! primitives in the same encoding (little-endian integers, `u32` length prefixes), so an
//! encoder and its decoder read as mirror images of each other.
//!
//! Errors here carry no context; the caller knows which field it was reading and turns the
//! error into its own variant (`Error::CorruptHeader`, `Error::CorruptSuperblock`).

use std::fmt;

/// A read ran past the end of its input, or a length is over its bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodecError {
    /// `needed` more bytes were asked for than the `remaining` ones.
    Short { needed: usize, remaining: usize },
    /// A length prefix (read or to be written) of `len` is over its bound `max`.
    TooLong { len: u64, max: u64 },
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::Short { needed, remaining } => {
                write!(f, "truncated: {needed} bytes needed, {remaining} left")
            }
            CodecError::TooLong { len, max } => write!(f, "length {len} is over the limit {max}"),
        }
    }
}

impl std::error::Error for CodecError {}

/// A cursor over untrusted bytes.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    /// The bytes not read yet; `position` counts the ones already consumed.
    rest: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    pub fn new(input: &'a [u8]) -> Self {
        Self {
            rest: input,
            position: 0,
        }
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if n > self.rest.len() {
            return Err(CodecError::Short {
                needed: n,
                remaining: self.rest.len(),
            });
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        self.position += n;
        Ok(taken)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(u8::from_le_bytes(self.array()?))
    }

    pub fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A `u32` little-endian length, then that many bytes. A length over `max_len` is refused
    /// before anything is read, so a corrupt length never makes the caller allocate.
    pub fn prefixed_bytes(&mut self, max_len: usize) -> Result<&'a [u8], CodecError> {
        let len = self.u32()?;
        if u64::from(len) > max_len as u64 {
            return Err(CodecError::TooLong {
                len: len.into(),
                max: max_len as u64,
            });
        }
        // `len <= max_len`, a `usize`, so the conversion cannot fail; stay total anyway.
        let len = usize::try_from(len).map_err(|_| CodecError::TooLong {
            len: len.into(),
            max: max_len as u64,
        })?;
        self.bytes(len)
    }

    /// How many bytes are left.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// How many bytes have been read.
    pub fn position(&self) -> usize {
        self.position
    }
}

/// Builds a record with the same primitives as [`Reader`].
#[derive(Clone, Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
        }
    }

    pub fn bytes(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub fn u8(&mut self, v: u8) {
        self.bytes(&v.to_le_bytes());
    }

    pub fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }

    pub fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    /// The mirror of [`Reader::prefixed_bytes`]: refuses (and writes nothing) when `bytes`
    /// is longer than `max_len` or than a `u32` can say.
    pub fn prefixed_bytes(&mut self, bytes: &[u8], max_len: usize) -> Result<(), CodecError> {
        let too_long = CodecError::TooLong {
            len: bytes.len() as u64,
            max: max_len as u64,
        };
        if bytes.len() > max_len {
            return Err(too_long);
        }
        let len = u32::try_from(bytes.len()).map_err(|_| too_long)?;
        self.u32(len);
        self.bytes(bytes);
        Ok(())
    }

    /// Overwrites the `u32` written earlier at byte `at` (a length field whose value is known
    /// only once the record is complete).
    pub fn patch_u32(&mut self, at: usize, v: u32) -> Result<(), CodecError> {
        let remaining = self.buf.len().saturating_sub(at);
        let field = at
            .checked_add(4)
            .and_then(|end| self.buf.get_mut(at..end))
            .ok_or(CodecError::Short {
                needed: 4,
                remaining,
            })?;
        field.copy_from_slice(&v.to_le_bytes());
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests, a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn integers_are_little_endian_and_mirror_the_writer() {
        let mut w = Writer::new();
        w.u8(0x01);
        w.u16(0x0302);
        w.u32(0x0706_0504);
        w.u64(0x0f0e_0d0c_0b0a_0908);
        w.prefixed_bytes(b"abc", 3).unwrap();
        w.bytes(&[0xaa, 0xbb]);
        let bytes = w.into_vec();
        assert_eq!(&bytes[..15], &(1u8..=15).collect::<Vec<_>>()[..]);

        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8(), Ok(0x01));
        assert_eq!(r.u16(), Ok(0x0302));
        assert_eq!(r.u32(), Ok(0x0706_0504));
        assert_eq!(r.u64(), Ok(0x0f0e_0d0c_0b0a_0908));
        assert_eq!(r.position(), 15);
        assert_eq!(r.prefixed_bytes(3), Ok(&b"abc"[..]));
        assert_eq!(r.array::<2>(), Ok([0xaa, 0xbb]));
        assert!(r.is_empty());
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn short_reads_are_errors_and_consume_nothing() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(
            r.u32(),
            Err(CodecError::Short {
                needed: 4,
                remaining: 3
            })
        );
        assert_eq!(
            r.bytes(usize::MAX),
            Err(CodecError::Short {
                needed: usize::MAX,
                remaining: 3
            })
        );
        assert_eq!(r.position(), 0);
        assert_eq!(r.u16(), Ok(0x0201));
        assert_eq!(
            r.u16(),
            Err(CodecError::Short {
                needed: 2,
                remaining: 1
            })
        );
    }

    #[test]
    fn prefixed_lengths_are_bounded() {
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0]);
        assert_eq!(
            r.prefixed_bytes(16),
            Err(CodecError::TooLong {
                len: u32::MAX.into(),
                max: 16
            })
        );
        // Within the bound but beyond the input.
        let mut r = Reader::new(&[5, 0, 0, 0, 1, 2]);
        assert_eq!(
            r.prefixed_bytes(16),
            Err(CodecError::Short {
                needed: 5,
                remaining: 2
            })
        );

        let mut w = Writer::new();
        assert_eq!(
            w.prefixed_bytes(b"abcd", 3),
            Err(CodecError::TooLong { len: 4, max: 3 })
        );
        assert!(w.is_empty());
    }

    #[test]
    fn patch_u32_stays_inside_the_record() {
        let mut w = Writer::new();
        w.u32(0);
        w.u8(9);
        w.patch_u32(1, 0x0403_0201).unwrap();
        assert_eq!(w.as_slice(), &[0, 1, 2, 3, 4]);
        assert!(w.patch_u32(2, 0).is_err());
        assert!(w.patch_u32(usize::MAX, 0).is_err());
        assert_eq!(w.len(), 5);
    }
}
