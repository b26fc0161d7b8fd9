//! The Redis replay store against a real `redis-server` (installed by scripts/test), started
//! on a free port per test: shared replay protection across gates, atomicity, TTLs, outages,
//! passwords, unix sockets and Sentinel.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::json;

/// A real redis-server on a free port (and optionally a unix socket), killed on drop.
struct Redis {
    port: u16,
    dir: TempDir,
    args: Vec<String>,
    child: Option<Child>,
}

impl Redis {
    async fn start(extra: &[&str]) -> Redis {
        let mut r = Redis {
            port: free_port(),
            dir: TempDir::new("redis"),
            args: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        r.spawn().await;
        if !r.args.iter().any(|a| a == "--replicaof") {
            r.seed_epoch().await;
        }
        r
    }

    /// A Redis in use before the gate came: an epoch from the past, under both prefixes the
    /// tests use. (On a fresh Redis the gate creates the epoch and refuses tokens issued up
    /// to that second; `records_lost_…` tests exactly that.)
    async fn seed_epoch(&self) {
        let mut c = self.conn_any().await;
        let epoch = format!("{}-testseed", now() - 60);
        for key in ["jwt-gate:replay:epoch", "test:epoch"] {
            let _: () = redis::cmd("SET")
                .arg(key)
                .arg(&epoch)
                .query_async(&mut c)
                .await
                .unwrap();
        }
    }

    /// A connection with the password from the start arguments, if any.
    async fn conn_any(&self) -> redis::aio::MultiplexedConnection {
        let pw = self
            .args
            .iter()
            .position(|a| a == "--requirepass")
            .map(|i| self.args[i + 1].clone());
        self.conn(pw.as_deref()).await
    }

    fn socket(&self) -> PathBuf {
        self.dir.0.join("redis.sock")
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir.0)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        self.child = Some(child);
        wait_listening(format!("127.0.0.1:{}", self.port).parse().unwrap()).await;
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn conn(&self, password: Option<&str>) -> redis::aio::MultiplexedConnection {
        let url = match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => self.url(),
        };
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The replay records in Redis (the store's epoch key aside).
async fn replay_keys(c: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(c).await.unwrap();
    keys.into_iter().filter(|k| !k.ends_with("epoch")).collect()
}

fn redis_gate_config(up: &Upstream, replay: &str) -> String {
    config_text(
        up.addr,
        &format!(
            "{}valid_within = 300\n[replay]\nstore = \"redis\"\n{replay}",
            hs256_provider()
        ),
    )
}

#[tokio::test]
async fn a_token_used_on_one_gate_is_refused_on_the_other() {
    let redis = Redis::start(&[]).await;
    let up = Upstream::start().await;
    let cfg = redis_gate_config(&up, &format!("redis_url = \"{}\"\n", redis.url()));
    let (a, b) = (Gate::start(&cfg).await, Gate::start(&cfg).await);
    let token = hs256(&claims("shared@x"));
    assert_eq!(get(&callback(&a, &token)).await.status, 200);
    let got = get(&callback(&b, &token)).await;
    assert_eq!((got.status.as_u16(), got.reason()), (401, Some("replayed")));
    assert_eq!(get(&callback(&a, &token)).await.reason(), Some("replayed"));
    assert_eq!(up.callbacks().len(), 1);
}

#[tokio::test]
async fn fifty_concurrent_uses_over_two_gates_forward_exactly_one() {
    let redis = Redis::start(&[]).await;
    let up = Upstream::start().await;
    let cfg = redis_gate_config(&up, &format!("redis_url = \"{}\"\n", redis.url()));
    let gates = [Gate::start(&cfg).await, Gate::start(&cfg).await];
    let token = hs256(&claims("race@x"));
    let urls: Vec<String> = (0..50).map(|i| callback(&gates[i % 2], &token)).collect();
    let tasks: Vec<_> = urls
        .into_iter()
        .map(|u| tokio::spawn(async move { get(&u).await.status.as_u16() }))
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        49,
        "{statuses:?}"
    );
    assert_eq!(up.callbacks().len(), 1);
}

#[tokio::test]
async fn entries_live_until_the_token_could_no_longer_pass() {
    let redis = Redis::start(&[]).await;
    let up = Upstream::start().await;
    let cfg = redis_gate_config(
        &up,
        &format!("redis_url = \"{}\"\nkey_prefix = \"test:\"\n", redis.url()),
    );
    let gate = Gate::start(&cfg).await;
    let n = now();
    let token = hs256(&json!({"name": "N", "email": "ttl@x", "iat": n}));
    assert_eq!(get(&callback(&gate, &token)).await.status, 200);
    let mut c = redis.conn(None).await;
    let keys = replay_keys(&mut c).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(
        keys[0].starts_with("test:") && keys[0].len() == 5 + 64,
        "{}",
        keys[0]
    );
    assert!(!keys[0].contains(token.split('.').nth(2).unwrap()));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut c)
        .await
        .unwrap();
    // through the last second the iat window accepts: iat + valid_within (300) + 1, from now
    let want = (n + 301 - now()) * 1000;
    assert!(
        pttl <= want && pttl > want - 5000,
        "PTTL {pttl} ms, expected about {want} ms"
    );

    // a long exp does not extend it: the iat window refuses the token after 300 s anyway
    let token =
        hs256(&json!({"name": "N", "email": "ttl2@x", "iat": n, "exp": n + 3600, "jti": "long"}));
    assert_eq!(get(&callback(&gate, &token)).await.status, 200);
    let keys = replay_keys(&mut c).await;
    let mut ttls = Vec::new();
    for k in &keys {
        let t: i64 = redis::cmd("PTTL").arg(k).query_async(&mut c).await.unwrap();
        ttls.push(t);
    }
    ttls.sort();
    assert!(
        ttls.iter().all(|&t| t > 295_000 && t <= 301_000),
        "{ttls:?}"
    );
}

#[tokio::test]
async fn logins_fail_closed_while_redis_is_down_and_recover_without_a_restart() {
    let mut redis = Redis::start(&[]).await;
    let up = Upstream::start().await;
    let cfg = redis_gate_config(&up, &format!("redis_url = \"{}\"\n", redis.url()));
    let gate = Gate::start(&cfg).await;
    assert_eq!(
        get(&callback(&gate, &hs256(&claims("before@x"))))
            .await
            .status,
        200
    );

    redis.stop();
    let got = get(&callback(&gate, &hs256(&claims("during@x")))).await;
    assert_eq!(
        (got.status.as_u16(), got.reason()),
        (503, Some("replay_store_unavailable"))
    );
    assert_eq!(
        get(&gate.url("/group/project.git/info/refs")).await.status,
        200,
        "pass-through must keep flowing"
    );
    assert_eq!(
        up.callbacks().len(),
        1,
        "nothing reached GitLab while Redis was down"
    );

    redis.spawn().await;
    let mut recovered = false;
    for i in 0..50 {
        let got = get(&callback(&gate, &hs256(&claims(&format!("after{i}@x"))))).await;
        if got.status == 200 {
            recovered = true;
            break;
        }
        // this Redis came back empty: until it answers, logins fail closed; then tokens
        // issued up to the second the gate saw the loss are refused as such
        assert!(
            matches!(
                got.reason(),
                Some("replay_store_unavailable" | "issued_before_store_epoch")
            ),
            "{:?}",
            got.reason()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "logins did not recover after Redis came back");
}

#[tokio::test]
async fn a_gate_starts_while_redis_is_down() {
    let port = free_port();
    let up = Upstream::start().await;
    let cfg = redis_gate_config(&up, &format!("redis_url = \"redis://127.0.0.1:{port}\"\n"));
    let gate = Gate::start(&cfg).await;
    assert_eq!(get(&gate.url("/explore")).await.status, 200);
    assert_eq!(
        get(&callback(&gate, &hs256(&claims("x@x")))).await.reason(),
        Some("replay_store_unavailable")
    );
}

#[tokio::test]
async fn requirepass_with_a_password_file() {
    let redis = Redis::start(&["--requirepass", "s3cret-pass"]).await;
    let up = Upstream::start().await;
    let dir = TempDir::new("pw");
    let pw = dir.write("redis.pass", "s3cret-pass\n");
    let with = Gate::start(&redis_gate_config(
        &up,
        &format!(
            "redis_url = \"{}\"\nredis_password_file = \"{}\"\n",
            redis.url(),
            pw.display()
        ),
    ))
    .await;
    assert_eq!(
        get(&callback(&with, &hs256(&claims("pw@x")))).await.status,
        200
    );
    let without = Gate::start(&redis_gate_config(
        &up,
        &format!("redis_url = \"{}\"\n", redis.url()),
    ))
    .await;
    let got = get(&callback(&without, &hs256(&claims("nopw@x")))).await;
    assert_eq!(
        (got.status.as_u16(), got.reason()),
        (503, Some("replay_store_unavailable"))
    );
    let mut c = redis.conn(Some("s3cret-pass")).await;
    assert_eq!(replay_keys(&mut c).await.len(), 1);
}

#[tokio::test]
async fn a_unix_socket_as_omnibus_uses() {
    let mut redis = Redis {
        port: free_port(),
        dir: TempDir::new("redis-sock"),
        args: vec![],
        child: None,
    };
    let sock = redis.socket();
    redis.args = vec![
        "--unixsocket".into(),
        sock.display().to_string(),
        "--unixsocketperm".into(),
        "700".into(),
    ];
    redis.spawn().await;
    redis.seed_epoch().await;
    let up = Upstream::start().await;
    for url in [
        sock.display().to_string(),
        format!("redis+unix://{}", sock.display()),
    ] {
        let gate = Gate::start(&redis_gate_config(&up, &format!("redis_url = \"{url}\"\n"))).await;
        let token = hs256(&claims(&format!("sock{}@x", url.len())));
        assert_eq!(get(&callback(&gate, &token)).await.status, 200, "{url}");
        assert_eq!(
            get(&callback(&gate, &token)).await.reason(),
            Some("replayed"),
            "{url}"
        );
    }
}

#[tokio::test]
async fn sentinel_resolves_the_master() {
    let redis = Redis::start(&[]).await;
    let sdir = TempDir::new("sentinel");
    let sport = free_port();
    let conf = sdir.write(
        "sentinel.conf",
        &format!("port {sport}\nbind 127.0.0.1\nsentinel monitor gitlab-redis 127.0.0.1 {} 1\nsentinel down-after-milliseconds gitlab-redis 5000\n", redis.port),
    );
    let sentinel = Bin(Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    wait_listening(format!("127.0.0.1:{sport}").parse().unwrap()).await;
    let up = Upstream::start().await;
    let gate = Gate::start(&redis_gate_config(
        &up,
        &format!("sentinels = [\"127.0.0.1:{sport}\"]\nmaster_name = \"gitlab-redis\"\n"),
    ))
    .await;
    let token = hs256(&claims("sentinel@x"));
    assert_eq!(get(&callback(&gate, &token)).await.status, 200);
    assert_eq!(
        get(&callback(&gate, &token)).await.reason(),
        Some("replayed")
    );
    let mut c = redis.conn(None).await;
    assert_eq!(
        replay_keys(&mut c).await.len(),
        1,
        "the entry went to the master the sentinel named"
    );
    drop(sentinel);
}

#[tokio::test]
async fn readyz_reports_the_store_and_gates_only_when_asked() {
    let mut redis = Redis::start(&[]).await;
    let up = Upstream::start().await;
    for (gates, want_down) in [(false, 200), (true, 503)] {
        let cfg = redis_gate_config(
            &up,
            &format!(
                "redis_url = \"{}\"\nready_requires_store = {gates}\n",
                redis.url()
            ),
        );
        let cfg = cfg.replace("[admin]\naddr = \"\"", "[admin]\naddr = \"127.0.0.1:0\"");
        let gate = Gate::start(&cfg).await;
        let admin = gate.admin.expect("the admin listener is on");
        let ok = get(&format!("http://{admin}/readyz")).await;
        assert_eq!(ok.status, 200, "{}", ok.text());
        assert!(
            ok.text().contains("replay store: redis ok"),
            "{}",
            ok.text()
        );
        redis.stop();
        let down = get(&format!("http://{admin}/readyz")).await;
        assert_eq!(down.status.as_u16(), want_down, "{}", down.text());
        assert!(
            down.text().contains("replay store: redis unavailable"),
            "{}",
            down.text()
        );
        redis.spawn().await;
    }
}

#[tokio::test]
async fn the_first_login_after_redis_restarts_succeeds() {
    let mut redis = Redis::start(&[]).await;
    let up = Upstream::start().await;
    let cfg = redis_gate_config(&up, &format!("redis_url = \"{}\"\n", redis.url()));
    let gate = Gate::start(&cfg).await;
    let used = hs256(&claims("before-restart@x"));
    assert_eq!(get(&callback(&gate, &used)).await.status, 200);
    // a restart the gate has not noticed yet, with its data kept (persistence): the gate's
    // connection is broken, Redis answers again. (An empty restart is a loss: see
    // records_lost_to_a_flush_or_an_empty_restart_reopen_no_replay.)
    let mut c = redis.conn(None).await;
    let _: () = redis::cmd("SAVE").query_async(&mut c).await.unwrap();
    redis.stop();
    redis.spawn().await;
    let got = get(&callback(&gate, &hs256(&claims("first-after@x")))).await;
    assert_eq!(
        got.status,
        200,
        "the first login after the restart: {}",
        got.text()
    );
    // the kept record still refuses its token
    assert_eq!(
        get(&callback(&gate, &used)).await.reason(),
        Some("replayed")
    );
    // and the retry never makes a first use out of a replay
    let again = hs256(&claims("after-restart@x"));
    assert_eq!(get(&callback(&gate, &again)).await.status, 200);
    assert_eq!(
        get(&callback(&gate, &again)).await.reason(),
        Some("replayed")
    );
    assert_eq!(up.callbacks().len(), 3);
}

#[tokio::test]
async fn a_redis_that_never_answers_costs_each_login_one_deadline() {
    // a socket that accepts and says nothing: connects hang, replies never come
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let up = Upstream::start().await;
    let cfg = redis_gate_config(
        &up,
        &format!(
            "redis_url = \"redis://{addr}/0\"\nredis_connect_timeout = 0.2\nredis_timeout = 0.2\n"
        ),
    );
    let gate = Gate::start(&cfg).await;
    let t0 = std::time::Instant::now();
    let tries: Vec<_> = (0..20)
        .map(|i| {
            let url = callback(&gate, &hs256(&claims(&format!("stuck{i}@x"))));
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    for t in tries {
        let got = t.await.unwrap();
        assert_eq!(
            (got.status.as_u16(), got.reason()),
            (503, Some("replay_store_unavailable"))
        );
    }
    // each call has one deadline (connect + 2 x response = 0.6 s) and none queues behind
    // another's connect: twenty in parallel finish in about one deadline, not twenty
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "{:?} for 20 parallel logins",
        t0.elapsed()
    );
    assert_eq!(up.callbacks().len(), 0);
    hold.abort();
}

#[tokio::test]
async fn each_record_keeps_its_first_use_for_replicas_to_report() {
    let redis = Redis::start(&[]).await;
    let up = Upstream::start().await;
    let cfg = redis_gate_config(&up, &format!("redis_url = \"{}\"\n", redis.url())).replace(
        "[listen]\n",
        "[listen]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
    );
    let (a, b) = (Gate::start(&cfg).await, Gate::start(&cfg).await);
    let token = hs256(&claims("forensics@x"));
    let before_ms = now() * 1000;
    assert_eq!(
        get_from(&callback(&a, &token), "198.51.100.7").await.status,
        200
    );
    // the record in Redis: <attempt>|<first use, ms>|<client>
    let mut conn = redis.conn(None).await;
    let keys = replay_keys(&mut conn).await;
    let value: String = redis::cmd("GET")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    let parts: Vec<&str> = value.split('|').collect();
    assert_eq!(parts.len(), 3, "{value}");
    let at: i64 = parts[1].parse().unwrap();
    assert!(at >= before_ms && at <= now() * 1000 + 1000, "{value}");
    assert_eq!(parts[2], "198.51.100.7");
    // the other replica refuses the replay from elsewhere
    assert_eq!(
        get_from(&callback(&b, &token), "203.0.113.9")
            .await
            .reason(),
        Some("replayed")
    );
    assert_eq!(up.callbacks().len(), 1);
}

#[tokio::test]
async fn a_redis_that_may_evict_replay_keys_keeps_the_gate_out_of_service() {
    let redis = Redis::start(&["--maxmemory-policy", "volatile-lru"]).await;
    let up = Upstream::start().await;
    for (check, want, says) in [("refuse", 503, "not ready"), ("warn", 200, "warning")] {
        let cfg = redis_gate_config(
            &up,
            &format!(
                "redis_url = \"{}\"\nredis_eviction_check = \"{check}\"\n",
                redis.url()
            ),
        )
        .replace("[admin]\naddr = \"\"", "[admin]\naddr = \"127.0.0.1:0\"");
        let gate = Gate::start(&cfg).await;
        let ready = get(&format!("http://{}/readyz", gate.admin.unwrap())).await;
        assert_eq!(ready.status.as_u16(), want, "{check}: {}", ready.text());
        assert!(
            ready.text().contains(&format!(
                "replay store {says}: Redis maxmemory-policy volatile-lru"
            )),
            "{check}: {}",
            ready.text()
        );
    }
    // noeviction is ready
    let safe = Redis::start(&[]).await;
    let cfg = redis_gate_config(&up, &format!("redis_url = \"{}\"\n", safe.url()))
        .replace("[admin]\naddr = \"\"", "[admin]\naddr = \"127.0.0.1:0\"");
    let gate = Gate::start(&cfg).await;
    let ready = get(&format!("http://{}/readyz", gate.admin.unwrap())).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert!(
        !ready.text().contains("maxmemory-policy"),
        "{}",
        ready.text()
    );
}

#[tokio::test]
async fn with_min_replicas_a_login_waits_for_a_replica_or_is_refused() {
    let mut master = Redis::start(&[]).await;
    let up = Upstream::start().await;
    let cfg = redis_gate_config(
        &up,
        &format!(
            "redis_url = \"{}\"\nredis_min_replicas = 1\nredis_replica_timeout = 0.2\n",
            master.url()
        ),
    );
    let gate = Gate::start(&cfg).await;
    // no replica acknowledges: refused, nothing reaches GitLab
    let got = get(&callback(&gate, &hs256(&claims("alone@x")))).await;
    assert_eq!(
        (got.status.as_u16(), got.reason()),
        (503, Some("replay_store_unavailable"))
    );
    assert_eq!(up.callbacks().len(), 0);
    // with a replica attached, the same kind of login goes through
    let replica = Redis::start(&["--replicaof", "127.0.0.1", &master.port.to_string()]).await;
    let mut ok = false;
    for i in 0..50 {
        let got = get(&callback(
            &gate,
            &hs256(&claims(&format!("replicated{i}@x"))),
        ))
        .await;
        if got.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "no login went through once a replica acknowledged");
    assert_eq!(up.callbacks().len(), 1);
    drop(replica);
    master.stop();
}

#[tokio::test]
async fn records_lost_to_a_flush_or_an_empty_restart_reopen_no_replay() {
    let mut redis = Redis::start(&[]).await;
    let up = Upstream::start().await;
    let cfg = redis_gate_config(&up, &format!("redis_url = \"{}\"\n", redis.url()))
        .replace("[admin]\naddr = \"\"", "[admin]\naddr = \"127.0.0.1:0\"");
    let gate = Gate::start(&cfg).await;
    let readyz = format!("http://{}/readyz", gate.admin.unwrap());
    // a fresh Redis has no epoch yet: the gate creates it, refusing what came before
    let _ = get(&readyz).await;
    // a token used, then its record lost (a second later: the epoch is whole seconds)
    let early = hs256(&claims("early@x"));
    assert_eq!(get(&callback(&gate, &early)).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut conn = redis.conn(None).await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    // the gate notices (at /readyz here; every 5 s and at each reconnect in any case)
    assert_eq!(get(&readyz).await.status, 200);
    let got = get(&callback(&gate, &early)).await;
    assert_eq!(
        (got.status.as_u16(), got.reason()),
        (401, Some("issued_before_store_epoch")),
        "a token used before the flush passed again"
    );
    // tokens issued from the new epoch on sign in
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = hs256(&claims("after-flush@x"));
    assert_eq!(get(&callback(&gate, &fresh)).await.status, 200);
    // a restart without persistence is the same loss
    let before_restart = hs256(&claims("before-restart@x"));
    assert_eq!(get(&callback(&gate, &before_restart)).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    redis.stop();
    redis.spawn().await;
    // the first use of the broken connection finds the new epoch and fails closed; from
    // then on the token is refused for what it is — it never passes
    let mut last = None;
    for _ in 0..30 {
        let got = get(&callback(&gate, &before_restart)).await;
        assert_ne!(
            got.status, 200,
            "a token used before the restart passed again"
        );
        last = got.reason().map(str::to_string);
        if last.as_deref() == Some("issued_before_store_epoch") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last.as_deref(), Some("issued_before_store_epoch"));
    assert_eq!(up.callbacks().len(), 3);
}
