//! The inbound fast path's feedback towards publishers.
//!
//! We decrypt a publisher's SRTP ourselves (docs/DECISIONS.md §10), so
//! rtc's receive-side interceptors never see those packets. The browser
//! still needs what they used to send, or its encoder flies blind:
//! - **Transport-wide CC feedback** drives its bandwidth estimate; without
//!   it Chromium's GCC falls back to loss only and ramps up slowly.
//! - **NACKs** get lost video packets resent before the decoder stalls.
//! - **Receiver reports** carry loss and jitter (the loss-based estimator
//!   reads `fraction_lost`) and LSR/DLSR for the publisher's RTT.
//!
//! All of it is a sans-I/O state machine: `on_packet` records (no
//! allocation, fixed rings), `handle_timeout` builds the RTCP, which the
//! caller sends through rtc's SRTCP.

use rtc::rtcp::Packet;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
    PacketStatusChunk, RecvDelta, RunLengthChunk, StatusChunkTypeTcc, StatusVectorChunk,
    SymbolSizeTypeTcc, SymbolTypeTcc, TransportLayerCc,
};
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    TransportLayerNack, nack_pairs_from_sequence_numbers,
};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Sender SSRC of our feedback. The publisher only needs it nonzero and
/// distinct from its own SSRCs; browsers do not match it to anything.
pub(crate) const FEEDBACK_SSRC: u32 = 0x5350_4B52;
/// TWCC feedback cadence: what libwebrtc's receiver uses by default.
const TWCC_INTERVAL: Duration = Duration::from_millis(100);
/// Arrivals held between feedbacks (16 KB per peer): a publisher sends
/// ~30-60 packets per 100 ms round, so this only bites a caller that
/// stopped polling.
const TWCC_PENDING_MAX: usize = 1024;
/// This many waiting arrivals make feedback due at once.
const TWCC_EARLY: usize = 256;
/// Statuses per feedback packet (keeps it well under an MTU worst case).
const TWCC_STATUSES_MAX: u64 = 1000;
/// A longer hole between two arrivals starts a new packet instead of
/// reporting hundreds of "not received" (hostile or restarted numbering).
const TWCC_GAP_MAX: u64 = 500;
/// Feedback packets per round; the rest of a (hostile) round is dropped.
const TWCC_PACKETS_MAX: usize = 16;
/// TWCC time units: 250 µs receive deltas, 64 ms reference time.
const TICK_US: u64 = 250;
const REFERENCE_US: u64 = 64_000;
/// NACK window, in sequence numbers (a power of two; as rtc's default).
const WINDOW: u64 = 512;
/// Wait before the first NACK of a hole: absorbs ordinary reordering.
const NACK_DELAY_MS: u32 = 20;
/// Between NACKs of one sequence number: about one RTT of a typical
/// consult, so a resend has a chance to arrive before we ask again.
const NACK_RETRY_MS: u32 = 100;
/// NACKs per missing packet. Five, 100 ms apart: at 5 % loss each way a
/// try fails ~10 % of the time, so three left ~1 packet in 1,000 for good —
/// a couple a minute at 720p, each a stall until a keyframe (the degraded
/// browser test's freezes of 1–2 s); five leave ~1 in 100,000.
const NACK_TRIES: u8 = 5;
/// `Window::tries` of a slot never (again) to be asked for: before the
/// start, skipped in a jump, arrived, or given up.
const DONE: u8 = u8::MAX;
/// A packet missing for longer is useless to the decoder.
const NACK_GIVE_UP_MS: u32 = 1000;
const RR_INTERVAL: Duration = Duration::from_secs(1);
/// A forward jump beyond this is a renumbering, not loss (RFC 3550 A.1).
const MAX_DROPOUT: u64 = 3000;

/// Which of the last `WINDOW` sequence numbers arrived, and the NACK state
/// of those that did not. Indexed by extended sequence number mod `WINDOW`.
struct Window {
    got: [u64; (WINDOW / 64) as usize],
    /// Of those that arrived: padding only (no payload).
    pad: [u64; (WINDOW / 64) as usize],
    /// NACKs sent; [`DONE`]: never (again) ask.
    tries: [u8; WINDOW as usize],
    /// When the hole was noticed, in ms since the epoch.
    missing_at: [u32; WINDOW as usize],
}

impl Default for Window {
    fn default() -> Window {
        Window {
            got: [0; (WINDOW / 64) as usize],
            pad: [0; (WINDOW / 64) as usize],
            tries: [DONE; WINDOW as usize],
            missing_at: [0; WINDOW as usize],
        }
    }
}

impl Window {
    /// When slot `i`'s next NACK is due, in ms since the epoch.
    fn due(&self, i: usize) -> u32 {
        let wait = NACK_DELAY_MS + self.tries[i] as u32 * NACK_RETRY_MS;
        self.missing_at[i].saturating_add(wait)
    }

    fn has(&self, ext: u64) -> bool {
        let i = (ext % WINDOW) as usize;
        self.got[i / 64] & 1 << (i % 64) != 0
    }

    fn is_padding(&self, ext: u64) -> bool {
        let i = (ext % WINDOW) as usize;
        self.has(ext) && self.pad[i / 64] & 1 << (i % 64) != 0
    }

    /// A hole between padding-only packets (the nearest that arrived on
    /// either side, within 8) was padding too, most likely: a publisher
    /// pads between frames, in runs, and does not resend padding.
    fn padding_around(&self, ext: u64, lowest: u64, highest: u64) -> bool {
        let before = (1..=8u64)
            .map_while(|d| ext.checked_sub(d).filter(|e| *e >= lowest))
            .find(|e| self.has(*e));
        let after = (1..=8u64)
            .map(|d| ext + d)
            .take_while(|e| *e <= highest)
            .find(|e| self.has(*e));
        matches!((before, after), (Some(b), Some(a)) if self.is_padding(b) && self.is_padding(a))
    }

    fn mark(&mut self, ext: u64, got: bool, tries: u8, now_ms: u32) {
        let i = (ext % WINDOW) as usize;
        self.pad[i / 64] &= !(1 << (i % 64));
        if got {
            self.got[i / 64] |= 1 << (i % 64);
        } else {
            self.got[i / 64] &= !(1 << (i % 64));
        }
        self.tries[i] = tries;
        self.missing_at[i] = now_ms;
    }
}

/// `lost` of `total` as RTCP's fraction lost (of 256, at most 255; 0 of 0).
pub(crate) fn fraction_lost(lost: u64, total: u64) -> u8 {
    lost.saturating_mul(256)
        .checked_div(total)
        .map_or(0, |f| f.min(255) as u8)
}

/// One publisher stream we decrypt: reception statistics (RFC 3550 A.3,
/// A.8) and its NACK window.
#[derive(Default)]
struct Stream {
    ssrc: u32,
    clock_rate: u32,
    nack: bool,
    /// Extended highest sequence number (cycles in the high bits).
    highest: Option<u64>,
    base: u64,
    /// Sequence numbers jumped over by renumberings: not loss.
    skipped: u64,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Interarrival jitter ×16 (RFC 3550 A.8's integer form).
    jitter_q4: u64,
    last_transit: Option<i32>,
    last_timestamp: u32,
    /// Middle 32 bits of the last SR's NTP time, and when it came.
    last_sr: Option<(u32, Instant)>,
    window: Box<Window>,
    /// Packets given up on since `take_unrepaired` last looked.
    unrepaired: u32,
}

impl Stream {
    fn expected(&self) -> u64 {
        self.highest
            .map_or(0, |h| (h + 1).saturating_sub(self.base + self.skipped))
    }

    /// Records one packet; true if it opened a hole worth NACKing.
    fn on_packet(&mut self, seq: u16, ts: u32, arrival_us: u64, now_ms: u32) -> bool {
        let Some(h) = self.highest else {
            self.highest = Some(seq as u64);
            self.base = seq as u64;
            self.received = 1;
            self.window.mark(seq as u64, true, DONE, now_ms);
            self.update_jitter(ts, arrival_us);
            return false;
        };
        let diff = seq.wrapping_sub(h as u16) as i16 as i64;
        if diff <= 0 {
            let ext = h as i64 + diff;
            let behind = (h as i64 - ext) as u64;
            if ext < 0 || behind >= WINDOW || self.window.has(ext as u64) {
                return false; // too old to place, or a duplicate
            }
            self.window.mark(ext as u64, true, DONE, now_ms);
            self.received += 1;
            return false;
        }
        let (diff, n) = (diff as u64, h + diff as u64);
        if diff > MAX_DROPOUT {
            self.skipped += diff - 1;
        }
        let hole = diff > 1 && diff <= WINDOW;
        if diff > WINDOW {
            // Everything in the window is now older than it: forget it
            // without asking for thousands of packets.
            *self.window = Window::default(); // in place: no allocation
        } else {
            for s in h + 1..n {
                self.window.mark(s, false, 0, now_ms);
            }
        }
        self.window.mark(n, true, DONE, now_ms);
        self.highest = Some(n);
        self.received += 1;
        self.update_jitter(ts, arrival_us);
        hole && self.nack
    }

    /// RFC 3550 A.8 on in-order packets that start a new timestamp (the
    /// packets of one video frame share it and arrive spread out).
    fn update_jitter(&mut self, ts: u32, arrival_us: u64) {
        if self.last_transit.is_some() && ts == self.last_timestamp {
            return;
        }
        let arrival = (arrival_us as u128 * self.clock_rate as u128 / 1_000_000) as u32;
        let transit = arrival.wrapping_sub(ts) as i32;
        if let Some(prev) = self.last_transit {
            let d = transit.wrapping_sub(prev).unsigned_abs() as u64;
            self.jitter_q4 = self.jitter_q4 + d - ((self.jitter_q4 + 8) >> 4);
        }
        self.last_transit = Some(transit);
        self.last_timestamp = ts;
    }

    /// Missing sequence numbers due a NACK at `now_ms` (ascending), and
    /// when the next one of this stream falls due. A packet still missing
    /// one retry interval after its last NACK, or [`NACK_GIVE_UP_MS`] after
    /// it was missed, is given up: counted in `unrepaired` (every
    /// subscriber of this stream now waits for a keyframe).
    fn take_nacks(&mut self, now_ms: u32, lost: &mut Vec<u16>) -> Option<u32> {
        let h = self.highest?;
        let mut next: Option<u32> = None;
        for back in (1..WINDOW.min(h + 1)).rev() {
            let ext = h - back;
            let i = (ext % WINDOW) as usize;
            let w = &mut self.window;
            if w.tries[i] == DONE || w.has(ext) {
                continue;
            }
            let expired = now_ms.saturating_sub(w.missing_at[i]) > NACK_GIVE_UP_MS;
            if expired || (w.tries[i] >= NACK_TRIES && now_ms >= w.due(i)) {
                w.tries[i] = DONE;
                let lowest = h.saturating_sub(WINDOW - 1).max(self.base);
                if !w.padding_around(ext, lowest, h) {
                    self.unrepaired += 1;
                }
                continue;
            }
            if now_ms >= w.due(i) {
                lost.push(ext as u16);
                w.tries[i] += 1;
            }
            let due = w.due(i);
            next = Some(next.map_or(due, |n| n.min(due)));
        }
        next
    }

    fn report(&mut self, now: Instant) -> ReceptionReport {
        let h = self.highest.unwrap_or_default();
        let expected = self.expected();
        let interval_expected = expected.saturating_sub(self.expected_prior);
        let interval_received = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let interval_lost = interval_expected.saturating_sub(interval_received);
        let fraction_lost = fraction_lost(interval_lost, interval_expected);
        // Cumulative lost is 24-bit signed (duplicates can make it negative).
        let lost = (expected as i64 - self.received as i64).clamp(-0x80_0000, 0x7F_FFFF);
        let (last_sender_report, delay) = self.last_sr.map_or((0, 0), |(lsr, at)| {
            let since = now.saturating_duration_since(at).as_micros() as u64;
            (lsr, (since * 65536 / 1_000_000).min(u32::MAX as u64) as u32)
        });
        ReceptionReport {
            ssrc: self.ssrc,
            fraction_lost,
            total_lost: lost as i32 as u32 & 0xFF_FFFF,
            last_sequence_number: h as u32,
            jitter: (self.jitter_q4 >> 4).min(u32::MAX as u64) as u32,
            last_sender_report,
            delay,
        }
    }
}

/// One transport-wide CC feedback packet under construction.
/// Packets one transport-wide feedback usually reports (`TwccBuild`).
const TWCC_BUILD_CAPACITY: usize = 128;

struct TwccBuild {
    base: u64,
    symbols: Vec<SymbolTypeTcc>,
    deltas: Vec<RecvDelta>,
    reference: u64,
    /// Arrival of the previous reported packet in 250 µs ticks: deltas
    /// chain from the quantised value, so rounding never accumulates.
    last_ticks: i64,
}

impl TwccBuild {
    fn new(base: u64, arrival_us: u64) -> TwccBuild {
        let reference = arrival_us / REFERENCE_US;
        TwccBuild {
            base,
            // One feedback's worth (100 ms of a camera and microphone)
            // without regrowing.
            symbols: Vec::with_capacity(TWCC_BUILD_CAPACITY),
            deltas: Vec::with_capacity(TWCC_BUILD_CAPACITY),
            reference,
            last_ticks: (reference * REFERENCE_US / TICK_US) as i64,
        }
    }

    fn end(&self) -> u64 {
        self.base + self.symbols.len() as u64
    }

    /// Adds `seq` (≥ `end()`) and the holes before it, unless that would
    /// break a packet limit.
    fn push(&mut self, seq: u64, arrival_us: u64) -> bool {
        let gap = seq.saturating_sub(self.end());
        let ticks = (arrival_us / TICK_US) as i64;
        let delta = ticks - self.last_ticks;
        let symbol = match delta {
            0..=255 => SymbolTypeTcc::PacketReceivedSmallDelta,
            _ if i16::try_from(delta).is_ok() => SymbolTypeTcc::PacketReceivedLargeDelta,
            _ => return false,
        };
        if gap > TWCC_GAP_MAX || self.symbols.len() as u64 + gap + 1 > TWCC_STATUSES_MAX {
            return false;
        }
        let lost = SymbolTypeTcc::PacketNotReceived;
        self.symbols.extend((0..gap).map(|_| lost));
        self.symbols.push(symbol);
        self.deltas.push(RecvDelta {
            type_tcc_packet: symbol,
            delta: delta * TICK_US as i64,
        });
        self.last_ticks = ticks;
        true
    }

    /// Run-length chunks for runs of 7 and more and for the tail, 2-bit
    /// status vectors otherwise: never a padded vector, whose filler
    /// symbols some parsers read as real "not received" packets.
    fn finish(self, media_ssrc: u32, fb_pkt_count: u8) -> TransportLayerCc {
        let s = &self.symbols;
        let mut packet_chunks = Vec::new();
        let mut i = 0;
        while i < s.len() {
            let run = s[i..].iter().take_while(|&&x| x == s[i]).count();
            if run >= 7 || s.len() - i < 7 {
                let run = run.min(8191);
                packet_chunks.push(PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                    type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                    packet_status_symbol: s[i],
                    run_length: run as u16,
                }));
                i += run;
            } else {
                packet_chunks.push(PacketStatusChunk::StatusVectorChunk(StatusVectorChunk {
                    type_tcc: StatusChunkTypeTcc::StatusVectorChunk,
                    symbol_size: SymbolSizeTypeTcc::TwoBit,
                    symbol_list: s[i..i + 7].to_vec(),
                }));
                i += 7;
            }
        }
        TransportLayerCc {
            sender_ssrc: FEEDBACK_SSRC,
            media_ssrc,
            base_sequence_number: self.base as u16,
            packet_status_count: s.len() as u16,
            reference_time: (self.reference & 0xFF_FFFF) as u32,
            fb_pkt_count,
            packet_chunks,
            recv_deltas: self.deltas,
        }
    }
}

/// Feedback towards one publisher for the media we decrypt ourselves.
#[derive(Default)]
pub(crate) struct InboundFeedback {
    streams: Vec<Stream>,
    /// Arrival times are µs since this (the first packet).
    epoch: Option<Instant>,
    twcc_ext: Option<u8>,
    media_ssrc: Option<u32>,
    /// (extended transport-wide seq, arrival µs), in arrival order.
    pending: VecDeque<(u64, u64)>,
    twcc_highest: Option<u64>,
    /// First sequence number the next feedback may report.
    twcc_next: Option<u64>,
    twcc_due: Option<Instant>,
    fb_pkt_count: u8,
    nack_due: Option<Instant>,
    rr_due: Option<Instant>,
    /// Arrivals dropped unreported (pending ring full, round limit).
    pub dropped: u64,
}

impl InboundFeedback {
    /// `twcc_ext`: the negotiated transport-wide-cc one-byte header
    /// extension id (None: no TWCC feedback).
    pub(crate) fn new(twcc_ext: Option<u8>) -> Self {
        InboundFeedback {
            twcc_ext,
            pending: VecDeque::with_capacity(TWCC_PENDING_MAX),
            ..Default::default()
        }
    }

    pub(crate) fn set_twcc_ext(&mut self, id: Option<u8>) {
        self.twcc_ext = id;
        if id.is_none() {
            self.pending.clear();
            self.twcc_due = None;
        }
    }

    /// A publisher stream we now decrypt ourselves. `clock_rate` 48000
    /// (Opus) or 90000 (VP8); `nack`: send NACKs for it (video).
    pub(crate) fn add_stream(&mut self, ssrc: u32, clock_rate: u32, nack: bool) {
        self.remove_stream(ssrc);
        self.streams.push(Stream {
            ssrc,
            clock_rate: clock_rate.max(1),
            nack,
            ..Default::default()
        });
    }

    pub(crate) fn remove_stream(&mut self, ssrc: u32) {
        self.streams.retain(|s| s.ssrc != ssrc);
    }

    /// The packet of `ssrc` just taken (`on_packet`) was padding only.
    pub(crate) fn mark_padding(&mut self, ssrc: u32, seq: u16) {
        let Some(stream) = self.streams.iter_mut().find(|s| s.ssrc == ssrc) else {
            return;
        };
        let Some(h) = stream.highest else { return };
        let ext = h as i64 + seq.wrapping_sub(h as u16) as i16 as i64;
        if ext < 0 || !stream.window.has(ext as u64) {
            return;
        }
        let i = (ext as u64 % WINDOW) as usize;
        stream.window.pad[i / 64] |= 1 << (i % 64);
    }

    /// A stream with packets given up on since the last call (NACKs
    /// unanswered; holes amid padding not counted), and how many; each is
    /// reported once.
    pub(crate) fn take_unrepaired(&mut self) -> Option<(u32, u32)> {
        let s = self.streams.iter_mut().find(|s| s.unrepaired > 0)?;
        Some((s.ssrc, std::mem::take(&mut s.unrepaired)))
    }

    /// One authenticated RTP packet arrived at `now`. Packets of SSRCs not
    /// added still count for TWCC (they crossed the same path), not for
    /// NACKs or reports.
    pub(crate) fn on_packet(
        &mut self,
        ssrc: u32,
        seq: u16,
        rtp_timestamp: u32,
        twcc_seq: Option<u16>,
        now: Instant,
    ) {
        let epoch = *self.epoch.get_or_insert(now);
        let arrival_us = now.saturating_duration_since(epoch).as_micros() as u64;
        let now_ms = (arrival_us / 1000).min(u32::MAX as u64) as u32;
        if let Some(stream) = self.streams.iter_mut().find(|s| s.ssrc == ssrc) {
            if stream.on_packet(seq, rtp_timestamp, arrival_us, now_ms) {
                let due = now + Duration::from_millis(NACK_DELAY_MS as u64);
                self.nack_due = Some(self.nack_due.map_or(due, |d| d.min(due)));
            }
            self.rr_due.get_or_insert(now + RR_INTERVAL);
        }
        let (Some(_), Some(seq)) = (self.twcc_ext, twcc_seq) else {
            return;
        };
        self.media_ssrc.get_or_insert(ssrc);
        // Unwrapped around 2^32 so a reordered first packet stays positive.
        let ext = self.twcc_highest.map_or((1 << 32) + seq as u64, |h| {
            (h as i64 + seq.wrapping_sub(h as u16) as i16 as i64) as u64
        });
        if self.twcc_highest.is_none_or(|h| ext > h) {
            self.twcc_highest = Some(ext);
        }
        if self.twcc_next.is_some_and(|next| ext < next) {
            return; // its feedback has been sent
        }
        if self.pending.len() >= TWCC_PENDING_MAX {
            self.pending.pop_front();
            self.dropped += 1;
        }
        self.pending.push_back((ext, arrival_us));
        let due = if self.pending.len() >= TWCC_EARLY {
            now
        } else {
            now + TWCC_INTERVAL
        };
        self.twcc_due = Some(self.twcc_due.map_or(due, |d| d.min(due)));
    }

    /// The publisher's sender report for `ssrc` (its 64-bit NTP time),
    /// for LSR/DLSR.
    pub(crate) fn on_sender_report(&mut self, ssrc: u32, ntp_time: u64, now: Instant) {
        if let Some(stream) = self.streams.iter_mut().find(|s| s.ssrc == ssrc) {
            stream.last_sr = Some(((ntp_time >> 16) as u32, now));
        }
    }

    /// When `handle_timeout` next has something to do (None: nothing
    /// recorded yet).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        [self.twcc_due, self.nack_due, self.rr_due]
            .into_iter()
            .flatten()
            .min()
    }

    /// Everything due at `now`, appended to `out`.
    pub(crate) fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Box<dyn Packet>>) {
        if self.twcc_due.is_some_and(|d| d <= now) {
            self.twcc_feedback(out);
        }
        if self.nack_due.is_some_and(|d| d <= now) {
            self.nacks(now, out);
        }
        if let Some(due) = self.rr_due.filter(|d| *d <= now) {
            let reports: Vec<ReceptionReport> = (self.streams.iter_mut())
                .filter(|s| s.highest.is_some())
                .map(|s| s.report(now))
                .collect();
            for chunk in reports.chunks(31) {
                out.push(Box::new(ReceiverReport {
                    ssrc: FEEDBACK_SSRC,
                    reports: chunk.to_vec(),
                    ..Default::default()
                }));
            }
            let next = due + RR_INTERVAL;
            self.rr_due = Some(if next <= now { now + RR_INTERVAL } else { next });
        }
    }

    fn twcc_feedback(&mut self, out: &mut Vec<Box<dyn Packet>>) {
        self.twcc_due = None;
        let pending = self.pending.make_contiguous();
        // By sequence number; of duplicates the first arrival is kept.
        pending.sort_unstable();
        let media_ssrc = self.media_ssrc.unwrap_or_default();
        let (mut build, mut made, mut prev) = (None::<TwccBuild>, 0, None);
        for &(seq, arrival_us) in pending.iter() {
            if prev == Some(seq) {
                continue;
            }
            prev = Some(seq);
            if build.as_mut().is_some_and(|b| b.push(seq, arrival_us)) {
                self.twcc_next = Some(seq + 1);
                continue;
            }
            if let Some(b) = build.take() {
                out.push(Box::new(b.finish(media_ssrc, self.fb_pkt_count)));
                self.fb_pkt_count = self.fb_pkt_count.wrapping_add(1);
                made += 1;
            }
            if made == TWCC_PACKETS_MAX {
                self.dropped += 1;
                continue;
            }
            // Start at the first unreported number, so holes at the edge of
            // the previous feedback are reported lost, not left unknown.
            let base = match self.twcc_next {
                Some(next) if seq.checked_sub(next).is_some_and(|g| g <= TWCC_GAP_MAX) => next,
                _ => seq,
            };
            let mut b = TwccBuild::new(base, arrival_us);
            // A fresh packet always takes its first arrival (delta < 64 ms).
            b.push(seq, arrival_us);
            build = Some(b);
            self.twcc_next = Some(seq + 1);
        }
        if let Some(b) = build {
            out.push(Box::new(b.finish(media_ssrc, self.fb_pkt_count)));
            self.fb_pkt_count = self.fb_pkt_count.wrapping_add(1);
        }
        self.pending.clear();
    }

    fn nacks(&mut self, now: Instant, out: &mut Vec<Box<dyn Packet>>) {
        let Some(epoch) = self.epoch else { return };
        let now_ms = now
            .saturating_duration_since(epoch)
            .as_millis()
            .min(u32::MAX as u128) as u32;
        let mut next: Option<u32> = None;
        let mut lost = Vec::new();
        for stream in self.streams.iter_mut().filter(|s| s.nack) {
            lost.clear();
            if let Some(due) = stream.take_nacks(now_ms, &mut lost) {
                next = Some(next.map_or(due, |n| n.min(due)));
            }
            if !lost.is_empty() {
                out.push(Box::new(TransportLayerNack {
                    sender_ssrc: FEEDBACK_SSRC,
                    media_ssrc: stream.ssrc,
                    nacks: nack_pairs_from_sequence_numbers(&lost),
                }));
            }
        }
        self.nack_due = next.map(|ms| {
            let at = epoch + Duration::from_millis(ms as u64);
            at.max(now + Duration::from_millis(1))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::interceptor::{History, convert_twcc};

    const AUDIO: u32 = 0x1111;
    const VIDEO: u32 = 0x2222;
    const MS: Duration = Duration::from_millis(1);

    /// Through bytes and back: proves every packet is valid on the wire.
    fn wire(out: &[Box<dyn Packet>]) -> Vec<Box<dyn Packet>> {
        if out.is_empty() {
            return Vec::new();
        }
        let bytes = rtc::rtcp::packet::marshal(out).expect("marshal");
        rtc::rtcp::packet::unmarshal(&mut &bytes[..]).expect("unmarshal")
    }

    fn of<T: Clone + 'static>(out: &[Box<dyn Packet>]) -> Vec<T> {
        let back = wire(out);
        back.iter()
            .filter_map(|p| p.as_any().downcast_ref::<T>().cloned())
            .collect()
    }

    fn nacked(out: &[Box<dyn Packet>]) -> Vec<u16> {
        of::<TransportLayerNack>(out)
            .iter()
            .flat_map(|n| n.nacks.iter().flat_map(|p| p.packet_list()))
            .collect()
    }

    fn reports(out: &[Box<dyn Packet>]) -> Vec<ReceptionReport> {
        of::<ReceiverReport>(out)
            .into_iter()
            .flat_map(|rr| rr.reports)
            .collect()
    }

    /// A caller that honours `poll_timeout`, with a clock.
    struct Caller {
        fb: InboundFeedback,
        t0: Instant,
        now: Instant,
        nacks: Vec<(u16, Duration)>,
    }

    impl Caller {
        fn new(fb: InboundFeedback) -> Caller {
            let t0 = Instant::now();
            Caller {
                fb,
                t0,
                now: t0,
                nacks: Vec::new(),
            }
        }

        fn advance(&mut self, by: Duration) {
            let until = self.now + by;
            while let Some(at) = self.fb.poll_timeout().filter(|at| *at <= until) {
                let mut out = Vec::new();
                self.fb.handle_timeout(at, &mut out);
                for seq in nacked(&out) {
                    self.nacks.push((seq, at - self.t0));
                }
            }
            self.now = until;
        }

        /// `seq` of `ssrc` now, then 10 ms pass.
        fn packet(&mut self, ssrc: u32, seq: u16) {
            self.fb
                .on_packet(ssrc, seq, seq as u32 * 900, None, self.now);
            self.advance(10 * MS);
        }

        fn nacks_of(&self, seq: u16) -> Vec<Duration> {
            self.nacks
                .iter()
                .filter(|n| n.0 == seq)
                .map(|n| n.1)
                .collect()
        }
    }

    #[test]
    fn twcc_feedback_reports_every_arrival_through_gaps_reordering_wrap_and_pause() {
        let t0 = Instant::now();
        let mut fb = InboundFeedback::new(Some(3));
        // (transport-wide seq, arrival µs after t0): 65500 up to 100 through
        // the wrap, 65510/65511 and 20 lost, 65521 before 65520, a 9 s
        // pause after 50, and uneven spacing for small and large deltas.
        let mut arrivals: Vec<(u16, u64)> = Vec::new();
        let mut t = 0u64;
        for (i, seq) in (65_500u16..=65_535).chain(0..=100).enumerate() {
            if [65_510, 65_511, 20].contains(&seq) {
                continue;
            }
            arrivals.push((seq, t));
            t += 300 + (i as u64 * 7_919) % 70_000;
            if seq == 50 {
                t += 9_000_000;
            }
        }
        let i = arrivals.iter().position(|a| a.0 == 65_520).unwrap();
        let (a, b) = (arrivals[i].1, arrivals[i + 1].1);
        (arrivals[i].1, arrivals[i + 1].1) = (b, a);
        for &(seq, at) in &arrivals {
            fb.on_packet(AUDIO, seq, 0, Some(seq), t0 + Duration::from_micros(at));
        }
        // A duplicate much later keeps the first arrival.
        fb.on_packet(AUDIO, 1, 0, Some(65_530), t0 + Duration::from_micros(t));
        assert!(fb.poll_timeout().unwrap() <= t0 + Duration::from_micros(100_000));

        let end = t0 + Duration::from_micros(t) + 200 * MS;
        let mut out = Vec::new();
        fb.handle_timeout(end, &mut out);
        let feedback = of::<TransportLayerCc>(&out);
        assert!(feedback.len() >= 2, "the 9 s pause needs a new packet");
        for (n, f) in feedback.iter().enumerate() {
            assert_eq!(f.fb_pkt_count, n as u8);
            assert_eq!(f.media_ssrc, AUDIO);
            assert_eq!(convert_twcc(f).len(), f.packet_status_count as usize);
        }

        // A real TWCC sender's bookkeeping reads it back.
        let mut history = History::new();
        for seq in (65_500u16..=65_535).chain(0..=100) {
            history.add_outgoing(VIDEO, seq, true, seq, 1200, t0);
        }
        let mut acked = Vec::new();
        for f in &feedback {
            for ack in convert_twcc(f) {
                history.on_twcc_feedback(end, ack);
            }
            acked.extend(history.take_reports());
        }
        assert_eq!(acked.len(), 137, "every number from 65500 to 100, once");
        for report in &acked {
            let sent = arrivals.iter().find(|a| a.0 == report.twcc_sequence_number);
            match sent {
                Some(&(seq, at)) => {
                    let got = report.arrival.expect("arrival time").as_micros() as i64;
                    assert!((got - at as i64).abs() <= 250, "seq {seq}: {got} vs {at}");
                }
                None => assert!(!report.arrived, "{}", report.twcc_sequence_number),
            }
        }

        // Reported numbers are not reported again; the next feedback
        // starts right after them, so 101 (lost) is reported lost.
        fb.on_packet(AUDIO, 2, 0, Some(50), end);
        fb.on_packet(AUDIO, 3, 0, Some(102), end);
        let mut out = Vec::new();
        fb.handle_timeout(end + TWCC_INTERVAL, &mut out);
        let next = of::<TransportLayerCc>(&out);
        assert_eq!(next.len(), 1);
        assert_eq!(
            (next[0].base_sequence_number, next[0].packet_status_count),
            (101, 2)
        );
        let acks = convert_twcc(&next[0]);
        assert!(!acks[0].arrived && acks[1].arrived);
    }

    #[test]
    fn lost_packet_is_nacked_at_the_next_deadline_at_most_five_times_then_given_up_once() {
        let mut fb = InboundFeedback::new(None);
        fb.add_stream(VIDEO, 90_000, true);
        let mut c = Caller::new(fb);
        for seq in (0..=4).chain(6..=200) {
            c.packet(VIDEO, seq);
            if seq == 40 {
                assert_eq!(c.fb.take_unrepaired(), None, "still being asked for");
            }
        }
        let times = c.nacks_of(5);
        assert_eq!(times.len(), usize::from(NACK_TRIES), "{times:?}");
        assert!(times[0] <= 80 * MS, "hole seen at 50 ms: {times:?}");
        assert!(times.windows(2).all(|w| w[1] - w[0] >= 20 * MS));
        assert_eq!(c.nacks.len(), times.len(), "nothing else is missing");
        // Given up one retry interval after the last NACK: reported once.
        assert_eq!(c.fb.take_unrepaired(), Some((VIDEO, 1)));
        assert_eq!(c.fb.take_unrepaired(), None);
        c.advance(Duration::from_secs(2));
        assert_eq!(c.fb.take_unrepaired(), None);
        assert_eq!(
            c.fb.poll_timeout(),
            c.fb.rr_due,
            "no NACK cadence when idle"
        );
    }

    #[test]
    fn a_packet_resent_after_the_last_nack_is_not_given_up() {
        let mut fb = InboundFeedback::new(None);
        fb.add_stream(VIDEO, 90_000, true);
        let mut c = Caller::new(fb);
        for seq in (0..=4).chain(6..=200) {
            c.packet(VIDEO, seq);
            if c.nacks_of(5).len() == usize::from(NACK_TRIES) && !c.fb.streams[0].window.has(5) {
                // The answer to the last NACK, within the retry interval.
                c.fb.on_packet(VIDEO, 5, 5 * 900, None, c.now);
            }
        }
        assert_eq!(c.nacks_of(5).len(), usize::from(NACK_TRIES));
        c.advance(Duration::from_secs(2));
        assert_eq!(c.fb.take_unrepaired(), None);
    }

    #[test]
    fn a_hole_amid_padding_is_given_up_without_counting_but_one_beside_media_counts() {
        let mut fb = InboundFeedback::new(None);
        fb.add_stream(VIDEO, 90_000, true);
        let mut c = Caller::new(fb);
        // Padding 10..=20 with 15 lost; 33 and 34 lost between media 32
        // and padding 35.
        for seq in 0..=50u16 {
            if [15, 33, 34].contains(&seq) {
                continue;
            }
            c.fb.on_packet(VIDEO, seq, u32::from(seq) * 900, None, c.now);
            if (10..=20).contains(&seq) || [35, 36].contains(&seq) {
                c.fb.mark_padding(VIDEO, seq);
            }
            c.advance(10 * MS);
        }
        c.advance(Duration::from_secs(2));
        assert_eq!(
            c.nacks_of(15).len(),
            usize::from(NACK_TRIES),
            "padding holes are still asked for"
        );
        assert_eq!(
            c.fb.take_unrepaired(),
            Some((VIDEO, 2)),
            "33 and 34 (beside media 32), not 15"
        );
        assert_eq!(c.fb.take_unrepaired(), None);
    }

    #[test]
    fn a_stalled_stream_gives_up_holes_after_a_second_and_audio_never_counts() {
        let mut fb = InboundFeedback::new(None);
        fb.add_stream(VIDEO, 90_000, true);
        fb.add_stream(AUDIO, 48_000, false);
        let mut c = Caller::new(fb);
        for seq in [0, 1, 3, 4, 7] {
            c.packet(VIDEO, seq);
            c.packet(AUDIO, seq);
        }
        // Nothing more arrives: 2, 5 and 6 are asked for, then given up.
        c.advance(Duration::from_secs(3));
        assert_eq!(c.fb.take_unrepaired(), Some((VIDEO, 3)));
        assert_eq!(
            c.fb.take_unrepaired(),
            None,
            "audio holes are not NACKed nor counted"
        );
    }

    #[test]
    fn packet_is_not_nacked_after_it_arrives() {
        let mut fb = InboundFeedback::new(None);
        fb.add_stream(VIDEO, 90_000, true);
        let mut c = Caller::new(fb);
        for seq in (0..=4).chain(6..=12).chain([5]).chain(13..=100) {
            c.packet(VIDEO, seq);
        }
        assert_eq!(c.nacks_of(5).len(), 1);
    }

    #[test]
    fn holes_beyond_the_window_and_huge_jumps_are_not_nacked() {
        let mut fb = InboundFeedback::new(None);
        fb.add_stream(VIDEO, 90_000, true);
        fb.add_stream(AUDIO, 90_000, true);
        let mut c = Caller::new(fb);
        // 5 falls out of the window before its first NACK is due.
        for seq in (0..=4).chain(6..=600) {
            c.fb.on_packet(VIDEO, seq, 0, None, c.now);
        }
        // A jump of 10,000 is a renumbering: no NACKs, no loss.
        for seq in (0..=9).chain(10_010..=10_020) {
            c.fb.on_packet(AUDIO, seq, 0, None, c.now);
        }
        c.advance(Duration::from_secs(2));
        assert!(c.nacks.is_empty(), "{:?}", &c.nacks[..c.nacks.len().min(5)]);
        let mut out = Vec::new();
        c.fb.handle_timeout(c.now + RR_INTERVAL, &mut out);
        let audio = reports(&out).into_iter().find(|r| r.ssrc == AUDIO).unwrap();
        assert_eq!(audio.total_lost, 0);
    }

    #[test]
    fn stream_added_without_nack_is_never_nacked() {
        let mut fb = InboundFeedback::new(None);
        fb.add_stream(AUDIO, 48_000, false);
        fb.add_stream(VIDEO, 90_000, true);
        let mut c = Caller::new(fb);
        // Audio loses every third packet, video (1000 up) one: only
        // video's is asked for, though NACK rounds run for it.
        for seq in 0..100 {
            if seq % 3 != 0 {
                c.packet(AUDIO, seq);
            }
            if seq != 50 {
                c.packet(VIDEO, 1_000 + seq);
            }
        }
        c.advance(Duration::from_secs(2));
        assert!(c.nacks.iter().all(|n| n.0 == 1_050), "{:?}", c.nacks);
        assert_eq!(c.nacks.len(), usize::from(NACK_TRIES));
    }

    #[test]
    fn receiver_report_counts_ten_lost_of_a_hundred_across_the_wrap() {
        let t0 = Instant::now();
        let mut fb = InboundFeedback::new(None);
        fb.add_stream(AUDIO, 48_000, false);
        for i in (0..100u16).filter(|i| ![10, 20, 30, 40, 50, 60, 70, 80, 90, 95].contains(i)) {
            let at = t0 + 20 * MS * i as u32;
            fb.on_packet(
                AUDIO,
                65_500u16.wrapping_add(i),
                1_000 + 960 * i as u32,
                None,
                at,
            );
        }
        fb.on_sender_report(AUDIO, 0x1234_5678_9ABC_DEF0, t0 + 500 * MS);
        let mut out = Vec::new();
        fb.handle_timeout(t0 + 2_500 * MS, &mut out);
        let r = reports(&out);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].ssrc, r[0].fraction_lost, r[0].total_lost),
            (AUDIO, 25, 10)
        );
        assert_eq!(r[0].last_sequence_number, 1 << 16 | 63);
        assert_eq!(r[0].jitter, 0, "perfectly paced");
        assert_eq!(r[0].last_sender_report, 0x5678_9ABC);
        assert!(r[0].delay.abs_diff(2 * 65_536) <= 1, "{}", r[0].delay);

        // The next interval lost nothing; the total stays.
        for i in 100..120u16 {
            let at = t0 + 20 * MS * i as u32 + 500 * MS;
            fb.on_packet(
                AUDIO,
                65_500u16.wrapping_add(i),
                1_000 + 960 * i as u32,
                None,
                at,
            );
        }
        let mut out = Vec::new();
        fb.handle_timeout(t0 + 4_000 * MS, &mut out);
        let r = reports(&out);
        assert_eq!((r[0].fraction_lost, r[0].total_lost), (0, 10));
    }

    #[test]
    fn jitter_grows_when_arrivals_wobble() {
        let t0 = Instant::now();
        let mut fb = InboundFeedback::new(None);
        fb.add_stream(VIDEO, 90_000, true);
        for i in 0..100u32 {
            let wobble = if i % 2 == 0 { Duration::ZERO } else { 8 * MS };
            fb.on_packet(VIDEO, i as u16, 3_000 * i, None, t0 + 33 * MS * i + wobble);
        }
        let mut out = Vec::new();
        fb.handle_timeout(t0 + 4 * RR_INTERVAL, &mut out);
        let jitter = reports(&out)[0].jitter;
        // |D| is 8 ms = 720 ticks each packet; J converges towards it.
        assert!((300..=720).contains(&jitter), "{jitter}");
    }

    #[test]
    fn removed_and_unknown_streams_are_not_reported() {
        let t0 = Instant::now();
        let mut fb = InboundFeedback::new(None);
        fb.add_stream(AUDIO, 48_000, false);
        fb.add_stream(VIDEO, 90_000, true);
        fb.add_stream(0x3333, 90_000, true); // never sends
        for seq in 0..10 {
            fb.on_packet(AUDIO, seq, 0, None, t0);
            fb.on_packet(VIDEO, seq, 0, None, t0);
            fb.on_packet(0x4444, seq, 0, None, t0);
        }
        fb.remove_stream(VIDEO);
        let mut out = Vec::new();
        fb.handle_timeout(t0 + RR_INTERVAL, &mut out);
        let ssrcs: Vec<u32> = reports(&out).iter().map(|r| r.ssrc).collect();
        assert_eq!(ssrcs, [AUDIO]);
    }

    #[test]
    fn hostile_input_never_panics_and_stays_bounded() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut fb = InboundFeedback::new(Some(5));
        fb.add_stream(AUDIO, 48_000, false);
        fb.add_stream(VIDEO, 90_000, true);
        fb.add_stream(0x3333, 1, true);
        let ssrcs = [AUDIO, VIDEO, 0x3333, 0x4444];
        let mut now = Instant::now();
        let (mut seq, mut twcc, mut most) = (0u16, 0u16, 0);
        for n in 0..100_000 {
            let r = rand();
            // Half plausible (near the last), half anything.
            seq = if r & 1 == 0 {
                seq.wrapping_add((r >> 8) as u16 % 40)
            } else {
                (r >> 8) as u16
            };
            twcc = if r & 2 == 0 {
                twcc.wrapping_add((r >> 24) as u16 % 8)
            } else {
                (r >> 24) as u16
            };
            let ts = (r >> 32) as u32;
            now += Duration::from_micros(r % 2_000);
            let ssrc = ssrcs[(r >> 40) as usize % 4];
            fb.on_packet(ssrc, seq, ts, (r & 4 == 0).then_some(twcc), now);
            if r % 97 == 0 {
                fb.on_sender_report(ssrc, rand(), now);
            }
            most = most.max(fb.pending.len());
            // A while, the caller stops polling: the ring must hold.
            let polls = !(40_000..60_000).contains(&n);
            if polls && (n % 200 == 0 || r % 53 == 0) {
                let mut out = Vec::new();
                while let Some(at) = fb.poll_timeout().filter(|at| *at <= now) {
                    fb.handle_timeout(at, &mut out);
                }
                assert!(out.len() <= 4 * (TWCC_PACKETS_MAX + 2), "{}", out.len());
                rtc::rtcp::packet::marshal(&out).expect("valid RTCP");
            }
        }
        assert_eq!(most, TWCC_PENDING_MAX, "full, never beyond");
        assert!(fb.dropped > 0);
    }
}
