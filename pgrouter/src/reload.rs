//! Hot reload: SIGHUP, the admin console's RELOAD, and (with `hot_reload`)
//! a change to either file.
//!
//! The new pair of files is fully validated and preflighted before anything
//! changes; a bad edit is logged with file, line and key, counted, and the
//! running configuration stays. A good edit is built into a new [`Runtime`]
//! that reuses every pool whose server and settings did not change (their
//! connections stay open; a size change is applied in place), then swapped
//! in atomically. Sessions move to it at their next transaction boundary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pgrouter_config::diff;
use pgrouter_parser::AnalysisCache;

use crate::auth::jwt::JwtVerifier;
use crate::pool::Cluster;
use crate::state::{Runtime, State};

mod fingerprint;

/// Reloads both files. `Ok` says what changed; `Err` why nothing did.
pub async fn reload(state: &Arc<State>, trigger: &str) -> Result<String, String> {
    let _one_at_a_time = state.reload_lock.lock().await;
    // Taken before reading: an edit made while this reload runs differs
    // from it, and the watcher's reload for that edit is not skipped.
    let files = fingerprint::of_files(&state.router_path, &state.users_path, &state.rt().config);
    let result = try_reload(state).await;
    *state.last_reload_files.lock() = Some(files);
    match &result {
        Ok(summary) => tracing::info!(trigger, %summary, "configuration reloaded"),
        Err(e) => tracing::error!(
            trigger,
            "configuration NOT reloaded; the running configuration stays:\n{e}"
        ),
    }
    state
        .metrics
        .record_reload(result.is_ok(), result.as_ref().unwrap_or_else(|e| e));
    result
}

async fn try_reload(state: &Arc<State>) -> Result<String, String> {
    let new = pgrouter_config::load(&state.router_path, &state.users_path).map_err(|problems| {
        problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let old = state.rt();
    let refused = pgrouter_config::shard_count_changes(&old.config, &new);
    if !refused.is_empty() {
        let lines: Vec<String> = refused.iter().map(|p| p.to_string()).collect();
        return Err(lines.join("\n"));
    }
    let changes = diff(&old.config, &new);
    if changes.is_empty()
        && !tls_files_present(&new)
        && !jwt_key_file_present(&new)
        && !jit_ca_present(&new)
    {
        *state.general_lines.lock() = new.general_lines.clone();
        // Statements are asked about again (the schema may have changed).
        old.parse_verdicts.clear();
        return Ok("no changes".into());
    }
    let jwt = match (&new.jwt, changes.jwt_changed) {
        (None, _) => None,
        // A PEM key is read again at every reload, as TLS files are: a key
        // rotated in place (same file name) takes effect without a restart.
        (Some(j), false) if j.public_key_file.is_empty() => old.jwt.clone(),
        (Some(j), _) => {
            Some(Arc::new(JwtVerifier::new(j.into()).await.map_err(|e| {
                new.jwt_problem(e.key, e.message).to_string()
            })?))
        }
    };
    if let Some(a) = &new.auth_query {
        crate::auth::auth_query::check_offline(a)
            .map_err(|e| new.auth_query_problem(e).to_string())?;
    }
    if let Some(j) = &new.jit {
        crate::auth::jit::check_offline(j)
            .map_err(|(key, e)| new.jit_problem(key, e).to_string())?;
    }
    let jit = match (&new.jit, changes.login_checks_changed) {
        (None, _) => None,
        // An `api_ca` is read again at every reload, as the TLS files are:
        // a CA bundle renewed under the same name takes effect.
        (Some(j), false) if j.api_ca.is_empty() => old.jit.clone(),
        (Some(j), _) => Some(Arc::new(
            crate::auth::jit::JitClient::new(j).map_err(|e| format!("[jit]: {e}"))?,
        )),
    };
    let cache = if new.general.write_functions == old.config.general.write_functions
        && new.general.parse_cache_size == old.config.general.parse_cache_size
    {
        old.cache.clone()
    } else {
        Arc::new(AnalysisCache::new(
            new.general.parse_cache_size,
            new.general.write_functions.clone(),
        ))
    };
    // Certificates are re-read on every reload (they may have been renewed
    // under the same names); a file that does not load is a bad edit,
    // reported as `pgrouter check` and start-up report it.
    let tls_problems = crate::net::tls::file_problems(&new);
    if !tls_problems.is_empty() {
        let lines: Vec<String> = tls_problems.iter().map(|p| p.to_string()).collect();
        return Err(lines.join("\n"));
    }
    let tls = crate::net::tls::ClientTlsSetup::from_general(&new.general)
        .map_err(|e| format!("TLS: {e}"))?;
    if new.general.server_tls == pgrouter_config::ServerTls::VerifyFull {
        crate::net::tls::forget_client_configs();
        crate::net::tls::client_config(&crate::net::tls::ServerTlsPolicy::from_general(
            &new.general,
        ))
        .map_err(|e| format!("server TLS: {e}"))?;
    }
    let cluster = Cluster::build(&new, Some(&old.cluster), &state.metrics);
    let shard_maps = crate::router::ShardMaps::build(&new);
    let twophase =
        crate::twophase::Coordinators::build(&new, &cluster, &state.metrics, Some(&old.twophase));
    let candidate = Runtime {
        shard_maps,
        twophase,
        config: Arc::new(new),
        cluster,
        jwt,
        jit,
        cache,
        parse_verdicts: Default::default(),
        generation: 0,
    };
    let findings = crate::preflight::run(&candidate).await;
    if !findings.errors.is_empty() {
        // One located problem a line, as the loader's problems are logged.
        return Err(findings.errors.join("\n"));
    }
    // Servers new to this config with `role = "auto"`: learn their roles
    // before clients are routed with it.
    let new_servers = candidate
        .cluster
        .health
        .iter()
        .filter(|h| !old.cluster.health.iter().any(|o| Arc::ptr_eq(o, h)));
    let timeout = std::time::Duration::from_millis(candidate.config.general.connect_timeout_ms);
    crate::pool::check_auto_roles(new_servers, timeout).await;
    let restart = pgrouter_config::restart_pending(&state.started, &candidate.config.general);
    if !restart.is_empty() {
        tracing::warn!(keys = ?restart, "these settings take effect only after a restart");
    }
    let summary = summary(&changes, &restart, &state.started);
    state.tls.replace(tls);
    *state.general_lines.lock() = candidate.config.general_lines.clone();
    state.install(candidate);
    Ok(summary)
}

/// What a reload did, for people: what changed, then the keys that keep
/// the value the process started with until a restart (a `listen` edited
/// in an earlier reload is still pending, so it is said again).
fn summary(
    changes: &pgrouter_config::ConfigDiff,
    restart: &[&str],
    started: &pgrouter_config::General,
) -> String {
    let mut out = changes.describe();
    if changes.is_empty() {
        out = "no settings changed; TLS certificate files re-read".to_string();
    }
    if restart.is_empty() {
        return out;
    }
    let empty = pgrouter_config::Sharding::default();
    let in_effect: Vec<String> = pgrouter_config::general_values(started, &empty)
        .into_iter()
        .filter(|(k, _)| restart.contains(k))
        .map(|(k, v)| format!("{k} (still {v:?})"))
        .collect();
    format!(
        "{out}. Not applied until the router restarts: {}",
        in_effect.join(", ")
    )
}

/// With `hot_reload = true`: watches the directories of both files and
/// reloads shortly after a change settles. Watching directories (not files)
/// sees editors that save by writing a new file and renaming it, and
/// Kubernetes ConfigMap volumes, which swap a `..data` symlink.
pub async fn watch_files(state: Arc<State>) {
    use notify::{EventKind, RecursiveMode, Watcher};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let names: Vec<PathBuf> = [&state.router_path, &state.users_path]
        .iter()
        .filter_map(|p| p.file_name().map(PathBuf::from))
        .collect();
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if !matches!(
            event.kind,
            EventKind::Modify(_) | EventKind::Create(_) | EventKind::Remove(_)
        ) {
            return;
        }
        let relevant = event.paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| names.iter().any(|w| w.as_os_str() == n) || n == "..data")
        });
        if relevant {
            let _ = tx.send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the configuration files; SIGHUP and RELOAD still work");
            return;
        }
    };
    let mut dirs: Vec<PathBuf> = [&state.router_path, &state.users_path]
        .iter()
        .map(|p| dir_of(p))
        .collect();
    dirs.dedup();
    for dir in &dirs {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::error!(dir = %dir.display(), error = %e, "cannot watch directory");
        }
    }
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            got = rx.recv() => if got.is_none() { return },
            _ = shutdown.changed() => return,
        }
        // Debounce: editors write in several steps.
        loop {
            match crate::timer::timeout(Duration::from_millis(300), rx.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        if files_unchanged(&state).await {
            tracing::debug!("configuration files unchanged since the last reload; not reloading");
            continue;
        }
        let _ = reload(&state, "file change").await;
    }
}

/// Nothing a reload reads differs from what the last one read (a SIGHUP or
/// RELOAD already applied the edit this event is about): see `fingerprint`.
async fn files_unchanged(state: &Arc<State>) -> bool {
    // Waits for a reload in progress, so that its result is the last one.
    let _one_at_a_time = state.reload_lock.lock().await;
    let last = *state.last_reload_files.lock();
    last == Some(fingerprint::of_files(
        &state.router_path,
        &state.users_path,
        &state.rt().config,
    ))
}

fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// With a certificate configured, a reload with no config change still
/// re-reads it (certificate renewal keeps the file names).
fn jwt_key_file_present(config: &pgrouter_config::Config) -> bool {
    config
        .jwt
        .as_ref()
        .is_some_and(|j| !j.public_key_file.is_empty())
}

fn jit_ca_present(config: &pgrouter_config::Config) -> bool {
    config.jit.as_ref().is_some_and(|j| !j.api_ca.is_empty())
}

fn tls_files_present(config: &pgrouter_config::Config) -> bool {
    !config.general.tls_certificate.is_empty() || !config.general.server_tls_ca.is_empty()
}
