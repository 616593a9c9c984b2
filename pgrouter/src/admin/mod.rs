//! The admin console: `psql -h ... -p 6432 -U admin pgrouter`.
//!
//! After the client module has authenticated the admin user and greeted it
//! (AuthenticationOk, ParameterStatus, BackendKeyData, ReadyForQuery), it
//! hands the stream to [`run`], which answers simple-query commands with
//! real result sets until the client leaves or asks for `SHUTDOWN`. The data
//! comes from an [`AdminContext`] the router implements.

pub mod command;
mod extended;
mod tables;
#[cfg(test)]
mod tests;
pub mod wire;

use std::future::Future;
use std::pin::Pin;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use self::command::{command_list, parse, split_statements, Command, Show};
use crate::metrics::snapshot::{
    ClientSnapshot, ConfigRow, DbStats, PoolSnapshot, ReloadStatus, ServerSnapshot,
};
use crate::protocol::backend::{command_complete, error_response, ready_for_query, Severity};
use crate::protocol::frontend::parse_query;
use crate::protocol::next_frame_within;

/// A boxed `Send` future, for the trait's asynchronous commands.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Admin messages are short commands; anything bigger is not one.
pub const MAX_ADMIN_MESSAGE: usize = 1024 * 1024;

/// What the console shows and does, implemented by the router.
pub trait AdminContext: Send + Sync {
    /// Every pool in force (JWT pools under their connect_as user).
    fn pools(&self) -> Vec<PoolSnapshot>;
    fn clients(&self) -> Vec<ClientSnapshot>;
    fn servers(&self) -> Vec<ServerSnapshot>;
    /// Usually `metrics.db_stats()`.
    fn stats(&self) -> Vec<DbStats>;
    /// Effective settings. Values of keys containing "password" or
    /// "secret" are masked by the console.
    fn config(&self) -> Vec<ConfigRow>;
    /// The last reload attempt, usually `metrics.last_reload()`.
    fn last_reload(&self) -> Option<ReloadStatus> {
        None
    }
    /// Re-reads both files and applies them if valid. `Ok` says what
    /// changed (shown as a NOTICE), `Err` why nothing did.
    fn reload(&self) -> BoxFuture<'_, Result<String, String>>;
    /// Pauses one database (or all with `None`): waits for open
    /// transactions to finish, then holds new ones until RESUME.
    fn pause<'a>(&'a self, database: Option<&'a str>) -> BoxFuture<'a, Result<(), String>>;
    fn resume(&self, database: Option<&str>) -> Result<(), String>;
    /// Starts the graceful shutdown (returns at once).
    fn shutdown(&self);
}

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminEnd {
    /// The client sent Terminate or closed the connection.
    Quit,
    /// The client asked for SHUTDOWN (already started through the context,
    /// and answered).
    Shutdown,
    /// The client broke the protocol; a FATAL 08P01 was sent. Close it.
    ProtocolError,
}

/// Serves an authenticated admin client until it leaves. `buf` holds bytes
/// already read from `stream` after the startup packet.
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    mut buf: BytesMut,
    ctx: &dyn AdminContext,
) -> Result<AdminEnd, std::io::Error> {
    let mut out = BytesMut::with_capacity(4096);
    // After an extended-protocol message was refused, the rest up to Sync
    // is skipped (as PostgreSQL does after an error).
    let mut skipping_to_sync = false;
    let mut extended = extended::Extended::default();
    loop {
        let frame =
            match next_frame_within(&buf, MAX_ADMIN_MESSAGE, "the admin console's message limit") {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    if !out.is_empty() {
                        send(stream, &mut out).await?;
                    }
                    if stream.read_buf(&mut buf).await? == 0 {
                        return Ok(AdminEnd::Quit);
                    }
                    continue;
                }
                Err(e) => return fatal(stream, &mut out, e.sqlstate, &e.message).await,
            };
        let msg = buf.split_to(frame.total_len);
        let body = frame.body(&msg);
        match frame.tag {
            b'Q' => {
                skipping_to_sync = false;
                let sql = match parse_query(body) {
                    Ok(sql) => sql,
                    Err(e) => return fatal(stream, &mut out, e.sqlstate, &e.message).await,
                };
                let end = simple_query(sql, ctx, &mut out).await;
                ready_for_query(&mut out, b'I');
                send(stream, &mut out).await?;
                if end == Some(AdminEnd::Shutdown) {
                    return Ok(AdminEnd::Shutdown);
                }
            }
            b'X' => {
                send(stream, &mut out).await?;
                return Ok(AdminEnd::Quit);
            }
            b'P' | b'B' | b'D' | b'E' | b'C' => {
                if skipping_to_sync {
                    continue;
                }
                match extended.handle(frame.tag, body, ctx, &mut out).await {
                    Ok(extended::Step::Done) => {}
                    Ok(extended::Step::Failed) => skipping_to_sync = true,
                    Ok(extended::Step::Shutdown) => {
                        send(stream, &mut out).await?;
                        return Ok(AdminEnd::Shutdown);
                    }
                    Err(e) => return fatal(stream, &mut out, e.sqlstate, &e.message).await,
                }
            }
            b'H' => send(stream, &mut out).await?,
            b'S' => {
                skipping_to_sync = false;
                extended.sync();
                ready_for_query(&mut out, b'I');
                send(stream, &mut out).await?;
            }
            b'F' => {
                wire::error(
                    &mut out,
                    "0A000",
                    "admin console supports the simple query protocol only",
                    None,
                );
                ready_for_query(&mut out, b'I');
                send(stream, &mut out).await?;
            }
            // CopyData/CopyDone/CopyFail outside a COPY are ignored, as
            // PostgreSQL does.
            b'd' | b'c' | b'f' => {}
            other => {
                let message = format!("unexpected message type 0x{other:02x} on the admin console");
                return fatal(stream, &mut out, "08P01", &message).await;
            }
        }
    }
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, out: &mut BytesMut) -> std::io::Result<()> {
    stream.write_all(out).await?;
    out.clear();
    stream.flush().await
}

async fn fatal<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut BytesMut,
    sqlstate: &str,
    message: &str,
) -> Result<AdminEnd, std::io::Error> {
    error_response(out, Severity::Fatal, sqlstate, message);
    // Best effort: the peer may be gone or not reading.
    let _ = crate::timer::timeout(std::time::Duration::from_secs(1), send(stream, out)).await;
    Ok(AdminEnd::ProtocolError)
}

/// Runs each statement of one Query message; the first error ends the rest.
/// Returns `Some(Shutdown)` once SHUTDOWN was answered.
async fn simple_query(sql: &str, ctx: &dyn AdminContext, out: &mut BytesMut) -> Option<AdminEnd> {
    let statements = split_statements(sql);
    if statements.is_empty() {
        wire::empty_query_response(out);
        return None;
    }
    for statement in &statements {
        let command = match parse_or_explain(statement, out) {
            Some(c) => c,
            None => return None,
        };
        match run_command(command, ctx, out, None).await {
            Ok(None) => {}
            Ok(end) => return end,
            Err(()) => return None,
        }
    }
    None
}

/// `statement` as a command, or the error (listing the commands) written
/// to `out`.
fn parse_or_explain(statement: &str, out: &mut BytesMut) -> Option<Command> {
    match parse(statement) {
        Ok(c) => Some(c),
        Err(e) => {
            let message = format!(
                "pgrouter admin: {}; commands: {}",
                e.message,
                command_list()
            );
            wire::error(
                out,
                e.sqlstate,
                &message,
                Some("SHOW HELP describes each command."),
            );
            None
        }
    }
}

/// The result set a SHOW command answers with.
fn show_table(what: Show, ctx: &dyn AdminContext) -> wire::ResultSet {
    match what {
        Show::Pools => tables::pools(ctx.pools()),
        Show::Clients => tables::clients(ctx.clients()),
        Show::Servers => tables::servers(ctx.servers()),
        Show::Stats => tables::stats(ctx.stats()),
        Show::Config => tables::config(ctx.config(), ctx.last_reload()),
        Show::Version => tables::version(),
        Show::Help => tables::help(),
    }
}

/// Runs one command, its answer written to `out`: with `formats` `None`
/// (simple query) a SHOW's RowDescription too; with `Some` (an extended
/// protocol Execute, whose Describe sent the RowDescription) only its rows,
/// in the formats the Bind asked for. `Err` once an error was written.
async fn run_command(
    command: Command,
    ctx: &dyn AdminContext,
    out: &mut BytesMut,
    formats: Option<&[i16]>,
) -> Result<Option<AdminEnd>, ()> {
    match command {
        Command::Show(what) => {
            let set = show_table(what, ctx);
            match formats {
                None => set.write(out, "SHOW"),
                Some(formats) => {
                    for row in &set.rows {
                        wire::data_row_in(out, row, |i| wire::format_of(formats, i));
                    }
                    command_complete(out, "SHOW");
                }
            }
        }
        Command::Reload => {
            match ctx.reload().await {
                Ok(message) => {
                    if !message.is_empty() {
                        wire::notice(out, &message);
                    }
                    command_complete(out, "RELOAD");
                }
                Err(message) => {
                    let message = format!("pgrouter: reload failed, the running configuration is unchanged: {message}");
                    wire::error(out, "F0000", &message, None);
                    return Err(());
                }
            }
        }
        Command::Pause(db) => match ctx.pause(db.as_deref()).await {
            Ok(()) => command_complete(out, "PAUSE"),
            Err(message) => {
                wire::error(out, "55000", &format!("pgrouter: {message}"), None);
                return Err(());
            }
        },
        Command::Resume(db) => match ctx.resume(db.as_deref()) {
            Ok(()) => command_complete(out, "RESUME"),
            Err(message) => {
                wire::error(out, "55000", &format!("pgrouter: {message}"), None);
                return Err(());
            }
        },
        Command::Set => command_complete(out, "SET"),
        Command::Shutdown => {
            ctx.shutdown();
            command_complete(out, "SHUTDOWN");
            return Ok(Some(AdminEnd::Shutdown));
        }
    }
    Ok(None)
}
