//! The plain union's fast path. A keyless `SELECT` without ORDER BY,
//! aggregates or DISTINCT relays each shard's rows unchanged, and such a
//! result can be millions of rows: handing them to [`Merger::feed`] one by
//! one cost more per row than the row itself. Here a run of DataRows is
//! checked in one tight loop and copied out in one piece.

use bytes::BytesMut;

use super::{row, MergeError, Merger};

/// What [`Merger::feed_rows`] did.
#[derive(Debug)]
pub struct RowsFed {
    /// Bytes taken from the front of the buffer (whole messages); 0 when
    /// its first message is not a row this path takes.
    pub taken: usize,
    /// A row was malformed: the rows before it went out, the merge ends
    /// with this error (as [`Merger::feed`] would end it).
    pub error: Option<MergeError>,
}

impl Merger {
    /// Feeds shard `shard`'s DataRows at the front of `buf` (whole
    /// protocol messages, tag and length included) when the merge passes
    /// rows through unchanged, appending what the merger had ready and then
    /// the rows to `out`. Stops at the first message that is not a whole
    /// DataRow, or when the LIMIT is met: the caller feeds that message
    /// with [`Merger::feed`]. Exactly what feeding the same rows one by one
    /// and draining would give.
    pub fn feed_rows(&mut self, shard: usize, buf: &[u8], out: &mut BytesMut) -> RowsFed {
        let mut fed = RowsFed {
            taken: 0,
            error: None,
        };
        let Some(columns) = self.passes_rows_through(shard) else {
            return fed;
        };
        let room = self
            .limit
            .into_iter()
            .chain(self.portal_rows)
            .min()
            .map_or(u64::MAX, |l| l.saturating_sub(self.sent));
        let mut rows = 0u64;
        while rows < room {
            let Some(header) = buf.get(fed.taken..fed.taken + 5) else {
                break;
            };
            let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
            if header[0] != b'D' || len < 4 {
                break;
            }
            let end = fed.taken + 1 + len as usize;
            let Some(body) = buf.get(fed.taken + 5..end) else {
                break;
            };
            if let Err(e) = row::check(body, columns) {
                fed.error = Some(e);
                break;
            }
            fed.taken = end;
            rows += 1;
        }
        if fed.taken > 0 {
            out.unsplit(self.pending.split());
            out.extend_from_slice(&buf[..fed.taken]);
            self.sent += rows;
        }
        fed
    }

    /// The number of columns when rows go out as they come (a plain union
    /// past its OFFSET, still running), else None.
    fn passes_rows_through(&self, shard: usize) -> Option<usize> {
        let layout = self.layout.as_ref()?;
        let plain = self.spec.aggregate.is_none()
            && self.spec.order_by.is_empty()
            && !self.spec.distinct
            && layout.hidden == 0;
        let running = self.failure.is_none() && !self.finished && shard < self.complete.len();
        (plain && running && self.skipped >= self.offset).then_some(layout.types.len())
    }
}
