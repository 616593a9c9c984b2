//! pg_query's parse of a text, made safe to call from a client task.

use crate::analysis::Analysis;

/// The analysis of text that could not be parsed: primary, unchanged.
pub(crate) fn failed(message: String) -> Analysis {
    Analysis { is_write: true, parse_error: Some(message), literal_sensitive: true, ..Analysis::default() }
}

/// What pg_query made of a text.
pub(crate) enum Parsed {
    Tree(pg_query::ParseResult),
    /// Valid as far as pg_query can tell, but nested too deeply for the
    /// tree to reach Rust: prost refuses trees deeper than 100 messages
    /// (about 45 nested operators), and libpg_query stops at its own stack
    /// limit, which may be below the server's.
    TooDeep,
    Error(String),
}

pub(crate) fn parse(sql: &str) -> Parsed {
    // pg_query is C plus generated Rust; a panic in it must not end a client
    // task (nor, with panic=abort, the router).
    match std::panic::catch_unwind(|| pg_query::parse(sql, 0)) {
        Ok(Ok(result)) => Parsed::Tree(result),
        Ok(Err(pg_query::Error::Decode(_))) => Parsed::TooDeep,
        Ok(Err(pg_query::Error::Parse(m))) if m.contains("stack depth limit exceeded") => Parsed::TooDeep,
        Ok(Err(e)) => Parsed::Error(e.to_string()),
        Err(_) => Parsed::Error("pg_query panicked while parsing this statement".to_string()),
    }
}
