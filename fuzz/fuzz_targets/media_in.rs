//! Our own inbound media path (`srtp.rs`, `inbound.rs`, `media_in.rs`): a
//! publisher's packets, encrypted by rtc's SRTP as a browser's would be,
//! must decrypt to exactly what was sent, once; replays, changed, cut and
//! invented datagrams must be refused; the feedback built from what
//! arrived (transport-wide CC, NACK, receiver reports) must be valid RTCP
//! and NACK only what never arrived. The input is a sequence of
//! `<op> <len> <len bytes>`:
//!
//! * op % 4 == 0: the publisher sends a packet (first byte: stream, second:
//!   sequence step, third: delivered or lost; the rest is the payload);
//! * 1: a packet sent some way back arrives again (stream, how far back);
//! * 2: a changed, cut or invented datagram (stream, then bytes);
//! * 3: time passing (first byte × 4 ms), with the feedback that is due.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sfu::fuzzing::InboundPath;

fuzz_target!(|data: &[u8]| {
    let mut path = InboundPath::default();
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (body, tail) = tail.split_at(n);
        rest = tail;
        match (op % 4, body) {
            (0, [stream, step, deliver, payload @ ..]) => {
                path.publish(*stream, *step, deliver % 8 != 0, payload)
            }
            (1, [stream, back, ..]) => path.again(*stream, *back),
            (2, [stream, bytes @ ..]) => path.hostile(*stream, bytes),
            (3, _) => path.advance(u16::from(body.first().copied().unwrap_or(0)) * 4),
            _ => {}
        }
    }
});
