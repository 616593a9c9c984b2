//! Server credentials learnt from a client's login, for users the router has
//! no password for in its files: auth_query users (the SCRAM keys recovered
//! from the client's proof, or the md5 hash PostgreSQL stores) and JIT users
//! (the token itself, which PostgreSQL checks again, e.g. through PAM).
//!
//! One [`CredentialSlot`] is shared by a user's pools: every successful
//! login refreshes it, so connections opened later log in with what the
//! latest client proved (after a password change, the new password's keys).

use parking_lot::RwLock;

use super::scram::ScramKeys;

/// What the router may present to a server for one user. Each server
/// authentication request takes what fits it (see `server/login.rs`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PassThrough {
    /// Recovered from a client's SCRAM proof, or derived from a cleartext
    /// password with the stored secret's salt.
    pub scram: Option<ScramKeys>,
    /// `md5` + hex, as `pg_authid` stores it: answers md5 challenges.
    pub md5_hash: Option<String>,
    /// The user's real password, when a client sent it in cleartext.
    pub password: Option<String>,
    /// A JIT token the API granted: what PAM (or `password`) on the server
    /// expects in cleartext.
    pub token: Option<String>,
}

impl PassThrough {
    /// Copies in what `newer` knows, keeping what it does not say.
    fn merge(&mut self, newer: PassThrough) {
        if newer.scram.is_some() {
            self.scram = newer.scram;
        }
        if newer.md5_hash.is_some() {
            self.md5_hash = newer.md5_hash;
        }
        if newer.password.is_some() {
            self.password = newer.password;
        }
        if newer.token.is_some() {
            self.token = newer.token;
        }
    }

    /// For a server asking a cleartext password (`password` or `pam` in
    /// pg_hba.conf): the token first (that is what JIT set-ups check there).
    pub fn cleartext(&self) -> Option<&str> {
        self.token.as_deref().or(self.password.as_deref())
    }
}

impl std::fmt::Debug for PassThrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassThrough")
            .field("scram", &self.scram.is_some())
            .field("md5_hash", &self.md5_hash.is_some())
            .field("password", &self.password.is_some())
            .field("token", &self.token.is_some())
            .finish()
    }
}

/// The credentials of one (user, database), shared by its pools.
#[derive(Default)]
pub struct CredentialSlot(RwLock<PassThrough>);

impl CredentialSlot {
    pub fn update(&self, newer: PassThrough) {
        self.0.write().merge(newer);
    }

    pub fn get(&self) -> PassThrough {
        self.0.read().clone()
    }
}

impl std::fmt::Debug for CredentialSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.read().fmt(f)
    }
}

/// Two targets are the same when they share the same slot (contents change
/// with every login and do not make a pool different).
impl PartialEq for CredentialSlot {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for CredentialSlot {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_what_the_newer_login_does_not_say() {
        let slot = CredentialSlot::default();
        slot.update(PassThrough {
            md5_hash: Some("md5abc".into()),
            password: Some("pw".into()),
            ..Default::default()
        });
        slot.update(PassThrough {
            token: Some("sbp_1".into()),
            ..Default::default()
        });
        let got = slot.get();
        assert_eq!(got.md5_hash.as_deref(), Some("md5abc"));
        assert_eq!(got.cleartext(), Some("sbp_1"));
        slot.update(PassThrough {
            token: Some("sbp_2".into()),
            ..Default::default()
        });
        assert_eq!(slot.get().cleartext(), Some("sbp_2"));
        assert!(!format!("{slot:?}").contains("sbp_2"));
    }
}
