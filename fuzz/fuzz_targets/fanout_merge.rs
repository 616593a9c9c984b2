//! The streaming merger of cross-shard reads (`pgrouter::fanout::merge`):
//! per-shard RowDescription / DataRow / CommandComplete streams, made from
//! the input, merged under a plan that `plan_read` built from one of a few
//! real statement shapes (ORDER BY with DESC and NULLS, LIMIT/OFFSET, also
//! as parameters, count/sum/min/max/avg/bool_and, GROUP BY, HAVING,
//! DISTINCT, `*`), with columns of many types in text or binary format.
//!
//! What must hold, besides no panic:
//! - the client's stream is well formed: at most one RowDescription, first,
//!   with the statement's visible columns; DataRows of that width; one
//!   CommandComplete `SELECT n` at the end with n the rows sent (or one
//!   EmptyQueryResponse when every shard sent one);
//! - never more rows than LIMIT allows; with every shard complete and no
//!   error, a plain or ordered read without DISTINCT sends exactly
//!   min(LIMIT, rows - OFFSET) rows;
//! - ORDER BY over integer keys, with each shard's rows sorted (the target
//!   sorts them, PostgreSQL's NULLS FIRST/LAST and DESC rules), gives rows
//!   sorted by the visible keys; so does an aggregate's ORDER BY;
//! - the executor's contract: fed only shards in `wanted()` (and
//!   `wants()` agrees with it); once every shard completed and nothing is
//!   wanted, the merge is done;
//! - errors carry a five-character SQLSTATE and a message; after a drain
//!   error, every drain gives the same error.
//!
//! Input: a statement byte, a shape byte (shard count 1..4, session facts,
//! whether the "sorted integer keys" oracle applies), a byte for each
//! column's type and format, then per shard a stream: a kind byte (normal,
//! EmptyQueryResponse, raw RowDescription, truncated), a row count and per
//! value a control byte (NULL, raw bytes, or a canonical value of the
//! column's type made from one byte); then bytes choosing which wanted
//! shard is read next.

use std::cmp::Ordering;
use std::sync::OnceLock;

use bytes::{BufMut, BytesMut};
use pgrouter::fanout::merge::{MergeContext, MergeError, Merger};
use pgrouter_fuzz::{verbose, Pieces};
use pgrouter_parser::fanout::{plan_read, Count, MergeSpec, SortKey};

const STATEMENTS: [&str; 24] = [
    "SELECT id FROM t",
    "SELECT id FROM t ORDER BY id",
    "SELECT id, name FROM t ORDER BY id DESC NULLS LAST LIMIT 5",
    "SELECT name FROM t ORDER BY id NULLS FIRST LIMIT 3 OFFSET 2",
    "SELECT a, b FROM t ORDER BY b DESC, a LIMIT 10",
    "SELECT x FROM t LIMIT 2",
    "SELECT x FROM t OFFSET 3",
    "SELECT * FROM t",
    "SELECT count(*) FROM t",
    "SELECT sum(x), min(x), max(x), avg(x) FROM t",
    "SELECT g, count(*), sum(x) FROM t GROUP BY g ORDER BY g LIMIT 4",
    "SELECT g, avg(x) FROM t GROUP BY g ORDER BY 2 DESC NULLS LAST",
    "SELECT DISTINCT a, b FROM t",
    "SELECT DISTINCT a FROM t ORDER BY a DESC LIMIT 3",
    "SELECT g, count(*) FROM t GROUP BY g HAVING count(*) > 1 ORDER BY g DESC",
    "SELECT x FROM t ORDER BY x LIMIT $1 OFFSET $2",
    "SELECT bool_and(b), bool_or(b), count(x) FROM t",
    "SELECT min(name COLLATE \"C\"), max(name COLLATE \"C\") FROM t",
    "SELECT g, min(d), max(d) FROM t GROUP BY g ORDER BY g NULLS FIRST",
    "SELECT a, b, c FROM t ORDER BY c, b DESC NULLS FIRST, a OFFSET 1",
    "SELECT g, sum(x) FROM t GROUP BY g HAVING sum(x) > $1 ORDER BY 2 LIMIT $2",
    "SELECT DISTINCT g, h FROM t ORDER BY h, g",
    "SELECT name FROM t ORDER BY name COLLATE \"C\" DESC LIMIT 7",
    "SELECT count(*), g FROM t GROUP BY g ORDER BY 1 DESC, 2",
];

// Type OIDs (pg_type) and the ones the sorted-keys oracle can read.
const INT2: u32 = 21;
const INT4: u32 = 23;
const INT8: u32 = 20;
const TYPES: [u32; 20] = [
    INT4, INT8, INT2, 25, 1700, 701, 700, 16, 1082, 1184, 1114, 1186, 2950, 17, 1043, 26, 1083,
    1266, 19, 1042,
];

fn main() {
    afl::fuzz_nohook!(|data: &[u8]| check(data));
}

fn plans() -> &'static [Option<MergeSpec>] {
    static PLANS: OnceLock<Vec<Option<MergeSpec>>> = OnceLock::new();
    PLANS.get_or_init(|| {
        STATEMENTS
            .iter()
            .map(|sql| plan_read(sql).ok().map(|p| p.merge))
            .collect()
    })
}

#[derive(Clone, Copy, Debug)]
struct Column {
    oid: u32,
    binary: bool,
}

fn is_int(oid: u32) -> bool {
    matches!(oid, INT2 | INT4 | INT8)
}

/// A value of `c`'s type made from `n` (valid input for the type).
fn canonical(c: Column, n: i8) -> Vec<u8> {
    let v = i64::from(n);
    let u = n as u8;
    if c.binary {
        return match c.oid {
            INT2 => (v as i16).to_be_bytes().to_vec(),
            INT4 | 26 | 1082 => (v as i32).to_be_bytes().to_vec(),
            INT8 | 1184 | 1114 | 1083 => (v * 1_000_000).to_be_bytes().to_vec(),
            701 => (v as f64 / 4.0).to_be_bytes().to_vec(),
            700 => (v as f32 / 4.0).to_be_bytes().to_vec(),
            16 => vec![u & 1],
            1186 => [
                (v * 1000).to_be_bytes().as_slice(),
                &(v as i32).to_be_bytes(),
                &0i32.to_be_bytes(),
            ]
            .concat(),
            1266 => [
                (v * 1000).to_be_bytes().as_slice(),
                &(v as i32 * 60).to_be_bytes(),
            ]
            .concat(),
            2950 => {
                let mut b = [0u8; 16];
                b[15] = u;
                b.to_vec()
            }
            1700 => numeric_binary(v),
            _ => format!("v{v}").into_bytes(),
        };
    }
    match c.oid {
        INT2 | INT4 | INT8 => v.to_string(),
        26 => (v as u32).to_string(),
        1700 => format!("{}.{}", v, u % 100),
        701 | 700 => match u % 16 {
            0 => "NaN".into(),
            1 => "-Infinity".into(),
            2 => "Infinity".into(),
            3 => "1e+300".into(),
            _ => format!("{}.25", v),
        },
        16 => if u & 1 == 1 { "t" } else { "f" }.into(),
        1082 => format!("2024-01-{:02}", 1 + u % 28),
        1184 => format!("2024-01-01 00:{:02}:00+{:02}", u % 60, u % 12),
        1114 => format!("2024-01-01 00:00:{:02}.5", u % 60),
        1186 => format!("{} days {:02}:00:00", v, u % 24),
        1083 => format!("12:{:02}:00", u % 60),
        1266 => format!("12:00:00+{:02}", u % 12),
        2950 => format!("00000000-0000-0000-0000-{:012x}", u),
        17 => format!("\\x{:02x}", u),
        _ => format!("v{}", v),
    }
    .into_bytes()
}

/// `v` in NUMERIC's binary form (base-10000 digits).
fn numeric_binary(v: i64) -> Vec<u8> {
    let mut b = BytesMut::new();
    let a = v.unsigned_abs();
    let digits: Vec<u16> = if a == 0 {
        vec![]
    } else if a < 10000 {
        vec![a as u16]
    } else {
        vec![(a / 10000) as u16, (a % 10000) as u16]
    };
    b.put_i16(digits.len() as i16);
    b.put_i16(digits.len() as i16 - 1);
    b.put_u16(if v < 0 { 0x4000 } else { 0 });
    b.put_i16(0);
    for d in digits {
        b.put_u16(d);
    }
    b.to_vec()
}

fn description(cols: &[Column]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u16(cols.len() as u16);
    for (i, c) in cols.iter().enumerate() {
        b.put_slice(format!("c{i}\0").as_bytes());
        b.put_u32(0);
        b.put_i16(0);
        b.put_u32(c.oid);
        b.put_i16(-1);
        b.put_i32(-1);
        b.put_i16(c.binary as i16);
    }
    b.to_vec()
}

fn data_row(values: &[Option<Vec<u8>>]) -> Vec<u8> {
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

/// One shard's generated rows, with the integer sort keys the oracle reads.
struct Generated {
    rows: Vec<(Vec<Option<i64>>, Values)>,
}

type Stream = Vec<(u8, Vec<u8>)>;

/// One DataRow's values (`None` is NULL).
type Values = Vec<Option<Vec<u8>>>;

/// PostgreSQL's order of one key: DESC reverses values, NULLS FIRST/LAST
/// places NULL regardless of direction.
fn compare_keys(keys: &[SortKey], a: &[Option<i64>], b: &[Option<i64>]) -> Ordering {
    for (k, (x, y)) in keys.iter().zip(a.iter().zip(b)) {
        let o = match (x, y) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => {
                if k.nulls_first {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (Some(_), None) => {
                if k.nulls_first {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            (Some(x), Some(y)) => {
                if k.descending {
                    y.cmp(x)
                } else {
                    x.cmp(y)
                }
            }
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

fn check(data: &[u8]) {
    let mut input = Pieces::new(data);
    let which = input.byte() as usize % STATEMENTS.len();
    let Some(planned) = &plans()[which] else {
        return;
    };
    let shape = input.byte();
    let shards = 1 + (shape & 3) as usize;
    let ctx = MergeContext {
        text_orders_by_bytes: shape & 4 != 0,
        datestyle_iso: shape & 8 == 0,
        intervalstyle_postgres: shape & 64 == 0,
        float_digits_exact: shape & 128 == 0,
        send_row_description: shape & 16 == 0,
    };
    let oracle = shape & 32 != 0;
    let params: Vec<String> = (0..2)
        .map(|_| match input.byte() {
            b @ 0..=199 => (b % 12).to_string(),
            200..=219 => "-1".into(),
            220..=239 => String::from_utf8_lossy(input.piece()).into_owned(),
            _ => "99999999999999999999".into(),
        })
        .collect();
    let spec = match planned.resolve_params(&|n| params.get(n - 1).cloned()) {
        Ok(spec) => spec,
        Err((state, message)) => {
            assert_eq!(state.len(), 5);
            assert!(!message.is_empty());
            return;
        }
    };
    let hidden = spec.hidden;
    let star_extra = 1 + (input.byte() % 3) as usize;
    let total = spec.visible.map_or(star_extra + hidden, |v| v + hidden);
    let sort_cols: Vec<usize> = spec
        .order_by
        .iter()
        .map(|k| k.column.index(total, hidden))
        .collect();
    let keys_are_inputs = spec.aggregate.is_none();
    let columns: Vec<Column> = (0..total)
        .map(|i| {
            let b = input.byte();
            let mut oid = TYPES[(b >> 1) as usize % TYPES.len()];
            if oracle && keys_are_inputs && sort_cols.contains(&i) && !is_int(oid) {
                oid = [INT4, INT8, INT2][(b >> 1) as usize % 3];
            }
            Column {
                oid,
                binary: b & 1 == 1,
            }
        })
        .collect();
    let desc = description(&columns);

    let mut streams: Vec<Stream> = Vec::new();
    let mut normal = true;
    let mut flipped = false;
    let mut raw_description = false;
    for _ in 0..shards {
        let kind = input.byte();
        let mut stream = Stream::new();
        // The columns this shard describes, and its values follow.
        let mut own = columns.clone();
        match kind % 8 {
            0 => {
                stream.push((b'I', Vec::new()));
                streams.push(stream);
                continue;
            }
            1 => {
                // The shard's values follow the generated columns, not
                // this: its rows are not known to be sorted.
                raw_description = true;
                stream.push((b'T', input.piece().to_vec()));
            }
            2 => {
                // The first column in the other format: refused unless it
                // is the first RowDescription the merger sees (the shards
                // before sent none yet, or EmptyQueryResponse).
                flipped = true;
                if let Some(c) = own.first_mut() {
                    c.binary = !c.binary;
                }
                stream.push((b'T', description(&own)));
            }
            _ => stream.push((b'T', desc.clone())),
        }
        let mut generated = Generated { rows: Vec::new() };
        for _ in 0..input.byte() % 12 {
            let mut keys = Vec::new();
            let mut values = Vec::new();
            for (i, c) in own.iter().enumerate() {
                let ctl = input.byte();
                let sort_key = sort_cols.contains(&i);
                let value = match ctl % 8 {
                    0 => None,
                    1 if !(oracle && sort_key) => Some(input.piece().to_vec()),
                    _ => Some(canonical(*c, input.byte() as i8)),
                };
                values.push(value);
            }
            for &i in &sort_cols {
                keys.push(values[i].as_deref().map(|v| int_value(own[i], v)));
            }
            generated.rows.push((keys, values));
        }
        if oracle && keys_are_inputs {
            generated
                .rows
                .sort_by(|a, b| compare_keys(&spec.order_by, &a.0, &b.0));
        }
        for (_, values) in &generated.rows {
            stream.push((b'D', data_row(values)));
        }
        match kind % 8 {
            3 => normal = false, // truncated: no CommandComplete
            4 => stream.push((input.byte(), input.piece().to_vec())),
            _ => stream.push((
                b'C',
                format!("SELECT {}\0", generated.rows.len()).into_bytes(),
            )),
        }
        if kind % 8 == 1 || kind % 8 == 4 {
            normal = false;
        }
        streams.push(stream);
    }

    let expected_rows: usize = streams
        .iter()
        .map(|s| s.iter().filter(|m| m.0 == b'D').count())
        .sum();
    if verbose() {
        eprintln!("{}\n{spec:?}\n{columns:?}\n{streams:?}", STATEMENTS[which]);
    }
    let result = run(&spec, ctx, &streams, &mut input);
    if verbose() {
        eprintln!("{result:?}");
    }
    let (out, done) = match result {
        Ok(r) => r,
        Err(e) => {
            assert_clean(&e);
            return;
        }
    };
    // With `*` the width is the shards' RowDescription's (a raw one may
    // differ from the one generated here): only consistency is checked.
    let got = decode(&out, spec.visible, ctx);
    let limit = match spec.limit {
        Some(Count::Const(n)) if n >= 0 => Some(n as usize),
        _ => None,
    };
    let offset = match spec.offset {
        Some(Count::Const(n)) if n >= 0 => n as usize,
        _ => 0,
    };
    if let Some(l) = limit {
        assert!(
            got.rows.len() <= l,
            "{} rows with LIMIT {l}",
            got.rows.len()
        );
    }
    if done {
        assert!(
            got.tag.is_some() || got.empty,
            "done without CommandComplete"
        );
    }
    if let Some(n) = got.tag {
        assert_eq!(n, got.rows.len(), "CommandComplete counts the rows sent");
    }
    if normal && done && spec.aggregate.is_none() && !spec.distinct && got.tag.is_some() {
        let want = expected_rows.saturating_sub(offset);
        let want = limit.map_or(want, |l| want.min(l));
        assert_eq!(got.rows.len(), want, "rows sent, of {expected_rows}");
    }
    // An aggregate's ORDER BY sorts the merged groups itself.
    if (oracle || spec.aggregate.is_some()) && !raw_description {
        // Without a RowDescription to the client, the values are read with
        // the generated columns, unless a flipped one may have won.
        check_sorted(&spec, &got, (!flipped).then_some(&columns[..]));
    }
}

/// An integer key's value as the merger must read it (the oracle only
/// looks at canonical values of integer columns).
fn int_value(c: Column, v: &[u8]) -> i64 {
    if !is_int(c.oid) {
        return 0;
    }
    read_int(c.binary, v).unwrap_or(0)
}

fn read_int(binary: bool, v: &[u8]) -> Option<i64> {
    if binary {
        match v.len() {
            2 => Some(i16::from_be_bytes(v.try_into().ok()?).into()),
            4 => Some(i32::from_be_bytes(v.try_into().ok()?).into()),
            8 => Some(i64::from_be_bytes(v.try_into().ok()?)),
            _ => None,
        }
    } else {
        std::str::from_utf8(v).ok()?.parse().ok()
    }
}

/// Feeds like the executor: one message at a time from a shard the merger
/// wants (the input picks which), draining after each.
fn run(
    spec: &MergeSpec,
    ctx: MergeContext,
    streams: &[Stream],
    input: &mut Pieces,
) -> Result<(Vec<u8>, bool), MergeError> {
    let mut m = Merger::new(spec.clone(), streams.len(), ctx);
    let mut next = vec![0usize; streams.len()];
    let mut out = BytesMut::new();
    loop {
        if m.is_done() {
            break;
        }
        let ready: Vec<usize> = m
            .wanted()
            .into_iter()
            .filter(|&s| next[s] < streams[s].len())
            .collect();
        for s in 0..streams.len() {
            assert_eq!(
                m.wants(s),
                m.wanted().contains(&s),
                "wants() and wanted() disagree"
            );
        }
        let Some(&s) = ready.get(input.byte() as usize % ready.len().max(1)) else {
            drained(&mut m, &mut out)?;
            let complete = streams
                .iter()
                .all(|st| matches!(st.last(), Some((b'C' | b'I', _))));
            if complete && m.wanted().is_empty() {
                assert!(
                    m.is_done(),
                    "every shard complete, nothing wanted, not done"
                );
            }
            break;
        };
        let (tag, body) = &streams[s][next[s]];
        next[s] += 1;
        m.feed(s, *tag, body).inspect_err(assert_clean)?;
        drained(&mut m, &mut out)?;
    }
    let done = m.is_done();
    Ok((out.to_vec(), done))
}

fn drained(m: &mut Merger, out: &mut BytesMut) -> Result<(), MergeError> {
    if let Err(e) = m.drain(out) {
        assert_clean(&e);
        let mut more = BytesMut::new();
        assert_eq!(
            m.drain(&mut more).as_ref(),
            Err(&e),
            "a failed merge fails again"
        );
        assert!(more.is_empty(), "output after a failure");
        return Err(e);
    }
    Ok(())
}

fn assert_clean(e: &MergeError) {
    assert!(
        e.sqlstate.len() == 5
            && e.sqlstate
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()),
        "SQLSTATE {:?}",
        e.sqlstate
    );
    assert!(!e.message.is_empty(), "an error without a message");
}

/// The client's stream, checked message by message.
struct Got {
    columns: Option<Vec<Column>>,
    rows: Vec<Vec<Option<Vec<u8>>>>,
    tag: Option<usize>,
    empty: bool,
}

fn decode(buf: &[u8], mut visible: Option<usize>, ctx: MergeContext) -> Got {
    let mut got = Got {
        columns: None,
        rows: Vec::new(),
        tag: None,
        empty: false,
    };
    let mut at = 0;
    while at < buf.len() {
        assert!(got.tag.is_none() && !got.empty, "a message after the end");
        let tag = buf[at];
        let len = i32::from_be_bytes(buf[at + 1..at + 5].try_into().unwrap());
        assert!(len >= 4, "message length {len}");
        let body = &buf[at + 5..at + 1 + len as usize];
        at += 1 + len as usize;
        match tag {
            b'T' => {
                assert!(ctx.send_row_description, "a RowDescription not asked for");
                assert!(
                    got.columns.is_none() && got.rows.is_empty(),
                    "one RowDescription, first"
                );
                got.columns = Some(parse_description(body));
                let width = got.columns.as_ref().unwrap().len();
                assert_eq!(*visible.get_or_insert(width), width, "visible columns");
            }
            b'D' => {
                let n = u16::from_be_bytes([body[0], body[1]]) as usize;
                assert_eq!(*visible.get_or_insert(n), n, "DataRow width");
                let mut p = 2;
                let mut row = Vec::new();
                for _ in 0..n {
                    let l = i32::from_be_bytes(body[p..p + 4].try_into().unwrap());
                    p += 4;
                    if l < 0 {
                        assert_eq!(l, -1);
                        row.push(None);
                    } else {
                        row.push(Some(body[p..p + l as usize].to_vec()));
                        p += l as usize;
                    }
                }
                assert_eq!(p, body.len(), "DataRow length");
                got.rows.push(row);
            }
            b'C' => {
                let text = std::str::from_utf8(body).unwrap();
                let n = text
                    .strip_prefix("SELECT ")
                    .and_then(|t| t.strip_suffix('\0'))
                    .and_then(|t| t.parse().ok())
                    .unwrap_or_else(|| panic!("CommandComplete {text:?}"));
                got.tag = Some(n);
            }
            b'I' => {
                assert!(
                    got.rows.is_empty() && got.columns.is_none(),
                    "EmptyQueryResponse after rows"
                );
                got.empty = true;
            }
            other => panic!("message {:?} to the client", other as char),
        }
    }
    assert_eq!(at, buf.len());
    got
}

fn parse_description(body: &[u8]) -> Vec<Column> {
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2;
    let mut cols = Vec::new();
    for _ in 0..n {
        let end = at + body[at..].iter().position(|&b| b == 0).unwrap() + 1;
        let f = &body[end..end + 18];
        cols.push(Column {
            oid: u32::from_be_bytes(f[6..10].try_into().unwrap()),
            binary: i16::from_be_bytes([f[16], f[17]]) == 1,
        });
        at = end + 18;
    }
    assert_eq!(at, body.len(), "RowDescription length");
    cols
}

/// The rows are in ORDER BY order, judged on the leading sort keys that
/// the client sees and that are integers.
fn check_sorted(spec: &MergeSpec, got: &Got, input_columns: Option<&[Column]>) {
    let visible = got.rows.first().map_or(0, Vec::len);
    let mut keys = Vec::new();
    let mut at = Vec::new();
    for k in &spec.order_by {
        let i = k.column.index(visible + spec.hidden, spec.hidden);
        let c = got
            .columns
            .as_ref()
            .map_or(input_columns.and_then(|c| c.get(i).copied()), |c| {
                c.get(i).copied()
            });
        match c {
            Some(c) if i < visible && is_int(c.oid) => {
                keys.push(k.clone());
                at.push((i, c.binary));
            }
            _ => break,
        }
    }
    if keys.is_empty() {
        return;
    }
    let read = |row: &Vec<Option<Vec<u8>>>| -> Option<Vec<Option<i64>>> {
        at.iter()
            .map(|&(i, binary)| match &row[i] {
                None => Some(None),
                Some(v) => read_int(binary, v).map(Some),
            })
            .collect()
    };
    let rows: Option<Vec<_>> = got.rows.iter().map(read).collect();
    let Some(rows) = rows else {
        return;
    };
    for w in rows.windows(2) {
        assert_ne!(
            compare_keys(&keys, &w[0], &w[1]),
            Ordering::Greater,
            "rows out of ORDER BY order: {:?} before {:?}",
            w[0],
            w[1]
        );
    }
}
