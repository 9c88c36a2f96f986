//! Health, readiness, metrics, static assets and shutdown over real HTTP.

use crate::common;

use crate::common::*;
use serde_json::json;
use signaling::protocol::Role;
use std::time::{Duration, Instant};

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'";

fn assert_security_headers(r: &HttpResponse) {
    assert_eq!(r.header("content-security-policy"), Some(CSP));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        r.header("permissions-policy"),
        Some("camera=(self), microphone=(self)")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_answer() {
    let s = start().await;
    let h = get(s.addr, "/healthz").await;
    assert_eq!((h.status, h.text().as_str()), (200, "ok"));
    let r = get(s.addr, "/readyz").await;
    assert_eq!(r.status, 200);
    s.server.drain();
    let r = get(s.addr, "/readyz").await;
    assert_eq!(r.status, 503, "draining server is not ready");
    let h = get(s.addr, "/healthz").await;
    assert_eq!(h.status, 200, "but still alive");
    // New joins are refused while draining.
    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"join","v":1,"token":token("d", Role::Clinician, "D")}))
        .await;
    c.expect_fatal("shutting_down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_consults_participants_media_and_latency() {
    let s = start().await;
    let (_a, _) = Client::joined(s.addr, &token("m", Role::Clinician, "A")).await;
    let (mut b, _) = Client::joined(s.addr, &token("m", Role::Patient, "B")).await;
    b.sync().await;
    let r = get(s.addr, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let text = r.text();
    for needle in [
        "spreekkamer_consults 1",
        "spreekkamer_participants 2",
        "spreekkamer_ws_connections 2",
        "spreekkamer_joins_accepted_total 2",
        "spreekkamer_media_tracks ",
        "spreekkamer_media_packets_in_total ",
        "spreekkamer_media_packets_out_total ",
        "spreekkamer_media_bytes_in_total ",
        "spreekkamer_media_bytes_out_total ",
        "spreekkamer_join_to_media_seconds_bucket",
        "spreekkamer_ws_messages_total{type=\"join\"} 2",
        "spreekkamer_ws_messages_total{type=\"ping\"} 1",
        "spreekkamer_media_layer_switches_total{direction=\"up\"} 0",
        "spreekkamer_media_keyframe_requests_total ",
        "spreekkamer_media_nacks_received_total ",
        "spreekkamer_media_video_paused_for_bandwidth ",
        "spreekkamer_media_ice_tcp_pending_total{outcome=\"evicted_full\"} 0",
        "spreekkamer_media_addresses_refused_total{reason=\"peer_budget\"} 0",
        "spreekkamer_media_datagrams_dropped_total{reason=\"failed_check\"} ",
        "spreekkamer_media_srtp_refused_total{reason=\"failed_authentication\"} 0",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_client_is_served_with_security_headers() {
    let s = start().await;
    let page = get(s.addr, "/c").await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("fixture-index"));
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert_security_headers(&page);

    let landing = get(s.addr, "/").await;
    assert!(landing.text().contains("fixture-landing"));
    assert_security_headers(&landing);

    let js = get(s.addr, "/app.js").await;
    assert_eq!(js.status, 200);
    assert_eq!(
        js.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_security_headers(&js);
    let worker = get(s.addr, "/e2ee/worker.js").await;
    assert_eq!(worker.status, 200);
    assert_eq!(
        worker.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    let css = get(s.addr, "/style.css").await;
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));

    for missing in [
        "/nope.js",
        "/e2ee",
        "/../Cargo.toml",
        "/e2ee//worker.js",
        "/c/x",
    ] {
        let r = get(s.addr, missing).await;
        assert_eq!(r.status, 404, "{missing}");
        assert_security_headers(&r);
    }
    // The fragment never reaches a server, but a query string might: the
    // page is served the same and nothing is read from it.
    let with_query = get(s.addr, "/c?t=abc").await;
    assert_eq!(with_query.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_web_client_has_the_pages_the_contract_names() {
    // Runs against the real web/ directory; skipped gracefully while web/
    // is still empty in a fresh workspace.
    let mut cfg = config();
    cfg.assets = &signaling::context::WEB_ASSETS;
    let s = start_with(cfg).await;
    if signaling::context::WEB_ASSETS
        .get_file("index.html")
        .is_none()
    {
        eprintln!("web/index.html not present yet; skipping");
        return;
    }
    let page = get(s.addr, "/c").await;
    assert_eq!(page.status, 200);
    assert!(page.text().to_ascii_lowercase().contains("<html"));
    assert_security_headers(&page);
    // The test-your-setup page, reached without a link.
    for path in ["/test", "/test/"] {
        let page = get(s.addr, path).await;
        assert_eq!(page.status, 200, "{path}");
        assert!(page.text().contains("/test.js"), "{path}");
        assert_eq!(page.header("cache-control"), Some("no-store"));
        assert_security_headers(&page);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_says_bye_to_everyone_and_finishes_quickly() {
    let s = start().await;
    let (mut a, _) = Client::joined(s.addr, &token("s", Role::Clinician, "A")).await;
    let (mut b, _) = Client::joined(s.addr, &token("s", Role::Patient, "B")).await;
    let mut waiting = Client::connect(s.addr).await;
    a.expect("participant-joined").await;
    let started = Instant::now();
    let addr = s.addr;
    s.server.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    for c in [&mut a, &mut b] {
        // A participant-left from the other may come first.
        loop {
            let v = c.next().await;
            if v["type"] == "bye" {
                assert_eq!(v["reason"], "shutdown");
                break;
            }
            assert_eq!(v["type"], "participant-left", "{v}");
        }
        c.expect_closed().await;
    }
    waiting.expect_fatal("shutting_down").await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_answered_like_get_without_a_body() {
    let s = start().await;
    for path in ["/c", "/", "/healthz"] {
        let g = get(s.addr, path).await;
        let h = request(s.addr, "HEAD", path, &[], None).await;
        assert_eq!(g.status, 200, "{path}");
        assert_eq!(h.status, 200, "{path}");
        assert_eq!(h.header("content-type"), g.header("content-type"), "{path}");
        assert_security_headers(&h);
        assert!(h.body.is_empty(), "{path}: HEAD has no body");
    }
    let missing = request(s.addr, "HEAD", "/nope.js", &[], None).await;
    assert_eq!(missing.status, 404);
    // Only GET and HEAD: other methods on a page are still refused.
    let put = request(s.addr, "PUT", "/c", &[], Some(b"x")).await;
    assert_eq!(put.status, 404);
}

#[tokio::test]
async fn with_metrics_listen_metrics_leave_the_public_port() {
    let mut cfg = common::config();
    cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let s = common::start_with(cfg).await;
    let metrics_addr = s.server.metrics_addr().expect("metrics address");
    assert_ne!(metrics_addr, s.addr);
    let public = common::get(s.addr, "/metrics").await;
    assert_eq!(public.status, 404, "no /metrics on the public port");
    let private = common::get(metrics_addr, "/metrics").await;
    assert_eq!(private.status, 200);
    let text = private.text();
    assert!(text.contains("spreekkamer_joins_accepted_total"), "{text}");
    assert!(
        text.contains(&format!(
            "spreekkamer_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(text.contains("process_resident_memory_bytes"), "{text}");
    assert_eq!(common::get(metrics_addr, "/healthz").await.status, 200);
    assert_eq!(
        common::get(metrics_addr, "/").await.status,
        404,
        "nothing else there"
    );
    // Without the flag: on the public port, as before.
    let default = common::start().await;
    assert_eq!(common::get(default.addr, "/metrics").await.status, 200);
}
