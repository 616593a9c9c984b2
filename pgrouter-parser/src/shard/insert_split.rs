//! A multi-row `INSERT ... VALUES` cut into one statement per shard, each
//! inserting only that shard's rows.
//!
//! The cut works on the statement's own tokens, not on a deparsed tree, so
//! everything but the VALUES rows — the target, column list, `OVERRIDING`,
//! `ON CONFLICT`, `RETURNING`, comments before VALUES — stays byte for byte
//! as the client wrote it (PostgreSQL then reports errors in those parts
//! exactly as it would for the original). pg_query's parse of the same text
//! confirms the shape, so a row boundary is never guessed.
//!
//! Parameters are renumbered per shard: each part uses `$1..$k` in the order
//! they first appear in its text, and says which original parameter each
//! new one is, so a Bind (values, formats) and a Parse (types) can be
//! rebuilt per shard. Parameters outside VALUES (in `ON CONFLICT ... DO
//! UPDATE SET x = $5`, `RETURNING`) are in every part.

use pg_query::protobuf::node::Node as N;

use crate::lexer::{Lexer, Tok};

/// The statement for one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertPart {
    pub shard: usize,
    pub sql: String,
    /// For each new parameter `$k` (k = 1..), the 0-based index of the
    /// original parameter whose value, format and type it takes.
    pub params: Vec<usize>,
}

/// Why an INSERT cannot be split; the message is for a 0A000 error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An INSERT's text with its VALUES rows located: built once per statement
/// text (a prepared statement can keep it), cut per execution with the
/// rows' shards, which may differ each time.
#[derive(Debug, Clone)]
pub struct InsertTemplate {
    /// Text before the first row, its rows, and text after the last row.
    prefix: Segment,
    rows: Vec<Segment>,
    suffix: Segment,
}

/// A piece of the statement text and the parameters in it.
#[derive(Debug, Clone)]
struct Segment {
    text: String,
    /// `(start, end, number)` of each `$n` token, relative to `text`.
    params: Vec<(usize, usize, usize)>,
}

/// Cuts `sql` (one `INSERT ... VALUES` statement) into one statement per
/// shard named in `row_shards` (the shard of each VALUES row, in order).
/// Parts come in ascending shard order.
pub fn split_insert(sql: &str, row_shards: &[usize]) -> Result<Vec<InsertPart>, Unsupported> {
    InsertTemplate::new(sql)?.split(row_shards)
}

impl InsertTemplate {
    /// Locates the VALUES rows of `sql`.
    pub fn new(sql: &str) -> Result<InsertTemplate, Unsupported> {
        let expected_rows = checked_row_count(sql)?;
        let tokens: Vec<(Tok, usize, usize)> = Lexer::new(sql)
            .filter(|t| !matches!(t, Ok((Tok::Space | Tok::Comment, _, _))))
            .collect::<Result<_, _>>()
            .map_err(|_| Unsupported("pgrouter: cannot tokenize this INSERT to split it per shard".into()))?;
        let word = |i: usize, w: &str| {
            tokens.get(i).is_some_and(|&(t, s, e)| t == Tok::Ident && sql[s..e].eq_ignore_ascii_case(w))
        };
        let punct = |i: usize, p: u8| tokens.get(i).is_some_and(|&(t, s, _)| t == Tok::Other && sql.as_bytes()[s] == p);
        // The VALUES keyword at nesting depth 0 (a reserved word: never a
        // bare name; the column list is in parentheses).
        let mut depth = 0usize;
        let mut at = None;
        for (i, &(t, s, _)) in tokens.iter().enumerate() {
            if t == Tok::Other {
                match sql.as_bytes()[s] {
                    b'(' | b'[' => depth += 1,
                    b')' | b']' => depth = depth.saturating_sub(1),
                    _ => {}
                }
            } else if depth == 0 && word(i, "values") {
                at = Some(i + 1);
                break;
            }
        }
        let Some(mut i) = at else {
            return Err(shape("it has no VALUES list"));
        };
        let mut ranges = Vec::new();
        loop {
            if !punct(i, b'(') {
                return Err(shape("a VALUES row is not in parentheses"));
            }
            let open = i;
            let mut depth = 0usize;
            loop {
                let Some(&(t, s, _)) = tokens.get(i) else {
                    return Err(shape("a VALUES row is not closed"));
                };
                if t == Tok::Other {
                    match sql.as_bytes()[s] {
                        b'(' | b'[' => depth += 1,
                        b')' | b']' => depth -= 1,
                        _ => {}
                    }
                }
                i += 1;
                if depth == 0 {
                    break;
                }
            }
            ranges.push((tokens[open].1, tokens[i - 1].2));
            if !punct(i, b',') {
                break;
            }
            i += 1;
        }
        if ranges.len() != expected_rows {
            return Err(shape("its VALUES rows could not be told apart"));
        }
        let params: Vec<(usize, usize, usize)> = tokens
            .iter()
            .filter(|t| t.0 == Tok::Param)
            .map(|&(_, s, e)| sql[s + 1..e].parse().map(|n| (s, e, n)))
            .collect::<Result<_, _>>()
            .map_err(|_| shape("a parameter number is out of range"))?;
        let segment = |from: usize, to: usize| Segment {
            text: sql[from..to].to_string(),
            params: params
                .iter()
                .filter(|p| p.0 >= from && p.1 <= to)
                .map(|&(s, e, n)| (s - from, e - from, n))
                .collect(),
        };
        let first = ranges[0].0;
        let last = ranges[ranges.len() - 1].1;
        Ok(InsertTemplate {
            prefix: segment(0, first),
            rows: ranges.iter().map(|&(s, e)| segment(s, e)).collect(),
            suffix: segment(last, sql.len()),
        })
    }

    /// How many VALUES rows the statement has.
    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    /// One statement per shard in `row_shards` (one entry per row), in
    /// ascending shard order.
    pub fn split(&self, row_shards: &[usize]) -> Result<Vec<InsertPart>, Unsupported> {
        if row_shards.len() != self.rows.len() {
            return Err(Unsupported(format!(
                "pgrouter: the INSERT has {} rows but {} row shards were given",
                self.rows.len(),
                row_shards.len()
            )));
        }
        let mut shards: Vec<usize> = row_shards.to_vec();
        shards.sort_unstable();
        shards.dedup();
        Ok(shards
            .into_iter()
            .map(|shard| {
                let mut part = Renumber::default();
                part.push(&self.prefix);
                let mut first = true;
                for (row, _) in self.rows.iter().zip(row_shards).filter(|(_, &s)| s == shard) {
                    if !first {
                        part.sql.push_str(", ");
                    }
                    first = false;
                    part.push(row);
                }
                part.push(&self.suffix);
                InsertPart { shard, sql: part.sql, params: part.params }
            })
            .collect())
    }
}

/// Builds one part's text, numbering parameters by first appearance.
#[derive(Default)]
struct Renumber {
    sql: String,
    /// Original parameter index (0-based) of each new parameter.
    params: Vec<usize>,
}

impl Renumber {
    fn push(&mut self, segment: &Segment) {
        let mut from = 0;
        for &(s, e, number) in &segment.params {
            self.sql.push_str(&segment.text[from..s]);
            let original = number.saturating_sub(1);
            let new = match self.params.iter().position(|&p| p == original) {
                Some(k) => k + 1,
                None => {
                    self.params.push(original);
                    self.params.len()
                }
            };
            self.sql.push('$');
            self.sql.push_str(&new.to_string());
            from = e;
        }
        self.sql.push_str(&segment.text[from..]);
    }
}

fn shape(why: &str) -> Unsupported {
    Unsupported(format!("pgrouter: cannot split this multi-row INSERT per shard: {why}"))
}

/// The number of VALUES rows pg_query finds, after checking the statement
/// is one plain `INSERT ... VALUES` (no WITH: a CTE would run on every shard).
fn checked_row_count(sql: &str) -> Result<usize, Unsupported> {
    // pg_query is called as the analysis calls it (a panic is a refusal).
    let parsed = std::panic::catch_unwind(|| pg_query::parse(sql, 0))
        .map_err(|_| shape("it does not parse"))?
        .map_err(|e| shape(&format!("it does not parse ({e})")))?;
    let stmts = &parsed.protobuf.stmts;
    if stmts.len() != 1 {
        return Err(shape("it is not a single statement"));
    }
    let Some(N::InsertStmt(insert)) = stmts[0].stmt.as_ref().and_then(|s| s.node.as_ref()) else {
        return Err(shape("it is not an INSERT"));
    };
    if insert.with_clause.is_some() {
        return Err(shape("WITH clauses would run on every shard; HINT: insert the rows without WITH"));
    }
    match insert.select_stmt.as_ref().and_then(|s| s.node.as_ref()) {
        Some(N::SelectStmt(s)) if !s.values_lists.is_empty() && s.with_clause.is_none() => {
            if !s.sort_clause.is_empty() || s.limit_count.is_some() || s.limit_offset.is_some() {
                return Err(shape("ORDER BY, LIMIT or OFFSET of its VALUES pick rows across shards"));
            }
            Ok(s.values_lists.len())
        }
        _ => Err(shape("it does not insert a VALUES list")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(shard: usize, sql: &str, params: &[usize]) -> InsertPart {
        InsertPart { shard, sql: sql.into(), params: params.to_vec() }
    }

    #[test]
    fn literal_rows_go_to_their_shards_and_the_rest_is_kept() {
        let sql = "/* c */ INSERT INTO s.t AS x (k, v) VALUES (1, 'a, (b)'), (2, DEFAULT),(3, f(1, 2)) \
                   ON CONFLICT (k) DO UPDATE SET v = excluded.v RETURNING k, (v)";
        let parts = split_insert(sql, &[1, 0, 1]).unwrap();
        assert_eq!(
            parts,
            vec![
                part(
                    0,
                    "/* c */ INSERT INTO s.t AS x (k, v) VALUES (2, DEFAULT) \
                     ON CONFLICT (k) DO UPDATE SET v = excluded.v RETURNING k, (v)",
                    &[]
                ),
                part(
                    1,
                    "/* c */ INSERT INTO s.t AS x (k, v) VALUES (1, 'a, (b)'), (3, f(1, 2)) \
                     ON CONFLICT (k) DO UPDATE SET v = excluded.v RETURNING k, (v)",
                    &[]
                ),
            ]
        );
        for p in &parts {
            pg_query::parse(&p.sql, 0).unwrap();
        }
    }

    #[test]
    fn parameters_are_renumbered_per_shard() {
        let sql = "INSERT INTO t (k, v) VALUES ($1, $2), ($3, $4), ($5, $2) ON CONFLICT (k) DO UPDATE SET v = $6;";
        let parts = split_insert(sql, &[2, 0, 2]).unwrap();
        assert_eq!(
            parts,
            vec![
                part(0, "INSERT INTO t (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = $3;", &[2, 3, 5]),
                part(
                    2,
                    "INSERT INTO t (k, v) VALUES ($1, $2), ($3, $2) ON CONFLICT (k) DO UPDATE SET v = $4;",
                    &[0, 1, 4, 5]
                ),
            ]
        );
        // One shard: the text is unchanged, the parameters map to themselves.
        let one = split_insert(sql, &[1, 1, 1]).unwrap();
        assert_eq!(one, vec![part(1, sql, &[0, 1, 2, 3, 4, 5])]);
    }

    #[test]
    fn parameters_before_values_and_out_of_order() {
        let sql = "INSERT INTO t (k, v) OVERRIDING USER VALUE VALUES ($3::int8, $1), ($2, $1 || $10) RETURNING $11";
        let parts = split_insert(sql, &[0, 1]).unwrap();
        assert_eq!(parts[0].sql, "INSERT INTO t (k, v) OVERRIDING USER VALUE VALUES ($1::int8, $2) RETURNING $3");
        assert_eq!(parts[0].params, vec![2, 0, 10]);
        assert_eq!(parts[1].sql, "INSERT INTO t (k, v) OVERRIDING USER VALUE VALUES ($1, $2 || $3) RETURNING $4");
        assert_eq!(parts[1].params, vec![1, 0, 9, 10]);
    }

    #[test]
    fn tricky_tokens_inside_rows() {
        let sql = "insert into \"VALUES\" (k, a) values (1, ARRAY[(1), 2]), (2, $$ ), ( $1 $$), (3, E'\\')'), (4, (SELECT 1 FROM (VALUES (1)) v))";
        let t = InsertTemplate::new(sql).unwrap();
        assert_eq!(t.rows(), 4);
        let parts = t.split(&[0, 1, 0, 1]).unwrap();
        assert_eq!(parts[0].sql, "insert into \"VALUES\" (k, a) values (1, ARRAY[(1), 2]), (3, E'\\')')");
        assert_eq!(
            parts[1].sql,
            "insert into \"VALUES\" (k, a) values (2, $$ ), ( $1 $$), (4, (SELECT 1 FROM (VALUES (1)) v))"
        );
        assert!(parts[1].params.is_empty());
    }

    #[test]
    fn refusals() {
        let refused = |sql: &str| InsertTemplate::new(sql).unwrap_err().0;
        assert!(refused("WITH w AS (SELECT 1) INSERT INTO t (k) VALUES (1), (2)").contains("WITH"));
        assert!(refused("INSERT INTO t (k) SELECT 1").contains("VALUES"));
        assert!(refused("INSERT INTO t DEFAULT VALUES").contains("VALUES"));
        assert!(refused("INSERT INTO t (k) VALUES (1), (2) LIMIT 1").contains("LIMIT"));
        assert!(refused("INSERT INTO t (k) (VALUES (1), (2))").contains("VALUES"));
        assert!(refused("INSERT INTO t (k) VALUES (1); SELECT 1").contains("single"));
        assert!(refused("UPDATE t SET k = 1").contains("not an INSERT"));
        assert!(refused("INSERT INTO t (k) VALUES (1").contains("parse"));
        let t = InsertTemplate::new("INSERT INTO t (k) VALUES (1), (2)").unwrap();
        assert!(t.split(&[0]).unwrap_err().0.contains("2 rows"));
    }
}
