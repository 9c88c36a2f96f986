//! Sending datagrams in batches: what a loop turn of the worker produces
//! (a keyframe's burst to one subscriber, one packet to each of several)
//! leaves in one `sendmmsg` system call instead of one `sendto` each.
//!
//! The queue owns the packets rtc wrote (no copy) and is flushed when full
//! and at the end of every loop turn, before the worker waits again, so a
//! packet waits at most for the rest of the turn that produced it.
//!
//! **UDP GSO** (Linux `UDP_SEGMENT`): consecutive queued datagrams to one
//! address, all of one size but the last (which may be shorter), leave as
//! one message that the kernel cuts into those datagrams: a video frame's
//! packets to one subscriber (libwebrtc and our forwarding keep a frame's
//! packets equal-sized) cost one pass through the socket layer instead of
//! one each. If the kernel refuses it (a device without segmentation
//! support answers EIO), the socket falls back to one message per
//! datagram for good.

use bytes::BytesMut;
use std::io;
use std::net::SocketAddr;

/// Datagrams per `sendmmsg`: the queue is flushed when it holds this many.
pub(crate) const BATCH: usize = 32;

/// What a flush did: datagrams the kernel took, and those dropped because
/// the socket buffer was full (as a congested link would; counted for
/// operators) or refused for another reason (e.g. an unreachable address).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flushed {
    pub sent: u64,
    /// Bytes of the datagrams sent.
    pub bytes: u64,
    pub would_block: u64,
    pub failed: u64,
}

#[cfg(test)]
impl Flushed {
    fn add(&mut self, other: Flushed) {
        self.sent += other.sent;
        self.bytes += other.bytes;
        self.would_block += other.would_block;
        self.failed += other.failed;
    }
}

/// Buffers of datagrams already sent, for the next ones: the own media
/// path builds every forwarded packet in one (`media_out.rs`), so in a
/// steady state forwarding allocates nothing.
#[derive(Default)]
pub(crate) struct BufferPool {
    spare: Vec<BytesMut>,
}

/// Buffers kept at most (a burst's worth; more would only hold memory).
const POOL_MAX: usize = 256;
/// Capacity of a new buffer: a datagram that fits a 1,500-byte MTU.
pub(crate) const BUFFER: usize = 1_500;

impl BufferPool {
    /// An empty buffer of at least `len` bytes.
    pub(crate) fn take(&mut self, len: usize) -> BytesMut {
        match self.spare.pop() {
            Some(b) if b.capacity() >= len => b,
            _ => BytesMut::with_capacity(len.max(BUFFER)),
        }
    }

    /// Back for reuse (dropped if the pool is full or it is an odd size).
    pub(crate) fn give(&mut self, mut b: BytesMut) {
        if self.spare.len() < POOL_MAX && (BUFFER..=4 * BUFFER).contains(&b.capacity()) {
            b.clear();
            self.spare.push(b);
        }
    }

    /// A received packet's buffer back after the fan-out: `payload` was
    /// cut down in place (`inbound.rs`), so the front it gave up is
    /// reclaimed (no copy: it is empty) before the buffer is kept.
    pub(crate) fn reclaim(&mut self, mut payload: BytesMut) {
        payload.clear();
        if payload.try_reclaim(BUFFER) {
            self.give(payload);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.spare.len()
    }
}

/// Datagrams waiting to be sent, and the headers that describe them to
/// the kernel, allocated once per worker.
pub(crate) struct SendQueue {
    packets: Vec<(BytesMut, SocketAddr)>,
    sys: imp::Headers,
    /// Where sent datagrams' buffers go.
    pub(crate) pool: BufferPool,
}

impl Default for SendQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl SendQueue {
    pub(crate) fn new() -> Self {
        Self {
            packets: Vec::with_capacity(BATCH),
            sys: imp::Headers::new(BATCH),
            pool: BufferPool::default(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.packets.len()
    }

    /// Queue one datagram; when the queue is full it is flushed first.
    pub(crate) fn push(
        &mut self,
        sock: &mio::net::UdpSocket,
        packet: BytesMut,
        to: SocketAddr,
    ) -> Flushed {
        let mut done = Flushed::default();
        if self.packets.len() >= BATCH {
            done = self.flush(sock);
        }
        self.packets.push((packet, to));
        done
    }

    /// Send everything queued (the queue is empty afterwards).
    pub(crate) fn flush(&mut self, sock: &mio::net::UdpSocket) -> Flushed {
        let mut done = Flushed::default();
        let mut at = 0;
        while at < self.packets.len() {
            match self.sys.send(sock, &self.packets[at..]) {
                Ok(0) => {
                    // Not expected for a non-empty batch: skip one, counted.
                    done.failed += 1;
                    at += 1;
                }
                Ok(n) => {
                    done.sent += n as u64;
                    done.bytes += self.packets[at..at + n]
                        .iter()
                        .map(|(p, _)| p.len() as u64)
                        .sum::<u64>();
                    at += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The socket buffer is full: the rest would fail too.
                    done.would_block += (self.packets.len() - at) as u64;
                    break;
                }
                Err(e) => {
                    // This datagram alone (the kernel reports the first
                    // failure of a batch): skip it, send the rest.
                    log::trace!("udp send: {e}");
                    done.failed += 1;
                    at += 1;
                }
            }
        }
        for (b, _) in self.packets.drain(..) {
            self.pool.give(b);
        }
        done
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use bytes::BytesMut;
    use std::io;
    use std::mem::{size_of, zeroed};
    use std::net::SocketAddr;
    use std::os::fd::AsRawFd;

    /// `SOL_UDP` option: the segment size of a GSO message.
    const UDP_SEGMENT: libc::c_int = 103;
    /// Segments per GSO message (the kernel's limit is 64).
    const MAX_SEGMENTS: usize = 64;
    /// Bytes per GSO message (the kernel's limit is 64 KiB of payload).
    const MAX_GSO_BYTES: usize = 60_000;
    /// Room for one `cmsghdr` carrying a `u16`.
    const CMSG_ROOM: usize = 32;

    /// `sendmmsg` headers: one message per datagram, or per run of
    /// datagrams sent as one GSO message.
    pub(super) struct Headers {
        addrs: Vec<libc::sockaddr_storage>,
        iovs: Vec<libc::iovec>,
        hdrs: Vec<libc::mmsghdr>,
        /// Per message: its control buffer and one past its last datagram.
        cmsgs: Vec<[u64; CMSG_ROOM / 8]>,
        ends: Vec<usize>,
        /// Group runs into GSO messages (off after the kernel refused one).
        pub(super) gso: bool,
        /// Datagrams that left inside GSO messages (for tests and figures).
        pub(super) grouped: u64,
    }

    // SAFETY: the raw pointers point only into this value's own heap
    // buffers or the packets of the current call, and are rewritten before
    // every call; nothing is shared with another thread.
    unsafe impl Send for Headers {}

    impl Headers {
        pub(super) fn new(n: usize) -> Self {
            Self {
                // SAFETY: all-zero is a valid sockaddr_storage / iovec / mmsghdr.
                addrs: vec![unsafe { zeroed() }; n],
                iovs: vec![unsafe { zeroed() }; n],
                hdrs: (0..n).map(|_| unsafe { zeroed() }).collect(),
                cmsgs: vec![[0; CMSG_ROOM / 8]; n],
                ends: vec![0; n],
                gso: true,
                grouped: 0,
            }
        }

        /// One past the last datagram of the run that starts at `i`.
        fn run_end(&self, packets: &[(BytesMut, SocketAddr)], i: usize) -> usize {
            let (first, to) = &packets[i];
            let seg = first.len();
            let mut end = i + 1;
            if !self.gso || seg == 0 || seg > u16::MAX as usize {
                return end;
            }
            let mut bytes = seg;
            while end < packets.len()
                && end - i < MAX_SEGMENTS
                && packets[end].1 == *to
                && packets[end - 1].0.len() == seg
                && (1..=seg).contains(&packets[end].0.len())
                && bytes + packets[end].0.len() <= MAX_GSO_BYTES
            {
                bytes += packets[end].0.len();
                end += 1;
            }
            end
        }

        /// One `sendmmsg` for up to `n` of `packets`; how many datagrams
        /// the kernel took.
        pub(super) fn send(
            &mut self,
            sock: &mio::net::UdpSocket,
            packets: &[(BytesMut, SocketAddr)],
        ) -> io::Result<usize> {
            let n = packets.len().min(self.iovs.len());
            let packets = &packets[..n];
            for (i, (packet, _)) in packets.iter().enumerate() {
                self.iovs[i] = libc::iovec {
                    iov_base: packet.as_ptr() as *mut libc::c_void,
                    iov_len: packet.len(),
                };
            }
            let mut messages = 0;
            let mut i = 0;
            while i < n {
                let end = self.run_end(packets, i);
                let m = messages;
                let len = write_addr(&mut self.addrs[m], &packets[i].1);
                let h = &mut self.hdrs[m];
                h.msg_len = 0;
                h.msg_hdr.msg_name = (&mut self.addrs[m] as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = len;
                h.msg_hdr.msg_iov = &mut self.iovs[i];
                h.msg_hdr.msg_iovlen = (end - i) as _;
                h.msg_hdr.msg_control = std::ptr::null_mut();
                h.msg_hdr.msg_controllen = 0;
                h.msg_hdr.msg_flags = 0;
                if end - i > 1 {
                    let seg = packets[i].0.len() as u16;
                    let buf = &mut self.cmsgs[m];
                    h.msg_hdr.msg_control = buf.as_mut_ptr().cast();
                    // SAFETY: CMSG_SPACE of two bytes fits CMSG_ROOM; the
                    // header and data are written inside `buf`, which
                    // lives as long as `self`.
                    unsafe {
                        h.msg_hdr.msg_controllen = libc::CMSG_SPACE(2) as _;
                        let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                        (*c).cmsg_level = libc::SOL_UDP;
                        (*c).cmsg_type = UDP_SEGMENT;
                        (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
                    }
                }
                self.ends[m] = end;
                messages += 1;
                i = end;
            }
            // SAFETY: the first `messages` headers point at live buffers
            // (ours and the packets borrowed for this call) of the sizes
            // they state.
            let r = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    self.hdrs.as_mut_ptr(),
                    messages as libc::c_uint,
                    0,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                let first_grouped = self.ends[0] > 1;
                if first_grouped
                    && self.gso
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT)
                    )
                {
                    // No segmentation here: one datagram per message from now on.
                    log::info!("UDP GSO refused by the kernel ({e}): sending datagrams singly");
                    self.gso = false;
                    return self.send(sock, packets);
                }
                return Err(e);
            }
            let taken = match r as usize {
                0 => 0,
                m => self.ends[m - 1],
            };
            for m in 0..r as usize {
                let start = if m == 0 { 0 } else { self.ends[m - 1] };
                if self.ends[m] - start > 1 {
                    self.grouped += (self.ends[m] - start) as u64;
                }
            }
            Ok(taken)
        }
    }

    fn write_addr(storage: &mut libc::sockaddr_storage, addr: &SocketAddr) -> libc::socklen_t {
        match addr {
            SocketAddr::V4(a) => {
                // SAFETY: sockaddr_storage is large and aligned enough for
                // any sockaddr; this one is written whole.
                let sin = unsafe {
                    &mut *(storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
                };
                *sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(a) => {
                // SAFETY: as above.
                let sin6 = unsafe {
                    &mut *(storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
                };
                *sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use bytes::BytesMut;
    use std::io;
    use std::net::SocketAddr;

    /// One `send_to` per datagram where `sendmmsg` is not available.
    pub(super) struct Headers;

    impl Headers {
        pub(super) fn new(_n: usize) -> Self {
            Self
        }

        pub(super) fn send(
            &mut self,
            sock: &mio::net::UdpSocket,
            packets: &[(BytesMut, SocketAddr)],
        ) -> io::Result<usize> {
            let mut sent = 0;
            for (packet, to) in packets {
                match sock.send_to(packet, *to) {
                    Ok(_) => sent += 1,
                    Err(e) if sent == 0 => return Err(e),
                    Err(_) => break,
                }
            }
            Ok(sent)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A received datagram's buffer, cut down to its payload the way
    /// `inbound.rs` hands it on, comes back whole after the fan-out, and
    /// the next datagram is received into the same allocation.
    #[test]
    fn a_forwarded_packets_buffer_is_received_into_again() {
        let mut pool = BufferPool::default();
        let mut b = pool.take(1_200);
        b.extend_from_slice(&[7u8; 1_200]);
        let at = b.as_ptr();
        // As `inbound.rs` cuts it: in place.
        b.truncate(1_100);
        bytes::Buf::advance(&mut b, 12);
        assert_eq!(b.len(), 1_088);
        pool.reclaim(b);
        assert_eq!(pool.len(), 1, "the buffer is back");
        let again = pool.take(1_300);
        assert_eq!(again.as_ptr(), at, "the same allocation, from its start");
        assert!(again.is_empty() && again.capacity() >= BUFFER);
    }

    fn receiver() -> (std::net::UdpSocket, SocketAddr) {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let a = s.local_addr().expect("addr");
        (s, a)
    }

    fn sender() -> mio::net::UdpSocket {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.set_nonblocking(true).expect("nonblocking");
        mio::net::UdpSocket::from_std(s)
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_burst_to_one_address_leaves_as_one_gso_message_and_arrives_as_its_datagrams() {
        let (a, a_addr) = receiver();
        let (b, b_addr) = receiver();
        let sock = sender();
        let mut q = SendQueue::new();
        // A frame: ten 1,200-byte packets and a shorter last one, to `a`;
        // then one to `b`, then two of different sizes to `a` (no run).
        let mut sizes = vec![(a_addr, 1_200usize); 10];
        sizes.push((a_addr, 500));
        sizes.extend([(b_addr, 1_200), (a_addr, 300), (a_addr, 400)]);
        for (i, (to, len)) in sizes.iter().enumerate() {
            let _ = q.push(&sock, BytesMut::from(&vec![i as u8; *len][..]), *to);
        }
        let done = q.flush(&sock);
        assert_eq!(done.sent, 14);
        assert_eq!(done.bytes, 10 * 1_200 + 500 + 1_200 + 300 + 400);
        assert!(q.sys.gso, "this kernel takes UDP_SEGMENT on loopback");
        assert_eq!(q.sys.grouped, 11, "the frame went as one GSO message");
        let mut buf = [0u8; 2_000];
        for (i, (to, len)) in sizes.iter().enumerate() {
            let r = if *to == a_addr { &a } else { &b };
            let n = r.recv(&mut buf).expect("datagram");
            assert_eq!(n, *len, "datagram {i} keeps its size");
            assert!(
                buf[..n].iter().all(|&x| x == i as u8),
                "datagram {i} keeps its bytes"
            );
        }
    }

    #[test]
    fn sent_buffers_come_back_empty_for_the_next_packets_and_odd_ones_do_not() {
        let (_rx, to) = receiver();
        let sock = sender();
        let mut q = SendQueue::new();
        for i in 0..5u8 {
            let mut b = q.pool.take(1_200);
            assert!(b.capacity() >= 1_200 && b.is_empty());
            b.extend_from_slice(&[i; 1_200]);
            let _ = q.push(&sock, b, to);
        }
        // Too small and too large to keep.
        let _ = q.push(&sock, BytesMut::from(&[1u8; 10][..]), to);
        let _ = q.push(&sock, BytesMut::with_capacity(70_000), to);
        assert_eq!(q.pool.len(), 0);
        assert_eq!(q.flush(&sock).sent, 7);
        assert_eq!(q.pool.len(), 5, "the five pool-sized buffers came back");
        let again = q.pool.take(1_300);
        assert!(again.is_empty() && again.capacity() >= 1_300);
        assert_eq!(q.pool.len(), 4);
    }

    #[test]
    fn a_queue_larger_than_a_batch_arrives_whole_in_order_at_each_destination() {
        let (a, a_addr) = receiver();
        let (b, b_addr) = receiver();
        let sock = sender();
        let mut q = SendQueue::new();
        let mut total = Flushed::default();
        // 70 datagrams: more than two batches, alternating destinations,
        // each with its own size and contents.
        for i in 0..70u8 {
            let to = if i % 2 == 0 { a_addr } else { b_addr };
            let packet = BytesMut::from(&vec![i; 10 + usize::from(i) * 7][..]);
            total.add(q.push(&sock, packet, to));
            assert!(q.len() <= BATCH);
        }
        total.add(q.flush(&sock));
        assert_eq!(q.len(), 0);
        assert_eq!(
            total,
            Flushed {
                sent: 70,
                bytes: (0..70u64).map(|i| 10 + i * 7).sum(),
                would_block: 0,
                failed: 0
            }
        );
        let mut buf = [0u8; 1024];
        for i in 0..70u8 {
            let r = if i % 2 == 0 { &a } else { &b };
            let (n, from) = r.recv_from(&mut buf).expect("datagram");
            assert_eq!(from, sock.local_addr().expect("addr"));
            assert_eq!(
                &buf[..n],
                &vec![i; 10 + usize::from(i) * 7][..],
                "datagram {i}"
            );
        }
    }

    #[test]
    fn a_datagram_the_kernel_refuses_is_counted_and_the_rest_still_go() {
        let (a, a_addr) = receiver();
        let sock = sender();
        let mut q = SendQueue::new();
        let _ = q.push(&sock, BytesMut::from(&b"one"[..]), a_addr);
        // Too large for UDP at all (EMSGSIZE): refused alone.
        let _ = q.push(&sock, BytesMut::from(&vec![0u8; 70_000][..]), a_addr);
        let _ = q.push(&sock, BytesMut::from(&b"three"[..]), a_addr);
        let done = q.flush(&sock);
        assert_eq!(
            done,
            Flushed {
                sent: 2,
                bytes: 8,
                would_block: 0,
                failed: 1
            }
        );
        let mut buf = [0u8; 64];
        let (n, _) = a.recv_from(&mut buf).expect("first");
        assert_eq!(&buf[..n], b"one");
        let (n, _) = a.recv_from(&mut buf).expect("third");
        assert_eq!(&buf[..n], b"three");
    }

    #[test]
    fn under_a_tiny_send_buffer_every_queued_datagram_is_sent_or_counted_as_dropped() {
        let (_a, a_addr) = receiver();
        let std_sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        std_sock.set_nonblocking(true).expect("nonblocking");
        // The smallest send buffer the kernel allows: it fills quickly.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&std_sock);
        let small: libc::c_int = 1;
        // SAFETY: a valid fd and a c_int option of the stated size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&small as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let sock = mio::net::UdpSocket::from_std(std_sock);
        let mut q = SendQueue::new();
        let mut total = Flushed::default();
        for _ in 0..2_000 {
            total.add(q.push(&sock, BytesMut::from(&[7u8; 1200][..]), a_addr));
        }
        total.add(q.flush(&sock));
        assert_eq!(total.sent + total.would_block + total.failed, 2_000);
        // On loopback the kernel may deliver as fast as it is given; when
        // it does fill, what did not fit is counted, never lost silently.
        assert_eq!(total.failed, 0);
    }
}
