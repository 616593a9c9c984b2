//! `COPY table FROM STDIN` into a sharded table: every shard's primary
//! runs the COPY in a transaction block of its own; the client's rows are
//! split by their shard key as they stream in (`fanout::copy_split`: text,
//! CSV with quotes, embedded newlines and HEADER, binary), each shard gets
//! its rows, and at CopyDone the shards commit together (two-phase commit)
//! with `COPY n` the total — or all roll back. Inside the client's
//! transaction block the COPY runs on the transaction's legs instead and
//! commits (or fails) with the transaction.

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use super::held::Leg;
use super::legs::cancel_targets;
use super::unit::Unit;
use super::ShardError;
use crate::client::error::SessionEnd;
use crate::client::session::Session;
use crate::fanout::copy_lines;
use crate::fanout::copy_options::{copy_options, key_column};
use crate::fanout::copy_split::CopySplitter;
use crate::protocol::{backend, frontend, next_frame};
use crate::router::Role;

impl Session {
    pub(super) async fn copy_in_on_shards(
        &mut self,
        unit: &Unit,
        shards: &[usize],
    ) -> Result<(), ShardError> {
        let mut splitter = self.copy_splitter(unit)?;
        let mut legs = self.take_legs(shards, Role::Primary).await?;
        self.cancel.slot.set_many(cancel_targets(&legs));
        let result = match self.copy_in(unit, &mut legs, &mut splitter, false).await {
            Ok(r) => r,
            Err(end) => {
                abandon(&mut legs);
                self.give_back(legs);
                return Err(ShardError::router("08006", format!("pgrouter: {end:?}")));
            }
        };
        self.cancel.slot.set(None);
        self.give_back(legs);
        result
    }

    /// The splitter for this COPY: its options, the key's field, the
    /// placement of its table.
    fn copy_splitter(&self, unit: &Unit) -> Result<CopySplitter, ShardError> {
        let map = self
            .shard_map
            .as_ref()
            .ok_or_else(|| ShardError::router("XX000", "pgrouter: not a sharded database"))?;
        let err =
            |e: crate::fanout::copy_options::CopyError| ShardError::router(e.sqlstate, e.message);
        let mut info = copy_options(&unit.sql).map_err(err)?;
        if info.encoding.is_none() {
            info.encoding = self.params.get("client_encoding").map(str::to_string);
        }
        let relation = pgrouter_parser::shard::Relation {
            schema: info.schema.clone(),
            name: info.table.clone(),
            alias: None,
        };
        let table = map.relation(&relation).ok_or_else(|| {
            ShardError::router(
                "0A000",
                format!("pgrouter: \"{}\" is not a sharded table", info.table),
            )
        })?;
        let learnt = map.known_columns(&relation);
        let key = key_column(
            &info,
            &table.column,
            learnt.as_deref().map(|v| v.as_slice()),
        )
        .map_err(err)?;
        let mut splitter = CopySplitter::for_placement(&info, key, table.placement.clone());
        if let Some(columns) = learnt.as_deref() {
            splitter = splitter.with_columns(&info, columns);
        }
        Ok(splitter)
    }

    /// COPY FROM STDIN on the legs of the client's transaction block:
    /// nothing committed here, a failure fails the transaction.
    pub(super) async fn copy_in_with_legs_in_tx(
        &mut self,
        unit: &Unit,
        legs: &mut [Leg],
    ) -> Result<(), ShardError> {
        let mut splitter = self.copy_splitter(unit)?;
        match self.copy_in(unit, legs, &mut splitter, true).await {
            Ok(r) => r,
            Err(end) => {
                abandon(legs);
                Err(ShardError::router("08006", format!("pgrouter: {end:?}")))
            }
        }
    }

    async fn copy_in(
        &mut self,
        unit: &Unit,
        legs: &mut [Leg],
        splitter: &mut CopySplitter,
        in_tx: bool,
    ) -> Result<Result<(), ShardError>, SessionEnd> {
        // Every shard in a transaction block, waiting for data.
        let mut request = BytesMut::new();
        if !in_tx {
            frontend::query(&mut request, "BEGIN");
        }
        frontend::query(&mut request, &unit.sql);
        let body = match start_copy(legs, &request).await {
            Ok(body) => body,
            Err(e) => {
                if !in_tx {
                    self.roll_back(legs).await;
                }
                return Ok(Err(e));
            }
        };
        backend::put_message(&mut self.to_client, b'G', |b| b.extend_from_slice(&body));
        self.flush_client().await?;
        // The client's data, split as it comes.
        let failure = loop {
            let frame = match next_frame(&self.cbuf, self.max_message)? {
                Some(f) => f,
                None => {
                    let n = self
                        .client
                        .read_buf(&mut self.cbuf)
                        .await
                        .map_err(SessionEnd::ClientIo)?;
                    if n == 0 {
                        return Err(SessionEnd::ClientGone);
                    }
                    self.note_client_read(n);
                    continue;
                }
            };
            let msg = self.cbuf.split_to(frame.total_len).freeze();
            let body = &msg[5..];
            frontend::check_message(frame.tag, body)?;
            match frame.tag {
                b'd' => {
                    if let Err(e) = splitter.feed(body) {
                        break Some(split_error(e));
                    }
                }
                b'c' => {
                    if let Err(e) = splitter.finish() {
                        break Some(split_error(e));
                    }
                    self.send_rows(legs, splitter).await?;
                    break None;
                }
                b'f' => {
                    let reason = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(body))
                        .into_owned();
                    break Some(ShardError::router(
                        "57014",
                        format!("COPY from stdin failed: {reason}"),
                    ));
                }
                b'H' | b'S' => {}
                other => {
                    break Some(ShardError::router(
                        "08P01",
                        format!("unexpected message type 0x{other:02X} during COPY from stdin"),
                    ))
                }
            }
            if splitter.buffered() > 64 * 1024 {
                self.send_rows(legs, splitter).await?;
            }
        };
        // End the COPY everywhere: done, or failed.
        let mut end = BytesMut::new();
        match &failure {
            None => backend::put_message(&mut end, b'c', |_| {}),
            Some(_) => backend::put_message(&mut end, b'f', |b| {
                b.extend_from_slice(b"pgrouter: COPY failed\0");
            }),
        }
        let mut total = 0u64;
        let mut server_errors = Vec::new();
        for (i, leg) in legs.iter_mut().enumerate() {
            if leg.held.conn.send(&end).await.is_err() {
                leg.held.conn.tx_status = b'E';
                continue;
            }
            loop {
                match leg.held.conn.read_message().await {
                    Ok((b'C', body)) => total += super::split_tag(&body).1.unwrap_or(0),
                    Ok((b'E', body)) => server_errors.push((i, body)),
                    Ok((b'Z', body)) => {
                        leg.held.conn.tx_status = body.first().copied().unwrap_or(b'E');
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        leg.held.conn.tx_status = b'E';
                        break;
                    }
                }
            }
        }
        let failure = failure
            .or(first_in_clients_order(server_errors, splitter).map(ShardError::Server))
            .or_else(|| {
                legs.iter()
                    .any(|l| l.held.conn.tx_status != b'T')
                    .then(|| ShardError::router("08006", "pgrouter: a shard failed during COPY"))
            });
        if let Err(e) = self.end_legs_statement(legs, in_tx, failure).await {
            return Ok(Err(e));
        }
        backend::command_complete(&mut self.to_client, &format!("COPY {total}"));
        Ok(Ok(()))
    }

    /// Sends each shard the rows split for it so far.
    async fn send_rows(
        &mut self,
        legs: &mut [Leg],
        splitter: &mut CopySplitter,
    ) -> Result<(), SessionEnd> {
        for (i, leg) in legs.iter_mut().enumerate() {
            let rows = splitter.take(i);
            if rows.is_empty() {
                continue;
            }
            let mut out = BytesMut::with_capacity(rows.len() + 5);
            backend::put_message(&mut out, b'd', |b| b.extend_from_slice(&rows));
            if leg.held.conn.send(&out).await.is_err() {
                leg.held.conn.tx_status = b'E';
            }
        }
        Ok(())
    }
}

/// The client left (or broke the protocol) in the middle of the COPY: the
/// legs are still in COPY IN, waiting for data, so none may serve anyone
/// again. Marked so that giving them back closes them (PostgreSQL then
/// aborts the COPY and its transaction); checked in as they were, the next
/// client's first message landed in this COPY ("unexpected message type
/// during COPY from stdin").
fn abandon(legs: &mut [Leg]) {
    for leg in legs.iter_mut() {
        leg.ready = false;
        leg.cancelled = true;
        leg.held.conn.tx_status = b'E';
    }
}

/// Sends every leg the COPY (after a BEGIN outside a transaction) and
/// waits until each is ready for data: the CopyInResponse to relay, or
/// the first error — every leg then out of COPY again (a CopyFail ends
/// those that started) and its transaction block failed.
async fn start_copy(legs: &mut [Leg], request: &[u8]) -> Result<bytes::Bytes, ShardError> {
    for leg in legs.iter_mut() {
        leg.ready = false;
        if let Err(e) = leg.held.conn.send(request).await {
            leg.held.conn.tx_status = b'E';
            leg.cancelled = true; // closed at give-back
            return Err(ShardError::lost(leg.shard, &e));
        }
    }
    let mut response = None;
    let mut failure = None;
    for leg in legs.iter_mut() {
        loop {
            let (tag, body) = match leg.held.conn.read_message().await {
                Ok(m) => m,
                Err(e) => {
                    leg.held.conn.tx_status = b'E';
                    leg.cancelled = true;
                    failure.get_or_insert(ShardError::lost(leg.shard, &e));
                    break;
                }
            };
            match tag {
                b'G' => {
                    response.get_or_insert(body);
                    break;
                }
                b'E' => {
                    failure.get_or_insert(ShardError::Server(body));
                    if leg.held.conn.read_until_ready().await.is_err() {
                        leg.cancelled = true;
                    }
                    leg.ready = true;
                    break;
                }
                _ => {}
            }
        }
    }
    let Some(failure) = failure else {
        for leg in legs.iter_mut() {
            leg.ready = true;
        }
        return Ok(response.unwrap_or_default());
    };
    // The legs in COPY leave it with an error of their own.
    let mut fail = BytesMut::new();
    backend::put_message(&mut fail, b'f', |b| {
        b.extend_from_slice(b"pgrouter: COPY failed\0")
    });
    for leg in legs.iter_mut().filter(|l| !l.ready && !l.cancelled) {
        let ended = match leg.held.conn.send(&fail).await {
            Ok(()) => leg.held.conn.read_until_ready().await.is_ok(),
            Err(_) => false,
        };
        leg.cancelled |= !ended;
        leg.ready = true;
    }
    Err(failure)
}

/// Of the shards' COPY errors (by output index), the one PostgreSQL alone
/// would have reported: the one on the client's earliest line, with the
/// shard's line number turned into the client's. A line past the rows
/// logged keeps its number, said to be the shard's (`copy_lines.rs`).
fn first_in_clients_order(
    errors: Vec<(usize, bytes::Bytes)>,
    splitter: &CopySplitter,
) -> Option<bytes::Bytes> {
    let mut first: Option<(u64, bytes::Bytes)> = None;
    for (shard, body) in errors {
        let (rank, body) = match copy_lines::error_copy_line(&body) {
            Some(line) => match splitter.client_line(shard, line) {
                Some(client) => (
                    client,
                    copy_lines::renumber_error(&body, &client.to_string()),
                ),
                None => (
                    u64::MAX - 1,
                    copy_lines::renumber_error(
                        &body,
                        &format!("{line} (of the rows pgrouter sent to shard {shard})"),
                    ),
                ),
            },
            None => (u64::MAX, body),
        };
        if first.as_ref().is_none_or(|(r, _)| rank < *r) {
            first = Some((rank, body));
        }
    }
    first.map(|(_, body)| body)
}

fn split_error(e: crate::fanout::copy_split::CopySplitError) -> ShardError {
    let mut message = e.message;
    if let Some(context) = e.context {
        message.push_str(&format!(" (CONTEXT: {context})"));
    }
    ShardError::router(e.sqlstate, message)
}
