//! Shared helpers of the fuzz targets in `fuzz_targets/`.
//!
//! Each target is a `main` around `afl::fuzz_nohook!`: built with `cargo afl
//! build` it runs under afl-fuzz in persistent mode; run by hand it reads one
//! input from stdin, which is how a crash is replayed:
//! `target/release/sql_analysis < crash-file`.

/// Splits fuzz input into the pieces a target needs. A target that wants
/// several independent byte strings asks for them one by one; each piece is
/// length-prefixed by one byte, so mutations of one piece leave the others
/// where they are.
pub struct Pieces<'a> {
    rest: &'a [u8],
}

impl<'a> Pieces<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Pieces { rest: data }
    }

    /// The next byte (0 when the input is used up).
    pub fn byte(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((&b, rest)) => {
                self.rest = rest;
                b
            }
            None => 0,
        }
    }

    /// The next piece: a length byte and that many bytes (fewer at the end).
    pub fn piece(&mut self) -> &'a [u8] {
        let n = (self.byte() as usize).min(self.rest.len());
        let (piece, rest) = self.rest.split_at(n);
        self.rest = rest;
        piece
    }

    /// Everything not taken yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }
}

/// Whether `PGROUTER_FUZZ_VERBOSE` is set: replaying an input by hand then
/// prints what the target checked (never set under afl-fuzz).
pub fn verbose() -> bool {
    static VERBOSE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("PGROUTER_FUZZ_VERBOSE").is_some())
}
