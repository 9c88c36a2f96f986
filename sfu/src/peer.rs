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

use crate::consult::Kind;
use crate::keyframe::{KeyframeLimiter, MarkKeyframeRequests, is_keyframe_request};
use crate::rewrite::{AUDIO_TS_STEP, StreamRewriter, VIDEO_TS_STEP};
use crate::{MediaEvent, ParticipantId};
use rtc::interceptor::{Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp_transceiver::RTCRtpTransceiverDirection;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::TaggedBytesMut;
use std::net::IpAddr;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// The worker's key for a peer (its slot index).
pub(crate) type PeerKey = usize;

/// No packet at all (media, RTCP or STUN consent checks, which browsers
/// send every few seconds) for this long means the transport is gone.
pub(crate) const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(30);

const OPUS_PT: u8 = 111;
const VP8_PT: u8 = 96;

/// Where the worker's sockets can be reached, for our ICE candidates.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidates {
    pub announce_ip: IpAddr,
    pub udp_port: u16,
    pub tcp_port: Option<u16>,
}

/// What draining a peer produced for the worker to act on.
#[derive(Debug)]
pub(crate) enum PeerOutput {
    /// Media from this participant, to fan out to the consult.
    Rtp(Kind, rtp::Packet),
    /// A subscriber asked for a keyframe of `source`'s `kind` track.
    KeyframeRequest { source: PeerKey, kind: Kind },
    /// This participant's `kind` track started arriving.
    Published(Kind),
}

struct Incoming {
    receiver: RTCRtpReceiverId,
    track_id: String,
    ssrc: u32,
    limiter: KeyframeLimiter,
}

struct Outgoing {
    source: PeerKey,
    kind: Kind,
    sender: RTCRtpSenderId,
    track_id: String,
    rewriter: StreamRewriter,
    /// Ask the publisher for a keyframe once this subscriber can receive:
    /// without one, a new subscriber waits for the next periodic keyframe.
    wants_keyframe: bool,
}

/// The peer connection with its next timer deadline cached.
///
/// `RTCPeerConnection::poll_timeout` walks every protocol handler and
/// interceptor (ICE, DTLS, SCTP, SRTP, NACK, reports, TWCC), and the worker
/// needs the earliest deadline of all its peers on every loop turn. Only a
/// `&mut` access can move a deadline, so every mutable access (through
/// `DerefMut`) marks the cache stale and the next `poll_timeout` asks rtc
/// again; a peer nobody touched since costs a field read.
struct TimedPc {
    pc: RTCPeerConnection,
    stale: bool,
    deadline: Option<Instant>,
}

impl TimedPc {
    fn new(pc: RTCPeerConnection) -> Self {
        TimedPc {
            pc,
            stale: true,
            deadline: None,
        }
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
        &mut self.pc
    }
}

pub(crate) struct Peer {
    pub participant: ParticipantId,
    /// The worker's key for the consult this peer belongs to.
    pub consult: usize,
    pc: TimedPc,
    events: UnboundedSender<MediaEvent>,
    /// Every local ufrag this peer has used (ICE restarts add one); the
    /// worker routes STUN by them and forgets them when the peer goes.
    pub ufrags: Vec<String>,
    offer_pending: bool,
    renegotiate: bool,
    incoming: [Option<Incoming>; 2],
    outgoing: Vec<Outgoing>,
    tracks_created: u32,
    connected: bool,
    failed: bool,
    first_forwarded: bool,
    last_rx: Instant,
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
        Kind::Video => RtpCodecKind::Video,
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Audio => "audio",
        Kind::Video => "video",
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

impl Peer {
    /// Create the peer connection and send the first offer, which already
    /// carries every track in `subscriptions`.
    pub(crate) fn join(
        participant: ParticipantId,
        consult: usize,
        events: UnboundedSender<MediaEvent>,
        candidates: Candidates,
        subscriptions: &[(PeerKey, ParticipantId, Kind)],
        now: Instant,
    ) -> Result<Peer, String> {
        let mut media = MediaEngine::default();
        media
            .register_codec(opus(), RtpCodecKind::Audio)
            .map_err(|e| e.to_string())?;
        media
            .register_codec(vp8(), RtpCodecKind::Video)
            .map_err(|e| e.to_string())?;
        // Default interceptors: NACK responder (answers subscribers' NACKs
        // from a per-sender packet cache) and generator, RTCP reports,
        // TWCC feedback towards publishers. Plus the keyframe marker.
        let registry = Registry::new().with(Slot::from(14_000), MarkKeyframeRequests::default());
        let registry =
            register_default_interceptors(registry, &mut media).map_err(|e| e.to_string())?;
        // As offerer we write `setup:actpass`; Chromium answers `active`, so
        // we are the DTLS server (the faster handshake the spike measured).
        // The answering role only matters if a client ever offers.
        let settings = SettingEngineBuilder::new()
            .with_lite(true)
            .with_answering_dtls_role(RTCDtlsRole::Server)
            .build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_setting_engine(settings)
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .build(now)
            .map_err(|e| e.to_string())?;
        for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
            let init = RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                ..Default::default()
            };
            pc.add_transceiver_from_kind(kind, Some(init))
                .map_err(|e| e.to_string())?;
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
            ufrags: Vec::new(),
            offer_pending: false,
            renegotiate: false,
            incoming: [None, None],
            outgoing: Vec::new(),
            tracks_created: 0,
            connected: false,
            failed: false,
            first_forwarded: false,
            last_rx: now,
        };
        for (source, source_participant, kind) in subscriptions {
            peer.add_track(*source, source_participant, *kind)?;
        }
        peer.negotiate();
        Ok(peer)
    }

    fn emit(&self, event: MediaEvent) {
        // The edge dropped its receiver: the participant is leaving anyway.
        let _ = self.events.send(event);
    }

    fn add_track(
        &mut self,
        source: PeerKey,
        source_participant: &str,
        kind: Kind,
    ) -> Result<(), String> {
        self.tracks_created += 1;
        let ssrc = rand::random::<u32>();
        let codec = match kind {
            Kind::Audio => opus(),
            Kind::Video => vp8(),
        };
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
        self.outgoing.push(Outgoing {
            source,
            kind,
            sender,
            track_id,
            rewriter: StreamRewriter::new(ssrc, codec.payload_type, step),
            wants_keyframe: kind == Kind::Video,
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
        match offer {
            Ok(sdp) => {
                if let Some(ufrag) = ufrag_of(&sdp)
                    && !self.ufrags.iter().any(|u| u == ufrag)
                {
                    self.ufrags.push(ufrag.to_string());
                }
                self.offer_pending = true;
                self.emit(MediaEvent::Offer { sdp });
            }
            Err(e) => {
                log::warn!("create offer failed: {e}");
                self.emit(MediaEvent::Error {
                    code: "media_error",
                    message: "could not create an offer".into(),
                });
            }
        }
    }

    /// The browser's answer to our pending offer.
    pub(crate) fn answer(&mut self, sdp: String, now: Instant) {
        if !self.offer_pending {
            self.emit(MediaEvent::Error {
                code: "media_error",
                message: "no offer is waiting for an answer".into(),
            });
            return;
        }
        let applied =
            RTCSessionDescription::answer(sdp).and_then(|a| self.pc.set_remote_description(now, a));
        if let Err(e) = applied {
            // The offer stays pending: the browser may still send a usable
            // answer, or ask for an ICE restart.
            self.emit(MediaEvent::Error {
                code: "media_error",
                message: format!("unusable SDP answer: {e}"),
            });
            return;
        }
        self.offer_pending = false;
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

    /// Feed one datagram (or TCP frame) from the network.
    pub(crate) fn handle_read(&mut self, msg: TaggedBytesMut) {
        self.last_rx = msg.now;
        if let Err(e) = self.pc.handle_read(msg) {
            log::debug!("peer handle_read: {e}");
        }
    }

    pub(crate) fn poll_timeout(&mut self) -> Option<Instant> {
        self.pc.poll_timeout()
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if let Err(e) = self.pc.handle_timeout(now) {
            log::debug!("peer handle_timeout: {e}");
        }
    }

    pub(crate) fn poll_write(&mut self) -> Option<TaggedBytesMut> {
        self.pc.poll_write()
    }

    /// Drain state changes and inbound media/RTCP into `out`. Returns
    /// whether any state change was seen (the caller drives again then).
    pub(crate) fn drain(&mut self, out: &mut Vec<PeerOutput>) -> bool {
        let mut changed = false;
        while let Some(event) = self.pc.poll_event() {
            changed = true;
            match event {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => match state {
                    RTCPeerConnectionState::Connected if !self.connected => {
                        self.connected = true;
                        self.emit(MediaEvent::Connected);
                    }
                    RTCPeerConnectionState::Failed => self.fail("ICE or DTLS failed"),
                    _ => {}
                },
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                    let Some(kind) =
                        self.pc
                            .rtp_receiver(init.receiver_id)
                            .map(|r| match r.track().kind() {
                                RtpCodecKind::Audio => Kind::Audio,
                                _ => Kind::Video,
                            })
                    else {
                        continue;
                    };
                    let first = self.incoming[kind as usize].is_none();
                    self.incoming[kind as usize] = Some(Incoming {
                        receiver: init.receiver_id,
                        track_id: init.track_id,
                        ssrc: init.ssrc,
                        limiter: KeyframeLimiter::default(),
                    });
                    if first {
                        out.push(PeerOutput::Published(kind));
                    }
                }
                _ => {}
            }
        }
        while let Some(msg) = self.pc.poll_read() {
            match msg.message {
                RTCMessage::RtpPacket(track_id, packet) => {
                    let kind = Kind::BOTH.into_iter().find(|k| {
                        self.incoming[*k as usize]
                            .as_ref()
                            .is_some_and(|i| i.track_id == track_id)
                    });
                    if let Some(kind) = kind {
                        out.push(PeerOutput::Rtp(kind, packet));
                    }
                }
                RTCMessage::RtcpPacket(track_id, packets) => {
                    if is_keyframe_request(&packets)
                        && let Some(o) = self.outgoing.iter().find(|o| o.track_id == track_id)
                    {
                        out.push(PeerOutput::KeyframeRequest {
                            source: o.source,
                            kind: o.kind,
                        });
                    }
                }
                _ => {}
            }
        }
        changed
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
    pub(crate) fn tick(&mut self, now: Instant) {
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

    /// Keyframe-request senders to fire now that this subscriber can take
    /// media: sources of video tracks it has not had a keyframe request for.
    pub(crate) fn take_keyframe_wants(&mut self, out: &mut Vec<PeerKey>) {
        if !self.connected || self.offer_pending {
            return;
        }
        for o in &mut self.outgoing {
            if std::mem::take(&mut o.wants_keyframe) {
                out.push(o.source);
            }
        }
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
        packet: &rtp::Packet,
        now: Instant,
    ) -> usize {
        if !self.connected {
            return 0;
        }
        let Some(o) = self
            .outgoing
            .iter_mut()
            .find(|o| o.source == source && o.kind == kind)
        else {
            return 0;
        };
        let mut p = rtp::Packet {
            header: packet.header.clone(),
            payload: packet.payload.clone(),
        };
        o.rewriter.rewrite(&mut p.header);
        let len = p.payload.len() + 12;
        let Some(mut sender) = self.pc.rtp_sender(o.sender) else {
            return 0;
        };
        if sender.write_rtp(now, p).is_err() {
            return 0;
        }
        if !self.first_forwarded {
            self.first_forwarded = true;
            self.emit(MediaEvent::FirstMediaForwarded);
        }
        len
    }

    /// Ask this participant's browser for a keyframe on its `kind` track
    /// (rate-limited per track).
    pub(crate) fn request_keyframe(&mut self, kind: Kind, now: Instant) {
        let Some(incoming) = self.incoming[kind as usize].as_mut() else {
            return;
        };
        if !incoming.limiter.allow(now) {
            return;
        }
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: incoming.ssrc,
        };
        if let Some(mut receiver) = self.pc.rtp_receiver(incoming.receiver)
            && let Err(e) = receiver.write_rtcp(now, vec![Box::new(pli)])
        {
            log::debug!("keyframe request failed: {e}");
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
