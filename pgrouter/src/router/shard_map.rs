//! The shard map of each logical database, built once per configuration:
//! its sharded tables with their key column and [`Placement`], its
//! reference tables, and whether cross-shard statements are refused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgrouter_config::{Config, CrossShard, ShardKeyType, ShardMapping};
use pgrouter_parser::shard::{KeyType, Mapping, Placement, Relation};

/// A table's column list and when it was learnt.
type LearntColumns = (Instant, Arc<Vec<String>>);

/// Shard maps by logical database; a database without sharded or
/// reference tables has none (its statements route as before).
#[derive(Debug, Default)]
pub struct ShardMaps {
    /// ahash: looked up several times per client message.
    by_database: ahash::AHashMap<String, Arc<ShardMap>>,
}

impl ShardMaps {
    pub fn build(config: &Config) -> ShardMaps {
        let mut by_database = ahash::AHashMap::new();
        for db in config.logical_databases() {
            if let Some(map) = ShardMap::build(config, db) {
                by_database.insert(db.to_string(), Arc::new(map));
            }
        }
        ShardMaps { by_database }
    }

    pub fn get(&self, database: &str) -> Option<&Arc<ShardMap>> {
        if self.by_database.is_empty() {
            return None; // the common case costs no hashing
        }
        self.by_database.get(database)
    }
}

/// One logical database's sharding.
#[derive(Debug)]
pub struct ShardMap {
    pub shards: usize,
    pub tables: Vec<ShardedTable>,
    /// `(schema, name)` of the reference tables; schema `None` = any.
    pub reference: Vec<(Option<String>, String)>,
    pub refuse_cross_shard: bool,
    /// Column lists of sharded tables, learnt from shard 0's catalog for
    /// INSERTs without a column list (see [`Self::known_columns`]).
    pub(super) columns: parking_lot::Mutex<HashMap<String, LearntColumns>>,
    /// Facts of the database a merge depends on, learnt from shard 0 once:
    /// whether its collation orders text by bytes, and which function
    /// names are aggregates (user-defined ones look like plain calls).
    pub(super) facts: parking_lot::Mutex<DatabaseFacts>,
}

/// See [`ShardMap::facts`].
#[derive(Debug, Default, Clone)]
pub struct DatabaseFacts {
    pub text_orders_by_bytes: Option<bool>,
    pub aggregates: HashMap<String, bool>,
}

/// How long a learnt column list is trusted: a table changed behind the
/// router's back is seen again this soon (DDL through the router forgets
/// them at once).
const COLUMNS_TTL: Duration = Duration::from_secs(10);

/// A sharded table (or, with no name, any table that has the key column).
#[derive(Debug)]
pub struct ShardedTable {
    pub schema: Option<String>,
    pub name: Option<String>,
    pub column: String,
    pub placement: Arc<Placement>,
}

impl ShardMap {
    fn build(config: &Config, db: &str) -> Option<ShardMap> {
        let shards = config.shard_count(db) as usize;
        let tables: Vec<ShardedTable> = config
            .sharded_tables
            .iter()
            .filter(|t| t.database == db)
            .map(|t| ShardedTable {
                schema: t.schema.clone(),
                name: t.name.clone(),
                column: t.column.clone(),
                placement: Arc::new(placement(t, shards)),
            })
            .collect();
        let reference: Vec<(Option<String>, String)> = config
            .reference_tables
            .iter()
            .filter(|r| r.database == db)
            .flat_map(|r| r.names.iter())
            .map(|n| match n.split_once('.') {
                Some((schema, name)) => (Some(schema.to_string()), name.to_string()),
                None => (None, n.clone()),
            })
            .collect();
        if tables.is_empty() && reference.is_empty() {
            return None;
        }
        Some(ShardMap {
            shards,
            tables,
            reference,
            refuse_cross_shard: config.sharding.cross_shard == CrossShard::Refuse,
            columns: Default::default(),
            facts: Default::default(),
        })
    }

    /// The sharded-table entry of a table named in a statement (`schema.name`
    /// or `name`, as [`pgrouter_parser::Analysis::tables`] spells it).
    pub fn table(&self, qualified: &str) -> Option<&ShardedTable> {
        let (schema, name) = split(qualified);
        self.tables.iter().find(|t| {
            t.name.as_deref() == Some(name) && (t.schema.is_none() || t.schema.as_deref() == schema)
        })
    }

    /// The entry of a relation in a scope (a name-less entry applies to a
    /// relation only through its column, see [`Self::key_of`]).
    pub fn relation(&self, r: &Relation) -> Option<&ShardedTable> {
        self.tables.iter().find(|t| {
            t.name.as_deref() == Some(r.name.as_str())
                && (t.schema.is_none() || t.schema.as_deref() == r.schema.as_deref())
        })
    }

    /// The columns of `r` in table order, if learnt recently.
    pub fn known_columns(&self, r: &Relation) -> Option<Arc<Vec<String>>> {
        let columns = self.columns.lock();
        let (at, list) = columns.get(&relation_key(r))?;
        (at.elapsed() < COLUMNS_TTL).then(|| list.clone())
    }

    pub fn learn_columns(&self, r: &Relation, list: Vec<String>) {
        self.columns
            .lock()
            .insert(relation_key(r), (Instant::now(), Arc::new(list)));
    }

    /// After DDL: column lists (and aggregates) may have changed.
    pub fn forget_columns(&self) {
        self.columns.lock().clear();
        self.facts.lock().aggregates.clear();
    }

    pub fn facts(&self) -> DatabaseFacts {
        self.facts.lock().clone()
    }

    pub fn learn_facts(&self, text_orders_by_bytes: Option<bool>, aggregates: &[(String, bool)]) {
        let mut facts = self.facts.lock();
        if text_orders_by_bytes.is_some() {
            facts.text_orders_by_bytes = text_orders_by_bytes;
        }
        for (name, is_agg) in aggregates {
            facts.aggregates.insert(name.clone(), *is_agg);
        }
    }

    pub fn is_reference(&self, qualified: &str) -> bool {
        let (schema, name) = split(qualified);
        self.reference
            .iter()
            .any(|(s, n)| n == name && (s.is_none() || s.as_deref() == schema))
    }

    /// The placement `SET pgrouter.sharding_key` uses: that of the first
    /// sharded table the statement names, else the database's first.
    pub fn default_placement(&self) -> Option<&Arc<Placement>> {
        self.tables.first().map(|t| &t.placement)
    }
}

fn relation_key(r: &Relation) -> String {
    match &r.schema {
        Some(s) => format!("{s}.{}", r.name),
        None => r.name.clone(),
    }
}

/// `schema.name` → (Some(schema), name); the last two parts of longer names.
fn split(qualified: &str) -> (Option<&str>, &str) {
    let mut parts = qualified.rsplitn(3, '.');
    let name = parts.next().unwrap_or(qualified);
    (parts.next(), name)
}

fn placement(t: &pgrouter_config::ShardedTable, shards: usize) -> Placement {
    let key_type = match t.data_type {
        ShardKeyType::Smallint => KeyType::Smallint,
        ShardKeyType::Integer => KeyType::Integer,
        ShardKeyType::Bigint => KeyType::Bigint,
        ShardKeyType::Text => KeyType::Text,
        ShardKeyType::Varchar => KeyType::Varchar,
        ShardKeyType::Uuid => KeyType::Uuid,
    };
    let default = t.default_shard.map(|d| d as usize);
    match t.mapping {
        ShardMapping::Hash => Placement {
            key_type,
            shards,
            mapping: Mapping::Hash,
        },
        ShardMapping::List => {
            let rules: Vec<(Vec<String>, usize)> = t
                .rules
                .iter()
                .map(|r| (r.values.clone(), r.shard as usize))
                .collect();
            Placement::list(key_type, shards, &rules, default)
        }
        ShardMapping::Range => Placement {
            key_type,
            shards,
            mapping: Mapping::Range {
                rules: t
                    .rules
                    .iter()
                    .map(|r| (r.from, r.to, r.shard as usize))
                    .collect(),
                default,
            },
        },
    }
}
