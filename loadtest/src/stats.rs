//! Measurement primitives: a log-linear latency histogram with
//! percentiles, per-stream loss and RFC 3550 jitter. Pure.

use serde::{Deserialize, Serialize};

/// Values below this are exact; above it each power of two is split into
/// SUB/2 buckets (bucket width ≤ 1/32 of the value, midpoint error ≤ 1.6%).
const SUB: u64 = 64;
const SUB_BITS: u32 = 6;
/// Values are clamped below 2^(MAX_EXP+1) µs (~38 h).
const MAX_EXP: u32 = 36;
const BUCKETS: usize = (MAX_EXP as usize - 5) * 32 + 64;

/// Histogram of microsecond values.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u128,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            sum: 0,
            max: 0,
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Histogram(n={})", self.total)
    }
}

fn index(v: u64) -> usize {
    let v = v.min((1u64 << (MAX_EXP + 1)) - 1);
    if v < SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros() - SUB_BITS + 1; // v >> exp in [32, 64)
    let exp = exp.max(1);
    let shifted = v >> exp; // in [SUB/2, SUB)
    (exp as usize) * (SUB as usize / 2) + shifted as usize
}

/// Smallest and largest value that land in bucket `i`.
fn bounds(i: usize) -> (u64, u64) {
    if i < SUB as usize {
        return (i as u64, i as u64);
    }
    let half = SUB as usize / 2;
    let exp = (i - half) / half;
    let shifted = (i - exp * half) as u64;
    let lo = shifted << exp;
    (lo, lo + (1u64 << exp) - 1)
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        let i = index(v).min(self.counts.len() - 1);
        self.counts[i] += 1;
        self.total += 1;
        self.sum += u128::from(v);
        self.max = self.max.max(v);
    }

    #[cfg_attr(not(test), allow(dead_code))]
    pub fn count(&self) -> u64 {
        self.total
    }

    #[cfg_attr(not(test), allow(dead_code))]
    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0..=1): midpoint of the bucket holding
    /// the ceil(q·n)-th smallest value, never above the largest seen.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bounds(i);
                return (lo + (hi - lo) / 2).min(self.max);
            }
        }
        self.max
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.total,
            mean_us: self.mean(),
            p50_us: self.quantile(0.50),
            p95_us: self.quantile(0.95),
            p99_us: self.quantile(0.99),
            max_us: self.max,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// What a subscriber knows about one incoming stream.
#[derive(Debug, Clone, Default)]
pub struct StreamRx {
    /// Highest counter seen; `None` before the first packet.
    highest: Option<u32>,
    /// Counter at the start of the current window (exclusive).
    window_base: Option<u32>,
    received_window: u64,
    /// RFC 3550 interarrival jitter in microseconds.
    jitter_us: f64,
    last_transit_ns: Option<i128>,
}

/// Loss accounting for a window: packets the senders' counters say were
/// sent and packets that arrived.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub expected: u64,
    pub received: u64,
}

impl StreamRx {
    /// A packet with `counter` sent at `sent_ns` arrived at `recv_ns`.
    pub fn record(&mut self, counter: u32, sent_ns: u64, recv_ns: u64) {
        match self.highest {
            None => {
                // Count from the first packet seen: a subscriber that joins
                // mid-stream has not lost what came before.
                self.highest = Some(counter);
                self.window_base = Some(counter.wrapping_sub(1));
            }
            Some(h) if counter.wrapping_sub(h) < 0x8000_0000 => self.highest = Some(counter),
            Some(_) => {}
        }
        self.received_window += 1;
        let transit = i128::from(recv_ns) - i128::from(sent_ns);
        if let Some(prev) = self.last_transit_ns {
            let d = ((transit - prev).abs() as f64) / 1000.0;
            self.jitter_us += (d - self.jitter_us) / 16.0;
        }
        self.last_transit_ns = Some(transit);
    }

    /// Close the current window: what was expected and received in it.
    pub fn take_window(&mut self) -> Window {
        let (Some(h), Some(base)) = (self.highest, self.window_base) else {
            return Window::default();
        };
        let expected = u64::from(h.wrapping_sub(base));
        let w = Window {
            expected,
            received: self.received_window,
        };
        self.window_base = Some(h);
        self.received_window = 0;
        w
    }

    pub fn jitter_us(&self) -> f64 {
        self.jitter_us
    }
}

impl Window {
    pub fn add(&mut self, o: Window) {
        self.expected += o.expected;
        self.received += o.received;
    }

    /// Fraction lost; late or duplicate packets never make it negative.
    pub fn loss(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            (self.expected.saturating_sub(self.received)) as f64 / self.expected as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_contiguously() {
        let mut prev_hi = None;
        for i in 0..BUCKETS - 1 {
            let (lo, hi) = bounds(i);
            assert!(lo <= hi);
            if let Some(p) = prev_hi {
                assert_eq!(lo, p + 1, "bucket {i}");
            }
            assert_eq!(index(lo), i);
            assert_eq!(index(hi), i);
            prev_hi = Some(hi);
        }
    }

    #[test]
    fn percentiles_of_a_uniform_range_are_close() {
        let mut h = Histogram::default();
        for v in 1..=10_000 {
            h.record(v);
        }
        for (q, want) in [(0.5, 5_000.0), (0.95, 9_500.0), (0.99, 9_900.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.02, "q{q}: {got}");
        }
        assert_eq!(h.quantile(1.0), 10_000);
        assert_eq!(h.count(), 10_000);
        assert!((h.mean() - 5000.5).abs() < 1e-9);
    }

    #[test]
    fn small_values_are_exact_and_tail_is_seen() {
        let mut h = Histogram::default();
        for _ in 0..98 {
            h.record(10);
        }
        h.record(50_000);
        h.record(60_000);
        assert_eq!(h.quantile(0.5), 10);
        assert_eq!(h.quantile(0.98), 10);
        let p99 = h.quantile(0.99);
        assert!((49_000..=51_000).contains(&p99), "{p99}");
        assert_eq!(h.max(), 60_000);
        assert_eq!(Histogram::default().quantile(0.99), 0);
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(100);
        b.record(300);
        b.record(300);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert!(
            (295..=305).contains(&a.quantile(0.5)),
            "bucketed to within 2%"
        );
        assert_eq!(a.max(), 300);
    }

    #[test]
    fn loss_counts_gaps_per_window() {
        let mut s = StreamRx::default();
        for c in [100, 101, 103, 104] {
            s.record(c, 0, 1_000);
        }
        let w = s.take_window();
        assert_eq!(
            w,
            Window {
                expected: 5,
                received: 4
            }
        );
        assert!((w.loss() - 0.2).abs() < 1e-9);
        // A late packet in the next window does not make loss negative.
        s.record(102, 0, 1_000);
        s.record(105, 0, 1_000);
        let w = s.take_window();
        assert_eq!(
            w,
            Window {
                expected: 1,
                received: 2
            }
        );
        assert_eq!(w.loss(), 0.0);
        assert_eq!(StreamRx::default().take_window(), Window::default());
    }

    #[test]
    fn jitter_follows_rfc3550() {
        let mut s = StreamRx::default();
        // Transit alternates 1 ms / 3 ms: |D| = 2 ms every packet.
        for i in 0..400u32 {
            let transit = if i % 2 == 0 { 1_000_000 } else { 3_000_000 };
            let sent = u64::from(i) * 20_000_000;
            s.record(i, sent, sent + transit);
        }
        assert!((s.jitter_us() - 2000.0).abs() < 1.0, "{}", s.jitter_us());
        let mut steady = StreamRx::default();
        for i in 0..100u32 {
            steady.record(i, u64::from(i) * 1000, u64::from(i) * 1000 + 500);
        }
        assert_eq!(steady.jitter_us(), 0.0);
    }
}
