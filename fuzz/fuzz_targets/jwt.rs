//! JWT login: tokens, JWKS documents, PEM key files and claims from
//! arbitrary bytes: no panic, and no token verifies without a signature made
//! with the key.
//!
//! Input: a mode byte, then
//! - 0: a key byte and a token, verified as a login of user `app` against the
//!   test RSA, EC P-256 or Ed25519 public key (every asymmetric algorithm
//!   allowed, issuer and audience required), plus the `password_or_jwt`
//!   shape test;
//! - 1: a JWKS document, as fetched from an identity provider;
//! - 2: the text of a `public_key_file`;
//! - 3: a settings byte and a claims object, through pgrouter's claim rules.

use std::sync::OnceLock;

use pgrouter::auth::jwt::{fuzz, looks_like_jwt, JwtSettings, JwtVerifier};
use pgrouter_fuzz::Pieces;

const KEYS: [&[u8]; 3] = [
    include_bytes!("../../pgrouter/src/auth/jwt/testdata/rsa_public.pem"),
    include_bytes!("../../pgrouter/src/auth/jwt/testdata/ec256_public.pem"),
    include_bytes!("../../pgrouter/src/auth/jwt/testdata/ed25519_public.pem"),
];
const USER: &str = "app";

fn main() {
    afl::fuzz_nohook!(|data: &[u8]| check(data));
}

fn settings() -> JwtSettings {
    JwtSettings {
        algorithms: [
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        issuer: "https://issuer.test".into(),
        audience: "pgrouter".into(),
        leeway_s: 30,
        read_only_claim: "read_only".into(),
        ..JwtSettings::default()
    }
}

fn verifiers() -> &'static [JwtVerifier] {
    static VERIFIERS: OnceLock<Vec<JwtVerifier>> = OnceLock::new();
    VERIFIERS.get_or_init(|| {
        KEYS.iter()
            .map(|pem| fuzz::pem_verifier(pem, settings()).expect("test key"))
            .collect()
    })
}

fn check(data: &[u8]) {
    let mut input = Pieces::new(data);
    match input.byte() % 4 {
        0 => {
            let verifier = &verifiers()[input.byte() as usize % KEYS.len()];
            let token = String::from_utf8_lossy(input.rest());
            looks_like_jwt(&token);
            if let Ok(verified) = fuzz::verify_now(verifier, &token, USER) {
                // Only the seeds signed with the test keys get here; whatever
                // the fuzzer changes must break the signature.
                assert_eq!(verified.username, USER);
                let signed = |t: &str| t.rsplit_once('.').map(|(signed, _)| signed.to_string());
                assert!(
                    seeds_signed()
                        .iter()
                        .any(|seed| signed(seed.trim()) == signed(&token)),
                    "{token:?} verified"
                );
            }
        }
        1 => {
            let _ = fuzz::jwks_document(input.rest());
        }
        2 => {
            let _ = fuzz::pem_key(input.rest());
        }
        _ => {
            let flags = input.byte();
            let mut s = settings();
            if flags & 1 != 0 {
                s.role_claim = String::new();
            }
            if flags & 2 != 0 {
                s.allowed_roles = vec!["app".into(), "reader".into()];
            }
            if flags & 4 != 0 {
                s.username_claim = "preferred_username".into();
            }
            if let Some(Ok(verified)) = fuzz::claims(input.rest(), USER, &s) {
                assert_eq!(verified.username, USER);
                assert!(s.allowed_roles.is_empty() || s.allowed_roles.contains(&verified.role));
            }
        }
    }
}

/// The tokens of the committed corpus signed with the test keys
/// (`fuzz/fixtures/token-*.txt`, also in the corpus), which are allowed to verify.
fn seeds_signed() -> &'static [&'static str] {
    &[
        include_str!("../fixtures/token-rs256.txt"),
        include_str!("../fixtures/token-es256.txt"),
        include_str!("../fixtures/token-eddsa.txt"),
    ]
}
