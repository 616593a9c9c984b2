//! Whether a SELECT read on several shards is answered exactly by the
//! rows of every shard put together (a plain union): no ORDER BY, LIMIT,
//! OFFSET, GROUP BY, HAVING, DISTINCT, aggregates, window functions, set
//! operations, CTEs, subqueries or locking. Anything else needs a merge the
//! plain union does not do, and is refused (0A000) by the caller with the
//! message returned here.

use pg_query::protobuf::SetOperation;
use pg_query::{NodeEnum, NodeRef};

/// Aggregate functions of PostgreSQL's catalog most often used; any of
/// these (or any function with OVER) makes the statement more than a union.
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "bool_and",
    "bool_or",
    "every",
    "array_agg",
    "string_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "bit_and",
    "bit_or",
    "bit_xor",
    "xmlagg",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_count",
    "range_agg",
    "range_intersect_agg",
];

/// `Ok(())` when `sql` (one SELECT) is a plain union across shards; else
/// what makes it more, for the 0A000 message.
pub fn plain_union(sql: &str) -> Result<(), String> {
    let parsed = std::panic::catch_unwind(|| pg_query::parse(sql, 0))
        .map_err(|_| "the statement could not be analysed".to_string())?
        .map_err(|e| e.to_string())?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return Err("several statements".into());
    };
    let Some(NodeEnum::SelectStmt(s)) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
        return Err("not a SELECT".into());
    };
    let what = if !s.sort_clause.is_empty() {
        Some("ORDER BY")
    } else if s.limit_count.is_some() || s.limit_offset.is_some() {
        Some("LIMIT/OFFSET")
    } else if !s.group_clause.is_empty() || s.having_clause.is_some() {
        Some("GROUP BY/HAVING")
    } else if !s.distinct_clause.is_empty() {
        Some("DISTINCT")
    } else if s.op() != SetOperation::SetopNone {
        Some("UNION/INTERSECT/EXCEPT")
    } else if s.with_clause.is_some() {
        Some("WITH")
    } else if !s.locking_clause.is_empty() {
        Some("FOR UPDATE/SHARE")
    } else if s.into_clause.is_some() {
        Some("SELECT INTO")
    } else {
        None
    };
    if let Some(what) = what {
        return Err(what.into());
    }
    for (node, _, _, _) in parsed.protobuf.nodes() {
        match node {
            NodeRef::FuncCall(f) => {
                let name = f
                    .funcname
                    .last()
                    .and_then(|n| match &n.node {
                        Some(NodeEnum::String(s)) => Some(s.sval.to_ascii_lowercase()),
                        _ => None,
                    })
                    .unwrap_or_default();
                if f.over.is_some() {
                    return Err("window functions".into());
                }
                if AGGREGATES.contains(&name.as_str()) || f.agg_star || f.agg_distinct {
                    return Err(format!("aggregate {name}()"));
                }
            }
            NodeRef::SubLink(_) => return Err("subqueries".into()),
            NodeRef::RangeSubselect(_) => return Err("subqueries in FROM".into()),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::plain_union;

    #[test]
    fn plain_reads_are_unions_and_the_rest_is_named() {
        assert!(plain_union("SELECT a, b FROM t WHERE c = 1").is_ok());
        assert!(plain_union("SELECT t.*, lower(x) FROM t JOIN r USING (k)").is_ok());
        for (sql, what) in [
            ("SELECT a FROM t ORDER BY a", "ORDER BY"),
            ("SELECT a FROM t LIMIT 3", "LIMIT"),
            ("SELECT count(*) FROM t", "count"),
            ("SELECT a, sum(b) FROM t GROUP BY a", "GROUP BY"),
            ("SELECT DISTINCT a FROM t", "DISTINCT"),
            ("SELECT a FROM t UNION SELECT a FROM u", "UNION"),
            ("SELECT rank() OVER (ORDER BY a) FROM t", "window"),
            ("SELECT a FROM t WHERE b IN (SELECT b FROM u)", "subqueries"),
            ("SELECT a FROM t FOR UPDATE", "FOR UPDATE"),
            ("WITH x AS (SELECT 1) SELECT * FROM x", "WITH"),
        ] {
            let err = plain_union(sql).unwrap_err();
            assert!(err.contains(what), "{sql}: {err}");
        }
    }
}
