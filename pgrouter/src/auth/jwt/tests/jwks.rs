//! JWKS: lookup by kid, refresh on unknown kid, single flight, rate limit,
//! refresh before a login once the TTL is over, and keeping the last good
//! keys. The set is served by a tiny HTTP/1.1 server on 127.0.0.1 that
//! counts requests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

struct Server {
    addr: SocketAddr,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    up: Arc<AtomicBool>,
}

impl Server {
    /// Serves `keys` as a JWKS; each answer is delayed by `delay` so
    /// concurrent logins overlap with the fetch.
    async fn start(keys: Vec<Value>, delay: Duration) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server {
            addr: listener.local_addr().unwrap(),
            body: Arc::new(Mutex::new(String::new())),
            hits: Arc::new(AtomicUsize::new(0)),
            up: Arc::new(AtomicBool::new(true)),
        };
        server.serve(keys);
        let (body, hits, up) = (server.body.clone(), server.hits.clone(), server.up.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (body, hits, up) = (body.clone(), hits.clone(), up.clone());
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    assert!(req.starts_with(b"GET /jwks.json HTTP/1.1\r\n"));
                    hits.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    let (status, body) = if up.load(Ordering::SeqCst) {
                        ("200 OK", body.lock().unwrap().clone())
                    } else {
                        ("503 Service Unavailable", "down".to_string())
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        server
    }

    fn serve(&self, keys: Vec<Value>) {
        *self.body.lock().unwrap() = json!({ "keys": keys }).to_string();
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn settings(&self, ttl_s: u64, min_interval_s: u64) -> JwtSettings {
        JwtSettings {
            jwks_url: format!("http://{}/jwks.json", self.addr),
            jwks_cache_ttl_s: ttl_s,
            jwks_min_refresh_interval_s: min_interval_s,
            algorithms: all_algs(),
            ..JwtSettings::default()
        }
    }
}

fn rsa_token(kid: Option<&str>) -> String {
    sign(Algorithm::RS256, RSA_PRIV, kid, &base_claims())
}

fn rsa2_token(kid: Option<&str>) -> String {
    sign(Algorithm::RS256, RSA2_PRIV, kid, &base_claims())
}

#[tokio::test]
async fn keys_are_found_by_kid() {
    let server = Server::start(
        vec![
            // Keys a real provider may publish next to its signing keys:
            // skipped, not fatal.
            json!({ "kty": "RSA", "kid": "enc", "use": "enc", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB" }),
            json!({ "kty": "oct", "kid": "hmac", "k": b64(RSA_PUB.as_bytes()) }),
            json!({ "kty": "XYZ", "kid": "future" }),
            jwk(RSA_PUB, Some("rsa"), Some("RS256")),
            jwk(EC256_PUB, Some("ec256"), None),
            jwk(EC384_PUB, Some("ec384"), Some("ES384")),
            jwk(ED_PUB, Some("ed"), Some("EdDSA")),
        ],
        Duration::ZERO,
    )
    .await;
    let v = JwtVerifier::new(server.settings(300, 10)).await.unwrap();
    assert_eq!(v.jwks_fetches(), (1, 0));
    for (alg, private, kid) in [
        (Algorithm::RS256, RSA_PRIV, "rsa"),
        (Algorithm::ES256, EC256_PRIV, "ec256"),
        (Algorithm::ES384, EC384_PRIV, "ec384"),
        (Algorithm::EdDSA, ED_PRIV, "ed"),
    ] {
        let token = sign(alg, private, Some(kid), &base_claims());
        assert!(v.verify(&token, "alice").await.is_ok(), "{kid}");
    }
    // The kid selects the key: a token naming another key fails.
    let wrong_kid = sign(Algorithm::RS256, RSA_PRIV, Some("ec256"), &base_claims());
    assert_eq!(
        v.verify(&wrong_kid, "alice").await,
        Err(JwtError::Algorithm)
    );
    // A JWK pinned to RS256 refuses PS256 even though the key could verify it.
    let ps = sign(Algorithm::PS256, RSA_PRIV, Some("rsa"), &base_claims());
    assert_eq!(v.verify(&ps, "alice").await, Err(JwtError::Algorithm));
    // The oct key was skipped: HS256 "signed" with it is refused anyway.
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some("hmac".into()),
            ..jsonwebtoken::Header::new(Algorithm::HS256)
        },
        &base_claims(),
        &jsonwebtoken::EncodingKey::from_secret(RSA_PUB.as_bytes()),
    )
    .unwrap();
    assert_eq!(v.verify(&hs, "alice").await, Err(JwtError::Algorithm));
    // Nothing above needed another fetch except unknown kids (none here).
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn token_without_kid_uses_a_single_key_only() {
    let server = Server::start(vec![jwk(RSA_PUB, Some("a"), None)], Duration::ZERO).await;
    let v = JwtVerifier::new(server.settings(300, 0)).await.unwrap();
    assert!(v.verify(&rsa_token(None), "alice").await.is_ok());
    server.serve(vec![
        jwk(RSA_PUB, Some("a"), None),
        jwk(RSA2_PUB, Some("b"), None),
    ]);
    let v = JwtVerifier::new(server.settings(300, 0)).await.unwrap();
    assert_eq!(
        v.verify(&rsa_token(None), "alice").await,
        Err(JwtError::UnknownKey)
    );
}

#[tokio::test]
async fn unknown_kid_refreshes_once_and_finds_a_rotated_key() {
    let server = Server::start(vec![jwk(RSA_PUB, Some("old"), None)], Duration::ZERO).await;
    let v = JwtVerifier::new(server.settings(300, 60)).await.unwrap();
    assert_eq!(server.hits(), 1);
    // The provider rotates: the new key signs tokens before we refetched.
    server.serve(vec![
        jwk(RSA_PUB, Some("old"), None),
        jwk(RSA2_PUB, Some("new"), None),
    ]);
    assert!(v.verify(&rsa2_token(Some("new")), "alice").await.is_ok());
    assert_eq!(server.hits(), 2);
    assert!(v.verify(&rsa2_token(Some("new")), "alice").await.is_ok());
    assert!(v.verify(&rsa_token(Some("old")), "alice").await.is_ok());
    assert_eq!(server.hits(), 2);
    assert_eq!(v.jwks_fetches(), (2, 0));
    // Rate limit: another unknown kid within the interval does not fetch.
    assert_eq!(
        v.verify(&rsa_token(Some("nope")), "alice").await,
        Err(JwtError::UnknownKey)
    );
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn burst_of_unknown_kids_shares_one_fetch() {
    let server = Server::start(
        vec![jwk(RSA_PUB, Some("old"), None)],
        Duration::from_millis(200),
    )
    .await;
    let v = Arc::new(JwtVerifier::new(server.settings(300, 60)).await.unwrap());
    assert_eq!(server.hits(), 1);
    server.serve(vec![jwk(RSA2_PUB, Some("new"), None)]);

    let burst = |kid: &'static str| {
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let v = v.clone();
                tokio::spawn(async move { v.verify(&rsa2_token(Some(kid)), "alice").await })
            })
            .collect();
        async move {
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        }
    };
    // 50 concurrent logins with a kid only the refreshed set has: one fetch.
    let results = burst("new").await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(server.hits(), 2);
    // 50 with a kid nobody has, within the interval: no fetch at all.
    let results = burst("ghost").await;
    assert!(results.iter().all(|r| *r == Err(JwtError::UnknownKey)));
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn burst_without_rate_limit_still_fetches_once() {
    // Even with jwks_min_refresh_interval_s = 0, logins that waited for an
    // in-flight fetch share its result instead of fetching again.
    let server = Server::start(
        vec![jwk(RSA_PUB, Some("old"), None)],
        Duration::from_millis(200),
    )
    .await;
    let v = Arc::new(JwtVerifier::new(server.settings(300, 0)).await.unwrap());
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let v = v.clone();
            tokio::spawn(async move { v.verify(&rsa_token(Some("ghost")), "alice").await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Err(JwtError::UnknownKey));
    }
    assert_eq!(server.hits(), 2, "startup fetch + one shared refresh");
}

#[tokio::test]
async fn endpoint_down_keeps_the_last_good_keys() {
    let server = Server::start(vec![jwk(RSA_PUB, Some("k1"), None)], Duration::ZERO).await;
    // TTL 0: every login finds the set stale and triggers a refresh.
    let v = JwtVerifier::new(server.settings(0, 0)).await.unwrap();
    server.up.store(false, Ordering::SeqCst);
    for _ in 0..3 {
        assert!(v.verify(&rsa_token(Some("k1")), "alice").await.is_ok());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Unknown kid: the inline refresh fails, old keys stay.
    assert_eq!(
        v.verify(&rsa_token(Some("k2")), "alice").await,
        Err(JwtError::UnknownKey)
    );
    assert!(v.verify(&rsa_token(Some("k1")), "alice").await.is_ok());
    let (ok, failed) = v.jwks_fetches();
    assert_eq!(ok, 1);
    assert!(failed >= 2, "failed = {failed}");
    // Garbage from the endpoint is a failure too, not an empty key set.
    server.up.store(true, Ordering::SeqCst);
    *server.body.lock().unwrap() = "{\"keys\": []}".into();
    assert_eq!(
        v.verify(&rsa_token(Some("k2")), "alice").await,
        Err(JwtError::UnknownKey)
    );
    assert!(v.verify(&rsa_token(Some("k1")), "alice").await.is_ok());
}

#[tokio::test]
async fn expired_cache_is_refreshed_before_the_login() {
    let server = Server::start(vec![jwk(RSA_PUB, Some("k"), None)], Duration::ZERO).await;
    let v = JwtVerifier::new(server.settings(0, 0)).await.unwrap();
    // Same kid, new key material: only a TTL refresh can pick it up, and
    // the login that finds the set expired waits for it.
    server.serve(vec![jwk(RSA2_PUB, Some("k"), None)]);
    assert!(v.verify(&rsa2_token(Some("k")), "alice").await.is_ok());
    assert_eq!(v.jwks_fetches(), (2, 0));
}

#[tokio::test]
async fn key_removed_from_the_jwks_is_refused_once_the_ttl_is_over() {
    let server = Server::start(
        vec![
            jwk(RSA_PUB, Some("k1"), None),
            jwk(RSA2_PUB, Some("k2"), None),
        ],
        Duration::ZERO,
    )
    .await;
    // A long rate-limit interval: the TTL refresh is the first attempt
    // after start-up, so the interval does not hold it back.
    let v = JwtVerifier::new(server.settings(1, 60)).await.unwrap();
    assert!(v.verify(&rsa_token(Some("k1")), "alice").await.is_ok());
    server.serve(vec![jwk(RSA2_PUB, Some("k2"), None)]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        v.verify(&rsa_token(Some("k1")), "alice").await,
        Err(JwtError::UnknownKey)
    );
    assert_eq!(server.hits(), 2);
    assert!(v.verify(&rsa2_token(Some("k2")), "alice").await.is_ok());
    assert_eq!(server.hits(), 2, "the refreshed set is fresh again");
}

#[tokio::test]
async fn logins_after_the_ttl_share_one_fetch() {
    let server = Server::start(
        vec![jwk(RSA_PUB, Some("k"), None)],
        Duration::from_millis(200),
    )
    .await;
    // TTL 0 and no rate limit: every login finds the set expired; those
    // that arrive while a fetch is in flight wait for it and share it.
    let v = Arc::new(JwtVerifier::new(server.settings(0, 0)).await.unwrap());
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let v = v.clone();
            tokio::spawn(async move { v.verify(&rsa_token(Some("k")), "alice").await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().is_ok());
    }
    assert_eq!(server.hits(), 2, "startup fetch + one shared refresh");
}

#[tokio::test]
async fn expired_cache_and_endpoint_down_use_the_last_good_keys() {
    let server = Server::start(vec![jwk(RSA_PUB, Some("k"), None)], Duration::ZERO).await;
    let v = JwtVerifier::new(server.settings(0, 0)).await.unwrap();
    server.up.store(false, Ordering::SeqCst);
    assert!(v.verify(&rsa_token(Some("k")), "alice").await.is_ok());
    assert_eq!(v.jwks_fetches(), (1, 1), "the login tried, then fell back");
    // An unknown kid gets no second attempt in the same login.
    assert_eq!(
        v.verify(&rsa_token(Some("other")), "alice").await,
        Err(JwtError::UnknownKey)
    );
    assert_eq!(v.jwks_fetches(), (1, 2));
}

#[tokio::test]
async fn fresh_cache_is_not_refetched() {
    let server = Server::start(vec![jwk(RSA_PUB, Some("k"), None)], Duration::ZERO).await;
    let v = JwtVerifier::new(server.settings(300, 0)).await.unwrap();
    for _ in 0..10 {
        assert!(v.verify(&rsa_token(Some("k")), "alice").await.is_ok());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn failed_first_fetch_is_not_fatal() {
    let server = Server::start(vec![jwk(RSA_PUB, Some("k"), None)], Duration::ZERO).await;
    server.up.store(false, Ordering::SeqCst);
    let v = JwtVerifier::new(server.settings(300, 0)).await.unwrap();
    assert_eq!(v.jwks_fetches(), (0, 1));
    let err = v.verify(&rsa_token(Some("k")), "alice").await.unwrap_err();
    assert!(matches!(err, JwtError::KeysUnavailable(_)), "{err:?}");
    assert_eq!(err.reason(), "unknown key");
    server.up.store(true, Ordering::SeqCst);
    assert!(v.verify(&rsa_token(Some("k")), "alice").await.is_ok());
    assert_eq!(v.jwks_fetches(), (1, 2));
}

#[tokio::test]
async fn unreachable_endpoint_at_startup() {
    // Nothing listens on the port: the connect error is logged, not fatal.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let s = JwtSettings {
        jwks_url: format!("http://{addr}/jwks.json"),
        jwks_min_refresh_interval_s: 60,
        ..JwtSettings::default()
    };
    let v = JwtVerifier::new(s).await.unwrap();
    assert_eq!(v.jwks_fetches(), (0, 1));
    // The first login retries; later ones within the interval do not.
    for _ in 0..3 {
        let err = v.verify(&rsa_token(Some("k")), "alice").await.unwrap_err();
        assert!(matches!(err, JwtError::KeysUnavailable(_)), "{err:?}");
        assert_eq!(v.jwks_fetches(), (0, 2));
    }
}

#[tokio::test]
async fn bad_urls_are_configuration_errors() {
    for url in [
        "ftp://idp.example/jwks",
        "not a url",
        "/relative/path",
        "http:///nohost",
    ] {
        let s = JwtSettings {
            jwks_url: url.into(),
            ..JwtSettings::default()
        };
        let err = JwtVerifier::new(s).await.unwrap_err();
        assert_eq!(err.key, "jwks_url", "{url}: {err}");
    }
}

#[tokio::test]
async fn https_url_prepares_a_verifying_client() {
    // Nothing listens: this exercises the TLS set-up (system roots or the
    // bundled fallback) and shows the failure is logged, not fatal.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let s = JwtSettings {
        jwks_url: format!("https://{addr}/jwks.json"),
        ..JwtSettings::default()
    };
    let v = JwtVerifier::new(s).await.unwrap();
    assert_eq!(v.jwks_fetches(), (0, 1));
}

#[tokio::test]
async fn https_to_a_plain_http_server_fails_cleanly() {
    // A server that answers in plain HTTP at once: the TLS handshake fails.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let _ = sock.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let s = JwtSettings {
        jwks_url: format!("https://{addr}/jwks.json"),
        ..JwtSettings::default()
    };
    let started = std::time::Instant::now();
    let v = JwtVerifier::new(s).await.unwrap();
    assert_eq!(v.jwks_fetches(), (0, 1));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn recheck_uses_the_cached_set_without_fetching() {
    let server = Server::start(
        vec![
            jwk(RSA_PUB, Some("k1"), None),
            jwk(RSA2_PUB, Some("k2"), None),
        ],
        Duration::ZERO,
    )
    .await;
    let v = JwtVerifier::new(server.settings(300, 0)).await.unwrap();
    assert!(v.recheck(&rsa_token(Some("k1")), "alice").is_ok());
    // A kid the fetched set lacks is refused at once, without a fetch.
    assert_eq!(
        v.recheck(&rsa_token(Some("k3")), "alice"),
        Err(JwtError::UnknownKey)
    );
    // The key of the kid must verify the signature.
    assert_eq!(
        v.recheck(&rsa_token(Some("k2")), "alice"),
        Err(JwtError::Signature)
    );
    assert_eq!(server.hits(), 1);
    // A verifier built (at a reload) from a set without k1 refuses it.
    server.serve(vec![jwk(RSA2_PUB, Some("k2"), None)]);
    let reloaded = JwtVerifier::new(server.settings(300, 0)).await.unwrap();
    assert_eq!(
        reloaded.recheck(&rsa_token(Some("k1")), "alice"),
        Err(JwtError::UnknownKey)
    );
}

#[tokio::test]
async fn recheck_with_no_set_fetched_checks_only_the_claims() {
    let server = Server::start(vec![jwk(RSA_PUB, Some("k1"), None)], Duration::ZERO).await;
    server.up.store(false, Ordering::SeqCst);
    let mut settings = server.settings(300, 0);
    settings.allowed_roles = vec!["reader".into()];
    let v = JwtVerifier::new(settings).await.unwrap();
    let reader = sign(
        Algorithm::RS256,
        RSA_PRIV,
        Some("k1"),
        &claims_with(json!({ "role": "reader" })),
    );
    let writer = sign(
        Algorithm::RS256,
        RSA_PRIV,
        Some("k1"),
        &claims_with(json!({ "role": "writer" })),
    );
    // The endpoint is down: the signature checked at login stands.
    assert!(v.recheck(&reader, "alice").is_ok());
    assert_eq!(
        v.recheck(&writer, "alice"),
        Err(JwtError::RoleNotAllowed("writer".into()))
    );
}
