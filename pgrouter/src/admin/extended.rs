//! The admin console's extended query protocol (Parse, Bind, Describe,
//! Execute, Close). psql and psycopg send commands as simple queries, but
//! asyncpg's `fetch("SHOW POOLS")` (and JDBC, node-postgres with a prepared
//! query) always prepares: Parse + Describe, then Bind + Execute. Admin
//! commands take no parameters, so a statement is just a parsed command;
//! one with parameters is refused as before (use the simple query protocol).

use std::collections::HashMap;

use bytes::BytesMut;

use super::command::{split_statements, Command};
use super::{parse_or_explain, run_command, show_table, wire, AdminContext, AdminEnd};
use crate::protocol::backend::{close_complete, parse_complete, put_message};
use crate::protocol::frontend::{parse_bind_names, parse_parse, parse_target};
use crate::protocol::reader::Reader;
use crate::protocol::ProtocolError;

/// What one of the client's extended-protocol messages led to.
pub(super) enum Step {
    /// Answered (or nothing to answer); go on.
    Done,
    /// An ERROR was written: skip the client's messages up to Sync.
    Failed,
    /// SHUTDOWN was executed and answered.
    Shutdown,
}

/// Prepared statements and portals of one admin session. `None` = an
/// empty statement (answered with EmptyQueryResponse).
#[derive(Default)]
pub(super) struct Extended {
    statements: HashMap<String, Option<Command>>,
    /// Command and the Bind's result format codes.
    portals: HashMap<String, (Option<Command>, Vec<i16>)>,
}

const NO_PARAMETERS: &str =
    "admin console commands take no parameters; send them with the simple query protocol";

impl Extended {
    /// Handles one Parse/Bind/Describe/Execute/Close. A malformed message
    /// is a protocol error (the caller ends the session with 08P01).
    pub(super) async fn handle(
        &mut self,
        tag: u8,
        body: &[u8],
        ctx: &dyn AdminContext,
        out: &mut BytesMut,
    ) -> Result<Step, ProtocolError> {
        match tag {
            b'P' => {
                let msg = parse_parse(body)?;
                if !msg.param_types.is_empty() || has_placeholder(msg.sql) {
                    wire::error(out, "0A000", NO_PARAMETERS, None);
                    return Ok(Step::Failed);
                }
                let command = match split_statements(msg.sql).as_slice() {
                    [] => None,
                    [one] => match parse_or_explain(one, out) {
                        Some(c) => Some(c),
                        None => return Ok(Step::Failed),
                    },
                    _ => {
                        wire::error(
                            out,
                            "42601",
                            "cannot insert multiple commands into a prepared statement",
                            None,
                        );
                        return Ok(Step::Failed);
                    }
                };
                self.statements.insert(msg.name.to_string(), command);
                parse_complete(out);
            }
            b'B' => {
                let names = parse_bind_names(body)?;
                let Some(command) = self.statements.get(names.statement).cloned() else {
                    return Ok(missing(out, "26000", "prepared statement", names.statement));
                };
                let (params, formats) = bind_rest(names.rest)?;
                if params > 0 {
                    wire::error(out, "0A000", NO_PARAMETERS, None);
                    return Ok(Step::Failed);
                }
                self.portals
                    .insert(names.portal.to_string(), (command, formats));
                put_message(out, b'2', |_| {});
            }
            b'D' => {
                let (kind, name) = parse_target(body)?;
                let (command, formats) = if kind == b'S' {
                    let Some(command) = self.statements.get(name) else {
                        return Ok(missing(out, "26000", "prepared statement", name));
                    };
                    // ParameterDescription: no parameters.
                    put_message(out, b't', |b| b.extend_from_slice(&0i16.to_be_bytes()));
                    (command, &[][..])
                } else {
                    let Some((command, formats)) = self.portals.get(name) else {
                        return Ok(missing(out, "34000", "portal", name));
                    };
                    (command, &formats[..])
                };
                match command {
                    Some(Command::Show(what)) => {
                        let set = show_table(*what, ctx);
                        wire::row_description_in(out, &set.columns, |i| {
                            wire::format_of(formats, i)
                        });
                    }
                    // NoData: the other commands return no rows.
                    _ => put_message(out, b'n', |_| {}),
                }
            }
            b'E' => {
                let mut r = Reader::new(body);
                let portal = r.cstr()?;
                let _max_rows = r.i32()?;
                let Some((command, formats)) = self.portals.get(portal).cloned() else {
                    return Ok(missing(out, "34000", "portal", portal));
                };
                let Some(command) = command else {
                    wire::empty_query_response(out);
                    return Ok(Step::Done);
                };
                return Ok(match run_command(command, ctx, out, Some(&formats)).await {
                    Ok(Some(AdminEnd::Shutdown)) => Step::Shutdown,
                    Ok(_) => Step::Done,
                    Err(()) => Step::Failed,
                });
            }
            b'C' => {
                let (kind, name) = parse_target(body)?;
                if kind == b'S' {
                    self.statements.remove(name);
                } else {
                    self.portals.remove(name);
                }
                close_complete(out);
            }
            _ => {}
        }
        Ok(Step::Done)
    }

    /// The unnamed portal lasts until the end of the transaction (the next
    /// Sync here, as every admin command is its own transaction).
    pub(super) fn sync(&mut self) {
        self.portals.remove("");
    }
}

fn missing(out: &mut BytesMut, sqlstate: &str, what: &str, name: &str) -> Step {
    wire::error(
        out,
        sqlstate,
        &format!("{what} \"{name}\" does not exist"),
        None,
    );
    Step::Failed
}

/// `$1`, `$2`...: a parameter placeholder outside quotes (admin commands
/// have none).
fn has_placeholder(sql: &str) -> bool {
    let b = sql.as_bytes();
    b.windows(2).any(|w| w[0] == b'$' && w[1].is_ascii_digit())
}

/// A Bind's parameter count and result format codes, from what follows its
/// two names.
fn bind_rest(rest: &[u8]) -> Result<(usize, Vec<i16>), ProtocolError> {
    let mut r = Reader::new(rest);
    let n = r.i16()?;
    for _ in 0..n.max(0) {
        r.i16()?;
    }
    let params = r.i16()?.max(0) as usize;
    for _ in 0..params {
        let len = r.i32()?;
        if len > 0 {
            r.bytes(len as usize)?;
        }
    }
    let results = r.i16()?.max(0) as usize;
    let mut formats = Vec::with_capacity(results);
    for _ in 0..results {
        formats.push(r.i16()?);
    }
    r.end("Bind")?;
    Ok((params, formats))
}
