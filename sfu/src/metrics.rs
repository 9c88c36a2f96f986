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
    /// Media quality (see [`QualityStats`]).
    pub layer_switches_up: AtomicU64,
    pub layer_switches_down: AtomicU64,
    pub video_resumes: AtomicU64,
    pub keyframe_requests: AtomicU64,
    pub nacks_received: AtomicU64,
    /// Gauge: video tracks paused for bandwidth.
    pub paused_tracks: AtomicU64,
    /// Datagrams dropped before the wire (socket buffer or pacing queue full).
    pub send_dropped: AtomicU64,
    /// Video packets resent for subscribers' NACKs, and NACKed packets not
    /// resent (asked again too soon, or over the retransmission budget).
    pub retransmitted: AtomicU64,
    pub retransmits_suppressed: AtomicU64,
    /// Publishers' video packets never resent though NACKed (given up).
    pub unrepaired: AtomicU64,
    /// Bounds on unauthenticated traffic (see [`LimitStats`]).
    pub ice_tcp_handed_over: AtomicU64,
    pub ice_tcp_evicted_same_address: AtomicU64,
    pub ice_tcp_evicted_full: AtomicU64,
    pub ice_tcp_timed_out: AtomicU64,
    pub ice_tcp_refused: AtomicU64,
    /// Gauge: media address table entries, all workers.
    pub media_addresses: AtomicU64,
    pub media_addresses_evicted: AtomicU64,
    pub media_addresses_refused_budget: AtomicU64,
    pub media_addresses_refused_full: AtomicU64,
    pub dropped_failed_check: AtomicU64,
    pub dropped_unknown_address: AtomicU64,
    pub dropped_not_webrtc: AtomicU64,
    /// Publishers' media our own SRTP refused, by reason.
    pub srtp_replayed: AtomicU64,
    pub srtp_failed_auth: AtomicU64,
    pub srtp_malformed: AtomicU64,
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

/// Media-quality counters, kept apart from [`MediaStats`] so adding them
/// changed no existing type. [`QualityStats::prometheus_text`] renders
/// them in the text exposition format for the edge to append to its
/// `/metrics` output.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QualityStats {
    pub layer_switches_up: u64,
    pub layer_switches_down: u64,
    pub video_resumes: u64,
    pub keyframe_requests: u64,
    pub nacks_received: u64,
    pub paused_tracks: u64,
    pub send_dropped: u64,
    pub retransmitted: u64,
    pub retransmits_suppressed: u64,
    pub unrepaired: u64,
}

impl QualityStats {
    /// Prometheus text format, names prefixed like the edge's own.
    pub fn prometheus_text(&self) -> String {
        let switches = "spreekkamer_media_layer_switches_total";
        let keyframes = "spreekkamer_media_keyframe_requests_total";
        let nacks = "spreekkamer_media_nacks_received_total";
        let paused = "spreekkamer_media_video_paused_for_bandwidth";
        let dropped = "spreekkamer_media_send_dropped_total";
        let resent = "spreekkamer_media_retransmissions_total";
        let unrepaired = "spreekkamer_media_unrepaired_packets_total";
        format!(
            "# HELP {switches} Simulcast layer switches made for subscribers, by direction\n\
             # TYPE {switches} counter\n\
             {switches}{{direction=\"up\"}} {}\n\
             {switches}{{direction=\"down\"}} {}\n\
             {switches}{{direction=\"resume\"}} {}\n\
             # HELP {keyframes} Keyframe requests (PLI) sent to publishers\n\
             # TYPE {keyframes} counter\n\
             {keyframes} {}\n\
             # HELP {nacks} NACKs received from subscribers (rtc answers them from its send cache)\n\
             # TYPE {nacks} counter\n\
             {nacks} {}\n\
             # HELP {paused} Subscriber video tracks paused because the bandwidth estimate is below the low layer\n\
             # TYPE {paused} gauge\n\
             {paused} {}\n\
             # HELP {dropped} Datagrams dropped before the wire: UDP send buffer full (raise net.core.wmem_max) or a subscriber's pacing queue over its bound\n\
             # TYPE {dropped} counter\n\
             {dropped} {}\n\
             # HELP {resent} Video retransmissions for subscribers' NACKs, sent or suppressed (asked again too soon, or over the budget; only while pacing)\n\
             # TYPE {resent} counter\n\
             {resent}{{outcome=\"sent\"}} {}\n\
             {resent}{{outcome=\"suppressed\"}} {}\n\
             # HELP {unrepaired} Publishers' video packets lost on the way in and not resent though NACKed (each asks the publisher for a keyframe, rate-limited)\n\
             # TYPE {unrepaired} counter\n\
             {unrepaired} {}\n",
            self.layer_switches_up,
            self.layer_switches_down,
            self.video_resumes,
            self.keyframe_requests,
            self.nacks_received,
            self.paused_tracks,
            self.send_dropped,
            self.retransmitted,
            self.retransmits_suppressed,
            self.unrepaired,
        )
    }
}

/// What the bounds on traffic from anyone without credentials did:
/// ICE-TCP connections waiting for their first check, the media address
/// table, datagrams dropped before the WebRTC stack. Rendered by
/// [`LimitStats::prometheus_text`] (docs/OPERATIONS.md lists them).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LimitStats {
    pub ice_tcp_handed_over: u64,
    pub ice_tcp_evicted_same_address: u64,
    pub ice_tcp_evicted_full: u64,
    pub ice_tcp_timed_out: u64,
    pub ice_tcp_refused: u64,
    pub media_addresses: u64,
    pub media_addresses_evicted: u64,
    pub media_addresses_refused_budget: u64,
    pub media_addresses_refused_full: u64,
    pub dropped_failed_check: u64,
    pub dropped_unknown_address: u64,
    pub dropped_not_webrtc: u64,
    pub srtp_replayed: u64,
    pub srtp_failed_auth: u64,
    pub srtp_malformed: u64,
}

impl LimitStats {
    /// Prometheus text format, names prefixed like the edge's own.
    pub fn prometheus_text(&self) -> String {
        let pending = "spreekkamer_media_ice_tcp_pending_total";
        let table = "spreekkamer_media_addresses";
        let learned = "spreekkamer_media_addresses_refused_total";
        let evicted = "spreekkamer_media_addresses_evicted_total";
        let dropped = "spreekkamer_media_datagrams_dropped_total";
        let srtp = "spreekkamer_media_srtp_refused_total";
        format!(
            "# HELP {pending} ICE-TCP connections that waited for their first STUN check, by how the wait ended\n\
             # TYPE {pending} counter\n\
             {pending}{{outcome=\"handed_over\"}} {}\n\
             {pending}{{outcome=\"evicted_same_address\"}} {}\n\
             {pending}{{outcome=\"evicted_full\"}} {}\n\
             {pending}{{outcome=\"timed_out\"}} {}\n\
             {pending}{{outcome=\"refused\"}} {}\n\
             # HELP {table} Remote media addresses the workers route (learned from STUN checks that passed the integrity check)\n\
             # TYPE {table} gauge\n\
             {table} {}\n\
             # HELP {evicted} Media addresses a peer lost to a newer one of its own (per-peer cap)\n\
             # TYPE {evicted} counter\n\
             {evicted} {}\n\
             # HELP {learned} Authenticated media addresses not learned, by bound\n\
             # TYPE {learned} counter\n\
             {learned}{{reason=\"peer_budget\"}} {}\n\
             {learned}{{reason=\"table_full\"}} {}\n\
             # HELP {dropped} Datagrams and ICE-TCP frames dropped before the WebRTC stack, by reason\n\
             # TYPE {dropped} counter\n\
             {dropped}{{reason=\"failed_check\"}} {}\n\
             {dropped}{{reason=\"unknown_address\"}} {}\n\
             {dropped}{{reason=\"not_webrtc\"}} {}\n\
             # HELP {srtp} Publishers' media packets the SFU's own SRTP check refused, by reason (replayed or too late, failed authentication, malformed)\n\
             # TYPE {srtp} counter\n\
             {srtp}{{reason=\"replayed\"}} {}\n\
             {srtp}{{reason=\"failed_authentication\"}} {}\n\
             {srtp}{{reason=\"malformed\"}} {}\n",
            self.ice_tcp_handed_over,
            self.ice_tcp_evicted_same_address,
            self.ice_tcp_evicted_full,
            self.ice_tcp_timed_out,
            self.ice_tcp_refused,
            self.media_addresses,
            self.media_addresses_evicted,
            self.media_addresses_refused_budget,
            self.media_addresses_refused_full,
            self.dropped_failed_check,
            self.dropped_unknown_address,
            self.dropped_not_webrtc,
            self.srtp_replayed,
            self.srtp_failed_auth,
            self.srtp_malformed,
        )
    }
}

impl MediaCounters {
    pub fn limit_snapshot(&self) -> LimitStats {
        LimitStats {
            ice_tcp_handed_over: self.ice_tcp_handed_over.load(Relaxed),
            ice_tcp_evicted_same_address: self.ice_tcp_evicted_same_address.load(Relaxed),
            ice_tcp_evicted_full: self.ice_tcp_evicted_full.load(Relaxed),
            ice_tcp_timed_out: self.ice_tcp_timed_out.load(Relaxed),
            ice_tcp_refused: self.ice_tcp_refused.load(Relaxed),
            media_addresses: self.media_addresses.load(Relaxed),
            media_addresses_evicted: self.media_addresses_evicted.load(Relaxed),
            media_addresses_refused_budget: self.media_addresses_refused_budget.load(Relaxed),
            media_addresses_refused_full: self.media_addresses_refused_full.load(Relaxed),
            dropped_failed_check: self.dropped_failed_check.load(Relaxed),
            dropped_unknown_address: self.dropped_unknown_address.load(Relaxed),
            dropped_not_webrtc: self.dropped_not_webrtc.load(Relaxed),
            srtp_replayed: self.srtp_replayed.load(Relaxed),
            srtp_failed_auth: self.srtp_failed_auth.load(Relaxed),
            srtp_malformed: self.srtp_malformed.load(Relaxed),
        }
    }

    pub fn quality_snapshot(&self) -> QualityStats {
        QualityStats {
            layer_switches_up: self.layer_switches_up.load(Relaxed),
            layer_switches_down: self.layer_switches_down.load(Relaxed),
            video_resumes: self.video_resumes.load(Relaxed),
            keyframe_requests: self.keyframe_requests.load(Relaxed),
            nacks_received: self.nacks_received.load(Relaxed),
            paused_tracks: self.paused_tracks.load(Relaxed),
            send_dropped: self.send_dropped.load(Relaxed),
            retransmitted: self.retransmitted.load(Relaxed),
            retransmits_suppressed: self.retransmits_suppressed.load(Relaxed),
            unrepaired: self.unrepaired.load(Relaxed),
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_counters_render_as_prometheus_text() {
        let c = MediaCounters::default();
        c.layer_switches_down.fetch_add(3, Relaxed);
        c.paused_tracks.fetch_add(1, Relaxed);
        c.send_dropped.fetch_add(7, Relaxed);
        let text = c.quality_snapshot().prometheus_text();
        assert!(text.contains("spreekkamer_media_layer_switches_total{direction=\"down\"} 3\n"));
        assert!(text.contains("spreekkamer_media_layer_switches_total{direction=\"up\"} 0\n"));
        assert!(text.contains("spreekkamer_media_video_paused_for_bandwidth 1\n"));
        assert!(text.contains("spreekkamer_media_send_dropped_total 7\n"));
        c.retransmits_suppressed.fetch_add(4, Relaxed);
        let text = c.quality_snapshot().prometheus_text();
        assert!(
            text.contains("spreekkamer_media_retransmissions_total{outcome=\"suppressed\"} 4\n")
        );
        c.unrepaired.fetch_add(2, Relaxed);
        let text = c.quality_snapshot().prometheus_text();
        assert!(text.contains("spreekkamer_media_unrepaired_packets_total 2\n"));
        assert_eq!(text.matches("# TYPE").count(), 7);
    }

    #[test]
    fn limit_counters_render_as_prometheus_text() {
        let c = MediaCounters::default();
        c.ice_tcp_evicted_full.fetch_add(2, Relaxed);
        c.dropped_failed_check.fetch_add(16_400, Relaxed);
        c.media_addresses.fetch_add(9, Relaxed);
        let text = c.limit_snapshot().prometheus_text();
        assert!(
            text.contains("spreekkamer_media_ice_tcp_pending_total{outcome=\"evicted_full\"} 2\n")
        );
        assert!(text.contains(
            "spreekkamer_media_datagrams_dropped_total{reason=\"failed_check\"} 16400\n"
        ));
        assert!(text.contains("spreekkamer_media_addresses 9\n"));
        c.srtp_failed_auth.fetch_add(3, Relaxed);
        let text = c.limit_snapshot().prometheus_text();
        assert!(text.contains(
            "spreekkamer_media_srtp_refused_total{reason=\"failed_authentication\"} 3\n"
        ));
        assert!(text.contains("spreekkamer_media_srtp_refused_total{reason=\"replayed\"} 0\n"));
        c.unrepaired.fetch_add(2, Relaxed);
        let text = c.quality_snapshot().prometheus_text();
        assert!(text.contains("spreekkamer_media_unrepaired_packets_total 2\n"));
        assert_eq!(text.matches("# TYPE").count(), 7);
    }
}
