//! The session's analysis of the SQL in client messages: from its memo of
//! the last text (`memo.rs`) or from the shared analysis cache.

use std::sync::Arc;

use pgrouter_parser::{Analysis, Lookup};

use super::session::Session;
use crate::protocol::reader::Reader;
use crate::protocol::ProtocolError;

impl Session {
    /// The analysis of `sql`, from the memo or the shared cache.
    pub(super) fn analyze(&self, sql: &str) -> Arc<Analysis> {
        match self.remembered_analysis(sql.as_bytes(), false) {
            Some(analysis) => analysis,
            None => self.analyze_anew(sql),
        }
    }

    /// The analysis of the Query or Parse of `len` bytes at `at` in the
    /// client buffer, made once per message: every reader of it after the
    /// first (policy check, local answers, routing, forwarding) gets the
    /// same `Arc` by the message's place in the client's byte stream, which
    /// no other message has, without comparing its text again.
    pub(super) fn message_analysis(
        &self,
        tag: u8,
        at: usize,
        len: usize,
    ) -> Result<Arc<Analysis>, ProtocolError> {
        let place = self.front_offset() + at as u64;
        if let Some((seen, analysis)) = &self.memo.borrow().message {
            if *seen == place {
                return Ok(analysis.clone());
            }
        }
        let body = self.cbuf.get(at + 5..at + len).unwrap_or(&[]);
        let analysis = match tag {
            b'Q' => self.analyze_query(body)?,
            _ => self.analyze_parse(body)?,
        };
        self.memo.borrow_mut().message = Some((place, analysis.clone()));
        Ok(analysis)
    }

    /// The analysis of a simple Query's text.
    pub(super) fn analyze_query(&self, body: &[u8]) -> Result<Arc<Analysis>, ProtocolError> {
        self.analyze_cstr(body)
    }

    /// The analysis of a Parse message's text.
    pub(super) fn analyze_parse(&self, body: &[u8]) -> Result<Arc<Analysis>, ProtocolError> {
        let mut r = Reader::new(body);
        r.cstr()?; // the statement name
        self.analyze_cstr(r.remaining())
    }

    /// The analysis of the NUL-terminated SQL text at the start of `at`.
    /// The bytes are compared with the memo before anything else: its text
    /// was valid UTF-8 without a NUL, so equal bytes followed by a NUL need
    /// neither a search for the NUL nor a second UTF-8 check. Then with the
    /// templates, which check the bytes they do not know.
    fn analyze_cstr(&self, at: &[u8]) -> Result<Arc<Analysis>, ProtocolError> {
        if let Some(analysis) = self.remembered_analysis(at, true) {
            return Ok(analysis);
        }
        if let Some(analysis) = self.exact_analysis(at) {
            return Ok(analysis);
        }
        if let Some(analysis) = self.templated_analysis(at) {
            return Ok(analysis);
        }
        Ok(self.analyze_anew(Reader::new(at).cstr()?))
    }

    /// The analysis of a text the session found by its exact key before.
    fn exact_analysis(&self, at: &[u8]) -> Option<Arc<Analysis>> {
        let mut memo = self.memo.borrow_mut();
        let (len, analysis) = memo.exact_match(at)?;
        memo.remember(&at[..len], &analysis, self.message_seq.get());
        self.rt.cache.note_hit();
        Some(analysis)
    }

    /// The analysis of a template the text at the start of `at` fits.
    fn templated_analysis(&self, at: &[u8]) -> Option<Arc<Analysis>> {
        let mut memo = self.memo.borrow_mut();
        let (len, analysis, spans) = memo.template_match(at)?;
        memo.remember(&at[..len], &analysis, self.message_seq.get());
        memo.literal_spans = Some(spans);
        self.rt.cache.note_hit();
        Some(analysis)
    }

    /// Asks the shared cache and remembers the answer. A statement the
    /// memo keeps gets the session's own copy: its analysis is cloned (an
    /// `Arc`) several times per message, and the cache's `Arc` is shared by
    /// every client running that statement on every worker thread, so each
    /// clone and drop would move its reference count between cores.
    fn analyze_anew(&self, sql: &str) -> Arc<Analysis> {
        let mut memo = self.memo.borrow_mut();
        let shared = self.rt.cache.analyze_preferring(sql, &mut memo.order);
        let analysis = if super::memo::may_keep(sql) {
            Arc::new(Analysis::clone(&shared))
        } else {
            shared
        };
        memo.remember(sql.as_bytes(), &analysis, self.message_seq.get());
        if memo.order == Lookup::NormalizedFirst {
            memo.add_template(sql, &analysis);
        } else {
            memo.add_exact(sql, &analysis);
        }
        analysis
    }

    /// The memo's analysis when `at` starts with its text followed by a NUL
    /// (`nul_terminated`) or is exactly its text.
    fn remembered_analysis(&self, at: &[u8], nul_terminated: bool) -> Option<Arc<Analysis>> {
        let message = self.message_seq.get();
        let mut memo = self.memo.borrow_mut();
        let memo = &mut *memo;
        let analysis = memo.analysis.as_ref()?;
        let text = &memo.text[..];
        let end = at.get(text.len());
        // The end first: a text of another length is told apart without
        // comparing bytes.
        let same = if nul_terminated {
            end == Some(&0)
        } else {
            end.is_none()
        } && at.starts_with(text);
        if !same {
            return None;
        }
        // One cache hit per client message, however often it is looked at.
        if memo.counted_for != message {
            memo.counted_for = message;
            self.rt.cache.note_hit();
        }
        Some(analysis.clone())
    }
}
