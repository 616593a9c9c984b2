//! SCRAM-SHA-256, both sides, fed arbitrary messages: no panic, and no
//! message but the honest one authenticates.
//!
//! Input: a mode byte, then pieces (see `Pieces`). `%N` in a piece stands for
//! the nonce the other side chose, so the fuzzer gets past the nonce checks.
//! - server: client-first and client-final from the input, against a
//!   secret whose password the input does not know; the mode byte's higher
//!   bits say whether the connection is TLS (SCRAM-SHA-256-PLUS offered) and
//!   which mechanism the client took;
//! - client: server-first and server-final from the input (iteration counts
//!   above 16 are skipped: the client allows up to 10 million, seconds of
//!   PBKDF2 that the fuzzer would only report as hangs, and even PostgreSQL's
//!   4096 cost milliseconds, a hundred times the rest of an execution);
//! - tamper: an honest exchange whose client-final the input changes in
//!   place: the server must refuse anything but the honest bytes, and the
//!   honest client must accept the honest server-final;
//! - stored passwords and secrets (`users.toml` values): parse, and a parsed
//!   secret prints back to itself; a password checked against them (secrets
//!   of more than 16 iterations are not checked, as above).

use pgrouter::auth::{verify_cleartext, ScramClient, ScramSecret, ScramServer, StoredPassword};
use pgrouter_fuzz::Pieces;

const PASSWORD: &str = "pencil";
/// PBKDF2 rounds the client may be asked for here (see the module comment).
const MAX_FUZZ_ITERATIONS: u64 = 16;

fn main() {
    afl::fuzz_nohook!(|data: &[u8]| check(data));
}

fn check(data: &[u8]) {
    let mut input = Pieces::new(data);
    let mode = input.byte();
    match mode % 4 {
        0 => server(&mut input, mode / 4 % 3),
        1 => client(&mut input),
        2 => tamper(&mut input),
        _ => stored(&mut input),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `r=` value of a SCRAM message.
fn nonce_of(message: &str) -> &str {
    message
        .split(',')
        .find_map(|f| f.strip_prefix("r="))
        .unwrap_or("")
}

fn secret() -> ScramSecret {
    ScramSecret::from_password(PASSWORD, b"fuzz-salt", 2)
}

/// A made-up certificate hash: the TLS connection's channel binding data.
const END_POINT: [u8; 32] = [0x5a; 32];

/// `binding`: 0 plain TCP (SCRAM-SHA-256 only), 1 TLS and the client took
/// SCRAM-SHA-256, 2 TLS and SCRAM-SHA-256-PLUS.
fn server(input: &mut Pieces, binding: u8) {
    let mut server = ScramServer::new(secret());
    if binding > 0 {
        server = server.bind_to(Some(END_POINT.as_slice().into()));
        let mechanism = server.mechanisms()[usize::from(binding == 1)];
        server.choose(mechanism).expect("an offered mechanism");
    }
    let client_first = input.piece();
    let Ok(server_first) = server.server_first(client_first) else {
        // A failed step ends the exchange.
        assert!(
            server.server_final(input.rest()).is_err(),
            "a refused exchange went on"
        );
        return;
    };
    assert!(server_first.starts_with("r="), "{server_first}");
    let client_final = text(input.rest()).replace("%N", nonce_of(&server_first));
    // The proof needs the password's keys, which the input cannot hold:
    // the only way through would be a forged proof.
    let result = server.server_final(client_final.as_bytes());
    assert!(
        result.is_err(),
        "{client_final:?} authenticated without the password"
    );
    assert!(
        server.server_final(client_final.as_bytes()).is_err(),
        "a finished exchange went on"
    );
}

fn client(input: &mut Pieces) {
    let password = text(input.piece());
    let mut client = ScramClient::new(&password);
    let first = client.client_first();
    let server_first = text(input.piece()).replace("%N", nonce_of(&first));
    let too_many = server_first
        .split(',')
        .filter_map(|f| f.strip_prefix("i="))
        .any(|n| {
            n.bytes().all(|b| b.is_ascii_digit())
                && n.parse::<u64>().map_or(true, |n| n > MAX_FUZZ_ITERATIONS)
        });
    if too_many {
        return;
    }
    let server_final = input.rest();
    match client.client_final(server_first.as_bytes()) {
        Ok(client_final) => {
            assert!(client_final.starts_with("c=biws,r="), "{client_final}");
            // Only a server that knows the password can sign.
            if client.verify_server_final(server_final).is_ok() {
                panic!(
                    "server-final {:?} accepted without the password's keys",
                    text(server_final)
                );
            }
        }
        Err(_) => assert!(
            client.verify_server_final(server_final).is_err(),
            "signature check before the proof"
        ),
    }
    assert!(
        client.client_final(server_first.as_bytes()).is_err(),
        "server-first taken twice"
    );
}

fn tamper(input: &mut Pieces) {
    let mut server = ScramServer::new(secret());
    let mut client = ScramClient::new(PASSWORD);
    let server_first = server
        .server_first(client.client_first().as_bytes())
        .expect("honest client-first");
    let honest = client
        .client_final(server_first.as_bytes())
        .expect("honest server-first");
    let mut changed = honest.clone().into_bytes();
    // Pairs of (position, xor) bytes.
    let edits = input.rest();
    for e in edits.chunks(2) {
        if let [at, x] = *e {
            let at = at as usize % changed.len();
            changed[at] ^= x;
        }
    }
    let result = server.server_final(&changed);
    if changed == honest.as_bytes() {
        let server_final = result.expect("the honest proof authenticates");
        client
            .verify_server_final(server_final.as_bytes())
            .expect("the honest server signature verifies");
    } else {
        assert!(
            result.is_err(),
            "tampered client-final {:?} authenticated",
            text(&changed)
        );
    }
}

fn stored(input: &mut Pieces) {
    let user = text(input.piece());
    let stored = text(input.piece());
    let password = text(input.rest());
    if let Some(secret) = ScramSecret::parse(&stored) {
        let again = ScramSecret::parse(&secret.to_postgres_string());
        assert!(
            again.as_ref() == Some(&secret),
            "a secret does not print back to itself"
        );
        if u64::from(secret.iterations) > MAX_FUZZ_ITERATIONS {
            return;
        }
    }
    let kind = StoredPassword::parse(&stored);
    let ok = verify_cleartext(&kind, &user, &password);
    if let StoredPassword::Plain(p) = &kind {
        assert_eq!(ok, *p == password);
    }
}
