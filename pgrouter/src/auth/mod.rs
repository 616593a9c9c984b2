//! Authentication primitives: SCRAM-SHA-256 (both sides), MD5 and cleartext.
//!
//! The primitives are pure computation on byte strings; the protocol code
//! (reading `SASLInitialResponse`, sending `AuthenticationSASLContinue`, ...)
//! lives elsewhere. The submodules that do I/O are the checks that ask
//! someone else: `jwt` (JWKS fetch), `auth_query` (PostgreSQL's stored
//! secret) and `jit` (the token API). Every parser accepts arbitrary bytes from the network and
//! reports problems as [`AuthError`] instead of panicking.
//!
//! ## Password normalisation
//! PostgreSQL runs passwords through SASLprep (RFC 4013) before SCRAM hashing,
//! and falls back to the raw bytes when SASLprep fails; so does the router,
//! for every password it hashes itself (see [`saslprep`]). SCRAM exchanges
//! in which the client proves its password need nothing: the client
//! prepared it.

pub mod auth_query;
pub mod http_tcp;
pub mod jit;
pub mod jwt;
pub mod md5;
pub mod pass_through;
pub mod saslprep;
pub mod scram;

pub use scram::{ScramClient, ScramSecret, ScramServer};

use sha2::{Digest, Sha256};

/// Why an authentication step failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The peer sent something that is not a valid message at this point.
    #[error("malformed authentication message: {0}")]
    Malformed(&'static str),
    /// The exchange was well formed but the password is wrong.
    #[error("password authentication failed")]
    BadPassword,
    /// The server could not prove it knows the password (client side).
    #[error("server signature mismatch")]
    BadServerSignature,
    /// A valid feature we do not implement (authzid, extensions, ...).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// SCRAM-SHA-256-PLUS: the client bound its proof to another TLS
    /// connection's certificate than ours, so someone is in between.
    #[error("SCRAM channel binding check failed")]
    ChannelBindingMismatch,
    /// The client could bind (gs2 flag `y`) but believes the server cannot,
    /// although SCRAM-SHA-256-PLUS was offered: someone in between removed
    /// it from the offer (RFC 5802 section 6). PostgreSQL's message.
    #[error("SCRAM channel binding negotiation error")]
    ChannelBindingDowngrade,
    /// SCRAM-SHA-256-PLUS with a channel binding type other than
    /// tls-server-end-point, the only one PostgreSQL has. Its message.
    #[error("unsupported SCRAM channel-binding type \"{0}\"")]
    UnsupportedChannelBinding(String),
    /// Client side, answering from keys recovered from a client's proof:
    /// the server's salt or iteration count is not the one of the secret
    /// the client proved, so the server holds another password for the
    /// user (changed since, different on this server, or none at all: an
    /// expired role gets a made-up salt from PostgreSQL).
    #[error(
        "the server's SCRAM salt or iteration count differs from the secret the client logged \
         in with (the password differs on this server, or has expired)"
    )]
    SecretDiffers,
}

/// What users.toml stores as a password.
///
/// `Debug` is implemented by hand so secrets never end up in logs.
#[derive(Clone, PartialEq, Eq)]
pub enum StoredPassword {
    /// The cleartext password.
    Plain(String),
    /// `"md5"` followed by 32 lowercase hex digits of md5(password + user).
    Md5(String),
    /// A SCRAM-SHA-256 secret as found in `pg_authid.rolpassword`.
    Scram(ScramSecret),
}

impl StoredPassword {
    /// Classifies a stored password the way PostgreSQL does
    /// (`get_password_type`): a valid SCRAM secret, else `md5` + 32 hex
    /// digits, else plaintext. Unlike PostgreSQL, upper-case hex digits are
    /// accepted (and lower-cased) because hand-edited config files may
    /// contain them, and the md5 response is computed over lowercase hex.
    pub fn parse(s: &str) -> StoredPassword {
        if let Some(secret) = ScramSecret::parse(s) {
            return StoredPassword::Scram(secret);
        }
        if let Some(hex) = s.strip_prefix("md5") {
            if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return StoredPassword::Md5(format!("md5{}", hex.to_ascii_lowercase()));
            }
        }
        StoredPassword::Plain(s.to_owned())
    }
}

impl std::fmt::Debug for StoredPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoredPassword::Plain(_) => f.write_str("Plain(<redacted>)"),
            StoredPassword::Md5(_) => f.write_str("Md5(<redacted>)"),
            StoredPassword::Scram(s) => write!(f, "Scram({s:?})"),
        }
    }
}

/// Verifies a cleartext password (from a `PasswordMessage`) against any
/// stored kind: plain compares directly, md5 recomputes md5(password + user),
/// SCRAM re-derives the keys with the secret's salt and iteration count.
/// All comparisons are constant-time.
pub fn verify_cleartext(stored: &StoredPassword, user: &str, password: &str) -> bool {
    match stored {
        // Hash both sides first so the comparison does not leak the length
        // of the stored password.
        StoredPassword::Plain(p) => ct_eq(&Sha256::digest(p), &Sha256::digest(password)),
        StoredPassword::Md5(hash) => {
            let expected = md5::md5_password_hash(user, password);
            ct_eq(expected.as_bytes(), hash.to_ascii_lowercase().as_bytes())
        }
        StoredPassword::Scram(secret) => {
            let derived = ScramSecret::from_password(password, &secret.salt, secret.iterations);
            // Both keys must match; evaluate both to keep timing uniform.
            let a = ct_eq(&derived.stored_key, &secret.stored_key);
            let b = ct_eq(&derived.server_key, &secret.server_key);
            a & b
        }
    }
}

/// [`verify_cleartext`] without stalling the event loop: a SCRAM secret's
/// key derivation runs on tokio's blocking pool.
pub async fn verify_cleartext_off_loop(
    stored: &StoredPassword,
    user: &str,
    password: &str,
) -> bool {
    if !matches!(stored, StoredPassword::Scram(_)) {
        return verify_cleartext(stored, user, password);
    }
    let (stored, user, password) = (stored.clone(), user.to_string(), password.to_string());
    derive_off_loop(move || verify_cleartext(&stored, &user, &password)).await
}

/// Runs a key derivation (thousands of HMAC rounds: milliseconds of CPU)
/// on tokio's blocking pool, so that one login does not stall the other
/// clients served by the same worker's event loop.
///
/// At most one derivation per core runs at a time: a burst of logins
/// queues (fairly) instead of starting a thread each, all of which would
/// finish late together and time out together.
pub async fn derive_off_loop<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    static DERIVATIONS: std::sync::LazyLock<tokio::sync::Semaphore> =
        std::sync::LazyLock::new(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            tokio::sync::Semaphore::new(cores)
        });
    // The semaphore is never closed, so acquiring cannot fail.
    let _permit = DERIVATIONS.acquire().await.ok();
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only when the runtime shuts down, and the login with it.
            Err(e) => panic!("key derivation task lost: {e}"),
        },
    }
}

/// Constant-time equality for secrets. Lengths are not secret (proofs and
/// hashes have fixed sizes), so a length mismatch returns early.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        // black_box keeps the optimiser from turning this into an early exit.
        diff = std::hint::black_box(diff | (x ^ y));
    }
    diff == 0
}

/// hyper-util's error Display is terse ("client error (Connect)"); the
/// chain of causes says e.g. "connection refused" or "invalid peer
/// certificate: UnknownIssuer" (JWKS fetches and JIT API calls).
pub(crate) fn describe_http_error(e: hyper_util::client::legacy::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn key_derivation_runs_beside_the_event_loop() {
        let loop_thread = std::thread::current().id();
        let (thread, ok) = derive_off_loop(|| {
            let secret = ScramSecret::from_password("secret", b"salt", 4096);
            let stored = StoredPassword::Scram(secret);
            (
                std::thread::current().id(),
                verify_cleartext(&stored, "u", "secret"),
            )
        })
        .await;
        assert_ne!(thread, loop_thread);
        assert!(ok);
        let stored = StoredPassword::Scram(ScramSecret::from_password("secret", b"salt", 16));
        assert!(verify_cleartext_off_loop(&stored, "u", "secret").await);
        assert!(!verify_cleartext_off_loop(&stored, "u", "Secret").await);
    }

    #[test]
    fn ct_eq_basics() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }

    #[test]
    fn parse_classifies() {
        let scram = ScramSecret::from_password("secret", b"0123456789abcdef", 4096);
        assert_eq!(
            StoredPassword::parse(&scram.to_postgres_string()),
            StoredPassword::Scram(scram)
        );
        let md5 = "md553f48b7c4b76a86ce72276c5755f217d";
        assert_eq!(StoredPassword::parse(md5), StoredPassword::Md5(md5.into()));
        assert_eq!(
            StoredPassword::parse("md553F48B7C4B76A86CE72276C5755F217D"),
            StoredPassword::Md5(md5.into())
        );
        for plain in [
            "",
            "hunter2",
            "md5",
            "md5xyz",
            "md553f48b7c4b76a86ce72276c5755f217",
            "SCRAM-SHA-256$x",
        ] {
            assert_eq!(
                StoredPassword::parse(plain),
                StoredPassword::Plain(plain.into())
            );
        }
    }

    #[test]
    fn cleartext_against_every_kind() {
        let user = "postgres";
        let kinds = [
            StoredPassword::Plain("secret".into()),
            StoredPassword::Md5(md5::md5_password_hash(user, "secret")),
            StoredPassword::Scram(ScramSecret::from_password("secret", b"salt", 16)),
        ];
        for stored in &kinds {
            assert!(verify_cleartext(stored, user, "secret"), "{stored:?}");
            assert!(!verify_cleartext(stored, user, "Secret"), "{stored:?}");
            assert!(!verify_cleartext(stored, user, ""), "{stored:?}");
        }
        // md5 hashes are salted with the user name.
        assert!(!verify_cleartext(&kinds[1], "other", "secret"));
    }

    #[test]
    fn debug_redacts() {
        let s = format!("{:?}", StoredPassword::Plain("hunter2".into()));
        assert!(!s.contains("hunter2"));
        let secret = ScramSecret::from_password("x", b"salt", 1);
        let s = format!("{:?}", StoredPassword::Scram(secret.clone()));
        assert!(!s.contains(&secret.to_postgres_string()));
    }
}
