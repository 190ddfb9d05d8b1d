//! Redis store: `SET … PX/NX`, `SCAN MATCH`, and a Lua script for compare-and-swap.
//!
//! TTLs go out as `PX` (milliseconds), so sub-second leases behave the same as in [`MemoryKv`].
//!
//! [`MemoryKv`]: super::MemoryKv

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{KvError, KvStore, check_ttl};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys fetched per `SCAN` step and per `MGET`.
const SCAN_BATCH: usize = 512;

/// Compare-and-swap in one atomic step.
/// KEYS[1] key; ARGV[1] "1" if a value is expected, "0" if the key must be absent;
/// ARGV[2] the expected value; ARGV[3] "1" to set, "0" to delete; ARGV[4] the new value;
/// ARGV[5] TTL in milliseconds, "0" for none. Returns 1 when swapped, 0 on mismatch.
const CAS_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
if ARGV[3] == '1' then
  if ARGV[5] ~= '0' then
    redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
  else
    redis.call('SET', KEYS[1], ARGV[4])
  end
else
  redis.call('DEL', KEYS[1])
end
return 1
";

/// A [`KvStore`] on Redis; clones share one auto-reconnecting connection.
#[derive(Clone)]
pub struct RedisKv {
    conn: ConnectionManager,
    cas: redis::Script,
}

impl std::fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKv").finish_non_exhaustive()
    }
}

impl RedisKv {
    /// Connects to Redis at `url`; fails when it is unreachable now. Later outages fail the
    /// calls made during them and reconnect in the background.
    pub async fn connect(url: &str) -> Result<Self, KvError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(3);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self {
            conn,
            cas: redis::Script::new(CAS_SCRIPT),
        })
    }
}

fn with_ttl(cmd: &mut redis::Cmd, ttl: Option<Duration>) {
    if let Some(ttl) = ttl {
        cmd.arg("PX").arg(ttl_millis(ttl));
    }
}

fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

/// Escapes glob characters so that `SCAN MATCH` treats the prefix literally.
fn glob_escape(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 2);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    pattern
}

#[async_trait]
impl KvStore for RedisKv {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError> {
        let mut conn = self.conn.clone();
        let value: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(&mut conn).await?;
        Ok(value.map(Bytes::from))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), KvError> {
        let ttl = check_ttl(ttl)?;
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value.as_ref());
        with_ttl(&mut cmd, ttl);
        let () = cmd.query_async(&mut conn).await?;
        Ok(())
    }

    async fn set_nx(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError> {
        let ttl = check_ttl(ttl)?;
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value.as_ref()).arg("NX");
        with_ttl(&mut cmd, ttl);
        // `SET … NX` answers OK when set and nil when the key exists.
        let reply: Option<String> = cmd.query_async(&mut conn).await?;
        Ok(reply.is_some())
    }

    async fn delete(&self, key: &str) -> Result<bool, KvError> {
        let mut conn = self.conn.clone();
        let removed: i64 = redis::cmd("DEL").arg(key).query_async(&mut conn).await?;
        Ok(removed > 0)
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Bytes)>, KvError> {
        let mut conn = self.conn.clone();
        let pattern = glob_escape(prefix);
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_BATCH)
                .query_async(&mut conn)
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        // SCAN may return a key more than once.
        keys.sort();
        keys.dedup();
        let mut entries = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(SCAN_BATCH) {
            let values: Vec<Option<Vec<u8>>> =
                redis::cmd("MGET").arg(chunk).query_async(&mut conn).await?;
            // A key that expired between SCAN and MGET comes back as nil and is skipped.
            entries.extend(
                chunk
                    .iter()
                    .zip(values)
                    .filter_map(|(k, v)| v.map(|v| (k.clone(), Bytes::from(v)))),
            );
        }
        Ok(entries)
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Bytes>,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError> {
        let ttl = check_ttl(ttl)?;
        let mut conn = self.conn.clone();
        let swapped: i64 = self
            .cas
            .key(key)
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(if new.is_some() { "1" } else { "0" })
            .arg(new.as_deref().unwrap_or_default())
            .arg(ttl.map_or(0, ttl_millis))
            .invoke_async(&mut conn)
            .await?;
        Ok(swapped == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("room:"), "room:*");
        assert_eq!(glob_escape("a*b?c[d]e\\"), "a\\*b\\?c\\[d\\]e\\\\*");
        assert_eq!(glob_escape(""), "*");
    }

    #[test]
    fn huge_ttls_saturate() {
        assert_eq!(ttl_millis(Duration::from_millis(1500)), 1500);
        assert_eq!(ttl_millis(Duration::MAX), u64::MAX);
    }
}
