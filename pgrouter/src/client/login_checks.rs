//! Logins the files cannot check on their own (SPEC §5 "Logins checked
//! against the database and remote token checks"):
//! - `[auth_query]`: a user with no users.toml entry is checked against the
//!   secret PostgreSQL stores; the router then logs in to servers as that
//!   user with what the client's exchange revealed (the SCRAM ClientKey, the
//!   md5 hash PostgreSQL stores, or the cleartext password).
//! - `[jit]`: a password that is a token is checked by the JIT API at every
//!   login, and then presented to PostgreSQL as that user's password.
//!
//! Unknown users and wrong passwords get the same answer (28P01, same
//! message, and for SCRAM the same exchange with a made-up salt), so a
//! client cannot probe which roles exist; the log says which it was. A
//! role that exists but may not log in gets PostgreSQL's 28000 only once
//! the client proved its password, as PostgreSQL answers it.

use std::sync::LazyLock;

use bytes::BytesMut;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use super::error::SessionEnd;
use super::login::{jwt_login, md5_exchange, scram_exchange_with, LoggedIn, Who};
use crate::auth::auth_query::{Answer, Found, Need};
use crate::auth::jwt::looks_like_jwt;
use crate::auth::md5::verify_md5;
use crate::auth::pass_through::PassThrough;
use crate::auth::scram::{ScramKeys, ScramSecret, ScramServer, DEFAULT_ITERATIONS};
use crate::auth::{verify_cleartext_off_loop, StoredPassword};
use crate::net::ClientStream;
use crate::router::Policy;

/// Where a token goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TokenRoute {
    /// `[jwt]` verifies it locally.
    Jwt,
    /// The JIT API decides.
    Jit,
}

/// Whether `secret` is a token and who checks it; `None` for a password.
/// A `token_prefixes` match always goes to the JIT API. A JWT-shaped one
/// goes to `[jwt]` when that section would accept a JWT from this user on
/// this database (entry with `auth = "password_or_jwt"`, or no entry and
/// `auto_provision`), and to the JIT API otherwise.
pub(super) fn token_route(who: &Who<'_>, secret: &str) -> Option<TokenRoute> {
    let jit = who.rt.config.jit.as_ref()?;
    if jit.has_token_prefix(secret) {
        return Some(TokenRoute::Jit);
    }
    if !looks_like_jwt(secret) {
        return None;
    }
    let jwt_takes_it = who.rt.jwt.is_some()
        && who.rt.config.jwt.as_ref().is_some_and(|j| {
            j.applies_to(who.database)
                && match who.entry {
                    Some(u) => u.auth == pgrouter_config::AuthMethod::PasswordOrJwt,
                    None => j.auto_provision,
                }
        });
    Some(if jwt_takes_it {
        TokenRoute::Jwt
    } else {
        TokenRoute::Jit
    })
}

pub(super) async fn token_login(
    who: &Who<'_>,
    route: TokenRoute,
    token: &str,
) -> Result<LoggedIn, SessionEnd> {
    match route {
        TokenRoute::Jwt => {
            jwt_login(
                who.state,
                who.rt,
                who.entry,
                who.user,
                who.database,
                token,
                who.transport,
            )
            .await
        }
        TokenRoute::Jit => jit_login(who, token).await,
    }
}

/// Asks the JIT API; a granted token becomes the password of the user's
/// server connections (PostgreSQL checks it again, e.g. through PAM).
async fn jit_login(who: &Who<'_>, token: &str) -> Result<LoggedIn, SessionEnd> {
    let Some(client) = who.rt.jit.as_ref() else {
        return Err(SessionEnd::fatal("28000", "[jit] is not configured"));
    };
    let rhost = who.transport.peer.ip().to_string();
    let verdict = client
        .check(&who.state.metrics, token, who.user, &rhost)
        .await;
    if let Some(refusal) = verdict.refusal(who.user) {
        tracing::warn!(user = who.user, database = who.database, %rhost, cause = %refusal, "JIT login refused");
        return Err(SessionEnd::fatal("28P01", format!("pgrouter: {refusal}")));
    }
    let credential = PassThrough {
        token: Some(token.to_string()),
        ..PassThrough::default()
    };
    learnt_login(who, credential, "jit")
}

/// `[auth_query]` for a client asked for SCRAM or md5: the secret's kind
/// decides which (as PostgreSQL does for md5 in pg_hba.conf).
pub(super) async fn auth_query_login(
    who: &Who<'_>,
    stream: &mut ClientStream,
    buf: &mut BytesMut,
) -> Result<LoggedIn, SessionEnd> {
    let mut found = lookup(who, Need::Cached).await?;
    if found.is_none() {
        // "No such user" may be stale: the role may have been created since
        // an earlier login failed. Fetch again (at most once a second per
        // user) before the exchange, which cannot be replayed, so that the
        // role's first login works, as it does with PostgreSQL.
        found = lookup(who, Need::AfterFailure).await?;
    }
    let Some(Found {
        password,
        mut can_login,
    }) = found
    else {
        // Same exchange as for a real user, with a secret nobody can match.
        let _ = scram_exchange_with(
            stream,
            buf,
            who.transport,
            ScramServer::new(mock_secret(who.user)),
        )
        .await?;
        return Err(refused(
            who,
            "unknown user (auth_query found no password)",
            "scram-sha-256",
        ));
    };
    // The secret the client's password is checked against (the md5 path
    // may check it against a fresh one).
    let mut verified = password.clone();
    match password {
        StoredPassword::Md5(hash) => {
            let (salt, response) = md5_exchange(stream, buf).await?;
            let mut hash = hash;
            if !verify_md5(
                &StoredPassword::Md5(hash.clone()),
                who.user,
                salt,
                &response,
            ) {
                // The password may have changed since the lookup: the md5
                // answer can be checked again against a fresh hash.
                match lookup(who, Need::AfterFailure).await? {
                    Some(Found {
                        password: StoredPassword::Md5(fresh),
                        can_login: fresh_can_login,
                    }) if verify_md5(
                        &StoredPassword::Md5(fresh.clone()),
                        who.user,
                        salt,
                        &response,
                    ) =>
                    {
                        verified = StoredPassword::Md5(fresh.clone());
                        hash = fresh;
                        can_login = fresh_can_login;
                    }
                    _ => return Err(refused(who, "wrong password", "md5")),
                }
            }
            let credential = PassThrough {
                md5_hash: Some(hash),
                ..PassThrough::default()
            };
            admitted(who, (&verified, can_login), credential, "auth_query/md5").await
        }
        StoredPassword::Scram(secret) => {
            match scram_exchange_with(stream, buf, who.transport, ScramServer::new(secret)).await? {
                Some(server) => {
                    let credential = PassThrough {
                        scram: server.recovered_keys(),
                        ..PassThrough::default()
                    };
                    admitted(
                        who,
                        (&verified, can_login),
                        credential,
                        "auth_query/scram-sha-256",
                    )
                    .await
                }
                None => {
                    // A SCRAM exchange cannot be replayed against a new salt:
                    // fetch again so that the next attempt uses the new secret.
                    let _ = lookup(who, Need::AfterFailure).await;
                    Err(refused(who, "wrong password", "scram-sha-256"))
                }
            }
        }
        StoredPassword::Plain(password) => {
            let server = match ScramServer::from_plain_if_derived(&password) {
                Some(server) => server,
                None => {
                    let plain = password.clone();
                    crate::auth::derive_off_loop(move || ScramServer::from_plain(&plain)).await
                }
            };
            match scram_exchange_with(stream, buf, who.transport, server).await? {
                Some(_) => {
                    let credential = PassThrough {
                        password: Some(password),
                        ..PassThrough::default()
                    };
                    admitted(
                        who,
                        (&verified, can_login),
                        credential,
                        "auth_query/scram-sha-256",
                    )
                    .await
                }
                None => {
                    let _ = lookup(who, Need::AfterFailure).await;
                    Err(refused(who, "wrong password", "scram-sha-256"))
                }
            }
        }
    }
}

/// `[auth_query]` for a password received in cleartext (with `[jit]`, the
/// non-token passwords): verified against the secret, re-fetched once if
/// it fails.
pub(super) async fn auth_query_cleartext(
    who: &Who<'_>,
    password: &str,
) -> Result<LoggedIn, SessionEnd> {
    if who.rt.config.auth_query.is_none() {
        tracing::warn!(
            user = who.user,
            database = who.database,
            "password login refused: no users.toml entry and no [auth_query]"
        );
        return Err(SessionEnd::fatal(
            "28000",
            format!(
                "role \"{}\" does not exist for database \"{}\"",
                who.user, who.database
            ),
        ));
    }
    let mut stored = lookup(who, Need::Cached).await?;
    async fn matches(s: &Option<Found>, user: &str, password: &str) -> bool {
        match s {
            Some(s) => verify_cleartext_off_loop(&s.password, user, password).await,
            None => false,
        }
    }
    if !matches(&stored, who.user, password).await {
        stored = lookup(who, Need::AfterFailure).await?;
        if !matches(&stored, who.user, password).await {
            let why = if stored.is_some() {
                "wrong password"
            } else {
                "unknown user (auth_query found no password)"
            };
            return Err(refused(who, why, "password"));
        }
    }
    // Matched, so found (never a panic on a login).
    let Some(found) = stored else {
        return Err(refused(who, "unknown user", "password"));
    };
    let mut credential = PassThrough {
        password: Some(password.to_string()),
        ..PassThrough::default()
    };
    match found.password.clone() {
        StoredPassword::Scram(secret) => {
            let plain = password.to_string();
            let keys =
                crate::auth::derive_off_loop(move || ScramKeys::from_password(&plain, &secret));
            credential.scram = Some(keys.await);
        }
        StoredPassword::Md5(hash) => credential.md5_hash = Some(hash),
        StoredPassword::Plain(_) => {}
    }
    admitted(
        who,
        (&found.password, found.can_login),
        credential,
        "auth_query/password",
    )
    .await
}

async fn lookup(who: &Who<'_>, need: Need) -> Result<Option<Found>, SessionEnd> {
    let Some(cfg) = who.rt.config.auth_query.as_ref() else {
        return Err(SessionEnd::fatal("28000", "auth_query is not configured"));
    };
    let answer: Answer = who
        .state
        .secrets
        .secret(
            who.rt,
            cfg,
            &who.state.metrics,
            who.database,
            who.user,
            need,
        )
        .await;
    answer.map_err(|e| {
        tracing::warn!(user = who.user, database = who.database, error = %e, "login failed: auth_query lookup");
        SessionEnd::fatal(e.sqlstate(), e.to_string())
    })
}

/// The client proved the password (`verified`, the secret it was checked
/// against) of a role the lookup found: one that may not log in is
/// refused now, as PostgreSQL refuses it once the client is authenticated
/// (28000, its wording); any other gets its pools.
async fn admitted(
    who: &Who<'_>,
    (verified, can_login): (&StoredPassword, bool),
    credential: PassThrough,
    method: &'static str,
) -> Result<LoggedIn, SessionEnd> {
    if !can_login && !may_log_in_now(who, verified).await? {
        tracing::warn!(
            user = who.user,
            database = who.database,
            method,
            "login refused: the role may not log in (rolcanlogin is false)"
        );
        return Err(SessionEnd::fatal(
            "28000",
            format!("role \"{}\" is not permitted to log in", who.user),
        ));
    }
    learnt_login(who, credential, method)
}

/// A role refused as one that may not log in is looked up again (at most
/// once a second, as after a failed login), so that `ALTER ROLE … LOGIN`
/// takes effect at the next attempt, as with PostgreSQL, not after
/// `cache_ttl_s`. Admitted only with the very secret the client proved.
async fn may_log_in_now(who: &Who<'_>, verified: &StoredPassword) -> Result<bool, SessionEnd> {
    let fresh = lookup(who, Need::AfterFailure).await?;
    Ok(fresh.is_some_and(|f| f.can_login && f.password == *verified))
}

/// The pools of a user logged in with learnt credentials: always pools
/// that log in as that very user (see [`crate::pool::Cluster::learnt_pools`]).
fn learnt_login(
    who: &Who<'_>,
    credential: PassThrough,
    method: &'static str,
) -> Result<LoggedIn, SessionEnd> {
    let config = &who.rt.config;
    let Some((name, pools)) = who.rt.cluster.learnt_pools(
        config,
        &who.state.metrics,
        who.user,
        who.database,
        credential,
    ) else {
        tracing::error!(
            user = who.user,
            database = who.database,
            "login refused: no free name for the user's pools"
        );
        return Err(SessionEnd::fatal(
            "53300",
            format!("pgrouter: no pools can be made for user \"{}\"", who.user),
        ));
    };
    Ok(LoggedIn {
        pools_user: name,
        pools,
        policy: Policy {
            jwt: None,
            read_only: who.entry.is_some_and(|u| u.read_only),
        },
        method,
    })
}

/// The one answer for a wrong password and an unknown user.
fn refused(who: &Who<'_>, why: &str, method: &'static str) -> SessionEnd {
    tracing::warn!(
        user = who.user,
        database = who.database,
        method,
        cause = why,
        "password authentication failed"
    );
    SessionEnd::fatal(
        "28P01",
        format!("password authentication failed for user \"{}\"", who.user),
    )
}

/// A made-up SCRAM secret for a user that does not exist: its salt depends
/// only on the name (and a key chosen at start), so asking twice shows the
/// same salt, as for a real user; no proof can match its keys.
fn mock_secret(user: &str) -> ScramSecret {
    static KEY: LazyLock<[u8; 32]> = LazyLock::new(|| {
        let mut k = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut k);
        k
    });
    let mut mac = Hmac::<Sha256>::new_from_slice(&*KEY).expect("HMAC takes any key length");
    mac.update(user.as_bytes());
    let digest: [u8; 32] = mac.finalize().into_bytes().into();
    let mut stored_key = [0u8; 32];
    let mut server_key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut stored_key);
    rand::thread_rng().fill_bytes(&mut server_key);
    ScramSecret {
        iterations: DEFAULT_ITERATIONS,
        salt: digest[..16].to_vec(),
        stored_key,
        server_key,
    }
}
