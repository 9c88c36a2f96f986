//! First picture (issue 13): Chromium starts DTLS as soon as one of its
//! ICE checks is answered, but our ICE-lite agent selects a candidate pair
//! only when Chromium's nominating check arrives, and rtc drops anything
//! but STUN until then. Every Chromium join's first ClientHello was lost
//! that way and the handshake waited for the resend (usually ~50-100 ms,
//! 1.1-2.5 s in some first-picture runs). The worker now holds such early
//! DTLS and hands it to rtc when its ICE connects.
//!
//! Here a real rtc client plays the browser. Chromium starts DTLS as soon
//! as a check succeeds; rtc's client only once its nominating check is
//! answered. So the test answers that check itself (signed with the SFU's
//! ICE password, as the SFU would) and holds the real request back until
//! the client's ClientHello has reached the SFU: the ClientHello certainly
//! arrives before our ICE has a selected pair. The handshake must then
//! finish without the client sending any handshake message twice (its
//! retransmission timer is 1 s).

mod support;

use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use sfu::MediaEvent;
use std::collections::HashMap;
use std::time::Instant;
use support::*;

const STUN_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const ATTR_USE_CANDIDATE: u16 = 0x0025;

/// The transaction id of a STUN binding request that carries USE-CANDIDATE.
fn nominating_request(packet: &[u8]) -> Option<[u8; 12]> {
    if packet.len() < 20 || packet[0..2] != [0x00, 0x01] || packet[4..8] != STUN_COOKIE {
        return None;
    }
    let mut rest = &packet[20..];
    while rest.len() >= 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        if kind == ATTR_USE_CANDIDATE {
            return packet[8..20].try_into().ok();
        }
        rest = rest.get((4 + len + 3) & !3..)?;
    }
    None
}

/// DTLS handshake records in a datagram: (handshake type, message_seq).
fn handshake_messages(packet: &[u8]) -> Vec<(u8, u16)> {
    let mut out = Vec::new();
    let mut rest = packet;
    // Record header: type(1) version(2) epoch(2) sequence(6) length(2).
    while rest.len() >= 13 {
        let len = u16::from_be_bytes([rest[11], rest[12]]) as usize;
        let Some(body) = rest.get(13..13 + len) else {
            break;
        };
        let epoch = u16::from_be_bytes([rest[3], rest[4]]);
        // Handshake header: type(1) length(3) message_seq(2) ... (epoch 0: in clear).
        if rest[0] == 22 && epoch == 0 && body.len() >= 6 {
            out.push((body[0], u16::from_be_bytes([body[4], body[5]])));
        }
        rest = &rest[13 + len..];
    }
    out
}

/// A binding success response to `request` from the SFU, as the SFU would
/// send it: XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY with the SFU's password.
fn forged_answer(request: &[u8], client: std::net::SocketAddr, sfu_pwd: &str) -> Vec<u8> {
    use rtc::stun::fingerprint::FINGERPRINT;
    use rtc::stun::integrity::MessageIntegrity;
    use rtc::stun::message::{BINDING_SUCCESS, Message, Setter, TransactionId};
    use rtc::stun::xoraddr::XorMappedAddress;
    let id: [u8; 12] = request[8..20].try_into().expect("transaction id");
    let provider = rtc::crypto::default_provider().expect("crypto provider");
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(BINDING_SUCCESS),
        Box::new(TransactionId(id)),
        Box::new(XorMappedAddress {
            ip: client.ip(),
            port: client.port(),
        }),
        Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
            sfu_pwd.into(),
            provider.crypto(),
        )),
        Box::new(FINGERPRINT),
    ];
    let mut m = Message::new();
    m.build(&setters).expect("build a binding success response");
    m.raw
}

/// What one handshake showed.
struct Run {
    /// The ClientHello reached the SFU before any nominating check.
    hello_before_nomination: bool,
    /// Every handshake message the client sent, by (type, message_seq).
    sent: HashMap<(u8, u16), usize>,
    /// Nominating checks the client sent that the SFU never got.
    withheld: usize,
    answered_plain: usize,
}

/// One connection of a real rtc client to the SFU. The client's first
/// nominating check is held back until its ClientHello has gone out (and
/// then delivered 50 ms later), or with `never_nominate` none ever
/// reaches the SFU; the client gets forged answers to them instead.
fn handshake(never_nominate: bool) -> Run {
    let sfu = start_sfu();
    let mut joined = join(&sfu, "c1", "patient");
    let (_ufrag, sfu_pwd) = joined.ice();
    let mut client = Client::answer(&sfu, &joined, loopback(2));
    let local = client.sock.local_addr().expect("local addr");
    let tagged = |now: Instant, from, bytes: &[u8]| TaggedBytesMut {
        now,
        transport: TransportContext {
            local_addr: local,
            peer_addr: from,
            ecn: None,
            transport_protocol: TransportProtocol::UDP,
        },
        message: bytes::BytesMut::from(bytes),
    };

    // The client's plain checks answered by the SFU (its address is then
    // known to the worker), its held nominating check, the ClientHello.
    let mut plain_answered = 0;
    let mut held: Option<(Vec<u8>, std::net::SocketAddr)> = None;
    let mut hello_forwarded_before_nomination = false;
    let mut withheld = 0;
    let mut sent: HashMap<(u8, u16), usize> = HashMap::new();

    let started = Instant::now();
    let deadline = started + CONNECT_TIMEOUT;
    let mut buf = vec![0u8; 2048];
    let connected_at = loop {
        assert!(
            Instant::now() < deadline,
            "no connection in {CONNECT_TIMEOUT:?} (sent: {sent:?}, nominations withheld: {withheld})"
        );
        let mut done = None;
        while let Ok(event) = joined.events.try_recv() {
            match event {
                MediaEvent::Connected => done = Some(Instant::now()),
                MediaEvent::Failed { reason } => panic!("the connection failed: {reason}"),
                _ => {}
            }
        }
        if let Some(at) = done {
            break at;
        }
        let mut forged = Vec::new();
        while let Some(out) = client.pc.poll_write() {
            let packet = &out.message[..];
            let to = out.transport.peer_addr;
            if nominating_request(packet).is_some()
                && plain_answered > 0
                && (never_nominate || held.is_none())
            {
                // Held back; the client gets its answer from us.
                forged.push((forged_answer(packet, local, &sfu_pwd), to));
                withheld += 1;
                if !never_nominate {
                    held = Some((packet.to_vec(), to));
                }
                continue;
            }
            let hello = handshake_messages(packet);
            for m in &hello {
                *sent.entry(*m).or_default() += 1;
            }
            let _ = client.sock.send_to(packet, to);
            if hello.iter().any(|m| m.0 == 1) {
                hello_forwarded_before_nomination |= withheld > 0;
                if let Some((request, to)) = held.take_if(|(r, _)| !r.is_empty()) {
                    // The ClientHello is on its way; the nomination follows it.
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    let _ = client.sock.send_to(&request, to);
                    withheld -= 1;
                    // Later nominations go straight through.
                    held = Some((Vec::new(), to));
                }
            }
        }
        for (answer, from) in forged {
            let _ = client.pc.handle_read(tagged(Instant::now(), from, &answer));
        }
        while client.pc.poll_event().is_some() {}
        while client.pc.poll_read().is_some() {}
        if let Ok((n, from)) = client.sock.recv_from(&mut buf) {
            if support::is_binding_success(&buf[..n]) {
                plain_answered += 1;
            }
            let _ = client
                .pc
                .handle_read(tagged(Instant::now(), from, &buf[..n]));
        }
        let now = Instant::now();
        if client.pc.poll_timeout().is_some_and(|t| t <= now) {
            let _ = client.pc.handle_timeout(now);
        }
    };
    println!(
        "connected {:?} after the client's answer; handshake messages sent: {sent:?}; nominations withheld: {withheld}",
        connected_at.duration_since(started)
    );
    Run {
        hello_before_nomination: hello_forwarded_before_nomination,
        sent,
        withheld,
        answered_plain: plain_answered,
    }
}

#[test]
fn a_client_hello_that_arrives_before_our_ice_has_a_pair_is_not_lost() {
    let run = handshake(false);
    // The situation under test happened: the ClientHello reached the SFU
    // before the check that lets its ICE select a pair.
    assert!(
        run.hello_before_nomination,
        "the race was not set up: ClientHello before the nomination? (answered plain checks: {}, sent: {:?})",
        run.answered_plain, run.sent
    );
    // Connected without the client's DTLS retransmission timer: no
    // handshake message went out twice.
    let repeated: Vec<_> = run.sent.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "the client had to resend handshake messages (type, message_seq) -> times: {repeated:?}; all sent: {:?}",
        run.sent
    );
}

/// Chromium sends its nominating check ~50-60 ms after it started DTLS on
/// a pair; the SFU nominates that pair for it as soon as the DTLS shows
/// the choice (`Peer::nominate_early`). Here the browser's nomination
/// never arrives at all: the connection must complete without it, and
/// without a handshake message sent twice.
#[test]
fn dtls_on_a_checked_pair_connects_without_the_browsers_nomination() {
    let run = handshake(true);
    assert!(
        run.hello_before_nomination && run.withheld > 0,
        "the client never tried to nominate (answered plain checks: {}, sent: {:?})",
        run.answered_plain,
        run.sent
    );
    let repeated: Vec<_> = run.sent.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "the client had to resend handshake messages: {repeated:?}; all sent: {:?}",
        run.sent
    );
}
