//! Each client message's SQL analysed once.
//!
//! A Query or Parse in the client's buffer is looked at by several steps
//! before it is forwarded: the policy check, the router's local answers,
//! the routing of its batch (which reads ahead to the batch's Sync), the
//! shard guard, the role guard and the forwarding itself. Each asks for the
//! message's analysis through [`Session::message_analysis`], which decodes
//! the message the first time and answers from [`DecodedMessages`] after
//! that, by the message's place in the client's stream.
//!
//! A place in the stream names one message for good: the buffer is only
//! ever appended to by reads (counted in `client_bytes_in`) and consumed
//! from the front, never rewritten, so the bytes at a place never change.
//! The tag and length are checked too. An analysis depends only on the SQL
//! text and the runtime's configuration; the entries are dropped with the
//! memo when the session moves to a new runtime.

use std::collections::VecDeque;
use std::sync::Arc;

use pgrouter_parser::Analysis;

use super::session::Session;
use crate::protocol::ProtocolError;

/// How many messages ahead of the front are kept (an extended batch of
/// more statements than this analyses the rest through the memo).
const KEPT: usize = 16;

/// Analyses of Query and Parse messages still in the client's buffer.
#[derive(Debug, Default)]
pub(super) struct DecodedMessages {
    /// In stream order.
    entries: VecDeque<Decoded>,
}

#[derive(Debug)]
struct Decoded {
    /// Where the message starts in the client's stream.
    place: u64,
    tag: u8,
    len: usize,
    analysis: Arc<Analysis>,
}

impl DecodedMessages {
    /// The analysis of the message at `place`, if it was decoded. `front`:
    /// where the buffer starts now; what is before it was consumed.
    pub(super) fn get(
        &mut self,
        front: u64,
        place: u64,
        tag: u8,
        len: usize,
    ) -> Option<Arc<Analysis>> {
        while self.entries.front().is_some_and(|e| e.place < front) {
            self.entries.pop_front();
        }
        self.entries
            .iter()
            .find(|e| e.place == place)
            .filter(|e| e.tag == tag && e.len == len)
            .map(|e| e.analysis.clone())
    }

    pub(super) fn put(&mut self, place: u64, tag: u8, len: usize, analysis: Arc<Analysis>) {
        let at = self.entries.partition_point(|e| e.place < place);
        let entry = Decoded {
            place,
            tag,
            len,
            analysis,
        };
        match self.entries.get_mut(at) {
            Some(e) if e.place == place => *e = entry,
            _ => {
                if self.entries.len() == KEPT {
                    // The farthest ahead goes: the front is needed first.
                    if at == KEPT {
                        return;
                    }
                    self.entries.pop_back();
                }
                self.entries.insert(at, entry);
            }
        }
    }

    pub(super) fn clear(&mut self) {
        self.entries.clear();
    }
}

impl Session {
    /// The analysis of the Query or Parse whose frame starts `at` bytes into
    /// the client's buffer and is `len` bytes long (tag included): decoded
    /// the first time any step asks, from [`DecodedMessages`] after that.
    pub(super) fn message_analysis(
        &self,
        at: usize,
        tag: u8,
        len: usize,
    ) -> Result<Arc<Analysis>, ProtocolError> {
        let front = self.front_offset();
        let place = front + at as u64;
        if let Some(analysis) = self.decoded.borrow_mut().get(front, place, tag, len) {
            return Ok(analysis);
        }
        let body = self.cbuf.get(at + 5..at + len).unwrap_or(&[]);
        let analysis = match tag {
            b'Q' => self.analyze_query(body)?,
            _ => self.analyze_parse(body)?,
        };
        self.decoded
            .borrow_mut()
            .put(place, tag, len, analysis.clone());
        Ok(analysis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analysis(sql: &str) -> Arc<Analysis> {
        Arc::new(pgrouter_parser::analyze(sql, &[]))
    }

    #[test]
    fn a_message_is_found_by_its_place_tag_and_length() {
        let mut d = DecodedMessages::default();
        let a = analysis("SELECT 1");
        d.put(100, b'P', 20, a.clone());
        assert!(Arc::ptr_eq(&d.get(100, 100, b'P', 20).unwrap(), &a));
        assert!(d.get(100, 100, b'Q', 20).is_none(), "another tag");
        assert!(d.get(100, 100, b'P', 21).is_none(), "another length");
        assert!(d.get(100, 120, b'P', 20).is_none(), "another place");
    }

    #[test]
    fn messages_consumed_from_the_buffer_are_forgotten() {
        let mut d = DecodedMessages::default();
        d.put(0, b'P', 30, analysis("SELECT 1"));
        d.put(30, b'P', 30, analysis("SELECT 2"));
        assert!(d.get(30, 30, b'P', 30).is_some());
        assert_eq!(d.entries.len(), 1, "the message before the front went");
        assert!(d.get(30, 0, b'P', 30).is_none());
    }

    #[test]
    fn entries_stay_in_stream_order_and_a_place_is_decoded_once() {
        let mut d = DecodedMessages::default();
        d.put(60, b'Q', 10, analysis("SELECT 3"));
        d.put(0, b'Q', 10, analysis("SELECT 1"));
        d.put(30, b'Q', 10, analysis("SELECT 2"));
        d.put(30, b'Q', 10, analysis("SELECT 2"));
        let places: Vec<u64> = d.entries.iter().map(|e| e.place).collect();
        assert_eq!(places, [0, 30, 60]);
    }

    #[test]
    fn a_full_table_keeps_the_messages_nearest_the_front() {
        let mut d = DecodedMessages::default();
        for i in 0..KEPT as u64 {
            d.put(100 + i * 10, b'P', 10, analysis("SELECT 1"));
        }
        // Farther than everything kept: not kept.
        d.put(100 + KEPT as u64 * 10, b'P', 10, analysis("SELECT 1"));
        assert!(d.get(0, 100 + KEPT as u64 * 10, b'P', 10).is_none());
        // Nearer the front: kept, the farthest goes.
        d.put(50, b'P', 10, analysis("SELECT 1"));
        assert!(d.get(0, 50, b'P', 10).is_some());
        assert!(d.get(0, 100 + (KEPT as u64 - 1) * 10, b'P', 10).is_none());
        assert_eq!(d.entries.len(), KEPT);
    }
}
