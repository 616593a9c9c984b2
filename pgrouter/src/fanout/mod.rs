//! Statements that need several shards, as pure parts without I/O: COPY
//! FROM STDIN split per shard.

mod copy_binary;
pub mod copy_options;
pub mod copy_split;
#[cfg(test)]
mod copy_split_tests;
mod copy_text;
