//! The merge of a read whose rows simply add up: one RowDescription, every
//! shard's rows as they come, one `SELECT n` with the total. The interface
//! ([`RowMerge`]) is what the read loop drives; the full merger (ORDER BY,
//! LIMIT, aggregates) implements it too.

use bytes::BytesMut;

use super::{put_tag, split_tag};
use crate::protocol::backend;

/// What the read loop needs from a merge.
pub(super) trait RowMerge {
    /// One message of shard `i` (RowDescription, DataRow, CommandComplete,
    /// EmptyQueryResponse).
    fn feed(&mut self, shard: usize, tag: u8, body: &[u8]) -> Result<(), (&'static str, String)>;
    /// More messages of shard `i` are needed before more can be sent.
    fn wants(&self, shard: usize) -> bool;
    /// Appends what is ready for the client.
    fn drain(&mut self, out: &mut BytesMut);
    /// Nothing more needs reading (all complete, or a LIMIT met).
    fn is_done(&self) -> bool;
}

/// Rows of every shard, unordered.
pub(super) struct Union {
    complete: Vec<bool>,
    described: bool,
    rows: u64,
    empty: usize,
    pending: BytesMut,
    head: Vec<u8>,
    finished: bool,
}

impl Union {
    pub fn new(shards: usize) -> Union {
        Union {
            complete: vec![false; shards],
            described: false,
            rows: 0,
            empty: 0,
            pending: BytesMut::new(),
            head: b"SELECT".to_vec(),
            finished: false,
        }
    }
}

impl RowMerge for Union {
    fn feed(&mut self, shard: usize, tag: u8, body: &[u8]) -> Result<(), (&'static str, String)> {
        match tag {
            b'T' if !self.described => {
                self.described = true;
                backend::put_message(&mut self.pending, b'T', |b| b.extend_from_slice(body));
            }
            b'D' => {
                self.rows += 1;
                backend::put_message(&mut self.pending, b'D', |b| b.extend_from_slice(body));
            }
            b'C' => {
                self.head = split_tag(body).0.to_vec();
                self.complete[shard] = true;
            }
            b'I' => {
                self.empty += 1;
                self.complete[shard] = true;
            }
            _ => {}
        }
        Ok(())
    }

    fn wants(&self, shard: usize) -> bool {
        !self.complete[shard]
    }

    fn drain(&mut self, out: &mut BytesMut) {
        out.extend_from_slice(&self.pending);
        self.pending.clear();
        if self.is_done() && !self.finished {
            self.finished = true;
            if self.empty == self.complete.len() {
                backend::put_message(out, b'I', |_| {});
            } else {
                put_tag(out, &self.head, Some(self.rows));
            }
        }
    }

    fn is_done(&self) -> bool {
        self.complete.iter().all(|&c| c)
    }
}
