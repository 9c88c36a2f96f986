//! The outbound fast path: media to one subscriber, built, encrypted and
//! queued by us instead of rtc's RTP pipeline (docs/DECISIONS.md §10).
//!
//! Per forwarded packet: one buffer (header + transport-wide sequence
//! number + payload + tag), our SRTP in place (`srtp.rs`), a copy of the
//! ciphertext into the track's retransmission ring (video), one entry in
//! the transport-wide send history. What rtc's interceptors did for these
//! SSRCs is done here instead, because an SSRC must be wholly ours:
//! - **NACK**: a subscriber's NACK resends the *same ciphertext* from the
//!   ring (never a second encryption of one index); the pacer's
//!   retransmission bound still applies (`Peer::pace`).
//! - **Transport-wide CC**: our sequence numbers in the negotiated header
//!   extension; the subscriber's feedback, decrypted and parsed by us
//!   (`rtcp_in.rs`, the same acknowledgements rtc's `convert_twcc` gives;
//!   `feedback` keeps the rtc-parsed form for RTCP rtc still read), is
//!   matched against our send ring (`SendHistory`, the same reports rtc's
//!   `History` gave, without its three SipHash maps per packet) into the
//!   same GCC (`bwe::ReportingGcc`) as before.
//! - **Sender reports**: built from our counters once a second and sent
//!   through rtc's SRTCP (`Peer::tick`); the RTCP we *send* is still
//!   encrypted by rtc, what we receive is decrypted by us.

use crate::bwe::ReportingGcc;
use crate::pacer::RetransmitLimit;
use crate::rtcp_in::TwccFeedback;
use crate::srtp::{Rollover, Srtp};
use crate::tx::BufferPool;
use bytes::BytesMut;
use rtc::interceptor::{BandwidthEstimator, PacketReport, convert_twcc};
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::cc_feedback_report::Ecn;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::shared::{TaggedBytesMut, TransportContext};
use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Transport-wide CC extension URI (what our offer negotiates).
pub(crate) const TWCC_URI: &str =
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";
/// Send records older than this are dropped unanswered (feedback comes
/// every ~50-100 ms; a subscriber that stopped sending it loses nothing).
const HISTORY_HORIZON: Duration = Duration::from_secs(2);
/// Packets queued but not yet taken by the worker (it takes them after
/// every forward; bounded against a peer that is never flushed).
const QUEUE_MAX: usize = 1024;

/// The largest datagram a browser's RTP packet makes on the wire: 1,200
/// bytes of RTP (libwebrtc's limit) and the 16-byte SRTP tag; what a
/// resend slot that must grow grows to.
const FULL_DATAGRAM: usize = 1_216;

/// A video track's ring of sent ciphertext, for NACKs: `slots` entries
/// indexed by sequence number, buffers reused (no allocation once warm).
pub(crate) struct Resend {
    slots: Vec<(u16, Vec<u8>)>,
}

impl Resend {
    pub(crate) fn new(slots: u16) -> Resend {
        Resend {
            slots: Vec::with_capacity(slots.max(1) as usize),
        }
    }

    fn capacity(&self) -> usize {
        self.slots.capacity()
    }

    fn store(&mut self, seq: u16, packet: &[u8]) {
        let i = seq as usize % self.capacity();
        if i >= self.slots.len() {
            // Grows in order: the first lap fills slots 0, 1, 2, ...
            // (sequence numbers start anywhere, so pad up to `i`).
            self.slots
                .resize_with(i + 1, || (seq.wrapping_add(1), Vec::new()));
        }
        let slot = &mut self.slots[i];
        slot.0 = seq;
        slot.1.clear();
        if slot.1.capacity() < packet.len() {
            // Sized to the datagram (rounded up to 64 bytes), never grown
            // by doubling (a slot that held 1,150 bytes and then 1,200
            // would keep 2,300: RSS per peer at 75 consults 794 KB with
            // doubling, ~700 KB without). A slot that must grow goes
            // straight to a full-size datagram, so it grows at most once
            // (it used to, two or three times over the first minute), and
            // a layer of small packets keeps small slots.
            let len = match slot.1.capacity() {
                0 => packet.len(),
                _ => packet.len().max(FULL_DATAGRAM),
            };
            slot.1 = Vec::with_capacity(len.next_multiple_of(64));
        }
        slot.1.extend_from_slice(packet);
    }

    /// The ciphertext sent with `seq`, if still held.
    pub(crate) fn get(&self, seq: u16) -> Option<&[u8]> {
        let slot = self.slots.get(seq as usize % self.capacity())?;
        (slot.0 == seq && !slot.1.is_empty()).then_some(&slot.1[..])
    }
}

/// Our sending state of one outgoing SSRC.
pub(crate) struct TrackOut {
    rollover: Rollover,
    packets: u32,
    octets: u32,
    clock_rate: u32,
    /// RTP timestamp and time of the newest packet, for sender reports.
    last: Option<(u32, Instant)>,
    resend: Option<Resend>,
}

impl TrackOut {
    pub(crate) fn new(clock_rate: u32, resend_slots: Option<u16>) -> TrackOut {
        TrackOut {
            rollover: Rollover::default(),
            packets: 0,
            octets: 0,
            clock_rate,
            last: None,
            resend: resend_slots.map(Resend::new),
        }
    }

    /// The packet index of `seq`, claimed for one encryption (`None`: used
    /// already or out of the window: see `Rollover::claim`).
    pub(crate) fn claim(&mut self, seq: u16) -> Option<u64> {
        self.rollover.claim(seq)
    }

    /// `packet` (SRTP, `payload_len` bytes of payload, RTP timestamp
    /// `timestamp`) was sent as `seq`: counted for sender reports and kept
    /// for NACKs if this track keeps any.
    pub(crate) fn sent(
        &mut self,
        (seq, timestamp, payload_len): (u16, u32, usize),
        packet: &[u8],
        now: Instant,
    ) {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload_len as u32);
        if self.last.is_none_or(|(ts, _)| seq_ts_newer(timestamp, ts)) {
            self.last = Some((timestamp, now));
        }
        if let Some(ring) = self.resend.as_mut() {
            ring.store(seq, packet);
        }
    }

    /// The ciphertext sent as `seq`, if still held.
    pub(crate) fn held(&self, seq: u16) -> Option<&[u8]> {
        self.resend.as_ref().and_then(|r| r.get(seq))
    }

    /// A sender report for `ssrc` as of `now`, if anything was sent.
    pub(crate) fn sender_report(
        &self,
        ssrc: u32,
        now: Instant,
        wall: SystemTime,
    ) -> Option<SenderReport> {
        let (ts, at) = self.last?;
        let since = now.saturating_duration_since(at);
        let ticks = (since.as_micros() as u64 * self.clock_rate as u64 / 1_000_000) as u32;
        Some(SenderReport {
            ssrc,
            ntp_time: ntp(wall),
            rtp_time: ts.wrapping_add(ticks),
            packet_count: self.packets,
            octet_count: self.octets,
            ..Default::default()
        })
    }
}

/// NTP timestamp (RFC 3550 §4) of a wall-clock time.
pub(crate) fn ntp(wall: SystemTime) -> u64 {
    const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
    let d = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() + NTP_UNIX_OFFSET;
    let frac = ((d.subsec_nanos() as u64) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// What `OwnMedia::send` needs of the rewritten packet (and what the load
/// generator's endpoint sends: `endpoint::RtpOut`).
#[derive(Debug, Clone, Copy)]
pub struct Outbound<'a> {
    pub ssrc: u32,
    pub seq: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub payload_type: u8,
    pub payload: &'a [u8],
}

impl Outbound<'_> {
    /// Append the RTP packet (header, the transport-wide sequence number
    /// `twcc` = (extension id, number) in the RFC 8285 one-byte form if
    /// any, payload) to `buf`.
    pub(crate) fn write_into(&self, buf: &mut BytesMut, twcc: Option<(u8, u16)>) {
        buf.extend_from_slice(&[
            0x80 | if twcc.is_some() { 0x10 } else { 0 },
            (self.marker as u8) << 7 | (self.payload_type & 0x7f),
        ]);
        buf.extend_from_slice(&self.seq.to_be_bytes());
        buf.extend_from_slice(&self.timestamp.to_be_bytes());
        buf.extend_from_slice(&self.ssrc.to_be_bytes());
        if let Some((id, seq)) = twcc {
            // One element of two bytes, padded to a word.
            let [hi, lo] = seq.to_be_bytes();
            buf.extend_from_slice(&[0xbe, 0xde, 0, 1, id << 4 | 1, hi, lo, 0]);
        }
        buf.extend_from_slice(self.payload);
    }
}

/// Sequence numbers of one NACK looked at, at most: four times the resend
/// ring a peer keeps (`peer::RESEND_SLOTS`); a NACK packet of 1,200 bytes
/// can name ~5,000, most of them necessarily not held or named twice.
const NACKED_PER_PACKET: usize = 4 * crate::peer::RESEND_SLOTS as usize;

/// A NACK for a packet sent less than this long ago that no feedback has
/// spoken of yet is held until the next feedback says whether the packet
/// arrived (`OwnMedia::resend`, `OwnMedia::answer_held`): about a round
/// trip on a LAN or a DSL line, where the feedback lags the NACK; on
/// longer paths the packet is older than this when its NACK comes, and is
/// answered at once.
const NACK_PATIENCE: Duration = Duration::from_millis(100);
/// NACKed packets held for the next feedback at most; beyond, a NACK is
/// answered at once (as if patience had run out).
const HELD_MAX: usize = 64;

/// What a subscriber's feedback said of a packet we sent.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// It arrived.
    Arrived,
    /// Nothing yet, and it left less than [`NACK_PATIENCE`] ago.
    Pending,
    /// Lost, or no word and older, or no record.
    Unknown,
}

/// RTP clock rate of every video codec (RFC 7741 for VP8); audio's differs.
const VIDEO_CLOCK: u32 = 90_000;

/// The transport-wide sequence number in a packet we built (`send`: the
/// extension `id` as the header's only element, RFC 8285 one-byte form).
/// The header is not encrypted, so a stored ciphertext tells it too.
fn twcc_seq_of(packet: &[u8], id: u8) -> Option<u16> {
    match packet {
        [
            b0,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            0xbe,
            0xde,
            0,
            1,
            el,
            hi,
            lo,
            ..,
        ] if b0 & 0x1f == 0x10 && *el == id << 4 | 1 => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    }
}

/// Send records kept for transport-wide feedback: 1,024 packets, ~0.7 s
/// of a subscriber receiving 1,500 packets/s (feedback comes every
/// 50-100 ms), ~40 KB.
const HISTORY_SLOTS: usize = 1024;

/// One packet sent, as GCC will want to hear of it. `id` 0: empty.
#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    id: u64,
    departure: Option<Instant>,
    arrival: Option<Duration>,
    ssrc: u32,
    rtp_seq: u16,
    size: u16,
    arrived: bool,
    /// A feedback spoke of it (arrived or not). One that did not was
    /// covered by a feedback that got lost: unknown, not lost.
    covered: bool,
    /// An audio packet (its loss is what pauses video, `Peer::tick`).
    audio: bool,
    /// Resent on a NACK: the copy carries the same transport-wide number,
    /// so its arrival after a "lost" verdict is the repair, not the
    /// original arriving late — the link lost it.
    resent: bool,
}

/// What we sent under each transport-wide sequence number, for the
/// subscriber's feedback to turn into GCC's packet reports: a ring indexed
/// by that number (no map, no hash, no allocation per packet; rtc's
/// `History` keyed three SipHash maps per packet). Reports come out as
/// rtc's `History` gives them: in sending order, every packet up to the
/// highest one acknowledged as arrived, once.
#[derive(Default)]
struct SendHistory {
    slots: Vec<Sent>,
    /// Unwrapped number of the next packet sent (the record's `id`).
    next: u64,
    highest_acked: Option<u64>,
    next_to_report: u64,
    /// Packets feedback spoke of, once reported: [arrived, lost], all and
    /// audio only (`take_acked`).
    acked: [[u64; 2]; 2],
}

impl SendHistory {
    /// Record a packet sent with transport-wide number `twcc` (numbers go
    /// up by one per packet; the first one sets the start).
    fn add(
        &mut self,
        (ssrc, rtp_seq, audio): (u32, u16, bool),
        twcc: u16,
        size: usize,
        departure: Instant,
    ) {
        if self.slots.is_empty() {
            self.slots.resize(HISTORY_SLOTS, Sent::default());
        }
        if self.next == 0 || self.next as u16 != twcc {
            // First packet, or a jump: start the count at this number.
            self.next = (self.next & !0xffff) + (1 << 16) + twcc as u64;
            self.next_to_report = self.next;
            self.highest_acked = None;
        }
        let id = self.next;
        self.next += 1;
        self.slots[id as usize % HISTORY_SLOTS] = Sent {
            id,
            departure: Some(departure),
            arrival: None,
            ssrc,
            rtp_seq,
            size: size.min(u16::MAX as usize) as u16,
            arrived: false,
            covered: false,
            audio,
            resent: false,
        };
    }

    /// The record `seq` names: the most recent packet sent with that
    /// number, if still held, and whether it was reported already.
    fn slot(&mut self, seq: u16) -> Option<(&mut Sent, bool)> {
        let newest = self.next.checked_sub(1)?;
        let back = (newest as u16).wrapping_sub(seq) as u64;
        let id = newest.checked_sub(back)?;
        if back as usize >= HISTORY_SLOTS {
            return None;
        }
        let reported = id < self.next_to_report;
        let r = &mut self.slots[id as usize % HISTORY_SLOTS];
        (r.id == id).then_some((r, reported))
    }

    /// The subscriber's word on `seq`.
    fn acknowledge(&mut self, seq: u16, arrived: bool, arrival: Option<Duration>) {
        let Some((r, reported)) = self.slot(seq) else {
            return;
        };
        if reported {
            // A packet reported lost that arrived after all (sent after
            // later ones; the receiver reports it again): GCC heard its
            // verdict, as from rtc's History, but it is not loss — unless
            // what arrived is our resend of it.
            if arrived && r.covered && !r.arrived && !r.resent {
                r.arrived = true;
                let audio = r.audio;
                for acked in &mut self.acked[..1 + usize::from(audio)] {
                    acked[1] = acked[1].saturating_sub(1);
                    acked[0] += 1;
                }
            }
            return;
        }
        r.arrived = arrived;
        r.arrival = arrival;
        r.covered = true;
        if arrived {
            let id = r.id;
            self.highest_acked = Some(self.highest_acked.map_or(id, |h| h.max(id)));
        }
    }

    /// Reports of everything up to the highest packet acknowledged as
    /// arrived, into `out` (cleared first).
    fn take_reports(&mut self, out: &mut Vec<PacketReport>) {
        out.clear();
        let Some(highest) = self.highest_acked else {
            return;
        };
        let oldest = self.next.saturating_sub(HISTORY_SLOTS as u64);
        for id in self.next_to_report.max(oldest)..=highest {
            let slot = &mut self.slots[id as usize % HISTORY_SLOTS];
            if slot.id != id {
                continue;
            }
            // Kept (not cleared) for a late word on it (`acknowledge`).
            let r = *slot;
            if r.covered {
                for acked in &mut self.acked[..1 + usize::from(r.audio)] {
                    acked[usize::from(!r.arrived)] += 1;
                }
            }
            if let Some(departure) = r.departure {
                out.push(PacketReport {
                    ssrc: r.ssrc,
                    id,
                    rtp_sequence_number: r.rtp_seq,
                    is_twcc: true,
                    twcc_sequence_number: id as u16,
                    size: r.size as usize,
                    arrived: r.arrived,
                    departure,
                    arrival: r.arrival,
                    ecn: Ecn::NotEct,
                });
            }
        }
        self.next_to_report = self.next_to_report.max(highest + 1);
    }

    /// What the feedback said of `seq` so far, at `now`.
    fn verdict(&mut self, seq: u16, now: Instant) -> Verdict {
        match self.slot(seq) {
            Some((r, _)) if r.covered && r.arrived => Verdict::Arrived,
            Some((r, _))
                if !r.covered
                    && r.departure
                        .is_some_and(|d| now.saturating_duration_since(d) < NACK_PATIENCE) =>
            {
                Verdict::Pending
            }
            _ => Verdict::Unknown,
        }
    }

    /// `seq` was resent (see [`Sent::resent`]).
    fn mark_resent(&mut self, seq: u16) {
        if let Some((r, _)) = self.slot(seq) {
            r.resent = true;
        }
    }

    /// Drop records sent before `cutoff` (feedback for them will not come).
    fn forget_before(&mut self, cutoff: Instant) {
        let oldest = self.next.saturating_sub(HISTORY_SLOTS as u64);
        let mut id = self.next_to_report.max(oldest);
        while id < self.next {
            let slot = &mut self.slots[id as usize % HISTORY_SLOTS];
            if slot.id == id && slot.departure.is_some_and(|d| d >= cutoff) {
                break;
            }
            if slot.id == id {
                *slot = Sent::default();
            }
            id += 1;
        }
        self.next_to_report = id;
        if self.highest_acked.is_some_and(|h| h < id) {
            self.highest_acked = None;
        }
    }
}

/// One subscriber's outbound media state.
pub(crate) struct OwnMedia {
    srtp: Srtp,
    twcc_ext: Option<u8>,
    twcc_seq: u16,
    history: SendHistory,
    /// Reused for each feedback's reports.
    reports: Vec<PacketReport>,
    gcc: ReportingGcc,
    queue: VecDeque<TaggedBytesMut>,
    /// Retransmissions, kept apart so the pacer knows them from a late
    /// packet forwarded for the first time (`poll_marked`).
    resends: VecDeque<TaggedBytesMut>,
    /// Packets refused (no path yet, SRTP index exhausted): counted.
    pub dropped: u64,
    /// Retransmissions queued from the ring, and NACKed packets no longer
    /// (or never) in it.
    pub resent: u64,
    pub not_held: u64,
    /// NACKed packets the subscriber's transport-wide feedback had already
    /// reported as arrived (reordered on the way, NACKed before they came):
    /// not resent.
    pub arrived_already: u64,
    /// NACKed packets no feedback had spoken of yet, sent less than
    /// [`NACK_PATIENCE`] ago: held for the next feedback (see `resend`).
    pub too_early: u64,
    /// Transport-wide numbers of those held packets (at most
    /// [`HELD_MAX`]), and the (SSRC, sequence number) of those a feedback
    /// has since reported lost: to resend now (`take_due`).
    held: Vec<u16>,
    due: Vec<(u32, u16)>,
    /// Transport-wide CC feedback packets taken in.
    pub feedbacks: u64,
}

impl OwnMedia {
    pub(crate) fn new(srtp: Srtp, gcc: ReportingGcc) -> OwnMedia {
        OwnMedia {
            srtp,
            twcc_ext: None,
            twcc_seq: 0,
            history: SendHistory::default(),
            reports: Vec::new(),
            gcc,
            queue: VecDeque::new(),
            resends: VecDeque::new(),
            dropped: 0,
            resent: 0,
            not_held: 0,
            arrived_already: 0,
            too_early: 0,
            held: Vec::new(),
            due: Vec::new(),
            feedbacks: 0,
        }
    }

    /// [arrived, lost] by transport-wide feedback since the last call, of
    /// all packets and of audio only: the loss on the subscriber's own
    /// downlink (a hole in a publisher's stream is never sent, so it does
    /// not count here, unlike in the subscriber's receiver reports). Only
    /// packets a feedback spoke of count, and one reported lost that
    /// arrives after all counts as arrived — unless we resent it.
    pub(crate) fn take_acked(&mut self) -> [[u64; 2]; 2] {
        std::mem::take(&mut self.history.acked)
    }

    /// The transport-wide CC extension id the subscriber's answer agreed
    /// to (`None`: no such feedback, no estimate; see `ReportingGcc`).
    pub(crate) fn set_twcc_ext(&mut self, id: Option<u8>) {
        self.twcc_ext = id.filter(|id| (1..=14).contains(id));
    }

    /// Build, encrypt and queue one packet on `path`. Returns the bytes
    /// queued (0 if refused).
    pub(crate) fn send(
        &mut self,
        track: &mut TrackOut,
        p: &Outbound<'_>,
        (path, pool): (Option<TransportContext>, &mut BufferPool),
        now: Instant,
    ) -> usize {
        let Some(path) = path else {
            self.dropped += 1;
            return 0;
        };
        if self.queue.len() >= QUEUE_MAX {
            self.dropped += 1;
            return 0;
        }
        let Some(index) = track.claim(p.seq) else {
            self.dropped += 1;
            return 0;
        };
        let ext = self.twcc_ext;
        let head = 12 + if ext.is_some() { 8 } else { 0 };
        let len = head + p.payload.len();
        let mut buf = pool.take(len + self.srtp.overhead());
        let twcc = self.twcc_seq;
        p.write_into(&mut buf, ext.map(|id| (id, twcc)));
        buf.resize(len + self.srtp.overhead(), 0);
        let Ok(total) = self.srtp.protect(&mut buf, len, (index >> 16) as u32) else {
            self.dropped += 1;
            return 0;
        };
        buf.truncate(total);
        if ext.is_some() {
            self.twcc_seq = twcc.wrapping_add(1);
            let audio = track.clock_rate != VIDEO_CLOCK;
            self.history.add((p.ssrc, p.seq, audio), twcc, total, now);
        }
        track.sent((p.seq, p.timestamp, p.payload.len()), &buf, now);
        self.queue.push_back(TaggedBytesMut {
            now,
            transport: path,
            message: buf,
        });
        total
    }

    /// A NACK from the subscriber naming `seqs` of the track `ssrc`: each
    /// answered as [`resend`](Self::resend) decides, the first
    /// [`NACKED_PER_PACKET`] only.
    pub(crate) fn answer_nack(
        &mut self,
        (track, ssrc): (&TrackOut, u32),
        seqs: impl Iterator<Item = u16>,
        path: Option<TransportContext>,
        limit: &mut RetransmitLimit,
        now: Instant,
    ) {
        // Rare: fresh buffers, not the worker's pool.
        let pool = &mut BufferPool::default();
        for seq in seqs.take(NACKED_PER_PACKET) {
            self.resend((track, ssrc, seq), (path, pool), limit, now);
        }
    }

    /// A NACK for `seq` of the track `ssrc`: its ciphertext again, as
    /// sent — if `limit` lets it go (the retransmission budget and the
    /// interval between two resends of one packet), checked before
    /// anything is copied and whether or not the subscriber is paced: a
    /// NACK naming the same packets over and over is answered once per
    /// interval, within the budget.
    pub(crate) fn resend(
        &mut self,
        (track, ssrc, seq): (&TrackOut, u32, u16),
        (path, pool): (Option<TransportContext>, &mut BufferPool),
        limit: &mut RetransmitLimit,
        now: Instant,
    ) {
        let (Some(path), Some(bytes)) = (path, track.held(seq)) else {
            self.not_held += 1;
            return;
        };
        if self.queue.len() + self.resends.len() >= QUEUE_MAX {
            self.dropped += 1;
            return;
        }
        let twcc = self.twcc_ext.and_then(|id| twcc_seq_of(bytes, id));
        // A browser NACKs a packet that comes out of order before it
        // comes. If its transport-wide feedback has said since that the
        // packet arrived, a resend is a copy; if no feedback has spoken of
        // it yet and it left less than NACK_PATIENCE ago, it may be on its
        // way: the browser asks again a round trip later if not, and by
        // then the feedback tells. In the 5 % browser scenario (±5 ms of
        // jitter reorders the downlink) most NACKs were for packets the
        // feedback later reported as arrived, and their copies spent the
        // budget that real repairs then lacked.
        match twcc.map(|t| self.history.verdict(t, now)) {
            Some(Verdict::Arrived) => {
                self.arrived_already += 1;
                return;
            }
            Some(Verdict::Pending) if self.held.len() < HELD_MAX => {
                // Held, not dropped: the feedback that covers it decides
                // (`answer_held`), so a loss is repaired then, not a
                // round trip later at the browser's next ask.
                self.too_early += 1;
                if let Some(twcc) = twcc.filter(|t| !self.held.contains(t)) {
                    self.held.push(twcc);
                }
                return;
            }
            _ => {}
        }
        if !limit.allow(ssrc, seq, bytes.len(), now) {
            return;
        }
        if let Some(twcc) = twcc {
            self.history.mark_resent(twcc);
        }
        self.resent += 1;
        let mut message = pool.take(bytes.len());
        message.extend_from_slice(bytes);
        self.resends.push_back(TaggedBytesMut {
            now,
            transport: path,
            message,
        });
    }

    /// An SRTCP packet of ours for this peer (`Peer::send_rtcp`), sent
    /// at once like everything but video (the pacer lets it pass).
    pub(crate) fn queue_rtcp(&mut self, bytes: &[u8], path: TransportContext, now: Instant) {
        if self.queue.len() >= QUEUE_MAX {
            self.dropped += 1;
            return;
        }
        self.queue.push_back(TaggedBytesMut {
            now,
            transport: path,
            message: bytes::BytesMut::from(bytes),
        });
    }

    /// The subscriber's transport-wide CC feedback, into GCC.
    pub(crate) fn feedback(&mut self, fb: &TransportLayerCc, now: Instant) {
        self.feedbacks += 1;
        for ack in convert_twcc(fb) {
            self.history
                .acknowledge(ack.sequence_number, ack.arrived, ack.arrival);
        }
        self.report(now);
        self.answer_held(now);
    }

    /// The same from our own reading of the subscriber's RTCP
    /// (`rtcp_in.rs`): the same acknowledgements, without rtc's packet and
    /// `convert_twcc`'s vector.
    pub(crate) fn feedback_acks(&mut self, fb: &TwccFeedback<'_>, now: Instant) {
        self.feedbacks += 1;
        let history = &mut self.history;
        fb.for_each_ack(|seq, arrived, arrival| history.acknowledge(seq, arrived, arrival));
        self.report(now);
        self.answer_held(now);
    }

    /// After a feedback: held NACKs it decided. Reported arrived: no
    /// copy. Reported lost: due for a resend (`take_due`). Not covered
    /// yet: still held while younger than [`HISTORY_HORIZON`]; resent in
    /// the meantime (a later NACK, answered): dropped.
    fn answer_held(&mut self, now: Instant) {
        let (history, due) = (&mut self.history, &mut self.due);
        let mut arrived = 0;
        self.held.retain(|&twcc| match history.slot(twcc) {
            Some((r, _)) if r.resent => false,
            Some((r, _)) if r.covered => {
                if r.arrived {
                    arrived += 1;
                } else if due.len() < HELD_MAX {
                    due.push((r.ssrc, r.rtp_seq));
                }
                false
            }
            Some((r, _)) => r
                .departure
                .is_some_and(|d| now.saturating_duration_since(d) < HISTORY_HORIZON),
            None => false,
        });
        self.arrived_already += arrived;
    }

    /// Held NACKs a feedback has reported lost since the last call, as
    /// (SSRC, sequence number): the peer resends each (`resend`).
    pub(crate) fn take_due(&mut self, out: &mut Vec<(u32, u16)>) {
        out.clear();
        out.append(&mut self.due);
    }

    /// The send records acknowledged so far, as reports into GCC.
    fn report(&mut self, now: Instant) {
        self.history.take_reports(&mut self.reports);
        self.gcc.on_reports(now, &self.reports);
    }

    /// Once a second: GCC's own timers, old send records.
    pub(crate) fn tick(&mut self, now: Instant) {
        self.gcc.handle_timeout(now);
        self.history
            .forget_before(now.checked_sub(HISTORY_HORIZON).unwrap_or(now));
    }

    /// The next packet to send.
    pub(crate) fn poll(&mut self) -> Option<TaggedBytesMut> {
        self.poll_marked().map(|(msg, _)| msg)
    }

    /// The next packet to send, and whether it is a retransmission (what
    /// the pacer's retransmission budget applies to). First sends go first.
    pub(crate) fn poll_marked(&mut self) -> Option<(TaggedBytesMut, bool)> {
        match self.queue.pop_front() {
            Some(msg) => Some((msg, false)),
            None => self.resends.pop_front().map(|msg| (msg, true)),
        }
    }
}

/// `a` is a later RTP timestamp than `b` (modulo 2^32).
fn seq_ts_newer(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 1 << 31
}

/// The transport-wide CC extension id in an SDP (`a=extmap:N <uri>`).
pub(crate) fn twcc_ext_id(sdp: &str) -> Option<u8> {
    sdp.lines().find_map(|line| {
        let rest = line.strip_prefix("a=extmap:")?;
        let (id, uri) = rest.split_once(' ')?;
        let id = id.split('/').next()?;
        (uri.trim() == TWCC_URI).then(|| id.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srtp::Srtp;

    #[test]
    fn a_resend_slot_holds_one_datagram_not_a_doubled_buffer() {
        let mut ring = Resend::new(4);
        let buffers =
            |ring: &Resend| -> Vec<_> { ring.slots.iter().map(|(_, b)| b.as_ptr()).collect() };
        // Every slot sees a small packet, then a larger one a lap later
        // (one reallocation, to a full-size datagram), then packets of
        // any size up to that (none).
        for seq in 0..4u16 {
            ring.store(seq, &vec![seq as u8; 500]);
        }
        for seq in 4..8u16 {
            ring.store(seq, &vec![seq as u8; 900]);
        }
        let grown = buffers(&ring);
        for (seq, len) in (8..16u16).zip([1_216, 1_150, 1_201, 700, 1_216, 90, 1_000, 1_210]) {
            ring.store(seq, &vec![seq as u8; len]);
        }
        assert_eq!(buffers(&ring), grown, "a slot grew twice");
        assert_eq!(ring.get(15).map(<[u8]>::len), Some(1_210));
        let held: usize = ring.slots.iter().map(|(_, b)| b.capacity()).sum();
        assert!(held <= 4 * 1_216, "{held} bytes held for 4 slots");
        // A layer of small packets keeps small slots.
        let mut small = Resend::new(4);
        for seq in 0..12u16 {
            small.store(seq, &vec![0; 600 + usize::from(seq % 3)]);
        }
        let held: usize = small.slots.iter().map(|(_, b)| b.capacity()).sum();
        assert!(
            held <= 4 * 640,
            "{held} bytes held for 4 slots of ~600-byte packets"
        );
        // A datagram larger than a buffer still fits.
        ring.store(16, &[1; 2_000]);
        assert_eq!(ring.get(16).map(<[u8]>::len), Some(2_000));
    }
    use rtc::srtp::context::Context;
    use rtc::srtp::protection_profile::ProtectionProfile;
    use std::net::SocketAddr;

    fn path() -> TransportContext {
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        TransportContext {
            local_addr: a,
            peer_addr: b,
            transport_protocol: rtc::shared::TransportProtocol::UDP,
            ecn: None,
        }
    }

    fn own(key: &[u8; 16], salt: &[u8; 12]) -> OwnMedia {
        let provider = rtc::crypto::default_provider().unwrap();
        let srtp = Srtp::new(
            ProtectionProfile::AeadAes128Gcm,
            key,
            salt,
            provider.crypto(),
        )
        .unwrap();
        OwnMedia::new(srtp, ReportingGcc::new().0)
    }

    fn decryptor(key: &[u8; 16], salt: &[u8; 12]) -> Context {
        let provider = rtc::crypto::default_provider().unwrap();
        let replay = Some(rtc::srtp::option::srtp_replay_protection(64));
        Context::new(
            key,
            salt,
            ProtectionProfile::AeadAes128Gcm,
            replay,
            None,
            provider.crypto(),
        )
        .unwrap()
    }

    /// Our send history against rtc's `History` (what GCC was fed before):
    /// the same packets sent across a wrap of the transport-wide number,
    /// the same acknowledgements (arrived, lost, repeated, out of order,
    /// for numbers never sent), the same reports out, round after round.
    #[test]
    fn the_send_history_reports_exactly_what_rtcs_history_reported() {
        use rtc::interceptor::{Acknowledgement, History};
        let t0 = Instant::now();
        let (mut ours, mut theirs) = (SendHistory::default(), History::new());
        let mut twcc: u16 = 65_400;
        let mut out = Vec::new();
        let key = |r: &PacketReport| {
            (
                r.twcc_sequence_number,
                r.ssrc,
                r.rtp_sequence_number,
                r.size,
                r.arrived,
                r.arrival,
                r.departure,
            )
        };
        let mut reported = 0;
        for round in 0..40u64 {
            let first = twcc;
            for i in 0..25u64 {
                let at = t0 + Duration::from_millis(round * 100 + i * 4);
                let (ssrc, seq, size) = (
                    1 + (i % 2) as u32,
                    (round * 25 + i) as u16,
                    900 + i as usize,
                );
                ours.add((ssrc, seq, false), twcc, size, at);
                theirs.add_outgoing(ssrc, seq, true, twcc, size, at);
                twcc = twcc.wrapping_add(1);
            }
            // Feedback for the round before last and part of this one,
            // newest first, with losses, repeats and unknown numbers.
            let mut acks = Vec::new();
            for k in (0..40u16).rev() {
                let seq = first.wrapping_add(k).wrapping_sub(15);
                let arrival = Duration::from_micros(round * 100_000 + k as u64 * 4_100);
                acks.push(if (k + round as u16).is_multiple_of(6) {
                    Acknowledgement::lost(seq)
                } else {
                    Acknowledgement::received(seq, Some(arrival), Ecn::NotEct)
                });
            }
            acks.push(Acknowledgement::received(
                first.wrapping_add(3_000),
                None,
                Ecn::NotEct,
            ));
            acks.push(acks[3]);
            for a in acks {
                ours.acknowledge(a.sequence_number, a.arrived, a.arrival);
                theirs.on_twcc_feedback(t0, a);
            }
            ours.take_reports(&mut out);
            let expected = theirs.take_reports();
            assert_eq!(
                out.iter().map(key).collect::<Vec<_>>(),
                expected.iter().map(key).collect::<Vec<_>>(),
                "round {round}"
            );
            reported += out.len();
        }
        assert!(reported > 500, "{reported} reports");
    }

    /// The downlink loss we count is what feedback said was lost, not what a
    /// lost feedback left unsaid (GCC's reports still get both, as rtc's).
    #[test]
    fn loss_counts_only_packets_a_feedback_spoke_of() {
        let t0 = Instant::now();
        let mut h = SendHistory::default();
        for i in 0..30u16 {
            // Every third packet audio.
            let at = t0 + Duration::from_millis(u64::from(i));
            h.add(
                (7 + u32::from(i % 3 == 0), i, i % 3 == 0),
                100 + i,
                1000,
                at,
            );
        }
        // Feedback A (0-9: 3 lost) arrives; feedback B (10-19) is lost on the
        // way; feedback C (20-29: 1 lost) arrives.
        for i in (0..10u16).chain(20..30) {
            let lost = [2, 5, 7, 24].contains(&i);
            h.acknowledge(
                100 + i,
                !lost,
                (!lost).then(|| Duration::from_millis(u64::from(i) + 20)),
            );
        }
        let mut out = Vec::new();
        h.take_reports(&mut out);
        assert_eq!(
            h.acked,
            [[16, 4], [6, 1]],
            "arrived, lost; audio (0, 3, …, 27)"
        );
        assert_eq!(out.len(), 30, "GCC hears of all, as from rtc's History");
        assert_eq!(out.iter().filter(|r| !r.arrived).count(), 14);
        // 24 arrives after all (held behind later ones): reported again.
        h.acknowledge(124, true, Some(Duration::from_millis(60)));
        h.acknowledge(124, true, Some(Duration::from_millis(60)));
        h.acknowledge(125, true, Some(Duration::from_millis(45)));
        h.take_reports(&mut out);
        assert!(out.is_empty(), "nothing reported twice to GCC");
        assert_eq!(h.acked, [[17, 3], [7, 0]], "arrived, lost (24 is audio)");
        // 5 was resent on a NACK: its copy arriving is the repair, the link
        // lost the original — still lost. 2 arrives late by itself.
        h.mark_resent(105);
        h.acknowledge(105, true, Some(Duration::from_millis(90)));
        h.acknowledge(102, true, Some(Duration::from_millis(91)));
        assert_eq!(h.acked, [[18, 2], [7, 0]], "only 2 turned into arrived");
    }

    #[test]
    fn the_transport_wide_number_is_read_back_from_a_packet_we_built() {
        let mut own = own(&[1; 16], &[2; 12]);
        own.set_twcc_ext(Some(5));
        let mut track = TrackOut::new(90_000, Some(4));
        let mut pool = BufferPool::default();
        let now = Instant::now();
        send_video(&mut own, &mut track, 0..3, &[1; 50], now);
        let first = own.poll().unwrap().message;
        let second = own.poll().unwrap().message;
        let a = twcc_seq_of(&first, 5).expect("ours");
        assert_eq!(twcc_seq_of(&second, 5), Some(a.wrapping_add(1)));
        assert_eq!(twcc_seq_of(&first, 4), None, "another id");
        assert_eq!(twcc_seq_of(&first[..18], 5), None, "cut");
        // A resend marks the record, so a late "arrived" for it stays loss.
        let mut limit = RetransmitLimit::default();
        limit.set_media_rate(10_000_000);
        own.history.acknowledge(a.wrapping_add(1), false, None);
        own.resend((&track, 7, 1), (Some(path()), &mut pool), &mut limit, now);
        let (r, _) = own.history.slot(a.wrapping_add(1)).expect("held");
        assert!(r.resent);
        let (r, _) = own.history.slot(a).expect("held");
        assert!(!r.resent);
        // A NACK for a packet the feedback has reported as arrived (it came
        // out of order, after the NACK left): no copy.
        own.history
            .acknowledge(a.wrapping_add(2), true, Some(Duration::from_millis(5)));
        own.resend((&track, 7, 2), (Some(path()), &mut pool), &mut limit, now);
        assert_eq!((own.resent, own.arrived_already), (1, 1));
    }

    #[test]
    fn a_nack_for_a_fresh_packet_no_feedback_spoke_of_is_held_for_the_next_feedback() {
        let mut own = own(&[1; 16], &[2; 12]);
        own.set_twcc_ext(Some(5));
        let mut track = TrackOut::new(90_000, Some(8));
        let t0 = Instant::now();
        send_video(&mut own, &mut track, 0..5, &[1; 50], t0);
        let first = own.poll().unwrap().message;
        let a = twcc_seq_of(&first, 5).expect("ours");
        while own.poll().is_some() {}
        let mut limit = RetransmitLimit::default();
        limit.set_media_rate(10_000_000);
        let mut pool = BufferPool::default();
        let mut nack = |own: &mut OwnMedia, seq, at| {
            own.resend((&track, 7, seq), (Some(path()), &mut pool), &mut limit, at)
        };
        let ms = |n| t0 + Duration::from_millis(n);
        let mut due = Vec::new();
        // 40 ms after they left, no feedback yet: maybe reordered. Held.
        nack(&mut own, 1, ms(40));
        nack(&mut own, 2, ms(40));
        nack(&mut own, 1, ms(45));
        assert_eq!((own.resent, own.too_early), (0, 3));
        assert_eq!(own.held.len(), 2, "each packet held once");
        // The next feedback: 1 lost, 2 arrived. 1 is due now, without
        // waiting for the browser to ask again; 2 needs no copy.
        own.history.acknowledge(a.wrapping_add(1), false, None);
        own.history
            .acknowledge(a.wrapping_add(2), true, Some(Duration::from_millis(3)));
        own.answer_held(ms(60));
        own.take_due(&mut due);
        assert_eq!(due, vec![(7, 1)]);
        assert_eq!(own.arrived_already, 1);
        assert!(own.held.is_empty());
        nack(&mut own, 1, ms(60)); // what the peer does with it
        assert_eq!(own.resent, 1, "lost by the feedback's word");
        // No feedback about 3 at all: held, and answered once older.
        nack(&mut own, 3, ms(99));
        assert_eq!((own.resent, own.too_early), (1, 4));
        nack(&mut own, 3, ms(100));
        assert_eq!(own.resent, 2, "old enough: answered without a word");
        // A feedback reporting 3 lost after that: resent already, not due.
        own.history.acknowledge(a.wrapping_add(3), false, None);
        own.answer_held(ms(110));
        own.take_due(&mut due);
        assert!(due.is_empty() && own.held.is_empty());
        // With HELD_MAX held already, a fresh NACK is answered at once.
        own.held = (1000..1000 + HELD_MAX as u16).collect();
        nack(&mut own, 4, ms(20));
        assert_eq!(own.resent, 3);
    }

    /// Feedback read by `rtcp_in` moves the send history and GCC exactly
    /// as rtc's packet through `feedback` does: the same reports out.
    #[test]
    fn feedback_read_by_us_reports_what_rtcs_packet_reported() {
        use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
            PacketStatusChunk, RecvDelta, StatusChunkTypeTcc, StatusVectorChunk, SymbolSizeTypeTcc,
            SymbolTypeTcc,
        };
        let t0 = Instant::now();
        let (mut theirs, mut ours) = (own(&[1; 16], &[2; 12]), own(&[1; 16], &[2; 12]));
        let key = |r: &PacketReport| (r.twcc_sequence_number, r.arrived, r.arrival);
        let mut reported = 0;
        for round in 0..30u16 {
            let first = 65_500u16.wrapping_add(round * 14);
            for i in 0..14u16 {
                let at = t0 + Duration::from_millis(u64::from(round * 14 + i));
                for own in [&mut theirs, &mut ours] {
                    own.history
                        .add((9, i, false), first.wrapping_add(i), 1000, at);
                }
            }
            // A 2-bit vector per 7 packets: lost, small and large deltas.
            let symbols = |k: u16| -> Vec<SymbolTypeTcc> {
                (0..7)
                    .map(|j| SymbolTypeTcc::from((j + k + round) % 3))
                    .collect()
            };
            let chunks: Vec<_> = (0..2)
                .map(|k| {
                    PacketStatusChunk::StatusVectorChunk(StatusVectorChunk {
                        type_tcc: StatusChunkTypeTcc::StatusVectorChunk,
                        symbol_size: SymbolSizeTypeTcc::TwoBit,
                        symbol_list: symbols(k),
                    })
                })
                .collect();
            let recv_deltas = (0..2)
                .flat_map(symbols)
                .filter(|s| *s != SymbolTypeTcc::PacketNotReceived)
                .map(|s| RecvDelta {
                    type_tcc_packet: s,
                    delta: if s == SymbolTypeTcc::PacketReceivedSmallDelta {
                        250
                    } else {
                        -500
                    },
                })
                .collect();
            let fb = TransportLayerCc {
                media_ssrc: 9,
                base_sequence_number: first,
                packet_status_count: 14,
                reference_time: u32::from(round),
                packet_chunks: chunks,
                recv_deltas,
                ..Default::default()
            };
            let bytes = rtc::shared::marshal::Marshal::marshal(&fb).expect("marshal");
            let parsed =
                <TransportLayerCc as rtc::shared::marshal::Unmarshal>::unmarshal(&mut &bytes[..])
                    .expect("rtc reads it");
            theirs.feedback(&parsed, t0);
            let mut read = None;
            crate::rtcp_in::parse(&bytes, |r| {
                if let crate::rtcp_in::Rtcp::Twcc(fb) = r {
                    read = Some(fb);
                }
            })
            .expect("we read it");
            ours.feedback_acks(&read.expect("a feedback"), t0);
            assert_eq!(
                ours.reports.iter().map(key).collect::<Vec<_>>(),
                theirs.reports.iter().map(key).collect::<Vec<_>>(),
                "round {round}"
            );
            reported += ours.reports.len();
        }
        assert_eq!((ours.feedbacks, theirs.feedbacks), (30, 30));
        assert!(reported > 300, "{reported}");
    }

    #[test]
    fn a_sent_packet_decrypts_to_the_rewritten_header_our_twcc_number_and_the_payload() {
        let (key, salt) = ([3u8; 16], [5u8; 12]);
        let mut own = own(&key, &salt);
        own.set_twcc_ext(Some(5));
        let mut track = TrackOut::new(90_000, Some(8));
        let mut pool = BufferPool::default();
        let now = Instant::now();
        for n in 0..3u16 {
            let payload = [n as u8; 50];
            let p = Outbound {
                ssrc: 42,
                seq: 1000 + n,
                timestamp: 9000,
                marker: n == 2,
                payload_type: 96,
                payload: &payload,
            };
            assert!(own.send(&mut track, &p, (Some(path()), &mut pool), now) > 0);
        }
        let mut rx = decryptor(&key, &salt);
        for n in 0..3u16 {
            let out = own.poll().expect("queued");
            assert_eq!(out.transport, path());
            let plain = rx.decrypt_rtp(&out.message).expect("decrypts");
            let mut b = &plain[..];
            let pkt = <rtc::rtp::Packet as rtc::shared::marshal::Unmarshal>::unmarshal(&mut b)
                .expect("parses");
            assert_eq!(pkt.header.ssrc, 42);
            assert_eq!(pkt.header.sequence_number, 1000 + n);
            assert_eq!(pkt.header.marker, n == 2);
            assert_eq!(pkt.header.payload_type, 96);
            let ext = pkt.header.get_extension(5).expect("transport-cc extension");
            assert_eq!(
                &ext[..],
                &n.to_be_bytes(),
                "transport-wide numbers count up"
            );
            assert_eq!(&pkt.payload[..], &[n as u8; 50]);
        }
        assert!(own.poll().is_none());
        let sr = track
            .sender_report(42, now + Duration::from_millis(100), SystemTime::now())
            .expect("a report after sending");
        assert_eq!(sr.packet_count, 3);
        assert_eq!(sr.octet_count, 150);
        assert_eq!(sr.rtp_time, 9000 + 9000, "100 ms later at 90 kHz");
    }

    #[test]
    fn a_nack_resends_the_same_ciphertext_which_a_receiver_that_had_it_drops_as_a_replay() {
        let (key, salt) = ([1u8; 16], [2u8; 12]);
        let mut own = own(&key, &salt);
        let mut track = TrackOut::new(90_000, Some(4));
        let mut pool = BufferPool::default();
        let now = Instant::now();
        for seq in 10..16u16 {
            let p = Outbound {
                ssrc: 7,
                seq,
                timestamp: 1,
                marker: false,
                payload_type: 96,
                payload: &[seq as u8; 20],
            };
            own.send(&mut track, &p, (Some(path()), &mut pool), now);
        }
        let sent: Vec<_> = std::iter::from_fn(|| own.poll())
            .map(|m| m.message)
            .collect();
        let mut limit = RetransmitLimit::default();
        limit.set_media_rate(10_000_000);
        own.resend((&track, 7, 15), (Some(path()), &mut pool), &mut limit, now);
        own.resend((&track, 7, 12), (Some(path()), &mut pool), &mut limit, now);
        // overwritten (4 slots)
        own.resend((&track, 7, 11), (Some(path()), &mut pool), &mut limit, now);
        assert_eq!((own.resent, own.not_held), (2, 1));
        assert_eq!(own.poll().unwrap().message, sent[5]);
        let again = own.poll().unwrap().message;
        assert_eq!(again, sent[2]);
        assert!(own.poll().is_none());
        // A receiver that lost seq 12 takes the resend; one that had it
        // refuses it as a replay (RFC 3711 §3.3.2).
        let mut lost = decryptor(&key, &salt);
        let mut had = decryptor(&key, &salt);
        for (i, p) in sent.iter().enumerate() {
            if i != 2 {
                lost.decrypt_rtp(p).unwrap();
            }
            had.decrypt_rtp(p).unwrap();
        }
        assert!(lost.decrypt_rtp(&again).is_ok(), "the lost packet arrives");
        assert!(had.decrypt_rtp(&again).is_err(), "a duplicate is refused");
    }

    #[test]
    fn nothing_is_sent_without_a_path_and_the_queue_is_bounded() {
        let mut own = own(&[0; 16], &[0; 12]);
        let mut track = TrackOut::new(48_000, None);
        let mut pool = BufferPool::default();
        let now = Instant::now();
        let p = |seq| Outbound {
            ssrc: 1,
            seq,
            timestamp: 0,
            marker: false,
            payload_type: 111,
            payload: &[0; 10],
        };
        assert_eq!(own.send(&mut track, &p(0), (None, &mut pool), now), 0);
        assert_eq!(own.dropped, 1);
        for seq in 0..QUEUE_MAX as u16 + 10 {
            own.send(&mut track, &p(seq), (Some(path()), &mut pool), now);
        }
        assert_eq!(own.queue.len(), QUEUE_MAX);
        assert_eq!(own.dropped, 11);
        // Audio keeps no ring: a NACK for it is not held.
        let mut limit = RetransmitLimit::default();
        own.resend((&track, 1, 3), (Some(path()), &mut pool), &mut limit, now);
        assert_eq!(own.not_held, 1);
    }

    /// Sends packets `seqs` of the video track SSRC 7 with `payload`.
    fn send_video(
        own: &mut OwnMedia,
        track: &mut TrackOut,
        seqs: std::ops::Range<u16>,
        payload: &[u8],
        now: Instant,
    ) {
        let mut pool = BufferPool::default();
        for seq in seqs {
            let p = Outbound {
                ssrc: 7,
                seq,
                timestamp: 1,
                marker: false,
                payload_type: 96,
                payload,
            };
            own.send(track, &p, (Some(path()), &mut pool), now);
        }
    }

    /// Sends packets 0..n (`len` payload bytes) of a video track with a
    /// resend ring, and empties the queue.
    fn sent_video(own: &mut OwnMedia, n: u16, len: usize, now: Instant) -> TrackOut {
        let mut track = TrackOut::new(90_000, Some(16));
        send_video(own, &mut track, 0..n, &vec![9u8; len], now);
        while own.poll().is_some() {}
        track
    }

    #[test]
    fn a_nack_naming_one_packet_again_and_again_resends_it_once_per_interval() {
        // A hostile subscriber (or one without transport-wide feedback, so
        // never paced) names the same held packet 1,000 times: one resend,
        // nothing copied for the rest, and again only after the interval.
        let mut own = own(&[1; 16], &[2; 12]);
        let now = Instant::now();
        let track = sent_video(&mut own, 8, 1_000, now);
        let mut limit = RetransmitLimit::default();
        limit.set_media_rate(100_000_000);
        let mut pool = BufferPool::default();
        for _ in 0..1_000 {
            own.resend((&track, 7, 5), (Some(path()), &mut pool), &mut limit, now);
        }
        assert_eq!((own.resent, limit.sent, limit.suppressed), (1, 1, 999));
        assert!(
            own.poll().is_some() && own.poll().is_none(),
            "one copy queued"
        );
        let later = now + limit.interval();
        own.resend((&track, 7, 5), (Some(path()), &mut pool), &mut limit, later);
        assert_eq!(own.resent, 2, "resent again once the interval passed");
    }

    #[test]
    fn nack_answers_stay_within_the_retransmission_budget() {
        // The floor budget (40 kbit/s, a quarter second of burst: 1,250
        // bytes): of eight different 1,000-byte packets NACKed at once,
        // one goes now, the next when the budget has refilled.
        let mut own = own(&[1; 16], &[2; 12]);
        let now = Instant::now();
        let track = sent_video(&mut own, 8, 1_000, now);
        let mut limit = RetransmitLimit::default();
        let mut pool = BufferPool::default();
        for seq in 0..8 {
            own.resend((&track, 7, seq), (Some(path()), &mut pool), &mut limit, now);
        }
        assert_eq!((own.resent, limit.suppressed), (1, 7));
        let refilled = now + Duration::from_millis(250);
        own.resend(
            (&track, 7, 3),
            (Some(path()), &mut pool),
            &mut limit,
            refilled,
        );
        assert_eq!(own.resent, 2);
    }

    #[test]
    fn the_twcc_extension_id_is_read_from_the_answer() {
        let sdp = format!("v=0\r\na=extmap:4 urn:x\r\na=extmap:7 {TWCC_URI}\r\n");
        assert_eq!(twcc_ext_id(&sdp), Some(7));
        assert_eq!(twcc_ext_id("a=extmap:4 urn:x\r\n"), None);
        let mut own = own(&[0; 16], &[0; 12]);
        own.set_twcc_ext(Some(15));
        assert_eq!(own.twcc_ext, None, "15 is not a one-byte id");
    }
}
