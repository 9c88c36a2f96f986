//! HTTP routes: the WebSocket endpoint, the invite API, health, metrics and
//! the embedded web client. Tokens are never read from a URL: they arrive in
//! the first WebSocket message or in an `Authorization` header.

use crate::audit::AccessPoint;
use crate::context::Context;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use warp::Filter;
use warp::http::{HeaderMap, HeaderValue, Response, StatusCode, header};

/// Frames above this are refused by the WebSocket layer itself; frames
/// between the protocol limit and this get a `message_too_large` error.
pub(crate) const WS_HARD_LIMIT: usize = 1024 * 1024;

/// Bytes queued for one WebSocket before a send waits (tungstenite's
/// default), and the most it may ever hold: one more message of the largest
/// size the server sends (an offer or a relayed message is well under the
/// 1 MiB frame cap). Pongs the peer does not read wait in this buffer; past
/// it, newer pongs replace the one not yet sent instead of piling up (a
/// ping flood without reading once grew it without bound).
pub(crate) const WS_WRITE_BUFFER: usize = 128 * 1024;
pub(crate) const WS_MAX_WRITE_BUFFER: usize = WS_WRITE_BUFFER + WS_HARD_LIMIT;

pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' blob: data:; media-src 'self' blob:; worker-src 'self' blob:; connect-src 'self'; \
frame-ancestors 'none'; base-uri 'none'";

fn security_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(self), microphone=(self)"),
    );
    h
}

pub fn routes(
    ctx: Arc<Context>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone + Send + Sync + 'static
{
    let with_ctx = {
        let ctx = ctx.clone();
        warp::any().map(move || ctx.clone())
    };

    let ws = warp::path("ws")
        .and(warp::path::end())
        .and(warp::ws())
        .and(crate::gate::peer())
        .and(warp::header::optional::<String>("user-agent"))
        .and(crate::client_addr::forwarded_for())
        .and(with_ctx.clone())
        .map(
            |ws: warp::ws::Ws,
             remote: Option<SocketAddr>,
             ua: Option<String>,
             forwarded: Option<String>,
             ctx: Arc<Context>| {
                let ip = crate::audit::client_ip(
                    remote.map(|a| a.ip()),
                    forwarded.as_deref(),
                    &ctx.trusted_proxies,
                );
                let access = AccessPoint::new(ip, ua.as_deref());
                ws.max_message_size(WS_HARD_LIMIT)
                    .max_frame_size(WS_HARD_LIMIT)
                    .max_write_buffer_size(WS_MAX_WRITE_BUFFER)
                    .on_upgrade(move |socket| crate::session::run(socket, ctx, access))
            },
        );

    // Who is calling, for the API: client IP (proxy-aware), browser family
    // and the Authorization header.
    let caller = crate::gate::peer()
        .and(warp::header::optional::<String>("user-agent"))
        .and(crate::client_addr::forwarded_for())
        .and(warp::header::optional::<String>("authorization"))
        .and(with_ctx.clone())
        .map(
            |remote: Option<SocketAddr>,
             ua: Option<String>,
             forwarded: Option<String>,
             authorization: Option<String>,
             ctx: Arc<Context>| {
                let ip = crate::audit::client_ip(
                    remote.map(|a| a.ip()),
                    forwarded.as_deref(),
                    &ctx.trusted_proxies,
                );
                let caller = crate::api::Caller {
                    access: AccessPoint::new(ip, ua.as_deref()),
                    authorization,
                };
                (ctx, caller)
            },
        )
        .untuple_one();
    let create_invite = warp::post()
        .and(warp::path!("api" / "v1" / "invites"))
        .and(caller.clone())
        .and(warp::body::stream())
        .then(
            |ctx: Arc<Context>, caller: crate::api::Caller, body| async move {
                crate::api::create_invite(&ctx, caller, body, true).await
            },
        );
    let revoke_invite = warp::delete()
        .and(warp::path!("api" / "v1" / "invites" / String))
        .and(caller)
        .then(
            |jti: String, ctx: Arc<Context>, caller: crate::api::Caller| async move {
                crate::api::revoke_invite(&ctx, caller, jti, true).await
            },
        );
    let api = create_invite.or(revoke_invite).unify();

    let healthz = warp::path("healthz")
        .and(warp::path::end())
        .map(|| text(StatusCode::OK, "ok"));

    let readyz = warp::path("readyz")
        .and(warp::path::end())
        .and(with_ctx.clone())
        .map(|ctx: Arc<Context>| {
            if ctx.ready.load(Ordering::SeqCst) {
                text(StatusCode::OK, "ready")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining")
            }
        });

    // With --metrics-listen, /metrics is not on this port (404 like any
    // unknown path).
    let metrics = warp::path("metrics")
        .and(warp::path::end())
        .and(with_ctx.clone())
        .and_then(|ctx: Arc<Context>| async move {
            if ctx.metrics_on_main_port {
                Ok(metrics_reply(&ctx))
            } else {
                Err(warp::reject::not_found())
            }
        });

    let assets = warp::path::full()
        .and(with_ctx)
        .map(|path: warp::path::FullPath, ctx: Arc<Context>| asset(ctx.assets, path.as_str()));

    // HEAD is answered like GET (hyper leaves the body out), so link
    // checkers and load balancers probing with HEAD see the same status.
    let get_or_head = warp::get().or(warp::head()).unify();
    let get = get_or_head.and(healthz.or(readyz).or(metrics).or(assets));
    ws.or(api)
        .or(get)
        .recover(|_rejection: warp::Rejection| async {
            Ok::<_, Infallible>(text(StatusCode::NOT_FOUND, "not found"))
        })
        .with(warp::reply::with::headers(security_headers()))
}

/// The `/metrics` text: the edge's registry plus, with an in-process media
/// plane, its counters.
fn metrics_reply(ctx: &Context) -> Response<String> {
    ctx.metrics.audit_suppressed(ctx.audit.suppressed_total());
    let mut body = ctx
        .metrics
        .render(ctx.sfu.as_ref().map(|sfu| sfu.stats()).unwrap_or_default());
    if let Some(sfu) = &ctx.sfu {
        body.push_str(&sfu.quality_stats().prometheus_text());
        body.push_str(&sfu.limit_stats().prometheus_text());
    }
    Response::builder()
        .header(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .header(header::CACHE_CONTROL, "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(String::new()))
}

/// The `--metrics-listen` port: `/metrics` and `/healthz` only.
pub fn metrics_routes(
    ctx: Arc<Context>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone + Send + Sync + 'static
{
    let metrics = {
        let ctx = ctx.clone();
        warp::path("metrics")
            .and(warp::path::end())
            .map(move || Box::new(metrics_reply(&ctx)) as Box<dyn warp::Reply>)
    };
    let healthz = warp::path("healthz")
        .and(warp::path::end())
        .map(|| Box::new(text(StatusCode::OK, "ok")) as Box<dyn warp::Reply>);
    warp::get()
        .and(metrics.or(healthz).unify())
        .recover(|_rejection: warp::Rejection| async {
            Ok::<_, Infallible>(
                Box::new(text(StatusCode::NOT_FOUND, "not found")) as Box<dyn warp::Reply>
            )
        })
        .unify()
}

/// The peer port of a cluster edge (`peer.rs`): only `/peer`, a WebSocket
/// from another edge passing a participant on, proven with the HMAC header.
/// Anything else is 404; a missing or bad proof is 403.
pub fn peer_routes(
    ctx: Arc<Context>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone + Send + Sync + 'static
{
    // The caller as the forwarding edge proved it, or a 403.
    let proven = {
        let ctx = ctx.clone();
        warp::header::optional::<String>(crate::peer::PEER_HEADER)
            .and(warp::header::optional::<String>("authorization"))
            .and_then(
                move |proof: Option<String>, authorization: Option<String>| {
                    let ctx = ctx.clone();
                    async move {
                        let access = ctx
                            .peers
                            .as_ref()
                            .and_then(|p| p.verify(proof.as_deref(), crate::token::unix_now()));
                        match access {
                            Some(access) => Ok((
                                ctx,
                                crate::api::Caller {
                                    access,
                                    authorization,
                                },
                            )),
                            None => {
                                ctx.metrics.peer_refused.inc();
                                Err(warp::reject::custom(PeerRefused))
                            }
                        }
                    }
                },
            )
            .untuple_one()
    };
    let create_invite = warp::post()
        .and(warp::path!("peer" / "api" / "v1" / "invites"))
        .and(proven.clone())
        .and(warp::body::stream())
        .then(
            |ctx: Arc<Context>, caller: crate::api::Caller, body| async move {
                crate::api::create_invite(&ctx, caller, body, false).await
            },
        );
    let revoke_invite = warp::delete()
        .and(warp::path!("peer" / "api" / "v1" / "invites" / String))
        .and(proven)
        .then(
            |jti: String, ctx: Arc<Context>, caller: crate::api::Caller| async move {
                crate::api::revoke_invite(&ctx, caller, jti, false).await
            },
        );
    let api = create_invite
        .or(revoke_invite)
        .unify()
        .map(|r| Box::new(r) as Box<dyn warp::Reply>);
    let ws = warp::path(crate::peer::PEER_PATH)
        .and(warp::path::end())
        .and(warp::ws())
        .and(warp::header::optional::<String>(crate::peer::PEER_HEADER))
        .map(move |ws: warp::ws::Ws, proof: Option<String>| {
            let ctx = ctx.clone();
            let access = ctx
                .peers
                .as_ref()
                .and_then(|p| p.verify(proof.as_deref(), crate::token::unix_now()));
            match access {
                Some(access) => {
                    let reply = ws
                        .max_message_size(WS_HARD_LIMIT)
                        .max_frame_size(WS_HARD_LIMIT)
                        .max_write_buffer_size(WS_MAX_WRITE_BUFFER)
                        .on_upgrade(move |socket| {
                            crate::session::run_passed_on(socket, ctx, access)
                        });
                    Box::new(reply) as Box<dyn warp::Reply>
                }
                None => {
                    ctx.metrics.peer_refused.inc();
                    Box::new(text(StatusCode::FORBIDDEN, "forbidden")) as Box<dyn warp::Reply>
                }
            }
        });
    ws.or(api)
        .unify()
        .recover(|rejection: warp::Rejection| async move {
            let reply = if rejection.find::<PeerRefused>().is_some() {
                text(StatusCode::FORBIDDEN, "forbidden")
            } else {
                text(StatusCode::NOT_FOUND, "not found")
            };
            Ok::<_, Infallible>(Box::new(reply) as Box<dyn warp::Reply>)
        })
        .unify()
}

/// A peer-port request without a valid proof.
#[derive(Debug)]
struct PeerRefused;

impl warp::reject::Reject for PeerRefused {}

fn text(status: StatusCode, body: &'static str) -> Response<&'static [u8]> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .body(body.as_bytes())
        .unwrap_or_else(|_| Response::new(&b""[..]))
}

/// Serve one embedded file. `/` is the landing page, `/c` the join page
/// (the token stays in the fragment, which never reaches the server), `/test`
/// the test-your-setup page (no link needed: an anonymous `probe`).
fn asset(dir: &'static include_dir::Dir<'static>, path: &str) -> Response<&'static [u8]> {
    let relative = match path {
        "/" => "landing.html",
        "/c" | "/c/" => "index.html",
        "/test" | "/test/" => "test.html",
        p => p.trim_start_matches('/'),
    };
    if relative.is_empty() || relative.split('/').any(|seg| seg.is_empty() || seg == "..") {
        return text(StatusCode::NOT_FOUND, "not found");
    }
    let Some(file) = dir.get_file(relative) else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    let content_type = content_type(relative);
    // Pages must never be cached (they are small, and a stale page could
    // talk an old protocol); other assets are revalidated on every load.
    let cache = if content_type.starts_with("text/html") {
        "no-store"
    } else {
        "no-cache"
    };
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, cache)
        .body(file.contents())
        .unwrap_or_else(|_| Response::new(&b""[..]))
}

pub fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "ico" => "image/x-icon",
        "webp" => "image/webp",
        "txt" => "text/plain; charset=utf-8",
        "woff2" => "font/woff2",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_match_the_ui_contract() {
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(
            content_type("e2ee/worker.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("style.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("logo.svg"), "image/svg+xml");
        assert_eq!(content_type("i18n/nl.json"), "application/json");
        assert_eq!(content_type("icon.png"), "image/png");
        assert_eq!(content_type("README"), "application/octet-stream");
    }
}
