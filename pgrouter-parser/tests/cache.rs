//! The cache and its literal-insensitive key: texts that share a key must
//! share an analysis, and literal-sensitive analyses must never be shared.

use pgrouter_parser::*;
use std::sync::Arc;

/// Varied statements, with the lexing traps the key must get right.
const CORPUS: &[&str] = &[
    "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
    "SELECT abalance FROM pgbench_accounts WHERE aid = 7;",
    "UPDATE pgbench_accounts SET abalance = abalance + -4071 WHERE aid = 62374;",
    "UPDATE pgbench_tellers SET tbalance = tbalance + 2 WHERE tid = 5;",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 48213, -4071, CURRENT_TIMESTAMP);",
    "SELECT 1",
    "SELECT 2",
    "SELECT 1.5",
    "SELECT .5",
    "SELECT 1e10",
    "SELECT 1.5e-3",
    "SELECT 0x1F",
    "SELECT 0o17",
    "SELECT 0b101",
    "SELECT 1_000",
    "SELECT 99999999999",
    "SELECT 'x'",
    "SELECT 'it''s'",
    "SELECT E'\\''",
    "SELECT E'a\\nb'",
    "SELECT $$dollar ' quoted$$",
    "SELECT $a$ has $$ inside $a$",
    "SELECT U&'d\\0061t\\+000061'",
    "SELECT U&\"d\\0061t\\+000061\" FROM t",
    "SELECT \"quoted ident\" FROM \"My Table\"",
    "SELECT \"a\"\"b\" FROM t",
    "SELECT B'1010'",
    "SELECT X'1F'",
    "SELECT N'national'",
    "SELECT 1 /* /* nested */ comment */ + 2",
    "SELECT 1 -- trailing comment",
    "-- leading comment\nSELECT 3",
    "SELECT data->>'key' FROM docs WHERE data ? 'k'",
    "SELECT data->'a'->>'b' FROM docs",
    "SELECT '1'::int, 2::text, CAST('3' AS bigint)",
    "SELECT * FROM t WHERE id = $1",
    "SELECT * FROM t WHERE id = $2",
    "SELECT * FROM t WHERE a = $1 AND b = 'x'",
    "SELECT * FROM t WHERE a = $1 AND b = 'y'",
    "SELECT a$b FROM t",
    "SELECT * FROM t WHERE x BETWEEN 1 AND 10",
    "SELECT * FROM t WHERE x IN (1, 2, 3)",
    "SELECT * FROM t WHERE x IN (4, 5, 6)",
    "SELECT * FROM t WHERE x IN (4, 5)",
    "SELECT * FROM t LIMIT 10 OFFSET 20",
    "SELECT * FROM t ORDER BY 1",
    "SELECT * FROM t FOR UPDATE",
    "SELECT * FROM t WHERE id = 5 FOR SHARE",
    "SELECT nextval('seq_a')",
    "SELECT nextval('seq_b')",
    "SELECT pg_advisory_lock(42)",
    "SELECT pg_advisory_lock(43)",
    "SELECT lower('X'), upper('y')",
    "SELECT date '2024-01-01' + interval '1 day'",
    "SELECT timestamp '2024-01-01 00:00:00'",
    "SELECT ARRAY[1, 2, 3]",
    "SELECT '{1,2}'::int[]",
    "SELECT * FROM t t1 JOIN u ON t1.id = u.tid WHERE u.v > 3.14",
    "SELECT count(*) FILTER (WHERE a > 0) FROM t",
    "SELECT sum(x) OVER (PARTITION BY g ORDER BY y ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) FROM t",
    "WITH d AS (DELETE FROM t WHERE id = 9 RETURNING *) SELECT * FROM d",
    "WITH d AS (DELETE FROM t WHERE id = 10 RETURNING *) SELECT * FROM d",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r",
    "INSERT INTO t VALUES (1, 'a'), (2, 'b')",
    "INSERT INTO t VALUES (3, 'c'), (4, 'd')",
    "INSERT INTO t (a) VALUES ($1) ON CONFLICT (a) DO UPDATE SET b = excluded.b",
    "UPDATE t SET a = 'x' WHERE id = 1",
    "DELETE FROM t WHERE created < now() - interval '30 days'",
    "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = 1",
    "COPY t FROM STDIN WITH (FORMAT csv, DELIMITER ',')",
    "COPY t TO STDOUT WITH (FORMAT csv, DELIMITER ';')",
    "CREATE TABLE x (a int DEFAULT 5, b text DEFAULT 'z')",
    "CREATE TABLE x (a varchar(10))",
    "ALTER TABLE x ALTER COLUMN a SET DEFAULT 7",
    "DROP TABLE IF EXISTS x",
    "EXPLAIN SELECT * FROM t WHERE id = 1",
    "EXPLAIN ANALYZE SELECT * FROM t WHERE id = 1",
    "EXPLAIN (ANALYZE 1) INSERT INTO t VALUES (1)",
    "EXPLAIN (ANALYZE 0) INSERT INTO t VALUES (1)",
    "EXPLAIN (ANALYZE 'on') INSERT INTO t VALUES (1)",
    "EXPLAIN (ANALYZE 'off') INSERT INTO t VALUES (1)",
    "FETCH 1 FROM c",
    "FETCH 99999999999 FROM c",
    "FETCH 1.5 FROM c",
    "DECLARE c CURSOR FOR SELECT * FROM t WHERE a = 'q'",
    "BEGIN",
    "BEGIN READ ONLY",
    "BEGIN ISOLATION LEVEL SERIALIZABLE",
    "COMMIT",
    "PREPARE TRANSACTION 'gid-1'",
    "COMMIT PREPARED 'gid-2'",
    "SET search_path = a, public",
    "SET statement_timeout = 1000",
    "SET statement_timeout = 2000",
    "SET statement_timeout = '3s'",
    "SET pgrouter.role = 'primary'",
    "SET pgrouter.role = 'replica'",
    "SET ROLE admin",
    "SET TIME ZONE 'UTC'",
    "SELECT set_config('search_path', 'x', false)",
    "SELECT set_config('role', 'x', false)",
    "SELECT set_config('application_name', 'x', false)",
    "/* pgrouter: role=primary */ SELECT 1",
    "/* pgrouter: role=replica */ SELECT 1",
    "SELECT 1 /* pgrouter: shard=1 */",
    "SELECT 1 /* pgrouter: shard=2 */",
    "PREPARE p (int) AS SELECT * FROM t WHERE id = $1",
    "PREPARE p (int) AS INSERT INTO t VALUES ($1)",
    "EXECUTE p(1)",
    "EXECUTE p(2)",
    "DO $$ BEGIN RAISE NOTICE 'x'; END $$",
    "DO $$ BEGIN RAISE NOTICE 'y'; END $$",
    "LISTEN chan",
    "NOTIFY chan, 'payload 1'",
    "NOTIFY chan, 'payload 2'",
    "VACUUM ANALYZE t",
    "SHOW work_mem",
    "DISCARD ALL",
    "SELEC 1",
    "SELEC 2",
    "SELECT 1; SELECT 2",
    "SELECT 1; INSERT INTO t VALUES (2)",
    "SELECT 1x",
    "SELECT t.1 FROM t",
    "SELECT 'a'\n'b'",
    "SELECT 'a' 'b'",
    "SELECT U&'!0061' UESCAPE '!'",
    "",
    "   ",
    "-- only a comment",
];

/// Other texts of the same statement: every digit shifted (changes numbers,
/// and also identifiers, strings and parameters that contain digits), and
/// every ASCII letter inside the text swapped case (changes keywords,
/// identifiers and literal contents).
fn mutations(sql: &str) -> Vec<String> {
    let digits: String = sql
        .chars()
        .map(|c| if c.is_ascii_digit() { char::from(b'0' + (c as u8 - b'0' + 3) % 10) } else { c })
        .collect();
    let case: String = sql
        .chars()
        .map(|c| if c.is_ascii_lowercase() { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() })
        .collect();
    let spaced = sql.replace(' ', "  \n\t");
    vec![digits, case, spaced]
}

/// The parts of an analysis that routing uses, apart from SET values and hints.
fn shape(a: &Analysis) -> (Vec<(String, bool)>, bool, Vec<String>, Escalation, bool) {
    let kinds = a
        .statements
        .iter()
        .map(|s| {
            // Identifiers in kinds (prepared names, channels) are kept by the key.
            (format!("{:?}", s.kind), s.is_write)
        })
        .collect();
    (kinds, a.is_write, a.tables.clone(), a.escalation, a.parse_error.is_some())
}

#[test]
fn equal_keys_mean_equal_analyses() {
    let mut texts: Vec<String> = Vec::new();
    for sql in CORPUS {
        texts.push(sql.to_string());
        texts.extend(mutations(sql));
    }
    let analysed: Vec<(Option<String>, Analysis)> = texts.iter().map(|t| (normalize_key(t), analyze(t, &[]))).collect();
    let mut shared = 0;
    for i in 0..texts.len() {
        for j in i + 1..texts.len() {
            let (Some(ki), ai) = &analysed[i] else {
                continue;
            };
            let (Some(kj), aj) = &analysed[j] else {
                continue;
            };
            if ki != kj || ai.literal_sensitive || aj.literal_sensitive {
                continue;
            }
            shared += 1;
            assert_eq!(shape(ai), shape(aj), "\n{:?}\n{:?}\nkey {:?}", texts[i], texts[j], ki);
        }
    }
    // The corpus does exercise sharing.
    assert!(shared > 50, "only {shared} pairs share a key");
}

#[test]
fn keys_of_the_corpus() {
    for sql in CORPUS {
        let key = normalize_key(sql);
        if sql.contains("pgrouter:")
            || sql.contains("UESCAPE")
            || sql.contains("'a'\n'b'")
            || sql.contains("'a' 'b'")
            || sql.contains("1x")
            || sql.contains("U&")
        {
            assert_eq!(key, None, "{sql}");
        } else {
            assert!(key.is_some(), "{sql}");
        }
    }
    let k = |s: &str| normalize_key(s).unwrap();
    assert_eq!(k(CORPUS[0]), k(CORPUS[1]));
    assert_ne!(k("SELECT 1"), k("SELECT 1.5"));
    assert_ne!(k("FETCH 1 FROM c"), k("FETCH 99999999999 FROM c"));
    assert_eq!(k("SELECT 'x'"), k("SELECT $$dollar ' quoted$$"));
}

#[test]
fn pgbench_simple_mode_hits_after_the_first() {
    let cache = AnalysisCache::new(1000, vec![]);
    let first = cache.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;");
    assert_eq!((cache.hits(), cache.misses()), (0, 1));
    for aid in 1..=100 {
        let a = cache.analyze(&format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"));
        assert!(Arc::ptr_eq(&a, &first));
    }
    assert_eq!((cache.hits(), cache.misses()), (100, 1));
    // Exact text and normalized key.
    assert_eq!(cache.len(), 2);
    let again = cache.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;");
    assert!(Arc::ptr_eq(&again, &first));
    assert_eq!(cache.hits(), 101);
}

fn set_value(a: &Analysis) -> Option<String> {
    match &a.statements[0].kind {
        StatementKind::Set(s) => s.value.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn literal_sensitive_analyses_are_never_shared() {
    let cache = AnalysisCache::new(1000, vec![]);
    let a = cache.analyze("SET statement_timeout = 1000");
    let b = cache.analyze("SET statement_timeout = 2000");
    assert_eq!(set_value(&a).as_deref(), Some("1000"));
    assert_eq!(set_value(&b).as_deref(), Some("2000"));
    let a = cache.analyze("SET pgrouter.role = 'replica'");
    let b = cache.analyze("SET pgrouter.role = 'primary'");
    assert_eq!(set_value(&a).as_deref(), Some("replica"));
    assert_eq!(set_value(&b).as_deref(), Some("primary"));

    let safe = cache.analyze("SELECT set_config('search_path', 'x', false)");
    let role = cache.analyze("SELECT set_config('role', 'x', false)");
    assert!(!safe.escalation.set_config_sensitive);
    assert!(role.escalation.set_config_sensitive);

    let r = cache.analyze("EXPLAIN (ANALYZE 0) INSERT INTO t VALUES (1)");
    let w = cache.analyze("EXPLAIN (ANALYZE 1) INSERT INTO t VALUES (1)");
    assert!(!r.is_write);
    assert!(w.is_write);

    let plain = cache.analyze("SELECT 1");
    let hinted = cache.analyze("/* pgrouter: role=primary */ SELECT 1");
    assert_eq!(plain.hint, Hint::default());
    assert_eq!(hinted.hint.role, Some(RoleHint::Primary));
    assert_eq!(cache.hits(), 0);
}

#[test]
fn exact_text_hits() {
    let cache = AnalysisCache::new(100, vec!["my_fn".into()]);
    for _ in 0..3 {
        assert!(cache.analyze("SELECT my_fn($1)").is_write);
    }
    assert_eq!((cache.hits(), cache.misses()), (2, 1));
}

#[test]
fn bounded() {
    let cache = AnalysisCache::new(50, vec![]);
    for i in 0..500 {
        // Distinct identifiers: distinct texts and distinct keys.
        cache.analyze(&format!("SELECT c{i} FROM t"));
    }
    assert!(cache.len() <= 60, "{}", cache.len());
    assert_eq!(cache.misses(), 500);
}

#[test]
fn zero_capacity_analyses_every_time() {
    let cache = AnalysisCache::new(0, vec![]);
    cache.analyze("SELECT 1");
    cache.analyze("SELECT 1");
    assert_eq!((cache.hits(), cache.misses(), cache.len()), (0, 2, 0));
}

#[test]
fn shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<AnalysisCache>();
    let cache = Arc::new(AnalysisCache::new(1000, vec![]));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    let a = cache.analyze(&format!("SELECT * FROM t WHERE id = {}", t * 1000 + i));
                    assert!(!a.is_write);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(cache.hits() + cache.misses(), 800);
    assert!(cache.misses() <= 4);
}

/// A session that inlines literals asks by normalized key first; the order
/// follows what answered last, and never changes an answer.
#[test]
fn lookup_order_follows_the_client() {
    let cache = AnalysisCache::new(1000, vec![]);
    let mut order = Lookup::default();
    let first = cache.analyze_preferring("SELECT abalance FROM pgbench_accounts WHERE aid = 1;", &mut order);
    assert_eq!(order, Lookup::ExactFirst, "a miss leaves the order alone");
    cache.analyze_preferring("SELECT abalance FROM pgbench_accounts WHERE aid = 2;", &mut order);
    assert_eq!(order, Lookup::NormalizedFirst);
    for aid in 3..50 {
        let a =
            cache.analyze_preferring(&format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"), &mut order);
        assert!(Arc::ptr_eq(&a, &first));
        assert_eq!(order, Lookup::NormalizedFirst);
    }
    assert_eq!((cache.hits(), cache.misses()), (48, 1));

    // Literal-sensitive statements are not stored by normalized key: asked
    // that way first, they are still found (or analysed) by their own text.
    for value in ["1000", "2000", "1000"] {
        let a = cache.analyze_preferring(&format!("SET statement_timeout = {value}"), &mut order);
        assert_eq!(set_value(&a).as_deref(), Some(value));
    }
    assert_eq!(order, Lookup::ExactFirst, "the repeated SET was found by its text");
    assert_eq!((cache.hits(), cache.misses()), (49, 3));
}
