//! Server connections a session on a sharded database keeps between its
//! transactions, one per shard at most: in session mode every connection
//! it used (a session holds a connection per shard), in transaction mode
//! the one its pinned session state lives on (`pinning.rs`). Sharding
//! goes on as without them: a unit of work that needs another shard, or
//! several, sets the held one aside (`Session::kept`) and is routed as
//! usual; checking out a server for a shard (`attach`, a leg of a
//! statement on several shards) takes the shard's kept connection first,
//! and a kept connection comes back here instead of to its pool. Without
//! this, the one held connection was "the" server of the session and every
//! later statement ran on its shard only.

use pgrouter_config::PoolMode;

use super::lease::Held;
use super::registry::ClientState;
use super::routing::Routed;
use super::session::Session;
use super::shards::Leg;

impl Session {
    /// Whether `held` must come back to this session rather than to its
    /// pool: session mode, or the session's pinned state lives on it.
    pub(super) fn must_keep(&self, held: &Held) -> bool {
        self.shard_map.is_some()
            && (self.mode == PoolMode::Session || (held.kept && self.pins.is_pinned()))
    }

    /// Between transactions, with a kept connection held: when the unit of
    /// work at the front of the buffer needs another shard (or several, or
    /// is refused), the held connection is set aside so that the unit is
    /// routed as if none were held. Called before routing.
    #[inline]
    pub(super) fn set_aside_if_elsewhere(&mut self, tag: u8) {
        if self.shard_map.is_none() || !matches!(tag, b'Q' | b'P' | b'B' | b'F') {
            return;
        }
        self.set_aside_if_sharded_elsewhere();
    }

    fn set_aside_if_sharded_elsewhere(&mut self) {
        let Some(held) = self.server.as_ref() else {
            return;
        };
        if !self.flow.batch_start()
            || self.flow.in_tx()
            || !self.is_quiet()
            || held.conn.tx_status != b'I'
            || !held.conn.read_buf.is_empty()
            || self.pipeline.is_some()
            || !(self.mode == PoolMode::Session || self.pins.is_pinned())
        {
            return;
        }
        let shard = held.shard;
        let stays = match self.route_next_batch() {
            Ok(Routed::One(r) | Routed::Keyed(r)) => r.shard == shard,
            _ => false,
        };
        if !stays {
            self.set_aside();
        }
    }

    /// The held connection (between transactions) goes to the kept ones,
    /// or back to its pool when the session need not keep it.
    fn set_aside(&mut self) {
        let Some(held) = self.server.take() else {
            return;
        };
        self.cancel.slot.set(None);
        self.flow.server_released();
        self.stop_replay();
        self.registered.info.clear_server();
        self.registered.info.set_state(ClientState::Idle);
        self.unnamed_here = false;
        self.keep_or_release(held);
    }

    /// A connection the session is done with for now: kept (session mode,
    /// pinned state), or given back (clean) or closed (state it may hold).
    fn keep_or_release(&mut self, held: Held) {
        let clean = held.conn.tx_status == b'I'
            && held.conn.read_buf.is_empty()
            && held.conn.write_buf.is_empty()
            && held.expect.is_empty();
        if self.must_keep(&held) && clean {
            let at = self.kept.partition_point(|k| k.shard < held.shard);
            self.kept.insert(at, held);
        } else if held.kept || self.mode == PoolMode::Session {
            // Session state nobody tracks any more: closed, never shared.
            if held.kept && self.pins.is_pinned() {
                self.pins.forget();
                self.temps.forget_all();
                self.registered.info.set_pinned(Default::default());
            }
            drop(held);
        } else {
            crate::pool::Pool::checkin_at(held.conn, held.last_answer);
        }
    }

    /// The kept connection of `shard`, taken out.
    pub(super) fn take_kept(&mut self, shard: usize) -> Option<Held> {
        let at = self.kept.iter().position(|k| k.shard == shard)?;
        Some(self.kept.remove(at))
    }

    /// Legs of a statement or transaction on several shards are done:
    /// kept ones come back here, the others go to their pools.
    pub(super) fn give_back(&mut self, legs: Vec<Leg>) {
        for leg in legs {
            if self.shard_map.is_some()
                && (leg.held.kept || self.mode == PoolMode::Session)
                && leg.ready
                && !leg.cancelled
            {
                self.keep_or_release(leg.held);
            } else if leg.held.kept && self.pins.is_pinned() {
                // The pinned state went with a failed leg.
                self.pins.forget();
                self.temps.forget_all();
                self.registered.info.set_pinned(Default::default());
                drop(leg);
            } else {
                super::shards::give_back_to_pools(vec![leg]);
            }
        }
    }

    /// Transaction mode, between transactions with no server held: the
    /// pinned connection is held again, so that its notifications are
    /// relayed and its state checked (`pinning.rs`) as before. Kept
    /// connections whose state is gone are closed.
    pub(super) fn restore_kept(&mut self) {
        if self.kept.is_empty()
            || self.mode != PoolMode::Transaction
            || self.server.is_some()
            || self.flow.in_tx()
            || self.flow.unsynced()
            || self.flow.skip_to_sync()
            || self.deferred_begin.is_some()
            || self.pipeline.is_some()
            || self.tx_legs.is_some()
        {
            return;
        }
        if !self.pins.is_pinned() {
            self.kept.clear(); // closed: whatever they held is nobody's
            return;
        }
        let held = self.kept.remove(0);
        self.cancel.slot.set(Some(held.conn.cancel_target()));
        self.registered.info.set_server(
            &held.conn.addr,
            held.conn.backend_pid,
            held.conn.stream.is_tls(),
            held.shard,
        );
        self.registered.info.set_pinned(self.pins.held());
        self.server = Some(held);
        self.unnamed_here = false;
        self.flow.attached();
    }

    /// A kept connection for `shard`, held as the session's server for the
    /// unit of work routed there (instead of a checkout). True: attached.
    pub(super) fn attach_kept(&mut self, shard: usize) -> bool {
        let Some(mut held) = self.take_kept(shard) else {
            return false;
        };
        let now = crate::clock::Tick::now();
        held.attached_at = now;
        held.tx_counted = false;
        self.request_started.get_or_insert(now);
        if self.drop_unsent() {
            tracing::warn!("dropped messages queued with no server held");
        }
        self.registered.info.set_state(ClientState::Active);
        self.registered.info.set_server(
            &held.conn.addr,
            held.conn.backend_pid,
            held.conn.stream.is_tls(),
            held.shard,
        );
        self.cancel.slot.set(Some(held.conn.cancel_target()));
        self.server = Some(held);
        if self.replay_settings() {
            self.commit_replay();
        }
        self.unnamed_here = false;
        self.flow.attached();
        true
    }

    /// The session ends: its kept connections are reset (`DISCARD ALL`)
    /// and given back, as a session-mode or pinned connection is.
    pub(super) fn release_kept(&mut self) {
        for held in self.kept.drain(..) {
            super::cleanup::release_after_session(held.conn, true, self.mode, true);
        }
    }
}
