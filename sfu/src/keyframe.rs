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

#[cfg(test)]
mod tests {
    use super::*;

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
