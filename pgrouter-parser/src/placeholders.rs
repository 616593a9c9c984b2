//! The placeholders that stand for literals in a statement's cache key
//! (`normalize`, `normalize_fast`, `template`). Control characters never
//! appear outside literals in text PostgreSQL accepts (the lexer rejects
//! them), so a placeholder can never be confused with text that was kept.

pub(crate) const INT: char = '\u{1}';
pub(crate) const NUM: char = '\u{2}';
pub(crate) const STR: char = '\u{3}';
pub(crate) const BITS: char = '\u{4}';
