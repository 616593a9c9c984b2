//! Session-scoped state a statement creates (or ends) on its server
//! connection that the router cannot carry to another connection: temporary
//! objects, `LISTEN`, session advisory locks, `WITH HOLD` cursors,
//! `SET SESSION AUTHORIZATION`, sequence state (`currval` after `nextval`)
//! and whatever a `DO` block did. In transaction mode the router pins a
//! client that holds such state to its server connection (or refuses the
//! statement), and resets the connection before another client gets it.
//!
//! Only what the text shows is known: a function that creates a temp table
//! inside its body is not seen (nor by any pooler); `DO` is taken to create
//! state of unknown kind.

use pg_query::protobuf::node::Node as N;
use pg_query::protobuf::RangeVar;

/// A set of kinds of session state (a small bit set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SessionState(u8);

impl SessionState {
    /// No session state.
    pub const NONE: SessionState = SessionState(0);
    /// Temporary tables, views or sequences.
    pub const TEMP: SessionState = SessionState(1);
    /// `LISTEN`.
    pub const LISTEN: SessionState = SessionState(1 << 1);
    /// Session-level advisory locks (`pg_advisory_lock`, not the `_xact_` ones).
    pub const ADVISORY_LOCK: SessionState = SessionState(1 << 2);
    /// Cursors declared `WITH HOLD` outlive their transaction.
    pub const HOLD_CURSOR: SessionState = SessionState(1 << 3);
    /// `SET SESSION AUTHORIZATION`.
    pub const SESSION_AUTHORIZATION: SessionState = SessionState(1 << 4);
    /// `nextval`/`setval`: `currval`/`lastval` need the same connection.
    pub const SEQUENCE: SessionState = SessionState(1 << 5);
    /// A `DO` block: it may have done any of the above.
    pub const DO_BLOCK: SessionState = SessionState(1 << 6);
    /// Every kind.
    pub const ALL: SessionState = SessionState(0x7f);

    const NAMES: [(SessionState, &'static str); 7] = [
        (Self::TEMP, "temp"),
        (Self::LISTEN, "listen"),
        (Self::ADVISORY_LOCK, "advisory_lock"),
        (Self::HOLD_CURSOR, "hold_cursor"),
        (Self::SESSION_AUTHORIZATION, "session_authorization"),
        (Self::SEQUENCE, "sequence"),
        (Self::DO_BLOCK, "do"),
    ];

    /// The set as bits (to keep in an atomic).
    pub fn bits(self) -> u8 {
        self.0
    }

    /// The set from [`Self::bits`]; unknown bits are dropped.
    pub fn from_bits(bits: u8) -> SessionState {
        SessionState(bits & Self::ALL.0)
    }

    /// No kind is in the set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Kinds in both sets.
    pub fn intersects(self, other: SessionState) -> bool {
        self.0 & other.0 != 0
    }

    /// The kinds in both sets.
    pub fn intersection(self, other: SessionState) -> SessionState {
        SessionState(self.0 & other.0)
    }

    /// This set without `other`'s kinds.
    pub fn without(self, other: SessionState) -> SessionState {
        SessionState(self.0 & !other.0)
    }

    /// Every kind with its name, in a fixed order.
    pub fn kinds() -> impl Iterator<Item = (SessionState, &'static str)> {
        Self::NAMES.into_iter()
    }

    /// The name of each kind in the set (as `SHOW CLIENTS` and the metrics show them).
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES.into_iter().filter(move |(k, _)| self.intersects(*k)).map(|(_, n)| n)
    }
}

impl std::ops::BitOr for SessionState {
    type Output = SessionState;
    fn bitor(self, rhs: SessionState) -> SessionState {
        SessionState(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for SessionState {
    fn bitor_assign(&mut self, rhs: SessionState) {
        self.0 |= rhs.0;
    }
}

/// What a query string does to session state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStateChange {
    /// Kinds of state the string may create.
    pub creates: SessionState,
    /// Kinds of state it ends for good (`DISCARD`, `UNLISTEN *`,
    /// `pg_advisory_unlock_all()`, `CLOSE ALL`, `RESET SESSION AUTHORIZATION`).
    pub ends: SessionState,
    /// Kinds of state it may end, or not, depending on what else the
    /// session holds: a `DROP` (of the last temporary object?), `UNLISTEN
    /// ch` (of the last channel?), `pg_advisory_unlock()` (of the last hold
    /// of the last lock? locks are re-entrant), `CLOSE c` (of the last WITH
    /// HOLD cursor?), an `ON COMMIT DROP` temp table. Only the server knows:
    /// the router asks it once the transaction is over.
    pub may_end: SessionState,
}

impl SessionStateChange {
    /// Adds what another statement (or call) of the string does.
    pub fn merge(&mut self, other: SessionStateChange) {
        self.creates |= other.creates;
        self.ends |= other.ends;
        self.may_end |= other.may_end;
    }

    /// Nothing created, ended or maybe ended.
    pub fn is_empty(&self) -> bool {
        self.creates.is_empty() && self.ends.is_empty() && self.may_end.is_empty()
    }
}

/// `CURSOR_OPT_HOLD` of PostgreSQL's parsenodes.h.
const CURSOR_OPT_HOLD: i32 = 0x0020;

/// The session state one statement creates and ends, by its kind. Function
/// calls anywhere in it are added by [`of_function`] during the walk.
pub(crate) fn of_statement(node: &N) -> SessionStateChange {
    let mut c = SessionStateChange::default();
    match node {
        N::CreateStmt(s) => {
            c.creates |= temp_if(s.relation.as_ref());
            if s.oncommit == pg_query::protobuf::OnCommitAction::OncommitDrop as i32 {
                c.may_end |= c.creates;
            }
        }
        N::CreateTableAsStmt(s) => {
            let into = s.into.as_ref();
            c.creates |= temp_if(into.and_then(|i| i.rel.as_ref()));
            if into.is_some_and(|i| i.on_commit == pg_query::protobuf::OnCommitAction::OncommitDrop as i32) {
                c.may_end |= c.creates;
            }
        }
        // Any DROP may drop the session's last temporary object.
        N::DropStmt(_) | N::DropOwnedStmt(_) => c.may_end |= SessionState::TEMP,
        N::ViewStmt(s) => c.creates |= temp_if(s.view.as_ref()),
        N::CreateSeqStmt(s) => c.creates |= temp_if(s.sequence.as_ref()),
        N::SelectStmt(s) => c.creates |= temp_if(s.into_clause.as_ref().and_then(|i| i.rel.as_ref())),
        // Other objects created in the temporary schema by name.
        N::CreateStatsStmt(s) => c.creates |= temp_name_if(&s.defnames),
        N::CreateFunctionStmt(s) => c.creates |= temp_name_if(&s.funcname),
        N::DefineStmt(s) => c.creates |= temp_name_if(&s.defnames),
        N::CreateDomainStmt(s) => c.creates |= temp_name_if(&s.domainname),
        N::CreateEnumStmt(s) => c.creates |= temp_name_if(&s.type_name),
        N::CreateRangeStmt(s) => c.creates |= temp_name_if(&s.type_name),
        N::CompositeTypeStmt(s) => c.creates |= temp_if(s.typevar.as_ref()),
        N::ListenStmt(_) => c.creates |= SessionState::LISTEN,
        N::UnlistenStmt(u) if u.conditionname.is_empty() => c.ends |= SessionState::LISTEN,
        N::UnlistenStmt(_) => c.may_end |= SessionState::LISTEN,
        N::DeclareCursorStmt(d) if d.options & CURSOR_OPT_HOLD != 0 => c.creates |= SessionState::HOLD_CURSOR,
        N::ClosePortalStmt(p) if p.portalname.is_empty() => c.ends |= SessionState::HOLD_CURSOR,
        N::ClosePortalStmt(_) => c.may_end |= SessionState::HOLD_CURSOR,
        N::DoStmt(_) => c.creates |= SessionState::DO_BLOCK,
        N::VariableSetStmt(v) if v.name.eq_ignore_ascii_case("session_authorization") => {
            // SET SESSION AUTHORIZATION x has a value; DEFAULT and RESET have none.
            // x may be the login user, which leaves nothing to carry: the
            // server is asked at the transaction's end.
            if v.args.is_empty() {
                c.ends |= SessionState::SESSION_AUTHORIZATION;
            } else {
                c.creates |= SessionState::SESSION_AUTHORIZATION;
                c.may_end |= SessionState::SESSION_AUTHORIZATION;
            }
        }
        N::DiscardStmt(d) => {
            use pg_query::protobuf::DiscardMode as M;
            c.ends |= match M::try_from(d.target) {
                Ok(M::DiscardTemp) => SessionState::TEMP,
                Ok(M::DiscardSequences) => SessionState::SEQUENCE,
                Ok(M::DiscardPlans) => SessionState::NONE,
                _ => SessionState::ALL,
            };
        }
        _ => {}
    }
    c
}

/// The name of the relation `node` creates as temporary, if it does.
pub(crate) fn temp_relation(node: &N) -> Option<String> {
    let rel = match node {
        N::CreateStmt(s) => s.relation.as_ref(),
        N::CreateTableAsStmt(s) => s.into.as_ref().and_then(|i| i.rel.as_ref()),
        N::ViewStmt(s) => s.view.as_ref(),
        N::CreateSeqStmt(s) => s.sequence.as_ref(),
        N::SelectStmt(s) => s.into_clause.as_ref().and_then(|i| i.rel.as_ref()),
        _ => None,
    }?;
    // An ON COMMIT DROP table is gone with its transaction.
    let on_commit_drop = |on_commit: i32| on_commit == pg_query::protobuf::OnCommitAction::OncommitDrop as i32;
    let dropped = match node {
        N::CreateStmt(s) => on_commit_drop(s.oncommit),
        N::CreateTableAsStmt(s) => s.into.as_ref().is_some_and(|i| on_commit_drop(i.on_commit)),
        _ => false,
    };
    (!dropped && temp_if(Some(rel)) == SessionState::TEMP).then(|| rel.relname.clone())
}

/// `pg_temp.x` or `CREATE TEMP ...`.
fn temp_if(rel: Option<&RangeVar>) -> SessionState {
    match rel {
        Some(r) if r.relpersistence == "t" || is_temp_schema(&r.schemaname) => SessionState::TEMP,
        _ => SessionState::NONE,
    }
}

/// The session's temporary schema: `pg_temp`, or its real name
/// `pg_temp_<n>` (which a client can read from `pg_namespace`).
pub fn is_temp_schema(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    match lower.strip_prefix("pg_temp") {
        Some("") => true,
        Some(rest) => rest.strip_prefix('_').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

/// Whether a `search_path` value may name the temporary schema: an
/// unqualified CREATE then makes a temporary object when it comes first
/// (or when the schemas before it do not exist).
pub fn mentions_temp_schema(search_path: &str) -> bool {
    search_path.to_ascii_lowercase().contains("pg_temp")
}

/// Whether the statement creates an object under an unqualified name,
/// which PostgreSQL puts in the first existing schema of the search_path:
/// the temporary schema if the search_path names it first.
pub(crate) fn creates_by_search_path(node: &N) -> bool {
    let unqualified = |rel: Option<&RangeVar>| rel.is_some_and(|r| r.schemaname.is_empty() && r.relpersistence != "t");
    let unqualified_name = |name: &[pg_query::Node]| name.len() == 1;
    match node {
        N::CreateStmt(s) => unqualified(s.relation.as_ref()),
        N::CreateTableAsStmt(s) => unqualified(s.into.as_ref().and_then(|i| i.rel.as_ref())),
        N::ViewStmt(s) => unqualified(s.view.as_ref()),
        N::CreateSeqStmt(s) => unqualified(s.sequence.as_ref()),
        N::SelectStmt(s) => unqualified(s.into_clause.as_ref().and_then(|i| i.rel.as_ref())),
        N::CompositeTypeStmt(s) => unqualified(s.typevar.as_ref()),
        N::CreateStatsStmt(s) => unqualified_name(&s.defnames),
        N::CreateFunctionStmt(s) => unqualified_name(&s.funcname),
        N::DefineStmt(s) => unqualified_name(&s.defnames),
        N::CreateDomainStmt(s) => unqualified_name(&s.domainname),
        N::CreateEnumStmt(s) => unqualified_name(&s.type_name),
        N::CreateRangeStmt(s) => unqualified_name(&s.type_name),
        _ => false,
    }
}

/// A qualified name (`pg_temp.x`) in the temporary schema.
fn temp_name_if(name: &[pg_query::Node]) -> SessionState {
    let schema = match name {
        [schema, _] | [_, schema, _] => schema,
        _ => return SessionState::NONE,
    };
    match &schema.node {
        Some(N::String(s)) if is_temp_schema(&s.sval) => SessionState::TEMP,
        _ => SessionState::NONE,
    }
}

/// The session state a call of `name` (parts of a possibly qualified name)
/// creates or ends.
pub(crate) fn of_function(name: &[String]) -> SessionStateChange {
    let mut c = SessionStateChange::default();
    let Some(last) = name.last() else {
        return c;
    };
    match last.to_ascii_lowercase().as_str() {
        "pg_advisory_lock" | "pg_advisory_lock_shared" | "pg_try_advisory_lock" | "pg_try_advisory_lock_shared" => {
            c.creates |= SessionState::ADVISORY_LOCK
        }
        "pg_advisory_unlock_all" => c.ends |= SessionState::ADVISORY_LOCK,
        "pg_advisory_unlock" | "pg_advisory_unlock_shared" => c.may_end |= SessionState::ADVISORY_LOCK,
        "nextval" | "setval" => c.creates |= SessionState::SEQUENCE,
        // SQL run from text is as unseen as a DO block's.
        _ if crate::functions::runs_sql_text(name) => c.creates |= SessionState::DO_BLOCK,
        _ => {}
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze;

    #[test]
    fn the_temp_schema_by_either_name() {
        for name in ["pg_temp", "PG_TEMP", "pg_temp_3", "pg_temp_12"] {
            assert!(is_temp_schema(name), "{name}");
        }
        for name in ["pg_temp_", "pg_temp_x", "pg_temporary", "public", "pg_toast_temp_3", ""] {
            assert!(!is_temp_schema(name), "{name}");
        }
        assert_eq!(change("CREATE TABLE pg_temp_3.t (a int)").creates, SessionState::TEMP);
        assert_eq!(
            change("CREATE FUNCTION pg_temp_3.f() RETURNS int LANGUAGE sql AS 'SELECT 1'").creates,
            SessionState::TEMP
        );
    }

    #[test]
    fn unqualified_creates_and_temp_search_paths() {
        for sql in [
            "CREATE TABLE t (a int)",
            "SELECT 1 AS a INTO t",
            "CREATE TABLE t AS SELECT 1",
            "CREATE VIEW v AS SELECT 1",
            "CREATE SEQUENCE s",
            "CREATE TYPE c AS (a int)",
            "CREATE TYPE e AS ENUM ('a')",
            "CREATE DOMAIN d AS int",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "SELECT 1; CREATE MATERIALIZED VIEW m AS SELECT 1",
        ] {
            assert!(analyze(sql, &[]).creates_by_search_path, "{sql}");
        }
        for sql in [
            "CREATE TABLE public.t (a int)",
            "CREATE TEMP TABLE t (a int)",
            "SELECT 1",
            "CREATE INDEX ON t (a)",
            "INSERT INTO t VALUES (1)",
        ] {
            assert!(!analyze(sql, &[]).creates_by_search_path, "{sql}");
        }
        for sql in [
            "SET search_path = pg_temp, public",
            "SET LOCAL search_path TO \"$user\", pg_temp",
            "SET search_path = PG_TEMP_4",
            "SELECT set_config('search_path', 'pg_temp,public', false)",
            "SELECT set_config('search_path', $1, false)",
            "SELECT set_config($1, $2, false)",
        ] {
            assert!(analyze(sql, &[]).temp_search_path, "{sql}");
        }
        for sql in [
            "SET search_path = public",
            "SELECT set_config('search_path', 'public', false)",
            "SET work_mem = '4MB'",
            "RESET search_path",
        ] {
            assert!(!analyze(sql, &[]).temp_search_path, "{sql}");
        }
    }

    #[test]
    fn calls_of_functions_that_are_not_postgres_own() {
        for sql in [
            "SELECT my_func()",
            "SELECT public.now()",
            "CALL my_proc()",
            "SELECT 1 FROM t WHERE a = app.f(1)",
            "INSERT INTO t VALUES (f())",
        ] {
            assert!(analyze(sql, &[]).calls_unknown_function, "{sql}");
        }
        for sql in [
            "SELECT now(), count(*), lower('A') FROM t",
            "SELECT pg_catalog.set_config('a.b', 'c', false)",
            "SELECT 1",
            "SET x.y = 1",
        ] {
            assert!(!analyze(sql, &[]).calls_unknown_function, "{sql}");
        }
    }

    fn change(sql: &str) -> SessionStateChange {
        analyze(sql, &[]).session_state
    }

    #[test]
    fn creating_statements() {
        for (sql, kind) in [
            ("CREATE TEMP TABLE t (a int)", SessionState::TEMP),
            ("create temporary table t as select 1", SessionState::TEMP),
            ("CREATE TABLE pg_temp.t (a int)", SessionState::TEMP),
            ("CREATE TEMP VIEW v AS SELECT 1", SessionState::TEMP),
            ("CREATE TEMP SEQUENCE s", SessionState::TEMP),
            ("SELECT 1 INTO TEMP t", SessionState::TEMP),
            ("CREATE STATISTICS pg_temp.s ON a, b FROM t", SessionState::TEMP),
            ("CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'", SessionState::TEMP),
            ("CREATE TYPE pg_temp.e AS ENUM ('a')", SessionState::TEMP),
            ("CREATE DOMAIN pg_temp.d AS int", SessionState::TEMP),
            ("CREATE TYPE pg_temp.c AS (a int)", SessionState::TEMP),
            ("LISTEN ch", SessionState::LISTEN),
            ("SELECT pg_advisory_lock(1)", SessionState::ADVISORY_LOCK),
            ("SELECT pg_catalog.PG_TRY_ADVISORY_LOCK_SHARED(1, 2)", SessionState::ADVISORY_LOCK),
            ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", SessionState::HOLD_CURSOR),
            ("SET SESSION AUTHORIZATION alice", SessionState::SESSION_AUTHORIZATION),
            ("SELECT nextval('s')", SessionState::SEQUENCE),
            ("INSERT INTO t VALUES (nextval('s'))", SessionState::SEQUENCE),
            ("DO $$BEGIN NULL; END$$", SessionState::DO_BLOCK),
        ] {
            assert_eq!(change(sql).creates, kind, "{sql}");
        }
    }

    #[test]
    fn statements_without_session_state() {
        for sql in [
            "CREATE TABLE t (a int)",
            "CREATE UNLOGGED TABLE t (a int)",
            "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "CREATE STATISTICS s ON a, b FROM t",
            "SELECT pg_advisory_xact_lock(1)",
            "DECLARE c CURSOR FOR SELECT 1",
            "SELECT currval('s')",
            "SET search_path = x",
            "SELECT 1",
        ] {
            assert!(change(sql).creates.is_empty(), "{sql}");
        }
    }

    #[test]
    fn ending_statements() {
        for (sql, kind) in [
            ("DISCARD ALL", SessionState::ALL),
            ("DISCARD TEMP", SessionState::TEMP),
            ("DISCARD SEQUENCES", SessionState::SEQUENCE),
            ("UNLISTEN *", SessionState::LISTEN),
            ("SELECT pg_advisory_unlock_all()", SessionState::ADVISORY_LOCK),
            ("CLOSE ALL", SessionState::HOLD_CURSOR),
            ("RESET SESSION AUTHORIZATION", SessionState::SESSION_AUTHORIZATION),
            ("SET SESSION AUTHORIZATION DEFAULT", SessionState::SESSION_AUTHORIZATION),
        ] {
            assert_eq!(change(sql).ends, kind, "{sql}");
        }
        assert!(change("UNLISTEN ch").ends.is_empty());
        assert!(change("CLOSE c").ends.is_empty());
    }

    #[test]
    fn statements_that_may_end_state() {
        for (sql, kind) in [
            ("DROP TABLE t", SessionState::TEMP),
            ("DROP VIEW IF EXISTS v, w", SessionState::TEMP),
            ("DROP SEQUENCE s", SessionState::TEMP),
            ("DROP FUNCTION pg_temp.f()", SessionState::TEMP),
            ("DROP OWNED BY CURRENT_USER", SessionState::TEMP),
            ("CREATE TEMP TABLE t (a int) ON COMMIT DROP", SessionState::TEMP),
            ("CREATE TEMP TABLE t ON COMMIT DROP AS SELECT 1", SessionState::TEMP),
            ("UNLISTEN ch", SessionState::LISTEN),
            ("CLOSE c", SessionState::HOLD_CURSOR),
            ("SELECT pg_advisory_unlock(1)", SessionState::ADVISORY_LOCK),
            ("SELECT pg_advisory_unlock_shared(1, 2)", SessionState::ADVISORY_LOCK),
            ("SET SESSION AUTHORIZATION alice", SessionState::SESSION_AUTHORIZATION),
        ] {
            assert_eq!(change(sql).may_end, kind, "{sql}");
        }
        assert!(change("CREATE TEMP TABLE t (a int)").may_end.is_empty());
        assert!(change("UNLISTEN *").may_end.is_empty());
        assert!(change("SELECT pg_advisory_unlock_all()").may_end.is_empty());
    }

    #[test]
    fn names_of_a_set() {
        let s = SessionState::TEMP | SessionState::LISTEN;
        assert_eq!(s.names().collect::<Vec<_>>(), vec!["temp", "listen"]);
        assert!(s.without(SessionState::TEMP) == SessionState::LISTEN);
    }
}
