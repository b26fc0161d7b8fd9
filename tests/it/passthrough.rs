//! Everything that is not the callback streams through untouched, with the header rules,
//! limits and error pages of a production proxy.

use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::Full;

fn base(up: &Upstream) -> String {
    config_text(up.addr, &hs256_provider())
}

#[tokio::test]
async fn method_path_query_and_body_pass_byte_exact() {
    let up = Upstream::start().await;
    let gate = Gate::start(&base(&up)).await;
    let body: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let target = "/api/v4/projects/1%2F2/repository/files?ref=main&path=a%20b;c&x=%ZZ";
    let req = Request::patch(gate.url(target))
        .header("x-custom", "kept")
        .header("authorization", "Bearer api-token")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let got = send(&client(), req).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), format!("upstream saw PATCH {target}"));
    // hop-by-hop response headers (and those Connection names) are not passed back
    assert_eq!(got.headers["x-upstream"], "yes");
    assert!(got.headers.get("x-upstream-private").is_none());
    assert!(got.headers.get("keep-alive").is_none());
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "PATCH");
    assert_eq!(seen[0].target, target);
    assert_eq!(seen[0].body.as_ref(), &body[..]);
    assert_eq!(seen[0].headers["x-custom"], "kept");
    assert_eq!(seen[0].headers["authorization"], "Bearer api-token");
}

#[tokio::test]
async fn hop_by_hop_and_identity_headers_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let gate = Gate::start(&base(&up)).await;
    let req = "GET /dashboard HTTP/1.1\r\nHost: gitlab.example\r\n\
               Connection: keep-alive, X-Private\r\nX-Private: secret\r\nKeep-Alive: timeout=5\r\n\
               TE: trailers\r\nProxy-Authorization: Basic Zm9v\r\nProxy-Connection: keep-alive\r\n\
               X-Auth-Request-User: root\r\nX_Auth_Request_Email: root@example.com\r\n\
               x-auth-request-groups: admins\r\nX-AUTH-REQUEST-NAME: Admin\r\nX-Kept: yes\r\n\r\n";
    let resp = raw(gate.addr, req.as_bytes(), Duration::from_millis(500)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    let names: Vec<String> = seen[0].headers.keys().map(|k| k.to_string()).collect();
    for gone in [
        "x-private",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "x-auth-request-user",
        "x_auth_request_email",
        "x-auth-request-groups",
        "x-auth-request-name",
    ] {
        assert!(
            !names.contains(&gone.to_string()),
            "{gone} reached the upstream: {names:?}"
        );
    }
    assert_eq!(seen[0].headers["x-kept"], "yes");
    assert_eq!(seen[0].headers["host"], "gitlab.example");
}

#[tokio::test]
async fn x_forwarded_headers_are_replaced_from_the_connection() {
    let up = Upstream::start().await;
    let gate = Gate::start(&base(&up)).await;
    let req = "GET / HTTP/1.1\r\nHost: gitlab.example\r\nX-Forwarded-For: 6.6.6.6\r\n\
               X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nX-Real-IP: 6.6.6.6\r\n\
               Forwarded: for=6.6.6.6\r\nConnection: close\r\n\r\n";
    raw(gate.addr, req.as_bytes(), Duration::from_secs(2)).await;
    let h = &up.seen()[0].headers;
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "gitlab.example");
    assert!(h.get("forwarded").is_none());
}

#[tokio::test]
async fn every_spelling_of_a_client_address_claim_is_stripped_from_untrusted_peers() {
    let up = Upstream::start().await;
    let gate = Gate::start(&base(&up)).await;
    // what Rack (X-Forwarded-Scheme/-Ssl before -Proto), Puma < 6.4.3 (underscores) and
    // CDNs read as the client's address, scheme or port
    let spoofed = [
        "X-Forwarded_For",
        "X_Forwarded_For",
        "X_Real_IP",
        "Client-IP",
        "True-Client-IP",
        "X-Forwarded-Scheme",
        "X-Forwarded-Ssl",
        "X-Forwarded-Port",
        "X_Forwarded_Proto",
        "X-Original-URL",
        "X-Original-Forwarded-For",
    ];
    let mut req = "GET /spoof HTTP/1.1\r\nHost: gitlab.example\r\nX-Keep: 1\r\n".to_string();
    for name in spoofed {
        req.push_str(&format!("{name}: 6.6.6.6\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    raw(gate.addr, req.as_bytes(), Duration::from_secs(2)).await;
    let seen = up.seen();
    let h = &seen[0].headers;
    for name in spoofed {
        assert!(
            h.get(name).is_none(),
            "{name} reached the upstream: {:?}",
            h.get(name)
        );
    }
    assert!(
        h.iter().all(|(_, v)| v != "6.6.6.6"),
        "a spoofed address reached the upstream: {h:?}"
    );
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-keep"], "1", "unrelated headers pass");
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_chain_is_appended() {
    let up = Upstream::start().await;
    let cfg = base(&up).replace(
        "[listen]\n",
        "[listen]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
    );
    let gate = Gate::start(&cfg).await;
    let req = "GET / HTTP/1.1\r\nHost: gitlab.example\r\nX-Forwarded-For: 203.0.113.9\r\n\
               X-Forwarded-Proto: https\r\nConnection: close\r\n\r\n";
    raw(gate.addr, req.as_bytes(), Duration::from_secs(2)).await;
    let h = &up.seen()[0].headers;
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-real-ip"], "203.0.113.9");
    assert_eq!(h["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn absolute_form_target_uses_its_own_authority_as_host() {
    let up = Upstream::start().await;
    let gate = Gate::start(&base(&up)).await;
    let req = "GET http://gitlab.example/explore?x=1 HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n";
    let resp = raw(gate.addr, req.as_bytes(), Duration::from_secs(2)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = up.seen();
    assert_eq!(seen[0].target, "/explore?x=1");
    assert_eq!(seen[0].headers["host"], "gitlab.example");
}

#[tokio::test]
async fn websocket_upgrade_tunnels_after_101_and_strips_identity_headers() {
    let up = Upstream::start().await;
    let gate = Gate::start(&base(&up)).await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/ws", gate.addr),
    )
    .unwrap();
    req.headers_mut()
        .insert("x-auth-request-user", "root".parse().unwrap());
    req.headers_mut()
        .insert("x_auth_request_email", "root@example.com".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket handshake through the gate");
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        let msg = format!("hello {i}");
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg.clone()))
            .await
            .unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), msg);
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["upgrade"], "websocket");
    assert!(seen[0].headers.get("x-auth-request-user").is_none());
    assert!(seen[0].headers.get("x_auth_request_email").is_none());
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_slow_upstream_is_504() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gate = Gate::start(&config_text(dead, &hs256_provider())).await;
    let got = get(&gate.url("/explore")).await;
    assert_eq!(got.status, 502);
    assert_eq!(got.reason(), Some("upstream_unreachable"));
    assert!(got.text().contains("upstream_unreachable"));

    let up = Upstream::start().await;
    let cfg = base(&up).replace(
        "[upstream]\n",
        "[upstream]\nresponse_header_timeout = 0.3\n",
    );
    let gate = Gate::start(&cfg).await;
    let got = get(&gate.url("/slow/3000")).await;
    assert_eq!(got.status, 504);
    assert_eq!(got.reason(), Some("upstream_timeout"));
    // the gate still serves
    assert_eq!(get(&gate.url("/slow/0")).await.status, 200);
}

#[tokio::test]
async fn slowloris_headers_are_cut_off_and_nothing_reaches_the_upstream() {
    let up = Upstream::start().await;
    let cfg = base(&up).replace("[listen]\n", "[listen]\nheader_read_timeout = 0.5\n");
    let gate = Gate::start(&cfg).await;
    let mut s = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // the gate must close the connection on its own; 10 s is only the test's safety net
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the gate kept a slowloris connection open");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn limits_answer_431_414_405_and_400() {
    let up = Upstream::start().await;
    let cfg = base(&up).replace(
        "[listen]\n",
        "[listen]\nmax_headers = 20\nmax_header_bytes = 8192\nmax_uri_bytes = 2048\n",
    );
    let gate = Gate::start(&cfg).await;
    let w = Duration::from_secs(2);

    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..40 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let r = raw(gate.addr, many.as_bytes(), w).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");

    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let r = raw(gate.addr, big.as_bytes(), w).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");

    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(3000)
    );
    let r = raw(gate.addr, long.as_bytes(), w).await;
    assert!(
        r.starts_with("HTTP/1.1 414") && r.contains("uri_too_long"),
        "{r}"
    );

    let r = raw(
        gate.addr,
        b"CONNECT gitlab.example:443 HTTP/1.1\r\nHost: gitlab.example:443\r\n\r\n",
        w,
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.1 405") && r.contains("connect_refused"),
        "{r}"
    );

    let r = raw(
        gate.addr,
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        w,
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.1 400") && r.contains("duplicate_host"),
        "{r}"
    );

    assert_eq!(up.count(), 0, "no refused request may reach the upstream");
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let up = Upstream::start().await;
    let mut gate = Gate::start(&base(&up)).await;
    let url = gate.url("/slow/800");
    let inflight = tokio::spawn(async move { get(&url).await });
    // give the request time to be forwarded; the upstream answers only after 800 ms
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = gate.addr;
    gate.shutdown().await.unwrap();
    let got = inflight.await.unwrap();
    assert_eq!(got.status, 200, "the in-flight request was cut off");
    assert_eq!(got.text(), "upstream saw GET /slow/800");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let up = Upstream::start().await;
    let gate = Gate::start(&base(&up)).await;
    let c = client();
    for _ in 0..20 {
        let got = send(
            &c,
            Request::get(gate.url("/ping"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(got.status, 200);
    }
    // count the gate's connections to the upstream as the kernel sees them
    let seen = up.seen();
    assert_eq!(seen.len(), 20);
    let ports = established_connections_to(up.addr.port());
    assert!(
        ports <= 2,
        "expected a pooled connection, found {ports} upstream connections"
    );
}

/// Established TCP connections whose remote port is `port` (Linux /proc/net/tcp).
fn established_connections_to(port: u16) -> usize {
    let hex = format!("{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2].ends_with(&format!(":{hex}")) && f[3] == "01"
        })
        .count()
}

#[tokio::test]
async fn an_upstream_that_resets_or_answers_garbage_is_502() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for (behaviour, reason) in [
        ("reset", "upstream_bad_response"),
        ("garbage", "upstream_bad_response"),
    ] {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                if behaviour == "garbage" {
                    let _ = s.write_all(b"NOT-HTTP garbage\r\n\r\n").await;
                } else {
                    let _ = s.set_zero_linger(); // close with RST
                }
                drop(s);
            }
        });
        let gate = Gate::start(&config_text(addr, &hs256_provider())).await;
        let got = get(&gate.url("/api/v4/version")).await;
        assert_eq!(
            (got.status.as_u16(), got.reason()),
            (502, Some(reason)),
            "{behaviour}"
        );
    }
}
