//! One WebSocket connection's transport rules, shared by a participant's
//! session (`session.rs`) and the connectivity check (`probe.rs`): sending
//! with a timeout, errors and closes, and reading one frame under the size,
//! message-rate and ping-rate limits.

use crate::audit::AccessPoint;
use crate::context::Context;
use crate::protocol::{ClientMessage, ErrorCode, ServerMessage};
use crate::rate::TokenBucket;
use futures_util::SinkExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use warp::ws::{Message, WebSocket};

/// A send that takes longer than this means the browser stopped reading.
pub(crate) const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// WebSocket pings a peer may send. Browsers never send any (the page's
/// keep-alive is a `ping` message); a flood of them, each answered with a
/// pong, grew the server from 6 MiB to 816 MiB in 5 s when the peer did not
/// read. Over the rate the connection is closed with 1008 (policy).
const PINGS_PER_SECOND: u32 = 2;
const PING_BURST: u32 = 10;
/// WebSocket close code "policy violation" (RFC 6455 §7.4.1).
pub const CLOSE_POLICY: u16 = 1008;

/// Why the connection ends (after the last frame was sent).
pub(crate) enum End {
    /// Close frame sent or the peer is gone: just drop the socket.
    Closed,
}

pub(crate) struct Connection {
    pub(crate) ws: WebSocket,
    pub(crate) ctx: Arc<Context>,
    pub(crate) access: AccessPoint,
    messages: TokenBucket,
    pub(crate) relay_bytes: TokenBucket,
    pings: TokenBucket,
    /// When the peer last sent a frame (any: a pong answers our heartbeat).
    pub(crate) last_heard: Instant,
}

/// Resolves once shutdown began. (The watch guard is not `Send`, so it is
/// dropped here rather than held in the caller's `select!`.)
pub(crate) async fn shutting_down(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|down| *down).await;
}

/// What one frame from the browser turned out to be.
pub(crate) enum Inbound {
    Message(ClientMessage),
    /// Answered already (non-fatal error); keep going.
    Handled,
    /// Fatal error sent, or the peer closed: stop.
    Stop,
}

impl Connection {
    pub(crate) fn new(ws: WebSocket, ctx: Arc<Context>, access: AccessPoint) -> Connection {
        let now = Instant::now();
        let limits = ctx.limits;
        Connection {
            ws,
            access,
            messages: TokenBucket::new(limits.messages_per_second, limits.messages_burst, now),
            relay_bytes: TokenBucket::new(
                limits.relay_bytes_per_second,
                limits.relay_bytes_burst,
                now,
            ),
            pings: TokenBucket::new(PINGS_PER_SECOND, PING_BURST, now),
            last_heard: now,
            ctx,
        }
    }

    pub(crate) async fn send(&mut self, message: &ServerMessage) -> Result<(), End> {
        let text = message.to_json();
        match tokio::time::timeout(SEND_TIMEOUT, self.ws.send(Message::text(text))).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Closed),
        }
    }

    /// Send `error` and, if it is fatal, close.
    pub(crate) async fn error(&mut self, code: ErrorCode) -> Result<(), End> {
        self.send(&ServerMessage::error(code)).await?;
        if code.fatal() {
            self.close().await;
            return Err(End::Closed);
        }
        Ok(())
    }

    pub(crate) async fn close(&mut self) {
        self.close_with(Message::close()).await;
    }

    pub(crate) async fn close_with(&mut self, frame: Message) {
        let _ = tokio::time::timeout(SEND_TIMEOUT, self.ws.send(frame)).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), SinkExt::close(&mut self.ws)).await;
    }

    /// Close for breaking a transport rule (ping flood): no `error`
    /// message, the close code says it.
    pub(crate) async fn close_for_policy(&mut self, reason: &'static str) {
        self.ctx
            .metrics
            .ws_closed
            .with_label_values(&[reason])
            .inc();
        log::info!("WebSocket closed: {reason}");
        self.close_with(Message::close_with(CLOSE_POLICY, reason))
            .await;
    }

    /// One ping from the peer, under the ping-rate limit.
    pub(crate) fn take_ping(&mut self) -> bool {
        self.pings.try_take(1, Instant::now())
    }

    /// Read one frame and apply the size and rate limits.
    pub(crate) async fn read(&mut self, frame: Option<Result<Message, warp::Error>>) -> Inbound {
        let msg = match frame {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                // tungstenite refuses frames over its own (larger) cap; tell
                // the client why before dropping the connection.
                if e.to_string().to_ascii_lowercase().contains("too long")
                    || e.to_string().to_ascii_lowercase().contains("size")
                {
                    let _ = self.error(ErrorCode::MessageTooLarge).await;
                }
                return Inbound::Stop;
            }
            None => return Inbound::Stop,
        };
        let now = Instant::now();
        self.last_heard = now;
        if msg.is_close() {
            return Inbound::Stop;
        }
        if msg.is_ping() {
            if !self.take_ping() {
                self.close_for_policy("ping_flood").await;
                return Inbound::Stop;
            }
            return Inbound::Handled;
        }
        if msg.is_pong() {
            return Inbound::Handled;
        }
        if msg.as_bytes().len() > self.ctx.limits.max_message_bytes {
            self.ctx
                .metrics
                .ws_messages
                .with_label_values(&["too_large"])
                .inc();
            let _ = self.error(ErrorCode::MessageTooLarge).await;
            return Inbound::Stop;
        }
        if !self.messages.try_take(1, now) {
            self.ctx
                .metrics
                .ws_messages
                .with_label_values(&["rate_limited"])
                .inc();
            return match self.error(ErrorCode::RateLimited).await {
                Ok(()) => Inbound::Handled,
                Err(_) => Inbound::Stop,
            };
        }
        let parsed = msg
            .to_str()
            .ok()
            .and_then(|text| serde_json::from_str::<ClientMessage>(text).ok());
        match parsed {
            Some(m) => {
                self.ctx
                    .metrics
                    .ws_messages
                    .with_label_values(&[m.kind()])
                    .inc();
                Inbound::Message(m)
            }
            None => {
                self.ctx
                    .metrics
                    .ws_messages
                    .with_label_values(&["invalid"])
                    .inc();
                match self.error(ErrorCode::BadMessage).await {
                    Ok(()) => Inbound::Handled,
                    Err(_) => Inbound::Stop,
                }
            }
        }
    }
}
