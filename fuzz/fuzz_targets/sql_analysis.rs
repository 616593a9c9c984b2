//! SQL analysis, differential: pgrouter-parser's hand-written lexer, one-pass
//! key, tokenizer key and templates against PostgreSQL's own scanner and
//! parser (pg_query), and the cache's shared analyses against a full parse.
//!
//! Input: one query text, or two separated by a NUL (a protocol string
//! cannot hold a NUL, so the split costs nothing). For each text:
//! - where both tokenize it, the lexer's tokens are the scanner's: the same
//!   boundaries for every literal, comment, parameter, identifier and
//!   keyword (so the same literal positions and the same `;`, i.e. the same
//!   statement split), every literal of the same kind, every other byte
//!   inside a scanner operator or punctuation token;
//! - a text the lexer refuses is one PostgreSQL's parser refuses too;
//! - the one-pass key is the tokenizer's key (or both refuse), and its
//!   literals are exactly the lexer's literals;
//! - a text with a routing hint has no key (it can share no analysis);
//! - the analysis is consistent: `is_write` covers every statement and
//!   every parse error, and a parsed text has as many statements as
//!   pg_query's own split.
//!
//! Then pairs: the text and the same text with other literal values (two
//! substitutions), and the two input texts. Whenever two texts A and B have
//! the same key and A's analysis may be shared (not literal-sensitive):
//! - a template of A that matches B means the keys are equal;
//! - the analysis the cache hands B after caching A (what a session gets
//!   from the normalised-key fast path) routes B exactly as B's own full
//!   parse does: same statements, read/write verdict, tables, escalation
//!   flags, `set_config` tracking and hint. A text PostgreSQL rejects runs
//!   nothing, so how it is routed does not matter and it is left out.

use pg_query::protobuf::{KeywordKind, ScanToken, Token as T};
use pgrouter_fuzz::verbose;
use pgrouter_parser::fuzz_api::{self, FastKey, TokenKind as K};
use pgrouter_parser::{analyze, normalize_key, Analysis, AnalysisCache, Hint, Lookup, Template};

/// Longer texts add little coverage and slow every execution down.
const MAX_LEN: usize = 4096;

fn main() {
    afl::fuzz_nohook!(|data: &[u8]| check(data));
}

fn check(data: &[u8]) {
    if data.len() > MAX_LEN {
        return;
    }
    let text = String::from_utf8_lossy(data);
    let mut texts = text.split('\0');
    let a = texts.next().unwrap_or("");
    let b = texts.next();
    one_text(a);
    for sibling in siblings(a) {
        pair(a, &sibling);
        pair(&sibling, a);
    }
    if let Some(b) = b {
        one_text(b);
        pair(a, b);
        pair(b, a);
    }
}

fn one_text(sql: &str) {
    let mine = fuzz_api::tokens(sql);
    match &mine {
        Some(tokens) => agrees_with_scanner(sql, tokens),
        None => assert!(
            pg_query::parse(sql, 0).is_err(),
            "{sql:?}: the lexer refuses a text PostgreSQL parses"
        ),
    }

    let tokenized = fuzz_api::tokenized_key(sql);
    match fuzz_api::fast_key(sql) {
        FastKey::Key(key, literals) => {
            assert_eq!(
                Some(&key),
                tokenized.as_ref(),
                "{sql:?}: the one-pass key is not the tokenizer's"
            );
            let tokens = mine
                .as_deref()
                .expect("a text with a one-pass key tokenizes");
            let lexed: Vec<(usize, usize)> = tokens
                .iter()
                .filter(|t| matches!(t.0, K::Str | K::BitStr | K::Int | K::Num))
                .map(|t| (t.1, t.2))
                .collect();
            let fast: Vec<(usize, usize)> = literals.iter().map(|l| (l.0, l.1)).collect();
            assert_eq!(
                fast, lexed,
                "{sql:?}: the one-pass literals are not the lexer's"
            );
        }
        FastKey::Refuse => assert_eq!(
            tokenized, None,
            "{sql:?}: the one-pass pass refuses, the tokenizer does not"
        ),
        FastKey::Unsure => {}
    }
    let key = normalize_key(sql);
    if fuzz_api::hint(sql) != Hint::default() {
        assert_eq!(key, None, "{sql:?}: a text with a hint has a key");
    }

    let a = analyze(sql, &[]);
    assert_eq!(
        a.is_write,
        a.parse_error.is_some() || a.statements.iter().any(|s| s.is_write),
        "{sql:?}: {a:?}"
    );
    if a.parse_error.is_some() {
        assert!(
            a.statements.is_empty() && a.literal_sensitive,
            "{sql:?}: {a:?}"
        );
    } else if !a.literal_sensitive {
        // A full tree: one entry per statement of pg_query's own split.
        if let Ok(split) = pg_query::split_with_parser(sql) {
            assert_eq!(
                a.statements.len(),
                split.len(),
                "{sql:?}: statements {a:?} split {split:?}"
            );
        }
    }
    if verbose() {
        eprintln!(
            "text {sql:?}: tokens {} key {key:?} write {} sensitive {}",
            mine.is_some(),
            a.is_write,
            a.literal_sensitive
        );
    }
}

/// Token boundaries and kinds against pg_query's scanner (nothing to compare
/// when it refuses the text: PostgreSQL does too).
fn agrees_with_scanner(sql: &str, mine: &[(K, usize, usize)]) {
    let Ok(scan) = pg_query::scan(sql) else {
        return;
    };
    let theirs: Vec<ScanToken> = scan.tokens;
    // PostgreSQL joins string constants separated by a newline into one
    // token; the key refuses two strings in a row, so it never matters.
    let significant: Vec<K> = mine
        .iter()
        .map(|t| t.0)
        .filter(|k| !matches!(k, K::Space | K::Comment))
        .collect();
    let is_string = |k: &K| matches!(k, K::Str | K::BitStr);
    if significant
        .windows(2)
        .any(|w| is_string(&w[0]) && is_string(&w[1]))
    {
        return;
    }
    let is = |t: &ScanToken, kinds: &[T]| kinds.iter().any(|k| *k as i32 == t.token);
    let keyword = |t: &ScanToken| t.keyword_kind != KeywordKind::NoKeyword as i32;
    // Scanner tokens ours must match one to one; the rest are operators and
    // punctuation, which ours give byte by byte.
    let whole = |t: &ScanToken| {
        keyword(t)
            || is(
                t,
                &[
                    T::Ident,
                    T::Uident,
                    T::Sconst,
                    T::Usconst,
                    T::Bconst,
                    T::Xconst,
                    T::Iconst,
                    T::Fconst,
                    T::Param,
                    T::SqlComment,
                    T::CComment,
                ],
            )
    };
    let text = |s: usize, e: usize| sql.get(s..e).unwrap_or("?");
    for &(kind, start, end) in mine {
        if kind == K::Space {
            continue;
        }
        if kind == K::Other {
            let inside = theirs
                .iter()
                .find(|t| t.start as usize <= start && start < t.end as usize);
            assert!(
                inside.is_some_and(|t| !whole(t)),
                "{sql:?}: byte {start} ({:?}) is an operator byte to us, {inside:?} to the scanner",
                text(start, end)
            );
            continue;
        }
        let Some(t) = theirs
            .iter()
            .find(|t| t.start as usize == start && t.end as usize == end)
        else {
            panic!(
                "{sql:?}: no scanner token at {start}..{end} ({:?}, our {kind:?})",
                text(start, end)
            );
        };
        let ok = match kind {
            K::Str => is(t, &[T::Sconst, T::Usconst]),
            K::BitStr => is(t, &[T::Bconst, T::Xconst]),
            K::Int => is(t, &[T::Iconst]),
            K::Num => is(t, &[T::Fconst]),
            K::Param => is(t, &[T::Param]),
            K::Comment => is(t, &[T::SqlComment, T::CComment]),
            K::QuotedIdent => is(t, &[T::Ident, T::Uident]),
            K::Ident => is(t, &[T::Ident]) || keyword(t),
            K::Space | K::Other => true,
        };
        assert!(
            ok,
            "{sql:?}: {:?} is {kind:?} to us, token {} to the scanner",
            text(start, end),
            t.token
        );
    }
    for t in theirs.iter().filter(|t| whole(t)) {
        let (start, end) = (t.start as usize, t.end as usize);
        assert!(
            mine.iter().any(|m| m.1 == start && m.2 == end),
            "{sql:?}: we missed scanner token {} at {start}..{end} ({:?})",
            t.token,
            text(start, end)
        );
    }
}

/// The text with its literals replaced by other values of (mostly) the same
/// kind, two ways; texts whose key changes are simply not compared.
fn siblings(sql: &str) -> Vec<String> {
    let Some(tokens) = fuzz_api::tokens(sql) else {
        return Vec::new();
    };
    if !tokens
        .iter()
        .any(|t| matches!(t.0, K::Str | K::BitStr | K::Int | K::Num))
    {
        return Vec::new();
    }
    (0..2)
        .map(|way| {
            let mut out = String::with_capacity(sql.len() + 16);
            for &(kind, start, end) in &tokens {
                let lit = &sql[start..end];
                match (kind, way) {
                    (K::Int | K::Num, _) => out.push_str(&other_digits(lit, way)),
                    (K::Str, 0) => out.push_str("'x'"),
                    (K::Str, _) => out.push_str("$q$it's$q$"),
                    (K::BitStr, 0) => out.push_str("B'1'"),
                    (K::BitStr, _) => out.push_str("X'0f'"),
                    _ => out.push_str(lit),
                }
            }
            out
        })
        .collect()
}

/// A number with its digits changed, its shape (prefix, `_`, `.`, exponent) kept.
fn other_digits(lit: &str, way: usize) -> String {
    let radix = lit.len() > 2
        && lit.starts_with('0')
        && matches!(lit.as_bytes()[1], b'x' | b'X' | b'o' | b'O' | b'b' | b'B');
    let (prefix, digits) = lit.split_at(if radix { 2 } else { 0 });
    let mut first = true;
    let body: String = digits
        .chars()
        .map(|c| {
            if c.is_ascii_hexdigit() && (radix || c.is_ascii_digit()) {
                // Way 0: all ones; way 1: a one, then zeros.
                let d = if way == 0 || first { '1' } else { '0' };
                first = false;
                d
            } else {
                c
            }
        })
        .collect();
    format!("{prefix}{body}")
}

/// What the router decides on: statements, read/write, tables, policy flags
/// and hint (everything of an [`Analysis`] but the parse error message and
/// the sharing flag).
fn routing(a: &Analysis) -> impl PartialEq + std::fmt::Debug + '_ {
    (
        &a.statements,
        a.is_write,
        &a.tables,
        a.escalation,
        a.calls_set_config,
        &a.session_settings,
        a.hint,
    )
}

fn pair(a: &str, b: &str) {
    let (Some(key_a), Some(key_b)) = (normalize_key(a), normalize_key(b)) else {
        return;
    };
    let template = Template::new(a);
    if let Some(template) = &template {
        let mut at = b.as_bytes().to_vec();
        at.push(0);
        if let Some(len) = template.match_cstr(&at) {
            assert_eq!(
                len,
                b.len(),
                "{a:?} / {b:?}: a template match of the wrong length"
            );
            assert_eq!(
                key_a, key_b,
                "{a:?} / {b:?}: the template matches, the keys differ"
            );
        }
    }
    if key_a != key_b {
        return;
    }
    let cache = AnalysisCache::new(64, Vec::new());
    let first = cache.analyze(a);
    let shared = cache.analyze_preferring(b, &mut Lookup::NormalizedFirst);
    let own = analyze(b, &[]);
    if verbose() {
        eprintln!(
            "pair {a:?} / {b:?}: same key, shareable {}, b parses {}",
            !first.literal_sensitive,
            own.parse_error.is_none()
        );
    }
    if first.literal_sensitive || own.parse_error.is_some() {
        return;
    }
    assert_eq!(
        routing(&shared),
        routing(&own),
        "\n{a:?} and\n{b:?} share the key {key_a:?}, but the cache's analysis of the second is not its own"
    );
}
