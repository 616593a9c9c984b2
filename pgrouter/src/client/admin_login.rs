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

pub async fn serve(
    mut stream: ClientStream,
    mut buf: BytesMut,
    state: Arc<State>,
    startup: Vec<(String, String)>,
    transport: Transport,
) {
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
        return send_fatal(
            &mut stream,
            "28000",
            &format!("role \"{user}\" may not use the admin console"),
        )
        .await;
    }
    let stored = StoredPassword::parse(&g.admin_password);
    match scram_exchange(&mut stream, &mut buf, &stored).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(user, peer = %transport.peer, "admin console login failed");
            state.metrics.record_login("bad_password");
            return send_fatal(
                &mut stream,
                "28P01",
                &format!("password authentication failed for user \"{user}\""),
            )
            .await;
        }
        Err(SessionEnd::Fatal { sqlstate, message }) => {
            return send_fatal(&mut stream, sqlstate, &message).await
        }
        Err(_) => return,
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
    if write_all(&mut stream, &out).await.is_err() {
        return;
    }
    let ops = Ops {
        state: state.clone(),
    };
    match crate::admin::run(&mut stream, buf, &ops).await {
        Ok(end) => tracing::info!(?end, "admin console session ended"),
        Err(e) => tracing::debug!(error = %e, "admin console i/o error"),
    }
}
