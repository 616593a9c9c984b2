//! ORDER BY, LIMIT/OFFSET, DISTINCT and refusals of the row merge.

use super::tests::*;
use super::types::*;
use super::MergeContext;
use pgrouter_parser::fanout::Count;

fn sorted_ids(sql: &str, oid: u32, shards: &[&[&str]]) -> Vec<String> {
    let s: Vec<_> = shards
        .iter()
        .map(|rows| {
            text_shard(
                &[("x", oid)],
                &rows.iter().map(std::slice::from_ref).collect::<Vec<_>>(),
            )
        })
        .collect();
    let (out, _) = run_streaming(spec(sql), &s).unwrap();
    out.text().into_iter().map(|mut r| r.remove(0)).collect()
}

#[test]
fn desc_puts_nulls_first_by_default_and_asc_last() {
    let got = sorted_ids(
        "SELECT x FROM t ORDER BY x DESC",
        INT4,
        &[&["NULL", "7", "-3"], &["9", "0"]],
    );
    assert_eq!(got, ["NULL", "9", "7", "0", "-3"]);
    let got = sorted_ids(
        "SELECT x FROM t ORDER BY x",
        INT4,
        &[&["-3", "7", "NULL"], &["0", "9"]],
    );
    assert_eq!(got, ["-3", "0", "7", "9", "NULL"]);
    let got = sorted_ids(
        "SELECT x FROM t ORDER BY x NULLS FIRST",
        INT4,
        &[&["-3", "7"], &["NULL", "0"]],
    );
    assert_eq!(got, ["NULL", "-3", "0", "7"]);
}

#[test]
fn float_nan_sorts_above_infinity() {
    let got = sorted_ids(
        "SELECT x FROM t ORDER BY x",
        FLOAT8,
        &[&["-Infinity", "1.5", "NaN"], &["-0", "Infinity"]],
    );
    assert_eq!(got, ["-Infinity", "-0", "1.5", "Infinity", "NaN"]);
}

#[test]
fn numeric_compares_by_value_not_text() {
    let got = sorted_ids(
        "SELECT x FROM t ORDER BY x",
        NUMERIC,
        &[
            &["-Infinity", "-10.5", "9.99", "NaN"],
            &["-2", "10.000", "100", "Infinity"],
        ],
    );
    assert_eq!(
        got,
        [
            "-Infinity",
            "-10.5",
            "-2",
            "9.99",
            "10.000",
            "100",
            "Infinity",
            "NaN"
        ]
    );
}

#[test]
fn timestamptz_compares_in_utc_across_offsets() {
    let got = sorted_ids(
        "SELECT x FROM t ORDER BY x",
        TIMESTAMPTZ,
        &[
            &["2024-03-31 01:30:00+01", "2024-03-31 03:10:00+02"],
            &["2024-03-31 02:05:00+02", "2024-03-31 01:00:00.5+00"],
        ],
    );
    // UTC: 00:30, 00:05 (shard 1 first row), 01:00:00.5, 01:10
    assert_eq!(
        got,
        [
            "2024-03-31 02:05:00+02",
            "2024-03-31 01:30:00+01",
            "2024-03-31 01:00:00.5+00",
            "2024-03-31 03:10:00+02"
        ]
    );
}

#[test]
fn dates_bc_and_infinity_interval_and_uuid() {
    let got = sorted_ids(
        "SELECT x FROM t ORDER BY x",
        DATE,
        &[
            &["-infinity", "0044-03-15 BC", "2024-01-01"],
            &["0001-01-01", "infinity"],
        ],
    );
    assert_eq!(
        got,
        [
            "-infinity",
            "0044-03-15 BC",
            "0001-01-01",
            "2024-01-01",
            "infinity"
        ]
    );
    let got = sorted_ids(
        "SELECT x FROM t ORDER BY x",
        INTERVAL,
        &[&["-1 days +02:00:00", "1 mon"], &["23:00:00", "31 days"]],
    );
    assert_eq!(got, ["-1 days +02:00:00", "23:00:00", "1 mon", "31 days"]);
    let a = "0a0e8400-e29b-41d4-a716-446655440000";
    let b = "550e8400-e29b-41d4-a716-446655440000";
    let c = "f50e8400-e29b-41d4-a716-446655440000";
    assert_eq!(
        sorted_ids("SELECT x FROM t ORDER BY x", UUID, &[&[a, c], &[b]]),
        [a, b, c]
    );
}

#[test]
fn binary_keys_compare_like_text_ones() {
    let d = desc(&[("x", INT8, true), ("y", FLOAT8, true)]);
    let r = |x: i64, y: f64| row(&[Some(&x.to_be_bytes()), Some(&y.to_be_bytes())]);
    let s0 = shard(&d, &[r(-5, 1.0), r(10, f64::NAN)], 2);
    let s1 = shard(&d, &[r(3, -1.0)], 1);
    let (out, _) = run_streaming(spec("SELECT x, y FROM t ORDER BY x"), &[s0, s1]).unwrap();
    let xs: Vec<i64> = out
        .rows
        .iter()
        .map(|r| i64::from_be_bytes(r[0].clone().unwrap().try_into().unwrap()))
        .collect();
    assert_eq!(xs, [-5, 3, 10]);
    let s0 = shard(&d, &[r(1, f64::NAN)], 1);
    let s1 = shard(&d, &[r(2, f64::INFINITY), r(3, -0.0)], 2);
    let (out, _) = run_streaming(spec("SELECT x, y FROM t ORDER BY y DESC"), &[s0, s1]).unwrap();
    let xs: Vec<i64> = out
        .rows
        .iter()
        .map(|r| i64::from_be_bytes(r[0].clone().unwrap().try_into().unwrap()))
        .collect();
    assert_eq!(xs, [1, 2, 3]);
}

#[test]
fn text_order_needs_a_byte_ordered_collation() {
    let s = || {
        vec![
            text_shard(&[("name", TEXT)], &[&["b"]]),
            text_shard(&[("name", TEXT)], &[&["a"]]),
        ]
    };
    let err = run(spec("SELECT name FROM t ORDER BY name"), CTX, &s()).unwrap_err();
    assert_eq!(err.sqlstate, "0A000");
    assert!(err.message.contains("COLLATE \"C\""), "{}", err.message);
    let out = run(
        spec("SELECT name FROM t ORDER BY name COLLATE \"C\""),
        CTX,
        &s(),
    )
    .unwrap();
    assert_eq!(out.text(), [["a"], ["b"]]);
    let ctx = MergeContext {
        text_orders_by_bytes: true,
        ..CTX
    };
    let out = run(spec("SELECT name FROM t ORDER BY name DESC"), ctx, &s()).unwrap();
    assert_eq!(out.text(), [["b"], ["a"]]);
}

#[test]
fn text_dates_need_datestyle_iso_and_unknown_types_are_refused() {
    let s = || vec![text_shard(&[("d", DATE)], &[&["2024-01-02"]])];
    let ctx = MergeContext {
        datestyle_iso: false,
        ..CTX
    };
    let err = run(spec("SELECT d FROM t ORDER BY d"), ctx, &s()).unwrap_err();
    assert_eq!(
        (err.sqlstate, err.message.contains("DateStyle")),
        ("0A000", true)
    );
    let s = vec![text_shard(&[("j", 3802)], &[&["{}"]])];
    let err = run(spec("SELECT j FROM t ORDER BY j"), CTX, &s).unwrap_err();
    assert_eq!(
        (err.sqlstate, err.message.contains("jsonb")),
        ("0A000", true),
        "{}",
        err.message
    );
}

#[test]
fn limit_offset_stop_early_and_tag_counts_sent_rows() {
    let s0 = text_shard(&[("x", INT4)], &[&["1"], &["4"], &["5"], &["8"]]);
    let s1 = text_shard(&[("x", INT4)], &[&["2"], &["3"], &["6"], &["7"]]);
    let (out, fed) = run_streaming(
        spec("SELECT x FROM t ORDER BY x LIMIT 3 OFFSET 2"),
        &[s0, s1],
    )
    .unwrap();
    assert_eq!(out.text(), [["3"], ["4"], ["5"]]);
    assert_eq!(out.tag.as_deref(), Some("SELECT 3"));
    assert!(
        fed < 12,
        "stopped reading once the limit was met ({fed} messages read)"
    );
}

#[test]
fn limit_without_order_and_limit_zero() {
    let s = || {
        vec![
            text_shard(&[("x", INT4)], &[&["1"], &["2"]]),
            text_shard(&[("x", INT4)], &[&["3"]]),
        ]
    };
    let (out, _) = run_streaming(spec("SELECT x FROM t LIMIT 2"), &s()).unwrap();
    assert_eq!((out.rows.len(), out.tag.as_deref()), (2, Some("SELECT 2")));
    let (out, _) = run_streaming(spec("SELECT x FROM t LIMIT 0"), &s()).unwrap();
    assert_eq!(
        (out.columns.len(), out.rows.len(), out.tag.as_deref()),
        (1, 0, Some("SELECT 0"))
    );
}

#[test]
fn parameters_must_be_resolved_and_negative_limits_fail_like_postgres() {
    let sp = spec("SELECT x FROM t ORDER BY x LIMIT $1 OFFSET $2");
    assert_eq!(sp.limit, Some(Count::Param(1)));
    let s = || vec![text_shard(&[("x", INT4)], &[&["1"], &["2"], &["3"]])];
    assert_eq!(run(sp.clone(), CTX, &s()).unwrap_err().sqlstate, "XX000");
    let resolved = sp
        .resolve_params(&|n| Some(if n == 1 { "2" } else { "1" }.to_string()))
        .unwrap();
    assert_eq!(run(resolved, CTX, &s()).unwrap().text(), [["2"], ["3"]]);
    let resolved = sp
        .resolve_params(&|n| (n == 1).then(|| "-1".to_string()))
        .unwrap();
    assert_eq!(run(resolved, CTX, &s()).unwrap_err().sqlstate, "2201W");
    let null_limit = sp
        .resolve_params(&|n| (n == 2).then(|| "2".to_string()))
        .unwrap();
    assert_eq!(run(null_limit, CTX, &s()).unwrap().text(), [["3"]]);
}

#[test]
fn distinct_across_shards_by_value() {
    let s0 = text_shard(
        &[("x", NUMERIC), ("y", TEXT)],
        &[&["1.0", "a"], &["2", "b"]],
    );
    let s1 = text_shard(
        &[("x", NUMERIC), ("y", TEXT)],
        &[&["1.00", "a"], &["2", "c"], &["NULL", "a"]],
    );
    let s2 = text_shard(&[("x", NUMERIC), ("y", TEXT)], &[&["NULL", "a"]]);
    let out = run(spec("SELECT DISTINCT x, y FROM t"), CTX, &[s0, s1, s2]).unwrap();
    assert_eq!(
        out.text(),
        [["1.0", "a"], ["2", "b"], ["2", "c"], ["NULL", "a"]]
    );
    assert_eq!(out.tag.as_deref(), Some("SELECT 4"));
}

#[test]
fn shards_must_agree_on_columns() {
    let s0 = text_shard(&[("x", INT4)], &[&["1"]]);
    let s1 = text_shard(&[("x", INT8)], &[&["2"]]);
    assert_eq!(
        run(spec("SELECT x FROM t"), CTX, &[s0, s1])
            .unwrap_err()
            .sqlstate,
        "XX000"
    );
    let bad = vec![
        (b'T', desc(&[("x", INT4, false)])),
        (b'D', vec![0, 1, 0, 0]),
    ];
    assert_eq!(
        run(spec("SELECT x FROM t"), CTX, &[bad])
            .unwrap_err()
            .sqlstate,
        "XX000"
    );
}

#[test]
fn empty_query_everywhere_is_one_empty_query_response() {
    let s = || vec![(b'I', Vec::new())];
    let out = run(spec("SELECT x FROM t"), CTX, &[s(), s()]).unwrap();
    assert!(out.empty && out.tag.is_none());
}

#[test]
fn random_messages_never_panic_the_merger() {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let specs = [
        spec("SELECT a FROM t ORDER BY b DESC LIMIT 3"),
        spec("SELECT g, count(*), avg(x), min(y) FROM t GROUP BY g HAVING sum(x) > 2"),
        spec("SELECT DISTINCT a, b FROM t"),
        spec("SELECT * FROM t"),
    ];
    let d2 = desc(&[("a", INT4, false), ("b", NUMERIC, true)]);
    for _ in 0..3000 {
        let sp = specs[rng.gen_range(0..specs.len())].clone();
        let mut m = super::Merger::new(sp, 2, CTX);
        let mut out = bytes::BytesMut::new();
        for _ in 0..rng.gen_range(0..8) {
            let tag = [b'T', b'D', b'C', b'I', b'X'][rng.gen_range(0..5)];
            let body: Vec<u8> = match (tag, rng.gen_bool(0.5)) {
                (b'T', true) => d2.clone(),
                (b'D', true) => row(&[Some(b"1"), Some(&[0, 0, 0, 0, 0, 0, 0, 0])]),
                _ => (0..rng.gen_range(0..24)).map(|_| rng.gen()).collect(),
            };
            let _ = m.feed(rng.gen_range(0..3), tag, &body);
            let _ = m.drain(&mut out);
            let _ = (m.wanted(), m.is_done());
        }
    }
}
