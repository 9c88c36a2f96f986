//! Reading a datagram together with the time the kernel received it.
//!
//! Arrival times feed the transport-wide congestion control feedback we
//! send publishers (and from it their browsers' bandwidth estimates). The
//! worker reads in batches and may be descheduled on a busy machine; with
//! `Instant::now()` at read time, packets that waited in the socket buffer
//! look as if the network had delayed them, and the publisher's estimator
//! backs off from congestion that is really our scheduling (seen in the
//! browser tests on 2 cores: publishers limited to their lowest layer for
//! "bandwidth" on loopback). The kernel's receive timestamp
//! (`SO_TIMESTAMPNS`) says when the packet arrived, whatever the worker was
//! doing. Where that is not available, read time is used.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A timestamp older than this is not believed (clock stepped, or a
/// backlog so old the packet's delay hardly matters).
const MAX_AGE: Duration = Duration::from_secs(1);

/// One received datagram: its length in the buffer, sender, arrival time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received {
    pub len: usize,
    pub from: SocketAddr,
    pub at: Instant,
}

/// The arrival `Instant` of a packet the kernel stamped `kernel` (time
/// since the Unix epoch), read at `now` / `wall_now`.
pub(crate) fn arrival(now: Instant, wall_now: SystemTime, kernel: Option<Duration>) -> Instant {
    let Some(k) = kernel else {
        return now;
    };
    let Ok(wall) = wall_now.duration_since(UNIX_EPOCH) else {
        return now;
    };
    let age = wall.saturating_sub(k);
    if age > MAX_AGE {
        return now;
    }
    now.checked_sub(age).unwrap_or(now)
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod imp {
    use super::{Received, arrival};
    use std::io;
    use std::mem::{size_of, zeroed};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant, SystemTime};

    // asm-generic/socket.h (x86_64, aarch64): SO_TIMESTAMPNS_OLD, whose
    // payload is a native `struct timespec` (64-bit on these targets).
    const SO_TIMESTAMPNS: libc::c_int = 35;
    const SCM_TIMESTAMPNS: libc::c_int = SO_TIMESTAMPNS;

    pub(crate) fn enable_timestamps(sock: &impl AsRawFd) -> bool {
        let on: libc::c_int = 1;
        // SAFETY: a valid fd and a c_int option value of the stated size.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_TIMESTAMPNS,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        r == 0
    }

    pub(crate) fn recv(sock: &impl AsRawFd, buf: &mut [u8]) -> io::Result<Received> {
        // SAFETY: all-zero is a valid sockaddr_storage / msghdr.
        let mut addr: libc::sockaddr_storage = unsafe { zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // Room for one cmsghdr and a timespec, 8-byte aligned.
        let mut control = [0u64; 8];
        // SAFETY: see above.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 8]>() as _;
        // SAFETY: msg points at live buffers of the sizes it states.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let now = Instant::now();
        if msg.msg_flags & libc::MSG_TRUNC != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "datagram larger than the read buffer",
            ));
        }
        let from = socket_addr(&addr)?;
        let mut kernel = None;
        // SAFETY: the CMSG_* walk stays within msg_control/msg_controllen
        // as the kernel filled them; the payload is read unaligned.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == SCM_TIMESTAMPNS {
                    let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    if let (Ok(s), Ok(ns)) = (u64::try_from(ts.tv_sec), u32::try_from(ts.tv_nsec))
                        && ns < 1_000_000_000
                    {
                        kernel = Some(Duration::new(s, ns));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Ok(Received {
            len: n as usize,
            from,
            at: arrival(now, SystemTime::now(), kernel),
        })
    }

    fn socket_addr(addr: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
        match libc::c_int::from(addr.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says this storage holds a sockaddr_in.
                let a = unsafe {
                    &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>()
                };
                let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                Ok(SocketAddr::from((ip, u16::from_be(a.sin_port))))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says this storage holds a sockaddr_in6.
                let a = unsafe {
                    &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
                };
                Ok(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unknown address family",
            )),
        }
    }
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
mod imp {
    use super::Received;
    use std::io;
    use std::time::Instant;

    pub(crate) fn enable_timestamps(_sock: &mio::net::UdpSocket) -> bool {
        false
    }

    pub(crate) fn recv(sock: &mio::net::UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
        let (len, from) = sock.recv_from(buf)?;
        Ok(Received {
            len,
            from,
            at: Instant::now(),
        })
    }
}

/// Ask the kernel to stamp arrivals on this socket; `false` if it will not
/// (then reads are timed when they happen).
pub(crate) fn enable_timestamps(sock: &mio::net::UdpSocket) -> bool {
    imp::enable_timestamps(sock)
}

/// Receive one datagram into `buf` (non-blocking as the socket is).
pub(crate) fn recv(sock: &mio::net::UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    imp::recv(sock, buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrival_is_the_kernel_time_translated_to_instant() {
        let now = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let k = Duration::from_secs(1_800_000_000) - Duration::from_millis(30);
        let at = arrival(now, wall, Some(k));
        assert_eq!(now.duration_since(at), Duration::from_millis(30));
        // No timestamp, one from the future (clock stepped back) or one
        // too old: read time.
        assert_eq!(arrival(now, wall, None), now);
        let future = Duration::from_secs(1_800_000_001);
        assert_eq!(arrival(now, wall, Some(future)), now);
        let ancient = Duration::from_secs(1_799_999_990);
        assert_eq!(arrival(now, wall, Some(ancient)), now);
    }

    #[test]
    fn a_datagram_that_waited_in_the_buffer_keeps_its_arrival_time() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_nonblocking(true).expect("nonblocking");
        let rx = mio::net::UdpSocket::from_std(rx);
        let timestamps = enable_timestamps(&rx);
        let to = rx.local_addr().expect("addr");
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut buf = [0u8; 64];
        // The kernel switches receive stamping on in deferred work and
        // stamps at read time until then (the SFU enables it at start-up,
        // long before media), so allow a few rounds on a busy machine.
        let mut ages = Vec::new();
        for _ in 0..20 {
            tx.send_to(b"hello", to).expect("send");
            // The worker is "busy" for 60 ms while the datagram waits.
            std::thread::sleep(Duration::from_millis(60));
            let got = recv(&rx, &mut buf).expect("recv");
            assert_eq!(&buf[..got.len], b"hello");
            assert_eq!(got.from, tx.local_addr().expect("addr"));
            let age = Instant::now().duration_since(got.at);
            ages.push(age);
            if age >= Duration::from_millis(50) {
                break;
            }
        }
        if cfg!(target_os = "linux") {
            assert!(timestamps, "SO_TIMESTAMPNS refused");
            assert!(
                ages.iter().any(|a| *a >= Duration::from_millis(50)),
                "arrival always read time, not the kernel's: {ages:?}"
            );
        }
        // Nothing more queued: WouldBlock, not a stale datagram.
        let again = recv(&rx, &mut buf).expect_err("empty socket");
        assert_eq!(again.kind(), io::ErrorKind::WouldBlock);
        // A datagram larger than the buffer is refused, not truncated.
        tx.send_to(&[7u8; 100], to).expect("send");
        std::thread::sleep(Duration::from_millis(20));
        let big = recv(&rx, &mut buf).expect_err("truncated");
        assert_eq!(big.kind(), io::ErrorKind::InvalidData);
    }
}
