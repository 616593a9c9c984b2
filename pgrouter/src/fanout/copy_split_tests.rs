//! The COPY splitter on text, CSV and binary streams: rows land on their
//! key's shard byte for byte, headers on every shard, and the result does
//! not depend on how the client cut its CopyData payloads.

use std::sync::Arc;

use pgrouter_parser::shard::{KeyType, KeyValue, Mapping, Placement};

use super::copy_options::copy_options;
use super::copy_split::{CopySplitError, CopySplitter};

/// bigint keys 1..12 over 4 shards land on 0,2,1,3,1,3,3,1,1,3,1,0 (PostgreSQL's remainders).
const SHARD_OF: [usize; 13] = [0, 0, 2, 1, 3, 1, 3, 3, 1, 1, 3, 1, 0];

fn placement(key_type: KeyType) -> Arc<Placement> {
    Arc::new(Placement {
        key_type,
        shards: 4,
        mapping: Mapping::Hash,
    })
}

fn splitter(sql: &str, key: &str) -> CopySplitter {
    let info = copy_options(sql).unwrap();
    let at = super::copy_options::key_column(&info, key, None).unwrap();
    CopySplitter::for_placement(&info, at, placement(KeyType::Bigint))
}

/// Feeds `payloads` and finishes: the four outputs, or the error.
fn split(sql: &str, payloads: &[&[u8]]) -> Result<Vec<Vec<u8>>, CopySplitError> {
    let mut s = splitter(sql, "k");
    for p in payloads {
        s.feed(p)?;
    }
    s.finish()?;
    Ok((0..4).map(|i| s.take(i).to_vec()).collect())
}

/// The outputs must not depend on where payloads are cut: all at once, one
/// byte at a time, and cut in two at every position.
fn split_every_way(sql: &str, data: &[u8]) -> Result<Vec<Vec<u8>>, CopySplitError> {
    let whole = split(sql, &[data]);
    let bytes: Vec<&[u8]> = data.chunks(1).collect();
    assert_eq!(split(sql, &bytes), whole, "1-byte payloads");
    for cut in 0..=data.len() {
        assert_eq!(
            split(sql, &[&data[..cut], &data[cut..]]),
            whole,
            "cut at {cut}"
        );
    }
    // Taking output between payloads changes nothing either.
    if let Ok(expected) = &whole {
        let mut s = splitter(sql, "k");
        let mut got = vec![Vec::new(); 4];
        for b in &bytes {
            s.feed(b).unwrap();
            for (i, g) in got.iter_mut().enumerate() {
                g.extend_from_slice(&s.take(i));
            }
        }
        s.finish().unwrap();
        for (i, g) in got.iter_mut().enumerate() {
            g.extend_from_slice(&s.take(i));
        }
        assert_eq!(&got, expected);
    }
    whole
}

fn outputs(parts: [&str; 4]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.as_bytes().to_vec()).collect()
}

fn error(result: Result<Vec<Vec<u8>>, CopySplitError>) -> (&'static str, String, String) {
    let e = result.unwrap_err();
    (e.sqlstate, e.message, e.context.unwrap_or_default())
}

#[test]
fn text_rows_go_to_their_key_shard_unchanged() {
    let sql = "COPY t (k, v) FROM STDIN";
    let data = b"1\ta\n2\tb\\tc\n3\t\\N\n\\N\tnull key\n 4 \tspaces\n5\tx\\\ny\n12\tlast";
    let got = split_every_way(sql, data).unwrap();
    assert_eq!(
        got,
        outputs([
            "1\ta\n\\N\tnull key\n12\tlast",
            "3\t\\N\n5\tx\\\ny\n",
            "2\tb\\tc\n",
            " 4 \tspaces\n"
        ])
    );
    let mut s = splitter(sql, "k");
    s.feed(data).unwrap();
    s.finish().unwrap();
    assert_eq!(s.rows(), 7);
    assert_eq!(s.buffered(), data.len());
    assert_eq!(got[SHARD_OF[12]], b"1\ta\n\\N\tnull key\n12\tlast");
}

#[test]
fn text_key_not_first_escapes_crlf_and_end_marker() {
    let sql = "COPY t (v, k) FROM STDIN (DELIMITER '|')";
    let data = b"a\\|b|\\61\r\nz|\\x32\r\n|3\r\n\\.\r\nignored|1\n";
    assert_eq!(
        split_every_way(sql, data).unwrap(),
        outputs(["a\\|b|\\61\r\n", "|3\r\n", "z|\\x32\r\n", ""])
    );
    // What precedes \. on its line is still a row.
    assert_eq!(
        split_every_way(sql, b"x|4\\.\n").unwrap(),
        outputs(["", "", "", "x|4\\.\n"])
    );
}

#[test]
fn text_header_goes_to_every_shard() {
    let sql = "COPY t (k, v) FROM STDIN (HEADER)";
    let got = split_every_way(sql, b"k\tv\n1\ta\n2\tb\n").unwrap();
    assert_eq!(
        got,
        outputs(["k\tv\n1\ta\n", "k\tv\n", "k\tv\n2\tb\n", "k\tv\n"])
    );
    let mut s = splitter(sql, "k");
    s.feed(b"k\tv\n1\ta\n").unwrap();
    s.finish().unwrap();
    assert_eq!(s.rows(), 1);
}

#[test]
fn text_errors_are_postgres_errors() {
    let sql = "COPY t (k, v) FROM STDIN";
    let e = error(split_every_way(sql, b"1\ta\r\n2\tb\n"));
    assert_eq!(
        e,
        (
            "22P04",
            "literal newline found in data".into(),
            "COPY t, line 2".into()
        )
    );
    let e = error(split_every_way(sql, b"1\ta\n2\tb\r\n"));
    assert_eq!(e.1, "literal carriage return found in data");
    let e = error(split_every_way(sql, b"1\ta\n2\n"));
    assert_eq!(
        e,
        (
            "22P04",
            "missing data for column \"v\"".into(),
            "COPY t, line 2: \"2\"".into()
        )
    );
    let e = error(split_every_way(sql, b"1\ta\tb\n"));
    assert_eq!(
        e,
        (
            "22P04",
            "extra data after last expected column".into(),
            "COPY t, line 1: \"1\ta\tb\"".into()
        )
    );
    let e = error(split_every_way(sql, b"1\ta\n\\."));
    assert_eq!(e.1, "end-of-copy marker corrupt");
    let e = error(split_every_way(sql, b"1\ta\nx1\tb\n"));
    assert_eq!(
        e,
        (
            "22P02",
            "invalid input syntax for type bigint: \"x1\"".into(),
            "COPY t, line 2, column k: \"x1\"".into()
        )
    );
    let e = error(split_every_way(sql, b"99999999999999999999\ta\n"));
    assert_eq!(e.0, "22003");
    // After an error the splitter keeps refusing.
    let mut s = splitter(sql, "k");
    assert!(s.feed(b"1\ta\r\n2\tb\n").is_err());
    assert!(s.feed(b"3\tc\n").is_err());
    assert!(s.finish().is_err());
}

#[test]
fn csv_quotes_newlines_and_nulls() {
    let sql = "COPY t (v, k) FROM STDIN (FORMAT csv)";
    let data = b"\"a,\n\"\"b\"\"\",1\n\"x\",\"2\"\n,\n\"\",3\r";
    // A bare \r after \n-lines is an error; first check a consistent stream.
    let data_ok = &data[..data.len() - 1];
    let got = split_every_way(sql, data_ok).unwrap();
    assert_eq!(
        got,
        outputs(["\"a,\n\"\"b\"\"\",1\n,\n", "\"\",3", "\"x\",\"2\"\n", ""])
    );
    let e = error(split_every_way(sql, data));
    assert_eq!(e.1, "unquoted carriage return found in data");
    // An empty quoted key is the empty string, not NULL: not a valid bigint.
    let e = error(split_every_way(sql, b"a,\"\"\n"));
    assert_eq!(
        (e.0, e.2.as_str()),
        ("22P02", "COPY t, line 1, column k: \"\"")
    );
    let e = error(split_every_way(sql, b"a,\"1\n"));
    assert_eq!(
        e,
        (
            "22P04",
            "unterminated CSV quoted field".into(),
            "COPY t, line 1: \"a,\"1\n\"".into()
        )
    );
}

#[test]
fn csv_header_match_escape_and_force_options() {
    let sql = "COPY t (k, v) FROM STDIN (FORMAT csv, HEADER match, ESCAPE '\\')";
    let data = b"k,v\r\n\"1\",\"a\\\"b\"\r\n2,\"x\r\ny\"\r\n";
    let got = split_every_way(sql, data).unwrap();
    assert_eq!(
        got,
        outputs([
            "k,v\r\n\"1\",\"a\\\"b\"\r\n",
            "k,v\r\n",
            "k,v\r\n2,\"x\r\ny\"\r\n",
            "k,v\r\n"
        ])
    );
    // FORCE_NOT_NULL: an unquoted empty key is '' (invalid bigint), not NULL.
    let e = error(split_every_way(
        "COPY t (k, v) FROM STDIN (FORMAT csv, FORCE_NOT_NULL (k))",
        b",a\n",
    ));
    assert_eq!(e.0, "22P02");
    // FORCE_NULL: a quoted NULL string is NULL (shard 0).
    let got = split_every_way(
        "COPY t (k, v) FROM STDIN (FORMAT csv, FORCE_NULL (k), NULL 'NA')",
        b"\"NA\",a\n",
    )
    .unwrap();
    assert_eq!(got, outputs(["\"NA\",a\n", "", "", ""]));
    // In CSV, \. ends the data only alone on its line.
    let got = split_every_way(
        "COPY t (k, v) FROM STDIN (FORMAT csv)",
        b"2,\\.\n\\.\n3,z\n",
    )
    .unwrap();
    assert_eq!(got, outputs(["", "", "2,\\.\n", ""]));
}

/// A binary COPY stream of `(k bigint, v text)` rows; `None` = NULL.
fn binary(rows: &[(Option<i64>, &str)], trailer: bool) -> Vec<u8> {
    let mut b = super::copy_binary::SIGNATURE.to_vec();
    b.extend_from_slice(&0i32.to_be_bytes());
    b.extend_from_slice(&3i32.to_be_bytes());
    b.extend_from_slice(b"ext");
    for (k, v) in rows {
        b.extend_from_slice(&tuple(*k, v));
    }
    if trailer {
        b.extend_from_slice(&(-1i16).to_be_bytes());
    }
    b
}

fn tuple(k: Option<i64>, v: &str) -> Vec<u8> {
    let mut t = 2i16.to_be_bytes().to_vec();
    match k {
        Some(k) => {
            t.extend_from_slice(&8i32.to_be_bytes());
            t.extend_from_slice(&k.to_be_bytes());
        }
        None => t.extend_from_slice(&(-1i32).to_be_bytes()),
    }
    t.extend_from_slice(&(v.len() as i32).to_be_bytes());
    t.extend_from_slice(v.as_bytes());
    t
}

#[test]
fn binary_tuples_header_and_trailers() {
    let sql = "COPY t (k, v) FROM STDIN (FORMAT binary)";
    let header = &binary(&[], false);
    let rows = [
        (Some(1), "a"),
        (Some(2), "bb"),
        (None, ""),
        (Some(4), "dddd"),
        (Some(3), "c"),
    ];
    for trailer in [true, false] {
        let got = split_every_way(sql, &binary(&rows, trailer)).unwrap();
        let expect = |tuples: &[Vec<u8>]| {
            let mut o = header.clone();
            tuples.iter().for_each(|t| o.extend_from_slice(t));
            o.extend_from_slice(&(-1i16).to_be_bytes());
            o
        };
        assert_eq!(got[0], expect(&[tuple(Some(1), "a"), tuple(None, "")]));
        assert_eq!(got[1], expect(&[tuple(Some(3), "c")]));
        assert_eq!(got[2], expect(&[tuple(Some(2), "bb")]));
        assert_eq!(got[3], expect(&[tuple(Some(4), "dddd")]));
    }
}

#[test]
fn binary_errors_are_postgres_errors() {
    let sql = "COPY t (k, v) FROM STDIN (FORMAT binary)";
    let msg = |data: &[u8]| error(split_every_way(sql, data)).1;
    // No data at all is an empty COPY, as PostgreSQL takes it: nothing for any shard.
    assert_eq!(
        split_every_way(sql, b"").unwrap(),
        vec![Vec::<u8>::new(); 4]
    );
    assert_eq!(msg(b"P"), "COPY file signature not recognized");
    assert_eq!(error(split_every_way(sql, b"P")).2, "");
    assert_eq!(
        msg(b"PGCOPY\n\xff\r\n\x01"),
        "COPY file signature not recognized"
    );
    assert_eq!(
        msg(&binary(&[], false)[..13]),
        "invalid COPY file header (missing flags)"
    );
    assert_eq!(
        msg(&binary(&[], false)[..17]),
        "invalid COPY file header (missing length)"
    );
    assert_eq!(
        msg(&binary(&[], false)[..20]),
        "invalid COPY file header (wrong length)"
    );
    let mut oids = binary(&[], false);
    oids[12] = 1;
    assert_eq!(msg(&oids), "invalid COPY file header (WITH OIDS)");
    let full = binary(&[(Some(1), "abc")], false);
    let e = error(split_every_way(sql, &full[..full.len() - 1]));
    assert_eq!(
        (e.1.as_str(), e.2.as_str()),
        ("unexpected EOF in COPY data", "COPY t, line 1, column v")
    );
    let mut after = binary(&[(Some(1), "a")], true);
    after.push(0);
    assert_eq!(msg(&after), "received copy data after EOF marker");
    let mut three = binary(&[], false);
    three.extend_from_slice(&1i16.to_be_bytes());
    assert_eq!(msg(&three), "row field count is 1, expected 2");
    let mut size = binary(&[], false);
    size.extend_from_slice(&2i16.to_be_bytes());
    size.extend_from_slice(&(-2i32).to_be_bytes());
    assert_eq!(msg(&size), "invalid field size");
    // A key that is not 8 bytes is not a bigint.
    let mut short = binary(&[], false);
    short.extend_from_slice(&2i16.to_be_bytes());
    short.extend_from_slice(&4i32.to_be_bytes());
    short.extend_from_slice(&7i32.to_be_bytes());
    short.extend_from_slice(&(-1i32).to_be_bytes());
    let e = error(split_every_way(sql, &short));
    assert_eq!(
        (e.0, e.1.as_str(), e.2.as_str()),
        (
            "08P01",
            "insufficient data left in message",
            "COPY t, line 1, column k"
        )
    );
    // One stray byte after the last tuple is the end of the data to PostgreSQL.
    let mut stray = binary(&[(Some(2), "x")], false);
    stray.push(7);
    assert_eq!(
        split_every_way(sql, &stray).unwrap()[2],
        binary(&[(Some(2), "x")], true)
    );
}

#[test]
fn text_keys_and_a_custom_placer() {
    let info = copy_options("COPY users (name) FROM STDIN (FORMAT csv)").unwrap();
    let mut s = CopySplitter::for_placement(&info, 0, placement(KeyType::Text));
    s.feed(b"a\nb\nc\nd\ne\nf\n").unwrap();
    s.finish().unwrap();
    // text 'a'..'f' over 3 shards is 2,0,2,0,0,0; over 4 just check all rows are somewhere.
    let total: usize = (0..4).map(|i| s.take(i).len()).sum();
    assert_eq!((total, s.rows()), (12, 6));
    // Any placer: here by the key's first byte, NULL to shard 1.
    let info = copy_options("COPY t (k) FROM STDIN").unwrap();
    let mut s = CopySplitter::new(
        &info,
        0,
        3,
        Box::new(|k| Ok(k.map_or(1, |k| (k[0] % 3) as usize))),
    );
    s.feed(b"a\n\\N\nb\nc\n").unwrap();
    s.finish().unwrap();
    assert_eq!(
        [&s.take(0)[..], &s.take(1)[..], &s.take(2)[..]],
        [&b"c\n"[..], b"a\n\\N\n", b"b\n"]
    );
    // A placer naming a shard that does not exist is refused, not a panic.
    let mut s = CopySplitter::new(&info, 0, 2, Box::new(|_| Ok(5)));
    assert_eq!(s.feed(b"a\n").unwrap_err().sqlstate, "22023");
}

#[test]
fn copy_encodings_the_router_reads_place_keys_as_their_utf8() {
    let shard_of = |sql: &str, row: &[u8]| {
        let info = copy_options(sql).unwrap();
        let mut s = CopySplitter::for_placement(&info, 0, placement(KeyType::Text));
        s.feed(row).unwrap();
        s.finish().unwrap();
        (0..3).find(|&i| !s.take(i).is_empty()).unwrap()
    };
    let utf8 = shard_of(
        "COPY users (name) FROM STDIN (ENCODING 'utf-8')",
        "café\n".as_bytes(),
    );
    let latin1 = shard_of(
        "COPY users (name) FROM STDIN (ENCODING 'LATIN1')",
        b"caf\xe9\n",
    );
    assert_eq!(latin1, utf8);
    // Not a WIN1252 character, and SJIS is not read: refused, not placed.
    for (encoding, row) in [("WIN1252", &b"caf\x81\n"[..]), ("SJIS", b"\x83\x5c\n")] {
        let info = copy_options(&format!(
            "COPY users (name) FROM STDIN (ENCODING '{encoding}')"
        ));
        let Ok(info) = info else {
            continue; // refused when the statement is read (SJIS)
        };
        let mut s = CopySplitter::for_placement(&info, 0, placement(KeyType::Text));
        s.feed(b"plain\n").unwrap();
        assert_eq!(s.feed(row).unwrap_err().sqlstate, "0A000", "{encoding}");
    }
}

/// Random bytes in any format and payload cuts: an error or a split, never a panic.
#[test]
fn random_input_never_panics() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b"0123456789\\t\n\r,\"\\.N|x \xff\x00";
    let header = binary(&[], false);
    for round in 0..3000 {
        let sql = [
            "COPY t (k, v) FROM STDIN",
            "COPY t (v, k) FROM STDIN (FORMAT csv, HEADER)",
            "COPY t (k, v) FROM STDIN (FORMAT binary)",
        ][round % 3];
        let len = (next() % 40) as usize;
        let mut data: Vec<u8> = if round % 3 == 2 && round % 2 == 0 {
            header.clone()
        } else {
            Vec::new()
        };
        for _ in 0..len {
            let r = next();
            data.push(if round % 3 == 2 {
                r as u8 % 12
            } else {
                alphabet[(r % alphabet.len() as u64) as usize]
            });
        }
        let mut s = splitter(sql, "k");
        let mut at = 0;
        let mut result = Ok(());
        while at < data.len() && result.is_ok() {
            let n = 1 + (next() % 8) as usize;
            let end = (at + n).min(data.len());
            result = s.feed(&data[at..end]);
            at = end;
        }
        if result.is_ok() {
            let _ = s.finish();
        }
        for i in 0..4 {
            s.take(i);
        }
    }
}

/// Random well-formed text and CSV streams (escapes, quoted delimiters and
/// line ends, NULL keys, both line-end styles) against an oracle: each
/// shard's output is exactly its rows, in order, byte for byte.
#[test]
fn random_streams_match_an_oracle() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let p = placement(KeyType::Bigint);
    let text_bits: [&[u8]; 7] = [b"a", b"\\t", b"\\\\", b"\\\n", b"\\N", b" ", b"\\x41"];
    let csv_bits: [&[u8]; 6] = [b"a", b",", b"\"\"", b"\n", b"\r\n", b"\\"];
    for round in 0..400 {
        let csv = round % 2 == 1;
        let eol: &[u8] = if round % 4 < 2 { b"\n" } else { b"\r\n" };
        let mut data = Vec::new();
        let mut expected = vec![Vec::new(); 4];
        for _ in 0..(next() % 12) {
            let key = (next() % 50) as i64 - 10;
            let null = next() % 7 == 0;
            let mut row = Vec::new();
            match (csv, null) {
                (false, true) => row.extend_from_slice(b"\\N"),
                (true, true) => {}
                (true, false) if next() % 2 == 0 => {
                    row.extend_from_slice(format!("\"{key}\"").as_bytes())
                }
                _ => row.extend_from_slice(key.to_string().as_bytes()),
            }
            row.push(if csv { b',' } else { b'\t' });
            if csv {
                row.push(b'"');
            }
            for _ in 0..(next() % 6) {
                let bits: &[&[u8]] = if csv { &csv_bits } else { &text_bits };
                let bit = bits[(next() % bits.len() as u64) as usize];
                // A CSV field keeps the stream's own line-end style inside quotes too.
                let bit: &[u8] = if csv && (bit == b"\n" || bit == b"\r\n") {
                    eol
                } else {
                    bit
                };
                row.extend_from_slice(bit);
            }
            if csv {
                row.push(b'"');
            }
            row.extend_from_slice(eol);
            let value = if null {
                KeyValue::Null
            } else {
                KeyValue::Int(key)
            };
            expected[p.shard_of(&value).unwrap()].extend_from_slice(&row);
            data.extend_from_slice(&row);
        }
        let sql = if csv {
            "COPY t (k, v) FROM STDIN (FORMAT csv)"
        } else {
            "COPY t (k, v) FROM STDIN"
        };
        let mut s = splitter(sql, "k");
        let mut at = 0;
        while at < data.len() {
            let end = (at + 1 + (next() % 9) as usize).min(data.len());
            s.feed(&data[at..end])
                .unwrap_or_else(|e| panic!("{e:?} in {:?}", String::from_utf8_lossy(&data)));
            at = end;
        }
        s.finish().unwrap();
        let got: Vec<Vec<u8>> = (0..4).map(|i| s.take(i).to_vec()).collect();
        assert_eq!(got, expected, "{:?}", String::from_utf8_lossy(&data));
    }
}

#[test]
fn without_a_column_list_the_learnt_columns_give_the_layout() {
    let info = copy_options("COPY t FROM STDIN (FORMAT csv, FORCE_NULL (k), NULL 'NA')").unwrap();
    let columns = ["v".to_string(), "k".into()];
    let at = super::copy_options::key_column(&info, "k", Some(&columns)).unwrap();
    let mut s = CopySplitter::for_placement(&info, at, placement(KeyType::Bigint))
        .with_columns(&info, &columns);
    s.feed(b"a,2\nb,\"NA\"\n").unwrap();
    assert_eq!(s.take(2).as_ref(), b"a,2\n");
    assert_eq!(s.take(0).as_ref(), b"b,\"NA\"\n");
    let e = s.feed(b"c\n").unwrap_err();
    assert_eq!(
        (e.message.as_str(), e.context.as_deref()),
        (
            "missing data for column \"k\"",
            Some("COPY t, line 3: \"c\"")
        )
    );
}

#[test]
fn only_an_unfinished_row_is_held_back() {
    let mut s = splitter("COPY t (k, v) FROM STDIN", "k");
    s.feed(b"1\ta\n2\tb").unwrap();
    assert_eq!(s.pending(), 3, "the unfinished row \"2\\tb\"");
    s.feed(b"c\n3\t").unwrap();
    assert_eq!(s.pending(), 2);
    s.feed(b"x\n\\.\nafter").unwrap();
    assert_eq!(s.pending(), 0, "what follows the end marker is dropped");
    let mut b = splitter("COPY t (k, v) FROM STDIN (FORMAT binary)", "k");
    b.feed(b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0\0\x02").unwrap();
    assert_eq!(
        b.pending(),
        2,
        "a tuple's field count, its fields still to come"
    );
}
