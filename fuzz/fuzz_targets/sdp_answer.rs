//! A browser's SDP answer, applied to a real offer of ours: the SDP edits
//! of `simulcast.rs`, the audio-level extension id, rtc's SDP parser and
//! `set_remote_description`, then the tracks and simulcast rids the peer
//! learns from it. Bounded by the WebSocket message limit, as in the edge.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sfu::fuzzing::AnswerHarness;
use std::cell::RefCell;

thread_local! {
    static HARNESS: RefCell<Option<AnswerHarness>> = const { RefCell::new(None) };
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
        if h.is_none() {
            let harness = AnswerHarness::new().expect("a peer with an offer");
            // For fuzz/capture-chromium-answer.sh: the offer to answer.
            if let Ok(path) = std::env::var("SPREEKKAMER_FUZZ_OFFER_OUT") {
                std::fs::write(path, harness.offer()).expect("write the offer");
            }
            *h = Some(harness);
        }
        if let Some(harness) = h.as_mut() {
            harness.answer(sdp);
        }
    });
});
