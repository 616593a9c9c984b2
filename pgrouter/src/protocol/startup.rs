//! The untagged first packet of a connection: StartupMessage, SSLRequest,
//! GSSENCRequest or CancelRequest.

use super::reader::Reader;
use super::ProtocolError;

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

/// Startup packets are small; anything bigger is not a PostgreSQL client.
pub const MAX_STARTUP_LEN: usize = 10_000;

#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    Ssl,
    GssEnc,
    Cancel {
        pid: i32,
        secret: i32,
    },
    Startup {
        minor: i32,
        params: Vec<(String, String)>,
    },
}

/// Reads the first packet if `buf` holds it whole: `Ok(Some((packet, len)))`.
pub fn parse_startup(buf: &[u8]) -> Result<Option<(StartupPacket, usize)>, ProtocolError> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if !(8..=MAX_STARTUP_LEN as i32).contains(&len) {
        return Err(ProtocolError::violation(format!(
            "invalid startup packet length {len}"
        )));
    }
    let len = len as usize;
    let Some(packet) = buf.get(4..len) else {
        return Ok(None);
    };
    let mut r = Reader::new(packet);
    let code = r.i32()?;
    let parsed = match code {
        SSL_REQUEST => StartupPacket::Ssl,
        GSSENC_REQUEST => StartupPacket::GssEnc,
        CANCEL_REQUEST => StartupPacket::Cancel {
            pid: r.i32()?,
            secret: r.i32()?,
        },
        code if code >> 16 == 3 => {
            let mut params = Vec::new();
            loop {
                let k = r.cstr()?;
                if k.is_empty() {
                    break;
                }
                let v = r.cstr()?;
                params.push((k.to_string(), v.to_string()));
            }
            StartupPacket::Startup {
                minor: code & 0xffff,
                params,
            }
        }
        other => {
            return Err(ProtocolError {
                sqlstate: "0A000",
                message: format!(
                    "unsupported frontend protocol {}.{}: server supports 3.0",
                    other >> 16,
                    other & 0xffff
                ),
            })
        }
    };
    Ok(Some((parsed, len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frontend::startup_message;
    use bytes::BytesMut;

    #[test]
    fn parses_startup_and_ssl() {
        let mut b = BytesMut::new();
        startup_message(&mut b, &[("user", "u"), ("database", "d")]);
        let (p, n) = parse_startup(&b).unwrap().unwrap();
        assert_eq!(n, b.len());
        assert_eq!(
            p,
            StartupPacket::Startup {
                minor: 0,
                params: vec![("user".into(), "u".into()), ("database".into(), "d".into())]
            }
        );
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        assert_eq!(parse_startup(&ssl).unwrap().unwrap().0, StartupPacket::Ssl);
        assert_eq!(parse_startup(&ssl[..5]).unwrap(), None);
    }

    #[test]
    fn refuses_garbage() {
        assert!(parse_startup(b"\xff\xff\xff\xff").is_err());
        assert!(parse_startup(b"\0\0\0\x09\0\x09\0\0x").is_err());
        assert!(parse_startup(b"\0\0\0\x0c\0\x03\0\0abcd").is_err()); // unterminated
    }
}
