//! PostgreSQL's legacy MD5 password authentication.
//!
//! The server stores `"md5" + md5hex(password + user)`; for
//! `AuthenticationMD5Password` it sends a 4-byte salt and the client answers
//! with `"md5" + md5hex(md5hex(password + user) + salt)`. Knowing the stored
//! hash is therefore enough to log in, which is why we can answer from a
//! stored hash as well as from a cleartext password.

// `::md5` is the `md-5` crate; the leading `::` avoids any confusion with
// this module, which has the same name.
use ::md5::{Digest, Md5};

use super::{ct_eq, StoredPassword};

/// Lowercase hex of md5 over the concatenation of `parts`.
fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(32);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The stored form PostgreSQL keeps for md5 passwords:
/// `"md5" + md5hex(password + user)`.
pub fn md5_password_hash(user: &str, password: &str) -> String {
    format!("md5{}", md5_hex(&[password.as_bytes(), user.as_bytes()]))
}

/// The `PasswordMessage` a client sends for `AuthenticationMD5Password`:
/// `"md5" + md5hex(md5hex(password + user) + salt)`.
pub fn md5_response(user: &str, password: &str, salt: [u8; 4]) -> String {
    md5_response_from_hash(&md5_password_hash(user, password), salt)
}

/// Same as [`md5_response`] but starting from a stored `"md5..."` hash.
/// The `md5` prefix is optional here and the hex is lower-cased, so a bare
/// or upper-case hash still produces the response PostgreSQL expects.
pub fn md5_response_from_hash(stored_md5: &str, salt: [u8; 4]) -> String {
    let hex = stored_md5
        .strip_prefix("md5")
        .unwrap_or(stored_md5)
        .to_ascii_lowercase();
    format!("md5{}", md5_hex(&[hex.as_bytes(), &salt]))
}

/// Verifies a client's md5 response against what users.toml stores.
/// A SCRAM secret cannot verify an md5 response (the md5 hash cannot be
/// derived from it), so that case is always `false`. Constant-time compare.
pub fn verify_md5(stored: &StoredPassword, user: &str, salt: [u8; 4], response: &str) -> bool {
    let expected = match stored {
        StoredPassword::Plain(p) => md5_response(user, p, salt),
        StoredPassword::Md5(h) => md5_response_from_hash(h, salt),
        StoredPassword::Scram(_) => return false,
    };
    ct_eq(expected.as_bytes(), response.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ScramSecret;

    const SALT: [u8; 4] = [0x01, 0x02, 0x03, 0x04];

    /// The documented formula, computed with the md5 crate's own hex
    /// formatting rather than our `md5_hex`.
    fn reference(user: &str, password: &str, salt: [u8; 4]) -> String {
        let inner = format!("{:x}", Md5::digest(format!("{password}{user}").as_bytes()));
        let mut outer = inner.into_bytes();
        outer.extend_from_slice(&salt);
        format!("md5{:x}", Md5::digest(&outer))
    }

    #[test]
    fn known_values() {
        // Computed independently with Python's hashlib:
        // "md5" + md5(md5("secretpostgres").hexdigest() + b"\x01\x02\x03\x04").hexdigest()
        assert_eq!(
            md5_password_hash("postgres", "secret"),
            "md553f48b7c4b76a86ce72276c5755f217d"
        );
        assert_eq!(
            md5_response("postgres", "secret", SALT),
            "md5bb41a296aab6baccb36ff243a562abff"
        );
        assert_eq!(
            md5_response("postgres", "secret", SALT),
            reference("postgres", "secret", SALT)
        );
        assert_eq!(
            md5_response("u", "p", [0xff; 4]),
            reference("u", "p", [0xff; 4])
        );
        assert_eq!(md5_response("", "", [0; 4]), reference("", "", [0; 4]));
    }

    #[test]
    fn from_hash_matches_from_password() {
        let hash = md5_password_hash("postgres", "secret");
        let want = md5_response("postgres", "secret", SALT);
        assert_eq!(md5_response_from_hash(&hash, SALT), want);
        assert_eq!(
            md5_response_from_hash(&hash.to_ascii_uppercase().replacen("MD5", "md5", 1), SALT),
            want
        );
        assert_eq!(
            md5_response_from_hash(hash.trim_start_matches("md5"), SALT),
            want
        );
    }

    #[test]
    fn verify() {
        let resp = md5_response("postgres", "secret", SALT);
        let plain = StoredPassword::Plain("secret".into());
        let hashed = StoredPassword::parse(&md5_password_hash("postgres", "secret"));
        let scram = StoredPassword::Scram(ScramSecret::from_password("secret", b"s", 1));
        assert!(verify_md5(&plain, "postgres", SALT, &resp));
        assert!(verify_md5(&hashed, "postgres", SALT, &resp));
        assert!(!verify_md5(&scram, "postgres", SALT, &resp));
        // Wrong salt, user, password, or garbage responses.
        assert!(!verify_md5(&plain, "postgres", [0; 4], &resp));
        assert!(!verify_md5(&plain, "other", SALT, &resp));
        assert!(!verify_md5(
            &StoredPassword::Plain("x".into()),
            "postgres",
            SALT,
            &resp
        ));
        for bad in ["", "md5", "md5zz", "\u{0}", &resp[..resp.len() - 1]] {
            assert!(!verify_md5(&plain, "postgres", SALT, bad));
            assert!(!verify_md5(&hashed, "postgres", SALT, bad));
        }
    }
}
