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

/// One row of the lookup's answer.
pub struct Row {
    /// The second column: `rolpassword`.
    pub secret: String,
    /// The column named `rolcanlogin`, when the query returns one: false
    /// for a role that exists but may not log in, which PostgreSQL refuses
    /// (28000) only once its password was proved. True without the column
    /// (a query that leaves such roles out answers them as unknown).
    pub can_login: bool,
}

/// The column PostgreSQL's catalog names for the right to log in.
const CAN_LOGIN: &[u8] = b"rolcanlogin";

/// Runs `query` with `$1 = user` and returns its first row; `None` when
/// there is no row or the secret is NULL.
pub async fn fetch_secret(
    conn: &mut ServerConn,
    query: &str,
    user: &str,
) -> Result<Option<Row>, FetchError> {
    match exchange(conn, query, user).await {
        Ok(r) => r.map_err(FetchError::Query),
        Err(e) => Err(FetchError::Broken(e)),
    }
}

async fn exchange(
    conn: &mut ServerConn,
    query: &str,
    user: &str,
) -> Result<Result<Option<Row>, String>, ServerError> {
    let mut out = BytesMut::new();
    frontend::write_parse(&mut out, "", query, &[]);
    let mut rest = BytesMut::new();
    rest.put_i16(0); // parameters in text
    rest.put_i16(1);
    rest.put_i32(user.len() as i32);
    rest.put_slice(user.as_bytes());
    rest.put_i16(0); // results in text
    frontend::write_bind(&mut out, "", "", &rest);
    // The columns' names: where `rolcanlogin` is, if anywhere.
    frontend::write_target(&mut out, b'D', b'P', "");
    crate::protocol::backend::put_message(&mut out, b'E', |b| {
        b.put_u8(0);
        b.put_i32(0);
    });
    frontend::sync(&mut out);
    conn.send(&out).await?;

    let mut can_login_at = None;
    let mut row: Option<Option<Row>> = None;
    let mut error = None;
    loop {
        let (tag, body) = conn.read_message().await?;
        match tag {
            b'T' => can_login_at = column_named(&body, CAN_LOGIN)?,
            b'D' if row.is_none() && error.is_none() => match read_row(&body, can_login_at)? {
                Ok(v) => row = Some(v),
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
        None => Ok(row.flatten()),
    })
}

/// The index of the column called `name` in a RowDescription.
fn column_named(body: &[u8], name: &[u8]) -> Result<Option<usize>, ServerError> {
    let mut r = Reader::new(body);
    let n = r.i16()?;
    for i in 0..n.max(0) as usize {
        let start = r.remaining();
        r.skip_cstr()?;
        let field = &start[..start.len() - r.remaining().len() - 1];
        r.bytes(18)?; // table, column, type, size, modifier, format
        if field == name {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

/// A DataRow as the lookup reads it: the second value (the secret) and the
/// `rolcanlogin` one at `can_login_at`. A row with fewer than two columns
/// is the query's mistake, named in the error.
fn read_row(
    body: &[u8],
    can_login_at: Option<usize>,
) -> Result<Result<Option<Row>, String>, ServerError> {
    let mut r = Reader::new(body);
    let n = r.i16()?;
    if n < 2 {
        return Ok(Err(format!(
            "the query returned {n} column(s); it must return two: the name and rolpassword"
        )));
    }
    let mut values = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = r.i32()?;
        values.push((len >= 0).then(|| r.bytes(len as usize)).transpose()?);
    }
    let Some(secret) = values[1] else {
        return Ok(Ok(None));
    };
    // A value that is not clearly true (NULL included) may not log in.
    let can_login = can_login_at.is_none_or(|i| {
        values
            .get(i)
            .copied()
            .flatten()
            .is_some_and(|v| crate::router::is_on(&String::from_utf8_lossy(v)))
    });
    Ok(Ok(Some(Row {
        secret: String::from_utf8_lossy(secret).into_owned(),
        can_login,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::backend::put_cstr;

    fn row_description(names: &[&str]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i16(names.len() as i16);
        for name in names {
            put_cstr(&mut b, name);
            b.put_slice(&[0; 18]);
        }
        b
    }

    fn data_row(values: &[Option<&str>]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
        b
    }

    fn read(names: &[&str], values: &[Option<&str>]) -> Option<(String, bool)> {
        let at = column_named(&row_description(names), CAN_LOGIN).unwrap();
        let row = read_row(&data_row(values), at).unwrap().unwrap();
        row.map(|r| (r.secret, r.can_login))
    }

    #[test]
    fn reads_the_secret_and_the_right_to_log_in_by_its_column_name() {
        let two = ["rolname", "rolpassword"];
        let three = ["rolname", "rolpassword", "rolcanlogin"];
        assert_eq!(
            read(&two, &[Some("u"), Some("s")]),
            Some(("s".into(), true))
        );
        assert_eq!(read(&two, &[Some("u"), None]), None);
        assert_eq!(
            read(&three, &[Some("u"), Some("s"), Some("t")]),
            Some(("s".into(), true))
        );
        assert_eq!(
            read(&three, &[Some("u"), Some("s"), Some("f")]),
            Some(("s".into(), false))
        );
        assert_eq!(
            read(&three, &[Some("u"), Some("s"), None]),
            Some(("s".into(), false))
        );
        // Other columns are not read as the right to log in.
        let other = ["rolname", "rolpassword", "rolvaliduntil"];
        assert_eq!(
            read(&other, &[Some("u"), Some("s"), Some("infinity")]),
            Some(("s".into(), true))
        );
        let first = ["rolcanlogin", "rolpassword", "rolname"];
        assert_eq!(
            read(&first, &[Some("f"), Some("s"), Some("u")]),
            Some(("s".into(), false))
        );
        assert!(read_row(&data_row(&[Some("u")]), None).unwrap().is_err());
    }
}
