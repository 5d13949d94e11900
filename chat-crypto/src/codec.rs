//! Minimal length-checked binary encoding for wire messages and pickles.
//!
//! Integers are big-endian; variable-length fields carry a `u32` length prefix. The reader never
//! panics: every read is bounds-checked and returns [`Error::Malformed`].

use zeroize::Zeroizing;

use crate::Error;

/// Appends fields to a buffer. Pickles use [`Writer::secret`] so the buffer is zeroized.
pub(crate) struct Writer {
    buf: Zeroizing<Vec<u8>>,
}

impl Writer {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Zeroizing::new(Vec::with_capacity(capacity)),
        }
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Fixed-size bytes, no length prefix.
    pub(crate) fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// Variable-length bytes with a `u32` length prefix.
    pub(crate) fn var(&mut self, v: &[u8]) -> &mut Self {
        // Every variable field we write is bounded far below 4 GiB by the caller's limits.
        let len = u32::try_from(v.len()).unwrap_or(u32::MAX);
        self.u32(len).raw(v)
    }

    /// A non-secret output (a wire message).
    pub(crate) fn into_vec(mut self) -> Vec<u8> {
        core::mem::take(&mut *self.buf)
    }

    /// A secret output (a pickle), zeroized when dropped.
    pub(crate) fn into_secret(self) -> Zeroizing<Vec<u8>> {
        self.buf
    }
}

/// Reads fields from a byte slice.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    fn err(&self) -> Error {
        Error::Malformed(self.what)
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let (head, tail) = self
            .buf
            .split_at_checked(n)
            .ok_or(Error::Malformed(self.what))?;
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let bytes = self.take(N)?;
        bytes.try_into().map_err(|_| self.err())
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        Ok(u8::from_be_bytes(self.array::<1>()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.array::<4>()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.array::<8>()?))
    }

    /// Variable-length bytes, refusing lengths above `max`.
    pub(crate) fn var(&mut self, max: usize) -> Result<&'a [u8], Error> {
        let len = usize::try_from(self.u32()?).map_err(|_| self.err())?;
        if len > max {
            return Err(self.err());
        }
        self.take(len)
    }

    pub(crate) fn bool(&mut self) -> Result<bool, Error> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.err()),
        }
    }

    /// The unread rest.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.buf)
    }

    /// Checks a `(tag, version)` prefix.
    pub(crate) fn expect_header(&mut self, tag: u8, version: u8) -> Result<(), Error> {
        if self.u8()? != tag {
            return Err(self.err());
        }
        let v = self.u8()?;
        if v != version {
            return Err(Error::UnsupportedVersion(v));
        }
        Ok(())
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(self) -> Result<(), Error> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::Malformed(self.what))
        }
    }
}
