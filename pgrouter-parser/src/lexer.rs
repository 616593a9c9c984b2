//! A small SQL tokenizer that follows PostgreSQL's scanner (scan.l, with
//! `standard_conforming_strings = on`, as pg_query parses) closely enough to
//! find where literals, comments, quoted identifiers and dollar quotes start
//! and end. It does not classify keywords or split operators: the cache key
//! and the hint reader only need token boundaries.
//!
//! Hand-written because it runs on every cache miss by exact text (every
//! pgbench `-M simple` statement): it must cost a fraction of pg_query's parse.

/// What a token is. Operators and punctuation come out one byte at a time
/// ([`Tok::Other`]); joining them back gives the same text, which is all the
/// callers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tok {
    /// A run of whitespace.
    Space,
    /// One `-- ...` or (possibly nested) `/* ... */` comment.
    Comment,
    /// A character string constant: `'...'`, `E'...'`, `U&'...'`, `$tag$...$tag$`.
    Str,
    /// A bit string constant: `B'...'` or `X'...'` (a different token in the grammar).
    BitStr,
    /// An integer constant that fits in 32 bits (the grammar's ICONST).
    Int,
    /// Any other numeric constant (FCONST: decimals, exponents, large integers).
    Num,
    /// An unquoted identifier or keyword.
    Ident,
    /// `"..."` or `U&"..."`.
    QuotedIdent,
    /// `$1`.
    Param,
    /// Any other single byte (operator or punctuation).
    Other,
}

/// The text cannot be tokenized the way PostgreSQL would accept it
/// (unterminated literal or comment, junk after a number, control character).
/// PostgreSQL will reject it too, so callers simply give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LexError;

/// Iterator over `(token, start, end)` byte ranges of `sql`.
pub(crate) struct Lexer<'a> {
    b: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(sql: &'a str) -> Self {
        Lexer { b: sql.as_bytes(), pos: 0, failed: false }
    }

    fn at(&self, i: usize) -> u8 {
        self.b.get(i).copied().unwrap_or(0)
    }

    fn next_token(&mut self) -> Result<(Tok, usize), LexError> {
        let b = self.b;
        let start = self.pos;
        let c = b[start];
        let c1 = self.at(start + 1);
        let c2 = self.at(start + 2);
        let (tok, end) = match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c' => {
                let mut i = start + 1;
                while i < b.len() && is_space(b[i]) {
                    i += 1;
                }
                (Tok::Space, i)
            }
            b'-' if c1 == b'-' => {
                let mut i = start + 2;
                while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                    i += 1;
                }
                (Tok::Comment, i)
            }
            b'/' if c1 == b'*' => (Tok::Comment, block_comment_end(b, start)?),
            b'\'' => (Tok::Str, quoted_end(b, start + 1, b'\'', Esc::Double)?),
            b'e' | b'E' if c1 == b'\'' => (Tok::Str, quoted_end(b, start + 2, b'\'', Esc::Backslash)?),
            // In bit strings `''` is not a quote: `B''''` is B'' then ''.
            b'b' | b'B' | b'x' | b'X' if c1 == b'\'' => (Tok::BitStr, quoted_end(b, start + 2, b'\'', Esc::None)?),
            b'u' | b'U' if c1 == b'&' && c2 == b'\'' => (Tok::Str, quoted_end(b, start + 3, b'\'', Esc::Double)?),
            b'u' | b'U' if c1 == b'&' && c2 == b'"' => (Tok::QuotedIdent, quoted_end(b, start + 3, b'"', Esc::Double)?),
            b'"' => (Tok::QuotedIdent, quoted_end(b, start + 1, b'"', Esc::Double)?),
            b'$' => dollar(b, start)?,
            b'0'..=b'9' => number(b, start)?,
            // `..` is one token (DOT_DOT): `1..2` is 1, `..`, 2, not 1, `.`, `.2`.
            b'.' if c1 == b'.' => (Tok::Other, start + 2),
            b'.' if c1.is_ascii_digit() => number(b, start)?,
            _ if is_ident_start(c) => {
                let mut i = start + 1;
                while i < b.len() && is_ident_cont(b[i]) {
                    i += 1;
                }
                (Tok::Ident, i)
            }
            // PostgreSQL rejects control characters outside literals; the
            // cache key also uses a few of them as placeholders.
            0..=0x1f | 0x7f => return Err(LexError),
            _ => (Tok::Other, start + 1),
        };
        self.pos = end;
        Ok((tok, end))
    }
}

impl Iterator for Lexer<'_> {
    type Item = Result<(Tok, usize, usize), LexError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.b.len() {
            return None;
        }
        let start = self.pos;
        match self.next_token() {
            Ok((tok, end)) => Some(Ok((tok, start, end))),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

/// `[A-Za-z\200-\377_]`: UTF-8 lead and continuation bytes are all >= 0x80,
/// so a multi-byte character is always taken whole.
pub(crate) fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

/// `[A-Za-z\200-\377_0-9\$]`.
pub(crate) fn is_ident_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

/// End of a nested `/* ... */` comment starting at `start`.
fn block_comment_end(b: &[u8], start: usize) -> Result<usize, LexError> {
    let mut depth = 0usize;
    let mut i = start;
    while i + 1 < b.len() {
        if b[i] == b'/' && b[i + 1] == b'*' {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b[i + 1] == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return Ok(i);
            }
        } else {
            i += 1;
        }
    }
    Err(LexError)
}

/// How a quoted literal escapes its closing quote.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Esc {
    /// No escapes (bit strings).
    None,
    /// A doubled quote stands for itself.
    Double,
    /// Doubled quote, and `\` escapes the next byte (E'' strings).
    Backslash,
}

/// End (exclusive) of a literal whose body starts at `i`, closed by `q`.
fn quoted_end(b: &[u8], mut i: usize, q: u8, esc: Esc) -> Result<usize, LexError> {
    while i < b.len() {
        let c = b[i];
        if c == q {
            if esc != Esc::None && b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return Ok(i + 1);
        }
        if c == 0 {
            return Err(LexError);
        }
        i += if esc == Esc::Backslash && c == b'\\' { 2 } else { 1 };
    }
    Err(LexError)
}

/// `$1` (a parameter), `$tag$ ... $tag$` / `$$ ... $$` (a string), or a lone `$`.
fn dollar(b: &[u8], start: usize) -> Result<(Tok, usize), LexError> {
    let mut i = start + 1;
    if b.get(i).is_some_and(u8::is_ascii_digit) {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        return Ok((Tok::Param, i));
    }
    if b.get(i).copied().is_some_and(is_ident_start) {
        while b.get(i).is_some_and(|&c| is_ident_cont(c) && c != b'$') {
            i += 1;
        }
    }
    if b.get(i) != Some(&b'$') {
        // Not a dollar quote: PostgreSQL returns the `$` on its own.
        return Ok((Tok::Other, start + 1));
    }
    let delim = &b[start..=i];
    let body = i + 1;
    match find(&b[body..], delim) {
        Some(at) => Ok((Tok::Str, body + at + delim.len())),
        None => Err(LexError),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        if hay[i] == first && &hay[i..i + needle.len()] == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// A numeric constant starting at `start` (a digit, or `.` and a digit),
/// following PostgreSQL 16+'s rules: `0x1F`, `0o17`, `0b101`, `1_000`, `1.5`,
/// `.5`, `1e10`, `1.5e-3`. Junk right after a number is an error there.
fn number(b: &[u8], start: usize) -> Result<(Tok, usize), LexError> {
    let digits = |mut i: usize, ok: fn(u8) -> bool| -> Result<usize, LexError> {
        // (_?digit)* after a first digit already consumed by the caller.
        loop {
            match b.get(i) {
                Some(&c) if ok(c) => i += 1,
                Some(b'_') if b.get(i + 1).is_some_and(|&c| ok(c)) => i += 2,
                Some(b'_') => return Err(LexError),
                _ => return Ok(i),
            }
        }
    };
    let junk_after = |i: usize| b.get(i).copied().is_some_and(is_ident_start);
    let is_dec = |c: u8| c.is_ascii_digit();

    if b[start] == b'0' {
        let radix: Option<(u32, DigitTest)> = match b.get(start + 1) {
            Some(b'x' | b'X') => Some((16, |c: u8| c.is_ascii_hexdigit())),
            Some(b'o' | b'O') => Some((8, |c: u8| (b'0'..=b'7').contains(&c))),
            Some(b'b' | b'B') => Some((2, |c: u8| c == b'0' || c == b'1')),
            _ => None,
        };
        if let Some((radix, ok)) = radix {
            let mut i = start + 2;
            if b.get(i) == Some(&b'_') {
                i += 1;
            }
            if !b.get(i).is_some_and(|&c| ok(c)) {
                return Err(LexError);
            }
            let end = digits(i + 1, ok)?;
            if junk_after(end) {
                return Err(LexError);
            }
            let tok = if fits_i32(&b[start + 2..end], radix) { Tok::Int } else { Tok::Num };
            return Ok((tok, end));
        }
    }

    let mut i = start;
    let mut integer = true;
    if b[i] != b'.' {
        i = digits(i + 1, is_dec)?;
        if b.get(i) == Some(&b'.') {
            if b.get(i + 1) == Some(&b'.') {
                // `1..`: PostgreSQL returns the integer and leaves the dots.
                return Ok((int_tok(&b[start..i]), i));
            }
            integer = false;
            i += 1;
            if b.get(i).is_some_and(u8::is_ascii_digit) {
                i = digits(i + 1, is_dec)?;
            }
        }
    } else {
        integer = false;
        i = digits(i + 2, is_dec)?;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if !b.get(j).is_some_and(u8::is_ascii_digit) {
            return Err(LexError); // `1e+` or `1ex`: trailing junk
        }
        integer = false;
        i = digits(j + 1, is_dec)?;
    }
    if junk_after(i) {
        return Err(LexError);
    }
    Ok((if integer { int_tok(&b[start..i]) } else { Tok::Num }, i))
}

/// Whether a byte is a digit of some radix.
type DigitTest = fn(u8) -> bool;

fn int_tok(text: &[u8]) -> Tok {
    if fits_i32(text, 10) {
        Tok::Int
    } else {
        Tok::Num
    }
}

/// PostgreSQL makes an integer literal an ICONST only when it fits in int32;
/// a larger one is an FCONST, which the grammar accepts in fewer places.
fn fits_i32(digits: &[u8], radix: u32) -> bool {
    let mut v: u64 = 0;
    for &c in digits {
        if c == b'_' {
            continue;
        }
        let d = (c as char).to_digit(radix).unwrap_or(0) as u64;
        v = v * radix as u64 + d;
        if v > i32::MAX as u64 {
            return false;
        }
    }
    true
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn toks(sql: &str) -> Result<Vec<(Tok, &str)>, LexError> {
        Lexer::new(sql).map(|r| r.map(|(t, s, e)| (t, &sql[s..e]))).collect()
    }

    #[test]
    fn literals_and_comments() {
        use Tok::*;
        let t = toks("SELECT 'it''s', E'\\'', $$a$$, $a$ $$ $a$, \"x\"\"y\", $1 -- c\n/* /* n */ */").unwrap();
        let kinds: Vec<Tok> = t.iter().map(|x| x.0).filter(|k| *k != Space).collect();
        assert_eq!(
            kinds,
            vec![Ident, Str, Other, Str, Other, Str, Other, Str, Other, QuotedIdent, Other, Param, Comment, Comment]
        );
        assert_eq!(t[2].1, "'it''s'");
        assert_eq!(t[5].1, "E'\\''");
    }

    #[test]
    fn numbers() {
        use Tok::*;
        for (s, k) in [
            ("1", Int),
            ("2147483647", Int),
            ("2147483648", Num),
            ("1_000", Int),
            ("0x1F", Int),
            ("0xFFFFFFFF", Num),
            ("0o17", Int),
            ("0b101", Int),
            (".5", Num),
            ("1.", Num),
            ("1.5e-3", Num),
            ("1e10", Num),
        ] {
            assert_eq!(toks(s).unwrap(), vec![(k, s)], "{s}");
        }
        assert_eq!(toks("1..2").unwrap(), vec![(Int, "1"), (Other, ".."), (Int, "2")]);
        for bad in ["1x", "1e", "1e+", "0x", "1_", "1__0", "'open", "/* open", "$a$ open", "\u{1}"] {
            assert!(toks(bad).is_err(), "{bad}");
        }
    }

    /// The token boundaries and literal kinds agree with PostgreSQL's own
    /// scanner (as pg_query exposes it) on text full of lexing traps.
    #[test]
    fn agrees_with_postgres_scanner() {
        let texts = [
            "SELECT 'it''s', E'\\'', E'a\\\\b', $$x$$, $a$ $$ $a$, $1, \"q\"\"i\", U&\"d\\0061t\", U&'x'",
            "SELECT 1, 1.5, .5, 1., 1e10, 1.5e-3, 0x1F, 0o17, 0b101, 1_000, 2147483647, 2147483648, 0xFFFFFFFF",
            "SELECT a->>'k', b::int, c||'x', d<=$2, B'101', X'1F' /* /* nested */ */ -- tail",
            "SELECT t.1, a$b$, \"x\"y, 'a'--c\n, foo.\"Bar\".baz FROM t1 WHERE x@>'{}' AND y !~~* 'z'",
            "SELECT 1..2, 3 . 4, ARRAY[1,2][1:2], $tag_1$ body $tag $tag_1$, éxyz, _u, e'x', b'1', x'f'",
        ];
        for sql in texts {
            assert!(agrees_with_scanner(sql), "{sql}");
        }
    }

    /// Checks our tokens against pg_query's scanner; false when either
    /// cannot tokenize `sql` (nothing to compare).
    pub(crate) fn agrees_with_scanner(sql: &str) -> bool {
        use pg_query::protobuf::{KeywordKind, Token as T};
        let Ok(scanned) = pg_query::scan(sql) else {
            return false;
        };
        let scanned = scanned.tokens;
        let Ok(mine) = Lexer::new(sql).collect::<Result<Vec<_>, _>>() else {
            return false;
        };
        // PostgreSQL joins string literals separated by a newline into one
        // token; the cache key refuses any two strings in a row, so such
        // texts are left out here.
        let significant: Vec<Tok> =
            mine.iter().map(|t| t.0).filter(|t| !matches!(t, Tok::Space | Tok::Comment)).collect();
        let strings = |t: &Tok| matches!(t, Tok::Str | Tok::BitStr);
        if significant.windows(2).any(|w| strings(&w[0]) && strings(&w[1])) {
            return false;
        }
        for &(tok, start, end) in &mine {
            if matches!(tok, Tok::Space | Tok::Other) {
                continue;
            }
            let theirs = scanned
                .iter()
                .find(|t| t.start as usize == start && t.end as usize == end)
                .unwrap_or_else(|| panic!("{sql:?}: no scanner token at {:?}", &sql[start..end]));
            let is = |kinds: &[T]| kinds.iter().any(|k| *k as i32 == theirs.token);
            let ok = match tok {
                Tok::Str => is(&[T::Sconst, T::Usconst]),
                Tok::BitStr => is(&[T::Bconst, T::Xconst]),
                Tok::Int => is(&[T::Iconst]),
                Tok::Num => is(&[T::Fconst]),
                Tok::Param => is(&[T::Param]),
                Tok::Comment => is(&[T::SqlComment, T::CComment]),
                Tok::QuotedIdent => is(&[T::Ident, T::Uident]),
                Tok::Ident => is(&[T::Ident]) || theirs.keyword_kind != KeywordKind::NoKeyword as i32,
                Tok::Space | Tok::Other => true,
            };
            assert!(ok, "{sql:?}: {:?} is {tok:?}, scanner says {}", &sql[start..end], theirs.token);
        }
        // Every literal the scanner sees is one of ours.
        let literals = [T::Sconst, T::Usconst, T::Bconst, T::Xconst, T::Iconst, T::Fconst];
        for t in scanned.iter().filter(|t| literals.iter().any(|k| *k as i32 == t.token)) {
            assert!(
                mine.iter().any(|m| m.1 == t.start as usize && m.2 == t.end as usize),
                "{sql:?}: we missed {:?}",
                &sql[t.start as usize..t.end as usize]
            );
        }
        true
    }

    #[test]
    fn identifiers_with_dollars_are_not_dollar_quotes() {
        use Tok::*;
        assert_eq!(toks("a$b$ $").unwrap(), vec![(Ident, "a$b$"), (Space, " "), (Other, "$")]);
    }
}
