//! The edge's media plane in a cluster: commands go to the media node the
//! directory placed the consult on, over the authenticated link; events come
//! back the same way.
//!
//! One task (the router) owns all state, so commands of a consult keep
//! their order whatever happens to placements and links:
//! * a consult's first command asks the directory where it lives
//!   ([`Registry::place`], atomic across edges); its commands wait in order
//!   until the answer and the link are there. If the directory is down or
//!   no node is alive, each waiting participant gets `service_unavailable`;
//! * one link per node, opened on demand, pinged every [`PING_EVERY`];
//! * when a link breaks, every consult on that node fails over: as long as
//!   the node is still registered the link is tried again; once its entry
//!   has expired (`--node-ttl`) the consult is moved to a live node
//!   ([`Registry::replace`], a compare-and-set, so every edge moves it to
//!   the same one). Either way each participant of the consult on this edge
//!   gets [`MediaEvent::Reset`] and is joined again, with their last
//!   preferences: no one is admitted again, the roster never changed.
//!
//! The router remembers only what it needs to re-join: the participants of
//! each consult on this edge and their last `Preferences`.

use crate::link::{self, LinkSecret, ToEdge, ToNode};
use crate::media::MediaPlane;
use crate::metrics::Metrics;
use crate::registry::{NodeInfo, Registry, RegistryError};
use sfu::{ConsultId, EventSink, MediaCommand, MediaEnvelope, MediaEvent, ParticipantId};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How often an edge pings each node, and how long either side waits in
/// silence before it counts the link as dead.
pub const PING_EVERY: Duration = Duration::from_secs(2);
pub const LINK_IDLE: Duration = Duration::from_secs(7);
/// How often a failing-over consult looks at the directory.
const FAILOVER_POLL: Duration = Duration::from_millis(250);

/// `MediaPlane` for an edge without media of its own.
pub struct RemotePlane {
    tx: mpsc::UnboundedSender<Msg>,
}

impl MediaPlane for RemotePlane {
    fn send(&self, command: MediaCommand) {
        let _ = self.tx.send(Msg::Command(command));
    }
}

impl RemotePlane {
    pub fn start(
        registry: Arc<dyn Registry>,
        secret: LinkSecret,
        sink: EventSink,
        metrics: Arc<Metrics>,
    ) -> RemotePlane {
        let (tx, rx) = mpsc::unbounded_channel();
        let router = Router {
            registry,
            secret,
            sink,
            metrics,
            tx: tx.clone(),
            consults: HashMap::new(),
            links: HashMap::new(),
            generation: 0,
            link_failures: HashMap::new(),
        };
        tokio::spawn(router.run(rx));
        RemotePlane { tx }
    }
}

enum Msg {
    Command(MediaCommand),
    Placed {
        consult: ConsultId,
        result: Result<NodeInfo, RegistryError>,
        /// The consult was moved off a dead node: everyone re-joins.
        moved: bool,
    },
    LinkUp {
        node: String,
        generation: u64,
        tx: mpsc::UnboundedSender<ToNode>,
    },
    LinkFailed {
        node: String,
        generation: u64,
    },
    FromNode {
        node: String,
        generation: u64,
        message: ToEdge,
    },
}

/// What a fresh media session needs again after its join.
#[derive(Default)]
struct Replay {
    preferences: Option<MediaCommand>,
    screen: Option<MediaCommand>,
}

#[derive(Default)]
struct ConsultRoute {
    node: Option<String>,
    /// A placement (or a failover) is in flight.
    placing: bool,
    /// Participants of this consult on this edge, with their last
    /// preferences and screen state (replayed on a new node).
    members: BTreeMap<ParticipantId, Replay>,
    /// Commands waiting for the placement or the link, in order.
    queue: Vec<MediaCommand>,
}

struct Link {
    addr: SocketAddr,
    generation: u64,
    tx: Option<mpsc::UnboundedSender<ToNode>>,
}

struct Router {
    registry: Arc<dyn Registry>,
    secret: LinkSecret,
    sink: EventSink,
    metrics: Arc<Metrics>,
    tx: mpsc::UnboundedSender<Msg>,
    consults: HashMap<ConsultId, ConsultRoute>,
    links: HashMap<String, Link>,
    generation: u64,
    /// Links to a node that broke or never came up, in a row (reset when one
    /// comes up): the back-off, and after [`GIVE_UP_AFTER`] the consult
    /// leaves that node even if it is still registered.
    link_failures: HashMap<String, u32>,
}

/// Links to one node that may fail in a row before its consults move away
/// from it although the directory still lists it (a node that accepts
/// connections but fails the handshake: a wrong secret, a hung process).
const GIVE_UP_AFTER: u32 = 3;

impl Router {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        while let Some(msg) = rx.recv().await {
            match msg {
                Msg::Command(c) => self.command(c),
                Msg::Placed {
                    consult,
                    result,
                    moved,
                } => self.placed(consult, result, moved),
                Msg::LinkUp {
                    node,
                    generation,
                    tx,
                } => self.link_up(node, generation, tx),
                Msg::LinkFailed { node, generation } => self.link_failed(&node, generation),
                Msg::FromNode {
                    node,
                    generation,
                    message,
                } => self.node_message(&node, generation, message),
            }
        }
    }

    fn command(&mut self, command: MediaCommand) {
        let (consult, participant) = command.target();
        let (consult, participant) = (consult.clone(), participant.clone());
        let is_join = matches!(command, MediaCommand::Join { .. });
        let route = self.consults.entry(consult.clone()).or_default();
        if route.node.is_none() && !route.placing && !is_join {
            // No media session here (never placed, or its placement
            // failed): only a join starts one; a leave has nothing to end.
            route.members.remove(&participant);
            self.forget_if_empty(&consult);
            return;
        }
        match &command {
            MediaCommand::Join { .. } => {
                route.members.insert(participant.clone(), Replay::default());
            }
            MediaCommand::Leave { .. } => {
                route.members.remove(&participant);
            }
            MediaCommand::Preferences { .. } => {
                if let Some(p) = route.members.get_mut(&participant) {
                    p.preferences = Some(command.clone());
                }
            }
            MediaCommand::Screen { .. } => {
                if let Some(p) = route.members.get_mut(&participant) {
                    p.screen = Some(command.clone());
                }
            }
            _ => {}
        }
        let link = route
            .node
            .as_ref()
            .and_then(|n| self.links.get(n))
            .and_then(|l| l.tx.clone());
        match (link, route.placing) {
            (Some(tx), false) => {
                let _ = tx.send(ToNode::Command { command });
            }
            _ => {
                // Answers and candidates for a session that is being moved
                // belong to the old peer connection: only joins, leaves,
                // preferences and screen state matter until the fresh offer.
                let keep = route.node.is_none()
                    || matches!(
                        command,
                        MediaCommand::Join { .. }
                            | MediaCommand::Leave { .. }
                            | MediaCommand::Preferences { .. }
                            | MediaCommand::Screen { .. }
                    );
                if keep && route.queue.len() < 64 {
                    route.queue.push(command);
                }
                if route.node.is_none() && !route.placing {
                    route.placing = true;
                    self.spawn_place(consult.clone(), None);
                }
            }
        }
        self.forget_if_empty(&consult);
    }

    fn forget_if_empty(&mut self, consult: &str) {
        if self
            .consults
            .get(consult)
            .is_some_and(|r| r.members.is_empty() && r.queue.is_empty() && !r.placing)
        {
            self.consults.remove(consult);
        }
    }

    /// Ask the directory where the consult lives (`dead`: the node it was on
    /// died; wait until the directory agrees, then move it).
    fn spawn_place(&self, consult: ConsultId, dead: Option<(String, u32)>) {
        let registry = self.registry.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let moved = dead.is_some();
            let result = match dead {
                // A connectivity check (`probe.rs`) is one short-lived
                // participant: any node with room, no placement to share
                // with other edges, and no load estimate that would steer
                // the next real consult away from an idle node.
                None if crate::token::is_probe_consult(&consult) => {
                    registry.nodes().await.and_then(|nodes| {
                        crate::registry::choose(&nodes, None)
                            .cloned()
                            .ok_or(RegistryError::NoNode)
                    })
                }
                None => registry.place(&consult).await,
                Some((dead, failures)) => failover(&*registry, &consult, &dead, failures).await,
            };
            let _ = tx.send(Msg::Placed {
                consult,
                result,
                moved,
            });
        });
    }

    fn placed(&mut self, consult: ConsultId, result: Result<NodeInfo, RegistryError>, moved: bool) {
        let Some(route) = self.consults.get_mut(&consult) else {
            return;
        };
        route.placing = false;
        match result {
            Ok(info) => {
                self.metrics.cluster_placements.inc();
                if moved {
                    self.metrics.cluster_failovers.inc();
                    log::info!("consult moved to media node {}", info.id);
                    // Everyone here gets a fresh session on the new node:
                    // joins first (in member order), then preferences.
                    route.queue.clear();
                    for participant in route.members.keys() {
                        let _ = self.sink.send(MediaEnvelope {
                            consult: consult.clone(),
                            participant: participant.clone(),
                            event: MediaEvent::Reset,
                        });
                        route.queue.push(MediaCommand::Join {
                            consult: consult.clone(),
                            participant: participant.clone(),
                        });
                    }
                    let replay: Vec<MediaCommand> = route
                        .members
                        .values()
                        .flat_map(|r| [&r.preferences, &r.screen])
                        .flatten()
                        .cloned()
                        .collect();
                    route.queue.extend(replay);
                }
                route.node = Some(info.id.clone());
                self.ensure_link(&info);
                self.flush(&consult);
            }
            Err(e) => {
                self.metrics.cluster_directory_errors.inc();
                log::warn!("placing a consult failed: {e}");
                // Nobody waiting here gets media: say so, and forget them
                // (their session ends with the error; a reconnect tries
                // again).
                let queue = std::mem::take(&mut route.queue);
                let mut refused = Vec::new();
                for c in queue {
                    if let MediaCommand::Join { participant, .. } = c {
                        refused.push(participant);
                    }
                }
                if moved {
                    refused.extend(route.members.keys().cloned());
                    refused.sort();
                    refused.dedup();
                }
                for participant in refused {
                    route.members.remove(&participant);
                    let _ = self.sink.send(MediaEnvelope {
                        consult: consult.clone(),
                        participant,
                        event: MediaEvent::Error {
                            code: "service_unavailable".into(),
                            message: "no media server is available".into(),
                        },
                    });
                }
                route.node = None;
                self.forget_if_empty(&consult);
            }
        }
    }

    fn ensure_link(&mut self, info: &NodeInfo) {
        let open = self
            .links
            .get(&info.id)
            .is_some_and(|l| l.addr == info.link_addr);
        if open {
            return;
        }
        self.generation += 1;
        let generation = self.generation;
        self.links.insert(
            info.id.clone(),
            Link {
                addr: info.link_addr,
                generation,
                tx: None,
            },
        );
        tokio::spawn(run_link(
            info.id.clone(),
            info.link_addr,
            generation,
            self.secret.clone(),
            self.tx.clone(),
        ));
    }

    fn link_up(&mut self, node: String, generation: u64, tx: mpsc::UnboundedSender<ToNode>) {
        let Some(link) = self
            .links
            .get_mut(&node)
            .filter(|l| l.generation == generation)
        else {
            return;
        };
        link.tx = Some(tx);
        self.link_failures.remove(&node);
        let waiting: Vec<ConsultId> = self
            .consults
            .iter()
            .filter(|(_, r)| r.node.as_deref() == Some(node.as_str()) && !r.placing)
            .map(|(c, _)| c.clone())
            .collect();
        for c in waiting {
            self.flush(&c);
        }
    }

    fn flush(&mut self, consult: &str) {
        let Some(route) = self.consults.get_mut(consult) else {
            return;
        };
        let Some(tx) = route
            .node
            .as_ref()
            .and_then(|n| self.links.get(n))
            .and_then(|l| l.tx.clone())
        else {
            return;
        };
        for command in route.queue.drain(..) {
            let _ = tx.send(ToNode::Command { command });
        }
        self.forget_if_empty(consult);
    }

    /// The link to `node` broke (or could not be opened): every consult on
    /// it fails over.
    fn link_failed(&mut self, node: &str, generation: u64) {
        if self
            .links
            .get(node)
            .is_none_or(|l| l.generation != generation)
        {
            return;
        }
        self.links.remove(node);
        self.metrics.cluster_link_failures.inc();
        let failures = self.link_failures.entry(node.to_string()).or_insert(0);
        *failures += 1;
        let failures = *failures;
        log::warn!("link to media node {node} lost ({failures} in a row)");
        let affected: Vec<ConsultId> = self
            .consults
            .iter()
            .filter(|(_, r)| r.node.as_deref() == Some(node))
            .map(|(c, _)| c.clone())
            .collect();
        for consult in affected {
            if let Some(route) = self.consults.get_mut(&consult) {
                route.placing = true;
                route.queue.clear();
            }
            self.spawn_place(consult, Some((node.to_string(), failures)));
        }
    }

    fn node_message(&mut self, node: &str, generation: u64, message: ToEdge) {
        if self
            .links
            .get(node)
            .is_none_or(|l| l.generation != generation)
        {
            return;
        }
        match message {
            ToEdge::Event { envelope } => {
                // A node speaks only for the consults placed on it.
                let ours = self
                    .consults
                    .get(&envelope.consult)
                    .is_some_and(|r| r.node.as_deref() == Some(node));
                if ours {
                    let _ = self.sink.send(envelope);
                }
            }
            ToEdge::Pong => {}
            ToEdge::Draining => log::info!("media node {node} is draining"),
        }
    }
}

/// Where a consult goes after its node's link broke (`failures` times in a
/// row): back to the same node if it is still registered and accepts
/// connections again (after a back-off), else — once its entry expired, or
/// after [`GIVE_UP_AFTER`] failed links — wherever `replace` moves it.
async fn failover(
    registry: &dyn Registry,
    consult: &str,
    dead: &str,
    failures: u32,
) -> Result<NodeInfo, RegistryError> {
    if failures >= GIVE_UP_AFTER {
        log::warn!("media node {dead}: {failures} links failed in a row; moving its consult");
        return registry.replace(consult, dead).await;
    }
    // 0.5 s, 1 s, ...: a node that takes the connection and then fails the
    // handshake must not be hammered.
    tokio::time::sleep(FAILOVER_POLL * 2u32.pow(failures)).await;
    let mut unavailable = 0;
    loop {
        match registry.nodes().await {
            Ok(nodes) => {
                unavailable = 0;
                match nodes.iter().find(|n| n.id == dead) {
                    Some(node) => {
                        // Still registered: a blip, or it died less than a
                        // ttl ago. Back to it if its link answers.
                        if link::probe(node.link_addr).await {
                            return Ok(node.clone());
                        }
                    }
                    None => return registry.replace(consult, dead).await,
                }
            }
            Err(RegistryError::Unavailable(e)) => {
                unavailable += 1;
                // Without the directory no edge can agree on a new node.
                if unavailable >= 20 {
                    return Err(RegistryError::Unavailable(e));
                }
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(FAILOVER_POLL).await;
    }
}

async fn run_link(
    node: String,
    addr: SocketAddr,
    generation: u64,
    secret: LinkSecret,
    router: mpsc::UnboundedSender<Msg>,
) {
    let failed = || Msg::LinkFailed {
        node: node.clone(),
        generation,
    };
    let link::Connected {
        tx: mut sender,
        rx: mut receiver,
        node: id,
        features,
    } = match link::connect(addr, &secret).await {
        Ok(l) => l,
        Err(e) => {
            log::warn!("link to media node {node} at {addr}: {e}");
            let _ = router.send(failed());
            return;
        }
    };
    if id != node {
        log::warn!("media node at {addr} says it is {id}, the directory says {node}");
        let _ = router.send(failed());
        return;
    }
    let (tx, mut outbox) = mpsc::unbounded_channel::<ToNode>();
    let _ = router.send(Msg::LinkUp {
        node: node.clone(),
        generation,
        tx: tx.clone(),
    });
    let pinger = tokio::spawn(async move {
        let mut tick = tokio::time::interval(PING_EVERY);
        loop {
            tick.tick().await;
            if tx.send(ToNode::Ping).is_err() {
                break;
            }
        }
    });
    // A node older than screen sharing would break the link on a command
    // it cannot parse: it gets none (its consults' shares show nothing).
    let screen = features.iter().any(|f| f == "screen");
    if !screen {
        log::warn!("media node {node} does not announce screen sharing: none is sent to it");
    }
    let writer = tokio::spawn(async move {
        while let Some(m) = outbox.recv().await {
            if !screen
                && matches!(
                    m,
                    ToNode::Command {
                        command: MediaCommand::Screen { .. }
                    }
                )
            {
                continue;
            }
            if sender.send(&m).await.is_err() {
                break;
            }
        }
    });
    loop {
        match tokio::time::timeout(LINK_IDLE, receiver.recv()).await {
            Ok(Ok(Some(message))) => {
                if router
                    .send(Msg::FromNode {
                        node: node.clone(),
                        generation,
                        message,
                    })
                    .is_err()
                {
                    break;
                }
            }
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                log::warn!("link to media node {node}: {e}");
                break;
            }
            Err(_) => {
                log::warn!(
                    "link to media node {node}: silent for {}s",
                    LINK_IDLE.as_secs()
                );
                break;
            }
        }
    }
    pinger.abort();
    writer.abort();
    let _ = router.send(failed());
}
