//! Media threads: each owns many synthetic participants (one UDP socket
//! each, so the SFU sees distinct transport addresses) and drives them
//! with mio. A participant is either a real WebRTC peer on `rtc`'s sans-I/O
//! core (ICE full agent, controlling; DTLS client; SRTP) that answers the
//! SFU's offers, or a plain UDP sender/receiver for the relay baseline.
//!
//! Publishers send a VP8 frame every 1/fps and an Opus packet every 20 ms;
//! subscribers read the stamp at the end of every payload and account
//! latency, loss and jitter per stream. Statistics are kept thread-local
//! and merged into a shared window every 200 ms.
//!
//! Where it changes the server's work, a peer behaves like a browser
//! (libwebrtc): transport-wide sequence numbers on what it sends and
//! transport-wide CC feedback (TWCC) for what it receives (so the server
//! runs its congestion control and pacer), clusters of RTP padding-only
//! packets on the video SSRC like libwebrtc's bandwidth probes, and, when
//! asked (`rx_drop`), a network-like loss of received video before SRTP so
//! the NACK generator asks for retransmissions. A wire-most interceptor
//! ([`WireTap`]) counts the feedback that really left and arrived.

use crate::media_model::{
    OPUS_TS_STEP, STAMP_LEN, Stamp, VideoParams, opus_payload, packetize_vp8,
};
use crate::stats::{Histogram, StreamRx, Window};
use bytes::{Bytes, BytesMut};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use rtc::interceptor::{Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_nack, configure_rtcp_reports, configure_simulcast_extension_headers, configure_twcc,
    configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use sfu::endpoint::{Endpoint, Read, RtpOut};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

const WAKE: Token = Token(usize::MAX);
/// Capacity of the datagram buffers of our own media path.
const RX_BUFFER: usize = 2048;
/// Peers without media a media thread describes when they leave.
const SILENT_NOTES: u32 = 10;
const HOUSEKEEPING: Duration = Duration::from_millis(10);
const FLUSH: Duration = Duration::from_millis(200);
const OPUS_INTERVAL: Duration = Duration::from_millis(20);
const OPUS_PT: u8 = 111;
const VP8_PT: u8 = 96;
/// Bytes SRTP adds (the AEAD_AES_128_GCM tag rtc negotiates): the relay baseline pads by this
/// much so it moves the same datagram sizes.
pub const SRTP_OVERHEAD: usize = 16;
/// Padding bytes in a padding-only packet: what rtc's RTP marshaller writes
/// for an empty payload with the P bit (it pads to a 4-byte boundary only;
/// libwebrtc's probes carry up to 224).
pub const PADDING_LEN: usize = 4;
/// Spacing of the packets of one probe cluster (libwebrtc spreads a cluster
/// over >= 15 ms at the probing rate).
const PROBE_GAP: Duration = Duration::from_millis(1);

/// How peers behave beyond sending media (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Behaviour {
    /// A probe cluster of `probe_packets` padding-only packets every this
    /// long, per publisher (first one at a random phase).
    pub probe_every: Duration,
    /// Packets per probe cluster; 0 = no padding.
    pub probe_packets: u32,
    /// Fraction of received video datagrams dropped before SRTP (0..1).
    pub rx_drop: f64,
    /// Transport-wide sequence numbers on what the peers send (browsers
    /// do; rtc's default registry does not, so the server then sends the
    /// publishers no TWCC feedback). False only for A/B runs against the
    /// generator as it was before (`--legacy-peers`).
    pub twcc_send: bool,
    /// Media on our own path once DTLS is done (`sfu::endpoint`: our SRTP
    /// and SRTCP, feedback, NACKs and reports) instead of rtc's RTP
    /// pipeline and interceptors, which cost the generator ~4x what the
    /// server spends per packet and saturated its core first.
    pub own_media: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            probe_every: Duration::from_secs(5),
            probe_packets: 20,
            rx_drop: 0.0,
            twcc_send: true,
            own_media: true,
        }
    }
}

/// Counters a media thread's interceptors share with it.
#[derive(Debug, Default)]
pub struct WireCounters {
    /// TWCC feedback packets we sent (for what we received).
    pub twcc_sent: AtomicU64,
    /// TWCC feedback packets the server sent us (for what we published).
    pub twcc_received: AtomicU64,
    /// NACK packets we sent.
    pub nacks_sent: AtomicU64,
    /// Padding-only RTP packets that left through the pipeline.
    pub padding_sent: AtomicU64,
}

/// Wire-most interceptor (below the TWCC sender, so it sees what leaves
/// last and what arrives first): counts TWCC feedback and NACKs both ways
/// and padding-only packets, passes everything through unchanged.
pub struct WireTap {
    counters: Arc<WireCounters>,
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

impl WireTap {
    pub fn new(counters: Arc<WireCounters>) -> WireTap {
        WireTap {
            counters,
            reads: VecDeque::new(),
            writes: VecDeque::new(),
        }
    }
}

fn count_twcc(packets: &[Box<dyn rtc::rtcp::Packet>]) -> u64 {
    packets
        .iter()
        .filter(|p| p.as_any().is::<TransportLayerCc>())
        .count() as u64
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for WireTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            self.counters
                .twcc_received
                .fetch_add(count_twcc(packets), Relaxed);
        }
        self.reads.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        match &msg.message.packet {
            Packet::Rtcp(packets) => {
                self.counters
                    .twcc_sent
                    .fetch_add(count_twcc(packets), Relaxed);
                let nacks = packets
                    .iter()
                    .filter(|p| p.as_any().is::<TransportLayerNack>())
                    .count() as u64;
                self.counters.nacks_sent.fetch_add(nacks, Relaxed);
            }
            Packet::Rtp(p) if p.header.padding && p.payload.is_empty() => {
                self.counters.padding_sent.fetch_add(1, Relaxed);
            }
            _ => {}
        }
        self.writes.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }
    fn handle_timeout(&mut self, _now: Instant) -> Result<(), Self::Error> {
        Ok(())
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }
}

impl Interceptor for WireTap {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}

/// Is this datagram SRTP (not SRTCP, STUN or DTLS; RFC 7983 and 5761), and
/// which payload type does its (clear) header carry?
pub fn rtp_payload_type(d: &[u8]) -> Option<u8> {
    let (&b0, &b1) = (d.first()?, d.get(1)?);
    if d.len() < 12 || !(128..=191).contains(&b0) || (192..=223).contains(&b1) {
        return None;
    }
    Some(b1 & 0x7f)
}

/// A random u64 as a uniform number in [0, 1).
fn unit_interval(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// The payload types of the `m=video` sections of an SDP.
pub fn video_payload_types(sdp: &str) -> Vec<u8> {
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix("m=video "))
        .flat_map(|rest| rest.split_whitespace().skip(2))
        .filter_map(|pt| pt.parse::<u8>().ok())
        .filter(|pt| *pt < 128)
        .collect()
}

/// A padding-only datagram for the plain relay: RTP header with the P bit,
/// [`PADDING_LEN`] padding bytes (the last one their count) and room for the
/// SRTP tag, the same size an SRTP padding probe has.
pub fn plain_padding(pt: u8, seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
    let mut d = Vec::with_capacity(12 + PADDING_LEN + SRTP_OVERHEAD);
    d.push(0xa0);
    d.push(pt & 0x7f);
    d.extend_from_slice(&seq.to_be_bytes());
    d.extend_from_slice(&ts.to_be_bytes());
    d.extend_from_slice(&ssrc.to_be_bytes());
    d.extend_from_slice(&[0; PADDING_LEN - 1]);
    d.push(PADDING_LEN as u8);
    d.extend_from_slice(&[0; SRTP_OVERHEAD]);
    d
}

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the process's measurement epoch.
pub fn now_ns(now: Instant) -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    now.saturating_duration_since(epoch).as_nanos() as u64
}

/// What a media thread tells a participant's signaling task.
#[derive(Debug)]
pub enum PeerEvent {
    Answer(String),
    /// Our offer (Janus publishers: the client offers).
    Offer(String),
}

/// What media threads tell the orchestrator.
#[derive(Debug)]
pub enum Status {
    FirstMedia,
    Failed { id: u64, reason: String },
}

pub enum PeerMode {
    /// A WebRTC peer; its answers go to the signaling task.
    Rtc { events: UnboundedSender<PeerEvent> },
    /// Plain UDP through the relay at `relay`, to the partners `to` (one
    /// in a consult, the others of a group).
    Plain {
        relay: SocketAddr,
        to: Vec<SocketAddr>,
    },
}

pub enum Command {
    Add {
        id: u64,
        socket: std::net::UdpSocket,
        mode: PeerMode,
        publish: bool,
        started: Instant,
    },
    Offer {
        id: u64,
        sdp: String,
    },
    /// Create our own offer (microphone + camera) and emit it as
    /// `PeerEvent::Offer`: Janus expects publishers to offer.
    CreateOffer {
        id: u64,
    },
    /// The remote answer to the offer made by `CreateOffer`.
    Answer {
        id: u64,
        sdp: String,
    },
    Remove {
        id: u64,
    },
    Shutdown,
}

/// Accumulated measurements of one window.
#[derive(Debug, Clone, Default)]
pub struct Acc {
    pub latency: Histogram,
    pub join: Histogram,
    pub rx: Window,
    pub packets: u64,
    pub bytes: u64,
    pub jitter_sum_us: f64,
    pub jitter_samples: u64,
    /// What the peers did besides media (see [`WireCounters`]).
    pub twcc_sent: u64,
    pub twcc_received: u64,
    pub nacks_sent: u64,
    pub padding_sent: u64,
    /// Received video datagrams dropped on purpose (`Behaviour::rx_drop`).
    pub rx_dropped: u64,
}

impl Acc {
    /// What an own-path peer counted on the wire (`sfu::endpoint`; rtc
    /// peers' is counted by the [`WireTap`]).
    fn add_wire(&mut self, c: sfu::endpoint::Counters) {
        self.twcc_sent += c.twcc_sent;
        self.twcc_received += c.twcc_received;
        self.nacks_sent += c.nacks_sent;
        self.padding_sent += c.padding_sent;
    }

    pub fn merge(&mut self, o: &Acc) {
        self.latency.merge(&o.latency);
        self.join.merge(&o.join);
        self.rx.add(o.rx);
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.jitter_sum_us += o.jitter_sum_us;
        self.jitter_samples += o.jitter_samples;
        self.twcc_sent += o.twcc_sent;
        self.twcc_received += o.twcc_received;
        self.nacks_sent += o.nacks_sent;
        self.padding_sent += o.padding_sent;
        self.rx_dropped += o.rx_dropped;
    }
}

/// The orchestrator's side of a media thread.
pub struct MediaThread {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    pub window: Arc<Mutex<Acc>>,
    /// Media packets received so far (for the progress display).
    pub packets: Arc<AtomicU64>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl MediaThread {
    pub fn spawn(
        index: usize,
        video: VideoParams,
        behaviour: Behaviour,
        status: UnboundedSender<Status>,
    ) -> std::io::Result<MediaThread> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let (tx, rx) = channel();
        let window = Arc::new(Mutex::new(Acc::default()));
        let packets = Arc::new(AtomicU64::new(0));
        let mut worker = Worker {
            poll,
            commands: rx,
            video,
            behaviour,
            wire: Arc::new(WireCounters::default()),
            status,
            shared: window.clone(),
            packets: packets.clone(),
            peers: Vec::new(),
            by_id: HashMap::new(),
            schedule: BinaryHeap::new(),
            acc: Acc::default(),
            buf: vec![0; 2048],
            rx: BytesMut::with_capacity(RX_BUFFER),
            tx: BytesMut::with_capacity(RX_BUFFER),
            silent_noted: 0,
            fill: (0..1500u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
            seed: 0x9e37_79b9_7f4a_7c15 ^ index as u64,
        };
        let join = std::thread::Builder::new()
            .name(format!("media-{index}"))
            .spawn(move || worker.run())?;
        Ok(MediaThread {
            commands: tx,
            waker,
            window,
            packets,
            join: Some(join),
        })
    }

    pub fn send(&self, c: Command) {
        if self.commands.send(c).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Add a WebRTC peer on a fresh UDP socket on `local_ip`; its SDP comes
    /// back on the returned channel.
    pub fn add_rtc_peer(
        &self,
        id: u64,
        local_ip: IpAddr,
        publish: bool,
        started: Instant,
    ) -> Result<UnboundedReceiver<PeerEvent>, String> {
        let socket = std::net::UdpSocket::bind((local_ip, 0))
            .map_err(|e| format!("bind UDP on {local_ip}: {e}"))?;
        let (events, rx) = unbounded_channel();
        self.send(Command::Add {
            id,
            socket,
            mode: PeerMode::Rtc { events },
            publish,
            started,
        });
        Ok(rx)
    }

    /// Take the window accumulated since the last call.
    pub fn take(&self) -> Acc {
        std::mem::take(&mut *self.window.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn stop(&mut self) {
        self.send(Command::Shutdown);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for MediaThread {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Outgoing {
    sender: Option<RTCRtpSenderId>,
    ssrc: u32,
    pt: u8,
    seq: u16,
    ts: u32,
    /// Timestamp of the last packet sent (padding reuses it, as libwebrtc does).
    last_ts: u32,
    counter: u32,
}

impl Outgoing {
    fn new(pt: u8) -> Outgoing {
        Outgoing {
            sender: None,
            ssrc: rand::random(),
            pt,
            seq: rand::random(),
            ts: rand::random(),
            last_ts: 0,
            counter: 0,
        }
    }
}

enum Transport {
    Rtc {
        pc: Option<Box<RTCPeerConnection>>,
        events: UnboundedSender<PeerEvent>,
        connected: bool,
    },
    Plain {
        relay: SocketAddr,
        to: Vec<SocketAddr>,
        next_hello: Instant,
    },
}

struct Peer {
    id: u64,
    socket: UdpSocket,
    local: SocketAddr,
    transport: Transport,
    publish: bool,
    audio: Outgoing,
    video: Outgoing,
    frame: u64,
    picture_id: u16,
    started: Instant,
    failed: bool,
    /// What this peer received (its streams, its first media).
    rx: Reception,
    /// Padding packets left in the current probe cluster.
    probe_left: u32,
    /// Payload types of the video we receive (from the remote SDP), for
    /// `Behaviour::rx_drop`.
    rx_video_pts: Vec<u8>,
    /// The other side's last offer or answer (its transport-wide CC
    /// extension id, for our own media path).
    remote_sdp: String,
    /// Where the server's datagrams come from (our media goes there).
    remote: Option<SocketAddr>,
    /// Our own media path, from DTLS completion on (`Behaviour::own_media`).
    endpoint: Option<Box<Endpoint>>,
    /// Datagrams received, and whether we made the offer (a Janus
    /// publisher, which receives no media): for the note on a peer that
    /// never got media (`Worker::remove`).
    received: u64,
    offered: bool,
    /// For the same note: datagrams received and sent by kind (STUN, DTLS,
    /// RTP/RTCP, other: `datagram_kind`) and the last ICE and
    /// peer-connection states rtc reported.
    rx_kinds: [u32; 4],
    tx_kinds: [u32; 4],
    states: (String, String),
}

/// RFC 7983's demultiplexing by first byte: 0 STUN, 1 DTLS, 2 RTP/RTCP,
/// 3 anything else.
fn datagram_kind(d: &[u8]) -> usize {
    match d.first() {
        Some(0..=3) => 0,
        Some(20..=63) => 1,
        Some(128..=191) => 2,
        _ => 3,
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Audio,
    Video,
    Probe,
}

struct Worker {
    poll: Poll,
    commands: Receiver<Command>,
    video: VideoParams,
    behaviour: Behaviour,
    wire: Arc<WireCounters>,
    status: UnboundedSender<Status>,
    shared: Arc<Mutex<Acc>>,
    packets: Arc<AtomicU64>,
    peers: Vec<Option<Peer>>,
    by_id: HashMap<u64, usize>,
    schedule: BinaryHeap<Reverse<(Instant, usize, u64, Kind)>>,
    acc: Acc,
    buf: Vec<u8>,
    /// A received datagram for our own media path (reclaimed after use),
    /// and the buffer we build an outgoing one in.
    rx: BytesMut,
    tx: BytesMut,
    fill: Vec<u8>,
    seed: u64,
    /// Peers without media noted on removal so far (at most SILENT_NOTES).
    silent_noted: u32,
}

fn codec(mime: &str, clock_rate: u32, channels: u16, fmtp: &str, pt: u8) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.into(),
            clock_rate,
            channels,
            sdp_fmtp_line: fmtp.into(),
            rtcp_feedback: vec![],
        },
        payload_type: pt,
    }
}

/// A peer connection configured like a browser answering the SFU: full
/// ICE agent (the SFU is ICE-lite, so we control), DTLS client, Opus +
/// VP8, rtc's default interceptors (NACK generator and responder, RTCP
/// reports, TWCC feedback for what we receive) plus, as browsers do,
/// transport-wide sequence numbers on what we send (rtc's default is
/// receiver-only TWCC), and the counting [`WireTap`]. With our own media
/// path (`Behaviour::own_media`) the same SDP, but no interceptor at all:
/// rtc then sends no RTP or RTCP (the `Endpoint` does), as the safety rule
/// of `sfu::endpoint` asks.
fn new_pc(
    now: Instant,
    wire: &Arc<WireCounters>,
    b: Behaviour,
) -> Result<RTCPeerConnection, String> {
    let twcc_send = b.twcc_send;
    let mut media = MediaEngine::default();
    media
        .register_codec(
            codec(
                MIME_TYPE_OPUS,
                48_000,
                2,
                "minptime=10;useinbandfec=1",
                OPUS_PT,
            ),
            RtpCodecKind::Audio,
        )
        .map_err(|e| e.to_string())?;
    media
        .register_codec(
            codec(MIME_TYPE_VP8, 90_000, 0, "", VP8_PT),
            RtpCodecKind::Video,
        )
        .map_err(|e| e.to_string())?;
    // What register_default_interceptors does, with configure_twcc (sender
    // and receiver) instead of its receiver-only TWCC.
    let registry = configure_nack(Registry::new(), &mut media);
    configure_simulcast_extension_headers(&mut media).map_err(|e| e.to_string())?;
    let registry = if twcc_send {
        configure_twcc(registry, &mut media)
    } else {
        configure_twcc_receiver_only(registry, &mut media)
    }
    .map_err(|e| e.to_string())?;
    let registry = if b.own_media {
        Registry::new()
    } else {
        configure_rtcp_reports(registry).with(Slot::from(500), WireTap::new(wire.clone()))
    };
    let mut settings = SettingEngineBuilder::new().with_answering_dtls_role(RTCDtlsRole::Client);
    if b.own_media {
        // Only what our SRTP implements (Janus would pick AES-256-GCM).
        settings = settings.with_srtp_protection_profiles(sfu::endpoint::SRTP_PROFILES.to_vec());
    }
    let settings = settings.build();
    RTCPeerConnectionBuilder::new()
        .with_setting_engine(settings)
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build(now)
        .map_err(|e| e.to_string())
}

fn track(kind: RtpCodecKind, ssrc: u32, c: &RTCRtpCodecParameters, id: u64) -> MediaStreamTrack {
    let label = format!("loadtest-{id}-{kind}");
    MediaStreamTrack::new(
        format!("loadtest-{id}"),
        label.clone(),
        label,
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: c.rtp_codec.clone(),
            ..Default::default()
        }],
    )
}

impl Worker {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_house = Instant::now() + HOUSEKEEPING;
        let mut next_flush = Instant::now() + FLUSH;
        loop {
            let now = Instant::now();
            let mut deadline = next_house.min(next_flush);
            if let Some(Reverse((t, ..))) = self.schedule.peek() {
                deadline = deadline.min(*t);
            }
            let wait = deadline.saturating_duration_since(now);
            if let Err(e) = self.poll.poll(&mut events, Some(wait))
                && e.kind() != ErrorKind::Interrupted
            {
                log::error!("media thread poll: {e}");
                return;
            }
            for ev in events.iter() {
                if ev.token() == WAKE {
                    if !self.commands() {
                        self.flush();
                        return;
                    }
                } else {
                    self.readable(ev.token().0);
                }
            }
            let now = Instant::now();
            self.send_due(now);
            if now >= next_house {
                next_house = now + HOUSEKEEPING;
                self.housekeeping(now);
            }
            if now >= next_flush {
                next_flush = now + FLUSH;
                self.flush();
            }
        }
    }

    fn rand(&mut self) -> u64 {
        let mut x = self.seed;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed = x;
        x
    }

    /// Returns false on shutdown.
    fn commands(&mut self) -> bool {
        while let Ok(c) = self.commands.try_recv() {
            match c {
                Command::Add {
                    id,
                    socket,
                    mode,
                    publish,
                    started,
                } => self.add(id, socket, mode, publish, started),
                Command::Offer { id, sdp } => self.offer(id, sdp),
                Command::CreateOffer { id } => {
                    let (wire, b) = (self.wire.clone(), self.behaviour);
                    self.negotiate(id, move |p, now| p.create_offer(now, &wire, b));
                }
                Command::Answer { id, sdp } => {
                    self.negotiate(id, move |p, now| p.apply_answer(sdp, now));
                }
                Command::Remove { id } => self.remove(id),
                Command::Shutdown => {
                    for id in self.by_id.keys().copied().collect::<Vec<_>>() {
                        self.remove(id);
                    }
                    return false;
                }
            }
        }
        true
    }

    fn add(
        &mut self,
        id: u64,
        socket: std::net::UdpSocket,
        mode: PeerMode,
        publish: bool,
        started: Instant,
    ) {
        let fail = |s: &Self, reason: String| {
            let _ = s.status.send(Status::Failed { id, reason });
        };
        if let Err(e) = socket.set_nonblocking(true) {
            return fail(self, format!("socket: {e}"));
        }
        let local = match socket.local_addr() {
            Ok(a) => a,
            Err(e) => return fail(self, format!("socket: {e}")),
        };
        let mut socket = UdpSocket::from_std(socket);
        let slot = self
            .peers
            .iter()
            .position(Option::is_none)
            .unwrap_or_else(|| {
                self.peers.push(None);
                self.peers.len() - 1
            });
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut socket, Token(slot), Interest::READABLE)
        {
            return fail(self, format!("register socket: {e}"));
        }
        let transport = match mode {
            PeerMode::Rtc { events } => Transport::Rtc {
                pc: None,
                events,
                connected: false,
            },
            PeerMode::Plain { relay, to } => Transport::Plain {
                relay,
                to,
                next_hello: started,
            },
        };
        self.peers[slot] = Some(Peer {
            id,
            socket,
            local,
            transport,
            publish,
            audio: Outgoing::new(OPUS_PT),
            video: Outgoing::new(VP8_PT),
            frame: 0,
            picture_id: rand::random::<u16>() & 0x7fff,
            started,
            failed: false,
            rx: Reception {
                streams: Vec::new(),
                first_media: false,
                started,
            },
            probe_left: 0,
            rx_video_pts: Vec::new(),
            remote_sdp: String::new(),
            remote: None,
            endpoint: None,
            received: 0,
            rx_kinds: [0; 4],
            tx_kinds: [0; 4],
            states: ("new".into(), "new".into()),
            offered: false,
        });
        self.by_id.insert(id, slot);
        if publish {
            // Random phase, so publishers do not all burst at once.
            let now = Instant::now();
            let fps = self.video.fps.max(1);
            let vphase = Duration::from_micros(self.rand() % (1_000_000 / u64::from(fps)));
            let aphase = Duration::from_micros(self.rand() % 20_000);
            self.schedule
                .push(Reverse((now + vphase, slot, id, Kind::Video)));
            self.schedule
                .push(Reverse((now + aphase, slot, id, Kind::Audio)));
            let b = self.behaviour;
            if b.probe_packets > 0 && !b.probe_every.is_zero() {
                let every = b.probe_every.as_micros().max(1) as u64;
                let pphase = Duration::from_micros(self.rand() % every);
                self.schedule
                    .push(Reverse((now + pphase, slot, id, Kind::Probe)));
            }
        }
    }

    fn offer(&mut self, id: u64, sdp: String) {
        let (wire, b) = (self.wire.clone(), self.behaviour);
        self.negotiate(id, move |p, now| p.answer(sdp, now, &wire, b));
    }

    /// One SDP step on a peer; a failure fails the peer.
    fn negotiate(&mut self, id: u64, step: impl FnOnce(&mut Peer, Instant) -> Result<(), String>) {
        let Some(&slot) = self.by_id.get(&id) else {
            return;
        };
        let now = Instant::now();
        let result = self.peers[slot]
            .as_mut()
            .map(|p| step(p, now))
            .unwrap_or(Ok(()));
        if let Err(reason) = result {
            if let Some(p) = self.peers[slot].as_mut() {
                p.failed = true;
            }
            let _ = self.status.send(Status::Failed { id, reason });
            return;
        }
        self.drive(slot, now);
    }

    fn remove(&mut self, id: u64) {
        let Some(slot) = self.by_id.remove(&id) else {
            return;
        };
        if let Some(mut p) = self.peers[slot].take() {
            if let Transport::Rtc { pc, connected, .. } = &p.transport
                && !p.rx.first_media
                && !p.offered
                && self.silent_noted < SILENT_NOTES
            {
                // Which side lost a join that never got media (the run
                // counts these as failed joins).
                self.silent_noted += 1;
                eprintln!(
                    "peer {id}: no media received in {:.1} s: negotiated {}, ICE+DTLS connected {connected} \
                     (last ICE state {}, connection state {}), own media path {}, {} datagrams received \
                     (STUN/DTLS/RTP+RTCP/other {:?}), sent {:?}",
                    p.started.elapsed().as_secs_f64(),
                    pc.is_some(),
                    p.states.0,
                    p.states.1,
                    p.endpoint.is_some(),
                    p.received,
                    p.rx_kinds,
                    p.tx_kinds,
                );
            }
            // Count this peer's last partial window.
            for (_, s) in &mut p.rx.streams {
                self.acc.rx.add(s.take_window());
            }
            if let Some(ep) = p.endpoint.as_mut() {
                self.acc.add_wire(ep.take_counters());
            }
            if let Transport::Rtc { pc: Some(pc), .. } = &mut p.transport {
                let _ = pc.close();
                while let Some(m) = pc.poll_write() {
                    let _ = p.socket.send_to(&m.message, m.transport.peer_addr);
                }
            }
            let _ = self.poll.registry().deregister(&mut p.socket);
        }
    }

    fn readable(&mut self, slot: usize) {
        loop {
            let Some(p) = self.peers.get_mut(slot).and_then(Option::as_mut) else {
                return;
            };
            let (n, from) = match p.socket.recv_from(&mut self.buf) {
                Ok(r) => {
                    p.received += 1;
                    p.rx_kinds[datagram_kind(&self.buf[..r.0])] += 1;
                    r
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => continue,
            };
            let now = Instant::now();
            match &mut p.transport {
                Transport::Rtc { pc: Some(pc), .. } => {
                    // Network-like loss of received video, before SRTP (a
                    // retransmission is then new to the replay window).
                    if self.behaviour.rx_drop > 0.0
                        && rtp_payload_type(&self.buf[..n])
                            .is_some_and(|pt| p.rx_video_pts.contains(&pt))
                    {
                        let mut x = self.seed;
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        self.seed = x;
                        if unit_interval(x) < self.behaviour.rx_drop {
                            self.acc.rx_dropped += 1;
                            continue;
                        }
                    }
                    let mut message = std::mem::take(&mut self.rx);
                    message.clear();
                    message.extend_from_slice(&self.buf[..n]);
                    if let Some(ep) = p.endpoint.as_mut() {
                        let socket = &p.socket;
                        let read = ep.read(message, now, |d| {
                            let _ = socket.send_to(d, from);
                        });
                        message = match read {
                            Read::NotMedia(m) => {
                                self.rx = BytesMut::with_capacity(RX_BUFFER);
                                m
                            }
                            Read::Media { ssrc, payload } => {
                                // Authenticated: the server's media address.
                                p.remote = Some(from);
                                if let Some(stamp) = Stamp::read(&payload) {
                                    let len = 12 + payload.len();
                                    let (acc, status) = (&mut self.acc, &self.status);
                                    p.rx.record(acc, status, (ssrc, stamp, len), now);
                                }
                                self.rx = reclaim(payload);
                                continue;
                            }
                            Read::Rtcp => {
                                p.remote = Some(from);
                                self.rx = BytesMut::with_capacity(RX_BUFFER);
                                continue;
                            }
                            Read::Refused => {
                                self.rx = BytesMut::with_capacity(RX_BUFFER);
                                continue;
                            }
                        };
                    }
                    let msg = TaggedBytesMut {
                        now,
                        transport: TransportContext {
                            local_addr: p.local,
                            peer_addr: from,
                            ecn: None,
                            transport_protocol: TransportProtocol::UDP,
                        },
                        message,
                    };
                    if let Err(e) = pc.handle_read(msg) {
                        log::debug!("handle_read: {e}");
                    }
                    self.drive(slot, now);
                    continue;
                }
                Transport::Rtc { pc: None, .. } => {}
                Transport::Plain { .. } => {
                    if n >= 12 + STAMP_LEN {
                        let ssrc = u32::from_be_bytes([
                            self.buf[8],
                            self.buf[9],
                            self.buf[10],
                            self.buf[11],
                        ]);
                        if let Some(stamp) = Stamp::read(&self.buf[..n]) {
                            let (acc, status) = (&mut self.acc, &self.status);
                            p.rx.record(acc, status, (ssrc, stamp, n), now);
                        }
                    }
                }
            }
        }
    }

    /// Let a WebRTC peer say and deliver everything it has.
    fn drive(&mut self, slot: usize, now: Instant) {
        let own = self.behaviour.own_media;
        let Some(p) = self.peers.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let Transport::Rtc {
            pc: Some(pc),
            connected,
            ..
        } = &mut p.transport
        else {
            return;
        };
        loop {
            let mut busy = false;
            while let Some(m) = pc.poll_write() {
                busy = true;
                p.remote = Some(m.transport.peer_addr);
                p.tx_kinds[datagram_kind(&m.message)] += 1;
                // A full socket buffer drops, like a congested link.
                let _ = p.socket.send_to(&m.message, m.transport.peer_addr);
            }
            while let Some(ev) = pc.poll_event() {
                busy = true;
                if let RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(state) = &ev {
                    p.states.0 = state.to_string();
                }
                if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = ev {
                    p.states.1 = state.to_string();
                    match state {
                        RTCPeerConnectionState::Connected => {
                            *connected = true;
                            if own && p.endpoint.is_none() && !p.failed {
                                let sending = match p.publish {
                                    true => (Some(p.audio.ssrc), Some(p.video.ssrc)),
                                    false => (None, None),
                                };
                                let started = pc
                                    .srtp_session_keys()
                                    .ok_or_else(|| "no SRTP keys after DTLS".to_string())
                                    .and_then(|keys| {
                                        Endpoint::new(
                                            keys,
                                            sending,
                                            &p.remote_sdp,
                                            &p.rx_video_pts,
                                            now,
                                        )
                                    });
                                match started {
                                    Ok(ep) => p.endpoint = Some(Box::new(ep)),
                                    Err(reason) => {
                                        p.failed = true;
                                        let _ = self.status.send(Status::Failed {
                                            id: p.id,
                                            reason: format!("own media path: {reason}"),
                                        });
                                    }
                                }
                            }
                        }
                        RTCPeerConnectionState::Failed if !p.failed => {
                            p.failed = true;
                            let _ = self.status.send(Status::Failed {
                                id: p.id,
                                reason: "ICE or DTLS failed".into(),
                            });
                        }
                        _ => {}
                    }
                }
            }
            while let Some(m) = pc.poll_read() {
                busy = true;
                if let RTCMessage::RtpPacket(_, packet) = m.message
                    && let Some(stamp) = Stamp::read(&packet.payload)
                {
                    let len = 12 + packet.payload.len();
                    let ssrc = packet.header.ssrc;
                    let (acc, status) = (&mut self.acc, &self.status);
                    p.rx.record(acc, status, (ssrc, stamp, len), now);
                }
            }
            if !busy {
                return;
            }
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        for slot in 0..self.peers.len() {
            let Some(p) = self.peers[slot].as_mut() else {
                continue;
            };
            match &mut p.transport {
                Transport::Rtc { pc: Some(pc), .. } => {
                    if let (Some(ep), Some(to)) = (p.endpoint.as_mut(), p.remote)
                        && ep.poll_timeout() <= now
                    {
                        let socket = &p.socket;
                        ep.handle_timeout(now, |d| {
                            let _ = socket.send_to(d, to);
                        });
                    }
                    if pc.poll_timeout().is_some_and(|t| t <= now) {
                        if let Err(e) = pc.handle_timeout(now) {
                            log::debug!("handle_timeout: {e}");
                        }
                        self.drive(slot, now);
                    }
                    continue;
                }
                Transport::Plain {
                    relay,
                    to,
                    next_hello,
                } if p.publish && now >= *next_hello => {
                    // Tell the relay where our packets go (repeated: UDP).
                    *next_hello = now + Duration::from_secs(1);
                    let list: Vec<String> = to.iter().map(SocketAddr::to_string).collect();
                    let hello = format!("HELO{}", list.join(","));
                    let _ = p.socket.send_to(hello.as_bytes(), *relay);
                }
                _ => {}
            }
        }
    }

    fn send_due(&mut self, now: Instant) {
        while let Some(Reverse((t, slot, id, kind))) = self.schedule.peek().copied() {
            if t > now {
                return;
            }
            self.schedule.pop();
            if self.by_id.get(&id) != Some(&slot) {
                continue; // removed
            }
            let next = match kind {
                Kind::Audio => {
                    self.send_audio(slot, now);
                    t + OPUS_INTERVAL
                }
                Kind::Video => {
                    self.send_video(slot, now);
                    t + Duration::from_micros(1_000_000 / u64::from(self.video.fps.max(1)))
                }
                Kind::Probe => t + self.send_probe(slot, now),
            };
            // Fall behind rather than burst to catch up.
            let next = if next < now { now } else { next };
            self.schedule.push(Reverse((next, slot, id, kind)));
        }
    }

    /// One padding-only packet of the current probe cluster (starting one
    /// if none is running); returns when the next is due.
    fn send_probe(&mut self, slot: usize, now: Instant) -> Duration {
        let b = self.behaviour;
        let Some(p) = self.peers.get_mut(slot).and_then(Option::as_mut) else {
            return b.probe_every;
        };
        if !p.ready() {
            return b.probe_every;
        }
        if p.probe_left == 0 {
            p.probe_left = b.probe_packets;
        }
        p.probe_left -= 1;
        let next = if p.probe_left > 0 {
            PROBE_GAP
        } else {
            b.probe_every
                .saturating_sub(PROBE_GAP * b.probe_packets.saturating_sub(1))
                .max(PROBE_GAP)
        };
        let out = &mut p.video;
        let (seq, ts, ssrc, pt) = (out.seq, out.last_ts, out.ssrc, out.pt);
        out.seq = out.seq.wrapping_add(1);
        let sender = out.sender;
        let sent = match &mut p.transport {
            Transport::Rtc { .. } if p.endpoint.is_some() => {
                let out = RtpOut {
                    ssrc,
                    seq,
                    timestamp: ts,
                    marker: false,
                    payload_type: pt,
                    payload: &[],
                };
                // Counted by the endpoint as it is built.
                if let Some(ep) = p.endpoint.as_mut()
                    && ep.protect(&out, true, &mut self.tx, now)
                    && let Some(to) = p.remote
                {
                    let _ = p.socket.send_to(&self.tx, to);
                }
                false
            }
            Transport::Rtc { pc: Some(pc), .. } => {
                let Some(mut s) = sender.and_then(|id| pc.rtp_sender(id)) else {
                    return next;
                };
                let packet = rtp::Packet {
                    header: rtp::header::Header {
                        version: 2,
                        padding: true,
                        payload_type: pt,
                        sequence_number: seq,
                        timestamp: ts,
                        ssrc,
                        ..Default::default()
                    },
                    payload: Bytes::new(),
                };
                let ok = s.write_rtp(now, packet).is_ok();
                while let Some(m) = pc.poll_write() {
                    let _ = p.socket.send_to(&m.message, m.transport.peer_addr);
                }
                ok
            }
            Transport::Plain { relay, .. } => {
                let _ = p.socket.send_to(&plain_padding(pt, seq, ts, ssrc), *relay);
                true
            }
            Transport::Rtc { pc: None, .. } => false,
        };
        // Rtc peers' padding is counted by the WireTap as it leaves.
        if sent && matches!(p.transport, Transport::Plain { .. }) {
            self.acc.padding_sent += 1;
        }
        next
    }

    fn send_audio(&mut self, slot: usize, now: Instant) {
        let payload = opus_payload(&self.fill);
        self.send_packet(slot, Kind::Audio, payload, false, OPUS_TS_STEP, now);
    }

    fn send_video(&mut self, slot: usize, now: Instant) {
        let r = self.rand();
        let Some(p) = self.peers.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if !p.ready() {
            return;
        }
        let v = self.video;
        let keyframe = p.frame % u64::from(v.keyframe_interval.max(1)) == 0;
        p.frame += 1;
        p.picture_id = (p.picture_id + 1) & 0x7fff;
        let (key, delta) = v.frame_sizes();
        let base = if keyframe { key } else { delta };
        // ±20 % per frame, like a real rate controller's output.
        let len = base * (80 + (r % 41) as usize) / 100;
        let pid = p.picture_id;
        let packets = packetize_vp8(pid, keyframe, len, &v, &self.fill);
        let n = packets.len();
        for (i, pkt) in packets.into_iter().enumerate() {
            let step = if i + 1 == n { v.ts_step() } else { 0 };
            self.send_packet(slot, Kind::Video, pkt.payload, pkt.marker, step, now);
        }
    }

    /// Stamp and send one packet; `ts_advance` moves the RTP timestamp on
    /// after it (0 within a video frame).
    fn send_packet(
        &mut self,
        slot: usize,
        kind: Kind,
        mut payload: Vec<u8>,
        marker: bool,
        ts_advance: u32,
        now: Instant,
    ) {
        let Some(p) = self.peers.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if !p.ready() {
            return;
        }
        let out = match kind {
            Kind::Audio => &mut p.audio,
            // (Probes are sent by send_probe, on the video stream.)
            Kind::Video | Kind::Probe => &mut p.video,
        };
        let header = rtp::header::Header {
            version: 2,
            marker,
            payload_type: out.pt,
            sequence_number: out.seq,
            timestamp: out.ts,
            ssrc: out.ssrc,
            ..Default::default()
        };
        out.seq = out.seq.wrapping_add(1);
        out.last_ts = out.ts;
        out.ts = out.ts.wrapping_add(ts_advance);
        let stamp = Stamp {
            counter: out.counter,
            sent_ns: now_ns(Instant::now()),
        };
        out.counter = out.counter.wrapping_add(1);
        let sender = out.sender;
        match &mut p.transport {
            Transport::Rtc { pc: Some(pc), .. } => {
                stamp.write(&mut payload);
                if let Some(ep) = p.endpoint.as_mut() {
                    let out = RtpOut {
                        ssrc: header.ssrc,
                        seq: header.sequence_number,
                        timestamp: header.timestamp,
                        marker,
                        payload_type: header.payload_type,
                        payload: &payload,
                    };
                    if ep.protect(&out, false, &mut self.tx, now)
                        && let Some(to) = p.remote
                    {
                        let _ = p.socket.send_to(&self.tx, to);
                    }
                    return;
                }
                let Some(sender) = sender else { return };
                let Some(mut s) = pc.rtp_sender(sender) else {
                    return;
                };
                let packet = rtp::Packet {
                    header,
                    payload: Bytes::from(payload),
                };
                if let Err(e) = s.write_rtp(now, packet) {
                    log::debug!("write_rtp: {e}");
                }
                while let Some(m) = pc.poll_write() {
                    let _ = p.socket.send_to(&m.message, m.transport.peer_addr);
                }
            }
            Transport::Plain { relay, .. } => {
                let mut d = Vec::with_capacity(12 + payload.len() + SRTP_OVERHEAD);
                d.push(0x80);
                d.push((u8::from(marker) << 7) | header.payload_type);
                d.extend_from_slice(&header.sequence_number.to_be_bytes());
                d.extend_from_slice(&header.timestamp.to_be_bytes());
                d.extend_from_slice(&header.ssrc.to_be_bytes());
                d.extend_from_slice(&payload);
                d.extend_from_slice(&[0; SRTP_OVERHEAD]);
                stamp.write(&mut d);
                let _ = p.socket.send_to(&d, *relay);
            }
            Transport::Rtc { pc: None, .. } => {}
        }
    }

    /// Merge this thread's window into the shared one.
    fn flush(&mut self) {
        let mut acc = std::mem::take(&mut self.acc);
        let w = &self.wire;
        acc.twcc_sent += w.twcc_sent.swap(0, Relaxed);
        acc.twcc_received += w.twcc_received.swap(0, Relaxed);
        acc.nacks_sent += w.nacks_sent.swap(0, Relaxed);
        acc.padding_sent += w.padding_sent.swap(0, Relaxed);
        for p in self.peers.iter_mut().flatten() {
            if let Some(ep) = p.endpoint.as_mut() {
                acc.add_wire(ep.take_counters());
            }
            for (_, s) in &mut p.rx.streams {
                acc.rx.add(s.take_window());
                acc.jitter_sum_us += s.jitter_us();
                acc.jitter_samples += 1;
            }
        }
        self.packets.fetch_add(acc.packets, Relaxed);
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .merge(&acc);
    }
}

impl Peer {
    /// Can this peer send media now?
    fn ready(&self) -> bool {
        match &self.transport {
            Transport::Rtc { pc, connected, .. } => {
                pc.is_some() && *connected && !self.failed && self.audio.sender.is_some()
            }
            Transport::Plain { .. } => true,
        }
    }

    /// Apply the SFU's offer and send our answer: the first offer gets our
    /// microphone and camera attached to its two `recvonly` slots.
    fn answer(
        &mut self,
        sdp: String,
        now: Instant,
        wire: &Arc<WireCounters>,
        b: Behaviour,
    ) -> Result<(), String> {
        let local = self.local;
        let id = self.id;
        let publish = self.publish;
        let Transport::Rtc { pc, events, .. } = &mut self.transport else {
            return Ok(());
        };
        let first = pc.is_none();
        if first {
            *pc = Some(Box::new(new_pc(now, wire, b)?));
        }
        let Some(pc) = pc.as_mut() else {
            return Ok(());
        };
        self.rx_video_pts = video_payload_types(&sdp);
        self.remote_sdp.clone_from(&sdp);
        if let Some(ep) = self.endpoint.as_mut() {
            ep.update(&self.remote_sdp, &self.rx_video_pts);
        }
        let offer = RTCSessionDescription::offer(sdp).map_err(|e| format!("bad offer: {e}"))?;
        pc.set_remote_description(now, offer)
            .map_err(|e| format!("set_remote_description: {e}"))?;
        if first {
            prepare_local(pc, &mut self.audio, &mut self.video, id, local, publish)?;
        }
        let answer = pc
            .create_answer(None)
            .map_err(|e| format!("create_answer: {e}"))?;
        let sdp = set_local(pc, answer, now)?;
        read_back_payload_types(pc, &mut self.audio, &mut self.video);
        let _ = events.send(PeerEvent::Answer(sdp));
        Ok(())
    }

    /// Janus publishers offer: a fresh connection with microphone and
    /// camera (sendrecv; Janus answers recvonly) and our host candidate.
    fn create_offer(
        &mut self,
        now: Instant,
        wire: &Arc<WireCounters>,
        b: Behaviour,
    ) -> Result<(), String> {
        let local = self.local;
        let id = self.id;
        let Transport::Rtc { pc, events, .. } = &mut self.transport else {
            return Ok(());
        };
        if pc.is_some() {
            return Err("offer requested twice".into());
        }
        self.offered = true;
        let pc = pc.insert(Box::new(new_pc(now, wire, b)?));
        prepare_local(pc, &mut self.audio, &mut self.video, id, local, true)?;
        let offer = pc
            .create_offer(None)
            .map_err(|e| format!("create_offer: {e}"))?;
        let _ = events.send(PeerEvent::Offer(set_local(pc, offer, now)?));
        Ok(())
    }

    fn apply_answer(&mut self, sdp: String, now: Instant) -> Result<(), String> {
        let Transport::Rtc { pc: Some(pc), .. } = &mut self.transport else {
            return Err("answer without an offer".into());
        };
        self.rx_video_pts = video_payload_types(&sdp);
        self.remote_sdp.clone_from(&sdp);
        if let Some(ep) = self.endpoint.as_mut() {
            ep.update(&self.remote_sdp, &self.rx_video_pts);
        }
        let answer = RTCSessionDescription::answer(sdp).map_err(|e| format!("bad answer: {e}"))?;
        pc.set_remote_description(now, answer)
            .map_err(|e| format!("set_remote_description: {e}"))?;
        read_back_payload_types(pc, &mut self.audio, &mut self.video);
        Ok(())
    }
}

/// Our side of a new connection, whether we answer or offer: microphone and
/// camera when we publish, and our host candidate.
fn prepare_local(
    pc: &mut RTCPeerConnection,
    audio: &mut Outgoing,
    video: &mut Outgoing,
    id: u64,
    local: SocketAddr,
    publish: bool,
) -> Result<(), String> {
    if publish {
        let (a, v) = attach_media(pc, audio.ssrc, video.ssrc, id)?;
        audio.sender = Some(a);
        video.sender = Some(v);
    }
    add_host_candidate(pc, local)
}

/// Our offer or answer as the local description; returns its SDP for signaling.
fn set_local(
    pc: &mut RTCPeerConnection,
    desc: RTCSessionDescription,
    now: Instant,
) -> Result<String, String> {
    let sdp = desc.sdp.clone();
    pc.set_local_description(now, desc)
        .map_err(|e| format!("set_local_description: {e}"))?;
    Ok(sdp)
}

fn attach_media(
    pc: &mut RTCPeerConnection,
    audio_ssrc: u32,
    video_ssrc: u32,
    id: u64,
) -> Result<(RTCRtpSenderId, RTCRtpSenderId), String> {
    let opus = codec(
        MIME_TYPE_OPUS,
        48_000,
        2,
        "minptime=10;useinbandfec=1",
        OPUS_PT,
    );
    let vp8 = codec(MIME_TYPE_VP8, 90_000, 0, "", VP8_PT);
    let a = pc
        .add_track(track(RtpCodecKind::Audio, audio_ssrc, &opus, id))
        .map_err(|e| format!("add audio: {e}"))?;
    let v = pc
        .add_track(track(RtpCodecKind::Video, video_ssrc, &vp8, id))
        .map_err(|e| format!("add video: {e}"))?;
    Ok((a, v))
}

fn add_host_candidate(pc: &mut RTCPeerConnection, local: SocketAddr) -> Result<(), String> {
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".into(),
            address: local.ip().to_string(),
            port: local.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .map_err(|e| e.to_string())?;
    let init = RTCIceCandidate::from(&candidate)
        .to_json()
        .map_err(|e| e.to_string())?;
    pc.add_local_candidate(init).map_err(|e| e.to_string())
}

/// The payload types the remote side negotiated for our senders.
fn read_back_payload_types(pc: &mut RTCPeerConnection, audio: &mut Outgoing, video: &mut Outgoing) {
    for out in [audio, video] {
        if let Some(pt) = out.sender.and_then(|s| {
            pc.rtp_sender(s).and_then(|mut s| {
                s.get_parameters()
                    .rtp_parameters
                    .codecs
                    .first()
                    .map(|c| c.payload_type)
            })
        }) {
            out.pt = pt;
        }
    }
}

/// A received datagram's buffer back for the next one: its front, which
/// the payload gave up in place, reclaimed (no copy: it is emptied); a
/// fresh buffer if that is not possible.
fn reclaim(mut payload: BytesMut) -> BytesMut {
    payload.clear();
    if payload.try_reclaim(RX_BUFFER) {
        payload
    } else {
        BytesMut::with_capacity(RX_BUFFER)
    }
}

/// What a peer received: per-stream statistics and whether its first
/// media came (the join time).
struct Reception {
    streams: Vec<(u32, StreamRx)>,
    first_media: bool,
    started: Instant,
}

impl Reception {
    /// One media packet (`len` bytes on the wire) of `ssrc` with its stamp.
    fn record(
        &mut self,
        acc: &mut Acc,
        status: &UnboundedSender<Status>,
        (ssrc, stamp, len): (u32, Stamp, usize),
        now: Instant,
    ) {
        let recv_ns = now_ns(now);
        let streams = &mut self.streams;
        let i = match streams.iter().position(|(s, _)| *s == ssrc) {
            Some(i) => i,
            None => {
                // Bounded: a participant receives at most 2 tracks from each
                // of 5 others; more means SSRC churn, so recycle the oldest.
                if streams.len() >= 32 {
                    streams.remove(0);
                }
                streams.push((ssrc, StreamRx::default()));
                streams.len() - 1
            }
        };
        streams[i].1.record(stamp.counter, stamp.sent_ns, recv_ns);
        acc.latency
            .record(recv_ns.saturating_sub(stamp.sent_ns) / 1000);
        acc.packets += 1;
        acc.bytes += len as u64;
        if !self.first_media {
            self.first_media = true;
            acc.join
                .record(now.saturating_duration_since(self.started).as_micros() as u64);
            let _ = status.send(Status::FirstMedia);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::interceptor::AttributedPacket;

    fn tagged(packet: Packet) -> TaggedPacket {
        TaggedPacket {
            now: Instant::now(),
            transport: TransportContext::default(),
            message: AttributedPacket::new(packet),
        }
    }

    fn rtp_packet(padding: bool, payload: &'static [u8]) -> Packet {
        Packet::Rtp(rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                padding,
                payload_type: VP8_PT,
                ..Default::default()
            },
            payload: Bytes::from_static(payload),
        })
    }

    #[test]
    fn wire_tap_counts_feedback_nacks_and_padding_and_passes_everything() {
        let counters = Arc::new(WireCounters::default());
        let mut tap = WireTap::new(counters.clone());
        let twcc = || -> Box<dyn rtc::rtcp::Packet> { Box::new(TransportLayerCc::default()) };
        let nack = || -> Box<dyn rtc::rtcp::Packet> { Box::new(TransportLayerNack::default()) };
        tap.handle_write(tagged(Packet::Rtcp(vec![twcc(), nack()])))
            .unwrap();
        tap.handle_write(tagged(Packet::Rtcp(vec![twcc()])))
            .unwrap();
        tap.handle_write(tagged(rtp_packet(true, b""))).unwrap();
        // Media with the P bit (padded to a 4-byte boundary) is not a probe.
        tap.handle_write(tagged(rtp_packet(true, b"abc"))).unwrap();
        tap.handle_write(tagged(rtp_packet(false, b"media")))
            .unwrap();
        tap.handle_read(tagged(Packet::Rtcp(vec![twcc(), twcc()])))
            .unwrap();
        tap.handle_read(tagged(Packet::Rtcp(vec![nack()]))).unwrap();
        assert_eq!(counters.twcc_sent.load(Relaxed), 2);
        assert_eq!(counters.nacks_sent.load(Relaxed), 1);
        assert_eq!(counters.padding_sent.load(Relaxed), 1);
        assert_eq!(counters.twcc_received.load(Relaxed), 2);
        let mut writes = 0;
        while tap.poll_write().is_some() {
            writes += 1;
        }
        let mut reads = 0;
        while tap.poll_read().is_some() {
            reads += 1;
        }
        assert_eq!((writes, reads), (5, 2), "nothing held back or dropped");
    }

    #[test]
    fn only_rtp_is_classified_as_rtp() {
        let mut rtp_hdr = [0u8; 12];
        rtp_hdr[0] = 0x80;
        rtp_hdr[1] = 0x80 | VP8_PT; // marker set
        assert_eq!(rtp_payload_type(&rtp_hdr), Some(VP8_PT));
        let mut rtcp = rtp_hdr;
        rtcp[1] = 205; // RTPFB
        assert_eq!(rtp_payload_type(&rtcp), None);
        let mut stun = rtp_hdr;
        stun[0] = 0x00;
        assert_eq!(rtp_payload_type(&stun), None);
        let mut dtls = rtp_hdr;
        dtls[0] = 22;
        assert_eq!(rtp_payload_type(&dtls), None);
        assert_eq!(rtp_payload_type(&rtp_hdr[..11]), None);
        assert_eq!(rtp_payload_type(&[]), None);
    }

    #[test]
    fn video_payload_types_come_from_video_sections_only() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=rtpmap:96 VP8/90000\r\n\
                   m=video 0 UDP/TLS/RTP/SAVPF 98 x 300\r\n";
        assert_eq!(video_payload_types(sdp), vec![96, 97, 98]);
        assert!(video_payload_types("m=audio 9 RTP/AVP 0\n").is_empty());
        assert!(video_payload_types("m=video").is_empty());
    }

    #[test]
    fn random_draws_are_in_the_unit_interval() {
        assert_eq!(unit_interval(0), 0.0);
        assert!(unit_interval(u64::MAX) < 1.0);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut below = 0;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if unit_interval(x) < 0.01 {
                below += 1;
            }
        }
        // 1 % of draws, give or take (binomial sd ~31).
        assert!((850..=1150).contains(&below), "{below}");
    }
}
