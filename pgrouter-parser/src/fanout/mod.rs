//! Reads that need several shards: how to rewrite one SELECT so that each
//! shard returns what a merger can combine into exactly the answer one
//! PostgreSQL holding all the rows would give ([`plan_read`]), and what
//! the merger must do ([`MergeSpec`]). Pure: no I/O, no configuration.
//!
//! The rewrite keeps the statement's own text as far as possible (shards
//! still report the user's mistakes with PostgreSQL's own errors) and only
//! appends *hidden* columns — sort keys not in the select list, GROUP BY
//! expressions, HAVING's aggregates, avg's sum and count — which the
//! merger strips. LIMIT/OFFSET become `LIMIT limit + offset` on each shard.
//! Whatever cannot be merged exactly is refused with an [`Unsupported`]
//! message for a 0A000 error.

mod exprs;
mod having;
mod limit;
mod plan;
mod spec;
#[cfg(test)]
mod tests;

pub use plan::plan_read;
pub use spec::{Agg, Aggregation, CmpOp, Col, Count, MergeSpec, Operand, Predicate, Role, SortKey};

/// The rewritten statement and how to merge its results.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadPlan {
    /// What every shard runs (parameters `$n` as in the original).
    pub shard_sql: String,
    pub merge: MergeSpec,
}

/// Why a statement cannot be answered across shards: the whole message of
/// a 0A000 `feature_not_supported` error, naming the feature and a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

impl Unsupported {
    pub(crate) fn new(what: &str, hint: &str) -> Unsupported {
        Unsupported(format!("not supported across shards: {what}{HINT}{hint}"))
    }

    /// The message and the hint apart, for an ErrorResponse's M and H fields.
    pub fn parts(&self) -> (&str, &str) {
        self.0.split_once(HINT).unwrap_or((&self.0, ""))
    }
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsupported {}

const HINT: &str = "; hint: ";

/// The hint for what only one shard can answer.
pub(crate) const ONE_SHARD: &str = "add the shard key to the WHERE clause so that one shard answers";
