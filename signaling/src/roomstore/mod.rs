//! What of a consult's room must hold on every edge and outlive the edge
//! that holds the room: revoked token ids, the lock, and who was removed or
//! denied (issue 11). The roster itself stays in the memory of the edge
//! that holds the consult (`directory.rs`); this is the part that other
//! edges, and an edge that rebuilds the room after its home edge died, must
//! know before they let anyone in.
//!
//! * [`RoomStore`] — the shared store, object-safe (`Arc<dyn RoomStore>`):
//!   [`MemoryRoomStore`] (one process; tests) and [`RedisRoomStore`] (a
//!   cluster's edges, the same Redis as the registry).
//! * **Reads** happen once per join and per HTTP API call of a cluster edge,
//!   before the directory is asked ([`Context::room_check`]). A store that
//!   cannot be read refuses the join with `service_unavailable`: nobody gets
//!   in unchecked. A link check reads the same without extending anything
//!   ([`RoomStore::peek_view`]).
//! * **Writes** ([`RoomWriter`]) follow a successful lock, unlock, remove,
//!   deny or revoke on this edge: queued without waiting (the directory's
//!   lock is never held across a network call), written by one task in
//!   order, retried a little, and counted in
//!   `spreekkamer_room_store_errors_total` when they fail. The edge that did
//!   it enforces it from memory at once; other edges see it once written.
//!
//! Bounds, so that a clinician token cannot fill Redis: per consult at most
//! [`MAX_FOREIGN_PER_CONSULT`] revoked ids the server cannot check and
//! [`MAX_INVITES_REVOKED_PER_CONSULT`] revoked invites (as `revocation.rs`),
//! and [`MAX_BARRED_PER_CONSULT`] barred people. A revoked id is kept until
//! its token can no longer join (`until`, as `revocation.rs` computes it,
//! extended to a revoked token's own `exp` when it turns up); the lock and
//! the barred list are kept [`ROOM_TTL`] after the consult's last join or
//! change.
//!
//! [`Context::room_check`]: crate::context::Context::room_check

mod memory;
mod redis;

pub use memory::MemoryRoomStore;
pub use redis::RedisRoomStore;

use crate::metrics::Metrics;
pub use crate::revocation::{MAX_FOREIGN_PER_CONSULT, MAX_INVITES_REVOKED_PER_CONSULT};
use async_trait::async_trait;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a consult's lock and barred list are kept after its last join,
/// lock or removal: the longest invite this server mints (24 h), and the
/// placement's safety expiry. A consult that is joined again within that
/// time keeps them; after a day without a join they are forgotten.
pub const ROOM_TTL: Duration = crate::token::MAX_INVITE_TTL;
/// People removed or denied, per consult (each needs a token of their own
/// for the consult; a consult has a handful).
pub const MAX_BARRED_PER_CONSULT: usize = 1_000;
/// Latest expiry kept (2100-01-01): a token whose `exp` is later is treated
/// as expiring then. Keeps numbers exact in Lua (doubles) and valid for
/// `EXPIREAT`.
pub const MAX_UNTIL: u64 = 4_102_444_800;
/// Writes queued for the writer task; beyond this they are dropped and
/// counted (`queue_full`), never waited for.
pub const WRITE_QUEUE: usize = 1_024;
/// Tries per write while the store is unavailable, with
/// [`RETRY_DELAY`] × attempt in between.
pub const WRITE_ATTEMPTS: u32 = 3;
pub const RETRY_DELAY: Duration = Duration::from_millis(200);
/// Longest time a join waits for the store, whatever the implementation
/// (the Redis one is bounded by its own timeout well before this).
pub const READ_BOUND: Duration = Duration::from_secs(5);

/// What a join (or an API call) needs to know from the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JoinView {
    /// The token's `jti` is revoked for this consult.
    pub revoked: bool,
    /// The token's `sub` was removed from or denied by this consult.
    pub barred: bool,
    /// The consult is locked.
    pub locked: bool,
}

impl JoinView {
    /// The token may not be used for this consult.
    pub fn refused(&self) -> bool {
        self.revoked || self.barred
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomStoreError {
    /// The store cannot be reached (Redis down, timeout): a join is refused
    /// with `service_unavailable`, a write is retried.
    Unavailable(String),
    /// A bad argument (consult id, `jti`, `sub`) or data in the store this
    /// code did not write.
    Invalid(String),
    /// The consult's bound for this kind of entry is reached: not stored.
    Full,
}

impl RoomStoreError {
    /// A metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            RoomStoreError::Unavailable(_) => "unavailable",
            RoomStoreError::Invalid(_) => "invalid",
            RoomStoreError::Full => "full",
        }
    }
}

impl fmt::Display for RoomStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoomStoreError::Unavailable(why) => write!(f, "room store unavailable: {why}"),
            RoomStoreError::Invalid(why) => write!(f, "room store: invalid: {why}"),
            RoomStoreError::Full => write!(f, "room store: the consult's bound is reached"),
        }
    }
}

impl std::error::Error for RoomStoreError {}

/// The shared part of a room; see the module docs. Times are seconds since
/// the epoch.
#[async_trait]
pub trait RoomStore: Send + Sync + 'static {
    /// Keep `jti` revoked for `consult` until `until` (an entry already
    /// held keeps the later of the two). `foreign`: an id the server cannot
    /// check (counted against [`MAX_FOREIGN_PER_CONSULT`], invites against
    /// [`MAX_INVITES_REVOKED_PER_CONSULT`]); entries whose `until` has passed
    /// at `now` do not count. Idempotent.
    async fn revoke(
        &self,
        consult: &str,
        jti: &str,
        foreign: bool,
        until: u64,
        now: u64,
    ) -> Result<(), RoomStoreError>;

    /// `sub` was removed from or denied by `consult`: their token no longer
    /// joins it. At most [`MAX_BARRED_PER_CONSULT`]. Idempotent.
    async fn bar(&self, consult: &str, sub: &str) -> Result<(), RoomStoreError>;

    /// Lock or unlock `consult`.
    async fn set_locked(&self, consult: &str, locked: bool) -> Result<(), RoomStoreError>;

    /// What a join of the holder of `sub` (with `jti`, expiring at `exp`)
    /// needs: revoked, barred, locked. A revoked token that turns up keeps
    /// its entry at least until its own `exp` (plus the verifier's leeway);
    /// a consult that is joined keeps its lock and barred list another
    /// [`ROOM_TTL`].
    async fn join_view(
        &self,
        consult: &str,
        sub: &str,
        jti: Option<&str>,
        exp: u64,
        now: u64,
    ) -> Result<JoinView, RoomStoreError>;

    /// [`join_view`](RoomStore::join_view) that only reads: nothing is
    /// extended, no key's expiry changes (the link check, which joins
    /// nothing, must leave the store as it found it).
    async fn peek_view(
        &self,
        consult: &str,
        sub: &str,
        jti: Option<&str>,
        now: u64,
    ) -> Result<JoinView, RoomStoreError>;
}

/// What goes into a store key: a real consult id (not a connectivity
/// check's).
fn check_consult(consult: &str) -> Result<(), RoomStoreError> {
    if crate::token::valid_consult_id(consult) {
        Ok(())
    } else {
        Err(RoomStoreError::Invalid("consult id".into()))
    }
}

/// A `jti` as tokens carry it.
fn check_jti(jti: &str) -> Result<(), RoomStoreError> {
    if crate::token::valid_jti(jti) {
        Ok(())
    } else {
        Err(RoomStoreError::Invalid("jti".into()))
    }
}

/// A `sub` as the verifier accepts it.
fn check_sub(sub: &str) -> Result<(), RoomStoreError> {
    if !sub.is_empty() && sub.len() <= 256 && !sub.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(RoomStoreError::Invalid("sub".into()))
    }
}

/// The ids a `join_view` reads by: the consult, the `sub` and the `jti`.
fn check_join(consult: &str, sub: &str, jti: Option<&str>) -> Result<(), RoomStoreError> {
    check_consult(consult)?;
    check_sub(sub)?;
    jti.map_or(Ok(()), check_jti)
}

/// A revocation's expiry for a token expiring at `exp`.
fn revoked_until(exp: u64) -> u64 {
    exp.saturating_add(crate::token::LEEWAY_SECS).min(MAX_UNTIL)
}

/// A write that follows something a clinician did on this edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomWrite {
    Revoke {
        consult: String,
        jti: String,
        foreign: bool,
        until: u64,
    },
    Bar {
        consult: String,
        sub: String,
    },
    Lock {
        consult: String,
        locked: bool,
    },
}

impl RoomWrite {
    fn op(&self) -> &'static str {
        match self {
            RoomWrite::Revoke { .. } => "revoke",
            RoomWrite::Bar { .. } => "bar",
            RoomWrite::Lock { .. } => "lock",
        }
    }

    async fn apply(&self, store: &dyn RoomStore) -> Result<(), RoomStoreError> {
        match self {
            RoomWrite::Revoke {
                consult,
                jti,
                foreign,
                until,
            } => {
                store
                    .revoke(consult, jti, *foreign, *until, crate::token::unix_now())
                    .await
            }
            RoomWrite::Bar { consult, sub } => store.bar(consult, sub).await,
            RoomWrite::Lock { consult, locked } => store.set_locked(consult, *locked).await,
        }
    }
}

/// The directory's side of the writes: [`RoomWriter::send`] never waits.
#[derive(Clone)]
pub struct RoomWriter {
    tx: mpsc::Sender<RoomWrite>,
    metrics: Arc<Metrics>,
}

impl RoomWriter {
    /// Start the writer task (needs a tokio runtime). It ends when every
    /// `RoomWriter` is dropped.
    pub fn start(store: Arc<dyn RoomStore>, metrics: Arc<Metrics>) -> RoomWriter {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(run_writer(store, rx, metrics.clone()));
        RoomWriter { tx, metrics }
    }

    /// Queue `write`; if the queue is full (the store has been slow for a
    /// while) it is dropped and counted.
    pub fn send(&self, write: RoomWrite) {
        if let Err(e) = self.tx.try_send(write) {
            let write = match e {
                mpsc::error::TrySendError::Full(w) | mpsc::error::TrySendError::Closed(w) => w,
            };
            self.metrics.room_store_error(write.op(), "queue_full");
            log::warn!(
                "room store: {} not written: the write queue is full",
                write.op()
            );
        }
    }
}

async fn run_writer(
    store: Arc<dyn RoomStore>,
    mut rx: mpsc::Receiver<RoomWrite>,
    metrics: Arc<Metrics>,
) {
    let mut failing = false;
    while let Some(write) = rx.recv().await {
        let mut attempt = 1;
        let result = loop {
            match write.apply(store.as_ref()).await {
                Err(RoomStoreError::Unavailable(_)) if attempt < WRITE_ATTEMPTS => {
                    tokio::time::sleep(RETRY_DELAY * attempt).await;
                    attempt += 1;
                }
                other => break other,
            }
        };
        match result {
            Ok(()) if failing => {
                log::info!("room store: writes succeed again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) => {
                metrics.room_store_error(write.op(), e.reason());
                // Errors carry no ids; the metric counts every one, the log
                // says it once per streak (a full consult every time).
                if !failing || e == RoomStoreError::Full {
                    log::warn!("room store: {} not written: {e}", write.op());
                }
                failing = !matches!(e, RoomStoreError::Full);
            }
        }
    }
}
