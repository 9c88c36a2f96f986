//! The invite HTTP API: `POST /api/v1/invites` and
//! `DELETE /api/v1/invites/{jti}`, authenticated by a clinician's token.

use crate::common::*;
use serde_json::{Value, json};
use signaling::protocol::Role;

async fn lobby_server() -> TestServer {
    let mut cfg = config();
    cfg.policy.waiting_room = true;
    start_with(cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clinician_token_creates_an_invite_that_joins_and_revocation_removes_the_invitee() {
    let s = lobby_server().await;
    let doc_token = token("api1", Role::Clinician, "Dr. A");
    let (mut doc, _) = Client::joined(s.addr, &doc_token).await;

    let r = post_invite(
        &s,
        Some(&doc_token),
        br#"{"role":"patient","ttl_secs":600}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let created = json_body(&r);
    let jti = created["jti"].as_str().unwrap().to_string();
    let invite = created["token"].as_str().unwrap().to_string();
    assert_eq!(created["role"], "patient");
    let now = signaling::token::unix_now();
    let expires = created["expires"].as_u64().unwrap();
    assert!(expires >= now + 590 && expires <= now + 610, "{created}");
    assert_eq!(
        created["url"],
        format!("http://{}/c#t={invite}", s.addr),
        "the link carries the token in the fragment"
    );

    // The invite joins the clinician's consult (from the token) and waits.
    let (mut pat, wp) = Client::joined(s.addr, &invite).await;
    assert_eq!(wp["consult"], "api1");
    assert_eq!(wp["state"], "waiting");
    assert_eq!(wp["you"]["role"], "patient");
    assert_eq!(
        doc.expect("lobby").await["waiting"][0]["id"],
        wp["you"]["id"]
    );

    let r = delete_invite(&s, &doc_token, &jti).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let bye = pat.expect("bye").await;
    assert_eq!(bye["reason"], "removed");
    pat.expect_closed().await;
    assert_eq!(doc.expect("lobby").await["waiting"], json!([]));

    let mut again = Client::connect(s.addr).await;
    again
        .send(json!({"type":"join","v":1,"token":invite}))
        .await;
    again.expect_fatal("token_revoked").await;

    let lines = s.audit_lines();
    let created_line = lines
        .iter()
        .find(|l| l["event"] == "invite_created")
        .expect("invite_created audited");
    assert_eq!(created_line["actor"]["sub"], "sub-Dr. A");
    assert_eq!(created_line["actor"]["role"], "clinician");
    assert_eq!(created_line["consult"], "api1");
    assert_eq!(created_line["outcome"], "success");
    assert_eq!(created_line["detail"]["jti"], jti);
    let revoked_line = lines
        .iter()
        .find(|l| l["event"] == "invite_revoked")
        .expect("invite_revoked audited");
    assert_eq!(revoked_line["actor"]["sub"], "sub-Dr. A");
    assert_eq!(revoked_line["outcome"], "success");
    let raw = s.audit.lock().unwrap().join("\n");
    assert!(!raw.contains(&invite), "no invite token in the audit log");
    assert!(
        !raw.contains(&doc_token),
        "no clinician token in the audit log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_works_before_the_clinician_is_connected() {
    let s = lobby_server().await;
    let doc_token = token("api2", Role::Clinician, "Dr. B");
    let r = post_invite(&s, Some(&doc_token), br#"{"role":"guest","name":"Tolk"}"#).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let created = json_body(&r);
    let (_g, wg) = Client::joined(s.addr, created["token"].as_str().unwrap()).await;
    assert_eq!(wg["you"]["role"], "guest");
    assert_eq!(wg["you"]["name"], "Tolk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clinician_tokens_may_create_or_revoke() {
    let s = lobby_server().await;
    let doc_token = token("api3", Role::Clinician, "Dr. C");
    let created = json_body(&post_invite(&s, Some(&doc_token), br#"{"role":"patient"}"#).await);
    let jti = created["jti"].as_str().unwrap();

    let patient_token = token("api3", Role::Patient, "P");
    let r = post_invite(&s, Some(&patient_token), br#"{"role":"guest"}"#).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(error_code(&r), "forbidden");
    let r = delete_invite(&s, &patient_token, jti).await;
    assert_eq!(r.status, 403);
    assert_eq!(error_code(&r), "forbidden");

    // A clinician cannot mint another clinician.
    let r = post_invite(&s, Some(&doc_token), br#"{"role":"clinician"}"#).await;
    assert_eq!(r.status, 403);
    assert_eq!(error_code(&r), "forbidden");

    let refused: Vec<Value> = s
        .audit_lines()
        .into_iter()
        .filter(|l| {
            l["outcome"] == "failure" && l["event"].as_str().unwrap().starts_with("invite_")
        })
        .collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(refused.iter().all(|l| l["reason"] == "forbidden"));
    assert_eq!(refused[0]["actor"]["role"], "patient");
    assert_eq!(refused[2]["actor"]["role"], "clinician");

    // The invite was not revoked by the patient's attempt.
    let (_p, wp) = Client::joined(s.addr, created["token"].as_str().unwrap()).await;
    assert_eq!(wp["state"], "waiting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_bad_tokens_are_401_with_their_code() {
    let s = lobby_server().await;
    let r = post_invite(&s, None, br#"{"role":"patient"}"#).await;
    assert_eq!(r.status, 401);
    assert_eq!(error_code(&r), "token_missing");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));

    let r = post_invite(&s, Some("not-a-jwt"), br#"{"role":"patient"}"#).await;
    assert_eq!(r.status, 401);
    assert_eq!(error_code(&r), "token_malformed");

    let other_secret = signaling::token::mint_hs256(
        b"some-other-secret-that-is-long-enough!!",
        &signaling::token::MintRequest {
            issuer: "spreekkamer".into(),
            audience: "spreekkamer".into(),
            sub: "x".into(),
            role: Role::Clinician,
            consult: "api4".into(),
            name: "Dr. X".into(),
            host: None,
            ttl_secs: 600,
            jti: None,
        },
        signaling::token::unix_now(),
    )
    .unwrap();
    let r = post_invite(&s, Some(&other_secret), br#"{"role":"patient"}"#).await;
    assert_eq!(r.status, 401);
    assert_eq!(error_code(&r), "token_bad_signature");
    let r = delete_invite(&s, &other_secret, "0011223344556677").await;
    assert_eq!(r.status, 401);

    // "Basic" is not a bearer token.
    let r = request(
        s.addr,
        "POST",
        "/api/v1/invites",
        &[("Authorization", "Basic dXNlcjpwYXNz")],
        Some(br#"{"role":"patient"}"#),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(error_code(&r), "token_missing");

    let rejected = s
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "token_rejected")
        .count();
    assert_eq!(rejected, 5, "every refused token is audited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_bounded_and_checked() {
    let s = lobby_server().await;
    let doc_token = token("api5", Role::Clinician, "Dr. E");
    let big = format!(r#"{{"role":"patient","name":"{}"}}"#, "x".repeat(5000));
    let r = post_invite(&s, Some(&doc_token), big.as_bytes()).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(error_code(&r), "message_too_large");

    for body in [&b"not json"[..], br#"{"role":"doctor"}"#, br#"{}"#] {
        let r = post_invite(&s, Some(&doc_token), body).await;
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(body));
        assert_eq!(error_code(&r), "bad_message");
    }
    // A name the token could not carry.
    let long_name = format!(r#"{{"role":"guest","name":"{}"}}"#, "n".repeat(81));
    let r = post_invite(&s, Some(&doc_token), long_name.as_bytes()).await;
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_consults_invite_cannot_be_revoked() {
    let s = lobby_server().await;
    let doc_a = token("api6a", Role::Clinician, "Dr. A6");
    let doc_b = token("api6b", Role::Clinician, "Dr. B6");
    let created = json_body(&post_invite(&s, Some(&doc_a), br#"{"role":"patient"}"#).await);
    let jti = created["jti"].as_str().unwrap();

    let r = delete_invite(&s, &doc_b, jti).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(error_code(&r), "unknown_invite");
    let failed = s
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "invite_revoked")
        .expect("refused revocation audited");
    assert_eq!(failed["outcome"], "failure");
    assert_eq!(failed["consult"], "api6b");

    // Still valid for its own consult.
    let (_p, wp) = Client::joined(s.addr, created["token"].as_str().unwrap()).await;
    assert_eq!(wp["consult"], "api6a");

    // The WebSocket path is held to the same rule.
    let (mut b, _) = Client::joined(s.addr, &doc_b).await;
    b.send(json!({"type":"revoke-invite","jti":jti})).await;
    let e = b.expect("error").await;
    assert_eq!(e["code"], "unknown_invite");
    assert_eq!(e["fatal"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_rate_limited_per_ip() {
    let s = lobby_server().await;
    let mut limited = 0;
    for _ in 0..(signaling::api::API_BURST + 5) {
        let r = post_invite(&s, None, br#"{"role":"patient"}"#).await;
        match r.status {
            401 => {}
            429 => {
                assert_eq!(error_code(&r), "rate_limited");
                limited += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(limited >= 1, "the burst is bounded");
}
