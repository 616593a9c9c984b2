//! The parameter values of a Bind message, for finding shard keys. Read
//! without copying; a malformed Bind yields `None` (the server reports it).

/// Formats and values of a Bind's parameters.
pub struct BindParams<'a> {
    formats: Vec<i16>,
    values: Vec<Option<&'a [u8]>>,
}

impl<'a> BindParams<'a> {
    /// Reads the parameters of a Bind body (after portal and statement names:
    /// `rest` of [`crate::protocol::frontend::parse_bind_names`]).
    pub fn parse(rest: &'a [u8]) -> Option<BindParams<'a>> {
        let mut r = rest;
        let mut take = |n: usize| -> Option<&'a [u8]> {
            let (head, tail) = (r.get(..n)?, r.get(n..)?);
            r = tail;
            Some(head)
        };
        let i16_of = |b: &[u8]| i16::from_be_bytes([b[0], b[1]]);
        let nformats = i16_of(take(2)?);
        let mut formats = Vec::with_capacity(nformats.max(0) as usize);
        for _ in 0..nformats.max(0) {
            formats.push(i16_of(take(2)?));
        }
        let nvalues = i16_of(take(2)?);
        let mut values = Vec::with_capacity(nvalues.max(0) as usize);
        for _ in 0..nvalues.max(0) {
            let len = take(4)?;
            let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            values.push(if len < 0 {
                None
            } else {
                Some(take(len as usize)?)
            });
        }
        Some(BindParams { formats, values })
    }

    /// [`Self::get`] straight from the Bind's bytes, without collecting
    /// the other parameters (the point-query path reads one key).
    pub fn value_at(rest: &'a [u8], number: usize) -> Option<(i16, Option<&'a [u8]>)> {
        let i = number.checked_sub(1)?;
        let i16_at = |at: usize| {
            rest.get(at..at + 2)
                .map(|b| i16::from_be_bytes([b[0], b[1]]))
        };
        let nformats = i16_at(0)?.max(0) as usize;
        let format = match nformats {
            0 => 0,
            1 => i16_at(2)?,
            _ if i < nformats => i16_at(2 + 2 * i)?,
            _ => return None,
        };
        let mut at = 2 + 2 * nformats;
        let nvalues = i16_at(at)?.max(0) as usize;
        at += 2;
        let mut value = None;
        for k in 0..nvalues {
            let len = rest.get(at..at + 4)?;
            let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            at += 4;
            let this = if len < 0 {
                None
            } else {
                let end = at.checked_add(len as usize)?;
                let bytes = rest.get(at..end)?;
                at = end;
                Some(bytes)
            };
            if k == i {
                value = Some(this);
            }
        }
        value.map(|v| (format, v))
    }

    /// Parameter `$number` (1-based): its format code (0 text, 1 binary)
    /// and its bytes (None for NULL); None when the Bind has no such parameter.
    pub fn get(&self, number: usize) -> Option<(i16, Option<&'a [u8]>)> {
        let i = number.checked_sub(1)?;
        let value = *self.values.get(i)?;
        let format = match self.formats.as_slice() {
            [] => 0,
            [one] => *one,
            many => *many.get(i)?,
        };
        Some((format, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_values() {
        let mut b = Vec::new();
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&2i16.to_be_bytes());
        b.extend_from_slice(&8i32.to_be_bytes());
        b.extend_from_slice(&42i64.to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        let p = BindParams::parse(&b).unwrap();
        assert_eq!(p.get(1), Some((1, Some(&42i64.to_be_bytes()[..]))));
        assert_eq!(p.get(2), Some((1, None)));
        assert_eq!(p.get(3), None);
        assert_eq!(p.get(0), None);
        assert!(BindParams::parse(&b[..7]).is_none());
        // One value read alone is what the whole parse gives, truncated too.
        for cut in 0..=b.len() {
            for number in 0..4 {
                let whole = BindParams::parse(&b[..cut]).and_then(|p| p.get(number));
                assert_eq!(
                    BindParams::value_at(&b[..cut], number),
                    whole,
                    "cut {cut} ${number}"
                );
            }
        }
    }
}
