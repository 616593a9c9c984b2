//! LIMIT and OFFSET: read as constants or parameters for the merger, and
//! pushed down to the shards as `LIMIT limit + offset` (no OFFSET: the
//! merger skips the first `offset` merged rows itself).
//!
//! The shard SQL keeps every parameter the original had, so the shards
//! infer the same parameter types from the same Bind: where a parameter
//! is no longer needed on the shards it stays as `0 * $n::int8`.

use pg_query::protobuf::{self as pb, a_const::Val, node::Node as N};

use super::exprs;
use super::spec::Count;
use super::{Unsupported, ONE_SHARD};

/// Reads LIMIT/OFFSET of `s` and rewrites them for the shards. A grouped
/// statement's shards return all their groups (the limit applies to merged groups).
pub(super) fn plan(s: &mut pb::SelectStmt, grouped: bool) -> Result<(Option<Count>, Option<Count>), Unsupported> {
    let limit = count(s.limit_count.as_deref(), "LIMIT")?;
    let offset = count(s.limit_offset.as_deref(), "OFFSET")?;
    let negative = [&limit, &offset].iter().any(|c| matches!(c, Some(Count::Const(n)) if *n < 0));
    if negative {
        // The shards raise PostgreSQL's own error for it.
        return Ok((limit, offset));
    }
    let params: Vec<usize> = [&limit, &offset]
        .iter()
        .filter_map(|c| match c {
            Some(Count::Param(n)) => Some(*n),
            _ => None,
        })
        .collect();
    let keep_params = |s: &mut pb::SelectStmt| {
        s.limit_count = None;
        s.limit_offset = None;
        if !params.is_empty() {
            let zero: Vec<String> = params.iter().map(|n| format!("0 * ${n}::int8")).collect();
            s.limit_offset = Some(Box::new(exprs::parse_expr(&zero.join(" + "))));
        }
    };
    if grouped {
        keep_params(s);
        return Ok((limit, offset));
    }
    match (&limit, &offset) {
        (_, None) => s.limit_offset = None,
        (None, Some(_)) => keep_params(s),
        (Some(l), Some(o)) => {
            let term = |c: &Count| match c {
                Count::Const(n) => n.to_string(),
                Count::Param(n) => format!("${n}::int8"),
            };
            let sum = match (l, o) {
                (Count::Const(a), Count::Const(b)) => a.checked_add(*b).map(|n| n.to_string()),
                _ => Some(format!("{} + {}", term(l), term(o))),
            };
            match sum {
                Some(sum) => {
                    s.limit_count = Some(Box::new(exprs::parse_expr(&sum)));
                    s.limit_offset = None;
                }
                // Beyond bigint: no limit worth pushing down.
                None => keep_params(s),
            }
        }
    }
    Ok((limit, offset))
}

/// A LIMIT or OFFSET value: `None` when absent, ALL or NULL.
fn count(node: Option<&pb::Node>, clause: &str) -> Result<Option<Count>, Unsupported> {
    let Some(node) = node else { return Ok(None) };
    let refuse = || Unsupported::new(&format!("{clause} with an expression"), "use a constant or a parameter");
    match node.node.as_ref() {
        Some(N::AConst(c)) if c.isnull => Ok(None),
        Some(N::AConst(c)) => match &c.val {
            Some(Val::Ival(i)) => Ok(Some(Count::Const(i.ival.into()))),
            Some(Val::Fval(f)) => f.fval.parse::<i64>().map(|n| Some(Count::Const(n))).map_err(|_| refuse()),
            _ => Err(refuse()),
        },
        Some(N::ParamRef(p)) => Ok(Some(Count::Param(usize::try_from(p.number).map_err(|_| refuse())?))),
        Some(N::TypeCast(c)) => match c.arg.as_deref() {
            Some(arg @ pb::Node { node: Some(N::ParamRef(_)) }) => count(Some(arg), clause),
            _ => Err(refuse()),
        },
        Some(N::AExpr(e)) => {
            // `-5`: a negative constant.
            let minus = matches!(e.name.first().and_then(|n| n.node.as_ref()), Some(N::String(s)) if s.sval == "-");
            match (minus, e.lexpr.as_deref(), e.rexpr.as_deref().and_then(|r| count(Some(r), clause).ok().flatten())) {
                (true, None, Some(Count::Const(n))) => Ok(Some(Count::Const(-n))),
                _ => Err(refuse()),
            }
        }
        _ => Err(Unsupported::new(&format!("{clause} with an expression"), ONE_SHARD)),
    }
}
