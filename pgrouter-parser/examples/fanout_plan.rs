//! Prints the shard SQL of each SELECT read from stdin (one per line), or
//! `ERROR: <message>`: used to regenerate the merger's PostgreSQL fixtures
//! (`pgrouter/src/fanout/merge/fixtures/make.py`).

use std::io::BufRead;

fn main() {
    for line in std::io::stdin().lock().lines() {
        let sql = line.expect("stdin is readable");
        match pgrouter_parser::fanout::plan_read(&sql) {
            Ok(plan) => println!("{}", plan.shard_sql),
            Err(e) => println!("ERROR: {e}"),
        }
    }
}
