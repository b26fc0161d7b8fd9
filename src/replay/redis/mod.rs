//! The shared store for replicas: Redis (GitLab already runs one), one atomic round trip
//! per login: `SET <prefix><key> <attempt> NX PX <ttl>`.
//!
//! Fail closed: when Redis cannot answer within the deadline of a call (connect timeout
//! plus response timeout), the login is refused (503) and nothing reaches GitLab; other
//! traffic never touches Redis. The connection is made lazily and managed (it reconnects by
//! itself), so the gate starts, and serves git traffic, while Redis is down. With Sentinel,
//! an error drops the connection so that the next login asks the sentinels for the current
//! master (failover). In a Redis Cluster each record lives in one slot, beside its bucket's
//! epoch (see [`layout`]); the cluster client follows `MOVED`/`ASK` a bounded number of
//! times, and a storm of them or a lost node ends, like an outage, in a refusal within the
//! deadline.
//!
//! A connection that broke while Redis restarted is noticed only when used: the `SET` is
//! then tried once more on the reconnected connection. Each attempt writes its own random
//! value, so when the retry finds the key already there, reading it back tells whether the
//! first attempt landed (its reply was lost: a first use) or another login holds it (a
//! replay) — a retry never turns a first use into a false "replayed".

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;

use super::{FirstUse, Recorded, ReplayStore, StoreError, StoreFuture, TokenTimes};
pub use crate::config::{EvictionCheck, RedisSettings};
pub use connection::normalize_url;
use connection::{ask, within, Conn, Target};
use layout::Layout;

mod connection;
mod layout;

pub struct RedisStore {
    target: Target,
    conn: tokio::sync::Mutex<Option<Conn>>,
    layout: Layout,
    connect_timeout: Duration,
    response_timeout: Duration,
    min_replicas: u32,
    replica_timeout: Duration,
    eviction_check: EvictionCheck,
    /// The `maxmemory-policy` read at the last connect, when it could evict replay keys.
    evicting_policy: Mutex<Option<String>>,
    /// The store epoch this gate knows per bucket (`<unix seconds>-<random>`; one bucket on
    /// a single Redis, see [`layout`]).
    epochs: Mutex<Vec<Option<String>>>,
    /// Tokens issued before this unix second are refused (0: none).
    floor: AtomicI64,
    /// Failed round trips (metrics, logs).
    pub errors: AtomicU64,
}

impl RedisStore {
    /// Check the settings (URLs parse); no connection is made yet.
    pub fn new(s: &RedisSettings) -> Result<Arc<RedisStore>, String> {
        let target = Target::from_settings(s)?;
        let layout = Layout::new(&s.key_prefix, target.is_cluster());
        Ok(Arc::new(RedisStore {
            epochs: Mutex::new(vec![None; layout.buckets()]),
            target,
            conn: tokio::sync::Mutex::new(None),
            layout,
            connect_timeout: s.connect_timeout,
            response_timeout: s.response_timeout,
            min_replicas: s.min_replicas,
            replica_timeout: s.replica_timeout,
            eviction_check: s.eviction_check,
            evicting_policy: Mutex::new(None),
            floor: AtomicI64::new(0),
            errors: AtomicU64::new(0),
        }))
    }

    /// The connection, made on first use. The lock is never held across the connect:
    /// during an outage, callers each try within their own deadline instead of queueing
    /// behind one another.
    async fn connection(&self) -> Result<Conn, StoreError> {
        if let Some(c) = self.conn.lock().await.as_ref() {
            return Ok(c.clone());
        }
        let m = self
            .target
            .connect(self.connect_timeout, self.response_timeout)
            .await
            .map_err(StoreError::Unavailable)?;
        self.check_eviction_policy(m.clone()).await;
        let _ = self.check_epochs_on(&m).await;
        let mut slot = self.conn.lock().await;
        Ok(slot.get_or_insert(m).clone())
    }

    /// Records vanish silently when Redis restarts without persistence, is flushed, or fails
    /// over to a replica that never had them. An epoch key, created once and never expiring,
    /// tells: when it is missing or different from the one this gate knew, the records may be
    /// gone, and every token issued up to the new epoch's creation second is refused from then on
    /// (forwarded tokens never have an iat later than their use, so none of them can pass
    /// twice). A missing epoch at the gate's start counts as a loss too. Checked at each
    /// connect, on `/readyz` and every few seconds; in a cluster, each bucket's epoch.
    async fn check_epochs_on(&self, conn: &Conn) -> bool {
        let checks = (0..self.layout.buckets()).map(|b| self.check_bucket_on(conn.clone(), b));
        join_all(checks).await.into_iter().any(|lost| lost)
    }

    /// One bucket's epoch in one round trip: create it if missing (`SET NX`), then read
    /// what Redis holds (another gate may have created it first).
    async fn check_bucket_on(&self, mut conn: Conn, bucket: usize) -> bool {
        let key = self.layout.epoch(bucket);
        let fresh = format!("{}-{}", crate::clock::unix_now(), random_hex16());
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(&key).arg(&fresh).arg("NX");
        pipe.cmd("GET").arg(&key);
        let asked = within(self.response_timeout, pipe.query_async(&mut conn));
        let Ok((created, Some(current))) =
            asked.await as Result<(Option<String>, Option<String>), _>
        else {
            return false;
        };
        self.observe_epoch(bucket, current, created.is_some())
    }

    /// What an epoch read means: a new one (created now, or not the one this gate knew)
    /// raises the floor through the epoch's own second.
    fn observe_epoch(&self, bucket: usize, now_epoch: String, created: bool) -> bool {
        let mut epochs = self.epochs.lock().unwrap_or_else(|e| e.into_inner());
        let Some(known) = epochs.get_mut(bucket) else {
            return false;
        };
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
            // One floor for every bucket: a loss anywhere refuses older tokens everywhere,
            // which costs a few seconds' worth of logins and never reopens a replay.
            let previous = self
                .floor
                .fetch_max(since.saturating_add(1), Ordering::Relaxed);
            if previous < since.saturating_add(1) {
                tracing::error!(target: "jwt_gate::replay", epoch = %now_epoch, bucket, "the replay store's epoch is new: its records may have been lost (restart without persistence, flush, failover); tokens issued up to it are refused");
            }
        }
        *known = Some(now_epoch);
        lost
    }

    /// The epoch check on the current connection (periodic, `/readyz`): whether a loss was
    /// detected now.
    pub async fn check_epoch(&self) -> bool {
        match self.connection().await {
            Ok(conn) => self.check_epochs_on(&conn).await,
            Err(_) => false,
        }
    }

    /// One bucket's check, on the current connection (after a broken one, or when a record
    /// met an epoch this gate did not know). A loss found in one bucket of a cluster is
    /// looked for in every bucket at once: a node restarted empty lost all of its buckets'
    /// epochs, and recreating them in the same second raises the floor once, where finding
    /// them one login at a time would raise it again and again, refusing fresh tokens each
    /// time (the cluster test's first run did).
    async fn check_bucket(&self, bucket: usize) -> bool {
        let Ok(conn) = self.connection().await else {
            return false;
        };
        let lost = self.check_bucket_on(conn.clone(), bucket).await;
        if lost && self.layout.buckets() > 1 {
            self.check_epochs_on(&conn).await;
        }
        lost
    }

    /// Every replay key has a TTL: any `maxmemory-policy` but `noeviction` may drop one
    /// under memory pressure (`volatile-*` evict exactly the keys with a TTL), and every
    /// token still inside its window becomes replayable. Read at each connect; in a
    /// cluster, on every primary.
    async fn check_eviction_policy(&self, mut conn: Conn) {
        let policies = conn.eviction_policies(self.response_timeout).await;
        let risky = match policies {
            Some(p) => p.into_iter().find(|p| p != "noeviction"),
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
    /// not received it, and the token is then accepted again on the new master. `WAIT`
    /// rides behind a read of the record itself, so that in a cluster it reaches the
    /// primary that holds the record (alone, it would go to every primary).
    async fn wait_for_replicas(&self, name: &str) -> Result<(), StoreError> {
        if self.min_replicas == 0 {
            return Ok(());
        }
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(name).ignore();
        pipe.cmd("WAIT")
            .arg(self.min_replicas)
            .arg(self.replica_timeout.as_millis() as u64);
        let limit = self.replica_timeout + self.response_timeout;
        match within(limit, pipe.query_async::<(i64,)>(&mut conn)).await {
            Ok((n,)) if n >= i64::from(self.min_replicas) => Ok(()),
            Ok((n,)) => Err(self.fail(format!(
                "acknowledged by {n} of the {} replicas required",
                self.min_replicas
            ))),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Forget the connection (Sentinel: the next login re-resolves the master).
    async fn reset(&self) {
        if self.target.is_sentinel() {
            *self.conn.lock().await = None;
        }
    }

    fn fail(&self, why: String) -> StoreError {
        self.errors.fetch_add(1, Ordering::Relaxed);
        StoreError::Unavailable(why)
    }

    /// One `SET NX` with this attempt's value, pipelined behind a `GET` of its bucket's
    /// epoch on the same connection (one round trip; in a cluster, one node), within the
    /// response timeout: whether the key was set, and the epoch the server holds. A
    /// connection the manager remade by itself on a Redis that restarted empty is thus
    /// noticed by the very record that meets it (bench/failover.py: without this, a replay
    /// passed in the gap until the next periodic check).
    async fn try_set(
        &self,
        name: &str,
        bucket: usize,
        attempt: &str,
        ttl_ms: i64,
    ) -> Result<(bool, Option<String>), String> {
        let mut conn = self.connection().await.map_err(|e| e.to_string())?;
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(self.layout.epoch(bucket));
        pipe.cmd("SET")
            .arg(name)
            .arg(attempt)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms);
        let (epoch, reply): (Option<String>, Option<String>) =
            within(self.response_timeout, pipe.query_async(&mut conn)).await?;
        Ok((reply.is_some(), epoch))
    }

    /// After a record: when the server's epoch is not the one this gate knows, check it
    /// (which raises the floor on a loss); then refuse a token issued before the floor.
    async fn epoch_refuses(&self, bucket: usize, seen: Option<&str>, iat: i64) -> bool {
        let known_differs = {
            let epochs = self.epochs.lock().unwrap_or_else(|e| e.into_inner());
            epochs.get(bucket).and_then(|k| k.as_deref()) != seen
        };
        if known_differs {
            self.check_bucket(bucket).await;
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
        let name = self.layout.record(key);
        let bucket = self.layout.bucket(key);
        let attempt = random_hex16();
        let value = format!("{attempt}|{}|{}", use_.at_ms, use_.client);
        let first = match self.try_set(&name, bucket, &value, ttl_ms).await {
            Ok((_, epoch)) if self.epoch_refuses(bucket, epoch.as_deref(), iat).await => {
                return Ok(Recorded::BeforeEpoch)
            }
            Ok((true, _)) => {
                return self
                    .wait_for_replicas(&name)
                    .await
                    .map(|()| Recorded::Fresh)
            }
            Ok((false, _)) => return Ok(self.replayed(&name).await),
            Err(e) => e,
        };
        // once more, on a connection the manager (or, with Sentinel, a new master; in a
        // cluster, the node that now holds the slot) remade; a broken connection may mean a
        // restarted Redis: when its epoch is new, this login fails closed, and the next one
        // meets the refusal of older tokens
        self.reset().await;
        // the floor, not this check's verdict: the reconnect itself may have found the new
        // epoch (connect checks it), and then this check sees nothing new (bench/failover.py,
        // Redis restarted empty: 5 replays passed at 40 logins/s before this)
        self.check_bucket(bucket).await;
        if self.issued_floor().is_some_and(|f| iat < f) {
            return Ok(Recorded::BeforeEpoch);
        }
        match self.try_set(&name, bucket, &value, ttl_ms).await {
            Ok((_, epoch)) if self.epoch_refuses(bucket, epoch.as_deref(), iat).await => {
                Ok(Recorded::BeforeEpoch)
            }
            Ok((true, _)) => self
                .wait_for_replicas(&name)
                .await
                .map(|()| Recorded::Fresh),
            Ok((false, _)) => match self.holder(&name).await {
                // the first attempt landed and only its reply was lost
                Ok(Some(v)) if parse_value(&v).0 == attempt => self
                    .wait_for_replicas(&name)
                    .await
                    .map(|()| Recorded::Fresh),
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

    /// PING within the response timeout (for `/readyz`; in a cluster, every primary).
    pub async fn ping(&self) -> Result<(), String> {
        let mut conn = self.connection().await.map_err(|e| e.to_string())?;
        ask::<String, _>(&mut conn, &redis::cmd("PING"), self.response_timeout)
            .await
            .map(drop)
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
