//! Statements PostgreSQL may accept but whose tree pg_query cannot hand over.
//!
//! prost refuses protobuf trees deeper than 100 messages, which a statement
//! with ~45 chained operators (`a || b || c ...`, `x + y + ...`) already
//! reaches; libpg_query stops at its own stack limit. Raising prost's limit
//! would let a hostile statement overflow a 2 MiB thread stack while the tree
//! is decoded or dropped, so instead:
//! - the text is split into statements, and each is parsed on its own, so
//!   only the deep ones lose their tree;
//! - a deep statement is read from pg_query's C-side `summary` (statement
//!   types, tables, functions: no tree crosses over) and from the scanner's
//!   tokens. That is enough to let a plain read go to a replica;
//! - beyond libpg_query's stack limit only the scanner is left: the
//!   statement counts as a write of the kind its first keyword says.
//!
//! None of this is a parse error: PostgreSQL may run such a statement, so it
//! must be classified (a read-only session must see it refused as a write),
//! not passed on as "will fail anyway". All of it is literal-sensitive,
//! because it is approximate.

use crate::analysis::{Analysis, StatementInfo, StatementKind};
use crate::classify::add_tree;
use crate::functions;
use crate::parse::{failed, parse, Parsed};
use pg_query::protobuf::summary_result::Context;
use pg_query::protobuf::{ScanToken, Token};

/// The analysis of a text that pg_query found too deeply nested.
pub(crate) fn too_deep(sql: &str, write_functions: &[String]) -> Analysis {
    let split =
        std::panic::catch_unwind(|| pg_query::split_with_parser(sql).or_else(|_| pg_query::split_with_scanner(sql)));
    let pieces = match split {
        Ok(Ok(pieces)) => pieces,
        Ok(Err(e)) => return failed(e.to_string()),
        Err(_) => return failed("pg_query panicked while splitting this statement".to_string()),
    };
    // What the statements create, and where, is not fully known.
    let mut a = Analysis { literal_sensitive: true, creates_by_search_path: true, ..Analysis::default() };
    for piece in pieces {
        match parse(piece) {
            Parsed::Tree(result) => add_tree(&result.protobuf.stmts, write_functions, &mut a),
            Parsed::TooDeep => deep_statement(piece, write_functions, &mut a),
            Parsed::Error(message) => return failed(message),
        }
    }
    a
}

/// Classifies one statement from its summary and tokens.
fn deep_statement(sql: &str, write_functions: &[String], a: &mut Analysis) {
    let tokens = match std::panic::catch_unwind(|| pg_query::scan(sql)) {
        Ok(Ok(scan)) => scan.tokens,
        _ => Vec::new(),
    };
    let summary = match std::panic::catch_unwind(|| pg_query::summary(sql, 0, -1)) {
        Ok(Ok(summary)) => Some(summary),
        _ => None,
    };
    let Some(summary) = summary else {
        // Beyond libpg_query's stack limit: only the first keyword is known.
        let kind = kind_of(first_keyword(&tokens), sql, &tokens);
        let calls = calls_set_config(sql, &tokens);
        a.escalation.set_config_sensitive |= calls;
        a.calls_set_config |= calls;
        // Its function calls are not known: any may be someone's own.
        a.calls_unknown_function = true;
        push(a, kind, true);
        return;
    };

    let mut writes = false;
    for f in &summary.protobuf.functions {
        let name: Vec<String> = f.name.split('.').map(str::to_string).collect();
        writes |= functions::is_write_function(&name, write_functions);
        // The first argument is not known here.
        a.escalation.set_config_sensitive |= functions::is_set_config(&name);
        a.escalation.runs_sql_text |= functions::runs_sql_text(&name);
        a.calls_set_config |= functions::is_set_config(&name);
        a.calls_unknown_function |= !functions::is_builtin_function(&name);
        if a.varies_by_server.is_none() && functions::varies_by_server(&name) {
            a.varies_by_server = Some(f.name.clone());
        }
    }
    for t in &summary.protobuf.tables {
        writes |= t.context == Context::Dml as i32;
        if !a.tables.contains(&t.name) {
            a.tables.push(t.name.clone());
        }
    }
    let types = &summary.statement_types;
    // A data-modifying statement nested in the first one (a CTE).
    writes |= types.iter().skip(1).any(|t| t != "SelectStmt");
    for (i, t) in tokens.iter().enumerate() {
        // SELECT ... INTO creates a table; FOR UPDATE/SHARE/NO KEY/KEY SHARE locks rows.
        writes |= t.token == Token::Into as i32;
        let next = tokens.get(i + 1).map_or(0, |n| n.token);
        writes |= t.token == Token::For as i32
            && [Token::Update, Token::Share, Token::No, Token::Key].iter().any(|k| next == *k as i32);
    }

    let first = types.first().map(String::as_str).unwrap_or("");
    let kind = match first {
        "SelectStmt" => StatementKind::Select,
        "InsertStmt" => StatementKind::Insert,
        "UpdateStmt" => StatementKind::Update,
        "DeleteStmt" => StatementKind::Delete,
        "MergeStmt" => StatementKind::Merge,
        _ => kind_of(first_keyword(&tokens), sql, &tokens),
    };
    let is_write = match &kind {
        StatementKind::Select | StatementKind::Prepare { .. } | StatementKind::DeclareCursor => writes,
        StatementKind::Explain { analyze } => *analyze && writes,
        StatementKind::Copy { from_stdin_or_file } => *from_stdin_or_file || writes,
        _ => true,
    };
    push(a, kind, is_write);
}

fn push(a: &mut Analysis, kind: StatementKind, is_write: bool) {
    a.is_write |= is_write;
    a.statements.push(StatementInfo { kind, is_write });
}

fn first_keyword(tokens: &[ScanToken]) -> i32 {
    tokens
        .iter()
        .map(|t| t.token)
        .find(|&t| t != Token::SqlComment as i32 && t != Token::CComment as i32 && t != Token::Ascii40 as i32)
        .unwrap_or(0)
}

/// The statement kind a leading keyword announces, for the statements that
/// can nest deeply (the ones with expressions).
fn kind_of(first: i32, sql: &str, tokens: &[ScanToken]) -> StatementKind {
    let is = |t: Token| first == t as i32;
    let name_after = || {
        tokens
            .iter()
            .skip_while(|t| t.token == Token::SqlComment as i32 || t.token == Token::CComment as i32)
            .nth(1)
            .map(|t| identifier(sql.get(t.start as usize..t.end as usize).unwrap_or("")))
            .unwrap_or_default()
    };
    if is(Token::Select) || is(Token::With) || is(Token::Values) || is(Token::Table) {
        StatementKind::Select
    } else if is(Token::Insert) {
        StatementKind::Insert
    } else if is(Token::Update) {
        StatementKind::Update
    } else if is(Token::DeleteP) {
        StatementKind::Delete
    } else if is(Token::Merge) {
        StatementKind::Merge
    } else if is(Token::Explain) {
        let analyze = tokens.iter().any(|t| t.token == Token::Analyze as i32 || t.token == Token::Analyse as i32);
        StatementKind::Explain { analyze }
    } else if is(Token::Prepare) {
        StatementKind::Prepare { name: name_after() }
    } else if is(Token::Execute) {
        StatementKind::Execute { name: name_after() }
    } else if is(Token::Declare) {
        StatementKind::DeclareCursor
    } else if is(Token::Copy) {
        StatementKind::Copy { from_stdin_or_file: copy_from(tokens) }
    } else if is(Token::Call) {
        StatementKind::Call
    } else {
        StatementKind::Ddl
    }
}

/// COPY ... FROM: a FROM outside parentheses (not one inside `COPY (query)`).
fn copy_from(tokens: &[ScanToken]) -> bool {
    let mut depth = 0i32;
    for t in tokens {
        if t.token == Token::Ascii40 as i32 {
            depth += 1;
        } else if t.token == Token::Ascii41 as i32 {
            depth -= 1;
        } else if depth == 0 && t.token == Token::From as i32 {
            return true;
        }
    }
    false
}

/// An identifier token as PostgreSQL reads it: quoted verbatim, else lower case.
fn identifier(text: &str) -> String {
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => text.to_ascii_lowercase(),
    }
}

/// `set_config (` anywhere, by tokens.
fn calls_set_config(sql: &str, tokens: &[ScanToken]) -> bool {
    tokens.windows(2).any(|w| {
        let name = sql.get(w[0].start as usize..w[0].end as usize).unwrap_or("");
        functions::is_set_config(&[identifier(name)]) && w[1].token == Token::Ascii40 as i32
    })
}
