//! The consult roster as pure logic: no sockets, no clock, no channels.
//!
//! A [`Consult`] takes what participants do (join, leave, mute, relay, admit,
//! ...) and returns [`Effect`]s: messages to send to named participants and
//! commands for the media plane. The session layer (`directory.rs`) carries
//! them out. Time is a parameter, so every rule here is unit-tested without
//! sleeping.
//!
//! Admission: with the waiting room enabled, patients and guests start as
//! [`Admission::Waiting`]. A waiting participant is in no media path and
//! learns nothing about the others: they get no roster, no broadcasts, no
//! relays, and the media plane is not told about them until a clinician
//! admits them.

use crate::protocol::{
    ByeReason, E2eeState, ErrorCode, JoinState, LeftReason, LobbyEntry, Participant, RelayKind,
    Role, ServerMessage,
};
use std::time::{Duration, Instant};

pub type ParticipantId = String;

/// Rules a consult is created with.
#[derive(Debug, Clone, Copy)]
pub struct ConsultPolicy {
    /// Maximum members, waiting or admitted.
    pub max_participants: usize,
    /// Patients and guests wait until a clinician admits them.
    pub waiting_room: bool,
    /// How long an empty consult is kept (its lock, its removed list)
    /// before it is forgotten.
    pub grace: Duration,
}

impl Default for ConsultPolicy {
    fn default() -> Self {
        ConsultPolicy {
            max_participants: 6,
            waiting_room: false,
            grace: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Waiting,
    Admitted,
}

/// Someone who presented a valid token for this consult.
#[derive(Debug, Clone)]
pub struct Member {
    pub participant: Participant,
    pub sub: String,
    pub admission: Admission,
    pub e2ee: Option<(E2eeState, Vec<ParticipantId>)>,
    /// Seconds since the epoch when they arrived (shown in the lobby).
    pub since_unix: u64,
}

/// A join request after the token was verified.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub id: ParticipantId,
    pub sub: String,
    pub name: String,
    pub role: Role,
    pub now_unix: u64,
    pub now: Instant,
    /// They showed a valid resume ticket (`resume.rs`): admitted to this
    /// consult a moment ago, so they skip the waiting room like someone
    /// returning within the grace period.
    pub resumed: bool,
}

/// What the session layer must do after a roster change.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Send {
        to: ParticipantId,
        message: ServerMessage,
    },
    /// Add the participant to the consult's media session.
    MediaJoin { participant: ParticipantId },
    /// Take the participant out of the media session.
    MediaLeave { participant: ParticipantId },
    /// Forward the participant's screen track (or stop).
    MediaScreen {
        participant: ParticipantId,
        on: bool,
    },
    /// Say `bye` to the participant and close their connection. They are
    /// already off the roster when this is emitted.
    Disconnect {
        participant: ParticipantId,
        reason: ByeReason,
    },
}

/// The result of a successful join.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    pub welcome: ServerMessage,
    pub state: JoinState,
    pub effects: Vec<Effect>,
}

#[derive(Debug)]
pub struct Consult {
    id: String,
    policy: ConsultPolicy,
    members: Vec<Member>,
    locked: bool,
    /// Patients and guests may share their screen (a clinician allowed it).
    screen_allowed: bool,
    ended: bool,
    /// `sub`s a clinician removed or denied: their link no longer works
    /// for this consult (as long as the consult is remembered).
    barred: Vec<String>,
    /// `sub`s that were in the call and dropped out, with when: coming back
    /// within the grace period needs no second admission.
    recently_admitted: Vec<(String, Instant)>,
    empty_since: Option<Instant>,
    /// The `sub` of the first clinician who joined: the responsible
    /// clinician in audit lines of participants who did not come through
    /// an invite minted here.
    first_clinician: Option<String>,
}

impl Consult {
    pub fn new(id: impl Into<String>, policy: ConsultPolicy) -> Consult {
        Consult {
            id: id.into(),
            policy,
            members: Vec::new(),
            locked: false,
            screen_allowed: false,
            ended: false,
            barred: Vec::new(),
            recently_admitted: Vec::new(),
            empty_since: None,
            first_clinician: None,
        }
    }

    /// The first clinician who joined (while the consult is remembered).
    pub fn first_clinician(&self) -> Option<&str> {
        self.first_clinician.as_deref()
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.participant.id == id)
    }

    pub fn is_admitted(&self, id: &str) -> bool {
        self.member(id)
            .is_some_and(|m| m.admission == Admission::Admitted)
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// An empty consult past its grace period can be forgotten.
    pub fn expired(&self, now: Instant) -> bool {
        self.empty_since
            .is_some_and(|since| now.saturating_duration_since(since) >= self.policy.grace)
    }

    fn admitted(&self) -> impl Iterator<Item = &Member> {
        self.members
            .iter()
            .filter(|m| m.admission == Admission::Admitted)
    }

    fn clinicians(&self) -> impl Iterator<Item = &Member> {
        self.admitted()
            .filter(|m| m.participant.role == Role::Clinician)
    }

    fn lobby(&self) -> Vec<LobbyEntry> {
        self.members
            .iter()
            .filter(|m| m.admission == Admission::Waiting)
            .map(|m| LobbyEntry {
                id: m.participant.id.clone(),
                name: m.participant.name.clone(),
                role: m.participant.role,
                since: m.since_unix,
            })
            .collect()
    }

    /// Send `message` to every admitted member except `except`.
    fn broadcast(&self, except: &str, message: ServerMessage, effects: &mut Vec<Effect>) {
        for m in self.admitted().filter(|m| m.participant.id != except) {
            effects.push(Effect::Send {
                to: m.participant.id.clone(),
                message: message.clone(),
            });
        }
    }

    /// Send `message` to every admitted member, the one who caused it too.
    fn to_everyone(&self, message: ServerMessage, effects: &mut Vec<Effect>) {
        for m in self.admitted() {
            effects.push(Effect::Send {
                to: m.participant.id.clone(),
                message: message.clone(),
            });
        }
    }

    fn lobby_to_clinicians(&self, effects: &mut Vec<Effect>) {
        let waiting = self.lobby();
        for c in self.clinicians() {
            effects.push(Effect::Send {
                to: c.participant.id.clone(),
                message: ServerMessage::Lobby {
                    waiting: waiting.clone(),
                },
            });
        }
    }

    /// A participant with a verified token arrives.
    ///
    /// The same person (`sub`) arriving again takes over their earlier
    /// connection (a reloaded tab, a second device): the old one gets
    /// `bye{replaced}`, and an admitted person stays admitted. Someone who
    /// was in the call and dropped out within the grace period comes back
    /// without a second admission.
    pub fn join(
        &mut self,
        a: Arrival,
        limits: crate::protocol::Limits,
    ) -> Result<Joined, ErrorCode> {
        let returning = self.entry(&a.sub, a.role, a.resumed, a.now)?;
        let grace = self.policy.grace;
        self.recently_admitted
            .retain(|(_, at)| a.now.saturating_duration_since(*at) < grace);
        let previous = self
            .members
            .iter()
            .find(|m| m.sub == a.sub && m.participant.role == a.role)
            .map(|m| (m.participant.id.clone(), m.admission));
        let others = self.members.len() - usize::from(previous.is_some());
        if others >= self.policy.max_participants {
            return Err(ErrorCode::ConsultFull);
        }
        let mut effects = Vec::new();
        if let Some((old, _)) = previous {
            effects.extend(self.leave(&old, LeftReason::Disconnected, a.now));
            effects.push(Effect::Disconnect {
                participant: old,
                reason: ByeReason::Replaced,
            });
        }
        self.recently_admitted.retain(|(sub, _)| *sub != a.sub);
        let admission = if self.policy.waiting_room && a.role != Role::Clinician && !returning {
            Admission::Waiting
        } else {
            Admission::Admitted
        };
        let participant = Participant {
            id: a.id.clone(),
            name: a.name,
            role: a.role,
            audio: true,
            video: true,
            screen: false,
        };
        if a.role == Role::Clinician && self.first_clinician.is_none() {
            self.first_clinician = Some(a.sub.clone());
        }
        self.members.push(Member {
            participant: participant.clone(),
            sub: a.sub,
            admission,
            e2ee: None,
            since_unix: a.now_unix,
        });
        self.empty_since = None;

        let (state, participants) = match admission {
            Admission::Admitted => {
                self.broadcast(
                    &a.id,
                    ServerMessage::ParticipantJoined {
                        participant: participant.clone(),
                    },
                    &mut effects,
                );
                effects.push(Effect::MediaJoin {
                    participant: a.id.clone(),
                });
                self.tell_screen_allowed(&a.id, &mut effects);
                let others = self
                    .admitted()
                    .filter(|m| m.participant.id != a.id)
                    .map(|m| m.participant.clone())
                    .collect();
                (JoinState::InCall, others)
            }
            Admission::Waiting => {
                self.lobby_to_clinicians(&mut effects);
                (JoinState::Waiting, Vec::new())
            }
        };
        let is_clinician = a.role == Role::Clinician;
        // Whoever is let in or waits learns the name of a clinician in the
        // consult (the one they will see), never more of the roster.
        let clinician_name = (!is_clinician)
            .then(|| {
                self.admitted()
                    .find(|m| m.participant.role == Role::Clinician && m.participant.id != a.id)
                    .map(|m| m.participant.name.clone())
            })
            .flatten();
        let welcome = ServerMessage::Welcome {
            v: crate::protocol::PROTOCOL_VERSION,
            you: Box::new(participant),
            consult: self.id.clone(),
            state,
            participants,
            limits,
            lobby: is_clinician.then(|| self.lobby()),
            locked: is_clinician.then_some(self.locked),
            // Filled in by the session, which knows the token's `exp`,
            // its `host` and the configured contact line; `host` here is
            // the clinician present, if any.
            ice_servers: None,
            force_relay: None,
            host: clinician_name,
            contact: None,
        };
        Ok(Joined {
            welcome,
            state,
            effects,
        })
    }

    /// Take `id` off the roster. Unknown ids are ignored (leave is idempotent:
    /// a removed participant's socket closing calls this again).
    pub fn leave(&mut self, id: &str, reason: LeftReason, now: Instant) -> Vec<Effect> {
        let Some(pos) = self.members.iter().position(|m| m.participant.id == id) else {
            return Vec::new();
        };
        let member = self.members.remove(pos);
        let mut effects = Vec::new();
        match member.admission {
            Admission::Admitted => {
                if matches!(reason, LeftReason::Left | LeftReason::Disconnected) {
                    self.recently_admitted.push((member.sub.clone(), now));
                }
                effects.push(Effect::MediaLeave {
                    participant: id.to_string(),
                });
                self.broadcast(
                    id,
                    ServerMessage::ParticipantLeft {
                        id: id.to_string(),
                        reason,
                    },
                    &mut effects,
                );
            }
            Admission::Waiting => self.lobby_to_clinicians(&mut effects),
        }
        if self.members.is_empty() {
            self.empty_since = Some(now);
        }
        effects
    }

    pub fn mute(&mut self, id: &str, audio: bool, video: bool) -> Vec<Effect> {
        let mut effects = Vec::new();
        let Some(m) = self
            .members
            .iter_mut()
            .find(|m| m.participant.id == id && m.admission == Admission::Admitted)
        else {
            return effects;
        };
        m.participant.audio = audio;
        m.participant.video = video;
        self.broadcast(
            id,
            ServerMessage::Mute {
                id: id.to_string(),
                audio,
                video,
            },
            &mut effects,
        );
        effects
    }

    /// Forward an opaque blob to one admitted participant.
    pub fn relay(
        &self,
        from: &str,
        to: &str,
        kind: RelayKind,
        data: String,
    ) -> Result<Vec<Effect>, ErrorCode> {
        if !self.is_admitted(from) {
            return Err(ErrorCode::Forbidden);
        }
        if to == from || !self.is_admitted(to) {
            return Err(ErrorCode::UnknownParticipant);
        }
        Ok(vec![Effect::Send {
            to: to.to_string(),
            message: ServerMessage::Relay {
                from: from.to_string(),
                kind,
                data,
            },
        }])
    }

    /// Record and broadcast a participant's E2EE status. `verified` is
    /// limited to ids currently in the call.
    pub fn e2ee(
        &mut self,
        id: &str,
        state: E2eeState,
        verified: Vec<ParticipantId>,
    ) -> Result<Vec<Effect>, ErrorCode> {
        if !self.is_admitted(id) {
            return Err(ErrorCode::Forbidden);
        }
        let verified: Vec<ParticipantId> = verified
            .into_iter()
            .filter(|v| v != id && self.is_admitted(v))
            .take(self.policy.max_participants)
            .collect();
        if let Some(m) = self.members.iter_mut().find(|m| m.participant.id == id) {
            m.e2ee = Some((state, verified.clone()));
        }
        let mut effects = Vec::new();
        self.broadcast(
            id,
            ServerMessage::E2ee {
                id: id.to_string(),
                state,
                verified,
            },
            &mut effects,
        );
        Ok(effects)
    }

    /// Host actions need an admitted clinician.
    pub fn require_clinician(&self, actor: &str) -> Result<(), ErrorCode> {
        match self.member(actor) {
            Some(m)
                if m.admission == Admission::Admitted && m.participant.role == Role::Clinician =>
            {
                Ok(())
            }
            _ => Err(ErrorCode::Forbidden),
        }
    }

    /// A clinician lets a waiting participant in.
    pub fn admit(&mut self, actor: &str, id: &str) -> Result<Vec<Effect>, ErrorCode> {
        self.require_clinician(actor)?;
        let Some(pos) = self
            .members
            .iter()
            .position(|m| m.participant.id == id && m.admission == Admission::Waiting)
        else {
            return Err(ErrorCode::UnknownParticipant);
        };
        self.members[pos].admission = Admission::Admitted;
        let participant = self.members[pos].participant.clone();
        let mut effects = Vec::new();
        let others = self
            .admitted()
            .filter(|m| m.participant.id != id)
            .map(|m| m.participant.clone())
            .collect();
        effects.push(Effect::Send {
            to: id.to_string(),
            message: ServerMessage::Admitted {
                participants: others,
            },
        });
        self.broadcast(
            id,
            ServerMessage::ParticipantJoined { participant },
            &mut effects,
        );
        effects.push(Effect::MediaJoin {
            participant: id.to_string(),
        });
        self.tell_screen_allowed(id, &mut effects);
        self.lobby_to_clinicians(&mut effects);
        Ok(effects)
    }

    /// Whoever is let in while patients may share learns so.
    fn tell_screen_allowed(&self, id: &str, effects: &mut Vec<Effect>) {
        if self.screen_allowed {
            effects.push(Effect::Send {
                to: id.to_string(),
                message: ServerMessage::ScreenAllowed { allowed: true },
            });
        }
    }

    /// `id` starts or stops sharing their screen. A clinician always may;
    /// a patient or guest only while a clinician allows it, and not over a
    /// clinician's share. One share at a time: whoever shared before is
    /// stopped (and told so). Repeating the current state changes nothing.
    pub fn screen(&mut self, id: &str, on: bool) -> Result<Vec<Effect>, ErrorCode> {
        let Some(m) = self
            .members
            .iter()
            .find(|m| m.participant.id == id && m.admission == Admission::Admitted)
        else {
            return Err(ErrorCode::Forbidden);
        };
        if on && m.participant.role != Role::Clinician {
            let clinician_shares = self
                .admitted()
                .any(|m| m.participant.screen && m.participant.role == Role::Clinician);
            if !self.screen_allowed || clinician_shares {
                return Err(ErrorCode::Forbidden);
            }
        }
        if m.participant.screen == on {
            return Ok(Vec::new());
        }
        let mut effects = Vec::new();
        if on {
            let others: Vec<String> = self
                .admitted()
                .filter(|m| m.participant.screen && m.participant.id != id)
                .map(|m| m.participant.id.clone())
                .collect();
            for other in others {
                self.set_screen(&other, false, &mut effects);
            }
        }
        self.set_screen(id, on, &mut effects);
        Ok(effects)
    }

    fn set_screen(&mut self, id: &str, on: bool, effects: &mut Vec<Effect>) {
        let Some(m) = self.members.iter_mut().find(|m| m.participant.id == id) else {
            return;
        };
        m.participant.screen = on;
        effects.push(Effect::MediaScreen {
            participant: id.to_string(),
            on,
        });
        self.to_everyone(
            ServerMessage::Screen {
                id: id.to_string(),
                on,
            },
            effects,
        );
    }

    /// A clinician allows (or no longer allows) patients and guests to
    /// share their screen; withdrawing it stops a share of theirs.
    pub fn allow_screen(&mut self, actor: &str, allowed: bool) -> Result<Vec<Effect>, ErrorCode> {
        self.require_clinician(actor)?;
        self.screen_allowed = allowed;
        let mut effects = Vec::new();
        self.to_everyone(ServerMessage::ScreenAllowed { allowed }, &mut effects);
        if !allowed {
            let sharing: Vec<String> = self
                .admitted()
                .filter(|m| m.participant.screen && m.participant.role != Role::Clinician)
                .map(|m| m.participant.id.clone())
                .collect();
            for id in sharing {
                self.set_screen(&id, false, &mut effects);
            }
        }
        Ok(effects)
    }

    /// A clinician turns a waiting participant away; their link stops
    /// working for this consult.
    pub fn deny(&mut self, actor: &str, id: &str, now: Instant) -> Result<Vec<Effect>, ErrorCode> {
        self.require_clinician(actor)?;
        let waiting = self
            .member(id)
            .is_some_and(|m| m.admission == Admission::Waiting);
        if !waiting {
            return Err(ErrorCode::UnknownParticipant);
        }
        Ok(self.bar(id, LeftReason::Removed, ByeReason::Denied, now))
    }

    /// A clinician removes someone (waiting or in the call); their link stops
    /// working for this consult.
    pub fn remove(
        &mut self,
        actor: &str,
        id: &str,
        now: Instant,
    ) -> Result<Vec<Effect>, ErrorCode> {
        self.require_clinician(actor)?;
        if actor == id {
            return Err(ErrorCode::UnknownParticipant);
        }
        self.expel(id, now)
    }

    /// Remove someone on the authority of a clinician the caller already
    /// checked (a `remove` above, or a revoked invite whose revocation was
    /// authorized by a clinician's token).
    pub fn expel(&mut self, id: &str, now: Instant) -> Result<Vec<Effect>, ErrorCode> {
        if self.member(id).is_none() {
            return Err(ErrorCode::UnknownParticipant);
        }
        Ok(self.bar(id, LeftReason::Removed, ByeReason::Removed, now))
    }

    /// Whether the holder of `sub` with `role` may enter at `now`, apart
    /// from capacity: not if the consult ended, they were removed or
    /// denied, or it is locked and they are a new patient or guest. `Ok`
    /// says whether they are *returning* (admitted before: in the call now,
    /// back within the grace period, or `resumed`), who skip the lock and
    /// the waiting room. Pure: `join` asks it first, and the link check
    /// (`link_check.rs`) asks it without joining.
    pub fn entry(
        &self,
        sub: &str,
        role: Role,
        resumed: bool,
        now: Instant,
    ) -> Result<bool, ErrorCode> {
        if let Some(code) = self.refusal(sub) {
            return Err(code);
        }
        let grace = self.policy.grace;
        let returning = self.members.iter().any(|m| {
            m.sub == sub && m.participant.role == role && m.admission == Admission::Admitted
        }) || self
            .recently_admitted
            .iter()
            .any(|(s, at)| s == sub && now.saturating_duration_since(*at) < grace)
            || resumed;
        // A clinician can always enter their own locked consult; the lock
        // keeps new patients and guests out (not those who were let in).
        if self.locked && role != Role::Clinician && !returning {
            return Err(ErrorCode::ConsultLocked);
        }
        Ok(returning)
    }

    /// Why a token holder with `sub` could not join right now regardless of
    /// capacity or lock: the consult ended, or the person was removed.
    pub fn refusal(&self, sub: &str) -> Option<ErrorCode> {
        if self.ended {
            Some(ErrorCode::ConsultEnded)
        } else if self.barred.iter().any(|b| b == sub) {
            Some(ErrorCode::TokenRevoked)
        } else {
            None
        }
    }

    fn bar(&mut self, id: &str, left: LeftReason, bye: ByeReason, now: Instant) -> Vec<Effect> {
        if let Some(m) = self.member(id) {
            let sub = m.sub.clone();
            self.barred.push(sub);
        }
        let mut effects = self.leave(id, left, now);
        effects.push(Effect::Disconnect {
            participant: id.to_string(),
            reason: bye,
        });
        effects
    }

    /// The lock as the shared room store remembers it (`roomstore`), for a
    /// consult this edge creates: its clinician may have locked it on an
    /// edge that has since died. No one to tell: nobody is in it yet.
    pub fn restore_lock(&mut self, locked: bool) {
        self.locked = locked;
    }

    pub fn lock(&mut self, actor: &str, locked: bool) -> Result<Vec<Effect>, ErrorCode> {
        self.require_clinician(actor)?;
        self.locked = locked;
        let mut effects = Vec::new();
        self.to_everyone(ServerMessage::Locked { locked }, &mut effects);
        Ok(effects)
    }

    /// A clinician ends the consult for everyone. It stays remembered as
    /// ended for the grace period so that links cannot re-open it at once.
    pub fn end(&mut self, actor: &str, now: Instant) -> Result<Vec<Effect>, ErrorCode> {
        self.require_clinician(actor)?;
        self.ended = true;
        let mut effects = Vec::new();
        for m in std::mem::take(&mut self.members) {
            if m.admission == Admission::Admitted {
                effects.push(Effect::MediaLeave {
                    participant: m.participant.id.clone(),
                });
            }
            effects.push(Effect::Disconnect {
                participant: m.participant.id,
                reason: ByeReason::Ended,
            });
        }
        self.empty_since = Some(now);
        Ok(effects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Limits;

    fn arrival(id: &str, role: Role) -> Arrival {
        Arrival {
            id: id.into(),
            sub: format!("sub-{id}"),
            name: format!("Name {id}"),
            role,
            now_unix: 1000,
            now: Instant::now(),
            resumed: false,
        }
    }

    fn open_consult() -> Consult {
        Consult::new("c1", ConsultPolicy::default())
    }

    fn lobby_consult() -> Consult {
        Consult::new(
            "c1",
            ConsultPolicy {
                waiting_room: true,
                ..ConsultPolicy::default()
            },
        )
    }

    fn join(c: &mut Consult, id: &str, role: Role) -> Joined {
        c.join(arrival(id, role), Limits::default()).expect("joins")
    }

    fn sends_to<'a>(effects: &'a [Effect], to: &str) -> Vec<&'a ServerMessage> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { to: t, message } if t == to => Some(message),
                _ => None,
            })
            .collect()
    }

    fn welcome_participants(j: &Joined) -> Vec<String> {
        match &j.welcome {
            ServerMessage::Welcome { participants, .. } => {
                participants.iter().map(|p| p.id.clone()).collect()
            }
            other => panic!("not a welcome: {other:?}"),
        }
    }

    #[test]
    fn first_participant_gets_an_empty_roster_and_joins_media() {
        let mut c = open_consult();
        let j = join(&mut c, "a", Role::Clinician);
        assert_eq!(j.state, JoinState::InCall);
        assert!(welcome_participants(&j).is_empty());
        assert_eq!(
            j.effects,
            vec![Effect::MediaJoin {
                participant: "a".into()
            }]
        );
    }

    #[test]
    fn second_participant_sees_the_first_and_is_announced_to_them() {
        let mut c = open_consult();
        join(&mut c, "a", Role::Clinician);
        let j = join(&mut c, "b", Role::Patient);
        assert_eq!(welcome_participants(&j), vec!["a".to_string()]);
        let to_a = sends_to(&j.effects, "a");
        assert!(matches!(
            to_a.as_slice(),
            [ServerMessage::ParticipantJoined { participant }]
                if participant.id == "b" && participant.role == Role::Patient && participant.name == "Name b"
        ));
        assert!(sends_to(&j.effects, "b").is_empty());
    }

    #[test]
    fn consult_refuses_seventh_participant() {
        let mut c = open_consult();
        for i in 0..6 {
            join(&mut c, &format!("p{i}"), Role::Guest);
        }
        let r = c.join(arrival("p6", Role::Clinician), Limits::default());
        assert_eq!(r.err(), Some(ErrorCode::ConsultFull));
        assert_eq!(c.members().len(), 6);
    }

    #[test]
    fn leaving_is_announced_and_frees_a_place() {
        let mut c = Consult::new(
            "c1",
            ConsultPolicy {
                max_participants: 2,
                ..ConsultPolicy::default()
            },
        );
        join(&mut c, "a", Role::Clinician);
        join(&mut c, "b", Role::Patient);
        let effects = c.leave("b", LeftReason::Disconnected, Instant::now());
        assert!(effects.contains(&Effect::MediaLeave {
            participant: "b".into()
        }));
        assert_eq!(
            sends_to(&effects, "a"),
            vec![&ServerMessage::ParticipantLeft {
                id: "b".into(),
                reason: LeftReason::Disconnected
            }]
        );
        assert!(c.join(arrival("c", Role::Guest), Limits::default()).is_ok());
    }

    #[test]
    fn leave_is_idempotent() {
        let mut c = open_consult();
        join(&mut c, "a", Role::Clinician);
        assert!(!c.leave("a", LeftReason::Left, Instant::now()).is_empty());
        assert!(c.leave("a", LeftReason::Left, Instant::now()).is_empty());
    }

    #[test]
    fn empty_consult_expires_after_the_grace_period_only() {
        let mut c = open_consult();
        let t0 = Instant::now();
        assert!(!c.expired(t0), "a fresh consult is not expired");
        join(&mut c, "a", Role::Clinician);
        c.leave("a", LeftReason::Left, t0);
        assert!(!c.expired(t0 + Duration::from_secs(29)));
        assert!(c.expired(t0 + Duration::from_secs(30)));
        join(&mut c, "b", Role::Clinician);
        assert!(
            !c.expired(t0 + Duration::from_secs(60)),
            "rejoined within grace"
        );
    }

    #[test]
    fn mute_is_broadcast_to_the_others_and_remembered() {
        let mut c = open_consult();
        join(&mut c, "a", Role::Clinician);
        join(&mut c, "b", Role::Patient);
        let effects = c.mute("b", false, true);
        assert_eq!(
            sends_to(&effects, "a"),
            vec![&ServerMessage::Mute {
                id: "b".into(),
                audio: false,
                video: true
            }]
        );
        assert!(sends_to(&effects, "b").is_empty());
        let j = join(&mut c, "c", Role::Guest);
        let ServerMessage::Welcome { participants, .. } = j.welcome else {
            panic!()
        };
        let b = participants.iter().find(|p| p.id == "b").unwrap();
        assert!(!b.audio && b.video);
    }

    #[test]
    fn relay_reaches_only_the_addressee() {
        let mut c = open_consult();
        join(&mut c, "a", Role::Clinician);
        join(&mut c, "b", Role::Patient);
        join(&mut c, "c", Role::Guest);
        let effects = c.relay("a", "b", RelayKind::Chat, "secret".into()).unwrap();
        assert_eq!(
            effects,
            vec![Effect::Send {
                to: "b".into(),
                message: ServerMessage::Relay {
                    from: "a".into(),
                    kind: RelayKind::Chat,
                    data: "secret".into()
                }
            }]
        );
        assert_eq!(
            c.relay("a", "zz", RelayKind::Key, "x".into()),
            Err(ErrorCode::UnknownParticipant)
        );
        assert_eq!(
            c.relay("a", "a", RelayKind::Key, "x".into()),
            Err(ErrorCode::UnknownParticipant)
        );
    }

    #[test]
    fn e2ee_status_is_broadcast_with_only_present_verified_ids() {
        let mut c = open_consult();
        join(&mut c, "a", Role::Clinician);
        join(&mut c, "b", Role::Patient);
        let effects = c
            .e2ee(
                "a",
                E2eeState::On,
                vec!["b".into(), "ghost".into(), "a".into()],
            )
            .unwrap();
        assert_eq!(
            sends_to(&effects, "b"),
            vec![&ServerMessage::E2ee {
                id: "a".into(),
                state: E2eeState::On,
                verified: vec!["b".into()]
            }]
        );
    }

    #[test]
    fn patient_waits_in_lobby_until_admitted() {
        let mut c = lobby_consult();
        let jc = join(&mut c, "doc", Role::Clinician);
        assert!(
            matches!(jc.welcome, ServerMessage::Welcome { lobby: Some(ref l), .. } if l.is_empty())
        );
        let jp = join(&mut c, "pat", Role::Patient);
        assert_eq!(jp.state, JoinState::Waiting);
        assert!(welcome_participants(&jp).is_empty(), "learns nobody");
        assert!(
            !jp.effects
                .iter()
                .any(|e| matches!(e, Effect::MediaJoin { .. })),
            "no media before admission"
        );
        let to_doc = sends_to(&jp.effects, "doc");
        assert!(
            matches!(to_doc.as_slice(), [ServerMessage::Lobby { waiting }] if waiting.len() == 1 && waiting[0].id == "pat")
        );

        let effects = c.admit("doc", "pat").unwrap();
        assert!(effects.contains(&Effect::MediaJoin {
            participant: "pat".into()
        }));
        assert!(matches!(
            sends_to(&effects, "pat").as_slice(),
            [ServerMessage::Admitted { participants }] if participants.len() == 1 && participants[0].id == "doc"
        ));
        assert!(sends_to(&effects, "doc").iter().any(
            |m| matches!(m, ServerMessage::ParticipantJoined { participant } if participant.id == "pat")
        ));
        assert!(c.is_admitted("pat"));
    }

    #[test]
    fn waiting_participant_receives_no_broadcasts_or_relays() {
        let mut c = lobby_consult();
        join(&mut c, "doc", Role::Clinician);
        join(&mut c, "pat", Role::Patient);
        let j = join(&mut c, "doc2", Role::Clinician);
        assert!(sends_to(&j.effects, "pat").is_empty());
        assert!(sends_to(&c.mute("doc", false, false), "pat").is_empty());
        assert_eq!(
            c.relay("doc", "pat", RelayKind::Key, "k".into()),
            Err(ErrorCode::UnknownParticipant)
        );
        assert_eq!(
            c.relay("pat", "doc", RelayKind::Key, "k".into()),
            Err(ErrorCode::Forbidden)
        );
        assert_eq!(
            c.e2ee("pat", E2eeState::On, vec![]),
            Err(ErrorCode::Forbidden)
        );
    }

    #[test]
    fn only_clinicians_admit_deny_remove_lock_and_end() {
        let mut c = lobby_consult();
        join(&mut c, "doc", Role::Clinician);
        join(&mut c, "pat", Role::Patient);
        c.admit("doc", "pat").unwrap();
        join(&mut c, "g", Role::Guest);
        let now = Instant::now();
        assert_eq!(c.admit("pat", "g"), Err(ErrorCode::Forbidden));
        assert_eq!(c.deny("pat", "g", now), Err(ErrorCode::Forbidden));
        assert_eq!(c.remove("pat", "doc", now), Err(ErrorCode::Forbidden));
        assert_eq!(c.lock("pat", true), Err(ErrorCode::Forbidden));
        assert_eq!(c.end("pat", now), Err(ErrorCode::Forbidden));
        assert_eq!(
            c.admit("g", "g"),
            Err(ErrorCode::Forbidden),
            "waiting cannot self-admit"
        );
    }

    #[test]
    fn denied_participant_cannot_return_with_the_same_link() {
        let mut c = lobby_consult();
        join(&mut c, "doc", Role::Clinician);
        join(&mut c, "pat", Role::Patient);
        let effects = c.deny("doc", "pat", Instant::now()).unwrap();
        assert!(effects.contains(&Effect::Disconnect {
            participant: "pat".into(),
            reason: ByeReason::Denied
        }));
        assert!(
            !effects
                .iter()
                .any(|e| matches!(e, Effect::MediaLeave { .. }))
        );
        let again = arrival("pat2", Role::Patient);
        let again = Arrival {
            sub: "sub-pat".into(),
            ..again
        };
        assert_eq!(
            c.join(again, Limits::default()).err(),
            Some(ErrorCode::TokenRevoked)
        );
    }

    #[test]
    fn removed_participant_leaves_media_and_is_barred() {
        let mut c = open_consult();
        join(&mut c, "doc", Role::Clinician);
        join(&mut c, "pat", Role::Patient);
        let effects = c.remove("doc", "pat", Instant::now()).unwrap();
        assert!(effects.contains(&Effect::MediaLeave {
            participant: "pat".into()
        }));
        assert!(effects.contains(&Effect::Disconnect {
            participant: "pat".into(),
            reason: ByeReason::Removed
        }));
        assert_eq!(
            sends_to(&effects, "doc"),
            vec![&ServerMessage::ParticipantLeft {
                id: "pat".into(),
                reason: LeftReason::Removed
            }]
        );
        let back = Arrival {
            sub: "sub-pat".into(),
            ..arrival("pat-again", Role::Patient)
        };
        assert_eq!(
            c.join(back, Limits::default()).err(),
            Some(ErrorCode::TokenRevoked)
        );
    }

    #[test]
    fn locked_consult_refuses_patients_but_not_clinicians() {
        let mut c = open_consult();
        join(&mut c, "doc", Role::Clinician);
        c.lock("doc", true).unwrap();
        assert_eq!(
            c.join(arrival("pat", Role::Patient), Limits::default())
                .err(),
            Some(ErrorCode::ConsultLocked)
        );
        assert!(
            c.join(arrival("doc2", Role::Clinician), Limits::default())
                .is_ok()
        );
        c.lock("doc", false).unwrap();
        assert!(
            c.join(arrival("pat", Role::Patient), Limits::default())
                .is_ok()
        );
    }

    fn media_screen(effects: &[Effect]) -> Vec<(String, bool)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::MediaScreen { participant, on } => Some((participant.clone(), *on)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn clinician_shares_a_screen_and_everyone_hears_of_it() {
        let mut c = lobby_consult();
        join(&mut c, "doc", Role::Clinician);
        join(&mut c, "pat", Role::Patient);
        c.admit("doc", "pat").unwrap();
        join(&mut c, "late", Role::Patient);
        let effects = c.screen("doc", true).unwrap();
        assert_eq!(media_screen(&effects), vec![("doc".to_string(), true)]);
        let told = ServerMessage::Screen {
            id: "doc".into(),
            on: true,
        };
        assert_eq!(sends_to(&effects, "pat"), vec![&told]);
        assert_eq!(sends_to(&effects, "doc"), vec![&told], "the sharer too");
        assert!(
            sends_to(&effects, "late").is_empty(),
            "the waiting room learns nothing"
        );
        assert!(c.screen("doc", true).unwrap().is_empty(), "no news twice");
        // Whoever is let in later sees who shares in the roster.
        let admitted = c.admit("doc", "late").unwrap();
        match sends_to(&admitted, "late").first() {
            Some(ServerMessage::Admitted { participants }) => assert!(
                participants.iter().any(|p| p.id == "doc" && p.screen),
                "{participants:?}"
            ),
            other => panic!("not admitted: {other:?}"),
        }
        let effects = c.screen("doc", false).unwrap();
        assert_eq!(media_screen(&effects), vec![("doc".to_string(), false)]);
    }

    #[test]
    fn patient_shares_only_while_a_clinician_allows_it() {
        let mut c = open_consult();
        join(&mut c, "doc", Role::Clinician);
        join(&mut c, "pat", Role::Patient);
        assert_eq!(c.screen("pat", true).err(), Some(ErrorCode::Forbidden));
        assert_eq!(
            c.allow_screen("pat", true).err(),
            Some(ErrorCode::Forbidden),
            "a patient cannot allow themselves"
        );
        let effects = c.allow_screen("doc", true).unwrap();
        assert_eq!(
            sends_to(&effects, "pat"),
            vec![&ServerMessage::ScreenAllowed { allowed: true }]
        );
        // A guest arriving now is told at once.
        let j = join(&mut c, "guest", Role::Guest);
        assert_eq!(
            sends_to(&j.effects, "guest"),
            vec![&ServerMessage::ScreenAllowed { allowed: true }]
        );
        assert_eq!(
            media_screen(&c.screen("pat", true).unwrap()),
            vec![("pat".to_string(), true)]
        );
        // Withdrawing the permission stops the patient's share.
        let effects = c.allow_screen("doc", false).unwrap();
        assert_eq!(media_screen(&effects), vec![("pat".to_string(), false)]);
        assert!(sends_to(&effects, "pat").contains(&&ServerMessage::Screen {
            id: "pat".into(),
            on: false
        }));
        assert_eq!(c.screen("pat", true).err(), Some(ErrorCode::Forbidden));
        // Stopping is always allowed (and harmless when not sharing).
        assert!(c.screen("pat", false).unwrap().is_empty());
    }

    #[test]
    fn one_share_at_a_time_and_waiting_people_cannot_share() {
        let mut c = lobby_consult();
        join(&mut c, "doc", Role::Clinician);
        join(&mut c, "doc2", Role::Clinician);
        join(&mut c, "pat", Role::Patient);
        assert_eq!(
            c.screen("pat", false).err(),
            Some(ErrorCode::Forbidden),
            "waiting"
        );
        c.screen("doc", true).unwrap();
        c.admit("doc", "pat").unwrap();
        c.allow_screen("doc", true).unwrap();
        assert_eq!(
            c.screen("pat", true).err(),
            Some(ErrorCode::Forbidden),
            "a patient does not take over a clinician's share"
        );
        let effects = c.screen("doc2", true).unwrap();
        assert_eq!(
            media_screen(&effects),
            vec![("doc".to_string(), false), ("doc2".to_string(), true)]
        );
        assert!(!c.member("doc").unwrap().participant.screen);
        assert!(c.member("doc2").unwrap().participant.screen);
    }

    #[test]
    fn ended_consult_disconnects_everyone_and_refuses_new_joins() {
        let mut c = lobby_consult();
        join(&mut c, "doc", Role::Clinician);
        join(&mut c, "pat", Role::Patient);
        let effects = c.end("doc", Instant::now()).unwrap();
        let disconnected: Vec<_> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Disconnect {
                    participant,
                    reason: ByeReason::Ended,
                } => Some(participant.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(disconnected, vec!["doc", "pat"]);
        assert!(c.is_empty());
        assert_eq!(
            c.join(arrival("doc", Role::Clinician), Limits::default())
                .err(),
            Some(ErrorCode::ConsultEnded)
        );
    }

    #[test]
    fn same_person_joining_again_takes_over_their_place() {
        let mut c = lobby_consult();
        join(&mut c, "doc", Role::Clinician);
        join(&mut c, "pat", Role::Patient);
        c.admit("doc", "pat").unwrap();
        let again = Arrival {
            sub: "sub-pat".into(),
            ..arrival("pat-tab2", Role::Patient)
        };
        let j = c.join(again, Limits::default()).unwrap();
        assert_eq!(j.state, JoinState::InCall, "stays admitted");
        assert!(j.effects.contains(&Effect::Disconnect {
            participant: "pat".into(),
            reason: ByeReason::Replaced
        }));
        assert!(j.effects.contains(&Effect::MediaLeave {
            participant: "pat".into()
        }));
        assert!(j.effects.contains(&Effect::MediaJoin {
            participant: "pat-tab2".into()
        }));
        assert_eq!(c.members().len(), 2);
    }

    #[test]
    fn dropped_participant_returns_without_readmission_within_grace() {
        let mut c = lobby_consult();
        join(&mut c, "doc", Role::Clinician);
        join(&mut c, "pat", Role::Patient);
        c.admit("doc", "pat").unwrap();
        let t0 = Instant::now();
        c.leave("pat", LeftReason::Disconnected, t0);
        c.lock("doc", true).unwrap();
        let back = Arrival {
            sub: "sub-pat".into(),
            now: t0 + Duration::from_secs(5),
            ..arrival("pat2", Role::Patient)
        };
        let j = c.join(back, Limits::default()).unwrap();
        assert_eq!(
            j.state,
            JoinState::InCall,
            "no second admission, even when locked"
        );

        c.leave("pat2", LeftReason::Disconnected, t0);
        c.lock("doc", false).unwrap();
        let late = Arrival {
            sub: "sub-pat".into(),
            now: t0 + Duration::from_secs(31),
            ..arrival("pat3", Role::Patient)
        };
        assert_eq!(
            c.join(late, Limits::default()).unwrap().state,
            JoinState::Waiting
        );
    }

    #[test]
    fn first_clinician_to_join_is_remembered_as_responsible() {
        let mut c = lobby_consult();
        assert_eq!(c.first_clinician(), None);
        join(&mut c, "pat", Role::Patient);
        assert_eq!(c.first_clinician(), None, "a patient is never responsible");
        join(&mut c, "doc", Role::Clinician);
        join(&mut c, "doc2", Role::Clinician);
        c.leave("doc", LeftReason::Left, Instant::now());
        assert_eq!(c.first_clinician(), Some("sub-doc"), "stays after leaving");
    }

    #[test]
    fn takeover_does_not_count_against_capacity() {
        let mut c = Consult::new(
            "c1",
            ConsultPolicy {
                max_participants: 2,
                ..ConsultPolicy::default()
            },
        );
        join(&mut c, "a", Role::Clinician);
        join(&mut c, "b", Role::Patient);
        let again = Arrival {
            sub: "sub-b".into(),
            ..arrival("b2", Role::Patient)
        };
        assert!(c.join(again, Limits::default()).is_ok());
    }

    #[test]
    fn a_resumed_patient_skips_the_waiting_room_but_not_a_removal_or_the_end() {
        let mut c = lobby_consult();
        join(&mut c, "doc", Role::Clinician);
        c.lock("doc", true).unwrap();
        let back = Arrival {
            resumed: true,
            ..arrival("pat", Role::Patient)
        };
        let j = c.join(back, Limits::default()).unwrap();
        assert_eq!(j.state, JoinState::InCall, "straight in, even when locked");
        assert!(j.effects.contains(&Effect::MediaJoin {
            participant: "pat".into()
        }));

        c.remove("doc", "pat", Instant::now()).unwrap();
        let again = Arrival {
            resumed: true,
            ..arrival("pat2", Role::Patient)
        };
        let again = Arrival {
            sub: "sub-pat".into(),
            ..again
        };
        assert_eq!(
            c.join(again, Limits::default()).err(),
            Some(ErrorCode::TokenRevoked)
        );

        c.end("doc", Instant::now()).unwrap();
        let late = Arrival {
            resumed: true,
            ..arrival("guest", Role::Guest)
        };
        assert_eq!(
            c.join(late, Limits::default()).err(),
            Some(ErrorCode::ConsultEnded)
        );
    }
}
