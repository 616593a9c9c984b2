//! SASLprep (RFC 4013) of a password before SCRAM hashing, by PostgreSQL's
//! rule.
//!
//! PostgreSQL (`pg_be_scram_build_secret`, `scram_verify_plain_password`)
//! and libpq (`pg_fe_scram_build_secret`, the SCRAM client) run every
//! password through `pg_saslprep` before PBKDF2, and hash the raw bytes
//! instead when that fails: the password is not valid UTF-8, contains a
//! character SASLprep prohibits (a control character, an unassigned code
//! point, ...), breaks its bidirectional rule, or maps to nothing at all
//! (an empty result is refused there too). The router derives SCRAM keys
//! from passwords it holds in the same situations (a users.toml plain
//! password turned into a secret, a cleartext password checked against a
//! SCRAM secret, a server password it logs in with), so it must prepare
//! them identically, or a password PostgreSQL's rule rewrites (a soft
//! hyphen is removed, a no-break space becomes a space, a ligature is
//! decomposed) would derive other keys than PostgreSQL's or libpq's.
//!
//! [`prepare`] is the one place this happens: every SCRAM key derivation
//! goes through it (see `scram.rs`, `Keys::derive`).

use std::borrow::Cow;

/// The bytes SCRAM hashes for `password`: its SASLprep form, or the
/// password's own bytes when SASLprep does not apply (see the module doc).
/// ASCII passwords without control characters come back unchanged and
/// unallocated.
pub fn prepare(password: &[u8]) -> Cow<'_, [u8]> {
    let Ok(text) = std::str::from_utf8(password) else {
        return Cow::Borrowed(password);
    };
    match stringprep::saslprep(text) {
        Ok(Cow::Owned(prepared)) if !prepared.is_empty() => Cow::Owned(prepared.into_bytes()),
        // Unchanged, prohibited, or empty after mapping (PostgreSQL refuses
        // an empty result and falls back to the raw bytes).
        _ => Cow::Borrowed(password),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(password: &str) -> Vec<u8> {
        prepare(password.as_bytes()).into_owned()
    }

    #[test]
    fn ascii_passwords_are_unchanged() {
        for p in ["", "secret", "app-secret", "with space", "~!@#$%^&*()"] {
            assert!(matches!(prepare(p.as_bytes()), Cow::Borrowed(_)), "{p:?}");
            assert_eq!(prepared(p), p.as_bytes());
        }
    }

    #[test]
    fn mappings_of_rfc_4013() {
        // A soft hyphen maps to nothing (table B.1), a no-break space to a
        // space (C.1.2): RFC 4013's own examples are "I<U+00AD>X" -> "IX".
        assert_eq!(prepared("I\u{AD}X"), b"IX");
        assert_eq!(prepared("pass\u{AD}word\u{A0}x"), b"password x");
        // NFKC: the ligature "fi" and a superscript two.
        assert_eq!(prepared("\u{FB01}le"), b"file");
        assert_eq!(prepared("\u{AA}"), b"a");
        assert_eq!(prepared("\u{2168}"), b"IX");
        // Already prepared non-ASCII text is kept as it is.
        assert_eq!(prepared("pässwörd"), "pässwörd".as_bytes());
    }

    #[test]
    fn prohibited_or_invalid_passwords_are_used_raw() {
        // Control characters (C.2.1, C.2.2), a private-use character (C.3),
        // an unassigned code point (A.1), and a mixed-direction string.
        for p in [
            "a\u{7}b",
            "tab\there",
            "a\u{85}b",
            "x\u{E000}y",
            "\u{AD}with\u{378}unassigned",
            "\u{627}1",
            "a\u{627}",
        ] {
            assert_eq!(prepared(p), p.as_bytes(), "{p:?}");
        }
        // Not UTF-8 at all.
        let raw = b"pass\xffword\xa0";
        assert_eq!(&*prepare(raw), raw);
    }

    #[test]
    fn a_password_that_maps_to_nothing_is_used_raw() {
        // PostgreSQL's pg_saslprep refuses an empty result.
        assert_eq!(prepared("\u{AD}"), "\u{AD}".as_bytes());
        assert_eq!(prepared("\u{AD}\u{FEFF}"), "\u{AD}\u{FEFF}".as_bytes());
        // A zero-width space is a space (C.1.2 comes before B.1, in
        // PostgreSQL too), so this one is not empty.
        assert_eq!(prepared("\u{200B}\u{FEFF}"), b" ");
    }
}
