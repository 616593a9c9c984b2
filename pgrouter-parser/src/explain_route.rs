//! `EXPLAIN (ROUTE)` of a statement PostgreSQL's EXPLAIN does not take.
//!
//! PostgreSQL's grammar accepts EXPLAIN only of SELECT, DML, VALUES,
//! EXECUTE, DECLARE and CREATE TABLE AS / MATERIALIZED VIEW, so pg_query
//! rejects `EXPLAIN (ROUTE) CREATE INDEX ...`, `... TRUNCATE ...`, `...
//! COPY ...` — exactly the statements whose route (every shard, shard by
//! shard) a user most wants to see. The router answers EXPLAIN (ROUTE)
//! itself, so it reads such a text as the option plus the statement after it.

/// The statement after a leading `EXPLAIN (ROUTE)` (any case, blanks and
/// comments around the words), or `None` when the text does not start so.
pub(crate) fn explained(sql: &str) -> Option<&str> {
    let mut rest = sql;
    for word in ["explain", "(", "route", ")"] {
        rest = skip_blanks(rest);
        let head = rest.get(..word.len())?;
        if !head.eq_ignore_ascii_case(word) {
            return None;
        }
        rest = &rest[word.len()..];
        // A word must end there (`explainx`, `routes` are not these words).
        let ends = rest.bytes().next().is_none_or(|b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'$'));
        if word.len() > 1 && !ends {
            return None;
        }
    }
    Some(rest)
}

/// `s` without its leading whitespace and comments (`-- ...` to the end of
/// the line, `/* ... */` nested as PostgreSQL nests them).
fn skip_blanks(mut s: &str) -> &str {
    loop {
        let trimmed = s.trim_start();
        if let Some(after) = trimmed.strip_prefix("--") {
            s = after.find('\n').map_or("", |i| &after[i + 1..]);
        } else if trimmed.starts_with("/*") {
            let bytes = trimmed.as_bytes();
            let (mut depth, mut i) = (0usize, 0usize);
            loop {
                if i + 1 >= bytes.len() {
                    return ""; // unterminated: nothing follows
                }
                match (bytes[i], bytes[i + 1]) {
                    (b'/', b'*') => {
                        depth += 1;
                        i += 2;
                    }
                    (b'*', b'/') => {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => i += 1,
                }
            }
            s = &trimmed[i..];
        } else {
            return trimmed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::explained;

    #[test]
    fn finds_the_statement_after_the_option() {
        assert_eq!(explained("EXPLAIN (ROUTE) CREATE INDEX i ON t (a)"), Some(" CREATE INDEX i ON t (a)"));
        assert_eq!(explained("/* pgrouter: shard=1 */ explain(route)TRUNCATE t"), Some("TRUNCATE t"));
        assert_eq!(explained("-- c\n Explain /* x /* y */ */ ( Route ) COPY t FROM STDIN"), Some(" COPY t FROM STDIN"));
        assert_eq!(explained("EXPLAIN (ROUTES) x"), None);
        assert_eq!(explained("EXPLAIN (ROUTE, VERBOSE) x"), None);
        assert_eq!(explained("EXPLAINX (ROUTE) x"), None);
        assert_eq!(explained("EXPLAIN ANALYZE x"), None);
        assert_eq!(explained("SELECT 1"), None);
        assert_eq!(explained("/* unterminated"), None);
    }
}
