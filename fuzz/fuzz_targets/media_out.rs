//! Our own outbound media path (`srtp.rs`, `media_out.rs`): forwarded
//! packets, NACKs and transport-wide feedback from the subscriber, time.
//! Every packet we encrypt must decrypt with rtc's SRTP (replay-protected)
//! to exactly what was forwarded; a resend must be byte for byte what was
//! sent and be refused by a receiver that had it; random, truncated and
//! replayed feedback must not panic nor resend anything never sent. The
//! input is a sequence of `<op> <len> <len bytes>`:
//!
//! * op % 4 == 0: forward a packet (first byte: sequence step, second:
//!   marker; the rest is the payload);
//! * 1: a NACK for packets some way back (pairs of bytes);
//! * 2: an RTCP compound from the subscriber (after SRTCP);
//! * 3: time passing (first byte × 8 ms).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sfu::fuzzing::OwnPath;

fuzz_target!(|data: &[u8]| {
    let mut path = OwnPath::default();
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (body, tail) = tail.split_at(n);
        rest = tail;
        match op % 4 {
            0 => {
                if let [step, marker, payload @ ..] = body {
                    path.send(*step, marker & 1 == 1, payload);
                }
            }
            1 => path.nack(body),
            2 => {
                let _ = path.rtcp(body);
            }
            _ => path.advance(u16::from(body.first().copied().unwrap_or(0)) * 8),
        }
    }
});
