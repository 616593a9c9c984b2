//! A read on several shards: the statement runs on every shard at once and
//! the answers are merged while they stream in. Only the shards whose next
//! row the merge needs are read, so memory stays bounded by what is in
//! flight, and once a LIMIT is met the rest is read and dropped.

use super::legs::{cancel_targets, cancel_unfinished, fill_any, give_back, Leg};
use super::union::{RowMerge, Union};
use super::unit::Unit;
use super::{next_message, ShardError};
use crate::client::error::SessionEnd;
use crate::client::session::Session;
use crate::router::Role;

/// The client's buffered answer is sent once it is this large.
const FLUSH_AT: usize = 64 * 1024;

impl Session {
    pub(super) async fn read_on_shards(
        &mut self,
        unit: &Unit,
        role: Role,
        shards: &[usize],
    ) -> Result<(), ShardError> {
        if unit.analysis.statements.len() != 1 {
            return Err(ShardError::router(
                "0A000",
                "pgrouter: a query string with several statements cannot read several shards; \
                 HINT: send the statements one by one",
            ));
        }
        let mut legs = self.take_legs(shards, role).await?;
        self.cancel.slot.set_many(cancel_targets(&legs));
        let result = self.read_with_legs(unit, &mut legs).await;
        self.cancel.slot.set(None);
        give_back(legs);
        result
    }

    /// The read on legs already taken (in a transaction: its legs).
    pub(super) async fn read_with_legs(
        &mut self,
        unit: &Unit,
        legs: &mut [Leg],
    ) -> Result<(), ShardError> {
        let shards = legs;
        if let Err(what) = pgrouter_parser::union_gate::plain_union(&unit.sql) {
            return Err(ShardError::router(
                "0A000",
                format!(
                    "pgrouter: a read on {} shards with {what} is not supported yet (only rows put together \
                     are); HINT: add the shard key (WHERE key = ...)",
                    shards.len()
                ),
            ));
        }
        let legs = shards;
        let mut merge: Box<dyn RowMerge + Send> = Box::new(Union::new(legs.len()));
        let mut request = bytes::BytesMut::new();
        unit.request(&unit.sql, &mut request);
        unit.preamble(&mut self.to_client);
        let result = self
            .run_read(legs, &request, unit.describes(), merge.as_mut())
            .await;
        match result {
            Ok(r) => r,
            Err(end) => Err(ShardError::router("08006", format!("pgrouter: {end:?}"))),
        }
    }

    /// Sends `request` to every leg and relays the merged answer (without
    /// its RowDescription unless `describe`).
    async fn run_read(
        &mut self,
        legs: &mut [Leg],
        request: &[u8],
        describe: bool,
        merge: &mut (dyn RowMerge + Send),
    ) -> Result<Result<(), ShardError>, SessionEnd> {
        let mut described = describe;
        let mut scratch = bytes::BytesMut::new();
        for leg in legs.iter_mut() {
            leg.ready = false;
            if let Err(e) = leg.held.conn.send(request).await {
                leg.ready = true;
                return Ok(Err(ShardError::lost(leg.shard, &e)));
            }
        }
        let mut failure: Option<ShardError> = None;
        loop {
            let mut progressed = false;
            for i in 0..legs.len() {
                while !legs[i].ready && (failure.is_some() || merge.is_done() || merge.wants(i)) {
                    let Some((tag, body)) = next_message(&mut legs[i])? else {
                        break;
                    };
                    progressed = true;
                    match tag {
                        b'Z' => {
                            legs[i].ready = true;
                            legs[i].held.conn.tx_status = body.first().copied().unwrap_or(b'I');
                        }
                        b'E' => {
                            if failure.is_none() {
                                failure = Some(ShardError::Server(body));
                            }
                        }
                        b'S' => legs[i].held.conn.note_parameter_status(&body),
                        b'N' if i == 0 => {
                            crate::protocol::backend::put_message(&mut self.to_client, b'N', |b| {
                                b.extend_from_slice(&body)
                            })
                        }
                        b'T' | b'D' | b'C' | b'I' if failure.is_none() && !merge.is_done() => {
                            if let Err((sqlstate, message)) = merge.feed(i, tag, &body) {
                                failure = Some(ShardError::router(sqlstate, message));
                            }
                        }
                        _ => {}
                    }
                }
            }
            if failure.is_some() {
                cancel_unfinished(legs);
            } else if described {
                merge.drain(&mut self.to_client);
            } else {
                merge.drain(&mut scratch);
                described = strip_description(&mut scratch);
                self.to_client.extend_from_slice(&scratch);
                scratch.clear();
                if self.to_client.len() >= FLUSH_AT {
                    self.flush_client().await?;
                }
            }
            if legs.iter().all(|l| l.ready) {
                break;
            }
            if progressed {
                continue;
            }
            let draining = failure.is_some() || merge.is_done();
            let wanted: Vec<bool> = (0..legs.len())
                .map(|i| !legs[i].ready && (draining || merge.wants(i)))
                .collect();
            if let Err(i) = fill_any(legs, &wanted).await {
                legs[i].ready = true;
                legs[i].held.conn.tx_status = b'E'; // unusable: closed at give-back
                failure
                    .get_or_insert_with(|| ShardError::lost(legs[i].shard, &"connection closed"));
            }
        }
        Ok(failure.map_or(Ok(()), Err))
    }
}

/// Drops a leading RowDescription from `buf` (the client did not describe
/// the portal); true once it was seen (or rows show there is none).
fn strip_description(buf: &mut bytes::BytesMut) -> bool {
    match crate::protocol::next_frame(buf, usize::MAX >> 1) {
        Ok(Some(f)) if f.tag == b'T' => {
            let _ = buf.split_to(f.total_len);
            true
        }
        Ok(Some(_)) => true,
        _ => false,
    }
}
