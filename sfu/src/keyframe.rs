//! Keyframe requests: getting them from subscribers, and not flooding
//! publishers with them.
//!
//! Trap in `rtc` 0.21.1: inbound RTCP is consumed by the interceptor chain
//! and reaches the application only when an interceptor tags it with
//! `Attribute::DeliverToApplication` (the crate's `rtcp-processing` example
//! does the same). Without [`MarkKeyframeRequests`] every PLI and FIR a
//! subscriber sends vanishes silently and frozen video never recovers.

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// At most one keyframe request per publisher track in this interval: a
/// keyframe costs many times a delta frame, and with several subscribers
/// (each asking after a loss) requests would otherwise multiply.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(500);

/// libwebrtc ignores a keyframe request that reaches a sender within
/// 300 ms of the last one it acted on (`kMinKeyframeSendIntervalMs`, per
/// encoder: one request keys every simulcast layer). A request that must
/// not be lost waits until this long after the last one sent (300 ms and
/// a margin for the path's jitter).
pub(crate) const ENCODER_INTERVAL: Duration = Duration::from_millis(330);

/// Does this RTCP compound ask for a keyframe?
pub(crate) fn is_keyframe_request(packets: &[Box<dyn rtc::rtcp::Packet>]) -> bool {
    packets.iter().any(|p| {
        let any = p.as_any();
        any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
    })
}

/// Interceptor that lets PLI/FIR through to the application, NACKs (after
/// rtc's responder, if any, has answered them) so they can be counted and,
/// on our own media path, answered, transport-wide CC feedback for that
/// path's estimator (`media_out.rs`), and receiver/sender reports for
/// their loss figures (`bwe::LossCap`).
#[derive(Default)]
pub(crate) struct MarkKeyframeRequests {
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for MarkKeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet
            && (is_keyframe_request(packets)
                || packets.iter().any(|p| {
                    let any = p.as_any();
                    any.is::<TransportLayerNack>()
                        || any.is::<TransportLayerCc>()
                        || any.is::<ReceiverReport>()
                        || any.is::<SenderReport>()
                }))
        {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.reads.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.writes.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }
    fn handle_timeout(&mut self, _now: Instant) -> Result<(), Self::Error> {
        Ok(())
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }
}

impl Interceptor for MarkKeyframeRequests {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}

/// Rate limit for keyframe requests towards one publisher track.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct KeyframeLimiter {
    last: Option<Instant>,
}

impl KeyframeLimiter {
    /// Records a request sent now whatever the interval (a new
    /// subscriber's first decodable picture, see `Peer::first_picture`).
    pub(crate) fn force(&mut self, now: Instant) {
        self.last = Some(now);
    }

    /// `true` if a request may be sent now (and records it).
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < MIN_INTERVAL => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

/// One publisher track's encoder, as seen by the requests sent to it: a
/// request that must be acted on (a new subscriber's first picture, see
/// `Peer::first_picture`) is held back while the encoder would still
/// ignore it, and sent when it would not.
///
/// Measured before (loadtest/first-picture.sh): the keyframe asked for when
/// a subscriber connected came before its end-to-end key; the page's
/// request for another came ~150 ms after the first, Chromium dropped it,
/// and the first picture waited ~600 ms more for the decoder's own request.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct EncoderGate {
    last_sent: Option<Instant>,
    held: Option<(u8, Instant)>,
}

impl EncoderGate {
    /// Records a request sent now.
    pub(crate) fn sent(&mut self, now: Instant) {
        self.last_sent = Some(now);
    }

    /// A request for `layer` that must be acted on: `true` if it may go out
    /// now; otherwise it is held until the encoder takes requests again
    /// (a later one replaces it).
    pub(crate) fn must_send(&mut self, layer: u8, now: Instant) -> bool {
        match self.last_sent {
            Some(t) if now.saturating_duration_since(t) < ENCODER_INTERVAL => {
                self.held = Some((layer, t + ENCODER_INTERVAL));
                false
            }
            _ => {
                self.held = None;
                true
            }
        }
    }

    /// When a held request is due.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.held.map(|(_, at)| at)
    }

    /// The held request's layer once it is due (taken).
    pub(crate) fn take_due(&mut self, now: Instant) -> Option<u8> {
        match self.held {
            Some((layer, at)) if at <= now => {
                self.held = None;
                Some(layer)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_that_must_be_acted_on_waits_out_the_encoders_interval() {
        let t0 = Instant::now();
        let mut gate = EncoderGate::default();
        // Nothing sent yet: out at once.
        assert!(gate.must_send(2, t0));
        gate.sent(t0);
        assert_eq!(gate.deadline(), None);
        // 150 ms later the encoder would ignore it: held until 330 ms.
        let t1 = t0 + Duration::from_millis(150);
        assert!(!gate.must_send(2, t1));
        assert_eq!(gate.deadline(), Some(t0 + ENCODER_INTERVAL));
        assert_eq!(gate.take_due(t0 + Duration::from_millis(329)), None);
        // A later one for another layer replaces it.
        assert!(!gate.must_send(0, t0 + Duration::from_millis(200)));
        assert_eq!(gate.take_due(t0 + ENCODER_INTERVAL), Some(0));
        assert_eq!(gate.take_due(t0 + ENCODER_INTERVAL), None, "taken once");
        assert_eq!(gate.deadline(), None);
        gate.sent(t0 + ENCODER_INTERVAL);
        // Past the interval: out at once, nothing held.
        assert!(gate.must_send(1, t0 + ENCODER_INTERVAL * 2 + Duration::from_millis(1)));
        assert_eq!(gate.deadline(), None);
    }

    #[test]
    fn requests_are_limited_to_one_per_interval() {
        let t0 = Instant::now();
        let mut limiter = KeyframeLimiter::default();
        assert!(limiter.allow(t0));
        assert!(!limiter.allow(t0 + Duration::from_millis(100)));
        assert!(!limiter.allow(t0 + Duration::from_millis(499)));
        assert!(limiter.allow(t0 + MIN_INTERVAL));
        assert!(!limiter.allow(t0 + MIN_INTERVAL + Duration::from_millis(1)));
    }

    #[test]
    fn a_forced_request_counts_against_the_interval_of_the_next_one() {
        let t0 = Instant::now();
        let mut limiter = KeyframeLimiter::default();
        assert!(limiter.allow(t0));
        // Inside the interval: forced anyway, and the interval restarts.
        limiter.force(t0 + Duration::from_millis(100));
        assert!(!limiter.allow(t0 + MIN_INTERVAL));
        assert!(limiter.allow(t0 + Duration::from_millis(100) + MIN_INTERVAL));
    }

    #[test]
    fn pli_and_fir_are_keyframe_requests_receiver_reports_are_not() {
        let pli: Vec<Box<dyn rtc::rtcp::Packet>> = vec![
            Box::new(ReceiverReport::default()),
            Box::new(PictureLossIndication {
                sender_ssrc: 1,
                media_ssrc: 2,
            }),
        ];
        assert!(is_keyframe_request(&pli));
        let fir: Vec<Box<dyn rtc::rtcp::Packet>> = vec![Box::new(FullIntraRequest::default())];
        assert!(is_keyframe_request(&fir));
        let rr: Vec<Box<dyn rtc::rtcp::Packet>> = vec![Box::new(ReceiverReport::default())];
        assert!(!is_keyframe_request(&rr));
    }
}
