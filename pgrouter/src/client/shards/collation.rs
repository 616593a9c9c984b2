//! The collations of a merged read's result columns, asked of one shard
//! before the read runs.
//!
//! The merge compares text by its bytes, which is exact only for a
//! collation that orders by bytes (or, for GROUP BY and DISTINCT, a
//! deterministic one). A column's collation comes from its declaration
//! (`pg_attribute.attcollation`), a `COLLATE` clause anywhere in its
//! expression, or the database default (whose locale provider matters: an
//! ICU default has `datcollate` C.UTF-8 yet orders by the ICU locale). The
//! RowDescription carries none of it, so the shard SQL is wrapped in a
//! subquery that returns no row, and `pg_collation_for` on its output
//! columns names each one's collation — PostgreSQL's own derivation.

use std::collections::HashMap;

use bytes::BytesMut;
use pgrouter_parser::fanout::{Col, CollationUse, ReadPlan};

use super::held::Leg;
use super::unit::{execute_all, Unit};
use super::ShardError;
use crate::fanout::merge::Collation;
use crate::protocol::{backend, frontend};
use crate::server::ServerError;

/// What one shard says of the result columns before a merged read.
pub(super) struct Probed {
    pub collations: HashMap<Col, Collation>,
    /// The probed columns of enum types.
    pub enums: Vec<Col>,
}

/// The collations of the columns `plan` depends on, as `leg`'s server
/// derives them, and which of them are enums; `None` when the merge
/// depends on no collation (so compares no GROUP BY or DISTINCT keys).
pub(super) async fn probe(
    leg: &mut Leg,
    unit: &Unit,
    plan: &ReadPlan,
) -> Result<Option<Probed>, ShardError> {
    let cols: Vec<Col> = plan
        .merge
        .collation_columns()
        .into_iter()
        .map(|(c, _): (Col, CollationUse)| c)
        .collect();
    if cols.is_empty() {
        return Ok(None);
    }
    let sql = probe_sql(&plan.shard_sql, &cols);
    let mut request = BytesMut::new();
    match &unit.extended {
        None => frontend::query(&mut request, &sql),
        Some(e) => {
            let rest = without_result_formats(&e.bind_rest)
                .ok_or_else(|| ShardError::router("08P01", "pgrouter: malformed Bind message"))?;
            frontend::write_parse(&mut request, "", &sql, &e.param_types);
            frontend::write_bind(&mut request, "", "", &rest);
            execute_all(&mut request);
            frontend::sync(&mut request);
        }
    }
    let rows = match leg.held.conn.request_rows(&request).await {
        Ok(rows) => rows,
        // The statement's own error (the probe is the statement), as is.
        Err(ServerError::Postgres(f)) => {
            let mut m = BytesMut::new();
            backend::error_response(&mut m, backend::Severity::Error, &f.code, &f.message);
            return Err(ShardError::Server(m.freeze().slice(5..)));
        }
        Err(e) => return Err(ShardError::lost(leg.shard, &e)),
    };
    let row = rows.into_iter().next().unwrap_or_default();
    let collations = cols
        .iter()
        .zip(row.iter().chain(std::iter::repeat(&None)))
        .map(|(c, v)| (*c, classify(v.as_deref())))
        .collect();
    let enums = row
        .get(cols.len())
        .cloned()
        .flatten()
        .map(|s| {
            s.split(',')
                .filter_map(|i| cols.get(i.parse::<usize>().ok()?).copied())
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(Probed { collations, enums }))
}

fn classify(v: Option<&str>) -> Collation {
    match v {
        Some("b") => Collation::Bytes,
        Some("d") => Collation::Deterministic,
        _ => Collation::Other,
    }
}

/// Whether the database default orders by bytes: a libc default of C,
/// POSIX or C.* or the builtin provider ('b' when so, else 'd'). The
/// provider column exists from PostgreSQL 15 on; before, it is libc.
const DATABASE_DEFAULT: &str =
    "(SELECT CASE WHEN COALESCE(pg_catalog.to_jsonb(d) ->> 'datlocprovider', 'c') = 'b' \
     OR (COALESCE(pg_catalog.to_jsonb(d) ->> 'datlocprovider', 'c') = 'c' \
     AND (d.datcollate IN ('C', 'POSIX') OR d.datcollate ILIKE 'C.%')) THEN 'b' ELSE 'd' END \
     FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())";

/// One row, one column per `cols`: 'b' (orders by bytes), 'd' (another
/// deterministic collation) or 'o' (nondeterministic or not found).
fn probe_sql(shard_sql: &str, cols: &[Col]) -> String {
    let name = |c: &Col| match c {
        Col::Visible(i) => format!("pgrouter_c{}", i + 1),
        Col::Hidden(j) => format!("pgrouter_hidden_{}", j + 1),
    };
    let width = cols
        .iter()
        .filter_map(|c| match c {
            Col::Visible(i) => Some(i + 1),
            Col::Hidden(_) => None,
        })
        .max()
        .unwrap_or(0);
    let aliases = if width == 0 {
        String::new()
    } else {
        let list: Vec<String> = (1..=width).map(|i| format!("pgrouter_c{i}")).collect();
        format!("({})", list.join(", "))
    };
    let exprs: Vec<String> = cols
        .iter()
        .map(|c| {
            format!(
                "(SELECT CASE WHEN NOT c.collisdeterministic THEN 'o' \
                 WHEN c.collprovider = 'd' THEN {DATABASE_DEFAULT} \
                 WHEN c.collprovider = 'b' THEN 'b' \
                 WHEN c.collprovider = 'c' AND (c.collcollate IN ('C', 'POSIX') OR c.collcollate ILIKE 'C.%') THEN 'b' \
                 ELSE 'd' END FROM pg_catalog.pg_collation c \
                 WHERE c.oid = pg_catalog.to_regcollation(pg_catalog.pg_collation_for(pgrouter_s.{}::pg_catalog.text)))",
                name(c)
            )
        })
        .collect();
    // Last, which of the columns (by position in `cols`) are of enum
    // types: their labels are keys.
    let is_enum: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "CASE WHEN (SELECT t.typtype FROM pg_catalog.pg_type t \
                 WHERE t.oid = pg_catalog.pg_typeof(pgrouter_s.{})) = 'e' THEN '{i}' END",
                name(c)
            )
        })
        .collect();
    let enums = format!("pg_catalog.concat_ws(',', {})", is_enum.join(", "));
    format!(
        "SELECT {}, {enums} FROM (SELECT 1) AS pgrouter_one LEFT JOIN \
         (SELECT * FROM ({shard_sql}) AS pgrouter_q LIMIT 0) AS pgrouter_s{aliases} ON true",
        exprs.join(", ")
    )
}

/// A Bind's rest (parameter formats, values, result formats) asking for
/// every result column in text.
fn without_result_formats(rest: &[u8]) -> Option<Vec<u8>> {
    let count = |at: usize| -> Option<usize> {
        Some(i16::from_be_bytes([*rest.get(at)?, *rest.get(at + 1)?]) as usize)
    };
    let mut at = 2 + 2 * count(0)?;
    let nvalues = count(at)?;
    at += 2;
    for _ in 0..nvalues {
        let len = i32::from_be_bytes(rest.get(at..at + 4)?.try_into().ok()?);
        at += 4 + len.max(0) as usize;
    }
    let mut out = rest.get(..at)?.to_vec();
    out.extend_from_slice(&0i16.to_be_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_names_visible_and_hidden_columns() {
        let sql = probe_sql("SELECT a, b FROM t", &[Col::Visible(1), Col::Hidden(0)]);
        assert!(
            sql.contains("AS pgrouter_s(pgrouter_c1, pgrouter_c2) ON true"),
            "{sql}"
        );
        assert!(
            sql.contains("pgrouter_s.pgrouter_c2::pg_catalog.text"),
            "{sql}"
        );
        assert!(
            sql.contains("pgrouter_s.pgrouter_hidden_1::pg_catalog.text"),
            "{sql}"
        );
    }

    #[test]
    fn bind_rest_loses_its_result_formats() {
        let rest = [0, 0, 0, 1, 0, 0, 0, 1, b'7', 0, 2, 0, 1, 0, 0];
        assert_eq!(
            without_result_formats(&rest).unwrap(),
            vec![0, 0, 0, 1, 0, 0, 0, 1, b'7', 0, 0]
        );
    }
}
