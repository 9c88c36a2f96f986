//! The in-memory room directory: every consult this edge holds, and a
//! mailbox per connected participant.
//!
//! Sessions call in here with what their participant did; the directory asks
//! the consult's pure logic (`consult.rs`) what follows and carries out the
//! [`Effect`]s while it still holds the lock, so every participant sees roster
//! changes in the same order. Nothing here is written to disk; the audit log
//! gets one line per security-relevant event, written after the lock is
//! released.

use crate::audit::{AccessPoint, AuditEvent, AuditLog};
use crate::consult::{Admission, Arrival, Consult, ConsultPolicy, Effect, ParticipantId};
use crate::media::Media;
use crate::metrics::Metrics;
use crate::protocol::{
    ByeReason, E2eeState, ErrorCode, JoinState, LeftReason, Limits, RelayKind, Role, ServerMessage,
    VideoQuality,
};
use crate::revocation::{ClinicianLimiter, InviteIds, JtiKind, Refusal, Revocations, Revoked};
use crate::roomstore::{JoinView, RoomWrite, RoomWriter};
use crate::token::Claims;
use sfu::{MediaCommand, MediaEvent};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::{Notify, mpsc};

/// Messages queued per participant before they count as too slow and are
/// disconnected (a stalled browser must not make the server buffer forever).
const OUTBOX_CAPACITY: usize = 256;

/// What a session receives from the directory.
#[derive(Debug)]
pub enum Outgoing {
    Message(ServerMessage),
    /// Say goodbye and close (removed, denied, consult ended).
    Bye(ByeReason),
}

/// A connected participant: where their messages go and who they are (for
/// audit lines about what they do).
struct Seat {
    consult: String,
    sub: String,
    role: Role,
    /// The token's `jti`, so revoking an invite also ends its connection.
    jti: Option<String>,
    /// The token's `exp`: how long a revocation of a token the server
    /// cannot check must be kept (see `revocation.rs`).
    exp: u64,
    /// The `sub` of the clinician who minted the invite this participant
    /// joined with (kept here: the invite record goes when it expires).
    invite_creator: Option<String>,
    access: AccessPoint,
    outbox: mpsc::Sender<Outgoing>,
    /// Woken when the outbox overflowed: the session closes the connection.
    kick: Arc<Notify>,
}

/// Handed to a session whose join was accepted.
pub struct Ticket {
    pub id: ParticipantId,
    pub welcome: ServerMessage,
    pub state: JoinState,
    pub outbox: mpsc::Receiver<Outgoing>,
    pub media: mpsc::UnboundedReceiver<MediaEvent>,
    pub kick: Arc<Notify>,
}

/// A clinician acting on invites: either connected and admitted (the
/// WebSocket `invite` / `revoke-invite`), or holding a valid clinician token
/// for the consult (the HTTP API). Built only by [`Directory::host`] and
/// [`Directory::host_by_token`], which check the role.
#[derive(Debug, Clone)]
pub struct Host {
    pub sub: String,
    /// Their display name (the token's `name`): the `host` claim of the
    /// invites they mint.
    pub name: String,
    pub consult: String,
    /// Their participant id when they act from inside the consult.
    pub participant: Option<ParticipantId>,
    pub access: AccessPoint,
    /// The consult's responsible clinician, for audit lines.
    pub responsible: Option<String>,
    /// When the clinician's own token expires.
    pub token_exp: u64,
}

impl Host {
    /// An audit event with this clinician as the actor.
    pub fn event(&self, name: &'static str) -> AuditEvent {
        let mut e = AuditEvent::new(name, self.access.clone())
            .actor(&self.sub, Role::Clinician)
            .consult(&self.consult)
            .responsible(self.responsible.as_deref());
        if let Some(p) = &self.participant {
            e = e.participant(p);
        }
        e
    }
}

/// An invite this server minted: which consult it is for, and its expiry
/// (seconds since the epoch).
struct InviteRecord {
    consult: String,
    expires: u64,
    /// The `sub` of the clinician who minted it: the responsible clinician
    /// of whoever joins with it.
    creator: String,
}

#[derive(Default)]
struct State {
    consults: HashMap<String, Consult>,
    seats: HashMap<ParticipantId, Seat>,
    /// Revoked token ids, per consult: a clinician can never disable
    /// another consult's links, nor use up another consult's quota.
    revocations: Revocations,
    /// Invites minted here, by `jti`, until they expire: revoking one of
    /// another consult is refused (`unknown_invite`).
    invites: HashMap<String, InviteRecord>,
    draining: bool,
}

impl State {
    /// Participant `id`'s seat and consult, if `id` is in the call (not
    /// the waiting room): `not_joined` / `forbidden` otherwise.
    fn admitted(&self, id: &str) -> Result<(&Seat, &Consult), ErrorCode> {
        let seat = self.seats.get(id).ok_or(ErrorCode::NotJoined)?;
        let consult = self
            .consults
            .get(&seat.consult)
            .filter(|c| c.is_admitted(id))
            .ok_or(ErrorCode::Forbidden)?;
        Ok((seat, consult))
    }
}

/// Upper bound on remembered live invites, in total and per consult (a
/// clinician token must not be able to fill the server's memory).
const MAX_INVITES: usize = 100_000;
pub const MAX_INVITES_PER_CONSULT: usize = 200;

pub struct Directory {
    state: Mutex<State>,
    media: Arc<Media>,
    policy: ConsultPolicy,
    limits: Limits,
    metrics: Arc<Metrics>,
    audit: Arc<AuditLog>,
    /// Mints and checks invite ids (keyed from the invite secret).
    invite_ids: InviteIds,
    /// Revocations per clinician `sub`, whatever connection they come from.
    revoke_limiter: ClinicianLimiter,
    /// A cluster edge: where locks, removals and revocations are written
    /// through to the shared room store (`roomstore`). `None`: `serve`.
    room: Option<RoomWriter>,
}

impl Directory {
    pub fn new(
        media: Arc<Media>,
        policy: ConsultPolicy,
        limits: Limits,
        metrics: Arc<Metrics>,
        audit: Arc<AuditLog>,
        invite_secret: &[u8],
    ) -> Directory {
        Directory {
            state: Mutex::new(State::default()),
            media,
            policy,
            limits,
            metrics,
            audit,
            invite_ids: InviteIds::new(invite_secret),
            revoke_limiter: ClinicianLimiter::default(),
            room: None,
        }
    }

    /// Write locks, removals, denials and revocations through to a shared
    /// room store (a cluster edge).
    pub fn with_room_writer(mut self, writer: RoomWriter) -> Directory {
        self.room = Some(writer);
        self
    }

    fn write_room(&self, writes: Vec<RoomWrite>) {
        if let Some(room) = &self.room {
            for w in writes {
                room.send(w);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; keep serving rather
        // than poisoning every later join.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuse new joins from now on (shutdown).
    pub fn drain(&self) {
        self.lock().draining = true;
    }

    /// A participant with a verified token joins their consult.
    /// `resumed`: the join carried a valid resume ticket (`resume.rs`).
    pub fn join(
        &self,
        claims: &Claims,
        access: AccessPoint,
        resumed: bool,
    ) -> Result<Ticket, ErrorCode> {
        self.join_seeded(claims, access, resumed, None)
    }

    /// [`join`](Directory::join) with what the shared room store says
    /// (a cluster edge, `roomstore`): a token revoked or a person barred on
    /// any edge is refused with `token_revoked` (a resume ticket does not
    /// help), and a consult this edge creates starts locked if it was.
    pub fn join_seeded(
        &self,
        claims: &Claims,
        access: AccessPoint,
        resumed: bool,
        view: Option<JoinView>,
    ) -> Result<Ticket, ErrorCode> {
        let mut audit = Vec::new();
        let result = self.join_locked(claims, access.clone(), resumed, view, &mut audit);
        if let Err(code) = result {
            let responsible = self.responsible_clinician(claims);
            audit.push(
                AuditEvent::new("join", access)
                    .actor(&claims.sub, claims.role)
                    .consult(&claims.consult)
                    .responsible(responsible.as_deref())
                    .failed(code),
            );
        }
        self.write_audit(audit);
        result
    }

    fn join_locked(
        &self,
        claims: &Claims,
        access: AccessPoint,
        resumed: bool,
        view: Option<JoinView>,
        audit: &mut Vec<AuditEvent>,
    ) -> Result<Ticket, ErrorCode> {
        let mut guard = self.lock();
        let state = &mut *guard;
        if let Some(code) = refuse_joining(state, claims, view) {
            return Err(code);
        }
        let invite_creator = invite_creator(state, claims);
        let now = Instant::now();
        let id = loop {
            let id = crate::token::random_hex_id();
            if !state.seats.contains_key(&id) {
                break id;
            }
        };
        // An empty consult past its grace period is forgotten here as well as
        // by the sweeper, so a join never sees a stale lock or end.
        if state
            .consults
            .get(&claims.consult)
            .is_some_and(|c| c.expired(now))
        {
            state.consults.remove(&claims.consult);
        }
        let created = !state.consults.contains_key(&claims.consult);
        let consult = state
            .consults
            .entry(claims.consult.clone())
            .or_insert_with(|| Consult::new(claims.consult.clone(), self.policy));
        if created && view.is_some_and(|v| v.locked) {
            consult.restore_lock(true);
        }
        let arrival = Arrival {
            id: id.clone(),
            sub: claims.sub.clone(),
            name: claims.name.clone(),
            role: claims.role,
            now_unix: crate::token::unix_now(),
            now,
            resumed,
        };
        let joined = match consult.join(arrival, self.limits) {
            Ok(j) => j,
            Err(code) => {
                if created {
                    state.consults.remove(&claims.consult);
                }
                return Err(code);
            }
        };
        // After the join, so a clinician who is the first is their own.
        let responsible = invite_creator
            .clone()
            .or_else(|| consult.first_clinician().map(str::to_string));
        let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
        let media_rx = self.media.attach(&claims.consult, &id);
        let kick = Arc::new(Notify::new());
        state.seats.insert(
            id.clone(),
            Seat {
                consult: claims.consult.clone(),
                sub: claims.sub.clone(),
                role: claims.role,
                jti: claims.jti.clone(),
                exp: claims.exp,
                invite_creator,
                access: access.clone(),
                outbox: tx,
                kick: kick.clone(),
            },
        );
        if created {
            audit.push(
                AuditEvent::new("consult_created", access.clone())
                    .actor(&claims.sub, claims.role)
                    .consult(&claims.consult)
                    .responsible(responsible.as_deref()),
            );
        }
        let event = match joined.state {
            JoinState::InCall if resumed => "join_resumed",
            JoinState::InCall => "join",
            JoinState::Waiting => "waiting_room_entered",
        };
        audit.push(
            AuditEvent::new(event, access)
                .actor(&claims.sub, claims.role)
                .consult(&claims.consult)
                .responsible(responsible.as_deref())
                .participant(&id),
        );
        self.apply(state, &claims.consult, joined.effects);
        self.update_gauges(state);
        Ok(Ticket {
            id,
            welcome: joined.welcome,
            state: joined.state,
            outbox: rx,
            media: media_rx,
            kick,
        })
    }

    /// The participant's connection is gone (or they said `leave`).
    /// Idempotent: a removed participant's session calls this too.
    pub fn leave(&self, id: &str, reason: LeftReason) {
        let mut audit = Vec::new();
        {
            let mut guard = self.lock();
            let state = &mut *guard;
            self.media.detach(id);
            let Some(seat) = state.seats.remove(id) else {
                return;
            };
            let mut effects = Vec::new();
            let mut responsible = seat.invite_creator.clone();
            if let Some(consult) = state.consults.get_mut(&seat.consult) {
                effects = consult.leave(id, reason, Instant::now());
                responsible = responsible.or_else(|| consult.first_clinician().map(str::to_string));
            }
            audit.push(
                AuditEvent::new("leave", seat.access.clone())
                    .actor(&seat.sub, seat.role)
                    .consult(&seat.consult)
                    .responsible(responsible.as_deref())
                    .participant(id)
                    .detail(serde_json::json!({ "reason": reason })),
            );
            self.apply(state, &seat.consult, effects);
            self.update_gauges(state);
        }
        self.write_audit(audit);
    }

    /// Run `f` on the participant's consult and carry out its effects.
    fn with_consult<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Consult, &Seat) -> Result<(Vec<Effect>, T), ErrorCode>,
    ) -> Result<T, ErrorCode> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let seat = state.seats.get(id).ok_or(ErrorCode::NotJoined)?;
        let consult_id = seat.consult.clone();
        let consult = state
            .consults
            .get_mut(&consult_id)
            .ok_or(ErrorCode::ConsultEnded)?;
        let (effects, value) = f(consult, seat)?;
        self.apply(state, &consult_id, effects);
        self.update_gauges(state);
        Ok(value)
    }

    pub fn mute(&self, id: &str, audio: bool, video: bool) -> Result<(), ErrorCode> {
        self.with_consult(id, |c, _| Ok((c.mute(id, audio, video), ())))
    }

    /// `id` starts or stops sharing their screen (`Consult::screen` says
    /// who may). Audited when something changes, and refusals: what was
    /// shown stays unknown to the server, that it was shown and by whom
    /// does not. A share this one stopped (one at a time) gets its own line,
    /// with the person stopped as `target`. Repeating the current state
    /// writes nothing.
    pub fn screen(&self, id: &str, on: bool) -> Result<(), ErrorCode> {
        let mut events = Vec::new();
        let result =
            self.with_consult(id, |c, seat| {
                let e = AuditEvent::new("screen_share", seat.access.clone())
                    .actor(&seat.sub, seat.role)
                    .consult(&seat.consult)
                    .responsible(responsible(c, seat))
                    .participant(id);
                match c.screen(id, on) {
                    Err(code) => {
                        events.push(e.detail(serde_json::json!({ "on": on })).failed(code));
                        Err(code)
                    }
                    Ok(effects) => {
                        for stopped in screens_stopped(&effects, id) {
                            events.push(e.clone().target(&stopped).detail(
                                serde_json::json!({ "on": false, "reason": "taken_over" }),
                            ));
                        }
                        if !effects.is_empty() {
                            events.push(e.detail(serde_json::json!({ "on": on })));
                        }
                        Ok((effects, ()))
                    }
                }
            });
        if !events.is_empty() {
            self.write_audit(events);
        }
        result
    }

    pub fn relay(
        &self,
        id: &str,
        to: &str,
        kind: RelayKind,
        data: String,
    ) -> Result<(), ErrorCode> {
        self.with_consult(id, |c, _| Ok((c.relay(id, to, kind, data)?, ())))
    }

    pub fn e2ee(&self, id: &str, state: E2eeState, verified: Vec<String>) -> Result<(), ErrorCode> {
        let event = self.with_consult(id, |c, seat| {
            let effects = c.e2ee(id, state, verified)?;
            let verified = c
                .member(id)
                .and_then(|m| m.e2ee.as_ref())
                .map_or(0, |(_, v)| v.len());
            let event = AuditEvent::new("e2ee_status", seat.access.clone())
                .actor(&seat.sub, seat.role)
                .consult(&seat.consult)
                .responsible(responsible(c, seat))
                .participant(id)
                .detail(serde_json::json!({ "state": state.as_str(), "verified_count": verified }));
            Ok((effects, event))
        })?;
        self.write_audit(vec![event]);
        Ok(())
    }

    /// A host action (admit, deny, remove, lock, end) by participant `id`.
    /// Refusals are audited as well as successes.
    pub fn host_action(&self, id: &str, action: HostAction) -> Result<(), ErrorCode> {
        let now = Instant::now();
        let name = action.audit_name();
        let mut context = None;
        let mut write = None;
        let mut stopped = Vec::new();
        let result = self.with_consult(id, |c, seat| {
            context = Some((
                seat.access.clone(),
                seat.sub.clone(),
                seat.role,
                seat.consult.clone(),
                responsible(c, seat).map(str::to_string),
            ));
            let consult = seat.consult.clone();
            let barred = |c: &Consult, target: &str| {
                c.member(target).map(|m| RoomWrite::Bar {
                    consult: consult.clone(),
                    sub: m.sub.clone(),
                })
            };
            let effects = match &action {
                HostAction::Admit(target) => c.admit(id, target)?,
                HostAction::Deny(target) => {
                    let bar = barred(c, target);
                    let effects = c.deny(id, target, now)?;
                    write = bar;
                    effects
                }
                HostAction::Remove(target) => {
                    let bar = barred(c, target);
                    let effects = c.remove(id, target, now)?;
                    write = bar;
                    effects
                }
                HostAction::Lock(locked) => {
                    let effects = c.lock(id, *locked)?;
                    write = Some(RoomWrite::Lock {
                        consult: consult.clone(),
                        locked: *locked,
                    });
                    effects
                }
                HostAction::ScreenAllow(allowed) => {
                    let effects = c.allow_screen(id, *allowed)?;
                    stopped = screens_stopped(&effects, id);
                    effects
                }
                HostAction::End => c.end(id, now)?,
            };
            Ok((effects, ()))
        });
        if result.is_ok() {
            self.write_room(write.into_iter().collect());
        }
        if let Some((access, sub, role, consult, responsible)) = context {
            let mut event = AuditEvent::new(name, access.clone())
                .actor(&sub, role)
                .consult(&consult)
                .responsible(responsible.as_deref())
                .participant(id);
            match &action {
                HostAction::Admit(t) | HostAction::Deny(t) | HostAction::Remove(t) => {
                    event = event.target(t);
                }
                HostAction::Lock(locked) => {
                    event = event.detail(serde_json::json!({ "locked": locked }))
                }
                HostAction::ScreenAllow(allowed) => {
                    event = event.detail(serde_json::json!({ "allowed": allowed }))
                }
                HostAction::End => {}
            }
            if let Err(code) = result {
                event = event.failed(code);
            }
            // Shares the withdrawn permission stopped: one line each.
            let mut events: Vec<AuditEvent> = stopped
                .iter()
                .map(|target| {
                    AuditEvent::new("screen_share", access.clone())
                        .actor(&sub, role)
                        .consult(&consult)
                        .responsible(responsible.as_deref())
                        .participant(id)
                        .target(target)
                        .detail(serde_json::json!({ "on": false, "reason": "not_allowed" }))
                })
                .collect();
            events.insert(0, event);
            self.write_audit(events);
        }
        result
    }

    /// Pass a media command for an admitted participant to the SFU.
    pub fn media(
        &self,
        id: &str,
        make: impl FnOnce(String, ParticipantId) -> MediaCommand,
    ) -> Result<(), ErrorCode> {
        let guard = self.lock();
        let seat = guard.seats.get(id).ok_or(ErrorCode::NotJoined)?;
        let admitted = guard
            .consults
            .get(&seat.consult)
            .is_some_and(|c| c.is_admitted(id));
        if !admitted {
            return Err(ErrorCode::Forbidden);
        }
        self.media.send(make(seat.consult.clone(), id.to_string()));
        Ok(())
    }

    /// What an admitted participant wants to receive (`video-prefs`). More
    /// entries than a consult can have participants is a `bad_message`;
    /// entries naming anyone but another admitted participant of the same
    /// consult are dropped, so the media plane only hears of its own
    /// publishers.
    pub fn video_prefs(
        &self,
        id: &str,
        audio_only: bool,
        quality: BTreeMap<String, VideoQuality>,
    ) -> Result<(), ErrorCode> {
        if quality.len() > self.limits.max_participants {
            return Err(ErrorCode::BadMessage);
        }
        let guard = self.lock();
        let (seat, consult) = guard.admitted(id)?;
        let max_quality = quality
            .into_iter()
            .filter(|(publisher, _)| publisher != id && consult.is_admitted(publisher))
            .map(|(publisher, q)| (publisher, q.into()))
            .collect();
        self.media.send(MediaCommand::Preferences {
            consult: seat.consult.clone(),
            participant: id.to_string(),
            audio_only,
            max_quality,
        });
        Ok(())
    }

    /// Participant `id` needs a keyframe of `from`'s video (its end-to-end
    /// key for `from` just arrived). Both must be admitted members of the
    /// same consult; the media plane rate-limits what reaches `from`.
    pub fn keyframe(&self, id: &str, from: &str) -> Result<(), ErrorCode> {
        let guard = self.lock();
        let (seat, consult) = guard.admitted(id)?;
        if from == id {
            return Err(ErrorCode::BadMessage);
        }
        if !consult.is_admitted(from) {
            // Left a moment ago (or never was): nothing to ask for.
            return Ok(());
        }
        self.media.send(MediaCommand::Keyframe {
            consult: seat.consult.clone(),
            participant: id.to_string(),
            source: from.to_string(),
        });
        Ok(())
    }

    /// The `speaker` message for participant `id`, from the media plane's
    /// active-speaker event. `None` when `id` is not (or no longer) admitted:
    /// someone in the waiting room learns nothing about the call. A speaker
    /// who is not an admitted member of the same consult (they just left) is
    /// reported as nobody.
    pub fn speaker(&self, id: &str, speaker: Option<ParticipantId>) -> Option<ServerMessage> {
        let guard = self.lock();
        let seat = guard.seats.get(id)?;
        let consult = guard
            .consults
            .get(&seat.consult)
            .filter(|c| c.is_admitted(id))?;
        let participant = speaker.filter(|s| consult.is_admitted(s));
        Some(ServerMessage::Speaker { participant })
    }

    /// Hand participant `id` an event as if the media plane sent it. For
    /// tests that stand in for the media plane. False when `id` is not
    /// connected.
    pub fn deliver_media_event(&self, id: &str, event: MediaEvent) -> bool {
        let consult = match self.lock().seats.get(id) {
            Some(seat) => seat.consult.clone(),
            None => return false,
        };
        self.media.deliver(sfu::MediaEnvelope {
            consult,
            participant: id.to_string(),
            event,
        })
    }

    /// Forget consults that have been empty longer than the grace period.
    pub fn sweep(&self) {
        let now = Instant::now();
        let unix = crate::token::unix_now();
        let mut guard = self.lock();
        guard.consults.retain(|_, c| !c.expired(now));
        guard.revocations.sweep(unix);
        self.metrics
            .revocations_held
            .set(i64::try_from(guard.revocations.len()).unwrap_or(i64::MAX));
        guard
            .invites
            .retain(|_, i| i.expires.saturating_add(crate::token::LEEWAY_SECS) >= unix);
        self.update_gauges(&guard);
    }

    /// The consults someone is connected to on this edge (a cluster edge
    /// re-claims their rooms in the edge directory).
    pub fn occupied_consults(&self) -> Vec<String> {
        let guard = self.lock();
        let mut ids: Vec<String> = guard.seats.values().map(|s| s.consult.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// The responsible clinician for the holder of `claims` (see
    /// [`AuditEvent::responsible_clinician`]), if known yet.
    pub fn responsible_clinician(&self, claims: &Claims) -> Option<String> {
        let guard = self.lock();
        invite_creator(&guard, claims).or_else(|| {
            guard
                .consults
                .get(&claims.consult)
                .and_then(|c| c.first_clinician().map(str::to_string))
        })
    }

    /// Whether a verified token could be used to join now, apart from
    /// capacity and the lock: not revoked, its holder not removed, the
    /// consult not ended, the server not draining. The HTTP API and the
    /// connectivity check accept exactly the tokens a join would.
    pub fn check_token(&self, claims: &Claims) -> Result<(), ErrorCode> {
        let mut guard = self.lock();
        if let Some(code) = refuse_joining(&mut guard, claims, None) {
            return Err(code);
        }
        let now = Instant::now();
        match guard.consults.get(&claims.consult) {
            Some(c) if !c.expired(now) => c.refusal(&claims.sub).map_or(Ok(()), Err),
            _ => Ok(()),
        }
    }

    /// What a `join` of the holder of `claims` would be refused with now,
    /// if anything, without joining (the link check, `link_check.rs`): the
    /// same rules as [`join_seeded`](Directory::join_seeded) (draining,
    /// revoked, removed or denied, ended, locked), minus the capacity (it
    /// depends on who else is there, which a link check does not reveal)
    /// and minus a resume ticket (a page that checks its link has none).
    /// Only reads: no roster entry, no lobby message, no audit line, and a
    /// revocation entry keeps its keep time.
    pub fn check(&self, claims: &Claims, view: Option<JoinView>) -> Result<(), ErrorCode> {
        let guard = self.lock();
        if let Some(code) = refusal(&guard, claims, view) {
            return Err(code);
        }
        let now = Instant::now();
        match guard.consults.get(&claims.consult) {
            Some(c) if !c.expired(now) => c.entry(&claims.sub, claims.role, false, now),
            // What a join would create: a fresh consult, locked if the
            // shared room store says so.
            _ => {
                let mut fresh = Consult::new(claims.consult.clone(), self.policy);
                fresh.restore_lock(view.is_some_and(|v| v.locked));
                fresh.entry(&claims.sub, claims.role, false, now)
            }
        }
        .map(|_returning| ())
    }

    /// A clinician token holder acting through the HTTP API. Refusals are
    /// audited as `event` with the token's `sub` as the actor.
    pub fn host_by_token(
        &self,
        claims: &Claims,
        access: AccessPoint,
        event: &'static str,
    ) -> Result<Host, ErrorCode> {
        let checked = if claims.role == Role::Clinician {
            self.check_token(claims)
        } else {
            Err(ErrorCode::Forbidden)
        };
        let responsible = self.responsible_clinician(claims);
        if let Err(code) = checked {
            self.write_audit(vec![
                AuditEvent::new(event, access)
                    .actor(&claims.sub, claims.role)
                    .consult(&claims.consult)
                    .responsible(responsible.as_deref())
                    .failed(code),
            ]);
            return Err(code);
        }
        Ok(Host {
            sub: claims.sub.clone(),
            name: claims.name.clone(),
            consult: claims.consult.clone(),
            participant: None,
            access,
            responsible,
            token_exp: claims.exp,
        })
    }

    /// A connected participant acting on invites: must be an admitted
    /// clinician. Refusals are audited as `event`.
    pub fn host(&self, id: &str, event: &'static str) -> Result<Host, ErrorCode> {
        let (result, audit) = {
            let guard = self.lock();
            let seat = guard.seats.get(id).ok_or(ErrorCode::NotJoined)?;
            let consult = guard.consults.get(&seat.consult);
            let responsible = consult.and_then(|c| responsible(c, seat));
            let allowed = consult
                .ok_or(ErrorCode::ConsultEnded)
                .and_then(|c| c.require_clinician(id));
            match allowed {
                Ok(()) => (
                    Ok(Host {
                        sub: seat.sub.clone(),
                        name: consult
                            .and_then(|c| c.member(id))
                            .map(|m| m.participant.name.clone())
                            .unwrap_or_default(),
                        consult: seat.consult.clone(),
                        participant: Some(id.to_string()),
                        access: seat.access.clone(),
                        responsible: responsible.map(str::to_string),
                        token_exp: seat.exp,
                    }),
                    None,
                ),
                Err(code) => (
                    Err(code),
                    Some(
                        AuditEvent::new(event, seat.access.clone())
                            .actor(&seat.sub, seat.role)
                            .consult(&seat.consult)
                            .responsible(responsible)
                            .participant(id)
                            .failed(code),
                    ),
                ),
            }
        };
        self.write_audit(audit.into_iter().collect());
        result
    }

    /// Remember an invite `host` minted (so that only its own consult can
    /// revoke it) and audit it. Refused when the host has too many live
    /// invites (`rate_limited`).
    pub fn register_invite(
        &self,
        host: &Host,
        jti: &str,
        role: Role,
        expires: u64,
        ttl_secs: u64,
    ) -> Result<(), ErrorCode> {
        let result = {
            let mut guard = self.lock();
            let unix = crate::token::unix_now();
            let live = guard
                .invites
                .values()
                .filter(|i| i.consult == host.consult && i.expires >= unix)
                .count();
            if live >= MAX_INVITES_PER_CONSULT || guard.invites.len() >= MAX_INVITES {
                Err(ErrorCode::RateLimited)
            } else {
                guard.invites.insert(
                    jti.to_string(),
                    InviteRecord {
                        consult: host.consult.clone(),
                        expires,
                        creator: host.sub.clone(),
                    },
                );
                Ok(())
            }
        };
        let mut event = host.event("invite_created");
        event = match result {
            Ok(()) => {
                event.detail(serde_json::json!({ "jti": jti, "role": role, "ttl_secs": ttl_secs }))
            }
            Err(code) => event.failed(code),
        };
        self.write_audit(vec![event]);
        result
    }

    /// A new invite id for `consult`, expiring at `expires`: revocable by
    /// that consult only, and recognisably so without a record of it.
    pub fn mint_invite_id(&self, consult: &str, expires: u64) -> String {
        self.invite_ids.mint(consult, expires)
    }

    /// A clinician revokes a token id for their consult: it cannot be used
    /// to join that consult any more, and whoever is connected with it is
    /// removed (`bye {removed}`). A connected host is told `invite-revoked`.
    /// What is kept, for how long and how much, is `revocation.rs`:
    /// another consult's invite (or a made-up invite id) is `unknown_invite`;
    /// over [`REVOCATIONS_PER_MINUTE`](crate::revocation::REVOCATIONS_PER_MINUTE)
    /// per clinician, or over the consult's quota of ids the server cannot
    /// check, `rate_limited`. Every outcome is audited and counted.
    pub fn revoke(&self, host: &Host, jti: &str) -> Result<(), ErrorCode> {
        let mut event = host
            .event("invite_revoked")
            .detail(serde_json::json!({ "jti": jti }));
        let mut writes = Vec::new();
        let outcome = if self.revoke_limiter.allow(&host.sub, Instant::now()) {
            self.revoke_locked(host, jti, &mut writes)
        } else {
            Err(("rate_limited", ErrorCode::RateLimited))
        };
        self.write_room(writes);
        let result = match outcome {
            Ok(label) => {
                self.metrics.revocation(label);
                Ok(())
            }
            Err((label, code)) => {
                self.metrics.revocation(label);
                if code == ErrorCode::RateLimited {
                    event = event.detail(serde_json::json!({ "jti": jti, "limit": label }));
                }
                event = event.failed(code);
                Err(code)
            }
        };
        self.write_audit(vec![event]);
        result
    }

    /// The revocation itself; `Ok` and `Err` carry the metric label. What
    /// the room store must learn goes into `writes`.
    fn revoke_locked(
        &self,
        host: &Host,
        jti: &str,
        writes: &mut Vec<RoomWrite>,
    ) -> Result<&'static str, (&'static str, ErrorCode)> {
        let mut guard = self.lock();
        let state = &mut *guard;
        if let Some(id) = &host.participant {
            // Still here and still allowed (the check in `host` ran before
            // this lock was taken).
            let allowed = state.seats.contains_key(id)
                && state
                    .consults
                    .get(&host.consult)
                    .is_some_and(|c| c.require_clinician(id).is_ok());
            if !allowed {
                return Err(("forbidden", ErrorCode::Forbidden));
            }
        }
        let kind = self.invite_ids.classify(&host.consult, jti);
        let unix = crate::token::unix_now();
        let horizon = if kind == JtiKind::Foreign {
            consult_horizon(state, host)
        } else {
            0
        };
        let revoked = state
            .revocations
            .revoke(&host.consult, jti, kind, horizon, unix);
        if let Ok(Revoked::Kept { until }) = revoked {
            writes.push(RoomWrite::Revoke {
                consult: host.consult.clone(),
                jti: jti.to_string(),
                foreign: kind == JtiKind::Foreign,
                until,
            });
        }
        let label = match revoked {
            Ok(Revoked::AlreadyExpired) => "expired",
            Ok(Revoked::Kept { .. }) if kind == JtiKind::Foreign => "token",
            Ok(Revoked::Kept { .. }) => "invite",
            Err(Refusal::NotThisConsult) => {
                return Err(("unknown_invite", ErrorCode::UnknownInvite));
            }
            Err(Refusal::ConsultFull) => {
                return Err(("consult_quota", ErrorCode::RateLimited));
            }
            Err(Refusal::ServerFull) => return Err(("server_quota", ErrorCode::RateLimited)),
        };
        self.metrics
            .revocations_held
            .set(i64::try_from(state.revocations.len()).unwrap_or(i64::MAX));
        let holders: Vec<ParticipantId> = state
            .seats
            .iter()
            .filter(|(pid, s)| {
                s.consult == host.consult
                    && s.jti.as_deref() == Some(jti)
                    && host.participant.as_ref() != Some(*pid)
            })
            .map(|(pid, _)| pid.clone())
            .collect();
        let now = Instant::now();
        let mut effects = Vec::new();
        if let Some(consult) = state.consults.get_mut(&host.consult) {
            for holder in holders {
                let sub = consult.member(&holder).map(|m| m.sub.clone());
                if let Ok(e) = consult.expel(&holder, now) {
                    effects.extend(e);
                    if let Some(sub) = sub {
                        writes.push(RoomWrite::Bar {
                            consult: host.consult.clone(),
                            sub,
                        });
                    }
                }
            }
        }
        if let Some(id) = &host.participant {
            effects.push(Effect::Send {
                to: id.clone(),
                message: ServerMessage::InviteRevoked {
                    jti: jti.to_string(),
                },
            });
        }
        self.apply(state, &host.consult, effects);
        self.update_gauges(state);
        Ok(label)
    }

    /// Admission of participant `id`, if connected.
    pub fn admission(&self, id: &str) -> Option<Admission> {
        let guard = self.lock();
        let seat = guard.seats.get(id)?;
        guard
            .consults
            .get(&seat.consult)?
            .member(id)
            .map(|m| m.admission)
    }

    fn apply(&self, state: &mut State, consult: &str, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Send { to, message } => deliver(state, &to, Outgoing::Message(message)),
                Effect::Disconnect {
                    participant,
                    reason,
                } => deliver(state, &participant, Outgoing::Bye(reason)),
                Effect::MediaJoin { participant } => {
                    if state.seats.contains_key(&participant) {
                        self.media.send(MediaCommand::Join {
                            consult: consult.to_string(),
                            participant,
                        });
                    }
                }
                Effect::MediaLeave { participant } => self.media.send(MediaCommand::Leave {
                    consult: consult.to_string(),
                    participant,
                }),
                Effect::MediaScreen { participant, on } => self.media.send(MediaCommand::Screen {
                    consult: consult.to_string(),
                    participant,
                    on,
                }),
            }
        }
    }

    fn update_gauges(&self, state: &State) {
        let (mut admitted, mut waiting) = (0i64, 0i64);
        for c in state.consults.values() {
            for m in c.members() {
                match m.admission {
                    Admission::Admitted => admitted += 1,
                    Admission::Waiting => waiting += 1,
                }
            }
        }
        self.metrics.consults.set(state.consults.len() as i64);
        self.metrics.participants.set(admitted);
        self.metrics.waiting.set(waiting);
    }

    fn write_audit(&self, events: Vec<AuditEvent>) {
        for e in events {
            self.audit.record(e);
        }
    }
}

/// Why the holder of `claims` may not join whatever the consult says:
/// the server is draining, or the token is revoked here or (`view`) in the
/// shared room store, or its holder barred there. Only reads.
fn refusal(state: &State, claims: &Claims, view: Option<JoinView>) -> Option<ErrorCode> {
    if state.draining {
        return Some(ErrorCode::ShuttingDown);
    }
    let revoked = claims
        .jti
        .as_ref()
        .is_some_and(|j| state.revocations.revoked(&claims.consult, j));
    (revoked || view.is_some_and(|v| v.refused())).then_some(ErrorCode::TokenRevoked)
}

/// [`refusal`] for a token presented to get in (a join, the HTTP API, the
/// connectivity check): a revoked token that turns up keeps its entry at
/// least until its own `exp` (`revocation.rs`). The link check does not
/// come through here: it only looks.
fn refuse_joining(state: &mut State, claims: &Claims, view: Option<JoinView>) -> Option<ErrorCode> {
    let code = refusal(state, claims, view)?;
    if let Some(j) = &claims.jti {
        state.revocations.is_revoked(&claims.consult, j, claims.exp);
    }
    Some(code)
}

/// The latest expiry of any token known for `host`'s consult: the
/// clinician's own, its live invites', its connected participants'. A
/// revoked id the server cannot check is kept at least that long.
fn consult_horizon(state: &State, host: &Host) -> u64 {
    let invites = state
        .invites
        .values()
        .filter(|i| i.consult == host.consult)
        .map(|i| i.expires);
    let seats = state
        .seats
        .values()
        .filter(|s| s.consult == host.consult)
        .map(|s| s.exp);
    invites.chain(seats).fold(host.token_exp, u64::max)
}

/// Who minted the invite `claims` came with, if it is one of this consult's.
fn invite_creator(state: &State, claims: &Claims) -> Option<String> {
    let jti = claims.jti.as_ref()?;
    state
        .invites
        .get(jti)
        .filter(|i| i.consult == claims.consult)
        .map(|i| i.creator.clone())
}

/// The responsible clinician of a seated participant of consult `c`.
fn responsible<'a>(c: &'a Consult, seat: &'a Seat) -> Option<&'a str> {
    seat.invite_creator
        .as_deref()
        .or_else(|| c.first_clinician())
}

fn deliver(state: &State, to: &str, item: Outgoing) {
    let Some(seat) = state.seats.get(to) else {
        return;
    };
    if let Err(mpsc::error::TrySendError::Full(_)) = seat.outbox.try_send(item) {
        log::warn!("participant {to}: outbox full, disconnecting");
        seat.kick.notify_one();
    }
}

/// Clinician-only actions.
/// Participants other than `actor` whose screen share these effects stop.
fn screens_stopped(effects: &[Effect], actor: &str) -> Vec<ParticipantId> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::MediaScreen { participant, on } if !on && participant != actor => {
                Some(participant.clone())
            }
            _ => None,
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAction {
    Admit(ParticipantId),
    Deny(ParticipantId),
    Remove(ParticipantId),
    Lock(bool),
    /// Patients and guests may share their screen.
    ScreenAllow(bool),
    End,
}

impl HostAction {
    fn audit_name(&self) -> &'static str {
        match self {
            HostAction::Admit(_) => "admit",
            HostAction::Deny(_) => "deny",
            HostAction::Remove(_) => "remove",
            HostAction::Lock(_) => "lock",
            HostAction::ScreenAllow(_) => "screen_allow",
            HostAction::End => "end",
        }
    }
}
