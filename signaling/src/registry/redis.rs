//! The registry in Redis, shared by every edge and media node of a cluster.
//!
//! Keys, all under a prefix (default [`DEFAULT_PREFIX`]):
//!
//! * `node:{id}` — a hash with `announce_ip`, `link_addr`, `capacity`, `load`,
//!   `consults`, `draining` (`0`/`1`), expiring (`PEXPIRE`) `ttl` after the
//!   node's last heartbeat;
//! * `nodes` — a set of node ids; ids whose `node:` key expired are pruned by
//!   the scripts that read it;
//! * `placement:{consult}` — the id of the node that runs the consult, with a
//!   safety ttl of [`PLACEMENT_TTL`] that every `place` refreshes.
//!
//! Everything that must be atomic is one Lua script (Redis runs a script
//! with nothing in between): `place` ("the current node if alive, else pick
//! one and SET it"), `replace` (compare-and-set on the dead node), `release`
//! (delete only if it still points at the node), `heartbeat` (rewrite the
//! hash, set its expiry, add to the set). The scripts reach `node:` keys they
//! find in the set, so this needs one Redis (or a Sentinel-managed primary),
//! not Redis Cluster.
//!
//! Redis is a network peer: every call is bounded by `op_timeout` (a dead
//! or stopped Redis gives [`RegistryError::Unavailable`], never a hang), and
//! everything it sends back is checked (lengths, numbers, addresses) before
//! use: a record this code did not write is skipped or reported as
//! [`RegistryError::Invalid`]. The connection manager reconnects by itself,
//! so the same value works again when Redis is back; scripts are loaded again
//! on `NOSCRIPT`.

use super::{
    MAX_NODE_ID_LEN, MAX_NODES, NodeInfo, PLACEMENT_TTL, Registry, RegistryError, check_consult,
    check_heartbeat, check_node_id, valid_node_id,
};
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, ErrorKind, RedisError, Script, ServerErrorKind, Value};
use async_trait::async_trait;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub const DEFAULT_PREFIX: &str = "spreekkamer:";
const MAX_PREFIX_LEN: usize = 64;
/// Longest field value read back (addresses are at most 47 bytes).
const MAX_FIELD_LEN: usize = 64;
/// Longest error text from Redis that goes into an error (and a log line).
const MAX_ERROR_TEXT: usize = 200;
/// Fields per node record in script replies: id and the six hash fields.
const RECORD_LEN: usize = 7;

/// Shared by the scripts that read nodes. ARGV[1] is the `node:` key prefix.
/// `record(id)` is the node's record if its entry is alive and holds what
/// `heartbeat` writes, else nil; `choose` mirrors `registry::choose`.
const COMMON_LUA: &str = r#"
local node_prefix = ARGV[1]
local function valid_id(id)
  return type(id) == 'string' and #id >= 1 and #id <= 64
    and string.find(id, '^[A-Za-z0-9%._%-]+$') ~= nil
end
local function num(s)
  if type(s) == 'string' and #s >= 1 and #s <= 10 and string.find(s, '^%d+$') then
    return tonumber(s)
  end
  return nil
end
local function record(id)
  if not valid_id(id) then return nil end
  local f = redis.pcall('HMGET', node_prefix .. id,
    'announce_ip', 'link_addr', 'capacity', 'load', 'consults', 'draining')
  if type(f) ~= 'table' or f.err then return nil end
  for i = 1, 6 do
    if type(f[i]) ~= 'string' or #f[i] > 64 then return nil end
  end
  if not (num(f[3]) and num(f[4]) and num(f[5])) then return nil end
  if f[6] ~= '0' and f[6] ~= '1' then return nil end
  return {id, f[1], f[2], f[3], f[4], f[5], f[6]}
end
local function prune(nodes_key, id)
  if not valid_id(id) or redis.call('EXISTS', node_prefix .. id) == 0 then
    redis.call('SREM', nodes_key, id)
  end
end
-- Least loaded live node that takes new consults: smallest load/capacity,
-- compared by cross-multiplication (exact: capacity <= 10^6), ties by id.
local function choose(nodes_key, exclude)
  local best, best_load, best_cap
  for _, id in ipairs(redis.call('SMEMBERS', nodes_key)) do
    local r = record(id)
    if not r then
      prune(nodes_key, id)
    elseif id ~= exclude and r[7] == '0' then
      local cap, load = tonumber(r[4]), tonumber(r[5])
      if load < cap then
        if not best or load * best_cap < best_load * cap
          or (load * best_cap == best_load * cap and id < best[1]) then
          best, best_load, best_cap = r, load, cap
        end
      end
    end
  end
  return best
end
"#;

/// KEYS: placement, nodes. ARGV: node prefix, placement ttl (ms), and for
/// `replace` the dead node. The current placement if its node is alive (and
/// is not the dead node), refreshed; else a new node, SET as the placement;
/// false if none has room.
const PLACE_LUA: &str = r#"
local dead = ARGV[3]
local current = redis.pcall('GET', KEYS[1])
if type(current) == 'string' and current ~= dead then
  local r = record(current)
  if r then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return r
  end
end
local best = choose(KEYS[2], dead)
if not best then return false end
redis.call('SET', KEYS[1], best[1], 'PX', ARGV[2])
-- Until the node's next heartbeat reports its real load, count the new
-- consult as two participants, so consults placed in one burst spread.
redis.call('HINCRBY', node_prefix .. best[1], 'load', NEW_CONSULT_LOAD)
return best
"#;

/// KEYS: nodes. ARGV: node prefix. Every live record, flattened; prunes the
/// set.
const NODES_LUA: &str = r#"
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local r = record(id)
  if r then
    for i = 1, 7 do out[#out + 1] = r[i] end
  else
    prune(KEYS[1], id)
  end
end
return out
"#;

/// KEYS: node, nodes. ARGV: id, ttl (ms), announce_ip, link_addr, capacity,
/// load, consults, draining. DEL first: a key of another type (or with stale
/// fields) is replaced whole.
const HEARTBEAT_LUA: &str = r#"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'announce_ip', ARGV[3], 'link_addr', ARGV[4],
  'capacity', ARGV[5], 'load', ARGV[6], 'consults', ARGV[7], 'draining', ARGV[8])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"#;

/// KEYS: placement. ARGV: node. Deletes only if it still points there.
const RELEASE_LUA: &str = r#"
if redis.pcall('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;

/// KEYS: placement. ARGV: node prefix, placement ttl (ms), the claiming
/// node. The live holder (refreshed if it is the claimer), else the claimer
/// if it is alive (SET), else false.
const CLAIM_LUA: &str = r#"
local current = redis.pcall('GET', KEYS[1])
if type(current) == 'string' and record(current) then
  if current == ARGV[3] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
  return current
end
if not record(ARGV[3]) then return false end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
return ARGV[3]
"#;

/// KEYS: node, nodes. ARGV: id.
const DEREGISTER_LUA: &str = r#"
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"#;

struct Scripts {
    place: Script,
    nodes: Script,
    heartbeat: Script,
    release: Script,
    deregister: Script,
    claim: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            place: Script::new(&format!(
                "{COMMON_LUA}local NEW_CONSULT_LOAD = {}\n{PLACE_LUA}",
                super::NEW_CONSULT_LOAD
            )),
            nodes: Script::new(&format!("{COMMON_LUA}{NODES_LUA}")),
            heartbeat: Script::new(HEARTBEAT_LUA),
            release: Script::new(RELEASE_LUA),
            deregister: Script::new(DEREGISTER_LUA),
            claim: Script::new(&format!("{COMMON_LUA}{CLAIM_LUA}")),
        }
    }
}

/// Errors since start, for the lead's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    /// Redis unreachable or too slow.
    pub unavailable: u64,
    /// Replies (or records) this code did not write.
    pub invalid: u64,
}

/// [`Registry`] in Redis; see the module docs.
pub struct RedisRegistry {
    conn: ConnectionManager,
    prefix: String,
    op_timeout: Duration,
    scripts: Scripts,
    unavailable: AtomicU64,
    invalid: AtomicU64,
}

impl fmt::Debug for RedisRegistry {
    // Not derived: the client holds the URL, and with it maybe a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRegistry")
            .field("prefix", &self.prefix)
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisRegistry {
    /// Connect to `url` (`redis://[:password@]host:port[/db]`) and check it
    /// answers a PING within `op_timeout`: a wrong address fails at start,
    /// with [`RegistryError::Unavailable`]. Once connected, the value
    /// reconnects by itself whenever Redis goes away and comes back.
    pub async fn connect(
        url: &str,
        prefix: &str,
        op_timeout: Duration,
    ) -> Result<RedisRegistry, RegistryError> {
        if !valid_prefix(prefix) {
            return Err(RegistryError::Invalid("key prefix".into()));
        }
        if op_timeout.is_zero() {
            return Err(RegistryError::Invalid("operation timeout".into()));
        }
        let conn = connection_manager(url, op_timeout)?;
        let registry = RedisRegistry {
            conn,
            prefix: prefix.to_string(),
            op_timeout,
            scripts: Scripts::new(),
            unavailable: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
        };
        let mut conn = registry.conn.clone();
        let pong: Value = registry
            .bounded(::redis::cmd("PING").query_async(&mut conn))
            .await?;
        match pong {
            Value::SimpleString(s) if s == "PONG" => Ok(registry),
            _ => Err(registry.invalid("PING answered without PONG")),
        }
    }

    pub fn error_counts(&self) -> ErrorCounts {
        ErrorCounts {
            unavailable: self.unavailable.load(Ordering::Relaxed),
            invalid: self.invalid.load(Ordering::Relaxed),
        }
    }

    fn node_prefix(&self) -> String {
        format!("{}node:", self.prefix)
    }

    fn node_key(&self, id: &str) -> String {
        format!("{}node:{id}", self.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    fn placement_key(&self, consult: &str) -> String {
        format!("{}placement:{consult}", self.prefix)
    }

    fn invalid(&self, why: impl Into<String>) -> RegistryError {
        self.invalid.fetch_add(1, Ordering::Relaxed);
        RegistryError::Invalid(why.into())
    }

    /// One Redis round trip, bounded by `op_timeout`.
    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, RegistryError> {
        let error = match tokio::time::timeout(self.op_timeout, op).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => classify(&e),
            Err(_) => RegistryError::Unavailable(format!("no answer within {:?}", self.op_timeout)),
        };
        match error {
            RegistryError::Invalid(_) => self.invalid.fetch_add(1, Ordering::Relaxed),
            _ => self.unavailable.fetch_add(1, Ordering::Relaxed),
        };
        Err(error)
    }

    async fn eval(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<Value, RegistryError> {
        let result = eval_retrying(&self.conn, self.op_timeout, script, keys, args).await;
        if let Err(e) = &result {
            match e {
                RegistryError::Invalid(_) => self.invalid.fetch_add(1, Ordering::Relaxed),
                _ => self.unavailable.fetch_add(1, Ordering::Relaxed),
            };
        }
        result
    }

    /// The reply of the place script: a record, or nil for "no node".
    fn placed(&self, reply: Value) -> Result<NodeInfo, RegistryError> {
        match reply {
            Value::Nil => Err(RegistryError::NoNode),
            Value::Array(fields) => parse_record(&fields).map_err(|why| self.invalid(why)),
            _ => Err(self.invalid("place: unexpected reply")),
        }
    }

    async fn place_excluding(
        &self,
        consult: &str,
        dead_node: Option<&str>,
    ) -> Result<NodeInfo, RegistryError> {
        let ttl = PLACEMENT_TTL.as_millis().to_string();
        let reply = self
            .eval(
                &self.scripts.place,
                &[&self.placement_key(consult), &self.nodes_key()],
                // An empty string is never a node id.
                &[&self.node_prefix(), &ttl, dead_node.unwrap_or("")],
            )
            .await?;
        self.placed(reply)
    }
}

#[async_trait]
impl Registry for RedisRegistry {
    async fn heartbeat(&self, node: &NodeInfo, ttl: Duration) -> Result<(), RegistryError> {
        check_heartbeat(node, ttl)?;
        self.eval(
            &self.scripts.heartbeat,
            &[&self.node_key(&node.id), &self.nodes_key()],
            &[
                &node.id,
                &ttl.as_millis().to_string(),
                &node.announce_ip.to_string(),
                &node.link_addr.to_string(),
                &node.capacity.to_string(),
                &node.load.to_string(),
                &node.consults.to_string(),
                if node.draining { "1" } else { "0" },
            ],
        )
        .await?;
        Ok(())
    }

    async fn deregister(&self, id: &str) -> Result<(), RegistryError> {
        check_node_id(id)?;
        self.eval(
            &self.scripts.deregister,
            &[&self.node_key(id), &self.nodes_key()],
            &[id],
        )
        .await?;
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, RegistryError> {
        let reply = self
            .eval(
                &self.scripts.nodes,
                &[&self.nodes_key()],
                &[&self.node_prefix()],
            )
            .await?;
        let Value::Array(fields) = reply else {
            return Err(self.invalid("nodes: unexpected reply"));
        };
        if fields.len() % RECORD_LEN != 0 || fields.len() / RECORD_LEN > MAX_NODES {
            return Err(self.invalid("nodes: reply of the wrong size"));
        }
        let mut nodes = Vec::with_capacity(fields.len() / RECORD_LEN);
        for record in fields.chunks(RECORD_LEN) {
            // The script checked ids and numbers; an address that does not
            // parse is somebody else's record: skipped, counted.
            match parse_record(record) {
                Ok(node) => nodes.push(node),
                Err(_) => {
                    self.invalid.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    async fn place(&self, consult: &str) -> Result<NodeInfo, RegistryError> {
        check_consult(consult)?;
        self.place_excluding(consult, None).await
    }

    async fn replace(&self, consult: &str, dead_node: &str) -> Result<NodeInfo, RegistryError> {
        check_consult(consult)?;
        check_node_id(dead_node)?;
        self.place_excluding(consult, Some(dead_node)).await
    }

    async fn release(&self, consult: &str, node: &str) -> Result<(), RegistryError> {
        check_consult(consult)?;
        check_node_id(node)?;
        self.eval(
            &self.scripts.release,
            &[&self.placement_key(consult)],
            &[node],
        )
        .await?;
        Ok(())
    }

    async fn claim(&self, consult: &str, node: &str) -> Result<String, RegistryError> {
        check_consult(consult)?;
        check_node_id(node)?;
        let ttl = PLACEMENT_TTL.as_millis().to_string();
        let reply = self
            .eval(
                &self.scripts.claim,
                &[&self.placement_key(consult)],
                &[&self.node_prefix(), &ttl, node],
            )
            .await?;
        match reply {
            Value::Nil => Err(RegistryError::NoNode),
            Value::BulkString(b) => match std::str::from_utf8(&b) {
                Ok(id) if valid_node_id(id) => Ok(id.to_string()),
                _ => Err(self.invalid("claim: not a node id")),
            },
            _ => Err(self.invalid("claim: unexpected reply")),
        }
    }

    async fn placement(&self, consult: &str) -> Result<Option<String>, RegistryError> {
        check_consult(consult)?;
        let mut conn = self.conn.clone();
        // GETRANGE: at most one byte more than an id, however long the value.
        let reply: Value = self
            .bounded(
                ::redis::cmd("GETRANGE")
                    .arg(self.placement_key(consult))
                    .arg(0)
                    .arg(MAX_NODE_ID_LEN)
                    .query_async(&mut conn),
            )
            .await?;
        match reply {
            Value::Nil => Ok(None),
            Value::BulkString(b) if b.is_empty() => Ok(None),
            Value::BulkString(b) => match std::str::from_utf8(&b) {
                Ok(id) if valid_node_id(id) => Ok(Some(id.to_string())),
                _ => Err(self.invalid("placement: not a node id")),
            },
            _ => Err(self.invalid("placement: unexpected reply")),
        }
    }
}

/// One Redis operation within `timeout`, its error classified.
async fn bounded_op<T>(
    timeout: Duration,
    op: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, RegistryError> {
    match tokio::time::timeout(timeout, op).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(classify(&e)),
        Err(_) => Err(RegistryError::Unavailable(format!(
            "no answer within {timeout:?}"
        ))),
    }
}

/// Run a command on `conn` within `timeout`, once more if it failed fast.
/// The connection manager hands the first caller after an outage the error
/// of its last failed reconnect (measured: the first join after Redis came
/// back was refused); a quick refusal is tried again on the fresh
/// connection, within the same time budget. Shared by the registry and the
/// room store.
pub(crate) async fn query_retrying(
    conn: &ConnectionManager,
    timeout: Duration,
    cmd: &::redis::Cmd,
) -> Result<Value, RegistryError> {
    let started = std::time::Instant::now();
    let mut c = conn.clone();
    match bounded_op(timeout, cmd.query_async(&mut c)).await {
        Err(RegistryError::Unavailable(_)) if started.elapsed() < timeout / 2 => {
            let mut c = conn.clone();
            bounded_op(timeout, cmd.query_async(&mut c)).await
        }
        other => other,
    }
}

/// [`query_retrying`] for a Lua script.
pub(crate) async fn eval_retrying(
    conn: &ConnectionManager,
    timeout: Duration,
    script: &Script,
    keys: &[&str],
    args: &[&str],
) -> Result<Value, RegistryError> {
    let mut invocation = script.prepare_invoke();
    for key in keys {
        invocation.key(*key);
    }
    for arg in args {
        invocation.arg(*arg);
    }
    let started = std::time::Instant::now();
    let mut c = conn.clone();
    match bounded_op(timeout, invocation.invoke_async(&mut c)).await {
        Err(RegistryError::Unavailable(_)) if started.elapsed() < timeout / 2 => {
            let mut c = conn.clone();
            bounded_op(timeout, invocation.invoke_async(&mut c)).await
        }
        other => other,
    }
}

/// A lazily connecting, self-reconnecting connection to `url`, every
/// connect and reply bounded by `op_timeout` (shared with the room store,
/// `roomstore/redis.rs`). The URL (and a password in it) never goes into an
/// error.
pub(crate) fn connection_manager(
    url: &str,
    op_timeout: Duration,
) -> Result<ConnectionManager, RegistryError> {
    // The parse error may quote the URL, password included: not passed on.
    let client =
        Client::open(url).map_err(|_| RegistryError::Invalid("Redis URL does not parse".into()))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(op_timeout))
        .set_response_timeout(Some(op_timeout))
        // A reconnect that fails is tried again by the next operation;
        // retries inside one would only outlast its timeout.
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(op_timeout);
    ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|e| RegistryError::Invalid(error_text(&e)))
}

/// A key prefix both Redis users accept: short, and plain.
pub(crate) fn valid_prefix(prefix: &str) -> bool {
    prefix.len() <= MAX_PREFIX_LEN
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

/// Which errors mean "try again later" and which "this is not our data".
pub(crate) fn classify(e: &RedisError) -> RegistryError {
    match e.kind() {
        ErrorKind::Parse
        | ErrorKind::UnexpectedReturnType
        | ErrorKind::Extension
        | ErrorKind::Server(ServerErrorKind::ResponseError) => {
            RegistryError::Invalid(error_text(e))
        }
        _ => RegistryError::Unavailable(error_text(e)),
    }
}

fn error_text(e: &RedisError) -> String {
    let mut text = e.to_string();
    if text.len() > MAX_ERROR_TEXT {
        let mut end = MAX_ERROR_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

fn field(v: &Value) -> Result<&str, String> {
    let bytes = match v {
        Value::BulkString(b) => b.as_slice(),
        Value::SimpleString(s) => s.as_bytes(),
        _ => return Err("record: a field is not a string".into()),
    };
    if bytes.len() > MAX_FIELD_LEN {
        return Err("record: a field is too long".into());
    }
    std::str::from_utf8(bytes).map_err(|_| "record: a field is not UTF-8".into())
}

fn number(v: &Value) -> Result<u32, String> {
    field(v)?
        .parse()
        .map_err(|_| "record: not a number".to_string())
}

/// `[id, announce_ip, link_addr, capacity, load, consults, draining]`.
fn parse_record(fields: &[Value]) -> Result<NodeInfo, String> {
    let [id, ip, link, capacity, load, consults, draining] = fields else {
        return Err("record: wrong number of fields".into());
    };
    let id = field(id)?;
    if !valid_node_id(id) {
        return Err("record: not a node id".into());
    }
    Ok(NodeInfo {
        id: id.to_string(),
        announce_ip: field(ip)?
            .parse()
            .map_err(|_| "record: announce_ip".to_string())?,
        link_addr: field(link)?
            .parse()
            .map_err(|_| "record: link_addr".to_string())?,
        capacity: number(capacity)?,
        load: number(load)?,
        consults: number(consults)?,
        draining: match field(draining)? {
            "0" => false,
            "1" => true,
            _ => return Err("record: draining".into()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn record(values: [&str; 7]) -> Vec<Value> {
        values.iter().map(|v| bulk(v)).collect()
    }

    #[test]
    fn a_record_as_heartbeat_writes_it_parses() {
        let node = parse_record(&record([
            "n1",
            "10.0.0.1",
            "[::1]:7000",
            "100",
            "3",
            "1",
            "1",
        ]))
        .unwrap();
        assert_eq!(node.link_addr.to_string(), "[::1]:7000");
        assert_eq!((node.capacity, node.load, node.consults), (100, 3, 1));
        assert!(node.draining);
    }

    #[test]
    fn records_this_code_did_not_write_are_refused() {
        let good = ["n1", "10.0.0.1", "10.0.0.1:7000", "100", "3", "1", "0"];
        for (i, bad) in [
            "bad id",
            "not-an-ip",
            "10.0.0.1",
            "-1",
            "99999999999",
            "1.5",
            "yes",
        ]
        .into_iter()
        .enumerate()
        {
            let mut values = good;
            values[i] = bad;
            assert!(parse_record(&record(values)).is_err(), "{values:?}");
        }
        let long = "1".repeat(MAX_FIELD_LEN + 1);
        let mut values = good;
        values[3] = &long;
        assert!(parse_record(&record(values)).is_err());
        assert!(parse_record(&record(good)[..6]).is_err());
        let mut not_strings = record(good);
        not_strings[3] = Value::Int(100);
        assert!(parse_record(&not_strings).is_err());
    }

    #[test]
    fn long_error_texts_are_cut_on_a_char_boundary() {
        let e = RedisError::from((ErrorKind::Client, "x", "é".repeat(300)));
        assert!(error_text(&e).len() <= MAX_ERROR_TEXT + '…'.len_utf8());
    }
}
