//! Start-up checks against the real servers: shard primaries that cannot
//! take two-phase commits (see `twophase::checks`), and the JWT set-up: the
//! `connect_as` user logs in to every primary, every role in `allowed_roles`
//! exists and is granted to it, and a superuser or INHERIT `connect_as` is
//! flagged. Problems are reported together, naming user, role and server.

use std::time::Duration;

use crate::client::params::quote_literal;
use crate::server::{ServerConn, ServerError};
use crate::state::Runtime;

/// What the preflight found: errors make the set-up unusable; warnings are
/// risky but allowed.
#[derive(Debug, Default)]
pub struct Findings {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Where a `[jwt]` finding is reported: `router.toml:<line>: jwt.<key>: ...`,
/// as every other bad edit is (SPEC: a bad edit is logged with file, line
/// and key), so a DBA sees which line the servers objected to.
fn at(rt: &Runtime, key: &str, message: String) -> String {
    rt.config.jwt_problem(key, message).to_string()
}

/// Checks `rt` (at start-up, or a reload's candidate before it is put in
/// force). An unreachable server is only a warning: it must not block a
/// start or a reload, and its sessions will see errors until it is back.
pub async fn run(rt: &Runtime) -> Findings {
    let mut findings = Findings::default();
    findings
        .warnings
        .extend(crate::twophase::prepared_transactions_findings(rt).await);
    check_jwt(rt, &mut findings).await;
    for w in &findings.warnings {
        tracing::warn!("preflight: {w}");
    }
    for e in &findings.errors {
        tracing::error!("preflight: {e}");
    }
    findings
}

/// The `[jwt]` set-up: `connect_as` logs in to every primary and holds
/// every allowed role.
async fn check_jwt(rt: &Runtime, findings: &mut Findings) {
    let Some(jwt) = &rt.config.jwt else {
        return;
    };
    let timeout = Duration::from_millis(rt.config.general.connect_timeout_ms);
    for db in rt.config.logical_databases() {
        if !jwt.databases.is_empty() && !jwt.databases.iter().any(|d| d == db) {
            continue;
        }
        let Some(pools) = rt.cluster.pools_for(&jwt.connect_as, db) else {
            findings.errors.push(at(
                rt,
                "connect_as",
                format!(
                    "\"{}\" has no users.toml entry for database \"{db}\"",
                    jwt.connect_as
                ),
            ));
            continue;
        };
        for shard in &pools.shards {
            for slot in shard.servers.iter().filter(|s| s.health.is_primary()) {
                let target = &slot.pool.target;
                let server = target.addr();
                let mut conn = match ServerConn::connect(target, timeout).await {
                    Ok(c) => c,
                    Err(e) => {
                        let problem = at(
                            rt,
                            "connect_as",
                            format!(
                                "connect_as \"{}\" cannot log in to {server} (database \"{}\"): {e}",
                                target.user, target.database
                            ),
                        );
                        // A server that answered and refused the login (a
                        // wrong password, a role that may not log in) is a
                        // set-up error; one that did not answer may be back.
                        match e {
                            ServerError::Auth(_) | ServerError::Postgres(_) => {
                                findings.errors.push(problem)
                            }
                            _ => findings.warnings.push(problem),
                        }
                        continue;
                    }
                };
                check_connect_as(
                    rt,
                    &mut conn,
                    &target.user,
                    &server,
                    &jwt.allowed_roles,
                    findings,
                )
                .await;
                conn.terminate().await;
            }
        }
    }
}

async fn check_connect_as(
    rt: &Runtime,
    conn: &mut ServerConn,
    user: &str,
    server: &str,
    roles: &[String],
    findings: &mut Findings,
) {
    match conn.query_rows("SELECT rolsuper::text, rolinherit::text FROM pg_catalog.pg_roles WHERE rolname = current_user").await {
        Ok(rows) => {
            if let Some(row) = rows.first() {
                if row.first().and_then(|v| v.as_deref()) == Some("true") {
                    findings.warnings.push(at(rt, "connect_as", format!(
                        "connect_as \"{user}\" is a superuser on {server}: a JWT session could regain superuser rights through a function that runs RESET ROLE"
                    )));
                }
                if row.get(1).and_then(|v| v.as_deref()) == Some("true") {
                    findings.warnings.push(at(rt, "connect_as", format!(
                        "connect_as \"{user}\" has INHERIT on {server}: it holds the privileges of every role granted to it; NOINHERIT is safer"
                    )));
                }
            }
        }
        Err(e) => findings.errors.push(at(rt, "connect_as", format!("cannot inspect connect_as \"{user}\" on {server}: {e}"))),
    }
    for role in roles {
        let sql = format!(
            "SELECT pg_catalog.pg_has_role(current_user, oid, 'MEMBER')::text FROM pg_catalog.pg_roles WHERE rolname = {}",
            quote_literal(role)
        );
        match conn.query_rows(&sql).await {
            Ok(rows) => match rows.first().and_then(|r| r.first()).and_then(|v| v.as_deref()) {
                None => findings.errors.push(at(rt, "allowed_roles", format!("allowed role \"{role}\" does not exist on {server}"))),
                Some("true") => {}
                Some(_) => findings.errors.push(at(rt, "allowed_roles", format!(
                    "allowed role \"{role}\" is not granted to connect_as \"{user}\" on {server} (GRANT \"{role}\" TO \"{user}\")"
                ))),
            },
            Err(e) => findings.errors.push(at(rt, "allowed_roles", format!("cannot check allowed role \"{role}\" on {server}: {e}"))),
        }
    }
}
