//! "Did you mean" hints for unknown keys. A typo in a config key is the most
//! common config mistake and otherwise silently falls back to a default.

/// Known keys of every table, so a key put in the wrong table can be pointed
/// to the right one (e.g. `pool_size` in `[general]` belongs in `[[users]]`).
pub(crate) const TABLES: &[(&str, &[&str])] = &[
    ("[general] in router.toml", crate::keys::GENERAL),
    ("[jwt] in router.toml", crate::keys::JWT),
    ("[[databases]] in router.toml", crate::keys::DATABASES),
    (
        "[[sharded_tables]] in router.toml",
        crate::keys::SHARDED_TABLES,
    ),
    (
        "[auth_query] in router.toml",
        crate::login_checks::AUTH_QUERY_KEYS,
    ),
    ("[jit] in router.toml", crate::login_checks::JIT_KEYS),
    (
        "[[reference_tables]] in router.toml",
        crate::sharding::REFERENCE_TABLES,
    ),
    ("[[users]] in users.toml", crate::keys::USERS),
    ("router.toml (top level)", crate::keys::ROUTER_TOP),
    ("users.toml (top level)", crate::keys::USERS_TOP),
];

/// Message for `key`, which is not one of `known` (the keys of `here`, e.g. "[general]").
/// A key that exists verbatim in another table was most likely put in the
/// wrong place, so that is said first; otherwise the nearest known key.
pub(crate) fn unknown_key(key: &str, known: &[&str], here: &str) -> String {
    let mut msg = format!("unknown key \"{key}\"");
    if let Some((table, _)) = TABLES
        .iter()
        .find(|(table, keys)| !table.starts_with(here) && keys.contains(&key))
    {
        msg.push_str(&format!("; \"{key}\" belongs in {table}"));
        return msg;
    }
    if let Some(best) = closest(key, known) {
        msg.push_str(&format!("; did you mean \"{best}\"?"));
        return msg;
    }
    if known.len() <= 12 {
        msg.push_str(&format!("; {here} accepts: {}", known.join(", ")));
    }
    msg
}

/// The known key nearest to `key`, if near enough to be a plausible typo:
/// edit distance (ignoring case) of at most 2, or a quarter of the key's length.
pub(crate) fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let lower = key.to_ascii_lowercase();
    let limit = (key.chars().count() / 4).max(2);
    known
        .iter()
        .map(|k| (edit_distance(&lower, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance over chars (single-row dynamic programming).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let next = (row[j] + 1).min(row[j + 1] + 1).min(diag + cost);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance() {
        assert_eq!(edit_distance("pool_sise", "pool_size"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn suggestions() {
        assert_eq!(closest("pool_sise", crate::keys::USERS), Some("pool_size"));
        assert_eq!(closest("Listen", crate::keys::GENERAL), Some("listen"));
        assert_eq!(closest("zzzzzzzz", crate::keys::GENERAL), None);
        let m = unknown_key("pool_size", crate::keys::GENERAL, "[general]");
        assert!(m.contains("belongs in [[users]]"), "{m}");
        let m = unknown_key("xyz", crate::keys::DATABASES, "[[databases]]");
        assert!(m.contains("accepts: name, host"), "{m}");
    }
}
