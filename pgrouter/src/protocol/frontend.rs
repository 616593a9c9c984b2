//! Frontend messages: writers for what the router sends to servers, and typed
//! views of the client messages the router must understand.

use bytes::{BufMut, BytesMut};

use super::backend::{put_cstr, put_message};
use super::reader::Reader;
use super::ProtocolError;

/// Protocol 3.0 as a startup code.
pub const PROTOCOL_3_0: i32 = 196_608;

pub fn startup_message(out: &mut BytesMut, params: &[(&str, &str)]) {
    let len_at = out.len();
    out.put_i32(0);
    out.put_i32(PROTOCOL_3_0);
    for (k, v) in params {
        put_cstr(out, k);
        put_cstr(out, v);
    }
    out.put_u8(0);
    let len = (out.len() - len_at) as i32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn password_message(out: &mut BytesMut, password: &str) {
    put_message(out, b'p', |b| put_cstr(b, password));
}

pub fn sasl_initial_response(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    put_message(out, b'p', |b| {
        put_cstr(b, mechanism);
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    });
}

pub fn sasl_response(out: &mut BytesMut, data: &[u8]) {
    put_message(out, b'p', |b| b.put_slice(data));
}

pub fn query(out: &mut BytesMut, sql: &str) {
    put_message(out, b'Q', |b| put_cstr(b, sql));
}

pub fn sync(out: &mut BytesMut) {
    put_message(out, b'S', |_| {});
}

/// Bind of the unnamed statement to the unnamed portal with no parameters,
/// then Execute of it: the router's own one-off statements.
pub fn bind_execute_unnamed(out: &mut BytesMut) {
    put_message(out, b'B', |b| {
        b.put_u8(0);
        b.put_u8(0);
        b.put_i16(0);
        b.put_i16(0);
        b.put_i16(0);
    });
    put_message(out, b'E', |b| {
        b.put_u8(0);
        b.put_i32(0);
    });
}

/// Execute of `portal`, all rows.
pub fn write_execute(out: &mut BytesMut, portal: &str) {
    put_message(out, b'E', |b| {
        put_cstr(b, portal);
        b.put_i32(0);
    });
}

pub fn terminate(out: &mut BytesMut) {
    put_message(out, b'X', |_| {});
}

pub fn cancel_request(out: &mut BytesMut, pid: i32, secret: i32) {
    out.put_i32(16);
    out.put_i32(80_877_102);
    out.put_i32(pid);
    out.put_i32(secret);
}

/// The body of a SASLInitialResponse: mechanism and its data.
pub fn parse_sasl_initial(body: &[u8]) -> Result<(&str, &[u8]), ProtocolError> {
    let mut r = Reader::new(body);
    let mech = r.cstr()?;
    let len = r.i32()?;
    let data = if len < 0 {
        &[][..]
    } else {
        r.bytes(len as usize)?
    };
    Ok((mech, data))
}

/// The body of a PasswordMessage holding a cleartext or md5 password.
pub fn parse_password(body: &[u8]) -> Result<&str, ProtocolError> {
    Reader::new(body).cstr()
}

/// The SQL text of a simple Query message: one string filling the body
/// (bytes after its NUL would reach the server as a malformed message).
pub fn parse_query(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut r = Reader::new(body);
    let sql = r.cstr()?;
    r.end("Query")?;
    Ok(sql)
}

/// For a Query, Parse, Bind, Describe, Close or Execute whose strings
/// (SQL text, statement and portal names) are not all UTF-8, the bytes
/// PostgreSQL names in its 22021 error ("invalid byte sequence for
/// encoding"): it checks each string as it reads it (a Parse's statement
/// name, then its text; a Bind's portal, then its statement; the name
/// after a Describe's or Close's kind byte), and names the character the
/// first bad byte starts, by that byte's length, cut at the string's end.
/// None when the strings are UTF-8. The message's layout was checked
/// before (`check_message`).
///
/// Inline: it runs for several messages of every request, and most have
/// nothing to check (the unnamed statement and portal).
#[inline]
pub fn invalid_utf8_in_text(tag: u8, body: &[u8]) -> Option<&[u8]> {
    let unnamed = match tag {
        b'E' => body.first() == Some(&0),
        b'D' | b'C' => body.get(1) == Some(&0),
        b'B' => body.starts_with(&[0, 0]),
        b'Q' | b'P' => false,
        _ => return None,
    };
    if unnamed {
        return None;
    }
    invalid_utf8_in_strings(tag, body)
}

/// [`invalid_utf8_in_text`] of a message with a name or SQL text.
fn invalid_utf8_in_strings(tag: u8, body: &[u8]) -> Option<&[u8]> {
    let (skip, strings) = match tag {
        b'Q' | b'E' => (0, 1),
        b'P' | b'B' => (0, 2),
        b'D' | b'C' => (1, 1),
        _ => return None,
    };
    let body = body.get(skip..)?;
    // The strings end at their last NUL. Plain ASCII, nearly always (an
    // empty name is one NUL), needs no closer look.
    let mut end = 0;
    for _ in 0..strings {
        // An empty name (the unnamed statement or portal) is most names:
        // one byte, not worth memchr's set-up.
        if body.get(end) == Some(&0) {
            end += 1;
            continue;
        }
        match memchr::memchr(0, &body[end..]) {
            Some(at) => end += at + 1,
            None => {
                end = body.len();
                break;
            }
        }
    }
    let strings_part = &body[..end];
    if strings_part.is_ascii() {
        return None;
    }
    strings_part
        .split(|&b| b == 0)
        .take(strings)
        .find_map(invalid_utf8_bytes)
}

/// The bytes PostgreSQL would name for the first invalid UTF-8 in `s`.
fn invalid_utf8_bytes(s: &[u8]) -> Option<&[u8]> {
    let rest = &s[std::str::from_utf8(s).err()?.valid_up_to()..];
    let len = utf8_char_len(rest[0]).min(rest.len());
    Some(&rest[..len])
}

/// A UTF-8 character's length by its first byte, as PostgreSQL's
/// `pg_utf_mblen` reads it (a byte no character starts with counts as one).
fn utf8_char_len(first: u8) -> usize {
    match first {
        b if b & 0xe0 == 0xc0 => 2,
        b if b & 0xf0 == 0xe0 => 3,
        b if b & 0xf8 == 0xf0 => 4,
        _ => 1,
    }
}

/// Checks the layout of a client message the router may pass on without
/// reading it whole (Query, Parse, Bind, Execute, Describe, Close, Sync,
/// Flush, Terminate, CopyDone, CopyFail, FunctionCall): PostgreSQL answers
/// a malformed one with an ERROR and keeps the connection, where the router
/// must end it (08P01). One pass over the fixed fields, no allocation; a
/// string is only searched for its end (UTF-8 is checked where the router
/// reads it). Done once per message as it arrives, so the analyses that
/// read a Query or Parse several times need not check again. CopyData is
/// opaque.
#[inline(always)]
pub fn check_message(tag: u8, body: &[u8]) -> Result<(), ProtocolError> {
    check_message_text(tag, body).map(|_| ())
}

/// [`check_message`], and whether the strings [`invalid_utf8_in_text`]
/// would look at are plain ASCII (true for a message with none): then
/// they are UTF-8 in every encoding the router reads, and the message
/// needs no closer look for unreadable text (`client/unreadable_text.rs`).
/// Found in the same pass: the strings were just searched for their ends.
#[inline(always)]
pub fn check_message_text(tag: u8, body: &[u8]) -> Result<bool, ProtocolError> {
    let mut r = Reader::new(body);
    // The strings: from `text_from` up to what is left after the last one.
    let mut text_from = 0;
    let mut text_left = body.len();
    let name = match tag {
        b'Q' => {
            r.skip_cstr()?;
            text_left = r.remaining().len();
            "Query"
        }
        b'P' => {
            r.skip_cstr()?;
            r.skip_cstr()?;
            text_left = r.remaining().len();
            let types = count(&mut r, "Parse")?;
            r.bytes(4 * types)?;
            "Parse"
        }
        b'B' => {
            r.skip_cstr()?;
            r.skip_cstr()?;
            text_left = r.remaining().len();
            skip_values(&mut r, "Bind")?;
            skip_formats(&mut r, "Bind")?;
            "Bind"
        }
        b'E' => {
            r.skip_cstr()?;
            text_left = r.remaining().len();
            r.i32()?;
            "Execute"
        }
        b'D' | b'C' => {
            target_kind(&mut r)?;
            text_from = 1;
            r.skip_cstr()?;
            text_left = r.remaining().len();
            if tag == b'D' {
                "Describe"
            } else {
                "Close"
            }
        }
        b'f' => {
            r.skip_cstr()?;
            "CopyFail"
        }
        b'F' => {
            r.i32()?; // the function's OID
            skip_values(&mut r, "FunctionCall")?;
            r.i16()?; // the result's format
            "FunctionCall"
        }
        b'S' => "Sync",
        b'H' => "Flush",
        b'X' => "Terminate",
        b'c' => "CopyDone",
        _ => return Ok(true),
    };
    r.end(name)?;
    // Mostly empty names (one NUL each): no call for those.
    Ok(
        match &body[text_from.min(body.len())..body.len() - text_left] {
            [] | [0] | [0, 0] => true,
            text => text.is_ascii(),
        },
    )
}

/// Skips format codes then values with their lengths (-1 = NULL), as in
/// Bind and FunctionCall. Several format codes must be one per value.
#[inline]
fn skip_values(r: &mut Reader<'_>, message: &str) -> Result<(), ProtocolError> {
    let formats = skip_formats(r, message)?;
    let values = count(r, message)?;
    if formats > 1 && formats != values {
        return Err(ProtocolError::violation(format!(
            "{message} message has {formats} parameter formats but {values} parameters"
        )));
    }
    for _ in 0..values {
        let len = r.i32()?;
        if len < -1 {
            return Err(ProtocolError::violation(format!(
                "invalid value length {len} in {message} message"
            )));
        }
        if len > 0 {
            r.bytes(len as usize)?;
        }
    }
    Ok(())
}

/// Skips a count of format codes and the codes; returns the count.
#[inline]
fn skip_formats(r: &mut Reader<'_>, message: &str) -> Result<usize, ProtocolError> {
    let n = count(r, message)?;
    r.bytes(2 * n)?;
    Ok(n)
}

/// An Int16 count, which cannot be negative.
fn count(r: &mut Reader<'_>, message: &str) -> Result<usize, ProtocolError> {
    let n = r.i16()?;
    if n < 0 {
        return Err(ProtocolError::violation(format!(
            "negative count in {message} message"
        )));
    }
    Ok(n as usize)
}

/// A Parse message: statement name, SQL text, parameter type OIDs.
#[derive(Debug, PartialEq, Eq)]
pub struct ParseMsg<'a> {
    pub name: &'a str,
    pub sql: &'a str,
    pub param_types: Vec<i32>,
}

pub fn parse_parse(body: &[u8]) -> Result<ParseMsg<'_>, ProtocolError> {
    let mut r = Reader::new(body);
    let name = r.cstr()?;
    let sql = r.cstr()?;
    let n = r.i16()?;
    if n < 0 {
        return Err(ProtocolError::violation(
            "negative parameter count in Parse",
        ));
    }
    let mut param_types = Vec::with_capacity(n as usize);
    for _ in 0..n {
        param_types.push(r.i32()?);
    }
    r.end("Parse")?;
    Ok(ParseMsg {
        name,
        sql,
        param_types,
    })
}

pub fn write_parse(out: &mut BytesMut, name: &str, sql: &str, param_types: &[i32]) {
    put_message(out, b'P', |b| {
        put_cstr(b, name);
        put_cstr(b, sql);
        b.put_i16(param_types.len() as i16);
        for t in param_types {
            b.put_i32(*t);
        }
    });
}

/// The two names at the start of a Bind body; `rest` is everything after
/// them (formats, parameter values, result formats), passed through untouched.
pub struct BindNames<'a> {
    pub portal: &'a str,
    pub statement: &'a str,
    pub rest: &'a [u8],
}

pub fn parse_bind_names(body: &[u8]) -> Result<BindNames<'_>, ProtocolError> {
    let mut r = Reader::new(body);
    let portal = r.cstr()?;
    let statement = r.cstr()?;
    Ok(BindNames {
        portal,
        statement,
        rest: r.remaining(),
    })
}

pub fn write_bind(out: &mut BytesMut, portal: &str, statement: &str, rest: &[u8]) {
    put_message(out, b'B', |b| {
        put_cstr(b, portal);
        put_cstr(b, statement);
        b.put_slice(rest);
    });
}

/// Describe and Close both name a statement ('S') or a portal ('P').
pub fn parse_target(body: &[u8]) -> Result<(u8, &str), ProtocolError> {
    let mut r = Reader::new(body);
    let target = parse_target_fields(&mut r)?;
    r.end("Describe/Close")?;
    Ok(target)
}

#[inline]
fn parse_target_fields<'a>(r: &mut Reader<'a>) -> Result<(u8, &'a str), ProtocolError> {
    let kind = target_kind(r)?;
    Ok((kind, r.cstr()?))
}

/// A Describe's or Close's kind byte: 'S' (statement) or 'P' (portal).
#[inline]
fn target_kind(r: &mut Reader<'_>) -> Result<u8, ProtocolError> {
    let kind = r.u8()?;
    if kind != b'S' && kind != b'P' {
        return Err(ProtocolError::violation(format!(
            "invalid Describe/Close target '{}'",
            kind as char
        )));
    }
    Ok(kind)
}

pub fn write_target(out: &mut BytesMut, tag: u8, kind: u8, name: &str) {
    put_message(out, tag, |b| {
        b.put_u8(kind);
        put_cstr(b, name);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_invalid_utf8_as_postgresql_does() {
        let bad = |tag, body: &[u8]| invalid_utf8_in_text(tag, body).map(<[u8]>::to_vec);
        assert_eq!(bad(b'Q', b"SELECT '\xc3\xa9'\0"), None);
        assert_eq!(bad(b'Q', b"SELECT 'a\xff'\0"), Some(b"\xff".to_vec()));
        // A lead byte names as many bytes as its character would have...
        assert_eq!(
            bad(b'Q', b"SELECT 'a\xc3\x28b'\0"),
            Some(b"\xc3\x28".to_vec())
        );
        assert_eq!(
            bad(b'Q', b"'\xed\xa0\x80'\0"),
            Some(b"\xed\xa0\x80".to_vec())
        );
        // ... cut at the end of the string.
        assert_eq!(bad(b'Q', b"x\xf0\x9f\0"), Some(b"\xf0\x9f".to_vec()));
        // A Parse: its name, then its text; not the parameter types.
        assert_eq!(
            bad(b'P', b"s\xfe\0SELECT '\xff'\0\0\0"),
            Some(b"\xfe".to_vec())
        );
        assert_eq!(
            bad(b'P', b"s\0SELECT '\xe9'\0\0\0"),
            Some(b"\xe9'".to_vec())
        );
        assert_eq!(bad(b'P', b"s\0SELECT 1\0\0\x01\xff\xff\xff\xff"), None);
        // A Bind: its portal, then its statement; not the values after them.
        assert_eq!(bad(b'B', b"\xff\0\0\0\0\0\0\0\0"), Some(b"\xff".to_vec()));
        assert_eq!(
            bad(b'B', b"p\0s\xc3\x28\0\0\0\0\0\0\0"),
            Some(b"\xc3\x28".to_vec())
        );
        assert_eq!(bad(b'B', b"\0\0\0\0\0\x01\0\0\0\x01\xff\0\0"), None);
        // Describe and Close: the name after the kind byte; Execute: its portal.
        assert_eq!(bad(b'D', b"Ss\xff\0"), Some(b"\xff".to_vec()));
        assert_eq!(bad(b'C', b"P\xe2\x82\0"), Some(b"\xe2\x82".to_vec()));
        assert_eq!(
            bad(b'E', b"p\xff\0\xff\xff\xff\xff"),
            Some(b"\xff".to_vec())
        );
        assert_eq!(bad(b'E', b"\0\xff\xff\xff\xff"), None);
        assert_eq!(bad(b'S', b""), None);
    }

    /// The one-pass ASCII answer must agree with the closer look: every
    /// message `invalid_utf8_in_text` would find bad text in is non-ASCII,
    /// and bytes outside the strings (types, values, counts) never count.
    #[test]
    fn strings_found_ascii_on_arrival_need_no_closer_look() {
        let ascii = |tag, body: &[u8]| check_message_text(tag, body).unwrap();
        let cases: &[(u8, &[u8], bool)] = &[
            (b'Q', b"SELECT 1\0", true),
            (b'Q', b"SELECT '\xc3\xa9'\0", false),
            (b'Q', b"SELECT 'a\xff'\0", false),
            (b'P', b"s\xfe\0SELECT 1\0\0\0", false),
            (b'P', b"s\0SELECT '\xe9'\0\0\0", false),
            (b'P', b"s\0SELECT 1\0\0\x01\xff\xff\xff\xff", true),
            (b'B', b"\xff\0\0\0\0\0\0\0\0", false),
            (b'B', b"p\0s\xc3\x28\0\0\0\0\0\0\0", false),
            (b'B', b"\0\0\0\0\0\x01\0\0\0\x01\xff\0\0", true),
            (b'D', b"Ss\xff\0", false),
            (b'D', b"S\0", true),
            (b'C', b"P\xe2\x82\0", false),
            (b'E', b"p\xff\0\xff\xff\xff\xff", false),
            (b'E', b"\0\xff\xff\xff\xff", true),
            (b'S', b"", true),
            (b'f', b"\xff\0", true),
        ];
        for (tag, body, want) in cases {
            assert_eq!(ascii(*tag, body), *want, "{} {:?}", *tag as char, body);
            if invalid_utf8_in_text(*tag, body).is_some() {
                assert!(!ascii(*tag, body), "{} {:?}", *tag as char, body);
            }
        }
    }

    #[test]
    fn parse_and_bind_round_trip() {
        let mut out = BytesMut::new();
        write_parse(&mut out, "s1", "select $1", &[23]);
        let p = parse_parse(&out[5..]).unwrap();
        assert_eq!(
            p,
            ParseMsg {
                name: "s1",
                sql: "select $1",
                param_types: vec![23]
            }
        );
        out.clear();
        write_bind(&mut out, "", "s1", b"\0\0\0\0\0\0");
        let b = parse_bind_names(&out[5..]).unwrap();
        assert_eq!(
            (b.portal, b.statement, b.rest),
            ("", "s1", &b"\0\0\0\0\0\0"[..])
        );
        assert!(parse_parse(b"x\0y\0\xff\xff").is_err());
        assert!(parse_parse(b"x\0y\0\0\0z").is_err());
        assert!(parse_target(b"Q\0").is_err());
        assert!(parse_target(b"S\0\0").is_err());
        assert!(parse_query(b"SELECT 1\0").is_ok());
        assert!(parse_query(b"SELECT 1\0xx").is_err());
    }

    #[test]
    fn messages_passed_on_unread_must_be_exact() {
        let ok: &[(u8, &[u8])] = &[
            (b'E', b"\0\0\0\0\0"),
            (b'E', b"p\0\0\0\0\x01"),
            (b'S', b""),
            (b'H', b""),
            (b'X', b""),
            (b'c', b""),
            (b'f', b"why\0"),
            (b'D', b"Ss1\0"),
            (b'C', b"P\0"),
            // Bind: one text format for both, NULL and "5", one result format.
            (
                b'B',
                b"\0s\0\0\x01\0\0\0\x02\xff\xff\xff\xff\0\0\0\x015\0\x01\0\0",
            ),
            (b'B', b"\0\0\0\0\0\0\0\0"),
            (b'd', b"anything"),
            (b'Q', b"SELECT 1\0"),
            // Parse: name, text, two parameter types.
            (b'P', b"s\0SELECT $1, $2\0\0\x02\0\0\0\x17\0\0\0\0"),
            (b'P', b"\0SELECT 1\0\0\0"),
        ];
        for (tag, body) in ok {
            assert!(check_message(*tag, body).is_ok(), "{}", *tag as char);
        }
        let bad: &[(u8, &[u8])] = &[
            (b'E', b"\0\0"),
            (b'E', b"\0\0\0\0\0x"),
            (b'S', b"x"),
            (b'H', b"x"),
            (b'X', b"x"),
            (b'c', b"x"),
            (b'f', b"no nul"),
            (b'D', b"Ss\0x"),
            (b'C', b"Q\0"),
            (b'B', b"\0\0\xff\xff\0\0\0\0"),
            (b'Q', b"SELECT 1\0xx"),
            (b'Q', b"SELECT 1"),
            (b'P', b"\0SELECT 1\0\0\x01"),
            (b'P', b"\0SELECT 1\0\0\0\0"),
            (b'B', b"\0\0\0\0\0\0\0\0x"),
            (b'B', b"\0\0\0\0\0\x01\0\0\0\x09a\0\0"),
            (b'B', b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0"),
            (b'B', b"\0\0\0\x02\0\0\0\0\0\x01\0\0\0\0\0\0"),
        ];
        for (tag, body) in bad {
            assert!(
                check_message(*tag, body).is_err(),
                "{} {body:?}",
                *tag as char
            );
        }
    }
}
