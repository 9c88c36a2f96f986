//! The connectivity check of the device check page: `probe {v, token}` as
//! the first WebSocket message sets up one throwaway media connection to the
//! media server and reports whether ICE and DTLS came up.
//!
//! The token must be a valid join token (so the media server is not an
//! anonymous relay), but the person joins nothing: no roster, no waiting
//! room, no `join` audit line. The media plane sees a private consult named
//! `probe:<random>`; a real consult id can never contain `:` (see
//! `token::valid_consult_id`), so the two cannot meet. One probe per
//! connection, a few per client IP per minute.

use crate::audit::AuditEvent;
use crate::connection::{Connection, Inbound, shutting_down};
use crate::media::Media;
use crate::protocol::{ClientMessage, ErrorCode, PROTOCOL_VERSION, ServerMessage};
use futures_util::StreamExt;
use sfu::{MediaCommand, MediaEvent};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a probe may take to connect before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(15);
/// Probes per client IP: a device check runs one or two (UDP, then TCP).
pub const PROBES_PER_MINUTE: u32 = 20;
pub const PROBE_BURST: u32 = 20;

/// The media-plane side of a probe, taken out again however the probe
/// ends (result, timeout, the browser going away, shutdown).
struct ProbePeer {
    media: Arc<Media>,
    consult: String,
    participant: String,
}

impl Drop for ProbePeer {
    fn drop(&mut self) {
        self.media.detach(&self.participant);
        self.media.send(MediaCommand::Leave {
            consult: self.consult.clone(),
            participant: self.participant.clone(),
        });
    }
}

/// How a probe ended, when it ran to an end.
enum Outcome {
    Connected(Duration),
    NotConnected(&'static str),
}

/// Run one probe on `conn` and close it. Every refusal is an `error` with
/// its code (then the close); a probe that ran ends with `probe-result`.
pub(crate) async fn run(conn: &mut Connection, v: Option<u64>, token: Option<String>) {
    let ctx = conn.ctx.clone();
    if v != Some(u64::from(PROTOCOL_VERSION)) {
        let _ = conn.error(ErrorCode::UnsupportedVersion).await;
        return;
    }
    if !ctx.probe_limiter.allow(conn.access.ip, Instant::now()) {
        let _ = conn.error(ErrorCode::RateLimited).await;
        conn.close().await;
        return;
    }
    let access = conn.access.clone();
    let claims = match ctx.verify_token(&access, &token.unwrap_or_default()).await {
        Ok(c) => c,
        Err(code) => {
            log::info!("probe refused: {code}");
            let _ = conn.error(code).await;
            return;
        }
    };
    if let Err(code) = ctx.directory.check_token(&claims) {
        log::info!("probe refused: {code}");
        // All of these codes are fatal: `error` closes.
        let _ = conn.error(code).await;
        return;
    }

    let peer = ProbePeer {
        media: ctx.media.clone(),
        consult: format!(
            "{}{}",
            crate::token::PROBE_CONSULT_PREFIX,
            crate::token::random_hex_id()
        ),
        participant: crate::token::random_hex_id(),
    };
    // TURN credentials first, so the page can configure its peer
    // connection before the offer: the check then tests TURN too.
    if let Some(turn) = &ctx.turn {
        let msg = ServerMessage::IceServers {
            ice_servers: turn.ice_servers(&peer.participant, crate::token::unix_now(), claims.exp),
            force_relay: turn.force_relay.then_some(true),
        };
        if conn.send(&msg).await.is_err() {
            return;
        }
    }
    let mut events = peer.media.attach(&peer.consult, &peer.participant);
    let started = Instant::now();
    peer.media.send(MediaCommand::Join {
        consult: peer.consult.clone(),
        participant: peer.participant.clone(),
    });
    let deadline = tokio::time::sleep(PROBE_TIMEOUT);
    tokio::pin!(deadline);
    let mut shutdown = ctx.shutdown.clone();
    let outcome = loop {
        tokio::select! {
            biased;
            () = shutting_down(&mut shutdown) => {
                let _ = conn.error(ErrorCode::ShuttingDown).await;
                return;
            }
            () = &mut deadline => break Outcome::NotConnected("timeout"),
            event = events.recv() => match event {
                Some(MediaEvent::Offer { sdp }) => {
                    if conn.send(&ServerMessage::Offer { sdp }).await.is_err() {
                        return;
                    }
                }
                Some(MediaEvent::Connected) => break Outcome::Connected(started.elapsed()),
                Some(
                    MediaEvent::FirstMediaForwarded
                    | MediaEvent::ActiveSpeaker { .. }
                    | MediaEvent::Reset,
                ) => {}
                Some(MediaEvent::Failed { .. }) => break Outcome::NotConnected("failed"),
                Some(MediaEvent::Error { .. }) | None => break Outcome::NotConnected("refused"),
            },
            frame = conn.ws.next() => match conn.read(frame).await {
                Inbound::Stop => return,
                Inbound::Handled => {}
                Inbound::Message(ClientMessage::Answer { sdp }) => {
                    peer.media.send(MediaCommand::Answer {
                        consult: peer.consult.clone(),
                        participant: peer.participant.clone(),
                        sdp,
                    });
                }
                Inbound::Message(ClientMessage::Candidate { candidate }) => {
                    peer.media.send(MediaCommand::Candidate {
                        consult: peer.consult.clone(),
                        participant: peer.participant.clone(),
                        candidate: candidate.candidate,
                    });
                }
                Inbound::Message(ClientMessage::Ping) => {
                    if conn.send(&ServerMessage::Pong).await.is_err() {
                        return;
                    }
                }
                Inbound::Message(ClientMessage::Leave) => {
                    conn.close().await;
                    return;
                }
                // A second probe, a join, anything else: one probe per
                // connection and nothing but the probe on it.
                Inbound::Message(_) => {
                    if conn.error(ErrorCode::BadMessage).await.is_err() {
                        return;
                    }
                }
            },
        }
    };
    drop(peer);
    let (result, detail) = match outcome {
        Outcome::Connected(took) => {
            let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
            (
                ServerMessage::ProbeResult {
                    connected: true,
                    ms: Some(ms),
                    reason: None,
                },
                serde_json::json!({ "connected": true, "ms": ms }),
            )
        }
        Outcome::NotConnected(reason) => (
            ServerMessage::ProbeResult {
                connected: false,
                ms: None,
                reason: Some(reason.to_string()),
            },
            serde_json::json!({ "connected": false, "reason": reason }),
        ),
    };
    ctx.audit.record(
        AuditEvent::new("connectivity_check", access)
            .actor(&claims.sub, claims.role)
            .consult(&claims.consult)
            .detail(detail),
    );
    log::info!("connectivity check done");
    let _ = conn.send(&result).await;
    conn.close().await;
}
