//! The waiting room and the clinician's host actions, enforced by the server.

use crate::common::*;
use serde_json::{Value, json};
use signaling::protocol::Role;

async fn lobby_server() -> TestServer {
    let mut cfg = config();
    cfg.policy.waiting_room = true;
    start_with(cfg).await
}

/// Every frame (media included) up to the pong of a ping.
async fn frames_until_pong(c: &mut Client) -> Vec<Value> {
    c.send(json!({"type":"ping"})).await;
    let mut seen = Vec::new();
    loop {
        match c.frame().await {
            Frame::Json(v) if v["type"] == "pong" => return seen,
            Frame::Json(v) => seen.push(v),
            Frame::Closed => panic!("closed"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_waits_in_lobby_until_admitted() {
    let s = lobby_server().await;
    let (mut doc, wd) = Client::joined(s.addr, &token("l1", Role::Clinician, "Dr. A")).await;
    assert_eq!(wd["state"], "in-call");
    assert_eq!(wd["lobby"], json!([]));
    assert_eq!(wd["locked"], false);

    let (mut pat, wp) = Client::joined(s.addr, &token("l1", Role::Patient, "Mw. B")).await;
    let pat_id = wp["you"]["id"].clone();
    assert_eq!(wp["state"], "waiting");
    assert_eq!(
        wp["participants"],
        json!([]),
        "a waiting patient learns nobody"
    );
    assert!(wp.get("lobby").is_none(), "only clinicians see the lobby");

    let lobby = doc.expect("lobby").await;
    assert_eq!(lobby["waiting"][0]["id"], pat_id);
    assert_eq!(lobby["waiting"][0]["name"], "Mw. B");
    assert_eq!(lobby["waiting"][0]["role"], "patient");
    assert!(lobby["waiting"][0]["since"].as_u64().unwrap() > 0);

    // Not in any media path, not able to relay.
    pat.send(json!({"type":"relay","to":wd["you"]["id"],"kind":"key","data":"k"}))
        .await;
    assert_eq!(pat.expect("error").await["code"], "forbidden");
    pat.send(json!({"type":"answer","sdp":"v=0"})).await;
    assert_eq!(pat.expect("error").await["code"], "forbidden");
    pat.send(json!({"type":"admit","id":pat_id})).await;
    assert_eq!(pat.expect("error").await["code"], "forbidden");
    let seen = frames_until_pong(&mut pat).await;
    assert!(
        seen.iter().all(|v| v["type"] != "offer"),
        "no offer before admission: {seen:?}"
    );

    doc.send(json!({"type":"admit","id":pat_id})).await;
    let admitted = pat.expect("admitted").await;
    assert_eq!(admitted["participants"][0]["id"], wd["you"]["id"]);
    let joined = doc.expect("participant-joined").await;
    assert_eq!(joined["participant"]["id"], pat_id);
    assert_eq!(doc.expect("lobby").await["waiting"], json!([]));
    // Now the media plane offers (the resume ticket for the call may come first).
    loop {
        match pat.frame().await {
            Frame::Json(v) if v["type"] == "resume" => continue,
            Frame::Json(v) => assert_eq!(v["type"], "offer", "{v}"),
            Frame::Closed => panic!("closed"),
        }
        break;
    }
    let events: Vec<String> = s
        .audit_lines()
        .iter()
        .map(|l| l["event"].as_str().unwrap().to_string())
        .collect();
    assert!(events.contains(&"waiting_room_entered".to_string()));
    assert!(events.contains(&"admit".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_patient_is_sent_away_and_cannot_return_with_the_same_link() {
    let s = lobby_server().await;
    let (mut doc, _) = Client::joined(s.addr, &token("l2", Role::Clinician, "Dr. A")).await;
    let link = token("l2", Role::Patient, "P");
    let (mut pat, wp) = Client::joined(s.addr, &link).await;
    doc.expect("lobby").await;
    doc.send(json!({"type":"deny","id":wp["you"]["id"]})).await;
    assert_eq!(pat.expect("bye").await["reason"], "denied");
    pat.expect_closed().await;
    let mut again = Client::connect(s.addr).await;
    again.send(json!({"type":"join","v":1,"token":link})).await;
    again.expect_fatal("token_revoked").await;
    let deny = s
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "deny")
        .expect("deny audited");
    assert_eq!(deny["target"], wp["you"]["id"]);
    assert_eq!(deny["actor"]["role"], "clinician");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_participant_leaves_and_cannot_return() {
    let s = start().await;
    let (mut doc, _) = Client::joined(s.addr, &token("l3", Role::Clinician, "Dr. A")).await;
    let link = token("l3", Role::Guest, "G");
    let (mut guest, wg) = Client::joined(s.addr, &link).await;
    doc.expect("participant-joined").await;
    guest
        .send(json!({"type":"remove","id":wg["you"]["id"]}))
        .await;
    assert_eq!(guest.expect("error").await["code"], "forbidden");
    doc.send(json!({"type":"remove","id":wg["you"]["id"]}))
        .await;
    assert_eq!(guest.expect("bye").await["reason"], "removed");
    let left = doc.expect("participant-left").await;
    assert_eq!(left["reason"], "removed");
    let mut again = Client::connect(s.addr).await;
    again.send(json!({"type":"join","v":1,"token":link})).await;
    again.expect_fatal("token_revoked").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_consult_keeps_new_patients_out_and_end_closes_it() {
    let s = start().await;
    let (mut doc, _) = Client::joined(s.addr, &token("l4", Role::Clinician, "Dr. A")).await;
    let (mut pat, _) = Client::joined(s.addr, &token("l4", Role::Patient, "P")).await;
    doc.expect("participant-joined").await;
    doc.send(json!({"type":"lock","locked":true})).await;
    assert_eq!(doc.expect("locked").await["locked"], true);
    assert_eq!(pat.expect("locked").await["locked"], true);
    let mut late = Client::connect(s.addr).await;
    late.send(json!({"type":"join","v":1,"token":token("l4", Role::Guest, "late")}))
        .await;
    late.expect_fatal("consult_locked").await;

    doc.send(json!({"type":"end"})).await;
    for c in [&mut doc, &mut pat] {
        loop {
            let v = c.next().await;
            if v["type"] == "bye" {
                assert_eq!(v["reason"], "ended");
                break;
            }
        }
        c.expect_closed().await;
    }
    let mut again = Client::connect(s.addr).await;
    again
        .send(json!({"type":"join","v":1,"token":token("l4", Role::Clinician, "Dr. A")}))
        .await;
    again.expect_fatal("consult_ended").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_the_same_link_again_replaces_the_older_connection() {
    let s = lobby_server().await;
    let (mut doc, _) = Client::joined(s.addr, &token("l5", Role::Clinician, "Dr. A")).await;
    let link = token("l5", Role::Patient, "P");
    let (mut first, w1) = Client::joined(s.addr, &link).await;
    doc.expect("lobby").await;
    doc.send(json!({"type":"admit","id":w1["you"]["id"]})).await;
    first.expect("admitted").await;
    doc.expect("participant-joined").await;
    doc.expect("lobby").await;

    let (_second, w2) = Client::joined(s.addr, &link).await;
    assert_eq!(w2["state"], "in-call", "an admitted patient stays admitted");
    assert_eq!(first.expect("bye").await["reason"], "replaced");
    let left = doc.expect("participant-left").await;
    assert_eq!(left["id"], w1["you"]["id"]);
    let joined = doc.expect("participant-joined").await;
    assert_eq!(joined["participant"]["id"], w2["you"]["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clinician_invites_a_patient_and_can_revoke_the_invite() {
    let s = lobby_server().await;
    let (mut doc, _) = Client::joined(s.addr, &token("inv", Role::Clinician, "Dr. A")).await;
    doc.send(json!({"type":"invite","role":"patient"})).await;
    let invite = doc.expect("invite-created").await;
    assert_eq!(invite["role"], "patient");
    let jti = invite["jti"].as_str().unwrap().to_string();
    let invite_token = invite["token"].as_str().unwrap().to_string();
    let now = signaling::token::unix_now();
    let expires = invite["expires"].as_u64().unwrap();
    assert!(
        expires > now + 3 * 3600 && expires <= now + 4 * 3600 + 5,
        "default 4h"
    );

    let (mut pat, wp) = Client::joined(s.addr, &invite_token).await;
    assert_eq!(wp["state"], "waiting");
    assert_eq!(
        wp["you"]["name"], "Patient",
        "no personal data in the invite"
    );
    assert_eq!(wp["consult"], "inv");
    doc.expect("lobby").await;

    // A patient cannot invite or revoke.
    pat.send(json!({"type":"invite","role":"guest"})).await;
    assert_eq!(pat.expect("error").await["code"], "forbidden");
    pat.send(json!({"type":"revoke-invite","jti":jti})).await;
    assert_eq!(pat.expect("error").await["code"], "forbidden");
    // Nor can a clinician invite another clinician.
    doc.send(json!({"type":"invite","role":"clinician"})).await;
    assert_eq!(doc.expect("error").await["code"], "forbidden");

    doc.send(json!({"type":"revoke-invite","jti":jti})).await;
    assert_eq!(pat.expect("bye").await["reason"], "removed");
    loop {
        let v = doc.next().await;
        if v["type"] == "invite-revoked" {
            assert_eq!(v["jti"], jti.as_str());
            break;
        }
        assert_eq!(v["type"], "lobby", "{v}");
    }
    let mut again = Client::connect(s.addr).await;
    again
        .send(json!({"type":"join","v":1,"token":invite_token}))
        .await;
    again.expect_fatal("token_revoked").await;

    let events: Vec<String> = s
        .audit_lines()
        .iter()
        .map(|l| l["event"].as_str().unwrap().to_string())
        .collect();
    assert!(events.contains(&"invite_created".to_string()));
    assert!(events.contains(&"invite_revoked".to_string()));
    let raw = s.audit.lock().unwrap().join("\n");
    assert!(!raw.contains(&invite_token), "no token in the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_validity_is_bounded() {
    let s = start().await;
    let (mut doc, _) = Client::joined(s.addr, &token("inv2", Role::Clinician, "Dr. A")).await;
    doc.send(json!({"type":"invite","role":"guest","name":"Tolk","ttl_secs":999999}))
        .await;
    let invite = doc.expect("invite-created").await;
    let now = signaling::token::unix_now();
    assert!(invite["expires"].as_u64().unwrap() <= now + 24 * 3600 + 5);
    let (_g, wg) = Client::joined(s.addr, invite["token"].as_str().unwrap()).await;
    assert_eq!(wg["you"]["name"], "Tolk");
    assert_eq!(wg["you"]["role"], "guest");
}

/// The audit line of `event` by actor `sub`, waiting for it (leave lines
/// are written after the socket closes).
async fn audit_line(s: &TestServer, event: &str, sub: &str) -> Value {
    for _ in 0..200 {
        if let Some(l) = s
            .audit_lines()
            .into_iter()
            .find(|l| l["event"] == event && l["actor"]["sub"] == sub)
        {
            return l;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no {event} line for {sub}: {:?}", s.audit_lines());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_names_the_responsible_clinician_and_the_token_id() {
    let s = lobby_server().await;
    // An EHR patient token before any clinician: nobody is responsible yet.
    let (_early, _) = Client::joined(s.addr, &token("resp", Role::Patient, "Early")).await;
    let early = audit_line(&s, "waiting_room_entered", "sub-Early").await;
    assert!(early.get("responsible_clinician").is_none(), "{early}");

    let (mut a, _) = Client::joined(s.addr, &token("resp", Role::Clinician, "Dr. A")).await;
    let (mut b, _) = Client::joined(s.addr, &token("resp", Role::Clinician, "Dr. B")).await;
    let a_join = audit_line(&s, "join", "sub-Dr. A").await;
    assert_eq!(a_join["responsible_clinician"], "sub-Dr. A", "first is own");
    let b_join = audit_line(&s, "join", "sub-Dr. B").await;
    assert_eq!(b_join["responsible_clinician"], "sub-Dr. A");

    // Dr. B (not the first clinician) invites the patient: B is responsible.
    b.send(json!({"type":"invite","role":"patient"})).await;
    let invite = b.expect("invite-created").await;
    let jti = invite["jti"].as_str().unwrap().to_string();
    let created = audit_line(&s, "invite_created", "sub-Dr. B").await;
    assert_eq!(created["responsible_clinician"], "sub-Dr. A");
    let (mut pat, _) = Client::joined(s.addr, invite["token"].as_str().unwrap()).await;
    let pat_sub = format!("invite-{jti}");
    let entered = audit_line(&s, "waiting_room_entered", &pat_sub).await;
    assert_eq!(entered["responsible_clinician"], "sub-Dr. B", "{entered}");
    let accepted = audit_line(&s, "token_accepted", &pat_sub).await;
    assert_eq!(accepted["detail"], json!({ "jti": jti }), "{accepted}");
    assert_eq!(accepted["responsible_clinician"], "sub-Dr. B");
    // A token without a jti has no detail.
    let a_accepted = audit_line(&s, "token_accepted", "sub-Dr. A").await;
    assert!(a_accepted.get("detail").is_none(), "{a_accepted}");

    // The early patient's later lines name the first clinician.
    let early_id = early["participant"].clone();
    a.send(json!({"type":"admit","id":early_id})).await;
    let admit = audit_line(&s, "admit", "sub-Dr. A").await;
    assert_eq!(admit["outcome"], "success", "{admit}");
    assert_eq!(admit["responsible_clinician"], "sub-Dr. A");
    pat.send(json!({"type":"leave"})).await;
    pat.expect("bye").await;
    let left = audit_line(&s, "leave", &pat_sub).await;
    assert_eq!(left["responsible_clinician"], "sub-Dr. B");
}
