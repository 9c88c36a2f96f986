//! # Spreekkamer media plane
//!
//! A selective forwarding unit built on webrtc-rs's sans-I/O core (the `rtc`
//! crate). The model, top to bottom:
//!
//! * A node runs `workers` media threads. Each owns **one UDP socket** and
//!   drives every peer connection assigned to it; nothing else touches them.
//! * A **consult** (room) is pinned to exactly one worker, chosen when its
//!   first participant joins. All forwarding between its participants happens
//!   on that thread, so the hot path takes no lock and crosses no thread.
//! * One TCP listener per node accepts ICE-TCP (passive, RFC 4571 framing)
//!   and hands each connection to the worker that owns the ufrag.
//! * The server is ICE-lite and always the SDP **offerer**: it offers the
//!   participant two `recvonly` m-sections (their audio and video) plus one
//!   `sendonly` m-section per track of every other participant, and offers
//!   again whenever someone joins or leaves. The browser only answers, so
//!   there is never glare.
//! * Media payloads are never read: with end-to-end encryption they are
//!   ciphertext. Only RTP/RTCP headers are rewritten.
//!
//! The files, in reading order: `handle.rs` (start, routing a command to the
//! worker that owns its consult, shutdown), `acceptor.rs` (the ICE-TCP
//! accept loop and its bounds on connections waiting for a first check),
//! `worker.rs` (the socket loop, timers, command intake, fan-out),
//! `addresses.rs` (which remote address belongs to which peer: learned
//! only from checks that passed the integrity check, capped per peer),
//! `junk.rs` (what is dropped before the WebRTC stack: counted and
//! summarised, never logged per packet), `peer.rs`
//! (one participant's `rtc` peer connection and its offer/answer state
//! machine), `consult.rs` (who is in a consult and publishes what: pure),
//! `simulcast.rs` (layer switching and VP8 renumbering: pure), `bwe.rs`
//! (per-subscriber bandwidth estimate and its allocation to layers: pure
//! apart from the estimator hook), `speaker.rs` (dominant speaker from
//! audio levels: pure), `rewrite.rs` (RTP header rewriting: pure),
//! `demux.rs` (STUN ufrag parsing and integrity check: pure), `tcp.rs` (RFC 4571 framing:
//! pure), `keyframe.rs` (the interceptor that lets PLI/FIR/NACK/TWCC reach
//! us, and the rate limit for relaying keyframe requests), `media_out.rs`
//! and `srtp.rs` (the own outbound media path: packets to a subscriber
//! built, SRTP-encrypted in place and queued by us, NACKs answered from a
//! ciphertext ring, transport-wide CC and sender reports; docs/DECISIONS.md
//! §10), `inbound.rs` and `media_in.rs` (the own inbound path: a
//! publisher's SRTP decrypted in place once rtc has named the stream, and
//! the transport-wide CC feedback, NACKs and receiver reports it gets
//! back), `rx.rs`/`tx.rs` (batched UDP reads and writes), `endpoint.rs`
//! (those parts composed for one WebRTC endpoint: the load generator's
//! peers; not used by the SFU). Pure parts carry their unit tests.
//!
//! Media quality, in one paragraph each:
//!
//! * **Simulcast.** The copy of our offer the browser gets asks for three
//!   layers of the camera (`a=rid:h/m/l recv`, `a=simulcast:recv h;m;l`;
//!   rtc 0.21.1 cannot write rids for a receive-only transceiver and wants
//!   its own offer back verbatim, so the lines are added to the text only).
//!   rtc learns the rids from the answer and routes each layer by the
//!   mid/rid header extensions. A publisher that answers without simulcast
//!   (the load generator, an older browser) sends one stream, which is then
//!   every layer. Each subscriber gets one video track per publisher; the
//!   layer switches only at a keyframe of the target layer (asked for with
//!   a rate-limited PLI), with sequence numbers, timestamps, VP8 picture id
//!   and TL0PICIDX renumbered so the subscriber sees one stream. A
//!   subscriber's PLI goes to the layer it currently gets.
//! * **Layer choice** = min(the subscriber's `Preferences`, what its
//!   bandwidth estimate fits), re-decided once a second; audio-only stops
//!   video at a frame boundary and resumes it with a keyframe request.
//! * **Congestion control.** We number what we send to each subscriber
//!   (transport-wide CC, `media_out.rs`; rtc's TWCC sender on the `rtc`
//!   media path) and feed the browser's transport-cc feedback to GCC
//!   through our send ring (rtc's send history on the `rtc` path). A loss ceiling of our own from
//!   the subscriber's receiver reports backs it up (GCC alone was once
//!   still at 4 Mbit/s 35 s into a 350 kbit/s cap). Layer costs are the
//!   measured rates of each layer (nominal 150 k / 500 k / 1.2 Mbit/s
//!   until measured). Below the low layer plus audio for 3 s, video pauses
//!   before audio suffers; climbing needs 1.3x headroom and 8 s without a
//!   downgrade, keeping a layer only 0.75x its cost.
//! * **Retransmission.** rtc's NACK responder answers NACKs from a
//!   per-sender cache of what was actually sent, i.e. the rewritten
//!   sequence numbers, on the same SSRC (no RTX stream is negotiated).
//! * **Active speaker.** `ssrc-audio-level` is negotiated on the publisher
//!   audio; the per-consult detector emits [`MediaEvent::ActiveSpeaker`]
//!   on change, and to a newcomer the speaker of the moment.
//!
//! Verified against headless Chromium (tests/browser: consult, e2ee,
//! firefox, media-quality, degraded). Known limits: no RTX (retransmissions
//! reuse the media SSRC); a layer switch copies the packet payload once per
//! subscriber to renumber the VP8 descriptor (an unswitched stream is
//! forwarded without copying); header extensions of the publisher leg are
//! stripped on forwarded streams (transport-cc is added back by rtc);
//! layer choice reacts once a second; no bandwidth probing; under a hard
//! cap near the low layer's rate (350 kbit/s, tc tbf) the subscriber's link
//! stays well over the cap and its video stalls — `degraded.test.mjs`'s cap
//! scenario is opt-in until that is fixed; rtc forgets learned rid SSRCs on every answer, so
//! renegotiation answers hide the simulcast section's track from rtc
//! (`simulcast::keep_rid_bindings`) — a publisher changing its layer SSRCs
//! mid-call would not be followed; VP8 only; departed participants'
//! m-sections stay `inactive` instead of being reused.
//!
//! The edge (`signaling`) talks to the media plane through [`SfuHandle`]
//! with typed [`MediaCommand`]s and receives [`MediaEvent`]s per
//! participant. In the all-in-one binary this is an in-process channel; in a
//! cluster the same types cross the authenticated link to a media node
//! (`signaling/src/link.rs`, docs/SCALING.md).

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Opaque consult (room) identifier, as it appears in the join token.
pub type ConsultId = String;
/// Participant identifier, unique within a consult, assigned by the edge.
pub type ParticipantId = String;

/// Media-plane configuration.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// Address the UDP sockets and the ICE-TCP listener bind to.
    pub bind_ip: IpAddr,
    /// Address written into ICE candidates (what browsers send media to).
    pub announce_ip: IpAddr,
    /// First UDP port; worker `i` binds `udp_port + i` (0 = ephemeral ports).
    pub udp_port: u16,
    /// ICE-TCP port (0 = ephemeral; ICE-TCP can be disabled with `None`).
    pub tcp_port: Option<u16>,
    /// Number of media worker threads (default: number of cores).
    pub workers: usize,
    /// How forwarded media is encrypted and sent (default: our own path).
    pub media_path: MediaPath,
}

/// The forwarding path (docs/DECISIONS.md §10).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MediaPath {
    /// Our own, both directions, below rtc's RTP pipeline: SRTP,
    /// retransmissions, transport-wide CC and sender reports towards
    /// subscribers (`media_out.rs`); decryption, transport-wide CC
    /// feedback, NACKs and receiver reports towards publishers
    /// (`inbound.rs`, `media_in.rs`).
    #[default]
    Own,
    /// Everything through rtc's RTP pipeline and interceptors (the path
    /// before issue 13; kept for comparison and as a fallback).
    Rtc,
}

/// What the edge asks of the media plane. Every command names its consult;
/// the handle routes it to the worker that owns that consult. The same type
/// crosses the process boundary to a remote media node (JSON, see
/// `signaling::link`): plain data, no channels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum MediaCommand {
    /// Add a participant to a consult's media session. The worker creates a
    /// peer connection and reports [`MediaEvent::Offer`] for it on the
    /// plane's [`EventSink`].
    Join {
        consult: ConsultId,
        participant: ParticipantId,
    },
    /// The browser's SDP answer to our latest offer.
    Answer {
        consult: ConsultId,
        participant: ParticipantId,
        sdp: String,
    },
    /// A trickled ICE candidate from the browser (JSON `RTCIceCandidateInit`
    /// `candidate` string). ICE-lite learns the address from STUN anyway; this
    /// is accepted for completeness and to support TCP candidates.
    Candidate {
        consult: ConsultId,
        participant: ParticipantId,
        candidate: String,
    },
    /// Ask for a fresh offer with new ICE credentials (network change).
    IceRestart {
        consult: ConsultId,
        participant: ParticipantId,
    },
    /// Remove a participant: their tracks leave everyone else's session.
    Leave {
        consult: ConsultId,
        participant: ParticipantId,
    },
    /// What this participant wants to receive: audio only (no video at
    /// all), and per publisher the highest simulcast layer worth sending
    /// (a small tile needs only the low layer). Publishers not named get
    /// [`VideoQuality::High`]. The bandwidth estimate may still pick lower.
    Preferences {
        consult: ConsultId,
        participant: ParticipantId,
        audio_only: bool,
        max_quality: Vec<(ParticipantId, VideoQuality)>,
    },
    /// Whether this participant shares their screen now. The edge decides
    /// who may (a clinician, or a patient the clinician allowed); the media
    /// plane forwards the participant's screen track only while `on`, and
    /// asks their browser for a fresh picture each time it turns on.
    Screen {
        consult: ConsultId,
        participant: ParticipantId,
        on: bool,
    },
    /// This participant's decoder needs a keyframe of `source`'s video
    /// (and screen): its end-to-end key for `source` has just arrived and
    /// the frames before it could not be decrypted. Asked of `source`'s
    /// browser for the layer this participant receives, rate-limited per
    /// publisher layer like every keyframe request.
    Keyframe {
        consult: ConsultId,
        participant: ParticipantId,
        source: ParticipantId,
    },
}

impl MediaCommand {
    /// The consult and participant the command is about.
    pub fn target(&self) -> (&ConsultId, &ParticipantId) {
        match self {
            MediaCommand::Join {
                consult,
                participant,
            }
            | MediaCommand::Answer {
                consult,
                participant,
                ..
            }
            | MediaCommand::Candidate {
                consult,
                participant,
                ..
            }
            | MediaCommand::IceRestart {
                consult,
                participant,
            }
            | MediaCommand::Leave {
                consult,
                participant,
            }
            | MediaCommand::Preferences {
                consult,
                participant,
                ..
            }
            | MediaCommand::Screen {
                consult,
                participant,
                ..
            }
            | MediaCommand::Keyframe {
                consult,
                participant,
                ..
            } => (consult, participant),
        }
    }
}

/// A simulcast layer, lowest first (rids `l`, `m`, `h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VideoQuality {
    Low,
    Medium,
    High,
}

/// What the media plane tells the edge about one participant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum MediaEvent {
    /// A new SDP offer the browser must answer.
    Offer { sdp: String },
    /// ICE + DTLS are up.
    Connected,
    /// The first media packet from another participant was forwarded to this
    /// participant (used for the join-to-media latency histogram).
    FirstMediaForwarded,
    /// The transport failed or timed out; the participant should rejoin.
    Failed { reason: String },
    /// The request was refused (unknown consult, consult full, bad SDP, ...).
    /// `code` is one of the edge's error codes (docs/PROTOCOL.md).
    Error { code: String, message: String },
    /// The consult's dominant speaker changed (from RFC 6464 audio levels);
    /// `None` when nobody has been speaking for a while. Sent to every
    /// participant of the consult.
    ActiveSpeaker { participant: Option<ParticipantId> },
    /// The participant's media session was lost with the node that held it
    /// and is being set up again on another one: the browser must drop its
    /// peer connection and answer the fresh offer that follows. Only a
    /// remote media plane reports this (`signaling::cluster`).
    Reset,
}

/// A [`MediaEvent`] with the participant it is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaEnvelope {
    pub consult: ConsultId,
    pub participant: ParticipantId,
    pub event: MediaEvent,
}

/// Where a media plane reports its events: one sink for the whole plane,
/// every event addressed by consult and participant. The receiver (the
/// edge, or a node's link to an edge) routes them on.
pub type EventSink = tokio::sync::mpsc::UnboundedSender<MediaEnvelope>;

pub mod metrics;

mod acceptor;
mod addresses;
mod bwe;
mod consult;
mod demux;
#[doc(hidden)]
pub mod endpoint;
/// Entry points for the fuzz targets in `fuzz/`; not an API.
#[doc(hidden)]
pub mod fuzzing;
mod handle;
mod inbound;
mod junk;
mod keyframe;
mod media_in;
mod media_out;
mod pacer;
mod peer;
mod rewrite;
mod rtcp_in;
mod rtcp_out;
mod rx;
mod simulcast;
mod speaker;
mod srtp;
mod tcp;
mod tx;
mod worker;

pub use handle::SfuHandle;

/// The log level to give the WebRTC stack (the `rtc` crates) when the
/// operational log is at `level`. rtc writes a warning for every packet
/// it cannot use (an SRTP packet that fails authentication, a replay): the
/// media plane drops what it can recognise as junk before rtc sees it, but
/// junk sent from (or spoofed as) a participant's own address still
/// reaches rtc. So rtc gets errors only, and its warnings at `trace`,
/// never one line per packet at `debug` or below.
pub fn webrtc_log_level(level: log::LevelFilter) -> log::LevelFilter {
    level.min(if level >= log::LevelFilter::Trace {
        log::LevelFilter::Warn
    } else {
        log::LevelFilter::Error
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The seam's wire form: what an edge sends a remote node and gets back.
    /// Field and tag names are part of the link protocol (docs/SCALING.md).
    #[test]
    fn commands_and_events_have_a_stable_json_form() {
        let commands = [
            (
                MediaCommand::Join {
                    consult: "c".into(),
                    participant: "p".into(),
                },
                json!({"cmd":"join","consult":"c","participant":"p"}),
            ),
            (
                MediaCommand::Preferences {
                    consult: "c".into(),
                    participant: "p".into(),
                    audio_only: false,
                    max_quality: vec![("q".into(), VideoQuality::Low)],
                },
                json!({"cmd":"preferences","consult":"c","participant":"p",
                       "audio_only":false,"max_quality":[["q","low"]]}),
            ),
            (
                MediaCommand::IceRestart {
                    consult: "c".into(),
                    participant: "p".into(),
                },
                json!({"cmd":"ice-restart","consult":"c","participant":"p"}),
            ),
            (
                MediaCommand::Screen {
                    consult: "c".into(),
                    participant: "p".into(),
                    on: true,
                },
                json!({"cmd":"screen","consult":"c","participant":"p","on":true}),
            ),
            (
                MediaCommand::Keyframe {
                    consult: "c".into(),
                    participant: "p".into(),
                    source: "q".into(),
                },
                json!({"cmd":"keyframe","consult":"c","participant":"p","source":"q"}),
            ),
        ];
        for (command, wire) in commands {
            assert_eq!(serde_json::to_value(&command).unwrap(), wire);
            assert_eq!(
                serde_json::from_value::<MediaCommand>(wire).unwrap(),
                command
            );
        }
        let envelope = MediaEnvelope {
            consult: "c".into(),
            participant: "p".into(),
            event: MediaEvent::Error {
                code: "media_error".into(),
                message: "m".into(),
            },
        };
        let wire = json!({"consult":"c","participant":"p",
                          "event":{"type":"error","code":"media_error","message":"m"}});
        assert_eq!(serde_json::to_value(&envelope).unwrap(), wire);
        assert_eq!(
            serde_json::from_value::<MediaEnvelope>(wire).unwrap(),
            envelope
        );
        for event in [
            MediaEvent::Reset,
            MediaEvent::Connected,
            MediaEvent::ActiveSpeaker { participant: None },
            MediaEvent::ActiveSpeaker {
                participant: Some("q".into()),
            },
            MediaEvent::Offer { sdp: "v=0".into() },
        ] {
            let e = MediaEnvelope {
                consult: "c".into(),
                participant: "p".into(),
                event,
            };
            let text = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<MediaEnvelope>(&text).unwrap(), e);
        }
    }

    #[test]
    fn unknown_or_incomplete_commands_are_refused() {
        for bad in [
            json!({"cmd":"join","consult":"c"}),
            json!({"cmd":"explode","consult":"c","participant":"p"}),
            json!({"consult":"c","participant":"p"}),
            json!({"cmd":"answer","consult":"c","participant":"p","sdp":7}),
        ] {
            assert!(
                serde_json::from_value::<MediaCommand>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }
}
