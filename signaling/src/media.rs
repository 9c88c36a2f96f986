//! The edge's side of the seam to the media plane.
//!
//! The edge speaks to media through one typed pair: [`MediaCommand`]s in,
//! [`MediaEnvelope`]s (an event for one participant of one consult) out.
//! Both are plain data with a serde form, so the same pair travels over an
//! in-process channel (`spreekkamer serve`: [`sfu::SfuHandle`]) or over the
//! authenticated link to a remote media node (`remote.rs`, over `link.rs`). Whatever
//! sits behind [`MediaPlane`], the edge sees it only through [`Media`]:
//! `send` a command, `attach` a participant to get their events, `detach`
//! when they go.

use sfu::{ConsultId, MediaCommand, MediaEnvelope, MediaEvent, ParticipantId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

/// Something that carries out media commands: the in-process SFU, a remote
/// node, or a test's recorder. Its events arrive on the [`sfu::EventSink`]
/// it was built with; `send` never blocks.
pub trait MediaPlane: Send + Sync + 'static {
    fn send(&self, command: MediaCommand);
}

impl MediaPlane for sfu::SfuHandle {
    fn send(&self, command: MediaCommand) {
        sfu::SfuHandle::send(self, command);
    }
}

/// The media plane plus the table that routes its events to participants.
pub struct Media {
    plane: Arc<dyn MediaPlane>,
    routes: Mutex<HashMap<ParticipantId, Route>>,
}

struct Route {
    consult: ConsultId,
    events: UnboundedSender<MediaEvent>,
}

impl Media {
    /// `events` is the receiving end of the sink `plane` reports on; a task
    /// routes them for as long as the plane runs.
    pub fn new(plane: Arc<dyn MediaPlane>, events: UnboundedReceiver<MediaEnvelope>) -> Arc<Media> {
        let media = Arc::new(Media {
            plane,
            routes: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&media);
        tokio::spawn(async move {
            let mut events = events;
            while let Some(envelope) = events.recv().await {
                let Some(media) = weak.upgrade() else {
                    break;
                };
                media.deliver(envelope);
            }
        });
        media
    }

    fn routes(&self) -> MutexGuard<'_, HashMap<ParticipantId, Route>> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn send(&self, command: MediaCommand) {
        self.plane.send(command);
    }

    /// Start receiving the events for `participant` of `consult` (before
    /// the `Join` that produces them). A second attach replaces the first.
    pub fn attach(&self, consult: &str, participant: &str) -> UnboundedReceiver<MediaEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.routes().insert(
            participant.to_string(),
            Route {
                consult: consult.to_string(),
                events: tx,
            },
        );
        rx
    }

    /// Stop routing `participant`'s events (they left).
    pub fn detach(&self, participant: &str) {
        self.routes().remove(participant);
    }

    /// Hand an event to its participant. False when nobody by that id is
    /// attached, or they are attached to another consult: a media plane
    /// (a remote node is a network peer) cannot reach a participant of a
    /// consult it does not hold.
    pub fn deliver(&self, envelope: MediaEnvelope) -> bool {
        let routes = self.routes();
        match routes.get(&envelope.participant) {
            Some(route) if route.consult == envelope.consult => {
                route.events.send(envelope.event).is_ok()
            }
            _ => false,
        }
    }

    /// Participants with a route (for tests and gauges).
    pub fn attached(&self) -> usize {
        self.routes().len()
    }
}

/// A media plane that only records what it is asked: the edge's tests see
/// exactly which commands a roster change produced, and stand in for the
/// media plane's events with [`Media::deliver`].
#[derive(Default)]
pub struct RecordingPlane {
    commands: Mutex<Vec<MediaCommand>>,
}

impl RecordingPlane {
    /// Every command since the last call, oldest first.
    pub fn take(&self) -> Vec<MediaCommand> {
        std::mem::take(&mut *self.commands.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl MediaPlane for RecordingPlane {
    fn send(&self, command: MediaCommand) {
        self.commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(command);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(consult: &str, participant: &str) -> MediaEnvelope {
        MediaEnvelope {
            consult: consult.into(),
            participant: participant.into(),
            event: MediaEvent::Connected,
        }
    }

    #[tokio::test]
    async fn events_reach_only_the_attached_participant_of_that_consult() {
        let (_sink, events) = mpsc::unbounded_channel();
        let media = Media::new(Arc::new(RecordingPlane::default()), events);
        let mut a = media.attach("c1", "a");
        assert!(media.deliver(envelope("c1", "a")));
        assert_eq!(a.try_recv().ok(), Some(MediaEvent::Connected));
        assert!(
            !media.deliver(envelope("c2", "a")),
            "an event addressed to another consult is not delivered"
        );
        assert!(a.try_recv().is_err());
        assert!(!media.deliver(envelope("c1", "b")), "nobody attached as b");
        media.detach("a");
        assert!(!media.deliver(envelope("c1", "a")));
        assert_eq!(media.attached(), 0);
    }

    #[tokio::test]
    async fn the_plane_sink_is_routed() {
        let (sink, events) = mpsc::unbounded_channel();
        let media = Media::new(Arc::new(RecordingPlane::default()), events);
        let mut a = media.attach("c1", "a");
        sink.send(envelope("c1", "a")).expect("sink open");
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), a.recv()).await;
        assert_eq!(got.ok().flatten(), Some(MediaEvent::Connected));
    }
}
