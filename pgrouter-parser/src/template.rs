//! A statement text as a template: its bytes with holes where its literals
//! are.
//!
//! A client that inlines values (pgbench `-M simple`, many ORMs) sends the
//! same statement again and again with other numbers and strings in it.
//! Each one would cost the normalised key ([`crate::normalize_key`], one
//! pass over every byte) and a lookup in the shared cache. A session instead
//! keeps the last such text as a template: a new text that is byte for byte
//! the same outside the literals, with literals of the same kinds in the
//! holes, has the same normalised key — so it shares the analysis — and
//! finding that out is a few `memcmp`s and a scan of the literals.
//!
//! Only texts the one-pass key handles become templates (plain `'...'`
//! strings and decimal integers, no comments), and a hole only takes a
//! literal of the same kind: an integer that fits in 32 bits, a larger one,
//! or a plain string.

use crate::normalize_fast::{fast_key_with, int_placeholder, plain_string_end, Fast, Literal};
use crate::placeholders::STR;
use crate::shard::literal_spans;

/// See the module comment.
#[derive(Debug, Clone)]
pub struct Template {
    text: Box<[u8]>,
    literals: Vec<Literal>,
}

impl Template {
    /// The template of `sql`, or None when the one-pass key does not
    /// handle `sql` or it holds no literal (an exact compare does as well).
    pub fn new(sql: &str) -> Option<Template> {
        let mut literals = Vec::new();
        match fast_key_with(sql, |literal| literals.push(literal)) {
            Fast::Key(_) if !literals.is_empty() => {}
            _ => return None,
        }
        // The holes are the literals the analysis numbers (its shard keys
        // say "the n-th literal"), so a matched text's spans can stand in
        // for lexing it again. Checked once per template.
        let spans: Vec<(usize, usize)> = literals.iter().map(|l| (l.start, l.end)).collect();
        if spans != literal_spans(sql) {
            return None;
        }
        Some(Template { text: sql.as_bytes().into(), literals })
    }

    /// Where the template's own literals are (byte ranges of its text).
    pub fn spans(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.literals.iter().map(|l| (l.start, l.end))
    }

    /// [`Self::match_cstr`], also giving where each literal of the matched
    /// text is (byte ranges, numbered as the analysis numbers literals).
    pub fn match_cstr_spans(&self, at: &[u8], spans: &mut Vec<(usize, usize)>) -> Option<usize> {
        spans.clear();
        self.matching(at, |start, end| spans.push((start, end)))
    }

    /// When `at` starts with a text that has the template's normalised key
    /// followed by a NUL, the length of that text. The text is then valid
    /// UTF-8: the bytes outside the holes are the template's, and the
    /// literals in them are checked.
    pub fn match_cstr(&self, at: &[u8]) -> Option<usize> {
        self.matching(at, |_, _| {})
    }

    fn matching(&self, at: &[u8], mut on_literal: impl FnMut(usize, usize)) -> Option<usize> {
        let old = &self.text[..];
        let (mut o, mut n) = (0, 0);
        for literal in &self.literals {
            let fixed = &old[o..literal.start];
            if at.get(n..n + fixed.len())? != fixed {
                return None;
            }
            n += fixed.len();
            let start = n;
            n = literal_end(at, n, literal.placeholder)?;
            on_literal(start, n);
            o = literal.end;
        }
        let rest = &old[o..];
        if at.get(n..n + rest.len())? != rest || at.get(n + rest.len()) != Some(&0) {
            return None;
        }
        // The bytes after each literal are the template's, so the literal
        // ends where it ended there: `5x` or `5.2` cannot follow a hole that
        // the template closed with a space.
        Some(n + rest.len())
    }
}

/// The end of a literal of the placeholder's kind starting at `at[start]`.
fn literal_end(at: &[u8], start: usize, placeholder: char) -> Option<usize> {
    if placeholder == STR {
        if at.get(start) != Some(&b'\'') {
            return None;
        }
        let end = plain_string_end(at, start)?;
        let body = &at[start..end];
        if !body.is_ascii() {
            std::str::from_utf8(body).ok()?;
        }
        return Some(end);
    }
    let digits = at.get(start..)?.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let end = start + digits;
    (int_placeholder(&at[start..end]) == placeholder).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(template: &str, text: &str) -> bool {
        let t = Template::new(template).unwrap();
        let mut at = text.as_bytes().to_vec();
        at.push(0);
        at.extend_from_slice(b"trailing message bytes");
        t.match_cstr(&at) == Some(text.len())
    }

    #[test]
    fn same_statement_other_values() {
        let t = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";
        assert!(matches(t, "SELECT abalance FROM pgbench_accounts WHERE aid = 7;"));
        assert!(matches(t, t));
        let u = "UPDATE t SET v = v + 5, s = 'x' WHERE id = 1 AND n = 'it''s'";
        assert!(matches(u, "UPDATE t SET v = v + 123456, s = '' WHERE id = 0 AND n = 'é'"));
    }

    #[test]
    fn other_statements_and_other_kinds_do_not_match() {
        let t = "SELECT a FROM t WHERE id = 5 AND s = 'x'";
        for text in [
            "SELECT a FROM t WHERE id = 5 AND s = 'x' ",
            "SELECT a FROM t WHERE id = 5.5 AND s = 'x'",
            "SELECT a FROM t WHERE id = 5x AND s = 'x'",
            "SELECT a FROM t WHERE id = 9999999999 AND s = 'x'",
            "SELECT a FROM t WHERE id = '5' AND s = 'x'",
            "SELECT a FROM t WHERE id = 5 AND s = 7",
            "SELECT a FROM t WHERE id = 5 AND s = 'x",
            "SELECT b FROM t WHERE id = 5 AND s = 'x'",
            "SELECT a FROM t WHERE id = AND s = 'x'",
            "SELECT a FROM t WHERE id = 5 AND s = 'x' 'y'",
        ] {
            assert!(!matches(t, text), "{text}");
        }
        assert!(Template::new("SELECT 1 -- c").is_none(), "comments are not handled");
        assert!(Template::new("SELECT a FROM t").is_none(), "no literal");
    }

    #[test]
    fn spans_of_a_matched_text_are_its_literals() {
        let t = Template::new("SELECT * FROM t WHERE id = 48213 AND s = 'it''s'").unwrap();
        let text = "SELECT * FROM t WHERE id = 7 AND s = 'x'\0";
        let mut spans = Vec::new();
        assert_eq!(t.match_cstr_spans(text.as_bytes(), &mut spans), Some(text.len() - 1));
        let got: Vec<&str> = spans.iter().map(|&(a, b)| &text[a..b]).collect();
        assert_eq!(got, ["7", "'x'"]);
        assert_eq!(t.spans().count(), 2);
    }

    #[test]
    fn needs_the_terminating_nul_and_valid_utf8() {
        let t = Template::new("SELECT 'x'").unwrap();
        assert_eq!(t.match_cstr(b"SELECT 'y'"), None);
        assert_eq!(t.match_cstr(b"SELECT 'y'\0"), Some(10));
        assert_eq!(t.match_cstr(b"SELECT '\xff'\0"), None);
        assert_eq!(t.match_cstr(b"SELECT '\0'\0"), None);
    }
}
