//! One participant's peer connection and its offer/answer state machine.
//!
//! The server always offers (docs/PROTOCOL.md "Offers"): two `recvonly`
//! transceivers for the participant's own microphone and camera, then one
//! `sendonly` transceiver per track of every other participant. At most one
//! offer is outstanding; a change that arrives meanwhile sets `renegotiate`
//! and a fresh offer follows the answer.
//!
//! A `Peer` never touches a socket: the worker feeds it datagrams and drains
//! what it wants to send, the same sans-I/O shape as `rtc` itself.

use crate::bwe::{Allocator, LOSS_HIGH, LOSS_LOW, LossCap, NO_ESTIMATE, ReportingGcc, Want};
use crate::consult::Kind;
use crate::inbound::{Media, OwnInbound};
use crate::keyframe::{EncoderGate, KeyframeLimiter, MarkKeyframeRequests, is_keyframe_request};
use crate::media_in::FEEDBACK_SSRC;
use crate::media_out::{Outbound, OwnMedia, TrackOut, twcc_ext_id};
use crate::pacer::{Pacer, RetransmitLimit, pace_rate, rtp_ssrc};
use crate::rewrite::{AUDIO_TS_STEP, StreamRewriter, VIDEO_TS_STEP, seq_newer};
use crate::rtcp_in::{Rtcp, Srtcp};
use crate::rtcp_out::{SrtcpOut, marshal_into};
use crate::simulcast::{self, LAYERS, Layer, LayerForwarder, Switched, TOP, Verdict};
use crate::srtp::{OWN_PROFILES, Srtp};
use crate::tx::BufferPool;
use crate::{ConsultId, EventSink, MediaEnvelope, MediaEvent, ParticipantId, VideoQuality};
use bytes::{Bytes, BytesMut};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::interceptor::{
    CongestionControlBuilder, NackGeneratorBuilder, NackResponderBuilder, Registry, Slot,
    TwccSenderBuilder,
};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_rtcp_reports, configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::RTCRtpTransceiverDirection;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind, TYPE_RTCP_FB_NACK,
    TYPE_RTCP_FB_TRANSPORT_CC,
};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext};
use std::net::IpAddr;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

/// How long a subscriber's audio counts as suffering after it last
/// reported heavy audio loss (video may pause only meanwhile).
const LOSSY_MEMORY: Duration = Duration::from_secs(30);

/// The worker's key for a peer (its slot index).
pub(crate) type PeerKey = usize;

/// No packet at all (media, RTCP or STUN consent checks, which browsers
/// send every few seconds) for this long means the transport is gone.
pub(crate) const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(30);

const OPUS_PT: u8 = 111;
const VP8_PT: u8 = 96;
const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
/// A layer that sent nothing for this long is not being sent (the
/// publisher's own bandwidth estimate switched it off).
const LAYER_IDLE: Duration = Duration::from_millis(1500);

/// Packets of each outgoing video stream kept for answering NACKs: about
/// a second of a 2.5 Mbit/s layer, two of the middle one. rtc's default
/// (1,024, ~9 s of a 1.2 Mbit/s stream) held ~1.2 MB of forwarded packets
/// per subscribed video for retransmissions no receiver still wants
/// (older losses get a keyframe request instead).
const NACK_HISTORY: u16 = 256;
/// The same for our own media path, which keeps the ciphertext as sent
/// (`media_out::Resend`): 128 packets, ~0.5 s of a 2.5 Mbit/s layer and
/// ~1 s of a 1.2 Mbit/s one, many round trips for a NACK to come back.
/// Half of rtc's figure above, to keep a participant's memory under
/// Janus's (each slot holds a whole packet, ~1.2 KB).
pub(crate) const RESEND_SLOTS: u16 = 128;
/// Decrypted packets waiting for `drain` (the worker drains after every
/// read, so one is the norm; bounded against a caller that does not).
const MEDIA_IN_MAX: usize = 64;

/// The codec we offer for `kind`.
fn codec_of(kind: Kind) -> RTCRtpCodecParameters {
    match kind {
        Kind::Audio => opus(),
        Kind::Video | Kind::Screen => vp8(),
    }
}

/// RTP clock of the codec we offer for `kind`.
fn clock_rate(kind: Kind) -> u32 {
    codec_of(kind).rtp_codec.clock_rate
}

/// Until rtc's ICE selects a pair: the browser's latest check (verified
/// with our password by the worker before it got here), whether it
/// answered a check of ours, and the nomination we handed rtc.
#[derive(Default)]
struct EarlyIce {
    check: Option<(TransportContext, Vec<u8>)>,
    answered: bool,
    /// The transaction id of our nominating copy: rtc's answer to it is
    /// not sent to the browser, which never asked.
    nominated: Option<[u8; 12]>,
}

/// DTLS datagrams kept while rtc's ICE has no selected pair yet: a
/// browser's first flight (ClientHello, perhaps fragmented) and a resend.
const EARLY_DTLS_MAX: usize = 8;
/// Held datagrams older than this are not handed on: the browser has
/// resent its flight by then.
const EARLY_DTLS_AGE: Duration = Duration::from_secs(3);

/// rtc's `register_default_interceptors` with a NACK history of
/// [`NACK_HISTORY`] packets: NACK generator and responder (and their
/// `nack`/`nack pli` feedback), the mid/rid extensions, transport-wide CC
/// feedback towards publishers and RTCP reports.
///
/// With our own media path (`own`) both media directions are ours
/// (`media_out.rs`, `inbound.rs`, `media_in.rs`): rtc runs none of these
/// interceptors, as it never sees what we send or decrypt on those SSRCs;
/// only the feedback and extensions are still negotiated.
fn default_interceptors(
    registry: Registry,
    media: &mut MediaEngine,
    own: bool,
) -> rtc::shared::error::Result<Registry> {
    for parameter in ["", "pli"] {
        media.register_feedback(
            RTCPFeedback {
                typ: TYPE_RTCP_FB_NACK.to_owned(),
                parameter: parameter.to_owned(),
            },
            RtpCodecKind::Video,
        );
    }
    configure_simulcast_extension_headers(media)?;
    if own {
        for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
            media.register_feedback(
                RTCPFeedback {
                    typ: TYPE_RTCP_FB_TRANSPORT_CC.to_owned(),
                    ..Default::default()
                },
                kind,
            );
            media.register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: crate::media_out::TWCC_URI.to_owned(),
                },
                kind,
                None,
            )?;
        }
        return Ok(registry);
    }
    let registry = registry.with(Slot::NackGenerator, NackGeneratorBuilder::new().build());
    let registry = configure_twcc_receiver_only(registry, media)?;
    let registry = registry.with(
        Slot::NackResponder,
        NackResponderBuilder::new().with_size(NACK_HISTORY).build(),
    );
    Ok(configure_rtcp_reports(registry))
}

/// Where the worker's sockets can be reached, for our ICE candidates.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidates {
    pub announce_ip: IpAddr,
    pub udp_port: u16,
    pub tcp_port: Option<u16>,
}

/// How a peer is set up (fixed for its life).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerOptions {
    /// Offer `a=simulcast:recv` for the camera.
    pub simulcast: bool,
    /// Forward on our own media path (`media_out.rs`).
    pub own_path: bool,
}

/// What draining a peer produced for the worker to act on.
#[derive(Debug)]
pub(crate) enum PeerOutput {
    /// Media from this participant, to fan out to the consult: its
    /// simulcast layer (video) and RFC 6464 level (audio, if negotiated).
    Rtp {
        kind: Kind,
        layer: Layer,
        level: Option<u8>,
        packet: Media,
    },
    /// A subscriber asked for a keyframe of `source`'s `kind` track, on
    /// the layer it gets.
    KeyframeRequest {
        source: PeerKey,
        kind: Kind,
        layer: Layer,
    },
    /// This participant's `kind` track started arriving.
    Published(Kind),
    /// A video layer of this participant's started (or came back after
    /// [`LAYER_IDLE`]): its subscribers choose again now, not at the next
    /// once-a-second allocation. A browser starts simulcast with the low
    /// layer and adds the others as its estimate grows; a new subscriber
    /// waiting for the top layer would get no picture meanwhile.
    LayerAppeared,
}

/// One simulcast layer (or the only stream) of an incoming track.
#[derive(Default)]
struct LayerIn {
    ssrc: Option<u32>,
    limiter: KeyframeLimiter,
    last_seen: Option<Instant>,
    /// Bytes since the last `tick`, and the rate they made.
    bytes: u64,
    rate: u64,
}

struct Incoming {
    receiver: RTCRtpReceiverId,
    track_id: String,
    /// The track's encoder: a first-picture request it would ignore waits.
    gate: EncoderGate,
    /// Indexed by layer; a stream without rid is filed as the top layer.
    layers: [LayerIn; LAYERS],
}

impl Incoming {
    fn layer_of(&self, ssrc: u32) -> Option<Layer> {
        (0..LAYERS)
            .find(|l| self.layers[*l].ssrc == Some(ssrc))
            .map(|l| l as Layer)
    }
}

/// What a subscriber needs to know about one of a publisher's video
/// tracks to choose a layer.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TrackView {
    pub active: u8,
    pub rates: [u64; LAYERS],
}

/// A publisher's camera and screen; the worker builds one per peer once a
/// second.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PublisherView {
    pub camera: TrackView,
    pub screen: TrackView,
}

impl PublisherView {
    fn of(&self, kind: Kind) -> TrackView {
        match kind {
            Kind::Screen => self.screen,
            _ => self.camera,
        }
    }
}

/// The round trip a report block states about our sender report: now
/// less the report's time less the receiver's delay (RFC 3550 §6.4.1,
/// middle 32 bits of NTP time). `None` when it reads over 10 s (a report
/// about a sender report from before a clock step, or garbage).
fn round_trip(last_sr: u32, delay: u32, now: SystemTime) -> Option<Duration> {
    let now = (crate::media_out::ntp(now) >> 16) as u32;
    let rtt = now.wrapping_sub(last_sr).wrapping_sub(delay);
    (rtt < 10 << 16).then(|| Duration::from_micros((u64::from(rtt) * 1_000_000) >> 16))
}

/// Transport-wide feedback on at least this many packets in a second
/// decides the subscriber's loss (else its receiver reports do).
const MIN_ACKED_FOR_LOSS: u64 = 20;

/// Quality counters a peer accumulated, taken by the worker.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct QualityEvents {
    pub switches_up: u64,
    pub switches_down: u64,
    pub resumed: u64,
    pub nacks: u64,
    pub retransmitted: u64,
    pub retransmits_suppressed: u64,
    /// Publisher video packets given up on (NACKs unanswered).
    pub unrepaired: u64,
    /// Inbound media our SRTP refused: replayed, failed authentication,
    /// malformed.
    pub srtp_refused: [u64; 3],
}

struct Outgoing {
    source: PeerKey,
    source_participant: ParticipantId,
    kind: Kind,
    sender: RTCRtpSenderId,
    track_id: String,
    rewriter: StreamRewriter,
    /// Video only: which layer, and the switch state machine. A new
    /// subscriber wants a keyframe from the start (else it waits for the
    /// next periodic one): the forwarder has no current layer yet.
    layers: LayerForwarder,
    /// Highest sequence number that left for the network: anything not
    /// newer is a retransmission (rtc emits new packets in order).
    wire_high: Option<u16>,
    /// In an offer we sent, and in the browser's answer to it: only then is
    /// anything forwarded (and a keyframe asked for). Packets for an
    /// m-section the browser has not applied yet are lost to it, and
    /// Firefox then never takes that SSRC (measured: a shared screen whose
    /// first packets overtook the offer never played).
    offered: bool,
    live: bool,
    /// One keyframe request on this subscriber's behalf may pass the
    /// publisher's rate limit: the one its browser asks for when its
    /// end-to-end key for the publisher arrives (`first_picture`).
    first_picture_pending: bool,
    /// Our own sending state of this SSRC (own media path only).
    out: TrackOut,
}

/// The peer connection with its next timer deadline cached.
///
/// `RTCPeerConnection::poll_timeout` walks every protocol handler and
/// interceptor (ICE, DTLS, SCTP, SRTP, NACK, reports, TWCC), and the worker
/// needs the earliest deadline of all its peers on every loop turn. Only a
/// `&mut` access can move a deadline, so every mutable access (through
/// `DerefMut`) marks the cache stale and the next `poll_timeout` asks rtc
/// again; a peer nobody touched since costs a field read.
///
/// `poll_write` is the same kind of sweep, and the worker used to make it
/// after every datagram. A read of RTP media queues nothing to write (no
/// handler or interceptor of ours answers media with a write: checked for
/// rtc 0.21.1's ICE, DTLS, SRTP, NACK generator, TWCC receiver and report
/// interceptors), so such reads go through [`TimedPc::reading`], and
/// [`TimedPc::writes`] says whether anything else touched the connection
/// since `poll_write` last came back empty.
///
/// `reads` is the same for `poll_read`: whether anything touched the
/// connection since `drain` last swept it. Media we decrypt ourselves
/// (`inbound.rs`) never does, so a peer whose streams are all ours is not
/// swept per packet at all.
struct TimedPc {
    pc: RTCPeerConnection,
    stale: bool,
    deadline: Option<Instant>,
    writes: bool,
    reads: bool,
}

impl TimedPc {
    fn new(pc: RTCPeerConnection) -> Self {
        TimedPc {
            pc,
            stale: true,
            deadline: None,
            writes: true,
            reads: true,
        }
    }

    /// For reads that cannot queue a write (RTP media in, events and
    /// messages out).
    fn reading(&mut self) -> &mut RTCPeerConnection {
        self.stale = true;
        self.reads = true;
        &mut self.pc
    }

    /// For `drain`'s sweep, which clears `reads` when it is done.
    fn sweeping(&mut self) -> &mut RTCPeerConnection {
        self.stale = true;
        &mut self.pc
    }

    fn poll_write(&mut self) -> Option<TaggedBytesMut> {
        self.stale = true;
        let msg = self.pc.poll_write();
        self.writes &= msg.is_some();
        msg
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        if self.stale {
            self.deadline = self.pc.poll_timeout();
            self.stale = false;
        }
        self.deadline
    }
}

impl Deref for TimedPc {
    type Target = RTCPeerConnection;
    fn deref(&self) -> &RTCPeerConnection {
        &self.pc
    }
}

impl DerefMut for TimedPc {
    fn deref_mut(&mut self) -> &mut RTCPeerConnection {
        self.stale = true;
        self.writes = true;
        self.reads = true;
        &mut self.pc
    }
}

pub(crate) struct Peer {
    pub participant: ParticipantId,
    /// The worker's key for the consult this peer belongs to.
    pub consult: usize,
    pc: TimedPc,
    /// Where this peer's events go, and the consult they are addressed by.
    events: EventSink,
    consult_id: ConsultId,
    /// Every local ufrag this peer has used (ICE restarts add one); the
    /// worker routes STUN by them and forgets them when the peer goes.
    pub ufrags: Vec<String>,
    /// The current ICE session's ufrag and its password as a keyed MAC:
    /// what a binding request must be signed with before the worker
    /// learns its sender's address (rtc applies new credentials when it
    /// sets its offer, so older ufrags no longer pass rtc's check either).
    ice: Option<(String, Box<dyn rtc::crypto::Mac>, String)>,
    offer_pending: bool,
    renegotiate: bool,
    incoming: [Option<Incoming>; 3],
    /// The receiver of the second video slot of our offer: the screen.
    screen_receiver: Option<RTCRtpReceiverId>,
    /// The edge says this participant shares their screen now (and may):
    /// only then is their screen track published and forwarded.
    screen_on: bool,
    /// Subscribers were told about the screen track (published once).
    screen_published: bool,
    outgoing: Vec<Outgoing>,
    tracks_created: u32,
    connected: bool,
    /// rtc's ICE agent has selected a candidate pair: until then it drops
    /// everything that is not STUN.
    ice_connected: bool,
    /// DTLS that arrived before that (see [`EARLY_DTLS_MAX`]).
    early_dtls: Vec<TaggedBytesMut>,
    /// Until ICE connects: what lets us nominate for the browser
    /// ([`Peer::nominate_early`]).
    early_ice: EarlyIce,
    failed: bool,
    first_forwarded: bool,
    last_rx: Instant,
    /// Offer `a=simulcast:recv` for this participant's camera.
    simulcast: bool,
    /// Negotiated id of the audio-level extension on what they send us.
    audio_level_ext: Option<u8>,
    /// Their camera arrives as rid-identified simulcast layers.
    rid_layers: bool,
    /// Subscriber preferences (`MediaCommand::Preferences`).
    audio_only: bool,
    max_quality: Vec<(ParticipantId, VideoQuality)>,
    /// Send-side bandwidth estimate (bit/s) towards this subscriber.
    estimate: Arc<AtomicU64>,
    /// Loss-based ceiling from the subscriber's receiver reports, the
    /// worst loss reported and the bytes we forwarded since the last tick.
    loss_cap: LossCap,
    /// When this subscriber last reported heavy loss on an audio stream.
    lossy_at: Option<Instant>,
    worst_loss: u8,
    worst_audio_loss: u8,
    sent_bytes: u64,
    sent_rate: u64,
    allocator: Allocator,
    /// Reused by `allocate` (no allocation once sized).
    wants: Vec<Want>,
    chosen: Vec<Option<Layer>>,
    /// Video tracks paused for bandwidth at the last allocation.
    pub paused: usize,
    quality: QualityEvents,
    /// Forward on our own media path (`media_out.rs`) rather than through
    /// rtc's RTP pipeline; set at join, for the peer's life.
    own_path: bool,
    /// That path's state, from DTLS completion on.
    own: Option<OwnMedia>,
    /// Its inbound half: the publisher's streams we decrypt ourselves.
    inbound: Option<OwnInbound>,
    /// Our own SRTCP (the peer's keys), from DTLS on: its RTCP never
    /// enters rtc (`read_rtcp`).
    srtcp: Option<Srtcp>,
    /// Keyframe requests read there, for the next `drain` (reused).
    rtcp_out: Vec<PeerOutput>,
    /// Our SRTCP for what we send (local keys), from DTLS on: feedback
    /// to the publisher and keyframe requests, all from `FEEDBACK_SSRC`
    /// (`send_rtcp`). Sender reports, from each outgoing track's SSRC,
    /// still go through rtc's SRTCP: the two never encrypt for the same
    /// SSRC (`add_track` never picks `FEEDBACK_SSRC`), so no (key, SSRC,
    /// index) is used twice, and rtc's writes keep `media_to` on its
    /// selected pair (an ICE restart moves it).
    srtcp_out: Option<SrtcpOut>,
    /// The compound packet being encrypted (reused).
    rtcp_buf: Vec<u8>,
    /// Media decrypted by `handle_read`, for the next `drain`.
    media_in: Vec<(Media, Option<u8>, Instant)>,
    /// RTCP for the publisher (`media_in.rs`), reused, and how many of
    /// each kind went since the last tick: TWCC feedback, NACK, reports.
    feedback_out: Vec<Box<dyn rtc::rtcp::Packet>>,
    /// Held NACKs a feedback reported lost, to resend (`resend_due`).
    due: Vec<(u32, u16)>,
    feedback_sent: [u64; 3],
    /// The estimator it will feed (moved into `own` when it starts).
    own_gcc: Option<ReportingGcc>,
    /// Where rtc last sent DTLS or SRTCP: the selected candidate pair
    /// (STUN answers go wherever a check came from, so they do not count).
    media_to: Option<TransportContext>,
    /// The transport-wide CC extension id of the last answer.
    twcc_ext: Option<u8>,
    /// Spreads video bursts at a multiple of the estimate (pacer.rs).
    pacer: Pacer<TaggedBytesMut>,
    retransmit: RetransmitLimit,
    /// Datagrams and bytes handed to the network this tick (all kinds,
    /// retransmissions included), and video RTP among them while pacing.
    wire: (u64, u64, u64),
}

fn codec(mime: &str, clock_rate: u32, channels: u16, fmtp: &str, pt: u8) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.into(),
            clock_rate,
            channels,
            sdp_fmtp_line: fmtp.into(),
            rtcp_feedback: vec![],
        },
        payload_type: pt,
    }
}

fn opus() -> RTCRtpCodecParameters {
    codec(
        MIME_TYPE_OPUS,
        48_000,
        2,
        "minptime=10;useinbandfec=1",
        OPUS_PT,
    )
}

fn vp8() -> RTCRtpCodecParameters {
    codec(MIME_TYPE_VP8, 90_000, 0, "", VP8_PT)
}

fn rtc_kind(kind: Kind) -> RtpCodecKind {
    match kind {
        Kind::Audio => RtpCodecKind::Audio,
        Kind::Video | Kind::Screen => RtpCodecKind::Video,
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Audio => "audio",
        Kind::Video => "video",
        Kind::Screen => "screen",
    }
}

fn host_candidate(
    network: &str,
    ip: IpAddr,
    port: u16,
    tcp_passive: bool,
) -> Result<RTCIceCandidateInit, String> {
    let mut config = CandidateHostConfig {
        base_config: CandidateConfig {
            network: network.into(),
            address: ip.to_string(),
            port,
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    if tcp_passive {
        config.tcp_type = rtc::ice::tcp_type::TcpType::Passive;
    }
    let candidate = config.new_candidate_host().map_err(|e| e.to_string())?;
    RTCIceCandidate::from(&candidate)
        .to_json()
        .map_err(|e| e.to_string())
}

fn ufrag_of(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .map(str::trim)
}

fn pwd_of(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=ice-pwd:"))
        .map(str::trim)
}

/// HMAC-SHA1 keyed with our ICE password, kept for the session so each
/// check costs no key schedule (and no allocation).
fn ice_mac(pwd: &str) -> Option<Box<dyn rtc::crypto::Mac>> {
    let provider = rtc::crypto::default_provider().ok()?;
    provider
        .crypto()
        .new_hmac(rtc::crypto::HmacAlgorithm::Sha1, pwd.as_bytes())
        .ok()
}

impl Peer {
    /// Create the peer connection and send the first offer, which already
    /// carries every track in `subscriptions`.
    pub(crate) fn join(
        participant: ParticipantId,
        (consult, consult_id): (usize, ConsultId),
        events: EventSink,
        candidates: Candidates,
        subscriptions: &[(PeerKey, ParticipantId, Kind)],
        PeerOptions {
            simulcast,
            own_path,
        }: PeerOptions,
        now: Instant,
    ) -> Result<Peer, String> {
        let mut media = MediaEngine::default();
        media
            .register_codec(opus(), RtpCodecKind::Audio)
            .map_err(|e| e.to_string())?;
        media
            .register_codec(vp8(), RtpCodecKind::Video)
            .map_err(|e| e.to_string())?;
        media
            .register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: AUDIO_LEVEL_URI.into(),
                },
                RtpCodecKind::Audio,
                None,
            )
            .map_err(|e| e.to_string())?;
        // Default interceptors: NACK responder (answers subscribers' NACKs
        // from a per-sender packet cache of what we actually sent, i.e. the
        // rewritten sequence numbers) and generator, RTCP reports, TWCC
        // feedback towards publishers (and the mid/rid/transport-cc
        // extensions). Plus the keyframe marker, and send-side congestion
        // control towards this subscriber: TWCC sequence numbers on what we
        // send and GCC on the feedback, but no pacer (see bwe.rs).
        // On our own media path the estimator is fed by `media_out.rs`
        // instead of rtc's congestion control interceptor.
        let (estimator, estimate) = ReportingGcc::new();
        let mut registry =
            Registry::new().with(Slot::from(14_000), MarkKeyframeRequests::default());
        let mut own_gcc = None;
        if own_path {
            own_gcc = Some(estimator);
        } else {
            registry = registry
                .with(
                    Slot::CongestionControl,
                    CongestionControlBuilder::new(estimator).build(),
                )
                .with(Slot::TwccSender, TwccSenderBuilder::new().build());
        }
        let registry =
            default_interceptors(registry, &mut media, own_path).map_err(|e| e.to_string())?;
        // As offerer we write `setup:actpass`; Chromium answers `active`, so
        // we are the DTLS server (the faster handshake the spike measured).
        // The answering role only matters if a client ever offers.
        let mut settings = SettingEngineBuilder::new()
            .with_lite(true)
            .with_answering_dtls_role(RTCDtlsRole::Server);
        if own_path {
            settings = settings.with_srtp_protection_profiles(OWN_PROFILES.to_vec());
        } else {
            // rtc 0.21.1's SRTCP returns an AES-CM packet whose E flag is 0
            // without checking its tag (rtcp_in.rs): anyone who can send
            // to a participant's address could inject RTCP. On rtc's path
            // only AES-GCM, which every current browser takes.
            settings = settings.with_srtp_protection_profiles(vec![
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm,
            ]);
        }
        let settings = settings.build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_setting_engine(settings)
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .build(now)
            .map_err(|e| e.to_string())?;
        // Microphone, camera, screen: three receive slots, in this order
        // (docs/PROTOCOL.md, "Offers"). The screen slot stays silent until
        // the browser puts a shared screen on it (`replaceTrack`, no
        // renegotiation); only the camera's slot asks for simulcast.
        let mut screen_receiver = None;
        for kind in [
            RtpCodecKind::Audio,
            RtpCodecKind::Video,
            RtpCodecKind::Video,
        ] {
            let init = RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                ..Default::default()
            };
            let id = pc
                .add_transceiver_from_kind(kind, Some(init))
                .map_err(|e| e.to_string())?;
            screen_receiver = Some(RTCRtpReceiverId::from(id));
        }
        pc.add_local_candidate(host_candidate(
            "udp",
            candidates.announce_ip,
            candidates.udp_port,
            false,
        )?)
        .map_err(|e| e.to_string())?;
        if let Some(port) = candidates.tcp_port {
            pc.add_local_candidate(host_candidate("tcp", candidates.announce_ip, port, true)?)
                .map_err(|e| e.to_string())?;
        }
        let mut peer = Peer {
            participant,
            consult,
            pc: TimedPc::new(pc),
            events,
            consult_id,
            ufrags: Vec::new(),
            ice: None,
            offer_pending: false,
            renegotiate: false,
            incoming: [None, None, None],
            screen_receiver,
            screen_on: false,
            screen_published: false,
            outgoing: Vec::new(),
            tracks_created: 0,
            connected: false,
            ice_connected: false,
            early_dtls: Vec::new(),
            early_ice: EarlyIce::default(),
            failed: false,
            first_forwarded: false,
            last_rx: now,
            simulcast,
            audio_level_ext: None,
            rid_layers: false,
            audio_only: false,
            max_quality: Vec::new(),
            estimate,
            loss_cap: LossCap::default(),
            lossy_at: None,
            worst_loss: 0,
            worst_audio_loss: 0,
            sent_bytes: 0,
            sent_rate: 0,
            allocator: Allocator::default(),
            own_path,
            own: None,
            inbound: None,
            srtcp: None,
            rtcp_out: Vec::new(),
            srtcp_out: None,
            rtcp_buf: Vec::new(),
            media_in: Vec::new(),
            feedback_out: Vec::new(),
            due: Vec::new(),
            feedback_sent: [0; 3],
            own_gcc,
            media_to: None,
            twcc_ext: None,
            pacer: Pacer::default(),
            retransmit: RetransmitLimit::default(),
            wire: (0, 0, 0),
            wants: Vec::new(),
            chosen: Vec::new(),
            paused: 0,
            quality: QualityEvents::default(),
        };
        for (source, source_participant, kind) in subscriptions {
            peer.add_track(*source, source_participant, *kind)?;
        }
        peer.negotiate();
        Ok(peer)
    }

    /// An event for this participant from outside (the consult's speaker).
    pub(crate) fn notify(&self, event: MediaEvent) {
        self.emit(event);
    }

    fn emit(&self, event: MediaEvent) {
        // The edge dropped its receiver: the plane is stopping anyway.
        let _ = self.events.send(MediaEnvelope {
            consult: self.consult_id.clone(),
            participant: self.participant.clone(),
            event,
        });
    }

    fn add_track(
        &mut self,
        source: PeerKey,
        source_participant: &str,
        kind: Kind,
    ) -> Result<(), String> {
        self.tracks_created += 1;
        // Never the SSRC our own SRTCP sends from (`srtcp_out`), nor 0.
        let ssrc = loop {
            let ssrc = rand::random::<u32>();
            if ssrc != 0 && ssrc != FEEDBACK_SSRC {
                break ssrc;
            }
        };
        let codec = codec_of(kind);
        // Stream id = the publishing participant's id: the browser's
        // `ontrack` event.streams[0].id names the sender.
        let track_id = format!(
            "{source_participant}-{}-{}",
            kind_name(kind),
            self.tracks_created
        );
        let encoding = RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: codec.rtp_codec.clone(),
            ..Default::default()
        };
        let track = MediaStreamTrack::new(
            source_participant.to_string(),
            track_id.clone(),
            track_id.clone(),
            rtc_kind(kind),
            vec![encoding],
        );
        let init = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            streams: vec![source_participant.to_string()],
            send_encodings: vec![],
        };
        let transceiver = self
            .pc
            .add_transceiver_from_track(track, Some(init))
            .map_err(|e| e.to_string())?;
        let sender = self
            .pc
            .rtp_transceiver(transceiver)
            .and_then(|t| t.sender())
            .ok_or_else(|| "new transceiver has no sender".to_string())?;
        let step = if kind == Kind::Audio {
            AUDIO_TS_STEP
        } else {
            VIDEO_TS_STEP
        };
        let desired = self.desired_layer(kind, source_participant);
        self.outgoing.push(Outgoing {
            source,
            source_participant: source_participant.to_string(),
            kind,
            sender,
            track_id,
            rewriter: StreamRewriter::new(ssrc, codec.payload_type, step),
            layers: LayerForwarder::new(desired),
            wire_high: None,
            offered: false,
            live: false,
            first_picture_pending: true,
            out: TrackOut::new(
                codec.rtp_codec.clock_rate,
                kind.is_video().then_some(RESEND_SLOTS),
            ),
        });
        Ok(())
    }

    /// Start sending `source`'s `kind` track to this participant.
    pub(crate) fn subscribe(&mut self, source: PeerKey, source_participant: &str, kind: Kind) {
        if self
            .outgoing
            .iter()
            .any(|o| o.source == source && o.kind == kind)
        {
            return;
        }
        match self.add_track(source, source_participant, kind) {
            Ok(()) => self.negotiate(),
            Err(e) => log::warn!("add track to peer failed: {e}"),
        }
    }

    /// Stop sending everything from `source` (it left).
    pub(crate) fn unsubscribe(&mut self, source: PeerKey) {
        let before = self.outgoing.len();
        let mut i = 0;
        while i < self.outgoing.len() {
            if self.outgoing[i].source == source {
                let gone = self.outgoing.swap_remove(i);
                if let Err(e) = self.pc.remove_track(gone.sender) {
                    log::warn!("remove track failed: {e}");
                }
            } else {
                i += 1;
            }
        }
        if self.outgoing.len() != before {
            self.negotiate();
        }
    }

    /// Send a new offer, or remember to once the pending one is answered.
    fn negotiate(&mut self) {
        if self.offer_pending {
            self.renegotiate = true;
            return;
        }
        self.renegotiate = false;
        let offer = self.pc.create_offer(None).and_then(|offer| {
            let sdp = offer.sdp.clone();
            self.pc
                .set_local_description(Instant::now(), offer)
                .map(|()| sdp)
        });
        // rtc cannot put rids on a receive-only transceiver, and insists the
        // local description is its own offer verbatim; so only the copy the
        // browser gets asks for simulcast. rtc learns the rids from the
        // answer (`a=rid:<id> send`) and routes each layer by its
        // mid/rid header extensions.
        let offer = offer.map(|sdp| {
            if self.simulcast {
                simulcast::offer_simulcast_recv(&sdp)
            } else {
                sdp
            }
        });
        match offer {
            Ok(sdp) => {
                if let Some(ufrag) = ufrag_of(&sdp)
                    && !self.ufrags.iter().any(|u| u == ufrag)
                {
                    self.ufrags.push(ufrag.to_string());
                }
                if let (Some(ufrag), Some(pwd)) = (ufrag_of(&sdp), pwd_of(&sdp))
                    && self.ice.as_ref().is_none_or(|(u, ..)| u != ufrag)
                {
                    self.ice = ice_mac(pwd).map(|mac| (ufrag.to_string(), mac, pwd.to_string()));
                }
                self.offer_pending = true;
                for o in &mut self.outgoing {
                    o.offered = true;
                }
                self.emit(MediaEvent::Offer { sdp });
            }
            Err(e) => {
                log::warn!("create offer failed: {e}");
                self.emit(MediaEvent::Error {
                    code: "media_error".into(),
                    message: "could not create an offer".into(),
                });
            }
        }
    }

    /// The browser's answer to our pending offer.
    pub(crate) fn answer(&mut self, sdp: String, now: Instant) {
        if !self.offer_pending {
            self.emit(MediaEvent::Error {
                code: "media_error".into(),
                message: "no offer is waiting for an answer".into(),
            });
            return;
        }
        let level_ext = audio_level_ext_id(&sdp);
        let twcc_ext = twcc_ext_id(&sdp);
        let sdp = simulcast::drop_echoed_simulcast(&sdp).unwrap_or(sdp);
        let sdp = if self.rid_layers {
            simulcast::keep_rid_bindings(&sdp).unwrap_or(sdp)
        } else {
            sdp
        };
        let applied =
            RTCSessionDescription::answer(sdp).and_then(|a| self.pc.set_remote_description(now, a));
        if let Err(e) = applied {
            // The offer stays pending: the browser may still send a usable
            // answer, or ask for an ICE restart.
            self.emit(MediaEvent::Error {
                code: "media_error".into(),
                message: format!("unusable SDP answer: {e}"),
            });
            return;
        }
        self.offer_pending = false;
        for o in &mut self.outgoing {
            o.live |= o.offered;
        }
        log::debug!("participant {}: answer applied", self.participant);
        if self.audio_level_ext != level_ext {
            log::debug!("audio level extension id {level_ext:?}");
        }
        self.audio_level_ext = level_ext;
        self.twcc_ext = twcc_ext;
        if let Some(own) = self.own.as_mut() {
            own.set_twcc_ext(twcc_ext);
        }
        if let Some(inbound) = self.inbound.as_mut() {
            inbound.set_twcc_ext(twcc_ext);
        }
        // Payload types are fixed by our offer, but read back what was
        // negotiated rather than assume the browser echoed them.
        for o in &mut self.outgoing {
            if let Some(pt) = self.pc.rtp_sender(o.sender).and_then(|mut s| {
                s.get_parameters()
                    .rtp_parameters
                    .codecs
                    .first()
                    .map(|c| c.payload_type)
            }) {
                o.rewriter.set_payload_type(pt);
            }
        }
        if self.renegotiate {
            self.negotiate();
        }
    }

    pub(crate) fn restart_ice(&mut self) {
        self.pc.restart_ice();
        self.negotiate();
    }

    /// A trickled browser candidate. ICE-lite learns addresses from STUN, so
    /// a bad one is ignored rather than reported.
    pub(crate) fn remote_candidate(&mut self, candidate: String) {
        let init = RTCIceCandidateInit {
            candidate,
            ..Default::default()
        };
        if let Err(e) = self.pc.add_remote_candidate(init) {
            log::debug!("ignored remote candidate: {e}");
        }
    }

    /// Is `packet` a binding request for our current ICE session (its
    /// USERNAME names `ufrag`), signed with our password?
    pub(crate) fn check_stun(&mut self, ufrag: &str, packet: &[u8]) -> bool {
        match self.ice.as_mut() {
            Some((current, mac, _)) if current == ufrag => {
                crate::demux::integrity_ok(packet, mac.as_mut())
            }
            _ => false,
        }
    }

    /// Feed one datagram (or TCP frame) from the network.
    pub(crate) fn handle_read(&mut self, msg: TaggedBytesMut) {
        self.last_rx = msg.now;
        let now = msg.now;
        if !self.ice_connected && matches!(msg.message.first(), Some(20..=63)) {
            // Chromium starts DTLS as soon as one of its checks is
            // answered; our ICE-lite agent selects a pair only when its
            // nominating check arrives. rtc drops anything but STUN until
            // then, so the ClientHello of every Chromium join was lost and
            // the handshake waited for its resend (usually ~50-100 ms,
            // 1.1-2.5 s in some first-picture runs). Held here instead,
            // and handed to rtc the moment its ICE connects (`drain`).
            if self.early_dtls.len() < EARLY_DTLS_MAX {
                self.early_dtls.push(msg);
            }
            self.nominate_early(now);
            return;
        }
        let stun_before_ice = !self.ice_connected && crate::demux::is_stun(&msg.message);
        if stun_before_ice {
            if crate::demux::is_binding_request(&msg.message) {
                self.early_ice.check = Some((msg.transport, msg.message.to_vec()));
            } else if msg.message[..2] == [0x01, 0x01] {
                // A binding success response: the browser answered one of
                // our checks (rtc verifies it below).
                self.early_ice.answered = true;
            }
        }
        let media = matches!(msg.message[..], [128..=191, pt, ..] if !(192..=223).contains(&pt));
        if media
            && let Some(inbound) = self.inbound.as_mut()
            && rtp_ssrc(&msg.message).is_some_and(|ssrc| inbound.knows(ssrc))
        {
            // Ours: decrypted here, forwarded at the next `drain` (which
            // follows every read). Refusals are counted.
            if self.media_in.len() < MEDIA_IN_MAX
                && let Ok((media, level)) = inbound.read(msg.message, self.audio_level_ext, msg.now)
            {
                self.media_in.push((media, level, msg.now));
            }
            return;
        }
        if !media && self.srtcp.is_some() && matches!(msg.message[..], [128..=191, 192..=223, ..]) {
            self.read_rtcp(msg);
            return;
        }
        let pc = if media {
            self.pc.reading()
        } else {
            &mut *self.pc
        };
        if let Err(e) = pc.handle_read(msg) {
            log::debug!("peer handle_read: {e}");
        }
        if stun_before_ice {
            self.nominate_early(now);
        }
    }

    /// The peer's SRTCP, checked and decrypted in place by us
    /// (`rtcp_in.rs`) and read without rtc: what it says about the media
    /// we send it (transport-wide feedback, NACKs, reports, keyframe
    /// requests) and about what it sends us (sender reports). Refusals
    /// are counted with the media's (`take_quality`).
    fn read_rtcp(&mut self, mut msg: TaggedBytesMut) {
        let Some(mut srtcp) = self.srtcp.take() else {
            return;
        };
        let now = msg.now;
        let _ = srtcp.read(&mut msg.message, |item| self.on_rtcp(item, now));
        self.srtcp = Some(srtcp);
    }

    fn on_rtcp(&mut self, item: Rtcp<'_>, now: Instant) {
        let ours = |ssrc: u32| move |o: &&Outgoing| o.rewriter.ssrc() == ssrc;
        match item {
            Rtcp::SenderReport { ssrc, ntp_time } => {
                if let Some(inbound) = self.inbound.as_mut() {
                    inbound.feedback.on_sender_report(ssrc, ntp_time, now);
                }
            }
            Rtcp::ReceptionReport {
                ssrc,
                fraction_lost,
                last_sr,
                delay,
            } => {
                // Only about streams we send to this subscriber.
                if let Some(o) = self.outgoing.iter().find(ours(ssrc)) {
                    self.worst_loss = self.worst_loss.max(fraction_lost);
                    if o.kind == Kind::Audio {
                        self.worst_audio_loss = self.worst_audio_loss.max(fraction_lost);
                    }
                    // About our sender report (sent on this path only).
                    if last_sr != 0
                        && let Some(rtt) = round_trip(last_sr, delay, SystemTime::now())
                    {
                        self.retransmit.set_rtt(rtt);
                    }
                }
            }
            Rtcp::Twcc(fb) => {
                if let Some(own) = self.own.as_mut() {
                    own.feedback_acks(&fb, now);
                    self.resend_due(now);
                }
            }
            Rtcp::Nack(nack) => {
                if let (Some(own), Some(o)) = (
                    self.own.as_mut(),
                    self.outgoing.iter().find(ours(nack.media_ssrc)),
                ) {
                    self.quality.nacks += 1;
                    let track = (&o.out, nack.media_ssrc);
                    own.answer_nack(track, nack.seqs(), self.media_to, &mut self.retransmit, now);
                }
            }
            Rtcp::Pli { media_ssrc: ssrc } | Rtcp::Fir { ssrc } => {
                if let Some(o) = self.outgoing.iter().find(ours(ssrc)) {
                    // The decoder that lost a picture decodes the layer it
                    // gets now (or is about to get).
                    let layer = o.layers.current().or(o.layers.target()).unwrap_or(TOP);
                    self.rtcp_out.push(PeerOutput::KeyframeRequest {
                        source: o.source,
                        kind: o.kind,
                        layer,
                    });
                }
            }
        }
    }

    /// Nominate the browser's pair for it, once DTLS from that pair shows
    /// the browser chose it and both sides' checks on it succeeded: rtc
    /// gets a copy of the browser's check with USE-CANDIDATE, signed with
    /// our password (`demux::nominating_copy`), and selects the pair as
    /// it will when the browser's own nomination arrives, ~50-60 ms
    /// later with Chromium (loadtest/first-picture.sh). Once per ICE
    /// session; a pair rtc has not validated is not selected by it (rtc
    /// checks it again instead), so nothing is chosen that the browser's
    /// own nomination would not choose.
    fn nominate_early(&mut self, now: Instant) {
        let early = &mut self.early_ice;
        if self.ice_connected || early.nominated.is_some() || !early.answered {
            return;
        }
        let (Some((transport, check)), Some((_, _, pwd))) = (&early.check, &self.ice) else {
            return;
        };
        if !self
            .early_dtls
            .iter()
            .any(|d| d.transport.peer_addr == transport.peer_addr)
        {
            return;
        }
        let Some((nomination, tid)) = crate::demux::nominating_copy(check, pwd) else {
            return;
        };
        early.nominated = Some(tid);
        log::debug!("participant {}: nominated early", self.participant);
        let msg = TaggedBytesMut {
            now,
            transport: *transport,
            message: BytesMut::from(&nomination[..]),
        };
        if let Err(e) = self.pc.handle_read(msg) {
            log::debug!("peer handle_read (early nomination): {e}");
        }
    }

    /// Something may wait in rtc's write queue (see [`TimedPc`]).
    pub(crate) fn writes_pending(&self) -> bool {
        self.pc.writes
    }

    pub(crate) fn poll_timeout(&mut self) -> Option<Instant> {
        let ours = self
            .inbound
            .as_ref()
            .and_then(|i| i.feedback.poll_timeout());
        let held = self
            .incoming
            .iter()
            .flatten()
            .filter_map(|i| i.gate.deadline())
            .min();
        [self.pc.poll_timeout(), ours, held]
            .into_iter()
            .flatten()
            .min()
    }

    /// A first-picture keyframe request held for the encoder's interval
    /// (see [`EncoderGate`]) that is due now: the worker sends it.
    pub(crate) fn take_held_keyframe(&mut self, now: Instant) -> Option<(Kind, Layer)> {
        self.incoming.iter_mut().enumerate().find_map(|(k, i)| {
            let layer = i.as_mut()?.gate.take_due(now)?;
            Some((*Kind::ALL.get(k)?, layer))
        })
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.pc.poll_timeout().is_some_and(|t| t <= now)
            && let Err(e) = self.pc.handle_timeout(now)
        {
            log::debug!("peer handle_timeout: {e}");
        }
        let Some(inbound) = self.inbound.as_mut() else {
            return;
        };
        if inbound.feedback.poll_timeout().is_none_or(|t| t > now) {
            return;
        }
        inbound.feedback.handle_timeout(now, &mut self.feedback_out);
        self.key_unrepaired(now);
        if self.feedback_out.is_empty() {
            return;
        }
        for p in &self.feedback_out {
            let any = p.as_any();
            let i = if any.is::<TransportLayerCc>() {
                0
            } else if any.is::<TransportLayerNack>() {
                1
            } else {
                2
            };
            self.feedback_sent[i] += 1;
        }
        let mut packets = std::mem::take(&mut self.feedback_out);
        if let Err(e) = self.send_rtcp(&packets, now) {
            log::debug!("feedback to publisher failed: {e}");
        }
        packets.clear();
        self.feedback_out = packets;
    }

    /// Video packets this publisher never resent though we asked: every
    /// subscriber of that layer waits for a keyframe now, so ask for one
    /// (rate-limited per layer) rather than let each decoder find out.
    fn key_unrepaired(&mut self, now: Instant) {
        while let Some((ssrc, n)) = self
            .inbound
            .as_mut()
            .and_then(|i| i.feedback.take_unrepaired())
        {
            let found = Kind::ALL.into_iter().find_map(|kind| {
                Some((kind, self.incoming[kind as usize].as_ref()?.layer_of(ssrc)?))
            });
            let Some((kind, layer)) = found else { continue };
            self.quality.unrepaired += u64::from(n);
            log::debug!(
                "participant {}: {n} packet(s) of {kind:?} layer {layer} lost for good (NACKs unanswered)",
                self.participant
            );
            self.request_keyframe(kind, layer, false, now);
        }
    }

    /// RTCP from `FEEDBACK_SSRC` to this peer through our own SRTCP,
    /// queued like forwarded media: no sweep of rtc's write pipeline
    /// (~7,800 instructions per RTCP packet, docs/BENCHMARKS.md).
    fn send_rtcp(
        &mut self,
        packets: &[Box<dyn rtc::rtcp::Packet>],
        now: Instant,
    ) -> Result<(), String> {
        let (Some(out), Some(own), Some(path)) =
            (self.srtcp_out.as_mut(), self.own.as_mut(), self.media_to)
        else {
            return Err("no SRTCP of our own yet".into());
        };
        marshal_into(packets, &mut self.rtcp_buf).map_err(|e| e.to_string())?;
        out.protect(&mut self.rtcp_buf)
            .map_err(|e| format!("{e:?}"))?;
        own.queue_rtcp(&self.rtcp_buf, path, now);
        Ok(())
    }

    pub(crate) fn poll_write(&mut self) -> Option<TaggedBytesMut> {
        let mut msg = self.pc.poll_write()?;
        if let Some(tid) = self.early_ice.nominated
            && crate::demux::transaction_id(&msg.message) == Some(tid)
        {
            // rtc's answer to our own nominating copy: nobody asked.
            self.early_ice.nominated = Some([0; 12]);
            msg = self.pc.poll_write()?;
        }
        // DTLS (20..=63) and SRTCP (128..=191) go on the selected pair.
        if matches!(msg.message.first(), Some(20..=63 | 128..=191)) {
            self.media_to = Some(msg.transport);
        }
        Some(msg)
    }

    /// Resend what a feedback just reported lost among the packets whose
    /// NACKs were held for it (`OwnMedia::answer_held`).
    fn resend_due(&mut self, now: Instant) {
        let Some(own) = self.own.as_mut() else {
            return;
        };
        own.take_due(&mut self.due);
        for &(ssrc, seq) in &self.due {
            if let Some(o) = self.outgoing.iter().find(|o| o.rewriter.ssrc() == ssrc) {
                let track = (&o.out, ssrc);
                own.answer_nack(
                    track,
                    [seq].into_iter(),
                    self.media_to,
                    &mut self.retransmit,
                    now,
                );
            }
        }
    }

    /// Forwarded media goes through our own path (`poll_own`).
    pub(crate) fn owns_media(&self) -> bool {
        self.own.is_some()
    }

    /// The next packet of our own media path (forwarded or resent media):
    /// taken without a sweep of rtc's pipeline.
    pub(crate) fn poll_own(&mut self) -> Option<(TaggedBytesMut, bool)> {
        self.own.as_mut()?.poll_marked()
    }

    /// Start our own media path once DTLS is done: SRTP from the exported
    /// keys. `false` (and the peer failed) if that is impossible, which
    /// the offered profiles rule out; never falls back to rtc's pipeline,
    /// whose interceptors for these SSRCs are not there.
    fn start_own_media(&mut self) -> bool {
        let keys = self.pc.srtp_session_keys().cloned();
        let srtp = match (keys, rtc::crypto::default_provider()) {
            (Some(k), Ok(provider)) => {
                let new = |key: &[u8], salt: &[u8]| {
                    Srtp::new(k.profile, key, salt, provider.crypto())
                        .map_err(|e| format!("{e:?} ({:?})", k.profile))
                };
                let rtcp = Srtcp::new(
                    k.profile,
                    &k.remote_master_key,
                    &k.remote_master_salt,
                    provider.crypto(),
                )
                .map_err(|e| format!("{e:?} ({:?})", k.profile));
                let rtcp_out = SrtcpOut::new(
                    k.profile,
                    &k.local_master_key,
                    &k.local_master_salt,
                    provider.crypto(),
                )
                .map_err(|e| format!("{e:?} ({:?})", k.profile));
                new(&k.local_master_key, &k.local_master_salt).and_then(|out| {
                    Ok((
                        out,
                        new(&k.remote_master_key, &k.remote_master_salt)?,
                        (rtcp?, rtcp_out?),
                    ))
                })
            }
            (None, _) => Err("no keys".to_string()),
            (_, Err(e)) => Err(e.to_string()),
        };
        match (srtp, self.own_gcc.take()) {
            (Ok((out, inb, (rtcp, rtcp_out))), Some(gcc)) => {
                self.srtcp = Some(rtcp);
                self.srtcp_out = Some(rtcp_out);
                let mut own = OwnMedia::new(out, gcc);
                own.set_twcc_ext(self.twcc_ext);
                self.own = Some(own);
                let mut inbound = OwnInbound::new(inb, self.twcc_ext);
                // Streams rtc identified before the handshake's event
                // reached us are ours from their next packet.
                for kind in Kind::ALL {
                    for l in self.incoming[kind as usize].iter().flat_map(|i| &i.layers) {
                        if let Some(ssrc) = l.ssrc {
                            inbound.add(ssrc, clock_rate(kind), kind.is_video());
                        }
                    }
                }
                self.inbound = Some(inbound);
                true
            }
            (Err(e), _) => {
                log::warn!(
                    "participant {}: own SRTP not started: {e}",
                    self.participant
                );
                self.fail("SRTP keys unusable");
                false
            }
            (Ok(_), None) => {
                self.fail("SRTP started twice");
                false
            }
        }
    }

    /// What rtc or our own path wrote, through the pacer: `Some` to send
    /// now. Video RTP may wait (see `release_paced`); everything else goes
    /// at once. `resend`: whether it is a retransmission (our own path
    /// knows; for rtc's, an old sequence number says so). Only
    /// retransmissions count against the retransmission budget: a late
    /// packet forwarded for the first time (a publisher's repair of its
    /// uplink loss) suppressed by it was never sent at all — the
    /// subscriber NACKed it, its resends ate the budget, and the next late
    /// packets were suppressed in turn (degraded browser test: ~1,400
    /// resends a second refused to a subscriber on a clean link).
    pub(crate) fn pace(
        &mut self,
        msg: TaggedBytesMut,
        resend: Option<bool>,
    ) -> Option<TaggedBytesMut> {
        let len = msg.message.len();
        self.wire.0 += 1;
        self.wire.1 += len as u64;
        if !self.pacer.is_pacing() {
            return Some(msg);
        }
        let now = Instant::now();
        let video = rtp_ssrc(&msg.message).and_then(|ssrc| {
            self.outgoing
                .iter_mut()
                .find(|o| o.kind.is_video() && o.rewriter.ssrc() == ssrc)
        });
        let Some(o) = video else {
            self.pacer.spend(len, now);
            return Some(msg);
        };
        self.wire.2 += 1;
        let seq = u16::from_be_bytes([msg.message[2], msg.message[3]]);
        let newest = o.wire_high.is_none_or(|high| seq_newer(seq, high));
        let what = (o.rewriter.ssrc(), seq, len);
        if !self.retransmit.admit((resend, newest), what, now) {
            return None;
        }
        if newest {
            o.wire_high = Some(seq);
        }
        self.pacer.admit(msg, len, now)
    }

    /// The next paced packet that may go now.
    pub(crate) fn release_paced(&mut self, now: Instant) -> Option<TaggedBytesMut> {
        self.pacer.release(now)
    }

    /// When the pacer next has something to send.
    pub(crate) fn pacer_deadline(&self) -> Option<Instant> {
        self.pacer.next_release()
    }

    /// Video the pacer dropped (queue full) since the last call.
    pub(crate) fn take_pacer_drops(&mut self) -> u64 {
        std::mem::take(&mut self.pacer.dropped)
    }

    /// Drain state changes and inbound media/RTCP into `out`. Returns
    /// whether any state change was seen (the caller drives again then).
    pub(crate) fn drain(&mut self, out: &mut Vec<PeerOutput>) -> bool {
        let mut taken = std::mem::take(&mut self.media_in);
        for (media, level, now) in taken.drain(..) {
            self.file_media(media, level, now, out);
        }
        self.media_in = taken;
        out.append(&mut self.rtcp_out);
        if !self.pc.reads {
            // Only our own media since the last sweep: rtc has nothing.
            return false;
        }
        // Cleared before the sweep: anything that touches the connection
        // during it sets it again.
        self.pc.reads = false;
        let mut changed = false;
        while let Some(event) = self.pc.sweeping().poll_event() {
            changed = true;
            match event {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => match state {
                    RTCPeerConnectionState::Connected if !self.connected => {
                        if self.own_path && !self.start_own_media() {
                            continue;
                        }
                        self.connected = true;
                        log::debug!("participant {}: ICE and DTLS connected", self.participant);
                        self.emit(MediaEvent::Connected);
                    }
                    RTCPeerConnectionState::Failed => self.fail("ICE or DTLS failed"),
                    _ => {}
                },
                RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(
                    RTCIceConnectionState::Connected | RTCIceConnectionState::Completed,
                ) if !self.ice_connected => {
                    self.ice_connected = true;
                    let held = std::mem::take(&mut self.early_dtls);
                    if !held.is_empty() {
                        log::debug!(
                            "participant {}: {} DTLS datagrams held until ICE connected",
                            self.participant,
                            held.len()
                        );
                    }
                    for msg in held {
                        if msg.now.elapsed() < EARLY_DTLS_AGE
                            && let Err(e) = self.pc.handle_read(msg)
                        {
                            log::debug!("peer handle_read: {e}");
                        }
                    }
                }
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                    let screen = self.screen_receiver == Some(init.receiver_id);
                    let Some(kind) =
                        self.pc
                            .rtp_receiver(init.receiver_id)
                            .map(|r| match r.track().kind() {
                                RtpCodecKind::Audio => Kind::Audio,
                                _ if screen => Kind::Screen,
                                _ => Kind::Video,
                            })
                    else {
                        continue;
                    };
                    // A stream without rid is the only one: file it as the
                    // top layer. An rid we did not offer is ignored.
                    let layer = match init.rid.as_deref() {
                        // The screen slot offers no layers.
                        Some(rid) if !rid.is_empty() && kind == Kind::Screen => None,
                        Some(rid) if !rid.is_empty() => {
                            self.rid_layers |= kind == Kind::Video;
                            simulcast::layer_of_rid(rid)
                        }
                        _ => Some(TOP),
                    };
                    let Some(layer) = layer else { continue };
                    let first = self.incoming[kind as usize].is_none();
                    // Renegotiation re-opens every stream: keep the layers'
                    // history, take the (possibly new) ids.
                    let incoming = self.incoming[kind as usize].get_or_insert_with(|| Incoming {
                        receiver: init.receiver_id,
                        track_id: init.track_id.clone(),
                        gate: EncoderGate::default(),
                        layers: Default::default(),
                    });
                    incoming.receiver = init.receiver_id;
                    incoming.track_id = init.track_id;
                    incoming.layers[layer as usize].ssrc = Some(init.ssrc);
                    if let Some(inbound) = self.inbound.as_mut() {
                        // From its next packet on, decrypted by us.
                        inbound.add(init.ssrc, clock_rate(kind), kind.is_video());
                    }
                    if first && kind == Kind::Screen {
                        // Subscribers learn of it once the edge lets it on.
                        if self.screen_on {
                            self.screen_published = true;
                            out.push(PeerOutput::Published(kind));
                        }
                    } else if first {
                        out.push(PeerOutput::Published(kind));
                    }
                }
                _ => {}
            }
        }
        // One sweep of rtc's pipeline (`poll_read`) moves everything read
        // so far to its media queue; the rest is taken from that queue
        // without sweeping again per message (no data channels here).
        let mut next = self.pc.sweeping().poll_read();
        while let Some(msg) = next.take() {
            next = self.pc.sweeping().poll_media_read();
            let now = msg.now;
            match msg.message {
                RTCMessage::RtpPacket(_, packet) => {
                    let level = self
                        .audio_level_ext
                        .and_then(|id| packet.header.get_extension(id))
                        .and_then(|b| b.first().map(|v| v & 0x7f));
                    if let Some(inbound) = self.inbound.as_mut() {
                        inbound.rtc_decrypted(&packet.header, now);
                    }
                    self.file_media(Media::from_rtp(packet), level, now, out);
                }
                RTCMessage::RtcpPacket(track_id, packets) => {
                    if let Some(inbound) = self.inbound.as_mut() {
                        // The publisher's sender reports, for the LSR/DLSR
                        // of our receiver reports (its round-trip time).
                        for p in &packets {
                            if let Some(sr) = p.as_any().downcast_ref::<SenderReport>() {
                                inbound.feedback.on_sender_report(sr.ssrc, sr.ntp_time, now);
                            }
                        }
                    }
                    if let Some(own) = self.own.as_mut() {
                        for p in &packets {
                            let any = p.as_any();
                            if let Some(fb) = any.downcast_ref::<TransportLayerCc>() {
                                own.feedback(fb, now);
                            } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>()
                                && let Some(o) = self
                                    .outgoing
                                    .iter()
                                    .find(|o| o.rewriter.ssrc() == nack.media_ssrc)
                            {
                                let seqs = nack.nacks.iter().flat_map(|pair| pair.into_iter());
                                let track = (&o.out, nack.media_ssrc);
                                let limit = &mut self.retransmit;
                                own.answer_nack(track, seqs, self.media_to, limit, now);
                            }
                        }
                        self.resend_due(now);
                    }
                    for p in &packets {
                        for r in reception_reports(p.as_ref()) {
                            // Only about streams we send to this subscriber.
                            if let Some(o) =
                                self.outgoing.iter().find(|o| o.rewriter.ssrc() == r.ssrc)
                            {
                                self.worst_loss = self.worst_loss.max(r.fraction_lost);
                                if o.kind == Kind::Audio {
                                    self.worst_audio_loss =
                                        self.worst_audio_loss.max(r.fraction_lost);
                                }
                            }
                        }
                    }
                    let Some(o) = self.outgoing.iter().find(|o| o.track_id == track_id) else {
                        continue;
                    };
                    self.quality.nacks += packets
                        .iter()
                        .filter(|p| p.as_any().is::<TransportLayerNack>())
                        .count() as u64;
                    if is_keyframe_request(&packets) {
                        // The decoder that lost a picture decodes the layer
                        // it gets now (or is about to get).
                        let layer = o.layers.current().or(o.layers.target()).unwrap_or(TOP);
                        out.push(PeerOutput::KeyframeRequest {
                            source: o.source,
                            kind: o.kind,
                            layer,
                        });
                    }
                }
                _ => {}
            }
        }
        // Our offer has no data channel; should anything arrive there, it
        // is dropped rather than kept.
        while self.pc.sweeping().poll_data_read().is_some() {}
        changed
    }

    /// One media packet from this participant, to fan out: filed under
    /// its track and layer by SSRC (a screen nobody may share and SSRCs
    /// we did not see opened go nowhere). `level`: its audio level, if
    /// audio.
    fn file_media(
        &mut self,
        media: Media,
        level: Option<u8>,
        now: Instant,
        out: &mut Vec<PeerOutput>,
    ) {
        for kind in Kind::ALL {
            let Some(incoming) = self.incoming[kind as usize].as_mut() else {
                continue;
            };
            let Some(layer) = incoming.layer_of(media.ssrc) else {
                continue;
            };
            if kind == Kind::Screen && !self.screen_on {
                // Not shared (or not allowed): goes nowhere.
                return;
            }
            let l = &mut incoming.layers[layer as usize];
            let appeared = kind.is_video()
                && l.last_seen
                    .is_none_or(|t| now.saturating_duration_since(t) >= LAYER_IDLE);
            l.last_seen = Some(now);
            if appeared {
                // Before the packet itself: it may be the keyframe a
                // subscriber can start from.
                out.push(PeerOutput::LayerAppeared);
            }
            l.bytes += media.payload.len() as u64 + 12;
            out.push(PeerOutput::Rtp {
                kind,
                layer,
                level: if kind == Kind::Audio { level } else { None },
                packet: media,
            });
            return;
        }
    }

    fn fail(&mut self, reason: &str) {
        if !self.failed {
            self.failed = true;
            self.emit(MediaEvent::Failed {
                reason: reason.into(),
            });
        }
    }

    /// Slow housekeeping (about once a second).
    pub(crate) fn tick(&mut self, now: Instant, elapsed: Duration) {
        let ms = elapsed.as_millis().max(1) as u64;
        self.sent_rate = std::mem::take(&mut self.sent_bytes) * 8 * 1000 / ms;
        let (packets, bytes, video) = std::mem::take(&mut self.wire);
        log::trace!(
            "participant {}: {packets} datagrams written ({} kbit/s, {video} video \
             while pacing, resent {} suppressed {} ({} over budget) at most every {} ms), media \
             forwarded {} kbit/s, pacer holds {} B",
            self.participant,
            bytes * 8 / ms,
            self.retransmit.sent,
            self.retransmit.suppressed,
            std::mem::take(&mut self.retransmit.over_budget),
            self.retransmit.interval().as_millis(),
            self.sent_rate / 1000,
            self.pacer.queued(),
        );
        // The subscriber's receiver reports count what never reached us from
        // the publisher (a lossy uplink on the other side) as lost too; its
        // transport-wide feedback counts only what we sent. Downgrading this
        // subscriber for the publisher's uplink cost it a keyframe wait per
        // step (degraded browser test: 720p -> 180p over a clean downlink).
        let [[arrived, lost], [audio_arrived, audio_lost]] = self
            .own
            .as_mut()
            .map_or([[0; 2]; 2], |own| own.take_acked());
        let loss_of = |arrived: u64, lost: u64| {
            let total = arrived + lost;
            (total >= MIN_ACKED_FOR_LOSS).then(|| crate::media_in::fraction_lost(lost, total))
        };
        let total = arrived + lost;
        let twcc_loss = loss_of(arrived, lost);
        // Audio's own: heavy loss of video (a keyframe burst) is not audio
        // suffering, and pausing video for it is what `allocate` avoids.
        let twcc_audio_loss = loss_of(audio_arrived, audio_lost);
        let (worst_loss, worst_audio_loss) = (
            std::mem::take(&mut self.worst_loss),
            std::mem::take(&mut self.worst_audio_loss),
        );
        if worst_loss.max(twcc_loss.unwrap_or(0)) >= LOSS_LOW {
            log::debug!(
                "participant {}: loss in the last second: {lost} of {total} packets by \
                 transport-wide feedback, {worst_loss}/256 by receiver reports (audio \
                 {worst_audio_loss}/256)",
                self.participant
            );
        }
        if twcc_audio_loss.unwrap_or(worst_audio_loss) > LOSS_HIGH {
            self.lossy_at = Some(now);
        }
        self.loss_cap.update(
            twcc_loss.unwrap_or(worst_loss),
            self.sent_rate,
            self.estimate.load(Relaxed),
        );
        for incoming in self.incoming.iter_mut().flatten() {
            for l in &mut incoming.layers {
                l.rate = std::mem::take(&mut l.bytes) * 8 * 1000 / ms;
            }
        }
        if let Some(inbound) = self.inbound.as_mut() {
            let [twcc, nacks, reports] = std::mem::take(&mut self.feedback_sent);
            log::trace!(
                "participant {}: to the publisher: {twcc} transport-wide feedback, {nacks} \
                 NACK, {reports} report packets",
                self.participant
            );
            let mut refused = inbound.take_refused();
            if let Some(srtcp) = self.srtcp.as_mut() {
                for (total, n) in refused.iter_mut().zip(srtcp.take_refused()) {
                    *total += n;
                }
                refused[2] += srtcp.take_too_many_ssrcs();
            }
            for (total, n) in self.quality.srtp_refused.iter_mut().zip(refused) {
                *total += n;
            }
            let [replayed, forged, malformed] = refused;
            if replayed + forged + malformed > 0 {
                // At most one line a second, never one per packet.
                log::debug!(
                    "participant {}: inbound media or RTCP refused: {replayed} replayed or too late, \
                     {forged} failed authentication, {malformed} malformed",
                    self.participant
                );
            }
        }
        if let Some(own) = self.own.as_mut() {
            own.tick(now);
            log::trace!(
                "participant {}: own media path: {} feedback packets, {} resent, {} NACKed \
                 but not held, {} NACKed after arriving, {} NACKed before any feedback, {} refused",
                self.participant,
                own.feedbacks,
                own.resent,
                own.not_held,
                own.arrived_already,
                own.too_early,
                own.dropped
            );
            // Sender reports for what we sent (rtc's are off on this
            // path): lip sync and round-trip times in the browser.
            let wall = std::time::SystemTime::now();
            for o in &self.outgoing {
                let Some(sr) = o.out.sender_report(o.rewriter.ssrc(), now, wall) else {
                    continue;
                };
                if let Some(mut sender) = self.pc.rtp_sender(o.sender)
                    && let Err(e) = sender.write_rtcp(now, vec![Box::new(sr)])
                {
                    log::debug!("sender report: {e}");
                }
            }
        }
        if self.failed {
            return;
        }
        if now.saturating_duration_since(self.last_rx) > TRAFFIC_TIMEOUT {
            self.fail(if self.connected {
                "no traffic for 30 s"
            } else {
                "not connected within 30 s"
            });
        }
    }

    /// Keyframe requests to send upstream: video tracks whose target layer
    /// is not reached yet (a new subscriber, a switch, a resume). The
    /// publisher side rate-limits them per layer, so asking on every drive
    /// until the keyframe arrives is cheap and survives a lost keyframe.
    pub(crate) fn take_keyframe_wants(&mut self, out: &mut Vec<(PeerKey, Kind, Layer)>) {
        if !self.connected || self.offer_pending {
            return;
        }
        for o in &self.outgoing {
            if o.kind.is_video()
                && o.live
                && let Some(layer) = o.layers.wants_keyframe()
            {
                out.push((o.source, o.kind, layer));
            }
        }
    }

    /// What this participant publishes, for subscribers choosing layers.
    pub(crate) fn publisher_view(&self, now: Instant) -> PublisherView {
        let track = |kind: Kind| {
            let mut view = TrackView::default();
            if let Some(incoming) = self.incoming[kind as usize].as_ref() {
                for (i, l) in incoming.layers.iter().enumerate() {
                    if l.last_seen
                        .is_some_and(|t| now.saturating_duration_since(t) < LAYER_IDLE)
                    {
                        view.active |= 1 << i;
                    }
                    view.rates[i] = l.rate;
                }
            }
            view
        };
        PublisherView {
            camera: track(Kind::Video),
            screen: track(Kind::Screen),
        }
    }

    /// The edge says whether this participant shares their screen now
    /// (it checked they may). Returns whether the screen track must now be
    /// published to the consult (it arrived before it was let on).
    pub(crate) fn set_screen(&mut self, on: bool) -> bool {
        self.screen_on = on;
        if on && !self.screen_published && self.incoming[Kind::Screen as usize].is_some() {
            self.screen_published = true;
            return true;
        }
        false
    }

    /// The subscriber's wish for `source_participant`'s `kind` track: the
    /// camera's layer from the preferences; a screen always whole (it has
    /// one layer, and small text matters); nothing when audio only.
    fn desired_layer(&self, kind: Kind, source_participant: &str) -> Option<Layer> {
        if self.audio_only {
            return None;
        }
        if kind == Kind::Screen {
            return Some(TOP);
        }
        let q = self
            .max_quality
            .iter()
            .find(|(p, _)| p == source_participant)
            .map_or(VideoQuality::High, |(_, q)| *q);
        Some(simulcast::layer_of_quality(q))
    }

    /// New preferences from the edge (bounded by the caller).
    pub(crate) fn set_preferences(
        &mut self,
        audio_only: bool,
        max_quality: Vec<(ParticipantId, VideoQuality)>,
    ) {
        self.audio_only = audio_only;
        self.max_quality = max_quality;
    }

    /// Choose every video track's layer from the preferences, the
    /// bandwidth estimate and what each publisher sends (`views` is indexed
    /// by peer key). Returns whether a layer went down for bandwidth.
    pub(crate) fn allocate(&mut self, views: &[PublisherView], now: Instant) -> bool {
        self.wants.clear();
        let mut audio = 0;
        for o in &self.outgoing {
            if o.kind == Kind::Audio {
                audio += 1;
                continue;
            }
            let view = views.get(o.source).copied().unwrap_or_default().of(o.kind);
            self.wants.push(Want {
                desired: self.desired_layer(o.kind, &o.source_participant),
                active: view.active,
                rates: view.rates,
                current: o.layers.target(),
            });
        }
        self.chosen.clear();
        self.chosen.resize(self.wants.len(), None);
        let gcc = self.estimate.load(Relaxed);
        let estimate = self.loss_cap.cap().map_or(gcc, |c| c.min(gcc));
        // Video pauses only to protect audio: when the subscriber reported
        // heavy loss on an audio stream within LOSSY_MEMORY. Otherwise every
        // wanted track keeps at least its lowest layer, and the estimate and
        // loss ceiling only choose the steps up. Earlier signals each failed
        // in a browser test: GCC alone (delay, e.g. jitter on a lossy path)
        // paused video for good (with video paused GCC sees too little
        // traffic to rise again; 5 % loss + 20 ± 5 ms); any reported loss
        // paused a 350 kbit/s subscriber whose low layer and audio fit, for
        // 20 s and more, on the loss of keyframe bursts and retransmission
        // storms (now paced and bounded). Sticky, so a link that cannot
        // carry the low layer is not refilled the moment audio recovers;
        // after LOSSY_MEMORY calm the low layers resume (a probe).
        // (`lossy_at` is set by `tick` from the receiver reports.)
        let floor_free = self
            .lossy_at
            .is_none_or(|t| now.saturating_duration_since(t) >= LOSSY_MEMORY);
        let outcome = self.allocator.allocate(
            estimate,
            audio,
            floor_free,
            &self.wants,
            &mut self.chosen,
            now,
        );
        let known = (gcc != NO_ESTIMATE).then_some(estimate);
        self.pacer.set_rate(pace_rate(known, self.sent_rate));
        // From what we forward, not the estimate: rtc's GCC was measured
        // at 5.8 Mbit/s on a 350 kbit/s link (it hardly reacts to loss), and
        // repairing up to a quarter of the media needs no more than this.
        self.retransmit.set_media_rate(self.sent_rate);
        self.paused = outcome.paused;
        let mut i = 0;
        let mut changed = false;
        for o in &mut self.outgoing {
            if o.kind.is_video() {
                if let Some(layer) = self.chosen.get(i) {
                    changed |= o.layers.target() != *layer;
                    o.layers.set_target(*layer);
                }
                i += 1;
            }
        }
        if changed {
            // Once per change, not per packet: what the estimate chose.
            log::debug!(
                "participant {}: video layers now {:?} (wanted {:?}) at {} kbit/s \
                 (gcc {} kbit/s, loss ceiling {:?}, sent {} kbit/s, floor free {})",
                self.participant,
                self.chosen,
                self.wants.iter().map(|w| w.desired).collect::<Vec<_>>(),
                estimate / 1000,
                gcc / 1000,
                self.loss_cap.cap().map(|c| c / 1000),
                self.sent_rate / 1000,
                floor_free
            );
        }
        outcome.downgraded
    }

    pub(crate) fn take_quality(&mut self) -> QualityEvents {
        self.quality.retransmitted += std::mem::take(&mut self.retransmit.sent);
        self.quality.retransmits_suppressed += std::mem::take(&mut self.retransmit.suppressed);
        std::mem::take(&mut self.quality)
    }

    /// Forward one of `source`'s packets to this participant. Returns the
    /// bytes handed to rtc (0 if this peer does not take that track).
    ///
    /// Allocation: the packet clone shares the payload (`Bytes`) and, after
    /// extensions are stripped, copies only the fixed header; rtc itself
    /// allocates per packet inside `write_rtp` (track id string, pipeline
    /// queues, SRTP output buffer).
    pub(crate) fn forward(
        &mut self,
        source: PeerKey,
        kind: Kind,
        layer: Layer,
        packet: &Media,
        (now, pool): (Instant, &mut BufferPool),
    ) -> usize {
        if !self.connected {
            return 0;
        }
        let Some(o) = self
            .outgoing
            .iter_mut()
            .find(|o| o.source == source && o.kind == kind && o.live)
        else {
            return 0;
        };
        // A copy of the payload only after a simulcast layer switch (to
        // renumber the VP8 descriptor; the payload is shared with the
        // other subscribers). The unswitched path forwards it as is.
        let mut patched = None;
        let (seq, timestamp) = match kind {
            Kind::Audio => o
                .rewriter
                .numbers(packet.ssrc, packet.seq, packet.timestamp),
            Kind::Video | Kind::Screen => {
                let vp8 = simulcast::parse_vp8(&packet.payload);
                let verdict = o.layers.on_packet(
                    layer,
                    packet.ssrc,
                    packet.seq,
                    packet.timestamp,
                    vp8.as_ref(),
                    now,
                );
                let switched = o.layers.take_switched();
                match switched {
                    Some(Switched::Up) => self.quality.switches_up += 1,
                    Some(Switched::Down) => self.quality.switches_down += 1,
                    Some(Switched::Resumed) => self.quality.resumed += 1,
                    None => {}
                }
                if switched.is_some() {
                    // Once per switch: where a first picture waits.
                    log::debug!(
                        "participant {}: {}'s {kind:?} now on layer {layer} ({switched:?})",
                        self.participant,
                        o.source_participant
                    );
                }
                let Verdict::Forward(rewrite) = verdict else {
                    return 0;
                };
                if rewrite.picture_id.is_some() || rewrite.tl0.is_some() {
                    let mut payload = BytesMut::from(&packet.payload[..]);
                    simulcast::patch_vp8(&mut payload, &rewrite);
                    patched = Some(payload.freeze());
                }
                (rewrite.seq, rewrite.ts)
            }
        };
        let payload: &[u8] = match &patched {
            Some(p) => p,
            None => &packet.payload,
        };
        let len = payload.len() + 12;
        if let Some(own) = self.own.as_mut() {
            let sent = own.send(
                &mut o.out,
                &Outbound {
                    ssrc: o.rewriter.ssrc(),
                    seq,
                    timestamp,
                    marker: packet.marker,
                    payload_type: o.rewriter.payload_type(),
                    payload,
                },
                (self.media_to, pool),
                now,
            );
            if sent == 0 {
                return 0;
            }
        } else if self.own_path {
            return 0;
        } else {
            let Some(mut sender) = self.pc.rtp_sender(o.sender) else {
                return 0;
            };
            let mut p = packet.to_rtp();
            p.payload = Bytes::copy_from_slice(payload);
            o.rewriter.rewrite_to(&mut p.header, seq, timestamp);
            if sender.write_rtp(now, p).is_err() {
                return 0;
            }
        }
        self.sent_bytes += len as u64;
        if !self.first_forwarded {
            self.first_forwarded = true;
            self.emit(MediaEvent::FirstMediaForwarded);
        }
        len
    }

    /// This subscriber's browser now holds its end-to-end key for `source`
    /// (`MediaCommand::Keyframe`): the layer of `source`'s `kind` track to
    /// ask a keyframe of, and whether that request may pass the
    /// publisher's rate limit. `None` if it does not receive that track or
    /// is not connected yet (the keyframe asked for when it connects comes
    /// after its key then).
    ///
    /// The limit (one request per publisher layer per 500 ms) would
    /// otherwise swallow exactly this request: the keyframe asked for when
    /// the subscriber connected arrived before its key, could not be
    /// decrypted, and the next one would wait out the interval (measured:
    /// first picture 0.5 s later in 6 of 18 runs). Once per subscription.
    pub(crate) fn first_picture(&mut self, source: PeerKey, kind: Kind) -> Option<(Layer, bool)> {
        if !self.connected {
            return None;
        }
        let o = self
            .outgoing
            .iter_mut()
            .find(|o| o.source == source && o.kind == kind && o.live)?;
        let force = std::mem::take(&mut o.first_picture_pending);
        Some((
            o.layers.current().or(o.layers.target()).unwrap_or(TOP),
            force,
        ))
    }

    /// Ask this participant's browser for a keyframe on one layer of its
    /// `kind` track (rate-limited per layer). A layer it does not send
    /// falls back to one it does. Returns whether a request went out.
    pub(crate) fn request_keyframe(
        &mut self,
        kind: Kind,
        layer: Layer,
        force: bool,
        now: Instant,
    ) -> bool {
        // A screen nobody shares now sends nothing to key (a subscriber
        // that joined after the share still waits for its first picture).
        if kind == Kind::Screen && !self.screen_on {
            return false;
        }
        let Some(incoming) = self.incoming[kind as usize].as_mut() else {
            return false;
        };
        let layer = if incoming.layers[layer as usize].ssrc.is_some() {
            layer as usize
        } else {
            match (0..LAYERS)
                .rev()
                .find(|l| incoming.layers[*l].ssrc.is_some())
            {
                Some(l) => l,
                None => return false,
            }
        };
        let l = &mut incoming.layers[layer];
        let Some(ssrc) = l.ssrc else { return false };
        if force {
            if !incoming.gate.must_send(layer as Layer, now) {
                log::debug!(
                    "participant {}: keyframe on {kind:?} layer {layer} held for the encoder's interval",
                    self.participant
                );
                return false;
            }
            l.limiter.force(now);
        } else if !l.limiter.allow(now) {
            return false;
        }
        incoming.gate.sent(now);
        let receiver = incoming.receiver;
        if self.srtcp_out.is_some() {
            let pli: [Box<dyn rtc::rtcp::Packet>; 1] = [Box::new(PictureLossIndication {
                sender_ssrc: FEEDBACK_SSRC,
                media_ssrc: ssrc,
            })];
            if let Err(e) = self.send_rtcp(&pli, now) {
                log::debug!("keyframe request failed: {e}");
                return false;
            }
        } else {
            let pli = PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc: ssrc,
            };
            if let Some(mut receiver) = self.pc.rtp_receiver(receiver)
                && let Err(e) = receiver.write_rtcp(now, vec![Box::new(pli)])
            {
                log::debug!("keyframe request failed: {e}");
                return false;
            }
        }
        log::debug!(
            "participant {}: keyframe asked for on {kind:?} layer {layer}",
            self.participant
        );
        true
    }

    pub(crate) fn published(&self) -> usize {
        self.incoming.iter().filter(|i| i.is_some()).count()
    }

    /// Close the connection (DTLS close_notify is left in `poll_write`).
    pub(crate) fn close(&mut self) {
        if let Err(e) = self.pc.close() {
            log::debug!("peer close: {e}");
        }
    }
}

/// The id the answer gave the RFC 6464 audio-level extension (ids are
/// shared across a BUNDLE group, so the first mention decides).
fn audio_level_ext_id(sdp: &str) -> Option<u8> {
    sdp.lines().find_map(|l| {
        let rest = l.strip_prefix("a=extmap:")?;
        let (id, uri) = rest.split_once(' ')?;
        if uri.trim() != AUDIO_LEVEL_URI {
            return None;
        }
        // `a=extmap:<id>[/<direction>] <uri>`
        id.split('/').next()?.parse().ok()
    })
}

/// The reception reports of a receiver or sender report; none for any
/// other RTCP packet.
pub(crate) fn reception_reports(
    p: &dyn rtc::rtcp::packet::Packet,
) -> &[rtc::rtcp::reception_report::ReceptionReport] {
    let any = p.as_any();
    if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
        &rr.reports
    } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
        &sr.reports
    } else {
        &[]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_from_a_report_block() {
        use std::time::UNIX_EPOCH;
        let sent = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let lsr = (crate::media_out::ntp(sent) >> 16) as u32;
        // Answered 30 ms after it arrived, 130 ms after it was sent: 100 ms.
        let delay = (30u32 << 16) / 1000;
        let rtt = round_trip(lsr, delay, sent + Duration::from_millis(130)).unwrap();
        assert!(
            rtt.abs_diff(Duration::from_millis(100)) < Duration::from_millis(1),
            "{rtt:?}"
        );
        // Across the 32-bit wrap of the middle bits, the same.
        // (NTP seconds of 1_800_044_927 end in 0xFFFF: the middle bits wrap 1 s later.)
        let sent = UNIX_EPOCH + Duration::from_secs(1_800_044_927) + Duration::from_millis(990);
        let lsr = (crate::media_out::ntp(sent) >> 16) as u32;
        assert!(lsr > 0xFFFF_0000);
        let rtt = round_trip(lsr, 0, sent + Duration::from_millis(50)).unwrap();
        assert!(
            rtt.abs_diff(Duration::from_millis(50)) < Duration::from_millis(1),
            "{rtt:?}"
        );
        // A delay longer than the time since: garbage, not a huge round trip.
        assert_eq!(round_trip(lsr, 10 << 16, sent), None);
    }

    #[test]
    fn our_interceptors_are_rtcs_defaults_and_none_on_our_own_path() {
        use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
        let mut ours = MediaEngine::default();
        let mut theirs = MediaEngine::default();
        let a = default_interceptors(Registry::new(), &mut ours, false).expect("ours");
        let b = register_default_interceptors(Registry::new(), &mut theirs).expect("rtc's");
        // The same interceptors in the same slots: if rtc's defaults ever
        // change, this says so (and `default_interceptors` follows).
        assert_eq!(a.slots(), b.slots());
        assert!(a.slots().iter().any(|(s, _)| *s == Slot::NackResponder));
        // Our own media path: both directions are ours, so none of rtc's
        // interceptors may see those SSRCs (a NACK responder or probe of
        // rtc's would reuse packet indices we encrypt).
        let own = default_interceptors(Registry::new(), &mut MediaEngine::default(), true)
            .expect("own path");
        assert_eq!(own.slots(), Vec::new());
    }

    #[test]
    fn audio_level_extension_id_is_read_from_the_answer() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
                   a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
                   a=extmap:1/sendonly urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n";
        assert_eq!(audio_level_ext_id(sdp), Some(1));
        assert_eq!(
            audio_level_ext_id("v=0\r\na=extmap:x urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n"),
            None
        );
        assert_eq!(audio_level_ext_id("v=0\r\n"), None);
    }

    #[test]
    fn cached_deadline_is_refreshed_after_any_mutable_access() {
        let now = Instant::now();
        let pc = RTCPeerConnectionBuilder::new()
            .with_setting_engine(SettingEngineBuilder::new().with_lite(true).build())
            .build(now)
            .expect("peer connection");
        let mut timed = TimedPc::new(pc);
        let first = timed.poll_timeout();
        assert!(!timed.stale, "polling fills the cache");
        assert_eq!(timed.poll_timeout(), first);
        // Any `&mut` use of the connection may move its timers.
        timed
            .add_transceiver_from_kind(RtpCodecKind::Audio, None)
            .expect("transceiver");
        assert!(timed.stale);
        let fresh = timed.pc.poll_timeout();
        assert_eq!(timed.poll_timeout(), fresh);
        assert!(!timed.stale);
        // Shared access leaves the cache alone.
        let _ = timed.remote_description();
        assert!(!timed.stale);
    }
}
