//! What a `COPY table ... FROM STDIN / TO STDOUT` statement asks for, read
//! from pg_query's tree: the table and columns, and the data format with
//! its options resolved to the values PostgreSQL uses (defaults included),
//! so the router can split COPY rows per shard exactly as the server will
//! read them.
//!
//! Options are checked as PostgreSQL 15 checks them (`ProcessCopyOptions`),
//! with its SQLSTATEs and messages, so a COPY the router refuses is one the
//! server would have refused the same way. What the router itself cannot
//! do — COPY from a file or program, COPY (query), client encodings whose
//! multibyte characters can contain ASCII bytes — is [`CopyError`] 0A000.

use pg_query::protobuf::{self as pb, node::Node as N};

/// A COPY statement between the client and a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyInfo {
    /// The schema as written (`None` when unqualified).
    pub schema: Option<String>,
    /// The table name as written.
    pub table: String,
    /// The column list; `None` = all columns in table order.
    pub columns: Option<Vec<String>>,
    /// `FROM STDIN` (true) or `TO STDOUT` (false).
    pub from: bool,
    /// text, csv or binary.
    pub format: CopyFormat,
    /// The column separator (tab for text, comma for CSV).
    pub delimiter: u8,
    /// The NULL marker (`\N` for text, empty for CSV), as raw input bytes.
    pub null: Vec<u8>,
    /// CSV quote and escape characters (`"` and the quote by default).
    pub quote: u8,
    /// See `quote`.
    pub escape: u8,
    /// The `HEADER` option.
    pub header: CopyHeader,
    /// The `ENCODING` option, as written.
    pub encoding: Option<String>,
    /// The `DEFAULT` marker (PostgreSQL 16+).
    pub default: Option<Vec<u8>>,
    /// CSV `FORCE_NOT_NULL` / `FORCE_NULL` columns.
    pub force_not_null: ForceColumns,
    /// See `force_not_null`.
    pub force_null: ForceColumns,
    /// COPY FROM ... WHERE: rows are filtered by each server (fine per shard).
    pub has_where: bool,
    /// `COPY (query) TO STDOUT`: the query, deparsed (`table` is empty).
    pub query: Option<String>,
}

/// The data format of a COPY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    /// PostgreSQL's text format (backslash escapes).
    Text,
    /// CSV with quotes.
    Csv,
    /// PostgreSQL's binary COPY format.
    Binary,
}

/// The `HEADER` option: no header line, one to skip, or one whose names
/// must match the columns (COPY FROM only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyHeader {
    /// No header line.
    Absent,
    /// A header line the server skips.
    Skip,
    /// A header line the server checks against the column names.
    Match,
}

/// Columns named by `FORCE_NOT_NULL` / `FORCE_NULL`: a list or `*`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForceColumns {
    /// `*`: every column.
    pub all: bool,
    /// The columns named.
    pub columns: Vec<String>,
}

impl ForceColumns {
    /// Whether `column` is one of them.
    pub fn contains(&self, column: &str) -> bool {
        self.all || self.columns.iter().any(|c| c == column)
    }
}

/// Why a COPY is not taken: PostgreSQL's own error for bad options, or
/// 0A000 for what the router cannot split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyError {
    /// The SQLSTATE to report.
    pub sqlstate: &'static str,
    /// The error message.
    pub message: String,
}

fn err(sqlstate: &'static str, message: impl Into<String>) -> CopyError {
    CopyError { sqlstate, message: message.into() }
}

const UNSUPPORTED: &str = "0A000";
const SYNTAX: &str = "42601";
const INVALID_VALUE: &str = "22023";

/// Reads the one COPY statement of `sql`.
pub fn copy_options(sql: &str) -> Result<CopyInfo, CopyError> {
    let parsed = std::panic::catch_unwind(|| pg_query::parse(sql, 0))
        .map_err(|_| err(SYNTAX, "pgrouter: this COPY statement does not parse"))?
        .map_err(|e| err(SYNTAX, e.to_string()))?;
    let stmts = &parsed.protobuf.stmts;
    let node = match stmts.as_slice() {
        [one] => one.stmt.as_ref().and_then(|s| s.node.as_ref()),
        _ => None,
    };
    let Some(N::CopyStmt(copy)) = node else {
        return Err(err(UNSUPPORTED, "pgrouter: expected one COPY statement"));
    };
    from_tree(copy)
}

fn from_tree(copy: &pb::CopyStmt) -> Result<CopyInfo, CopyError> {
    let Some(rel) = &copy.relation else {
        return query_copy(copy);
    };
    if copy.is_program || !copy.filename.is_empty() {
        return Err(err(
            UNSUPPORTED,
            "pgrouter: COPY with a server-side file or program is not supported on sharded tables; \
             HINT: use COPY ... FROM STDIN / TO STDOUT",
        ));
    }
    let columns =
        (!copy.attlist.is_empty()).then(|| copy.attlist.iter().map(|c| string_of(c).unwrap_or_default()).collect());
    let mut o = Options::default();
    for node in &copy.options {
        if let Some(N::DefElem(d)) = &node.node {
            o.set(d, copy.is_from)?;
        }
    }
    let info = o.resolve(copy.is_from)?;
    Ok(CopyInfo {
        schema: (!rel.schemaname.is_empty()).then(|| rel.schemaname.clone()),
        table: rel.relname.clone(),
        columns,
        from: copy.is_from,
        has_where: copy.where_clause.is_some(),
        ..info
    })
}

/// `COPY (query) TO STDOUT`: its options and the query's text.
fn query_copy(copy: &pb::CopyStmt) -> Result<CopyInfo, CopyError> {
    let query = match copy.query.as_deref() {
        Some(q) if !copy.is_from && !copy.is_program && copy.filename.is_empty() => q,
        _ => return Err(err(UNSUPPORTED, "pgrouter: COPY (query) is not split per shard")),
    };
    let tree = pb::ParseResult {
        version: 0,
        stmts: vec![pb::RawStmt { stmt: Some(Box::new(query.clone())), stmt_location: 0, stmt_len: 0 }],
    };
    let text = std::panic::catch_unwind(|| pg_query::deparse(&tree, Default::default()))
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| err(UNSUPPORTED, "pgrouter: this COPY (query) cannot be read"))?;
    let mut o = Options::default();
    for node in &copy.options {
        if let Some(N::DefElem(d)) = &node.node {
            o.set(d, false)?;
        }
    }
    Ok(CopyInfo { query: Some(text), ..o.resolve(false)? })
}

/// The options as given, each at most once.
#[derive(Default)]
struct Options {
    format: Option<String>,
    delimiter: Option<String>,
    null: Option<String>,
    default: Option<String>,
    quote: Option<String>,
    escape: Option<String>,
    header: Option<CopyHeader>,
    encoding: Option<String>,
    force_quote: Option<()>,
    force_not_null: Option<ForceColumns>,
    force_null: Option<ForceColumns>,
    freeze: Option<bool>,
    on_error: Option<()>,
}

fn once<T>(slot: &mut Option<T>, value: T) -> Result<(), CopyError> {
    if slot.is_some() {
        return Err(err(SYNTAX, "conflicting or redundant options"));
    }
    *slot = Some(value);
    Ok(())
}

impl Options {
    fn set(&mut self, d: &pb::DefElem, from: bool) -> Result<(), CopyError> {
        let arg = d.arg.as_deref().and_then(|a| a.node.as_ref());
        let name = d.defname.as_str();
        let text = || {
            arg.and_then(|a| match a {
                N::String(s) => Some(s.sval.clone()),
                N::Integer(i) => Some(i.ival.to_string()),
                N::Float(f) => Some(f.fval.clone()),
                N::Boolean(b) => Some(if b.boolval { "true" } else { "false" }.to_string()),
                _ => None,
            })
            .ok_or_else(|| err(SYNTAX, format!("{name} requires a parameter")))
        };
        match name {
            "format" => once(&mut self.format, text()?),
            "delimiter" => once(&mut self.delimiter, text()?),
            "null" => once(&mut self.null, text()?),
            "default" => once(&mut self.default, text()?),
            "quote" => once(&mut self.quote, text()?),
            "escape" => once(&mut self.escape, text()?),
            "encoding" => once(&mut self.encoding, text()?),
            "header" => once(&mut self.header, header(arg, from)?),
            "freeze" => once(&mut self.freeze, boolean(arg, name)?),
            "force_quote" => once(&mut self.force_quote, ()),
            "force_not_null" => once(&mut self.force_not_null, force(arg, name)?),
            "force_null" => once(&mut self.force_null, force(arg, name)?),
            "on_error" | "log_verbosity" | "reject_limit" => once(&mut self.on_error, ()),
            other => Err(err(SYNTAX, format!("option \"{other}\" not recognized"))),
        }
    }

    fn resolve(self, from: bool) -> Result<CopyInfo, CopyError> {
        let format = match self.format.as_deref() {
            None | Some("text") => CopyFormat::Text,
            Some("csv") => CopyFormat::Csv,
            Some("binary") => CopyFormat::Binary,
            Some(other) => return Err(err(INVALID_VALUE, format!("COPY format \"{other}\" not recognized"))),
        };
        let csv = format == CopyFormat::Csv;
        if format == CopyFormat::Binary {
            for (given, what) in [
                (self.delimiter.is_some(), "DELIMITER"),
                (self.null.is_some(), "NULL"),
                (self.default.is_some(), "DEFAULT"),
            ] {
                if given {
                    return Err(err(SYNTAX, format!("cannot specify {what} in BINARY mode")));
                }
            }
            if self.header.is_some_and(|h| h != CopyHeader::Absent) {
                return Err(err(UNSUPPORTED, "cannot specify HEADER in BINARY mode"));
            }
        }
        let delimiter = match &self.delimiter {
            None => {
                if csv {
                    b','
                } else {
                    b'\t'
                }
            }
            Some(d) => one_byte(d, "COPY delimiter must be a single one-byte character")?,
        };
        if delimiter == b'\n' || delimiter == b'\r' {
            return Err(err(INVALID_VALUE, "COPY delimiter cannot be newline or carriage return"));
        }
        let null = self.null.clone().unwrap_or_else(|| if csv { String::new() } else { "\\N".into() });
        if null.contains(['\n', '\r']) {
            return Err(err(INVALID_VALUE, "COPY null representation cannot use newline or carriage return"));
        }
        if !csv && b"\\.abcdefghijklmnopqrstuvwxyz0123456789".contains(&delimiter) {
            return Err(err(INVALID_VALUE, format!("COPY delimiter cannot be \"{}\"", delimiter as char)));
        }
        if !csv {
            for (given, what) in [(self.quote.is_some(), "quote"), (self.escape.is_some(), "escape")] {
                if given {
                    return Err(err(UNSUPPORTED, format!("COPY {what} available only in CSV mode")));
                }
            }
        }
        let quote = match &self.quote {
            None => b'"',
            Some(q) => one_byte(q, "COPY quote must be a single one-byte character")?,
        };
        if csv && delimiter == quote {
            return Err(err(INVALID_VALUE, "COPY delimiter and quote must be different"));
        }
        let escape = match &self.escape {
            None => quote,
            Some(e) => one_byte(e, "COPY escape must be a single one-byte character")?,
        };
        if self.force_quote.is_some() && from {
            return Err(err(UNSUPPORTED, "COPY force quote only available using COPY TO"));
        }
        for (given, what) in [(self.force_not_null.is_some(), "not null"), (self.force_null.is_some(), "null")] {
            if given && !csv {
                return Err(err(UNSUPPORTED, format!("COPY force {what} available only in CSV mode")));
            }
            if given && !from {
                return Err(err(UNSUPPORTED, format!("COPY force {what} only available using COPY FROM")));
            }
        }
        if null.as_bytes().contains(&delimiter) {
            return Err(err(UNSUPPORTED, "COPY delimiter must not appear in the NULL specification"));
        }
        if csv && null.as_bytes().contains(&quote) {
            return Err(err(UNSUPPORTED, "CSV quote character must not appear in the NULL specification"));
        }
        if let Some(enc) = &self.encoding {
            if encoding_embeds_ascii(enc) {
                return Err(err(
                    UNSUPPORTED,
                    format!(
                        "pgrouter: COPY in encoding \"{enc}\" cannot be split per shard (its characters can contain \
                         ASCII bytes); HINT: use UTF8"
                    ),
                ));
            }
        }
        Ok(CopyInfo {
            schema: None,
            table: String::new(),
            columns: None,
            from,
            format,
            delimiter,
            null: null.into_bytes(),
            quote,
            escape,
            header: self.header.unwrap_or(CopyHeader::Absent),
            encoding: self.encoding,
            default: self.default.map(String::into_bytes),
            force_not_null: self.force_not_null.unwrap_or_default(),
            force_null: self.force_null.unwrap_or_default(),
            has_where: false,
            query: None,
        })
    }
}

fn one_byte(s: &str, message: &str) -> Result<u8, CopyError> {
    match s.as_bytes() {
        [b] => Ok(*b),
        _ => Err(err(UNSUPPORTED, message)),
    }
}

fn string_of(node: &pb::Node) -> Option<String> {
    match node.node.as_ref()? {
        N::String(s) => Some(s.sval.clone()),
        _ => None,
    }
}

/// PostgreSQL's `defGetBoolean`.
fn boolean(arg: Option<&N>, name: &str) -> Result<bool, CopyError> {
    let word = match arg {
        None => return Ok(true),
        Some(N::Boolean(b)) => return Ok(b.boolval),
        Some(N::Integer(i)) if i.ival == 0 || i.ival == 1 => return Ok(i.ival == 1),
        Some(N::String(s)) => s.sval.to_ascii_lowercase(),
        _ => String::new(),
    };
    match word.as_str() {
        "true" | "on" => Ok(true),
        "false" | "off" => Ok(false),
        _ => Err(err(SYNTAX, format!("{name} requires a Boolean value"))),
    }
}

/// PostgreSQL's `defGetCopyHeaderChoice`.
fn header(arg: Option<&N>, from: bool) -> Result<CopyHeader, CopyError> {
    if let Some(N::String(s)) = arg {
        if s.sval.eq_ignore_ascii_case("match") {
            if !from {
                return Err(err(INVALID_VALUE, "cannot use \"match\" with HEADER in COPY TO"));
            }
            return Ok(CopyHeader::Match);
        }
    }
    match boolean(arg, "header") {
        Ok(true) => Ok(CopyHeader::Skip),
        Ok(false) => Ok(CopyHeader::Absent),
        Err(_) => Err(err(SYNTAX, "header requires a Boolean value or \"match\"")),
    }
}

fn force(arg: Option<&N>, name: &str) -> Result<ForceColumns, CopyError> {
    match arg {
        Some(N::AStar(_)) => Ok(ForceColumns { all: true, columns: Vec::new() }),
        Some(N::List(l)) => Ok(ForceColumns { all: false, columns: l.items.iter().filter_map(string_of).collect() }),
        _ => Err(err(INVALID_VALUE, format!("argument to option \"{name}\" must be a list of column names"))),
    }
}

/// Whether a client encoding's multibyte characters can contain ASCII
/// bytes (PostgreSQL's client-only encodings), so that a byte-wise scan
/// for delimiters, quotes and newlines would misread its text.
pub fn encoding_embeds_ascii(name: &str) -> bool {
    let key: String = name.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase();
    matches!(
        key.as_str(),
        "sjis"
            | "shiftjis"
            | "mskanji"
            | "windows932"
            | "shiftjis2004"
            | "big5"
            | "windows950"
            | "gbk"
            | "windows936"
            | "uhc"
            | "windows949"
            | "gb18030"
            | "johab"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(sql: &str) -> CopyInfo {
        copy_options(sql).unwrap()
    }

    fn refused(sql: &str) -> (&'static str, String) {
        let e = copy_options(sql).unwrap_err();
        (e.sqlstate, e.message)
    }

    #[test]
    fn defaults_per_format() {
        let t = ok("COPY s.orders (cid, note) FROM STDIN");
        assert_eq!((t.schema.as_deref(), t.table.as_str()), (Some("s"), "orders"));
        assert_eq!(t.columns, Some(vec!["cid".to_string(), "note".to_string()]));
        assert!(t.from);
        assert_eq!(
            (t.format, t.delimiter, t.null.as_slice(), t.header),
            (CopyFormat::Text, b'\t', &b"\\N"[..], CopyHeader::Absent)
        );
        let c = ok("copy orders from stdin with (format csv, header match)");
        assert_eq!(
            (c.format, c.delimiter, c.null.as_slice(), c.quote, c.escape),
            (CopyFormat::Csv, b',', &b""[..], b'"', b'"')
        );
        assert_eq!((c.schema, c.columns, c.header), (None, None, CopyHeader::Match));
        let b = ok("COPY orders TO STDOUT (FORMAT binary)");
        assert!(!b.from);
        assert_eq!(b.format, CopyFormat::Binary);
    }

    #[test]
    fn old_and_new_option_spellings() {
        let c = ok("COPY t FROM STDIN WITH CSV HEADER DELIMITER AS ';' NULL AS 'NA' QUOTE AS '''' ESCAPE AS '\\' \
                    FORCE NOT NULL a, b ENCODING 'UTF8'");
        assert_eq!(
            (c.format, c.header, c.delimiter, c.null.as_slice()),
            (CopyFormat::Csv, CopyHeader::Skip, b';', &b"NA"[..])
        );
        assert_eq!((c.quote, c.escape, c.encoding.as_deref()), (b'\'', b'\\', Some("UTF8")));
        assert!(c.force_not_null.contains("b") && !c.force_not_null.contains("c"));
        let c =
            ok("COPY t FROM STDIN (FORMAT 'csv', HEADER off, FORCE_NULL (k), DELIMITER '|', FREEZE true) WHERE k > 1");
        assert_eq!((c.header, c.delimiter, c.has_where), (CopyHeader::Absent, b'|', true));
        assert!(c.force_null.contains("k"));
        assert_eq!(ok("COPY t FROM STDIN (HEADER 1)").header, CopyHeader::Skip);
        assert_eq!(ok("COPY t FROM STDIN (HEADER 'on')").header, CopyHeader::Skip);
        assert!(ok("COPY t FROM STDIN (FORMAT csv, FORCE_NULL *)").force_null.contains("x"));
        assert_eq!(ok("COPY BINARY t FROM STDIN").format, CopyFormat::Binary);
    }

    /// Each refusal is PostgreSQL 15's own (checked against a server).
    #[test]
    fn postgres_errors_for_bad_options() {
        let cases = [
            ("COPY t FROM STDIN (FORMAT xml)", "22023", "COPY format \"xml\" not recognized"),
            ("COPY t FROM STDIN (FORMAT csv, FORMAT csv)", "42601", "conflicting or redundant options"),
            ("COPY t FROM STDIN (DELIMITER 'ab')", "0A000", "COPY delimiter must be a single one-byte character"),
            ("COPY t FROM STDIN (DELIMITER E'\\n')", "22023", "COPY delimiter cannot be newline or carriage return"),
            ("COPY t FROM STDIN (DELIMITER 'a')", "22023", "COPY delimiter cannot be \"a\""),
            ("COPY t FROM STDIN (DELIMITER '\\')", "22023", "COPY delimiter cannot be \"\\\""),
            ("COPY t FROM STDIN (FORMAT binary, HEADER)", "0A000", "cannot specify HEADER in BINARY mode"),
            ("COPY t FROM STDIN (QUOTE '''')", "0A000", "COPY quote available only in CSV mode"),
            ("COPY t FROM STDIN (FORMAT csv, QUOTE 'ab')", "0A000", "COPY quote must be a single one-byte character"),
            ("COPY t FROM STDIN (FORMAT csv, QUOTE ',')", "22023", "COPY delimiter and quote must be different"),
            ("COPY t FROM STDIN (ESCAPE 'x')", "0A000", "COPY escape available only in CSV mode"),
            ("COPY t FROM STDIN (FORMAT csv, ESCAPE '')", "0A000", "COPY escape must be a single one-byte character"),
            (
                "COPY t FROM STDIN (FORMAT csv, NULL 'a\"b')",
                "0A000",
                "CSV quote character must not appear in the NULL specification",
            ),
            ("COPY t FROM STDIN (NULL E'a\\tb')", "0A000", "COPY delimiter must not appear in the NULL specification"),
            (
                "COPY t FROM STDIN (NULL E'a\\nb')",
                "22023",
                "COPY null representation cannot use newline or carriage return",
            ),
            ("COPY t FROM STDIN (HEADER 2)", "42601", "header requires a Boolean value or \"match\""),
            ("COPY t FROM STDIN (HEADER 'maybe')", "42601", "header requires a Boolean value or \"match\""),
            ("COPY t FROM STDIN (FORCE_NULL (k))", "0A000", "COPY force null available only in CSV mode"),
            ("COPY t FROM STDIN (FORMAT binary, DELIMITER ',')", "42601", "cannot specify DELIMITER in BINARY mode"),
            ("COPY t FROM STDIN (FORMAT binary, NULL 'x')", "42601", "cannot specify NULL in BINARY mode"),
            (
                "COPY t FROM STDIN (FORMAT csv, FORCE_QUOTE (k))",
                "0A000",
                "COPY force quote only available using COPY TO",
            ),
            ("COPY t FROM STDIN (bogus 1)", "42601", "option \"bogus\" not recognized"),
            (
                "COPY t FROM STDIN (FORMAT csv, DELIMITER E'\\r')",
                "22023",
                "COPY delimiter cannot be newline or carriage return",
            ),
            (
                "COPY t FROM STDIN (FORMAT csv, DELIMITER 'é')",
                "0A000",
                "COPY delimiter must be a single one-byte character",
            ),
            ("COPY t FROM STDIN (FORMAT csv, HEADER false, HEADER)", "42601", "conflicting or redundant options"),
        ];
        for (sql, code, message) in cases {
            assert_eq!(refused(sql), (code, message.to_string()), "{sql}");
        }
        assert_eq!(ok("COPY t FROM STDIN (FORMAT csv, DELIMITER '\\')").delimiter, b'\\');
    }

    #[test]
    fn what_the_router_cannot_split() {
        assert_eq!(
            ok("COPY (SELECT a, b FROM t WHERE a > 1) TO STDOUT (FORMAT csv, HEADER)").query.as_deref(),
            Some("SELECT a, b FROM t WHERE a > 1")
        );
        for sql in [
            "COPY (SELECT 1) TO '/tmp/x'",
            "COPY t FROM '/tmp/x'",
            "COPY t FROM PROGRAM 'cat'",
            "COPY t FROM STDIN (ENCODING 'SJIS')",
            "COPY t FROM STDIN (ENCODING 'big5')",
            "SELECT 1",
            "COPY t FROM STDIN; COPY t FROM STDIN",
        ] {
            assert_eq!(refused(sql).0, "0A000", "{sql}");
        }
        assert!(
            encoding_embeds_ascii("Shift_JIS") && !encoding_embeds_ascii("UTF8") && !encoding_embeds_ascii("LATIN1")
        );
    }
}
