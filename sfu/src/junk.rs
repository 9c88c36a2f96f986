//! Traffic a worker drops before the WebRTC stack: STUN that failed the
//! integrity check, datagrams from addresses no check has bound, bytes
//! that are not WebRTC at all, and authenticated addresses the table
//! refused. Anyone can send these at line rate, so they are counted, never
//! logged one by one: the counters reach `/metrics` once per loop turn and
//! a debug line sums them up at most once per [`SUMMARY_PERIOD`].

use crate::metrics::MediaCounters;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// At most one summary line per worker per period.
pub(crate) const SUMMARY_PERIOD: Duration = Duration::from_secs(10);

/// Drops since the counters were last published.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dropped {
    pub failed_check: u64,
    pub unknown_address: u64,
    pub not_webrtc: u64,
    pub refused_budget: u64,
    pub refused_full: u64,
    pub evicted: u64,
}

impl Dropped {
    fn is_empty(&self) -> bool {
        *self == Dropped::default()
    }

    fn add(&mut self, o: &Dropped) {
        self.failed_check += o.failed_check;
        self.unknown_address += o.unknown_address;
        self.not_webrtc += o.not_webrtc;
        self.refused_budget += o.refused_budget;
        self.refused_full += o.refused_full;
        self.evicted += o.evicted;
    }

    /// Add to the shared counters (once per loop turn, not per packet).
    pub(crate) fn publish(&self, c: &MediaCounters) {
        if self.is_empty() {
            return;
        }
        c.dropped_failed_check.fetch_add(self.failed_check, Relaxed);
        c.dropped_unknown_address
            .fetch_add(self.unknown_address, Relaxed);
        c.dropped_not_webrtc.fetch_add(self.not_webrtc, Relaxed);
        c.media_addresses_refused_budget
            .fetch_add(self.refused_budget, Relaxed);
        c.media_addresses_refused_full
            .fetch_add(self.refused_full, Relaxed);
        c.media_addresses_evicted.fetch_add(self.evicted, Relaxed);
    }
}

/// Drops accumulated for the next summary line.
pub(crate) struct Summary {
    since: Instant,
    window: Dropped,
}

impl Summary {
    pub(crate) fn new(now: Instant) -> Summary {
        Summary {
            since: now,
            window: Dropped::default(),
        }
    }

    pub(crate) fn add(&mut self, d: &Dropped) {
        self.window.add(d);
    }

    /// The line to log now, if a period has passed and anything was
    /// dropped in it.
    pub(crate) fn line(&mut self, now: Instant) -> Option<String> {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < SUMMARY_PERIOD {
            return None;
        }
        let d = std::mem::take(&mut self.window);
        self.since = now;
        if d.is_empty() {
            return None;
        }
        Some(format!(
            "dropped in the last {} s: {} STUN checks that failed (not signed with a current \
             ICE password), {} datagrams from unbound addresses, {} not WebRTC; \
             authenticated addresses: {} refused over a peer's budget, {} refused with the \
             table full, {} evicted by a newer one of the same peer",
            elapsed.as_secs(),
            d.failed_check,
            d.unknown_address,
            d.not_webrtc,
            d.refused_budget,
            d.refused_full,
            d.evicted,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_becomes_one_line_per_period() {
        let t0 = Instant::now();
        let mut s = Summary::new(t0);
        let one = Dropped {
            failed_check: 1,
            ..Dropped::default()
        };
        let mut lines = Vec::new();
        for ms in 0..25_000u64 {
            s.add(&one);
            if let Some(l) = s.line(t0 + Duration::from_millis(ms)) {
                lines.push(l);
            }
        }
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("dropped in the last 10 s: 10001 STUN checks"));
        assert!(s.line(t0 + Duration::from_secs(60)).is_some(), "the rest");
        // Nothing dropped: nothing logged.
        assert_eq!(s.line(t0 + Duration::from_secs(71)), None);
    }
}
