//! Starting and stopping the edge: bind, start the media plane, serve HTTP
//! and WebSockets, and shut down in order (not ready → participants told →
//! media plane stopped → HTTP stopped).

use crate::audit::AuditLog;
use crate::context::{Context, ServeConfig};
use crate::directory::Directory;
use crate::gate::ConnectionGate;
use crate::media::Media;
use crate::metrics::Metrics;
use crate::rate::IpLimiter;
use crate::token::TokenVerifier;
use sfu::SfuHandle;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the JWKS is fetched without being asked.
const JWKS_REFRESH: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub enum ServeError {
    Bind(SocketAddr, std::io::Error),
    Media(std::io::Error),
    AuditLog(std::io::Error),
    Metrics(prometheus::Error),
    Jwks(String),
    /// A cluster edge's peer address is unusable.
    Peer(String),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            ServeError::Media(e) => write!(f, "cannot start the media plane: {e}"),
            ServeError::AuditLog(e) => write!(f, "cannot open the audit log: {e}"),
            ServeError::Metrics(e) => write!(f, "cannot set up metrics: {e}"),
            ServeError::Jwks(e) => write!(f, "--jwks-url: {e}"),
            ServeError::Peer(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ServeError {}

/// A running edge + media plane.
pub struct Server {
    addr: SocketAddr,
    ctx: Arc<Context>,
    shutdown_tx: watch::Sender<bool>,
    http_stop: watch::Sender<bool>,
    http_task: JoinHandle<()>,
    sweeper: JoinHandle<()>,
    shutdown_grace: Duration,
    /// A cluster edge: the peer port and the directory heartbeat (stopping
    /// it deregisters the edge, so no new room comes here).
    peer_task: Option<JoinHandle<()>>,
    heartbeat: Option<(watch::Sender<bool>, JoinHandle<()>, JoinHandle<()>)>,
    /// `--metrics-listen`: where `/metrics` is served instead.
    metrics_addr: Option<SocketAddr>,
    metrics_task: Option<JoinHandle<()>>,
}

/// Bind and start everything. Returns once the listener is bound, so the
/// caller (or a test) can connect to [`Server::local_addr`] at once.
pub async fn serve(config: ServeConfig) -> Result<Server, ServeError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServeError::Bind(config.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Bind(config.listen, e))?;
    let jwks = config
        .jwks_url
        .as_deref()
        .map(|url| {
            crate::jwks::JwksSource::new(url, config.jwks_min_refresh)
                .map(|source| source.with_fetch(config.jwks_fetch.clone()))
        })
        .transpose()
        .map_err(ServeError::Jwks)?;
    let audit = Arc::new(
        AuditLog::open(&config.audit)
            .map_err(ServeError::AuditLog)?
            .with_failure_rate(config.audit_failures_per_second),
    );
    let metrics = Arc::new(Metrics::new().map_err(ServeError::Metrics)?);
    let (sink, events) = tokio::sync::mpsc::unbounded_channel();
    let (media, sfu) = match &config.cluster {
        Some(cluster) => {
            let plane = crate::remote::RemotePlane::start(
                cluster.registry.clone(),
                cluster.link_secret.clone(),
                sink,
                metrics.clone(),
            );
            (Media::new(Arc::new(plane), events), None)
        }
        None => {
            let sfu = SfuHandle::start(config.sfu.clone(), sink).map_err(ServeError::Media)?;
            (Media::new(Arc::new(sfu.clone()), events), Some(sfu))
        }
    };
    // A cluster edge's peer port: bound now, so a busy port fails the start.
    let peer = match &config.cluster {
        Some(cluster) => {
            let listener = tokio::net::TcpListener::bind(cluster.peer_listen)
                .await
                .map_err(|e| ServeError::Bind(cluster.peer_listen, e))?;
            let bound = listener
                .local_addr()
                .map_err(|e| ServeError::Bind(cluster.peer_listen, e))?;
            let advertise = cluster.peer_advertise.unwrap_or(bound);
            if advertise.ip().is_unspecified() || advertise.port() == 0 {
                return Err(ServeError::Peer(format!(
                    "--peer-listen {bound} is not an address other edges can reach: give --peer-advertise IP:PORT"
                )));
            }
            let peers = crate::peer::Peers::new(
                cluster.edges.clone(),
                cluster.edge_id.clone(),
                advertise,
                &cluster.link_secret,
                cluster.ttl,
                metrics.clone(),
            );
            Some((listener, Arc::new(peers)))
        }
        None => None,
    };
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| ServeError::Bind(addr, e))?,
        ),
        None => None,
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let limits = config.connections;
    let open_files = crate::gate::open_file_limit();
    let max_total = limits
        .max_total
        .unwrap_or_else(|| crate::gate::default_max_total(open_files));
    let connection_gate =
        ConnectionGate::new(max_total, limits.max_per_ip, config.trusted_proxies.clone());
    log::info!(
        "HTTP connections: at most {max_total} in total, {} per address, request head within {}s (open-file limit {})",
        limits.max_per_ip,
        limits.header_timeout.as_secs_f64(),
        open_files.map_or_else(|| "unknown".to_string(), |n| n.to_string()),
    );
    if let Some(n) = open_files
        && max_total as u64 > n
    {
        log::warn!("--max-connections {max_total} is above the open-file limit {n}");
    }
    let mut directory = Directory::new(
        media.clone(),
        config.policy,
        config.limits,
        metrics.clone(),
        audit.clone(),
        &config.invite_secret,
    );
    if let Some(store) = &config.room_store {
        directory = directory.with_room_writer(crate::roomstore::RoomWriter::start(
            store.clone(),
            metrics.clone(),
        ));
    }
    let anonymous_probes = crate::probe::AnonymousProbes::new(
        config.anonymous_probes,
        metrics.anonymous_checks.clone(),
    );
    let ctx = Arc::new(Context {
        directory,
        verifier: TokenVerifier::new(config.keys, config.issuer, config.audience),
        metrics,
        audit,
        media,
        sfu,
        limits: config.limits,
        join_timeout: config.join_timeout,
        assets: config.assets,
        shutdown: shutdown_rx,
        ready: AtomicBool::new(true),
        resume: crate::resume::ResumeKeys::new(&config.invite_secret, config.resume_ttl),
        invite_secret: config.invite_secret,
        invite_ttl: config.invite_ttl,
        jwks,
        trusted_proxies: config.trusted_proxies,
        public_url: config
            .public_url
            .map(|u| u.trim_end_matches('/').to_string())
            .unwrap_or_else(|| format!("http://{}", crate::config::default_public_host(addr))),
        api_limiter: IpLimiter::new(crate::api::API_REQUESTS_PER_MINUTE, crate::api::API_BURST),
        probe_limiter: IpLimiter::new(crate::probe::PROBES_PER_MINUTE, crate::probe::PROBE_BURST),
        anonymous_probes,
        join_failures: IpLimiter::new(
            crate::context::JOIN_FAILURES_PER_MINUTE,
            config.join_failure_burst,
        ),
        ws_heartbeat: config.ws_heartbeat,
        ws_idle_timeout: config.ws_idle_timeout,
        connection_gate,
        metrics_on_main_port: config.metrics_listen.is_none(),
        peers: peer.as_ref().map(|(_, p)| p.clone()),
        room_store: config.room_store,
        turn: config.turn,
        check_limiter: IpLimiter::new(
            crate::link_check::CHECKS_PER_MINUTE,
            crate::link_check::CHECK_BURST,
        ),
        contact: config.contact,
    });
    // The first fetch happens before we accept joins; a failure is not
    // fatal (the EHR may be down), the keys are fetched again on demand.
    ctx.refresh_jwks().await;

    let (http_stop, stopped) = watch::channel(false);
    let http_task = tokio::spawn(crate::listener::run(
        listener,
        ctx.clone(),
        limits.header_timeout,
        stopped,
    ));
    let sweeper = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            let mut last_jwks = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                ctx.directory.sweep();
                ctx.audit.flush_suppressed();
                // Pick up rotated EHR keys even before a token needs them.
                if last_jwks.elapsed() >= JWKS_REFRESH {
                    last_jwks = tokio::time::Instant::now();
                    ctx.refresh_jwks().await;
                }
            }
        })
    };
    let (peer_task, heartbeat) = match (peer, &config.cluster) {
        (Some((listener, peers)), Some(cluster)) => {
            // Other edges are few and proven by HMAC; the cap only bounds
            // strangers who reach the port.
            let gate = ConnectionGate::new(max_total, max_total, Vec::new());
            let task = tokio::spawn(crate::listener::serve(
                listener,
                crate::http::peer_routes(ctx.clone()),
                gate,
                ctx.metrics.clone(),
                limits.header_timeout,
                http_stop.subscribe(),
            ));
            let (stop_tx, stop_rx) = watch::channel(false);
            let beat = {
                let ctx = ctx.clone();
                let peers = peers.clone();
                tokio::spawn(crate::registry::run_heartbeat(
                    cluster.edges.clone(),
                    move || {
                        let load = u32::try_from(ctx.metrics.participants.get()).unwrap_or(0);
                        let consults = u32::try_from(ctx.metrics.consults.get()).unwrap_or(0);
                        peers.entry(load, consults, !ctx.ready.load(Ordering::SeqCst))
                    },
                    cluster.ttl / 3,
                    cluster.ttl,
                    stop_rx,
                ))
            };
            // The rooms this edge holds stay placed here even if the
            // directory lost them (Redis restarted empty, a missed beat):
            // re-claimed every ttl, so a join through another edge finds
            // them here instead of opening a second room elsewhere.
            let reclaim = {
                let ctx = ctx.clone();
                let peers = peers.clone();
                let every = cluster.ttl;
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        for consult in ctx.directory.occupied_consults() {
                            match peers.edges.claim(&consult, &peers.id).await {
                                Ok(holder) if holder != peers.id => {
                                    ctx.metrics.peer_split_rooms.inc();
                                    log::warn!(
                                        "edge {}: a room held here is placed on edge {holder} (split room)",
                                        peers.id
                                    );
                                }
                                Ok(_) => {}
                                // Not registered yet, or the directory is
                                // down: the next tick tries again.
                                Err(_) => break,
                            }
                        }
                    }
                })
            };
            log::info!(
                "edge {}: peer port {}, reached at {}",
                peers.id,
                cluster.peer_listen,
                peers.advertise
            );
            (Some(task), Some((stop_tx, beat, reclaim)))
        }
        _ => (None, None),
    };
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let metrics_task = metrics_listener.map(|listener| {
        // Scrapers are few; the cap only bounds strangers.
        let gate = ConnectionGate::new(64, 64, Vec::new());
        tokio::spawn(crate::listener::serve(
            listener,
            crate::http::metrics_routes(ctx.clone()),
            gate,
            ctx.metrics.clone(),
            limits.header_timeout,
            http_stop.subscribe(),
        ))
    });
    if let Some(a) = metrics_addr {
        log::info!("/metrics on {a} only");
    }
    log::info!("listening on {addr}");
    Ok(Server {
        addr,
        ctx,
        shutdown_tx,
        http_stop,
        http_task,
        sweeper,
        shutdown_grace: config.shutdown_grace,
        peer_task,
        heartbeat,
        metrics_addr,
        metrics_task,
    })
}

impl Server {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `--metrics-listen` address, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// A cluster edge's peer address (as other edges reach it).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.ctx.peers.as_ref().map(|p| p.advertise)
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// The media plane's sockets (for logs and tests).
    pub fn media_addrs(&self) -> (Vec<SocketAddr>, Option<SocketAddr>) {
        match &self.ctx.sfu {
            Some(sfu) => (sfu.udp_addrs(), sfu.tcp_addr()),
            None => (Vec::new(), None),
        }
    }

    /// Stop taking consults: `/readyz` answers 503 and new joins are refused
    /// with `shutting_down`. Connected participants stay until [`shutdown`].
    ///
    /// [`shutdown`]: Server::shutdown
    pub fn drain(&self) {
        self.ctx.ready.store(false, Ordering::SeqCst);
        self.ctx.directory.drain();
    }

    /// Graceful stop: drain, tell every participant `bye{shutdown}` and close
    /// their sockets, stop the media plane, stop HTTP.
    pub async fn shutdown(mut self) {
        self.drain();
        // Leave the edge directory first: rooms of this edge move to the
        // edge each reconnecting browser reaches.
        if let Some((stop, beat, reclaim)) = self.heartbeat.take() {
            reclaim.abort();
            let _ = stop.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(2), beat).await;
        }
        let _ = self.shutdown_tx.send(true);
        let deadline = tokio::time::Instant::now() + self.shutdown_grace;
        // Sessions close on their own once told; this only bounds the wait.
        while self.ctx.metrics.connections.get() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(sfu) = self.ctx.sfu.clone() {
            let _ = tokio::task::spawn_blocking(move || sfu.shutdown()).await;
        }
        self.sweeper.abort();
        let _ = self.http_stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.http_task).await;
        for task in [self.peer_task.take(), self.metrics_task.take()]
            .into_iter()
            .flatten()
        {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        log::info!("stopped");
    }
}
