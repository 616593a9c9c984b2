//! The session's side of client encodings the router transcodes
//! (`crate::encoding`): each client message's strings are read into UTF-8
//! once, as the message arrives, so the rest of the session reads UTF-8 as
//! for any UTF8 client; the server connections it holds write them back
//! (`ServerConn::text_codec`).
//!
//! The encoding is the session's when the message arrives. A client that
//! pipelines text after a `SET client_encoding`, before its answer, has
//! that text read in the encoding before: the server reads it in the new
//! one (documented in README.md).

use bytes::{BufMut, BytesMut};

use super::session::Session;
use crate::encoding::{self, ClientCodec};

impl Session {
    /// The codec of the session's `client_encoding`, when the router
    /// transcodes it (one load: see `ClientParams::codec`).
    #[inline]
    pub(super) fn text_codec(&self) -> Option<&'static ClientCodec> {
        self.params.codec()
    }

    /// Puts the strings of the whole message of `len` bytes at `at` in the
    /// client buffer into UTF-8, in place; returns its new length. The
    /// stream position of what follows moves with it (`client_bytes_in`),
    /// as nothing has read past this message yet.
    ///
    /// A message whose text is not in the encoding (PostgreSQL refuses
    /// most such bytes too) is refused with 0A000 (`unreadable_text.rs`),
    /// never forwarded: its first byte beyond ASCII is made one that no
    /// UTF-8 has, so that text the router cannot read is not taken for
    /// UTF-8 that happens to be valid.
    pub(super) fn transcode_arrived(
        &mut self,
        codec: &ClientCodec,
        at: usize,
        tag: u8,
        len: usize,
    ) -> usize {
        let body = match encoding::decode_message(codec, tag, &self.cbuf[at + 5..at + len]) {
            Ok(Some(body)) => body,
            Ok(None) => return len,
            Err(encoding::NotText) => {
                if let Some(i) = self.cbuf[at + 5..at + len]
                    .iter()
                    .position(|b| !b.is_ascii())
                {
                    self.cbuf[at + 5 + i] = 0xff;
                }
                return len;
            }
        };
        let new_len = body.len() + 5;
        let mut out = BytesMut::with_capacity(self.cbuf.len() + new_len - len);
        out.put_slice(&self.cbuf[..at]);
        out.put_u8(tag);
        out.put_i32(body.len() as i32 + 4);
        out.put_slice(&body);
        out.put_slice(&self.cbuf[at + len..]);
        self.cbuf = out;
        self.client_bytes_in = self.client_bytes_in + new_len as u64 - len as u64;
        new_len
    }
}
