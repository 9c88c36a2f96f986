//! The wire protocol: one WebSocket text message from a client, read as
//! `session.rs` reads it (size limit, UTF-8, JSON into `ClientMessage`).
//! Whatever parses must serialize and parse back to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signaling::protocol::{ClientMessage, Limits};

fuzz_target!(|data: &[u8]| {
    if data.len() > Limits::default().max_message_bytes {
        return; // refused with `message_too_large` before parsing
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(msg) = serde_json::from_str::<ClientMessage>(text) else {
        return;
    };
    let _ = msg.kind();
    let json = serde_json::to_string(&msg).expect("a parsed message serializes");
    let again: ClientMessage = serde_json::from_str(&json).expect("its JSON parses again");
    assert_eq!(again, msg, "round trip changed the message");
});
