//! [`Problem`]: one thing wrong with the config, located precisely enough for
//! a DBA to fix it without guessing (file, line, key).

use std::fmt;
use std::path::PathBuf;

/// One problem found while loading or validating the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based; 0 = the file as a whole (e.g. it could not be read).
    pub line: usize,
    /// Dotted path of the key: `general.listen`, `databases.port`, `users.password`;
    /// empty for TOML syntax errors and unreadable files.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    /// `{file}:{line}: {key}: {message}`; the `{key}: ` part is left out when
    /// there is no key, so a syntax error reads `router.toml:3: expected ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for Problem {}
