//! The run report: JSON (serde), the human table, the SVG plot, the
//! median of repeated runs and the comparison of two runs (SFU vs plain
//! UDP relay vs Janus). Pure.

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
    /// Padding-only packets per probe cluster, per publisher (0 = none)...
    #[serde(default)]
    pub probe_packets: u32,
    /// ...one cluster every this many seconds.
    #[serde(default)]
    pub probe_every_s: f64,
    /// Fraction of received video dropped before SRTP (NACK → retransmission).
    #[serde(default)]
    pub rx_drop: f64,
    /// The peers put transport-wide sequence numbers on what they send.
    #[serde(default)]
    pub twcc_send: bool,
    /// The server ran under callgrind: its CPU figures are valgrind's, not
    /// the server's; read `instructions_per_packet`.
    #[serde(default)]
    pub callgrind: bool,
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
    /// (or ~0.9 of its one pinned core) its own queueing shows up in the
    /// latency figures.
    #[serde(default)]
    pub generator_cores_busy: f64,
    /// /proc/loadavg (1, 5, 15 min) right before and after the window.
    #[serde(default)]
    pub loadavg_before: String,
    #[serde(default)]
    pub loadavg_after: String,
    /// The cores the server may run on (its affinity, `taskset`) and the
    /// generator's, as CPU lists ("0", "1", "0-1").
    #[serde(default)]
    pub server_cpus: String,
    #[serde(default)]
    pub generator_cpus: String,
    /// Over the window, on the server's cores (/proc/stat), in cores:
    /// everything that ran there, what ran there besides the server
    /// (other processes, interrupts), interrupt time, and time stolen by
    /// the hypervisor. Meaningful when the server is pinned.
    #[serde(default)]
    pub core_busy: f64,
    #[serde(default)]
    pub core_others: f64,
    #[serde(default)]
    pub core_irq: f64,
    #[serde(default)]
    pub core_steal: f64,
    /// Callgrind: instructions the server executed in the window (all
    /// threads) and per forwarded packet; 0 = not measured.
    #[serde(default)]
    pub target_instructions: u64,
    #[serde(default)]
    pub instructions_per_packet: f64,
    /// Browser-like behaviour, per second over the window: TWCC feedback
    /// packets the peers sent and received, NACKs sent, padding-only
    /// packets sent, received video dropped on purpose.
    #[serde(default)]
    pub twcc_sent_ps: f64,
    #[serde(default)]
    pub twcc_received_ps: f64,
    #[serde(default)]
    pub nacks_sent_ps: f64,
    #[serde(default)]
    pub padding_sent_ps: f64,
    #[serde(default)]
    pub rx_dropped_ps: f64,
    /// Set on a median of several runs: how many, and the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<Spread>,
}

/// The range (min, max) of the key figures over the runs a median point
/// was taken from, and the worst machine load seen in them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Spread {
    pub runs: u32,
    pub us_per_packet: (f64, f64),
    pub instructions_per_packet: (f64, f64),
    pub forwarded_pps: (f64, f64),
    pub loss: (f64, f64),
    pub p99_us: (f64, f64),
    pub target_cores_busy: (f64, f64),
    /// Highest 1-minute load average before or after any of the windows.
    pub max_load1: f64,
    /// Most CPU others used on the server's cores in any window.
    pub max_core_others: f64,
    pub max_core_steal: f64,
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

    /// Fill the instruction figures from callgrind's count for the window.
    pub fn set_instructions(&mut self, instructions: u64) {
        self.target_instructions = instructions;
        let packets = self.forwarded_pps * self.window_s;
        self.instructions_per_packet = if packets > 0.0 {
            instructions as f64 / packets
        } else {
            0.0
        };
    }

    /// Fill the server-core figures from /proc/stat tick deltas (seconds)
    /// and the server's own CPU seconds in the window.
    pub fn set_core(&mut self, busy_s: f64, irq_s: f64, steal_s: f64, target_cpu_s: f64) {
        let w = self.window_s.max(f64::EPSILON);
        self.core_busy = busy_s / w;
        self.core_others = (busy_s - target_cpu_s).max(0.0) / w;
        self.core_irq = irq_s / w;
        self.core_steal = steal_s / w;
    }

    /// One line on what the machine and the peers did in the window.
    pub fn conditions(&self) -> String {
        let mut s = format!(
            "load {} → {}",
            load1s(&self.loadavg_before),
            load1s(&self.loadavg_after)
        );
        if !self.server_cpus.is_empty() {
            let _ = write!(
                s,
                "; server on cpu {} (others {:.2}, irq {:.2}, steal {:.2} cores), generator on cpu {} ({:.2} cores)",
                self.server_cpus,
                self.core_others,
                self.core_irq,
                self.core_steal,
                if self.generator_cpus.is_empty() {
                    "?"
                } else {
                    &self.generator_cpus
                },
                self.generator_cores_busy
            );
        }
        let _ = write!(
            s,
            "; per s: TWCC fb {:.0} out / {:.0} in, NACK {:.0}, padding {:.0}, dropped {:.0}",
            self.twcc_sent_ps,
            self.twcc_received_ps,
            self.nacks_sent_ps,
            self.padding_sent_ps,
            self.rx_dropped_ps
        );
        if self.instructions_per_packet > 0.0 {
            let _ = write!(s, "; {:.0} Ir/packet", self.instructions_per_packet);
        }
        if self.fell_behind() {
            s.push_str(
                "; CALLGRIND FELL BEHIND (loss or queueing): this Ir/packet is not comparable",
            );
        }
        if self.generator_saturated() {
            s.push_str("; GENERATOR SATURATED: loss and latency may be the generator's");
        }
        s
    }

    /// Did the generator use (nearly) all the cores it may run on? Then
    /// its own queueing, not the server, may set loss and latency.
    pub fn generator_saturated(&self) -> bool {
        let cores = self
            .generator_cpus
            .split(',')
            .filter(|c| !c.is_empty())
            .count();
        cores > 0 && self.generator_cores_busy > 0.9 * cores as f64
    }
}

/// The 1-minute load averages in a /proc/loadavg string, or in several
/// joined with " | " (a median's runs), comma separated.
fn load1s(s: &str) -> String {
    s.split(" | ")
        .map(|l| l.split_whitespace().next().unwrap_or("?"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Median of a non-empty list (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn range(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold(None, |r: Option<(f64, f64)>, x| {
            Some(r.map_or((x, x), |(lo, hi)| (lo.min(x), hi.max(x))))
        })
        .unwrap_or((0.0, 0.0))
}

fn median_latency(l: &[&LatencySummary]) -> LatencySummary {
    let m =
        |f: &dyn Fn(&LatencySummary) -> f64| median(&l.iter().map(|x| f(x)).collect::<Vec<_>>());
    LatencySummary {
        count: m(&|x| x.count as f64) as u64,
        mean_us: m(&|x| x.mean_us),
        p50_us: m(&|x| x.p50_us as f64) as u64,
        p95_us: m(&|x| x.p95_us as f64) as u64,
        p99_us: m(&|x| x.p99_us as f64) as u64,
        max_us: m(&|x| x.max_us as f64) as u64,
    }
}

/// The median of the same point measured in several runs, each figure
/// separately, with the spread of the key ones.
fn median_point(points: &[&Point]) -> Point {
    let m = |f: &dyn Fn(&Point) -> f64| median(&points.iter().map(|p| f(p)).collect::<Vec<_>>());
    let r = |f: &dyn Fn(&Point) -> f64| range(&points.iter().map(|p| f(p)).collect::<Vec<_>>());
    let first = points[0];
    let load1 = |s: &str| {
        s.split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
    };
    let max_load1 = points
        .iter()
        .flat_map(|p| [load1(&p.loadavg_before), load1(&p.loadavg_after)])
        .flatten()
        .fold(0.0, f64::max);
    let loads =
        |f: &dyn Fn(&Point) -> &str| points.iter().map(|p| f(p)).collect::<Vec<_>>().join(" | ");
    Point {
        consults: first.consults,
        participants: first.participants,
        window_s: m(&|p| p.window_s),
        forwarded_pps: m(&|p| p.forwarded_pps),
        forwarded_bytes_ps: m(&|p| p.forwarded_bytes_ps),
        expected_pps: m(&|p| p.expected_pps),
        loss: m(&|p| p.loss),
        latency: median_latency(&points.iter().map(|p| &p.latency).collect::<Vec<_>>()),
        jitter_ms: m(&|p| p.jitter_ms),
        join_ms: median_latency(&points.iter().map(|p| &p.join_ms).collect::<Vec<_>>()),
        join_failures: m(&|p| f64::from(p.join_failures)).round() as u32,
        target_cores_busy: m(&|p| p.target_cores_busy),
        target_cpu_us_per_packet: m(&|p| p.target_cpu_us_per_packet),
        packets_per_core_s: m(&|p| p.packets_per_core_s),
        target_rss_mb: m(&|p| p.target_rss_mb),
        rss_kb_per_participant: m(&|p| p.rss_kb_per_participant),
        generator_cores_busy: m(&|p| p.generator_cores_busy),
        loadavg_before: loads(&|p| &p.loadavg_before),
        loadavg_after: loads(&|p| &p.loadavg_after),
        server_cpus: first.server_cpus.clone(),
        generator_cpus: first.generator_cpus.clone(),
        core_busy: m(&|p| p.core_busy),
        core_others: m(&|p| p.core_others),
        core_irq: m(&|p| p.core_irq),
        core_steal: m(&|p| p.core_steal),
        target_instructions: m(&|p| p.target_instructions as f64) as u64,
        instructions_per_packet: m(&|p| p.instructions_per_packet),
        twcc_sent_ps: m(&|p| p.twcc_sent_ps),
        twcc_received_ps: m(&|p| p.twcc_received_ps),
        nacks_sent_ps: m(&|p| p.nacks_sent_ps),
        padding_sent_ps: m(&|p| p.padding_sent_ps),
        rx_dropped_ps: m(&|p| p.rx_dropped_ps),
        spread: Some(Spread {
            runs: points.len() as u32,
            us_per_packet: r(&|p| p.target_cpu_us_per_packet),
            instructions_per_packet: r(&|p| p.instructions_per_packet),
            forwarded_pps: r(&|p| p.forwarded_pps),
            loss: r(&|p| p.loss),
            p99_us: r(&|p| p.latency.p99_us as f64),
            target_cores_busy: r(&|p| p.target_cores_busy),
            max_load1,
            max_core_others: r(&|p| p.core_others).1,
            max_core_steal: r(&|p| p.core_steal).1,
        }),
    }
}

/// The median of several runs of the same scenario against the same
/// target: one point per load level that more than half of the runs
/// measured (a ramp that stopped early does not hold the others back, nor
/// does a single run that went further decide a level alone).
pub fn median_of(runs: &[Report]) -> Result<Report, String> {
    let first = runs.first().ok_or("no reports")?;
    if let Some(r) = runs
        .iter()
        .find(|r| r.target != first.target || r.scenario != first.scenario)
    {
        return Err(format!(
            "reports differ: {} against {} vs {} against {}",
            first.scenario, first.target, r.scenario, r.target
        ));
    }
    let mut levels: Vec<u32> = runs
        .iter()
        .flat_map(|r| r.points.iter().map(|p| p.consults))
        .collect();
    levels.sort_unstable();
    levels.dedup();
    let mut points = Vec::new();
    for level in levels {
        let at: Vec<&Point> = runs
            .iter()
            .filter_map(|r| r.points.iter().find(|p| p.consults == level))
            .collect();
        if at.len() * 2 > runs.len() {
            points.push(median_point(&at));
        }
    }
    let capacity = if runs.iter().all(|r| r.capacity_consults.is_none()) {
        None
    } else {
        let c: Vec<f64> = runs
            .iter()
            .map(|r| f64::from(r.capacity_consults.unwrap_or(0)))
            .collect();
        Some(median(&c).floor() as u32)
    };
    let reasons: Vec<String> = runs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            r.stop_reason
                .as_ref()
                .map(|s| format!("run {}: {s}", i + 1))
        })
        .collect();
    let mut machine = first.machine.clone();
    machine.loadavg_at_start = runs
        .iter()
        .map(|r| r.machine.loadavg_at_start.as_str())
        .collect::<Vec<_>>()
        .join(" | ");
    Ok(Report {
        scenario: first.scenario.clone(),
        target: first.target.clone(),
        machine,
        params: first.params.clone(),
        points,
        capacity_consults: capacity,
        stop_reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
    })
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
            let _ = writeln!(s, "{:>8} {}", "", p.conditions());
            if let Some(sp) = &p.spread {
                let _ = write!(
                    s,
                    "{:>8} median of {}: us/pkt {:.2}–{:.2}, fwd pkt/s {:.0}–{:.0}, loss {:.3}–{:.3} %, \
                     p99 {:.2}–{:.2} ms, cores {:.2}–{:.2}",
                    "",
                    sp.runs,
                    sp.us_per_packet.0,
                    sp.us_per_packet.1,
                    sp.forwarded_pps.0,
                    sp.forwarded_pps.1,
                    sp.loss.0 * 100.0,
                    sp.loss.1 * 100.0,
                    sp.p99_us.0 / 1000.0,
                    sp.p99_us.1 / 1000.0,
                    sp.target_cores_busy.0,
                    sp.target_cores_busy.1
                );
                if p.instructions_per_packet > 0.0 {
                    let _ = write!(
                        s,
                        ", Ir/pkt {:.0}–{:.0}",
                        sp.instructions_per_packet.0, sp.instructions_per_packet.1
                    );
                }
                let _ = writeln!(
                    s,
                    "; worst load {:.2}, others on the server's core ≤ {:.2}, steal ≤ {:.2}",
                    sp.max_load1, sp.max_core_others, sp.max_core_steal
                );
            }
        }
        if self.params.callgrind {
            let _ = writeln!(
                s,
                "(server under callgrind: CPU figures are valgrind's; read Ir/packet)"
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
    /// Callgrind instructions per forwarded packet (0 = not measured) and
    /// `a`'s as a multiple of `b`'s (0 unless both were measured).
    pub a_instructions_per_packet: f64,
    pub b_instructions_per_packet: f64,
    pub instructions_ratio: f64,
}

fn measured(p: &Point) -> bool {
    p.target_cpu_us_per_packet > 0.0 || p.instructions_per_packet > 0.0
}

/// Compare two runs at the highest load both measured with CPU or
/// instruction figures (matching points by consult count).
pub fn compare(a: &Report, b: &Report) -> Option<Comparison> {
    a.points
        .iter()
        .rev()
        .filter(|p| measured(p))
        .find_map(|pa| {
            let pb = b
                .points
                .iter()
                .find(|pb| pb.consults == pa.consults && measured(pb))?;
            let ratio = |x: f64, y: f64| if x > 0.0 && y > 0.0 { x / y } else { 0.0 };
            Some(Comparison {
                a_instructions_per_packet: pa.instructions_per_packet,
                b_instructions_per_packet: pb.instructions_per_packet,
                instructions_ratio: ratio(pa.instructions_per_packet, pb.instructions_per_packet),
                consults: pa.consults,
                a_us_per_packet: pa.target_cpu_us_per_packet,
                b_us_per_packet: pb.target_cpu_us_per_packet,
                cpu_ratio: ratio(pa.target_cpu_us_per_packet, pb.target_cpu_us_per_packet),
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

impl Point {
    /// Under callgrind, did the server fall behind (then its instruction
    /// count per packet is not comparable)?
    pub fn fell_behind(&self) -> bool {
        self.instructions_per_packet > 0.0 && (self.loss > 0.01 || self.latency.p50_us > 50_000)
    }

    /// The machine beside a figure: the median's range and worst load, or
    /// the load before and after a single window.
    fn beside(&self) -> String {
        match &self.spread {
            Some(s) => format!(
                "median of {}, {:.2}–{:.2}; worst load {:.2}, others on its core ≤ {:.2}",
                s.runs, s.us_per_packet.0, s.us_per_packet.1, s.max_load1, s.max_core_others
            ),
            None => format!(
                "load {} → {}, others on its core {:.2}",
                load1s(&self.loadavg_before),
                load1s(&self.loadavg_after),
                self.core_others
            ),
        }
    }
}

/// `loadtest compare`'s lines: CPU per packet (unless a run was under
/// callgrind, where CPU time is valgrind's) and callgrind instructions per
/// packet when both have them, each figure with the machine's state.
pub fn comparison_lines(a: &Report, b: &Report) -> Option<Vec<String>> {
    let c = compare(a, b)?;
    let pa = a.points.iter().find(|p| p.consults == c.consults)?;
    let pb = b.points.iter().find(|p| p.consults == c.consults)?;
    let mut lines = Vec::new();
    if c.cpu_ratio > 0.0 && !a.params.callgrind && !b.params.callgrind {
        lines.push(format!(
            "at {} consults: {} {:.2} µs/packet ({}), {} {:.2} µs/packet ({}): CPU per packet {:.2}×; \
             packets/s per core {:.0} vs {:.0}: {:.2}×",
            c.consults,
            a.target,
            c.a_us_per_packet,
            pa.beside(),
            b.target,
            c.b_us_per_packet,
            pb.beside(),
            c.cpu_ratio,
            c.a_packets_per_core_s,
            c.b_packets_per_core_s,
            c.throughput_ratio
        ));
    }
    if c.instructions_ratio > 0.0 {
        let behind: Vec<&str> = [(a, pa), (b, pb)]
            .iter()
            .filter(|(_, p)| p.fell_behind())
            .map(|(r, _)| r.target.as_str())
            .collect();
        lines.push(format!(
            "at {} consults: {} {:.0} instructions/packet, {} {:.0}: {:.2}× (callgrind, user space only){}",
            c.consults,
            a.target,
            c.a_instructions_per_packet,
            b.target,
            c.b_instructions_per_packet,
            c.instructions_ratio,
            if behind.is_empty() {
                String::new()
            } else {
                format!(
                    "; NOT COMPARABLE: {} fell behind under callgrind",
                    behind.join(" and ")
                )
            }
        ));
    }
    (!lines.is_empty()).then_some(lines)
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

    fn run(target: &str, levels: &[(u32, f64, f64)], capacity: Option<u32>) -> Report {
        let mut r = report(target, 1.0);
        r.scenario = "ramp".into();
        r.points = levels
            .iter()
            .map(|&(consults, us, load)| {
                let mut p = report(target, us).points[0].clone();
                p.consults = consults;
                p.loadavg_before = format!("{load} 1.00 1.00");
                p.loadavg_after = format!("{} 1.00 1.00", load + 0.5);
                p.core_others = load / 10.0;
                p
            })
            .collect();
        r.capacity_consults = capacity;
        r.stop_reason = Some(format!("stopped after {levels:?}"));
        r
    }

    #[test]
    fn median_is_the_middle_value_and_spread_the_range() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[f64::NAN, 5.0]), 5.0);
        let runs = [
            run("spreekkamer", &[(10, 30.0, 0.2), (20, 25.0, 0.3)], Some(20)),
            run(
                "spreekkamer",
                &[(10, 50.0, 1.5), (20, 27.0, 0.4), (30, 40.0, 2.0)],
                Some(20),
            ),
            run("spreekkamer", &[(10, 35.0, 0.1)], Some(10)),
        ];
        let m = median_of(&runs).unwrap();
        // Level 30 was measured by one run of three: no median for it.
        assert_eq!(
            m.points.iter().map(|p| p.consults).collect::<Vec<_>>(),
            vec![10, 20]
        );
        let p10 = &m.points[0];
        assert!(
            (p10.target_cpu_us_per_packet - 35.0).abs() < 1e-9,
            "middle of 30, 50, 35"
        );
        let sp = p10.spread.as_ref().unwrap();
        assert_eq!(sp.runs, 3);
        assert!(
            (sp.us_per_packet.0 - 30.0).abs() < 1e-9 && (sp.us_per_packet.1 - 50.0).abs() < 1e-9
        );
        assert!((sp.max_load1 - 2.0).abs() < 1e-9, "1.5 before + 0.5 after");
        assert!((sp.max_core_others - 0.15).abs() < 1e-9);
        assert_eq!(
            p10.loadavg_before.matches(" | ").count(),
            2,
            "every run's load kept"
        );
        // Two runs measured 20: the mean of the two.
        assert!((m.points[1].target_cpu_us_per_packet - 26.0).abs() < 1e-9);
        assert_eq!(m.points[1].spread.as_ref().unwrap().runs, 2);
        assert_eq!(m.capacity_consults, Some(20));
        assert!(m.stop_reason.as_ref().unwrap().contains("run 3:"));
        let t = m.table();
        assert!(t.contains("median of 3: us/pkt 30.00–50.00"), "{t}");
        assert!(t.contains("load 0.2, 1.5, 0.1 → 0.7, 2, 0.6;"), "{t}");
        // The spread survives JSON (floats to within their printing).
        let back = Report::from_json(&m.to_json()).unwrap();
        let bs = back.points[0].spread.as_ref().unwrap();
        assert_eq!(bs.runs, 3);
        assert!((bs.us_per_packet.1 - 50.0).abs() < 1e-9);
        assert_eq!(back.points[1].loadavg_before, m.points[1].loadavg_before);
    }

    #[test]
    fn median_refuses_mixed_reports() {
        let a = run("spreekkamer", &[(10, 30.0, 0.2)], None);
        let b = run("janus", &[(10, 30.0, 0.2)], None);
        assert!(median_of(&[a.clone(), b]).is_err());
        assert!(median_of(&[]).is_err());
        assert_eq!(
            median_of(std::slice::from_ref(&a))
                .unwrap()
                .capacity_consults,
            None
        );
    }

    #[test]
    fn core_and_instruction_figures_are_per_window_and_packet() {
        let mut p = report("spreekkamer", 20.0).points[0].clone();
        // 10 s window: 7 s busy on the core, 5 s of it the server's.
        p.set_core(7.0, 0.5, 0.2, 5.0);
        assert!((p.core_busy - 0.7).abs() < 1e-9);
        assert!((p.core_others - 0.2).abs() < 1e-9);
        assert!((p.core_irq - 0.05).abs() < 1e-9);
        assert!((p.core_steal - 0.02).abs() < 1e-9);
        // Tick rounding can make the server look busier than the core.
        p.set_core(4.9, 0.0, 0.0, 5.0);
        assert_eq!(p.core_others, 0.0);
        p.set_instructions(35_000 * 31_600);
        assert!((p.instructions_per_packet - 31_600.0).abs() < 1e-6);
        p.server_cpus = "0".into();
        p.generator_cpus = "1".into();
        p.loadavg_before = "0.10 0.20 0.30".into();
        p.loadavg_after = "0.40 0.20 0.30".into();
        let c = p.conditions();
        assert!(c.starts_with("load 0.10 → 0.40; server on cpu 0"), "{c}");
        assert!(
            c.contains("generator on cpu 1") && c.contains("31600 Ir/packet"),
            "{c}"
        );
        assert!(!p.generator_saturated() && !c.contains("SATURATED"));
        assert!(!c.contains("FELL BEHIND"), "{c}");
        let mut behind = p.clone();
        behind.latency.p50_us = 400_000;
        assert!(behind.conditions().contains("CALLGRIND FELL BEHIND"));
        p.generator_cores_busy = 0.95;
        assert!(p.generator_saturated());
        assert!(p.conditions().contains("GENERATOR SATURATED"));
        p.generator_cpus = "0,1".into();
        assert!(
            !p.generator_saturated(),
            "0.95 of two cores is not saturated"
        );
    }

    #[test]
    fn compare_gives_the_instruction_ratio_without_cpu_figures() {
        let mut a = report("spreekkamer", 30.0);
        let mut b = report("udp-relay", 10.0);
        for (r, ir) in [(&mut a, 8_000), (&mut b, 2_000)] {
            r.points[0].set_cpu(0.0);
            r.points[0].set_instructions(ir * 35_000);
        }
        let c = compare(&a, &b).unwrap();
        assert!((c.instructions_ratio - 4.0).abs() < 1e-9);
        assert_eq!(c.cpu_ratio, 0.0, "no CPU figures, no CPU ratio");
    }

    #[test]
    fn comparison_lines_say_what_is_comparable() {
        let a = report("spreekkamer", 30.0);
        let b = report("janus", 60.0);
        let l = comparison_lines(&a, &b).unwrap();
        assert_eq!(l.len(), 1);
        assert!(l[0].contains("CPU per packet 0.50×"), "{}", l[0]);
        assert!(l[0].contains("others on its core"), "{}", l[0]);
        // Under callgrind: no CPU line, the instruction line, and a warning
        // when one side fell behind.
        let (mut ca, mut cb) = (a.clone(), b.clone());
        for (r, ir) in [(&mut ca, 40_000), (&mut cb, 80_000)] {
            r.params.callgrind = true;
            r.points[0].set_instructions(ir * 35_000);
        }
        let l = comparison_lines(&ca, &cb).unwrap();
        assert_eq!(l.len(), 1, "{l:?}");
        assert!(l[0].contains("0.50× (callgrind"), "{}", l[0]);
        assert!(!l[0].contains("NOT COMPARABLE"));
        cb.points[0].loss = 0.2;
        let l = comparison_lines(&ca, &cb).unwrap();
        assert!(
            l[0].ends_with("NOT COMPARABLE: janus fell behind under callgrind"),
            "{}",
            l[0]
        );
        let mut other = b.clone();
        other.points[0].consults = 99;
        assert!(comparison_lines(&a, &other).is_none());
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
