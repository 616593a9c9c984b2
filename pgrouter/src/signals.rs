//! The operator's signals besides SIGINT/SIGTERM (those are in `run.rs`):
//! SIGHUP reloads; SIGUSR1 and SIGUSR2 are PgBouncer's PAUSE and RESUME of
//! every database, so the scripts that drive a PgBouncer maintenance
//! window (`kill -USR1`, maintenance, `kill -USR2`) work unchanged.
//!
//! The handlers are installed by [`Signals::install`] before the listen
//! socket is bound. The default action of all three signals is to end the
//! process: a handler installed only once start-up has finished (after the
//! `role = "auto"` checks, say) left a window in which a reload or a pause
//! sent as soon as the port accepted connections killed the router and
//! every client with it.

use std::sync::Arc;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::admin::AdminContext;
use crate::ops::Ops;
use crate::state::State;

/// SIGHUP, SIGUSR1 and SIGUSR2, caught from the moment this exists.
pub struct Signals {
    hup: Signal,
    usr1: Signal,
    usr2: Signal,
}

impl Signals {
    /// Installs the handlers; call inside the runtime, before binding.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    /// Serves the signals for the life of the router.
    pub async fn serve(mut self, state: Arc<State>) {
        loop {
            tokio::select! {
                Some(()) = self.hup.recv() => {
                    let _ = crate::reload::reload(&state, "SIGHUP").await;
                }
                Some(()) = self.usr1.recv() => {
                    tracing::info!("SIGUSR1 received: pausing every database (as PAUSE)");
                    // In its own task: PAUSE waits for open transactions,
                    // and a SIGUSR2 meanwhile must still be heard.
                    let ops = Ops { state: state.clone() };
                    tokio::spawn(async move {
                        match ops.pause(None).await {
                            Ok(()) => tracing::info!("paused: open transactions finished"),
                            Err(e) => tracing::warn!("PAUSE (SIGUSR1): {e}"),
                        }
                    });
                }
                Some(()) = self.usr2.recv() => {
                    tracing::info!("SIGUSR2 received: resuming every database (as RESUME)");
                    let ops = Ops { state: state.clone() };
                    if let Err(e) = ops.resume(None) {
                        tracing::warn!("RESUME (SIGUSR2): {e}");
                    }
                }
                else => return,
            }
        }
    }
}
