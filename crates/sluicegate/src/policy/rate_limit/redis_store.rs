//! The Redis store: one bucket per key across every gateway instance, decided atomically inside
//! Redis by a Lua script (the GCRA of `gcra.rs`, on Redis's own clock), loaded once per server
//! and called by its SHA (`EVALSHA`; loaded again only when a server answers `NOSCRIPT`).
//! One round trip per limited request.
//!
//! The connections, the timeout and the backoff while Redis fails are `redis_client`'s: while
//! it backs off, each request gets the policy's `on_store_error` at once.

use std::sync::Arc;

use redis::Script;

use super::gcra::Verdict;
use crate::config::RedisConfig;
use crate::redis_client::{RedisClient, RedisError};

/// The bucket script. KEYS[1]: the bucket. ARGV[1]: a token's interval, ARGV[2]: the
/// tolerance (capacity × interval), both in microseconds. Returns {allowed, remaining,
/// reset_us, retry_after_us}. Redis's `TIME` is the clock, so every instance agrees on it.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now) or now
if tat < now then tat = now end
local next = tat + interval
local ahead = next - now
if ahead > tolerance then
  return {0, 0, tat - now, ahead - tolerance}
end
redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', math.ceil(ahead / 1000) + 1000)
return {1, math.floor((tolerance - ahead) / interval), ahead, 0}
";

/// Why the store could not decide.
pub type StoreError = RedisError;

/// A bucket's parameters in the script's units.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    pub interval_us: u64,
    pub tolerance_us: u64,
}

impl Bucket {
    pub fn new(capacity: u64, refill_per_second: f64) -> Bucket {
        let interval_us = ((1e6 / refill_per_second).round() as u64).max(1);
        Bucket {
            interval_us,
            tolerance_us: interval_us.saturating_mul(capacity),
        }
    }
}

/// One `[redis]`'s buckets: its client, and the script.
pub struct RedisStore {
    client: Arc<RedisClient>,
    script: Script,
}

impl RedisStore {
    pub fn new(config: RedisConfig) -> RedisStore {
        RedisStore {
            client: Arc::new(RedisClient::new(
                config,
                "rate limits follow their on_store_error until it is back",
                "rate limits use the shared buckets",
            )),
            script: Script::new(SCRIPT),
        }
    }

    pub fn config(&self) -> &RedisConfig {
        self.client.config()
    }

    /// Decides one request for the bucket `key`, within the timeout.
    pub async fn check(&self, key: &[u8], bucket: Bucket) -> Result<Verdict, StoreError> {
        let answer = self
            .client
            .run(|mut conn| async move {
                let mut invocation = self.script.key(key);
                invocation.arg(bucket.interval_us).arg(bucket.tolerance_us);
                let answer: Vec<i64> = invocation.invoke_async(&mut conn).await?;
                Ok(answer)
            })
            .await?;
        verdict(&answer).ok_or(StoreError::Unexpected)
    }
}

/// The script's answer as a verdict (microseconds to nanoseconds).
fn verdict(answer: &[i64]) -> Option<Verdict> {
    let [allowed, remaining, reset_us, retry_us] = answer else {
        return None;
    };
    let ns = |us: &i64| u64::try_from(*us).unwrap_or(0).saturating_mul(1_000);
    Some(Verdict {
        allowed: *allowed == 1,
        remaining: u64::try_from(*remaining).unwrap_or(0),
        reset_ns: ns(reset_us),
        retry_after_ns: ns(retry_us),
    })
}
