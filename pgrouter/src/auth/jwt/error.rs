//! Why a token was refused.
//!
//! The `Display` text is what the client sees in its `28P01` error, so it
//! names the cause in the plain words SPEC §5 lists and never leaks key
//! material or server-side detail (that goes to the log at debug/warn level).

use std::fmt;

/// Why a token was refused. `Display` gives the user-facing cause;
/// [`JwtError::reason`] the bare word for metrics labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// `exp` (plus leeway) is in the past.
    Expired,
    /// `nbf` (minus leeway) is in the future.
    NotYetValid,
    /// The signature does not verify with the selected key.
    Signature,
    /// No configured/fetched key matches the token's `kid`.
    UnknownKey,
    /// `iss` differs from the configured issuer.
    Issuer,
    /// `aud` does not contain the configured audience.
    Audience,
    /// `alg` is `none`, HMAC, not in the allow-list, or does not fit the key.
    Algorithm,
    /// The username claim differs from the startup user.
    UserMismatch,
    /// A required claim is absent (or has an unusable type); holds its name.
    MissingClaim(String),
    /// The role is not in `allowed_roles`; holds the role.
    RoleNotAllowed(String),
    /// The password is not a decodable compact JWS; holds a short cause.
    Malformed(String),
    /// JWKS mode and no key set was ever fetched successfully; holds the
    /// last fetch error (logged, not shown to clients).
    KeysUnavailable(String),
}

impl JwtError {
    /// The bare cause (one of SPEC's words), for metrics labels such as
    /// `pgrouter_jwt_logins_total{result}`. `KeysUnavailable` reports
    /// "unknown key": from the client's point of view no key matched, and
    /// the fetch failures have their own counter.
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not yet valid",
            JwtError::Signature => "signature",
            JwtError::UnknownKey | JwtError::KeysUnavailable(_) => "unknown key",
            JwtError::Issuer => "issuer",
            JwtError::Audience => "audience",
            JwtError::Algorithm => "algorithm",
            JwtError::UserMismatch => "user does not match",
            JwtError::MissingClaim(_) => "missing claim",
            JwtError::RoleNotAllowed(_) => "role not allowed",
            JwtError::Malformed(_) => "malformed",
        }
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::Expired => f.write_str("token expired"),
            JwtError::NotYetValid => f.write_str("token not yet valid"),
            JwtError::Signature => f.write_str("token signature is invalid"),
            JwtError::UnknownKey => f.write_str("token signed by an unknown key"),
            JwtError::KeysUnavailable(_) => {
                f.write_str("token signed by an unknown key (signing keys are unavailable)")
            }
            JwtError::Issuer => f.write_str("token issuer is not accepted"),
            JwtError::Audience => f.write_str("token audience is not accepted"),
            JwtError::Algorithm => f.write_str("token algorithm is not allowed"),
            JwtError::UserMismatch => f.write_str("token user does not match the login user"),
            JwtError::MissingClaim(c) => write!(f, "token missing claim \"{}\"", printable(c)),
            JwtError::RoleNotAllowed(r) => {
                write!(f, "token role not allowed: \"{}\"", printable(r))
            }
            JwtError::Malformed(why) => write!(f, "token malformed: {why}"),
        }
    }
}

impl std::error::Error for JwtError {}

/// Claim names and roles come from the token (attacker-controlled): cap
/// their length and drop control characters before echoing them.
fn printable(s: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(MAX).collect();
    if s.chars().count() > MAX {
        out.push('…');
    }
    out
}
