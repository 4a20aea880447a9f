//! The Redis backend: one state per key, shared by every instance.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::{self, Script, Value};
use sofiia_redis_support::CallError;
use sofiia_redis_support::RedisConnection;

use crate::codec::{decode_headers, encode_headers};
use crate::fingerprint::{to_hex, ttl_millis};
use crate::{
    Fingerprint, IdempotencyError, IdempotencyStore, Lease, LeaseToken, Reservation, Result,
    ScopedKey, StoredResponse,
};

/// Keys in a Redis shared by any number of instances.
///
/// # Layout
///
/// One hash per scoped key, named
/// `{prefix}idem:{hex(SHA-256(u64_be(len(principal)) || principal || key))}`
/// (neither the principal nor the client's key is stored in clear), with
/// the fields:
///
/// | field | in flight | pending | completed |
/// | --- | --- | --- | --- |
/// | `state` | `inflight` | `pending` | `completed` |
/// | `fingerprint` | 32 bytes | 32 bytes | 32 bytes |
/// | `token` | 16 bytes | 16 bytes | (removed) |
/// | `lease_until` | | server time in ms when the lease ends | (removed) |
/// | `pending` | | the pending result | (removed) |
/// | `status` | | | decimal, e.g. `200` |
/// | `headers` | | | version byte `1`, then per header `u32_be` length + name, `u32_be` length + value |
/// | `body` | | | the bytes |
/// | `completed_by` | | | 16 random bytes naming the complete call |
///
/// Every key has a TTL: the lease while in flight (a lease expires by its
/// key expiring), the keep time while pending, the result TTL once
/// completed. Times are the Redis server's (`PEXPIRE`, `TIME`), so
/// instances need no synchronised clocks.
///
/// # Atomicity
///
/// Each operation is one Lua script (`EVALSHA`, loaded on first use and
/// again after a Redis restart), so no two instances can interleave inside
/// one: reserve reads and, if the key is free or its pending result is
/// orphaned, takes it; the others compare the lease token first (fencing)
/// and change nothing on a mismatch. A script run twice for one call (a
/// cluster client resends a command whose connection dropped before the
/// reply) answers the second time as it did the first: reserve knows its
/// own token, complete its own call id. Redis 6.2 or later is needed
/// (multi-field `HSET`, scripts replicated by their effects).
///
/// # Redis Cluster
///
/// Each script touches exactly one key, and a key carries no hash tag, so
/// on a cluster ([`RedisConnection::open_cluster`]) the keys, one
/// operator's included, spread over every primary by their digests. (Keep
/// braces out of the prefix: a `{...}` there would pin every key to one
/// slot.)
///
/// # Failures
///
/// Every operation is one `EVALSHA` on the shared multiplexed
/// [`RedisConnection`], bounded by the operation timeout (2 s unless
/// [set](Self::with_op_timeout)); a Redis that is down, refuses
/// connections, hangs, is out of memory, loading or failing over gives
/// [`IdempotencyError::Unavailable`], never a hang (the classification every
/// Redis backend shares, [`CallError::is_unavailable`]). The connection is
/// opened again by itself, so the store recovers when Redis comes back.
pub struct RedisIdempotencyStore {
    conn: RedisConnection,
    prefix: String,
    op_timeout: Duration,
    reserve: Script,
    hold: Script,
    complete: Script,
    release: Script,
}

/// Every script starts with this: effects replication (the default from
/// Redis 7; 6.2 needs asking, as the scripts read `TIME`) and the server's
/// time in milliseconds.
const PRELUDE: &str = r"
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = KEYS[1]
";

/// `ARGV`: fingerprint, new token, lease in ms.
///
/// Replies `{'acquired'}`, `{'mismatch'}`, `{'inflight', pttl}`,
/// `{'pending', ms left}`, `{'resume', pending}` or
/// `{'completed', status, headers, body}`.
const RESERVE: &str = r"
local found = redis.call('HMGET', key, 'state', 'fingerprint', 'lease_until', 'token')
if found[4] == ARGV[2] and (found[1] == 'inflight' or found[1] == 'pending') then
  -- This very call, run again (a cluster client resends a command whose
  -- connection dropped): answer as the first run did.
  if found[1] == 'inflight' then return {'acquired'} end
  return {'resume', redis.call('HGET', key, 'pending')}
end
if not found[1] then
  -- Free (absent or expired). DEL drops stray fields of a damaged hash.
  redis.call('DEL', key)
  redis.call('HSET', key, 'state', 'inflight', 'fingerprint', ARGV[1], 'token', ARGV[2])
  redis.call('PEXPIRE', key, ARGV[3])
  return {'acquired'}
end
if found[2] ~= ARGV[1] then
  return {'mismatch'}
end
if found[1] == 'inflight' then
  local ttl = redis.call('PTTL', key)
  if ttl < 0 then
    -- No TTL would hold the key forever; every write sets one, but repair
    -- rather than trust that.
    redis.call('PEXPIRE', key, ARGV[3])
    ttl = tonumber(ARGV[3])
  end
  return {'inflight', ttl}
end
if found[1] == 'pending' then
  local lease_until = tonumber(found[3]) or 0
  if lease_until > now then
    return {'pending', lease_until - now}
  end
  -- The holder stopped: the caller takes the key over, under a new token.
  redis.call('HSET', key, 'token', ARGV[2], 'lease_until', string.format('%.0f', now + tonumber(ARGV[3])))
  return {'resume', redis.call('HGET', key, 'pending')}
end
local result = redis.call('HMGET', key, 'status', 'headers', 'body')
return {'completed', result[1], result[2], result[3]}
";

/// `ARGV`: token, pending result, lease in ms, keep in ms. Replies 1 if held,
/// 0 if the lease does not hold the key.
const HOLD: &str = r"
local found = redis.call('HMGET', key, 'state', 'token')
if found[2] ~= ARGV[1] or (found[1] ~= 'inflight' and found[1] ~= 'pending') then
  return 0
end
redis.call('HSET', key, 'state', 'pending', 'pending', ARGV[2], 'lease_until', string.format('%.0f', now + tonumber(ARGV[3])))
redis.call('PEXPIRE', key, ARGV[4])
return 1
";

/// `ARGV`: token, result TTL in ms, status, headers, body, call id (random
/// per call). Replies 1 if stored, 0 if the lease does not hold the key.
const COMPLETE: &str = r"
local found = redis.call('HMGET', key, 'state', 'token', 'completed_by')
if found[1] == 'completed' and found[3] == ARGV[6] then
  -- This very call, run again: it stored the result the first time.
  return 1
end
if found[2] ~= ARGV[1] or (found[1] ~= 'inflight' and found[1] ~= 'pending') then
  return 0
end
redis.call('HSET', key, 'state', 'completed', 'status', ARGV[3], 'headers', ARGV[4], 'body', ARGV[5],
  'completed_by', ARGV[6])
redis.call('HDEL', key, 'token', 'lease_until', 'pending')
redis.call('PEXPIRE', key, ARGV[2])
return 1
";

/// `ARGV[1]` the token. Replies 1 if released, 2 if the key holds a pending
/// result under this token (kept), 0 if the lease does not hold the key.
const RELEASE: &str = r"
local found = redis.call('HMGET', key, 'state', 'token')
if found[2] ~= ARGV[1] then
  return 0
end
if found[1] == 'pending' then
  return 2
end
if found[1] ~= 'inflight' then
  return 0
end
redis.call('DEL', key)
return 1
";

/// Failures of this backend, converted into [`IdempotencyError`] by kind.
#[derive(Debug, thiserror::Error)]
enum RedisStoreError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("unexpected reply from the idempotency script: {0}")]
    Reply(&'static str),
}

impl RedisStoreError {
    /// Whether a retry later may succeed: Redis is down, unreachable,
    /// overloaded, loading or failing over. Everything else (a script error,
    /// a reply that does not parse, a key of the wrong type) needs a person.
    fn is_unavailable(&self) -> bool {
        match self {
            Self::Call(e) => e.is_unavailable(),
            Self::Reply(_) => false,
        }
    }
}

impl From<RedisStoreError> for IdempotencyError {
    fn from(e: RedisStoreError) -> Self {
        if e.is_unavailable() {
            IdempotencyError::Unavailable {
                source: Box::new(e),
            }
        } else {
            IdempotencyError::Backend {
                source: Box::new(e),
            }
        }
    }
}

impl RedisIdempotencyStore {
    /// The operation timeout unless set otherwise.
    pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(2);

    /// A store on `pool`, naming its keys `{prefix}idem:...`. Give every
    /// deployment sharing one Redis its own prefix (such as `sofiia:`), and
    /// every instance of one deployment the same.
    pub fn new(conn: RedisConnection, prefix: impl Into<String>) -> Self {
        Self {
            conn,
            prefix: prefix.into(),
            op_timeout: Self::DEFAULT_OP_TIMEOUT,
            reserve: Script::new(&format!("{PRELUDE}{RESERVE}")),
            hold: Script::new(&format!("{PRELUDE}{HOLD}")),
            complete: Script::new(&format!("{PRELUDE}{COMPLETE}")),
            release: Script::new(&format!("{PRELUDE}{RELEASE}")),
        }
    }

    /// Sets the longest an operation may take, waiting for a connection
    /// included, before it fails with [`IdempotencyError::Unavailable`].
    #[must_use]
    pub fn with_op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// The operation timeout.
    pub fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn redis_key(&self, key: &ScopedKey) -> String {
        format!("{}idem:{}", self.prefix, to_hex(&key.digest()))
    }

    /// Runs `invocation` within the operation timeout.
    async fn invoke(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<Value, RedisStoreError> {
        Ok(sofiia_redis_support::invoke(&self.conn, self.op_timeout, invocation).await?)
    }

    async fn ping(&self) -> Result<(), RedisStoreError> {
        let pong: String =
            sofiia_redis_support::query(&self.conn, self.op_timeout, &redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(RedisStoreError::Reply("PING did not answer PONG"))
        }
    }
}

fn millis_arg(ttl: Duration) -> u64 {
    // Lua numbers are doubles: beyond 2^53 ms (285 000 years) precision
    // would go, so cap there.
    ttl_millis(ttl).min(1 << 53)
}

#[async_trait]
impl IdempotencyStore for RedisIdempotencyStore {
    async fn reserve(
        &self,
        key: &ScopedKey,
        fingerprint: &Fingerprint,
        lease_ttl: Duration,
    ) -> Result<Reservation> {
        let token = LeaseToken::random()?;
        let reply = self
            .invoke(
                self.reserve
                    .key(self.redis_key(key))
                    .arg(&fingerprint.0[..])
                    .arg(&token.0[..])
                    .arg(millis_arg(lease_ttl)),
            )
            .await?;
        Ok(parse_reservation(reply, token, lease_ttl)?)
    }

    async fn hold_pending(
        &self,
        key: &ScopedKey,
        lease: &LeaseToken,
        pending: &[u8],
        lease_ttl: Duration,
        keep_ttl: Duration,
    ) -> Result<()> {
        let reply = self
            .invoke(
                self.hold
                    .key(self.redis_key(key))
                    .arg(&lease.0[..])
                    .arg(pending)
                    .arg(millis_arg(lease_ttl))
                    .arg(millis_arg(keep_ttl)),
            )
            .await?;
        held(reply)
    }

    async fn complete(
        &self,
        key: &ScopedKey,
        lease: &LeaseToken,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<()> {
        let reply = self
            .invoke(
                self.complete
                    .key(self.redis_key(key))
                    .arg(&lease.0[..])
                    .arg(millis_arg(ttl))
                    .arg(response.status)
                    .arg(encode_headers(&response.headers))
                    .arg(&response.body[..])
                    .arg(&LeaseToken::random()?.0[..]),
            )
            .await?;
        held(reply)
    }

    async fn release(&self, key: &ScopedKey, lease: &LeaseToken) -> Result<()> {
        let reply = self
            .invoke(self.release.key(self.redis_key(key)).arg(&lease.0[..]))
            .await?;
        held(reply)
    }

    async fn check(&self) -> Result<()> {
        Ok(self.ping().await?)
    }
}

/// The reply of hold, complete or release: 1 done, 0 the lease does not
/// hold, 2 (release only) the key holds a pending result.
fn held(reply: Value) -> Result<()> {
    match reply {
        Value::Int(1) => Ok(()),
        Value::Int(0) => Err(IdempotencyError::LeaseLost),
        Value::Int(2) => Err(IdempotencyError::ResultPending),
        _ => Err(RedisStoreError::Reply("a fenced write did not answer 0, 1 or 2").into()),
    }
}

fn parse_reservation(
    reply: Value,
    token: LeaseToken,
    lease_ttl: Duration,
) -> Result<Reservation, RedisStoreError> {
    let Value::Array(items) = reply else {
        return Err(RedisStoreError::Reply("reserve did not answer an array"));
    };
    let mut items = items.into_iter();
    let tag = items.next().and_then(bytes);
    Ok(match tag.as_deref() {
        Some(b"acquired") => Reservation::Acquired(Lease {
            token,
            ttl: lease_ttl,
        }),
        Some(b"mismatch") => Reservation::Mismatch,
        Some(b"inflight") => match items.next() {
            Some(Value::Int(ms)) => Reservation::InFlight {
                lease_remaining: Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
            },
            _ => return Err(RedisStoreError::Reply("in flight without a TTL")),
        },
        Some(b"pending") => match items.next() {
            Some(Value::Int(ms)) => Reservation::Pending {
                lease_remaining: Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
            },
            _ => return Err(RedisStoreError::Reply("pending without a lease")),
        },
        Some(b"resume") => match items.next().and_then(bytes) {
            Some(pending) => Reservation::Resume {
                lease: Lease {
                    token,
                    ttl: lease_ttl,
                },
                pending,
            },
            None => return Err(RedisStoreError::Reply("a pending entry lacks its result")),
        },
        Some(b"completed") => {
            let (Some(status), Some(headers), Some(body)) = (
                items.next().and_then(bytes),
                items.next().and_then(bytes),
                items.next().and_then(bytes),
            ) else {
                return Err(RedisStoreError::Reply("a completed entry lacks a field"));
            };
            let status = std::str::from_utf8(&status)
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
                .ok_or(RedisStoreError::Reply("a stored status is not a number"))?;
            Reservation::Completed(StoredResponse {
                status,
                headers: decode_headers(&headers)
                    .ok_or(RedisStoreError::Reply("stored headers do not decode"))?,
                body,
            })
        }
        _ => return Err(RedisStoreError::Reply("reserve answered an unknown state")),
    })
}

fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

impl fmt::Debug for RedisIdempotencyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisIdempotencyStore")
            .field("prefix", &self.prefix)
            .field("op_timeout", &self.op_timeout)
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use deadpool_redis::redis::{ErrorKind, RedisError, ServerErrorKind, make_extension_error};
    use sofiia_testkit::{RedisServer, RedisTestContext};

    use super::*;
    use crate::IdempotencyKey;
    use crate::testing::{LONG_TTL, RealTime, TestStore};

    async fn fresh_store() -> Option<TestStore> {
        let redis = RedisTestContext::new("sofiia-idempotency redis suite").await?;
        let store = RedisIdempotencyStore::new(redis.conn.clone(), redis.prefix.clone());
        // The context deletes the prefix's keys when the case ends.
        Some(TestStore::with_guard(store, RealTime, redis))
    }

    crate::idempotency_store_tests!(fresh_store);

    /// The same suite on a three-primary Redis Cluster.
    mod on_cluster {
        use super::*;

        async fn fresh_store() -> Option<TestStore> {
            let redis = RedisTestContext::cluster("sofiia-idempotency redis cluster suite").await?;
            let store = RedisIdempotencyStore::new(redis.conn.clone(), redis.prefix.clone());
            Some(TestStore::with_guard(store, RealTime, redis))
        }

        crate::idempotency_store_tests!(fresh_store);

        #[tokio::test]
        async fn one_operators_keys_spread_over_every_primary() {
            let Some(redis) = RedisTestContext::cluster("idempotency keys spread").await else {
                return;
            };
            let store = RedisIdempotencyStore::new(redis.conn.clone(), redis.prefix.clone());
            for n in 0..48 {
                acquire(&store, &key(n)).await;
            }
            let held = redis.keys_per_node();
            assert_eq!(held.iter().sum::<usize>(), 48, "{held:?}");
            assert!(held.iter().all(|&n| n > 0), "{held:?}");
        }
    }

    fn key(n: usize) -> ScopedKey {
        ScopedKey::new(
            "alice",
            IdempotencyKey::new(format!("key-{n:08}")).expect("valid key"),
        )
    }

    fn fp(s: &str) -> Fingerprint {
        Fingerprint::builder().part(s).finish()
    }

    fn response() -> StoredResponse {
        StoredResponse {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: b"{}".to_vec(),
        }
    }

    async fn acquire(store: &RedisIdempotencyStore, k: &ScopedKey) -> LeaseToken {
        match store.reserve(k, &fp("a"), LONG_TTL).await.unwrap() {
            Reservation::Acquired(lease) => lease.token,
            other => panic!("expected Acquired, got {other:?}"),
        }
    }

    fn is_unavailable<T: fmt::Debug>(r: &Result<T>) -> bool {
        matches!(r, Err(IdempotencyError::Unavailable { .. }))
    }

    /// A server that cannot serve now (out of memory included) is
    /// unavailable; one redirecting to another cluster node needs a person.
    #[test]
    fn only_not_now_replies_are_unavailable() {
        // As the reply parser builds them: a known code gets its kind, any
        // other code is an extension.
        let known = |kind| RedisError::from((ErrorKind::Server(kind), "reply"));
        let other = |code: &str| make_extension_error(code.to_owned(), None);
        for err in [
            other("BUSY"),
            other("OOM"),
            known(ServerErrorKind::BusyLoading),
            known(ServerErrorKind::ReadOnly),
        ] {
            assert!(RedisStoreError::from(CallError::Redis(err)).is_unavailable());
        }
        for err in [known(ServerErrorKind::Moved), known(ServerErrorKind::Ask)] {
            assert!(!RedisStoreError::from(CallError::Redis(err)).is_unavailable());
        }
        assert!(RedisStoreError::from(CallError::Timeout(Duration::from_secs(1))).is_unavailable());
        assert!(!RedisStoreError::Reply("x").is_unavailable());
    }

    /// A cluster client resends a command whose connection dropped before
    /// its reply, so a script may run twice for one call: the second run
    /// answers as the first did, and a second call is still refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_script_run_twice_for_one_call_answers_as_once() {
        let Some(redis) = RedisTestContext::new("idempotency scripts run twice").await else {
            return;
        };
        let store = RedisIdempotencyStore::new(redis.conn.clone(), redis.prefix.clone());
        let k = key(1);
        let token = LeaseToken::random().unwrap();
        let fingerprint = fp("a");
        let mut reserve = store.reserve.prepare_invoke();
        reserve
            .key(store.redis_key(&k))
            .arg(&fingerprint.0[..])
            .arg(&token.0[..])
            .arg(60_000);
        for run in 0..2 {
            let reply = store.invoke(&reserve).await.unwrap();
            assert!(
                matches!(
                    parse_reservation(reply, token, LONG_TTL).unwrap(),
                    Reservation::Acquired(_)
                ),
                "run {run}"
            );
        }
        // Anyone else still waits.
        assert!(matches!(
            store.reserve(&k, &fingerprint, LONG_TTL).await.unwrap(),
            Reservation::InFlight { .. }
        ));

        let answer = response();
        let call = LeaseToken::random().unwrap();
        let mut complete = store.complete.prepare_invoke();
        complete
            .key(store.redis_key(&k))
            .arg(&token.0[..])
            .arg(60_000)
            .arg(answer.status)
            .arg(encode_headers(&answer.headers))
            .arg(&answer.body[..])
            .arg(&call.0[..]);
        for run in 0..2 {
            let reply = store.invoke(&complete).await.unwrap();
            assert!(held(reply).is_ok(), "run {run}");
        }
        // A second call with the spent lease is refused, as the suite wants.
        assert!(matches!(
            store.complete(&k, &token, &answer, LONG_TTL).await,
            Err(IdempotencyError::LeaseLost)
        ));
        match store.reserve(&k, &fingerprint, LONG_TTL).await.unwrap() {
            Reservation::Completed(stored) => assert_eq!(stored, answer),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_key_written_has_a_ttl() {
        let Some(redis) = RedisTestContext::new("every_key_written_has_a_ttl").await else {
            return;
        };
        let store = RedisIdempotencyStore::new(redis.conn.clone(), redis.prefix.clone());
        // In flight.
        acquire(&store, &key(0)).await;
        // Completed.
        let token = acquire(&store, &key(1)).await;
        store
            .complete(&key(1), &token, &response(), LONG_TTL)
            .await
            .unwrap();
        // Replayed and mismatched (reads must not drop the TTL).
        store.reserve(&key(1), &fp("a"), LONG_TTL).await.unwrap();
        store.reserve(&key(1), &fp("b"), LONG_TTL).await.unwrap();
        store.reserve(&key(0), &fp("a"), LONG_TTL).await.unwrap();
        // Pending, and resumed.
        let token = acquire(&store, &key(5)).await;
        store
            .hold_pending(&key(5), &token, b"p", Duration::from_millis(1), LONG_TTL)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(matches!(
            store.reserve(&key(5), &fp("a"), LONG_TTL).await.unwrap(),
            Reservation::Resume { .. }
        ));
        // Released (gone), and failed fenced writes (nothing created).
        let token = acquire(&store, &key(2)).await;
        store.release(&key(2), &token).await.unwrap();
        let _ = store.complete(&key(3), &token, &response(), LONG_TTL).await;
        let _ = store.release(&key(4), &token).await;

        let mut conn = redis.conn.handle();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", redis.prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(keys.len(), 3, "{keys:?}");
        for k in &keys {
            let suffix = k.strip_prefix(&redis.prefix).unwrap();
            let digest = suffix.strip_prefix("idem:").unwrap();
            assert_eq!(digest.len(), 64);
            assert!(!k.contains("alice") && !k.contains("key-0"), "{k}");
            let ttl: i64 = redis::cmd("PTTL")
                .arg(k)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(ttl > 0, "{k} has PTTL {ttl}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn damaged_entries_are_backend_errors() {
        let Some(redis) = RedisTestContext::new("damaged_entries_are_backend_errors").await else {
            return;
        };
        let store = RedisIdempotencyStore::new(redis.conn.clone(), redis.prefix.clone());
        let mut conn = redis.conn.handle();

        // A key of the wrong type: the script fails.
        let _: () = redis::cmd("SET")
            .arg(store.redis_key(&key(0)))
            .arg("x")
            .arg("PX")
            .arg(60_000)
            .query_async(&mut conn)
            .await
            .unwrap();
        let r = store.reserve(&key(0), &fp("a"), LONG_TTL).await;
        assert!(matches!(r, Err(IdempotencyError::Backend { .. })), "{r:?}");

        // Completed, with headers that do not decode.
        let token = acquire(&store, &key(1)).await;
        store
            .complete(&key(1), &token, &response(), LONG_TTL)
            .await
            .unwrap();
        let _: () = redis::cmd("HSET")
            .arg(store.redis_key(&key(1)))
            .arg("headers")
            .arg(&[9u8, 9, 9][..])
            .query_async(&mut conn)
            .await
            .unwrap();
        let r = store.reserve(&key(1), &fp("a"), LONG_TTL).await;
        assert!(matches!(r, Err(IdempotencyError::Backend { .. })), "{r:?}");
        // The connection survived both: script errors do not break it.
        store.check().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_redis_is_unavailable() {
        // A port nothing listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let pool = sofiia_testkit::connection(&format!("redis://127.0.0.1:{port}"));
        let store = RedisIdempotencyStore::new(pool, "stopped:");
        let token = LeaseToken([1; 16]);
        assert!(is_unavailable(
            &store.reserve(&key(0), &fp("a"), LONG_TTL).await
        ));
        assert!(is_unavailable(
            &store.complete(&key(0), &token, &response(), LONG_TTL).await
        ));
        assert!(is_unavailable(&store.release(&key(0), &token).await));
        assert!(is_unavailable(&store.check().await));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_redis_is_unavailable_not_a_hang() {
        // Accepts connections and never answers, like a frozen server.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let pool = sofiia_testkit::connection(&format!("redis://127.0.0.1:{port}"));
        let store =
            RedisIdempotencyStore::new(pool, "hung:").with_op_timeout(Duration::from_millis(200));
        let r = store.reserve(&key(0), &fp("a"), LONG_TTL).await;
        assert!(is_unavailable(&r), "{r:?}");
        assert!(is_unavailable(&store.check().await));
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recovers_by_itself_when_redis_comes_back() {
        let Some(mut server) = RedisServer::start("recovers_by_itself_when_redis_comes_back")
        else {
            return;
        };
        let pool = sofiia_testkit::connection(&server.url());
        let store = Arc::new(
            RedisIdempotencyStore::new(pool, "recovery:")
                .with_op_timeout(Duration::from_millis(500)),
        );
        let token = acquire(&store, &key(0)).await;
        store
            .complete(&key(0), &token, &response(), LONG_TTL)
            .await
            .unwrap();

        server.stop();
        for _ in 0..3 {
            let r = store.reserve(&key(1), &fp("a"), LONG_TTL).await;
            assert!(is_unavailable(&r), "{r:?}");
        }
        assert!(is_unavailable(&store.check().await));

        // A new server has neither the data nor the scripts; the store
        // reconnects and reloads them without help.
        server.restart();
        store.check().await.unwrap();
        let token = acquire(&store, &key(1)).await;
        store
            .complete(&key(1), &token, &response(), LONG_TTL)
            .await
            .unwrap();
        match store.reserve(&key(1), &fp("a"), LONG_TTL).await.unwrap() {
            Reservation::Completed(r) => assert_eq!(r, response()),
            other => panic!("expected Completed, got {other:?}"),
        }
    }
}
