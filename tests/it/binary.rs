//! The real `jwt-gate` binary: `check`, `explain`, `run` (streaming in flat memory, audit
//! lines without tokens, SIGTERM drain) and `demo`.

use std::process::Command;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use futures_util::StreamExt;
use http::Request;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::json;

/// A well-formed HS256 token signed with a key the gate does not know.
fn foreign(claims: &serde_json::Value) -> String {
    hs256_with(&[b'f'; 40], claims)
}

#[test]
fn check_accepts_the_example_config_once_its_placeholder_is_replaced_and_lists_every_error() {
    let example_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/jwt-gate.toml");
    // as shipped, the placeholder secret is refused: a healthy gate refusing every login
    // would be worse than one that does not start
    let (code, text) = run_check(&example_path);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("provider.secret: is still the example's placeholder"),
        "{text}"
    );
    let dir = TempDir::new("check");
    let (code, text) = run_check(&filled_example(&dir));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("configuration OK"));
    assert!(text.contains("single use"), "{text}");

    let no_window = dir.write(
        "ok.toml",
        &format!(
            "[upstream]\nurl = \"http://127.0.0.1:8181\"\n[provider]\nsecret = \"{SECRET}\"\n"
        ),
    );
    let (code, text) = run_check(&no_window);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("valid_within is unset in GitLab"), "{text}");

    // a private key works, with a warning that the public key alone would do
    rsa_key(&dir.0, "rsa.pem");
    let private = dir.write("private.toml", "[upstream]\nurl = \"http://127.0.0.1:8181\"\n[provider]\nalgorithm = \"RS256\"\nsecret_file = \"rsa.pem\"\nvalid_within = 60\n");
    let (code, text) = run_check(&private);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("warning: provider.secret holds a private key"),
        "{text}"
    );
    assert!(!text.contains("valid_within is unset"), "{text}");

    let broken = dir.write(
        "broken.toml",
        "[listen]\naddr = \"0.0.0.0\"\n[upstream]\nurl = \"gitlab\"\n[provider]\nalgorithm = \"RS1\"\nsecret_file = \"/nonexistent/key.pem\"\nvalid_within = 0\n[gate]\nrequire_jit = true\n[replay]\nstore = \"tape\"\n",
    );
    let (code, text) = run_check(&broken);
    assert_eq!(code, 1, "{text}");
    for key in [
        "listen.addr",
        "upstream.url",
        "provider.algorithm",
        "provider.valid_within",
        "gate.require_jit",
        "replay.store",
    ] {
        assert!(text.contains(key), "{key} missing from:\n{text}");
    }
}

#[test]
fn explain_prints_every_check_and_the_decoded_token() {
    let dir = TempDir::new("explain");
    let cfg = dir.write("c.toml", &format!("[upstream]\nurl = \"http://127.0.0.1:8181\"\n[provider]\nsecret = \"{SECRET}\"\nvalid_within = 300\n"));
    let good = hs256(&json!({"name": "Ann", "email": "ann@x", "iat": now()}));
    // the token from a file: never on the command line
    let token_file = dir.write("token", &good);
    let out = Command::new(gate_bin())
        .args(["explain", "--config"])
        .arg(&cfg)
        .arg("--token-file")
        .arg(&token_file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("[pass] signature") && text.contains("[pass] identity values"),
        "{text}"
    );
    assert!(text.contains("\"email\": \"ann@x\""), "{text}");
    assert!(text.contains("x-auth-request-user: ann@x"), "{text}");
    assert!(text.contains("result: ACCEPTED"));

    // bad signature, token on stdin
    let bad = foreign(&json!({"name": "Ann", "email": "ann@x", "iat": now()}));
    let mut explain = Command::new(gate_bin());
    explain.args(["explain", "--config"]).arg(&cfg);
    let out = run_with_stdin(explain, bad.as_bytes());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("[pass] header and alg"), "{text}");
    assert!(text.contains("[FAIL] signature: bad_signature"), "{text}");
    assert!(
        text.contains("(not reached)") && text.contains("result: REJECTED (401"),
        "{text}"
    );
}

/// Start `jwt-gate run` on port 0 in front of `up`.
async fn run_gate(dir: &TempDir, up: std::net::SocketAddr, extra: &str) -> Served {
    let cfg = dir.write(
        "gate.toml",
        &format!("[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://{up}\"\n[provider]\nsecret = \"{SECRET}\"\n{extra}"),
    );
    run_bin(&cfg).await
}

fn sigterm(bin: &Bin) {
    let ok = Command::new("kill")
        .args(["-TERM", &bin.0.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test]
async fn a_gigabyte_streams_both_ways_in_flat_memory() {
    let up = Upstream::start().await;
    let dir = TempDir::new("stream");
    let served = run_gate(&dir, up.addr, "").await;
    let (bin, addr) = (&served.bin, served.addr);
    let pid = bin.0.id();
    const GIB: u64 = 1 << 30;
    let idle = rss_kib(pid);

    let sampler = {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let h = std::thread::spawn(move || {
            let mut max = 0;
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                max = max.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            max
        });
        (stop, h)
    };

    // download: count bytes as they arrive, never holding them
    let resp = client()
        .request(
            Request::get(format!("http://{addr}/big/{GIB}"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(f) = body.frame().await {
        if let Some(d) = f.unwrap().data_ref() {
            got += d.len() as u64;
        }
    }
    assert_eq!(got, GIB);

    // upload: a generated stream; the upstream counts without keeping it
    let chunk = Bytes::from(vec![b'u'; 256 * 1024]);
    let stream = futures_util::stream::iter(0..(GIB / chunk.len() as u64))
        .map(move |_| Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone())));
    let up_client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let resp = up_client
        .request(
            Request::post(format!("http://{addr}/upload"))
                .body(StreamBody::new(stream))
                .unwrap(),
        )
        .await
        .unwrap();
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&text), GIB.to_string());

    sampler.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.1.join().unwrap();
    eprintln!("gate RSS: idle {idle} KiB, peak while streaming 2 GiB {peak} KiB");
    assert!(idle > 0 && peak > 0, "could not read the gate's RSS");
    assert!(
        peak < idle + 48 * 1024,
        "RSS grew from {idle} KiB to {peak} KiB: bodies are being buffered"
    );
    assert_eq!(
        up.seen()
            .iter()
            .find(|s| s.target == "/upload")
            .map(|s| s.body_len),
        Some(GIB)
    );
}

#[tokio::test]
async fn audit_and_access_logs_never_contain_a_token_and_sigterm_drains() {
    let up = Upstream::start().await;
    let dir = TempDir::new("logs");
    let Served {
        bin, addr, output, ..
    } = run_gate(&dir, up.addr, "").await;
    let good = hs256(&claims("logged@x"));
    let forged = foreign(&claims("forged@x"));
    let base = format!("http://{addr}/users/auth/jwt/callback?jwt=");
    assert_eq!(get(&format!("{base}{good}")).await.status, 200);
    assert_eq!(
        get(&format!("{base}{good}")).await.reason(),
        Some("replayed")
    );
    assert_eq!(get(&format!("{base}{forged}")).await.status, 401);
    assert_eq!(
        get(&format!("http://{addr}/explore?private_token=abc123"))
            .await
            .status,
        200
    );

    // an in-flight request survives SIGTERM
    let slow = tokio::spawn(async move { get(&format!("http://{addr}/slow/700")).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    sigterm(&bin);
    let got = slow.await.unwrap();
    assert_eq!(got.status, 200, "SIGTERM cut off an in-flight request");
    let mut bin = bin;
    let status = tokio::task::spawn_blocking(move || bin.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));

    // the output threads may still be reading the last lines
    for _ in 0..100 {
        if output.lock().unwrap().contains("all connections drained") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs = output.lock().unwrap().clone();
    for secret in [
        good.as_str(),
        good.split('.').nth(2).unwrap(),
        good.split('.').nth(1).unwrap(),
        forged.split('.').nth(2).unwrap(),
        "abc123",
        "logged@x",
    ] {
        assert!(
            !logs.contains(secret),
            "the log contains {secret:?}:\n{logs}"
        );
    }
    assert_eq!(logs.matches("login decision").count(), 3, "{logs}");
    assert!(
        logs.contains("outcome=\"forwarded\"") || logs.contains("outcome=forwarded"),
        "{logs}"
    );
    assert!(
        logs.contains("replayed") && logs.contains("bad_signature"),
        "{logs}"
    );
    assert!(
        logs.contains("path=/explore") && logs.contains("path=/users/auth/jwt/callback"),
        "{logs}"
    );
    assert!(logs.contains("all connections drained"), "{logs}");
}

#[tokio::test]
async fn json_logs_are_json_lines() {
    let up = Upstream::start().await;
    let dir = TempDir::new("json");
    let cfg = dir.write("gate.toml", &format!("[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"\"\n[upstream]\nurl = \"http://{}\"\n[provider]\nsecret = \"{SECRET}\"\n", up.addr));
    let mut cmd = Command::new(gate_bin());
    cmd.args(["--log-format", "json", "run", "--config"])
        .arg(&cfg);
    let served = serve_bin(cmd).await;
    let addr = served.addr;
    get(&format!("http://{addr}/users/auth/jwt/callback?jwt=nope")).await;
    sigterm(&served.bin);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = served.output();
    let audit: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "jwt_gate::audit")
        .collect();
    assert_eq!(audit.len(), 1, "{text}");
    assert_eq!(audit[0]["reason"], "malformed_token");
    assert_eq!(audit[0]["outcome"], "rejected");
}

#[tokio::test]
async fn admin_health_and_readiness_follow_the_upstream() {
    let up = Upstream::start().await;
    let dir = TempDir::new("admin");
    let cfg = dir.write("gate.toml", &format!("[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://{}\"\n[provider]\nsecret = \"{SECRET}\"\n", up.addr));
    let served = run_bin(&cfg).await;
    let admin_addr = served.admin.expect("the admin listener is on");
    let gate_addr = served.addr;
    let admin = |p: &str| format!("http://{admin_addr}{p}");
    assert_eq!(get(&admin("/healthz")).await.status, 200);
    let ready = get(&admin("/readyz")).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert!(ready.text().contains("replay store: memory"));
    // the public listener does not serve the admin endpoints: they go upstream
    get(&format!("http://{gate_addr}/healthz")).await;
    assert_eq!(
        up.seen().last().map(|s| s.target.clone()),
        Some("/healthz".to_string())
    );
    drop(up);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = get(&admin("/readyz")).await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(get(&admin("/healthz")).await.status, 200);
}

#[tokio::test]
async fn demo_signs_in_through_the_sample_idp_and_refuses_the_replay() {
    let mut cmd = Command::new(gate_bin());
    cmd.args(["demo", "--listen", "127.0.0.1:0"]);
    let served = serve_bin(cmd).await;
    let gate = served.addr;
    let c = client();
    let home = get(&format!("http://{gate}/")).await;
    assert!(home.text().contains("Sign in with JWT"));
    // the sign-in button posts to /users/auth/jwt, which redirects to the IdP
    let r = send(
        &c,
        Request::post(format!("http://{gate}/users/auth/jwt"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 302);
    let idp = r.headers["location"].to_str().unwrap().to_string();
    assert!(get(&idp).await.text().contains("Who are you?"));
    // the IdP mints a token and redirects to the gate's callback
    let r = send(
        &c,
        Request::post(&idp)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(
                "name=Zo%C3%AB+Demo&email=zoe%40demo.example",
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 302);
    let cb = r.headers["location"].to_str().unwrap().to_string();
    assert!(
        cb.starts_with(&format!("http://{gate}/users/auth/jwt/callback?jwt=")),
        "{cb}"
    );
    let page = get(&cb).await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(
        page.text().contains("Signed in as zoe@demo.example"),
        "{}",
        page.text()
    );
    assert!(page.text().contains("Zoë Demo"));
    let again = get(&cb).await;
    assert_eq!(
        (again.status.as_u16(), again.reason()),
        (401, Some("replayed"))
    );
    drop(served);
}

#[tokio::test]
async fn sighup_reloads_the_jwt_key_now() {
    let up = Upstream::start().await;
    let dir = TempDir::new("hup");
    let key = dir.write("jwt.secret", &"o".repeat(40));
    // polling effectively off: only SIGHUP can pick up the change
    let cfg = dir.write("hup.toml", &format!("[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"\"\n[upstream]\nurl = \"http://{}\"\n[provider]\nsecret_file = \"{}\"\n[gate]\nkey_reload_interval = 3600\n", up.addr, key.display()));
    let served = run_bin(&cfg).await;
    let (bin, addr2) = (&served.bin, served.addr);
    let sign = |secret: &str, email: &str| hs256_with(secret.as_bytes(), &claims(email));
    let new = "n".repeat(40);
    dir.write("jwt.secret", &new);
    let base = format!("http://{addr2}/users/auth/jwt/callback?jwt=");
    assert_eq!(
        get(&format!("{base}{}", sign(&new, "early@x")))
            .await
            .reason(),
        Some("bad_signature")
    );
    Command::new("kill")
        .args(["-HUP", &bin.0.id().to_string()])
        .status()
        .unwrap();
    let mut ok = false;
    for i in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if get(&format!("{base}{}", sign(&new, &format!("h{i}@x"))))
            .await
            .status
            == 200
        {
            ok = true;
            break;
        }
    }
    assert!(ok, "SIGHUP did not reload the key");
}

#[test]
fn no_secret_reaches_the_output_of_check_or_run() {
    let dir = TempDir::new("secrets");
    let inline = "S3cr3t-inline-0123456789abcdefghij";
    let pw = "Redis-PW-9f8e7d6c";
    let pem_body = "S3cr3tPemBody0123456789";
    let weak = "Weak-S3cr3t";
    let key_file = dir.write(
        "jwt.pem",
        &format!("-----BEGIN PRIVATE KEY-----\n{pem_body}\n-----END PRIVATE KEY-----\n"),
    );
    let up = "[upstream]\nurl = \"http://127.0.0.1:1\"\n";
    let cases = [
        // a TOML syntax error on the secret's own line
        format!("{up}[provider]\nsecret = \"{inline}\" trailing\n"),
        // every section wrong, the secret inline and the wrong kind for the algorithm
        format!("[listen]\naddr = \"nope\"\n[upstream]\nurl = \"ftp://x\"\n[provider]\nsecret = \"{inline}\"\nalgorithm = \"RS256\"\nbogus = 1\n"),
        format!("{up}[provider]\nalgorithm = \"ES256\"\nsecret = \"{inline}\"\n"),
        // a PEM file that does not parse
        format!("{up}[provider]\nalgorithm = \"RS256\"\nsecret_file = \"{}\"\n", key_file.display()),
        // a Redis URL carrying a password, unparseable
        format!("{up}[provider]\nsecret = \"{inline}\"\n[replay]\nstore = \"redis\"\nredis_url = \"redis://:{pw}@[::1\"\n"),
        format!("{up}[provider]\nsecret = \"{inline}\"\n[replay]\nstore = \"redis\"\nredis_url = \"rediss://user:{pw}@\"\n"),
        // a weak secret
        format!("{up}[provider]\nsecret = \"{weak}\"\n"),
    ];
    for (i, text) in cases.iter().enumerate() {
        let cfg = dir.write(&format!("c{i}.toml"), text);
        let (code, check) = run_check(&cfg);
        let run = Command::new(gate_bin())
            .args(["run", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let run_text = format!(
            "{}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        assert_ne!(code, 0, "case {i} passed check:\n{check}");
        assert_ne!(run.status.code(), Some(0), "case {i} ran:\n{run_text}");
        for out in [&check, &run_text] {
            assert!(
                out.contains("invalid configuration") || out.contains("TOML syntax"),
                "case {i}: {out}"
            );
            for secret in [inline, pw, pem_body, weak] {
                assert!(!out.contains(secret), "case {i} printed {secret:?}:\n{out}");
            }
        }
    }
}

#[tokio::test]
async fn a_restart_reopens_no_replay_window() {
    // the memory store forgets everything on a restart: tokens that could have been used
    // before it — issued in the start's own second, or dated ahead of the clock within
    // max_future_skew — must be refused after it
    let up = Upstream::start().await;
    let dir = TempDir::new("restart");
    let cfg = dir.write(
        "gate.toml",
        &format!("[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"\"\n[upstream]\nurl = \"http://{}\"\n[provider]\nsecret = \"{SECRET}\"\nvalid_within = 30\n[gate]\nmax_future_skew = 2\n", up.addr),
    );
    let first = run_bin(&cfg).await;
    // a token dated now signs in at once: the start waited for its whole second
    let n = now();
    let now_token = hs256(&json!({"name": "N", "email": "now@x", "iat": n}));
    let got = get(&format!(
        "http://{}/users/auth/jwt/callback?jwt={now_token}",
        first.addr
    ))
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    // one dated ahead of the clock (an IdP whose clock runs fast) is forwarded once its iat
    // has come, not before
    let ahead_iat = now() + 2;
    let ahead_token = hs256(&json!({"name": "N", "email": "ahead@x", "iat": ahead_iat}));
    let got = get(&format!(
        "http://{}/users/auth/jwt/callback?jwt={ahead_token}",
        first.addr
    ))
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert!(now() >= ahead_iat, "forwarded before its iat");
    // restart at once: both replays are refused
    drop(first);
    let second = run_bin(&cfg).await;
    assert!(
        second.output().contains("tokens issued before this start"),
        "{}",
        second.output()
    );
    for t in [&now_token, &ahead_token] {
        let got = get(&format!(
            "http://{}/users/auth/jwt/callback?jwt={t}",
            second.addr
        ))
        .await;
        assert_eq!(
            (got.status.as_u16(), got.reason()),
            (401, Some("issued_before_start")),
            "a token used before the restart passed after it"
        );
    }
    // a token issued after the start signs in at once
    let fresh = hs256(&json!({"name": "N", "email": "fresh@x", "iat": now()}));
    let got = get(&format!(
        "http://{}/users/auth/jwt/callback?jwt={fresh}",
        second.addr
    ))
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(up.callbacks().len(), 3);
}

#[tokio::test]
async fn report_mode_forwards_what_it_would_refuse_says_so_loudly_and_asserts_only_verified_identities(
) {
    let up = Upstream::start().await;
    let dir = TempDir::new("report");
    let cfg = dir.write(
        "gate.toml",
        &format!("[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://{}\"\n[provider]\nsecret = \"{SECRET}\"\n[gate]\nmode = \"report\"\n", up.addr),
    );
    // loud: in check, and at start
    let (code, text) = run_check(&cfg);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("warning: gate.mode = \"report\""), "{text}");
    let g = run_bin(&cfg).await;
    assert!(
        g.output().contains("gate.mode = \"report\""),
        "{}",
        g.output()
    );
    let base = format!("http://{}/users/auth/jwt/callback?jwt=", g.addr);
    let c = client();
    let spoof = |url: String| {
        send(
            &c,
            Request::get(url)
                .header("x-auth-request-user", "spoofed@x")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
    };
    // a verified token: forwarded with its identity
    let good = hs256(&claims("report@x"));
    assert_eq!(spoof(format!("{base}{good}")).await.status, 200);
    // its replay and a forgery: forwarded too, but with no identity at all
    assert_eq!(spoof(format!("{base}{good}")).await.status, 200);
    let forged = foreign(&claims("forged@x"));
    assert_eq!(spoof(format!("{base}{forged}")).await.status, 200);
    let seen = up.callbacks();
    assert_eq!(seen.len(), 3);
    let users: Vec<Option<&str>> = seen
        .iter()
        .map(|s| {
            s.headers
                .get("x-auth-request-user")
                .map(|v| v.to_str().unwrap())
        })
        .collect();
    assert_eq!(users, vec![Some("report@x"), None, None]);
    // counted, and the mode is on the dashboard
    let m = get(&format!("http://{}/metrics", g.admin.unwrap()))
        .await
        .text();
    assert!(m.contains("jwt_gate_report_mode 1"), "{m}");
    assert!(m.contains("jwt_gate_report_would_refuse_total 2"), "{m}");
    assert!(
        m.contains(r#"jwt_gate_login_decisions_total{outcome="rejected",reason="replayed"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_refused_replay_says_when_and_from_where_the_token_was_first_used() {
    let up = Upstream::start().await;
    let dir = TempDir::new("forensics");
    let cfg = dir.write(
        "gate.toml",
        &format!("[listen]\naddr = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n[admin]\naddr = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://{}\"\n[provider]\nsecret = \"{SECRET}\"\n", up.addr),
    );
    let g = run_bin(&cfg).await;
    let token = hs256(&claims("victim@x"));
    let url = format!("http://{}/users/auth/jwt/callback?jwt={token}", g.addr);
    let from = |who: &'static str| get_from(&url, who);
    let before_ms = now() * 1000;
    assert_eq!(from("198.51.100.7").await.status, 200);
    // the same client again (a double-click), then another one (a stolen token)
    assert_eq!(from("198.51.100.7").await.reason(), Some("replayed"));
    assert_eq!(from("203.0.113.9").await.reason(), Some("replayed"));
    let admin = g.admin.unwrap();
    assert_eq!(
        metric(admin, "jwt_gate_replay_other_client_total").await,
        1.0
    );
    // the audit lines name the first use
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = g.output();
    let replays: Vec<&str> = out
        .lines()
        .filter(|l| {
            l.contains("jwt_gate::audit")
                && (l.contains("reason=\"replayed\"") || l.contains("reason=replayed"))
        })
        .collect();
    assert_eq!(replays.len(), 2, "{out}");
    for line in &replays {
        assert!(line.contains("first_use_client=198.51.100.7"), "{line}");
        let ms: i64 = line
            .split("first_use_ms=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        assert!(
            ms >= before_ms && ms <= now() * 1000 + 1000,
            "{ms} in {line}"
        );
    }
    assert!(replays[1].contains("client=203.0.113.9"), "{}", replays[1]);
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_set() {
    let up = Upstream::start().await;
    let dir = TempDir::new("iss-aud");
    let served = run_gate(
        &dir,
        up.addr,
        "issuer = \"https://idp.example\"\naudience = [\"gitlab\", \"gitlab-staging\"]\n",
    )
    .await;
    let base = format!("http://{}/users/auth/jwt/callback?jwt=", served.addr);
    let token = |email: &str, extra: serde_json::Value| {
        let mut c = claims(email);
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        hs256(&c)
    };
    let iss = "https://idp.example";
    for (email, extra, want) in [
        (
            "a@x",
            serde_json::json!({"iss": iss, "aud": "gitlab"}),
            None,
        ),
        (
            "b@x",
            serde_json::json!({"iss": iss, "aud": ["other", "gitlab-staging"]}),
            None,
        ),
        (
            "c@x",
            serde_json::json!({"iss": "https://evil.example", "aud": "gitlab"}),
            Some("issuer_mismatch"),
        ),
        (
            "d@x",
            serde_json::json!({"aud": "gitlab"}),
            Some("issuer_mismatch"),
        ),
        (
            "e@x",
            serde_json::json!({"iss": iss, "aud": "other-app"}),
            Some("audience_mismatch"),
        ),
        (
            "f@x",
            serde_json::json!({"iss": iss, "aud": ["other-app"]}),
            Some("audience_mismatch"),
        ),
        (
            "g@x",
            serde_json::json!({"iss": iss}),
            Some("audience_mismatch"),
        ),
        (
            "h@x",
            serde_json::json!({"iss": iss, "aud": 7}),
            Some("audience_mismatch"),
        ),
    ] {
        let got = get(&format!("{base}{}", token(email, extra))).await;
        match want {
            None => assert_eq!(got.status, 200, "{email}: {}", got.text()),
            Some(reason) => {
                assert_eq!(got.status, 401, "{email}");
                assert_eq!(got.reason(), Some(reason), "{email}");
            }
        }
    }
    let forwarded: Vec<String> = up
        .callbacks()
        .iter()
        .filter_map(|s| {
            s.headers
                .get("x-auth-request-user")
                .map(|v| v.to_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(forwarded, ["a@x", "b@x"]);

    // check names them as gate-only settings
    let (code, text) = run_check(&dir.0.join("gate.toml"));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("provider.issuer: a gate-only setting"),
        "{text}"
    );
    assert!(
        text.contains("provider.audience: a gate-only setting"),
        "{text}"
    );
}
