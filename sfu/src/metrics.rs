//! Media-plane counters. Workers bump relaxed atomics (one cache line per
//! worker would be better still; see docs/DECISIONS.md); the edge reads a
//! [`MediaStats`] snapshot when Prometheus scrapes `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live counters shared between the workers and the edge.
#[derive(Debug, Default)]
pub struct MediaCounters {
    pub packets_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Gauges.
    pub consults: AtomicU64,
    pub peers: AtomicU64,
    pub tracks: AtomicU64,
}

/// A point-in-time copy of [`MediaCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MediaStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub consults: u64,
    pub peers: u64,
    pub tracks: u64,
}

impl MediaCounters {
    pub fn snapshot(&self) -> MediaStats {
        MediaStats {
            packets_in: self.packets_in.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            packets_out: self.packets_out.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            consults: self.consults.load(Relaxed),
            peers: self.peers.load(Relaxed),
            tracks: self.tracks.load(Relaxed),
        }
    }
}
