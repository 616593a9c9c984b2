//! Where the unit of work at the front of the client's buffer goes: an
//! extended batch is routed as a whole once it has arrived, a session's
//! `pgrouter.*` settings and read-only policy apply, and a held server that
//! does not fit the next unit of work has to be released first.

use std::sync::Arc;

use pgrouter_config::PoolMode;
use pgrouter_parser::{Analysis, StatementKind};

use super::session::Session;
use super::shard_routing::UnnamedText;
use crate::protocol::frontend::parse_bind_names;
use crate::protocol::next_frame;
use crate::router::{self, Refusal, Role, Route, SessionRouting, ShardChoice};

/// How much of an unfinished extended batch is buffered before routing it
/// anyway.
pub(super) const MAX_LOOKAHEAD: usize = 1 << 20;

impl Session {
    /// An extended batch is routed as a whole (one implicit transaction up
    /// to its Sync): wait until its Sync or a Flush has arrived, unless it
    /// is already large.
    pub(super) fn batch_has_arrived(&self, tag: u8) -> bool {
        if !matches!(tag, b'P' | b'B' | b'D' | b'E' | b'C') || self.cbuf.len() > MAX_LOOKAHEAD {
            return true;
        }
        let mut at = 0;
        loop {
            match next_frame(self.cbuf.get(at..).unwrap_or(&[]), self.max_message) {
                Ok(Some(frame)) if matches!(frame.tag, b'S' | b'H') => return true,
                Ok(Some(frame)) => at += frame.total_len,
                Ok(None) => return false,
                // A malformed (or too large) message ahead: nothing more is
                // worth waiting for; it ends the session (08P01) once reached.
                Err(_) => return true,
            }
        }
    }

    /// The session's routing settings, recomputed only when its parameters change.
    pub(super) fn session_routing(&self) -> SessionRouting {
        let (version, cached) = self.routing_cache.get();
        if version == self.params.version() {
            return cached;
        }
        let routing = SessionRouting::from_params(|k| self.params.get(k).map(str::to_string));
        self.routing_cache.set((self.params.version(), routing));
        routing
    }

    /// Routes the unit of work at the front of the buffer. An extended batch
    /// runs as one implicit transaction up to its Sync, so it goes to the
    /// primary if any statement in it (as far as it has arrived) needs to.
    pub(super) fn route_next_batch(&self) -> Result<Routed, Refusal> {
        self.route_batch().0
    }

    /// The route of the batch at the front of the buffer once it has
    /// arrived (see [`Self::batch_has_arrived`]): one scan of the buffer
    /// usually answers both.
    pub(super) fn route_arrived_batch(&self, tag: u8) -> Option<Result<Routed, Refusal>> {
        let (route, ended) = self.route_batch();
        (ended || self.batch_has_arrived(tag)).then_some(route)
    }

    /// The route, and whether the scan saw the batch's Sync or a Flush.
    fn route_batch(&self) -> (Result<Routed, Refusal>, bool) {
        let (mut routed, ended) = self.route_by_statements();
        if let (Ok(Routed::One(route) | Routed::Keyed(route) | Routed::Many(route, _)), true) =
            (&mut routed, self.policy.read_only)
        {
            route.role = Role::Replica;
        }
        (routed, ended)
    }

    fn route_by_statements(&self) -> (Result<Routed, Refusal>, bool) {
        let session = self.session_routing();
        let session_role =
            (self.mode == PoolMode::Session).then_some(match session.role_override {
                Some(pgrouter_parser::RoleHint::Replica) => Role::Replica,
                // A hot standby refuses serializable transactions.
                _ if session.default_read_only && !session.default_serializable => Role::Replica,
                _ => Role::Primary,
            });
        if let (Some(role), None) = (session_role, self.shard_map.as_ref()) {
            let route = Route {
                shard: session.shard_override.unwrap_or(0) as usize,
                role,
            };
            return (Ok(Routed::One(route)), false);
        }
        // Session mode on a sharded database: the session's role, and the
        // shards its statements need (a connection kept per shard, see
        // `kept.rs`).
        let (routed, ended) = self.route_by_keys(&session);
        match (routed, session_role) {
            (Ok(Routed::One(r)), Some(role)) => (Ok(Routed::One(Route { role, ..r })), ended),
            (Ok(Routed::Keyed(r)), Some(role)) => (Ok(Routed::Keyed(Route { role, ..r })), ended),
            (Ok(Routed::Many(r, c)), Some(role)) => {
                (Ok(Routed::Many(Route { role, ..r }, c)), ended)
            }
            (routed, _) => (routed, ended),
        }
    }

    fn route_by_keys(&self, session: &SessionRouting) -> (Result<Routed, Refusal>, bool) {
        let session = *session;
        let mut ended = false;
        let mut route: Option<Route> = None;
        let mut unnamed = self.unnamed.clone();
        let mut keyed = KeyedShard::default();
        let mut unnamed_parse = UnnamedText::None;
        // Named statements parsed earlier in this batch: the session knows
        // them only once their Parse is forwarded, after this scan.
        let mut named_here: Vec<(&[u8], Arc<Analysis>, &[u8])> = Vec::new();
        let no_text = UnnamedText::None;
        let mut at = 0;
        let mut last_tag = 0;
        while let Ok(Some(frame)) = next_frame(self.cbuf.get(at..).unwrap_or(&[]), self.max_message)
        {
            let body = frame.body(&self.cbuf[at..]);
            let start = at;
            at += frame.total_len;
            last_tag = frame.tag;
            if matches!(frame.tag, b'B' | b'D' | b'C' | b'E')
                && crate::protocol::frontend::invalid_utf8_in_text(frame.tag, body).is_some()
            {
                break; // a name that is not UTF-8: as such a Parse, below
            }
            let analysis = match frame.tag {
                b'Q' => self
                    .message_analysis(b'Q', start, frame.total_len)
                    .ok()
                    .map(|a| {
                        keyed.add(self.plan_query(&a, body))?;
                        Ok(self.query_analysis(a))
                    }),
                b'P' => match self.message_analysis(b'P', start, frame.total_len) {
                    // Text that is not UTF-8: the batch fails at it
                    // (`unreadable_text`), nothing after it runs, so what
                    // comes before decides the route.
                    Err(_) => break,
                    Ok(a) => {
                        if body.first() == Some(&0) {
                            // The unnamed statement, and its text and types
                            // for the Bind's keys (read only if needed).
                            unnamed = Some(a.clone());
                            unnamed_parse = UnnamedText::parse(body);
                        } else if let Some(end) = body.iter().position(|&b| b == 0) {
                            named_here.push((&body[..end], a.clone(), body));
                        }
                        Some(Ok(a))
                    }
                },
                b'B' => parse_bind_names(body).ok().and_then(|b| {
                    let here = named_here.iter().rev().find(|(name, _, _)| {
                        !b.statement.is_empty() && *name == b.statement.as_bytes()
                    });
                    let parsed_here;
                    let (a, text) = match here {
                        Some((_, a, parse)) => {
                            parsed_here = UnnamedText::parse(parse);
                            (a.clone(), &parsed_here)
                        }
                        None if b.statement.is_empty() => (unnamed.clone()?, &unnamed_parse),
                        None => (self.statement_analysis(b.statement, &unnamed)?, &no_text),
                    };
                    if let Err(refusal) = keyed.add(self.plan_bind(&a, &b, text)) {
                        return Some(Err(refusal));
                    }
                    Some(Ok(a))
                }),
                b'F' => {
                    let route = Route {
                        shard: 0,
                        role: Role::Primary,
                    };
                    return (Ok(Routed::One(route)), false);
                }
                b'S' | b'H' => {
                    ended = true;
                    None
                }
                _ => None,
            };
            let analysis = match analysis {
                // Refused once the batch has arrived (see
                // `route_arrived_batch`): refused whole, as one unit, rather
                // than its first statements run and the rest refused.
                Some(Err(refusal)) => {
                    let ended = self.batch_has_arrived(frame.tag);
                    return (Err(refusal), ended);
                }
                Some(Ok(a)) => Some(a),
                None => None,
            };
            if let Some(a) = analysis {
                let r = router::route(&a, &session);
                route = Some(match route {
                    None => r,
                    Some(first) if r.role == Role::Primary => Route {
                        role: Role::Primary,
                        ..first
                    },
                    Some(first) => first,
                });
            }
            if matches!(frame.tag, b'Q' | b'S') {
                break;
            }
        }
        let mut route = route.unwrap_or(Route {
            shard: session.shard_override.unwrap_or(0) as usize,
            role: Role::Primary,
        });
        // The scan saw the batch whole (up to its Sync, or the Query):
        // every statement in it was planned, none needs another shard.
        let whole = matches!(last_tag, b'Q' | b'S');
        match keyed.choice {
            Some(choice) if choice.many.is_some() => {
                route.shard = choice.shard;
                (Ok(Routed::Many(route, choice)), ended)
            }
            Some(choice) => {
                route.shard = choice.shard;
                if whole {
                    self.vet_batch(at, route.shard);
                }
                (Ok(Routed::Keyed(route)), ended)
            }
            None => {
                if whole {
                    self.vet_batch(at, route.shard);
                }
                (Ok(Routed::One(route)), ended)
            }
        }
    }

    /// The analysis that decides a simple query's route: for a lone
    /// `EXECUTE name`, the prepared statement's.
    pub(super) fn query_analysis(&self, analysis: Arc<Analysis>) -> Arc<Analysis> {
        if let [s] = analysis.statements.as_slice() {
            if let StatementKind::Execute { name } = &s.kind {
                if let Some(p) = self.sql_prepared.get(name) {
                    return p.analysis.clone();
                }
            }
        }
        analysis
    }

    pub(super) fn statement_analysis(
        &self,
        name: &str,
        unnamed: &Option<Arc<Analysis>>,
    ) -> Option<Arc<Analysis>> {
        if name.is_empty() {
            unnamed.clone()
        } else {
            self.statements.get(name).map(|s| s.analysis.clone())
        }
    }

    /// A server is held but not inside a transaction (its last answers are
    /// still coming): a new unit of work that needs the primary, or another
    /// shard, must wait for it to be released.
    /// Inline for its first checks: inside a transaction (most statements)
    /// nothing moves.
    #[inline]
    pub(super) fn needs_other_server(&mut self, tag: u8) -> bool {
        if self.flow.in_tx() || self.mode == PoolMode::Session {
            return false;
        }
        self.needs_other_server_between_transactions(tag)
    }

    fn needs_other_server_between_transactions(&mut self, tag: u8) -> bool {
        let Some(held) = &self.server else {
            return false;
        };
        if self.pins.is_pinned() || held.conn.tx_status != b'I' {
            return false;
        }
        if self.flow.unsynced() {
            return matches!(tag, b'B' | b'Q') && self.unsynced_batch_moves(tag);
        }
        if !matches!(tag, b'Q' | b'P' | b'B' | b'F') {
            return false;
        }
        // A refusal is answered once the held server is released.
        let Ok(Routed::One(route) | Routed::Keyed(route)) = self.route_next_batch() else {
            return true; // a refusal, or several shards: answered once released
        };
        route.shard != held.shard || (route.role == Role::Primary && !held.is_primary)
    }
}

impl Session {
    /// A batch that so far only prepared and described (asyncpg's
    /// `prepare()` sends Parse, Describe, Flush, and its Bind later) was
    /// routed without knowing its keys. When its Bind needs another shard,
    /// or a simple Query comes next (asyncpg's `copy_records_to_table`
    /// prepares, then sends its COPY as a Query; so does `execute()` without
    /// arguments after a `prepare()`) and needs another shard, several
    /// shards or the primary, the batch is closed with a Sync of the
    /// router's own (nothing ran in it; PostgreSQL ends it at the Query
    /// anyway), the server is released, and the message starts a unit of
    /// its own where it belongs (a statement is prepared there on demand).
    fn unsynced_batch_moves(&mut self, tag: u8) -> bool {
        if self.flow.executed_unsynced()
            || self.answers_due()
            || (tag == b'B' && self.shard_map.as_ref().is_none())
        {
            return false;
        }
        let Some(held) = &self.server else {
            return false;
        };
        let moves = match self.route_next_batch() {
            Ok(Routed::One(route) | Routed::Keyed(route)) => {
                route.shard != held.shard || (route.role == Role::Primary && !held.is_primary)
            }
            // A refusal is answered once the server is released; a
            // statement on several shards runs on legs of its own.
            Ok(Routed::Many(..)) | Err(_) => true,
        };
        if moves {
            crate::protocol::frontend::sync(self.to_server());
            self.expect().swallow(super::expect::Reply::Sync);
            self.flow.batch_closed_by_router();
        }
        moves
    }
}

/// Where a unit of work goes: one server, or legs on several shards.
pub(super) enum Routed {
    One(Route),
    /// One server, on the shard the statement's shard keys name.
    Keyed(Route),
    /// The role (and lowest shard), and the shards with how they combine.
    Many(Route, ShardChoice),
}

/// The one shard the statements of a batch need by their keys.
#[derive(Default)]
struct KeyedShard {
    choice: Option<ShardChoice>,
}

impl KeyedShard {
    /// Adds the plan of the batch's next statement. A statement needing
    /// several shards among others makes the batch a pipeline all the
    /// same: that statement fails at its Bind (0A000, `shards/pipeline.rs`)
    /// after the answers to the statements before it — unless PostgreSQL
    /// rejects one of the batch's Parses first, whose error then comes in
    /// its turn, as from one PostgreSQL.
    fn add(&mut self, planned: Result<Option<ShardChoice>, Refusal>) -> Result<(), Refusal> {
        let Some(next) = planned? else { return Ok(()) };
        let Some(first) = self.choice.take() else {
            self.choice = Some(next);
            return Ok(());
        };
        if first.shard == next.shard && first.many.is_none() && next.many.is_none() {
            self.choice = Some(first);
            return Ok(());
        }
        // Statements of one batch on different shards: a pipeline.
        let shards_of = |c: &ShardChoice| {
            c.many
                .as_ref()
                .map_or_else(|| vec![c.shard], |m| m.shards.clone())
        };
        let mut shards = shards_of(&first);
        for s in shards_of(&next) {
            if !shards.contains(&s) {
                shards.push(s);
            }
        }
        shards.sort_unstable();
        self.choice = Some(ShardChoice {
            shard: shards[0],
            reason: format!("a batch of statements on shards {shards:?}"),
            many: Some(crate::router::Many {
                shards,
                kind: crate::router::ManyKind::Pipeline,
            }),
        });
        Ok(())
    }
}
