//! Admin console commands: splitting a query string into statements and
//! reading each one. Keywords are case-insensitive; a database name may be
//! double-quoted.

/// What the console understands, for help texts and error messages.
pub const COMMANDS: &[(&str, &str)] = &[
    (
        "SHOW POOLS",
        "one row per pool: clients, servers, size, max wait",
    ),
    ("SHOW CLIENTS", "one row per connected client"),
    ("SHOW SERVERS", "one row per open server connection"),
    ("SHOW STATS", "totals and averages per database since start"),
    (
        "SHOW CONFIG",
        "effective settings, where each came from, last reload result",
    ),
    ("SHOW VERSION", "the pgrouter version"),
    ("SHOW HELP", "this list"),
    (
        "RELOAD",
        "re-read router.toml and users.toml and apply them if valid",
    ),
    (
        "PAUSE [db]",
        "let open transactions finish, then hold new ones (one database or all)",
    ),
    ("RESUME [db]", "undo PAUSE"),
    ("SHUTDOWN", "shut the router down gracefully"),
];

/// "SHOW POOLS, SHOW CLIENTS, ..., SHUTDOWN".
pub fn command_list() -> String {
    COMMANDS
        .iter()
        .map(|(c, _)| *c)
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Pools,
    Clients,
    Servers,
    Stats,
    Config,
    Version,
    Help,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show(Show),
    Reload,
    Pause(Option<String>),
    Resume(Option<String>),
    Shutdown,
    /// `SET ...`, accepted and ignored (some clients send `SET` on connect).
    Set,
}

/// Why a statement is not a command; the message is shown as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub sqlstate: &'static str,
    pub message: String,
}

/// Splits a simple-query string into statements at semicolons outside
/// quotes, dropping comments and empty statements.
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                current.push(c);
                while let Some(d) = chars.next() {
                    current.push(d);
                    if d == c {
                        if chars.peek() == Some(&c) {
                            current.push(c);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        break;
                    }
                }
                current.push(' ');
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = '\0';
                for d in chars.by_ref() {
                    if prev == '*' && d == '/' {
                        break;
                    }
                    prev = d;
                }
                current.push(' ');
            }
            ';' => {
                let s = current.trim();
                if !s.is_empty() {
                    statements.push(s.to_string());
                }
                current.clear();
            }
            c => current.push(c),
        }
    }
    let s = current.trim();
    if !s.is_empty() {
        statements.push(s.to_string());
    }
    statements
}

pub fn parse(statement: &str) -> Result<Command, ParseError> {
    let statement = statement.trim();
    let (first, rest) = match statement.find(char::is_whitespace) {
        Some(i) => (&statement[..i], statement[i..].trim()),
        None => (statement, ""),
    };
    let no_args = |cmd: Command| {
        if rest.is_empty() {
            Ok(cmd)
        } else {
            Err(syntax(format!(
                "{} takes no arguments",
                first.to_ascii_uppercase()
            )))
        }
    };
    match first.to_ascii_uppercase().as_str() {
        "SHOW" => {
            let what = match rest.to_ascii_uppercase().as_str() {
                "POOLS" => Show::Pools,
                "CLIENTS" => Show::Clients,
                "SERVERS" => Show::Servers,
                "STATS" => Show::Stats,
                "CONFIG" => Show::Config,
                "VERSION" => Show::Version,
                "HELP" => Show::Help,
                "" => return Err(syntax("SHOW needs an item".to_string())),
                _ => {
                    return Err(ParseError {
                        sqlstate: "0A000",
                        message: format!("unknown SHOW item \"{}\"", printable(rest)),
                    })
                }
            };
            Ok(Command::Show(what))
        }
        "RELOAD" => no_args(Command::Reload),
        "SHUTDOWN" => no_args(Command::Shutdown),
        "PAUSE" => Ok(Command::Pause(database_arg(rest)?)),
        "RESUME" => Ok(Command::Resume(database_arg(rest)?)),
        "SET" => Ok(Command::Set),
        _ => Err(syntax(format!(
            "unknown command \"{}\"",
            printable(statement)
        ))),
    }
}

fn syntax(message: String) -> ParseError {
    ParseError {
        sqlstate: "42601",
        message,
    }
}

/// An optional database name: a bare word, or a double-quoted identifier
/// (`""` inside stands for `"`).
fn database_arg(rest: &str) -> Result<Option<String>, ParseError> {
    if rest.is_empty() {
        return Ok(None);
    }
    if let Some(inner) = rest.strip_prefix('"') {
        let Some(inner) = inner.strip_suffix('"') else {
            return Err(syntax("unterminated quoted database name".to_string()));
        };
        if inner.is_empty() || inner.replace("\"\"", "").contains('"') {
            return Err(syntax("bad quoted database name".to_string()));
        }
        return Ok(Some(inner.replace("\"\"", "\"")));
    }
    if rest.split_whitespace().count() != 1 || rest.contains(['\'', '"']) {
        return Err(syntax(format!(
            "expected one database name, got \"{}\"",
            printable(rest)
        )));
    }
    Ok(Some(rest.to_string()))
}

/// Echoes user input in an error: at most 60 characters, no control chars.
fn printable(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(60)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() > 60 {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements_outside_quotes_and_comments() {
        assert_eq!(split_statements("show pools;"), ["show pools"]);
        assert_eq!(
            split_statements(" SHOW POOLS ; show stats;;"),
            ["SHOW POOLS", "show stats"]
        );
        assert_eq!(
            split_statements("pause \"a;b\"; resume"),
            ["pause \"a;b\"", "resume"]
        );
        assert_eq!(
            split_statements("-- hi; there\nshow version /* ; */"),
            ["show version"]
        );
        assert!(split_statements("  ;  ; -- x").is_empty());
    }

    #[test]
    fn parses_commands() {
        assert_eq!(parse("show pools").unwrap(), Command::Show(Show::Pools));
        assert_eq!(
            parse("SHOW   Clients").unwrap(),
            Command::Show(Show::Clients)
        );
        assert_eq!(parse("reload").unwrap(), Command::Reload);
        assert_eq!(parse("PAUSE").unwrap(), Command::Pause(None));
        assert_eq!(
            parse("pause app").unwrap(),
            Command::Pause(Some("app".into()))
        );
        assert_eq!(
            parse("resume \"My \"\"db\"\"\"").unwrap(),
            Command::Resume(Some("My \"db\"".into()))
        );
        assert_eq!(parse("set client_encoding = 'UTF8'").unwrap(), Command::Set);
        assert_eq!(parse("shutdown").unwrap(), Command::Shutdown);
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        assert_eq!(parse("select 1").unwrap_err().sqlstate, "42601");
        assert_eq!(parse("show tables").unwrap_err().sqlstate, "0A000");
        assert_eq!(parse("show").unwrap_err().sqlstate, "42601");
        assert!(parse("reload now").is_err());
        assert!(parse("pause a b").is_err());
        assert!(parse("pause \"a").is_err());
        assert!(parse("pause 'a'").is_err());
        assert!(parse(&"x".repeat(1000)).unwrap_err().message.len() < 100);
    }
}
