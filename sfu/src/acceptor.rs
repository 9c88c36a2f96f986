//! The ICE-TCP accept loop: reads each connection's first frame (a STUN
//! binding request), finds the worker that owns its ufrag and hands the
//! connection over. The worker then checks the request's integrity.
//!
//! Until then a connection is *pending*, and anyone can open one, so
//! pending connections are bounded: [`MAX_PENDING`] in all,
//! [`MAX_PENDING_PER_ADDRESS`] per source IP, [`FIRST_FRAME_TIMEOUT`] each.
//! A full table never refuses a newcomer: it evicts the idlest pending
//! connection (one that has sent nothing, the oldest first; then the
//! oldest) — from the newcomer's own address when that address is at its
//! cap, from anyone otherwise. A browser sends its check as soon as TCP
//! is up, and the accept loop reads it straight away, so it is handed over
//! long before it could be the idlest; an attacker renewing idle
//! connections only evicts its own (measured before this: 64 idle
//! connections renewed every 2.5 s kept 27 of 27 legitimate participants
//! out). Outcomes are counted (`spreekkamer_media_ice_tcp_pending_total`).

use crate::demux;
use crate::metrics::MediaCounters;
use crate::tcp::{Frame, FrameReader};
use crate::worker::{WAKE, WorkerCommand};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::HashMap;
use std::io::{ErrorKind, Read};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connections that have not yet sent a complete first frame.
pub(crate) const MAX_PENDING: usize = 64;
/// Of those, from one source IP (a NAT may put a few participants behind
/// one address; eight is more than one consult's worth).
pub(crate) const MAX_PENDING_PER_ADDRESS: usize = 8;
/// Time a new ICE-TCP connection gets to send its first STUN check.
pub(crate) const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(3);
const LISTENER: Token = Token(0);
const PENDING_BASE: usize = 2;

/// What the eviction policy knows of a pending connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waiting {
    pub ip: IpAddr,
    pub accepted: Instant,
    /// Bytes received so far.
    pub received: usize,
}

/// Why a pending connection was evicted.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(crate) enum Eviction {
    /// Its address had [`MAX_PENDING_PER_ADDRESS`] pending.
    SameAddress,
    /// [`MAX_PENDING`] were pending.
    Full,
}

/// Which pending connection (index into `waiting`) must go before a new
/// one from `ip` is admitted, if any. The idlest goes: nothing received
/// before something received, then the oldest.
pub(crate) fn make_room(waiting: &[Option<Waiting>], ip: IpAddr) -> Option<(usize, Eviction)> {
    let idlest = |same_ip: bool| {
        waiting
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.map(|w| (i, w)))
            .filter(|(_, w)| !same_ip || w.ip == ip)
            .min_by_key(|(_, w)| (w.received > 0, w.accepted))
            .map(|(i, _)| i)
    };
    let from_ip = waiting.iter().flatten().filter(|w| w.ip == ip).count();
    if from_ip >= MAX_PENDING_PER_ADDRESS {
        return idlest(true).map(|i| (i, Eviction::SameAddress));
    }
    if waiting.iter().flatten().count() >= MAX_PENDING {
        return idlest(false).map(|i| (i, Eviction::Full));
    }
    None
}

struct Pending {
    stream: TcpStream,
    remote: SocketAddr,
    reader: FrameReader,
}

/// How a pending connection ended (one counter each).
#[derive(Clone, Copy)]
enum Outcome {
    HandedOver,
    Evicted(Eviction),
    TimedOut,
    /// Closed by the peer, no ufrag of ours, an oversized frame.
    Refused,
}

pub(crate) struct Acceptor {
    pub poll: Poll,
    pub listener: TcpListener,
    pub workers: Vec<(Sender<WorkerCommand>, Arc<Waker>)>,
    pub ufrag_owners: Arc<Mutex<HashMap<String, usize>>>,
    pub stopping: Arc<AtomicBool>,
    pub counters: Arc<MediaCounters>,
    /// Slot-parallel: the connection, and what eviction knows of it.
    pending: Vec<Option<Pending>>,
    waiting: Vec<Option<Waiting>>,
}

impl Acceptor {
    pub(crate) fn new(
        poll: Poll,
        listener: TcpListener,
        workers: Vec<(Sender<WorkerCommand>, Arc<Waker>)>,
        ufrag_owners: Arc<Mutex<HashMap<String, usize>>>,
        stopping: Arc<AtomicBool>,
        counters: Arc<MediaCounters>,
    ) -> Acceptor {
        Acceptor {
            poll,
            listener,
            workers,
            ufrag_owners,
            stopping,
            counters,
            pending: Vec::new(),
            waiting: Vec::new(),
        }
    }

    pub(crate) fn run(mut self) {
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut self.listener, LISTENER, Interest::READABLE)
        {
            log::error!("ice-tcp listener: {e}");
            return;
        }
        let mut events = Events::with_capacity(64);
        let mut buf = [0u8; 2048];
        while !self.stopping.load(Ordering::Relaxed) {
            if let Err(e) = self.poll.poll(&mut events, Some(Duration::from_secs(1)))
                && e.kind() != ErrorKind::Interrupted
            {
                log::error!("ice-tcp poll: {e}");
                return;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(&mut buf),
                    WAKE => {}
                    Token(t) => self.first_frame(t - PENDING_BASE, &mut buf),
                }
            }
            let now = Instant::now();
            for i in 0..self.waiting.len() {
                if self.waiting[i].is_some_and(|w| w.accepted + FIRST_FRAME_TIMEOUT <= now) {
                    self.end(i, Outcome::TimedOut);
                }
            }
        }
    }

    fn accept(&mut self, buf: &mut [u8]) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, remote)) => {
                    if let Some((victim, why)) = make_room(&self.waiting, remote.ip()) {
                        self.end(victim, Outcome::Evicted(why));
                    }
                    let slot = match self.pending.iter().position(|p| p.is_none()) {
                        Some(i) => i,
                        None => {
                            self.pending.push(None);
                            self.waiting.push(None);
                            self.pending.len() - 1
                        }
                    };
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, Token(PENDING_BASE + slot), Interest::READABLE)
                        .is_err()
                    {
                        self.count(Outcome::Refused);
                        continue;
                    }
                    self.pending[slot] = Some(Pending {
                        stream,
                        remote,
                        reader: FrameReader::default(),
                    });
                    self.waiting[slot] = Some(Waiting {
                        ip: remote.ip(),
                        accepted: Instant::now(),
                        received: 0,
                    });
                    // A browser's check is usually here already: read it
                    // now, before more accepts could count this one idle.
                    self.first_frame(slot, buf);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // e.g. out of file descriptors: the backlog keeps the
                    // connection until a later accept.
                    self.count(Outcome::Refused);
                    log::debug!("ice-tcp accept: {e}");
                    return;
                }
            }
        }
    }

    fn first_frame(&mut self, slot: usize, buf: &mut [u8]) {
        let Some(p) = self.pending.get_mut(slot).and_then(|p| p.as_mut()) else {
            return;
        };
        loop {
            match p.stream.read(buf) {
                Ok(0) => return self.end(slot, Outcome::Refused),
                Ok(n) => {
                    p.reader.extend(&buf[..n]);
                    if let Some(w) = self.waiting[slot].as_mut() {
                        w.received += n;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return self.end(slot, Outcome::Refused),
            }
        }
        let range = match p.reader.next_frame() {
            Frame::Partial => return,
            Frame::TooLarge => return self.end(slot, Outcome::Refused),
            Frame::Ready(r) => r,
        };
        let owner = demux::local_ufrag(&p.reader.bytes()[range]).and_then(|u| {
            self.ufrag_owners
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(u)
                .copied()
        });
        let Some(worker) = owner else {
            return self.end(slot, Outcome::Refused);
        };
        let Some(p) = self.take(slot) else {
            return;
        };
        if let Some((tx, waker)) = self.workers.get(worker)
            && tx
                .send(WorkerCommand::Tcp {
                    stream: p.stream,
                    remote: p.remote,
                    received: p.reader.into_inner(),
                })
                .is_ok()
        {
            let _ = waker.wake();
            self.count(Outcome::HandedOver);
        } else {
            // The worker is gone (shutting down): the connection closes.
            self.count(Outcome::Refused);
        }
    }

    /// Take a pending connection out of the table (deregistered).
    fn take(&mut self, slot: usize) -> Option<Pending> {
        self.waiting.get_mut(slot).and_then(|w| w.take());
        let mut p = self.pending.get_mut(slot).and_then(|p| p.take())?;
        let _ = self.poll.registry().deregister(&mut p.stream);
        Some(p)
    }

    /// Close a pending connection and count why.
    fn end(&mut self, slot: usize, outcome: Outcome) {
        if self.take(slot).is_some() {
            self.count(outcome);
        }
    }

    fn count(&self, outcome: Outcome) {
        let c = &self.counters;
        let counter: &AtomicU64 = match outcome {
            Outcome::HandedOver => &c.ice_tcp_handed_over,
            Outcome::Evicted(Eviction::SameAddress) => &c.ice_tcp_evicted_same_address,
            Outcome::Evicted(Eviction::Full) => &c.ice_tcp_evicted_full,
            Outcome::TimedOut => &c.ice_tcp_timed_out,
            Outcome::Refused => &c.ice_tcp_refused,
        };
        counter.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn room_is_free_below_both_caps() {
        let t0 = Instant::now();
        let waiting: Vec<_> = (0..MAX_PENDING_PER_ADDRESS - 1)
            .map(|_| {
                Some(Waiting {
                    ip: ip(1),
                    accepted: t0,
                    received: 0,
                })
            })
            .collect();
        assert_eq!(make_room(&waiting, ip(1)), None);
    }

    #[test]
    fn an_address_at_its_cap_evicts_its_own_idlest_connection() {
        let t0 = Instant::now();
        let mut waiting = vec![Some(Waiting {
            ip: ip(2),
            accepted: t0,
            received: 0,
        })];
        for i in 0..MAX_PENDING_PER_ADDRESS {
            waiting.push(Some(Waiting {
                ip: ip(1),
                accepted: t0 + Duration::from_millis(i as u64),
                // The oldest has sent half a frame; the next one nothing.
                received: if i == 0 { 10 } else { 0 },
            }));
        }
        // Not ip(2)'s connection (older, idle, but another address), not
        // the oldest of ip(1) (it sent something): the oldest silent one.
        assert_eq!(make_room(&waiting, ip(1)), Some((2, Eviction::SameAddress)));
        assert_eq!(make_room(&waiting, ip(3)), None);
    }

    #[test]
    fn a_full_table_evicts_the_oldest_silent_connection_of_anyone() {
        let t0 = Instant::now();
        let waiting: Vec<_> = (0..MAX_PENDING)
            .map(|i| {
                Some(Waiting {
                    ip: ip((i % 16) as u8),
                    accepted: t0 + Duration::from_millis(i as u64),
                    received: if i < 5 { 3 } else { 0 },
                })
            })
            .collect();
        assert_eq!(make_room(&waiting, ip(200)), Some((5, Eviction::Full)));
    }
}
