//! Single-byte encodings as tables of their upper half, built once from
//! encoding_rs's decoder and PostgreSQL's differences from it.

use std::sync::OnceLock;

use encoding_rs::Encoding;

/// What encoding_rs's reading of bytes 0x80..0x9F becomes.
#[derive(Clone, Copy)]
pub(super) enum C1 {
    /// Kept: the encoding has characters there (KOI8, WIN866).
    AsDecoded,
    /// The C1 controls U+0080..U+009F, as in every ISO 8859 part.
    Controls,
    /// A byte encoding_rs reads as a C1 control is one the Windows code
    /// page leaves undefined, and PostgreSQL refuses.
    Undefined,
}

/// One single-byte encoding: encoding_rs's table, with PostgreSQL's
/// differences applied the first time it is used.
pub(super) struct SingleByte {
    encoding: &'static Encoding,
    c1: C1,
    fixes: &'static [(u8, Option<char>)],
    upper: OnceLock<[Option<char>; 128]>,
}

impl SingleByte {
    pub(super) const fn new(
        encoding: &'static Encoding,
        c1: C1,
        fixes: &'static [(u8, Option<char>)],
    ) -> SingleByte {
        SingleByte {
            encoding,
            c1,
            fixes,
            upper: OnceLock::new(),
        }
    }

    /// The character of each byte 0x80..0xFF, None where there is none.
    pub(super) fn upper(&self) -> &[Option<char>; 128] {
        self.upper.get_or_init(|| {
            let mut upper = [None; 128];
            for (i, slot) in upper.iter_mut().enumerate() {
                let byte = 0x80 + i as u8;
                let decoded = self
                    .encoding
                    .decode_without_bom_handling_and_without_replacement(&[byte])
                    .and_then(|s| s.chars().next());
                *slot = match (self.c1, byte) {
                    (C1::Controls, 0x80..=0x9f) => Some(char::from(byte)),
                    (C1::Undefined, _)
                        if decoded.is_some_and(|c| ('\u{80}'..='\u{9f}').contains(&c)) =>
                    {
                        None
                    }
                    _ => decoded,
                };
                if let Some((_, fixed)) = self.fixes.iter().find(|f| f.0 == byte) {
                    *slot = *fixed;
                }
            }
            upper
        })
    }

    pub(super) fn decode(&self, bytes: &[u8]) -> Option<String> {
        let upper = self.upper();
        bytes
            .iter()
            .map(|&b| match b {
                0..=0x7f => Some(char::from(b)),
                _ => upper[usize::from(b - 0x80)],
            })
            .collect()
    }

    /// Each character's byte, found in the table (a rare path: only text
    /// with non-ASCII characters of a client in this encoding).
    pub(super) fn encode(&self, text: &str) -> Option<Vec<u8>> {
        let upper = self.upper();
        text.chars()
            .map(|c| match u8::try_from(u32::from(c)) {
                Ok(b) if b < 0x80 => Some(b),
                _ => upper
                    .iter()
                    .position(|&u| u == Some(c))
                    .map(|i| 0x80 + i as u8),
            })
            .collect()
    }
}
