//! The analysis cache: a statement's analysis is computed once and then
//! costs a hash lookup.
//!
//! One bounded, sharded [`quick_cache`] map (no global lock: readers of
//! different shards never meet, readers of one shard share a read lock)
//! holds two kinds of keys:
//! - the exact text, for drivers that send the same text again (prepared
//!   statements, `$1` parameters);
//! - the [`normalize_key`] of the text, for drivers that inline literals;
//!   only analyses that do not depend on a literal are stored there.

use crate::analysis::Analysis;
use crate::analyze::analyze;
use crate::normalize::normalize_key;
use quick_cache::{sync::Cache, Equivalent, Weighter};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes of key text that count as one unit of capacity.
const UNIT: usize = 4096;

/// A cache of analyses, shared by all client sessions (`Send + Sync`).
///
/// Bounded by `capacity` entries: a statement of up to 4 KiB is one entry,
/// a longer one counts one per started 4 KiB, so a flood of huge one-off
/// statements cannot hold much memory. A statement cached under both its
/// text and its normalized key takes two entries. Eviction is quick_cache's
/// CLOCK-Pro-like policy, which keeps frequently used statements over
/// one-off ones.
pub struct AnalysisCache {
    map: Option<Cache<Key, Arc<Analysis>, KeyWeight>>,
    write_functions: Vec<String>,
    /// Counted for nearly every statement: one counter per thread stripe
    /// (see [`HitCounter`]).
    hits: HitCounter,
    misses: AtomicU64,
}

/// A counter every worker thread adds to: each thread adds to its own
/// stripe, on cache lines of its own, so that two threads counting do not
/// pass the counter's cache line back and forth on every statement.
struct HitCounter {
    stripes: Box<[PaddedCount]>,
}

#[repr(align(128))]
#[derive(Default)]
struct PaddedCount(AtomicU64);

static NEXT_THREAD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
thread_local! {
    static STRIPE: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

impl HitCounter {
    fn new() -> HitCounter {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        HitCounter { stripes: (0..n).map(|_| PaddedCount::default()).collect() }
    }

    fn fetch_add(&self, n: u64, order: Ordering) {
        let k = STRIPE.try_with(|i| *i).unwrap_or(0) % self.stripes.len();
        self.stripes[k].0.fetch_add(n, order);
    }

    fn load(&self, order: Ordering) -> u64 {
        self.stripes.iter().map(|s| s.0.load(order)).fold(0, u64::wrapping_add)
    }
}

impl AnalysisCache {
    /// A cache for up to `capacity` statements (0 = no caching: every call
    /// analyses), with the configured extra write functions.
    pub fn new(capacity: usize, write_functions: Vec<String>) -> Self {
        let map = (capacity > 0).then(|| Cache::with_weighter(capacity, capacity as u64, KeyWeight));
        AnalysisCache { map, write_functions, hits: HitCounter::new(), misses: AtomicU64::new(0) }
    }

    /// The analysis of `sql`, from the cache when possible: first by exact
    /// text, then by literal-insensitive key; otherwise it is computed and
    /// stored (under the normalized key too when it does not depend on literals).
    pub fn analyze(&self, sql: &str) -> Arc<Analysis> {
        self.analyze_preferring(sql, &mut Lookup::default())
    }

    /// [`Self::analyze`] for a caller that keeps `order` between calls (one
    /// per client session): after a text was found by its normalized key,
    /// that key is tried first next time. A client that inlines literals
    /// sends a text never seen before with every statement, and its exact-text
    /// lookup would miss every time. Either order gives the same analysis.
    pub fn analyze_preferring(&self, sql: &str, order: &mut Lookup) -> Arc<Analysis> {
        let Some(map) = &self.map else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return Arc::new(analyze(sql, &self.write_functions));
        };
        let by_key = |key: &Option<String>| {
            let text = key.as_deref()?;
            map.get(&KeyRef { normalized: true, text })
        };
        let mut normalized = None;
        if *order == Lookup::NormalizedFirst {
            let key = normalize_key(sql);
            if let Some(found) = by_key(&key) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return found;
            }
            normalized = Some(key);
        }
        if let Some(found) = map.get(&KeyRef { normalized: false, text: sql }) {
            *order = Lookup::ExactFirst;
            self.hits.fetch_add(1, Ordering::Relaxed);
            return found;
        }
        let tried = normalized.is_some();
        let normalized = normalized.unwrap_or_else(|| normalize_key(sql));
        if !tried {
            if let Some(found) = by_key(&normalized) {
                // Not stored under this exact text: pgbench-style texts are
                // each seen once, and would only push useful entries out.
                *order = Lookup::NormalizedFirst;
                self.hits.fetch_add(1, Ordering::Relaxed);
                return found;
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let analysis = Arc::new(analyze(sql, &self.write_functions));
        if let (Some(n), false) = (normalized, analysis.literal_sensitive) {
            map.insert(Key { normalized: true, text: n.into_boxed_str() }, analysis.clone());
        }
        map.insert(Key { normalized: false, text: sql.into() }, analysis.clone());
        analysis
    }

    /// Counts a lookup the caller answered from its own memo of this cache's
    /// answer (the router remembers a session's last statement), so the
    /// hit counter still counts every repeated statement.
    pub fn note_hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Lookups answered from the cache (for `pgrouter_parse_cache_hits_total`).
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Lookups that had to parse (for `pgrouter_parse_cache_misses_total`).
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Entries held now (exact texts and normalized keys).
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }

    /// Nothing cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for AnalysisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnalysisCache")
            .field("len", &self.len())
            .field("hits", &self.hits())
            .field("misses", &self.misses())
            .finish()
    }
}

/// Which key [`AnalysisCache::analyze_preferring`] tries first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Lookup {
    /// The exact text (drivers that send the same text again).
    #[default]
    ExactFirst,
    /// The normalized key (drivers that inline literals).
    NormalizedFirst,
}

/// A stored key. Exact texts and normalized keys live in one map but never
/// match each other, whatever their text.
#[derive(PartialEq, Eq)]
struct Key {
    normalized: bool,
    text: Box<str>,
}

/// The borrowed form used for lookups, so a lookup allocates nothing.
struct KeyRef<'a> {
    normalized: bool,
    text: &'a str,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        KeyRef { normalized: self.normalized, text: &self.text }.hash(state)
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u8(self.normalized as u8);
        state.write(self.text.as_bytes());
    }
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.normalized == key.normalized && *self.text == *key.text
    }
}

#[derive(Clone)]
struct KeyWeight;

impl Weighter<Key, Arc<Analysis>> for KeyWeight {
    fn weight(&self, key: &Key, _: &Arc<Analysis>) -> u64 {
        (1 + key.text.len() / UNIT) as u64
    }
}
