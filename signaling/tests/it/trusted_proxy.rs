//! Behind a trusted proxy *range* (ingress-nginx pods on a pod network) the
//! client named in `X-Forwarded-For` is who the audit log records and whom
//! the per-client limits count — not the proxy pod. Real sockets on
//! loopback: the "ingress pods" are 127.0.0.2 and 127.0.0.3, trusted as
//! 127.0.0.0/8 (neither is the range's own address, so an exact-address
//! match would not do).

use crate::common::*;
use serde_json::{Value, json};
use signaling::protocol::Role;
use std::net::SocketAddr;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A WebSocket to `addr` from the loopback address `proxy`, as a proxy
/// would open it, with `X-Forwarded-For: forwarded_for`.
async fn through_proxy(proxy: &str, addr: SocketAddr, forwarded_for: &str) -> Client {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{proxy}:0").parse().unwrap())
        .expect("bind a loopback source address");
    let stream = tokio::time::timeout(WAIT, socket.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", forwarded_for.parse().unwrap());
    let (ws, _) =
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .expect("websocket handshake");
    Client { ws }
}

async fn join_error(c: &mut Client, token: &str) -> String {
    c.send(json!({"type":"join","v":1,"token":token})).await;
    let v = c.expect("error").await;
    v["code"].as_str().unwrap().to_string()
}

fn lines_from(lines: &[Value], ip: &str, event: &str) -> usize {
    lines
        .iter()
        .filter(|l| l["access_point"]["ip"] == ip && l["event"] == event)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_behind_a_trusted_proxy_range_are_audited_and_limited_each_on_their_own() {
    let mut cfg = config();
    cfg.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    cfg.join_failure_burst = 2;
    cfg.connections.max_per_ip = 2;
    let s = start_with(cfg).await;
    const ATTACKER: &str = "198.51.100.66";
    const PATIENT: &str = "203.0.113.7";

    // One client with bad tokens, through both ingress pods, uses up its
    // failed-join budget...
    let mut codes = Vec::new();
    for proxy in ["127.0.0.2", "127.0.0.3", "127.0.0.2"] {
        let mut c = through_proxy(proxy, s.addr, ATTACKER).await;
        codes.push(join_error(&mut c, "junk").await);
    }
    assert_ne!(codes[0], "rate_limited", "{codes:?}");
    assert_ne!(codes[1], "rate_limited", "{codes:?}");
    assert_eq!(codes[2], "rate_limited", "{codes:?}");
    // ... and cannot get a fresh one by naming someone else on the left:
    // the ingress appends the address it saw, the rightmost untrusted entry.
    let mut c = through_proxy("127.0.0.3", s.addr, &format!("{PATIENT}, {ATTACKER}")).await;
    assert_eq!(join_error(&mut c, "junk").await, "rate_limited");

    // Patients behind the same proxy pods are not limited with it, and
    // more of them than --max-connections-per-ip stay connected through one
    // pod at once (the pods are exempt; each patient is its own address).
    let mut patients = Vec::new();
    for (i, client) in [PATIENT, "203.0.113.8", "2001:db8::9"]
        .into_iter()
        .enumerate()
    {
        let mut c = through_proxy("127.0.0.2", s.addr, client).await;
        c.join(&token("c-xff", Role::Patient, &format!("P{i}")))
            .await;
        patients.push(c);
    }

    let lines = s.audit_lines();
    let joins: Vec<&str> = lines
        .iter()
        .filter(|l| l["event"] == "join" || l["event"] == "waiting_room_entered")
        .map(|l| l["access_point"]["ip"].as_str().unwrap())
        .collect();
    assert!(!joins.is_empty(), "{lines:?}");
    for ip in [PATIENT, "203.0.113.8", "2001:db8::9"] {
        assert!(joins.contains(&ip), "{ip} in {joins:?}");
    }
    assert!(
        lines_from(&lines, ATTACKER, "token_rejected") >= 2,
        "the attacker's failures carry its address: {lines:?}"
    );
    for proxy in ["127.0.0.2", "127.0.0.3"] {
        assert!(
            lines.iter().all(|l| l["access_point"]["ip"] != proxy),
            "no line records the proxy pod {proxy}: {lines:?}"
        );
    }
    assert_eq!(lines_from(&lines, PATIENT, "token_rejected"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_the_trusted_range_the_header_is_ignored() {
    let mut cfg = config();
    cfg.trusted_proxies = vec!["127.0.0.0/30".parse().unwrap()];
    let s = start_with(cfg).await;
    // 127.0.0.5 is not in 127.0.0.0/30: it is the client, whatever it says.
    let mut c = through_proxy("127.0.0.5", s.addr, "203.0.113.7").await;
    c.join(&token("c-xff", Role::Patient, "P")).await;
    // 127.0.0.2 is.
    let mut c2 = through_proxy("127.0.0.2", s.addr, "203.0.113.8").await;
    c2.join(&token("c-xff", Role::Patient, "Q")).await;
    let ips: Vec<String> = s
        .audit_lines()
        .iter()
        .filter(|l| l["event"] == "join" || l["event"] == "waiting_room_entered")
        .map(|l| l["access_point"]["ip"].as_str().unwrap().to_string())
        .collect();
    assert!(ips.contains(&"127.0.0.5".to_string()), "{ips:?}");
    assert!(ips.contains(&"203.0.113.8".to_string()), "{ips:?}");
    assert!(!ips.contains(&"203.0.113.7".to_string()), "{ips:?}");
}
