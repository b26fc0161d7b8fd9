//! How the store reaches Redis: one server (named directly or found through Sentinel) or a
//! Redis Cluster, behind one connection type that every command of the store runs on.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisConnectionInfo, RedisFuture, Value};

use crate::config::RedisSettings;

/// Where the store's Redis is.
pub(super) enum Target {
    Direct(redis::Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    Cluster(ClusterClient),
}

/// A connection to one Redis (managed: it reconnects by itself), or to a cluster (which
/// follows `MOVED`/`ASK`, learns the slot map again and reconnects its nodes by itself).
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A socket path becomes a `redis+unix://` URL.
pub fn normalize_url(url: &str) -> String {
    if url.starts_with('/') {
        format!("redis+unix://{url}")
    } else {
        url.to_string()
    }
}

/// How many times a cluster command follows a redirect or retries a node before it fails:
/// a `MOVED`/`ASK` storm or a lost node ends in a refusal within the login's deadline, and
/// the store's own timeouts bound the whole call in any case.
const CLUSTER_RETRIES: u32 = 3;

impl Target {
    /// Check the settings (URLs parse); no connection is made yet.
    pub(super) fn from_settings(s: &RedisSettings) -> Result<Target, String> {
        if !s.cluster_nodes.is_empty() {
            return cluster_target(s);
        }
        if !s.sentinels.is_empty() {
            return sentinel_target(s);
        }
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
        let client = redis::Client::open(info).map_err(|e| format!("replay.redis_url: {e}"))?;
        Ok(Target::Direct(client))
    }

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }

    pub(super) fn is_sentinel(&self) -> bool {
        matches!(self, Target::Sentinel(_))
    }

    /// A new connection, within a few connect timeouts.
    pub(super) async fn connect(
        &self,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Conn, String> {
        let client = match self {
            Target::Cluster(c) => {
                let connecting = c.get_async_connection();
                return tokio::time::timeout(connect_timeout * 4, connecting)
                    .await
                    .map_err(|_| "no cluster node answered in time".to_string())?
                    .map(Conn::Cluster)
                    .map_err(|e| format!("cluster: {e}"));
            }
            Target::Direct(c) => c.clone(),
            Target::Sentinel(s) => {
                let mut s = s.lock().await;
                tokio::time::timeout(connect_timeout * 4, s.async_get_client())
                    .await
                    .map_err(|_| "sentinels did not answer in time".to_string())?
                    .map_err(|e| format!("sentinel: {e}"))?
            }
        };
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        tokio::time::timeout(
            connect_timeout * 2,
            ConnectionManager::new_with_config(client, cfg),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map(Conn::Single)
        .map_err(|e| e.to_string())
    }
}

fn sentinel_target(s: &RedisSettings) -> Result<Target, String> {
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
        node = node.set_redis_connection_info(RedisConnectionInfo::default().set_password(pw));
    }
    let client = SentinelClient::build(urls, master, Some(node), SentinelServerType::Master)
        .map_err(|e| format!("replay.sentinels: {e}"))?;
    Ok(Target::Sentinel(tokio::sync::Mutex::new(client)))
}

fn cluster_target(s: &RedisSettings) -> Result<Target, String> {
    let mut nodes = Vec::new();
    for url in &s.cluster_nodes {
        let info = normalize_url(url)
            .into_connection_info()
            .map_err(|e| format!("replay.redis_url: {e}"))?;
        nodes.push(info);
    }
    let mut b = ClusterClientBuilder::new(nodes)
        .connection_timeout(s.connect_timeout)
        .response_timeout(s.response_timeout)
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(5)
        .max_retry_wait(50);
    if let Some(pw) = &s.password {
        b = b.password(pw);
    }
    let client = b.build().map_err(|e| format!("replay.redis_url: {e}"))?;
    Ok(Target::Cluster(client))
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// The `maxmemory-policy` of the server, or of every primary of a cluster (any one of
    /// them evicting is enough to reopen the tokens whose keys it holds). `None`: it could
    /// not be read (managed Redis often renames `CONFIG`).
    pub(super) async fn eviction_policies(&mut self, limit: Duration) -> Option<Vec<String>> {
        let cmd = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .clone();
        let reply = match self {
            Conn::Single(c) => ask::<Value, _>(c, &cmd, limit).await,
            Conn::Cluster(c) => {
                let all = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                within(limit, c.route_command(cmd, all)).await
            }
        };
        let mut policies = Vec::new();
        collect_policies(&reply.ok()?, &mut policies);
        (!policies.is_empty()).then_some(policies)
    }
}

/// The policy names in a `CONFIG GET maxmemory-policy` reply, however it is shaped: a
/// `[name, value]` array (RESP2), a map (RESP3), or one of those per node of a cluster.
fn collect_policies(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::BulkString(b) => {
            let s = String::from_utf8_lossy(b);
            if is_policy_name(&s) {
                out.push(s.into_owned());
            }
        }
        Value::SimpleString(s) if is_policy_name(s) => out.push(s.clone()),
        Value::Array(items) | Value::Set(items) => {
            items.iter().for_each(|i| collect_policies(i, out));
        }
        Value::Map(pairs) => pairs.iter().for_each(|(k, v)| {
            collect_policies(k, out);
            collect_policies(v, out);
        }),
        _ => {}
    }
}

/// Redis' eviction policies: `noeviction`, `allkeys-*` and `volatile-*`.
fn is_policy_name(s: &str) -> bool {
    s == "noeviction" || s.starts_with("allkeys-") || s.starts_with("volatile-")
}

/// A Redis call (a command, a pipeline) within `limit`: its reply, or why there is none.
/// Every call the store makes is bounded so: a Redis that stops answering costs a login its
/// deadline, never more.
pub(super) async fn within<T>(
    limit: Duration,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, call).await {
        Err(_) => Err("Redis did not answer in time".into()),
        Ok(reply) => reply.map_err(|e| e.to_string()),
    }
}

/// One command within `limit` (see [`within`]).
pub(super) async fn ask<T: redis::FromRedisValue, C: ConnectionLike + Send>(
    conn: &mut C,
    cmd: &Cmd,
    limit: Duration,
) -> Result<T, String> {
    within(limit, cmd.query_async::<T>(conn)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_read_from_every_reply_shape() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let resp2 = Value::Array(vec![bulk("maxmemory-policy"), bulk("allkeys-lru")]);
        let per_node = Value::Map(vec![
            (bulk("127.0.0.1:7000"), resp2.clone()),
            (
                bulk("127.0.0.1:7001"),
                Value::Array(vec![bulk("maxmemory-policy"), bulk("noeviction")]),
            ),
        ]);
        let mut out = Vec::new();
        collect_policies(&per_node, &mut out);
        assert_eq!(out, ["allkeys-lru", "noeviction"]);
    }
}
