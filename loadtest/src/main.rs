//! `loadtest`: many synthetic WebRTC participants in one process, joining
//! consults through Spreekkamer's real signaling, measuring what the SFU
//! forwards and what it costs. See docs/BENCHMARKS.md.
//!
//! Exit codes: 0 ok, 1 bad usage or I/O, 2 target unreachable or a token
//! refused, 3 the run forwarded no media or measured no latency.

mod callgrind;
mod janus;
mod media;
mod media_model;
mod procstat;
mod relay;
mod report;
mod run;
mod signal;
mod stats;
mod svg;

use clap::{Args, Parser, Subcommand};
use media::Behaviour;
use media_model::VideoParams;
use report::Report;
use run::{Options, Runner, Target};
use signal::Signaling;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "loadtest", about = "Load generator for the Spreekkamer SFU")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// N concurrent 1:1 consults; both sides publish audio+video.
    Consults {
        #[arg(short = 'n', long, default_value_t = 10)]
        consults: u32,
        #[command(flatten)]
        common: Common,
    },
    /// One consult of up to 6 participants, everyone publishing.
    Group {
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(2..=6))]
        size: u32,
        #[command(flatten)]
        common: Common,
    },
    /// Add 1:1 consults step by step until loss or latency crosses a
    /// threshold; report the capacity found.
    Ramp {
        #[arg(long, default_value_t = 10)]
        start: u32,
        #[arg(long, default_value_t = 10)]
        step: u32,
        #[arg(long, default_value_t = 1000)]
        max_consults: u32,
        /// Loss fraction that ends the ramp (0.005 = 0.5 %).
        #[arg(long, default_value_t = 0.005)]
        max_loss: f64,
        /// p99 one-way latency (ms) that ends the ramp.
        #[arg(long, default_value_t = 50.0)]
        max_p99_ms: f64,
        #[command(flatten)]
        common: Common,
    },
    /// The UDP relay baseline server (started by `--relay` runs).
    RelayServer {
        #[arg(long, default_value = "127.0.0.1")]
        bind: IpAddr,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// recvmmsg/sendmmsg in batches of 32, as the SFU's worker reads
        /// and sends (the kernel's floor), instead of one call per datagram.
        #[arg(long)]
        batch: bool,
    },
    /// CPU (and callgrind instructions) per forwarded packet of run A as a
    /// multiple of run B's.
    Compare { a: PathBuf, b: PathBuf },
    /// The median of repeated runs (same scenario and target), each figure
    /// with its range over the runs; written as a report like the runs.
    Median {
        #[arg(long)]
        out: PathBuf,
        #[arg(required = true)]
        reports: Vec<PathBuf>,
    },
    /// One SVG plot from several JSON reports.
    Plot {
        #[arg(long)]
        out: PathBuf,
        reports: Vec<PathBuf>,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// The signaling WebSocket.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    target: String,
    /// HS256 secret to mint join tokens with (the server's --jwt-secret).
    #[arg(long, env = "SPREEKKAMER_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    #[arg(long, default_value = "spreekkamer")]
    issuer: String,
    #[arg(long, default_value = "spreekkamer")]
    audience: String,
    /// Measure a Janus VideoRoom at this WebSocket URL instead (the
    /// baseline), e.g. ws://127.0.0.1:8188/. Janus never gathers candidates
    /// on an interface flagged loopback: give --local-ip an address on
    /// another interface (run-bench.sh: 127.0.0.2 on the veth jan0).
    #[arg(long, conflicts_with = "relay")]
    janus: Option<String>,
    /// Measure the built-in plain UDP relay instead (physical limit).
    #[arg(long)]
    relay: bool,
    /// First UDP port of the relay (one per relay thread).
    #[arg(long, default_value_t = 40000)]
    relay_port: u16,
    #[arg(long, default_value_t = 2)]
    relay_threads: usize,
    /// The relay is already running (`loadtest relay-server`, started
    /// pinned or under callgrind by run-bench.sh): do not start one; its
    /// pid is --sfu-pid or the process with --relay-port bound.
    #[arg(long, requires = "relay")]
    relay_running: bool,
    /// The server runs under `valgrind --tool=callgrind
    /// --instr-atstart=no`: count its instructions in each window with
    /// callgrind_control and report them per forwarded packet.
    #[arg(long)]
    callgrind: bool,
    /// Padding-only RTP packets per probe cluster and publisher, like
    /// libwebrtc's bandwidth probes (0 = none).
    #[arg(long, default_value_t = 20)]
    probe_packets: u32,
    /// Seconds between a publisher's probe clusters.
    #[arg(long, default_value_t = 5.0)]
    probe_every: f64,
    /// Fraction of received video to drop before SRTP, like network loss,
    /// so the peers NACK and the server retransmits (0.002 = 0.2 %).
    #[arg(long, default_value_t = 0.0)]
    rx_drop: f64,
    /// Peers as the generator made them before issue 13, for A/B runs:
    /// no transport-wide sequence numbers on what they send (so no TWCC
    /// feedback from the server to publishers), no padding, no drops.
    #[arg(long)]
    legacy_peers: bool,
    /// Media through rtc's RTP pipeline and interceptors, as the generator
    /// did before it had its own path (`sfu::endpoint`): for A/B runs of
    /// the generator's own cost. Implied by --legacy-peers.
    #[arg(long)]
    rtc_media: bool,
    /// Exit 3 unless the peers sent TWCC feedback, received TWCC feedback
    /// and sent padding in the window (CI: the browser-like behaviour
    /// really happened).
    #[arg(long)]
    require_feedback: bool,
    /// The measured server's pid (default: the process listening on the
    /// target's port, or on the --janus URL's port).
    #[arg(long)]
    sfu_pid: Option<u32>,
    /// Address our peers bind to.
    #[arg(long, default_value = "127.0.0.1")]
    local_ip: IpAddr,
    /// Media threads in the generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Video bitrate in bit/s.
    #[arg(long, default_value_t = 1_200_000)]
    bitrate: u32,
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Seconds between keyframes.
    #[arg(long, default_value_t = 3.0)]
    keyframe_secs: f64,
    /// Measurement window per load level, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Participants joining per second.
    #[arg(long, default_value_t = 20.0)]
    join_rate: f64,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    svg: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(
        env_logger::Env::default()
            .default_filter_or("warn,rtc_dtls=error,rtc::peer_connection::handler=error"),
    )
    .init();
    let cli = Cli::parse();
    match cli.command {
        Cmd::RelayServer {
            bind,
            port,
            threads,
            batch,
        } => match relay::serve(bind, port, threads, batch) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: relay: {e}");
                ExitCode::from(1)
            }
        },
        Cmd::Compare { a, b } => compare(&a, &b),
        Cmd::Median { out, reports } => median(&out, &reports),
        Cmd::Plot { out, reports } => plot(&out, &reports),
        Cmd::Consults { consults, common } => scenario(common, Scenario::Consults(consults)),
        Cmd::Group { size, common } => scenario(common, Scenario::Group(size)),
        Cmd::Ramp {
            start,
            step,
            max_consults,
            max_loss,
            max_p99_ms,
            common,
        } => scenario(
            common,
            Scenario::Ramp {
                start,
                step: step.max(1),
                max: max_consults,
                max_loss,
                max_p99_ms,
            },
        ),
    }
}

fn read_report(p: &PathBuf) -> Result<Report, String> {
    let s = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    Report::from_json(&s).map_err(|e| format!("{}: {e}", p.display()))
}

fn compare(a: &PathBuf, b: &PathBuf) -> ExitCode {
    let (a, b) = match (read_report(a), read_report(b)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    match report::comparison_lines(&a, &b) {
        Some(lines) => {
            for l in lines {
                println!("{l}");
            }
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("error: the two reports share no load level with CPU or instruction figures");
            ExitCode::from(1)
        }
    }
}

fn median(out: &PathBuf, paths: &[PathBuf]) -> ExitCode {
    let mut runs = Vec::new();
    for p in paths {
        match read_report(p) {
            Ok(r) => runs.push(r),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let m = match report::median_of(&runs) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    print!("{}", m.table());
    if let Err(e) = std::fs::write(out, m.to_json()) {
        eprintln!("error: {}: {e}", out.display());
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// Is `ip` assigned to an interface flagged IFF_LOOPBACK (where Janus
/// never gathers)? `None` when it is on no interface at all.
fn on_loopback_interface(ip: IpAddr) -> Option<bool> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below and
    // only read in between; every pointer is checked for null.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return None;
        }
        let mut found = None;
        let mut cur = list;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() {
                continue;
            }
            let addr = match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes())
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::from(sin6.sin6_addr.s6_addr)
                }
                _ => continue,
            };
            if addr == ip {
                found = Some(ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0);
                break;
            }
        }
        libc::freeifaddrs(list);
        found
    }
}

fn plot(out: &PathBuf, paths: &[PathBuf]) -> ExitCode {
    let mut reports = Vec::new();
    for p in paths {
        match read_report(p) {
            Ok(r) => reports.push(r),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let refs: Vec<&Report> = reports.iter().collect();
    if let Err(e) = std::fs::write(out, Report::plot(&refs)) {
        eprintln!("error: {}: {e}", out.display());
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

enum Scenario {
    Consults(u32),
    Group(u32),
    Ramp {
        start: u32,
        step: u32,
        max: u32,
        max_loss: f64,
        max_p99_ms: f64,
    },
}

/// Many peers need many sockets: raise the soft fd limit to the hard one.
fn raise_fd_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a stack struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn port_of(url: &str) -> Option<u16> {
    let rest = url.split_once("://")?.1;
    let host = rest.split('/').next()?;
    host.rsplit_once(':')?.1.parse().ok()
}

fn scenario(c: Common, s: Scenario) -> ExitCode {
    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let mut relay_child = None;
    let (target, target_pid) = if c.relay && c.relay_running {
        let pid = c.sfu_pid.or_else(|| procstat::pid_bound_udp(c.relay_port));
        if pid.is_none() {
            eprintln!("warning: relay process not found (give --sfu-pid): no CPU or RSS figures");
        }
        (
            Target::Relay {
                addr: SocketAddr::new(c.local_ip, c.relay_port),
                threads: c.relay_threads.max(1),
            },
            pid,
        )
    } else if c.relay {
        let exe = match std::env::current_exe() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        };
        let child = std::process::Command::new(exe)
            .args([
                "relay-server",
                "--bind",
                &c.local_ip.to_string(),
                "--port",
                &c.relay_port.to_string(),
                "--threads",
                &c.relay_threads.to_string(),
            ])
            .spawn();
        let child = match child {
            Ok(ch) => ch,
            Err(e) => {
                eprintln!("error: cannot start the relay: {e}");
                return ExitCode::from(1);
            }
        };
        let pid = child.id();
        relay_child = Some(child);
        std::thread::sleep(Duration::from_millis(300));
        (
            Target::Relay {
                addr: SocketAddr::new(c.local_ip, c.relay_port),
                threads: c.relay_threads.max(1),
            },
            Some(pid),
        )
    } else if let Some(url) = &c.janus {
        let pid = c
            .sfu_pid
            .or_else(|| port_of(url).and_then(procstat::pid_listening_on));
        if pid.is_none() {
            eprintln!("warning: Janus process not found (give --sfu-pid): no CPU or RSS figures");
        }
        match on_loopback_interface(c.local_ip) {
            Some(true) => eprintln!(
                "warning: {} is on a loopback interface, where Janus never gathers \
                 candidates: the peers will not connect (put an address on another \
                 interface, e.g. 127.0.0.2/32 on a veth, as run-bench.sh does)",
                c.local_ip
            ),
            None => eprintln!("warning: --local-ip {} is on no interface here", c.local_ip),
            Some(false) => {}
        }
        (
            Target::Janus {
                url: Arc::new(url.clone()),
            },
            pid,
        )
    } else {
        let Some(secret) = c.jwt_secret.clone() else {
            eprintln!(
                "error: --jwt-secret (or SPREEKKAMER_JWT_SECRET) is needed to mint join tokens"
            );
            return ExitCode::from(1);
        };
        let pid = c
            .sfu_pid
            .or_else(|| port_of(&c.target).and_then(procstat::pid_listening_on));
        if pid.is_none() {
            eprintln!("warning: SFU process not found (give --sfu-pid): no CPU or RSS figures");
        }
        (
            Target::Sfu {
                sig: Arc::new(Signaling {
                    url: c.target.clone(),
                    secret,
                    issuer: c.issuer.clone(),
                    audience: c.audience.clone(),
                }),
            },
            pid,
        )
    };
    let video = VideoParams {
        bitrate_bps: c.bitrate,
        fps: c.fps.clamp(1, 120),
        keyframe_interval: ((c.keyframe_secs * f64::from(c.fps)).round() as u32).max(2),
        ..VideoParams::default()
    };
    let opts = Options {
        target,
        target_pid,
        local_ip: c.local_ip,
        video,
        threads: c.threads.max(1),
        window: Duration::from_secs_f64(c.duration.max(1.0)),
        join_rate: c.join_rate,
        progress: !c.quiet,
        behaviour: if c.legacy_peers {
            Behaviour {
                probe_packets: 0,
                rx_drop: 0.0,
                twcc_send: false,
                own_media: false,
                ..Behaviour::default()
            }
        } else {
            Behaviour {
                probe_every: Duration::from_secs_f64(c.probe_every.clamp(0.01, 3600.0)),
                probe_packets: c.probe_packets.min(1000),
                rx_drop: c.rx_drop.clamp(0.0, 0.5),
                twcc_send: true,
                own_media: !c.rtc_media,
            }
        },
        callgrind: c.callgrind,
    };
    let code = runtime.block_on(async move { drive(opts, s, &c).await });
    if let Some(mut ch) = relay_child {
        let _ = ch.kill();
        let _ = ch.wait();
    }
    code
}

async fn drive(opts: Options, s: Scenario, c: &Common) -> ExitCode {
    let mut runner = match Runner::new(opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}", e.0);
            return ExitCode::from(1);
        }
    };
    let result = match s {
        Scenario::Consults(n) => fixed(&mut runner, "consults", n, 2).await,
        Scenario::Group(size) => fixed(&mut runner, "group", 1, size).await,
        Scenario::Ramp {
            start,
            step,
            max,
            max_loss,
            max_p99_ms,
        } => ramp(&mut runner, start, step, max, max_loss, max_p99_ms).await,
    };
    runner.shutdown().await;
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}", e.0);
            return ExitCode::from(2);
        }
    };
    print!("{}", report.table());
    if let Some(path) = &c.json
        && let Err(e) = std::fs::write(path, report.to_json())
    {
        eprintln!("error: {}: {e}", path.display());
        return ExitCode::from(1);
    }
    if let Some(path) = &c.svg
        && let Err(e) = std::fs::write(path, Report::plot(&[&report]))
    {
        eprintln!("error: {}: {e}", path.display());
        return ExitCode::from(1);
    }
    let Some(last) = report.points.first() else {
        eprintln!("error: nothing was measured");
        return ExitCode::from(3);
    };
    if last.forwarded_pps <= 0.0 || last.latency.count == 0 {
        eprintln!("error: no media was forwarded or no latency measured");
        return ExitCode::from(3);
    }
    if c.require_feedback {
        let mut missing = Vec::new();
        if last.twcc_sent_ps <= 0.0 {
            missing.push("the peers sent no TWCC feedback");
        }
        if last.twcc_received_ps <= 0.0 {
            missing.push("the server sent the publishers no TWCC feedback");
        }
        if c.probe_packets > 0 && last.padding_sent_ps <= 0.0 {
            missing.push("no padding was sent");
        }
        if c.rx_drop > 0.0 && last.nacks_sent_ps <= 0.0 {
            missing.push("no NACK was sent although received video was dropped");
        }
        if !missing.is_empty() {
            eprintln!("error: {}", missing.join("; "));
            return ExitCode::from(3);
        }
    }
    ExitCode::SUCCESS
}

async fn fixed(
    runner: &mut Runner,
    scenario: &str,
    consults: u32,
    size: u32,
) -> Result<Report, run::Fatal> {
    runner.add_consults(consults, size).await?;
    let p = runner.measure(scenario).await?;
    Ok(runner.report(scenario, size, vec![p]))
}

async fn ramp(
    runner: &mut Runner,
    start: u32,
    step: u32,
    max: u32,
    max_loss: f64,
    max_p99_ms: f64,
) -> Result<Report, run::Fatal> {
    let mut points = Vec::new();
    let mut capacity = None;
    let mut reason = format!("reached --max-consults {max}");
    let mut add = start.max(1);
    while runner.consults() + add <= max {
        runner.add_consults(add, 2).await?;
        add = step;
        let label = format!("ramp {}", runner.consults());
        let p = runner.measure(&label).await?;
        let p99_ms = p.latency.p99_us as f64 / 1000.0;
        let bad = if p.loss > max_loss {
            Some(format!(
                "loss {:.3} % > {:.3} %",
                p.loss * 100.0,
                max_loss * 100.0
            ))
        } else if p99_ms > max_p99_ms {
            Some(format!("p99 {p99_ms:.1} ms > {max_p99_ms} ms"))
        } else if p.join_failures > 0 {
            Some(format!("{} participants failed to join", p.join_failures))
        } else {
            None
        };
        eprintln!(
            "{} consults: {:.0} pkt/s, loss {:.3} %, p99 {:.2} ms",
            p.consults,
            p.forwarded_pps,
            p.loss * 100.0,
            p99_ms
        );
        let consults = p.consults;
        points.push(p);
        match bad {
            Some(r) => {
                reason = format!("at {consults} consults: {r}");
                break;
            }
            None => capacity = Some(consults),
        }
    }
    let mut report = runner.report("ramp", 2, points);
    report.capacity_consults = capacity;
    report.stop_reason = Some(reason);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_interfaces_are_recognised_by_their_flag() {
        // 127.0.0.1 sits on lo (IFF_LOOPBACK) wherever tests run.
        assert_eq!(
            on_loopback_interface("127.0.0.1".parse().unwrap()),
            Some(true)
        );
        // Routed to lo, but not an interface's address (lo holds 127.0.0.1/8).
        assert_eq!(on_loopback_interface("127.0.0.77".parse().unwrap()), None);
    }

    #[test]
    fn ports_come_from_websocket_urls() {
        assert_eq!(port_of("ws://127.0.0.1:8188/"), Some(8188));
        assert_eq!(port_of("ws://127.0.0.1:18080/ws"), Some(18080));
        assert_eq!(port_of("ws://127.0.0.1/ws"), None);
        assert_eq!(port_of("nonsense"), None);
    }
}
