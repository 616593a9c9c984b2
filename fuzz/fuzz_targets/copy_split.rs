//! The COPY FROM STDIN splitter (`pgrouter::fanout::copy_split`): arbitrary
//! text, CSV and binary COPY data, cut into CopyData payloads anywhere.
//!
//! What must hold, besides no panic:
//! - the result (every shard's bytes, the row count, or the error with its
//!   SQLSTATE, message and context) is the same whether the data comes in
//!   one payload, in the payloads the input asks for (with outputs taken at
//!   chosen points) or one byte at a time;
//! - fed one byte at a time, every byte the splitter hands out is the next
//!   byte of the input, each in exactly one shard's output (the header
//!   line or binary file header goes to every shard, once each; every shard
//!   gets its own binary trailer at the end); what is never handed out is
//!   only the end-of-data marker `\.` and what follows it (or what
//!   follows a row that `\.` ends), the binary
//!   trailer, or a last byte too short to be a binary tuple count;
//! - memory: the splitter never holds more input than it has not handed out
//!   ([`CopySplitter::pending`]);
//! - a failed splitter keeps failing with the same error; a finished one
//!   refuses more data and finishes again without output;
//! - errors carry a five-character SQLSTATE and a message.
//!
//! Input: a statement byte (which COPY options, see `STATEMENTS`), a
//! placement byte (key type, shard count, mapping), a piece of payload
//! sizes (each byte: size `b & 0x3f`, output taken after that payload when
//! `b & 0x40`), then the COPY data.

use std::sync::{Arc, OnceLock};

use pgrouter::fanout::copy_options::{copy_options, key_column, CopyFormat, CopyHeader, CopyInfo};
use pgrouter::fanout::copy_split::{CopySplitError, CopySplitter};
use pgrouter_fuzz::{verbose, Pieces};
use pgrouter_parser::shard::{KeyType, Mapping, Placement};

/// COPY statements as clients send them; the shard key is column `k`. The
/// ones without a column list get the table's columns `k, v` (or `v, k`)
/// as the router learns them from the catalog.
const STATEMENTS: [&str; 16] = [
    "COPY t (k, v) FROM STDIN",
    "COPY t (v, k) FROM STDIN (DELIMITER '|')",
    "COPY t (k, v) FROM STDIN (HEADER)",
    "COPY t (k, v, w) FROM STDIN (NULL 'x', DEFAULT '\\D')",
    "COPY t (v, k) FROM STDIN (FORMAT csv)",
    "COPY t (k, v) FROM STDIN (FORMAT csv, HEADER true, QUOTE '''', ESCAPE '\\')",
    "COPY t (v, k) FROM STDIN (FORMAT csv, FORCE_NULL (k), NULL 'NULL')",
    "COPY t (v, k) FROM STDIN (FORMAT csv, FORCE_NOT_NULL (k), DELIMITER ';')",
    "COPY t (k, v) FROM STDIN (FORMAT binary)",
    "COPY t (v, k) FROM STDIN (FORMAT binary)",
    "COPY t FROM STDIN",
    "COPY t FROM STDIN (FORMAT binary)",
    "COPY t (k, v) FROM STDIN (ENCODING 'LATIN1')",
    "COPY t (k, v) FROM STDIN (FORMAT csv, HEADER MATCH)",
    "COPY t (k) FROM STDIN WITH CSV",
    "COPY t (v, k) FROM STDIN WITH CSV HEADER DELIMITER E'\\t' QUOTE '\"'",
];

const KEY_TYPES: [KeyType; 6] = [
    KeyType::Bigint,
    KeyType::Integer,
    KeyType::Smallint,
    KeyType::Text,
    KeyType::Varchar,
    KeyType::Uuid,
];

const TRAILER: [u8; 2] = [0xff, 0xff];

fn main() {
    afl::fuzz_nohook!(|data: &[u8]| check(data));
}

fn statements() -> &'static [(CopyInfo, Option<Vec<String>>)] {
    static INFOS: OnceLock<Vec<(CopyInfo, Option<Vec<String>>)>> = OnceLock::new();
    INFOS.get_or_init(|| {
        STATEMENTS
            .iter()
            .enumerate()
            .map(|(i, sql)| {
                let info = copy_options(sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
                let learnt = info.columns.is_none().then(|| {
                    let cols = if i % 2 == 0 { ["k", "v"] } else { ["v", "k"] };
                    cols.iter().map(|c| c.to_string()).collect()
                });
                (info, learnt)
            })
            .collect()
    })
}

/// What a splitter produced: every shard's bytes and the row count.
type Split = Result<(Vec<Vec<u8>>, u64), CopySplitError>;

struct Setup<'a> {
    info: &'a CopyInfo,
    learnt: Option<&'a [String]>,
    placement: Arc<Placement>,
}

impl Setup<'_> {
    fn splitter(&self) -> CopySplitter {
        let at = key_column(self.info, "k", self.learnt).expect("the key is listed");
        let s = CopySplitter::for_placement(self.info, at, self.placement.clone());
        match self.learnt {
            Some(cols) => s.with_columns(self.info, cols),
            None => s,
        }
    }

    fn shards(&self) -> usize {
        self.placement.shards
    }
}

fn placement(byte: u8) -> Arc<Placement> {
    let key_type = KEY_TYPES[(byte & 7) as usize % KEY_TYPES.len()];
    let shards = 1 + ((byte >> 3) & 3) as usize;
    let last = shards - 1;
    Arc::new(match byte >> 5 {
        0 => Placement::list(
            key_type,
            shards,
            &[
                (vec!["1".into(), "2".into(), "a".into()], 0),
                (vec!["3".into(), "b".into()], last),
            ],
            (byte & 0x80 != 0).then_some(last),
        ),
        1 => Placement {
            key_type,
            shards,
            mapping: Mapping::Range {
                rules: vec![(None, Some(10), 0), (Some(10), Some(1000), last)],
                default: None,
            },
        },
        _ => Placement {
            key_type,
            shards,
            mapping: Mapping::Hash,
        },
    })
}

fn check(data: &[u8]) {
    let mut input = Pieces::new(data);
    let (info, learnt) = &statements()[input.byte() as usize % STATEMENTS.len()];
    let setup = Setup {
        info,
        learnt: learnt.as_deref(),
        placement: placement(input.byte()),
    };
    let cuts = input.piece();
    let copy = input.rest();

    let whole = split_whole(&setup, copy);
    let chunked = split_chunked(&setup, copy, cuts);
    let bytewise = split_bytewise(&setup, copy);
    if verbose() {
        eprintln!("whole: {whole:?}");
    }
    assert_eq!(chunked, whole, "payloads cut as the input asks");
    assert_eq!(bytewise, whole, "one-byte payloads");
    if let Err(e) = &whole {
        assert_clean(e);
    }
}

fn assert_clean(e: &CopySplitError) {
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

fn take_all(s: &mut CopySplitter, shards: usize) -> Vec<Vec<u8>> {
    (0..shards).map(|i| s.take(i).to_vec()).collect()
}

/// After a successful finish: no more data, finishing again adds nothing.
fn after_finish(s: &mut CopySplitter, shards: usize) {
    let e = s.feed(b"1\n").expect_err("data after the end");
    assert_eq!(e.sqlstate, "08P01");
    assert_eq!(s.finish(), Ok(()));
    assert!(
        take_all(s, shards).iter().all(Vec::is_empty),
        "a second finish added output"
    );
}

/// After an error: the same error again, whatever comes.
fn after_error(s: &mut CopySplitter, e: &CopySplitError) {
    assert_eq!(s.feed(b"1\n").as_ref(), Err(e), "feed after an error");
    assert_eq!(s.finish().as_ref(), Err(e), "finish after an error");
}

fn split_whole(setup: &Setup, copy: &[u8]) -> Split {
    let mut s = setup.splitter();
    let done = s.feed(copy).and_then(|()| s.finish());
    if let Err(e) = done {
        after_error(&mut s, &e);
        return Err(e);
    }
    let rows = s.rows();
    Ok((finish_outputs(s, setup.shards()), rows))
}

fn finish_outputs(mut s: CopySplitter, shards: usize) -> Vec<Vec<u8>> {
    let before = s.buffered();
    let out = take_all(&mut s, shards);
    assert_eq!(
        out.iter().map(Vec::len).sum::<usize>(),
        before,
        "buffered()"
    );
    assert_eq!(s.buffered(), 0, "outputs taken");
    after_finish(&mut s, shards);
    out
}

fn split_chunked(setup: &Setup, copy: &[u8], cuts: &[u8]) -> Split {
    let shards = setup.shards();
    let mut s = setup.splitter();
    let mut got = vec![Vec::new(); shards];
    let mut rest = copy;
    let mut sizes = cuts.iter().cycle();
    while !rest.is_empty() {
        // Empty payloads (size 0) are legal CopyData too; a cut list of only
        // zeros still moves on.
        let b = if cuts.is_empty() {
            0x3f
        } else {
            *sizes.next().unwrap()
        };
        let n = ((b & 0x3f) as usize).min(rest.len());
        let n = if n == 0 && cuts.iter().all(|c| c & 0x3f == 0) {
            rest.len()
        } else {
            n
        };
        let (payload, after) = rest.split_at(n);
        rest = after;
        if let Err(e) = s.feed(payload) {
            after_error(&mut s, &e);
            return Err(e);
        }
        if b & 0x40 != 0 {
            for (g, o) in got.iter_mut().zip(take_all(&mut s, shards)) {
                g.extend_from_slice(&o);
            }
        }
    }
    if let Err(e) = s.finish() {
        after_error(&mut s, &e);
        return Err(e);
    }
    let rows = s.rows();
    for (g, o) in got.iter_mut().zip(finish_outputs(s, shards)) {
        g.extend_from_slice(&o);
    }
    Ok((got, rows))
}

/// Fed one byte at a time, with the outputs taken after every byte: the
/// new bytes of each step are put back together and must be the input.
fn split_bytewise(setup: &Setup, copy: &[u8]) -> Split {
    let shards = setup.shards();
    let binary = setup.info.format == CopyFormat::Binary;
    let mut header_due = binary || setup.info.header != CopyHeader::Absent;
    let mut s = setup.splitter();
    let mut got = vec![Vec::new(); shards];
    // The input as handed out: header once, rows in order.
    let mut rebuilt: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut step = |s: &mut CopySplitter, fed: usize, last: bool, got: &mut Vec<Vec<u8>>| {
        let mut new = take_all(s, shards);
        for (g, n) in got.iter_mut().zip(&new) {
            g.extend_from_slice(n);
        }
        if last && binary && !rebuilt.is_empty() {
            // Every shard's own trailer, added at the finish.
            for n in &mut new {
                assert!(n.ends_with(&TRAILER), "a shard without its binary trailer");
                n.truncate(n.len() - 2);
            }
        }
        if new.iter().all(Vec::is_empty) {
        } else if header_due {
            header_due = false;
            assert!(
                new.iter().all(|n| n == &new[0]),
                "the header differs between shards: {new:?}"
            );
            rebuilt.extend_from_slice(&new[0]);
        } else {
            append_in_some_order(&mut rebuilt, &new, copy);
        }
        assert_eq!(
            &copy[..rebuilt.len()],
            &rebuilt[..],
            "handed out bytes that are not the input's next ones"
        );
        assert!(
            s.pending() <= fed - rebuilt.len().min(fed),
            "holds {} bytes with {} fed and {} handed out",
            s.pending(),
            fed,
            rebuilt.len()
        );
    };
    while fed < copy.len() {
        if let Err(e) = s.feed(&copy[fed..fed + 1]) {
            after_error(&mut s, &e);
            return Err(e);
        }
        fed += 1;
        step(&mut s, fed, false, &mut got);
    }
    if let Err(e) = s.finish() {
        after_error(&mut s, &e);
        return Err(e);
    }
    step(&mut s, fed, true, &mut got);
    let rest = &copy[rebuilt.len()..];
    if binary {
        assert!(
            rest.len() < 2 || rest == TRAILER,
            "binary data left unsplit: {rest:?}"
        );
    } else {
        // PostgreSQL ignores what follows the end marker `\.`: the marker
        // line itself (nothing on it before `\.`), or a row the marker ends.
        let marker_row = [&b"\\."[..], b"\\.\n", b"\\.\r", b"\\.\r\n"]
            .iter()
            .any(|end| rebuilt.ends_with(end));
        assert!(
            rest.is_empty() || rest.starts_with(b"\\.") || marker_row,
            "text data left unsplit that is not after an end marker: {:?}",
            String::from_utf8_lossy(rest)
        );
    }
    let rows = s.rows();
    after_finish(&mut s, shards);
    Ok((got, rows))
}

/// The new bytes of several shards in one step: rows of different shards
/// completed by the same byte. They must follow each other in some order.
fn append_in_some_order(rebuilt: &mut Vec<u8>, new: &[Vec<u8>], copy: &[u8]) {
    fn fits(at: usize, left: &mut Vec<&[u8]>, copy: &[u8]) -> bool {
        if left.is_empty() {
            return true;
        }
        for i in 0..left.len() {
            let n = left[i];
            if copy.get(at..at + n.len()) == Some(n) {
                let taken = left.remove(i);
                if fits(at + n.len(), left, copy) {
                    return true;
                }
                left.insert(i, taken);
            }
        }
        false
    }
    let mut left: Vec<&[u8]> = new
        .iter()
        .filter(|n| !n.is_empty())
        .map(Vec::as_slice)
        .collect();
    assert!(
        fits(rebuilt.len(), &mut left, copy),
        "the shards' new bytes are not the input's next bytes in any order: {new:?}"
    );
    let len: usize = new.iter().map(Vec::len).sum();
    let at = rebuilt.len();
    rebuilt.extend_from_slice(&copy[at..at + len]);
}
