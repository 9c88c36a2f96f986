//! The HTTP accept loop: each accepted connection takes a slot from the
//! [`ConnectionGate`] (or gets a one-line `503`), then hyper serves it with
//! a timer, so a request head (the first one, or the next one on an idle
//! keep-alive connection) must arrive within the header timeout.

use crate::gate::{CountedStream, PeerAddr, REFUSAL};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Puts the TCP peer into every request, then hands it to warp.
#[derive(Clone)]
struct WithPeer<S> {
    peer: SocketAddr,
    inner: S,
}

impl<S> hyper::service::Service<hyper::Request<hyper::body::Incoming>> for WithPeer<S>
where
    S: hyper::service::Service<hyper::Request<hyper::body::Incoming>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, mut req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        req.extensions_mut().insert(PeerAddr(self.peer));
        self.inner.call(req)
    }
}

/// Resolves once HTTP is told to stop (or the server was dropped). The
/// watch guard is not `Send`, so it never lives in a `select!` arm.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// How long connections in progress get to finish once HTTP stops.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Accept connections until `stop` turns true, serving the routes of
/// `http.rs` on each.
pub async fn run(
    listener: TcpListener,
    ctx: Arc<crate::context::Context>,
    header_timeout: Duration,
    stop: watch::Receiver<bool>,
) {
    let routes = crate::http::routes(ctx.clone());
    let gate = ctx.connection_gate.clone();
    let metrics = ctx.metrics.clone();
    drop(ctx);
    serve(listener, routes, gate, metrics, header_timeout, stop).await;
}

/// The accept loop for any set of routes under `gate` (the public port, or a
/// cluster edge's peer port).
pub async fn serve<F>(
    listener: TcpListener,
    routes: F,
    gate: Arc<crate::gate::ConnectionGate>,
    metrics: Arc<crate::metrics::Metrics>,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) where
    F: warp::Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let mut last_accept_error: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors despite the cap (other files), or a
                // connection reset before it was accepted. Back off a little
                // instead of spinning; log at most once a minute.
                metrics.http_accept_errors.inc();
                if last_accept_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    log::warn!("accepting an HTTP connection failed: {e}");
                    last_accept_error = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match gate.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                metrics
                    .http_connections_refused
                    .with_label_values(&[refusal.as_str()])
                    .inc();
                // A fresh socket's send buffer is empty: this never blocks.
                let _ = stream.try_write(REFUSAL);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let io = hyper_util::rt::TokioIo::new(CountedStream::new(stream, slot, metrics.clone()));
        let service = WithPeer {
            peer,
            inner: hyper_util::service::TowerToHyperService::new(warp::service(routes.clone())),
        };
        let metrics = metrics.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder.serve_connection(io, service).with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(STOP_GRACE, conn.as_mut()).await {
                        Ok(result) => result,
                        Err(_) => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                if e.is_timeout() {
                    metrics.http_header_timeouts.inc();
                }
                log::debug!("HTTP connection ended: {e}");
            }
        });
    }
}
