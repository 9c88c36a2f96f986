//! What every request and session shares ([`Context`]), what `serve`
//! is started with ([`ServeConfig`]), and the one way every entrance
//! verifies a join token ([`Context::verify_token`]).

use crate::audit::{AccessPoint, AuditEvent, AuditLog, AuditSink};
use crate::consult::ConsultPolicy;
use crate::directory::Directory;
use crate::gate::{ConnectionGate, ConnectionLimits};
use crate::media::Media;
use crate::metrics::Metrics;
use crate::protocol::{ErrorCode, Limits};
use crate::rate::IpLimiter;
use crate::token::{TokenVerifier, VerifyKey};
use include_dir::Dir;
use sfu::{SfuConfig, SfuHandle};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio::sync::watch;

/// Failed joins (bad or expired tokens, wrong version) per client address;
/// past the burst further joins from it are refused with `rate_limited`
/// without looking at the token. Successful joins are never counted, so a
/// hospital behind one address is not held back by its own traffic.
pub const JOIN_FAILURES_PER_MINUTE: u32 = 30;
pub const JOIN_FAILURE_BURST: u32 = 20;

/// The web client, embedded at build time so one file deploys.
pub static WEB_ASSETS: Dir<'static> = include_dir::include_dir!("$CARGO_MANIFEST_DIR/../web");

/// Everything `serve` needs; built from the command line in `config.rs`.
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub keys: Vec<VerifyKey>,
    pub issuer: String,
    pub audience: String,
    pub sfu: SfuConfig,
    pub policy: ConsultPolicy,
    pub limits: Limits,
    pub join_timeout: Duration,
    /// Failed joins per client address before `rate_limited`.
    pub join_failure_burst: u32,
    /// Audit failure lines per source address per second.
    pub audit_failures_per_second: u32,
    pub audit: AuditSink,
    pub assets: &'static Dir<'static>,
    /// How long shutdown waits for participants to be told before it stops
    /// the media plane anyway.
    pub shutdown_grace: Duration,
    /// HS256 secret the server signs invites with (one of `keys` must
    /// verify them: the all-in-one secret does).
    pub invite_secret: Vec<u8>,
    /// Invite validity when the clinician does not choose one.
    pub invite_ttl: Duration,
    /// Lifetime of resume tickets (`resume.rs`, keyed from `invite_secret`).
    pub resume_ttl: Duration,
    /// The EHR's JWKS URL, if its keys are fetched rather than configured.
    pub jwks_url: Option<String>,
    /// How the JWKS URL is reached: trust anchors (`--jwks-ca-file`) and the
    /// egress proxy (`HTTPS_PROXY`, `NO_PROXY`, read once at start).
    pub jwks_fetch: crate::jwks::FetchConfig,
    /// Minimum time between two JWKS fetches (unknown `kid`s trigger one).
    pub jwks_min_refresh: Duration,
    /// Reverse proxies (addresses or ranges) whose `X-Forwarded-For` is
    /// believed for the client address (`client_addr.rs`).
    pub trusted_proxies: Vec<crate::client_addr::TrustedProxy>,
    /// Base URL of links the API returns (`None`: `http://` + the bound
    /// address).
    pub public_url: Option<String>,
    /// Connection caps and the header timeout of the HTTP port.
    pub connections: ConnectionLimits,
    /// A joined WebSocket quiet this long is pinged.
    pub ws_heartbeat: Duration,
    /// A joined WebSocket silent this long (no answer to the pings) is
    /// closed.
    pub ws_idle_timeout: Duration,
    /// Serve `/metrics` on this address instead of the main port.
    pub metrics_listen: Option<SocketAddr>,
    /// An edge of a cluster: media on the directory's nodes, not in this
    /// process (`None`: the all-in-one `serve`).
    pub cluster: Option<ClusterEdge>,
    /// The room state every edge shares (revocations, lock, removals;
    /// `roomstore`): set for a cluster edge (`spreekkamer signaling` builds
    /// it on the same Redis as the directory). `None` (the default, and
    /// `serve`): this process's memory is the only record.
    pub room_store: Option<Arc<dyn crate::roomstore::RoomStore>>,
    /// TURN servers and the secret for their credentials (`turn.rs`;
    /// `None`: browsers get no `ice_servers`).
    pub turn: Option<crate::turn::TurnConfig>,
    /// The care provider's contact line (`--contact`, validated by
    /// [`crate::config::parse_contact`]): in every `link-check` and
    /// `welcome`.
    pub contact: Option<String>,
    /// Bounds of connectivity checks without a token (the test page `/test`).
    pub anonymous_probes: crate::probe::AnonymousProbeLimits,
}

/// The directory and the link secret of a cluster edge.
#[derive(Clone)]
pub struct ClusterEdge {
    pub registry: Arc<dyn crate::registry::Registry>,
    pub link_secret: crate::link::LinkSecret,
    /// The edges' own directory (where each consult's room lives, `peer.rs`).
    pub edges: Arc<dyn crate::registry::Registry>,
    /// This edge's id in it.
    pub edge_id: String,
    /// Where other edges pass participants on to this one: bound here...
    pub peer_listen: SocketAddr,
    /// ... and reached there (`None`: `peer_listen`, which must then not be
    /// an unspecified address).
    pub peer_advertise: Option<SocketAddr>,
    /// The edge's directory entry expires this long after its last beat.
    pub ttl: Duration,
}

impl ServeConfig {
    /// Defaults for an all-in-one server on `listen` with an HS256 secret.
    pub fn new(listen: SocketAddr, jwt_secret: &[u8]) -> ServeConfig {
        let limits = Limits::default();
        ServeConfig {
            listen,
            keys: vec![VerifyKey::hs256(jwt_secret)],
            issuer: "spreekkamer".into(),
            audience: "spreekkamer".into(),
            sfu: SfuConfig {
                bind_ip: listen.ip(),
                announce_ip: listen.ip(),
                udp_port: 0,
                tcp_port: Some(0),
                workers: 1,
                media_path: Default::default(),
            },
            policy: ConsultPolicy {
                max_participants: limits.max_participants,
                ..ConsultPolicy::default()
            },
            limits,
            join_timeout: Duration::from_secs(10),
            join_failure_burst: JOIN_FAILURE_BURST,
            audit_failures_per_second: crate::audit::FAILURES_PER_SECOND,
            audit: AuditSink::Stdout,
            assets: &WEB_ASSETS,
            shutdown_grace: Duration::from_secs(3),
            invite_secret: jwt_secret.to_vec(),
            invite_ttl: Duration::from_secs(4 * 3600),
            resume_ttl: crate::resume::DEFAULT_TTL,
            jwks_url: None,
            jwks_fetch: crate::jwks::FetchConfig::default(),
            jwks_min_refresh: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            public_url: None,
            connections: ConnectionLimits::default(),
            ws_heartbeat: Duration::from_secs(20),
            ws_idle_timeout: Duration::from_secs(60),
            metrics_listen: None,
            cluster: None,
            room_store: None,
            turn: None,
            contact: None,
            anonymous_probes: crate::probe::AnonymousProbeLimits::default(),
        }
    }
}

/// Shared by every request and session.
pub struct Context {
    pub directory: Directory,
    pub verifier: TokenVerifier,
    pub metrics: Arc<Metrics>,
    pub audit: Arc<AuditLog>,
    /// The seam to the media plane (commands out, events routed back).
    pub media: Arc<Media>,
    /// The in-process media plane, when this process runs one (`serve`):
    /// its counters go on `/metrics`.
    pub sfu: Option<SfuHandle>,
    pub limits: Limits,
    pub join_timeout: Duration,
    pub assets: &'static Dir<'static>,
    /// `true` once shutdown began: sessions say `bye` and close.
    pub shutdown: watch::Receiver<bool>,
    pub ready: AtomicBool,
    pub invite_secret: Vec<u8>,
    pub invite_ttl: Duration,
    /// Mints and checks resume tickets.
    pub resume: crate::resume::ResumeKeys,
    pub jwks: Option<crate::jwks::JwksSource>,
    pub trusted_proxies: Vec<crate::client_addr::TrustedProxy>,
    /// Base URL for links (no trailing slash).
    pub public_url: String,
    /// Per-IP limits of the HTTP API and of connectivity checks.
    pub api_limiter: IpLimiter,
    pub probe_limiter: IpLimiter,
    /// Connectivity checks without a token: per IP and in progress.
    pub anonymous_probes: crate::probe::AnonymousProbes,
    /// Failed joins per client IP (see `session.rs`).
    pub join_failures: IpLimiter,
    pub ws_heartbeat: Duration,
    pub ws_idle_timeout: Duration,
    /// Open HTTP connections under their caps.
    pub connection_gate: Arc<ConnectionGate>,
    /// `/metrics` is on the main port (false with `--metrics-listen`).
    pub metrics_on_main_port: bool,
    /// A cluster edge's place among the edges (`None`: `serve`).
    pub peers: Option<Arc<crate::peer::Peers>>,
    /// The shared room store of a cluster edge (see [`ServeConfig`]).
    pub room_store: Option<Arc<dyn crate::roomstore::RoomStore>>,
    /// TURN credentials for `welcome` and the connectivity check.
    pub turn: Option<crate::turn::TurnConfig>,
    /// Link checks per client IP (`link_check.rs`).
    pub check_limiter: IpLimiter,
    /// The care provider's contact line (see [`ServeConfig`]).
    pub contact: Option<String>,
}

impl Context {
    /// Verify a join token the way every entrance does (join, the HTTP API, the
    /// connectivity check): same keys, same claims checks, a JWKS refresh for an
    /// unknown `kid`, and a `token_accepted` / `token_rejected` audit line.
    pub async fn verify_token(
        &self,
        access: &AccessPoint,
        token: &str,
    ) -> Result<crate::token::Claims, ErrorCode> {
        let ctx = self;
        match ctx.verify_unaudited(token).await {
            Ok(claims) => {
                // The `jti` lets an EHR find its own launch token in the log; it
                // is an id, not the token.
                let mut event = AuditEvent::new("token_accepted", access.clone())
                    .actor(&claims.sub, claims.role)
                    .consult(&claims.consult)
                    .responsible(ctx.directory.responsible_clinician(&claims).as_deref());
                if let Some(jti) = &claims.jti {
                    event = event.detail(serde_json::json!({ "jti": jti }));
                }
                ctx.audit.record(event);
                Ok(claims)
            }
            Err(code) => {
                ctx.audit
                    .record(AuditEvent::new("token_rejected", access.clone()).failed(code));
                Err(code)
            }
        }
    }

    /// [`verify_token`](Context::verify_token) without its audit line: the
    /// same keys, claims checks and JWKS refresh. For the link check
    /// (`link_check.rs`), which audits its refusals under its own name and
    /// its successes not at all.
    pub async fn verify_unaudited(&self, token: &str) -> Result<crate::token::Claims, ErrorCode> {
        if self.jwks.is_some() && self.verifier.has_unknown_kid(token) {
            // Possibly a rotated EHR key (rate-limited inside).
            self.refresh_jwks().await;
        }
        self.verifier.verify(token, crate::token::unix_now())
    }

    /// What the shared room store says about a verified token (a cluster
    /// edge; `Ok(None)` without a store): revoked, its holder barred, the
    /// consult locked. A store that cannot be read within
    /// [`READ_BOUND`](crate::roomstore::READ_BOUND) refuses with
    /// `service_unavailable` (audited as `event`, counted): nobody gets in
    /// unchecked. The caller refuses a [`JoinView::refused`] token.
    ///
    /// [`JoinView::refused`]: crate::roomstore::JoinView::refused
    pub async fn room_check(
        &self,
        access: &AccessPoint,
        claims: &crate::token::Claims,
        event: &'static str,
    ) -> Result<Option<crate::roomstore::JoinView>, ErrorCode> {
        self.room_read(access, claims, event, true).await
    }

    /// [`room_check`](Context::room_check) for the link check: the same
    /// read and the same refusal when the store cannot be read, but it
    /// extends nothing in the store ([`RoomStore::peek_view`]).
    ///
    /// [`RoomStore::peek_view`]: crate::roomstore::RoomStore::peek_view
    pub async fn room_peek(
        &self,
        access: &AccessPoint,
        claims: &crate::token::Claims,
        event: &'static str,
    ) -> Result<Option<crate::roomstore::JoinView>, ErrorCode> {
        self.room_read(access, claims, event, false).await
    }

    async fn room_read(
        &self,
        access: &AccessPoint,
        claims: &crate::token::Claims,
        event: &'static str,
        extend: bool,
    ) -> Result<Option<crate::roomstore::JoinView>, ErrorCode> {
        let Some(store) = &self.room_store else {
            return Ok(None);
        };
        let (consult, sub, jti) = (&claims.consult, &claims.sub, claims.jti.as_deref());
        let now = crate::token::unix_now();
        let read = async {
            if extend {
                store.join_view(consult, sub, jti, claims.exp, now).await
            } else {
                store.peek_view(consult, sub, jti, now).await
            }
        };
        let error = match tokio::time::timeout(crate::roomstore::READ_BOUND, read).await {
            Ok(Ok(view)) => return Ok(Some(view)),
            Ok(Err(e)) => e,
            Err(_) => crate::roomstore::RoomStoreError::Unavailable("no answer".into()),
        };
        self.metrics.room_store_error("read", error.reason());
        log::warn!("room store: cannot check a token: {error}");
        self.audit.record(
            AuditEvent::new(event, access.clone())
                .actor(&claims.sub, claims.role)
                .consult(&claims.consult)
                .failed(ErrorCode::ServiceUnavailable),
        );
        Err(ErrorCode::ServiceUnavailable)
    }

    /// Fetch the JWKS (if configured and not fetched too recently) and
    /// install its keys. Failures are logged; the old keys stay.
    pub async fn refresh_jwks(&self) {
        let Some(jwks) = &self.jwks else {
            return;
        };
        match jwks.refresh().await {
            Ok(Some(keys)) => {
                log::info!(
                    "JWKS from {} ({}): {} keys",
                    jwks.url(),
                    jwks.route(),
                    keys.len()
                );
                self.verifier.set_remote_keys(keys);
            }
            Ok(None) => {}
            Err(e) => log::warn!("JWKS from {} ({}): {e}", jwks.url(), jwks.route()),
        }
    }
}
