//! A Bind's parameter values in UTF-8, for the router's own reading of
//! shard keys: text-format values are in the client's encoding (the server
//! converts them), while shard keys are hashed as the UTF-8 it stores.

use super::ClientCodec;

/// The part of a Bind after its names (`rest`: formats, values, result
/// formats) with each text-format value in UTF-8. None when it is
/// malformed or a value is not text in `codec` (the server refuses it).
pub fn decode_bind_values(codec: &ClientCodec, rest: &[u8]) -> Option<Vec<u8>> {
    let i16_at = |at: usize| {
        rest.get(at..at + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
    };
    let nformats = usize::try_from(i16_at(0)?).ok()?;
    let mut at = 2 + 2 * nformats;
    let format_of = |i: usize| match nformats {
        0 => Some(0),
        1 => i16_at(2),
        _ => i16_at(2 + 2 * i),
    };
    let nvalues = usize::try_from(i16_at(at)?).ok()?;
    at += 2;
    let mut out = rest.get(..at)?.to_vec();
    for i in 0..nvalues {
        let len = i32::from_be_bytes(rest.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        let Ok(len) = usize::try_from(len) else {
            out.extend_from_slice(&len.to_be_bytes());
            continue;
        };
        let value = rest.get(at..at + len)?;
        at += len;
        let value = match format_of(i)? {
            0 if !value.is_ascii() => codec.decode(value)?.into_bytes(),
            _ => value.to_vec(),
        };
        out.extend_from_slice(&(value.len() as i32).to_be_bytes());
        out.extend_from_slice(&value);
    }
    out.extend_from_slice(rest.get(at..)?);
    Some(out)
}
