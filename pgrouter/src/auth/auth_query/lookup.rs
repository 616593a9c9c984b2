//! Running the `[auth_query]` query on a server connection: one extended-
//! protocol round trip with the user name bound as `$1` (never spliced into
//! the SQL text, so no name can change the query).

use bytes::{BufMut, BytesMut};

use crate::protocol::backend::parse_error_fields;
use crate::protocol::frontend;
use crate::protocol::reader::Reader;
use crate::server::{ServerConn, ServerError};

/// Why a lookup gave no answer.
pub enum FetchError {
    /// The connection failed; it must not be reused.
    Broken(ServerError),
    /// PostgreSQL refused the query, or it returned the wrong shape; the
    /// connection is fine.
    Query(String),
}

/// Runs `query` with `$1 = user` and returns the second column of the first
/// row (`rolpassword`); `None` when there is no row or the value is NULL.
pub async fn fetch_secret(
    conn: &mut ServerConn,
    query: &str,
    user: &str,
) -> Result<Option<String>, FetchError> {
    match exchange(conn, query, user).await {
        Ok(r) => r.map_err(FetchError::Query),
        Err(e) => Err(FetchError::Broken(e)),
    }
}

async fn exchange(
    conn: &mut ServerConn,
    query: &str,
    user: &str,
) -> Result<Result<Option<String>, String>, ServerError> {
    let mut out = BytesMut::new();
    frontend::write_parse(&mut out, "", query, &[]);
    let mut rest = BytesMut::new();
    rest.put_i16(0); // parameters in text
    rest.put_i16(1);
    rest.put_i32(user.len() as i32);
    rest.put_slice(user.as_bytes());
    rest.put_i16(0); // results in text
    frontend::write_bind(&mut out, "", "", &rest);
    crate::protocol::backend::put_message(&mut out, b'E', |b| {
        b.put_u8(0);
        b.put_i32(0);
    });
    frontend::sync(&mut out);
    conn.send(&out).await?;

    let mut secret: Option<Option<String>> = None;
    let mut error = None;
    loop {
        let (tag, body) = conn.read_message().await?;
        match tag {
            b'D' if secret.is_none() && error.is_none() => match second_column(&body)? {
                Ok(v) => secret = Some(v),
                Err(e) => error = Some(e),
            },
            b'E' if error.is_none() => error = Some(parse_error_fields(&body)?.message),
            b'S' => conn.note_parameter_status(&body),
            b'Z' => {
                conn.tx_status = body.first().copied().unwrap_or(b'I');
                break;
            }
            _ => {}
        }
    }
    Ok(match error {
        Some(e) => Err(e),
        None => Ok(secret.flatten()),
    })
}

/// The second value of a DataRow as text; a row with fewer than two
/// columns is the query's mistake, named in the error.
fn second_column(body: &[u8]) -> Result<Result<Option<String>, String>, ServerError> {
    let mut r = Reader::new(body);
    let n = r.i16()?;
    if n < 2 {
        return Ok(Err(format!(
            "the query returned {n} column(s); it must return two: the name and rolpassword"
        )));
    }
    let first = r.i32()?;
    if first > 0 {
        r.bytes(first as usize)?;
    }
    let len = r.i32()?;
    if len < 0 {
        return Ok(Ok(None));
    }
    Ok(Ok(Some(
        String::from_utf8_lossy(r.bytes(len as usize)?).into_owned(),
    )))
}
