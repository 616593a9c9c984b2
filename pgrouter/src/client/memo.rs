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

/// Texts longer than this are not kept in the memo's buffer after use.
const KEEP_TEXT_BYTES: usize = 64 * 1024;
/// Templates kept per session, and the longest text made one (at most
/// 8 KiB per session).
const TEMPLATES: usize = 8;
const TEMPLATE_TEXT_BYTES: usize = 1024;

#[derive(Default)]
pub(super) struct AnalysisMemo {
    /// The last text analysed (valid UTF-8, no NUL); its buffer is reused.
    pub(super) text: Vec<u8>,
    pub(super) analysis: Option<Arc<Analysis>>,
    /// The client message the last hit was counted for.
    pub(super) counted_for: u64,
    pub(super) order: Lookup,
    /// Statements found by their normalized key, with their analyses; the
    /// next one replaced is `next_template`.
    pub(super) templates: Vec<(Template, Arc<Analysis>)>,
    next_template: usize,
    /// Where the literals of `text` are, when a template gave them (the
    /// shard planner reads a key literal there instead of lexing the text).
    pub(super) literal_spans: Option<Vec<(usize, usize)>>,
}

impl AnalysisMemo {
    /// Forgets everything (the cache it came from was replaced by a reload).
    pub(super) fn clear(&mut self) {
        *self = AnalysisMemo::default();
    }

    pub(super) fn remember(&mut self, text: &[u8], analysis: &Arc<Analysis>, message: u64) {
        if self.text.capacity() > KEEP_TEXT_BYTES {
            self.text = Vec::new();
        }
        self.text.clear();
        self.text.extend_from_slice(text);
        self.analysis = Some(analysis.clone());
        self.counted_for = message;
        self.literal_spans = None;
    }

    /// The `index`-th literal token of the NUL-terminated text at the
    /// start of `cstr`, when it is the remembered text and a template gave
    /// its literals' places. `None`: not known here (lex the text).
    pub(super) fn literal_token<'s>(
        &self,
        cstr: &'s [u8],
        index: usize,
    ) -> Option<Option<&'s str>> {
        let spans = self.literal_spans.as_ref()?;
        if !cstr.starts_with(&self.text) || cstr.get(self.text.len()) != Some(&0) {
            return None;
        }
        // The remembered text is valid UTF-8 and a token's bounds are
        // character bounds, so this check cannot fail; it is a few bytes.
        Some(
            spans
                .get(index)
                .and_then(|&(a, b)| std::str::from_utf8(cstr.get(a..b)?).ok()),
        )
    }

    /// Keeps a template of `sql`, whose analysis came from its normalized key.
    pub(super) fn add_template(&mut self, sql: &str, analysis: &Arc<Analysis>) {
        if sql.len() > TEMPLATE_TEXT_BYTES || analysis.literal_sensitive {
            return;
        }
        let Some(template) = Template::new(sql) else {
            return;
        };
        if self.text == sql.as_bytes() {
            self.literal_spans = Some(template.spans().collect());
        }
        if self.templates.len() < TEMPLATES {
            self.templates.push((template, analysis.clone()));
        } else {
            self.templates[self.next_template] = (template, analysis.clone());
            self.next_template = (self.next_template + 1) % TEMPLATES;
        }
    }
}

pub(super) type Memo = RefCell<AnalysisMemo>;
