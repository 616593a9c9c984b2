//! A multi-row INSERT whose rows belong to several shards: each shard gets
//! an INSERT of its own rows only (`pgrouter_parser::shard::split_insert`;
//! in the extended protocol with its parameters renumbered), in one
//! transaction block per shard committed together; RETURNING rows are
//! relayed in VALUES order (`returning_order`) and the tag is the total
//! (`INSERT 0 n`).

use bytes::BytesMut;
use pgrouter_parser::shard::split_insert;

use super::held::Leg;
use super::legs::cancel_targets;
use super::returning_order::returning_in_values_order;
use super::unit::Unit;
use super::write::merge_answers;
use super::ShardError;
use crate::client::error::SessionEnd;
use crate::client::session::Session;
use crate::protocol::frontend;
use crate::router::{self, part_types, rebind, BindParams, Role, Values};

/// One shard's part: its request (without BEGIN).
struct Part {
    shard: usize,
    request: BytesMut,
}

/// The parts, and the shard of every VALUES row in order.
struct Parts {
    parts: Vec<Part>,
    row_shards: Vec<usize>,
}

impl Session {
    /// Outside a transaction block: legs taken, parts run, committed together.
    pub(super) async fn insert_on_shards(&mut self, unit: &Unit) -> Result<(), ShardError> {
        let parts = self.insert_parts(unit)?;
        let shards: Vec<usize> = parts.parts.iter().map(|p| p.shard).collect();
        let mut legs = self.take_legs(&shards, Role::Primary).await?;
        self.cancel.slot.set_many(cancel_targets(&legs));
        let result = self.run_insert_parts(unit, &parts, &mut legs, false).await;
        self.cancel.slot.set(None);
        self.give_back(legs);
        result.unwrap_or_else(|end| Err(ShardError::router("08006", format!("pgrouter: {end:?}"))))
    }

    /// Inside a transaction on several shards: the legs of the rows' shards.
    pub(super) async fn insert_with_legs_in_tx(
        &mut self,
        unit: &Unit,
        legs: &mut [Leg],
    ) -> Result<(), ShardError> {
        let parts = self.insert_parts(unit)?;
        let result = self.run_insert_parts(unit, &parts, legs, true).await;
        result.unwrap_or_else(|end| Err(ShardError::router("08006", format!("pgrouter: {end:?}"))))
    }

    /// Each shard's INSERT: its rows, its parameters.
    fn insert_parts(&self, unit: &Unit) -> Result<Parts, ShardError> {
        let map = self
            .shard_map
            .as_ref()
            .ok_or_else(|| ShardError::router("XX000", "pgrouter: not a sharded database"))?;
        let bind_params = unit
            .extended
            .as_ref()
            .map(|e| BindParams::parse(&e.bind_rest));
        let values = match (&unit.extended, &bind_params) {
            (None, _) => Values::Text(&unit.sql),
            (Some(e), Some(Some(params))) => Values::Bind {
                sql: &unit.sql,
                params,
                param_types: &e.param_types,
            },
            _ => {
                return Err(ShardError::router(
                    "08P01",
                    "pgrouter: malformed Bind message",
                ))
            }
        };
        let row_shards = router::insert_row_shards(&unit.analysis, &values, map)
            .map_err(|r| ShardError::router(r.sqlstate, r.message))?
            .ok_or_else(|| {
                ShardError::router("0A000", "pgrouter: this INSERT cannot be split by shard")
            })?;
        let split = split_insert(&unit.sql, &row_shards)
            .map_err(|u| ShardError::router("0A000", format!("pgrouter: {}", u.0)))?;
        let mut parts = Vec::with_capacity(split.len());
        for part in split {
            let mut request = BytesMut::new();
            match &unit.extended {
                None => frontend::query(&mut request, &part.sql),
                Some(e) => {
                    let rest = rebind(&e.bind_rest, &part.params).ok_or_else(|| {
                        ShardError::router("08P01", "pgrouter: malformed Bind message")
                    })?;
                    frontend::write_parse(
                        &mut request,
                        "",
                        &part.sql,
                        &part_types(&e.param_types, &part.params),
                    );
                    frontend::write_bind(&mut request, "", "", &rest);
                    frontend::write_target(&mut request, b'D', b'P', "");
                    super::unit::execute_all(&mut request);
                    frontend::sync(&mut request);
                }
            }
            parts.push(Part {
                shard: part.shard,
                request,
            });
        }
        Ok(Parts { parts, row_shards })
    }

    /// Runs each part on its leg (`legs` are the parts' shards, ascending,
    /// as the parts are), answers merged; outside a transaction block each
    /// part runs in one of its own, all committed together at the end.
    async fn run_insert_parts(
        &mut self,
        unit: &Unit,
        all: &Parts,
        legs: &mut [Leg],
        in_tx: bool,
    ) -> Result<Result<(), ShardError>, SessionEnd> {
        let parts = &all.parts[..];
        if legs.len() != parts.len() || legs.iter().zip(parts).any(|(l, p)| l.shard != p.shard) {
            return Ok(Err(ShardError::router(
                "XX000",
                "pgrouter: the INSERT's parts and shards differ",
            )));
        }
        let requests: Vec<BytesMut> = parts
            .iter()
            .map(|p| {
                let mut r = BytesMut::new();
                if !in_tx {
                    frontend::query(&mut r, "BEGIN");
                }
                r.extend_from_slice(&p.request);
                r
            })
            .collect();
        let refs: Vec<&[u8]> = requests.iter().map(|r| &r[..]).collect();
        let mut answers = match self
            .ask_each(legs, &refs, if in_tx { 1 } else { 2 })
            .await?
        {
            Ok(a) => a,
            Err(e) => {
                if !in_tx {
                    self.roll_back(legs).await;
                }
                return Ok(Err(e));
            }
        };
        let failed = answers
            .iter()
            .flatten()
            .find(|(t, _)| *t == b'E')
            .map(|(_, body)| ShardError::Server(body.clone()));
        let failed = failed.or_else(|| {
            let shards: Vec<usize> = parts.iter().map(|p| p.shard).collect();
            returning_in_values_order(&mut answers, &shards, &all.row_shards).err()
        });
        if let Err(e) = self.end_legs_statement(legs, in_tx, failed).await {
            return Ok(Err(e));
        }
        if !in_tx {
            for answer in &mut answers {
                if let Some(at) = answer.iter().position(|(t, _)| *t == b'Z') {
                    answer.drain(..=at); // BEGIN's
                }
            }
        }
        for answer in &mut answers {
            unit.client_part(answer);
        }
        unit.preamble(&mut self.to_client);
        merge_answers(&answers, &mut self.to_client);
        Ok(Ok(()))
    }
}
