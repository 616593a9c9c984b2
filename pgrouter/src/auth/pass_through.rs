//! Server credentials learnt from a client's login, for users the router has
//! no password for in its files: auth_query users (the SCRAM keys recovered
//! from the client's proof, or the md5 hash PostgreSQL stores) and JIT users
//! (the token itself, which PostgreSQL checks again, e.g. through PAM).
//!
//! One [`CredentialSlot`] is shared by a user's pools: every successful
//! login refreshes it, so connections opened later log in with what the
//! latest client proved (after a password change, the new password's keys).

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Copies in what `newer` knows, keeping what it does not say. True
    /// when that changed anything.
    fn merge(&mut self, newer: PassThrough) -> bool {
        fn take<T: PartialEq>(mine: &mut Option<T>, newer: Option<T>) -> bool {
            match newer {
                Some(v) if mine.as_ref() != Some(&v) => {
                    *mine = Some(v);
                    true
                }
                _ => false,
            }
        }
        let scram = take(&mut self.scram, newer.scram);
        let md5 = take(&mut self.md5_hash, newer.md5_hash);
        let password = take(&mut self.password, newer.password);
        let token = take(&mut self.token, newer.token);
        scram || md5 || password || token
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

/// The credentials of one (user, database), shared by its pools, and a
/// count of their changes.
#[derive(Default)]
pub struct CredentialSlot {
    current: RwLock<PassThrough>,
    /// Bumped whenever a login brings credentials that differ from those
    /// held. A pool's login back-off holds for the credentials the server
    /// refused, not for the next client's (see `Pool::refusal_standing`):
    /// after a token PostgreSQL refused, the user's next, valid token must
    /// not be answered with that refusal.
    generation: AtomicU64,
}

impl CredentialSlot {
    pub fn update(&self, newer: PassThrough) {
        let mut current = self.current.write();
        if current.merge(newer) {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn get(&self) -> PassThrough {
        self.current.read().clone()
    }

    /// Changes so far (see the field).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for CredentialSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.current.read().fmt(f)
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

    #[test]
    fn generation_counts_changes_only() {
        let slot = CredentialSlot::default();
        let token = |t: &str| PassThrough {
            token: Some(t.into()),
            ..Default::default()
        };
        slot.update(token("sbp_1"));
        let first = slot.generation();
        slot.update(token("sbp_1"));
        slot.update(PassThrough::default());
        assert_eq!(slot.generation(), first);
        slot.update(token("sbp_2"));
        assert_eq!(slot.generation(), first + 1);
    }
}
