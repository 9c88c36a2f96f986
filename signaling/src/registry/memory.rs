//! The registry in one process: nodes and placements in a map under a
//! mutex, with expiry instants. Every operation is one critical section, which
//! is what makes `place` and `replace` atomic here.

use super::{
    NodeInfo, PLACEMENT_TTL, Registry, RegistryError, check_consult, check_heartbeat,
    check_node_id, choose,
};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// In-process [`Registry`]: for `serve` and for tests of the edge. Uses
/// tokio's clock, so a test with a paused clock can expire nodes without
/// sleeping.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    nodes: HashMap<String, (NodeInfo, Instant)>,
    /// consult → (node id, expiry).
    placements: HashMap<String, (String, Instant)>,
}

impl State {
    /// The current placement if its node is alive (refreshed), else a new one
    /// chosen without `exclude`. `exclude` is also never returned as the
    /// current placement.
    fn place(
        &mut self,
        consult: &str,
        exclude: Option<&str>,
        now: Instant,
    ) -> Result<NodeInfo, RegistryError> {
        self.nodes.retain(|_, (_, expires)| *expires > now);
        if let Some((node_id, expires)) = self.placements.get_mut(consult)
            && *expires > now
            && Some(node_id.as_str()) != exclude
            && let Some((node, _)) = self.nodes.get(node_id.as_str())
        {
            *expires = now + PLACEMENT_TTL;
            return Ok(node.clone());
        }
        let node = choose(self.nodes.values().map(|(n, _)| n), exclude)
            .ok_or(RegistryError::NoNode)?
            .clone();
        // Counted until the node's next heartbeat reports its real load.
        if let Some((n, _)) = self.nodes.get_mut(&node.id) {
            n.load = n.load.saturating_add(super::NEW_CONSULT_LOAD);
        }
        // Consults that ended without `release` leave placements behind;
        // drop the stale ones whenever a new one is written.
        self.placements.retain(|_, (_, expires)| *expires > now);
        self.placements
            .insert(consult.to_string(), (node.id.clone(), now + PLACEMENT_TTL));
        Ok(node)
    }
}

impl MemoryRegistry {
    pub fn new() -> MemoryRegistry {
        MemoryRegistry::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent maps (every
        // mutation is a single insert/retain), so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn heartbeat(&self, node: &NodeInfo, ttl: Duration) -> Result<(), RegistryError> {
        check_heartbeat(node, ttl)?;
        let expires = Instant::now() + ttl;
        self.state()
            .nodes
            .insert(node.id.clone(), (node.clone(), expires));
        Ok(())
    }

    async fn deregister(&self, id: &str) -> Result<(), RegistryError> {
        check_node_id(id)?;
        self.state().nodes.remove(id);
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, RegistryError> {
        let now = Instant::now();
        let mut state = self.state();
        state.nodes.retain(|_, (_, expires)| *expires > now);
        let mut nodes: Vec<NodeInfo> = state.nodes.values().map(|(n, _)| n.clone()).collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    async fn place(&self, consult: &str) -> Result<NodeInfo, RegistryError> {
        check_consult(consult)?;
        self.state().place(consult, None, Instant::now())
    }

    async fn replace(&self, consult: &str, dead_node: &str) -> Result<NodeInfo, RegistryError> {
        check_consult(consult)?;
        check_node_id(dead_node)?;
        self.state().place(consult, Some(dead_node), Instant::now())
    }

    async fn release(&self, consult: &str, node: &str) -> Result<(), RegistryError> {
        check_consult(consult)?;
        check_node_id(node)?;
        let mut state = self.state();
        if state
            .placements
            .get(consult)
            .is_some_and(|(n, _)| n == node)
        {
            state.placements.remove(consult);
        }
        Ok(())
    }

    async fn claim(&self, consult: &str, node: &str) -> Result<String, RegistryError> {
        check_consult(consult)?;
        check_node_id(node)?;
        let now = Instant::now();
        let mut state = self.state();
        let alive = |state: &State, id: &str| state.nodes.get(id).is_some_and(|(_, e)| *e > now);
        if let Some((holder, expires)) = state.placements.get(consult).cloned()
            && expires > now
            && alive(&state, &holder)
        {
            if holder == node {
                state
                    .placements
                    .insert(consult.to_string(), (holder.clone(), now + PLACEMENT_TTL));
            }
            return Ok(holder);
        }
        if !alive(&state, node) {
            return Err(RegistryError::NoNode);
        }
        state
            .placements
            .insert(consult.to_string(), (node.to_string(), now + PLACEMENT_TTL));
        Ok(node.to_string())
    }

    async fn placement(&self, consult: &str) -> Result<Option<String>, RegistryError> {
        check_consult(consult)?;
        let now = Instant::now();
        Ok(self
            .state()
            .placements
            .get(consult)
            .filter(|(_, expires)| *expires > now)
            .map(|(node, _)| node.clone()))
    }
}
