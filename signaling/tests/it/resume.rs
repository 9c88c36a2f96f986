//! Resume tickets (`resume.rs`, docs/PROTOCOL.md "Resuming"): someone in the
//! call gets a ticket and fresh ones while they stay; with it a lost
//! connection or a restarted server lets them back without a second
//! admission. Every ticket that is not theirs, or no longer valid, leaves
//! them in the waiting room; a removed person stays out.

use crate::common::*;
use serde_json::{Value, json};
use signaling::protocol::Role;
use signaling::resume::ResumeKeys;
use signaling::token::unix_now;
use std::time::Duration;

const CONSULT: &str = "resume-1";

/// A waiting room whose grace period is too short to bring anyone back by
/// itself, so only a ticket can skip the waiting room.
fn lobby_config() -> signaling::ServeConfig {
    let mut cfg = config();
    cfg.policy.waiting_room = true;
    cfg.policy.grace = Duration::from_millis(1);
    cfg
}

fn keys() -> ResumeKeys {
    ResumeKeys::new(SECRET.as_bytes(), signaling::resume::DEFAULT_TTL)
}

fn patient_token() -> String {
    token_with_sub(CONSULT, Role::Patient, "Mw. P", "sub-pat")
}

fn doc_token() -> String {
    token_with_sub(CONSULT, Role::Clinician, "Dr. D", "sub-doc")
}

/// The clinician in the call and the patient admitted; returns both and the
/// patient's first ticket.
async fn admitted_patient(s: &TestServer) -> (Client, Client, Value, String) {
    let (mut doc, _) = Client::joined(s.addr, &doc_token()).await;
    let (mut pat, wp) = Client::joined(s.addr, &patient_token()).await;
    assert_eq!(wp["state"], "waiting");
    let pid = wp["you"]["id"].as_str().unwrap().to_string();
    doc.expect("lobby").await;
    doc.send(json!({"type":"admit","id":pid})).await;
    pat.expect("admitted").await;
    let ticket = pat.expect_resume().await;
    (doc, pat, ticket, pid)
}

/// Join with the patient's token and `ticket`; the welcome's state.
async fn rejoin(s: &TestServer, ticket: &str) -> (Client, Value) {
    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"join","v":1,"token":patient_token(),"resume":ticket}))
        .await;
    let w = c.expect("welcome").await;
    (c, w)
}

/// The next message of type `ty`, skipping others.
async fn until(c: &mut Client, ty: &str) -> Value {
    loop {
        let v = c.next().await;
        if v["type"] == ty {
            return v;
        }
    }
}

fn events(s: &TestServer) -> Vec<String> {
    s.audit_lines()
        .iter()
        .map(|l| l["event"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_brings_a_ticket_and_fresh_ones_while_in_the_call() {
    let mut cfg = lobby_config();
    cfg.resume_ttl = Duration::from_secs(10); // refreshed every 2.5 s
    let s = start_with(cfg).await;
    let (mut doc, wd) = Client::joined(s.addr, &doc_token()).await;
    assert_eq!(wd["state"], "in-call");
    let doc_ticket = doc.expect_resume().await;
    assert!(
        keys()
            .check(
                doc_ticket["ticket"].as_str().unwrap(),
                CONSULT,
                "sub-doc",
                Role::Clinician,
                unix_now()
            )
            .is_ok(),
        "a clinician in the call gets one at once: {doc_ticket}"
    );

    let (mut pat, wp) = Client::joined(s.addr, &patient_token()).await;
    assert_eq!(wp["state"], "waiting");
    // Nothing while waiting: everything up to the pong, offers and all.
    pat.send(json!({"type":"ping"})).await;
    loop {
        match pat.frame().await {
            Frame::Json(v) if v["type"] == "pong" => break,
            Frame::Json(v) => assert_ne!(v["type"], "resume", "no ticket in the waiting room"),
            Frame::Closed => panic!("closed"),
        }
    }
    let pid = wp["you"]["id"].as_str().unwrap();
    doc.send(json!({"type":"admit","id":pid})).await;
    let first = pat.expect_resume().await;
    let now = unix_now();
    let expires = first["expires"].as_u64().unwrap();
    assert!((now + 8..=now + 10).contains(&expires), "ttl 10 s: {first}");
    let second = pat.expect_resume().await;
    assert_ne!(first["ticket"], second["ticket"], "refreshed");
    assert!(second["expires"].as_u64().unwrap() >= expires);
    assert!(
        keys()
            .check(
                second["ticket"].as_str().unwrap(),
                CONSULT,
                "sub-pat",
                Role::Patient,
                unix_now()
            )
            .is_ok()
    );
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_ticket_skips_the_waiting_room_after_a_dropped_connection() {
    let s = start_with(lobby_config()).await;
    let (mut doc, pat, ticket, _) = admitted_patient(&s).await;
    let ticket = ticket["ticket"].as_str().unwrap().to_string();
    drop(pat);
    until(&mut doc, "participant-left").await;
    tokio::time::sleep(Duration::from_millis(20)).await; // past the 1 ms grace

    let (mut back, w) = rejoin(&s, &ticket).await;
    assert_eq!(w["state"], "in-call", "{w}");
    assert_eq!(
        w["participants"].as_array().unwrap().len(),
        1,
        "sees the clinician"
    );
    let joined = until(&mut doc, "participant-joined").await;
    assert_eq!(joined["participant"]["id"], w["you"]["id"]);
    back.expect_resume().await;
    assert!(
        events(&s).contains(&"join_resumed".to_string()),
        "{:?}",
        events(&s)
    );

    // The same without a ticket (positive control of the short grace): waiting.
    drop(back);
    until(&mut doc, "participant-left").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (_again, w) = Client::joined(s.addr, &patient_token()).await;
    assert_eq!(w["state"], "waiting", "{w}");

    // Tickets are bearer secrets: never in the audit log.
    let audit = s.audit.lock().unwrap().join("\n");
    assert!(!audit.contains(&ticket));
    assert!(!audit.contains(ticket.rsplit('.').next().unwrap()));
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_from_before_a_restart_works_on_a_server_with_the_same_secret() {
    let first = start_with(lobby_config()).await;
    let (_doc, _pat, ticket, _) = admitted_patient(&first).await;
    let ticket = ticket["ticket"].as_str().unwrap().to_string();
    first.server.shutdown().await;

    let second = start_with(lobby_config()).await;
    let (_back, w) = rejoin(&second, &ticket).await;
    assert_eq!(w["state"], "in-call", "{w}");
    let (_other, w) = Client::joined(
        second.addr,
        &token_with_sub(CONSULT, Role::Guest, "G", "sub-guest"),
    )
    .await;
    assert_eq!(
        w["state"], "waiting",
        "someone without a ticket still waits"
    );
    second.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_that_are_not_the_patients_own_and_valid_leave_them_waiting() {
    let s = start_with(lobby_config()).await;
    let (mut doc, pat, _, _) = admitted_patient(&s).await;
    // Gone from the call and past the grace period: only a ticket helps now.
    drop(pat);
    until(&mut doc, "participant-left").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let later = unix_now() + 100;
    let k = keys();
    let other_key = ResumeKeys::new(
        b"another-secret-0123456789abcdefghijkl",
        signaling::resume::DEFAULT_TTL,
    );
    let genuine = k.mint(CONSULT, "sub-pat", Role::Patient, later).ticket;
    let (payload_and_prefix, _) = genuine.rsplit_once('.').unwrap();
    let cases = [
        (
            "forged (another key)",
            other_key
                .mint(CONSULT, "sub-pat", Role::Patient, later)
                .ticket,
        ),
        (
            "forged (tag cut off)",
            format!("{payload_and_prefix}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        ),
        (
            "expired",
            k.mint(CONSULT, "sub-pat", Role::Patient, unix_now() - 1)
                .ticket,
        ),
        (
            "other consult",
            k.mint("resume-2", "sub-pat", Role::Patient, later).ticket,
        ),
        (
            "other person",
            k.mint(CONSULT, "sub-other", Role::Patient, later).ticket,
        ),
        (
            "other role",
            k.mint(CONSULT, "sub-pat", Role::Guest, later).ticket,
        ),
        ("junk", "not a ticket".to_string()),
    ];
    for (what, ticket) in cases {
        // Each join replaces the previous patient connection (same sub).
        let (_c, w) = rejoin(&s, &ticket).await;
        assert_eq!(w["state"], "waiting", "{what}: {w}");
    }
    // Positive control: the genuine one, on the same server, gets in.
    let (_c, w) = rejoin(&s, &genuine).await;
    assert_eq!(w["state"], "in-call", "{w}");
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_patients_ticket_does_not_bring_them_back() {
    let s = start_with(lobby_config()).await;
    let (mut doc, mut pat, ticket, pid) = admitted_patient(&s).await;
    doc.send(json!({"type":"remove","id":pid})).await;
    let bye = pat.expect("bye").await;
    assert_eq!(bye["reason"], "removed");
    pat.expect_closed().await;

    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"join","v":1,"token":patient_token(),"resume":ticket["ticket"]}))
        .await;
    c.expect_fatal("token_revoked").await;
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_does_not_replace_the_token() {
    let s = start_with(lobby_config()).await;
    let (_doc, _pat, ticket, _) = admitted_patient(&s).await;
    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"join","v":1,"resume":ticket["ticket"]}))
        .await;
    c.expect_fatal("token_missing").await;
    s.server.shutdown().await;
}
