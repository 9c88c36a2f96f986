//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer).
//! Not an API: hidden from the docs and free to change with the code it
//! reaches. Each function drives one path that untrusted bytes take on the
//! media plane, the way the worker drives it, and asserts what must hold
//! whatever the input (a failed assertion is a finding, like a panic).
//!
//! * [`media_port_datagram`], [`ice_tcp_stream`]: STUN ufrag demux and
//!   RFC 4571 framing on the media port (`demux.rs`, `tcp.rs`);
//! * [`MediaPlane`]: RTP/RTCP from a publisher or subscriber after SRTP
//!   (`rewrite.rs`, `simulcast.rs`, `keyframe.rs`, `speaker.rs`, `rx.rs`);
//! * [`AnswerHarness`]: a browser's SDP answer to a real offer of ours
//!   (`peer.rs`'s answer path, `simulcast.rs`'s SDP edits, rtc's parser);
//! * [`OwnPath`]: our own outbound media path (`srtp.rs`, `media_out.rs`):
//!   whatever is forwarded decrypts, with rtc's SRTP, to exactly what was
//!   sent; resends are the same bytes and refused as replays by a receiver
//!   that had them; random, truncated and replayed feedback (NACK, TWCC)
//!   from a subscriber moves nothing it should not.
//! * [`InboundPath`]: our own inbound media path (`srtp.rs`, `inbound.rs`,
//!   `media_in.rs`): a publisher's packets (encrypted by rtc's SRTP, as a
//!   browser would) decrypt to exactly what was sent, once; replays,
//!   changed, truncated and random datagrams are refused; the feedback
//!   built from it is valid RTCP and NACKs only what never arrived.
//! * [`RtcpInPath`]: our own inbound SRTCP and RTCP (`srtp.rs`,
//!   `rtcp_in.rs`): a peer's compound packets (encrypted by rtc's SRTCP,
//!   as a browser would) decrypt to exactly what was sent, once, while in
//!   the replay window and while the SSRC table has room; replays,
//!   changed, cut and invented datagrams are refused and counted; the
//!   parser never panics and a refusal visits nothing.

use crate::consult::Kind;
use crate::keyframe::is_keyframe_request;
use crate::peer::{Candidates, Peer, PeerOptions, PeerOutput};
use crate::rewrite::{AUDIO_TS_STEP, StreamRewriter, VIDEO_TS_STEP};
use crate::simulcast::{self, LAYERS, LayerForwarder, Verdict};
use crate::speaker::SpeakerDetector;
use crate::tcp::{Frame, FrameReader, MAX_FRAME, MAX_PENDING_WRITE, push_frame};
use crate::{MediaEnvelope, MediaEvent, demux, rx};
use bytes::BytesMut;
use rtc::rtp;
use rtc::shared::marshal::Unmarshal;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// One UDP datagram on the media port: the ufrag it would be routed by.
pub fn media_port_datagram(packet: &[u8]) -> Option<&str> {
    let ufrag = demux::local_ufrag(packet)?;
    assert!(demux::is_stun(packet), "routed a datagram that is not STUN");
    assert!(!ufrag.is_empty() && !ufrag.contains(':'));
    assert!(ufrag.len() <= 513, "ufrag over the username limit");
    Some(ufrag)
}

/// One ICE-TCP connection: `reads` as the socket returned them. Frames are
/// cut and routed as the worker (and the accept loop, for the first frame)
/// does; checked against a plain reading of the whole stream. Returns the
/// number of frames delivered.
pub fn ice_tcp_stream<'a>(reads: impl IntoIterator<Item = &'a [u8]>) -> usize {
    let mut reader = FrameReader::default();
    let mut stream = Vec::new();
    let mut consumed = 0usize;
    let mut frames = 0usize;
    let mut reframed = Vec::new();
    'reads: for read in reads {
        reader.extend(read);
        stream.extend_from_slice(read);
        loop {
            match reader.next_frame() {
                Frame::Ready(range) => {
                    let frame = &reader.bytes()[range];
                    // The same frame, read straight from the stream.
                    let len =
                        usize::from(u16::from_be_bytes([stream[consumed], stream[consumed + 1]]));
                    assert!(len <= MAX_FRAME);
                    assert_eq!(frame, &stream[consumed + 2..consumed + 2 + len]);
                    let _ = media_port_datagram(frame);
                    // What we write back frames the same way.
                    if reframed.len() + 2 + frame.len() > MAX_PENDING_WRITE {
                        reframed.clear();
                    }
                    let start = reframed.len();
                    assert!(push_frame(&mut reframed, frame));
                    assert_eq!(&reframed[start..], &stream[consumed..consumed + 2 + len]);
                    consumed += 2 + len;
                    frames += 1;
                }
                Frame::Partial => {
                    // Memory held for a partial frame is bounded by one frame.
                    assert!(stream.len() - consumed < 2 + MAX_FRAME);
                    break;
                }
                Frame::TooLarge => {
                    let len = u16::from_be_bytes([stream[consumed], stream[consumed + 1]]);
                    assert!(usize::from(len) > MAX_FRAME);
                    break 'reads;
                }
            }
        }
    }
    frames
}

/// The media plane's own handling of RTP and RTCP that rtc has already
/// decrypted: one subscriber's audio and video streams of one publisher,
/// the consult's speaker detector and arrival-time correction.
pub struct MediaPlane {
    layers: LayerForwarder,
    video: StreamRewriter,
    audio: StreamRewriter,
    speaker: SpeakerDetector<u8>,
    speakers: Vec<u8>,
    start: Instant,
    now: Instant,
}

impl Default for MediaPlane {
    fn default() -> Self {
        let now = Instant::now();
        MediaPlane {
            layers: LayerForwarder::new(Some(simulcast::TOP)),
            video: StreamRewriter::new(0x1111, 96, VIDEO_TS_STEP),
            audio: StreamRewriter::new(0x2222, 111, AUDIO_TS_STEP),
            speaker: SpeakerDetector::default(),
            speakers: Vec::new(),
            start: now,
            now,
        }
    }
}

impl MediaPlane {
    /// Let time pass.
    pub fn advance(&mut self, ms: u16) {
        self.now += Duration::from_millis(u64::from(ms));
    }

    /// The layer the subscriber should get (`None`: audio only).
    pub fn set_target(&mut self, layer: Option<u8>) {
        self.layers.set_target(layer.map(|l| l % LAYERS as u8));
    }

    /// One video RTP packet of `layer`, forwarded as `Peer::forward` does.
    /// Returns the rewritten payload when it was forwarded.
    pub fn video(&mut self, layer: u8, raw: &[u8]) -> Option<Vec<u8>> {
        let packet = rtp::Packet::unmarshal(&mut &raw[..]).ok()?;
        let layer = layer % LAYERS as u8;
        let vp8 = simulcast::parse_vp8(&packet.payload);
        let h = &packet.header;
        let verdict = self.layers.on_packet(
            layer,
            h.ssrc,
            h.sequence_number,
            h.timestamp,
            vp8.as_ref(),
            self.now,
        );
        let _ = self.layers.take_switched();
        let _ = self.layers.wants_keyframe();
        let Verdict::Forward(rewrite) = verdict else {
            return None;
        };
        let mut header = packet.header.clone();
        self.video.rewrite_to(&mut header, rewrite.seq, rewrite.ts);
        assert_eq!((header.ssrc, header.sequence_number), (0x1111, rewrite.seq));
        assert!(!header.extension && header.extensions.is_empty());
        let mut payload = packet.payload.to_vec();
        simulcast::patch_vp8(&mut payload, &rewrite);
        assert_eq!(payload.len(), packet.payload.len());
        // A late packet without a descriptor (repaired padding) is
        // forwarded as it is; otherwise renumbering changes numbers, never
        // the descriptor's shape.
        let Some(before) = vp8 else {
            assert_eq!(payload, packet.payload.to_vec());
            return Some(payload);
        };
        let after = simulcast::parse_vp8(&payload).expect("patched descriptor parses");
        assert_eq!(
            (after.frame_start, after.keyframe),
            (before.frame_start, before.keyframe)
        );
        assert_eq!(
            after.picture_id.map(|p| (p.long, p.offset)),
            before.picture_id.map(|p| (p.long, p.offset))
        );
        if let Some(p) = rewrite.picture_id {
            assert_eq!(after.picture_id.map(|a| a.value), Some(p.value));
        }
        if let Some((t, _)) = rewrite.tl0 {
            assert_eq!(after.tl0.map(|(v, _)| v), Some(t));
        }
        Some(payload)
    }

    /// One audio RTP packet from publisher `who`: its RFC 6464 level (with
    /// the extension id the answer negotiated) feeds the speaker detector,
    /// and the packet is rewritten for the subscriber.
    pub fn audio(&mut self, who: u8, level_ext: u8, raw: &[u8]) {
        let Ok(mut packet) = rtp::Packet::unmarshal(&mut &raw[..]) else {
            return;
        };
        let level = packet
            .header
            .get_extension(level_ext)
            .and_then(|b| b.first().map(|v| v & 0x7f));
        if let Some(level) = level {
            let who = who % 8;
            if !self.speakers.contains(&who) {
                self.speakers.push(who);
            }
            let _ = self.speaker.on_level(who, level, self.now);
            self.check_speaker();
        }
        self.audio.rewrite(&mut packet.header);
        assert_eq!(packet.header.ssrc, 0x2222);
        assert!(!packet.header.extension);
    }

    /// A participant leaves the speaker detector.
    pub fn leave(&mut self, who: u8) {
        let who = who % 8;
        self.speakers.retain(|s| *s != who);
        let _ = self.speaker.remove(who, self.now);
        let _ = self.speaker.evaluate(self.now);
        self.check_speaker();
    }

    fn check_speaker(&self) {
        if let Some(current) = self.speaker.current() {
            assert!(
                self.speakers.contains(&current),
                "dominant speaker {current} is not in the consult"
            );
        }
    }

    /// One RTCP compound from a subscriber, read as `Peer::drain` does.
    /// Returns whether it asks for a keyframe.
    pub fn rtcp(&mut self, raw: &[u8]) -> bool {
        let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut &raw[..]) else {
            return false;
        };
        for p in &packets {
            // What `Peer::drain` reads for the loss ceiling; the count field
            // is 5 bits, so a parsed report block list never exceeds 31.
            assert!(crate::peer::reception_reports(p.as_ref()).len() <= 31);
        }
        is_keyframe_request(&packets)
    }

    /// A kernel receive timestamp (`secs`, `nanos` since the epoch, as the
    /// control message carried it) turned into an arrival time.
    pub fn arrival(&self, secs: u64, nanos: u32, wall_offset_ms: i32) -> Instant {
        let kernel = (nanos < 1_000_000_000).then(|| Duration::new(secs, nanos));
        let wall = SystemTime::now();
        let wall = if wall_offset_ms >= 0 {
            wall + Duration::from_millis(wall_offset_ms as u64)
        } else {
            wall.checked_sub(Duration::from_millis(u64::from(
                wall_offset_ms.unsigned_abs(),
            )))
            .unwrap_or(UNIX_EPOCH)
        };
        let at = rx::arrival(self.now, wall, kernel);
        // Never in the future, never more than a second back.
        assert!(at <= self.now);
        assert!(self.now.duration_since(at) <= Duration::from_secs(1));
        let _ = self.start;
        at
    }
}

/// One participant's peer connection with our offer pending (a publisher
/// of audio and simulcast video, subscribed to another participant's two
/// tracks), to which [`AnswerHarness::answer`] gives a browser's answer.
pub struct AnswerHarness {
    peer: Peer,
    events: UnboundedReceiver<MediaEnvelope>,
    offer: String,
    now: Instant,
}

impl AnswerHarness {
    pub fn new() -> Result<AnswerHarness, String> {
        let now = Instant::now();
        let (tx, mut events) = unbounded_channel();
        let candidates = Candidates {
            announce_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            udp_port: 40000,
            tcp_port: Some(40001),
        };
        let subscriptions = [
            (1, "other".to_string(), Kind::Audio),
            (1, "other".to_string(), Kind::Video),
        ];
        let peer = Peer::join(
            "fuzz".into(),
            (0, "fuzz".into()),
            tx,
            candidates,
            &subscriptions,
            PeerOptions {
                simulcast: true,
                own_path: true,
            },
            now,
        )?;
        let offer = match events.try_recv().map(|e| e.event) {
            Ok(MediaEvent::Offer { sdp }) => sdp,
            other => return Err(format!("no offer from a new peer: {other:?}")),
        };
        Ok(AnswerHarness {
            peer,
            events,
            offer,
            now,
        })
    }

    /// The offer the browser would answer.
    pub fn offer(&self) -> &str {
        &self.offer
    }

    /// Apply `sdp` as the answer, then let the peer report what it learnt
    /// (tracks, simulcast layers). Returns whether it was accepted; either
    /// way the peer stays usable (a refused answer leaves the offer
    /// pending, an accepted one is followed by a fresh peer here).
    pub fn answer(&mut self, sdp: &str) -> bool {
        // Our own SDP edits keep every line they do not remove, whole.
        for edited in [
            simulcast::drop_echoed_simulcast(sdp),
            simulcast::keep_rid_bindings(sdp),
        ]
        .into_iter()
        .flatten()
        {
            assert!(edited.len() <= sdp.len());
            let mut lines = sdp.split_inclusive('\n');
            for kept in edited.split_inclusive('\n') {
                assert!(lines.any(|l| l == kept), "edit changed a line: {kept:?}");
            }
        }
        let offered = simulcast::offer_simulcast_recv(sdp);
        assert!(offered.len() >= sdp.len());
        self.now += Duration::from_millis(20);
        self.peer.answer(sdp.to_string(), self.now);
        let mut accepted = true;
        while let Ok(MediaEnvelope { event, .. }) = self.events.try_recv() {
            match event {
                MediaEvent::Error { .. } => accepted = false,
                MediaEvent::Offer { sdp } => self.offer = sdp,
                _ => {}
            }
        }
        let mut out = Vec::new();
        self.peer.drain(&mut out);
        for o in &out {
            if let PeerOutput::Rtp { layer, .. } | PeerOutput::KeyframeRequest { layer, .. } = o {
                assert!((*layer as usize) < LAYERS);
            }
        }
        self.peer.handle_timeout(self.now);
        while self.peer.poll_write().is_some() {}
        if accepted {
            // The next answer needs a fresh offer: a fresh peer, so that
            // state does not pile up over millions of runs.
            if let Ok(fresh) = AnswerHarness::new() {
                *self = fresh;
            }
        }
        accepted
    }
}

/// Our own outbound media path towards one subscriber, checked by a
/// receiver running rtc's SRTP with replay protection.
pub struct OwnPath {
    own: crate::media_out::OwnMedia,
    track: crate::media_out::TrackOut,
    receiver: rtc::srtp::context::Context,
    /// What went out, by sequence number (the last of each), for resends.
    sent: std::collections::HashMap<u16, Vec<u8>>,
    packets: u32,
    pool: crate::tx::BufferPool,
    /// The retransmission limit NACKs are answered within (a budget far
    /// above what the harness resends, so only repeats are held back).
    limit: crate::pacer::RetransmitLimit,
    seq: u16,
    now: Instant,
}

const OWN_SSRC: u32 = 0x5eed_0001;

/// Our AES-GCM SRTP and rtc's, on the same master key and salt (`replay`:
/// rtc's replay window, for a receiver).
fn srtp_pair(
    key: [u8; 16],
    salt: [u8; 12],
    replay: Option<usize>,
) -> (crate::srtp::Srtp, rtc::srtp::context::Context) {
    use rtc::srtp::protection_profile::ProtectionProfile;
    let provider = rtc::crypto::default_provider().expect("crypto provider");
    let profile = ProtectionProfile::AeadAes128Gcm;
    let ours = crate::srtp::Srtp::new(profile, &key, &salt, provider.crypto()).expect("keys");
    let replay = replay.map(rtc::srtp::option::srtp_replay_protection);
    let theirs =
        rtc::srtp::context::Context::new(&key, &salt, profile, replay, None, provider.crypto())
            .expect("rtc's context");
    (ours, theirs)
}

impl Default for OwnPath {
    fn default() -> Self {
        let (srtp, receiver) = srtp_pair([7; 16], [9; 12], Some(256));
        let mut own = crate::media_out::OwnMedia::new(srtp, crate::bwe::ReportingGcc::new().0);
        own.set_twcc_ext(Some(3));
        OwnPath {
            own,
            track: crate::media_out::TrackOut::new(90_000, Some(64)),
            receiver,
            sent: Default::default(),
            packets: 0,
            pool: Default::default(),
            limit: {
                let mut limit = crate::pacer::RetransmitLimit::default();
                limit.set_media_rate(1 << 40);
                limit
            },
            seq: 40_000,
            now: Instant::now(),
        }
    }
}

fn own_path_to() -> rtc::shared::TransportContext {
    let addr = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, 5004));
    rtc::shared::TransportContext {
        local_addr: addr,
        peer_addr: addr,
        transport_protocol: rtc::shared::TransportProtocol::UDP,
        ecn: None,
    }
}

impl OwnPath {
    /// Forward one packet: `step` moves the sequence number (-8..=119, so
    /// a run crosses rollovers and goes back a little, as the rewriter
    /// can); the body is the payload. Everything queued must decrypt to
    /// exactly the header we asked for and the payload.
    pub fn send(&mut self, step: u8, marker: bool, payload: &[u8]) {
        self.seq = self.seq.wrapping_add((step as i8 as i16 / 2 + 56) as u16);
        let p = crate::media_out::Outbound {
            ssrc: OWN_SSRC,
            seq: self.seq,
            timestamp: u32::from(self.seq) * 3000,
            marker,
            payload_type: 96,
            payload,
        };
        let sent = self.own.send(
            &mut self.track,
            &p,
            (Some(own_path_to()), &mut self.pool),
            self.now,
        );
        let Some(out) = self.own.poll() else {
            assert_eq!(sent, 0);
            return;
        };
        assert!(sent > 0 && self.own.poll().is_none());
        let plain = self
            .receiver
            .decrypt_rtp(&out.message)
            .expect("the receiver takes every packet we encrypt (an index is never used twice)");
        let mut b = &plain[..];
        let pkt = rtp::Packet::unmarshal(&mut b).expect("our packet parses");
        assert_eq!(pkt.header.ssrc, OWN_SSRC);
        assert_eq!(pkt.header.sequence_number, self.seq);
        assert_eq!(pkt.header.marker, marker);
        assert_eq!(&pkt.payload[..], payload);
        assert!(
            pkt.header.get_extension(3).is_some(),
            "transport-wide number"
        );
        self.sent.insert(self.seq, out.message.to_vec());
        self.packets += 1;
    }

    /// A NACK for the packets named in `body` (pairs of bytes: offsets
    /// back from the newest): what is resent is byte for byte what was
    /// sent, and a receiver that had it refuses it.
    pub fn nack(&mut self, body: &[u8]) {
        for back in body.chunks(2) {
            let back = u16::from_be_bytes([back[0], *back.get(1).unwrap_or(&0)]) % 256;
            let seq = self.seq.wrapping_sub(back);
            self.resend(seq);
            while let Some(out) = self.own.poll() {
                let cipher = self.sent.get(&seq).expect("resent only what was sent");
                assert_eq!(&out.message[..], &cipher[..], "a resend is the same bytes");
                assert!(
                    self.receiver.decrypt_rtp(&out.message).is_err(),
                    "a receiver that had it takes it as a replay"
                );
            }
        }
    }

    /// Queue a resend of `seq`, as a NACK for it would.
    fn resend(&mut self, seq: u16) {
        let path = (Some(own_path_to()), &mut self.pool);
        let limit = &mut self.limit;
        self.own
            .resend((&self.track, OWN_SSRC, seq), path, limit, self.now);
    }

    /// Raw RTCP from the subscriber (after SRTCP): transport-wide
    /// feedback into the estimator, NACKs into resends. Returns whether it
    /// parsed.
    pub fn rtcp(&mut self, raw: &[u8]) -> bool {
        use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
        use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
        let mut buf = raw;
        let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut buf) else {
            return false;
        };
        for p in &packets {
            if let Some(fb) = p.as_any().downcast_ref::<TransportLayerCc>() {
                self.own.feedback(fb, self.now);
                // NACKs held for this feedback that it reported lost: the
                // peer resends them (`Peer::resend_due`).
                let mut due = Vec::new();
                self.own.take_due(&mut due);
                assert!(due.len() <= 64, "held NACKs are bounded");
                for (ssrc, seq) in due {
                    assert_eq!(ssrc, OWN_SSRC, "due only for what we sent");
                    self.resend(seq);
                }
            } else if let Some(n) = p.as_any().downcast_ref::<TransportLayerNack>() {
                for pair in &n.nacks {
                    for seq in *pair {
                        self.resend(seq);
                    }
                }
            }
            while let Some(out) = self.own.poll() {
                assert!(
                    self.sent.values().any(|c| c[..] == out.message[..]),
                    "a NACK resent something never sent"
                );
            }
        }
        true
    }

    /// Time passing (ms), with the once-a-second housekeeping.
    pub fn advance(&mut self, ms: u16) {
        self.now += Duration::from_millis(u64::from(ms));
        self.own.tick(self.now);
        let report = self
            .track
            .sender_report(OWN_SSRC, self.now, SystemTime::now());
        assert_eq!(
            report.map(|r| r.packet_count),
            (self.packets > 0).then_some(self.packets)
        );
    }
}

/// Our own inbound media path from one publisher: a sender running rtc's
/// SRTP (the browser's side) and [`crate::inbound::OwnInbound`].
pub struct InboundPath {
    inbound: crate::inbound::OwnInbound,
    sender: rtc::srtp::context::Context,
    /// Ciphertext and payload sent per (stream, sequence number), and
    /// whether it was taken.
    sent: std::collections::HashMap<(usize, u16), Sent>,
    seq: [u16; 2],
    twcc: u16,
    now: Instant,
    rtcp: Vec<Box<dyn rtc::rtcp::Packet>>,
    /// Video sequence numbers stepped over so far, those taken, and those
    /// taken late (after a newer one was sent): what was given up on never
    /// exceeds the numbers not taken plus those that came late (a hole is
    /// given up after a second and its packet may still arrive after).
    video_spanned: u64,
    video_taken: u64,
    video_late: u64,
    given_up: u64,
}

/// Ciphertext, payload, taken.
type Sent = (Vec<u8>, Vec<u8>, bool);

/// Audio (no NACKs) and one video stream.
const IN_SSRC: [u32; 2] = [0x0a0d_1001, 0x0b1d_e002];

impl Default for InboundPath {
    fn default() -> Self {
        let (srtp, sender) = srtp_pair([3; 16], [5; 12], None);
        let mut inbound = crate::inbound::OwnInbound::new(srtp, Some(3));
        inbound.add(IN_SSRC[0], 48_000, false);
        inbound.add(IN_SSRC[1], 90_000, true);
        InboundPath {
            inbound,
            sender,
            sent: Default::default(),
            seq: [65_000, 100],
            twcc: 65_500,
            now: Instant::now(),
            rtcp: Vec::new(),
            video_spanned: 0,
            video_taken: 0,
            video_late: 0,
            given_up: 0,
        }
    }
}

impl InboundPath {
    /// The publisher sends a packet on stream `stream % 2`, `step`
    /// (1..=64) numbers on; `deliver`: it arrives (else it is lost, for
    /// now). What arrives must come out exactly as sent.
    pub fn publish(&mut self, stream: u8, step: u8, deliver: bool, payload: &[u8]) {
        let s = usize::from(stream % 2);
        self.seq[s] = self.seq[s].wrapping_add(u16::from(step % 64) + 1);
        if s == 1 {
            self.video_spanned += u64::from(step % 64) + 1;
        }
        self.twcc = self.twcc.wrapping_add(1);
        let seq = self.seq[s];
        let mut plain = vec![0x90, 111];
        plain.extend_from_slice(&seq.to_be_bytes());
        plain.extend_from_slice(&(u32::from(seq) * 960).to_be_bytes());
        plain.extend_from_slice(&IN_SSRC[s].to_be_bytes());
        let t = self.twcc.to_be_bytes();
        plain.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x31, t[0], t[1], 0]);
        plain.extend_from_slice(payload);
        let Ok(cipher) = self.sender.encrypt_rtp(&plain) else {
            return;
        };
        self.sent
            .insert((s, seq), (cipher.to_vec(), payload.to_vec(), false));
        if deliver {
            self.deliver(s, seq, false);
        }
    }

    /// Deliver what was sent as (`stream`, `seq`) (a late arrival, a
    /// resend or a replay): taken once, refused after.
    fn deliver(&mut self, s: usize, seq: u16, late: bool) {
        let Some((cipher, payload, taken)) = self.sent.get(&(s, seq)).cloned() else {
            return;
        };
        let result = self
            .inbound
            .read(BytesMut::from(&cipher[..]), Some(1), self.now);
        match result {
            Ok((m, _)) => {
                assert!(!taken, "a replay of {seq} was taken");
                assert_eq!((m.ssrc, m.seq), (IN_SSRC[s], seq));
                assert_eq!(&m.payload[..], &payload[..]);
                if let Some(e) = self.sent.get_mut(&(s, seq)) {
                    e.2 = true;
                }
                self.video_taken += u64::from(s == 1);
                self.video_late += u64::from(s == 1 && late);
            }
            // Taken before, or too far behind the newest to tell.
            Err(crate::inbound::Refused::Replay) => {}
            Err(e) => panic!("a genuine packet was refused: {e:?}"),
        }
    }

    /// Send again something sent `back` packets ago on `stream` (lost
    /// then, or a replay now).
    pub fn again(&mut self, stream: u8, back: u8) {
        let s = usize::from(stream % 2);
        let seq = self.seq[s].wrapping_sub(u16::from(back));
        self.deliver(s, seq, back > 0);
    }

    /// A changed or cut copy of the last packet of `stream`, or bytes of
    /// our own with a stream's SSRC: always refused.
    pub fn hostile(&mut self, stream: u8, body: &[u8]) {
        let s = usize::from(stream % 2);
        let bytes = match (self.sent.get(&(s, self.seq[s])), body) {
            (Some((cipher, ..)), [at, flip, cut, ..]) => {
                let mut b = cipher.clone();
                let i = usize::from(*at) % b.len();
                b[i] ^= flip | 1;
                b.truncate(b.len() - usize::from(*cut) % 8);
                b
            }
            _ => {
                let mut b = body.to_vec();
                if b.len() >= 12 {
                    b[8..12].copy_from_slice(&IN_SSRC[s].to_be_bytes());
                }
                b
            }
        };
        let r = self
            .inbound
            .read(BytesMut::from(&bytes[..]), Some(1), self.now);
        assert!(r.is_err(), "a changed or invented packet was taken");
    }

    /// Time passing (ms): the feedback due is valid RTCP, NACKs name only
    /// packets never taken, and packets given up on are video only and
    /// never more than the video numbers not taken.
    pub fn advance(&mut self, ms: u16) {
        use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
        self.now += Duration::from_millis(u64::from(ms));
        self.inbound
            .feedback
            .handle_timeout(self.now, &mut self.rtcp);
        while let Some((ssrc, n)) = self.inbound.feedback.take_unrepaired() {
            assert_eq!(ssrc, IN_SSRC[1], "given up on a stream without NACKs");
            self.given_up += u64::from(n);
        }
        assert!(
            self.given_up <= self.video_spanned.saturating_sub(self.video_taken) + self.video_late,
            "{} given up of {} numbers, {} taken ({} late)",
            self.given_up,
            self.video_spanned,
            self.video_taken,
            self.video_late
        );
        for p in self.rtcp.drain(..) {
            let bytes = p.marshal().expect("our feedback marshals");
            let back = rtc::rtcp::packet::unmarshal(&mut &bytes[..]).expect("and parses");
            assert_eq!(back.len(), 1);
            if let Some(n) = p.as_any().downcast_ref::<TransportLayerNack>() {
                let s = IN_SSRC.iter().position(|x| *x == n.media_ssrc);
                assert_eq!(s, Some(1), "NACKs only for video");
                for pair in &n.nacks {
                    for seq in *pair {
                        let taken = self.sent.get(&(1, seq)).is_some_and(|e| e.2);
                        assert!(!taken, "NACK for {seq}, which arrived");
                    }
                }
            }
        }
    }
}

/// Our own inbound SRTCP from one peer: a sender running rtc's SRTCP
/// (the browser's side) and [`crate::rtcp_in::Srtcp`], AES-GCM or
/// AES-CM.
pub struct RtcpInPath {
    srtcp: crate::rtcp_in::Srtcp,
    sender: rtc::srtp::context::Context,
    /// Per sending SSRC, what was sent under index `i + 1` (rtc numbers
    /// from 1): ciphertext, plaintext, taken.
    sent: Vec<Vec<Sent>>,
    /// Per sending SSRC: the highest index taken.
    highest: Vec<Option<usize>>,
    /// Sending SSRCs that took a packet (hold a window), in order.
    placed: Vec<usize>,
    /// Refusals expected since the last check: replays, failed
    /// authentication, malformed, too many SSRCs.
    refused: [u64; 4],
}

/// More sending SSRCs than the table holds.
const RTCP_SSRCS: usize = crate::rtcp_in::MAX_SSRCS + 4;

fn rtcp_ssrc(s: usize) -> u32 {
    0x5c7c_0000 + s as u32
}

impl RtcpInPath {
    pub fn new(aes_cm: bool) -> RtcpInPath {
        use rtc::srtp::protection_profile::ProtectionProfile;
        let (profile, salt) = if aes_cm {
            (ProtectionProfile::Aes128CmHmacSha1_80, &[6u8; 14][..])
        } else {
            (ProtectionProfile::AeadAes128Gcm, &[6u8; 12][..])
        };
        let provider = rtc::crypto::default_provider().expect("crypto provider");
        let key = [4u8; 16];
        let srtcp =
            crate::rtcp_in::Srtcp::new(profile, &key, salt, provider.crypto()).expect("our SRTCP");
        let sender =
            rtc::srtp::context::Context::new(&key, salt, profile, None, None, provider.crypto())
                .expect("rtc's context");
        RtcpInPath {
            srtcp,
            sender,
            sent: vec![Vec::new(); RTCP_SSRCS],
            highest: vec![None; RTCP_SSRCS],
            placed: Vec::new(),
            refused: [0; 4],
        }
    }

    /// The peer sends `body` as compound RTCP from SSRC `ssrc` (version
    /// and SSRC forced, at least 8 bytes); `deliver`: it arrives (else it
    /// is lost, for now).
    pub fn send(&mut self, ssrc: u8, deliver: bool, body: &[u8]) {
        let s = usize::from(ssrc) % RTCP_SSRCS;
        let mut plain = body[..body.len().min(1200)].to_vec();
        plain.resize(plain.len().max(8), 0);
        plain[0] = 0x80 | (plain[0] & 0x3f);
        plain[4..8].copy_from_slice(&rtcp_ssrc(s).to_be_bytes());
        let Ok(cipher) = self.sender.encrypt_rtcp(&plain) else {
            return;
        };
        self.sent[s].push((cipher.to_vec(), plain, false));
        if deliver {
            self.deliver(s, self.sent[s].len());
        }
    }

    /// Deliver what was sent from SSRC `s` under `index` (a late arrival,
    /// a replay): taken exactly when it should be, as it was sent.
    fn deliver(&mut self, s: usize, index: usize) {
        use crate::rtcp_in::SrtcpRefused;
        let Some((cipher, plain, taken)) = index
            .checked_sub(1)
            .and_then(|i| self.sent[s].get(i))
            .cloned()
        else {
            return;
        };
        let expected = if taken || self.highest[s].is_some_and(|h| h >= index + 128) {
            Err(SrtcpRefused::Replay)
        } else if !self.placed.contains(&s) && self.placed.len() == crate::rtcp_in::MAX_SSRCS {
            Err(SrtcpRefused::TooManySsrcs)
        } else {
            Ok(())
        };
        let mut buf = cipher.clone();
        let result = if index.is_multiple_of(2) {
            // Decrypt, then read: the plaintext as sent.
            self.srtcp.unprotect(&mut buf).map(|len| {
                assert_eq!(&buf[..len], &plain[..], "decrypts to what was sent");
                let _ = digest(&buf[..len]);
            })
        } else {
            // Both at once, as the worker would: the same items as
            // reading the plaintext; RTCP that does not parse is refused
            // (as malformed) after it authenticated.
            let mut items = Vec::new();
            let r = self.srtcp.read(&mut buf, |r| items.push(item(r)));
            match (r, digest(&plain)) {
                (Err(SrtcpRefused::Malformed), None) if expected.is_ok() => {
                    self.refused[2] += 1;
                    Ok(())
                }
                (Ok(()), read) => {
                    assert_eq!(Some(items), read, "read as the plaintext reads");
                    Ok(())
                }
                (r, _) => r,
            }
        };
        assert_eq!(result, expected, "packet {index} of SSRC {s}");
        match expected {
            Ok(()) => {
                self.sent[s][index - 1].2 = true;
                self.highest[s] = Some(self.highest[s].map_or(index, |h| h.max(index)));
                if !self.placed.contains(&s) {
                    self.placed.push(s);
                }
            }
            Err(SrtcpRefused::Replay) => self.refused[0] += 1,
            Err(_) => self.refused[3] += 1,
        }
        self.check_counts();
    }

    /// Deliver again what SSRC `ssrc` sent `back` packets ago.
    pub fn again(&mut self, ssrc: u8, back: u8) {
        let s = usize::from(ssrc) % RTCP_SSRCS;
        if let Some(index) = self.sent[s].len().checked_sub(usize::from(back)) {
            self.deliver(s, index);
        }
    }

    /// A changed or cut copy of the last packet of `ssrc`, or bytes of our
    /// own from that SSRC: always refused, counted once, nothing taken.
    pub fn hostile(&mut self, ssrc: u8, body: &[u8]) {
        let s = usize::from(ssrc) % RTCP_SSRCS;
        let bytes = match (self.sent[s].last(), body) {
            (Some((cipher, ..)), [at, flip, cut, ..]) => {
                let mut b = cipher.clone();
                let i = usize::from(*at) % b.len();
                b[i] ^= flip | 1;
                b.truncate(b.len() - usize::from(*cut) % 8);
                b
            }
            _ => {
                let mut b = body.to_vec();
                if b.len() >= 8 {
                    b[4..8].copy_from_slice(&rtcp_ssrc(s).to_be_bytes());
                }
                b
            }
        };
        let mut buf = bytes;
        let r = self.srtcp.unprotect(&mut buf);
        assert!(r.is_err(), "a changed or invented packet was taken");
        let [replay, auth, malformed] = self.srtcp.take_refused();
        assert_eq!(replay + auth + malformed, 1, "counted once");
        self.check_counts();
    }

    /// Plain RTCP of any shape: read without a panic; a refusal visits
    /// nothing; what is read reads the same twice.
    pub fn parse(&mut self, bytes: &[u8]) {
        let _ = digest(bytes);
    }

    fn check_counts(&mut self) {
        let [replay, auth, malformed, ssrcs] = std::mem::take(&mut self.refused);
        assert_eq!(self.srtcp.take_refused(), [replay, auth, malformed]);
        assert_eq!(self.srtcp.take_too_many_ssrcs(), ssrcs);
    }
}

/// An item of our RTCP reading, owned: what it says, the numbers a NACK
/// names, a feedback's acknowledgements.
#[derive(Debug, PartialEq)]
enum Item {
    Plain(String),
    Nack(u32, Vec<u16>),
    Twcc(u32, Vec<(u16, bool, Option<Duration>)>),
}

fn item(r: crate::rtcp_in::Rtcp<'_>) -> Item {
    use crate::rtcp_in::Rtcp;
    match r {
        Rtcp::Nack(n) => {
            let seqs: Vec<u16> = n.seqs().collect();
            assert!(seqs.len() >= n.pairs().count() && seqs.len() <= 17 * n.pairs().count());
            Item::Nack(n.media_ssrc, seqs)
        }
        Rtcp::Twcc(fb) => {
            let mut acks = Vec::new();
            fb.for_each_ack(|seq, arrived, arrival| acks.push((seq, arrived, arrival)));
            assert_eq!(acks, fb.acks().collect::<Vec<_>>());
            if let Some(first) = acks.first() {
                assert_eq!(first.0, fb.base_sequence_number);
            }
            assert!(acks.len() >= usize::from(fb.packet_status_count));
            assert!(
                acks.iter().all(|a| a.1 || a.2.is_none()),
                "lost, with a time"
            );
            Item::Twcc(fb.media_ssrc, acks)
        }
        other => {
            let _ = other.is_keyframe_request();
            Item::Plain(format!("{other:?}"))
        }
    }
}

/// Read `rtcp` (twice: the same both times); `None` if refused, having
/// visited nothing.
fn digest(rtcp: &[u8]) -> Option<Vec<Item>> {
    let mut items = Vec::new();
    let r = crate::rtcp_in::parse(rtcp, |r| items.push(item(r)));
    if r.is_err() {
        assert!(items.is_empty(), "items visited before a refusal");
        return None;
    }
    let mut again = Vec::new();
    crate::rtcp_in::parse(rtcp, |r| again.push(item(r))).expect("reads again");
    assert_eq!(items, again);
    Some(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_path_harness_checks_what_it_claims() {
        let mut h = OwnPath::default();
        for i in 0..2_000u32 {
            h.send((i * 37 % 256) as u8, i % 7 == 0, &[i as u8; 30]);
            if i % 50 == 0 {
                h.nack(&[0, (i % 5) as u8, 0, 3]);
                h.advance(250);
            }
        }
        assert!(h.sent.len() > 1_000);
        // A NACK from the wire, and garbage.
        let nack = [0x81, 205, 0, 3, 0, 0, 0, 1, 0x5e, 0xed, 0, 1, 0, 0, 0, 0];
        let mut nack = nack.to_vec();
        let newest = h.seq;
        nack[12..14].copy_from_slice(&newest.to_be_bytes());
        assert!(h.rtcp(&nack));
        assert!(!h.rtcp(&[0x80, 1, 2]));
    }

    #[test]
    fn inbound_harness_checks_what_it_claims() {
        let mut h = InboundPath::default();
        for i in 0..3_000u32 {
            h.publish((i % 3) as u8, (i % 5) as u8, i % 11 != 0, &[i as u8; 40]);
            if i % 7 == 0 {
                h.again(1, (i % 4) as u8);
                h.hostile(1, &[i as u8, 0x10, 2]);
                h.hostile(0, &[]);
            }
            if i % 40 == 0 {
                h.advance(30);
            }
        }
        let taken = h.sent.values().filter(|e| e.2).count();
        assert!(taken > 2_500, "{taken} taken");
        assert!(h.sent.values().any(|e| !e.2), "some were lost");
    }

    #[test]
    fn a_packet_given_up_on_may_still_arrive_late() {
        // Video 1 and 3 arrive, 2 is lost; a second later 2 is given up
        // on (a keyframe is asked for), then it arrives after all: taken,
        // and the harness must not call that a bookkeeping error.
        let mut h = InboundPath::default();
        h.publish(1, 0, true, &[0xaa]);
        h.publish(1, 0, false, &[0xaa]);
        h.publish(1, 0, true, &[0xaa]);
        h.advance(1_020);
        assert_eq!(h.given_up, 1, "the hole was given up on");
        h.again(1, 1);
        assert_eq!(
            (h.video_taken, h.video_late),
            (3, 1),
            "the late packet was taken"
        );
        h.advance(0);
    }

    #[test]
    fn rtcp_in_harness_checks_what_it_claims() {
        for aes_cm in [false, true] {
            let mut h = RtcpInPath::new(aes_cm);
            // A receiver report with one block, and a PLI.
            let rr = [
                0x81, 201, 0, 7, 0, 0, 0, 0, 0, 0, 0, 9, 0x20, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 5, 0,
                0, 0, 0, 0, 0, 0, 0, 0x81, 206, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9,
            ];
            for i in 0..3_000u32 {
                let ssrc = (i % 41) as u8;
                let mut body = rr.to_vec();
                body[12] = i as u8;
                if i % 9 == 0 {
                    body.truncate(20); // does not parse
                }
                h.send(ssrc, i % 7 != 0, &body);
                if i % 5 == 0 {
                    h.again(ssrc, (i % 4) as u8);
                    h.hostile(ssrc, &[i as u8, 0x10, (i % 3) as u8]);
                    h.hostile(ssrc, &[]);
                    h.parse(&body);
                }
            }
            let taken = h.sent.iter().flatten().filter(|e| e.2).count();
            assert!(taken > 1_500, "{taken} taken");
            assert_eq!(h.placed.len(), crate::rtcp_in::MAX_SSRCS);
        }
    }

    #[test]
    fn answer_harness_accepts_a_real_chromium_answer_and_refuses_garbage() {
        let mut harness = AnswerHarness::new().expect("a peer with an offer");
        assert!(harness.offer().contains("a=simulcast:recv h;m;l"));
        assert!(!harness.answer("v=0\r\nm=video 9 junk\r\n"));
        let chromium = include_str!("../../fuzz/corpus/sdp_answer/chromium-simulcast-answer.sdp");
        assert!(harness.answer(chromium), "the sdp_answer seed is refused");
    }

    #[test]
    fn ice_tcp_stream_reassembles_frames_cut_anywhere() {
        let mut wire = Vec::new();
        assert!(push_frame(&mut wire, b"first"));
        assert!(push_frame(&mut wire, b"second frame"));
        let (a, b) = wire.split_at(3);
        assert_eq!(ice_tcp_stream([a, b]), 2);
        assert_eq!(ice_tcp_stream([&[0xff, 0xff, 0][..]]), 0);
    }
}
