//! The authenticated link between an edge and a media node.
//!
//! One TCP connection per edge and node carries the seam's typed pair:
//! [`ToNode`] (media commands, keep-alive) one way and [`ToEdge`] (media
//! events, drain state, keep-alive) the other. Both ends hold the cluster's
//! link secret (`--link-secret`); nothing else is trusted.
//!
//! Handshake (every message a length-prefixed JSON object of at most
//! [`MAX_HANDSHAKE`] bytes, within [`HANDSHAKE_TIMEOUT`]):
//! 1. node → edge: `{"v":"spreekkamer-link/1","node":ID,"nonce":Nn}`;
//! 2. edge → node: `{"v":…,"nonce":Ne,"proof":HMAC(S, "edge"‖Nn‖Ne‖ID)}`;
//! 3. node → edge: `{"proof":HMAC(S, "node"‖Ne‖Nn‖ID)}` — only after the
//!    edge's proof checked out; otherwise the node closes without a word.
//!
//! Nonces are 32 random bytes (hex), so neither side can replay an old
//! handshake. Each direction then gets its own key,
//! `HMAC(HMAC(S, "keys"‖Nn‖Ne), "e2n" | "n2e")`, and every frame is
//! `len (u32, big-endian) ‖ JSON ‖ HMAC(key, seq ‖ JSON)` with a per-direction
//! sequence number: a frame that was altered, replayed, reordered or
//! injected fails its tag and ends the link. The link is authenticated, not
//! encrypted: it carries SDP (ICE credentials, DTLS fingerprints, no
//! media keys: those never leave the browsers) and random participant ids,
//! never tokens or names (docs/SCALING.md); run it on the cluster network
//! (a NetworkPolicy lets only edges reach it).

use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sfu::{MediaCommand, MediaEnvelope};
use sha2::Sha256;
use std::marker::PhantomData;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

type HmacSha256 = Hmac<Sha256>;

pub const PROTOCOL: &str = "spreekkamer-link/1";
/// Largest frame: an offer for a full consult is tens of KiB.
pub const MAX_FRAME: usize = 1 << 20;
pub const MAX_HANDSHAKE: usize = 1024;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest link secret accepted (bytes).
pub const MIN_SECRET: usize = 32;
const TAG: usize = 32;

/// Edge → node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ToNode {
    Command { command: MediaCommand },
    Ping,
}

/// Node → edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ToEdge {
    Event {
        envelope: MediaEnvelope,
    },
    Pong,
    /// The node started draining: it keeps its consults, takes no new ones.
    Draining,
}

#[derive(Debug)]
pub enum LinkError {
    Io(std::io::Error),
    /// The handshake timed out.
    Timeout,
    /// The peer does not know the secret, or a frame failed its tag.
    Unauthenticated,
    /// Not our protocol, or a frame that does not parse or is too large.
    Malformed(&'static str),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Io(e) => write!(f, "link i/o: {e}"),
            LinkError::Timeout => f.write_str("link handshake timed out"),
            LinkError::Unauthenticated => f.write_str("link peer not authenticated"),
            LinkError::Malformed(what) => write!(f, "link protocol error: {what}"),
        }
    }
}

impl std::error::Error for LinkError {}

impl From<std::io::Error> for LinkError {
    fn from(e: std::io::Error) -> Self {
        LinkError::Io(e)
    }
}

/// The shared link secret. `Debug` never shows it.
#[derive(Clone)]
pub struct LinkSecret(Vec<u8>);

impl LinkSecret {
    pub fn new(secret: &[u8]) -> Result<LinkSecret, String> {
        if secret.len() < MIN_SECRET {
            return Err(format!(
                "the link secret must be at least {MIN_SECRET} bytes (e.g. `openssl rand -base64 32`)"
            ));
        }
        Ok(LinkSecret(secret.to_vec()))
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        mac(&self.0, parts)
    }

    /// A key for another use of the same secret (`label` names the use), so
    /// that no MAC of one protocol is valid in another.
    pub fn derive(&self, label: &[u8]) -> [u8; 32] {
        mac(&self.0, &[b"spreekkamer derive\0", label])
    }
}

impl std::fmt::Debug for LinkSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkSecret(…)")
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Serialize, Deserialize)]
struct NodeHello {
    v: String,
    node: String,
    nonce: String,
    /// What this node can do beyond the protocol version (absent from
    /// nodes older than the feature): an edge sends a node no command it
    /// did not announce, so a rolling upgrade never breaks a link. Not
    /// covered by the proofs: someone on the path who strips it can only
    /// switch the feature off for that link.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    features: Vec<String>,
}

/// Features a node of this version announces (see [`NodeHello`]).
/// `screen`: it takes `MediaCommand::Screen`.
pub const NODE_FEATURES: &[&str] = &["screen"];

/// At most this many features, each this long, are kept from a hello.
const MAX_FEATURES: usize = 16;
const MAX_FEATURE_LEN: usize = 32;

#[derive(Serialize, Deserialize)]
struct EdgeProof {
    v: String,
    nonce: String,
    proof: String,
}

#[derive(Serialize, Deserialize)]
struct NodeProof {
    proof: String,
}

async fn write_plain<T: Serialize>(w: &mut OwnedWriteHalf, msg: &T) -> Result<(), LinkError> {
    let body = serde_json::to_vec(msg).map_err(|_| LinkError::Malformed("encode"))?;
    w.write_all(&(body.len() as u32).to_be_bytes()).await?;
    w.write_all(&body).await?;
    Ok(())
}

async fn read_plain<T: DeserializeOwned>(r: &mut BufReader<OwnedReadHalf>) -> Result<T, LinkError> {
    let len = r.read_u32().await? as usize;
    if len > MAX_HANDSHAKE {
        return Err(LinkError::Malformed("handshake message too large"));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(|_| LinkError::Malformed("handshake message"))
}

fn nonce() -> [u8; 32] {
    rand::random()
}

fn keys(secret: &LinkSecret, node_nonce: &[u8], edge_nonce: &[u8]) -> ([u8; 32], [u8; 32]) {
    let k = secret.mac(&[b"keys", node_nonce, edge_nonce]);
    (mac(&k, &[b"e2n"]), mac(&k, &[b"n2e"]))
}

/// A link to a node, as the edge's handshake left it.
pub struct Connected {
    pub tx: Sender<ToNode>,
    pub rx: Receiver<ToEdge>,
    /// The node's id as it introduced itself.
    pub node: String,
    /// What it announced it can do ([`NODE_FEATURES`] of its version).
    pub features: Vec<String>,
}

/// Edge side: connect to a node's link address and prove we hold the
/// secret (and check that the node does).
pub async fn connect(
    addr: std::net::SocketAddr,
    secret: &LinkSecret,
) -> Result<Connected, LinkError> {
    let handshake = async {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        let hello: NodeHello = read_plain(&mut r).await?;
        let node_nonce = unhex(&hello.nonce).filter(|n| n.len() == 32);
        let (Some(node_nonce), true) = (node_nonce, hello.v == PROTOCOL) else {
            return Err(LinkError::Malformed("node hello"));
        };
        if !crate::registry::valid_node_id(&hello.node) {
            return Err(LinkError::Malformed("node id"));
        }
        let edge_nonce = nonce();
        let proof = secret.mac(&[b"edge", &node_nonce, &edge_nonce, hello.node.as_bytes()]);
        write_plain(
            &mut w,
            &EdgeProof {
                v: PROTOCOL.into(),
                nonce: hex(&edge_nonce),
                proof: hex(&proof),
            },
        )
        .await?;
        let answer: NodeProof = read_plain(&mut r).await?;
        let expected = secret.mac(&[b"node", &edge_nonce, &node_nonce, hello.node.as_bytes()]);
        if !unhex(&answer.proof).is_some_and(|p| equal(&p, &expected)) {
            return Err(LinkError::Unauthenticated);
        }
        let (e2n, n2e) = keys(secret, &node_nonce, &edge_nonce);
        let features = hello
            .features
            .into_iter()
            .filter(|f| f.len() <= MAX_FEATURE_LEN)
            .take(MAX_FEATURES)
            .collect();
        Ok(Connected {
            tx: Sender::new(w, e2n),
            rx: Receiver::new(r, n2e),
            node: hello.node,
            features,
        })
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| LinkError::Timeout)?
}

/// Node side: run the handshake on an accepted connection. An edge that
/// cannot prove the secret gets nothing but the hello and a closed socket.
pub async fn accept(
    stream: TcpStream,
    secret: &LinkSecret,
    node_id: &str,
) -> Result<(Sender<ToEdge>, Receiver<ToNode>), LinkError> {
    let handshake = async {
        let _ = stream.set_nodelay(true);
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        let node_nonce = nonce();
        write_plain(
            &mut w,
            &NodeHello {
                v: PROTOCOL.into(),
                node: node_id.into(),
                nonce: hex(&node_nonce),
                features: NODE_FEATURES.iter().map(|f| f.to_string()).collect(),
            },
        )
        .await?;
        let edge: EdgeProof = read_plain(&mut r).await?;
        let edge_nonce = unhex(&edge.nonce).filter(|n| n.len() == 32);
        let (Some(edge_nonce), true) = (edge_nonce, edge.v == PROTOCOL) else {
            return Err(LinkError::Malformed("edge proof"));
        };
        let expected = secret.mac(&[b"edge", &node_nonce, &edge_nonce, node_id.as_bytes()]);
        if !unhex(&edge.proof).is_some_and(|p| equal(&p, &expected)) {
            return Err(LinkError::Unauthenticated);
        }
        let proof = secret.mac(&[b"node", &edge_nonce, &node_nonce, node_id.as_bytes()]);
        write_plain(&mut w, &NodeProof { proof: hex(&proof) }).await?;
        let (e2n, n2e) = keys(secret, &node_nonce, &edge_nonce);
        Ok((Sender::new(w, n2e), Receiver::new(r, e2n)))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| LinkError::Timeout)?
}

/// Does anything accept connections at `addr`? (A node that was killed
/// refuses at once; one that is only slow to answer is given a second.)
pub async fn probe(addr: std::net::SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// The sending half of an authenticated link.
pub struct Sender<T> {
    w: OwnedWriteHalf,
    key: [u8; 32],
    seq: u64,
    buf: Vec<u8>,
    _t: PhantomData<fn(T)>,
}

impl<T: Serialize> Sender<T> {
    fn new(w: OwnedWriteHalf, key: [u8; 32]) -> Self {
        Sender {
            w,
            key,
            seq: 0,
            buf: Vec::with_capacity(4096),
            _t: PhantomData,
        }
    }

    pub async fn send(&mut self, msg: &T) -> Result<(), LinkError> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; 4]);
        serde_json::to_writer(&mut self.buf, msg).map_err(|_| LinkError::Malformed("encode"))?;
        let body_len = self.buf.len() - 4;
        if body_len + TAG > MAX_FRAME {
            return Err(LinkError::Malformed("frame too large"));
        }
        let tag = mac(&self.key, &[&self.seq.to_be_bytes(), &self.buf[4..]]);
        self.seq += 1;
        self.buf.extend_from_slice(&tag);
        let len = (body_len + TAG) as u32;
        self.buf[..4].copy_from_slice(&len.to_be_bytes());
        self.w.write_all(&self.buf).await?;
        Ok(())
    }
}

/// The receiving half of an authenticated link.
pub struct Receiver<T> {
    r: BufReader<OwnedReadHalf>,
    key: [u8; 32],
    seq: u64,
    buf: Vec<u8>,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Receiver<T> {
    fn new(r: BufReader<OwnedReadHalf>, key: [u8; 32]) -> Self {
        Receiver {
            r,
            key,
            seq: 0,
            buf: Vec::new(),
            _t: PhantomData,
        }
    }

    /// The next message; `Ok(None)` when the peer closed cleanly between
    /// frames. Any error ends the link.
    pub async fn recv(&mut self) -> Result<Option<T>, LinkError> {
        let len = match self.r.read_u32().await {
            Ok(n) => n as usize,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if !(TAG..=MAX_FRAME).contains(&len) {
            return Err(LinkError::Malformed("frame length"));
        }
        self.buf.resize(len, 0);
        self.r.read_exact(&mut self.buf).await?;
        let (body, tag) = self.buf.split_at(len - TAG);
        let expected = mac(&self.key, &[&self.seq.to_be_bytes(), body]);
        if !equal(tag, &expected) {
            return Err(LinkError::Unauthenticated);
        }
        self.seq += 1;
        serde_json::from_slice(body)
            .map(Some)
            .map_err(|_| LinkError::Malformed("frame"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn secret(s: &str) -> LinkSecret {
        LinkSecret::new(s.as_bytes()).unwrap()
    }

    async fn listener() -> (TcpListener, std::net::SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    #[tokio::test]
    async fn both_sides_with_the_secret_exchange_commands_and_events() {
        let (l, addr) = listener().await;
        let node = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (mut tx, mut rx) = accept(
                s,
                &secret("0123456789abcdef0123456789abcdef-cluster"),
                "node-1",
            )
            .await
            .unwrap();
            let got = rx.recv().await.unwrap();
            tx.send(&ToEdge::Pong).await.unwrap();
            got
        });
        let Connected {
            mut tx,
            mut rx,
            node: id,
            features,
        } = connect(addr, &secret("0123456789abcdef0123456789abcdef-cluster"))
            .await
            .unwrap();
        assert_eq!(id, "node-1");
        assert_eq!(
            features,
            vec!["screen".to_string()],
            "a node says it takes screen commands"
        );
        let cmd = ToNode::Command {
            command: MediaCommand::Join {
                consult: "c".into(),
                participant: "p".into(),
            },
        };
        tx.send(&cmd).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), Some(ToEdge::Pong));
        assert_eq!(node.await.unwrap(), Some(cmd));
    }

    #[test]
    fn a_hello_from_an_older_node_parses_without_features() {
        // What a node before screen sharing says: no `features` field.
        let old: NodeHello =
            serde_json::from_str(r#"{"v":"1","node":"n","nonce":"00"}"#).expect("parses");
        assert!(old.features.is_empty());
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_on_both_sides() {
        let (l, addr) = listener().await;
        let node = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            accept(
                s,
                &secret("0123456789abcdef0123456789abcdef-cluster"),
                "node-1",
            )
            .await
            .err()
        });
        let edge = connect(addr, &secret("0123456789abcdef0123456789abcdef-WRONG!!")).await;
        assert!(edge.is_err(), "the edge must not think it is linked");
        assert!(matches!(
            node.await.unwrap(),
            Some(LinkError::Unauthenticated)
        ));
    }

    #[tokio::test]
    async fn a_node_without_the_secret_cannot_fool_an_edge() {
        // A stranger answering on the link port: says hello, then replies
        // with a made-up proof. The edge must refuse it.
        let (l, addr) = listener().await;
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            write_plain(
                &mut w,
                &NodeHello {
                    v: PROTOCOL.into(),
                    node: "evil".into(),
                    nonce: hex(&[7; 32]),
                    features: Vec::new(),
                },
            )
            .await
            .unwrap();
            let _: EdgeProof = read_plain(&mut r).await.unwrap();
            write_plain(
                &mut w,
                &NodeProof {
                    proof: hex(&[0; 32]),
                },
            )
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let edge = connect(addr, &secret("0123456789abcdef0123456789abcdef-cluster")).await;
        assert!(matches!(edge, Err(LinkError::Unauthenticated)));
    }

    /// A man in the middle who alters, replays or injects a frame after
    /// the handshake breaks the link instead of reaching the media plane.
    #[tokio::test]
    async fn altered_replayed_or_injected_frames_end_the_link() {
        for attack in ["alter", "replay", "inject"] {
            let (l, addr) = listener().await;
            let (proxy_l, proxy_addr) = listener().await;
            let node = tokio::spawn(async move {
                let (s, _) = l.accept().await.unwrap();
                let (_tx, mut rx) =
                    accept(s, &secret("0123456789abcdef0123456789abcdef-cluster"), "n")
                        .await
                        .unwrap();
                let first = rx.recv().await;
                let second = rx.recv().await;
                (first.ok().flatten(), second)
            });
            // The proxy relays the handshake, then tampers with frames.
            let proxy = tokio::spawn(async move {
                let (mut edge, _) = proxy_l.accept().await.unwrap();
                let mut node = TcpStream::connect(addr).await.unwrap();
                // hello (node → edge), proof (edge → node), proof (node → edge)
                for dir in [0, 1, 0] {
                    let (from, to) = if dir == 0 {
                        (&mut node, &mut edge)
                    } else {
                        (&mut edge, &mut node)
                    };
                    let len = from.read_u32().await.unwrap();
                    let mut body = vec![0; len as usize];
                    from.read_exact(&mut body).await.unwrap();
                    to.write_all(&len.to_be_bytes()).await.unwrap();
                    to.write_all(&body).await.unwrap();
                }
                let len = edge.read_u32().await.unwrap();
                let mut frame = vec![0; len as usize];
                edge.read_exact(&mut frame).await.unwrap();
                let mut out = Vec::new();
                match attack {
                    "alter" => {
                        let mut f = frame.clone();
                        let i = f.iter().position(|b| *b == b'p').unwrap();
                        f[i] = b'q';
                        out.push(f);
                    }
                    "replay" => {
                        out.push(frame.clone());
                        out.push(frame.clone());
                    }
                    _ => {
                        let mut f = br#"{"kind":"ping"}"#.to_vec();
                        f.extend_from_slice(&[0; TAG]);
                        out.push(f);
                        out.push(frame.clone());
                    }
                }
                for f in out {
                    node.write_all(&(f.len() as u32).to_be_bytes())
                        .await
                        .unwrap();
                    node.write_all(&f).await.unwrap();
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            });
            let Connected { mut tx, .. } = connect(
                proxy_addr,
                &secret("0123456789abcdef0123456789abcdef-cluster"),
            )
            .await
            .unwrap();
            tx.send(&ToNode::Command {
                command: MediaCommand::Leave {
                    consult: "c".into(),
                    participant: "p".into(),
                },
            })
            .await
            .unwrap();
            let (first, second) = node.await.unwrap();
            match attack {
                "alter" | "inject" => assert_eq!(first, None, "{attack}: nothing gets through"),
                _ => {
                    assert!(first.is_some(), "the genuine frame arrives once");
                    assert!(
                        matches!(second, Err(LinkError::Unauthenticated)),
                        "replay refused"
                    );
                }
            }
            proxy.abort();
        }
    }

    #[tokio::test]
    async fn oversized_and_garbage_handshakes_are_refused() {
        let (l, addr) = listener().await;
        let node = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            accept(s, &secret("0123456789abcdef0123456789abcdef-cluster"), "n")
                .await
                .err()
        });
        let mut s = TcpStream::connect(addr).await.unwrap();
        let len = s.read_u32().await.unwrap();
        let mut hello = vec![0; len as usize];
        s.read_exact(&mut hello).await.unwrap();
        s.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
        assert!(matches!(node.await.unwrap(), Some(LinkError::Malformed(_))));
        assert!(LinkSecret::new(b"short").is_err());
    }
}
