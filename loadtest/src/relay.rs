//! The physical-limit baseline: a plain UDP relay (recv → table lookup →
//! send), one thread and one socket per worker like the SFU. A sender
//! first says `HELO<dest addr>[,<dest addr>...]`; afterwards every datagram
//! from it goes to those destinations unchanged (one `send_to` each: a
//! group's fan-out), except padding-only RTP packets (the generator's
//! bandwidth probes), which are dropped as the SFU drops them.
//! Run as its own process so its CPU time can be read from /proc like the
//! SFU's.
//!
//! Two ways to move the bytes: plain (one `recv_from` and one `send_to`
//! per datagram and destination: the baseline the ≤ 2.5× aim of issue 13
//! names) and `--batch` (`recvmmsg` up to 32 datagrams, `sendmmsg` what
//! they fan out to, as the SFU's worker does): the kernel's own cost per
//! forwarded packet with the system calls amortised as ours are, i.e. the
//! floor under any server's figure on this machine.
//!
//! A benchmark tool for a private namespace: the first `HELO` from an
//! address fixes its route, and nothing is authenticated.

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

pub fn serve(bind: IpAddr, port: u16, threads: usize, batch: bool) -> std::io::Result<()> {
    let mut handles = Vec::new();
    for i in 0..threads.max(1) {
        let socket = UdpSocket::bind((bind, port.wrapping_add(i as u16)))?;
        handles.push(std::thread::spawn(move || {
            if batch {
                relay_batched(socket)
            } else {
                relay(socket)
            }
        }));
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

/// Datagrams per `recvmmsg`/`sendmmsg` (the SFU's batch).
const BATCH: usize = 32;

/// The relay with batched system calls. Each received datagram is copied
/// once per destination into the send batch (as the SFU writes a packet
/// per subscriber); the batch leaves when full and after every read.
fn relay_batched(socket: UdpSocket) {
    use socket2::SockAddr;
    use std::os::fd::AsRawFd;

    let fd = socket.as_raw_fd();
    let mut routes: HashMap<SocketAddr, Vec<SocketAddr>> = HashMap::new();
    let mut rx = vec![[0u8; 2048]; BATCH];
    let mut names: Vec<socket2::SockAddrStorage> = (0..BATCH)
        .map(|_| socket2::SockAddrStorage::zeroed())
        .collect();
    let mut iovs: Vec<libc::iovec> = rx
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: all-zero is a valid mmsghdr.
    let mut hdrs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    let mut out: Vec<(Vec<u8>, SockAddr)> = Vec::with_capacity(BATCH);
    let mut spare: Vec<Vec<u8>> = Vec::new();
    loop {
        for (i, h) in hdrs.iter_mut().enumerate() {
            h.msg_len = 0;
            h.msg_hdr.msg_namelen = names[i].size_of();
            h.msg_hdr.msg_name = (&mut names[i] as *mut socket2::SockAddrStorage).cast();
            h.msg_hdr.msg_iov = &mut iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: every header points at live buffers of the sizes it
        // states; MSG_WAITFORONE: block for the first, then take what is
        // queued.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as _,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        let Ok(n) = usize::try_from(n) else {
            continue;
        };
        for i in 0..n {
            let len = hdrs[i].msg_len as usize;
            // SAFETY: the kernel wrote a socket address of this length.
            let name = std::mem::replace(&mut names[i], socket2::SockAddrStorage::zeroed());
            let from = unsafe { SockAddr::new(name, hdrs[i].msg_hdr.msg_namelen) }.as_socket();
            let (Some(from), d) = (from, &rx[i][..len]) else {
                continue;
            };
            if is_padding_only(d, SRTP_OVERHEAD) {
                continue;
            }
            if let Some(to) = routes.get(&from) {
                for to in to {
                    let mut b = spare.pop().unwrap_or_default();
                    b.clear();
                    b.extend_from_slice(d);
                    out.push((b, SockAddr::from(*to)));
                    if out.len() == BATCH {
                        send_batch(fd, &mut out, &mut spare);
                    }
                }
            } else if let Some(to) = parse_hello(d)
                && routes.len() < MAX_ROUTES
            {
                routes.insert(from, to);
            }
        }
        send_batch(fd, &mut out, &mut spare);
    }
}

/// Send `out` with `sendmmsg` (what the kernel refuses is dropped, as a
/// full socket buffer drops it); the buffers go back to `spare`.
fn send_batch(
    fd: libc::c_int,
    out: &mut Vec<(Vec<u8>, socket2::SockAddr)>,
    spare: &mut Vec<Vec<u8>>,
) {
    let mut iovs: [libc::iovec; BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; BATCH];
    // SAFETY: all-zero is a valid mmsghdr.
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let n = out.len().min(BATCH);
    for i in 0..n {
        let (b, to) = &mut out[i];
        iovs[i] = libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        };
        hdrs[i].msg_hdr.msg_name = to.as_ptr() as *mut libc::c_void;
        hdrs[i].msg_hdr.msg_namelen = to.len();
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    let mut done = 0;
    while done < n {
        // SAFETY: headers `done..n` point at live buffers and addresses.
        let r = unsafe { libc::sendmmsg(fd, hdrs[done..].as_mut_ptr(), (n - done) as _, 0) };
        match usize::try_from(r) {
            Ok(sent) if sent > 0 => done += sent,
            // The first one refused: skip it, send the rest.
            _ => done += 1,
        }
    }
    spare.extend(out.drain(..).map(|(b, _)| b));
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
        fans_out_after_hello(relay);
    }

    #[test]
    fn the_batched_relay_does_the_same() {
        fans_out_after_hello(relay_batched);
    }

    fn fans_out_after_hello(run: fn(UdpSocket)) {
        let relay_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let relay_addr = relay_sock.local_addr().unwrap();
        std::thread::spawn(move || run(relay_sock));
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
