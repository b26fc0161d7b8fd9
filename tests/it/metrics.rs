//! `/metrics` on the admin listener of the real binary: what it counts after real traffic,
//! and how it follows certificate and key reloads.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

/// Parsed OpenMetrics text: `name{labels}` → value (label order as written by the gate).
struct Scrape {
    content_type: String,
    series: HashMap<String, f64>,
    text: String,
}

impl Scrape {
    fn get(&self, key: &str) -> f64 {
        match self.series.get(key) {
            Some(v) => *v,
            None => panic!("series {key} missing from:\n{}", self.text),
        }
    }
}

async fn scrape(admin: SocketAddr) -> Scrape {
    let got = get(&format!("http://{admin}/metrics")).await;
    assert_eq!(got.status, 200);
    let text = got.text();
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect();
    Scrape {
        content_type: got
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default(),
        series,
        text,
    }
}

/// The binary on port 0, public and admin listening.
async fn start(dir: &TempDir, cfg_body: &str) -> (Served, SocketAddr, SocketAddr) {
    let cfg = dir.write(
        "gate.toml",
        &format!("[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n{cfg_body}"),
    );
    let served = run_bin(&cfg).await;
    let (addr, admin) = (served.addr, served.admin.expect("the admin listener is on"));
    (served, addr, admin)
}

/// A plain HS256 gate in front of `up`, listening (public and admin).
async fn start_plain(dir: &TempDir, up: &Upstream) -> (Served, SocketAddr, SocketAddr) {
    start(
        dir,
        &format!(
            "[upstream]\nurl = \"http://{}\"\n[provider]\nsecret = \"{SECRET}\"\n",
            up.addr
        ),
    )
    .await
}

#[tokio::test]
async fn metrics_count_requests_logins_and_the_replay_store() {
    let up = Upstream::start().await;
    let dir = TempDir::new("metrics");
    let (_bin, addr, admin) = start_plain(&dir, &up).await;

    let before = scrape(admin).await;
    assert!(
        before
            .content_type
            .starts_with("application/openmetrics-text"),
        "{}",
        before.content_type
    );
    assert!(before.text.ends_with("# EOF\n"));
    assert_eq!(
        before.get(r#"jwt_gate_build_info{version="0.1.0",tls_provider="aws-lc-rs"}"#),
        1.0
    );
    // every label set is there from the start, at zero
    assert_eq!(
        before.get(r#"jwt_gate_login_decisions_total{outcome="rejected",reason="replayed"}"#),
        0.0
    );
    assert_eq!(before.get("jwt_gate_replay_store_entries"), 0.0);

    for _ in 0..3 {
        assert_eq!(
            get(&format!("http://{addr}/api/v4/projects")).await.status,
            200
        );
    }
    let token = hs256(&claims("m@example.com"));
    let link = format!("http://{addr}/users/auth/jwt/callback?jwt={token}");
    assert_eq!(get(&link).await.status, 200);
    assert_eq!(get(&link).await.reason(), Some("replayed"));
    let forged = hs256_with(&[b'f'; 40], &claims("f@example.com"));
    let bad = get(&format!(
        "http://{addr}/users/auth/jwt/callback?jwt={forged}"
    ))
    .await;
    assert_eq!(bad.reason(), Some("bad_signature"));
    assert_eq!(
        get(&format!("http://{addr}/users/auth/%6Awt/callback"))
            .await
            .status,
        400
    );

    let after = scrape(admin).await;
    let get2xx = r#"jwt_gate_http_requests_total{method="GET",status_class="2xx"}"#;
    let get4xx = r#"jwt_gate_http_requests_total{method="GET",status_class="4xx"}"#;
    assert_eq!(after.get(get2xx) - before.get(get2xx), 4.0); // 3 pass-through + 1 login
    assert_eq!(after.get(get4xx) - before.get(get4xx), 3.0);
    for (outcome, reason, n) in [
        ("forwarded", "ok", 1.0),
        ("rejected", "replayed", 1.0),
        ("rejected", "bad_signature", 1.0),
        ("rejected", "alg_none", 0.0),
    ] {
        let key =
            format!(r#"jwt_gate_login_decisions_total{{outcome="{outcome}",reason="{reason}"}}"#);
        assert_eq!(after.get(&key), n, "{key}");
    }
    assert_eq!(after.get("jwt_gate_login_decision_seconds_count"), 3.0);
    // the forged token never reached the store: two checks, one entry
    assert_eq!(after.get("jwt_gate_replay_store_check_seconds_count"), 2.0);
    assert_eq!(after.get("jwt_gate_replay_store_entries"), 1.0);
    // upstream latency: 3 pass-through + 1 login went upstream
    assert_eq!(after.get("jwt_gate_upstream_response_seconds_count"), 4.0);
    assert_eq!(
        after.get(r#"jwt_gate_upstream_response_seconds_bucket{le="+Inf"}"#),
        4.0
    );
    assert!(after.get("jwt_gate_connections_total") >= 7.0);
    assert!(after.get("jwt_gate_process_resident_memory_bytes") > 1e6);
    assert!(after.get("jwt_gate_process_open_fds") > 3.0);
    assert_eq!(
        after.get(r#"jwt_gate_replay_store_errors_total{store="memory",error="full"}"#),
        0.0
    );
    // no series carries the token or a query string
    assert!(!after.text.contains(&token[..20]));
    // the upstream saw what the counters say: 3 pass-through + 1 login
    assert_eq!(up.count(), 4);
}

#[tokio::test]
async fn open_connections_gauge_follows_clients() {
    let up = Upstream::start().await;
    let dir = TempDir::new("metrics-conns");
    let (_bin, addr, admin) = start_plain(&dir, &up).await;
    // nothing has connected to the public listener yet
    assert_eq!(open_connections_reach(admin, 0.0).await, 0.0);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    assert_eq!(open_connections_reach(admin, 5.0).await, 5.0);
    drop(held);
    assert_eq!(open_connections_reach(admin, 0.0).await, 0.0);
}

/// Poll the gauge until it shows `want` (or give up after 2 s and return what it shows).
async fn open_connections_reach(admin: SocketAddr, want: f64) -> f64 {
    let mut seen = f64::NAN;
    for _ in 0..80 {
        seen = scrape(admin).await.get("jwt_gate_open_connections");
        if seen == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    seen
}

fn cert_files(dir: &TempDir, year: i32) -> i64 {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    params.not_after = rcgen::date_time_ymd(year, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    dir.write("tls.crt", &cert.pem());
    dir.write("tls.key", &key.serialize_pem());
    params.not_after.unix_timestamp()
}

async fn hup_and_wait(bin: &Bin, admin: SocketAddr, key: &str, want: f64) -> Scrape {
    Command::new("kill")
        .args(["-HUP", &bin.0.id().to_string()])
        .status()
        .unwrap();
    let mut s = scrape(admin).await;
    for _ in 0..40 {
        if s.get(key) == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        s = scrape(admin).await;
    }
    s
}

#[tokio::test]
async fn metrics_follow_certificate_and_key_reloads() {
    let up = Upstream::start().await;
    let dir = TempDir::new("metrics-reload");
    let first = cert_files(&dir, 2031);
    let key = dir.write("jwt.secret", &"k".repeat(40));
    let (bin, _addr, admin) = start(
        &dir,
        &format!(
            "[listen.tls]\ncert = \"{d}/tls.crt\"\nkey = \"{d}/tls.key\"\nreload_interval = 3600\n[upstream]\nurl = \"http://{}\"\n[provider]\nsecret_file = \"{}\"\n[gate]\nkey_reload_interval = 3600\n",
            up.addr,
            key.display(),
            d = dir.0.display()
        ),
    )
    .await;
    let ok_tls = r#"jwt_gate_reloads_total{kind="tls_certificate",result="success"}"#;
    let bad_tls = r#"jwt_gate_reloads_total{kind="tls_certificate",result="failure"}"#;
    let ok_key = r#"jwt_gate_reloads_total{kind="jwt_key",result="success"}"#;
    let bad_key = r#"jwt_gate_reloads_total{kind="jwt_key",result="failure"}"#;
    let expiry = "jwt_gate_tls_certificate_expiry_timestamp_seconds";

    let s = scrape(admin).await;
    assert_eq!(s.get(expiry), first as f64);
    for k in [ok_tls, bad_tls, ok_key, bad_key] {
        assert_eq!(s.get(k), 0.0, "{k}");
    }

    // a new certificate and a new key: both reload, the expiry moves
    let second = cert_files(&dir, 2032);
    dir.write("jwt.secret", &"n".repeat(40));
    let s = hup_and_wait(&bin.bin, admin, ok_key, 1.0).await;
    assert_eq!(s.get(ok_tls), 1.0);
    assert_eq!(s.get(ok_key), 1.0);
    assert_eq!(s.get(expiry), second as f64);
    assert!(second > first);

    // broken files: failures counted, the expiry stays that of the certificate still served
    dir.write(
        "tls.crt",
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    dir.write("jwt.secret", "short");
    let s = hup_and_wait(&bin.bin, admin, bad_key, 1.0).await;
    assert_eq!(s.get(bad_tls), 1.0);
    assert_eq!(s.get(bad_key), 1.0);
    assert_eq!(s.get(ok_tls), 1.0);
    assert_eq!(s.get(expiry), second as f64);
}
