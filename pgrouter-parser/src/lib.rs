//! What a SQL statement is, for pgrouter's routing: kind, read or write,
//! transaction effect, SET details, tables, hints and role-escalation
//! attempts — computed with pg_query (PostgreSQL's own parser) and cached.
//!
//! The crate is pure: no I/O, no async, no globals. The router owns an
//! [`AnalysisCache`] and calls [`AnalysisCache::analyze`] for every statement;
//! [`analyze`] is the uncached function underneath.
//!
//! # Writes
//! A statement must run on the primary when it is INSERT/UPDATE/DELETE/MERGE,
//! any DDL (CREATE/ALTER/DROP/TRUNCATE/GRANT/REVOKE/COMMENT/..., CREATE TABLE
//! AS, REFRESH MATERIALIZED VIEW, CLUSTER, REINDEX), `SELECT ... FOR UPDATE /
//! NO KEY UPDATE / SHARE / KEY SHARE` (at any depth), a statement with a
//! data-modifying CTE, `SELECT INTO`, a call of a write function anywhere in
//! it (see below), COPY FROM, CALL, DO, LOCK, VACUUM, ANALYZE, EXPLAIN ANALYZE
//! of a write, PREPARE of a write, LISTEN/UNLISTEN/NOTIFY (notifications live
//! on the primary), CHECKPOINT, LOAD, or anything pg_query cannot parse.
//! A statement too deeply nested for a full analysis (pg_query hands its tree
//! to Rust only up to ~45 nested operators) is a write unless pg_query's
//! C-side summary shows a plain read.
//!
//! Reads: SELECT, VALUES, TABLE, SHOW, EXPLAIN (without ANALYZE, or of a
//! read), DECLARE/FETCH/MOVE/CLOSE of a read, `EXECUTE name` (the router
//! routes it by the PREPARE it saw). SET/RESET/DISCARD/DEALLOCATE and
//! transaction control are not writes: the router handles them itself.
//!
//! Write functions: `nextval`, `setval`, every `pg_advisory*lock*` and
//! `pg_try_advisory_*`, every `lo_*` (and `loread`/`lowrite`),
//! `txid_current`, `pg_current_xact_id`, `pg_notify`, the replication-slot,
//! WAL and restore-point functions, plus the configured `write_functions`;
//! names compare without regard to case, in any schema.
//!
//! # Pieces
//! - [`analysis`](crate::Analysis): the result types.
//! - `classify`: the statement-type match; `walk`: a complete tree walk
//!   (through the tree's serde derive) for what a statement contains;
//!   `functions`, `set`, `hint`: the rules for calls, SET and hints;
//!   `fallback`: statements too deeply nested for pg_query's Rust decoder.
//! - `lexer` + [`normalize_key`]: the literal-insensitive cache key.
//! - [`AnalysisCache`]: the bounded concurrent cache.

#![warn(missing_docs)]

mod analysis;
mod analyze;
mod cache;
mod classify;
/// COPY statements' table, columns and data format, for splitting COPY rows per shard.
pub mod copy;
mod explain_route;
mod fallback;
mod function_body;
mod functions;
mod hint;
pub use hint::{shard_number, NO_SUCH_SHARD};
mod lexer;
mod normalize;
mod normalize_fast;
mod parse;
mod placeholders;
mod session_state;
mod set;
mod set_config;
// Field and variant names of the sharding facts say what they are; the types carry the docs.
#[allow(missing_docs)]
pub mod shard;
// Field and variant names of the merge spec say what they are; the types carry the docs.
#[allow(missing_docs)]
pub mod fanout;
mod template;
mod walk;

#[cfg(test)]
mod fuzz_tests;

pub use analysis::{
    Analysis, DiscardKind, Escalation, Hint, ResetTarget, RoleHint, SessionSetting, SetKind, SetStatement,
    StatementInfo, StatementKind, TxEffect,
};
pub use analyze::analyze;

/// The statement after a leading `EXPLAIN (ROUTE)` (blanks and comments
/// around the words skipped), or `None` when the text does not start so:
/// what the router asks PostgreSQL about when it answers such a statement
/// prepared with parameters (their types).
pub fn explained_statement(sql: &str) -> Option<&str> {
    explain_route::explained(sql)
}
pub use cache::{AnalysisCache, Lookup};
pub use normalize::normalize_key;
pub use session_state::{is_temp_schema, mentions_temp_schema, SessionState, SessionStateChange};
pub use template::Template;

/// The text of each statement of a query string, as PostgreSQL's parser
/// splits it (one per entry of [`Analysis::statements`]); `None` when the
/// string does not parse. For the rare strings where the router needs one
/// statement's own text (a PREPARE among others).
pub fn split_statements(sql: &str) -> Option<Vec<&str>> {
    pg_query::split_with_parser(sql).ok()
}

/// Entry points for the fuzz targets in `fuzz/`; not part of the API.
#[doc(hidden)]
pub mod fuzz_api;
