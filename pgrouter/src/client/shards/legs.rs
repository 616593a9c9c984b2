//! Server connections for a statement on several shards ("legs"): taken in
//! ascending shard order (two clients never each hold a shard the other
//! waits for), each brought in line with the session first — the reset a
//! previous client left owed, the client's parameters, a JWT session's
//! role — and given back, or discarded when their state is unknown.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;

use tokio::io::AsyncReadExt;

use super::super::lease::Held;
use super::super::params::quote_ident;
use super::super::session::Session;
use super::held::Leg;
use super::ShardError;
use crate::pool::{Pool, PoolError};
use crate::router::Role;
use crate::server::ServerConn;

impl Session {
    /// Checks out one connection per shard in `shards` (ascending), for
    /// `role`, each set up for this session.
    pub(super) async fn take_legs(
        &mut self,
        shards: &[usize],
        role: Role,
    ) -> Result<Vec<Leg>, ShardError> {
        let mut legs: Vec<Leg> = Vec::with_capacity(shards.len());
        for &shard in shards {
            match self.take_leg(shard, role).await {
                Ok(leg) => legs.push(leg),
                Err(e) => {
                    self.give_back(legs);
                    return Err(e);
                }
            }
        }
        Ok(legs)
    }

    async fn take_leg(&mut self, shard: usize, role: Role) -> Result<Leg, ShardError> {
        self.take_leg_with(shard, role, Checkout::Wait)
            .await?
            .ok_or_else(|| ShardError::from_pool(PoolError::CheckoutTimeout))
    }

    /// `shard`'s connection for a short errand of the router's own (a
    /// Parse check, `parse_check.rs`): the session's kept one, else one
    /// from the pool only if one is free right now. `Ok(None)`: none is.
    /// A session that holds a connection must never wait for another (two
    /// such sessions could each wait for the other's), and the errand is
    /// not worth queueing for.
    pub(super) async fn take_leg_if_free(
        &mut self,
        shard: usize,
        role: Role,
    ) -> Result<Option<Leg>, ShardError> {
        self.take_leg_with(shard, role, Checkout::IfFree).await
    }

    async fn take_leg_with(
        &mut self,
        shard: usize,
        role: Role,
        checkout: Checkout,
    ) -> Result<Option<Leg>, ShardError> {
        if let Some(mut held) = self.take_kept(shard) {
            // The session's own connection of that shard (see `kept.rs`).
            let sql = self.leg_prologue(&mut held.conn);
            if !sql.is_empty() {
                match held.conn.run_simple(&sql).await {
                    Ok(Ok(())) => {}
                    Ok(Err(fields)) => {
                        self.give_back(vec![Leg {
                            shard,
                            held,
                            ready: true,
                            cancelled: false,
                        }]);
                        return Err(ShardError::from_fields(shard, fields));
                    }
                    Err(e) => return Err(ShardError::lost(shard, &e)),
                }
            }
            held.attached_at = crate::clock::Tick::now();
            held.conn.text_codec = self.text_codec();
            return Ok(Some(Leg {
                shard,
                held,
                ready: true,
                cancelled: false,
            }));
        }
        let pools = self.pools.clone();
        let shard_pools = pools.shards.get(shard).ok_or_else(|| {
            ShardError::from_pool(PoolError::NoSuchShard {
                shard,
                shards: pools.shards.len(),
            })
        })?;
        let mut tried = Vec::new();
        let g = &self.rt.config.general;
        let limits = if role == Role::Replica {
            let ryw = g.read_your_writes.then_some(&mut self.ryw);
            super::super::read_your_writes::read_limits(
                g.max_replica_lag_ms,
                ryw,
                shard,
                shard_pools,
            )
        } else {
            Default::default()
        };
        let (mut conn, slot) = loop {
            let Some(slot) = shard_pools.pick(role, pools.balancing, &tried, limits) else {
                return Err(ShardError::from_pool(PoolError::NoServer));
            };
            let got = match checkout {
                Checkout::Wait => slot.pool.checkout().await,
                Checkout::IfFree => match slot.pool.try_checkout().await {
                    Some(got) => got,
                    None => return Ok(None),
                },
            };
            match got {
                Ok(conn) => {
                    self.state
                        .metrics
                        .record_routed(if slot.health.is_primary() {
                            Role::Primary
                        } else {
                            Role::Replica
                        });
                    break (conn, slot);
                }
                Err(PoolError::Connect(e)) if !slot.health.is_primary() => {
                    slot.health.ban(&format!("connect failed: {e}"));
                    tried.push(Arc::as_ptr(&slot.pool) as usize);
                }
                Err(e) => return Err(ShardError::from_pool(e)),
            }
        };
        // The prologue is one Query, which the server reads in the encoding
        // it has now (before the prologue's own settings).
        conn.text_codec = conn.client_codec();
        let sql = self.leg_prologue(&mut conn);
        if !sql.is_empty() {
            match conn.run_simple(&sql).await {
                Ok(Ok(())) => {}
                Ok(Err(fields)) => {
                    conn.needs_reset = true;
                    Pool::checkin(conn);
                    return Err(ShardError::from_fields(shard, fields));
                }
                Err(e) => return Err(ShardError::lost(shard, &e)),
            }
        }
        let now = crate::clock::Tick::now();
        let mut held = Held::new(
            conn,
            slot,
            shard,
            role == Role::Primary,
            now,
            Default::default(),
        );
        held.conn.text_codec = self.text_codec();
        Ok(Some(Leg {
            shard,
            held,
            ready: true,
            cancelled: false,
        }))
    }

    /// What a connection needs before this session's statement: the reset
    /// a previous client left owed, this client's parameters, its role.
    pub(super) fn leg_prologue(&self, conn: &mut ServerConn) -> String {
        let mut sql = String::new();
        if conn.needs_reset {
            conn.forget_session_state();
            sql.push_str("RESET ALL;RESET SESSION AUTHORIZATION;RESET ROLE;");
        }
        // As at any checkout (`outbound.rs`): another client's sequence
        // state goes. A leg may write, so it counts as written.
        let me = self.registered.info.id;
        if conn.discard_due || (conn.last_client != me && conn.wrote) {
            sql.push_str("DISCARD SEQUENCES;");
        }
        conn.discard_due = false;
        conn.last_client = me;
        conn.wrote = true;
        if let Some(sync) = self.params.sync_sql(conn) {
            // sync_sql ends without a `;` (it is sent alone elsewhere): the
            // SET ROLE below must be a statement of its own.
            sql.push_str(&sync);
            sql.push(';');
            self.params.mark_synced(conn);
        }
        if let Some(jwt) = &self.policy.jwt {
            sql.push_str(&format!("SET ROLE {};", quote_ident(&jwt.role)));
        }
        sql
    }
}

/// How a leg's connection is got from its pool.
#[derive(Clone, Copy)]
enum Checkout {
    /// Queue for one (a statement's legs, taken in shard order).
    Wait,
    /// Only one free right now (see [`Session::take_leg_if_free`]).
    IfFree,
}

/// Gives legs back to their pools: those outside a transaction with
/// nothing owed are reused, the others are closed.
pub(in crate::client) fn give_back_to_pools(legs: Vec<Leg>) {
    for leg in legs {
        let conn = leg.held.conn;
        if leg.ready && !leg.cancelled && conn.tx_status == b'I' && conn.read_buf.is_empty() {
            Pool::checkin(conn);
        } else {
            drop(conn);
        }
    }
}

/// Polls the legs picked by `wanted` for more bytes in their read
/// buffers: ready with (leg, bytes read) when one got some. `Err(i)`: leg
/// `i` closed or failed.
pub(super) fn poll_fill_any(
    cx: &mut std::task::Context<'_>,
    legs: &mut [Leg],
    wanted: &[bool],
) -> Poll<Result<(usize, usize), usize>> {
    for (i, leg) in legs.iter_mut().enumerate() {
        if !wanted.get(i).copied().unwrap_or(false) {
            continue;
        }
        let server = &mut *leg.held.conn;
        server.read_buf.reserve(128 * 1024);
        let read = std::pin::pin!(server.stream.read_buf(&mut server.read_buf));
        match read.poll(cx) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err(i)),
            Poll::Ready(Ok(n)) => return Poll::Ready(Ok((i, n))),
            Poll::Pending => {}
        }
    }
    Poll::Pending
}

/// Waits until one of the legs picked by `wanted` has more bytes in its
/// read buffer. `Err(i)`: leg `i` closed or failed.
pub(super) async fn fill_any(legs: &mut [Leg], wanted: &[bool]) -> Result<(), usize> {
    std::future::poll_fn(|cx| poll_fill_any(cx, legs, wanted))
        .await
        .map(|_| ())
}

/// Lowers the receive mark of every leg a streaming fan-out raised
/// (`net/low_water.rs`); a leg whose socket refuses is closed at give-back.
pub(super) fn lower_low_water(legs: &mut [Leg]) {
    for leg in legs.iter_mut() {
        let server = &mut *leg.held.conn;
        if server.low_water.lower(&server.stream).is_err() {
            server.tx_status = b'E';
        }
    }
}

/// Cancels what the legs not yet answered are running (after another leg
/// failed: their work is rolled back anyway).
pub(super) fn cancel_unfinished(legs: &mut [Leg]) {
    for leg in legs.iter_mut().filter(|l| !l.ready && !l.cancelled) {
        leg.cancelled = true;
        let target = leg.held.conn.cancel_target();
        tokio::spawn(async move {
            let _ = super::super::cancel::send_cancel(&target).await;
        });
    }
}

/// Cancels what the legs not yet answered are running and waits until
/// PostgreSQL has acted on every cancel (`query_timeout_ms` on a
/// statement on several shards). The legs stay usable: a cancel that
/// arrives after its statement ended finds the backend idle, where
/// PostgreSQL ignores it, and it has arrived before the router sends the
/// leg anything else — it can never stop the ROLLBACK, PREPARE
/// TRANSACTION or COMMIT that follows.
pub(super) async fn cancel_and_wait(legs: &[Leg]) {
    let cancels: Vec<_> = legs
        .iter()
        .filter(|l| !l.ready)
        .map(|leg| {
            let target = leg.held.conn.cancel_target();
            tokio::spawn(async move {
                let _ = super::super::cancel::send_cancel(&target).await;
            })
        })
        .collect();
    for cancel in cancels {
        let _ = cancel.await;
    }
}

/// Marks the legs not yet answered as lost (closed at give-back) and
/// returns the first one's shard.
pub(super) fn give_up_unfinished(legs: &mut [Leg]) -> usize {
    let mut first = None;
    for leg in legs.iter_mut().filter(|l| !l.ready) {
        leg.ready = true;
        leg.cancelled = true;
        leg.held.conn.tx_status = b'E';
        first.get_or_insert(leg.shard);
    }
    first.unwrap_or_default()
}

/// Reads what the legs not yet answered still send, up to their
/// ReadyForQuery, so that they can go on in their transaction (a leg
/// that cannot is closed at give-back).
pub(super) async fn drain_unfinished(legs: &mut [Leg]) {
    for leg in legs.iter_mut().filter(|l| !l.ready) {
        if leg.held.conn.read_until_ready().await.is_err() {
            leg.held.conn.tx_status = b'E';
            leg.cancelled = true;
        }
        leg.ready = true;
    }
}

/// Where the client's own CancelRequest goes while legs are out.
pub(super) fn cancel_targets(legs: &[Leg]) -> Vec<crate::server::CancelTarget> {
    legs.iter().map(|l| l.held.conn.cancel_target()).collect()
}
