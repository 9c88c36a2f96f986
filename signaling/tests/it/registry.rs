//! The media-node registry: one behaviour suite run against both
//! implementations (in memory, and Redis with a real `redis-server` per
//! test), then what only Redis can do wrong: races between edges, Redis
//! going away and coming back, and data in Redis that we did not write.

use signaling::registry::{
    DEFAULT_PREFIX, MemoryRegistry, NodeInfo, RedisRegistry, Registry, RegistryError, run_heartbeat,
};

use crate::common::redis::{OP_TIMEOUT, RedisServer, WAIT};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};
/// What "within the timeout" may take on a loaded machine.
const UNAVAILABLE_BOUND: Duration = Duration::from_secs(2);
const LONG_TTL: Duration = Duration::from_secs(60);

fn node(id: &str, load: u32, capacity: u32) -> NodeInfo {
    NodeInfo {
        id: id.into(),
        announce_ip: "127.0.0.2".parse().unwrap(),
        link_addr: "127.0.0.2:7100".parse().unwrap(),
        capacity,
        load,
        consults: load / 2,
        draining: false,
    }
}

fn draining(mut n: NodeInfo) -> NodeInfo {
    n.draining = true;
    n
}

async fn beat(r: &Arc<dyn Registry>, nodes: &[NodeInfo]) {
    for n in nodes {
        r.heartbeat(n, LONG_TTL).await.expect("heartbeat");
    }
}

async fn placed_on(r: &Arc<dyn Registry>, consult: &str) -> String {
    r.place(consult).await.expect("place").id
}

/// Poll `check` until it holds or `WAIT` passes.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("not within {WAIT:?}: {what}");
}

// ---- the suite both implementations pass ----

/// A burst of new consults between two heartbeats spreads over the nodes:
/// each placement counts until the nodes report their real load.
async fn consults_placed_in_one_burst_spread_over_the_nodes(r: Arc<dyn Registry>) {
    beat(&r, &[node("a", 0, 100), node("b", 0, 100)]).await;
    let first = placed_on(&r, "burst1").await;
    let second = placed_on(&r, "burst2").await;
    assert_ne!(first, second, "two new consults, two idle nodes");
}

async fn place_picks_the_least_loaded_node(r: Arc<dyn Registry>) {
    // By ratio, not by participants: n0 has the fewest but is half full.
    // n1 and n2 are equally loaded (10%): the smaller id wins.
    beat(
        &r,
        &[
            node("n2", 10, 100),
            node("n1", 20, 200),
            node("n0", 5, 10),
            node("n3", 60, 100),
        ],
    )
    .await;
    let n1 = r.place("c1").await.unwrap();
    assert_eq!(n1, node("n1", 20, 200), "the whole record comes back");
    beat(&r, &[node("n1", 30, 200)]).await;
    assert_eq!(placed_on(&r, "c2").await, "n2");
}

async fn a_consult_stays_on_its_node(r: Arc<dyn Registry>) {
    beat(&r, &[node("a", 0, 100), node("b", 50, 100)]).await;
    assert_eq!(placed_on(&r, "c1").await, "a");
    // a fills up (but is not full): c1 stays, c2 goes to b.
    beat(&r, &[node("a", 90, 100)]).await;
    assert_eq!(placed_on(&r, "c1").await, "a");
    assert_eq!(placed_on(&r, "c2").await, "b");
    assert_eq!(r.placement("c1").await.unwrap().as_deref(), Some("a"));
    assert_eq!(r.placement("c2").await.unwrap().as_deref(), Some("b"));
    assert_eq!(r.placement("never-placed").await.unwrap(), None);
    // Even a full node keeps what it runs.
    beat(&r, &[node("a", 100, 100)]).await;
    assert_eq!(placed_on(&r, "c1").await, "a");
}

async fn a_draining_node_keeps_its_consults_and_gets_no_new_ones(r: Arc<dyn Registry>) {
    beat(&r, &[node("a", 0, 100), node("b", 50, 100)]).await;
    assert_eq!(placed_on(&r, "c1").await, "a");
    beat(&r, &[draining(node("a", 0, 100))]).await;
    let c1 = r.place("c1").await.unwrap();
    assert_eq!((c1.id.as_str(), c1.draining), ("a", true));
    assert_eq!(placed_on(&r, "c2").await, "b");
    beat(&r, &[draining(node("b", 50, 100))]).await;
    assert_eq!(r.place("c3").await, Err(RegistryError::NoNode));
    assert_eq!(placed_on(&r, "c2").await, "b");
}

async fn full_nodes_are_skipped(r: Arc<dyn Registry>) {
    beat(
        &r,
        &[node("a", 10, 10), node("b", 99, 100), node("z", 0, 0)],
    )
    .await;
    assert_eq!(placed_on(&r, "c1").await, "b");
    beat(&r, &[node("b", 100, 100)]).await;
    assert_eq!(r.place("c2").await, Err(RegistryError::NoNode));
    beat(&r, &[node("a", 9, 10)]).await;
    assert_eq!(placed_on(&r, "c2").await, "a");
}

async fn an_expired_node_disappears_and_its_consults_move(r: Arc<dyn Registry>) {
    beat(&r, &[node("a", 0, 100), node("b", 50, 100)]).await;
    assert_eq!(placed_on(&r, "c1").await, "a");
    // a's last heartbeat, with a short ttl; then it dies.
    r.heartbeat(&node("a", 0, 100), Duration::from_millis(300))
        .await
        .unwrap();
    eventually("a drops out of nodes()", || {
        let r = r.clone();
        async move {
            let ids: Vec<String> = r.nodes().await.unwrap().into_iter().map(|n| n.id).collect();
            ids == ["b"]
        }
    })
    .await;
    assert_eq!(placed_on(&r, "c1").await, "b");
    assert_eq!(r.placement("c1").await.unwrap().as_deref(), Some("b"));
    // a comes back: c1 stays where it is now.
    beat(&r, &[node("a", 0, 100)]).await;
    assert_eq!(placed_on(&r, "c1").await, "b");
}

async fn replace_is_a_compare_and_set_on_the_dead_node(r: Arc<dyn Registry>) {
    beat(
        &r,
        &[node("a", 0, 100), node("b", 10, 100), node("c", 20, 100)],
    )
    .await;
    assert_eq!(placed_on(&r, "c1").await, "a");
    r.deregister("a").await.unwrap();
    // Two edges notice at once.
    let (first, second) = tokio::join!(r.replace("c1", "a"), r.replace("c1", "a"));
    let (first, second) = (first.unwrap(), second.unwrap());
    // Same node (the load each saw may differ by the new consult's share).
    assert_eq!(first.id, second.id);
    assert_eq!(first.id, "b");
    // b fills up; a third edge noticing late finds c1 already on b.
    beat(&r, &[node("b", 90, 100)]).await;
    assert_eq!(r.replace("c1", "a").await.unwrap().id, "b");
    assert_eq!(r.placement("c1").await.unwrap().as_deref(), Some("b"));
    // An edge whose link to b broke before b's entry expired: c1 leaves b
    // now, and b is not chosen again.
    let moved = r.replace("c1", "b").await.unwrap();
    assert_eq!(moved.id, "c");
    assert_eq!(placed_on(&r, "c1").await, "c");
    // A consult without a placement is placed, never on the dead node.
    assert_eq!(r.replace("c2", "c").await.unwrap().id, "b");
}

async fn release_forgets_only_its_own_placement(r: Arc<dyn Registry>) {
    beat(&r, &[node("a", 0, 100), node("b", 50, 100)]).await;
    assert_eq!(placed_on(&r, "c1").await, "a");
    r.release("c1", "b").await.unwrap();
    assert_eq!(r.placement("c1").await.unwrap().as_deref(), Some("a"));
    r.release("c1", "a").await.unwrap();
    assert_eq!(r.placement("c1").await.unwrap(), None);
    r.release("c1", "a").await.unwrap();
    r.release("never-placed", "a").await.unwrap();
}

async fn claim_keeps_a_live_holder_and_takes_a_lost_or_dead_placement(r: Arc<dyn Registry>) {
    beat(&r, &[node("a", 0, 100), node("b", 50, 100)]).await;
    // No placement (the directory lost it): the claimer takes it.
    assert_eq!(r.claim("c1", "b").await.unwrap(), "b");
    assert_eq!(r.placement("c1").await.unwrap().as_deref(), Some("b"));
    assert_eq!(placed_on(&r, "c1").await, "b", "place now agrees");
    // A live holder stays; the other claimer learns who holds it.
    assert_eq!(r.claim("c1", "a").await.unwrap(), "b");
    assert_eq!(r.placement("c1").await.unwrap().as_deref(), Some("b"));
    // A claimer that is not alive takes nothing.
    assert_eq!(r.claim("c2", "ghost").await, Err(RegistryError::NoNode));
    assert_eq!(r.placement("c2").await.unwrap(), None);
    // The holder's entry is gone: the claim moves it.
    r.deregister("b").await.unwrap();
    assert_eq!(r.claim("c1", "a").await.unwrap(), "a");
    assert!(r.claim("c1", "!bad").await.is_err());
}

async fn no_node_when_nothing_is_alive(r: Arc<dyn Registry>) {
    assert_eq!(r.nodes().await.unwrap(), vec![]);
    assert_eq!(r.place("c1").await, Err(RegistryError::NoNode));
    assert_eq!(r.replace("c1", "a").await, Err(RegistryError::NoNode));
    assert_eq!(
        r.placement("c1").await.unwrap(),
        None,
        "NoNode places nothing"
    );
    beat(&r, &[node("a", 0, 100)]).await;
    assert_eq!(placed_on(&r, "c1").await, "a");
    r.deregister("a").await.unwrap();
    assert_eq!(r.nodes().await.unwrap(), vec![]);
    assert_eq!(r.place("c1").await, Err(RegistryError::NoNode));
    assert_eq!(r.place("c2").await, Err(RegistryError::NoNode));
}

async fn bad_ids_and_values_are_refused(r: Arc<dyn Registry>) {
    let invalid =
        |result: Result<(), RegistryError>| matches!(result, Err(RegistryError::Invalid(_)));
    assert!(invalid(
        r.heartbeat(&node("has space", 0, 1), LONG_TTL).await
    ));
    assert!(invalid(
        r.heartbeat(&node(&"x".repeat(65), 0, 1), LONG_TTL).await
    ));
    assert!(invalid(r.heartbeat(&node("", 0, 1), LONG_TTL).await));
    assert!(invalid(
        r.heartbeat(&node("a", 0, 2_000_000), LONG_TTL).await
    ));
    assert!(invalid(r.heartbeat(&node("a", 0, 1), Duration::ZERO).await));
    assert!(invalid(r.deregister("a:b").await));
    assert!(invalid(r.release("c1", "a/b").await));
    assert!(invalid(r.release("c 1", "a").await));
    assert!(invalid(r.place("c/1").await.map(|_| ())));
    assert!(invalid(r.place("").await.map(|_| ())));
    assert!(invalid(r.replace("c1", "a b").await.map(|_| ())));
    assert!(invalid(r.placement(&"c".repeat(129)).await.map(|_| ())));
    assert_eq!(r.nodes().await.unwrap(), vec![], "nothing was registered");
}

macro_rules! against_both {
    ($($case:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(Arc::new(MemoryRegistry::new())).await;
                }
            )*
        }
        mod redis_server {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let server = RedisServer::start().await;
                    super::$case(Arc::new(server.registry().await)).await;
                }
            )*
        }
    };
}

against_both!(
    place_picks_the_least_loaded_node,
    consults_placed_in_one_burst_spread_over_the_nodes,
    a_consult_stays_on_its_node,
    a_draining_node_keeps_its_consults_and_gets_no_new_ones,
    full_nodes_are_skipped,
    an_expired_node_disappears_and_its_consults_move,
    replace_is_a_compare_and_set_on_the_dead_node,
    release_forgets_only_its_own_placement,
    claim_keeps_a_live_holder_and_takes_a_lost_or_dead_placement,
    no_node_when_nothing_is_alive,
    bad_ids_and_values_are_refused,
);

// ---- Redis only ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_racing_place_every_consult_on_exactly_one_node() {
    let server = RedisServer::start().await;
    let edges: [Arc<dyn Registry>; 2] = [
        Arc::new(server.registry().await),
        Arc::new(server.registry().await),
    ];
    let media: Arc<dyn Registry> = Arc::new(server.registry().await);
    let ids = ["m0", "m1", "m2"];
    for id in ids {
        media.heartbeat(&node(id, 0, 1000), LONG_TTL).await.unwrap();
    }
    // Meanwhile the least-loaded node keeps changing, so a placement that
    // read and wrote in two steps would put one consult on several nodes.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = tokio::spawn({
        let (media, stop) = (media.clone(), stop.clone());
        async move {
            let mut round = 0u32;
            while !stop.load(Ordering::Relaxed) {
                for (i, id) in ids.iter().enumerate() {
                    let load = (round + i as u32) % 3 * 100;
                    media
                        .heartbeat(&node(id, load, 1000), LONG_TTL)
                        .await
                        .unwrap();
                }
                round += 1;
                tokio::task::yield_now().await;
            }
            round
        }
    });
    // The 50 calls for one consult start at the same instant (they race each
    // other); consults start 3 ms apart, so they meet different loads.
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let mut tasks = tokio::task::JoinSet::new();
    for call in 0..50 {
        for consult in 0..20u64 {
            let edge = edges[call % 2].clone();
            tasks.spawn(async move {
                tokio::time::sleep_until(start + Duration::from_millis(3 * consult)).await;
                let consult = format!("race-{consult}");
                let node = edge.place(&consult).await.expect("place").id;
                (consult, node)
            });
        }
    }
    let mut seen: std::collections::HashMap<String, HashSet<String>> = Default::default();
    while let Some(result) = tasks.join_next().await {
        let (consult, node) = result.unwrap();
        seen.entry(consult).or_default().insert(node);
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = churn.await.unwrap();
    assert!(
        rounds > 1,
        "the loads changed during the race ({rounds} rounds)"
    );
    assert_eq!(seen.len(), 20);
    let mut used = HashSet::new();
    for (consult, nodes) in &seen {
        assert_eq!(nodes.len(), 1, "{consult} on {nodes:?}");
        let node = nodes.iter().next().unwrap();
        assert_eq!(
            edges[0].placement(consult).await.unwrap().as_ref(),
            Some(node)
        );
        used.insert(node.clone());
    }
    // Not a requirement, but the churn only bites if placement varied.
    eprintln!(
        "20 consults over {} nodes, {rounds} load rounds",
        used.len()
    );
}

/// Every operation, with how long it took and whether it was Unavailable.
async fn every_operation(
    r: &RedisRegistry,
) -> Vec<(&'static str, Duration, Result<(), RegistryError>)> {
    let mut out = Vec::new();
    macro_rules! op {
        ($name:literal, $call:expr) => {{
            let started = Instant::now();
            let result = $call.await.map(|_| ());
            out.push(($name, started.elapsed(), result));
        }};
    }
    op!("heartbeat", r.heartbeat(&node("a", 0, 100), LONG_TTL));
    op!("nodes", r.nodes());
    op!("place", r.place("c1"));
    op!("replace", r.replace("c1", "a"));
    op!("release", r.release("c1", "a"));
    op!("placement", r.placement("c1"));
    op!("claim", r.claim("c1", "a"));
    op!("deregister", r.deregister("a"));
    out
}

fn assert_all_unavailable(results: &[(&str, Duration, Result<(), RegistryError>)]) {
    for (name, took, result) in results {
        assert!(
            matches!(result, Err(RegistryError::Unavailable(_))),
            "{name}: {result:?}"
        );
        assert!(*took < UNAVAILABLE_BOUND, "{name} took {took:?}");
    }
}

#[tokio::test]
async fn redis_down_gives_unavailable_within_the_timeout_and_the_same_registry_recovers() {
    let mut server = RedisServer::start().await;
    let r = server.registry().await;
    r.heartbeat(&node("a", 0, 100), LONG_TTL).await.unwrap();
    assert_eq!(r.place("c1").await.unwrap().id, "a");

    server.kill();
    // Twice: the first call finds the dropped connection, the second the
    // failed reconnect.
    for _ in 0..2 {
        assert_all_unavailable(&every_operation(&r).await);
    }
    assert!(r.error_counts().unavailable >= 14);

    assert!(
        server.spawn().await,
        "redis-server restarts on the same port"
    );
    eventually("the same registry value works again", || async {
        r.heartbeat(&node("a", 0, 100), LONG_TTL).await.is_ok()
    })
    .await;
    // Redis restarted empty (no persistence): c1 is placed anew, scripts
    // are loaded anew. b is there for replace to move c1 to.
    r.heartbeat(&node("b", 0, 100), LONG_TTL).await.unwrap();
    for (name, _, result) in every_operation(&r).await {
        assert_eq!(result, Ok(()), "{name}");
    }
    assert_eq!(r.placement("c1").await.unwrap().as_deref(), Some("b"));
}

#[tokio::test]
async fn a_redis_that_stops_answering_gives_unavailable_within_the_timeout() {
    let server = RedisServer::start().await;
    let r = server.registry().await;
    r.heartbeat(&node("a", 0, 100), LONG_TTL).await.unwrap();
    server.signal("-STOP");
    assert_all_unavailable(&every_operation(&r).await);
    server.signal("-CONT");
    eventually("operations succeed after SIGCONT", || async {
        r.place("c1").await.is_ok_and(|n| n.id == "a")
    })
    .await;
}

#[tokio::test]
async fn connect_to_nothing_is_unavailable_and_a_bad_url_invalid() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let result = RedisRegistry::connect(
        &format!("redis://127.0.0.1:{port}/"),
        DEFAULT_PREFIX,
        OP_TIMEOUT,
    )
    .await;
    assert!(
        matches!(result, Err(RegistryError::Unavailable(_))),
        "{result:?}"
    );
    assert!(started.elapsed() < UNAVAILABLE_BOUND);
    let result = RedisRegistry::connect("http://:secret@x", DEFAULT_PREFIX, OP_TIMEOUT).await;
    match result {
        Err(RegistryError::Invalid(why)) => assert!(!why.contains("secret"), "{why}"),
        other => panic!("{other:?}"),
    }
    let result = RedisRegistry::connect("redis://127.0.0.1:1/", "bad prefix", OP_TIMEOUT).await;
    assert!(matches!(result, Err(RegistryError::Invalid(_))));
}

#[tokio::test]
async fn data_we_did_not_write_is_skipped_or_invalid_never_a_panic() {
    use redis::AsyncCommands;
    let server = RedisServer::start().await;
    let r = server.registry().await;
    let mut raw = server.raw().await;
    let p = DEFAULT_PREFIX;
    r.heartbeat(&node("good", 50, 100), LONG_TTL).await.unwrap();

    // Node entries that would all be "less loaded" than good if believed.
    let _: () = raw.set(format!("{p}node:string"), "garbage").await.unwrap();
    let _: () = raw
        .hset_multiple(
            format!("{p}node:letters"),
            &[
                ("announce_ip", "10.0.0.1"),
                ("link_addr", "10.0.0.1:1"),
                ("capacity", "abc"),
                ("load", "0"),
                ("consults", "0"),
                ("draining", "0"),
            ],
        )
        .await
        .unwrap();
    let _: () = raw
        .hset_multiple(
            format!("{p}node:huge"),
            &[
                ("announce_ip", "1".repeat(100_000).as_str()),
                ("link_addr", "10.0.0.1:1"),
                ("capacity", "100"),
                ("load", "0"),
                ("consults", "0"),
                ("draining", "0"),
            ],
        )
        .await
        .unwrap();
    let _: () = raw
        .hset(format!("{p}node:partial"), "load", "0")
        .await
        .unwrap();
    for member in [
        "string",
        "letters",
        "huge",
        "partial",
        "expired",
        "bad id",
        &"x".repeat(10_000),
    ] {
        let _: () = raw.sadd(format!("{p}nodes"), member).await.unwrap();
    }
    let ids: Vec<String> = r.nodes().await.unwrap().into_iter().map(|n| n.id).collect();
    assert_eq!(ids, ["good"]);
    assert_eq!(r.place("c1").await.unwrap().id, "good");
    // The ones without a key, or that can never be an id, were pruned.
    let members: HashSet<String> = raw.smembers(format!("{p}nodes")).await.unwrap();
    let expected: HashSet<String> = ["good", "string", "letters", "huge", "partial"]
        .map(String::from)
        .into();
    assert_eq!(members, expected);

    // Numbers and flags fine, address not: the script cannot parse
    // addresses, so it may choose it; the Rust side refuses it.
    let _: () = raw
        .hset_multiple(
            format!("{p}node:ipless"),
            &[
                ("announce_ip", "not-an-ip"),
                ("link_addr", "10.0.0.1:1"),
                ("capacity", "100"),
                ("load", "0"),
                ("consults", "0"),
                ("draining", "0"),
            ],
        )
        .await
        .unwrap();
    let _: () = raw.sadd(format!("{p}nodes"), "ipless").await.unwrap();
    assert!(matches!(
        r.place("c2").await,
        Err(RegistryError::Invalid(_))
    ));
    assert_eq!(r.nodes().await.unwrap().len(), 1, "ipless is skipped");
    let _: () = raw.del(format!("{p}node:ipless")).await.unwrap();

    // Placements: too long, not an id, pointing at nothing, wrong type.
    let _: () = raw
        .set(format!("{p}placement:long"), "n".repeat(100_000))
        .await
        .unwrap();
    let _: () = raw.set(format!("{p}placement:notid"), "a b").await.unwrap();
    let _: () = raw
        .set(format!("{p}placement:gone"), "nosuchnode")
        .await
        .unwrap();
    let _: () = raw
        .hset(format!("{p}placement:hash"), "x", "y")
        .await
        .unwrap();
    for consult in ["long", "notid", "hash"] {
        let result = r.placement(consult).await;
        assert!(
            matches!(result, Err(RegistryError::Invalid(_))),
            "{consult}: {result:?}"
        );
    }
    assert_eq!(
        r.placement("gone").await.unwrap().as_deref(),
        Some("nosuchnode")
    );
    // place overwrites each with a real placement; release leaves a foreign
    // value alone.
    r.release("hash", "good").await.unwrap();
    for consult in ["long", "notid", "gone", "hash"] {
        assert_eq!(r.place(consult).await.unwrap().id, "good", "{consult}");
        assert_eq!(r.placement(consult).await.unwrap().as_deref(), Some("good"));
    }

    // The node set itself of the wrong type: every read is Invalid.
    let _: () = raw.del(format!("{p}nodes")).await.unwrap();
    let _: () = raw.set(format!("{p}nodes"), "garbage").await.unwrap();
    assert!(matches!(r.nodes().await, Err(RegistryError::Invalid(_))));
    assert!(matches!(
        r.place("c9").await,
        Err(RegistryError::Invalid(_))
    ));
    assert!(r.error_counts().invalid >= 5);
}

#[tokio::test]
async fn the_heartbeat_task_survives_redis_restarts_and_deregisters_on_stop() {
    let mut server = RedisServer::start().await;
    let r: Arc<dyn Registry> = Arc::new(server.registry().await);
    let load = Arc::new(AtomicU32::new(1));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(run_heartbeat(
        r.clone(),
        {
            let load = load.clone();
            move || node("beating", load.load(Ordering::Relaxed), 100)
        },
        Duration::from_millis(50),
        Duration::from_secs(2),
        stop_rx,
    ));
    let reports = |want: u32| {
        let r = r.clone();
        async move {
            r.nodes()
                .await
                .is_ok_and(|n| n.len() == 1 && n[0].load == want)
        }
    };
    eventually("the node registers", || reports(1)).await;
    load.store(7, Ordering::Relaxed);
    eventually("the new load is reported", || reports(7)).await;

    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(server.spawn().await);
    eventually("the node is back after Redis restarted empty", || {
        reports(7)
    })
    .await;

    stop_tx.send(true).unwrap();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("stops")
        .unwrap();
    assert_eq!(
        r.nodes().await.unwrap(),
        vec![],
        "deregistered at once, not expired"
    );
}
