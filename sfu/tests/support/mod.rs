//! What the hostile-traffic tests share: an SFU on loopback, participants
//! joined through `MediaCommand`s, a real rtc peer connection playing the
//! browser (full ICE agent, DTLS client) over a real UDP socket, and STUN
//! binding requests built with rtc's own STUN code.

#![allow(dead_code)]

use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use sfu::{MediaCommand, MediaEnvelope, MediaEvent, SfuConfig, SfuHandle};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// Generous: the machine is shared and busy.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

pub fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// The media plane plus a router that hands each participant its own
/// events (the plane reports all of them on one sink).
pub struct TestPlane {
    sfu: SfuHandle,
    routes: Arc<Mutex<HashMap<String, UnboundedSender<MediaEvent>>>>,
}

impl std::ops::Deref for TestPlane {
    type Target = SfuHandle;
    fn deref(&self) -> &SfuHandle {
        &self.sfu
    }
}

pub fn start_sfu() -> TestPlane {
    let (sink, mut envelopes) = unbounded_channel::<MediaEnvelope>();
    let sfu = SfuHandle::start(
        SfuConfig {
            bind_ip: loopback(1),
            announce_ip: loopback(1),
            udp_port: 0,
            tcp_port: Some(0),
            workers: 1,
            media_path: Default::default(),
        },
        sink,
    )
    .expect("start the media plane");
    let routes: Arc<Mutex<HashMap<String, UnboundedSender<MediaEvent>>>> = Arc::default();
    let table = routes.clone();
    std::thread::spawn(move || {
        while let Some(e) = envelopes.blocking_recv() {
            if let Some(to) = table.lock().expect("routes").get(&e.participant) {
                let _ = to.send(e.event);
            }
        }
    });
    TestPlane { sfu, routes }
}

/// A participant as the media plane sees it: its events and its latest
/// offer.
pub struct Joined {
    pub consult: String,
    pub participant: String,
    pub events: UnboundedReceiver<MediaEvent>,
    pub offer: String,
}

impl Joined {
    /// Our (the SFU's) ICE ufrag and password from the offer.
    pub fn ice(&self) -> (String, String) {
        let find = |prefix: &str| {
            self.offer
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .map(|v| v.trim().to_string())
                .expect("ice credentials in the offer")
        };
        (find("a=ice-ufrag:"), find("a=ice-pwd:"))
    }
}

pub fn join(sfu: &TestPlane, consult: &str, participant: &str) -> Joined {
    let (tx, mut events) = unbounded_channel();
    sfu.routes
        .lock()
        .expect("routes")
        .insert(participant.to_string(), tx);
    sfu.send(MediaCommand::Join {
        consult: consult.into(),
        participant: participant.into(),
    });
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        match events.try_recv() {
            Ok(MediaEvent::Offer { sdp }) => {
                return Joined {
                    consult: consult.into(),
                    participant: participant.into(),
                    events,
                    offer: sdp,
                };
            }
            Ok(_) => {}
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("no offer for {participant}: {e}"),
        }
    }
}

/// A STUN binding request as a browser sends it: USERNAME, PRIORITY,
/// ICE-CONTROLLING, MESSAGE-INTEGRITY (with `pwd`), FINGERPRINT.
pub fn binding_request(username: &str, pwd: &str) -> Vec<u8> {
    use rtc::stun::attributes::{ATTR_ICE_CONTROLLING, ATTR_PRIORITY, ATTR_USERNAME, RawAttribute};
    use rtc::stun::fingerprint::FINGERPRINT;
    use rtc::stun::integrity::MessageIntegrity;
    use rtc::stun::message::{BINDING_REQUEST, Message, Setter, TransactionId};
    use rtc::stun::textattrs::TextAttribute;
    let provider = rtc::crypto::default_provider().expect("crypto provider");
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(BINDING_REQUEST),
        Box::new(TransactionId::new()),
        Box::new(TextAttribute::new(ATTR_USERNAME, username.into())),
        Box::new(RawAttribute {
            typ: ATTR_PRIORITY,
            length: 4,
            value: 1_853_817_087u32.to_be_bytes().to_vec(),
        }),
        Box::new(RawAttribute {
            typ: ATTR_ICE_CONTROLLING,
            length: 8,
            value: 7u64.to_be_bytes().to_vec(),
        }),
        Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
            pwd.into(),
            provider.crypto(),
        )),
        Box::new(FINGERPRINT),
    ];
    let mut m = Message::new();
    m.build(&setters).expect("build a binding request");
    m.raw
}

/// Is `packet` a STUN binding success response?
pub fn is_binding_success(packet: &[u8]) -> bool {
    packet.len() >= 20 && packet[0..2] == [0x01, 0x01] && packet[4..8] == [0x21, 0x12, 0xA4, 0x42]
}

/// Send `packet` once from each of `count` distinct loopback source
/// addresses (127.0.0.`first_ip`.. × ports from 20000), paced so the
/// worker's socket buffer keeps up. Returns how many went out.
pub fn spray(to: SocketAddr, packet: &[u8], count: usize, first_ip: u8) -> usize {
    const PORTS: u16 = 250;
    let mut sent = 0;
    let mut i = 0usize;
    while sent < count && i < count * 2 {
        let ip = loopback(first_ip.wrapping_add((i / PORTS as usize) as u8));
        let port = 20_000 + (i % PORTS as usize) as u16;
        i += 1;
        let Ok(sock) = UdpSocket::bind((ip, port)) else {
            continue; // port in use: take the next address
        };
        if sock.send_to(packet, to).is_ok() {
            sent += 1;
        }
        if sent % 200 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    sent
}

/// The browser's side: a full ICE agent and DTLS client on a UDP socket.
pub struct Client {
    pub pc: RTCPeerConnection,
    pub sock: UdpSocket,
    pub answer: String,
}

impl Client {
    /// Answer `joined`'s offer (the answer goes to the SFU) from a socket
    /// on `ip`.
    pub fn answer(sfu: &SfuHandle, joined: &Joined, ip: IpAddr) -> Client {
        let now = Instant::now();
        let mut media = MediaEngine::default();
        media.register_default_codecs().expect("codecs");
        let settings = SettingEngineBuilder::new()
            .with_answering_dtls_role(RTCDtlsRole::Client)
            .build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_setting_engine(settings)
            .with_media_engine(media)
            .build(now)
            .expect("client peer connection");
        let sock = UdpSocket::bind((ip, 0)).expect("client socket");
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .expect("read timeout");
        let local = sock.local_addr().expect("local addr");
        let offer = RTCSessionDescription::offer(joined.offer.clone()).expect("offer");
        pc.set_remote_description(now, offer).expect("set offer");
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
        .expect("host candidate");
        pc.add_local_candidate(
            RTCIceCandidate::from(&candidate)
                .to_json()
                .expect("candidate json"),
        )
        .expect("add candidate");
        let answer = pc.create_answer(None).expect("answer");
        let sdp = answer.sdp.clone();
        pc.set_local_description(now, answer).expect("set answer");
        sfu.send(MediaCommand::Answer {
            consult: joined.consult.clone(),
            participant: joined.participant.clone(),
            sdp: sdp.clone(),
        });
        Client {
            pc,
            sock,
            answer: sdp,
        }
    }

    /// The client's own ICE ufrag (the second half of USERNAME).
    pub fn ufrag(&self) -> String {
        self.answer
            .lines()
            .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
            .map(|v| v.trim().to_string())
            .expect("ufrag in the answer")
    }

    /// Drive the connection until the SFU reports `Connected` for this
    /// participant (ICE and DTLS up). `false` on timeout or failure.
    pub fn connect(&mut self, joined: &mut Joined, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let local = self.sock.local_addr().expect("local addr");
        let mut buf = vec![0u8; 2048];
        while Instant::now() < deadline {
            while let Ok(event) = joined.events.try_recv() {
                match event {
                    MediaEvent::Connected => return true,
                    MediaEvent::Failed { .. } => return false,
                    _ => {}
                }
            }
            self.pump();
            if let Ok((n, from)) = self.sock.recv_from(&mut buf) {
                let msg = TaggedBytesMut {
                    now: Instant::now(),
                    transport: TransportContext {
                        local_addr: local,
                        peer_addr: from,
                        ecn: None,
                        transport_protocol: TransportProtocol::UDP,
                    },
                    message: bytes::BytesMut::from(&buf[..n]),
                };
                let _ = self.pc.handle_read(msg);
            }
            let now = Instant::now();
            if self.pc.poll_timeout().is_some_and(|t| t <= now) {
                let _ = self.pc.handle_timeout(now);
            }
        }
        false
    }

    /// Send what the connection wants sent; drop what it read.
    pub fn pump(&mut self) {
        while let Some(out) = self.pc.poll_write() {
            let _ = self.sock.send_to(&out.message, out.transport.peer_addr);
        }
        while self.pc.poll_event().is_some() {}
        while self.pc.poll_read().is_some() {}
    }
}
