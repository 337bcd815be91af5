//! [`PresenceStore`] on Redis: one hash per user, `daehwa:presence:<user id>`, with fields
//! - `live:<server>`: Unix ms (Redis's clock) until which the user counts as live there;
//! - `route:<server>`: Unix ms until which the user has streams there;
//! - `last`: the latest activity any server reported.
//!
//! and one set per server, `daehwa:server:<server>:users`, of the hashes it has entries in,
//! so the users of a server that died can be found and announced offline ([`reap`]).
//!
//! [`reap`]: PresenceStore::reap
//!
//! Each field carries its own expiry (Redis 7.0 has no per-field TTL), checked against
//! Redis's `TIME` inside Lua scripts, so the chat servers' clocks never matter and every
//! read-modify-write (was the user online anywhere? are they still?) is atomic. The hash
//! itself expires [`KEEP_LAST_ACTIVE`] after its last write, which bounds what offline users
//! cost. Batch operations (`refresh`, `routes`, `lookup`) run one script per
//! [`BATCH`] users: one round trip however many users a server holds.

use std::time::Duration;

use async_trait::async_trait;
use redis::{Script, aio::ConnectionManager};

use super::{bounded, connect};
use crate::{
    backend::presence_store::{PresenceStore, SharedPresence},
    error::Result,
    ids::UserId,
};

/// How long a user's last-active time is kept after their last activity.
const KEEP_LAST_ACTIVE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a reaped server's departure is remembered, so several reapers announce it once.
const REAP_CLAIM: Duration = Duration::from_secs(60);
/// Users per batch script call.
const BATCH: usize = 500;
const WHAT: &str = "presence";

/// Lua prelude: `now` in ms from Redis's clock, and `online(key)` which also deletes the
/// expired `live:` and `route:` fields it meets.
const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function sweep(key)
  local fields = redis.call('HGETALL', key)
  local online, routes = false, {}
  for i = 1, #fields, 2 do
    local name, value = fields[i], tonumber(fields[i + 1])
    local live = string.sub(name, 1, 5) == 'live:'
    local route = string.sub(name, 1, 6) == 'route:'
    if live or route then
      if value <= now then
        redis.call('HDEL', key, name)
      elseif live then
        online = true
      else
        routes[#routes + 1] = string.sub(name, 7)
      end
    end
  end
  return online, routes
end
local function members_of(server)
  return 'daehwa:server:' .. server .. ':users'
end
local function remember(key, server, keep)
  local members = members_of(server)
  redis.call('SADD', members, key)
  redis.call('PEXPIRE', members, keep)
end
local function forget_if_idle(key, server)
  if redis.call('HEXISTS', key, 'live:' .. server) == 0
      and redis.call('HEXISTS', key, 'route:' .. server) == 0 then
    redis.call('SREM', members_of(server), key)
  end
end
local function set_last(key, ms)
  local last = tonumber(redis.call('HGET', key, 'last') or '0')
  if tonumber(ms) > last then redis.call('HSET', key, 'last', ms) end
end
"#;

/// KEYS[1] user; ARGV server, ttl ms, last ms, keep ms. Returns 1 when the user was offline
/// everywhere before.
const SET_LIVE: &str = r#"
local was_online = sweep(KEYS[1])
redis.call('HSET', KEYS[1], 'live:' .. ARGV[1], now + tonumber(ARGV[2]))
set_last(KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
remember(KEYS[1], ARGV[1], ARGV[4])
if was_online then return 0 else return 1 end
"#;

/// KEYS[1] user; ARGV server, last ms, keep ms. Returns 1 when now offline everywhere.
const CLEAR_LIVE: &str = r#"
redis.call('HDEL', KEYS[1], 'live:' .. ARGV[1])
local online = sweep(KEYS[1])
set_last(KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
forget_if_idle(KEYS[1], ARGV[1])
if online then return 0 else return 1 end
"#;

/// KEYS users; ARGV server, ttl ms, keep ms, then per key: last ms (or -1: not live) and
/// 1/0 routed.
const REFRESH: &str = r#"
local expiry = now + tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  local last = tonumber(ARGV[2 + 2 * i])
  local fields = {}
  if last >= 0 then
    fields[#fields + 1] = 'live:' .. ARGV[1]
    fields[#fields + 1] = expiry
    if last > tonumber(redis.call('HGET', key, 'last') or '0') then
      fields[#fields + 1] = 'last'
      fields[#fields + 1] = last
    end
  end
  if ARGV[3 + 2 * i] == '1' then
    fields[#fields + 1] = 'route:' .. ARGV[1]
    fields[#fields + 1] = expiry
  end
  if #fields > 0 then redis.call('HSET', key, unpack(fields)) end
  redis.call('PEXPIRE', key, ARGV[3])
end
if #KEYS > 0 then
  local members = members_of(ARGV[1])
  redis.call('SADD', members, unpack(KEYS))
  redis.call('PEXPIRE', members, ARGV[3])
end
redis.call('SET', 'daehwa:server:' .. ARGV[1] .. ':alive', '1', 'PX', ARGV[2])
return #KEYS
"#;

/// KEYS[1] user; ARGV server, ttl ms, keep ms.
const ADD_ROUTE: &str = r#"
redis.call('HSET', KEYS[1], 'route:' .. ARGV[1], now + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
remember(KEYS[1], ARGV[1], ARGV[3])
return 1
"#;

/// KEYS[1] user; ARGV server.
const REMOVE_ROUTE: &str = r#"
redis.call('HDEL', KEYS[1], 'route:' .. ARGV[1])
forget_if_idle(KEYS[1], ARGV[1])
return 1
"#;

/// KEYS[1] the claim; ARGV server, claim ms. Returns {1} while the server still refreshes,
/// else {0, {user key, last ms}...} for each user of the server now offline everywhere
/// (none when someone else claimed the departure).
const REAP: &str = r#"
if redis.call('EXISTS', 'daehwa:server:' .. ARGV[1] .. ':alive') == 1 then return { 1 } end
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[2]) then return { 0 } end
local members = members_of(ARGV[1])
local out = {}
for _, key in ipairs(redis.call('SMEMBERS', members)) do
  redis.call('HDEL', key, 'live:' .. ARGV[1], 'route:' .. ARGV[1])
  if not sweep(key) then
    out[#out + 1] = { key, tonumber(redis.call('HGET', key, 'last') or '0') }
  end
end
redis.call('DEL', members)
table.insert(out, 1, 0)
return out
"#;

/// KEYS users. Returns per key the servers with live routes.
const ROUTES: &str = r#"
local out = {}
for i, key in ipairs(KEYS) do
  local _, routes = sweep(key)
  out[i] = routes
end
return out
"#;

/// KEYS users. Returns per key {online 0/1, last ms}.
const LOOKUP: &str = r#"
local out = {}
for i, key in ipairs(KEYS) do
  local online = sweep(key)
  out[i] = { online and 1 or 0, tonumber(redis.call('HGET', key, 'last') or '0') }
end
return out
"#;

/// Presence and routes in Redis, shared by every server of the cluster.
pub struct RedisPresenceStore {
    connection: ConnectionManager,
    set_live: Script,
    clear_live: Script,
    refresh: Script,
    add_route: Script,
    remove_route: Script,
    reap: Script,
    routes: Script,
    lookup: Script,
}

impl RedisPresenceStore {
    /// Connects to `url` (`redis://HOST:PORT[/DB]`).
    pub async fn connect(url: &str) -> Result<Self> {
        let (_, connection) = connect(url, WHAT).await?;
        let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Ok(Self {
            connection,
            set_live: script(SET_LIVE),
            clear_live: script(CLEAR_LIVE),
            refresh: script(REFRESH),
            add_route: script(ADD_ROUTE),
            remove_route: script(REMOVE_ROUTE),
            reap: script(REAP),
            routes: script(ROUTES),
            lookup: script(LOOKUP),
        })
    }
}

fn key(user: UserId) -> String {
    format!("daehwa:presence:{}", user.0)
}

fn ms(duration: Duration) -> u64 {
    duration.as_millis().max(1) as u64
}

#[async_trait]
impl PresenceStore for RedisPresenceStore {
    async fn set_live(
        &self,
        server: &str,
        user: UserId,
        last_active_ms: i64,
        ttl: Duration,
    ) -> Result<bool> {
        let mut connection = self.connection.clone();
        let mut call = self.set_live.key(key(user));
        call.arg(server)
            .arg(ms(ttl))
            .arg(last_active_ms)
            .arg(ms(KEEP_LAST_ACTIVE));
        let became: i64 = bounded(WHAT, call.invoke_async(&mut connection)).await?;
        Ok(became == 1)
    }

    async fn clear_live(&self, server: &str, user: UserId, last_active_ms: i64) -> Result<bool> {
        let mut connection = self.connection.clone();
        let mut call = self.clear_live.key(key(user));
        call.arg(server)
            .arg(last_active_ms)
            .arg(ms(KEEP_LAST_ACTIVE));
        let offline: i64 = bounded(WHAT, call.invoke_async(&mut connection)).await?;
        Ok(offline == 1)
    }

    async fn add_route(&self, server: &str, user: UserId, ttl: Duration) -> Result<()> {
        let mut connection = self.connection.clone();
        let mut call = self.add_route.key(key(user));
        call.arg(server).arg(ms(ttl)).arg(ms(KEEP_LAST_ACTIVE));
        let _: i64 = bounded(WHAT, call.invoke_async(&mut connection)).await?;
        Ok(())
    }

    async fn remove_route(&self, server: &str, user: UserId) -> Result<()> {
        let mut connection = self.connection.clone();
        let mut call = self.remove_route.key(key(user));
        call.arg(server);
        let _: i64 = bounded(WHAT, call.invoke_async(&mut connection)).await?;
        Ok(())
    }

    async fn refresh(
        &self,
        server: &str,
        live: &[(UserId, i64)],
        routed: &[UserId],
        ttl: Duration,
    ) -> Result<()> {
        // One entry per user: last activity (-1: not live here) and whether routed here.
        let mut users: std::collections::BTreeMap<UserId, (i64, bool)> = Default::default();
        for &(user, last) in live {
            users.entry(user).or_insert((-1, false)).0 = last;
        }
        for &user in routed {
            users.entry(user).or_insert((-1, false)).1 = true;
        }
        let users: Vec<_> = users.into_iter().collect();
        // Even with no users the script runs once: it also marks this server alive.
        let batches: Vec<&[_]> = if users.is_empty() {
            vec![&[]]
        } else {
            users.chunks(BATCH).collect()
        };
        for batch in batches {
            let mut connection = self.connection.clone();
            let mut call = self.refresh.prepare_invoke();
            call.arg(server).arg(ms(ttl)).arg(ms(KEEP_LAST_ACTIVE));
            for (user, (last, routed)) in batch {
                call.key(key(*user))
                    .arg(*last)
                    .arg(if *routed { 1 } else { 0 });
            }
            let _: i64 = bounded(WHAT, call.invoke_async(&mut connection)).await?;
        }
        Ok(())
    }

    async fn routes(&self, users: &[UserId]) -> Result<Vec<Vec<String>>> {
        let mut out = Vec::with_capacity(users.len());
        for batch in users.chunks(BATCH) {
            let mut connection = self.connection.clone();
            let mut call = self.routes.prepare_invoke();
            for user in batch {
                call.key(key(*user));
            }
            let routes: Vec<Vec<String>> =
                bounded(WHAT, call.invoke_async(&mut connection)).await?;
            out.extend(routes);
        }
        Ok(out)
    }

    async fn reap(&self, server: &str) -> Result<Option<Vec<(UserId, i64)>>> {
        let mut connection = self.connection.clone();
        let mut call = self.reap.key(format!("daehwa:reaped:{server}"));
        call.arg(server).arg(ms(REAP_CLAIM));
        let reply: Vec<redis::Value> = bounded(WHAT, call.invoke_async(&mut connection)).await?;
        let mut rows = reply.into_iter();
        if rows.next() == Some(redis::Value::Int(1)) {
            return Ok(None);
        }
        Ok(Some(
            rows.filter_map(|row| {
                let (key, last): (String, i64) = redis::from_redis_value(&row).ok()?;
                let id = key.strip_prefix("daehwa:presence:")?.parse().ok()?;
                Some((UserId(id), last))
            })
            .collect(),
        ))
    }

    async fn lookup(&self, users: &[UserId]) -> Result<Vec<SharedPresence>> {
        let mut out = Vec::with_capacity(users.len());
        for batch in users.chunks(BATCH) {
            let mut connection = self.connection.clone();
            let mut call = self.lookup.prepare_invoke();
            for user in batch {
                call.key(key(*user));
            }
            let found: Vec<(i64, i64)> = bounded(WHAT, call.invoke_async(&mut connection)).await?;
            out.extend(found.into_iter().map(|(online, last)| SharedPresence {
                online: online == 1,
                last_active_ms: last,
            }));
        }
        Ok(out)
    }
}
