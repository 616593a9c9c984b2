//! An Execute's row limit (`Merger::with_portal_rows`): the merged answer
//! stops after that many rows and ends in PortalSuspended whenever that
//! many went out, as PostgreSQL's `PortalRunSelect` does (even when no row
//! is left), and in CommandComplete when fewer did.

use bytes::{BufMut, BytesMut};

use super::tests::{decode, spec, text_shard, Out, CTX};
use super::types::{INT4, INT8};
use super::Merger;

/// Feeds every shard whole, through `feed_rows` first (a plain union's
/// path) and `feed` for the rest, as the executor does.
fn limited(sql: &str, rows: u64, shards: &[Vec<(u8, Vec<u8>)>]) -> Out {
    let mut m = Merger::new(spec(sql), shards.len(), CTX).with_portal_rows(rows);
    let mut out = BytesMut::new();
    for (i, msgs) in shards.iter().enumerate() {
        let mut bytes = BytesMut::new();
        for (tag, body) in msgs {
            bytes.put_u8(*tag);
            bytes.put_i32(4 + body.len() as i32);
            bytes.put_slice(body);
        }
        let mut at = 0;
        while at < bytes.len() {
            let fed = m.feed_rows(i, &bytes[at..], &mut out);
            assert!(fed.error.is_none());
            at += fed.taken;
            if at == bytes.len() {
                break;
            }
            let len = i32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
            m.feed(i, bytes[at], &bytes[at + 5..at + 1 + len]).unwrap();
            at += 1 + len;
        }
        m.drain(&mut out).unwrap();
    }
    m.drain(&mut out).unwrap();
    assert!(m.is_done());
    assert_eq!(m.suspended(), decode(&out).suspended);
    decode(&out)
}

fn ids() -> Vec<Vec<(u8, Vec<u8>)>> {
    vec![
        text_shard(&[("id", INT4)], &[&["1"], &["3"], &["5"]]),
        text_shard(&[("id", INT4)], &[&["2"], &["4"]]),
    ]
}

fn texts(out: &Out) -> Vec<String> {
    out.text().into_iter().map(|r| r.join(",")).collect()
}

#[test]
fn a_plain_union_stops_at_the_row_limit() {
    let out = limited("SELECT id FROM t", 2, &ids());
    assert_eq!(
        (texts(&out), out.suspended, out.tag),
        (vec!["1".into(), "3".into()], true, None)
    );
}

#[test]
fn exactly_the_row_limit_still_suspends_and_fewer_complete() {
    let all = limited("SELECT id FROM t", 5, &ids());
    assert_eq!((all.rows.len(), all.suspended, all.tag), (5, true, None));
    let fewer = limited("SELECT id FROM t", 6, &ids());
    assert_eq!((fewer.rows.len(), fewer.suspended), (5, false));
    assert_eq!(fewer.tag.as_deref(), Some("SELECT 5"));
}

#[test]
fn an_ordered_merge_gives_the_first_rows_in_order() {
    // Each shard sends its rows sorted, as PostgreSQL does.
    let out = limited("SELECT id FROM t ORDER BY id", 3, &ids());
    assert_eq!(texts(&out), ["1", "2", "3"]);
    assert!(out.suspended);
}

#[test]
fn a_limit_under_the_row_limit_completes() {
    let out = limited("SELECT id FROM t ORDER BY id LIMIT 2", 10, &ids());
    assert_eq!(
        (texts(&out), out.tag.as_deref()),
        (vec!["1".into(), "2".into()], Some("SELECT 2"))
    );
}

#[test]
fn an_aggregate_of_one_row_suspends_at_a_limit_of_one() {
    let shards = vec![
        text_shard(&[("count", INT8)], &[&["3"]]),
        text_shard(&[("count", INT8)], &[&["2"]]),
    ];
    let out = limited("SELECT count(*) FROM t", 1, &shards);
    assert_eq!((texts(&out), out.suspended), (vec!["5".into()], true));
    let groups = vec![
        text_shard(
            &[("id", INT4), ("count", INT8)],
            &[&["1", "2"], &["2", "1"]],
        ),
        text_shard(
            &[("id", INT4), ("count", INT8)],
            &[&["2", "4"], &["3", "1"]],
        ),
    ];
    let out = limited(
        "SELECT id, count(*) FROM t GROUP BY id ORDER BY id",
        2,
        &groups,
    );
    assert_eq!(
        (texts(&out), out.suspended),
        (vec!["1,2".into(), "2,5".into()], true)
    );
}
