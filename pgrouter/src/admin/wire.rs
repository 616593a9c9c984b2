//! The backend messages only the admin console writes: result sets, notices,
//! errors with a hint. Built on [`crate::protocol::backend`]'s framing.

use bytes::{BufMut, BytesMut};

use crate::protocol::backend::{command_complete, put_cstr, put_message};

/// A column's type, as PostgreSQL type OIDs; values are always sent as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Int8,
    Bool,
}

impl ColumnType {
    pub fn oid(self) -> i32 {
        match self {
            ColumnType::Text => 25,
            ColumnType::Int8 => 20,
            ColumnType::Bool => 16,
        }
    }

    fn size(self) -> i16 {
        match self {
            ColumnType::Text => -1,
            ColumnType::Int8 => 8,
            ColumnType::Bool => 1,
        }
    }
}

/// One value of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Text(String),
    Int(i64),
    Bool(bool),
    Null,
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::Text(s.to_string())
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::Text(s)
    }
}

impl From<u64> for Cell {
    fn from(n: u64) -> Cell {
        Cell::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<i64> for Cell {
    fn from(n: i64) -> Cell {
        Cell::Int(n)
    }
}

impl From<u32> for Cell {
    fn from(n: u32) -> Cell {
        Cell::Int(i64::from(n))
    }
}

impl From<u16> for Cell {
    fn from(n: u16) -> Cell {
        Cell::Int(i64::from(n))
    }
}

impl From<i32> for Cell {
    fn from(n: i32) -> Cell {
        Cell::Int(i64::from(n))
    }
}

impl From<bool> for Cell {
    fn from(b: bool) -> Cell {
        Cell::Bool(b)
    }
}

impl<T: Into<Cell>> From<Option<T>> for Cell {
    fn from(v: Option<T>) -> Cell {
        v.map_or(Cell::Null, Into::into)
    }
}

/// A whole result: columns, rows, and the command tag that closes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultSet {
    pub columns: Vec<(&'static str, ColumnType)>,
    pub rows: Vec<Vec<Cell>>,
}

impl ResultSet {
    pub fn new(columns: &[(&'static str, ColumnType)]) -> ResultSet {
        ResultSet {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<Cell>) {
        debug_assert_eq!(row.len(), self.columns.len());
        self.rows.push(row);
    }

    /// RowDescription, one DataRow per row, CommandComplete `tag`.
    pub fn write(&self, out: &mut BytesMut, tag: &str) {
        row_description(out, &self.columns);
        for row in &self.rows {
            data_row(out, row);
        }
        command_complete(out, tag);
    }
}

pub fn row_description(out: &mut BytesMut, columns: &[(&str, ColumnType)]) {
    row_description_in(out, columns, |_| 0);
}

/// A RowDescription whose column `i` comes in format `format_of(i)` (0
/// text, 1 binary), as a Bind's result format codes ask.
pub fn row_description_in(
    out: &mut BytesMut,
    columns: &[(&str, ColumnType)],
    format_of: impl Fn(usize) -> i16,
) {
    put_message(out, b'T', |b| {
        b.put_i16(columns.len() as i16);
        for (i, (name, ty)) in columns.iter().enumerate() {
            put_cstr(b, name);
            b.put_i32(0); // table OID
            b.put_i16(0); // column number
            b.put_i32(ty.oid());
            b.put_i16(ty.size());
            b.put_i32(-1); // type modifier
            b.put_i16(format_of(i));
        }
    });
}

pub fn data_row(out: &mut BytesMut, cells: &[Cell]) {
    put_message(out, b'D', |b| {
        b.put_i16(cells.len() as i16);
        for cell in cells {
            let text = match cell {
                Cell::Null => {
                    b.put_i32(-1);
                    continue;
                }
                Cell::Text(s) => std::borrow::Cow::Borrowed(s.as_str()),
                Cell::Int(n) => std::borrow::Cow::Owned(n.to_string()),
                Cell::Bool(v) => std::borrow::Cow::Borrowed(if *v { "t" } else { "f" }),
            };
            b.put_i32(text.len() as i32);
            b.put_slice(text.as_bytes());
        }
    });
}

/// A DataRow whose column `i` is in format `format_of(i)`: 0 text, 1
/// binary (int8 as 8 bytes big-endian, bool as one byte, text as is), as an
/// extended-protocol client's Bind asks (asyncpg asks binary for all three).
pub fn data_row_in(out: &mut BytesMut, cells: &[Cell], format_of: impl Fn(usize) -> i16) {
    put_message(out, b'D', |b| {
        b.put_i16(cells.len() as i16);
        for (i, cell) in cells.iter().enumerate() {
            let binary = format_of(i) == 1;
            let value: std::borrow::Cow<'_, [u8]> = match cell {
                Cell::Null => {
                    b.put_i32(-1);
                    continue;
                }
                Cell::Text(s) => s.as_bytes().into(),
                Cell::Int(n) if binary => n.to_be_bytes().to_vec().into(),
                Cell::Int(n) => n.to_string().into_bytes().into(),
                Cell::Bool(v) if binary => vec![u8::from(*v)].into(),
                Cell::Bool(v) => (if *v { &b"t"[..] } else { &b"f"[..] }).into(),
            };
            b.put_i32(value.len() as i32);
            b.put_slice(&value);
        }
    });
}

/// Column `i`'s format under a Bind's result format codes: none = all
/// text, one = all columns, else one per column.
pub fn format_of(formats: &[i16], i: usize) -> i16 {
    match formats {
        [] => 0,
        [f] => *f,
        many => many.get(i).copied().unwrap_or(0),
    }
}

pub fn empty_query_response(out: &mut BytesMut) {
    put_message(out, b'I', |_| {});
}

pub fn notice(out: &mut BytesMut, message: &str) {
    put_message(out, b'N', |b| {
        for (field, value) in [
            (b'S', "NOTICE"),
            (b'V', "NOTICE"),
            (b'C', "00000"),
            (b'M', message),
        ] {
            b.put_u8(field);
            put_cstr(b, value);
        }
        b.put_u8(0);
    });
}

/// An ERROR (the session goes on) with an optional hint.
pub fn error(out: &mut BytesMut, sqlstate: &str, message: &str, hint: Option<&str>) {
    put_message(out, b'E', |b| {
        for (field, value) in [
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', sqlstate),
            (b'M', message),
        ] {
            b.put_u8(field);
            put_cstr(b, value);
        }
        if let Some(h) = hint {
            b.put_u8(b'H');
            put_cstr(b, h);
        }
        b.put_u8(0);
    });
}
