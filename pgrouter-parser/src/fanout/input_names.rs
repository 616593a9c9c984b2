//! Whether a GROUP BY name is an input column. PostgreSQL reads a bare
//! GROUP BY name as a column of the FROM clause when there is one, and
//! only otherwise as an output name (`SELECT k % 2 AS k ... GROUP BY k`
//! groups by the column k). The router does not know the tables'
//! columns, so it asks one shard's catalog with the query built here.

use pg_query::protobuf::{self as pb, node::Node as N};

use super::Unsupported;

/// The query returning those of `names` that are columns of the FROM
/// clause's tables (one row each); `None` when there is no FROM clause,
/// so no input column at all. A FROM clause of anything but tables and
/// joins of tables (functions, column aliases) is refused: its columns
/// are not in `pg_attribute` under their names.
pub(super) fn probe(s: &pb::SelectStmt, names: &[String]) -> Result<Option<String>, Unsupported> {
    let mut tables = Vec::new();
    for item in &s.from_clause {
        if !collect_tables(item, &mut tables) {
            return Err(Unsupported::new(
                &format!(
                    "GROUP BY {}, an output name that may also be an input column of this FROM clause",
                    names.join(", ")
                ),
                "GROUP BY the expression or its position",
            ));
        }
    }
    if tables.is_empty() {
        return Ok(None);
    }
    let regclasses: Vec<String> = tables.iter().map(|t| format!("pg_catalog.to_regclass({})", literal(t))).collect();
    let names: Vec<String> = names.iter().map(|n| literal(n)).collect();
    Ok(Some(format!(
        "SELECT DISTINCT a.attname::pg_catalog.text FROM pg_catalog.pg_attribute a \
         WHERE a.attrelid IN ({}) AND a.attname IN ({}) AND NOT a.attisdropped",
        regclasses.join(", "),
        names.join(", ")
    )))
}

/// Adds the tables of one FROM item as quoted names; false for an item
/// whose column names are not its tables' own.
fn collect_tables(item: &pb::Node, out: &mut Vec<String>) -> bool {
    match &item.node {
        Some(N::RangeVar(r)) => {
            if r.alias.as_ref().is_some_and(|a| !a.colnames.is_empty()) {
                return false;
            }
            let mut name = String::new();
            if !r.schemaname.is_empty() {
                name.push_str(&ident(&r.schemaname));
                name.push('.');
            }
            name.push_str(&ident(&r.relname));
            out.push(name);
            true
        }
        Some(N::JoinExpr(j)) => {
            j.alias.as_ref().is_none_or(|a| a.colnames.is_empty())
                && j.larg.as_deref().is_some_and(|l| collect_tables(l, out))
                && j.rarg.as_deref().is_some_and(|r| collect_tables(r, out))
        }
        _ => false,
    }
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
