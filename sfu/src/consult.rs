//! A consult's media state: who is in it and which tracks each publishes.
//!
//! Pure logic, no rtc types: the worker feeds it joins, leaves and "track
//! started" facts and gets back who must (un)subscribe to what. The
//! forwarding loop uses [`Consult::members`] to fan a packet out.

use crate::ParticipantId;

/// The tracks a participant can publish: microphone, camera and a shared
/// screen (a second video track, single layer, forwarded only while the
/// edge says the participant shares: [`crate::MediaCommand::Screen`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Audio = 0,
    Video = 1,
    Screen = 2,
}

impl Kind {
    pub(crate) const ALL: [Kind; 3] = [Kind::Audio, Kind::Video, Kind::Screen];

    /// Camera or screen: VP8, layer-forwarded, paced.
    pub(crate) fn is_video(self) -> bool {
        self != Kind::Audio
    }
}

#[derive(Debug)]
struct Member<K> {
    peer: K,
    participant: ParticipantId,
    published: [bool; 3],
}

/// One track a member should receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscription<K> {
    pub source: K,
    pub source_participant: ParticipantId,
    pub kind: Kind,
}

/// `K` is the worker's key for a peer (its slot); tests use plain numbers.
#[derive(Debug)]
pub(crate) struct Consult<K> {
    members: Vec<Member<K>>,
    /// Peer keys in join order, kept beside `members` so the forwarding loop
    /// iterates a plain slice.
    peers: Vec<K>,
}

impl<K: Copy + Eq> Default for Consult<K> {
    fn default() -> Self {
        Consult {
            members: Vec::new(),
            peers: Vec::new(),
        }
    }
}

impl<K: Copy + Eq> Consult<K> {
    /// Add a member; returns the tracks already published by the others,
    /// which the newcomer's first offer must carry.
    pub(crate) fn join(&mut self, peer: K, participant: ParticipantId) -> Vec<Subscription<K>> {
        let existing = self
            .members
            .iter()
            .flat_map(|m| {
                Kind::ALL
                    .into_iter()
                    .filter(|k| m.published[*k as usize])
                    .map(|kind| Subscription {
                        source: m.peer,
                        source_participant: m.participant.clone(),
                        kind,
                    })
            })
            .collect();
        self.members.push(Member {
            peer,
            participant,
            published: [false; 3],
        });
        self.peers.push(peer);
        existing
    }

    /// `peer`'s `kind` track started arriving. Returns the members that must
    /// now get a sender for it (empty if it was already published).
    pub(crate) fn publish(&mut self, peer: K, kind: Kind) -> Vec<K> {
        let Some(m) = self.members.iter_mut().find(|m| m.peer == peer) else {
            return Vec::new();
        };
        if std::mem::replace(&mut m.published[kind as usize], true) {
            return Vec::new();
        }
        self.peers.iter().copied().filter(|p| *p != peer).collect()
    }

    /// Remove a member; returns the members that received any of its tracks
    /// (their sessions must drop them and renegotiate).
    pub(crate) fn leave(&mut self, peer: K) -> Vec<K> {
        let Some(i) = self.members.iter().position(|m| m.peer == peer) else {
            return Vec::new();
        };
        let gone = self.members.remove(i);
        self.peers.retain(|p| *p != peer);
        if gone.published.iter().any(|p| *p) {
            self.peers.clone()
        } else {
            Vec::new()
        }
    }

    pub(crate) fn find(&self, participant: &str) -> Option<K> {
        self.members
            .iter()
            .find(|m| m.participant == participant)
            .map(|m| m.peer)
    }

    /// Everyone in the consult, for fan-out (the forwarder skips the source).
    pub(crate) fn members(&self) -> &[K] {
        &self.peers
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(s: &str) -> ParticipantId {
        s.to_string()
    }

    #[test]
    fn newcomer_is_offered_everything_already_published() {
        let mut c = Consult::default();
        assert!(c.join(1, pid("clinician")).is_empty());
        assert!(
            c.publish(1, Kind::Audio).is_empty(),
            "nobody to forward to yet"
        );
        assert!(c.publish(1, Kind::Video).is_empty());
        let subs = c.join(2, pid("patient"));
        assert_eq!(
            subs,
            vec![
                Subscription {
                    source: 1,
                    source_participant: pid("clinician"),
                    kind: Kind::Audio
                },
                Subscription {
                    source: 1,
                    source_participant: pid("clinician"),
                    kind: Kind::Video
                },
            ]
        );
    }

    #[test]
    fn a_track_starting_reaches_every_other_member_once() {
        let mut c = Consult::default();
        for (k, p) in [(1, "a"), (2, "b"), (3, "c")] {
            c.join(k, pid(p));
        }
        assert_eq!(c.publish(2, Kind::Video), vec![1, 3]);
        assert!(
            c.publish(2, Kind::Video).is_empty(),
            "a second start is no news"
        );
        assert_eq!(c.publish(2, Kind::Audio), vec![1, 3]);
    }

    #[test]
    fn leaving_publisher_is_removed_from_everyone_silent_one_from_nobody() {
        let mut c = Consult::default();
        for (k, p) in [(1, "a"), (2, "b"), (3, "c")] {
            c.join(k, pid(p));
        }
        c.publish(3, Kind::Audio);
        assert!(
            c.leave(2).is_empty(),
            "b published nothing: nobody renegotiates"
        );
        assert_eq!(c.leave(3), vec![1]);
        assert_eq!(c.members(), &[1]);
        assert!(c.leave(3).is_empty(), "leaving twice is harmless");
        c.leave(1);
        assert!(c.is_empty());
    }

    #[test]
    fn participants_are_found_by_id() {
        let mut c = Consult::default();
        c.join(7, pid("x"));
        assert_eq!(c.find("x"), Some(7));
        assert_eq!(c.find("y"), None);
    }
}
