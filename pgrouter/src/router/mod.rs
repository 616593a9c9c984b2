//! Where a statement goes. Every routing decision lives here, as a pure
//! function of the statement's [`Analysis`] and the session's routing state,
//! so it can be tested as a table of statements and expected routes.

mod bind;
mod insert_rows;
mod policy;
mod rebind;
mod shard_map;
mod shard_plan;
mod shard_point;
mod shard_values;

pub use bind::BindParams;
pub use insert_rows::insert_row_shards;
pub use policy::{JwtIdentity, Policy, Refusal, SessionToken};
pub use rebind::{part_types, rebind};
pub use shard_map::{ShardMap, ShardMaps};
pub use shard_plan::{
    plan as plan_shard, plan_encoded as plan_shard_encoded, Many, ManyKind, ShardChoice, Values,
    COLUMNS_UNKNOWN, UNREADABLE_LITERAL,
};
pub use shard_point::{compile as compile_point, PointPlan, PointValues};

use pgrouter_parser::{Analysis, DiscardKind, ResetTarget, RoleHint, StatementKind, TxEffect};

/// The kind of server a statement needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub shard: usize,
    pub role: Role,
}

/// The parts of a session that steer routing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionRouting {
    /// `SET pgrouter.role = 'primary' | 'replica'`.
    pub role_override: Option<RoleHint>,
    /// `SET pgrouter.shard = N`.
    pub shard_override: Option<u32>,
    /// The session has `default_transaction_read_only = on`.
    pub default_read_only: bool,
    /// The session has `default_transaction_isolation = serializable`:
    /// its transactions cannot run on a hot standby.
    pub default_serializable: bool,
    /// `SET pgrouter.sharding_key` is in force (its value is read only then).
    pub has_sharding_key: bool,
    /// `SET pgrouter.shard` is in force, whatever its value (a value that
    /// names no shard still overrides the keys, and is refused later).
    pub has_shard_setting: bool,
    /// `client_encoding` is set to something other than UTF8 (its value is
    /// read only then): text shard keys must be ASCII.
    pub foreign_encoding: bool,
}

impl SessionRouting {
    /// Reads the routing settings out of the client's session parameters.
    pub fn from_params(get: impl Fn(&str) -> Option<String>) -> SessionRouting {
        let role_override =
            get("pgrouter.role").and_then(|v| match v.trim().to_ascii_lowercase().as_str() {
                "primary" => Some(RoleHint::Primary),
                "replica" => Some(RoleHint::Replica),
                _ => None,
            });
        // A value that is not a shard number names no shard: refused with
        // 22023 at the next statement, like a number past the last shard.
        let shard_override = get("pgrouter.shard").map(|v| pgrouter_parser::shard_number(&v));
        let default_read_only = get("default_transaction_read_only").is_some_and(|v| is_on(&v));
        let default_serializable = get("default_transaction_isolation")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("serializable"));
        SessionRouting {
            role_override,
            shard_override,
            default_read_only,
            default_serializable,
            has_sharding_key: get("pgrouter.sharding_key").is_some(),
            has_shard_setting: get("pgrouter.shard").is_some(),
            foreign_encoding: get("client_encoding")
                .is_some_and(|e| !crate::fanout::copy_split::is_utf8(&e)),
        }
    }
}

/// PostgreSQL's spellings of a true boolean setting.
pub fn is_on(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "on" | "true" | "yes" | "1" | "t" | "y"
    )
}

/// Decides the route of a statement that starts a unit of work (outside a
/// transaction the session already holds a server for).
pub fn route(analysis: &Analysis, session: &SessionRouting) -> Route {
    let shard = match analysis.hint.shard {
        Some(shard) => shard,
        // The router's own settings must be changeable whatever they say
        // now (e.g. after `SET pgrouter.shard` named a shard that does not
        // exist): they run on shard 0, where they change nothing.
        None => match session.shard_override {
            Some(_) if only_router_settings(analysis) => 0,
            Some(shard) => shard,
            None => 0,
        },
    } as usize;
    let role = if let Some(hint) = analysis.hint.role {
        from_hint(hint)
    } else if let Some(hint) = session.role_override {
        from_hint(hint)
    } else if analysis.parse_error.is_some()
        || analysis.is_write
        || !analysis.session_state.creates.is_empty()
    {
        // Session state pins the client to this connection (transaction
        // mode), which must then take its writes too.
        Role::Primary
    } else {
        match analysis.statements.first().map(|s| &s.kind) {
            // A hot standby refuses serializable transactions.
            Some(StatementKind::Transaction(TxEffect::Begin { serializable, .. }))
                if serializable.unwrap_or(session.default_serializable) =>
            {
                Role::Primary
            }
            Some(StatementKind::Transaction(TxEffect::Begin { read_only, .. })) => {
                match read_only {
                    Some(true) => Role::Replica,
                    Some(false) => Role::Primary,
                    None if session.default_read_only => Role::Replica,
                    None => Role::Primary,
                }
            }
            _ if session.default_serializable => Role::Primary,
            // Two-phase commit statements act on the primary's prepared transactions.
            Some(StatementKind::Transaction(
                TxEffect::CommitPrepared
                | TxEffect::RollbackPrepared
                | TxEffect::PrepareTransaction,
            )) => Role::Primary,
            _ => Role::Replica,
        }
    };
    Route { shard, role }
}

/// Every statement is a SET or RESET of a `pgrouter.*` setting, or RESET ALL.
fn only_router_settings(analysis: &Analysis) -> bool {
    !analysis.statements.is_empty()
        && analysis.statements.iter().all(|s| match &s.kind {
            StatementKind::Set(set) => set.name.starts_with("pgrouter."),
            StatementKind::Reset(ResetTarget::Name(name)) => name.starts_with("pgrouter."),
            StatementKind::Reset(ResetTarget::All) => true,
            _ => false,
        })
}

fn from_hint(h: RoleHint) -> Role {
    match h {
        RoleHint::Primary => Role::Primary,
        RoleHint::Replica => Role::Replica,
    }
}

/// Whether a statement opens or closes a transaction block, for predicting
/// the transaction state before the server's ReadyForQuery arrives.
pub fn transaction_effect(analysis: &Analysis) -> Option<bool> {
    let mut effect = None;
    for s in &analysis.statements {
        if let StatementKind::Transaction(t) = &s.kind {
            match t {
                TxEffect::Begin { .. } => effect = Some(true),
                TxEffect::Commit | TxEffect::Rollback | TxEffect::PrepareTransaction => {
                    effect = Some(false)
                }
                _ => {}
            }
        }
    }
    effect
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod shard_tests;

/// False when [`runs_outside_transactions`] is false whatever the text:
/// the text need not be read.
pub fn may_run_outside_transactions(analysis: &Analysis) -> bool {
    analysis.statements.iter().any(|s| {
        matches!(
            s.kind,
            StatementKind::Vacuum
                | StatementKind::Discard(DiscardKind::All)
                | StatementKind::Transaction(TxEffect::CommitPrepared | TxEffect::RollbackPrepared)
                | StatementKind::Ddl
                | StatementKind::Other
        )
    })
}

/// Statements PostgreSQL refuses inside a transaction block or a pipeline
/// (`PreventInTransactionBlock`): the router sends nothing of its own in
/// their implicit transaction.
pub fn runs_outside_transactions(analysis: &Analysis, sql: &str) -> bool {
    analysis.statements.iter().any(|s| match &s.kind {
        StatementKind::Vacuum
        | StatementKind::Discard(DiscardKind::All)
        | StatementKind::Transaction(TxEffect::CommitPrepared | TxEffect::RollbackPrepared) => true,
        StatementKind::Ddl | StatementKind::Other => {
            let upper = sql.to_ascii_uppercase();
            let words = [
                "CONCURRENTLY",
                "DATABASE",
                "TABLESPACE",
                "ALTER SYSTEM",
                "SUBSCRIPTION",
                "REINDEX SYSTEM",
                "REINDEX SCHEMA",
            ];
            // CLUSTER without a table clusters every table, each in a
            // transaction of its own.
            let cluster_words: Vec<&str> = upper
                .trim_end_matches([';', ' ', '\n', '\t', '\r'])
                .split_whitespace()
                .collect();
            let bare_cluster = matches!(
                cluster_words.as_slice(),
                ["CLUSTER"] | ["CLUSTER", "VERBOSE" | "(VERBOSE)"]
            );
            bare_cluster || words.iter().any(|w| upper.contains(w))
        }
        _ => false,
    })
}
