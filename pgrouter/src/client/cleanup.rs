//! What happens to a server when its client leaves while holding it.
//!
//! A server comes back to the pool only in a known-clean state: outside any
//! transaction, nothing unread, and (session mode) reset with DISCARD ALL. A
//! server that is still running something is cancelled and closed instead,
//! which also makes PostgreSQL roll back and release the client's locks.

use std::time::Duration;

use pgrouter_config::PoolMode;

use super::cancel::send_cancel;
use crate::pool::{Pool, PooledConn};

/// How long a rollback or reset may take before the server is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

/// `quiet`: every request the client sent has been answered. `pinned`: the
/// client left session state on the server (temp tables, locks, LISTEN, ...;
/// see `pinning.rs`), which `DISCARD ALL` removes before another client
/// gets the connection.
pub fn release_after_session(mut server: PooledConn, quiet: bool, mode: PoolMode, pinned: bool) {
    if quiet && server.tx_status == b'I' && mode == PoolMode::Transaction && !pinned {
        Pool::checkin(server);
        return;
    }
    tokio::spawn(async move {
        if !quiet {
            // Something may be running: stop it, then close the connection.
            let target = server.cancel_target();
            drop(server);
            let _ = crate::timer::timeout(RESET_TIMEOUT, send_cancel(&target)).await;
            return;
        }
        let reset = async {
            if server.tx_status != b'I' {
                server.run_simple("ROLLBACK").await.ok()?.ok()?;
            }
            if mode == PoolMode::Session || pinned {
                server.run_simple("DISCARD ALL").await.ok()?.ok()?;
                // DISCARD ALL resets the session authorization, and the
                // role with it; RESET ROLE makes sure of the latter.
                server.run_simple("RESET ROLE").await.ok()?.ok()?;
                server.statements.clear();
                server.needs_discard = false;
                // Every setting is back at the server's login value, and no
                // client's parameters are in force any more (the next one's
                // must be sent even if they look like the last one's).
                server.forget_session_state();
            }
            Some(())
        };
        match crate::timer::timeout(RESET_TIMEOUT, reset).await {
            Ok(Some(())) if server.tx_status == b'I' => Pool::checkin(server),
            _ => drop(server),
        }
    });
}
