//! The connectivity check of the device check page and of the test page
//! (`/test`): `probe {v, token}` as the first WebSocket message sets up one
//! throwaway media connection to the media server and reports whether ICE
//! and DTLS came up.
//!
//! With a token, it must be a valid join token; the check is audited as the
//! token holder's. Without one (absent or empty) the probe is *anonymous*:
//! the test page has no link, and a patient tries their setup days before
//! the appointment. Anyone can send that, so it has bounds of its own
//! ([`AnonymousProbes`]: a few per client IP per minute and a global cap on
//! those in progress), is counted but never audited (it touches no patient
//! data), and its TURN credentials expire with the probe. A token that is
//! present but bad is refused as before, never downgraded to anonymous.
//!
//! Either way the person joins nothing: no roster, no waiting room, no
//! `join` audit line. The media plane sees a private consult named
//! `probe:<random>`; a real consult id can never contain `:` (see
//! `token::valid_consult_id`), so the two cannot meet. One probe per
//! connection.

use crate::audit::AuditEvent;
use crate::connection::{Connection, Inbound, shutting_down};
use crate::media::Media;
use crate::protocol::{ClientMessage, ErrorCode, PROTOCOL_VERSION, ServerMessage};
use crate::rate::IpLimiter;
use crate::token::Claims;
use futures_util::StreamExt;
use prometheus::IntGauge;
use sfu::{MediaCommand, MediaEvent};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a probe may take to connect before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(15);
/// Probes per client IP: a device check runs one or two (UDP, then TCP).
pub const PROBES_PER_MINUTE: u32 = 20;
pub const PROBE_BURST: u32 = 20;

/// Anonymous probes per client IP: the test page runs at most three (UDP,
/// TCP, relay) per try, so two tries in a row, then one every ten seconds.
pub const ANONYMOUS_PROBES_PER_MINUTE: u32 = 6;
pub const ANONYMOUS_PROBE_BURST: u32 = 6;
/// Anonymous probes in progress on this edge at once. Each holds one media
/// peer for at most [`PROBE_TIMEOUT`]; spread over many addresses, 16 is
/// still a small fraction of what one media worker serves (docs/BENCHMARKS.md),
/// and a real page needs a slot for seconds only.
pub const ANONYMOUS_PROBES_IN_PROGRESS: usize = 16;

/// The bounds of anonymous probes (`ServeConfig::anonymous_probes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnonymousProbeLimits {
    pub per_minute: u32,
    pub burst: u32,
    pub in_progress: usize,
}

impl Default for AnonymousProbeLimits {
    fn default() -> AnonymousProbeLimits {
        AnonymousProbeLimits {
            per_minute: ANONYMOUS_PROBES_PER_MINUTE,
            burst: ANONYMOUS_PROBE_BURST,
            in_progress: ANONYMOUS_PROBES_IN_PROGRESS,
        }
    }
}

/// Why an anonymous probe was not started (the metric's `outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnonymousRefusal {
    /// This address used up its probes for now.
    RateLimited,
    /// The edge runs as many anonymous probes as it allows.
    AtCapacity,
}

impl AnonymousRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            AnonymousRefusal::RateLimited => "rate_limited",
            AnonymousRefusal::AtCapacity => "at_capacity",
        }
    }
}

/// The admission of anonymous probes: a token bucket per client IP and a
/// semaphore for the global cap, so a flood from many addresses cannot make
/// the media plane hold more than `in_progress` throwaway peers for it.
pub struct AnonymousProbes {
    per_ip: IpLimiter,
    slots: Arc<Semaphore>,
    /// Anonymous probes in progress (`spreekkamer_anonymous_connectivity_checks`).
    gauge: IntGauge,
}

/// One anonymous probe's place under the cap, given back when dropped
/// however the probe ends.
pub struct AnonymousSlot {
    _permit: OwnedSemaphorePermit,
    gauge: IntGauge,
}

impl Drop for AnonymousSlot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl AnonymousProbes {
    pub fn new(limits: AnonymousProbeLimits, gauge: IntGauge) -> AnonymousProbes {
        AnonymousProbes {
            per_ip: IpLimiter::new(limits.per_minute, limits.burst),
            slots: Arc::new(Semaphore::new(limits.in_progress)),
            gauge,
        }
    }

    /// A slot for one anonymous probe from `ip` at `now`, or why not. The
    /// address is charged first, so a refused address never takes a slot.
    pub fn admit(
        &self,
        ip: Option<IpAddr>,
        now: Instant,
    ) -> Result<AnonymousSlot, AnonymousRefusal> {
        if !self.per_ip.allow(ip, now) {
            return Err(AnonymousRefusal::RateLimited);
        }
        let permit = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| AnonymousRefusal::AtCapacity)?;
        self.gauge.inc();
        Ok(AnonymousSlot {
            _permit: permit,
            gauge: self.gauge.clone(),
        })
    }
}

/// Who runs a probe: a token holder (audited as them) or nobody in
/// particular (counted only, holding a slot under the anonymous cap).
enum Prober {
    Token(Box<Claims>),
    Anonymous {
        /// Held until the probe ends: its place under the cap.
        _slot: AnonymousSlot,
    },
}

impl Prober {
    fn kind(&self) -> &'static str {
        match self {
            Prober::Token(_) => "token",
            Prober::Anonymous { .. } => "anonymous",
        }
    }
}

/// Counts a started probe once, however it ends: its result, or
/// `abandoned` when the browser left, went away or the server shut down.
struct Tally {
    metrics: Arc<crate::metrics::Metrics>,
    kind: &'static str,
    outcome: &'static str,
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.metrics.connectivity_check(self.kind, self.outcome);
    }
}

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
    let access = conn.access.clone();
    let prober = match token.filter(|t| !t.is_empty()) {
        None => match ctx.anonymous_probes.admit(access.ip, Instant::now()) {
            Ok(slot) => Prober::Anonymous { _slot: slot },
            Err(refusal) => {
                ctx.metrics
                    .connectivity_check("anonymous", refusal.as_str());
                let _ = conn.error(ErrorCode::RateLimited).await;
                conn.close().await;
                return;
            }
        },
        Some(token) => {
            if !ctx.probe_limiter.allow(access.ip, Instant::now()) {
                ctx.metrics.connectivity_check("token", "rate_limited");
                let _ = conn.error(ErrorCode::RateLimited).await;
                conn.close().await;
                return;
            }
            let claims = match ctx.verify_token(&access, &token).await {
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
            Prober::Token(Box::new(claims))
        }
    };

    let mut tally = Tally {
        metrics: ctx.metrics.clone(),
        kind: prober.kind(),
        outcome: "abandoned",
    };
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
    // connection before the offer: the check then tests TURN too. Only for
    // a probe with a link: a TURN credential is good for many allocations
    // for as long as it lives, whatever happens to this connection, so an
    // anonymous probe (anyone, no link) gets none and tests the direct
    // routes only (docs/TURN.md).
    if let Some(turn) = &ctx.turn
        && let Prober::Token(claims) = &prober
    {
        let now = crate::token::unix_now();
        let exp = claims.exp;
        let msg = ServerMessage::IceServers {
            ice_servers: turn.ice_servers(&peer.participant, now, exp),
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
    let (result, detail, label) = match outcome {
        Outcome::Connected(took) => {
            let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
            (
                ServerMessage::ProbeResult {
                    connected: true,
                    ms: Some(ms),
                    reason: None,
                },
                serde_json::json!({ "connected": true, "ms": ms }),
                "connected",
            )
        }
        Outcome::NotConnected(reason) => (
            ServerMessage::ProbeResult {
                connected: false,
                ms: None,
                reason: Some(reason.to_string()),
            },
            serde_json::json!({ "connected": false, "reason": reason }),
            reason,
        ),
    };
    tally.outcome = label;
    // Only a token holder's check is audited; an anonymous one names nobody.
    if let Prober::Token(claims) = &prober {
        ctx.audit.record(
            AuditEvent::new("connectivity_check", access)
                .actor(&claims.sub, claims.role)
                .consult(&claims.consult)
                .detail(detail),
        );
    }
    log::info!("connectivity check done");
    let _ = conn.send(&result).await;
    conn.close().await;
}
