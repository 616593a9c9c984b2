//! The point path against the general planner: wherever the point path
//! answers, the general planner gives the same single shard; and it does
//! answer for the statements it is meant for.

use pgrouter_parser::analyze;

use super::super::bind::BindParams;
use super::super::shard_plan::{plan, Values};
use super::super::shard_tests::{bind, map};
use super::{compile, PointValues};

/// Statements whose shard is one value's (the point path must take them).
const POINTS: &[&str] = &[
    "SELECT * FROM orders WHERE cid = {v}",
    "SELECT * FROM orders o WHERE o.cid = {v} AND o.note = 'x'",
    "SELECT * FROM public.orders WHERE {v} = cid AND (note = 'a' OR note = 'b')",
    "SELECT o.*, c.name FROM orders o JOIN countries c ON c.id = o.country WHERE o.cid = {v}",
    "UPDATE orders SET note = 'y' WHERE cid = {v}",
    "DELETE FROM orders WHERE cid = {v} AND note IS NULL",
    "INSERT INTO orders (cid, note) VALUES ({v}, 'n')",
    "INSERT INTO orders (note, cid) VALUES ('n', {v}) RETURNING *",
    "SELECT * FROM users WHERE name = {v}",
];

/// Statements the point path must leave to the general planner.
const GENERAL: &[&str] = &[
    "SELECT * FROM orders WHERE cid = {v} OR cid = 7",
    "SELECT * FROM orders WHERE cid IN ({v}, 7)",
    "SELECT * FROM orders WHERE cid = {v} AND cid = 7",
    "SELECT * FROM orders o JOIN items i ON i.cid = o.cid WHERE o.cid = {v}",
    "SELECT * FROM orders WHERE cid = {v} AND note IN (SELECT note FROM items)",
    "SELECT * FROM orders WHERE note = {v}",
    "UPDATE orders SET cid = 9 WHERE cid = {v}",
    "UPDATE countries SET name = 'x' FROM orders WHERE orders.cid = {v}",
    "INSERT INTO orders (cid) VALUES ({v}), (8)",
    "INSERT INTO orders VALUES ({v})",
    "INSERT INTO orders (cid) SELECT {v}",
    "SELECT 1; SELECT * FROM orders WHERE cid = {v}",
    "/* pgrouter: shard=1 */ SELECT * FROM orders WHERE cid = {v}",
];

const LITERALS: &[&str] = &[
    "1",
    "2",
    "3",
    "42",
    "-17",
    "'5'",
    "9223372036854775807",
    "'x'",
    "1.5",
    "'abc'",
    "NULL",
    "0x10",
    "99999999999999999999",
];

fn general(sql: &str, values: &Values) -> Result<Option<(usize, bool)>, &'static str> {
    plan(&analyze(sql, &[]), values, &map(), None, false)
        .map(|c| c.map(|c| (c.shard, c.many.is_some())))
        .map_err(|r| r.sqlstate)
}

#[test]
fn literals_agree_with_the_general_planner() {
    let m = map();
    let mut from_spans = 0;
    for (template, must) in POINTS
        .iter()
        .map(|t| (t, true))
        .chain(GENERAL.iter().map(|t| (t, false)))
    {
        let compiled = compile(&analyze(&template.replace("{v}", "1"), &[]), &m);
        assert_eq!(compiled.is_some(), must, "{template}");
        for lit in LITERALS {
            let sql = template.replace("{v}", lit);
            let Some(point) = compile(&analyze(&sql, &[]), &m) else {
                continue;
            };
            let lexed = point.shard(&PointValues::Text {
                sql: &|| Some(sql.as_str()),
                known: &|_| None,
            });
            if let Some(shard) = lexed {
                assert_eq!(
                    general(&sql, &Values::Text(&sql)),
                    Ok(Some((shard, false))),
                    "{sql}"
                );
            }
            // The same read from a template's spans of the text.
            if let Some(template) = pgrouter_parser::Template::new(&sql) {
                let spans: Vec<(usize, usize)> = template.spans().collect();
                let known = |i: usize| Some(spans.get(i).map(|&(a, b)| &sql[a..b]));
                // No text to lex: the spans alone must give the answer.
                assert_eq!(
                    point.shard(&PointValues::Text {
                        sql: &|| None,
                        known: &known
                    }),
                    lexed,
                    "{sql}"
                );
                from_spans += 1;
            }
        }
    }
    assert!(from_spans > 20, "{from_spans}");
}

#[test]
fn parameters_agree_with_the_general_planner() {
    let m = map();
    let text: Vec<Vec<u8>> = ["1", "2", "42", "-3", "x", "", "9223372036854775808"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    let binary: Vec<Vec<u8>> = vec![
        7i64.to_be_bytes().to_vec(),
        7i32.to_be_bytes().to_vec(),
        5i16.to_be_bytes().to_vec(),
        vec![1, 2, 3],
    ];
    let mut answered = 0;
    for template in POINTS.iter().chain(GENERAL) {
        let sql = template.replace("{v}", "$1");
        let analysis = analyze(&sql, &[]);
        let point = compile(&analysis, &m);
        if POINTS.contains(template) {
            assert!(point.is_some(), "{sql}");
        }
        let Some(point) = point else { continue };
        for (format, values) in [(0, &text), (1, &binary)] {
            for v in values {
                for types in [
                    &[][..],
                    &[20][..],
                    &[23][..],
                    &[21][..],
                    &[25][..],
                    &[1700][..],
                ] {
                    for rest in [
                        bind(&[Some(v)], format),
                        bind(&[None], format),
                        bind(&[], format),
                    ] {
                        let statement = || (sql.as_str(), types);
                        let got = point.shard(&PointValues::Bind {
                            rest: &rest,
                            statement: &statement,
                        });
                        let Some(shard) = got else { continue };
                        answered += 1;
                        let params = BindParams::parse(&rest).unwrap();
                        let values = Values::Bind {
                            sql: &sql,
                            params: &params,
                            param_types: types,
                        };
                        assert_eq!(
                            general(&sql, &values),
                            Ok(Some((shard, false))),
                            "{sql} {v:?} {types:?}"
                        );
                    }
                }
            }
        }
    }
    assert!(answered > 50, "{answered}");
}
