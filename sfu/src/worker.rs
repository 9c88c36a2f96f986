//! A media worker: one thread, one UDP socket, the ICE-TCP connections of
//! its peers, and every consult pinned to it.
//!
//! The loop, top to bottom: wait on the sockets (and on the waker that
//! says "commands are queued"); hand each datagram to the peer it belongs
//! to; drive that peer (send what it wants to send, fan its media out to
//! the rest of its consult, relay keyframe requests); fire timers; publish
//! counters. Nothing here is shared with another thread except the command
//! channel, the ufrag → worker map (touched on join/leave only) and the
//! counters.

use crate::addresses::{AddressTable, Learned, MAX_ADDRS_PER_PEER, Refusal};
use crate::consult::{Consult, Kind};
use crate::demux;
use crate::junk::{Dropped, Summary};
use crate::metrics::MediaCounters;
use crate::peer::{Candidates, Peer, PeerKey, PeerOptions, PeerOutput, PublisherView};
use crate::rx;
use crate::simulcast::{Layer, TOP};
use crate::speaker::SpeakerDetector;
use crate::tcp::{self, Frame, FrameReader};
use crate::tx::{BufferPool, Flushed, SendQueue};
use crate::{ConsultId, EventSink, MediaCommand, MediaEnvelope, MediaEvent};
use bytes::BytesMut;
use mio::net::{TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) const UDP: Token = Token(0);
pub(crate) const WAKE: Token = Token(1);
const TCP_BASE: usize = 2;
/// Housekeeping period (traffic timeouts).
const TICK: Duration = Duration::from_secs(1);
/// ICE-TCP connections per worker.
const MAX_TCP: usize = 4096;
/// Per-publisher quality preferences one subscriber may state (a consult
/// is small; anything beyond is ignored).
const MAX_PREFERENCES: usize = 32;
/// Datagrams read per loop turn before timers and commands get a turn:
/// under overload the socket never runs dry, and an unbounded read loop
/// would starve DTLS retransmits, RTCP reports and joins.
const READ_BUDGET: usize = 256;

/// What reaches a worker through its channel.
pub(crate) enum WorkerCommand {
    Media(MediaCommand),
    /// An ICE-TCP connection whose first frame named one of our ufrags.
    Tcp {
        stream: TcpStream,
        remote: SocketAddr,
        received: Vec<u8>,
    },
    Shutdown,
}

/// Everything a worker thread starts with.
pub(crate) struct WorkerSetup {
    pub poll: Poll,
    pub socket: UdpSocket,
    pub commands: Receiver<WorkerCommand>,
    pub counters: Arc<MediaCounters>,
    /// ufrag → worker index, read by the ICE-TCP accept loop.
    pub ufrag_owners: Arc<Mutex<HashMap<String, usize>>>,
    pub index: usize,
    pub candidates: Candidates,
    pub events: EventSink,
    pub media_path: crate::MediaPath,
}

struct TcpConn {
    stream: TcpStream,
    remote: SocketAddr,
    reader: FrameReader,
    /// Framed bytes the kernel would not take yet (bounded).
    out: Vec<u8>,
    /// Set by the first binding request that passed the integrity check.
    peer: Option<PeerKey>,
    /// Last frame received: a peer over its connection cap loses the
    /// connection heard from least recently.
    heard: Instant,
}

/// Per-thread counters, added to the shared atomics once per loop turn
/// instead of once per packet.
#[derive(Default)]
struct Local {
    packets_in: u64,
    bytes_in: u64,
    packets_out: u64,
    bytes_out: u64,
    send_dropped: u64,
    dropped: Dropped,
}

/// The sending half: UDP socket and TCP connections. Split from the peers
/// so a peer can be driven while the network is borrowed.
struct Net {
    socket: UdpSocket,
    /// UDP datagrams of this loop turn, sent together (`flush_udp`).
    udp_out: SendQueue,
    tcp: Vec<Option<TcpConn>>,
    tcp_by_addr: HashMap<SocketAddr, usize>,
    local: Local,
}

impl Net {
    fn send(&mut self, msg: TaggedBytesMut) {
        let len = msg.message.len() as u64;
        let sent = match msg.transport.transport_protocol {
            TransportProtocol::UDP => {
                // Counted when the batch goes (`flush_udp`).
                let done = self
                    .udp_out
                    .push(&self.socket, msg.message, msg.transport.peer_addr);
                self.count_flushed(done);
                return;
            }
            TransportProtocol::TCP => {
                let Some(conn) = self
                    .tcp_by_addr
                    .get(&msg.transport.peer_addr)
                    .and_then(|i| self.tcp[*i].as_mut())
                else {
                    return;
                };
                tcp::push_frame(&mut conn.out, &msg.message) && flush_tcp(conn)
            }
            _ => false,
        };
        if sent {
            self.local.packets_out += 1;
            self.local.bytes_out += len;
        }
    }

    /// Send this turn's UDP datagrams (one `sendmmsg` per batch).
    fn flush_udp(&mut self) {
        if self.udp_out.len() > 0 {
            let done = self.udp_out.flush(&self.socket);
            self.count_flushed(done);
        }
    }

    fn count_flushed(&mut self, done: Flushed) {
        self.local.packets_out += done.sent;
        self.local.bytes_out += done.bytes;
        // A full socket buffer drops the packet, like a congested link
        // (counted: a metric for operators, see OPERATIONS.md).
        self.local.send_dropped += done.would_block;
    }

    fn flush_peer(&mut self, peer: &mut Peer) {
        while let Some(msg) = peer.poll_write() {
            if let Some(msg) = peer.pace(msg, None) {
                self.send(msg);
            }
        }
        self.flush_own(peer);
    }

    /// Only what our own media path queued (forwarded media, resends):
    /// no sweep of rtc's pipeline.
    fn flush_own(&mut self, peer: &mut Peer) {
        while let Some((msg, resend)) = peer.poll_own() {
            if let Some(msg) = peer.pace(msg, Some(resend)) {
                self.send(msg);
            }
        }
    }

    /// Whatever the peer's pacer lets go by `now`.
    fn release_paced(&mut self, peer: &mut Peer, now: Instant) {
        while let Some(msg) = peer.release_paced(now) {
            self.send(msg);
        }
    }
}

/// Write what the kernel takes; `false` if the connection broke.
fn flush_tcp(conn: &mut TcpConn) -> bool {
    let mut written = 0;
    while written < conn.out.len() {
        match conn.stream.write(&conn.out[written..]) {
            Ok(0) => break,
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    conn.out.drain(..written);
    true
}

struct ConsultSlot {
    id: ConsultId,
    consult: Consult<PeerKey>,
    speaker: SpeakerDetector<PeerKey>,
}

pub(crate) struct Worker {
    index: usize,
    events: EventSink,
    poll: Poll,
    commands: Receiver<WorkerCommand>,
    counters: Arc<MediaCounters>,
    ufrag_owners: Arc<Mutex<HashMap<String, usize>>>,
    candidates: Candidates,
    media_path: crate::MediaPath,
    udp_local: SocketAddr,
    tcp_local: Option<SocketAddr>,
    net: Net,
    peers: Vec<Option<Peer>>,
    consults: Vec<Option<ConsultSlot>>,
    consult_by_id: HashMap<ConsultId, usize>,
    by_ufrag: HashMap<String, PeerKey>,
    addresses: AddressTable,
    /// Address entries this worker last added to the shared gauge.
    addresses_reported: u64,
    /// Drops since the last summary line.
    junk: Summary,
    /// Reused buffers: the hot path allocates none of its own.
    outputs: Vec<PeerOutput>,
    keyframe_wants: Vec<(PeerKey, Kind, Layer)>,
    /// Per peer key, refreshed once a second for layer allocation.
    views: Vec<PublisherView>,
    /// Read buffers for one `recvmmsg` (`None` only while `read_udp`
    /// hands its datagrams on).
    rx_batch: Option<rx::Batch>,
    /// Buffers for received datagrams, back from the fan-out once a
    /// forwarded packet's payload is no longer referenced: no allocation
    /// per datagram (callgrind put the allocation, its free and the
    /// `BytesMut` bookkeeping at ~1,000 instructions per forwarded packet).
    rx_pool: BufferPool,
    /// Read buffer for ICE-TCP connections.
    buf: Vec<u8>,
    /// Paused tracks this worker last added to the shared gauge.
    paused_reported: u64,
    /// The last `read_udp` stopped on its budget, not on `WouldBlock`: mio
    /// is edge-triggered, so no new event will come for what is queued.
    udp_more: bool,
}

enum Flow {
    Continue,
    Stop,
}

impl Worker {
    pub(crate) fn new(setup: WorkerSetup) -> Worker {
        let c = setup.candidates;
        Worker {
            index: setup.index,
            events: setup.events,
            poll: setup.poll,
            commands: setup.commands,
            counters: setup.counters,
            ufrag_owners: setup.ufrag_owners,
            candidates: c,
            media_path: setup.media_path,
            // rtc matches inbound packets to our candidates by local address,
            // so use the announced one (what the browser sends to).
            udp_local: SocketAddr::new(c.announce_ip, c.udp_port),
            tcp_local: c.tcp_port.map(|p| SocketAddr::new(c.announce_ip, p)),
            net: Net {
                socket: setup.socket,
                udp_out: SendQueue::new(),
                tcp: Vec::new(),
                tcp_by_addr: HashMap::new(),
                local: Local::default(),
            },
            peers: Vec::new(),
            consults: Vec::new(),
            consult_by_id: HashMap::new(),
            by_ufrag: HashMap::new(),
            addresses: AddressTable::default(),
            addresses_reported: 0,
            junk: Summary::new(Instant::now()),
            outputs: Vec::with_capacity(64),
            keyframe_wants: Vec::with_capacity(16),
            views: Vec::new(),
            rx_batch: Some(rx::Batch::new(rx::BATCH)),
            rx_pool: BufferPool::default(),
            buf: vec![0; 2048],
            udp_more: false,
            paused_reported: 0,
        }
    }

    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut next_tick = Instant::now() + TICK;
        loop {
            let now = Instant::now();
            let deadline = self.next_timeout().map_or(next_tick, |t| t.min(next_tick));
            let wait = if self.udp_more {
                Duration::ZERO
            } else {
                deadline.saturating_duration_since(now)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(wait))
                && e.kind() != ErrorKind::Interrupted
            {
                log::error!("media worker {} poll failed: {e}", self.index);
                break;
            }
            if self.udp_more {
                self.read_udp();
            }
            for event in events.iter() {
                match event.token() {
                    UDP => self.read_udp(),
                    WAKE => {
                        if let Flow::Stop = self.take_commands() {
                            self.close_all();
                            return;
                        }
                    }
                    Token(t) => self.tcp_ready(t - TCP_BASE),
                }
            }
            let now = Instant::now();
            self.fire_timers(now);
            if now >= next_tick {
                let elapsed = TICK + now.saturating_duration_since(next_tick);
                next_tick = now + TICK;
                for key in 0..self.peers.len() {
                    if let Some(p) = self.peers[key].as_mut() {
                        p.tick(now, elapsed);
                    }
                }
                self.allocate_layers(now);
                self.evaluate_speakers(now);
                self.report_limits(now);
            }
            // Before waiting again: what this turn produced leaves now.
            self.net.flush_udp();
            self.publish_counters();
        }
        self.close_all();
    }

    fn next_timeout(&mut self) -> Option<Instant> {
        self.peers
            .iter_mut()
            .flatten()
            .filter_map(|p| match (p.poll_timeout(), p.pacer_deadline()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            })
            .min()
    }

    fn fire_timers(&mut self, now: Instant) {
        for key in 0..self.peers.len() {
            let due = self.peers[key]
                .as_mut()
                .and_then(|p| p.poll_timeout())
                .is_some_and(|t| t <= now);
            if due {
                let held = self.peers[key].as_mut().and_then(|p| {
                    p.handle_timeout(now);
                    p.take_held_keyframe(now)
                });
                if let Some((kind, layer)) = held {
                    self.keyframe_from(key, kind, layer, true, now);
                }
                self.drive(key, now);
            }
            if let Some(p) = self.peers[key].as_mut()
                && p.pacer_deadline().is_some_and(|t| t <= now)
            {
                self.net.release_paced(p, now);
            }
        }
    }

    fn publish_counters(&mut self) {
        let l = std::mem::take(&mut self.net.local);
        l.dropped.publish(&self.counters);
        self.junk.add(&l.dropped);
        if l.packets_in > 0 {
            self.counters.packets_in.fetch_add(l.packets_in, Relaxed);
            self.counters.bytes_in.fetch_add(l.bytes_in, Relaxed);
        }
        if l.packets_out > 0 {
            self.counters.packets_out.fetch_add(l.packets_out, Relaxed);
            self.counters.bytes_out.fetch_add(l.bytes_out, Relaxed);
        }
        if l.send_dropped > 0 {
            self.counters
                .send_dropped
                .fetch_add(l.send_dropped, Relaxed);
        }
    }

    /// Once a second: the address gauge, and the junk summary line when
    /// one is due.
    fn report_limits(&mut self, now: Instant) {
        let held = self.addresses.len() as u64;
        let before = std::mem::replace(&mut self.addresses_reported, held);
        self.counters.media_addresses.fetch_add(held, Relaxed);
        self.counters.media_addresses.fetch_sub(before, Relaxed);
        if let Some(line) = self.junk.line(now) {
            log::debug!("media worker {}: {line}", self.index);
        }
    }

    // ---- network input -------------------------------------------------

    fn read_udp(&mut self) {
        self.udp_more = true;
        // Taken out of `self` while its datagrams are handled (each
        // handling needs the whole worker); put back before returning.
        let Some(mut batch) = self.rx_batch.take() else {
            return;
        };
        let mut read = 0;
        while read < READ_BUDGET {
            let n = match batch.recv(&self.net.socket) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.udp_more = false;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // e.g. ICMP port unreachable surfacing as ECONNREFUSED.
                    log::trace!("udp recv: {e}");
                    read += 1;
                    continue;
                }
            };
            read += n;
            for i in 0..n {
                self.net.local.packets_in += 1;
                match batch.get(i) {
                    Some((packet, r)) => {
                        self.net.local.bytes_in += packet.len() as u64;
                        self.handle_udp(packet, r.from, r.at);
                    }
                    None => self.net.local.dropped.not_webrtc += 1,
                }
            }
            if n < batch.capacity() {
                // The socket is drained (a short batch); poll says when more comes.
                self.udp_more = false;
                break;
            }
        }
        self.rx_batch = Some(batch);
    }

    /// One datagram from `from`, received at `now`.
    fn handle_udp(&mut self, packet: &[u8], from: SocketAddr, now: Instant) {
        let dropped = &mut self.net.local.dropped;
        // A binding request signed with a peer's current ICE password
        // (re)binds its sender's address; anything else (media, DTLS,
        // the browser's answers to rtc's own checks) must come from an
        // address such a request already bound. Nothing unproven
        // reaches rtc or takes a table slot.
        let key = if demux::is_binding_request(packet) {
            let Some(key) = checked_sender(&self.by_ufrag, &mut self.peers, packet) else {
                dropped.failed_check += 1;
                return;
            };
            match self.addresses.learn(from, key, now) {
                Learned::Known | Learned::Added { evicted: None } => {}
                Learned::Added { evicted: Some(_) } => dropped.evicted += 1,
                Learned::Refused(Refusal::PeerBudget) => {
                    dropped.refused_budget += 1;
                    return;
                }
                Learned::Refused(Refusal::TableFull) => {
                    dropped.refused_full += 1;
                    return;
                }
            }
            key
        } else if !demux::is_webrtc(packet) {
            dropped.not_webrtc += 1;
            return;
        } else {
            match self.addresses.route(&from, now) {
                Some(key) => key,
                None => {
                    dropped.unknown_address += 1;
                    return;
                }
            }
        };
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.udp_local,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            // rtc takes ownership of each datagram: one copy per packet,
            // into a buffer of the pool.
            message: {
                let mut message = self.rx_pool.take(packet.len());
                message.extend_from_slice(packet);
                message
            },
        };
        if let Some(peer) = self.peers.get_mut(key).and_then(|p| p.as_mut()) {
            peer.handle_read(msg);
            self.drive(key, now);
        }
    }

    fn add_tcp(&mut self, stream: TcpStream, remote: SocketAddr, received: Vec<u8>) {
        let live = self.net.tcp.iter().flatten().count();
        let Some(local) = self.tcp_local else { return };
        if live >= MAX_TCP {
            return;
        }
        let slot = match self.net.tcp.iter().position(|c| c.is_none()) {
            Some(i) => i,
            None => {
                self.net.tcp.push(None);
                self.net.tcp.len() - 1
            }
        };
        let mut stream = stream;
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(TCP_BASE + slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("register ice-tcp connection: {e}");
            return;
        }
        let mut reader = FrameReader::default();
        reader.extend(&received);
        self.net.tcp[slot] = Some(TcpConn {
            stream,
            remote,
            reader,
            out: Vec::new(),
            peer: None,
            heard: Instant::now(),
        });
        self.net.tcp_by_addr.insert(remote, slot);
        let _ = local;
        self.tcp_frames(slot);
    }

    fn tcp_ready(&mut self, slot: usize) {
        let mut broken = false;
        if let Some(conn) = self.net.tcp.get_mut(slot).and_then(|c| c.as_mut()) {
            loop {
                match conn.stream.read(&mut self.buf) {
                    Ok(0) => {
                        broken = true;
                        break;
                    }
                    Ok(n) => conn.reader.extend(&self.buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        broken = true;
                        break;
                    }
                }
            }
            if !broken && !conn.out.is_empty() {
                broken = !flush_tcp(conn);
            }
        } else {
            return;
        }
        if !self.tcp_frames(slot) || broken {
            self.close_tcp(slot);
        }
    }

    /// Hand complete frames to their peer; `false` if the stream is bad.
    /// A connection belongs to no peer until a binding request on it
    /// passes the integrity check; until then any other frame closes it.
    fn tcp_frames(&mut self, slot: usize) -> bool {
        let Some(local) = self.tcp_local else {
            return false;
        };
        loop {
            let Some(conn) = self.net.tcp.get_mut(slot).and_then(|c| c.as_mut()) else {
                return false;
            };
            let range = match conn.reader.next_frame() {
                Frame::Ready(r) => r,
                Frame::Partial => return true,
                Frame::TooLarge => return false,
            };
            let frame = &conn.reader.bytes()[range.clone()];
            let dropped = &mut self.net.local.dropped;
            let now = Instant::now();
            let key = if demux::is_binding_request(frame) {
                match checked_sender(&self.by_ufrag, &mut self.peers, frame) {
                    Some(key) => key,
                    None => {
                        dropped.failed_check += 1;
                        if conn.peer.is_none() {
                            return false;
                        }
                        continue;
                    }
                }
            } else if !demux::is_webrtc(frame) {
                dropped.not_webrtc += 1;
                continue;
            } else {
                match conn.peer {
                    Some(key) => key,
                    None => {
                        dropped.unknown_address += 1;
                        return false;
                    }
                }
            };
            conn.heard = now;
            if conn.peer != Some(key) && !self.attach_tcp(slot, key) {
                return false;
            }
            let Some(conn) = self.net.tcp.get_mut(slot).and_then(|c| c.as_mut()) else {
                return false;
            };
            let frame = &conn.reader.bytes()[range];
            self.net.local.packets_in += 1;
            self.net.local.bytes_in += frame.len() as u64;
            let msg = TaggedBytesMut {
                now,
                transport: TransportContext {
                    local_addr: local,
                    peer_addr: conn.remote,
                    ecn: None,
                    transport_protocol: TransportProtocol::TCP,
                },
                message: BytesMut::from(frame),
            };
            if let Some(peer) = self.peers.get_mut(key).and_then(|p| p.as_mut()) {
                peer.handle_read(msg);
                self.drive(key, now);
            }
        }
    }

    /// Give an authenticated connection to `key`, within the peer's
    /// budget of new addresses; past [`MAX_ADDRS_PER_PEER`] connections
    /// its least recently heard other one is closed. `false`: refused.
    fn attach_tcp(&mut self, slot: usize, key: PeerKey) -> bool {
        if !self.addresses.admit_connection(key) {
            self.net.local.dropped.refused_budget += 1;
            return false;
        }
        let mine: Vec<(usize, Instant)> = (0..self.net.tcp.len())
            .filter(|i| *i != slot)
            .filter_map(|i| {
                let c = self.net.tcp[i].as_ref()?;
                (c.peer == Some(key)).then_some((i, c.heard))
            })
            .collect();
        if mine.len() >= MAX_ADDRS_PER_PEER
            && let Some((stalest, _)) = mine.iter().min_by_key(|(_, heard)| *heard)
        {
            self.close_tcp(*stalest);
            self.net.local.dropped.evicted += 1;
        }
        if let Some(conn) = self.net.tcp.get_mut(slot).and_then(|c| c.as_mut()) {
            conn.peer = Some(key);
        }
        true
    }

    fn close_tcp(&mut self, slot: usize) {
        if let Some(mut conn) = self.net.tcp.get_mut(slot).and_then(|c| c.take()) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            if self.net.tcp_by_addr.get(&conn.remote) == Some(&slot) {
                self.net.tcp_by_addr.remove(&conn.remote);
            }
        }
    }

    // ---- driving peers and forwarding ----------------------------------

    /// Run one peer until it has nothing more to say: its packets go out,
    /// its media fans out to the consult, its keyframe requests go upstream.
    ///
    /// Every `poll_read`/`poll_write` on an rtc connection sweeps its whole
    /// handler pipeline, even when nothing is queued, so a media packet gets
    /// one pass: drain, flush, fan out. Only a pass that saw a state or
    /// signalling change (connection up, track opened, keyframe request) is
    /// followed by another, for anything that change released.
    fn drive(&mut self, key: PeerKey, now: Instant) {
        loop {
            let Some(peer) = self.peers.get_mut(key).and_then(|p| p.as_mut()) else {
                return;
            };
            let mut again = peer.drain(&mut self.outputs);
            peer.take_keyframe_wants(&mut self.keyframe_wants);
            // After draining: reads can queue writes (RTCP feedback, DTLS),
            // RTP media cannot (a sweep of rtc's write pipeline saved per
            // media packet; see `TimedPc`).
            if again || peer.writes_pending() {
                self.net.flush_peer(peer);
            } else {
                self.net.flush_own(peer);
            }
            let consult = peer.consult;
            if self.outputs.is_empty() && self.keyframe_wants.is_empty() && !again {
                return;
            }
            let mut outputs = std::mem::take(&mut self.outputs);
            for output in outputs.drain(..) {
                match output {
                    PeerOutput::Rtp {
                        kind,
                        layer,
                        level,
                        packet,
                    } => {
                        if let Some(level) = level {
                            self.audio_level(key, consult, level, now);
                        }
                        self.fan_out(key, consult, kind, layer, &packet, now);
                        self.rx_pool.reclaim(packet.payload);
                    }
                    PeerOutput::KeyframeRequest {
                        source,
                        kind,
                        layer,
                    } => {
                        again = true;
                        self.keyframe(source, kind, layer, now);
                    }
                    PeerOutput::Published(kind) => {
                        again = true;
                        self.published(key, consult, kind)
                    }
                    PeerOutput::LayerAppeared => self.reallocate_subscribers(key, consult, now),
                }
            }
            self.outputs = outputs;
            // Rate-limited per publisher layer; a request that went out may
            // have released something to flush, so only then drive again.
            while let Some((source, kind, layer)) = self.keyframe_wants.pop() {
                again |= self.keyframe(source, kind, layer, now);
            }
            if !again {
                return;
            }
        }
    }

    /// The hot path: one publisher packet to every other member.
    fn fan_out(
        &mut self,
        source: PeerKey,
        consult: usize,
        kind: Kind,
        layer: Layer,
        packet: &crate::inbound::Media,
        now: Instant,
    ) {
        let Some(slot) = self.consults.get(consult).and_then(|c| c.as_ref()) else {
            return;
        };
        for &sub in slot.consult.members() {
            if sub == source {
                continue;
            }
            if let Some(peer) = self.peers.get_mut(sub).and_then(|p| p.as_mut())
                && peer.forward(
                    source,
                    kind,
                    layer,
                    packet,
                    (now, &mut self.net.udp_out.pool),
                ) > 0
            {
                if peer.owns_media() {
                    self.net.flush_own(peer);
                } else {
                    self.net.flush_peer(peer);
                }
            }
        }
    }

    /// Returns whether a request went out (not rate-limited).
    fn keyframe(&mut self, source: PeerKey, kind: Kind, layer: Layer, now: Instant) -> bool {
        self.keyframe_from(source, kind, layer, false, now)
    }

    /// `force`: past the publisher layer's rate limit (once per
    /// subscription, see `Peer::first_picture`).
    fn keyframe_from(
        &mut self,
        source: PeerKey,
        kind: Kind,
        layer: Layer,
        force: bool,
        now: Instant,
    ) -> bool {
        let mut sent = false;
        if let Some(peer) = self.peers.get_mut(source).and_then(|p| p.as_mut()) {
            sent = peer.request_keyframe(kind, layer, force, now);
            if sent {
                self.counters.keyframe_requests.fetch_add(1, Relaxed);
                self.net.flush_peer(peer);
            }
        }
        sent
    }

    /// One audio packet's RFC 6464 level: feed the consult's detector.
    fn audio_level(&mut self, key: PeerKey, consult: usize, level: u8, now: Instant) {
        let Some(slot) = self.consults.get_mut(consult).and_then(|c| c.as_mut()) else {
            return;
        };
        if let Some(change) = slot.speaker.on_level(key, level, now) {
            self.announce_speaker(consult, change);
        }
    }

    fn evaluate_speakers(&mut self, now: Instant) {
        for c in 0..self.consults.len() {
            let change = self
                .consults
                .get_mut(c)
                .and_then(|s| s.as_mut())
                .and_then(|s| s.speaker.evaluate(now));
            if let Some(change) = change {
                self.announce_speaker(c, change);
            }
        }
    }

    /// Tell every member of `consult` who speaks now.
    fn announce_speaker(&mut self, consult: usize, speaker: Option<PeerKey>) {
        let Some(slot) = self.consults.get(consult).and_then(|c| c.as_ref()) else {
            return;
        };
        let participant = speaker
            .and_then(|k| self.peers.get(k))
            .and_then(|p| p.as_ref())
            .map(|p| p.participant.clone());
        log::debug!(
            "media worker {}: active speaker {}",
            self.index,
            if participant.is_some() {
                "changed"
            } else {
                "none"
            }
        );
        for &member in slot.consult.members() {
            if let Some(p) = self.peers.get(member).and_then(|p| p.as_ref()) {
                p.notify(MediaEvent::ActiveSpeaker {
                    participant: participant.clone(),
                });
            }
        }
    }

    /// What every publisher sends now, indexed by peer key, in the reused
    /// buffer taken out of `self.views` (the caller puts it back).
    fn publisher_views(&mut self, now: Instant) -> Vec<PublisherView> {
        let mut views = std::mem::take(&mut self.views);
        views.clear();
        views.extend(self.peers.iter().map(|p| {
            p.as_ref()
                .map(|p| p.publisher_view(now))
                .unwrap_or_default()
        }));
        views
    }

    /// A layer of `source`'s video appeared: its subscribers in `consult`
    /// choose their layers again at once (allocation only; the quality
    /// counters stay with the once-a-second round).
    fn reallocate_subscribers(&mut self, source: PeerKey, consult: usize, now: Instant) {
        let views = self.publisher_views(now);
        let Some(slot) = self.consults.get(consult).and_then(|c| c.as_ref()) else {
            self.views = views;
            return;
        };
        for &sub in slot.consult.members() {
            if sub != source
                && let Some(p) = self.peers.get_mut(sub).and_then(|p| p.as_mut())
            {
                p.allocate(&views, now);
            }
        }
        self.views = views;
    }

    /// Once a second: every subscriber's layers from its bandwidth
    /// estimate, its preferences and what the publishers send.
    fn allocate_layers(&mut self, now: Instant) {
        let views = self.publisher_views(now);
        let (mut up, mut down, mut resumed, mut nacks, mut paused) = (0, 0, 0, 0, 0);
        let (mut retransmitted, mut suppressed, mut unrepaired) = (0, 0, 0);
        let mut srtp_refused = [0u64; 3];
        for p in self.peers.iter_mut().flatten() {
            p.allocate(&views, now);
            self.net.local.send_dropped += p.take_pacer_drops();
            let q = p.take_quality();
            up += q.switches_up;
            down += q.switches_down;
            resumed += q.resumed;
            nacks += q.nacks;
            retransmitted += q.retransmitted;
            suppressed += q.retransmits_suppressed;
            unrepaired += q.unrepaired;
            for (total, n) in srtp_refused.iter_mut().zip(q.srtp_refused) {
                *total += n;
            }
            paused += p.paused as u64;
        }
        self.views = views;
        let c = &self.counters;
        c.layer_switches_up.fetch_add(up, Relaxed);
        c.layer_switches_down.fetch_add(down, Relaxed);
        c.video_resumes.fetch_add(resumed, Relaxed);
        c.nacks_received.fetch_add(nacks, Relaxed);
        c.retransmitted.fetch_add(retransmitted, Relaxed);
        c.retransmits_suppressed.fetch_add(suppressed, Relaxed);
        c.unrepaired.fetch_add(unrepaired, Relaxed);
        c.srtp_replayed.fetch_add(srtp_refused[0], Relaxed);
        c.srtp_failed_auth.fetch_add(srtp_refused[1], Relaxed);
        c.srtp_malformed.fetch_add(srtp_refused[2], Relaxed);
        c.paused_tracks.fetch_add(paused, Relaxed);
        c.paused_tracks.fetch_sub(
            std::mem::replace(&mut self.paused_reported, paused),
            Relaxed,
        );
    }

    /// A participant's track started: every other member subscribes and
    /// gets a new offer.
    fn published(&mut self, key: PeerKey, consult: usize, kind: Kind) {
        let Some(slot) = self.consults.get_mut(consult).and_then(|c| c.as_mut()) else {
            return;
        };
        let subscribers = slot.consult.publish(key, kind);
        self.counters.tracks.fetch_add(1, Relaxed);
        let Some(participant) = self
            .peers
            .get(key)
            .and_then(|p| p.as_ref())
            .map(|p| p.participant.clone())
        else {
            return;
        };
        for sub in subscribers {
            if let Some(peer) = self.peers.get_mut(sub).and_then(|p| p.as_mut()) {
                peer.subscribe(key, &participant, kind);
                self.net.flush_peer(peer);
            }
        }
    }

    // ---- commands from the edge ----------------------------------------

    fn take_commands(&mut self) -> Flow {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                WorkerCommand::Media(m) => self.media_command(m),
                WorkerCommand::Tcp {
                    stream,
                    remote,
                    received,
                } => self.add_tcp(stream, remote, received),
                WorkerCommand::Shutdown => return Flow::Stop,
            }
        }
        Flow::Continue
    }

    fn find(&self, consult: &str, participant: &str) -> Option<PeerKey> {
        let slot = self
            .consults
            .get(*self.consult_by_id.get(consult)?)?
            .as_ref()?;
        slot.consult.find(participant)
    }

    fn media_command(&mut self, command: MediaCommand) {
        let now = Instant::now();
        match command {
            MediaCommand::Join {
                consult,
                participant,
            } => self.join(consult, participant, now),
            MediaCommand::Answer {
                consult,
                participant,
                sdp,
            } => {
                if let Some(key) = self.find(&consult, &participant) {
                    if let Some(p) = self.peers[key].as_mut() {
                        p.answer(sdp, now);
                    }
                    self.register_ufrags(key);
                    self.drive(key, now);
                }
            }
            MediaCommand::Candidate {
                consult,
                participant,
                candidate,
            } => {
                if let Some(key) = self.find(&consult, &participant)
                    && let Some(p) = self.peers[key].as_mut()
                {
                    p.remote_candidate(candidate);
                }
            }
            MediaCommand::IceRestart {
                consult,
                participant,
            } => {
                if let Some(key) = self.find(&consult, &participant) {
                    if let Some(p) = self.peers[key].as_mut() {
                        p.restart_ice();
                    }
                    // rtc forgot the peer's candidates: new budget.
                    self.addresses.new_ice_session(key);
                    self.register_ufrags(key);
                    self.drive(key, now);
                }
            }
            MediaCommand::Leave {
                consult,
                participant,
            } => {
                if let Some(key) = self.find(&consult, &participant) {
                    self.remove_peer(key);
                }
            }
            MediaCommand::Preferences {
                consult,
                participant,
                audio_only,
                mut max_quality,
            } => {
                if let Some(key) = self.find(&consult, &participant) {
                    max_quality.truncate(MAX_PREFERENCES);
                    let views = self.publisher_views(now);
                    if let Some(p) = self.peers[key].as_mut() {
                        p.set_preferences(audio_only, max_quality);
                        p.allocate(&views, now);
                    }
                    self.views = views;
                    self.drive(key, now);
                }
            }
            MediaCommand::Screen {
                consult,
                participant,
                on,
            } => {
                if let Some(key) = self.find(&consult, &participant) {
                    let publish = self.peers[key].as_mut().map(|p| p.set_screen(on));
                    if publish == Some(true)
                        && let Some(c) = self.peers[key].as_ref().map(|p| p.consult)
                    {
                        self.published(key, c, Kind::Screen);
                    }
                    if on {
                        // Subscribers saw nothing of it while it was off.
                        self.keyframe(key, Kind::Screen, TOP, now);
                    }
                    self.drive(key, now);
                }
            }
            MediaCommand::Keyframe {
                consult,
                participant,
                source,
            } => {
                let (Some(sub), Some(src)) = (
                    self.find(&consult, &participant),
                    self.find(&consult, &source),
                ) else {
                    return;
                };
                if sub == src {
                    return;
                }
                for kind in [Kind::Video, Kind::Screen] {
                    let ask = self.peers[sub]
                        .as_mut()
                        .and_then(|p| p.first_picture(src, kind));
                    if let Some((layer, force)) = ask {
                        self.keyframe_from(src, kind, layer, force, now);
                    }
                }
            }
        }
    }

    fn join(&mut self, consult: ConsultId, participant: String, now: Instant) {
        // A second join for the same participant replaces the first session
        // (a reload, or a rejoin after a transport failure).
        if let Some(old) = self.find(&consult, &participant) {
            self.remove_peer(old);
        }
        let c = match self.consult_by_id.get(&consult) {
            Some(c) => *c,
            None => {
                let slot = ConsultSlot {
                    id: consult.clone(),
                    consult: Consult::default(),
                    speaker: SpeakerDetector::default(),
                };
                let c = match self.consults.iter().position(|c| c.is_none()) {
                    Some(i) => {
                        self.consults[i] = Some(slot);
                        i
                    }
                    None => {
                        self.consults.push(Some(slot));
                        self.consults.len() - 1
                    }
                };
                self.consult_by_id.insert(consult.clone(), c);
                self.counters.consults.fetch_add(1, Relaxed);
                c
            }
        };
        let key = match self.peers.iter().position(|p| p.is_none()) {
            Some(i) => i,
            None => {
                self.peers.push(None);
                self.peers.len() - 1
            }
        };
        let Some(slot) = self.consults[c].as_mut() else {
            return;
        };
        let subscriptions: Vec<_> = slot
            .consult
            .join(key, participant.clone())
            .into_iter()
            .map(|s| (s.source, s.source_participant, s.kind))
            .collect();
        let started = Instant::now();
        let joined = Peer::join(
            participant.clone(),
            (c, consult.clone()),
            self.events.clone(),
            self.candidates,
            &subscriptions,
            PeerOptions {
                simulcast: true,
                own_path: self.media_path == crate::MediaPath::Own,
            },
            now,
        );
        log::debug!(
            "media worker {}: participant {participant}'s peer connection and offer took {} µs",
            self.index,
            started.elapsed().as_micros()
        );
        match joined {
            Ok(peer) => {
                // Speaker changes are announced as they happen; a newcomer
                // learns the one in progress now.
                if let Some(speaker) = slot.speaker.current()
                    && let Some(name) = self.peers.get(speaker).and_then(|p| p.as_ref())
                {
                    peer.notify(MediaEvent::ActiveSpeaker {
                        participant: Some(name.participant.clone()),
                    });
                }
                self.peers[key] = Some(peer);
                self.counters.peers.fetch_add(1, Relaxed);
                self.register_ufrags(key);
                self.drive(key, now);
            }
            Err(e) => {
                log::warn!(
                    "media worker {}: creating a peer connection failed: {e}",
                    self.index
                );
                let _ = self.events.send(MediaEnvelope {
                    consult,
                    participant,
                    event: MediaEvent::Error {
                        code: "media_error".into(),
                        message: "could not start media".into(),
                    },
                });
                slot.consult.leave(key);
                self.drop_consult_if_empty(c);
            }
        }
    }

    fn register_ufrags(&mut self, key: PeerKey) {
        let Some(peer) = self.peers[key].as_ref() else {
            return;
        };
        let mut owners = None;
        for ufrag in &peer.ufrags {
            if !self.by_ufrag.contains_key(ufrag) {
                self.by_ufrag.insert(ufrag.clone(), key);
                let owners = owners.get_or_insert_with(|| {
                    self.ufrag_owners.lock().unwrap_or_else(|e| e.into_inner())
                });
                owners.insert(ufrag.clone(), self.index);
            }
        }
    }

    fn remove_peer(&mut self, key: PeerKey) {
        let Some(mut peer) = self.peers.get_mut(key).and_then(|p| p.take()) else {
            return;
        };
        peer.close();
        self.net.flush_peer(&mut peer);
        self.counters.peers.fetch_sub(1, Relaxed);
        self.counters
            .tracks
            .fetch_sub(peer.published() as u64, Relaxed);
        {
            let mut owners = self.ufrag_owners.lock().unwrap_or_else(|e| e.into_inner());
            for ufrag in &peer.ufrags {
                self.by_ufrag.remove(ufrag);
                owners.remove(ufrag);
            }
        }
        self.addresses.forget(key);
        let tcp: Vec<usize> = (0..self.net.tcp.len())
            .filter(|i| {
                self.net.tcp[*i]
                    .as_ref()
                    .is_some_and(|c| c.peer == Some(key))
            })
            .collect();
        for slot in tcp {
            self.close_tcp(slot);
        }
        let c = peer.consult;
        let Some(slot) = self.consults.get_mut(c).and_then(|s| s.as_mut()) else {
            return;
        };
        let speaker_change = slot.speaker.remove(key, Instant::now());
        let leavers = slot.consult.leave(key);
        if let Some(change) = speaker_change {
            self.announce_speaker(c, change);
        }
        for sub in leavers {
            if let Some(p) = self.peers.get_mut(sub).and_then(|p| p.as_mut()) {
                p.unsubscribe(key);
                self.net.flush_peer(p);
            }
        }
        self.drop_consult_if_empty(c);
    }

    fn drop_consult_if_empty(&mut self, c: usize) {
        if self
            .consults
            .get(c)
            .and_then(|s| s.as_ref())
            .is_some_and(|s| s.consult.is_empty())
            && let Some(slot) = self.consults[c].take()
        {
            self.consult_by_id.remove(&slot.id);
            self.counters.consults.fetch_sub(1, Relaxed);
        }
    }

    fn close_all(&mut self) {
        for key in 0..self.peers.len() {
            self.remove_peer(key);
        }
        // The DTLS close_notify of every peer.
        self.net.flush_udp();
        self.publish_counters();
    }
}

/// The peer a binding request speaks for: its USERNAME names a peer's
/// current ufrag and its MESSAGE-INTEGRITY verifies with that peer's
/// password. `None` otherwise.
fn checked_sender(
    by_ufrag: &HashMap<String, PeerKey>,
    peers: &mut [Option<Peer>],
    packet: &[u8],
) -> Option<PeerKey> {
    let ufrag = demux::local_ufrag(packet)?;
    let key = *by_ufrag.get(ufrag)?;
    let peer = peers.get_mut(key)?.as_mut()?;
    peer.check_stun(ufrag, packet).then_some(key)
}
