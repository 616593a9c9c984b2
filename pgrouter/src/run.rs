//! The router's life cycle: start listening, keep pools in shape, shut down
//! gracefully on SIGINT/SIGTERM (the other signals are in `signals.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pgrouter_config::Config;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::state::State;

/// How often idle connections are expired and `min_pool_size` is topped up.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);

pub async fn run(config: Config) -> anyhow::Result<()> {
    // Before anything is bound: from the moment the port accepts
    // connections, a SIGHUP or SIGUSR1 must not end the process.
    let signals =
        crate::signals::Signals::install().context("cannot watch SIGHUP/SIGUSR1/SIGUSR2")?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let listen = config.general.listen.clone();
    let jwt = match &config.jwt {
        Some(j) => Some(Arc::new(
            crate::auth::jwt::JwtVerifier::new(j.into())
                .await
                .map_err(|e| anyhow::anyhow!("{}", config.jwt_problem(e.key, e.message)))?,
        )),
        None => None,
    };
    if let Some(a) = &config.auth_query {
        crate::auth::auth_query::check_offline(a)
            .map_err(|e| anyhow::anyhow!("{}", config.auth_query_problem(e)))?;
    }
    if let Some(j) = &config.jit {
        crate::auth::jit::check_offline(j)
            .map_err(|(key, e)| anyhow::anyhow!("{}", config.jit_problem(key, e)))?;
        crate::auth::jit::JitClient::new(j).map_err(|e| anyhow::anyhow!("[jit]: {e}"))?;
    }
    let metrics_listen = config.general.metrics_listen.clone();
    let hot_reload = config.general.hot_reload;
    let metrics = Arc::new(crate::metrics::Metrics::new());
    // The TLS files, checked as `pgrouter check` and reload check them.
    let tls_problems = crate::net::tls::file_problems(&config);
    if !tls_problems.is_empty() {
        let lines: Vec<String> = tls_problems.iter().map(|p| p.to_string()).collect();
        anyhow::bail!("{}", lines.join("\n"));
    }
    let tls = crate::net::tls::ClientTlsSetup::from_general(&config.general)
        .map_err(anyhow::Error::msg)?;
    let state = State::new(
        config,
        jwt,
        metrics.clone(),
        crate::net::tls::ClientTlsHandle::new(tls),
        shutdown_rx,
    );
    let findings = crate::preflight::run(&state.rt()).await;
    if !findings.errors.is_empty() {
        anyhow::bail!(
            "preflight found {} problem(s) with the [jwt] set-up (see above)",
            findings.errors.len()
        );
    }
    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    if !metrics_listen.is_empty() {
        let l = crate::metrics::bind(&metrics_listen)
            .await
            .with_context(|| format!("cannot listen on metrics_listen {metrics_listen}"))?;
        let source = Arc::new(crate::ops::Ops {
            state: state.clone(),
        });
        tokio::spawn(crate::metrics::serve_listener(
            l,
            metrics.clone(),
            source,
            state.shutdown.clone(),
        ));
        tracing::info!(%metrics_listen, "Prometheus metrics at /metrics");
    }
    learn_auto_roles(&state).await;
    tracing::info!(%listen, "pgrouter is accepting clients");

    tokio::spawn(maintain_pools(state.clone()));
    tokio::spawn(crate::worker_balance::run(state.clone()));
    tokio::spawn(check_health(state.clone()));
    tokio::spawn(crate::twophase::run_recovery(state.clone()));
    tokio::spawn(signals.serve(state.clone()));
    if hot_reload {
        tokio::spawn(crate::reload::watch_files(state.clone()));
    }
    let accept = tokio::spawn(crate::net::serve_with_tls(
        listener,
        state.clone(),
        state.tls.clone(),
    ));

    tokio::select! {
        _ = wait_for_shutdown_signal() => {}
        _ = state.shutdown_request.notified() => tracing::info!("SHUTDOWN from the admin console"),
    }
    // Read now, not at start: a reload may have changed it (it is not one
    // of the keys that need a restart).
    let shutdown_timeout = Duration::from_millis(state.rt().config.general.shutdown_timeout_ms);
    tracing::info!(
        timeout_ms = shutdown_timeout.as_millis() as u64,
        "shutting down: waiting for open transactions"
    );
    let _ = shutdown_tx.send(true);
    state.session_shutdown.fire();
    let _ = accept.await;
    let deadline = Instant::now() + shutdown_timeout;
    while state.clients.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        crate::timer::sleep(Duration::from_millis(20)).await;
    }
    let left = state.clients.load(Ordering::Relaxed);
    if left > 0 {
        tracing::warn!(
            clients = left,
            "shutdown timeout reached; closing remaining clients"
        );
    }
    for pool in state.rt().cluster.all_pools() {
        pool.close_idle();
    }
    crate::timer::sleep(Duration::from_millis(50)).await;
    tracing::info!("pgrouter stopped");
    Ok(())
}

async fn maintain_pools(state: Arc<State>) {
    // Every MAINTENANCE_INTERVAL from the start; a pass that overran
    // delays the next instead of running several at once.
    let mut next = Instant::now();
    loop {
        crate::timer::sleep_until(next).await;
        next = (next + MAINTENANCE_INTERVAL).max(Instant::now());
        if *state.shutdown.borrow() {
            return;
        }
        let rt = state.rt();
        for pool in rt.cluster.all_pools() {
            pool.maintain().await;
        }
        drop_unused_learnt_pools(&state, &rt);
    }
}

/// Drops the pools of `[auth_query]` / `[jit]` users nobody uses any more
/// (see `pool/learnt_sweep.rs`).
fn drop_unused_learnt_pools(state: &State, rt: &crate::state::Runtime) {
    let sessions = || {
        state
            .registry
            .all()
            .iter()
            .map(|c| (c.pools_user.clone(), c.database.clone()))
            .collect()
    };
    let keep_for = crate::pool::learnt_keep_for(&rt.config.general);
    let gone = rt
        .cluster
        .drop_unused_learnt(sessions, &state.metrics, Instant::now(), keep_for);
    for (user, database) in gone {
        tracing::info!(%user, %database, "dropped the unused pools of a learnt user");
    }
}

/// Checks the `role = "auto"` servers once before the first client comes
/// (see [`crate::pool::check_auto_roles`]).
async fn learn_auto_roles(state: &Arc<State>) {
    let rt = state.rt();
    let timeout = Duration::from_millis(rt.config.general.connect_timeout_ms);
    crate::pool::check_auto_roles(rt.cluster.health.iter(), timeout).await;
}

/// Checks every server of the runtime in force every
/// `healthcheck_interval_ms` (the interval is re-read after a reload).
async fn check_health(state: Arc<State>) {
    loop {
        let rt = state.rt();
        let interval = Duration::from_millis(rt.config.general.healthcheck_interval_ms.max(1));
        let timeout = Duration::from_millis(rt.config.general.connect_timeout_ms);
        crate::timer::sleep(interval).await;
        if *state.shutdown.borrow() {
            return;
        }
        for health in &rt.cluster.health {
            tokio::spawn(health.clone().check_once(timeout));
        }
    }
}

async fn wait_for_shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
