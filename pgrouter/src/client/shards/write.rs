//! Writes and DDL on several shards. The statement runs on every shard in
//! a transaction block of its own; only when every shard succeeded are they
//! committed together (two-phase commit when configured), otherwise all
//! are rolled back — never a statement done on some shards only. What
//! PostgreSQL cannot run in a transaction block (`CREATE INDEX
//! CONCURRENTLY`, `VACUUM`) runs shard by shard, and a failure names the
//! shards it failed on.

use bytes::{Bytes, BytesMut};
use pgrouter_parser::StatementKind;

use super::held::Leg;
use super::legs::{
    cancel_and_wait, cancel_targets, cancel_unfinished, fill_any, give_up_unfinished,
};
use super::unit::Unit;
use super::{next_message, put_tag, split_tag, ShardError};
use crate::client::error::SessionEnd;
use crate::client::session::Session;
use crate::protocol::backend::{self, parse_error_fields};
use crate::protocol::frontend;
use crate::router::{self, ManyKind, Role};

/// One leg's answer to a request: its messages up to ReadyForQuery.
pub(super) type Answer = Vec<(u8, Bytes)>;

impl Session {
    pub(super) async fn write_on_shards(
        &mut self,
        unit: &Unit,
        kind: ManyKind,
        shards: &[usize],
    ) -> Result<(), ShardError> {
        let analysis = &unit.analysis;
        if analysis
            .statements
            .iter()
            .any(|s| matches!(s.kind, StatementKind::Transaction(_)))
        {
            return Err(ShardError::router(
                "0A000",
                "pgrouter: a query string that needs several shards cannot hold BEGIN/COMMIT; \
                 HINT: send the transaction's statements one by one",
            ));
        }
        if kind == ManyKind::Ddl {
            self.forget_schema();
        }
        let in_turn = router::runs_outside_transactions(analysis, &unit.sql);
        let mut legs = self.take_legs(shards, Role::Primary).await?;
        self.cancel.slot.set_many(cancel_targets(&legs));
        let result = if in_turn {
            self.each_shard_in_turn(&mut legs, unit).await
        } else {
            self.all_shards_at_once(&mut legs, unit, kind).await
        };
        self.cancel.slot.set(None);
        self.give_back(legs);
        if kind == ManyKind::Ddl {
            self.forget_schema();
        }
        result.unwrap_or_else(|end| Err(ShardError::router("08006", format!("pgrouter: {end:?}"))))
    }

    /// What the router learnt of the schema, forgotten before DDL runs and
    /// again once it answered: the columns of sharded tables (INSERT
    /// splitting), and PostgreSQL's acceptance of Parses (`parse_check.rs`),
    /// which another client could have recorded while the DDL ran. A
    /// statement that no longer parses then fails at its Parse again, not
    /// at its Bind.
    fn forget_schema(&self) {
        if let Some(map) = self.shard_map.as_ref() {
            map.forget_columns();
        }
        self.rt.parse_verdicts.clear();
    }

    /// One transaction block per shard, committed together.
    async fn all_shards_at_once(
        &mut self,
        legs: &mut [Leg],
        unit: &Unit,
        kind: ManyKind,
    ) -> Result<Result<(), ShardError>, SessionEnd> {
        let mut request = BytesMut::new();
        frontend::query(&mut request, "BEGIN");
        unit.request(&unit.sql, &mut request);
        let mut answers = match self.ask_all(legs, &request, 2).await? {
            Ok(a) => a,
            Err(e) => {
                self.roll_back(legs).await;
                return Ok(Err(e));
            }
        };
        let failed = answers
            .iter()
            .flat_map(|a| a.iter())
            .find(|(tag, _)| *tag == b'E')
            .map(|(_, body)| ShardError::Server(body.clone()));
        if let Some(e) = failed.or_else(|| {
            legs.iter().any(|l| l.held.conn.tx_status != b'T').then(|| {
                ShardError::router("XX000", "pgrouter: a shard ended the transaction early")
            })
        }) {
            self.roll_back(legs).await;
            return Ok(Err(e));
        }
        let all: Vec<usize> = (0..legs.len()).collect();
        if let Err(e) = self.commit_written(legs, &all).await {
            return Ok(Err(e));
        }
        for answer in &mut answers {
            // BEGIN's own answer.
            if let Some(at) = answer.iter().position(|(t, _)| *t == b'Z') {
                answer.drain(..=at);
            }
        }
        for answer in &mut answers {
            unit.client_part(answer);
        }
        unit.preamble(&mut self.to_client);
        match kind {
            ManyKind::Write => merge_answers(&answers, &mut self.to_client),
            _ => relay_answer(&answers[0], &mut self.to_client),
        }
        Ok(Ok(()))
    }

    /// Shard after shard, for statements that cannot run in a transaction
    /// block: a failure names the shards it failed on and those it did not.
    async fn each_shard_in_turn(
        &mut self,
        legs: &mut [Leg],
        unit: &Unit,
    ) -> Result<Result<(), ShardError>, SessionEnd> {
        let mut request = BytesMut::new();
        unit.request(&unit.sql, &mut request);
        let mut first_answer = None;
        let mut failed: Vec<(usize, Bytes)> = Vec::new();
        let mut done = Vec::new();
        for i in 0..legs.len() {
            let shard = legs[i].shard;
            let answer = match self.ask_all(&mut legs[i..=i], &request, 1).await? {
                Ok(mut a) => a.remove(0),
                Err(e) => return Ok(Err(e)),
            };
            match answer.iter().find(|(t, _)| *t == b'E') {
                Some((_, body)) => failed.push((shard, body.clone())),
                None => done.push(shard),
            }
            first_answer.get_or_insert(answer);
        }
        if failed.is_empty() {
            let mut answer = first_answer.unwrap_or_default();
            unit.client_part(&mut answer);
            unit.preamble(&mut self.to_client);
            relay_answer(&answer, &mut self.to_client);
            return Ok(Ok(()));
        }
        let fields = parse_error_fields(&failed[0].1).unwrap_or_default();
        let shards = |v: &[usize]| {
            v.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let failed_on: Vec<usize> = failed.iter().map(|f| f.0).collect();
        let message = format!(
            "pgrouter: failed on shard(s) {} ({}); succeeded on shard(s) {}",
            shards(&failed_on),
            fields.message,
            if done.is_empty() {
                "none".to_string()
            } else {
                shards(&done)
            }
        );
        let code: &'static str = super::known_code(&fields.code);
        Ok(Err(ShardError::router(code, message)))
    }

    /// Sends `request` to every leg and reads each one's answers up to its
    /// `readies`-th ReadyForQuery, concurrently.
    pub(super) async fn ask_all(
        &mut self,
        legs: &mut [Leg],
        request: &[u8],
        readies: usize,
    ) -> Result<Result<Vec<Answer>, ShardError>, SessionEnd> {
        let requests = vec![request; legs.len()];
        self.ask_each(legs, &requests, readies).await
    }

    /// Sends each leg its own request and reads each one's answers up to
    /// its `readies`-th ReadyForQuery, concurrently.
    pub(super) async fn ask_each(
        &mut self,
        legs: &mut [Leg],
        requests: &[&[u8]],
        readies: usize,
    ) -> Result<Result<Vec<Answer>, ShardError>, SessionEnd> {
        for (leg, request) in legs.iter_mut().zip(requests) {
            leg.ready = false;
            if let Err(e) = leg.held.conn.send(request).await {
                leg.ready = true;
                leg.held.conn.tx_status = b'E';
                return Ok(Err(ShardError::lost(leg.shard, &e)));
            }
        }
        let mut answers: Vec<Answer> = vec![Vec::new(); legs.len()];
        let mut seen = vec![0usize; legs.len()];
        let mut deadline = self.query_deadline();
        let mut cancelled = false;
        loop {
            for (i, leg) in legs.iter_mut().enumerate() {
                while !leg.ready {
                    let Some((tag, body)) = next_message(leg)? else {
                        break;
                    };
                    match tag {
                        b'S' => leg.held.conn.note_parameter_status(&body),
                        b'Z' => {
                            leg.held.conn.tx_status = body.first().copied().unwrap_or(b'I');
                            seen[i] += 1;
                            leg.ready = seen[i] == readies;
                        }
                        _ => {}
                    }
                    answers[i].push((tag, body));
                }
            }
            if legs.iter().all(|l| l.ready) {
                return Ok(Ok(answers));
            }
            let wanted: Vec<bool> = legs.iter().map(|l| !l.ready).collect();
            let filled = match deadline {
                None => fill_any(legs, &wanted).await,
                Some(at) => {
                    match crate::timer::timeout_at(at, fill_any(legs, &wanted)).await {
                        Ok(filled) => filled,
                        Err(_) if !cancelled => {
                            // `query_timeout_ms`: the statement is cancelled
                            // on every shard still running it, and their
                            // answers (57014) are read as any error's.
                            tracing::info!(
                                "query_timeout_ms reached: cancelling the statement on its shards"
                            );
                            cancel_and_wait(legs).await;
                            cancelled = true;
                            deadline = self.query_deadline();
                            continue;
                        }
                        Err(_) => {
                            // Neither the statement nor its cancel answered
                            // within another `query_timeout_ms`.
                            let shard = give_up_unfinished(legs);
                            return Ok(Err(ShardError::lost(
                            shard,
                            &"it answered neither the statement nor its cancel within query_timeout_ms",
                        )));
                        }
                    }
                }
            };
            if let Err(i) = filled {
                legs[i].ready = true;
                legs[i].held.conn.tx_status = b'E';
                let e = ShardError::lost(legs[i].shard, &"connection closed");
                cancel_unfinished(legs);
                return Ok(Err(e));
            }
        }
    }

    /// Ends a statement that wrote on `legs`: outside the client's
    /// transaction block the legs commit together (or all roll back on
    /// `failure`); inside it they stay open for the client's COMMIT.
    pub(super) async fn end_legs_statement(
        &mut self,
        legs: &mut [Leg],
        in_tx: bool,
        failure: Option<ShardError>,
    ) -> Result<(), ShardError> {
        match failure {
            Some(e) => {
                if !in_tx {
                    self.roll_back(legs).await;
                }
                Err(e)
            }
            None if in_tx => Ok(()),
            None => {
                let all: Vec<usize> = (0..legs.len()).collect();
                self.commit_written(legs, &all).await
            }
        }
    }

    /// Rolls back every leg still in a transaction block.
    pub(super) async fn roll_back(&mut self, legs: &mut [Leg]) {
        for leg in legs.iter_mut() {
            if leg.ready
                && leg.held.conn.tx_status != b'I'
                && !leg.cancelled
                && leg.held.conn.run_simple("ROLLBACK").await.is_err()
            {
                leg.held.conn.tx_status = b'E';
            }
        }
    }

    /// Commits the legs `which` (indexes into `legs`), all inside a
    /// transaction block that went well: with `two_phase_commit` and more
    /// than one of them through two-phase commit, else one after the other.
    pub(super) async fn commit_written(
        &mut self,
        legs: &mut [Leg],
        which: &[usize],
    ) -> Result<(), ShardError> {
        if which.len() > 1 && self.rt.config.sharding.two_phase_commit {
            let coordinator = self
                .rt
                .twophase
                .coordinator(&self.database)
                .map_err(|e| {
                    ShardError::router(
                        super::known_code(&e.sqlstate),
                        format!("pgrouter: {}", e.message),
                    )
                })?
                .clone();
            let owner = match &self.policy.jwt {
                Some(jwt) => jwt.role.clone(),
                None => legs[which[0]]
                    .held
                    .conn
                    .params
                    .get("session_authorization")
                    .cloned()
                    .unwrap_or_else(|| self.pools_user.clone()),
            };
            let mut parts: Vec<(usize, &mut crate::server::ServerConn)> = legs
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| which.contains(i))
                .map(|(_, l)| (l.shard, &mut *l.held.conn))
                .collect();
            return coordinator
                .commit(&mut parts, &owner)
                .await
                .map_err(|e| ShardError::router(super::known_code(&e.sqlstate), e.message));
        }
        for (n, &i) in which.iter().enumerate() {
            let leg = &mut legs[i];
            match leg.held.conn.run_simple("COMMIT").await {
                Ok(Ok(())) => {}
                Ok(Err(fields)) if n == 0 => {
                    return Err(ShardError::router(
                        super::known_code(&fields.code),
                        fields.message,
                    ))
                }
                Ok(Err(fields)) => {
                    tracing::error!(shard = leg.shard, error = %fields.message, "COMMIT failed after other shards committed");
                    return Err(ShardError::router(
                        "XX000",
                        format!(
                            "pgrouter: COMMIT failed on shard {} after earlier shards committed: {}",
                            leg.shard, fields.message
                        ),
                    ));
                }
                Err(e) => return Err(ShardError::lost(leg.shard, &e)),
            }
        }
        Ok(())
    }

    /// A statement on several legs of an open transaction: the same
    /// statement on each, answers summed or one shard's (DDL, reference
    /// tables). A failure leaves the transaction failed, as in PostgreSQL.
    pub(super) async fn write_with_legs_in_tx(
        &mut self,
        unit: &Unit,
        kind: ManyKind,
        legs: &mut [Leg],
    ) -> Result<(), ShardError> {
        if kind == ManyKind::Ddl {
            self.forget_schema();
        }
        let mut request = BytesMut::new();
        unit.request(&unit.sql, &mut request);
        let answers = self.ask_all(legs, &request, 1).await;
        if kind == ManyKind::Ddl {
            // Until the COMMIT, the DDL's locks make other clients' Parses
            // of its tables wait for the new schema.
            self.forget_schema();
        }
        let mut answers = match answers {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => return Err(e),
            Err(end) => return Err(ShardError::router("08006", format!("pgrouter: {end:?}"))),
        };
        if let Some(e) = answers
            .iter()
            .flat_map(|a| a.iter())
            .find(|(tag, _)| *tag == b'E')
            .map(|(_, body)| ShardError::Server(body.clone()))
        {
            return Err(e);
        }
        for answer in &mut answers {
            unit.client_part(answer);
        }
        unit.preamble(&mut self.to_client);
        match kind {
            ManyKind::Write => merge_answers(&answers, &mut self.to_client),
            _ => relay_answer(&answers[0], &mut self.to_client),
        }
        Ok(())
    }
}

/// One shard's answer as the client's (DDL and reference-table writes run
/// alike everywhere: one answer tells it).
fn relay_answer(answer: &Answer, out: &mut BytesMut) {
    for (tag, body) in answer {
        if !matches!(tag, b'Z' | b'S') {
            backend::put_message(out, *tag, |b| b.extend_from_slice(body));
        }
    }
}

/// Every shard's rows, statement by statement, under the first shard's
/// RowDescription, with counts summed (`UPDATE 7` = 3 + 4).
pub(super) fn merge_answers(answers: &[Answer], out: &mut BytesMut) {
    let results: Vec<Vec<&[(u8, Bytes)]>> = answers
        .iter()
        .map(|a| {
            a.split_inclusive(|(t, _)| matches!(t, b'C' | b'I'))
                .filter(|part| part.iter().any(|(t, _)| matches!(t, b'C' | b'I')))
                .collect()
        })
        .collect();
    let Some(first) = results.first() else { return };
    for (k, part) in first.iter().enumerate() {
        for (tag, body) in part.iter() {
            // The description (RowDescription, or NoData for a write
            // without RETURNING) and notices come from the first leg.
            if matches!(tag, b'T' | b'n' | b'N') {
                backend::put_message(out, *tag, |b| b.extend_from_slice(body));
            }
        }
        let mut total = 0u64;
        let mut head: Option<&[u8]> = None;
        for leg in &results {
            for (tag, body) in leg.get(k).map(|p| p.iter()).into_iter().flatten() {
                match tag {
                    b'D' => backend::put_message(out, b'D', |b| b.extend_from_slice(body)),
                    b'C' => {
                        let (h, n) = split_tag(body);
                        head.get_or_insert(h);
                        total += n.unwrap_or(0);
                    }
                    _ => {}
                }
            }
        }
        match head {
            Some(h) => put_tag(
                out,
                h,
                split_tag(part.last().map_or(&[][..], |p| &p.1))
                    .1
                    .map(|_| total),
            ),
            None => backend::put_message(out, b'I', |_| {}),
        }
    }
}
