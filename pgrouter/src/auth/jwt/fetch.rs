//! Fetching a JWKS document over http or https.
//!
//! hyper + hyper-rustls rather than reqwest: a handful of crates instead of
//! ~60 (reqwest drags in url/idna/ICU and tower), and a fetch every few
//! minutes needs no more than a GET with a timeout and a size cap.
//!
//! https verifies the server certificate against the operating system's
//! trust store (rustls-native-certs, so `SSL_CERT_FILE` / `SSL_CERT_DIR`
//! point it at a private CA), falling back to the bundled Mozilla roots
//! when the system store is empty (minimal containers). The crypto provider
//! is passed explicitly so the process-wide rustls default never matters.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::{ConfigBuilderExt, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Whole request (connect, TLS, response, body) must finish within this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Larger bodies are refused: a JWKS is a few KB; this bounds memory if the
/// URL points at something else.
const MAX_BODY: usize = 1 << 20;

/// A GET client bound to one URL.
pub struct Fetcher {
    uri: Uri,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl Fetcher {
    /// Validates the URL (http or https with a host) and prepares the client.
    pub fn new(url: &str) -> Result<Fetcher, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("{url:?} has no host"));
        }
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{url:?} must start with http:// or https://")),
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup failed: {e}"))?;
        let tls = if !https {
            // Never used for an http URL, but the connector wants a config;
            // an empty store avoids reading the system certificates.
            builder
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        } else {
            match builder.clone().with_native_roots() {
                Ok(b) => b.with_no_client_auth(),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "no system CA certificates found; verifying the JWKS server with the bundled Mozilla roots"
                    );
                    builder.with_webpki_roots().with_no_client_auth()
                }
            }
        };
        let connector = HttpsConnectorBuilder::new().with_tls_config(tls);
        let connector = if https {
            connector.https_only()
        } else {
            connector.https_or_http()
        }
        .enable_http1()
        .wrap_connector(crate::auth::http_tcp::connector());
        // Fetches are minutes apart: do not keep idle connections around.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Ok(Fetcher { uri, client })
    }

    /// GETs the URL; the body on a 200 answer, else a short description of
    /// what went wrong (for logs). Redirects are not followed.
    pub async fn get(&self) -> Result<Bytes, String> {
        match crate::timer::timeout(FETCH_TIMEOUT, self.get_inner()).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no complete answer within {}s",
                FETCH_TIMEOUT.as_secs()
            )),
        }
    }

    async fn get_inner(&self) -> Result<Bytes, String> {
        let req = Request::get(self.uri.clone())
            .header(
                http::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .header(
                http::header::USER_AGENT,
                concat!("pgrouter/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(crate::auth::describe_http_error)?;
        let status = resp.status();
        if status != StatusCode::OK {
            return Err(format!("HTTP status {status}"));
        }
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?;
        Ok(body.to_bytes())
    }
}
