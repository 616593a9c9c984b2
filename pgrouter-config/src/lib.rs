//! pgrouter's configuration: load, validate and diff `router.toml` + `users.toml`.
//!
//! Both files are edited by hand by DBAs and re-read on every hot reload, so
//! the one job of this crate is to turn them into a [`Config`] the server can
//! trust without further checks, or else to say *everything* that is wrong
//! with them at once, each [`Problem`] with its file, line and key:
//!
//! ```text
//! router.toml:14: databases.role: second primary for "app" shard 0 (the first is on line 8); ...
//! users.toml:6: users.pool_sise: unknown key "pool_sise"; did you mean "pool_size"?
//! users.toml:9: users.name: duplicate user "app" for database "app"; first defined on line 1
//! ```
//!
//! That is why the files are walked as TOML documents that keep byte spans
//! (`toml_edit`) instead of being deserialized with serde, which stops at the
//! first error. The crate is pure: no I/O beyond reading the two files in
//! [`load`], no networking, no globals; `pgrouter check`, startup and reload
//! all call [`load`] and, on reload, [`diff`].
//!
//! Keys and defaults follow SPEC §3 and §4. Decisions the spec leaves open:
//! - `[[databases]]`: `port` defaults to 5432, `role` to "primary", `shard` to 0,
//!   `database_name` to `name`.
//! - `[[users]]`: `auth` defaults to "scram"; `[[sharded_tables]]`: `data_type`
//!   defaults to "bigint".
//! - `[jwt] public_key_file` defaults to "" (exactly one of it and `jwks_url` is required).
//! - `listen` accepts port 0 (OS picks; for tests); timeouts that would make no
//!   sense at 0 (connect, checkout, server idle/lifetime, health check) must be ≥ 1.

mod diff;
mod general_fields;
mod keys;
mod login_checks;
mod model;
mod problem;
mod reader;
mod router;
mod sharding;
mod suggest;
mod users;
mod validate;
mod values;

use std::path::Path;

pub use diff::{
    diff, restart_pending, ConfigDiff, UserChange, UserKey, POOL_SETTING_KEYS, RESTART_KEYS,
};
pub use login_checks::{AuthQuery, Jit, JitLines, DEFAULT_AUTH_QUERY};
pub use model::*;
pub use problem::Problem;
pub use sharding::shard_count_changes;
pub use values::{general_values, login_section_values};

/// Reads and validates both files. A file that cannot be read is a [`Problem`]
/// with line 0; the other file is still checked on its own.
pub fn load(router_path: &Path, users_path: &Path) -> Result<Config, Vec<Problem>> {
    match load_lenient(router_path, users_path) {
        (Some(config), problems) if problems.is_empty() => Ok(config),
        (_, problems) => Err(problems),
    }
}

/// For `pgrouter check`, which reports every problem: the problems, and
/// the configuration as read despite them (when both files parsed), so
/// that the files it names (keys, certificates) can be checked too. A
/// configuration with problems must not be run.
pub fn load_lenient(router_path: &Path, users_path: &Path) -> (Option<Config>, Vec<Problem>) {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| Problem {
            file: path.to_path_buf(),
            line: 0,
            key: String::new(),
            message: format!("cannot read file: {e}"),
        })
    };
    let router = read(router_path);
    let users = read(users_path);
    check(router_path, router.as_deref(), users_path, users.as_deref())
}

/// Validates both files' contents; the paths are used in problems and kept in
/// the [`Config`]. Problems are sorted router file first, then users file,
/// each by line.
pub fn parse(
    router_path: &Path,
    router_text: &str,
    users_path: &Path,
    users_text: &str,
) -> Result<Config, Vec<Problem>> {
    match check(router_path, Ok(router_text), users_path, Ok(users_text)) {
        (Some(config), problems) if problems.is_empty() => Ok(config),
        (_, problems) => Err(problems),
    }
}

fn check(
    router_path: &Path,
    router_text: Result<&str, &Problem>,
    users_path: &Path,
    users_text: Result<&str, &Problem>,
) -> (Option<Config>, Vec<Problem>) {
    let mut rsrc = reader::Source::new(router_path, router_text.unwrap_or(""));
    let mut usrc = reader::Source::new(users_path, users_text.unwrap_or(""));
    let r = match router_text {
        Ok(text) => router::read(&mut rsrc, text),
        Err(p) => {
            rsrc.problems.push(p.clone());
            None
        }
    };
    let u = match users_text {
        Ok(text) => users::read(&mut usrc, text),
        Err(p) => {
            usrc.problems.push(p.clone());
            None
        }
    };
    if let Some(r) = &r {
        validate::router(&mut rsrc, r);
    }
    if let Some(u) = &u {
        validate::users(&mut usrc, u);
    }
    if let (Some(r), Some(u)) = (&r, &u) {
        validate::cross(&mut rsrc, &mut usrc, r, u);
        let names = r
            .databases
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>();
        login_checks::cross(
            &mut rsrc,
            r.auth_query.as_ref(),
            r.jit.as_ref(),
            &r.login_checks_at,
            &names,
            u,
        );
    }

    // Stable sorts keep the order of problems found on the same line.
    let mut problems = rsrc.problems;
    problems.sort_by_key(|p| p.line);
    let mut users_problems = usrc.problems;
    users_problems.sort_by_key(|p| p.line);
    problems.extend(users_problems);

    let config = match (r, u) {
        (Some(r), Some(u)) => Some(Config {
            general: r.general,
            jwt: r.jwt,
            databases: r.databases,
            sharded_tables: r.sharded_tables,
            reference_tables: r.reference_tables,
            sharding: r.sharding,
            users: u.users,
            auth_query: r.auth_query,
            jit: r.jit,
            router_path: router_path.to_path_buf(),
            users_path: users_path.to_path_buf(),
            general_lines: r.general_lines,
            jit_lines: r.login_checks_at.jit,
            auth_query_line: r.login_checks_at.auth_query_query,
        }),
        _ => None,
    };
    (config, problems)
}
