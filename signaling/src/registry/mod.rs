//! The media-node registry and consult placement: which media nodes are
//! alive, how loaded they are, and which node runs which consult.
//!
//! A media node reports itself with [`Registry::heartbeat`] every few
//! seconds; its entry expires `ttl` after the last report, so a node that
//! dies (`kill -9`) disappears by itself. An edge asks [`Registry::place`]
//! where a consult runs: the current node if it is still alive (draining or
//! not: a draining node keeps its running consults), otherwise the least
//! loaded live, non-draining node with room. Placement is atomic, so two
//! edges joining the same consult at the same moment get the same node.
//! [`Registry::replace`] moves a consult off a node the edge knows is dead,
//! as a compare-and-set on that node, so that edges noticing at once agree.
//!
//! Two implementations behind one trait (the seam of issue 11):
//!
//! * [`MemoryRegistry`] (`memory.rs`) — one process, a map under a mutex;
//!   for `serve` and for tests of the edge;
//! * [`RedisRegistry`] (`redis.rs`) — the cluster's shared directory; the
//!   atomic parts are Lua scripts, every call is bounded by a timeout, and
//!   the connection comes back by itself when Redis does.
//!
//! Both share the rules in this file: what a valid node id is, and which node
//! a new consult goes to ([`choose`]); the Lua scripts mirror [`choose`]
//! line by line and the tests in `tests/registry.rs` run one suite against
//! both.
//!
//! [`run_heartbeat`] is the media node's side: report every `every` until
//! told to stop, then deregister.

mod memory;
mod redis;

pub use memory::MemoryRegistry;
pub use redis::{DEFAULT_PREFIX, ErrorCounts, RedisRegistry};
pub(crate) use redis::{classify, connection_manager, eval_retrying, query_retrying, valid_prefix};

use async_trait::async_trait;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Longest node id (`[A-Za-z0-9._-]`): safe in Redis keys, logs and metric
/// labels without escaping.
pub const MAX_NODE_ID_LEN: usize = 64;
/// Largest capacity a node may report. Keeps `load × capacity` exact in the
/// Lua scripts, whose numbers are doubles (exact below 2^53; u32 × 10^6 is
/// below 2^43).
pub const MAX_CAPACITY: u32 = 1_000_000;
/// Longest heartbeat ttl accepted; a typo in seconds vs. milliseconds should
/// not keep a dead node "alive" for a week.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a placement outlives its last `place`: a safety net for consults
/// that end without `release` (an edge crashed). A running consult calls
/// `place` on every join, which refreshes it.
pub const PLACEMENT_TTL: Duration = Duration::from_secs(24 * 3600);
/// What a freshly placed consult adds to its node's load until the node's
/// next heartbeat reports the real figure (so a burst of new consults
/// spreads over the nodes instead of all landing on the one that was
/// least loaded a second ago).
pub const NEW_CONSULT_LOAD: u32 = 2;

/// Most nodes `nodes()` returns; more means the directory is not ours.
pub const MAX_NODES: usize = 10_000;

/// A media node as it last reported itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    /// The address browsers send media to.
    pub announce_ip: IpAddr,
    /// Where edges reach the node's control link.
    pub link_addr: SocketAddr,
    /// Most participants the node takes.
    pub capacity: u32,
    /// Participants now.
    pub load: u32,
    /// Consults now.
    pub consults: u32,
    /// Takes no new consults; keeps its running ones.
    pub draining: bool,
}

impl NodeInfo {
    /// Live, not draining, and room for one more participant.
    pub fn takes_new_consults(&self) -> bool {
        !self.draining && self.load < self.capacity
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryError {
    /// The directory cannot be reached (Redis down, timeout): try again later;
    /// the edge answers `service_unavailable`.
    Unavailable(String),
    /// No live, non-draining node has room.
    NoNode,
    /// A bad argument (node id, consult id, ttl) or data from the directory
    /// that this code did not write.
    Invalid(String),
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::Unavailable(why) => write!(f, "registry unavailable: {why}"),
            RegistryError::NoNode => write!(f, "no media node has room"),
            RegistryError::Invalid(why) => write!(f, "registry: invalid: {why}"),
        }
    }
}

impl std::error::Error for RegistryError {}

/// The media-node directory; see the module docs. Object-safe:
/// `Arc<dyn Registry>`.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Register or refresh a node (heartbeat); the entry expires `ttl` after
    /// the last call.
    async fn heartbeat(&self, node: &NodeInfo, ttl: Duration) -> Result<(), RegistryError>;

    /// Remove a node now (a clean stop). Its consults move on their next
    /// `place`.
    async fn deregister(&self, id: &str) -> Result<(), RegistryError>;

    /// Live nodes only (expired ones never appear), with their last reported
    /// load, sorted by id.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, RegistryError>;

    /// The node a consult is on: its current placement if that node is alive
    /// (even if it is draining — a draining node keeps its running consults),
    /// else atomically place it on the least-loaded live, non-draining node
    /// with room (load/capacity ratio, ties by id). Two edges calling this at
    /// the same moment for the same consult get the same node.
    async fn place(&self, consult: &str) -> Result<NodeInfo, RegistryError>;

    /// The placement's node is dead: move the consult to another live node,
    /// as a compare-and-set on `dead_node`, so that when several edges notice
    /// at once all end up with the same new node. If the placement already
    /// moved, return where it is now (as `place` would). `dead_node` is
    /// never chosen, even if its entry has not expired yet: the caller has
    /// evidence (its link broke) that the registry cannot have.
    async fn replace(&self, consult: &str, dead_node: &str) -> Result<NodeInfo, RegistryError>;

    /// The consult ended on `node`: forget the placement, only if it still
    /// points at `node`.
    async fn release(&self, consult: &str, node: &str) -> Result<(), RegistryError>;

    /// Where a consult is placed now, if anywhere (no side effects; the node
    /// may have expired).
    async fn placement(&self, consult: &str) -> Result<Option<String>, RegistryError>;

    /// `node` holds the consult: place it there unless a live node holds it
    /// already (refreshing the placement if that is `node`). Returns the
    /// holder: `node`, or the other live node — two holders of one consult,
    /// which the caller reports. `NoNode` if `node` itself is not alive.
    /// (An edge re-claims its rooms with this after the directory lost
    /// them, e.g. a Redis restart without persistence.)
    async fn claim(&self, consult: &str, node: &str) -> Result<String, RegistryError>;
}

/// `[A-Za-z0-9._-]{1,64}`.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NODE_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_node_id(id: &str) -> Result<(), RegistryError> {
    if valid_node_id(id) {
        Ok(())
    } else {
        Err(RegistryError::Invalid("node id".into()))
    }
}

fn check_consult(consult: &str) -> Result<(), RegistryError> {
    // (A connectivity check's private consult is placed and released too.)
    if crate::token::is_probe_consult(consult) || crate::token::valid_consult_id(consult) {
        Ok(())
    } else {
        Err(RegistryError::Invalid("consult id".into()))
    }
}

/// What both implementations refuse in a heartbeat.
fn check_heartbeat(node: &NodeInfo, ttl: Duration) -> Result<(), RegistryError> {
    check_node_id(&node.id)?;
    if node.capacity > MAX_CAPACITY {
        return Err(RegistryError::Invalid(format!(
            "capacity above {MAX_CAPACITY}"
        )));
    }
    if ttl < Duration::from_millis(1) || ttl > MAX_TTL {
        return Err(RegistryError::Invalid("heartbeat ttl".into()));
    }
    Ok(())
}

/// Where a new consult goes: the live node that takes new consults with the
/// lowest load/capacity ratio, ties by id; never `exclude`. The ratio is
/// compared by cross-multiplication, exact in u64.
pub fn choose<'a>(
    nodes: impl IntoIterator<Item = &'a NodeInfo>,
    exclude: Option<&str>,
) -> Option<&'a NodeInfo> {
    nodes
        .into_iter()
        .filter(|n| n.takes_new_consults() && Some(n.id.as_str()) != exclude)
        .min_by(|a, b| {
            let a_ratio = u64::from(a.load) * u64::from(b.capacity);
            let b_ratio = u64::from(b.load) * u64::from(a.capacity);
            a_ratio.cmp(&b_ratio).then_with(|| a.id.cmp(&b.id))
        })
}

/// A media node's heartbeat: report `info()` every `every` (entries expire
/// `ttl` after the last report; make `ttl` a few times `every`) until `stop`
/// turns true or its sender goes away, then deregister. Logs once when the
/// registry becomes unreachable and once when it is back, not every beat.
pub async fn run_heartbeat(
    registry: Arc<dyn Registry>,
    info: impl Fn() -> NodeInfo + Send + 'static,
    every: Duration,
    ttl: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut failing = false;
    let mut id = info().id;
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        let node = info();
        id.clone_from(&node.id);
        match registry.heartbeat(&node, ttl).await {
            Ok(()) if failing => {
                log::info!("registry: heartbeat of node {id} reaches the registry again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                log::warn!(
                    "registry: heartbeat of node {id} failed: {e}; retrying every {every:?}"
                );
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            changed = stop.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    match registry.deregister(&id).await {
        Ok(()) => log::info!("registry: node {id} deregistered"),
        Err(e) => log::warn!("registry: deregistering node {id} failed: {e}; it expires by itself"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, load: u32, capacity: u32) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            announce_ip: "127.0.0.1".parse().unwrap(),
            link_addr: "127.0.0.1:7000".parse().unwrap(),
            capacity,
            load,
            consults: 0,
            draining: false,
        }
    }

    #[test]
    fn lowest_ratio_wins_not_lowest_load() {
        // 3/10 is less loaded than 2/4.
        let nodes = [node("a", 2, 4), node("b", 3, 10)];
        assert_eq!(choose(&nodes, None).unwrap().id, "b");
    }

    #[test]
    fn equal_ratios_go_to_the_smallest_id() {
        let nodes = [node("m", 2, 4), node("c", 1, 2), node("x", 5, 10)];
        assert_eq!(choose(&nodes, None).unwrap().id, "c");
    }

    #[test]
    fn full_draining_and_excluded_nodes_take_nothing() {
        let mut draining = node("d", 0, 10);
        draining.draining = true;
        let nodes = [
            node("full", 10, 10),
            node("zero", 0, 0),
            draining,
            node("dead", 0, 10),
        ];
        assert_eq!(choose(&nodes, Some("dead")), None);
        assert_eq!(choose(&nodes, None).unwrap().id, "dead");
    }

    #[test]
    fn node_ids_are_short_and_plain() {
        for ok in ["a", "node-1", "n_2.eu", &"x".repeat(64)] {
            assert!(valid_node_id(ok), "{ok}");
        }
        for bad in ["", "has space", "a:b", "ümlaut", "a/b", &"x".repeat(65)] {
            assert!(!valid_node_id(bad), "{bad}");
        }
    }

    #[test]
    fn heartbeats_with_absurd_values_are_refused() {
        let ttl = Duration::from_secs(3);
        assert!(check_heartbeat(&node("a", 0, MAX_CAPACITY), ttl).is_ok());
        assert!(check_heartbeat(&node("a", 0, MAX_CAPACITY + 1), ttl).is_err());
        assert!(check_heartbeat(&node("a b", 0, 1), ttl).is_err());
        assert!(check_heartbeat(&node("a", 0, 1), Duration::ZERO).is_err());
        assert!(check_heartbeat(&node("a", 0, 1), MAX_TTL * 2).is_err());
    }
}
