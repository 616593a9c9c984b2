//! The TLS files router.toml names, checked the same way by `pgrouter
//! check`, at start-up and at every reload: a file that does not load is a
//! problem of the configuration, reported at `file:line: general.key`.
//! Checking them only where they are first used would let `check` pass and
//! the router start with a `server_tls_ca` that then fails every login.

use pgrouter_config::{Config, Problem, ServerTls};

use super::{build_client_config, load_server_config, read_certificates, ServerTlsPolicy};

/// Problems with `tls_certificate` / `tls_private_key` and `server_tls_ca`
/// (and, for `server_tls = "verify-full"` without one, the system trust
/// store). Empty when everything loads. Reads files only: no network.
pub fn file_problems(config: &Config) -> Vec<Problem> {
    let g = &config.general;
    let mut problems = Vec::new();
    if !g.tls_certificate.is_empty() && !g.tls_private_key.is_empty() {
        if let Err(e) = read_certificates("tls_certificate", &g.tls_certificate) {
            problems.push(config.general_problem("tls_certificate", e));
        } else if let Err(e) = load_server_config(&g.tls_certificate, &g.tls_private_key) {
            // The message names the file at fault first.
            let key = if e.starts_with("tls_private_key") {
                "tls_private_key"
            } else {
                "tls_certificate"
            };
            problems.push(config.general_problem(key, e));
        }
    }
    // A CA file named is checked even when server_tls does not verify
    // (yet): it is what a later switch to verify-full would use.
    if !g.server_tls_ca.is_empty() || g.server_tls == ServerTls::VerifyFull {
        let policy = ServerTlsPolicy {
            mode: ServerTls::VerifyFull,
            ca: g.server_tls_ca.clone(),
        };
        if let Err(e) = build_client_config(&policy) {
            let key = if g.server_tls_ca.is_empty() {
                "server_tls"
            } else {
                "server_tls_ca"
            };
            problems.push(config.general_problem(key, e));
        }
    }
    problems
}
