//! A Bind message body for one shard's part of a split statement: the
//! original Bind's parameters taken in the part's new order (see
//! [`pgrouter_parser::shard::InsertPart::params`]), with their format
//! codes, and the result-column formats unchanged.

/// Rebuilds the rest of a Bind body (after portal and statement names,
/// as given to [`super::BindParams::parse`]) so that new parameter `$k`
/// is original parameter `params[k - 1]` (0-based). The format codes keep
/// their form: none (all text) and one (all alike) are copied, one per
/// parameter is reordered. `None` when the Bind is malformed or lacks a
/// parameter `params` names.
pub fn rebind(rest: &[u8], params: &[usize]) -> Option<Vec<u8>> {
    let mut r = Reader(rest);
    let nformats = r.count()?;
    let formats = r.take(2 * nformats)?;
    let nvalues = r.count()?;
    let mut values = Vec::with_capacity(nvalues);
    for _ in 0..nvalues {
        let start = r.0;
        let len = i32::from_be_bytes(r.take(4)?.try_into().ok()?);
        if len > 0 {
            r.take(len as usize)?;
        }
        values.push(&start[..start.len() - r.0.len()]);
    }
    if nformats > 1 && nformats != nvalues {
        return None;
    }
    let results = r.0;
    let mut out = Vec::with_capacity(rest.len());
    let new_count = i16::try_from(params.len()).ok()?;
    if nformats > 1 {
        out.extend_from_slice(&new_count.to_be_bytes());
        for &p in params {
            out.extend_from_slice(formats.get(2 * p..2 * p + 2)?);
        }
    } else {
        out.extend_from_slice(&(nformats as i16).to_be_bytes());
        out.extend_from_slice(formats);
    }
    out.extend_from_slice(&new_count.to_be_bytes());
    for &p in params {
        out.extend_from_slice(values.get(p)?);
    }
    out.extend_from_slice(results);
    Some(out)
}

/// The parameter types for a part's Parse: original type `params[k - 1]`
/// for new `$k` (0, "let the server infer", where none was declared).
///
/// Why types matter: inference can differ for a part (`$1 + 1` alone infers
/// integer where the whole statement made `$1` bigint from its column), and
/// a binary-format value must match. Pass the types the server described
/// for the whole statement (its ParameterDescription) when the client
/// declared none.
pub fn part_types(param_types: &[i32], params: &[usize]) -> Vec<i32> {
    params
        .iter()
        .map(|&p| param_types.get(p).copied().unwrap_or(0))
        .collect()
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }

    /// An Int16 count; a negative one is malformed.
    fn count(&mut self) -> Option<usize> {
        let n = i16::from_be_bytes(self.take(2)?.try_into().ok()?);
        usize::try_from(n).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::super::BindParams;
    use super::*;

    /// A Bind rest with the given format codes, values and result formats.
    fn bind(formats: &[i16], values: &[Option<&[u8]>], results: &[i16]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(formats.len() as i16).to_be_bytes());
        formats
            .iter()
            .for_each(|f| b.extend_from_slice(&f.to_be_bytes()));
        b.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            match v {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b.extend_from_slice(&(results.len() as i16).to_be_bytes());
        results
            .iter()
            .for_each(|f| b.extend_from_slice(&f.to_be_bytes()));
        b
    }

    #[test]
    fn parameters_are_reordered_with_their_formats() {
        let original = bind(&[0, 1, 0], &[Some(b"a"), Some(&[0, 0, 0, 7]), None], &[1]);
        let out = rebind(&original, &[2, 1]).unwrap();
        assert_eq!(out, bind(&[0, 1], &[None, Some(&[0, 0, 0, 7])], &[1]));
        let p = BindParams::parse(&out).unwrap();
        assert_eq!(p.get(2), Some((1, Some(&[0u8, 0, 0, 7][..]))));
        // One shared format code and no codes are kept as they are.
        let one = bind(&[1], &[Some(b"xy"), Some(b"")], &[]);
        assert_eq!(
            rebind(&one, &[1, 0, 1]).unwrap(),
            bind(&[1], &[Some(b""), Some(b"xy"), Some(b"")], &[])
        );
        let none = bind(&[], &[Some(b"1"), Some(b"2")], &[0, 1]);
        assert_eq!(rebind(&none, &[]).unwrap(), bind(&[], &[], &[0, 1]));
    }

    #[test]
    fn types_follow_their_parameters() {
        assert_eq!(part_types(&[20, 25, 23], &[2, 0, 5]), vec![23, 20, 0]);
        assert_eq!(part_types(&[], &[1]), vec![0]);
    }

    #[test]
    fn malformed_binds_are_none() {
        let original = bind(&[0, 1], &[Some(b"a"), None], &[]);
        assert!(rebind(&original, &[2]).is_none());
        assert!(rebind(&original[..original.len() - 3], &[0]).is_none());
        assert!(rebind(&bind(&[0, 0, 0], &[Some(b"a")], &[]), &[0]).is_none());
        assert!(rebind(&[0xff, 0xff], &[]).is_none());
    }
}
