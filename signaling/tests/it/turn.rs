//! TURN credentials (issue 12, `turn.rs`): `welcome` and the connectivity
//! check carry short-lived coturn REST credentials only when TURN is
//! configured; they expire with the token at the latest; the secret is in no
//! message, log or audit line.

use crate::common::*;
use base64::Engine;
use serde_json::{Value, json};
use signaling::protocol::Role;
use signaling::token::{MintRequest, mint_hs256, unix_now};
use signaling::turn::{TurnConfig, TurnSecret, credential, parse_uri};
use std::time::Duration;

const TURN_SECRET: &str = "turn-static-auth-secret-under-test-5f1c";

fn turn(ttl: u64, force_relay: bool) -> TurnConfig {
    TurnConfig {
        uris: vec![
            parse_uri("turn:turn.example.nl:3478?transport=udp").unwrap(),
            parse_uri("turns:turn.example.nl:443?transport=tcp").unwrap(),
        ],
        secret: TurnSecret::new(TURN_SECRET).unwrap(),
        ttl: Duration::from_secs(ttl),
        force_relay,
    }
}

fn token_ttl(consult: &str, role: Role, ttl_secs: u64) -> String {
    mint_hs256(
        SECRET.as_bytes(),
        &MintRequest {
            issuer: "spreekkamer".into(),
            audience: "spreekkamer".into(),
            sub: format!("sub-{consult}-{role:?}"),
            role,
            consult: consult.into(),
            name: "Naam Onbekend".into(),
            host: None,
            ttl_secs,
            jti: None,
        },
        unix_now(),
    )
    .expect("mints")
}

fn token_exp(token: &str) -> u64 {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    v["exp"].as_u64().unwrap()
}

/// The one ICE server entry: its username names the expiry and the
/// participant id, its credential is the HMAC of it.
fn check_entry(w: &Value, id: &str) -> u64 {
    let servers = w["ice_servers"].as_array().expect("ice_servers");
    assert_eq!(servers.len(), 1, "{w}");
    let s = &servers[0];
    assert_eq!(
        s["urls"],
        json!([
            "turn:turn.example.nl:3478?transport=udp",
            "turns:turn.example.nl:443?transport=tcp"
        ])
    );
    let username = s["username"].as_str().unwrap();
    let (expiry, who) = username.split_once(':').unwrap();
    assert_eq!(who, id, "only the participant id, no name or sub");
    let secret = TurnSecret::new(TURN_SECRET).unwrap();
    assert_eq!(s["credential"], credential(&secret, username).as_str());
    assert!(!w.to_string().contains(TURN_SECRET));
    expiry.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_has_no_ice_servers_without_turn() {
    let s = start().await;
    let (_c, w) = Client::joined(s.addr, &token("t0", Role::Clinician, "Dr. T")).await;
    assert!(w.get("ice_servers").is_none(), "{w}");
    assert!(w.get("force_relay").is_none(), "{w}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_carries_credentials_that_expire_with_the_ttl_or_the_token() {
    let mut cfg = config();
    cfg.turn = Some(turn(600, false));
    let s = start_with(cfg).await;

    // A token valid for an hour: the credential lasts --turn-ttl (10 min).
    let long = token_ttl("t1", Role::Clinician, 3600);
    let before = unix_now();
    let (_d, w) = Client::joined(s.addr, &long).await;
    let expiry = check_entry(&w, w["you"]["id"].as_str().unwrap());
    assert!(
        (before + 600..=unix_now() + 600).contains(&expiry),
        "{expiry}"
    );
    assert!(w.get("force_relay").is_none(), "{w}");

    // A token valid for 2 minutes: the credential ends with it.
    let short = token_ttl("t1", Role::Patient, 120);
    let (_p, w) = Client::joined(s.addr, &short).await;
    let expiry = check_entry(&w, w["you"]["id"].as_str().unwrap());
    assert_eq!(expiry, token_exp(&short), "capped to the token's exp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_relay_is_told_and_the_probe_gets_credentials_before_its_offer() {
    let mut cfg = config();
    cfg.turn = Some(turn(600, true));
    let s = start_with(cfg).await;
    let (_d, w) = Client::joined(s.addr, &token("t2", Role::Clinician, "Dr. R")).await;
    assert_eq!(w["force_relay"], true);

    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"probe","v":1,"token":token("t2", Role::Patient, "P")}))
        .await;
    let Frame::Json(first) = c.frame().await else {
        panic!("closed")
    };
    assert_eq!(first["type"], "ice-servers", "{first}");
    assert_eq!(first["force_relay"], true);
    let username = first["ice_servers"][0]["username"].as_str().unwrap();
    let (_, who) = username.split_once(':').unwrap();
    assert_eq!(who.len(), 16, "a random probe id: {username}");
    let Frame::Json(second) = c.frame().await else {
        panic!("closed")
    };
    assert_eq!(second["type"], "offer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_probe_gets_no_turn_credential_only_its_offer() {
    let mut cfg = config();
    cfg.turn = Some(turn(600, false));
    let s = start_with(cfg).await;
    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"probe","v":1})).await;
    let Frame::Json(first) = c.frame().await else {
        panic!("closed")
    };
    // Anyone may send this: a TURN credential would be an open relay for its lifetime.
    assert_eq!(first["type"], "offer", "{first}");
    assert!(first.get("ice_servers").is_none(), "{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_turn_secret_is_in_no_log_or_audit_line() {
    let dir = std::env::temp_dir().join(format!(
        "spreekkamer-turn-{}",
        signaling::token::random_hex_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("turn.secret");
    std::fs::write(&file, format!("{TURN_SECRET}\n")).unwrap();
    let (server, addr) = BinServer::start(
        &[
            "--log-level",
            "trace",
            "--turn-uri",
            "turn:127.0.0.1:3478?transport=udp",
            "--turn-secret-file",
            file.to_str().unwrap(),
        ],
        &[("SPREEKKAMER_JWT_SECRET", SECRET)],
    );
    let (_d, w) = Client::joined(addr, &token("t3", Role::Clinician, "Dr. L")).await;
    let cred = w["ice_servers"][0]["credential"]
        .as_str()
        .unwrap()
        .to_string();
    let mut c = Client::connect(addr).await;
    c.send(json!({"type":"probe","v":1,"token":token("t3", Role::Patient, "P")}))
        .await;
    let Frame::Json(first) = c.frame().await else {
        panic!("closed")
    };
    assert_eq!(first["type"], "ice-servers");
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (out, err) = server.stop();
    let _ = std::fs::remove_dir_all(&dir);
    for (what, text) in [("audit (stdout)", &out), ("log (stderr)", &err)] {
        assert!(
            !text.is_empty() || what.starts_with("audit"),
            "{what} empty"
        );
        assert!(!text.contains(TURN_SECRET), "the TURN secret in the {what}");
        assert!(
            !text.contains(&cred),
            "a TURN credential in the {what}:\n{text}"
        );
    }
}
