//! The cache key of ordinary statements in one pass over the bytes.
//!
//! [`crate::normalize_key`] runs on every statement that misses the cache by
//! exact text — every pgbench `-M simple` statement, every ORM query with
//! inlined values. Most such texts hold only identifiers, whitespace,
//! operators, plain `'...'` strings and decimal integers. This pass builds the
//! key of those texts directly, without the tokenizer's per-token bookkeeping,
//! and gives up ([`Fast::Unsure`]) at the first thing it does not handle
//! (comments, `$`, quoted identifiers, prefixed strings, non-integer numbers,
//! `.5`), leaving the text to the tokenizer. Its keys are the tokenizer's keys
//! byte for byte (checked on generated texts in `fuzz_tests`).

use crate::placeholders::{INT, NUM, STR};

/// What the fast pass made of a text.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fast {
    /// The key, as the tokenizer would build it.
    Key(String),
    /// The text must not share an analysis (as the tokenizer would decide).
    Refuse,
    /// Something this pass does not handle: ask the tokenizer.
    Unsure,
}

/// The key of `sql` when it holds only what this pass understands.
///
/// The key is mostly the text itself: only literals and whitespace other
/// than a single space between tokens are edited. So the text is copied in
/// runs, up to each edit, rather than token by token.
pub(crate) fn fast_key(sql: &str) -> Fast {
    fast_key_with(sql, |_| {})
}

/// [`fast_key`], telling `on_literal` where each literal is and which
/// placeholder stands for it (for [`crate::Template`]).
pub(crate) fn fast_key_with(sql: &str, mut on_literal: impl FnMut(Literal)) -> Fast {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() && class(b[i]) & SPACE != 0 {
        i += 1;
    }
    // `sql[copied..i]` is still to be copied to `out` unchanged.
    let mut copied = i;
    let mut last_was_string = false;
    while i < b.len() {
        let c = b[i];
        if class(c) & SPACE != 0 {
            let run = i;
            i += 1;
            while i < b.len() && class(b[i]) & SPACE != 0 {
                i += 1;
            }
            if i == b.len() {
                // Trailing whitespace is dropped.
                out.push_str(&sql[copied..run]);
                copied = i;
            } else if c != b' ' || i > run + 1 {
                out.push_str(&sql[copied..run]);
                out.push(' ');
                copied = i;
            }
            continue;
        }
        let next = b.get(i + 1).copied().unwrap_or(0);
        let is_string = c == b'\'';
        if is_string && last_was_string {
            return Fast::Refuse;
        }
        last_was_string = is_string;
        match c {
            b'\'' => {
                // Plain strings: a doubled quote stands for itself, no escapes.
                let Some(end) = plain_string_end(b, i) else {
                    return Fast::Refuse; // unterminated, or a NUL
                };
                out.push_str(&sql[copied..i]);
                out.push(STR);
                on_literal(Literal { start: i, end, placeholder: STR });
                i = end;
                copied = i;
            }
            b'0'..=b'9' => {
                let start = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                // `1.5`, `1e3`, `1_000`, `0x1F`, `1x`: the tokenizer's rules.
                if i < b.len() && (b[i] == b'.' || class(b[i]) & IDENT_START != 0) {
                    return Fast::Unsure;
                }
                out.push_str(&sql[copied..start]);
                let placeholder = int_placeholder(&b[start..i]);
                out.push(placeholder);
                on_literal(Literal { start, end: i, placeholder });
                copied = i;
            }
            // String prefixes (`E'`, `B'`, `X'`, `U&'`, `U&"`).
            b'e' | b'E' | b'b' | b'B' | b'x' | b'X' if next == b'\'' => return Fast::Unsure,
            b'u' | b'U' if next == b'&' => return Fast::Unsure,
            _ if class(c) & IDENT_START != 0 => {
                let start = i;
                i += 1;
                while i < b.len() && class(b[i]) & IDENT_CONT != 0 {
                    i += 1;
                }
                if i - start == 7 && b[start..i].eq_ignore_ascii_case(b"uescape") {
                    return Fast::Refuse;
                }
            }
            // Comments, dollar quotes and parameters, quoted identifiers,
            // `.5`: left to the tokenizer.
            b'-' if next == b'-' => return Fast::Unsure,
            b'/' if next == b'*' => return Fast::Unsure,
            b'.' if next.is_ascii_digit() => return Fast::Unsure,
            b'$' | b'"' => return Fast::Unsure,
            // Control characters outside literals: PostgreSQL rejects them.
            0..=0x1f | 0x7f => return Fast::Refuse,
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied..]);
    Fast::Key(out)
}

/// Byte classes, looked up in a table: this loop is the whole cost of a
/// cache hit by normalised key.
const SPACE: u8 = 1;
/// `[A-Za-z\200-\377_]`, as the tokenizer's `is_ident_start`.
const IDENT_START: u8 = 2;
/// `[A-Za-z\200-\377_0-9\$]`, as the tokenizer's `is_ident_cont`.
const IDENT_CONT: u8 = 4;

static CLASSES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c') {
            t[c] = SPACE;
        } else if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 {
            t[c] = IDENT_START | IDENT_CONT;
        } else if b.is_ascii_digit() || b == b'$' {
            t[c] = IDENT_CONT;
        }
        c += 1;
    }
    t
};

fn class(c: u8) -> u8 {
    CLASSES[c as usize]
}

/// Where a literal is, and the placeholder the key has for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Literal {
    pub start: usize,
    pub end: usize,
    pub placeholder: char,
}

/// The placeholder of a run of decimal digits: INT for an ICONST, NUM for
/// a number too large for int32 (an FCONST).
pub(crate) fn int_placeholder(digits: &[u8]) -> char {
    if fits_i32(digits) {
        INT
    } else {
        NUM
    }
}

/// The end (exclusive) of a plain `'...'` string starting at `start`, or
/// None when it is unterminated or holds a NUL.
pub(crate) fn plain_string_end(b: &[u8], start: usize) -> Option<usize> {
    let mut j = start + 1;
    loop {
        match b.get(j) {
            None | Some(0) => return None,
            Some(b'\'') if b.get(j + 1) == Some(&b'\'') => j += 2,
            Some(b'\'') => return Some(j + 1),
            Some(_) => j += 1,
        }
    }
}

/// Decimal digits that PostgreSQL reads as an ICONST (fits in int32).
fn fits_i32(digits: &[u8]) -> bool {
    if digits.len() < 10 {
        return true;
    }
    let mut v: u64 = 0;
    for &d in digits {
        v = v * 10 + u64::from(d - b'0');
        if v > i32::MAX as u64 {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lexer::{is_ident_cont, is_ident_start};

    #[test]
    fn classes_are_the_tokenizer_classes() {
        for c in 0..=255u8 {
            assert_eq!(class(c) & IDENT_START != 0, is_ident_start(c), "{c}");
            assert_eq!(class(c) & IDENT_CONT != 0, is_ident_cont(c), "{c}");
        }
    }

    #[test]
    fn handles_pgbench_statements() {
        let key = fast_key("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;");
        assert_eq!(key, Fast::Key("SELECT abalance FROM pgbench_accounts WHERE aid = \u{1};".into()));
        assert_eq!(
            fast_key("UPDATE  t SET v = v + -5, s = 'it''s'\n WHERE id = 2147483648"),
            Fast::Key("UPDATE t SET v = v + -\u{1}, s = \u{3} WHERE id = \u{2}".into())
        );
    }

    #[test]
    fn leaves_the_rest_to_the_tokenizer() {
        for sql in [
            "SELECT 1.5",
            "SELECT 1_000",
            "SELECT 0x1F",
            "SELECT 1e3",
            "SELECT .5",
            "SELECT E'x'",
            "SELECT b'1'",
            "SELECT U&'x'",
            "SELECT $1",
            "SELECT $$x$$",
            "SELECT \"Q\"",
            "SELECT 1 -- c",
            "SELECT /* c */ 1",
        ] {
            assert_eq!(fast_key(sql), Fast::Unsure, "{sql}");
        }
    }

    #[test]
    fn refuses_what_the_tokenizer_refuses() {
        for sql in ["SELECT 'a' 'b'", "SELECT 'open", "SELECT x uescape '!'", "SELECT \u{1}", "SELECT '\0'"] {
            assert_eq!(fast_key(sql), Fast::Refuse, "{sql:?}");
        }
    }
}
