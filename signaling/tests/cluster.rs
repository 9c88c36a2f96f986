//! A cluster on loopback: a real `redis-server`, media nodes as real
//! `spreekkamer sfu` processes, and an edge (in this process) whose media
//! plane is the remote one. What the participants' WebSockets show is what
//! is checked: an `offer` arrives from a node; when that node is killed the
//! same participants get `media-reset` and a fresh offer from another node,
//! without a second admission; a draining node takes no new consult; with
//! the directory down a new consult is refused with `service_unavailable`
//! and comes back when Redis does. (Media itself through a failover is
//! checked in real browsers: tests/browser/cluster.test.mjs.)

mod common;

use common::redis::RedisServer;
use common::{Client, Frame, config, start_with, token};
use serde_json::{Value, json};
use signaling::context::ClusterEdge;
use signaling::link::LinkSecret;
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
    let registry: Arc<dyn Registry> = Arc::new(
        RedisRegistry::connect(&redis.url(), DEFAULT_PREFIX, Duration::from_millis(500))
            .await
            .expect("the edge reaches Redis"),
    );
    let mut cfg = config();
    cfg.policy.waiting_room = true;
    cfg.cluster = Some(ClusterEdge {
        registry: registry.clone(),
        link_secret: LinkSecret::new(LINK_SECRET.as_bytes()).expect("secret"),
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
    let (mut late, _) =
        Client::joined(server.addr, &token("during", Role::Clinician, "Dr. Late")).await;
    let error = until(&mut late, "error", &["offer"], common::WAIT).await;
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
