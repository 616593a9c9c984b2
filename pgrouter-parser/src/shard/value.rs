//! Shard key values: read from SQL text (a literal, a text-format
//! parameter) or from a binary-format parameter, exactly as PostgreSQL's
//! input functions would read them for the configured type — including
//! their errors, so a bad key gets the error PostgreSQL would give.

use std::fmt;

/// The PostgreSQL type of a shard key (configured, never guessed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    Smallint,
    Integer,
    Bigint,
    Text,
    Varchar,
    Uuid,
}

impl KeyType {
    /// The name PostgreSQL uses in its messages.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Smallint => "smallint",
            KeyType::Integer => "integer",
            KeyType::Bigint => "bigint",
            KeyType::Text => "text",
            KeyType::Varchar => "character varying",
            KeyType::Uuid => "uuid",
        }
    }

    /// smallint, integer or bigint.
    pub fn is_integer(self) -> bool {
        matches!(self, KeyType::Smallint | KeyType::Integer | KeyType::Bigint)
    }

    fn range(self) -> (i64, i64) {
        match self {
            KeyType::Smallint => (i16::MIN.into(), i16::MAX.into()),
            KeyType::Integer => (i32::MIN.into(), i32::MAX.into()),
            _ => (i64::MIN, i64::MAX),
        }
    }
}

/// A key value of one of the supported types.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyValue {
    /// SQL NULL.
    Null,
    /// smallint, integer, bigint.
    Int(i64),
    /// text, varchar: the bytes (UTF-8, the database encoding).
    Text(Vec<u8>),
    /// uuid.
    Uuid([u8; 16]),
}

impl fmt::Display for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyValue::Null => f.write_str("NULL"),
            KeyValue::Int(v) => write!(f, "{v}"),
            KeyValue::Text(b) => write!(f, "'{}'", String::from_utf8_lossy(b)),
            KeyValue::Uuid(u) => {
                for (i, byte) in u.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// Why a key value cannot be placed: the SQLSTATE and message the client
/// gets (PostgreSQL's own for bad input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub sqlstate: &'static str,
    pub message: String,
}

impl KeyError {
    pub(crate) fn new(sqlstate: &'static str, message: impl Into<String>) -> Self {
        KeyError { sqlstate, message: message.into() }
    }

    fn syntax(ty: KeyType, text: &str) -> Self {
        Self::new("22P02", format!("invalid input syntax for type {}: \"{text}\"", ty.name()))
    }
}

/// The value of `text` as PostgreSQL's input function of `ty` reads it.
pub fn parse_text(ty: KeyType, text: &str) -> Result<KeyValue, KeyError> {
    match ty {
        KeyType::Smallint | KeyType::Integer | KeyType::Bigint => parse_int(ty, text).map(KeyValue::Int),
        KeyType::Text | KeyType::Varchar => Ok(KeyValue::Text(text.as_bytes().to_vec())),
        KeyType::Uuid => parse_uuid(text).map(KeyValue::Uuid).ok_or_else(|| KeyError::syntax(ty, text)),
    }
}

/// An integer key written as plain decimal digits (what a literal in a
/// statement usually is), read without [`parse_text`]'s trimming and
/// checks. `None` when it is not plain digits, has more than 18 of them, or
/// is out of the type's range: [`parse_text`] then gives the value or
/// PostgreSQL's error.
pub fn parse_plain_digits(ty: KeyType, digits: &str) -> Option<KeyValue> {
    let bytes = digits.as_bytes();
    if !ty.is_integer() || bytes.is_empty() || bytes.len() > 18 {
        return None;
    }
    let mut v: i64 = 0;
    for &d in bytes {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(d - b'0'); // at most 18 digits: no overflow
    }
    (v <= ty.range().1).then_some(KeyValue::Int(v))
}

/// `int2in`/`int4in`/`int8in`: optional surrounding whitespace, an optional
/// sign, decimal digits.
fn parse_int(ty: KeyType, text: &str) -> Result<i64, KeyError> {
    let is_space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c');
    let t = text.trim_matches(is_space);
    let (negative, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return Err(KeyError::syntax(ty, text));
    }
    let out_of_range = || KeyError::new("22003", format!("value \"{text}\" is out of range for type {}", ty.name()));
    // Accumulate negatively so i64::MIN fits.
    let mut v: i64 = 0;
    for d in digits.bytes() {
        v = v.checked_mul(10).and_then(|v| v.checked_sub(i64::from(d - b'0'))).ok_or_else(out_of_range)?;
    }
    let v = if negative { v } else { v.checked_neg().ok_or_else(out_of_range)? };
    let (min, max) = ty.range();
    if v < min || v > max {
        return Err(out_of_range());
    }
    Ok(v)
}

/// `uuid_in`: 32 hex digits, a hyphen allowed after any group of four,
/// optionally in braces.
fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let mut s = text.as_bytes();
    let braces = s.first() == Some(&b'{');
    if braces {
        s = &s[1..];
    }
    let mut out = [0u8; 16];
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    for (i, byte) in out.iter_mut().enumerate() {
        let (hi, lo) = (hex(*s.first()?)?, hex(*s.get(1)?)?);
        *byte = hi << 4 | lo;
        s = &s[2..];
        if s.first() == Some(&b'-') && i % 2 == 1 && i < 15 {
            s = &s[1..];
        }
    }
    if braces {
        if s.first() != Some(&b'}') {
            return None;
        }
        s = &s[1..];
    }
    s.is_empty().then_some(out)
}

/// The value of a binary-format parameter. `sent` is the type the value
/// was sent as (the Parse's declared type, else the type PostgreSQL infers
/// for it, which is the key's own); integers of any width are accepted for
/// an integer key.
pub fn parse_binary(ty: KeyType, sent: KeyType, bytes: &[u8]) -> Result<KeyValue, KeyError> {
    let bad = || KeyError::new("22P03", format!("incorrect binary data format for a {} shard key", ty.name()));
    match sent {
        KeyType::Smallint | KeyType::Integer | KeyType::Bigint if ty.is_integer() => {
            let v = match bytes.len() {
                2 => i64::from(i16::from_be_bytes([bytes[0], bytes[1]])),
                4 => i64::from(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])),
                8 => i64::from_be_bytes(bytes.try_into().map_err(|_| bad())?),
                _ => return Err(bad()),
            };
            Ok(KeyValue::Int(v))
        }
        KeyType::Text | KeyType::Varchar => {
            let text = std::str::from_utf8(bytes).map_err(|_| bad())?;
            parse_text(ty, text)
        }
        KeyType::Uuid if ty == KeyType::Uuid => Ok(KeyValue::Uuid(bytes.try_into().map_err(|_| bad())?)),
        _ => Err(bad()),
    }
}

/// The values of an array parameter or literal (`key = ANY(...)`) in text
/// format: `{1,2,"3",NULL}`, flattened when it has several dimensions
/// (`{{1,2},{3,4}}`, `[0:1]={1,2}`), as `= ANY` compares with every element.
///
/// Lenient about shapes PostgreSQL refuses (sub-arrays of unequal lengths):
/// the text still reaches PostgreSQL, which reports its own error.
pub fn parse_text_array(ty: KeyType, text: &str) -> Result<Vec<KeyValue>, KeyError> {
    let malformed = || KeyError::new("22P02", format!("malformed array literal: \"{text}\""));
    let mut t = text.trim();
    // Explicit bounds: `[1:2][1:2]={...}`.
    if t.starts_with('[') {
        t = t.split_once('=').map(|(_, rest)| rest.trim_start()).ok_or_else(malformed)?;
    }
    let mut chars = t.chars().peekable();
    if chars.next() != Some('{') {
        return Err(malformed());
    }
    let mut out = Vec::new();
    array_items(ty, &mut chars, &mut out, 1, &malformed)?;
    if chars.any(|c| !c.is_whitespace()) {
        return Err(malformed());
    }
    Ok(out)
}

/// PostgreSQL's MAXDIM.
const MAX_DIMENSIONS: usize = 6;

/// The items of one `{...}` (its `{` already read) up to its `}`.
fn array_items(
    ty: KeyType,
    chars: &mut std::iter::Peekable<std::str::Chars>,
    out: &mut Vec<KeyValue>,
    depth: usize,
    malformed: &dyn Fn() -> KeyError,
) -> Result<(), KeyError> {
    let skip_blanks = |chars: &mut std::iter::Peekable<std::str::Chars>| {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
    };
    skip_blanks(chars);
    if chars.peek() == Some(&'}') {
        chars.next();
        return Ok(());
    }
    loop {
        skip_blanks(chars);
        if chars.peek() == Some(&'{') {
            if depth >= MAX_DIMENSIONS {
                return Err(KeyError::new(
                    "54000",
                    format!("number of array dimensions exceeds the maximum allowed ({MAX_DIMENSIONS})"),
                ));
            }
            chars.next();
            array_items(ty, chars, out, depth + 1, malformed)?;
            skip_blanks(chars);
        } else {
            let mut item = String::new();
            let quoted = chars.peek() == Some(&'"');
            if quoted {
                chars.next();
                loop {
                    match chars.next().ok_or_else(malformed)? {
                        '"' => break,
                        '\\' => item.push(chars.next().ok_or_else(malformed)?),
                        c => item.push(c),
                    }
                }
                skip_blanks(chars);
            } else {
                while let Some(&c) = chars.peek() {
                    if matches!(c, ',' | '}') {
                        break;
                    }
                    if matches!(c, '{' | '"') {
                        return Err(malformed());
                    }
                    chars.next();
                    item.push(if c == '\\' { chars.next().ok_or_else(malformed)? } else { c });
                }
                item = item.trim_end().to_string();
            }
            if !quoted && item.eq_ignore_ascii_case("null") {
                out.push(KeyValue::Null);
            } else if item.is_empty() && !quoted {
                return Err(malformed());
            } else {
                out.push(parse_text(ty, &item)?);
            }
        }
        match chars.next() {
            Some('}') => return Ok(()),
            Some(',') => {}
            _ => return Err(malformed()),
        }
    }
}

/// The values of a binary-format array parameter: dimensions, then each
/// element with its length (-1 = NULL), elements of the array's element type.
pub fn parse_binary_array(ty: KeyType, bytes: &[u8]) -> Result<Vec<KeyValue>, KeyError> {
    let bad = || KeyError::new("22P03", "incorrect binary data format in an array shard key parameter");
    let mut r = bytes;
    let int = |r: &mut &[u8]| -> Result<i32, KeyError> {
        let (head, rest) = r.split_first_chunk::<4>().ok_or_else(bad)?;
        *r = rest;
        Ok(i32::from_be_bytes(*head))
    };
    let ndim = int(&mut r)?;
    let _flags = int(&mut r)?;
    let elem_oid = int(&mut r)? as u32;
    let sent = oid_type(elem_oid).unwrap_or(ty);
    if ndim == 0 {
        return Ok(Vec::new());
    }
    if !(1..=6).contains(&ndim) {
        return Err(bad());
    }
    // Several dimensions: `= ANY` compares with every element, in order.
    let mut count: usize = 1;
    for _ in 0..ndim {
        let size = usize::try_from(int(&mut r)?).map_err(|_| bad())?;
        let _lower = int(&mut r)?;
        count = count.checked_mul(size).ok_or_else(bad)?;
    }
    // Each element takes at least its 4-byte length.
    if count > r.len() / 4 {
        return Err(bad());
    }
    let mut out = Vec::new();
    for _ in 0..count {
        let len = int(&mut r)?;
        if len < 0 {
            out.push(KeyValue::Null);
            continue;
        }
        let len = len as usize;
        let value = r.get(..len).ok_or_else(bad)?;
        r = &r[len..];
        out.push(parse_binary(ty, sent, value)?);
    }
    Ok(out)
}

/// The key type of a PostgreSQL type OID the router can read in binary.
pub fn oid_type(oid: u32) -> Option<KeyType> {
    Some(match oid {
        21 => KeyType::Smallint,
        23 => KeyType::Integer,
        20 => KeyType::Bigint,
        25 | 19 | 1042 => KeyType::Text,
        1043 => KeyType::Varchar,
        2950 => KeyType::Uuid,
        _ => return None,
    })
}

/// The key type a type name in a cast stands for (`$1::bigint`).
pub fn type_name(name: &str) -> Option<KeyType> {
    Some(match name {
        "int2" | "smallint" => KeyType::Smallint,
        "int4" | "integer" | "int" => KeyType::Integer,
        "int8" | "bigint" => KeyType::Bigint,
        "text" | "bpchar" | "name" => KeyType::Text,
        "varchar" => KeyType::Varchar,
        "uuid" => KeyType::Uuid,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_digits_read_as_parse_text_reads_them() {
        for ty in [KeyType::Smallint, KeyType::Integer, KeyType::Bigint] {
            for text in [
                "0",
                "7",
                "00042",
                "32767",
                "32768",
                "2147483647",
                "2147483648",
                "999999999999999999",
                "9223372036854775807",
            ] {
                match parse_plain_digits(ty, text) {
                    Some(v) => assert_eq!(Ok(v), parse_text(ty, text), "{ty:?} {text}"),
                    // Left to parse_text: beyond 18 digits or the type's range.
                    None => assert!(text.len() > 18 || parse_text(ty, text).is_err(), "{ty:?} {text}"),
                }
            }
            for not_plain in ["", "-1", "+1", " 1", "1 ", "1.0", "1e3", "x"] {
                assert_eq!(parse_plain_digits(ty, not_plain), None, "{not_plain:?}");
            }
        }
        assert_eq!(parse_plain_digits(KeyType::Text, "1"), None);
    }

    #[test]
    fn integers_as_postgresql_reads_them() {
        assert_eq!(parse_text(KeyType::Bigint, " -42 "), Ok(KeyValue::Int(-42)));
        assert_eq!(parse_text(KeyType::Bigint, "+7"), Ok(KeyValue::Int(7)));
        assert_eq!(parse_text(KeyType::Bigint, "-9223372036854775808"), Ok(KeyValue::Int(i64::MIN)));
        let e = parse_text(KeyType::Bigint, "x").unwrap_err();
        assert_eq!((e.sqlstate, e.message.as_str()), ("22P02", "invalid input syntax for type bigint: \"x\""));
        for bad in ["", " ", "1.5", "1 2", "--1", "0x10"] {
            assert_eq!(parse_text(KeyType::Integer, bad).unwrap_err().sqlstate, "22P02", "{bad:?}");
        }
        let e = parse_text(KeyType::Integer, "2147483648").unwrap_err();
        assert_eq!(
            (e.sqlstate, e.message.as_str()),
            ("22003", "value \"2147483648\" is out of range for type integer")
        );
        assert_eq!(parse_text(KeyType::Smallint, "-32769").unwrap_err().sqlstate, "22003");
        assert_eq!(parse_text(KeyType::Bigint, "9223372036854775808").unwrap_err().sqlstate, "22003");
    }

    #[test]
    fn uuids_in_every_accepted_spelling() {
        let want = parse_text(KeyType::Uuid, "550e8400-e29b-41d4-a716-446655440000").unwrap();
        for ok in [
            "550E8400E29B41D4A716446655440000",
            "{550e8400-e29b-41d4-a716-446655440000}",
            "550e-8400-e29b-41d4-a716-4466-5544-0000",
        ] {
            assert_eq!(parse_text(KeyType::Uuid, ok).unwrap(), want, "{ok}");
        }
        assert_eq!(want.to_string(), "550e8400-e29b-41d4-a716-446655440000");
        for bad in [
            "550e8400",
            "550e8400-e29b-41d4-a716-44665544000g",
            "{550e8400e29b41d4a716446655440000",
            "-550e8400e29b41d4a716446655440000",
        ] {
            assert_eq!(parse_text(KeyType::Uuid, bad).unwrap_err().sqlstate, "22P02", "{bad}");
        }
    }

    #[test]
    fn binary_values() {
        assert_eq!(parse_binary(KeyType::Bigint, KeyType::Bigint, &(-5i64).to_be_bytes()), Ok(KeyValue::Int(-5)));
        assert_eq!(parse_binary(KeyType::Bigint, KeyType::Integer, &7i32.to_be_bytes()), Ok(KeyValue::Int(7)));
        assert_eq!(parse_binary(KeyType::Bigint, KeyType::Bigint, &[1, 2, 3]).unwrap_err().sqlstate, "22P03");
        assert_eq!(parse_binary(KeyType::Text, KeyType::Text, b"ab"), Ok(KeyValue::Text(b"ab".to_vec())));
        assert_eq!(parse_binary(KeyType::Bigint, KeyType::Text, b"12"), Ok(KeyValue::Int(12)));
        assert_eq!(parse_binary(KeyType::Uuid, KeyType::Uuid, &[0; 16]), Ok(KeyValue::Uuid([0; 16])));
    }

    #[test]
    fn arrays() {
        let v = parse_text_array(KeyType::Bigint, "{1, 2,NULL,\"3\"}").unwrap();
        assert_eq!(v, vec![KeyValue::Int(1), KeyValue::Int(2), KeyValue::Null, KeyValue::Int(3)]);
        assert_eq!(parse_text_array(KeyType::Text, "{a,\"b,c\"}").unwrap().len(), 2);
        assert_eq!(parse_text_array(KeyType::Bigint, "{}").unwrap(), vec![]);
        assert_eq!(parse_text_array(KeyType::Bigint, "1,2").unwrap_err().sqlstate, "22P02");
        assert_eq!(parse_text_array(KeyType::Bigint, "{x}").unwrap_err().sqlstate, "22P02");
        let flat = |t: &str| parse_text_array(KeyType::Bigint, t).map(|v| v.len()).map_err(|e| e.sqlstate);
        assert_eq!(flat("{{1,2},{3,4}}"), Ok(4));
        assert_eq!(flat(" { {1, 2} , { 3 ,NULL } } "), Ok(4));
        assert_eq!(flat("[0:1]={1,2}"), Ok(2));
        assert_eq!(flat("[1:2][1:1]={{1},{2}}"), Ok(2));
        assert_eq!(flat("{{{{{{{1}}}}}}}"), Err("54000"));
        assert_eq!(flat("{{1,2}"), Err("22P02"));
        assert_eq!(flat("{1,2}}"), Err("22P02"));
        assert_eq!(flat("{1{2}}"), Err("22P02"));
        assert_eq!(flat("[0:1]"), Err("22P02"));
        let mut bin = Vec::new();
        for w in [1i32, 0, 20, 2, 1] {
            bin.extend_from_slice(&w.to_be_bytes());
        }
        bin.extend_from_slice(&8i32.to_be_bytes());
        bin.extend_from_slice(&9i64.to_be_bytes());
        bin.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(parse_binary_array(KeyType::Bigint, &bin).unwrap(), vec![KeyValue::Int(9), KeyValue::Null]);
        // Two dimensions, 2 x 1: flattened.
        let mut bin = Vec::new();
        for w in [2i32, 0, 20, 2, 1, 1, 1] {
            bin.extend_from_slice(&w.to_be_bytes());
        }
        for k in [4i64, 5] {
            bin.extend_from_slice(&8i32.to_be_bytes());
            bin.extend_from_slice(&k.to_be_bytes());
        }
        assert_eq!(parse_binary_array(KeyType::Bigint, &bin).unwrap(), vec![KeyValue::Int(4), KeyValue::Int(5)]);
        bin.truncate(bin.len() - 12);
        assert_eq!(parse_binary_array(KeyType::Bigint, &bin).unwrap_err().sqlstate, "22P03");
    }
}
