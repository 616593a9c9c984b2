//! Routing a SQL-level `EXECUTE name(...)` on a sharded database: the keys
//! are `$n` of the `PREPARE`d text and their values are the EXECUTE's
//! arguments, so the prepared statement is planned as a Bind of those
//! values would be. One shard: the EXECUTE runs there (the statement is
//! re-created on that server as on any other). Several shards would need
//! the fan-out's rewritten text, which an EXECUTE cannot carry: 0A000.

use pgrouter_parser::shard::{execute_params, prepared_query};
use pgrouter_parser::{Analysis, StatementKind};

use super::session::Session;
use crate::router::{self, BindParams, Refusal, ShardChoice, ShardMap, Values};

impl Session {
    /// The shard of `EXECUTE name(...)` (`analysis` is the EXECUTE's own),
    /// or the refusal saying why not.
    pub(super) fn plan_execute(
        &self,
        analysis: &Analysis,
        sql: Option<&str>,
        map: &ShardMap,
        sharding_key: Option<&str>,
        explain: bool,
    ) -> Result<Option<ShardChoice>, Refusal> {
        let prepare_sql = match analysis.statements.as_slice() {
            [s] => match &s.kind {
                StatementKind::Execute { name } => {
                    self.sql_prepared.get(name).map(|p| p.prepare_sql.clone())
                }
                _ => None,
            },
            _ => None,
        };
        let (Some(prepare_sql), Some(args)) = (prepare_sql, sql.and_then(execute_params)) else {
            return Err(refusal("whose arguments are not constants"));
        };
        // The PREPARE itself plans as "runs nothing": its statement is
        // planned on its own text, where the keys' `$n` are the same.
        let Some(query) = prepared_query(&prepare_sql) else {
            return Err(refusal("whose statement the router cannot read"));
        };
        let statement = self.analyze(query);
        let bind = bind_body(&args);
        let Some(params) = BindParams::parse(&bind) else {
            return Err(refusal("whose arguments are not constants"));
        };
        let values = Values::Bind {
            sql: query,
            params: &params,
            param_types: &[],
        };
        match router::plan_shard(&statement, &values, map, sharding_key, explain)? {
            Some(choice) if choice.many.is_none() => Ok(Some(choice)),
            _ => Err(refusal("that needs several shards")),
        }
    }
}

/// The parameters part of a Bind body carrying `args` in text format.
fn bind_body(args: &[Option<String>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0i16.to_be_bytes()); // every parameter in text
    out.extend_from_slice(&(args.len() as i16).to_be_bytes());
    for arg in args {
        match arg {
            Some(text) => {
                out.extend_from_slice(&(text.len() as i32).to_be_bytes());
                out.extend_from_slice(text.as_bytes());
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    out
}

fn refusal(what: &str) -> Refusal {
    Refusal {
        sqlstate: "0A000",
        message: format!(
            "pgrouter: EXECUTE of a SQL-level prepared statement on a sharded table {what} is not \
             supported; HINT: use the extended protocol (driver-prepared statements), give the shard \
             key as a constant argument, or add /* pgrouter: shard=N */ to the EXECUTE"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_body_reads_back_as_text_parameters() {
        let args = vec![Some("5".to_string()), None, Some(String::new())];
        let bind = bind_body(&args);
        let params = BindParams::parse(&bind).unwrap();
        assert_eq!(params.get(1), Some((0, Some(&b"5"[..]))));
        assert_eq!(params.get(2), Some((0, None)));
        assert_eq!(params.get(3), Some((0, Some(&b""[..]))));
    }
}
