//! The connectivity check: `probe {v, token}` gets a throwaway media
//! connection and joins nothing.

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use signaling::protocol::Role;
use tokio_tungstenite::tungstenite::Message;

/// The next frame, whatever it is (offers included).
async fn raw(c: &mut Client) -> Value {
    match c.frame().await {
        Frame::Json(v) => v,
        Frame::Closed => panic!("closed"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_with_a_bad_token_is_refused() {
    let s = start().await;
    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"probe","v":1,"token":"nope"})).await;
    c.expect_fatal("token_malformed").await;

    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"probe","v":1})).await;
    c.expect_fatal("token_missing").await;

    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"probe","v":2,"token":token("p0", Role::Patient, "P")}))
        .await;
    c.expect_fatal("unsupported_version").await;
    assert!(
        s.audit_lines()
            .iter()
            .all(|l| l["event"] != "connectivity_check")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_gets_an_offer_joins_nothing_and_allows_one_probe_per_connection() {
    let s = start().await;
    // Someone is in the consult the token names: the probe must not show up.
    let (mut doc, _) = Client::joined(s.addr, &token("p1", Role::Clinician, "Dr. P")).await;

    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"probe","v":1,"token":token("p1", Role::Patient, "Mw. Q")}))
        .await;
    let offer = raw(&mut c).await;
    assert_eq!(offer["type"], "offer", "{offer}");
    let sdp = offer["sdp"].as_str().unwrap();
    assert!(
        sdp.contains("a=candidate"),
        "the offer names the media server"
    );
    // The client tells UDP from TCP by the transport field of these lines
    // (docs/PROTOCOL.md, "Connectivity check").
    let transports: Vec<&str> = sdp
        .lines()
        .filter(|l| l.starts_with("a=candidate"))
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert!(transports.contains(&"udp"), "{sdp}");
    assert!(transports.contains(&"tcp"), "ICE-TCP is offered too: {sdp}");

    c.send(json!({"type":"probe","v":1,"token":token("p1", Role::Patient, "Mw. Q")}))
        .await;
    let e = raw(&mut c).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "bad_message");
    assert_eq!(e["fatal"], false);
    c.send(json!({"type":"join","v":1,"token":token("p1", Role::Patient, "Mw. Q")}))
        .await;
    assert_eq!(raw(&mut c).await["code"], "bad_message");

    // Nobody joined: the clinician hears nothing, the roster is theirs alone.
    let seen = doc.sync().await;
    assert!(seen.is_empty(), "{seen:?}");
    let events: Vec<String> = s
        .audit_lines()
        .iter()
        .map(|l| l["event"].as_str().unwrap().to_string())
        .collect();
    let joins = events.iter().filter(|e| *e == "join").count();
    assert_eq!(joins, 1, "only the clinician joined: {events:?}");
    assert!(!events.iter().any(|e| e == "waiting_room_entered"));

    // No answer: after the probe timeout the result says not connected.
    let result = tokio::time::timeout(signaling::probe::PROBE_TIMEOUT + WAIT, async {
        loop {
            // Read directly: the helpers give up after WAIT, which is
            // shorter than the probe timeout.
            match c.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                    if v["type"] == "probe-result" {
                        break v;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("closed before the probe-result: {other:?}"),
            }
        }
    })
    .await
    .expect("a probe-result after the probe timeout");
    assert_eq!(result["connected"], false);
    assert_eq!(result["reason"], "timeout");
    c.expect_closed().await;
    let check = s
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "connectivity_check")
        .expect("connectivity check audited");
    assert_eq!(check["actor"]["role"], "patient");
    assert_eq!(check["detail"]["connected"], false);
    assert!(check.get("participant").is_none_or(|p| p.is_null()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_person_cannot_probe_and_leave_ends_a_probe() {
    let mut cfg = config();
    cfg.policy.waiting_room = true;
    let s = start_with(cfg).await;
    let (mut doc, _) = Client::joined(s.addr, &token("p2", Role::Clinician, "Dr. R")).await;
    let pat_token = token("p2", Role::Patient, "Mw. S");
    let (_pat, wp) = Client::joined(s.addr, &pat_token).await;
    doc.expect("lobby").await;
    doc.send(json!({"type":"deny","id":wp["you"]["id"]})).await;
    doc.expect("lobby").await;

    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"probe","v":1,"token":pat_token}))
        .await;
    c.expect_fatal("token_revoked").await;

    // A probe ended by the browser: the media plane lets go of it. (A
    // server of its own, so no other peer is counted.)
    let s = start().await;
    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"probe","v":1,"token":token("p2", Role::Guest, "G")}))
        .await;
    assert_eq!(raw(&mut c).await["type"], "offer");
    // (The offer can overtake the media worker's peer count.)
    wait_for_peers(&s, 1, "the probe's peer is counted").await;
    c.send(json!({"type":"leave"})).await;
    c.expect_closed().await;
    wait_for_peers(&s, 0, "the probe's peer is released").await;
}

async fn wait_for_peers(s: &TestServer, peers: u64, what: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    while s
        .server
        .context()
        .sfu
        .as_ref()
        .expect("in-process media")
        .stats()
        .peers
        != peers
    {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
