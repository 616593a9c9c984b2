//! Column values read by type, so that rows compare and group as
//! PostgreSQL would compare them: a [`Key`] per value, from text or binary
//! format alike. Text types compare by bytes; the caller decides whether
//! that is the collation's order (see `MergeContext`).

use std::cmp::Ordering;

use super::datetime;
use super::numeric::Numeric;
use super::MergeError;

pub const BOOL: u32 = 16;
pub const BYTEA: u32 = 17;
pub const CHAR: u32 = 18;
pub const NAME: u32 = 19;
pub const INT8: u32 = 20;
pub const INT2: u32 = 21;
pub const INT4: u32 = 23;
pub const TEXT: u32 = 25;
pub const OID: u32 = 26;
pub const FLOAT4: u32 = 700;
pub const FLOAT8: u32 = 701;
pub const BPCHAR: u32 = 1042;
pub const VARCHAR: u32 = 1043;
pub const DATE: u32 = 1082;
pub const TIME: u32 = 1083;
pub const TIMESTAMP: u32 = 1114;
pub const TIMESTAMPTZ: u32 = 1184;
pub const INTERVAL: u32 = 1186;
pub const TIMETZ: u32 = 1266;
pub const NUMERIC: u32 = 1700;
pub const UUID: u32 = 2950;

/// Arrays whose equality is equality of their text and binary forms:
/// elements of types with one representation per value, and dimensions
/// and lower bounds that `=` compares as well. int2[], int4[], int8[],
/// bool[], oid[], "char"[], uuid[].
const BYTE_EQUAL_ARRAYS: &[u32] = &[1005, 1007, 1016, 1000, 1028, 1002, 2951];

/// The first OID of objects created by users (enums, composites, ...).
const FIRST_USER_OID: u32 = 16384;

/// One column's type and format, from a RowDescription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColType {
    pub oid: u32,
    pub binary: bool,
}

impl ColType {
    /// Text types, ordered by the collation.
    pub fn is_text(self) -> bool {
        matches!(self.oid, TEXT | VARCHAR | BPCHAR)
    }

    /// A type created in the database (an enum, a domain, a composite):
    /// its OID is each server's own, so shards name it differently.
    pub fn is_user_defined(self) -> bool {
        self.oid >= FIRST_USER_OID
    }

    /// Types this module reads and orders.
    pub fn is_ordered(self) -> bool {
        matches!(
            self.oid,
            BOOL | BYTEA
                | CHAR
                | NAME
                | INT8
                | INT2
                | INT4
                | TEXT
                | OID
                | FLOAT4
                | FLOAT8
                | BPCHAR
                | VARCHAR
                | DATE
                | TIME
                | TIMESTAMP
                | TIMESTAMPTZ
                | INTERVAL
                | TIMETZ
                | NUMERIC
                | UUID
        )
    }

    pub fn is_date_time(self) -> bool {
        matches!(
            self.oid,
            DATE | TIME | TIMESTAMP | TIMESTAMPTZ | INTERVAL | TIMETZ
        )
    }

    /// Refuses GROUP BY / DISTINCT keys of types whose equal values may
    /// differ in their text or binary form (records, numeric[], jsonb,
    /// ranges, inet, ...): an allow-list of the types [`key`] reads
    /// exactly, arrays of byte-equal elements and the `enums` (user types
    /// a shard named as enums: equal labels are equal values).
    pub fn check_keyable(self, enums: &[u32]) -> Result<(), MergeError> {
        if self.is_ordered()
            || BYTE_EQUAL_ARRAYS.contains(&self.oid)
            || (self.oid >= FIRST_USER_OID && enums.contains(&self.oid))
        {
            return Ok(());
        }
        Err(MergeError::unsupported(format!(
            "GROUP BY or DISTINCT on type {} across shards is not supported",
            type_name(self.oid)
        )))
    }
}

/// A value as it compares. Keys of one column are all of one variant
/// (or Null), so the derived order between variants never matters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Bool(bool),
    Int(i64),
    Float(OrdF64),
    Numeric(NumKey),
    /// Text, uuid, bytea and unknown types: their bytes.
    Bytes(Vec<u8>),
    /// Dates, times and timestamps as integers; timetz with its zone.
    Time(i64, i32),
    Interval(i128),
}

/// f64 with PostgreSQL's order: NaN above everything and equal to itself, -0 = 0.
#[derive(Debug, Clone, Copy)]
pub struct OrdF64(pub f64);

impl OrdF64 {
    fn norm(self) -> u64 {
        if self.0.is_nan() {
            u64::MAX
        } else if self.0 == 0.0 {
            0
        } else {
            self.0.to_bits()
        }
    }
}

impl PartialEq for OrdF64 {
    fn eq(&self, o: &Self) -> bool {
        self.norm() == o.norm()
    }
}
impl Eq for OrdF64 {}
impl std::hash::Hash for OrdF64 {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.norm().hash(h)
    }
}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, o: &Self) -> Ordering {
        match (self.0.is_nan(), o.0.is_nan()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => self.0.partial_cmp(&o.0).unwrap_or(Ordering::Equal),
        }
    }
}

/// A numeric in canonical form (1.0 = 1.00).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumKey(pub Numeric);

impl std::hash::Hash for NumKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.to_text().hash(h)
    }
}
impl PartialOrd for NumKey {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for NumKey {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.cmp(&o.0)
    }
}

fn bad(t: ColType) -> MergeError {
    MergeError::internal(format!(
        "a shard sent a malformed value of type {}",
        type_name(t.oid)
    ))
}

fn utf8(t: ColType, b: &[u8]) -> Result<&str, MergeError> {
    std::str::from_utf8(b).map_err(|_| bad(t))
}

fn be<const N: usize>(t: ColType, b: &[u8]) -> Result<[u8; N], MergeError> {
    b.try_into().map_err(|_| bad(t))
}

/// Reads one value of type `t`. Text date/time values need DateStyle ISO.
pub fn key(t: ColType, b: &[u8], datestyle_iso: bool) -> Result<Key, MergeError> {
    if !t.binary && t.is_date_time() && !datestyle_iso && t.oid != INTERVAL && t.oid != TIME {
        return Err(MergeError::unsupported(format!(
            "merging {} values in text format across shards needs DateStyle ISO",
            type_name(t.oid)
        )));
    }
    let k = if t.binary {
        match t.oid {
            BOOL => Key::Bool(be::<1>(t, b)?[0] != 0),
            INT2 => Key::Int(i16::from_be_bytes(be(t, b)?).into()),
            INT4 => Key::Int(i32::from_be_bytes(be(t, b)?).into()),
            OID => Key::Int(u32::from_be_bytes(be(t, b)?).into()),
            INT8 => Key::Int(i64::from_be_bytes(be(t, b)?)),
            FLOAT4 => Key::Float(OrdF64(f32::from_be_bytes(be(t, b)?).into())),
            FLOAT8 => Key::Float(OrdF64(f64::from_be_bytes(be(t, b)?))),
            NUMERIC => Key::Numeric(NumKey(
                Numeric::parse_binary(b).ok_or_else(|| bad(t))?.canonical(),
            )),
            DATE => {
                let d = i32::from_be_bytes(be(t, b)?);
                Key::Time(
                    match d {
                        i32::MAX => i64::MAX,
                        i32::MIN => i64::MIN,
                        d => d.into(),
                    },
                    0,
                )
            }
            TIME | TIMESTAMP | TIMESTAMPTZ => Key::Time(i64::from_be_bytes(be(t, b)?), 0),
            TIMETZ => {
                let b: [u8; 12] = be(t, b)?;
                let time = i64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
                let zone = i32::from_be_bytes(b[8..].try_into().expect("4 bytes"));
                Key::Time(time.saturating_add(zone as i64 * 1_000_000), zone)
            }
            INTERVAL => {
                let b: [u8; 16] = be(t, b)?;
                let micros = i64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
                let days = i32::from_be_bytes(b[8..12].try_into().expect("4 bytes"));
                let months = i32::from_be_bytes(b[12..].try_into().expect("4 bytes"));
                Key::Interval(datetime::interval_binary(micros, days, months))
            }
            BPCHAR => Key::Bytes(trim_spaces(b).to_vec()),
            _ => Key::Bytes(b.to_vec()),
        }
    } else {
        let s = || utf8(t, b);
        match t.oid {
            BOOL => Key::Bool(matches!(b, b"t" | b"true" | b"TRUE" | b"on" | b"1")),
            INT2 | INT4 | INT8 | OID => Key::Int(s()?.parse().map_err(|_| bad(t))?),
            FLOAT4 | FLOAT8 => Key::Float(OrdF64(s()?.parse().map_err(|_| bad(t))?)),
            NUMERIC => Key::Numeric(NumKey(
                Numeric::parse_text(s()?).ok_or_else(|| bad(t))?.canonical(),
            )),
            DATE => Key::Time(datetime::date(s()?).ok_or_else(|| bad(t))?, 0),
            TIME => Key::Time(datetime::time(s()?).ok_or_else(|| bad(t))?, 0),
            TIMESTAMP => Key::Time(datetime::timestamp(s()?, false).ok_or_else(|| bad(t))?, 0),
            TIMESTAMPTZ => Key::Time(datetime::timestamp(s()?, true).ok_or_else(|| bad(t))?, 0),
            TIMETZ => {
                let (v, zone) = datetime::timetz(s()?).ok_or_else(|| bad(t))?;
                Key::Time(v, zone)
            }
            INTERVAL => Key::Interval(datetime::interval(s()?).ok_or_else(|| {
                MergeError::unsupported(format!(
                    "interval value {:?} across shards: only IntervalStyle postgres can be merged",
                    String::from_utf8_lossy(b)
                ))
            })?),
            UUID => Key::Bytes(b.to_ascii_lowercase()),
            BPCHAR => Key::Bytes(trim_spaces(b).to_vec()),
            BYTEA => Key::Bytes(bytea_text(b).ok_or_else(|| bad(t))?),
            _ => Key::Bytes(b.to_vec()),
        }
    };
    Ok(k)
}

/// The bytes of a bytea in text format, in either `bytea_output`: hex
/// (`\x0aff`) or escape (`\\` for a backslash, `\ooo` octal, other bytes
/// as they are). Its text does not order as its bytes do in escape format.
fn bytea_text(b: &[u8]) -> Option<Vec<u8>> {
    if let Some(hex) = b.strip_prefix(b"\\x") {
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        return hex
            .chunks(2)
            .map(|p| match p {
                [h, l] => Some(digit(*h)? << 4 | digit(*l)?),
                _ => None,
            })
            .collect();
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
        } else if b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let oct = b.get(i + 1..i + 4)?;
            if !oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                return None;
            }
            let v = oct.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
            out.push(u8::try_from(v).ok()?);
            i += 4;
        }
    }
    Some(out)
}

#[cfg(test)]
#[test]
fn bytea_text_reads_hex_and_escape() {
    assert_eq!(bytea_text(b"\\x000141ff").unwrap(), [0, 1, 0x41, 0xff]);
    assert_eq!(
        bytea_text(b"\\000\\001A\\\\z\\013").unwrap(),
        [0, 1, b'A', b'\\', b'z', 11]
    );
    assert!(bytea_text(b"\\x0").is_none() && bytea_text(b"\\9").is_none());
}

/// bpchar compares without its trailing spaces.
fn trim_spaces(b: &[u8]) -> &[u8] {
    let end = b.iter().rposition(|&c| c != b' ').map_or(0, |i| i + 1);
    &b[..end]
}

/// A name for error messages.
pub fn type_name(oid: u32) -> String {
    let name = match oid {
        BOOL => "boolean",
        BYTEA => "bytea",
        CHAR => "\"char\"",
        NAME => "name",
        INT8 => "bigint",
        INT2 => "smallint",
        INT4 => "integer",
        TEXT => "text",
        OID => "oid",
        FLOAT4 => "real",
        FLOAT8 => "double precision",
        BPCHAR => "character",
        VARCHAR => "character varying",
        DATE => "date",
        TIME => "time",
        TIMESTAMP => "timestamp",
        TIMESTAMPTZ => "timestamptz",
        INTERVAL => "interval",
        TIMETZ => "timetz",
        NUMERIC => "numeric",
        UUID => "uuid",
        3802 => "jsonb",
        2249 => "record",
        1231 => "numeric[]",
        1021 => "real[]",
        1022 => "double precision[]",
        1187 => "interval[]",
        1014 => "character[]",
        1009 => "text[]",
        1185 => "timestamptz[]",
        114 => "json",
        790 => "money",
        _ => return format!("with OID {oid}"),
    };
    name.to_string()
}
