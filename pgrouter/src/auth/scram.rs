//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL uses it.
//!
//! PostgreSQL specifics:
//! * Channel binding (server side, SCRAM-SHA-256-PLUS): only
//!   `tls-server-end-point` (RFC 5929), offered when the client's connection
//!   is TLS and [`ScramServer::bind_to`] was given the certificate's hash.
//!   The gs2 flag must agree with the mechanism chosen, and `y` ("I could
//!   bind but you cannot") is refused when PLUS was offered, since then
//!   someone removed it from the offer (RFC 5802 section 6). Our client
//!   side (router -> PostgreSQL) does not bind: it sends `n`.
//! * The user name inside SCRAM is ignored (the startup packet already
//!   names the user), so our client sends `n=` and our server skips it.
//! * Authorization identities (`a=`) and mandatory extensions (`m=`) are
//!   refused, as PostgreSQL does.
//! * Passwords go through SASLprep before hashing, falling back to their
//!   raw bytes as PostgreSQL does: see [`crate::auth::saslprep`].
//!
//! Each step parses arbitrary network bytes without panicking. A failed
//! step ends the exchange: calling the next step afterwards is an error.
//!
//! Key derivation costs `iterations` HMAC rounds (4096 by default, a few
//! milliseconds); the router runs [`ScramServer::from_plain`],
//! [`ScramClient::client_final`] and [`ScramSecret::from_password`] through
//! [`crate::auth::derive_off_loop`], on tokio's blocking pool.

use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{ct_eq, AuthError};

/// The SASL mechanism without channel binding.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// The SASL mechanism with channel binding.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The one channel binding type PostgreSQL (and so libpq) uses.
const TLS_SERVER_END_POINT: &str = "tls-server-end-point";

/// Upper bound on the iteration count a server may ask our client for, so a
/// hostile server cannot make us burn minutes of CPU per login.
pub const MAX_ITERATIONS: u32 = 10_000_000;
/// Iteration count for secrets we generate (PostgreSQL's default).
pub const DEFAULT_ITERATIONS: u32 = 4096;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 18;

/// A SCRAM-SHA-256 secret: what the server needs to verify a client
/// without knowing the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl ScramSecret {
    /// Parses PostgreSQL's format
    /// `SCRAM-SHA-256$<iterations>:<salt b64>$<StoredKey b64>:<ServerKey b64>`.
    /// Returns `None` for anything else (including 0 iterations).
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iterations, salt) = iter_salt.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        let iterations = parse_iterations(iterations)?;
        Some(ScramSecret {
            iterations,
            salt: B64.decode(salt).ok()?,
            stored_key: decode_key(stored_key)?,
            server_key: decode_key(server_key)?,
        })
    }

    /// Derives the secret from a password. An iteration count of 0 is
    /// treated as 1 (PBKDF2 needs at least one round).
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Self {
        let iterations = iterations.max(1);
        let keys = Keys::derive(password, salt, iterations);
        ScramSecret {
            iterations,
            salt: salt.to_vec(),
            stored_key: keys.stored,
            server_key: keys.server,
        }
    }

    /// The `pg_authid.rolpassword` representation, inverse of [`Self::parse`].
    pub fn to_postgres_string(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

impl std::fmt::Debug for ScramSecret {
    /// Keys are redacted: StoredKey+ServerKey let anyone impersonate the server.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// What the router needs to answer a server's SCRAM challenge for a user
/// whose password it never saw (auth_query pass-through): the ClientKey
/// recovered from the client's proof, and the secret's ServerKey, salt and
/// iteration count. Valid for any server that stores the same secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    pub client_key: [u8; 32],
    pub server_key: [u8; 32],
    pub salt: Vec<u8>,
    pub iterations: u32,
}

impl ScramKeys {
    /// Keys from a cleartext password and an existing secret's salt and
    /// iteration count (they match the secret only if the password does).
    pub fn from_password(password: &str, secret: &ScramSecret) -> Self {
        let keys = Keys::derive(password, &secret.salt, secret.iterations);
        ScramKeys {
            client_key: keys.client,
            server_key: keys.server,
            salt: secret.salt.clone(),
            iterations: secret.iterations,
        }
    }
}

impl std::fmt::Debug for ScramKeys {
    /// Redacted: the ClientKey is as good as the password for logging in.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramKeys")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// The three keys of RFC 5802 section 3.
#[derive(Clone)]
struct Keys {
    client: [u8; 32],
    stored: [u8; 32],
    server: [u8; 32],
}

impl Keys {
    /// Every key the router derives from a password comes from here, so
    /// every such password is prepared as PostgreSQL and libpq prepare it.
    fn derive(password: &str, salt: &[u8], iterations: u32) -> Self {
        let password = super::saslprep::prepare(password.as_bytes());
        let salted = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(&password, salt, iterations);
        let client = hmac(&salted, b"Client Key");
        Keys {
            client,
            stored: Sha256::digest(client).into(),
            server: hmac(&salted, b"Server Key"),
        }
    }
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

fn xor32(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x ^ y;
    }
    out
}

fn decode_key(s: &str) -> Option<[u8; 32]> {
    B64.decode(s).ok()?.try_into().ok()
}

/// Strictly decimal digits (no sign, no spaces), at least 1.
fn parse_iterations(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&n| n >= 1)
}

/// RFC 5802 `printable`: %x21-7E except ','.
fn is_printable(s: &str) -> bool {
    s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

fn random_nonce() -> String {
    let mut bytes = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut bytes);
    B64.encode(bytes)
}

fn utf8(bytes: &[u8]) -> Result<&str, AuthError> {
    std::str::from_utf8(bytes).map_err(|_| AuthError::Malformed("SCRAM message is not UTF-8"))
}

/// Value of attribute `name` (`"r="` etc.) or `err`.
fn attr<'a>(field: Option<&'a str>, name: &str, err: &'static str) -> Result<&'a str, AuthError> {
    field
        .and_then(|f| f.strip_prefix(name))
        .ok_or(AuthError::Malformed(err))
}

enum ServerState {
    Initial,
    FirstSent {
        gs2_header: String,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    Done,
}

/// Server side of the exchange (the router authenticating a client).
pub struct ScramServer {
    secret: ScramSecret,
    server_nonce: String,
    state: ServerState,
    /// The `tls-server-end-point` data of the client's TLS connection, when
    /// SCRAM-SHA-256-PLUS is offered (see [`Self::bind_to`]).
    end_point: Option<std::sync::Arc<[u8]>>,
    /// The client chose SCRAM-SHA-256-PLUS (see [`Self::choose`]).
    plus: bool,
    /// Set when the client's proof checked out (see [`Self::recovered_keys`]).
    client_key: Option<[u8; 32]>,
}

/// Secrets already derived from configured cleartext passwords, keyed by the
/// password's SHA-256, so that the PBKDF2 (milliseconds of CPU, on the thread
/// that also serves other clients) runs once per password instead of once
/// per login. PostgreSQL, too, keeps one salted secret per role; like its
/// `pg_authid`, this cache lives only in the server's memory. Cleared when
/// it reaches [`PLAIN_SECRETS_MAX`] entries, so edited configs cannot grow it.
static PLAIN_SECRETS: std::sync::LazyLock<
    parking_lot::Mutex<std::collections::HashMap<[u8; 32], ScramSecret>>,
> = std::sync::LazyLock::new(Default::default);
const PLAIN_SECRETS_MAX: usize = 4096;

fn secret_for_plain(password: &str) -> ScramSecret {
    let key: [u8; 32] = Sha256::digest(password.as_bytes()).into();
    if let Some(secret) = PLAIN_SECRETS.lock().get(&key) {
        return secret.clone();
    }
    // Concurrent first logins with one password derive its secret once.
    let _one_at_a_time = DERIVING.lock();
    if let Some(secret) = PLAIN_SECRETS.lock().get(&key) {
        return secret.clone();
    }
    let mut salt = [0u8; SALT_LEN];
    rand::thread_rng().fill_bytes(&mut salt);
    let secret = ScramSecret::from_password(password, &salt, DEFAULT_ITERATIONS);
    let mut cache = PLAIN_SECRETS.lock();
    if cache.len() >= PLAIN_SECRETS_MAX {
        cache.clear();
    }
    cache.entry(key).or_insert(secret).clone()
}

/// Held while a cache's missing entry is derived (see [`secret_for_plain`]
/// and [`derived_keys`]), so that logins arriving together derive it once.
static DERIVING: parking_lot::Mutex<()> = parking_lot::const_mutex(());

/// Keys derived from the passwords the router itself presents to servers,
/// keyed by the SHA-256 of password, salt and iteration count: a server
/// keeps one salt per role, so each new server connection would otherwise
/// run the same PBKDF2 again. Cleared at [`PLAIN_SECRETS_MAX`] entries.
static CLIENT_KEYS: std::sync::LazyLock<
    parking_lot::Mutex<std::collections::HashMap<[u8; 32], Keys>>,
> = std::sync::LazyLock::new(Default::default);

fn client_keys_key(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(password.as_bytes());
    h.update([0]);
    h.update(salt);
    h.update(iterations.to_be_bytes());
    h.finalize().into()
}

fn derived_keys(password: &str, salt: &[u8], iterations: u32) -> Keys {
    let key = client_keys_key(password, salt, iterations);
    if let Some(keys) = CLIENT_KEYS.lock().get(&key) {
        return keys.clone();
    }
    let _one_at_a_time = DERIVING.lock();
    if let Some(keys) = CLIENT_KEYS.lock().get(&key) {
        return keys.clone();
    }
    let keys = Keys::derive(password, salt, iterations);
    let mut cache = CLIENT_KEYS.lock();
    if cache.len() >= PLAIN_SECRETS_MAX {
        cache.clear();
    }
    cache.entry(key).or_insert(keys).clone()
}

impl ScramServer {
    /// [`Self::from_plain`] when the password's secret is derived already
    /// (no key derivation: fine on the event loop).
    pub fn from_plain_if_derived(password: &str) -> Option<Self> {
        let key: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        let secret = PLAIN_SECRETS.lock().get(&key).cloned()?;
        Some(Self::new(secret))
    }

    /// Starts an exchange against `secret` with a fresh random server nonce.
    pub fn new(secret: ScramSecret) -> Self {
        Self::with_nonce(secret, random_nonce())
    }

    /// For users whose cleartext password is configured: a secret with a
    /// random salt and [`DEFAULT_ITERATIONS`], derived once per password (see
    /// [`secret_for_plain`]).
    pub fn from_plain(password: &str) -> Self {
        Self::new(secret_for_plain(password))
    }

    fn with_nonce(secret: ScramSecret, server_nonce: String) -> Self {
        ScramServer {
            secret,
            server_nonce,
            state: ServerState::Initial,
            end_point: None,
            plus: false,
            client_key: None,
        }
    }

    /// Offers channel binding to the client's TLS connection, whose
    /// certificate hash (RFC 5929 `tls-server-end-point`) is `end_point`;
    /// `None` (plain TCP, Unix socket, or a certificate without one) offers
    /// only SCRAM-SHA-256.
    pub fn bind_to(mut self, end_point: Option<std::sync::Arc<[u8]>>) -> Self {
        self.end_point = end_point;
        self
    }

    /// The mechanisms for `AuthenticationSASL`, preferred first (as
    /// PostgreSQL lists them).
    pub fn mechanisms(&self) -> &'static [&'static str] {
        if self.end_point.is_some() {
            &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
        } else {
            &[SCRAM_SHA_256]
        }
    }

    /// Takes the mechanism the client's `SASLInitialResponse` names; one
    /// that was not offered is refused. Call before [`Self::server_first`].
    pub fn choose(&mut self, mechanism: &str) -> Result<(), AuthError> {
        if !matches!(self.state, ServerState::Initial) || !self.mechanisms().contains(&mechanism) {
            return Err(AuthError::Unsupported(format!(
                "SASL mechanism \"{}\"",
                mechanism.escape_debug()
            )));
        }
        self.plus = mechanism == SCRAM_SHA_256_PLUS;
        Ok(())
    }

    /// client-first-message (the `SASLInitialResponse` data) ->
    /// server-first-message (`AuthenticationSASLContinue` data).
    pub fn server_first(&mut self, client_first: &[u8]) -> Result<String, AuthError> {
        if !matches!(
            std::mem::replace(&mut self.state, ServerState::Done),
            ServerState::Initial
        ) {
            return Err(AuthError::Malformed("unexpected client-first-message"));
        }
        let text = utf8(client_first)?;
        // gs2-header = cbind-flag "," [authzid] ","
        let (flag, rest) = text
            .split_once(',')
            .ok_or(AuthError::Malformed("missing gs2 header"))?;
        self.check_cbind_flag(flag)?;
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(AuthError::Malformed("missing gs2 header"))?;
        if authzid.starts_with("a=") {
            return Err(AuthError::Unsupported(
                "SCRAM authorization identity".into(),
            ));
        } else if !authzid.is_empty() {
            return Err(AuthError::Malformed("invalid gs2 header"));
        }
        // client-first-message-bare = [m=...,] n=user,r=nonce[,extensions]
        let mut fields = bare.split(',');
        let first = fields.next();
        if first.is_some_and(|f| f.starts_with("m=")) {
            return Err(AuthError::Unsupported("SCRAM mandatory extension".into()));
        }
        attr(first, "n=", "missing user name")?; // ignored, like PostgreSQL
        let client_nonce = attr(fields.next(), "r=", "missing client nonce")?;
        if client_nonce.is_empty() || !is_printable(client_nonce) {
            return Err(AuthError::Malformed("invalid client nonce"));
        }
        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&self.secret.salt),
            self.secret.iterations
        );
        self.state = ServerState::FirstSent {
            gs2_header: format!("{flag},{authzid},"),
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok(server_first)
    }

    /// client-final-message -> server-final-message (`v=...`, to send in
    /// `AuthenticationSASLFinal`), or [`AuthError::BadPassword`].
    pub fn server_final(&mut self, client_final: &[u8]) -> Result<String, AuthError> {
        let ServerState::FirstSent {
            gs2_header,
            client_first_bare,
            server_first,
            nonce,
        } = std::mem::replace(&mut self.state, ServerState::Done)
        else {
            return Err(AuthError::Malformed("unexpected client-final-message"));
        };
        let text = utf8(client_final)?;
        // The proof is the last attribute and base64 has no ',' in it.
        let (without_proof, proof) = text
            .rsplit_once(',')
            .ok_or(AuthError::Malformed("missing proof"))?;
        let proof = attr(Some(proof), "p=", "missing proof")?;
        let proof: [u8; 32] = decode_key(proof).ok_or(AuthError::Malformed("invalid proof"))?;

        let mut fields = without_proof.split(',');
        let cbind = attr(fields.next(), "c=", "missing channel binding")?;
        // c= is the gs2 header followed, with channel binding, by the
        // connection's binding data (RFC 5802 section 7, cbind-input).
        let mut expected = gs2_header.into_bytes();
        if let Some(end_point) = self.end_point.as_ref().filter(|_| self.plus) {
            expected.extend_from_slice(end_point);
        }
        match B64.decode(cbind) {
            Ok(c) if c == expected => {}
            _ if self.plus => return Err(AuthError::ChannelBindingMismatch),
            _ => return Err(AuthError::Malformed("channel binding mismatch")),
        }
        if attr(fields.next(), "r=", "missing nonce")? != nonce {
            return Err(AuthError::Malformed("nonce mismatch"));
        }

        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(&self.secret.stored_key, auth_message.as_bytes());
        let client_key = xor32(&proof, &client_signature);
        if !ct_eq(&Sha256::digest(client_key), &self.secret.stored_key) {
            return Err(AuthError::BadPassword);
        }
        self.client_key = Some(client_key);
        let server_signature = hmac(&self.secret.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }

    /// The gs2 cbind-flag must agree with the mechanism chosen, as
    /// PostgreSQL's `read_client_first_message` checks.
    fn check_cbind_flag(&self, flag: &str) -> Result<(), AuthError> {
        match flag {
            "n" | "y" if self.plus => Err(AuthError::Malformed(
                "the client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include \
                 channel binding data",
            )),
            "n" => Ok(()),
            // The client can bind and believes we cannot, yet we offered
            // PLUS: the offer was tampered with on the way.
            "y" if self.end_point.is_some() => Err(AuthError::ChannelBindingDowngrade),
            "y" => Ok(()),
            f => match f.strip_prefix("p=") {
                Some(_) if !self.plus => Err(AuthError::Malformed(
                    "the client selected SCRAM-SHA-256 without channel binding, but the SCRAM \
                     message includes channel binding data",
                )),
                Some(TLS_SERVER_END_POINT) => Ok(()),
                Some(other) => Err(AuthError::UnsupportedChannelBinding(
                    other.escape_debug().to_string(),
                )),
                None => Err(AuthError::Malformed("invalid channel-binding flag")),
            },
        }
    }

    /// After a successful [`Self::server_final`]: the keys that let the
    /// router log in to a server as this client. ClientProof XOR
    /// ClientSignature is the ClientKey, which a correct proof reveals to
    /// whoever holds the StoredKey; with the secret's ServerKey that is all
    /// a SCRAM client needs (the password itself is never known).
    pub fn recovered_keys(&self) -> Option<ScramKeys> {
        self.client_key.map(|client_key| ScramKeys {
            client_key,
            server_key: self.secret.server_key,
            salt: self.secret.salt.clone(),
            iterations: self.secret.iterations,
        })
    }
}

/// Client side (the router logging in to a PostgreSQL server).
pub struct ScramClient {
    /// A password to derive the keys from; used when `keys` is absent or
    /// was made for another salt.
    password: Option<String>,
    /// Keys recovered from a client's login (auth_query pass-through).
    keys: Option<ScramKeys>,
    client_first_bare: String,
    nonce: String,
    /// Set by `client_final`; `None` before it or after a failed attempt.
    server_signature: Option<[u8; 32]>,
    consumed_server_first: bool,
}

impl ScramClient {
    /// Starts an exchange with a fresh random client nonce.
    pub fn new(password: &str) -> Self {
        Self::with_user_and_nonce(password, "", random_nonce())
    }

    /// Starts an exchange answered from recovered keys (see [`ScramKeys`]),
    /// falling back to `password` when the server's salt or iteration count
    /// is not the one the keys were made for.
    pub fn from_keys(keys: Option<ScramKeys>, password: Option<&str>) -> Self {
        let mut client = Self::with_user_and_nonce("", "", random_nonce());
        client.password = password.map(str::to_owned);
        client.keys = keys;
        client
    }

    /// `user` is escaped per RFC 5802 (`=` -> `=3D`, `,` -> `=2C`).
    fn with_user_and_nonce(password: &str, user: &str, nonce: String) -> Self {
        let user = user.replace('=', "=3D").replace(',', "=2C");
        ScramClient {
            password: Some(password.to_owned()),
            keys: None,
            client_first_bare: format!("n={user},r={nonce}"),
            nonce,
            server_signature: None,
            consumed_server_first: false,
        }
    }

    /// The `SASLInitialResponse` data: `n,,n=,r=<nonce>`.
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// server-first-message -> client-final-message. Checks that the server
    /// nonce extends ours and that the iteration count is in
    /// `1..=MAX_ITERATIONS`.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<String, AuthError> {
        if std::mem::replace(&mut self.consumed_server_first, true) {
            return Err(AuthError::Malformed("unexpected server-first-message"));
        }
        let text = utf8(server_first)?;
        let mut fields = text.split(',');
        let first = fields.next();
        if first.is_some_and(|f| f.starts_with("m=")) {
            return Err(AuthError::Unsupported("SCRAM mandatory extension".into()));
        }
        let nonce = attr(first, "r=", "missing nonce")?;
        if !nonce.starts_with(self.nonce.as_str())
            || nonce.len() <= self.nonce.len()
            || !is_printable(nonce)
        {
            return Err(AuthError::Malformed(
                "server nonce does not extend client nonce",
            ));
        }
        let salt = attr(fields.next(), "s=", "missing salt")?;
        let salt = B64
            .decode(salt)
            .map_err(|_| AuthError::Malformed("invalid salt"))?;
        let iterations = attr(fields.next(), "i=", "missing iteration count")?;
        let iterations = parse_iterations(iterations)
            .filter(|&n| n <= MAX_ITERATIONS)
            .ok_or(AuthError::Malformed("invalid iteration count"))?;

        let keys = match (&self.keys, &self.password) {
            (Some(k), _) if k.salt == salt && k.iterations == iterations => Keys {
                client: k.client_key,
                stored: Sha256::digest(k.client_key).into(),
                server: k.server_key,
            },
            (_, Some(password)) => derived_keys(password, &salt, iterations),
            (Some(_), None) => return Err(AuthError::SecretDiffers),
            (None, None) => return Err(AuthError::Unsupported("no password".into())),
        };
        let without_proof = format!("c=biws,r={nonce}"); // biws = base64("n,,")
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let proof = xor32(&keys.client, &hmac(&keys.stored, auth_message.as_bytes()));
        self.server_signature = Some(hmac(&keys.server, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final-message (`AuthenticationSASLFinal` data).
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), AuthError> {
        let expected = self.server_signature.as_ref().ok_or(AuthError::Malformed(
            "server-final-message before server-first-message",
        ))?;
        let text = utf8(server_final)?;
        let first = text.split(',').next();
        if let Some(err) = first.and_then(|f| f.strip_prefix("e=")) {
            return Err(if err == "invalid-proof" {
                AuthError::BadPassword
            } else {
                AuthError::Malformed("server reported a SCRAM error")
            });
        }
        let sig = attr(first, "v=", "missing server signature")?;
        let sig = B64
            .decode(sig)
            .map_err(|_| AuthError::Malformed("invalid server signature"))?;
        if ct_eq(&sig, expected) {
            Ok(())
        } else {
            Err(AuthError::BadServerSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_for_the_routers_own_passwords_are_derived_once() {
        let fresh = Keys::derive("pw-cache-test", b"salt-1", 64);
        let first = derived_keys("pw-cache-test", b"salt-1", 64);
        assert_eq!(first.client, fresh.client);
        assert_eq!(first.server, fresh.server);
        let key = client_keys_key("pw-cache-test", b"salt-1", 64);
        assert!(
            CLIENT_KEYS.lock().contains_key(&key),
            "kept for the next connection"
        );
        let again = derived_keys("pw-cache-test", b"salt-1", 64);
        assert_eq!(again.stored, fresh.stored);
        // Another salt is another entry, with other keys.
        let other = derived_keys("pw-cache-test", b"salt-2", 64);
        assert_ne!(other.client, fresh.client);
    }

    #[test]
    fn a_plain_password_secret_is_known_once_derived() {
        assert!(ScramServer::from_plain_if_derived("plain-cache-test").is_none());
        let _ = ScramServer::from_plain("plain-cache-test");
        assert!(ScramServer::from_plain_if_derived("plain-cache-test").is_some());
    }

    /// Secrets PostgreSQL 15 stored for `CREATE ROLE ... PASSWORD`:
    /// `E'pass\u00ADword\u00A0x'` (SASLprep removes the soft hyphen and maps
    /// the no-break space to a space), and `E'a\u0007b'` (a control
    /// character: SASLprep refuses it, so the raw bytes were hashed).
    const PG_SOFT_HYPHEN: &str = "SCRAM-SHA-256$4096:e6xMFZCxN3OwTCbjNVvwUg==$\
        YlLSIMVbmDqC3vG7Fd7r2rv4+ZLrBtH1GY2mDcg5jhM=:32NJ9CYlv42NuttBvhFZxDanjGKt1ehuyvG23DmJzGc=";
    const PG_CONTROL: &str = "SCRAM-SHA-256$4096:Xlw3ZsdTvKV6GDUSZXChCA==$\
        nhUSbJak6EvgDHYriz4sq0QlR9KmCAZa5AHke/W1bLU=:UlHOkDQhLj13dUL/2IRQtzy/Bl8zTPs+w03mYr9IWG0=";

    #[test]
    fn passwords_are_saslprepped_as_postgres_does() {
        let pg = ScramSecret::parse(PG_SOFT_HYPHEN).unwrap();
        let ours = ScramSecret::from_password("pass\u{AD}word\u{A0}x", &pg.salt, 4096);
        assert!(ours == pg, "the router's secret is PostgreSQL's");
        // The prepared form is what both hash: it proves the same password.
        assert!(ScramSecret::from_password("password x", &pg.salt, 4096) == pg);
        let keys = ScramKeys::from_password("pass\u{AD}word\u{A0}x", &pg);
        assert_eq!(keys.server_key, pg.server_key);
        // A prohibited character: the raw bytes, as PostgreSQL hashed them.
        let pg = ScramSecret::parse(PG_CONTROL).unwrap();
        assert!(ScramSecret::from_password("a\u{7}b", &pg.salt, 4096) == pg);
        assert!(ScramSecret::from_password("ab", &pg.salt, 4096) != pg);
    }

    #[test]
    fn a_plain_password_and_a_client_prepare_alike() {
        // The router's client (to a server storing PostgreSQL's secret) and
        // its server (a users.toml plain password) against libpq-like peers.
        let mut server = ScramServer::new(ScramSecret::parse(PG_SOFT_HYPHEN).unwrap());
        exchange(&mut server, "pass\u{AD}word\u{A0}x").unwrap();
        let mut server = ScramServer::from_plain("saslprep-\u{AD}plain\u{A0}test");
        exchange(&mut server, "saslprep-plain test").unwrap();
        let mut server = ScramServer::from_plain("saslprep-\u{AD}plain\u{A0}test");
        assert!(matches!(
            exchange(&mut server, "saslprep-plain\u{A0}tes"),
            Err(AuthError::BadPassword)
        ));
    }

    /// Runs a full exchange; returns the server's verdict and, on success,
    /// whether the client accepted the server signature.
    fn exchange(server: &mut ScramServer, client_password: &str) -> Result<(), AuthError> {
        let mut client = ScramClient::new(client_password);
        let first = server.server_first(client.client_first().as_bytes())?;
        let fin = client.client_final(first.as_bytes())?;
        let server_final = server.server_final(fin.as_bytes())?;
        client.verify_server_final(server_final.as_bytes())
    }

    /// The router verifies a client against a secret only, then logs in to a
    /// "server" holding the same secret with the recovered keys.
    #[test]
    fn pass_through_with_recovered_keys() {
        let secret = ScramSecret::from_password("pass-through", b"salt-of-server", 4096);
        let mut router = ScramServer::new(secret.clone());
        assert!(router.recovered_keys().is_none());
        exchange(&mut router, "pass-through").unwrap();
        let keys = router.recovered_keys().unwrap();
        assert_eq!(keys, ScramKeys::from_password("pass-through", &secret));

        let mut server = ScramServer::new(secret.clone());
        let mut client = ScramClient::from_keys(Some(keys.clone()), None);
        let first = server
            .server_first(client.client_first().as_bytes())
            .unwrap();
        let fin = client.client_final(first.as_bytes()).unwrap();
        let server_final = server.server_final(fin.as_bytes()).unwrap();
        client.verify_server_final(server_final.as_bytes()).unwrap();

        // A failed client proof recovers nothing.
        let mut router = ScramServer::new(secret.clone());
        assert!(exchange(&mut router, "wrong").is_err());
        assert!(router.recovered_keys().is_none());

        // Another salt on the server: keys cannot answer, a password can.
        let other = ScramSecret::from_password("pass-through", b"other-salt", 4096);
        let mut server = ScramServer::new(other.clone());
        let mut client = ScramClient::from_keys(Some(keys.clone()), None);
        let first = server
            .server_first(client.client_first().as_bytes())
            .unwrap();
        assert!(matches!(
            client.client_final(first.as_bytes()),
            Err(AuthError::SecretDiffers)
        ));
        let mut server = ScramServer::new(other);
        let mut client = ScramClient::from_keys(Some(keys), Some("pass-through"));
        let first = server
            .server_first(client.client_first().as_bytes())
            .unwrap();
        let fin = client.client_final(first.as_bytes()).unwrap();
        server.server_final(fin.as_bytes()).unwrap();
    }

    #[test]
    fn round_trip() {
        exchange(&mut ScramServer::from_plain("secret"), "secret").unwrap();
        assert!(matches!(
            exchange(&mut ScramServer::from_plain("secret"), "wrong"),
            Err(AuthError::BadPassword)
        ));
        // Non-ASCII passwords are raw UTF-8 on both sides.
        exchange(&mut ScramServer::from_plain("pässwörd✓"), "pässwörd✓").unwrap();
    }

    #[test]
    fn plain_passwords_are_derived_once() {
        let a = secret_for_plain("derived-once");
        assert_eq!(secret_for_plain("derived-once").salt, a.salt);
        assert_ne!(secret_for_plain("derived-twice").salt, a.salt);
        exchange(&mut ScramServer::from_plain("derived-once"), "derived-once").unwrap();
        assert!(exchange(
            &mut ScramServer::from_plain("derived-once"),
            "derived-twice"
        )
        .is_err());
    }

    #[test]
    fn secret_string_round_trip() {
        let secret = ScramSecret::from_password("secret", b"0123456789abcdef", 4096);
        let s = secret.to_postgres_string();
        // Computed independently with Python's hashlib/hmac.
        assert_eq!(
            s,
            "SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$bpSY5Ze9NUH+I35LC3gVq+DpBfK46iXBxvhAKqVu9pE=:\
             VpYlBuxyzeCI1KnctrefdljpB1mk3Gp7sBI/t11+NkQ="
        );
        let parsed = ScramSecret::parse(&s).unwrap();
        assert!(parsed == secret);
        exchange(&mut ScramServer::new(parsed.clone()), "secret").unwrap();
        assert!(matches!(
            exchange(&mut ScramServer::new(parsed), "Secret"),
            Err(AuthError::BadPassword)
        ));
    }

    /// `pg_authid.rolpassword` of a role created by PostgreSQL 15 with
    /// `CREATE ROLE alice PASSWORD 'secret'` (password_encryption=scram-sha-256).
    const PG15_SECRET: &str = "SCRAM-SHA-256$4096:jekc36P0eSW9K7gCAekh5Q==$\
        TUJeZzMTCuo6gIOnE2kXX5PaxxQoQs1N9LV7YO9qhPY=:7LhDfPMM88ZKaHry98d9spkeFo25HuVifrIfhI+WuRs=";

    #[test]
    fn real_postgres_secret() {
        let secret = ScramSecret::parse(PG15_SECRET).unwrap();
        assert_eq!(secret.iterations, 4096);
        assert_eq!(secret.to_postgres_string(), PG15_SECRET);
        assert!(ScramSecret::from_password("secret", &secret.salt, 4096) == secret);
        exchange(&mut ScramServer::new(secret.clone()), "secret").unwrap();
        assert!(exchange(&mut ScramServer::new(secret), "secret ").is_err());
    }

    // RFC 7677 section 3.
    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
        p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_server() -> ScramServer {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let secret = ScramSecret::from_password("pencil", &salt, 4096);
        ScramServer::with_nonce(secret, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into())
    }

    #[test]
    fn rfc7677_vector_server() {
        let mut server = rfc_server();
        assert_eq!(
            server.server_first(RFC_CLIENT_FIRST.as_bytes()).unwrap(),
            RFC_SERVER_FIRST
        );
        assert_eq!(
            server.server_final(RFC_CLIENT_FINAL.as_bytes()).unwrap(),
            RFC_SERVER_FINAL
        );
    }

    #[test]
    fn rfc7677_vector_client() {
        let mut client =
            ScramClient::with_user_and_nonce("pencil", "user", "rOprNGfwEbeRWgbNEkqO".into());
        assert_eq!(client.client_first(), RFC_CLIENT_FIRST);
        assert_eq!(
            client.client_final(RFC_SERVER_FIRST.as_bytes()).unwrap(),
            RFC_CLIENT_FINAL
        );
        client
            .verify_server_final(RFC_SERVER_FINAL.as_bytes())
            .unwrap();
        assert!(matches!(
            client.verify_server_final(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(AuthError::BadServerSignature)
        ));
    }

    #[test]
    fn client_first_format() {
        let c = ScramClient::new("x");
        let first = c.client_first();
        let nonce = first.strip_prefix("n,,n=,r=").unwrap();
        assert_eq!(nonce.len(), 24);
        assert!(is_printable(nonce));
        assert_ne!(ScramClient::new("x").client_first(), first);
    }

    fn server_first_err(msg: &[u8]) -> AuthError {
        rfc_server().server_first(msg).unwrap_err()
    }

    #[test]
    fn malformed_client_first() {
        for msg in [
            &b""[..],
            b"n",
            b"n,",
            b"n,,",
            b"x,,n=,r=abc",
            b"n,,r=abc",
            b"n,,n=",
            b"n,,n=,r=",
            b"n,,n=,x=abc",
            b"n,junk,n=,r=abc",
            b"n,,n=,r=a\x01b",
            b"n,,n=,r=\xff",
            b"\xff\xfe",
            // Binding data although SCRAM-SHA-256 (not PLUS) was chosen.
            b"p=tls-server-end-point,,n=,r=abc",
        ] {
            assert!(
                matches!(server_first_err(msg), AuthError::Malformed(_)),
                "{msg:?}"
            );
        }
        for msg in [&b"n,a=bob,n=,r=abc"[..], b"n,,m=x,n=,r=abc"] {
            assert!(
                matches!(server_first_err(msg), AuthError::Unsupported(_)),
                "{msg:?}"
            );
        }
        // "y" (client could bind but thinks we can't) and extensions are fine.
        rfc_server()
            .server_first(b"y,,n=whoever,r=abc,x=ext")
            .unwrap();
    }

    #[test]
    fn y_flag_requires_matching_channel_binding_echo() {
        let mut server = rfc_server();
        let first = server.server_first(b"y,,n=,r=abc").unwrap();
        let nonce = first.split(',').next().unwrap();
        // "c=biws" is base64("n,,") but the client said "y,,".
        let msg = format!("c=biws,{nonce},p={}", B64.encode([0u8; 32]));
        assert!(matches!(
            server.server_final(msg.as_bytes()),
            Err(AuthError::Malformed(_))
        ));
    }

    /// The end-point data of a made-up certificate, and of another one.
    const END_POINT: [u8; 32] = [0x5a; 32];
    const OTHER_END_POINT: [u8; 32] = [0xa5; 32];

    /// A server on a TLS connection whose certificate hash is [`END_POINT`],
    /// with the client's choice of `mechanism` taken.
    fn bound_server(password: &str, mechanism: &str) -> ScramServer {
        let secret = ScramSecret::from_password(password, b"bound-salt", 64);
        let mut server = ScramServer::new(secret).bind_to(Some(END_POINT.as_slice().into()));
        server.choose(mechanism).unwrap();
        server
    }

    /// A client as libpq runs it: gs2 header `gs2`, and in `c=` that header
    /// followed by `cbind_data` (the certificate hash it saw, or nothing).
    /// Returns the server's verdict on the client-final-message.
    fn bound_exchange(
        server: &mut ScramServer,
        password: &str,
        gs2: &str,
        cbind_data: &[u8],
    ) -> Result<String, AuthError> {
        let bare = "n=,r=client-nonce";
        let first = server.server_first(format!("{gs2}{bare}").as_bytes())?;
        let mut fields = first.split(',');
        let nonce = fields.next().unwrap().strip_prefix("r=").unwrap();
        let salt = B64
            .decode(fields.next().unwrap().strip_prefix("s=").unwrap())
            .unwrap();
        let iterations = fields.next().unwrap().strip_prefix("i=").unwrap();
        let keys = Keys::derive(password, &salt, iterations.parse().unwrap());
        let cbind_input = [gs2.as_bytes(), cbind_data].concat();
        let without_proof = format!("c={},r={nonce}", B64.encode(cbind_input));
        let auth_message = format!("{bare},{first},{without_proof}");
        let proof = xor32(&keys.client, &hmac(&keys.stored, auth_message.as_bytes()));
        server.server_final(format!("{without_proof},p={}", B64.encode(proof)).as_bytes())
    }

    const PLUS_GS2: &str = "p=tls-server-end-point,,";

    #[test]
    fn plus_is_offered_first_only_with_binding_data() {
        let secret = || ScramSecret::from_password("pw", b"salt", 16);
        let plain = ScramServer::new(secret());
        assert_eq!(plain.mechanisms(), [SCRAM_SHA_256]);
        let bound = ScramServer::new(secret()).bind_to(Some(END_POINT.as_slice().into()));
        assert_eq!(bound.mechanisms(), [SCRAM_SHA_256_PLUS, SCRAM_SHA_256]);
        // A mechanism not offered is refused.
        assert!(ScramServer::new(secret())
            .choose(SCRAM_SHA_256_PLUS)
            .is_err());
        assert!(ScramServer::new(secret()).choose("SCRAM-SHA-1").is_err());
        assert!(ScramServer::new(secret()).bind_to(None).choose("").is_err());
        ScramServer::new(secret()).choose(SCRAM_SHA_256).unwrap();
    }

    #[test]
    fn plus_checks_the_binding_data_and_the_proof() {
        let mut server = bound_server("pw", SCRAM_SHA_256_PLUS);
        bound_exchange(&mut server, "pw", PLUS_GS2, &END_POINT).unwrap();
        // The proof covers c=, so the keys recovered are the usual ones.
        assert!(server.recovered_keys().is_some());

        // Bound to another certificate: someone terminated TLS in between.
        let mut server = bound_server("pw", SCRAM_SHA_256_PLUS);
        let r = bound_exchange(&mut server, "pw", PLUS_GS2, &OTHER_END_POINT);
        assert!(matches!(r, Err(AuthError::ChannelBindingMismatch)), "{r:?}");
        assert!(server.recovered_keys().is_none());
        // The gs2 header without the data, or the data without the header.
        for (gs2, data) in [(PLUS_GS2, &[][..]), ("", &END_POINT[..])] {
            let mut server = bound_server("pw", SCRAM_SHA_256_PLUS);
            server
                .server_first(b"p=tls-server-end-point,,n=,r=x")
                .unwrap();
            let nonce = format!("r=x{}", server.server_nonce);
            let c = B64.encode([gs2.as_bytes(), data].concat());
            let msg = format!("c={c},{nonce},p={}", B64.encode([0u8; 32]));
            let r = server.server_final(msg.as_bytes());
            assert!(matches!(r, Err(AuthError::ChannelBindingMismatch)), "{r:?}");
        }
        // Right binding, wrong password.
        let mut server = bound_server("pw", SCRAM_SHA_256_PLUS);
        let r = bound_exchange(&mut server, "wrong", PLUS_GS2, &END_POINT);
        assert!(matches!(r, Err(AuthError::BadPassword)), "{r:?}");
    }

    #[test]
    fn the_gs2_flag_must_agree_with_the_mechanism() {
        // PLUS chosen, but no binding in the message.
        for gs2 in ["n,,", "y,,"] {
            let r = bound_exchange(&mut bound_server("pw", SCRAM_SHA_256_PLUS), "pw", gs2, &[]);
            assert!(matches!(r, Err(AuthError::Malformed(_))), "{gs2}: {r:?}");
        }
        // A channel binding type PostgreSQL does not have.
        let r = bound_exchange(
            &mut bound_server("pw", SCRAM_SHA_256_PLUS),
            "pw",
            "p=tls-unique,,",
            &END_POINT,
        );
        assert!(
            matches!(&r, Err(AuthError::UnsupportedChannelBinding(t)) if t == "tls-unique"),
            "{r:?}"
        );
        // SCRAM-SHA-256 chosen although PLUS was offered: fine without
        // binding ("n"), a downgrade with "y", malformed with "p=".
        bound_exchange(&mut bound_server("pw", SCRAM_SHA_256), "pw", "n,,", &[]).unwrap();
        let r = bound_exchange(&mut bound_server("pw", SCRAM_SHA_256), "pw", "y,,", &[]);
        assert!(
            matches!(r, Err(AuthError::ChannelBindingDowngrade)),
            "{r:?}"
        );
        assert_eq!(
            AuthError::ChannelBindingDowngrade.to_string(),
            "SCRAM channel binding negotiation error"
        );
        let r = bound_exchange(
            &mut bound_server("pw", SCRAM_SHA_256),
            "pw",
            PLUS_GS2,
            &END_POINT,
        );
        assert!(matches!(r, Err(AuthError::Malformed(_))), "{r:?}");
        // Without TLS nothing was offered to bind to: "y" is honest.
        let mut server = ScramServer::new(ScramSecret::from_password("pw", b"s", 64));
        server.choose(SCRAM_SHA_256).unwrap();
        bound_exchange(&mut server, "pw", "y,,", &[]).unwrap();
        // The mechanism is chosen once, before the exchange starts.
        let mut server = bound_server("pw", SCRAM_SHA_256_PLUS);
        server
            .server_first(b"p=tls-server-end-point,,n=,r=x")
            .unwrap();
        assert!(server.choose(SCRAM_SHA_256).is_err());
    }

    #[test]
    fn malformed_client_final() {
        let good_proof = "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let nonce = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let cases = [
            String::new(),
            "c=biws".into(),
            format!("c=biws,{nonce}"),
            format!("c=biws,{nonce},p="),
            format!("c=biws,{nonce},p=!!notbase64!!"),
            format!("c=biws,{nonce},p=AAAA"),
            format!("c=biws,r=wrong,{good_proof}"),
            format!("c=eSws,{nonce},{good_proof}"),
            format!("c=@@,{nonce},{good_proof}"),
            format!("{nonce},{good_proof}"),
            format!("c=biws,{good_proof}"),
            good_proof.to_string(),
        ];
        for msg in &cases {
            let mut server = rfc_server();
            server.server_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
            assert!(
                matches!(
                    server.server_final(msg.as_bytes()),
                    Err(AuthError::Malformed(_))
                ),
                "{msg}"
            );
        }
        // A well-formed message with a wrong proof is a bad password.
        let mut server = rfc_server();
        server.server_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        let msg = format!("c=biws,{nonce},p={}", B64.encode([7u8; 32]));
        assert!(matches!(
            server.server_final(msg.as_bytes()),
            Err(AuthError::BadPassword)
        ));
    }

    #[test]
    fn server_steps_out_of_order() {
        let mut server = rfc_server();
        assert!(server.server_final(RFC_CLIENT_FINAL.as_bytes()).is_err());
        let mut server = rfc_server();
        server.server_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        assert!(server.server_first(RFC_CLIENT_FIRST.as_bytes()).is_err());
        // A failed step ends the exchange: the correct final is now refused.
        assert!(server.server_final(RFC_CLIENT_FINAL.as_bytes()).is_err());
        let mut server = rfc_server();
        server.server_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        server.server_final(RFC_CLIENT_FINAL.as_bytes()).unwrap();
        assert!(server.server_final(RFC_CLIENT_FINAL.as_bytes()).is_err());
    }

    fn rfc_client() -> ScramClient {
        ScramClient::with_user_and_nonce("pencil", "user", "rOprNGfwEbeRWgbNEkqO".into())
    }

    #[test]
    fn malformed_server_first() {
        let n = "r=rOprNGfwEbeRWgbNEkqOsrv";
        for msg in [
            String::new(),
            "r=".into(),
            "r=rOprNGfwEbeRWgbNEkqO,s=c2FsdA==,i=1".into(), // nonce not extended
            "r=someoneelse,s=c2FsdA==,i=1".into(),
            "r=rOprNGfw,s=c2FsdA==,i=1".into(),
            n.to_string(),
            format!("{n},s=c2FsdA=="),
            format!("{n},s=!!,i=1"),
            format!("{n},i=1,s=c2FsdA=="),
            format!("{n},s=c2FsdA==,i="),
            format!("{n},s=c2FsdA==,i=0"),
            format!("{n},s=c2FsdA==,i=-1"),
            format!("{n},s=c2FsdA==,i=+5"),
            format!("{n},s=c2FsdA==,i= 5"),
            format!("{n},s=c2FsdA==,i=10000001"),
            format!("{n},s=c2FsdA==,i=4294967295"),
            format!("{n},s=c2FsdA==,i=99999999999999999999999"),
            format!("{n}\u{1},s=c2FsdA==,i=1"),
        ] {
            let r = rfc_client().client_final(msg.as_bytes());
            assert!(matches!(r, Err(AuthError::Malformed(_))), "{msg}: {r:?}");
        }
        let r = rfc_client().client_final(b"m=ext,r=rOprNGfwEbeRWgbNEkqOsrv,s=c2FsdA==,i=1");
        assert!(matches!(r, Err(AuthError::Unsupported(_))));
        assert!(rfc_client().client_final(b"\xff").is_err());
        // Trailing extensions are ignored.
        rfc_client()
            .client_final(format!("{n},s=c2FsdA==,i=1,x=y").as_bytes())
            .unwrap();
    }

    #[test]
    fn malformed_server_final() {
        let fresh = rfc_client();
        assert!(fresh
            .verify_server_final(RFC_SERVER_FINAL.as_bytes())
            .is_err());
        let mut client = rfc_client();
        client.client_final(RFC_SERVER_FIRST.as_bytes()).unwrap();
        assert!(client.client_final(RFC_SERVER_FIRST.as_bytes()).is_err());
        for msg in [
            &b""[..],
            b"v=",
            b"v=!!",
            b"x=abc",
            b"\xff",
            b"v=6rriTRBi23WpRR",
            b"e=other-error",
        ] {
            assert!(client.verify_server_final(msg).is_err(), "{msg:?}");
        }
        assert!(matches!(
            client.verify_server_final(b"e=invalid-proof"),
            Err(AuthError::BadPassword)
        ));
        // Still verifies the right one afterwards (verification has no state).
        client
            .verify_server_final(RFC_SERVER_FINAL.as_bytes())
            .unwrap();
    }

    #[test]
    fn secret_parse_rejects_garbage() {
        let k = "TUJeZzMTCuo6gIOnE2kXX5PaxxQoQs1N9LV7YO9qhPY=";
        for s in [
            String::new(),
            "SCRAM-SHA-256$".into(),
            format!("SCRAM-SHA-256$4096:c2FsdA==${k}"),
            format!("SCRAM-SHA-256$0:c2FsdA==${k}:{k}"),
            format!("SCRAM-SHA-256$-1:c2FsdA==${k}:{k}"),
            format!("SCRAM-SHA-256$x:c2FsdA==${k}:{k}"),
            format!("SCRAM-SHA-256$99999999999:c2FsdA==${k}:{k}"),
            format!("SCRAM-SHA-256$4096:!!${k}:{k}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${k}:AAAA"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${k}:{k}x"),
            format!("SCRAM-SHA-1$4096:c2FsdA==${k}:{k}"),
            format!("SCRAM-SHA-256$4096c2FsdA==${k}:{k}"),
        ] {
            assert!(ScramSecret::parse(&s).is_none(), "{s}");
        }
        assert!(ScramSecret::parse(&format!("SCRAM-SHA-256$1:c2FsdA==${k}:{k}")).is_some());
    }

    /// Every prefix of every valid message, plus random bytes, must produce
    /// an error or a value, never a panic.
    #[test]
    fn no_panic_on_truncation_or_noise() {
        let cuts = |s: &str| {
            (0..s.len())
                .map(|i| s.as_bytes()[..i].to_vec())
                .collect::<Vec<_>>()
        };
        for msg in cuts(RFC_CLIENT_FIRST) {
            let _ = rfc_server().server_first(&msg);
        }
        for msg in cuts(RFC_CLIENT_FINAL) {
            let mut server = rfc_server();
            server.server_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
            assert!(server.server_final(&msg).is_err());
        }
        for msg in cuts(RFC_SERVER_FIRST) {
            // "...,i=4", "i=40", "i=409" are valid (smaller) iteration counts.
            let valid = msg.len() > RFC_SERVER_FIRST.len() - 4;
            assert_eq!(rfc_client().client_final(&msg).is_ok(), valid);
        }
        let mut client = rfc_client();
        client.client_final(RFC_SERVER_FIRST.as_bytes()).unwrap();
        for msg in cuts(RFC_SERVER_FINAL) {
            assert!(client.verify_server_final(&msg).is_err());
        }
        for msg in cuts(PG15_SECRET) {
            assert!(ScramSecret::parse(std::str::from_utf8(&msg).unwrap()).is_none());
        }
        let mut rng = rand::thread_rng();
        for _ in 0..2000 {
            let len = (rng.next_u32() % 64) as usize;
            let mut noise = vec![0u8; len];
            rng.fill_bytes(&mut noise);
            // Bias towards the message alphabet so parsing gets further.
            for b in &mut noise {
                *b = b"nypcrsiv=,,,ab01"[usize::from(*b % 16)];
            }
            let _ = rfc_server().server_first(&noise);
            let _ = rfc_client().client_final(&noise);
            let _ = client.verify_server_final(&noise);
            let mut server = rfc_server();
            server.server_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
            let _ = server.server_final(&noise);
        }
    }
}
