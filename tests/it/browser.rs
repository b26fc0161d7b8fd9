//! End to end in a real browser: headless Chromium (Debian's `chromium`; `scripts/test`
//! installs it) drives `jwt-gate demo` over the Chrome DevTools Protocol: sign in through the
//! sample identity provider, land signed in with the identity shown, open the same callback
//! link again and see the replay page. Screenshots are kept in target/browser-artifacts/.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A page target of the browser, spoken to over its DevTools websocket.
struct Page {
    ws: Ws,
    next_id: u64,
}

impl Page {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("devtools connection closed")
                .unwrap();
            let Message::Text(t) = frame else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
            // events are not needed: the test polls the page state instead
        }
    }

    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true }),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Wait until `expr` is true in the page (the page may be navigating meanwhile).
    async fn wait_for(&mut self, expr: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let guarded =
            format!("(() => {{ try {{ return !!({expr}); }} catch (e) {{ return false; }} }})()");
        while Instant::now() < deadline {
            if self.eval(&guarded).await == json!(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let text = self
            .eval("document.body ? document.body.innerText : ''")
            .await;
        panic!("timed out waiting for {expr}; the page says: {text}");
    }

    async fn screenshot(&mut self, name: &str) {
        let r = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let b64 = r["data"].as_str().unwrap();
        let url_safe: String = b64
            .trim_end_matches('=')
            .chars()
            .map(|c| match c {
                '+' => '-',
                '/' => '_',
                c => c,
            })
            .collect();
        let png = jwt_gate::login::encoding::b64url_decode_canonical(url_safe.as_bytes())
            .expect("screenshot is base64");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }
}

/// Start headless Chromium with a fresh profile; returns the process and its first page.
async fn chromium(profile: &std::path::Path) -> (Bin, Page) {
    let exe = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok())
        .expect("Chromium is not installed (./scripts/test installs Debian's chromium)");
    let mut child = Command::new(exe)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1000,700",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(i) = line.find("ws://") {
                let _ = tx.send(line[i..].trim().to_string());
            }
        }
    });
    let browser_ws = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("Chromium did not print its DevTools address");
    let bin = Bin(child);
    let host = browser_ws
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    // the page opened at start (about:blank)
    let mut page_ws = None;
    for _ in 0..50 {
        let list = get(&format!("http://{host}/json/list")).await;
        let targets: Value = serde_json::from_slice(&list.body).unwrap_or(Value::Null);
        page_ws = targets.as_array().and_then(|a| {
            a.iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
        });
        if page_ws.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ws, _) = tokio_tungstenite::connect_async(page_ws.expect("no page target"))
        .await
        .unwrap();
    (bin, Page { ws, next_id: 0 })
}

#[tokio::test]
async fn a_browser_signs_in_through_the_demo_and_sees_the_replay_refused() {
    let mut cmd = Command::new(gate_bin());
    cmd.args(["demo", "--listen", "127.0.0.1:0"]);
    let demo = serve_bin(cmd).await;
    let gate = demo.addr;
    let profile = TempDir::new("chromium-profile");
    let (_browser, mut page) = chromium(&profile.0).await;

    // GitLab's sign-in page, through the gate
    page.call(
        "Page.navigate",
        json!({ "url": format!("http://{gate}/users/sign_in") }),
    )
    .await;
    page.wait_for("document.querySelector('#jwt-sign-in')")
        .await;
    page.screenshot("1-sign-in.png").await;

    // "Sign in with JWT" -> the identity provider's form
    page.eval("document.querySelector('#jwt-sign-in').click()")
        .await;
    page.wait_for("document.querySelector('#idp-submit')").await;
    page.eval("document.querySelector('#name').value = 'Ada Browser'; document.querySelector('#email').value = 'ada@browser.example'")
        .await;
    page.screenshot("2-identity-provider.png").await;

    // the IdP signs a token and sends the browser to the gate's callback
    page.eval("document.querySelector('#idp-submit').click()")
        .await;
    page.wait_for("document.querySelector('#signed-in')").await;
    let heading = page
        .eval("document.querySelector('#signed-in').innerText")
        .await;
    assert_eq!(heading, json!("Signed in as ada@browser.example"));
    let identity = page
        .eval("document.querySelector('#identity').innerText")
        .await;
    let identity = identity.as_str().unwrap();
    assert!(
        identity.contains("x-auth-request-name") && identity.contains("Ada Browser"),
        "{identity}"
    );
    let callback = page.eval("location.href").await;
    let callback = callback.as_str().unwrap().to_string();
    assert!(
        callback.starts_with(&format!("http://{gate}/users/auth/jwt/callback?jwt=")),
        "{callback}"
    );
    page.screenshot("3-signed-in.png").await;

    // the same link again: the gate's replay page, and GitLab never sees it
    page.call("Page.navigate", json!({ "url": callback })).await;
    page.wait_for("document.querySelector('#reason')").await;
    assert_eq!(
        page.eval("document.querySelector('#reason').innerText")
            .await,
        json!("replayed")
    );
    let text = page.eval("document.body.innerText").await;
    assert!(
        text.as_str().unwrap().contains("already been used"),
        "{text}"
    );
    assert!(!text.as_str().unwrap().contains("Signed in as"));
    page.screenshot("4-replay-refused.png").await;
}

#[tokio::test]
async fn behind_an_identity_aware_proxy_the_browser_lands_signed_in_without_a_click() {
    let mut cmd = Command::new(gate_bin());
    cmd.args(["demo", "--sso", "--listen", "127.0.0.1:0"]);
    let demo = serve_bin(cmd).await;
    // the proxy's address, from its start-up line
    let mut proxy = None;
    for _ in 0..100 {
        proxy = demo
            .output()
            .lines()
            .find(|l| l.contains("demo identity-aware proxy listening"))
            .and_then(|l| l.split("addr=").nth(1))
            .and_then(|a| a.split_whitespace().next())
            .map(String::from);
        if proxy.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let proxy = proxy.expect("the demo names its identity-aware proxy");
    let profile = TempDir::new("chromium-sso");
    let (_browser, mut page) = chromium(&profile.0).await;

    // the user opens GitLab (through the proxy) and does nothing else
    page.call(
        "Page.navigate",
        json!({ "url": format!("http://{proxy}/") }),
    )
    .await;
    page.wait_for("document.querySelector('#signed-in')").await;
    assert_eq!(
        page.eval("document.querySelector('#signed-in').innerText")
            .await,
        json!("Signed in as zoe@example.com")
    );
    let identity = page
        .eval("document.querySelector('#identity').innerText")
        .await;
    assert!(
        identity.as_str().unwrap().contains("Zoë Example"),
        "{identity}"
    );
    // no token in the address bar, nor anywhere in the page's history
    assert_eq!(
        page.eval("location.href").await,
        json!(format!("http://{proxy}/"))
    );
    let history = page.call("Page.getNavigationHistory", json!({})).await;
    let urls: Vec<String> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["url"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(urls.iter().all(|u| !u.contains("jwt=")), "{urls:?}");
    page.screenshot("5-sso-signed-in.png").await;
}
