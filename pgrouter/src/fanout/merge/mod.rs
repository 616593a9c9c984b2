//! The streaming merger of a read that ran on several shards: it takes
//! each shard's RowDescription, DataRows and CommandComplete and produces
//! what the client would have got from one server holding all the rows.
//! No I/O: the executor feeds messages, asks which shards to read next
//! ([`Merger::wanted`]) and drains the client's messages.
//!
//! - Plain rows are passed through as they come.
//! - ORDER BY is a k-way merge: each shard's rows are already sorted, so
//!   only one head row per shard is held (memory does not grow with the
//!   result) and the executor reads only the shards whose head is missing.
//! - Aggregates and GROUP BY combine partial groups (memory = the groups),
//!   emitted once every shard is complete, sorted, cut by OFFSET/LIMIT.
//!
//! LIMIT counts merged rows; once met, [`Merger::is_done`] tells the
//! executor to stop reading the others.
//!
//! # The executor's side
//! 1. `pgrouter_parser::fanout::plan_read(sql)`: the shard SQL and the
//!    [`MergeSpec`] (cacheable per statement text); an `Unsupported` is a
//!    0A000 error (`Unsupported::parts` gives message and hint).
//! 2. Per execution, [`MergeSpec::resolve_params`] with the Bind's values
//!    as text (`MergeSpec::params` lists the numbers it needs).
//! 3. Every shard gets the shard SQL with the client's parameters and
//!    [`shard_result_formats`]; every shard must send a RowDescription
//!    (Describe the portal), the merger needs the column types.
//!    A client's Describe is answered with [`client_row_description`].
//! 4. Feed each shard's 'T', 'D', 'C' and 'I' to [`Merger::feed`], read
//!    next from [`Merger::wanted`] shards, [`Merger::drain`] into the
//!    client's buffer ([`Merger::feed_rows`] takes a plain union's runs
//!    of DataRows straight from a read buffer); ErrorResponse and
//!    ReadyForQuery stay the executor's. Once [`Merger::is_done`], cancel or drain the rest.
//!    A [`MergeError`] ends the statement with its SQLSTATE.

mod agg;
mod datetime;
mod floatfmt;
mod having;
mod numeric;
mod output;
mod pass_through;
mod row;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_agg;
#[cfg(test)]
mod tests_pass_through;
#[cfg(test)]
mod tests_pg;
#[cfg(test)]
mod tests_portal_rows;
#[cfg(test)]
mod tests_sort;
#[cfg(test)]
mod tests_values;
mod types;

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::BytesMut;
use pgrouter_parser::fanout::{Col, Count, MergeSpec, SortKey};

use agg::Acc;
pub use pass_through::RowsFed;
use row::{Description, Row};
use types::{ColType, Key};

/// Session facts the merge depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeContext {
    /// The database collation orders text by bytes (C, POSIX, C.UTF-8):
    /// text sort keys and text min/max can be merged without `COLLATE "C"`.
    pub text_orders_by_bytes: bool,
    /// DateStyle is ISO: date/time values in text format can be read.
    pub datestyle_iso: bool,
    /// IntervalStyle is postgres: interval values in text format can be
    /// read, and sums of them written as PostgreSQL would.
    pub intervalstyle_postgres: bool,
    /// extra_float_digits is 1 or more: float values in text format are
    /// exact (shortest round-trip digits), so partial sums read from the
    /// shards are the shards' values and merged ones can be written as
    /// PostgreSQL would. Below 1 PostgreSQL rounds to 15 (float8) or 6
    /// (float4) digits plus the setting.
    pub float_digits_exact: bool,
    /// Send the client a RowDescription (false when the client did not
    /// Describe the portal; the executor still makes every shard send one,
    /// since the merger needs the column types).
    pub send_row_description: bool,
}

/// What a shard said of one result column's collation (see
/// `pgrouter_parser::fanout::CollationUse`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collation {
    /// Orders by bytes (C, POSIX, C.UTF-8, builtin): merged by bytes exactly.
    Bytes,
    /// Another deterministic collation: equal means byte-equal, but the
    /// order is the locale's, which the router cannot reproduce.
    Deterministic,
    /// Nondeterministic, or unknown: neither order nor equality by bytes.
    Other,
}

/// Why a merge failed: the ErrorResponse the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeError {
    pub sqlstate: &'static str,
    pub message: String,
}

impl MergeError {
    /// 0A000, said to come from the router (as its other refusals are).
    pub(crate) fn unsupported(message: String) -> MergeError {
        let message = match message.starts_with("pgrouter: ") {
            true => message,
            false => format!("pgrouter: {message}"),
        };
        MergeError {
            sqlstate: "0A000",
            message,
        }
    }
    pub(crate) fn internal(message: String) -> MergeError {
        MergeError {
            sqlstate: "XX000",
            message,
        }
    }
}

impl std::fmt::Display for MergeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for MergeError {}

/// The result-column format codes to Bind on the shards for the client's
/// codes: none or one code applies to every column already; per-column
/// codes get text codes appended for the `hidden` columns (the merger
/// reads either format).
pub fn shard_result_formats(client: &[i16], hidden: usize) -> Vec<i16> {
    let mut codes = client.to_vec();
    if codes.len() > 1 {
        codes.extend(std::iter::repeat_n(0, hidden));
    }
    codes
}

/// The client's RowDescription for a shard's one (a Describe of the
/// statement or portal answered from one shard): the hidden columns cut.
pub fn client_row_description(
    body: &[u8],
    hidden: usize,
    out: &mut BytesMut,
) -> Result<(), MergeError> {
    let desc = Description::parse(body)?;
    let visible = desc.fields.len().checked_sub(hidden).ok_or_else(|| {
        MergeError::internal("the shard's result does not have the planned columns".into())
    })?;
    desc.write(visible, out);
    Ok(())
}

/// The columns, resolved from the first RowDescription.
struct Layout {
    desc: Description,
    types: Vec<ColType>,
    visible: usize,
    hidden: usize,
    /// Sort keys as (column index, key).
    sort: Vec<(usize, SortKey)>,
}

impl Layout {
    fn resolve(&self, c: Col) -> usize {
        c.index(self.types.len(), self.hidden)
    }
}

/// A row waiting in a shard's queue, with its sort keys read.
struct Head {
    row: Row,
    keys: Vec<Option<Key>>,
}

/// The groups of an aggregating merge, in order of first appearance.
#[derive(Default)]
struct Groups {
    index: HashMap<Vec<Option<Key>>, usize>,
    accs: Vec<Vec<Acc>>,
}

pub struct Merger {
    spec: MergeSpec,
    ctx: MergeContext,
    complete: Vec<bool>,
    empty_query: Vec<bool>,
    layout: Option<Layout>,
    queues: Vec<VecDeque<Head>>,
    groups: Groups,
    /// DISTINCT: the visible values already sent (or skipped by OFFSET).
    seen: HashSet<Vec<Option<Key>>>,
    pending: BytesMut,
    limit: Option<u64>,
    /// The client's Execute row limit (0 = all rows): when this many rows
    /// went out, the answer ends in PortalSuspended, as PostgreSQL's does.
    portal_rows: Option<u64>,
    offset: u64,
    skipped: u64,
    sent: u64,
    finished: bool,
    /// An error found before any message (unresolved parameters, negative LIMIT).
    failure: Option<MergeError>,
    /// The collations of the columns the shards were asked about
    /// ([`Merger::with_collations`]); `None`: the database's default
    /// (`MergeContext::text_orders_by_bytes`) is assumed for every column.
    collations: Option<HashMap<Col, Collation>>,
    /// The columns of enum types ([`Merger::with_enum_columns`]): keys
    /// compared by their labels.
    enum_columns: Vec<Col>,
    /// Their OIDs, in the first description that arrived (each shard has
    /// its own).
    enums: Vec<u32>,
}

impl Merger {
    /// A merger of `shards` shards' results under `spec` (with parameters
    /// already resolved: [`MergeSpec::resolve_params`]).
    pub fn new(spec: MergeSpec, shards: usize, ctx: MergeContext) -> Merger {
        let mut failure = None;
        let mut count = |c: &Option<Count>, state: &'static str, what: &str| match c {
            None => None,
            Some(Count::Const(n)) if *n < 0 => {
                failure.get_or_insert(MergeError {
                    sqlstate: state,
                    message: format!("{what} must not be negative"),
                });
                None
            }
            Some(Count::Const(n)) => Some(*n as u64),
            Some(Count::Param(n)) => {
                failure.get_or_insert(MergeError::internal(format!(
                    "{what} parameter ${n} was not resolved"
                )));
                None
            }
        };
        let limit = count(&spec.limit, "2201W", "LIMIT");
        let offset = count(&spec.offset, "2201X", "OFFSET").unwrap_or(0);
        if let Some(n) = spec.unreadable_params().first() {
            failure.get_or_insert(MergeError::unsupported(format!(
                "HAVING parameter ${n} in binary format under a cast across shards (its type is \
                 unknown to the router); hint: declare the parameter's type or send it in text format"
            )));
        }
        if let Some(n) = spec.params().first() {
            failure.get_or_insert(MergeError::internal(format!(
                "parameter ${n} was not resolved"
            )));
        }
        Merger {
            spec,
            ctx,
            complete: vec![false; shards],
            empty_query: vec![false; shards],
            layout: None,
            queues: (0..shards).map(|_| VecDeque::new()).collect(),
            groups: Groups::default(),
            seen: HashSet::new(),
            pending: BytesMut::new(),
            limit,
            portal_rows: None,
            offset,
            skipped: 0,
            sent: 0,
            finished: false,
            failure,
            collations: None,
            enum_columns: Vec::new(),
            enums: Vec::new(),
        }
    }

    /// The result columns of enum types (user types are refused as
    /// GROUP BY / DISTINCT keys unless named here). By column, not OID:
    /// an enum's OID differs from shard to shard.
    pub fn with_enum_columns(mut self, columns: Vec<Col>) -> Merger {
        self.enum_columns = columns;
        self
    }

    /// The collations of the result columns (as a shard reported them);
    /// a column missing here is taken as [`Collation::Other`].
    pub fn with_collations(mut self, collations: HashMap<Col, Collation>) -> Merger {
        self.collations = Some(collations);
        self
    }

    /// The collation of column `col` for a value compared by order (`order`)
    /// or for equality: whether comparing its bytes is exact.
    pub(crate) fn bytes_exact(&self, col: Col, order: bool) -> bool {
        match &self.collations {
            None => !order || self.ctx.text_orders_by_bytes,
            Some(m) => match m.get(&col) {
                Some(Collation::Bytes) => true,
                Some(Collation::Deterministic) => !order,
                Some(Collation::Other) | None => false,
            },
        }
    }

    /// An Execute that asked for at most `rows` rows (`rows` > 0): the
    /// merge stops there and ends in PortalSuspended instead of
    /// CommandComplete when that many went out (PostgreSQL does so even
    /// when no row is left).
    pub fn with_portal_rows(mut self, rows: u64) -> Merger {
        self.portal_rows = (rows > 0).then_some(rows);
        self
    }

    fn sorted(&self) -> bool {
        self.spec.aggregate.is_none() && !self.spec.order_by.is_empty()
    }

    /// One message of shard `shard`: 'T', 'D', 'C' or 'I'.
    pub fn feed(&mut self, shard: usize, tag: u8, body: &[u8]) -> Result<(), MergeError> {
        if let Some(e) = &self.failure {
            return Err(e.clone());
        }
        if shard >= self.complete.len() {
            return Err(MergeError::internal(format!(
                "message from unknown shard {shard}"
            )));
        }
        match tag {
            b'T' => self.describe(body),
            b'D' => {
                if self.finished || self.limit_met() {
                    return Ok(());
                }
                let Some(layout) = &self.layout else {
                    return Err(MergeError::internal(
                        "a shard sent rows without a RowDescription".into(),
                    ));
                };
                if self.spec.aggregate.is_none()
                    && self.spec.order_by.is_empty()
                    && !self.spec.distinct
                    && layout.hidden == 0
                {
                    // Plain union: the row goes out as it came.
                    row::check(body, layout.types.len())?;
                    return self.emit_body(body);
                }
                let row = Row::parse(body, layout.types.len())?;
                if self.spec.aggregate.is_some() {
                    self.accumulate(&row)
                } else if self.sorted() {
                    let keys = output::sort_keys(layout, &row)?;
                    self.queues[shard].push_back(Head { row, keys });
                    Ok(())
                } else {
                    self.emit(&row)
                }
            }
            b'C' => {
                self.complete[shard] = true;
                Ok(())
            }
            b'I' => {
                self.complete[shard] = true;
                self.empty_query[shard] = true;
                Ok(())
            }
            other => Err(MergeError::internal(format!(
                "unexpected message '{}' from a shard",
                other as char
            ))),
        }
    }

    /// Shards to read from before more can be drained: for ORDER BY the
    /// unfinished shards without a head row, otherwise every unfinished one.
    pub fn wanted(&self) -> Vec<usize> {
        (0..self.complete.len())
            .filter(|&i| self.wants(i))
            .collect()
    }

    /// Whether shard `shard` is one of [`Merger::wanted`] (no allocation).
    pub fn wants(&self, shard: usize) -> bool {
        // After LIMIT is met only a RowDescription is still needed (LIMIT 0).
        if self.is_done() || (self.limit_met() && self.layout.is_some()) {
            return false;
        }
        let sorted = self.sorted() && self.layout.is_some();
        shard < self.complete.len()
            && !self.complete[shard]
            && (!sorted || self.queues[shard].is_empty())
    }

    /// The LIMIT is met or every shard completed, and the CommandComplete
    /// has been produced: nothing more is needed from any shard.
    pub fn is_done(&self) -> bool {
        self.finished
    }

    fn limit_met(&self) -> bool {
        self.limit.is_some_and(|l| self.sent >= l) || self.portal_full()
    }

    /// The answer ended in PortalSuspended (see [`Merger::with_portal_rows`]).
    pub fn suspended(&self) -> bool {
        self.finished && self.portal_full()
    }

    fn portal_full(&self) -> bool {
        self.portal_rows.is_some_and(|n| self.sent >= n)
    }

    fn all_complete(&self) -> bool {
        self.complete.iter().all(|&c| c)
    }

    /// Appends the client's messages that are ready: the RowDescription,
    /// DataRows, and at the end one CommandComplete `SELECT n`. An error
    /// (e.g. a merged sum out of range) ends the merge: the executor sends
    /// it as an ErrorResponse after what was drained.
    pub fn drain(&mut self, out: &mut BytesMut) -> Result<(), MergeError> {
        if let Some(e) = &self.failure {
            return Err(e.clone());
        }
        let step = if self.sorted() && self.layout.is_some() {
            self.merge_heads()
        } else if !self.finished && self.spec.aggregate.is_some() && self.all_complete() {
            self.emit_groups()
        } else {
            Ok(())
        };
        if let Err(e) = step {
            out.unsplit(self.pending.split());
            self.failure = Some(e.clone());
            return Err(e);
        }
        out.unsplit(self.pending.split());
        let ready = self.all_complete() || (self.limit_met() && self.layout.is_some());
        if !self.finished && ready {
            self.finished = true;
            if self.layout.is_none()
                && self.empty_query.iter().all(|&e| e)
                && !self.empty_query.is_empty()
            {
                crate::protocol::backend::put_message(out, b'I', |_| {});
            } else if self.portal_full() {
                crate::protocol::backend::put_message(out, b's', |_| {});
            } else {
                crate::protocol::backend::command_complete(out, &format!("SELECT {}", self.sent));
            }
        }
        Ok(())
    }
}
