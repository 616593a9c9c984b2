//! What a reload read, as one hash: both files and every file they name
//! (TLS certificate and key, `server_tls_ca`, the `[jwt]` public key, the
//! `[jit]` CA bundle).
//!
//! Why: the file watcher fires after an edit that SIGHUP or the admin
//! RELOAD has already applied (the PgBouncer habit: edit, then SIGHUP).
//! Its reload then finds "no changes" and would replace the message of the
//! reload that did the work, which SHOW CONFIG shows as
//! `last_reload_message`. The watcher reloads only when something a reload
//! reads differs from what the last reload read. The named files are part
//! of it so that certificates renewed in a watched directory (a Kubernetes
//! Secret swapping `..data`) are still picked up.

use std::hash::{Hash, Hasher};
use std::path::Path;

use pgrouter_config::Config;

/// The hash of the files a reload would read now; `config` names the TLS
/// and key files (the running configuration: a new name is a change of
/// router.toml, seen anyway).
pub fn of_files(router: &Path, users: &Path, config: &Config) -> u64 {
    let g = &config.general;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let named = [
        g.tls_certificate.as_str(),
        g.tls_private_key.as_str(),
        g.server_tls_ca.as_str(),
        config
            .jwt
            .as_ref()
            .map_or("", |j| j.public_key_file.as_str()),
        config.jit.as_ref().map_or("", |j| j.api_ca.as_str()),
    ];
    let files = [router, users]
        .into_iter()
        .chain(named.iter().filter(|n| !n.is_empty()).map(Path::new));
    for path in files {
        path.hash(&mut h);
        match std::fs::read(path) {
            Ok(bytes) => bytes.hash(&mut h),
            // Unreadable: its error is part of what a reload would see.
            Err(e) => e.kind().to_string().hash(&mut h),
        }
    }
    h.finish()
}
