//! The shared room store (`roomstore`): one suite run against both stores
//! (in memory, and Redis with a real `redis-server` per test), what only
//! Redis can do wrong, and then two edges on one Redis: what a clinician
//! does on one edge holds on the other (revocation, removal, lock), and an
//! unreadable store refuses joins instead of letting them in unchecked; and
//! the `spreekkamer signaling` binary reads the store on its `--redis`.

use crate::common::redis::{OP_TIMEOUT, RedisServer};
use crate::common::*;
use ::redis::AsyncCommands;
use serde_json::json;
use signaling::protocol::Role;
use signaling::resume::ResumeKeys;
use signaling::roomstore::{
    JoinView, MAX_BARRED_PER_CONSULT, MAX_FOREIGN_PER_CONSULT, MemoryRoomStore, RedisRoomStore,
    RoomStore, RoomStoreError,
};
use signaling::token::unix_now;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What "within the timeout" may take on a loaded machine.
const UNAVAILABLE_BOUND: Duration = Duration::from_secs(3);

async fn view(s: &dyn RoomStore, consult: &str, sub: &str, jti: Option<&str>) -> JoinView {
    let now = unix_now();
    s.join_view(consult, sub, jti, now + 3600, now)
        .await
        .expect("join_view")
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

async fn a_revocation_holds_for_its_consult_only(s: Arc<dyn RoomStore>) {
    let now = unix_now();
    assert_eq!(view(&*s, "c1", "p", Some("j1")).await, JoinView::default());
    s.revoke("c1", "j1", false, now + 600, now).await.unwrap();
    let v = view(&*s, "c1", "p", Some("j1")).await;
    assert!(v.revoked && v.refused() && !v.barred && !v.locked, "{v:?}");
    assert!(!view(&*s, "c1", "p", Some("j2")).await.revoked, "other jti");
    assert!(
        !view(&*s, "c2", "p", Some("j1")).await.revoked,
        "other consult"
    );
    assert!(!view(&*s, "c1", "p", None).await.revoked, "no jti");
    // Idempotent.
    s.revoke("c1", "j1", false, now + 60, now).await.unwrap();
    assert!(view(&*s, "c1", "p", Some("j1")).await.revoked);
}

async fn a_revocation_ends_at_until_unless_the_token_turned_up(s: Arc<dyn RoomStore>) {
    let now = unix_now();
    s.revoke("c1", "short", true, now + 100, now).await.unwrap();
    s.revoke("c1", "seen", true, now + 100, now).await.unwrap();
    let later = now + 1_000;
    let at = |jti: &'static str, t: u64, exp: u64| {
        let s = s.clone();
        async move {
            s.join_view("c1", "p", Some(jti), exp, t)
                .await
                .unwrap()
                .revoked
        }
    };
    assert!(at("short", now + 100, now).await, "until is inclusive");
    assert!(!at("short", now + 101, now).await, "past until");
    // The revoked token shows up with a later exp: kept until then.
    assert!(at("seen", now, later).await);
    assert!(
        at("seen", later, later).await,
        "extended to the token's exp"
    );
    let leeway = signaling::token::LEEWAY_SECS;
    assert!(!at("seen", later + leeway + 1, later).await);
}

async fn revocations_are_bounded_per_consult_and_kind(s: Arc<dyn RoomStore>) {
    let now = unix_now();
    for i in 0..MAX_FOREIGN_PER_CONSULT {
        s.revoke("flood", &format!("made-up-{i}"), true, now + 600, now)
            .await
            .unwrap();
    }
    assert_eq!(
        s.revoke("flood", "one-more", true, now + 600, now).await,
        Err(RoomStoreError::Full)
    );
    assert!(!view(&*s, "flood", "p", Some("one-more")).await.revoked);
    // Held ones again: fine. Invites of the same consult, and another
    // consult: their own bounds.
    s.revoke("flood", "made-up-0", true, now + 900, now)
        .await
        .unwrap();
    s.revoke("flood", "an-invite", false, now + 600, now)
        .await
        .unwrap();
    s.revoke("other", "one-more", true, now + 600, now)
        .await
        .unwrap();
    // Entries past their until no longer count.
    let later = now + 700;
    s.revoke("flood", "after-expiry", true, later + 600, later)
        .await
        .unwrap();
    assert!(
        s.join_view("flood", "p", Some("after-expiry"), 0, later)
            .await
            .unwrap()
            .revoked
    );
}

async fn a_barred_person_is_barred_in_that_consult_only(s: Arc<dyn RoomStore>) {
    s.bar("c1", "sub-pat").await.unwrap();
    s.bar("c1", "sub-pat").await.unwrap();
    let v = view(&*s, "c1", "sub-pat", None).await;
    assert!(v.barred && v.refused() && !v.revoked && !v.locked, "{v:?}");
    assert!(!view(&*s, "c1", "sub-other", None).await.barred);
    assert!(!view(&*s, "c2", "sub-pat", None).await.barred);
}

async fn the_barred_list_is_bounded(s: Arc<dyn RoomStore>) {
    for i in 0..MAX_BARRED_PER_CONSULT {
        s.bar("big", &format!("sub-{i}")).await.unwrap();
    }
    assert_eq!(s.bar("big", "sub-x").await, Err(RoomStoreError::Full));
    assert!(!view(&*s, "big", "sub-x", None).await.barred);
    s.bar("big", "sub-0").await.unwrap();
    s.bar("small", "sub-x").await.unwrap();
}

async fn lock_and_unlock(s: Arc<dyn RoomStore>) {
    s.set_locked("c1", true).await.unwrap();
    assert!(view(&*s, "c1", "p", None).await.locked);
    assert!(!view(&*s, "c2", "p", None).await.locked);
    assert!(
        !view(&*s, "c1", "p", None).await.refused(),
        "a lock is not a refusal"
    );
    s.set_locked("c1", false).await.unwrap();
    assert!(!view(&*s, "c1", "p", None).await.locked);
    s.set_locked("never-locked", false).await.unwrap();
}

async fn ids_that_cannot_be_ours_are_refused(s: Arc<dyn RoomStore>) {
    let now = unix_now();
    let invalid = |r: Result<(), RoomStoreError>| matches!(r, Err(RoomStoreError::Invalid(_)));
    let probe = format!("{}0123", signaling::token::PROBE_CONSULT_PREFIX);
    for consult in ["", "has space", "a:b", &"x".repeat(129), &probe] {
        assert!(invalid(s.set_locked(consult, true).await), "{consult}");
        assert!(invalid(s.bar(consult, "p").await), "{consult}");
        assert!(invalid(s.revoke(consult, "j", true, now + 60, now).await));
        assert!(s.join_view(consult, "p", None, now, now).await.is_err());
    }
    assert!(invalid(s.revoke("c", "", true, now + 60, now).await));
    assert!(invalid(
        s.revoke("c", &"j".repeat(129), true, now + 60, now).await
    ));
    assert!(invalid(s.bar("c", "").await));
    assert!(invalid(s.bar("c", "a\nb").await));
    assert!(s.join_view("c", "a\u{7}", None, now, now).await.is_err());
    assert!(s.join_view("c", "p", Some(""), now, now).await.is_err());
}

async fn a_peek_sees_what_a_join_sees(s: Arc<dyn RoomStore>) {
    let now = unix_now();
    s.revoke("c1", "j1", false, now + 100, now).await.unwrap();
    s.bar("c1", "barred").await.unwrap();
    s.set_locked("c1", true).await.unwrap();
    for (sub, jti) in [("barred", Some("j1")), ("p", None), ("barred", None)] {
        assert_eq!(
            s.peek_view("c1", sub, jti, now).await.unwrap(),
            // A token expiring before `until`: the join read extends nothing.
            s.join_view("c1", sub, jti, now, now).await.unwrap(),
            "{sub} {jti:?}"
        );
    }
    assert_eq!(
        s.peek_view("c2", "barred", Some("j1"), now).await.unwrap(),
        JoinView::default(),
        "another consult"
    );
    assert!(
        !s.peek_view("c1", "p", Some("j1"), now + 101)
            .await
            .unwrap()
            .revoked,
        "past until"
    );
    assert!(s.peek_view("c", "a\u{7}", None, now).await.is_err());
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(Arc::new(MemoryRoomStore::new())).await;
                }
            )*
        }
        mod redis_store {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let server = RedisServer::start().await;
                    super::$name(Arc::new(server.room_store().await)).await;
                }
            )*
        }
    };
}

suite!(
    a_revocation_holds_for_its_consult_only,
    a_revocation_ends_at_until_unless_the_token_turned_up,
    revocations_are_bounded_per_consult_and_kind,
    a_barred_person_is_barred_in_that_consult_only,
    the_barred_list_is_bounded,
    lock_and_unlock,
    ids_that_cannot_be_ours_are_refused,
    a_peek_sees_what_a_join_sees,
);

/// The link check reads the store with `peek_view`: unlike a join's read,
/// it must not push back the expiry of the lock, the barred list or a
/// revoked id.
#[tokio::test]
async fn a_peek_extends_nothing_in_redis_and_a_join_read_does() {
    let server = RedisServer::start().await;
    let s = server.room_store().await;
    let mut raw = server.raw().await;
    let now = unix_now();
    s.revoke("c1", "j1", true, now + 100, now).await.unwrap();
    s.bar("c1", "barred").await.unwrap();
    s.set_locked("c1", true).await.unwrap();
    let keys = [
        "spreekkamer:room:c1:locked",
        "spreekkamer:room:c1:barred",
        "spreekkamer:room:c1:revoked",
    ];
    let mut ttls = Vec::new();
    for k in keys {
        let t: i64 = raw.pttl(k).await.unwrap();
        assert!(t > 0, "{k}: {t}");
        ttls.push(t);
    }
    let revoked: Vec<String> = raw.hgetall(keys[2]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let v = s.peek_view("c1", "barred", Some("j1"), now).await.unwrap();
    assert!(v.revoked && v.barred && v.locked, "{v:?}");
    let mut peeked = Vec::new();
    for (k, before) in keys.iter().zip(&ttls) {
        let t: i64 = raw.pttl(*k).await.unwrap();
        assert!(
            t < *before,
            "{k}: the peek kept its expiry ({t} < {before})"
        );
        peeked.push(t);
    }
    let after: Vec<String> = raw.hgetall(keys[2]).await.unwrap();
    assert_eq!(after, revoked, "the revoked entry is as it was");
    // A join's read does extend them (what the test above would miss if
    // the keys had no expiry to compare).
    s.join_view("c1", "barred", Some("j1"), now + 10_000, now)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    for (k, peeked) in keys[..2].iter().zip(&peeked) {
        let t: i64 = raw.pttl(*k).await.unwrap();
        assert!(
            t > *peeked,
            "{k}: a join's read extends it ({t} > {peeked})"
        );
    }
    let joined: Vec<String> = raw.hgetall(keys[2]).await.unwrap();
    assert_ne!(joined, revoked, "a join's read extends the revoked entry");
}

// ---- Redis only ----

/// Every operation answers `Unavailable`, each within the bound.
async fn all_unavailable(s: &RedisRoomStore, now: u64) {
    let started = Instant::now();
    let results = [
        s.join_view("c1", "p", Some("j"), now, now).await.err(),
        s.revoke("c1", "j", true, now + 60, now).await.err(),
        s.bar("c1", "p").await.err(),
        s.set_locked("c1", false).await.err(),
    ];
    for r in results {
        assert!(matches!(r, Some(RoomStoreError::Unavailable(_))), "{r:?}");
    }
    assert!(started.elapsed() < 4 * UNAVAILABLE_BOUND);
}

#[tokio::test]
async fn redis_down_or_stopped_is_unavailable_within_the_timeout_and_recovers() {
    let mut server = RedisServer::start().await;
    let s = server.room_store().await;
    s.set_locked("c1", true).await.unwrap();
    let now = unix_now();
    server.signal("-STOP");
    all_unavailable(&s, now).await;
    server.signal("-CONT");
    eventually("answers after SIGCONT", || async {
        s.join_view("c1", "p", None, now, now).await.is_ok()
    })
    .await;
    server.kill();
    all_unavailable(&s, now).await;
    assert!(server.spawn().await, "redis-server restarts on its port");
    eventually("the same store value works again", || async {
        s.join_view("c1", "p", None, now, now).await.is_ok()
    })
    .await;
    s.bar("c1", "p").await.unwrap();
}

#[tokio::test]
async fn redis_holds_no_sub_or_jti_and_what_it_holds_expires() {
    let server = RedisServer::start().await;
    let s = server.room_store().await;
    let now = unix_now();
    s.revoke("c1", "jti-secret-ish", true, now + 600, now)
        .await
        .unwrap();
    s.bar("c1", "patient-123456").await.unwrap();
    s.set_locked("c1", true).await.unwrap();
    let mut raw = server.raw().await;
    let keys: Vec<String> = raw.keys("spreekkamer:room:*").await.unwrap();
    assert_eq!(keys.len(), 3, "{keys:?}");
    let dump: Vec<String> = {
        let mut out = keys.clone();
        let fields: Vec<String> = raw
            .hgetall::<_, Vec<String>>("spreekkamer:room:c1:revoked")
            .await
            .unwrap();
        out.extend(fields);
        let members: Vec<String> = raw.smembers("spreekkamer:room:c1:barred").await.unwrap();
        out.extend(members);
        out
    };
    for text in &dump {
        assert!(
            !text.contains("patient-123456") && !text.contains("jti-secret"),
            "{text}"
        );
    }
    for key in &keys {
        let ttl: i64 = raw.ttl(key).await.unwrap();
        assert!(ttl > 0, "{key} expires ({ttl})");
    }
}

#[tokio::test]
async fn data_this_code_did_not_write_refuses_the_join() {
    let server = RedisServer::start().await;
    let s = server.room_store().await;
    let mut raw = server.raw().await;
    let now = unix_now();
    let _: () = raw.set("spreekkamer:room:c1:locked", "yes").await.unwrap();
    assert!(matches!(
        s.join_view("c1", "p", None, now, now).await,
        Err(RoomStoreError::Invalid(_))
    ));
    let _: () = raw.set("spreekkamer:room:c2:barred", "x").await.unwrap();
    assert!(matches!(
        s.join_view("c2", "p", None, now, now).await,
        Err(RoomStoreError::Invalid(_))
    ));
    // Locking writes a value of ours over the foreign one.
    s.set_locked("c1", true).await.unwrap();
    assert!(view(&s, "c1", "p", None).await.locked);
}

// ---- two edges, one Redis ----

const CONSULT: &str = "edge-room-1";

struct Edges {
    redis: RedisServer,
    one: TestServer,
    two: TestServer,
    /// For looking at what the edges wrote.
    store: RedisRoomStore,
}

async fn edges() -> Edges {
    let redis = RedisServer::start().await;
    let mut servers = Vec::new();
    for _ in 0..2 {
        let mut cfg = config();
        // An empty consult is forgotten at once: the next join rebuilds it,
        // as an edge does after the consult's home edge died.
        cfg.policy.grace = Duration::from_millis(1);
        cfg.room_store = Some(Arc::new(redis.room_store().await));
        servers.push(start_with(cfg).await);
    }
    let two = servers.pop().unwrap();
    let one = servers.pop().unwrap();
    let store = redis.room_store().await;
    Edges {
        redis,
        one,
        two,
        store,
    }
}

fn doc() -> String {
    token_with_sub(CONSULT, Role::Clinician, "Dr. D", "sub-doc")
}

fn patient() -> String {
    token_with_sub(CONSULT, Role::Patient, "Mw. P", "sub-pat")
}

/// Join `addr` and expect a fatal refusal with `code`.
async fn refused(addr: std::net::SocketAddr, token: &str, resume: Option<&str>, code: &str) {
    let mut c = Client::connect(addr).await;
    c.send(json!({"type":"join","v":1,"token":token,"resume":resume}))
        .await;
    c.expect_fatal(code).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_revoked_through_the_api_of_one_edge_is_refused_on_the_other() {
    let e = edges().await;
    let created = post_invite(&e.one, Some(&doc()), br#"{"role":"patient"}"#).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let invite = json_body(&created);
    let (jti, token) = (
        invite["jti"].as_str().unwrap().to_string(),
        invite["token"].as_str().unwrap().to_string(),
    );
    // The invite works on the other edge ...
    let (c, _) = Client::joined(e.two.addr, &token).await;
    drop(c);
    // ... until it is revoked on the first.
    assert_eq!(delete_invite(&e.one, &doc(), &jti).await.status, 204);
    let sub = format!("invite-{jti}");
    eventually("the revocation reaches Redis", || async {
        view(&e.store, CONSULT, &sub, Some(&jti)).await.revoked
    })
    .await;
    refused(e.two.addr, &token, None, "token_revoked").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_patient_stays_out_on_another_edge_even_with_a_resume_ticket() {
    let e = edges().await;
    let (mut d, _) = Client::joined(e.one.addr, &doc()).await;
    let (mut p, wp) = Client::joined(e.one.addr, &patient()).await;
    assert_eq!(wp["state"], "in-call", "{wp}");
    let ticket = p.expect_resume().await["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    // The ticket is good on the other edge (same secret) ...
    let keys = ResumeKeys::new(SECRET.as_bytes(), signaling::resume::DEFAULT_TTL);
    assert!(
        keys.check(&ticket, CONSULT, "sub-pat", Role::Patient, unix_now())
            .is_ok()
    );
    d.send(json!({"type":"remove","id":wp["you"]["id"]})).await;
    let bye = p.expect("bye").await;
    assert_eq!(bye["reason"], "removed");
    eventually("the removal reaches Redis", || async {
        view(&e.store, CONSULT, "sub-pat", None).await.barred
    })
    .await;
    // ... but the removal holds there, ticket or not; the clinician is fine.
    refused(e.two.addr, &patient(), Some(&ticket), "token_revoked").await;
    refused(e.two.addr, &patient(), None, "token_revoked").await;
    let (_d2, w) = Client::joined(e.two.addr, &doc()).await;
    assert_eq!(w["state"], "in-call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_set_on_one_edge_holds_on_the_other_and_so_does_the_unlock() {
    let e = edges().await;
    let (mut d, _) = Client::joined(e.one.addr, &doc()).await;
    d.send(json!({"type":"lock","locked":true})).await;
    d.expect("locked").await;
    eventually("the lock reaches Redis", || async {
        view(&e.store, CONSULT, "x", None).await.locked
    })
    .await;
    refused(e.two.addr, &patient(), None, "consult_locked").await;
    // A clinician enters the locked consult on the other edge and sees it
    // locked.
    let (d2, w) = Client::joined(e.two.addr, &doc()).await;
    assert_eq!(w["locked"], true, "{w}");
    drop(d2);

    d.send(json!({"type":"lock","locked":false})).await;
    d.expect("locked").await;
    eventually("the unlock reaches Redis", || async {
        !view(&e.store, CONSULT, "x", None).await.locked
    })
    .await;
    // Edge two forgets its (now empty) copy of the consult after the grace
    // period; a fresh copy starts unlocked.
    eventually("the patient gets in on edge two", || async {
        let mut c = Client::connect(e.two.addr).await;
        c.send(json!({"type":"join","v":1,"token":patient()})).await;
        c.next().await["type"] == "welcome"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_a_join_is_refused_in_bounded_time_and_works_when_it_is_back() {
    let mut e = edges().await;
    let (c, _) = Client::joined(e.two.addr, &doc()).await;
    drop(c);
    let (mut d1, _) = Client::joined(e.one.addr, &doc()).await;

    // A Redis that accepts and never answers: refused after the timeout.
    e.redis.signal("-STOP");
    let started = Instant::now();
    refused(e.two.addr, &patient(), None, "service_unavailable").await;
    let took = started.elapsed();
    assert!(took >= OP_TIMEOUT && took < UNAVAILABLE_BOUND, "{took:?}");
    e.redis.signal("-CONT");

    e.redis.kill();
    // A clinician's lock is not held up by the store, and the lost write
    // is counted.
    d1.send(json!({"type":"lock","locked":true})).await;
    d1.expect("locked").await;
    d1.sync().await;
    eventually("the failed write is counted", || async {
        get(e.one.addr, "/metrics")
            .await
            .text()
            .contains(r#"spreekkamer_room_store_errors_total{op="lock",reason="unavailable"} 1"#)
    })
    .await;
    for _ in 0..2 {
        let started = Instant::now();
        refused(e.two.addr, &patient(), None, "service_unavailable").await;
        assert!(
            started.elapsed() < UNAVAILABLE_BOUND,
            "{:?}",
            started.elapsed()
        );
    }
    // The API refuses as well.
    let r = post_invite(&e.two, Some(&doc()), br#"{"role":"patient"}"#).await;
    assert_eq!(r.status, 503, "{}", r.text());
    let failed = e
        .two
        .audit_lines()
        .into_iter()
        .filter(|l| l["event"] == "join" && l["reason"] == "service_unavailable")
        .count();
    assert!(failed >= 2, "audited");
    let metrics = get(e.two.addr, "/metrics").await.text();
    assert!(
        metrics.contains(r#"spreekkamer_room_store_errors_total{op="read",reason="unavailable"}"#),
        "{metrics}"
    );

    assert!(e.redis.spawn().await, "redis-server restarts on its port");
    eventually("joins work again", || async {
        let mut c = Client::connect(e.two.addr).await;
        c.send(json!({"type":"join","v":1,"token":patient()})).await;
        c.next().await["type"] == "welcome"
    })
    .await;
}

/// A link check on an edge: its one `link-check` reply.
async fn link_check(addr: std::net::SocketAddr, token: &str) -> serde_json::Value {
    let mut c = Client::connect(addr).await;
    c.send(json!({"type":"check","v":1,"token":token})).await;
    let reply = c.next().await;
    assert_eq!(reply["type"], "link-check", "{reply}");
    c.expect_closed().await;
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_check_on_another_edge_reads_the_shared_room_store_and_refuses_when_it_cannot() {
    let e = edges().await;
    let created = post_invite(&e.one, Some(&doc()), br#"{"role":"patient"}"#).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let invite = json_body(&created);
    let (jti, token) = (
        invite["jti"].as_str().unwrap().to_string(),
        invite["token"].as_str().unwrap().to_string(),
    );
    assert_eq!(link_check(e.two.addr, &token).await["ok"], true);
    assert_eq!(delete_invite(&e.one, &doc(), &jti).await.status, 204);
    let sub = format!("invite-{jti}");
    eventually("the revocation reaches Redis", || async {
        e.store
            .peek_view(CONSULT, &sub, Some(&jti), unix_now())
            .await
            .unwrap()
            .revoked
    })
    .await;
    // Edge two never held the consult: only the store can tell it.
    let reply = link_check(e.two.addr, &token).await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["code"], "token_revoked");

    // A lock set on edge one is seen by a check on edge two.
    let (mut d, _) = Client::joined(e.one.addr, &doc()).await;
    d.send(json!({"type":"lock","locked":true})).await;
    d.expect("locked").await;
    eventually("the lock reaches Redis", || async {
        e.store
            .peek_view(CONSULT, "x", None, unix_now())
            .await
            .unwrap()
            .locked
    })
    .await;
    assert_eq!(
        link_check(e.two.addr, &patient()).await["code"],
        "consult_locked"
    );

    // An unreadable store: `service_unavailable`, audited as the check.
    e.redis.signal("-STOP");
    let reply = link_check(e.two.addr, &patient()).await;
    e.redis.signal("-CONT");
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["code"], "service_unavailable");
    let lines = e.two.audit_lines();
    let line = lines
        .iter()
        .find(|l| l["event"] == "link_checked" && l["reason"] == "service_unavailable")
        .expect("audited");
    assert_eq!(line["consult"], CONSULT);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["event"] == "link_checked")
            .count(),
        3,
        "revoked, locked, unavailable: one line each"
    );
}

// ---- the binary ----

/// Kills the child on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spreekkamer_signaling_reads_the_room_store_on_its_redis() {
    let redis = RedisServer::start().await;
    let dir = std::env::temp_dir().join(format!("spreekkamer-roomstore-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let (jwt, link) = (dir.join("jwt.secret"), dir.join("link.secret"));
    std::fs::write(&jwt, SECRET).unwrap();
    std::fs::write(&link, "a link secret of at least thirty-two bytes!!").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let _edge = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_spreekkamer"))
            .args([
                "signaling",
                "--redis",
                &redis.url(),
                "--listen",
                &addr.to_string(),
            ])
            .arg("--jwt-secret-file")
            .arg(&jwt)
            .arg("--link-secret-file")
            .arg(&link)
            .args(["--audit-log", "/dev/null"])
            .env_remove("SPREEKKAMER_JWT_SECRET")
            .env_remove("SPREEKKAMER_LINK_SECRET")
            .env_remove("SPREEKKAMER_REDIS")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("runs"),
    );
    eventually("the edge listens", || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    // What another edge wrote: this consult is locked, this patient removed.
    let store = redis.room_store().await;
    store.set_locked(CONSULT, true).await.unwrap();
    store.bar("edge-room-2", "sub-pat").await.unwrap();
    refused(addr, &patient(), None, "consult_locked").await;
    let other = token_with_sub("edge-room-2", Role::Patient, "Mw. P", "sub-pat");
    refused(addr, &other, None, "token_revoked").await;
    let _ = std::fs::remove_dir_all(&dir);
}
