//! Frontend messages: writers for what the router sends to servers, and typed
//! views of the client messages the router must understand.

use bytes::{BufMut, BytesMut};

use super::backend::{put_cstr, put_message};
use super::reader::Reader;
use super::ProtocolError;

/// Protocol 3.0 as a startup code.
pub const PROTOCOL_3_0: i32 = 196_608;

pub fn startup_message(out: &mut BytesMut, params: &[(&str, &str)]) {
    let len_at = out.len();
    out.put_i32(0);
    out.put_i32(PROTOCOL_3_0);
    for (k, v) in params {
        put_cstr(out, k);
        put_cstr(out, v);
    }
    out.put_u8(0);
    let len = (out.len() - len_at) as i32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn password_message(out: &mut BytesMut, password: &str) {
    put_message(out, b'p', |b| put_cstr(b, password));
}

pub fn sasl_initial_response(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    put_message(out, b'p', |b| {
        put_cstr(b, mechanism);
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    });
}

pub fn sasl_response(out: &mut BytesMut, data: &[u8]) {
    put_message(out, b'p', |b| b.put_slice(data));
}

pub fn query(out: &mut BytesMut, sql: &str) {
    put_message(out, b'Q', |b| put_cstr(b, sql));
}

pub fn terminate(out: &mut BytesMut) {
    put_message(out, b'X', |_| {});
}

pub fn cancel_request(out: &mut BytesMut, pid: i32, secret: i32) {
    out.put_i32(16);
    out.put_i32(80_877_102);
    out.put_i32(pid);
    out.put_i32(secret);
}

/// The body of a SASLInitialResponse: mechanism and its data.
pub fn parse_sasl_initial(body: &[u8]) -> Result<(&str, &[u8]), ProtocolError> {
    let mut r = Reader::new(body);
    let mech = r.cstr()?;
    let len = r.i32()?;
    let data = if len < 0 { &[][..] } else { r.bytes(len as usize)? };
    Ok((mech, data))
}

/// The body of a PasswordMessage holding a cleartext or md5 password.
pub fn parse_password(body: &[u8]) -> Result<&str, ProtocolError> {
    Reader::new(body).cstr()
}

/// The SQL text of a simple Query message.
pub fn parse_query(body: &[u8]) -> Result<&str, ProtocolError> {
    Reader::new(body).cstr()
}
