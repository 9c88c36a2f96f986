//! The HTTP API for EHRs and the clinician's page: create and revoke
//! invites, authenticated by the clinician's own join token.
//!
//! * `POST /api/v1/invites` with `Authorization: Bearer <clinician token>`
//!   and `{role, name?, ttl_secs?}` → `201 {jti, role, token, expires, url}`;
//! * `DELETE /api/v1/invites/{jti}` with the same header → `204`.
//!
//! The token is checked exactly like a join (same keys, same claims, not
//! revoked, consult not ended) and must have role `clinician`; the consult
//! is the token's. Minting and revoking are the same code as the WebSocket
//! `invite` / `revoke-invite` (`invite.rs`, `Directory::revoke`). Errors are
//! `{"error": {"code", "message"}}` with the protocol's error codes. No
//! token is logged; every authenticated call is audited.

use crate::audit::AccessPoint;
use crate::context::Context;
use crate::directory::Host;
use crate::protocol::{ErrorCode, Role};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use std::time::{Duration, Instant};
use warp::Buf;
use warp::http::{Response, StatusCode, header};

/// Largest request body: an invite request is a few dozen bytes.
pub const MAX_BODY_BYTES: usize = 4 * 1024;
/// A body that trickles in slower than this is dropped.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests per client IP (an EHR back end may create invites for a whole
/// hospital from one address, so this is generous).
pub const API_REQUESTS_PER_MINUTE: u32 = 600;
pub const API_BURST: u32 = 100;

/// The request body of `POST /api/v1/invites`.
#[derive(Debug, Deserialize)]
struct CreateInvite {
    role: Role,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

/// Who is calling: where from, and the `Authorization` header.
pub struct Caller {
    pub access: AccessPoint,
    pub authorization: Option<String>,
}

/// The HTTP status for a protocol error code.
pub fn status(code: ErrorCode) -> StatusCode {
    use ErrorCode::*;
    match code {
        TokenMissing | TokenTooLarge | TokenMalformed | TokenBadAlgorithm | TokenBadSignature
        | TokenExpired | TokenNotYetValid | TokenWrongIssuer | TokenWrongAudience
        | TokenMissingClaim | TokenBadClaim | TokenRevoked => StatusCode::UNAUTHORIZED,
        Forbidden => StatusCode::FORBIDDEN,
        MessageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        RateLimited => StatusCode::TOO_MANY_REQUESTS,
        UnknownInvite | UnknownParticipant => StatusCode::NOT_FOUND,
        ConsultFull | ConsultLocked | ConsultEnded => StatusCode::CONFLICT,
        ShuttingDown | ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        MediaError => StatusCode::INTERNAL_SERVER_ERROR,
        BadMessage | UnsupportedVersion | NotJoined | JoinTimeout => StatusCode::BAD_REQUEST,
    }
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<String> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        // Responses may hold a token.
        .header(header::CACHE_CONTROL, "no-store")
        .body(body.to_string())
        .unwrap_or_else(|_| Response::new(String::new()))
}

fn error_response(code: ErrorCode) -> Response<String> {
    let mut r = json_response(
        status(code),
        serde_json::json!({ "error": { "code": code.as_str(), "message": code.message() } }),
    );
    if r.status() == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

/// The token from `Authorization: Bearer <token>` (empty if absent, which
/// the verifier answers with `token_missing`).
fn bearer(authorization: Option<&str>) -> &str {
    authorization
        .and_then(|h| {
            let (scheme, rest) = h.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .unwrap_or("")
}

/// Rate limit, verify the token, and require a clinician of a live consult.
/// Refusals after the token was read are audited as `event`.
async fn authenticate(
    ctx: &Context,
    caller: &Caller,
    event: &'static str,
) -> Result<Host, ErrorCode> {
    if !ctx.api_limiter.allow(caller.access.ip, Instant::now()) {
        return Err(ErrorCode::RateLimited);
    }
    let token = bearer(caller.authorization.as_deref());
    let claims = ctx.verify_token(&caller.access, token).await?;
    // A cluster edge: revoked or removed on another edge counts too.
    if ctx
        .room_check(&caller.access, &claims, event)
        .await?
        .is_some_and(|v| v.refused())
    {
        ctx.audit.record(
            crate::audit::AuditEvent::new(event, caller.access.clone())
                .actor(&claims.sub, claims.role)
                .consult(&claims.consult)
                .failed(ErrorCode::TokenRevoked),
        );
        return Err(ErrorCode::TokenRevoked);
    }
    ctx.directory
        .host_by_token(&claims, caller.access.clone(), event)
}

/// Read at most [`MAX_BODY_BYTES`]; larger (however it is framed) is
/// `message_too_large`, a stalled upload `bad_message`.
async fn read_body<S, B>(body: S) -> Result<Vec<u8>, ErrorCode>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let read = async {
        let mut body = std::pin::pin!(body);
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            let mut chunk = chunk.map_err(|_| ErrorCode::BadMessage)?;
            if out.len() + chunk.remaining() > MAX_BODY_BYTES {
                return Err(ErrorCode::MessageTooLarge);
            }
            while chunk.has_remaining() {
                let part = chunk.chunk();
                out.extend_from_slice(part);
                let n = part.len();
                chunk.advance(n);
            }
        }
        Ok(out)
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .unwrap_or(Err(ErrorCode::BadMessage))
}

/// In a cluster, an invite request for a consult whose room lives on
/// another edge is answered by that edge (`peer.rs`): the room decides
/// whether the consult still runs, and a revocation there also ends the
/// revoked person's connection. `None`: answer here (this edge is the home,
/// `serve`, or the token is not valid — refused and audited here).
async fn pass_on(
    ctx: &Context,
    caller: &Caller,
    method: warp::http::Method,
    path: &str,
    body: Vec<u8>,
) -> Option<Response<String>> {
    let peers = ctx.peers.as_ref()?;
    let token = bearer(caller.authorization.as_deref());
    if token.is_empty() {
        return None;
    }
    if ctx.jwks.is_some() && ctx.verifier.has_unknown_kid(token) {
        ctx.refresh_jwks().await;
    }
    let claims = ctx.verifier.verify(token, crate::token::unix_now()).ok()?;
    let reached = peers
        .reach(&claims.consult, |home| {
            let (method, body) = (method.clone(), body.clone());
            async move {
                peers
                    .api_call(
                        &home,
                        &caller.access,
                        method,
                        path,
                        caller.authorization.as_deref(),
                        body,
                    )
                    .await
            }
        })
        .await;
    match reached {
        Ok(None) => None,
        Ok(Some(reply)) => {
            let mut r = Response::builder()
                .status(StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY))
                .header(header::CACHE_CONTROL, "no-store");
            if !reply.body.is_empty() {
                r = r.header(header::CONTENT_TYPE, "application/json");
            }
            if let Some(w) = reply.www_authenticate {
                r = r.header(header::WWW_AUTHENTICATE, w);
            }
            Some(
                r.body(reply.body)
                    .unwrap_or_else(|_| Response::new(String::new())),
            )
        }
        Err(e) => {
            ctx.metrics.peer_route_failures.inc();
            log::warn!("an invite request could not reach its consult's home edge: {e:?}");
            Some(error_response(ErrorCode::ServiceUnavailable))
        }
    }
}

/// `POST /api/v1/invites`. `may_pass_on`: false for a request another edge
/// passed on to this one.
pub async fn create_invite<S, B>(
    ctx: &Context,
    caller: Caller,
    body: S,
    may_pass_on: bool,
) -> Response<String>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let body = read_body(body).await;
    if may_pass_on
        && let Ok(bytes) = &body
        && let Some(reply) = pass_on(
            ctx,
            &caller,
            warp::http::Method::POST,
            "/api/v1/invites",
            bytes.clone(),
        )
        .await
    {
        return reply;
    }
    let host = match authenticate(ctx, &caller, "invite_created").await {
        Ok(h) => h,
        Err(code) => return error_response(code),
    };
    let request = body.and_then(|bytes| {
        serde_json::from_slice::<CreateInvite>(&bytes).map_err(|_| ErrorCode::BadMessage)
    });
    let request = match request {
        Ok(r) => r,
        Err(code) => {
            ctx.audit.record(host.event("invite_created").failed(code));
            return error_response(code);
        }
    };
    match crate::invite::create(ctx, &host, request.role, request.name, request.ttl_secs) {
        Ok(invite) => {
            let url = crate::config::join_url(&ctx.public_url, &invite.token, None);
            json_response(
                StatusCode::CREATED,
                serde_json::json!({
                    "jti": invite.jti,
                    "role": invite.role,
                    "token": invite.token,
                    "expires": invite.expires,
                    "url": url,
                }),
            )
        }
        Err(code) => error_response(code),
    }
}

/// `DELETE /api/v1/invites/{jti}`.
pub async fn revoke_invite(
    ctx: &Context,
    caller: Caller,
    jti: String,
    may_pass_on: bool,
) -> Response<String> {
    if may_pass_on
        && crate::token::valid_jti(&jti)
        && let Some(reply) = pass_on(
            ctx,
            &caller,
            warp::http::Method::DELETE,
            &format!("/api/v1/invites/{jti}"),
            Vec::new(),
        )
        .await
    {
        return reply;
    }
    let host = match authenticate(ctx, &caller, "invite_revoked").await {
        Ok(h) => h,
        Err(code) => return error_response(code),
    };
    if !crate::token::valid_jti(&jti) {
        ctx.audit
            .record(host.event("invite_revoked").failed(ErrorCode::BadMessage));
        return error_response(ErrorCode::BadMessage);
    }
    match ctx.directory.revoke(&host, &jti) {
        Ok(()) => Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header(header::CACHE_CONTROL, "no-store")
            .body(String::new())
            .unwrap_or_else(|_| Response::new(String::new())),
        Err(code) => error_response(code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_required() {
        assert_eq!(bearer(Some("Bearer a.b.c")), "a.b.c");
        assert_eq!(bearer(Some("bearer  a.b.c ")), "a.b.c");
        assert_eq!(bearer(Some("Basic abc")), "");
        assert_eq!(bearer(Some("a.b.c")), "");
        assert_eq!(bearer(None), "");
    }

    #[test]
    fn every_token_error_is_401_and_the_rest_as_documented() {
        for code in ErrorCode::ALL {
            let s = status(code);
            if code.as_str().starts_with("token_") {
                assert_eq!(s, StatusCode::UNAUTHORIZED, "{code}");
            } else {
                assert_ne!(s, StatusCode::UNAUTHORIZED, "{code}");
            }
        }
        assert_eq!(status(ErrorCode::Forbidden), StatusCode::FORBIDDEN);
        assert_eq!(
            status(ErrorCode::MessageTooLarge),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            status(ErrorCode::RateLimited),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(status(ErrorCode::UnknownInvite), StatusCode::NOT_FOUND);
        assert_eq!(status(ErrorCode::BadMessage), StatusCode::BAD_REQUEST);
    }
}
