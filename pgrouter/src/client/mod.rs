//! One client connection from first byte to last: the startup packet
//! (SSL/GSS refusal, cancel requests), login, then the session loop.
//!
//! A client message's way through the session, file by file:
//! 1. `session.rs` — `Session::serve` waits (`wait`) for the client or the
//!    held server and dispatches; `release_if_done` gives the server back.
//! 2. `outbound.rs` — `handle_client_messages` takes each message from the
//!    buffer. `flow.rs` says where the conversation stands (batch open,
//!    transaction, COPY, skipping to Sync, role guard pending); a Query's
//!    or Parse's analysis is made once per message (`analysis.rs`
//!    `message_analysis`, from the session's memo of recent texts,
//!    `memo.rs`, then the shared cache) and shared by the steps below. A
//!    Describe, Execute, Sync or Flush inside a batch already on the held
//!    server goes straight to `forward_front` (`continues_batch`).
//! 3. The steps, in order: `unreadable_text.rs` (text that is not UTF-8
//!    is refused as PostgreSQL refuses it), `policy_guard.rs`
//!    (`check_policy`: JWT role, read-only, the held shard),
//!    `local_answers.rs` (what the router answers itself), `routing.rs`
//!    (`route_learning_columns` → `route_batch`: which server or shards),
//!    `outbound.rs` (`attach`: checkout and the connection's hygiene),
//!    `policy_guard.rs` (the role guard), then `outbound.rs`
//!    `forward_message`, which queues the message on the held connection
//!    (`Session::to_server`) and records the answers owed in `expect.rs`;
//!    `lease.rs` `Held::flush` is the one write to the server.
//! 4. `inbound.rs` — `handle_server_messages` relays the server's answers,
//!    asking `expect.rs` which are the client's and which the router's own,
//!    and updates the flow, settings (`tracking.rs`) and pins (`pinning.rs`).
//!
//! Statements on several shards leave this path at `routing.rs` for
//! `shards/` (legs, fan-out reads, split writes, two-phase commit).

mod admin_login;
mod analysis;
pub mod cancel;
pub mod cancel_in_flight;
mod cleanup;
mod client_encoding;
mod current_server;
mod error;
mod expect;
mod explain_route;
mod explain_route_prepared;
mod flow;
mod inbound;
mod io;
mod kept;
mod lease;
#[cfg(test)]
mod lease_tests;
mod local_answers;
mod login;
mod login_checks;
mod memo;
mod moving;
mod outbound;
pub mod params;
pub mod pinning;
mod policy_guard;
pub mod prepared;
mod read_your_writes;
mod recovery;
pub mod registry;
mod replay;
mod replay_buffer;
mod routing;
mod sequence_discard;
mod session;
mod session_changes;
mod shard_execute;
mod shard_portals;
mod shard_routing;
mod shards;
pub mod shutdown;
mod sql_prepared;
mod temp_objects;
mod tracking;
mod unreadable_text;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;
use tracing::Instrument;

use self::error::SessionEnd;
use self::io::{send_fatal, write_all};
use self::params::ClientParams;
use self::session::{Session, SessionSetup};
use crate::net::tls::ClientTlsSetup;
use crate::net::ClientStream;
use crate::protocol::backend;
use crate::protocol::startup::{parse_startup, StartupPacket};
use crate::state::State;

/// The login deadline for `client_login_timeout_ms` (0 = never: a year).
/// One deadline covers everything before the session starts (startup
/// packet, TLS, authentication, remote token checks), so a client cannot
/// stretch its login by taking each step slowly, and stalled logins never
/// hold a `max_clients` slot for longer than this.
fn login_deadline(state: &State) -> std::time::Instant {
    let ms = state.rt().config.general.client_login_timeout_ms;
    let timeout = if ms == 0 {
        Duration::from_secs(365 * 24 * 3600)
    } else {
        Duration::from_millis(ms)
    };
    std::time::Instant::now() + timeout
}

const LOGIN_TIMED_OUT: &str = "pgrouter: login timed out (client_login_timeout_ms)";

/// Serves one accepted connection to its end. Never panics on client input.
pub async fn handle(
    mut stream: ClientStream,
    peer: std::net::SocketAddr,
    state: Arc<State>,
    id: u64,
    tls: ClientTlsSetup,
    seat: Option<crate::worker::Seat>,
) {
    let span = tracing::info_span!("client", id, %peer, user = tracing::field::Empty, database = tracing::field::Empty);
    async move {
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let deadline = login_deadline(&state);
        let startup = match crate::timer::timeout_at(
            deadline,
            read_startup(&mut stream, &mut buf, &state, &tls),
        )
        .await
        {
            Ok(Ok(Some(params))) => params,
            Ok(Ok(None)) => return, // a cancel request, already handled
            Ok(Err(end)) => return report_end(&mut stream, end, &state).await,
            Err(_) => return send_fatal(&mut stream, "08P01", LOGIN_TIMED_OUT).await,
        };
        let transport = login::Transport {
            peer,
            tls: stream.is_tls(),
            // The certificate of the set-up this connection's handshake used.
            end_point: tls.end_point.clone().filter(|_| stream.is_tls()),
        };
        let admin_db = state.rt().config.general.admin_database.clone();
        if startup
            .1
            .iter()
            .any(|(k, v)| k == "database" && *v == admin_db)
        {
            return admin_login::serve(stream, buf, state, startup.1, transport, deadline).await;
        }
        let make_session = match crate::timer::timeout_at(
            deadline,
            login(&mut stream, buf, &state, startup, transport, id),
        )
        .await
        {
            Ok(Ok(make_session)) => {
                state.metrics.record_login("ok");
                make_session
            }
            Ok(Err(end)) => {
                state.metrics.record_login(login_result(&end));
                return report_end(&mut stream, end, &state).await;
            }
            Err(_) => {
                state.metrics.record_login("error");
                return send_fatal(&mut stream, "08P01", LOGIN_TIMED_OUT).await;
            }
        };
        let mut session = make_session(stream);
        session.take_seat(seat);
        let (done, finished) = tokio::sync::oneshot::channel();
        tokio::spawn(moving::drive(session, done).in_current_span());
        let Ok((mut stream, end)) = finished.await else {
            return; // it panicked: its socket is closed with it
        };
        report_end(&mut stream, end, &state).await;
    }
    .instrument(span)
    .await
}

/// The login result label for a failed login (metrics).
fn login_result(end: &SessionEnd) -> &'static str {
    match end {
        // The server refused the router (its SQLSTATE passed on, 28P01
        // included): not the client's bad password.
        SessionEnd::Fatal { message, .. }
            if message.starts_with("pgrouter: server refused the connection") =>
        {
            "refused"
        }
        SessionEnd::Fatal {
            sqlstate: "28P01",
            message,
        } if message.starts_with("JWT")
            || message.starts_with("pgrouter: token not granted")
            || message.starts_with("pgrouter: JIT API") =>
        {
            "bad_token"
        }
        SessionEnd::Fatal {
            sqlstate: "28P01", ..
        } => "bad_password",
        // A role that exists but may not log in (its password was right).
        SessionEnd::Fatal {
            sqlstate: "28000",
            message,
        } if message.ends_with("is not permitted to log in") => "refused",
        // A SCRAM channel binding downgrade: the user exists or not, unknown.
        SessionEnd::Fatal {
            sqlstate: "28000",
            message,
        } if message.starts_with("SCRAM channel binding") => "refused",
        SessionEnd::Fatal {
            sqlstate: "28000", ..
        } => "unknown_user",
        SessionEnd::Fatal {
            sqlstate: "3D000", ..
        } => "unknown_database",
        SessionEnd::Fatal {
            sqlstate: "53300", ..
        } => "too_many_clients",
        SessionEnd::Fatal { .. } => "refused",
        _ => "error",
    }
}

async fn report_end(stream: &mut ClientStream, end: SessionEnd, state: &State) {
    match end {
        SessionEnd::Fatal { sqlstate, message } => {
            state.metrics.record_error(sqlstate);
            tracing::info!(sqlstate, %message, "closing client");
            send_fatal(stream, sqlstate, &message).await;
        }
        SessionEnd::ClientGone => tracing::debug!("client disconnected"),
        SessionEnd::ClientIo(e) => tracing::debug!(error = %e, "client i/o error"),
    }
}

/// Reads packets until a StartupMessage. An SSLRequest is answered 'S' and
/// TLS started (the stream becomes a TLS stream) when a certificate is
/// configured and `client_tls` allows it, 'N' otherwise; GSS encryption
/// requests get 'N'. Returns `None` after serving a CancelRequest.
async fn read_startup(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    state: &State,
    tls: &ClientTlsSetup,
) -> Result<Option<(i32, Vec<(String, String)>)>, SessionEnd> {
    loop {
        match parse_startup(buf)? {
            Some((packet, len)) => {
                buf.advance(len);
                match packet {
                    StartupPacket::Ssl if stream.is_tls() => {
                        return Err(SessionEnd::fatal(
                            "08P01",
                            "pgrouter: SSLRequest received after TLS was established",
                        ));
                    }
                    StartupPacket::Ssl => match tls.acceptor() {
                        Some(config) => {
                            // Bytes sent after the SSLRequest but before the
                            // handshake would be taken as coming over TLS:
                            // refuse them (CVE-2021-23214).
                            if !buf.is_empty() {
                                return Err(SessionEnd::fatal(
                                    "08P01",
                                    "received unencrypted data after SSL request",
                                ));
                            }
                            write_all(stream, b"S").await?;
                            if let Err(e) =
                                crate::net::tls::accept_client(stream, config.clone()).await
                            {
                                tracing::info!(error = %e, "TLS handshake with the client failed");
                                return Err(SessionEnd::ClientIo(e));
                            }
                        }
                        None => write_all(stream, b"N").await?,
                    },
                    StartupPacket::GssEnc => write_all(stream, b"N").await?,
                    StartupPacket::Cancel { pid, secret } => {
                        state.cancels.cancel(pid, secret).await;
                        return Ok(None);
                    }
                    StartupPacket::Startup { .. } if tls.required() && !stream.is_tls() => {
                        return Err(SessionEnd::fatal(
                            "28000",
                            "pgrouter: TLS is required (client_tls = require)",
                        ));
                    }
                    StartupPacket::Startup { minor, params } => return Ok(Some((minor, params))),
                }
            }
            None => match stream.read_buf(buf).await {
                Ok(0) => return Err(SessionEnd::ClientGone),
                Ok(_) => {}
                Err(e) => return Err(SessionEnd::ClientIo(e)),
            },
        }
    }
}

/// Authenticates the client and greets it like PostgreSQL does. Returns how
/// to make the session once it owns the stream (which `login` only borrows,
/// so that a failure can still be reported on it).
async fn login(
    stream: &mut ClientStream,
    mut buf: BytesMut,
    state: &Arc<State>,
    (minor, startup): (i32, Vec<(String, String)>),
    transport: login::Transport,
    id: u64,
) -> Result<impl FnOnce(ClientStream) -> Session, SessionEnd> {
    let param = |name: &str| {
        startup
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let user = param("user").ok_or_else(|| {
        SessionEnd::fatal(
            "28000",
            "no PostgreSQL user name specified in startup packet",
        )
    })?;
    let database = param("database")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    let span = tracing::Span::current();
    span.record("user", user.as_str());
    span.record("database", database.as_str());
    if param("replication").is_some_and(|v| v != "false" && v != "0" && v != "off") {
        return Err(SessionEnd::fatal(
            "08P01",
            "pgrouter does not support replication connections",
        ));
    }
    let max_clients = state.rt().config.general.max_clients as usize;
    if state.clients.load(Ordering::Relaxed) > max_clients {
        return Err(SessionEnd::fatal(
            "53300",
            "sorry, too many clients already",
        ));
    }

    let mut out = BytesMut::new();
    if minor > 0 {
        let unknown: Vec<String> = startup
            .iter()
            .filter(|(k, _)| k.starts_with("_pq_."))
            .map(|(k, _)| k.clone())
            .collect();
        backend::negotiate_protocol_version(&mut out, 0, &unknown);
        write_all(stream, &out).await?;
        out.clear();
    }

    let logged_in =
        login::authenticate(stream, &mut buf, state, &user, &database, &transport).await?;
    let primary = logged_in
        .pools
        .shards
        .first()
        .and_then(|s| {
            s.pick(
                crate::router::Role::Primary,
                logged_in.pools.balancing,
                &[],
                Default::default(),
            )
        })
        .map(|slot| slot.pool.clone());
    let defaults = match primary {
        Some(pool) => pool.default_params().await.map_err(|e| {
            let (code, message) = error::checkout_refusal(&e);
            SessionEnd::fatal(code, message)
        })?,
        None => {
            return Err(SessionEnd::fatal(
                "08006",
                "pgrouter: the database has no primary server",
            ))
        }
    };
    let mut params = ClientParams::from_startup(&defaults, &startup);
    if logged_in.policy.read_only {
        // Defence in depth: if a read-only session must use the primary (no
        // healthy replica), its transactions are read-only there too.
        params.pin("default_transaction_read_only", "on");
    }
    let cancel = state.cancels.register();

    backend::authentication_ok(&mut out);
    let mut names: Vec<&String> = params.values.keys().collect();
    names.sort();
    for name in names {
        if defaults.iter().any(|(k, _)| k == name) {
            backend::parameter_status(&mut out, name, &params.values[name]);
        }
    }
    backend::backend_key_data(&mut out, cancel.pid, cancel.secret);
    backend::ready_for_query(&mut out, b'I');
    write_all(stream, &out).await?;
    tracing::info!(
        method = logged_in.method,
        pools_user = %logged_in.pools_user,
        role = logged_in.policy.jwt.as_ref().map(|j| j.role.as_str()),
        read_only = logged_in.policy.read_only,
        "client logged in"
    );

    let registered = state.registry.register(registry::ClientInfo::new(
        id,
        user.clone(),
        logged_in.pools_user.clone(),
        database.clone(),
        transport.peer.to_string(),
        logged_in.method,
        logged_in.policy.read_only,
        // The role its statements run as: a token's role (SET ROLE on the
        // connect_as connections), else the role the pools log in as.
        Some(
            logged_in
                .policy
                .jwt
                .as_ref()
                .map_or_else(|| logged_in.pools.server_user.clone(), |j| j.role.clone()),
        ),
        transport.tls,
        params.get("application_name").unwrap_or("").to_string(),
    ));
    let setup = SessionSetup {
        cbuf: buf,
        pools: logged_in.pools,
        pools_user: logged_in.pools_user,
        database,
        params,
        cancel,
        rt: state.rt(),
        state: state.clone(),
        policy: logged_in.policy,
        registered,
    };
    Ok(move |stream| Session::new(stream, setup))
}
