//! The literal-insensitive cache key.
//!
//! Drivers in simple-query mode (pgbench `-M simple`, many ORMs) inline
//! values: `SELECT abalance FROM pgbench_accounts WHERE aid = 48213;` arrives
//! with a new number every time. Keyed by exact text, every one of those would
//! be a pg_query parse. Keyed by the text with literals replaced, all of them
//! share one analysis — as long as that analysis does not depend on a literal
//! (see [`crate::Analysis::literal_sensitive`]).

use crate::lexer::{Lexer, Tok};
use crate::normalize_fast::{fast_key, Fast};

use crate::placeholders::{BITS, INT, NUM, STR};

/// Returns a cache key that is equal for two texts exactly when they are the
/// same sequence of tokens apart from the values of literals, or None when
/// the text must not share an analysis with any other text.
///
/// The key replaces string constants (`'..'`, `E'..'`, `U&'..'`, dollar
/// quotes) and numeric constants with placeholders, drops comments, turns
/// every run of whitespace into one space, and keeps everything else — keywords,
/// identifiers (quoted ones verbatim), operators, `$1` parameters — as written.
/// Placeholders keep apart the literal kinds the grammar tells apart: 32-bit
/// integers (ICONST), other numbers (FCONST), character strings and bit
/// strings, because a statement can be valid with one and not the other
/// (`FETCH 1` / `FETCH 1.5`).
///
/// None when: a comment contains `pgrouter:` (a hint, which belongs to this
/// text only); two string constants follow each other (PostgreSQL joins them
/// across a newline and rejects them otherwise, a difference the key would
/// lose); `UESCAPE` appears (it changes what a `U&` literal or identifier
/// means); a literal uses escapes whose contents decide whether PostgreSQL
/// accepts it (`E'\u..'`, `E'\x..'`, octal, any escape in `U&'..'`); or the
/// text does not tokenize or holds a NUL (PostgreSQL rejects it anyway).
///
/// A fast hand-written pass (no pg_query call): it runs on every statement
/// that misses the cache by exact text. Ordinary texts take a faster path
/// still ([`fast_key`]); the tokenizer handles everything else.
pub fn normalize_key(sql: &str) -> Option<String> {
    match fast_key(sql) {
        Fast::Key(key) => Some(key),
        Fast::Refuse => None,
        Fast::Unsure => tokenized_key(sql),
    }
}

/// The key built from the tokenizer's tokens (every text).
pub(crate) fn tokenized_key(sql: &str) -> Option<String> {
    // pg_query cannot take a NUL (and the protocol cannot carry one).
    if sql.as_bytes().contains(&0) {
        return None;
    }
    let mut out = String::with_capacity(sql.len());
    let mut space = false;
    let mut last_was_string = false;
    for token in Lexer::new(sql) {
        let (tok, start, end) = token.ok()?;
        let text = &sql[start..end];
        match tok {
            Tok::Space => {
                space = true;
                continue;
            }
            Tok::Comment => {
                if crate::hint::mentions_pgrouter(text) {
                    return None;
                }
                space = true;
                continue;
            }
            _ => {}
        }
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        let is_string = matches!(tok, Tok::Str | Tok::BitStr);
        if is_string && last_was_string {
            return None;
        }
        last_was_string = is_string;
        if matches!(tok, Tok::Str | Tok::QuotedIdent) && escapes_can_fail(text) {
            return None;
        }
        match tok {
            Tok::Int => out.push(INT),
            Tok::Num => out.push(NUM),
            Tok::Str => out.push(STR),
            Tok::BitStr => out.push(BITS),
            Tok::Ident if text.eq_ignore_ascii_case("uescape") => return None,
            _ => out.push_str(text),
        }
    }
    Some(out)
}

/// Whether a literal's escapes can make PostgreSQL reject it depending on
/// its contents (`E'\u12'`, `E'\xFF'` which is not UTF-8, `U&'\00zz'`), so
/// that two texts with the same key could be one valid and one not.
fn escapes_can_fail(text: &str) -> bool {
    let b = text.as_bytes();
    match b.first() {
        Some(b'u' | b'U') if b.get(1) == Some(&b'&') => b.contains(&b'\\'),
        Some(b'e' | b'E') => {
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'\\' {
                    let next = b.get(i + 1).copied().unwrap_or(0);
                    if matches!(next, b'x' | b'X' | b'u' | b'U' | b'0'..=b'9') {
                        return true;
                    }
                    i += 2;
                } else {
                    i += 1;
                }
            }
            false
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Option<String> {
        normalize_key(s)
    }

    #[test]
    fn pgbench_statements_share_a_key() {
        let a = k("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;");
        assert!(a.is_some());
        assert_eq!(a, k("SELECT abalance FROM pgbench_accounts WHERE aid = 7;"));
        assert_eq!(a, k("SELECT  abalance\n FROM pgbench_accounts -- x\n WHERE aid = 1_000;"));
        assert_ne!(a, k("SELECT abalance FROM pgbench_accounts WHERE aid = '7';"));
        assert_ne!(a, k("SELECT abalance FROM pgbench_accounts WHERE aid = 7.5;"));
        assert_ne!(a, k("select abalance FROM pgbench_accounts WHERE aid = 7;"));
    }

    #[test]
    fn strings_of_every_spelling_are_one_placeholder() {
        let a = k("SELECT 'x'");
        for s in [
            "SELECT 'it''s'",
            "SELECT E'\\''",
            "SELECT $$a'b$$",
            "SELECT $t$ $$ $t$",
            "SELECT E'a\\\\x\\n'",
            "SELECT U&'dat'",
        ] {
            assert_eq!(a, k(s), "{s}");
        }
        assert_ne!(a, k("SELECT B'101'"));
        assert_ne!(a, k("SELECT N'x'"));
    }

    #[test]
    fn kept_apart() {
        assert_ne!(k("SELECT \"a\""), k("SELECT a"));
        assert_ne!(k("SELECT $1"), k("SELECT $2"));
        assert_ne!(k("SELECT 1 x"), k("SELECT 1x"));
        assert_ne!(k("SELECT t.1"), k("SELECT t1"));
        assert_ne!(k("FETCH 1 c"), k("FETCH 99999999999 c"));
        assert_ne!(k("SELECT a<=b"), k("SELECT a< =b"));
    }

    #[test]
    fn refuses() {
        assert_eq!(k("/* pgrouter: role=primary */ SELECT 1"), None);
        assert_eq!(k("SELECT 1 -- PGROUTER: shard=2"), None);
        assert_eq!(k("SELECT 'a'\n'b'"), None);
        assert_eq!(k("SELECT U&'!0061' UESCAPE '!'"), None);
        assert_eq!(k("SELECT 'open"), None);
        assert_eq!(k("SELECT 1x"), None);
        assert_eq!(k(r"SELECT E'\u12'"), None);
        assert_eq!(k(r"SELECT E'\xFF'"), None);
        assert_eq!(k(r"SELECT E'\101'"), None);
        assert_eq!(k(r"SELECT U&'d\0061t'"), None);
        assert_eq!(k(r#"SELECT U&"d\0061t""#), None);
        assert_eq!(k("SELECT '\0'"), None);
    }

    #[test]
    fn empty_and_comments_only() {
        assert_eq!(k(""), Some(String::new()));
        assert_eq!(k(" /* c */ -- d"), Some(String::new()));
    }
}
