//! The `spreekkamer` binary: `serve` (default: everything in one process),
//! `link` (mint a join link), and a cluster's `signaling` (edge) and `sfu`
//! (media node).

use signaling::config::{
    Cli, ClusterArgs, Command, LinkArgs, SecretSource, ServeArgs, SfuArgs, SignalingArgs,
    join_url_for, link_fragment,
};
use signaling::protocol::Role;
use signaling::registry::{RedisRegistry, Registry};
use signaling::token::{MintRequest, mint_hs256, random_hex_id, random_secret, unix_now};
use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    let cli = Cli::parse_args();
    match cli.command {
        None => serve(cli.serve, None),
        Some(Command::Serve(args)) => serve(args, None),
        Some(Command::Link(args)) => link(&args),
        Some(Command::Signaling(args)) => signaling(args),
        Some(Command::Sfu(args)) => media_node(args),
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            None
        }
    }
}

/// Connect to the directory, trying for a while: in a cluster the edge or
/// node may start before Redis does.
async fn directory(
    cluster: &ClusterArgs,
    redis_url: &str,
    prefix: &str,
) -> Option<Arc<dyn Registry>> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut warned = false;
    loop {
        match RedisRegistry::connect(redis_url, prefix, cluster.redis_timeout).await {
            Ok(r) => return Some(Arc::new(r)),
            // A URL that does not parse (or a bad prefix) will not get
            // better by waiting.
            Err(e @ signaling::registry::RegistryError::Invalid(_)) => {
                eprintln!("error: --redis / --redis-file: {e}");
                return None;
            }
            Err(e) => {
                if tokio::time::Instant::now() >= deadline {
                    eprintln!("error: the directory (Redis) is not reachable: {e}");
                    return None;
                }
                if !warned {
                    log::warn!("waiting for the directory (Redis): {e}");
                    warned = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
}

/// The shared room state (revocations, lock, removals) on the directory's
/// Redis, with its timeout. Called once the directory answered, so Redis is
/// up.
async fn room_store(
    cluster: &ClusterArgs,
    redis_url: &str,
) -> Option<Arc<dyn signaling::roomstore::RoomStore>> {
    match signaling::roomstore::RedisRoomStore::connect(
        redis_url,
        signaling::registry::DEFAULT_PREFIX,
        cluster.redis_timeout,
    )
    .await
    {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            eprintln!("error: the room store (Redis) is not reachable: {e}");
            None
        }
    }
}

fn signaling(args: SignalingArgs) -> ExitCode {
    if !args.serve.key_configured() {
        eprintln!(
            "error: an edge of a cluster needs the token key every edge shares: \
             --jwt-secret-file (or an EHR key: --jwt-key / --jwks-*)"
        );
        return ExitCode::from(2);
    }
    let secret = match args.cluster.link_secret() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let redis_url = match args.cluster.redis_url() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let edge_id = match args.edge_id() {
        Ok(id) => id,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let edge = Edge {
        cluster: args.cluster,
        redis_url,
        link_secret: secret,
        edge_id,
        peer_listen: args.peer_listen,
        peer_advertise: args.peer_advertise,
    };
    serve(args.serve, Some(edge))
}

/// What `spreekkamer signaling` adds to `serve`.
struct Edge {
    cluster: ClusterArgs,
    /// From `--redis` or `--redis-file`.
    redis_url: String,
    link_secret: signaling::link::LinkSecret,
    edge_id: String,
    peer_listen: std::net::SocketAddr,
    peer_advertise: Option<std::net::SocketAddr>,
}

fn media_node(args: SfuArgs) -> ExitCode {
    if let Err(e) = signaling::logging::init_with(args.log_level, args.log_format) {
        eprintln!("error: cannot set up logging: {e}");
        return ExitCode::FAILURE;
    }
    let config = match args.to_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let redis_url = match args.cluster.redis_url() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        let Some(registry) = directory(
            &args.cluster,
            &redis_url,
            signaling::registry::DEFAULT_PREFIX,
        )
        .await
        else {
            return ExitCode::FAILURE;
        };
        let node = match signaling::node::start(config, registry).await {
            Ok(n) => n,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        log::info!("SIGTERM: draining");
        node.drain().await;
        ExitCode::SUCCESS
    })
}

fn link(args: &LinkArgs) -> ExitCode {
    let master = match (&args.link_secret, args.with_link_secret) {
        (Some(k), _) => Some(k.clone()),
        (None, true) => {
            let m = random_secret();
            // The issuer needs M to mint this consult's other links; stderr,
            // so the link on stdout stays the only line there.
            eprintln!(
                "master link secret for consult {}: {m}\n(keep it with the consult; pass it as --link-secret to mint its other links; never give it to the server)",
                args.consult
            );
            Some(m)
        }
        (None, false) => None,
    };
    let fragment = match &master {
        Some(m) => {
            match link_fragment(
                m,
                &args.consult,
                args.role.into(),
                args.link_label.as_deref(),
            ) {
                Ok(f) => Some(f),
                Err(e) => {
                    eprintln!("error: cannot make the link secret: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        None => None,
    };
    let request = MintRequest {
        issuer: args.issuer.clone(),
        audience: args.audience.clone(),
        sub: args.sub.clone().unwrap_or_else(random_hex_id),
        role: args.role.into(),
        consult: args.consult.clone(),
        name: args.name.clone(),
        host: args.host.clone(),
        ttl_secs: args.ttl.as_secs().max(1),
        jti: args.jti.clone(),
    };
    match mint_hs256(args.jwt_secret.as_bytes(), &request, unix_now()) {
        Ok(token) => {
            println!(
                "{}",
                join_url_for(&args.base_url, &token, fragment.as_ref())
            );
            ExitCode::SUCCESS
        }
        Err(code) => {
            eprintln!("error: cannot mint a link: {code} (check --sub and --jti)");
            ExitCode::from(2)
        }
    }
}

fn serve(args: ServeArgs, edge: Option<Edge>) -> ExitCode {
    // Levels per crate, redaction and a per-call-site limit: logging.rs.
    if let Err(e) = signaling::logging::init_with(args.log_level, args.log_format) {
        eprintln!("error: cannot set up logging: {e}");
        return ExitCode::FAILURE;
    }
    let configured = match args.jwt_secret() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if configured.as_ref().map(|s| &s.source) == Some(&SecretSource::CommandLine) {
        eprintln!(
            "warning: --jwt-secret on the command line is visible to every local user \
             (/proc/PID/cmdline, ps); use --jwt-secret-file or SPREEKKAMER_JWT_SECRET"
        );
    }
    let demo = !args.key_configured();
    if !demo && args.demo_links == Some(true) {
        eprintln!(
            "warning: --demo-links ignored: a key is configured, so demo links would be \
             real credentials; mint links with `spreekkamer link` or the EHR"
        );
    }
    let secret = configured.map(|s| s.value).unwrap_or_else(random_secret);
    let mut config = match args.to_config(&secret) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        if let Some(edge) = edge {
            let Some(registry) = directory(
                &edge.cluster,
                &edge.redis_url,
                signaling::registry::DEFAULT_PREFIX,
            )
            .await
            else {
                return ExitCode::FAILURE;
            };
            let Some(edges) =
                directory(&edge.cluster, &edge.redis_url, signaling::peer::EDGE_PREFIX).await
            else {
                return ExitCode::FAILURE;
            };
            let Some(store) = room_store(&edge.cluster, &edge.redis_url).await else {
                return ExitCode::FAILURE;
            };
            config.room_store = Some(store);
            config.cluster = Some(signaling::context::ClusterEdge {
                registry,
                link_secret: edge.link_secret,
                edges,
                edge_id: edge.edge_id,
                peer_listen: edge.peer_listen,
                peer_advertise: edge.peer_advertise,
                ttl: edge.cluster.node_ttl,
            });
        }
        let server = match signaling::serve(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        if demo {
            eprintln!(
                "note: no --jwt-secret, --jwt-secret-file, --jwt-key or --jwks-* given; using a \
                 random secret, so links stop working when the server stops (demo mode)"
            );
            if args.demo_links != Some(false) {
                print_demo_links(&args, &secret, server.local_addr());
            }
        }
        wait_for_signal().await;
        log::info!("shutting down");
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}

fn print_demo_links(args: &ServeArgs, secret: &str, bound: std::net::SocketAddr) {
    let base = match &args.public_url {
        Some(u) => u.clone(),
        None => format!("http://{}", signaling::config::default_public_host(bound)),
    };
    let consult = format!("demo-{}", random_hex_id());
    let link_secret = random_secret();
    let now = unix_now();
    let mut lines = Vec::new();
    let clinician = "Dr. Demo";
    for (role, name, label) in [
        (Role::Clinician, clinician, "Clinician"),
        (Role::Patient, "Demo Patient", "Patient"),
    ] {
        let request = MintRequest {
            issuer: args.jwt_issuer.clone(),
            audience: args.jwt_audience.clone(),
            sub: random_hex_id(),
            role,
            consult: consult.clone(),
            name: name.into(),
            host: (role == Role::Patient).then(|| clinician.to_string()),
            ttl_secs: 12 * 3600,
            jti: None,
        };
        match mint_hs256(secret.as_bytes(), &request, now) {
            Ok(token) => match link_fragment(&link_secret, &consult, role, None) {
                Ok(fragment) => lines.push(format!(
                    "{label} link: {}",
                    join_url_for(&base, &token, Some(&fragment))
                )),
                Err(e) => eprintln!("error: cannot derive the demo link secret: {e}"),
            },
            Err(code) => eprintln!("error: cannot mint the demo links: {code}"),
        }
    }
    // stderr, never stdout (the default audit stream). The server made up
    // the link secret, so whoever reads this can decrypt the consult.
    eprintln!(
        "WARNING: demo links, for trying Spreekkamer out only. The server generated their \
         signing secret and their E2EE link secret itself, so anyone who can read this output \
         (the operator, a log collector) can join and decrypt this consult: it is not \
         end-to-end encrypted against the operator. Configure --jwt-secret-file (or an EHR \
         key) for real consults; demo links are then never printed."
    );
    eprintln!("Spreekkamer is running on {base}. Demo consult {consult} (links valid 12 h):");
    for line in lines {
        eprintln!("{line}");
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
