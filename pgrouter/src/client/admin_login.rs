//! The admin console's door: `admin_user` with `admin_password` (SCRAM) on
//! the `admin_database`; then the console itself (see `crate::admin`).

use std::sync::Arc;

use bytes::BytesMut;

use super::error::SessionEnd;
use super::io::{send_fatal, write_all};
use super::login::{scram_exchange, Transport};
use crate::auth::StoredPassword;
use crate::net::ClientStream;
use crate::ops::Ops;
use crate::protocol::backend;
use crate::state::State;

/// Logs the admin in, then runs the console. The login (SCRAM included)
/// must end by `deadline` (`client_login_timeout_ms`) like any other
/// client's: a client stalling there would otherwise hold its connection
/// and its `max_clients` slot for ever.
pub async fn serve(
    mut stream: ClientStream,
    mut buf: BytesMut,
    state: Arc<State>,
    startup: Vec<(String, String)>,
    transport: Transport,
    deadline: std::time::Instant,
) {
    let logged_in = crate::timer::timeout_at(
        deadline,
        log_in(&mut stream, &mut buf, &state, &startup, &transport),
    )
    .await;
    match logged_in {
        Ok(true) => {}
        Ok(false) => return,
        Err(_) => {
            state.metrics.record_login("error");
            return send_fatal(&mut stream, "08P01", super::LOGIN_TIMED_OUT).await;
        }
    }
    let ops = Ops {
        state: state.clone(),
    };
    match crate::admin::run(&mut stream, buf, &ops).await {
        Ok(end) => tracing::info!(?end, "admin console session ended"),
        Err(e) => tracing::debug!(error = %e, "admin console i/o error"),
    }
}

/// Checks the admin's user and password and greets the client; false when
/// the login failed (the client has been told why) or the client left.
async fn log_in(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    state: &State,
    startup: &[(String, String)],
    transport: &Transport,
) -> bool {
    let user = startup
        .iter()
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let rt = state.rt();
    let g = &rt.config.general;
    if user != g.admin_user {
        tracing::warn!(user, peer = %transport.peer, "admin console login refused: not the admin user");
        state.metrics.record_login("unknown_user");
        send_fatal(
            stream,
            "28000",
            &format!("role \"{user}\" may not use the admin console"),
        )
        .await;
        return false;
    }
    let stored = StoredPassword::parse(&g.admin_password);
    match scram_exchange(stream, buf, transport, &stored).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(user, peer = %transport.peer, "admin console login failed");
            state.metrics.record_login("bad_password");
            send_fatal(
                stream,
                "28P01",
                &format!("password authentication failed for user \"{user}\""),
            )
            .await;
            return false;
        }
        Err(SessionEnd::Fatal { sqlstate, message }) => {
            send_fatal(stream, sqlstate, &message).await;
            return false;
        }
        Err(_) => return false,
    }
    state.metrics.record_login("ok");
    tracing::info!(user, peer = %transport.peer, "admin console login");
    let mut out = BytesMut::new();
    backend::authentication_ok(&mut out);
    for (k, v) in [
        (
            "server_version",
            concat!("15.0 (pgrouter ", env!("CARGO_PKG_VERSION"), ")"),
        ),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    ] {
        backend::parameter_status(&mut out, k, v);
    }
    backend::backend_key_data(&mut out, 0, 0);
    backend::ready_for_query(&mut out, b'I');
    write_all(stream, &out).await.is_ok()
}
