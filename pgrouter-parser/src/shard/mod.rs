//! Sharding facts, with no I/O and no configuration: PostgreSQL-compatible
//! placement of a key value ([`Placement`]), key values read as PostgreSQL
//! reads them ([`parse_text`], [`parse_binary`]), and where a statement's
//! shard keys sit ([`StatementKeys`], part of every cached [`crate::Analysis`]).
//!
//! The analysis is shared by texts that differ only in literals, so it
//! records *where* a key's value is — the n-th literal of the text, or
//! parameter `$n` — never the value itself; [`literal_values`] reads the
//! literals of the text at hand for each execution.

mod casts;
mod execute;
mod hash;
mod insert_split;
mod keys;
mod literals;
mod placement;
mod value;

pub use execute::{execute_params, prepared_query};
pub use insert_split::{split_insert, InsertPart, InsertTemplate, Unsupported};
pub use keys::{Column, Cond, Filter, InsertRows, Relation, Scope, StatementKeys, ValueRef};
pub use literals::{literal_of_token, literal_value_at, literal_values, Literal};
pub use placement::{Mapping, Placement};
pub use value::{
    oid_type, parse_binary, parse_binary_array, parse_plain_digits, parse_text, parse_text_array, type_name, KeyError,
    KeyType, KeyValue,
};

pub(crate) use keys::statement_keys;
pub(crate) use literals::{literal_spans, literal_starts};
