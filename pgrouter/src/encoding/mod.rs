//! Client encodings other than UTF8. The router analyses SQL as UTF-8
//! (pg_query reads nothing else), while PostgreSQL reads each client
//! message in the session's `client_encoding` and converts it itself. For
//! the encodings here, the router transcodes the strings of a client
//! message (SQL text, statement and portal names) to UTF-8 as it arrives,
//! so everything downstream reads UTF-8 as it does for a UTF8 client, and
//! transcodes the strings of every message it writes to that session's
//! servers back (`messages.rs`). A message is only transcoded when the way
//! back gives its exact bytes again, so what the server reads of a
//! client's message is byte for byte what the client sent.
//!
//! Only encodings whose multibyte characters never contain an ASCII byte
//! are here: in them the router and the server agree on where every quote,
//! backslash and semicolon is. The characters are PostgreSQL's own (checked
//! byte for byte against PostgreSQL 15 in the tests): a text shard key is
//! hashed as the UTF-8 the server stores. SJIS, BIG5, GBK, GB18030, UHC,
//! JOHAB and SHIFT_JIS_2004 are not (their second bytes can be ASCII), nor
//! EUC_TW, EUC_JIS_2004 and MULE_INTERNAL (no decoder that matches the
//! server's); SQL_ASCII has no characters to convert.

mod bind;
mod messages;
mod single_byte;
#[cfg(test)]
mod tests;

use encoding_rs::Encoding;

pub use bind::decode_bind_values;
pub use messages::{decode_message, encode_messages, parameter_status, NotText};
use single_byte::SingleByte;

/// How the router reads and writes text in one client encoding.
pub struct ClientCodec {
    /// PostgreSQL's name of the encoding.
    pub name: &'static str,
    kind: Kind,
}

impl std::fmt::Debug for ClientCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

// Only in the static CODECS, one of each: the size of a table is no cost.
#[allow(clippy::large_enum_variant)]
enum Kind {
    /// ISO-8859-1: byte `b` is U+00`b` (encoding_rs has no such decoder:
    /// its "iso-8859-1" is windows-1252, as browsers read it).
    Latin1,
    /// One byte a character, by a table built from encoding_rs.
    Table(SingleByte),
    /// An EUC encoding through encoding_rs, with the characters where
    /// PostgreSQL's table differs: (encoding_rs's, PostgreSQL's).
    Euc {
        encoding: &'static Encoding,
        differs: &'static [(char, char)],
    },
}

/// What a `client_encoding` value means to the router.
#[derive(Clone, Copy)]
pub enum Lookup {
    /// UTF8 (or UNICODE): the router reads the text as it is.
    Utf8,
    /// Transcoded for the router's reading.
    Codec(&'static ClientCodec),
    /// Not transcoded: SQL_ASCII, the encodings whose characters may hide
    /// ASCII bytes, and names the router does not know.
    Other,
}

impl ClientCodec {
    /// The UTF-8 of `bytes` in this encoding, or None when a byte sequence
    /// has no character here (PostgreSQL would refuse it too) or would not
    /// be written back as the same bytes.
    pub fn decode(&self, bytes: &[u8]) -> Option<String> {
        if bytes.is_ascii() {
            return String::from_utf8(bytes.to_vec()).ok();
        }
        match &self.kind {
            Kind::Latin1 => Some(bytes.iter().map(|&b| char::from(b)).collect()),
            Kind::Table(table) => table.decode(bytes),
            Kind::Euc { encoding, differs } => {
                let text = encoding.decode_without_bom_handling_and_without_replacement(bytes)?;
                let text: String = text
                    .chars()
                    .map(|c| differs.iter().find(|d| d.0 == c).map_or(c, |d| d.1))
                    .collect();
                let exact = same_ascii(bytes, &text)
                    && self.encode(&text).is_some_and(|back| back == bytes);
                exact.then_some(text)
            }
        }
    }

    /// `text` in this encoding, or None when a character has no bytes here
    /// (or none that read back as that character).
    pub fn encode(&self, text: &str) -> Option<Vec<u8>> {
        if text.is_ascii() {
            return Some(text.as_bytes().to_vec());
        }
        match &self.kind {
            Kind::Latin1 => text
                .chars()
                .map(|c| u8::try_from(u32::from(c)).ok())
                .collect(),
            Kind::Table(table) => table.encode(text),
            Kind::Euc { encoding, differs } => {
                if text.chars().any(|c| differs.iter().any(|d| d.0 == c)) {
                    return None;
                }
                let theirs: String = text
                    .chars()
                    .map(|c| differs.iter().find(|d| d.1 == c).map_or(c, |d| d.0))
                    .collect();
                let (bytes, _, unmappable) = encoding.encode(&theirs);
                (!unmappable && same_ascii(&bytes, text)).then(|| bytes.into_owned())
            }
        }
    }
}

/// Whether the ASCII bytes of `bytes` are the ASCII characters of `text`:
/// no byte of a multibyte character was ASCII (encoding_rs's EUC-KR and
/// GBK decoders accept the UHC and GBK extensions, whose second bytes can
/// be letters; PostgreSQL's EUC_KR and EUC_CN refuse them).
fn same_ascii(bytes: &[u8], text: &str) -> bool {
    let ascii = |b: &u8| b.is_ascii();
    bytes.iter().filter(|b| ascii(b)).count() == text.bytes().filter(|b| ascii(b)).count()
}

/// The codec of a `client_encoding` value, spelt any way PostgreSQL
/// accepts (case and punctuation do not count: `latin-1`, `ISO_8859_1`).
pub fn lookup(name: &str) -> Lookup {
    let key = clean(name);
    // windows1252 is WIN1252, windows866 WIN866, and so on.
    let key = match key.strip_prefix("windows") {
        Some(number) => format!("win{number}"),
        None => key,
    };
    let key = match key.as_str() {
        "utf8" | "unicode" => return Lookup::Utf8,
        "iso88591" => "latin1",
        "iso88592" => "latin2",
        "iso88593" => "latin3",
        "iso88594" => "latin4",
        "iso88599" => "latin5",
        "iso885910" => "latin6",
        "iso885913" => "latin7",
        "iso885914" => "latin8",
        "iso885915" => "latin9",
        "iso885916" => "latin10",
        "alt" => "win866",
        "win" => "win1251",
        "abc" | "tcvn" | "tcvn5712" | "vscii" => "win1258",
        "koi8" => "koi8r",
        other => other,
    };
    CODECS
        .iter()
        .find(|c| clean(c.name) == key)
        .map_or(Lookup::Other, Lookup::Codec)
}

/// The codec of a `client_encoding` value when the router transcodes it
/// (None: UTF8, or an encoding it does not read).
pub fn codec_named(name: &str) -> Option<&'static ClientCodec> {
    match lookup(name) {
        Lookup::Codec(codec) => Some(codec),
        Lookup::Utf8 | Lookup::Other => None,
    }
}

/// PostgreSQL's name as `lookup` compares it.
fn clean(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

macro_rules! table {
    ($name:literal, $init:ident, $c1:expr, $fixes:expr) => {
        ClientCodec {
            name: $name,
            kind: Kind::Table(SingleByte::new(&encoding_rs::$init, $c1, $fixes)),
        }
    };
}

use single_byte::C1;

/// Every encoding the router transcodes. The fixes are the bytes where
/// PostgreSQL's table differs from encoding_rs's (`tests.rs` compares all
/// of them with PostgreSQL's): the WHATWG tables, made for browsers, read
/// the bytes Windows leaves undefined as C1 controls, where PostgreSQL
/// refuses them; LATIN5 has no encoding_rs decoder of its own (its
/// "iso-8859-9" is windows-1254, whose 0x80..0x9F are printable); and
/// encoding_rs's KOI8-U is KOI8-RU, with two Belarusian letters where
/// PostgreSQL's KOI8U has box drawings.
static CODECS: [ClientCodec; 30] = [
    ClientCodec {
        name: "LATIN1",
        kind: Kind::Latin1,
    },
    table!("LATIN2", ISO_8859_2_INIT, C1::Controls, &[]),
    table!("LATIN3", ISO_8859_3_INIT, C1::Controls, &[]),
    table!("LATIN4", ISO_8859_4_INIT, C1::Controls, &[]),
    table!("LATIN5", WINDOWS_1254_INIT, C1::Controls, &[]),
    table!("LATIN6", ISO_8859_10_INIT, C1::Controls, &[]),
    table!("LATIN7", ISO_8859_13_INIT, C1::Controls, &[]),
    table!("LATIN8", ISO_8859_14_INIT, C1::Controls, &[]),
    table!("LATIN9", ISO_8859_15_INIT, C1::Controls, &[]),
    table!("LATIN10", ISO_8859_16_INIT, C1::Controls, &[]),
    table!("ISO_8859_5", ISO_8859_5_INIT, C1::Controls, &[]),
    table!("ISO_8859_6", ISO_8859_6_INIT, C1::Controls, &[]),
    table!("ISO_8859_7", ISO_8859_7_INIT, C1::Controls, &[]),
    table!("ISO_8859_8", ISO_8859_8_INIT, C1::Controls, &[]),
    table!("WIN866", IBM866_INIT, C1::AsDecoded, &[]),
    table!("WIN874", WINDOWS_874_INIT, C1::Undefined, &[]),
    table!("WIN1250", WINDOWS_1250_INIT, C1::Undefined, &[]),
    table!("WIN1251", WINDOWS_1251_INIT, C1::Undefined, &[]),
    table!("WIN1252", WINDOWS_1252_INIT, C1::Undefined, &[]),
    table!("WIN1253", WINDOWS_1253_INIT, C1::Undefined, &[]),
    table!("WIN1254", WINDOWS_1254_INIT, C1::Undefined, &[]),
    table!("WIN1255", WINDOWS_1255_INIT, C1::Undefined, &[(0xca, None)]),
    table!("WIN1256", WINDOWS_1256_INIT, C1::Undefined, &[]),
    table!("WIN1257", WINDOWS_1257_INIT, C1::Undefined, &[]),
    table!("WIN1258", WINDOWS_1258_INIT, C1::Undefined, &[]),
    table!("KOI8R", KOI8_R_INIT, C1::AsDecoded, &[]),
    table!(
        "KOI8U",
        KOI8_U_INIT,
        C1::AsDecoded,
        &[(0xae, Some('\u{255d}')), (0xbe, Some('\u{256c}'))]
    ),
    ClientCodec {
        name: "EUC_JP",
        kind: Kind::Euc {
            encoding: &encoding_rs::EUC_JP_INIT,
            differs: &[],
        },
    },
    ClientCodec {
        name: "EUC_KR",
        kind: Kind::Euc {
            encoding: &encoding_rs::EUC_KR_INIT,
            differs: &[],
        },
    },
    // GB2312 in EUC form; encoding_rs's GBK reads it, bar two characters.
    ClientCodec {
        name: "EUC_CN",
        kind: Kind::Euc {
            encoding: &encoding_rs::GBK_INIT,
            differs: &[('\u{b7}', '\u{30fb}'), ('\u{2014}', '\u{2015}')],
        },
    },
];
