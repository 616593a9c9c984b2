//! Lines and fields of COPY text and CSV data, read the way PostgreSQL 15
//! reads them (`CopyReadLineText`, `CopyReadAttributesText/CSV`), so each
//! row is cut where the server would cut it and its key field has the value
//! the server would see.
//!
//! Line ends: the first line fixes the style (`\n`, `\r` or `\r\n`) and a
//! different one later is PostgreSQL's "literal newline/carriage return"
//! error — checked over the whole input, because each shard sees only some
//! lines and could not notice a mix. Text format: a backslash escapes the
//! next byte (also a newline), and `\.` ends the data (what precedes it on
//! its line is still a row). CSV: newlines inside quotes belong to the
//! field; `\.` ends the data only alone at the start of a line.

use bytes::{Buf, BytesMut};

/// The line-end style the first line set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eol {
    Unknown,
    Nl,
    Cr,
    CrLf,
}

/// A complete line at the start of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Line {
    /// Bytes of the line's content (no line end, no end marker).
    pub len: usize,
    /// Bytes the line takes in the input, line end or end marker included.
    pub consumed: usize,
    /// The line ended with the `\.` end-of-data marker.
    pub end_of_data: bool,
}

/// A malformed line: PostgreSQL's message and hint (SQLSTATE 22P04).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LineError {
    pub message: &'static str,
    pub hint: Option<&'static str>,
}

/// The scanner of one COPY FROM stream in text or CSV format.
pub(super) struct TextReader {
    csv: bool,
    quote: u8,
    escape: u8,
    /// Unconsumed input, starting at the current line.
    pub buf: BytesMut,
    /// How far the current line has been scanned, and the CSV state there.
    scan: usize,
    in_quote: bool,
    last_was_esc: bool,
    eol: Eol,
    /// PostgreSQL's line counter for error context (CSV counts newlines
    /// inside quotes too).
    pub line_no: u64,
    /// Whether `line_no` already counts the current line.
    counted: bool,
}

enum Peek {
    Byte(u8),
    /// End of input (PostgreSQL reads a 0 byte there).
    Eof,
    NeedMore,
}

impl TextReader {
    pub fn new(csv: bool, quote: u8, escape: u8) -> TextReader {
        TextReader {
            csv,
            quote,
            // As PostgreSQL: an escape equal to the quote is no escape here
            // (a doubled quote simply toggles twice).
            escape: if escape == quote { 0 } else { escape },
            buf: BytesMut::new(),
            scan: 0,
            in_quote: false,
            last_was_esc: false,
            eol: Eol::Unknown,
            line_no: 0,
            counted: false,
        }
    }

    /// Drops a line returned by [`Self::next_line`] from the buffer.
    pub fn consume(&mut self, line: &Line) {
        self.buf.advance(line.consumed);
        self.scan = 0;
        self.in_quote = false;
        self.last_was_esc = false;
        self.counted = false;
    }

    /// The next complete line; `None` when more input is needed (or, with
    /// `eof`, when the input is used up). At `eof` an unterminated last line
    /// is a line, as PostgreSQL accepts it.
    pub fn next_line(&mut self, eof: bool) -> Result<Option<Line>, LineError> {
        if !self.counted {
            if self.buf.is_empty() {
                return Ok(None);
            }
            self.line_no += 1;
            self.counted = true;
        }
        let b = &self.buf[..];
        let n = b.len();
        let peek = |j: usize| match b.get(j) {
            Some(&c) => Peek::Byte(c),
            None if eof => Peek::Eof,
            None => Peek::NeedMore,
        };
        let mut i = self.scan;
        loop {
            // Text format: only line ends and backslashes matter; jump to the next.
            if !self.csv {
                i = memchr::memchr3(b'\n', b'\r', b'\\', &b[i.min(n)..]).map_or(n, |at| i + at);
            }
            // The state before this byte, restored when it needs bytes not yet here.
            let saved = (self.in_quote, self.last_was_esc, self.line_no);
            macro_rules! need_more {
                () => {{
                    (self.in_quote, self.last_was_esc, self.line_no) = saved;
                    self.scan = i;
                    return Ok(None);
                }};
            }
            let Some(&c) = b.get(i) else {
                if !eof {
                    need_more!();
                }
                return Ok(Some(Line {
                    len: n,
                    consumed: n,
                    end_of_data: false,
                }));
            };
            if self.csv {
                if (c == b'\\' || c == b'\r') && matches!(peek(i + 1), Peek::NeedMore) {
                    need_more!();
                }
                if self.in_quote && c == self.escape {
                    self.last_was_esc = !self.last_was_esc;
                }
                if c == self.quote && !self.last_was_esc {
                    self.in_quote = !self.in_quote;
                }
                if c != self.escape {
                    self.last_was_esc = false;
                }
                let inner_newline = if self.eol == Eol::Nl { b'\n' } else { b'\r' };
                if self.in_quote && c == inner_newline {
                    self.line_no += 1;
                }
            }
            let unquoted = !self.csv || !self.in_quote;
            if c == b'\r' && unquoted {
                let line = |consumed| Line {
                    len: i,
                    consumed,
                    end_of_data: false,
                };
                match self.eol {
                    Eol::Unknown | Eol::CrLf => match peek(i + 1) {
                        Peek::NeedMore => need_more!(),
                        Peek::Byte(b'\n') => {
                            self.eol = Eol::CrLf;
                            return Ok(Some(line(i + 2)));
                        }
                        _ if self.eol == Eol::CrLf => return Err(self.carriage_return()),
                        _ => {
                            self.eol = Eol::Cr;
                            return Ok(Some(line(i + 1)));
                        }
                    },
                    Eol::Nl => return Err(self.carriage_return()),
                    Eol::Cr => return Ok(Some(line(i + 1))),
                }
            }
            if c == b'\n' && unquoted {
                if matches!(self.eol, Eol::Cr | Eol::CrLf) {
                    return Err(if self.csv {
                        LineError {
                            message: "unquoted newline found in data",
                            hint: Some("Use quoted CSV field to represent newline."),
                        }
                    } else {
                        LineError {
                            message: "literal newline found in data",
                            hint: Some("Use \"\\n\" to represent newline."),
                        }
                    });
                }
                self.eol = Eol::Nl;
                return Ok(Some(Line {
                    len: i,
                    consumed: i + 1,
                    end_of_data: false,
                }));
            }
            if c == b'\\' && (!self.csv || i == 0) {
                match peek(i + 1) {
                    Peek::NeedMore => need_more!(),
                    // A backslash just before the end of input is data.
                    Peek::Eof => {
                        return Ok(Some(Line {
                            len: n,
                            consumed: n,
                            end_of_data: false,
                        }))
                    }
                    Peek::Byte(b'.') => match self.end_marker(i, &peek) {
                        Marker::NeedMore => need_more!(),
                        Marker::End(consumed) => {
                            return Ok(Some(Line {
                                len: i,
                                consumed,
                                end_of_data: true,
                            }))
                        }
                        Marker::Data => {}
                        Marker::Error(message) => {
                            return Err(LineError {
                                message,
                                hint: None,
                            })
                        }
                    },
                    // Text format: the escaped byte is never special.
                    Peek::Byte(_) if !self.csv => i += 1,
                    Peek::Byte(_) => {}
                }
            }
            i += 1;
        }
    }

    /// `\.` at `i`: the end of the data, or (CSV) data after all.
    fn end_marker(&self, i: usize, peek: &dyn Fn(usize) -> Peek) -> Marker {
        let byte = |j: usize| match peek(j) {
            Peek::Byte(c) => Some(c),
            Peek::Eof => Some(0),
            Peek::NeedMore => None,
        };
        let mut j = i + 2;
        let not_end = |message| {
            if self.csv {
                Marker::Data
            } else {
                Marker::Error(message)
            }
        };
        if self.eol == Eol::CrLf {
            let Some(c) = byte(j) else {
                return Marker::NeedMore;
            };
            j += 1;
            if c == b'\n' {
                return not_end("end-of-copy marker does not match previous newline style");
            }
            if c != b'\r' {
                return not_end("end-of-copy marker corrupt");
            }
        }
        let Some(c) = byte(j) else {
            return Marker::NeedMore;
        };
        j += 1;
        if c != b'\r' && c != b'\n' {
            return not_end("end-of-copy marker corrupt");
        }
        if (matches!(self.eol, Eol::Nl | Eol::CrLf) && c != b'\n')
            || (self.eol == Eol::Cr && c != b'\r')
        {
            return Marker::Error("end-of-copy marker does not match previous newline style");
        }
        Marker::End(j)
    }

    fn carriage_return(&self) -> LineError {
        if self.csv {
            LineError {
                message: "unquoted carriage return found in data",
                hint: Some("Use quoted CSV field to represent carriage return."),
            }
        } else {
            LineError {
                message: "literal carriage return found in data",
                hint: Some("Use \"\\r\" to represent carriage return."),
            }
        }
    }
}

enum Marker {
    NeedMore,
    /// The data ends; the marker and its line end take the input up to here.
    End(usize),
    /// CSV: not a marker, the line goes on.
    Data,
    Error(&'static str),
}

/// One field of a line as PostgreSQL reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Field {
    Null,
    Value(Vec<u8>),
}

/// The fields of a line: how many there are and the value of field `key`
/// (`None` when the line has fewer fields).
pub(super) struct Fields {
    pub count: usize,
    pub key: Option<Field>,
    /// The key field's raw bytes in the line (for the DEFAULT marker).
    pub key_raw: std::ops::Range<usize>,
    /// CSV: the key field had quotes.
    pub key_quoted: bool,
}

/// Splits a text-format line on `delimiter`; only the key field is
/// de-escaped. A field whose raw bytes are the NULL marker is NULL.
pub(super) fn text_fields(line: &[u8], delimiter: u8, null: &[u8], key: usize) -> Fields {
    let mut fields = Fields {
        count: 0,
        key: None,
        key_raw: 0..0,
        key_quoted: false,
    };
    let mut i = 0;
    loop {
        let start = i;
        while i < line.len() && line[i] != delimiter {
            i += if line[i] == b'\\' { 2 } else { 1 };
        }
        let end = i.min(line.len());
        if fields.count == key {
            let raw = &line[start..end];
            fields.key_raw = start..end;
            fields.key = Some(if raw == null {
                Field::Null
            } else {
                Field::Value(unescape(raw))
            });
        }
        fields.count += 1;
        if i >= line.len() {
            return fields;
        }
        i += 1;
    }
}

/// PostgreSQL's text-format escapes: `\b \f \n \r \t \v`, octal `\ooo`,
/// hex `\xhh`, any other byte after a backslash is itself; a trailing
/// backslash is dropped.
fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let mut c = raw[i];
        i += 1;
        if c == b'\\' {
            let Some(&e) = raw.get(i) else { break };
            i += 1;
            c = match e {
                b'0'..=b'7' => {
                    let mut v = u32::from(e - b'0');
                    for _ in 0..2 {
                        match raw.get(i) {
                            Some(&d @ b'0'..=b'7') => {
                                v = v * 8 + u32::from(d - b'0');
                                i += 1;
                            }
                            _ => break,
                        }
                    }
                    (v & 0xff) as u8
                }
                b'x' => match raw.get(i).and_then(|&d| hex(d)) {
                    Some(h) => {
                        i += 1;
                        let mut v = h;
                        if let Some(l) = raw.get(i).and_then(|&d| hex(d)) {
                            v = v * 16 + l;
                            i += 1;
                        }
                        v
                    }
                    None => b'x',
                },
                b'b' => 8,
                b'f' => 12,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'v' => 11,
                other => other,
            };
        }
        out.push(c);
    }
    out
}

fn hex(d: u8) -> Option<u8> {
    (d as char).to_digit(16).map(|v| v as u8)
}

/// Splits a CSV line; quotes, the escape character and doubled quotes are
/// resolved for the key field. An unquoted field equal to the NULL string
/// is NULL. `Err` is PostgreSQL's "unterminated CSV quoted field".
pub(super) fn csv_fields(
    line: &[u8],
    delimiter: u8,
    quote: u8,
    escape: u8,
    null: &[u8],
    key: usize,
) -> Result<Fields, &'static str> {
    let mut fields = Fields {
        count: 0,
        key: None,
        key_raw: 0..0,
        key_quoted: false,
    };
    let mut i = 0;
    loop {
        let start = i;
        // Only the key field's value is built.
        let collect = fields.count == key;
        let mut value = Vec::new();
        let mut saw_quote = false;
        let mut found_delim = false;
        'field: loop {
            // Outside quotes.
            loop {
                let Some(&c) = line.get(i) else { break 'field };
                i += 1;
                if c == delimiter {
                    found_delim = true;
                    break 'field;
                }
                if c == quote {
                    saw_quote = true;
                    break;
                }
                if collect {
                    value.push(c);
                }
            }
            // Inside quotes.
            loop {
                let Some(&c) = line.get(i) else {
                    return Err("unterminated CSV quoted field");
                };
                i += 1;
                if c == escape {
                    if let Some(&next) = line.get(i) {
                        if next == escape || next == quote {
                            if collect {
                                value.push(next);
                            }
                            i += 1;
                            continue;
                        }
                    }
                }
                if c == quote {
                    break;
                }
                if collect {
                    value.push(c);
                }
            }
        }
        if collect {
            let end = if found_delim { i - 1 } else { i };
            let raw = &line[start..end];
            fields.key_raw = start..end;
            fields.key_quoted = saw_quote;
            fields.key = Some(if !saw_quote && raw == null {
                Field::Null
            } else {
                Field::Value(value)
            });
        }
        fields.count += 1;
        if !found_delim {
            return Ok(fields);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line as (content, bytes consumed, ended by `\.`).
    type Read = (Vec<u8>, usize, bool);

    /// Every line of `input` fed at once, or the error.
    fn lines(csv: bool, input: &[u8]) -> Result<Vec<Read>, &'static str> {
        let mut r = TextReader::new(csv, b'"', b'"');
        r.buf.extend_from_slice(input);
        let mut out = Vec::new();
        while let Some(line) = r.next_line(true).map_err(|e| e.message)? {
            out.push((r.buf[..line.len].to_vec(), line.consumed, line.end_of_data));
            r.consume(&line);
            if line.end_of_data {
                break;
            }
        }
        Ok(out)
    }

    fn l(content: &str, consumed: usize) -> Read {
        (content.as_bytes().to_vec(), consumed, false)
    }

    #[test]
    fn text_lines_and_line_ends() {
        assert_eq!(
            lines(false, b"a\tb\nc").unwrap(),
            vec![l("a\tb", 4), l("c", 1)]
        );
        assert_eq!(
            lines(false, b"a\r\nb\r\n").unwrap(),
            vec![l("a", 3), l("b", 3)]
        );
        assert_eq!(lines(false, b"a\rb\r").unwrap(), vec![l("a", 2), l("b", 2)]);
        assert_eq!(lines(false, b"a\\\nb\n").unwrap(), vec![l("a\\\nb", 5)]);
        assert_eq!(lines(false, b"a\\").unwrap(), vec![l("a\\", 2)]);
        assert_eq!(
            lines(false, b"a\r\nb\n"),
            Err("literal newline found in data")
        );
        assert_eq!(
            lines(false, b"a\nb\r\n"),
            Err("literal carriage return found in data")
        );
        assert_eq!(
            lines(false, b"a\r\nb\rc"),
            Err("literal carriage return found in data")
        );
        assert_eq!(
            lines(false, b"a\rb\n"),
            Err("literal newline found in data")
        );
    }

    #[test]
    fn text_end_marker() {
        assert_eq!(
            lines(false, b"a\n\\.\nignored\n").unwrap(),
            vec![l("a", 2), (vec![], 3, true)]
        );
        assert_eq!(
            lines(false, b"a\nc\\.\n").unwrap(),
            vec![l("a", 2), (b"c".to_vec(), 4, true)]
        );
        assert_eq!(lines(false, b"\\.\r\n").unwrap(), vec![(vec![], 3, true)]);
        assert_eq!(lines(false, b"a\n\\."), Err("end-of-copy marker corrupt"));
        assert_eq!(
            lines(false, b"a\n\\.x\n"),
            Err("end-of-copy marker corrupt")
        );
        assert_eq!(
            lines(false, b"a\r\n\\.\n"),
            Err("end-of-copy marker does not match previous newline style")
        );
        assert_eq!(lines(false, b"a\\\\.\n").unwrap(), vec![l("a\\\\.", 5)]);
    }

    #[test]
    fn csv_lines() {
        assert_eq!(
            lines(true, b"a,\"b\nc\"\r\nd\r\n").unwrap(),
            vec![l("a,\"b\nc\"", 9), l("d", 3)]
        );
        assert_eq!(
            lines(true, b"a\n\\.x\n\\.").unwrap(),
            vec![l("a", 2), l("\\.x", 4), l("\\.", 2)]
        );
        assert_eq!(
            lines(true, b"a\n\\.\nb\n").unwrap(),
            vec![l("a", 2), (vec![], 3, true)]
        );
        assert_eq!(lines(true, b"x\\.\n").unwrap(), vec![l("x\\.", 4)]);
        assert_eq!(
            lines(true, b"a\nb\rc"),
            Err("unquoted carriage return found in data")
        );
        assert_eq!(
            lines(true, b"\"a\nb\"\r\n").unwrap(),
            vec![l("\"a\nb\"", 7)]
        );
    }

    #[test]
    fn text_key_fields() {
        let f = text_fields(b"1\t\\x41\\101\\N\\t\tz", b'\t', b"\\N", 1);
        assert_eq!((f.count, f.key), (3, Some(Field::Value(b"AAN\t".to_vec()))));
        let f = text_fields(b"\\N\tb", b'\t', b"\\N", 0);
        assert_eq!(f.key, Some(Field::Null));
        let f = text_fields(b"a\\|b|c", b'|', b"\\N", 0);
        assert_eq!((f.count, f.key), (2, Some(Field::Value(b"a|b".to_vec()))));
        let f = text_fields(b"", b'\t', b"\\N", 0);
        assert_eq!((f.count, f.key), (1, Some(Field::Value(vec![]))));
        let f = text_fields(b"a", b'\t', b"\\N", 1);
        assert_eq!((f.count, f.key), (1, None));
        assert_eq!(
            unescape(b"\\x4g\\xz\\777\\q\\"),
            vec![4, b'g', b'x', b'z', 0xff, b'q']
        );
    }

    #[test]
    fn csv_key_fields() {
        let f = csv_fields(b"1,\"a,\"\"b\"\"\",,\"\"", b',', b'"', b'"', b"", 1).unwrap();
        assert_eq!(
            (f.count, f.key),
            (4, Some(Field::Value(b"a,\"b\"".to_vec())))
        );
        assert_eq!(
            csv_fields(b"1,x,,\"\"", b',', b'"', b'"', b"", 2)
                .unwrap()
                .key,
            Some(Field::Null)
        );
        let f = csv_fields(b"1,x,,\"\"", b',', b'"', b'"', b"", 3).unwrap();
        assert_eq!((f.key, f.key_quoted), (Some(Field::Value(vec![])), true));
        let f = csv_fields(b"\"a\\\"b\",x", b',', b'"', b'\\', b"", 0).unwrap();
        assert_eq!(f.key, Some(Field::Value(b"a\"b".to_vec())));
        let f = csv_fields(b"a\"b\"c,x", b',', b'"', b'"', b"", 0).unwrap();
        assert_eq!(f.key, Some(Field::Value(b"abc".to_vec())));
        assert!(csv_fields(b"a,\"b", b',', b'"', b'"', b"", 0).is_err());
    }
}
