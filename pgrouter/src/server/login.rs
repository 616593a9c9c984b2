//! Logging in to a server: startup message, then whichever authentication the
//! server asks for (trust, cleartext, md5, SCRAM-SHA-256), then the parameters
//! and key data up to the first ReadyForQuery.

use bytes::BytesMut;

use super::connection::{ServerConn, ServerError, ServerTarget};
use crate::auth::md5::md5_response;
use crate::auth::scram::ScramClient;
use crate::protocol::backend::{parse_auth_request, parse_error_fields, AuthRequest};
use crate::protocol::frontend;
use crate::protocol::reader::Reader;

pub(super) async fn login(conn: &mut ServerConn, target: &ServerTarget) -> Result<(), ServerError> {
    let mut out = BytesMut::new();
    frontend::startup_message(
        &mut out,
        &[("user", &target.user), ("database", &target.database)],
    );
    conn.send(&out).await?;
    let mut scram: Option<ScramClient> = None;
    loop {
        let (tag, body) = conn.read_message().await?;
        match tag {
            b'R' => match parse_auth_request(&body)? {
                AuthRequest::Ok => {}
                AuthRequest::Cleartext => {
                    let password = password_of(target)?;
                    out.clear();
                    frontend::password_message(&mut out, password);
                    conn.send(&out).await?;
                }
                AuthRequest::Md5(salt) => {
                    let password = password_of(target)?;
                    out.clear();
                    frontend::password_message(
                        &mut out,
                        &md5_response(&target.user, password, salt),
                    );
                    conn.send(&out).await?;
                }
                AuthRequest::Sasl(mechanisms) => {
                    if !mechanisms.contains(&"SCRAM-SHA-256") {
                        return Err(ServerError::Auth(format!(
                            "unsupported SASL mechanisms {mechanisms:?}"
                        )));
                    }
                    let client = ScramClient::new(password_of(target)?);
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
                    let client = scram
                        .as_mut()
                        .ok_or_else(|| ServerError::Auth("unexpected SASL continue".into()))?;
                    let reply = client
                        .client_final(data)
                        .map_err(|e| ServerError::Auth(e.to_string()))?;
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
