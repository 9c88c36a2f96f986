//! Passing a participant's WebSocket on to the consult's home edge
//! (`peer.rs`), and carrying its frames both ways until either side ends.
//!
//! This edge keeps the transport rules it owns — the ping-flood limit, the
//! keep-alive towards the browser, the send timeout, the shutdown `bye` —
//! and leaves everything about the consult to the home edge, which applies
//! its own message limits and writes the audit lines. When the home edge
//! goes away mid-call the browser's socket is closed without `bye`, so the
//! page reconnects with its resume ticket and lands wherever the room is
//! now.

use crate::connection::{Connection, SEND_TIMEOUT, shutting_down};
use crate::peer::{Home, Peers, Upstream};
use crate::protocol::{ByeReason, ClientMessage, ErrorCode, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Message as Up;
use warp::ws::Message;

/// How a passed-on connection ended (for the log; nothing else depends on
/// it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Browser,
    Home,
    Idle,
    Shutdown,
}

impl Connection {
    /// Route a `join` in a cluster: `false` when this edge is the consult's
    /// home (or the token is not valid: the normal path refuses and audits
    /// it), `true` when the connection was passed on and has ended, or the
    /// join was refused here with `service_unavailable`.
    pub(crate) async fn pass_on(
        &mut self,
        peers: &Arc<Peers>,
        v: Option<u64>,
        token: &Option<String>,
        resume: &Option<String>,
    ) -> bool {
        let Some(text) = token.as_deref() else {
            return false;
        };
        if self.ctx.jwks.is_some() && self.ctx.verifier.has_unknown_kid(text) {
            self.ctx.refresh_jwks().await;
        }
        // Only to learn the consult: the home edge verifies again and
        // writes the `token_accepted` line.
        let Ok(claims) = self.ctx.verifier.verify(text, crate::token::unix_now()) else {
            return false;
        };
        let mut shutdown = self.ctx.shutdown.clone();
        let routed = tokio::select! {
            routed = peers.route(&claims.consult, &self.access) => routed,
            () = shutting_down(&mut shutdown) => {
                let _ = self.error(ErrorCode::ShuttingDown).await;
                return true;
            }
        };
        match routed {
            Ok(Home::Here) => false,
            Ok(Home::There(up)) => {
                let join = ClientMessage::Join {
                    v,
                    token: token.clone(),
                    resume: resume.clone(),
                };
                let Ok(join) = serde_json::to_string(&join) else {
                    return false;
                };
                self.ctx.metrics.peer_passed_on.inc();
                let ended = self.carry(up, join).await;
                self.ctx.metrics.peer_passed_on.dec();
                log::debug!("passed-on connection ended: {ended:?}");
                true
            }
            Err(e) => {
                self.ctx.metrics.peer_route_failures.inc();
                log::warn!("a join could not reach its consult's home edge: {e:?}");
                let _ = self.error(ErrorCode::ServiceUnavailable).await;
                true
            }
        }
    }

    /// Send `join` to the home edge, then carry frames both ways.
    async fn carry(&mut self, up: Box<Upstream>, join: String) -> Ended {
        let mut up = *up;
        if up.send(Up::text(join)).await.is_err() {
            // Gone between the handshake and the first frame: the page
            // reconnects and the next route finds the room.
            self.close().await;
            return Ended::Home;
        }
        let heartbeat = self.ctx.ws_heartbeat;
        let idle_limit = self.ctx.ws_idle_timeout;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = self.ctx.shutdown.clone();
        // When the home edge last sent anything (it pings us as it pings a
        // browser, and we ping it): a home that vanished without closing
        // (power loss, a cut network) ends the connection after the idle
        // limit, so the page reconnects to wherever the room is then.
        let mut up_heard = std::time::Instant::now();
        let ended = loop {
            tokio::select! {
                frame = self.ws.next() => {
                    match self.read_raw(frame).await {
                        Raw::Frame(m) => {
                            if up.send(m).await.is_err() {
                                break Ended::Home;
                            }
                        }
                        Raw::Handled => {}
                        Raw::Stop => {
                            let _ = tokio::time::timeout(SEND_TIMEOUT, up.close(None)).await;
                            return Ended::Browser;
                        }
                    }
                }
                msg = up.next() => {
                    up_heard = std::time::Instant::now();
                    let out = match msg {
                        Some(Ok(Up::Text(t))) => Message::text(t.as_str()),
                        Some(Ok(Up::Binary(b))) => Message::binary(b.to_vec()),
                        Some(Ok(Up::Close(frame))) => {
                            // The home edge ended the session (after a
                            // `bye` or a fatal `error`): end ours alike.
                            let close = match frame {
                                Some(f) => Message::close_with(u16::from(f.code), f.reason.to_string()),
                                None => Message::close(),
                            };
                            self.close_with(close).await;
                            return Ended::Home;
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(_)) | None => break Ended::Home,
                    };
                    let sent = tokio::time::timeout(SEND_TIMEOUT, self.ws.send(out)).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        let _ = tokio::time::timeout(SEND_TIMEOUT, up.close(None)).await;
                        return Ended::Browser;
                    }
                }
                _ = tick.tick() => {
                    if up_heard.elapsed() >= idle_limit {
                        break Ended::Home;
                    }
                    if tokio::time::timeout(SEND_TIMEOUT, up.send(Up::Ping(Vec::new().into()))).await.is_err() {
                        break Ended::Home;
                    }
                    if self.last_heard.elapsed() >= idle_limit {
                        let _ = tokio::time::timeout(SEND_TIMEOUT, up.close(None)).await;
                        self.close().await;
                        return Ended::Idle;
                    }
                    let ping = tokio::time::timeout(SEND_TIMEOUT, self.ws.send(Message::ping(Vec::new()))).await;
                    if !matches!(ping, Ok(Ok(()))) {
                        let _ = tokio::time::timeout(SEND_TIMEOUT, up.close(None)).await;
                        return Ended::Browser;
                    }
                }
                () = shutting_down(&mut shutdown) => break Ended::Shutdown,
            }
        };
        match ended {
            Ended::Shutdown => {
                // This edge stops; the room does not. The page reconnects
                // (to another edge) on `bye: shutdown`.
                let _ = tokio::time::timeout(SEND_TIMEOUT, up.close(None)).await;
                let _ = self
                    .send(&ServerMessage::Bye {
                        reason: ByeReason::Shutdown,
                    })
                    .await;
                self.close().await;
            }
            _ => {
                // The home edge is gone: close without `bye`, so the page
                // reconnects with its resume ticket.
                self.close().await;
            }
        }
        ended
    }
}

/// One frame from the browser, for passing on.
pub(crate) enum Raw {
    Frame(Up),
    Handled,
    Stop,
}

impl Connection {
    /// Read one frame under this edge's transport rules (close, ping flood,
    /// the hard size cap of the WebSocket layer); message limits and parsing
    /// are the home edge's.
    async fn read_raw(&mut self, frame: Option<Result<Message, warp::Error>>) -> Raw {
        let msg = match frame {
            Some(Ok(m)) => m,
            Some(Err(_)) | None => return Raw::Stop,
        };
        self.last_heard = std::time::Instant::now();
        if msg.is_close() {
            return Raw::Stop;
        }
        if msg.is_ping() {
            return if self.take_ping() {
                Raw::Handled
            } else {
                self.close_for_policy("ping_flood").await;
                Raw::Stop
            };
        }
        if msg.is_pong() {
            return Raw::Handled;
        }
        match msg.to_str() {
            Ok(text) => Raw::Frame(Up::text(text)),
            Err(()) => Raw::Frame(Up::binary(msg.into_bytes())),
        }
    }
}
