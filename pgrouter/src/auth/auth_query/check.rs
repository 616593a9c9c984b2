//! `[auth_query] query`, checked before it is used: at start-up, at
//! reload and by `pgrouter check`.

use pgrouter_config::AuthQuery;
use pgrouter_parser::StatementKind;

/// The query must be one SELECT that parses (it returns the row the login
/// is checked against). Why here: a typo would otherwise pass every check
/// and then fail each login of an `[auth_query]` user with a server error,
/// where a DBA wants `router.toml:LINE: auth_query.query` at once. Checked
/// with the router's own parser (PostgreSQL's), without a server.
pub fn check_offline(cfg: &AuthQuery) -> Result<(), String> {
    let analysis = pgrouter_parser::analyze(&cfg.query, &[]);
    if let Some(e) = &analysis.parse_error {
        return Err(format!("does not parse: {e}"));
    }
    match analysis.statements.as_slice() {
        [one] if one.kind == StatementKind::Select => Ok(()),
        [_] => Err(
            "must be a SELECT that returns the user's name and password \
                    (e.g. \"SELECT rolname, rolpassword FROM pg_authid WHERE rolname = $1\")"
                .into(),
        ),
        _ => Err("must be one statement".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(query: &str) -> Result<(), String> {
        check_offline(&AuthQuery {
            query: query.into(),
            ..AuthQuery::default()
        })
    }

    #[test]
    fn the_default_and_function_lookups_pass() {
        assert_eq!(check_offline(&AuthQuery::default()), Ok(()));
        assert_eq!(check("SELECT * FROM pgbouncer.get_auth($1)"), Ok(()));
    }

    #[test]
    fn typos_other_statements_and_several_are_refused() {
        let typo = check("SELEC rolname, rolpassword FROM pg_authid WHERE rolname = $1");
        let typo = typo.unwrap_err();
        assert!(
            typo.starts_with("does not parse: ") && typo.contains("syntax error"),
            "{typo}"
        );
        let delete = check("DELETE FROM pg_authid WHERE rolname = $1");
        assert!(delete.unwrap_err().starts_with("must be a SELECT"));
        let two = check("SELECT 1 WHERE $1 = ''; SELECT 2");
        assert_eq!(two.unwrap_err(), "must be one statement");
    }
}
