//! What a session may do. JWT sessions run as the role their token names and
//! must never change it; read-only sessions must never write. Both are
//! enforced here, before a statement reaches any server.

use std::time::SystemTime;

use pgrouter_parser::{
    Analysis, DiscardKind, ResetTarget, RoleHint, SetKind, SetStatement, StatementKind, TxEffect,
};

/// The identity a verified token gave a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIdentity {
    pub username: String,
    /// The role every transaction runs under (`SET ROLE`).
    pub role: String,
    pub expires_at: Option<SystemTime>,
    /// The token itself, checked again after a reload (see
    /// `Session::check_jwt_still_accepted`).
    pub token: SessionToken,
    /// Logged in without TLS from a non-loopback address, which only
    /// `allow_insecure_transport = true` lets through: a reload that turns
    /// it off ends the session as it would refuse the login.
    pub insecure_transport: bool,
}

/// A session's JWT, kept to be checked again under a reloaded
/// configuration. A credential: `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SessionToken(std::sync::Arc<str>);

impl SessionToken {
    pub fn new(token: &str) -> SessionToken {
        SessionToken(token.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(..)")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub jwt: Option<JwtIdentity>,
    pub read_only: bool,
}

/// Why a statement is refused: SQLSTATE and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub sqlstate: &'static str,
    pub message: String,
}

fn refuse(sqlstate: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        sqlstate,
        message: message.into(),
    }
}

const READ_ONLY: &str = "25006";
const PRIVILEGE: &str = "42501";

impl Policy {
    /// Checks one query string (or one Parse) against the session's policy.
    pub fn check(&self, analysis: &Analysis) -> Result<(), Refusal> {
        if self.jwt.is_some() {
            self.check_jwt(analysis)?;
        }
        if self.read_only {
            self.check_read_only(analysis)?;
        }
        Ok(())
    }

    fn check_jwt(&self, analysis: &Analysis) -> Result<(), Refusal> {
        let e = &analysis.escalation;
        if e.set_role {
            return Err(refuse(
                PRIVILEGE,
                "pgrouter: a JWT session cannot change its role",
            ));
        }
        if e.session_authorization {
            return Err(refuse(
                PRIVILEGE,
                "pgrouter: a JWT session cannot change its session authorization",
            ));
        }
        if e.set_config_sensitive {
            return Err(refuse(
                PRIVILEGE,
                "pgrouter: a JWT session cannot call set_config() on role, session_authorization or read-only settings",
            ));
        }
        if e.do_block {
            return Err(refuse(
                PRIVILEGE,
                "pgrouter: DO blocks are not allowed in JWT sessions",
            ));
        }
        if e.runs_sql_text {
            return Err(refuse(
                PRIVILEGE,
                "pgrouter: a JWT session cannot run SQL given as text (query_to_xml, query_to_xmlschema, query_to_xml_and_xmlschema, ts_stat, ts_rewrite): the router cannot check it",
            ));
        }
        if e.function_body {
            return Err(refuse(
                PRIVILEGE,
                "pgrouter: a JWT session cannot create a function or procedure whose body could change its role or read-only state (it names ROLE, SESSION AUTHORIZATION, set_config, a read-only setting, EXECUTE, DO or a function that runs SQL text, or is not in LANGUAGE sql or plpgsql)",
            ));
        }
        for s in &analysis.statements {
            match &s.kind {
                StatementKind::Set(set) if turns_read_only_off(set) => {
                    return Err(refuse(
                        PRIVILEGE,
                        "pgrouter: a JWT session cannot change its read-only settings",
                    ));
                }
                StatementKind::Reset(ResetTarget::Name(n)) if is_read_only_setting(n) => {
                    return Err(refuse(
                        PRIVILEGE,
                        "pgrouter: a JWT session cannot change its read-only settings",
                    ));
                }
                StatementKind::Reset(ResetTarget::All)
                | StatementKind::Discard(DiscardKind::All)
                    if analysis.statements.len() > 1 =>
                {
                    return Err(refuse(
                        PRIVILEGE,
                        "pgrouter: in a JWT session RESET ALL and DISCARD ALL must be sent alone",
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    // Each arm owns its statements: a SET that passes its arm's check must
    // not fall through to a later arm, so the checks stay inside the arms.
    #[allow(clippy::collapsible_match)]
    fn check_read_only(&self, analysis: &Analysis) -> Result<(), Refusal> {
        if analysis.hint.role == Some(RoleHint::Primary) {
            return Err(refuse(
                READ_ONLY,
                "pgrouter: a read-only session cannot be routed to the primary",
            ));
        }
        for s in &analysis.statements {
            match &s.kind {
                StatementKind::Transaction(TxEffect::Begin {
                    read_only: Some(false),
                    ..
                }) => {
                    return Err(refuse(
                        READ_ONLY,
                        "pgrouter: a read-only session cannot start a read-write transaction",
                    ));
                }
                StatementKind::Set(set)
                    if set.kind == SetKind::TransactionCharacteristics
                        || set.kind == SetKind::SessionCharacteristics =>
                {
                    if set
                        .value
                        .as_deref()
                        .is_some_and(|v| v.to_ascii_uppercase().contains("READ WRITE"))
                    {
                        return Err(refuse(
                            READ_ONLY,
                            "pgrouter: a read-only session cannot start a read-write transaction",
                        ));
                    }
                }
                StatementKind::Set(set) if is_read_only_setting(&set.name) => {
                    if !set.value.as_deref().is_some_and(crate::router::is_on) {
                        return Err(refuse(
                            READ_ONLY,
                            "pgrouter: a read-only session cannot turn read-only mode off",
                        ));
                    }
                }
                StatementKind::Reset(ResetTarget::Name(n)) if is_read_only_setting(n) => {
                    return Err(refuse(
                        READ_ONLY,
                        "pgrouter: a read-only session cannot turn read-only mode off",
                    ));
                }
                StatementKind::Set(set) if set.name == "pgrouter.role" => {
                    if set
                        .value
                        .as_deref()
                        .is_some_and(|v| v.trim().eq_ignore_ascii_case("primary"))
                    {
                        return Err(refuse(
                            PRIVILEGE,
                            "pgrouter: a read-only session cannot be routed to the primary",
                        ));
                    }
                }
                _ => {}
            }
            // A statement pg_query could not parse runs nothing; PostgreSQL
            // reports the syntax error from a replica.
            if s.is_write && analysis.parse_error.is_none() {
                return Err(refuse(
                    READ_ONLY,
                    "pgrouter: cannot execute a write in a read-only session",
                ));
            }
        }
        Ok(())
    }
}

fn is_read_only_setting(name: &str) -> bool {
    name == "default_transaction_read_only" || name == "transaction_read_only"
}

/// A SET a JWT session may not run: one that may leave the read-only
/// settings off — `default_transaction_read_only` / `transaction_read_only`
/// set to anything but a clear "on" (DEFAULT and FROM CURRENT included), or
/// `SET SESSION CHARACTERISTICS AS TRANSACTION ... READ WRITE`. Turning
/// read-only on, or choosing an isolation level, changes nothing the token
/// granted: drivers do it on their own (pgjdbc's `setTransactionIsolation`
/// sends `SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL ...`,
/// `setReadOnly(true)` may send `... READ ONLY`), so those run.
fn turns_read_only_off(set: &SetStatement) -> bool {
    match set.kind {
        // `SET TRANSACTION READ WRITE` is `BEGIN READ WRITE`, which a
        // writable session may run (read-only ones get 25006 for both).
        SetKind::TransactionCharacteristics => false,
        SetKind::SessionCharacteristics => set
            .value
            .as_deref()
            .is_some_and(|v| v.to_ascii_uppercase().contains("READ WRITE")),
        _ if is_read_only_setting(&set.name) => {
            !set.value.as_deref().is_some_and(crate::router::is_on)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgrouter_parser::analyze;

    fn jwt(read_only: bool) -> Policy {
        Policy {
            jwt: Some(JwtIdentity {
                username: "u".into(),
                role: "r".into(),
                expires_at: None,
                token: SessionToken::default(),
                insecure_transport: false,
            }),
            read_only,
        }
    }

    fn code(p: &Policy, sql: &str) -> Option<&'static str> {
        p.check(&analyze(sql, &[])).err().map(|r| r.sqlstate)
    }

    #[test]
    fn jwt_sessions_cannot_escape_their_role() {
        let p = jwt(false);
        for sql in [
            "SET ROLE postgres",
            "SET SESSION ROLE postgres",
            "SET LOCAL ROLE postgres",
            "SET ROLE NONE",
            "RESET ROLE",
            "SET SESSION AUTHORIZATION postgres",
            "RESET SESSION AUTHORIZATION",
            "SELECT set_config('role', 'postgres', false)",
            "SELECT * FROM (SELECT pg_catalog.set_config('ROLE', 'x', false)) s",
            "WITH c AS (SELECT set_config('session_authorization', 'x', false)) SELECT * FROM c",
            "SELECT set_config('default_transaction_read_only', 'off', false)",
            "SELECT set_config('transaction_read_only', 'off', true)",
            "DO $$ BEGIN EXECUTE 'SET ROLE postgres'; END $$",
            "SELECT 1; SET ROLE postgres",
            "SET default_transaction_read_only = off",
            "SET default_transaction_read_only = DEFAULT",
            "SET SESSION default_transaction_read_only TO false",
            "SET LOCAL transaction_read_only = off",
            "SET transaction_read_only = off",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE",
            "SELECT set_config('default_transaction_read_only', 'on', false)",
            "RESET default_transaction_read_only",
            "SELECT 1; RESET ALL",
            "SELECT 1; DISCARD ALL",
        ] {
            assert_eq!(code(&p, sql), Some(PRIVILEGE), "{sql}");
        }
        for sql in [
            "SELECT 1",
            "SET search_path = a",
            "BEGIN READ WRITE",
            "RESET ALL",
            "DISCARD ALL",
            "INSERT INTO t VALUES (1)",
            "SET default_transaction_read_only = on",
            "SET transaction_read_only TO true",
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        ] {
            assert_eq!(code(&p, sql), None, "{sql}");
        }
    }

    #[test]
    fn read_only_sessions_cannot_write() {
        let p = Policy {
            jwt: None,
            read_only: true,
        };
        for sql in [
            "INSERT INTO t VALUES (1)",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "SELECT nextval('s')",
            "BEGIN READ WRITE",
            "START TRANSACTION READ WRITE",
            "SET default_transaction_read_only = off",
            "SET transaction_read_only = off",
            "/* pgrouter: role=primary */ SELECT 1",
            "COPY t FROM STDIN",
            "CREATE TABLE x (a int)",
            "SELECT * FROM t FOR UPDATE",
        ] {
            assert!(code(&p, sql).is_some(), "{sql}");
        }
        assert_eq!(code(&p, "SET pgrouter.role = 'primary'"), Some(PRIVILEGE));
        for sql in [
            "SELECT 1",
            "BEGIN",
            "BEGIN READ ONLY",
            "SET default_transaction_read_only = on",
            "SELEC 1",
            "SHOW x",
        ] {
            assert_eq!(code(&p, sql), None, "{sql}");
        }
    }
}
