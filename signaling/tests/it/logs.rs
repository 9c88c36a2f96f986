//! The real binary at `--log-level trace`: a whole join + admit + relay +
//! invite (WebSocket and HTTP API) + resume flow, plus a link pasted with its secrets
//! in a query string, writes no token, link secret, display name or relayed
//! payload to stdout (the audit log) or stderr (the operational log).

use crate::common::*;
use serde_json::json;
use signaling::protocol::Role;

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_hold_no_token_link_secret_name_or_relay_payload() {
    let (server, addr) = BinServer::start(
        &["--log-level", "trace"],
        &[("SPREEKKAMER_JWT_SECRET", SECRET)],
    );
    let doc_name = "Dr. Vertrouwelijk Quaestor";
    let patient_name = "Mw. Geheimnaam Zyxwerda";
    let invite_name = "Gast Onbekendheid Xylofoon";
    let api_invite_name = "Api Naamloos Quintessens";
    let payload = "relayed words nobody may log: diagnose Qwertz 42";
    let link_secret = signaling::token::random_secret();
    let doc = token_with_sub("logs-consult", Role::Clinician, doc_name, "sub-doc");
    let patient = token_with_sub("logs-consult", Role::Patient, patient_name, "sub-pat");

    // Join, wait, admit.
    let (mut d, wd) = Client::joined(addr, &doc).await;
    assert_eq!(wd["you"]["name"], doc_name, "the name was really sent");
    let (mut p, wp) = Client::joined(addr, &patient).await;
    assert_eq!(wp["state"], "waiting");
    let pid = wp["you"]["id"].as_str().unwrap().to_string();
    let lobby = d.expect("lobby").await;
    assert_eq!(lobby["waiting"][0]["name"], patient_name);
    d.send(json!({"type":"admit","id":pid})).await;
    p.expect("admitted").await;
    let resume = p.expect_resume().await["ticket"]
        .as_str()
        .unwrap()
        .to_string();

    // Relay: the patient really receives the payload.
    d.send(json!({"type":"relay","to":pid,"kind":"chat","data":payload}))
        .await;
    loop {
        let v = p.next().await;
        if v["type"] == "relay" {
            assert_eq!(v["data"], payload);
            break;
        }
    }

    // The patient comes back on a second connection with the resume ticket.
    let mut p2 = Client::connect(addr).await;
    p2.send(json!({"type":"join","v":1,"token":patient,"resume":resume}))
        .await;
    assert_eq!(p2.expect("welcome").await["state"], "in-call");

    // An invite over WebSocket, used to join.
    d.send(json!({"type":"invite","role":"guest","name":invite_name}))
        .await;
    let created = loop {
        let v = d.next().await;
        if v["type"] == "invite-created" {
            break v;
        }
    };
    let invite = created["token"].as_str().unwrap().to_string();
    let (_g, wg) = Client::joined(addr, &invite).await;
    assert_eq!(wg["you"]["name"], invite_name);

    // An invite over the HTTP API, then revoked.
    let body = json!({"role":"patient","name":api_invite_name}).to_string();
    let bearer = format!("Bearer {doc}");
    let r = request(
        addr,
        "POST",
        "/api/v1/invites",
        &[
            ("Authorization", bearer.as_str()),
            ("Content-Type", "application/json"),
        ],
        Some(body.as_bytes()),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let api_invite: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let api_token = api_invite["token"].as_str().unwrap().to_string();
    let jti = api_invite["jti"].as_str().unwrap();
    let r = request(
        addr,
        "DELETE",
        &format!("/api/v1/invites/{jti}"),
        &[("Authorization", bearer.as_str())],
        None,
    )
    .await;
    assert_eq!(r.status, 204);

    // A link pasted with its secrets in a query string and a Referer
    // (browsers never send the fragment; a careless client might).
    let leaked = format!("/c?t={patient}&k={link_secret}&kl={link_secret}");
    let referer = format!("http://{addr}/c#t={patient}&k={link_secret}");
    let r = request(addr, "GET", &leaked, &[("Referer", referer.as_str())], None).await;
    assert!(r.status < 500);

    // A junk join: the token is refused (and must not be echoed either).
    let junk = format!("{}x", &doc[..doc.len() - 1]);
    let mut j = Client::connect(addr).await;
    j.send(json!({"type":"join","v":1,"token":junk})).await;
    let e = j.expect("error").await;
    assert!(e["code"].as_str().unwrap().starts_with("token_"), "{e}");

    drop((d, p, p2));
    let (stdout, stderr) = server.stop();
    // Positive control: the operational log did run, at a verbose level.
    assert!(stderr.contains("listening on"), "{stderr}");
    assert!(stderr.contains("joined"), "{stderr}");
    assert!(stdout.contains("\"event\":\"join\""), "the audit log ran");

    let secrets = [
        ("clinician token", doc.as_str()),
        ("patient token", patient.as_str()),
        ("resume ticket", resume.as_str()),
        ("WebSocket invite token", invite.as_str()),
        ("API invite token", api_token.as_str()),
        ("junk token", junk.as_str()),
        ("link secret", link_secret.as_str()),
        ("clinician name", doc_name),
        ("patient name", patient_name),
        ("invitee name", invite_name),
        ("API invitee name", api_invite_name),
        ("relay payload", payload),
    ];
    for (what, secret) in secrets {
        // The signature part alone would do as much harm as the token.
        let tail = &secret[secret.len().saturating_sub(24)..];
        for (stream, text) in [("stdout", &stdout), ("stderr", &stderr)] {
            assert!(!text.contains(secret), "{what} in {stream}");
            assert!(!text.contains(tail), "{what} (its tail) in {stream}");
            assert!(!text.contains(&hex(secret)), "{what} (hex) in {stream}");
        }
    }
}
