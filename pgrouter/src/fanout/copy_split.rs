//! `COPY table FROM STDIN` split per shard: the client's CopyData stream
//! is cut into rows exactly as PostgreSQL would cut it, each row's shard
//! key is read (text/CSV de-escaped, binary as sent) and placed, and the
//! row's bytes go unchanged to that shard's output. Header lines (text and
//! CSV `HEADER`, `HEADER MATCH`) and the binary file header go to every
//! shard, because each server expects them; every shard gets its own binary
//! trailer at the end.
//!
//! Pure and streaming: no I/O, and memory beyond what [`CopySplitter::take`]
//! has not collected yet is one unfinished row. Malformed data gets
//! PostgreSQL's error (22P04 and its message, with the line number of the
//! whole stream as context), so a mix that no single shard could notice —
//! line-end styles, for instance — is still refused as one server would.

use std::sync::Arc;

use bytes::BytesMut;
use pgrouter_parser::copy::{CopyFormat, CopyHeader, CopyInfo};
use pgrouter_parser::shard::{parse_binary, parse_text, KeyError, KeyType, KeyValue, Placement};

use super::copy_binary::{BinaryReader, Item, Where, TRAILER};
use super::copy_lines::RowLog;
use super::copy_text::{csv_fields, text_fields, Field, TextReader};

/// Places one row's raw key field: de-escaped text / dequoted CSV bytes,
/// or the binary field's bytes; `None` for NULL.
pub type PlaceKey = Box<dyn Fn(Option<&[u8]>) -> Result<usize, KeyError> + Send>;

/// Why the COPY data cannot be split: the error the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySplitError {
    /// 22P04 for malformed data; the key's own error (22P02, 22003, 22023...).
    pub sqlstate: &'static str,
    pub message: String,
    pub hint: Option<String>,
    /// Where, as PostgreSQL's CONTEXT says it: `COPY t, line 3: "..."`
    /// (none for a bad binary file header, as PostgreSQL).
    pub context: Option<String>,
}

const BAD_COPY_FORMAT: &str = "22P04";

/// The splitter of one COPY FROM STDIN.
pub struct CopySplitter {
    reader: Reader,
    sink: Sink,
    /// Text/CSV: the `\.` marker was read; the rest of the data is ignored.
    ended: bool,
    finished: bool,
    failed: Option<CopySplitError>,
}

/// How rows are placed, and the outputs they go to.
struct Sink {
    format: CopyFormat,
    delimiter: u8,
    quote: u8,
    escape: u8,
    null: Vec<u8>,
    default: Option<Vec<u8>>,
    key_column: usize,
    key_name: String,
    columns: Option<Vec<String>>,
    expected: Option<usize>,
    force_null: bool,
    force_not_null: bool,
    header_pending: bool,
    table: String,
    place: PlaceKey,
    out: Vec<BytesMut>,
    rows: u64,
    /// Which shard each row went to: a shard's error names its own line
    /// numbers, the client's are found from this (`copy_lines.rs`).
    log: RowLog,
}

enum Reader {
    Text(TextReader),
    Binary(BinaryReader),
}

impl CopySplitter {
    /// A splitter for `info`'s data over `shards` outputs; the key is field
    /// `key_column` of each row (its index in `info.columns` when listed).
    pub fn new(info: &CopyInfo, key_column: usize, shards: usize, place: PlaceKey) -> CopySplitter {
        let key_name = info
            .columns
            .as_ref()
            .and_then(|c| c.get(key_column))
            .cloned()
            .unwrap_or_else(|| format!("#{}", key_column + 1));
        let reader = match info.format {
            CopyFormat::Binary => Reader::Binary(BinaryReader::new()),
            f => Reader::Text(TextReader::new(
                f == CopyFormat::Csv,
                info.quote,
                info.escape,
            )),
        };
        let mut sink = Sink {
            format: info.format,
            delimiter: info.delimiter,
            quote: info.quote,
            escape: info.escape,
            null: info.null.clone(),
            default: info.default.clone(),
            key_column,
            key_name: String::new(),
            columns: info.columns.clone(),
            expected: info.columns.as_ref().map(Vec::len),
            force_null: false,
            force_not_null: false,
            header_pending: info.header != CopyHeader::Absent && info.format != CopyFormat::Binary,
            table: info.table.clone(),
            place,
            out: (0..shards).map(|_| BytesMut::new()).collect(),
            rows: 0,
            log: RowLog::new(shards),
        };
        sink.set_key_name(info, key_name);
        CopySplitter {
            reader,
            sink,
            ended: false,
            finished: false,
            failed: None,
        }
    }

    /// A splitter placing keys with a sharded table's [`Placement`]: text
    /// keys must be UTF-8 (the client encoding of a UTF8 database), binary
    /// keys in the key type's binary format. With `info.encoding` naming
    /// another encoding, text-format keys in an encoding the router reads
    /// (`crate::encoding`) are read as the server converts them, and
    /// otherwise only ASCII keys are placed (others 0A000); a caller whose
    /// session `client_encoding` is not UTF8 sets `info.encoding` to it.
    pub fn for_placement(
        info: &CopyInfo,
        key_column: usize,
        placement: Arc<Placement>,
    ) -> CopySplitter {
        let binary = info.format == CopyFormat::Binary;
        let shards = placement.shards;
        let foreign = info.encoding.clone().filter(|e| !is_utf8(e));
        let codec = match foreign.as_deref().map(crate::encoding::lookup) {
            Some(crate::encoding::Lookup::Codec(codec)) if !binary => Some(codec),
            _ => None,
        };
        let place: PlaceKey = Box::new(move |raw| {
            let ty = placement.key_type;
            let decoded = match (codec, raw) {
                (Some(codec), Some(bytes)) if !bytes.is_ascii() => codec.decode(bytes),
                _ => None,
            };
            let raw = decoded.as_deref().map(str::as_bytes).or(raw);
            if let (Some(encoding), Some(bytes)) = (&foreign, raw) {
                if decoded.is_none() && !bytes.is_ascii() {
                    return Err(KeyError {
                        sqlstate: "0A000",
                        message: format!(
                            "pgrouter: a non-ASCII shard key in COPY ENCODING '{encoding}' cannot be placed (keys are \
                             hashed as UTF-8); HINT: send the data in UTF8"
                        ),
                    });
                }
            }
            let value = match raw {
                None => KeyValue::Null,
                Some(bytes) if binary => {
                    binary_width(ty, bytes.len(), key_column)?;
                    parse_binary(ty, ty, bytes)?
                }
                Some(bytes) => {
                    let text = std::str::from_utf8(bytes).map_err(|_| KeyError {
                        sqlstate: "22021",
                        message: "invalid byte sequence for encoding \"UTF8\" in the shard key"
                            .into(),
                    })?;
                    parse_text(ty, text)?
                }
            };
            placement.shard_of(&value)
        });
        CopySplitter::new(info, key_column, shards, place)
    }

    /// The row layout when `info.columns` is not given (COPY without a
    /// column list): the table's columns in order, as learnt from the
    /// catalog. Rows must have that many fields; names are used in
    /// messages and for `FORCE_NULL`/`FORCE_NOT_NULL` on the key.
    pub fn with_columns(mut self, info: &CopyInfo, columns: &[String]) -> CopySplitter {
        if info.columns.is_none() {
            self.sink.expected = Some(columns.len());
            self.sink.columns = Some(columns.to_vec());
            if let Some(name) = columns.get(self.sink.key_column) {
                self.sink.set_key_name(info, name.clone());
            }
        }
        self
    }

    /// The number of fields every row must have, when neither `info.columns`
    /// nor [`Self::with_columns`] says.
    pub fn with_column_count(mut self, count: usize) -> CopySplitter {
        self.sink.expected = Some(count);
        self
    }

    /// The key column's name, for messages and `FORCE_NULL`/`FORCE_NOT_NULL`
    /// when `info.columns` does not name it.
    pub fn with_key_name(mut self, info: &CopyInfo, name: &str) -> CopySplitter {
        self.sink.set_key_name(info, name.to_string());
        self
    }

    /// One CopyData payload from the client (rows may span payloads; a
    /// payload may hold many rows).
    pub fn feed(&mut self, data: &[u8]) -> Result<(), CopySplitError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.finished {
            return Err(CopySplitError {
                sqlstate: "08P01",
                message: "pgrouter: COPY data after the end of the COPY".into(),
                hint: None,
                context: None,
            });
        }
        if self.ended || data.is_empty() {
            return Ok(());
        }
        match &mut self.reader {
            Reader::Text(r) => r.buf.extend_from_slice(data),
            Reader::Binary(r) => r.buf.extend_from_slice(data),
        }
        self.run(false)
    }

    /// CopyDone: the rest is split (an unterminated last line is a row, as
    /// PostgreSQL accepts it) and binary outputs get their trailer.
    pub fn finish(&mut self) -> Result<(), CopySplitError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.finished {
            return Ok(());
        }
        self.run(true)?;
        self.finished = true;
        // Every shard that got a binary header gets a trailer (no data at
        // all is an empty COPY: nothing to send).
        if matches!(&self.reader, Reader::Binary(r) if r.has_header()) {
            for out in &mut self.sink.out {
                out.extend_from_slice(&TRAILER);
            }
        }
        Ok(())
    }

    /// Bytes ready for shard `shard` (to send in CopyData messages), taken out.
    pub fn take(&mut self, shard: usize) -> BytesMut {
        self.sink
            .out
            .get_mut(shard)
            .map(BytesMut::split)
            .unwrap_or_default()
    }

    /// Bytes waiting in all outputs (for back-pressure).
    pub fn buffered(&self) -> usize {
        self.sink.out.iter().map(BytesMut::len).sum()
    }

    /// Input bytes held back, waiting for the rest of their row: the
    /// splitter's own memory besides the outputs (the fuzz target checks it
    /// never holds more than the input not yet split).
    pub fn pending(&self) -> usize {
        match &self.reader {
            Reader::Text(r) => r.buf.len(),
            Reader::Binary(r) => r.buf.len(),
        }
    }

    /// Data rows split so far (header lines not counted).
    pub fn rows(&self) -> u64 {
        self.sink.rows
    }

    /// The client's line number for line `line` of the data sent to
    /// output `shard`; None when that row is past what was logged.
    pub fn client_line(&self, shard: usize, line: u64) -> Option<u64> {
        self.sink.log.client_line(shard, line)
    }

    fn run(&mut self, eof: bool) -> Result<(), CopySplitError> {
        let result = match &mut self.reader {
            Reader::Text(r) => self.sink.run_text(r, eof, &mut self.ended),
            Reader::Binary(r) => self.sink.run_binary(r, eof),
        };
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }
}

impl Sink {
    fn set_key_name(&mut self, info: &CopyInfo, name: String) {
        self.force_null = info.format == CopyFormat::Csv && info.force_null.contains(&name);
        self.force_not_null = info.format == CopyFormat::Csv && info.force_not_null.contains(&name);
        self.key_name = name;
    }

    fn run_text(
        &mut self,
        r: &mut TextReader,
        eof: bool,
        ended: &mut bool,
    ) -> Result<(), CopySplitError> {
        loop {
            let line = match r.next_line(eof) {
                Ok(Some(line)) => line,
                Ok(None) => return Ok(()),
                Err(e) => {
                    return Err(CopySplitError {
                        sqlstate: BAD_COPY_FORMAT,
                        message: e.message.into(),
                        hint: e.hint.map(str::to_string),
                        context: Some(format!("COPY {}, line {}", self.table, r.line_no)),
                    })
                }
            };
            let raw = &r.buf[..line.consumed];
            if self.header_pending {
                self.header_pending = false;
                for out in &mut self.out {
                    out.extend_from_slice(raw);
                }
                self.log.header(r.line_no);
            } else if !(line.end_of_data && line.len == 0) {
                let shard = self.row_shard(&r.buf[..line.len], r.line_no)?;
                let shard = self.checked(shard, r.line_no)?;
                self.out[shard].extend_from_slice(raw);
                self.rows += 1;
                self.log.row(shard, r.line_no);
            }
            r.consume(&line);
            if line.end_of_data {
                // PostgreSQL ignores whatever follows the marker.
                *ended = true;
                r.buf.clear();
                return Ok(());
            }
        }
    }

    /// The shard of one text or CSV line.
    fn row_shard(&self, line: &[u8], line_no: u64) -> Result<usize, CopySplitError> {
        let bad = |message: String| CopySplitError {
            sqlstate: BAD_COPY_FORMAT,
            message,
            hint: None,
            context: Some(format!(
                "COPY {}, line {line_no}: \"{}\"",
                self.table,
                printable(line)
            )),
        };
        let fields = if self.format == CopyFormat::Csv {
            csv_fields(
                line,
                self.delimiter,
                self.quote,
                self.escape,
                &self.null,
                self.key_column,
            )
            .map_err(|m| bad(m.into()))?
        } else {
            text_fields(line, self.delimiter, &self.null, self.key_column)
        };
        if let Some(n) = self.expected {
            if fields.count > n {
                return Err(bad("extra data after last expected column".into()));
            }
            if fields.count < n {
                let missing = self
                    .columns
                    .as_ref()
                    .and_then(|c| c.get(fields.count))
                    .map_or_else(
                        || {
                            if fields.count == self.key_column {
                                self.key_name.clone()
                            } else {
                                format!("#{}", fields.count + 1)
                            }
                        },
                        Clone::clone,
                    );
                return Err(bad(format!("missing data for column \"{missing}\"")));
            }
        }
        let Some(key) = fields.key else {
            return Err(bad(format!(
                "missing data for column \"{}\"",
                self.key_name
            )));
        };
        let quoted_ok = self.format != CopyFormat::Csv || !fields.key_quoted;
        if self.default.as_deref() == Some(&line[fields.key_raw.clone()]) && quoted_ok {
            return Err(CopySplitError {
                sqlstate: "0A000",
                message: format!(
                    "pgrouter: the shard key \"{}\" of a COPY row is the DEFAULT marker; the router cannot place it",
                    self.key_name
                ),
                hint: Some("give the shard key's value in every row".into()),
                context: Some(format!("COPY {}, line {line_no}", self.table)),
            });
        }
        let key = match key {
            Field::Null if self.force_not_null => Some(self.null.clone()),
            Field::Null => None,
            Field::Value(v) if self.force_null && v == self.null => None,
            Field::Value(v) => Some(v),
        };
        (self.place)(key.as_deref()).map_err(|e| CopySplitError {
            sqlstate: e.sqlstate,
            message: e.message,
            hint: None,
            context: Some(match &key {
                Some(v) => format!(
                    "COPY {}, line {line_no}, column {}: \"{}\"",
                    self.table,
                    self.key_name,
                    printable(v)
                ),
                None => format!(
                    "COPY {}, line {line_no}, column {}: null input",
                    self.table, self.key_name
                ),
            }),
        })
    }

    fn run_binary(&mut self, r: &mut BinaryReader, eof: bool) -> Result<(), CopySplitError> {
        loop {
            let item = match r.next(eof, self.expected, self.key_column) {
                Ok(Some(item)) => item,
                Ok(None) => return Ok(()),
                Err(e) => {
                    let line = format!("COPY {}, line {}", self.table, r.tuple_no);
                    return Err(CopySplitError {
                        sqlstate: BAD_COPY_FORMAT,
                        message: e.message,
                        hint: None,
                        context: match e.at {
                            Where::Header => None,
                            Where::Tuple => Some(line),
                            Where::Field(i) => Some(match self.column_name(i) {
                                Some(name) => format!("{line}, column {name}"),
                                None => line,
                            }),
                        },
                    });
                }
            };
            match &item {
                Item::Header(n) => {
                    for out in &mut self.out {
                        out.extend_from_slice(&r.buf[..*n]);
                    }
                }
                Item::Tuple { len, key, .. } => {
                    let raw = key.map(|(s, e)| &r.buf[s..e]);
                    let shard = (self.place)(raw).map_err(|e| CopySplitError {
                        sqlstate: e.sqlstate,
                        message: e.message,
                        hint: None,
                        context: Some(format!(
                            "COPY {}, line {}, column {}",
                            self.table, r.tuple_no, self.key_name
                        )),
                    })?;
                    let shard = self.checked(shard, r.tuple_no)?;
                    self.out[shard].extend_from_slice(&r.buf[..*len]);
                    self.rows += 1;
                    self.log.row(shard, r.tuple_no);
                }
                Item::Trailer => {}
            }
            r.consume(&item);
        }
    }
}

impl Sink {
    /// The name of field `i` of a row, when known.
    fn column_name(&self, i: usize) -> Option<&str> {
        match &self.columns {
            Some(c) => c.get(i).map(String::as_str),
            None => (i == self.key_column).then_some(self.key_name.as_str()),
        }
    }

    /// A shard index the placement gave, refused when there is no such output.
    fn checked(&self, shard: usize, line_no: u64) -> Result<usize, CopySplitError> {
        if shard < self.out.len() {
            return Ok(shard);
        }
        Err(CopySplitError {
            sqlstate: "22023",
            message: format!(
                "pgrouter: shard {shard} does not exist ({} shards)",
                self.out.len()
            ),
            hint: None,
            context: Some(format!("COPY {}, line {line_no}", self.table)),
        })
    }
}

/// Whether an encoding name is PostgreSQL's UTF8 (names compare without
/// case and punctuation, as PostgreSQL compares them).
pub fn is_utf8(name: &str) -> bool {
    let key: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
    key.eq_ignore_ascii_case("utf8") || key.eq_ignore_ascii_case("unicode")
}

/// A binary key field must be exactly its type's width, as the type's
/// receive function requires (PostgreSQL's errors for short and long data).
fn binary_width(ty: KeyType, len: usize, key_column: usize) -> Result<(), KeyError> {
    let width = match ty {
        KeyType::Smallint => 2,
        KeyType::Integer => 4,
        KeyType::Bigint => 8,
        KeyType::Uuid => 16,
        KeyType::Text | KeyType::Varchar => return Ok(()),
    };
    if len < width {
        return Err(KeyError {
            sqlstate: "08P01",
            message: "insufficient data left in message".into(),
        });
    }
    if len > width {
        return Err(KeyError {
            sqlstate: "22P03",
            message: format!(
                "incorrect binary data format in binary field {}",
                key_column + 1
            ),
        });
    }
    Ok(())
}

/// Data for an error context, cut as PostgreSQL cuts it (100 bytes, then "...").
fn printable(bytes: &[u8]) -> String {
    const MAX: usize = 100;
    let text = String::from_utf8_lossy(bytes);
    if text.len() <= MAX {
        return text.into_owned();
    }
    let mut cut = MAX;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &text[..cut])
}
