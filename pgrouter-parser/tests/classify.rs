//! The classification rules as a table: statement -> kind, read/write,
//! transaction effect, SET details, escalation flags.

use pgrouter_parser::*;

fn an(sql: &str) -> Analysis {
    analyze(sql, &["my_write_fn".to_string(), "audit.log_event".to_string()])
}

fn kind(sql: &str) -> StatementKind {
    let a = an(sql);
    assert_eq!(a.statements.len(), 1, "{sql}: {a:?}");
    a.statements[0].kind.clone()
}

use StatementKind as K;

#[test]
#[rustfmt::skip]
fn kinds_and_writes() {
    let table: Vec<(&str, StatementKind, bool)> = vec![
        // Reads.
        ("SELECT 1", K::Select, false),
        ("select * from t where id = 5", K::Select, false),
        ("VALUES (1), (2)", K::Select, false),
        ("TABLE t", K::Select, false),
        ("SELECT * FROM a JOIN b USING (id) WHERE a.x IN (SELECT y FROM c) ORDER BY 1 LIMIT 5", K::Select, false),
        ("WITH x AS (SELECT 1) SELECT * FROM x", K::Select, false),
        ("SELECT lower(name), now(), count(*) FROM t GROUP BY 1", K::Select, false),
        ("SHOW search_path", K::Show, false),
        ("SHOW ALL", K::Show, false),
        ("EXPLAIN SELECT 1", K::Explain { analyze: false }, false),
        ("EXPLAIN INSERT INTO t VALUES (1)", K::Explain { analyze: false }, false),
        ("EXPLAIN ANALYZE SELECT * FROM t", K::Explain { analyze: true }, false),
        ("EXPLAIN (ANALYZE off) DELETE FROM t", K::Explain { analyze: false }, false),
        ("EXPLAIN EXECUTE p(1)", K::Explain { analyze: false }, false),
        ("DECLARE c CURSOR FOR SELECT * FROM t", K::DeclareCursor, false),
        ("FETCH 10 FROM c", K::Fetch, false),
        ("MOVE NEXT IN c", K::Fetch, false),
        ("CLOSE c", K::ClosePortal, false),
        ("CLOSE ALL", K::ClosePortal, false),
        ("COPY t TO STDOUT", K::Copy { from_stdin_or_file: false }, false),
        ("COPY (SELECT * FROM t) TO STDOUT WITH (FORMAT csv)", K::Copy { from_stdin_or_file: false }, false),
        ("EXECUTE p(1)", K::Execute { name: "p".into() }, false),
        ("DEALLOCATE p", K::Deallocate { name: Some("p".into()) }, false),
        ("DEALLOCATE PREPARE p", K::Deallocate { name: Some("p".into()) }, false),
        ("DEALLOCATE ALL", K::Deallocate { name: None }, false),
        ("DISCARD ALL", K::Discard(DiscardKind::All), false),
        ("DISCARD PLANS", K::Discard(DiscardKind::Plans), false),
        ("DISCARD SEQUENCES", K::Discard(DiscardKind::Sequences), false),
        ("DISCARD TEMP", K::Discard(DiscardKind::Temp), false),
        ("SET CONSTRAINTS ALL DEFERRED", K::Other, false),
        ("PREPARE q AS SELECT * FROM t WHERE id = $1", K::Prepare { name: "q".into() }, false),
        // Writes.
        ("INSERT INTO t VALUES (1)", K::Insert, true),
        ("INSERT INTO t SELECT * FROM u ON CONFLICT DO NOTHING", K::Insert, true),
        ("UPDATE t SET a = 1", K::Update, true),
        ("DELETE FROM t", K::Delete, true),
        ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", K::Merge, true),
        ("CREATE TABLE x (a int)", K::Ddl, true),
        ("ALTER TABLE x ADD COLUMN b int", K::Ddl, true),
        ("DROP TABLE x", K::Ddl, true),
        ("TRUNCATE t", K::Ddl, true),
        ("GRANT SELECT ON t TO bob", K::Ddl, true),
        ("REVOKE SELECT ON t FROM bob", K::Ddl, true),
        ("COMMENT ON TABLE t IS 'x'", K::Ddl, true),
        ("CREATE INDEX ON t (a)", K::Ddl, true),
        ("CREATE TABLE y AS SELECT * FROM t", K::Ddl, true),
        ("CREATE MATERIALIZED VIEW mv AS SELECT 1", K::Ddl, true),
        ("REFRESH MATERIALIZED VIEW mv", K::Ddl, true),
        ("CLUSTER t USING t_pkey", K::Ddl, true),
        ("REINDEX TABLE t", K::Ddl, true),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$", K::Ddl, true),
        ("SELECT * FROM t FOR UPDATE", K::Select, true),
        ("SELECT * FROM t FOR NO KEY UPDATE", K::Select, true),
        ("SELECT * FROM t FOR SHARE", K::Select, true),
        ("SELECT * FROM t FOR KEY SHARE SKIP LOCKED", K::Select, true),
        ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", K::Select, true),
        ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", K::Select, true),
        ("WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT count(*) FROM x", K::Select, true),
        ("SELECT 1 INTO newtable", K::Select, true),
        ("SELECT nextval('s')", K::Select, true),
        ("SELECT setval('s', 10)", K::Select, true),
        ("SELECT pg_advisory_lock(1)", K::Select, true),
        ("SELECT pg_advisory_xact_lock_shared(1, 2)", K::Select, true),
        ("SELECT pg_advisory_unlock(1)", K::Select, true),
        ("SELECT pg_try_advisory_lock(1)", K::Select, true),
        ("SELECT lo_create(0)", K::Select, true),
        ("SELECT lo_import('/tmp/x')", K::Select, true),
        ("SELECT lo_unlink(123)", K::Select, true),
        ("SELECT lo_put(1, 0, 'x')", K::Select, true),
        ("SELECT lo_from_bytea(0, 'x')", K::Select, true),
        ("SELECT txid_current()", K::Select, true),
        ("SELECT pg_current_xact_id()", K::Select, true),
        ("SELECT PG_CATALOG.NEXTVAL('s')", K::Select, true),
        ("SELECT id, nextval('s') FROM t WHERE a = (SELECT max(b) FROM u)", K::Select, true),
        ("SELECT * FROM t WHERE a = ANY(ARRAY[nextval('s')])", K::Select, true),
        ("SELECT * FROM nextval('s')", K::Select, true),
        ("SELECT my_write_fn(1)", K::Select, true),
        ("SELECT public.My_Write_Fn(1)", K::Select, true),
        ("SELECT audit.log_event('x')", K::Select, true),
        ("SELECT log_event('x')", K::Select, true),
        ("SELECT other.log_event('x')", K::Select, false),
        ("COPY t FROM STDIN", K::Copy { from_stdin_or_file: true }, true),
        ("COPY t (a, b) FROM '/tmp/file' WITH (FORMAT csv)", K::Copy { from_stdin_or_file: true }, true),
        ("COPY (INSERT INTO t VALUES (1) RETURNING *) TO STDOUT", K::Copy { from_stdin_or_file: false }, true),
        ("CALL proc(1)", K::Call, true),
        ("DO $$ BEGIN PERFORM 1; END $$", K::Do, true),
        ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", K::Lock, true),
        ("VACUUM t", K::Vacuum, true),
        ("VACUUM (ANALYZE) t", K::Vacuum, true),
        ("ANALYZE t", K::Analyze, true),
        ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", K::Explain { analyze: true }, true),
        ("EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1", K::Explain { analyze: true }, true),
        ("EXPLAIN ANALYZE SELECT nextval('s')", K::Explain { analyze: true }, true),
        ("EXPLAIN ANALYZE CREATE TABLE z AS SELECT 1", K::Explain { analyze: true }, true),
        ("EXPLAIN ANALYZE EXECUTE p(1)", K::Explain { analyze: true }, true),
        ("PREPARE p AS INSERT INTO t VALUES ($1)", K::Prepare { name: "p".into() }, true),
        ("PREPARE p2 (int) AS SELECT * FROM t FOR UPDATE", K::Prepare { name: "p2".into() }, true),
        ("DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE", K::DeclareCursor, true),
        ("EXECUTE p(nextval('s'))", K::Execute { name: "p".into() }, true),
        ("LISTEN chan", K::Listen { channel: "chan".into() }, true),
        ("UNLISTEN chan", K::Unlisten { channel: Some("chan".into()) }, true),
        ("UNLISTEN *", K::Unlisten { channel: None }, true),
        ("NOTIFY chan, 'payload'", K::Notify { channel: "chan".into() }, true),
        ("SELECT pg_notify('chan', 'x')", K::Select, true),
        ("CHECKPOINT", K::Other, true),
    ];
    for (sql, want_kind, want_write) in table {
        let a = an(sql);
        assert_eq!(a.parse_error, None, "{sql}");
        assert_eq!(a.statements.len(), 1, "{sql}");
        assert_eq!(a.statements[0].kind, want_kind, "{sql}");
        assert_eq!(a.statements[0].is_write, want_write, "{sql}");
        assert_eq!(a.is_write, want_write, "{sql}");
    }
}

#[test]
#[rustfmt::skip]
fn transactions() {
    use TxEffect as T;
    // (statement, effect, read_only_change)
    let table: Vec<(&str, TxEffect, bool)> = vec![
        ("BEGIN", T::Begin { read_only: None, serializable: None }, false),
        ("BEGIN READ ONLY", T::Begin { read_only: Some(true), serializable: None }, false),
        ("BEGIN ISOLATION LEVEL REPEATABLE READ", T::Begin { read_only: None, serializable: Some(false) }, false),
        ("BEGIN READ WRITE", T::Begin { read_only: Some(false), serializable: None }, true),
        ("START TRANSACTION READ ONLY", T::Begin { read_only: Some(true), serializable: None }, false),
        ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE", T::Begin { read_only: Some(false), serializable: Some(true) }, true),
        ("START TRANSACTION", T::Begin { read_only: None, serializable: None }, false),
        ("COMMIT", T::Commit, false),
        ("END", T::Commit, false),
        ("COMMIT AND CHAIN", T::Commit, false),
        ("ROLLBACK", T::Rollback, false),
        ("ABORT", T::Rollback, false),
        ("SAVEPOINT s1", T::Savepoint, false),
        ("RELEASE SAVEPOINT s1", T::Release, false),
        ("RELEASE s1", T::Release, false),
        ("ROLLBACK TO SAVEPOINT s1", T::RollbackTo, false),
        ("PREPARE TRANSACTION 'gid'", T::PrepareTransaction, false),
        ("COMMIT PREPARED 'gid'", T::CommitPrepared, false),
        ("ROLLBACK PREPARED 'gid'", T::RollbackPrepared, false),
    ];
    for (sql, effect, read_only_change) in table {
        let a = an(sql);
        assert_eq!(a.statements[0].kind, K::Transaction(effect), "{sql}");
        assert!(!a.is_write, "{sql}");
        assert_eq!(a.escalation, Escalation { read_only_change, ..Default::default() }, "{sql}");
    }
}

fn set(sql: &str) -> SetStatement {
    match kind(sql) {
        K::Set(s) => s,
        other => panic!("{sql}: {other:?}"),
    }
}

fn s(name: &str, value: Option<&str>, local: bool, kind: SetKind) -> SetStatement {
    SetStatement { name: name.into(), value: value.map(str::to_string), local, kind }
}

#[test]
#[rustfmt::skip]
fn set_statements() {
    use SetKind::*;
    let table: Vec<(&str, SetStatement)> = vec![
        ("SET search_path TO a, public", s("search_path", Some("a, public"), false, Value)),
        ("SET LOCAL search_path TO a, \"B c\"", s("search_path", Some("a, \"B c\""), true, Value)),
        ("SET search_path = 'a', '$user'", s("search_path", Some("a, \"$user\""), false, Value)),
        ("SET SESSION search_path = \"A\", public", s("search_path", Some("\"A\", public"), false, Value)),
        ("SET SCHEMA 'x'", s("search_path", Some("x"), false, Value)),
        ("SET statement_timeout = 5000", s("statement_timeout", Some("5000"), false, Value)),
        ("SET statement_timeout = '5s'", s("statement_timeout", Some("5s"), false, Value)),
        ("SET extra_float_digits = -1.5", s("extra_float_digits", Some("-1.5"), false, Value)),
        ("SET Application_Name TO 'My App'", s("application_name", Some("My App"), false, Value)),
        ("SET enable_seqscan = off", s("enable_seqscan", Some("off"), false, Value)),
        ("SET NAMES 'UTF8'", s("client_encoding", Some("UTF8"), false, Value)),
        ("SET pgrouter.role = 'primary'", s("pgrouter.role", Some("primary"), false, Value)),
        ("SET pgrouter.shard = 3", s("pgrouter.shard", Some("3"), false, Value)),
        ("SET work_mem TO DEFAULT", s("work_mem", None, false, Default)),
        ("SET search_path FROM CURRENT", s("search_path", None, false, FromCurrent)),
        ("SET TIME ZONE 'UTC'", s("timezone", Some("UTC"), false, TimeZone)),
        ("SET TIME ZONE LOCAL", s("timezone", None, false, TimeZone)),
        ("SET TIME ZONE INTERVAL '+02:00' HOUR TO MINUTE", s("timezone", Some("+02:00"), false, TimeZone)),
        ("SET timezone = 'Europe/Paris'", s("timezone", Some("Europe/Paris"), false, Value)),
        ("SET ROLE admin", s("role", Some("admin"), false, Role)),
        ("SET ROLE \"Admin\"", s("role", Some("Admin"), false, Role)),
        ("SET LOCAL ROLE admin", s("role", Some("admin"), true, Role)),
        ("SET ROLE NONE", s("role", Some("none"), false, Role)),
        ("SET role = 'x'", s("role", Some("x"), false, Role)),
        ("SET SESSION AUTHORIZATION bob", s("session_authorization", Some("bob"), false, SessionAuthorization)),
        ("SET SESSION AUTHORIZATION DEFAULT", s("session_authorization", None, false, SessionAuthorization)),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
            s("session characteristics", Some("ISOLATION LEVEL SERIALIZABLE, READ ONLY"), false, SessionCharacteristics)),
        ("SET TRANSACTION READ WRITE", s("transaction", Some("READ WRITE"), false, TransactionCharacteristics)),
        ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, NOT DEFERRABLE",
            s("transaction", Some("ISOLATION LEVEL REPEATABLE READ, NOT DEFERRABLE"), false, TransactionCharacteristics)),
        ("SET TRANSACTION SNAPSHOT '00000003-0000001B-1'",
            s("transaction snapshot", Some("00000003-0000001B-1"), false, TransactionCharacteristics)),
        ("SET default_transaction_read_only = on", s("default_transaction_read_only", Some("on"), false, Value)),
    ];
    for (sql, want) in table {
        assert_eq!(set(sql), want, "{sql}");
        let a = an(sql);
        assert!(!a.is_write, "{sql}");
        assert!(a.literal_sensitive, "{sql}");
    }
}

#[test]
#[rustfmt::skip]
fn resets() {
    assert_eq!(kind("RESET ALL"), K::Reset(ResetTarget::All));
    assert_eq!(kind("RESET search_path"), K::Reset(ResetTarget::Name("search_path".into())));
    assert_eq!(kind("RESET ROLE"), K::Reset(ResetTarget::Name("role".into())));
    assert_eq!(kind("RESET SESSION AUTHORIZATION"), K::Reset(ResetTarget::Name("session_authorization".into())));
    assert_eq!(kind("RESET TIME ZONE"), K::Reset(ResetTarget::Name("timezone".into())));
    assert!(!an("RESET ALL").is_write);
    assert!(an("RESET work_mem").literal_sensitive);
}

#[test]
#[rustfmt::skip]
fn escalations() {
    let none = Escalation::default();
    let role = Escalation { set_role: true, ..none };
    let auth = Escalation { session_authorization: true, ..none };
    let cfg = Escalation { set_config_sensitive: true, ..none };
    let ro = Escalation { read_only_change: true, ..none };
    let do_ = Escalation { do_block: true, ..none };
    let table: Vec<(&str, Escalation)> = vec![
        ("SELECT 1", none),
        ("SET search_path = a", none),
        ("SET pgrouter.role = 'primary'", none),
        ("RESET ALL", none),
        ("DISCARD ALL", none),
        ("SET ROLE admin", role),
        ("SET SESSION ROLE admin", role),
        ("SET LOCAL ROLE admin", role),
        ("SET ROLE NONE", role),
        ("SET role TO DEFAULT", role),
        ("RESET ROLE", role),
        ("SET SESSION AUTHORIZATION bob", auth),
        ("SET SESSION AUTHORIZATION DEFAULT", auth),
        ("RESET SESSION AUTHORIZATION", auth),
        ("SELECT * FROM (SELECT set_config('role','admin',false)) s", cfg),
        ("select public.SET_CONFIG('ROLE', 'x', false)", cfg),
        ("SELECT pg_catalog.set_config('session_authorization', 'x', false)", cfg),
        ("SELECT set_config('default_transaction_read_only', 'off', false)", cfg),
        ("SELECT set_config('transaction_read_only'::text, 'off', true)", cfg),
        ("WITH c AS (SELECT set_config('role', 'x', false)) SELECT * FROM c", cfg),
        ("SELECT coalesce(set_config('role', 'x', false), 'y')", cfg),
        ("SELECT set_config(name, 'x', false) FROM settings", cfg),
        ("SELECT set_config(lower('ROLE'), 'x', false)", cfg),
        ("UPDATE t SET a = set_config('role', 'x', false)", cfg),
        // pg_settings' update rule calls set_config().
        ("UPDATE pg_settings SET setting = 'admin' WHERE name = 'role'", cfg),
        ("UPDATE pg_catalog.pg_settings SET setting = 'x' WHERE name = 'search_path'", cfg),
        ("UPDATE t SET a = 1 FROM pg_settings WHERE t.name = pg_settings.name", none),
        ("SELECT * FROM pg_settings", none),
        ("SELECT set_config('search_path', 'x', false)", none),
        ("SELECT set_config('application_name', 'x', false)", none),
        ("SET default_transaction_read_only = off", ro),
        ("SET default_transaction_read_only = on", ro),
        ("SET transaction_read_only = off", ro),
        ("SET LOCAL transaction_read_only TO DEFAULT", ro),
        ("RESET default_transaction_read_only", ro),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", ro),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", none),
        ("SET TRANSACTION READ WRITE", ro),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE", ro),
        ("SET TRANSACTION READ ONLY", none),
        ("BEGIN READ WRITE", ro),
        ("START TRANSACTION READ WRITE", ro),
        ("BEGIN READ ONLY", none),
        ("DO $$ BEGIN EXECUTE 'SET ROLE admin'; END $$", do_),
        ("DO LANGUAGE plpgsql 'BEGIN NULL; END'", do_),
        // A function's SET clause applies the setting whenever it runs.
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql SET role = admin AS 'SELECT 1'", role),
        ("ALTER FUNCTION f() SET default_transaction_read_only = off", ro),
        ("ALTER ROLE CURRENT_USER SET role = admin", role),
    ];
    for (sql, want) in table {
        let a = an(sql);
        assert_eq!(a.parse_error, None, "{sql}");
        assert_eq!(a.escalation, want, "{sql}");
    }
}

#[test]
fn hints() {
    let a = an("/* pgrouter: role=replica */ SELECT 1");
    assert_eq!(a.hint, Hint { role: Some(RoleHint::Replica), shard: None });
    assert!(a.literal_sensitive);
    let a = an("SELECT 1 /* pgrouter: shard=3 */");
    assert_eq!(a.hint, Hint { role: None, shard: Some(3) });
    let a = an("/* pgrouter: role=primary shard=7 */ INSERT INTO t VALUES (1)");
    assert_eq!(a.hint, Hint { role: Some(RoleHint::Primary), shard: Some(7) });
    assert!(a.is_write);
    assert_eq!(an("SELECT 1").hint, Hint::default());
    assert!(!an("SELECT 1").literal_sensitive);
    // A hint in a statement that does not parse still counts.
    let a = an("/* pgrouter: role=replica */ SELEC 1");
    assert_eq!(a.hint.role, Some(RoleHint::Replica));
}

#[test]
fn parse_errors() {
    for sql in ["SELEC 1", "SELECT 'open", "SELECT 1 FROM", "INSERT INTO", "SELECT 1; SELEC 2", "SELECT '\0'"] {
        let a = an(sql);
        assert!(a.parse_error.is_some(), "{sql}");
        assert!(a.is_write, "{sql}");
        assert!(a.statements.is_empty(), "{sql}");
    }
}

#[test]
fn empty_and_comments_only() {
    for sql in ["", "   ", ";", "-- nothing\n", "/* nothing */"] {
        let a = an(sql);
        assert_eq!(a.parse_error, None, "{sql:?}");
        assert!(a.statements.is_empty(), "{sql:?}");
        assert!(!a.is_write, "{sql:?}");
    }
}

#[test]
fn multi_statement() {
    let a = an("SELECT 1; INSERT INTO t VALUES (1); COMMIT");
    let kinds: Vec<_> = a.statements.iter().map(|s| (s.kind.clone(), s.is_write)).collect();
    assert_eq!(kinds, vec![(K::Select, false), (K::Insert, true), (K::Transaction(TxEffect::Commit), false)]);
    assert!(a.is_write);
    let a = an("BEGIN READ ONLY; SELECT * FROM t; COMMIT;");
    assert_eq!(a.statements.len(), 3);
    assert!(!a.is_write);
}

#[test]
fn tables() {
    let a = an("SELECT * FROM public.accounts a JOIN \"Orders\" o ON o.aid = a.id, accounts WHERE a.id IN (SELECT id FROM s.x)");
    assert_eq!(a.tables, vec!["public.accounts", "Orders", "accounts", "s.x"]);
    let a = an("WITH cte AS (SELECT * FROM base) INSERT INTO target SELECT * FROM cte");
    assert_eq!(a.tables, vec!["target", "base"]);
    let a = an("SELECT 1; SELECT * FROM t; DELETE FROM t");
    assert_eq!(a.tables, vec!["t"]);
    assert_eq!(an("DROP TABLE a, s.b").tables, vec!["a", "s.b"]);
    assert_eq!(an("UPDATE t SET a = u.a FROM u WHERE t.id = u.id").tables, vec!["t", "u"]);
    assert_eq!(an("COPY t FROM STDIN").tables, vec!["t"]);
    assert!(an("SELECT 1").tables.is_empty());
}

#[test]
fn literal_sensitivity() {
    assert!(!an("SELECT * FROM t WHERE a = 1").literal_sensitive);
    assert!(!an("INSERT INTO t VALUES ('x')").literal_sensitive);
    assert!(an("SELECT set_config('search_path', 'x', false)").literal_sensitive);
    assert!(an("EXPLAIN (ANALYZE 'off') SELECT 1").literal_sensitive);
    assert!(!an("EXPLAIN ANALYZE SELECT 1").literal_sensitive);
    assert!(an("SELEC 1").literal_sensitive);
}

/// Deeper than prost decodes (~45 nested operators) but far from PostgreSQL's
/// limit: read from the C-side summary, statement by statement. Not a parse
/// error: PostgreSQL runs these.
#[test]
#[rustfmt::skip]
fn deep_but_valid() {
    let mut deep = String::from("a");
    for _ in 0..200 {
        deep.push_str(" || a");
    }
    let read = an(&format!("SELECT {deep} FROM t"));
    assert_eq!(read.parse_error, None);
    assert_eq!(read.statements, vec![StatementInfo { kind: K::Select, is_write: false }]);
    assert_eq!(read.tables, vec!["t"]);
    assert!(!read.is_write);
    assert!(read.literal_sensitive);
    assert!(an(&format!("SELECT {deep} FROM t FOR UPDATE")).is_write);
    assert!(an(&format!("SELECT {deep}, nextval('s') FROM t")).is_write);
    assert!(an(&format!("SELECT {deep}, my_write_fn(1) FROM t")).is_write);
    assert!(an(&format!("SELECT {deep} INTO x FROM t")).is_write);
    assert!(an(&format!("WITH d AS (DELETE FROM u RETURNING *) SELECT {deep} FROM d")).is_write);
    assert!(an(&format!("SELECT {deep}, set_config('a', 'b', false) FROM t")).escalation.set_config_sensitive);

    // Only the deep statement is approximate; its neighbours are analysed fully.
    let mixed = an(&format!("BEGIN; INSERT INTO t SELECT {deep}; SELECT 1; SET work_mem = 1; COMMIT"));
    assert_eq!(mixed.parse_error, None);
    let kinds: Vec<_> = mixed.statements.iter().map(|s| (s.kind.clone(), s.is_write)).collect();
    assert_eq!(kinds, vec![
        (K::Transaction(TxEffect::Begin { read_only: None, serializable: None }), false),
        (K::Insert, true),
        (K::Select, false),
        (K::Set(SetStatement { name: "work_mem".into(), value: Some("1".into()), local: false, kind: SetKind::Value }), false),
        (K::Transaction(TxEffect::Commit), false),
    ]);
    assert!(mixed.is_write);

    for (sql, kind, write) in [
        (format!("UPDATE t SET a = {deep}"), K::Update, true),
        (format!("DELETE FROM t WHERE a = {deep}"), K::Delete, true),
        (format!("EXPLAIN SELECT {deep}"), K::Explain { analyze: false }, false),
        (format!("EXPLAIN ANALYZE UPDATE t SET a = {deep}"), K::Explain { analyze: true }, true),
        (format!("PREPARE p AS SELECT {deep} FROM t"), K::Prepare { name: "p".into() }, false),
        (format!("PREPARE \"P\" AS INSERT INTO t VALUES ({deep})"), K::Prepare { name: "P".into() }, true),
        (format!("COPY (SELECT {deep} FROM t) TO STDOUT"), K::Copy { from_stdin_or_file: false }, false),
        (format!("COPY t FROM STDIN WHERE a = {deep}"), K::Copy { from_stdin_or_file: true }, true),
        (format!("CREATE VIEW v AS SELECT {deep}"), K::Ddl, true),
    ] {
        let a = an(&sql);
        assert_eq!(a.parse_error, None, "{sql}");
        assert_eq!(a.statements, vec![StatementInfo { kind, is_write: write }], "{sql}");
    }
    // A syntax error anywhere is still a parse error.
    assert!(an(&format!("SELECT {deep}; SELEC 1")).parse_error.is_some());
}

/// A 100 KB `SELECT 1+1+...` on a thread with tokio's 2 MiB stack: beyond
/// libpg_query's stack limit, so only the scanner can look at it; it counts as
/// a write (the primary), not as a parse error, and nothing crashes.
#[test]
fn huge_expression_on_a_small_stack() {
    let handle = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(|| {
            let mut sql = String::from("SELECT 1");
            while sql.len() < 100 * 1024 {
                sql.push_str("+1");
            }
            let a = an(&sql);
            assert!(a.is_write);
            assert_eq!(a.parse_error, None);
            assert_eq!(a.statements, vec![StatementInfo { kind: K::Select, is_write: true }]);
            let a = an(&sql.replace("SELECT 1", "SELECT set_config('role', 'x', false), 1"));
            assert!(a.escalation.set_config_sensitive);
            let a = an(&format!("{sql} +"));
            assert!(a.parse_error.is_some());
            let cache = AnalysisCache::new(10, vec![]);
            assert!(cache.analyze(&sql).is_write);
            // Near prost's limit, where the walk recurses deepest.
            let mut sql = String::from("SELECT nextval('s')");
            for _ in 0..44 {
                sql.push_str(" + 1");
            }
            let a = an(&sql);
            assert_eq!(a.parse_error, None);
            assert!(a.is_write);
        })
        .unwrap();
    handle.join().unwrap();
}

#[test]
/// The router takes a PREPARE's own text from a multi-statement string: one
/// part per analysed statement, in order, semicolons inside literals kept.
fn split_statements_matches_the_analysis() {
    let sql = "SELECT 1; PREPARE p (int) AS SELECT ';' || $1 ;\n  SELECT 3";
    let parts: Vec<&str> = split_statements(sql).unwrap().into_iter().map(str::trim).collect();
    assert_eq!(parts, ["SELECT 1", "PREPARE p (int) AS SELECT ';' || $1", "SELECT 3"]);
    assert_eq!(parts.len(), an(sql).statements.len());
    assert_eq!(split_statements("SELEC 1"), None);
}
