//! One participant's signaling: mint a join token, open the WebSocket,
//! `join`, pass every `offer` to the media thread and send back its
//! `answer`. Speaks docs/PROTOCOL.md v1 exactly as the browser does.

use crate::media::{Command, PeerEvent};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

/// Why a participant could not join or stay.
#[derive(Debug, Clone, PartialEq)]
pub enum JoinError {
    /// The WebSocket could not be opened.
    Unreachable(String),
    /// The server refused the join (`error` with `fatal: true`).
    Refused { code: String, message: String },
    /// Anything else: closed early, bad JSON, media setup failed.
    Other(String),
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinError::Unreachable(e) => write!(f, "target unreachable: {e}"),
            JoinError::Refused { code, message } => {
                write!(f, "join refused by the server: {code} ({message})")
            }
            JoinError::Other(e) => write!(f, "{e}"),
        }
    }
}

pub struct Signaling {
    pub url: String,
    pub secret: String,
    pub issuer: String,
    pub audience: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    role: &'a str,
    consult: &'a str,
    name: &'a str,
    iat: u64,
    exp: u64,
}

impl Signaling {
    /// An HS256 join token, the same shape `spreekkamer link` mints.
    pub fn token(&self, consult: &str, role: &str, sub: &str) -> Result<String, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            iss: &self.issuer,
            aud: &self.audience,
            sub,
            role,
            consult,
            name: "Load test",
            iat: now,
            exp: now + 3600,
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(self.secret.as_bytes()),
        )
        .map_err(|e| e.to_string())
    }
}

/// Run one participant until `stop` turns true. `joined` is told once the
/// server welcomed us (or why not).
#[allow(clippy::too_many_arguments)]
pub async fn participant(
    sig: Arc<Signaling>,
    id: u64,
    consult: String,
    role: &'static str,
    media: Arc<crate::media::MediaThread>,
    local_ip: std::net::IpAddr,
    publish: bool,
    mut stop: watch::Receiver<bool>,
    joined: mpsc::UnboundedSender<(u64, Result<(), JoinError>)>,
) {
    let started = Instant::now();
    let result = run(
        &sig, id, &consult, role, &media, local_ip, publish, &mut stop, &joined, started,
    )
    .await;
    media.send(Command::Remove { id });
    if let Err(e) = result {
        let _ = joined.send((id, Err(e)));
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    sig: &Signaling,
    id: u64,
    consult: &str,
    role: &'static str,
    media: &crate::media::MediaThread,
    local_ip: std::net::IpAddr,
    publish: bool,
    stop: &mut watch::Receiver<bool>,
    joined: &mpsc::UnboundedSender<(u64, Result<(), JoinError>)>,
    started: Instant,
) -> Result<(), JoinError> {
    let token = sig
        .token(consult, role, &format!("lt-{id}"))
        .map_err(|e| JoinError::Other(format!("cannot mint a token: {e}")))?;
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(sig.url.as_str()),
    )
    .await
    .map_err(|_| JoinError::Unreachable(format!("{}: no answer within 10 s", sig.url)))?
    .map_err(|e| JoinError::Unreachable(format!("{}: {e}", sig.url)))?;
    ws.send(Message::text(
        json!({"type": "join", "v": 1, "token": token}).to_string(),
    ))
    .await
    .map_err(|e| JoinError::Other(format!("send join: {e}")))?;

    let mut events = media
        .add_rtc_peer(id, local_ip, publish, started)
        .map_err(JoinError::Other)?;
    let mut welcomed = false;
    loop {
        tokio::select! {
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None => {
                        return Err(JoinError::Other("the server closed the WebSocket".into()))
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(JoinError::Other(format!("websocket: {e}"))),
                };
                let v: Value = serde_json::from_str(&text)
                    .map_err(|e| JoinError::Other(format!("bad JSON from server: {e}")))?;
                match v["type"].as_str().unwrap_or("") {
                    "welcome" if !welcomed => {
                        welcomed = true;
                        let _ = joined.send((id, Ok(())));
                        if role == "clinician" {
                            admit_waiting(&mut ws, &v["lobby"]).await?;
                        }
                    }
                    // A clinician lets the patients in, as a person would
                    // (the server's waiting room is on by default).
                    "lobby" if role == "clinician" => admit_waiting(&mut ws, &v["waiting"]).await?,
                    "offer" => {
                        let sdp = v["sdp"].as_str().unwrap_or("").to_string();
                        media.send(Command::Offer { id, sdp });
                    }
                    "error" => {
                        let code = v["code"].as_str().unwrap_or("?").to_string();
                        let message = v["message"].as_str().unwrap_or("").to_string();
                        if v["fatal"].as_bool().unwrap_or(false) {
                            return Err(JoinError::Refused { code, message });
                        }
                        log::warn!("participant {id}: server error {code}: {message}");
                    }
                    "bye" => {
                        return Err(JoinError::Other(format!(
                            "server said bye: {}",
                            v["reason"].as_str().unwrap_or("?")
                        )))
                    }
                    _ => {}
                }
            }
            ev = events.recv() => {
                if let Some(PeerEvent::Answer(sdp)) = ev {
                    ws.send(Message::text(json!({"type": "answer", "sdp": sdp}).to_string()))
                        .await
                        .map_err(|e| JoinError::Other(format!("send answer: {e}")))?;
                }
            }
            _ = stop.changed() => {
                let _ = ws.send(Message::text(json!({"type": "leave"}).to_string())).await;
                let _ = ws.close(None).await;
                return Ok(());
            }
        }
    }
}

/// `admit` everyone in a lobby list (`[{id, ...}]`; anything else is empty).
async fn admit_waiting<S>(ws: &mut S, waiting: &Value) -> Result<(), JoinError>
where
    S: futures_util::Sink<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    for entry in waiting.as_array().into_iter().flatten() {
        if let Some(pid) = entry["id"].as_str() {
            ws.send(Message::text(
                json!({"type": "admit", "id": pid}).to_string(),
            ))
            .await
            .map_err(|e| JoinError::Other(format!("send admit: {e}")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `admit_waiting` sends, as JSON values.
    fn admits(lobby: &Value) -> Vec<Value> {
        let sent = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let log = sent.clone();
        let mut sink = Box::pin(futures_util::sink::unfold((), move |(), m: Message| {
            log.borrow_mut().push(m);
            async { Ok::<(), std::convert::Infallible>(()) }
        }));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(admit_waiting(&mut sink, lobby)).unwrap();
        sent.borrow()
            .iter()
            .map(|m| serde_json::from_str(m.to_text().unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn clinician_admits_everyone_in_the_lobby() {
        let lobby = json!([{"id": "a1", "name": "x"}, {"id": "b2"}, {"no-id": true}]);
        assert_eq!(
            admits(&lobby),
            vec![
                json!({"type": "admit", "id": "a1"}),
                json!({"type": "admit", "id": "b2"})
            ]
        );
        assert!(admits(&Value::Null).is_empty());
    }

    #[test]
    fn token_is_hs256_with_the_protocol_claims() {
        let sig = Signaling {
            url: String::new(),
            secret: "0123456789abcdef0123456789abcdef".into(),
            issuer: "spreekkamer".into(),
            audience: "spreekkamer".into(),
        };
        let t = sig.token("c-1", "patient", "lt-1").unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_issuer(&["spreekkamer"]);
        v.set_audience(&["spreekkamer"]);
        let data = jsonwebtoken::decode::<Value>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(sig.secret.as_bytes()),
            &v,
        )
        .unwrap();
        assert_eq!(data.claims["consult"], "c-1");
        assert_eq!(data.claims["role"], "patient");
        assert_eq!(data.claims["sub"], "lt-1");
        assert!(data.claims["name"].as_str().is_some_and(|n| !n.is_empty()));
        let wrong = jsonwebtoken::decode::<Value>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(b"another-secret-another-secret-xx"),
            &v,
        );
        assert!(wrong.is_err());
    }
}
