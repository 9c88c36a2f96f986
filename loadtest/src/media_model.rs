//! Synthetic media that looks like a real encoder's output on the wire:
//! VP8 frames with a valid payload descriptor (RFC 7741) and frame header,
//! packetized the way libwebrtc does it (equal-sized packets of at most
//! `MAX_PAYLOAD` bytes, marker on the last one), and 20 ms Opus packets.
//!
//! Every payload ends with a [`Stamp`]: a per-stream packet counter and the
//! send time, so a subscriber measures loss and one-way latency without
//! trusting the SFU's (rewritten) sequence numbers. Pure: no I/O, no clock.

/// Largest RTP payload we produce (libwebrtc aims at ~1200 bytes).
pub const MAX_PAYLOAD: usize = 1200;
/// VP8 payload descriptor with X, I and a 15-bit picture id (libwebrtc's).
pub const VP8_DESCRIPTOR_LEN: usize = 4;
/// 90 kHz RTP clock.
pub const VIDEO_CLOCK: u32 = 90_000;
/// One 20 ms Opus frame at 48 kHz.
pub const OPUS_TS_STEP: u32 = 960;
/// Opus packets at ~32 kbit/s: 80 bytes per 20 ms.
pub const OPUS_PAYLOAD: usize = 80;

/// Trailer on every payload: magic, stream counter, send time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Packet index within its stream, starting at 0.
    pub counter: u32,
    /// Send time in nanoseconds since the run's epoch (one process, one clock).
    pub sent_ns: u64,
}

const MAGIC: [u8; 2] = [0x5b, 0x4b];
pub const STAMP_LEN: usize = 14;

impl Stamp {
    /// Write the stamp into the last `STAMP_LEN` bytes of `payload`.
    pub fn write(&self, payload: &mut [u8]) {
        let n = payload.len();
        if n < STAMP_LEN {
            return;
        }
        let t = &mut payload[n - STAMP_LEN..];
        t[..2].copy_from_slice(&MAGIC);
        t[2..6].copy_from_slice(&self.counter.to_be_bytes());
        t[6..14].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// Read the stamp from the end of a payload, if it carries one.
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let n = payload.len();
        if n < STAMP_LEN {
            return None;
        }
        let t = &payload[n - STAMP_LEN..];
        if t[..2] != MAGIC {
            return None;
        }
        Some(Stamp {
            counter: u32::from_be_bytes([t[2], t[3], t[4], t[5]]),
            sent_ns: u64::from_be_bytes([t[6], t[7], t[8], t[9], t[10], t[11], t[12], t[13]]),
        })
    }
}

/// Video encoder settings.
#[derive(Debug, Clone, Copy)]
pub struct VideoParams {
    pub bitrate_bps: u32,
    pub fps: u32,
    /// Frames between keyframes (e.g. 90 = every 3 s at 30 fps).
    pub keyframe_interval: u32,
    pub width: u16,
    pub height: u16,
}

impl Default for VideoParams {
    fn default() -> Self {
        VideoParams {
            bitrate_bps: 1_200_000,
            fps: 30,
            keyframe_interval: 90,
            width: 1280,
            height: 720,
        }
    }
}

/// A keyframe is this many times an average frame (typical for VP8 at
/// 720p, ~1.2 Mbit/s: 25–40 KB keyframes, 4–5 KB delta frames).
const KEYFRAME_FACTOR: u32 = 6;

impl VideoParams {
    /// Frame sizes (bytes) for a keyframe and a delta frame such that one
    /// keyframe interval averages to the target bitrate.
    pub fn frame_sizes(&self) -> (usize, usize) {
        let fps = self.fps.max(1);
        let avg = (self.bitrate_bps / 8 / fps).max(64) as usize;
        let interval = self.keyframe_interval.max(2) as usize;
        let key = avg * KEYFRAME_FACTOR as usize;
        let total = avg * interval;
        let delta = (total.saturating_sub(key) / (interval - 1)).max(64);
        (key, delta)
    }

    pub fn ts_step(&self) -> u32 {
        VIDEO_CLOCK / self.fps.max(1)
    }
}

/// One RTP payload of a video frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoPacket {
    pub payload: Vec<u8>,
    pub marker: bool,
}

/// Sizes of the packets a frame of `frame_len` bytes is split into:
/// as few packets as fit `MAX_PAYLOAD` (descriptor included), equal sizes
/// (the first ones one byte larger), like libwebrtc's VP8 packetizer.
pub fn split_sizes(frame_len: usize) -> impl Iterator<Item = usize> {
    let room = MAX_PAYLOAD - VP8_DESCRIPTOR_LEN;
    let frame_len = frame_len.max(1);
    let n = frame_len.div_ceil(room);
    let base = frame_len / n;
    let extra = frame_len % n;
    (0..n).map(move |i| base + usize::from(i < extra))
}

/// The VP8 frame header at the start of a frame's first partition
/// (RFC 6386 §9.1): 3-byte frame tag, plus start code and dimensions on a
/// keyframe.
pub fn vp8_frame_header(keyframe: bool, frame_len: usize, width: u16, height: u16) -> Vec<u8> {
    // First partition size: pretend a tenth of the frame (19 bits).
    let first_part = ((frame_len / 10) as u32).min((1 << 19) - 1);
    // bit 0: frame type (0 = key), bits 1-3: version 0, bit 4: show_frame.
    let tag = u32::from(!keyframe) | (1 << 4) | (first_part << 5);
    let mut h = vec![tag as u8, (tag >> 8) as u8, (tag >> 16) as u8];
    if keyframe {
        h.extend_from_slice(&[0x9d, 0x01, 0x2a]);
        h.extend_from_slice(&(width & 0x3fff).to_le_bytes());
        h.extend_from_slice(&(height & 0x3fff).to_le_bytes());
    }
    h
}

/// Packetize one frame. `fill` supplies the filler bytes (cycled); the
/// stamp is written by the caller right before sending.
pub fn packetize_vp8(
    picture_id: u16,
    keyframe: bool,
    frame_len: usize,
    params: &VideoParams,
    fill: &[u8],
) -> Vec<VideoPacket> {
    let header = vp8_frame_header(keyframe, frame_len, params.width, params.height);
    let sizes: Vec<usize> = split_sizes(frame_len.max(header.len() + STAMP_LEN)).collect();
    let count = sizes.len();
    let mut out = Vec::with_capacity(count);
    for (i, size) in sizes.into_iter().enumerate() {
        let mut p = Vec::with_capacity(VP8_DESCRIPTOR_LEN + size);
        // X=1, N=0, S=1 on the first packet, PID=0.
        p.push(0x80 | if i == 0 { 0x10 } else { 0 });
        // I=1: picture id present.
        p.push(0x80);
        // M=1: 15-bit picture id.
        let pid = picture_id & 0x7fff;
        p.push(0x80 | (pid >> 8) as u8);
        p.push(pid as u8);
        let mut body = size;
        if i == 0 {
            p.extend_from_slice(&header);
            body = body.saturating_sub(header.len());
        }
        let mut left = body;
        while left > 0 {
            let take = left.min(fill.len().max(1));
            if fill.is_empty() {
                p.push(0);
            } else {
                p.extend_from_slice(&fill[..take]);
            }
            left -= take.min(left);
        }
        out.push(VideoPacket {
            payload: p,
            marker: i + 1 == count,
        });
    }
    out
}

/// Does this VP8 RTP payload start a keyframe? (What an SFU's keyframe
/// logic looks at; the tests use it to prove our packets pass it.)
#[cfg_attr(not(test), allow(dead_code))]
pub fn is_vp8_keyframe_start(payload: &[u8]) -> bool {
    let Some(&b0) = payload.first() else {
        return false;
    };
    if b0 & 0x10 == 0 || b0 & 0x0f != 0 {
        return false;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let Some(&x) = payload.get(1) else {
            return false;
        };
        i = 2;
        if x & 0x80 != 0 {
            let Some(&m) = payload.get(2) else {
                return false;
            };
            i += if m & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1;
        }
        if x & 0x30 != 0 {
            i += 1;
        }
    }
    payload.get(i).is_some_and(|tag| tag & 1 == 0)
}

/// An Opus payload: TOC byte (CELT fullband 20 ms, stereo, one frame)
/// and filler.
pub fn opus_payload(fill: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(OPUS_PAYLOAD);
    p.push(0xfc);
    while p.len() < OPUS_PAYLOAD {
        let take = (OPUS_PAYLOAD - p.len()).min(fill.len().max(1));
        if fill.is_empty() {
            p.push(0);
        } else {
            p.extend_from_slice(&fill[..take]);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_rejects_foreign_payloads() {
        let mut p = vec![7u8; 100];
        let s = Stamp {
            counter: 0xdead_beef,
            sent_ns: 123_456_789_012,
        };
        s.write(&mut p);
        assert_eq!(Stamp::read(&p), Some(s));
        assert_eq!(Stamp::read(&[7u8; 100]), None);
        assert_eq!(Stamp::read(&[0x5b, 0x4b]), None);
    }

    #[test]
    fn frame_sizes_average_to_the_bitrate() {
        let v = VideoParams::default();
        let (key, delta) = v.frame_sizes();
        let per_interval = key + delta * (v.keyframe_interval as usize - 1);
        let bps = per_interval as f64 * 8.0 * v.fps as f64 / v.keyframe_interval as f64;
        assert!((bps - 1_200_000.0).abs() / 1_200_000.0 < 0.01, "{bps}");
        assert!(key > 20_000 && key < 40_000, "keyframe {key}");
        assert!(delta > 3_000 && delta < 5_000, "delta {delta}");
    }

    #[test]
    fn split_is_even_and_bounded() {
        let sizes: Vec<_> = split_sizes(5000).collect();
        assert_eq!(sizes.len(), 5);
        assert_eq!(sizes.iter().sum::<usize>(), 5000);
        assert!(sizes.iter().all(|s| *s + VP8_DESCRIPTOR_LEN <= MAX_PAYLOAD));
        let max = sizes.iter().max().unwrap();
        let min = sizes.iter().min().unwrap();
        assert!(max - min <= 1);
        assert_eq!(split_sizes(1196).count(), 1);
        assert_eq!(split_sizes(1197).count(), 2);
    }

    #[test]
    fn keyframe_packets_carry_valid_descriptor_and_header() {
        let v = VideoParams::default();
        let pkts = packetize_vp8(0x1234, true, 30_000, &v, &[0xaa; 256]);
        assert_eq!(pkts.len(), 26);
        assert!(pkts.iter().all(|p| p.payload.len() <= MAX_PAYLOAD));
        let total: usize = pkts.iter().map(|p| p.payload.len() - 4).sum();
        assert_eq!(total, 30_000);
        assert!(pkts.last().unwrap().marker);
        assert!(pkts[..25].iter().all(|p| !p.marker));
        let first = &pkts[0].payload;
        assert_eq!(first[0], 0x90, "X and S set, partition 0");
        assert_eq!(first[1], 0x80, "I set");
        assert_eq!(u16::from_be_bytes([first[2], first[3]]), 0x8000 | 0x1234);
        assert_eq!(first[4] & 1, 0, "keyframe bit");
        assert_eq!(&first[7..10], &[0x9d, 0x01, 0x2a], "start code");
        assert_eq!(u16::from_le_bytes([first[10], first[11]]), 1280);
        assert_eq!(u16::from_le_bytes([first[12], first[13]]), 720);
        assert!(is_vp8_keyframe_start(first));
        assert!(!is_vp8_keyframe_start(&pkts[1].payload), "S not set");
    }

    #[test]
    fn delta_frames_are_not_keyframes() {
        let v = VideoParams::default();
        let pkts = packetize_vp8(7, false, 4_000, &v, &[1, 2, 3]);
        assert_eq!(pkts.len(), 4);
        assert_eq!(pkts[0].payload[4] & 1, 1);
        assert!(!is_vp8_keyframe_start(&pkts[0].payload));
    }

    #[test]
    fn opus_payload_has_toc_and_fixed_size() {
        let p = opus_payload(&[9; 7]);
        assert_eq!(p.len(), OPUS_PAYLOAD);
        assert_eq!(p[0], 0xfc);
    }
}
