//! [`RoomStore`] in Redis: the same Redis as the registry, a connection of
//! its own, the same rules (every call bounded by `op_timeout`, replies
//! checked, the connection back by itself when Redis is).
//!
//! Keys, under the prefix (default `spreekkamer:`), `{consult}` a valid
//! consult id:
//!
//! * `room:{consult}:revoked` — a hash: `H(jti)` → `"{until}:f"` (an id the
//!   server cannot check) or `"{until}:i"` (an invite), plus `max` → the
//!   latest `until`; the key expires (`EXPIREAT`) at `max`.
//! * `room:{consult}:locked` — `"1"` while locked, expiring [`ROOM_TTL`]
//!   after the last lock or join.
//! * `room:{consult}:barred` — a set of `H(sub)`, expiring [`ROOM_TTL`]
//!   after the last removal or join.
//!
//! `H(x)` is SHA-256 over a label, the consult id and `x` (hex): Redis holds
//! no `sub` and no `jti` as such, and the same person has unrelated entries
//! in two consults. It is pseudonymous, not secret: whoever can read Redis
//! and guess a `sub` can check the guess.
//!
//! Adding an entry is a Lua script that counts first (bounds in the module
//! docs of `roomstore`), and the join read is one script that also extends
//! what it found.

use super::{
    JoinView, MAX_BARRED_PER_CONSULT, MAX_FOREIGN_PER_CONSULT, MAX_INVITES_REVOKED_PER_CONSULT,
    MAX_UNTIL, ROOM_TTL, RoomStore, RoomStoreError, check_consult, check_join, check_jti,
    check_sub, revoked_until,
};
use crate::registry::RegistryError;
use ::redis::aio::ConnectionManager;
use ::redis::{RedisError, Script, Value};
use async_trait::async_trait;
use sha2::{Digest, Sha256};
use std::fmt;
use std::future::Future;
use std::time::Duration;

/// Shared by the scripts: an entry of the `revoked` hash.
const PARSE_LUA: &str = r#"
local function parse(v)
  if type(v) ~= 'string' or #v > 24 then return nil end
  local u, k = string.match(v, '^(%d+):([fi])$')
  if not u then return nil end
  return tonumber(u), k
end
local function raise_max(key, untl)
  local max = tonumber(redis.call('HGET', key, 'max') or '0') or 0
  if untl > max then
    redis.call('HSET', key, 'max', tostring(untl))
    max = untl
  end
  redis.call('EXPIREAT', key, max)
end
"#;

/// KEYS: revoked. ARGV: field, until, kind (`f`/`i`), now, cap of kind.
/// 1 stored (or already held), 0 the consult's cap is reached.
const REVOKE_LUA: &str = r#"
local key, field = KEYS[1], ARGV[1]
local untl, kind, now, cap = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local held, held_kind = parse(redis.call('HGET', key, field))
if held then
  if untl > held then
    redis.call('HSET', key, field, string.format('%d:%s', untl, held_kind))
  end
else
  local count = 0
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    local f = all[i]
    if f ~= 'max' then
      local u, k = parse(all[i + 1])
      if not u or u < now then
        redis.call('HDEL', key, f)
      elseif k == kind then
        count = count + 1
      end
    end
  end
  if count >= cap then return 0 end
  redis.call('HSET', key, field, string.format('%d:%s', untl, kind))
end
raise_max(key, untl)
return 1
"#;

/// KEYS: barred. ARGV: member, cap, ttl (ms). 1 stored, 0 full.
const BAR_LUA: &str = r#"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
  redis.call('SADD', KEYS[1], ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#;

/// KEYS: revoked, locked, barred. ARGV: jti field (`""`: none), the
/// token's exp + leeway, now, sub member, ttl (ms), `1` to extend what was
/// found (a join) or `0` to only read (a link check).
/// `{revoked, barred, locked}`; an error for what this code did not write.
const JOIN_LUA: &str = r#"
local revoked = 0
if ARGV[1] ~= '' then
  local v = redis.call('HGET', KEYS[1], ARGV[1])
  if v then
    local u, k = parse(v)
    if not u then return redis.error_reply('revoked entry not ours') end
    if u >= tonumber(ARGV[3]) then
      revoked = 1
      local exp = tonumber(ARGV[2])
      if ARGV[6] == '1' and exp > u then
        redis.call('HSET', KEYS[1], ARGV[1], string.format('%d:%s', exp, k))
        raise_max(KEYS[1], exp)
      end
    end
  end
end
local locked = redis.call('GET', KEYS[2])
if locked and locked ~= '1' then return redis.error_reply('lock not ours') end
if locked and ARGV[6] == '1' then redis.call('PEXPIRE', KEYS[2], ARGV[5]) end
local barred = redis.call('SISMEMBER', KEYS[3], ARGV[4])
if ARGV[6] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
return {revoked, barred, locked and 1 or 0}
"#;

struct Scripts {
    revoke: Script,
    bar: Script,
    join: Script,
}

/// [`RoomStore`] in Redis; see the module docs.
pub struct RedisRoomStore {
    conn: ConnectionManager,
    prefix: String,
    op_timeout: Duration,
    scripts: Scripts,
}

impl fmt::Debug for RedisRoomStore {
    // Not derived: the connection holds the URL, and with it maybe a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRoomStore")
            .field("prefix", &self.prefix)
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

fn from_registry(e: RegistryError) -> RoomStoreError {
    match e {
        RegistryError::Invalid(why) => RoomStoreError::Invalid(why),
        RegistryError::Unavailable(why) => RoomStoreError::Unavailable(why),
        RegistryError::NoNode => RoomStoreError::Unavailable("no node".into()),
    }
}

impl RedisRoomStore {
    /// Connect to `url` like [`RedisRegistry::connect`]: checked with a
    /// PING within `op_timeout`, then reconnecting by itself.
    ///
    /// [`RedisRegistry::connect`]: crate::registry::RedisRegistry::connect
    pub async fn connect(
        url: &str,
        prefix: &str,
        op_timeout: Duration,
    ) -> Result<RedisRoomStore, RoomStoreError> {
        if !crate::registry::valid_prefix(prefix) {
            return Err(RoomStoreError::Invalid("key prefix".into()));
        }
        if op_timeout.is_zero() {
            return Err(RoomStoreError::Invalid("operation timeout".into()));
        }
        let conn = crate::registry::connection_manager(url, op_timeout).map_err(from_registry)?;
        let store = RedisRoomStore {
            conn,
            prefix: prefix.to_string(),
            op_timeout,
            scripts: Scripts {
                revoke: Script::new(&format!("{PARSE_LUA}{REVOKE_LUA}")),
                bar: Script::new(BAR_LUA),
                join: Script::new(&format!("{PARSE_LUA}{JOIN_LUA}")),
            },
        };
        let mut conn = store.conn.clone();
        let pong: Value = store
            .bounded(::redis::cmd("PING").query_async(&mut conn))
            .await?;
        match pong {
            Value::SimpleString(s) if s == "PONG" => Ok(store),
            _ => Err(RoomStoreError::Invalid("PING answered without PONG".into())),
        }
    }

    fn key(&self, consult: &str, what: &str) -> String {
        format!("{}room:{consult}:{what}", self.prefix)
    }

    /// One Redis round trip, bounded by `op_timeout`.
    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, RoomStoreError> {
        match tokio::time::timeout(self.op_timeout, op).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(from_registry(crate::registry::classify(&e))),
            Err(_) => Err(RoomStoreError::Unavailable(format!(
                "no answer within {:?}",
                self.op_timeout
            ))),
        }
    }

    /// A script, tried once more if the first try failed fast (the first
    /// call after an outage gets the stale error; see `registry/redis.rs`).
    async fn eval(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<Value, RoomStoreError> {
        crate::registry::eval_retrying(&self.conn, self.op_timeout, script, keys, args)
            .await
            .map_err(from_registry)
    }

    async fn command(&self, cmd: &::redis::Cmd) -> Result<Value, RoomStoreError> {
        crate::registry::query_retrying(&self.conn, self.op_timeout, cmd)
            .await
            .map_err(from_registry)
    }
}

/// `H(x)`: SHA-256 over the label, consult and value, each length-prefixed.
fn hashed(what: &str, consult: &str, value: &str) -> String {
    let mut h = Sha256::new();
    for part in ["spreekkamer room v1", what, consult, value] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn ttl_ms() -> String {
    ROOM_TTL.as_millis().to_string()
}

/// A script's 1 (done) or 0 (full).
fn stored(reply: Value) -> Result<(), RoomStoreError> {
    match reply {
        Value::Int(1) => Ok(()),
        Value::Int(0) => Err(RoomStoreError::Full),
        _ => Err(RoomStoreError::Invalid("unexpected reply".into())),
    }
}

fn flag(v: &Value) -> Result<bool, RoomStoreError> {
    match v {
        Value::Int(0) => Ok(false),
        Value::Int(1) => Ok(true),
        _ => Err(RoomStoreError::Invalid("unexpected reply".into())),
    }
}

#[async_trait]
impl RoomStore for RedisRoomStore {
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
        let (kind, cap) = if foreign {
            ("f", MAX_FOREIGN_PER_CONSULT)
        } else {
            ("i", MAX_INVITES_REVOKED_PER_CONSULT)
        };
        let reply = self
            .eval(
                &self.scripts.revoke,
                &[&self.key(consult, "revoked")],
                &[
                    &hashed("jti", consult, jti),
                    &until.min(MAX_UNTIL).to_string(),
                    kind,
                    &now.min(MAX_UNTIL).to_string(),
                    &cap.to_string(),
                ],
            )
            .await?;
        stored(reply)
    }

    async fn bar(&self, consult: &str, sub: &str) -> Result<(), RoomStoreError> {
        check_consult(consult)?;
        check_sub(sub)?;
        let reply = self
            .eval(
                &self.scripts.bar,
                &[&self.key(consult, "barred")],
                &[
                    &hashed("sub", consult, sub),
                    &MAX_BARRED_PER_CONSULT.to_string(),
                    &ttl_ms(),
                ],
            )
            .await?;
        stored(reply)
    }

    async fn set_locked(&self, consult: &str, locked: bool) -> Result<(), RoomStoreError> {
        check_consult(consult)?;
        let key = self.key(consult, "locked");
        let cmd = if locked {
            let mut c = ::redis::cmd("SET");
            c.arg(&key).arg("1").arg("PX").arg(ttl_ms());
            c
        } else {
            let mut c = ::redis::cmd("DEL");
            c.arg(&key);
            c
        };
        match self.command(&cmd).await? {
            Value::Okay | Value::Int(_) => Ok(()),
            Value::SimpleString(s) if s == "OK" => Ok(()),
            _ => Err(RoomStoreError::Invalid("unexpected reply".into())),
        }
    }

    async fn join_view(
        &self,
        consult: &str,
        sub: &str,
        jti: Option<&str>,
        exp: u64,
        now: u64,
    ) -> Result<JoinView, RoomStoreError> {
        self.view(consult, sub, jti, Some(exp), now).await
    }

    async fn peek_view(
        &self,
        consult: &str,
        sub: &str,
        jti: Option<&str>,
        now: u64,
    ) -> Result<JoinView, RoomStoreError> {
        self.view(consult, sub, jti, None, now).await
    }
}

impl RedisRoomStore {
    /// The join read; `extend_to`: the token's `exp` for a join (what was
    /// found is extended), `None` for a link check (only read).
    async fn view(
        &self,
        consult: &str,
        sub: &str,
        jti: Option<&str>,
        extend_to: Option<u64>,
        now: u64,
    ) -> Result<JoinView, RoomStoreError> {
        check_join(consult, sub, jti)?;
        let exp = extend_to.unwrap_or(0);
        let field = jti.map_or_else(String::new, |j| hashed("jti", consult, j));
        let reply = self
            .eval(
                &self.scripts.join,
                &[
                    &self.key(consult, "revoked"),
                    &self.key(consult, "locked"),
                    &self.key(consult, "barred"),
                ],
                &[
                    &field,
                    &revoked_until(exp).to_string(),
                    &now.min(MAX_UNTIL).to_string(),
                    &hashed("sub", consult, sub),
                    &ttl_ms(),
                    if extend_to.is_some() { "1" } else { "0" },
                ],
            )
            .await?;
        let Value::Array(flags) = reply else {
            return Err(RoomStoreError::Invalid("unexpected reply".into()));
        };
        let [revoked, barred, locked] = flags.as_slice() else {
            return Err(RoomStoreError::Invalid("unexpected reply".into()));
        };
        Ok(JoinView {
            revoked: flag(revoked)?,
            barred: flag(barred)?,
            locked: flag(locked)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_differ_by_consult_and_kind_and_are_fixed_size() {
        let a = hashed("sub", "c1", "patient-1");
        assert_eq!(a.len(), 64);
        assert_ne!(a, hashed("sub", "c2", "patient-1"));
        assert_ne!(a, hashed("jti", "c1", "patient-1"));
        // Length prefixes: no shifting of bytes between parts.
        assert_ne!(hashed("sub", "c1x", "y"), hashed("sub", "c1", "xy"));
    }
}
