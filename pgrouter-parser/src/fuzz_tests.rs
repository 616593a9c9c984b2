//! Generated statements, deterministic: the cache key against PostgreSQL's
//! scanner, and "same key => same analysis" on many texts that differ only
//! in literal values (and on every pair that happens to share a key).

use crate::lexer::tests::agrees_with_scanner;
use crate::{analyze, normalize_key, Analysis};
use std::collections::HashMap;

/// xorshift64*: no dependency, same sequence on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

const INTS: &[&str] = &["0", "7", "42", "2147483647", "1_000", "0x1F", "0o17", "0b101"];
const NUMS: &[&str] = &["1.5", ".5", "1.", "1e10", "2.5E-3", "2147483648", "99999999999", "0xFFFFFFFF"];
const STRS: &[&str] = &[
    "'x'",
    "'it''s'",
    "''",
    "E'\\''",
    "E'a\\\\b\\n'",
    "$$d$$",
    "$t$ $$ ' $t$",
    "'--not a comment'",
    "'/* nor this */'",
    "'\"'",
    "'pgrouter: role=primary'",
];
const BITS: &[&str] = &["B'101'", "X'1F'", "b'0'"];
const IDENTS: &[&str] = &["a", "t.b", "\"Q x\"", "x1", "a$b", "_u", "éa", "U&\"d\\0061t\""];
const FUNCS: &[&str] = &["lower", "nextval", "set_config", "pg_advisory_lock", "coalesce", "public.nextval"];
const OPS: &[&str] = &["+", "-", "*", "||", "->>", "=", "<=", "AND", "OR", "::text ||", "@>"];
const SEPS: &[&str] = &[" ", " ", " ", "  ", "\n", " /* c */ ", "/**/", " -- c\n", "\t", ""];
const TAILS: &[&str] = &[
    "",
    " FROM t",
    " FROM t WHERE id = $1",
    " FROM t FOR UPDATE",
    " FROM t FOR KEY SHARE",
    " INTO z FROM t",
    " FROM (SELECT * FROM u FOR SHARE) s",
    " LIMIT 1",
    "; INSERT INTO t VALUES (1)",
    "; SET work_mem = 1",
];

/// One literal slot: its class, so a variant can pick another value.
#[derive(Clone, Copy)]
enum Class {
    Int,
    Num,
    Str,
    Bits,
}

fn values(c: Class) -> &'static [&'static str] {
    match c {
        Class::Int => INTS,
        Class::Num => NUMS,
        Class::Str => STRS,
        Class::Bits => BITS,
    }
}

/// A statement as pieces: fixed text and literal slots.
enum Piece {
    Text(String),
    Lit(Class),
}

fn expr(r: &mut Rng, depth: usize, out: &mut Vec<Piece>) {
    operand(r, depth, out);
    for _ in 0..r.below(3) {
        let sep = r.pick(SEPS);
        out.push(Piece::Text(format!("{sep}{}{}", r.pick(OPS), r.pick(SEPS))));
        operand(r, depth, out);
    }
}

fn operand(r: &mut Rng, depth: usize, out: &mut Vec<Piece>) {
    match r.below(if depth > 2 { 3 } else { 5 }) {
        0 => {
            let class = [Class::Int, Class::Num, Class::Str, Class::Bits][r.below(4)];
            out.push(Piece::Lit(class));
        }
        1 => out.push(Piece::Text(r.pick(IDENTS).to_string())),
        2 => out.push(Piece::Text(format!("${}", 1 + r.below(3)))),
        3 => {
            out.push(Piece::Text(format!("{}(", r.pick(FUNCS))));
            expr(r, depth + 1, out);
            if r.below(2) == 0 {
                out.push(Piece::Text(", ".to_string()));
                expr(r, depth + 1, out);
            }
            out.push(Piece::Text(")".to_string()));
        }
        _ => {
            out.push(Piece::Text("(".to_string()));
            expr(r, depth + 1, out);
            out.push(Piece::Text(")".to_string()));
        }
    }
}

fn render(pieces: &[Piece], r: &mut Rng) -> String {
    let mut s = String::new();
    for p in pieces {
        match p {
            Piece::Text(t) => s.push_str(t),
            Piece::Lit(c) => s.push_str(r.pick(values(*c))),
        }
    }
    s
}

fn shape(a: &Analysis) -> String {
    format!("{:?} {} {:?} {:?} {}", a.statements, a.is_write, a.tables, a.escalation, a.parse_error.is_some())
}

#[test]
fn generated_statements() {
    // PGROUTER_FUZZ_ITERS / PGROUTER_FUZZ_SEED run it longer or differently.
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let iterations = env("PGROUTER_FUZZ_ITERS").unwrap_or(1500);
    let mut r = Rng(env("PGROUTER_FUZZ_SEED").unwrap_or(0x9e37_79b9_7f4a_7c15) | 1);
    let mut by_key: HashMap<String, (String, String)> = HashMap::new();
    let (mut compared, mut scanned) = (0, 0);
    for _ in 0..iterations {
        let mut pieces = vec![Piece::Text(format!("SELECT{}", r.pick(&[" ", "\n", "/**/"])))];
        expr(&mut r, 0, &mut pieces);
        pieces.push(Piece::Text(r.pick(TAILS).to_string()));
        for _ in 0..3 {
            let sql = render(&pieces, &mut r);
            scanned += agrees_with_scanner(&sql) as usize;
            let Some(key) = normalize_key(&sql) else {
                continue;
            };
            let a = analyze(&sql, &[]);
            if a.literal_sensitive {
                continue;
            }
            let s = shape(&a);
            match by_key.get(&key) {
                Some((first_sql, first_shape)) => {
                    compared += 1;
                    assert_eq!(&s, first_shape, "\n{first_sql:?}\n{sql:?}\nshare key {key:?}");
                }
                None => {
                    by_key.insert(key, (sql, s));
                }
            }
        }
    }
    eprintln!("{compared} same-key comparisons, {scanned} texts checked against the scanner");
    assert!(compared as u64 > iterations / 3, "only {compared} comparisons");
    assert!(scanned as u64 > iterations, "only {scanned} texts checked against the scanner");
}

/// Character soup made of the bytes that matter to the lexer: wherever both
/// tokenizers accept the text, they agree.
#[test]
fn character_soup_against_the_scanner() {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let iterations = env("PGROUTER_FUZZ_ITERS").unwrap_or(3000);
    let mut r = Rng(env("PGROUTER_FUZZ_SEED").unwrap_or(0x2545_f491) | 1);
    let alphabet: Vec<char> = "'\"$eEbBxXuUnN&0129._- \n\r\t*/+;:=<>()[],\\tq_é@!?%^|~#{}".chars().collect();
    let mut both = 0;
    for _ in 0..iterations {
        let len = 1 + r.below(24);
        let sql: String = (0..len).map(|_| alphabet[r.below(alphabet.len())]).collect();
        both += agrees_with_scanner(&sql) as usize;
    }
    eprintln!("{both} of {iterations} texts tokenized by both");
    assert!(both as u64 > iterations / 10, "only {both} texts tokenized by both");
}

/// The one-pass key ([`crate::normalize_fast`]) is the tokenizer's key, or
/// the tokenizer's refusal, on every text it does not leave to the tokenizer:
/// generated statements and character soup rich in what it does handle.
#[test]
fn fast_key_is_the_tokenizer_key() {
    use crate::normalize::tokenized_key;
    use crate::normalize_fast::{fast_key, Fast};
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let iterations = env("PGROUTER_FUZZ_ITERS").unwrap_or(3000);
    let mut r = Rng(env("PGROUTER_FUZZ_SEED").unwrap_or(0x51_7cc1_b727) | 1);
    let alphabet: Vec<char> =
        "'''\"$eEbBxXuUnN&&0129999._- -\n\r\t*/+;:=<>()[],\\tq_é@!?%^|~#{}\u{1}\0".chars().collect();
    let (mut keys, mut refusals) = (0, 0);
    let mut check = |sql: &str| match fast_key(sql) {
        Fast::Unsure => {}
        Fast::Key(key) => {
            keys += 1;
            assert_eq!(Some(key), tokenized_key(sql), "{sql:?}");
        }
        Fast::Refuse => {
            refusals += 1;
            assert_eq!(None, tokenized_key(sql), "{sql:?}");
        }
    };
    for _ in 0..iterations {
        let len = 1 + r.below(24);
        let soup: String = (0..len).map(|_| alphabet[r.below(alphabet.len())]).collect();
        check(&soup);
        let mut pieces = vec![Piece::Text("SELECT ".to_string())];
        expr(&mut r, 0, &mut pieces);
        pieces.push(Piece::Text(r.pick(TAILS).to_string()));
        check(&render(&pieces, &mut r));
    }
    eprintln!("{keys} keys and {refusals} refusals made by the fast pass");
    assert!(keys as u64 > iterations / 4, "only {keys} keys");
    assert!(refusals as u64 > iterations / 20, "only {refusals} refusals");
}

/// A text that matches another's [`crate::Template`] has that text's
/// normalised key: on generated statements (made of what templates handle)
/// with other literal values, and on the same texts with one byte changed.
#[test]
fn template_matches_mean_equal_keys() {
    use crate::Template;
    const WORDS: &[&str] = &["a", "t.b", "x1", "_u", "éa", "=", "+", "-", "<=", ",", "(", ")", "||", "::text", ";"];
    const SEPS: &[&str] = &[" ", " ", "  ", "\n", "", "\t"];
    const INTS: &[&str] = &["0", "7", "42", "2147483647", "2147483648", "99999999999"];
    const STRS: &[&str] = &["'x'", "''", "'it''s'", "'é'", "'--'", "'/*'", "'$1'"];
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let iterations = env("PGROUTER_FUZZ_ITERS").unwrap_or(3000);
    let mut r = Rng(env("PGROUTER_FUZZ_SEED").unwrap_or(0x7e_3b1a_5c09) | 1);
    let mutations: &[u8] = b"'09 .x_$\"-/e;(";
    let (mut matched, mut templates) = (0, 0);
    for _ in 0..iterations {
        // None: a literal slot (integer or string), filled anew per rendering.
        let mut shape: Vec<Option<&str>> = vec![Some("SELECT ")];
        for _ in 0..3 + r.below(8) {
            match r.below(3) {
                0 => shape.push(None),
                _ => shape.push(Some(r.pick(WORDS))),
            }
            shape.push(Some(r.pick(SEPS)));
        }
        let strings = r.below(2) == 0;
        let render = |r: &mut Rng| -> String {
            let lit = |r: &mut Rng| if strings { r.pick(STRS) } else { r.pick(INTS) };
            shape.iter().map(|p| p.unwrap_or_else(|| lit(r))).collect()
        };
        let first = render(&mut r);
        let Some(template) = Template::new(&first) else {
            continue;
        };
        templates += 1;
        for _ in 0..4 {
            let mut text = render(&mut r).into_bytes();
            if r.below(2) == 0 {
                let at = r.below(text.len());
                text[at] = mutations[r.below(mutations.len())];
            }
            let mut at = text.clone();
            at.push(0);
            if let Some(len) = template.match_cstr(&at) {
                assert_eq!(len, text.len());
                let text = std::str::from_utf8(&text).expect("a match is valid UTF-8");
                assert_eq!(normalize_key(text), normalize_key(&first), "\n{first:?}\n{text:?}");
                matched += 1;
            }
        }
    }
    eprintln!("{templates} templates, {matched} matches");
    assert!(templates as u64 > iterations / 3, "only {templates} templates");
    assert!(matched > templates, "only {matched} matches");
}
