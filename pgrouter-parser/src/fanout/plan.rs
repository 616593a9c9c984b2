//! [`plan_read`]: the select list, GROUP BY, ORDER BY and DISTINCT of one
//! SELECT turned into shard SQL plus a [`MergeSpec`]. HAVING is in
//! `having`, LIMIT/OFFSET in `limit`.

use pg_query::protobuf::{self as pb, node::Node as N};

use super::exprs::{self, AggFn};
use super::input_names;
use super::spec::{Agg, Aggregation, Col, MergeSpec, Role, SortKey};
use super::{ReadPlan, Unsupported, ONE_SHARD};

/// Plans one SELECT (the whole text of `sql`) for several shards. A GROUP
/// BY name that may be an input column as well as an output name is taken
/// for the output name, and [`ReadPlan::input_probe`] asks which it is.
pub fn plan_read(sql: &str) -> Result<ReadPlan, Unsupported> {
    plan(sql, None)
}

/// [`plan_read`] knowing which of the names its `input_probe` asked about
/// are input columns (the names the probe returned).
pub fn plan_read_knowing(sql: &str, input_columns: &[String]) -> Result<ReadPlan, Unsupported> {
    plan(sql, Some(input_columns))
}

fn plan(sql: &str, known_inputs: Option<&[String]>) -> Result<ReadPlan, Unsupported> {
    let parsed = match std::panic::catch_unwind(|| pg_query::parse(sql, 0)) {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return Err(Unsupported::new(&format!("a statement the router cannot parse ({e})"), ONE_SHARD)),
        Err(_) => return Err(Unsupported::new("a statement the router cannot parse", ONE_SHARD)),
    };
    let mut tree = parsed.protobuf;
    if tree.stmts.len() != 1 {
        return Err(Unsupported::new("several statements in one query string", "send them one by one"));
    }
    let Some(N::SelectStmt(select)) = tree.stmts[0].stmt.as_mut().and_then(|s| s.node.as_mut()) else {
        return Err(Unsupported::new("a statement other than SELECT", ONE_SHARD));
    };
    refuse_shape(select, sql)?;
    let mut p = Planner::new(select)?;
    p.known_inputs = known_inputs.map(<[String]>::to_vec);
    let merge = p.plan(select)?;
    let input_probe = if p.unsure.is_empty() { None } else { input_names::probe(select, &p.unsure)? };
    for (i, node) in p.hidden.drain(..).enumerate() {
        let target = pb::ResTarget {
            name: format!("pgrouter_hidden_{}", i + 1),
            val: Some(Box::new(node)),
            ..Default::default()
        };
        select.target_list.push(pb::Node { node: Some(N::ResTarget(Box::new(target))) });
    }
    let shard_sql = std::panic::catch_unwind(|| pg_query::deparse(&tree, Default::default()))
        .map_err(|_| Unsupported::new("a statement the router cannot rewrite", ONE_SHARD))?
        .map_err(|e| Unsupported::new(&format!("a statement the router cannot rewrite ({e})"), ONE_SHARD))?;
    Ok(ReadPlan { shard_sql, merge, functions: exprs::scan(sql).calls, input_probe })
}

/// Refuses what no merge can make exact, before looking closer.
fn refuse_shape(s: &pb::SelectStmt, sql: &str) -> Result<(), Unsupported> {
    let refuse = |what: &str| Err(Unsupported::new(what, ONE_SHARD));
    if s.op != pb::SetOperation::SetopNone as i32 || s.larg.is_some() {
        return refuse("UNION, INTERSECT and EXCEPT");
    }
    if !s.values_lists.is_empty() {
        return refuse("VALUES");
    }
    if s.into_clause.is_some() {
        return refuse("SELECT INTO");
    }
    if !s.locking_clause.is_empty() {
        return refuse("FOR UPDATE/SHARE");
    }
    if s.with_clause.is_some() {
        return refuse("WITH (common table expressions)");
    }
    if !s.window_clause.is_empty() {
        return Err(exprs::window());
    }
    if s.limit_option == pb::LimitOption::WithTies as i32 {
        return refuse("FETCH FIRST ... WITH TIES");
    }
    if s.distinct_clause.len() > 1 || s.distinct_clause.iter().any(|d| d.node.is_some()) {
        return refuse("DISTINCT ON");
    }
    if s.from_clause.iter().any(has_subselect) {
        return refuse("subqueries in FROM");
    }
    let inside = exprs::scan(sql);
    if inside.selects > 1 {
        return refuse("subqueries");
    }
    if inside.window {
        return Err(exprs::window());
    }
    for g in &s.group_clause {
        if matches!(g.node, Some(N::GroupingSet(_))) {
            return refuse("GROUPING SETS, ROLLUP and CUBE");
        }
    }
    Ok(())
}

/// `*`, `t.*` or `(expr).*`: several columns, how many only the shards know.
fn expands_to_columns(val: &pb::Node) -> bool {
    let last_is_star = |fields: &[pb::Node]| matches!(fields.last().and_then(|f| f.node.as_ref()), Some(N::AStar(_)));
    match &val.node {
        Some(N::ColumnRef(c)) => last_is_star(&c.fields),
        Some(N::AIndirection(a)) => last_is_star(&a.indirection),
        _ => false,
    }
}

fn has_subselect(node: &pb::Node) -> bool {
    match &node.node {
        Some(N::RangeSubselect(_)) => true,
        Some(N::JoinExpr(j)) => {
            j.larg.as_deref().is_some_and(has_subselect) || j.rarg.as_deref().is_some_and(has_subselect)
        }
        _ => false,
    }
}

/// One item of the select list.
struct Target {
    /// Canonical text of the expression (empty for `*`).
    key: String,
    name: Option<String>,
    agg: Option<AggFn>,
    collate_c: bool,
    /// The expression (None for `*`).
    val: Option<pb::Node>,
}

pub(super) struct Planner {
    targets: Vec<Target>,
    /// Index of the first `*` item: later items have unknown positions.
    star_at: Option<usize>,
    /// Expressions of the hidden columns, their canonical texts and roles.
    pub(super) hidden: Vec<pb::Node>,
    hidden_keys: Vec<String>,
    hidden_roles: Vec<Role>,
    /// The statement aggregates (aggregates, GROUP BY or HAVING).
    pub(super) grouped: bool,
    /// Which names are input columns, when a shard was asked.
    known_inputs: Option<Vec<String>>,
    /// GROUP BY names taken for output names that may be input columns.
    unsure: Vec<String>,
}

impl Planner {
    fn new(s: &pb::SelectStmt) -> Result<Planner, Unsupported> {
        let mut targets = Vec::new();
        let mut star_at = None;
        for (i, t) in s.target_list.iter().enumerate() {
            let Some(N::ResTarget(rt)) = &t.node else {
                return Err(Unsupported::new("a select-list item the router cannot read", ONE_SHARD));
            };
            let val = rt.val.as_deref();
            let is_star = val.is_some_and(expands_to_columns);
            if is_star {
                star_at.get_or_insert(i);
                targets.push(Target { key: String::new(), name: None, agg: None, collate_c: false, val: None });
                continue;
            }
            let Some(val) = val else { return Err(Unsupported::new("an empty select-list item", ONE_SHARD)) };
            let key = exprs::text(val)?;
            let (agg, collate_c) = match &val.node {
                Some(N::FuncCall(f)) => (exprs::aggregate(f)?, f.args.first().is_some_and(exprs::collate_c)),
                _ => (exprs::top_aggregate(val)?, exprs::collate_c(val)),
            };
            let inside = exprs::scan(&key);
            if inside.window {
                return Err(exprs::window());
            }
            let nested = if agg.is_some() { inside.aggregates.len() > 1 } else { !inside.aggregates.is_empty() };
            if nested {
                return Err(Unsupported::new(
                    &format!("an aggregate inside an expression ({key})"),
                    "select the aggregate itself",
                ));
            }
            targets.push(Target { key, name: exprs::output_name(rt), agg, collate_c, val: Some(val.clone()) });
        }
        let grouped =
            targets.iter().any(|t| t.agg.is_some()) || !s.group_clause.is_empty() || s.having_clause.is_some();
        if grouped && star_at.is_some() {
            return Err(Unsupported::new("SELECT * with aggregates or GROUP BY", "list the columns"));
        }
        Ok(Planner {
            targets,
            star_at,
            hidden: Vec::new(),
            hidden_keys: Vec::new(),
            hidden_roles: Vec::new(),
            grouped,
            known_inputs: None,
            unsure: Vec::new(),
        })
    }

    fn plan(&mut self, s: &mut pb::SelectStmt) -> Result<MergeSpec, Unsupported> {
        let distinct = !s.distinct_clause.is_empty();
        let mut roles = Vec::new();
        if self.grouped {
            for (i, item) in s.target_list.iter().enumerate() {
                let (Some(agg), Some(N::ResTarget(rt))) = (self.targets[i].agg, &item.node) else {
                    roles.push(Role::Group);
                    continue;
                };
                let call = rt.val.as_deref().cloned().unwrap_or_default();
                let collate_c = self.targets[i].collate_c;
                roles.push(Role::Agg(self.agg_role(&call, agg, collate_c)?));
            }
        }
        let mut group_by = Vec::new();
        if self.grouped {
            for g in &s.group_clause {
                group_by.push(self.group_col(g)?);
            }
        }
        let having = match s.having_clause.take() {
            Some(h) => {
                let predicate = self.predicate(&h)?;
                // The shards still check and type HAVING (and its parameters) but keep every group.
                let or_true = pb::BoolExpr {
                    boolop: pb::BoolExprType::OrExpr as i32,
                    args: vec![*h, exprs::parse_expr("true")],
                    ..Default::default()
                };
                s.having_clause = Some(Box::new(pb::Node { node: Some(N::BoolExpr(Box::new(or_true))) }));
                Some(predicate)
            }
            None => None,
        };
        let mut order_by = Vec::new();
        for item in &s.sort_clause {
            let Some(N::SortBy(sort)) = &item.node else { continue };
            order_by.push(self.sort_key(sort, distinct)?);
        }
        if distinct && order_by.iter().any(|k| matches!(k.column, Col::Hidden(_))) {
            // PostgreSQL refuses it; the shards, running without DISTINCT, would not.
            return Err(Unsupported::new(
                "SELECT DISTINCT with ORDER BY expressions not in the select list",
                "add the ORDER BY expressions to the select list",
            ));
        }
        let (limit, offset) = super::limit::plan(s, self.grouped)?;
        if self.grouped {
            // Partial groups of different shards must all reach the merger.
            s.distinct_clause.clear();
        }
        let hidden = self.hidden.len();
        let aggregate = self.grouped.then(|| {
            roles.extend(self.hidden_roles.iter().cloned());
            Aggregation { columns: roles, group_by, having }
        });
        let visible = self.star_at.is_none().then_some(self.targets.len());
        Ok(MergeSpec { visible, hidden, order_by, limit, offset, distinct, aggregate })
    }

    /// The role of an aggregate call; avg adds its hidden sum and count.
    fn agg_role(&mut self, call: &pb::Node, agg: AggFn, collate_c: bool) -> Result<Agg, Unsupported> {
        Ok(match agg {
            AggFn::Count => Agg::Count,
            AggFn::Sum => Agg::Sum,
            AggFn::Min => Agg::Min { collate_c },
            AggFn::Max => Agg::Max { collate_c },
            AggFn::BoolAnd => Agg::BoolAnd,
            AggFn::BoolOr => Agg::BoolOr,
            AggFn::Avg => {
                let sum = self.hidden_col(renamed(call, "sum"), Role::Agg(Agg::Sum))?;
                let count = self.hidden_col(renamed(call, "count"), Role::Agg(Agg::Count))?;
                Agg::Avg { sum, count }
            }
        })
    }

    /// A hidden column of `node` (shared with an equal one of the same role).
    pub(super) fn hidden_col(&mut self, node: pb::Node, role: Role) -> Result<Col, Unsupported> {
        let key = exprs::text(&node)?;
        if let Some(i) = (0..self.hidden.len()).find(|&i| self.hidden_keys[i] == key && self.hidden_roles[i] == role) {
            return Ok(Col::Hidden(i));
        }
        self.hidden.push(node);
        self.hidden_keys.push(key);
        self.hidden_roles.push(role);
        Ok(Col::Hidden(self.hidden.len() - 1))
    }

    /// The visible column (before any `*`) whose expression is `key`.
    fn visible_with(&self, key: &str, want_agg: bool) -> Option<usize> {
        let end = self.star_at.unwrap_or(self.targets.len());
        (0..end).find(|&i| self.targets[i].key == key && self.targets[i].agg.is_some() == want_agg)
    }

    /// A column holding the value of `node` in a grouped statement: a
    /// visible one if some select-list item is the same expression, else
    /// a hidden one. Aggregates get their merge role.
    pub(super) fn value_col(&mut self, node: &pb::Node) -> Result<(Col, bool), Unsupported> {
        let key = exprs::text(node)?;
        let (inner, collate_c) = match &node.node {
            Some(N::CollateClause(c)) if exprs::collate_c(node) => (c.arg.as_deref().unwrap_or(node), true),
            _ => (node, false),
        };
        let agg = exprs::top_aggregate(inner)?;
        let inside = exprs::scan(&key);
        if inside.window {
            return Err(exprs::window());
        }
        if inside.aggregates.len() > usize::from(agg.is_some()) {
            return Err(Unsupported::new(
                &format!("an aggregate inside an expression ({key})"),
                "compare the aggregate itself",
            ));
        }
        if let Some(i) = self.visible_with(&key, agg.is_some()) {
            return Ok((Col::Visible(i), collate_c || self.targets[i].collate_c));
        }
        if collate_c {
            // `x COLLATE "C"` orders the select-list item `x` by its bytes.
            if let Some(i) = self.visible_with(&exprs::text(inner)?, agg.is_some()) {
                return Ok((Col::Visible(i), true));
            }
        }
        if let Some(agg) = agg.filter(|_| self.grouped) {
            let arg_c = matches!(&inner.node, Some(N::FuncCall(f)) if f.args.first().is_some_and(exprs::collate_c));
            let role = Role::Agg(self.agg_role(inner, agg, arg_c)?);
            if let Role::Agg(Agg::Avg { .. }) = role {
                // The avg itself, for its type in the RowDescription.
                return Ok((self.hidden_col(inner.clone(), role)?, false));
            }
            return Ok((self.hidden_col(inner.clone(), role)?, arg_c));
        }
        Ok((self.hidden_col(node.clone(), Role::Group)?, collate_c))
    }

    /// The column of a GROUP BY item.
    fn group_col(&mut self, g: &pb::Node) -> Result<Col, Unsupported> {
        if let Some(pos) = exprs::position(g) {
            return self.position(pos, "GROUP BY");
        }
        let key = exprs::text(g)?;
        if let Some(i) = self.visible_with(&key, false) {
            return Ok(Col::Visible(i));
        }
        // A bare name is an input column if the FROM clause has one of
        // that name, else an output name (PostgreSQL's order for GROUP BY,
        // the reverse of ORDER BY's). Only the catalog knows the FROM
        // clause's columns: until a shard was asked, the output name is
        // assumed and the name recorded for the probe.
        if let Some(name) = exprs::bare_name(g) {
            if let Some(i) = self.targets.iter().position(|t| t.agg.is_none() && t.name.as_deref() == Some(name)) {
                match &self.known_inputs {
                    Some(inputs) if inputs.iter().any(|n| n == name) => {}
                    Some(_) => return Ok(Col::Visible(i)),
                    None => {
                        if !self.unsure.iter().any(|n| n == name) {
                            self.unsure.push(name.to_string());
                        }
                        return Ok(Col::Visible(i));
                    }
                }
            }
        }
        self.hidden_col(g.clone(), Role::Group)
    }

    /// `ORDER BY 2` / `GROUP BY 2`.
    fn position(&self, pos: i32, clause: &str) -> Result<Col, Unsupported> {
        let i = usize::try_from(pos - 1).unwrap_or(usize::MAX);
        if self.star_at.is_some_and(|s| i >= s) && i != usize::MAX {
            return Err(Unsupported::new(&format!("{clause} position after * in the select list"), "list the columns"));
        }
        // Out of range: the shards report PostgreSQL's own error first.
        Ok(Col::Visible(if i < self.targets.len() { i } else { usize::MAX }))
    }

    fn sort_key(&mut self, sort: &pb::SortBy, distinct: bool) -> Result<SortKey, Unsupported> {
        if sort.sortby_dir == pb::SortByDir::SortbyUsing as i32 {
            return Err(Unsupported::new("ORDER BY ... USING", "use ASC or DESC"));
        }
        let descending = sort.sortby_dir == pb::SortByDir::SortbyDesc as i32;
        let nulls_first = match sort.sortby_nulls {
            n if n == pb::SortByNulls::SortbyNullsFirst as i32 => true,
            n if n == pb::SortByNulls::SortbyNullsLast as i32 => false,
            _ => descending,
        };
        let node = sort.node.as_deref().ok_or_else(|| Unsupported::new("an empty ORDER BY item", ONE_SHARD))?;
        let mut collate_c = exprs::collate_c(node);
        // Only a byte-ordered COLLATE is looked through: any other one
        // stays part of the key's expression, so that the key gets a
        // column of its own whose collation the executor asks the shards.
        let inner = match &node.node {
            Some(N::CollateClause(c)) if collate_c => c.arg.as_deref().unwrap_or(node),
            _ => node,
        };
        // A bare name is an output name first; anything else, even `name
        // COLLATE "C"`, is an expression of the input columns only (as
        // PostgreSQL resolves ORDER BY items).
        let bare = exprs::bare_name(node);
        let column = if let Some(pos) = exprs::position(node) {
            let col = self.position(pos, "ORDER BY")?;
            if let Col::Visible(i) = col {
                collate_c |= self.targets.get(i).is_some_and(|t| t.collate_c);
            }
            col
        } else if let Some(i) = bare.and_then(|name| self.named(name)) {
            collate_c |= self.targets[i].collate_c;
            Col::Visible(i)
        } else if let Some(i) = bare.and_then(|name| self.named_after_star(name)) {
            // An output column after `*`: its position is unknown, so its
            // expression is repeated as a hidden column.
            collate_c |= self.targets[i].collate_c;
            let val = self.targets[i].val.clone().expect("not a star");
            if distinct {
                return Err(Unsupported::new("SELECT DISTINCT *, ... ORDER BY a later column", "list the columns"));
            }
            self.hidden_col(val, Role::Group)?
        } else if self.grouped {
            let (col, c) = self.value_col(node)?;
            collate_c |= c;
            col
        } else {
            let key = exprs::text(inner)?;
            let inner_key = exprs::text(node)?;
            match self.visible_with(&key, false).or_else(|| self.visible_with(&inner_key, false)) {
                Some(i) => {
                    collate_c |= self.targets[i].collate_c;
                    Col::Visible(i)
                }
                None if distinct => {
                    return Err(Unsupported::new(
                        "SELECT DISTINCT with ORDER BY expressions not in the select list",
                        "add the ORDER BY expressions to the select list",
                    ))
                }
                None => self.hidden_col(node.clone(), Role::Group)?,
            }
        };
        Ok(SortKey { column, descending, nulls_first, collate_c })
    }

    /// An output column after the first `*` named `name`.
    fn named_after_star(&self, name: &str) -> Option<usize> {
        let start = self.star_at?;
        (start..self.targets.len()).find(|&i| self.targets[i].name.as_deref() == Some(name))
    }

    /// The select-list item an ORDER BY name means (output names first, as
    /// PostgreSQL resolves them), when its position is known.
    fn named(&self, name: &str) -> Option<usize> {
        let end = self.star_at.unwrap_or(self.targets.len());
        (0..end).find(|&i| self.targets[i].name.as_deref() == Some(name))
    }
}

/// A copy of an aggregate call under another name (`avg(x)` -> `sum(x)`).
fn renamed(call: &pb::Node, name: &str) -> pb::Node {
    let mut call = call.clone();
    if let Some(N::FuncCall(f)) = &mut call.node {
        f.funcname = vec![pb::Node { node: Some(N::String(pb::String { sval: name.to_string() })) }];
    }
    call
}
