//! The merger against real PostgreSQL 15 answers (fixtures/pg15.json,
//! made by fixtures/make.py): three shards' raw messages for the planner's
//! shard SQL must merge into exactly what one database holding all the
//! rows sent for the original query — same columns, types and formats,
//! byte-identical values, same tag — in text and binary format.

use bytes::BytesMut;
use pgrouter_parser::fanout::plan_read;

use super::row::{Description, Row};
use super::{MergeContext, Merger};

const CTX: MergeContext = MergeContext {
    text_orders_by_bytes: true,
    datestyle_iso: true,
    intervalstyle_postgres: true,
    float_digits_exact: true,
    send_row_description: true,
};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn messages(v: &serde_json::Value) -> Vec<(u8, Vec<u8>)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m[0].as_str().unwrap().as_bytes()[0],
                hex(m[1].as_str().unwrap()),
            )
        })
        .collect()
}

/// (column name, type, format) of each field; the rows' values; the tag.
type Answer = (Vec<(Vec<u8>, u32, bool)>, Vec<Vec<Option<Vec<u8>>>>, String);

fn answer(msgs: &[(u8, Vec<u8>)]) -> Answer {
    let (mut cols, mut rows, mut tag) = (Vec::new(), Vec::new(), String::new());
    for (t, body) in msgs {
        match t {
            b'T' => {
                let d = Description::parse(body).unwrap();
                cols = d
                    .fields
                    .iter()
                    .map(|(raw, ty)| {
                        (
                            raw[..raw.iter().position(|&b| b == 0).unwrap()].to_vec(),
                            ty.oid,
                            ty.binary,
                        )
                    })
                    .collect();
            }
            b'D' => {
                let r = Row::parse(body, u16::from_be_bytes([body[0], body[1]]) as usize).unwrap();
                rows.push(
                    (0..r.cols.len())
                        .map(|i| r.get(i).map(<[u8]>::to_vec))
                        .collect(),
                );
            }
            b'C' => tag = String::from_utf8(body[..body.len() - 1].to_vec()).unwrap(),
            other => panic!("unexpected {}", *other as char),
        }
    }
    (cols, rows, tag)
}

#[test]
fn merged_shards_answer_like_one_postgres() {
    let cases: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/pg15.json")).unwrap();
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 60);
    for case in cases {
        let sql = case["sql"].as_str().unwrap();
        let label = format!("{sql} (binary: {})", case["binary"]);
        let plan = plan_read(sql).unwrap();
        assert_eq!(
            plan.shard_sql,
            case["shard_sql"].as_str().unwrap(),
            "fixtures are stale: run make.py"
        );
        let shards: Vec<_> = case["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(messages)
            .collect();
        // Interleave the shards one message at a time, as the executor might.
        let params: Vec<String> = case["params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect();
        let merge = plan
            .merge
            .resolve_params(&|n| params.get(n - 1).cloned())
            .unwrap();
        let mut m = Merger::new(merge, shards.len(), CTX);
        let mut out = BytesMut::new();
        let mut next = vec![0; shards.len()];
        while !m.is_done() {
            let wanted = m.wanted();
            let Some(&s) = wanted.iter().find(|&&s| next[s] < shards[s].len()) else {
                m.drain(&mut out).unwrap();
                break;
            };
            let (tag, body) = &shards[s][next[s]];
            next[s] += 1;
            m.feed(s, *tag, body)
                .unwrap_or_else(|e| panic!("{label}: {e:?}"));
            m.drain(&mut out)
                .unwrap_or_else(|e| panic!("{label}: {e:?}"));
        }
        assert!(m.is_done(), "{label}");
        let mut got = Vec::new();
        let mut at = 0;
        while at < out.len() {
            let len = i32::from_be_bytes(out[at + 1..at + 5].try_into().unwrap()) as usize;
            got.push((out[at], out[at + 5..at + 1 + len].to_vec()));
            at += 1 + len;
        }
        let (mut got, mut want) = (answer(&got), answer(&messages(&case["whole"])));
        if !case["ordered"].as_bool().unwrap() {
            got.1.sort();
            want.1.sort();
        }
        assert_eq!(got.0, want.0, "{label}: columns");
        assert_eq!(got.1.len(), want.1.len(), "{label}: row count");
        for (i, (g, w)) in got.1.iter().zip(&want.1).enumerate() {
            let show = |r: &Vec<Option<Vec<u8>>>| {
                r.iter()
                    .map(|v| v.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(g, w, "{label}: row {i}: {:?} vs {:?}", show(g), show(w));
        }
        assert_eq!(got.2, want.2, "{label}: tag");
    }
}
