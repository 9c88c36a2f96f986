//! The run report: JSON (serde), the human table, the SVG plot and the
//! comparison of two runs (SFU vs plain UDP relay vs Janus). Pure.

use crate::stats::LatencySummary;
use crate::svg::{Chart, Panel, Series};
use serde::{Deserialize, Serialize};
use std::fmt::Write;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub scenario: String,
    /// `spreekkamer`, `udp-relay` or `janus`.
    pub target: String,
    pub machine: Machine,
    pub params: Params,
    /// One measurement window per load level (one for `consults`/`group`,
    /// one per step for `ramp`).
    pub points: Vec<Point>,
    /// `ramp` only: the largest load that stayed within the thresholds.
    pub capacity_consults: Option<u32>,
    pub stop_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
    /// Load average when the run started (the machine is shared).
    pub loadavg_at_start: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Params {
    pub video_bitrate_bps: u32,
    pub fps: u32,
    pub keyframe_interval_frames: u32,
    pub group_size: u32,
    pub window_s: f64,
    pub generator_threads: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Point {
    pub consults: u32,
    pub participants: u32,
    pub window_s: f64,
    /// RTP media packets subscribers received per second (= forwarded).
    pub forwarded_pps: f64,
    /// Their bytes per second (RTP header + payload, before SRTP).
    pub forwarded_bytes_ps: f64,
    /// Packets the publishers' counters say should have arrived.
    pub expected_pps: f64,
    pub loss: f64,
    pub latency: LatencySummary,
    pub jitter_ms: f64,
    /// Token minted → first media packet received, per participant.
    pub join_ms: LatencySummary,
    pub join_failures: u32,
    /// Target process CPU (user+system) seconds per wall second.
    pub target_cores_busy: f64,
    pub target_cpu_us_per_packet: f64,
    /// Forwarded packets per second per fully busy core.
    pub packets_per_core_s: f64,
    pub target_rss_mb: f64,
    pub rss_kb_per_participant: f64,
    /// The load generator's own CPU (cores busy): above ~1.5 of 2 cores
    /// its own queueing shows up in the latency figures.
    #[serde(default)]
    pub generator_cores_busy: f64,
}

impl Point {
    /// Fill the CPU-derived fields from the target's CPU seconds used in
    /// the window and the packets forwarded.
    pub fn set_cpu(&mut self, cpu_s: f64) {
        let w = self.window_s.max(f64::EPSILON);
        self.target_cores_busy = cpu_s / w;
        let packets = self.forwarded_pps * w;
        self.target_cpu_us_per_packet = if packets > 0.0 {
            cpu_s * 1e6 / packets
        } else {
            0.0
        };
        self.packets_per_core_s = if cpu_s > 0.0 { packets / cpu_s } else { 0.0 };
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    pub fn from_json(s: &str) -> Result<Report, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} against {} ({} cores, load avg at start {})",
            self.scenario, self.target, self.machine.cores, self.machine.loadavg_at_start
        );
        let _ = writeln!(
            s,
            "{:>8} {:>6} {:>10} {:>10} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>6} {:>8} {:>9} {:>7} {:>9}",
            "consults",
            "peers",
            "fwd pkt/s",
            "fwd Mbit/s",
            "loss%",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "jit ms",
            "join p95",
            "cores",
            "us/pkt",
            "pkt/s/core",
            "RSS MB",
            "KB/peer"
        );
        for p in &self.points {
            let _ = writeln!(
                s,
                "{:>8} {:>6} {:>10.0} {:>10.1} {:>7.3} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>8.0} {:>6.2} {:>8.2} {:>9.0} {:>7.1} {:>9.0}",
                p.consults,
                p.participants,
                p.forwarded_pps,
                p.forwarded_bytes_ps * 8.0 / 1e6,
                p.loss * 100.0,
                ms(p.latency.p50_us),
                ms(p.latency.p95_us),
                ms(p.latency.p99_us),
                p.jitter_ms,
                ms(p.join_ms.p95_us),
                p.target_cores_busy,
                p.target_cpu_us_per_packet,
                p.packets_per_core_s,
                p.target_rss_mb,
                p.rss_kb_per_participant
            );
        }
        if let Some(c) = self.capacity_consults {
            let _ = writeln!(s, "capacity: {c} consults");
        }
        if let Some(r) = &self.stop_reason {
            let _ = writeln!(s, "stopped: {r}");
        }
        s
    }

    /// Capacity/latency vs load: forwarded packets/s, p99 latency and loss
    /// against the number of consults, one series per report.
    pub fn plot(reports: &[&Report]) -> String {
        let series = |f: &dyn Fn(&Point) -> f64| -> Vec<Series> {
            reports
                .iter()
                .map(|r| Series {
                    name: r.target.clone(),
                    points: r
                        .points
                        .iter()
                        .map(|p| (f64::from(p.consults), f(p)))
                        .collect(),
                })
                .collect()
        };
        let scenario = reports.first().map_or("", |r| r.scenario.as_str());
        Chart {
            title: format!("Spreekkamer load test: {scenario}"),
            x_label: "concurrent 1:1 consults".into(),
            panels: vec![
                Panel {
                    y_label: "forwarded packets/s".into(),
                    series: series(&|p| p.forwarded_pps),
                },
                Panel {
                    y_label: "p99 one-way latency (ms)".into(),
                    series: series(&|p| ms(p.latency.p99_us)),
                },
                Panel {
                    y_label: "loss (%)".into(),
                    series: series(&|p| p.loss * 100.0),
                },
                Panel {
                    y_label: "target CPU µs per packet".into(),
                    series: series(&|p| p.target_cpu_us_per_packet),
                },
            ],
        }
        .render()
    }
}

/// Run `a` against run `b` at one load level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    pub consults: u32,
    pub a_us_per_packet: f64,
    pub b_us_per_packet: f64,
    /// CPU per forwarded packet of `a` as a multiple of `b`'s.
    pub cpu_ratio: f64,
    pub a_packets_per_core_s: f64,
    pub b_packets_per_core_s: f64,
    /// Packets forwarded per core-second of `a` as a multiple of `b`'s.
    pub throughput_ratio: f64,
}

/// Compare two runs at the highest load both measured with CPU figures
/// (matching points by consult count).
pub fn compare(a: &Report, b: &Report) -> Option<Comparison> {
    a.points
        .iter()
        .rev()
        .filter(|p| p.target_cpu_us_per_packet > 0.0)
        .find_map(|pa| {
            let pb = b
                .points
                .iter()
                .find(|pb| pb.consults == pa.consults && pb.target_cpu_us_per_packet > 0.0)?;
            Some(Comparison {
                consults: pa.consults,
                a_us_per_packet: pa.target_cpu_us_per_packet,
                b_us_per_packet: pb.target_cpu_us_per_packet,
                cpu_ratio: pa.target_cpu_us_per_packet / pb.target_cpu_us_per_packet,
                a_packets_per_core_s: pa.packets_per_core_s,
                b_packets_per_core_s: pb.packets_per_core_s,
                throughput_ratio: if pb.packets_per_core_s > 0.0 {
                    pa.packets_per_core_s / pb.packets_per_core_s
                } else {
                    0.0
                },
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(target: &str, us: f64) -> Report {
        let mut p = Point {
            consults: 10,
            participants: 20,
            window_s: 10.0,
            forwarded_pps: 3500.0,
            forwarded_bytes_ps: 3500.0 * 1000.0,
            expected_pps: 3510.0,
            loss: 0.0028,
            latency: LatencySummary {
                count: 35_000,
                mean_us: 400.0,
                p50_us: 300,
                p95_us: 900,
                p99_us: 1500,
                max_us: 9000,
            },
            ..Default::default()
        };
        p.set_cpu(us * 35_000.0 / 1e6);
        Report {
            scenario: "consults".into(),
            target: target.into(),
            machine: Machine {
                cores: 2,
                ..Default::default()
            },
            params: Params::default(),
            points: vec![p],
            capacity_consults: None,
            stop_reason: None,
        }
    }

    #[test]
    fn cpu_fields_are_derived_consistently() {
        let r = report("spreekkamer", 20.0);
        let p = &r.points[0];
        assert!((p.target_cpu_us_per_packet - 20.0).abs() < 1e-9);
        assert!((p.packets_per_core_s - 50_000.0).abs() < 1e-6);
        assert!((p.target_cores_busy - 0.07).abs() < 1e-9);
        let mut idle = Point {
            window_s: 1.0,
            ..Default::default()
        };
        idle.set_cpu(0.0);
        assert_eq!(idle.packets_per_core_s, 0.0);
        assert_eq!(idle.target_cpu_us_per_packet, 0.0);
    }

    #[test]
    fn json_round_trips_with_stable_field_names() {
        let r = report("spreekkamer", 20.0);
        let json = r.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["points"][0]["latency"]["p99_us"], 1500);
        assert_eq!(v["points"][0]["forwarded_pps"], 3500.0);
        assert_eq!(v["target"], "spreekkamer");
        assert_eq!(Report::from_json(&json).unwrap(), r);
        assert!(Report::from_json("{}").is_err());
    }

    #[test]
    fn table_shows_percent_and_milliseconds() {
        let t = report("spreekkamer", 20.0).table();
        let row = t.lines().nth(2).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[0], "10");
        assert_eq!(cols[4], "0.280", "loss in percent");
        assert_eq!(cols[7], "1.50", "p99 in ms");
    }

    #[test]
    fn compare_gives_the_cpu_ratio() {
        let c = compare(&report("spreekkamer", 30.0), &report("udp-relay", 10.0)).unwrap();
        assert_eq!(c.consults, 10);
        assert!((c.a_us_per_packet - 30.0).abs() < 1e-9 && (c.b_us_per_packet - 10.0).abs() < 1e-9);
        assert!((c.cpu_ratio - 3.0).abs() < 1e-9);
        // Three times the CPU per packet is a third of the packets per core.
        assert!((c.throughput_ratio - 1.0 / 3.0).abs() < 1e-9);
        let mut other = report("udp-relay", 10.0);
        other.points[0].consults = 11;
        assert!(compare(&report("spreekkamer", 30.0), &other).is_none());
    }

    #[test]
    fn plot_has_one_series_per_report() {
        let a = report("spreekkamer", 30.0);
        let b = report("udp-relay", 10.0);
        let svg = Report::plot(&[&a, &b]);
        assert_eq!(svg.matches(">spreekkamer</text>").count(), 4);
        assert_eq!(svg.matches(">udp-relay</text>").count(), 4);
    }
}
