//! Shared helpers: an in-process server on an ephemeral port, a WebSocket
//! client that speaks JSON, and a minimal HTTP GET.
#![allow(dead_code)]

pub mod redis;

use futures_util::{SinkExt, StreamExt};
use include_dir::{Dir, include_dir};
use serde_json::{Value, json};
use signaling::audit::AuditSink;
use signaling::protocol::Role;
use signaling::token::{MintRequest, mint_hs256, unix_now};
use signaling::{ServeConfig, Server};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";
/// Generous: the machine running the tests may be busy.
pub const WAIT: Duration = Duration::from_secs(10);

pub static FIXTURE_WEB: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/tests/fixtures/web");

pub struct TestServer {
    pub server: Server,
    pub addr: SocketAddr,
    pub audit: Arc<Mutex<Vec<String>>>,
}

impl TestServer {
    pub fn audit_lines(&self) -> Vec<Value> {
        self.audit
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }
}

pub fn config() -> ServeConfig {
    let mut cfg = ServeConfig::new("127.0.0.1:0".parse().unwrap(), SECRET.as_bytes());
    cfg.assets = &FIXTURE_WEB;
    cfg
}

pub async fn start_with(mut cfg: ServeConfig) -> TestServer {
    let audit = Arc::new(Mutex::new(Vec::new()));
    cfg.audit = AuditSink::Memory(audit.clone());
    let server = signaling::serve(cfg).await.expect("server starts");
    let addr = server.local_addr();
    TestServer {
        server,
        addr,
        audit,
    }
}

pub async fn start() -> TestServer {
    start_with(config()).await
}

pub fn token(consult: &str, role: Role, name: &str) -> String {
    token_with_sub(consult, role, name, &format!("sub-{name}"))
}

pub fn token_with_sub(consult: &str, role: Role, name: &str, sub: &str) -> String {
    mint_hs256(
        SECRET.as_bytes(),
        &MintRequest {
            issuer: "spreekkamer".into(),
            audience: "spreekkamer".into(),
            sub: sub.into(),
            role,
            consult: consult.into(),
            name: name.into(),
            host: None,
            ttl_secs: 3600,
            jti: None,
        },
        unix_now(),
    )
    .expect("mints")
}

/// Messages that arrive on their own schedule: media-plane messages and
/// resume tickets.
pub fn background(v: &Value) -> bool {
    v["type"] == "offer" || v["type"] == "media-failed" || v["type"] == "resume"
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub ws: Ws,
}

/// What the next frame was.
#[derive(Debug)]
pub enum Frame {
    Json(Value),
    Closed,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
        )
        .await
        .expect("connect in time")
        .expect("websocket handshake");
        Client { ws }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// Send that may fail because the server already closed.
    pub async fn try_send_raw(&mut self, text: String) -> Result<(), String> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| e.to_string())
    }

    /// The next text frame as JSON, or `Closed` once the server closed.
    pub async fn frame(&mut self) -> Frame {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within the wait time");
            match next {
                Some(Ok(Message::Text(t))) => {
                    return Frame::Json(
                        serde_json::from_str(t.as_str()).expect("server sends JSON"),
                    );
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Frame::Closed,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next message that is not from the media plane (offers arrive
    /// whenever the SFU is real; these tests are about signaling) nor a
    /// resume ticket (sent on entering the call and then every so often;
    /// `expect_resume` waits for one).
    pub async fn next(&mut self) -> Value {
        loop {
            match self.frame().await {
                Frame::Json(v) if background(&v) => continue,
                Frame::Json(v) => return v,
                Frame::Closed => panic!("connection closed while waiting for a message"),
            }
        }
    }

    /// The next message of type `ty`, skipping media messages only.
    pub async fn expect(&mut self, ty: &str) -> Value {
        let v = self.next().await;
        assert_eq!(v["type"], ty, "expected {ty}, got {v}");
        v
    }

    /// Expect `error{code, fatal:true}` followed by the close.
    pub async fn expect_fatal(&mut self, code: &str) {
        let v = self.expect("error").await;
        assert_eq!(v["code"], code, "{v}");
        assert_eq!(v["fatal"], true, "{v}");
        self.expect_closed().await;
    }

    pub async fn expect_closed(&mut self) {
        loop {
            match self.frame().await {
                Frame::Closed => return,
                Frame::Json(v) if background(&v) => continue,
                Frame::Json(v) => panic!("expected close, got {v}"),
            }
        }
    }

    /// The next `resume` message, skipping everything else.
    pub async fn expect_resume(&mut self) -> Value {
        loop {
            match self.frame().await {
                Frame::Json(v) if v["type"] == "resume" => return v,
                Frame::Json(_) => continue,
                Frame::Closed => panic!("connection closed while waiting for a resume ticket"),
            }
        }
    }

    pub async fn join(&mut self, token: &str) -> Value {
        self.send(json!({"type":"join","v":1,"token":token})).await;
        self.expect("welcome").await
    }

    /// Connect and join; returns the client and its welcome.
    pub async fn joined(addr: SocketAddr, token: &str) -> (Client, Value) {
        let mut c = Client::connect(addr).await;
        let w = c.join(token).await;
        (c, w)
    }

    /// Round-trip a ping: everything the server queued for this client
    /// before the pong has been received once this returns.
    pub async fn sync(&mut self) -> Vec<Value> {
        self.send(json!({"type":"ping"})).await;
        let mut before = Vec::new();
        loop {
            let v = self.next().await;
            if v["type"] == "pong" {
                return before;
            }
            before.push(v);
        }
    }
}

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `POST /api/v1/invites` with an optional clinician token.
pub async fn post_invite(s: &TestServer, auth: Option<&str>, body: &[u8]) -> HttpResponse {
    let bearer;
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(t) = auth {
        bearer = format!("Bearer {t}");
        headers.push(("Authorization", bearer.as_str()));
    }
    request(s.addr, "POST", "/api/v1/invites", &headers, Some(body)).await
}

/// `DELETE /api/v1/invites/{jti}` with a clinician token.
pub async fn delete_invite(s: &TestServer, auth: &str, jti: &str) -> HttpResponse {
    let bearer = format!("Bearer {auth}");
    request(
        s.addr,
        "DELETE",
        &format!("/api/v1/invites/{jti}"),
        &[("Authorization", bearer.as_str())],
        None,
    )
    .await
}

/// The JSON body of a response.
pub fn json_body(r: &HttpResponse) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("JSON body: {}", r.text()))
}

/// `error.code` of an API error body.
pub fn error_code(r: &HttpResponse) -> String {
    json_body(r)["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("error body: {}", r.text()))
        .to_string()
}

/// A minimal HTTP/1.1 GET (Connection: close; bodies here are small and
/// never chunked-decoded beyond what the assertions need).
pub async fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    request(addr, "GET", path, &[], None).await
}

/// A minimal HTTP/1.1 request with extra headers and an optional body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.expect("tcp connect");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    if let Some(b) = body {
        request.extend_from_slice(b);
    }
    // The server may answer (413) before reading all of a large body.
    let _ = stream.write_all(&request).await;
    let mut raw = Vec::new();
    // A reset after the response (the server closing on an unread body)
    // keeps what arrived.
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("response in time");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let Ok(size) = usize::from_str_radix(size_text.trim(), 16) else {
            return out;
        };
        if size == 0 {
            return out;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
}

/// The real `spreekkamer` binary on an ephemeral port, its stdout and
/// stderr captured in files (so nothing blocks on a full pipe).
pub struct BinServer {
    child: Child,
    dir: std::path::PathBuf,
}

impl BinServer {
    /// Start the binary with `args`, stdout and stderr to files, and wait
    /// for its listening address.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> (BinServer, std::net::SocketAddr) {
        let dir = std::env::temp_dir().join(format!(
            "spreekkamer-logs-{}",
            signaling::token::random_hex_id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::fs::File::create(dir.join("stdout")).unwrap();
        let err = std::fs::File::create(dir.join("stderr")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spreekkamer"));
        cmd.args(["--listen", "127.0.0.1:0", "--workers", "1"])
            .args(args)
            .env_remove("SPREEKKAMER_JWT_SECRET")
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("starts");
        let running = BinServer { child, dir };
        let started = Instant::now();
        loop {
            let log = running.stderr();
            if let Some(addr) = log.lines().find_map(|l| {
                l.split_once("listening on ")
                    .map(|(_, a)| a.trim().to_string())
            }) {
                return (running, addr.parse().expect("an address"));
            }
            assert!(started.elapsed() < WAIT, "no `listening on` in:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// SIGTERM and wait for the exit.
    pub fn stop(mut self) -> (String, String) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < WAIT, "exits after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = (self.stdout(), self.stderr());
        let _ = std::fs::remove_dir_all(&self.dir);
        out
    }
}
