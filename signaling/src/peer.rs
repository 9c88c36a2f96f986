//! Edges of a cluster: each consult's room has one home edge, and every
//! other edge passes that consult's WebSockets through to it.
//!
//! The room (roster, waiting room, lock, removals) is one in-memory
//! [`Directory`](crate::directory::Directory) entry, so all of a consult's
//! participants must meet on one edge. Browsers reach any edge (one Service
//! address); the edge that gets a `join` reads the consult from the token
//! and asks the edge directory where the consult's room lives:
//!
//! * edges register in the same kind of [`Registry`] as media nodes, under
//!   their own key prefix, with a heartbeat (load: participants held);
//!   [`Registry::place`] gives a consult's room a home atomically, so two
//!   edges taking the first two participants at once agree on one home;
//! * if the home is this edge, the join is handled here as in `serve`;
//! * otherwise this edge opens a WebSocket to the home edge's peer port
//!   (`--peer-listen`, reached at `--peer-advertise`), sends the `join` on,
//!   and from then on passes text frames both ways. The home edge believes
//!   the client address in [`PEER_HEADER`] only with a valid HMAC under a
//!   key derived from the link secret: the peer port refuses anyone else.
//!
//! When the home edge dies, the connections through it close without `bye`
//! and every browser reconnects with its resume ticket (DECISIONS record
//! 7); the edge that takes the reconnect finds the home's link refused,
//! waits until the home's entry expired (`--node-ttl`) and moves the room
//! ([`Registry::replace`], a compare-and-set, so edges agree), usually to
//! itself. The room is rebuilt from the tickets: no one is admitted again.

use crate::audit::AccessPoint;
use crate::link::LinkSecret;
use crate::registry::{NodeInfo, Registry, RegistryError};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type HmacSha256 = Hmac<Sha256>;

/// The header a forwarding edge proves itself with:
/// `v1 UNIX IP UA-FAMILY HEX-HMAC`.
pub const PEER_HEADER: &str = "x-spreekkamer-peer";
/// Key prefix of the edge directory in Redis (the media nodes' is
/// [`DEFAULT_PREFIX`](crate::registry::DEFAULT_PREFIX)).
pub const EDGE_PREFIX: &str = "spreekkamer:edges:";
/// The path of the peer port's WebSocket.
pub const PEER_PATH: &str = "peer";
/// How far a proof's time may be from ours (clock skew plus the connect).
const PROOF_WINDOW_SECS: u64 = 30;
/// Longest wait for the home edge to accept a WebSocket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a join waiting for a dead home edge to expire looks again.
const RETRY_EVERY: Duration = Duration::from_millis(250);
/// The capacity an edge registers with: edges are not placed by a capacity
/// (their load is the participants they hold); the registry's largest
/// accepted value keeps every edge eligible.
const LARGEST_EDGE_LOAD: u32 = crate::registry::MAX_CAPACITY;

/// Longest wait for the home edge to answer an invite API request.
const API_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest reply to an invite API request (an invite with its link).
const MAX_API_REPLY: usize = 64 * 1024;

/// What the home edge answered to an invite API request.
#[derive(Debug)]
pub struct ApiReply {
    pub status: u16,
    pub www_authenticate: Option<String>,
    pub body: String,
}

/// The upstream WebSocket to a home edge.
pub type Upstream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// This edge's place among the edges.
pub struct Peers {
    pub edges: Arc<dyn Registry>,
    pub id: String,
    pub advertise: SocketAddr,
    key: [u8; 32],
    /// The edge directory's entry lifetime (`--node-ttl`).
    pub ttl: Duration,
    metrics: Arc<crate::metrics::Metrics>,
    /// The entry of the last heartbeat, to register again at once when the
    /// directory lost every edge (Redis restarted empty).
    last_entry: std::sync::Mutex<Option<NodeInfo>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("id", &self.id)
            .field("advertise", &self.advertise)
            .finish_non_exhaustive()
    }
}

/// Where a join goes.
pub enum Home {
    /// This edge holds the room.
    Here,
    /// Another edge does: pass the connection through.
    There(Box<Upstream>),
}

/// Why a join could not be routed.
#[derive(Debug)]
pub enum RouteError {
    /// The edge directory cannot be reached, or no edge is registered.
    Directory(RegistryError),
    /// The home edge stayed unreachable and registered past the wait.
    HomeUnreachable(String),
}

impl Peers {
    pub fn new(
        edges: Arc<dyn Registry>,
        id: String,
        advertise: SocketAddr,
        secret: &LinkSecret,
        ttl: Duration,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Peers {
        Peers {
            edges,
            id,
            advertise,
            key: secret.derive(b"spreekkamer edge peer v1"),
            ttl,
            metrics,
            last_entry: std::sync::Mutex::new(None),
        }
    }

    /// This edge's directory entry, with `load` participants in its rooms.
    pub fn entry(&self, load: u32, consults: u32, draining: bool) -> NodeInfo {
        let entry = NodeInfo {
            id: self.id.clone(),
            announce_ip: self.advertise.ip(),
            link_addr: self.advertise,
            capacity: LARGEST_EDGE_LOAD,
            load: load.min(LARGEST_EDGE_LOAD),
            consults,
            draining,
        };
        *self.last_entry.lock().unwrap_or_else(|p| p.into_inner()) = Some(entry.clone());
        entry
    }

    /// The room's home: `place`, and if no edge is registered at all (the
    /// directory came back empty and this edge's next beat is still to
    /// come), register this edge now and ask once more.
    async fn place(&self, consult: &str) -> Result<NodeInfo, RouteError> {
        match self.edges.place(consult).await {
            Err(RegistryError::NoNode) => {
                let last = self
                    .last_entry
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                if let Some(entry) = last.filter(|e| !e.draining) {
                    self.edges
                        .heartbeat(&entry, self.ttl)
                        .await
                        .map_err(RouteError::Directory)?;
                }
                self.edges
                    .place(consult)
                    .await
                    .map_err(RouteError::Directory)
            }
            placed => placed.map_err(RouteError::Directory),
        }
    }

    /// The proof header for a connection from `access`, at `unix`.
    pub fn proof(&self, access: &AccessPoint, unix: u64) -> String {
        let ip = access
            .ip
            .map_or_else(|| "-".to_string(), |ip| ip.to_string());
        let mac = self.mac(unix, &ip, access.ua_family);
        format!("v1 {unix} {ip} {} {}", access.ua_family, hex(&mac))
    }

    /// The client's access point if `header` is a valid proof within the
    /// window around `now`.
    pub fn verify(&self, header: Option<&str>, now: u64) -> Option<AccessPoint> {
        let mut parts = header?.split(' ');
        let (v, unix, ip, ua, mac) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if v != "v1" || parts.next().is_some() || ip.len() > 64 || ua.len() > 16 {
            return None;
        }
        let unix: u64 = unix.parse().ok()?;
        if unix.abs_diff(now) > PROOF_WINDOW_SECS {
            return None;
        }
        let tag = unhex(mac)?;
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.key).ok()?;
        feed(&mut m, unix, ip, ua);
        m.verify_slice(&tag).ok()?;
        let ip = match ip {
            "-" => None,
            ip => Some(ip.parse::<IpAddr>().ok()?),
        };
        Some(AccessPoint {
            ip,
            ua_family: crate::audit::ua_family_named(ua),
        })
    }

    fn mac(&self, unix: u64, ip: &str, ua: &str) -> [u8; 32] {
        let mut m =
            <HmacSha256 as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        feed(&mut m, unix, ip, ua);
        m.finalize().into_bytes().into()
    }

    /// Find the consult's home edge and, unless it is this one, connect to
    /// it. A home that refuses is waited for while it is still registered;
    /// once its entry has expired the room moves (to the least-loaded live
    /// edge, often this one). Bounded by `3 × ttl + 5 s`.
    pub async fn route(&self, consult: &str, access: &AccessPoint) -> Result<Home, RouteError> {
        let up = self
            .reach(
                consult,
                |home| async move { self.connect(&home, access).await },
            )
            .await?;
        Ok(up.map_or(Home::Here, |up| Home::There(Box::new(up))))
    }

    /// `None` when this edge is the consult's home; else what `call` got
    /// from the home edge, under the same waiting and moving rules as
    /// [`route`](Peers::route).
    pub async fn reach<T, F, Fut>(
        &self,
        consult: &str,
        mut call: F,
    ) -> Result<Option<T>, RouteError>
    where
        F: FnMut(NodeInfo) -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let deadline = tokio::time::Instant::now() + self.ttl * 3 + Duration::from_secs(5);
        // Where the room was before this join (one read; joins are rare), so
        // a move to a new home is counted however it happened.
        let mut before = self.edges.placement(consult).await.ok().flatten();
        loop {
            let home = self.place(consult).await?;
            if before.as_deref().is_some_and(|b| b != home.id) {
                self.metrics.peer_rooms_moved.inc();
                before = None;
            }
            if home.id == self.id {
                return Ok(None);
            }
            let id = home.id.clone();
            match call(home).await {
                Ok(got) => return Ok(Some(got)),
                Err(why) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(RouteError::HomeUnreachable(format!("{id}: {why}")));
                    }
                    let alive = self
                        .edges
                        .nodes()
                        .await
                        .map_err(RouteError::Directory)?
                        .iter()
                        .any(|n| n.id == id);
                    if alive {
                        tokio::time::sleep(RETRY_EVERY).await;
                    } else {
                        log::info!(
                            "edge {}: home edge {id} of a consult is gone; moving its room",
                            self.id
                        );
                        self.edges
                            .replace(consult, &id)
                            .await
                            .map_err(RouteError::Directory)?;
                    }
                }
            }
        }
    }

    /// Send an invite API request (`method`, `path` under `/peer`, the
    /// caller's `Authorization` and body) to the home edge; its status,
    /// content type and body.
    pub async fn api_call(
        &self,
        home: &NodeInfo,
        access: &AccessPoint,
        method: hyper::Method,
        path: &str,
        authorization: Option<&str>,
        body: Vec<u8>,
    ) -> Result<ApiReply, String> {
        use http_body_util::{BodyExt, Full, Limited};
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(home.link_addr))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("/{PEER_PATH}{path}"))
            .header(hyper::header::HOST, home.link_addr.to_string())
            .header(PEER_HEADER, self.proof(access, crate::token::unix_now()))
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(a) = authorization {
            request = request.header(hyper::header::AUTHORIZATION, a);
        }
        let request = request
            .body(Full::new(hyper::body::Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .map_err(|e| e.to_string())?;
            let driver = tokio::spawn(conn);
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = Limited::new(response.into_body(), MAX_API_REPLY)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            driver.abort();
            Ok::<_, String>(ApiReply {
                status,
                www_authenticate: headers
                    .get(hyper::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        tokio::time::timeout(API_TIMEOUT, exchange)
            .await
            .map_err(|_| "timed out".to_string())?
    }

    async fn connect(&self, home: &NodeInfo, access: &AccessPoint) -> Result<Upstream, String> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("ws://{}/{PEER_PATH}", home.link_addr);
        let mut request = url.into_client_request().map_err(|e| e.to_string())?;
        let proof = self.proof(access, crate::token::unix_now());
        request.headers_mut().insert(
            PEER_HEADER,
            proof.parse().map_err(|_| "proof header".to_string())?,
        );
        let config = WebSocketConfig::default()
            .max_message_size(Some(crate::http::WS_HARD_LIMIT))
            .max_frame_size(Some(crate::http::WS_HARD_LIMIT));
        let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }
}

fn feed(m: &mut HmacSha256, unix: u64, ip: &str, ua: &str) {
    m.update(b"v1\0");
    m.update(&unix.to_be_bytes());
    m.update(ip.as_bytes());
    m.update(b"\0");
    m.update(ua.as_bytes());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::MemoryRegistry;

    fn peers(secret: &[u8]) -> Peers {
        Peers::new(
            Arc::new(MemoryRegistry::new()),
            "edge-a".into(),
            "127.0.0.1:7000".parse().unwrap(),
            &LinkSecret::new(secret).unwrap(),
            Duration::from_secs(3),
            Arc::new(crate::metrics::Metrics::new().unwrap()),
        )
    }

    #[test]
    fn proof_round_trips_and_binds_every_field() {
        let p = peers(&[7; 32]);
        let access = AccessPoint::new(Some("203.0.113.9".parse().unwrap()), Some("Firefox/128"));
        let h = p.proof(&access, 1_000);
        let got = p.verify(Some(&h), 1_010).expect("valid proof");
        assert_eq!(got.ip, access.ip);
        assert_eq!(got.ua_family, "Firefox");
        // Another secret, too old, too new, or any field changed: refused.
        assert!(peers(&[8; 32]).verify(Some(&h), 1_000).is_none());
        assert!(p.verify(Some(&h), 1_031).is_none());
        assert!(p.verify(Some(&h), 969).is_none());
        for (from, to) in [
            ("203.0.113.9", "203.0.113.8"),
            ("Firefox", "Chrome"),
            (" 1000 ", " 1001 "),
        ] {
            let forged = h.replacen(from, to, 1);
            assert_ne!(forged, h);
            assert!(p.verify(Some(&forged), 1_000).is_none(), "{forged}");
        }
        assert!(p.verify(None, 1_000).is_none());
        assert!(p.verify(Some(""), 1_000).is_none());
        assert!(p.verify(Some(&format!("{h} extra")), 1_000).is_none());
    }

    #[test]
    fn proof_without_an_address() {
        let p = peers(&[7; 32]);
        let access = AccessPoint::new(None, None);
        let got = p.verify(Some(&p.proof(&access, 5)), 5).expect("valid");
        assert_eq!(got.ip, None);
        assert_eq!(got.ua_family, "other");
    }
}
