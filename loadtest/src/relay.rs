//! The physical-limit baseline: a plain UDP relay (recv → table lookup →
//! send), one thread and one socket per worker like the SFU. A sender
//! first says `HELO<dest addr>[,<dest addr>...]`; afterwards every datagram
//! from it goes to those destinations unchanged (one `send_to` each: a
//! group's fan-out), except padding-only RTP packets (the generator's
//! bandwidth probes), which are dropped as the SFU drops them.
//! Run as its own process so its CPU time can be read from /proc like the
//! SFU's.

use crate::media::SRTP_OVERHEAD;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};

/// Remembered senders per thread (bounds a spoofer's effect).
const MAX_ROUTES: usize = 64 * 1024;

/// Destinations one sender may name (a group of 16).
pub const MAX_FANOUT: usize = 15;

/// Parse a `HELO` datagram into its destinations (1 to [`MAX_FANOUT`],
/// comma-separated); `None` for anything else.
pub fn parse_hello(d: &[u8]) -> Option<Vec<SocketAddr>> {
    let rest = std::str::from_utf8(d.strip_prefix(b"HELO")?).ok()?;
    let to = rest
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<SocketAddr>, _>>()
        .ok()?;
    (1..=MAX_FANOUT).contains(&to.len()).then_some(to)
}

/// Is this RTP datagram (with a `tag`-byte SRTP tag at its end) padding
/// only: P bit set and the padding count equal to everything after the
/// header?
pub fn is_padding_only(d: &[u8], tag: usize) -> bool {
    let Some(&b0) = d.first() else {
        return false;
    };
    if b0 >> 6 != 2 || b0 & 0x20 == 0 {
        return false;
    }
    let mut header = 12 + 4 * usize::from(b0 & 0x0f);
    if b0 & 0x10 != 0 {
        // Extension: 4-byte header whose second half is its length in words.
        let Some(len) = d.get(header + 2..header + 4) else {
            return false;
        };
        header += 4 + 4 * usize::from(u16::from_be_bytes([len[0], len[1]]));
    }
    let Some(end) = d.len().checked_sub(tag) else {
        return false;
    };
    if end <= header {
        return false;
    }
    usize::from(d[end - 1]) == end - header
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
    let mut routes: HashMap<SocketAddr, Vec<SocketAddr>> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if is_padding_only(&buf[..n], SRTP_OVERHEAD) {
            continue;
        }
        if let Some(to) = routes.get(&from) {
            for to in to {
                let _ = socket.send_to(&buf[..n], to);
            }
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
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:4001".parse().unwrap();
        assert_eq!(parse_hello(b"HELO127.0.0.1:4000"), Some(vec![a]));
        assert_eq!(
            parse_hello(b"HELO127.0.0.1:4000,127.0.0.2:4001"),
            Some(vec![a, b])
        );
        assert_eq!(parse_hello(b"HELO"), None);
        assert_eq!(parse_hello(b"HELO127.0.0.1:4000,"), None);
        assert_eq!(parse_hello(b"HELO127.0.0.1:4000,x"), None);
        assert_eq!(parse_hello(b"\x80\x60HELO127.0.0.1:1"), None);
        let most = vec!["127.0.0.1:1"; MAX_FANOUT].join(",");
        assert_eq!(
            parse_hello(format!("HELO{most}").as_bytes()).map(|v| v.len()),
            Some(MAX_FANOUT)
        );
        let too_many = vec!["127.0.0.1:1"; MAX_FANOUT + 1].join(",");
        assert_eq!(parse_hello(format!("HELO{too_many}").as_bytes()), None);
    }

    #[test]
    fn padding_only_packets_are_recognised() {
        use crate::media::{PADDING_LEN, plain_padding};
        let pad = plain_padding(96, 7, 1234, 42);
        assert_eq!(pad.len(), 12 + PADDING_LEN + SRTP_OVERHEAD);
        assert!(is_padding_only(&pad, SRTP_OVERHEAD));
        // Media: no P bit.
        let mut media = pad.clone();
        media[0] = 0x80;
        assert!(!is_padding_only(&media, SRTP_OVERHEAD));
        // P bit but a payload before the padding: not padding only.
        let mut padded_media = vec![
            0xa0, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0x90, 0x11, 0, 0, 0, 4,
        ];
        padded_media.extend_from_slice(&[0; SRTP_OVERHEAD]);
        assert!(!is_padding_only(&padded_media, SRTP_OVERHEAD));
        // With a one-word header extension (transport-cc), padding only.
        let mut ext = vec![
            0xb0, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0xbe, 0xde, 0, 1, 0x31, 0, 5, 0,
        ];
        ext.extend_from_slice(&[0, 0, 0, 4]);
        ext.extend_from_slice(&[0; SRTP_OVERHEAD]);
        assert!(is_padding_only(&ext, SRTP_OVERHEAD));
        // Truncated or garbage input is never padding.
        for n in 0..pad.len() {
            assert!(!is_padding_only(&pad[..n], SRTP_OVERHEAD), "{n}");
        }
        assert!(!is_padding_only(&ext[..14], SRTP_OVERHEAD));
        assert!(!is_padding_only(b"HELO127.0.0.1:1", SRTP_OVERHEAD));
    }

    #[test]
    fn relays_after_hello_to_every_destination_named() {
        let relay_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let relay_addr = relay_sock.local_addr().unwrap();
        std::thread::spawn(move || relay(relay_sock));
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (b, c) = (
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
        );
        for s in [&b, &c] {
            s.set_read_timeout(Some(std::time::Duration::from_millis(100)))
                .unwrap();
        }
        let hello = format!(
            "HELO{},{}",
            b.local_addr().unwrap(),
            c.local_addr().unwrap()
        );
        a.send_to(hello.as_bytes(), relay_addr).unwrap();
        // The hello itself is not forwarded; wait until the route exists.
        let mut buf = [0u8; 64];
        let mut got_b = false;
        for _ in 0..50 {
            a.send_to(b"media", relay_addr).unwrap();
            if let Ok((n, from)) = b.recv_from(&mut buf) {
                assert_eq!(&buf[..n], b"media");
                assert_eq!(from, relay_addr);
                got_b = true;
                break;
            }
        }
        assert!(got_b, "nothing relayed to the first destination");
        // Every datagram b got, c got too (the route is in place for both
        // at once), and nothing else.
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let (n, from) = c
            .recv_from(&mut buf)
            .expect("relayed to the second destination");
        assert_eq!((&buf[..n], from), (&b"media"[..], relay_addr));
    }
}
