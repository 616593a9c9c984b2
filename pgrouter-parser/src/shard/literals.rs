//! The literals of one statement text, in order, decoded to the value
//! PostgreSQL's scanner gives them. A cached analysis says "the key is the
//! n-th literal"; this reads the n-th literal of the text being executed.
//! The numbering is the cache key's ([`crate::normalize_key`]): every
//! string, bit-string and numeric constant token, left to right, so texts
//! sharing an analysis have their key literal at the same number.

use crate::lexer::{Lexer, Tok};

/// One literal's value as the scanner produces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Literal {
    /// The value: a string's contents, or a number's digits (underscores
    /// removed, other radixes converted to decimal).
    pub text: String,
    /// A numeric constant (else a string).
    pub numeric: bool,
}

/// Every literal of `sql`, numbered as in the cache key; `None` for one
/// this reader does not decode (bit strings, `U&` escapes, malformed
/// escapes). Empty when the text does not tokenize.
pub fn literal_values(sql: &str) -> Vec<Option<Literal>> {
    let mut out = Vec::new();
    for token in Lexer::new(sql) {
        let Ok((tok, start, end)) = token else {
            return Vec::new();
        };
        let text = &sql[start..end];
        match tok {
            Tok::Str => out.push(decode_string(text).map(|text| Literal { text, numeric: false })),
            Tok::BitStr => out.push(None),
            Tok::Int | Tok::Num => out.push(decode_number(text).map(|text| Literal { text, numeric: true })),
            _ => {}
        }
    }
    out
}

/// `literal_values(sql).get(index)`, without decoding the other literals:
/// the point-query path reads one key per execution. The whole text is
/// still lexed, so a text that does not tokenize gives `None` here too.
pub fn literal_value_at(sql: &str, index: usize) -> Option<Literal> {
    let mut found = None;
    let mut n = 0;
    for token in Lexer::new(sql) {
        let Ok((tok, start, end)) = token else {
            return None;
        };
        if !matches!(tok, Tok::Str | Tok::BitStr | Tok::Int | Tok::Num) {
            continue;
        }
        if n == index {
            let text = &sql[start..end];
            found = match tok {
                Tok::Str => decode_string(text).map(|text| Literal { text, numeric: false }),
                Tok::Int | Tok::Num => decode_number(text).map(|text| Literal { text, numeric: true }),
                _ => None,
            };
        }
        n += 1;
    }
    found
}

/// The value of one literal token (its text as written), as
/// [`literal_values`] reads it: a string or a number.
pub fn literal_of_token(token: &str) -> Option<Literal> {
    match token.as_bytes().first()? {
        b'0'..=b'9' | b'.' => decode_number(token).map(|text| Literal { text, numeric: true }),
        _ => decode_string(token).map(|text| Literal { text, numeric: false }),
    }
}

/// Byte offsets where each literal starts, numbered as [`literal_values`].
pub(crate) fn literal_starts(sql: &str) -> Vec<usize> {
    literal_spans(sql).into_iter().map(|(start, _)| start).collect()
}

/// Byte ranges of the literal tokens, numbered as [`literal_values`].
pub(crate) fn literal_spans(sql: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for token in Lexer::new(sql) {
        let Ok((tok, start, end)) = token else {
            return Vec::new();
        };
        if matches!(tok, Tok::Str | Tok::BitStr | Tok::Int | Tok::Num) {
            out.push((start, end));
        }
    }
    out
}

fn decode_number(text: &str) -> Option<String> {
    let t: String = text.chars().filter(|c| *c != '_').collect();
    let radix = match t.get(..2) {
        Some("0x" | "0X") => 16,
        Some("0o" | "0O") => 8,
        Some("0b" | "0B") => 2,
        _ => return Some(t),
    };
    u64::from_str_radix(&t[2..], radix).ok().map(|v| v.to_string())
}

fn decode_string(text: &str) -> Option<String> {
    let b = text.as_bytes();
    match b.first()? {
        b'\'' => Some(unquote(&text[1..text.len() - 1])),
        b'e' | b'E' => unescape(&text[2..text.len() - 1]),
        b'n' | b'N' => decode_string(&text[1..]),
        b'u' | b'U' => {
            let body = &text[3..text.len() - 1];
            (!body.contains('\\')).then(|| unquote(body))
        }
        b'$' => {
            let tag_end = text[1..].find('$')? + 2;
            Some(text[tag_end..text.len() - tag_end].to_string())
        }
        _ => None,
    }
}

fn unquote(body: &str) -> String {
    body.replace("''", "'")
}

/// An `E'...'` body: backslash escapes as PostgreSQL's scanner reads them.
fn unescape(body: &str) -> Option<String> {
    let mut out: Vec<u8> = Vec::with_capacity(body.len());
    let b = body.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\'' {
            out.push(b'\'');
            i += 2; // a doubled quote
            continue;
        }
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let next = *b.get(i + 1)?;
        i += 2;
        match next {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'0'..=b'7' => {
                let mut v = u32::from(next - b'0');
                for _ in 0..2 {
                    match b.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 {
                    match b.get(i).and_then(|&d| (d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                            n += 1;
                        }
                        None => break,
                    }
                }
                if n == 0 {
                    out.push(b'x');
                } else {
                    out.push(v as u8);
                }
            }
            b'u' | b'U' => {
                let len = if next == b'u' { 4 } else { 8 };
                let hex = body.get(i..i + len)?;
                let ch = char::from_u32(u32::from_str_radix(hex, 16).ok()?)?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                i += len;
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(sql: &str) -> Vec<Option<(String, bool)>> {
        literal_values(sql).into_iter().map(|l| l.map(|l| (l.text, l.numeric))).collect()
    }

    #[test]
    fn every_spelling_decoded() {
        let s = |t: &str| Some((t.to_string(), false));
        let n = |t: &str| Some((t.to_string(), true));
        assert_eq!(
            values("SELECT 'it''s', E'a\\nb\\'c', $$x'y$$, $t$q$t$, 42, 1_000, 0x1F, 1.5e3, B'101', U&'d\\0061'"),
            vec![s("it's"), s("a\nb'c"), s("x'y"), s("q"), n("42"), n("1000"), n("31"), n("1.5e3"), None, None]
        );
        assert_eq!(values("SELECT a FROM t WHERE id = $1 -- 'not a literal'"), vec![]);
        assert_eq!(values("SELECT E'\\x41\\101\\u00e9'"), vec![s("AAé")]);
        assert_eq!(literal_starts("SELECT 'a', 5"), vec![7, 12]);
    }

    fn token_texts(sql: &str) -> Vec<String> {
        Lexer::new(sql)
            .map_while(Result::ok)
            .filter(|(tok, _, _)| matches!(tok, Tok::Str | Tok::BitStr | Tok::Int | Tok::Num))
            .map(|(_, a, b)| sql[a..b].to_string())
            .collect()
    }

    #[test]
    fn one_literal_read_alone_is_the_same_as_all_of_them() {
        for sql in [
            "SELECT 'it''s', E'a\\nb', $$x'y$$, 42, 1_000, 0x1F, 1.5e3, B'101', U&'d\\0061'",
            "SELECT a FROM t WHERE id = $1 AND b = 'x' -- 'not a literal'",
            "SELECT 'unterminated",
            "",
        ] {
            let all = literal_values(sql);
            for i in 0..all.len() + 2 {
                assert_eq!(literal_value_at(sql, i), all.get(i).cloned().flatten(), "{sql} #{i}");
            }
            for (token, want) in token_texts(sql).into_iter().zip(all) {
                if !token.starts_with(['b', 'B', 'x', 'X']) {
                    assert_eq!(literal_of_token(&token), want, "{token}");
                }
            }
        }
    }
}
