//! An extended-protocol batch whose statements need different shards — a
//! pipeline, or a driver's `executemany` (psycopg, asyncpg): Parse, then
//! Bind/Execute per row, Flushes along the way, one Sync. Each statement
//! runs on its shard's leg, in the batch's order on that leg; the client
//! gets every answer in the order of its own messages, up to the first
//! error (after which PostgreSQL skips the rest of the batch too). Each
//! part up to a Flush runs as soon as it is there (a client may wait for
//! its answers before sending more). The batch is one implicit
//! transaction: at its Sync the legs commit together (two-phase commit
//! when configured) or all roll back.

use bytes::{Bytes, BytesMut};

use super::held::Pipeline;
use super::legs::cancel_targets;
use super::ShardError;
use crate::client::error::SessionEnd;
use crate::client::session::Session;
use crate::client::shard_routing::UnnamedText;
use crate::protocol::frontend::{self, parse_bind_names, parse_parse, BindNames};
use crate::protocol::{backend, next_frame};
use crate::router::Role;

/// One Bind of the batch and what the client asked of it.
struct Step {
    shard: usize,
    sql: String,
    types: Vec<i32>,
    bind_rest: Bytes,
    describe: bool,
    execute: bool,
    /// A client's Parse, checked on a leg as it comes (`Parse` of the
    /// unnamed statement there): the client gets PostgreSQL's answer to it
    /// in its turn — ParseComplete, or the error of a statement PostgreSQL
    /// rejects (a missing table or column), never a ParseComplete of the
    /// router's and the error at the Bind after it.
    parse_only: bool,
    /// That Parse is one the router's parser refused (a syntax error): the
    /// rest of the batch was not taken.
    unparsed: bool,
    /// The statement name of that Parse (empty: the unnamed statement, or
    /// a Bind's step): forgotten again when PostgreSQL rejects it, as
    /// PostgreSQL keeps no statement whose Parse failed.
    name: String,
}

/// What [`Session::take_pipeline`] found; the bool: the part ended with
/// the batch's Sync.
enum Taken {
    Steps(Vec<Message>, Vec<Step>, bool),
    /// Taken, but it cannot run: the batch fails.
    Failed(ShardError, bool),
}

/// The client's messages in order: a step (index into steps; a Parse is a
/// step of its own), or the router's error for a message it cannot run (a name that is not
/// UTF-8, an unknown statement): the batch fails there, after the answers
/// to the messages before it, as PostgreSQL's would.
enum Message {
    Step(usize),
    Fails(ShardError),
}

impl Session {
    /// Runs the part of a pipeline at the front of the client's buffer (up
    /// to a Flush or its Sync) and queues the answers. At the Sync the
    /// legs commit or roll back and the ReadyForQuery is queued.
    pub(in crate::client) async fn pipeline_step(&mut self, role: Role) -> Result<(), SessionEnd> {
        let mut pipe = self.pipeline.take().unwrap_or(Pipeline {
            legs: Vec::new(),
            role,
            failed: None,
            refusal: None,
            in_tx: None,
        });
        let (order, mut steps, synced) = match self.take_pipeline()? {
            Taken::Steps(order, steps, synced) => (order, steps, synced),
            Taken::Failed(e, synced) => {
                if pipe.failed.is_none() {
                    self.pipeline_failed(&mut pipe, e);
                }
                (Vec::new(), Vec::new(), synced)
            }
        };
        if pipe.failed.is_none() && !order.is_empty() {
            self.state.metrics.record_shards(pipe.legs.len().max(1));
            if let Err(e) = self.run_pipeline_part(&mut pipe, order, &mut steps).await? {
                self.pipeline_failed(&mut pipe, e);
            }
        }
        if !synced {
            self.pipeline = Some(pipe);
            return Ok(());
        }
        let mut legs = std::mem::take(&mut pipe.legs);
        // Each leg ran its part up to a Flush: its Sync ends the extended
        // batch (a leg that failed skips everything until then).
        for leg in legs.iter_mut() {
            let mut sync = BytesMut::new();
            frontend::sync(&mut sync);
            let synced = match leg.held.conn.send(&sync).await {
                Ok(()) => leg.held.conn.read_until_ready().await.is_ok(),
                Err(_) => false,
            };
            if !synced {
                leg.held.conn.tx_status = b'E';
                leg.cancelled = true; // closed at give-back
                pipe.failed.get_or_insert_with(Bytes::new);
            }
        }
        if let Some(held) = pipe.in_tx {
            // The transaction goes on (failed if a statement failed). A
            // failed leg is held from now on, as `step_in_sharded_tx` does
            // for the next statement: what the client sends before it (a
            // lone Sync, as psycopg sends at a pipeline's end) is answered
            // there, and its ReadyForQuery says E as PostgreSQL's would.
            let failed = legs.iter().find(|l| l.held.conn.tx_status == b'E');
            let held = failed.map(|l| l.shard).or(held);
            self.restore_legs(legs, held);
            if let Some(e) = pipe.refusal.take() {
                self.fail_transaction(&e).await;
            }
            return self.answer_in_tx(Ok(()), None).await;
        }
        if pipe.failed.is_some() {
            self.roll_back(&mut legs).await;
        } else {
            let all: Vec<usize> = (0..legs.len()).collect();
            if let Err(e) = self.commit_written(&mut legs, &all).await {
                self.state.metrics.record_error(&e.sqlstate());
                e.write(&mut self.to_client);
            }
        }
        self.cancel.slot.set(None);
        self.give_back(legs);
        backend::ready_for_query(&mut self.to_client, b'I');
        Ok(())
    }

    /// A part of the pipeline failed with `e`, which the client gets now;
    /// the rest up to the Sync is skipped. The router's own error inside a
    /// transaction block is kept to fail the transaction at the Sync.
    fn pipeline_failed(&mut self, pipe: &mut Pipeline, e: ShardError) {
        self.state.metrics.record_error(&e.sqlstate());
        e.write(&mut self.to_client);
        pipe.failed = Some(Bytes::new());
        if pipe.in_tx.is_some() && matches!(e, ShardError::Router { .. }) {
            pipe.refusal = Some(e);
        }
    }

    /// One part: each step on its shard's leg (joining new shards in the
    /// transaction first), answers relayed in the client's order.
    async fn run_pipeline_part(
        &mut self,
        pipe: &mut Pipeline,
        order: Vec<Message>,
        steps: &mut [Step],
    ) -> Result<Result<(), ShardError>, SessionEnd> {
        // A Parse checked alone runs on a leg the part uses anyway.
        let check_on = pipe
            .legs
            .first()
            .map(|l| l.shard)
            .or(steps.iter().find(|s| !s.parse_only).map(|s| s.shard));
        for step in steps.iter_mut().filter(|s| s.parse_only) {
            step.shard = check_on.unwrap_or(step.shard);
        }
        for step in steps.iter() {
            if pipe.legs.iter().any(|l| l.shard == step.shard) {
                continue;
            }
            let mut leg = if pipe.in_tx.is_some() {
                // A shard new to the client's transaction joins it.
                match self.join_leg(step.shard, pipe.role).await {
                    Ok(leg) => leg,
                    Err(e) => return Ok(Err(e)),
                }
            } else {
                match self.take_legs(&[step.shard], pipe.role).await {
                    Ok(mut legs) => legs.remove(0),
                    Err(e) => return Ok(Err(e)),
                }
            };
            if pipe.in_tx.is_none() {
                match leg.held.conn.run_simple("BEGIN").await {
                    Ok(Ok(())) => {}
                    Ok(Err(f)) => {
                        self.give_back(vec![leg]);
                        return Ok(Err(ShardError::from_fields(step.shard, f)));
                    }
                    Err(e) => return Ok(Err(ShardError::lost(step.shard, &e))),
                }
            }
            let at = pipe.legs.partition_point(|l| l.shard < leg.shard);
            leg.ready = true;
            pipe.legs.insert(at, leg);
        }
        self.cancel.slot.set_many(cancel_targets(&pipe.legs));
        let legs = &mut pipe.legs;
        let mut requests: Vec<BytesMut> = legs.iter().map(|_| BytesMut::new()).collect();
        let mut expected = vec![0usize; legs.len()];
        for step in steps.iter() {
            let i = legs.iter().position(|l| l.shard == step.shard).unwrap_or(0);
            let r = &mut requests[i];
            frontend::write_parse(r, "", &step.sql, &step.types);
            if step.parse_only {
                expected[i] += 1;
                continue;
            }
            frontend::write_bind(r, "", "", &step.bind_rest);
            expected[i] += 2;
            if step.describe {
                frontend::write_target(r, b'D', b'P', "");
                expected[i] += 1;
            }
            if step.execute {
                super::unit::execute_all(r);
                expected[i] += 1;
            }
        }
        for r in requests.iter_mut() {
            backend::put_message(r, b'H', |_| {});
        }
        let mut queues: Vec<std::collections::VecDeque<(u8, Bytes)>> = Vec::new();
        for (i, leg) in legs.iter_mut().enumerate() {
            if expected[i] == 0 {
                queues.push(Default::default());
                continue;
            }
            if let Err(e) = leg.held.conn.send(&requests[i]).await {
                leg.held.conn.tx_status = b'E';
                return Ok(Err(ShardError::lost(leg.shard, &e)));
            }
            queues.push(Default::default());
        }
        // Each leg's replies: until all expected arrived, or an error (the
        // leg then skips to the Sync and sends nothing more).
        for (i, leg) in legs.iter_mut().enumerate() {
            let mut got = 0;
            while got < expected[i] {
                let (tag, body) = match leg.held.conn.read_message().await {
                    Ok(m) => m,
                    Err(e) => {
                        leg.held.conn.tx_status = b'E';
                        return Ok(Err(ShardError::lost(leg.shard, &e)));
                    }
                };
                match tag {
                    b'1' | b'2' | b'T' | b'n' | b'C' | b'I' | b's' => got += 1,
                    b'E' => got = expected[i],
                    b'S' => {
                        leg.held.conn.note_parameter_status(&body);
                        continue;
                    }
                    _ => {}
                }
                queues[i].push_back((tag, body));
            }
        }
        let mut failed: Option<ShardError> = None;
        'messages: for m in order {
            let step_no = match m {
                Message::Fails(e) => {
                    failed = Some(e);
                    break 'messages;
                }
                Message::Step(s) => s,
            };
            let step = &steps[step_no];
            let i = legs.iter().position(|l| l.shard == step.shard).unwrap_or(0);
            let q = &mut queues[i];
            // A client's Parse: its ParseComplete (or error). Else
            // BindComplete (the ParseComplete of the Parse sent with it is
            // not the client's), then the description asked for, then rows
            // and tag.
            let wanted = if step.parse_only {
                1
            } else {
                1 + usize::from(step.describe) + usize::from(step.execute)
            };
            let mut done = 0;
            while done < wanted {
                let Some((tag, body)) = q.pop_front() else {
                    break 'messages;
                };
                match tag {
                    b'E' => {
                        if !step.name.is_empty() {
                            self.statements.remove(&step.name);
                        }
                        failed = Some(ShardError::Server(body));
                        break 'messages;
                    }
                    b'1' if !step.parse_only => {}
                    b'N' | b'D' => backend::put_message(&mut self.to_client, tag, |b| {
                        b.extend_from_slice(&body)
                    }),
                    _ => {
                        backend::put_message(&mut self.to_client, tag, |b| {
                            b.extend_from_slice(&body)
                        });
                        done += 1;
                    }
                }
            }
            if step.unparsed {
                // The rest of the batch was not taken: it must not pass
                // as done.
                failed = Some(ShardError::router(
                    "0A000",
                    "pgrouter: a statement the router could not parse was accepted by the server; \
                     HINT: Sync after it",
                ));
                break;
            }
        }
        if failed.is_none() {
            failed = queues
                .iter()
                .flatten()
                .find(|(t, _)| *t == b'E')
                .map(|(_, b)| ShardError::Server(b.clone()));
        }
        Ok(failed.map_or(Ok(()), Err))
    }

    /// Takes the batch up to its next Flush or Sync: `[Parse] (Bind
    /// [Describe portal] Execute)+` in any interleaving of Parses, each Bind
    /// placed by its own keys.
    fn take_pipeline(&mut self) -> Result<Taken, SessionEnd> {
        let mut at = 0;
        let mut frames = Vec::new();
        let mut bad = None;
        // Ends early at a part that arrived without its Flush (a large one).
        while let Some(f) = next_frame(self.cbuf.get(at..).unwrap_or(&[]), self.max_message)? {
            let body = f.body(&self.cbuf[at..]);
            let ok = match f.tag {
                b'P' | b'B' | b'E' | b'S' | b'H' => true,
                // Its kind only: a name that is not UTF-8 fails in turn.
                b'D' => body.first() == Some(&b'P'),
                _ => false,
            };
            frames.push((f.tag, at, f.total_len));
            at += f.total_len;
            if !ok && bad.is_none() {
                bad = Some(f.tag);
            }
            if matches!(f.tag, b'S' | b'H') {
                break;
            }
        }
        let synced = frames.last().is_some_and(|f| f.0 == b'S');
        if let Some(tag) = bad {
            // The whole batch fails, as PostgreSQL's would at that message.
            let _ = self.cbuf.split_to(at);
            return Ok(Taken::Failed(
                unsupported(&format!("message '{}'", tag as char)),
                synced,
            ));
        }
        let batch = self.cbuf.split_to(at).freeze();
        let mut order = Vec::new();
        let mut steps: Vec<Step> = Vec::new();
        let mut portals: Vec<&str> = Vec::new();
        // The unnamed statement as of each point of the batch.
        let mut unnamed: Option<(String, Vec<i32>)> =
            parse_parse(self.unnamed_parse.get(5..).unwrap_or(&[]))
                .ok()
                .map(|p| (p.sql.to_string(), p.param_types));
        for &(tag, start, len) in &frames {
            let body = &batch[start + 5..start + len];
            // Text or a name that is not UTF-8: the batch fails at it, as
            // PostgreSQL's would, after the answers to what came before.
            if let Some(r) = self.unreadable_text_in(tag, body) {
                order.push(Message::Fails(ShardError::router(r.sqlstate, r.message)));
                break;
            }
            match tag {
                b'P' => {
                    let p = parse_parse(body)?;
                    let unparsed = self.analyze(p.sql).parse_error.is_some();
                    // PostgreSQL's answer, from a leg (after an error the
                    // rest of the batch is skipped there).
                    steps.push(Step {
                        shard: self.session_routing().shard_override.unwrap_or(0) as usize,
                        sql: p.sql.to_string(),
                        types: p.param_types.clone(),
                        bind_rest: Bytes::new(),
                        describe: false,
                        execute: false,
                        parse_only: true,
                        unparsed,
                        name: p.name.to_string(),
                    });
                    order.push(Message::Step(steps.len() - 1));
                    if unparsed {
                        break;
                    }
                    if p.name.is_empty() {
                        unnamed = Some((p.sql.to_string(), p.param_types));
                    }
                    self.note_parse(&batch[start..start + len])?;
                }
                b'B' => {
                    let b = parse_bind_names(body)?;
                    // A portal name bound before (42P03): in the client's
                    // transaction, or earlier in this part.
                    let again = self.bound_again(b.portal).or_else(|| {
                        (!b.portal.is_empty() && portals.contains(&b.portal))
                            .then(|| crate::client::shard_portals::portal_refusal(b.portal))
                    });
                    if let Some(r) = again {
                        order.push(Message::Fails(ShardError::router(r.sqlstate, r.message)));
                        break;
                    }
                    portals.push(b.portal);
                    self.note_portal(b.portal, false);
                    let (sql, types) = match self.bound(&b, &unnamed) {
                        Ok(st) => st,
                        Err(e) => {
                            order.push(Message::Fails(e));
                            break;
                        }
                    };
                    let shard = match self.step_shard(&b, &sql, &types) {
                        Ok(s) => s,
                        Err(e) => {
                            order.push(Message::Fails(e));
                            break;
                        }
                    };
                    let rest_at = b.rest.as_ptr() as usize - batch.as_ptr() as usize;
                    steps.push(Step {
                        shard,
                        sql,
                        types,
                        bind_rest: batch.slice(rest_at..start + len),
                        describe: false,
                        execute: false,
                        parse_only: false,
                        unparsed: false,
                        name: String::new(),
                    });
                    order.push(Message::Step(steps.len() - 1));
                }
                b'D' => match steps.last_mut() {
                    Some(s) if !s.execute && !s.parse_only => s.describe = true,
                    _ => {
                        return Ok(Taken::Failed(
                            unsupported("Describe or Execute out of place"),
                            synced,
                        ))
                    }
                },
                b'E' => {
                    let max_rows = super::unit::execute_max_rows(body);
                    match steps.last_mut() {
                        Some(s) if !s.execute && !s.parse_only && max_rows == 0 => s.execute = true,
                        _ => {
                            return Ok(Taken::Failed(
                                unsupported("Describe or Execute out of place"),
                                synced,
                            ))
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Taken::Steps(order, steps, synced))
    }

    /// The text and parameter types of the statement a Bind names.
    fn bound(
        &self,
        b: &BindNames,
        unnamed: &Option<(String, Vec<i32>)>,
    ) -> Result<(String, Vec<i32>), ShardError> {
        if b.statement.is_empty() {
            return unnamed.clone().ok_or_else(|| {
                ShardError::router("26000", "unnamed prepared statement does not exist")
            });
        }
        self.statements
            .get(b.statement)
            .map(|s| (s.sql.clone(), s.param_types.clone()))
            .ok_or_else(|| {
                ShardError::router(
                    "26000",
                    format!("prepared statement \"{}\" does not exist", b.statement),
                )
            })
    }

    /// The one shard a step needs: by its keys, else the session's shard
    /// (a hint, `SET pgrouter.shard`) or shard 0.
    fn step_shard(&self, b: &BindNames, sql: &str, types: &[i32]) -> Result<usize, ShardError> {
        let analysis = self.analyze(sql);
        match self.plan_bind(&analysis, b, &UnnamedText::Read(sql, types)) {
            Ok(Some(choice)) if choice.many.is_none() => Ok(choice.shard),
            Ok(Some(choice)) => Err(ShardError::router(
                "0A000",
                format!(
                    "pgrouter: a statement of this batch needs several shards ({}); such a statement must be \
                     alone in its batch; HINT: Sync after each statement",
                    choice.reason
                ),
            )),
            Ok(None) => Ok(analysis
                .hint
                .shard
                .map(|s| s as usize)
                .or(self.session_routing().shard_override.map(|s| s as usize))
                .unwrap_or(0)),
            Err(r) => Err(ShardError::router(r.sqlstate, r.message)),
        }
    }
}

fn unsupported(seen: &str) -> ShardError {
    ShardError::router(
        "0A000",
        format!(
            "pgrouter: a batch of statements on several shards may hold only Parse, Bind, Describe (portal), \
             Execute (all rows) and end with Sync (saw {seen}); HINT: Sync after each statement"
        ),
    )
}
