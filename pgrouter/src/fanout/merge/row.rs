//! The two message bodies the merger reads: RowDescription (column types
//! and formats, rewritten without the hidden columns) and DataRow (a row
//! kept as its body plus where each value is, so nothing is copied twice).

use bytes::{BufMut, BytesMut};

use super::types::ColType;
use super::MergeError;

fn malformed(what: &str) -> MergeError {
    MergeError::internal(format!("a shard sent a malformed {what}"))
}

/// A RowDescription: each field's raw bytes (to write back) and type.
#[derive(Debug, Clone)]
pub struct Description {
    pub fields: Vec<(Vec<u8>, ColType)>,
}

impl Description {
    pub fn parse(body: &[u8]) -> Result<Description, MergeError> {
        let bad = || malformed("RowDescription");
        let count = u16::from_be_bytes(body.get(..2).ok_or_else(bad)?.try_into().expect("2 bytes"));
        let mut at = 2;
        let mut fields = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let name_end =
                at + memchr::memchr(0, body.get(at..).ok_or_else(bad)?).ok_or_else(bad)?;
            let end = name_end + 1 + 18;
            let field = body.get(at..end).ok_or_else(bad)?;
            let fixed = &body[name_end + 1..end];
            let oid = u32::from_be_bytes(fixed[6..10].try_into().expect("4 bytes"));
            let format = i16::from_be_bytes(fixed[16..18].try_into().expect("2 bytes"));
            fields.push((
                field.to_vec(),
                ColType {
                    oid,
                    binary: format == 1,
                },
            ));
            at = end;
        }
        if at != body.len() {
            return Err(bad());
        }
        Ok(Description { fields })
    }

    /// Whether another shard's description has the same columns: as many,
    /// in the same formats, of the same types (names may differ: they do
    /// not). A user-defined type has an OID of each server's own, so
    /// another OID there is the same type in text format (the text is the
    /// value as its server renders it); in binary format the value may
    /// carry the OID inside (arrays, composites), which this shard's
    /// clients would read under another shard's OID — except an enum's
    /// (`enums`, this description's OIDs), whose binary form is its label.
    pub fn compare(&self, other: &Description, enums: &[u32]) -> Result<(), Mismatch> {
        if self.fields.len() != other.fields.len() {
            return Err(Mismatch::Columns);
        }
        for (i, (a, b)) in self.fields.iter().zip(&other.fields).enumerate() {
            let (a, b) = (a.1, b.1);
            if a == b {
                continue;
            }
            if a.binary != b.binary || !a.is_user_defined() || !b.is_user_defined() {
                return Err(Mismatch::Columns);
            }
            if a.binary && !enums.contains(&a.oid) {
                return Err(Mismatch::BinaryUserType(i));
            }
        }
        Ok(())
    }

    pub fn types(&self) -> Vec<ColType> {
        self.fields.iter().map(|f| f.1).collect()
    }

    /// The client's RowDescription: the first `visible` fields.
    pub fn write(&self, visible: usize, out: &mut BytesMut) {
        let len: usize = self.fields[..visible].iter().map(|f| f.0.len()).sum();
        out.put_u8(b'T');
        out.put_i32((4 + 2 + len) as i32);
        out.put_u16(visible as u16);
        for f in &self.fields[..visible] {
            out.put_slice(&f.0);
        }
    }
}

/// How two shards' descriptions of a result differ.
#[derive(Debug, PartialEq, Eq)]
pub enum Mismatch {
    Columns,
    /// Column `i`, of a user-defined type in binary format.
    BinaryUserType(usize),
}

/// One DataRow: its body and where each value's length word is (the
/// value follows it; a negative length is NULL).
#[derive(Debug, Clone)]
pub struct Row {
    pub body: Vec<u8>,
    pub cols: Vec<(u32, i32)>,
}

impl Row {
    pub fn parse(body: &[u8], expect: usize) -> Result<Row, MergeError> {
        let bad = || malformed("DataRow");
        let count = u16::from_be_bytes(body.get(..2).ok_or_else(bad)?.try_into().expect("2 bytes"))
            as usize;
        if count != expect {
            return Err(MergeError::internal(format!(
                "a shard sent a row of {count} columns where its RowDescription had {expect}"
            )));
        }
        let mut cols = Vec::with_capacity(count);
        let mut at = 2usize;
        for _ in 0..count {
            let len = i32::from_be_bytes(
                body.get(at..at + 4)
                    .ok_or_else(bad)?
                    .try_into()
                    .expect("4 bytes"),
            );
            // -1 is NULL; no other negative length is a value.
            if len < -1 {
                return Err(bad());
            }
            cols.push((at as u32, len));
            at += 4;
            if len >= 0 {
                at = at
                    .checked_add(len as usize)
                    .filter(|&e| e <= body.len())
                    .ok_or_else(bad)?;
            }
        }
        if at != body.len() {
            return Err(bad());
        }
        Ok(Row {
            body: body.to_vec(),
            cols,
        })
    }

    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let (at, len) = self.cols[i];
        let at = at as usize + 4;
        (len >= 0).then(|| &self.body[at..at + len as usize])
    }

    /// Writes a DataRow of the first `visible` values.
    pub fn write(&self, visible: usize, out: &mut BytesMut) {
        if visible == self.cols.len() {
            write_body(&self.body, out);
            return;
        }
        let end = self.cols[visible].0 as usize;
        out.put_u8(b'D');
        out.put_i32((4 + end) as i32);
        out.put_u16(visible as u16);
        out.put_slice(&self.body[2..end]);
    }
}

/// Checks a DataRow body's shape without keeping anything (the plain
/// union passes bodies through unchanged).
pub fn check(body: &[u8], expect: usize) -> Result<(), MergeError> {
    // Slices split off the front, not indexes: a plain union checks every
    // row it relays, and this loop is most of its per-row cost.
    let bad = || malformed("DataRow");
    let (count, mut rest) = body.split_first_chunk::<2>().ok_or_else(bad)?;
    if u16::from_be_bytes(*count) as usize != expect {
        return Err(bad());
    }
    for _ in 0..expect {
        let (len, after) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
        let len = i32::from_be_bytes(*len);
        rest = match len {
            // NULL; another negative length would reach the client.
            -1 => after,
            len if len < 0 => return Err(bad()),
            len => after.get(len as usize..).ok_or_else(bad)?,
        };
    }
    if !rest.is_empty() {
        return Err(bad());
    }
    Ok(())
}

/// A DataRow message with this body.
pub fn write_body(body: &[u8], out: &mut BytesMut) {
    out.put_u8(b'D');
    out.put_i32((4 + body.len()) as i32);
    out.put_slice(body);
}

/// A DataRow message of these values.
pub fn write_values(values: &[Option<Vec<u8>>], out: &mut BytesMut) {
    let len: usize = values
        .iter()
        .map(|v| 4 + v.as_ref().map_or(0, |v| v.len()))
        .sum();
    out.put_u8(b'D');
    out.put_i32((4 + 2 + len) as i32);
    out.put_u16(values.len() as u16);
    for v in values {
        match v {
            Some(v) => {
                out.put_i32(v.len() as i32);
                out.put_slice(v);
            }
            None => out.put_i32(-1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(cols: &[(u32, bool)]) -> Description {
        Description {
            fields: cols
                .iter()
                .map(|&(oid, binary)| (Vec::new(), ColType { oid, binary }))
                .collect(),
        }
    }

    #[test]
    fn user_types_agree_across_shards_in_text_or_as_known_enums() {
        let first = desc(&[(20, false), (16429, false), (16500, true)]);
        // Another OID of a user type, in text: the same column.
        assert_eq!(
            first.compare(&desc(&[(20, false), (16441, false), (16500, true)]), &[]),
            Ok(())
        );
        // In binary, only a known enum's.
        assert_eq!(
            first.compare(&desc(&[(20, false), (16429, false), (16512, true)]), &[]),
            Err(Mismatch::BinaryUserType(2))
        );
        assert_eq!(
            first.compare(
                &desc(&[(20, false), (16429, false), (16512, true)]),
                &[16500]
            ),
            Ok(())
        );
        // Built-in types, formats and column counts must match.
        for other in [
            desc(&[(23, false), (16429, false), (16500, true)]),
            desc(&[(20, true), (16429, false), (16500, true)]),
            desc(&[(20, false), (25, false), (16500, true)]),
            desc(&[(20, false), (16429, false)]),
        ] {
            assert_eq!(first.compare(&other, &[16500]), Err(Mismatch::Columns));
        }
    }
}
