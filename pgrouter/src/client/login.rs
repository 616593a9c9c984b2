//! Who the client is: find its users.toml entry and check its password with
//! the method that entry names (SCRAM-SHA-256, md5 or cleartext).

use std::sync::Arc;

use bytes::BytesMut;
use pgrouter_config::{AuthMethod, User};
use rand::Rng;

use super::error::SessionEnd;
use super::io::{read_message, write_all};
use crate::auth::md5::verify_md5;
use crate::auth::scram::ScramServer;
use crate::auth::{verify_cleartext, StoredPassword};
use crate::net::ClientStream;
use crate::pool::UserPools;
use crate::protocol::backend;
use crate::protocol::frontend::{parse_password, parse_sasl_initial};
use crate::state::State;

pub struct LoggedIn {
    pub user: User,
    pub pools: Arc<UserPools>,
}

/// Resolves the user and database, then runs the password exchange.
/// Sends nothing on success (the caller sends AuthenticationOk and the rest).
pub async fn authenticate(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    state: &State,
    user_name: &str,
    database: &str,
) -> Result<LoggedIn, SessionEnd> {
    let config = &state.config;
    if !config.logical_databases().contains(&database) {
        return Err(SessionEnd::fatal("3D000", format!("database \"{database}\" does not exist")));
    }
    let Some(user) = config.user(user_name, database) else {
        return Err(SessionEnd::fatal("28000", format!("role \"{user_name}\" does not exist for database \"{database}\"")));
    };
    if !user.login {
        return Err(SessionEnd::fatal("28000", format!("user \"{user_name}\" cannot log in directly")));
    }
    let pools = state
        .cluster
        .pools_for(user_name, database)
        .cloned()
        .ok_or_else(|| SessionEnd::fatal("28000", format!("no pools for user \"{user_name}\"")))?;
    let stored = StoredPassword::parse(user.password.as_deref().unwrap_or(""));
    let ok = match (&user.auth, &stored) {
        // A stored md5 hash cannot answer SCRAM; PostgreSQL falls back to md5 too.
        (AuthMethod::Scram, StoredPassword::Md5(_)) | (AuthMethod::Md5, _) => md5_exchange(stream, buf, user, &stored).await?,
        (AuthMethod::Scram, _) => scram_exchange(stream, buf, &stored).await?,
        (AuthMethod::Plain | AuthMethod::PasswordOrJwt, _) => cleartext_exchange(stream, buf, user, &stored).await?,
        (AuthMethod::Jwt, _) => {
            return Err(SessionEnd::fatal("28P01", "JWT login is not available yet in this build"));
        }
    };
    if !ok || user.password.is_none() {
        tracing::warn!(user = user_name, database, "password authentication failed");
        return Err(SessionEnd::fatal("28P01", format!("password authentication failed for user \"{user_name}\"")));
    }
    Ok(LoggedIn { user: user.clone(), pools })
}

async fn read_password_message(stream: &mut ClientStream, buf: &mut BytesMut) -> Result<bytes::Bytes, SessionEnd> {
    let (tag, body) = read_message(stream, buf).await?;
    if tag != b'p' {
        return Err(SessionEnd::fatal("08P01", format!("expected a password message, got '{}'", tag as char)));
    }
    Ok(body)
}

async fn cleartext_exchange(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    user: &User,
    stored: &StoredPassword,
) -> Result<bool, SessionEnd> {
    let mut out = BytesMut::new();
    backend::authentication_cleartext(&mut out);
    write_all(stream, &out).await?;
    let body = read_password_message(stream, buf).await?;
    let password = parse_password(&body)?;
    Ok(verify_cleartext(stored, &user.name, password))
}

async fn md5_exchange(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    user: &User,
    stored: &StoredPassword,
) -> Result<bool, SessionEnd> {
    let salt: [u8; 4] = rand::thread_rng().gen();
    let mut out = BytesMut::new();
    backend::authentication_md5(&mut out, salt);
    write_all(stream, &out).await?;
    let body = read_password_message(stream, buf).await?;
    let response = parse_password(&body)?;
    Ok(verify_md5(stored, &user.name, salt, response))
}

async fn scram_exchange(stream: &mut ClientStream, buf: &mut BytesMut, stored: &StoredPassword) -> Result<bool, SessionEnd> {
    let mut server = match stored {
        StoredPassword::Scram(secret) => ScramServer::new(secret.clone()),
        StoredPassword::Plain(p) => ScramServer::from_plain(p),
        StoredPassword::Md5(_) => return Ok(false),
    };
    let mut out = BytesMut::new();
    backend::authentication_sasl(&mut out, &["SCRAM-SHA-256"]);
    write_all(stream, &out).await?;

    let body = read_password_message(stream, buf).await?;
    let (mechanism, data) = parse_sasl_initial(&body)?;
    if mechanism != "SCRAM-SHA-256" {
        return Err(SessionEnd::fatal("28000", format!("unsupported SASL mechanism \"{mechanism}\"")));
    }
    let server_first = server.server_first(data).map_err(|e| SessionEnd::fatal("08P01", e.to_string()))?;
    out.clear();
    backend::authentication_sasl_continue(&mut out, server_first.as_bytes());
    write_all(stream, &out).await?;

    let body = read_password_message(stream, buf).await?;
    match server.server_final(&body) {
        Ok(server_final) => {
            out.clear();
            backend::authentication_sasl_final(&mut out, server_final.as_bytes());
            write_all(stream, &out).await?;
            Ok(true)
        }
        Err(crate::auth::AuthError::BadPassword) => Ok(false),
        Err(e) => Err(SessionEnd::fatal("08P01", e.to_string())),
    }
}
