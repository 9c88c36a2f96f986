//! One WebSocket connection, from the first frame to the close.
//!
//! Before `join`: only `join` (or `probe`, the connectivity check of
//! `probe.rs`, or `check`, the link check of `link_check.rs`, each of which
//! ends the connection when done) is accepted, within the join timeout. After it:
//! the participant's messages go to the directory or the media plane, and
//! what the directory, the media plane and the shutdown signal produce goes
//! back out. Every bad input gets an `error` with its code; fatal ones are
//! followed by a close frame. Nothing here logs a token, a name or relay data:
//! log lines carry participant ids, codes and counts.

use crate::audit::{AccessPoint, AuditEvent};
use crate::connection::{Connection, End, Inbound, SEND_TIMEOUT, shutting_down};
use crate::context::Context;
use crate::directory::{HostAction, Outgoing, Ticket};
use crate::protocol::{
    ByeReason, ClientMessage, ErrorCode, LeftReason, PROTOCOL_VERSION, ServerMessage,
};
use crate::resume::Grant;
use futures_util::{SinkExt, StreamExt};
use sfu::{MediaCommand, MediaEvent};
use std::sync::Arc;
use std::time::Instant;
use warp::ws::{Message, WebSocket};

pub async fn run(ws: WebSocket, ctx: Arc<Context>, access: AccessPoint) {
    run_with(ws, ctx, access, true).await;
}

/// A connection another edge passed on to this one, the consult's home
/// (`peer.rs`): handled here whatever the edge directory says now, so a
/// join never travels in a circle.
pub async fn run_passed_on(ws: WebSocket, ctx: Arc<Context>, access: AccessPoint) {
    run_with(ws, ctx, access, false).await;
}

async fn run_with(ws: WebSocket, ctx: Arc<Context>, access: AccessPoint, may_pass_on: bool) {
    ctx.metrics.connections.inc();
    let mut conn = Connection::new(ws, ctx, access);
    if let Some((ticket, grant)) = conn.await_join(may_pass_on).await {
        conn.joined(ticket, grant).await;
    }
    conn.ctx.metrics.connections.dec();
}

impl Connection {
    /// Wait for a valid `join`. Returns the ticket and who joined, or `None`
    /// when the connection ended (every refusal was answered with its code).
    async fn await_join(&mut self, may_pass_on: bool) -> Option<(Ticket, Grant)> {
        let deadline = tokio::time::sleep(self.ctx.join_timeout);
        tokio::pin!(deadline);
        let mut shutdown = self.ctx.shutdown.clone();
        loop {
            let frame = tokio::select! {
                frame = self.ws.next() => frame,
                () = &mut deadline => {
                    let _ = self.error(ErrorCode::JoinTimeout).await;
                    return None;
                }
                () = shutting_down(&mut shutdown) => {
                    let _ = self.error(ErrorCode::ShuttingDown).await;
                    return None;
                }
            };
            match self.read(frame).await {
                Inbound::Stop => return None,
                Inbound::Handled => continue,
                Inbound::Message(ClientMessage::Join { v, token, resume }) => {
                    if may_pass_on
                        && let Some(peers) = self.ctx.peers.clone()
                        && self.pass_on(&peers, v, &token, &resume).await
                    {
                        return None;
                    }
                    let (ctx, access) = (self.ctx.clone(), self.access.clone());
                    return match authorize(&ctx, &access, v, token, resume).await {
                        Ok(joined) => Some(joined),
                        Err(code) => {
                            let _ = self.error(code).await;
                            None
                        }
                    };
                }
                Inbound::Message(ClientMessage::Probe { v, token }) => {
                    crate::probe::run(self, v, token).await;
                    return None;
                }
                // Answered here, on any edge: never passed on to the
                // consult's home (`link_check.rs`).
                Inbound::Message(ClientMessage::Check { v, token }) => {
                    crate::link_check::run(self, v, token).await;
                    return None;
                }
                Inbound::Message(_) => {
                    let _ = self.error(ErrorCode::NotJoined).await;
                    return None;
                }
            }
        }
    }

    async fn joined(&mut self, mut ticket: Ticket, grant: Grant) {
        let id = ticket.id.clone();
        let reason = match self.joined_loop(&mut ticket, &grant).await {
            Ok(reason) => reason,
            Err(End::Closed) => LeftReason::Disconnected,
        };
        self.ctx.directory.leave(&id, reason);
        log::info!("participant {id} left ({reason:?})");
    }

    /// A fresh resume ticket, if `id` is (still) in the call: nobody in the
    /// waiting room, removed or denied gets one.
    async fn send_resume(&mut self, id: &str, grant: &Grant) -> Result<(), End> {
        if self.ctx.directory.admission(id) != Some(crate::consult::Admission::Admitted) {
            return Ok(());
        }
        match self.ctx.resume.issue(grant, crate::token::unix_now()) {
            Some(i) => {
                self.send(&ServerMessage::Resume {
                    ticket: i.ticket,
                    expires: i.expires,
                })
                .await
            }
            None => Ok(()),
        }
    }

    async fn joined_loop(&mut self, t: &mut Ticket, grant: &Grant) -> Result<LeftReason, End> {
        if let Some(turn) = &self.ctx.turn
            && let ServerMessage::Welcome {
                ice_servers,
                force_relay,
                ..
            } = &mut t.welcome
        {
            *ice_servers = Some(turn.ice_servers(&t.id, crate::token::unix_now(), grant.token_exp));
            *force_relay = turn.force_relay.then_some(true);
        }
        self.send(&t.welcome).await?;
        self.send_resume(&t.id, grant).await?;
        let refresh = self.ctx.resume.refresh();
        let mut resume_tick =
            tokio::time::interval_at(tokio::time::Instant::now() + refresh, refresh);
        resume_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = self.ctx.shutdown.clone();
        // Join-to-media latency runs from admission to the first forwarded
        // packet; a waiting participant's clock starts when they are admitted.
        let mut media_clock = match t.state {
            crate::protocol::JoinState::InCall => Some(Instant::now()),
            crate::protocol::JoinState::Waiting => None,
        };
        let kick = t.kick.clone();
        // A joined connection lives as long as the peer answers: it is
        // pinged when quiet and closed when silent for the idle timeout.
        let heartbeat = self.ctx.ws_heartbeat;
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutting_down(&mut shutdown) => {
                    self.send(&ServerMessage::Bye { reason: ByeReason::Shutdown }).await?;
                    self.close().await;
                    return Ok(LeftReason::Disconnected);
                }
                _ = beat.tick() => {
                    let quiet = self.last_heard.elapsed();
                    if quiet >= self.ctx.ws_idle_timeout {
                        self.ctx
                            .metrics
                            .ws_closed
                            .with_label_values(&["heartbeat_timeout"])
                            .inc();
                        log::info!("participant {}: no answer for {}s, closing", t.id, quiet.as_secs());
                        self.close().await;
                        return Err(End::Closed);
                    }
                    if quiet >= heartbeat {
                        match tokio::time::timeout(SEND_TIMEOUT, self.ws.send(Message::ping(Vec::new()))).await {
                            Ok(Ok(())) => {}
                            _ => return Err(End::Closed),
                        }
                    }
                }
                _ = resume_tick.tick() => self.send_resume(&t.id, grant).await?,
                () = kick.notified() => {
                    self.close().await;
                    return Ok(LeftReason::Disconnected);
                }
                out = t.outbox.recv() => match out {
                    Some(Outgoing::Message(m)) => {
                        let admitted = matches!(m, ServerMessage::Admitted { .. });
                        if admitted {
                            media_clock = Some(Instant::now());
                        }
                        self.send(&m).await?;
                        if admitted {
                            self.send_resume(&t.id, grant).await?;
                        }
                    }
                    Some(Outgoing::Bye(reason)) => {
                        self.send(&ServerMessage::Bye { reason }).await?;
                        self.close().await;
                        return Ok(match reason {
                            ByeReason::Removed | ByeReason::Denied => LeftReason::Removed,
                            ByeReason::Ended => LeftReason::Ended,
                            _ => LeftReason::Disconnected,
                        });
                    }
                    None => return Ok(LeftReason::Disconnected),
                },
                event = t.media.recv() => {
                    if let Some(event) = event {
                        self.media_event(&t.id, event, &mut media_clock).await?;
                    }
                }
                frame = self.ws.next() => match self.read(frame).await {
                    Inbound::Stop => return Err(End::Closed),
                    Inbound::Handled => {}
                    Inbound::Message(m) => {
                        if let Some(reason) = self.handle(&t.id, m).await? {
                            return Ok(reason);
                        }
                    }
                },
            }
        }
    }

    async fn media_event(
        &mut self,
        id: &str,
        event: MediaEvent,
        media_clock: &mut Option<Instant>,
    ) -> Result<(), End> {
        match event {
            MediaEvent::Offer { sdp } => self.send(&ServerMessage::Offer { sdp }).await,
            MediaEvent::Connected => {
                log::debug!("participant {id}: media connected");
                Ok(())
            }
            MediaEvent::FirstMediaForwarded => {
                if let Some(start) = media_clock.take() {
                    self.ctx
                        .metrics
                        .join_to_media
                        .observe(start.elapsed().as_secs_f64());
                }
                Ok(())
            }
            // Checked against the roster at delivery: the media plane only
            // knows admitted participants, but the edge is the one that
            // promises a waiting participant hears nothing of the call.
            MediaEvent::ActiveSpeaker { participant } => {
                match self.ctx.directory.speaker(id, participant) {
                    Some(message) => self.send(&message).await,
                    None => Ok(()),
                }
            }
            MediaEvent::Failed { reason } => {
                log::info!("participant {id}: media failed");
                self.send(&ServerMessage::MediaFailed { reason }).await
            }
            MediaEvent::Reset => {
                log::info!("participant {id}: media session moved to another node");
                self.send(&ServerMessage::MediaReset).await
            }
            MediaEvent::Error { code, message } => {
                let code = ErrorCode::parse(&code).unwrap_or(ErrorCode::MediaError);
                log::info!("participant {id}: media plane refused: {code}");
                self.send(&ServerMessage::Error {
                    code,
                    message,
                    fatal: code.fatal(),
                })
                .await?;
                if code.fatal() {
                    self.close().await;
                    return Err(End::Closed);
                }
                Ok(())
            }
        }
    }

    /// Handle one message of a joined participant. `Some(reason)` ends the
    /// session.
    async fn handle(&mut self, id: &str, m: ClientMessage) -> Result<Option<LeftReason>, End> {
        let dir = &self.ctx.directory;
        let result = match m {
            ClientMessage::Join { .. } => Err(ErrorCode::BadMessage),
            ClientMessage::Answer { sdp } => {
                dir.media(id, |consult, participant| MediaCommand::Answer {
                    consult,
                    participant,
                    sdp,
                })
            }
            ClientMessage::Candidate { candidate } => {
                dir.media(id, |consult, participant| MediaCommand::Candidate {
                    consult,
                    participant,
                    candidate: candidate.candidate,
                })
            }
            ClientMessage::IceRestart => {
                dir.media(id, |consult, participant| MediaCommand::IceRestart {
                    consult,
                    participant,
                })
            }
            ClientMessage::Mute { audio, video } => dir.mute(id, audio, video),
            ClientMessage::Screen { on } => dir.screen(id, on),
            ClientMessage::Keyframe { from } => dir.keyframe(id, &from),
            ClientMessage::Relay { to, kind, data } => {
                if self.relay_bytes.try_take(data.len() as u64, Instant::now()) {
                    dir.relay(id, &to, kind, data)
                } else {
                    Err(ErrorCode::RateLimited)
                }
            }
            ClientMessage::E2ee { state, verified } => dir.e2ee(id, state, verified),
            ClientMessage::VideoPrefs {
                audio_only,
                quality,
            } => dir.video_prefs(id, audio_only, quality),
            ClientMessage::Leave => {
                self.send(&ServerMessage::Bye {
                    reason: ByeReason::Left,
                })
                .await?;
                self.close().await;
                return Ok(Some(LeftReason::Left));
            }
            ClientMessage::Ping => {
                self.send(&ServerMessage::Pong).await?;
                Ok(())
            }
            ClientMessage::Admit { id: target } => dir.host_action(id, HostAction::Admit(target)),
            ClientMessage::Deny { id: target } => dir.host_action(id, HostAction::Deny(target)),
            ClientMessage::Remove { id: target } => dir.host_action(id, HostAction::Remove(target)),
            ClientMessage::Lock { locked } => dir.host_action(id, HostAction::Lock(locked)),
            ClientMessage::ScreenAllow { allowed } => {
                dir.host_action(id, HostAction::ScreenAllow(allowed))
            }
            ClientMessage::End => dir.host_action(id, HostAction::End),
            ClientMessage::Invite {
                role,
                name,
                ttl_secs,
            } => {
                let created = dir
                    .host(id, "invite_created")
                    .and_then(|host| crate::invite::create(&self.ctx, &host, role, name, ttl_secs));
                match created {
                    Ok(i) => {
                        self.send(&ServerMessage::InviteCreated {
                            jti: i.jti,
                            role: i.role,
                            token: i.token,
                            expires: i.expires,
                        })
                        .await?;
                        Ok(())
                    }
                    Err(code) => Err(code),
                }
            }
            ClientMessage::RevokeInvite { jti } => {
                if !crate::token::valid_jti(&jti) {
                    Err(ErrorCode::BadMessage)
                } else {
                    dir.host(id, "invite_revoked")
                        .and_then(|host| dir.revoke(&host, &jti))
                }
            }
            ClientMessage::Probe { .. } | ClientMessage::Check { .. } => Err(ErrorCode::BadMessage),
        };
        if let Err(code) = result {
            self.error(code).await?;
        }
        Ok(None)
    }
}

/// Check the version and the token, then join the consult. Every refusal is
/// counted; token refusals are audited. A valid resume ticket for the token's
/// consult, person and role skips the waiting room; any other ticket is
/// ignored (the token alone decides whether the join is allowed).
async fn authorize(
    ctx: &Context,
    access: &AccessPoint,
    v: Option<u64>,
    token: Option<String>,
    resume: Option<String>,
) -> Result<(Ticket, Grant), ErrorCode> {
    let refuse = |code: ErrorCode| {
        ctx.metrics.rejected(code);
        code
    };
    // Failed joins only charge the address's bucket; once it is empty the
    // token is not even looked at.
    let failed = |code: ErrorCode| {
        ctx.join_failures.allow(access.ip, Instant::now());
        refuse(code)
    };
    if ctx.join_failures.exhausted(access.ip, Instant::now()) {
        ctx.audit.record(
            AuditEvent::new("token_rejected", access.clone()).failed(ErrorCode::RateLimited),
        );
        return Err(refuse(ErrorCode::RateLimited));
    }
    if v != Some(u64::from(PROTOCOL_VERSION)) {
        return Err(failed(ErrorCode::UnsupportedVersion));
    }
    let claims = match ctx.verify_token(access, &token.unwrap_or_default()).await {
        Ok(c) => c,
        Err(code) => {
            log::info!("join refused: {code}");
            return Err(failed(code));
        }
    };
    let resumed = resume.is_some_and(|r| {
        let checked = ctx.resume.check(
            &r,
            &claims.consult,
            &claims.sub,
            claims.role,
            crate::token::unix_now(),
        );
        if let Err(why) = checked {
            log::info!("resume ticket not accepted ({why:?}): joining as usual");
        }
        checked.is_ok()
    });
    // A cluster edge asks the shared room store first (revoked, removed,
    // locked on any edge); unreadable is `service_unavailable`.
    let view = match ctx.room_check(access, &claims, "join").await {
        Ok(view) => view,
        Err(code) => return Err(refuse(code)),
    };
    match ctx
        .directory
        .join_seeded(&claims, access.clone(), resumed, view)
    {
        Ok(mut ticket) => {
            ctx.metrics.joins_accepted.inc();
            if let ServerMessage::Welcome { host, contact, .. } = &mut ticket.welcome {
                // The token's own `host` (an EHR may name the clinician) wins
                // over the consult's word for who is there.
                if claims.host.is_some() {
                    host.clone_from(&claims.host);
                }
                contact.clone_from(&ctx.contact);
            }
            log::info!(
                "participant {} joined ({:?}{})",
                ticket.id,
                ticket.state,
                if resumed { ", resumed" } else { "" }
            );
            let grant = Grant {
                consult: claims.consult,
                sub: claims.sub,
                role: claims.role,
                token_exp: claims.exp,
            };
            Ok((ticket, grant))
        }
        Err(code) => {
            log::info!("join refused: {code}");
            Err(refuse(code))
        }
    }
}
