//! The argument values of a SQL-level `EXECUTE name(...)`, so that the
//! router can place the prepared statement's `$n` keys as it places a
//! Bind's parameters.

use pg_query::protobuf::{a_const::Val, node::Node as N, AConst};

use crate::lexer::{Lexer, Tok};

/// The statement of `PREPARE name [(types)] AS statement`: the text after
/// `AS`, whose `$n` the EXECUTE's arguments fill. `None` when the text is
/// not shaped so.
pub fn prepared_query(sql: &str) -> Option<&str> {
    let mut tokens = Lexer::new(sql).map_while(Result::ok).filter(|(t, _, _)| !matches!(t, Tok::Space | Tok::Comment));
    let word = |(t, s, e): (Tok, usize, usize), w: &str| t == Tok::Ident && sql[s..e].eq_ignore_ascii_case(w);
    if !word(tokens.next()?, "prepare") || !matches!(tokens.next()?.0, Tok::Ident | Tok::QuotedIdent) {
        return None;
    }
    let mut next = tokens.next()?;
    if next.0 == Tok::Other && &sql[next.1..next.2] == "(" {
        let mut depth = 1;
        while depth > 0 {
            let (t, s, e) = tokens.next()?;
            match (t, &sql[s..e]) {
                (Tok::Other, "(") => depth += 1,
                (Tok::Other, ")") => depth -= 1,
                _ => {}
            }
        }
        next = tokens.next()?;
    }
    if !word(next, "as") {
        return None;
    }
    let (_, start, _) = tokens.next()?;
    Some(sql[start..].trim_end())
}

/// Each argument of the one `EXECUTE` in `sql` as the text PostgreSQL's
/// input function would read (`None` for NULL), in order. `None` when the
/// text is not one EXECUTE or an argument is not a constant (optionally
/// cast or negated): the router cannot know its value then.
pub fn execute_params(sql: &str) -> Option<Vec<Option<String>>> {
    let parsed = std::panic::catch_unwind(|| pg_query::parse(sql, 0)).ok()?.ok()?;
    let [one] = parsed.protobuf.stmts.as_slice() else {
        return None;
    };
    let Some(N::ExecuteStmt(exec)) = one.stmt.as_ref().and_then(|s| s.node.as_ref()) else {
        return None;
    };
    exec.params.iter().map(|p| argument(p.node.as_ref()?)).collect()
}

/// One argument's value; the outer `None`: not a constant.
fn argument(node: &N) -> Option<Option<String>> {
    match node {
        N::AConst(c) => constant(c),
        // `'5'::bigint`, `CAST(5 AS int)`: the cast's input is the value
        // the key compares with (the statement's own casts still apply).
        N::TypeCast(t) => argument(t.arg.as_ref()?.node.as_ref()?),
        // `-5` with a non-literal sign (`- 5`, `-(5)`), as the scanner
        // folds a leading minus into the number otherwise.
        N::AExpr(e) if e.lexpr.is_none() && is_minus(&e.name) => {
            let value = argument(e.rexpr.as_ref()?.node.as_ref()?)??;
            let number = value.bytes().next().is_some_and(|b| b.is_ascii_digit() || b == b'.');
            number.then(|| Some(format!("-{value}")))
        }
        _ => None,
    }
}

fn constant(c: &AConst) -> Option<Option<String>> {
    if c.isnull {
        return Some(None);
    }
    Some(Some(match c.val.as_ref()? {
        Val::Ival(i) => i.ival.to_string(),
        Val::Fval(f) => f.fval.clone(),
        Val::Boolval(b) => b.boolval.to_string(),
        Val::Sval(s) => s.sval.clone(),
        Val::Bsval(_) => return None,
    }))
}

fn is_minus(name: &[pg_query::protobuf::Node]) -> bool {
    matches!(name, [n] if matches!(&n.node, Some(N::String(s)) if s.sval == "-"))
}

#[cfg(test)]
mod tests {
    use super::execute_params;

    fn some(values: &[Option<&str>]) -> Option<Vec<Option<String>>> {
        Some(values.iter().map(|v| v.map(str::to_string)).collect())
    }

    #[test]
    fn constants_casts_signs_and_nulls() {
        assert_eq!(execute_params("EXECUTE q(5, 'a''b', NULL)"), some(&[Some("5"), Some("a'b"), None]));
        assert_eq!(
            execute_params("execute q('7'::bigint, -3, - 4, 1.5)"),
            some(&[Some("7"), Some("-3"), Some("-4"), Some("1.5")])
        );
        assert_eq!(execute_params("EXECUTE q"), some(&[]));
        assert_eq!(execute_params("EXECUTE q(99999999999999999999)"), some(&[Some("99999999999999999999")]));
    }

    #[test]
    fn the_statement_of_a_prepare() {
        use super::prepared_query;
        assert_eq!(
            prepared_query("PREPARE q(bigint) AS SELECT * FROM o WHERE k = $1"),
            Some("SELECT * FROM o WHERE k = $1")
        );
        assert_eq!(
            prepared_query("prepare \"Q\" (numeric(10, 2), text) /* c */ as\n  UPDATE o SET v = $2 WHERE k = $1 "),
            Some("UPDATE o SET v = $2 WHERE k = $1")
        );
        assert_eq!(prepared_query("PREPARE q AS SELECT 1"), Some("SELECT 1"));
        assert_eq!(prepared_query("PREPARE q SELECT 1"), None);
        assert_eq!(prepared_query("EXECUTE q"), None);
    }

    #[test]
    fn anything_computed_is_unknown() {
        assert_eq!(execute_params("EXECUTE q(1 + 1)"), None);
        assert_eq!(execute_params("EXECUTE q(now())"), None);
        assert_eq!(execute_params("EXECUTE q(-'a')"), None);
        assert_eq!(execute_params("SELECT 1"), None);
        assert_eq!(execute_params("EXECUTE a(1); EXECUTE b(2)"), None);
    }
}
