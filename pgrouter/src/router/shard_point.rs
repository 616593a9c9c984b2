//! The fast path of shard planning: a statement whose shard is decided by
//! one value — `SELECT/UPDATE/DELETE ... WHERE key = v [AND ...]` on one
//! sharded table, or a one-row `INSERT ... (key, ...) VALUES (v, ...)` —
//! is compiled once per analysis and shard map into "the shard of this
//! literal or parameter", so each execution only reads and hashes that
//! value. Point queries are most of a sharded workload, and the general
//! planner ([`super::shard_plan`]) builds shard sets, looks tables up by
//! name and walks the filter on every execution.
//!
//! Exactness: [`compile`] accepts only statements for which the general
//! planner's answer is, by construction, "the one shard of this value"
//! (one statement, one query level, one sharded relation, the value the
//! only condition on its key, no name-less table entries, no reference
//! target, no key assignment). Anything else — and any value that does
//! not read cleanly (NULL, malformed, out of range) — goes to the general
//! planner, which gives the answer or the error. A unit test checks the
//! two agree.

use std::sync::Arc;

use pgrouter_parser::shard::{
    literal_of_token, literal_value_at, parse_plain_digits, parse_text, Column, Cond, Filter,
    Placement, Relation, Scope, StatementKeys, ValueRef,
};
use pgrouter_parser::{Analysis, StatementKind};

use super::bind::BindParams;
use super::shard_map::{ShardMap, ShardedTable};
use super::shard_values::{literal_value, param_value};

/// Where a point statement's key value is, and how it is placed.
#[derive(Debug, Clone)]
pub struct PointPlan {
    value: KeyAt,
    placement: Arc<Placement>,
}

#[derive(Debug, Clone, Copy)]
enum KeyAt {
    /// The `index`-th literal of the text.
    Literal { index: usize, negate: bool },
    /// Parameter `$number`.
    Param {
        number: usize,
        cast: Option<pgrouter_parser::shard::KeyType>,
    },
}

/// One execution's values, as [`PointPlan::shard`] reads them.
pub enum PointValues<'a> {
    /// A simple query's text, and where its literals are when the caller
    /// knows (`known(n)`: the n-th literal token; `None`: lex the text).
    Text {
        sql: &'a dyn Fn() -> Option<&'a str>,
        known: &'a dyn Fn(usize) -> Option<Option<&'a str>>,
    },
    /// A Bind: its parameters (`rest` of the Bind body), and the statement's
    /// text and declared types, fetched only when the key needs them.
    Bind {
        rest: &'a [u8],
        statement: &'a dyn Fn() -> (&'a str, &'a [i32]),
    },
}

impl PointPlan {
    /// The shard of this execution's key value; `None` when the value is
    /// not a plain one (the general planner then answers, errors included).
    pub fn shard(&self, values: &PointValues) -> Option<usize> {
        let ty = self.placement.key_type;
        let value = match (self.value, values) {
            (KeyAt::Literal { index, negate }, PointValues::Text { sql, known }) => {
                match known(index) {
                    // Plain digits for an integer key: what reading the
                    // literal and then the number gives, without copies.
                    Some(Some(token))
                        if !negate
                            && ty.is_integer()
                            && token.bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        match parse_plain_digits(ty, token) {
                            Some(value) => value,
                            None => parse_text(ty, token).ok()?,
                        }
                    }
                    Some(token) => literal_value(&literal_of_token(token?)?, negate, ty).ok()?,
                    None => literal_value(&literal_value_at(sql()?, index)?, negate, ty).ok()?,
                }
            }
            (KeyAt::Literal { index, negate }, PointValues::Bind { statement, .. }) => {
                let (sql, _) = statement();
                literal_value(&literal_value_at(sql, index)?, negate, ty).ok()?
            }
            (KeyAt::Param { number, cast }, PointValues::Bind { rest, statement }) => {
                let (format, bytes) = BindParams::value_at(rest, number)?;
                bytes?; // NULL: the general planner's rule
                        // Integer keys read in text need no declared type; text keys
                        // may (bpchar, name), binary values always do.
                let declared = if format == 0 && ty.is_integer() {
                    0
                } else {
                    statement().1.get(number - 1).copied().unwrap_or(0)
                };
                param_value(format, bytes, declared, number, cast, ty).ok()?
            }
            (KeyAt::Param { .. }, PointValues::Text { .. }) => return None,
        };
        self.placement.shard_of(&value).ok()
    }
}

/// The point plan of `analysis` under `map`, if it is a point statement.
pub fn compile(analysis: &Analysis, map: &ShardMap) -> Option<PointPlan> {
    if map.tables.iter().any(|t| t.name.is_none()) {
        return None; // name-less entries match tables by their columns
    }
    let ([statement], [keys]) = (analysis.statements.as_slice(), analysis.keys.as_slice()) else {
        return None;
    };
    if !keys.unplaced.is_empty() || keys.nested_writes || analysis.hint.shard.is_some() {
        return None;
    }
    if super::shard_plan::unsharded_read(analysis, map).is_some() {
        return None; // the general planner judges where it may run
    }
    let (table, value) = match statement.kind {
        StatementKind::Insert => one_row_insert(keys, map)?,
        StatementKind::Select | StatementKind::Update | StatementKind::Delete => {
            let writes = !matches!(statement.kind, StatementKind::Select);
            filtered(keys, map, writes)?
        }
        _ => return None,
    };
    let value = match value {
        ValueRef::Literal { index, negate } => KeyAt::Literal {
            index: *index,
            negate: *negate,
        },
        ValueRef::Param { number, cast } => KeyAt::Param {
            number: *number,
            cast: *cast,
        },
        ValueRef::Const(_) | ValueRef::Null => return None,
    };
    Some(PointPlan {
        value,
        placement: table.placement.clone(),
    })
}

/// `INSERT INTO t (..., key, ...) VALUES (..., v, ...)`: one row, a column
/// list, nothing nested.
fn one_row_insert<'m, 'k>(
    keys: &'k StatementKeys,
    map: &'m ShardMap,
) -> Option<(&'m ShardedTable, &'k ValueRef)> {
    let rows = keys.insert.as_ref()?;
    if !keys.scopes.is_empty() || rows.from_query || rows.columns.is_empty() {
        return None;
    }
    let [row] = rows.rows.as_slice() else {
        return None;
    };
    let table = sharded_target(map, &rows.relation)?;
    // ON CONFLICT ... DO UPDATE SET key = ...: the general planner checks it.
    if keys.assignments.iter().any(|(c, _)| *c == table.column) {
        return None;
    }
    let at = rows.columns.iter().position(|c| *c == table.column)?;
    Some((table, row.get(at)?.as_ref()?))
}

/// A SELECT, UPDATE or DELETE of one query level with one sharded relation
/// (the target, for writes) whose key has exactly one equality to a value.
fn filtered<'m, 'k>(
    keys: &'k StatementKeys,
    map: &'m ShardMap,
    writes: bool,
) -> Option<(&'m ShardedTable, &'k ValueRef)> {
    if keys.insert.is_some() {
        return None;
    }
    let [scope] = keys.scopes.as_slice() else {
        return None;
    };
    let mut sharded = scope
        .relations
        .iter()
        .enumerate()
        .filter_map(|(i, r)| map.relation(r).map(|t| (i, t)));
    let (at, table) = sharded.next()?;
    if sharded.next().is_some() {
        return None;
    }
    if writes {
        // The target is the first relation; a write to a reference table
        // runs everywhere, a key assignment may move the row.
        if at != 0 || sharded_target(map, &scope.relations[0]).is_none() {
            return None;
        }
        if keys.assignments.iter().any(|(c, _)| *c == table.column) {
            return None;
        }
    }
    let key = KeyColumn {
        scope,
        at,
        column: &table.column,
    };
    Some((table, key.point(&scope.filter)?))
}

/// A sharded table's entry for a write's target, unless it is also listed
/// as a reference table.
fn sharded_target<'m>(map: &'m ShardMap, r: &Relation) -> Option<&'m ShardedTable> {
    let qualified = match &r.schema {
        Some(s) => format!("{s}.{}", r.name),
        None => r.name.clone(),
    };
    map.relation(r).filter(|_| !map.is_reference(&qualified))
}

/// The key column of relation `at` of `scope`, as the general planner
/// resolves column references to it.
struct KeyColumn<'a> {
    scope: &'a Scope,
    at: usize,
    column: &'a str,
}

impl KeyColumn<'_> {
    fn names(&self, c: &Column) -> bool {
        c.name == self.column
            && c.qualifier
                .as_deref()
                .is_none_or(|q| self.scope.relations[self.at].is_named(q))
    }

    /// The one value `filter` equates the key to: a lone `key = v`, or an
    /// AND with exactly one such part and no other part about the key.
    fn point<'f>(&self, filter: &'f Filter) -> Option<&'f ValueRef> {
        match filter {
            Filter::Cond(Cond::Values { column, values }) if self.names(column) => {
                match values.as_slice() {
                    [one] => Some(one),
                    _ => None,
                }
            }
            Filter::And(parts) => {
                let mut found = None;
                for part in parts.iter().filter(|p| !self.inert(p)) {
                    if found.is_some() {
                        return None;
                    }
                    found = Some(self.point(part)?);
                }
                found
            }
            _ => None,
        }
    }

    /// Whether `filter` says nothing about the key (the general planner's
    /// evaluation of it is "any shard" whatever the values).
    fn inert(&self, filter: &Filter) -> bool {
        match filter {
            Filter::Unknown | Filter::Cond(Cond::Columns(..)) => true,
            Filter::Cond(Cond::Values { column, .. } | Cond::Array { column, .. }) => {
                !self.names(column)
            }
            Filter::And(parts) | Filter::Or(parts) => parts.iter().all(|p| self.inert(p)),
        }
    }
}

#[cfg(test)]
#[path = "shard_point_tests.rs"]
mod tests;
