//! Aggregates, GROUP BY and HAVING. Expected values marked "PG 15" were
//! computed by PostgreSQL 15 over the same rows unsharded.

use super::tests::*;
use super::types::*;
use super::Merger;
use bytes::BytesMut;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn plain_aggregates_combine_partials() {
    // Rows 1, 2, 5 on shard 0 and 7, NULL on shard 1.
    let sql =
        "SELECT count(*), sum(x), min(x), max(x), avg(x), bool_and(x > 1), bool_or(x > 5) FROM t";
    let sp = spec(sql);
    assert_eq!(sp.hidden, 2);
    let cols = [
        ("count", INT8),
        ("sum", INT8),
        ("min", INT4),
        ("max", INT4),
        ("avg", NUMERIC),
        ("bool_and", BOOL),
        ("bool_or", BOOL),
        ("h1", INT8),
        ("h2", INT8),
    ];
    let s0 = text_shard(
        &cols,
        &[&["3", "8", "1", "5", "2.6666666666666667", "f", "f", "8", "3"]],
    );
    let s1 = text_shard(
        &cols,
        &[&["2", "7", "7", "7", "7.0000000000000000", "t", "t", "7", "1"]],
    );
    let out = run(sp, CTX, &[s0, s1]).unwrap();
    assert_eq!(
        out.columns,
        ["count", "sum", "min", "max", "avg", "bool_and", "bool_or"]
    );
    // PG 15: 5|15|1|7|3.7500000000000000|f|t
    assert_eq!(
        out.text(),
        [["5", "15", "1", "7", "3.7500000000000000", "f", "t"]]
    );
    assert_eq!(out.tag.as_deref(), Some("SELECT 1"));
}

#[test]
fn aggregates_of_no_rows_are_null_and_count_zero() {
    let sp = spec("SELECT count(x), sum(x), max(x), avg(x), bool_or(b) FROM t");
    let cols = [
        ("count", INT8),
        ("sum", NUMERIC),
        ("max", INT8),
        ("avg", NUMERIC),
        ("bool_or", BOOL),
        ("h1", NUMERIC),
        ("h2", INT8),
    ];
    let empty = || {
        text_shard(
            &cols,
            &[&["0", "NULL", "NULL", "NULL", "NULL", "NULL", "0"]],
        )
    };
    let out = run(sp, CTX, &[empty(), empty()]).unwrap();
    assert_eq!(out.text(), [["0", "NULL", "NULL", "NULL", "NULL"]]);
}

/// avg(x) over shards with (sum, count) partials, as text.
fn avg_text(sum_type: u32, parts: &[(&str, &str)]) -> String {
    let sp = spec("SELECT avg(x) FROM t");
    let cols = [("avg", NUMERIC), ("h1", sum_type), ("h2", INT8)];
    let shards: Vec<_> = parts
        .iter()
        .map(|(s, n)| text_shard(&cols, &[&["0", s, n]]))
        .collect();
    run(sp, CTX, &shards).unwrap().text()[0][0].clone()
}

#[test]
fn avg_reproduces_postgres_division_scale() {
    // PG 15: avg of 1, 2, 2 (ints) = 1.6666666666666667
    assert_eq!(
        avg_text(INT8, &[("3", "2"), ("2", "1")]),
        "1.6666666666666667"
    );
    // PG 15: avg of 1.5, 2.25, 3 = 2.2500000000000000
    assert_eq!(
        avg_text(NUMERIC, &[("3.75", "2"), ("3", "1")]),
        "2.2500000000000000"
    );
    // PG 15: avg of 0.001, 0.002, 0.0005 = 0.00116666666666666667
    assert_eq!(
        avg_text(NUMERIC, &[("0.003", "2"), ("0.0005", "1")]),
        "0.00116666666666666667"
    );
    // PG 15: avg of 123456789012345678901234567890, 1
    assert_eq!(
        avg_text(
            NUMERIC,
            &[("123456789012345678901234567890", "1"), ("1", "1")]
        ),
        "61728394506172839450617283946"
    );
    // PG 15: avg of -1, -2 = -1.5000000000000000; of -1, -1, 0 = -0.66666666666666666667
    assert_eq!(
        avg_text(INT8, &[("-1", "1"), ("-2", "1")]),
        "-1.5000000000000000"
    );
    assert_eq!(
        avg_text(NUMERIC, &[("-2", "2"), ("0", "1")]),
        "-0.66666666666666666667"
    );
    // PG 15: avg of two int8 maxima = 9223372036854775807 (scale 0)
    assert_eq!(
        avg_text(
            NUMERIC,
            &[("9223372036854775807", "1"), ("9223372036854775807", "1")]
        ),
        "9223372036854775807"
    );
    // PG 15: avg of 1e-20, 0 = 0.0000000000000000000050000000000000000000
    assert_eq!(
        avg_text(NUMERIC, &[("0.00000000000000000001", "1"), ("0", "1")]),
        "0.0000000000000000000050000000000000000000"
    );
    // PG 15: 99999999 x3 = 99999999.000000000000; 5000, 1 = 2500.5000000000000000
    assert_eq!(
        avg_text(INT8, &[("199999998", "2"), ("99999999", "1")]),
        "99999999.000000000000"
    );
    assert_eq!(
        avg_text(INT8, &[("5000", "1"), ("1", "1")]),
        "2500.5000000000000000"
    );
    // PG 15: 1.10, 2.205, 3 = 2.1016666666666667; 1e-20, 0, 3.5 = 1.16666666666666666667
    assert_eq!(
        avg_text(NUMERIC, &[("3.305", "2"), ("3", "1")]),
        "2.1016666666666667"
    );
    assert_eq!(
        avg_text(NUMERIC, &[("3.50000000000000000001", "2"), ("0", "1")]),
        "1.16666666666666666667"
    );
    // PG 15: 1 and six 2s = 1.8571428571428571
    assert_eq!(
        avg_text(NUMERIC, &[("7", "4"), ("6", "3")]),
        "1.8571428571428571"
    );
    // PG 15: 0, 0 = 0.00000000000000000000; 12345678.5, 1 = 6172839.750000000000;
    // -0.00005, 0.00002, 0 = -0.000010000000000000000000
    assert_eq!(
        avg_text(INT8, &[("0", "1"), ("0", "1")]),
        "0.00000000000000000000"
    );
    assert_eq!(
        avg_text(NUMERIC, &[("0.000", "1"), ("0", "1")]),
        "0.00000000000000000000"
    );
    assert_eq!(
        avg_text(NUMERIC, &[("12345678.5", "1"), ("1", "1")]),
        "6172839.750000000000"
    );
    assert_eq!(
        avg_text(NUMERIC, &[("-0.00005", "1"), ("0.00002", "2")]),
        "-0.000010000000000000000000"
    );
    // NaN anywhere is NaN; a shard without rows does not count.
    assert_eq!(avg_text(NUMERIC, &[("NaN", "1"), ("1", "1")]), "NaN");
    assert_eq!(
        avg_text(NUMERIC, &[("NULL", "0"), ("4", "2")]),
        "2.0000000000000000"
    );
}

#[test]
fn avg_and_sum_in_binary_format() {
    let sp = spec("SELECT avg(x), sum(x) FROM t");
    let d = desc(&[
        ("avg", NUMERIC, true),
        ("sum", NUMERIC, true),
        ("h1", NUMERIC, true),
        ("h2", INT8, true),
    ]);
    let num = |s: &str| super::numeric::Numeric::parse_text(s).unwrap().to_binary();
    let part = |sum: &str, n: i64| {
        row(&[
            Some(&num("0")),
            Some(&num(sum)),
            Some(&num(sum)),
            Some(&n.to_be_bytes()),
        ])
    };
    // 1.10 and 2.205 on shard 0, 3 on shard 1.
    let out = run(
        sp,
        CTX,
        &[
            shard(&d, &[part("3.305", 2)], 1),
            shard(&d, &[part("3", 1)], 1),
        ],
    )
    .unwrap();
    // PG 15: numeric_send(avg) = \x0005000000000010000203f81a0a1a0a1a0b
    assert_eq!(
        out.rows[0][0].as_deref(),
        Some(&hex("0005000000000010000203f81a0a1a0a1a0b")[..])
    );
    assert_eq!(out.rows[0][1].as_deref(), Some(&num("6.305")[..]));
}

#[test]
fn avg_of_ints_in_binary_matches_postgres() {
    let sp = spec("SELECT avg(x) FROM t");
    let d = desc(&[
        ("avg", NUMERIC, true),
        ("h1", INT8, true),
        ("h2", INT8, true),
    ]);
    let num0 = super::numeric::Numeric::parse_text("0")
        .unwrap()
        .to_binary();
    let part = |s: i64, n: i64| row(&[Some(&num0), Some(&s.to_be_bytes()), Some(&n.to_be_bytes())]);
    let out = run(
        sp,
        CTX,
        &[shard(&d, &[part(3, 2)], 1), shard(&d, &[part(2, 1)], 1)],
    )
    .unwrap();
    // PG 15: numeric_send(avg of 1, 2, 2) = \x000500000000001000011a0a1a0a1a0a1a0b
    assert_eq!(
        out.rows[0][0].as_deref(),
        Some(&hex("000500000000001000011a0a1a0a1a0a1a0b")[..])
    );
}

#[test]
fn float_sums_and_averages() {
    let sp = spec("SELECT sum(x), avg(x) FROM t");
    // float4 column: 1e6 and 0.5 on shard 0, 123.25 on shard 1.
    let cols = [
        ("sum", FLOAT4),
        ("avg", FLOAT8),
        ("h1", FLOAT4),
        ("h2", INT8),
    ];
    let s0 = text_shard(&cols, &[&["1000000.5", "500000.25", "1000000.5", "2"]]);
    let s1 = text_shard(&cols, &[&["123.25", "123.25", "123.25", "1"]]);
    // PG 15: 1.00012375e+06 | 333374.5833333333
    assert_eq!(
        run(sp.clone(), CTX, &[s0, s1]).unwrap().text(),
        [["1.00012375e+06", "333374.5833333333"]]
    );
    let cols = [
        ("sum", FLOAT8),
        ("avg", FLOAT8),
        ("h1", FLOAT8),
        ("h2", INT8),
    ];
    let s0 = text_shard(&cols, &[&["0.1", "0.1", "0.1", "1"]]);
    let s1 = text_shard(&cols, &[&["0.2", "0.2", "0.2", "1"]]);
    // PG 15: avg 0.15000000000000002, sum 0.30000000000000004
    assert_eq!(
        run(sp, CTX, &[s0, s1]).unwrap().text(),
        [["0.30000000000000004", "0.15000000000000002"]]
    );
}

#[test]
fn sum_of_bigint_partials_overflowing_is_an_error() {
    let sp = spec("SELECT count(*) FROM t");
    let s = || text_shard(&[("count", INT8)], &[&["9223372036854775807"]]);
    let mut m = Merger::new(sp, 2, CTX);
    for (i, msgs) in [s(), s()].iter().enumerate() {
        for (tag, body) in msgs {
            let r = m.feed(i, *tag, body);
            if i == 1 && *tag == b'D' {
                assert_eq!(r.unwrap_err().sqlstate, "22003");
                return;
            }
            r.unwrap();
        }
    }
    panic!("no overflow");
}

#[test]
fn group_by_having_order_limit() {
    let sql = "SELECT g, sum(x), avg(x) FROM t GROUP BY g HAVING count(x) >= 1 AND avg(x) < 10.6 ORDER BY avg(x) DESC";
    let sp = spec(sql);
    // count(x) of HAVING shares avg's hidden count column.
    assert_eq!(sp.hidden, 2);
    let cols = [
        ("g", INT4),
        ("sum", INT8),
        ("avg", NUMERIC),
        ("h1", INT8),
        ("h2", INT8),
    ];
    // Rows (g, x): (1,1) (1,2) (2,5) (2,7) (2,NULL) (3,NULL) (4,10) (4,11) spread over 3 shards.
    let s0 = text_shard(
        &cols,
        &[
            &["1", "1", "1.0000000000000000", "1", "1"],
            &["2", "5", "5.0000000000000000", "5", "1"],
            &["4", "10", "10", "10", "1"],
        ],
    );
    let s1 = text_shard(
        &cols,
        &[
            &["1", "2", "2.0000000000000000", "2", "1"],
            &["2", "7", "7.0000000000000000", "7", "1"],
            &["3", "NULL", "NULL", "NULL", "0"],
            &["4", "11", "11", "11", "1"],
        ],
    );
    let s2 = text_shard(&cols, &[&["2", "NULL", "NULL", "NULL", "0"]]);
    let out = run(sp, CTX, &[s0, s1, s2]).unwrap();
    // PG 15: 4|21|10.5000000000000000, 2|12|6.0000000000000000, 1|3|1.5000000000000000
    assert_eq!(
        out.text(),
        [
            ["4", "21", "10.5000000000000000"],
            ["2", "12", "6.0000000000000000"],
            ["1", "3", "1.5000000000000000"]
        ]
    );
    assert_eq!(out.tag.as_deref(), Some("SELECT 3"));
}

#[test]
fn groups_key_by_value_and_hidden_group_columns() {
    // SELECT count(*) FROM t GROUP BY k: k is hidden; numeric 1.0 = 1.00.
    let sp = spec("SELECT count(*) FROM t GROUP BY k ORDER BY 1");
    let cols = [("count", INT8), ("h1", NUMERIC)];
    let s0 = text_shard(&cols, &[&["2", "1.0"], &["1", "2"]]);
    let s1 = text_shard(&cols, &[&["3", "1.00"], &["5", "NULL"]]);
    let out = run(sp, CTX, &[s0, s1]).unwrap();
    assert_eq!(out.text(), [["1"], ["5"], ["5"]]);
}

#[test]
fn having_with_parameters_and_limit_on_groups() {
    let sp = spec(
        "SELECT g, count(*) FROM t GROUP BY g HAVING count(*) > $1 ORDER BY g LIMIT $2 OFFSET 1",
    );
    let sp = sp
        .resolve_params(&|n| Some(if n == 1 { "1" } else { "5" }.into()))
        .unwrap();
    let cols = [("g", TEXT), ("count", INT8)];
    let s0 = text_shard(&cols, &[&["a", "1"], &["b", "2"], &["c", "1"]]);
    let s1 = text_shard(&cols, &[&["a", "1"], &["c", "5"], &["d", "1"]]);
    let ctx = super::MergeContext {
        text_orders_by_bytes: true,
        ..CTX
    };
    let out = run(sp, ctx, &[s0, s1]).unwrap();
    assert_eq!(out.text(), [["b", "2"], ["c", "6"]]);
}

#[test]
fn min_max_of_text_need_byte_order_and_sum_of_text_is_refused() {
    let cols = [("min", TEXT)];
    let s = || vec![text_shard(&cols, &[&["b"]]), text_shard(&cols, &[&["a"]])];
    assert_eq!(
        run(spec("SELECT min(name) FROM t"), CTX, &s())
            .unwrap_err()
            .sqlstate,
        "0A000"
    );
    let out = run(spec("SELECT min(name COLLATE \"C\") FROM t"), CTX, &s()).unwrap();
    assert_eq!(out.text(), [["a"]]);
    let out = run(
        spec("SELECT max(name) FROM t"),
        super::MergeContext {
            text_orders_by_bytes: true,
            ..CTX
        },
        &s(),
    )
    .unwrap();
    assert_eq!(out.text(), [["b"]]);
    let cols = [("sum", TEXT)];
    let s = vec![text_shard(&cols, &[&["x"]])];
    let err = run(spec("SELECT sum(d) FROM t"), CTX, &s).unwrap_err();
    assert!(
        err.sqlstate == "0A000" && err.message.contains("sum() of type text"),
        "{}",
        err.message
    );
    let cols = [("avg", INTERVAL), ("h1", INTERVAL), ("h2", INT8)];
    let s = vec![text_shard(&cols, &[&["1 day", "1 day", "1"]])];
    let err = run(spec("SELECT avg(d) FROM t"), CTX, &s).unwrap_err();
    assert!(
        err.sqlstate == "0A000" && err.message.contains("avg() of type interval"),
        "{}",
        err.message
    );
    let cols = [("sum", INTERVAL)];
    let s = vec![
        text_shard(&cols, &[&["2147483647 mons"]]),
        text_shard(&cols, &[&["1 mon"]]),
    ];
    assert_eq!(
        run(spec("SELECT sum(d) FROM t"), CTX, &s)
            .unwrap_err()
            .sqlstate,
        "22008"
    );
}

#[test]
fn distinct_on_aggregated_rows() {
    let sp = spec("SELECT DISTINCT count(*) FROM t GROUP BY g");
    let cols = [("count", INT8), ("h1", INT4)];
    let s0 = text_shard(&cols, &[&["1", "1"], &["1", "2"]]);
    let s1 = text_shard(&cols, &[&["1", "3"], &["1", "2"]]);
    let mut out = run(sp, CTX, &[s0, s1]).unwrap().text();
    out.sort();
    assert_eq!(out, [["1"], ["2"]]);
    let _ = BytesMut::new();
}

#[test]
fn having_orders_text_only_by_bytes() {
    let sp = spec("SELECT g FROM t GROUP BY g HAVING g > 'b'");
    let s = || vec![text_shard(&[("g", TEXT)], &[&["a"], &["c"]])];
    assert_eq!(run(sp.clone(), CTX, &s()).unwrap_err().sqlstate, "0A000");
    let ctx = super::MergeContext {
        text_orders_by_bytes: true,
        ..CTX
    };
    assert_eq!(run(sp, ctx, &s()).unwrap().text(), [["c"]]);
    let sp = spec("SELECT g FROM t GROUP BY g HAVING g <> 'a'");
    assert_eq!(run(sp, CTX, &s()).unwrap().text(), [["c"]]);
}

#[test]
fn float_sum_overflow_is_an_error_like_postgres() {
    let sp = spec("SELECT sum(x) FROM t");
    let s = || text_shard(&[("sum", FLOAT8)], &[&["1e+308"]]);
    assert_eq!(
        run(sp.clone(), CTX, &[s(), s()]).unwrap_err().sqlstate,
        "22003"
    );
    let inf = text_shard(&[("sum", FLOAT8)], &[&["Infinity"]]);
    assert_eq!(run(sp, CTX, &[s(), inf]).unwrap().text(), [["Infinity"]]);
}

#[test]
fn count_cast_totals_keep_the_cast_type_and_its_range() {
    let sp = spec("SELECT count(*)::smallint FROM t");
    let s = |n: &str| text_shard(&[("count", INT2)], &[&[n]]);
    assert_eq!(
        run(sp.clone(), CTX, &[s("20000"), s("12000")])
            .unwrap()
            .text(),
        [["32000"]]
    );
    let err = run(sp, CTX, &[s("20000"), s("20000")]).unwrap_err();
    assert_eq!(
        (err.sqlstate, err.message.as_str()),
        ("22003", "smallint out of range")
    );
}
