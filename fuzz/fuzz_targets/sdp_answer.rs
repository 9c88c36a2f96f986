//! A browser's SDP answer, applied to a real offer of ours: the SDP edits
//! of `simulcast.rs`, the audio-level extension id, rtc's SDP parser and
//! `set_remote_description`, then the tracks and simulcast rids the peer
//! learns from it. Bounded by the WebSocket message limit, as in the edge.
//!
//! The peer (its DTLS certificate, media engine, interceptors and offer) is
//! built once and kept while it refuses answers: a refused answer leaves the
//! offer pending, so the next input meets the same offer. An accepted answer
//! makes `AnswerHarness::answer` build a fresh peer itself. The peer is also
//! replaced after `ANSWERS_PER_PEER` inputs, so that what a long run leaves
//! behind (the harness's clock moves 20 ms per input, rtc's timers and
//! buffers) stays bounded, and a crash replayed on its own starts from
//! nearly the state it was found in.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sfu::fuzzing::AnswerHarness;
use std::cell::RefCell;

/// Inputs one peer answers before it is replaced (20 s of its clock).
/// Building a peer (a fresh DTLS certificate among the rest) costs about
/// 7 ms in the optimised ASan build, some 15 answers' worth (a peer per
/// input ran at 127 exec/s, this at about 1,900), so replacing it every
/// 1,000 answers costs about 1.5 %.
const ANSWERS_PER_PEER: u32 = 1000;

thread_local! {
    static HARNESS: RefCell<Option<(AnswerHarness, u32)>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    if data.len() > 64 * 1024 {
        return;
    }
    let Ok(sdp) = std::str::from_utf8(data) else {
        return;
    };
    HARNESS.with(|h| {
        let mut h = h.borrow_mut();
        if h.as_ref().is_none_or(|(_, n)| *n >= ANSWERS_PER_PEER) {
            let first = h.is_none();
            let harness = AnswerHarness::new().expect("a peer with an offer");
            // For fuzz/capture-chromium-answer.sh: the offer to answer.
            if first && let Ok(path) = std::env::var("SPREEKKAMER_FUZZ_OFFER_OUT") {
                std::fs::write(path, harness.offer()).expect("write the offer");
            }
            *h = Some((harness, 0));
        }
        if let Some((harness, answered)) = h.as_mut() {
            harness.answer(sdp);
            *answered += 1;
        }
    });
});
