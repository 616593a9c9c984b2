//! What the verifier needs from `[jwt]` (SPEC §3), decoupled from the config
//! crate so tests can build it directly and the session-level settings
//! (`connect_as`, `databases`, ...) stay out of this module.

/// Verification settings; see SPEC §3 `[jwt]` for each field's meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// PEM public key file (RSA, EC P-256/P-384 or Ed25519); "" in JWKS mode.
    pub public_key_file: String,
    /// http(s) URL of a JWKS; "" in PEM mode.
    pub jwks_url: String,
    /// How long a fetched key set counts as fresh.
    pub jwks_cache_ttl_s: u64,
    /// Minimum spacing of JWKS fetch attempts (unknown `kid`, expiry, retries).
    pub jwks_min_refresh_interval_s: u64,
    /// Allowed `alg` values; "none" and HS* are refused by [`super::JwtVerifier::new`].
    pub algorithms: Vec<String>,
    /// Required `iss` when non-empty.
    pub issuer: String,
    /// Required member of `aud` when non-empty.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
    /// Claim holding the login name; must equal the startup user.
    pub username_claim: String,
    /// Claim naming the PostgreSQL role; "" = the role is always the username.
    pub role_claim: String,
    /// Claim that makes the session read-only when true; "" = off.
    pub read_only_claim: String,
    /// Roles a token may name; empty = any.
    pub allowed_roles: Vec<String>,
}

impl Default for JwtSettings {
    /// SPEC §3 defaults, with neither key source set.
    fn default() -> Self {
        JwtSettings {
            public_key_file: String::new(),
            jwks_url: String::new(),
            jwks_cache_ttl_s: 300,
            jwks_min_refresh_interval_s: 10,
            algorithms: vec!["RS256".into(), "ES256".into()],
            issuer: String::new(),
            audience: String::new(),
            leeway_s: 0,
            username_claim: "sub".into(),
            role_claim: "role".into(),
            read_only_claim: String::new(),
            allowed_roles: Vec::new(),
        }
    }
}

impl From<&pgrouter_config::Jwt> for JwtSettings {
    fn from(j: &pgrouter_config::Jwt) -> Self {
        JwtSettings {
            public_key_file: j.public_key_file.clone(),
            jwks_url: j.jwks_url.clone(),
            jwks_cache_ttl_s: j.jwks_cache_ttl_s,
            jwks_min_refresh_interval_s: j.jwks_min_refresh_interval_s,
            algorithms: j.algorithms.clone(),
            issuer: j.issuer.clone(),
            audience: j.audience.clone(),
            leeway_s: j.leeway_s,
            username_claim: j.username_claim.clone(),
            role_claim: j.role_claim.clone(),
            read_only_claim: j.read_only_claim.clone(),
            allowed_roles: j.allowed_roles.clone(),
        }
    }
}
