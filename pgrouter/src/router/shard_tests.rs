//! The shard planner as a table: statements and the shard (or SQLSTATE)
//! they get on a three-shard database.

use std::sync::Arc;

use pgrouter_parser::analyze;
use pgrouter_parser::shard::{KeyType, KeyValue, Mapping, Placement};

use super::bind::BindParams;
use super::shard_map::{ShardMap, ShardedTable};
use super::shard_plan::{plan, ManyKind, Values};

fn placement() -> Arc<Placement> {
    Arc::new(Placement {
        key_type: KeyType::Bigint,
        shards: 3,
        mapping: Mapping::Hash,
    })
}

pub(super) fn map() -> ShardMap {
    let p = placement();
    let table = |name: &str, column: &str| ShardedTable {
        schema: None,
        name: Some(name.into()),
        column: column.into(),
        placement: p.clone(),
    };
    ShardMap {
        shards: 3,
        tables: vec![
            table("orders", "cid"),
            table("items", "cid"),
            ShardedTable {
                schema: None,
                name: Some("users".into()),
                column: "name".into(),
                placement: Arc::new(Placement {
                    key_type: KeyType::Text,
                    shards: 3,
                    mapping: Mapping::Hash,
                }),
            },
        ],
        reference: vec![(None, "countries".into())],
        refuse_cross_shard: false,
        columns: Default::default(),
        facts: Default::default(),
    }
}

fn shard(k: i64) -> usize {
    placement().shard_of(&KeyValue::Int(k)).unwrap()
}

/// Two keys on different shards.
fn apart() -> (i64, i64) {
    let a = 1;
    let b = (2..100).find(|&b| shard(b) != shard(a)).unwrap();
    (a, b)
}

fn run(sql: &str) -> Result<Option<usize>, &'static str> {
    let a = analyze(sql, &[]);
    plan(&a, &Values::Text(sql), &map(), None, true)
        .map(|c| c.map(|c| c.shard))
        .map_err(|r| r.sqlstate)
}

#[test]
fn simple_protocol_table() {
    let (a, b) = apart();
    let same = (2..100).find(|&x| x != a && shard(x) == shard(a)).unwrap();
    let cases: Vec<(String, Result<Option<usize>, &str>)> = vec![
        ("SELECT 1".into(), Ok(None)),
        ("SELECT * FROM other WHERE cid = 5".into(), Ok(None)),
        ("SELECT * FROM countries".into(), Ok(None)),
        (format!("SELECT * FROM orders WHERE cid = {a}"), Ok(Some(shard(a)))),
        (format!("SELECT * FROM public.orders o WHERE note = 'x' AND {b} = o.cid"), Ok(Some(shard(b)))),
        (format!("SELECT * FROM orders WHERE cid = -{b}"), Ok(Some(shard(-b)))),
        (format!("SELECT * FROM orders WHERE cid IN ({a}, {same})"), Ok(Some(shard(a)))),
        (format!("SELECT * FROM orders WHERE cid = {a} OR cid = {same}"), Ok(Some(shard(a)))),
        (format!("SELECT * FROM orders WHERE cid = ANY('{{{a},{same}}}')"), Ok(Some(shard(a)))),
        (format!("SELECT * FROM orders WHERE cid = '{a}'"), Ok(Some(shard(a)))),
        (format!("SELECT * FROM orders WHERE cid = {a} AND cid = {b}"), Ok(Some(0))),
        ("SELECT * FROM orders WHERE cid IS NULL".into(), Ok(Some(0))),
        (format!("SELECT * FROM orders o JOIN items i ON i.cid = o.cid WHERE o.cid = {b}"), Ok(Some(shard(b)))),
        (format!("SELECT * FROM orders o, countries c WHERE o.cid = {b}"), Ok(Some(shard(b)))),
        (format!("WITH x AS (SELECT * FROM orders WHERE cid = {b}) SELECT * FROM x"), Ok(Some(shard(b)))),
        (format!("SELECT * FROM orders WHERE cid = {b} AND EXISTS (SELECT 1 FROM items WHERE cid = {b})"), Ok(Some(shard(b)))),
        (format!("INSERT INTO orders (cid, note) VALUES ({a}, 'x'), ({same}, 'y')"), Ok(Some(shard(a)))),
        (format!("UPDATE orders SET note = 'x', cid = {same} WHERE cid = {a}"), Ok(Some(shard(a)))),
        (format!("DELETE FROM orders WHERE cid = {a}"), Ok(Some(shard(a)))),
        (format!("EXPLAIN (ROUTE) INSERT INTO orders (cid) VALUES ({b})"), Ok(Some(shard(b)))),
        (format!("BEGIN; INSERT INTO orders (cid) VALUES ({b}); COMMIT"), Ok(Some(shard(b)))),
        // Not answerable exactly: 0A000.
        (format!("SELECT * FROM orders o JOIN items i ON i.note = o.note WHERE o.cid = {a}"), Err("0A000")),
        (format!("SELECT * FROM orders o LEFT JOIN items i ON i.cid = {a} WHERE o.note = 'x'"), Err("0A000")),
        ("INSERT INTO orders VALUES (1)".into(), Err("0A000")),
        ("INSERT INTO orders (note) VALUES ('x')".into(), Err("0A000")),
        ("INSERT INTO orders (cid) SELECT cid FROM items WHERE cid = 1".into(), Err("0A000")),
        (format!("UPDATE orders SET cid = {b} WHERE cid = {a}"), Err("0A000")),
        (format!("UPDATE orders SET cid = cid + 1 WHERE cid = {a}"), Err("0A000")),
        ("SELECT * FROM orders WHERE cid = 1.5".into(), Err("0A000")),
        // Tables not equated on their keys, keys on two shards.
        (format!("SELECT * FROM orders o, items i WHERE o.cid = {a} AND i.cid = {b}"), Err("0A000")),
        (format!("SELECT * FROM orders o, items i WHERE o.cid = {a} AND i.cid = {same}"), Ok(Some(shard(a)))),
        // ON CONFLICT ... DO UPDATE SET key: kept on the inserted row's shard.
        (format!("INSERT INTO orders (cid) VALUES ({a}) ON CONFLICT (cid) DO UPDATE SET cid = {b}"), Err("0A000")),
        (format!("INSERT INTO orders (cid) VALUES ({a}) ON CONFLICT (cid) DO UPDATE SET cid = excluded.cid + 1"), Err("0A000")),
        (format!("INSERT INTO orders (cid) VALUES ({a}) ON CONFLICT (cid) DO UPDATE SET cid = {same}"), Ok(Some(shard(a)))),
        (format!("INSERT INTO orders (cid) VALUES ({a}) ON CONFLICT (cid) DO UPDATE SET cid = excluded.cid, note = 'n'"), Ok(Some(shard(a)))),
        // Writes inside WITH: on their keys' one shard, or refused.
        (format!("WITH w AS (INSERT INTO orders (cid) VALUES ({b}) RETURNING *) SELECT * FROM w"), Ok(Some(shard(b)))),
        (format!("WITH w AS (INSERT INTO items (cid) VALUES ({b})) INSERT INTO orders (cid) VALUES ({same})"), Err("0A000")),
        (format!("WITH w AS (INSERT INTO items (cid) VALUES ({a})) INSERT INTO orders (cid) VALUES ({same})"), Ok(Some(shard(a)))),
        (format!("WITH w AS (INSERT INTO orders (cid) VALUES ({a}), ({b})) SELECT 1"), Err("0A000")),
        ("WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d".into(), Err("0A000")),
        (format!("WITH u AS (UPDATE orders SET cid = {b} WHERE cid = {a} RETURNING *) SELECT * FROM u"), Err("0A000")),
        (format!("WITH u AS (UPDATE orders SET note = 'x' WHERE cid = {a} RETURNING *) SELECT * FROM u"), Ok(Some(shard(a)))),
        ("WITH c AS (INSERT INTO countries VALUES ('fr')) SELECT 1".into(), Err("0A000")),
        (format!("WITH w AS (INSERT INTO orders (cid) VALUES ({a})) INSERT INTO countries VALUES ('fr')"), Err("0A000")),
        // PostgreSQL's own errors for bad keys.
        ("SELECT * FROM orders WHERE cid = 'x'".into(), Err("22P02")),
        ("SELECT * FROM orders WHERE cid = 99999999999999999999".into(), Err("22003")),
    ];
    for (sql, want) in cases {
        assert_eq!(run(&sql), want, "{sql}");
    }
}

/// The shards and the way a statement on several shards runs.
fn many(sql: &str) -> (Vec<usize>, ManyKind) {
    let a = analyze(sql, &[]);
    let m = plan(&a, &Values::Text(sql), &map(), None, true)
        .unwrap_or_else(|r| panic!("{sql}: {}", r.message))
        .and_then(|c| c.many)
        .unwrap_or_else(|| panic!("{sql}: one shard"));
    (m.shards, m.kind)
}

#[test]
fn statements_on_several_shards() {
    let (a, b) = apart();
    let ab = {
        let mut v = vec![shard(a), shard(b)];
        v.sort();
        v
    };
    let all = vec![0, 1, 2];
    for (sql, shards, kind) in [
        (
            "SELECT * FROM orders".to_string(),
            all.clone(),
            ManyKind::Read,
        ),
        (
            format!("SELECT * FROM orders WHERE cid = {a} OR note = 'x'"),
            all.clone(),
            ManyKind::Read,
        ),
        (
            format!("SELECT * FROM orders WHERE cid IN ({a}, {b})"),
            ab.clone(),
            ManyKind::Read,
        ),
        (
            format!("SELECT * FROM orders WHERE NOT cid = {a}"),
            all.clone(),
            ManyKind::Read,
        ),
        // The subquery needs every shard (the executor then refuses the
        // subquery, which a merge cannot answer: see fanout::plan_read).
        (
            format!("SELECT (SELECT count(*) FROM items), * FROM orders WHERE cid = {a}"),
            all.clone(),
            ManyKind::Read,
        ),
        (
            format!("INSERT INTO orders (cid) VALUES ({a}), ({b})"),
            ab.clone(),
            ManyKind::InsertSplit,
        ),
        (
            "UPDATE orders SET note = 'x'".into(),
            all.clone(),
            ManyKind::Write,
        ),
        (
            "DELETE FROM orders WHERE note = 'x'".into(),
            all.clone(),
            ManyKind::Write,
        ),
        (
            "COPY orders FROM STDIN".into(),
            all.clone(),
            ManyKind::CopyIn,
        ),
        (
            "COPY orders TO STDOUT".into(),
            all.clone(),
            ManyKind::CopyOut,
        ),
        (
            "CREATE INDEX ON orders (note)".into(),
            all.clone(),
            ManyKind::Ddl,
        ),
        ("TRUNCATE orders".into(), all.clone(), ManyKind::Ddl),
        (
            "CREATE TABLE fresh (a int)".into(),
            all.clone(),
            ManyKind::Ddl,
        ),
        (
            "INSERT INTO countries VALUES ('fr')".into(),
            all.clone(),
            ManyKind::Replicate,
        ),
        (
            "UPDATE countries SET code = 'x'".into(),
            all.clone(),
            ManyKind::Replicate,
        ),
    ] {
        assert_eq!(many(&sql), (shards, kind), "{sql}");
    }
}

#[test]
fn literal_variants_share_the_analysis_but_not_the_shard() {
    let cache = pgrouter_parser::AnalysisCache::new(100, vec![]);
    let (a, b) = apart();
    for k in [a, b, a] {
        let sql = format!("SELECT * FROM orders WHERE cid = {k}");
        let analysis = cache.analyze(&sql);
        let got = plan(&analysis, &Values::Text(&sql), &map(), None, true)
            .unwrap()
            .unwrap();
        assert_eq!(got.shard, shard(k), "{sql}");
    }
    assert_eq!(cache.misses(), 1, "one analysis for every literal variant");
}

pub(super) fn bind(values: &[Option<&[u8]>], format: i16) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&format.to_be_bytes());
    b.extend_from_slice(&(values.len() as i16).to_be_bytes());
    for v in values {
        match v {
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v);
            }
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    b
}

fn run_bind(sql: &str, rest: &[u8], types: &[i32]) -> Result<Option<usize>, &'static str> {
    let a = analyze(sql, &[]);
    let params = BindParams::parse(rest).unwrap();
    let values = Values::Bind {
        sql,
        params: &params,
        param_types: types,
    };
    plan(&a, &values, &map(), None, true)
        .map(|c| c.map(|c| c.shard))
        .map_err(|r| r.sqlstate)
}

#[test]
fn bind_parameters_text_and_binary() {
    let (a, b) = apart();
    let sql = "SELECT * FROM orders WHERE cid = $1";
    assert_eq!(
        run_bind(sql, &bind(&[Some(a.to_string().as_bytes())], 0), &[]),
        Ok(Some(shard(a)))
    );
    assert_eq!(
        run_bind(sql, &bind(&[Some(&b.to_be_bytes())], 1), &[20]),
        Ok(Some(shard(b)))
    );
    assert_eq!(
        run_bind(sql, &bind(&[Some(&(b as i32).to_be_bytes())], 1), &[23]),
        Ok(Some(shard(b)))
    );
    assert_eq!(
        run_bind(sql, &bind(&[Some(&b.to_be_bytes())], 1), &[]),
        Ok(Some(shard(b)))
    );
    assert_eq!(run_bind(sql, &bind(&[None], 0), &[]), Ok(Some(0)));
    assert_eq!(run_bind(sql, &bind(&[Some(b"x")], 0), &[]), Err("22P02"));
    assert_eq!(
        run_bind(sql, &bind(&[Some(b"12345678")], 1), &[25]),
        Ok(Some(shard(12345678)))
    );
    assert_eq!(
        run_bind(sql, &bind(&[Some(&[0; 8])], 1), &[1700]),
        Err("0A000")
    );
    let any = "SELECT * FROM orders WHERE cid = ANY($1)";
    assert_eq!(
        run_bind(
            any,
            &bind(&[Some(format!("{{{a},{a}}}").as_bytes())], 0),
            &[]
        ),
        Ok(Some(shard(a)))
    );
    assert_eq!(
        run_bind(
            any,
            &bind(&[Some(format!("{{{a},{b}}}").as_bytes())], 0),
            &[]
        ),
        // Both shards (the lowest first; see `statements_on_several_shards`).
        Ok(Some(shard(a).min(shard(b))))
    );
    let ins = "INSERT INTO orders (cid, note) VALUES ($2, $1)";
    assert_eq!(
        run_bind(
            ins,
            &bind(&[Some(b"n"), Some(b.to_string().as_bytes())], 0),
            &[]
        ),
        Ok(Some(shard(b)))
    );
}

#[test]
fn sharding_key_setting() {
    let sql = "SELECT 1";
    let a = analyze(sql, &[]);
    let got = plan(&a, &Values::Text(sql), &map(), Some("7"), true)
        .unwrap()
        .unwrap();
    assert_eq!(got.shard, shard(7));
    let e = plan(&a, &Values::Text(sql), &map(), Some("seven"), true).unwrap_err();
    assert_eq!(e.sqlstate, "22P02");
}
