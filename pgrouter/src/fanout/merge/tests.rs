//! Merger behaviour on synthetic shard messages. Expected values marked
//! "PG 15" were computed by PostgreSQL 15 on the same data unsharded.

use bytes::{BufMut, BytesMut};
use pgrouter_parser::fanout::{plan_read, MergeSpec};

use super::types::*;
use super::{MergeContext, MergeError, Merger};

pub(super) const CTX: MergeContext = MergeContext {
    text_orders_by_bytes: false,
    datestyle_iso: true,
    intervalstyle_postgres: true,
    float_digits_exact: true,
    send_row_description: true,
};

/// A RowDescription body of (name, type OID, binary?) columns.
pub(super) fn desc(cols: &[(&str, u32, bool)]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u16(cols.len() as u16);
    for (name, oid, binary) in cols {
        b.put_slice(name.as_bytes());
        b.put_u8(0);
        b.put_u32(0);
        b.put_i16(0);
        b.put_u32(*oid);
        b.put_i16(-1);
        b.put_i32(-1);
        b.put_i16(*binary as i16);
    }
    b.to_vec()
}

/// A DataRow body.
pub(super) fn row(values: &[Option<&[u8]>]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u16(values.len() as u16);
    for v in values {
        match v {
            Some(v) => {
                b.put_i32(v.len() as i32);
                b.put_slice(v);
            }
            None => b.put_i32(-1),
        }
    }
    b.to_vec()
}

/// A DataRow body of text values ("NULL" is NULL).
pub(super) fn trow(values: &[&str]) -> Vec<u8> {
    let v: Vec<Option<&[u8]>> = values
        .iter()
        .map(|s| (*s != "NULL").then_some(s.as_bytes()))
        .collect();
    row(&v)
}

/// What the client got: the column names, rows (as raw values) and tag.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Out {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<Vec<u8>>>>,
    pub tag: Option<String>,
    pub empty: bool,
    /// Ended in PortalSuspended (an Execute's row limit was met).
    pub suspended: bool,
}

impl Out {
    /// Rows as text ("NULL" for NULL), for text-format results.
    pub fn text(&self) -> Vec<Vec<String>> {
        self.rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|v| {
                        v.as_ref()
                            .map_or("NULL".into(), |v| String::from_utf8_lossy(v).into())
                    })
                    .collect()
            })
            .collect()
    }
}

pub(super) fn decode(buf: &[u8]) -> Out {
    let mut out = Out::default();
    let mut at = 0;
    while at < buf.len() {
        let tag = buf[at];
        let len = i32::from_be_bytes(buf[at + 1..at + 5].try_into().unwrap()) as usize;
        let body = &buf[at + 5..at + 1 + len];
        at += 1 + len;
        match tag {
            b'T' => {
                assert!(
                    out.columns.is_empty() && out.rows.is_empty(),
                    "one RowDescription, first"
                );
                let d = super::row::Description::parse(body).unwrap();
                out.columns = d
                    .fields
                    .iter()
                    .map(|f| {
                        String::from_utf8_lossy(&f.0[..f.0.iter().position(|&c| c == 0).unwrap()])
                            .into()
                    })
                    .collect();
            }
            b'D' => {
                let r =
                    super::row::Row::parse(body, u16::from_be_bytes([body[0], body[1]]) as usize)
                        .unwrap();
                out.rows.push(
                    (0..r.cols.len())
                        .map(|i| r.get(i).map(<[u8]>::to_vec))
                        .collect(),
                );
            }
            b'C' => {
                assert!(out.tag.is_none(), "one CommandComplete");
                out.tag = Some(String::from_utf8_lossy(&body[..body.len() - 1]).into());
            }
            b'I' => out.empty = true,
            b's' => {
                assert!(out.tag.is_none() && !out.suspended, "one end");
                out.suspended = true;
            }
            other => panic!("unexpected message {}", other as char),
        }
    }
    out
}

/// Feeds every shard's messages in turn (all of shard 0, then 1, ...).
pub(super) fn run(
    spec: MergeSpec,
    ctx: MergeContext,
    shards: &[Vec<(u8, Vec<u8>)>],
) -> Result<Out, MergeError> {
    let mut m = Merger::new(spec, shards.len(), ctx);
    let mut out = BytesMut::new();
    for (i, msgs) in shards.iter().enumerate() {
        for (tag, body) in msgs {
            m.feed(i, *tag, body)?;
        }
        m.drain(&mut out)?;
    }
    m.drain(&mut out)?;
    assert!(m.is_done());
    Ok(decode(&out))
}

/// Feeds like an executor that honours `wanted()`: one message at a time
/// from a wanted shard, draining after each; checks the heads held stay
/// at one per shard.
pub(super) fn run_streaming(
    spec: MergeSpec,
    shards: &[Vec<(u8, Vec<u8>)>],
) -> Result<(Out, usize), MergeError> {
    let mut m = Merger::new(spec, shards.len(), CTX);
    let mut next = vec![0usize; shards.len()];
    let mut out = BytesMut::new();
    let mut fed = 0;
    while !m.is_done() {
        let wanted = m.wanted();
        let Some(&s) = wanted.iter().find(|&&s| next[s] < shards[s].len()) else {
            m.drain(&mut out)?;
            assert!(m.is_done(), "nothing wanted but not done");
            break;
        };
        let (tag, body) = &shards[s][next[s]];
        next[s] += 1;
        fed += 1;
        m.feed(s, *tag, body)?;
        assert!(
            m.queues.iter().all(|q| q.len() <= 1),
            "more than one head row per shard"
        );
        m.drain(&mut out)?;
    }
    Ok((decode(&out), fed))
}

pub(super) fn shard(d: &[u8], rows: &[Vec<u8>], n: usize) -> Vec<(u8, Vec<u8>)> {
    let mut v = vec![(b'T', d.to_vec())];
    v.extend(rows.iter().map(|r| (b'D', r.clone())));
    v.push((b'C', format!("SELECT {n}\0").into_bytes()));
    v
}

pub(super) fn text_shard(cols: &[(&str, u32)], rows: &[&[&str]]) -> Vec<(u8, Vec<u8>)> {
    let d = desc(
        &cols
            .iter()
            .map(|(n, o)| (*n, *o, false))
            .collect::<Vec<_>>(),
    );
    let rows: Vec<Vec<u8>> = rows.iter().map(|r| trow(r)).collect();
    shard(&d, &rows, rows.len())
}

pub(super) fn spec(sql: &str) -> MergeSpec {
    plan_read(sql).unwrap().merge
}

#[test]
fn union_passes_rows_through_with_one_description_and_summed_tag() {
    let s0 = text_shard(&[("id", INT4)], &[&["1"], &["3"]]);
    let s1 = text_shard(&[("id", INT4)], &[&["2"]]);
    let out = run(spec("SELECT id FROM t"), CTX, &[s0, s1]).unwrap();
    assert_eq!(out.columns, ["id"]);
    assert_eq!(out.text(), [["1"], ["3"], ["2"]]);
    assert_eq!(out.tag.as_deref(), Some("SELECT 3"));
}

#[test]
fn row_description_can_be_left_to_the_client_describe() {
    let s0 = text_shard(&[("id", INT4)], &[&["1"]]);
    let ctx = MergeContext {
        send_row_description: false,
        ..CTX
    };
    let out = run(spec("SELECT id FROM t"), ctx, &[s0]).unwrap();
    assert!(out.columns.is_empty());
    assert_eq!(out.text(), [["1"]]);
}

#[test]
fn ordered_merge_strips_hidden_sort_column_and_streams() {
    // SELECT name FROM t ORDER BY id: hidden id column.
    let sp = spec("SELECT name FROM t ORDER BY id");
    let s0 = text_shard(
        &[("name", TEXT), ("h", INT8)],
        &[&["a", "1"], &["c", "5"], &["e", "9"]],
    );
    let s1 = text_shard(&[("name", TEXT), ("h", INT8)], &[&["b", "2"], &["d", "6"]]);
    let s2 = text_shard(&[("name", TEXT), ("h", INT8)], &[]);
    let (out, _) = run_streaming(sp, &[s0, s1, s2]).unwrap();
    assert_eq!(out.columns, ["name"]);
    assert_eq!(out.text(), [["a"], ["b"], ["c"], ["d"], ["e"]]);
    assert_eq!(out.tag.as_deref(), Some("SELECT 5"));
}

#[test]
fn wanted_names_only_shards_without_a_head_row() {
    let sp = spec("SELECT id FROM t ORDER BY id");
    let mut m = Merger::new(sp, 2, CTX);
    let d = desc(&[("id", INT4, false)]);
    assert_eq!(m.wanted(), [0, 1]);
    m.feed(0, b'T', &d).unwrap();
    m.feed(1, b'T', &d).unwrap();
    m.feed(0, b'D', &trow(&["1"])).unwrap();
    assert_eq!(m.wanted(), [1]);
    let mut out = BytesMut::new();
    m.drain(&mut out).unwrap();
    assert!(
        decode(&out).rows.is_empty(),
        "shard 1 may still have a smaller row"
    );
    m.feed(1, b'D', &trow(&["2"])).unwrap();
    m.drain(&mut out).unwrap();
    assert_eq!(decode(&out).text(), [["1"]]);
    assert_eq!(m.wanted(), [0]);
    m.feed(0, b'C', b"SELECT 1\0").unwrap();
    m.drain(&mut out).unwrap();
    assert_eq!(m.wanted(), [1]);
    m.feed(1, b'C', b"SELECT 1\0").unwrap();
    m.drain(&mut out).unwrap();
    assert!(m.is_done());
    assert_eq!(decode(&out).text(), [["1"], ["2"]]);
}

#[test]
fn describe_and_bind_helpers_account_for_hidden_columns() {
    assert_eq!(super::shard_result_formats(&[], 2), Vec::<i16>::new());
    assert_eq!(super::shard_result_formats(&[1], 2), [1]);
    assert_eq!(super::shard_result_formats(&[1, 0], 2), [1, 0, 0, 0]);
    let mut out = BytesMut::new();
    super::client_row_description(&desc(&[("a", INT4, true), ("h", INT8, false)]), 1, &mut out)
        .unwrap();
    let got = decode(&out);
    assert_eq!(got.columns, ["a"]);
    assert!(super::client_row_description(&desc(&[("a", INT4, true)]), 2, &mut out).is_err());
}

/// Found by the `fanout_merge` fuzz target: a value length below -1 (only
/// -1, NULL, is negative) was passed through to the client in a plain
/// union and read as NULL elsewhere.
#[test]
fn a_negative_value_length_other_than_null_is_a_malformed_row() {
    let d = desc(&[("id", INT4, false)]);
    let bad = [0, 1, 0xca, 0xe3, 0x02, 0x00];
    for sql in [
        "SELECT id FROM t",
        "SELECT id FROM t ORDER BY id",
        "SELECT DISTINCT id FROM t",
    ] {
        let s0 = shard(&d, &[trow(&["1"]), bad.to_vec()], 2);
        let e = run(spec(sql), CTX, &[s0]).unwrap_err();
        assert_eq!(
            (e.sqlstate, e.message.as_str()),
            ("XX000", "a shard sent a malformed DataRow"),
            "{sql}"
        );
    }
    // NULL itself still is one.
    let s0 = shard(&d, &[row(&[None])], 1);
    let out = run(spec("SELECT id FROM t"), CTX, &[s0]).unwrap();
    assert_eq!(out.rows, [[None]]);
}
