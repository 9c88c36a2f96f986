//! An endpoint's own media path, for the load generator
//! (`loadtest/src/media.rs`): what a browser's WebRTC stack does with
//! media once DTLS has keyed SRTP, built from the SFU's own parts, so a
//! generator peer does not spend its core in rtc's RTP pipeline (the
//! generator, on one pinned core, saturated at ~100 consults while the
//! server under test had room; docs/BENCHMARKS.md). Not an API: hidden
//! from the docs and free to change with the code it reaches.
//!
//! Sending: RTP built and SRTP-encrypted in place ([`Endpoint::protect`];
//! `srtp.rs`, `media_out.rs`'s `Outbound` and `TrackOut`) with a
//! transport-wide sequence number on every packet, padding included, as
//! libwebrtc does; video kept in a ring for the server's NACKs; a sender
//! report per track once a second. Receiving: SRTP decrypted and
//! replay-checked (`inbound.rs`), transport-wide CC feedback, NACKs and
//! receiver reports back (`media_in.rs`), SRTCP read (`rtcp_in.rs`) and
//! written (`rtcp_out.rs`). ICE, DTLS and SDP stay rtc's: a datagram that
//! is not SRTP or SRTCP is handed back ([`Read::NotMedia`]).
//!
//! The safety rule of `srtp.rs` and `rtcp_out.rs` holds here too: once an
//! endpoint exists, nothing is sent through rtc's SRTP or SRTCP (the
//! generator builds such peers without rtc's interceptors and writes no
//! RTP through rtc).

use crate::inbound::OwnInbound;
/// One RTP packet to send ([`Endpoint::protect`]).
pub use crate::media_out::Outbound as RtpOut;
use crate::media_out::{TrackOut, twcc_ext_id};
use crate::rtcp_in::{Rtcp, Srtcp};
use crate::rtcp_out::{SrtcpOut, marshal_into};
pub use crate::srtp::OWN_PROFILES as SRTP_PROFILES;
use crate::srtp::Srtp;
use bytes::BytesMut;
use rtc::peer_connection::transport::SrtpSessionKeys;
use rtc::rtcp::packet::Packet;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use std::time::{Duration, Instant, SystemTime};

/// Video packets kept per track for NACKs (~1.3 s of 1.2 Mbit/s).
const RING: u16 = 256;
/// Sequence numbers of one NACK answered at most.
const NACKED_MAX: usize = 64;
const SR_INTERVAL: Duration = Duration::from_secs(1);
const VIDEO_CLOCK: u32 = 90_000;
const AUDIO_CLOCK: u32 = 48_000;

/// What an endpoint counted since the last [`Endpoint::take_counters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Transport-wide CC feedback packets sent (for what we received).
    pub twcc_sent: u64,
    /// Transport-wide CC feedback packets received (for what we sent).
    pub twcc_received: u64,
    /// NACK packets sent.
    pub nacks_sent: u64,
    /// Packets resent for the remote side's NACKs.
    pub resent: u64,
    /// Padding-only packets sent.
    pub padding_sent: u64,
    /// SRTP and SRTCP datagrams refused (replay, authentication,
    /// malformed) and packets we failed to build.
    pub refused: u64,
}

/// What [`Endpoint::read`] made of a datagram.
#[derive(Debug)]
pub enum Read {
    /// A media packet, decrypted: its SSRC and payload (header and
    /// padding cut off; empty for padding).
    Media { ssrc: u32, payload: BytesMut },
    /// SRTCP, read (feedback counted, NACKs answered through `send`).
    Rtcp,
    /// Refused: a replay, failed authentication, malformed.
    Refused,
    /// Not SRTP or SRTCP (STUN, DTLS): for rtc.
    NotMedia(BytesMut),
}

/// One endpoint's media path, from DTLS completion on.
pub struct Endpoint {
    srtp_out: Srtp,
    inbound: OwnInbound,
    srtcp_in: Srtcp,
    srtcp_out: SrtcpOut,
    /// Our sending tracks: SSRC and state.
    tracks: Vec<(u32, TrackOut)>,
    /// Our video SSRC (the track NACKs are answered for).
    video: Option<u32>,
    twcc_ext: Option<u8>,
    twcc_seq: u16,
    /// Payload types of the video we receive (90 kHz, NACKed).
    video_pts: Vec<u8>,
    rtcp: Vec<Box<dyn Packet>>,
    rtcp_buf: Vec<u8>,
    nacked: Vec<u16>,
    next_sr: Instant,
    counters: Counters,
}

impl Endpoint {
    /// The path on `keys` (rtc's `srtp_session_keys()` after DTLS): we
    /// send on `audio` and `video` (SSRCs; `None`: we do not publish), the
    /// transport-wide CC extension id is the one `remote_sdp` (the other
    /// side's offer or answer) names, and `video_pts` are the payload types
    /// of the video we receive.
    pub fn new(
        keys: &SrtpSessionKeys,
        (audio, video): (Option<u32>, Option<u32>),
        remote_sdp: &str,
        video_pts: &[u8],
        now: Instant,
    ) -> Result<Endpoint, String> {
        let provider = rtc::crypto::default_provider().map_err(|e| e.to_string())?;
        let crypto = provider.crypto();
        let err = |e| format!("{e:?} ({:?})", keys.profile);
        let (local, remote) = (
            (&keys.local_master_key[..], &keys.local_master_salt[..]),
            (&keys.remote_master_key[..], &keys.remote_master_salt[..]),
        );
        let twcc_ext = twcc_ext_id(remote_sdp).filter(|id| (1..=14).contains(id));
        let mut tracks = Vec::new();
        if let Some(ssrc) = audio {
            tracks.push((ssrc, TrackOut::new(AUDIO_CLOCK, None)));
        }
        if let Some(ssrc) = video {
            tracks.push((ssrc, TrackOut::new(VIDEO_CLOCK, Some(RING))));
        }
        Ok(Endpoint {
            srtp_out: Srtp::new(keys.profile, local.0, local.1, crypto).map_err(err)?,
            inbound: OwnInbound::new(
                Srtp::new(keys.profile, remote.0, remote.1, crypto).map_err(err)?,
                twcc_ext,
            ),
            srtcp_in: Srtcp::new(keys.profile, remote.0, remote.1, crypto).map_err(err)?,
            srtcp_out: SrtcpOut::new(keys.profile, local.0, local.1, crypto).map_err(err)?,
            tracks,
            video,
            twcc_ext,
            twcc_seq: 0,
            video_pts: video_pts.to_vec(),
            rtcp: Vec::new(),
            rtcp_buf: Vec::new(),
            nacked: Vec::with_capacity(NACKED_MAX),
            next_sr: now + SR_INTERVAL,
            counters: Counters::default(),
        })
    }

    /// The transport-wide CC extension id in use (`None`: none agreed).
    pub fn twcc_ext(&self) -> Option<u8> {
        self.twcc_ext
    }

    /// A renegotiation: the other side's new offer or answer and the
    /// payload types of the video we receive now. Streams taken already
    /// keep their kind.
    pub fn update(&mut self, remote_sdp: &str, video_pts: &[u8]) {
        self.twcc_ext = twcc_ext_id(remote_sdp).filter(|id| (1..=14).contains(id));
        self.inbound.set_twcc_ext(self.twcc_ext);
        self.video_pts.clear();
        self.video_pts.extend_from_slice(video_pts);
    }

    /// Counters since the last call.
    pub fn take_counters(&mut self) -> Counters {
        std::mem::take(&mut self.counters)
    }

    /// Build `p` into `buf` (emptied first) as an SRTP datagram to send;
    /// with `padding`, a padding-only packet instead of `p`'s payload
    /// (libwebrtc's bandwidth probes: 4 bytes of padding, the P bit set).
    /// `false` (counted as refused) for an SSRC we do not send on or a
    /// sequence number used already.
    pub fn protect(
        &mut self,
        p: &RtpOut<'_>,
        padding: bool,
        buf: &mut BytesMut,
        now: Instant,
    ) -> bool {
        let Some((_, track)) = self.tracks.iter_mut().find(|(s, _)| *s == p.ssrc) else {
            self.counters.refused += 1;
            return false;
        };
        let Some(index) = track.claim(p.seq) else {
            self.counters.refused += 1;
            return false;
        };
        const PADDING: [u8; 4] = [0, 0, 0, 4];
        let out = RtpOut {
            payload: if padding { &PADDING } else { p.payload },
            ..*p
        };
        buf.clear();
        let twcc = self.twcc_ext.map(|id| (id, self.twcc_seq));
        out.write_into(buf, twcc);
        if padding {
            buf[0] |= 0x20;
        }
        let len = buf.len();
        buf.resize(len + self.srtp_out.overhead(), 0);
        let Ok(total) = self.srtp_out.protect(buf, len, (index >> 16) as u32) else {
            buf.clear();
            self.counters.refused += 1;
            return false;
        };
        buf.truncate(total);
        if twcc.is_some() {
            self.twcc_seq = self.twcc_seq.wrapping_add(1);
        }
        if padding {
            self.counters.padding_sent += 1;
        } else {
            track.sent((p.seq, p.timestamp, p.payload.len()), buf, now);
        }
        true
    }

    /// Take one received datagram. NACK answers (our stored ciphertext)
    /// go out through `send`.
    pub fn read(&mut self, datagram: BytesMut, now: Instant, send: impl FnMut(&[u8])) -> Read {
        match datagram.first() {
            Some(128..=191) => {}
            _ => return Read::NotMedia(datagram),
        }
        if datagram.get(1).is_some_and(|b| (192..=223).contains(b)) {
            return self.read_rtcp(datagram, now, send);
        }
        let ssrc = match datagram.get(8..12) {
            Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            None => {
                self.counters.refused += 1;
                return Read::Refused;
            }
        };
        // A new SSRC is taken on trial: kept only if its first packet
        // authenticates, so forged datagrams can neither fill the table
        // (`inbound.rs`'s MAX_STREAMS) nor fix a real stream's kind.
        let trial = !self.inbound.knows(ssrc);
        if trial {
            let video = self.video_pts.contains(&(datagram[1] & 0x7f));
            let clock = if video { VIDEO_CLOCK } else { AUDIO_CLOCK };
            if !self.inbound.add(ssrc, clock, video) {
                self.counters.refused += 1;
                return Read::Refused;
            }
        }
        match self.inbound.read(datagram, None, now) {
            Ok((media, _)) => Read::Media {
                ssrc: media.ssrc,
                payload: media.payload,
            },
            Err(_) => {
                if trial {
                    self.inbound.remove(ssrc);
                }
                self.counters.refused += 1;
                Read::Refused
            }
        }
    }

    fn read_rtcp(
        &mut self,
        mut datagram: BytesMut,
        now: Instant,
        mut send: impl FnMut(&[u8]),
    ) -> Read {
        let (mut twcc, mut srs) = (0, [(0u32, 0u64); 4]);
        let mut n_srs = 0;
        self.nacked.clear();
        let (video, nacked) = (self.video, &mut self.nacked);
        let result = self.srtcp_in.read(&mut datagram[..], |rtcp| match rtcp {
            Rtcp::Twcc(_) => twcc += 1,
            // Only our video keeps a ring to answer from.
            Rtcp::Nack(n) if video == Some(n.media_ssrc) => {
                let room = NACKED_MAX - nacked.len();
                nacked.extend(n.seqs().take(room));
            }
            Rtcp::SenderReport { ssrc, ntp_time } if n_srs < srs.len() => {
                srs[n_srs] = (ssrc, ntp_time);
                n_srs += 1;
            }
            _ => {}
        });
        if result.is_err() {
            self.counters.refused += 1;
            return Read::Refused;
        }
        self.counters.twcc_received += twcc;
        for &(ssrc, ntp) in &srs[..n_srs] {
            self.inbound.feedback.on_sender_report(ssrc, ntp, now);
        }
        if let Some((_, track)) = self.tracks.iter().find(|(s, _)| Some(*s) == video) {
            for &seq in &self.nacked {
                if let Some(bytes) = track.held(seq) {
                    send(bytes);
                    self.counters.resent += 1;
                }
            }
        }
        Read::Rtcp
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has work.
    pub fn poll_timeout(&self) -> Instant {
        self.inbound
            .feedback
            .poll_timeout()
            .map_or(self.next_sr, |t| t.min(self.next_sr))
    }

    /// Feedback and reports due at `now`, as one SRTCP datagram through
    /// `send`.
    pub fn handle_timeout(&mut self, now: Instant, mut send: impl FnMut(&[u8])) {
        self.rtcp.clear();
        if self
            .inbound
            .feedback
            .poll_timeout()
            .is_some_and(|t| t <= now)
        {
            self.inbound.feedback.handle_timeout(now, &mut self.rtcp);
        }
        if self.next_sr <= now {
            self.next_sr = now + SR_INTERVAL;
            let wall = SystemTime::now();
            for (ssrc, track) in &self.tracks {
                if let Some(sr) = track.sender_report(*ssrc, now, wall) {
                    self.rtcp.push(Box::new(sr));
                }
            }
        }
        if self.rtcp.is_empty() {
            return;
        }
        if marshal_into(&self.rtcp, &mut self.rtcp_buf).is_err()
            || self.srtcp_out.protect(&mut self.rtcp_buf).is_err()
        {
            self.counters.refused += 1;
            return;
        }
        for p in &self.rtcp {
            let any = p.as_any();
            if any.is::<TransportLayerCc>() {
                self.counters.twcc_sent += 1;
            } else if any.is::<TransportLayerNack>() {
                self.counters.nacks_sent += 1;
            }
        }
        send(&self.rtcp_buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::srtp::protection_profile::ProtectionProfile;

    const SDP: &str = "v=0\r\na=extmap:5 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n";
    const VIDEO_PT: u8 = 96;

    /// Two endpoints keyed as the two ends of one DTLS handshake: `a`
    /// publishes audio 1 and video 2, `b` receives.
    fn pair(profile: ProtectionProfile, now: Instant) -> (Endpoint, Endpoint) {
        let salt = match profile {
            ProtectionProfile::AeadAes128Gcm => 12,
            _ => 14,
        };
        let keys = |mine: u8, theirs: u8| SrtpSessionKeys {
            profile,
            local_master_key: vec![mine; 16],
            local_master_salt: vec![mine ^ 0x55; salt],
            remote_master_key: vec![theirs; 16],
            remote_master_salt: vec![theirs ^ 0x55; salt],
        };
        let a = Endpoint::new(&keys(1, 2), (Some(1), Some(2)), SDP, &[], now).expect("a");
        let b = Endpoint::new(&keys(2, 1), (None, None), SDP, &[VIDEO_PT], now).expect("b");
        (a, b)
    }

    fn video(seq: u16, payload: &[u8]) -> RtpOut<'_> {
        RtpOut {
            ssrc: 2,
            seq,
            timestamp: 9000 + u32::from(seq),
            marker: false,
            payload_type: VIDEO_PT,
            payload,
        }
    }

    fn sent(a: &mut Endpoint, p: &RtpOut<'_>, now: Instant) -> BytesMut {
        let mut buf = BytesMut::new();
        assert!(a.protect(p, false, &mut buf, now));
        buf
    }

    fn media(read: Read) -> (u32, Vec<u8>) {
        match read {
            Read::Media { ssrc, payload } => (ssrc, payload.to_vec()),
            other => panic!("not media: {other:?}"),
        }
    }

    #[test]
    fn what_one_end_protects_the_other_reads_once() {
        for profile in [
            ProtectionProfile::AeadAes128Gcm,
            ProtectionProfile::Aes128CmHmacSha1_80,
        ] {
            let now = Instant::now();
            let (mut a, mut b) = pair(profile, now);
            let packet = sent(&mut a, &video(7, b"frame"), now);
            assert_eq!(a.twcc_ext(), Some(5));
            // Encrypted: the payload is not in the clear.
            assert!(!packet.windows(5).any(|w| w == b"frame"));
            let no_send = |_: &[u8]| panic!("nothing to send");
            let got = media(b.read(packet.clone(), now, no_send));
            assert_eq!(got, (2, b"frame".to_vec()));
            // The same datagram again is a replay; a changed one fails.
            assert!(matches!(
                b.read(packet.clone(), now, no_send),
                Read::Refused
            ));
            let mut changed = sent(&mut a, &video(8, b"frame"), now);
            let last = changed.len() - 1;
            changed[last] ^= 1;
            assert!(matches!(b.read(changed, now, no_send), Read::Refused));
            // Padding decrypts to an empty payload.
            let mut pad = BytesMut::new();
            assert!(a.protect(&video(9, b"ignored"), true, &mut pad, now));
            let got = media(b.read(pad, now, no_send));
            assert_eq!(got, (2, vec![]));
            // A sequence number is encrypted once only, and only on our SSRCs.
            assert!(!a.protect(&video(9, b"again"), false, &mut BytesMut::new(), now));
            let stranger = RtpOut {
                ssrc: 3,
                ..video(10, b"x")
            };
            assert!(!a.protect(&stranger, false, &mut BytesMut::new(), now));
            assert_eq!(b.take_counters().refused, 2);
            let c = a.take_counters();
            assert_eq!((c.refused, c.padding_sent), (2, 1));
            // STUN/DTLS are not ours.
            let stun = BytesMut::from(&[0u8, 1, 0, 0][..]);
            assert!(matches!(b.read(stun, now, no_send), Read::NotMedia(_)));
        }
    }

    #[test]
    fn forged_packets_of_new_ssrcs_take_no_stream_slot() {
        let now = Instant::now();
        let (mut a, mut b) = pair(ProtectionProfile::AeadAes128Gcm, now);
        // More forgeries than there are stream slots, one with the real
        // video SSRC but an audio payload type (as if to fix its kind).
        for ssrc in (100u32..140).chain([2]) {
            let mut forged = sent(&mut a, &video(ssrc as u16, b"xx"), now);
            forged[1] = 111;
            forged[8..12].copy_from_slice(&ssrc.to_be_bytes());
            assert!(matches!(b.read(forged, now, |_| ()), Read::Refused));
        }
        assert_eq!(b.take_counters().refused, 41);
        let got = media(b.read(sent(&mut a, &video(200, b"real"), now), now, |_| ()));
        assert_eq!(got, (2, b"real".to_vec()));
        // Taken as video: a hole in it is NACKed.
        b.read(sent(&mut a, &video(202, b"next"), now), now, |_| ());
        let mut later = now;
        while later < now + Duration::from_millis(150) {
            later = b.poll_timeout().max(later + Duration::from_millis(1));
            b.handle_timeout(later, |_| ());
        }
        assert!(b.take_counters().nacks_sent >= 1);
    }

    #[test]
    fn a_lost_packet_is_nacked_resent_and_fed_back() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(ProtectionProfile::AeadAes128Gcm, t0);
        let mut lost = BytesMut::new();
        for seq in 100..110u16 {
            let packet = sent(&mut a, &video(seq, &[seq as u8; 40]), t0);
            if seq == 104 {
                lost = packet; // never reaches b
                continue;
            }
            b.read(packet, t0, |_| panic!("nothing to send"));
        }
        // b's feedback and NACK, once due.
        let mut to_a = Vec::new();
        let mut now = t0;
        while now < t0 + Duration::from_millis(150) {
            now = b.poll_timeout().max(now + Duration::from_millis(1));
            b.handle_timeout(now, |d| to_a.push(BytesMut::from(d)));
        }
        let fed_back = b.take_counters();
        assert!(
            fed_back.twcc_sent >= 1 && fed_back.nacks_sent >= 1,
            "{fed_back:?}"
        );
        // a reads it: the feedback is counted, the NACK answered with the
        // very datagram that was lost.
        let mut resent = Vec::new();
        for d in to_a {
            assert!(matches!(
                a.read(d, now, |r| resent.push(BytesMut::from(r))),
                Read::Rtcp
            ));
        }
        let c = a.take_counters();
        assert!(c.twcc_received >= 1, "{c:?}");
        // Each NACK named the one lost packet (b asks again until it comes).
        assert_eq!(c.resent, fed_back.nacks_sent, "{c:?}");
        assert!(resent.iter().all(|r| *r == lost));
        let got = media(b.read(resent.remove(0), now, |_| panic!("nothing to send")));
        assert_eq!(got, (2, vec![104; 40]));
    }
}
