//! A read on several shards: the statement runs on every shard at once and
//! the answers are merged while they stream in (`fanout::merge`). Only the
//! shards whose next row the merge needs are read, so memory stays bounded
//! by what is in flight, and once a LIMIT is met the rest is read and
//! dropped. What a merge cannot answer exactly is refused with 0A000
//! before anything runs (`pgrouter_parser::fanout::plan_read`).

use bytes::{Bytes, BytesMut};
use pgrouter_parser::fanout::{plan_read, plan_read_knowing, Operand, ReadPlan};

use super::held::Leg;
use super::legs::{cancel_targets, cancel_unfinished, lower_low_water, poll_fill_any};
use super::parse_check::Verdict;
use super::unit::{OwedPreamble, Unit};
use super::{next_message, ShardError};
use crate::client::error::SessionEnd;
use crate::client::session::Session;
use crate::fanout::merge::{shard_result_formats, MergeContext, Merger};
use crate::router::{BindParams, Role};

/// The client's buffered answer is sent once it is this large.
const FLUSH_AT: usize = 64 * 1024;
/// Merged output held for a client that reads slower than the shards send,
/// before the shards are no longer read (their sockets then fill and they
/// wait): bounds the router's memory per fan-out.
const CLIENT_BACKLOG: usize = 1024 * 1024;
/// How long a leg streaming with a raised receive mark may send nothing
/// before the mark is lowered (see [`relay_wait`]).
const TAIL_WAIT: std::time::Duration = std::time::Duration::from_millis(1);

impl Session {
    pub(super) async fn read_on_shards(
        &mut self,
        unit: &Unit,
        role: Role,
        shards: &[usize],
    ) -> Result<(), ShardError> {
        let plan = match read_plan(unit) {
            Ok(plan) => plan,
            Err(refusal) => {
                // PostgreSQL's own error first, when it has one (asked
                // without waiting for a connection: `check_leg.rs`).
                if let [_] = unit.analysis.statements.as_slice() {
                    let types = unit
                        .extended
                        .as_ref()
                        .map_or(&[][..], |e| &e.param_types[..]);
                    let verdict = self.parse_verdicts(&[(&unit.sql, types)]).await;
                    if let Some(Verdict::Rejected(body)) = verdict.into_iter().next() {
                        return Err(ShardError::Server(body));
                    }
                }
                return Err(refusal);
            }
        };
        let mut legs = self.take_legs(shards, role).await?;
        self.cancel.slot.set_many(cancel_targets(&legs));
        let result = self.read_with_legs_planned(unit, plan, &mut legs).await;
        self.cancel.slot.set(None);
        self.give_back(legs);
        result
    }

    /// The read on legs already taken (in a transaction: its legs).
    pub(super) async fn read_with_legs(
        &mut self,
        unit: &Unit,
        legs: &mut [Leg],
    ) -> Result<(), ShardError> {
        let plan = match read_plan(unit) {
            Ok(plan) => plan,
            Err(refusal) => return postgres_error_first(unit, refusal, legs).await,
        };
        self.read_with_legs_planned(unit, plan, legs).await
    }

    async fn read_with_legs_planned(
        &mut self,
        unit: &Unit,
        plan: ReadPlan,
        legs: &mut [Leg],
    ) -> Result<(), ShardError> {
        let plan = resolve_input_names(unit, plan, legs).await?;
        let ctx = self.merge_context(unit, &plan, legs).await?;
        let spec = match &unit.extended {
            None => plan.merge.clone(),
            Some(e) => {
                let params = BindParams::parse(&e.bind_rest);
                plan.merge
                    .resolve_bound_params(&|n| {
                        params
                            .as_ref()
                            .and_then(|p| param_operand(p, n, &e.param_types))
                    })
                    .map_err(|(sqlstate, message)| ShardError::router(sqlstate, message))?
            }
        };
        let hidden = spec.hidden;
        let portal_rows = unit
            .extended
            .as_ref()
            .map_or(0, |e| e.max_rows.max(0) as u64);
        let leg = legs
            .first_mut()
            .ok_or_else(|| ShardError::router("XX000", "no shard"))?;
        let collations = super::collation::probe(leg, unit, &plan).await?;
        let mut merger = Merger::new(spec, legs.len(), ctx).with_portal_rows(portal_rows);
        if let Some(c) = collations {
            merger = merger
                .with_collations(c.collations)
                .with_enum_columns(c.enums);
        }
        let mut request = BytesMut::new();
        match &unit.extended {
            None => unit.request(&plan.shard_sql, &mut request),
            Some(e) => {
                let rest = with_result_formats(&e.bind_rest, hidden).ok_or_else(|| {
                    ShardError::router("08P01", "pgrouter: malformed Bind message")
                })?;
                unit.request_with_bind(&plan.shard_sql, &rest, &mut request)
            }
        }
        let mut owed = unit.owed_preamble();
        let result = match self.run_read(legs, &request, &mut merger, &mut owed).await {
            Ok(r) => r,
            Err(end) => Err(ShardError::router("08006", format!("pgrouter: {end:?}"))),
        };
        self.unnamed_portal_suspended_on_shards = merger.suspended();
        result
    }

    /// What the merge needs to know of the session and the database: the
    /// collation (learnt once per database) and DateStyle; and whether a
    /// function the statement calls is in fact an aggregate.
    pub(super) async fn merge_context(
        &mut self,
        unit: &Unit,
        plan: &ReadPlan,
        legs: &mut [Leg],
    ) -> Result<MergeContext, ShardError> {
        let map = self.shard_map.as_ref().cloned();
        let facts = map.as_ref().map(|m| m.facts()).unwrap_or_default();
        let unknown: Vec<&String> = plan
            .functions
            .iter()
            .filter(|f| !facts.aggregates.contains_key(*f))
            .collect();
        let mut text_bytes = facts.text_orders_by_bytes;
        if text_bytes.is_none() || !unknown.is_empty() {
            let names: Vec<String> = unknown
                .iter()
                .map(|f| super::super::params::quote_literal(f))
                .collect();
            let sql = format!(
                "SELECT (SELECT coalesce(to_jsonb(d) ->> 'datlocprovider', 'c') = 'b' \
                 OR (coalesce(to_jsonb(d) ->> 'datlocprovider', 'c') = 'c' \
                 AND (datcollate IN ('C', 'POSIX') OR datcollate ILIKE 'C.%')) FROM pg_database d \
                 WHERE datname = current_database())::text, \
                 (SELECT string_agg(DISTINCT proname, ',') FROM pg_proc WHERE prokind = 'a' \
                 AND proname = ANY(ARRAY[{}]::text[]))",
                names.join(",")
            );
            let leg = legs
                .first_mut()
                .ok_or_else(|| ShardError::router("XX000", "no shard"))?;
            let rows = leg
                .held
                .conn
                .query_rows(&sql)
                .await
                .map_err(|e| ShardError::lost(leg.shard, &e))?;
            let row = rows.into_iter().next().unwrap_or_default();
            text_bytes = Some(row.first().cloned().flatten().as_deref() == Some("true"));
            let aggs: Vec<String> = row
                .get(1)
                .cloned()
                .flatten()
                .map(|s| s.split(',').map(str::to_string).collect())
                .unwrap_or_default();
            let learnt: Vec<(String, bool)> = unknown
                .iter()
                .map(|f| ((*f).clone(), aggs.contains(f)))
                .collect();
            if let Some(m) = &map {
                m.learn_facts(text_bytes, &learnt);
            }
        }
        let facts = map.as_ref().map(|m| m.facts()).unwrap_or_default();
        if let Some(f) = plan
            .functions
            .iter()
            .find(|f| facts.aggregates.get(*f) == Some(&true))
        {
            return Err(ShardError::router(
                "0A000",
                format!(
                    "pgrouter: aggregate {f}() cannot be merged across shards; HINT: add the shard key \
                     (WHERE key = ...)"
                ),
            ));
        }
        let datestyle = self
            .params
            .get("DateStyle")
            .or_else(|| {
                legs.first()
                    .and_then(|l| l.held.conn.params.get("DateStyle").map(String::as_str))
            })
            .unwrap_or("ISO");
        let setting = |name: &str| {
            self.params.get(name).map(str::to_owned).or_else(|| {
                legs.first()
                    .and_then(|l| l.held.conn.params.get(name).cloned())
            })
        };
        let intervalstyle_postgres =
            setting("IntervalStyle").is_none_or(|s| s.trim().eq_ignore_ascii_case("postgres"));
        let float_digits_exact = setting("extra_float_digits")
            .is_none_or(|s| s.trim().parse::<i32>().is_ok_and(|d| d >= 1));
        Ok(MergeContext {
            intervalstyle_postgres,
            float_digits_exact,
            text_orders_by_bytes: text_bytes.unwrap_or(false),
            datestyle_iso: datestyle
                .trim_start()
                .to_ascii_uppercase()
                .starts_with("ISO"),
            send_row_description: unit.describes(),
        })
    }

    /// Sends `request` to every leg and relays the merged answer. The legs'
    /// receive marks a large result raised are lowered again on every way
    /// out, before anything else reads these connections.
    async fn run_read(
        &mut self,
        legs: &mut [Leg],
        request: &[u8],
        merge: &mut Merger,
        owed: &mut OwedPreamble,
    ) -> Result<Result<(), ShardError>, SessionEnd> {
        let relayed = self.relay_read(legs, request, merge, owed).await;
        lower_low_water(legs);
        relayed
    }

    async fn relay_read(
        &mut self,
        legs: &mut [Leg],
        request: &[u8],
        merge: &mut Merger,
        owed: &mut OwedPreamble,
    ) -> Result<Result<(), ShardError>, SessionEnd> {
        for i in 0..legs.len() {
            legs[i].ready = false;
            if let Err(e) = legs[i].held.conn.send(request).await {
                legs[i].ready = true;
                legs[i].held.conn.tx_status = b'E';
                let shard = legs[i].shard;
                cancel_unfinished(legs);
                return Ok(Err(ShardError::lost(shard, &e)));
            }
        }
        let mut failure: Option<ShardError> = None;
        let mut cancel_at = self.query_deadline();
        loop {
            let mut progressed = false;
            // By index: a leg is read and updated while `legs` is lent to
            // the helpers that cancel or inspect every leg.
            #[allow(clippy::needless_range_loop)]
            for i in 0..legs.len() {
                while !legs[i].ready && (failure.is_some() || merge.is_done() || merge.wants(i)) {
                    // The merger's messages are read in place (a fan-out
                    // can relay millions of rows: no `Bytes` per row).
                    if failure.is_none() && !merge.is_done() {
                        match feed_in_place(&mut legs[i], i, merge, &mut self.to_client)? {
                            InPlace::Fed => {
                                progressed = true;
                                continue;
                            }
                            InPlace::Failed(e) => {
                                progressed = true;
                                failure = Some(ShardError::router(e.sqlstate, e.message));
                                continue;
                            }
                            InPlace::NotThere => break,
                            InPlace::Other => {}
                        }
                    }
                    let Some((tag, body)) = next_message(&mut legs[i])? else {
                        break;
                    };
                    progressed = true;
                    match tag {
                        b'Z' => {
                            legs[i].ready = true;
                            legs[i].held.conn.tx_status = body.first().copied().unwrap_or(b'I');
                        }
                        b'1' | b'2' if failure.is_none() => {
                            owed.on_leg_message(tag, &mut self.to_client)
                        }
                        b'E' if failure.is_none() => failure = Some(ShardError::Server(body)),
                        b'E' => {}
                        b'S' => legs[i].held.conn.note_parameter_status(&body),
                        b'N' if i == 0 => {
                            crate::protocol::backend::put_message(&mut self.to_client, b'N', |b| {
                                b.extend_from_slice(&body)
                            })
                        }
                        b'T' | b'D' | b'C' | b'I' if failure.is_none() && !merge.is_done() => {
                            if let Err(e) = merge.feed(i, tag, &body) {
                                failure = Some(ShardError::router(e.sqlstate, e.message));
                            }
                        }
                        _ => {}
                    }
                }
            }
            if failure.is_some() {
                cancel_unfinished(legs);
            } else {
                if let Err(e) = merge.drain(&mut self.to_client) {
                    failure = Some(ShardError::router(e.sqlstate, e.message));
                    cancel_unfinished(legs);
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
            match relay_wait(
                &mut self.client,
                &mut self.to_client,
                legs,
                &wanted,
                cancel_at,
            )
            .await
            {
                Ok(()) => {}
                Err(Waited::ClientLost(e)) => return Err(SessionEnd::ClientIo(e)),
                Err(Waited::QueryTimeout) => {
                    // `query_timeout_ms`: every shard still running the
                    // statement is cancelled; their 57014 ends it as one
                    // shard's error would.
                    tracing::info!(
                        "query_timeout_ms reached: cancelling the statement on its shards"
                    );
                    cancel_unfinished(legs);
                    cancel_at = None;
                }
                Err(Waited::LegLost(i)) => {
                    legs[i].ready = true;
                    legs[i].held.conn.tx_status = b'E'; // unusable: closed at give-back
                    failure.get_or_insert_with(|| {
                        ShardError::lost(legs[i].shard, &"connection closed")
                    });
                }
            }
        }
        Ok(failure.map_or(Ok(()), Err))
    }
}

/// Why [`relay_wait`] stopped waiting early.
enum Waited {
    ClientLost(std::io::Error),
    /// Leg `i` closed or failed.
    LegLost(usize),
    /// The statement's `query_timeout_ms` deadline passed.
    QueryTimeout,
}

/// Waits until the client took some of the merged output or a wanted leg
/// sent more. The client is written to while the shards are read: a
/// client slower than the shards for a moment does not stop them (their
/// output waits here, up to [`CLIENT_BACKLOG`]), and the shards do not wait
/// for a write of the whole output. Output under [`FLUSH_AT`] waits for
/// more (the rest goes at the end of the statement).
///
/// A leg that streams a large result has its receive mark raised
/// (`net/low_water.rs`), so that the router is woken once per several of
/// the server's sends; when such a leg has sent nothing for [`TAIL_WAIT`]
/// (the end of its result, or a pause) its mark is lowered, which wakes
/// the read if bytes are already waiting.
///
/// `cancel_at`: the statement's `query_timeout_ms` deadline, reported as
/// [`Waited::QueryTimeout`] when it passes first.
async fn relay_wait(
    client: &mut crate::net::ClientStream,
    out: &mut BytesMut,
    legs: &mut [Leg],
    wanted: &[bool],
    cancel_at: Option<std::time::Instant>,
) -> Result<(), Waited> {
    use std::future::Future;
    use std::task::Poll;
    use tokio::io::AsyncWrite;
    let raised = legs
        .iter()
        .zip(wanted)
        .any(|(l, &w)| w && l.held.conn.low_water.is_raised());
    let mut tail = raised.then(|| Box::pin(crate::timer::sleep(TAIL_WAIT)));
    let mut timeout = cancel_at.map(|at| Box::pin(crate::timer::sleep_until(at)));
    std::future::poll_fn(|cx| {
        if let Some(timer) = timeout.as_mut() {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(Waited::QueryTimeout));
            }
        }
        let mut wrote = false;
        if out.len() >= FLUSH_AT {
            while !out.is_empty() {
                match std::pin::Pin::new(&mut *client).poll_write(cx, out) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(Waited::ClientLost(
                            std::io::ErrorKind::WriteZero.into(),
                        )))
                    }
                    Poll::Ready(Ok(n)) => {
                        bytes::Buf::advance(out, n);
                        wrote = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Waited::ClientLost(e))),
                    Poll::Pending => break,
                }
            }
        }
        if out.len() < CLIENT_BACKLOG {
            match poll_fill_any(cx, legs, wanted) {
                Poll::Ready(Err(i)) => return Poll::Ready(Err(Waited::LegLost(i))),
                Poll::Ready(Ok((i, n))) => {
                    let server = &mut *legs[i].held.conn;
                    server.low_water.streamed(&server.stream, n);
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending => {}
            }
            if let Some(timer) = tail.as_mut() {
                if timer.as_mut().poll(cx).is_ready() {
                    for i in (0..legs.len()).filter(|&i| wanted[i]) {
                        let server = &mut *legs[i].held.conn;
                        if server.low_water.lower(&server.stream).is_err() {
                            return Poll::Ready(Err(Waited::LegLost(i)));
                        }
                    }
                    return Poll::Ready(Ok(()));
                }
            }
        }
        if wrote {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// What [`feed_in_place`] did with a leg's next message.
enum InPlace {
    /// A RowDescription, DataRow, CommandComplete or EmptyQueryResponse
    /// went to the merger.
    Fed,
    Failed(crate::fanout::merge::MergeError),
    /// No whole message is buffered.
    NotThere,
    /// Another message: read it as usual.
    Other,
}

/// Feeds the leg's next messages to the merger straight from its read
/// buffer when they are ones the merger takes: a run of rows a plain union
/// passes through goes to `out` at once, another message one at a time.
fn feed_in_place(
    leg: &mut Leg,
    i: usize,
    merge: &mut Merger,
    out: &mut BytesMut,
) -> Result<InPlace, SessionEnd> {
    let rows = merge.feed_rows(i, &leg.held.conn.read_buf, out);
    bytes::Buf::advance(&mut leg.held.conn.read_buf, rows.taken);
    if let Some(e) = rows.error {
        return Ok(InPlace::Failed(e));
    }
    if rows.taken > 0 {
        return Ok(InPlace::Fed);
    }
    let buf = &leg.held.conn.read_buf;
    let Some(frame) = crate::protocol::next_frame(buf, 1 << 30)? else {
        return Ok(InPlace::NotThere);
    };
    if !matches!(frame.tag, b'T' | b'D' | b'C' | b'I') {
        return Ok(InPlace::Other);
    }
    let fed = merge.feed(i, frame.tag, &buf[5..frame.total_len]);
    bytes::Buf::advance(&mut leg.held.conn.read_buf, frame.total_len);
    Ok(match fed {
        Ok(()) => InPlace::Fed,
        Err(e) => InPlace::Failed(e),
    })
}

/// The merge plan of a read, or the 0A000 saying why there is none.
fn read_plan(unit: &Unit) -> Result<ReadPlan, ShardError> {
    if unit.analysis.statements.len() != 1 {
        return Err(ShardError::router(
            "0A000",
            "pgrouter: a query string with several statements cannot run on several shards; \
             HINT: send the statements one by one",
        ));
    }
    plan_read(&unit.sql).map_err(|u| ShardError::router("0A000", format!("pgrouter: {}", u.0)))
}

/// A read the merge planner refused: when PostgreSQL rejects the
/// statement anyway (`SELECT DISTINCT a ... ORDER BY b` is 42P10, an
/// aggregate in WHERE 42803), the client gets PostgreSQL's error, as from
/// one server holding all rows — asked of the first leg with a Parse
/// (`parse_check.rs`: analysis only, nothing runs). Else the router's
/// refusal stands.
async fn postgres_error_first(
    unit: &Unit,
    refusal: ShardError,
    legs: &mut [Leg],
) -> Result<(), ShardError> {
    let (Some(leg), [_]) = (legs.first_mut(), unit.analysis.statements.as_slice()) else {
        return Err(refusal);
    };
    let types = unit
        .extended
        .as_ref()
        .map_or(&[][..], |e| &e.param_types[..]);
    match super::parse_check::parse_on_leg(leg, &unit.sql, types).await {
        Err(e @ ShardError::Server(_)) => Err(e),
        _ => Err(refusal),
    }
}

/// The plan again when a GROUP BY name may be an input column as well as
/// an output name: one shard's catalog tells which names are input columns
/// (which PostgreSQL groups by), and the statement is planned knowing it.
async fn resolve_input_names(
    unit: &Unit,
    plan: ReadPlan,
    legs: &mut [Leg],
) -> Result<ReadPlan, ShardError> {
    let Some(probe) = &plan.input_probe else {
        return Ok(plan);
    };
    let leg = legs
        .first_mut()
        .ok_or_else(|| ShardError::router("XX000", "no shard"))?;
    let rows = leg
        .held
        .conn
        .query_rows(probe)
        .await
        .map_err(|e| ShardError::lost(leg.shard, &e))?;
    let inputs: Vec<String> = rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
    plan_read_knowing(&unit.sql, &inputs)
        .map_err(|u| ShardError::router("0A000", format!("pgrouter: {}", u.0)))
}

/// Parameter `$n` for LIMIT/OFFSET/HAVING: its text, or its bytes when
/// sent in binary format (None: NULL or missing).
fn param_operand(params: &BindParams, n: usize, declared: &[i32]) -> Option<Operand> {
    let (format, value) = params.get(n)?;
    let value = value?;
    if format == 0 {
        return Some(Operand::Const(String::from_utf8_lossy(value).into_owned()));
    }
    // Binary: read by its type (declared in Parse, else the one PostgreSQL
    // infers), never guessed from its length: 8 bytes may be a float8 or a
    // numeric as well as a bigint.
    Some(Operand::Bound {
        declared: declared.get(n - 1).copied().unwrap_or(0) as u32,
        bytes: value.to_vec(),
    })
}

/// The rest of a Bind with result-format codes for the hidden columns
/// (when the client gave one code per column).
fn with_result_formats(rest: &[u8], hidden: usize) -> Option<Bytes> {
    let mut at = 0;
    let count = |b: &[u8], at: usize| -> Option<usize> {
        Some(i16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]) as usize)
    };
    let nformats = count(rest, at)?;
    at += 2 + 2 * nformats;
    let nvalues = count(rest, at)?;
    at += 2;
    for _ in 0..nvalues {
        let len = i32::from_be_bytes(rest.get(at..at + 4)?.try_into().ok()?);
        at += 4 + len.max(0) as usize;
    }
    let nresults = count(rest, at)?;
    let codes: Vec<i16> = (0..nresults)
        .map(|i| count(rest, at + 2 + 2 * i).map(|c| c as i16))
        .collect::<Option<_>>()?;
    let codes = shard_result_formats(&codes, hidden);
    let mut out = BytesMut::with_capacity(rest.len() + 2 * hidden);
    out.extend_from_slice(rest.get(..at)?);
    out.extend_from_slice(&(codes.len() as i16).to_be_bytes());
    for c in codes {
        out.extend_from_slice(&c.to_be_bytes());
    }
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::with_result_formats;

    #[test]
    fn hidden_columns_get_text_result_codes() {
        // 0 param formats, 1 value "7", 2 result codes (binary, text).
        let mut rest = vec![0, 0, 0, 1, 0, 0, 0, 1, b'7', 0, 2, 0, 1, 0, 0];
        let got = with_result_formats(&rest, 2).unwrap();
        assert_eq!(
            &got[..],
            &[0, 0, 0, 1, 0, 0, 0, 1, b'7', 0, 4, 0, 1, 0, 0, 0, 0, 0, 0][..]
        );
        // One code for all columns stays one code.
        rest.truncate(9);
        rest.extend_from_slice(&[0, 1, 0, 1]);
        assert_eq!(&with_result_formats(&rest, 2).unwrap()[..], &rest[..]);
    }
}
