//! Query text that is not UTF-8. PostgreSQL checks the strings of a Query or
//! Parse against the client encoding as it reads them: in UTF8, bad bytes
//! are an ERROR (22021) that fails the transaction (or the batch, up to its
//! Sync) and keeps the connection. The router answers the same way, as a
//! refusal, without forwarding the message: it analyses only UTF-8 text,
//! and a statement it could not analyse must not reach a server (a JWT or
//! read-only session must never run what the router did not check).

use super::session::Session;
use crate::fanout::copy_split::is_utf8;
use crate::protocol::frontend::invalid_utf8_in_text;
use crate::router::Refusal;

impl Session {
    /// The refusal of a Query or Parse whose strings are not UTF-8, before
    /// anything reads it (the router's readers of SQL text end the session
    /// at bad UTF-8, as they would at a malformed message). Inline: it runs
    /// for every client message.
    #[inline]
    pub(super) fn unreadable_text(&self, tag: u8, len: usize) -> Option<Refusal> {
        if !matches!(tag, b'Q' | b'P') {
            return None;
        }
        self.unreadable_text_in(tag, self.cbuf.get(5..len).unwrap_or(&[]))
    }

    /// [`Self::unreadable_text`] of a message `body` anywhere (a batch on
    /// several shards is read whole, ahead of its messages' turns).
    pub(super) fn unreadable_text_in(&self, tag: u8, body: &[u8]) -> Option<Refusal> {
        let bytes = invalid_utf8_in_text(tag, body)?;
        Some(self.text_refusal(bytes))
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
        Refusal {
            sqlstate: "0A000",
            message: format!(
                "pgrouter: query text with bytes that are not UTF-8 (client_encoding {client}) \
                 cannot be analysed; HINT: SET client_encoding = 'UTF8'"
            ),
        }
    }
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
    fn names_the_bytes_as_postgresql_does() {
        let r = invalid_byte_sequence(b"\xc3\x28");
        assert_eq!(r.sqlstate, "22021");
        assert_eq!(
            r.message,
            "invalid byte sequence for encoding \"UTF8\": 0xc3 0x28"
        );
    }
}
