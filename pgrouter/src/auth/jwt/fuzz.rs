//! Entry points for the fuzz target `fuzz/fuzz_targets/jwt.rs`: every parser
//! that a client (the token) or an identity provider (the JWKS document)
//! feeds. Not part of the API; nothing in pgrouter calls these.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use serde_json::{Map, Value};

use super::{
    jwks, keys, verify, JwtError, JwtSettings, JwtVerifier, KeyKind, KeySource, VerifiedToken,
};

/// Parses a JWKS document as a fetch would (Ok when it has a usable key).
pub fn jwks_document(body: &[u8]) -> Result<(), String> {
    jwks::parse_set(body).map(drop)
}

/// Parses a `public_key_file`'s text.
pub fn pem_key(text: &[u8]) -> Result<KeyKind, String> {
    keys::from_pem(text).map(|key| key.kind)
}

/// A verifier over the PEM public key `pem`, as [`JwtVerifier::new`] builds
/// it from `public_key_file` (without reading a file).
pub fn pem_verifier(pem: &[u8], settings: JwtSettings) -> Result<JwtVerifier, String> {
    let algorithms = super::parse_algorithms(&settings.algorithms)?;
    let key = keys::from_pem(pem)?;
    let validations = algorithms
        .iter()
        .map(|&a| (a, verify::validation_for(a, &settings)))
        .collect();
    let allowed_roles = settings.allowed_roles.iter().cloned().collect();
    Ok(JwtVerifier {
        settings,
        source: KeySource::Pem(Arc::new(key)),
        algorithms,
        validations,
        allowed_roles,
    })
}

/// [`JwtVerifier::verify`] on a PEM verifier, which never waits.
pub fn verify_now(
    verifier: &JwtVerifier,
    token: &str,
    user: &str,
) -> Result<VerifiedToken, JwtError> {
    let mut future = std::pin::pin!(verifier.verify(token, user));
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("verifying with a PEM key waited"),
    }
}

/// The pgrouter claim rules on a claims object given as JSON text (None
/// when it is not a JSON object).
pub fn claims(
    json: &[u8],
    user: &str,
    settings: &JwtSettings,
) -> Option<Result<VerifiedToken, JwtError>> {
    let claims: Map<String, Value> = serde_json::from_slice(json).ok()?;
    let allowed: HashSet<String> = settings.allowed_roles.iter().cloned().collect();
    Some(verify::check_claims(&claims, user, settings, &allowed))
}
