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
    if format == 0 {
        let text = std::str::from_utf8(bytes).map_err(|_| invalid_utf8())?;
        return if array {
            parse_text_array(ty, text).map_err(key_error)
        } else {
            parse_text(ty, text).map(|v| vec![v]).map_err(key_error)
        };
    }
    if array {
        return parse_binary_array(ty, bytes).map_err(key_error);
    }
    let declared = param_types.get(number - 1).copied().unwrap_or(0);
    binary_param_value(bytes, declared, number, cast, ty).map(|v| vec![v])
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
    if format == 0 {
        let text = std::str::from_utf8(bytes).map_err(|_| invalid_utf8())?;
        return parse_text(ty, text).map_err(key_error);
    }
    binary_param_value(bytes, declared, number, cast, ty)
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

fn invalid_utf8() -> Refusal {
    Refusal {
        sqlstate: "22021",
        message: "pgrouter: invalid UTF-8 in a parameter".into(),
    }
}
