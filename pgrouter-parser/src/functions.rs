//! Function calls that decide routing: functions that write (so a SELECT
//! calling them must run on the primary) and `set_config`, which can change
//! the role or read-only state like a SET.
//!
//! Names are compared without regard to ASCII case and, for the built-ins,
//! whatever schema the call names: a function that shadows a built-in's name
//! is treated like the built-in, which at worst sends a read to the primary.

/// Built-in functions that write, or that only work on the primary.
const WRITE_EXACT: &[&str] = &[
    "nextval",
    "setval",
    "txid_current",
    "pg_current_xact_id",
    "pg_notify",
    "lowrite",
    "loread",
    "pg_logical_emit_message",
    "pg_create_restore_point",
    "pg_switch_wal",
    "pg_create_logical_replication_slot",
    "pg_create_physical_replication_slot",
    "pg_drop_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_replication_origin_create",
    "pg_replication_origin_drop",
];

/// Whether a call of `name` (the parts of a possibly qualified name, as
/// pg_query gives them) writes: a built-in write function — `nextval`,
/// `setval`, every `pg_advisory*lock*` and `pg_try_advisory_*` (locks are
/// taken on the server that runs the call, so they must all be taken on the
/// primary), every large-object `lo_*`, `txid_current`, `pg_current_xact_id`,
/// ... — or one of the configured `write_functions`.
///
/// A configured name may be qualified (`audit.log_event`): it then matches a
/// call qualified with the same schema, and any unqualified call of
/// `log_event` (which search_path may resolve to it).
pub(crate) fn is_write_function(name: &[String], configured: &[String]) -> bool {
    let Some(last) = name.last() else {
        return false;
    };
    let lower = last.to_ascii_lowercase();
    let builtin = WRITE_EXACT.contains(&lower.as_str())
        || lower.starts_with("lo_")
        || lower.starts_with("pg_try_advisory_")
        || (lower.starts_with("pg_advisory") && lower.contains("lock"));
    if builtin {
        return true;
    }
    let call_schema = (name.len() >= 2).then(|| name[name.len() - 2].as_str());
    configured.iter().any(|entry| {
        let entry = entry.trim();
        let (schema, func) = match entry.rsplit_once('.') {
            Some((s, f)) => (Some(s), f),
            None => (None, entry),
        };
        func.eq_ignore_ascii_case(last)
            && match (schema, call_schema) {
                (Some(s), Some(c)) => s.eq_ignore_ascii_case(c),
                _ => true,
            }
    })
}

/// Built-ins whose result can differ between two servers running the same
/// statement at about the same time: random values, clocks (each shard's
/// transaction starts at its own instant), sequences and transaction ids
/// (each shard has its own), and facts of the server itself. A write to a
/// reference table runs on every shard, so a value from one of these would
/// leave the copies different.
const VARIES_BY_SERVER: &[&str] = &[
    "random",
    "random_normal",
    "setseed",
    "gen_random_uuid",
    "uuidv4",
    "uuidv7",
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
    "gen_random_bytes",
    "gen_salt",
    "now",
    "statement_timestamp",
    "transaction_timestamp",
    "clock_timestamp",
    "timeofday",
    "age",
    "nextval",
    "currval",
    "lastval",
    "setval",
    "txid_current",
    "txid_current_if_assigned",
    "txid_current_snapshot",
    "txid_status",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    "pg_current_snapshot",
    "pg_xact_status",
    "pg_xact_commit_timestamp",
    "mxid_age",
    "pg_backend_pid",
    "inet_server_addr",
    "inet_server_port",
    "inet_client_addr",
    "inet_client_port",
    "pg_postmaster_start_time",
    "pg_conf_load_time",
    "current_database",
    "version",
    "pg_current_wal_lsn",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_flush_lsn",
    "pg_sequence_last_value",
    "pg_database_size",
    "pg_relation_size",
    "pg_total_relation_size",
    "pg_table_size",
    "pg_indexes_size",
    "pg_tablespace_size",
];

/// Whether a call of `name`, in any schema and any case, may give each
/// server a different value (see [`VARIES_BY_SERVER`]; also every
/// `pg_stat*` function). User-defined functions are not known here.
pub(crate) fn varies_by_server(name: &[String]) -> bool {
    name.last().is_some_and(|n| {
        let lower = n.to_ascii_lowercase();
        VARIES_BY_SERVER.contains(&lower.as_str()) || lower.starts_with("pg_stat")
    })
}

/// Whether `name` is `set_config` in any schema and any case.
pub(crate) fn is_set_config(name: &[String]) -> bool {
    name.last().is_some_and(|n| n.eq_ignore_ascii_case("set_config"))
}

/// Built-ins that run SQL given to them as text (`query_to_xml('...')`,
/// `ts_stat('...')`, `ts_rewrite(q, '...')`): the router cannot see what
/// that SQL does, as with a DO block.
pub(crate) const RUNS_SQL_TEXT: &[&str] =
    &["query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "ts_stat", "ts_rewrite"];

/// Whether `name`, in any schema and any case, runs SQL given as text.
pub(crate) fn runs_sql_text(name: &[String]) -> bool {
    name.last().is_some_and(|n| RUNS_SQL_TEXT.iter().any(|f| n.eq_ignore_ascii_case(f)))
}

/// PostgreSQL's own function names, one per line (see the file's header).
const BUILTIN_FUNCTIONS: &str = include_str!("builtin_functions.txt");

/// Whether a call of `name` is one of PostgreSQL's own functions: a
/// built-in's name, unqualified or in `pg_catalog` / `information_schema`.
/// Any other function may leave session state behind that the router
/// cannot see (a setting, a temporary table, a lock, a LISTEN), so a
/// connection that ran one is cleaned before another client gets it. The
/// built-ins that do leave state are known by name elsewhere
/// (`set_config`, the advisory locks, `nextval`, [`RUNS_SQL_TEXT`]).
pub(crate) fn is_builtin_function(name: &[String]) -> bool {
    static NAMES: std::sync::OnceLock<std::collections::HashSet<&'static str>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        BUILTIN_FUNCTIONS.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect()
    });
    let (schema, function) = match name {
        [function] => (None, function),
        [schema, function] | [_, schema, function] => (Some(schema), function),
        _ => return false,
    };
    let builtin_schema =
        schema.is_none_or(|s| s.eq_ignore_ascii_case("pg_catalog") || s.eq_ignore_ascii_case("information_schema"));
    builtin_schema && names.contains(function.to_ascii_lowercase().as_str())
}

/// Settings that decide who the session is or whether it may write: a JWT
/// session must not change them, by SET or by `set_config`.
pub(crate) fn is_guarded_setting(setting: &str) -> bool {
    ["role", "session_authorization", "default_transaction_read_only", "transaction_read_only"]
        .iter()
        .any(|g| g.eq_ignore_ascii_case(setting.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Vec<String> {
        s.split('.').map(str::to_string).collect()
    }

    #[test]
    fn builtins() {
        for f in [
            "nextval",
            "pg_catalog.nextval",
            "SETVAL",
            "pg_advisory_lock",
            "pg_advisory_xact_lock_shared",
            "pg_advisory_unlock_all",
            "pg_try_advisory_lock",
            "lo_import",
            "lo_from_bytea",
            "txid_current",
            "pg_current_xact_id",
        ] {
            assert!(is_write_function(&n(f), &[]), "{f}");
        }
        for f in ["now", "lower", "txid_current_if_assigned", "pg_advisory", "count", "log"] {
            assert!(!is_write_function(&n(f), &[]), "{f}");
        }
    }

    #[test]
    fn configured() {
        let cfg = vec!["my_write_fn".to_string(), "Audit.Log_Event".to_string()];
        assert!(is_write_function(&n("my_write_fn"), &cfg));
        assert!(is_write_function(&n("public.MY_WRITE_FN"), &cfg));
        assert!(is_write_function(&n("audit.log_event"), &cfg));
        assert!(is_write_function(&n("log_event"), &cfg));
        assert!(!is_write_function(&n("other.log_event"), &cfg));
        assert!(!is_write_function(&n("my_read_fn"), &cfg));
    }

    #[test]
    fn builtin_functions_are_known_by_name_and_schema() {
        for f in [
            "now",
            "pg_catalog.NOW",
            "count",
            "set_config",
            "pg_advisory_lock",
            "jsonb_build_object",
            "information_schema._pg_expandarray",
            "generate_series",
        ] {
            assert!(is_builtin_function(&n(f)), "{f}");
        }
        for f in ["my_func", "public.now", "app.set_tenant", "db.pg_catalog.nope", "", "a.b.c.d"] {
            assert!(!is_builtin_function(&n(f)), "{f}");
        }
    }

    #[test]
    fn varying() {
        for f in [
            "random",
            "pg_catalog.NOW",
            "clock_timestamp",
            "gen_random_uuid",
            "nextval",
            "pg_stat_get_xact_tuples_inserted",
        ] {
            assert!(varies_by_server(&n(f)), "{f}");
        }
        for f in ["md5", "lower", "coalesce", "to_timestamp", "my_fn"] {
            assert!(!varies_by_server(&n(f)), "{f}");
        }
    }

    #[test]
    fn guarded() {
        assert!(is_guarded_setting("ROLE"));
        assert!(is_guarded_setting("transaction_read_only"));
        assert!(!is_guarded_setting("search_path"));
        assert!(is_set_config(&n("PUBLIC.Set_Config")));
    }
}
