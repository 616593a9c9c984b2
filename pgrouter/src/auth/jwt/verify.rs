//! The token checks that do not depend on where keys come from: header
//! pre-checks, signature + time/issuer/audience validation via jsonwebtoken,
//! and the pgrouter-specific claims (user, role, read-only).

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::error::JwtError;
use super::keys::VerifyKey;
use super::settings::JwtSettings;
use super::VerifiedToken;

/// Tokens longer than this are refused before any decoding work. Most JWTs
/// are under 8 KiB, but tokens carrying many group or permission claims
/// grow well past 16 KiB, so the limit is the login message's (a token
/// arrives as the password message, at most 64 KiB — PostgreSQL's own limit
/// for it): whatever the client could send is verified. Decoding and
/// hashing 64 KiB takes microseconds.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;
/// Larger leeways are clamped: jsonwebtoken computes `now - leeway` in u64,
/// and a year of skew is already meaningless.
pub const MAX_LEEWAY_S: u64 = 365 * 24 * 3600;

/// What the verifier reads from the (still unverified) header.
pub struct Header {
    pub alg: Algorithm,
    pub kid: Option<String>,
}

/// Decodes the header and checks `alg` against the allow-list before any
/// key is looked up. Done by hand rather than with
/// `jsonwebtoken::decode_header` because that fails on `"alg": "none"` with
/// a JSON error, and SPEC wants such a token refused as "algorithm".
pub fn parse_header(token: &str, allowed: &[Algorithm]) -> Result<Header, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed("too long".into()));
    }
    let parts: Vec<&str> = token.split('.').collect();
    match parts.len() {
        3 => {}
        5 => {
            return Err(JwtError::Malformed(
                "encrypted tokens (JWE) are not supported".into(),
            ))
        }
        _ => return Err(JwtError::Malformed("not a JWT".into())),
    }
    let raw = URL_SAFE_NO_PAD
        .decode(parts[0])
        .map_err(|_| JwtError::Malformed("header is not base64url".into()))?;
    let header: Map<String, Value> = serde_json::from_slice(&raw)
        .map_err(|_| JwtError::Malformed("header is not a JSON object".into()))?;
    if header.contains_key("crit") {
        // RFC 7515 §4.1.11: unknown critical extensions must be refused, and
        // we understand none.
        return Err(JwtError::Malformed("unsupported critical header".into()));
    }
    let alg_name = match header.get("alg") {
        Some(Value::String(s)) => s.as_str(),
        _ => return Err(JwtError::Malformed("header has no alg".into())),
    };
    let alg = match alg_name.parse::<Algorithm>() {
        Ok(alg) if allowed.contains(&alg) => alg,
        _ => {
            tracing::debug!(alg = alg_name, "JWT refused: algorithm not allowed");
            return Err(JwtError::Algorithm);
        }
    };
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(JwtError::Malformed("kid is not a string".into())),
    };
    Ok(Header { alg, kid })
}

/// Whether a password has the shape of a JWT: three base64url segments
/// whose first decodes to a JSON object with an `alg`. For `auth =
/// "password_or_jwt"`: decide which check applies without verifying
/// anything (an ordinary password essentially never has this shape).
pub fn looks_like_jwt(password: &str) -> bool {
    let mut parts = password.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    if password.len() > MAX_TOKEN_LEN {
        return false;
    }
    URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|raw| serde_json::from_slice::<Map<String, Value>>(&raw).ok())
        .is_some_and(|h| h.get("alg").is_some_and(Value::is_string))
}

/// The jsonwebtoken validation for tokens signed with `alg`. Every default
/// that matters is set explicitly (see ARCHITECTURE.md): leeway, nbf, which
/// claims must be present, and `validate_aud = false` when no audience is
/// configured (otherwise any token carrying `aud` would be refused).
pub fn validation_for(alg: Algorithm, s: &JwtSettings) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = s.leeway_s.min(MAX_LEEWAY_S);
    v.validate_exp = true;
    v.validate_nbf = true;
    v.reject_tokens_expiring_in_less_than = 0;
    // exp is always required: a token that never expires cannot be revoked
    // by waiting, so refusing it is the safer default.
    let mut required = vec!["exp"];
    if !s.issuer.is_empty() {
        v.set_issuer(&[&s.issuer]);
        required.push("iss");
    }
    if s.audience.is_empty() {
        v.validate_aud = false;
    } else {
        v.validate_aud = true;
        v.set_audience(&[&s.audience]);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    v.sub = None;
    v
}

/// Verifies signature, exp/nbf, iss and aud; returns the claims.
pub fn decode(
    token: &str,
    key: &VerifyKey,
    validation: &Validation,
) -> Result<Map<String, Value>, JwtError> {
    match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
        Ok(data) => Ok(data.claims),
        Err(e) => {
            let err = map_error(e.kind());
            tracing::debug!(error = %e, kid = ?key.kid, "JWT refused: {}", err.reason());
            Err(err)
        }
    }
}

/// The claims of a token whose signature was verified at login and whose
/// key is not at hand now (JWKS endpoint down since): `iss` and `aud`
/// checked as [`validation_for`] has jsonwebtoken check them, nothing else.
pub fn unverified_claims(token: &str, s: &JwtSettings) -> Result<Map<String, Value>, JwtError> {
    let claims: Map<String, Value> =
        jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|e| map_error(e.kind()))?;
    if !s.issuer.is_empty() {
        match claims.get("iss") {
            Some(Value::String(iss)) if *iss == s.issuer => {}
            None => return Err(JwtError::MissingClaim("iss".into())),
            Some(_) => return Err(JwtError::Issuer),
        }
    }
    if !s.audience.is_empty() {
        let fits = |v: &Value| v.as_str() == Some(s.audience.as_str());
        match claims.get("aud") {
            Some(Value::Array(auds)) if auds.iter().any(fits) => {}
            Some(aud) if fits(aud) => {}
            None => return Err(JwtError::MissingClaim("aud".into())),
            Some(_) => return Err(JwtError::Audience),
        }
    }
    Ok(claims)
}

fn map_error(kind: &ErrorKind) -> JwtError {
    match kind {
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
        ErrorKind::InvalidSignature => JwtError::Signature,
        ErrorKind::InvalidIssuer => JwtError::Issuer,
        ErrorKind::InvalidAudience => JwtError::Audience,
        ErrorKind::InvalidSubject => JwtError::UserMismatch,
        ErrorKind::MissingRequiredClaim(c) => JwtError::MissingClaim(c.clone()),
        ErrorKind::InvalidClaimFormat(c) => {
            JwtError::Malformed(format!("claim \"{c}\" is not a NumericDate"))
        }
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => JwtError::Algorithm,
        // The key cannot verify anything (bad JWK material, key too small
        // for aws-lc): for the client that is a signature that does not
        // verify; the log has the detail.
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Provider(_) => JwtError::Signature,
        ErrorKind::Base64(_) => JwtError::Malformed("not base64url".into()),
        ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            JwtError::Malformed("payload is not a JSON object".into())
        }
        _ => JwtError::Malformed("not a JWT".into()),
    }
}

/// Applies the pgrouter claim rules to already-verified claims.
pub fn check_claims(
    claims: &Map<String, Value>,
    user: &str,
    s: &JwtSettings,
    allowed_roles: &HashSet<String>,
) -> Result<VerifiedToken, JwtError> {
    let username = match claims.get(&s.username_claim) {
        Some(Value::String(name)) => name,
        // Absent, or not a string (e.g. a numeric `sub`): no usable name.
        _ => return Err(JwtError::MissingClaim(s.username_claim.clone())),
    };
    if username != user {
        tracing::debug!(claim = %s.username_claim, token_user = %username, user, "JWT refused: user does not match");
        return Err(JwtError::UserMismatch);
    }
    let role = if s.role_claim.is_empty() {
        username.clone()
    } else {
        match claims.get(&s.role_claim) {
            None | Some(Value::Null) => username.clone(),
            Some(Value::String(role)) if !role.is_empty() => role.clone(),
            // An empty or non-string role cannot name a PostgreSQL role;
            // falling back to the username would hide an issuer bug.
            Some(_) => return Err(JwtError::MissingClaim(s.role_claim.clone())),
        }
    };
    if let Some(why) = unusable_role(&role) {
        tracing::debug!(
            role,
            why,
            "JWT refused: role cannot be applied with SET ROLE"
        );
        return Err(JwtError::RoleNotAllowed(role));
    }
    if !allowed_roles.is_empty() && !allowed_roles.contains(&role) {
        tracing::debug!(role, "JWT refused: role not in allowed_roles");
        return Err(JwtError::RoleNotAllowed(role));
    }
    let read_only = !s.read_only_claim.is_empty()
        && read_only_value(claims.get(&s.read_only_claim).unwrap_or(&Value::Null));
    let expires_at = claims.get("exp").and_then(numeric_date);
    Ok(VerifiedToken {
        username: username.clone(),
        role,
        read_only,
        expires_at,
    })
}

/// PostgreSQL keeps the first 63 bytes of an identifier (NAMEDATALEN - 1)
/// and drops the rest, with only a notice.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// Why a role (from the claim, or the username fallback) cannot be the
/// session's role, or `None` when it can. Every transaction runs under
/// `SET ROLE "<role>"`, and three kinds of value do not name a role there:
/// - "none": PostgreSQL's `check_role` compares the value itself, so even
///   the quoted `SET ROLE "none"` means `SET ROLE NONE` — the session would
///   run as the connect_as user. (Other spellings such as "NONE" stay
///   quoted role names and are looked up like any other.)
/// - a NUL byte: it would end the query string inside the protocol message
///   and break every statement with a protocol error.
/// - more than 63 bytes: PostgreSQL would apply the first 63, which may be
///   the name of another role.
///
/// The username needs no such check: it equals the startup user, which is
/// read from NUL-terminated strings and never reaches SQL.
fn unusable_role(role: &str) -> Option<&'static str> {
    if role == "none" {
        Some("\"none\" means SET ROLE NONE in PostgreSQL")
    } else if role.contains('\0') {
        Some("contains a NUL byte")
    } else if role.len() > MAX_IDENTIFIER_BYTES {
        Some("is longer than 63 bytes: PostgreSQL would cut it to another role's name")
    } else {
        None
    }
}

/// Whether a read-only claim value makes the session read-only. Fails
/// closed: read-write only for the values that clearly mean "no" — an
/// absent or null claim, JSON `false`, the number 0, and the strings
/// PostgreSQL's boolean input reads as false; anything else (true, 1, "on",
/// "yes", but also "maybe", `[]` or `{}`) is read-only, so an issuer that
/// spells "true" differently never grants writes by accident.
fn read_only_value(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !pg_false(s),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// Whether PostgreSQL's boolean input (`parse_bool`, after trimming
/// whitespace as `boolin` does) reads `s` as false: any prefix of "false"
/// or "no", "of"/"off", or "0", case-insensitive.
fn pg_false(s: &str) -> bool {
    let s = s
        .trim_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b')
        .to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| s.len() >= min && word.starts_with(s.as_str());
    prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || s == "0"
}

/// A NumericDate (seconds since the epoch, possibly fractional) as a time.
fn numeric_date(v: &Value) -> Option<SystemTime> {
    let secs = v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f.round() as u64)
    })?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}
