//! `[replay]`: where single use is recorded (memory, or Redis shared by replicas).

use std::path::Path;
use std::time::Duration;

use toml::Table;

use super::reader::Section;

pub const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_KEY_PREFIX: &str = "jwt-gate:replay:";
pub const DEFAULT_REDIS_CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(250);
pub const DEFAULT_REPLICA_TIMEOUT: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct ReplayConfig {
    pub store: StoreKind,
    pub max_entries: usize,
    pub reject_issued_before_start: bool,
    pub sweep_interval: Duration,
    /// Set when `store = "redis"`.
    pub redis: Option<RedisSettings>,
    /// Whether `/readyz` fails while the store cannot answer (default off: a Redis outage
    /// must not take every pod out of its Service and stop git traffic too).
    pub ready_requires_store: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Redis,
}

/// How to reach Redis.
/// What a Redis whose `maxmemory-policy` could evict replay keys means for readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionCheck {
    /// `/readyz` fails, with the reason (the default: an evicted key reopens its replay).
    Refuse,
    /// A warning in the log and on `/readyz`, which stays ready.
    Warn,
}

#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://`, `rediss://`, `redis+unix:///path`, or a socket path (`/var/opt/gitlab/redis/redis.socket`).
    pub url: Option<String>,
    /// Redis Cluster: the seed nodes (`redis_url` as a list, or one URL with
    /// `redis_cluster = true`). Empty: not a cluster.
    pub cluster_nodes: Vec<String>,
    /// `host:port` of each sentinel; with `master_name`.
    pub sentinels: Vec<String>,
    pub master_name: Option<String>,
    pub password: Option<String>,
    pub key_prefix: String,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// Replicas that must acknowledge a record (`WAIT`) before the login goes on.
    pub min_replicas: u32,
    /// How long to wait for them.
    pub replica_timeout: Duration,
    pub eviction_check: EvictionCheck,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the URL may carry a password: say only which form is configured
        f.debug_struct("RedisSettings")
            .field("url", &self.url.as_ref().map(|_| ".."))
            .field("cluster_nodes", &self.cluster_nodes.len())
            .field("sentinels", &self.sentinels.len())
            .field("master_name", &self.master_name)
            .field("password", &self.password.as_ref().map(|_| ".."))
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

pub(crate) fn read(t: &Table, base: &Path, errs: &mut Vec<String>) -> ReplayConfig {
    let mut s = Section::new("replay", t, errs);
    let store_name: String = s.get("store", "memory".to_string());
    let store = match store_name.as_str() {
        "memory" => StoreKind::Memory,
        "redis" => StoreKind::Redis,
        other => {
            s.err(
                "store",
                format!("unknown store {other:?} (expected \"memory\" or \"redis\")"),
            );
            StoreKind::Memory
        }
    };
    let max_entries = s.positive("max_entries", DEFAULT_MAX_ENTRIES, 1_000_000_000) as usize;
    // Redis outlives the gate: a restart does not reopen the replay window there
    let reject_issued_before_start = s.get("reject_issued_before_start", store != StoreKind::Redis);
    let sweep_interval = s.secs("sweep_interval", DEFAULT_SWEEP_INTERVAL);
    let ready_requires_store = s.get("ready_requires_store", false);
    let redis_urls = read_urls(&mut s);
    let cluster_flag: bool = s.get("redis_cluster", false);
    let sentinels: Vec<String> = s.get("sentinels", Vec::new());
    let master_name: Option<String> = s.opt("master_name");
    let password_file: Option<String> = s.opt("redis_password_file");
    let key_prefix: String = s.get("key_prefix", DEFAULT_KEY_PREFIX.to_string());
    let connect_timeout = s.secs("redis_connect_timeout", DEFAULT_REDIS_CONNECT_TIMEOUT);
    let response_timeout = s.secs("redis_timeout", DEFAULT_REDIS_TIMEOUT);
    let min_replicas: i64 = s.get("redis_min_replicas", 0);
    if !(0..=16).contains(&min_replicas) {
        s.err("redis_min_replicas", "must be between 0 and 16");
    }
    let replica_timeout = s.secs("redis_replica_timeout", DEFAULT_REPLICA_TIMEOUT);
    let eviction_name: String = s.get("redis_eviction_check", "refuse".to_string());
    let eviction_check = match eviction_name.as_str() {
        "refuse" => EvictionCheck::Refuse,
        "warn" => EvictionCheck::Warn,
        other => {
            s.err(
                "redis_eviction_check",
                format!("unknown {other:?} (expected \"refuse\" or \"warn\")"),
            );
            EvictionCheck::Refuse
        }
    };
    let password = password_file.and_then(|f| {
        let p = base.join(f);
        match std::fs::read_to_string(&p) {
            Ok(pw) => Some(pw.trim_end_matches(['\r', '\n']).to_string()),
            Err(e) => {
                s.err("redis_password_file", format!("{}: {e}", p.display()));
                None
            }
        }
    });
    if store == StoreKind::Memory && (!redis_urls.is_empty() || !sentinels.is_empty()) {
        s.err("redis_url", "set store = \"redis\" to use Redis");
    }
    let cluster = cluster_flag || redis_urls.len() > 1;
    if cluster {
        check_cluster(&mut s, &sentinels, &redis_urls, &key_prefix);
    }
    let (url, cluster_nodes) = match (cluster, redis_urls.first()) {
        (true, _) => (None, redis_urls),
        (false, first) => (first.cloned(), Vec::new()),
    };
    s.finish();
    let redis = (store == StoreKind::Redis).then_some(RedisSettings {
        url,
        cluster_nodes,
        sentinels,
        master_name,
        password,
        key_prefix,
        connect_timeout,
        response_timeout,
        min_replicas: min_replicas.clamp(0, 16) as u32,
        replica_timeout,
        eviction_check,
    });
    ReplayConfig {
        store,
        max_entries,
        reject_issued_before_start,
        sweep_interval,
        redis,
        ready_requires_store,
    }
}

/// `redis_url`: one URL, or a list of them (the seed nodes of a Redis Cluster).
fn read_urls(s: &mut Section) -> Vec<String> {
    match s.raw("redis_url") {
        None => Vec::new(),
        Some(toml::Value::String(u)) => vec![u.clone()],
        Some(toml::Value::Array(items)) => {
            let urls: Vec<String> = items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            if urls.len() != items.len() || urls.is_empty() {
                s.err(
                    "redis_url",
                    "expected a URL or a non-empty list of URL strings",
                );
            }
            urls
        }
        Some(other) => {
            s.err(
                "redis_url",
                format!(
                    "expected a URL or a list of URLs, found {}",
                    other.type_str()
                ),
            );
            Vec::new()
        }
    }
}

/// What a Redis Cluster setting cannot be combined with.
fn check_cluster(s: &mut Section, sentinels: &[String], urls: &[String], prefix: &str) {
    if !sentinels.is_empty() {
        s.err(
            "redis_cluster",
            "a cluster has no Sentinels: set redis_url to its nodes, or sentinels without redis_cluster",
        );
    }
    if urls.is_empty() {
        s.err("redis_url", "redis_cluster needs at least one node URL");
    }
    if urls
        .iter()
        .any(|u| u.starts_with('/') || u.starts_with("redis+unix:"))
    {
        s.err(
            "redis_url",
            "a cluster's nodes are reached over TCP, not a unix socket",
        );
    }
    // the gate puts its own hash tag into every key: a brace in the prefix would take its place
    if prefix.contains(['{', '}']) {
        s.err(
            "key_prefix",
            "must not contain { or } with redis_cluster (the gate sets each key's hash tag)",
        );
    }
}
