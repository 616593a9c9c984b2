//! The JWKS key cache.
//!
//! Rules (SPEC §3/§5):
//! - The set is fetched at start-up; a failure there is logged, not fatal.
//! - A set older than `jwks_cache_ttl_s` is not trusted as is: the login
//!   that finds it expired waits for a refresh (bounded by the fetch
//!   timeout), so a key the issuer removed is refused as soon as the TTL is
//!   over. Only when that refresh fails (or the rate limit below allows
//!   none yet) is the login checked against the last good keys — a JWKS
//!   server that is down does not lock everybody out.
//! - A `kid` the set does not hold makes the login wait for a refresh too
//!   (unless the expired-set refresh just ran for this login).
//! - Every refresh attempt, whatever triggered it (unknown `kid`, expiry,
//!   retry after a failure), is at least `jwks_min_refresh_interval_s` after
//!   the previous one (the start-up fetch does not count): a client spraying
//!   random `kid`s cannot turn the router into a load generator against the
//!   identity provider.
//! - Single flight: fetches are serialised by an async mutex held across the
//!   fetch, and a login that waited on that mutex while another fetch
//!   completed uses that result instead of fetching again. A burst of logins
//!   needing a refresh (an unknown `kid`, or the first logins after the TTL)
//!   therefore causes one fetch.
//! - A failed fetch (network, HTTP status, bad JSON, no usable key) keeps the
//!   last good keys.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::Jwk;

use super::error::JwtError;
use super::fetch::Fetcher;
use super::keys::{self, VerifyKey};

/// One successfully fetched key set.
#[derive(Default)]
pub(super) struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    all: Vec<Arc<VerifyKey>>,
    /// None until the first successful fetch.
    fetched_at: Option<Instant>,
}

impl KeySet {
    /// The key for a token's `kid`. A token without `kid` may use the only
    /// key of a one-key set (common for small deployments); with several
    /// keys there is no safe choice.
    fn lookup(&self, kid: Option<&str>) -> Option<Arc<VerifyKey>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            None if self.all.len() == 1 => Some(self.all[0].clone()),
            None => None,
        }
    }
}

pub struct Jwks {
    url: String,
    fetcher: Fetcher,
    ttl: Duration,
    min_interval: Duration,
    /// Current keys; readers clone the Arc and never wait on a fetch.
    current: RwLock<Arc<KeySet>>,
    /// Held across a fetch: the single-flight lock.
    fetch_lock: tokio::sync::Mutex<()>,
    /// When the last refresh attempt started (for the rate limit; the
    /// start-up fetch does not count, so a key rotated just after start-up
    /// is still found at once); readable without the async lock so logins
    /// can decide cheaply.
    last_attempt: Mutex<Option<Instant>>,
    /// Incremented when a fetch attempt completes (success or not).
    attempts_done: AtomicU64,
    last_error: Mutex<String>,
    ok: AtomicU64,
    failed: AtomicU64,
}

impl Jwks {
    /// Prepares the cache and performs the start-up fetch.
    pub async fn new(url: &str, ttl_s: u64, min_interval_s: u64) -> Result<Arc<Jwks>, String> {
        let jwks = Arc::new(Jwks {
            url: url.to_owned(),
            fetcher: Fetcher::new(url)?,
            ttl: Duration::from_secs(ttl_s),
            min_interval: Duration::from_secs(min_interval_s),
            current: RwLock::new(Arc::new(KeySet::default())),
            fetch_lock: tokio::sync::Mutex::new(()),
            last_attempt: Mutex::new(None),
            attempts_done: AtomicU64::new(0),
            last_error: Mutex::new("not fetched yet".into()),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        {
            let _guard = jwks.fetch_lock.lock().await;
            jwks.fetch().await;
        }
        Ok(jwks)
    }

    /// (successful, failed) fetches so far.
    pub fn fetches(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// The key for a token's `kid`, refreshing the set when needed: first
    /// when it is older than the TTL, else when it lacks the `kid`.
    pub async fn key_for(&self, kid: Option<&str>) -> Result<Arc<VerifyKey>, JwtError> {
        let mut set = self.snapshot();
        let expired = self.is_stale(&set);
        if expired {
            tracing::debug!(url = %self.url, "cached JWKS older than jwks_cache_ttl_s; refreshing");
            set = self.refresh(|s| !self.is_stale(s)).await;
        }
        if let Some(key) = set.lookup(kid) {
            return Ok(key);
        }
        if !expired {
            // The refresh of an expired set was this login's one chance; a
            // second fetch right after it would find nothing new.
            tracing::debug!(url = %self.url, kid = ?kid, "JWT kid not in the cached JWKS; refreshing");
            set = self.refresh(|s| s.lookup(kid).is_some()).await;
        }
        match set.lookup(kid) {
            Some(key) => Ok(key),
            None if set.fetched_at.is_none() => {
                Err(JwtError::KeysUnavailable(lock(&self.last_error).clone()))
            }
            None => Err(JwtError::UnknownKey),
        }
    }

    /// The cached key for `kid`, without fetching (see
    /// [`super::JwtVerifier::recheck`]): `Ok(None)` when no set was ever
    /// fetched, `UnknownKey` when the fetched set lacks it.
    pub fn cached_key(&self, kid: Option<&str>) -> Result<Option<Arc<VerifyKey>>, JwtError> {
        let set = self.snapshot();
        if set.fetched_at.is_none() {
            return Ok(None);
        }
        set.lookup(kid).map(Some).ok_or(JwtError::UnknownKey)
    }

    fn snapshot(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn is_stale(&self, set: &KeySet) -> bool {
        set.fetched_at.is_none_or(|t| t.elapsed() >= self.ttl)
    }

    /// Whether the rate limit allows a fetch attempt now.
    fn may_fetch(&self) -> bool {
        lock(&self.last_attempt).is_none_or(|t| t.elapsed() >= self.min_interval)
    }

    /// Single-flight, rate-limited refresh. `satisfied` says whether the set
    /// already serves the caller (e.g. holds its `kid`); returns the set in
    /// force afterwards.
    async fn refresh(&self, satisfied: impl Fn(&KeySet) -> bool) -> Arc<KeySet> {
        let seen = self.attempts_done.load(Ordering::Acquire);
        let _guard = self.fetch_lock.lock().await;
        let set = self.snapshot();
        if satisfied(&set) || self.attempts_done.load(Ordering::Acquire) != seen {
            // Someone else fetched while we waited: share their result.
            return set;
        }
        if !self.may_fetch() {
            tracing::debug!(url = %self.url, "JWKS refresh skipped: jwks_min_refresh_interval_s not yet elapsed");
            return set;
        }
        *lock(&self.last_attempt) = Some(Instant::now());
        self.fetch().await;
        self.snapshot()
    }

    /// One fetch attempt; the caller holds `fetch_lock`.
    async fn fetch(&self) {
        let result = match self.fetcher.get().await {
            Ok(body) => parse_set(&body),
            Err(e) => Err(e),
        };
        match result {
            Ok(set) => {
                tracing::info!(url = %self.url, keys = set.all.len(), "fetched JWKS");
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let have_keys = self.snapshot().fetched_at.is_some();
                tracing::warn!(
                    url = %self.url,
                    error = %e,
                    "JWKS fetch failed; {}",
                    if have_keys { "keeping the last good keys" } else { "no keys yet: JWT logins fail until a fetch succeeds" }
                );
                *lock(&self.last_error) = e;
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.attempts_done.fetch_add(1, Ordering::Release);
    }
}

/// Parses a JWKS document. Keys that cannot be used are skipped (and
/// logged); a set with no usable key at all is an error, so a broken
/// document never replaces good keys.
pub(super) fn parse_set(body: &[u8]) -> Result<KeySet, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let entries = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("not a JWKS: no \"keys\" array")?;
    let mut set = KeySet {
        fetched_at: Some(Instant::now()),
        ..KeySet::default()
    };
    for entry in entries {
        let kid = entry.get("kid").and_then(|k| k.as_str()).unwrap_or("");
        let key = serde_json::from_value::<Jwk>(entry.clone())
            .map_err(|e| e.to_string())
            .and_then(|jwk| keys::from_jwk(&jwk));
        match key {
            Ok(key) => {
                let key = Arc::new(key);
                if let Some(kid) = &key.kid {
                    // The first key with a given kid wins, like a lookup in
                    // document order would.
                    set.by_kid.entry(kid.clone()).or_insert_with(|| key.clone());
                }
                set.all.push(key);
            }
            Err(why) => tracing::debug!(kid, why, "skipping JWKS key"),
        }
    }
    if set.all.is_empty() {
        return Err(format!(
            "no usable signature key among {} keys",
            entries.len()
        ));
    }
    Ok(set)
}

/// Locks a std mutex, ignoring poisoning (the data are plain values).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
