//! `COPY table TO STDOUT` over several shards joined into one stream, as
//! one server holding all rows would send it: a text/CSV `HEADER` line
//! once, the binary file header once and one binary trailer at the very
//! end; every row in between passes unchanged, in whatever order the shards
//! deliver them (COPY TO promises no order).
//!
//! Each call's output is whole rows, whatever the servers' CopyData
//! framing, so outputs of different shards can be sent to the client in
//! any interleaving. Memory held is at most one unfinished row per shard.

use pgrouter_parser::copy::{CopyFormat, CopyHeader, CopyInfo};

use super::copy_binary::{SIGNATURE, TRAILER};

/// Why a shard's COPY TO stream cannot be joined (send 08P01).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOutError {
    pub message: String,
}

/// Joins the COPY TO streams of several shards.
pub struct CopyOutJoiner {
    format: CopyFormat,
    quote: u8,
    escape: u8,
    has_header: bool,
    shards: Vec<ShardOut>,
    /// The one header was sent to the client.
    header_sent: bool,
}

#[derive(Default)]
struct ShardOut {
    /// Bytes of the unfinished row (or header).
    pending: Vec<u8>,
    /// How far `pending` has been scanned, and the CSV state there.
    scanned: usize,
    in_quote: bool,
    escaped: bool,
    header_done: bool,
    trailer_seen: bool,
}

fn error(message: String) -> CopyOutError {
    CopyOutError { message }
}

impl CopyOutJoiner {
    pub fn new(info: &CopyInfo, shards: usize) -> CopyOutJoiner {
        let has_header = info.format == CopyFormat::Binary || info.header != CopyHeader::Absent;
        CopyOutJoiner {
            format: info.format,
            quote: info.quote,
            escape: if info.escape == info.quote {
                0
            } else {
                info.escape
            },
            has_header,
            shards: (0..shards)
                .map(|_| ShardOut {
                    header_done: !has_header,
                    ..ShardOut::default()
                })
                .collect(),
            header_sent: false,
        }
    }

    /// One CopyData payload from shard `shard`: the whole rows to send to
    /// the client now (possibly none).
    pub fn shard_data(&mut self, shard: usize, data: &[u8]) -> Result<Vec<u8>, CopyOutError> {
        let (format, quote, escape) = (self.format, self.quote, self.escape);
        let s = self
            .shards
            .get_mut(shard)
            .ok_or_else(|| error(format!("pgrouter: no COPY stream for shard {shard}")))?;
        s.pending.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            let end = match format {
                CopyFormat::Binary if !s.header_done => binary_header_len(&s.pending)?,
                CopyFormat::Binary => {
                    if s.trailer_seen {
                        return Err(error(format!(
                            "pgrouter: shard {shard} sent COPY data after its trailer"
                        )));
                    }
                    match tuple_len(&s.pending) {
                        Some(Tuple::Trailer) => {
                            s.trailer_seen = true;
                            s.pending.drain(..TRAILER.len());
                            if !s.pending.is_empty() {
                                return Err(error(format!(
                                    "pgrouter: shard {shard} sent COPY data after its trailer"
                                )));
                            }
                            return Ok(out);
                        }
                        Some(Tuple::Len(n)) => Some(n),
                        None => None,
                    }
                }
                CopyFormat::Csv => s.csv_row_end(quote, escape),
                CopyFormat::Text => {
                    let from = s.scanned;
                    let found = s.pending[from..]
                        .iter()
                        .position(|&c| c == b'\n')
                        .map(|i| from + i + 1);
                    s.scanned = if found.is_some() { 0 } else { s.pending.len() };
                    found
                }
            };
            let Some(end) = end else { return Ok(out) };
            let row: Vec<u8> = s.pending.drain(..end).collect();
            if s.header_done {
                out.extend_from_slice(&row);
            } else {
                s.header_done = true;
                if !self.header_sent {
                    self.header_sent = true;
                    out.extend_from_slice(&row);
                }
            }
        }
    }

    /// Shard `shard` ended its COPY (CopyDone): it must not stop mid-row,
    /// and a binary stream must have ended with its trailer.
    pub fn shard_done(&mut self, shard: usize) -> Result<(), CopyOutError> {
        let binary = self.format == CopyFormat::Binary;
        let s = self
            .shards
            .get(shard)
            .ok_or_else(|| error(format!("pgrouter: no COPY stream for shard {shard}")))?;
        if !s.pending.is_empty() || (binary && !s.trailer_seen) {
            return Err(error(format!(
                "pgrouter: shard {shard}'s COPY stream ended in the middle of a row"
            )));
        }
        Ok(())
    }

    /// Every shard is done: the last bytes for the client (binary: the one
    /// trailer, after the header if no shard sent one).
    pub fn finish(&mut self) -> Vec<u8> {
        if self.format != CopyFormat::Binary {
            return Vec::new();
        }
        let mut out = Vec::new();
        if !self.header_sent && self.has_header {
            out.extend_from_slice(SIGNATURE);
            out.extend_from_slice(&[0; 8]);
        }
        out.extend_from_slice(&TRAILER);
        out
    }
}

impl ShardOut {
    /// Where the first CSV row in `pending` ends (after its newline): a
    /// newline outside quotes; inside quotes an escape character (when it
    /// differs from the quote) protects the next byte.
    fn csv_row_end(&mut self, quote: u8, escape: u8) -> Option<usize> {
        let mut i = self.scanned;
        while let Some(&c) = self.pending.get(i) {
            i += 1;
            if self.escaped {
                self.escaped = false;
            } else if self.in_quote && c == escape {
                self.escaped = true;
            } else if c == quote {
                self.in_quote = !self.in_quote;
            } else if c == b'\n' && !self.in_quote {
                self.scanned = 0;
                return Some(i);
            }
        }
        self.scanned = i;
        None
    }
}

/// The binary file header's length once `b` holds all of it.
fn binary_header_len(b: &[u8]) -> Result<Option<usize>, CopyOutError> {
    let n = b.len().min(SIGNATURE.len());
    if b[..n] != SIGNATURE[..n] {
        return Err(error(
            "pgrouter: a shard's binary COPY stream has no COPY signature".into(),
        ));
    }
    let Some(ext) = b.get(15..19) else {
        return Ok(None);
    };
    let total = 19 + i32::from_be_bytes([ext[0], ext[1], ext[2], ext[3]]).max(0) as usize;
    Ok((b.len() >= total).then_some(total))
}

enum Tuple {
    Len(usize),
    Trailer,
}

/// The length of the binary tuple at the start of `b`, once complete.
fn tuple_len(b: &[u8]) -> Option<Tuple> {
    let count = i16::from_be_bytes([*b.first()?, *b.get(1)?]);
    if count == -1 {
        return Some(Tuple::Trailer);
    }
    let mut at = 2;
    for _ in 0..count.max(0) {
        let len = b.get(at..at + 4)?;
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        at += 4 + len.max(0) as usize;
    }
    (b.len() >= at).then_some(Tuple::Len(at))
}

#[cfg(test)]
mod tests {
    use super::super::copy_options::copy_options;
    use super::*;

    fn join(sql: &str, streams: &[Vec<&[u8]>]) -> Result<Vec<u8>, CopyOutError> {
        let info = copy_options(sql).unwrap();
        let mut j = CopyOutJoiner::new(&info, streams.len());
        let mut out = Vec::new();
        // Interleave the shards' payloads.
        let longest = streams.iter().map(Vec::len).max().unwrap_or(0);
        for i in 0..longest {
            for (shard, payloads) in streams.iter().enumerate() {
                if let Some(p) = payloads.get(i) {
                    out.extend(j.shard_data(shard, p)?);
                }
            }
        }
        for shard in 0..streams.len() {
            j.shard_done(shard)?;
        }
        out.extend(j.finish());
        Ok(out)
    }

    #[test]
    fn text_and_csv_headers_once() {
        let got = join(
            "COPY t TO STDOUT",
            &[vec![b"1\ta\n", b"2\tb\n"], vec![b"3\tc\n"]],
        )
        .unwrap();
        assert_eq!(got, b"1\ta\n3\tc\n2\tb\n");
        let got = join(
            "COPY t TO STDOUT (HEADER)",
            &[vec![b"k\tv\n", b"1\ta\n"], vec![b"k\t", b"v\n3\tc\n"]],
        )
        .unwrap();
        assert_eq!(got, b"k\tv\n1\ta\n3\tc\n");
        let sql = "COPY t TO STDOUT (FORMAT csv, HEADER)";
        let got = join(
            sql,
            &[
                vec![b"k,\"a\n,\"\"b\"\n1,x\n"],
                vec![b"k,\"a\n", b",\"\"b\"\n2,y\n"],
            ],
        )
        .unwrap();
        assert_eq!(got, b"k,\"a\n,\"\"b\"\n1,x\n2,y\n");
    }

    fn binary(rows: &[&[u8]]) -> Vec<u8> {
        let mut b = SIGNATURE.to_vec();
        b.extend_from_slice(&[0; 8]);
        rows.iter().for_each(|r| b.extend_from_slice(r));
        b.extend_from_slice(&TRAILER);
        b
    }

    #[test]
    fn binary_header_once_and_one_trailer() {
        let tuple_a: &[u8] = &[0, 1, 0, 0, 0, 1, b'a'];
        let tuple_b: &[u8] = &[0, 1, 0, 0, 0, 2, 0xff, 0xff];
        let s0 = binary(&[tuple_a]);
        let s1 = binary(&[tuple_b]);
        let payloads0: Vec<&[u8]> = s0.chunks(1).collect();
        let payloads1: Vec<&[u8]> = vec![&s1[..20], &s1[20..s1.len() - 2], &s1[s1.len() - 2..]];
        // Rows come out whole whatever the interleaving.
        let got = join("COPY t TO STDOUT (FORMAT binary)", &[payloads0, payloads1]).unwrap();
        let mut expected = binary(&[]);
        expected.truncate(19);
        // Shard 1's header is whole first, so its tuple may come before shard 0's.
        let mut either = [expected.clone(), expected];
        either[0].extend_from_slice(tuple_a);
        either[0].extend_from_slice(tuple_b);
        either[1].extend_from_slice(tuple_b);
        either[1].extend_from_slice(tuple_a);
        for e in &mut either {
            e.extend_from_slice(&TRAILER);
        }
        assert!(either.contains(&got), "{got:?}");
        // No rows anywhere: one header and one trailer.
        let empty = binary(&[]);
        assert_eq!(
            join(
                "COPY t TO STDOUT (FORMAT binary)",
                &[vec![&empty], vec![&empty]]
            )
            .unwrap(),
            binary(&[])
        );
        // A stream without its trailer or signature, or cut mid-row, is an error.
        assert!(join("COPY t TO STDOUT (FORMAT binary)", &[vec![&empty[..19]]]).is_err());
        assert!(join("COPY t TO STDOUT", &[vec![b"1\ta"]]).is_err());
        assert!(join("COPY t TO STDOUT (FORMAT binary)", &[vec![b"nope"]]).is_err());
    }
}
