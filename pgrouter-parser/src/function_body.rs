//! Whether a `CREATE FUNCTION` / `CREATE PROCEDURE` body could change the
//! session's role or read-only state when it runs. A JWT session may run
//! only code the router has looked at: a function it creates is as
//! anonymous as a DO block, since the body is a string the statement's
//! parse tree does not open (`LANGUAGE plpgsql AS $$ BEGIN SET ROLE ...`).
//!
//! The check is lexical and errs on the side of refusing: the body's tokens
//! must not name the role or session authorization, `set_config`, the
//! guarded read-only settings, the built-ins that run SQL text, or
//! `EXECUTE` (dynamic SQL, whose text cannot be known). Strings are not
//! looked into: without `EXECUTE` or such a built-in, a string is never run.
//! Languages other than `sql` and `plpgsql` are not looked into at all.

use crate::functions::{is_guarded_setting, RUNS_SQL_TEXT};
use pg_query::protobuf::{node::Node as N, CreateFunctionStmt, KeywordKind, Token};

/// True when the body of `f` could change the role or read-only state (or
/// cannot be checked). A body given as `BEGIN ATOMIC ... END` is part of
/// the parse tree and checked with the rest of the statement.
pub(crate) fn may_escalate(f: &CreateFunctionStmt) -> bool {
    let mut language = None;
    let mut bodies = Vec::new();
    for option in &f.options {
        let Some(N::DefElem(d)) = &option.node else { continue };
        let arg = d.arg.as_ref().and_then(|a| a.node.as_ref());
        match (d.defname.as_str(), arg) {
            ("language", Some(N::String(s))) => language = Some(s.sval.to_ascii_lowercase()),
            ("as", Some(N::List(l))) => bodies.extend(l.items.iter().filter_map(|i| match &i.node {
                Some(N::String(s)) => Some(s.sval.as_str()),
                _ => None,
            })),
            _ => {}
        }
    }
    if bodies.is_empty() {
        return false;
    }
    match language.as_deref() {
        Some("sql" | "plpgsql") => bodies.iter().any(|b| body_may_escalate(b)),
        _ => true,
    }
}

/// The lexical check of one body (see the module comment).
fn body_may_escalate(body: &str) -> bool {
    let Ok(Ok(scan)) = std::panic::catch_unwind(|| pg_query::scan(body)) else {
        return true;
    };
    scan.tokens.iter().any(|t| {
        let text = body.get(t.start as usize..t.end as usize).unwrap_or_default();
        if t.keyword_kind != KeywordKind::NoKeyword as i32 {
            return [Token::Role, Token::Authorization, Token::Execute, Token::Do].iter().any(|k| t.token == *k as i32);
        }
        if t.token != Token::Ident as i32 {
            return false;
        }
        let name = text.trim_matches('"').to_ascii_lowercase();
        name == "set_config" || is_guarded_setting(&name) || RUNS_SQL_TEXT.contains(&name.as_str())
    })
}

#[cfg(test)]
mod tests {
    use crate::analyze;

    fn refused(sql: &str) -> bool {
        analyze(sql, &[]).escalation.function_body
    }

    #[test]
    fn bodies_that_could_change_the_role_are_flagged() {
        for sql in [
            "CREATE FUNCTION pg_temp.esc() RETURNS void LANGUAGE plpgsql AS $$BEGIN SET ROLE web_admin; END$$",
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS 'BEGIN RESET ROLE; END'",
            "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$SELECT set_config('role', 'x', false)$$",
            "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$SELECT pg_catalog.\"set_config\"('ro'||'le', 'x', false)$$",
            "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$BEGIN EXECUTE 'SET ROL' || 'E admin'; END$$",
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$BEGIN SET SESSION AUTHORIZATION x; END$$",
            "CREATE FUNCTION f() RETURNS xml LANGUAGE sql AS $$SELECT query_to_xml('select 1', true, true, '')$$",
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$BEGIN SET default_transaction_read_only = off; END$$",
            "CREATE FUNCTION f() RETURNS int LANGUAGE plperl AS $$return 1$$",
            "CREATE FUNCTION f() RETURNS int AS $$SELECT 1$$ LANGUAGE SQL SET role = 'x'",
        ] {
            let a = analyze(sql, &[]);
            assert!(a.escalation.any(), "{sql}");
        }
        assert!(refused("CREATE FUNCTION f() RETURNS int LANGUAGE plperl AS $$return 1$$"));
        assert!(refused("CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS 'BEGIN $x$ unterminated'"));
    }

    #[test]
    fn ordinary_bodies_pass() {
        for sql in [
            "CREATE FUNCTION add(a int, b int) RETURNS int LANGUAGE sql IMMUTABLE AS $$SELECT a + b$$",
            "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$DECLARE n int; BEGIN SELECT count(*) INTO n FROM t; RETURN n; END$$",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END",
            // Strings are not run without EXECUTE.
            "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$SELECT 'SET ROLE admin'$$",
        ] {
            assert!(!refused(sql), "{sql}");
            assert!(!analyze(sql, &[]).escalation.any(), "{sql}");
        }
    }
}
