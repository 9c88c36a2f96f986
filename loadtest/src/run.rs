//! Scenario orchestration: add consults, wait for media, measure a window,
//! turn the threads' accumulators, the target's /proc figures (and, under
//! callgrind, its instruction count) into a report point.

use crate::callgrind;
use crate::janus;
use crate::media::{Acc, Behaviour, Command, MediaThread, PeerMode, Status};
use crate::media_model::VideoParams;
use crate::procstat;
use crate::report::{Machine, Params, Point, Report};
use crate::signal::{JoinError, Signaling, participant};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

pub enum Target {
    Sfu {
        sig: Arc<Signaling>,
    },
    Relay {
        addr: SocketAddr,
        threads: usize,
    },
    /// Janus VideoRoom at this WebSocket URL (the baseline).
    Janus {
        url: Arc<String>,
    },
}

pub struct Options {
    pub target: Target,
    pub target_pid: Option<u32>,
    pub local_ip: IpAddr,
    pub video: VideoParams,
    pub threads: usize,
    pub window: Duration,
    pub join_rate: f64,
    pub progress: bool,
    pub behaviour: Behaviour,
    /// The target runs under callgrind: count its instructions per window.
    pub callgrind: bool,
}

/// A fatal problem: the run cannot go on (exit non-zero).
#[derive(Debug)]
pub struct Fatal(pub String);

pub struct Runner {
    opts: Options,
    media: Vec<Arc<MediaThread>>,
    status: mpsc::UnboundedReceiver<Status>,
    joined_tx: mpsc::UnboundedSender<(u64, Result<(), JoinError>)>,
    joined: mpsc::UnboundedReceiver<(u64, Result<(), JoinError>)>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    next_id: u64,
    consults: u32,
    participants: u32,
    with_media: u32,
    join_failures: u32,
    run_tag: String,
    run_num: u32,
}

fn machine() -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    Machine {
        // The machine's cores, not this process's affinity (taskset).
        cores: {
            // SAFETY: sysconf has no preconditions.
            let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
            if n > 0 {
                n as usize
            } else {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            }
        },
        cpu_model,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        loadavg_at_start: procstat::loadavg(),
    }
}

impl Runner {
    pub fn new(opts: Options) -> Result<Runner, Fatal> {
        let (status_tx, status) = mpsc::unbounded_channel();
        let media = (0..opts.threads.max(1))
            .map(|i| {
                MediaThread::spawn(i, opts.video, opts.behaviour, status_tx.clone()).map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Fatal(format!("cannot start media threads: {e}")))?;
        let (joined_tx, joined) = mpsc::unbounded_channel();
        let (stop, _) = watch::channel(false);
        Ok(Runner {
            opts,
            media,
            status,
            joined_tx,
            joined,
            stop,
            tasks: Vec::new(),
            next_id: 0,
            consults: 0,
            participants: 0,
            with_media: 0,
            join_failures: 0,
            run_tag: format!("lt{:08x}", rand::random::<u32>()),
            run_num: rand::random::<u32>() & 0x0fff_ffff,
        })
    }

    pub fn target_name(&self) -> &'static str {
        match self.opts.target {
            Target::Sfu { .. } => "spreekkamer",
            Target::Relay { .. } => "udp-relay",
            Target::Janus { .. } => "janus",
        }
    }

    pub fn consults(&self) -> u32 {
        self.consults
    }

    pub fn report(&self, scenario: &str, group: u32, points: Vec<Point>) -> Report {
        Report {
            scenario: scenario.into(),
            target: self.target_name().into(),
            machine: machine(),
            params: Params {
                video_bitrate_bps: self.opts.video.bitrate_bps,
                fps: self.opts.video.fps,
                keyframe_interval_frames: self.opts.video.keyframe_interval,
                group_size: group,
                window_s: self.opts.window.as_secs_f64(),
                generator_threads: self.media.len(),
                probe_packets: self.opts.behaviour.probe_packets,
                probe_every_s: self.opts.behaviour.probe_every.as_secs_f64(),
                rx_drop: self.opts.behaviour.rx_drop,
                twcc_send: self.opts.behaviour.twcc_send,
                callgrind: self.opts.callgrind,
            },
            points,
            capacity_consults: None,
            stop_reason: None,
        }
    }

    /// Add `n` consults of `size` participants (all publish and subscribe)
    /// and wait until every participant receives media.
    pub async fn add_consults(&mut self, n: u32, size: u32) -> Result<(), Fatal> {
        let gap = Duration::from_secs_f64(1.0 / self.opts.join_rate.max(0.1));
        let target = self.participants + n * size;
        let (sig, relay_at, janus) = match &self.opts.target {
            Target::Sfu { sig } => (Some(sig.clone()), None, None),
            Target::Relay { addr, threads } => (None, Some((*addr, *threads)), None),
            Target::Janus { url } => (None, None, Some(url.clone())),
        };
        for _ in 0..n {
            let c = self.consults;
            self.consults += 1;
            if let Some(url) = &janus {
                // Room ids: this run's tag in the high bits, the consult
                // index below (Janus room ids are integers < 2^53 in JSON).
                let room = (u64::from(self.run_num) << 20) | u64::from(c);
                for _ in 0..size {
                    let (pub_id, sub_id) = (self.next_id, self.next_id + 1);
                    self.next_id += 2;
                    let nm = self.media.len();
                    let peer = janus::JanusPeer {
                        url: url.clone(),
                        room,
                        room_size: size,
                        pub_id,
                        sub_id,
                        pub_media: self.media[(pub_id as usize) % nm].clone(),
                        sub_media: self.media[(sub_id as usize) % nm].clone(),
                        local_ip: self.opts.local_ip,
                    };
                    self.tasks.push(tokio::spawn(janus::participant(
                        peer,
                        self.stop.subscribe(),
                        self.joined_tx.clone(),
                    )));
                    self.participants += 1;
                    tokio::time::sleep(gap).await;
                    self.check_joins()?;
                }
                continue;
            }
            match (&sig, relay_at) {
                (Some(sig), _) => {
                    let consult = format!("{}-{c}", self.run_tag);
                    for k in 0..size {
                        let id = self.next_id;
                        self.next_id += 1;
                        let media = self.media[(id as usize) % self.media.len()].clone();
                        let role = if k == 0 { "clinician" } else { "patient" };
                        self.tasks.push(tokio::spawn(participant(
                            sig.clone(),
                            id,
                            consult.clone(),
                            role,
                            media,
                            self.opts.local_ip,
                            true,
                            self.stop.subscribe(),
                            self.joined_tx.clone(),
                        )));
                        self.participants += 1;
                        tokio::time::sleep(gap).await;
                        self.check_joins()?;
                    }
                }
                (None, None) => {}
                (None, Some((addr, threads))) => {
                    let relay = SocketAddr::new(
                        addr.ip(),
                        addr.port().wrapping_add((c as usize % threads) as u16),
                    );
                    let bind = |ip| {
                        std::net::UdpSocket::bind((ip, 0))
                            .map_err(|e| Fatal(format!("bind UDP on {ip}: {e}")))
                    };
                    // One socket per member; each sends to all the others
                    // (a consult: the partner; a group: the fan-out).
                    let mut members = Vec::new();
                    for _ in 0..size.max(2) {
                        let sock = bind(self.opts.local_ip)?;
                        let addr = sock.local_addr().map_err(|e| Fatal(e.to_string()))?;
                        members.push((sock, addr));
                    }
                    let addrs: Vec<SocketAddr> = members.iter().map(|(_, a)| *a).collect();
                    for (sock, me) in members {
                        let to = addrs.iter().copied().filter(|a| *a != me).collect();
                        let id = self.next_id;
                        self.next_id += 1;
                        self.media[(id as usize) % self.media.len()].send(Command::Add {
                            id,
                            socket: sock,
                            mode: PeerMode::Plain { relay, to },
                            publish: true,
                            started: Instant::now(),
                        });
                        self.participants += 1;
                    }
                    tokio::time::sleep(gap * size.max(2)).await;
                }
            }
        }
        // Wait for everyone's first media (bounded).
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.with_media + self.join_failures < target {
            self.check_joins()?;
            if Instant::now() > deadline {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(100), self.status.recv()).await {
                Ok(Some(s)) => self.on_status(s),
                Ok(None) => return Err(Fatal("media threads stopped".into())),
                Err(_) => {}
            }
        }
        let missing = target.saturating_sub(self.with_media + self.join_failures);
        if missing > 0 {
            self.join_failures += missing;
            eprintln!("warning: {missing} participants got no media within 30 s");
        }
        Ok(())
    }

    fn on_status(&mut self, s: Status) {
        match s {
            Status::FirstMedia => self.with_media += 1,
            Status::Failed { id, reason } => {
                self.join_failures += 1;
                eprintln!("participant {id}: {reason}");
            }
        }
    }

    /// Refused tokens and an unreachable target are fatal: nothing else
    /// in the run could succeed.
    fn check_joins(&mut self) -> Result<(), Fatal> {
        while let Ok((id, r)) = self.joined.try_recv() {
            match r {
                Ok(()) => {}
                Err(e @ (JoinError::Unreachable(_) | JoinError::Refused { .. })) => {
                    return Err(Fatal(e.to_string()));
                }
                Err(e) => {
                    self.join_failures += 1;
                    eprintln!("participant {id}: {e}");
                }
            }
        }
        while let Ok(s) = self.status.try_recv() {
            self.on_status(s);
        }
        Ok(())
    }

    fn take(&self) -> Acc {
        let mut acc = Acc::default();
        for m in &self.media {
            acc.merge(&m.take());
        }
        acc
    }

    /// Measure one window at the current load.
    pub async fn measure(&mut self, label: &str) -> Result<Point, Fatal> {
        // Settle: renegotiations and keyframe requests after the last join.
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.check_joins()?;
        let pid = self.opts.target_pid;
        if self.opts.callgrind {
            let Some(pid) = pid else {
                return Err(Fatal("callgrind: the server's pid is unknown".into()));
            };
            tokio::task::spawn_blocking(move || callgrind::start(pid))
                .await
                .map_err(|e| Fatal(e.to_string()))?
                .map_err(Fatal)?;
        }
        let join = self.take().join; // join times of this step's newcomers
        let loadavg_before = procstat::loadavg();
        let server_cpus = pid.and_then(procstat::allowed_cpus);
        let generator_cpus = procstat::allowed_cpus(std::process::id());
        let own0 = procstat::usage(std::process::id());
        let start = Instant::now();
        let u0 = pid.and_then(procstat::usage);
        let core0 = server_cpus.as_deref().and_then(procstat::core_ticks);
        let window = self.opts.window;
        let mut last_packets = self.packets();
        let mut last = Instant::now();
        while start.elapsed() < window {
            tokio::time::sleep(Duration::from_secs(1).min(window.saturating_sub(start.elapsed())))
                .await;
            self.check_joins()?;
            if self.opts.progress {
                let p = self.packets();
                let dt = last.elapsed().as_secs_f64().max(1e-3);
                eprint!(
                    "\r{label}: {:>4.0}/{:.0} s, {} consults, {} participants, {:>8.0} pkt/s   ",
                    start.elapsed().as_secs_f64(),
                    window.as_secs_f64(),
                    self.consults,
                    self.participants,
                    (p - last_packets) as f64 / dt
                );
                let _ = std::io::stderr().flush();
                last_packets = p;
                last = Instant::now();
            }
        }
        // Let the threads flush their last 200 ms (they flush every 200 ms,
        // so the packets counted lag the window by as much at both ends).
        tokio::time::sleep(Duration::from_millis(250)).await;
        let instructions = match pid {
            Some(pid) if self.opts.callgrind => Some(
                tokio::task::spawn_blocking(move || callgrind::totals(pid))
                    .await
                    .map_err(|e| Fatal(e.to_string()))?
                    .map_err(Fatal)?,
            ),
            _ => None,
        };
        let u1 = pid.and_then(procstat::usage);
        let core1 = server_cpus.as_deref().and_then(procstat::core_ticks);
        let own1 = procstat::usage(std::process::id());
        let loadavg_after = procstat::loadavg();
        let elapsed = start.elapsed().as_secs_f64();
        if self.opts.progress {
            eprintln!();
        }
        let acc = self.take();
        if let (Some(pid), true) = (pid, self.opts.callgrind) {
            let _ = tokio::task::spawn_blocking(move || callgrind::off(pid)).await;
        }
        let mut p = Point {
            consults: self.consults,
            participants: self.participants,
            window_s: elapsed,
            forwarded_pps: acc.packets as f64 / elapsed,
            forwarded_bytes_ps: acc.bytes as f64 / elapsed,
            expected_pps: acc.rx.expected as f64 / elapsed,
            loss: acc.rx.loss(),
            latency: acc.latency.summary(),
            jitter_ms: if acc.jitter_samples > 0 {
                acc.jitter_sum_us / acc.jitter_samples as f64 / 1000.0
            } else {
                0.0
            },
            join_ms: {
                let mut j = join;
                j.merge(&acc.join);
                j.summary()
            },
            join_failures: self.join_failures,
            loadavg_before,
            loadavg_after,
            twcc_sent_ps: acc.twcc_sent as f64 / elapsed,
            twcc_received_ps: acc.twcc_received as f64 / elapsed,
            nacks_sent_ps: acc.nacks_sent as f64 / elapsed,
            padding_sent_ps: acc.padding_sent as f64 / elapsed,
            rx_dropped_ps: acc.rx_dropped as f64 / elapsed,
            ..Default::default()
        };
        let cpu_list = |c: &Option<Vec<usize>>| {
            c.as_ref().map_or(String::new(), |c| {
                c.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
            })
        };
        p.server_cpus = cpu_list(&server_cpus);
        p.generator_cpus = cpu_list(&generator_cpus);
        if let (Some(a), Some(b)) = (u0, u1) {
            p.set_cpu(b.cpu_s - a.cpu_s);
            p.target_rss_mb = b.rss_bytes as f64 / 1e6;
            p.rss_kb_per_participant =
                b.rss_bytes as f64 / 1e3 / f64::from(self.participants.max(1));
            if let (Some(c0), Some(c1)) = (core0, core1) {
                p.set_core(
                    procstat::ticks_s(c1.busy.saturating_sub(c0.busy)),
                    procstat::ticks_s(c1.irq.saturating_sub(c0.irq)),
                    procstat::ticks_s(c1.steal.saturating_sub(c0.steal)),
                    b.cpu_s - a.cpu_s,
                );
            }
        }
        if let Some(ir) = instructions {
            p.set_instructions(ir);
        }
        if let (Some(a), Some(b)) = (own0, own1) {
            p.generator_cores_busy = (b.cpu_s - a.cpu_s) / elapsed;
        }
        Ok(p)
    }

    fn packets(&self) -> u64 {
        self.media
            .iter()
            .map(|m| m.packets.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        for m in self.media.drain(..) {
            if let Ok(mut m) = Arc::try_unwrap(m) {
                tokio::task::spawn_blocking(move || m.stop()).await.ok();
            }
        }
    }
}
