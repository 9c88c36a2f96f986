//! [`RoomStore`] in one process's memory: for tests (two directories
//! sharing one store stand for two edges) and anything that runs without
//! Redis. Same rules and bounds as the Redis store.

use super::{
    JoinView, MAX_BARRED_PER_CONSULT, MAX_FOREIGN_PER_CONSULT, MAX_INVITES_REVOKED_PER_CONSULT,
    MAX_UNTIL, ROOM_TTL, RoomStore, RoomStoreError, check_consult, check_join, check_jti,
    check_sub, revoked_until,
};
use async_trait::async_trait;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

/// Consults held at once; beyond it, consults with nothing left in force
/// are dropped, and if none is, a new one is refused (`Full`).
const MAX_CONSULTS: usize = 100_000;

#[derive(Default)]
struct Room {
    /// jti → (until, foreign).
    revoked: HashMap<String, (u64, bool)>,
    locked_until: Option<u64>,
    barred: HashSet<String>,
    barred_until: u64,
}

impl Room {
    fn prune(&mut self, now: u64) {
        self.revoked.retain(|_, (until, _)| *until >= now);
        if self.locked_until.is_some_and(|u| u < now) {
            self.locked_until = None;
        }
        if self.barred_until < now {
            self.barred.clear();
        }
    }

    fn is_empty(&self) -> bool {
        self.revoked.is_empty() && self.locked_until.is_none() && self.barred.is_empty()
    }
}

/// [`RoomStore`] under a mutex.
#[derive(Default)]
pub struct MemoryRoomStore {
    rooms: Mutex<HashMap<String, Room>>,
}

impl MemoryRoomStore {
    pub fn new() -> MemoryRoomStore {
        MemoryRoomStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Room>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn room_ttl() -> u64 {
    ROOM_TTL.as_secs()
}

/// The consult's room, created if there is room for it.
fn room<'a>(
    rooms: &'a mut HashMap<String, Room>,
    consult: &str,
    now: u64,
) -> Result<&'a mut Room, RoomStoreError> {
    if !rooms.contains_key(consult) && rooms.len() >= MAX_CONSULTS {
        rooms.retain(|_, r| {
            r.prune(now);
            !r.is_empty()
        });
        if rooms.len() >= MAX_CONSULTS {
            return Err(RoomStoreError::Full);
        }
    }
    Ok(rooms.entry(consult.to_string()).or_default())
}

#[async_trait]
impl RoomStore for MemoryRoomStore {
    async fn revoke(
        &self,
        consult: &str,
        jti: &str,
        foreign: bool,
        until: u64,
        now: u64,
    ) -> Result<(), RoomStoreError> {
        check_consult(consult)?;
        check_jti(jti)?;
        let until = until.min(MAX_UNTIL);
        let mut rooms = self.lock();
        let room = room(&mut rooms, consult, now)?;
        if let Some((held, _)) = room.revoked.get_mut(jti) {
            *held = (*held).max(until);
            return Ok(());
        }
        room.revoked.retain(|_, (u, _)| *u >= now);
        let count = room.revoked.values().filter(|(_, f)| *f == foreign).count();
        let cap = if foreign {
            MAX_FOREIGN_PER_CONSULT
        } else {
            MAX_INVITES_REVOKED_PER_CONSULT
        };
        if count >= cap {
            return Err(RoomStoreError::Full);
        }
        room.revoked.insert(jti.to_string(), (until, foreign));
        Ok(())
    }

    async fn bar(&self, consult: &str, sub: &str) -> Result<(), RoomStoreError> {
        check_consult(consult)?;
        check_sub(sub)?;
        let now = crate::token::unix_now();
        let mut rooms = self.lock();
        let room = room(&mut rooms, consult, now)?;
        room.prune(now);
        if !room.barred.contains(sub) {
            if room.barred.len() >= MAX_BARRED_PER_CONSULT {
                return Err(RoomStoreError::Full);
            }
            room.barred.insert(sub.to_string());
        }
        room.barred_until = now.saturating_add(room_ttl());
        Ok(())
    }

    async fn set_locked(&self, consult: &str, locked: bool) -> Result<(), RoomStoreError> {
        check_consult(consult)?;
        let now = crate::token::unix_now();
        let mut rooms = self.lock();
        if locked {
            room(&mut rooms, consult, now)?.locked_until = Some(now.saturating_add(room_ttl()));
        } else if let Some(room) = rooms.get_mut(consult) {
            room.locked_until = None;
        }
        Ok(())
    }

    async fn peek_view(
        &self,
        consult: &str,
        sub: &str,
        jti: Option<&str>,
        now: u64,
    ) -> Result<JoinView, RoomStoreError> {
        check_join(consult, sub, jti)?;
        let rooms = self.lock();
        let Some(room) = rooms.get(consult) else {
            return Ok(JoinView::default());
        };
        Ok(JoinView {
            revoked: jti
                .and_then(|j| room.revoked.get(j))
                .is_some_and(|(until, _)| *until >= now),
            barred: room.barred_until >= now && room.barred.contains(sub),
            locked: room.locked_until.is_some_and(|u| u >= now),
        })
    }

    async fn join_view(
        &self,
        consult: &str,
        sub: &str,
        jti: Option<&str>,
        exp: u64,
        now: u64,
    ) -> Result<JoinView, RoomStoreError> {
        check_join(consult, sub, jti)?;
        let mut rooms = self.lock();
        let Some(room) = rooms.get_mut(consult) else {
            return Ok(JoinView::default());
        };
        let mut view = JoinView::default();
        if let Some((until, _)) = jti
            .and_then(|j| room.revoked.get_mut(j))
            .filter(|(until, _)| *until >= now)
        {
            view.revoked = true;
            *until = (*until).max(revoked_until(exp));
        }
        let refreshed = now.saturating_add(room_ttl());
        if let Some(u) = room.locked_until.as_mut().filter(|u| **u >= now) {
            view.locked = true;
            *u = refreshed;
        }
        if room.barred_until >= now && !room.barred.is_empty() {
            view.barred = room.barred.contains(sub);
            room.barred_until = refreshed;
        }
        Ok(view)
    }
}
