//! Pacing of the video sent to one subscriber.
//!
//! A publisher's keyframe arrives as a burst (a 180p keyframe is 10-20
//! packets within a millisecond or two, because the publisher's browser
//! paces all its simulcast layers together at several Mbit/s), and so do
//! retransmissions after a loss. Forwarded unpaced into a subscriber's slow
//! link, the burst overflows the bottleneck's queue: measured behind a
//! 350 kbit/s tbf (10 KB bucket, 200 ms queue) 20-30 % of the packets were
//! dropped while the average rate was 100-230 kbit/s, the receiver reports
//! read as congestion, and video stalled in a loop of loss, keyframe
//! request and a new burst. A pacer spreads each burst at a small multiple
//! of the subscriber's estimated rate, as every WebRTC sender does.
//!
//! Only video is queued; audio and RTCP go at once but are counted, so the
//! video that follows leaves them room. The queue is bounded in time (the
//! rate rises to drain it within [`MAX_QUEUE_DELAY`]) and in bytes (beyond
//! [`MAX_QUEUE_BYTES`] video is dropped and counted). The pacer is generic
//! over the queued item so its arithmetic is tested without sockets.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Pacing rate as a multiple of the subscriber's estimate (libwebrtc's
/// default pacing factor).
pub(crate) const PACE_FACTOR: f64 = 2.5;
/// The rate is never paced below this (bit/s): a subscriber whose estimate
/// has collapsed still gets keyframes through in reasonable time.
pub(crate) const MIN_PACE_BPS: u64 = 250_000;
/// At most this much may wait; a longer queue raises the rate to drain it.
pub(crate) const MAX_QUEUE_DELAY: Duration = Duration::from_millis(400);
/// Hard bound on queued bytes per subscriber.
pub(crate) const MAX_QUEUE_BYTES: usize = 1 << 20;
/// Tokens saved up while idle, in time at the pacing rate...
const BURST: Duration = Duration::from_millis(10);
/// ...but at least two full packets.
const MIN_BURST_BYTES: f64 = 2_400.0;

#[derive(Debug)]
pub(crate) struct Pacer<T> {
    queue: VecDeque<(T, usize)>,
    queued_bytes: usize,
    /// Bytes per second; 0 = not pacing (everything goes at once).
    rate: f64,
    /// Budget in bytes; negative = in debt (a packet went out on credit).
    tokens: f64,
    last: Option<Instant>,
    /// Bytes per second needed to drain the queue within MAX_QUEUE_DELAY,
    /// set as it grows and held until it is empty (so the rate does not
    /// decay with the queue and the tail still leaves in time).
    drain: f64,
    /// Video dropped because the queue was full.
    pub dropped: u64,
}

impl<T> Default for Pacer<T> {
    fn default() -> Self {
        Pacer {
            queue: VecDeque::new(),
            queued_bytes: 0,
            rate: 0.0,
            tokens: 0.0,
            last: None,
            drain: 0.0,
            dropped: 0,
        }
    }
}

impl<T> Pacer<T> {
    /// Pace at `bits_per_second`, or not at all (`None`: what is queued
    /// goes at the next `release`).
    pub(crate) fn set_rate(&mut self, bits_per_second: Option<u64>) {
        self.rate = bits_per_second.map_or(0.0, |b| b as f64 / 8.0);
    }

    pub(crate) fn is_pacing(&self) -> bool {
        self.rate > 0.0 || !self.queue.is_empty()
    }

    /// Bytes per second in force: the set rate, or faster while the queue
    /// would otherwise wait longer than [`MAX_QUEUE_DELAY`].
    fn effective_rate(&self) -> f64 {
        self.rate.max(self.drain)
    }

    fn refill(&mut self, now: Instant) {
        let rate = self.effective_rate();
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            let cap = (rate * BURST.as_secs_f64()).max(MIN_BURST_BYTES);
            self.tokens = (self.tokens + elapsed * rate).min(cap);
        }
        self.last = Some(now);
    }

    /// Video: `Some(item)` if it may go now, else it waits (or, with the
    /// queue full, is dropped).
    pub(crate) fn admit(&mut self, item: T, len: usize, now: Instant) -> Option<T> {
        if self.rate <= 0.0 && self.queue.is_empty() {
            return Some(item);
        }
        self.refill(now);
        if self.queue.is_empty() && self.tokens >= 0.0 {
            self.tokens -= len as f64;
            return Some(item);
        }
        if self.queued_bytes + len > MAX_QUEUE_BYTES {
            self.dropped += 1;
            return None;
        }
        self.queued_bytes += len;
        self.queue.push_back((item, len));
        self.drain = self
            .drain
            .max(self.queued_bytes as f64 / MAX_QUEUE_DELAY.as_secs_f64());
        None
    }

    /// Something that is not paced (audio, RTCP) went out: it used the link.
    pub(crate) fn spend(&mut self, len: usize, now: Instant) {
        if self.rate > 0.0 {
            self.refill(now);
            self.tokens -= len as f64;
        }
    }

    /// The next queued item that may go now.
    pub(crate) fn release(&mut self, now: Instant) -> Option<T> {
        if self.queue.is_empty() {
            return None;
        }
        if self.rate > 0.0 {
            self.refill(now);
            if self.tokens < 0.0 {
                return None;
            }
        }
        let (item, len) = self.queue.pop_front()?;
        self.queued_bytes -= len;
        self.tokens -= len as f64;
        if self.queue.is_empty() {
            self.drain = 0.0;
        }
        Some(item)
    }

    /// When `release` will next have something (None = nothing queued).
    pub(crate) fn next_release(&self) -> Option<Instant> {
        if self.queue.is_empty() {
            return None;
        }
        let last = self.last?;
        if self.rate <= 0.0 || self.tokens >= 0.0 {
            return Some(last);
        }
        let wait = -self.tokens / self.effective_rate();
        Some(last + Duration::from_secs_f64(wait))
    }

    pub(crate) fn queued(&self) -> usize {
        self.queued_bytes
    }
}

/// Retransmissions may use at most this share of the media rate we
/// forward to the subscriber...
pub(crate) const RETRANSMIT_SHARE: f64 = 0.25;
/// ...but always this much (bit/s), so a quiet stream still repairs.
pub(crate) const MIN_RETRANSMIT_BPS: f64 = 40_000.0;
/// The same packet is not resent again within this time (a NACK repeated
/// before the first repair could have arrived).
pub(crate) const RESEND_INTERVAL: Duration = Duration::from_millis(40);
/// Added to the smoothed round-trip time: Chromium sends its repeated
/// NACKs on a 20 ms timer, so a copy sent just before our resend arrived
/// can reach us up to ~20 ms after a round trip; plus 5 ms of jitter. (With
/// 10 ms, 2-3 resends went out per packet lost in the 5 % browser test and
/// the budget refused 20-40 real repairs a second.)
pub(crate) const RESEND_MARGIN: Duration = Duration::from_millis(25);
/// The longest wait between two resends of one packet, whatever the
/// round-trip time reads.
pub(crate) const MAX_RESEND_INTERVAL: Duration = Duration::from_millis(300);
/// Budget saved up while idle, in time at the retransmission rate.
const RETRANSMIT_BURST: Duration = Duration::from_millis(250);
const RECENT_SLOTS: usize = 128;

/// Bounds the retransmissions rtc's NACK responder sends one subscriber.
///
/// rtc answers every NACK from its send cache, as often as it is asked.
/// Behind a slow link that turns into a storm: measured behind a
/// 350 kbit/s cap, ~1 400 retransmitted video packets a second (over
/// 400 kbit/s, more than the link) for ~140 kbit/s of media; the storm
/// caused the loss it was repairing and video stalled. Here a packet is
/// resent at most once per interval — [`RESEND_INTERVAL`], or the
/// subscriber's smoothed round-trip time plus [`RESEND_MARGIN`] when longer
/// (up to [`MAX_RESEND_INTERVAL`]) — and all retransmissions together stay
/// within [`RETRANSMIT_SHARE`] of the media rate. Why a round trip: a NACK
/// that reaches us less than a round trip after our resend was sent
/// before the resend could reach the browser — a copy (Chromium repeats a
/// NACK every ~20 ms until the packet comes; answering each spent the
/// budget on copies, and the budget then refused real repairs: degraded
/// browser test, 5 % loss). One arriving later means the resend was lost,
/// and is answered. Smoothed, because one report delayed by a queue
/// should not move it; a margin, because at exactly one round trip jitter
/// alone would decide between copy and retry.
#[derive(Debug)]
pub(crate) struct RetransmitLimit {
    rate: f64,
    interval: Duration,
    /// Smoothed round-trip time (RFC 6298's gain of 1/8), once measured.
    srtt: Option<Duration>,
    tokens: f64,
    last: Option<Instant>,
    /// (ssrc, seq, when) of recent retransmissions, hashed by seq.
    recent: [(u32, u16, Option<Instant>); RECENT_SLOTS],
    pub sent: u64,
    pub suppressed: u64,
    /// Of those suppressed, refused for the budget (not as a repeat).
    pub over_budget: u64,
}

impl Default for RetransmitLimit {
    fn default() -> Self {
        RetransmitLimit {
            rate: MIN_RETRANSMIT_BPS / 8.0,
            interval: RESEND_INTERVAL,
            srtt: None,
            tokens: 0.0,
            last: None,
            recent: [(0, 0, None); RECENT_SLOTS],
            sent: 0,
            suppressed: 0,
            over_budget: 0,
        }
    }
}

impl RetransmitLimit {
    /// From the media rate forwarded to the subscriber (bit/s).
    pub(crate) fn set_media_rate(&mut self, media: u64) {
        self.rate = (media as f64 * RETRANSMIT_SHARE).max(MIN_RETRANSMIT_BPS) / 8.0;
    }

    /// How long a packet waits before it may be resent again.
    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    /// A round-trip time measured to the subscriber (its receiver reports).
    pub(crate) fn set_rtt(&mut self, rtt: Duration) {
        let srtt = self.srtt.map_or(rtt, |s| (s * 7 + rtt) / 8);
        self.srtt = Some(srtt);
        self.interval = (srtt + RESEND_MARGIN).clamp(RESEND_INTERVAL, MAX_RESEND_INTERVAL);
    }

    /// May the video packet `seq` of `ssrc` (`len` bytes) the pacer was
    /// handed go, by what it is. `resend`: `Some(true)`, a resend our
    /// media path budgeted when it answered the NACK (`OwnMedia::resend`);
    /// `Some(false)`, sent for the first time — late unless `newest` (a
    /// publisher's repair of its uplink loss): noted, never refused;
    /// `None` (rtc's media path, which does not say): a resend unless
    /// `newest`, budgeted here.
    pub(crate) fn admit(
        &mut self,
        (resend, newest): (Option<bool>, bool),
        (ssrc, seq, len): (u32, u16, usize),
        now: Instant,
    ) -> bool {
        match resend {
            None if !newest => self.allow(ssrc, seq, len, now),
            Some(false) if !newest => {
                self.note_first_send(ssrc, seq, now);
                true
            }
            _ => true,
        }
    }

    /// A late packet sent for the first time: not budgeted, but a NACK for
    /// it that crossed it on the way is not answered within the interval.
    pub(crate) fn note_first_send(&mut self, ssrc: u32, seq: u16, now: Instant) {
        self.recent[usize::from(seq) % RECENT_SLOTS] = (ssrc, seq, Some(now));
    }

    /// May this retransmission of `seq` on `ssrc` (`len` bytes) go now?
    pub(crate) fn allow(&mut self, ssrc: u32, seq: u16, len: usize, now: Instant) -> bool {
        let cap = self.rate * RETRANSMIT_BURST.as_secs_f64();
        match self.last {
            Some(last) => {
                let elapsed = now.saturating_duration_since(last).as_secs_f64();
                self.tokens = (self.tokens + elapsed * self.rate).min(cap);
            }
            None => self.tokens = cap,
        }
        self.last = Some(now);
        let slot = &mut self.recent[usize::from(seq) % RECENT_SLOTS];
        let again = slot.0 == ssrc
            && slot.1 == seq
            && slot
                .2
                .is_some_and(|t| now.saturating_duration_since(t) < self.interval);
        if again || self.tokens < len as f64 {
            self.suppressed += 1;
            self.over_budget += u64::from(!again);
            return false;
        }
        self.tokens -= len as f64;
        *slot = (ssrc, seq, Some(now));
        self.sent += 1;
        true
    }
}

/// Pacing rate (bit/s) for a subscriber: [`PACE_FACTOR`] times the larger
/// of its estimate and what it was sent last second, so pacing smooths
/// bursts but never throttles the average; `None` without an estimate.
pub(crate) fn pace_rate(estimate: Option<u64>, sent: u64) -> Option<u64> {
    let e = estimate?;
    let base = e.max(sent) as f64 * PACE_FACTOR;
    Some((base as u64).max(MIN_PACE_BPS))
}

/// Is this datagram an RTP packet (not RTCP, RFC 5761 §4), and its SSRC?
pub(crate) fn rtp_ssrc(datagram: &[u8]) -> Option<u32> {
    let b0 = *datagram.first()?;
    let b1 = *datagram.get(1)?;
    if b0 & 0xc0 != 0x80 || (192..=223).contains(&b1) {
        return None;
    }
    let s = datagram.get(8..12)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Release everything due up to `until`, stepping 1 ms; returns
    /// (time since t0 in ms, item) per release.
    fn drain(p: &mut Pacer<u32>, t0: Instant, until: Duration) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        let mut t = Duration::ZERO;
        while t <= until {
            while let Some(i) = p.release(t0 + t) {
                out.push((t.as_millis() as u64, i));
            }
            t += MS;
        }
        out
    }

    #[test]
    fn unpaced_sends_everything_at_once() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        for i in 0..50 {
            assert_eq!(p.admit(i, 1200, t0), Some(i));
        }
        assert_eq!(p.next_release(), None);
        assert!(!p.is_pacing());
    }

    #[test]
    fn a_keyframe_burst_is_spread_at_the_pacing_rate() {
        // 875 kbit/s = 109 375 B/s: a 20-packet, 24 000-byte burst takes
        // ~0.2 s instead of arriving in one go.
        let mut p = Pacer::default();
        p.set_rate(Some(875_000));
        let t0 = Instant::now();
        let mut now_sent = 0;
        for i in 0..20 {
            if p.admit(i, 1200, t0).is_some() {
                now_sent += 1;
            }
        }
        assert!(now_sent <= 2, "{now_sent} of the burst went at once");
        let due = p.next_release().expect("something queued");
        assert!(due > t0, "the next release is in the future");
        let out = drain(&mut p, t0, Duration::from_millis(400));
        assert_eq!(out.len() + now_sent, 20, "nothing lost: {out:?}");
        let order: Vec<u32> = out.iter().map(|(_, i)| *i).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "in order: {order:?}");
        let last_ms = out.last().map(|(t, _)| *t).unwrap_or(0);
        // 24 000 B at 109 375 B/s ≈ 219 ms (less the first packet's credit).
        assert!(
            (180..=240).contains(&last_ms),
            "burst spread over {last_ms} ms"
        );
        // Roughly even: no 10 ms window carries more than ~2 packets.
        for w in 0..last_ms / 10 {
            let n = out.iter().filter(|(t, _)| t / 10 == w).count();
            assert!(n <= 2, "{n} packets in window {w}: {out:?}");
        }
        assert_eq!(p.queued(), 0);
    }

    #[test]
    fn audio_is_never_queued_but_uses_the_budget() {
        let mut p: Pacer<u32> = Pacer::default();
        p.set_rate(Some(800_000)); // 100 000 B/s
        let t0 = Instant::now();
        assert_eq!(p.admit(1, 1000, t0), Some(1));
        // Audio went out meanwhile: the next video waits for that too.
        p.spend(1000, t0);
        assert_eq!(p.admit(2, 1000, t0), None);
        let due = p.next_release().expect("queued");
        let wait = due.duration_since(t0);
        assert!(
            wait >= 15 * MS && wait <= 25 * MS,
            "waits {wait:?} for 2000 B at 100 kB/s"
        );
    }

    #[test]
    fn a_long_queue_drains_faster_than_the_set_rate_and_is_bounded() {
        let mut p = Pacer::default();
        p.set_rate(Some(100_000)); // 12 500 B/s: 200 packets would take 19 s
        let t0 = Instant::now();
        for i in 0..200 {
            let _ = p.admit(i, 1200, t0);
        }
        let out = drain(&mut p, t0, Duration::from_secs(2));
        assert_eq!(
            out.len() + 1,
            200,
            "all but the first were queued, none lost"
        );
        let last = out.last().map(|(t, _)| *t).unwrap_or(0);
        let limit = MAX_QUEUE_DELAY.as_millis() as u64;
        assert!(last <= limit + 20, "the tail waited {last} ms");
        // More than MAX_QUEUE_BYTES at once: the excess is dropped, counted.
        let mut p = Pacer::default();
        p.set_rate(Some(100_000));
        let n = MAX_QUEUE_BYTES / 1200 + 100;
        for i in 0..n as u32 {
            let _ = p.admit(i, 1200, t0);
        }
        assert!(p.queued() <= MAX_QUEUE_BYTES);
        assert!(p.dropped >= 99, "dropped {}", p.dropped);
    }

    #[test]
    fn turning_pacing_off_releases_the_queue() {
        let mut p = Pacer::default();
        p.set_rate(Some(300_000));
        let t0 = Instant::now();
        for i in 0..10 {
            let _ = p.admit(i, 1200, t0);
        }
        p.set_rate(None);
        let mut n = 0;
        while p.release(t0).is_some() {
            n += 1;
        }
        assert!(n >= 8, "released {n}");
        assert!(!p.is_pacing());
    }

    #[test]
    fn pace_rate_follows_the_larger_of_estimate_and_sent() {
        assert_eq!(pace_rate(None, 1_000_000), None);
        assert_eq!(pace_rate(Some(400_000), 100_000), Some(1_000_000));
        assert_eq!(pace_rate(Some(50_000), 200_000), Some(500_000));
        assert_eq!(pace_rate(Some(10_000), 0), Some(MIN_PACE_BPS));
    }

    #[test]
    fn rtp_is_told_from_rtcp_and_garbage() {
        let mut rtp = [0u8; 20];
        rtp[0] = 0x80;
        rtp[1] = 96 | 0x80; // marker set, PT 96
        rtp[8..12].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
        assert_eq!(rtp_ssrc(&rtp), Some(0xdead_beef));
        let mut rtcp = rtp;
        rtcp[1] = 200; // sender report
        assert_eq!(rtp_ssrc(&rtcp), None);
        assert_eq!(rtp_ssrc(&[0x16, 0xfe, 0xfd]), None, "DTLS");
        assert_eq!(rtp_ssrc(&rtp[..10]), None, "truncated");
        assert_eq!(rtp_ssrc(&[]), None);
    }

    #[test]
    fn a_packet_is_resent_once_per_interval_and_within_the_budget() {
        let mut r = RetransmitLimit::default();
        r.set_media_rate(400_000); // 100 kbit/s of retransmissions = 12 500 B/s
        let t0 = Instant::now();
        assert!(r.allow(7, 100, 1200, t0));
        assert!(
            !r.allow(7, 100, 1200, t0 + 20 * MS),
            "asked again within the interval"
        );
        assert!(
            r.allow(8, 100, 1200, t0 + 20 * MS),
            "same seq on another stream"
        );
        assert!(
            r.allow(7, 100, 1200, t0 + 60 * MS),
            "asked again after the interval"
        );
        // A storm: 1 000 distinct packets asked for within one second get
        // about the budget (12 500 B/s plus the 250 ms saved), not all.
        let mut r = RetransmitLimit::default();
        r.set_media_rate(400_000);
        let mut sent = 0;
        for i in 0..1000u16 {
            if r.allow(7, i, 1200, t0 + Duration::from_millis(u64::from(i))) {
                sent += 1;
            }
        }
        assert!((10..=16).contains(&sent), "{sent} of 1000 resent");
        assert_eq!(r.sent, sent);
        assert_eq!(r.suppressed, 1000 - sent);
        // A stream with no measured rate still gets some repair.
        let mut r = RetransmitLimit::default();
        r.set_media_rate(0);
        assert!(r.allow(7, 1, 1200, t0));
    }

    #[test]
    fn a_packet_is_resent_at_most_once_per_round_trip_within_bounds() {
        let t0 = Instant::now();
        for (rtt, interval) in [(10, 40), (120, 145), (2_000, 300)] {
            let mut r = RetransmitLimit::default();
            r.set_media_rate(4_000_000);
            r.set_rtt(Duration::from_millis(rtt));
            assert!(r.allow(7, 1, 1200, t0));
            assert!(
                !r.allow(7, 1, 1200, t0 + Duration::from_millis(interval - 5)),
                "rtt {rtt} ms"
            );
            assert!(
                r.allow(7, 1, 1200, t0 + Duration::from_millis(interval + 1)),
                "rtt {rtt} ms"
            );
        }
    }

    #[test]
    fn the_interval_follows_a_smoothed_round_trip_not_one_sample() {
        let mut r = RetransmitLimit::default();
        r.set_rtt(Duration::from_millis(100));
        assert_eq!(r.interval(), Duration::from_millis(125));
        // One report delayed by a second moves it by an eighth.
        r.set_rtt(Duration::from_millis(1_100));
        assert_eq!(r.interval(), Duration::from_millis(250));
        for _ in 0..40 {
            r.set_rtt(Duration::from_millis(100));
        }
        assert!(
            r.interval() <= Duration::from_millis(126),
            "{:?}",
            r.interval()
        );
    }

    #[test]
    fn a_late_first_send_costs_no_budget_but_a_crossing_nack_waits() {
        let mut r = RetransmitLimit::default();
        r.set_media_rate(400_000);
        let t0 = Instant::now();
        // The budget spent on resends...
        let mut i = 0u16;
        while r.allow(7, 1000 + i, 1200, t0) {
            i += 1;
        }
        // ...does not touch first sends, which are only noted.
        for seq in 0..50u16 {
            r.note_first_send(7, seq, t0);
        }
        assert_eq!((r.sent, r.suppressed), (u64::from(i), 1));
        // A NACK that crossed the late packet is not answered at once.
        let later = t0 + Duration::from_secs(2); // budget refilled
        r.note_first_send(7, 3000, later);
        assert!(!r.allow(7, 3000, 1200, later + 10 * MS));
        assert!(r.allow(7, 3000, 1200, later + 60 * MS));
    }

    #[test]
    fn what_the_pacer_admits_by_what_a_packet_is() {
        let mut r = RetransmitLimit::default();
        let t0 = Instant::now();
        // Spend the budget.
        let mut i = 0u16;
        while r.allow(7, 1000 + i, 1200, t0) {
            i += 1;
        }
        let (sent, suppressed) = (r.sent, r.suppressed);
        // Late first sends and resends budgeted already: all go, none
        // counted against the (empty) budget.
        for seq in 0..20u16 {
            assert!(
                r.admit((Some(false), false), (7, seq, 1200), t0),
                "late first send"
            );
            assert!(
                r.admit((Some(true), false), (7, 500 + seq, 1200), t0),
                "budgeted resend"
            );
            assert!(
                r.admit((None, true), (7, 600 + seq, 1200), t0),
                "rtc's newest"
            );
        }
        assert_eq!((r.sent, r.suppressed), (sent, suppressed));
        // rtc's resends are budgeted here: refused while it is empty.
        assert!(!r.admit((None, false), (7, 700, 1200), t0));
        assert_eq!(r.suppressed, suppressed + 1);
        // And a NACK crossing a late first send waits out the interval.
        let later = t0 + Duration::from_secs(2);
        assert!(r.admit((Some(false), false), (7, 800, 1200), later));
        assert!(!r.allow(7, 800, 1200, later + 10 * MS));
    }
}
