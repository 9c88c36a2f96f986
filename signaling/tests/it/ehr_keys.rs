//! Join tokens signed by an EHR's own keys: accepted with the pinned
//! algorithm, every attack refused with its code and an audit line.

use crate::common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use signaling::token::{key_from_pem, unix_now};

const RSA_PRIVATE: &[u8] = include_bytes!("../fixtures/keys/rsa-private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../fixtures/keys/rsa-public.pem");
const ED_PRIVATE: &[u8] = include_bytes!("../fixtures/keys/ed-private.pem");
const ED_PUBLIC: &[u8] = include_bytes!("../fixtures/keys/ed-public.pem");

async fn ehr_server() -> TestServer {
    let mut cfg = config();
    cfg.keys
        .push(key_from_pem(Some("ehr-rsa".into()), Algorithm::RS256, RSA_PUBLIC).unwrap());
    cfg.keys
        .push(key_from_pem(Some("ehr-ed".into()), Algorithm::EdDSA, ED_PUBLIC).unwrap());
    start_with(cfg).await
}

fn claims() -> Value {
    let now = unix_now();
    json!({
        "iss": "spreekkamer", "aud": "spreekkamer", "exp": now + 600, "iat": now,
        "sub": "ehr-user-17", "role": "clinician", "consult": "ehr-consult-1",
        "name": "Dr. EHR", "jti": "launch-1",
    })
}

fn sign(alg: Algorithm, kid: &str, typ: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    header.typ = typ.map(String::from);
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(ED_PRIVATE).unwrap(),
        Algorithm::HS256 => EncodingKey::from_secret(RSA_PUBLIC),
        _ => unreachable!(),
    };
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ehr_signed_launch_tokens_are_accepted() {
    let s = ehr_server().await;
    for (alg, kid) in [(Algorithm::RS256, "ehr-rsa"), (Algorithm::EdDSA, "ehr-ed")] {
        let (_c, w) = Client::joined(s.addr, &sign(alg, kid, Some("JWT"), &claims())).await;
        assert_eq!(w["you"]["role"], "clinician", "{alg:?}");
        assert_eq!(w["consult"], "ehr-consult-1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asymmetric_attack_matrix_is_refused_with_codes_and_audit_lines() {
    let s = ehr_server().await;
    let good = sign(Algorithm::RS256, "ehr-rsa", Some("JWT"), &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let mut tampered = claims();
    tampered["role"] = json!("clinician");
    tampered["consult"] = json!("someone-elses-consult");
    let mut expired = claims();
    expired["exp"] = json!(unix_now() - 3600);
    let mut wrong_aud = claims();
    wrong_aud["aud"] = json!("another-service");
    let mut wrong_iss = claims();
    wrong_iss["iss"] = json!("another-ehr");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg":"none","kid":"ehr-rsa"})),
                parts[1]
            ),
            "token_bad_algorithm",
        ),
        (
            "HS256 signed with the RSA public key",
            sign(Algorithm::HS256, "ehr-rsa", Some("JWT"), &claims()),
            "token_bad_algorithm",
        ),
        (
            "unknown kid",
            sign(Algorithm::RS256, "ehr-unknown", Some("JWT"), &claims()),
            "token_bad_signature",
        ),
        (
            "EdDSA token under the RSA kid",
            sign(Algorithm::EdDSA, "ehr-rsa", Some("JWT"), &claims()),
            "token_bad_algorithm",
        ),
        (
            "expired",
            sign(Algorithm::RS256, "ehr-rsa", Some("JWT"), &expired),
            "token_expired",
        ),
        (
            "wrong audience",
            sign(Algorithm::RS256, "ehr-rsa", Some("JWT"), &wrong_aud),
            "token_wrong_audience",
        ),
        (
            "wrong issuer",
            sign(Algorithm::RS256, "ehr-rsa", Some("JWT"), &wrong_iss),
            "token_wrong_issuer",
        ),
        (
            "wrong typ",
            sign(Algorithm::RS256, "ehr-rsa", Some("at+jwt"), &claims()),
            "token_malformed",
        ),
        (
            "tampered payload",
            format!("{}.{}.{}", parts[0], b64(&tampered), parts[2]),
            "token_bad_signature",
        ),
    ];
    for (name, token, code) in &cases {
        let mut c = Client::connect(s.addr).await;
        c.send(json!({"type":"join","v":1,"token":token})).await;
        let e = c.expect("error").await;
        assert_eq!(e["code"], *code, "{name}");
        c.expect_closed().await;
    }
    let rejected: Vec<String> = s
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "token_rejected")
        .map(|l| l["reason"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = cases.iter().map(|(_, _, c)| c.to_string()).collect();
    assert_eq!(rejected, expected, "one audit line per refusal, in order");
}

fn jwk(alg: Algorithm, kid: &str) -> Value {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
        _ => EncodingKey::from_ed_pem(ED_PRIVATE).unwrap(),
    };
    let mut v = serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(&key, alg).unwrap())
        .unwrap();
    v["kid"] = json!(kid);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_jwks_url_are_fetched_and_refreshed_on_an_unknown_kid() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use warp::Filter;

    let document = Arc::new(Mutex::new(json!({"keys":[jwk(Algorithm::RS256, "rot-1")]})));
    let fetches = Arc::new(AtomicUsize::new(0));
    let route = {
        let (document, fetches) = (document.clone(), fetches.clone());
        warp::path!(".well-known" / "jwks.json").map(move || {
            fetches.fetch_add(1, Ordering::SeqCst);
            warp::reply::json(&*document.lock().unwrap())
        })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ehr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());

    let mut cfg = config();
    cfg.jwks_url = Some(format!("http://{ehr}/.well-known/jwks.json"));
    cfg.jwks_min_refresh = std::time::Duration::ZERO;
    let s = start_with(cfg).await;
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "fetched at start");

    let (_a, w) = Client::joined(
        s.addr,
        &sign(Algorithm::RS256, "rot-1", Some("JWT"), &claims()),
    )
    .await;
    assert_eq!(w["you"]["role"], "clinician");
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "a known kid needs no fetch"
    );

    // The EHR rotates to an Ed25519 key.
    *document.lock().unwrap() = json!({"keys":[jwk(Algorithm::EdDSA, "rot-2")]});
    let mut other = claims();
    other["sub"] = json!("ehr-user-18");
    let (_b, w) = Client::joined(
        s.addr,
        &sign(Algorithm::EdDSA, "rot-2", Some("JWT"), &other),
    )
    .await;
    assert_eq!(w["you"]["id"].as_str().unwrap().len(), 16);
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        2,
        "refreshed for the new kid"
    );

    // The retired key no longer works once the JWKS dropped it.
    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"join","v":1,"token":sign(Algorithm::RS256, "rot-1", Some("JWT"), &claims())}))
        .await;
    c.expect_fatal("token_bad_signature").await;
}
