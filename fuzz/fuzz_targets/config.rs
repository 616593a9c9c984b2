//! Config files (`router.toml` + `users.toml`), from arbitrary bytes: no
//! panic; a config that is refused says why (at least one problem, each
//! with a message and a line inside its file); a config that is accepted
//! diffs as unchanged against itself and against the same text read again.
//!
//! Input: a mode byte, then the two files' texts separated by the first
//! NUL. Mode 0 fuzzes both texts; the others keep one file valid (the
//! repository's example.router.toml and users.toml) so the fuzzer spends its time deep in the other
//! one and in the checks across both.

use std::path::Path;

use pgrouter_config::{diff, parse, ConfigDiff};
use pgrouter_fuzz::{verbose, Pieces};

const ROUTER: &str = include_str!("../../example.router.toml");
const USERS: &str = include_str!("../../users.toml");

fn main() {
    afl::fuzz_nohook!(|data: &[u8]| check(data));
}

fn check(data: &[u8]) {
    let mut input = Pieces::new(data);
    let mode = input.byte() % 3;
    let rest = String::from_utf8_lossy(input.rest()).into_owned();
    let (first, second) = rest.split_once('\0').unwrap_or((&rest, ""));
    let (router, users) = match mode {
        0 => (first, second),
        1 => (first, USERS),
        _ => (ROUTER, first),
    };
    let (router_path, users_path) = (Path::new("router.toml"), Path::new("users.toml"));
    let result = parse(router_path, router, users_path, users);
    if verbose() {
        match &result {
            Ok(config) => eprintln!(
                "valid: {} databases, {} users",
                config.databases.len(),
                config.users.len()
            ),
            Err(problems) => problems.iter().for_each(|p| eprintln!("{p}")),
        }
    }
    match result {
        Ok(config) => {
            assert_eq!(
                diff(&config, &config),
                ConfigDiff::default(),
                "a config differs from itself"
            );
            let again =
                parse(router_path, router, users_path, users).expect("the same text parses again");
            assert_eq!(
                diff(&config, &again),
                ConfigDiff::default(),
                "the same text read twice differs"
            );
        }
        Err(problems) => {
            assert!(!problems.is_empty(), "refused without a problem");
            for p in &problems {
                assert!(!p.message.is_empty(), "a problem without a message: {p:?}");
                let text = if p.file == router_path { router } else { users };
                assert!(p.file == router_path || p.file == users_path, "{p:?}");
                let lines = text.lines().count().max(1) + 1;
                assert!(
                    p.line <= lines,
                    "{p:?} is past the end of its file ({lines} lines)"
                );
            }
        }
    }
}
