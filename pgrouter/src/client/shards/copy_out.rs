//! `COPY table TO STDOUT` of a sharded table: every shard's rows, shard
//! after shard, as one COPY (`fanout::copy_out` keeps one header and one
//! binary trailer); the tag is `COPY n` with the total.

use bytes::BytesMut;

use super::held::Leg;
use super::legs::{cancel_targets, cancel_unfinished, drain_unfinished};
use super::unit::Unit;
use super::ShardError;
use crate::client::error::SessionEnd;
use crate::client::session::Session;
use crate::fanout::copy_options::copy_options;
use crate::fanout::copy_out::CopyOutJoiner;
use crate::protocol::{backend, frontend};
use crate::router::Role;
use pgrouter_parser::copy::CopyInfo;
use pgrouter_parser::fanout::plan_read;

impl Session {
    pub(super) async fn copy_out_on_shards(
        &mut self,
        unit: &Unit,
        role: Role,
        shards: &[usize],
    ) -> Result<(), ShardError> {
        let info =
            copy_options(&unit.sql).map_err(|e| ShardError::router(e.sqlstate, e.message))?;
        let mut joiner = CopyOutJoiner::new(&info, shards.len());
        let mut legs = self.take_legs(shards, role).await?;
        if let Err(e) = self.check_query_copy(unit, &info, &mut legs).await {
            self.give_back(legs);
            return Err(e);
        }
        self.cancel.slot.set_many(cancel_targets(&legs));
        let result = match self.copy_out(unit, &mut legs, &mut joiner).await {
            Ok(r) => r,
            Err(end) => Err(ShardError::router("08006", format!("pgrouter: {end:?}"))),
        };
        if result.is_err() {
            cancel_unfinished(&mut legs);
        }
        self.cancel.slot.set(None);
        self.give_back(legs);
        result
    }

    /// COPY TO STDOUT on the legs of the client's transaction block (it
    /// sees the transaction's own writes); a failure fails the transaction
    /// and leaves every leg ready for its ROLLBACK.
    pub(super) async fn copy_out_with_legs_in_tx(
        &mut self,
        unit: &Unit,
        legs: &mut [Leg],
    ) -> Result<(), ShardError> {
        let info =
            copy_options(&unit.sql).map_err(|e| ShardError::router(e.sqlstate, e.message))?;
        let mut joiner = CopyOutJoiner::new(&info, legs.len());
        self.check_query_copy(unit, &info, legs).await?;
        let result = match self.copy_out(unit, legs, &mut joiner).await {
            Ok(r) => r,
            Err(end) => Err(ShardError::router("08006", format!("pgrouter: {end:?}"))),
        };
        if result.is_err() {
            cancel_unfinished(legs);
            drain_unfinished(legs).await;
        }
        result
    }

    /// `COPY (query) TO STDOUT` joins the shards' outputs one after the
    /// other: exact only for a plain union of rows.
    async fn check_query_copy(
        &mut self,
        unit: &Unit,
        info: &CopyInfo,
        legs: &mut [Leg],
    ) -> Result<(), ShardError> {
        let Some(query) = &info.query else {
            return Ok(());
        };
        let plan = plan_read(query)
            .map_err(|u| ShardError::router("0A000", format!("pgrouter: {}", u.0)))?;
        let m = &plan.merge;
        if !m.order_by.is_empty()
            || m.limit.is_some()
            || m.offset.is_some()
            || m.distinct
            || m.aggregate.is_some()
            || m.hidden > 0
        {
            return Err(ShardError::router(
                "0A000",
                "pgrouter: COPY (query) on several shards joins their rows as they come: ORDER BY, \
                 LIMIT/OFFSET, DISTINCT and aggregates are not supported in it; HINT: run the query \
                 as a SELECT, or add the shard key",
            ));
        }
        // A user-defined aggregate looks like a plain function call.
        self.merge_context(unit, &plan, legs).await.map(|_| ())
    }

    async fn copy_out(
        &mut self,
        unit: &Unit,
        legs: &mut [Leg],
        joiner: &mut CopyOutJoiner,
    ) -> Result<Result<(), ShardError>, SessionEnd> {
        let mut request = BytesMut::new();
        frontend::query(&mut request, &unit.sql);
        for leg in legs.iter_mut() {
            leg.ready = false;
            if let Err(e) = leg.held.conn.send(&request).await {
                leg.held.conn.tx_status = b'E';
                return Ok(Err(ShardError::lost(leg.shard, &e)));
            }
        }
        let mut started = false;
        let mut total = 0u64;
        for (i, leg) in legs.iter_mut().enumerate() {
            loop {
                let (tag, body) = match leg.held.conn.read_message().await {
                    Ok(m) => m,
                    Err(e) => {
                        leg.held.conn.tx_status = b'E';
                        leg.ready = true;
                        return Ok(Err(ShardError::lost(leg.shard, &e)));
                    }
                };
                match tag {
                    b'H' if !started => {
                        started = true;
                        backend::put_message(&mut self.to_client, b'H', |b| {
                            b.extend_from_slice(&body)
                        });
                    }
                    b'd' => match joiner.shard_data(i, &body) {
                        Ok(out) if !out.is_empty() => {
                            backend::put_message(&mut self.to_client, b'd', |b| {
                                b.extend_from_slice(&out)
                            })
                        }
                        Ok(_) => {}
                        Err(e) => return Ok(Err(ShardError::router("08P01", e.message))),
                    },
                    b'c' => {
                        if let Err(e) = joiner.shard_done(i) {
                            return Ok(Err(ShardError::router("08P01", e.message)));
                        }
                    }
                    b'C' => total += super::split_tag(&body).1.unwrap_or(0),
                    b'E' => {
                        let _ = leg.held.conn.read_until_ready().await;
                        leg.ready = true;
                        return Ok(Err(ShardError::Server(body)));
                    }
                    b'Z' => {
                        leg.ready = true;
                        leg.held.conn.tx_status = body.first().copied().unwrap_or(b'I');
                        break;
                    }
                    _ => {}
                }
                if self.to_client.len() >= 64 * 1024 {
                    self.flush_client().await?;
                }
            }
        }
        let tail = joiner.finish();
        if !tail.is_empty() {
            backend::put_message(&mut self.to_client, b'd', |b| b.extend_from_slice(&tail));
        }
        backend::put_message(&mut self.to_client, b'c', |_| {});
        backend::command_complete(&mut self.to_client, &format!("COPY {total}"));
        Ok(Ok(()))
    }
}
