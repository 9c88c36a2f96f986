//! Issue 10, finding 6 (media plane): at `--log-level debug`, junk media
//! wrote one log line per packet. Junk is counted and summarised instead:
//! this process logs at debug, with the WebRTC stack at the level
//! `sfu::webrtc_log_level` gives it (what the binary configures), and
//! counts the lines a flood of junk produces.

mod support;

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::*;

struct Counting {
    lines: AtomicUsize,
    summaries: Mutex<Vec<String>>,
}

static LOGGER: Counting = Counting {
    lines: AtomicUsize::new(0),
    summaries: Mutex::new(Vec::new()),
};

fn stack_target(target: &str) -> bool {
    target == "rtc" || target.starts_with("rtc_") || target.starts_with("rtc::")
}

impl Log for Counting {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        let max = if stack_target(m.target()) {
            sfu::webrtc_log_level(LevelFilter::Debug)
        } else {
            LevelFilter::Debug
        };
        m.level() <= max
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        self.lines.fetch_add(1, Ordering::Relaxed);
        let text = r.args().to_string();
        if r.level() == Level::Debug && text.contains("dropped in the last") {
            self.summaries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(text);
        }
    }

    fn flush(&self) {}
}

/// Junk of every kind an outsider can send: checks with a stolen ufrag and
/// a wrong password from many addresses, and from a connected
/// participant's own address (as a spoofer would) STUN without
/// credentials, bytes that are not WebRTC, and RTP-looking garbage.
#[test]
fn a_junk_flood_at_debug_is_summarised_not_logged_per_packet() {
    log::set_logger(&LOGGER).expect("logger");
    log::set_max_level(LevelFilter::Debug);
    let sfu = start_sfu();
    let udp = sfu.udp_addrs()[0];
    let mut joined = join(&sfu, "c1", "patient");
    let mut client = Client::answer(&sfu, &joined, loopback(2));
    assert!(
        client.connect(&mut joined, CONNECT_TIMEOUT),
        "no connection"
    );
    let (ufrag, _) = joined.ice();
    // Whatever connecting logged is not the flood's.
    std::thread::sleep(Duration::from_millis(500));
    let before = LOGGER.lines.load(Ordering::Relaxed);

    const EACH: usize = 2_000;
    let forged = binding_request(&format!("{ufrag}:x"), "a-wrong-password-123456");
    let sent = spray(udp, &forged, EACH, 10);
    let unsigned = {
        let mut p = forged.clone();
        // A binding request whose integrity attribute is not one any more.
        let at = p.len() - 8 - 24;
        p[at..at + 2].copy_from_slice(&[0x80, 0x99]);
        p
    };
    let mut rtp_like = vec![0x80, 96, 0, 1, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef];
    rtp_like.extend_from_slice(&[0x55; 100]);
    let not_webrtc = [0x50u8; 60];
    for i in 0..EACH {
        for p in [&forged[..], &unsigned[..], &rtp_like[..], &not_webrtc[..]] {
            let _ = client.sock.send_to(p, udp);
        }
        if i % 100 == 0 {
            std::thread::sleep(Duration::from_millis(5));
            client.pump();
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let flood_lines = LOGGER.lines.load(Ordering::Relaxed) - before;
    // 4 × 2,000 junk packets from the participant's address and 2,000
    // from others: one line each would be 10,000.
    assert!(sent >= EACH * 9 / 10);
    assert!(
        flood_lines < 50,
        "{flood_lines} log lines for {} junk packets",
        sent + 4 * EACH
    );
    // Summarised, not silent: within one summary period a line with the
    // counts, and the counters for /metrics.
    std::thread::sleep(Duration::from_secs(11));
    let summaries = LOGGER
        .summaries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert!(!summaries.is_empty(), "no summary line");
    let stats = sfu.limit_stats();
    assert!(
        stats.dropped_failed_check >= (EACH * 2) as u64 * 9 / 10,
        "{stats:?}"
    );
    assert!(
        stats.dropped_not_webrtc >= EACH as u64 * 9 / 10,
        "{stats:?}"
    );
    sfu.shutdown();
}
