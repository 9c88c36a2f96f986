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
use crate::metrics::Metrics;
use crate::protocol::{
    ByeReason, E2eeState, ErrorCode, JoinState, LeftReason, Limits, RelayKind, Role, ServerMessage,
};
use crate::token::Claims;
use sfu::{MediaCommand, MediaEvent, SfuHandle};
use std::collections::HashMap;
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
    access: AccessPoint,
    outbox: mpsc::Sender<Outgoing>,
    media: mpsc::UnboundedSender<MediaEvent>,
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

#[derive(Default)]
struct State {
    consults: HashMap<String, Consult>,
    seats: HashMap<ParticipantId, Seat>,
    /// Revoked token ids with their expiry (seconds since the epoch): kept
    /// until the token would have expired anyway, independent of consults.
    revoked: HashMap<String, u64>,
    draining: bool,
}

/// Upper bound on remembered revocations (each is a few dozen bytes).
const MAX_REVOKED: usize = 100_000;

pub struct Directory {
    state: Mutex<State>,
    sfu: SfuHandle,
    policy: ConsultPolicy,
    limits: Limits,
    metrics: Arc<Metrics>,
    audit: Arc<AuditLog>,
}

impl Directory {
    pub fn new(
        sfu: SfuHandle,
        policy: ConsultPolicy,
        limits: Limits,
        metrics: Arc<Metrics>,
        audit: Arc<AuditLog>,
    ) -> Directory {
        Directory {
            state: Mutex::new(State::default()),
            sfu,
            policy,
            limits,
            metrics,
            audit,
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
    pub fn join(&self, claims: &Claims, access: AccessPoint) -> Result<Ticket, ErrorCode> {
        let mut audit = Vec::new();
        let result = self.join_locked(claims, access.clone(), &mut audit);
        if let Err(code) = result {
            audit.push(
                AuditEvent::new("join", access)
                    .actor(&claims.sub, claims.role)
                    .consult(&claims.consult)
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
        audit: &mut Vec<AuditEvent>,
    ) -> Result<Ticket, ErrorCode> {
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.draining {
            return Err(ErrorCode::ShuttingDown);
        }
        if claims
            .jti
            .as_ref()
            .is_some_and(|j| state.revoked.contains_key(j))
        {
            return Err(ErrorCode::TokenRevoked);
        }
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
        let arrival = Arrival {
            id: id.clone(),
            sub: claims.sub.clone(),
            name: claims.name.clone(),
            role: claims.role,
            now_unix: crate::token::unix_now(),
            now,
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
        let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
        let (media_tx, media_rx) = mpsc::unbounded_channel();
        let kick = Arc::new(Notify::new());
        state.seats.insert(
            id.clone(),
            Seat {
                consult: claims.consult.clone(),
                sub: claims.sub.clone(),
                role: claims.role,
                jti: claims.jti.clone(),
                access: access.clone(),
                outbox: tx,
                media: media_tx,
                kick: kick.clone(),
            },
        );
        if created {
            audit.push(
                AuditEvent::new("consult_created", access.clone())
                    .actor(&claims.sub, claims.role)
                    .consult(&claims.consult),
            );
        }
        let event = match joined.state {
            JoinState::InCall => "join",
            JoinState::Waiting => "waiting_room_entered",
        };
        audit.push(
            AuditEvent::new(event, access)
                .actor(&claims.sub, claims.role)
                .consult(&claims.consult)
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
            let Some(seat) = state.seats.remove(id) else {
                return;
            };
            let mut effects = Vec::new();
            if let Some(consult) = state.consults.get_mut(&seat.consult) {
                effects = consult.leave(id, reason, Instant::now());
            }
            audit.push(
                AuditEvent::new("leave", seat.access.clone())
                    .actor(&seat.sub, seat.role)
                    .consult(&seat.consult)
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
        let result = self.with_consult(id, |c, seat| {
            context = Some((
                seat.access.clone(),
                seat.sub.clone(),
                seat.role,
                seat.consult.clone(),
            ));
            let effects = match &action {
                HostAction::Admit(target) => c.admit(id, target)?,
                HostAction::Deny(target) => c.deny(id, target, now)?,
                HostAction::Remove(target) => c.remove(id, target, now)?,
                HostAction::Lock(locked) => c.lock(id, *locked)?,
                HostAction::End => c.end(id, now)?,
            };
            Ok((effects, ()))
        });
        if let Some((access, sub, role, consult)) = context {
            let mut event = AuditEvent::new(name, access)
                .actor(&sub, role)
                .consult(&consult)
                .participant(id);
            match &action {
                HostAction::Admit(t) | HostAction::Deny(t) | HostAction::Remove(t) => {
                    event = event.target(t);
                }
                HostAction::Lock(locked) => {
                    event = event.detail(serde_json::json!({ "locked": locked }))
                }
                HostAction::End => {}
            }
            if let Err(code) = result {
                event = event.failed(code);
            }
            self.write_audit(vec![event]);
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
        self.sfu.send(make(seat.consult.clone(), id.to_string()));
        Ok(())
    }

    /// Forget consults that have been empty longer than the grace period.
    pub fn sweep(&self) {
        let now = Instant::now();
        let unix = crate::token::unix_now();
        let mut guard = self.lock();
        guard.consults.retain(|_, c| !c.expired(now));
        guard
            .revoked
            .retain(|_, exp| exp.saturating_add(crate::token::LEEWAY_SECS) >= unix);
        self.update_gauges(&guard);
    }

    /// Who may create an invite: an admitted clinician. Returns their
    /// consult id (the invite is for that consult).
    pub fn inviter(&self, id: &str) -> Result<String, ErrorCode> {
        let guard = self.lock();
        let seat = guard.seats.get(id).ok_or(ErrorCode::NotJoined)?;
        let consult = guard
            .consults
            .get(&seat.consult)
            .ok_or(ErrorCode::ConsultEnded)?;
        consult.require_clinician(id)?;
        Ok(seat.consult.clone())
    }

    /// Audit a created invite (after it was minted by the session).
    pub fn audit_invite(&self, id: &str, jti: &str, role: Role, ttl_secs: u64) {
        let event = {
            let guard = self.lock();
            let Some(seat) = guard.seats.get(id) else {
                return;
            };
            AuditEvent::new("invite_created", seat.access.clone())
                .actor(&seat.sub, seat.role)
                .consult(&seat.consult)
                .participant(id)
                .detail(serde_json::json!({ "jti": jti, "role": role, "ttl_secs": ttl_secs }))
        };
        self.write_audit(vec![event]);
    }

    /// A clinician revokes an invite (any token id): it cannot be used to
    /// join any more, and whoever is connected with it is removed.
    pub fn revoke(&self, id: &str, jti: &str) -> Result<(), ErrorCode> {
        let mut audit = Vec::new();
        let result = (|| {
            let mut guard = self.lock();
            let state = &mut *guard;
            let seat = state.seats.get(id).ok_or(ErrorCode::NotJoined)?;
            let consult_id = seat.consult.clone();
            let mut event = AuditEvent::new("invite_revoked", seat.access.clone())
                .actor(&seat.sub, seat.role)
                .consult(&consult_id)
                .participant(id)
                .detail(serde_json::json!({ "jti": jti }));
            let consult = state
                .consults
                .get_mut(&consult_id)
                .ok_or(ErrorCode::ConsultEnded)?;
            if let Err(code) = consult.require_clinician(id) {
                event = event.failed(code);
                audit.push(event);
                return Err(code);
            }
            audit.push(event);
            if state.revoked.len() >= MAX_REVOKED {
                return Err(ErrorCode::RateLimited);
            }
            // Keep it for the longest token lifetime we would accept.
            let keep_until = crate::token::unix_now() + 7 * 24 * 3600;
            state.revoked.insert(jti.to_string(), keep_until);
            let holders: Vec<ParticipantId> = state
                .seats
                .iter()
                .filter(|(_, s)| s.consult == consult_id && s.jti.as_deref() == Some(jti))
                .map(|(pid, _)| pid.clone())
                .collect();
            let now = Instant::now();
            let mut effects = Vec::new();
            for holder in holders {
                if holder != id
                    && let Ok(e) = consult.remove(id, &holder, now)
                {
                    effects.extend(e);
                }
            }
            effects.push(Effect::Send {
                to: id.to_string(),
                message: ServerMessage::InviteRevoked {
                    jti: jti.to_string(),
                },
            });
            self.apply(state, &consult_id, effects);
            self.update_gauges(state);
            Ok(())
        })();
        self.write_audit(audit);
        result
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
                    if let Some(seat) = state.seats.get(&participant) {
                        self.sfu.send(MediaCommand::Join {
                            consult: consult.to_string(),
                            participant,
                            events: seat.media.clone(),
                        });
                    }
                }
                Effect::MediaLeave { participant } => self.sfu.send(MediaCommand::Leave {
                    consult: consult.to_string(),
                    participant,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAction {
    Admit(ParticipantId),
    Deny(ParticipantId),
    Remove(ParticipantId),
    Lock(bool),
    End,
}

impl HostAction {
    fn audit_name(&self) -> &'static str {
        match self {
            HostAction::Admit(_) => "admit",
            HostAction::Deny(_) => "deny",
            HostAction::Remove(_) => "remove",
            HostAction::Lock(_) => "lock",
            HostAction::End => "end",
        }
    }
}
