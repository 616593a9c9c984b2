//! Tuples of PostgreSQL's binary COPY format, cut whole so each goes to
//! its key's shard: the header (11-byte signature, flags, extension) is
//! checked as PostgreSQL 15 checks it and goes to every shard; each tuple
//! is an int16 field count and per field an int32 length (-1 = NULL) and
//! the bytes; the int16 -1 trailer ends the data (every shard gets its own
//! trailer when the client finishes).

use bytes::{Buf, BytesMut};

/// The signature every binary COPY stream starts with.
pub(super) const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// The end-of-data trailer.
pub(super) const TRAILER: [u8; 2] = (-1i16).to_be_bytes();

/// What is complete at the start of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Item {
    /// The file header, this many bytes.
    Header(usize),
    /// A tuple of this many bytes; `key` is the key field's byte range in
    /// it (`None` for NULL); `fields` its field count.
    Tuple {
        len: usize,
        fields: i16,
        key: Option<(usize, usize)>,
    },
    /// The client's trailer (2 bytes).
    Trailer,
}

/// The reader of one binary COPY FROM stream.
pub(super) struct BinaryReader {
    pub buf: BytesMut,
    header_done: bool,
    trailer_seen: bool,
    /// Tuples begun so far: PostgreSQL's "line" number in messages.
    pub tuple_no: u64,
    counted: bool,
}

/// A malformed stream: PostgreSQL's message (SQLSTATE 22P04) and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BinaryError {
    pub message: String,
    pub at: Where,
}

/// Where a binary error is, for the error's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Where {
    /// The file header (PostgreSQL gives no context).
    Header,
    /// The current tuple.
    Tuple,
    /// Field `n` (0-based) of the current tuple.
    Field(usize),
}

fn fail(message: impl Into<String>, at: Where) -> BinaryError {
    BinaryError {
        message: message.into(),
        at,
    }
}

impl BinaryReader {
    pub fn new() -> BinaryReader {
        BinaryReader {
            buf: BytesMut::new(),
            header_done: false,
            trailer_seen: false,
            tuple_no: 0,
            counted: false,
        }
    }

    /// No header has been read: the client sent no data (yet).
    pub fn has_header(&self) -> bool {
        self.header_done
    }

    pub fn consume(&mut self, item: &Item) {
        let n = match item {
            Item::Header(n) => {
                self.header_done = true;
                *n
            }
            Item::Tuple { len, .. } => *len,
            Item::Trailer => {
                self.trailer_seen = true;
                2
            }
        };
        self.buf.advance(n);
        self.counted = false;
    }

    /// The next complete item; `None` when more input is needed, or at
    /// `eof` when the input is used up. `expected` is the row's field count
    /// when the column list is known; `key` the key field's index.
    pub fn next(
        &mut self,
        eof: bool,
        expected: Option<usize>,
        key: usize,
    ) -> Result<Option<Item>, BinaryError> {
        let b = &self.buf[..];
        if !self.header_done {
            return header(b, eof);
        }
        if self.trailer_seen {
            return if b.is_empty() {
                Ok(None)
            } else {
                Err(fail("received copy data after EOF marker", Where::Tuple))
            };
        }
        // PostgreSQL reads a tuple's count as one: fewer than 2 bytes at the
        // end of the data is the end of the data.
        if b.len() < 2 {
            return Ok(None);
        }
        if !self.counted {
            self.tuple_no += 1;
            self.counted = true;
        }
        let fields = i16::from_be_bytes([b[0], b[1]]);
        if fields == -1 {
            return Ok(Some(Item::Trailer));
        }
        if let Some(n) = expected {
            if usize::try_from(fields).ok() != Some(n) {
                return Err(fail(
                    format!("row field count is {fields}, expected {n}"),
                    Where::Tuple,
                ));
            }
        } else if fields < 0 || fields as usize <= key {
            let message = format!("row field count is {fields}, expected at least {}", key + 1);
            return Err(fail(message, Where::Tuple));
        }
        let mut at = 2;
        let mut key_range = None;
        for i in 0..fields as usize {
            let Some(len) = b.get(at..at + 4) else {
                return if eof {
                    Err(unexpected_eof(i))
                } else {
                    Ok(None)
                };
            };
            let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            at += 4;
            if len < -1 {
                return Err(fail("invalid field size", Where::Field(i)));
            }
            if len >= 0 {
                let end = at + len as usize;
                if i == key {
                    key_range = Some((at, end));
                }
                if end > b.len() {
                    return if eof {
                        Err(unexpected_eof(i))
                    } else {
                        Ok(None)
                    };
                }
                at = end;
            }
        }
        Ok(Some(Item::Tuple {
            len: at,
            fields,
            key: key_range,
        }))
    }
}

fn unexpected_eof(field: usize) -> BinaryError {
    fail("unexpected EOF in COPY data", Where::Field(field))
}

/// The header at the start of `b`, checked as PostgreSQL checks it.
fn header(b: &[u8], eof: bool) -> Result<Option<Item>, BinaryError> {
    // Incomplete: wait for more, or at the end PostgreSQL's message for the missing part.
    let short = |message: &str| -> Result<Option<Item>, BinaryError> {
        if eof {
            Err(fail(message, Where::Header))
        } else {
            Ok(None)
        }
    };
    // No data at all is an empty COPY to PostgreSQL, not a missing header.
    if b.is_empty() && eof {
        return Ok(None);
    }
    let n = b.len().min(SIGNATURE.len());
    if b[..n] != SIGNATURE[..n] {
        return Err(fail("COPY file signature not recognized", Where::Header));
    }
    if b.len() < 11 {
        return short("COPY file signature not recognized");
    }
    let Some(flags) = b.get(11..15) else {
        return short("invalid COPY file header (missing flags)");
    };
    let flags = u32::from_be_bytes([flags[0], flags[1], flags[2], flags[3]]);
    if flags & (1 << 16) != 0 {
        return Err(fail("invalid COPY file header (WITH OIDS)", Where::Header));
    }
    if (flags & !(1 << 16)) >> 16 != 0 {
        return Err(fail(
            "unrecognized critical flags in COPY file header",
            Where::Header,
        ));
    }
    let Some(ext) = b.get(15..19) else {
        return short("invalid COPY file header (missing length)");
    };
    let ext = i32::from_be_bytes([ext[0], ext[1], ext[2], ext[3]]);
    if ext < 0 {
        return Err(fail(
            "invalid COPY file header (wrong length)",
            Where::Header,
        ));
    }
    let total = 19 + ext as usize;
    if b.len() < total {
        return short("invalid COPY file header (wrong length)");
    }
    Ok(Some(Item::Header(total)))
}
