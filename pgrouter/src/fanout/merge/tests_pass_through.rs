//! `Merger::feed_rows` (runs of DataRows straight from a read buffer) gives
//! exactly what feeding the same messages one by one gives.

use bytes::{BufMut, BytesMut};
use rand::{Rng, SeedableRng};

use super::tests::{decode, desc, run, shard, spec, trow, Out, CTX};
use super::types::{INT4, TEXT};
use super::{MergeError, Merger};

/// The messages as they arrive from a server: tag, length, body.
fn wire(msgs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut b = BytesMut::new();
    for (tag, body) in msgs {
        b.put_u8(*tag);
        b.put_i32(4 + body.len() as i32);
        b.put_slice(body);
    }
    b.to_vec()
}

/// Feeds each shard's wire bytes as a read loop would: the buffer grows by
/// random chunks; `feed_rows` takes what it can, otherwise one whole
/// message goes to `feed`. Returns the client's messages and the error
/// the merge ended with, if any.
fn run_from_buffers(
    sql: &str,
    shards: &[Vec<(u8, Vec<u8>)>],
    seed: u64,
) -> (Out, Option<MergeError>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut m = Merger::new(spec(sql), shards.len(), CTX);
    let mut out = BytesMut::new();
    for (i, msgs) in shards.iter().enumerate() {
        let bytes = wire(msgs);
        let (mut start, mut have) = (0, 0);
        while start < bytes.len() {
            if have < bytes.len() {
                have = (have + rng.gen_range(1..64)).min(bytes.len());
            }
            let buf = &bytes[start..have];
            let fed = m.feed_rows(i, buf, &mut out);
            start += fed.taken;
            if let Some(e) = fed.error {
                m.drain(&mut out).ok();
                return (decode(&out), Some(e));
            }
            if fed.taken > 0 {
                continue;
            }
            let buf = &bytes[start..have];
            let Some(f) = crate::protocol::next_frame(buf, 1 << 20).unwrap() else {
                continue;
            };
            let fed = m.feed(i, buf[0], &buf[5..f.total_len]);
            start += f.total_len;
            if let Err(e) = fed.and_then(|_| m.drain(&mut out)) {
                return (decode(&out), Some(e));
            }
        }
        if let Err(e) = m.drain(&mut out) {
            return (decode(&out), Some(e));
        }
    }
    assert!(m.is_done());
    (decode(&out), None)
}

fn three_shards() -> Vec<Vec<(u8, Vec<u8>)>> {
    let d = desc(&[("id", INT4, false), ("note", TEXT, false)]);
    (0..3)
        .map(|s| {
            let rows: Vec<Vec<u8>> = (0..20)
                .map(|r| {
                    let id = (s * 100 + r).to_string();
                    trow(&[id.as_str(), if r % 3 == 0 { "NULL" } else { "x" }])
                })
                .collect();
            shard(&d, &rows, rows.len())
        })
        .collect()
}

#[test]
fn runs_of_rows_give_what_single_rows_give() {
    for sql in [
        "SELECT id, note FROM t",
        "SELECT id, note FROM t LIMIT 7",
        "SELECT id, note FROM t LIMIT 0",
        "SELECT id, note FROM t OFFSET 25",
        "SELECT id, note FROM t OFFSET 3 LIMIT 30",
        "SELECT id, note FROM t OFFSET 100",
        "SELECT id, note FROM t ORDER BY id DESC LIMIT 5",
        "SELECT DISTINCT id, note FROM t",
    ] {
        let shards = three_shards();
        let want = run(spec(sql), CTX, &shards).unwrap();
        for seed in 0..20 {
            let (got, err) = run_from_buffers(sql, &shards, seed);
            assert!(err.is_none(), "{sql}: {err:?}");
            assert_eq!(got, want, "{sql}, seed {seed}");
        }
    }
}

#[test]
fn a_malformed_row_in_a_run_ends_the_merge_after_the_rows_before_it() {
    let d = desc(&[("id", INT4, false)]);
    let bad = vec![0, 1, 0xca, 0xe3, 0x02, 0x00];
    let rows = vec![trow(&["1"]), trow(&["2"]), bad, trow(&["3"])];
    let shards = vec![shard(&d, &rows, 4)];
    for seed in 0..20 {
        let (got, err) = run_from_buffers("SELECT id FROM t", &shards, seed);
        let e = err.expect("malformed row refused");
        assert_eq!(
            (e.sqlstate, e.message.as_str()),
            ("XX000", "a shard sent a malformed DataRow")
        );
        assert_eq!(got.text(), [["1"], ["2"]], "seed {seed}");
        assert_eq!(got.tag, None);
    }
}

#[test]
fn nothing_is_taken_before_the_row_description_or_for_other_messages() {
    let mut m = Merger::new(spec("SELECT id FROM t"), 1, CTX);
    let mut out = BytesMut::new();
    let rows = wire(&[(b'D', trow(&["1"]))]);
    assert_eq!(m.feed_rows(0, &rows, &mut out).taken, 0, "no layout yet");
    m.feed(0, b'T', &desc(&[("id", INT4, false)])).unwrap();
    let tag = wire(&[(b'C', b"SELECT 1\0".to_vec())]);
    assert_eq!(m.feed_rows(0, &tag, &mut out).taken, 0);
    assert_eq!(m.feed_rows(7, &rows, &mut out).taken, 0, "unknown shard");
    assert_eq!(m.feed_rows(0, &rows, &mut out).taken, rows.len());
}
