//! The per-client loop after login: read client messages, hold a server for
//! exactly as long as the pool mode says, relay answers, give the server back.
//!
//! Transaction mode keeps three counters ([`Flow`]) that decide when a server
//! may go back to its pool: only when every Sync/Query sent has been answered
//! by ReadyForQuery, no extended-protocol message waits for its Sync, and the
//! server says it is outside a transaction. A server is therefore never
//! returned inside a transaction or with results still unread.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use pgrouter_config::PoolMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::cancel::CancelKey;
use super::cleanup::release_after_session;
use super::error::SessionEnd;
use super::params::ClientParams;
use crate::net::ClientStream;
use crate::pool::{Pool, PoolError, PooledConn, UserPools};
use crate::protocol::backend::{self, parse_error_fields, parse_parameter_status, Severity};
use crate::protocol::next_frame;
use crate::server::ServerError;

/// Where a client is in its conversation with the server it holds.
#[derive(Debug, Default, Clone, Copy)]
pub struct Flow {
    /// Syncs, Queries and FunctionCalls sent whose ReadyForQuery is still due.
    pub pending: u32,
    /// An extended-protocol message was sent since the last Sync.
    pub unsynced: bool,
    /// ReadyForQuery messages of router-made queries still to be swallowed.
    pub swallow: u32,
    /// A checkout failed mid-batch: drop client messages up to the next Sync.
    skip_to_sync: bool,
}

impl Flow {
    /// Nothing is in flight: the server may be released or reset.
    pub fn is_quiet(&self) -> bool {
        self.pending == 0 && !self.unsynced && self.swallow == 0
    }
}

pub struct Session {
    pub client: ClientStream,
    pub cbuf: BytesMut,
    pub pools: Arc<UserPools>,
    pub mode: PoolMode,
    pub params: ClientParams,
    pub cancel: CancelKey,
    pub max_message: usize,
    pub idle_timeout: Option<Duration>,
    pub shutdown: watch::Receiver<bool>,
    server: Option<PooledConn>,
    flow: Flow,
    to_server: BytesMut,
    to_client: BytesMut,
    shutdown_seen: bool,
}

enum Event {
    Client(std::io::Result<usize>),
    Server(std::io::Result<usize>),
    Shutdown,
    IdleTimeout,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: ClientStream,
        cbuf: BytesMut,
        pools: Arc<UserPools>,
        mode: PoolMode,
        params: ClientParams,
        cancel: CancelKey,
        max_message: usize,
        idle_timeout: Option<Duration>,
        shutdown: watch::Receiver<bool>,
    ) -> Session {
        Session {
            client,
            cbuf,
            pools,
            mode,
            params,
            cancel,
            max_message,
            idle_timeout,
            shutdown,
            server: None,
            flow: Flow::default(),
            to_server: BytesMut::new(),
            to_client: BytesMut::new(),
            shutdown_seen: false,
        }
    }

    /// Runs until the client leaves or the router ends the session. The
    /// server held at that point is cleaned up and returned, or discarded.
    pub async fn run(mut self) -> (ClientStream, SessionEnd) {
        let end = self.serve().await;
        if let Some(server) = self.server.take() {
            self.cancel.slot.set(None);
            release_after_session(server, self.flow, self.mode);
        }
        (self.client, end)
    }

    async fn serve(&mut self) -> SessionEnd {
        loop {
            if let Err(end) = self.handle_client_messages().await {
                return end;
            }
            if self.server.is_none() && *self.shutdown.borrow() {
                return SessionEnd::fatal("57P01", "pgrouter is shutting down");
            }
            match self.wait().await {
                Event::Client(Ok(0)) => return SessionEnd::ClientGone,
                Event::Client(Ok(_)) => {}
                Event::Client(Err(e)) => return SessionEnd::ClientIo(e),
                Event::Server(Ok(0)) | Event::Server(Err(_)) => return self.server_lost(),
                Event::Server(Ok(_)) => {
                    if let Err(end) = self.handle_server_messages().await {
                        return end;
                    }
                }
                Event::Shutdown => self.shutdown_seen = true,
                Event::IdleTimeout => {
                    return SessionEnd::fatal("57P05", "terminating connection due to client_idle_timeout")
                }
            }
            if *self.shutdown.borrow() && self.at_boundary() {
                return SessionEnd::fatal("57P01", "pgrouter is shutting down");
            }
        }
    }

    /// Between transactions with nothing in flight.
    fn at_boundary(&self) -> bool {
        match &self.server {
            None => true,
            Some(s) => self.flow.is_quiet() && s.tx_status == b'I',
        }
    }

    async fn wait(&mut self) -> Event {
        let watch_shutdown = !self.shutdown_seen;
        match self.server.as_mut() {
            Some(server) => {
                let server = &mut **server;
                tokio::select! {
                    r = self.client.read_buf(&mut self.cbuf) => Event::Client(r),
                    r = server.stream.read_buf(&mut server.read_buf) => Event::Server(r),
                    _ = self.shutdown.changed(), if watch_shutdown => Event::Shutdown,
                }
            }
            None => {
                let idle = self.idle_timeout;
                tokio::select! {
                    r = self.client.read_buf(&mut self.cbuf) => Event::Client(r),
                    _ = self.shutdown.changed(), if watch_shutdown => Event::Shutdown,
                    _ = sleep_or_forever(idle) => Event::IdleTimeout,
                }
            }
        }
    }

    /// Forwards every complete client message in the buffer, checking out a
    /// server first when one is needed.
    async fn handle_client_messages(&mut self) -> Result<(), SessionEnd> {
        let mut ready = 0; // bytes at the front of cbuf that go to the server as they are
        loop {
            let Some(frame) = next_frame(self.cbuf.get(ready..).unwrap_or(&[]), self.max_message)? else { break };
            let tag = frame.tag;
            if tag == b'X' {
                self.flush_to_server(ready).await?;
                return Err(SessionEnd::ClientGone);
            }
            if self.server.is_none() {
                debug_assert_eq!(ready, 0);
                if self.flow.skip_to_sync || matches!(tag, b'S' | b'H' | b'd' | b'c' | b'f') {
                    self.cbuf.advance(frame.total_len);
                    self.answer_without_server(tag).await?;
                    continue;
                }
                if let Err(e) = self.attach_server().await {
                    self.cbuf.advance(frame.total_len);
                    self.refuse_after_checkout_error(tag, e).await?;
                    continue;
                }
            }
            match tag {
                b'Q' | b'F' => self.flow.pending += 1,
                b'S' => {
                    self.flow.pending += 1;
                    self.flow.unsynced = false;
                }
                b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => self.flow.unsynced = true,
                _ => {}
            }
            ready += frame.total_len;
        }
        self.flush_to_server(ready).await
    }

    /// A message that needs no server while none is held: Sync gets its
    /// ReadyForQuery from the router; Flush and stray COPY data are dropped.
    async fn answer_without_server(&mut self, tag: u8) -> Result<(), SessionEnd> {
        if tag == b'S' || (self.flow.skip_to_sync && tag == b'Q') {
            self.flow.skip_to_sync = false;
            let mut out = BytesMut::new();
            backend::ready_for_query(&mut out, b'I');
            self.write_client(&out).await?;
        }
        Ok(())
    }

    /// The client's statement cannot run: tell it why, in the protocol's
    /// terms (a simple query ends with ReadyForQuery; an extended batch is
    /// skipped up to its Sync, as PostgreSQL does after an error).
    async fn refuse_after_checkout_error(&mut self, tag: u8, e: PoolError) -> Result<(), SessionEnd> {
        let (code, message) = match &e {
            PoolError::CheckoutTimeout => ("57014", e.to_string()),
            PoolError::Connect(ServerError::Postgres(fields)) => {
                (leak_code(&fields.code), format!("pgrouter: server refused the connection: {}", fields.message))
            }
            PoolError::Connect(other) => ("08006", format!("pgrouter: could not connect to the server: {other}")),
        };
        tracing::warn!(error = %message, "could not get a server connection");
        let mut out = BytesMut::new();
        backend::error_response(&mut out, Severity::Error, code, &message);
        if tag == b'Q' || tag == b'F' {
            backend::ready_for_query(&mut out, b'I');
        } else {
            self.flow.skip_to_sync = true;
        }
        self.write_client(&out).await
    }

    async fn attach_server(&mut self) -> Result<(), PoolError> {
        let pool = self
            .pools
            .shards
            .first()
            .and_then(|s| s.primary.clone())
            .ok_or(PoolError::Connect(ServerError::Closed))?;
        let mut server = pool.checkout().await?;
        self.cancel.slot.set(Some(server.cancel_target()));
        if let Some(sql) = self.params.sync_sql(&server) {
            crate::protocol::frontend::query(&mut self.to_server, &sql);
            self.params.mark_synced(&mut server);
            self.flow.swallow += 1;
        }
        self.server = Some(server);
        Ok(())
    }

    /// Sends what the router queued plus the first `ready` bytes of the client buffer.
    async fn flush_to_server(&mut self, ready: usize) -> Result<(), SessionEnd> {
        if ready == 0 && self.to_server.is_empty() {
            return Ok(());
        }
        let Some(server) = self.server.as_mut() else {
            self.cbuf.advance(ready);
            return Ok(());
        };
        let result = if self.to_server.is_empty() {
            server.stream.write_all(&self.cbuf[..ready]).await
        } else {
            self.to_server.extend_from_slice(&self.cbuf[..ready]);
            let r = server.stream.write_all(&self.to_server).await;
            self.to_server.clear();
            r
        };
        self.cbuf.advance(ready);
        result.map_err(|_| self.server_lost())
    }

    /// Relays complete server messages to the client, swallowing the answers
    /// to the router's own queries, then releases the server if it may go.
    async fn handle_server_messages(&mut self) -> Result<(), SessionEnd> {
        let Some(server) = self.server.as_mut() else { return Ok(()) };
        let server = &mut **server;
        let mut forward = 0;
        if self.flow.swallow == 0 {
            // Fast path: everything goes to the client verbatim, in one write.
            while let Some(frame) =
                next_frame(server.read_buf.get(forward..).unwrap_or(&[]), crate::server::MAX_SERVER_MESSAGE)
                    .map_err(|_| SessionEnd::fatal("08P01", "pgrouter: malformed message from the server"))?
            {
                let body = frame.body(&server.read_buf[forward..]);
                match frame.tag {
                    b'Z' => {
                        self.flow.pending = self.flow.pending.saturating_sub(1);
                        server.tx_status = body.first().copied().unwrap_or(b'I');
                    }
                    b'S' => {
                        // Rare (a SET of a reported parameter): copying is fine.
                        let body = body.to_vec();
                        if let Ok((name, value)) = parse_parameter_status(&body) {
                            self.params.note(name, value);
                        }
                        server.note_parameter_status(&body);
                    }
                    _ => {}
                }
                forward += frame.total_len;
            }
            if forward > 0 {
                let result = self.client.write_all(&server.read_buf[..forward]).await;
                server.read_buf.advance(forward);
                result.map_err(SessionEnd::ClientIo)?;
            }
        } else {
            self.to_client.clear();
            while let Some(frame) = next_frame(&server.read_buf, crate::server::MAX_SERVER_MESSAGE)
                .map_err(|_| SessionEnd::fatal("08P01", "pgrouter: malformed message from the server"))?
            {
                let msg = server.read_buf.split_to(frame.total_len);
                let body = &msg[5..];
                let swallowing = self.flow.swallow > 0;
                match frame.tag {
                    b'Z' => {
                        server.tx_status = body.first().copied().unwrap_or(b'I');
                        if swallowing {
                            self.flow.swallow -= 1;
                        } else {
                            self.flow.pending = self.flow.pending.saturating_sub(1);
                        }
                    }
                    b'S' => {
                        if let Ok((name, value)) = parse_parameter_status(body) {
                            self.params.note(name, value);
                        }
                        server.note_parameter_status(body);
                    }
                    b'E' if swallowing => {
                        if let Ok(f) = parse_error_fields(body) {
                            tracing::warn!(code = %f.code, error = %f.message, "applying session parameters failed");
                        }
                    }
                    _ => {}
                }
                if !swallowing {
                    self.to_client.extend_from_slice(&msg);
                }
            }
            if !self.to_client.is_empty() {
                self.client.write_all(&self.to_client).await.map_err(SessionEnd::ClientIo)?;
            }
        }
        self.release_if_done();
        Ok(())
    }

    /// Transaction mode: the server goes back to its pool as soon as the
    /// client's transaction is over and nothing is in flight.
    fn release_if_done(&mut self) {
        if self.mode != PoolMode::Transaction || !self.at_boundary() {
            return;
        }
        if let Some(server) = self.server.take() {
            if !server.read_buf.is_empty() {
                self.server = Some(server);
                return;
            }
            self.cancel.slot.set(None);
            Pool::checkin(server);
        }
    }

    /// The server closed or failed under us: the client is told, the server
    /// is discarded (by dropping it), and nobody else is affected.
    fn server_lost(&mut self) -> SessionEnd {
        if let Some(server) = self.server.take() {
            tracing::warn!(server = %server.addr, pid = server.backend_pid, "server connection lost");
            drop(server);
        }
        self.cancel.slot.set(None);
        SessionEnd::fatal("08006", "pgrouter: the server connection was lost")
    }

    async fn write_client(&mut self, bytes: &[u8]) -> Result<(), SessionEnd> {
        self.client.write_all(bytes).await.map_err(SessionEnd::ClientIo)
    }
}

/// Keeps PostgreSQL's SQLSTATE for the client when it is one; a static str
/// is needed for the error writer, so only common login failures pass through.
fn leak_code(code: &str) -> &'static str {
    match code {
        "3D000" => "3D000",
        "28P01" => "28P01",
        "28000" => "28000",
        "53300" => "53300",
        "57P03" => "57P03",
        _ => "08006",
    }
}

async fn sleep_or_forever(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
