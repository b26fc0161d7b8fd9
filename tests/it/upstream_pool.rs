//! The gate's own upstream pool and its buffered access log, through the real binary:
//! keep-alive reuse, an idle connection the upstream closed, a request never sent twice, and
//! every access line written by the time SIGTERM's exit completes.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

async fn gate_for(dir: &TempDir, upstream: SocketAddr) -> Served {
    let cfg = dir.write(
        "gate.toml",
        &format!("[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://{upstream}\"\n[provider]\nsecret = \"{SECRET}\"\n"),
    );
    run_bin(&cfg).await
}

const OPENED: &str = "jwt_gate_upstream_connections_opened_total";

/// A hand-written HTTP/1.1 upstream that records each request head with the number of the
/// connection it came on. `/drop` is read and then the connection closed without an answer;
/// anything else gets a 2-byte keep-alive answer, after which the connection is closed once
/// it has been idle for `close_idle_after`.
struct RawUpstream {
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<(usize, String)>>>,
}

impl RawUpstream {
    async fn start(close_idle_after: Duration) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let lines: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
        let seen = lines.clone();
        tokio::spawn(async move {
            for conn in 0.. {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve_raw(stream, conn, seen.clone(), close_idle_after));
            }
        });
        RawUpstream { addr, lines }
    }

    fn targets(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|(_, head)| head.split(' ').nth(1).unwrap_or_default().to_string())
            .collect()
    }

    fn connections(&self) -> usize {
        let mut c: Vec<usize> = self.lines.lock().unwrap().iter().map(|l| l.0).collect();
        c.dedup();
        c.len()
    }
}

async fn serve_raw(
    mut s: TcpStream,
    conn: usize,
    seen: Arc<Mutex<Vec<(usize, String)>>>,
    close_idle_after: Duration,
) {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = match tokio::time::timeout(close_idle_after, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return, // idle too long, closed or failed: close
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let drop_it = head.starts_with("GET /drop ");
            let (answer, close) = answer_for(&head);
            seen.lock().unwrap().push((conn, head));
            if drop_it {
                return;
            }
            if s.write_all(answer).await.is_err() || close {
                return;
            }
        }
    }
}

/// The raw upstream's answer to a request head, and whether it closes the connection after
/// it: the framings and the faults the gate's own codec must read right.
fn answer_for(head: &str) -> (&'static [u8], bool) {
    let target = head.split(' ').nth(1).unwrap_or_default();
    match target {
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n\
              7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n",
            false,
        ),
        "/until-close" => (b"HTTP/1.1 200 OK\r\n\r\nread to the close", true),
        // a second response behind the first: a desync the gate must not carry over
        "/extra" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\
              HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
            false,
        ),
        "/both" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n\
              2\r\nok\r\n0\r\n\r\n",
            false,
        ),
        "/informational" => (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </hint>\r\n\r\n\
              HTTP/1.1 201 Made\r\nContent-Length: 4\r\n\r\nmade",
            false,
        ),
        "/cut" => (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", true),
        _ if head.starts_with("HEAD ") => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", false),
        _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
    }
}

#[tokio::test]
async fn keep_alive_load_reuses_upstream_connections() {
    let up = Upstream::start().await;
    let dir = TempDir::new("pool-reuse");
    let served = gate_for(&dir, up.addr).await;
    let (addr, admin) = (served.addr, served.admin.unwrap());
    let c = client();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let url = format!("http://{addr}/t{t}/r{i}");
                let got = send(
                    &c,
                    http::Request::get(url)
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap(),
                )
                .await;
                assert_eq!(got.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(up.count(), 400);
    let opened = metric(admin, OPENED).await;
    // at most one upstream connection per concurrent client request: 400 requests, ≤ 8
    assert!(
        (1.0..=8.0).contains(&opened),
        "{opened} upstream connections for 400 requests from 8 keep-alive clients"
    );
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_not_used() {
    let up = RawUpstream::start(Duration::from_millis(50)).await;
    let dir = TempDir::new("pool-stale");
    let served = gate_for(&dir, up.addr).await;
    let c = client();
    let url = |p: &str| format!("http://{}{p}", served.addr);
    assert_eq!(send(&c, req(&url("/first"))).await.status, 200);
    // the upstream closes the pooled connection meanwhile
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = send(&c, req(&url("/second"))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(up.targets(), ["/first", "/second"]);
    assert_eq!(up.connections(), 2);
    assert_eq!(metric(served.admin.unwrap(), OPENED).await, 2.0);
}

#[tokio::test]
async fn a_request_the_upstream_read_is_never_sent_again() {
    let up = RawUpstream::start(Duration::from_secs(30)).await;
    let dir = TempDir::new("pool-once");
    let served = gate_for(&dir, up.addr).await;
    let c = client();
    let url = |p: &str| format!("http://{}{p}", served.addr);
    assert_eq!(send(&c, req(&url("/first"))).await.status, 200);
    // on the reused connection: read, then closed without an answer
    let got = send(&c, req(&url("/drop"))).await;
    assert_eq!(got.status, 502);
    assert_eq!(got.reason(), Some("upstream_bad_response"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(up.targets(), ["/first", "/drop"], "sent twice?");
    // and the next request opens a fresh connection
    assert_eq!(send(&c, req(&url("/after"))).await.status, 200);
    assert_eq!(up.connections(), 2);
}

/// Requests without a body go on the gate's own HTTP/1.1 codec: every framing is read to
/// its end, and a connection is used again only after a message that ended cleanly.
#[tokio::test]
async fn every_response_framing_is_read_and_only_clean_ends_are_reused() {
    let up = RawUpstream::start(Duration::from_secs(30)).await;
    let dir = TempDir::new("pool-codec");
    let served = gate_for(&dir, up.addr).await;
    let c = client();
    let url = |p: &str| format!("http://{}{p}", served.addr);
    let get = |p: &str| send(&c, req(&url(p)));

    let got = get("/chunked").await;
    assert_eq!(
        (got.status.as_u16(), got.text().as_str()),
        (200, "hello, world")
    );
    assert!(got.headers.get("x-trailer").is_none());
    let got = get("/informational").await;
    assert_eq!((got.status.as_u16(), got.text().as_str()), (201, "made"));
    assert!(
        got.headers.get("link").is_none(),
        "a 1xx field leaked into the final answer"
    );
    let head = http::Request::head(url("/head"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let got = send(&c, head).await;
    assert_eq!((got.status.as_u16(), got.body.len()), (200, 0));
    assert_eq!(got.headers["content-length"], "2");
    assert_eq!(get("/first").await.text(), "ok");
    // four messages that ended cleanly: all on the first connection
    assert_eq!(up.connections(), 1);

    let got = get("/extra").await;
    assert_eq!((got.status.as_u16(), got.text().as_str()), (200, "ok"));
    // the bytes behind it must not answer the next request: that goes on a new connection
    let got = get("/next").await;
    assert_eq!(
        got.text(),
        "ok",
        "the stray response was read as this one's"
    );
    assert_eq!(up.connections(), 2);

    let got = get("/until-close").await;
    assert_eq!(got.text(), "read to the close");
    let got = get("/both").await;
    assert_eq!(
        (got.status.as_u16(), got.reason()),
        (502, Some("upstream_bad_response"))
    );
    // the gate aborts the client's response: before or after its head, as the race goes
    if let Ok(resp) = c.request(req(&url("/cut"))).await {
        let body = http_body_util::BodyExt::collect(resp.into_body()).await;
        assert!(body.is_err(), "a cut-off body passed as complete");
    }
    assert_eq!(get("/last").await.text(), "ok");

    let conns: Vec<(usize, String)> = up.lines.lock().unwrap().clone();
    let on = |t: &str| {
        conns
            .iter()
            .find(|(_, h)| h.contains(&format!(" {t} ")))
            .unwrap()
            .0
    };
    // each of these ended its connection: the request after it came on a fresh one
    assert_ne!(on("/until-close"), on("/both"));
    assert_ne!(on("/both"), on("/cut"));
    assert_ne!(on("/cut"), on("/last"));
    assert_eq!(on("/next"), on("/until-close"), "a clean end is reused");
}

fn req(url: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::get(url)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn every_access_line_is_written_before_a_sigterm_exit() {
    let up = Upstream::start().await;
    let dir = TempDir::new("access-lines");
    let served = gate_for(&dir, up.addr).await;
    let addr = served.addr;
    let c = client();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..125 {
                let got = send(&c, req(&format!("http://{addr}/line/{t}/{i}"))).await;
                assert_eq!(got.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // SIGTERM at once: lines still in the buffer must reach stdout before the exit
    let ok = Command::new("kill")
        .args(["-TERM", &served.bin.0.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let mut bin = served.bin;
    let status = tokio::task::spawn_blocking(move || bin.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    // the collecting threads read the pipe to its end
    let mut lines = 0;
    for _ in 0..100 {
        let text = served.output.lock().unwrap().clone();
        lines = text
            .lines()
            .filter(|l| l.contains("jwt_gate::access") && l.contains(" path=/line/"))
            .count();
        if lines == 2000 && text.contains("all connections drained") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lines, 2000, "access lines lost");
    let text = served.output.lock().unwrap().clone();
    let one = text
        .lines()
        .find(|l| l.contains(" path=/line/3/7 "))
        .expect("the line for /line/3/7");
    assert!(one.contains(" status=200 "), "{one}");
    assert!(one.contains(" bytes_out="), "{one}");
    assert!(one.contains(" reason=\"-\""), "{one}");
}

#[tokio::test]
async fn the_upstream_gets_origin_form_and_a_host_even_from_an_http10_client() {
    let up = RawUpstream::start(Duration::from_secs(30)).await;
    let dir = TempDir::new("pool-host");
    let served = gate_for(&dir, up.addr).await;
    let answer = raw(
        served.addr,
        b"GET /old?q=1 HTTP/1.0\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let heads: Vec<String> = up
        .lines
        .lock()
        .unwrap()
        .iter()
        .map(|l| l.1.clone())
        .collect();
    assert_eq!(heads.len(), 1);
    let head = heads[0].to_ascii_lowercase();
    assert!(head.starts_with("get /old?q=1 http/1.1\r\n"), "{head}");
    assert!(
        head.contains(&format!("\r\nhost: {}", up.addr)),
        "no Host for the upstream: {head}"
    );
}
