//! Message framing: a one-byte tag followed by a big-endian length that counts
//! itself but not the tag.

use super::ProtocolError;

/// Where the first complete message of a buffer lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    /// Tag + length + body.
    pub total_len: usize,
}

impl Frame {
    /// The body of this frame inside `buf` (which starts at the frame).
    pub fn body<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(5..self.total_len).unwrap_or(&[])
    }
}

/// Finds the first message in `buf`. `Ok(None)` means more bytes are needed.
/// A length below 4 or above `max_len` is a protocol violation, detected from
/// the header alone so an oversize message is refused before it is buffered.
/// `max_len` is a session's `max_message_size`; see [`next_frame_within`]
/// for other limits. Inlined: it runs several times per message, and the
/// error paths are kept out of line (`bad_length`, `oversize`).
#[inline]
pub fn next_frame(buf: &[u8], max_len: usize) -> Result<Option<Frame>, ProtocolError> {
    next_frame_within(buf, max_len, "max_message_size")
}

/// [`next_frame`] with a limit other than `max_message_size`; `limit` names
/// it in the error, so a client refused during login is not told about a
/// setting that did not apply.
#[inline]
pub fn next_frame_within(
    buf: &[u8],
    max_len: usize,
    limit: &str,
) -> Result<Option<Frame>, ProtocolError> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };
    let tag = header[0];
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 {
        return Err(bad_length(len));
    }
    let len = len as usize;
    if len > max_len {
        return Err(oversize(len, max_len, limit));
    }
    let total_len = len + 1;
    if buf.len() < total_len {
        return Ok(None);
    }
    Ok(Some(Frame { tag, total_len }))
}

#[cold]
#[inline(never)]
fn bad_length(len: i32) -> ProtocolError {
    ProtocolError::violation(format!("invalid message length {len}"))
}

#[cold]
#[inline(never)]
fn oversize(len: usize, max_len: usize, limit: &str) -> ProtocolError {
    ProtocolError::violation(format!(
        "message of {len} bytes exceeds {limit} ({max_len} bytes)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_need_whole_messages() {
        assert_eq!(next_frame(b"Q\0\0", 100).unwrap(), None);
        assert_eq!(next_frame(b"Q\0\0\0\x06a", 100).unwrap(), None);
        let f = next_frame(b"Q\0\0\0\x06a\0rest", 100).unwrap().unwrap();
        assert_eq!(
            f,
            Frame {
                tag: b'Q',
                total_len: 7
            }
        );
        assert_eq!(f.body(b"Q\0\0\0\x06a\0rest"), b"a\0");
    }

    #[test]
    fn oversize_errors_name_the_limit_that_applied() {
        let err = next_frame(b"Q\0\0\x10\0", 100).unwrap_err().to_string();
        assert!(
            err.contains("message of 4096 bytes exceeds max_message_size (100 bytes)"),
            "{err}"
        );
        let err = next_frame_within(b"p\0\0\x10\0", 100, "the login message limit")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("exceeds the login message limit (100 bytes)") && !err.contains("max_"),
            "{err}"
        );
    }

    #[test]
    fn bad_lengths_are_violations() {
        assert!(next_frame(b"Q\0\0\0\x03", 100).is_err());
        assert!(next_frame(b"Q\xff\xff\xff\xff", 100).is_err());
        assert!(next_frame(b"Q\0\0\x10\0", 100).is_err());
    }
}
