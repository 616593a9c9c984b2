//! Who the client is: find its users.toml entry (or, for JWT logins, the
//! `connect_as` entry whose pools it will use) and check its password or
//! token with the method the entry names. Users with no entry, and tokens
//! for the JIT API, are checked in `login_checks.rs`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use pgrouter_config::{AuthMethod, User};
use rand::Rng;

use super::error::SessionEnd;
use super::io::{read_message, write_all};
use super::login_checks;
use crate::auth::jwt::looks_like_jwt;
use crate::auth::md5::verify_md5;
use crate::auth::pass_through::PassThrough;
use crate::auth::scram::ScramServer;
use crate::auth::{verify_cleartext_off_loop, StoredPassword};
use crate::net::ClientStream;
use crate::pool::UserPools;
use crate::protocol::backend;
use crate::protocol::frontend::{parse_password, parse_sasl_initial};
use crate::router::{JwtIdentity, Policy, SessionToken};
use crate::state::{Runtime, State};

/// Who is logging in, where, and with which runtime: what every check needs.
pub(super) struct Who<'a> {
    pub state: &'a State,
    pub rt: &'a Arc<Runtime>,
    /// The users.toml entry, if any.
    pub entry: Option<&'a User>,
    pub user: &'a str,
    pub database: &'a str,
    pub transport: &'a Transport,
}

pub struct LoggedIn {
    /// The users.toml entry whose pools serve the session (the connect_as
    /// entry for JWT sessions).
    pub pools_user: String,
    pub pools: Arc<UserPools>,
    pub policy: Policy,
    pub method: &'static str,
}

/// How the client is reaching us, for deciding whether a JWT may be sent
/// and whether SCRAM can be bound to the connection.
pub struct Transport {
    pub peer: SocketAddr,
    pub tls: bool,
    /// With TLS: the `tls-server-end-point` data of the certificate the
    /// client's handshake used, so that SCRAM-SHA-256-PLUS is offered
    /// (`None` without TLS, or for a certificate that has none).
    pub end_point: Option<crate::net::tls::end_point::EndPoint>,
}

/// Resolves the user and database, then runs the password or token exchange.
/// Sends nothing on success (the caller sends AuthenticationOk and the rest).
pub async fn authenticate(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    state: &State,
    user_name: &str,
    database: &str,
    transport: &Transport,
) -> Result<LoggedIn, SessionEnd> {
    let rt = state.rt();
    let config = &rt.config;
    if !config.logical_databases().contains(&database) {
        return Err(SessionEnd::fatal(
            "3D000",
            format!("database \"{database}\" does not exist"),
        ));
    }
    let entry = config.user(user_name, database);
    let jwt_enabled = config.jwt.is_some() && rt.jwt.is_some();
    // With [jit], clients are asked for a cleartext password (a token or a
    // password), but only where nobody can read it on the way.
    let secure = transport.tls || transport.peer.ip().is_loopback();
    let jit_here =
        rt.jit.is_some() && config.jit.as_ref().is_some_and(|j| j.applies_to(database)) && secure;
    match entry {
        Some(user) if !user.login => Err(SessionEnd::fatal(
            "28000",
            format!("user \"{user_name}\" cannot log in directly"),
        )),
        Some(user) if jit_here && user.auth != AuthMethod::Jwt => {
            let secret = cleartext_exchange(stream, buf).await?;
            let who = Who {
                state,
                rt: &rt,
                entry: Some(user),
                user: user_name,
                database,
                transport,
            };
            if let Some(route) = login_checks::token_route(&who, &secret) {
                return login_checks::token_login(&who, route, &secret).await;
            }
            let stored = StoredPassword::parse(user.password.as_deref().unwrap_or(""));
            let ok = user.password.is_some()
                && verify_cleartext_off_loop(&stored, &user.name, &secret).await;
            password_result(&rt, user, ok, "password")
        }
        Some(user) if user.auth == AuthMethod::Jwt => {
            let token = cleartext_exchange(stream, buf).await?;
            jwt_login(
                state,
                &rt,
                Some(user),
                user_name,
                database,
                &token,
                transport,
            )
            .await
        }
        Some(user) if user.auth == AuthMethod::PasswordOrJwt => {
            let secret = cleartext_exchange(stream, buf).await?;
            if jwt_enabled && looks_like_jwt(&secret) {
                jwt_login(
                    state,
                    &rt,
                    Some(user),
                    user_name,
                    database,
                    &secret,
                    transport,
                )
                .await
            } else {
                let stored = StoredPassword::parse(user.password.as_deref().unwrap_or(""));
                let ok = user.password.is_some()
                    && verify_cleartext_off_loop(&stored, &user.name, &secret).await;
                password_result(&rt, user, ok, "password")
            }
        }
        Some(user) => {
            let stored = StoredPassword::parse(user.password.as_deref().unwrap_or(""));
            let (ok, method) = match (&user.auth, &stored) {
                // A stored md5 hash cannot answer SCRAM; PostgreSQL falls back to md5 too.
                (AuthMethod::Scram, StoredPassword::Md5(_)) | (AuthMethod::Md5, _) => {
                    let (salt, response) = md5_exchange(stream, buf).await?;
                    (verify_md5(&stored, &user.name, salt, &response), "md5")
                }
                (AuthMethod::Scram, StoredPassword::Scram(secret)) => {
                    let server = ScramServer::new(secret.clone());
                    let proved = scram_exchange_with(stream, buf, transport, server).await?;
                    let keys = proved.as_ref().and_then(|s| s.recovered_keys());
                    let result = password_result(&rt, user, proved.is_some(), "scram-sha-256")?;
                    // Servers of a user whose password is a secret are
                    // logged in to with the keys this client proved.
                    if let (Some(slot), Some(keys)) = (&result.pools.credential, keys) {
                        slot.update(PassThrough {
                            scram: Some(keys),
                            ..PassThrough::default()
                        });
                    }
                    return Ok(result);
                }
                (AuthMethod::Scram, _) => {
                    let proved = scram_exchange(stream, buf, transport, &stored).await?;
                    (proved, "scram-sha-256")
                }
                _ => {
                    let secret = cleartext_exchange(stream, buf).await?;
                    (
                        verify_cleartext_off_loop(&stored, &user.name, &secret).await,
                        "password",
                    )
                }
            };
            password_result(&rt, user, ok && user.password.is_some(), method)
        }
        None if jit_here => {
            let secret = cleartext_exchange(stream, buf).await?;
            let who = Who {
                state,
                rt: &rt,
                entry: None,
                user: user_name,
                database,
                transport,
            };
            match login_checks::token_route(&who, &secret) {
                Some(route) => login_checks::token_login(&who, route, &secret).await,
                None => login_checks::auth_query_cleartext(&who, &secret).await,
            }
        }
        // With [auth_query] too, a password that is not a JWT is checked
        // against PostgreSQL's; a client that could not send a JWT safely
        // (plain TCP from another host) is asked for SCRAM instead, below.
        None if jwt_enabled
            && config.jwt.as_ref().is_some_and(|j| j.auto_provision)
            && (config.auth_query.is_none() || secure) =>
        {
            let secret = cleartext_exchange(stream, buf).await?;
            if config.auth_query.is_some() && !looks_like_jwt(&secret) {
                let who = Who {
                    state,
                    rt: &rt,
                    entry: None,
                    user: user_name,
                    database,
                    transport,
                };
                return login_checks::auth_query_cleartext(&who, &secret).await;
            }
            jwt_login(state, &rt, None, user_name, database, &secret, transport).await
        }
        None if config.auth_query.is_some() => {
            let who = Who {
                state,
                rt: &rt,
                entry: None,
                user: user_name,
                database,
                transport,
            };
            login_checks::auth_query_login(&who, stream, buf).await
        }
        None => Err(SessionEnd::fatal(
            "28000",
            format!("role \"{user_name}\" does not exist for database \"{database}\""),
        )),
    }
}

fn password_result(
    rt: &Runtime,
    user: &User,
    ok: bool,
    method: &'static str,
) -> Result<LoggedIn, SessionEnd> {
    if !ok {
        tracing::warn!(user = %user.name, database = %user.database, method, "password authentication failed");
        return Err(SessionEnd::fatal(
            "28P01",
            format!("password authentication failed for user \"{}\"", user.name),
        ));
    }
    let pools = rt
        .cluster
        .pools_for(&user.name, &user.database)
        .ok_or_else(|| {
            SessionEnd::fatal("28000", format!("no pools for user \"{}\"", user.name))
        })?;
    Ok(LoggedIn {
        pools_user: user.name.clone(),
        pools,
        policy: Policy {
            jwt: None,
            read_only: user.read_only,
        },
        method,
    })
}

/// Why a JWT login over plain TCP from another host is refused (and a
/// session logged in so ends when a reload refuses it, see
/// `check_jwt_still_accepted`).
pub(super) const JWT_NEEDS_TLS: &str =
    "JWT login requires TLS (or a loopback connection, or allow_insecure_transport = true)";

/// Verifies a token and maps it to the connect_as pools and a policy.
pub(super) async fn jwt_login(
    state: &State,
    rt: &Runtime,
    entry: Option<&User>,
    user_name: &str,
    database: &str,
    token: &str,
    transport: &Transport,
) -> Result<LoggedIn, SessionEnd> {
    let (Some(cfg), Some(verifier)) = (rt.config.jwt.as_ref(), rt.jwt.as_ref()) else {
        return Err(SessionEnd::fatal("28000", "JWT login is not configured"));
    };
    if !cfg.databases.is_empty() && !cfg.databases.iter().any(|d| d == database) {
        return Err(SessionEnd::fatal(
            "28000",
            format!("JWT login is not allowed for database \"{database}\""),
        ));
    }
    let insecure_transport = !transport.tls && !transport.peer.ip().is_loopback();
    if insecure_transport && !cfg.allow_insecure_transport {
        return Err(SessionEnd::fatal("28000", JWT_NEEDS_TLS));
    }
    let verified = match verifier.verify(token, user_name).await {
        Ok(v) => v,
        Err(e) => {
            state.metrics_jwt_login(e.reason());
            tracing::warn!(user = user_name, database, cause = %e, "JWT authentication failed");
            return Err(SessionEnd::fatal(
                "28P01",
                format!("JWT authentication failed: {e}"),
            ));
        }
    };
    state.metrics_jwt_login("ok");
    let pools = rt
        .cluster
        .pools_for(&cfg.connect_as, database)
        .ok_or_else(|| {
            SessionEnd::fatal(
                "28000",
                format!(
                    "connect_as user \"{}\" has no entry for database \"{database}\"",
                    cfg.connect_as
                ),
            )
        })?;
    let read_only = verified.read_only
        || entry.is_some_and(|u| u.read_only)
        || (entry.is_none() && cfg.auto_provision_read_only);
    let policy = Policy {
        jwt: Some(JwtIdentity {
            username: verified.username,
            role: verified.role,
            expires_at: verified.expires_at,
            token: SessionToken::new(token),
            insecure_transport,
        }),
        read_only,
    };
    Ok(LoggedIn {
        pools_user: cfg.connect_as.clone(),
        pools,
        policy,
        method: "jwt",
    })
}

pub(super) async fn read_password_message(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
) -> Result<bytes::Bytes, SessionEnd> {
    let (tag, body) = read_message(stream, buf).await?;
    if tag != b'p' {
        return Err(SessionEnd::fatal(
            "08P01",
            format!("expected a password message, got '{}'", tag as char),
        ));
    }
    Ok(body)
}

/// Asks for a cleartext password (or token) and returns it.
pub(super) async fn cleartext_exchange(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
) -> Result<String, SessionEnd> {
    let mut out = BytesMut::new();
    backend::authentication_cleartext(&mut out);
    write_all(stream, &out).await?;
    let body = read_password_message(stream, buf).await?;
    Ok(parse_password(&body)?.to_string())
}

/// Asks for an md5 answer; returns the salt sent and the client's answer,
/// for the caller to verify (possibly twice, see `login_checks.rs`).
pub(super) async fn md5_exchange(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
) -> Result<([u8; 4], String), SessionEnd> {
    let salt: [u8; 4] = rand::thread_rng().gen();
    let mut out = BytesMut::new();
    backend::authentication_md5(&mut out, salt);
    write_all(stream, &out).await?;
    let body = read_password_message(stream, buf).await?;
    Ok((salt, parse_password(&body)?.to_string()))
}

pub(super) async fn scram_exchange(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    transport: &Transport,
    stored: &StoredPassword,
) -> Result<bool, SessionEnd> {
    let server = match stored {
        StoredPassword::Scram(secret) => ScramServer::new(secret.clone()),
        StoredPassword::Plain(p) => match ScramServer::from_plain_if_derived(p) {
            Some(server) => server,
            None => {
                let p = p.clone();
                crate::auth::derive_off_loop(move || ScramServer::from_plain(&p)).await
            }
        },
        StoredPassword::Md5(_) => return Ok(false),
    };
    Ok(scram_exchange_with(stream, buf, transport, server)
        .await?
        .is_some())
}

/// Runs the SCRAM exchange against `server`'s secret, bound to the TLS
/// connection when the client takes SCRAM-SHA-256-PLUS; on success returns
/// the server, whose [`ScramServer::recovered_keys`] the caller may want.
/// A wrong password is `Ok(None)`, for the caller to report; a proof bound
/// to another connection fails here with 28P01 (a man in the middle).
pub(super) async fn scram_exchange_with(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    transport: &Transport,
    server: ScramServer,
) -> Result<Option<ScramServer>, SessionEnd> {
    let mut server = server.bind_to(transport.end_point.clone());
    let mut out = BytesMut::new();
    backend::authentication_sasl(&mut out, server.mechanisms());
    write_all(stream, &out).await?;

    let body = read_password_message(stream, buf).await?;
    let (mechanism, data) = parse_sasl_initial(&body)?;
    if server.choose(mechanism).is_err() {
        return Err(SessionEnd::fatal(
            "28000",
            format!("unsupported SASL mechanism \"{mechanism}\""),
        ));
    }
    let server_first = server
        .server_first(data)
        .map_err(|e| scram_failure(transport, e))?;
    out.clear();
    backend::authentication_sasl_continue(&mut out, server_first.as_bytes());
    write_all(stream, &out).await?;

    let body = read_password_message(stream, buf).await?;
    match server.server_final(&body) {
        Ok(server_final) => {
            out.clear();
            backend::authentication_sasl_final(&mut out, server_final.as_bytes());
            write_all(stream, &out).await?;
            Ok(Some(server))
        }
        Err(crate::auth::AuthError::BadPassword) => Ok(None),
        Err(e) => Err(scram_failure(transport, e)),
    }
}

/// The error a failed SCRAM step ends the login with. Channel binding
/// failures hint at someone between client and router, so they are logged.
fn scram_failure(transport: &Transport, e: crate::auth::AuthError) -> SessionEnd {
    use crate::auth::AuthError;
    match e {
        // PostgreSQL's SQLSTATE for it: not a wrong password, but a proof
        // bound to another TLS connection (a relay in between).
        AuthError::ChannelBindingMismatch => {
            tracing::warn!(peer = %transport.peer, "SCRAM channel binding check failed: the client bound its proof to another TLS connection");
            SessionEnd::fatal("28000", e.to_string())
        }
        // PostgreSQL's SQLSTATE for it.
        AuthError::ChannelBindingDowngrade => {
            tracing::warn!(peer = %transport.peer, "SCRAM channel binding negotiation error: the client can bind but was told the router cannot");
            SessionEnd::fatal("28000", e.to_string())
        }
        e => SessionEnd::fatal("08P01", e.to_string()),
    }
}
