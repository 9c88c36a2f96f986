//! Issue 10, findings 3 and 4, against a real worker on loopback sockets:
//! whoever knows a ufrag (it travels in clear) but not the password must
//! not take media address slots; a participant who does know its own
//! password must not take more than its share; idle ICE-TCP connections
//! must not keep a real ICE-TCP participant out.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::*;

/// The tests load the machine: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// More distinct source addresses than the whole table (16,384) holds.
const SPRAYED: usize = 20_000;

/// The worker publishes its gauges once a second.
fn settle() {
    std::thread::sleep(Duration::from_millis(2_500));
}

#[test]
fn checks_with_a_valid_ufrag_but_a_wrong_password_take_no_address_slots() {
    let _serial = serial();
    let sfu = start_sfu();
    let udp = sfu.udp_addrs()[0];
    // A participant whose ufrag the attacker read off the wire.
    let victim = join(&sfu, "c1", "patient");
    let (ufrag, _pwd) = victim.ice();
    let forged = binding_request(&format!("{ufrag}:attacker"), "not-the-password-at-all!");
    let sent = spray(udp, &forged, SPRAYED, 10);
    assert!(sent >= SPRAYED * 9 / 10, "only {sent} sent");
    settle();
    let stats = sfu.limit_stats();
    assert_eq!(stats.media_addresses, 0, "{stats:?}");
    assert!(
        stats.dropped_failed_check >= 16_400,
        "forged checks counted: {stats:?}"
    );

    // A new participant in another consult still gets connected.
    let mut newcomer = join(&sfu, "c2", "clinician");
    let mut client = Client::answer(&sfu, &newcomer, loopback(2));
    assert!(
        client.connect(&mut newcomer, CONNECT_TIMEOUT),
        "a new participant could not connect after the flood: {:?}",
        sfu.limit_stats()
    );
    sfu.shutdown();
}

#[test]
fn a_participant_spraying_its_own_valid_checks_holds_at_most_its_cap() {
    let _serial = serial();
    let sfu = start_sfu();
    let udp = sfu.udp_addrs()[0];
    // The attacker runs the connectivity check (`probe` in signaling: a
    // consult `probe:<random>` of one; an admitted participant is the
    // same kind of peer): it knows its own password.
    let attacker = join(&sfu, "probe:0123abcd", "attacker");
    let (ufrag, pwd) = attacker.ice();
    // rtc wants the remote ufrag from an answer before it accepts checks.
    let attacker_client = Client::answer(&sfu, &attacker, loopback(3));
    let username = format!("{ufrag}:{}", attacker_client.ufrag());
    let signed = binding_request(&username, &pwd);
    let sent = spray(udp, &signed, SPRAYED, 10);
    assert!(sent >= SPRAYED * 9 / 10, "only {sent} sent");
    settle();
    let stats = sfu.limit_stats();
    assert!(
        (1..=8).contains(&stats.media_addresses),
        "one peer holds at most 8 addresses: {stats:?}"
    );
    assert!(
        stats.media_addresses_refused_budget >= 16_000,
        "refused over the per-session budget: {stats:?}"
    );
    assert!(stats.media_addresses_evicted >= 1, "{stats:?}");

    // A participant of a real consult is unaffected.
    let mut other = join(&sfu, "c1", "clinician");
    let mut client = Client::answer(&sfu, &other, loopback(2));
    assert!(
        client.connect(&mut other, CONNECT_TIMEOUT),
        "another participant could not connect: {:?}",
        sfu.limit_stats()
    );
    settle();
    assert!(sfu.limit_stats().media_addresses <= 16);
    sfu.shutdown();
}

/// Read one RFC 4571 frame (2-byte length, then the packet).
fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let mut packet = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut packet)?;
    Ok(packet)
}

fn connect_from(ip: std::net::IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(ip, 0).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(socket.into())
}

#[test]
fn idle_ice_tcp_connections_renewed_continuously_do_not_keep_a_participant_out() {
    let _serial = serial();
    let sfu = start_sfu();
    let tcp = sfu.tcp_addr().expect("ice-tcp enabled");
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // 96 idle connections from 12 addresses, each one closed and
        // opened again within 2.5 s (under the 3 s first-frame timeout),
        // a few every 100 ms: the pending table never has a free slot.
        scope.spawn(|| {
            let mut open: std::collections::VecDeque<(Instant, TcpStream)> = Default::default();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                while open
                    .front()
                    .is_some_and(|(t, _)| t.elapsed() > Duration::from_millis(2_500))
                {
                    open.pop_front();
                }
                let mut opened = 0;
                while open.len() < 96 && opened < 8 {
                    let ip = loopback(20 + (n % 12) as u8);
                    n += 1;
                    if let Ok(s) = connect_from(ip, tcp) {
                        open.push_back((Instant::now(), s));
                    }
                    opened += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        // Let the attacker fill the table first.
        std::thread::sleep(Duration::from_secs(3));

        let mut connected = 0;
        for attempt in 0..5 {
            let mut joined = join(&sfu, &format!("tcp{attempt}"), "patient");
            let client = Client::answer(&sfu, &joined, loopback(2));
            let (ufrag, pwd) = joined.ice();
            let request = binding_request(&format!("{ufrag}:{}", client.ufrag()), &pwd);
            let Ok(mut stream) = connect_from(loopback(2), tcp) else {
                continue;
            };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut framed = (request.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&request);
            if stream.write_all(&framed).is_err() {
                continue;
            }
            // ICE over TCP completes: the SFU answers the check.
            if let Ok(response) = read_frame(&mut stream)
                && is_binding_success(&response)
            {
                connected += 1;
            }
            while joined.events.try_recv().is_ok() {}
        }
        stop.store(true, Ordering::Relaxed);
        let stats = sfu.limit_stats();
        assert_eq!(connected, 5, "ICE-TCP participants kept out: {stats:?}");
        assert!(
            stats.ice_tcp_evicted_full + stats.ice_tcp_evicted_same_address >= 5,
            "the attack did fill the table: {stats:?}"
        );
    });
    sfu.shutdown();
}
