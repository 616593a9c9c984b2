//! The wire decoders a client (and a server) can feed arbitrary bytes to:
//! no panic, and what they accept makes sense.
//!
//! Input: a connection's bytes as the router reads them. First the untagged
//! startup packets (SSLRequest, GSSENCRequest, CancelRequest,
//! StartupMessage with its `options` parameter), fed in the growing chunks a
//! socket delivers, exactly as `client::read_startup` does; then tagged
//! messages cut by `next_frame`, each body decoded by every decoder that
//! applies to its tag: Query (also as an admin console command), Parse,
//! Bind, Describe/Close, the password and SASL messages, and the server
//! messages the router reads (ErrorResponse, NoticeResponse,
//! Authentication*, ParameterStatus). What a decoder accepts must encode
//! back to the same bytes where an encoder exists.

use bytes::BytesMut;
use pgrouter::admin::command;
use pgrouter::client::params::parse_options;
use pgrouter::protocol::startup::{parse_startup, StartupPacket, MAX_STARTUP_LEN};
use pgrouter::protocol::{backend, frontend, next_frame};

/// A small maximum lets the fuzzer reach the oversize branch too.
const MAX_MESSAGE: usize = 1 << 12;

fn main() {
    afl::fuzz_nohook!(|data: &[u8]| check(data));
}

fn check(data: &[u8]) {
    let mut at = 0;
    // Startup packets, at most a few (the router reads until a StartupMessage).
    for _ in 0..4 {
        let buf = &data[at..];
        // A socket delivers bytes in pieces: every prefix must give "need
        // more" or the same answer as the whole.
        let whole = parse_startup(buf);
        for cut in [0, 1, 4, 7, buf.len() / 2] {
            if let Ok(Some(_)) = parse_startup(&buf[..cut.min(buf.len())]) {
                assert!(
                    matches!(whole, Ok(Some(_))),
                    "a prefix parses, the whole does not"
                );
            }
        }
        match whole {
            Ok(Some((packet, len))) => {
                assert!(
                    (8..=MAX_STARTUP_LEN).contains(&len) && len <= buf.len(),
                    "startup length {len}"
                );
                at += len;
                if let StartupPacket::Startup { params, .. } = packet {
                    for (name, value) in &params {
                        if name == "options" {
                            parse_options(value);
                        }
                    }
                    // The same parameters encode to the same packet.
                    let pairs: Vec<(&str, &str)> = params
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    let mut out = BytesMut::new();
                    frontend::startup_message(&mut out, &pairs);
                    if let Ok(Some((StartupPacket::Startup { params: again, .. }, n))) =
                        parse_startup(&out)
                    {
                        assert_eq!((again, n), (params, out.len()));
                    }
                    break;
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    // Tagged messages.
    while at < data.len() {
        let buf = &data[at..];
        match next_frame(buf, MAX_MESSAGE) {
            Ok(Some(frame)) => {
                assert!(
                    frame.total_len >= 5
                        && frame.total_len <= buf.len()
                        && frame.total_len <= MAX_MESSAGE + 1
                );
                message(frame.tag, frame.body(buf));
                at += frame.total_len;
            }
            Ok(None) | Err(_) => break,
        }
    }
}

fn message(tag: u8, body: &[u8]) {
    match tag {
        b'Q' => {
            if let Ok(sql) = frontend::parse_query(body) {
                for statement in command::split_statements(sql) {
                    let _ = command::parse(&statement);
                }
            }
        }
        b'P' => {
            if let Ok(p) = frontend::parse_parse(body) {
                let mut out = BytesMut::new();
                frontend::write_parse(&mut out, p.name, p.sql, &p.param_types);
                let again = frontend::parse_parse(&out[5..]).expect("a Parse we wrote parses");
                assert_eq!(again, p);
            }
        }
        b'B' => {
            if let Ok(b) = frontend::parse_bind_names(body) {
                let mut out = BytesMut::new();
                frontend::write_bind(&mut out, b.portal, b.statement, b.rest);
                assert_eq!(&out[5..], body, "Bind with renamed nothing changed");
            }
        }
        b'D' | b'C' => {
            if let Ok((kind, name)) = frontend::parse_target(body) {
                let mut out = BytesMut::new();
                frontend::write_target(&mut out, tag, kind, name);
                assert_eq!(frontend::parse_target(&out[5..]).ok(), Some((kind, name)));
            }
        }
        b'p' => {
            let _ = frontend::parse_password(body);
            if let Ok((mechanism, data)) = frontend::parse_sasl_initial(body) {
                let mut out = BytesMut::new();
                frontend::sasl_initial_response(&mut out, mechanism, data);
                assert_eq!(
                    frontend::parse_sasl_initial(&out[5..]).ok(),
                    Some((mechanism, data))
                );
            }
        }
        // What a server sends and the router reads.
        b'E' | b'N' => {
            let _ = backend::parse_error_fields(body);
        }
        b'R' => {
            let _ = backend::parse_auth_request(body);
        }
        b'S' => {
            if let Ok((name, value)) = backend::parse_parameter_status(body) {
                let mut out = BytesMut::new();
                backend::parameter_status(&mut out, name, value);
                assert_eq!(
                    backend::parse_parameter_status(&out[5..]).ok(),
                    Some((name, value))
                );
            }
        }
        _ => {}
    }
}
