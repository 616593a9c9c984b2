//! The session's memo of its last analysed statement.
//!
//! A client message is looked at up to three times on its way (answer it
//! locally? route it, forward it), and a byte compare is cheaper than even a
//! cache hit: the session remembers the last text it analysed. The memo also
//! keeps which cache key answered last ([`Lookup`]), so a client that inlines
//! literals goes straight to the normalized key, and a few [`Template`]s of
//! such statements: a text that fits one shares its analysis without a
//! normalized key or a cache lookup (pgbench `-M simple` sends one such
//! statement per transaction; TPC-B five of them in turn).

use std::cell::RefCell;
use std::sync::Arc;

use pgrouter_parser::{Analysis, Lookup, Template};

use super::session::Session;
use crate::protocol::reader::Reader;
use crate::protocol::ProtocolError;

/// Texts longer than this are not kept in the memo's buffer after use.
const KEEP_TEXT_BYTES: usize = 64 * 1024;
/// Templates kept per session, and the longest text made one (at most
/// 8 KiB per session).
const TEMPLATES: usize = 8;
const TEMPLATE_TEXT_BYTES: usize = 1024;

#[derive(Default)]
pub(super) struct AnalysisMemo {
    /// The last text analysed (valid UTF-8, no NUL); its buffer is reused.
    text: Vec<u8>,
    analysis: Option<Arc<Analysis>>,
    /// The client message the last hit was counted for.
    counted_for: u64,
    order: Lookup,
    /// Statements found by their normalized key, with their analyses; the
    /// next one replaced is `next_template`.
    templates: Vec<(Template, Arc<Analysis>)>,
    next_template: usize,
}

impl AnalysisMemo {
    /// Forgets everything (the cache it came from was replaced by a reload).
    pub(super) fn clear(&mut self) {
        *self = AnalysisMemo::default();
    }

    fn remember(&mut self, text: &[u8], analysis: &Arc<Analysis>, message: u64) {
        if self.text.capacity() > KEEP_TEXT_BYTES {
            self.text = Vec::new();
        }
        self.text.clear();
        self.text.extend_from_slice(text);
        self.analysis = Some(analysis.clone());
        self.counted_for = message;
    }

    /// Keeps a template of `sql`, whose analysis came from its normalized key.
    fn add_template(&mut self, sql: &str, analysis: &Arc<Analysis>) {
        if sql.len() > TEMPLATE_TEXT_BYTES || analysis.literal_sensitive {
            return;
        }
        let Some(template) = Template::new(sql) else {
            return;
        };
        if self.templates.len() < TEMPLATES {
            self.templates.push((template, analysis.clone()));
        } else {
            self.templates[self.next_template] = (template, analysis.clone());
            self.next_template = (self.next_template + 1) % TEMPLATES;
        }
    }
}

pub(super) type Memo = RefCell<AnalysisMemo>;

impl Session {
    /// The analysis of `sql`, from the memo or the shared cache.
    pub(super) fn analyze(&self, sql: &str) -> Arc<Analysis> {
        match self.remembered_analysis(sql.as_bytes(), false) {
            Some(analysis) => analysis,
            None => self.analyze_anew(sql),
        }
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
        if let Some(analysis) = self.templated_analysis(at) {
            return Ok(analysis);
        }
        Ok(self.analyze_anew(Reader::new(at).cstr()?))
    }

    /// The analysis of a template the text at the start of `at` fits.
    fn templated_analysis(&self, at: &[u8]) -> Option<Arc<Analysis>> {
        let mut memo = self.memo.borrow_mut();
        let (len, analysis) = memo
            .templates
            .iter()
            .find_map(|(t, analysis)| Some((t.match_cstr(at)?, analysis.clone())))?;
        memo.remember(&at[..len], &analysis, self.message_seq.get());
        self.rt.cache.note_hit();
        Some(analysis)
    }

    /// Asks the shared cache and remembers the answer.
    fn analyze_anew(&self, sql: &str) -> Arc<Analysis> {
        let mut memo = self.memo.borrow_mut();
        let analysis = self.rt.cache.analyze_preferring(sql, &mut memo.order);
        if memo.order == Lookup::NormalizedFirst {
            memo.add_template(sql, &analysis);
        }
        memo.remember(sql.as_bytes(), &analysis, self.message_seq.get());
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
        let same = at.starts_with(text)
            && if nul_terminated {
                end == Some(&0)
            } else {
                end.is_none()
            };
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
