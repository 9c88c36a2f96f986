//! `spreekkamer sfu`: a media node of a cluster.
//!
//! The node runs the media plane ([`sfu::SfuHandle`]) and nothing else of a
//! consult: no tokens, no names, no roster. Edges reach it over the
//! authenticated link (`link.rs`); each link's commands go to the media
//! plane, and each participant's events go back on the link that joined
//! them. A link can only steer the participants it joined, and when a link
//! goes, its participants leave the media plane (their edge, or the one
//! they reconnect to, joins them again).
//!
//! The node registers itself in the directory (`registry`) with a heartbeat
//! that expires: id, announce and link addresses, capacity and load. On
//! SIGTERM it drains: reports not-ready (`/readyz` 503, `draining` in the
//! directory), takes no new consults, keeps the running ones until they end
//! or the drain timeout passes, then deregisters and exits.

use crate::link::{self, LinkSecret, ToEdge, ToNode};
use crate::registry::{NodeInfo, Registry};
use sfu::{
    ConsultId, MediaCommand, MediaEnvelope, MediaEvent, ParticipantId, SfuConfig, SfuHandle,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Links (edges) one node serves at once.
pub const MAX_LINKS: usize = 256;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: String,
    pub sfu: SfuConfig,
    pub link_listen: SocketAddr,
    pub link_secret: LinkSecret,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub http_listen: SocketAddr,
    /// Participants this node takes before the directory stops placing
    /// consults on it.
    pub capacity: u32,
    /// The directory forgets the node this long after its last heartbeat.
    pub ttl: Duration,
    pub drain_timeout: Duration,
}

type LinkId = u64;

#[derive(Default)]
struct Table {
    /// Which link joined which participant.
    owners: HashMap<(ConsultId, ParticipantId), LinkId>,
    links: HashMap<LinkId, mpsc::UnboundedSender<ToEdge>>,
}

impl Table {
    /// Participants of consults (connectivity checks left out: they last a
    /// few seconds, and counted as load they made a node that had just
    /// checked two browsers look as busy as one running a call).
    fn participants(&self) -> usize {
        self.owners
            .keys()
            .filter(|(c, _)| !crate::token::is_probe_consult(c))
            .count()
    }

    fn consults(&self) -> usize {
        let mut ids: Vec<&ConsultId> = self
            .owners
            .keys()
            .map(|(c, _)| c)
            .filter(|c| !crate::token::is_probe_consult(c))
            .collect();
        ids.sort();
        ids.dedup();
        ids.len()
    }

    fn holds_consult(&self, consult: &str) -> bool {
        self.owners.keys().any(|(c, _)| c == consult)
    }
}

struct Node {
    config: NodeConfig,
    sfu: SfuHandle,
    registry: Arc<dyn Registry>,
    table: Mutex<Table>,
    draining: AtomicBool,
    next_link: AtomicU64,
    links_refused: AtomicU64,
    link_auth_failures: AtomicU64,
}

impl Node {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn info(&self) -> NodeInfo {
        let t = self.table();
        NodeInfo {
            id: self.config.id.clone(),
            announce_ip: self.config.sfu.announce_ip,
            link_addr: self.config.link_listen,
            capacity: self.config.capacity,
            load: u32::try_from(t.participants()).unwrap_or(u32::MAX),
            consults: u32::try_from(t.consults()).unwrap_or(u32::MAX),
            draining: self.draining.load(Ordering::Relaxed),
        }
    }

    /// A command from link `link`. Only `Join` creates ownership; every
    /// other command must name a participant this link joined.
    fn command(self: &Arc<Self>, link: LinkId, command: MediaCommand) {
        let (consult, participant) = command.target();
        let key = (consult.to_string(), participant.to_string());
        let mut t = self.table();
        match &command {
            MediaCommand::Join { .. } => {
                let known = t.holds_consult(consult);
                // Draining: no new consults. Full: nobody new at all.
                let full =
                    t.owners.len() >= self.config.capacity as usize && !t.owners.contains_key(&key);
                let refusal = ((self.draining.load(Ordering::Relaxed) && !known) || full)
                    .then_some("service_unavailable");
                if let Some(code) = refusal {
                    if let Some(tx) = t.links.get(&link) {
                        let _ = tx.send(ToEdge::Event {
                            envelope: MediaEnvelope {
                                consult: key.0,
                                participant: key.1,
                                event: MediaEvent::Error {
                                    code: code.into(),
                                    message: "this media node takes no new consults".into(),
                                },
                            },
                        });
                    }
                    return;
                }
                t.owners.insert(key, link);
            }
            MediaCommand::Leave { .. } => {
                if t.owners.get(&key) != Some(&link) {
                    return;
                }
                t.owners.remove(&key);
                if !t.holds_consult(consult) {
                    self.release(consult.to_string());
                }
            }
            _ => {
                if t.owners.get(&key) != Some(&link) {
                    log::debug!("link {link}: command for a participant it did not join");
                    return;
                }
            }
        }
        drop(t);
        self.sfu.send(command);
    }

    /// The consult has nobody left here: let the directory forget where it
    /// was (only if it still points here).
    fn release(self: &Arc<Self>, consult: ConsultId) {
        let node = self.clone();
        tokio::spawn(async move {
            if let Err(e) = node.registry.release(&consult, &node.config.id).await {
                log::info!("releasing a consult's placement failed: {e}");
            }
        });
    }

    /// The link is gone: its participants leave the media plane.
    fn link_closed(self: &Arc<Self>, link: LinkId) {
        let mut t = self.table();
        t.links.remove(&link);
        let gone: Vec<(ConsultId, ParticipantId)> = t
            .owners
            .iter()
            .filter(|(_, l)| **l == link)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &gone {
            t.owners.remove(key);
        }
        let mut emptied: Vec<ConsultId> = gone
            .iter()
            .map(|(c, _)| c.clone())
            .filter(|c| !t.holds_consult(c))
            .collect();
        emptied.sort();
        emptied.dedup();
        drop(t);
        for (consult, participant) in gone {
            self.sfu.send(MediaCommand::Leave {
                consult,
                participant,
            });
        }
        for consult in emptied {
            self.release(consult);
        }
    }

    fn route(&self, envelope: MediaEnvelope) {
        let t = self.table();
        let key = (envelope.consult.clone(), envelope.participant.clone());
        if let Some(tx) = t.owners.get(&key).and_then(|l| t.links.get(l)) {
            let _ = tx.send(ToEdge::Event { envelope });
        }
    }

    fn metrics(&self) -> String {
        let info = self.info();
        let links = self.table().links.len();
        let stats = self.sfu.stats();
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, v: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{node=\"{}\"}} {v}\n",
                self.config.id
            ));
        };
        gauge(
            "spreekkamer_node_participants",
            "Participants on this media node.",
            u64::from(info.load),
        );
        gauge(
            "spreekkamer_node_consults",
            "Consults on this media node.",
            u64::from(info.consults),
        );
        gauge(
            "spreekkamer_node_capacity",
            "Participants this node takes.",
            u64::from(info.capacity),
        );
        gauge(
            "spreekkamer_node_load_ratio_percent",
            "Participants as a percentage of capacity.",
            u64::from(info.load) * 100 / u64::from(info.capacity.max(1)),
        );
        gauge(
            "spreekkamer_node_draining",
            "1 while the node drains.",
            u64::from(info.draining),
        );
        gauge(
            "spreekkamer_node_links",
            "Edges linked to this node.",
            links as u64,
        );
        gauge(
            "spreekkamer_media_peers",
            "Peer connections in the media plane.",
            stats.peers,
        );
        let counter = |name: &str, help: &str, v: u64| {
            format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n")
        };
        out.push_str(&counter(
            "spreekkamer_node_links_refused_total",
            "Link connections refused (over the cap).",
            self.links_refused.load(Ordering::Relaxed),
        ));
        out.push_str(&counter(
            "spreekkamer_node_link_auth_failures_total",
            "Link connections that failed the handshake (wrong secret, not our protocol).",
            self.link_auth_failures.load(Ordering::Relaxed),
        ));
        out.push_str(&self.sfu.quality_stats().prometheus_text());
        out.push_str(&self.sfu.limit_stats().prometheus_text());
        out
    }
}

/// Why a node could not start.
#[derive(Debug)]
pub enum NodeError {
    Media(std::io::Error),
    Bind(SocketAddr, std::io::Error),
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeError::Media(e) => write!(f, "cannot start the media plane: {e}"),
            NodeError::Bind(a, e) => write!(f, "cannot listen on {a}: {e}"),
        }
    }
}

impl std::error::Error for NodeError {}

/// A running node. [`RunningNode::drain`] starts the orderly stop.
pub struct RunningNode {
    node: Arc<Node>,
    link_addr: SocketAddr,
    http_addr: SocketAddr,
    stop_heartbeat: watch::Sender<bool>,
    heartbeat: tokio::task::JoinHandle<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Start a node: media plane, link listener, HTTP, heartbeat.
pub async fn start(
    config: NodeConfig,
    registry: Arc<dyn Registry>,
) -> Result<RunningNode, NodeError> {
    let (sink, mut events) = mpsc::unbounded_channel();
    let sfu = SfuHandle::start(config.sfu.clone(), sink).map_err(NodeError::Media)?;
    let links = tokio::net::TcpListener::bind(config.link_listen)
        .await
        .map_err(|e| NodeError::Bind(config.link_listen, e))?;
    let link_addr = links
        .local_addr()
        .map_err(|e| NodeError::Bind(config.link_listen, e))?;
    let http = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(|e| NodeError::Bind(config.http_listen, e))?;
    let http_addr = http
        .local_addr()
        .map_err(|e| NodeError::Bind(config.http_listen, e))?;
    let mut config = config;
    config.link_listen = link_addr;
    let node = Arc::new(Node {
        config,
        sfu,
        registry: registry.clone(),
        table: Mutex::new(Table::default()),
        draining: AtomicBool::new(false),
        next_link: AtomicU64::new(1),
        links_refused: AtomicU64::new(0),
        link_auth_failures: AtomicU64::new(0),
    });
    let mut tasks = Vec::new();
    // Events: media plane → the link that joined the participant.
    let n = node.clone();
    tasks.push(tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            n.route(e);
        }
    }));
    let n = node.clone();
    tasks.push(tokio::spawn(accept_links(n, links)));
    let n = node.clone();
    tasks.push(tokio::spawn(serve_http(n, http)));
    let (stop_heartbeat, stop) = watch::channel(false);
    let n = node.clone();
    let ttl = node.config.ttl;
    let heartbeat = tokio::spawn(crate::registry::run_heartbeat(
        registry,
        move || n.info(),
        (ttl / 3).max(Duration::from_millis(100)),
        ttl,
        stop,
    ));
    log::info!(
        "media node {}: link {link_addr}, http {http_addr}, announce {}, capacity {}",
        node.config.id,
        node.config.sfu.announce_ip,
        node.config.capacity
    );
    Ok(RunningNode {
        node,
        link_addr,
        http_addr,
        stop_heartbeat,
        heartbeat,
        tasks,
    })
}

async fn accept_links(node: Arc<Node>, listener: tokio::net::TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                log::warn!("link accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if node.table().links.len() >= MAX_LINKS {
            node.links_refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let node = node.clone();
        tokio::spawn(async move {
            let (mut tx, mut rx) =
                match link::accept(stream, &node.config.link_secret, &node.config.id).await {
                    Ok(halves) => halves,
                    Err(e) => {
                        node.link_auth_failures.fetch_add(1, Ordering::Relaxed);
                        log::warn!("link refused: {e}");
                        return;
                    }
                };
            let id = node.next_link.fetch_add(1, Ordering::Relaxed);
            let (out, mut outbox) = mpsc::unbounded_channel();
            if node.draining.load(Ordering::Relaxed) {
                let _ = out.send(ToEdge::Draining);
            }
            node.table().links.insert(id, out.clone());
            log::info!("link {id}: edge connected");
            let writer = tokio::spawn(async move {
                while let Some(m) = outbox.recv().await {
                    if tx.send(&m).await.is_err() {
                        break;
                    }
                }
            });
            loop {
                // An edge pings every few seconds; silence means it is gone.
                match tokio::time::timeout(crate::remote::LINK_IDLE, rx.recv()).await {
                    Ok(Ok(Some(ToNode::Command { command }))) => node.command(id, command),
                    Ok(Ok(Some(ToNode::Ping))) => {
                        let _ = out.send(ToEdge::Pong);
                    }
                    Ok(Ok(None)) => break,
                    Ok(Err(e)) => {
                        log::warn!("link {id}: {e}");
                        break;
                    }
                    Err(_) => {
                        log::warn!("link {id}: edge silent, closing");
                        break;
                    }
                }
            }
            writer.abort();
            node.link_closed(id);
            log::info!("link {id}: closed");
        });
    }
}

async fn serve_http(node: Arc<Node>, listener: tokio::net::TcpListener) {
    use warp::Filter;
    let n = node.clone();
    let healthz = warp::path!("healthz").map(|| "ok".to_string());
    let readyz = warp::path!("readyz").map(move || {
        if n.draining.load(Ordering::Relaxed) {
            warp::reply::with_status(
                "draining".to_string(),
                warp::http::StatusCode::SERVICE_UNAVAILABLE,
            )
        } else {
            warp::reply::with_status("ready".to_string(), warp::http::StatusCode::OK)
        }
    });
    let n = node.clone();
    let metrics = warp::path!("metrics").map(move || {
        warp::reply::with_header(n.metrics(), "content-type", "text/plain; version=0.0.4")
    });
    let routes = warp::get().and(healthz.or(readyz).or(metrics));
    warp::serve(routes).incoming(listener).run().await;
}

impl RunningNode {
    pub fn link_addr(&self) -> SocketAddr {
        self.link_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Participants on this node now.
    pub fn load(&self) -> u32 {
        self.node.info().load
    }

    /// Drain and stop: not ready, no new consults, wait for the running
    /// ones to end (or `drain_timeout`), deregister, stop the media plane.
    pub async fn drain(self) {
        let node = &self.node;
        node.draining.store(true, Ordering::SeqCst);
        let links: Vec<_> = node.table().links.values().cloned().collect();
        for l in links {
            let _ = l.send(ToEdge::Draining);
        }
        log::info!(
            "draining: {} participants in {} consults; waiting up to {}s",
            node.info().load,
            node.info().consults,
            node.config.drain_timeout.as_secs()
        );
        let deadline = tokio::time::Instant::now() + node.config.drain_timeout;
        while node.info().load > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if node.info().load > 0 {
            log::warn!(
                "drain timeout: stopping with {} participants still here",
                node.info().load
            );
        }
        let _ = self.stop_heartbeat.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), self.heartbeat).await;
        for t in self.tasks {
            t.abort();
        }
        let sfu = node.sfu.clone();
        let _ = tokio::task::spawn_blocking(move || sfu.shutdown()).await;
        log::info!("media node stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connectivity_checks_are_not_load() {
        let mut t = Table::default();
        let probe = format!("{}0a1b2c", crate::token::PROBE_CONSULT_PREFIX);
        t.owners.insert((probe.clone(), "p1".into()), 1);
        t.owners.insert((probe, "p2".into()), 1);
        assert_eq!((t.participants(), t.consults()), (0, 0));
        t.owners.insert(("consult-a".into(), "c1".into()), 1);
        t.owners.insert(("consult-a".into(), "c2".into()), 1);
        assert_eq!((t.participants(), t.consults()), (2, 1));
    }
}
