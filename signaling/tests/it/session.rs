//! The WebSocket protocol end to end against an in-process server.

use crate::common;

use crate::common::*;
use serde_json::json;
use signaling::protocol::Role;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_token_is_welcomed_with_its_identity_and_limits() {
    let s = start().await;
    let (_c, w) = Client::joined(s.addr, &token("consult-1", Role::Clinician, "Dr. Jansen")).await;
    assert_eq!(w["v"], 1);
    assert_eq!(w["consult"], "consult-1");
    assert_eq!(w["state"], "in-call");
    assert_eq!(w["you"]["name"], "Dr. Jansen");
    assert_eq!(w["you"]["role"], "clinician");
    let id = w["you"]["id"].as_str().unwrap();
    assert_eq!(id.len(), 16);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(w["participants"], json!([]));
    assert_eq!(w["limits"]["max_participants"], 6);
    assert_eq!(w["limits"]["max_message_bytes"], 65536);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_are_announced_with_name_and_role_and_their_leaving_too() {
    let s = start().await;
    let (mut doc, wd) = Client::joined(s.addr, &token("c2", Role::Clinician, "Dr. Jansen")).await;
    let (mut pat, wp) = Client::joined(s.addr, &token("c2", Role::Patient, "Mw. de Vries")).await;
    let doc_id = wd["you"]["id"].clone();
    let pat_id = wp["you"]["id"].clone();

    assert_eq!(wp["participants"][0]["id"], doc_id);
    assert_eq!(wp["participants"][0]["name"], "Dr. Jansen");
    assert_eq!(wp["participants"][0]["role"], "clinician");

    let joined = doc.expect("participant-joined").await;
    assert_eq!(joined["participant"]["id"], pat_id);
    assert_eq!(joined["participant"]["name"], "Mw. de Vries");
    assert_eq!(joined["participant"]["role"], "patient");

    pat.send(json!({"type":"mute","audio":false,"video":true}))
        .await;
    let mute = doc.expect("mute").await;
    assert_eq!(
        mute,
        json!({"type":"mute","id":pat_id,"audio":false,"video":true})
    );

    pat.send(json!({"type":"leave"})).await;
    assert_eq!(pat.expect("bye").await["reason"], "left");
    pat.expect_closed().await;
    let left = doc.expect("participant-left").await;
    assert_eq!(left["id"], pat_id);
    assert_eq!(left["reason"], "left");

    // A dropped connection is announced as `disconnected`.
    let (guest, wg) = Client::joined(s.addr, &token("c2", Role::Guest, "Tolk")).await;
    doc.expect("participant-joined").await;
    drop(guest);
    let left = doc.expect("participant-left").await;
    assert_eq!(left["id"], wg["you"]["id"]);
    assert_eq!(left["reason"], "disconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consults_are_separate() {
    let s = start().await;
    let (mut a, _) = Client::joined(s.addr, &token("room-a", Role::Clinician, "A")).await;
    let (_b, wb) = Client::joined(s.addr, &token("room-b", Role::Patient, "B")).await;
    assert_eq!(wb["participants"], json!([]));
    assert!(
        a.sync().await.is_empty(),
        "nothing about room-b reaches room-a"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_their_error_code_and_a_close() {
    let s = start().await;
    let now = signaling::token::unix_now();
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"iss":"spreekkamer","aud":"spreekkamer","exp":now - 3600,"sub":"s","role":"patient","consult":"c","name":"n"}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"iss":"spreekkamer","aud":"spreekkamer","exp":now + 3600,"sub":"s","role":"patient","consult":"c","name":"n"}),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-server-secret-not-the-server"),
    )
    .unwrap();
    let good = token("c", Role::Patient, "n");
    let parts: Vec<&str> = good.split('.').collect();
    let none = format!("eyJhbGciOiJub25lIn0.{}.", parts[1]);
    let cases = [
        (
            json!({"type":"join","v":1,"token":expired}),
            "token_expired",
        ),
        (
            json!({"type":"join","v":1,"token":forged}),
            "token_bad_signature",
        ),
        (
            json!({"type":"join","v":1,"token":none}),
            "token_bad_algorithm",
        ),
        (
            json!({"type":"join","v":1,"token":"not-a-jwt"}),
            "token_malformed",
        ),
        (json!({"type":"join","v":1}), "token_missing"),
        (
            json!({"type":"join","v":1,"token":"x".repeat(9000)}),
            "token_too_large",
        ),
        (
            json!({"type":"join","v":2,"token":good}),
            "unsupported_version",
        ),
    ];
    for (message, code) in &cases {
        let mut c = Client::connect(s.addr).await;
        c.send(message.clone()).await;
        c.expect_fatal(code).await;
    }
    let metrics = get(s.addr, "/metrics").await.text();
    assert!(
        metrics.contains("spreekkamer_joins_rejected_total{reason=\"token_expired\"} 1"),
        "{metrics}"
    );
    let rejected: Vec<_> = s
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "token_rejected")
        .collect();
    assert_eq!(
        rejected.len(),
        6,
        "every token refusal is audited (version is not a token matter)"
    );
    assert!(
        rejected
            .iter()
            .any(|l| l["reason"] == "token_bad_signature" && l["outcome"] == "failure")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_message_other_than_join_is_refused() {
    let s = start().await;
    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"ping"})).await;
    c.expect_fatal("not_joined").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_before_join_is_answered_but_not_fatal() {
    let s = start().await;
    let mut c = Client::connect(s.addr).await;
    c.send_raw("this is not json".into()).await;
    let e = c.expect("error").await;
    assert_eq!(e["code"], "bad_message");
    assert_eq!(e["fatal"], false);
    c.send(json!({"type":"dance"})).await;
    assert_eq!(c.expect("error").await["code"], "bad_message");
    let w = c.join(&token("c", Role::Guest, "g")).await;
    assert_eq!(w["state"], "in-call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_gets_join_timeout() {
    let mut cfg = config();
    cfg.join_timeout = Duration::from_millis(300);
    let s = start_with(cfg).await;
    let mut c = Client::connect(s.addr).await;
    c.expect_fatal("join_timeout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_fatal() {
    let s = start().await;
    let (mut c, _) = Client::joined(s.addr, &token("c", Role::Guest, "g")).await;
    let big = json!({"type":"relay","to":"x","kind":"chat","data":"x".repeat(70 * 1024)});
    c.send(big).await;
    c.expect_fatal("message_too_large").await;

    // Over our limit but under the WebSocket layer's cap (1 MiB): the server
    // reads the whole message, so the client is always told why.
    let mut c = Client::connect(s.addr).await;
    c.send_raw("y".repeat(900 * 1024)).await;
    c.expect_fatal("message_too_large").await;

    // Beyond the WebSocket layer's cap the server refuses on the frame
    // header and closes while the client is still writing. TCP may then
    // reset the connection and discard the error frame, so what is
    // promised is: the connection ends promptly, anything the client does
    // receive is that error, and the server keeps serving.
    let mut c = Client::connect(s.addr).await;
    let _ = c.try_send_raw("y".repeat(2 * 1024 * 1024)).await;
    loop {
        match c.frame().await {
            Frame::Closed => break,
            Frame::Json(v) => {
                assert_eq!(v["type"], "error", "{v}");
                assert_eq!(v["code"], "message_too_large", "{v}");
            }
        }
    }
    let (_c, w) = Client::joined(s.addr, &token("c2", Role::Guest, "g2")).await;
    assert_eq!(w["type"], "welcome");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_is_rate_limited_without_closing() {
    let s = start().await;
    let (mut c, _) = Client::joined(s.addr, &token("c", Role::Guest, "g")).await;
    // The join used one token of the burst of 100.
    for _ in 0..300 {
        c.send(json!({"type":"ping"})).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    while pongs + limited < 300 {
        let v = c.next().await;
        match v["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => {
                assert_eq!(v["code"], "rate_limited");
                assert_eq!(v["fatal"], false);
                limited += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(limited >= 1, "some pings were refused");
    assert!(pongs >= 99, "the burst went through: {pongs}");
    assert!(pongs < 300, "not everything went through: {pongs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seventh_participant_is_refused() {
    let s = start().await;
    let mut clients = Vec::new();
    for i in 0..6 {
        clients.push(Client::joined(s.addr, &token("full", Role::Guest, &format!("g{i}"))).await);
    }
    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"join","v":1,"token":token("full", Role::Clinician, "late")}))
        .await;
    c.expect_fatal("consult_full").await;
    let metrics = get(s.addr, "/metrics").await.text();
    assert!(metrics.contains("spreekkamer_joins_rejected_total{reason=\"consult_full\"} 1"));
    assert!(metrics.contains("spreekkamer_participants 6"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_reaches_only_its_addressee() {
    let s = start().await;
    let (mut a, wa) = Client::joined(s.addr, &token("r", Role::Clinician, "A")).await;
    let (mut b, wb) = Client::joined(s.addr, &token("r", Role::Patient, "B")).await;
    let (mut c, wc) = Client::joined(s.addr, &token("r", Role::Guest, "C")).await;
    a.sync().await;
    b.sync().await;
    let (a_id, b_id, c_id) = (&wa["you"]["id"], &wb["you"]["id"], &wc["you"]["id"]);

    a.send(json!({"type":"relay","to":b_id,"kind":"key","data":"for-b-only"}))
        .await;
    a.send(json!({"type":"relay","to":c_id,"kind":"chat","data":"marker-for-c"}))
        .await;
    let got = b.expect("relay").await;
    assert_eq!(
        got,
        json!({"type":"relay","from":a_id,"kind":"key","data":"for-b-only"})
    );
    // C's mailbox is ordered: had B's blob leaked to C it would come first.
    let got = c.expect("relay").await;
    assert_eq!(got["data"], "marker-for-c");
    assert!(b.sync().await.is_empty(), "B got only its own blob");

    a.send(json!({"type":"relay","to":"0000000000000000","kind":"chat","data":"x"}))
        .await;
    let e = a.expect("error").await;
    assert_eq!(e["code"], "unknown_participant");
    assert_eq!(e["fatal"], false);
    a.send(json!({"type":"relay","to":a_id,"kind":"chat","data":"x"}))
        .await;
    assert_eq!(a.expect("error").await["code"], "unknown_participant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2ee_status_is_broadcast_and_audited_without_content() {
    let s = start().await;
    let (mut a, wa) = Client::joined(s.addr, &token("e", Role::Clinician, "A")).await;
    let (mut b, wb) = Client::joined(s.addr, &token("e", Role::Patient, "B")).await;
    a.expect("participant-joined").await;
    b.send(json!({"type":"e2ee","state":"on","verified":[wa["you"]["id"]]}))
        .await;
    let got = a.expect("e2ee").await;
    assert_eq!(
        got,
        json!({"type":"e2ee","id":wb["you"]["id"],"state":"on","verified":[wa["you"]["id"]]})
    );
    b.sync().await;
    let lines = s.audit_lines();
    let e2ee = lines
        .iter()
        .find(|l| l["event"] == "e2ee_status")
        .expect("audited");
    assert_eq!(e2ee["detail"]["state"], "on");
    assert_eq!(e2ee["actor"]["role"], "patient");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_participant_errors_are_not_fatal() {
    let s = start().await;
    let (mut a, _) = Client::joined(s.addr, &token("x", Role::Patient, "P")).await;
    a.send(json!({"type":"join","v":1,"token":"again"})).await;
    assert_eq!(a.expect("error").await["code"], "bad_message");
    a.send(json!({"type":"end"})).await;
    let e = a.expect("error").await;
    assert_eq!(e["code"], "forbidden");
    assert_eq!(e["fatal"], false);
    a.send_raw("{\"type\":\"mute\"}".into()).await;
    assert_eq!(a.expect("error").await["code"], "bad_message");
    a.ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![
        1u8, 2, 3,
    ]))
    .await
    .unwrap();
    assert_eq!(a.expect("error").await["code"], "bad_message");
    assert!(a.sync().await.is_empty());
}

use futures_util::SinkExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_records_the_consult_without_tokens_or_names() {
    let s = start().await;
    let t = token("audited", Role::Clinician, "Dr. Geheim");
    let (mut a, wa) = Client::joined(s.addr, &t).await;
    a.send(json!({"type":"leave"})).await;
    a.expect("bye").await;
    a.expect_closed().await;
    // The leave is audited after the socket closes; wait for it by polling
    // the in-memory log (bounded).
    let mut lines = Vec::new();
    for _ in 0..200 {
        lines = s.audit_lines();
        if lines.iter().any(|l| l["event"] == "leave") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        vec!["token_accepted", "consult_created", "join", "leave"]
    );
    let join = &lines[2];
    assert_eq!(
        join["actor"],
        json!({"sub":"sub-Dr. Geheim","role":"clinician"})
    );
    assert_eq!(join["consult"], "audited");
    assert_eq!(join["participant"], wa["you"]["id"]);
    assert_eq!(join["access_point"]["ip"], "127.0.0.1");
    let raw = s.audit.lock().unwrap().join("\n");
    assert!(!raw.contains(&t), "no token in the audit log");
    assert!(
        !raw.contains("\"Dr. Geheim\""),
        "no display name as a value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_is_followed_by_an_offer_and_an_unusable_answer_is_a_media_error() {
    let s = start().await;
    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"join","v":1,"token":token("o", Role::Clinician, "A")}))
        .await;
    let mut welcome_seen = false;
    let offer = loop {
        match c.frame().await {
            common::Frame::Json(v) if v["type"] == "welcome" => welcome_seen = true,
            common::Frame::Json(v) if v["type"] == "resume" => {}
            common::Frame::Json(v) if v["type"] == "offer" => break v,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(welcome_seen, "welcome comes before the offer");
    let sdp = offer["sdp"].as_str().unwrap();
    assert!(sdp.starts_with("v=0"), "{sdp}");
    assert!(sdp.contains("m=audio") && sdp.contains("m=video"), "{sdp}");
    c.send(json!({"type":"answer","sdp":"this is not sdp"}))
        .await;
    let e = c.expect("error").await;
    assert_eq!(e["code"], "media_error");
    assert_eq!(e["fatal"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_uses_forwarded_for_only_from_a_trusted_proxy() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    for (trusted, expected) in [(true, "203.0.113.5"), (false, "127.0.0.1")] {
        let mut cfg = config();
        if trusted {
            cfg.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        }
        let s = start_with(cfg).await;
        let mut request = format!("ws://{}/ws", s.addr).into_client_request().unwrap();
        request.headers_mut().insert(
            "x-forwarded-for",
            "198.51.100.1, 203.0.113.5".parse().unwrap(),
        );
        let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let mut c = Client { ws };
        c.join(&token("xff", Role::Patient, "P")).await;
        let join = s
            .audit_lines()
            .into_iter()
            .find(|l| l["event"] == "join")
            .unwrap();
        assert_eq!(join["access_point"]["ip"], expected, "trusted={trusted}");
    }
}
