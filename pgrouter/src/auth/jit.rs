//! `[jit]`: just-in-time access, Supavisor's contract. At every login with a
//! token the router POSTs to `api_url` with `Authorization: Bearer <token>`
//! and the body `{"rhost": "<client address>", "role": "<startup user>"}`;
//! 200 with `{"user_role": {"role": "<startup user>"}}` grants the login.
//! Nothing is cached, so a revoked token is refused at its next login.
//!
//! The API is a remote dependency on the login path, so every call is
//! bounded: at most [`MAX_IN_FLIGHT`] at once, each (waiting for its turn
//! included) within `timeout_ms`. A slow or dead API delays and refuses
//! token logins only; password logins never wait for it.
//!
//! hyper + hyper-rustls, as for the JWKS fetch (`jwt/fetch.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{ConfigBuilderExt, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pgrouter_config::Jit;

use crate::metrics::Metrics;

/// API calls in flight at once; more wait (within their timeout) for a turn.
pub const MAX_IN_FLIGHT: usize = 64;
/// The API answers a few bytes; anything much larger is not its answer.
const MAX_BODY: usize = 64 * 1024;

/// The API's decision on one login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Granted,
    /// 200, but for another role (or none).
    NotGranted(String),
    /// 401 or 403.
    Rejected(u16),
    /// Not asked: the token has bytes no HTTP header may hold (a newline).
    Unsendable,
    /// No decision: timeout, connection failure, another status, bad JSON.
    Unavailable(String),
}

impl Verdict {
    /// The result word of `pgrouter_jit_checks_total`.
    pub fn result(&self) -> &'static str {
        match self {
            Verdict::Granted => "granted",
            Verdict::NotGranted(_) => "not_granted",
            Verdict::Rejected(_) | Verdict::Unsendable => "rejected",
            Verdict::Unavailable(_) => "unavailable",
        }
    }

    /// What the refused client reads (after "pgrouter: ").
    pub fn refusal(&self, role: &str) -> Option<String> {
        match self {
            Verdict::Granted => None,
            Verdict::NotGranted(other) => Some(format!(
                "token not granted: the JIT API granted role \"{other}\", not \"{role}\""
            )),
            Verdict::Rejected(status) => Some(format!(
                "token not granted: token rejected by the JIT API (HTTP {status})"
            )),
            Verdict::Unsendable => Some(
                "token not granted: the token has characters an HTTP header cannot carry, so it was not sent to the JIT API".into(),
            ),
            Verdict::Unavailable(why) => Some(format!("JIT API unavailable: {why}")),
        }
    }
}

pub struct JitClient {
    uri: Uri,
    timeout: Duration,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    turns: tokio::sync::Semaphore,
}

/// What [`JitClient::new`] would refuse in `[jit]`, without building a
/// client or touching the network: an `api_url` that does not parse, an
/// `api_ca` (used with https) that does not load. Returns the key at fault
/// and why, so that `pgrouter check`, start-up and a refused reload all
/// report it at `router.toml:LINE: jit.KEY` (see `Config::jit_problem`).
pub fn check_offline(cfg: &Jit) -> Result<(), (&'static str, String)> {
    let uri: Uri = cfg
        .api_url
        .parse()
        .map_err(|e| ("api_url", format!("{:?} is not a URL: {e}", cfg.api_url)))?;
    if uri.scheme_str() == Some("https") && !cfg.api_ca.is_empty() {
        ca_roots(&cfg.api_ca).map_err(|e| ("api_ca", e))?;
    }
    Ok(())
}

/// The CA certificates of the PEM bundle at `path`; errors name the file.
fn ca_roots(path: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in crate::net::tls::read_certificates("api_ca", path)? {
        roots
            .add(cert)
            .map_err(|e| format!("api_ca \"{path}\": unusable CA certificate: {e}"))?;
    }
    Ok(roots)
}

impl JitClient {
    /// Prepares the client: the URL is parsed and `api_ca` read now, so a
    /// bad file stops a start or a reload instead of every login.
    pub fn new(cfg: &Jit) -> Result<JitClient, String> {
        let uri: Uri = cfg
            .api_url
            .parse()
            .map_err(|e| format!("api_url {:?} is not a URL: {e}", cfg.api_url))?;
        let https = uri.scheme_str() == Some("https");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup failed: {e}"))?;
        let tls = if !https {
            builder
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        } else if !cfg.api_ca.is_empty() {
            builder
                .with_root_certificates(ca_roots(&cfg.api_ca)?)
                .with_no_client_auth()
        } else {
            match builder.clone().with_native_roots() {
                Ok(b) => b.with_no_client_auth(),
                Err(_) => builder.with_webpki_roots().with_no_client_auth(),
            }
        };
        let tcp = super::http_tcp::connector();
        let connector = HttpsConnectorBuilder::new().with_tls_config(tls);
        let connector = if https {
            connector.https_only()
        } else {
            connector.https_or_http()
        }
        .enable_http1()
        .wrap_connector(tcp);
        // Idle connections are kept a little: a login storm reuses them.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(JitClient {
            uri,
            timeout: Duration::from_millis(cfg.timeout_ms),
            client,
            turns: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
        })
    }

    /// Asks the API whether `token` grants `role` to a client at `rhost`.
    pub async fn check(&self, metrics: &Metrics, token: &str, role: &str, rhost: &str) -> Verdict {
        let started = Instant::now();
        let verdict = match crate::timer::timeout(self.timeout, self.call(token, role, rhost)).await
        {
            Ok(v) => v,
            Err(_) => Verdict::Unavailable(format!(
                "timeout (no answer within {} ms)",
                self.timeout.as_millis()
            )),
        };
        metrics
            .login_checks
            .record_jit_check(verdict.result(), started.elapsed());
        verdict
    }

    async fn call(&self, token: &str, role: &str, rhost: &str) -> Verdict {
        let Ok(_turn) = self.turns.acquire().await else {
            return Verdict::Unavailable("the router is shutting down".into());
        };
        let body = serde_json::json!({ "rhost": rhost, "role": role }).to_string();
        let req = Request::post(self.uri.clone())
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("pgrouter/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)));
        let req = match req {
            Ok(r) => r,
            // A token with bytes no header may hold (e.g. a newline).
            Err(_) => return Verdict::Unsendable,
        };
        let resp = match self.client.request(req).await {
            Ok(r) => r,
            Err(e) => return Verdict::Unavailable(super::describe_http_error(e)),
        };
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Verdict::Rejected(status.as_u16());
        }
        if status != StatusCode::OK {
            return Verdict::Unavailable(format!("HTTP status {status}"));
        }
        let body = match Limited::new(resp.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return Verdict::Unavailable(format!("reading the answer: {e}")),
        };
        decide(&body, role)
    }
}

/// Reads a 200 answer's body.
fn decide(body: &[u8], role: &str) -> Verdict {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Verdict::Unavailable("the answer is not JSON".into());
    };
    match json
        .get("user_role")
        .and_then(|u| u.get("role"))
        .and_then(|r| r.as_str())
    {
        Some(granted) if granted == role => Verdict::Granted,
        Some(granted) => Verdict::NotGranted(granted.to_string()),
        None => Verdict::Unavailable("the answer has no user_role.role".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert_eq!(
            decide(br#"{"user_role":{"role":"alice"}}"#, "alice"),
            Verdict::Granted
        );
        assert_eq!(
            decide(br#"{"user_role":{"role":"bob"}}"#, "alice"),
            Verdict::NotGranted("bob".into())
        );
        assert!(matches!(
            decide(b"<html>", "alice"),
            Verdict::Unavailable(_)
        ));
        assert!(matches!(decide(b"{}", "alice"), Verdict::Unavailable(_)));
        assert!(matches!(
            decide(br#"{"user_role":{"role":7}}"#, "alice"),
            Verdict::Unavailable(_)
        ));
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(Verdict::Granted.refusal("a"), None);
        let m = Verdict::Rejected(401).refusal("a").unwrap();
        assert!(m.contains("token not granted") && m.contains("rejected by the JIT API"));
        let m = Verdict::NotGranted("b".into()).refusal("a").unwrap();
        assert!(m.contains("token not granted") && m.contains("\"b\""));
        let m = Verdict::Unavailable("timeout".into()).refusal("a").unwrap();
        assert_eq!(m, "JIT API unavailable: timeout");
    }
}
