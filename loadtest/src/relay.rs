//! The physical-limit baseline: a plain UDP relay (recv → table lookup →
//! send), one thread and one socket per worker like the SFU. A sender
//! first says `HELO<dest addr>`; afterwards every datagram from it goes to
//! that destination unchanged. Run as its own process so its CPU time can
//! be read from /proc like the SFU's.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};

/// Remembered senders per thread (bounds a spoofer's effect).
const MAX_ROUTES: usize = 64 * 1024;

/// Parse a `HELO` datagram into its destination.
pub fn parse_hello(d: &[u8]) -> Option<SocketAddr> {
    let rest = d.strip_prefix(b"HELO")?;
    std::str::from_utf8(rest).ok()?.parse().ok()
}

pub fn serve(bind: IpAddr, port: u16, threads: usize) -> std::io::Result<()> {
    let mut handles = Vec::new();
    for i in 0..threads.max(1) {
        let socket = UdpSocket::bind((bind, port.wrapping_add(i as u16)))?;
        handles.push(std::thread::spawn(move || relay(socket)));
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn relay(socket: UdpSocket) {
    let mut routes: HashMap<SocketAddr, SocketAddr> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if let Some(to) = routes.get(&from) {
            let _ = socket.send_to(&buf[..n], to);
        } else if let Some(to) = parse_hello(&buf[..n])
            && routes.len() < MAX_ROUTES
        {
            routes.insert(from, to);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_names_the_destination() {
        assert_eq!(
            parse_hello(b"HELO127.0.0.1:4000"),
            Some("127.0.0.1:4000".parse().unwrap())
        );
        assert_eq!(parse_hello(b"HELO"), None);
        assert_eq!(parse_hello(b"\x80\x60HELO127.0.0.1:1"), None);
    }

    #[test]
    fn relays_after_hello() {
        let relay_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let relay_addr = relay_sock.local_addr().unwrap();
        std::thread::spawn(move || relay(relay_sock));
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let hello = format!("HELO{}", b.local_addr().unwrap());
        a.send_to(hello.as_bytes(), relay_addr).unwrap();
        // The hello itself is not forwarded; wait until the route exists.
        let mut buf = [0u8; 64];
        for _ in 0..50 {
            a.send_to(b"media", relay_addr).unwrap();
            if let Ok((n, from)) = b.recv_from(&mut buf) {
                assert_eq!(&buf[..n], b"media");
                assert_eq!(from, relay_addr);
                return;
            }
        }
        panic!("nothing relayed");
    }
}
