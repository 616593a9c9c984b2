//! Where a statement's shard keys are, found in pg_query's tree without
//! knowing which tables are sharded (the analysis is shared by every
//! database and configuration): each query level is a [`Scope`] with its
//! tables and a [`Filter`] of the equality conditions in its WHERE clause
//! (and inner joins' ON clauses); INSERT keeps its rows, UPDATE its SET
//! values. The router later applies the shard map to these facts.
//!
//! Values are recorded by position ([`ValueRef`]): the n-th literal of the
//! text or parameter `$n`. A literal whose token does not read back as the
//! parser's constant (an unusual spelling) is stored inline instead, and
//! then the analysis is literal-sensitive (never shared with other texts).
//!
//! What is not modelled here — tables in subqueries of the select list, in
//! function arguments, and so on — is listed in
//! [`StatementKeys::unplaced`], so the router can refuse rather than guess.

use pg_query::protobuf::{self as pb, a_const::Val, node::Node as N};
use pg_query::protobuf::{AExprKind, BoolExprType, JoinType, NullTestType};

use super::casts;
use super::literals::{literal_values, Literal};
use super::value::KeyType;

/// The shard-key facts of one statement.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StatementKeys {
    /// The statement's query levels: its own first (for UPDATE/DELETE the
    /// target table is its first relation), then nested ones.
    pub scopes: Vec<Scope>,
    /// INSERT: the target and its rows.
    pub insert: Option<InsertRows>,
    /// UPDATE: `SET column = value` (None: not a plain value); INSERT:
    /// the same of its `ON CONFLICT ... DO UPDATE SET` (where
    /// `excluded.column` of the same column, which keeps the inserted
    /// row's value, is left out).
    pub assignments: Vec<(String, Option<ValueRef>)>,
    /// An INSERT, UPDATE or DELETE inside a WITH clause (a data-modifying
    /// CTE): the statement writes wherever it runs, so it must run on one
    /// shard. Their scopes are among `scopes` (after the statement's own).
    pub nested_writes: bool,
    /// The INSERTs inside WITH clauses: targets and rows.
    pub nested_inserts: Vec<InsertRows>,
    /// The `SET column = value` of UPDATEs inside WITH clauses, with
    /// their target.
    pub nested_assignments: Vec<(Relation, String, Option<ValueRef>)>,
    /// The tables the writes inside WITH clauses change.
    pub nested_targets: Vec<Relation>,
    /// Tables of the statement that are in no scope: their keys cannot be
    /// found (qualified as written, like [`crate::Analysis::tables`]).
    pub unplaced: Vec<String>,
    /// CREATE TABLE ... AS, CREATE MATERIALIZED VIEW, CREATE VIEW: the
    /// object is defined by a query (named here), whose tables are among
    /// `unplaced`. DDL runs on every shard, where such a query sees only
    /// that shard's rows of a sharded table.
    pub defined_by_query: Option<&'static str>,
}

/// One query level: the tables it reads and what its WHERE clause says.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scope {
    pub relations: Vec<Relation>,
    pub filter: Filter,
    /// `a.col = b.col` of outer joins' ON clauses (they relate the tables
    /// but do not filter the outer side).
    pub links: Vec<(Column, Column)>,
}

/// A table as written in a FROM clause (or the target of a DML statement).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub schema: Option<String>,
    pub name: String,
    pub alias: Option<String>,
}

impl Relation {
    /// Whether a column qualifier (`o` in `o.id`) names this relation.
    pub fn is_named(&self, qualifier: &str) -> bool {
        match &self.alias {
            Some(alias) => alias == qualifier,
            None => self.name == qualifier,
        }
    }
}

/// A column reference: `[qualifier.]name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub qualifier: Option<String>,
    pub name: String,
}

/// The conditions of a WHERE clause that can restrict a shard key.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Filter {
    /// Nothing known: no restriction.
    #[default]
    Unknown,
    Cond(Cond),
    And(Vec<Filter>),
    Or(Vec<Filter>),
}

/// One condition on a column.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// `col = v`, `col IN (v, ...)`, `col = ANY(ARRAY[v, ...])`, `col IS NULL`.
    Values { column: Column, values: Vec<ValueRef> },
    /// `col = ANY('{...}')` or `col = ANY($n)`: an array value.
    Array { column: Column, array: ValueRef },
    /// `a.col = b.col`.
    Columns(Column, Column),
}

/// Where a value is.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueRef {
    /// The `index`-th literal of the text (see [`literal_values`]), negated
    /// when written `-literal`.
    Literal { index: usize, negate: bool },
    /// A literal's value, when its position cannot be shared.
    Const(Literal),
    /// Parameter `$number`; `cast` when written `$n::type` of a known type.
    Param { number: usize, cast: Option<KeyType> },
    /// NULL.
    Null,
}

/// INSERT's target and VALUES rows.
#[derive(Debug, Clone, PartialEq)]
pub struct InsertRows {
    pub relation: Relation,
    /// The column list; empty when not written.
    pub columns: Vec<String>,
    /// One entry per VALUES row, one value per column (None: DEFAULT or an expression).
    pub rows: Vec<Vec<Option<ValueRef>>>,
    /// INSERT ... SELECT (or another query): rows unknown.
    pub from_query: bool,
}

/// The keys of one statement; the bool is true when a literal had to be
/// stored inline (the analysis then depends on literals).
pub(crate) fn statement_keys(node: &N, sql: &str, starts: &[usize]) -> (StatementKeys, bool) {
    let mut x =
        Extract { sql, starts, keys: StatementKeys::default(), placed: Vec::new(), sensitive: false, cte_depth: 0 };
    x.statement(node);
    let all = crate::walk::walk(node, &[]).tables;
    let mut placed = std::mem::take(&mut x.placed);
    for t in all {
        match placed.iter().position(|p| *p == t) {
            Some(i) => {
                placed.swap_remove(i);
            }
            None => x.keys.unplaced.push(t),
        }
    }
    (x.keys, x.sensitive)
}

struct Extract<'a> {
    sql: &'a str,
    starts: &'a [usize],
    keys: StatementKeys,
    /// Names of the relations put in scopes, as the walk names them.
    placed: Vec<String>,
    sensitive: bool,
    /// How many WITH clauses the walk is inside.
    cte_depth: usize,
}

impl Extract<'_> {
    fn statement(&mut self, node: &N) {
        match node {
            N::SelectStmt(s) => self.select(s),
            N::InsertStmt(i) => self.insert(i),
            N::UpdateStmt(u) => {
                let mut scope = Scope::default();
                if let Some(r) = &u.relation {
                    self.relation(r, &mut scope);
                }
                for f in &u.from_clause {
                    self.table_expr(f, &mut scope);
                }
                scope.filter = self.filter(u.where_clause.as_deref());
                let target = scope.relations.first().cloned();
                for t in &u.target_list {
                    if let Some(N::ResTarget(rt)) = &t.node {
                        let value = rt.val.as_deref().and_then(|v| self.value(v));
                        match (&target, self.cte_depth) {
                            (_, 0) => self.keys.assignments.push((rt.name.clone(), value)),
                            (Some(target), _) => {
                                self.keys.nested_assignments.push((target.clone(), rt.name.clone(), value))
                            }
                            (None, _) => {}
                        }
                    }
                }
                self.own_scope(scope);
                self.with(u.with_clause.as_ref());
            }
            N::DeleteStmt(d) => {
                let mut scope = Scope::default();
                if let Some(r) = &d.relation {
                    self.relation(r, &mut scope);
                }
                for f in &d.using_clause {
                    self.table_expr(f, &mut scope);
                }
                scope.filter = self.filter(d.where_clause.as_deref());
                self.own_scope(scope);
                self.with(d.with_clause.as_ref());
            }
            N::CreateTableAsStmt(c) => {
                // A table made WITH NO DATA stores nothing of the query; a
                // materialized view's REFRESH would fill it shard by shard.
                let matview = c.objtype == pb::ObjectType::ObjectMatview as i32;
                let no_data = c.into.as_ref().is_some_and(|i| i.skip_data);
                self.keys.defined_by_query = match (matview, no_data) {
                    (true, _) => Some("CREATE MATERIALIZED VIEW"),
                    (false, false) => Some("CREATE TABLE ... AS"),
                    (false, true) => None,
                };
            }
            N::ViewStmt(_) => self.keys.defined_by_query = Some("CREATE VIEW"),
            N::CopyStmt(c) => {
                if let Some(q) = c.query.as_deref().and_then(|q| q.node.as_ref()) {
                    self.statement(q);
                }
            }
            N::ExplainStmt(e) => {
                if let Some(q) = e.query.as_deref().and_then(|q| q.node.as_ref()) {
                    self.statement(q);
                }
            }
            N::PrepareStmt(p) => {
                if let Some(q) = p.query.as_deref().and_then(|q| q.node.as_ref()) {
                    self.statement(q);
                }
            }
            N::DeclareCursorStmt(d) => {
                if let Some(q) = d.query.as_deref().and_then(|q| q.node.as_ref()) {
                    self.statement(q);
                }
            }
            _ => {}
        }
    }

    /// The scope of an UPDATE or DELETE: the statement's own goes first
    /// (its target is the first relation); one inside a WITH clause goes
    /// after the others.
    fn own_scope(&mut self, scope: Scope) {
        if self.cte_depth == 0 {
            self.keys.scopes.insert(0, scope);
        } else {
            self.keys.nested_targets.extend(scope.relations.first().cloned());
            self.keys.scopes.push(scope);
        }
    }

    fn with(&mut self, with: Option<&pb::WithClause>) {
        self.cte_depth += 1;
        for cte in with.map(|w| w.ctes.as_slice()).unwrap_or_default() {
            if let Some(N::CommonTableExpr(c)) = &cte.node {
                if let Some(q) = c.ctequery.as_deref().and_then(|q| q.node.as_ref()) {
                    if matches!(q, N::InsertStmt(_) | N::UpdateStmt(_) | N::DeleteStmt(_) | N::MergeStmt(_)) {
                        self.keys.nested_writes = true;
                    }
                    self.statement(q);
                }
            }
        }
        self.cte_depth -= 1;
    }

    /// A SELECT adds its own scope (set operations: one per arm).
    fn select(&mut self, s: &pb::SelectStmt) {
        self.with(s.with_clause.as_ref());
        if let (Some(l), Some(r)) = (&s.larg, &s.rarg) {
            self.select(l);
            self.select(r);
            return;
        }
        let at = self.keys.scopes.len();
        self.keys.scopes.push(Scope::default());
        let mut scope = Scope::default();
        for f in &s.from_clause {
            self.table_expr(f, &mut scope);
        }
        let filter = self.filter(s.where_clause.as_deref());
        scope.filter = and(std::mem::take(&mut scope.filter), filter);
        for t in &s.target_list {
            if let Some(N::ResTarget(rt)) = &t.node {
                if let Some(N::SubLink(sl)) = rt.val.as_deref().and_then(|v| v.node.as_ref()) {
                    self.sublink(sl);
                }
            }
        }
        self.keys.scopes[at] = scope;
    }

    fn insert(&mut self, i: &pb::InsertStmt) {
        self.with(i.with_clause.as_ref());
        let Some(rv) = &i.relation else { return };
        let relation = self.relation_of(rv);
        let columns = i
            .cols
            .iter()
            .filter_map(|c| match &c.node {
                Some(N::ResTarget(rt)) => Some(rt.name.clone()),
                _ => None,
            })
            .collect();
        let mut rows = Vec::new();
        let mut from_query = false;
        match i.select_stmt.as_deref().and_then(|s| s.node.as_ref()) {
            Some(N::SelectStmt(s)) if !s.values_lists.is_empty() => {
                for row in &s.values_lists {
                    let Some(N::List(items)) = &row.node else { continue };
                    rows.push(items.items.iter().map(|v| self.value(v)).collect());
                }
            }
            Some(other) => {
                from_query = true;
                self.statement(other);
            }
            None => {} // DEFAULT VALUES
        }
        if let Some(conflict) = &i.on_conflict_clause {
            for t in &conflict.target_list {
                let Some(N::ResTarget(rt)) = &t.node else { continue };
                let Some(val) = rt.val.as_deref() else { continue };
                if column(val).is_some_and(|c| c.qualifier.as_deref() == Some("excluded") && c.name == rt.name) {
                    continue; // the inserted row's own value: the row stays where it is
                }
                let value = self.value(val);
                if self.cte_depth == 0 {
                    self.keys.assignments.push((rt.name.clone(), value));
                } else {
                    self.keys.nested_assignments.push((relation.clone(), rt.name.clone(), value));
                }
            }
        }
        let rows = InsertRows { relation, columns, rows, from_query };
        if self.cte_depth == 0 {
            self.keys.insert = Some(rows);
        } else {
            self.keys.nested_targets.push(rows.relation.clone());
            self.keys.nested_inserts.push(rows);
        }
    }

    fn relation_of(&mut self, r: &pb::RangeVar) -> Relation {
        let mut walked = [r.catalogname.as_str(), r.schemaname.as_str(), r.relname.as_str()]
            .iter()
            .filter(|p| !p.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(".");
        if walked.is_empty() {
            walked = r.relname.clone();
        }
        self.placed.push(walked);
        Relation {
            schema: (!r.schemaname.is_empty()).then(|| r.schemaname.clone()),
            name: r.relname.clone(),
            alias: r.alias.as_ref().map(|a| a.aliasname.clone()),
        }
    }

    fn relation(&mut self, r: &pb::RangeVar, scope: &mut Scope) {
        let rel = self.relation_of(r);
        scope.relations.push(rel);
    }

    fn table_expr(&mut self, node: &pg_query::protobuf::Node, scope: &mut Scope) {
        match &node.node {
            Some(N::RangeVar(r)) => self.relation(r, scope),
            Some(N::JoinExpr(j)) => {
                for side in [&j.larg, &j.rarg].into_iter().flatten() {
                    self.table_expr(side, scope);
                }
                let quals = self.filter(j.quals.as_deref());
                if JoinType::try_from(j.jointype) == Ok(JoinType::JoinInner) {
                    scope.filter = and(std::mem::take(&mut scope.filter), quals);
                } else {
                    collect_links(&quals, &mut scope.links);
                }
            }
            Some(N::RangeSubselect(s)) => {
                if let Some(q) = s.subquery.as_deref().and_then(|q| q.node.as_ref()) {
                    self.statement(q);
                }
            }
            _ => {}
        }
    }

    fn sublink(&mut self, sl: &pb::SubLink) {
        if let Some(q) = sl.subselect.as_deref().and_then(|q| q.node.as_ref()) {
            self.statement(q);
        }
    }

    fn filter(&mut self, node: Option<&pg_query::protobuf::Node>) -> Filter {
        let Some(node) = node.and_then(|n| n.node.as_ref()) else {
            return Filter::Unknown;
        };
        match node {
            N::BoolExpr(b) => {
                let parts = || b.args.iter().map(|a| a as &pg_query::protobuf::Node);
                match BoolExprType::try_from(b.boolop) {
                    Ok(BoolExprType::AndExpr) => Filter::And(parts().map(|a| self.filter(Some(a))).collect()),
                    Ok(BoolExprType::OrExpr) => Filter::Or(parts().map(|a| self.filter(Some(a))).collect()),
                    _ => {
                        // NOT: nothing to learn, but its subqueries are still scopes.
                        for a in parts() {
                            self.filter(Some(a));
                        }
                        Filter::Unknown
                    }
                }
            }
            N::SubLink(sl) => {
                self.sublink(sl);
                Filter::Unknown
            }
            N::NullTest(t) if NullTestType::try_from(t.nulltesttype) == Ok(NullTestType::IsNull) => {
                match t.arg.as_deref().and_then(column) {
                    Some(c) => Filter::Cond(Cond::Values { column: c, values: vec![ValueRef::Null] }),
                    None => Filter::Unknown,
                }
            }
            N::AExpr(e) if op_name(&e.name) == Some("=") => self.equality(e).unwrap_or_default(),
            _ => Filter::Unknown,
        }
    }

    fn equality(&mut self, e: &pb::AExpr) -> Option<Filter> {
        let (l, r) = (e.lexpr.as_deref()?, e.rexpr.as_deref()?);
        let cond = match AExprKind::try_from(e.kind).ok()? {
            AExprKind::AexprOp => match (column(l), column(r)) {
                (Some(a), Some(b)) => Cond::Columns(a, b),
                (Some(c), None) => Cond::Values { column: c, values: vec![self.value(r)?] },
                (None, Some(c)) => Cond::Values { column: c, values: vec![self.value(l)?] },
                (None, None) => return None,
            },
            AExprKind::AexprIn => {
                let Some(N::List(list)) = &r.node else { return None };
                let values = list.items.iter().map(|v| self.value(v)).collect::<Option<Vec<_>>>()?;
                Cond::Values { column: column(l)?, values }
            }
            AExprKind::AexprOpAny => {
                let c = column(l)?;
                match r.node.as_ref()? {
                    N::AArrayExpr(a) => {
                        let values = a.elements.iter().map(|v| self.value(v)).collect::<Option<Vec<_>>>()?;
                        Cond::Values { column: c, values }
                    }
                    // ARRAY[...]::type[]: the cast applies to each element.
                    N::TypeCast(t) if matches!(t.arg.as_deref()?.node, Some(N::AArrayExpr(_))) => {
                        let to = casts::exact_target(t)?;
                        let Some(N::AArrayExpr(a)) = t.arg.as_deref()?.node.as_ref() else { return None };
                        let values = a.elements.iter().map(|v| self.cast_value(v, to)).collect::<Option<Vec<_>>>()?;
                        Cond::Values { column: c, values }
                    }
                    _ => Cond::Array { column: c, array: self.value(r)? },
                }
            }
            _ => return None,
        };
        Some(Filter::Cond(cond))
    }

    /// A plain value: a literal, a parameter, NULL, possibly cast to one of
    /// the key types.
    fn value(&mut self, node: &pg_query::protobuf::Node) -> Option<ValueRef> {
        match node.node.as_ref()? {
            N::ParamRef(p) => Some(ValueRef::Param { number: usize::try_from(p.number).ok()?, cast: None }),
            N::AConst(c) if c.isnull => Some(ValueRef::Null),
            N::AConst(c) => {
                let (text, numeric) = match c.val.as_ref()? {
                    Val::Ival(i) => (i.ival.to_string(), true),
                    Val::Fval(f) => (f.fval.clone(), true),
                    Val::Sval(s) => (s.sval.clone(), false),
                    _ => return None,
                };
                Some(self.literal(usize::try_from(c.location).ok()?, Literal { text, numeric }))
            }
            N::TypeCast(t) => self.cast_value(t.arg.as_deref()?, casts::exact_target(t)?),
            _ => None,
        }
    }

    /// `arg` cast to `to`: its value when the cast keeps it as the router
    /// reads it, else unknown (see [`casts`]).
    fn cast_value(&mut self, arg: &pg_query::protobuf::Node, to: KeyType) -> Option<ValueRef> {
        if !casts::keeps_value(arg, to) {
            return None;
        }
        match self.value(arg)? {
            ValueRef::Param { number, .. } => Some(ValueRef::Param { number, cast: Some(to) }),
            other => Some(other),
        }
    }

    /// The position of the constant at byte `location`, checked against
    /// the literal token there; else the value itself.
    fn literal(&mut self, location: usize, value: Literal) -> ValueRef {
        let negate = self.sql.as_bytes().get(location) == Some(&b'-');
        let index = self.starts.partition_point(|&s| s < location);
        if let Some(Some(token)) = literal_values_at(self.sql, self.starts, index) {
            let read = if negate { format!("-{}", token.text) } else { token.text.clone() };
            if read == value.text && token.numeric == value.numeric {
                return ValueRef::Literal { index, negate };
            }
        }
        self.sensitive = true;
        ValueRef::Const(value)
    }
}

/// The literal numbered `index` of `sql`.
fn literal_values_at(sql: &str, starts: &[usize], index: usize) -> Option<Option<Literal>> {
    let start = *starts.get(index)?;
    // Decode only from this literal on: its number is known.
    literal_values(sql.get(start..)?).into_iter().next()
}

fn and(a: Filter, b: Filter) -> Filter {
    match (a, b) {
        (Filter::Unknown, b) => b,
        (a, Filter::Unknown) => a,
        (Filter::And(mut v), b) => {
            v.push(b);
            Filter::And(v)
        }
        (a, b) => Filter::And(vec![a, b]),
    }
}

fn collect_links(f: &Filter, out: &mut Vec<(Column, Column)>) {
    match f {
        Filter::Cond(Cond::Columns(a, b)) => out.push((a.clone(), b.clone())),
        Filter::And(parts) => parts.iter().for_each(|p| collect_links(p, out)),
        _ => {}
    }
}

fn op_name(name: &[pg_query::protobuf::Node]) -> Option<&str> {
    match &name.last()?.node {
        Some(N::String(s)) => Some(s.sval.as_str()),
        _ => None,
    }
}

fn column(node: &pg_query::protobuf::Node) -> Option<Column> {
    let N::ColumnRef(c) = node.node.as_ref()? else { return None };
    let names: Vec<&str> = c
        .fields
        .iter()
        .map(|f| match &f.node {
            Some(N::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let (name, rest) = names.split_last()?;
    Some(Column { qualifier: rest.last().map(|q| q.to_string()), name: name.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::literals::literal_starts;

    fn keys(sql: &str) -> (StatementKeys, bool) {
        let parsed = pg_query::parse(sql, 0).unwrap();
        let stmt = parsed.protobuf.stmts[0].stmt.as_ref().unwrap().node.as_ref().unwrap();
        statement_keys(stmt, sql, &literal_starts(sql))
    }

    fn col(q: Option<&str>, n: &str) -> Column {
        Column { qualifier: q.map(str::to_string), name: n.into() }
    }

    fn lit(index: usize) -> ValueRef {
        ValueRef::Literal { index, negate: false }
    }

    #[test]
    fn where_equalities_under_and_or_in_any() {
        let (k, sensitive) = keys("SELECT * FROM s.orders o WHERE o.cid = 5 AND (7 = cid OR cid IN (8, $2)) AND x > 3");
        assert!(!sensitive);
        assert_eq!(k.scopes.len(), 1);
        assert_eq!(
            k.scopes[0].relations,
            vec![Relation { schema: Some("s".into()), name: "orders".into(), alias: Some("o".into()) }]
        );
        assert_eq!(
            k.scopes[0].filter,
            Filter::And(vec![
                Filter::Cond(Cond::Values { column: col(Some("o"), "cid"), values: vec![lit(0)] }),
                Filter::Or(vec![
                    Filter::Cond(Cond::Values { column: col(None, "cid"), values: vec![lit(1)] }),
                    Filter::Cond(Cond::Values {
                        column: col(None, "cid"),
                        values: vec![lit(2), ValueRef::Param { number: 2, cast: None }]
                    }),
                ]),
                Filter::Unknown,
            ])
        );
        assert!(k.unplaced.is_empty());
        let (k, _) =
            keys("SELECT 1 FROM t WHERE id = ANY('{1,2}') AND k = ANY($1::bigint[]) AND j = ANY(ARRAY[-3, 4])");
        let Filter::And(parts) = &k.scopes[0].filter else { panic!("{k:?}") };
        assert_eq!(parts[0], Filter::Cond(Cond::Array { column: col(None, "id"), array: lit(1) }));
        assert_eq!(
            parts[1],
            Filter::Cond(Cond::Array {
                column: col(None, "k"),
                array: ValueRef::Param { number: 1, cast: Some(KeyType::Bigint) }
            })
        );
        assert_eq!(
            parts[2],
            Filter::Cond(Cond::Values {
                column: col(None, "j"),
                values: vec![ValueRef::Literal { index: 2, negate: true }, lit(3)]
            })
        );
    }

    #[test]
    fn joins_inserts_updates() {
        let (k, _) =
            keys("SELECT * FROM a JOIN b ON a.k = b.k LEFT JOIN c ON c.k = a.k AND c.z = 1 WHERE a.k = $1::int8");
        let s = &k.scopes[0];
        assert_eq!(s.relations.len(), 3);
        assert_eq!(s.links, vec![(col(Some("c"), "k"), col(Some("a"), "k"))]);
        assert_eq!(
            s.filter,
            Filter::And(vec![
                Filter::Cond(Cond::Columns(col(Some("a"), "k"), col(Some("b"), "k"))),
                Filter::Cond(Cond::Values {
                    column: col(Some("a"), "k"),
                    values: vec![ValueRef::Param { number: 1, cast: Some(KeyType::Bigint) }]
                }),
            ])
        );
        let (k, _) = keys("INSERT INTO t (k, v) VALUES (1, 'x'), ($1, DEFAULT)");
        let ins = k.insert.unwrap();
        assert_eq!(ins.columns, vec!["k", "v"]);
        assert_eq!(
            ins.rows,
            vec![vec![Some(lit(0)), Some(lit(1))], vec![Some(ValueRef::Param { number: 1, cast: None }), None]]
        );
        let (k, _) = keys("UPDATE t SET k = 9, v = v + 1 WHERE k = 3");
        assert_eq!(k.assignments, vec![("k".into(), Some(lit(0))), ("v".into(), None)]);
        assert_eq!(k.scopes[0].relations[0].name, "t");
        let (k, _) = keys("DELETE FROM t USING u WHERE t.k = u.k AND u.k IS NULL");
        assert_eq!(k.scopes[0].relations.len(), 2);
    }

    #[test]
    fn subqueries_are_scopes_or_unplaced() {
        let (k, _) = keys("WITH w AS (SELECT * FROM a WHERE k = 1) SELECT * FROM w, (SELECT * FROM b) s WHERE EXISTS (SELECT 1 FROM c)");
        let names: Vec<Vec<&str>> =
            k.scopes.iter().map(|s| s.relations.iter().map(|r| r.name.as_str()).collect()).collect();
        assert_eq!(names, vec![vec!["a"], vec!["w"], vec!["b"], vec!["c"]]);
        assert!(k.unplaced.is_empty());
        let (k, _) = keys("SELECT (SELECT 1 FROM z) + 1, f((SELECT 2 FROM y))");
        assert_eq!(k.unplaced, vec!["z", "y"]);
    }

    #[test]
    fn unusual_literal_spellings_are_stored_inline() {
        let (k, sensitive) = keys("SELECT * FROM t WHERE k = 'a'\n'b'");
        assert!(sensitive);
        assert_eq!(
            k.scopes[0].filter,
            Filter::Cond(Cond::Values {
                column: col(None, "k"),
                values: vec![ValueRef::Const(Literal { text: "ab".into(), numeric: false })]
            })
        );
        let (k, sensitive) = keys("SELECT * FROM t WHERE k = - -5");
        assert!(sensitive);
        assert_eq!(
            k.scopes[0].filter,
            Filter::Cond(Cond::Values {
                column: col(None, "k"),
                values: vec![ValueRef::Const(Literal { text: "5".into(), numeric: true })]
            })
        );
        let (_, sensitive) = keys("SELECT * FROM t WHERE k = E'x\\ty' AND j = $$q$$");
        assert!(!sensitive);
    }
}
