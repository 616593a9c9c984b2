//! A minimal HTTP/1.1 server for `GET /metrics`. One request per connection
//! (`Connection: close`), bounded request size, time limits and connection
//! count, so a slow or hostile peer cannot hold it up or make it allocate.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::render::{render, MetricsSource, CONTENT_TYPE};
use super::Metrics;

/// Request line and headers together; Prometheus sends a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
/// For the whole request to arrive.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 32;

/// Binds `listen` (e.g. "127.0.0.1:9930").
pub async fn bind(listen: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen).await
}

/// Binds `listen` and serves until `shutdown` becomes true.
pub async fn serve(
    listen: &str,
    metrics: Arc<Metrics>,
    source: Arc<dyn MetricsSource + Send + Sync>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = bind(listen).await?;
    tracing::info!(listen, "serving Prometheus metrics at /metrics");
    serve_listener(listener, metrics, source, shutdown).await;
    Ok(())
}

/// Serves an already bound listener until `shutdown` becomes true (or its
/// sender is dropped).
pub async fn serve_listener(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    source: Arc<dyn MetricsSource + Send + Sync>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        if *shutdown.borrow() {
            return;
        }
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            r = shutdown.changed() => { if r.is_err() { return } continue }
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            r = shutdown.changed() => { if r.is_err() { return } continue }
        };
        match accepted {
            Ok((stream, _peer)) => {
                let (metrics, source) = (metrics.clone(), source.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    handle(stream, &metrics, source.as_ref()).await;
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                crate::timer::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(mut stream: TcpStream, metrics: &Metrics, source: &dyn MetricsSource) {
    let _ = stream.set_nodelay(true);
    let response = match crate::timer::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(head)) => respond(&head, metrics, source),
        Ok(Err(HeadError::TooLarge)) => simple(431, "Request Header Fields Too Large"),
        Ok(Err(HeadError::Closed)) => return,
        Err(_) => simple(408, "Request Timeout"),
    };
    let _ = crate::timer::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await;
}

enum HeadError {
    TooLarge,
    Closed,
}

/// Reads until the blank line that ends the headers.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find_head_end(&buf) {
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() >= MAX_REQUEST {
            return Err(HeadError::TooLarge);
        }
        let want = chunk.len().min(MAX_REQUEST - buf.len());
        match stream.read(&mut chunk[..want]).await {
            Ok(0) if buf.is_empty() => return Err(HeadError::Closed),
            // A peer that half-closes after a request without the blank line.
            Ok(0) => return Ok(buf),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return Err(HeadError::Closed),
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn respond(head: &[u8], metrics: &Metrics, source: &dyn MetricsSource) -> Vec<u8> {
    let Ok(head) = std::str::from_utf8(head) else {
        return simple(400, "Bad Request");
    };
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split_ascii_whitespace();
    let (Some(method), Some(target), version) = (parts.next(), parts.next(), parts.next()) else {
        return simple(400, "Bad Request");
    };
    if parts.next().is_some() || !version.is_none_or(|v| v.starts_with("HTTP/1.")) {
        return simple(400, "Bad Request");
    }
    let path = target.split(['?', '#']).next().unwrap_or("");
    if path != "/metrics" {
        return simple(404, "Not Found");
    }
    match method {
        "GET" | "HEAD" => {
            let body = render(metrics, source);
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            if method == "GET" {
                out.extend_from_slice(body.as_bytes());
            }
            out
        }
        _ => {
            let body = "405 Method Not Allowed\n";
            format!(
                "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        }
    }
}

fn simple(code: u16, reason: &str) -> Vec<u8> {
    let body = format!("{code} {reason}\n");
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
