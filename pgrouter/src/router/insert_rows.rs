//! The shard of every VALUES row of an INSERT into a sharded table, for
//! splitting it per shard ([`pgrouter_parser::shard::split_insert`]).
//!
//! Values are read as the single-shard planner reads them (the text's
//! literals, the Bind's parameters in text or binary format), so a row goes
//! exactly where a one-row INSERT of it would: a NULL key where PostgreSQL
//! puts it (remainder 0 for hash), an invalid key refused with PostgreSQL's
//! own error (22P02 / 22003), an uncovered list/range value with 22023.

use pgrouter_parser::shard::{literal_values, InsertRows, KeyType, KeyValue, Literal, ValueRef};
use pgrouter_parser::{Analysis, StatementKind};

use super::shard_map::{ShardMap, ShardedTable};
use super::shard_plan::{key_error, unsupported, Values, UNREADABLE_LITERAL};
use super::shard_values::{literal_value, param_values};
use super::Refusal;

/// The shard of each VALUES row (in order) when `analysis` is one INSERT
/// into a sharded table; `None` for any other statement. INSERT ... SELECT
/// and DEFAULT VALUES into a sharded table are refused (0A000): their rows
/// are not known here.
pub fn insert_row_shards(
    analysis: &Analysis,
    values: &Values,
    map: &ShardMap,
) -> Result<Option<Vec<usize>>, Refusal> {
    let ([statement], [keys]) = (analysis.statements.as_slice(), analysis.keys.as_slice()) else {
        return Ok(None);
    };
    if !matches!(statement.kind, StatementKind::Insert) {
        return Ok(None);
    }
    let Some(rows) = &keys.insert else {
        return Ok(None);
    };
    let Some(table) = target(map, rows) else {
        return Ok(None);
    };
    let name = &rows.relation.name;
    let column = &table.column;
    if rows.from_query || rows.rows.is_empty() {
        return Err(unsupported(format!(
            "pgrouter: INSERT into sharded table \"{name}\" without a VALUES list (INSERT ... SELECT or \
             DEFAULT VALUES) is not supported here; HINT: insert VALUES with the shard key \"{column}\""
        )));
    }
    // Without a column list, the table's columns as learnt from the catalog.
    let learnt;
    let columns: &[String] = if rows.columns.is_empty() {
        learnt = map.known_columns(&rows.relation);
        match &learnt {
            Some(list) => list,
            None => {
                return Err(unsupported(format!(
                    "pgrouter: INSERT into sharded table \"{name}\" without a column list: the router cannot \
                     tell which value is the shard key \"{column}\"; HINT: name the columns"
                )))
            }
        }
    } else {
        &rows.columns
    };
    let Some(at) = columns.iter().position(|c| c == column) else {
        return Err(unsupported(format!(
            "pgrouter: INSERT into sharded table \"{name}\" must give its shard key \"{column}\"; \
             HINT: add the shard key"
        )));
    };
    let mut literals = None;
    let mut shards = Vec::with_capacity(rows.rows.len());
    for row in &rows.rows {
        let Some(Some(v)) = row.get(at) else {
            return Err(unsupported(format!(
                "pgrouter: the shard key \"{column}\" of an INSERT into \"{name}\" must be a constant or a parameter"
            )));
        };
        let value = row_value(v, table.placement.key_type, values, &mut literals)?;
        shards.push(table.placement.shard_of(&value).map_err(key_error)?);
    }
    Ok(Some(shards))
}

/// The sharded-table entry of the INSERT's target: by name, else a
/// name-less entry whose key column the INSERT names.
fn target<'m>(map: &'m ShardMap, rows: &InsertRows) -> Option<&'m ShardedTable> {
    map.relation(&rows.relation).or_else(|| {
        map.tables
            .iter()
            .find(|t| t.name.is_none() && rows.columns.contains(&t.column))
    })
}

/// The key value of one row, the text's literals decoded once per call.
fn row_value(
    v: &ValueRef,
    ty: KeyType,
    values: &Values,
    literals: &mut Option<Vec<Option<Literal>>>,
) -> Result<KeyValue, Refusal> {
    match v {
        ValueRef::Null => Ok(KeyValue::Null),
        ValueRef::Const(lit) => literal_value(lit, false, ty),
        ValueRef::Literal { index, negate } => {
            let sql = match values {
                Values::Text(sql) | Values::Bind { sql, .. } => sql,
            };
            match literals.get_or_insert_with(|| literal_values(sql)).get(*index) {
                Some(Some(lit)) => literal_value(lit, *negate, ty),
                _ => Err(unsupported(format!(
                    "{UNREADABLE_LITERAL} of this INSERT; HINT: write it as a plain '...' string or number"
                ))),
            }
        }
        ValueRef::Param { number, cast } => {
            let mut found = param_values(values, *number, *cast, ty, false)?;
            found.pop().ok_or_else(|| {
                unsupported(format!(
                    "pgrouter: parameter ${number} gives no shard key value"
                ))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use pgrouter_parser::analyze;

    use super::*;
    use crate::router::bind::BindParams;
    use crate::router::ShardMaps;

    /// Four shards; `orders` by bigint `cid`, any table with a text `tenant` column.
    fn map() -> Arc<ShardMap> {
        let mut router = String::new();
        for shard in 0..4 {
            router.push_str(&format!(
                "[[databases]]\nname = \"app\"\nhost = \"127.0.0.1\"\nport = {}\nshard = {shard}\n\n",
                5432 + shard
            ));
        }
        router.push_str(
            "[[sharded_tables]]\ndatabase = \"app\"\nname = \"orders\"\ncolumn = \"cid\"\ndata_type = \"bigint\"\n\n\
             [[sharded_tables]]\ndatabase = \"app\"\ncolumn = \"tenant\"\ndata_type = \"text\"\n",
        );
        let users = "[[users]]\nname = \"app\"\ndatabase = \"app\"\npassword = \"x\"\n";
        let config = pgrouter_config::parse(
            Path::new("router.toml"),
            &router,
            Path::new("users.toml"),
            users,
        )
        .unwrap_or_else(|p| panic!("{p:?}"));
        ShardMaps::build(&config).get("app").unwrap().clone()
    }

    fn text(sql: &str) -> Result<Option<Vec<usize>>, Refusal> {
        insert_row_shards(&analyze(sql, &[]), &Values::Text(sql), &map())
    }

    #[test]
    fn without_a_column_list_the_learnt_columns_say_where_the_key_is() {
        let sql = "INSERT INTO orders VALUES ('a', 1), ('b', 2)";
        let m = map();
        assert_eq!(
            insert_row_shards(&analyze(sql, &[]), &Values::Text(sql), &m)
                .unwrap_err()
                .sqlstate,
            "0A000"
        );
        let a = analyze(sql, &[]);
        m.learn_columns(
            &a.keys[0].insert.as_ref().unwrap().relation,
            vec!["note".into(), "cid".into()],
        );
        assert_eq!(
            insert_row_shards(&a, &Values::Text(sql), &m).unwrap(),
            Some(vec![0, 2])
        );
    }

    #[test]
    fn literal_rows_get_postgres_placement() {
        // bigint 1..6 over 4 shards: 0,2,1,3,1,3 (PostgreSQL's own remainders).
        let sql = "INSERT INTO orders (note, cid) VALUES ('a', 1), ('b', 2), ('c', '3'), ('d', 4::bigint), \
                   ('e', 5), (DEFAULT, 6), ('n', NULL), ('m', -7)";
        let minus7 = map().tables[0]
            .placement
            .shard_of(&KeyValue::Int(-7))
            .unwrap();
        assert_eq!(text(sql).unwrap(), Some(vec![0, 2, 1, 3, 1, 3, 0, minus7]));
        // The name-less entry applies through its column (text hash 'a'..'b').
        let t = text("INSERT INTO any_table (tenant) VALUES ('a'), ('b')")
            .unwrap()
            .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(text("INSERT INTO other (x) VALUES (1), (2)").unwrap(), None);
        assert_eq!(text("SELECT 1").unwrap(), None);
    }

    #[test]
    fn bad_keys_and_shapes_are_refused() {
        let code = |sql: &str| text(sql).unwrap_err().sqlstate;
        assert_eq!(code("INSERT INTO orders (cid) VALUES (1), ('x')"), "22P02");
        assert_eq!(
            code("INSERT INTO orders (cid) VALUES (99999999999999999999)"),
            "22003"
        );
        assert_eq!(
            code("INSERT INTO orders (cid) VALUES (1), (1 + 1)"),
            "0A000"
        );
        assert_eq!(code("INSERT INTO orders VALUES (1), (2)"), "0A000");
        assert_eq!(code("INSERT INTO orders (note) VALUES ('x')"), "0A000");
        assert_eq!(code("INSERT INTO orders (cid) SELECT 1"), "0A000");
        assert_eq!(code("INSERT INTO orders (cid) VALUES ($1)"), "0A000");
    }

    #[test]
    fn bind_parameters_in_text_and_binary() {
        let sql =
            "INSERT INTO orders (cid, note) VALUES ($1, 'x'), ($2::int4, $1), ($3, 'z'), ($4, 'w')";
        let a = analyze(sql, &[]);
        // Formats per parameter: text, binary int4 (cast), binary int8 (declared), text NULL.
        let mut b = Vec::new();
        b.extend_from_slice(&4i16.to_be_bytes());
        for f in [0i16, 1, 1, 0] {
            b.extend_from_slice(&f.to_be_bytes());
        }
        b.extend_from_slice(&4i16.to_be_bytes());
        b.extend_from_slice(&1i32.to_be_bytes());
        b.extend_from_slice(b"2");
        b.extend_from_slice(&4i32.to_be_bytes());
        b.extend_from_slice(&4i32.to_be_bytes());
        b.extend_from_slice(&8i32.to_be_bytes());
        b.extend_from_slice(&1i64.to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        let params = BindParams::parse(&b).unwrap();
        let values = Values::Bind {
            sql,
            params: &params,
            param_types: &[0, 0, 20, 0],
        };
        let shards = insert_row_shards(&a, &values, &map()).unwrap().unwrap();
        assert_eq!(shards, vec![2, 3, 0, 0]);
    }
}
