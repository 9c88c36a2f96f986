//! The link check (issue 14): `check {v, token}` as the first message is
//! answered with one `link-check` saying what a `join` would say now, and
//! the server closes; nobody joins, nobody is told.

use crate::common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use signaling::protocol::Role;
use signaling::token::{MintRequest, mint_hs256, unix_now};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const CONTACT: &str = "Vragen? Bel de polikliniek: 020 123 45 67";

async fn server(waiting_room: bool) -> TestServer {
    let mut cfg = config();
    cfg.policy.waiting_room = waiting_room;
    cfg.contact = Some(CONTACT.into());
    // Every refusal's audit line is asserted: none summarized away.
    cfg.audit_failures_per_second = 1_000;
    start_with(cfg).await
}

fn request(consult: &str, role: Role, name: &str) -> MintRequest {
    MintRequest {
        issuer: "spreekkamer".into(),
        audience: "spreekkamer".into(),
        sub: format!("sub-{name}"),
        role,
        consult: consult.into(),
        name: name.into(),
        host: None,
        ttl_secs: 3600,
        jti: None,
    }
}

fn mint(req: &MintRequest) -> String {
    mint_hs256(SECRET.as_bytes(), req, unix_now()).expect("mints")
}

/// Send `check` and return the one reply; the server must then close the
/// connection normally, with nothing else in between.
async fn check(s: &TestServer, token: &str) -> Value {
    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"check","v":1,"token":token})).await;
    reply_then_normal_close(&mut c).await
}

async fn reply_then_normal_close(c: &mut Client) -> Value {
    let reply = match c.frame().await {
        Frame::Json(v) => v,
        Frame::Closed => panic!("closed without a link-check"),
    };
    assert_eq!(reply["type"], "link-check", "{reply}");
    let close = tokio::time::timeout(WAIT, c.ws.next())
        .await
        .expect("the server closes after the reply");
    match close {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::Normal, "{frame:?}")
        }
        other => panic!("expected a normal close after {reply}, got {other:?}"),
    }
    reply
}

/// The code a `join` with `token` is refused with (a fresh connection).
async fn join_refusal(s: &TestServer, token: &str) -> String {
    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"join","v":1,"token":token})).await;
    let e = c.expect("error").await;
    assert_eq!(e["fatal"], true, "{e}");
    e["code"].as_str().unwrap().to_string()
}

/// Assert `reply` is a refusal with exactly `code` and the contact line,
/// and nothing the token says.
fn assert_refused(reply: &Value, code: &str) {
    assert_eq!(
        reply,
        &json!({"type":"link-check","ok":false,"code":code,"contact":CONTACT}),
    );
}

/// Every message a connected client receives within `window` (a short
/// quiet period: nothing is expected).
async fn received_within(c: &mut Client, window: Duration) -> Vec<Value> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(frame) = tokio::time::timeout_at(deadline, c.ws.next()).await {
        match frame {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if !background(&v) {
                    seen.push(v);
                }
            }
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_link_gets_its_claims_and_the_contact_line_and_no_audit_line() {
    let s = server(true).await;
    let mut req = request("lc1", Role::Patient, "Mw. De Vries");
    req.host = Some("Dr. Jansen".into());
    let with_host = mint(&req);
    let before = unix_now();
    let reply = check(&s, &with_host).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["role"], "patient");
    assert_eq!(reply["name"], "Mw. De Vries");
    assert_eq!(reply["host"], "Dr. Jansen");
    assert_eq!(reply["contact"], CONTACT);
    let expires = reply["expires"].as_u64().expect("expires");
    assert!(
        (before + 3600..=unix_now() + 3600).contains(&expires),
        "{expires}"
    );
    let keys: Vec<&String> = reply.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["contact", "expires", "host", "name", "ok", "role", "type"],
        "nothing but what the token says: {reply}"
    );
    // A check accesses nothing: not a single audit line.
    assert_eq!(s.audit_lines(), Vec::<Value>::new());

    // Without a host claim and without a contact line, neither field.
    let plain = start().await;
    let reply = check(&plain, &token("lc1", Role::Guest, "Tolk")).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["role"], "guest");
    assert!(reply.get("host").is_none(), "{reply}");
    assert!(reply.get("contact").is_none(), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_carries_the_host_claim_and_the_contact_line() {
    let s = server(true).await;
    let (_doc, wd) = Client::joined(s.addr, &token("lc2", Role::Clinician, "Dr. Jansen")).await;
    assert!(
        wd.get("host").is_none(),
        "the clinician's token has no host"
    );
    assert_eq!(wd["contact"], CONTACT);
    let mut req = request("lc2", Role::Patient, "Mw. B");
    req.host = Some("Dr. Jansen".into());
    let (_pat, wp) = Client::joined(s.addr, &mint(&req)).await;
    assert_eq!(wp["state"], "waiting");
    assert_eq!(wp["host"], "Dr. Jansen");
    assert_eq!(wp["contact"], CONTACT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_the_code_a_join_gets_and_a_link_checked_audit_line() {
    let s = server(false).await;
    let now = unix_now();
    let good = request("lc3", Role::Patient, "P");
    let expired = mint_hs256(
        SECRET.as_bytes(),
        &MintRequest {
            ttl_secs: 60,
            ..good.clone()
        },
        now - 7200,
    )
    .unwrap();
    let not_yet = mint_hs256(SECRET.as_bytes(), &good, now + 7200).unwrap();
    let bad_signature = mint_hs256(b"another-secret-0123456789abcdef0123", &good, now).unwrap();
    let wrong_audience = mint(&MintRequest {
        audience: "elsewhere".into(),
        ..good.clone()
    });
    for (token, code) in [
        (expired.as_str(), "token_expired"),
        (not_yet.as_str(), "token_not_yet_valid"),
        (bad_signature.as_str(), "token_bad_signature"),
        (wrong_audience.as_str(), "token_wrong_audience"),
        ("not-a-jwt", "token_malformed"),
    ] {
        assert_refused(&check(&s, token).await, code);
        assert_eq!(join_refusal(&s, token).await, code, "join agrees");
    }
    // The check's own audit lines: one `link_checked` failure each, with
    // the code, never the token; no `token_rejected` from the checks.
    let lines = s.audit_lines();
    let checked: Vec<&Value> = lines
        .iter()
        .filter(|l| l["event"] == "link_checked")
        .collect();
    let codes: Vec<&str> = checked
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            "token_expired",
            "token_not_yet_valid",
            "token_bad_signature",
            "token_wrong_audience",
            "token_malformed"
        ]
    );
    assert!(checked.iter().all(|l| l["outcome"] == "failure"));
    let rejected = lines
        .iter()
        .filter(|l| l["event"] == "token_rejected")
        .count();
    assert_eq!(rejected, 5, "one per join, none per check");
    let raw = s.audit.lock().unwrap().join("\n");
    for token in [&expired, &not_yet, &bad_signature, &wrong_audience] {
        assert!(!raw.contains(token.as_str()), "a token in the audit log");
        let signature = token.rsplit('.').next().unwrap();
        assert!(
            !raw.contains(signature),
            "a token signature in the audit log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_without_a_token_or_with_another_version_is_refused_like_a_join() {
    let s = server(false).await;
    for message in [
        json!({"type":"check","v":1}),
        json!({"type":"check","v":1,"token":""}),
    ] {
        let mut c = Client::connect(s.addr).await;
        c.send(message).await;
        assert_refused(&reply_then_normal_close(&mut c).await, "token_missing");
    }
    let patient = token("lc4", Role::Patient, "P");
    for v in [json!(2), json!(null)] {
        let mut c = Client::connect(s.addr).await;
        c.send(json!({"type":"check","v":v,"token":patient})).await;
        assert_refused(
            &reply_then_normal_close(&mut c).await,
            "unsupported_version",
        );
    }
    assert_eq!(join_refusal(&s, "").await, "token_missing");
    // A check with a field of the wrong type is a bad message, as anywhere.
    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"check","v":1,"token":42})).await;
    let e = c.expect("error").await;
    assert_eq!(e["code"], "bad_message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_invite_is_refused_and_another_invite_of_the_consult_is_not() {
    let s = server(true).await;
    let (mut doc, _) = Client::joined(s.addr, &token("lc5", Role::Clinician, "Dr. Jansen")).await;
    let mut invites = Vec::new();
    for _ in 0..2 {
        doc.send(json!({"type":"invite","role":"patient"})).await;
        invites.push(doc.expect("invite-created").await);
    }
    let (revoked, kept) = (&invites[0], &invites[1]);
    doc.send(json!({"type":"revoke-invite","jti":revoked["jti"]}))
        .await;
    doc.expect("invite-revoked").await;

    let reply = check(&s, revoked["token"].as_str().unwrap()).await;
    assert_refused(&reply, "token_revoked");
    let reply = check(&s, kept["token"].as_str().unwrap()).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["role"], "patient");
    assert_eq!(reply["name"], "Patient");
    assert!(
        reply.get("host").is_none(),
        "an invite link does not name the clinician (it travels by mail): {reply}"
    );
    assert_eq!(reply["expires"], kept["expires"]);
    assert_eq!(
        join_refusal(&s, revoked["token"].as_str().unwrap()).await,
        "token_revoked"
    );
    // Audited with whose link it was, not the token.
    let line = s
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "link_checked")
        .expect("a link_checked line");
    assert_eq!(line["reason"], "token_revoked");
    assert_eq!(line["outcome"], "failure");
    assert_eq!(line["consult"], "lc5");
    assert_eq!(
        line["actor"]["sub"],
        format!("invite-{}", revoked["jti"].as_str().unwrap())
    );
    let raw = s.audit.lock().unwrap().join("\n");
    assert!(!raw.contains(revoked["token"].as_str().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_consult_a_removed_person_and_a_lock_are_refused_like_a_join() {
    let s = server(true).await;
    let doc_token = token("lc6", Role::Clinician, "Dr. A");
    let (mut doc, _) = Client::joined(s.addr, &doc_token).await;

    // Removed: the same person's link is refused.
    let removed = token("lc6", Role::Patient, "Removed");
    let (mut p, wp) = Client::joined(s.addr, &removed).await;
    doc.expect("lobby").await;
    doc.send(json!({"type":"deny","id":wp["you"]["id"]})).await;
    assert_eq!(p.expect("bye").await["reason"], "denied");
    doc.expect("lobby").await;
    assert_refused(&check(&s, &removed).await, "token_revoked");
    assert_eq!(join_refusal(&s, &removed).await, "token_revoked");

    // Locked: a new patient is refused, the clinician is not.
    doc.send(json!({"type":"lock","locked":true})).await;
    doc.expect("locked").await;
    let newcomer = token("lc6", Role::Patient, "New");
    assert_refused(&check(&s, &newcomer).await, "consult_locked");
    assert_eq!(join_refusal(&s, &newcomer).await, "consult_locked");
    let reply = check(&s, &token("lc6", Role::Clinician, "Dr. B")).await;
    assert_eq!(reply["ok"], true, "{reply}");

    // Ended: everyone's link is refused with what a join gets.
    doc.send(json!({"type":"end"})).await;
    assert_eq!(doc.expect("bye").await["reason"], "ended");
    for t in [&doc_token, &newcomer] {
        assert_refused(&check(&s, t).await, "consult_ended");
        assert_eq!(join_refusal(&s, t).await, "consult_ended");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_puts_nobody_in_the_lobby_and_the_join_that_follows_does() {
    let s = server(true).await;
    let (mut doc, _) = Client::joined(s.addr, &token("lc7", Role::Clinician, "Dr. A")).await;
    let patient = token("lc7", Role::Patient, "Mw. B");

    let reply = check(&s, &patient).await;
    assert_eq!(reply["ok"], true, "{reply}");
    let seen = received_within(&mut doc, Duration::from_millis(500)).await;
    assert!(
        seen.is_empty(),
        "the clinician was told about a check: {seen:?}"
    );
    let seen = doc.sync().await;
    assert!(seen.is_empty(), "{seen:?}");
    let lines = s.audit_lines();
    assert!(
        lines.iter().all(|l| l["actor"]["sub"] != "sub-Mw. B"),
        "the check left a trace of the patient: {lines:?}"
    );

    // The same link then joins as usual: into the waiting room, and the
    // clinician sees them there.
    let (_pat, wp) = Client::joined(s.addr, &patient).await;
    assert_eq!(wp["state"], "waiting", "{wp}");
    let lobby = doc.expect("lobby").await;
    assert_eq!(lobby["waiting"][0]["id"], wp["you"]["id"]);
    assert_eq!(lobby["waiting"][0]["name"], "Mw. B");
    assert_eq!(
        lobby["waiting"].as_array().unwrap().len(),
        1,
        "only the join, not the check: {lobby}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_beyond_the_per_address_limit_are_rate_limited() {
    let s = server(false).await;
    let patient = token("lc8", Role::Patient, "P");
    for i in 0..signaling::link_check::CHECK_BURST {
        let reply = check(&s, &patient).await;
        assert_eq!(reply["ok"], true, "check {i}: {reply}");
    }
    // The bucket refills one check every few seconds; on a slow machine the
    // burst may have regained one or two by now.
    let mut refused = None;
    for _ in 0..5 {
        let reply = check(&s, &patient).await;
        if reply["ok"] == false {
            refused = Some(reply);
            break;
        }
    }
    assert_refused(&refused.expect("refused past the burst"), "rate_limited");
    // Refused before the token is looked at; audited like a refused check.
    let line = s
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "link_checked")
        .expect("audited");
    assert_eq!(line["reason"], "rate_limited");
    // A join is not held back by the checks.
    let (_c, w) = Client::joined(s.addr, &patient).await;
    assert_eq!(w["state"], "in-call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_after_join_is_a_bad_message_and_a_check_ends_its_connection() {
    let s = server(false).await;
    let patient = token("lc9", Role::Patient, "P");
    let (mut c, _) = Client::joined(s.addr, &patient).await;
    c.send(json!({"type":"check","v":1,"token":patient})).await;
    let e = c.expect("error").await;
    assert_eq!(e["code"], "bad_message");
    assert_eq!(e["fatal"], false);
    // Still joined.
    assert!(c.sync().await.is_empty());

    // After its reply the connection is closed: a second message gets
    // nothing back.
    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"check","v":1,"token":patient})).await;
    reply_then_normal_close(&mut c).await;
    let _ = c
        .try_send_raw(json!({"type":"join","v":1,"token":patient}).to_string())
        .await;
    match tokio::time::timeout(WAIT, c.ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => panic!("answered after the check: {t}"),
        Ok(_) => {}
        Err(_) => panic!("the connection stayed open"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_patient_learns_the_clinicians_name_from_welcome_not_from_the_link() {
    let s = server(true).await;
    // Before any clinician is there: nobody to name.
    let (_early, we) = Client::joined(s.addr, &token("lc9", Role::Patient, "Mw. Vroeg")).await;
    assert_eq!(we["state"], "waiting");
    assert!(we.get("host").is_none(), "{we}");
    let (mut doc, wd) = Client::joined(s.addr, &token("lc9", Role::Clinician, "Dr. Jansen")).await;
    assert!(
        wd.get("host").is_none(),
        "a clinician is not told their own name"
    );
    doc.send(json!({"type":"invite","role":"patient"})).await;
    let invite = doc.expect("invite-created").await;
    let link = invite["token"].as_str().unwrap();
    let check_reply = check(&s, link).await;
    assert!(check_reply.get("host").is_none(), "{check_reply}");
    let (_pat, wp) = Client::joined(s.addr, link).await;
    assert_eq!(wp["state"], "waiting");
    assert_eq!(wp["host"], "Dr. Jansen", "{wp}");
}
