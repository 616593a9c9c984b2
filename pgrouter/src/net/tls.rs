//! TLS set-up on both sides (rustls with the aws-lc-rs provider):
//!
//! - towards clients: the router's certificate and key (`tls_certificate`,
//!   `tls_private_key`) and whether TLS is refused, offered or required
//!   (`client_tls`); the handshake after an SSLRequest is answered 'S'; the
//!   certificate's SCRAM channel binding data (`end_point.rs`);
//! - towards servers: `server_tls` (disable, prefer, require, verify-full)
//!   and `server_tls_ca`; the SSLRequest and the handshake after the server's
//!   'S'.
//!
//! Everything that reads a file is meant to run at startup and reload, so
//! that a bad file is reported then, naming it, and not at the first client.

use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, OnceLock};

use parking_lot::RwLock;
use pgrouter_config::{ClientTls, General, ServerTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::stream::{ClientStream, ServerStream, WriteThrough};

/// The ALPN protocol name PostgreSQL 17 registered; libpq 17 offers it.
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// SSLRequest: length 8, code 1234.5679.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

fn read_file(key: &str, path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{key} \"{path}\": cannot read: {e}"))
}

pub(crate) fn read_certificates(
    key: &str,
    path: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key} \"{path}\": not a valid PEM file: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{key} \"{path}\": no certificate (BEGIN CERTIFICATE) found"
        ));
    }
    Ok(certs)
}

// ---------------------------------------------------------------------------
// Client side: the router as a TLS server.

/// Reads the certificate chain (leaf first) and its private key (PKCS#8,
/// PKCS#1 RSA or SEC1 EC, PEM) and builds the configuration client
/// handshakes use. Errors name the file at fault.
pub fn load_server_config(
    cert_path: &str,
    key_path: &str,
) -> Result<Arc<rustls::ServerConfig>, String> {
    load_server_config_and_end_point(cert_path, key_path).map(|(config, _)| config)
}

/// [`load_server_config`], and the `tls-server-end-point` channel binding
/// data of the leaf certificate it serves (`None` when its signature
/// algorithm names no hash), both from one reading of the file so that
/// they cannot belong to different certificates.
fn load_server_config_and_end_point(
    cert_path: &str,
    key_path: &str,
) -> Result<(Arc<rustls::ServerConfig>, Option<end_point::EndPoint>), String> {
    let certs = read_certificates("tls_certificate", cert_path)?;
    // read_certificates returns at least one certificate, the leaf first.
    let end_point = certs
        .first()
        .and_then(|leaf| end_point::certificate_hash(leaf))
        .map(Arc::from);
    let key_pem = read_file("tls_private_key", key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("tls_private_key \"{key_path}\": no private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) found")
        }
        e => format!("tls_private_key \"{key_path}\": not a valid PEM file: {e}"),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!("tls_certificate \"{cert_path}\" with tls_private_key \"{key_path}\": {e}")
        })?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok((Arc::new(config), end_point))
}

/// What a client connection needs to answer an SSLRequest: the mode and,
/// when a certificate is configured, the configuration to handshake with.
#[derive(Clone)]
pub struct ClientTlsSetup {
    pub mode: ClientTls,
    pub config: Option<Arc<rustls::ServerConfig>>,
    /// The `tls-server-end-point` channel binding data of `config`'s
    /// certificate: with it, SCRAM logins over TLS offer
    /// SCRAM-SHA-256-PLUS. `None` without a certificate, or when the
    /// certificate's signature algorithm names no hash (Ed25519).
    pub end_point: Option<end_point::EndPoint>,
}

impl ClientTlsSetup {
    /// No certificate: every SSLRequest is answered 'N'.
    pub fn disabled() -> Self {
        ClientTlsSetup {
            mode: ClientTls::Disable,
            config: None,
            end_point: None,
        }
    }

    /// Loads `tls_certificate`/`tls_private_key` when both are set.
    pub fn from_general(general: &General) -> Result<Self, String> {
        if general.tls_certificate.is_empty() || general.tls_private_key.is_empty() {
            return Ok(ClientTlsSetup {
                mode: general.client_tls,
                config: None,
                end_point: None,
            });
        }
        let (config, end_point) =
            load_server_config_and_end_point(&general.tls_certificate, &general.tls_private_key)?;
        if end_point.is_none() {
            tracing::warn!(
                tls_certificate = %general.tls_certificate,
                "the certificate's signature algorithm names no hash for SCRAM channel binding \
                 (tls-server-end-point): SCRAM-SHA-256-PLUS is not offered"
            );
        }
        Ok(ClientTlsSetup {
            mode: general.client_tls,
            config: Some(config),
            end_point,
        })
    }

    /// The configuration to answer an SSLRequest with 'S' and handshake, or
    /// `None` to answer 'N'.
    pub fn acceptor(&self) -> Option<&Arc<rustls::ServerConfig>> {
        match self.mode {
            ClientTls::Disable => None,
            ClientTls::Allow | ClientTls::Require => self.config.as_ref(),
        }
    }

    /// Whether a client that did not negotiate TLS must be refused.
    pub fn required(&self) -> bool {
        self.mode == ClientTls::Require
    }
}

/// The client TLS set-up in force, replaceable while clients connect (on
/// reload); each accepted connection takes the one current at accept time.
pub struct ClientTlsHandle(RwLock<ClientTlsSetup>);

impl ClientTlsHandle {
    pub fn new(setup: ClientTlsSetup) -> Arc<Self> {
        Arc::new(ClientTlsHandle(RwLock::new(setup)))
    }

    pub fn current(&self) -> ClientTlsSetup {
        self.0.read().clone()
    }

    pub fn replace(&self, setup: ClientTlsSetup) {
        *self.0.write() = setup;
    }
}

/// Runs the server side of the TLS handshake on a plain client stream (after
/// 'S' was sent) and leaves the TLS stream in its place. On failure the
/// stream is left detached: nothing more can be said to the client.
pub async fn accept_client(
    stream: &mut ClientStream,
    config: Arc<rustls::ServerConfig>,
) -> io::Result<()> {
    let tcp = match std::mem::replace(stream, ClientStream::Detached) {
        ClientStream::Plain(tcp) => TcpStream::from_std(tcp.into_inner())?,
        other => {
            *stream = other;
            return Err(io::Error::other("TLS is already in use on this connection"));
        }
    };
    let tls = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await?;
    *stream = ClientStream::Tls(Box::new(WriteThrough::new(tls)));
    Ok(())
}

// ---------------------------------------------------------------------------
// Server side: the router as a TLS client.

/// How the router uses TLS towards one server. Part of `ServerTarget`, so it
/// compares by value: the mode and the CA file's path (not its contents).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerTlsPolicy {
    pub mode: ServerTls,
    /// PEM CA bundle for verify-full; "" = the system's trust store.
    pub ca: String,
}

impl ServerTlsPolicy {
    pub fn from_general(general: &General) -> Self {
        ServerTlsPolicy {
            mode: general.server_tls,
            ca: general.server_tls_ca.clone(),
        }
    }

    pub fn disabled() -> Self {
        ServerTlsPolicy {
            mode: ServerTls::Disable,
            ca: String::new(),
        }
    }

    /// The key client configurations are cached under: the CA matters only
    /// when certificates are verified.
    fn cache_key(&self) -> (bool, String) {
        match self.mode {
            ServerTls::VerifyFull => (true, self.ca.clone()),
            _ => (false, String::new()),
        }
    }
}

impl Default for ServerTlsPolicy {
    fn default() -> Self {
        ServerTlsPolicy::disabled()
    }
}

type ClientConfigCache = Mutex<HashMap<(bool, String), Arc<rustls::ClientConfig>>>;

fn client_config_cache() -> &'static ClientConfigCache {
    static CACHE: OnceLock<ClientConfigCache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The rustls client configuration for a policy, built once per (mode, CA
/// path) and shared by every server connection. Errors name the CA file.
pub fn client_config(policy: &ServerTlsPolicy) -> Result<Arc<rustls::ClientConfig>, String> {
    let key = policy.cache_key();
    if let Some(config) = client_config_cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
    {
        return Ok(config.clone());
    }
    let config = build_client_config(policy)?;
    client_config_cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, config.clone());
    Ok(config)
}

/// Drops the cached client configurations so the next server connection
/// re-reads `server_tls_ca` (call on reload). Open connections are unaffected.
pub fn forget_client_configs() {
    client_config_cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
}

fn build_client_config(policy: &ServerTlsPolicy) -> Result<Arc<rustls::ClientConfig>, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?;
    let mut config = if policy.mode == ServerTls::VerifyFull {
        let mut roots = rustls::RootCertStore::empty();
        if policy.ca.is_empty() {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(
                    "server_tls = \"verify-full\": no CA certificates found in the system trust store; set server_tls_ca"
                        .to_string(),
                );
            }
        } else {
            for cert in read_certificates("server_tls_ca", &policy.ca)? {
                roots.add(cert).map_err(|e| {
                    format!(
                        "server_tls_ca \"{}\": unusable CA certificate: {e}",
                        policy.ca
                    )
                })?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        // prefer and require encrypt but, as in libpq, check no certificate.
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertificateCheck(provider())))
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(config))
}

/// Accepts any server certificate (server_tls = prefer/require), while still
/// checking that the server holds the key of the certificate it sent.
#[derive(Debug)]
struct NoCertificateCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why TLS towards a server could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The CA file or the trust store could not be loaded.
    #[error("{0}")]
    Setup(String),
    #[error("the server does not accept TLS (server_tls = \"{0}\")")]
    NotOffered(ServerTls),
    #[error("unexpected answer 0x{0:02x} to SSLRequest")]
    BadAnswer(u8),
    #[error("\"{0}\" is not a valid host name for certificate verification")]
    BadHostName(String),
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
}

/// Negotiates TLS on a freshly connected server socket as `policy` says:
/// sends SSLRequest (unless disabled) and, on 'S', runs the handshake,
/// verifying the certificate against `host` for verify-full.
pub async fn connect_server(
    mut tcp: TcpStream,
    host: &str,
    policy: &ServerTlsPolicy,
) -> Result<ServerStream, ServerTlsError> {
    if policy.mode == ServerTls::Disable {
        return Ok(ServerStream::plain(tcp)?);
    }
    // A bad CA file fails before anything is sent.
    let config = client_config(policy).map_err(ServerTlsError::Setup)?;
    let name = match ServerName::try_from(host.to_string()) {
        Ok(name) => name,
        Err(_) if policy.mode != ServerTls::VerifyFull => {
            ServerName::IpAddress(Ipv4Addr::UNSPECIFIED.into())
        }
        Err(_) => return Err(ServerTlsError::BadHostName(host.to_string())),
    };
    tcp.write_all(&SSL_REQUEST).await?;
    // Exactly one byte: anything the server sent after 'S' stays in the
    // socket and is fed to the handshake, which refuses it.
    let answer = tcp.read_u8().await?;
    match answer {
        b'S' => {}
        b'N' if policy.mode == ServerTls::Prefer => return Ok(ServerStream::plain(tcp)?),
        b'N' => return Err(ServerTlsError::NotOffered(policy.mode)),
        other => return Err(ServerTlsError::BadAnswer(other)),
    }
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(ServerTlsError::Handshake)?;
    Ok(ServerStream::Tls(Box::new(WriteThrough::new(tls))))
}

pub mod end_point;
mod files;
pub use files::file_problems;

#[cfg(test)]
mod tests;
