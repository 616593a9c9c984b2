use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{CancelTarget, MAX_SERVER_MESSAGE};
use crate::net::tls::{ServerTlsError, ServerTlsPolicy};
use crate::net::ServerStream;
use crate::protocol::backend::{parse_error_fields, parse_parameter_status, ErrorFields};
use crate::protocol::{frontend, next_frame_within, ProtocolError};

/// Where and as whom to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTarget {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    /// Plain password for SCRAM, md5 or cleartext; `None` for trust.
    pub password: Option<String>,
    /// For users with no users.toml entry (auth_query) or logged in with a
    /// JIT token: what their clients' logins let the router present instead
    /// of `password` (see [`crate::auth::pass_through`]).
    pub pass_through: Option<Arc<crate::auth::pass_through::CredentialSlot>>,
    /// `server_tls` and `server_tls_ca`.
    pub tls: ServerTlsPolicy,
}

impl ServerTarget {
    /// `host:port`, or the socket file's path for a Unix-domain socket.
    pub fn addr(&self) -> String {
        match self.unix_socket() {
            Some(path) => path,
            None => format!("{}:{}", self.host, self.port),
        }
    }

    /// A `host` that is an absolute path names the directory of the server's
    /// Unix-domain socket, as in libpq and PgBouncer: the socket file is
    /// `<host>/.s.PGSQL.<port>`. On the same machine it costs the server and
    /// the router less per message than TCP over loopback.
    pub fn unix_socket(&self) -> Option<String> {
        self.host
            .starts_with('/')
            .then(|| format!("{}/.s.PGSQL.{}", self.host.trim_end_matches('/'), self.port))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("server connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("server connection timed out")]
    Timeout,
    #[error("server TLS: {0}")]
    Tls(#[from] ServerTlsError),
    #[error("server authentication failed: {0}")]
    Auth(String),
    /// PostgreSQL refused us with its own error (e.g. database does not exist).
    #[error("{}", .0.message)]
    Postgres(ErrorFields),
    #[error("server protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("server closed the connection")]
    Closed,
    /// `max_db_connections` or `max_user_connections` left no room in time.
    #[error("no server connection available: {0} reached its connection cap")]
    CapReached(String),
}

impl ServerError {
    /// The server answered the login and refused it for this user or
    /// database (a class 28 authentication failure, 3D000 no such database,
    /// a role that does not exist, the router's own check of the server's
    /// authentication): other users' logins may well succeed, so the
    /// server is not to be left out for everyone, only this pool backed
    /// off. Refusals that concern the whole server (class 57: starting up,
    /// shutting down; class 53: too many connections; class 08) are not
    /// such refusals, and neither is a failure to connect.
    pub fn is_login_refusal(&self) -> bool {
        match self {
            ServerError::Postgres(f) => {
                !(f.code.starts_with("57") || f.code.starts_with("53") || f.code.starts_with("08"))
            }
            ServerError::Auth(_) => true,
            _ => false,
        }
    }
}

/// A logged-in server connection that is idle between uses.
pub struct ServerConn {
    pub id: u64,
    pub stream: ServerStream,
    /// Bytes read from the server but not yet handled.
    pub read_buf: BytesMut,
    /// Messages queued for the server by the session holding it, sent in
    /// one write at its next flush (`client::lease::Held::flush`). Kept
    /// with the connection: its capacity serves every client that uses it.
    pub write_buf: BytesMut,
    /// The client encoding of the session holding it, when the router
    /// transcodes it: the strings of every client message written here go
    /// back from the router's UTF-8 into it (`crate::encoding`).
    pub text_codec: Option<&'static crate::encoding::ClientCodec>,
    pub addr: Arc<str>,
    pub backend_pid: i32,
    pub backend_secret: i32,
    /// Last known value of each run-time parameter: reported by the server
    /// (ParameterStatus) or set by the router. Diffed against a client's wishes.
    pub params: HashMap<String, String>,
    /// The last value the server reported of each reported parameter
    /// (ParameterStatus). PostgreSQL reports a change only at ReadyForQuery
    /// and only when the value differs from the last one it reported, so
    /// after a pipelined settings replay (see `client/replay.rs`) this, not
    /// `params`, is what the server has for a SET that brought no report.
    pub reported: HashMap<String, String>,
    /// Parameters the router SET that the server does not report; a later
    /// client that did not ask for them gets them RESET.
    pub router_set: HashMap<String, String>,
    pub created: crate::clock::Tick,
    pub last_used: crate::clock::Tick,
    /// Transaction status of the last ReadyForQuery: b'I', b'T' or b'E'.
    pub tx_status: u8,
    /// Statements the router prepared here for its clients.
    pub statements: super::ServerStatements,
    /// The client parameter fingerprint this server was last synced to;
    /// 0 when anything may have changed since (see `ClientParams::fingerprint`).
    pub params_fingerprint: u64,
    /// The parameters reported at login: what RESET ALL returns to.
    pub startup_params: HashMap<String, String>,
    /// A client changed settings in a way the router cannot follow (a
    /// `set_config()` call): RESET ALL before the next client.
    pub needs_reset: bool,
    /// A client ran a function that is not one of PostgreSQL's own (see
    /// `Analysis::calls_unknown_function`): it may have left any session
    /// state (settings, temporary objects, locks, LISTEN) that the router
    /// cannot see. `DISCARD ALL` before the next statement on it.
    pub needs_discard: bool,
    /// The client that used this connection last (its id) and whether it
    /// wrote: an INSERT may have called `nextval` through a column default,
    /// leaving `currval`/`lastval` for the next client to read, so another
    /// client gets the connection after `DISCARD SEQUENCES`.
    pub last_client: u64,
    pub wrote: bool,
    /// `DISCARD SEQUENCES` is owed before the next statement on this
    /// connection (its client changed after writes). Kept on the
    /// connection, not the lease, so that a client that leaves before
    /// sending a statement passes the debt on.
    pub discard_due: bool,
    /// Shares of `max_db_connections` / `max_user_connections` this
    /// connection holds; given back when it is dropped.
    pub permits: Vec<crate::pool::CapPermit>,
    /// The pool's caps epoch `permits` were matched to (`pool/pool.rs`).
    pub caps_epoch: u64,
    /// `SO_RCVLOWAT` raised while a fan-out streams from here
    /// (`net/low_water.rs`); lowered before anyone else reads.
    pub low_water: crate::net::low_water::LowWater,
}

impl ServerConn {
    pub fn cancel_target(&self) -> CancelTarget {
        CancelTarget {
            addr: self.addr.clone(),
            pid: self.backend_pid,
            secret: self.backend_secret,
        }
    }

    /// The codec of the `client_encoding` this connection reports, when the
    /// router transcodes it: the encoding it reads the next message in.
    pub fn client_codec(&self) -> Option<&'static crate::encoding::ClientCodec> {
        crate::encoding::codec_named(self.params.get("client_encoding")?)
    }

    /// Writes `bytes` to the server, after whatever is queued in
    /// `write_buf` (sent with it and cleared).
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), ServerError> {
        if let Some(codec) = self.text_codec {
            self.write_buf.extend_from_slice(bytes);
            crate::encoding::encode_messages(codec, &mut self.write_buf);
            let sent = self.stream.write_all(&self.write_buf).await;
            self.write_buf.clear();
            sent?;
            return Ok(());
        }
        if self.write_buf.is_empty() {
            self.stream.write_all(bytes).await?;
            return Ok(());
        }
        // What was queued for this connection (e.g. a client's Flush before
        // the session took it as a shard leg) goes first, in order.
        self.write_buf.extend_from_slice(bytes);
        let sent = self.stream.write_all(&self.write_buf).await;
        self.write_buf.clear();
        sent?;
        Ok(())
    }

    /// Reads one whole message: (tag, body).
    pub async fn read_message(&mut self) -> Result<(u8, Bytes), ServerError> {
        loop {
            if let Some(frame) = next_frame_within(
                &self.read_buf,
                MAX_SERVER_MESSAGE,
                "the server message limit",
            )? {
                let msg = self.read_buf.split_to(frame.total_len).freeze();
                return Ok((frame.tag, msg.slice(5..)));
            }
            if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                return Err(ServerError::Closed);
            }
        }
    }

    /// Records what a ParameterStatus message says.
    pub fn note_parameter_status(&mut self, body: &[u8]) {
        if let Ok((name, value)) = parse_parameter_status(body) {
            self.reported.insert(name.to_string(), value.to_string());
            match self.params.get_mut(name) {
                Some(v) if v == value => {}
                Some(v) => *v = value.to_string(),
                None => {
                    self.params.insert(name.to_string(), value.to_string());
                }
            }
        }
    }

    /// Runs a simple query the router needs for itself (rollback, reset,
    /// health check) and reads up to its ReadyForQuery. Errors from PostgreSQL
    /// are returned; the connection is then still usable.
    pub async fn run_simple(&mut self, sql: &str) -> Result<Result<(), ErrorFields>, ServerError> {
        let mut out = BytesMut::new();
        frontend::query(&mut out, sql);
        self.send(&out).await?;
        self.read_until_ready().await
    }

    /// Reads and drops messages up to ReadyForQuery, keeping parameter
    /// changes and the first error.
    pub async fn read_until_ready(&mut self) -> Result<Result<(), ErrorFields>, ServerError> {
        let mut result = Ok(());
        loop {
            let (tag, body) = self.read_message().await?;
            match tag {
                b'Z' => {
                    self.tx_status = body.first().copied().unwrap_or(b'I');
                    return Ok(result);
                }
                b'S' => self.note_parameter_status(&body),
                b'E' if result.is_ok() => result = Err(parse_error_fields(&body)?),
                _ => {}
            }
        }
    }

    /// Forgets everything set on this connection, for after RESET ALL.
    pub fn forget_session_state(&mut self) {
        self.params = self.startup_params.clone();
        self.router_set.clear();
        self.params_fingerprint = 0;
        self.needs_reset = false;
    }

    /// Says goodbye politely; errors do not matter, the socket closes anyway.
    pub async fn terminate(mut self) {
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        let _ =
            crate::timer::timeout(Duration::from_millis(200), self.stream.write_all(&out)).await;
    }
}

impl ServerConn {
    /// Runs a query and returns its rows as text (NULL as None). For the
    /// router's own checks, not for client traffic.
    pub async fn query_rows(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, ServerError> {
        let mut out = BytesMut::new();
        frontend::query(&mut out, sql);
        self.request_rows(&out).await
    }

    /// Like [`Self::query_rows`] for a request already written (a simple
    /// Query, or Parse/Bind/Execute/Sync with text results).
    pub async fn request_rows(
        &mut self,
        request: &[u8],
    ) -> Result<Vec<Vec<Option<String>>>, ServerError> {
        self.send(request).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (tag, body) = self.read_message().await?;
            match tag {
                b'D' => rows.push(parse_data_row(&body)?),
                b'E' => error = Some(parse_error_fields(&body)?),
                b'S' => self.note_parameter_status(&body),
                b'Z' => {
                    self.tx_status = body.first().copied().unwrap_or(b'I');
                    break;
                }
                _ => {}
            }
        }
        match error {
            Some(e) => Err(ServerError::Postgres(e)),
            None => Ok(rows),
        }
    }
}

fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, ProtocolError> {
    let mut r = crate::protocol::reader::Reader::new(body);
    let n = r.i16()?;
    let mut row = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = r.i32()?;
        if len < 0 {
            row.push(None);
        } else {
            row.push(Some(
                String::from_utf8_lossy(r.bytes(len as usize)?).into_owned(),
            ));
        }
    }
    Ok(row)
}
