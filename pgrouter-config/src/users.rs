//! Reading `users.toml` (SPEC §4): each `[[users]]` entry, its defaults, and
//! the checks that concern one entry alone (password shape vs. `auth`).

use crate::keys;
use crate::model::*;
use crate::reader::{entries, set, Section, Source};
use crate::router::{parse_toml, required};

pub(crate) struct UsersFile {
    pub users: Vec<User>,
    /// Per user (same index): lines of `database`, `auth` and `pool_size`.
    pub at: Vec<UserLines>,
}

pub(crate) struct UserLines {
    pub database: usize,
    pub auth: usize,
    pub pool_size: usize,
}

/// Parses users.toml; `None` when it is not valid TOML.
pub(crate) fn read(src: &mut Source, text: &str) -> Option<UsersFile> {
    let doc = parse_toml(src, text)?;
    let root = Section {
        table: doc.as_table(),
        prefix: "",
        line: 1,
    };
    root.check_unknown(src, keys::USERS_TOP, "users.toml");
    let mut file = UsersFile {
        users: Vec::new(),
        at: Vec::new(),
    };
    if let Some(item) = doc.get("users") {
        for sec in entries(src, item, root.line_of(src, "users"), "users") {
            if let Some(user) = user(src, &sec) {
                file.at.push(UserLines {
                    database: sec.line_of(src, "database"),
                    auth: sec.line_of(src, "auth"),
                    pool_size: sec.line_of(src, "pool_size"),
                });
                file.users.push(user);
            }
        }
    }
    Some(file)
}

/// One entry; `None` when `name` or `database` is unusable (it cannot be
/// looked up, so the checks that relate entries skip it).
fn user(src: &mut Source, sec: &Section) -> Option<User> {
    sec.check_unknown(src, keys::USERS, "[[users]]");
    let name = required(src, sec, "name");
    let database = required(src, sec, "database");
    let password = sec.string(src, "password");
    let auth = sec.choice(src, "auth", AuthMethod::NAMES, AuthMethod::from_name);
    let server_user = sec.non_empty_string(src, "server_user");
    let server_password = sec.string(src, "server_password");
    let pool_size = sec.u32(src, "pool_size", 1);
    let pool_mode = sec.choice(src, "pool_mode", PoolMode::NAMES, PoolMode::from_name);
    let mut read_only = false;
    set(&mut read_only, sec.boolean(src, "read_only"));
    let mut login = true;
    set(&mut login, sec.boolean(src, "login"));
    // Without `auth`: SCRAM, unless the stored secret is an md5 hash, which
    // only MD5 can check (as PgBouncer picks the method by the secret).
    let auth = auth.unwrap_or(match password.as_deref().map(password_kind) {
        Some(PasswordKind::Md5) => AuthMethod::Md5,
        _ => AuthMethod::Scram,
    });

    if password.as_deref() == Some("") {
        // PostgreSQL refuses an empty password too: it would let anyone in.
        let msg = "is empty: an empty password would let any client log in as this user; set one \
                   (or login = false, or auth = \"jwt\")";
        sec.report(src, "password", msg);
    } else if let Some(pw) = &password {
        check_password(src, sec, pw, auth);
    } else if login
        && matches!(
            auth,
            AuthMethod::Scram | AuthMethod::Md5 | AuthMethod::Plain
        )
    {
        let msg = format!(
            "no password: auth = \"{auth}\" needs one (or set login = false, or auth = \"jwt\")"
        );
        src.report(sec.line, sec.path("password"), msg);
    }
    if let Some(spw) = &server_password {
        if password_kind(spw) == PasswordKind::Scram {
            let msg = "must be the plain password: the router logs in to PostgreSQL with it";
            sec.report(src, "server_password", msg);
        }
    }

    let name = name?;
    let server_password = server_password.or_else(|| {
        password
            .clone()
            .filter(|pw| password_kind(pw) == PasswordKind::Plain)
    });
    Some(User {
        database: database?,
        password,
        auth,
        server_user: server_user.unwrap_or_else(|| name.clone()),
        server_password,
        pool_size,
        pool_mode,
        read_only,
        login,
        line: sec.line,
        name,
    })
}

/// The stored secret must be usable by the auth method: SCRAM cannot check an
/// md5 secret and MD5 cannot check a SCRAM secret (plain text works for all,
/// and cleartext auth can check any kind).
fn check_password(src: &mut Source, sec: &Section, pw: &str, auth: AuthMethod) {
    let kind = password_kind(pw);
    if kind == PasswordKind::Scram && !scram_secret_well_formed(pw) {
        let msg = "malformed SCRAM secret: expected \
                   SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> \
                   (base64; each key 32 bytes), as pg_authid.rolpassword holds it";
        sec.report(src, "password", msg);
    }
    let clash = match (auth, kind) {
        (AuthMethod::Scram, PasswordKind::Md5) => Some("an md5 secret"),
        (AuthMethod::Md5, PasswordKind::Scram) => Some("a SCRAM secret"),
        _ => None,
    };
    if let Some(what) = clash {
        let msg = format!(
            "{what} cannot be checked with auth = \"{auth}\"; give the plain password or change auth"
        );
        sec.report(src, "password", msg);
    }
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` with a positive
/// iteration count, a base64 salt and two base64 keys of 32 bytes (SHA-256),
/// as `pg_authid.rolpassword` holds it and as PostgreSQL's own
/// `parse_scram_secret` requires. A key cut short in copying (or any other
/// length) used to pass here and then fail every login with a bare 28P01
/// that named no cause.
fn scram_secret_well_formed(pw: &str) -> bool {
    let Some(rest) = pw.strip_prefix("SCRAM-SHA-256$") else {
        return false;
    };
    let Some((iter_salt, keys)) = rest.split_once('$') else {
        return false;
    };
    let Some((iter, salt)) = iter_salt.split_once(':') else {
        return false;
    };
    let Some((stored, server)) = keys.split_once(':') else {
        return false;
    };
    iter.parse::<u32>().is_ok_and(|n| n > 0)
        && b64_decoded_len(salt).is_some_and(|n| n > 0)
        && b64_decoded_len(stored) == Some(32)
        && b64_decoded_len(server) == Some(32)
}

/// The number of bytes padded standard base64 `s` decodes to; `None` when
/// it is not such base64 (wrong alphabet, length not a multiple of 4,
/// `=` other than at the end).
fn b64_decoded_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(4) {
        return None;
    }
    let pad = b.iter().rev().take_while(|&&c| c == b'=').count();
    let body = &b[..b.len() - pad];
    if pad > 2
        || !body
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"+/".contains(c))
    {
        return None;
    }
    Some(b.len() / 4 * 3 - pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_secret_keys_must_be_32_bytes_of_base64() {
        let key = "A".repeat(43) + "=";
        let good = format!("SCRAM-SHA-256$4096:c2FsdA==${key}:{key}");
        assert!(scram_secret_well_formed(&good));
        assert!(!scram_secret_well_formed(
            "SCRAM-SHA-256$4096:c2FsdA==$AAAA:BBBB"
        ));
        let short = format!("SCRAM-SHA-256$4096:c2FsdA==${key}:{}", &key[4..]);
        assert!(!scram_secret_well_formed(&short));
        let bad_salt = format!("SCRAM-SHA-256$4096:c2FsdA=${key}:{key}");
        assert!(!scram_secret_well_formed(&bad_salt));
        assert_eq!(b64_decoded_len("c2FsdA=="), Some(4));
        assert_eq!(b64_decoded_len("a=bc"), None);
    }
}
