//! The one list of `[general]` field names, for the code that must treat
//! every key (a reload's diff, SHOW CONFIG's values). Each user also
//! destructures `General` with the list, so a field added to the struct
//! and not here is a compile error.

/// Calls `$callback!` with the name of every `General` field.
macro_rules! with_general_fields {
    ($callback:ident) => {
        $callback!(
            listen,
            workers,
            worker_spread_percent,
            pool_mode,
            default_pool_size,
            min_pool_size,
            connect_timeout_ms,
            checkout_timeout_ms,
            server_idle_timeout_ms,
            server_lifetime_ms,
            client_idle_timeout_ms,
            shutdown_timeout_ms,
            max_clients,
            max_message_size,
            read_write_split,
            load_balancing,
            healthcheck_interval_ms,
            ban_time_ms,
            write_functions,
            parse_cache_size,
            admin_database,
            admin_user,
            admin_password,
            metrics_listen,
            hot_reload,
            tls_certificate,
            tls_private_key,
            client_tls,
            server_tls,
            server_tls_ca,
            log_format,
            session_state,
            client_login_timeout_ms,
            idle_transaction_timeout_ms,
            query_timeout_ms,
            max_db_connections,
            max_user_connections,
            max_replica_lag_ms,
            read_your_writes,
        )
    };
}

pub(crate) use with_general_fields;
