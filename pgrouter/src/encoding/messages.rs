//! The text strings of client messages (Query, Parse, Bind, Describe,
//! Close, Execute: SQL text, statement and portal names), transcoded to
//! UTF-8 as they arrive and back to the client's encoding as they go to a
//! server. Everything else (parameter values, COPY data) is the client's
//! bytes throughout: the server converts it, the router does not read it
//! as text (shard keys among parameters are decoded where they are read).

use bytes::{BufMut, BytesMut};

use super::ClientCodec;

/// The body of a client message with its strings in UTF-8: Ok(None) when
/// it needs none (not a message with text, or all ASCII), Err when a
/// string is not text in `codec` (or none the router can write back as the
/// same bytes).
pub fn decode_message(
    codec: &ClientCodec,
    tag: u8,
    body: &[u8],
) -> Result<Option<Vec<u8>>, NotText> {
    convert_body(tag, body, |s| codec.decode(s).map(String::into_bytes)).transpose()
}

/// A string of a client message that is not text in the session's encoding.
#[derive(Debug, PartialEq, Eq)]
pub struct NotText;

/// Writes the strings of every client message in `buf` (whole messages,
/// as queued for a server) in `codec`'s encoding. Text the router wrote
/// itself may have characters the encoding lacks (a statement prepared in
/// another encoding, re-prepared here): such a statement is replaced by
/// one that fails with 0A000 in its place, and such a name by one that
/// names nothing, so the client gets an error, never other text.
pub fn encode_messages(codec: &ClientCodec, buf: &mut BytesMut) {
    if buf.is_ascii() {
        return;
    }
    let mut out: Option<BytesMut> = None;
    let mut at = 0;
    while let Some(len) = frame_len(&buf[at..]) {
        let tag = buf[at];
        let body = &buf[at + 5..at + len];
        let converted = convert_body(tag, body, |s| codec.encode(std::str::from_utf8(s).ok()?))
            .map(|r| r.unwrap_or_else(|NotText| refused(codec, tag, body)));
        match (converted, &mut out) {
            (Some(new), out) => {
                let out = out.get_or_insert_with(|| BytesMut::from(&buf[..at]));
                out.put_u8(tag);
                out.put_i32(new.len() as i32 + 4);
                out.put_slice(&new);
            }
            (None, Some(out)) => out.put_slice(&buf[at..at + len]),
            (None, None) => {}
        }
        at += len;
    }
    if let Some(mut out) = out {
        out.put_slice(&buf[at..]);
        *buf = out;
    }
}

/// The whole length of the message at the start of `buf`, if all there.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let len = i32::from_be_bytes(buf.get(1..5)?.try_into().ok()?);
    let total = usize::try_from(len).ok()? + 1;
    (total >= 5 && buf.len() >= total).then_some(total)
}

/// Where a message's text strings are: bytes before them, and how many.
fn text_strings(tag: u8) -> Option<(usize, usize)> {
    match tag {
        b'Q' | b'E' => Some((0, 1)),
        b'P' | b'B' => Some((0, 2)),
        b'D' | b'C' => Some((1, 1)),
        _ => None,
    }
}

/// `body` with its text strings passed through `convert`: None when there
/// is nothing to convert, Err when `convert` failed on one.
fn convert_body(
    tag: u8,
    body: &[u8],
    convert: impl Fn(&[u8]) -> Option<Vec<u8>>,
) -> Option<Result<Vec<u8>, NotText>> {
    let (skip, count) = text_strings(tag)?;
    let mut strings = Vec::with_capacity(count);
    let mut end = skip;
    for _ in 0..count {
        let len = memchr::memchr(0, body.get(end..)?)?;
        strings.push(&body[end..end + len]);
        end += len + 1;
    }
    if strings.iter().all(|s| s.is_ascii()) {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() + body.len() / 2);
    out.extend_from_slice(&body[..skip]);
    for s in strings {
        let Some(converted) = convert(s) else {
            return Some(Err(NotText));
        };
        out.extend_from_slice(&converted);
        out.push(0);
    }
    out.extend_from_slice(&body[end..]);
    Some(Ok(out))
}

/// What goes to the server instead of a message whose text `codec`
/// cannot carry: a statement raising 0A000 (a Parse keeps its parameter
/// types, so the client's Bind still fits), or a name nothing has.
fn refused(codec: &ClientCodec, tag: u8, body: &[u8]) -> Vec<u8> {
    const NAME: &[u8] = b"pgrouter: a name client_encoding cannot carry";
    let statement = format!(
        "DO $pgrouter$BEGIN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', \
         MESSAGE = 'pgrouter: text with characters client_encoding {} cannot carry'; END$pgrouter$",
        codec.name
    );
    let encoded_name = |name: &[u8]| -> Vec<u8> {
        std::str::from_utf8(name)
            .ok()
            .and_then(|n| codec.encode(n))
            .unwrap_or_else(|| NAME.to_vec())
    };
    let mut parts = body.splitn(3, |&b| b == 0);
    let mut out = Vec::new();
    match tag {
        b'Q' => out.extend_from_slice(statement.as_bytes()),
        b'P' => {
            out.extend(encoded_name(parts.next().unwrap_or_default()));
            out.push(0);
            parts.next();
            out.extend_from_slice(statement.as_bytes());
            out.push(0);
            out.extend_from_slice(parts.next().unwrap_or_default());
            return out;
        }
        b'D' | b'C' => {
            out.push(body[0]);
            out.extend_from_slice(NAME);
            out.push(0);
            return out;
        }
        _ => {
            // Bind (portal, statement) or Execute (portal): names only.
            let strings = if tag == b'B' { 2 } else { 1 };
            let rest_at = body
                .iter()
                .enumerate()
                .filter(|(_, &b)| b == 0)
                .nth(strings - 1)
                .map_or(body.len(), |(i, _)| i + 1);
            for name in body[..rest_at].split(|&b| b == 0).take(strings) {
                out.extend(encoded_name(name));
                out.push(0);
            }
            out.extend_from_slice(&body[rest_at..]);
            return out;
        }
    }
    out.push(0);
    out
}

/// A ParameterStatus body (name, value) in `codec`'s encoding, in UTF-8.
pub fn parameter_status(codec: &ClientCodec, body: &[u8]) -> Option<(String, String)> {
    let mut parts = body.split(|&b| b == 0);
    let name = codec.decode(parts.next()?)?;
    let value = codec.decode(parts.next()?)?;
    Some((name, value))
}
