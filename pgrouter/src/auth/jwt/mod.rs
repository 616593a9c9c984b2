//! JWT login (SPEC §5 "JWT login"): verifies a token sent as the password
//! and extracts the username, role and read-only flag.
//!
//! Checks, in order (the first failure is reported):
//! 1. Shape and header: a compact JWS; `alg` must be in the allow-list.
//!    `none` and HS256/384/512 can never be in it ([`JwtVerifier::new`]
//!    refuses them), so an HMAC token "signed" with the public key bytes —
//!    the key-confusion attack — fails as "algorithm".
//! 2. Key: the PEM key, or the JWKS key named by `kid` (see [`jwks`]); the
//!    header `alg` must fit the key type (and the JWK's own `alg`).
//! 3. Signature, then `exp` (always required: a token without `exp` is
//!    refused as missing claim "exp" — the safer default) and `nbf`, both
//!    with `leeway_s`, then `iss` (required and equal when `issuer` is set)
//!    and `aud` (required and containing `audience` when set).
//! 4. The username claim equals the startup user; the role claim (or the
//!    username when absent) can be applied with `SET ROLE` (not "none", no
//!    NUL byte) and is in `allowed_roles` when that is non-empty; the
//!    read-only claim fails closed: any value but absent/null, `false`, 0 or
//!    a string PostgreSQL reads as false makes the session read-only.
//!
//! Signature checks take microseconds and run inline; the only network
//! I/O (JWKS fetches) is async.

mod error;
mod fetch;
#[doc(hidden)]
pub mod fuzz;
mod jwks;
mod keys;
mod settings;
mod verify;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use jsonwebtoken::{Algorithm, Validation};

pub use error::JwtError;
pub use keys::KeyKind;
pub use settings::JwtSettings;
pub use verify::{looks_like_jwt, MAX_TOKEN_LEN};

use jwks::Jwks;
use keys::VerifyKey;

/// A verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The username claim (equal to the startup user).
    pub username: String,
    /// The role claim, or the username when the claim is missing.
    pub role: String,
    /// The read-only claim is set to anything but a false value (see
    /// `verify::read_only_value`).
    pub read_only: bool,
    /// `exp` (for `disconnect_on_expiry`).
    pub expires_at: Option<SystemTime>,
}

/// Where verification keys come from.
enum KeySource {
    Pem(Arc<VerifyKey>),
    Jwks(Arc<Jwks>),
}

/// Verifies JWT logins. Send + Sync; share it in an `Arc`. Build a new one
/// on reload (a JWKS verifier re-fetches its set when built).
pub struct JwtVerifier {
    settings: JwtSettings,
    source: KeySource,
    /// Allow-list, parsed; never contains HMAC algorithms.
    algorithms: Vec<Algorithm>,
    /// A prepared validation per allowed algorithm.
    validations: Vec<(Algorithm, Validation)>,
    allowed_roles: HashSet<String>,
}

impl JwtVerifier {
    /// Loads the PEM key (RSA, EC P-256/P-384 or Ed25519; the type is
    /// detected) or prepares the JWKS cache and fetches the JWKS once. A
    /// failed first fetch is logged, not fatal: later logins retry (at most
    /// once per `jwks_min_refresh_interval_s`). Errors are configuration
    /// problems, worded for the operator and naming the `[jwt]` key.
    pub async fn new(settings: JwtSettings) -> Result<JwtVerifier, JwtConfigError> {
        let algorithms = check_settings(&settings)?;
        if settings.leeway_s > verify::MAX_LEEWAY_S {
            tracing::warn!(
                leeway_s = settings.leeway_s,
                "[jwt] leeway_s is larger than a year; using {}",
                verify::MAX_LEEWAY_S
            );
        }
        let source = match load_pem(&settings, &algorithms)? {
            Some(key) => KeySource::Pem(Arc::new(key)),
            None => KeySource::Jwks(
                Jwks::new(
                    &settings.jwks_url,
                    settings.jwks_cache_ttl_s,
                    settings.jwks_min_refresh_interval_s,
                )
                .await
                .map_err(|e| JwtConfigError::new("jwks_url", e))?,
            ),
        };
        let validations = algorithms
            .iter()
            .map(|&a| (a, verify::validation_for(a, &settings)))
            .collect();
        let allowed_roles = settings.allowed_roles.iter().cloned().collect();
        Ok(JwtVerifier {
            settings,
            source,
            algorithms,
            validations,
            allowed_roles,
        })
    }

    /// Verifies `token` for the startup user `user`.
    pub async fn verify(&self, token: &str, user: &str) -> Result<VerifiedToken, JwtError> {
        let header = verify::parse_header(token, &self.algorithms)?;
        let key = match &self.source {
            KeySource::Pem(key) => key.clone(),
            KeySource::Jwks(jwks) => match jwks.key_for(header.kid.as_deref()).await {
                Ok(key) => key,
                Err(e) => {
                    tracing::debug!(kid = ?header.kid, error = ?e, "JWT refused: no key");
                    return Err(e);
                }
            },
        };
        if !key.accepts(header.alg) {
            tracing::debug!(alg = ?header.alg, key = ?key, "JWT refused: alg does not fit the key");
            return Err(JwtError::Algorithm);
        }
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == header.alg)
            .map(|(_, v)| v)
            .ok_or(JwtError::Algorithm)?;
        let claims = verify::decode(token, &key, validation)?;
        verify::check_claims(&claims, user, &self.settings, &self.allowed_roles)
    }

    /// Checks again, against this verifier's settings and keys, a token
    /// that logged a session in under an earlier configuration (after a
    /// reload): what login would check now, except time (`exp` is
    /// `disconnect_on_expiry`'s business, `nbf` was met at login) and
    /// without any network I/O. The key: the PEM key (a replaced key file
    /// fails the signature check); in JWKS mode the cached key for the
    /// token's `kid` — absent from a fetched set is "unknown key", and with
    /// no set fetched yet (the endpoint is down) the signature checked at
    /// login stands and only the claims are checked again.
    pub fn recheck(&self, token: &str, user: &str) -> Result<VerifiedToken, JwtError> {
        let header = verify::parse_header(token, &self.algorithms)?;
        let key = match &self.source {
            KeySource::Pem(key) => Some(key.clone()),
            KeySource::Jwks(jwks) => jwks.cached_key(header.kid.as_deref())?,
        };
        let claims = match key {
            Some(key) => {
                if !key.accepts(header.alg) {
                    return Err(JwtError::Algorithm);
                }
                let mut validation = self
                    .validations
                    .iter()
                    .find(|(a, _)| *a == header.alg)
                    .map(|(_, v)| v.clone())
                    .ok_or(JwtError::Algorithm)?;
                validation.validate_exp = false;
                validation.validate_nbf = false;
                verify::decode(token, &key, &validation)?
            }
            None => verify::unverified_claims(token, &self.settings)?,
        };
        verify::check_claims(&claims, user, &self.settings, &self.allowed_roles)
    }

    /// (successful, failed) JWKS fetches, for `pgrouter_jwks_fetches_total`;
    /// (0, 0) with a PEM key.
    pub fn jwks_fetches(&self) -> (u64, u64) {
        match &self.source {
            KeySource::Pem(_) => (0, 0),
            KeySource::Jwks(jwks) => jwks.fetches(),
        }
    }

    /// The settings this verifier was built from (lets a reload tell
    /// whether a new verifier is needed).
    pub fn settings(&self) -> &JwtSettings {
        &self.settings
    }
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.source {
            KeySource::Pem(k) => format!(
                "pem {:?} ({})",
                self.settings.public_key_file,
                k.kind.name()
            ),
            KeySource::Jwks(_) => format!("jwks {:?}", self.settings.jwks_url),
        };
        f.debug_struct("JwtVerifier")
            .field("source", &source)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// A `[jwt]` setting the verifier cannot use: the key (as written in
/// router.toml, e.g. "public_key_file") and why. Callers locate it with
/// `pgrouter_config::Config::jwt_problem`, so it is reported with file,
/// line and key like the problems the config crate finds itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfigError {
    pub key: &'static str,
    pub message: String,
}

impl JwtConfigError {
    fn new(key: &'static str, message: impl Into<String>) -> JwtConfigError {
        JwtConfigError {
            key,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for JwtConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[jwt] {}: {}", self.key, self.message)
    }
}

impl std::error::Error for JwtConfigError {}

/// What `pgrouter check` can verify of `[jwt]` without the network: the
/// settings and, in PEM mode, that the key file loads and fits
/// `algorithms` (a JWKS is only fetched by the running router).
pub fn check_offline(settings: &JwtSettings) -> Result<(), JwtConfigError> {
    let algorithms = check_settings(settings)?;
    load_pem(settings, &algorithms).map(|_| ())
}

/// The key file's own problem (unreadable, not a key), whatever the
/// other settings: for `pgrouter check` when the files have problems of
/// their own (those are reported by the config's validation, and whether
/// the key suits `algorithms` is judged once they are fixed).
pub fn check_key_file(settings: &JwtSettings) -> Result<(), JwtConfigError> {
    read_pem(settings).map(|_| ())
}

/// The checks that need no key: the allow-list, the username claim, and
/// exactly one key source. Returns the parsed allow-list.
fn check_settings(settings: &JwtSettings) -> Result<Vec<Algorithm>, JwtConfigError> {
    let algorithms =
        parse_algorithms(&settings.algorithms).map_err(|e| JwtConfigError::new("algorithms", e))?;
    if settings.username_claim.is_empty() {
        return Err(JwtConfigError::new("username_claim", "must not be empty"));
    }
    match (
        settings.public_key_file.is_empty(),
        settings.jwks_url.is_empty(),
    ) {
        (false, true) | (true, false) => Ok(algorithms),
        _ => Err(JwtConfigError::new(
            "public_key_file",
            "set exactly one of public_key_file and jwks_url",
        )),
    }
}

/// Reads and parses `public_key_file`; `None` in JWKS mode. A key that no
/// algorithm of the allow-list can use is refused here rather than making
/// every login fail.
fn load_pem(
    settings: &JwtSettings,
    algorithms: &[Algorithm],
) -> Result<Option<VerifyKey>, JwtConfigError> {
    let Some(key) = read_pem(settings)? else {
        return Ok(None);
    };
    let path = &settings.public_key_file;
    let fail = |msg: String| JwtConfigError::new("public_key_file", msg);
    if !algorithms.iter().any(|a| key.kind.supports(*a)) {
        return Err(fail(format!(
            "{path:?} is an {} key, but no algorithm in algorithms = {:?} can be verified with it",
            key.kind.name(),
            settings.algorithms
        )));
    }
    Ok(Some(key))
}

/// Reads and parses `public_key_file`, whatever the allow-list; `None`
/// in JWKS mode.
fn read_pem(settings: &JwtSettings) -> Result<Option<VerifyKey>, JwtConfigError> {
    let path = &settings.public_key_file;
    if path.is_empty() {
        return Ok(None);
    }
    let fail = |msg: String| JwtConfigError::new("public_key_file", msg);
    let text = std::fs::read(path).map_err(|e| fail(format!("cannot read {path:?}: {e}")))?;
    let key = keys::from_pem(&text).map_err(|e| fail(format!("{path:?}: {e}")))?;
    Ok(Some(key))
}

/// Parses the allow-list. HMAC algorithms and "none" are configuration
/// errors: the router verifies with public keys only, and allowing HS* next
/// to a public key is exactly what the key-confusion attack needs.
fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, String> {
    if names.is_empty() {
        return Err("must not be empty".into());
    }
    let mut out = Vec::new();
    for name in names {
        let alg = match name.parse::<Algorithm>() {
            Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => {
                return Err(format!(
                    "{name} is refused: HMAC needs a shared secret, and pgrouter \
                     verifies with public keys only"
                ))
            }
            Ok(alg) => alg,
            Err(_) if name.eq_ignore_ascii_case("none") => {
                return Err("\"none\" is always refused".into())
            }
            Err(_) => return Err(format!("unknown algorithm {name:?}")),
        };
        if !out.contains(&alg) {
            out.push(alg);
        }
    }
    Ok(out)
}
