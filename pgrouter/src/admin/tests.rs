use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::metrics::snapshot::{
    ClientSnapshot, ConfigRow, DbStats, PoolLabels, PoolSnapshot, ReloadStatus, ServerSnapshot,
};
use crate::protocol::backend::parse_error_fields;
use crate::protocol::frontend;
use crate::protocol::reader::Reader;

#[derive(Default)]
struct Fake {
    reload_fails: AtomicBool,
    reloads: AtomicUsize,
    paused: Mutex<Vec<String>>,
    shutdowns: AtomicUsize,
}

fn labels() -> PoolLabels {
    PoolLabels {
        database: "app".into(),
        user: "authenticator".into(),
        shard: 1,
        role: "replica".into(),
        host: "10.0.0.2".into(),
        port: 5433,
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

impl AdminContext for Fake {
    fn pools(&self) -> Vec<PoolSnapshot> {
        vec![PoolSnapshot {
            labels: labels(),
            pool_mode: "transaction".into(),
            cl_active: 3,
            cl_waiting: 2,
            sv_active: 3,
            sv_idle: 4,
            sv_used: 1,
            pool_size: 20,
            maxwait_ms: 250,
            paused: false,
            banned: true,
        }]
    }
    fn clients(&self) -> Vec<ClientSnapshot> {
        vec![ClientSnapshot {
            id: 7,
            user: "alice".into(),
            database: "app".into(),
            addr: "127.0.0.1:50000".into(),
            state: "idle".into(),
            auth: "jwt".into(),
            connect_time: at(0),
            read_only: true,
            role: "reader".into(),
            tls: true,
            application_name: "psql".into(),
            server: None,
            worker: 1,
            pinned: Some("temp, listen".into()),
        }]
    }
    fn servers(&self) -> Vec<ServerSnapshot> {
        vec![ServerSnapshot {
            pool: labels(),
            backend_pid: 4242,
            state: "active".into(),
            connect_time: at(60),
            last_used: None,
            client_id: Some(7),
            tls: false,
        }]
    }
    fn stats(&self) -> Vec<DbStats> {
        vec![DbStats {
            database: "app".into(),
            total_xact_count: 100,
            total_query_count: 200,
            total_received: 5000,
            total_sent: 9000,
            total_xact_time_us: 50_000,
            total_query_time_us: 40_000,
            total_wait_time_us: 1_000,
            total_wait_count: 10,
            query_time_p50_us: 150,
            query_time_p99_us: 900,
            period: Duration::from_secs(10),
        }]
    }
    fn config(&self) -> Vec<ConfigRow> {
        vec![
            ConfigRow {
                key: "general.listen".into(),
                value: "127.0.0.1:6432".into(),
                source: "router.toml".into(),
            },
            ConfigRow {
                key: "general.admin_password".into(),
                value: "hunter2".into(),
                source: "router.toml".into(),
            },
            ConfigRow {
                key: "general.pool_mode".into(),
                value: "transaction".into(),
                source: "default".into(),
            },
        ]
    }
    fn last_reload(&self) -> Option<ReloadStatus> {
        Some(ReloadStatus {
            ok: false,
            at: at(3600),
            message: "router.toml:4: unknown key `poolsize`".into(),
        })
    }
    fn reload(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            self.reloads.fetch_add(1, Ordering::Relaxed);
            if self.reload_fails.load(Ordering::Relaxed) {
                Err("router.toml:4: unknown key `poolsize`".into())
            } else {
                Ok("1 pool resized".into())
            }
        })
    }
    fn pause<'a>(&'a self, database: Option<&'a str>) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            match database {
                Some("nope") => Err("unknown database \"nope\"".into()),
                db => {
                    self.paused
                        .lock()
                        .push(format!("pause {}", db.unwrap_or("*")));
                    Ok(())
                }
            }
        })
    }
    fn resume(&self, database: Option<&str>) -> Result<(), String> {
        self.paused
            .lock()
            .push(format!("resume {}", database.unwrap_or("*")));
        Ok(())
    }
    fn shutdown(&self) {
        self.shutdowns.fetch_add(1, Ordering::Relaxed);
    }
}

/// A backend message as the client sees it.
#[derive(Debug, Clone, PartialEq)]
enum Msg {
    Row(Vec<(String, i32)>),
    Data(Vec<Option<String>>),
    Complete(String),
    Ready(u8),
    Error {
        severity: String,
        code: String,
        message: String,
    },
    Notice(String),
    Empty,
    /// ParseComplete '1', BindComplete '2', CloseComplete '3', NoData 'n',
    /// ParameterDescription 't' (its body).
    Other(u8, Vec<u8>),
}

fn decode(mut bytes: &[u8]) -> Vec<Msg> {
    let mut msgs = Vec::new();
    while !bytes.is_empty() {
        let frame = crate::protocol::next_frame(bytes, usize::MAX)
            .unwrap()
            .expect("whole messages");
        let body = frame.body(bytes);
        let mut r = Reader::new(body);
        msgs.push(match frame.tag {
            b'T' => {
                let n = r.i16().unwrap();
                let cols = (0..n)
                    .map(|_| {
                        let name = r.cstr().unwrap().to_string();
                        let (_table, _col) = (r.i32().unwrap(), r.i16().unwrap());
                        let oid = r.i32().unwrap();
                        let (_size, _modifier, format) =
                            (r.i16().unwrap(), r.i32().unwrap(), r.i16().unwrap());
                        assert_eq!(format, 0);
                        (name, oid)
                    })
                    .collect();
                assert!(r.is_empty());
                Msg::Row(cols)
            }
            b'D' => {
                let n = r.i16().unwrap();
                let cells = (0..n)
                    .map(|_| match r.i32().unwrap() {
                        -1 => None,
                        len => Some(
                            String::from_utf8(r.bytes(len as usize).unwrap().to_vec()).unwrap(),
                        ),
                    })
                    .collect();
                assert!(r.is_empty());
                Msg::Data(cells)
            }
            b'C' => Msg::Complete(r.cstr().unwrap().to_string()),
            b'Z' => Msg::Ready(r.u8().unwrap()),
            b'I' => Msg::Empty,
            b'E' => {
                let f = parse_error_fields(body).unwrap();
                Msg::Error {
                    severity: f.severity,
                    code: f.code,
                    message: f.message,
                }
            }
            b'N' => Msg::Notice(parse_error_fields(body).unwrap().message),
            tag @ (b'1' | b'2' | b'3' | b'n' | b't') => Msg::Other(tag, body.to_vec()),
            other => panic!("unexpected message {}", other as char),
        });
        bytes = &bytes[frame.total_len..];
    }
    msgs
}

/// Runs a console on an in-memory stream: sends `input`, then (if `close`)
/// closes the client's write side; returns how it ended and what it sent.
async fn session_with(
    ctx: Arc<Fake>,
    initial: &[u8],
    input: &[u8],
    close: bool,
) -> (AdminEnd, Vec<Msg>) {
    let (mut client, mut server) = tokio::io::duplex(4 << 20);
    let initial = BytesMut::from(initial);
    let task = tokio::spawn(async move {
        let end = run(&mut server, initial, ctx.as_ref()).await;
        drop(server);
        end
    });
    client.write_all(input).await.unwrap();
    if close {
        client.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut out))
        .await
        .expect("console hangs")
        .unwrap();
    let end = task.await.expect("console panicked").expect("i/o error");
    (end, decode(&out))
}

async fn session(ctx: Arc<Fake>, input: &[u8]) -> (AdminEnd, Vec<Msg>) {
    session_with(ctx, &[], input, true).await
}

fn queries(sqls: &[&str]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for sql in sqls {
        frontend::query(&mut out, sql);
    }
    out.to_vec()
}

fn columns(msg: &Msg) -> Vec<&str> {
    match msg {
        Msg::Row(cols) => cols.iter().map(|(n, _)| n.as_str()).collect(),
        other => panic!("expected RowDescription, got {other:?}"),
    }
}

/// The cell of `column` in a result's first row.
fn cell<'a>(msgs: &'a [Msg], column: &str) -> Option<&'a str> {
    let Msg::Row(cols) = &msgs[0] else {
        panic!("{msgs:?}")
    };
    let i = cols
        .iter()
        .position(|(n, _)| n == column)
        .unwrap_or_else(|| panic!("no column {column}"));
    let Msg::Data(cells) = &msgs[1] else {
        panic!("{msgs:?}")
    };
    cells[i].as_deref()
}

#[tokio::test]
async fn show_pools_is_a_table() {
    let (end, msgs) = session(Arc::default(), &queries(&["SHOW POOLS;"])).await;
    assert_eq!(end, AdminEnd::Quit);
    assert_eq!(msgs.len(), 4, "{msgs:?}");
    let cols = columns(&msgs[0]);
    for c in [
        "database",
        "user",
        "shard",
        "role",
        "host",
        "port",
        "cl_active",
        "cl_waiting",
        "sv_active",
        "sv_idle",
        "sv_used",
        "pool_size",
        "maxwait_ms",
        "pool_mode",
    ] {
        assert!(cols.contains(&c), "missing {c}");
    }
    let Msg::Row(typed) = &msgs[0] else {
        unreachable!()
    };
    assert!(typed.iter().any(|(n, oid)| n == "database" && *oid == 25));
    assert!(typed.iter().any(|(n, oid)| n == "cl_active" && *oid == 20));
    assert_eq!(cell(&msgs, "user"), Some("authenticator"));
    assert_eq!(cell(&msgs, "shard"), Some("1"));
    assert_eq!(cell(&msgs, "port"), Some("5433"));
    assert_eq!(cell(&msgs, "cl_waiting"), Some("2"));
    assert_eq!(cell(&msgs, "sv_used"), Some("1"));
    assert_eq!(cell(&msgs, "maxwait_ms"), Some("250"));
    assert_eq!(cell(&msgs, "banned"), Some("t"));
    assert_eq!(msgs[2], Msg::Complete("SHOW".into()));
    assert_eq!(msgs[3], Msg::Ready(b'I'));
}

#[tokio::test]
async fn show_clients_servers_stats_version_help() {
    let (_, msgs) = session(Arc::default(), &queries(&["show clients"])).await;
    assert_eq!(
        columns(&msgs[0]),
        [
            "id",
            "user",
            "database",
            "addr",
            "state",
            "auth",
            "connect_time",
            "read_only",
            "role",
            "tls",
            "application_name",
            "server",
            "worker",
            "pinned"
        ]
    );
    assert_eq!(cell(&msgs, "connect_time"), Some("1970-01-01 00:00:00 UTC"));
    assert_eq!(cell(&msgs, "worker"), Some("1"));
    assert_eq!(cell(&msgs, "pinned"), Some("temp, listen"));
    assert_eq!(cell(&msgs, "read_only"), Some("t"));
    assert_eq!(cell(&msgs, "server"), None);
    assert_eq!(cell(&msgs, "auth"), Some("jwt"));

    let (_, msgs) = session(Arc::default(), &queries(&["Show Servers"])).await;
    assert_eq!(cell(&msgs, "pool"), Some("authenticator@app/1"));
    assert_eq!(cell(&msgs, "backend_pid"), Some("4242"));
    assert_eq!(cell(&msgs, "connect_time"), Some("1970-01-01 00:01:00 UTC"));
    assert_eq!(cell(&msgs, "last_used"), None);
    assert_eq!(cell(&msgs, "client_id"), Some("7"));

    let (_, msgs) = session(Arc::default(), &queries(&["SHOW STATS"])).await;
    assert_eq!(cell(&msgs, "total_query_count"), Some("200"));
    assert_eq!(cell(&msgs, "total_received"), Some("5000"));
    assert_eq!(cell(&msgs, "avg_query_count"), Some("20")); // per second over 10 s
    assert_eq!(cell(&msgs, "avg_query_time_us"), Some("200"));
    assert_eq!(cell(&msgs, "avg_xact_time_us"), Some("500"));
    assert_eq!(cell(&msgs, "avg_wait_time_us"), Some("100"));
    assert_eq!(cell(&msgs, "p99_query_time_us"), Some("900"));
    assert!(columns(&msgs[0]).contains(&"total_wait_time_us"));

    let (_, msgs) = session(Arc::default(), &queries(&["show version"])).await;
    assert_eq!(
        cell(&msgs, "version"),
        Some(concat!("pgrouter ", env!("CARGO_PKG_VERSION")))
    );

    let (_, msgs) = session(Arc::default(), &queries(&["show help"])).await;
    let rows = msgs.iter().filter(|m| matches!(m, Msg::Data(_))).count();
    assert_eq!(rows, command::COMMANDS.len());
}

#[tokio::test]
async fn show_config_masks_secrets_and_reports_the_last_reload() {
    let (_, msgs) = session(Arc::default(), &queries(&["SHOW CONFIG"])).await;
    assert_eq!(columns(&msgs[0]), ["key", "value", "source"]);
    let rows: Vec<Vec<Option<String>>> = msgs
        .iter()
        .filter_map(|m| {
            if let Msg::Data(c) = m {
                Some(c.clone())
            } else {
                None
            }
        })
        .collect();
    let get = |k: &str| {
        rows.iter()
            .find(|r| r[0].as_deref() == Some(k))
            .unwrap_or_else(|| panic!("{k}"))
            .clone()
    };
    assert_eq!(
        get("general.admin_password")[1].as_deref(),
        Some("********")
    );
    assert_eq!(get("general.pool_mode")[2].as_deref(), Some("default"));
    assert_eq!(get("last_reload")[1].as_deref(), Some("error"));
    assert_eq!(
        get("last_reload_time")[1].as_deref(),
        Some("1970-01-01 01:00:00 UTC")
    );
    assert!(get("last_reload_message")[1]
        .as_deref()
        .unwrap()
        .contains("poolsize"));
}

#[tokio::test]
async fn reload_pause_resume_shutdown() {
    let ctx = Arc::new(Fake::default());
    let (end, msgs) = session(
        ctx.clone(),
        &queries(&[
            "reload",
            "PAUSE",
            "pause \"app\"",
            "resume app",
            "pause nope",
        ]),
    )
    .await;
    assert_eq!(end, AdminEnd::Quit);
    assert_eq!(ctx.reloads.load(Ordering::Relaxed), 1);
    assert_eq!(*ctx.paused.lock(), ["pause *", "pause app", "resume app"]);
    assert_eq!(msgs[0], Msg::Notice("1 pool resized".into()));
    assert_eq!(
        &msgs[1..3],
        [Msg::Complete("RELOAD".into()), Msg::Ready(b'I')]
    );
    assert_eq!(
        &msgs[3..9],
        [
            Msg::Complete("PAUSE".into()),
            Msg::Ready(b'I'),
            Msg::Complete("PAUSE".into()),
            Msg::Ready(b'I'),
            Msg::Complete("RESUME".into()),
            Msg::Ready(b'I')
        ]
    );
    assert!(
        matches!(&msgs[9], Msg::Error { code, message, .. } if code == "55000" && message.contains("nope"))
    );
    assert_eq!(msgs[10], Msg::Ready(b'I'));

    ctx.reload_fails.store(true, Ordering::Relaxed);
    let (_, msgs) = session(ctx.clone(), &queries(&["RELOAD"])).await;
    assert!(
        matches!(&msgs[0], Msg::Error { code, message, severity } if code == "F0000" && severity == "ERROR" && message.contains("poolsize") && message.contains("unchanged"))
    );
    assert_eq!(msgs[1], Msg::Ready(b'I'));

    // SHUTDOWN answers, then ends the loop even with more input pending.
    let (end, msgs) = session_with(
        ctx.clone(),
        &[],
        &queries(&["shutdown;", "show pools"]),
        false,
    )
    .await;
    assert_eq!(end, AdminEnd::Shutdown);
    assert_eq!(ctx.shutdowns.load(Ordering::Relaxed), 1);
    assert_eq!(msgs, [Msg::Complete("SHUTDOWN".into()), Msg::Ready(b'I')]);
}

#[tokio::test]
async fn unknown_commands_list_the_commands_and_the_session_goes_on() {
    let (end, msgs) = session(
        Arc::default(),
        &queries(&["select 1", "show tables", "show version"]),
    )
    .await;
    assert_eq!(end, AdminEnd::Quit);
    let Msg::Error {
        severity,
        code,
        message,
    } = &msgs[0]
    else {
        panic!("{msgs:?}")
    };
    assert_eq!((severity.as_str(), code.as_str()), ("ERROR", "42601"));
    for c in [
        "SHOW POOLS",
        "SHOW CLIENTS",
        "SHOW SERVERS",
        "SHOW STATS",
        "SHOW CONFIG",
        "SHOW VERSION",
        "RELOAD",
        "PAUSE",
        "RESUME",
        "SHUTDOWN",
    ] {
        assert!(message.contains(c), "{message} lacks {c}");
    }
    assert!(message.contains("select 1"));
    assert_eq!(msgs[1], Msg::Ready(b'I'));
    assert!(matches!(&msgs[2], Msg::Error { code, .. } if code == "0A000"));
    assert_eq!(msgs[3], Msg::Ready(b'I'));
    assert!(matches!(&msgs[4], Msg::Row(_)));
}

#[tokio::test]
async fn several_statements_empty_queries_and_pipelined_input() {
    // Two results, one ReadyForQuery; an error stops the rest of the string.
    let (_, msgs) = session(
        Arc::default(),
        &queries(&[
            "show version; SHOW HELP",
            "show version; bogus; show pools",
            " ; -- nothing",
        ]),
    )
    .await;
    let tags: Vec<&Msg> = msgs
        .iter()
        .filter(|m| !matches!(m, Msg::Data(_) | Msg::Row(_)))
        .collect();
    assert_eq!(tags[0], &Msg::Complete("SHOW".into()));
    assert_eq!(tags[1], &Msg::Complete("SHOW".into()));
    assert_eq!(tags[2], &Msg::Ready(b'I'));
    assert_eq!(tags[3], &Msg::Complete("SHOW".into()));
    assert!(matches!(tags[4], Msg::Error { .. }));
    assert_eq!(tags[5], &Msg::Ready(b'I'));
    assert_eq!(&tags[6..], [&Msg::Empty, &Msg::Ready(b'I')]);

    // Bytes read before the console started are served first.
    let (end, msgs) = session_with(
        Arc::default(),
        &queries(&["show version"]),
        &[b'X', 0, 0, 0, 4],
        false,
    )
    .await;
    assert_eq!(end, AdminEnd::Quit);
    assert_eq!(msgs.len(), 4);
}

#[tokio::test]
async fn extended_protocol_with_parameters_gets_one_error_per_sync() {
    // Admin commands take no parameters: refused once, the rest up to Sync
    // skipped; the session goes on.
    let mut input = BytesMut::new();
    frontend::write_parse(&mut input, "", "SHOW POOLS WHERE $1", &[23]);
    frontend::write_bind(&mut input, "", "", &[0, 0, 0, 0, 0, 0]);
    frontend::write_target(&mut input, b'D', b'P', "");
    input.put_slice(&[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0]);
    input.put_slice(&[b'S', 0, 0, 0, 4]);
    input.put_slice(&[b'H', 0, 0, 0, 4]);
    input.put_slice(&[b'S', 0, 0, 0, 4]);
    input.put_slice(&queries(&["show version"]));
    let (end, msgs) = session(Arc::default(), &input).await;
    assert_eq!(end, AdminEnd::Quit);
    let Msg::Error { code, message, .. } = &msgs[0] else {
        panic!("{msgs:?}")
    };
    assert_eq!(code, "0A000");
    assert!(message.contains("simple query protocol"));
    assert_eq!(&msgs[1..3], [Msg::Ready(b'I'), Msg::Ready(b'I')]);
    assert!(matches!(&msgs[3], Msg::Row(_)));
    assert_eq!(msgs.len(), 7);
}

#[tokio::test]
async fn extended_protocol_prepares_and_executes_commands() {
    // As asyncpg's fetch does: Parse + Describe statement + Sync, then
    // Bind + Execute + Sync; a command without rows describes as NoData.
    let mut input = BytesMut::new();
    frontend::write_parse(&mut input, "s1", "SHOW VERSION", &[]);
    frontend::write_target(&mut input, b'D', b'S', "s1");
    input.put_slice(&[b'S', 0, 0, 0, 4]);
    frontend::write_bind(&mut input, "", "s1", &[0, 0, 0, 0, 0, 0]);
    input.put_slice(&[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0]);
    input.put_slice(&[b'S', 0, 0, 0, 4]);
    frontend::write_parse(&mut input, "", "SET application_name = 'x'", &[]);
    frontend::write_bind(&mut input, "", "", &[0, 0, 0, 0, 0, 0]);
    frontend::write_target(&mut input, b'D', b'P', "");
    input.put_slice(&[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0]);
    frontend::write_target(&mut input, b'C', b'S', "s1");
    input.put_slice(&[b'S', 0, 0, 0, 4]);
    // A closed statement is gone.
    frontend::write_bind(&mut input, "", "s1", &[0, 0, 0, 0, 0, 0]);
    input.put_slice(&[b'S', 0, 0, 0, 4]);
    let (end, msgs) = session(Arc::default(), &input).await;
    assert_eq!(end, AdminEnd::Quit);
    assert_eq!(msgs[0], Msg::Other(b'1', vec![]));
    assert_eq!(msgs[1], Msg::Other(b't', vec![0, 0]));
    assert!(
        matches!(&msgs[2], Msg::Row(cols) if cols.len() == 1),
        "{msgs:?}"
    );
    assert_eq!(msgs[3], Msg::Ready(b'I'));
    assert_eq!(msgs[4], Msg::Other(b'2', vec![]));
    assert!(
        matches!(&msgs[5], Msg::Data(cells) if cells[0].as_deref().unwrap().starts_with("pgrouter "))
    );
    assert_eq!(msgs[6], Msg::Complete("SHOW".into()));
    assert_eq!(msgs[7], Msg::Ready(b'I'));
    assert_eq!(
        &msgs[8..13],
        [
            Msg::Other(b'1', vec![]),
            Msg::Other(b'2', vec![]),
            Msg::Other(b'n', vec![]),
            Msg::Complete("SET".into()),
            Msg::Other(b'3', vec![]),
        ]
    );
    assert_eq!(msgs[13], Msg::Ready(b'I'));
    assert!(
        matches!(&msgs[14], Msg::Error { code, .. } if code == "26000"),
        "{msgs:?}"
    );
    assert_eq!(msgs[15], Msg::Ready(b'I'));
    assert_eq!(msgs.len(), 16);
}

#[tokio::test]
async fn terminate_and_eof_end_quietly() {
    let (end, msgs) = session_with(Arc::default(), &[], &[b'X', 0, 0, 0, 4], false).await;
    assert_eq!((end, msgs.len()), (AdminEnd::Quit, 0));
    let (end, msgs) = session(Arc::default(), &[]).await;
    assert_eq!((end, msgs.len()), (AdminEnd::Quit, 0));
    // Half a message, then EOF.
    let (end, msgs) = session(Arc::default(), &[b'Q', 0, 0, 0, 40, b's']).await;
    assert_eq!((end, msgs.len()), (AdminEnd::Quit, 0));
}

async fn assert_protocol_error(input: &[u8]) {
    let (end, msgs) = session_with(Arc::default(), &[], input, false).await;
    assert_eq!(end, AdminEnd::ProtocolError, "{input:?}");
    let Some(Msg::Error { severity, code, .. }) = msgs.last() else {
        panic!("{msgs:?}")
    };
    assert_eq!((severity.as_str(), code.as_str()), ("FATAL", "08P01"));
}

#[tokio::test]
async fn garbage_and_oversize_input_end_with_08p01() {
    // Oversize: refused from the header, before the body is buffered.
    assert_protocol_error(&[b'Q', 0x7f, 0xff, 0xff, 0xff]).await;
    assert_protocol_error(&[b'Q', 0, 0x20, 0, 0]).await; // 2 MiB
                                                         // Bad lengths, unknown tags, malformed bodies.
    assert_protocol_error(&[b'Q', 0, 0, 0, 2]).await;
    assert_protocol_error(&[b'Q', 0xff, 0xff, 0xff, 0xff]).await;
    assert_protocol_error(&[0, 0, 0, 0, 4]).await;
    assert_protocol_error(b"GET / HTTP/1.1\r\n\r\n").await;
    assert_protocol_error(&[b'Q', 0, 0, 0, 7, b'a', b'b', b'c']).await; // no NUL
    assert_protocol_error(&[b'Q', 0, 0, 0, 6, 0xff, 0]).await; // not UTF-8
    assert_protocol_error(&[b'p', 0, 0, 0, 9, b'p', b'a', b's', b's', 0]).await;
    // A valid query first is still answered.
    let mut input = queries(&["show version"]);
    input.extend_from_slice(&[b'?', 0, 0, 0, 4]);
    let (end, msgs) = session_with(Arc::default(), &[], &input, false).await;
    assert_eq!(end, AdminEnd::ProtocolError);
    assert_eq!(msgs.len(), 5);

    // Pseudo-random garbage never panics or hangs.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..200 {
        let len = (seed % 64) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = session(Arc::default(), &bytes).await;
    }
}
