//! Simulcast: which of a publisher's layers one subscriber gets, and how a
//! switch between layers stays invisible to the subscriber's decoder.
//!
//! A simulcast publisher sends up to three independent VP8 streams (rids
//! `l`, `m`, `h`), each with its own SSRC, sequence numbers, timestamps,
//! picture ids and TL0PICIDX. A subscriber gets exactly one of them on one
//! track. [`LayerForwarder`] is the per-(subscriber, publisher) state
//! machine: it keeps forwarding the current layer until a keyframe of the
//! target layer arrives, switches exactly there, and shifts every number of
//! the new layer so that the output continues where the old one stopped (no
//! sequence gap or repeat, timestamps advance by the wall time that passed,
//! picture ids and TL0PICIDX count on). A pause (audio-only, or too little
//! bandwidth) takes effect at the next frame start; resuming is a switch
//! from nothing, so it too waits for a keyframe.
//!
//! Only the RTP header and the VP8 payload descriptor are read. Both are in
//! clear under end-to-end encryption: the descriptor is written by the
//! browser's packetizer after the encryption transform, and the client
//! leaves the VP8 frame header (whose first bit says "keyframe") clear.
//!
//! A publisher that did not negotiate simulcast sends one stream without a
//! rid; it is filed as the top layer and is then every layer there is.

use crate::VideoQuality;
use crate::rewrite::seq_newer;
use std::time::Instant;

/// Layers are indexed lowest first: 0 = `l`, 1 = `m`, 2 = `h`.
pub(crate) type Layer = u8;
pub(crate) const LAYERS: usize = 3;
pub(crate) const TOP: Layer = 2;

/// The rids we offer, top layer first, as they appear in `a=simulcast`.
pub(crate) const RIDS: [&str; LAYERS] = ["h", "m", "l"];

pub(crate) fn layer_of_rid(rid: &str) -> Option<Layer> {
    match rid {
        "l" => Some(0),
        "m" => Some(1),
        "h" => Some(2),
        _ => None,
    }
}

pub(crate) fn layer_of_quality(q: VideoQuality) -> Layer {
    match q {
        VideoQuality::Low => 0,
        VideoQuality::Medium => 1,
        VideoQuality::High => 2,
    }
}

/// 90 kHz video clock ticks per millisecond.
const VIDEO_TICKS_PER_MS: u64 = 90;
const PICTURE_ID_MASK_15: u16 = 0x7fff;
const PICTURE_ID_MASK_7: u16 = 0x7f;

/// Where the picture id sits in the payload and how wide it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PictureId {
    pub value: u16,
    /// 15-bit (M bit set) or 7-bit.
    pub long: bool,
    pub offset: usize,
}

/// What the VP8 payload descriptor (RFC 7741 §4.2) tells us.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Vp8Info {
    /// First packet of a frame (S = 1, partition index 0).
    pub frame_start: bool,
    /// First packet of a keyframe (the frame header's P bit is 0).
    pub keyframe: bool,
    pub picture_id: Option<PictureId>,
    /// TL0PICIDX and its offset in the payload.
    pub tl0: Option<(u8, usize)>,
}

/// Parse the VP8 payload descriptor. `None` for an empty or truncated
/// payload (padding-only packets have none).
pub(crate) fn parse_vp8(payload: &[u8]) -> Option<Vp8Info> {
    let b0 = *payload.first()?;
    let mut i = 1;
    let mut info = Vp8Info::default();
    if b0 & 0x80 != 0 {
        let b1 = *payload.get(1)?;
        i = 2;
        if b1 & 0x80 != 0 {
            let p0 = *payload.get(i)?;
            if p0 & 0x80 != 0 {
                let p1 = *payload.get(i + 1)?;
                info.picture_id = Some(PictureId {
                    value: (u16::from(p0 & 0x7f) << 8) | u16::from(p1),
                    long: true,
                    offset: i,
                });
                i += 2;
            } else {
                info.picture_id = Some(PictureId {
                    value: u16::from(p0),
                    long: false,
                    offset: i,
                });
                i += 1;
            }
        }
        if b1 & 0x40 != 0 {
            info.tl0 = Some((*payload.get(i)?, i));
            i += 1;
        }
        if b1 & 0x30 != 0 {
            payload.get(i)?;
            i += 1;
        }
    }
    info.frame_start = b0 & 0x10 != 0 && b0 & 0x07 == 0;
    info.keyframe = info.frame_start && payload.get(i).is_some_and(|h| h & 0x01 == 0);
    Some(info)
}

/// The numbers one packet leaves with. `picture_id`/`tl0` are `Some` only
/// when the payload must be patched (the shift is not zero), so the common
/// unshifted path forwards the payload untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rewrite {
    pub seq: u16,
    pub ts: u32,
    pub picture_id: Option<PictureId>,
    pub tl0: Option<(u8, usize)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Drop,
    Forward(Rewrite),
}

/// The last numbers sent, for continuing after a switch.
#[derive(Debug, Clone, Copy)]
struct Last {
    seq: u16,
    ts: u32,
    at: Instant,
    picture_id: Option<u16>,
    tl0: Option<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Current {
    layer: Layer,
    ssrc: u32,
    /// First input sequence number of this layer we forwarded: anything
    /// older belongs to before the switch.
    start_seq: u16,
    seq_delta: u16,
    ts_delta: u32,
    pic_delta: u16,
    tl0_delta: u8,
    /// Highest input sequence number of this layer seen (forwarded or
    /// skipped).
    in_high: u16,
}

/// How many skipped input sequence numbers are remembered, to number a
/// late (reordered or repaired) packet that precedes some of them.
const SKIP_MEMORY: usize = 64;

/// Switch direction, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Switched {
    Up,
    Down,
    Resumed,
}

/// Per (subscriber, publisher) video forwarding state. Allocation-free.
#[derive(Debug, Clone)]
pub(crate) struct LayerForwarder {
    target: Option<Layer>,
    current: Option<Current>,
    last: Option<Last>,
    /// Set by a switch, taken by the caller (metrics).
    switched: Option<Switched>,
    /// Input sequence numbers of the current layer not forwarded (padding),
    /// a ring; `skipped_count` counts all since the layer began.
    skipped: [u16; SKIP_MEMORY],
    skipped_count: usize,
}

impl LayerForwarder {
    pub(crate) fn new(target: Option<Layer>) -> Self {
        LayerForwarder {
            target,
            current: None,
            last: None,
            switched: None,
            skipped: [0; SKIP_MEMORY],
            skipped_count: 0,
        }
    }

    /// The layer to forward from now on (`None`: pause video). Takes effect
    /// at the next keyframe of that layer, or for a pause at the next frame
    /// start of the current one.
    pub(crate) fn set_target(&mut self, target: Option<Layer>) {
        self.target = target;
    }

    pub(crate) fn target(&self) -> Option<Layer> {
        self.target
    }

    /// The layer being forwarded right now.
    pub(crate) fn current(&self) -> Option<Layer> {
        self.current.map(|c| c.layer)
    }

    /// The layer a keyframe is needed on before the target can be reached.
    pub(crate) fn wants_keyframe(&self) -> Option<Layer> {
        match (self.target, self.current) {
            (Some(t), Some(c)) if c.layer == t => None,
            (t, _) => t,
        }
    }

    pub(crate) fn take_switched(&mut self) -> Option<Switched> {
        self.switched.take()
    }

    /// Decide about one packet of `layer`.
    pub(crate) fn on_packet(
        &mut self,
        layer: Layer,
        ssrc: u32,
        seq: u16,
        ts: u32,
        vp8: Option<&Vp8Info>,
        now: Instant,
    ) -> Verdict {
        let keyframe = vp8.is_some_and(|v| v.keyframe);
        let frame_start = vp8.is_some_and(|v| v.frame_start);
        match self.current {
            // The same layer restarted its stream (new SSRC: the encoder
            // was reconfigured): continue the numbering from here.
            Some(c) if c.layer == layer && c.ssrc != ssrc => {
                self.begin(layer, ssrc, seq, ts, vp8, now);
            }
            _ => {}
        }
        if self.target == Some(layer) && self.current().is_none_or(|c| c != layer) && keyframe {
            self.switched = Some(match self.current() {
                None => Switched::Resumed,
                Some(c) if c < layer => Switched::Up,
                Some(_) => Switched::Down,
            });
            self.begin(layer, ssrc, seq, ts, vp8, now);
        } else if self.target.is_none() && self.current() == Some(layer) && frame_start {
            // Pause between frames: the subscriber got whole frames only.
            self.current = None;
        }
        let Some(mut c) = self.current else {
            return Verdict::Drop;
        };
        if c.layer != layer || (seq != c.start_seq && !seq_newer(seq, c.start_seq)) {
            return Verdict::Drop;
        }
        let newest = seq_newer(seq, c.in_high);
        if vp8.is_none() && newest {
            // Padding-only (a publisher probing its own uplink sends up to
            // ~1 000 a second on the media SSRC when RTX is not negotiated)
            // or a payload without a readable descriptor: worthless to the
            // subscriber, and forwarded it once flooded a 350 kbit/s link.
            // Later packets move down one number, so no gap is seen.
            c.seq_delta = c.seq_delta.wrapping_sub(1);
            c.in_high = seq;
            self.current = Some(c);
            self.skipped[self.skipped_count % SKIP_MEMORY] = seq;
            self.skipped_count += 1;
            return Verdict::Drop;
        }
        let mut delta = c.seq_delta;
        if newest {
            c.in_high = seq;
            self.current = Some(c);
        } else if self.skipped_count > 0 {
            // Late: the skips after it did not apply to it yet.
            let kept = self.skipped_count.min(SKIP_MEMORY);
            if self.skipped_count > SKIP_MEMORY {
                let oldest = self.skipped[self.skipped_count % SKIP_MEMORY];
                if seq_newer(oldest, seq) {
                    // Older than what we remember: its number is unknown.
                    return Verdict::Drop;
                }
            }
            let skipped = &self.skipped[..kept];
            if vp8.is_none() && skipped.contains(&seq) {
                // A repeat of padding we skipped: it has no number.
                return Verdict::Drop;
            }
            let later = skipped.iter().filter(|&&s| seq_newer(s, seq)).count();
            delta = delta.wrapping_add(later as u16);
        }
        // Late padding that was lost upstream and repaired is forwarded: it
        // fills the hole its loss left in what the subscriber saw (else the
        // subscriber counts it lost and NACKs what no cache holds).
        let out_seq = seq.wrapping_add(delta);
        let out_ts = ts.wrapping_add(c.ts_delta);
        let mut rewrite = Rewrite {
            seq: out_seq,
            ts: out_ts,
            picture_id: None,
            tl0: None,
        };
        let mut out_pic = None;
        let mut out_tl0 = None;
        if let Some(v) = vp8 {
            if let Some(p) = v.picture_id {
                let mask = if p.long {
                    PICTURE_ID_MASK_15
                } else {
                    PICTURE_ID_MASK_7
                };
                let value = p.value.wrapping_add(c.pic_delta) & mask;
                out_pic = Some(value);
                if c.pic_delta & mask != 0 {
                    rewrite.picture_id = Some(PictureId { value, ..p });
                }
            }
            if let Some((t, at)) = v.tl0 {
                let value = t.wrapping_add(c.tl0_delta);
                out_tl0 = Some(value);
                if c.tl0_delta != 0 {
                    rewrite.tl0 = Some((value, at));
                }
            }
        }
        let newest = self.last.is_none_or(|l| seq_newer(out_seq, l.seq));
        if newest {
            let prev = self.last;
            self.last = Some(Last {
                seq: out_seq,
                ts: out_ts,
                at: now,
                picture_id: out_pic.or(prev.and_then(|l| l.picture_id)),
                tl0: out_tl0.or(prev.and_then(|l| l.tl0)),
            });
        }
        Verdict::Forward(rewrite)
    }

    fn begin(
        &mut self,
        layer: Layer,
        ssrc: u32,
        seq: u16,
        ts: u32,
        vp8: Option<&Vp8Info>,
        now: Instant,
    ) {
        let pic = vp8.and_then(|v| v.picture_id);
        let tl0 = vp8.and_then(|v| v.tl0).map(|(t, _)| t);
        let mut c = Current {
            layer,
            ssrc,
            start_seq: seq,
            seq_delta: 0,
            ts_delta: 0,
            pic_delta: 0,
            tl0_delta: 0,
            in_high: seq,
        };
        self.skipped_count = 0;
        // The very first stream passes through unshifted (and unpatched).
        if let Some(last) = self.last {
            c.seq_delta = last.seq.wrapping_add(1).wrapping_sub(seq);
            let elapsed_ms = now.saturating_duration_since(last.at).as_millis() as u64;
            let ticks = (elapsed_ms * VIDEO_TICKS_PER_MS).clamp(1, u64::from(u32::MAX / 2)) as u32;
            c.ts_delta = last.ts.wrapping_add(ticks).wrapping_sub(ts);
            if let (Some(lp), Some(p)) = (last.picture_id, pic) {
                c.pic_delta = lp.wrapping_add(1).wrapping_sub(p.value);
            }
            if let (Some(lt), Some(t)) = (last.tl0, tl0) {
                c.tl0_delta = lt.wrapping_add(1).wrapping_sub(t);
            }
        }
        self.current = Some(c);
    }
}

/// Ask for simulcast in an offer: in the first `recvonly` video section
/// (the participant's camera) add `a=rid:<id> recv` for every layer and
/// `a=simulcast:recv h;m;l`. Everything else is left byte for byte.
///
/// rtc itself writes these lines into a re-offer once an answer carried
/// rids (it mirrors the remote description); a section that has them
/// already is left alone, as Chromium rejects a second `a=simulcast`.
pub(crate) fn offer_simulcast_recv(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len() + 128);
    let mut done = false;
    for section in split_sections(sdp) {
        let is_camera = section.starts_with("m=video")
            && section
                .split_inclusive('\n')
                .any(|l| l.trim_end() == "a=recvonly");
        if done || !is_camera {
            out.push_str(section);
            continue;
        }
        done = true;
        if section
            .split_inclusive('\n')
            .any(|l| l.starts_with("a=simulcast:"))
        {
            out.push_str(section);
            continue;
        }
        add_rids(section, &mut out);
    }
    out
}

fn add_rids(section: &str, out: &mut String) {
    for line in section.split_inclusive('\n') {
        let text = line.trim_end();
        out.push_str(line);
        if text == "a=recvonly" {
            let eol = if line.ends_with("\r\n") { "\r\n" } else { "\n" };
            for rid in RIDS {
                out.push_str("a=rid:");
                out.push_str(rid);
                out.push_str(" recv");
                out.push_str(eol);
            }
            out.push_str("a=simulcast:recv ");
            out.push_str(&RIDS.join(";"));
            out.push_str(eol);
        }
    }
}

/// An answerer that cannot really send simulcast may still echo our rid
/// lines (rtc, and so the load generator, does: `a=rid:h send`, ...)
/// while declaring the one SSRC it sends. Applied as is, rtc would wait
/// for rid-tagged streams that never come and drop that stream. So: in
/// every section that answers simulcast yet declares exactly one media
/// SSRC (RTX/FEC partners in `a=ssrc-group` not counted), drop the rid and
/// simulcast lines, leaving a plain single-stream answer. A real simulcast
/// answer declares no SSRC (Chromium) or one per layer (Firefox).
pub(crate) fn drop_echoed_simulcast(sdp: &str) -> Option<String> {
    let sections: Vec<&str> = split_sections(sdp);
    let mut changed = false;
    let mut out = String::with_capacity(sdp.len());
    for section in sections {
        let lines = || section.split_inclusive('\n').map(|l| (l, l.trim_end()));
        let simulcast = lines().any(|(_, t)| t.starts_with("a=simulcast:"));
        let mut ssrcs: Vec<&str> = Vec::new();
        let mut secondary: Vec<&str> = Vec::new();
        for (_, t) in lines() {
            if let Some(rest) = t.strip_prefix("a=ssrc:")
                && let Some(id) = rest.split(' ').next()
                && !ssrcs.contains(&id)
            {
                ssrcs.push(id);
            }
            if let Some(rest) = t.strip_prefix("a=ssrc-group:") {
                secondary.extend(rest.split(' ').skip(2));
            }
        }
        let media = ssrcs.iter().filter(|s| !secondary.contains(s)).count();
        if simulcast && media == 1 {
            changed = true;
            for (l, t) in lines() {
                if !t.starts_with("a=rid:") && !t.starts_with("a=simulcast:") {
                    out.push_str(l);
                }
            }
        } else {
            out.push_str(section);
        }
    }
    changed.then_some(out)
}

/// For a renegotiation answer once simulcast layers are flowing: hide the
/// simulcast section's track from rtc. rtc 0.21.1 rebuilds every receiver
/// from each answer, forgetting which SSRC each rid had; it learns them
/// again only from the rid header extension, which Chromium stops sending
/// once our receiver reports acknowledged the SSRC. So every join or leave
/// (each renegotiates) would silently drop the publisher's video. Without
/// `a=msid`/`a=rid`/`a=simulcast`/`a=ssrc` lines the section names no
/// track, and rtc leaves the receiver and its learned SSRCs alone.
pub(crate) fn keep_rid_bindings(sdp: &str) -> Option<String> {
    let mut changed = false;
    let mut out = String::with_capacity(sdp.len());
    for section in split_sections(sdp) {
        let simulcast = section
            .split_inclusive('\n')
            .any(|l| l.starts_with("a=simulcast:"));
        if !simulcast {
            out.push_str(section);
            continue;
        }
        changed = true;
        for l in section.split_inclusive('\n') {
            let hidden = [
                "a=msid:",
                "a=rid:",
                "a=simulcast:",
                "a=ssrc:",
                "a=ssrc-group:",
            ]
            .iter()
            .any(|p| l.starts_with(p));
            if !hidden {
                out.push_str(l);
            }
        }
    }
    changed.then_some(out)
}

/// Session part, then one slice per `m=` section (lines kept intact).
fn split_sections(sdp: &str) -> Vec<&str> {
    let mut starts = vec![0];
    let mut at = 0;
    for line in sdp.split_inclusive('\n') {
        if at > 0 && line.starts_with("m=") {
            starts.push(at);
        }
        at += line.len();
    }
    starts.push(sdp.len());
    starts.windows(2).map(|w| &sdp[w[0]..w[1]]).collect()
}

/// Patch the VP8 payload descriptor in place with the shifted numbers.
pub(crate) fn patch_vp8(payload: &mut [u8], rewrite: &Rewrite) {
    if let Some(p) = rewrite.picture_id {
        if p.long {
            if let Some(b) = payload.get_mut(p.offset..p.offset + 2) {
                b[0] = 0x80 | ((p.value >> 8) as u8 & 0x7f);
                b[1] = p.value as u8;
            }
        } else if let Some(b) = payload.get_mut(p.offset) {
            *b = p.value as u8 & 0x7f;
        }
    }
    if let Some((t, at)) = rewrite.tl0
        && let Some(b) = payload.get_mut(at)
    {
        *b = t;
    }
}

/// Pick the layer to send given what the subscriber may have (`desired`;
/// `None` = no video) and which layers the publisher is sending right now
/// (bit `i` = layer `i`): the highest active layer not above `desired`,
/// else the lowest active one (a publisher with one layer serves all).
pub(crate) fn choose(desired: Option<Layer>, active: u8) -> Option<Layer> {
    let desired = desired?;
    if active == 0 {
        return Some(desired);
    }
    (0..=desired)
        .rev()
        .find(|l| active & (1 << l) != 0)
        .or_else(|| (0..LAYERS as Layer).find(|l| active & (1 << l) != 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A VP8 descriptor with 15-bit picture id and TL0PICIDX, then one byte
    /// of frame header (P bit = !keyframe).
    fn vp8(start: bool, keyframe: bool, pic: u16, tl0: u8) -> Vec<u8> {
        let b0 = 0x80 | if start { 0x10 } else { 0 };
        let b1 = 0x80 | 0x40 | 0x20;
        vec![
            b0,
            b1,
            0x80 | (pic >> 8) as u8,
            pic as u8,
            tl0,
            0x00,
            if keyframe { 0x00 } else { 0x01 },
        ]
    }

    struct Out {
        seq: u16,
        ts: u32,
        pic: u16,
        tl0: u8,
    }

    /// Run one packet through and return what the subscriber would see.
    fn run(
        f: &mut LayerForwarder,
        layer: Layer,
        seq: u16,
        ts: u32,
        payload: &[u8],
        now: Instant,
    ) -> Option<Out> {
        let info = parse_vp8(payload);
        match f.on_packet(layer, 100 + u32::from(layer), seq, ts, info.as_ref(), now) {
            Verdict::Drop => None,
            Verdict::Forward(r) => {
                let mut p = payload.to_vec();
                patch_vp8(&mut p, &r);
                let out = parse_vp8(&p).expect("still parses");
                Some(Out {
                    seq: r.seq,
                    ts: r.ts,
                    pic: out.picture_id.map(|p| p.value).unwrap_or_default(),
                    tl0: out.tl0.map(|t| t.0).unwrap_or_default(),
                })
            }
        }
    }

    #[test]
    fn descriptor_parsing_finds_keyframes_and_numbers() {
        let k = parse_vp8(&vp8(true, true, 0x1234, 9)).expect("parses");
        assert!(k.frame_start && k.keyframe);
        assert_eq!(
            k.picture_id,
            Some(PictureId {
                value: 0x1234,
                long: true,
                offset: 2
            })
        );
        assert_eq!(k.tl0, Some((9, 4)));
        let d = parse_vp8(&vp8(true, false, 1, 1)).expect("parses");
        assert!(d.frame_start && !d.keyframe);
        let cont = parse_vp8(&vp8(false, true, 1, 1)).expect("parses");
        assert!(!cont.frame_start && !cont.keyframe, "not the frame start");
        // Minimal descriptor (no X), 7-bit picture id, truncated input.
        let m = parse_vp8(&[0x10, 0x00]).expect("parses");
        assert!(m.keyframe && m.picture_id.is_none());
        assert_eq!(
            parse_vp8(&[0x90, 0x80, 0x05, 0x01])
                .expect("parses")
                .picture_id
                .map(|p| (p.value, p.long)),
            Some((5, false))
        );
        assert!(parse_vp8(&[]).is_none());
        assert!(
            parse_vp8(&[0x90, 0x80, 0x80]).is_none(),
            "cut in the picture id"
        );
    }

    #[test]
    fn first_layer_passes_through_untouched_from_its_first_keyframe() {
        let t0 = Instant::now();
        let mut f = LayerForwarder::new(Some(TOP));
        assert_eq!(f.wants_keyframe(), Some(TOP));
        assert!(run(&mut f, TOP, 10, 1000, &vp8(true, false, 5, 1), t0).is_none());
        let o = run(&mut f, TOP, 11, 4000, &vp8(true, true, 6, 2), t0).expect("keyframe");
        assert_eq!((o.seq, o.ts, o.pic, o.tl0), (11, 4000, 6, 2));
        assert_eq!(f.wants_keyframe(), None);
        // Unshifted: no payload patch asked for.
        let info = parse_vp8(&vp8(true, false, 7, 3));
        let v = f.on_packet(TOP, 102, 12, 7000, info.as_ref(), t0);
        assert!(matches!(
            v,
            Verdict::Forward(Rewrite {
                seq: 12,
                picture_id: None,
                tl0: None,
                ..
            })
        ));
    }

    #[test]
    fn switch_waits_for_a_target_keyframe_and_continues_every_number() {
        let t0 = Instant::now();
        let mut f = LayerForwarder::new(Some(2));
        run(&mut f, 2, 500, 90_000, &vp8(true, true, 300, 40), t0).expect("start");
        run(&mut f, 2, 501, 90_000, &vp8(false, false, 300, 40), t0).expect("same frame");
        f.set_target(Some(0));
        assert_eq!(f.wants_keyframe(), Some(0));
        // Delta frames of the target layer are not a switch point; the old
        // layer keeps flowing meanwhile.
        assert!(run(&mut f, 0, 7000, 5, &vp8(true, false, 9000, 200), t0).is_none());
        let t1 = t0 + Duration::from_millis(33);
        let o = run(&mut f, 2, 502, 93_000, &vp8(true, false, 301, 41), t1).expect("old layer");
        assert_eq!(o.seq, 502);
        let t2 = t1 + Duration::from_millis(33);
        let o = run(&mut f, 0, 7001, 3005, &vp8(true, true, 9001, 201), t2).expect("switch");
        assert_eq!(f.take_switched(), Some(Switched::Down));
        assert_eq!((o.seq, o.pic, o.tl0), (503, 302, 42));
        assert_eq!(
            o.ts,
            93_000 + 33 * 90,
            "advances by the wall time that passed"
        );
        // The old layer is cut off; the new one continues.
        assert!(run(&mut f, 2, 503, 96_000, &vp8(true, false, 302, 42), t2).is_none());
        let o = run(&mut f, 0, 7002, 6005, &vp8(true, false, 9002, 201), t2).expect("next");
        assert_eq!(
            (o.seq, o.ts, o.pic, o.tl0),
            (504, 93_000 + 33 * 90 + 3000, 303, 42)
        );
        // A late packet from before the switch point is not forwarded.
        assert!(run(&mut f, 0, 7000, 5, &vp8(false, false, 9000, 200), t2).is_none());
        // And back up, across sequence and picture-id wrap.
        f.set_target(Some(2));
        let o = run(&mut f, 2, 65535, 1, &vp8(true, true, 0x7fff, 255), t2).expect("up");
        assert_eq!(f.take_switched(), Some(Switched::Up));
        assert_eq!((o.seq, o.pic, o.tl0), (505, 304, 43));
        let o = run(&mut f, 2, 0, 3001, &vp8(true, false, 0, 0), t2).expect("wraps");
        assert_eq!((o.seq, o.pic, o.tl0), (506, 305, 44));
    }

    #[test]
    fn pause_stops_at_a_frame_start_and_resume_needs_a_keyframe() {
        let t0 = Instant::now();
        let mut f = LayerForwarder::new(Some(1));
        run(&mut f, 1, 1, 0, &vp8(true, true, 1, 1), t0).expect("start");
        f.set_target(None);
        assert_eq!(f.wants_keyframe(), None);
        assert!(
            run(&mut f, 1, 2, 0, &vp8(false, false, 1, 1), t0).is_some(),
            "the frame in progress completes"
        );
        assert!(run(&mut f, 1, 3, 3000, &vp8(true, false, 2, 1), t0).is_none());
        assert!(run(&mut f, 1, 4, 3000, &vp8(false, false, 2, 1), t0).is_none());
        f.set_target(Some(1));
        assert_eq!(f.wants_keyframe(), Some(1));
        assert!(run(&mut f, 1, 5, 6000, &vp8(true, false, 3, 1), t0).is_none());
        let o = run(&mut f, 1, 9, 9000, &vp8(true, true, 4, 2), t0).expect("resumed");
        assert_eq!(f.take_switched(), Some(Switched::Resumed));
        assert_eq!(
            (o.seq, o.pic, o.tl0),
            (3, 2, 2),
            "no gap for the paused frames"
        );
    }

    #[test]
    fn single_layer_publisher_restarting_its_stream_keeps_output_continuous() {
        let t0 = Instant::now();
        let mut f = LayerForwarder::new(Some(TOP));
        run(&mut f, TOP, 100, 0, &vp8(true, true, 1, 1), t0).expect("start");
        let info = parse_vp8(&vp8(true, true, 50, 7));
        let v = f.on_packet(TOP, 999, 4000, 123_456, info.as_ref(), t0);
        let Verdict::Forward(r) = v else {
            panic!("a restarted stream is forwarded")
        };
        assert_eq!(r.seq, 101);
        assert_eq!(r.picture_id.map(|p| p.value), Some(2));
    }

    #[test]
    fn padding_is_dropped_without_leaving_a_gap() {
        let t0 = Instant::now();
        let mut f = LayerForwarder::new(Some(0));
        let frame = vp8(true, false, 1, 1);
        let media = parse_vp8(&frame);
        let media = media.as_ref();
        // Input sequence number in, output number out (None = dropped).
        let at = |f: &mut LayerForwarder, s: u16, i: Option<&Vp8Info>| match f
            .on_packet(0, 100, s, 0, i, t0)
        {
            Verdict::Forward(r) => Some(r.seq),
            Verdict::Drop => None,
        };
        run(&mut f, 0, 1, 0, &vp8(true, true, 1, 1), t0).expect("start");
        // Input 2..=4 padding (no descriptor), 5 media, 6 padding, 7 media.
        for s in 2..=4 {
            assert_eq!(at(&mut f, s, None), None);
        }
        assert_eq!(at(&mut f, 5, media), Some(2));
        assert_eq!(at(&mut f, 6, None), None);
        assert_eq!(at(&mut f, 7, media), Some(3));
        // A late packet (input 8 lost, arriving after 9): numbers stay
        // unique and in input order.
        assert_eq!(at(&mut f, 9, media), Some(5));
        assert_eq!(at(&mut f, 8, media), Some(4));
        // A late media packet from before the padding at 6 keeps the number
        // it had: input 5 -> 2 again (a repeat, as sent).
        assert_eq!(at(&mut f, 5, media), Some(2));
        // Padding lost upstream (input 11, after media 10) and repaired late
        // fills its hole; a repeat of skipped padding (6) has no number.
        assert_eq!(at(&mut f, 10, media), Some(6));
        assert_eq!(at(&mut f, 12, media), Some(8));
        assert_eq!(at(&mut f, 11, None), Some(7));
        assert_eq!(at(&mut f, 6, None), None);
        // Other layers still drop.
        assert_eq!(f.on_packet(1, 101, 13, 0, None, t0), Verdict::Drop);
    }

    #[test]
    fn simulcast_is_asked_for_on_the_camera_section_only() {
        let sdp = "v=0\r\nm=audio 9 X 111\r\na=mid:0\r\na=recvonly\r\n\
                   m=video 9 X 96\r\na=mid:1\r\na=recvonly\r\na=rtcp-mux\r\n\
                   m=video 9 X 96\r\na=mid:2\r\na=sendonly\r\n";
        let out = offer_simulcast_recv(sdp);
        assert_eq!(
            out,
            "v=0\r\nm=audio 9 X 111\r\na=mid:0\r\na=recvonly\r\n\
             m=video 9 X 96\r\na=mid:1\r\na=recvonly\r\n\
             a=rid:h recv\r\na=rid:m recv\r\na=rid:l recv\r\na=simulcast:recv h;m;l\r\n\
             a=rtcp-mux\r\nm=video 9 X 96\r\na=mid:2\r\na=sendonly\r\n"
        );
        // A re-offer where rtc already mirrored the answer's rids.
        assert_eq!(offer_simulcast_recv(&out), out);
    }

    #[test]
    fn an_echoed_simulcast_answer_with_one_ssrc_becomes_single_stream() {
        let echo = "v=0\r\nm=video 9 X 96\r\na=mid:1\r\na=sendonly\r\n\
                    a=rid:h send\r\na=rid:m send\r\na=rid:l send\r\na=simulcast:send h;m;l\r\n\
                    a=ssrc:1111 cname:x\r\na=ssrc:1111 msid:a b\r\n\
                    m=video 9 X 96\r\na=mid:2\r\na=recvonly\r\n";
        assert_eq!(
            drop_echoed_simulcast(echo).as_deref(),
            Some(
                "v=0\r\nm=video 9 X 96\r\na=mid:1\r\na=sendonly\r\n\
                 a=ssrc:1111 cname:x\r\na=ssrc:1111 msid:a b\r\n\
                 m=video 9 X 96\r\na=mid:2\r\na=recvonly\r\n"
            )
        );
        // Chromium: rids, no SSRCs. Firefox: an SSRC per layer. One SSRC
        // plus its RTX partner is still one stream.
        let chromium = "v=0\r\nm=video 9 X 96\r\na=rid:h send\r\na=simulcast:send h;m;l\r\n";
        assert_eq!(drop_echoed_simulcast(chromium), None);
        let firefox = "v=0\r\nm=video 9 X 96\r\na=simulcast:send h;m;l\r\n\
                       a=ssrc:1 cname:x\r\na=ssrc:2 cname:x\r\na=ssrc:3 cname:x\r\n";
        assert_eq!(drop_echoed_simulcast(firefox), None);
        let rtx = "v=0\r\nm=video 9 X 96\r\na=simulcast:send h;m;l\r\n\
                   a=ssrc-group:FID 1 2\r\na=ssrc:1 cname:x\r\na=ssrc:2 cname:x\r\n";
        assert!(drop_echoed_simulcast(rtx).is_some());
        assert_eq!(
            drop_echoed_simulcast("v=0\r\nm=audio 9 X 111\r\na=ssrc:1 cname:x\r\n"),
            None
        );
    }

    #[test]
    fn a_renegotiation_answer_hides_only_the_simulcast_track() {
        let sdp = "v=0\r\nm=audio 9 X 111\r\na=msid:s a\r\na=ssrc:5 cname:x\r\n\
                   m=video 9 X 96\r\na=mid:1\r\na=msid:s v\r\na=rid:h send\r\n\
                   a=simulcast:send h;m;l\r\na=rtcp-mux\r\n";
        assert_eq!(
            keep_rid_bindings(sdp).as_deref(),
            Some(
                "v=0\r\nm=audio 9 X 111\r\na=msid:s a\r\na=ssrc:5 cname:x\r\n\
                 m=video 9 X 96\r\na=mid:1\r\na=rtcp-mux\r\n"
            )
        );
        assert_eq!(
            keep_rid_bindings("v=0\r\nm=video 9 X 96\r\na=msid:s v\r\n"),
            None
        );
    }

    #[test]
    fn choice_takes_the_best_active_layer_not_above_the_wish() {
        assert_eq!(choose(Some(2), 0b111), Some(2));
        assert_eq!(choose(Some(1), 0b111), Some(1));
        assert_eq!(choose(Some(2), 0b011), Some(1), "h not sent");
        assert_eq!(choose(Some(0), 0b100), Some(2), "single layer serves all");
        assert_eq!(choose(Some(1), 0b101), Some(0));
        assert_eq!(choose(None, 0b111), None);
        assert_eq!(choose(Some(1), 0), Some(1), "nothing seen yet");
        assert_eq!(layer_of_rid("m"), Some(1));
        assert_eq!(layer_of_rid("x"), None);
        assert_eq!(layer_of_quality(VideoQuality::Low), 0);
    }
}
