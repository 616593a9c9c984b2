//! Backend messages: the ones the router writes to clients itself, and typed
//! views of the ones it reads from servers.

use bytes::{BufMut, BytesMut};

use super::reader::Reader;
use super::ProtocolError;

/// Writes a tagged message whose body `f` fills in; the length is patched after.
pub fn put_message(out: &mut BytesMut, tag: u8, f: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let len_at = out.len();
    out.put_i32(0);
    f(out);
    let len = (out.len() - len_at) as i32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

pub fn authentication_ok(out: &mut BytesMut) {
    put_message(out, b'R', |b| b.put_i32(0));
}

pub fn authentication_cleartext(out: &mut BytesMut) {
    put_message(out, b'R', |b| b.put_i32(3));
}

pub fn authentication_md5(out: &mut BytesMut, salt: [u8; 4]) {
    put_message(out, b'R', |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    });
}

pub fn authentication_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    put_message(out, b'R', |b| {
        b.put_i32(10);
        for m in mechanisms {
            put_cstr(b, m);
        }
        b.put_u8(0);
    });
}

pub fn authentication_sasl_continue(out: &mut BytesMut, data: &[u8]) {
    put_message(out, b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

pub fn authentication_sasl_final(out: &mut BytesMut, data: &[u8]) {
    put_message(out, b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    put_message(out, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    put_message(out, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    put_message(out, b'Z', |b| b.put_u8(status));
}

pub fn command_complete(out: &mut BytesMut, tag: &str) {
    put_message(out, b'C', |b| put_cstr(b, tag));
}

/// Tells a client that asked for a newer minor protocol version that 3.0 is
/// what it gets, and which `_pq_.` options were not recognised.
pub fn negotiate_protocol_version(out: &mut BytesMut, minor: i32, unknown: &[String]) {
    put_message(out, b'v', |b| {
        b.put_i32(minor);
        b.put_i32(unknown.len() as i32);
        for o in unknown {
            put_cstr(b, o);
        }
    });
}

/// Severity of an error the router reports itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

pub fn error_response(out: &mut BytesMut, severity: Severity, sqlstate: &str, message: &str) {
    let sev = match severity {
        Severity::Error => "ERROR",
        Severity::Fatal => "FATAL",
    };
    put_message(out, b'E', |b| {
        b.put_u8(b'S');
        put_cstr(b, sev);
        b.put_u8(b'V');
        put_cstr(b, sev);
        b.put_u8(b'C');
        put_cstr(b, sqlstate);
        b.put_u8(b'M');
        put_cstr(b, message);
        b.put_u8(0);
    });
}

/// The router's refusal as the server raised it (`RAISE` in a DO block,
/// known by its routine field), remade as the router makes its own errors:
/// severity ERROR, its SQLSTATE and message, without the PL/pgSQL context
/// and source fields of the raise. False (nothing written) for any other
/// error: a 25P02 when the transaction had failed before is the server's
/// own, as PostgreSQL would answer it. The bytes are copied, not decoded
/// (the server may have converted the message to the client's encoding).
pub fn remake_raised_error(out: &mut BytesMut, body: &[u8]) -> bool {
    let (mut code, mut message, mut raised) = (None, None, false);
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        let Some(end) = (kind != 0).then(|| memchr::memchr(0, tail)).flatten() else {
            break;
        };
        let value = &tail[..end];
        match kind {
            b'C' => code = Some(value),
            b'M' => message = Some(value),
            b'R' => raised = value == b"exec_stmt_raise",
            _ => {}
        }
        rest = &tail[end + 1..];
    }
    let (Some(code), Some(message), true) = (code, message, raised) else {
        return false;
    };
    put_message(out, b'E', |b| {
        for (kind, value) in [
            (b'S', &b"ERROR"[..]),
            (b'V', b"ERROR"),
            (b'C', code),
            (b'M', message),
        ] {
            b.put_u8(kind);
            b.put_slice(value);
            b.put_u8(0);
        }
        b.put_u8(0);
    });
    true
}

/// The fields of an ErrorResponse or NoticeResponse the router cares about.
#[derive(Debug, Default, Clone)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
    /// The server function that raised it (`R`), e.g. `RevalidateCachedQuery`.
    pub routine: String,
}

pub fn parse_error_fields(body: &[u8]) -> Result<ErrorFields, ProtocolError> {
    let mut r = Reader::new(body);
    let mut fields = ErrorFields::default();
    loop {
        let kind = r.u8()?;
        if kind == 0 {
            return Ok(fields);
        }
        let value = r.cstr_lossy()?;
        match kind {
            b'V' => fields.severity = value.to_string(),
            b'S' if fields.severity.is_empty() => fields.severity = value.to_string(),
            b'C' => fields.code = value.to_string(),
            b'M' => fields.message = value.to_string(),
            b'R' => fields.routine = value.to_string(),
            _ => {}
        }
    }
}

/// An authentication request from a server.
#[derive(Debug)]
pub enum AuthRequest<'a> {
    Ok,
    Cleartext,
    Md5([u8; 4]),
    Sasl(Vec<&'a str>),
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    Other(i32),
}

pub fn parse_auth_request(body: &[u8]) -> Result<AuthRequest<'_>, ProtocolError> {
    let mut r = Reader::new(body);
    Ok(match r.i32()? {
        0 => AuthRequest::Ok,
        3 => AuthRequest::Cleartext,
        5 => {
            let s = r.bytes(4)?;
            AuthRequest::Md5([s[0], s[1], s[2], s[3]])
        }
        10 => {
            let mut mechs = Vec::new();
            loop {
                let m = r.cstr()?;
                if m.is_empty() {
                    break;
                }
                mechs.push(m);
            }
            AuthRequest::Sasl(mechs)
        }
        11 => AuthRequest::SaslContinue(r.remaining()),
        12 => AuthRequest::SaslFinal(r.remaining()),
        other => AuthRequest::Other(other),
    })
}

/// A ParameterStatus body: name and value.
pub fn parse_parameter_status(body: &[u8]) -> Result<(&str, &str), ProtocolError> {
    let mut r = Reader::new(body);
    Ok((r.cstr()?, r.cstr()?))
}

pub fn parse_complete(out: &mut BytesMut) {
    put_message(out, b'1', |_| {});
}

pub fn close_complete(out: &mut BytesMut) {
    put_message(out, b'3', |_| {});
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_round_trips() {
        let mut out = BytesMut::new();
        error_response(&mut out, Severity::Fatal, "08P01", "bad");
        assert_eq!(out[0], b'E');
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
        let f = parse_error_fields(&out[5..]).unwrap();
        assert_eq!(
            (f.severity.as_str(), f.code.as_str(), f.message.as_str()),
            ("FATAL", "08P01", "bad")
        );
    }

    #[test]
    fn a_raised_refusal_is_remade_as_the_routers_own_error() {
        let raised = b"SERROR\0VERROR\0C25006\0Mpgrouter: no\0WPL/pgSQL function inline_code_block line 1 at RAISE\0Fpl_exec.c\0L3911\0Rexec_stmt_raise\0\0";
        let mut out = BytesMut::new();
        assert!(remake_raised_error(&mut out, raised));
        let mut own = BytesMut::new();
        error_response(&mut own, Severity::Error, "25006", "pgrouter: no");
        assert_eq!(out, own);
        // Any other error is the server's: left alone.
        let aborted = b"SERROR\0VERROR\0C25P02\0Mcurrent transaction is aborted\0Fpostgres.c\0L1100\0Rexec_simple_query\0\0";
        assert!(!remake_raised_error(&mut out, aborted));
        assert!(!remake_raised_error(
            &mut out,
            b"SERROR\0Rexec_stmt_raise\0\0"
        ));
        assert!(!remake_raised_error(&mut out, b"Mno end"));
        assert_eq!(out, own);
    }

    #[test]
    fn auth_requests_parse() {
        assert!(matches!(
            parse_auth_request(&[0, 0, 0, 5, 1, 2, 3, 4]).unwrap(),
            AuthRequest::Md5([1, 2, 3, 4])
        ));
        assert!(parse_auth_request(&[0, 0, 0, 5, 1]).is_err());
        match parse_auth_request(b"\0\0\0\x0aSCRAM-SHA-256\0\0").unwrap() {
            AuthRequest::Sasl(m) => assert_eq!(m, vec!["SCRAM-SHA-256"]),
            other => panic!("{other:?}"),
        }
    }
}
