//! Prometheus metrics of the edge, plus the media plane's counters copied in
//! at scrape time (the SFU keeps plain atomics so its hot path never touches
//! the prometheus crate).

use crate::protocol::ErrorCode;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use sfu::metrics::MediaStats;
use std::sync::Mutex;

pub struct Metrics {
    registry: Registry,
    pub consults: IntGauge,
    pub participants: IntGauge,
    pub waiting: IntGauge,
    pub connections: IntGauge,
    pub media_consults: IntGauge,
    pub media_peers: IntGauge,
    pub tracks: IntGauge,
    packets_in: IntCounter,
    packets_out: IntCounter,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
    pub join_to_media: Histogram,
    pub joins_accepted: IntCounter,
    pub joins_rejected: IntCounterVec,
    /// Link checks before Join (`link_check.rs`) by outcome: `ok` or the
    /// error code a join would have got.
    link_checks: IntCounterVec,
    pub ws_messages: IntCounterVec,
    // Edge bounds (`listener.rs`, `session.rs`, `audit.rs`).
    pub http_connections: IntGauge,
    pub http_connections_refused: IntCounterVec,
    pub http_accept_errors: IntCounter,
    pub http_header_timeouts: IntCounter,
    pub ws_closed: IntCounterVec,
    audit_suppressed: IntCounter,
    /// Revocation requests by outcome (`invite`, `token`, `expired`,
    /// `unknown_invite`, `rate_limited`, `consult_quota`, `server_quota`,
    /// `forbidden`).
    revocations: IntCounterVec,
    /// Revocations held in memory.
    pub revocations_held: IntGauge,
    /// Cluster edge (`remote.rs`): consults placed on a media node (first
    /// placements and moves), moves after a node died, directory errors,
    /// and links to nodes that broke or could not be opened.
    pub cluster_placements: IntCounter,
    pub cluster_failovers: IntCounter,
    pub cluster_directory_errors: IntCounter,
    pub cluster_link_failures: IntCounter,
    /// Cluster edge (`peer.rs`): WebSockets passed on to a consult's home
    /// edge now, routing failures (directory down, home edge unreachable),
    /// rooms moved off a dead edge, and peer-port requests refused for a
    /// missing or bad proof.
    pub peer_passed_on: IntGauge,
    pub peer_route_failures: IntCounter,
    pub peer_rooms_moved: IntCounter,
    pub peer_refused: IntCounter,
    /// Rooms this edge holds that the edge directory places on another
    /// live edge (a split room: see docs/SCALING.md).
    pub peer_split_rooms: IntCounter,
    /// Room store (`roomstore`) calls that failed, by `op` (`read`,
    /// `revoke`, `bar`, `lock`) and `reason` (`unavailable`, `invalid`,
    /// `full`, `queue_full`).
    room_store_errors: IntCounterVec,
    /// Connectivity checks (`probe.rs`) by `kind` (`token`, `anonymous`)
    /// and `outcome`: `connected`, `timeout`, `failed`, `refused` (the
    /// result), `abandoned` (the browser left first), `rate_limited`,
    /// `at_capacity` (not started: the anonymous cap).
    connectivity_checks: IntCounterVec,
    /// Anonymous connectivity checks in progress (at most the cap).
    pub anonymous_checks: IntGauge,
    /// Operational log lines held back by the per-call-site limit
    /// (`logging.rs`), copied in at scrape time.
    log_suppressed: IntCounter,
    /// Serializes scrapes so the counter catch-up below is not raced.
    scrape: Mutex<()>,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let r = Registry::new_custom(Some("spreekkamer".into()), None)?;
        // Which build runs (a constant 1 with the version as a label), and
        // the process's CPU, memory and open files.
        let build = prometheus::IntGaugeVec::new(
            Opts::new("build_info", "The running build (always 1)"),
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        r.register(Box::new(build))?;
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let join_to_media = Histogram::with_opts(
            HistogramOpts::new(
                "join_to_media_seconds",
                "Time from an accepted join to the first media forwarded to that participant",
            )
            .buckets(vec![
                0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
            ]),
        )?;
        r.register(Box::new(join_to_media.clone()))?;
        let joins_rejected = IntCounterVec::new(
            Opts::new("joins_rejected_total", "Refused joins by error code"),
            &["reason"],
        )?;
        r.register(Box::new(joins_rejected.clone()))?;
        let link_checks = IntCounterVec::new(
            Opts::new(
                "link_checks_total",
                "Link checks before Join, by outcome (ok or the join's error code)",
            ),
            &["outcome"],
        )?;
        r.register(Box::new(link_checks.clone()))?;
        let ws_messages = IntCounterVec::new(
            Opts::new("ws_messages_total", "WebSocket messages received, by type"),
            &["type"],
        )?;
        r.register(Box::new(ws_messages.clone()))?;
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
            r.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let http_connections_refused = counter_vec(
            "http_connections_refused_total",
            "TCP connections closed at accept: over the total or the per-address cap",
            "cap",
        )?;
        let ws_closed = counter_vec(
            "ws_closed_total",
            "WebSockets the server closed: ping flood or no answer to heartbeats",
            "reason",
        )?;
        let revocations = IntCounterVec::new(
            Opts::new(
                "revocations_total",
                "Invite and token revocations, by outcome",
            ),
            &["outcome"],
        )?;
        r.register(Box::new(revocations.clone()))?;
        let room_store_errors = IntCounterVec::new(
            Opts::new(
                "room_store_errors_total",
                "Room store reads and writes that failed, by operation and reason",
            ),
            &["op", "reason"],
        )?;
        r.register(Box::new(room_store_errors.clone()))?;
        let connectivity_checks = IntCounterVec::new(
            Opts::new(
                "connectivity_checks_total",
                "Connectivity checks (probe), by kind (token, anonymous) and outcome",
            ),
            &["kind", "outcome"],
        )?;
        r.register(Box::new(connectivity_checks.clone()))?;
        Ok(Metrics {
            consults: gauge(
                &r,
                "consults",
                "Consults with at least one participant or in grace",
            )?,
            participants: gauge(&r, "participants", "Participants in a call (admitted)")?,
            waiting: gauge(&r, "waiting_participants", "Participants in a waiting room")?,
            connections: gauge(&r, "ws_connections", "Open WebSocket connections")?,
            media_consults: gauge(&r, "media_consults", "Consults the media plane holds")?,
            media_peers: gauge(&r, "media_peers", "Peer connections the media plane holds")?,
            tracks: gauge(&r, "media_tracks", "Tracks being forwarded")?,
            packets_in: counter(&r, "media_packets_in_total", "RTP/RTCP packets received")?,
            packets_out: counter(&r, "media_packets_out_total", "RTP/RTCP packets sent")?,
            bytes_in: counter(&r, "media_bytes_in_total", "Media bytes received")?,
            bytes_out: counter(&r, "media_bytes_out_total", "Media bytes sent")?,
            join_to_media,
            joins_accepted: counter(&r, "joins_accepted_total", "Joins with a valid token")?,
            joins_rejected,
            link_checks,
            ws_messages,
            http_connections: gauge(
                &r,
                "http_connections",
                "Open TCP connections on the HTTP port",
            )?,
            http_connections_refused,
            http_accept_errors: counter(&r, "http_accept_errors_total", "Failed accepts")?,
            http_header_timeouts: counter(
                &r,
                "http_header_timeouts_total",
                "Connections closed for not sending a request head in time",
            )?,
            ws_closed,
            audit_suppressed: counter(
                &r,
                "audit_lines_suppressed_total",
                "Audit failure lines over the per-source rate, counted in summary lines",
            )?,
            revocations,
            revocations_held: gauge(&r, "revocations_held", "Revocations held in memory")?,
            cluster_placements: counter(
                &r,
                "cluster_placements_total",
                "Consults placed on a media node (including moves)",
            )?,
            cluster_failovers: counter(
                &r,
                "cluster_failovers_total",
                "Consults moved after their media node was lost",
            )?,
            cluster_directory_errors: counter(
                &r,
                "cluster_directory_errors_total",
                "Placements that failed (directory down, no live node)",
            )?,
            cluster_link_failures: counter(
                &r,
                "cluster_link_failures_total",
                "Links to media nodes lost or not opened (each is followed by a reconnect or a move)",
            )?,
            peer_passed_on: gauge(
                &r,
                "edge_passed_on_connections",
                "WebSockets this edge passes on to the consult's home edge now",
            )?,
            peer_route_failures: counter(
                &r,
                "edge_route_failures_total",
                "Joins that could not reach their consult's home edge (directory down, home unreachable)",
            )?,
            peer_rooms_moved: counter(
                &r,
                "edge_rooms_moved_total",
                "Rooms this edge moved off a home edge whose entry expired",
            )?,
            peer_refused: counter(
                &r,
                "edge_peer_refused_total",
                "Requests on the peer port without a valid proof",
            )?,
            room_store_errors,
            peer_split_rooms: counter(
                &r,
                "edge_split_rooms_total",
                "Re-claims that found a room of this edge placed on another live edge",
            )?,
            connectivity_checks,
            anonymous_checks: gauge(
                &r,
                "anonymous_connectivity_checks",
                "Anonymous connectivity checks (probe without a token) in progress",
            )?,
            log_suppressed: counter(
                &r,
                "log_lines_suppressed_total",
                "Operational log lines held back by the per-call-site limit",
            )?,
            registry: r,
            scrape: Mutex::new(()),
        })
    }

    /// One link check answered: `None` is ok, else the refusal's code.
    pub fn link_checked(&self, refused: Option<ErrorCode>) {
        let outcome = refused.map_or("ok", |c| c.as_str());
        self.link_checks.with_label_values(&[outcome]).inc();
    }

    pub fn rejected(&self, code: ErrorCode) {
        self.joins_rejected
            .with_label_values(&[code.as_str()])
            .inc();
    }

    /// Bring the audit log's suppressed-lines total in (before `render`).
    pub fn audit_suppressed(&self, total: u64) {
        catch_up(&self.audit_suppressed, total);
    }

    pub fn room_store_error(&self, op: &str, reason: &str) {
        self.room_store_errors
            .with_label_values(&[op, reason])
            .inc();
    }

    pub fn connectivity_check(&self, kind: &str, outcome: &str) {
        self.connectivity_checks
            .with_label_values(&[kind, outcome])
            .inc();
    }

    pub fn revocation(&self, outcome: &str) {
        self.revocations.with_label_values(&[outcome]).inc();
    }

    /// Prometheus text format, with the media plane's numbers brought up to date.
    pub fn render(&self, media: MediaStats) -> String {
        let _guard = self.scrape.lock();
        self.media_consults.set(clamp(media.consults));
        self.media_peers.set(clamp(media.peers));
        self.tracks.set(clamp(media.tracks));
        catch_up(&self.packets_in, media.packets_in);
        catch_up(&self.packets_out, media.packets_out);
        catch_up(&self.bytes_in, media.bytes_in);
        catch_up(&self.bytes_out, media.bytes_out);
        catch_up(&self.log_suppressed, crate::logging::suppressed_total());
        let mut out = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Counters only go up; the SFU's totals are monotonic, so add the difference.
fn catch_up(counter: &IntCounter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_includes_media_totals_and_rejections() {
        let m = Metrics::new().unwrap();
        m.rejected(ErrorCode::TokenExpired);
        m.rejected(ErrorCode::TokenExpired);
        let stats = MediaStats {
            packets_in: 10,
            bytes_in: 1000,
            packets_out: 20,
            bytes_out: 2000,
            consults: 1,
            peers: 2,
            tracks: 4,
        };
        m.audit_suppressed(7);
        let text = m.render(stats);
        assert!(text.contains("spreekkamer_audit_lines_suppressed_total 7"));
        assert!(
            text.contains("spreekkamer_media_packets_in_total 10"),
            "{text}"
        );
        assert!(text.contains("spreekkamer_media_bytes_out_total 2000"));
        assert!(text.contains("spreekkamer_media_tracks 4"));
        assert!(text.contains("spreekkamer_joins_rejected_total{reason=\"token_expired\"} 2"));
        m.link_checked(None);
        m.link_checked(Some(ErrorCode::TokenRevoked));
        let text = m.render(stats);
        assert!(
            text.contains("spreekkamer_link_checks_total{outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(text.contains("spreekkamer_link_checks_total{outcome=\"token_revoked\"} 1"));
        let text = m.render(MediaStats {
            packets_in: 15,
            ..stats
        });
        assert!(text.contains("spreekkamer_media_packets_in_total 15"));
    }
}
