//! Which shard a statement on a sharded database needs: the shard map
//! applied to the statement's key facts (from the cached analysis) and to
//! this execution's values (the text's literals, the Bind's parameters).
//!
//! The rule is SPEC §5's: exactly the one shard the keys name, or a clear
//! refusal. Until statements can run on several shards, anything needing
//! more than one — no key, keys on several shards, writes to reference
//! tables, DDL on sharded tables, COPY into them — is refused with 0A000
//! naming what is unsupported; bad key values get PostgreSQL's own errors.

use std::collections::BTreeSet;

use pgrouter_parser::shard::{
    literal_values, parse_text, parse_text_array, Column, Cond, Filter, KeyError, KeyType,
    KeyValue, Literal, Placement, Relation, Scope, StatementKeys, ValueRef,
};
use pgrouter_parser::{Analysis, StatementKind};

use super::bind::BindParams;
use super::shard_map::{ShardMap, ShardedTable};
use super::Refusal;

const UNSUPPORTED: &str = "0A000";

/// In the refusal of an INSERT without a column list into a sharded table
/// whose columns the router has not learnt (yet): the session learns them
/// from shard 0 and routes the statement again.
pub const COLUMNS_UNKNOWN: &str =
    "without a column list: the router cannot tell which value is the shard key";

/// How the refusal starts when a key is a literal of a text the router does
/// not have (an unnamed statement parsed in an earlier batch).
pub const UNREADABLE_LITERAL: &str = "pgrouter: cannot read the shard key literal";

/// The values of one execution.
pub enum Values<'a> {
    /// A simple query: the literals are in `sql`.
    Text(&'a str),
    /// An extended-protocol execution: the statement's text and its Bind.
    Bind {
        sql: &'a str,
        params: &'a BindParams<'a>,
        param_types: &'a [i32],
    },
}

/// Where a statement on a sharded database goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardChoice {
    /// The shard (the lowest of them when the statement needs several).
    pub shard: usize,
    /// Why, for EXPLAIN (ROUTE): the key and value, or "sharding_key".
    pub reason: String,
    /// The statement needs several shards: which, and how it runs there.
    pub many: Option<Many>,
}

/// A statement that runs on several shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Many {
    /// Ascending (server connections are taken in this order).
    pub shards: Vec<usize>,
    pub kind: ManyKind,
}

/// How a statement on several shards runs and how its answers combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManyKind {
    /// A SELECT: run everywhere needed, results merged (`fanout::merge`).
    Read,
    /// A keyless UPDATE/DELETE on each shard: rows and tags summed,
    /// atomic under 2PC.
    Write,
    /// A write to reference tables: the same rows change on every shard
    /// (atomic under 2PC); the client sees one shard's answer.
    Replicate,
    /// DDL and maintenance: the same statement on every shard's primary.
    Ddl,
    /// A multi-row INSERT whose rows belong to several shards: split.
    InsertSplit,
    /// COPY ... FROM STDIN into a sharded table: rows split by key.
    CopyIn,
    /// COPY ... TO STDOUT of a sharded table: the shards concatenated.
    CopyOut,
    /// An extended-protocol batch (a pipeline, `executemany`) whose
    /// statements each need one shard, not all the same: each runs on its
    /// shard, the batch is one transaction.
    Pipeline,
}

impl ShardChoice {
    pub fn one(shard: usize, reason: impl Into<String>) -> ShardChoice {
        ShardChoice {
            shard,
            reason: reason.into(),
            many: None,
        }
    }
}

/// The shard the statement needs, `None` when it touches no sharded or
/// reference table (it routes as before: shard 0 or a hint). The values
/// are in the client encoding UTF8; see [`plan_encoded`] for others.
pub fn plan(
    analysis: &Analysis,
    values: &Values,
    map: &ShardMap,
    sharding_key: Option<&str>,
    explain: bool,
) -> Result<Option<ShardChoice>, Refusal> {
    plan_encoded(analysis, values, map, sharding_key, explain, None)
}

/// [`plan`] for a session whose `client_encoding` is `foreign` (not UTF8,
/// `None`: UTF8). Keys are hashed as the database's UTF-8 bytes, and the
/// router does not convert from other encodings: a text key with a
/// non-ASCII byte is refused (0A000) rather than hashed as the client's
/// bytes, which would place it on a shard PostgreSQL's hash does not name.
pub fn plan_encoded(
    analysis: &Analysis,
    values: &Values,
    map: &ShardMap,
    sharding_key: Option<&str>,
    explain: bool,
    foreign: Option<&str>,
) -> Result<Option<ShardChoice>, Refusal> {
    let sharded: Vec<&str> = analysis
        .tables
        .iter()
        .map(String::as_str)
        .filter(|t| map.table(t).is_some())
        .collect();
    let reference: Vec<&str> = analysis
        .tables
        .iter()
        .map(String::as_str)
        .filter(|t| map.is_reference(t))
        .collect();
    if let Some(kind) = everywhere(analysis, map, &sharded, &reference)? {
        let why = match kind {
            ManyKind::Ddl => "DDL runs on every shard",
            _ => "writes a reference table: every shard",
        };
        return many(map, (0..map.shards).collect(), kind, why.into());
    }
    if let Some(key) = sharding_key {
        let placement = sharded
            .first()
            .and_then(|t| map.table(t))
            .map(|t| &t.placement);
        let Some(placement) = placement.or(map.default_placement()) else {
            return Ok(None);
        };
        let value = parse_text(placement.key_type, key).map_err(key_error)?;
        check_encoding(&value, foreign)?;
        let shard = placement.shard_of(&value).map_err(key_error)?;
        let why = if explain {
            format!("pgrouter.sharding_key = {value}")
        } else {
            String::new()
        };
        return Ok(Some(ShardChoice::one(shard, why)));
    }
    let has_nameless = map.tables.iter().any(|t| t.name.is_none());
    if sharded.is_empty() && !has_nameless {
        return Ok(None);
    }
    if analysis.keys.len() != analysis.statements.len() {
        if let Some(t) = sharded.first() {
            return Err(unsupported(format!(
                "pgrouter: cannot find the shard key of this statement on sharded table \"{t}\" \
                 (too deeply nested to analyse); HINT: add /* pgrouter: shard=N */"
            )));
        }
        return Ok(None);
    }
    let mut p = Planner {
        map,
        values,
        literals: None,
        shards: BTreeSet::new(),
        touched: false,
        keyless: None,
        kind: None,
        reasons: Vec::new(),
        explain,
        foreign,
    };
    for (s, keys) in analysis.statements.iter().zip(&analysis.keys) {
        p.statement(&s.kind, keys, &sharded)?;
    }
    if !p.touched {
        return Ok(None);
    }
    if let Some(target) = analysis
        .statements
        .iter()
        .zip(&analysis.keys)
        .find_map(|(s, keys)| p.unsharded_target(&s.kind, keys))
    {
        p.unsharded_write_on_shard_0(&target, sharded.first().copied())?;
    }
    if let Some(table) = unsharded_read(analysis, map) {
        p.unsharded_read_on_shard_0(table, sharded.first().copied())?;
    }
    if let Some(why) = p.keyless.take() {
        let kind = p.kind.unwrap_or(ManyKind::Read);
        return many(map, (0..map.shards).collect(), kind, why);
    }
    match p.shards.len() {
        0 => Ok(Some(ShardChoice::one(
            0,
            "no row can match (contradictory keys)",
        ))),
        1 => Ok(Some(ShardChoice::one(
            *p.shards.first().unwrap_or(&0),
            p.reasons.join(", "),
        ))),
        n => {
            let kind = p.kind.unwrap_or(ManyKind::Read);
            let why = if p.reasons.is_empty() {
                format!("the shard keys are on {n} shards")
            } else {
                format!("the shard keys are on {n} shards: {}", p.reasons.join(", "))
            };
            many(map, p.shards.into_iter().collect(), kind, why)
        }
    }
}

/// A statement on several shards, unless `cross_shard = "refuse"`. Only
/// one statement per query string may need several shards (their answers
/// could not be told apart), unless every statement runs everywhere alike.
fn many(
    map: &ShardMap,
    shards: Vec<usize>,
    kind: ManyKind,
    reason: String,
) -> Result<Option<ShardChoice>, Refusal> {
    if map.refuse_cross_shard {
        return Err(unsupported(format!(
            "pgrouter: this statement needs {} shards ({reason}) and cross_shard = \"refuse\"; \
             HINT: add the shard key, or /* pgrouter: shard=N */",
            shards.len()
        )));
    }
    Ok(Some(ShardChoice {
        shard: shards.first().copied().unwrap_or(0),
        reason,
        many: Some(Many { shards, kind }),
    }))
}

/// Statements that run on every shard alike: DDL (any table: every table
/// not sharded lives on every shard alike) and maintenance of sharded or
/// reference tables, and writes to reference tables. `None` when the
/// string holds anything else (then its keys decide, and a mix is refused).
fn everywhere(
    analysis: &Analysis,
    map: &ShardMap,
    sharded: &[&str],
    reference: &[&str],
) -> Result<Option<ManyKind>, Refusal> {
    let mut kind = None;
    let mut other = false;
    for (i, s) in analysis.statements.iter().enumerate() {
        let keys = analysis.keys.get(i);
        if let Some(r) = keys
            .into_iter()
            .flat_map(|k| &k.nested_targets)
            .find(|r| map.is_reference(&qualified(r)))
        {
            return Err(unsupported(format!(
                "pgrouter: a write to reference table \"{}\" inside WITH is not supported (it must change \
                 every shard alike); HINT: send the write on its own",
                r.name
            )));
        }
        let this = match &s.kind {
            // A temp object is the session's own, on the one connection
            // that creates it (shard 0 unless a hint says otherwise), which
            // the session is then pinned to: never on every shard (nor
            // committed with PREPARE TRANSACTION, which refuses temp
            // objects).
            StatementKind::Ddl
                if analysis
                    .session_state
                    .creates
                    .intersects(pgrouter_parser::SessionState::TEMP) =>
            {
                if !sharded.is_empty() {
                    return Err(unsupported(format!(
                        "pgrouter: a temporary object made from sharded table \"{}\" is not supported (it \
                         would hold one shard's rows only); HINT: create it empty and INSERT ... SELECT \
                         with the shard key, or use a regular table",
                        sharded[0]
                    )));
                }
                None
            }
            StatementKind::Ddl => {
                if let Some(keys) = keys {
                    defined_by_sharded_query(map, keys)?;
                }
                Some(ManyKind::Ddl)
            }
            StatementKind::Vacuum | StatementKind::Analyze
                if !sharded.is_empty() || !reference.is_empty() || analysis.tables.is_empty() =>
            {
                Some(ManyKind::Ddl)
            }
            StatementKind::Insert | StatementKind::Update | StatementKind::Delete => {
                let target = match &s.kind {
                    StatementKind::Insert => keys
                        .and_then(|k| k.insert.as_ref())
                        .map(|r| qualified(&r.relation)),
                    _ => keys
                        .and_then(|k| k.scopes.first())
                        .and_then(|sc| sc.relations.first())
                        .map(qualified),
                };
                if keys.is_none() {
                    if let Some(r) = reference.first() {
                        return Err(unsupported(format!(
                            "pgrouter: cannot tell whether this statement writes reference table \"{r}\" \
                             (too deeply nested to analyse); HINT: simplify it"
                        )));
                    }
                }
                let replicate = target.filter(|t| map.is_reference(t));
                if let (Some(t), true) = (&replicate, keys.is_some_and(|k| k.nested_writes)) {
                    return Err(unsupported(format!(
                        "pgrouter: a write to reference table \"{t}\" with a data-modifying WITH is not \
                         supported (it would run on every shard); HINT: send the statements separately"
                    )));
                }
                if let (Some(t), Some(keys)) = (&replicate, keys) {
                    replicated_write_is_exact(analysis, map, keys, t, sharded)?;
                }
                replicate.map(|_| ManyKind::Replicate)
            }
            StatementKind::Set(_) | StatementKind::Reset(_) | StatementKind::Show => continue,
            StatementKind::Select | StatementKind::Explain { analyze: false } => None,
            _ if s.is_write && !reference.is_empty() => {
                return Err(unsupported(format!(
                    "pgrouter: this statement writes reference table \"{}\" in a way the router cannot \
                     run on every shard; HINT: use INSERT, UPDATE or DELETE",
                    reference[0]
                )))
            }
            _ => None,
        };
        match this {
            Some(k) => {
                kind = Some(if kind == Some(ManyKind::Ddl) {
                    ManyKind::Ddl
                } else {
                    k
                })
            }
            None => other = true,
        }
    }
    match (kind, other) {
        (Some(k), false) => Ok(Some(k)),
        (Some(_), true) => Err(unsupported(
            "pgrouter: this query string mixes statements that run on every shard (DDL, reference-table \
             writes) with others; HINT: send them separately",
        )),
        (None, _) => Ok(None),
    }
}

/// A table the text reads that is neither sharded nor a reference table
/// (nor a system catalog): its rows live on shard 0, where statements on
/// it alone go, so a statement reading it on another shard reads that
/// shard's copy — not where its rows are. (A name-less sharded-table entry
/// may make any table sharded: not judged.)
pub(super) fn unsharded_read<'a>(analysis: &'a Analysis, map: &ShardMap) -> Option<&'a str> {
    if map.tables.iter().any(|t| t.name.is_none()) {
        return None;
    }
    analysis
        .tables
        .iter()
        .map(String::as_str)
        .find(|t| map.table(t).is_none() && !map.is_reference(t) && !is_catalog(t))
}

/// `pg_catalog.x`, `information_schema.x`, or an unqualified `pg_x`: the
/// server's own, alike (for the router's purposes) on every shard.
fn is_catalog(table: &str) -> bool {
    match table.rsplit_once('.') {
        Some((schema, _)) => {
            let schema = schema.rsplit('.').next().unwrap_or(schema);
            schema.eq_ignore_ascii_case("pg_catalog")
                || schema.eq_ignore_ascii_case("information_schema")
        }
        None => table.starts_with("pg_"),
    }
}

/// CREATE TABLE ... AS, CREATE MATERIALIZED VIEW and CREATE VIEW run on
/// every shard like all DDL, where their query sees only that shard's rows
/// of a sharded table; and the new object is an unsharded table, read on
/// shard 0 alone: its reads would be silently partial. Refused (as is
/// `SELECT ... INTO`). REFRESH MATERIALIZED VIEW needs no check: a view
/// over a sharded table is never created through the router.
fn defined_by_sharded_query(map: &ShardMap, keys: &StatementKeys) -> Result<(), Refusal> {
    let Some(what) = keys.defined_by_query else {
        return Ok(());
    };
    let Some(t) = keys.unplaced.iter().find(|t| map.table(t).is_some()) else {
        return Ok(());
    };
    let hint = if what == "CREATE VIEW" {
        "query the sharded table directly (the router routes and merges such reads)"
    } else {
        "create the table empty (or WITH NO DATA) and insert the rows read through the router"
    };
    Err(unsupported(format!(
        "pgrouter: {what} reading sharded table \"{t}\" is not supported (each shard would see only its own \
         rows, and reads of the new object go to shard 0 alone); HINT: {hint}"
    )))
}

/// A write to a reference table runs on every shard: each copy changes
/// alike only when every shard computes the same rows and values. A shard
/// sees only its own rows of a sharded table, and a call such as `random()`
/// or `now()` gives each server its own value, so either would leave the
/// copies different (and the command tag, one shard's, wrong): refused. So
/// is a read of an unsharded table (its rows are on shard 0 only), and a
/// call of a function of the database's own: whether it gives every server
/// the same value is not known.
fn replicated_write_is_exact(
    analysis: &Analysis,
    map: &ShardMap,
    keys: &StatementKeys,
    target: &str,
    sharded: &[&str],
) -> Result<(), Refusal> {
    let nameless = || {
        keys.scopes.iter().find_map(|scope| {
            scope.relations.iter().find_map(|r| {
                if map.is_reference(&qualified(r)) || map.table(&qualified(r)).is_some() {
                    return None;
                }
                map.tables
                    .iter()
                    .filter(|t| t.name.is_none())
                    .find(|t| mentions(&scope.filter, r, &t.column, scope.relations.len() == 1))
                    .map(|_| r.name.clone())
            })
        })
    };
    if let Some(t) = sharded.first().map(|t| t.to_string()).or_else(nameless) {
        return Err(unsupported(format!(
            "pgrouter: a write to reference table \"{target}\" that reads sharded table \"{t}\" is not \
             supported (each shard would see only its own rows, and the copies would differ); HINT: read \
             the rows first, then write them as constants"
        )));
    }
    if let Some(t) = unsharded_read(analysis, map) {
        // Its rows are on shard 0 (see `unsharded_read`): every other shard
        // would read its own, empty or stale, copy.
        return Err(unsupported(format!(
            "pgrouter: a write to reference table \"{target}\" that reads unsharded table \"{t}\" is not \
             supported (its rows are on shard 0 only, and the copies would differ); HINT: make \"{t}\" a \
             reference table, or read the rows first, then write them as constants"
        )));
    }
    if let Some(f) = &analysis.varies_by_server {
        return Err(unsupported(format!(
            "pgrouter: a write to reference table \"{target}\" must be deterministic, and {f} may give \
             each shard a different value (the copies would differ); HINT: compute the value first and \
             write it as a constant"
        )));
    }
    if analysis.calls_unknown_function {
        return Err(unsupported(format!(
            "pgrouter: a write to reference table \"{target}\" must be deterministic, and it calls a \
             function that is not one of PostgreSQL's own, which may give each shard a different value \
             (the copies would differ); HINT: compute the value first and write it as a constant"
        )));
    }
    Ok(())
}

/// "sharded table \"t\"", or "a sharded table" when it is not known.
fn sharded_table(sharded: Option<&str>) -> String {
    sharded.map_or_else(
        || "a sharded table".to_string(),
        |t| format!("sharded table \"{t}\""),
    )
}

fn qualified(r: &Relation) -> String {
    match &r.schema {
        Some(s) => format!("{s}.{}", r.name),
        None => r.name.clone(),
    }
}

struct Planner<'a> {
    map: &'a ShardMap,
    values: &'a Values<'a>,
    literals: Option<Vec<Option<Literal>>>,
    shards: BTreeSet<usize>,
    /// A sharded table was involved.
    touched: bool,
    /// Some sharded table is read or written without its key: every shard
    /// is needed (why, for EXPLAIN (ROUTE)).
    keyless: Option<String>,
    /// How the statement runs should it need several shards.
    kind: Option<ManyKind>,
    reasons: Vec<String>,
    /// Whether to spell out the keys in `reasons`: only EXPLAIN (ROUTE) and
    /// error messages read them, and a point query should not pay for it.
    explain: bool,
    /// The session's client encoding when it is not UTF8 (see [`plan_encoded`]).
    foreign: Option<&'a str>,
}

impl<'a> Planner<'a> {
    /// Plans one statement of the query string. A statement with an
    /// INSERT, UPDATE or DELETE inside a WITH clause writes wherever it
    /// runs, and its parts read each other's rows: it must resolve to one
    /// shard.
    fn statement(
        &mut self,
        kind: &StatementKind,
        keys: &StatementKeys,
        sharded: &[&str],
    ) -> Result<(), Refusal> {
        let others = std::mem::take(&mut self.shards);
        let keyless_before = self.keyless.is_some();
        let mut planned = self.statement_alone(kind, keys, sharded);
        if planned.is_ok() && keys.nested_writes && !matches!(kind, StatementKind::Prepare { .. }) {
            planned = self.nested_writes(keys, keyless_before);
        }
        let mine = std::mem::replace(&mut self.shards, others);
        planned?;
        self.shards.extend(mine);
        Ok(())
    }

    /// The rules for a data-modifying WITH: its INSERTs' rows add to the
    /// statement's shards (`self.shards`, this statement's alone here),
    /// which must be one, and its UPDATEs' key assignments must keep rows
    /// there.
    fn nested_writes(&mut self, keys: &StatementKeys, keyless_before: bool) -> Result<(), Refusal> {
        for rows in &keys.nested_inserts {
            let Some(table) = self.insert_table(rows) else {
                continue;
            };
            self.touched = true;
            if rows.from_query {
                return Err(insert_select_refusal(&rows.relation.name));
            }
            self.insert_rows(rows, table)?;
        }
        let keyless = !keyless_before && self.keyless.is_some();
        if keyless || self.shards.len() > 1 {
            return Err(unsupported(
                "pgrouter: a data-modifying WITH (INSERT, UPDATE or DELETE inside WITH) on sharded tables \
                 must run on one shard, and this one needs several; HINT: add the shard key of every \
                 sharded table it touches, or send the statements separately",
            ));
        }
        let shards = self.shards.clone();
        for (target, column, value) in &keys.nested_assignments {
            if let Some(table) = self.map.relation(target) {
                self.check_key_assignment(
                    table,
                    &target.name,
                    column,
                    value.as_ref(),
                    Some(&shards),
                )?;
            }
        }
        Ok(())
    }

    fn statement_alone(
        &mut self,
        kind: &StatementKind,
        keys: &StatementKeys,
        sharded: &[&str],
    ) -> Result<(), Refusal> {
        // EXPLAIN (ANALYZE) runs its statement: an explained INSERT or
        // UPDATE is planned as one.
        let kind = match kind {
            StatementKind::Explain { .. } if keys.insert.is_some() => &StatementKind::Insert,
            StatementKind::Explain { .. } if !keys.assignments.is_empty() => &StatementKind::Update,
            other => other,
        };
        // COPY of a whole sharded table: every shard, rows split or joined.
        if let StatementKind::Copy { from_stdin_or_file } = kind {
            if keys.scopes.is_empty() && !sharded.is_empty() {
                self.touched = true;
                self.kind = Some(if *from_stdin_or_file {
                    ManyKind::CopyIn
                } else {
                    ManyKind::CopyOut
                });
                self.keyless = Some(format!(
                    "COPY of \"{}\" reads or writes every shard",
                    sharded[0]
                ));
                return Ok(());
            }
        }
        if let Some(t) = keys.unplaced.iter().find(|t| self.map.table(t).is_some()) {
            return Err(unsupported(format!(
                "pgrouter: sharded table \"{t}\" is used where the router cannot find its shard key \
                 (e.g. a subquery in the select list); cross-shard statements are not supported yet; \
                 HINT: add /* pgrouter: shard=N */"
            )));
        }
        match kind {
            StatementKind::Copy {
                from_stdin_or_file: true,
            } if !sharded.is_empty() => {
                self.touched = true;
                self.kind = Some(ManyKind::CopyIn);
                self.keyless = Some(format!(
                    "COPY into \"{}\" splits its rows by key",
                    sharded[0]
                ));
                return Ok(());
            }
            StatementKind::Insert => {
                let Some(rows) = &keys.insert else {
                    return Ok(());
                };
                if let Some(table) = self.insert_table(rows) {
                    self.touched = true;
                    if rows.from_query {
                        return Err(insert_select_refusal(&rows.relation.name));
                    }
                    self.insert_rows(rows, table)?;
                    // ON CONFLICT ... DO UPDATE SET key = ...: the row
                    // updated is on the shard its inserted twin went to.
                    let current = self.shards.clone();
                    for (column, value) in &keys.assignments {
                        self.check_key_assignment(
                            table,
                            &rows.relation.name,
                            column,
                            value.as_ref(),
                            Some(&current),
                        )?;
                    }
                }
            }
            StatementKind::Select
            | StatementKind::Explain { .. }
            | StatementKind::DeclareCursor => self.kind = Some(ManyKind::Read),
            StatementKind::Update | StatementKind::Delete => self.kind = Some(ManyKind::Write),
            StatementKind::Copy { .. } => self.kind = Some(ManyKind::CopyOut),
            // PREPARE runs nothing: its EXECUTE is what needs a shard.
            StatementKind::Prepare { .. } => return Ok(()),
            StatementKind::Lock | StatementKind::Merge if !sharded.is_empty() => {
                return Err(unsupported(format!(
                    "pgrouter: LOCK and MERGE on sharded table \"{}\" across shards are not supported; \
                     HINT: run it on each shard with /* pgrouter: shard=N */",
                    sharded[0]
                )));
            }
            _ => return Ok(()),
        }
        let mut first: Option<BTreeSet<usize>> = None;
        for (i, scope) in keys.scopes.iter().enumerate() {
            let nested_ok = keys.scopes.len() == 1;
            if let Some(set) = self.scope(scope, kind, nested_ok)? {
                if i == 0 {
                    first = Some(set.clone());
                }
                self.shards.extend(set);
            }
        }
        if matches!(kind, StatementKind::Update) {
            self.check_key_update(keys, first.as_ref())?;
        }
        Ok(())
    }

    /// The unsharded table (neither sharded nor reference) the statement
    /// writes, if any: its rows live on shard 0, where statements on it
    /// alone go (SPEC §5), so a write to it anywhere else is lost to later
    /// reads.
    fn unsharded_target(&self, kind: &StatementKind, keys: &StatementKeys) -> Option<String> {
        let plain = |r: &Relation| !self.map.is_reference(&qualified(r));
        // As `statement_alone` plans them: an explained INSERT or UPDATE as one
        // (EXPLAIN ANALYZE runs it; EXPLAIN (ROUTE) shows where it would).
        let kind = match kind {
            StatementKind::Explain { .. }
                if !keys.assignments.is_empty() && keys.insert.is_none() =>
            {
                &StatementKind::Update
            }
            other => other,
        };
        let top = match kind {
            StatementKind::Insert | StatementKind::Explain { .. } if keys.insert.is_some() => keys
                .insert
                .as_ref()
                .filter(|rows| self.insert_table(rows).is_none() && plain(&rows.relation))
                .map(|rows| rows.relation.name.clone()),
            StatementKind::Update | StatementKind::Delete => {
                keys.scopes.first().and_then(|scope| {
                    let target = scope.relations.first()?;
                    (self.table_of(scope, target).is_none() && plain(target))
                        .then(|| target.name.clone())
                })
            }
            _ => None,
        };
        let nameless = self.map.tables.iter().any(|t| t.name.is_none());
        let nested = || {
            let inserts = keys
                .nested_inserts
                .iter()
                .find(|rows| self.insert_table(rows).is_none() && plain(&rows.relation))
                .map(|rows| rows.relation.name.clone());
            // A name-less entry may make any target sharded: not judged.
            inserts.or_else(|| {
                keys.nested_targets
                    .iter()
                    .find(|r| !nameless && self.map.relation(r).is_none() && plain(r))
                    .map(|r| r.name.clone())
            })
        };
        top.or_else(nested)
    }

    /// A statement writing unsharded table `target` must run on shard 0
    /// alone; one that reads sharded rows of another shard (or of several)
    /// would write them where no later statement on `target` looks.
    /// Where the statement runs besides shard 0, for a refusal ("every
    /// shard", "2 shards", "shard 1"); None when on shard 0 alone.
    fn beyond_shard_0(&self) -> Option<String> {
        match (&self.keyless, self.shards.iter().find(|&&s| s != 0)) {
            (Some(_), _) => Some("every shard".to_string()),
            (None, Some(_)) if self.shards.len() > 1 => {
                Some(format!("{} shards", self.shards.len()))
            }
            (None, Some(s)) => Some(format!("shard {s}")),
            (None, None) => None,
        }
    }

    fn unsharded_write_on_shard_0(
        &self,
        target: &str,
        sharded: Option<&str>,
    ) -> Result<(), Refusal> {
        let Some(elsewhere) = self.beyond_shard_0() else {
            return Ok(());
        };
        let source = sharded_table(sharded);
        Err(unsupported(format!(
            "pgrouter: a write to unsharded table \"{target}\" must run on shard 0 (where statements on it \
             alone go), and this one reads {source} on {elsewhere}; HINT: read the rows first and write them \
             as constants, or make \"{target}\" a sharded or reference table"
        )))
    }

    /// A statement reading unsharded table `table` must run on shard 0
    /// alone (see [`unsharded_read`]).
    fn unsharded_read_on_shard_0(&self, table: &str, sharded: Option<&str>) -> Result<(), Refusal> {
        let Some(elsewhere) = self.beyond_shard_0() else {
            return Ok(());
        };
        let with = sharded_table(sharded);
        Err(unsupported(format!(
            "pgrouter: unsharded table \"{table}\" has its rows on shard 0, and this statement reads it with \
             {with} on {elsewhere}; HINT: make \"{table}\" a reference table, or query the two separately"
        )))
    }

    /// The sharded-table entry of an INSERT's target.
    fn insert_table(&self, rows: &pgrouter_parser::shard::InsertRows) -> Option<&'a ShardedTable> {
        let map: &'a ShardMap = self.map;
        map.relation(&rows.relation).or_else(|| {
            map.tables
                .iter()
                .find(|t| t.name.is_none() && rows.columns.contains(&t.column))
        })
    }

    fn insert_rows(
        &mut self,
        rows: &pgrouter_parser::shard::InsertRows,
        table: &ShardedTable,
    ) -> Result<(), Refusal> {
        let name = &rows.relation.name;
        if rows.rows.is_empty() {
            // DEFAULT VALUES: the key is the column's default (a sequence,
            // a function), computed by whichever shard runs the INSERT, so
            // no shard is known to be the one PostgreSQL would place it on.
            return Err(unsupported(format!(
                "pgrouter: INSERT ... DEFAULT VALUES into sharded table \"{name}\" does not give its shard \
                 key \"{}\"; HINT: add the shard key (INSERT INTO {name} ({}) VALUES (...))",
                table.column, table.column
            )));
        }
        let learnt;
        let columns: &[String] = if rows.columns.is_empty() {
            learnt = self.map.known_columns(&rows.relation);
            match &learnt {
                Some(list) => list,
                None => {
                    return Err(unsupported(format!(
                        "pgrouter: INSERT into sharded table \"{name}\" {COLUMNS_UNKNOWN} \"{}\"; HINT: name the columns",
                        table.column
                    )))
                }
            }
        } else {
            &rows.columns
        };
        let Some(at) = columns.iter().position(|c| *c == table.column) else {
            return Err(unsupported(format!(
                "pgrouter: INSERT into sharded table \"{name}\" must give its shard key \"{}\"; HINT: add the shard key",
                table.column
            )));
        };
        let mut shards = BTreeSet::new();
        for row in &rows.rows {
            let Some(Some(v)) = row.get(at) else {
                return Err(unsupported(format!(
                    "pgrouter: the shard key \"{}\" of an INSERT into \"{name}\" must be a constant or a parameter",
                    table.column
                )));
            };
            for value in self.values_of(v, table.placement.key_type, false)? {
                let shard = table.placement.shard_of(&value).map_err(key_error)?;
                if shards.is_empty() && self.explain {
                    self.reasons
                        .push(format!("{}.{} = {value}", name, table.column));
                }
                shards.insert(shard);
            }
        }
        if shards.len() > 1 {
            self.kind = Some(ManyKind::InsertSplit);
        }
        self.shards.extend(shards);
        Ok(())
    }

    /// The shards one query level needs; None when it reads no sharded table.
    fn scope(
        &mut self,
        scope: &Scope,
        kind: &StatementKind,
        nested_ok: bool,
    ) -> Result<Option<BTreeSet<usize>>, Refusal> {
        let rels: Vec<(usize, &'a ShardedTable)> = scope
            .relations
            .iter()
            .enumerate()
            .filter_map(|(i, r)| self.table_of(scope, r).map(|t| (i, t)))
            .collect();
        if rels.is_empty() {
            return Ok(None);
        }
        self.touched = true;
        // Classes of co-located relations: equated on their keys, same placement.
        let mut class: Vec<usize> = (0..rels.len()).collect();
        let mut links = Vec::new();
        top_level_links(&scope.filter, &mut links);
        links.extend(scope.links.iter().map(|(a, b)| (a, b)));
        for (a, b) in links {
            let (Some(x), Some(y)) = (self.resolve(scope, &rels, a), self.resolve(scope, &rels, b))
            else {
                continue;
            };
            if rels[x].1.placement == rels[y].1.placement {
                let (cx, cy) = (find(&mut class, x), find(&mut class, y));
                class[cx] = cy;
            }
        }
        let mut out = BTreeSet::new();
        let roots = (0..rels.len())
            .filter(|&r| find(&mut class, r) == r)
            .count();
        for root in 0..rels.len() {
            if find(&mut class, root) != root {
                continue;
            }
            let members: Vec<usize> = (0..rels.len())
                .filter(|&m| find(&mut class, m) == root)
                .collect();
            let placement = rels[root].1.placement.clone();
            match self.eval(&scope.filter, scope, &rels, &members, &placement)? {
                Some(set) => out.extend(set),
                None => {
                    let (i, t) = rels[root];
                    let r = &scope.relations[i];
                    if roots > 1 {
                        return Err(unsupported(format!(
                            "pgrouter: a join of sharded tables that are not equated on their shard keys, \
                             without the key of \"{}\", would need rows of several shards at once; \
                             HINT: join on the shard keys, or add the shard key (WHERE {} = ...)",
                            r.name, t.column
                        )));
                    }
                    if !nested_ok && matches!(kind, StatementKind::Update | StatementKind::Delete) {
                        return Err(unsupported(format!(
                            "pgrouter: an UPDATE or DELETE with a subquery on sharded table \"{}\" without its \
                             shard key would need rows of several shards at once; HINT: add the shard key \
                             (WHERE {} = ...)",
                            r.name, t.column
                        )));
                    }
                    if self.keyless.is_none() {
                        self.keyless = Some(format!(
                            "no shard key for \"{}\" ({}): every shard",
                            r.name, t.column
                        ));
                    }
                    for s in 0..self.map.shards {
                        out.insert(s);
                    }
                }
            }
        }
        if roots > 1 && out.len() > 1 {
            // Tables not equated on their keys meet only on a shard that
            // holds the rows of both: one shard, or no exact answer.
            return Err(unsupported(format!(
                "pgrouter: a join of sharded tables that are not equated on their shard keys needs rows \
                 of {} shards at once; HINT: join on the shard keys, or give keys on one shard",
                out.len()
            )));
        }
        Ok(Some(out))
    }

    /// The sharded-table entry of a relation of `scope`: by name, else a
    /// name-less entry whose column the scope mentions for it.
    fn table_of(&self, scope: &Scope, r: &Relation) -> Option<&'a ShardedTable> {
        let map: &'a ShardMap = self.map;
        if let Some(t) = map.relation(r) {
            return Some(t);
        }
        if map.table(&qualified(r)).is_some() || map.is_reference(&qualified(r)) {
            return None;
        }
        let nameless: Vec<&ShardedTable> = map.tables.iter().filter(|t| t.name.is_none()).collect();
        nameless
            .into_iter()
            .find(|t| mentions(&scope.filter, r, &t.column, scope.relations.len() == 1))
    }

    /// The relation (index into `rels`) a column names, if it is that relation's key.
    fn resolve(&self, scope: &Scope, rels: &[(usize, &ShardedTable)], c: &Column) -> Option<usize> {
        let matching: Vec<usize> = rels
            .iter()
            .enumerate()
            .filter(|(_, (i, t))| {
                t.column == c.name
                    && c.qualifier
                        .as_deref()
                        .is_none_or(|q| scope.relations[*i].is_named(q))
            })
            .map(|(k, _)| k)
            .collect();
        match matching.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }

    /// The shards `filter` allows for the class `members`; None = any.
    fn eval(
        &mut self,
        filter: &Filter,
        scope: &Scope,
        rels: &[(usize, &ShardedTable)],
        members: &[usize],
        placement: &Placement,
    ) -> Result<Option<BTreeSet<usize>>, Refusal> {
        Ok(match filter {
            Filter::Unknown | Filter::Cond(Cond::Columns(..)) => None,
            Filter::Cond(Cond::Values { column, values }) => {
                let Some(r) = self
                    .resolve(scope, rels, column)
                    .filter(|r| members.contains(r))
                else {
                    return Ok(None);
                };
                let mut set = BTreeSet::new();
                for v in values {
                    for value in self.values_of(v, placement.key_type, false)? {
                        set.insert(placement.shard_of(&value).map_err(key_error)?);
                        self.note(&scope.relations[rels[r].0], &rels[r].1.column, &value);
                    }
                }
                Some(set)
            }
            Filter::Cond(Cond::Array { column, array }) => {
                let Some(r) = self
                    .resolve(scope, rels, column)
                    .filter(|r| members.contains(r))
                else {
                    return Ok(None);
                };
                let mut set = BTreeSet::new();
                for value in self.values_of(array, placement.key_type, true)? {
                    set.insert(placement.shard_of(&value).map_err(key_error)?);
                    self.note(&scope.relations[rels[r].0], &rels[r].1.column, &value);
                }
                Some(set)
            }
            Filter::And(parts) => {
                let mut acc: Option<BTreeSet<usize>> = None;
                for part in parts {
                    if let Some(set) = self.eval(part, scope, rels, members, placement)? {
                        acc = Some(match acc {
                            None => set,
                            Some(a) => a.intersection(&set).copied().collect(),
                        });
                    }
                }
                acc
            }
            Filter::Or(parts) => {
                let mut acc = BTreeSet::new();
                for part in parts {
                    match self.eval(part, scope, rels, members, placement)? {
                        Some(set) => acc.extend(set),
                        None => return Ok(None),
                    }
                }
                Some(acc)
            }
        })
    }

    fn note(&mut self, r: &Relation, column: &str, value: &KeyValue) {
        if self.explain && self.reasons.len() < 4 {
            self.reasons.push(format!(
                "{}.{column} = {value}",
                r.alias.as_deref().unwrap_or(&r.name)
            ));
        }
    }

    /// An UPDATE that sets the shard key must keep the row on its shard.
    fn check_key_update(
        &mut self,
        keys: &StatementKeys,
        current: Option<&BTreeSet<usize>>,
    ) -> Result<(), Refusal> {
        let Some(scope) = keys.scopes.first() else {
            return Ok(());
        };
        let Some(target) = scope.relations.first() else {
            return Ok(());
        };
        let Some(table) = self.table_of(scope, target) else {
            return Ok(());
        };
        for (column, value) in &keys.assignments {
            self.check_key_assignment(table, &target.name, column, value.as_ref(), current)?;
        }
        Ok(())
    }

    /// `SET column = value` on a row of `table` now on one of `current`:
    /// when `column` is the shard key, the value must keep it there.
    fn check_key_assignment(
        &mut self,
        table: &ShardedTable,
        target: &str,
        column: &str,
        value: Option<&ValueRef>,
        current: Option<&BTreeSet<usize>>,
    ) -> Result<(), Refusal> {
        if column != table.column {
            return Ok(());
        }
        let Some(v) = value else {
            return Err(unsupported(format!(
                "pgrouter: UPDATE of shard key \"{column}\" of \"{target}\" to an expression is not supported \
                 (the row could move to another shard); HINT: set it to a constant or a parameter"
            )));
        };
        for value in self.values_of(v, table.placement.key_type, false)? {
            let shard = table.placement.shard_of(&value).map_err(key_error)?;
            if current.is_some_and(|c| c.iter().any(|&s| s != shard)) {
                return Err(unsupported(format!(
                    "pgrouter: UPDATE moving a row of \"{target}\" to another shard ({column} = {value} is on \
                     shard {shard}) is not supported; HINT: DELETE it and INSERT it again"
                )));
            }
        }
        Ok(())
    }

    /// The key values a [`ValueRef`] stands for in this execution, each
    /// one placeable in the session's client encoding.
    fn values_of(
        &mut self,
        v: &ValueRef,
        ty: KeyType,
        array: bool,
    ) -> Result<Vec<KeyValue>, Refusal> {
        let found = self.values_read(v, ty, array)?;
        for value in &found {
            check_encoding(value, self.foreign)?;
        }
        Ok(found)
    }

    /// The key values a [`ValueRef`] stands for in this execution.
    fn values_read(
        &mut self,
        v: &ValueRef,
        ty: KeyType,
        array: bool,
    ) -> Result<Vec<KeyValue>, Refusal> {
        let from_literal = |lit: &Literal, negate: bool| -> Result<Vec<KeyValue>, Refusal> {
            if array {
                return parse_text_array(ty, &lit.text).map_err(key_error);
            }
            super::shard_values::literal_value(lit, negate, ty).map(|v| vec![v])
        };
        match v {
            ValueRef::Null => Ok(vec![KeyValue::Null]),
            ValueRef::Const(lit) => from_literal(lit, false),
            ValueRef::Literal { index, negate } => {
                let sql = match self.values {
                    Values::Text(sql) => sql,
                    Values::Bind { sql, .. } => sql,
                };
                let literals = self.literals.get_or_insert_with(|| literal_values(sql));
                match literals.get(*index) {
                    Some(Some(lit)) => {
                        let lit = lit.clone();
                        from_literal(&lit, *negate)
                    }
                    _ => Err(unsupported(format!(
                        "{UNREADABLE_LITERAL} of this statement; HINT: write it as a plain '...' string or \
                         number, or add /* pgrouter: shard=N */"
                    ))),
                }
            }
            ValueRef::Param { number, cast } => super::shard_values::param_values_in(
                self.values,
                *number,
                *cast,
                ty,
                array,
                self.foreign,
            ),
        }
    }
}

/// Whether `filter` mentions `column` of relation `r` (qualified by its
/// name or alias, or unqualified when `r` is alone in its scope).
fn mentions(filter: &Filter, r: &Relation, column: &str, alone: bool) -> bool {
    let names =
        |c: &Column| c.name == column && c.qualifier.as_deref().map_or(alone, |q| r.is_named(q));
    match filter {
        Filter::Unknown => false,
        Filter::Cond(Cond::Values { column: c, .. } | Cond::Array { column: c, .. }) => names(c),
        Filter::Cond(Cond::Columns(a, b)) => names(a) || names(b),
        Filter::And(parts) | Filter::Or(parts) => {
            parts.iter().any(|p| mentions(p, r, column, alone))
        }
    }
}

fn top_level_links<'f>(f: &'f Filter, out: &mut Vec<(&'f Column, &'f Column)>) {
    match f {
        Filter::Cond(Cond::Columns(a, b)) => out.push((a, b)),
        Filter::And(parts) => parts.iter().for_each(|p| top_level_links(p, out)),
        _ => {}
    }
}

fn find(class: &mut [usize], mut x: usize) -> usize {
    while class[x] != x {
        class[x] = class[class[x]];
        x = class[x];
    }
    x
}

fn insert_select_refusal(table: &str) -> Refusal {
    unsupported(format!(
        "pgrouter: INSERT ... SELECT into sharded table \"{table}\" is not supported yet; \
         HINT: insert VALUES with the shard key"
    ))
}

/// A text key read in a client encoding other than UTF8 is placed only
/// when it is ASCII (the same bytes in every encoding PostgreSQL allows on
/// the client side): PostgreSQL converts the others to the database's
/// UTF-8 before hashing them, and the router does not.
fn check_encoding(value: &KeyValue, foreign: Option<&str>) -> Result<(), Refusal> {
    match (value, foreign) {
        (KeyValue::Text(bytes), Some(encoding)) if !bytes.is_ascii() => {
            Err(super::shard_values::foreign_key(encoding))
        }
        _ => Ok(()),
    }
}

pub(super) fn unsupported(message: impl Into<String>) -> Refusal {
    Refusal {
        sqlstate: UNSUPPORTED,
        message: message.into(),
    }
}

pub(super) fn key_error(e: KeyError) -> Refusal {
    Refusal {
        sqlstate: e.sqlstate,
        message: e.message,
    }
}
