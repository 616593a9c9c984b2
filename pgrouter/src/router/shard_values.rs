//! Key values of one execution: a literal token read for the key's type,
//! a Bind parameter in text or binary format (the sent type from the
//! Parse's declared types, a `$n::type` cast, else the key's own type).

use pgrouter_parser::shard::{
    oid_type, parse_binary, parse_binary_array, parse_text, parse_text_array, KeyType, KeyValue,
    Literal,
};

use super::shard_plan::{key_error, unsupported, Values};
use super::Refusal;

/// A literal token's value for a key of type `ty`.
pub(super) fn literal_value(lit: &Literal, negate: bool, ty: KeyType) -> Result<KeyValue, Refusal> {
    if !lit.numeric {
        if negate {
            return Err(unsupported(
                "pgrouter: a negated string as a shard key is not supported",
            ));
        }
        return parse_text(ty, &lit.text).map_err(key_error);
    }
    let text = if negate {
        format!("-{}", lit.text)
    } else {
        lit.text.clone()
    };
    if ty.is_integer() && text.contains(['.', 'e', 'E']) {
        return Err(unsupported(format!(
            "pgrouter: the shard key is compared with the non-integer number {text}; HINT: write an integer"
        )));
    }
    parse_text(ty, &text).map_err(key_error)
}

/// The values parameter `$number` gives the key (several for an array).
pub(super) fn param_values(
    values: &Values,
    number: usize,
    cast: Option<KeyType>,
    ty: KeyType,
    array: bool,
) -> Result<Vec<KeyValue>, Refusal> {
    param_values_in(values, number, cast, ty, array, None)
}

/// [`param_values`] for a session whose client encoding is `foreign` (not
/// UTF8): a text parameter with a non-ASCII byte is in that encoding, not
/// malformed UTF-8, and cannot be placed (0A000, see `plan_encoded`).
pub(super) fn param_values_in(
    values: &Values,
    number: usize,
    cast: Option<KeyType>,
    ty: KeyType,
    array: bool,
    foreign: Option<&str>,
) -> Result<Vec<KeyValue>, Refusal> {
    let Values::Bind {
        params,
        param_types,
        ..
    } = values
    else {
        return Err(unsupported(format!(
            "pgrouter: the shard key is parameter ${number}, whose value the router does not see here \
             (SQL-level PREPARE/EXECUTE); HINT: use the extended protocol or a literal"
        )));
    };
    let Some((format, bytes)) = params.get(number) else {
        return Err(Refusal {
            sqlstate: "08P01",
            message: format!("pgrouter: Bind has no value for parameter ${number}"),
        });
    };
    let Some(bytes) = bytes else {
        return Ok(vec![KeyValue::Null]);
    };
    let declared = param_types.get(number - 1).copied().unwrap_or(0);
    let found = if format == 0 {
        if let Some(encoding) = foreign.filter(|_| !bytes.is_ascii()) {
            return Err(foreign_key(encoding));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| invalid_utf8())?;
        if array {
            parse_text_array(ty, text).map_err(key_error)?
        } else {
            vec![parse_text(ty, text).map_err(key_error)?]
        }
    } else if array {
        parse_binary_array(ty, bytes).map_err(key_error)?
    } else {
        vec![binary_param_value(bytes, declared, number, cast, ty)?]
    };
    found
        .into_iter()
        .map(|value| as_declared(value, declared, number))
        .collect()
}

/// One parameter's value for the key, as [`param_values`] reads a
/// non-array one: `declared` is the Parse's type for it (0: none).
pub(super) fn param_value(
    format: i16,
    bytes: Option<&[u8]>,
    declared: i32,
    number: usize,
    cast: Option<KeyType>,
    ty: KeyType,
) -> Result<KeyValue, Refusal> {
    let Some(bytes) = bytes else {
        return Ok(KeyValue::Null);
    };
    let value = if format == 0 {
        let text = std::str::from_utf8(bytes).map_err(|_| invalid_utf8())?;
        parse_text(ty, text).map_err(key_error)?
    } else {
        binary_param_value(bytes, declared, number, cast, ty)?
    };
    as_declared(value, declared, number)
}

/// A text value as PostgreSQL compares or stores it when the client
/// declared the parameter's type in Parse: `bpchar` loses its trailing
/// blanks when it meets text, `name` keeps at most 63 bytes; `"char"` keeps
/// one byte, which the router does not follow (refused). Hashing the value
/// as sent would place the key on the wrong shard.
fn as_declared(value: KeyValue, declared: i32, number: usize) -> Result<KeyValue, Refusal> {
    const BPCHAR: i32 = 1042;
    const BPCHAR_ARRAY: i32 = 1014;
    const NAME: i32 = 19;
    const NAME_ARRAY: i32 = 1003;
    const CHAR: i32 = 18;
    const CHAR_ARRAY: i32 = 1002;
    /// NAMEDATALEN - 1.
    const NAME_BYTES: usize = 63;
    let KeyValue::Text(mut bytes) = value else {
        return Ok(value);
    };
    match declared {
        BPCHAR | BPCHAR_ARRAY => {
            let kept = bytes.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
            bytes.truncate(kept);
        }
        NAME | NAME_ARRAY if bytes.len() > NAME_BYTES => {
            let mut kept = NAME_BYTES;
            // Never split a UTF-8 character, as PostgreSQL's clipping does not.
            while kept > 0 && (bytes[kept] & 0xC0) == 0x80 {
                kept -= 1;
            }
            bytes.truncate(kept);
        }
        CHAR | CHAR_ARRAY => {
            return Err(unsupported(format!(
                "pgrouter: the shard key parameter ${number} is declared as type \"char\", \
                 which keeps only its first byte; HINT: declare it as text"
            )))
        }
        _ => {}
    }
    Ok(KeyValue::Text(bytes))
}

fn binary_param_value(
    bytes: &[u8],
    declared: i32,
    number: usize,
    cast: Option<KeyType>,
    ty: KeyType,
) -> Result<KeyValue, Refusal> {
    let declared = declared as u32;
    let sent = if declared != 0 {
        oid_type(declared).ok_or_else(|| {
            unsupported(format!(
                "pgrouter: the shard key parameter ${number} is sent in binary as type oid {declared}, \
                 which the router cannot read; HINT: send it in text format"
            ))
        })?
    } else {
        cast.unwrap_or(ty)
    };
    parse_binary(ty, sent, bytes).map_err(key_error)
}

/// The refusal of a non-ASCII text key in a client encoding other than UTF8.
pub(super) fn foreign_key(encoding: &str) -> Refusal {
    Refusal {
        sqlstate: "0A000",
        message: format!(
            "pgrouter: a shard key with non-ASCII characters in client_encoding {encoding} cannot be placed \
             (keys are hashed as UTF-8); HINT: SET client_encoding = 'UTF8'"
        ),
    }
}

fn invalid_utf8() -> Refusal {
    Refusal {
        sqlstate: "22021",
        message: "pgrouter: invalid UTF-8 in a parameter".into(),
    }
}
