//! The Janus VideoRoom baseline: one synthetic participant speaks the
//! Janus API (WebSocket transport, subprotocol `janus-protocol`) the way
//! janus.js does for a VideoRoom: create a session, attach a publisher
//! handle, create the consult's room (or find it exists), join as
//! publisher, *offer* audio+video (`publish`), then attach one subscriber
//! handle and subscribe to every other publisher in the room; Janus offers
//! the subscriber and we answer with `start`. Later publishers are added to
//! the same subscriber connection (`subscribe` → `updated` offer), so each
//! participant has two PeerConnections: one up, one down.
//!
//! The message builders and the parser are pure and unit-tested; `run`
//! drives them. Janus's sessions time out after 60 s without traffic,
//! hence a keepalive every 25 s.

use crate::media::{Command, MediaThread, PeerEvent};
use crate::signal::JoinError;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const PLUGIN: &str = "janus.plugin.videoroom";
const KEEPALIVE: Duration = Duration::from_secs(25);
/// How long one request may take to be answered (Janus answers in
/// milliseconds; a loaded 2-core machine may take seconds).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Unsolicited messages kept while waiting for a reply (bounded: a
/// misbehaving server cannot grow it without limit).
const BACKLOG_MAX: usize = 256;
/// Janus "room already exists": another participant of the consult
/// created it first.
const ROOM_EXISTS: i64 = 427;
/// More publishers than a consult can have would be a protocol error.
const FEEDS_MAX: usize = 16;

// ---- message builders (pure) ----

pub fn create_session(tx: &str) -> Value {
    json!({"janus": "create", "transaction": tx})
}

pub fn attach(session: u64, tx: &str) -> Value {
    json!({"janus": "attach", "session_id": session, "plugin": PLUGIN, "transaction": tx})
}

pub fn keepalive(session: u64, tx: &str) -> Value {
    json!({"janus": "keepalive", "session_id": session, "transaction": tx})
}

pub fn destroy(session: u64, tx: &str) -> Value {
    json!({"janus": "destroy", "session_id": session, "transaction": tx})
}

/// Our candidate is in the SDP already; tell Janus there are no more.
pub fn trickle_done(session: u64, handle: u64, tx: &str) -> Value {
    json!({"janus": "trickle", "session_id": session, "handle_id": handle,
           "transaction": tx, "candidate": {"completed": true}})
}

/// A plugin request on a handle, optionally with an SDP.
pub fn message(
    session: u64,
    handle: u64,
    tx: &str,
    body: Value,
    jsep: Option<(&str, &str)>,
) -> Value {
    let mut m = json!({"janus": "message", "session_id": session, "handle_id": handle,
                       "transaction": tx, "body": body});
    if let Some((kind, sdp)) = jsep {
        m["jsep"] = json!({"type": kind, "sdp": sdp});
    }
    m
}

/// A non-permanent room for one consult, VP8 + Opus like our SFU.
pub fn create_room_body(room: u64, publishers: u32) -> Value {
    json!({"request": "create", "room": room, "permanent": false,
           "description": "loadtest", "publishers": publishers,
           "audiocodec": "opus", "videocodec": "vp8", "notify_joining": false})
}

pub fn join_publisher_body(room: u64, display: &str) -> Value {
    json!({"request": "join", "ptype": "publisher", "room": room, "display": display})
}

pub fn publish_body() -> Value {
    json!({"request": "publish", "audio": true, "video": true})
}

/// Subscribe to all streams of `feeds` (multistream API, Janus ≥ 1.0).
pub fn join_subscriber_body(room: u64, feeds: &[u64]) -> Value {
    let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
    json!({"request": "join", "ptype": "subscriber", "room": room, "streams": streams})
}

pub fn subscribe_body(feeds: &[u64]) -> Value {
    let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
    json!({"request": "subscribe", "streams": streams})
}

pub fn start_body() -> Value {
    json!({"request": "start"})
}

// ---- parsing (pure) ----

/// One message from Janus, reduced to what the load generator needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// An asynchronous request was accepted; its result comes as an event.
    Ack { tx: String },
    /// `data.id` (session or handle id) and the plugin's synchronous reply.
    Success {
        tx: String,
        id: Option<u64>,
        plugin: Option<Value>,
    },
    /// Janus core refused the request.
    Error {
        tx: Option<String>,
        code: i64,
        reason: String,
    },
    /// A plugin event (`tx` set when it answers our request).
    Event {
        tx: Option<String>,
        sender: u64,
        data: Value,
        jsep: Option<Jsep>,
    },
    /// The PeerConnection of a handle went away.
    Hangup { sender: u64, reason: String },
    /// The session expired (no keepalive).
    Timeout,
    /// webrtcup, media, slowlink, detached, ...: informational.
    Other,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Jsep {
    pub kind: String,
    pub sdp: String,
}

fn tx_of(v: &Value) -> Option<String> {
    v["transaction"].as_str().map(str::to_string)
}

pub fn parse(v: &Value) -> Result<Incoming, String> {
    let kind = v["janus"]
        .as_str()
        .ok_or_else(|| "message without a \"janus\" field".to_string())?;
    Ok(match kind {
        "ack" => Incoming::Ack {
            tx: tx_of(v).unwrap_or_default(),
        },
        "success" => Incoming::Success {
            tx: tx_of(v).unwrap_or_default(),
            id: v["data"]["id"].as_u64(),
            plugin: v.get("plugindata").and_then(|p| p.get("data")).cloned(),
        },
        "error" => Incoming::Error {
            tx: tx_of(v),
            code: v["error"]["code"].as_i64().unwrap_or(0),
            reason: v["error"]["reason"].as_str().unwrap_or("").to_string(),
        },
        "event" => Incoming::Event {
            tx: tx_of(v),
            sender: v["sender"].as_u64().unwrap_or(0),
            data: v
                .get("plugindata")
                .and_then(|p| p.get("data"))
                .cloned()
                .unwrap_or(Value::Null),
            jsep: match (v["jsep"]["type"].as_str(), v["jsep"]["sdp"].as_str()) {
                (Some(k), Some(s)) => Some(Jsep {
                    kind: k.to_string(),
                    sdp: s.to_string(),
                }),
                _ => None,
            },
        },
        "hangup" => Incoming::Hangup {
            sender: v["sender"].as_u64().unwrap_or(0),
            reason: v["reason"].as_str().unwrap_or("").to_string(),
        },
        "timeout" => Incoming::Timeout,
        _ => Incoming::Other,
    })
}

/// What a VideoRoom event's `plugindata.data` says.
#[derive(Debug, Clone, PartialEq)]
pub enum RoomEvent {
    Created,
    /// We joined as publisher: our feed id and who already publishes.
    Joined {
        id: u64,
        publishers: Vec<u64>,
    },
    /// New publishers (or, with `configured`, our publish was accepted).
    Publishers(Vec<u64>),
    Configured,
    /// A subscriber offer is coming (attached/updated) or was answered (started).
    Subscriber,
    /// A publisher left or stopped publishing.
    Gone(u64),
    Error {
        code: i64,
        message: String,
    },
    Other,
}

fn ids(list: &Value) -> Vec<u64> {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["id"].as_u64())
                .take(FEEDS_MAX)
                .collect()
        })
        .unwrap_or_default()
}

pub fn room_event(data: &Value) -> RoomEvent {
    if let Some(code) = data["error_code"].as_i64() {
        return RoomEvent::Error {
            code,
            message: data["error"].as_str().unwrap_or("").to_string(),
        };
    }
    match data["videoroom"].as_str().unwrap_or("") {
        "created" => RoomEvent::Created,
        "joined" => RoomEvent::Joined {
            id: data["id"].as_u64().unwrap_or(0),
            publishers: ids(&data["publishers"]),
        },
        "attached" | "updated" => RoomEvent::Subscriber,
        "event" => {
            if data.get("publishers").is_some() {
                RoomEvent::Publishers(ids(&data["publishers"]))
            } else if data["configured"].as_str() == Some("ok") {
                RoomEvent::Configured
            } else if data["started"].as_str() == Some("ok") {
                RoomEvent::Subscriber
            } else if let Some(id) = data["unpublished"]
                .as_u64()
                .or_else(|| data["leaving"].as_u64())
            {
                RoomEvent::Gone(id)
            } else {
                RoomEvent::Other
            }
        }
        _ => RoomEvent::Other,
    }
}

// ---- the participant ----

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Conn {
    ws: Ws,
    next_tx: u64,
    backlog: VecDeque<Value>,
}

impl Conn {
    fn tx(&mut self) -> String {
        self.next_tx += 1;
        format!("t{}", self.next_tx)
    }

    async fn send(&mut self, v: &Value) -> Result<(), JoinError> {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .map_err(|e| JoinError::Other(format!("janus websocket send: {e}")))
    }

    async fn next(&mut self) -> Result<Value, JoinError> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(&t)
                        .map_err(|e| JoinError::Other(format!("bad JSON from Janus: {e}")));
                }
                Some(Ok(Message::Close(_))) | None => {
                    return Err(JoinError::Other("Janus closed the WebSocket".into()));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(JoinError::Other(format!("janus websocket: {e}"))),
            }
        }
    }

    /// A plugin request on `handle` (`message`), and its reply as `call` gives it.
    async fn request(
        &mut self,
        session: u64,
        handle: u64,
        body: Value,
        jsep: Option<(&str, &str)>,
    ) -> Result<Incoming, JoinError> {
        self.call(|tx| message(session, handle, tx, body, jsep))
            .await
    }

    /// Send a request and wait for its reply: `success`, `error` or (after
    /// an `ack`) the plugin event carrying the same transaction. Anything
    /// else that arrives meanwhile is kept for the main loop.
    async fn call(&mut self, build: impl FnOnce(&str) -> Value) -> Result<Incoming, JoinError> {
        let tx = self.tx();
        self.send(&build(&tx)).await?;
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        loop {
            let v = tokio::time::timeout_at(deadline, self.next())
                .await
                .map_err(|_| {
                    JoinError::Other(format!("Janus did not answer within {CALL_TIMEOUT:?}"))
                })??;
            let m = parse(&v).map_err(JoinError::Other)?;
            let mine = match &m {
                Incoming::Ack { .. } => false,
                Incoming::Success { tx: t, .. } => *t == tx,
                Incoming::Error { tx: t, .. } | Incoming::Event { tx: t, .. } => {
                    t.as_deref() == Some(tx.as_str())
                }
                _ => false,
            };
            if mine {
                return match m {
                    Incoming::Error { code, reason, .. } => Err(JoinError::Refused {
                        code: format!("janus {code}"),
                        message: reason,
                    }),
                    m => Ok(m),
                };
            }
            if !matches!(m, Incoming::Ack { .. }) {
                if self.backlog.len() >= BACKLOG_MAX {
                    self.backlog.pop_front();
                }
                self.backlog.push_back(v);
            }
        }
    }
}

/// The VideoRoom plugin answered with an error (synchronously or as an event).
fn plugin_error(data: &Value) -> Option<JoinError> {
    match room_event(data) {
        RoomEvent::Error { code, message } => Some(JoinError::Refused {
            code: format!("videoroom {code}"),
            message,
        }),
        _ => None,
    }
}

/// Connect with the `janus-protocol` subprotocol Janus requires.
async fn connect(url: &str) -> Result<Ws, JoinError> {
    let mut req = url
        .into_client_request()
        .map_err(|e| JoinError::Unreachable(format!("{url}: {e}")))?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("janus-protocol"),
    );
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .map_err(|_| JoinError::Unreachable(format!("{url}: no answer within 10 s")))?
    .map_err(|e| JoinError::Unreachable(format!("{url}: {e}")))?;
    Ok(ws)
}

/// Where one participant's two media peers live.
pub struct JanusPeer {
    pub url: Arc<String>,
    pub room: u64,
    pub room_size: u32,
    /// Media-thread ids of the publishing and the subscribing connection.
    pub pub_id: u64,
    pub sub_id: u64,
    pub pub_media: Arc<MediaThread>,
    pub sub_media: Arc<MediaThread>,
    pub local_ip: IpAddr,
}

/// Run one participant until `stop` turns true; `joined` is told under
/// `pub_id` once it joined the room (or why not).
pub async fn participant(
    p: JanusPeer,
    mut stop: watch::Receiver<bool>,
    joined: mpsc::UnboundedSender<(u64, Result<(), JoinError>)>,
) {
    let started = Instant::now();
    let result = run(&p, &mut stop, &joined, started).await;
    p.pub_media.send(Command::Remove { id: p.pub_id });
    p.sub_media.send(Command::Remove { id: p.sub_id });
    if let Err(e) = result {
        let _ = joined.send((p.pub_id, Err(e)));
    }
}

async fn media_sdp(
    events: &mut mpsc::UnboundedReceiver<PeerEvent>,
    what: &str,
) -> Result<String, JoinError> {
    match tokio::time::timeout(CALL_TIMEOUT, events.recv()).await {
        Ok(Some(PeerEvent::Offer(s) | PeerEvent::Answer(s))) => Ok(s),
        Ok(None) => Err(JoinError::Other(format!(
            "media peer gone before its {what}"
        ))),
        Err(_) => Err(JoinError::Other(format!("no {what} from the media peer"))),
    }
}

struct Subscriber {
    handle: Option<u64>,
    events: mpsc::UnboundedReceiver<PeerEvent>,
    feeds: Vec<u64>,
    trickled: bool,
}

async fn run(
    p: &JanusPeer,
    stop: &mut watch::Receiver<bool>,
    joined: &mpsc::UnboundedSender<(u64, Result<(), JoinError>)>,
    started: Instant,
) -> Result<(), JoinError> {
    let ws = connect(&p.url).await?;
    let mut c = Conn {
        ws,
        next_tx: 0,
        backlog: VecDeque::new(),
    };
    let session = match c.call(create_session).await? {
        Incoming::Success { id: Some(id), .. } => id,
        m => {
            return Err(JoinError::Other(format!(
                "unexpected reply to create: {m:?}"
            )));
        }
    };
    let result = session_run(p, &mut c, session, stop, joined, started).await;
    let _ = c.send(&destroy(session, "bye")).await;
    let _ = c.ws.close(None).await;
    result
}

async fn session_run(
    p: &JanusPeer,
    c: &mut Conn,
    session: u64,
    stop: &mut watch::Receiver<bool>,
    joined: &mpsc::UnboundedSender<(u64, Result<(), JoinError>)>,
    started: Instant,
) -> Result<(), JoinError> {
    let attach_handle = |m: Incoming| match m {
        Incoming::Success { id: Some(id), .. } => Ok(id),
        m => Err(JoinError::Other(format!(
            "unexpected reply to attach: {m:?}"
        ))),
    };
    let publisher = attach_handle(c.call(|tx| attach(session, tx)).await?)?;
    // Every participant tries to create the room; all but the first are
    // told it exists, which avoids ordering the joins.
    if let Incoming::Success {
        plugin: Some(data), ..
    } = c
        .request(
            session,
            publisher,
            create_room_body(p.room, p.room_size),
            None,
        )
        .await?
        && let RoomEvent::Error { code, message } = room_event(&data)
        && code != ROOM_EXISTS
    {
        return Err(JoinError::Refused {
            code: format!("videoroom {code}"),
            message,
        });
    }
    let display = format!("lt-{}", p.pub_id);
    let mut feeds: Vec<u64> = Vec::new();
    match c
        .request(
            session,
            publisher,
            join_publisher_body(p.room, &display),
            None,
        )
        .await?
    {
        Incoming::Event { data, .. }
        | Incoming::Success {
            plugin: Some(data), ..
        } => match room_event(&data) {
            RoomEvent::Joined { publishers, .. } => feeds.extend(publishers),
            RoomEvent::Error { code, message } => {
                return Err(JoinError::Refused {
                    code: format!("videoroom {code}"),
                    message,
                });
            }
            e => return Err(JoinError::Other(format!("unexpected join reply: {e:?}"))),
        },
        m => return Err(JoinError::Other(format!("unexpected join reply: {m:?}"))),
    }
    let _ = joined.send((p.pub_id, Ok(())));

    // Publish: our offer, Janus's answer.
    let mut pub_events = p
        .pub_media
        .add_rtc_peer(p.pub_id, p.local_ip, true, started)
        .map_err(JoinError::Other)?;
    p.pub_media.send(Command::CreateOffer { id: p.pub_id });
    let offer = media_sdp(&mut pub_events, "offer").await?;
    match c
        .request(session, publisher, publish_body(), Some(("offer", &offer)))
        .await?
    {
        Incoming::Event { jsep: Some(j), .. } if j.kind == "answer" => {
            p.pub_media.send(Command::Answer {
                id: p.pub_id,
                sdp: j.sdp,
            });
        }
        Incoming::Event { data, .. } => {
            return Err(plugin_error(&data)
                .unwrap_or_else(|| JoinError::Other("publish: no SDP answer from Janus".into())));
        }
        m => return Err(JoinError::Other(format!("unexpected publish reply: {m:?}"))),
    }
    let tx = c.tx();
    c.send(&trickle_done(session, publisher, &tx)).await?;

    let mut sub = Subscriber {
        handle: None,
        events: p
            .sub_media
            .add_rtc_peer(p.sub_id, p.local_ip, false, started)
            .map_err(JoinError::Other)?,
        feeds: Vec::new(),
        trickled: false,
    };
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    loop {
        // Subscribe to publishers we learned about (from the join reply or
        // events), one negotiation at a time.
        feeds.retain(|f| !sub.feeds.contains(f));
        if !feeds.is_empty() {
            let new = std::mem::take(&mut feeds);
            subscribe(p, c, session, &mut sub, &new).await?;
        }
        let v = if let Some(v) = c.backlog.pop_front() {
            v
        } else {
            tokio::select! {
                v = c.next() => v?,
                _ = ticker.tick() => {
                    let tx = c.tx();
                    c.send(&keepalive(session, &tx)).await?;
                    continue;
                }
                _ = stop.changed() => {
                    let _ = c.send(&message(session, publisher, "leave", json!({"request": "leave"}), None)).await;
                    return Ok(());
                }
            }
        };
        match parse(&v).map_err(JoinError::Other)? {
            Incoming::Event {
                sender, data, jsep, ..
            } => {
                match room_event(&data) {
                    RoomEvent::Publishers(list) if sender == publisher => {
                        for f in list {
                            if !feeds.contains(&f) && feeds.len() < FEEDS_MAX {
                                feeds.push(f);
                            }
                        }
                    }
                    RoomEvent::Gone(f) => sub.feeds.retain(|x| *x != f),
                    _ => {}
                }
                // Janus renegotiates the subscriber on its own when a feed
                // goes away: answer like any other subscriber offer.
                if let (Some(j), Some(h)) = (jsep, sub.handle)
                    && sender == h
                    && j.kind == "offer"
                {
                    answer_subscriber(p, c, session, h, &mut sub, j.sdp).await?;
                }
            }
            Incoming::Hangup { sender, reason } => {
                return Err(JoinError::Other(format!(
                    "Janus hung up handle {sender}: {reason}"
                )));
            }
            Incoming::Timeout => return Err(JoinError::Other("Janus session timed out".into())),
            _ => {}
        }
    }
}

async fn subscribe(
    p: &JanusPeer,
    c: &mut Conn,
    session: u64,
    sub: &mut Subscriber,
    new: &[u64],
) -> Result<(), JoinError> {
    let joining = sub.handle.is_none();
    let (handle, reply) = match sub.handle {
        None => {
            let h = match c.call(|tx| attach(session, tx)).await? {
                Incoming::Success { id: Some(id), .. } => id,
                m => {
                    return Err(JoinError::Other(format!(
                        "unexpected reply to attach: {m:?}"
                    )));
                }
            };
            sub.handle = Some(h);
            let r = c
                .request(session, h, join_subscriber_body(p.room, new), None)
                .await?;
            (h, r)
        }
        Some(h) => {
            let r = c.request(session, h, subscribe_body(new), None).await?;
            (h, r)
        }
    };
    sub.feeds.extend_from_slice(new);
    match reply {
        Incoming::Event { jsep: Some(j), .. } if j.kind == "offer" => {
            answer_subscriber(p, c, session, handle, sub, j.sdp).await
        }
        Incoming::Event { data, .. } => match plugin_error(&data) {
            // The feed left between the event and our request: not fatal,
            // but forget it (and a subscriber join that did not happen).
            Some(e) => {
                log::warn!("participant {}: subscribe: {e}", p.pub_id);
                sub.feeds.retain(|f| !new.contains(f));
                if joining {
                    sub.handle = None;
                    let tx = c.tx();
                    c.send(&json!({"janus": "detach", "session_id": session,
                                   "handle_id": handle, "transaction": tx}))
                        .await?;
                }
                Ok(())
            }
            None => Err(JoinError::Other(
                "subscribe: no SDP offer from Janus".into(),
            )),
        },
        m => Err(JoinError::Other(format!(
            "unexpected subscribe reply: {m:?}"
        ))),
    }
}

async fn answer_subscriber(
    p: &JanusPeer,
    c: &mut Conn,
    session: u64,
    handle: u64,
    sub: &mut Subscriber,
    offer: String,
) -> Result<(), JoinError> {
    p.sub_media.send(Command::Offer {
        id: p.sub_id,
        sdp: offer,
    });
    let answer = media_sdp(&mut sub.events, "answer").await?;
    match c
        .request(session, handle, start_body(), Some(("answer", &answer)))
        .await?
    {
        Incoming::Event { data, .. } => {
            if let Some(e) = plugin_error(&data) {
                return Err(e);
            }
        }
        m => return Err(JoinError::Other(format!("unexpected start reply: {m:?}"))),
    }
    if !sub.trickled {
        sub.trickled = true;
        let tx = c.tx();
        c.send(&trickle_done(session, handle, &tx)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_session_handle_and_transaction() {
        let m = message(7, 9, "t3", publish_body(), Some(("offer", "v=0\r\n")));
        assert_eq!(m["janus"], "message");
        assert_eq!(m["session_id"], 7);
        assert_eq!(m["handle_id"], 9);
        assert_eq!(m["transaction"], "t3");
        assert_eq!(m["body"]["request"], "publish");
        assert_eq!(m["jsep"]["type"], "offer");
        assert_eq!(m["jsep"]["sdp"], "v=0\r\n");
        let plain = message(7, 9, "t4", start_body(), None);
        assert!(plain.get("jsep").is_none());
        assert_eq!(attach(7, "t1")["plugin"], PLUGIN);
        assert_eq!(keepalive(7, "t2")["janus"], "keepalive");
        assert_eq!(trickle_done(7, 9, "t5")["candidate"]["completed"], true);
    }

    #[test]
    fn room_and_subscription_bodies() {
        let r = create_room_body(1 << 40, 6);
        assert_eq!(r["room"].as_u64(), Some(1 << 40));
        assert_eq!(r["publishers"], 6);
        assert_eq!(r["videocodec"], "vp8");
        assert_eq!(r["permanent"], false);
        let j = join_subscriber_body(5, &[11, 12]);
        assert_eq!(j["ptype"], "subscriber");
        assert_eq!(j["streams"], json!([{"feed": 11}, {"feed": 12}]));
        assert_eq!(subscribe_body(&[13])["streams"][0]["feed"], 13);
        assert_eq!(join_publisher_body(5, "lt-1")["ptype"], "publisher");
    }

    #[test]
    fn parses_core_replies() {
        let ok = json!({"janus": "success", "transaction": "t1", "data": {"id": 123}});
        assert_eq!(
            parse(&ok).unwrap(),
            Incoming::Success {
                tx: "t1".into(),
                id: Some(123),
                plugin: None
            }
        );
        let err = json!({"janus": "error", "transaction": "t2",
                         "error": {"code": 458, "reason": "No such session"}});
        assert_eq!(
            parse(&err).unwrap(),
            Incoming::Error {
                tx: Some("t2".into()),
                code: 458,
                reason: "No such session".into()
            }
        );
        assert_eq!(
            parse(&json!({"janus": "ack", "transaction": "t3"})).unwrap(),
            Incoming::Ack { tx: "t3".into() }
        );
        assert_eq!(
            parse(&json!({"janus": "timeout", "session_id": 1})).unwrap(),
            Incoming::Timeout
        );
        assert_eq!(
            parse(&json!({"janus": "webrtcup"})).unwrap(),
            Incoming::Other
        );
        assert!(parse(&json!({"type": "offer"})).is_err());
        assert!(parse(&json!("text")).is_err());
    }

    #[test]
    fn parses_plugin_events_with_sdp() {
        let v = json!({"janus": "event", "session_id": 1, "sender": 9, "transaction": "t4",
            "plugindata": {"plugin": PLUGIN, "data": {"videoroom": "event", "room": 5, "configured": "ok"}},
            "jsep": {"type": "answer", "sdp": "v=0"}});
        let Incoming::Event {
            tx,
            sender,
            data,
            jsep,
        } = parse(&v).unwrap()
        else {
            panic!("not an event")
        };
        assert_eq!(tx.as_deref(), Some("t4"));
        assert_eq!(sender, 9);
        assert_eq!(room_event(&data), RoomEvent::Configured);
        assert_eq!(
            jsep,
            Some(Jsep {
                kind: "answer".into(),
                sdp: "v=0".into()
            })
        );
        // An event without plugindata or with a malformed jsep has no SDP.
        let bare = json!({"janus": "event", "sender": 9, "jsep": {"type": "offer"}});
        let Incoming::Event { data, jsep, .. } = parse(&bare).unwrap() else {
            panic!("not an event")
        };
        assert_eq!(data, Value::Null);
        assert_eq!(jsep, None);
        assert_eq!(room_event(&data), RoomEvent::Other);
    }

    #[test]
    fn videoroom_events() {
        let joined = json!({"videoroom": "joined", "room": 5, "id": 77,
            "publishers": [{"id": 70, "display": "a"}, {"id": 71}, {"display": "no id"}]});
        assert_eq!(
            room_event(&joined),
            RoomEvent::Joined {
                id: 77,
                publishers: vec![70, 71]
            }
        );
        assert_eq!(
            room_event(&json!({"videoroom": "event", "publishers": [{"id": 72}]})),
            RoomEvent::Publishers(vec![72])
        );
        assert_eq!(
            room_event(&json!({"videoroom": "event", "unpublished": 72})),
            RoomEvent::Gone(72)
        );
        assert_eq!(
            room_event(&json!({"videoroom": "event", "leaving": 71})),
            RoomEvent::Gone(71)
        );
        assert_eq!(
            room_event(&json!({"videoroom": "updated"})),
            RoomEvent::Subscriber
        );
        assert_eq!(
            room_event(&json!({"videoroom": "created", "room": 5})),
            RoomEvent::Created
        );
        assert_eq!(
            room_event(
                &json!({"videoroom": "event", "error_code": 427, "error": "Room 5 already exists"})
            ),
            RoomEvent::Error {
                code: 427,
                message: "Room 5 already exists".into()
            }
        );
        // A hostile publisher list is capped.
        let many: Vec<Value> = (0..1000).map(|i| json!({"id": i})).collect();
        match room_event(&json!({"videoroom": "event", "publishers": many})) {
            RoomEvent::Publishers(l) => assert_eq!(l.len(), FEEDS_MAX),
            e => panic!("{e:?}"),
        }
    }
}
