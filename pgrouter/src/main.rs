//! Command line: `pgrouter [--config F] [--users F]`, `pgrouter check ...`,
//! `pgrouter --version`.

use std::path::PathBuf;
use std::process::ExitCode;

use pgrouter_config::LogFormat;

struct Args {
    check: bool,
    config: PathBuf,
    users: PathBuf,
}

const USAGE: &str =
    "usage: pgrouter [check] [--config router.toml] [--users users.toml] | --version";

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        check: false,
        config: "router.toml".into(),
        users: "users.toml".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--version" | "-V" => {
                println!("pgrouter {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "check" => args.check = true,
            "--config" | "-c" => args.config = it.next().ok_or("--config needs a file")?.into(),
            "--users" | "-u" => args.users = it.next().ok_or("--users needs a file")?.into(),
            other => {
                if let Some(v) = other.strip_prefix("--config=") {
                    args.config = v.into();
                } else if let Some(v) = other.strip_prefix("--users=") {
                    args.users = v.into();
                } else {
                    return Err(format!("unknown argument \"{other}\"\n{USAGE}"));
                }
            }
        }
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("test-2pc-commit") {
        return test_2pc_commit(std::env::args().skip(2).collect());
    }
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        return check(&args);
    }
    let config = match pgrouter_config::load(&args.config, &args.users) {
        Ok(c) => c,
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!("{} problem(s) found; not starting", problems.len());
            return ExitCode::from(1);
        }
    };
    init_logging(&config.general.log_format);
    // The accepting thread runs a single-threaded runtime. With one worker
    // it serves the clients too, like PgBouncer's one process; with more,
    // each worker thread runs its own (see `worker.rs`).
    let workers = match config.general.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    if workers > 1 {
        if let Err(e) = pgrouter::worker::start(workers) {
            eprintln!("cannot start {workers} worker threads: {e}");
            return ExitCode::from(1);
        }
    }
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_io();
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(pgrouter::run::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

/// `pgrouter check`: every problem, in both files and in the files
/// router.toml names. The named files are checked even when the two files
/// have problems of their own (reporting only the first batch made a DBA
/// fix, re-run and find more): with other problems, only whether each named
/// file loads (see `named_file_problems`), and a named file's problem is
/// left out when its key was already reported.
fn check(args: &Args) -> ExitCode {
    let (config, mut problems) = pgrouter_config::load_lenient(&args.config, &args.users);
    if let Some(config) = &config {
        let named = if problems.is_empty() {
            file_problems(config)
        } else {
            named_file_problems(config)
        };
        for p in named {
            if !problems.iter().any(|q| q.file == p.file && q.key == p.key) {
                problems.push(p);
            }
        }
    }
    if problems.is_empty() {
        println!(
            "{} and {} are valid",
            args.config.display(),
            args.users.display()
        );
        return ExitCode::SUCCESS;
    }
    // Router file first, then the users file, each by line (stable: the
    // order of problems on one line is kept).
    problems.sort_by_key(|p| (p.file != args.config, p.line));
    for p in &problems {
        eprintln!("{p}");
    }
    eprintln!("{} problem(s) found; config is invalid", problems.len());
    ExitCode::from(1)
}

/// Problems in the files router.toml names (the `[jwt]` public key, the
/// TLS certificate and key, `server_tls_ca`, `[jit] api_ca`), which `pgrouter_config::load` does not read.
/// Nothing here touches the network: a JWKS is fetched only by the router.
fn file_problems(config: &pgrouter_config::Config) -> Vec<pgrouter_config::Problem> {
    let mut problems = Vec::new();
    if let Some(j) = &config.jwt {
        if let Err(e) = pgrouter::auth::jwt::check_offline(&j.into()) {
            problems.push(config.jwt_problem(e.key, e.message));
        }
    }
    // The same check start-up and reload make (see `net/tls/files.rs`).
    problems.extend(pgrouter::net::tls::file_problems(config));
    problems.extend(jit_problem(config));
    problems.extend(auth_query_problem(config));
    problems
}

/// `[auth_query] query`, checked as start-up and reload check it.
fn auth_query_problem(config: &pgrouter_config::Config) -> Option<pgrouter_config::Problem> {
    let a = config.auth_query.as_ref()?;
    let message = pgrouter::auth::auth_query::check_offline(a).err()?;
    Some(config.auth_query_problem(message))
}

/// `[jit]`'s URL and CA file, checked as start-up and reload check them.
fn jit_problem(config: &pgrouter_config::Config) -> Option<pgrouter_config::Problem> {
    let jit = config.jit.as_ref()?;
    let (key, message) = pgrouter::auth::jit::check_offline(jit).err()?;
    Some(config.jit_problem(key, message))
}

/// Only whether the files router.toml names load (not whether they suit
/// its settings): for a configuration with problems of its own, whose
/// settings the validation has already reported on.
fn named_file_problems(config: &pgrouter_config::Config) -> Vec<pgrouter_config::Problem> {
    let mut problems = Vec::new();
    if let Some(j) = &config.jwt {
        if let Err(e) = pgrouter::auth::jwt::check_key_file(&j.into()) {
            problems.push(config.jwt_problem(e.key, e.message));
        }
    }
    problems.extend(pgrouter::net::tls::file_problems(config));
    problems.extend(jit_problem(config));
    problems.extend(auth_query_problem(config));
    problems
}

fn init_logging(format: &LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// `pgrouter test-2pc-commit --config F --users F <database> <user>
/// <shard>:<sql> ...`: a test hook (see `twophase/selftest.rs`).
fn test_2pc_commit(argv: Vec<String>) -> ExitCode {
    let mut config_path = PathBuf::from("router.toml");
    let mut users_path = PathBuf::from("users.toml");
    let mut rest = Vec::new();
    let mut it = argv.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => config_path = it.next().unwrap_or_default().into(),
            "--users" => users_path = it.next().unwrap_or_default().into(),
            _ => rest.push(a),
        }
    }
    let mut statements = Vec::new();
    for s in rest.iter().skip(2) {
        match s
            .split_once(':')
            .and_then(|(k, sql)| Some((k.parse().ok()?, sql.to_string())))
        {
            Some(st) => statements.push(st),
            None => {
                eprintln!("expected <shard>:<sql>, got \"{s}\"");
                return ExitCode::from(2);
            }
        }
    }
    let (Some(database), Some(user)) = (rest.first(), rest.get(1)) else {
        eprintln!("usage: pgrouter test-2pc-commit [--config F] [--users F] <database> <user> <shard>:<sql> ...");
        return ExitCode::from(2);
    };
    let config = match pgrouter_config::load(&config_path, &users_path) {
        Ok(c) => c,
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            return ExitCode::from(1);
        }
    };
    init_logging(&config.general.log_format);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let run = pgrouter::twophase::selftest::run(config, database, user, &statements);
    match runtime.block_on(run) {
        Ok(()) => {
            println!("COMMIT");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("ERROR {} {}", e.sqlstate, e.message);
            ExitCode::from(3)
        }
    }
}
