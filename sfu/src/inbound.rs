//! The inbound fast path: a publisher's media decrypted by us instead of
//! rtc's RTP pipeline (docs/DECISIONS.md §10, step 2).
//!
//! A stream becomes ours once rtc has identified it (its first packet
//! carries the mid/rid that `OnTrack` reports); from then on every packet
//! of that SSRC is checked against a replay window, decrypted in place in
//! the buffer it arrived in, parsed for what forwarding needs (no
//! `rtp::Packet`, no extension list) and handed on with its payload as a
//! slice of that buffer. What rtc's receive interceptors did for these
//! SSRCs is done by `media_in.rs`: transport-wide CC feedback, NACKs and
//! receiver reports towards the publisher, sent through rtc's SRTCP.

use crate::media_in::InboundFeedback;
use crate::srtp::{Rollover, Srtp, SrtpError};
use bytes::{Bytes, BytesMut};
use rtc::rtp;
use std::ops::Range;
use std::time::Instant;

/// Streams one peer may publish to us (three simulcast layers, audio,
/// screen, and room for a renegotiation's new SSRCs).
const MAX_STREAMS: usize = 16;

/// A publisher's RTP packet as forwarding needs it: decrypted, header
/// extensions and padding cut off (the rewriter strips extensions anyway).
#[derive(Debug, Clone, Default)]
pub(crate) struct Media {
    pub ssrc: u32,
    pub seq: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub payload_type: u8,
    /// The payload alone (header and padding cut off in place): the
    /// receive buffer itself, back to the worker's pool after the
    /// fan-out (`BufferPool::give`), never frozen, since a frozen
    /// buffer that is not full allocates a shared header.
    pub payload: BytesMut,
}

impl Media {
    /// A packet rtc decrypted and parsed (a stream not ours yet, or the
    /// `rtc` media path).
    pub(crate) fn from_rtp(packet: rtp::Packet) -> Media {
        let h = &packet.header;
        Media {
            ssrc: h.ssrc,
            seq: h.sequence_number,
            timestamp: h.timestamp,
            marker: h.marker,
            payload_type: h.payload_type,
            payload: BytesMut::from(&packet.payload[..]),
        }
    }

    /// The same as rtc's packet type (the `rtc` path writes those).
    pub(crate) fn to_rtp(&self) -> rtp::Packet {
        rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                marker: self.marker,
                payload_type: self.payload_type,
                sequence_number: self.seq,
                timestamp: self.timestamp,
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload: Bytes::copy_from_slice(&self.payload),
        }
    }
}

/// What a plaintext RTP header says, and where its parts are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub ssrc: u32,
    pub seq: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub payload_type: u8,
    /// The payload, padding excluded.
    pub payload: Range<usize>,
    /// The extension block's profile and its elements' bytes.
    ext: Option<(u16, Range<usize>)>,
}

/// Parse an RTP packet's header. `None` for anything malformed: wrong
/// version, shorter than its header, CSRC list or extension claim, or
/// padding longer than the payload (or zero, which RFC 3550 rules out).
pub(crate) fn parse(packet: &[u8]) -> Option<Head> {
    let head = crate::srtp::header_len(packet)?;
    let ext = if packet[0] & 0x10 != 0 {
        let at = 12 + 4 * (packet[0] & 0x0f) as usize;
        let profile = u16::from_be_bytes([packet[at], packet[at + 1]]);
        Some((profile, at + 4..head))
    } else {
        None
    };
    let mut end = packet.len();
    if packet[0] & 0x20 != 0 {
        let pad = *packet.last()? as usize;
        if pad == 0 || pad > end - head {
            return None;
        }
        end -= pad;
    }
    Some(Head {
        ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
        seq: u16::from_be_bytes([packet[2], packet[3]]),
        timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
        marker: packet[1] & 0x80 != 0,
        payload_type: packet[1] & 0x7f,
        payload: head..end,
        ext,
    })
}

/// The value of header extension `id` (RFC 8285 one-byte or two-byte
/// form), if the packet carries it.
pub(crate) fn extension<'a>(packet: &'a [u8], head: &Head, id: u8) -> Option<&'a [u8]> {
    let (profile, range) = head.ext.clone()?;
    let block = packet.get(range)?;
    let two_byte = match profile {
        0xbede => false,
        p if p & 0xfff0 == 0x1000 => true,
        _ => return None,
    };
    let mut i = 0;
    while i < block.len() {
        let (element, len, at) = if two_byte {
            if block[i] == 0 {
                i += 1;
                continue;
            }
            (block[i], *block.get(i + 1)? as usize, i + 2)
        } else {
            let b = block[i];
            if b == 0 {
                i += 1;
                continue;
            }
            if b >> 4 == 15 {
                return None;
            }
            (b >> 4, (b & 0x0f) as usize + 1, i + 1)
        };
        let value = block.get(at..at + len)?;
        if element == id {
            return Some(value);
        }
        i = at + len;
    }
    None
}

/// The transport-wide sequence number in that extension's value.
fn twcc_seq(value: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*value.first()?, *value.get(1)?]))
}

/// Why an inbound packet was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not a stream we took (rtc gets it).
    Unknown,
    /// Seen already, or too far behind the newest to tell.
    Replay,
    /// Failed authentication (forged, damaged).
    Auth,
    /// Not parseable as RTP after decryption.
    Malformed,
}

struct Stream {
    ssrc: u32,
    roll: Rollover,
}

/// One publisher's inbound media, from DTLS completion on.
pub(crate) struct OwnInbound {
    srtp: Srtp,
    streams: Vec<Stream>,
    pub(crate) feedback: InboundFeedback,
    twcc_ext: Option<u8>,
    /// Packets refused since the last `take_refused`: replays, failed
    /// authentication, malformed.
    refused: [u64; 3],
}

impl OwnInbound {
    pub(crate) fn new(srtp: Srtp, twcc_ext: Option<u8>) -> OwnInbound {
        OwnInbound {
            srtp,
            streams: Vec::with_capacity(MAX_STREAMS),
            feedback: InboundFeedback::new(twcc_ext),
            twcc_ext,
            refused: [0; 3],
        }
    }

    pub(crate) fn set_twcc_ext(&mut self, id: Option<u8>) {
        self.twcc_ext = id;
        self.feedback.set_twcc_ext(id);
    }

    pub(crate) fn knows(&self, ssrc: u32) -> bool {
        self.streams.iter().any(|s| s.ssrc == ssrc)
    }

    /// Take `ssrc` from rtc: its next packet is decrypted here. `false`
    /// when the peer has [`MAX_STREAMS`] already (rtc keeps it).
    pub(crate) fn add(&mut self, ssrc: u32, clock_rate: u32, nack: bool) -> bool {
        if self.knows(ssrc) {
            return true;
        }
        if self.streams.len() >= MAX_STREAMS {
            return false;
        }
        self.streams.push(Stream {
            ssrc,
            roll: Rollover::default(),
        });
        self.feedback.add_stream(ssrc, clock_rate, nack);
        true
    }

    /// Give `ssrc` up (its state and its feedback).
    pub(crate) fn remove(&mut self, ssrc: u32) {
        self.streams.retain(|s| s.ssrc != ssrc);
        self.feedback.remove_stream(ssrc);
    }

    /// Packets refused since the last call: replays, failed
    /// authentication, malformed.
    pub(crate) fn take_refused(&mut self) -> [u64; 3] {
        std::mem::take(&mut self.refused)
    }

    /// Check and decrypt one SRTP packet of a stream we took, in place.
    /// Returns the packet and its RFC 6464 audio level (extension
    /// `level_ext`).
    pub(crate) fn read(
        &mut self,
        mut buf: BytesMut,
        level_ext: Option<u8>,
        now: Instant,
    ) -> Result<(Media, Option<u8>), Refused> {
        let result = self.read_inner(&mut buf, level_ext, now);
        match result {
            Err(Refused::Replay) => self.refused[0] += 1,
            Err(Refused::Auth) => self.refused[1] += 1,
            Err(Refused::Malformed) => self.refused[2] += 1,
            _ => {}
        }
        let (head, level) = result?;
        // Cut down in place: the worker gets the buffer back whole after
        // the fan-out (`BufferPool::give` reclaims the front).
        buf.truncate(head.payload.end);
        bytes::Buf::advance(&mut buf, head.payload.start);
        let payload = buf;
        Ok((
            Media {
                ssrc: head.ssrc,
                seq: head.seq,
                timestamp: head.timestamp,
                marker: head.marker,
                payload_type: head.payload_type,
                payload,
            },
            level,
        ))
    }

    fn read_inner(
        &mut self,
        buf: &mut BytesMut,
        level_ext: Option<u8>,
        now: Instant,
    ) -> Result<(Head, Option<u8>), Refused> {
        let ssrc = match buf.get(8..12) {
            Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            None => return Err(Refused::Malformed),
        };
        let stream = self
            .streams
            .iter_mut()
            .find(|s| s.ssrc == ssrc)
            .ok_or(Refused::Unknown)?;
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let index = stream.roll.index_of(seq).ok_or(Refused::Replay)?;
        let len = self
            .srtp
            .unprotect(&mut buf[..], (index >> 16) as u32)
            .map_err(|e| match e {
                SrtpError::Auth => Refused::Auth,
                _ => Refused::Malformed,
            })?;
        stream.roll.mark(index);
        buf.truncate(len);
        let head = parse(buf).ok_or(Refused::Malformed)?;
        let twcc = self
            .twcc_ext
            .and_then(|id| extension(buf, &head, id))
            .and_then(twcc_seq);
        let level = level_ext
            .and_then(|id| extension(buf, &head, id))
            .and_then(|v| v.first().map(|b| b & 0x7f));
        self.feedback
            .on_packet(head.ssrc, head.seq, head.timestamp, twcc, now);
        if head.payload.is_empty() {
            self.feedback.mark_padding(head.ssrc, head.seq);
        }
        Ok((head, level))
    }

    /// rtc decrypted and authenticated a packet of a stream not ours yet
    /// (until `OnTrack` names it): it counts for transport-wide feedback.
    pub(crate) fn rtc_decrypted(&mut self, header: &rtp::header::Header, now: Instant) {
        let twcc = self
            .twcc_ext
            .and_then(|id| header.get_extension(id))
            .and_then(|v| twcc_seq(&v));
        if twcc.is_some() {
            self.feedback.on_packet(
                header.ssrc,
                header.sequence_number,
                header.timestamp,
                twcc,
                now,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::srtp::protection_profile::ProtectionProfile;

    fn crypto() -> &'static dyn rtc::crypto::RTCCrypto {
        let provider = Box::leak(Box::new(rtc::crypto::default_provider().expect("provider")));
        provider.crypto()
    }

    const KEY: [u8; 16] = [9; 16];
    const SALT: [u8; 12] = [4; 12];

    /// A plaintext RTP packet: transport-cc (id 3) and audio level (id 1)
    /// in a one-byte extension block, optional padding.
    fn plain(ssrc: u32, seq: u16, twcc: u16, payload: &[u8], pad: u8) -> Vec<u8> {
        let mut p = vec![0x90 | if pad > 0 { 0x20 } else { 0 }, 0x80 | 111];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&777u32.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        let t = twcc.to_be_bytes();
        p.extend_from_slice(&[0xbe, 0xde, 0, 2, 0x31, t[0], t[1], 0x10, 0x85, 0, 0, 0]);
        p.extend_from_slice(payload);
        if pad > 0 {
            p.extend(std::iter::repeat_n(0u8, pad as usize - 1));
            p.push(pad);
        }
        p
    }

    /// Encrypted by rtc's own SRTP (what a browser's libsrtp agrees with).
    fn sealed(ctx: &mut rtc::srtp::context::Context, plain: &[u8]) -> BytesMut {
        BytesMut::from(&ctx.encrypt_rtp(plain).expect("encrypt")[..])
    }

    fn rtc_ctx() -> rtc::srtp::context::Context {
        rtc::srtp::context::Context::new(
            &KEY,
            &SALT,
            ProtectionProfile::AeadAes128Gcm,
            None,
            None,
            crypto(),
        )
        .expect("ctx")
    }

    fn ours() -> OwnInbound {
        let srtp =
            Srtp::new(ProtectionProfile::AeadAes128Gcm, &KEY, &SALT, crypto()).expect("srtp");
        OwnInbound::new(srtp, Some(3))
    }

    #[test]
    fn a_browser_packet_decrypts_to_its_header_fields_payload_and_level_without_padding() {
        let mut rtc = rtc_ctx();
        let mut inb = ours();
        assert!(inb.add(0xabcd, 90_000, true));
        let now = Instant::now();
        let (m, level) = inb
            .read(
                sealed(&mut rtc, &plain(0xabcd, 65_535, 9, b"frame", 4)),
                Some(1),
                now,
            )
            .expect("read");
        assert_eq!(
            (m.ssrc, m.seq, m.timestamp, m.marker, m.payload_type),
            (0xabcd, 65_535, 777, true, 111)
        );
        assert_eq!(&m.payload[..], b"frame");
        assert_eq!(level, Some(5));
        // Across the rollover: the next packet has ROC 1 on both sides.
        let (m, _) = inb
            .read(
                sealed(&mut rtc, &plain(0xabcd, 0, 10, b"next", 0)),
                None,
                now,
            )
            .expect("after the wrap");
        assert_eq!((m.seq, &m.payload[..]), (0, &b"next"[..]));
        assert_eq!(inb.take_refused(), [0; 3]);
    }

    #[test]
    fn replays_forgeries_and_unknown_streams_are_refused_and_counted() {
        let mut rtc = rtc_ctx();
        let mut inb = ours();
        inb.add(1, 48_000, false);
        let now = Instant::now();
        let p = sealed(&mut rtc, &plain(1, 100, 1, b"audio", 0));
        inb.read(p.clone(), None, now).expect("first");
        assert_eq!(inb.read(p.clone(), None, now).err(), Some(Refused::Replay));
        // A changed payload byte: authentication fails, and the genuine
        // packet with that number is still taken afterwards.
        let genuine = sealed(&mut rtc, &plain(1, 101, 2, b"audio", 0));
        let mut forged = genuine.clone();
        let last = forged.len() - 20;
        forged[last] ^= 1;
        assert_eq!(inb.read(forged, None, now).err(), Some(Refused::Auth));
        assert!(inb.read(genuine, None, now).is_ok());
        let other = sealed(&mut rtc, &plain(2, 5, 3, b"x", 0));
        assert_eq!(inb.read(other, None, now).err(), Some(Refused::Unknown));
        assert_eq!(inb.take_refused(), [1, 1, 0], "the replay and the forgery");
    }

    #[test]
    fn truncated_and_random_datagrams_never_panic_and_are_refused() {
        let mut rtc = rtc_ctx();
        let mut inb = ours();
        inb.add(1, 90_000, true);
        let now = Instant::now();
        let good = sealed(&mut rtc, &plain(1, 7, 1, b"payload bytes", 3));
        for cut in 0..good.len() {
            let r = inb.read(BytesMut::from(&good[..cut]), Some(1), now);
            assert!(r.is_err(), "a packet cut at {cut} was taken");
        }
        let mut x: u32 = 0x1234_5678;
        for round in 0..20_000 {
            let len = (round % 80) as usize;
            let mut b = BytesMut::with_capacity(len);
            for i in 0..len {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                b.extend_from_slice(&[if i == 0 {
                    0x80 | (x as u8 & 0x3f)
                } else {
                    x as u8
                }]);
            }
            if len >= 12 {
                b[8..12].copy_from_slice(&1u32.to_be_bytes());
            }
            assert!(inb.read(b, Some(1), now).is_err());
        }
        // The genuine packet still passes after all that.
        assert!(inb.read(good, Some(1), now).is_ok());
    }

    #[test]
    fn extensions_are_found_in_both_forms_and_lies_are_not_followed() {
        let one = plain(1, 1, 0x0102, b"p", 0);
        let head = parse(&one).expect("parse");
        assert_eq!(extension(&one, &head, 3), Some(&[1u8, 2][..]));
        assert_eq!(extension(&one, &head, 1), Some(&[0x85u8][..]));
        assert_eq!(extension(&one, &head, 2), None);
        // Two-byte form: id 7, two bytes.
        let mut two = vec![0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1];
        two.extend_from_slice(&[0x10, 0x00, 0, 1, 7, 2, 0xaa, 0xbb]);
        let head = parse(&two).expect("parse");
        assert_eq!(extension(&two, &head, 7), Some(&[0xaau8, 0xbb][..]));
        // An element whose length runs past the block.
        let mut lie = vec![0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1];
        lie.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x3f, 1, 2, 3]);
        let head = parse(&lie).expect("parse");
        assert_eq!(extension(&lie, &head, 3), None);
        // Padding longer than the payload, or zero.
        let mut pad = plain(1, 1, 1, b"ab", 2);
        let n = pad.len();
        pad[n - 1] = 200;
        assert_eq!(parse(&pad), None);
        pad[n - 1] = 0;
        assert_eq!(parse(&pad), None);
    }
}
