//! A cluster on loopback: a real `redis-server`, media nodes as real
//! `spreekkamer sfu` processes, and an edge (in this process) whose media
//! plane is the remote one. What the participants' WebSockets show is what
//! is checked: an `offer` arrives from a node; when that node is killed the
//! same participants get `media-reset` and a fresh offer from another node,
//! without a second admission; a draining node takes no new consult; with
//! the directory down a new consult is refused with `service_unavailable`
//! and comes back when Redis does. (Media itself through a failover is
//! checked in real browsers: tests/browser/cluster.test.mjs.)

use crate::common;

use crate::common::redis::RedisServer;
use crate::common::{Client, Frame, config, start_with, token};
use serde_json::{Value, json};
use signaling::context::ClusterEdge;
use signaling::link::LinkSecret;
use signaling::peer::EDGE_PREFIX;
use signaling::protocol::Role;
use signaling::registry::{DEFAULT_PREFIX, RedisRegistry, Registry};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LINK_SECRET: &str = "cluster-test-link-secret-0123456789abcdef";
/// Generous: the machine is shared and busy.
const FAILOVER_BOUND: Duration = Duration::from_secs(20);

/// A `spreekkamer sfu` process, killed on drop.
struct Node {
    id: String,
    child: Option<Child>,
    dir: std::path::PathBuf,
    http: SocketAddr,
}

impl Node {
    fn start(redis: &RedisServer, id: &str) -> Node {
        Node::start_with_secret(redis, id, LINK_SECRET)
    }

    fn start_with_secret(redis: &RedisServer, id: &str, link_secret: &str) -> Node {
        let dir = std::env::temp_dir().join(format!(
            "spreekkamer-node-{id}-{}",
            signaling::token::random_hex_id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let secret = dir.join("link.secret");
        std::fs::write(&secret, format!("{link_secret}\n")).expect("secret file");
        let err = std::fs::File::create(dir.join("stderr")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_spreekkamer"))
            .args(["sfu", "--redis", &redis.url(), "--node-id", id])
            .args(["--announce-ip", "127.0.0.1", "--workers", "1"])
            .args(["--link-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
            .args(["--node-ttl", "1s", "--drain-timeout", "20s"])
            .arg("--link-secret-file")
            .arg(&secret)
            .env_remove("SPREEKKAMER_LINK_SECRET")
            .stdout(Stdio::null())
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spreekkamer sfu starts");
        let mut node = Node {
            id: id.to_string(),
            child: Some(child),
            dir,
            http: "127.0.0.1:0".parse().expect("addr"),
        };
        let started = Instant::now();
        loop {
            let log = node.log();
            if let Some(http) = log
                .lines()
                .find_map(|l| l.split_once(", http ").map(|(_, rest)| rest.to_string()))
                .and_then(|rest| rest.split(',').next().map(str::to_string))
            {
                node.http = http.trim().parse().expect("http address");
                return node;
            }
            assert!(
                started.elapsed() < common::WAIT,
                "node {id} did not start:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn sigterm(&self) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// Wait for the process to exit; its exit code.
    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let started = Instant::now();
        while started.elapsed() < within {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn edge(redis: &RedisServer) -> (common::TestServer, Arc<dyn Registry>) {
    edge_named(redis, "edge-1", LINK_SECRET).await
}

async fn connect(redis: &RedisServer, prefix: &str) -> Arc<dyn Registry> {
    Arc::new(
        RedisRegistry::connect(&redis.url(), prefix, Duration::from_millis(500))
            .await
            .expect("the edge reaches Redis"),
    )
}

/// An edge (in this process) with its peer port on loopback and a 1 s
/// directory entry.
async fn edge_named(
    redis: &RedisServer,
    id: &str,
    link_secret: &str,
) -> (common::TestServer, Arc<dyn Registry>) {
    let registry = connect(redis, DEFAULT_PREFIX).await;
    let mut cfg = config();
    cfg.policy.waiting_room = true;
    // Tickets refreshed every 2.5 s, so a test can wait for a fresh one.
    cfg.resume_ttl = Duration::from_secs(10);
    // As `spreekkamer signaling` does: the shared room store on the same
    // Redis.
    cfg.room_store = Some(Arc::new(redis.room_store().await));
    cfg.cluster = Some(ClusterEdge {
        registry: registry.clone(),
        link_secret: LinkSecret::new(link_secret.as_bytes()).expect("secret"),
        edges: connect(redis, EDGE_PREFIX).await,
        edge_id: id.to_string(),
        peer_listen: "127.0.0.1:0".parse().expect("addr"),
        peer_advertise: None,
        ttl: Duration::from_secs(1),
    });
    (start_with(cfg).await, registry)
}

/// Read until a message of type `ty` (media messages included), failing on
/// any in `forbidden`.
async fn until(c: &mut Client, ty: &str, forbidden: &[&str], within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = match tokio::time::timeout(left, c.frame()).await {
            Ok(Frame::Json(m)) => m,
            Ok(Frame::Closed) => panic!("closed while waiting for `{ty}`"),
            Err(_) => panic!("no `{ty}` within {within:?}"),
        };
        let got = m["type"].as_str().unwrap_or_default().to_string();
        assert!(!forbidden.contains(&got.as_str()), "unexpected {m}");
        if got == ty {
            return m;
        }
    }
}

/// A clinician and an admitted patient of `consult`, each with their first
/// offer from the media node.
async fn consult_in_call(addr: SocketAddr, consult: &str) -> (Client, Client) {
    let (mut clinician, _) = Client::joined(addr, &token(consult, Role::Clinician, "Dr. A")).await;
    // (The tests never answer, so each participant gets exactly one offer.)
    until(&mut clinician, "offer", &["error"], common::WAIT).await;
    let (mut patient, welcome) =
        Client::joined(addr, &token(consult, Role::Patient, "Mevr. B")).await;
    assert_eq!(welcome["state"], "waiting", "{welcome}");
    let waiting = until(&mut clinician, "lobby", &[], common::WAIT).await;
    let id = waiting["waiting"][0]["id"]
        .as_str()
        .expect("someone waiting")
        .to_string();
    clinician.send(json!({"type":"admit","id":id})).await;
    until(&mut patient, "admitted", &[], common::WAIT).await;
    until(&mut patient, "offer", &["error"], common::WAIT).await;
    (clinician, patient)
}

async fn placement(registry: &Arc<dyn Registry>, consult: &str) -> String {
    registry
        .placement(consult)
        .await
        .expect("directory up")
        .expect("placed")
}

async fn wait_registered(registry: &Arc<dyn Registry>, ids: &[&str]) {
    let deadline = Instant::now() + common::WAIT;
    loop {
        let live: Vec<String> = registry
            .nodes()
            .await
            .map(|n| n.into_iter().map(|n| n.id).collect())
            .unwrap_or_default();
        if ids.iter().all(|id| live.iter().any(|l| l == id)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nodes {ids:?} not registered: {live:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_consult_moves_to_another_node_without_readmission() {
    let redis = RedisServer::start().await;
    let mut a = Node::start(&redis, "node-a");
    let b = Node::start(&redis, "node-b");
    let (server, registry) = edge(&redis).await;
    wait_registered(&registry, &["node-a", "node-b"]).await;

    let (mut c1, mut p1) = consult_in_call(server.addr, "cluster-one").await;
    let (mut c2, mut p2) = consult_in_call(server.addr, "cluster-two").await;
    let one = placement(&registry, "cluster-one").await;
    let two = placement(&registry, "cluster-two").await;
    assert_ne!(one, two, "two consults, two idle nodes: spread");

    // Kill the node of consult one (whichever it is).
    let killed_at = Instant::now();
    if one == a.id {
        a.kill9();
    } else {
        drop(b);
    }
    // Both participants: told to drop their peer connection, then a fresh
    // offer; never the waiting room again.
    for who in [&mut c1, &mut p1] {
        until(
            who,
            "media-reset",
            &["waiting", "error", "bye"],
            FAILOVER_BOUND,
        )
        .await;
        until(who, "offer", &["waiting", "error", "bye"], FAILOVER_BOUND).await;
    }
    let took = killed_at.elapsed();
    eprintln!("failover: kill → both fresh offers in {took:?} (node ttl 1 s)");
    let moved = placement(&registry, "cluster-one").await;
    assert_ne!(moved, one, "the consult left the dead node");
    assert_eq!(moved, two, "...for the only live one");
    // Nobody was sent back to the waiting room.
    for m in c1.sync().await {
        let waiting = m["waiting"].as_array().map_or(0, Vec::len);
        assert_eq!(waiting, 0, "the clinician is asked to admit again: {m}");
    }
    // Consult two was never touched.
    for who in [&mut c2, &mut p2] {
        for m in who.sync().await {
            assert_ne!(m["type"], "media-reset", "{m}");
        }
    }
    let metrics = common::get(server.addr, "/metrics").await.text();
    assert!(
        metrics.contains("spreekkamer_cluster_failovers_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_keeps_its_consult_and_takes_no_new_one() {
    let redis = RedisServer::start().await;
    let mut a = Node::start(&redis, "drain-a");
    let (server, registry) = edge(&redis).await;
    wait_registered(&registry, &["drain-a"]).await;
    let (c1, p1) = consult_in_call(server.addr, "running").await;
    assert_eq!(placement(&registry, "running").await, "drain-a");
    let b = Node::start(&redis, "drain-b");
    wait_registered(&registry, &["drain-b"]).await;

    a.sigterm();
    let ready = format!("http://{}/readyz", a.http);
    let deadline = Instant::now() + common::WAIT;
    loop {
        let r = common::get(a.http, "/readyz").await;
        if r.status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "{ready} stayed {}", r.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The directory sees it draining, so a new consult goes elsewhere...
    let deadline = Instant::now() + common::WAIT;
    while !registry
        .nodes()
        .await
        .unwrap_or_default()
        .iter()
        .any(|n| n.id == "drain-a" && n.draining)
    {
        assert!(Instant::now() < deadline, "drain-a never reported draining");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _new = consult_in_call(server.addr, "newcomer").await;
    assert_eq!(placement(&registry, "newcomer").await, b.id);
    // ...while the running one stays (the node has not exited).
    assert_eq!(
        a.wait_exit(Duration::from_millis(500)),
        None,
        "exited early"
    );
    assert_eq!(placement(&registry, "running").await, "drain-a");
    // Its participants leave: the node exits 0.
    drop((c1, p1));
    assert_eq!(a.wait_exit(common::WAIT), Some(0), "{}", a.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_directory_down_a_new_consult_is_refused_and_comes_back_with_it() {
    let mut redis = RedisServer::start().await;
    let _a = Node::start(&redis, "dir-a");
    let (server, registry) = edge(&redis).await;
    wait_registered(&registry, &["dir-a"]).await;
    let (mut c1, _p1) = consult_in_call(server.addr, "before").await;

    redis.kill();
    let started = Instant::now();
    // Refused before `welcome` (the room's home edge cannot be looked up).
    let mut late = Client::connect(server.addr).await;
    late.send(json!({"type":"join","v":1,"token":token("during", Role::Clinician, "Dr. Late")}))
        .await;
    let error = until(&mut late, "error", &["offer", "welcome"], common::WAIT).await;
    assert_eq!(error["code"], "service_unavailable", "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "refused only after {:?}",
        started.elapsed()
    );
    // The running consult was not disturbed.
    for m in c1.sync().await {
        assert_ne!(m["type"], "media-reset", "{m}");
        assert_ne!(m["type"], "error", "{m}");
    }

    // An outage of a few seconds, as in a Redis restart.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(redis.spawn().await, "redis back on its port");
    // Once the node has re-registered (its next heartbeat), the very next
    // join gets media: no restart, no stale connection error left over from
    // the outage. (Watched through a connection of its own: the edge's
    // registry must meet the outage's aftermath with the join itself.)
    let watcher: Arc<dyn Registry> = Arc::new(redis.registry().await);
    wait_registered(&watcher, &["dir-a"]).await;
    let (mut again, _) =
        Client::joined(server.addr, &token("after", Role::Clinician, "Dr. Again")).await;
    until(&mut again, "offer", &["error"], common::WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connectivity_check_reaches_a_media_node() {
    let redis = RedisServer::start().await;
    let _a = Node::start(&redis, "probe-a");
    let (server, registry) = edge(&redis).await;
    wait_registered(&registry, &["probe-a"]).await;
    let mut c = Client::connect(server.addr).await;
    c.send(json!({"type":"probe","v":1,"token":token("checked", Role::Patient, "P")}))
        .await;
    until(&mut c, "offer", &["error"], common::WAIT).await;
}

/// A node that accepts connections but does not hold the cluster's secret
/// (misconfigured, or not ours): the edge never links to it, backs off, and
/// after a few attempts moves the consult away; with no other node the
/// participant is told `service_unavailable` instead of waiting forever,
/// and the stranger saw a handful of attempts, not a flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_link_secret_is_not_hammered_and_not_used() {
    let redis = RedisServer::start().await;
    let stranger = Node::start_with_secret(
        &redis,
        "stranger",
        "another-clusters-secret-0123456789abcdef",
    );
    let (server, registry) = edge(&redis).await;
    wait_registered(&registry, &["stranger"]).await;
    let started = Instant::now();
    let (mut c, _) = Client::joined(server.addr, &token("lonely", Role::Clinician, "Dr. A")).await;
    let error = until(&mut c, "error", &["offer"], FAILOVER_BOUND).await;
    assert_eq!(error["code"], "service_unavailable", "{error}");
    eprintln!("refused after {:?}", started.elapsed());
    let metrics = common::get(stranger.http, "/metrics").await.text();
    let failures: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("spreekkamer_node_link_auth_failures_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the node counts refused handshakes");
    assert!(
        (1..=5).contains(&failures),
        "{failures} handshakes tried against a node without the secret"
    );
}

/// Redis, one media node and two edges (`edge-1`, `edge-2`), all
/// registered; `edges` reads the edge directory.
struct TwoEdges {
    redis: RedisServer,
    node: Node,
    e1: common::TestServer,
    e2: common::TestServer,
    edges: Arc<dyn Registry>,
}

async fn two_edges() -> TwoEdges {
    let redis = RedisServer::start().await;
    let node = Node::start(&redis, "node-a");
    let (e1, registry) = edge_named(&redis, "edge-1", LINK_SECRET).await;
    let (e2, _) = edge_named(&redis, "edge-2", LINK_SECRET).await;
    let edges = connect(&redis, EDGE_PREFIX).await;
    wait_registered(&registry, &["node-a"]).await;
    wait_registered(&edges, &["edge-1", "edge-2"]).await;
    TwoEdges {
        redis,
        node,
        e1,
        e2,
        edges,
    }
}

/// The value of an unlabelled metric on `/metrics`.
async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = common::get(addr, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not on /metrics:\n{text}"))
}

/// Clinician through `first`, patient through `second`: they meet in one
/// room (the waiting room, the admission, the roster and relayed messages
/// all cross), wherever the room's home is.
async fn meet_across_edges(
    first: SocketAddr,
    second: SocketAddr,
    consult: &str,
) -> (Client, Client, String, String) {
    let (mut clinician, w) = Client::joined(first, &token(consult, Role::Clinician, "Dr. A")).await;
    let clinician_id = w["you"]["id"].as_str().expect("own id").to_string();
    until(&mut clinician, "offer", &["error"], common::WAIT).await;
    let (mut patient, welcome) =
        Client::joined(second, &token(consult, Role::Patient, "Mevr. B")).await;
    assert_eq!(welcome["state"], "waiting", "{welcome}");
    let patient_id = welcome["you"]["id"].as_str().expect("own id").to_string();
    let lobby = until(&mut clinician, "lobby", &["error"], common::WAIT).await;
    assert_eq!(lobby["waiting"][0]["id"], patient_id.as_str(), "{lobby}");
    assert_eq!(lobby["waiting"][0]["name"], "Mevr. B", "{lobby}");
    clinician
        .send(json!({"type":"admit","id":patient_id}))
        .await;
    until(&mut patient, "admitted", &["error", "bye"], common::WAIT).await;
    until(&mut patient, "offer", &["error", "bye"], common::WAIT).await;
    let joined = until(
        &mut clinician,
        "participant-joined",
        &["error"],
        common::WAIT,
    )
    .await;
    assert_eq!(joined["participant"]["id"], patient_id.as_str(), "{joined}");
    // A relayed message (how E2EE keys travel) crosses too.
    patient
        .send(json!({"type":"relay","to":clinician_id,"kind":"chat","data":"hallo"}))
        .await;
    let relayed = until(&mut clinician, "relay", &["error"], common::WAIT).await;
    assert_eq!(relayed["from"], patient_id.as_str(), "{relayed}");
    assert_eq!(relayed["data"], "hallo", "{relayed}");
    (clinician, patient, clinician_id, patient_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_on_two_edges_meet_in_one_room_on_its_home_edge() {
    let TwoEdges {
        redis: _redis,
        node: _node,
        e1,
        e2,
        edges,
    } = two_edges().await;

    for (n, (a, b)) in [(e1.addr, e2.addr), (e2.addr, e1.addr)]
        .into_iter()
        .enumerate()
    {
        let consult = format!("two-edges-{n}");
        let (_c, _p, _, _) = meet_across_edges(a, b, &consult).await;
        let home = placement(&edges, &consult).await;
        let (home_srv, other) = if home == "edge-1" {
            (&e1, &e2)
        } else {
            (&e2, &e1)
        };
        // The room and its audit trail are on the home edge only.
        let joins = |s: &common::TestServer| {
            s.audit_lines()
                .into_iter()
                .filter(|l| l["consult"] == consult.as_str())
                .filter(|l| l["event"] == "join" || l["event"] == "waiting_room_entered")
                .count()
        };
        assert_eq!(
            joins(home_srv),
            2,
            "both joins audited on the home edge {home}"
        );
        assert_eq!(joins(other), 0, "no room on the other edge");
        assert_eq!(
            metric(other.addr, "spreekkamer_edge_passed_on_connections").await,
            1.0,
            "one WebSocket passed on by the other edge"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_home_edges_room_comes_back_on_the_other_edge_without_readmission() {
    let TwoEdges {
        redis: _redis,
        node: _node,
        e1,
        e2,
        edges,
    } = two_edges().await;

    let consult = "edge-restart";
    let (mut clinician, mut patient, _, _) = meet_across_edges(e1.addr, e2.addr, consult).await;
    let c_ticket = until(&mut clinician, "resume", &["error"], common::WAIT).await;
    let p_ticket = until(&mut patient, "resume", &["error"], common::WAIT).await;
    let home = placement(&edges, consult).await;
    let (home_srv, survivor) = if home == "edge-1" { (e1, e2) } else { (e2, e1) };

    home_srv.server.shutdown().await;
    // Both connections end (the one passed on through the survivor too):
    // `bye: shutdown` or a plain close, never an error.
    for who in [&mut clinician, &mut patient] {
        loop {
            match tokio::time::timeout(common::WAIT, who.frame()).await {
                Ok(Frame::Closed) => break,
                Ok(Frame::Json(m)) => {
                    assert_ne!(m["type"], "error", "{m}");
                }
                Err(_) => panic!("a connection of the stopped home edge stayed open"),
            }
        }
    }
    // Both come back through the survivor with their tickets: in the call
    // at once, the clinician asked to admit no one.
    let mut back = Vec::new();
    for (name, role, ticket) in [
        ("Dr. A", Role::Clinician, &c_ticket),
        ("Mevr. B", Role::Patient, &p_ticket),
    ] {
        let mut c = Client::connect(survivor.addr).await;
        c.send(json!({"type":"join","v":1,"token":token(consult, role, name),"resume":ticket["ticket"]}))
            .await;
        let w = until(&mut c, "welcome", &["error"], FAILOVER_BOUND).await;
        assert_eq!(w["state"], "in-call", "{name} resumed: {w}");
        back.push(c);
    }
    for c in &mut back {
        until(c, "offer", &["error", "waiting", "bye"], common::WAIT).await;
    }
    for m in back[0].sync().await {
        let waiting = m["waiting"].as_array().map_or(0, Vec::len);
        assert_eq!(waiting, 0, "the clinician is asked to admit again: {m}");
    }
    assert_eq!(
        placement(&edges, consult).await,
        survivor.server.context().peers.as_ref().expect("edge").id,
        "the room moved to the surviving edge"
    );
    let resumed = survivor
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "join_resumed")
        .count();
    assert_eq!(resumed, 2, "both resumed on the survivor");
    assert_eq!(
        metric(survivor.addr, "spreekkamer_edge_rooms_moved_total").await,
        1.0,
        "the move is counted once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_and_the_lock_outlive_the_home_edge() {
    use signaling::roomstore::RoomStore;
    let TwoEdges {
        redis,
        node: _node,
        e1,
        e2,
        edges,
    } = two_edges().await;

    let consult = "edge-removal";
    let (mut clinician, mut patient, _, patient_id) =
        meet_across_edges(e1.addr, e2.addr, consult).await;
    let p_ticket = until(&mut patient, "resume", &["error"], common::WAIT).await;
    clinician.send(json!({"type":"lock","locked":true})).await;
    until(&mut clinician, "locked", &["error"], common::WAIT).await;
    clinician
        .send(json!({"type":"remove","id":patient_id}))
        .await;
    let bye = until(&mut patient, "bye", &["error"], common::WAIT).await;
    assert_eq!(bye["reason"], "removed", "{bye}");
    let store = redis.room_store().await;
    let deadline = Instant::now() + common::WAIT;
    loop {
        let now = signaling::token::unix_now();
        let v = store
            .join_view(consult, "sub-Mevr. B", None, now, now)
            .await
            .expect("store");
        if v.barred && v.locked {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "written to the room store: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let home = placement(&edges, consult).await;
    let (home_srv, survivor) = if home == "edge-1" { (e1, e2) } else { (e2, e1) };
    home_srv.server.shutdown().await;
    drop(clinician);

    // On the edge that takes the room over: the removed patient stays out,
    // resume ticket or not, and the consult is still locked for newcomers.
    let mut c = Client::connect(survivor.addr).await;
    c.send(json!({"type":"join","v":1,"token":token(consult, Role::Patient, "Mevr. B"),"resume":p_ticket["ticket"]}))
        .await;
    let e = until(&mut c, "error", &["welcome"], FAILOVER_BOUND).await;
    assert_eq!(e["code"], "token_revoked", "{e}");
    let mut g = Client::connect(survivor.addr).await;
    g.send(json!({"type":"join","v":1,"token":token(consult, Role::Guest, "Gast")}))
        .await;
    let e = until(&mut g, "error", &["welcome"], FAILOVER_BOUND).await;
    assert_eq!(e["code"], "consult_locked", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_refuses_anyone_without_a_proof_from_the_link_secret() {
    let redis = RedisServer::start().await;
    let (e1, _) = edge_named(&redis, "edge-1", LINK_SECRET).await;
    let peer = e1.server.peer_addr().expect("peer port");
    let url = format!("ws://{peer}/peer");
    // No proof.
    let refused = tokio_tungstenite::connect_async(url.as_str()).await;
    assert!(
        matches!(&refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 403),
        "{refused:?}"
    );
    // A proof under another secret, and a replayed-late one under the right
    // secret: both refused.
    let other = signaling::peer::Peers::new(
        connect(&redis, EDGE_PREFIX).await,
        "mallory".into(),
        "127.0.0.1:1".parse().expect("addr"),
        &LinkSecret::new(b"another-secret-of-enough-length-0123456789").expect("secret"),
        Duration::from_secs(1),
        Arc::new(signaling::metrics::Metrics::new().expect("metrics")),
    );
    let same = signaling::peer::Peers::new(
        connect(&redis, EDGE_PREFIX).await,
        "edge-x".into(),
        "127.0.0.1:1".parse().expect("addr"),
        &LinkSecret::new(LINK_SECRET.as_bytes()).expect("secret"),
        Duration::from_secs(1),
        Arc::new(signaling::metrics::Metrics::new().expect("metrics")),
    );
    let access = signaling::audit::AccessPoint::new(Some("203.0.113.7".parse().expect("ip")), None);
    let now = signaling::token::unix_now();
    for (what, proof, status) in [
        ("another secret", other.proof(&access, now), 403),
        ("a stale proof", same.proof(&access, now - 120), 403),
        ("a valid proof", same.proof(&access, now), 101),
    ] {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url.as_str().into_client_request().expect("request");
        req.headers_mut()
            .insert(signaling::peer::PEER_HEADER, proof.parse().expect("header"));
        let got = match tokio_tungstenite::connect_async(req).await {
            Ok((_, r)) => r.status().as_u16(),
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
            Err(e) => panic!("{what}: {e}"),
        };
        assert_eq!(got, status, "{what}");
    }
    assert_eq!(
        metric(e1.addr, "spreekkamer_edge_peer_refused_total").await,
        3.0
    );
    // The public port has no peer route.
    let public = tokio_tungstenite::connect_async(format!("ws://{}/peer", e1.addr)).await;
    assert!(public.is_err(), "the public port must not serve /peer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_created_and_revoked_through_either_edge_act_on_the_room() {
    let TwoEdges {
        redis: _redis,
        node: _node,
        e1,
        e2,
        edges,
    } = two_edges().await;

    let consult = "api-edges";
    let clin_token = token(consult, Role::Clinician, "Dr. A");
    let (mut clinician, _) = Client::joined(e1.addr, &clin_token).await;
    until(&mut clinician, "offer", &["error"], common::WAIT).await;
    let home = placement(&edges, consult).await;
    let (home_srv, other) = if home == "edge-1" {
        (&e1, &e2)
    } else {
        (&e2, &e1)
    };

    // Created through the edge that does not hold the room.
    let created = common::post_invite(
        other,
        Some(&clin_token),
        br#"{"role":"patient","name":"Mevr. C"}"#,
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let invite = common::json_body(&created);
    let (jti, invite_token) = (
        invite["jti"].as_str().expect("jti").to_string(),
        invite["token"].as_str().expect("token").to_string(),
    );
    let count = |s: &common::TestServer, event: &str| {
        s.audit_lines()
            .into_iter()
            .filter(|l| l["event"] == event && l["consult"] == consult)
            .count()
    };
    assert_eq!(
        count(home_srv, "invite_created"),
        1,
        "audited by the room's edge"
    );
    assert_eq!(count(other, "invite_created"), 0);

    // The invitee, also through the other edge, waits in the room.
    let (mut invitee, w) = Client::joined(other.addr, &invite_token).await;
    assert_eq!(w["state"], "waiting", "{w}");
    let lobby = until(&mut clinician, "lobby", &["error"], common::WAIT).await;
    assert_eq!(lobby["waiting"][0]["name"], "Mevr. C", "{lobby}");

    // Revoked through the other edge: the invitee's connection ends, and
    // the invite no longer joins through either edge.
    let revoked = common::delete_invite(other, &clin_token, &jti).await;
    assert_eq!(revoked.status, 204, "{}", revoked.text());
    loop {
        match tokio::time::timeout(common::WAIT, invitee.frame()).await {
            Ok(Frame::Closed) => break,
            Ok(Frame::Json(_)) => {}
            Err(_) => panic!("the revoked invitee's connection stayed open"),
        }
    }
    assert_eq!(count(home_srv, "invite_revoked"), 1);
    for edge in [&e1, &e2] {
        let mut again = Client::connect(edge.addr).await;
        again
            .send(json!({"type":"join","v":1,"token":invite_token}))
            .await;
        let e = until(&mut again, "error", &["welcome"], common::WAIT).await;
        assert_eq!(e["code"], "token_revoked", "{e}");
    }
    // A stranger's proof-less request to the peer API is refused.
    let r = common::request(
        home_srv.server.peer_addr().expect("peer port"),
        "DELETE",
        &format!("/peer/api/v1/invites/{jti}"),
        &[("Authorization", format!("Bearer {clin_token}").as_str())],
        None,
    )
    .await;
    assert_eq!(r.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_the_directory_lost_is_reclaimed_by_its_home_edge() {
    let TwoEdges {
        redis: _redis,
        node: _node,
        e1,
        e2,
        edges,
    } = two_edges().await;

    let consult = "lost-room";
    let (mut clinician, _) =
        Client::joined(e1.addr, &token(consult, Role::Clinician, "Dr. A")).await;
    until(&mut clinician, "offer", &["error"], common::WAIT).await;
    let home = placement(&edges, consult).await;
    // The directory forgets the placement (as a Redis restarted without
    // persistence would).
    edges.release(consult, &home).await.expect("release");
    assert_eq!(edges.placement(consult).await.expect("read"), None);
    // Within a ttl or two the home edge has it back...
    let deadline = Instant::now() + common::WAIT;
    while edges.placement(consult).await.expect("read").as_deref() != Some(home.as_str()) {
        assert!(Instant::now() < deadline, "the room was not re-claimed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...so a patient through either edge joins the same room.
    let other = if home == "edge-1" { &e2 } else { &e1 };
    let (_patient, w) = Client::joined(other.addr, &token(consult, Role::Patient, "Mevr. B")).await;
    assert_eq!(w["state"], "waiting", "{w}");
    let lobby = until(&mut clinician, "lobby", &["error"], common::WAIT).await;
    assert_eq!(lobby["waiting"][0]["name"], "Mevr. B", "{lobby}");
}
