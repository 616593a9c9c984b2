//! The session's side of shard-key routing: hand the router the values of
//! this execution (the query text's literals, the Bind's parameters and the
//! statement's declared parameter types), and keep a transaction (or a
//! session-mode session) on the one shard it started on — a statement whose
//! key needs another shard is refused (0A000) rather than run where its
//! rows are not.

use std::cell::{OnceCell, RefCell};
use std::sync::Arc;

use pgrouter_parser::{Analysis, StatementKind};

use super::session::Session;
use crate::protocol::frontend::{parse_bind_names, parse_parse, parse_query, BindNames};
use crate::protocol::next_frame;
use crate::router::{
    self, BindParams, PointPlan, PointValues, Refusal, ShardChoice, ShardMap, Values,
};

use super::temp_objects::TempRoute;

type Planned = Result<Option<ShardChoice>, Refusal>;

/// The last shard plan and what it was made from. A batch is planned when
/// it is routed, and its Bind again when the policy guard checks it
/// against the held shard; planning is a pure function of the statement's
/// analysis, the shard map, the session's `pgrouter.sharding_key` and the
/// values, so equal inputs (a byte compare) reuse the plan exactly.
#[derive(Default)]
pub(super) struct PlanMemo {
    last: RefCell<Option<Memoized>>,
    points: PointPlans,
}

/// Point plans ([`router::PointPlan`]) of the statements this session ran
/// lately, by analysis and shard map (both kept alive, so identity is
/// exact); `None` for a statement that is not a point statement.
#[derive(Default)]
struct PointPlans(RefCell<Vec<PointEntry>>);

struct PointEntry {
    analysis: Arc<Analysis>,
    map: Arc<ShardMap>,
    plan: Option<Arc<PointPlan>>,
}

/// How many statements' point plans a session keeps: a loop of a few
/// statements hits; past that, the oldest entry is replaced.
const POINT_PLANS: usize = 16;

impl PointPlans {
    fn get(&self, analysis: &Arc<Analysis>, map: &Arc<ShardMap>) -> Option<Arc<PointPlan>> {
        let mut entries = self.0.borrow_mut();
        if let Some(e) = entries
            .iter()
            .find(|e| Arc::ptr_eq(&e.analysis, analysis) && Arc::ptr_eq(&e.map, map))
        {
            return e.plan.clone();
        }
        let plan = router::compile_point(analysis, map).map(Arc::new);
        let entry = PointEntry {
            analysis: analysis.clone(),
            map: map.clone(),
            plan: plan.clone(),
        };
        if entries.len() < POINT_PLANS {
            entries.push(entry);
        } else {
            // Newest first: the oldest (last) moves to the front and is
            // overwritten.
            entries.rotate_right(1);
            entries[0] = entry;
        }
        plan
    }
}

struct Memoized {
    // Kept alive (not just their addresses), so identity is exact.
    analysis: Arc<Analysis>,
    map: Arc<crate::router::ShardMap>,
    sharding_key: Option<String>,
    /// 'Q' with the query text, or 'B' with the statement's text, its
    /// parameter types and the Bind's parameters.
    kind: u8,
    explain: bool,
    sql: String,
    types: Vec<i32>,
    bind: Vec<u8>,
    planned: Planned,
}

impl Memoized {
    fn matches(&self, inputs: &PlanInputs) -> bool {
        Arc::ptr_eq(&self.analysis, inputs.analysis)
            && Arc::ptr_eq(&self.map, inputs.map)
            && self.kind == inputs.kind
            && self.explain == inputs.explain
            && self.sharding_key.as_deref() == inputs.sharding_key
            && self.sql == inputs.sql
            && self.types == inputs.types
            && self.bind == inputs.bind
    }
}

/// What a plan is made from, borrowed.
struct PlanInputs<'a> {
    analysis: &'a Arc<Analysis>,
    map: &'a Arc<crate::router::ShardMap>,
    sharding_key: Option<&'a str>,
    kind: u8,
    explain: bool,
    sql: &'a str,
    types: &'a [i32],
    bind: &'a [u8],
}

/// The unnamed statement's text and declared types for a Bind's keys: a
/// Parse body read only if the key needs them (a literal key, a binary
/// parameter), or a text already read.
pub(super) enum UnnamedText<'a> {
    None,
    Parse(&'a [u8], OnceCell<Option<(&'a str, Vec<i32>)>>),
    Read(&'a str, &'a [i32]),
}

impl<'a> UnnamedText<'a> {
    pub(super) fn parse(body: &'a [u8]) -> UnnamedText<'a> {
        UnnamedText::Parse(body, OnceCell::new())
    }

    fn get(&self) -> Option<(&str, &[i32])> {
        match self {
            UnnamedText::None => None,
            UnnamedText::Read(sql, types) => Some((sql, types)),
            UnnamedText::Parse(body, parsed) => parsed
                .get_or_init(|| parse_parse(body).ok().map(|p| (p.sql, p.param_types)))
                .as_ref()
                .map(|(sql, types)| (*sql, types.as_slice())),
        }
    }
}

impl PlanMemo {
    /// The plan for `inputs`: the remembered one when they are the same.
    fn plan(&self, inputs: PlanInputs, plan: impl FnOnce() -> Planned) -> Planned {
        if let Some(m) = self.last.borrow().as_ref().filter(|m| m.matches(&inputs)) {
            return m.planned.clone();
        }
        let planned = plan();
        let mut slot = self.last.borrow_mut();
        if planned.is_err() {
            // Refusals are rare, and some depend on what the router has
            // learnt since (a table's columns): planned afresh each time.
            *slot = None;
            return planned;
        }
        let m = slot.get_or_insert_with(|| Memoized {
            analysis: inputs.analysis.clone(),
            map: inputs.map.clone(),
            sharding_key: None,
            kind: 0,
            explain: false,
            sql: String::new(),
            types: Vec::new(),
            bind: Vec::new(),
            planned: Ok(None),
        });
        m.analysis = inputs.analysis.clone();
        m.map = inputs.map.clone();
        m.kind = inputs.kind;
        m.explain = inputs.explain;
        m.sharding_key = inputs.sharding_key.map(str::to_string);
        m.sql.clear();
        m.sql.push_str(inputs.sql);
        m.types.clear();
        m.types.extend_from_slice(inputs.types);
        m.bind.clear();
        m.bind.extend_from_slice(inputs.bind);
        m.planned = planned.clone();
        planned
    }
}

/// A batch the routing planned whole, up to and including its Sync (or a
/// Query), and found to fit one shard: where it ends in the client's stream,
/// that shard, and what its plans depended on. The policy guard does not
/// plan its statements a second time as they are forwarded (an extended
/// batch's Bind arrives "mid-batch", after its Parse went out): their plans
/// are the routing's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct VettedBatch {
    end: u64,
    shard: usize,
    params_version: u64,
    /// The shard map's address (identity while the batch is forwarded: a
    /// reload is taken only between units of work).
    map: usize,
}

impl Session {
    /// Counts bytes read into the client buffer (see `client_bytes_in`).
    pub(super) fn note_client_read(&mut self, n: usize) {
        self.client_bytes_in += n as u64;
    }

    /// Where the front of the client buffer is in the client's stream.
    pub(super) fn front_offset(&self) -> u64 {
        self.client_bytes_in - self.cbuf.len() as u64
    }

    /// Remembers that the first `scanned` bytes of the buffer, a whole batch,
    /// were planned by the routing and fit `shard`.
    pub(super) fn vet_batch(&self, scanned: usize, shard: usize) {
        let Some(map) = self.shard_map.as_ref() else {
            return;
        };
        self.vetted.set(Some(VettedBatch {
            end: self.front_offset() + scanned as u64,
            shard,
            params_version: self.params.version(),
            map: Arc::as_ptr(map) as usize,
        }));
    }

    /// Whether the unit at the front (`len` bytes) lies in the batch the
    /// routing planned for `shard`, with nothing its plans depend on changed.
    fn in_vetted_batch(&self, len: usize, shard: usize, map: &Arc<ShardMap>) -> bool {
        self.vetted.get().is_some_and(|v| {
            v.shard == shard
                && v.map == Arc::as_ptr(map) as usize
                && v.params_version == self.params.version()
                && self.front_offset() + len as u64 <= v.end
        })
    }

    /// The shard a simple query's keys need (`None`: no sharded table, or
    /// a hint or `SET pgrouter.shard` decides).
    pub(super) fn plan_query(&self, analysis: &Arc<Analysis>, body: &[u8]) -> Planned {
        self.plan_query_as(analysis, body, false)
    }

    /// [`Self::plan_query`], with the reason spelt out when `explain`
    /// (EXPLAIN (ROUTE), error messages).
    pub(super) fn plan_query_as(
        &self,
        analysis: &Arc<Analysis>,
        body: &[u8],
        explain: bool,
    ) -> Planned {
        let Some(map) = self.shard_map.as_ref() else {
            return Ok(None);
        };
        if self.shard_hinted(analysis) {
            return Ok(None);
        }
        if let TempRoute::Shard(shard) = self.temps.route(analysis)? {
            return Ok(Some(ShardChoice::one(shard, "temporary table")));
        }
        let key = self.sharding_key(analysis);
        // `EXECUTE name(...)` of a SQL-level PREPARE: its values are in the
        // EXECUTE's text, where the prepared statement's keys are not.
        let prepared = self.query_analysis(analysis.clone());
        if !Arc::ptr_eq(&prepared, analysis)
            && prepared.tables.iter().any(|t| map.table(t).is_some())
        {
            let sql = parse_query(body).ok();
            return self.plan_execute(analysis, sql, map, key, explain);
        }
        if let Some(encoding) = self.foreign_encoding() {
            // Neither the point plans nor the memo know the encoding.
            let Ok(sql) = parse_query(body) else {
                return Ok(None);
            };
            let values = Values::Text(sql);
            return router::plan_shard_encoded(
                analysis,
                &values,
                map,
                key,
                explain,
                Some(encoding),
            );
        }
        let known = |index| self.memo.borrow().literal_token(body, index);
        let text = PointValues::Text {
            sql: &|| parse_query(body).ok(),
            known: &known,
        };
        if let Some(shard) = self.point_shard(analysis, map, key, explain, &text) {
            return Ok(Some(ShardChoice::one(shard, String::new())));
        }
        let Ok(sql) = parse_query(body) else {
            return Ok(None);
        };
        let inputs = PlanInputs {
            analysis,
            map,
            sharding_key: key,
            kind: b'Q',
            explain,
            sql,
            types: &[],
            bind: &[],
        };
        self.plan_memo.plan(inputs, || {
            router::plan_shard(analysis, &Values::Text(sql), map, key, explain)
        })
    }

    /// The shard a Bind's execution needs. `unnamed` is the Parse of the
    /// Bind's statement in the same batch (its text and declared types),
    /// when there is one.
    pub(super) fn plan_bind(
        &self,
        analysis: &Arc<Analysis>,
        bind: &BindNames,
        unnamed: &UnnamedText,
    ) -> Planned {
        self.plan_bind_as(analysis, bind, unnamed, false)
    }

    /// [`Self::plan_bind`], with the reason spelt out when `explain`.
    pub(super) fn plan_bind_as(
        &self,
        analysis: &Arc<Analysis>,
        bind: &BindNames,
        unnamed: &UnnamedText,
        explain: bool,
    ) -> Planned {
        let Some(map) = self.shard_map.as_ref() else {
            return Ok(None);
        };
        if self.shard_hinted(analysis) {
            return Ok(None);
        }
        if let TempRoute::Shard(shard) = self.temps.route(analysis)? {
            return Ok(Some(ShardChoice::one(shard, "temporary table")));
        }
        // The text the caller read (the Parse of this batch, named or
        // not), else the named statement as the session keeps it.
        let statement = || -> (&str, &[i32]) {
            if let Some(text) = unnamed.get() {
                return text;
            }
            (!bind.statement.is_empty())
                .then(|| self.statements.get(bind.statement))
                .flatten()
                .map_or(("", &[]), |s| (&s.sql, &s.param_types))
        };
        let key = self.sharding_key(analysis);
        // Neither the point plans nor the memo know the encoding: the plan
        // reads the values `rest` holds, in `encoding` (None: UTF-8).
        let plan_encoded = |rest: &[u8], encoding: Option<&str>| {
            let Some(params) = BindParams::parse(rest) else {
                return Ok(None);
            };
            let (sql, types) = statement();
            let values = Values::Bind {
                sql,
                params: &params,
                param_types: types,
            };
            router::plan_shard_encoded(analysis, &values, map, key, explain, encoding)
        };
        if let Some(codec) = self.text_codec() {
            // Text values are the client's bytes; keys hash as UTF-8.
            if let Some(rest) = crate::encoding::decode_bind_values(codec, bind.rest) {
                return plan_encoded(&rest, None);
            }
        }
        let unreadable = self.text_codec().map(|codec| codec.name);
        if let Some(encoding) = unreadable.or_else(|| self.foreign_encoding()) {
            return plan_encoded(bind.rest, Some(encoding));
        }
        let point = PointValues::Bind {
            rest: bind.rest,
            statement: &statement,
        };
        if let Some(shard) = self.point_shard(analysis, map, key, explain, &point) {
            return Ok(Some(ShardChoice::one(shard, String::new())));
        }
        let Some(params) = BindParams::parse(bind.rest) else {
            return Ok(None); // malformed: the server reports it
        };
        let (sql, types) = statement();
        let inputs = PlanInputs {
            analysis,
            map,
            sharding_key: key,
            kind: b'B',
            explain,
            sql,
            types,
            bind: bind.rest,
        };
        self.plan_memo.plan(inputs, || {
            let values = Values::Bind {
                sql,
                params: &params,
                param_types: types,
            };
            router::plan_shard(analysis, &values, map, key, explain)
        })
    }

    /// The shard of a point statement's key value (see
    /// [`router::PointPlan`]); `None`: the general planner decides.
    fn point_shard(
        &self,
        analysis: &Arc<Analysis>,
        map: &Arc<ShardMap>,
        sharding_key: Option<&str>,
        explain: bool,
        values: &PointValues,
    ) -> Option<usize> {
        if explain || sharding_key.is_some() {
            return None;
        }
        self.plan_memo.points.get(analysis, map)?.shard(values)
    }

    /// The session's `client_encoding` when it is not UTF8 and not one the
    /// router transcodes (its SQL text is UTF-8 then, see
    /// `client_encoding.rs`): text keys are then placed only when ASCII
    /// (`router::plan_shard_encoded`).
    fn foreign_encoding(&self) -> Option<&str> {
        if !self.session_routing().foreign_encoding {
            return None; // no lookup by name on every statement
        }
        if self.text_codec().is_some() {
            return None;
        }
        self.params
            .get("client_encoding")
            .filter(|e| !crate::fanout::copy_split::is_utf8(e))
    }

    /// A hint comment or `SET pgrouter.shard` overrides the keys.
    fn shard_hinted(&self, analysis: &Analysis) -> bool {
        analysis.hint.shard.is_some() || self.session_routing().has_shard_setting
    }

    /// `SET pgrouter.sharding_key`, for statements other than the router's
    /// own settings (which must stay changeable whatever the key says).
    fn sharding_key(&self, analysis: &Analysis) -> Option<&str> {
        if !self.session_routing().has_sharding_key {
            return None; // no lookup by name on every statement
        }
        let key = self.params.get("pgrouter.sharding_key")?;
        let settings_only = analysis.statements.iter().all(|s| {
            matches!(
                s.kind,
                StatementKind::Set(_)
                    | StatementKind::Reset(_)
                    | StatementKind::Show
                    | StatementKind::Discard(_)
                    | StatementKind::Deallocate { .. }
            )
        });
        (!settings_only).then_some(key)
    }

    /// With a server held for a transaction (or for the whole session in
    /// session mode, or for an extended batch that cannot move any more): a
    /// statement whose keys need another shard than the held one is refused.
    /// Checked at a Query, at an unnamed Parse (with the Bind that follows it
    /// in the buffer) and at a Bind.
    pub(super) fn held_shard_refusal(&self, tag: u8, len: usize) -> Option<Refusal> {
        // Only these carry statements or their values (checked first: this
        // runs for every client message).
        if !matches!(tag, b'Q' | b'P' | b'B') {
            let continues = tag == b'E'
                && self.unnamed_portal_suspended_on_shards
                && self.flow.in_tx()
                && self.cbuf.get(5) == Some(&0);
            return continues.then(continued_portal_refusal);
        }
        let map = self.shard_map.as_ref()?;
        let held = self.server.as_ref()?;
        // Mid-batch, a Bind that cannot move the batch (something ran in it
        // already, or answers are still due) must fit the held shard too;
        // otherwise `unsynced_batch_moves` moves it.
        let mid_batch =
            self.flow.unsynced() && (self.flow.executed_unsynced() || self.answers_due());
        // A transaction moves between shards' legs at its statements'
        // boundaries (`shards::tx_legs`), and a session between the
        // connections it keeps per shard (`kept.rs`), in either pool mode.
        if !mid_batch {
            return None;
        }
        if self.in_vetted_batch(len, held.shard, map) {
            return None;
        }
        let planned = self.held_batch_plan(tag, len, false)?;
        // The refusals name the keys: planned again, spelt out (rare).
        let reason = || {
            self.held_batch_plan(tag, len, true)
                .and_then(|p| p.ok().flatten())
                .map(|c| c.reason)
                .unwrap_or_default()
        };
        match planned {
            Err(refusal) => Some(refusal),
            // What is unsupported here is moving a batch that has started
            // running on the held shard (transactions do span shards, with
            // two-phase commit, at statement boundaries): say so.
            Ok(Some(choice)) if choice.many.is_some() => Some(Refusal {
                sqlstate: "0A000",
                message: format!(
                    "pgrouter: this statement needs several shards ({}), which is not supported after other \
                     statements of the same batch (pipeline) ran on shard {}; HINT: send it in a batch of its \
                     own (a Sync before it)",
                    reason(),
                    held.shard
                ),
            }),
            Ok(Some(choice)) if choice.shard != held.shard => Some(Refusal {
                sqlstate: "0A000",
                message: format!(
                    "pgrouter: this batch (pipeline) ran on shard {} already, but the statement's shard key \
                     ({}) is on shard {}: a batch cannot move to another shard once part of it has run; \
                     HINT: end the batch (Sync) before statements on another shard",
                    held.shard,
                    reason(),
                    choice.shard
                ),
            }),
            Ok(_) => None,
        }
    }

    /// The plan of the unit at the front of the buffer as the policy guard
    /// checks it (a Query, an unnamed Parse with its Bind, or a Bind).
    fn held_batch_plan(&self, tag: u8, len: usize, explain: bool) -> Option<Planned> {
        let body = self.cbuf.get(5..len)?;
        let planned = match tag {
            b'Q' => {
                let analysis = self.message_analysis(tag, 0, len).ok()?;
                self.plan_query_as(&analysis, body, explain)
            }
            b'P' if body.first() == Some(&0) => {
                let analysis = self.message_analysis(tag, 0, len).ok()?;
                let unnamed = UnnamedText::parse(body);
                let mut at = len;
                loop {
                    let frame = next_frame(self.cbuf.get(at..)?, self.max_message).ok()??;
                    let fbody = frame.body(&self.cbuf[at..]);
                    at += frame.total_len;
                    match frame.tag {
                        b'B' => {
                            let b = parse_bind_names(fbody).ok()?;
                            if !b.statement.is_empty() {
                                return None;
                            }
                            break self.plan_bind_as(&analysis, &b, &unnamed, explain);
                        }
                        b'S' | b'P' => return None,
                        _ => {}
                    }
                }
            }
            b'B' => {
                let b = parse_bind_names(body).ok()?;
                let analysis = self.statement_analysis(b.statement, &self.unnamed)?;
                // The unnamed statement's text and types, as routing saw
                // them (so its plan is reused).
                let unnamed = if b.statement.is_empty() {
                    UnnamedText::parse(self.unnamed_parse.get(5..).unwrap_or(&[]))
                } else {
                    UnnamedText::None
                };
                match self.plan_bind_as(&analysis, &b, &unnamed, explain) {
                    // The unnamed statement's text was checked with its Parse
                    // (this Bind's literals are that text's, not seen here).
                    Err(r)
                        if b.statement.is_empty()
                            && r.message.starts_with(router::UNREADABLE_LITERAL) =>
                    {
                        return None;
                    }
                    planned => planned,
                }
            }
            _ => return None,
        };
        Some(planned)
    }
}

/// An Execute that would continue the unnamed portal a merged read on
/// several shards left suspended (asyncpg's `fetchrow` asked for one row of
/// more): the shards ran it to the end, so the rest cannot be read.
fn continued_portal_refusal() -> Refusal {
    Refusal {
        sqlstate: "0A000",
        message: "pgrouter: reading the rest of a result on several shards in parts (another Execute \
                  of a portal suspended after its row limit) is not supported; HINT: fetch all rows \
                  at once, or add the shard key"
            .to_string(),
    }
}
