//! The answer [`crate::analyze`] gives: plain data the router decides on.
//!
//! Everything here is owned data with no reference to the SQL text or to
//! pg_query's tree, so one `Arc<Analysis>` can be shared by every client that
//! sends the same statement.

/// What the router needs to know about one query string (one simple-protocol
/// `Query` message or one `Parse`), computed once and cached.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Analysis {
    /// One entry per statement in the string, in order. An empty string or
    /// one made only of comments has none (PostgreSQL answers EmptyQueryResponse).
    pub statements: Vec<StatementInfo>,
    /// Any statement is a write, or the text could not be parsed: the string
    /// must run on the primary.
    pub is_write: bool,
    /// pg_query's message when PostgreSQL's grammar rejects the text (then
    /// `statements` is empty). PostgreSQL parses a whole query string before
    /// running any of it, so such a string runs nothing: the router sends it
    /// to the primary unchanged and lets PostgreSQL report the error. Text
    /// that is merely nested too deeply for a full analysis is *not* a parse
    /// error: it gets approximate, conservative statements instead.
    pub parse_error: Option<String>,
    /// Routing hint from a leading or trailing `/* pgrouter: ... */` comment.
    pub hint: Hint,
    /// Tables touched, schema-qualified as written (names as PostgreSQL folds
    /// them), without duplicates, in the tree's order (stable for a given
    /// statement, not always textual). References to CTEs are left out.
    pub tables: Vec<String>,
    /// Attempts to change the effective role or read-only state, which a JWT
    /// session must not make.
    pub escalation: Escalation,
    /// The analysis depends on a literal's value (SET values, `set_config`
    /// arguments, EXPLAIN option values), on a hint comment, or it is a parse
    /// error or an approximate analysis of a too deeply nested statement.
    /// Such an analysis is never shared with another text that differs only
    /// in literals (see [`crate::normalize_key`]).
    pub literal_sensitive: bool,
    /// Some `set_config()` call anywhere: it may change any session setting
    /// behind the router's back, so the server connection must be reset
    /// before another client uses it.
    pub calls_set_config: bool,
    /// Some call of a function that is not one of PostgreSQL's own (see
    /// `functions::is_builtin_function`): it may leave any session state
    /// behind, unseen, so the server connection is cleaned (`DISCARD ALL`)
    /// before another client uses it.
    pub calls_unknown_function: bool,
    /// Some statement creates an object under an unqualified name (CREATE
    /// TABLE t, SELECT ... INTO t, CREATE FUNCTION f, ...): it lands in the
    /// temporary schema when the session's search_path names `pg_temp`
    /// first, which the router must then treat as temporary state.
    pub creates_by_search_path: bool,
    /// Some statement may put the temporary schema on the session's
    /// search_path (`SET search_path = pg_temp, public`, a `set_config` of
    /// it, or a `set_config` call whose arguments are not known).
    pub temp_search_path: bool,
    /// Relations the text creates as temporary (`CREATE TEMP TABLE t`,
    /// `CREATE VIEW pg_temp.v`, `SELECT ... INTO TEMP t`, ...), by name
    /// without schema: on a sharded database they live on one shard only,
    /// so later DDL naming them must run there, not on every shard.
    pub temp_relations: Vec<String>,
    /// SQL-level prepared statements run from inside another statement
    /// (`CREATE TABLE t AS EXECUTE p`, `EXPLAIN EXECUTE p`): the router
    /// must have them on the server like a plain `EXECUTE p`.
    pub nested_executes: Vec<String>,
    /// `set_config(name, value, false)` calls known to run, in order (see
    /// the `set_config` module): the router tracks them like `SET`. Calls
    /// it cannot be sure of leave `calls_set_config` set instead.
    pub session_settings: Vec<SessionSetting>,
    /// Session-scoped state the string creates or ends that the router
    /// cannot carry to another server connection (see `session_state`).
    pub session_state: crate::SessionStateChange,
    /// Where each statement's shard keys are (see [`crate::shard`]), one
    /// entry per statement. Empty when the text was not fully analysed
    /// (a parse error, or too deeply nested): then no key can be found.
    pub keys: Vec<crate::shard::StatementKeys>,
    /// The first call in the string whose value may differ between servers
    /// (`random()`, `now()`, `CURRENT_TIMESTAMP`, `nextval(...)`, ...): a
    /// write to a reference table must not use one, or the copies on the
    /// shards would differ. User-defined functions are not recognised.
    pub varies_by_server: Option<String>,
    /// `EXPLAIN (ROUTE) statement`, which the router answers itself (PostgreSQL
    /// has no such option): `Some(w)`, where `w` says the explained
    /// statement is a write.
    pub explain_route: Option<bool>,
}

/// A session-level `set_config` call whose effect is known from the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSetting {
    /// Index of the statement in [`Analysis::statements`].
    pub statement: usize,
    /// The setting's name, lower case.
    pub name: String,
    /// The value, as `set_config` receives it.
    pub value: String,
}

/// One statement of a query string.
#[derive(Debug, Clone, PartialEq)]
pub struct StatementInfo {
    /// What kind of statement it is, with the details the router acts on.
    pub kind: StatementKind,
    /// It must run on the primary (see the crate documentation for the rules).
    pub is_write: bool,
}

/// The statement kinds the router treats differently. Everything that is
/// only "some DDL" is [`StatementKind::Ddl`]; utility statements with no
/// routing meaning of their own are [`StatementKind::Other`].
#[derive(Debug, Clone, PartialEq)]
pub enum StatementKind {
    /// SELECT, VALUES, TABLE (also `SELECT ... INTO`, which is a write).
    Select,
    /// INSERT.
    Insert,
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
    /// MERGE.
    Merge,
    /// CREATE/ALTER/DROP/TRUNCATE/GRANT/REVOKE/COMMENT/... and the maintenance
    /// commands REFRESH MATERIALIZED VIEW, CLUSTER, REINDEX: runs on the
    /// primary (of every shard).
    Ddl,
    /// COPY; `from_stdin_or_file` is true for COPY ... FROM (data flows in).
    Copy {
        /// COPY FROM (STDIN, a file or a program): the table is written.
        from_stdin_or_file: bool,
    },
    /// CALL of a procedure.
    Call,
    /// DO block (anonymous code: can do anything, including SET ROLE).
    Do,
    /// LOCK TABLE.
    Lock,
    /// VACUUM.
    Vacuum,
    /// ANALYZE on its own (not EXPLAIN ANALYZE).
    Analyze,
    /// EXPLAIN; `analyze` when the statement is really executed.
    Explain {
        /// EXPLAIN ANALYZE (or `ANALYZE true` among the options).
        analyze: bool,
    },
    /// BEGIN, COMMIT, savepoints, two-phase commit.
    Transaction(TxEffect),
    /// SET (and the SET-like forms: SET ROLE, SET TIME ZONE, SET TRANSACTION ...).
    Set(SetStatement),
    /// RESET name / RESET ALL.
    Reset(ResetTarget),
    /// SHOW.
    Show,
    /// SQL-level `PREPARE name AS ...`; the statement's `is_write` is that of
    /// the prepared query, so the router can route a later EXECUTE by it.
    Prepare {
        /// Prepared statement name (as PostgreSQL folds it).
        name: String,
    },
    /// SQL-level `EXECUTE name(...)`: routed by the router from the PREPARE it saw.
    Execute {
        /// Prepared statement name.
        name: String,
    },
    /// `DEALLOCATE name` / `DEALLOCATE ALL` (`name` is None).
    Deallocate {
        /// None for DEALLOCATE ALL.
        name: Option<String>,
    },
    /// LISTEN channel (runs on the primary: notifications are sent there).
    Listen {
        /// Channel name.
        channel: String,
    },
    /// UNLISTEN channel / UNLISTEN * (`channel` is None).
    Unlisten {
        /// None for `UNLISTEN *`.
        channel: Option<String>,
    },
    /// NOTIFY channel [, payload].
    Notify {
        /// Channel name.
        channel: String,
    },
    /// DISCARD ALL | PLANS | SEQUENCES | TEMP.
    Discard(DiscardKind),
    /// DECLARE ... CURSOR FOR query (`is_write` is the query's).
    DeclareCursor,
    /// FETCH or MOVE.
    Fetch,
    /// CLOSE cursor / CLOSE ALL.
    ClosePortal,
    /// Any other utility statement (CHECKPOINT, LOAD, SET CONSTRAINTS, ...).
    Other,
}

/// What a transaction-control statement does, for the router's transaction
/// tracking and two-phase commit.
#[derive(Debug, Clone, PartialEq)]
pub enum TxEffect {
    /// BEGIN / START TRANSACTION; `read_only` from READ ONLY / READ WRITE
    /// (None when not given: the session default applies).
    Begin {
        /// Some(true) for READ ONLY, Some(false) for READ WRITE.
        read_only: Option<bool>,
        /// Some(true) for ISOLATION LEVEL SERIALIZABLE, Some(false) for
        /// another level (None when not given: the session default applies).
        /// A hot standby refuses serializable transactions.
        serializable: Option<bool>,
    },
    /// COMMIT / END (also `AND CHAIN`).
    Commit,
    /// ROLLBACK / ABORT.
    Rollback,
    /// SAVEPOINT name.
    Savepoint,
    /// `RELEASE [SAVEPOINT] name`.
    Release,
    /// `ROLLBACK TO [SAVEPOINT] name`.
    RollbackTo,
    /// PREPARE TRANSACTION 'gid'.
    PrepareTransaction,
    /// COMMIT PREPARED 'gid'.
    CommitPrepared,
    /// ROLLBACK PREPARED 'gid'.
    RollbackPrepared,
}

/// A SET statement, so the router can track session state and replay it on
/// whichever server connection the client gets next.
#[derive(Debug, Clone, PartialEq)]
pub struct SetStatement {
    /// Lower-case GUC name: `search_path`, `timezone`, `role`,
    /// `session_authorization`, `pgrouter.role`, ... For the multi-option
    /// forms it is PostgreSQL's internal name in lower case:
    /// `transaction`, `session characteristics`, `transaction snapshot`.
    pub name: String,
    /// The value as PostgreSQL would store it for the simple cases: list
    /// values joined with `", "`, and for list GUCs such as `search_path`
    /// each element quoted as an identifier when needed (`a, "B c"`).
    /// None for DEFAULT / FROM CURRENT. For the transaction forms it is the
    /// options in SQL spelling, e.g. `ISOLATION LEVEL SERIALIZABLE, READ ONLY`.
    pub value: Option<String>,
    /// SET LOCAL: lasts until the end of the transaction only.
    pub local: bool,
    /// Which spelling of SET this is.
    pub kind: SetKind,
}

/// The spelling of a SET statement; the router treats some of them specially.
#[derive(Debug, Clone, PartialEq)]
pub enum SetKind {
    /// `SET name = value`.
    Value,
    /// `SET name TO DEFAULT` (`value` is None).
    Default,
    /// `SET name FROM CURRENT` (`value` is None).
    FromCurrent,
    /// `SET SESSION CHARACTERISTICS AS TRANSACTION ...`.
    SessionCharacteristics,
    /// `SET TIME ZONE ...` (name `timezone`; `value` None for DEFAULT/LOCAL).
    TimeZone,
    /// `SET ROLE ...` or `SET role = ...` (name `role`; `SET ROLE NONE` has value `none`).
    Role,
    /// `SET SESSION AUTHORIZATION ...` (value None for DEFAULT).
    SessionAuthorization,
    /// `SET TRANSACTION ...` (also `SET TRANSACTION SNAPSHOT`).
    TransactionCharacteristics,
}

/// What a RESET statement resets.
#[derive(Debug, Clone, PartialEq)]
pub enum ResetTarget {
    /// RESET ALL.
    All,
    /// RESET name (lower case; `RESET ROLE` is `role`, `RESET TIME ZONE` is `timezone`).
    Name(String),
}

/// Which DISCARD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscardKind {
    /// DISCARD ALL.
    All,
    /// DISCARD PLANS.
    Plans,
    /// DISCARD SEQUENCES.
    Sequences,
    /// DISCARD TEMP / TEMPORARY.
    Temp,
}

/// A routing hint written in a comment at the start or end of the text:
/// `/* pgrouter: role=primary shard=3 */`. It applies to this text only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hint {
    /// `role=primary` or `role=replica`.
    pub role: Option<RoleHint>,
    /// `shard=N`.
    pub shard: Option<u32>,
}

/// Where a hint asks the statement to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleHint {
    /// The primary.
    Primary,
    /// A replica.
    Replica,
}

/// Ways a statement tries to change the effective role or read-only state.
/// A JWT session's role and read-only state are set by the router, so the
/// router refuses these (SQLSTATE 42501). All false for ordinary statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Escalation {
    /// `SET [SESSION|LOCAL] ROLE ...`, `SET role = ...`, `SET ROLE NONE`,
    /// `RESET ROLE`, or a `role` setting inside a function definition or
    /// `ALTER ... SET` (which applies it when the function runs).
    /// RESET ALL is not flagged: the router performs it itself.
    pub set_role: bool,
    /// `SET/RESET SESSION AUTHORIZATION` (or such a setting nested in a definition).
    pub session_authorization: bool,
    /// A call of `set_config()` anywhere in the statement (any schema, any
    /// case) whose first argument names `role`, `session_authorization`,
    /// `default_transaction_read_only` or `transaction_read_only`, or is not
    /// a literal (its value cannot be known here, so it counts).
    pub set_config_sensitive: bool,
    /// `SET [LOCAL] default_transaction_read_only / transaction_read_only`
    /// (any value, DEFAULT and RESET included), `SET [SESSION
    /// CHARACTERISTICS AS] TRANSACTION READ WRITE`, `BEGIN / START
    /// TRANSACTION READ WRITE`.
    pub read_only_change: bool,
    /// `DO` block: anonymous code that could do any of the above.
    pub do_block: bool,
    /// A call of a built-in that runs SQL given as text (`query_to_xml`,
    /// `ts_stat`, `ts_rewrite`): that SQL could do any of the above.
    pub runs_sql_text: bool,
    /// `CREATE FUNCTION` / `PROCEDURE` whose body could do any of the above
    /// when it runs (see `function_body.rs`).
    pub function_body: bool,
}

impl Escalation {
    /// Any flag is set.
    pub fn any(&self) -> bool {
        self.set_role
            || self.session_authorization
            || self.set_config_sensitive
            || self.read_only_change
            || self.do_block
            || self.runs_sql_text
            || self.function_body
    }
}
