//! `JwtVerifier::recheck`: a session's token checked again under a reloaded
//! configuration — everything login checks except time, without fetching.

use jsonwebtoken::Algorithm;
use serde_json::json;

use super::*;

fn with_role(role: &str) -> String {
    rs256(&claims_with(
        json!({ "role": role, "iss": "https://iss", "aud": ["x", "app"] }),
    ))
}

fn strict(s: &mut JwtSettings) {
    s.issuer = "https://iss".into();
    s.audience = "app".into();
    s.allowed_roles = vec!["reader".into(), "writer".into()];
}

#[tokio::test]
async fn a_token_still_accepted_rechecks_to_the_same_identity() {
    let v = pem_verifier(RSA_PUB, strict).await;
    let token = with_role("writer");
    let at_login = v.verify(&token, "alice").await.unwrap();
    assert_eq!(v.recheck(&token, "alice"), Ok(at_login));
}

#[tokio::test]
async fn what_a_reload_takes_away_is_refused_with_the_login_cause() {
    let token = with_role("writer");
    let cases: Vec<(JwtVerifier, JwtError)> = vec![
        (
            pem_verifier(RSA_PUB, |s| {
                strict(s);
                s.allowed_roles = vec!["reader".into()];
            })
            .await,
            JwtError::RoleNotAllowed("writer".into()),
        ),
        (pem_verifier(RSA2_PUB, strict).await, JwtError::Signature),
        (
            pem_verifier(RSA_PUB, |s| {
                strict(s);
                s.issuer = "https://other".into();
            })
            .await,
            JwtError::Issuer,
        ),
        (
            pem_verifier(RSA_PUB, |s| {
                strict(s);
                s.audience = "other".into();
            })
            .await,
            JwtError::Audience,
        ),
        (
            pem_verifier(RSA_PUB, |s| {
                strict(s);
                s.algorithms = vec!["PS256".into()];
            })
            .await,
            JwtError::Algorithm,
        ),
        (
            pem_verifier(RSA_PUB, |s| {
                strict(s);
                s.username_claim = "email".into();
            })
            .await,
            JwtError::MissingClaim("email".into()),
        ),
    ];
    for (v, want) in cases {
        assert_eq!(v.recheck(&token, "alice"), Err(want.clone()), "{want:?}");
        // The same cause a login would get.
        assert_eq!(v.verify(&token, "alice").await, Err(want));
    }
}

#[tokio::test]
async fn time_is_not_checked_again() {
    let v = pem_verifier(RSA_PUB, |_| {}).await;
    let expired = rs256(&claims_with(json!({ "exp": now() - 3600 })));
    assert_eq!(v.verify(&expired, "alice").await, Err(JwtError::Expired));
    assert!(v.recheck(&expired, "alice").is_ok());
    let later = rs256(&claims_with(json!({ "nbf": now() + 3600 })));
    assert!(v.recheck(&later, "alice").is_ok());
}

#[test]
fn claims_without_a_key_still_meet_issuer_and_audience() {
    use crate::auth::jwt::verify::unverified_claims;
    let s = JwtSettings {
        issuer: "https://iss".into(),
        audience: "app".into(),
        ..JwtSettings::default()
    };
    let ok = [
        json!({ "iss": "https://iss", "aud": "app" }),
        json!({ "iss": "https://iss", "aud": ["x", "app"] }),
    ];
    for c in ok {
        assert!(unverified_claims(&rs256(&c), &s).is_ok(), "{c}");
    }
    let refused = [
        (
            json!({ "aud": "app" }),
            JwtError::MissingClaim("iss".into()),
        ),
        (
            json!({ "iss": "https://x", "aud": "app" }),
            JwtError::Issuer,
        ),
        (
            json!({ "iss": "https://iss" }),
            JwtError::MissingClaim("aud".into()),
        ),
        (
            json!({ "iss": "https://iss", "aud": ["x"] }),
            JwtError::Audience,
        ),
        (
            json!({ "iss": "https://iss", "aud": 7 }),
            JwtError::Audience,
        ),
    ];
    for (c, want) in refused {
        assert_eq!(unverified_claims(&rs256(&c), &s).err(), Some(want), "{c}");
    }
    assert!(unverified_claims(
        &sign(Algorithm::EdDSA, ED_PRIV, None, &json!({})),
        &JwtSettings::default()
    )
    .is_ok());
}
