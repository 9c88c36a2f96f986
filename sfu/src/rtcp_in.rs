//! Inbound SRTCP and RTCP done by us instead of rtc's pipeline
//! (docs/DECISIONS.md §10): a peer's SRTCP decrypted in place in the
//! buffer it arrived in, and its compound RTCP read for what the SFU uses,
//! without `Box<dyn Packet>`, `Vec` or rtc's SRTCP session per packet.
//!
//! [`Srtcp`] is one direction's SRTCP context (the remote keys rtc's DTLS
//! handshake exported, as for `inbound.rs`): a tag check, a replay window
//! per sending SSRC on the index the packet carries, and decryption in
//! place. [`parse`] walks the decrypted compound packet and hands each
//! thing the SFU reads to a visitor as an [`Rtcp`]: sender reports (for
//! the LSR/DLSR of our receiver reports), reception report blocks (the
//! loss ceiling), NACKs (resends), PLI/FIR (keyframe requests) and
//! transport-wide CC feedback, whose acknowledgements
//! ([`TwccFeedback::acks`]) are exactly what rtc's `convert_twcc` gives for
//! the same bytes, so the send history and GCC see no difference.
//!
//! Where we differ from rtc 0.21.1, deliberately:
//! - **E flag 0** (authenticated, not encrypted; RFC 3711 §3.4) is refused
//!   as malformed, before any crypto. Browsers always encrypt; rtc never
//!   writes E = 0, so there is nothing to test an implementation against,
//!   and rtc's own handling is not one to copy: with AES-CM it returns an
//!   E = 0 packet *without checking its tag* (anyone who can send to the
//!   peer's address can inject RTCP), with AES-GCM it authenticates as if
//!   E were 1 (the flag is not covered).
//! - **Framing** is checked whole before anything is visited: a compound
//!   packet with one bad length, count or padding yields no item at all.
//!   Sub-packets we do not read (SDES, BYE, APP, XR, REMB, ...) are
//!   skipped by their length, where rtc parses them and drops the whole
//!   compound (a PLI with it) when one does not parse.
//! - **Padding** (P bit) is taken off before a sub-packet is read; rtc
//!   ignores the bit and reads padding as NACK pairs, FIR entries or TWCC
//!   deltas.
//! - **TWCC**: chunks and deltas must lie within the packet (before its
//!   padding); rtc takes a large delta cut to one byte as a small one, and
//!   refuses a feedback whose last chunk ends exactly at the packet's end
//!   (no deltas, an even number of chunks), which is valid. On everything
//!   both take, the acknowledgements are the same.

use crate::srtp::{
    Cipher, GCM_TAG, HMAC_TAG_80, Rollover, SRTCP_LABELS, SrtpError, cm_iv, gcm_iv, hmac_80_matches,
};
use rtc::crypto::RTCCrypto;
use rtc::srtp::protection_profile::ProtectionProfile;
use std::time::Duration;

/// Sending SSRCs whose replay windows one peer gets. A browser sends its
/// RTCP from the SSRCs of its sending streams (sender reports) and, for
/// what it only receives, from one more SSRC (Chromium) or possibly one
/// per receive-only m-section (Firefox): in a consult of six (signaling's
/// default cap) with screens, up to 15 such m-sections and a few sending
/// streams. Fixed, so that a peer cannot make us allocate (~1.2 KB); a
/// slot is taken only by a packet that authenticated, so forgeries cannot
/// fill the table; an SSRC that finds none is counted
/// ([`Srtcp::take_too_many_ssrcs`]).
pub(crate) const MAX_SSRCS: usize = 32;

/// The E flag and 31-bit SRTCP index (RFC 3711 §3.4) after the payload
/// (also `rtcp_out.rs`).
pub(crate) const ESRTCP: usize = 4;
/// RTCP header and sender SSRC: authenticated, never encrypted.
pub(crate) const HEAD: usize = 8;

/// Why an SRTCP packet was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SrtcpRefused {
    /// Its index was taken already, or lies too far behind the newest of
    /// its SSRC to tell.
    Replay,
    /// Failed authentication (forged, damaged).
    Auth,
    /// Too short for header, index and tag, not version 2, E flag 0, or
    /// (from [`Srtcp::read`]) RTCP that does not [`parse`].
    Malformed,
    /// Authentic, but from one sending SSRC more than the [`MAX_SSRCS`]
    /// whose windows are kept.
    TooManySsrcs,
}

/// One direction's SRTCP: decryption of what a peer sends us.
pub(crate) struct Srtcp {
    cipher: Cipher,
    /// Sending SSRCs seen (the first `known`) and their index windows.
    ssrcs: [u32; MAX_SSRCS],
    windows: [Rollover; MAX_SSRCS],
    known: usize,
    /// Refused since the last `take_refused`: replays, failed
    /// authentication, malformed (as `OwnInbound::take_refused`).
    refused: [u64; 3],
    /// Authentic packets refused since the last `take_too_many_ssrcs`.
    too_many_ssrcs: u64,
}

impl Srtcp {
    /// The SRTCP session keys (RFC 3711 §4.3, labels 3-5) of a master key
    /// and salt. AEAD_AES_128_GCM (RFC 7714 §9) and
    /// AES_CM_128_HMAC_SHA1_80 (RFC 3711) only, as [`crate::srtp::Srtp`].
    pub(crate) fn new(
        profile: ProtectionProfile,
        master_key: &[u8],
        master_salt: &[u8],
        crypto: &dyn RTCCrypto,
    ) -> Result<Srtcp, SrtpError> {
        let cipher = Cipher::new(profile, master_key, master_salt, crypto, SRTCP_LABELS)?;
        Ok(Srtcp {
            cipher,
            ssrcs: [0; MAX_SSRCS],
            windows: [Rollover::default(); MAX_SSRCS],
            known: 0,
            refused: [0; 3],
            too_many_ssrcs: 0,
        })
    }

    /// Packets refused since the last call: replays, failed
    /// authentication, malformed (the three reasons of
    /// `OwnInbound::take_refused`, for the same metric).
    pub(crate) fn take_refused(&mut self) -> [u64; 3] {
        std::mem::take(&mut self.refused)
    }

    /// Authentic packets refused since the last call because their SSRC
    /// found no room ([`SrtcpRefused::TooManySsrcs`]).
    pub(crate) fn take_too_many_ssrcs(&mut self) -> u64 {
        std::mem::take(&mut self.too_many_ssrcs)
    }

    /// Check and decrypt the SRTCP packet `packet` in place; returns the
    /// length of the compound RTCP packet now in `packet[..len]`. On an
    /// error the buffer's content is undefined and must be dropped; the
    /// replay windows are untouched, so the genuine packet a forgery
    /// imitated is still taken when it comes.
    pub(crate) fn unprotect(&mut self, packet: &mut [u8]) -> Result<usize, SrtcpRefused> {
        let result = self.unprotect_inner(packet);
        if let Err(e) = result {
            self.count(e);
        }
        result
    }

    /// [`unprotect`](Self::unprotect), then [`parse`]: what the SFU does
    /// with a peer's SRTCP. RTCP that does not parse (after it
    /// authenticated, so from the peer itself) counts as malformed and
    /// yields no event; its index stays taken.
    pub(crate) fn read<'a>(
        &mut self,
        packet: &'a mut [u8],
        visit: impl FnMut(Rtcp<'a>),
    ) -> Result<(), SrtcpRefused> {
        let len = self.unprotect(packet)?;
        let packet: &'a [u8] = packet;
        parse(&packet[..len], visit).map_err(|Malformed| {
            self.count(SrtcpRefused::Malformed);
            SrtcpRefused::Malformed
        })
    }

    fn count(&mut self, e: SrtcpRefused) {
        match e {
            SrtcpRefused::Replay => self.refused[0] += 1,
            SrtcpRefused::Auth => self.refused[1] += 1,
            SrtcpRefused::Malformed => self.refused[2] += 1,
            SrtcpRefused::TooManySsrcs => self.too_many_ssrcs += 1,
        }
    }

    fn unprotect_inner(&mut self, packet: &mut [u8]) -> Result<usize, SrtcpRefused> {
        // RFC 7714 §9 puts the GCM tag inside, before the E flag and
        // index; RFC 3711 §3.4 puts the HMAC tag after them.
        let tag_len = self.cipher.tag_len();
        if packet.len() < HEAD + ESRTCP + tag_len || packet[0] >> 6 != 2 {
            return Err(SrtcpRefused::Malformed);
        }
        let word_at = match self.cipher {
            Cipher::Gcm { .. } => packet.len() - ESRTCP,
            Cipher::CmSha1 { .. } => packet.len() - ESRTCP - HMAC_TAG_80,
        };
        let word = &packet[word_at..word_at + ESRTCP];
        let word = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        if word >> 31 == 0 {
            return Err(SrtcpRefused::Malformed);
        }
        let index = word & 0x7fff_ffff;
        let ssrc = [packet[4], packet[5], packet[6], packet[7]];
        let slot = self.ssrcs[..self.known]
            .iter()
            .position(|s| *s == u32::from_be_bytes(ssrc));
        if slot.is_some_and(|i| !self.windows[i].is_new(u64::from(index))) {
            return Err(SrtcpRefused::Replay);
        }
        let (roc, seq) = (index >> 16, (index as u16).to_be_bytes());
        let plain_len = match &mut self.cipher {
            Cipher::Gcm { aead, salt } => {
                // AAD: header, sender SSRC and the E flag + index word.
                let mut aad = [0u8; HEAD + ESRTCP];
                aad[..HEAD].copy_from_slice(&packet[..HEAD]);
                aad[HEAD..].copy_from_slice(&word.to_be_bytes());
                let iv = gcm_iv(salt, ssrc, roc, seq);
                let plain_len = word_at - GCM_TAG;
                let (payload, tag) = packet[HEAD..word_at].split_at_mut(plain_len - HEAD);
                aead.open_in_place(&iv, &aad, payload, tag)
                    .map_err(|_| SrtcpRefused::Auth)?;
                plain_len
            }
            Cipher::CmSha1 { ctr, mac, salt } => {
                // The tag covers everything before it, E flag and index
                // included; checked first, in constant time.
                let mut tag = [0u8; 20];
                let tag_at = word_at + ESRTCP;
                mac.sign(&[&packet[..tag_at]], &mut tag)
                    .map_err(|_| SrtcpRefused::Auth)?;
                if !hmac_80_matches(&tag, &packet[tag_at..]) {
                    return Err(SrtcpRefused::Auth);
                }
                let iv = cm_iv(salt, ssrc, roc, seq);
                ctr.apply_keystream(&iv, &mut packet[HEAD..word_at])
                    .map_err(|_| SrtcpRefused::Auth)?;
                word_at
            }
        };
        let i = match slot {
            Some(i) => i,
            None if self.known < MAX_SSRCS => {
                self.ssrcs[self.known] = u32::from_be_bytes(ssrc);
                self.windows[self.known] = Rollover::default();
                self.known += 1;
                self.known - 1
            }
            None => return Err(SrtcpRefused::TooManySsrcs),
        };
        self.windows[i].mark(u64::from(index));
        Ok(plain_len)
    }
}

/// A compound RTCP packet that is not well formed: a version other than
/// 2, a length past the buffer, padding longer than its packet, a count
/// or FCI that does not fit, TWCC chunks or deltas past the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed;

/// What the SFU reads of a peer's RTCP, one item at a time, in the order
/// of the compound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rtcp<'a> {
    /// A sender report: its sender and NTP time (for the LSR and DLSR of
    /// our receiver reports). Its report blocks follow as
    /// [`Rtcp::ReceptionReport`]s.
    SenderReport { ssrc: u32, ntp_time: u64 },
    /// One report block of a sender or receiver report: the source it is
    /// about, the fraction of its packets lost (of 256), and the middle 32
    /// bits of the NTP time of the last sender report received from it
    /// with the delay since (1/65536 s; RFC 3550 §6.4.1): a round trip.
    ReceptionReport {
        ssrc: u32,
        fraction_lost: u8,
        last_sr: u32,
        delay: u32,
    },
    /// A generic NACK (RFC 4585 §6.2.1): one per packet, so NACK packets
    /// can be counted; at least one FCI.
    Nack(Nack<'a>),
    /// Picture loss indication of `media_ssrc`.
    Pli { media_ssrc: u32 },
    /// One full intra request entry (RFC 5104 §4.3.1): a keyframe of
    /// `ssrc`.
    Fir { ssrc: u32 },
    /// Transport-wide CC feedback.
    Twcc(TwccFeedback<'a>),
}

impl Rtcp<'_> {
    /// A PLI or FIR (what `keyframe::is_keyframe_request` looks for).
    pub(crate) fn is_keyframe_request(&self) -> bool {
        matches!(self, Rtcp::Pli { .. } | Rtcp::Fir { .. })
    }
}

/// A generic NACK, its FCI borrowed from the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Nack<'a> {
    pub media_ssrc: u32,
    /// Whole 4-byte FCI entries (PID, BLP), at least one.
    fci: &'a [u8],
}

impl<'a> Nack<'a> {
    /// Each FCI's packet id and bitmask of following lost packets.
    pub(crate) fn pairs(&self) -> impl Iterator<Item = (u16, u16)> + 'a {
        self.fci.chunks_exact(4).map(|e| {
            (
                u16::from_be_bytes([e[0], e[1]]),
                u16::from_be_bytes([e[2], e[3]]),
            )
        })
    }

    /// Every sequence number reported lost, in the order rtc's `NackPair`
    /// iterates them: each PID, then PID + 1 + i for each bit i set in
    /// its BLP, lowest first.
    pub(crate) fn seqs(&self) -> impl Iterator<Item = u16> + 'a {
        self.pairs().flat_map(|(pid, blp)| {
            std::iter::once(pid).chain(
                (0..16u16)
                    .filter(move |i| blp & 1 << i != 0)
                    .map(move |i| pid.wrapping_add(i + 1)),
            )
        })
    }
}

/// Transport-wide CC feedback (draft-holmer-rmcat-transport-wide-cc-
/// extensions-01 §3.1), its status chunks and receive deltas borrowed
/// from the packet. Validated when parsed: every chunk the status count
/// calls for and every delta those chunks call for lies in the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TwccFeedback<'a> {
    pub sender_ssrc: u32,
    pub media_ssrc: u32,
    pub base_sequence_number: u16,
    pub packet_status_count: u16,
    /// In multiples of 64 ms (24 bits).
    pub reference_time: u32,
    pub fb_pkt_count: u8,
    /// The status chunks read (2 bytes each).
    chunks: &'a [u8],
    /// The receive deltas those chunks call for, exactly.
    deltas: &'a [u8],
}

/// A TWCC status chunk's symbol: not received, received with a small (1
/// byte) or large (2 byte) delta, received without delta.
const NOT_RECEIVED: u8 = 0;
const WITHOUT_DELTA: u8 = 3;

/// The symbols a status chunk stands for: its run length (13 bits), or
/// 14 one-bit / 7 two-bit symbols.
fn chunk_symbols(chunk: u16) -> u16 {
    match chunk >> 14 {
        0 | 1 => chunk & 0x1fff,
        2 => 14,
        _ => 7,
    }
}

/// The `i`-th symbol of a status chunk.
fn chunk_symbol(chunk: u16, i: u16) -> u8 {
    let symbol = match chunk >> 14 {
        0 | 1 => (chunk >> 13) & 3,
        2 => (chunk >> (13 - i)) & 1,
        _ => (chunk >> (12 - 2 * i)) & 3,
    };
    symbol as u8
}

/// Bytes of receive delta a symbol calls for.
fn delta_len(symbol: u8) -> usize {
    match symbol {
        1 => 1,
        2 => 2,
        _ => 0,
    }
}

impl<'a> TwccFeedback<'a> {
    /// `fci`: the packet after its sender and media SSRC, padding off.
    fn parse(sender_ssrc: u32, media_ssrc: u32, fci: &'a [u8]) -> Result<Self, Malformed> {
        let fixed = fci.get(..8).ok_or(Malformed)?;
        let count = u16::from_be_bytes([fixed[2], fixed[3]]);
        // As rtc counts: a run is cut at the status count (and calls for
        // deltas only up to it), a vector counts whole, its received
        // symbols past the count calling for deltas too.
        let mut at = 8;
        let mut processed = 0u16;
        let mut deltas = 0usize;
        while processed < count {
            let c = fci.get(at..at + 2).ok_or(Malformed)?;
            at += 2;
            let c = u16::from_be_bytes([c[0], c[1]]);
            if c >> 15 == 0 {
                let n = (count - processed).min(chunk_symbols(c));
                deltas += usize::from(n) * delta_len(chunk_symbol(c, 0));
                processed += n;
            } else {
                let n = chunk_symbols(c);
                deltas += (0..n).map(|i| delta_len(chunk_symbol(c, i))).sum::<usize>();
                processed = processed.saturating_add(n);
            }
        }
        Ok(TwccFeedback {
            sender_ssrc,
            media_ssrc,
            base_sequence_number: u16::from_be_bytes([fixed[0], fixed[1]]),
            packet_status_count: count,
            reference_time: u32::from_be_bytes([0, fixed[4], fixed[5], fixed[6]]),
            fb_pkt_count: fixed[7],
            chunks: &fci[8..at],
            deltas: fci.get(at..at + deltas).ok_or(Malformed)?,
        })
    }

    /// Each acknowledgement as `(sequence number, arrived, arrival)`,
    /// exactly as rtc's `convert_twcc` gives them for the same bytes:
    /// every symbol of every chunk read (a run's whole length, a vector's
    /// 14 or 7, past the status count too); an arrival from the
    /// reference time (× 64 ms) plus each delta so far (× 250 µs, a
    /// negative one saturating at zero); a received packet whose delta is
    /// missing, or whose symbol has none (3), without an arrival.
    pub(crate) fn acks(&self) -> Acks<'a> {
        Acks {
            chunks: self.chunks,
            deltas: self.deltas,
            symbol: 0,
            seq: self.base_sequence_number,
            arrival: Duration::from_millis(64) * self.reference_time,
        }
    }

    /// [`acks`](Self::acks) into `f`, e.g. the send history's
    /// `acknowledge`.
    pub(crate) fn for_each_ack(&self, mut f: impl FnMut(u16, bool, Option<Duration>)) {
        for (seq, arrived, arrival) in self.acks() {
            f(seq, arrived, arrival);
        }
    }
}

/// The acknowledgements of a [`TwccFeedback`], in order.
#[derive(Debug, Clone)]
pub(crate) struct Acks<'a> {
    /// Chunks not yet done, the first one at symbol `symbol`.
    chunks: &'a [u8],
    symbol: u16,
    /// Deltas not yet used.
    deltas: &'a [u8],
    seq: u16,
    arrival: Duration,
}

impl Iterator for Acks<'_> {
    type Item = (u16, bool, Option<Duration>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let c = self.chunks.get(..2)?;
            let c = u16::from_be_bytes([c[0], c[1]]);
            if self.symbol >= chunk_symbols(c) {
                self.chunks = &self.chunks[2..];
                self.symbol = 0;
                continue;
            }
            let symbol = chunk_symbol(c, self.symbol);
            self.symbol += 1;
            let seq = self.seq;
            self.seq = seq.wrapping_add(1);
            return Some(match symbol {
                NOT_RECEIVED => (seq, false, None),
                WITHOUT_DELTA => (seq, true, None),
                _ => (seq, true, self.next_arrival(delta_len(symbol))),
            });
        }
    }
}

impl Acks<'_> {
    /// The arrival after the next delta (`len` bytes), if there is one.
    fn next_arrival(&mut self, len: usize) -> Option<Duration> {
        let d = self.deltas.get(..len)?;
        let delta = match *d {
            [small] => i32::from(small),
            [hi, lo] => i32::from(i16::from_be_bytes([hi, lo])),
            _ => return None,
        };
        self.deltas = &self.deltas[len..];
        let magnitude = Duration::from_micros(250 * u64::from(delta.unsigned_abs()));
        self.arrival = if delta < 0 {
            self.arrival.saturating_sub(magnitude)
        } else {
            self.arrival + magnitude
        };
        Some(self.arrival)
    }
}

/// Read a compound RTCP packet (decrypted), handing `visit` each thing
/// the SFU uses, in order. The whole packet's framing is checked first:
/// on `Err` nothing was visited. Sub-packets of other types or formats
/// (SDES, BYE, APP, XR, REMB, ...) are skipped by their length. No
/// allocation: items borrow from `rtcp`.
pub(crate) fn parse<'a>(rtcp: &'a [u8], mut visit: impl FnMut(Rtcp<'a>)) -> Result<(), Malformed> {
    walk(rtcp, &mut |_| {})?;
    walk(rtcp, &mut visit)
}

/// One pass over a compound packet: every sub-packet checked, and read.
fn walk<'a>(rtcp: &'a [u8], visit: &mut impl FnMut(Rtcp<'a>)) -> Result<(), Malformed> {
    if rtcp.is_empty() {
        return Err(Malformed);
    }
    let mut rest = rtcp;
    while let [b0, pt, l0, l1, ..] = *rest {
        if b0 >> 6 != 2 {
            return Err(Malformed);
        }
        let len = 4 * (usize::from(u16::from_be_bytes([l0, l1])) + 1);
        let packet = rest.get(..len).ok_or(Malformed)?;
        rest = &rest[len..];
        let mut body = &packet[4..];
        if b0 & 0x20 != 0 {
            // RFC 3550 §6.4.1: the last byte counts the padding, itself
            // included.
            let pad = usize::from(packet[len - 1]);
            if pad == 0 || pad > body.len() {
                return Err(Malformed);
            }
            body = &body[..body.len() - pad];
        }
        let count = usize::from(b0 & 0x1f);
        match (pt, count) {
            (200, _) => {
                let blocks = body.get(24..24 + 24 * count).ok_or(Malformed)?;
                visit(Rtcp::SenderReport {
                    ssrc: be32(body),
                    ntp_time: u64::from(be32(&body[4..])) << 32 | u64::from(be32(&body[8..])),
                });
                reception_reports(blocks, visit);
            }
            (201, _) => {
                let blocks = body.get(4..4 + 24 * count).ok_or(Malformed)?;
                reception_reports(blocks, visit);
            }
            (205, 1) => {
                let fci = body.get(8..).ok_or(Malformed)?;
                if fci.is_empty() || fci.len() % 4 != 0 {
                    return Err(Malformed);
                }
                visit(Rtcp::Nack(Nack {
                    media_ssrc: be32(&body[4..]),
                    fci,
                }));
            }
            (205, 15) => {
                let fci = body.get(8..).ok_or(Malformed)?;
                let fb = TwccFeedback::parse(be32(body), be32(&body[4..]), fci)?;
                visit(Rtcp::Twcc(fb));
            }
            (206, 1) => {
                let media = body.get(4..8).ok_or(Malformed)?;
                visit(Rtcp::Pli {
                    media_ssrc: be32(media),
                });
            }
            (206, 4) => {
                let fci = body.get(8..).ok_or(Malformed)?;
                if fci.is_empty() || fci.len() % 8 != 0 {
                    return Err(Malformed);
                }
                for entry in fci.chunks_exact(8) {
                    visit(Rtcp::Fir { ssrc: be32(entry) });
                }
            }
            _ => {}
        }
    }
    if rest.is_empty() {
        Ok(())
    } else {
        Err(Malformed)
    }
}

/// Report blocks (24 bytes each, RFC 3550 §6.4.1).
fn reception_reports<'a>(blocks: &'a [u8], visit: &mut impl FnMut(Rtcp<'a>)) {
    for b in blocks.chunks_exact(24) {
        visit(Rtcp::ReceptionReport {
            ssrc: be32(b),
            fraction_lost: b[4],
            last_sr: be32(&b[16..]),
            delay: be32(&b[20..]),
        });
    }
}

/// The big-endian u32 `b` starts with (callers checked the length).
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::Bytes;
    use rtc::interceptor::convert_twcc;
    use rtc::rtcp::goodbye::Goodbye;
    use rtc::rtcp::packet::Packet;
    use rtc::rtcp::payload_feedbacks::full_intra_request::{FirEntry, FullIntraRequest};
    use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
    use rtc::rtcp::receiver_report::ReceiverReport;
    use rtc::rtcp::reception_report::ReceptionReport;
    use rtc::rtcp::sender_report::SenderReport;
    use rtc::rtcp::source_description::{
        SdesType, SourceDescription, SourceDescriptionChunk, SourceDescriptionItem,
    };
    use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
        PacketStatusChunk, RecvDelta, RunLengthChunk, StatusChunkTypeTcc, StatusVectorChunk,
        SymbolSizeTypeTcc, SymbolTypeTcc, TransportLayerCc,
    };
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
    use rtc::srtp::context::Context;

    fn crypto() -> &'static dyn RTCCrypto {
        let provider = Box::leak(Box::new(rtc::crypto::default_provider().expect("provider")));
        provider.crypto()
    }

    const GCM: (ProtectionProfile, usize) = (ProtectionProfile::AeadAes128Gcm, 12);
    const CM: (ProtectionProfile, usize) = (ProtectionProfile::Aes128CmHmacSha1_80, 14);

    /// Our SRTCP and rtc's (the browser's side) on one master key and
    /// salt.
    fn pair((profile, salt_len): (ProtectionProfile, usize), k: u8) -> (Srtcp, Context) {
        let key: Vec<u8> = (0..16).map(|i| i * k + 1).collect();
        let salt: Vec<u8> = (0..salt_len as u8).map(|i| i * 3 + k).collect();
        let ours = Srtcp::new(profile, &key, &salt, crypto()).expect("ours");
        let theirs = Context::new(&key, &salt, profile, None, None, crypto()).expect("rtc's");
        (ours, theirs)
    }

    /// xorshift64*: seeded, reproducible (also `rtcp_out`'s tests).
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// What the SFU reads, owned, to compare ours with rtc's.
    #[derive(Debug, PartialEq)]
    enum Ev {
        Sr(u32, u64),
        Block(u32, u8, u32, u32),
        Nack(u32, Vec<(u16, u16)>, Vec<u16>),
        Pli(u32),
        Fir(u32),
        Twcc(u32, u16, Vec<(u16, bool, Option<Duration>)>),
    }

    fn ours(rtcp: &[u8]) -> Result<Vec<Ev>, Malformed> {
        let mut out = Vec::new();
        parse(rtcp, |r| {
            out.push(match r {
                Rtcp::SenderReport { ssrc, ntp_time } => Ev::Sr(ssrc, ntp_time),
                Rtcp::ReceptionReport {
                    ssrc,
                    fraction_lost,
                    last_sr,
                    delay,
                } => Ev::Block(ssrc, fraction_lost, last_sr, delay),
                Rtcp::Nack(n) => Ev::Nack(n.media_ssrc, n.pairs().collect(), n.seqs().collect()),
                Rtcp::Pli { media_ssrc } => Ev::Pli(media_ssrc),
                Rtcp::Fir { ssrc } => Ev::Fir(ssrc),
                Rtcp::Twcc(fb) => {
                    Ev::Twcc(fb.media_ssrc, fb.base_sequence_number, fb.acks().collect())
                }
            })
        })?;
        Ok(out)
    }

    /// The same read from rtc's parse of the bytes (`Peer::drain` today):
    /// `None` where rtc refuses the compound packet.
    fn rtcs(rtcp: &[u8]) -> Option<Vec<Ev>> {
        let packets = rtc::rtcp::packet::unmarshal(&mut &rtcp[..]).ok()?;
        let mut out = Vec::new();
        for p in &packets {
            let any = p.as_any();
            if let Some(sr) = any.downcast_ref::<SenderReport>() {
                out.push(Ev::Sr(sr.ssrc, sr.ntp_time));
                out.extend(
                    sr.reports
                        .iter()
                        .map(|r| Ev::Block(r.ssrc, r.fraction_lost, r.last_sender_report, r.delay)),
                );
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                out.extend(
                    rr.reports
                        .iter()
                        .map(|r| Ev::Block(r.ssrc, r.fraction_lost, r.last_sender_report, r.delay)),
                );
            } else if let Some(n) = any.downcast_ref::<TransportLayerNack>() {
                let pairs = n
                    .nacks
                    .iter()
                    .map(|p| (p.packet_id, p.lost_packets))
                    .collect();
                let seqs = n.nacks.iter().flat_map(|p| *p).collect();
                out.push(Ev::Nack(n.media_ssrc, pairs, seqs));
            } else if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                out.push(Ev::Pli(pli.media_ssrc));
            } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                out.extend(fir.fir.iter().map(|e| Ev::Fir(e.ssrc)));
            } else if let Some(fb) = any.downcast_ref::<TransportLayerCc>() {
                let acks = convert_twcc(fb)
                    .iter()
                    .map(|a| (a.sequence_number, a.arrived, a.arrival))
                    .collect();
                out.push(Ev::Twcc(fb.media_ssrc, fb.base_sequence_number, acks));
            }
        }
        Some(out)
    }

    fn report(rng: &mut Rng) -> ReceptionReport {
        ReceptionReport {
            ssrc: rng.next() as u32,
            fraction_lost: rng.next() as u8,
            total_lost: rng.below(1 << 24) as u32,
            last_sequence_number: rng.next() as u32,
            jitter: rng.next() as u32,
            last_sender_report: rng.next() as u32,
            delay: rng.next() as u32,
        }
    }

    /// A transport-wide feedback as a browser could send it: run-length
    /// (every symbol, short and up to 8191 long), one- and two-bit vector
    /// chunks, small, large and negative deltas, a status count that ends
    /// inside the last chunk, base numbers near the wrap.
    fn twcc(rng: &mut Rng) -> TransportLayerCc {
        let mut chunks = Vec::new();
        let mut symbols = Vec::new(); // per chunk: its symbols
        for _ in 0..1 + rng.below(8) {
            match rng.below(3) {
                0 => {
                    let symbol = [0, 1, 1, 2, 3][rng.below(5) as usize];
                    let run = match rng.below(10) {
                        0 => rng.below(8192) as u16,
                        1 => 0,
                        _ => 1 + rng.below(30) as u16,
                    };
                    chunks.push(PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                        type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                        packet_status_symbol: SymbolTypeTcc::from(symbol),
                        run_length: run,
                    }));
                    symbols.push(vec![symbol as u8; run as usize]);
                }
                kind => {
                    let (n, max, size) = if kind == 1 {
                        (14, 2, SymbolSizeTypeTcc::OneBit)
                    } else {
                        (7, 4, SymbolSizeTypeTcc::TwoBit)
                    };
                    let list: Vec<u16> = (0..n).map(|_| rng.below(max) as u16).collect();
                    chunks.push(PacketStatusChunk::StatusVectorChunk(StatusVectorChunk {
                        type_tcc: StatusChunkTypeTcc::StatusVectorChunk,
                        symbol_size: size,
                        symbol_list: list.iter().map(|s| SymbolTypeTcc::from(*s)).collect(),
                    }));
                    symbols.push(list.iter().map(|s| *s as u8).collect());
                }
            }
        }
        // The last chunk must say something (else rtc reads on into the
        // deltas); the count ends somewhere inside it.
        while symbols.last().is_some_and(|s| s.is_empty()) {
            chunks.pop();
            symbols.pop();
        }
        if chunks.is_empty() {
            return twcc(rng);
        }
        let before: usize = symbols[..symbols.len() - 1].iter().map(Vec::len).sum();
        let last = symbols[symbols.len() - 1].len();
        let count = before + 1 + rng.below(last as u64) as usize;
        // Deltas as the receiver would write them for those symbols: a
        // run up to the count, a vector whole.
        let mut deltas = Vec::new();
        let mut seen = 0;
        for (chunk, syms) in chunks.iter().zip(&symbols) {
            let take = match chunk {
                PacketStatusChunk::RunLengthChunk(_) => syms.len().min(count - seen),
                PacketStatusChunk::StatusVectorChunk(_) => syms.len(),
            };
            seen += take;
            for s in &syms[..take] {
                match s {
                    1 => deltas.push(RecvDelta {
                        type_tcc_packet: SymbolTypeTcc::PacketReceivedSmallDelta,
                        delta: 250 * rng.below(256) as i64,
                    }),
                    2 => deltas.push(RecvDelta {
                        type_tcc_packet: SymbolTypeTcc::PacketReceivedLargeDelta,
                        delta: 250
                            * match rng.below(4) {
                                0 => -32_768,
                                1 => rng.below(65_536) as i64 - 32_768,
                                _ => rng.below(2_000) as i64 - 1_000,
                            },
                    }),
                    _ => {}
                }
            }
        }
        TransportLayerCc {
            sender_ssrc: rng.next() as u32,
            media_ssrc: rng.next() as u32,
            base_sequence_number: if rng.below(3) == 0 {
                u16::MAX - rng.below(40) as u16
            } else {
                rng.next() as u16
            },
            packet_status_count: count as u16,
            reference_time: if rng.below(4) == 0 {
                rng.below(3) as u32
            } else {
                rng.below(1 << 24) as u32
            },
            fb_pkt_count: rng.next() as u8,
            packet_chunks: chunks,
            recv_deltas: deltas,
        }
    }

    /// rtc's one refusal of a valid feedback: no deltas, and the last
    /// chunk ends exactly at the packet's end (an even number of chunks,
    /// no padding).
    fn rtc_refuses(fb: &TransportLayerCc) -> bool {
        fb.recv_deltas.is_empty() && fb.packet_chunks.len().is_multiple_of(2)
    }

    /// A compound packet of everything the SFU reads and some it skips.
    fn compound(rng: &mut Rng) -> Vec<Box<dyn Packet>> {
        let mut packets: Vec<Box<dyn Packet>> = Vec::new();
        let reports = |rng: &mut Rng| (0..rng.below(4)).map(|_| report(rng)).collect();
        // Browsers start with a report (RFC 3550 §6.1); reduced-size
        // feedback (RFC 5506) starts with whatever.
        match rng.below(3) {
            0 => packets.push(Box::new(SenderReport {
                ssrc: 0x1000 + rng.below(3) as u32,
                ntp_time: rng.next(),
                rtp_time: rng.next() as u32,
                packet_count: rng.next() as u32,
                octet_count: rng.next() as u32,
                reports: reports(rng),
                ..Default::default()
            })),
            1 => packets.push(Box::new(ReceiverReport {
                ssrc: 0x1000 + rng.below(3) as u32,
                reports: reports(rng),
                ..Default::default()
            })),
            _ => {}
        }
        for _ in 0..1 + rng.below(5) {
            let sender_ssrc = 0x1000 + rng.below(3) as u32;
            let p: Box<dyn Packet> = match rng.below(9) {
                0 => Box::new(TransportLayerNack {
                    sender_ssrc,
                    media_ssrc: rng.next() as u32,
                    nacks: (0..1 + rng.below(4))
                        .map(|_| NackPair {
                            packet_id: rng.next() as u16,
                            lost_packets: rng.next() as u16,
                        })
                        .collect(),
                }),
                1 => Box::new(PictureLossIndication {
                    sender_ssrc,
                    media_ssrc: rng.next() as u32,
                }),
                2 => Box::new(FullIntraRequest {
                    sender_ssrc,
                    media_ssrc: 0,
                    fir: (0..1 + rng.below(3))
                        .map(|_| FirEntry {
                            ssrc: rng.next() as u32,
                            sequence_number: rng.next() as u8,
                        })
                        .collect(),
                }),
                3 | 4 => {
                    let mut fb = twcc(rng);
                    while rtc_refuses(&fb) {
                        fb = twcc(rng);
                    }
                    fb.sender_ssrc = sender_ssrc;
                    Box::new(fb)
                }
                5 => Box::new(ReceiverEstimatedMaximumBitrate {
                    sender_ssrc,
                    bitrate: rng.below(10_000_000) as f32,
                    ssrcs: vec![rng.next() as u32, rng.next() as u32],
                }),
                6 => Box::new(SourceDescription {
                    chunks: vec![SourceDescriptionChunk {
                        source: sender_ssrc,
                        items: vec![SourceDescriptionItem {
                            sdes_type: SdesType::SdesCname,
                            text: Bytes::from(format!("cname-{}", rng.below(1 << 40))),
                        }],
                    }],
                }),
                7 => Box::new(Goodbye {
                    sources: vec![sender_ssrc],
                    reason: Bytes::from_static(b"bye"),
                }),
                _ => Box::new(ReceiverReport {
                    ssrc: sender_ssrc,
                    reports: reports(rng),
                    ..Default::default()
                }),
            };
            packets.push(p);
        }
        packets
    }

    fn marshal(packets: &[Box<dyn Packet>]) -> Vec<u8> {
        rtc::rtcp::packet::marshal(packets)
            .expect("rtc marshals")
            .to_vec()
    }

    /// Every field the SFU uses, read by us from compound packets rtc
    /// built, is what rtc reads from them: sender reports, report blocks
    /// of SRs and RRs, NACK pairs and the numbers they name, PLI, FIR
    /// entries, transport-wide acknowledgements; REMB, SDES and BYE
    /// skipped.
    #[test]
    fn we_read_rtcs_compound_packets_as_rtc_does() {
        let mut rng = Rng(0x5eed_0001);
        let mut seen = [0usize; 6];
        for n in 0..3_000 {
            let bytes = marshal(&compound(&mut rng));
            let expected = rtcs(&bytes).expect("rtc reads its own packet");
            let got = ours(&bytes).expect("we read it");
            assert_eq!(got, expected, "compound {n}");
            for e in &got {
                seen[match e {
                    Ev::Sr(..) => 0,
                    Ev::Block(..) => 1,
                    Ev::Nack(..) => 2,
                    Ev::Pli(..) => 3,
                    Ev::Fir(..) => 4,
                    Ev::Twcc(..) => 5,
                }] += 1;
            }
        }
        assert!(seen.iter().all(|n| *n > 300), "every kind, often: {seen:?}");
    }

    /// Our TWCC acknowledgements against rtc's `convert_twcc` of rtc's
    /// parse, for many random feedbacks: runs cut by the status count
    /// (rtc walks their whole length), vectors past it, symbol 3, deltas
    /// saturating below zero, the base number wrapping.
    #[test]
    fn twcc_acknowledgements_are_exactly_rtcs_convert_twcc() {
        let mut rng = Rng(0x7cc0_0002);
        let (mut acks, mut wrapped, mut saturated, mut rtc_refused) = (0, 0, 0, 0);
        for n in 0..10_000 {
            let fb = twcc(&mut rng);
            let refuses = rtc_refuses(&fb);
            let bytes = marshal(&[Box::new(fb) as Box<dyn Packet>]);
            let got = ours(&bytes).expect("a well-formed feedback");
            let Some(expected) = rtcs(&bytes) else {
                assert!(refuses, "rtc refused feedback {n}");
                rtc_refused += 1;
                continue;
            };
            assert!(!refuses, "feedback {n}");
            assert_eq!(got, expected, "feedback {n}");
            let Ev::Twcc(_, base, list) = &got[0] else {
                panic!("not a feedback")
            };
            acks += list.len();
            wrapped += usize::from(list.last().is_some_and(|a| a.0 < *base));
            saturated += usize::from(list.iter().any(|a| a.2 == Some(Duration::ZERO)));
        }
        assert!(acks > 1_000_000, "{acks} acknowledgements");
        assert!(wrapped > 500 && saturated > 100, "{wrapped} {saturated}");
        assert!(rtc_refused < 500, "{rtc_refused}");
    }

    /// Feedback changed at random: whenever rtc and we both take it (and
    /// it has no padding, which rtc reads as content), our reading is
    /// rtc's; either way nothing panics.
    #[test]
    fn changed_feedback_that_both_take_reads_the_same() {
        let mut rng = Rng(0xc4a9_0003);
        let mut both = 0;
        for n in 0..20_000 {
            let mut bytes = marshal(&compound(&mut rng));
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(bytes.len() as u64) as usize;
                bytes[i] ^= 1 << rng.below(8);
            }
            let (got, expected) = (ours(&bytes), rtcs(&bytes));
            let padded = (|| {
                let mut rest = &bytes[..];
                let mut padded = false;
                while let [b0, _, l0, l1, ..] = *rest {
                    padded |= b0 & 0x20 != 0;
                    let len = 4 * (usize::from(u16::from_be_bytes([l0, l1])) + 1);
                    rest = rest.get(len..)?;
                }
                Some(padded)
            })();
            if let (Ok(got), Some(expected), Some(false)) = (got, expected, padded) {
                assert_eq!(got, expected, "change {n}");
                both += 1;
            }
        }
        assert!(both > 5_000, "{both}");
    }

    fn sealed(rtc: &mut Context, plain: &[u8]) -> Vec<u8> {
        rtc.encrypt_rtcp(plain).expect("rtc encrypts").to_vec()
    }

    /// rtc's SRTCP (the browser's side) decrypted by ours, in place, for
    /// both profiles: the plaintext and what it says come out exactly.
    fn we_decrypt_rtcs(profile: (ProtectionProfile, usize)) {
        let (mut ours_ctx, mut theirs) = pair(profile, 5);
        let mut rng = Rng(0x5c7c_0004);
        for n in 0..400 {
            let plain = marshal(&compound(&mut rng));
            let mut buf = sealed(&mut theirs, &plain);
            if plain.len() > 12 {
                assert_ne!(buf[8..plain.len()], plain[8..], "encrypted");
            }
            if n % 2 == 0 {
                let len = ours_ctx
                    .unprotect(&mut buf)
                    .expect("we decrypt rtc's packet");
                assert_eq!(&buf[..len], &plain[..], "packet {n}");
            } else {
                let mut got = Vec::new();
                ours_ctx
                    .read(&mut buf, |r| got.push(r.is_keyframe_request()))
                    .expect("and read it");
                let expected = rtcs(&plain).expect("rtc reads it");
                let keyframe = expected
                    .iter()
                    .filter(|e| matches!(e, Ev::Pli(_) | Ev::Fir(_)));
                assert_eq!(got.len(), expected.len(), "packet {n}");
                assert_eq!(got.iter().filter(|k| **k).count(), keyframe.count());
            }
        }
        assert_eq!(ours_ctx.take_refused(), [0; 3]);
    }

    #[test]
    fn we_decrypt_rtcs_aes_gcm_srtcp() {
        we_decrypt_rtcs(GCM);
    }

    #[test]
    fn we_decrypt_rtcs_aes_cm_hmac_sha1_srtcp() {
        we_decrypt_rtcs(CM);
    }

    /// A small compound packet from `ssrc`, numbered `n` (a receiver
    /// report's block says which).
    fn numbered(ssrc: u32, n: u32) -> Vec<u8> {
        marshal(&[
            Box::new(ReceiverReport {
                ssrc,
                reports: vec![ReceptionReport {
                    ssrc: n,
                    fraction_lost: n as u8,
                    ..Default::default()
                }],
                ..Default::default()
            }) as Box<dyn Packet>,
            Box::new(PictureLossIndication {
                sender_ssrc: ssrc,
                media_ssrc: 77,
            }),
        ])
    }

    /// rtc numbers a sender's SRTCP from 1: packet `n` has index `n`.
    fn run(rtc: &mut Context, ssrc: u32, count: u32) -> Vec<Vec<u8>> {
        (1..=count)
            .map(|n| sealed(rtc, &numbered(ssrc, n)))
            .collect()
    }

    fn take(ours: &mut Srtcp, packet: &[u8]) -> Result<Vec<u8>, SrtcpRefused> {
        let mut buf = packet.to_vec();
        let len = ours.unprotect(&mut buf)?;
        buf.truncate(len);
        Ok(buf)
    }

    fn replays_are_refused_late_packets_in_the_window_taken(profile: (ProtectionProfile, usize)) {
        let (mut ours, mut rtc) = pair(profile, 3);
        let sent = run(&mut rtc, 0xabc, 600);
        let index = |n: usize| &sent[n - 1];
        assert_eq!(take(&mut ours, index(10)), Ok(numbered(0xabc, 10)));
        assert_eq!(take(&mut ours, index(10)), Err(SrtcpRefused::Replay));
        assert_eq!(take(&mut ours, index(5)), Ok(numbered(0xabc, 5)), "late");
        assert_eq!(take(&mut ours, index(5)), Err(SrtcpRefused::Replay));
        assert!(take(&mut ours, index(600)).is_ok());
        assert!(take(&mut ours, index(89)).is_ok(), "511 behind: known");
        assert_eq!(
            take(&mut ours, index(88)),
            Err(SrtcpRefused::Replay),
            "512 behind: too old to tell"
        );
        assert_eq!(take(&mut ours, index(10)), Err(SrtcpRefused::Replay));
        assert_eq!(ours.take_refused(), [4, 0, 0]);
        assert_eq!(ours.take_refused(), [0; 3], "taken");
    }

    #[test]
    fn aes_gcm_replays_are_refused_and_late_packets_in_the_window_taken() {
        replays_are_refused_late_packets_in_the_window_taken(GCM);
    }

    #[test]
    fn aes_cm_replays_are_refused_and_late_packets_in_the_window_taken() {
        replays_are_refused_late_packets_in_the_window_taken(CM);
    }

    /// Indexes past 2^16 (the upper half goes where SRTP's rollover
    /// counter goes, in both IVs).
    #[test]
    fn indexes_past_65536_decrypt() {
        for profile in [GCM, CM] {
            let (mut ours, mut rtc) = pair(profile, 9);
            let plain = numbered(1, 1);
            for _ in 0..65_534 {
                rtc.encrypt_rtcp(&plain).expect("encrypt");
            }
            for n in 65_535..65_540u32 {
                let p = numbered(1, n);
                assert_eq!(take(&mut ours, &sealed(&mut rtc, &p)), Ok(p), "index {n}");
            }
        }
    }

    /// Every single changed byte (header, payload, tag, E flag and index)
    /// is refused, and none of them stops the genuine packet.
    fn forgeries_are_refused(profile: (ProtectionProfile, usize)) {
        let (mut ours, mut rtc) = pair(profile, 4);
        let sent = run(&mut rtc, 0x51, 3);
        assert!(take(&mut ours, &sent[0]).is_ok());
        let genuine = &sent[2];
        let mut refused = 0;
        for i in 0..genuine.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = genuine.clone();
                bad[i] ^= flip;
                let r = take(&mut ours, &bad);
                assert!(
                    matches!(r, Err(SrtcpRefused::Auth | SrtcpRefused::Malformed)),
                    "byte {i} ^ {flip:#x}: {r:?}"
                );
                refused += 1;
            }
        }
        // An authentic packet's index moved to one not yet used: the
        // index is authenticated.
        let mut moved = sent[1].clone();
        let at = match profile.0 {
            ProtectionProfile::AeadAes128Gcm => moved.len() - 1,
            _ => moved.len() - HMAC_TAG_80 - 1,
        };
        moved[at] = moved[at].wrapping_add(5);
        assert_eq!(take(&mut ours, &moved), Err(SrtcpRefused::Auth));
        let [replay, auth, malformed] = ours.take_refused();
        assert_eq!((replay, auth + malformed), (0, refused + 1));
        assert!(auth > malformed, "mostly the tag: {auth} {malformed}");
        assert_eq!(take(&mut ours, genuine), Ok(numbered(0x51, 3)));
        assert_eq!(take(&mut ours, &sent[1]), Ok(numbered(0x51, 2)));
    }

    #[test]
    fn aes_gcm_forgeries_are_refused_and_the_genuine_packet_still_taken() {
        forgeries_are_refused(GCM);
    }

    #[test]
    fn aes_cm_forgeries_are_refused_and_the_genuine_packet_still_taken() {
        forgeries_are_refused(CM);
    }

    /// Cut anywhere, lengthened, or random: refused, never a panic, and
    /// the genuine packet still taken afterwards.
    #[test]
    fn truncated_lengthened_and_random_datagrams_are_refused() {
        for profile in [GCM, CM] {
            let (mut ours, mut rtc) = pair(profile, 6);
            let genuine = sealed(&mut rtc, &numbered(0x77, 1));
            for cut in 0..genuine.len() {
                assert!(take(&mut ours, &genuine[..cut]).is_err(), "cut at {cut}");
            }
            let mut longer = genuine.clone();
            longer.push(0);
            assert!(take(&mut ours, &longer).is_err());
            let mut rng = Rng(0xda7a_0005);
            for _ in 0..20_000 {
                let len = rng.below(120) as usize;
                let mut b = rng.bytes(len);
                if len >= 8 {
                    b[0] = 0x80 | (b[0] & 0x3f);
                    b[1] = 200 + rng.below(8) as u8;
                    if rng.below(2) == 0 {
                        b[4..8].copy_from_slice(&0x77u32.to_be_bytes());
                    }
                }
                if len >= 30 && rng.below(2) == 0 {
                    // E flag set where either profile looks for it.
                    b[len - 4] |= 0x80;
                    b[len - 14] |= 0x80;
                }
                assert!(take(&mut ours, &b).is_err());
            }
            let [replay, auth, malformed] = ours.take_refused();
            assert_eq!(replay + auth + malformed, genuine.len() as u64 + 1 + 20_000);
            assert!(auth > 5_000, "{auth} reached the tag check");
            assert_eq!(take(&mut ours, &genuine), Ok(numbered(0x77, 1)));
        }
    }

    /// Windows for [`MAX_SSRCS`] sending SSRCs; an authentic packet from
    /// one more is refused and counted, forgeries take no slot, and the
    /// SSRCs with a window keep it.
    #[test]
    fn ssrcs_beyond_the_table_are_refused_and_forgeries_take_no_slot() {
        let (mut ours, mut rtc) = pair(GCM, 8);
        let mut rng = Rng(0x55c5_0006);
        for n in 0..100u32 {
            let mut forged = sealed(&mut rtc, &numbered(0x9000 + n, 1));
            let i = 8 + rng.below(forged.len() as u64 - 8) as usize;
            forged[i] ^= 0x10;
            assert_eq!(take(&mut ours, &forged), Err(SrtcpRefused::Auth));
        }
        let ssrcs = 0..MAX_SSRCS as u32 + 3;
        for ssrc in ssrcs.clone() {
            let r = take(&mut ours, &sealed(&mut rtc, &numbered(ssrc, 1)));
            if ssrc < MAX_SSRCS as u32 {
                assert!(r.is_ok(), "SSRC {ssrc}");
            } else {
                assert_eq!(r, Err(SrtcpRefused::TooManySsrcs));
            }
        }
        assert_eq!(ours.take_too_many_ssrcs(), 3);
        assert_eq!(ours.take_refused(), [0, 100, 0]);
        for ssrc in 0..MAX_SSRCS as u32 {
            let p = numbered(ssrc, 2);
            assert_eq!(take(&mut ours, &sealed(&mut rtc, &p)), Ok(p));
        }
    }

    /// E = 0 (RFC 3711 §3.4, authenticated only) is refused as malformed,
    /// even authentic. rtc 0.21.1 takes it: AES-CM returns it without
    /// checking the tag at all, AES-GCM does not authenticate the flag.
    #[test]
    fn unencrypted_srtcp_is_refused_which_rtc_takes_unauthenticated() {
        let plain = numbered(0x42, 1);
        // AES-CM: an authentic E = 0 packet (tag over all before it)...
        let (mut ours, mut rtc_rx) = pair(CM, 2);
        let mut e0 = plain.clone();
        e0.extend_from_slice(&1u32.to_be_bytes());
        let mut tag = [0u8; 20];
        let Cipher::CmSha1 { mac, .. } = &mut ours.cipher else {
            panic!("AES-CM")
        };
        mac.sign(&[&e0], &mut tag).expect("sign");
        e0.extend_from_slice(&tag[..HMAC_TAG_80]);
        assert_eq!(take(&mut ours, &e0), Err(SrtcpRefused::Malformed));
        assert_eq!(
            &rtc_rx.decrypt_rtcp(&e0).expect("rtc takes it")[..],
            &plain[..]
        );
        // ...and one with a tag of zeros, which rtc takes just the same.
        let n = e0.len();
        e0[n - HMAC_TAG_80..].fill(0);
        e0[n - HMAC_TAG_80 - 1] = 2;
        assert!(
            rtc_rx.decrypt_rtcp(&e0).is_ok(),
            "rtc checks no tag at E = 0"
        );
        assert_eq!(take(&mut ours, &e0), Err(SrtcpRefused::Malformed));
        // AES-GCM: the flag of a genuine packet cleared.
        let (mut ours, mut rtc) = pair(GCM, 2);
        let mut rtc_rx = pair(GCM, 2).1;
        let mut flipped = sealed(&mut rtc, &plain);
        let n = flipped.len();
        flipped[n - 4] &= 0x7f;
        assert_eq!(take(&mut ours, &flipped), Err(SrtcpRefused::Malformed));
        assert!(
            rtc_rx.decrypt_rtcp(&flipped).is_ok(),
            "rtc ignores the flag"
        );
        assert_eq!(ours.take_refused(), [0, 0, 1]);
    }

    #[test]
    fn other_profiles_and_keys_are_refused() {
        let c = crypto();
        assert!(matches!(
            Srtcp::new(
                ProtectionProfile::Aes128CmHmacSha1_32,
                &[0; 16],
                &[0; 14],
                c
            ),
            Err(SrtpError::Profile)
        ));
        assert!(matches!(
            Srtcp::new(ProtectionProfile::AeadAes256Gcm, &[0; 32], &[0; 12], c),
            Err(SrtpError::Key | SrtpError::Profile)
        ));
        assert!(matches!(
            Srtcp::new(ProtectionProfile::AeadAes128Gcm, &[0; 16], &[0; 14], c),
            Err(SrtpError::Key)
        ));
    }

    /// A compound packet whose every 4-byte word that is not a header
    /// starts with bits other than `10`, so that any lie about a length
    /// lands on something that is not a header.
    fn plain_compound() -> (Vec<u8>, Vec<usize>) {
        let block = |ssrc| ReceptionReport {
            ssrc,
            fraction_lost: 0x20,
            total_lost: 3,
            last_sequence_number: 0x0001_0203,
            jitter: 0x10,
            last_sender_report: 0x0102_0304,
            delay: 0x0506,
        };
        let packets: Vec<Box<dyn Packet>> = vec![
            Box::new(SenderReport {
                ssrc: 0x0101_0101,
                ntp_time: 0x0102_0304_0506_0708,
                rtp_time: 0x0a0b_0c0d,
                packet_count: 0x10,
                octet_count: 0x2000,
                reports: vec![block(0x0202_0202), block(0x0303_0303)],
                ..Default::default()
            }),
            Box::new(ReceiverReport {
                ssrc: 0x0101_0101,
                reports: vec![block(0x0404_0404)],
                ..Default::default()
            }),
            Box::new(TransportLayerNack {
                sender_ssrc: 0x0101_0101,
                media_ssrc: 0x0202_0202,
                nacks: vec![
                    NackPair {
                        packet_id: 0x0100,
                        lost_packets: 0x8001,
                    },
                    NackPair {
                        packet_id: 0x7fff,
                        lost_packets: 0x0002,
                    },
                ],
            }),
            Box::new(PictureLossIndication {
                sender_ssrc: 0x0101_0101,
                media_ssrc: 0x0303_0303,
            }),
            Box::new(SourceDescription {
                chunks: vec![SourceDescriptionChunk {
                    source: 0x0101_0101,
                    items: vec![SourceDescriptionItem {
                        sdes_type: SdesType::SdesCname,
                        text: Bytes::from_static(b"cname"),
                    }],
                }],
            }),
            Box::new(FullIntraRequest {
                sender_ssrc: 0x0101_0101,
                media_ssrc: 0,
                fir: vec![
                    FirEntry {
                        ssrc: 0x0202_0202,
                        sequence_number: 1,
                    },
                    FirEntry {
                        ssrc: 0x0303_0303,
                        sequence_number: 2,
                    },
                ],
            }),
            Box::new(TransportLayerCc {
                sender_ssrc: 0x0101_0101,
                media_ssrc: 0x0202_0202,
                base_sequence_number: 0x0100,
                packet_status_count: 9,
                reference_time: 0x01_0203,
                fb_pkt_count: 7,
                packet_chunks: vec![
                    PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                        type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                        packet_status_symbol: SymbolTypeTcc::PacketReceivedSmallDelta,
                        run_length: 2,
                    }),
                    PacketStatusChunk::StatusVectorChunk(StatusVectorChunk {
                        type_tcc: StatusChunkTypeTcc::StatusVectorChunk,
                        symbol_size: SymbolSizeTypeTcc::TwoBit,
                        symbol_list: [2, 0, 1, 0, 0, 0, 0].map(SymbolTypeTcc::from).to_vec(),
                    }),
                ],
                recv_deltas: [(1, 4), (1, 8), (2, -3), (1, 0x7f)]
                    .map(|(s, d)| RecvDelta {
                        type_tcc_packet: SymbolTypeTcc::from(s),
                        delta: 250 * d,
                    })
                    .to_vec(),
            }),
        ];
        let mut starts = vec![0];
        for p in &packets {
            starts.push(starts.last().unwrap() + p.marshal_size());
        }
        (marshal(&packets), starts)
    }

    /// A compound packet cut anywhere but between sub-packets, or with
    /// any length, count or padding that lies, is refused whole: no
    /// event, no panic.
    #[test]
    fn cut_and_lying_compound_packets_are_refused_without_events() {
        let (good, starts) = plain_compound();
        let all = ours(&good).expect("the compound reads");
        assert_eq!(Some(&all), rtcs(&good).as_ref());
        assert_eq!(all.len(), 1 + 2 + 1 + 1 + 1 + 2 + 1);
        let refused = |bytes: &[u8], what: &str| {
            let mut visited = 0;
            assert_eq!(parse(bytes, |_| visited += 1), Err(Malformed), "{what}");
            assert_eq!(visited, 0, "{what}: events before the refusal");
        };
        for cut in 0..good.len() {
            if cut > 0 && starts.contains(&cut) {
                // A shorter compound packet: what its packets say.
                let prefix = ours(&good[..cut]).expect("whole packets");
                assert_eq!(prefix[..], all[..prefix.len()]);
            } else {
                refused(&good[..cut], &format!("cut at {cut}"));
            }
        }
        for (i, &at) in starts[..starts.len() - 1].iter().enumerate() {
            let len = u16::from_be_bytes([good[at + 2], good[at + 3]]);
            for lie in [len.wrapping_sub(1), len + 1, len + 2, 0, u16::MAX] {
                let mut bad = good.clone();
                bad[at + 2..at + 4].copy_from_slice(&lie.to_be_bytes());
                refused(&bad, &format!("packet {i}: length {len} said {lie}"));
            }
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            refused(&bad, &format!("packet {i}: version 1"));
            // Padding claimed: the last byte (0 or data) is no count of
            // it, except the TWCC's, whose padding is real (2 bytes)...
            let end = starts[i + 1];
            let mut bad = good.clone();
            bad[at] |= 0x20;
            if good[at] & 0x20 == 0 {
                refused(&bad, &format!("packet {i}: padding claimed"));
            }
            // ...and padding longer than the packet.
            bad[end - 1] = (end - at) as u8 - 3;
            refused(&bad, &format!("packet {i}: padding past the header"));
        }
        // Counts: one report block more than there is (SR, RR), FCI cut
        // to no entry (NACK, FIR), TWCC status count past its chunks.
        for (i, lie) in [(0, 0x83), (1, 0x82)] {
            let mut bad = good.clone();
            bad[starts[i]] = lie;
            refused(&bad, &format!("packet {i}: report count"));
        }
        for i in [2, 5] {
            let mut bad = good[..starts[i]].to_vec();
            bad.extend_from_slice(&good[starts[i]..starts[i] + 12]);
            bad[starts[i] + 3] = 2;
            refused(&bad, &format!("packet {i}: no FCI"));
        }
        let twcc = starts[6];
        for count in [10u16, 16, 17, 0x100] {
            let mut bad = good.clone();
            bad[twcc + 14..twcc + 16].copy_from_slice(&count.to_be_bytes());
            refused(&bad, &format!("TWCC status count {count}"));
        }
        refused(&[], "empty");
    }

    /// 20,000 random buffers, shaped like RTCP often enough to get past
    /// the headers: never a panic, and a refusal visits nothing.
    #[test]
    fn random_buffers_never_panic() {
        let mut rng = Rng(0xf022_0007);
        let mut read = 0;
        for _ in 0..20_000 {
            let len = rng.below(200) as usize;
            let mut b = rng.bytes(len);
            if rng.below(4) != 0 {
                // Sub-packets of plausible types, counts and lengths that
                // tile the buffer; bodies random.
                b.clear();
                for _ in 0..1 + rng.below(4) {
                    let words = rng.below(12) as u16;
                    let [l0, l1] = words.to_be_bytes();
                    let pt = 200 + rng.below(8) as u8;
                    let count = [0, 1, 2, 4, 15][rng.below(5) as usize];
                    let pad = if rng.below(8) == 0 { 0x20 } else { 0 };
                    b.extend_from_slice(&[0x80 | pad | count, pt, l0, l1]);
                    let body = rng.bytes(4 * usize::from(words));
                    b.extend(body);
                }
            }
            let mut visited = 0;
            let r = parse(&b, |r| {
                visited += 1;
                if let Rtcp::Twcc(fb) = r {
                    fb.for_each_ack(|_, _, _| {});
                }
            });
            if r.is_err() {
                assert_eq!(visited, 0);
            } else {
                read += 1;
            }
        }
        assert!(read > 1_000, "{read} read");
    }
}
