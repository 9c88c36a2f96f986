//! RTP and RTCP after SRTP: simulcast layer switching and VP8 renumbering,
//! header rewriting, audio levels into the speaker detector, keyframe
//! requests and receiver reports, kernel arrival times. The input is a
//! sequence of operations, each `<op> <len> <len bytes>`:
//!
//! * op % 8 == 0..=2: a video RTP packet of layer op (l, m, h);
//! * 3: an audio RTP packet (first byte: publisher, second: level
//!   extension id, then the packet);
//! * 4: an RTCP compound from the subscriber;
//! * 5: the subscriber's target layer (first byte; > 3 = audio only) and
//!   time passing (second byte, ms);
//! * 6: a publisher leaves (first byte);
//! * 7: a kernel timestamp (8 + 4 + 4 bytes: seconds, nanos, wall offset).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sfu::fuzzing::MediaPlane;

fuzz_target!(|data: &[u8]| {
    let mut plane = MediaPlane::default();
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (body, tail) = tail.split_at(n);
        rest = tail;
        match op % 8 {
            layer @ 0..=2 => {
                let _ = plane.video(layer, body);
            }
            3 => {
                if let [who, ext, packet @ ..] = body {
                    plane.audio(*who, *ext, packet);
                }
            }
            4 => {
                let _ = plane.rtcp(body);
            }
            5 => {
                let target = body.first().copied().unwrap_or(2);
                plane.set_target((target <= 3).then_some(target));
                plane.advance(u16::from(body.get(1).copied().unwrap_or(0)) * 4);
            }
            6 => plane.leave(body.first().copied().unwrap_or(0)),
            _ => {
                if let Some(b) = body.get(..16) {
                    let secs = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
                    let nanos = u32::from_be_bytes(b[8..12].try_into().expect("4 bytes"));
                    let offset = i32::from_be_bytes(b[12..16].try_into().expect("4 bytes"));
                    let _ = plane.arrival(secs, nanos, offset);
                }
            }
        }
    }
});
