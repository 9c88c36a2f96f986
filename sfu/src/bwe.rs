//! Per-subscriber bandwidth: getting rtc's send-side estimate out, and
//! sharing it among the video tracks that subscriber receives.
//!
//! The estimate is rtc-interceptor's Google Congestion Control fed by
//! transport-wide-cc feedback from the subscriber's browser (see
//! `peer.rs`: TWCC sequence numbers on everything we send, the congestion
//! control interceptor ingesting the feedback; deliberately *no* pacer, the
//! SFU forwards as it receives and controls the rate by choosing layers).
//! [`ReportingGcc`] publishes each new target into an atomic the peer reads
//! once a second; the interceptor chain lives inside rtc and is `Send`, so
//! an atomic rather than a `Cell`.
//!
//! [`Allocator`] turns (estimate, what each publisher sends, what the
//! subscriber wants) into one layer per publisher, or none: video pauses
//! before audio suffers. Moving up needs [`UP_HEADROOM`] more than the
//! layer costs and, after a downgrade for bandwidth, [`UPGRADE_HOLD`] of
//! calm, so a link near a threshold does not flap between layers; a step
//! up that fails (a downgrade within [`UP_PROVEN`]) doubles that hold, up
//! to [`UPGRADE_HOLD_MAX`]: GCC overshoots a link it has not been filling.

use crate::simulcast::{LAYERS, Layer, choose};
use rtc::interceptor::{BandwidthEstimator, EstimatorStats, Gcc, PacketReport};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Nominal layer bitrates (l, m, h) for a layer not measured yet.
pub(crate) const NOMINAL: [u64; LAYERS] = [150_000, 500_000, 1_200_000];
/// Kept for each audio track the subscriber receives (Opus at Chromium's
/// default rate plus RTP/SRTP/UDP/IP overhead at 50 packets/s).
pub(crate) const AUDIO_RESERVE: u64 = 40_000;
/// A step up must fit this many times over...
pub(crate) const UP_HEADROOM: f64 = 1.3;
/// ...while keeping a layer already sent needs only this fraction of its
/// cost: GCC settles below the link rate (0.85 x what arrived after each
/// overuse), and a link that carries the low layer must not read as one
/// that cannot (measured behind 350 kbit/s: estimates of 200-270 kbit/s
/// for a low layer plus two audio tracks that did flow).
pub(crate) const STAY_FACTOR: f64 = 0.75;
/// No step up this soon after a bandwidth downgrade.
pub(crate) const UPGRADE_HOLD: Duration = Duration::from_secs(8);
/// A step up that is followed by a downgrade within this time failed: the
/// next hold is twice as long. One that lasts this long resets the hold.
/// (Measured behind a 350 kbit/s tbf on a busy machine: GCC read 602
/// kbit/s while 241 kbit/s flowed, the step to the middle layer was taken,
/// and 4 s later loss took it back down, pausing video for audio's sake;
/// repeated every 8 s, the capped subscriber hardly ever saw a picture.)
pub(crate) const UP_PROVEN: Duration = Duration::from_secs(20);
/// The longest hold after repeated failed steps up.
pub(crate) const UPGRADE_HOLD_MAX: Duration = Duration::from_secs(64);
/// Video that is flowing pauses only after the estimate has been below the
/// low layer this long: GCC dips hard on a burst of loss (measured behind
/// a 350 kbit/s tbf: 106 kbit/s for a moment), and a pause costs a
/// keyframe and a frozen tile; a dip to the low layer costs neither.
pub(crate) const PAUSE_AFTER: Duration = Duration::from_secs(3);
/// Where the estimate starts: enough for one top layer, so a good link
/// starts in full quality and a poor one is found by the first overuse.
pub(crate) const INITIAL_ESTIMATE: f64 = 2_500_000.0;
const MIN_ESTIMATE: f64 = 50_000.0;
const MAX_ESTIMATE: f64 = 20_000_000.0;

/// What the published estimate reads before any feedback arrived.
pub(crate) const NO_ESTIMATE: u64 = u64::MAX;

/// GCC that publishes its target for the peer to read.
///
/// Until the subscriber's first transport-wide-cc feedback there is no
/// estimate ([`NO_ESTIMATE`]): a receiver that never sends that feedback
/// (one without send-side congestion control, e.g. the load generator's
/// peers) would otherwise be held at [`INITIAL_ESTIMATE`] for good and have
/// most of its video paused. Such a receiver is limited only by its wishes
/// and the receiver-report loss ceiling ([`LossCap`]).
pub(crate) struct ReportingGcc {
    inner: Gcc,
    out: Arc<AtomicU64>,
    fed: bool,
}

impl ReportingGcc {
    pub(crate) fn new() -> (Self, Arc<AtomicU64>) {
        let out = Arc::new(AtomicU64::new(NO_ESTIMATE));
        (
            ReportingGcc {
                inner: Gcc::new(INITIAL_ESTIMATE, MIN_ESTIMATE, MAX_ESTIMATE),
                out: out.clone(),
                fed: false,
            },
            out,
        )
    }

    fn publish(&self) {
        if self.fed {
            self.out.store(self.inner.target_bitrate() as u64, Relaxed);
        }
    }
}

impl BandwidthEstimator for ReportingGcc {
    fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        self.inner.on_reports(now, reports);
        self.fed |= !reports.is_empty();
        self.publish();
    }
    fn target_bitrate(&self) -> f64 {
        self.inner.target_bitrate()
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.inner.handle_timeout(now);
        self.publish();
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.inner.poll_timeout()
    }
    fn stats(&self) -> EstimatorStats {
        self.inner.stats()
    }
}

/// A loss-based ceiling of our own, from the subscriber's RTCP receiver
/// reports. GCC from TWCC alone was measured slow behind a tc tbf cap
/// (estimate still at 4 Mbit/s 35 s into a 350 kbit/s cap, in one run of
/// two): tbf drops rather than delays, and the loss GCC sees depends on
/// feedback timing. Receiver reports state the loss plainly. Above
/// [`LOSS_HIGH`] the ceiling drops to what got through; below
/// [`LOSS_LOW`] it grows 8 %/s, slowly (+10 kbit/s per second) near the rate
/// that last lost, and lifts once above GCC's own estimate.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LossCap {
    cap: Option<u64>,
    /// The send rate at which loss was last seen.
    lost_at: Option<u64>,
}

/// Receiver-report loss fraction (of 256) that lowers the ceiling...
pub(crate) const LOSS_HIGH: u8 = 26;
/// ...and below which it may grow.
pub(crate) const LOSS_LOW: u8 = 5;

impl LossCap {
    pub(crate) fn cap(&self) -> Option<u64> {
        self.cap
    }

    /// Once a second: the worst loss fraction reported (0-255) and what we
    /// sent meanwhile (bit/s). Returns the ceiling, if any.
    pub(crate) fn update(&mut self, worst_loss: u8, sent: u64, gcc: u64) -> Option<u64> {
        if worst_loss > LOSS_HIGH && sent > 0 {
            let through = sent - sent * u64::from(worst_loss) / 256;
            self.cap = Some(self.cap.map_or(through, |c| c.min(through)));
            self.lost_at = Some(sent);
        } else if worst_loss < LOSS_LOW
            && let Some(c) = self.cap
        {
            let near = self.lost_at.is_some_and(|l| c * 100 > l * 85);
            let next = if near { c + 10_000 } else { c + c * 8 / 100 };
            self.cap = (next < gcc).then_some(next);
        }
        self.cap
    }
}

/// One publisher's video as one subscriber sees it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Want {
    /// The subscriber's wish (preference); `None` = no video at all.
    pub desired: Option<Layer>,
    /// Layers the publisher is sending (bit per layer).
    pub active: u8,
    /// Measured bitrate per layer (0 = unknown).
    pub rates: [u64; LAYERS],
    /// The layer allocated last time.
    pub current: Option<Layer>,
}

fn cost(want: &Want, layer: Layer) -> u64 {
    let i = layer as usize;
    // A still scene costs little; floor it so a layer does not look free.
    // A publisher with one stream is floored at the low layer's figure:
    // that stream is all there is, whatever resolution it has.
    if want.rates[i] == 0 {
        return NOMINAL[i];
    }
    let floor = if want.active.count_ones() <= 1 {
        NOMINAL[0] / 2
    } else {
        NOMINAL[i] / 2
    };
    want.rates[i].max(floor)
}

/// Allocation state of one subscriber.
#[derive(Debug, Default)]
pub(crate) struct Allocator {
    last_down: Option<Instant>,
    /// The hold after a downgrade; zero means [`UPGRADE_HOLD`].
    hold: Duration,
    /// When a layer last went up (until [`UP_PROVEN`] has passed).
    last_up: Option<Instant>,
    /// Since when the estimate has not fit some flowing video's low layer.
    short_since: Option<Instant>,
}

/// Result for one subscriber's allocation round.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// Some layer went down (or paused) for lack of bandwidth.
    pub downgraded: bool,
    /// Tracks the subscriber wants video from but gets none (bandwidth).
    pub paused: usize,
}

impl Allocator {
    /// Fill `out[i]` with the layer for `wants[i]`.
    ///
    /// `floor_free`: no sign that audio suffers, so every wanted track gets
    /// its lowest layer whatever the estimate says, and only steps up are
    /// budgeted. Without probing, GCC never rises much above 1.5x what we
    /// send, so a subscriber of five single-layer publishers would otherwise
    /// keep three paused on a link with room for all (measured: the load
    /// generator's group of 6 got half its video).
    pub(crate) fn allocate(
        &mut self,
        estimate: u64,
        audio_tracks: usize,
        floor_free: bool,
        wants: &[Want],
        out: &mut [Option<Layer>],
        now: Instant,
    ) -> Outcome {
        if self
            .last_up
            .is_some_and(|t| now.saturating_duration_since(t) >= UP_PROVEN)
        {
            self.last_up = None;
            self.hold = UPGRADE_HOLD;
        }
        let hold = self.hold.max(UPGRADE_HOLD);
        let may_go_up = self
            .last_down
            .is_none_or(|t| now.saturating_duration_since(t) >= hold);
        let mut budget = estimate.saturating_sub(AUDIO_RESERVE * audio_tracks as u64);
        for o in out.iter_mut() {
            *o = None;
        }
        // Everyone gets their lowest layer first, then one step up at a
        // time round-robin, so two tiles share before one gets it all.
        for round in 0..LAYERS as Layer {
            for (i, want) in wants.iter().enumerate() {
                let Some(best) = choose(want.desired, want.active) else {
                    continue;
                };
                if want.active == 0 {
                    // Sends nothing now (camera off): costs nothing, and
                    // the wish stands for when it starts.
                    out[i] = Some(best);
                    continue;
                }
                let next = match out[i] {
                    None if round == 0 => choose(Some(0), want.active).unwrap_or(best),
                    None => continue,
                    Some(l) if l < best => (l + 1..=best)
                        .find(|c| want.active == 0 || want.active & (1 << c) != 0)
                        .unwrap_or(best),
                    Some(_) => continue,
                };
                let step = cost(want, next) - out[i].map_or(0, |l| cost(want, l));
                let above = want.current.is_none_or(|c| next > c);
                let needed = if floor_free && out[i].is_none() {
                    0
                } else if above {
                    if !may_go_up {
                        continue;
                    }
                    (step as f64 * UP_HEADROOM) as u64
                } else {
                    (step as f64 * STAY_FACTOR) as u64
                };
                if needed <= budget {
                    budget = budget.saturating_sub(step);
                    out[i] = Some(next);
                }
            }
        }
        // Flowing video the budget dropped entirely: keep its lowest layer
        // until the shortage has lasted PAUSE_AFTER.
        let short = wants.iter().zip(out.iter()).any(|(w, g)| {
            w.current.is_some() && g.is_none() && choose(w.desired, w.active).is_some()
        });
        if short {
            let since = *self.short_since.get_or_insert(now);
            if now.saturating_duration_since(since) < PAUSE_AFTER {
                for (want, got) in wants.iter().zip(out.iter_mut()) {
                    if want.current.is_some() && got.is_none() && want.desired.is_some() {
                        *got = choose(Some(0), want.active);
                    }
                }
            }
        } else {
            self.short_since = None;
        }
        let mut outcome = Outcome::default();
        let mut raised = false;
        for (want, got) in wants.iter().zip(out.iter()) {
            let best = choose(want.desired, want.active);
            let lower = match (want.current, *got) {
                (Some(c), Some(g)) => g < c && best.is_some_and(|b| g < b),
                (Some(_), None) => best.is_some(),
                _ => false,
            };
            raised |= matches!((want.current, *got), (Some(c), Some(g)) if g > c);
            outcome.downgraded |= lower;
            if best.is_some() && got.is_none() {
                outcome.paused += 1;
            }
        }
        if outcome.downgraded {
            self.last_down = Some(now);
            if self.last_up.take().is_some() {
                // The last step up did not hold: wait longer next time.
                self.hold = (hold * 2).min(UPGRADE_HOLD_MAX);
            }
        } else if raised {
            self.last_up = Some(now);
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u8 = 0b111;

    fn want(desired: Option<Layer>, current: Option<Layer>) -> Want {
        Want {
            desired,
            active: ALL,
            rates: [0; LAYERS],
            current,
        }
    }

    fn alloc(a: &mut Allocator, estimate: u64, wants: &[Want], now: Instant) -> Vec<Option<Layer>> {
        let mut out = vec![None; wants.len()];
        a.allocate(estimate, wants.len(), false, wants, &mut out, now);
        out
    }

    /// As `alloc`, with the lowest layers free (audio does not suffer).
    fn alloc_free(
        a: &mut Allocator,
        estimate: u64,
        wants: &[Want],
        now: Instant,
    ) -> Vec<Option<Layer>> {
        let mut out = vec![None; wants.len()];
        a.allocate(estimate, wants.len(), true, wants, &mut out, now);
        out
    }

    #[test]
    fn without_congestion_every_track_gets_its_lowest_layer() {
        let now = Instant::now();
        // Five single-layer publishers (layer 2 only) at 1.2 Mbit/s each and
        // an app-limited estimate of 3.3 Mbit/s.
        let single = Want {
            desired: Some(2),
            active: 0b100,
            rates: [0, 0, 1_200_000],
            current: None,
        };
        let mut a = Allocator::default();
        assert_eq!(
            alloc(&mut a, 3_300_000, &[single; 5], now),
            [Some(2), Some(2), None, None, None],
            "congested: the budget decides"
        );
        let mut a = Allocator::default();
        assert_eq!(
            alloc_free(&mut a, 3_300_000, &[single; 5], now),
            [Some(2); 5]
        );
        // Simulcast publishers: the low layers are free, steps up budgeted.
        let mut a = Allocator::default();
        assert_eq!(
            alloc_free(&mut a, 300_000, &[want(Some(2), None); 2], now),
            [Some(0), Some(0)]
        );
        let mut a = Allocator::default();
        assert_eq!(
            alloc(&mut a, 300_000, &[want(Some(2), None); 2], now),
            [Some(0), None],
            "congested: even low layers are budgeted (video pauses before audio)"
        );
    }

    #[test]
    fn no_feedback_means_no_estimate_and_five_top_layers_all_flow() {
        let (mut gcc, out) = ReportingGcc::new();
        let now = Instant::now();
        gcc.handle_timeout(now + Duration::from_secs(1));
        assert_eq!(
            out.load(Relaxed),
            NO_ESTIMATE,
            "timers alone publish nothing"
        );
        let mut a = Allocator::default();
        let five = [want(Some(2), None); 5];
        assert_eq!(
            alloc(&mut a, out.load(Relaxed), &five, now),
            [Some(2); 5],
            "a receiver without congestion-control feedback is not throttled"
        );
        gcc.on_reports(now + Duration::from_secs(2), &[]);
        assert_eq!(
            out.load(Relaxed),
            NO_ESTIMATE,
            "an empty report is no feedback"
        );
    }

    #[test]
    fn the_estimate_picks_the_layer_and_preferences_cap_it() {
        let now = Instant::now();
        let mut a = Allocator::default();
        assert_eq!(
            alloc(&mut a, 3_000_000, &[want(Some(2), None)], now),
            [Some(2)]
        );
        assert_eq!(
            alloc(&mut a, 3_000_000, &[want(Some(0), None)], now),
            [Some(0)]
        );
        assert_eq!(alloc(&mut a, 3_000_000, &[want(None, None)], now), [None]);
        let mut a = Allocator::default();
        assert_eq!(
            alloc(&mut a, 800_000, &[want(Some(2), None)], now),
            [Some(1)]
        );
        let mut a = Allocator::default();
        assert_eq!(
            alloc(&mut a, 400_000, &[want(Some(2), None)], now),
            [Some(0)]
        );
    }

    #[test]
    fn video_pauses_before_audio_suffers() {
        let t0 = Instant::now();
        let mut a = Allocator::default();
        let mut out = [None];
        // A dip keeps the low layer for a moment...
        a.allocate(120_000, 1, false, &[want(Some(2), Some(0))], &mut out, t0);
        assert_eq!(out, [Some(0)]);
        // ...a lasting shortage pauses it.
        let now = t0 + PAUSE_AFTER;
        let o = a.allocate(120_000, 1, false, &[want(Some(2), Some(0))], &mut out, now);
        assert_eq!(out, [None]);
        assert_eq!(
            o,
            Outcome {
                downgraded: true,
                paused: 1
            }
        );
    }

    #[test]
    fn going_up_needs_headroom_and_a_calm_period() {
        let t0 = Instant::now();
        let mut a = Allocator::default();
        // Medium costs 500k: staying needs 500k, going up from low 1.3 x.
        assert_eq!(
            alloc(&mut a, 600_000, &[want(Some(2), Some(1))], t0),
            [Some(1)]
        );
        let mut a = Allocator::default();
        assert_eq!(
            alloc(&mut a, 600_000, &[want(Some(2), Some(0))], t0),
            [Some(0)],
            "600k is not enough headroom to climb to medium"
        );
        // A downgrade holds further climbing for a while.
        let mut a = Allocator::default();
        assert_eq!(
            alloc(&mut a, 300_000, &[want(Some(2), Some(2))], t0),
            [Some(0)]
        );
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(
            alloc(&mut a, 5_000_000, &[want(Some(2), Some(0))], t1),
            [Some(0)]
        );
        let t2 = t0 + UPGRADE_HOLD;
        assert_eq!(
            alloc(&mut a, 5_000_000, &[want(Some(2), Some(0))], t2),
            [Some(2)]
        );
    }

    #[test]
    fn a_failed_step_up_doubles_the_hold_and_a_lasting_one_resets_it() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut a = Allocator::default();
        let at = |a: &mut Allocator, est: u64, cur: Layer, t: Instant| {
            alloc(a, est, &[want(Some(2), Some(cur))], t)[0]
        };
        // Down for bandwidth, then an overshooting estimate after the hold.
        assert_eq!(at(&mut a, 300_000, 2, t0), Some(0));
        assert_eq!(at(&mut a, 900_000, 0, t0 + UPGRADE_HOLD), Some(1));
        // It did not hold: loss takes it down 4 s later...
        let t1 = t0 + UPGRADE_HOLD + s(4);
        assert_eq!(at(&mut a, 300_000, 1, t1), Some(0));
        // ...and the next try waits twice as long.
        assert_eq!(at(&mut a, 900_000, 0, t1 + UPGRADE_HOLD), Some(0));
        let t2 = t1 + UPGRADE_HOLD * 2;
        assert_eq!(at(&mut a, 900_000, 0, t2), Some(1));
        // Failing again: four times, and never beyond the maximum.
        let t3 = t2 + s(1);
        assert_eq!(at(&mut a, 300_000, 1, t3), Some(0));
        assert_eq!(at(&mut a, 900_000, 0, t3 + UPGRADE_HOLD * 3), Some(0));
        let mut t = t3;
        for _ in 0..6 {
            t += UPGRADE_HOLD_MAX;
            assert_eq!(at(&mut a, 900_000, 0, t), Some(1));
            t += s(1);
            assert_eq!(at(&mut a, 300_000, 1, t), Some(0));
        }
        assert_eq!(at(&mut a, 900_000, 0, t + UPGRADE_HOLD_MAX - s(1)), Some(0));
        t += UPGRADE_HOLD_MAX;
        assert_eq!(at(&mut a, 900_000, 0, t), Some(1));
        // This step up holds for UP_PROVEN: the next downgrade's hold is the
        // short one again.
        t += UP_PROVEN;
        assert_eq!(at(&mut a, 900_000, 1, t), Some(1));
        assert_eq!(at(&mut a, 300_000, 1, t + s(1)), Some(0));
        assert_eq!(at(&mut a, 900_000, 0, t + s(1) + UPGRADE_HOLD), Some(1));
    }

    #[test]
    fn receiver_report_loss_caps_the_estimate_and_recovers_slowly() {
        let mut l = LossCap::default();
        assert_eq!(l.update(0, 1_000_000, 2_500_000), None);
        // 1.2 Mbit/s sent, 70 % lost: what got through is the ceiling.
        let c = l.update(179, 1_200_000, 2_500_000).expect("capped");
        assert!((350_000..=370_000).contains(&c), "{c}");
        // Clean seconds: +8 %/s far from the loss point, +10 k near it.
        let c2 = l.update(0, 300_000, 2_500_000).expect("still capped");
        assert_eq!(c2, c + c * 8 / 100);
        // Moderate loss (5-10 %) holds it.
        assert_eq!(l.update(15, 300_000, 2_500_000), Some(c2));
        // Lifted once above GCC.
        assert_eq!(l.update(0, 300_000, 300_000), None);
    }

    #[test]
    fn a_publisher_sending_nothing_costs_nothing() {
        let now = Instant::now();
        let mut a = Allocator::default();
        let off = Want {
            active: 0,
            ..want(Some(1), None)
        };
        let out = alloc(&mut a, 400_000, &[off, want(Some(2), None)], now);
        assert_eq!(out, [Some(1), Some(0)]);
    }

    #[test]
    fn two_publishers_share_before_one_gets_the_top() {
        let now = Instant::now();
        let mut a = Allocator::default();
        let wants = [want(Some(2), None), want(Some(2), None)];
        assert_eq!(alloc(&mut a, 1_500_000, &wants, now), [Some(1), Some(1)]);
    }

    #[test]
    fn measured_rates_replace_the_nominal_ones_and_missing_layers_are_skipped() {
        let now = Instant::now();
        let mut a = Allocator::default();
        let w = Want {
            desired: Some(2),
            active: 0b101,
            rates: [100_000, 0, 700_000],
            current: None,
        };
        assert_eq!(alloc(&mut a, 1_100_000, &[w], now), [Some(2)]);
        let single = Want {
            desired: Some(0),
            active: 0b100,
            rates: [0, 0, 300_000],
            current: None,
        };
        assert_eq!(alloc(&mut a, 1_000_000, &[single], now), [Some(2)]);
    }
}
