//! Query text that is not UTF-8. PostgreSQL checks the strings of a Query,
//! Parse, Bind, Describe, Close or Execute (SQL text, statement and portal
//! names) against the client encoding as it reads them: in UTF8, bad bytes
//! are an ERROR (22021) that fails the transaction (or the batch, up to its
//! Sync) and keeps the connection. The router answers the same way, as a
//! refusal, without forwarding the message: it analyses only UTF-8 text,
//! and a statement it could not analyse must not reach a server (a JWT or
//! read-only session must never run what the router did not check); it
//! keeps statements by name, and reads names as UTF-8 to find them. In the
//! client encodings the router transcodes (`client_encoding.rs`) the text
//! is UTF-8 by now, unless it was not text in that encoding: refused here.

use super::session::Session;
use crate::fanout::copy_split::is_utf8;
use crate::protocol::frontend::invalid_utf8_in_text;
use crate::router::Refusal;

impl Session {
    /// The refusal of a message whose strings are not UTF-8 (see
    /// `invalid_utf8_in_text`), before anything reads it (the router's
    /// readers of SQL text and names end the session at bad UTF-8, as they
    /// would at a malformed message). Inline: it runs for every client
    /// message.
    #[inline]
    pub(super) fn unreadable_text(&self, tag: u8, len: usize) -> Option<Refusal> {
        // This message was checked on arrival, and it and every message
        // after it are plain ASCII: nothing to look at.
        let front = self.front_offset();
        if (self.non_ascii_to <= front && front + len as u64 <= self.checked_to)
            || !matches!(tag, b'Q' | b'P' | b'B' | b'D' | b'C' | b'E')
        {
            return None;
        }
        self.unreadable_text_in(tag, self.cbuf.get(5..len).unwrap_or(&[]))
    }

    /// [`Self::unreadable_text`] of a message `body` anywhere (a batch on
    /// several shards is read whole, ahead of its messages' turns).
    pub(super) fn unreadable_text_in(&self, tag: u8, body: &[u8]) -> Option<Refusal> {
        if let Some(bytes) = invalid_utf8_in_text(tag, body) {
            return Some(self.text_refusal(bytes));
        }
        // Names are only looked up, never analysed: this is about SQL text.
        if matches!(tag, b'Q' | b'P')
            && self.session_routing().foreign_encoding
            && !text_strings_are_ascii(tag, body)
        {
            let client = self.params.get("client_encoding").unwrap_or_default();
            if hides_ascii_in_characters(client) {
                return Some(Refusal {
                    sqlstate: "0A000",
                    message: format!(
                        "pgrouter: query text with characters beyond ASCII is not supported in client_encoding {client} \
                         (its characters may contain bytes the router would read as quotes or backslashes); \
                         HINT: SET client_encoding = 'UTF8'"
                    ),
                });
            }
        }
        None
    }

    /// What PostgreSQL answers for the bad `bytes` when the server reads
    /// the text as UTF-8 (client_encoding UTF8, or SQL_ASCII in a UTF8
    /// database). In another client encoding they are text the server
    /// converts, which the router cannot analyse: refused as unsupported.
    fn text_refusal(&self, bytes: &[u8]) -> Refusal {
        let client = self.params.get("client_encoding").unwrap_or("UTF8");
        let server_reads_utf8 = is_utf8(client)
            || (client.eq_ignore_ascii_case("SQL_ASCII")
                && self.params.get("server_encoding").is_some_and(is_utf8));
        if server_reads_utf8 {
            return invalid_byte_sequence(bytes);
        }
        if let Some(codec) = self.text_codec() {
            return Refusal {
                sqlstate: "0A000",
                message: format!(
                    "pgrouter: text with bytes that are not characters of client_encoding {} \
                     the router reads (see README.md) cannot be analysed",
                    codec.name
                ),
            };
        }
        Refusal {
            sqlstate: "0A000",
            message: format!(
                "pgrouter: query text with bytes that are not UTF-8 (client_encoding {client}) \
                 cannot be analysed; HINT: SET client_encoding = 'UTF8'"
            ),
        }
    }
}

/// Client encodings whose characters may have a second byte in the ASCII
/// range (PostgreSQL's client-only encodings: it converts them before
/// lexing, and never stores them). Text in them that happens to be valid
/// UTF-8 reads differently to the router: in SJIS `E3 81 81 5C` is two
/// characters, while read as UTF-8 it ends in a backslash, so the router
/// and the server would disagree on where a string literal ends, and a
/// statement the router checked would not be the one the server runs.
fn hides_ascii_in_characters(encoding: &str) -> bool {
    const NAMES: &[&str] = &[
        "SJIS",
        "SHIFTJIS",
        "MSKANJI",
        "WIN932",
        "WINDOWS932",
        "SHIFT_JIS_2004",
        "BIG5",
        "WIN950",
        "WINDOWS950",
        "GBK",
        "WIN936",
        "WINDOWS936",
        "CP936",
        "GB18030",
        "UHC",
        "WIN949",
        "WINDOWS949",
        "JOHAB",
    ];
    let name = encoding.trim();
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Whether the SQL strings of a Query (its text) or Parse (its name and
/// text) are plain ASCII. Parse's parameter types after them are binary.
fn text_strings_are_ascii(tag: u8, body: &[u8]) -> bool {
    let strings = if tag == b'P' { 2 } else { 1 };
    body.split(|&b| b == 0).take(strings).all(<[u8]>::is_ascii)
}

/// PostgreSQL's error for bad UTF-8 (`report_invalid_encoding`), word for word.
fn invalid_byte_sequence(bytes: &[u8]) -> Refusal {
    let named: Vec<String> = bytes.iter().map(|b| format!("0x{b:02x}")).collect();
    Refusal {
        sqlstate: "22021",
        message: format!(
            "invalid byte sequence for encoding \"UTF8\": {}",
            named.join(" ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_with_ascii_trail_bytes_are_known_by_any_spelling() {
        for e in ["SJIS", "sjis", " Big5 ", "GB18030", "UHC", "win932"] {
            assert!(hides_ascii_in_characters(e), "{e}");
        }
        for e in ["UTF8", "LATIN1", "EUC_JP", "WIN1252", "SQL_ASCII"] {
            assert!(!hides_ascii_in_characters(e), "{e}");
        }
        assert!(text_strings_are_ascii(
            b'P',
            b"s1\0select 1\0\0\x01\x00\x00\x80\x00"
        ));
        assert!(!text_strings_are_ascii(b'Q', "select 'ぁ'\0".as_bytes()));
    }

    #[test]
    fn names_the_bytes_as_postgresql_does() {
        let r = invalid_byte_sequence(b"\xc3\x28");
        assert_eq!(r.sqlstate, "22021");
        assert_eq!(
            r.message,
            "invalid byte sequence for encoding \"UTF8\": 0xc3 0x28"
        );
    }
}
