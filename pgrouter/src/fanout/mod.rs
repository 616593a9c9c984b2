//! Reads that need several shards: the pieces of the executor that have no
//! I/O. The plan (what each shard runs, how to merge) comes from
//! `pgrouter_parser::fanout::plan_read`.

pub mod merge;
