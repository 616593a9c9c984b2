//! Named portals inside a transaction block on a sharded database. A
//! statement that runs on several shards is bound there as the unnamed
//! portal, so the client's portal name lives on no server; PostgreSQL
//! keeps a named portal until the transaction ends (or a Close), and
//! answers a second Bind of the same name with 42P03. The router keeps
//! the names bound in the transaction and answers the same. A portal
//! that ran on several shards cannot be executed or described again (its
//! merged result is gone): refused with 0A000, rather than the server's
//! 34000 "does not exist".

use super::session::Session;
use crate::protocol::frontend::invalid_utf8_in_text;
use crate::router::Refusal;

impl Session {
    /// The refusal of a Bind to a named portal that already exists in the
    /// client's transaction (42P03, PostgreSQL's words), or of an Execute
    /// or Describe of one that ran on several shards (0A000). A Close of
    /// one forgets it. None on databases that are not sharded, outside a
    /// transaction block (portals end at the Sync), and once the
    /// transaction failed (PostgreSQL answers 25P02 first).
    #[inline]
    pub(super) fn portal_exists(&mut self, tag: u8, len: usize) -> Option<Refusal> {
        if self.shard_portals.is_empty() || !matches!(tag, b'B' | b'C' | b'E' | b'D') {
            return None;
        }
        let body = self.cbuf.get(5..len).unwrap_or(&[]);
        if invalid_utf8_in_text(tag, body).is_some() {
            return None; // refused as such in its turn
        }
        let name = portal_name(tag, body)?.to_string();
        match tag {
            b'C' => {
                self.shard_portals.retain(|(p, _)| *p != name);
                None
            }
            b'B' => self.bound_again(&name),
            _ => {
                let gone = self
                    .shard_portals
                    .iter()
                    .any(|(p, on_server)| *p == name && !on_server);
                (gone && !self.tx_failed()).then(|| Refusal {
                    sqlstate: "0A000",
                    message: format!(
                        "pgrouter: portal \"{name}\" ran on several shards and is kept by none of them: \
                         executing or describing it again is not supported; HINT: bind the statement again"
                    ),
                })
            }
        }
    }

    /// [`Self::portal_exists`] for a Bind of `name` the router runs itself
    /// (on several shards).
    pub(super) fn bound_again(&self, name: &str) -> Option<Refusal> {
        let exists = self.shard_portals.iter().any(|(p, _)| p == name);
        (exists && !self.tx_failed()).then(|| portal_refusal(name))
    }

    /// The transaction failed: PostgreSQL answers 25P02 before anything else.
    fn tx_failed(&self) -> bool {
        self.server
            .as_ref()
            .is_some_and(|h| h.conn.tx_status == b'E')
    }

    /// Notes a named portal bound in the client's transaction block on a
    /// sharded database (see [`Self::portal_exists`]); `on_server`: bound
    /// under its name on one server (not run on several shards).
    pub(super) fn note_portal(&mut self, portal: &str, on_server: bool) {
        if !portal.is_empty() && self.shard_map.is_some() && self.flow.in_tx() {
            self.shard_portals.push((portal.to_string(), on_server));
        }
    }
}

/// The portal a Bind creates or an Execute, or a Describe or Close of a
/// portal, names; None otherwise.
fn portal_name(tag: u8, body: &[u8]) -> Option<&str> {
    let name = match tag {
        b'B' | b'E' => body,
        b'C' | b'D' if body.first() == Some(&b'P') => &body[1..],
        _ => return None,
    };
    let end = name.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&name[..end])
        .ok()
        .filter(|n| !n.is_empty())
}

/// PostgreSQL's error for a Bind to a portal that exists.
pub(super) fn portal_refusal(name: &str) -> Refusal {
    Refusal {
        sqlstate: "42P03",
        message: format!("cursor \"{name}\" already exists"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_portal_a_bind_or_close_names() {
        assert_eq!(portal_name(b'B', b"p1\0s\0\0\0\0\0\0\0"), Some("p1"));
        assert_eq!(portal_name(b'B', b"\0s\0\0\0\0\0\0\0"), None);
        assert_eq!(portal_name(b'C', b"Pp1\0"), Some("p1"));
        assert_eq!(portal_name(b'C', b"Sp1\0"), None);
        assert_eq!(portal_name(b'D', b"Pp1\0"), Some("p1"));
        assert_eq!(portal_name(b'E', b"p1\0\0\0\0\0"), Some("p1"));
        assert_eq!(portal_refusal("p").message, "cursor \"p\" already exists");
    }
}
