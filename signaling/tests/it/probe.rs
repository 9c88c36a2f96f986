//! The connectivity check: `probe {v, token}` gets a throwaway media
//! connection and joins nothing. Without a token (the test page `/test`)
//! it is anonymous: its own bounds, counted, never audited.

use crate::common::*;
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

    // A token that is there but bad is refused, never run as an anonymous
    // probe instead; so are a forged one and a revoked-style blank-ish one.
    let mut forged = token("p0", Role::Patient, "P");
    forged.push('x');
    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"probe","v":1,"token":forged})).await;
    c.expect_fatal("token_bad_signature").await;
    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"probe","v":1,"token":" "})).await;
    c.expect_fatal("token_malformed").await;

    // An anonymous probe still needs the protocol version.
    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"probe"})).await;
    c.expect_fatal("unsupported_version").await;

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

/// The value of one line of `/metrics` (0 when absent).
async fn metric(s: &TestServer, line_start: &str) -> u64 {
    let text = get(s.addr, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .map_or(0, |v| v.trim().parse().expect("a number"))
}

async fn wait_for_metric(s: &TestServer, line_start: &str, value: u64) {
    let deadline = std::time::Instant::now() + WAIT;
    while metric(s, line_start).await != value {
        assert!(
            std::time::Instant::now() < deadline,
            "{line_start} never became {value}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

const ANON_TIMEOUT: &str =
    "spreekkamer_connectivity_checks_total{kind=\"anonymous\",outcome=\"timeout\"}";
const ANON_ABANDONED: &str =
    "spreekkamer_connectivity_checks_total{kind=\"anonymous\",outcome=\"abandoned\"}";
const ANON_RATE_LIMITED: &str =
    "spreekkamer_connectivity_checks_total{kind=\"anonymous\",outcome=\"rate_limited\"}";
const ANON_AT_CAPACITY: &str =
    "spreekkamer_connectivity_checks_total{kind=\"anonymous\",outcome=\"at_capacity\"}";
const ANON_IN_PROGRESS: &str = "spreekkamer_anonymous_connectivity_checks";

/// Send an anonymous probe (`token` absent or empty) and take its offer.
async fn anonymous_probe(s: &TestServer, token: Option<&str>) -> Client {
    let mut c = Client::connect(s.addr).await;
    let msg = match token {
        Some(t) => json!({"type":"probe","v":1,"token":t}),
        None => json!({"type":"probe","v":1}),
    };
    c.send(msg).await;
    let offer = raw(&mut c).await;
    assert_eq!(offer["type"], "offer", "{offer}");
    assert!(offer["sdp"].as_str().unwrap().contains("a=candidate"));
    c
}

async fn expect_rate_limited(s: &TestServer) {
    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"probe","v":1})).await;
    let e = raw(&mut c).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "rate_limited", "{e}");
    c.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_probe_gets_an_offer_and_a_result_and_leaves_no_audit_line() {
    let s = start().await;
    // Someone is in a consult: the anonymous probe must not show up anywhere.
    let (mut doc, _) = Client::joined(s.addr, &token("a1", Role::Clinician, "Dr. A")).await;
    let audited_before = s.audit_lines().len();

    // `token` absent, and `token` empty: both anonymous.
    let mut c = anonymous_probe(&s, None).await;
    let mut empty = anonymous_probe(&s, Some("")).await;
    assert_eq!(metric(&s, ANON_IN_PROGRESS).await, 2);
    // One probe per connection, anonymous or not.
    c.send(json!({"type":"probe","v":1})).await;
    let e = raw(&mut c).await;
    assert_eq!(
        (e["code"].as_str(), e["fatal"].as_bool()),
        (Some("bad_message"), Some(false))
    );

    // The browser gives up on one: the media plane lets go, the slot is free.
    empty.send(json!({"type":"leave"})).await;
    empty.expect_closed().await;
    wait_for_metric(&s, ANON_IN_PROGRESS, 1).await;
    assert_eq!(metric(&s, ANON_ABANDONED).await, 1);

    // No answer: after the probe timeout the result says not connected.
    let result = tokio::time::timeout(signaling::probe::PROBE_TIMEOUT + WAIT, async {
        loop {
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
    assert_eq!(metric(&s, ANON_TIMEOUT).await, 1);
    assert_eq!(metric(&s, ANON_IN_PROGRESS).await, 0);

    // Nobody joined and nothing was audited: no token, no check, no join.
    let seen = doc.sync().await;
    assert!(seen.is_empty(), "{seen:?}");
    let lines = s.audit_lines();
    assert_eq!(
        lines.len(),
        audited_before,
        "an anonymous probe writes no audit line: {:?}",
        &lines[audited_before..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_probes_are_limited_per_address() {
    let s = start().await;
    let limits = signaling::probe::AnonymousProbeLimits::default();
    // Each holds its probe open, well under the global cap.
    let mut open = Vec::new();
    for _ in 0..limits.burst {
        open.push(anonymous_probe(&s, None).await);
    }
    expect_rate_limited(&s).await;
    assert_eq!(metric(&s, ANON_RATE_LIMITED).await, 1);
    // A token holder's probe has its own, older limit: still allowed.
    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"probe","v":1,"token":token("a2", Role::Patient, "P")}))
        .await;
    assert_eq!(raw(&mut c).await["type"], "offer");
    // Ending the open ones gives nothing back: the limit is a rate.
    for mut c in open {
        c.send(json!({"type":"leave"})).await;
        c.expect_closed().await;
    }
    expect_rate_limited(&s).await;
    assert_eq!(metric(&s, ANON_RATE_LIMITED).await, 2);
    let events: Vec<String> = s
        .audit_lines()
        .iter()
        .map(|l| l["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["token_accepted"], "only the token holder's probe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_probes_in_progress_are_capped_for_the_whole_edge() {
    let mut cfg = config();
    // A generous per-address limit, so the cap is what refuses (all test
    // clients share 127.0.0.1).
    cfg.anonymous_probes = signaling::probe::AnonymousProbeLimits {
        per_minute: 600,
        burst: 100,
        in_progress: 3,
    };
    let s = start_with(cfg).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(anonymous_probe(&s, None).await);
    }
    assert_eq!(metric(&s, ANON_IN_PROGRESS).await, 3);
    expect_rate_limited(&s).await;
    expect_rate_limited(&s).await;
    assert_eq!(metric(&s, ANON_AT_CAPACITY).await, 2);
    assert_eq!(
        metric(&s, ANON_IN_PROGRESS).await,
        3,
        "refusals take no slot"
    );

    // One ends: its slot is free again, and the next anonymous probe runs.
    let mut first = open.remove(0);
    first.send(json!({"type":"leave"})).await;
    first.expect_closed().await;
    wait_for_metric(&s, ANON_IN_PROGRESS, 2).await;
    open.push(anonymous_probe(&s, Some("")).await);
    expect_rate_limited(&s).await;
    // The cap is for anonymous probes only: a token holder still probes.
    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"probe","v":1,"token":token("a3", Role::Patient, "P")}))
        .await;
    assert_eq!(raw(&mut c).await["type"], "offer");
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
