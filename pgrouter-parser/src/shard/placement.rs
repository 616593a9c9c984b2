//! Which shard a key value lives on: PostgreSQL's hash partitioning, or
//! the first list/range rule that covers it, else the default shard, else
//! 22023 naming the value.

use super::hash;
use super::value::{parse_text, KeyError, KeyType, KeyValue};

/// How a sharded table's key picks its shard, with everything needed to
/// place a value (no I/O, no configuration lookups).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub key_type: KeyType,
    pub shards: usize,
    pub mapping: Mapping,
}

/// The mapping of a [`Placement`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapping {
    /// PostgreSQL's `PARTITION BY HASH`, modulus = number of shards.
    Hash,
    /// Values listed per shard; `default` for the others.
    List { rules: Vec<(Vec<KeyValue>, usize)>, default: Option<usize> },
    /// `[from, to)` ranges per shard; `default` for the others.
    Range { rules: Vec<(Option<i64>, Option<i64>, usize)>, default: Option<usize> },
}

impl Placement {
    /// A placement with list rules given as text (as configured); values
    /// that are not valid for the type are dropped (the config checks them).
    pub fn list(key_type: KeyType, shards: usize, rules: &[(Vec<String>, usize)], default: Option<usize>) -> Self {
        let rules = rules
            .iter()
            .map(|(values, shard)| {
                let values = values.iter().filter_map(|v| parse_text(key_type, v).ok()).collect();
                (values, *shard)
            })
            .collect();
        Placement { key_type, shards, mapping: Mapping::List { rules, default } }
    }

    /// The shard of `value`.
    pub fn shard_of(&self, value: &KeyValue) -> Result<usize, KeyError> {
        match &self.mapping {
            Mapping::Hash => {
                let h = match value {
                    KeyValue::Null => None,
                    KeyValue::Int(v) => Some(hash::hash_int(*v)),
                    KeyValue::Text(b) => Some(hash::hash_bytes(b)),
                    KeyValue::Uuid(u) => Some(hash::hash_bytes(u)),
                };
                Ok(hash::remainder(h, self.shards as u64) as usize)
            }
            Mapping::List { rules, default } => {
                let found = rules.iter().find(|(values, _)| values.contains(value)).map(|r| r.1);
                found.or(*default).ok_or_else(|| uncovered(value))
            }
            Mapping::Range { rules, default } => {
                let found = match value {
                    KeyValue::Int(v) => rules
                        .iter()
                        .find(|(from, to, _)| from.is_none_or(|f| *v >= f) && to.is_none_or(|t| *v < t))
                        .map(|r| r.2),
                    _ => None,
                };
                found.or(*default).ok_or_else(|| uncovered(value))
            }
        }
    }
}

fn uncovered(value: &KeyValue) -> KeyError {
    KeyError::new(
        "22023",
        format!("pgrouter: no shard for shard key value {value}: no rule covers it and the table has no default_shard"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_and_range_rules_then_default_then_22023() {
        let list =
            Placement::list(KeyType::Text, 3, &[(vec!["eu".into(), "uk".into()], 1), (vec!["us".into()], 2)], None);
        assert_eq!(list.shard_of(&KeyValue::Text(b"uk".to_vec())), Ok(1));
        assert_eq!(list.shard_of(&KeyValue::Text(b"us".to_vec())), Ok(2));
        let e = list.shard_of(&KeyValue::Text(b"jp".to_vec())).unwrap_err();
        assert_eq!(e.sqlstate, "22023");
        assert!(e.message.contains("'jp'"), "{}", e.message);
        let with_default = Placement { mapping: Mapping::List { rules: vec![], default: Some(0) }, ..list.clone() };
        assert_eq!(with_default.shard_of(&KeyValue::Text(b"jp".to_vec())), Ok(0));

        let range = Placement {
            key_type: KeyType::Bigint,
            shards: 2,
            mapping: Mapping::Range { rules: vec![(None, Some(100), 0), (Some(100), Some(200), 1)], default: None },
        };
        assert_eq!(range.shard_of(&KeyValue::Int(-5)), Ok(0));
        assert_eq!(range.shard_of(&KeyValue::Int(100)), Ok(1));
        assert_eq!(range.shard_of(&KeyValue::Int(200)).unwrap_err().sqlstate, "22023");
        assert_eq!(range.shard_of(&KeyValue::Null).unwrap_err().sqlstate, "22023");
    }

    #[test]
    fn hash_places_null_on_remainder_zero() {
        let p = Placement { key_type: KeyType::Bigint, shards: 3, mapping: Mapping::Hash };
        assert_eq!(p.shard_of(&KeyValue::Null), Ok(0));
        assert_eq!(p.shard_of(&KeyValue::Int(2)), Ok(hash::remainder(Some(hash::hash_int(2)), 3) as usize));
    }
}
