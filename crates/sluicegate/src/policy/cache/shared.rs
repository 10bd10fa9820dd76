//! The shared tier (`[cache] store = "memory+redis"`): responses stored in `[redis]` as well as
//! in memory, so that what one instance fetched is a hit on every other, and a purge on any
//! instance reaches all of them.
//!
//! In Redis, everything stored for one target (route, scheme, host, path and query) is one
//! hash, `sluicegate:cache:{D}` where D is a digest of the target — one key, hence one slot of
//! a Redis Cluster, so that each operation on it is one atomic script:
//!
//! - `v:P` (P a digest of the primary key): the `Vary` names of its latest stored response;
//! - `e:V` (V a digest of the primary key and the variant): a stored response (`codec.rs`);
//! - `m`: what a purge matches — `k:` and the key as the purge API names it, then `t:` and
//!   each tag its responses carried;
//! - `i`: the target's invalidation count. A memory miss reads it with its lookup, and the
//!   fill that follows is stored only if it has not changed: a response fetched before an
//!   unsafe request or a purge never lands after it, on any instance.
//!
//! The hash expires when the last of its responses could no longer be used (their `keep`,
//! `store.rs`); a field read past its own is a miss. An invalidation or purge empties the hash
//! but for `i`, kept for [`INVALIDATION_KEEP`].
//!
//! Every instance subscribes to `sluicegate:cache:purge`; purges and invalidations are
//! published there and applied to each instance's memory tier. After the subscription was
//! lost (messages may have been missed), the memory tier is emptied: it fills again from Redis.
//!
//! Redis down: lookups and fills skip it at once (`redis_client`'s backoff), the memory tier
//! serves alone, clients see no error, and the state change is logged once each way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use http::HeaderMap;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::Script;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::codec;
use super::key::{PrimaryKey, VaryOn};
use super::store::{Entry, MemoryStore};
use crate::config::RedisConfig;
use crate::redis_client::{Conn, RedisClient, RedisError, CONNECT_TIMEOUT};

/// The channel purges and invalidations are published on.
pub const CHANNEL: &str = "sluicegate:cache:purge";
/// How long a target's invalidation count is kept after an invalidation: a fill that began
/// before it and ends within this is refused.
pub const INVALIDATION_KEEP: Duration = Duration::from_secs(3600);
/// How long a fill may take to be written (bodies up to `max_object_bytes`).
const FILL_TIMEOUT: Duration = Duration::from_secs(2);
/// The most fills being written at once by one instance: beyond, a fill stays in memory only
/// (each holds its encoded copy until written).
const MAX_FILLS_IN_FLIGHT: usize = 64;
/// The longest a purge may scan Redis.
pub const PURGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Stores a response if the target's invalidation count is still the one its lookup read.
/// KEYS[1]: the target's hash. ARGV: 1 the count read, 2 the vary field, 3 the vary names,
/// 4 the entry field, 5 the entry, 6 how long to keep it (ms), 7 the purge key, 8… tags.
///
/// Each entry `e:V` has `x:V`, when it stops being usable (Redis's clock, ms). A hash that a
/// busy target keeps alive would otherwise gather its dead variants: once it has more than 16
/// fields, and at most every 10 s (`p`), the entries past their time are dropped; a hash that
/// still has 4,096 fields takes no more.
const FILL: &str = r"
local i = redis.call('HGET', KEYS[1], 'i') or '0'
if i ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local size = redis.call('HLEN', KEYS[1])
if size > 16 and now >= (tonumber(redis.call('HGET', KEYS[1], 'p') or '0') or 0) then
  redis.call('HSET', KEYS[1], 'p', now + 10000)
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(f, 1, 2) == 'x:' then
      local dead = tonumber(redis.call('HGET', KEYS[1], f) or '0') or 0
      if dead < now then redis.call('HDEL', KEYS[1], f, 'e:' .. string.sub(f, 3)) end
    end
  end
  size = redis.call('HLEN', KEYS[1])
end
if size >= 4096 then return 0 end
local keep = tonumber(ARGV[6])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5],
  'x:' .. string.sub(ARGV[4], 3), string.format('%.0f', now + keep))
local m = redis.call('HGET', KEYS[1], 'm') or ('k:' .. ARGV[7])
local lines = '\n' .. m .. '\n'
for n = 8, #ARGV do
  local line = 't:' .. ARGV[n]
  if not string.find(lines, '\n' .. line .. '\n', 1, true) then
    m = m .. '\n' .. line
    lines = lines .. line .. '\n'
  end
end
redis.call('HSET', KEYS[1], 'm', m)
if redis.call('PTTL', KEYS[1]) < keep then redis.call('PEXPIRE', KEYS[1], keep) end
return 1
";

/// Empties a target's hash but for its invalidation count, which goes up by one. Returns how
/// many responses it held. KEYS[1]: the hash. ARGV[1]: how long to keep the count (ms).
const INVALIDATE: &str = r"
local n = 0
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, 2) == 'e:' then n = n + 1 end
end
local i = redis.call('HINCRBY', KEYS[1], 'i', 1)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'i', i)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return n
";

/// What a purge removes (the purge API's body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Purge {
    /// Paths starting so.
    Prefix(String),
    /// `host/path?query`, every variant and credential of it.
    Key(String),
    /// Responses tagged so (`Cache-Tag`, `Surrogate-Key`).
    Tag(String),
}

impl Purge {
    /// Applies it to a memory tier; returns how many entries it removed.
    pub fn apply(&self, memory: &MemoryStore) -> usize {
        match self {
            Purge::Prefix(prefix) => memory.purge_prefix(prefix),
            Purge::Key(key) => memory.purge_key(key),
            Purge::Tag(tag) => memory.purge_tag(tag),
        }
    }

    /// Whether it matches a target whose `m` field is `m`.
    fn matches(&self, m: &str) -> bool {
        let mut lines = m.lines();
        let Some(key) = lines.next().and_then(|l| l.strip_prefix("k:")) else {
            return false;
        };
        match self {
            // The key is `host/path?query`, and a host holds no `/`.
            Purge::Prefix(prefix) => key
                .find('/')
                .is_some_and(|at| key[at..].starts_with(prefix.as_str())),
            Purge::Key(wanted) => key == wanted,
            Purge::Tag(tag) => lines.any(|l| l.strip_prefix("t:") == Some(tag.as_str())),
        }
    }
}

/// A message on [`CHANNEL`].
#[derive(Debug, Serialize, Deserialize)]
struct Message {
    /// The instance that sent it.
    from: u64,
    #[serde(flatten)]
    what: Published,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Published {
    Purge(Purge),
    /// An unsafe request changed this target (`PrimaryKey::target`).
    Forget(String),
}

/// What a lookup in Redis found.
pub struct Found {
    /// The target's invalidation count, for the fill.
    pub count: u64,
    /// A stored response for the request's variant, with its `Vary` names.
    pub entry: Option<(Entry, VaryOn)>,
}

/// The shared tier of one `[redis]`.
pub struct SharedTier {
    client: Arc<RedisClient>,
    fill: Script,
    invalidate: Script,
    /// Tells this instance's messages apart (in the debug log).
    instance: u64,
    memory: Weak<MemoryStore>,
    subscriber: Option<tokio::task::JoinHandle<()>>,
    /// Fills being written now.
    fills: Arc<AtomicUsize>,
    /// Targets this instance has forgotten whose invalidation Redis has not confirmed yet,
    /// with how many are under way: their Redis copies are not read meanwhile.
    invalidating: Arc<Mutex<HashMap<String, usize>>>,
}

/// A target's invalidation under way, until dropped.
struct Invalidating {
    targets: Arc<Mutex<HashMap<String, usize>>>,
    target: String,
}

impl Invalidating {
    fn start(targets: &Arc<Mutex<HashMap<String, usize>>>, target: &str) -> Invalidating {
        let mut map = targets.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(target.to_string()).or_default() += 1;
        Invalidating {
            targets: Arc::clone(targets),
            target: target.to_string(),
        }
    }
}

impl Drop for Invalidating {
    fn drop(&mut self) {
        let mut map = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.target) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.target);
            }
        }
    }
}

/// One of the [`MAX_FILLS_IN_FLIGHT`] places, given back when dropped.
struct FillSlot(Arc<AtomicUsize>);

impl FillSlot {
    fn take(fills: &Arc<AtomicUsize>) -> Option<FillSlot> {
        fills
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_FILLS_IN_FLIGHT).then_some(n + 1)
            })
            .ok()
            .map(|_| FillSlot(Arc::clone(fills)))
    }
}

impl Drop for FillSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for SharedTier {
    fn drop(&mut self) {
        if let Some(task) = &self.subscriber {
            task.abort();
        }
    }
}

impl SharedTier {
    /// The tier for `config`, whose messages are applied to `memory`; subscribed by a task on
    /// the current runtime (the control runtime: the tier is made while a config is compiled).
    pub fn start(config: RedisConfig, memory: &Arc<MemoryStore>) -> Arc<SharedTier> {
        let client = Arc::new(RedisClient::new(
            config,
            "the response cache serves from this instance's memory tier until it is back",
            "the response cache uses the shared tier again",
        ));
        let instance = rand_u64();
        let subscriber = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            runtime.spawn(subscribe(
                Arc::clone(&client),
                Arc::downgrade(memory),
                instance,
            ))
        });
        if subscriber.is_none() {
            tracing::warn!("no runtime to subscribe to cache purges on: other instances' purges will not reach this one");
        }
        Arc::new(SharedTier {
            client,
            fill: Script::new(FILL),
            invalidate: Script::new(INVALIDATE),
            instance,
            memory: Arc::downgrade(memory),
            subscriber,
            fills: Arc::default(),
            invalidating: Arc::default(),
        })
    }

    pub fn config(&self) -> &RedisConfig {
        self.client.config()
    }

    /// Whether this instance's invalidation of `target` has not reached Redis yet.
    pub fn invalidating(&self, target: &str) -> bool {
        let map = self.invalidating.lock().unwrap_or_else(|e| e.into_inner());
        map.contains_key(target)
    }

    /// Looks `key` up for `request` (on a worker, within the `[redis] timeout`): one round
    /// trip, or two when the stored response varies. `generation` is this instance's for the
    /// key's target, given to what is found.
    pub async fn get(
        &self,
        key: &PrimaryKey,
        request: &HeaderMap,
        generation: u64,
    ) -> Result<Found, RedisError> {
        let hash = hash_key(key.target());
        let vary_field = vary_field(key);
        let plain = entry_field(key, "");
        let (count, names, entry): (Option<u64>, Option<String>, Option<Vec<u8>>) = self
            .client
            .run(|mut conn| {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(&hash).arg("i").arg(&vary_field).arg(&plain);
                async move { Ok(cmd.query_async(&mut conn).await?) }
            })
            .await?;
        let count = count.unwrap_or(0);
        let Some(names) = names else {
            return Ok(Found { count, entry: None });
        };
        let vary = vary_of(&names).ok_or(RedisError::Unexpected)?;
        let bytes = if vary.names().is_empty() {
            entry
        } else {
            let field = entry_field(key, &vary.variant(request));
            let (again, entry): (Option<u64>, Option<Vec<u8>>) = self
                .client
                .run(|mut conn| {
                    let mut cmd = redis::cmd("HMGET");
                    cmd.arg(&hash).arg("i").arg(&field);
                    async move { Ok(cmd.query_async(&mut conn).await?) }
                })
                .await?;
            if again.unwrap_or(0) != count {
                return Ok(Found {
                    count: again.unwrap_or(0),
                    entry: None,
                });
            }
            entry
        };
        let entry = bytes
            .and_then(|b| codec::decode(Bytes::from(b), key, generation))
            .filter(|e| e.kept_at(SystemTime::now()))
            .map(|e| (e, vary));
        Ok(Found { count, entry })
    }

    /// Stores `entry` in Redis in the background (on a worker), if the target's invalidation
    /// count is still `count`.
    pub fn put(self: &Arc<Self>, entry: &Entry, vary: &VaryOn, variant: &str, count: u64) {
        let Some(slot) = FillSlot::take(&self.fills) else {
            tracing::debug!("too many fills in flight: this one stays in memory only");
            return;
        };
        let names: Vec<&str> = vary.names().iter().map(|n| n.as_str()).collect();
        let keep = u64::try_from(entry.keep().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut args: Vec<Vec<u8>> = vec![
            count.to_string().into_bytes(),
            vary_field(&entry.key).into_bytes(),
            names.join(",").into_bytes(),
            entry_field(&entry.key, variant).into_bytes(),
            codec::encode(entry),
            keep.to_string().into_bytes(),
            entry.key.display().into_bytes(),
        ];
        args.extend(entry.tags.iter().map(|t| t.as_bytes().to_vec()));
        let hash = hash_key(entry.key.target());
        let (client, script) = (Arc::clone(&self.client), self.fill.clone());
        tokio::task::spawn_local(async move {
            let _slot = slot;
            let stored = client
                .run_in_background(FILL_TIMEOUT, |mut conn| async move {
                    let mut invocation = script.key(&hash);
                    for arg in &args {
                        invocation.arg(&arg[..]);
                    }
                    Ok(invocation.invoke_async::<i64>(&mut conn).await?)
                })
                .await;
            if let Err(e) = stored {
                tracing::debug!(error = %e, "response not stored in the shared cache tier");
            }
        });
    }

    /// An unsafe request changed `target`: its responses are removed from Redis and every
    /// instance's memory tier stops using them (in the background, on a worker).
    pub fn forget(self: &Arc<Self>, target: &str) {
        let hash = hash_key(target);
        let message = self.message(Published::Forget(target.to_string()));
        let (client, script) = (Arc::clone(&self.client), self.invalidate.clone());
        let under_way = Invalidating::start(&self.invalidating, target);
        tokio::task::spawn_local(async move {
            let _under_way = under_way;
            let done = client
                .run(|mut conn| async move {
                    script
                        .key(&hash)
                        .arg(INVALIDATION_KEEP.as_millis() as u64)
                        .invoke_async::<i64>(&mut conn)
                        .await?;
                    redis::cmd("PUBLISH")
                        .arg(CHANNEL)
                        .arg(message)
                        .query_async::<i64>(&mut conn)
                        .await?;
                    Ok(())
                })
                .await;
            if let Err(e) = done {
                tracing::warn!(error = %e, "an invalidation did not reach the shared cache tier");
            }
        });
    }

    /// Removes what `purge` matches from Redis (scanning every primary of a Redis Cluster)
    /// and tells every instance; returns how many stored responses Redis held for it. Runs
    /// off the workers (the admin API), on a connection of its own.
    ///
    /// The purge is published before the scan (every instance's memory is purged at once,
    /// even if the scan then fails or runs out of time) and again after it (what an instance
    /// copied from Redis while the scan ran goes too).
    pub async fn purge(&self, purge: &Purge) -> Result<usize, RedisError> {
        let message = self.message(Published::Purge(purge.clone()));
        let work = async {
            let mut conn = self.client.connect().await?;
            publish(&mut conn, &message).await?;
            let mut removed = 0usize;
            for node in nodes(&mut conn).await? {
                let mut cursor = 0u64;
                loop {
                    let mut scan = redis::cmd("SCAN");
                    scan.arg(cursor)
                        .arg("MATCH")
                        .arg("sluicegate:cache:{*}")
                        .arg("COUNT")
                        .arg(1000)
                        .arg("TYPE")
                        .arg("hash");
                    let (next, keys): (u64, Vec<String>) = on_node(&mut conn, &node, scan).await?;
                    // A page's `m` fields asked together (the connection is multiplexed).
                    let reads = keys.iter().map(|key| {
                        let mut conn = conn.clone();
                        let mut get = redis::cmd("HGET");
                        get.arg(key).arg("m");
                        async move { get.query_async::<Option<String>>(&mut conn).await }
                    });
                    let ms = futures_util::future::join_all(reads).await;
                    for (key, m) in keys.iter().zip(ms) {
                        if m?.is_some_and(|m| purge.matches(&m)) {
                            let mut invocation = self.invalidate.key(key);
                            invocation.arg(INVALIDATION_KEEP.as_millis() as u64);
                            let n: i64 = invocation.invoke_async(&mut conn).await?;
                            removed += usize::try_from(n).unwrap_or(0);
                        }
                    }
                    cursor = next;
                    if cursor == 0 {
                        break;
                    }
                }
            }
            publish(&mut conn, &message).await?;
            Ok(removed)
        };
        tokio::time::timeout(PURGE_TIMEOUT, work)
            .await
            .unwrap_or(Err(RedisError::Timeout))
    }

    fn message(&self, what: Published) -> String {
        serde_json::to_string(&Message {
            from: self.instance,
            what,
        })
        .unwrap_or_default()
    }

    /// The memory tier this tier's messages go to.
    pub fn memory(&self) -> Option<Arc<MemoryStore>> {
        self.memory.upgrade()
    }
}

async fn publish(conn: &mut Conn, message: &str) -> Result<(), RedisError> {
    redis::cmd("PUBLISH")
        .arg(CHANNEL)
        .arg(message)
        .query_async::<i64>(conn)
        .await?;
    Ok(())
}

/// Where a scan runs: the one server, or each primary of a cluster.
enum Node {
    Single,
    Primary { host: String, port: u16 },
}

/// The nodes holding keys.
async fn nodes(conn: &mut Conn) -> Result<Vec<Node>, RedisError> {
    let Conn::Cluster(cluster) = conn else {
        return Ok(vec![Node::Single]);
    };
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("NODES");
    let answer = cluster
        .route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random))
        .await?;
    let text: String = redis::from_redis_value(answer).map_err(|e| RedisError::Redis(e.into()))?;
    // `<id> <ip:port@cport[,hostname]> <flags> …`: the primaries that are not failing.
    let mut primaries = Vec::new();
    for line in text.lines() {
        let mut fields = line.split(' ');
        let (Some(_), Some(address), Some(flags)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        // A primary only suspected of failing (`fail?`) still holds its keys; one that failed
        // (`fail`) or has no address (`noaddr`) cannot be scanned, and its slots belong to
        // whichever replica took over.
        let flags: Vec<&str> = flags.split(',').collect();
        if !flags.contains(&"master") || flags.contains(&"fail") || flags.contains(&"noaddr") {
            continue;
        }
        let address = address.split(['@', ',']).next().unwrap_or_default();
        if let Some((host, port)) = address.rsplit_once(':') {
            if let Ok(port) = port.parse() {
                primaries.push(Node::Primary {
                    host: host.to_string(),
                    port,
                });
            }
        }
    }
    Ok(primaries)
}

/// Runs `cmd` on `node`.
async fn on_node<T: redis::FromRedisValue>(
    conn: &mut Conn,
    node: &Node,
    cmd: redis::Cmd,
) -> Result<T, RedisError> {
    match (conn, node) {
        (Conn::Cluster(cluster), Node::Primary { host, port }) => {
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port: *port,
            });
            let answer = cluster.route_command(cmd, routing).await?;
            redis::from_redis_value(answer).map_err(|e| RedisError::Redis(e.into()))
        }
        (conn, _) => Ok(cmd.query_async(conn).await?),
    }
}

/// Applies what other instances publish to `memory`, for as long as the tier lives:
/// subscribed again after any loss (trying the servers named in turn, backing off), and the
/// memory tier emptied then, since messages may have been missed meanwhile.
async fn subscribe(client: Arc<RedisClient>, memory: Weak<MemoryStore>, instance: u64) {
    let mut attempt = 0usize;
    let mut lost = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        let subscribed = async {
            let redis = client.client(attempt)?;
            let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, redis.get_async_pubsub())
                .await
                .map_err(|_| RedisError::Timeout)??;
            pubsub.subscribe(CHANNEL).await?;
            Ok::<_, RedisError>(pubsub)
        }
        .await;
        match subscribed {
            Ok(pubsub) => {
                if lost {
                    if let Some(memory) = memory.upgrade() {
                        memory.clear();
                    }
                    tracing::info!(
                        "subscribed to cache purges again: this instance's memory tier was emptied, since purges may have been missed"
                    );
                }
                backoff = Duration::from_millis(100);
                let (mut sink, mut messages) = pubsub.split();
                // A ping now and then finds a connection that died without closing.
                let every = Duration::from_secs(5);
                let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    tokio::select! {
                        message = messages.next() => {
                            let Some(message) = message else { break };
                            let Some(memory) = memory.upgrade() else { return };
                            apply(message.get_payload_bytes(), &memory, instance);
                        }
                        _ = ping.tick() => {
                            let answered = tokio::time::timeout(
                                CONNECT_TIMEOUT,
                                sink.ping::<redis::Value>(),
                            ).await;
                            if !matches!(answered, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                tracing::warn!("the subscription to cache purges was lost: subscribing again");
                lost = true;
            }
            Err(error) => {
                if !lost {
                    tracing::warn!(%error, "cannot subscribe to cache purges: trying again");
                }
                lost = true;
                attempt = attempt.wrapping_add(1);
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Applies one published message, this instance's own too: their echo comes after Redis was
/// changed, and removes what a lookup here copied from Redis in between. What does not parse
/// is ignored.
fn apply(payload: &[u8], memory: &MemoryStore, instance: u64) {
    let Ok(message) = serde_json::from_slice::<Message>(payload) else {
        tracing::debug!("ignored a message on {CHANNEL} that is not one of ours");
        return;
    };
    let own = message.from == instance;
    match message.what {
        Published::Purge(purge) => {
            let n = purge.apply(memory);
            tracing::debug!(?purge, purged = n, own, "cache purge published");
        }
        Published::Forget(target) => memory.forget_target(&target),
    }
}

/// `sluicegate:cache:{D}`: D, 32 hex digits of the target's SHA-256, in braces so that a
/// Redis Cluster puts the whole hash in one slot by it.
fn hash_key(target: &str) -> String {
    format!("sluicegate:cache:{{{}}}", hex_digest(&[target]))
}

fn vary_field(key: &PrimaryKey) -> String {
    format!("v:{}", hex_digest(&[key.as_str()]))
}

fn entry_field(key: &PrimaryKey, variant: &str) -> String {
    format!("e:{}", hex_digest(&[key.as_str(), "\u{1e}", variant]))
}

fn hex_digest(parts: &[&str]) -> String {
    let mut digest = Sha256::new();
    for part in parts {
        digest.update(part.as_bytes());
    }
    digest.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Stored `Vary` names (comma-separated) as a `VaryOn`.
fn vary_of(names: &str) -> Option<VaryOn> {
    let mut headers = HeaderMap::new();
    if !names.is_empty() {
        headers.insert(http::header::VARY, http::HeaderValue::from_str(names).ok()?);
    }
    VaryOn::new(&headers, &[])
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purges_match_what_the_m_field_says() {
        let m = "k:api.example.com/users/1?x=2\nt:user-1\nt:users";
        assert!(Purge::Prefix("/users".into()).matches(m));
        assert!(!Purge::Prefix("/orders".into()).matches(m));
        assert!(!Purge::Prefix("api.example.com".into()).matches(m));
        assert!(Purge::Key("api.example.com/users/1?x=2".into()).matches(m));
        assert!(!Purge::Key("api.example.com/users/1".into()).matches(m));
        assert!(Purge::Tag("users".into()).matches(m));
        assert!(!Purge::Tag("user".into()).matches(m));
        // A tag that reads like the key matches as a tag only.
        assert!(!Purge::Tag("k:api.example.com/users/1?x=2".into()).matches(m));
        assert!(!Purge::Prefix("/".into()).matches("garbage"));
    }

    #[test]
    fn messages_round_trip() {
        let text = serde_json::to_string(&Message {
            from: 7,
            what: Published::Purge(Purge::Tag("a".into())),
        })
        .unwrap();
        assert_eq!(text, r#"{"from":7,"purge":{"tag":"a"}}"#);
        let back: Message = serde_json::from_str(&text).unwrap();
        assert!(matches!(back.what, Published::Purge(Purge::Tag(t)) if t == "a"));
        let forget: Message = serde_json::from_str(r#"{"from":1,"forget":"t"}"#).unwrap();
        assert!(matches!(forget.what, Published::Forget(t) if t == "t"));
    }

    #[test]
    fn one_target_is_one_hash_and_keys_stay_apart() {
        let a = PrimaryKey::new("r http", "h", "/a", None);
        let mine = PrimaryKey::new("r http", "h", "/a", Some("acme"));
        assert_eq!(hash_key(a.target()), hash_key(mine.target()));
        assert_ne!(vary_field(&a), vary_field(&mine));
        assert_ne!(entry_field(&a, ""), entry_field(&a, "x"));
        assert!(hash_key("x").starts_with("sluicegate:cache:{"));
        assert_eq!(vary_of("accept, accept-encoding").unwrap().names().len(), 2);
        assert!(vary_of("").unwrap().names().is_empty());
    }
}
