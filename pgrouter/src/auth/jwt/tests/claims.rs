//! Time, issuer, audience and the pgrouter claims (user, role, read-only).

use std::time::{Duration, UNIX_EPOCH};

use serde_json::json;

use super::*;

async fn rsa() -> JwtVerifier {
    pem_verifier(RSA_PUB, |_| {}).await
}

#[tokio::test]
async fn expiry_and_leeway() {
    let v = rsa().await;
    let expired = rs256(&claims_with(json!({ "exp": now() - 10 })));
    assert_eq!(v.verify(&expired, "alice").await, Err(JwtError::Expired));
    let long_expired = rs256(&claims_with(json!({ "exp": 1 })));
    assert_eq!(
        v.verify(&long_expired, "alice").await,
        Err(JwtError::Expired)
    );

    let lenient = pem_verifier(RSA_PUB, |s| s.leeway_s = 60).await;
    assert!(lenient.verify(&expired, "alice").await.is_ok());
    let too_old = rs256(&claims_with(json!({ "exp": now() - 120 })));
    assert_eq!(
        lenient.verify(&too_old, "alice").await,
        Err(JwtError::Expired)
    );

    // A huge leeway is clamped, not an arithmetic overflow.
    let silly = pem_verifier(RSA_PUB, |s| s.leeway_s = u64::MAX).await;
    assert!(silly.verify(&rs256(&base_claims()), "alice").await.is_ok());
}

#[tokio::test]
async fn not_before_and_leeway() {
    let v = rsa().await;
    let future = rs256(&claims_with(json!({ "nbf": now() + 30 })));
    assert_eq!(v.verify(&future, "alice").await, Err(JwtError::NotYetValid));
    let past = rs256(&claims_with(json!({ "nbf": now() - 30 })));
    assert!(v.verify(&past, "alice").await.is_ok());
    let lenient = pem_verifier(RSA_PUB, |s| s.leeway_s = 60).await;
    assert!(lenient.verify(&future, "alice").await.is_ok());
}

#[tokio::test]
async fn exp_is_required() {
    let v = rsa().await;
    let forever = rs256(&json!({ "sub": "alice" }));
    assert_eq!(
        v.verify(&forever, "alice").await,
        Err(JwtError::MissingClaim("exp".into()))
    );
    let text = rs256(&json!({ "sub": "alice", "exp": "tomorrow" }));
    // A non-numeric exp is no usable exp.
    assert_eq!(
        v.verify(&text, "alice").await,
        Err(JwtError::MissingClaim("exp".into()))
    );
}

#[tokio::test]
async fn expires_at_is_reported() {
    let v = rsa().await;
    let exp = now() + 300;
    let ok = v
        .verify(&rs256(&claims_with(json!({ "exp": exp }))), "alice")
        .await
        .unwrap();
    assert_eq!(ok.expires_at, Some(UNIX_EPOCH + Duration::from_secs(exp)));
    let ok = v
        .verify(
            &rs256(&claims_with(json!({ "exp": exp as f64 + 0.25 }))),
            "alice",
        )
        .await
        .unwrap();
    assert_eq!(ok.expires_at, Some(UNIX_EPOCH + Duration::from_secs(exp)));
}

#[tokio::test]
async fn issuer() {
    let v = pem_verifier(RSA_PUB, |s| s.issuer = "https://idp.example".into()).await;
    let good = rs256(&claims_with(json!({ "iss": "https://idp.example" })));
    assert!(v.verify(&good, "alice").await.is_ok());
    let wrong = rs256(&claims_with(json!({ "iss": "https://evil.example" })));
    assert_eq!(v.verify(&wrong, "alice").await, Err(JwtError::Issuer));
    let missing = rs256(&base_claims());
    assert_eq!(
        v.verify(&missing, "alice").await,
        Err(JwtError::MissingClaim("iss".into()))
    );
    // No issuer configured: any (or no) iss is fine.
    assert!(rsa().await.verify(&wrong, "alice").await.is_ok());
}

#[tokio::test]
async fn audience() {
    let v = pem_verifier(RSA_PUB, |s| s.audience = "pgrouter".into()).await;
    for aud in [json!("pgrouter"), json!(["other", "pgrouter"])] {
        let token = rs256(&claims_with(json!({ "aud": aud })));
        assert!(v.verify(&token, "alice").await.is_ok(), "{aud}");
    }
    for aud in [json!("other"), json!(["other", "more"]), json!([])] {
        let token = rs256(&claims_with(json!({ "aud": aud })));
        assert_eq!(
            v.verify(&token, "alice").await,
            Err(JwtError::Audience),
            "{aud}"
        );
    }
    let missing = rs256(&base_claims());
    assert_eq!(
        v.verify(&missing, "alice").await,
        Err(JwtError::MissingClaim("aud".into()))
    );
    // No audience configured: a token carrying one is still accepted.
    let token = rs256(&claims_with(json!({ "aud": "anything" })));
    assert!(rsa().await.verify(&token, "alice").await.is_ok());
}

#[tokio::test]
async fn username_claim_must_match_the_startup_user() {
    let v = rsa().await;
    let token = rs256(&base_claims());
    assert_eq!(v.verify(&token, "bob").await, Err(JwtError::UserMismatch));
    assert_eq!(v.verify(&token, "Alice").await, Err(JwtError::UserMismatch));
    let missing = rs256(&claims_with(json!({ "sub": null })));
    assert_eq!(
        v.verify(&missing, "alice").await,
        Err(JwtError::MissingClaim("sub".into()))
    );
    let numeric = rs256(&claims_with(json!({ "sub": 42 })));
    assert_eq!(
        v.verify(&numeric, "42").await,
        Err(JwtError::MissingClaim("sub".into()))
    );

    let custom = pem_verifier(RSA_PUB, |s| s.username_claim = "preferred_username".into()).await;
    let token = rs256(&claims_with(
        json!({ "sub": "uuid-1", "preferred_username": "alice" }),
    ));
    assert_eq!(
        custom.verify(&token, "alice").await.unwrap().username,
        "alice"
    );
    assert_eq!(
        custom.verify(&rs256(&base_claims()), "alice").await,
        Err(JwtError::MissingClaim("preferred_username".into()))
    );
}

#[tokio::test]
async fn role_claim() {
    let v = rsa().await;
    let ok = v.verify(&rs256(&base_claims()), "alice").await.unwrap();
    assert_eq!(ok.role, "alice", "missing role claim means role = username");
    let ok = v
        .verify(&rs256(&claims_with(json!({ "role": "reader" }))), "alice")
        .await
        .unwrap();
    assert_eq!(ok.role, "reader");
    for bad in [json!(7), json!(["reader"]), json!("")] {
        let token = rs256(&claims_with(json!({ "role": bad })));
        assert_eq!(
            v.verify(&token, "alice").await,
            Err(JwtError::MissingClaim("role".into()))
        );
    }
    let custom = pem_verifier(RSA_PUB, |s| s.role_claim = "db_role".into()).await;
    let token = rs256(&claims_with(
        json!({ "role": "ignored", "db_role": "writer" }),
    ));
    assert_eq!(custom.verify(&token, "alice").await.unwrap().role, "writer");
    let off = pem_verifier(RSA_PUB, |s| s.role_claim = String::new()).await;
    assert_eq!(off.verify(&token, "alice").await.unwrap().role, "alice");
}

#[tokio::test]
async fn roles_that_set_role_cannot_apply_are_refused() {
    let v = rsa().await;
    // SET ROLE "none" is SET ROLE NONE: the session would run as connect_as.
    // A NUL byte would cut the SET ROLE query short inside its message.
    for bad in ["none", "web_user\u{0}x", "\u{0}"] {
        let token = rs256(&claims_with(json!({ "role": bad })));
        assert_eq!(
            v.verify(&token, "alice").await,
            Err(JwtError::RoleNotAllowed(bad.into())),
            "{bad:?}"
        );
    }
    // The username fallback is checked too.
    let token = rs256(&json!({ "sub": "none", "exp": now() + 300 }));
    assert_eq!(
        v.verify(&token, "none").await,
        Err(JwtError::RoleNotAllowed("none".into()))
    );
    // PostgreSQL would keep only the first 63 bytes of a longer name.
    let long = format!("web_user{}", "x".repeat(56));
    let token = rs256(&claims_with(json!({ "role": long })));
    assert_eq!(
        v.verify(&token, "alice").await,
        Err(JwtError::RoleNotAllowed(long.clone()))
    );
    // Other spellings are quoted role names like any other.
    let longest = "r".repeat(63);
    for fine in ["NONE", "None", "none ", "public", longest.as_str()] {
        let token = rs256(&claims_with(json!({ "role": fine })));
        assert_eq!(v.verify(&token, "alice").await.unwrap().role, fine);
    }
    // The refusal names the cause and does not echo the NUL.
    let err = JwtError::RoleNotAllowed("web_user\u{0}x".into()).to_string();
    assert_eq!(err, "token role not allowed: \"web_userx\"");
}

#[tokio::test]
async fn allowed_roles() {
    let v = pem_verifier(RSA_PUB, |s| {
        s.allowed_roles = vec!["reader".into(), "writer".into()]
    })
    .await;
    let reader = rs256(&claims_with(json!({ "role": "reader" })));
    assert_eq!(v.verify(&reader, "alice").await.unwrap().role, "reader");
    let admin = rs256(&claims_with(json!({ "role": "postgres" })));
    assert_eq!(
        v.verify(&admin, "alice").await,
        Err(JwtError::RoleNotAllowed("postgres".into()))
    );
    // The username fallback is subject to the list too.
    let none = rs256(&base_claims());
    assert_eq!(
        v.verify(&none, "alice").await,
        Err(JwtError::RoleNotAllowed("alice".into()))
    );
}

#[tokio::test]
async fn read_only_claim() {
    let v = pem_verifier(RSA_PUB, |s| s.read_only_claim = "read_only".into()).await;
    for (value, expected) in [
        (json!(true), true),
        (json!("true"), true),
        (json!("TRUE"), true),
        // Fails closed: whatever is not clearly false is read-only.
        (json!(1), true),
        (json!(-1), true),
        (json!(0.5), true),
        (json!("1"), true),
        (json!("on"), true),
        (json!("yes"), true),
        (json!("t"), true),
        (json!("y"), true),
        (json!(""), true),
        (json!("o"), true),
        (json!("maybe"), true),
        (json!("falsey"), true),
        (json!([true]), true),
        (json!([]), true),
        (json!({ "x": 1 }), true),
        // The false values: JSON false, 0 and what PostgreSQL reads as false.
        (json!(false), false),
        (json!(0), false),
        (json!(0.0), false),
        (json!(null), false),
        (json!("false"), false),
        (json!("False"), false),
        (json!("f"), false),
        (json!("fal"), false),
        (json!("off"), false),
        (json!("OF"), false),
        (json!("no"), false),
        (json!("N"), false),
        (json!("0"), false),
        (json!(" false\n"), false),
    ] {
        let token = rs256(&claims_with(json!({ "read_only": value })));
        assert_eq!(
            v.verify(&token, "alice").await.unwrap().read_only,
            expected,
            "{value}"
        );
    }
    // Claim not configured: never read-only.
    let token = rs256(&claims_with(json!({ "read_only": true })));
    assert!(!rsa().await.verify(&token, "alice").await.unwrap().read_only);
    // Claim absent: read-write.
    let token = rs256(&base_claims());
    assert!(!v.verify(&token, "alice").await.unwrap().read_only);
}

#[tokio::test]
async fn signature_is_checked_before_claims() {
    // An expired token for the wrong user signed by another key reports the
    // signature, so an attacker learns nothing about the claim rules.
    let v = rsa().await;
    let token = sign(
        jsonwebtoken::Algorithm::RS256,
        RSA2_PRIV,
        None,
        &json!({ "sub": "mallory", "exp": 1 }),
    );
    assert_eq!(v.verify(&token, "alice").await, Err(JwtError::Signature));
}
