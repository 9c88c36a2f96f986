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

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A timestamp older than this is not believed (clock stepped, or a
/// backlog so old the packet's delay hardly matters).
const MAX_AGE: Duration = Duration::from_secs(1);

/// One received datagram: its length in the buffer, sender, arrival time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    use super::{Received, SLOT, arrival};
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

    /// Room for one cmsghdr and a timespec, 8-byte aligned.
    type Control = [u64; 8];

    /// Datagram buffers and the `recvmmsg` headers that point into them,
    /// allocated once per worker: reading a batch allocates nothing.
    pub(crate) struct Batch {
        bufs: Vec<[u8; SLOT]>,
        addrs: Vec<libc::sockaddr_storage>,
        iovs: Vec<libc::iovec>,
        controls: Vec<Control>,
        hdrs: Vec<libc::mmsghdr>,
        got: Vec<Result<Received, ()>>,
    }

    // SAFETY: the raw pointers in `iovs`/`hdrs` point only into this
    // batch's own heap buffers (allocated once in `new`, never resized, so
    // they do not move when the batch does); nothing is shared with another
    // thread.
    unsafe impl Send for Batch {}

    impl Batch {
        pub(crate) fn new(n: usize) -> Self {
            let n = n.max(1);
            let mut b = Self {
                bufs: vec![[0; SLOT]; n],
                // SAFETY: all-zero is a valid sockaddr_storage / iovec / mmsghdr.
                addrs: vec![unsafe { zeroed() }; n],
                iovs: vec![unsafe { zeroed() }; n],
                controls: vec![[0; 8]; n],
                hdrs: (0..n).map(|_| unsafe { zeroed() }).collect(),
                got: Vec::with_capacity(n),
            };
            for i in 0..n {
                b.iovs[i] = libc::iovec {
                    iov_base: b.bufs[i].as_mut_ptr().cast(),
                    iov_len: SLOT,
                };
                let h = &mut b.hdrs[i].msg_hdr;
                h.msg_name = (&mut b.addrs[i] as *mut libc::sockaddr_storage).cast();
                h.msg_iov = &mut b.iovs[i];
                h.msg_iovlen = 1;
                h.msg_control = b.controls[i].as_mut_ptr().cast();
                b.reset(i);
            }
            b
        }

        /// The fields of header `i` the kernel writes back, as they must
        /// be before a call: the pointers never change, so only these are
        /// set again, and only for the headers the last call filled (a
        /// header it did not reach is as it was; most calls read one).
        fn reset(&mut self, i: usize) {
            let h = &mut self.hdrs[i];
            h.msg_len = 0;
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_controllen = size_of::<Control>() as _;
            h.msg_hdr.msg_flags = 0;
        }

        pub(crate) fn capacity(&self) -> usize {
            self.bufs.len()
        }

        /// Read up to `capacity()` datagrams in one `recvmmsg` (the socket
        /// is non-blocking: as many as are queued). `Ok(0)` never happens;
        /// nothing queued is `WouldBlock`.
        pub(crate) fn recv(&mut self, sock: &impl AsRawFd) -> io::Result<usize> {
            self.got.clear();
            let n = self.bufs.len();
            // SAFETY: every header points at live buffers of the sizes it
            // states, all owned by `self` for the duration of the call.
            let r = unsafe {
                libc::recvmmsg(
                    sock.as_raw_fd(),
                    self.hdrs.as_mut_ptr(),
                    n as libc::c_uint,
                    0,
                    std::ptr::null_mut(),
                )
            };
            if r < 0 {
                // The kernel writes a header back only for a datagram it
                // read; set the first one again all the same (cheap).
                let e = io::Error::last_os_error();
                self.reset(0);
                return Err(e);
            }
            let now = Instant::now();
            let wall = SystemTime::now();
            for i in 0..r as usize {
                let h = &self.hdrs[i];
                let got = if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                    // Larger than any datagram WebRTC sends: refused, not truncated.
                    Err(())
                } else {
                    match socket_addr(&self.addrs[i]) {
                        Ok(from) => Ok(Received {
                            len: h.msg_len as usize,
                            from,
                            // SAFETY: the header as the kernel filled it.
                            at: arrival(now, wall, unsafe { kernel_time(&h.msg_hdr) }),
                        }),
                        Err(_) => Err(()),
                    }
                };
                self.got.push(got);
            }
            for i in 0..r as usize {
                self.reset(i);
            }
            Ok(r as usize)
        }

        /// Datagram `i` of the last `recv`: its bytes and where and when it
        /// came from; `None` if it was refused (too large, odd address).
        pub(crate) fn get(&self, i: usize) -> Option<(&[u8], Received)> {
            let r = (*self.got.get(i)?).ok()?;
            Some((&self.bufs[i][..r.len], r))
        }
    }

    /// The `SO_TIMESTAMPNS` arrival time in a received message's control data.
    ///
    /// # Safety
    /// `msg` must be a header `recvmsg`/`recvmmsg` just filled.
    unsafe fn kernel_time(msg: &libc::msghdr) -> Option<Duration> {
        let mut kernel = None;
        // SAFETY: the CMSG_* walk stays within msg_control/msg_controllen
        // as the kernel filled them; the payload is read unaligned.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == SCM_TIMESTAMPNS {
                    let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    if let (Ok(s), Ok(ns)) = (u64::try_from(ts.tv_sec), u32::try_from(ts.tv_nsec))
                        && ns < 1_000_000_000
                    {
                        kernel = Some(Duration::new(s, ns));
                    }
                }
                c = libc::CMSG_NXTHDR(msg, c);
            }
        }
        kernel
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
    use super::{Received, SLOT};
    use std::io;
    use std::time::Instant;

    pub(crate) fn enable_timestamps(_sock: &mio::net::UdpSocket) -> bool {
        false
    }

    /// One `recv_from` per datagram where `recvmmsg` is not available.
    pub(crate) struct Batch {
        bufs: Vec<[u8; SLOT]>,
        got: Vec<Result<Received, ()>>,
    }

    impl Batch {
        pub(crate) fn new(n: usize) -> Self {
            Self {
                bufs: vec![[0; SLOT]; n.max(1)],
                got: Vec::with_capacity(n.max(1)),
            }
        }

        pub(crate) fn capacity(&self) -> usize {
            self.bufs.len()
        }

        pub(crate) fn recv(&mut self, sock: &mio::net::UdpSocket) -> io::Result<usize> {
            self.got.clear();
            for i in 0..self.bufs.len() {
                match sock.recv_from(&mut self.bufs[i]) {
                    Ok((len, from)) => self.got.push(Ok(Received {
                        len,
                        from,
                        at: Instant::now(),
                    })),
                    Err(e) if self.got.is_empty() => return Err(e),
                    Err(_) => break,
                }
            }
            Ok(self.got.len())
        }

        pub(crate) fn get(&self, i: usize) -> Option<(&[u8], Received)> {
            let r = (*self.got.get(i)?).ok()?;
            Some((&self.bufs[i][..r.len], r))
        }
    }
}

/// Ask the kernel to stamp arrivals on this socket; `false` if it will not
/// (then reads are timed when they happen).
pub(crate) fn enable_timestamps(sock: &mio::net::UdpSocket) -> bool {
    imp::enable_timestamps(sock)
}

/// Datagrams read per system call (`recvmmsg`): enough for a keyframe's
/// burst, small enough that the first packet of a batch is not held long.
pub(crate) const BATCH: usize = 32;

/// A read buffer slot: larger than any datagram a browser sends (WebRTC
/// keeps packets under the path MTU, ~1,200 bytes); a larger one is refused.
pub(crate) const SLOT: usize = 2048;

/// Datagrams received together, with their senders and arrival times.
pub(crate) use imp::Batch;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

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

    fn socket_pair() -> (mio::net::UdpSocket, std::net::UdpSocket, SocketAddr) {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_nonblocking(true).expect("nonblocking");
        let rx = mio::net::UdpSocket::from_std(rx);
        let to = rx.local_addr().expect("addr");
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        (rx, tx, to)
    }

    #[test]
    fn a_datagram_that_waited_in_the_buffer_keeps_its_arrival_time() {
        let (rx, tx, to) = socket_pair();
        let timestamps = enable_timestamps(&rx);
        let mut batch = Batch::new(4);
        // The kernel switches receive stamping on in deferred work and
        // stamps at read time until then (the SFU enables it at start-up,
        // long before media), so allow a few rounds on a busy machine.
        let mut ages = Vec::new();
        for _ in 0..20 {
            tx.send_to(b"hello", to).expect("send");
            // The worker is "busy" for 60 ms while the datagram waits.
            std::thread::sleep(Duration::from_millis(60));
            assert_eq!(batch.recv(&rx).expect("recv"), 1);
            let (bytes, got) = batch.get(0).expect("datagram");
            assert_eq!(bytes, b"hello");
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
        let again = batch.recv(&rx).expect_err("empty socket");
        assert_eq!(again.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn one_call_reads_a_burst_in_order_with_each_sender_and_refuses_an_oversized_datagram() {
        let (rx, tx, to) = socket_pair();
        let other = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut batch = Batch::new(8);
        assert_eq!(batch.capacity(), 8);
        // 11 datagrams of different sizes from two senders, one of them
        // larger than a slot: read as 8 + 3, in order.
        let mut sent = Vec::new();
        for i in 0..11u8 {
            let (sock, len) = match i {
                5 => (&other, SLOT + 100),
                _ if i % 2 == 0 => (&tx, 20 + usize::from(i) * 90),
                _ => (&other, 1 + usize::from(i)),
            };
            let payload = vec![i; len];
            sock.send_to(&payload, to).expect("send");
            sent.push((payload, sock.local_addr().expect("addr")));
        }
        std::thread::sleep(Duration::from_millis(20));
        let before = Instant::now();
        let mut got = Vec::new();
        for expected in [8, 3] {
            assert_eq!(batch.recv(&rx).expect("recv"), expected);
            for i in 0..expected {
                got.push(batch.get(i).map(|(b, r)| (b.to_vec(), r)));
            }
        }
        assert_eq!(got.len(), 11);
        for (i, (g, (payload, from))) in got.iter().zip(&sent).enumerate() {
            if i == 5 {
                assert!(g.is_none(), "a datagram larger than a slot must be refused");
                continue;
            }
            let (bytes, r) = g.as_ref().expect("datagram");
            assert_eq!(bytes, payload, "datagram {i}");
            assert_eq!(r.len, payload.len());
            assert_eq!(r.from, *from, "sender of datagram {i}");
            assert!(r.at <= Instant::now() && before.duration_since(r.at) < MAX_AGE);
        }
        assert!(
            batch.get(2).is_some() && batch.get(3).is_none(),
            "only the last call's datagrams"
        );
        assert_eq!(
            batch.recv(&rx).expect_err("drained").kind(),
            io::ErrorKind::WouldBlock
        );
    }
}
