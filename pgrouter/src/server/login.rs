//! Logging in to a server: startup message, then whichever authentication the
//! server asks for (trust, cleartext, md5, SCRAM-SHA-256), then the parameters
//! and key data up to the first ReadyForQuery.

use bytes::BytesMut;

use super::connection::{ServerConn, ServerError, ServerTarget};
use crate::auth::md5::{md5_response, md5_response_from_hash};
use crate::auth::pass_through::PassThrough;
use crate::auth::scram::ScramClient;
use crate::auth::AuthError;
use crate::protocol::backend::{parse_auth_request, parse_error_fields, AuthRequest, ErrorFields};
use crate::protocol::frontend;
use crate::protocol::reader::Reader;

pub(super) async fn login(conn: &mut ServerConn, target: &ServerTarget) -> Result<(), ServerError> {
    let mut out = BytesMut::new();
    frontend::startup_message(
        &mut out,
        &[("user", &target.user), ("database", &target.database)],
    );
    conn.send(&out).await?;
    let learnt = target.pass_through.as_ref().map(|slot| slot.get());
    let mut scram: Option<ScramClient> = None;
    loop {
        let (tag, body) = conn.read_message().await?;
        match tag {
            b'R' => match parse_auth_request(&body)? {
                AuthRequest::Ok => {}
                AuthRequest::Cleartext => {
                    let password = match &learnt {
                        Some(learnt) => cleartext_of(conn, target, learnt)?,
                        None => password_of(target)?,
                    };
                    out.clear();
                    frontend::password_message(&mut out, password);
                    conn.send(&out).await?;
                }
                AuthRequest::Md5(salt) => {
                    let response = match &learnt {
                        Some(learnt) => md5_of(target, learnt, salt)?,
                        None => md5_response(&target.user, password_of(target)?, salt),
                    };
                    out.clear();
                    frontend::password_message(&mut out, &response);
                    conn.send(&out).await?;
                }
                AuthRequest::Sasl(mechanisms) => {
                    if !mechanisms.contains(&"SCRAM-SHA-256") {
                        return Err(ServerError::Auth(format!(
                            "unsupported SASL mechanisms {mechanisms:?}"
                        )));
                    }
                    let client = match &learnt {
                        Some(l) if l.scram.is_none() && l.cleartext().is_none() => {
                            return Err(refused_like_postgres(
                                target,
                                "the server asks SCRAM-SHA-256, but the client logged in with md5 \
                                 (the role's password has expired, or PostgreSQL stores an md5 \
                                 hash and pg_hba.conf should say md5 for this user)",
                            ));
                        }
                        Some(l) => ScramClient::from_keys(
                            l.scram.clone(),
                            l.password.as_deref().or(l.token.as_deref()),
                        ),
                        None => ScramClient::new(password_of(target)?),
                    };
                    out.clear();
                    frontend::sasl_initial_response(
                        &mut out,
                        "SCRAM-SHA-256",
                        client.client_first().as_bytes(),
                    );
                    conn.send(&out).await?;
                    scram = Some(client);
                }
                AuthRequest::SaslContinue(data) => {
                    let mut client = scram
                        .take()
                        .ok_or_else(|| ServerError::Auth("unexpected SASL continue".into()))?;
                    // The password's key derivation (PBKDF2) runs off the
                    // event loop: other clients of this worker go on.
                    let data = data.to_vec();
                    let (client, reply) = crate::auth::derive_off_loop(move || {
                        let reply = client.client_final(&data);
                        (client, reply)
                    })
                    .await;
                    scram = Some(client);
                    let reply = reply.map_err(|e| match e {
                        AuthError::SecretDiffers => refused_like_postgres(target, &e.to_string()),
                        e => ServerError::Auth(e.to_string()),
                    })?;
                    out.clear();
                    frontend::sasl_response(&mut out, reply.as_bytes());
                    conn.send(&out).await?;
                }
                AuthRequest::SaslFinal(data) => {
                    let client = scram
                        .as_ref()
                        .ok_or_else(|| ServerError::Auth("unexpected SASL final".into()))?;
                    client
                        .verify_server_final(data)
                        .map_err(|e| ServerError::Auth(e.to_string()))?;
                }
                AuthRequest::Other(code) => {
                    return Err(ServerError::Auth(format!(
                        "unsupported authentication request {code}"
                    )))
                }
            },
            b'S' => conn.note_parameter_status(&body),
            b'K' => {
                let mut r = Reader::new(&body);
                conn.backend_pid = r.i32()?;
                conn.backend_secret = r.i32()?;
            }
            b'E' => return Err(ServerError::Postgres(parse_error_fields(&body)?)),
            b'Z' => {
                conn.tx_status = body.first().copied().unwrap_or(b'I');
                return Ok(());
            }
            _ => {} // notices and anything else at startup are not the client's business
        }
    }
}

fn password_of(target: &ServerTarget) -> Result<&str, ServerError> {
    target.password.as_deref().ok_or_else(|| {
        ServerError::Auth(format!(
            "server asks for a password for user \"{}\" but none is configured",
            target.user
        ))
    })
}

/// A password or token in cleartext, for users whose credentials came from
/// their clients' logins: only where it cannot be read on the way (TLS or a
/// Unix-domain socket), since it is the user's real secret.
fn cleartext_of<'a>(
    conn: &ServerConn,
    target: &ServerTarget,
    learnt: &'a PassThrough,
) -> Result<&'a str, ServerError> {
    let Some(secret) = learnt.cleartext() else {
        return Err(ServerError::Auth(format!(
            "server asks a cleartext password for user \"{}\", but the router only has the \
             SCRAM keys or md5 hash from the client's login (use scram-sha-256 or md5 in \
             pg_hba.conf for this user)",
            target.user
        )));
    };
    if !conn.stream.is_tls() && target.unix_socket().is_none() {
        return Err(ServerError::Auth(format!(
            "server asks a cleartext password for user \"{}\" over an unencrypted TCP \
             connection; the router sends passwords and tokens of logged-in clients in \
             cleartext only over TLS or a Unix-domain socket",
            target.user
        )));
    }
    Ok(secret)
}

/// The md5 answer from the stored hash, or from a password or token.
fn md5_of(
    target: &ServerTarget,
    learnt: &PassThrough,
    salt: [u8; 4],
) -> Result<String, ServerError> {
    if let Some(hash) = &learnt.md5_hash {
        return Ok(md5_response_from_hash(hash, salt));
    }
    match learnt.password.as_deref().or(learnt.token.as_deref()) {
        Some(p) => Ok(md5_response(&target.user, p, salt)),
        None => Err(refused_like_postgres(
            target,
            "the server asks md5, but the client logged in with SCRAM (PostgreSQL stores a \
             SCRAM secret: use scram-sha-256 in pg_hba.conf for this user)",
        )),
    }
}

/// For a user whose server credentials come from its client's login: the
/// server holds another secret than the one the client proved (changed
/// since, different on this server, or expired: PostgreSQL then answers
/// with a made-up salt), or asks for a method those credentials cannot
/// answer. Any answer could only fail, and PostgreSQL would have refused
/// that client's password: so the client is told what PostgreSQL tells it
/// (28P01, its wording), the same at every attempt, and `why` is logged
/// for the operator.
fn refused_like_postgres(target: &ServerTarget, why: &str) -> ServerError {
    tracing::warn!(user = %target.user, server = %target.addr(), why, "server login with the client's credentials is impossible");
    ServerError::Postgres(ErrorFields {
        severity: "FATAL".into(),
        code: "28P01".into(),
        message: format!(
            "password authentication failed for user \"{}\"",
            target.user
        ),
        routine: String::new(),
    })
}
