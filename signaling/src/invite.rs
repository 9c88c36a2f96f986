//! Patient and guest invites: one way to mint them, used by the WebSocket
//! `invite` message and by `POST /api/v1/invites`. (Revocation is
//! [`Directory::revoke`](crate::directory::Directory::revoke), shared the
//! same way; what an invite id is, `revocation.rs`.)

use crate::context::Context;
use crate::directory::Host;
use crate::protocol::{ErrorCode, Role};
use std::time::Duration;

pub use crate::token::MAX_INVITE_TTL;
/// Shortest, so a typo does not mint a link that is dead on arrival.
pub const MIN_INVITE_TTL: Duration = Duration::from_secs(60);

/// A minted invite. `token` is a secret: it goes to the clinician who asked
/// and nowhere else (not into any log).
#[derive(Debug, Clone)]
pub struct Invite {
    pub jti: String,
    pub role: Role,
    pub token: String,
    /// Seconds since the UNIX epoch.
    pub expires: u64,
}

/// Mint an invite for `host`'s consult. The invite's `sub` is derived from
/// its `jti`; its name is a role label unless the clinician gave one (the
/// token payload is readable by whoever holds the link). It carries no
/// `host`: a link that travels by mail or text message must not say which
/// clinician (and so which speciality) the patient sees; the waiting room
/// learns the clinician's name from `welcome` instead. Audited, refusals
/// included.
pub fn create(
    ctx: &Context,
    host: &Host,
    role: Role,
    name: Option<String>,
    ttl_secs: Option<u64>,
) -> Result<Invite, ErrorCode> {
    let refuse = |code: ErrorCode| {
        ctx.audit.record(host.event("invite_created").failed(code));
        code
    };
    if role == Role::Clinician {
        return Err(refuse(ErrorCode::Forbidden));
    }
    let name = match name.as_deref().map(str::trim) {
        None | Some("") => match role {
            Role::Guest => "Guest".to_string(),
            _ => "Patient".to_string(),
        },
        Some(n) => n.to_string(),
    };
    let ttl = ttl_secs
        .map(Duration::from_secs)
        .unwrap_or(ctx.invite_ttl)
        .clamp(MIN_INVITE_TTL, MAX_INVITE_TTL)
        .as_secs();
    let now = crate::token::unix_now();
    let expires = now + ttl;
    // Self-authenticating: revocable by this consult only, and known to be
    // one of its invites (with this expiry) without a record of it.
    let jti = ctx.directory.mint_invite_id(&host.consult, expires);
    // A name the verifier would refuse (too long, control characters) is
    // the caller's mistake: `bad_message`.
    let token = crate::token::mint_hs256(
        &ctx.invite_secret,
        &crate::token::MintRequest {
            issuer: ctx.verifier.issuer().to_string(),
            audience: ctx.verifier.audience().to_string(),
            sub: format!("invite-{jti}"),
            role,
            consult: host.consult.clone(),
            name,
            host: None,
            ttl_secs: ttl,
            jti: Some(jti.clone()),
        },
        now,
    )
    .map_err(|_| refuse(ErrorCode::BadMessage))?;
    ctx.directory
        .register_invite(host, &jti, role, expires, ttl)?;
    log::info!(
        "invite created for a consult (by {})",
        host.participant.as_deref().unwrap_or("the API")
    );
    Ok(Invite {
        jti,
        role,
        token,
        expires,
    })
}
