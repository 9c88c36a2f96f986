//! RTP header rewriting for one outgoing (subscriber-side) stream.
//!
//! Each subscriber receives a publisher's track on a sender of its own, with
//! the SSRC and payload type negotiated on *that* peer connection. Sequence
//! numbers and timestamps pass through unchanged while the source stays the
//! same, and are shifted to continue seamlessly when the source SSRC changes
//! (a publisher that renegotiates or restarts its encoder), so the
//! subscriber's jitter buffer never sees a jump. Header extensions are
//! stripped: their ids and meaning (transport-wide sequence numbers!) belong
//! to the publisher's leg; what the SFU sends gets its own (transport-wide
//! sequence numbers) from rtc's interceptors after this. Video numbering
//! across simulcast layer switches is decided in `simulcast.rs`; this file
//! then only stamps the outgoing identity.

use rtc::rtp::header::Header;

/// Timestamp step assumed across a source switch: one 20 ms audio frame at
/// 48 kHz or one 30 fps video frame at 90 kHz.
pub(crate) const AUDIO_TS_STEP: u32 = 960;
pub(crate) const VIDEO_TS_STEP: u32 = 3000;

#[derive(Debug, Clone)]
pub(crate) struct StreamRewriter {
    ssrc: u32,
    payload_type: u8,
    ts_step: u32,
    source: Option<Source>,
}

#[derive(Debug, Clone, Copy)]
struct Source {
    ssrc: u32,
    seq_delta: u16,
    ts_delta: u32,
    /// Highest outgoing sequence number and its timestamp so far.
    last_seq: u16,
    last_ts: u32,
}

/// Is `a` newer than `b` in 16-bit sequence space (RFC 3550 wrap-around)?
pub(crate) fn seq_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

impl StreamRewriter {
    pub(crate) fn new(ssrc: u32, payload_type: u8, ts_step: u32) -> Self {
        StreamRewriter {
            ssrc,
            payload_type,
            ts_step,
            source: None,
        }
    }

    /// The SSRC this stream goes out with.
    pub(crate) fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The payload type is known only after the subscriber's answer.
    pub(crate) fn set_payload_type(&mut self, payload_type: u8) {
        self.payload_type = payload_type;
    }

    /// Rewrite `header` in place for this stream. Allocation-free.
    pub(crate) fn rewrite(&mut self, header: &mut Header) {
        let (seq, ts) = self.numbers(header.ssrc, header.sequence_number, header.timestamp);
        self.rewrite_to(header, seq, ts);
    }

    /// The outgoing sequence number and timestamp of a packet of `ssrc`
    /// (a new source continues right after the last packet of the old).
    pub(crate) fn numbers(&mut self, ssrc: u32, seq: u16, timestamp: u32) -> (u16, u32) {
        let source = match self.source {
            Some(s) if s.ssrc == ssrc => s,
            previous => {
                let (seq_delta, ts_delta) = match previous {
                    // Continue right after the last packet of the old source.
                    Some(p) => (
                        p.last_seq.wrapping_add(1).wrapping_sub(seq),
                        p.last_ts.wrapping_add(self.ts_step).wrapping_sub(timestamp),
                    ),
                    None => (0, 0),
                };
                Source {
                    ssrc,
                    seq_delta,
                    ts_delta,
                    last_seq: seq.wrapping_add(seq_delta).wrapping_sub(1),
                    last_ts: timestamp.wrapping_add(ts_delta),
                }
            }
        };
        let seq = seq.wrapping_add(source.seq_delta);
        let ts = timestamp.wrapping_add(source.ts_delta);
        let mut updated = source;
        if seq_newer(seq, source.last_seq) {
            updated.last_seq = seq;
            updated.last_ts = ts;
        }
        self.source = Some(updated);
        (seq, ts)
    }

    /// The payload type this stream goes out with.
    pub(crate) fn payload_type(&self) -> u8 {
        self.payload_type
    }

    /// Put this stream's identity and the given numbers on `header` (the
    /// numbering decided elsewhere, e.g. by a simulcast layer switch).
    pub(crate) fn rewrite_to(&self, header: &mut Header, seq: u16, ts: u32) {
        header.ssrc = self.ssrc;
        header.payload_type = self.payload_type;
        header.sequence_number = seq;
        header.timestamp = ts;
        header.extension = false;
        header.extension_profile = 0;
        header.extensions.clear();
        header.extensions_padding = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtp::header::Extension;

    fn header(ssrc: u32, seq: u16, ts: u32) -> Header {
        Header {
            version: 2,
            payload_type: 100,
            ssrc,
            sequence_number: seq,
            timestamp: ts,
            ..Default::default()
        }
    }

    #[test]
    fn same_source_passes_sequence_and_timestamp_through() {
        let mut rw = StreamRewriter::new(0xAAAA, 96, VIDEO_TS_STEP);
        for (seq, ts) in [(65534u16, 10u32), (65535, 10), (0, 3010), (1, 3010)] {
            let mut h = header(7, seq, ts);
            rw.rewrite(&mut h);
            assert_eq!(
                (h.ssrc, h.payload_type, h.sequence_number, h.timestamp),
                (0xAAAA, 96, seq, ts)
            );
        }
    }

    #[test]
    fn source_switch_continues_the_outgoing_sequence() {
        let mut rw = StreamRewriter::new(1, 111, AUDIO_TS_STEP);
        let mut h = header(7, 500, 48_000);
        rw.rewrite(&mut h);
        let mut h = header(7, 501, 48_960);
        rw.rewrite(&mut h);
        // New publisher SSRC with unrelated numbering.
        let mut h = header(9, 20_000, 5);
        rw.rewrite(&mut h);
        assert_eq!(h.sequence_number, 502);
        assert_eq!(h.timestamp, 48_960 + AUDIO_TS_STEP);
        let mut h = header(9, 20_001, 965);
        rw.rewrite(&mut h);
        assert_eq!(
            (h.sequence_number, h.timestamp),
            (503, 48_960 + 2 * AUDIO_TS_STEP)
        );
    }

    #[test]
    fn late_packet_does_not_move_the_switch_point_backwards() {
        let mut rw = StreamRewriter::new(1, 96, VIDEO_TS_STEP);
        for seq in [10u16, 12, 11] {
            let mut h = header(7, seq, 0);
            rw.rewrite(&mut h);
        }
        let mut h = header(8, 1000, 0);
        rw.rewrite(&mut h);
        assert_eq!(h.sequence_number, 13);
    }

    #[test]
    fn header_extensions_are_stripped() {
        let mut rw = StreamRewriter::new(1, 96, VIDEO_TS_STEP);
        let mut h = header(7, 1, 0);
        h.extension = true;
        h.extension_profile = 0xBEDE;
        h.extensions.push(Extension {
            id: 3,
            payload: bytes::Bytes::from_static(&[1, 2]),
        });
        rw.rewrite(&mut h);
        assert!(!h.extension && h.extensions.is_empty());
    }

    #[test]
    fn sequence_comparison_wraps() {
        assert!(seq_newer(0, 65535));
        assert!(!seq_newer(65535, 0));
        assert!(!seq_newer(5, 5));
    }
}
