//! Prints the hash shard of each key read from stdin, for 2..=16 shards:
//! the integration suite's property test compares these with PostgreSQL's
//! `satisfies_hash_partition()` on a live server.
//!
//! Usage: `shard_of <smallint|integer|bigint|text|varchar|uuid>`; stdin has
//! one key per line, hex-encoded (its text form's UTF-8 bytes), or `\N` for
//! NULL; each output line has the 15 remainders for 2..=16 shards.

use std::io::{BufRead, Write};

use pgrouter_parser::shard::{parse_text, KeyType, KeyValue, Mapping, Placement};

fn main() {
    let ty = match std::env::args().nth(1).as_deref() {
        Some("smallint") => KeyType::Smallint,
        Some("integer") => KeyType::Integer,
        Some("bigint") => KeyType::Bigint,
        Some("text") => KeyType::Text,
        Some("varchar") => KeyType::Varchar,
        Some("uuid") => KeyType::Uuid,
        other => {
            eprintln!("unknown type {other:?}");
            std::process::exit(2);
        }
    };
    let placements: Vec<Placement> =
        (2..=16).map(|shards| Placement { key_type: ty, shards, mapping: Mapping::Hash }).collect();
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout());
    for line in stdin.lock().lines() {
        let line = line.expect("stdin");
        let value = if line == "\\N" {
            KeyValue::Null
        } else {
            let bytes: Vec<u8> =
                (0..line.len()).step_by(2).map(|i| u8::from_str_radix(&line[i..i + 2], 16).expect("hex")).collect();
            let text = String::from_utf8(bytes).expect("utf-8");
            parse_text(ty, &text).unwrap_or_else(|e| panic!("{text:?}: {}", e.message))
        };
        let shards: Vec<String> =
            placements.iter().map(|p| p.shard_of(&value).expect("hash placement").to_string()).collect();
        writeln!(out, "{}", shards.join(" ")).expect("stdout");
    }
}
