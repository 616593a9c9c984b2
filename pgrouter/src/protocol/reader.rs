//! A cursor over a message body that never panics on short or bad input.

use super::ProtocolError;

pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The message must end here: bytes after its last field are a
    /// violation (PostgreSQL would refuse them, keeping the connection).
    pub fn end(&self, message: &str) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        Err(ProtocolError::violation(format!(
            "invalid {message} message: {} bytes after its last field",
            self.buf.len()
        )))
    }

    pub fn u8(&mut self) -> Result<u8, ProtocolError> {
        let (&b, rest) = self.buf.split_first().ok_or_else(short)?;
        self.buf = rest;
        Ok(b)
    }

    pub fn i16(&mut self) -> Result<i16, ProtocolError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, ProtocolError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(short());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// Steps over a NUL-terminated string without reading it (no UTF-8
    /// check): for a message that is checked for its shape and passed on.
    #[inline]
    pub fn skip_cstr(&mut self) -> Result<(), ProtocolError> {
        let end = match self.buf.first() {
            Some(0) => 0,
            _ => memchr::memchr(0, self.buf)
                .ok_or_else(|| ProtocolError::violation("unterminated string in message"))?,
        };
        self.buf = &self.buf[end + 1..];
        Ok(())
    }

    /// A NUL-terminated string in any encoding, bytes that are not UTF-8
    /// replaced: a server's error text is in the session's client
    /// encoding, which need not be UTF8.
    pub fn cstr_lossy(&mut self) -> Result<std::borrow::Cow<'a, str>, ProtocolError> {
        let end = memchr::memchr(0, self.buf)
            .ok_or_else(|| ProtocolError::violation("unterminated string in message"))?;
        let s = String::from_utf8_lossy(&self.buf[..end]);
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// A NUL-terminated string, which must be UTF-8. Inline for the empty
    /// name (the unnamed statement or portal), the common case: several
    /// are read per request.
    #[inline]
    pub fn cstr(&mut self) -> Result<&'a str, ProtocolError> {
        if let Some((0, rest)) = self.buf.split_first() {
            self.buf = rest;
            return Ok("");
        }
        self.nonempty_cstr()
    }

    /// [`Self::cstr`] of a string with at least one byte before its NUL.
    #[inline(never)]
    fn nonempty_cstr(&mut self) -> Result<&'a str, ProtocolError> {
        let end = memchr::memchr(0, self.buf)
            .ok_or_else(|| ProtocolError::violation("unterminated string in message"))?;
        let s = std::str::from_utf8(&self.buf[..end])
            .map_err(|_| ProtocolError::violation("invalid UTF-8 in message"))?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }
}

fn short() -> ProtocolError {
    ProtocolError::violation("message shorter than its contents")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_and_refuses_short_input() {
        let mut r = Reader::new(b"ab\0\0\0\0\x07\x01");
        assert_eq!(r.cstr().unwrap(), "ab");
        assert_eq!(r.i32().unwrap(), 7);
        assert!(r.i32().is_err());
        assert!(Reader::new(b"abc").cstr().is_err());
        assert!(Reader::new(b"\xff\0").cstr().is_err());
        // Empty strings (unnamed statements and portals) take a shortcut.
        let mut r = Reader::new(b"\0x\0\0");
        assert_eq!(r.cstr().unwrap(), "");
        assert_eq!(r.cstr().unwrap(), "x");
        assert_eq!(r.cstr().unwrap(), "");
        assert!(r.cstr().is_err());
    }
}
