//! Facts about one expression of a SELECT that the planner needs: its
//! canonical text (two spellings of one expression compare equal), whether
//! an aggregate or a window call hides somewhere inside it, and the
//! aggregate a top-level call is.
//!
//! "Somewhere inside" is decided on the expression's deparsed text with
//! PostgreSQL's own scanner: the text contains every field of every node,
//! so no node type can be missed, and an identifier followed by `(` is a
//! function call whatever node holds it.

use pg_query::protobuf::{self as pb, node::Node as N, Token};

use super::Unsupported;

/// Aggregates the merger combines.
const MERGEABLE: &[&str] = &["count", "sum", "min", "max", "avg", "bool_and", "bool_or", "every"];

/// PostgreSQL's other built-in aggregates (and GROUPING): refused by name.
const OTHER_AGGREGATES: &[&str] = &[
    "array_agg",
    "string_agg",
    "json_agg",
    "jsonb_agg",
    "json_agg_strict",
    "jsonb_agg_strict",
    "json_object_agg",
    "jsonb_object_agg",
    "json_object_agg_strict",
    "jsonb_object_agg_strict",
    "json_object_agg_unique",
    "jsonb_object_agg_unique",
    "json_object_agg_unique_strict",
    "jsonb_object_agg_unique_strict",
    "json_arrayagg",
    "json_objectagg",
    "xmlagg",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "bit_and",
    "bit_or",
    "bit_xor",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "any_value",
    "range_agg",
    "range_intersect_agg",
    "grouping",
];

/// A mergeable aggregate function, as written at the top of an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AggFn {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    BoolAnd,
    BoolOr,
}

/// The canonical text of an expression: `SELECT <expr>` deparsed, without
/// the `SELECT `. Locations and spelling differences vanish.
pub(crate) fn text(node: &pb::Node) -> Result<String, Unsupported> {
    let target = pb::ResTarget { val: Some(Box::new(node.clone())), ..Default::default() };
    let select = pb::SelectStmt {
        target_list: vec![pb::Node { node: Some(N::ResTarget(Box::new(target))) }],
        op: pb::SetOperation::SetopNone as i32,
        limit_option: pb::LimitOption::Default as i32,
        ..Default::default()
    };
    let stmt = pb::Node { node: Some(N::SelectStmt(Box::new(select))) };
    let tree = pb::ParseResult {
        version: 0,
        stmts: vec![pb::RawStmt { stmt: Some(Box::new(stmt)), stmt_location: 0, stmt_len: 0 }],
    };
    let deparsed = std::panic::catch_unwind(|| pg_query::deparse(&tree, Default::default()))
        .map_err(|_| Unsupported::new("an expression the router cannot read back", "simplify the select list"))?
        .map_err(|e| Unsupported::new(&format!("an expression the router cannot read back ({e})"), "simplify it"))?;
    Ok(deparsed.strip_prefix("SELECT ").unwrap_or(&deparsed).to_string())
}

/// What the scanner finds in an expression's text.
#[derive(Debug, Default)]
pub(crate) struct Inside {
    /// Names of aggregate calls (mergeable or not), lower case.
    pub aggregates: Vec<String>,
    /// An `OVER` clause: a window function.
    pub window: bool,
    /// How many `SELECT`s and `VALUES`: more than the statement's own
    /// SELECT are subqueries.
    pub selects: usize,
    /// Names of the other calls (identifiers followed by `(`).
    pub calls: Vec<String>,
}

/// Scans `sql` (an expression's or a whole statement's text).
pub(crate) fn scan(sql: &str) -> Inside {
    let mut inside = Inside::default();
    let Ok(scanned) = pg_query::scan(sql) else {
        return inside;
    };
    let tokens = &scanned.tokens;
    for (i, t) in tokens.iter().enumerate() {
        let next = tokens.get(i + 1).map(|n| n.token);
        let word = &sql[t.start as usize..t.end as usize];
        match t.token {
            // `(VALUES ...)` is a query too.
            x if x == Token::Select as i32 || x == Token::Values as i32 => inside.selects += 1,
            // `f(...) OVER (...)` / `f(...) OVER w`; `(x) over` alone is an alias.
            x if x == Token::Over as i32
                && i > 0
                && tokens[i - 1].token == Token::Ascii41 as i32
                && matches!(next, Some(n) if n == Token::Ascii40 as i32 || n == Token::Ident as i32) =>
            {
                inside.window = true;
            }
            _ if next == Some(Token::Ascii40 as i32) => {
                let name = match word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
                    Some(quoted) => quoted.to_string(),
                    None => word.to_ascii_lowercase(),
                };
                let qualified_elsewhere = i > 0
                    && tokens[i - 1].token == Token::Ascii46 as i32
                    && !(i > 1
                        && sql[tokens[i - 2].start as usize..tokens[i - 2].end as usize]
                            .eq_ignore_ascii_case("pg_catalog"));
                if !qualified_elsewhere
                    && (MERGEABLE.contains(&name.as_str()) || OTHER_AGGREGATES.contains(&name.as_str()))
                {
                    inside.aggregates.push(name);
                } else if t.token == Token::Ident as i32 && !inside.calls.contains(&name) {
                    inside.calls.push(name);
                }
            }
            _ => {}
        }
    }
    inside
}

/// The last part of a qualified name (`pg_catalog.count` -> `count`), if
/// any other part is `pg_catalog`.
fn function_name(names: &[pb::Node]) -> Option<String> {
    let parts: Vec<&str> = names
        .iter()
        .filter_map(|n| match &n.node {
            Some(N::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect();
    match parts.as_slice() {
        [name] => Some(name.to_string()),
        ["pg_catalog", name] => Some(name.to_string()),
        _ => None,
    }
}

/// The mergeable aggregate a top-level call is, `None` when it is no
/// aggregate; refuses aggregates the merger cannot combine exactly.
pub(crate) fn aggregate(call: &pb::FuncCall) -> Result<Option<AggFn>, Unsupported> {
    let Some(name) = function_name(&call.funcname) else {
        return Ok(None);
    };
    let agg = match name.as_str() {
        "count" => AggFn::Count,
        "sum" => AggFn::Sum,
        "min" => AggFn::Min,
        "max" => AggFn::Max,
        "avg" => AggFn::Avg,
        "bool_and" | "every" => AggFn::BoolAnd,
        "bool_or" => AggFn::BoolOr,
        other if OTHER_AGGREGATES.contains(&other) => {
            return Err(Unsupported::new(
                &format!("aggregate function {other}()"),
                "add the shard key to the WHERE clause so that one shard answers",
            ))
        }
        _ => return Ok(None),
    };
    if call.over.is_some() {
        return Err(window());
    }
    // FILTER (WHERE ...) is kept: each shard applies it to its own rows
    // as it applies the statement's WHERE, and the partials of the rows
    // it keeps merge like any others (avg's hidden sum and count carry it
    // too, `renamed`). A subquery in it is refused with every other one.
    // min, max, bool_and and bool_or give the same over distinct values
    // and in any order, and a count does not depend on the order; a sum
    // in a given order (floats round) cannot be kept across shards.
    let any_order = matches!(agg, AggFn::Min | AggFn::Max | AggFn::BoolAnd | AggFn::BoolOr);
    let order_matters = !(any_order || agg == AggFn::Count);
    let what = if call.agg_distinct && !any_order {
        Some("DISTINCT")
    } else if !call.agg_order.is_empty() && order_matters {
        Some("ORDER BY")
    } else if call.agg_within_group {
        Some("WITHIN GROUP")
    } else {
        None
    };
    if let Some(what) = what {
        return Err(Unsupported::new(
            &format!("{name}({what} ...)"),
            "add the shard key to the WHERE clause so that one shard answers",
        ));
    }
    if agg != AggFn::Count && (call.agg_star || call.args.len() != 1) {
        return Ok(None);
    }
    Ok(Some(agg))
}

/// The mergeable aggregate at the top of an expression: a call;
/// `count(...)` cast to an integer type or numeric (ORMs write
/// `count(*)::int`; partial counts are exact, so the cast of the total is);
/// `coalesce(sum(x), 0)` / `coalesce(count(x), 0)`, a sum of the partials
/// (a shard without rows adds its 0, and no rows at all give 0).
pub(crate) fn top_aggregate(node: &pb::Node) -> Result<Option<AggFn>, Unsupported> {
    match &node.node {
        Some(N::CoalesceExpr(c)) if c.args.len() == 2 && is_zero(&c.args[1]) => match &c.args[0].node {
            Some(N::FuncCall(f)) => {
                Ok(aggregate(f)?.filter(|a| matches!(a, AggFn::Sum | AggFn::Count)).map(|_| AggFn::Sum))
            }
            _ => Ok(None),
        },
        Some(N::FuncCall(f)) => aggregate(f),
        Some(N::TypeCast(c)) => {
            let Some(pb::Node { node: Some(N::FuncCall(f)) }) = c.arg.as_deref() else { return Ok(None) };
            let Some(t) = &c.type_name else { return Ok(None) };
            let name = match t.names.last().and_then(|n| n.node.as_ref()) {
                Some(N::String(s)) => s.sval.as_str(),
                _ => "",
            };
            let plain = t.typmods.is_empty() && t.array_bounds.is_empty() && !t.setof;
            match aggregate(f)? {
                Some(AggFn::Count) if plain && matches!(name, "int2" | "int4" | "int8" | "numeric") => {
                    Ok(Some(AggFn::Count))
                }
                _ => Ok(None),
            }
        }
        _ => Ok(None),
    }
}

/// The constant 0 (`0`, `0.0`).
fn is_zero(node: &pb::Node) -> bool {
    match &node.node {
        Some(N::AConst(c)) => match &c.val {
            Some(pb::a_const::Val::Ival(i)) => i.ival == 0,
            Some(pb::a_const::Val::Fval(f)) => {
                f.fval.trim_end_matches('0').trim_end_matches('.').chars().all(|c| c == '0')
            }
            _ => false,
        },
        _ => false,
    }
}

pub(crate) fn window() -> Unsupported {
    Unsupported::new("window functions", "add the shard key to the WHERE clause so that one shard answers")
}

/// The simple output name PostgreSQL gives a select-list item without an
/// alias, as far as ORDER BY matching needs it.
pub(crate) fn output_name(target: &pb::ResTarget) -> Option<String> {
    if !target.name.is_empty() {
        return Some(target.name.clone());
    }
    match target.val.as_ref()?.node.as_ref()? {
        N::ColumnRef(c) => match &c.fields.last()?.node {
            Some(N::String(s)) => Some(s.sval.clone()),
            _ => None,
        },
        N::FuncCall(f) => match &f.funcname.last()?.node {
            Some(N::String(s)) => Some(s.sval.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// A bare column name (`ORDER BY total`), unqualified.
pub(crate) fn bare_name(node: &pb::Node) -> Option<&str> {
    match node.node.as_ref()? {
        N::ColumnRef(c) if c.fields.len() == 1 => match &c.fields[0].node {
            Some(N::String(s)) => Some(&s.sval),
            _ => None,
        },
        _ => None,
    }
}

/// An integer constant (`ORDER BY 2`).
pub(crate) fn position(node: &pb::Node) -> Option<i32> {
    match node.node.as_ref()? {
        N::AConst(c) => match &c.val {
            Some(pb::a_const::Val::Ival(i)) => Some(i.ival),
            _ => None,
        },
        _ => None,
    }
}

/// Collations that order UTF-8 text by its bytes (code point order).
const BYTE_ORDERED: &[&str] = &["C", "POSIX", "C.utf8", "C.UTF-8", "ucs_basic"];

/// `expr COLLATE "C"` (or another of [`BYTE_ORDERED`]): text orders by bytes.
pub(crate) fn collate_c(node: &pb::Node) -> bool {
    match node.node.as_ref() {
        Some(N::CollateClause(c)) => {
            let names: Vec<&str> = c
                .collname
                .iter()
                .filter_map(|n| match &n.node {
                    Some(N::String(s)) => Some(s.sval.as_str()),
                    _ => None,
                })
                .collect();
            match names.as_slice() {
                [name] | ["pg_catalog", name] => BYTE_ORDERED.contains(name),
                _ => false,
            }
        }
        _ => false,
    }
}

/// A new node from SQL text: the first select-list item of `SELECT <expr>`.
pub(crate) fn parse_expr(expr: &str) -> pb::Node {
    let parsed = pg_query::parse(&format!("SELECT {expr}"), 0).expect("the router's own expression parses");
    let Some(N::SelectStmt(s)) = parsed.protobuf.stmts[0].stmt.as_ref().and_then(|s| s.node.clone()) else {
        unreachable!("SELECT parses as a SelectStmt")
    };
    let Some(N::ResTarget(t)) = s.target_list[0].node.clone() else { unreachable!("a select list item") };
    *t.val.expect("an expression")
}
