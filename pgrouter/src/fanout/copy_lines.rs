//! Line numbers of a `COPY FROM STDIN` split across shards.
//!
//! Each shard numbers only the rows it was sent: a row on line 7 of the
//! client's data may be line 3 on its shard, and that shard's error says
//! `COPY t, line 3`. Relayed as it is, the line number would point the
//! user at the wrong row. So the splitter logs which shard each row went
//! to (one byte a row, [`RowLog`]), and a shard's error is renumbered to
//! the client's line before the client sees it ([`renumber_error`]). Of
//! several shards' errors, the one on the earliest client line is the one
//! PostgreSQL alone would have reported.
//!
//! Lines are PostgreSQL's: a header line counts, a CSV row with newlines
//! inside quotes counts each of them, and in binary format each tuple is a
//! "line". The header (text or binary) goes to every shard, so it counts
//! the same on each.

use bytes::{BufMut, Bytes, BytesMut};

/// Rows logged at most (one byte each): 16 MiB. An error in a row past
/// them is still relayed, its line number marked as the shard's own.
const MAX_ROWS: usize = 16 << 20;

/// Which shard each data row went to, in the client's order.
#[derive(Debug, Default)]
pub struct RowLog {
    /// The shard of each row; empty when shards do not fit in a byte.
    shards: Vec<u8>,
    /// Rows spanning more than one line: (row index, lines).
    multi_line: Vec<(usize, u64)>,
    /// Lines before the first row (the header's).
    header_lines: u64,
    /// The line the last row (or the header) ended on.
    last_end: u64,
    /// No more rows are logged (too many, or too many shards).
    stopped: bool,
}

impl RowLog {
    pub fn new(shards: usize) -> RowLog {
        RowLog {
            stopped: shards > usize::from(u8::MAX) + 1,
            ..RowLog::default()
        }
    }

    /// The header ended on line `line_end`.
    pub fn header(&mut self, line_end: u64) {
        self.header_lines = line_end;
        self.last_end = line_end;
    }

    /// The next data row went to `shard` and ended on line `line_end`.
    pub fn row(&mut self, shard: usize, line_end: u64) {
        let lines = line_end.saturating_sub(self.last_end);
        self.last_end = line_end;
        if self.stopped || self.shards.len() >= MAX_ROWS {
            self.stopped = true;
            return;
        }
        if lines != 1 {
            self.multi_line.push((self.shards.len(), lines));
        }
        self.shards.push(shard as u8);
    }

    /// The client's line for line `line` of shard `shard`'s data; None when
    /// that row was not logged.
    pub fn client_line(&self, shard: usize, line: u64) -> Option<u64> {
        if line <= self.header_lines {
            return Some(line);
        }
        let (mut on_shard, mut client) = (self.header_lines, self.header_lines);
        let mut multi = self.multi_line.iter().peekable();
        for (i, &s) in self.shards.iter().enumerate() {
            let lines = match multi.peek() {
                Some(&&(at, n)) if at == i => {
                    multi.next();
                    n
                }
                _ => 1,
            };
            if usize::from(s) == shard {
                if line <= on_shard + lines {
                    return Some(client + (line - on_shard));
                }
                on_shard += lines;
            }
            client += lines;
        }
        None
    }
}

/// The line a COPY error's CONTEXT names (`COPY t, line N...`), if any.
pub fn error_copy_line(body: &[u8]) -> Option<u64> {
    let context = error_field(body, b'W')?;
    let (start, end) = copy_line_span(context)?;
    context[start..end].parse().ok()
}

/// The error body with its CONTEXT's COPY line number replaced by `line`
/// (the body unchanged when it names none).
pub fn renumber_error(body: &[u8], line: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + line.len());
    for (kind, value) in error_fields(body) {
        out.put_u8(kind);
        match (
            kind,
            std::str::from_utf8(value).ok().and_then(copy_line_span),
        ) {
            (b'W', Some((start, end))) => {
                out.extend_from_slice(&value[..start]);
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(&value[end..]);
            }
            _ => out.extend_from_slice(value),
        }
        out.put_u8(0);
    }
    out.put_u8(0);
    out.freeze()
}

/// Where the number is in the CONTEXT line `COPY <table>, line <N>...`
/// (the last context line is the COPY's; function contexts come first).
fn copy_line_span(context: &str) -> Option<(usize, usize)> {
    let line_start = context.rfind("\nCOPY ").map_or(0, |at| at + 1);
    let rest = context.get(line_start..)?;
    if !rest.starts_with("COPY ") {
        return None;
    }
    let at = line_start + rest.find(", line ")? + ", line ".len();
    let digits = context[at..].bytes().take_while(u8::is_ascii_digit).count();
    (digits > 0).then_some((at, at + digits))
}

fn error_field(body: &[u8], wanted: u8) -> Option<&str> {
    error_fields(body)
        .find(|(kind, _)| *kind == wanted)
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
}

/// An ErrorResponse body's (kind, value) fields; stops at anything malformed.
fn error_fields(body: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = body;
    std::iter::from_fn(move || {
        let (&kind, tail) = rest.split_first()?;
        if kind == 0 {
            return None;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        rest = &tail[end + 1..];
        Some((kind, &tail[..end]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(fields: &[(u8, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (k, v) in fields {
            b.push(*k);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    #[test]
    fn a_shards_line_is_the_clients_line_of_that_row() {
        // Header, then rows to shards 0 1 1 0 1 (lines 2..=6).
        let mut log = RowLog::new(2);
        log.header(1);
        for (i, s) in [0, 1, 1, 0, 1].into_iter().enumerate() {
            log.row(s, 2 + i as u64);
        }
        // Shard 1 got the header and rows 3, 4, 6: its lines 2, 3, 4.
        assert_eq!(log.client_line(1, 2), Some(3));
        assert_eq!(log.client_line(1, 3), Some(4));
        assert_eq!(log.client_line(1, 4), Some(6));
        assert_eq!(log.client_line(0, 3), Some(5));
        assert_eq!(
            log.client_line(0, 1),
            Some(1),
            "the header is everyone's line 1"
        );
        assert_eq!(log.client_line(0, 4), None, "shard 0 got two rows");
    }

    #[test]
    fn rows_of_several_lines_count_each() {
        // No header; row 1 (shard 0) spans lines 1-3, row 2 (shard 1) line
        // 4, row 3 (shard 1) lines 5-6.
        let mut log = RowLog::new(2);
        log.row(0, 3);
        log.row(1, 4);
        log.row(1, 6);
        assert_eq!(log.client_line(1, 1), Some(4));
        assert_eq!(log.client_line(1, 3), Some(6), "the row's last line");
        assert_eq!(log.client_line(0, 3), Some(3));
    }

    #[test]
    fn too_many_shards_for_a_byte_log_nothing() {
        let mut log = RowLog::new(300);
        log.row(299, 1);
        assert_eq!(log.client_line(299, 1), None);
    }

    #[test]
    fn the_copy_line_of_a_context_is_renumbered() {
        let e = body(&[
            (b'S', "ERROR"),
            (b'C', "22P02"),
            (b'M', "invalid input syntax for type integer: \"x\""),
            (
                b'W',
                "PL/pgSQL function f() line 3 at RAISE\nCOPY items, line 3, column qty: \"x\"",
            ),
            (b'F', "numutils.c"),
        ]);
        assert_eq!(error_copy_line(&e), Some(3));
        let renumbered = renumber_error(&e, "17");
        assert_eq!(
            error_field(&renumbered, b'W'),
            Some("PL/pgSQL function f() line 3 at RAISE\nCOPY items, line 17, column qty: \"x\"")
        );
        assert_eq!(error_field(&renumbered, b'C'), Some("22P02"));
        assert_eq!(error_field(&renumbered, b'F'), Some("numutils.c"));
        assert_eq!(renumbered.last(), Some(&0));
    }

    #[test]
    fn an_error_without_a_copy_line_is_left_alone() {
        let e = body(&[(b'S', "ERROR"), (b'C', "23505"), (b'M', "duplicate key")]);
        assert_eq!(error_copy_line(&e), None);
        assert_eq!(&renumber_error(&e, "9")[..], &e[..]);
    }
}
