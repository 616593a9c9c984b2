//! Statements that need several shards, as pure parts without I/O: COPY
//! FROM STDIN split per shard, COPY TO STDOUT joined from the shards.

mod copy_binary;
pub mod copy_options;
pub mod copy_out;
pub mod copy_split;
#[cfg(test)]
mod copy_split_tests;
mod copy_text;
