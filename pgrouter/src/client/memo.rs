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
/// 16 KiB per session). pgbench's TPC-B alone has nine shapes (a negative
/// delta is an operator and a literal, a positive one a literal), so
/// eight thrashed: every statement went to the normalized key.
/// What [`AnalysisMemo::template_match`] finds: the byte length of the matched
/// statement, its analysis, and where its literals are (start, end).
type TemplateMatch = (usize, Arc<Analysis>, Vec<(usize, usize)>);

const TEMPLATES: usize = 16;
const TEMPLATE_TEXT_BYTES: usize = 1024;

#[derive(Default)]
pub(super) struct AnalysisMemo {
    /// The last text analysed (valid UTF-8, no NUL); its buffer is reused.
    pub(super) text: Vec<u8>,
    pub(super) analysis: Option<Arc<Analysis>>,
    /// The client message the last hit was counted for.
    pub(super) counted_for: u64,
    pub(super) order: Lookup,
    /// Statements found by their normalized key, with their analyses, the
    /// most recently used first (the last one is replaced).
    pub(super) templates: Vec<(Template, Arc<Analysis>)>,
    /// Statements found by their exact text (parameterized ones: a client
    /// of the extended protocol sends the same few texts in turn), most
    /// recently used first: a match skips the NUL search, the UTF-8 check,
    /// the hash and the shared cache's lock.
    pub(super) exact: Vec<(Box<[u8]>, Arc<Analysis>)>,
    /// Where the literals of `text` are, when a template gave them (the
    /// shard planner reads a key literal there instead of lexing the text).
    pub(super) literal_spans: Option<Vec<(usize, usize)>>,
    /// The last client message analysed, by where it starts in the client's
    /// byte stream, and its analysis: the readers of one message (policy
    /// check, local answers, routing, forwarding) share one analysis.
    pub(super) message: Option<(u64, Arc<Analysis>)>,
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
        if !may_keep(sql) || analysis.literal_sensitive {
            return;
        }
        let Some(template) = Template::new(sql) else {
            return;
        };
        if self.text == sql.as_bytes() {
            self.literal_spans = Some(template.spans().collect());
        }
        keep_in_front(&mut self.templates, (template, analysis.clone()));
    }

    /// Keeps `sql`, whose analysis came from its exact text.
    pub(super) fn add_exact(&mut self, sql: &str, analysis: &Arc<Analysis>) {
        if !may_keep(sql) {
            return;
        }
        keep_in_front(&mut self.exact, (sql.as_bytes().into(), analysis.clone()));
    }

    /// The analysis of the exact text at the start of `at` (followed by a
    /// NUL), if kept; it moves to the front.
    pub(super) fn exact_match(&mut self, at: &[u8]) -> Option<(usize, Arc<Analysis>)> {
        let index = self
            .exact
            .iter()
            // The NUL first: texts of other lengths are passed over
            // without comparing their bytes.
            .position(|(text, _)| at.get(text.len()) == Some(&0) && at.starts_with(text))?;
        move_to_front(&mut self.exact, index);
        let (text, analysis) = &self.exact[0];
        Some((text.len(), analysis.clone()))
    }

    /// The length of the text at the start of `at` (followed by a NUL)
    /// that fits a kept template, its analysis, and where its literals are.
    /// The template moves to the front, so the statements a client cycles
    /// through are found first and the one unused longest is replaced.
    pub(super) fn template_match(&mut self, at: &[u8]) -> Option<TemplateMatch> {
        let mut spans = self.literal_spans.take().unwrap_or_default();
        let (index, len) = self
            .templates
            .iter()
            .enumerate()
            .find_map(|(index, (t, _))| Some((index, t.match_cstr_spans(at, &mut spans)?)))?;
        move_to_front(&mut self.templates, index);
        Some((len, self.templates[0].1.clone(), spans))
    }
}

pub(super) type Memo = RefCell<AnalysisMemo>;

/// Whether the memo may keep `sql` (as an exact text or a template).
pub(super) fn may_keep(sql: &str) -> bool {
    sql.len() <= TEMPLATE_TEXT_BYTES
}

/// Adds `item` as the most recently used of at most `TEMPLATES`, dropping
/// the one unused longest (the last).
fn keep_in_front<T>(list: &mut Vec<T>, item: T) {
    if list.len() == TEMPLATES {
        list.pop();
    }
    list.insert(0, item);
}

/// The entry at `index` was used: it becomes the first.
fn move_to_front<T>(list: &mut [T], index: usize) {
    list[..=index].rotate_right(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analysis(n: usize) -> Arc<Analysis> {
        Arc::new(Analysis {
            statements: Vec::with_capacity(n),
            ..Analysis::default()
        })
    }

    fn cstr(sql: &str) -> Vec<u8> {
        let mut v = sql.as_bytes().to_vec();
        v.push(0);
        v
    }

    /// pgbench's TPC-B in `-M simple`: a negative delta is an operator
    /// and a literal, so its four statements with a delta have two shapes.
    fn tpcb(delta: i64, aid: u32) -> Vec<String> {
        vec![
            format!("UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid};"),
            format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"),
            format!("UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = 3;"),
            format!("UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = 1;"),
            format!(
                "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, {aid}, {delta}, CURRENT_TIMESTAMP);"
            ),
        ]
    }

    #[test]
    fn the_nine_shapes_of_tpcb_all_stay_kept() {
        let mut memo = AnalysisMemo::default();
        for (i, sql) in tpcb(5, 1).into_iter().chain(tpcb(-5, 1)).enumerate() {
            memo.add_template(&sql, &analysis(i));
        }
        // Nine shapes (the SELECT is the same either way; added twice here).
        assert_eq!(memo.templates.len(), 10);
        for round in 0..3 {
            let delta = if round % 2 == 0 {
                -(round + 17)
            } else {
                round + 17
            };
            for sql in tpcb(delta, 1000 + round as u32) {
                let found = memo.template_match(&cstr(&sql));
                assert_eq!(found.map(|(len, _, _)| len), Some(sql.len()), "{sql}");
            }
        }
    }

    #[test]
    fn the_template_unused_longest_is_replaced() {
        let mut memo = AnalysisMemo::default();
        let shape = |i: usize, v: u32| format!("SELECT a FROM t{i} WHERE a = {v}");
        for i in 0..TEMPLATES {
            memo.add_template(&shape(i, 1), &analysis(i));
        }
        // The first one kept is used again: the second one is now the
        // oldest, and a new shape replaces it.
        assert!(memo.template_match(&cstr(&shape(0, 7))).is_some());
        memo.add_template(&shape(TEMPLATES, 1), &analysis(TEMPLATES));
        assert_eq!(memo.templates.len(), TEMPLATES);
        assert!(memo.template_match(&cstr(&shape(1, 8))).is_none());
        for i in (0..=TEMPLATES).filter(|&i| i != 1) {
            let (_, a, _) = memo.template_match(&cstr(&shape(i, 9))).expect("kept");
            assert_eq!(a.statements.capacity(), i);
        }
    }

    #[test]
    fn a_template_gives_the_places_of_its_literals() {
        let mut memo = AnalysisMemo::default();
        memo.add_template("SELECT a FROM t WHERE a = 1 AND b = 'x'", &analysis(0));
        let text = cstr("SELECT a FROM t WHERE a = 12345 AND b = 'yz'");
        let (len, _, spans) = memo.template_match(&text).expect("fits");
        assert_eq!(len, text.len() - 1);
        let literals: Vec<&[u8]> = spans.iter().map(|&(a, b)| &text[a..b]).collect();
        assert_eq!(literals, [&b"12345"[..], &b"'yz'"[..]]);
        // Another kind of literal in a hole does not fit.
        assert!(memo
            .template_match(&cstr("SELECT a FROM t WHERE a = 'q' AND b = 'x'"))
            .is_none());
    }

    #[test]
    fn exact_texts_are_found_whole_and_the_oldest_replaced() {
        let mut memo = AnalysisMemo::default();
        let text = |i: usize| format!("SELECT a FROM t{i} WHERE a = $1");
        for i in 0..=TEMPLATES {
            memo.add_exact(&text(i), &analysis(i));
        }
        assert_eq!(memo.exact.len(), TEMPLATES);
        assert!(
            memo.exact_match(&cstr(&text(0))).is_none(),
            "the oldest was replaced"
        );
        let (len, a) = memo.exact_match(&cstr(&text(5))).expect("kept");
        assert_eq!((len, a.statements.capacity()), (text(5).len(), 5));
        assert_eq!(
            memo.exact[0].1.statements.capacity(),
            5,
            "moved to the front"
        );
        // Only the whole text followed by its NUL.
        assert!(memo.exact_match(text(5).as_bytes()).is_none());
        assert!(memo
            .exact_match(&cstr(&format!("{} AND b = 1", text(5))))
            .is_none());
        assert!(memo.exact_match(&cstr(&text(5)[..10])).is_none());
    }
}
