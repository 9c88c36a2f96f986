//! Our own inbound SRTCP and RTCP (`srtp.rs`, `rtcp_in.rs`): a peer's
//! compound RTCP, encrypted by rtc's SRTCP as a browser's would be, must
//! decrypt to exactly what was sent, once (while within the replay window
//! and while the SSRC table has room); replays, changed, cut and invented
//! datagrams must be refused and counted; the parser must never panic, a
//! refused compound packet must yield no item, and a TWCC feedback's
//! acknowledgements must be the same walked either way. The first byte
//! picks the profile (odd: AES-CM, even: AES-GCM); the rest is a sequence
//! of `<op> <len> <len bytes>`:
//!
//! * op % 4 == 0: the peer sends compound RTCP (first byte: sending SSRC,
//!   second: delivered or lost; the rest is the packet, version and SSRC
//!   forced);
//! * 1: a packet sent some way back arrives again (SSRC, how far back);
//! * 2: a changed, cut or invented datagram (SSRC, then bytes);
//! * 3: the bytes as plain RTCP, straight to the parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sfu::fuzzing::RtcpInPath;

fuzz_target!(|data: &[u8]| {
    let Some((profile, mut rest)) = data.split_first() else {
        return;
    };
    let mut path = RtcpInPath::new(profile % 2 == 1);
    while let [op, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (body, tail) = tail.split_at(n);
        rest = tail;
        match (op % 4, body) {
            (0, [ssrc, deliver, packet @ ..]) => path.send(*ssrc, deliver % 8 != 0, packet),
            (1, [ssrc, back, ..]) => path.again(*ssrc, *back),
            (2, [ssrc, bytes @ ..]) => path.hostile(*ssrc, bytes),
            (3, bytes) => path.parse(bytes),
            _ => {}
        }
    }
});
