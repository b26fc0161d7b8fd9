//! Hostile clients against the real binary: idle sockets of every kind are closed on time
//! (before protocol detection too), and at `max_connections` idle connections give way so
//! real clients are still served, while busy ones are never cut.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

async fn gate(up: &Upstream, dir: &TempDir, listen_extra: &str) -> Served {
    let cfg = dir.write(
        "gate.toml",
        &format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n{listen_extra}[admin]\naddr = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://{}\"\n[provider]\nsecret = \"{SECRET}\"\n",
            up.addr
        ),
    );
    run_bin(&cfg).await
}

/// How long until the gate closes `s` (reads until EOF or a reset), up to `limit`.
async fn closed_after(mut s: TcpStream, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((t0 + limit).into(), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t0.elapsed()),
            Ok(Ok(_)) => {} // a response to what we sent; keep reading
        }
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

#[tokio::test]
async fn idle_sockets_of_every_kind_are_closed_on_time() {
    let up = Upstream::start().await;
    let dir = TempDir::new("idle");
    let g = gate(&up, &dir, "header_read_timeout = 1\nidle_timeout = 1\n").await;
    let limit = Duration::from_secs(6);

    // nothing at all: closed before any protocol was chosen
    let silent = connect(g.addr).await;
    // part of the HTTP/2 preface: protocol detection never completes
    let mut preface = connect(g.addr).await;
    preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    // HTTP/1 keep-alive after one answered request
    let mut kept = connect(g.addr).await;
    kept.write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // HTTP/2 (prior knowledge) with no open stream after one request, answering PINGs
    let h2 = connect(g.addr).await;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(h2),
    )
    .await
    .unwrap();
    let h2_done = tokio::spawn(async move {
        let t0 = Instant::now();
        let _ = conn.await;
        t0.elapsed()
    });
    let r = send
        .send_request(
            http::Request::get(format!("http://{}/h2", g.addr))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(r);

    let (a, b, c) = tokio::join!(
        closed_after(silent, limit),
        closed_after(preface, limit),
        closed_after(kept, limit)
    );
    assert!(a.is_some(), "a silent socket stayed open");
    assert!(b.is_some(), "a partial HTTP/2 preface stayed open");
    assert!(c.is_some(), "an idle keep-alive connection stayed open");
    let h2_lived = tokio::time::timeout(limit, h2_done)
        .await
        .expect("an HTTP/2 connection with no stream stayed open")
        .unwrap();
    assert!(h2_lived < limit);
    // the request on each connection was served before it idled out
    let targets: Vec<String> = up.seen().into_iter().map(|s| s.target).collect();
    assert!(targets.contains(&"/one".to_string()) && targets.contains(&"/h2".to_string()));
    let closed = metric(g.admin.unwrap(), "jwt_gate_connections_idle_closed_total").await;
    // the silent, partial-preface and HTTP/2 connections can only have been closed by the
    // gate's idle timer; the HTTP/1 one may have gone to hyper's header timer first
    assert!(closed >= 3.0, "{closed} idle connections closed");
}

#[tokio::test]
async fn a_busy_download_outlives_the_idle_timeout() {
    let up = Upstream::start().await;
    let dir = TempDir::new("busy");
    let g = gate(&up, &dir, "idle_timeout = 1\n").await;
    // /slow/2500 holds its request in flight for longer than the idle timeout
    let got = get(&format!("http://{}/slow/2500", g.addr)).await;
    assert_eq!(got.status, 200, "{}", got.text());
}

#[tokio::test]
async fn at_the_cap_idle_sockets_give_way_to_real_clients() {
    let up = Upstream::start().await;
    let dir = TempDir::new("cap");
    let g = gate(&up, &dir, "max_connections = 20\n").await;
    // a flood of idle sockets fills the cap
    let mut idle = Vec::new();
    for _ in 0..60 {
        idle.push(connect(g.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // real clients are still served: idle sockets were closed to make room
    for i in 0..5 {
        let got = get(&format!("http://{}/real/{i}", g.addr)).await;
        assert_eq!(got.status, 200, "{}", got.text());
    }
    let open = metric(g.admin.unwrap(), "jwt_gate_open_connections").await;
    assert!(open <= 21.0, "the cap did not hold: {open} open");
    assert_eq!(up.seen().len(), 5);
}

#[tokio::test]
async fn at_the_cap_with_every_connection_busy_new_ones_are_refused_and_none_cut() {
    let up = Upstream::start().await;
    let dir = TempDir::new("cap-busy");
    let g = gate(&up, &dir, "max_connections = 4\n").await;
    let addr = g.addr;
    let busy: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { get(&format!("http://{addr}/slow/1500")).await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // a fifth connection gets no answer: closed at once
    let extra = connect(addr).await;
    let mut extra = extra;
    let _ = extra
        .write_all(b"GET /fifth HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), extra.read_to_end(&mut buf)).await;
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    for b in busy {
        assert_eq!(b.await.unwrap().status, 200, "a busy connection was cut");
    }
    assert!(up.seen().iter().all(|s| s.target != "/fifth"));
    let m = get(&format!("http://{}/metrics", g.admin.unwrap()))
        .await
        .text();
    assert!(
        m.lines()
            .any(|l| l.starts_with("jwt_gate_connections_refused_total") && !l.ends_with(" 0")),
        "{m}"
    );
}

/// A callback sent as if through the trusted proxy on behalf of `from`.
async fn callback_from(gate: &Gate, from: &str, token: &str) -> Got {
    get_from(&callback(gate, token), from).await
}

#[tokio::test]
async fn a_forgery_flood_is_throttled_before_verification_and_real_users_pass() {
    let up = Upstream::start().await;
    let cfg = config_text(
        up.addr,
        &format!(
            "{}[gate]\nthrottle_burst = 5\nthrottle_per_second = 0.05\n",
            hs256_provider()
        ),
    )
    .replace(
        "[listen]\n",
        "[listen]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
    )
    .replace("[admin]\naddr = \"\"", "[admin]\naddr = \"127.0.0.1:0\"");
    let gate = Gate::start(&cfg).await;
    let attacker = "203.0.113.9";
    // five forgeries spend the budget (a forged HS256 signature costs one point)...
    for i in 0..5 {
        let forged = hs256_with(&[b'x'; 40], &claims(&format!("forged{i}@x")));
        let got = callback_from(&gate, attacker, &forged).await;
        assert_eq!(got.reason(), Some("bad_signature"));
    }
    // ...then the attacker is answered 429 before anything is verified: even a valid
    // token is not looked at, so it is not burned either
    let valid = hs256(&claims("victim@x"));
    let got = callback_from(&gate, attacker, &valid).await;
    assert_eq!(
        (got.status.as_u16(), got.reason()),
        (429, Some("too_many_refused_logins"))
    );
    let wait: u64 = got.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&wait), "Retry-After {wait}");
    assert_eq!(up.callbacks().len(), 0);
    // a real user elsewhere signs in at once, with the very token the attacker held back
    let got = callback_from(&gate, "198.51.100.7", &valid).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(up.callbacks().len(), 1);
    // counted apart in the metrics
    let m = get(&format!("http://{}/metrics", gate.admin.unwrap()))
        .await
        .text();
    assert!(
        m.contains(r#"jwt_gate_login_decisions_total{outcome="rejected",reason="too_many_refused_logins"} 1"#),
        "{m}"
    );
}
