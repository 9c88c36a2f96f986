//! What someone without a token can make the edge hold is bounded: pings
//! without reading, trickled or idle HTTP connections, connections per
//! address and in total, silent joined WebSockets, junk-token joins and the
//! audit lines they cause. Real sockets on loopback; clients bind to other
//! 127.0.0.0/8 addresses to be distinct sources.

use crate::common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use signaling::gate::ConnectionLimits;
use signaling::protocol::Role;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A TCP connection to `addr` from the loopback address `source`.
async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().unwrap())
        .expect("bind a loopback source address");
    tokio::time::timeout(WAIT, socket.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Read until EOF or error; `true` if that happened within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Everything the server sends until it closes (bounded by `WAIT`).
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            Err(_) => panic!("not closed within {WAIT:?}; got {out:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status")
}

async fn metrics(addr: SocketAddr) -> String {
    get(addr, "/metrics").await.text()
}

/// The value of one metric line (`name{labels}`), 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// A WebSocket handshake by hand, so the test controls every byte after it.
async fn raw_websocket(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut byte = [0u8; 1];
    while !response.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("handshake in time")
            .unwrap();
        assert_eq!(n, 1, "server closed during the handshake");
        response.push(byte[0]);
    }
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 101"), "{response}");
    stream
}

/// Server-to-client frames (unmasked): (opcode, payload).
fn parse_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0f;
        let (len, header) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 if bytes.len() >= 10 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n if n < 126 => (usize::from(n), 2),
            _ => break,
        };
        if bytes.len() < header + len {
            break;
        }
        frames.push((opcode, bytes[header..header + len].to_vec()));
        bytes = &bytes[header + len..];
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_without_reading_is_closed_with_the_policy_code_and_memory_stays_flat() {
    let server = start().await;
    let mut ws = raw_websocket(server.addr).await;
    let rss_before = vm_rss_kib();

    // Masked ping frames with the largest control payload (125 bytes),
    // written in batches for up to 3 s without reading a byte.
    let mut ping = vec![0x89, 0x80 | 125, 1, 2, 3, 4];
    ping.extend((0..125u8).map(|i| i ^ [1, 2, 3, 4][usize::from(i) % 4]));
    let batch: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 512)
        .collect();
    let mut sent = 0usize;
    let mut peak_rss = rss_before;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        match tokio::time::timeout(Duration::from_millis(500), ws.write_all(&batch)).await {
            Ok(Ok(())) => sent += 512,
            // The server stopped reading (it closed) or reset the socket.
            Ok(Err(_)) | Err(_) => break,
        }
        peak_rss = peak_rss.max(vm_rss_kib());
    }

    // Now read: pongs, then a close frame with 1008 (policy violation).
    let frames = parse_frames(&read_to_close(&mut ws).await);
    let close = frames
        .iter()
        .find(|(op, _)| *op == 0x8)
        .unwrap_or_else(|| panic!("no close frame after {sent} pings"));
    assert_eq!(
        u16::from_be_bytes([close.1[0], close.1[1]]),
        signaling::connection::CLOSE_POLICY
    );
    let pongs = frames.iter().filter(|(op, _)| *op == 0xA).count();
    assert!(pongs <= 64, "{pongs} pongs for a burst of 10 pings");
    let grown_mib = peak_rss.saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 64,
        "memory grew {grown_mib} MiB under {sent} pings"
    );
    let text = metrics(server.addr).await;
    assert_eq!(
        metric(&text, "spreekkamer_ws_closed_total{reason=\"ping_flood\"}"),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn trickled_request_head_is_cut_off_after_the_header_timeout() {
    let mut cfg = config();
    cfg.connections.header_timeout = Duration::from_secs(1);
    let server = start_with(cfg).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut rx, mut tx) = stream.into_split();
    // One header line every 300 ms, for at most 12 s.
    let trickle = tokio::spawn(async move {
        let _ = tx.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
        for i in 0..40 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if tx
                .write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(12), rx.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(_)) => continue,
        }
    };
    trickle.abort();
    assert!(closed, "a trickled request head was never cut off");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "closed after {:?}, header timeout 1 s",
        started.elapsed()
    );
    let text = metrics(server.addr).await;
    assert!(
        metric(&text, "spreekkamer_http_header_timeouts_total") >= 1.0,
        "{text}"
    );
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_header_timeout() {
    let mut cfg = config();
    cfg.connections.header_timeout = Duration::from_secs(1);
    let server = start_with(cfg).await;
    // Never sends a byte.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    // Sends one keep-alive request, then nothing.
    let mut kept_alive = TcpStream::connect(server.addr).await.unwrap();
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(WAIT, kept_alive.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    assert!(
        closed_within(&mut silent, Duration::from_secs(8)).await,
        "a connection that never sent a byte stayed open"
    );
    assert!(
        closed_within(&mut kept_alive, Duration::from_secs(8)).await,
        "an idle keep-alive connection stayed open"
    );
}

#[tokio::test]
async fn connections_over_the_per_address_cap_are_refused_while_others_get_healthz() {
    let mut cfg = config();
    cfg.connections = ConnectionLimits {
        max_total: Some(100),
        max_per_ip: 8,
        ..ConnectionLimits::default()
    };
    let server = start_with(cfg).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(connect_from("127.0.0.2", server.addr).await);
    }
    // The gate counts a connection once it is accepted; wait for all 8.
    let gate = server.server.context().connection_gate.clone();
    let deadline = Instant::now() + WAIT;
    while gate.open() < 8 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..5 {
        let mut refused = connect_from("127.0.0.2", server.addr).await;
        let answer = String::from_utf8_lossy(&read_to_close(&mut refused).await).into_owned();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    }
    // Another address is not affected.
    let healthz = request_from("127.0.0.3", server.addr, "/healthz").await;
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
    let text = metrics(server.addr).await;
    assert_eq!(
        metric(
            &text,
            "spreekkamer_http_connections_refused_total{cap=\"per_address\"}"
        ),
        5.0,
        "{text}"
    );
    // Slots come back when the connections close.
    drop(held);
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = request_from("127.0.0.2", server.addr, "/healthz").await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "slots never released: {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn connections_over_the_total_cap_are_refused() {
    let mut cfg = config();
    cfg.connections = ConnectionLimits {
        max_total: Some(6),
        max_per_ip: 4,
        ..ConnectionLimits::default()
    };
    let server = start_with(cfg).await;
    let mut held = Vec::new();
    for source in [
        "127.0.0.2",
        "127.0.0.2",
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.3",
        "127.0.0.3",
    ] {
        held.push(connect_from(source, server.addr).await);
    }
    let gate = server.server.context().connection_gate.clone();
    let deadline = Instant::now() + WAIT;
    while gate.open() < 6 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = request_from("127.0.0.4", server.addr, "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    drop(held);
    let deadline = Instant::now() + WAIT;
    while gate.open() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = metrics(server.addr).await;
    assert_eq!(
        metric(
            &text,
            "spreekkamer_http_connections_refused_total{cap=\"total\"}"
        ),
        1.0,
        "{text}"
    );
}

/// `GET path` from `source`; the raw answer.
async fn request_from(source: &str, addr: SocketAddr, path: &str) -> String {
    let mut stream = connect_from(source, addr).await;
    let _ = stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
    String::from_utf8_lossy(&read_to_close(&mut stream).await).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_token_join_flood_is_rate_limited_and_the_audit_log_summarises_it() {
    let server = start().await;
    const ATTEMPTS: usize = 200;
    let mut codes = Vec::new();
    for chunk in 0..ATTEMPTS / 8 {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let addr = server.addr;
                tokio::spawn(async move {
                    let mut c = Client::connect(addr).await;
                    c.send(json!({"type":"join","v":1,"token":format!("junk-{chunk}-{i}")}))
                        .await;
                    let v = c.expect("error").await;
                    v["code"].as_str().unwrap().to_string()
                })
            })
            .collect();
        for t in tasks {
            codes.push(t.await.unwrap());
        }
    }
    let limited = codes.iter().filter(|c| *c == "rate_limited").count();
    assert!(
        limited >= ATTEMPTS / 2,
        "{limited} of {ATTEMPTS} rate limited: {codes:?}"
    );

    // Someone else (another address) with a valid token still joins.
    let stream = connect_from("127.0.0.2", server.addr).await;
    let (ws, _) = tokio_tungstenite::client_async(
        format!("ws://{}/ws", server.addr),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    let mut clinician = Client { ws };
    clinician
        .join(&token("c-flood", Role::Clinician, "Dr"))
        .await;

    // Every attempt is accounted for: written, or counted in a summary
    // (written by the server's sweeper once the source went quiet).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (written, summarised) = loop {
        let lines = server.audit_lines();
        let from_flooder = |l: &&Value| l["access_point"]["ip"] == "127.0.0.1";
        let written = lines
            .iter()
            .filter(from_flooder)
            .filter(|l| l["event"] == "token_rejected")
            .count();
        let summarised: u64 = lines
            .iter()
            .filter(from_flooder)
            .filter(|l| l["event"] == "audit_suppressed")
            .map(|l| l["detail"]["suppressed"].as_u64().unwrap())
            .sum();
        if written as u64 + summarised == ATTEMPTS as u64 || Instant::now() > deadline {
            break (written, summarised);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(written as u64 + summarised, ATTEMPTS as u64);
    assert!(
        summarised > 0 && written < ATTEMPTS / 2,
        "{written} lines written"
    );
    let text = metrics(server.addr).await;
    assert_eq!(
        metric(&text, "spreekkamer_audit_lines_suppressed_total"),
        summarised as f64
    );
    assert_eq!(
        metric(
            &text,
            "spreekkamer_joins_rejected_total{reason=\"rate_limited\"}"
        ),
        limited as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_participant_that_stops_answering_is_closed_but_one_that_answers_stays() {
    let mut cfg = config();
    cfg.ws_heartbeat = Duration::from_millis(300);
    cfg.ws_idle_timeout = Duration::from_millis(1500);
    let server = start_with(cfg).await;
    let (mut silent, _) = Client::joined(server.addr, &token("c-hb", Role::Clinician, "Dr")).await;
    let (mut answering, _) =
        Client::joined(server.addr, &token("c-hb", Role::Clinician, "Dr2")).await;
    // `answering` reads (tokio-tungstenite answers pings while reading);
    // `silent` is not polled at all for 4 s.
    let until = Instant::now() + Duration::from_secs(4);
    let mut pings = 0;
    while Instant::now() < until {
        match tokio::time::timeout(Duration::from_millis(200), answering.ws.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                panic!("the answering participant was closed")
            }
            _ => {}
        }
    }
    assert!(pings >= 2, "{pings} heartbeat pings in 4 s");
    answering.sync().await;
    // What was queued for `silent` (the other's arrival) may come first.
    loop {
        match tokio::time::timeout(WAIT, silent.ws.next()).await {
            Err(_) => panic!("the silent participant was never closed"),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(_))) => continue,
        }
    }
    let text = metrics(server.addr).await;
    assert_eq!(
        metric(
            &text,
            "spreekkamer_ws_closed_total{reason=\"heartbeat_timeout\"}"
        ),
        1.0,
        "{text}"
    );
}
