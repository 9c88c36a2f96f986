//! The edge's handle on the media plane: starts the workers and the ICE-TCP
//! accept loop, routes each command to the worker that owns its consult,
//! and stops everything on shutdown.

use crate::acceptor::Acceptor;
use crate::metrics::{LimitStats, MediaCounters, MediaStats};
use crate::peer::Candidates;
use crate::worker::{UDP, WAKE, Worker, WorkerCommand, WorkerSetup};
use crate::{ConsultId, EventSink, MediaCommand, ParticipantId, SfuConfig};
use mio::net::{TcpListener, UdpSocket};
use mio::{Interest, Poll, Waker};
use std::collections::{HashMap, HashSet};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Cheap to clone; routes commands to the worker that owns the consult.
#[derive(Clone)]
pub struct SfuHandle {
    inner: Arc<Inner>,
}

struct WorkerLink {
    commands: Sender<WorkerCommand>,
    waker: Arc<Waker>,
}

impl WorkerLink {
    fn send(&self, command: WorkerCommand) {
        if self.commands.send(command).is_ok()
            && let Err(e) = self.waker.wake()
        {
            log::warn!("waking a media worker failed: {e}");
        }
    }
}

/// Which worker owns which consult. Only the edge's commands change it, so
/// it is consistent with the order in which workers see them: a consult
/// stays on its worker until its last participant's `Leave` has been routed.
#[derive(Default)]
struct Placement {
    consults: HashMap<ConsultId, (usize, HashSet<ParticipantId>)>,
    /// Participants per worker: the load a new consult is placed by.
    load: Vec<usize>,
}

impl Placement {
    fn route(&mut self, command: &MediaCommand) -> Option<usize> {
        match command {
            MediaCommand::Join {
                consult,
                participant,
            } => {
                if !self.consults.contains_key(consult) {
                    let least = (0..self.load.len()).min_by_key(|w| self.load[*w])?;
                    self.consults
                        .insert(consult.clone(), (least, HashSet::new()));
                }
                let (worker, members) = self.consults.get_mut(consult)?;
                if members.insert(participant.clone()) {
                    self.load[*worker] += 1;
                }
                Some(*worker)
            }
            MediaCommand::Leave {
                consult,
                participant,
            } => {
                let (worker, members) = self.consults.get_mut(consult)?;
                let worker = *worker;
                if members.remove(participant) {
                    self.load[worker] -= 1;
                }
                if members.is_empty() {
                    self.consults.remove(consult);
                }
                Some(worker)
            }
            MediaCommand::Answer { consult, .. }
            | MediaCommand::Candidate { consult, .. }
            | MediaCommand::IceRestart { consult, .. }
            | MediaCommand::Preferences { consult, .. }
            | MediaCommand::Screen { consult, .. }
            | MediaCommand::Keyframe { consult, .. } => self.consults.get(consult).map(|(w, _)| *w),
        }
    }
}

struct Inner {
    counters: Arc<MediaCounters>,
    workers: Vec<WorkerLink>,
    placement: Mutex<Placement>,
    udp_addrs: Vec<SocketAddr>,
    tcp_addr: Option<SocketAddr>,
    acceptor_waker: Option<Arc<Waker>>,
    stopping: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicked worker must not take the edge down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SfuHandle {
    /// Bind the sockets and start the worker threads. Every participant's
    /// events go to `events`.
    pub fn start(config: SfuConfig, events: EventSink) -> std::io::Result<SfuHandle> {
        let workers = if config.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.workers
        };
        let counters = Arc::new(MediaCounters::default());
        let ufrag_owners = Arc::new(Mutex::new(HashMap::new()));
        let stopping = Arc::new(AtomicBool::new(false));

        let tcp = match config.tcp_port {
            Some(port) => {
                let listener = std::net::TcpListener::bind((config.bind_ip, port))?;
                listener.set_nonblocking(true)?;
                Some(TcpListener::from_std(listener))
            }
            None => None,
        };
        let tcp_addr = tcp.as_ref().map(|l| l.local_addr()).transpose()?;

        let mut links = Vec::new();
        let mut udp_addrs = Vec::new();
        let mut threads = Vec::new();
        for index in 0..workers {
            let port = if config.udp_port == 0 {
                0
            } else {
                u16::try_from(config.udp_port as usize + index).map_err(|_| {
                    std::io::Error::new(ErrorKind::InvalidInput, "udp port range exceeds 65535")
                })?
            };
            let socket = std::net::UdpSocket::bind((config.bind_ip, port))?;
            socket.set_nonblocking(true)?;
            size_socket_buffers(&socket, index);
            let local = socket.local_addr()?;
            let mut socket = UdpSocket::from_std(socket);
            if !crate::rx::enable_timestamps(&socket) && index == 0 {
                log::warn!("no kernel receive timestamps: congestion feedback uses read time");
            }
            let poll = Poll::new()?;
            poll.registry()
                .register(&mut socket, UDP, Interest::READABLE)?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
            let (tx, rx) = mpsc::channel();
            let setup = WorkerSetup {
                poll,
                socket,
                commands: rx,
                counters: counters.clone(),
                ufrag_owners: ufrag_owners.clone(),
                index,
                events: events.clone(),
                media_path: config.media_path,
                candidates: Candidates {
                    announce_ip: config.announce_ip,
                    udp_port: local.port(),
                    tcp_port: tcp_addr.map(|a| a.port()),
                },
            };
            let thread = std::thread::Builder::new()
                .name(format!("media-{index}"))
                .spawn(move || Worker::new(setup).run())?;
            threads.push(thread);
            links.push(WorkerLink {
                commands: tx,
                waker,
            });
            udp_addrs.push(local);
        }

        let mut acceptor_waker = None;
        if let Some(listener) = tcp {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
            acceptor_waker = Some(waker);
            let accept = Acceptor::new(
                poll,
                listener,
                links
                    .iter()
                    .map(|l| (l.commands.clone(), l.waker.clone()))
                    .collect(),
                ufrag_owners,
                stopping.clone(),
                counters.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name("ice-tcp".into())
                    .spawn(move || accept.run())?,
            );
        }

        log::info!("media plane: {workers} workers, udp {udp_addrs:?}, ice-tcp {tcp_addr:?}");
        Ok(SfuHandle {
            inner: Arc::new(Inner {
                counters,
                placement: Mutex::new(Placement {
                    consults: HashMap::new(),
                    load: vec![0; links.len()],
                }),
                workers: links,
                udp_addrs,
                tcp_addr,
                acceptor_waker,
                stopping,
                threads: Mutex::new(threads),
            }),
        })
    }

    /// Queue a command for the worker that owns its consult. Never blocks.
    pub fn send(&self, command: MediaCommand) {
        if self.inner.stopping.load(Ordering::Relaxed) {
            return;
        }
        let Some(worker) = lock(&self.inner.placement).route(&command) else {
            log::debug!("media command for a consult with no media session");
            return;
        };
        self.inner.workers[worker].send(WorkerCommand::Media(command));
    }

    /// Counters for `/metrics`.
    pub fn stats(&self) -> MediaStats {
        self.inner.counters.snapshot()
    }

    /// Media-quality counters (layer switches, keyframe requests, NACKs,
    /// paused video) for `/metrics`.
    pub fn quality_stats(&self) -> crate::metrics::QualityStats {
        self.inner.counters.quality_snapshot()
    }

    /// What the bounds on unauthenticated traffic refused, evicted and
    /// dropped (ICE-TCP pending connections, media addresses, junk
    /// datagrams) for `/metrics`.
    pub fn limit_stats(&self) -> LimitStats {
        self.inner.counters.limit_snapshot()
    }

    /// The UDP sockets' local addresses, one per worker.
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.inner.udp_addrs.clone()
    }

    /// The ICE-TCP listener's local address, if enabled.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.inner.tcp_addr
    }

    /// Stop the workers (closing every peer connection) and wait for them.
    pub fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
        for w in &self.inner.workers {
            w.send(WorkerCommand::Shutdown);
        }
        if let Some(waker) = &self.inner.acceptor_waker {
            let _ = waker.wake();
        }
        let threads = std::mem::take(&mut *lock(&self.inner.threads));
        for t in threads {
            if t.join().is_err() {
                log::error!("a media thread panicked");
            }
        }
    }
}

/// Socket buffer size asked for on each worker's UDP socket (each way).
///
/// The kernel default (~208 KiB) overflows when a worker is descheduled for
/// a few milliseconds during a keyframe burst: measured in the browser
/// tests on a busy 2-core machine, ~900 receive and ~1 200 send buffer
/// errors in a minute on loopback, which the browsers report as loss and
/// the bandwidth estimate then treats as congestion. The kernel caps the
/// request at `net.core.rmem_max` / `wmem_max` (see docs/OPERATIONS.md).
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

fn size_socket_buffers(socket: &std::net::UdpSocket, worker: usize) {
    let sock = socket2::SockRef::from(socket);
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    // Linux reports twice what it grants (bookkeeping overhead included).
    let got = (
        sock.recv_buffer_size().unwrap_or(0) / 2,
        sock.send_buffer_size().unwrap_or(0) / 2,
    );
    if got.0 < SOCKET_BUFFER_BYTES || got.1 < SOCKET_BUFFER_BYTES {
        if worker == 0 {
            log::warn!(
                "media UDP socket buffers are {} KiB receive / {} KiB send, asked for {} KiB: \
                 raise net.core.rmem_max and net.core.wmem_max (docs/OPERATIONS.md), \
                 or packets are lost in bursts",
                got.0 / 1024,
                got.1 / 1024,
                SOCKET_BUFFER_BYTES / 1024
            );
        }
    } else {
        log::debug!("media UDP socket buffers: {} KiB each way", got.0 / 1024);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(consult: &str, participant: &str) -> MediaCommand {
        MediaCommand::Join {
            consult: consult.into(),
            participant: participant.into(),
        }
    }
    fn leave(consult: &str, participant: &str) -> MediaCommand {
        MediaCommand::Leave {
            consult: consult.into(),
            participant: participant.into(),
        }
    }

    #[test]
    fn consults_go_to_the_least_loaded_worker_and_stay_there() {
        let mut p = Placement {
            consults: HashMap::new(),
            load: vec![0, 0],
        };
        assert_eq!(p.route(&join("a", "1")), Some(0));
        assert_eq!(p.route(&join("b", "1")), Some(1));
        assert_eq!(
            p.route(&join("a", "2")),
            Some(0),
            "same consult, same worker"
        );
        assert_eq!(
            p.route(&join("c", "1")),
            Some(1),
            "worker 1 carries fewer participants"
        );
        assert_eq!(
            p.route(&MediaCommand::Answer {
                consult: "c".into(),
                participant: "1".into(),
                sdp: String::new()
            }),
            Some(1)
        );
    }

    #[test]
    fn consult_is_forgotten_after_its_last_leave() {
        let mut p = Placement {
            consults: HashMap::new(),
            load: vec![0],
        };
        p.route(&join("a", "1"));
        p.route(&join("a", "2"));
        assert_eq!(p.route(&leave("a", "1")), Some(0));
        assert_eq!(p.route(&leave("a", "2")), Some(0));
        assert_eq!(p.load, vec![0]);
        assert!(p.consults.is_empty());
        assert_eq!(p.route(&leave("a", "2")), None);
        assert_eq!(
            p.route(&MediaCommand::IceRestart {
                consult: "a".into(),
                participant: "1".into()
            }),
            None
        );
    }
}
