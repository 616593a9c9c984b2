//! Reading whole messages from a client during login.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::SessionEnd;
use crate::net::ClientStream;
use crate::protocol::backend::{error_response, Severity};
use crate::protocol::next_frame_within;

/// Messages during login are small; a bigger one is not a password. It
/// applies whatever `max_message_size` says (that setting is for the
/// session), and is what PostgreSQL allows a password message (65535
/// bytes). A JWT sent as the password must fit in it (README "JWT login").
pub const MAX_LOGIN_MESSAGE: usize = 64 * 1024;

// Every token that fits in a password message gets verified, not refused
// as "too long" by a smaller limit of the verifier.
const _: () = assert!(crate::auth::jwt::MAX_TOKEN_LEN >= MAX_LOGIN_MESSAGE);

pub async fn read_message(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
) -> Result<(u8, Bytes), SessionEnd> {
    loop {
        if let Some(frame) = next_frame_within(buf, MAX_LOGIN_MESSAGE, "the login message limit")? {
            let mut msg = buf.split_to(frame.total_len).freeze();
            msg.advance(5);
            return Ok((frame.tag, msg));
        }
        match stream.read_buf(buf).await {
            Ok(0) => return Err(SessionEnd::ClientGone),
            Ok(_) => {}
            Err(e) => return Err(SessionEnd::ClientIo(e)),
        }
    }
}

pub async fn write_all(stream: &mut ClientStream, bytes: &[u8]) -> Result<(), SessionEnd> {
    stream.write_all(bytes).await.map_err(SessionEnd::ClientIo)
}

/// Tells the client why it is being disconnected. Best effort: the client
/// may already be gone.
pub async fn send_fatal(stream: &mut ClientStream, sqlstate: &str, message: &str) {
    let mut out = BytesMut::new();
    error_response(&mut out, Severity::Fatal, sqlstate, message);
    let _ = crate::timer::timeout(std::time::Duration::from_secs(1), stream.write_all(&out)).await;
}
