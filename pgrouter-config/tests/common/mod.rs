//! Helpers shared by the test files.
#![allow(dead_code)]

use std::path::Path;

use pgrouter_config::{parse, Config, Problem};

pub const MIN_ROUTER: &str = r#"
[[databases]]
name = "app"
host = "127.0.0.1"
"#;

pub const MIN_USERS: &str = r#"
[[users]]
name = "app"
database = "app"
password = "secret"
"#;

pub fn ok(router: &str, users: &str) -> Config {
    match parse(
        Path::new("router.toml"),
        router,
        Path::new("users.toml"),
        users,
    ) {
        Ok(c) => c,
        Err(ps) => panic!("unexpected problems:\n{}", render(&ps)),
    }
}

pub fn problems(router: &str, users: &str) -> Vec<Problem> {
    match parse(
        Path::new("router.toml"),
        router,
        Path::new("users.toml"),
        users,
    ) {
        Ok(_) => panic!("expected problems, config was accepted"),
        Err(ps) => ps,
    }
}

pub fn render(ps: &[Problem]) -> String {
    ps.iter().map(|p| format!("{p}\n")).collect()
}

/// Asserts exactly one problem, in `file` at `line` under `key`, whose message
/// contains `needle`; returns it.
pub fn one(ps: &[Problem], file: &str, line: usize, key: &str, needle: &str) -> Problem {
    assert_eq!(ps.len(), 1, "expected one problem, got:\n{}", render(ps));
    has(ps, file, line, key, needle)
}

/// Asserts some problem matches; returns it.
pub fn has(ps: &[Problem], file: &str, line: usize, key: &str, needle: &str) -> Problem {
    ps.iter()
        .find(|p| {
            p.file == Path::new(file)
                && p.line == line
                && p.key == key
                && p.message.contains(needle)
        })
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no problem {file}:{line}: {key}: ...{needle}... among:\n{}",
                render(ps)
            )
        })
}
