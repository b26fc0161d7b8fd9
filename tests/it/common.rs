//! Test harness: a recording fake upstream, the real gate (`serve` on 127.0.0.1:0 or the
//! release binary), clients, and token minting with an independent JWT library.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

pub const SECRET: &str = "test-secret-0123456789abcdefghijkl"; // 34 bytes

/// What the fake upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub version: http::Version,
    pub method: String,
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub body_len: u64,
    /// The body ended properly (false: the connection failed mid-body).
    pub body_complete: bool,
}

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// A fake GitLab that records every request. Routes:
/// - `/big/<n>`: streams n bytes (64 KiB chunks) without holding them;
/// - `/upload`: counts the body without keeping it, answers the count;
/// - `/slow/<ms>`: answers after a delay;
/// - `/ws`: websocket echo (answers 101);
/// - anything else: 200 "upstream saw <method> <target>", body recorded.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Upstream {
    pub async fn start() -> Upstream {
        Self::start_with(None).await
    }

    /// The same fake upstream behind TLS (for https upstream tests).
    pub async fn start_tls(cfg: Arc<rustls::ServerConfig>) -> Upstream {
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(cfg))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (tx, mut rx) = oneshot::channel();
        let s2 = seen.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut rx => return,
                    acc = listener.accept() => {
                        let Ok((stream, _)) = acc else { continue };
                        let seen = s2.clone();
                        let tls = tls.clone();
                        tokio::spawn(async move {
                            let svc = service_fn(move |req| handle_upstream(req, seen.clone()));
                            // HTTP/1.1, or HTTP/2 with prior knowledge (h2c)
                            let b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                            match tls {
                                None => {
                                    let _ = b.serve_connection_with_upgrades(TokioIo::new(stream), svc).await;
                                }
                                Some(acc) => {
                                    if let Ok(s) = acc.accept(stream).await {
                                        let _ = b.serve_connection_with_upgrades(TokioIo::new(s), svc).await;
                                    }
                                }
                            }
                        });
                    }
                }
            }
        });
        Upstream {
            addr,
            seen,
            stop: Some(tx),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Requests that reached the callback path.
    pub fn callbacks(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| {
                s.target
                    .to_ascii_lowercase()
                    .contains("/users/auth/jwt/callback")
            })
            .collect()
    }
}

fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

async fn handle_upstream(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<BoxBody>, Infallible> {
    let version = req.version();
    let method = req.method().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().to_string(), |pq| pq.to_string());
    let headers = req.headers().clone();
    let path = req.uri().path().to_string();

    if path == "/ws" {
        let key = headers.get("sec-websocket-key").cloned();
        seen.lock().unwrap().push(Seen {
            version,
            method,
            target,
            headers,
            body: Bytes::new(),
            body_len: 0,
            body_complete: true,
        });
        let Some(key) = key else {
            return Ok(Response::builder()
                .status(400)
                .body(full("no key"))
                .unwrap());
        };
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(up),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                let (mut tx, mut rx) = ws.split();
                use futures_util::SinkExt;
                while let Some(Ok(msg)) = rx.next().await {
                    if (msg.is_text() || msg.is_binary()) && tx.send(msg).await.is_err() {
                        break;
                    }
                }
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        return Ok(Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(full(Bytes::new()))
            .unwrap());
    }

    if let Some(n) = path.strip_prefix("/big/") {
        let n: u64 = n.parse().unwrap_or(0);
        seen.lock().unwrap().push(Seen {
            version,
            method,
            target,
            headers,
            body: Bytes::new(),
            body_len: 0,
            body_complete: true,
        });
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let chunks = n / chunk.len() as u64;
        let rest = (n % chunk.len() as u64) as usize;
        let c2 = chunk.clone();
        let stream = futures_util::stream::iter(0..chunks)
            .map(move |_| Ok::<_, Infallible>(Frame::data(c2.clone())))
            .chain(futures_util::stream::iter(
                (rest > 0).then(|| Ok(Frame::data(chunk.slice(..rest)))),
            ));
        return Ok(Response::builder()
            .header("content-length", n.to_string())
            .body(StreamBody::new(stream).boxed_unsync())
            .unwrap());
    }

    if path == "/upload" {
        let mut body = req.into_body();
        let mut n = 0u64;
        let mut complete = true;
        while let Some(f) = body.frame().await {
            let Ok(f) = f else {
                complete = false;
                break;
            };
            if let Some(d) = f.data_ref() {
                n += d.len() as u64;
            }
        }
        seen.lock().unwrap().push(Seen {
            version,
            method,
            target,
            headers,
            body: Bytes::new(),
            body_len: n,
            body_complete: complete,
        });
        return Ok(Response::new(full(n.to_string())));
    }

    if let Some(ms) = path.strip_prefix("/slow/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    let collected = req.into_body().collect().await.map(|c| c.to_bytes());
    let body_complete = collected.is_ok();
    let body = collected.unwrap_or_default();
    let reply = format!("upstream saw {method} {target}");
    seen.lock().unwrap().push(Seen {
        version,
        method,
        target,
        headers,
        body_len: body.len() as u64,
        body,
        body_complete,
    });
    Ok(Response::builder()
        .header("x-upstream", "yes")
        .header("connection", "keep-alive, x-upstream-private")
        .header("x-upstream-private", "hop")
        .header("keep-alive", "timeout=5")
        .body(full(reply))
        .unwrap())
}

/// Config text for a gate in front of `upstream` with HS256 and the test secret; `extra`
/// is appended (TOML sections).
pub fn config_text(upstream: SocketAddr, extra: &str) -> String {
    format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"\"\n[upstream]\nurl = \"http://{upstream}\"\n{extra}"
    )
}

pub fn hs256_provider() -> String {
    format!("[provider]\nsecret = \"{SECRET}\"\nalgorithm = \"HS256\"\n")
}

/// A gate running in this test's runtime through the real `server::start` entry point, on
/// the ports its config names (port 0: any free one, read back from `start`).
pub struct Gate {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub redirect: Option<SocketAddr>,
    pub app: Arc<jwt_gate::app::App>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl Gate {
    pub async fn start(config: &str) -> Gate {
        Self::try_start(config)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Start, or the errors `run` would print. Unless the config names
    /// `reject_issued_before_start`, it is off here: with it, a start waits for the next
    /// whole second (up to one per gate; tests/it/binary.rs holds the behaviour through a
    /// restart of the real binary).
    pub async fn try_start(config: &str) -> Result<Gate, String> {
        let mut cfg = jwt_gate::Config::from_toml_str(config).map_err(|e| e.to_string())?;
        if !config.contains("reject_issued_before_start") {
            cfg.replay.reject_issued_before_start = false;
        }
        let (tx, rx) = oneshot::channel::<()>();
        let running = jwt_gate::server::start(cfg, async move {
            let _ = rx.await;
        })
        .await?;
        Ok(Gate {
            addr: running.addr,
            admin: running.admin_addr,
            redirect: running.redirect_addr,
            app: running.app.clone(),
            stop: Some(tx),
            done: Some(tokio::spawn(running.wait())),
        })
    }

    /// Signal shutdown (as SIGTERM does) and wait for the drain to finish.
    pub async fn shutdown(&mut self) -> Result<(), String> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.done.take() {
            Some(d) => d.await.unwrap(),
            None => Ok(()),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn reason(&self) -> Option<&str> {
        self.headers
            .get("x-jwt-gate-reason")
            .and_then(|v| v.to_str().ok())
    }
}

pub type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(client: &Client, req: Request<Full<Bytes>>) -> Got {
    let resp = client.request(req).await.expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str) -> Got {
    send(
        &client(),
        Request::get(url).body(Full::new(Bytes::new())).unwrap(),
    )
    .await
}

/// Write raw bytes, read until the server closes or `wait` passes; returns what came back.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

pub fn now() -> i64 {
    jwt_gate::clock::unix_now()
}

/// Standard valid claims for `email`, issued now.
pub fn claims(email: &str) -> serde_json::Value {
    serde_json::json!({ "name": "Test User", "email": email, "iat": now(), "exp": now() + 120 })
}

/// HS256 token signed by jsonwebtoken (an implementation independent of the gate's).
pub fn hs256(claims: &serde_json::Value) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// HS256 token signed with another secret (key rotation and forgery tests).
pub fn hs256_with(secret: &[u8], claims: &serde_json::Value) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// Sign arbitrary header and payload JSON text with HS256 (for malformed-token cases).
pub fn hs256_raw(header: &str, payload: &str) -> String {
    use jwt_gate::login::encoding::b64url_encode;
    let input = format!(
        "{}.{}",
        b64url_encode(header.as_bytes()),
        b64url_encode(payload.as_bytes())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET.as_bytes());
    let sig = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64url_encode(sig.as_ref()))
}

pub fn callback(gate: &Gate, token: &str) -> String {
    gate.url(&format!("/users/auth/jwt/callback?jwt={token}"))
}

/// Path of the release binary built by cargo for the integration tests.
pub fn gate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jwt-gate"))
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let mut b = [0u8; 8];
        aws_lc_rs::rand::fill(&mut b).unwrap();
        let p = std::env::temp_dir().join(format!(
            "jwt-gate-{tag}-{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run openssl (key generation and conversion in tests).
pub fn openssl(args: &[&str], dir: &std::path::Path) -> String {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed (scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh 2048-bit RSA private key (PKCS#8 PEM) written by openssl to `dir/name`.
pub fn rsa_key(dir: &std::path::Path, name: &str) -> String {
    openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            name,
        ],
        dir,
    );
    std::fs::read_to_string(dir.join(name)).unwrap()
}

/// A child process of the real binary, killed on drop.
pub struct Bin(pub std::process::Child);

impl Drop for Bin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port (bind, read, release) for servers that cannot report the port they
/// bound (redis-server). The gate itself always starts on port 0: see [`serve_bin`].
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real binary, serving: its stdout and stderr collected, and the addresses it bound
/// (port 0 in its config) read from its "listening" log lines.
pub struct Served {
    pub bin: Bin,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub output: Arc<Mutex<String>>,
}

impl Served {
    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

/// The address on a log line, text (`addr=1.2.3.4:5`) or JSON (`"addr":"1.2.3.4:5"`).
fn logged_addr(line: &str) -> Option<SocketAddr> {
    let (start, end) = if let Some(i) = line.find("\"addr\":\"") {
        (i + 8, '"')
    } else {
        (line.find("addr=")? + 5, ' ')
    };
    line[start..].split(end).next()?.trim().parse().ok()
}

fn collect_lines(r: impl std::io::Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(r).lines().map_while(Result::ok) {
            let mut o = into.lock().unwrap();
            o.push_str(&line);
            o.push('\n');
        }
    });
}

/// Spawn `cmd` (the binary's `run` or `demo`, possibly wrapped) and wait until it says it
/// listens; panics with its output if it exits or stays silent for 30 s.
pub async fn serve_bin(mut cmd: std::process::Command) -> Served {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let output = Arc::new(Mutex::new(String::new()));
    collect_lines(child.stdout.take().unwrap(), output.clone());
    collect_lines(child.stderr.take().unwrap(), output.clone());
    let mut bin = Bin(child);
    for _ in 0..1500 {
        let text = output.lock().unwrap().clone();
        let find = |what: &str| {
            text.lines()
                .filter(|l| l.contains(what))
                .find_map(logged_addr)
        };
        if let Some(addr) = find("jwt-gate listening") {
            return Served {
                bin,
                addr,
                admin: find("admin listening"),
                output,
            };
        }
        if let Ok(Some(status)) = bin.0.try_wait() {
            panic!("the gate exited ({status}) before listening:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the gate did not say it listens:\n{}",
        output.lock().unwrap()
    );
}

/// `jwt-gate run --config cfg`, serving.
pub async fn run_bin(cfg: &std::path::Path) -> Served {
    let mut cmd = std::process::Command::new(gate_bin());
    cmd.args(["run", "--config"]).arg(cfg);
    serve_bin(cmd).await
}

/// Wait until something accepts on `addr`.
pub async fn wait_listening(addr: SocketAddr) {
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing listening on {addr}");
}

/// Resident set size of a process, in KiB (Linux).
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `jwt-gate run --config cfg`, its output sent where the test wants it.
pub fn run_config(
    cfg: &std::path::Path,
    stdout: impl Into<std::process::Stdio>,
    stderr: impl Into<std::process::Stdio>,
) -> Bin {
    Bin(std::process::Command::new(gate_bin())
        .args(["run", "--config"])
        .arg(cfg)
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap())
}

/// `jwt-gate check --config path`: exit code and stdout + stderr.
pub fn run_check(path: &std::path::Path) -> (i32, String) {
    let out = std::process::Command::new(gate_bin())
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// One series' value from the admin listener's `/metrics` (NaN when it is absent).
pub async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let text = get(&format!("http://{admin}/metrics")).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// Run `cmd` with `input` on its stdin; its whole output.
pub fn run_with_stdin(mut cmd: std::process::Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// examples/jwt-gate.toml with its placeholder secret replaced, written into `dir`.
pub fn filled_example(dir: &TempDir) -> PathBuf {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/jwt-gate.toml"
    ))
    .unwrap();
    dir.write(
        "example.toml",
        &example.replace(
            "replace-me-with-the-identity-providers-shared-secret",
            SECRET,
        ),
    )
}

/// GET `url` as if through a trusted proxy on behalf of `client` (`X-Forwarded-For`).
pub async fn get_from(url: &str, client_addr: &str) -> Got {
    send(
        &client(),
        Request::get(url)
            .header("x-forwarded-for", client_addr)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}
