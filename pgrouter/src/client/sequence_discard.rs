//! The `DISCARD SEQUENCES` owed on a connection another client wrote on
//! (issue 16): `lastval()`/`currval()` after a serial default the router
//! cannot see must not show the next client the previous one's values.
//! The debt is set at checkout (`outbound.rs` `attach`) and paid here,
//! before the first statement of the new client that could read them.

use super::error::SessionEnd;
use super::expect::{GuardFor, Reply};
use super::session::Session;
use crate::protocol::frontend::{self, parse_bind_names, parse_parse, parse_query};

/// Where the owed `DISCARD SEQUENCES` goes (see `Session::discard_sequences`).
enum DiscardWay {
    /// In front of the message, in its transaction.
    Pipelined,
    /// As a query of its own before the message.
    Alone,
    /// Not before this message: it cannot read sequence state.
    Later,
}

/// The way for a message of `analysis`; `sql` gives its text, read only
/// for statements that may run outside transactions. `at_start`: no
/// extended batch is open, so a query of its own can go first.
fn discard_way<'a>(
    analysis: &pgrouter_parser::Analysis,
    at_start: bool,
    sql: impl FnOnce() -> Result<&'a str, SessionEnd>,
) -> Result<DiscardWay, SessionEnd> {
    use crate::router::{may_run_outside_transactions, runs_outside_transactions};
    if may_run_outside_transactions(analysis) && {
        let sql = sql()?;
        runs_outside_transactions(analysis, sql) || is_cluster(sql)
    } {
        // Refused in a pipeline: mid-batch PostgreSQL refuses it anyway.
        return Ok(if at_start {
            DiscardWay::Alone
        } else {
            DiscardWay::Later
        });
    }
    let takes = |s: &pgrouter_parser::StatementInfo| takes_snapshot(&s.kind);
    Ok(match analysis.statements.first() {
        Some(first) if takes(first) => DiscardWay::Pipelined,
        _ if analysis.statements.iter().any(takes) => {
            if at_start {
                DiscardWay::Alone
            } else {
                DiscardWay::Pipelined
            }
        }
        _ => DiscardWay::Later,
    })
}

/// CLUSTER of a partitioned table runs each partition in a transaction of
/// its own, so PostgreSQL refuses it in a pipeline; whether the table is
/// partitioned is not in the text, so no CLUSTER shares one.
fn is_cluster(sql: &str) -> bool {
    sql.trim_start()
        .get(..7)
        .is_some_and(|w| w.eq_ignore_ascii_case("cluster"))
}

/// Statements PostgreSQL runs without a snapshot (`PlannedStmtRequiresSnapshot`):
/// transaction control, SET/RESET/SHOW, LOCK, FETCH, LISTEN/NOTIFY/UNLISTEN.
/// None of them can read sequence state.
fn takes_snapshot(kind: &pgrouter_parser::StatementKind) -> bool {
    use pgrouter_parser::StatementKind as K;
    !matches!(
        kind,
        K::Transaction(_)
            | K::Set(_)
            | K::Reset(_)
            | K::Show
            | K::Lock
            | K::Fetch
            | K::Listen { .. }
            | K::Notify { .. }
            | K::Unlisten { .. }
    )
}

/// The portal the pipelined `DISCARD SEQUENCES` runs in: named, and closed
/// right after, so that it never replaces a portal the client bound.
const DISCARD_PORTAL: &str = "pgrouter_discard_sequences";

/// `DISCARD SEQUENCES` pipelined (no Sync): Parse of the unnamed statement,
/// Bind to [`DISCARD_PORTAL`], Execute, Close of the portal. Made once.
fn discard_sequences_pipelined() -> &'static [u8] {
    static MADE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    MADE.get_or_init(|| {
        let mut out = bytes::BytesMut::new();
        frontend::write_parse(&mut out, "", "DISCARD SEQUENCES", &[]);
        frontend::write_bind(&mut out, DISCARD_PORTAL, "", &[0, 0, 0, 0, 0, 0]);
        frontend::write_execute(&mut out, DISCARD_PORTAL);
        frontend::write_target(&mut out, b'C', b'P', DISCARD_PORTAL);
        out.to_vec()
    })
}

impl Session {
    /// Runs `DISCARD SEQUENCES`, owed on a connection another client wrote
    /// on, before the first of this client's statements that could read
    /// sequence state (`lastval()`, `currval()`, directly or in a function).
    ///
    /// It takes a snapshot, so in the client's transaction it must not come
    /// before a statement that needs none yet (`SET TRANSACTION ISOLATION
    /// LEVEL` after `BEGIN` fails once a query ran). So:
    /// - a message whose first statement takes a snapshot anyway gets it
    ///   pipelined in front, in the same transaction (no Sync: the server
    ///   makes no transaction, ReadyForQuery or flush of its own for it;
    ///   should it fail or be skipped, the statement fails with that error
    ///   and the debt stays);
    /// - statements that take none (`BEGIN`, `SET`, `SHOW`, `LISTEN`, ...)
    ///   cannot read sequence state: the debt waits for a later statement
    ///   (or the next client of the connection);
    /// - at the start of a batch, a query string whose first statement takes
    ///   no snapshot but a later one does, a statement PostgreSQL refuses in
    ///   a pipeline, or a function call get it as a query of its own first;
    /// - nothing is sent in a failed transaction, which reads nothing.
    pub(super) fn discard_sequences(&mut self, tag: u8, body: &[u8]) -> Result<(), SessionEnd> {
        let at_start = self.flow.batch_start();
        let way = match tag {
            b'Q' => discard_way(&*self.analyze_query(body)?, at_start, || {
                Ok(parse_query(body)?)
            })?,
            b'P' => discard_way(&*self.analyze_parse(body)?, at_start, || {
                Ok(parse_parse(body)?.sql)
            })?,
            b'B' => {
                let b = parse_bind_names(body)?;
                if b.statement.is_empty() {
                    match self.unnamed.clone() {
                        Some(a) => {
                            let parse = &self.unnamed_parse;
                            discard_way(&a, at_start, || {
                                Ok(parse_parse(parse.get(5..).unwrap_or(&[]))?.sql)
                            })?
                        }
                        None => DiscardWay::Later, // the Bind fails
                    }
                } else {
                    match self.statements.get(b.statement) {
                        Some(s) => discard_way(&s.analysis, at_start, || Ok(&s.sql))?,
                        None => DiscardWay::Later, // the Bind fails
                    }
                }
            }
            // A function call may read sequence state.
            b'F' if at_start => DiscardWay::Alone,
            b'F' => DiscardWay::Pipelined,
            // Describe, Execute, Close: their statement was seen at its
            // Parse or Bind.
            _ => DiscardWay::Later,
        };
        let skipping = self.expect().server_skipping();
        let Some(held) = self.server.as_mut() else {
            return Ok(());
        };
        let failed_tx = held.conn.tx_status == b'E' || skipping;
        match way {
            DiscardWay::Later => {}
            _ if failed_tx => {}
            DiscardWay::Pipelined => {
                held.conn
                    .write_buf
                    .extend_from_slice(discard_sequences_pipelined());
                held.conn.discard_due = false;
                held.expect.swallow(Reply::Parse(None));
                held.expect.swallow(Reply::Bind);
                held.expect.guard(Reply::Execute, GuardFor::Sequences);
                held.expect.swallow(Reply::Close);
                self.unnamed_here = false; // the unnamed statement is replaced
            }
            DiscardWay::Alone => {
                held.queue_own_query("DISCARD SEQUENCES");
                held.conn.discard_due = false;
            }
        }
        Ok(())
    }
}
