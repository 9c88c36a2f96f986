//! The media port: what arrives on the UDP socket and on ICE-TCP
//! connections before anything is authenticated. The first byte picks:
//!
//! * even: the rest is one UDP datagram (STUN ufrag demux);
//! * odd: the rest is an ICE-TCP byte stream, cut into socket reads at
//!   lengths taken from the first few bytes (RFC 4571 framing, then the
//!   demux of each frame).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let _ = sfu::fuzzing::media_port_datagram(rest);
        return;
    }
    // Up to 4 read sizes (1..=256 bytes, then the rest), then the stream.
    let cuts = usize::from(mode >> 1) % 5;
    let Some((sizes, mut stream)) = (cuts <= rest.len()).then(|| rest.split_at(cuts)) else {
        return;
    };
    let mut reads = Vec::with_capacity(cuts + 1);
    for &size in sizes {
        let n = (usize::from(size) + 1).min(stream.len());
        let (read, tail) = stream.split_at(n);
        reads.push(read);
        stream = tail;
    }
    reads.push(stream);
    sfu::fuzzing::ice_tcp_stream(reads);
});
