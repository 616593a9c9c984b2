//! The analysis of a query string: pg_query's tree classified
//! (`classify`), or — for text nested too deeply for the tree — the
//! fallback's reading (`fallback`), or the record of a parse error; then
//! the routing hints in its comments.

use crate::analysis::{Analysis, Hint};
use crate::classify::{add_keys, add_tree};
use crate::parse::{failed, parse, Parsed};
use crate::{explain_route, fallback, hint};

/// Analyses one query string: statement kinds, read/write, tables, hints and
/// escalation attempts. `write_functions` are the configured extra function
/// names that make a statement a write (the built-ins are always on).
///
/// Never panics and never fails: text PostgreSQL's grammar rejects comes
/// back with `parse_error` set and `is_write` true, so the router sends it to
/// the primary and PostgreSQL reports the error. Text that is only too deeply
/// nested for a full analysis is not a parse error (PostgreSQL may well run
/// it): see the `fallback` module.
pub fn analyze(sql: &str, write_functions: &[String]) -> Analysis {
    let mut analysis = match parse(sql) {
        Parsed::Tree(result) => {
            let mut a = Analysis::default();
            add_tree(&result.protobuf.stmts, write_functions, &mut a);
            add_keys(&result.protobuf.stmts, sql, &mut a);
            a
        }
        Parsed::TooDeep => fallback::too_deep(sql, write_functions),
        Parsed::Error(message) => match explain_route::explained(sql) {
            // `EXPLAIN (ROUTE)` of a statement PostgreSQL cannot EXPLAIN
            // (DDL, COPY, ...): the statement's analysis, answered by the
            // router. Its literals are those of the whole text in the same
            // order (the words before it hold none), as planning reads them.
            Some(inner) => {
                let mut a = analyze(inner, write_functions);
                if a.parse_error.is_some() {
                    failed(message)
                } else {
                    a.explain_route = Some(true);
                    a
                }
            }
            None => failed(message),
        },
    };
    analysis.hint = hint::extract(sql);
    // `EXPLAIN (ROUTE) /* pgrouter: shard=2 */ SELECT ...`: the statement
    // explained, run, would follow its own leading hint, so its route does.
    if analysis.explain_route.is_some() && analysis.hint == Hint::default() {
        if let Some(inner) = explain_route::explained(sql) {
            analysis.hint = hint::extract(inner);
        }
    }
    if analysis.hint != Hint::default() {
        analysis.literal_sensitive = true;
    }
    analysis
}
