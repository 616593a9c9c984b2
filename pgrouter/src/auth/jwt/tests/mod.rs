//! Tests for JWT verification. Keys are the test-only pairs under
//! `testdata/` (generated once with openssl); tokens are signed here with
//! jsonwebtoken. JWKS tests serve a key set from a tiny local HTTP server.

mod claims;
mod jwks;
mod pem_keys;
mod recheck;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::keys::{classify_spki, read_tlv, KeyKind};
use super::{JwtError, JwtSettings, JwtVerifier};

pub const RSA_PRIV: &str = include_str!("../testdata/rsa_private.pem");
pub const RSA_PUB: &str = include_str!("../testdata/rsa_public.pem");
pub const RSA_PUB_PKCS1: &str = include_str!("../testdata/rsa_public_pkcs1.pem");
pub const RSA2_PRIV: &str = include_str!("../testdata/rsa2_private.pem");
pub const RSA2_PUB: &str = include_str!("../testdata/rsa2_public.pem");
pub const EC256_PRIV: &str = include_str!("../testdata/ec256_private.pem");
pub const EC256_PUB: &str = include_str!("../testdata/ec256_public.pem");
pub const EC256_CERT: &str = include_str!("../testdata/ec256_cert.pem");
pub const EC384_PRIV: &str = include_str!("../testdata/ec384_private.pem");
pub const EC384_PUB: &str = include_str!("../testdata/ec384_public.pem");
pub const ED_PRIV: &str = include_str!("../testdata/ed25519_private.pem");
pub const ED_PUB: &str = include_str!("../testdata/ed25519_public.pem");

/// Every asymmetric algorithm, for tests that are not about the allow-list.
pub fn all_algs() -> Vec<String> {
    [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn der(pem_text: &str) -> Vec<u8> {
    ::pem::parse(pem_text).unwrap().into_contents()
}

/// The signing key for a private key PEM (PKCS#1 for RSA, PKCS#8 otherwise).
fn encoding_key(private_pem: &str, alg: Algorithm) -> EncodingKey {
    let d = der(private_pem);
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => EncodingKey::from_rsa_der(&d),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_der(&d),
        Algorithm::EdDSA => EncodingKey::from_ed_der(&d),
        _ => panic!("not an asymmetric algorithm"),
    }
}

/// Signs `claims` with `alg` and the given private key.
pub fn sign(alg: Algorithm, private_pem: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &encoding_key(private_pem, alg)).unwrap()
}

/// RS256 with the main test key, no kid.
pub fn rs256(claims: &Value) -> String {
    sign(Algorithm::RS256, RSA_PRIV, None, claims)
}

/// Valid claims for user `alice`, expiring in 5 minutes.
pub fn base_claims() -> Value {
    json!({ "sub": "alice", "exp": now() + 300 })
}

/// `base_claims` with `extra` merged in (a null value removes the claim).
pub fn claims_with(extra: Value) -> Value {
    let mut c = base_claims();
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A unique temp file holding `contents`.
pub fn temp_file(contents: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "pgrouter-jwt-test-{}-{}.pem",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, contents).unwrap();
    path
}

/// A verifier for the public key `public_pem`; `tweak` adjusts settings.
pub async fn pem_verifier(public_pem: &str, tweak: impl FnOnce(&mut JwtSettings)) -> JwtVerifier {
    try_pem_verifier(public_pem, tweak).await.unwrap()
}

pub async fn try_pem_verifier(
    public_pem: &str,
    tweak: impl FnOnce(&mut JwtSettings),
) -> Result<JwtVerifier, String> {
    let path = temp_file(public_pem);
    let mut s = JwtSettings {
        public_key_file: path.to_string_lossy().into_owned(),
        algorithms: all_algs(),
        ..JwtSettings::default()
    };
    tweak(&mut s);
    // The key is read at construction; the file is not needed afterwards.
    let v = JwtVerifier::new(s).await.map_err(|e| e.to_string());
    let _ = std::fs::remove_file(path);
    v
}

/// The JWK (public parts) for a public key PEM, with `kid` and optional `alg`.
pub fn jwk(public_pem: &str, kid: Option<&str>, alg: Option<&str>) -> Value {
    let spki = der(public_pem);
    let (kind, material) = classify_spki(&spki).unwrap();
    let mut v = match kind {
        KeyKind::Rsa => {
            // RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
            let (_, seq, _) = read_tlv(material).unwrap();
            let (_, n, rest) = read_tlv(seq).unwrap();
            let (_, e, _) = read_tlv(rest).unwrap();
            let strip = |i: &[u8]| b64(i.strip_prefix(&[0u8]).unwrap_or(i));
            json!({ "kty": "RSA", "n": strip(n), "e": strip(e) })
        }
        KeyKind::EcP256 | KeyKind::EcP384 => {
            let coord = (material.len() - 1) / 2;
            let crv = if kind == KeyKind::EcP256 {
                "P-256"
            } else {
                "P-384"
            };
            json!({
                "kty": "EC", "crv": crv,
                "x": b64(&material[1..1 + coord]), "y": b64(&material[1 + coord..]),
            })
        }
        KeyKind::Ed25519 => json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(material) }),
    };
    if let Some(kid) = kid {
        v["kid"] = json!(kid);
    }
    if let Some(alg) = alg {
        v["alg"] = json!(alg);
    }
    v["use"] = json!("sig");
    v
}

#[test]
fn verifier_is_send_sync() {
    fn assert<T: Send + Sync + 'static>() {}
    assert::<JwtVerifier>();
    assert::<JwtError>();
}

#[test]
fn display_names_the_cause_in_spec_words() {
    let cases = [
        (JwtError::Expired, "expired"),
        (JwtError::NotYetValid, "not yet valid"),
        (JwtError::Signature, "signature"),
        (JwtError::UnknownKey, "unknown key"),
        (
            JwtError::KeysUnavailable("connection refused".into()),
            "unknown key",
        ),
        (JwtError::Issuer, "issuer"),
        (JwtError::Audience, "audience"),
        (JwtError::Algorithm, "algorithm"),
        (JwtError::UserMismatch, "user does not match"),
        (JwtError::MissingClaim("exp".into()), "missing claim"),
        (JwtError::RoleNotAllowed("admin".into()), "role not allowed"),
        (JwtError::Malformed("not a JWT".into()), "malformed"),
    ];
    for (err, word) in cases {
        assert_eq!(err.reason(), word);
        let text = err.to_string();
        assert!(text.starts_with("token "), "{text}");
        assert!(text.contains(word), "{text} should contain {word}");
    }
    assert_eq!(JwtError::Expired.to_string(), "token expired");
    assert_eq!(
        JwtError::Signature.to_string(),
        "token signature is invalid"
    );
    assert_eq!(
        JwtError::MissingClaim("exp".into()).to_string(),
        "token missing claim \"exp\""
    );
    // Fetch details stay in the log.
    assert!(!JwtError::KeysUnavailable("10.0.0.1 refused".into())
        .to_string()
        .contains("10.0"));
    // Token-supplied text is sanitised and capped.
    let shown = JwtError::RoleNotAllowed(format!("x\r\n{}", "y".repeat(500))).to_string();
    assert!(!shown.contains('\n') && shown.len() < 120, "{shown}");
}

#[test]
fn settings_from_config() {
    let cfg = pgrouter_config::Jwt {
        jwks_url: "https://idp.example/jwks".into(),
        issuer: "https://idp.example".into(),
        allowed_roles: vec!["reader".into()],
        leeway_s: 5,
        ..pgrouter_config::Jwt::default()
    };
    let s = JwtSettings::from(&cfg);
    assert_eq!(s.jwks_url, cfg.jwks_url);
    assert_eq!(s.issuer, cfg.issuer);
    assert_eq!(s.allowed_roles, vec!["reader".to_string()]);
    assert_eq!(s.leeway_s, 5);
    assert_eq!(s.username_claim, "sub");
    assert_eq!(s.role_claim, "role");
    assert_eq!(s.jwks_cache_ttl_s, 300);
    assert_eq!(s.jwks_min_refresh_interval_s, 10);
    assert_eq!(s.algorithms, cfg.algorithms);
}
