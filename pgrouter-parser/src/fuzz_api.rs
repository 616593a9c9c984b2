//! The crate's hand-written fast paths, opened to the fuzz targets in
//! `fuzz/` (a separate package, so it can only reach public items). Not
//! part of the API: nothing in pgrouter calls these, and they may change.
//!
//! The fuzzers compare what these functions say with PostgreSQL's own
//! scanner and parser (pg_query): token boundaries and literal kinds, the
//! keys of the one-pass and the tokenizer paths, the literals a template
//! would take as holes.

use crate::lexer::Lexer;
use crate::normalize_fast::{fast_key_with, Fast};

/// A token kind of the crate's lexer.
pub use crate::lexer::Tok as TokenKind;

/// The lexer's tokens of `sql` as `(kind, start, end)` byte ranges, or None
/// when it refuses the text.
pub fn tokens(sql: &str) -> Option<Vec<(TokenKind, usize, usize)>> {
    Lexer::new(sql).map(Result::ok).collect()
}

/// What the one-pass key (`normalize_fast`) made of a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FastKey {
    /// The key, with each literal's `(start, end, placeholder)`.
    Key(String, Vec<(usize, usize, char)>),
    /// The text must not share an analysis.
    Refuse,
    /// Left to the tokenizer.
    Unsure,
}

/// The one-pass key of `sql` and the literals it found.
pub fn fast_key(sql: &str) -> FastKey {
    let mut literals = Vec::new();
    match fast_key_with(sql, |l| literals.push((l.start, l.end, l.placeholder))) {
        Fast::Key(key) => FastKey::Key(key, literals),
        Fast::Refuse => FastKey::Refuse,
        Fast::Unsure => FastKey::Unsure,
    }
}

/// The key built from the tokenizer's tokens (what [`crate::normalize_key`]
/// falls back to when the one-pass key is unsure).
pub fn tokenized_key(sql: &str) -> Option<String> {
    crate::normalize::tokenized_key(sql)
}

/// The routing hint read from `sql`'s leading and trailing comments.
pub fn hint(sql: &str) -> crate::Hint {
    crate::hint::extract(sql)
}
