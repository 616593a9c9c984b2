//! Statements that need several shards, as pure parts without I/O (the
//! executor that drives them is `client::shards`): reads merged from the
//! shards (the plan comes from `pgrouter_parser::fanout::plan_read`), COPY
//! FROM STDIN split per shard, COPY TO STDOUT joined from the shards.

mod copy_binary;
pub mod copy_lines;
pub mod copy_options;
pub mod copy_out;
pub mod copy_split;
#[cfg(test)]
mod copy_split_tests;
mod copy_text;
pub mod merge;
