//! `SELECT set_config('name', 'value', false)` calls whose effect is known
//! from the text alone, so the router can carry them to the client's other
//! server connections like a `SET` (pg_dump scripts start with
//! `SELECT pg_catalog.set_config('search_path', '', false);`).
//!
//! A call counts only when it certainly runs exactly once with those
//! arguments: a plain `SELECT` list with no FROM, WHERE, GROUP BY, HAVING,
//! LIMIT, set operation or CTE, where the call is an entry of its own with a
//! string literal name (not a guarded setting such as `role`), a string
//! literal value and a literal `false`. Any other call (in a subquery, under
//! a condition, with computed arguments, `is_local` not literally false, or
//! a `pgrouter.*` setting)
//! stays unknown, and the router resets the server connection after it
//! instead (see `Analysis::calls_set_config`).

use crate::analysis::SessionSetting;
use crate::functions::{is_guarded_setting, is_set_config};
use pg_query::protobuf::{a_const::Val, node::Node as N, FuncCall, SelectStmt, SetOperation};
use pg_query::Node;

/// The session settings `select` certainly makes, if every one of its
/// `calls` set_config calls (as counted by the walk) is such a call.
pub(crate) fn certain_settings(select: &SelectStmt, calls: usize, statement: usize) -> Option<Vec<SessionSetting>> {
    if !is_plain_target_list(select) {
        return None;
    }
    let mut found = Vec::new();
    for target in &select.target_list {
        let Some(N::ResTarget(t)) = &target.node else { continue };
        if let Some(N::FuncCall(f)) = t.val.as_ref().and_then(|v| v.node.as_ref()) {
            if let Some((name, value)) = session_call(f) {
                found.push(SessionSetting { statement, name, value });
            }
        }
    }
    (found.len() == calls).then_some(found)
}

/// `SELECT a, b, ...` and nothing else that could skip or repeat an entry.
fn is_plain_target_list(s: &SelectStmt) -> bool {
    s.op() == SetOperation::SetopNone
        && s.from_clause.is_empty()
        && s.where_clause.is_none()
        && s.group_clause.is_empty()
        && s.having_clause.is_none()
        && s.window_clause.is_empty()
        && s.values_lists.is_empty()
        && s.sort_clause.is_empty()
        && s.limit_count.is_none()
        && s.limit_offset.is_none()
        && s.locking_clause.is_empty()
        && s.with_clause.is_none()
        && s.into_clause.is_none()
}

/// `[pg_catalog.]set_config('name', 'value', false)` with a name the router
/// may track: (lower-case name, value).
fn session_call(f: &FuncCall) -> Option<(String, String)> {
    let name: Vec<String> = f
        .funcname
        .iter()
        .filter_map(|n| match &n.node {
            Some(N::String(s)) => Some(s.sval.clone()),
            _ => None,
        })
        .collect();
    let schema_ok = name.len() == 1 || (name.len() == 2 && name[0] == "pg_catalog");
    let plain_call = f.agg_filter.is_none() && f.over.is_none() && f.agg_order.is_empty() && !f.func_variadic;
    if !is_set_config(&name) || !schema_ok || !plain_call || f.args.len() != 3 {
        return None;
    }
    let setting = string_literal(&f.args[0])?.to_ascii_lowercase();
    let value = string_literal(&f.args[1])?;
    // `pgrouter.*` settings steer routing: only `SET` may change them, where
    // the session's policy sees it (a read-only session may not ask for the
    // primary).
    let steers_routing = setting.starts_with("pgrouter.");
    if is_guarded_setting(&setting)
        || steers_routing
        || setting.trim() != setting
        || setting.is_empty()
        || !is_false(&f.args[2])
    {
        return None;
    }
    Some((setting, value))
}

/// A string constant, possibly cast (`'x'::text`).
fn string_literal(n: &Node) -> Option<String> {
    match n.node.as_ref()? {
        N::AConst(c) => match &c.val {
            Some(Val::Sval(s)) => Some(s.sval.clone()),
            _ => None,
        },
        N::TypeCast(t) => string_literal(t.arg.as_ref()?),
        _ => None,
    }
}

/// The literal `false` (or the string `'false'` / `'f'`).
fn is_false(n: &Node) -> bool {
    match n.node.as_ref() {
        Some(N::AConst(c)) => match &c.val {
            Some(Val::Boolval(b)) => !b.boolval,
            Some(Val::Sval(s)) => matches!(s.sval.to_ascii_lowercase().as_str(), "false" | "f"),
            _ => false,
        },
        Some(N::TypeCast(t)) => t.arg.as_ref().is_some_and(|a| is_false(a)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use crate::analyze;
    use crate::SessionSetting;

    fn settings(sql: &str) -> (Vec<(usize, String, String)>, bool) {
        let a = analyze(sql, &[]);
        let s =
            a.session_settings.into_iter().map(|SessionSetting { statement, name, value }| (statement, name, value));
        (s.collect(), a.calls_set_config)
    }

    fn one(statement: usize, name: &str, value: &str) -> Vec<(usize, String, String)> {
        vec![(statement, name.to_string(), value.to_string())]
    }

    #[test]
    fn certain_calls_are_settings() {
        assert_eq!(
            settings("SELECT pg_catalog.set_config('search_path', '', false);"),
            (one(0, "search_path", ""), false)
        );
        assert_eq!(settings("SELECT set_config('Work_Mem', '8MB', false) AS x"), (one(0, "work_mem", "8MB"), false));
        assert_eq!(
            settings("SELECT set_config('myapp.tenant'::text, '42'::text, 'f')"),
            (one(0, "myapp.tenant", "42"), false)
        );
        let (s, unknown) = settings("SELECT 1; SELECT set_config('a.b', 'x', false), set_config('a.c', 'y', false)");
        assert_eq!(s, vec![(1, "a.b".into(), "x".into()), (1, "a.c".into(), "y".into())]);
        assert!(!unknown);
    }

    #[test]
    fn uncertain_calls_stay_unknown() {
        for sql in [
            "SELECT set_config('work_mem', '8MB', true)",
            "SELECT set_config('work_mem', '8MB', $1)",
            "SELECT set_config('work_mem', $1, false)",
            "SELECT set_config($1, '8MB', false)",
            "SELECT set_config('work_mem', NULL, false)",
            "SELECT set_config('work_mem', '8MB', false) WHERE false",
            "SELECT set_config('work_mem', '8MB', false) FROM generate_series(1, 2)",
            "SELECT set_config('work_mem', '8MB', false) LIMIT 0",
            "SELECT lower(set_config('work_mem', '8MB', false))",
            "SELECT CASE WHEN random() < 0.5 THEN set_config('work_mem', '8MB', false) END",
            "SELECT (SELECT set_config('work_mem', '8MB', false))",
            "SELECT set_config('work_mem', '8MB', false) UNION ALL SELECT '1'",
            "SELECT myschema.set_config('work_mem', '8MB', false)",
            "SELECT set_config('role', 'admin', false)",
            "SELECT set_config('pgrouter.role', 'primary', false)",
            "SELECT set_config('work_mem', '8MB', false), set_config('work_mem', '9MB', 1 = 2)",
            "UPDATE pg_settings SET setting = '8MB' WHERE name = 'work_mem'",
        ] {
            let (s, unknown) = settings(sql);
            assert!(s.is_empty() && unknown, "{sql}: {s:?} {unknown}");
        }
    }
}
