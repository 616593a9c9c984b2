//! From pg_query's tree to an [`Analysis`]: one match on the statement type
//! for what the statement *is*, and one [`walk`] for what it contains. The
//! entry point that picks this or the fallback is `analyze.rs`.

use crate::analysis::*;
use crate::walk::{walk, Facts};
use crate::{set, set_config};
use pg_query::protobuf::{a_const::Val, node::Node as N, ObjectType, RawStmt, TransactionStmtKind};
use pg_query::protobuf::{DiscardMode, DropStmt, ExplainStmt, TransactionStmt};
use pg_query::Node;

/// Classifies the statements of a parsed text into `a`.
pub(crate) fn add_tree(stmts: &[RawStmt], write_functions: &[String], a: &mut Analysis) {
    for raw in stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) else {
            continue;
        };
        let info = statement(node, write_functions, a);
        a.is_write |= info.is_write;
        a.creates_by_search_path |= crate::session_state::creates_by_search_path(node);
        a.temp_relations.extend(crate::session_state::temp_relation(node));
        a.nested_executes.extend(nested_execute(node));
        a.statements.push(info);
    }
    a.temp_search_path = may_set_temp_search_path(a);
}

/// The prepared statement a CREATE TABLE AS or EXPLAIN runs (`... EXECUTE p`).
fn nested_execute(node: &N) -> Option<String> {
    let query = match node {
        N::CreateTableAsStmt(s) => s.query.as_ref(),
        N::ExplainStmt(e) => e.query.as_ref(),
        _ => None,
    }?;
    match query.node.as_ref()? {
        N::ExecuteStmt(e) => Some(e.name.clone()),
        _ => None,
    }
}

/// Whether the text may put the temporary schema on the search_path: a SET
/// of it naming `pg_temp`, a `set_config` of it, or a `set_config` the
/// router cannot read (see `Analysis::temp_search_path`).
fn may_set_temp_search_path(a: &Analysis) -> bool {
    use crate::session_state::mentions_temp_schema;
    let set = a.statements.iter().any(|s| match &s.kind {
        StatementKind::Set(SetStatement { name, value: Some(v), .. }) => {
            name == "search_path" && mentions_temp_schema(v)
        }
        _ => false,
    });
    let set_config = a.session_settings.iter().any(|s| s.name == "search_path" && mentions_temp_schema(&s.value));
    set || set_config || a.calls_set_config
}

/// Finds where each statement's shard keys are (see [`crate::shard`]).
/// The literals are located only when some statement names a table.
pub(crate) fn add_keys(stmts: &[RawStmt], sql: &str, a: &mut Analysis) {
    let starts = if a.tables.is_empty() { Vec::new() } else { crate::shard::literal_starts(sql) };
    for raw in stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) else {
            continue;
        };
        let (keys, sensitive) =
            if a.tables.is_empty() { Default::default() } else { crate::shard::statement_keys(node, sql, &starts) };
        a.literal_sensitive |= sensitive;
        a.keys.push(keys);
    }
}

/// Classifies one statement, adding its tables and flags to `a`.
fn statement(node: &N, write_functions: &[String], a: &mut Analysis) -> StatementInfo {
    // Walks the statement and folds what it found into `a`.
    let look = |a: &mut Analysis| -> Facts {
        let facts = walk(node, write_functions);
        for t in &facts.tables {
            let is_cte = !t.contains('.') && facts.ctes.iter().any(|c| c == t);
            if !is_cte && !a.tables.contains(t) {
                a.tables.push(t.clone());
            }
        }
        a.escalation.set_config_sensitive |= facts.set_config_sensitive;
        a.escalation.runs_sql_text |= facts.runs_sql_text;
        if a.varies_by_server.is_none() {
            a.varies_by_server.clone_from(&facts.varies_by_server);
        }
        a.literal_sensitive |= facts.set_config;
        a.calls_set_config |= facts.set_config;
        a.calls_unknown_function |= facts.unknown_function;
        for s in &facts.settings {
            set::flag_nested(s, &mut a.escalation);
        }
        a.session_state.merge(facts.session_state);
        facts
    };
    a.session_state.merge(crate::session_state::of_statement(node));
    let (kind, is_write) = match node {
        N::SelectStmt(select) => {
            let unknown_before = a.calls_set_config;
            let facts = look(a);
            if facts.set_config_calls > 0 && !facts.set_config_sensitive {
                let statement = a.statements.len();
                if let Some(known) = set_config::certain_settings(select, facts.set_config_calls, statement) {
                    a.session_settings.extend(known);
                    a.calls_set_config = unknown_before;
                }
            }
            (StatementKind::Select, facts.writes())
        }
        N::InsertStmt(_) => {
            look(a);
            (StatementKind::Insert, true)
        }
        N::UpdateStmt(_) => {
            look(a);
            (StatementKind::Update, true)
        }
        N::DeleteStmt(_) => {
            look(a);
            (StatementKind::Delete, true)
        }
        N::MergeStmt(_) => {
            look(a);
            (StatementKind::Merge, true)
        }
        N::ExplainStmt(e) => {
            let analyze = explain_analyze(e, a);
            // EXPLAIN ANALYZE EXECUTE runs a prepared statement this
            // analysis cannot see: count it as a write.
            let executes = matches!(e.query.as_ref().and_then(|q| q.node.as_ref()), Some(N::ExecuteStmt(_)));
            let inner = look(a).writes() || executes;
            let route = e
                .options
                .iter()
                .any(|o| matches!(&o.node, Some(N::DefElem(d)) if d.defname.eq_ignore_ascii_case("route")));
            if route {
                let inner_kind_writes = match e.query.as_ref().and_then(|q| q.node.as_ref()) {
                    Some(N::SelectStmt(_)) => inner,
                    Some(_) => true,
                    None => inner,
                };
                a.explain_route = Some(inner_kind_writes);
            }
            (StatementKind::Explain { analyze }, analyze && inner)
        }
        N::CopyStmt(c) => {
            let inner = look(a).writes();
            (StatementKind::Copy { from_stdin_or_file: c.is_from }, c.is_from || inner)
        }
        N::CallStmt(_) => {
            look(a);
            (StatementKind::Call, true)
        }
        N::DoStmt(_) => {
            a.escalation.do_block = true;
            (StatementKind::Do, true)
        }
        N::LockStmt(_) => {
            look(a);
            (StatementKind::Lock, true)
        }
        N::VacuumStmt(v) => {
            look(a);
            (if v.is_vacuumcmd { StatementKind::Vacuum } else { StatementKind::Analyze }, true)
        }
        N::TransactionStmt(t) => (StatementKind::Transaction(transaction(t, a)), false),
        N::VariableSetStmt(v) => {
            a.literal_sensitive = true;
            (set::classify(v, &mut a.escalation), false)
        }
        N::VariableShowStmt(_) => (StatementKind::Show, false),
        // The prepared query's classification: the router routes EXECUTE by it.
        N::PrepareStmt(p) => (StatementKind::Prepare { name: p.name.clone() }, look(a).writes()),
        // Parameters can call functions too: `EXECUTE p(nextval('s'))`.
        N::ExecuteStmt(e) => (StatementKind::Execute { name: e.name.clone() }, look(a).write_function),
        N::DeallocateStmt(d) => {
            let name = (!d.isall).then(|| d.name.clone());
            (StatementKind::Deallocate { name }, false)
        }
        // Notifications are delivered by the server that ran LISTEN and
        // sent by the one that ran NOTIFY: both must be the primary.
        N::ListenStmt(l) => (StatementKind::Listen { channel: l.conditionname.clone() }, true),
        N::UnlistenStmt(u) => {
            let channel = (!u.conditionname.is_empty()).then(|| u.conditionname.clone());
            (StatementKind::Unlisten { channel }, true)
        }
        N::NotifyStmt(n) => (StatementKind::Notify { channel: n.conditionname.clone() }, true),
        N::DiscardStmt(d) => (StatementKind::Discard(discard(d.target)), false),
        N::DeclareCursorStmt(_) => (StatementKind::DeclareCursor, look(a).writes()),
        N::FetchStmt(_) => (StatementKind::Fetch, false),
        N::ClosePortalStmt(_) => (StatementKind::ClosePortal, false),
        N::ConstraintsSetStmt(_) => (StatementKind::Other, false),
        N::CheckPointStmt(_) | N::LoadStmt(_) => (StatementKind::Other, true),
        N::DropStmt(d) => {
            look(a);
            dropped_tables(d, a);
            (StatementKind::Ddl, true)
        }
        N::CreateFunctionStmt(f) => {
            look(a);
            a.escalation.function_body |= crate::function_body::may_escalate(f);
            (StatementKind::Ddl, true)
        }
        // CREATE/ALTER/DROP/GRANT/..., CREATE TABLE AS, REFRESH, CLUSTER, REINDEX.
        _ => {
            look(a);
            (StatementKind::Ddl, true)
        }
    };
    StatementInfo { kind, is_write }
}

/// EXPLAIN runs the statement only with ANALYZE. An option value
/// (`ANALYZE off`, `ANALYZE 0`) may be a literal, so then the analysis is
/// literal-sensitive.
fn explain_analyze(e: &ExplainStmt, a: &mut Analysis) -> bool {
    let mut analyze = false;
    for opt in &e.options {
        let Some(N::DefElem(d)) = &opt.node else {
            continue;
        };
        if !d.defname.eq_ignore_ascii_case("analyze") {
            continue;
        }
        analyze = match d.arg.as_ref().and_then(|n| n.node.as_ref()) {
            None => true,
            Some(value) => {
                a.literal_sensitive = true;
                match value {
                    N::String(s) => !matches!(s.sval.to_ascii_lowercase().as_str(), "false" | "off" | "0"),
                    N::Integer(i) => i.ival != 0,
                    N::Boolean(b) => b.boolval,
                    _ => true,
                }
            }
        };
    }
    analyze
}

fn transaction(t: &TransactionStmt, a: &mut Analysis) -> TxEffect {
    use TransactionStmtKind as K;
    match K::try_from(t.kind).unwrap_or(K::Undefined) {
        K::TransStmtBegin | K::TransStmtStart => {
            let read_only = t.options.iter().find_map(|o| match &o.node {
                Some(N::DefElem(d)) if d.defname == "transaction_read_only" => {
                    match d.arg.as_ref().and_then(|n| n.node.as_ref()) {
                        Some(N::AConst(c)) => match &c.val {
                            Some(Val::Ival(i)) => Some(i.ival != 0),
                            _ => None,
                        },
                        _ => None,
                    }
                }
                _ => None,
            });
            if read_only == Some(false) {
                a.escalation.read_only_change = true;
            }
            let serializable = t.options.iter().find_map(|o| match &o.node {
                Some(N::DefElem(d)) if d.defname == "transaction_isolation" => {
                    match d.arg.as_ref().and_then(|n| n.node.as_ref()) {
                        Some(N::AConst(c)) => match &c.val {
                            Some(Val::Sval(s)) => Some(s.sval.eq_ignore_ascii_case("serializable")),
                            _ => None,
                        },
                        _ => None,
                    }
                }
                _ => None,
            });
            TxEffect::Begin { read_only, serializable }
        }
        K::TransStmtCommit => TxEffect::Commit,
        K::TransStmtRollback | K::Undefined => TxEffect::Rollback,
        K::TransStmtSavepoint => TxEffect::Savepoint,
        K::TransStmtRelease => TxEffect::Release,
        K::TransStmtRollbackTo => TxEffect::RollbackTo,
        K::TransStmtPrepare => TxEffect::PrepareTransaction,
        K::TransStmtCommitPrepared => TxEffect::CommitPrepared,
        K::TransStmtRollbackPrepared => TxEffect::RollbackPrepared,
    }
}

fn discard(target: i32) -> DiscardKind {
    match DiscardMode::try_from(target) {
        Ok(DiscardMode::DiscardPlans) => DiscardKind::Plans,
        Ok(DiscardMode::DiscardSequences) => DiscardKind::Sequences,
        Ok(DiscardMode::DiscardTemp) => DiscardKind::Temp,
        _ => DiscardKind::All,
    }
}

/// DROP TABLE/VIEW names its objects as name lists, not RangeVars.
fn dropped_tables(d: &DropStmt, a: &mut Analysis) {
    let table_like = matches!(
        ObjectType::try_from(d.remove_type),
        Ok(ObjectType::ObjectTable
            | ObjectType::ObjectView
            | ObjectType::ObjectMatview
            | ObjectType::ObjectForeignTable)
    );
    if !table_like {
        return;
    }
    for obj in &d.objects {
        let Some(N::List(list)) = &obj.node else {
            continue;
        };
        let name = list.items.iter().filter_map(string_of).collect::<Vec<_>>().join(".");
        if !name.is_empty() && !a.tables.contains(&name) {
            a.tables.push(name);
        }
    }
}

fn string_of(n: &Node) -> Option<&str> {
    match &n.node {
        Some(N::String(s)) => Some(s.sval.as_str()),
        _ => None,
    }
}
