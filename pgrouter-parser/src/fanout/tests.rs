//! Planner: SQL in, shard SQL and merge spec out; and every refusal.

use super::*;

fn plan(sql: &str) -> ReadPlan {
    plan_read(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn asc(column: Col) -> SortKey {
    SortKey { column, descending: false, nulls_first: false, collate_c: false }
}

#[test]
fn plain_union_keeps_the_statement() {
    let p = plan("SELECT id, name FROM orders WHERE total > $1");
    assert_eq!(p.shard_sql, "SELECT id, name FROM orders WHERE total > $1");
    assert_eq!(p.merge, MergeSpec { visible: Some(2), ..MergeSpec::default() });
}

#[test]
fn order_by_outside_the_select_list_becomes_hidden() {
    let p = plan("SELECT name FROM orders ORDER BY created_at DESC, id");
    assert_eq!(p.shard_sql, "SELECT name, created_at AS pgrouter_hidden_1, id AS pgrouter_hidden_2 FROM orders ORDER BY created_at DESC, id");
    assert_eq!(p.merge.hidden, 2);
    assert_eq!(
        p.merge.order_by,
        [
            SortKey { column: Col::Hidden(0), descending: true, nulls_first: true, collate_c: false },
            asc(Col::Hidden(1))
        ]
    );
}

#[test]
fn order_by_output_name_alias_position_or_same_expression() {
    for sql in [
        "SELECT o.id, total FROM orders o ORDER BY total",
        "SELECT id, amount AS total FROM orders ORDER BY total",
        "SELECT id, total FROM orders ORDER BY 2",
        "SELECT id, lower(name) FROM orders ORDER BY lower(name)",
    ] {
        let p = plan(sql);
        assert_eq!(p.merge.hidden, 0, "{sql}");
        assert_eq!(p.merge.order_by, [asc(Col::Visible(1))], "{sql}");
    }
}

#[test]
fn nulls_and_collation_are_recorded() {
    let p = plan("SELECT name FROM t ORDER BY name COLLATE \"C\" DESC NULLS LAST, x ASC NULLS FIRST");
    assert_eq!(
        p.merge.order_by[0],
        SortKey { column: Col::Visible(0), descending: true, nulls_first: false, collate_c: true }
    );
    assert_eq!(
        p.merge.order_by[1],
        SortKey { column: Col::Hidden(0), descending: false, nulls_first: true, collate_c: false }
    );
    let p = plan("SELECT name COLLATE \"C\" AS n FROM t ORDER BY n");
    assert!(p.merge.order_by[0].collate_c);
    for c in ["POSIX", "C.utf8", "ucs_basic", "pg_catalog.\"C\""] {
        let c = if c.contains('.') && c.starts_with("pg") { c.to_string() } else { format!("\"{c}\"") };
        assert!(plan(&format!("SELECT name FROM t ORDER BY name COLLATE {c}")).merge.order_by[0].collate_c, "{c}");
    }
    let p = plan("SELECT name FROM t ORDER BY name COLLATE \"de_DE\"");
    assert!(!p.merge.order_by[0].collate_c);
}

#[test]
fn select_star_appends_hidden_columns_after_the_star() {
    let p = plan("SELECT * FROM orders ORDER BY id LIMIT 10 OFFSET 5");
    assert_eq!(p.shard_sql, "SELECT *, id AS pgrouter_hidden_1 FROM orders ORDER BY id LIMIT 15");
    assert_eq!((p.merge.visible, p.merge.hidden), (None, 1));
    assert_eq!((p.merge.limit, p.merge.offset), (Some(Count::Const(10)), Some(Count::Const(5))));
    assert_eq!(p.merge.order_by, [asc(Col::Hidden(0))]);
    let p = plan("SELECT *, total * 2 AS double FROM orders ORDER BY double DESC");
    assert_eq!(
        p.shard_sql,
        "SELECT *, total * 2 AS double, total * 2 AS pgrouter_hidden_1 FROM orders ORDER BY double DESC"
    );
    assert_eq!(p.merge.order_by[0].column, Col::Hidden(0));
    let p = plan("SELECT id, (f(x)).* FROM orders ORDER BY id");
    assert_eq!((p.merge.visible, p.merge.order_by[0].column), (None, Col::Visible(0)));
    let p = plan("SELECT id, * FROM orders ORDER BY 1");
    assert_eq!(p.merge.order_by, [asc(Col::Visible(0))]);
}

#[test]
fn limit_and_offset_push_down_as_their_sum() {
    let p = plan("SELECT id FROM t ORDER BY id LIMIT $1 OFFSET $2");
    assert_eq!(p.shard_sql, "SELECT id FROM t ORDER BY id LIMIT $1::int8 + $2::int8");
    assert_eq!((p.merge.limit, p.merge.offset), (Some(Count::Param(1)), Some(Count::Param(2))));
    assert_eq!(plan("SELECT id FROM t LIMIT 3 OFFSET $1").shard_sql, "SELECT id FROM t LIMIT 3 + $1::int8");
    assert_eq!(plan("SELECT id FROM t OFFSET $1").shard_sql, "SELECT id FROM t OFFSET 0 * $1::int8");
    assert_eq!(plan("SELECT id FROM t OFFSET 7").shard_sql, "SELECT id FROM t");
    let p = plan("SELECT id FROM t FETCH FIRST 3 ROWS ONLY");
    assert_eq!((p.shard_sql.as_str(), p.merge.limit), ("SELECT id FROM t LIMIT 3", Some(Count::Const(3))));
    assert_eq!(plan("SELECT id FROM t LIMIT ALL").merge.limit, None);
    assert_eq!(plan("SELECT id FROM t LIMIT NULL").merge.limit, None);
    assert_eq!(plan("SELECT id FROM t LIMIT 10000000000").merge.limit, Some(Count::Const(10_000_000_000)));
    // A negative value: the shards raise PostgreSQL's own error.
    assert_eq!(plan("SELECT id FROM t LIMIT 5 OFFSET -1").shard_sql, "SELECT id FROM t LIMIT 5 OFFSET -1");
}

#[test]
fn aggregates_without_group_by() {
    let p = plan("SELECT count(*), count(x), sum(x), min(x), max(x), avg(x), bool_and(b), every(b), bool_or(b) FROM t");
    assert_eq!(
        p.shard_sql,
        "SELECT count(*), count(x), sum(x), min(x), max(x), avg(x), bool_and(b), every(b), bool_or(b), \
         sum(x) AS pgrouter_hidden_1, count(x) AS pgrouter_hidden_2 FROM t"
    );
    let a = p.merge.aggregate.unwrap();
    use Agg::*;
    let want = [
        Count,
        Count,
        Sum,
        Min { collate_c: false },
        Max { collate_c: false },
        Avg { sum: Col::Hidden(0), count: Col::Hidden(1) },
        BoolAnd,
        BoolAnd,
        BoolOr,
        Sum,
        Count,
    ];
    assert_eq!(a.columns, want.into_iter().map(Role::Agg).collect::<Vec<_>>());
    assert!(a.group_by.is_empty() && a.having.is_none());
    let p = plan("SELECT min(name COLLATE \"C\") FROM t");
    assert_eq!(p.merge.aggregate.unwrap().columns, [Role::Agg(Agg::Min { collate_c: true })]);
}

#[test]
fn aggregates_with_filter_merge_like_the_plain_ones() {
    let p = plan(
        "SELECT count(*) FILTER (WHERE x > 0), avg(x) FILTER (WHERE b), avg(x) FROM t \
         ORDER BY count(*) FILTER (WHERE x > 0)",
    );
    // Each hidden partial of an avg keeps its own FILTER, and the
    // unfiltered avg gets partials of its own.
    assert_eq!(
        p.shard_sql,
        "SELECT count(*) FILTER (WHERE x > 0), avg(x) FILTER (WHERE b), avg(x), \
         sum(x) FILTER (WHERE b) AS pgrouter_hidden_1, count(x) FILTER (WHERE b) AS pgrouter_hidden_2, \
         sum(x) AS pgrouter_hidden_3, count(x) AS pgrouter_hidden_4 FROM t \
         ORDER BY count(*) FILTER (WHERE x > 0)"
    );
    use Agg::*;
    let columns = p.merge.aggregate.unwrap().columns;
    assert_eq!(columns[0], Role::Agg(Count));
    assert_eq!(columns[1], Role::Agg(Avg { sum: Col::Hidden(0), count: Col::Hidden(1) }));
    assert_eq!(columns[2], Role::Agg(Avg { sum: Col::Hidden(2), count: Col::Hidden(3) }));
    assert_eq!(p.merge.order_by[0].column, Col::Visible(0));
    let p = plan("SELECT g FROM t GROUP BY g HAVING sum(x) FILTER (WHERE x < 5) > 2");
    assert!(p.merge.aggregate.unwrap().having.is_some());
}

#[test]
fn aggregates_that_ignore_duplicates_or_order_keep_distinct_and_order_by() {
    let p = plan(
        "SELECT min(DISTINCT x), max(DISTINCT x ORDER BY x), bool_and(DISTINCT b), \
         bool_or(b ORDER BY x), count(x ORDER BY y) FROM t",
    );
    use Agg::*;
    assert_eq!(
        p.merge.aggregate.unwrap().columns,
        [Min { collate_c: false }, Max { collate_c: false }, BoolAnd, BoolOr, Count].map(Role::Agg)
    );
}

#[test]
fn count_cast_to_an_integer_type_is_still_a_count() {
    let p = plan("SELECT count(*)::int, count(x)::bigint, count(*)::numeric FROM t ORDER BY count(*)::int");
    let a = p.merge.aggregate.unwrap();
    assert_eq!(a.columns, [Role::Agg(Agg::Count), Role::Agg(Agg::Count), Role::Agg(Agg::Count)]);
    assert_eq!(p.merge.order_by[0].column, Col::Visible(0));
    refused("SELECT sum(x)::int FROM t", "aggregate inside an expression");
    refused("SELECT count(*)::numeric(5,1) FROM t", "aggregate inside an expression");
    refused("SELECT max(x)::text FROM t", "aggregate inside an expression");
}

#[test]
fn coalesce_of_a_sum_or_count_with_zero_is_a_sum() {
    let p = plan("SELECT coalesce(sum(x), 0), COALESCE(count(y), 0.00) FROM t");
    assert_eq!(p.merge.aggregate.unwrap().columns, [Role::Agg(Agg::Sum), Role::Agg(Agg::Sum)]);
}

#[test]
fn group_by_keys_visible_or_hidden() {
    let p = plan("SELECT a + 1, count(*) FROM t GROUP BY a");
    assert_eq!(p.shard_sql, "SELECT a + 1, count(*), a AS pgrouter_hidden_1 FROM t GROUP BY a");
    let a = p.merge.aggregate.unwrap();
    assert_eq!(a.group_by, [Col::Hidden(0)]);
    assert_eq!(a.columns, [Role::Group, Role::Agg(Agg::Count), Role::Group]);
    for sql in [
        "SELECT a, count(*) FROM t GROUP BY a",
        "SELECT a, count(*) FROM t GROUP BY 1",
        "SELECT lower(a) AS k, count(*) FROM t GROUP BY k",
        "SELECT lower(a), count(*) FROM t GROUP BY lower(a)",
    ] {
        let p = plan(sql);
        assert_eq!((p.merge.hidden, p.merge.aggregate.unwrap().group_by), (0, vec![Col::Visible(0)]), "{sql}");
    }
}

#[test]
fn grouped_statements_merge_before_limit_and_distinct() {
    let p = plan("SELECT DISTINCT g, count(*) FROM t GROUP BY g ORDER BY count(*) DESC LIMIT 10 OFFSET $1");
    assert_eq!(p.shard_sql, "SELECT g, count(*) FROM t GROUP BY g ORDER BY count(*) DESC OFFSET 0 * $1::int8");
    assert!(p.merge.distinct);
    assert_eq!(p.merge.order_by[0].column, Col::Visible(1));
    assert_eq!((p.merge.limit, p.merge.offset), (Some(Count::Const(10)), Some(Count::Param(1))));
    let p = plan("SELECT g FROM t GROUP BY g ORDER BY avg(x)");
    assert_eq!(
        p.shard_sql,
        "SELECT g, sum(x) AS pgrouter_hidden_1, count(x) AS pgrouter_hidden_2, avg(x) AS pgrouter_hidden_3 FROM t GROUP BY g ORDER BY avg(x)"
    );
    assert_eq!(p.merge.order_by[0].column, Col::Hidden(2));
}

#[test]
fn having_becomes_a_predicate_and_shards_keep_every_group() {
    let p = plan(
        "SELECT g, count(*) FROM t GROUP BY g HAVING count(*) BETWEEN 2 AND $1 OR NOT bool_and(ok) \
         OR max(x) IS NULL OR min(y) IN (1, 2) OR 5 < sum(z)",
    );
    assert!(p.shard_sql.ends_with("HAVING (count(*) BETWEEN 2 AND $1 OR NOT bool_and(ok) OR max(x) IS NULL OR min(y) IN (1, 2) OR 5 < sum(z)) OR true"), "{}", p.shard_sql);
    let h = p.merge.aggregate.unwrap().having.unwrap();
    let cmp = |c, op, v: Operand| Predicate::Compare { left: Operand::Column(c), op, right: v };
    let k = |s: &str| Operand::Const(s.into());
    assert_eq!(
        h,
        Predicate::Or(vec![
            Predicate::And(vec![
                cmp(Col::Visible(1), CmpOp::Ge, k("2")),
                cmp(Col::Visible(1), CmpOp::Le, Operand::Param(1))
            ]),
            Predicate::Not(Box::new(Predicate::Truth(Operand::Column(Col::Hidden(0))))),
            Predicate::IsNull { operand: Operand::Column(Col::Hidden(1)), negated: false },
            Predicate::Or(vec![cmp(Col::Hidden(2), CmpOp::Eq, k("1")), cmp(Col::Hidden(2), CmpOp::Eq, k("2"))]),
            cmp(Col::Hidden(3), CmpOp::Gt, k("5")),
        ])
    );
    let p = plan("SELECT g FROM t GROUP BY g HAVING g <> 'x' AND avg(v) > -1.5");
    let a = p.merge.aggregate.unwrap();
    assert_eq!(
        a.having.unwrap(),
        Predicate::And(vec![
            Predicate::Compare {
                left: Operand::Column(Col::Visible(0)),
                op: CmpOp::Ne,
                right: Operand::Const("x".into())
            },
            Predicate::Compare {
                left: Operand::Column(Col::Hidden(2)),
                op: CmpOp::Gt,
                right: Operand::Const("-1.5".into())
            },
        ])
    );
}

#[test]
fn having_compares_with_any_group_constant_expression_through_a_hidden_column() {
    let p = plan("SELECT g FROM t GROUP BY g HAVING sum(x) > 1 + 1");
    assert_eq!(p.shard_sql, "SELECT g, sum(x) AS pgrouter_hidden_1, 1 + 1 AS pgrouter_hidden_2 FROM t GROUP BY g HAVING sum(x) > 1 + 1 OR true");
    let a = p.merge.aggregate.unwrap();
    assert_eq!(a.columns[2], Role::Group);
    assert_eq!(
        a.having,
        Some(Predicate::Compare {
            left: Operand::Column(Col::Hidden(0)),
            op: CmpOp::Gt,
            right: Operand::Column(Col::Hidden(1))
        })
    );
}

#[test]
fn resolve_params_fills_limit_and_having() {
    let p = plan("SELECT g FROM t GROUP BY g HAVING count(*) > $2 LIMIT $1");
    assert_eq!(p.merge.params(), [1, 2]);
    let r = p.merge.resolve_params(&|n| if n == 1 { Some("4".into()) } else { None }).unwrap();
    assert_eq!(r.limit, Some(Count::Const(4)));
    assert!(r.params().is_empty());
    let err = p.merge.resolve_params(&|_| Some("x".into())).unwrap_err();
    assert_eq!(err.0, "22P02");
}

#[test]
fn distinct_keeps_distinct_on_the_shards() {
    let p = plan("SELECT DISTINCT a, b FROM t ORDER BY b LIMIT 3");
    assert_eq!(p.shard_sql, "SELECT DISTINCT a, b FROM t ORDER BY b LIMIT 3");
    assert!(p.merge.distinct && p.merge.aggregate.is_none());
}

fn refused(sql: &str, what: &str) {
    match plan_read(sql) {
        Ok(p) => panic!("{sql} was planned: {p:?}"),
        Err(e) => {
            assert!(e.0.contains(what), "{sql}: {e}");
            assert!(!e.parts().1.is_empty(), "{sql}: no hint");
        }
    }
}

#[test]
fn refusals_name_the_feature_and_give_a_hint() {
    refused("SELECT row_number() OVER () FROM t", "window");
    refused("SELECT sum(x) OVER (PARTITION BY g) FROM t", "window");
    refused("SELECT x FROM t WINDOW w AS (ORDER BY x)", "window");
    refused("SELECT count(DISTINCT x) FROM t", "count(DISTINCT");
    refused("SELECT sum(DISTINCT x) FROM t", "sum(DISTINCT");
    refused("SELECT avg(DISTINCT x) FROM t", "avg(DISTINCT");
    refused("SELECT sum(x ORDER BY y) FROM t", "sum(ORDER BY");
    refused("SELECT avg(x ORDER BY y) FROM t", "avg(ORDER BY");
    refused("SELECT count(*) FILTER (WHERE a IN (SELECT a FROM u)) FROM t", "subqueries");
    refused("SELECT count(*) FILTER (WHERE x > 0) OVER () FROM t", "window");
    refused("SELECT string_agg(x, ',' ORDER BY x) FROM t", "string_agg");
    refused("SELECT array_agg(x) FROM t", "array_agg");
    refused("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM t", "percentile_cont");
    refused("SELECT stddev(x) FROM t", "stddev");
    refused("SELECT count(*) + 1 FROM t", "aggregate inside an expression");
    refused("SELECT coalesce(sum(x), 1) FROM t", "aggregate inside an expression");
    refused("SELECT coalesce(max(x), 0) FROM t", "aggregate inside an expression");
    refused("SELECT g FROM t GROUP BY g HAVING sum(x) / count(*) > 2", "aggregate inside an expression");
    refused("SELECT DISTINCT ON (a) a, b FROM t", "DISTINCT ON");
    refused("SELECT a FROM t UNION SELECT a FROM u", "UNION");
    refused("SELECT a FROM t FOR UPDATE", "FOR UPDATE");
    refused("SELECT a INTO newt FROM t", "SELECT INTO");
    refused("SELECT (SELECT max(b) FROM u) FROM t", "subqueries");
    refused("SELECT a FROM t WHERE a IN (SELECT a FROM u)", "subqueries");
    refused("SELECT * FROM (SELECT a FROM t) s", "subqueries");
    refused("SELECT * FROM t WHERE (a, b) IN (VALUES (1, 2))", "subqueries");
    refused("WITH c AS (SELECT a FROM t) SELECT * FROM c", "WITH");
    refused("SELECT g, count(*) FROM t GROUP BY ROLLUP (g)", "GROUPING SETS");
    refused("SELECT g, count(*) FROM t GROUP BY GROUPING SETS ((g), ())", "GROUPING SETS");
    refused("SELECT a FROM t ORDER BY a FETCH FIRST 3 ROWS WITH TIES", "WITH TIES");
    refused("SELECT a FROM t ORDER BY a USING >", "USING");
    refused("SELECT a FROM t LIMIT 2 + 3", "LIMIT with an expression");
    refused("SELECT DISTINCT a FROM t ORDER BY b", "DISTINCT");
    refused("SELECT DISTINCT g FROM t GROUP BY g, h ORDER BY h", "DISTINCT");
    refused("SELECT *, count(*) FROM t GROUP BY id", "SELECT *");
    refused("SELECT * FROM t ORDER BY 2", "position after *");
    refused("SELECT g FROM t GROUP BY g HAVING count(*) ~ 'x'", "operator ~");
    refused("INSERT INTO t VALUES (1)", "other than SELECT");
    refused("SELECT 1; SELECT 2", "several statements");
    refused("VALUES (1), (2)", "VALUES");
    refused("SELEC 1", "parse");
}

#[test]
fn quoted_names_and_columns_named_like_keywords_are_not_calls() {
    assert!(plan("SELECT \"count\", over FROM t ORDER BY 1").merge.aggregate.is_none());
    let p = plan("SELECT pg_catalog.count(*) FROM t");
    assert_eq!(p.merge.aggregate.unwrap().columns, [Role::Agg(Agg::Count)]);
    // A function of another schema named like an aggregate is a plain call,
    // listed for the executor's check against pg_aggregate.
    let p = plan("SELECT myschema.max(a), \"MyAgg\"(b), lower(c) FROM t WHERE f(x) > 0 ORDER BY g(y)");
    assert!(p.merge.aggregate.is_none());
    assert_eq!(p.functions, ["max", "MyAgg", "lower", "f", "g"]);
    assert!(plan("SELECT count(*), coalesce(sum(x), 0) FROM t").functions.is_empty());
}

#[test]
fn group_by_an_output_name_asks_whether_it_is_an_input_column() {
    let sql = "SELECT k % 2 AS k, count(*) FROM w JOIN s.\"T\" t USING (id) GROUP BY k";
    let p = plan(sql);
    assert_eq!(p.merge.aggregate.as_ref().unwrap().group_by, [Col::Visible(0)]);
    let probe = p.input_probe.expect("a probe");
    assert!(probe.contains("to_regclass('\"w\"'), pg_catalog.to_regclass('\"s\".\"T\"')"), "{probe}");
    assert!(probe.contains("attname IN ('k')"), "{probe}");
    // An input column: grouped by it, as PostgreSQL does.
    let p = plan_read_knowing(sql, &["k".to_string()]).unwrap();
    assert_eq!(p.input_probe, None);
    assert_eq!(p.merge.aggregate.as_ref().unwrap().group_by, [Col::Hidden(0)]);
    assert!(p.shard_sql.contains("k AS pgrouter_hidden_1"), "{}", p.shard_sql);
    // No such input column: the output column.
    let p = plan_read_knowing(sql, &[]).unwrap();
    assert_eq!(p.merge.aggregate.as_ref().unwrap().group_by, [Col::Visible(0)]);
    // Nothing to ask: the name is the column itself, a position, or no FROM.
    for sql in
        ["SELECT k, count(*) FROM w GROUP BY k", "SELECT k % 2 AS k FROM w GROUP BY 1", "SELECT 1 AS k GROUP BY k"]
    {
        assert_eq!(plan(sql).input_probe, None, "{sql}");
    }
    // Column aliases or functions in FROM: the catalog cannot tell.
    refused("SELECT a % 2 AS k, count(*) FROM w AS x(k, a) GROUP BY k", "may also be an input column");
    refused("SELECT k % 2 AS k, count(*) FROM generate_series(1, 3) k GROUP BY k", "may also be an input column");
}

#[test]
fn order_by_an_expression_of_a_name_sees_input_columns_only() {
    let p = plan("SELECT k, id AS v FROM w ORDER BY v COLLATE \"C\"");
    assert_eq!(p.merge.order_by[0].column, Col::Hidden(0));
    assert!(p.merge.order_by[0].collate_c);
    let p = plan("SELECT k, v FROM w ORDER BY v COLLATE \"C\"");
    assert_eq!(p.merge.order_by[0].column, Col::Visible(1));
    let p = plan("SELECT upper(v) AS v, count(*) FROM w GROUP BY upper(v) ORDER BY upper(v) COLLATE \"C\"");
    assert_eq!(p.merge.order_by[0].column, Col::Visible(0));
}
