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
//!
//! Merged: plain rows; ORDER BY any expressions (by output name, alias,
//! position or expression; ASC/DESC, NULLS FIRST/LAST, `COLLATE "C"`
//! recorded); LIMIT/OFFSET as constants or `$n`; DISTINCT; `count`,
//! `sum`, `min`, `max`, `avg`, `bool_and`/`every`, `bool_or` (with or
//! without `FILTER (WHERE ...)`; min/max/bool_* also with DISTINCT or
//! ORDER BY, count with ORDER BY) at the top of
//! a select-list item (also `count(...)::int`-style casts and
//! `coalesce(sum(x), 0)`), GROUP BY expressions, HAVING comparisons of
//! aggregates and grouping expressions with constants or `$n` (AND, OR,
//! NOT, BETWEEN, IN, IS NULL). `SELECT *` (and `t.*`, `(f()).*`) with the
//! row forms.
//!
//! Refused: window functions, DISTINCT ON, UNION/INTERSECT/EXCEPT, WITH,
//! subqueries anywhere, VALUES, SELECT INTO, FOR UPDATE/SHARE, GROUPING
//! SETS/ROLLUP/CUBE, WITHIN GROUP, count/sum/avg with DISTINCT, sum/avg
//! with ORDER BY,
//! PostgreSQL's other aggregates by name, aggregates inside expressions,
//! ORDER BY ... USING, FETCH ... WITH TIES, LIMIT/OFFSET expressions,
//! `*` with aggregates, ORDER BY a position after `*`. User-defined
//! aggregates cannot be told from functions without the catalog: they
//! would be taken for plain functions.

mod collation;
mod exprs;
mod having;
mod input_names;
mod limit;
mod plan;
mod spec;
#[cfg(test)]
mod tests;

pub use collation::CollationUse;
pub use plan::{plan_read, plan_read_knowing};
pub use spec::{Agg, Aggregation, CmpOp, Col, Count, MergeSpec, Operand, Predicate, Role, SortKey};

/// The rewritten statement and how to merge its results.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadPlan {
    /// What every shard runs (parameters `$n` as in the original).
    pub shard_sql: String,
    pub merge: MergeSpec,
    /// The functions the statement calls that the planner took for plain
    /// functions (lower-case names, unqualified). A user-defined aggregate
    /// looks just like one: if any of these names is an aggregate in the
    /// database (`pg_aggregate`), the plan is wrong and must be refused.
    pub functions: Vec<String>,
    /// A query for one shard when a GROUP BY name is an output name and
    /// may also be an input column (PostgreSQL then groups by the input
    /// column): it returns one row per such name that is an input column.
    /// The statement must then be planned again with
    /// [`plan_read_knowing`] and those names.
    pub input_probe: Option<String>,
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
