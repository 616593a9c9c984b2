//! PEM key loading, key types, signatures and the algorithm rules.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use super::*;

#[tokio::test]
async fn valid_tokens_of_every_key_type() {
    let cases = [
        (Algorithm::RS256, RSA_PRIV, RSA_PUB),
        (Algorithm::RS512, RSA_PRIV, RSA_PUB),
        (Algorithm::PS256, RSA_PRIV, RSA_PUB),
        (Algorithm::RS256, RSA_PRIV, RSA_PUB_PKCS1),
        (Algorithm::ES256, EC256_PRIV, EC256_PUB),
        (Algorithm::ES256, EC256_PRIV, EC256_CERT),
        (Algorithm::ES384, EC384_PRIV, EC384_PUB),
        (Algorithm::EdDSA, ED_PRIV, ED_PUB),
    ];
    for (alg, private, public) in cases {
        let v = pem_verifier(public, |_| {}).await;
        let token = sign(alg, private, Some("ignored-with-pem"), &base_claims());
        let ok = v
            .verify(&token, "alice")
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(ok.username, "alice");
        assert_eq!(v.jwks_fetches(), (0, 0));
    }
}

#[tokio::test]
async fn key_type_is_detected() {
    for (public, kind) in [
        (RSA_PUB, KeyKind::Rsa),
        (RSA_PUB_PKCS1, KeyKind::Rsa),
        (EC256_PUB, KeyKind::EcP256),
        (EC256_CERT, KeyKind::EcP256),
        (EC384_PUB, KeyKind::EcP384),
        (ED_PUB, KeyKind::Ed25519),
    ] {
        assert_eq!(
            super::super::keys::from_pem(public.as_bytes())
                .unwrap()
                .kind,
            kind
        );
    }
}

#[tokio::test]
async fn bad_key_files_are_configuration_errors() {
    let private = try_pem_verifier(RSA_PRIV, |_| {}).await.unwrap_err();
    assert!(
        private.contains("PRIVATE KEY") && private.contains("public key"),
        "{private}"
    );
    let pkcs8 = try_pem_verifier(EC256_PRIV, |_| {}).await.unwrap_err();
    assert!(pkcs8.contains("PRIVATE KEY"), "{pkcs8}");
    let garbage = try_pem_verifier("hello", |_| {}).await.unwrap_err();
    assert!(garbage.contains("public_key_file"), "{garbage}");
    let two = format!("{RSA_PUB}{EC256_PUB}");
    assert!(try_pem_verifier(&two, |_| {})
        .await
        .unwrap_err()
        .contains("more than one"));
    let missing = JwtVerifier::new(JwtSettings {
        public_key_file: "/nonexistent/jwt.pem".into(),
        ..JwtSettings::default()
    })
    .await
    .unwrap_err();
    // The key is named apart from the message, so the caller can report
    // it with file and line (router.toml:N: jwt.public_key_file: ...).
    assert_eq!(missing.key, "public_key_file");
    assert!(
        missing
            .message
            .starts_with("cannot read \"/nonexistent/jwt.pem\": "),
        "{missing}"
    );
    // An Ed25519 key with algorithms = ["RS256", "ES256"] can verify nothing.
    let unusable = try_pem_verifier(ED_PUB, |s| {
        s.algorithms = vec!["RS256".into(), "ES256".into()]
    })
    .await
    .unwrap_err();
    assert!(unusable.contains("Ed25519"), "{unusable}");
    // Exactly one key source.
    assert!(JwtVerifier::new(JwtSettings::default()).await.is_err());
    let both = try_pem_verifier(RSA_PUB, |s| s.jwks_url = "http://127.0.0.1:1/jwks".into()).await;
    assert!(both.is_err());
}

#[test]
fn check_offline_loads_the_key_file_without_the_network() {
    let path = temp_file("not a key");
    let pem = |file: &std::path::Path| JwtSettings {
        public_key_file: file.to_string_lossy().into_owned(),
        ..JwtSettings::default()
    };
    let err = super::super::check_offline(&pem(&path)).unwrap_err();
    assert_eq!(err.key, "public_key_file");
    assert!(err.message.contains("no PEM block"), "{err}");
    std::fs::write(&path, RSA_PUB).unwrap();
    assert_eq!(super::super::check_offline(&pem(&path)), Ok(()));
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        super::super::check_offline(&pem(std::path::Path::new("/nonexistent.pem")))
            .unwrap_err()
            .key,
        "public_key_file"
    );
    // A JWKS is not fetched (nothing listens there), and that is no problem.
    let jwks = JwtSettings {
        jwks_url: "http://127.0.0.1:1/jwks.json".into(),
        ..JwtSettings::default()
    };
    assert_eq!(super::super::check_offline(&jwks), Ok(()));
    let bad_alg = JwtSettings {
        algorithms: vec!["HS256".into()],
        ..jwks
    };
    assert_eq!(
        super::super::check_offline(&bad_alg).unwrap_err().key,
        "algorithms"
    );
}

#[tokio::test]
async fn none_and_hmac_cannot_be_allowed() {
    for alg in ["none", "HS256", "HS384", "HS512", "XX999"] {
        let err = try_pem_verifier(RSA_PUB, |s| s.algorithms = vec!["RS256".into(), alg.into()])
            .await
            .unwrap_err();
        assert!(err.contains("algorithms"), "{err}");
    }
    assert!(try_pem_verifier(RSA_PUB, |s| s.algorithms.clear())
        .await
        .is_err());
}

#[tokio::test]
async fn tampered_payload_fails_signature() {
    let v = pem_verifier(RSA_PUB, |_| {}).await;
    let token = rs256(&json!({ "sub": "alice", "exp": now() + 300, "role": "reader" }));
    let parts: Vec<&str> = token.split('.').collect();
    let forged = b64(
        json!({ "sub": "alice", "exp": now() + 300, "role": "admin" })
            .to_string()
            .as_bytes(),
    );
    let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
    assert_eq!(v.verify(&tampered, "alice").await, Err(JwtError::Signature));
    // A flipped signature byte.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[10] ^= 1;
    let bad_sig = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
    assert_eq!(v.verify(&bad_sig, "alice").await, Err(JwtError::Signature));
}

#[tokio::test]
async fn signature_from_another_key_fails() {
    let v = pem_verifier(RSA_PUB, |_| {}).await;
    let token = sign(Algorithm::RS256, RSA2_PRIV, None, &base_claims());
    assert_eq!(v.verify(&token, "alice").await, Err(JwtError::Signature));
    let v = pem_verifier(RSA2_PUB, |_| {}).await;
    assert!(v.verify(&token, "alice").await.is_ok());
}

#[tokio::test]
async fn alg_none_is_refused() {
    let v = pem_verifier(RSA_PUB, |_| {}).await;
    let payload = b64(base_claims().to_string().as_bytes());
    for alg in ["none", "None", "NONE"] {
        let header = b64(json!({ "alg": alg, "typ": "JWT" }).to_string().as_bytes());
        let token = format!("{header}.{payload}.");
        assert_eq!(
            v.verify(&token, "alice").await,
            Err(JwtError::Algorithm),
            "{alg}"
        );
    }
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    // The key-confusion attack: HMAC keyed with the public key's PEM bytes.
    for public in [RSA_PUB, EC256_PUB, ED_PUB] {
        let v = pem_verifier(public, |_| {}).await;
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let token = jsonwebtoken::encode(
                &Header::new(alg),
                &base_claims(),
                &EncodingKey::from_secret(public.as_bytes()),
            )
            .unwrap();
            assert_eq!(v.verify(&token, "alice").await, Err(JwtError::Algorithm));
        }
    }
}

#[tokio::test]
async fn algorithm_outside_the_allow_list_is_refused() {
    let v = pem_verifier(RSA_PUB, |s| s.algorithms = vec!["RS256".into()]).await;
    for alg in [Algorithm::RS384, Algorithm::PS256] {
        let token = sign(alg, RSA_PRIV, None, &base_claims());
        assert_eq!(
            v.verify(&token, "alice").await,
            Err(JwtError::Algorithm),
            "{alg:?}"
        );
    }
    assert!(v.verify(&rs256(&base_claims()), "alice").await.is_ok());
}

#[tokio::test]
async fn header_alg_must_fit_the_key_type() {
    // ES256 token against an RSA key, both algorithms allowed.
    let v = pem_verifier(RSA_PUB, |s| {
        s.algorithms = vec!["RS256".into(), "ES256".into()]
    })
    .await;
    let token = sign(Algorithm::ES256, EC256_PRIV, None, &base_claims());
    assert_eq!(v.verify(&token, "alice").await, Err(JwtError::Algorithm));
    // ES384 token against a P-256 key.
    let v = pem_verifier(EC256_PUB, |_| {}).await;
    let token = sign(Algorithm::ES384, EC384_PRIV, None, &base_claims());
    assert_eq!(v.verify(&token, "alice").await, Err(JwtError::Algorithm));
    // EdDSA token against a P-256 key.
    let token = sign(Algorithm::EdDSA, ED_PRIV, None, &base_claims());
    assert_eq!(v.verify(&token, "alice").await, Err(JwtError::Algorithm));
}

#[tokio::test]
async fn malformed_tokens() {
    let v = pem_verifier(RSA_PUB, |_| {}).await;
    let valid = rs256(&base_claims());
    let parts: Vec<&str> = valid.split('.').collect();
    let not_json = format!("{}.{}.{}", parts[0], b64(b"not json"), parts[2]);
    let cases = [
        "".to_string(),
        "secret-password".to_string(),
        "a.b".to_string(),
        "a.b.c.d.e".to_string(),
        format!("!!!.{}.{}", parts[1], parts[2]),
        format!("{}.{}", b64(b"[1,2]"), "x.y"),
        format!("{}.{}.{}", b64(br#"{"typ":"JWT"}"#), parts[1], parts[2]),
        format!(
            "{}.{}.{}",
            b64(br#"{"alg":"RS256","kid":7}"#),
            parts[1],
            parts[2]
        ),
        format!(
            "{}.{}.{}",
            b64(br#"{"alg":"RS256","crit":["exp"]}"#),
            parts[1],
            parts[2]
        ),
        format!("{}.{}.!!!", parts[0], parts[1]),
        "x".repeat(70_000),
    ];
    for token in cases {
        match v.verify(&token, "alice").await {
            Err(JwtError::Malformed(_)) => {}
            other => panic!("{token:.40}: {other:?}"),
        }
    }
    // Signature checked before the payload is parsed.
    assert_eq!(v.verify(&not_json, "alice").await, Err(JwtError::Signature));
}

#[tokio::test]
async fn large_tokens_up_to_the_login_message_limit_are_verified() {
    // Tokens with many group claims reach tens of KiB; one that fits in a
    // password message (64 KiB) is verified like any other.
    let v = pem_verifier(RSA_PUB, |_| {}).await;
    let groups: Vec<String> = (0..2000).map(|i| format!("group-{i:05}")).collect();
    let token = rs256(&claims_with(json!({ "groups": groups })));
    assert!(token.len() > 32 * 1024, "{}", token.len());
    assert!(token.len() < 64 * 1024 - 5);
    assert!(v.verify(&token, "alice").await.is_ok());
    assert!(super::super::looks_like_jwt(&token));
}

#[test]
fn looks_like_jwt_tells_tokens_from_passwords() {
    assert!(super::super::looks_like_jwt(&rs256(&base_claims())));
    let none = format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(b"{}"));
    assert!(
        super::super::looks_like_jwt(&none),
        "refused later, but it is a JWT"
    );
    for password in [
        "secret",
        "a.b.c",
        "hunter2.hunter2.hunter2",
        "",
        "...",
        "x.y.z.w",
    ] {
        assert!(!super::super::looks_like_jwt(password), "{password}");
    }
}
