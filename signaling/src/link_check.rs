//! The link check of issue 14: `check {v, token}` as the first WebSocket
//! message asks "would a `join` with this link get in now?" so the page can
//! say "this link has expired" (and whom to call) before the patient
//! presses Join, not after.
//!
//! It answers exactly what `join` would, from the same rules, without
//! joining: the token is verified like a join's ([`Context::verify_unaudited`]:
//! same keys, claims, JWKS refresh), a cluster edge reads the shared room
//! store like a join does but extends nothing ([`Context::room_peek`]), and
//! the directory applies the join's own rules read-only
//! ([`Directory::check`]: revoked, removed or denied, ended, locked). No
//! roster entry, no lobby message, no resume ticket, no media plane; a
//! revocation entry keeps its keep time. What a join would refuse because
//! of who else is there (`consult_full`) is not checked: that would tell
//! the holder of a link about the others.
//!
//! The reply holds only what the token itself says (role, name, expiry,
//! `host`) or the join's error code, plus the operator's contact line. A
//! cluster edge answers the check itself (never passes it on to the
//! consult's home edge): the room store holds what every edge must know.
//!
//! Audit (NEN 7513): a successful check reads nothing about anyone, so it
//! writes nothing; a refused one writes one `link_checked` failure line,
//! with the token's person and consult when the token was valid. Neither
//! the token nor a name reaches the audit log or the operational log.
//!
//! [`Context::verify_unaudited`]: crate::context::Context::verify_unaudited
//! [`Context::room_peek`]: crate::context::Context::room_peek
//! [`Directory::check`]: crate::directory::Directory::check

use crate::audit::{AccessPoint, AuditEvent};
use crate::connection::Connection;
use crate::context::Context;
use crate::protocol::{ErrorCode, PROTOCOL_VERSION, ServerMessage};
use crate::token::Claims;
use std::time::Instant;
use warp::ws::Message;

/// Link checks per client IP. A page checks its link once per load; a
/// person reloading a few times, or a household with several links, stays
/// far below this. The same bound as the connectivity check (`probe.rs`).
pub const CHECKS_PER_MINUTE: u32 = crate::probe::PROBES_PER_MINUTE;
pub const CHECK_BURST: u32 = crate::probe::PROBE_BURST;

/// The audit event of a refused check.
pub const AUDIT_EVENT: &str = "link_checked";

/// WebSocket close code "normal closure" (RFC 6455 §7.4.1): the check is
/// done, nothing went wrong.
const CLOSE_NORMAL: u16 = 1000;

/// Why a check was refused, and what is known about whose link it was.
struct Refused {
    code: ErrorCode,
    /// The token's claims, when it verified (for the audit line).
    claims: Option<Claims>,
    /// Already audited (the room store's refusal writes its own line).
    audited: bool,
}

impl Refused {
    fn code(code: ErrorCode) -> Refused {
        Refused {
            code,
            claims: None,
            audited: false,
        }
    }
}

/// Answer one check on `conn` with one `link-check` and close.
pub(crate) async fn run(conn: &mut Connection, v: Option<u64>, token: Option<String>) {
    let ctx = conn.ctx.clone();
    let access = conn.access.clone();
    let contact = ctx.contact.clone();
    let reply = match check(&ctx, &access, v, token).await {
        Ok(claims) => {
            log::info!("link check: ok");
            ctx.metrics.link_checked(None);
            ServerMessage::LinkCheck {
                ok: true,
                role: Some(claims.role),
                name: Some(claims.name),
                expires: Some(claims.exp),
                host: claims.host,
                code: None,
                contact,
            }
        }
        Err(refused) => {
            log::info!("link check: refused ({})", refused.code);
            ctx.metrics.link_checked(Some(refused.code));
            if !refused.audited {
                let mut event = AuditEvent::new(AUDIT_EVENT, access).failed(refused.code);
                if let Some(c) = &refused.claims {
                    event = event.actor(&c.sub, c.role).consult(&c.consult);
                }
                ctx.audit.record(event);
            }
            ServerMessage::LinkCheck {
                ok: false,
                role: None,
                name: None,
                expires: None,
                host: None,
                code: Some(refused.code),
                contact,
            }
        }
    };
    if conn.send(&reply).await.is_ok() {
        conn.close_with(Message::close_with(CLOSE_NORMAL, "")).await;
    }
}

/// The claims of a token a join would let in now, or why not.
async fn check(
    ctx: &Context,
    access: &AccessPoint,
    v: Option<u64>,
    token: Option<String>,
) -> Result<Claims, Refused> {
    let now = Instant::now();
    // Every check counts, whatever its outcome; an address whose failed
    // joins are used up would get `rate_limited` from a join too.
    if !ctx.check_limiter.allow(access.ip, now) || ctx.join_failures.exhausted(access.ip, now) {
        return Err(Refused::code(ErrorCode::RateLimited));
    }
    if v != Some(u64::from(PROTOCOL_VERSION)) {
        return Err(Refused::code(ErrorCode::UnsupportedVersion));
    }
    let claims = ctx
        .verify_unaudited(&token.unwrap_or_default())
        .await
        .map_err(Refused::code)?;
    let view = match ctx.room_peek(access, &claims, AUDIT_EVENT).await {
        Ok(view) => view,
        Err(code) => {
            return Err(Refused {
                code,
                claims: Some(claims),
                audited: true,
            });
        }
    };
    match ctx.directory.check(&claims, view) {
        Ok(()) => Ok(claims),
        Err(code) => Err(Refused {
            code,
            claims: Some(claims),
            audited: false,
        }),
    }
}
