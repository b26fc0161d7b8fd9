//! The shared store for replicas: Redis (GitLab already runs one), one atomic round trip
//! per login: `SET <prefix><key> <attempt> NX PX <ttl>`.
//!
//! Fail closed: when Redis cannot answer within the deadline of a call (connect timeout
//! plus response timeout), the login is refused (503) and nothing reaches GitLab; other
//! traffic never touches Redis. The connection is made lazily and managed (it reconnects by
//! itself), so the gate starts, and serves git traffic, while Redis is down. With Sentinel,
//! an error drops the connection so that the next login asks the sentinels for the current
//! master (failover).
//!
//! A connection that broke while Redis restarted is noticed only when used: the `SET` is
//! then tried once more on the reconnected connection. Each attempt writes its own random
//! value, so when the retry finds the key already there, reading it back tells whether the
//! first attempt landed (its reply was lost: a first use) or another login holds it (a
//! replay) — a retry never turns a first use into a false "replayed".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{IntoConnectionInfo, RedisConnectionInfo};

use super::{FirstUse, Recorded, ReplayStore, StoreError, StoreFuture, TokenTimes};
pub use crate::config::{EvictionCheck, RedisSettings};

enum Target {
    Direct(redis::Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

pub struct RedisStore {
    target: Target,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    prefix: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    min_replicas: u32,
    replica_timeout: Duration,
    eviction_check: EvictionCheck,
    /// The `maxmemory-policy` read at the last connect, when it could evict replay keys.
    evicting_policy: std::sync::Mutex<Option<String>>,
    /// The store epoch this gate knows (`<unix seconds>-<random>` under `<prefix>epoch`).
    epoch: std::sync::Mutex<Option<String>>,
    /// Tokens issued before this unix second are refused (0: none).
    floor: std::sync::atomic::AtomicI64,
    /// Failed round trips (metrics, logs).
    pub errors: AtomicU64,
}

/// A socket path becomes a `redis+unix://` URL.
pub fn normalize_url(url: &str) -> String {
    if url.starts_with('/') {
        format!("redis+unix://{url}")
    } else {
        url.to_string()
    }
}

impl RedisStore {
    /// Check the settings (URLs parse); no connection is made yet.
    pub fn new(s: &RedisSettings) -> Result<Arc<RedisStore>, String> {
        let target = if !s.sentinels.is_empty() {
            let master = s
                .master_name
                .clone()
                .ok_or("replay.master_name is required with replay.sentinels")?;
            let urls: Vec<String> = s
                .sentinels
                .iter()
                .map(|h| {
                    if h.contains("://") {
                        h.clone()
                    } else {
                        format!("redis://{h}")
                    }
                })
                .collect();
            let mut node = SentinelNodeConnectionInfo::default();
            if let Some(pw) = &s.password {
                node =
                    node.set_redis_connection_info(RedisConnectionInfo::default().set_password(pw));
            }
            let client =
                SentinelClient::build(urls, master, Some(node), SentinelServerType::Master)
                    .map_err(|e| format!("replay.sentinels: {e}"))?;
            Target::Sentinel(tokio::sync::Mutex::new(client))
        } else {
            let url = s
                .url
                .as_deref()
                .ok_or("replay.redis_url is required with store = \"redis\"")?;
            let mut info = normalize_url(url)
                .into_connection_info()
                .map_err(|e| format!("replay.redis_url: {e}"))?;
            if let Some(pw) = &s.password {
                let settings = info.redis_settings().clone().set_password(pw);
                info = info.set_redis_settings(settings);
            }
            Target::Direct(redis::Client::open(info).map_err(|e| format!("replay.redis_url: {e}"))?)
        };
        Ok(Arc::new(RedisStore {
            target,
            conn: tokio::sync::Mutex::new(None),
            prefix: s.key_prefix.clone(),
            connect_timeout: s.connect_timeout,
            response_timeout: s.response_timeout,
            min_replicas: s.min_replicas,
            replica_timeout: s.replica_timeout,
            eviction_check: s.eviction_check,
            evicting_policy: std::sync::Mutex::new(None),
            epoch: std::sync::Mutex::new(None),
            floor: std::sync::atomic::AtomicI64::new(0),
            errors: AtomicU64::new(0),
        }))
    }

    /// The managed connection, made on first use. The lock is never held across the
    /// connect: during an outage, callers each try within their own deadline instead of
    /// queueing behind one another.
    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(c) = self.conn.lock().await.as_ref() {
            return Ok(c.clone());
        }
        let m = self.connect().await?;
        let mut slot = self.conn.lock().await;
        Ok(slot.get_or_insert(m).clone())
    }

    async fn connect(&self) -> Result<ConnectionManager, StoreError> {
        let unavailable = |e: String| StoreError::Unavailable(e);
        let client = match &self.target {
            Target::Direct(c) => c.clone(),
            Target::Sentinel(s) => {
                let mut s = s.lock().await;
                tokio::time::timeout(self.connect_timeout * 4, s.async_get_client())
                    .await
                    .map_err(|_| unavailable("sentinels did not answer in time".into()))?
                    .map_err(|e| unavailable(format!("sentinel: {e}")))?
            }
        };
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let m = tokio::time::timeout(
            self.connect_timeout * 2,
            ConnectionManager::new_with_config(client, cfg),
        )
        .await
        .map_err(|_| unavailable("connect timed out".into()))?
        .map_err(|e| unavailable(e.to_string()))?;
        self.check_eviction_policy(m.clone()).await;
        let _ = self.check_epoch_on(m.clone()).await;
        Ok(m)
    }

    /// Records vanish silently when Redis restarts without persistence, is flushed, or fails
    /// over to a replica that never had them. An epoch key, created once and never expiring,
    /// tells: when it is missing or different from the one this gate knew, the records may be
    /// gone, and every token issued up to the new epoch's creation second is refused from then on
    /// (forwarded tokens never have an iat later than their use, so none of them can pass
    /// twice). A missing epoch at the gate's start counts as a loss too. Checked at each
    /// connect, on `/readyz` and every few seconds.
    async fn check_epoch_on(&self, mut conn: ConnectionManager) -> bool {
        let key = format!("{}epoch", self.prefix);
        let get = redis::cmd("GET").arg(&key).clone();
        let limit = self.response_timeout;
        let Ok(current) = ask::<Option<String>>(&mut conn, &get, limit).await else {
            return false;
        };
        let (now_epoch, created) = match current {
            Some(v) => (v, false),
            None => {
                let fresh = format!("{}-{}", crate::clock::unix_now(), random_hex16());
                let set = redis::cmd("SET").arg(&key).arg(&fresh).arg("NX").clone();
                let _ = ask::<Option<String>>(&mut conn, &set, limit).await;
                // another gate may have created it first: take what Redis holds
                match ask::<Option<String>>(&mut conn, &get, limit).await {
                    Ok(Some(v)) => (v, true),
                    _ => return false,
                }
            }
        };
        let mut known = self.epoch.lock().unwrap_or_else(|e| e.into_inner());
        let lost = created || known.as_ref().is_some_and(|k| *k != now_epoch);
        if lost {
            let since: i64 = now_epoch
                .split('-')
                .next()
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(crate::clock::unix_now);
            // through the epoch's own second: a token issued in the second the records were
            // lost may have been used just before the loss (bench/failover.py, Redis
            // restarted empty at 40 logins/s: 5 replays passed when the floor was the
            // epoch's second itself). Fresh tokens of that one second are refused too.
            self.floor
                .fetch_max(since.saturating_add(1), Ordering::Relaxed);
            tracing::error!(target: "jwt_gate::replay", epoch = %now_epoch, "the replay store's epoch is new: its records may have been lost (restart without persistence, flush, failover); tokens issued up to it are refused");
        }
        *known = Some(now_epoch);
        lost
    }

    /// The epoch check on the current connection (periodic, `/readyz`, after a broken
    /// connection): whether a loss was detected now.
    pub async fn check_epoch(&self) -> bool {
        match self.connection().await {
            Ok(conn) => self.check_epoch_on(conn).await,
            Err(_) => false,
        }
    }

    /// Every replay key has a TTL: any `maxmemory-policy` but `noeviction` may drop one
    /// under memory pressure (`volatile-*` evict exactly the keys with a TTL), and every
    /// token still inside its window becomes replayable. Read at each connect.
    async fn check_eviction_policy(&self, mut conn: ConnectionManager) {
        let cmd = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .clone();
        let policy = ask::<Vec<String>>(&mut conn, &cmd, self.response_timeout)
            .await
            .ok()
            .and_then(|v| v.get(1).cloned());
        let risky = match policy.as_deref() {
            Some("noeviction") => None,
            Some(p) => Some(p.to_string()),
            None => {
                // managed Redis often renames CONFIG: say so, and trust the operator
                tracing::warn!(target: "jwt_gate::replay", "cannot read Redis' maxmemory-policy; it must be noeviction, or an evicted replay key reopens its token");
                None
            }
        };
        if let Some(p) = &risky {
            tracing::error!(target: "jwt_gate::replay", policy = %p, "Redis' maxmemory-policy can evict replay keys (each has a TTL): set maxmemory-policy noeviction for the gate's database (or replay.redis_eviction_check = \"warn\")");
        }
        *self
            .evicting_policy
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = risky;
    }

    /// With `min_replicas`, a record counts only once that many replicas acknowledged it:
    /// an acknowledged SET can otherwise be lost when Sentinel promotes a replica that had
    /// not received it, and the token is then accepted again on the new master.
    async fn wait_for_replicas(&self) -> Result<(), StoreError> {
        if self.min_replicas == 0 {
            return Ok(());
        }
        let mut conn = self.connection().await?;
        let wait = redis::cmd("WAIT")
            .arg(self.min_replicas)
            .arg(self.replica_timeout.as_millis() as u64)
            .clone();
        let limit = self.replica_timeout + self.response_timeout;
        match ask::<i64>(&mut conn, &wait, limit).await {
            Ok(n) if n >= i64::from(self.min_replicas) => Ok(()),
            Ok(n) => Err(self.fail(format!(
                "acknowledged by {n} of the {} replicas required",
                self.min_replicas
            ))),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Forget the connection (Sentinel: the next login re-resolves the master).
    async fn reset(&self) {
        if matches!(self.target, Target::Sentinel(_)) {
            *self.conn.lock().await = None;
        }
    }

    fn fail(&self, why: String) -> StoreError {
        self.errors.fetch_add(1, Ordering::Relaxed);
        StoreError::Unavailable(why)
    }

    fn key_name(&self, key: &[u8; 32]) -> String {
        let mut name = String::with_capacity(self.prefix.len() + 64);
        name.push_str(&self.prefix);
        for b in key {
            name.push_str(&format!("{b:02x}"));
        }
        name
    }

    /// One `SET NX` with this attempt's value, pipelined behind a `GET` of the epoch on the
    /// same connection (one round trip), within the response timeout: whether the key was
    /// set, and the epoch the server holds. A connection the manager remade by itself on a
    /// Redis that restarted empty is thus noticed by the very record that meets it
    /// (bench/failover.py: without this, a replay passed in the gap until the next
    /// periodic check).
    async fn try_set(
        &self,
        name: &str,
        attempt: &str,
        ttl_ms: i64,
    ) -> Result<(bool, Option<String>), String> {
        let mut conn = self.connection().await.map_err(|e| e.to_string())?;
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(format!("{}epoch", self.prefix));
        pipe.cmd("SET")
            .arg(name)
            .arg(attempt)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms);
        let (epoch, reply): (Option<String>, Option<String>) =
            tokio::time::timeout(self.response_timeout, pipe.query_async(&mut conn))
                .await
                .map_err(|_| "Redis did not answer in time".to_string())?
                .map_err(|e| e.to_string())?;
        Ok((reply.is_some(), epoch))
    }

    /// After a record: when the server's epoch is not the one this gate knows, check it
    /// (which raises the floor on a loss); then refuse a token issued before the floor.
    async fn epoch_refuses(&self, seen: Option<&str>, iat: i64) -> bool {
        let known_differs = {
            let known = self.epoch.lock().unwrap_or_else(|e| e.into_inner());
            known.as_deref() != seen
        };
        if known_differs {
            self.check_epoch().await;
        }
        self.issued_floor().is_some_and(|f| iat < f)
    }

    /// Who holds `name` now: the value written by the attempt that recorded it.
    async fn holder(&self, name: &str) -> Result<Option<String>, String> {
        let mut conn = self.connection().await.map_err(|e| e.to_string())?;
        let get = redis::cmd("GET").arg(name).clone();
        ask(&mut conn, &get, self.response_timeout).await
    }

    /// A replay: read who holds the key (one more round trip, for replays only).
    async fn replayed(&self, name: &str) -> Recorded {
        Recorded::Replayed(
            self.holder(name)
                .await
                .ok()
                .flatten()
                .and_then(|v| parse_value(&v).1),
        )
    }

    async fn set_nx(
        &self,
        key: &[u8; 32],
        ttl_ms: i64,
        iat: i64,
        use_: FirstUse,
    ) -> Result<Recorded, StoreError> {
        let name = self.key_name(key);
        let attempt = random_hex16();
        let value = format!("{attempt}|{}|{}", use_.at_ms, use_.client);
        let first = match self.try_set(&name, &value, ttl_ms).await {
            Ok((_, epoch)) if self.epoch_refuses(epoch.as_deref(), iat).await => {
                return Ok(Recorded::BeforeEpoch)
            }
            Ok((true, _)) => return self.wait_for_replicas().await.map(|()| Recorded::Fresh),
            Ok((false, _)) => return Ok(self.replayed(&name).await),
            Err(e) => e,
        };
        // once more, on a connection the manager (or, with Sentinel, a new master) remade;
        // a broken connection may mean a restarted Redis: when its epoch is new, this login
        // fails closed, and the next one meets the refusal of older tokens
        self.reset().await;
        // the floor, not this check's verdict: the reconnect itself may have found the new
        // epoch (connect checks it), and then this check sees nothing new (bench/failover.py,
        // Redis restarted empty: 5 replays passed at 40 logins/s before this)
        self.check_epoch().await;
        if self.issued_floor().is_some_and(|f| iat < f) {
            return Ok(Recorded::BeforeEpoch);
        }
        match self.try_set(&name, &value, ttl_ms).await {
            Ok((_, epoch)) if self.epoch_refuses(epoch.as_deref(), iat).await => {
                Ok(Recorded::BeforeEpoch)
            }
            Ok((true, _)) => self.wait_for_replicas().await.map(|()| Recorded::Fresh),
            Ok((false, _)) => match self.holder(&name).await {
                // the first attempt landed and only its reply was lost
                Ok(Some(v)) if parse_value(&v).0 == attempt => {
                    self.wait_for_replicas().await.map(|()| Recorded::Fresh)
                }
                Ok(v) => Ok(Recorded::Replayed(v.and_then(|v| parse_value(&v).1))),
                Err(e) => Err(self.fail(e)),
            },
            Err(e) => {
                self.reset().await;
                tracing::debug!(target: "jwt_gate::replay", first = %first, "Redis retry failed");
                Err(self.fail(e))
            }
        }
    }

    /// PING within the response timeout (for `/readyz`).
    pub async fn ping(&self) -> Result<(), String> {
        let mut conn = self.connection().await.map_err(|e| e.to_string())?;
        ask::<String>(&mut conn, &redis::cmd("PING"), self.response_timeout)
            .await
            .map(drop)
    }
}

/// One command within `limit`: its reply, or why there is none. Every call the store makes
/// is bounded so: a Redis that stops answering costs a login its deadline, never more.
async fn ask<T: redis::FromRedisValue>(
    conn: &mut ConnectionManager,
    cmd: &redis::Cmd,
    limit: Duration,
) -> Result<T, String> {
    match tokio::time::timeout(limit, cmd.query_async::<T>(conn)).await {
        Err(_) => Err("Redis did not answer in time".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(v)) => Ok(v),
    }
}

/// A key's value: `<attempt>|<first use, unix ms>|<client>` (what a replay reports). A value
/// of an older gate (`1`) has no first use.
fn parse_value(v: &str) -> (&str, Option<FirstUse>) {
    let mut parts = v.splitn(3, '|');
    let attempt = parts.next().unwrap_or("");
    let first = (|| {
        Some(FirstUse {
            at_ms: parts.next()?.parse().ok()?,
            client: parts.next()?.parse().ok()?,
        })
    })();
    (attempt, first)
}

/// How often the epoch is checked besides each connect and `/readyz`.
const EPOCH_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// One attempt's value: 16 random bytes in hex, after a per-process counter so that two
/// attempts differ even if the RNG were to fail.
fn random_hex16() -> String {
    static ATTEMPTS: AtomicU64 = AtomicU64::new(0);
    let mut b = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut b);
    let mut out = format!("{}-", ATTEMPTS.fetch_add(1, Ordering::Relaxed));
    for x in b {
        out.push_str(&format!("{x:02x}"));
    }
    out
}

/// The `PX` for a key whose token can no longer pass from the whole second `expires_at`,
/// set during the whole second `now`: whole seconds, so that a key set late in `now` still
/// lives past the start of `expires_at` (at least a second, so a token at the very edge of
/// its window is still recorded).
pub fn ttl_ms(expires_at: i64, now: i64) -> i64 {
    expires_at.saturating_sub(now).max(1).saturating_mul(1000)
}

impl ReplayStore for RedisStore {
    fn check_and_record<'a>(
        &'a self,
        key: &'a [u8; 32],
        token: TokenTimes,
        now: i64,
        use_: FirstUse,
    ) -> StoreFuture<'a> {
        // one deadline for the whole call, retry included: during an outage every login
        // gets its 503 within it
        let deadline = self.connect_timeout + self.response_timeout * 2;
        Box::pin(async move {
            let ttl = ttl_ms(token.expires_at, now);
            tokio::time::timeout(deadline, self.set_nx(key, ttl, token.iat, use_))
                .await
                .unwrap_or_else(|_| Err(self.fail("Redis did not answer in time".into())))
        })
    }
    fn entries(&self) -> Option<usize> {
        None
    }
    fn kind(&self) -> &'static str {
        "redis"
    }
    fn issued_floor(&self) -> Option<i64> {
        Some(self.floor.load(Ordering::Relaxed)).filter(|&f| f > 0)
    }
    fn start_maintenance(self: Arc<Self>, _every: Duration) {
        crate::clock::spawn_periodic(
            Arc::downgrade(&self),
            EPOCH_CHECK_INTERVAL,
            |store: Arc<RedisStore>| async move {
                store.check_epoch().await;
            },
        );
    }
    fn readiness_problem(&self) -> Option<(String, bool)> {
        let policy = self
            .evicting_policy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        Some((
            format!("Redis maxmemory-policy {policy} can evict replay keys (set noeviction)"),
            self.eviction_check == EvictionCheck::Refuse,
        ))
    }
    fn health(&self) -> super::HealthFuture<'_> {
        Box::pin(async move {
            let answered = self.ping().await;
            self.check_epoch().await;
            answered
        })
    }
}
