//! HTTP/2 abuse over TLS: rapid reset with the h2 crate, and hand-written frames for the
//! floods a well-behaved client library will not send. After each, the gate must stay
//! responsive (a normal request on a second connection answers within a second) and the
//! upstream must see a bounded number of requests.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct TlsGate {
    gate: Gate,
    up: Upstream,
    connector: tokio_rustls::TlsConnector,
    _dir: TempDir,
}

async fn tls_gate() -> TlsGate {
    jwt_gate::tls::install_default_provider();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = TempDir::new("h2abuse");
    let c = dir.write("tls.crt", &cert.pem());
    let k = dir.write("tls.key", &key.serialize_pem());
    let up = Upstream::start().await;
    let cfg = config_text(
        up.addr,
        &format!(
            "{}[listen.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            hs256_provider(),
            c.display(),
            k.display()
        ),
    );
    let gate = Gate::start(&cfg).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let mut cc = rustls::ClientConfig::builder_with_provider(jwt_gate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cc.alpn_protocols = vec![b"h2".to_vec()];
    TlsGate {
        gate,
        up,
        connector: tokio_rustls::TlsConnector::from(Arc::new(cc)),
        _dir: dir,
    }
}

async fn tls(t: &TlsGate) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(t.gate.addr).await.unwrap();
    t.connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// A normal HTTP/2 request on a fresh connection answers within a second.
async fn still_responsive(t: &TlsGate) {
    let check = async {
        let s = tls(t).await;
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
                .await
                .unwrap();
        tokio::spawn(conn);
        send.send_request(
            Request::get("https://localhost/still-there")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap()
        .status()
    };
    let status = tokio::time::timeout(Duration::from_secs(1), check)
        .await
        .expect("the gate did not answer within a second");
    assert_eq!(status, 200);
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    let len = payload.len() as u32;
    f.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const CONTINUATION: u8 = 9;
const DATA: u8 = 0;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// An HPACK string literal: its length as a 7-bit-prefix integer (RFC 7541 §5.1, no
/// Huffman), then the bytes.
fn hpack_str(b: &mut Vec<u8>, s: &str) {
    let mut n = s.len();
    if n < 127 {
        b.push(n as u8);
    } else {
        b.push(127);
        n -= 127;
        while n >= 128 {
            b.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        b.push(n as u8);
    }
    b.extend_from_slice(s.as_bytes());
}

/// HPACK for `GET https://localhost<path>` (static-table indices, literal values) plus
/// any extra literal headers.
fn hpack_get(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = vec![0x82, 0x87]; // :method GET, :scheme https
    b.push(0x04); // :path, literal without indexing, indexed name 4
    hpack_str(&mut b, path);
    b.push(0x01); // :authority
    hpack_str(&mut b, "localhost");
    for (n, v) in extra {
        b.push(0x00);
        hpack_str(&mut b, n);
        hpack_str(&mut b, v);
    }
    b
}

/// Write `frames` after the preface and a SETTINGS frame, as fast as the gate takes them,
/// without reading; stop when the gate closes the connection or after `limit`.
async fn flood(t: &TlsGate, frames: impl Iterator<Item = Vec<u8>>, limit: Duration) -> usize {
    let mut s = tls(t).await;
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let mut sent = 0;
    let deadline = tokio::time::Instant::now() + limit;
    for f in frames {
        match tokio::time::timeout_at(deadline, s.write_all(&f)).await {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
    }
    // drain whatever the gate answered (GOAWAY), briefly
    let mut buf = vec![0u8; 65536];
    let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
    sent
}

#[tokio::test]
async fn the_hand_written_frames_are_well_formed() {
    // the control for every raw test below: the same encoder's plain request arrives
    let t = tls_gate().await;
    let frames = std::iter::once(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &hpack_get("/raw-ok", &[("x-raw", "1")]),
    ));
    flood(&t, frames, Duration::from_millis(500)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = t.up.seen();
    assert_eq!(
        seen.iter().map(|s| s.target.as_str()).collect::<Vec<_>>(),
        vec!["/raw-ok"]
    );
    assert_eq!(seen[0].headers["x-raw"], "1");
    assert_eq!(seen[0].headers["host"], "localhost");
}

#[tokio::test]
async fn a_path_that_is_not_origin_form_never_reaches_the_upstream() {
    // RFC 9113 §8.3.1: ":path" must start with "/". Sent as "http://x/users/auth/jwt/
    // callback?jwt=…", http < 1.5 classed it as another path and forwarded it in absolute
    // form, which Workhorse and GitLab's nginx route to the callback unchecked.
    let t = tls_gate().await;
    let token = hs256(&claims("absolute@x"));
    for (i, path) in [
        format!("http://gitlab.example/users/auth/jwt/callback?jwt={token}"),
        format!("users/auth/jwt/callback?jwt={token}"),
        "http://gitlab.example/explore".to_string(),
    ]
    .iter()
    .enumerate()
    {
        let frames = std::iter::once(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1 + 2 * i as u32,
            &hpack_get(path, &[]),
        ));
        flood(&t, frames, Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(t.up.count(), 0, "{:?}", t.up.seen());
    still_responsive(&t).await;
}

#[tokio::test]
async fn rapid_reset_is_cut_off_and_bounded() {
    let t = tls_gate().await;
    let s = tls(&t).await;
    let (mut client, conn) = h2::client::handshake(s).await.unwrap();
    let conn_task = tokio::spawn(conn);
    let mut sent = 0;
    for _ in 0..5000 {
        client = match client.ready().await {
            Ok(c) => c,
            Err(_) => break,
        };
        let req = Request::get("https://localhost/slow/200").body(()).unwrap();
        match client.send_request(req, true) {
            Ok((_resp, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(_) => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), conn_task).await;
    still_responsive(&t).await;
    let seen = t.up.count();
    eprintln!("rapid reset: {sent} streams opened and reset, {seen} reached the upstream");
    assert!(sent > 0);
    assert!(
        seen < 1000,
        "{seen} of {sent} reset streams reached the upstream"
    );
}

#[tokio::test]
async fn continuation_flood_is_refused_and_nothing_goes_upstream() {
    let t = tls_gate().await;
    let head = frame(HEADERS, END_STREAM, 1, &hpack_get("/cont", &[]));
    // a never-ending header block: 1 KiB literal headers in CONTINUATION frames, no END_HEADERS
    let filler = hpack_get("", &[("x-pad", &"a".repeat(120))]);
    let frames = std::iter::once(head)
        .chain(std::iter::repeat_with(move || frame(CONTINUATION, 0, 1, &filler)).take(200_000));
    flood(&t, frames, Duration::from_secs(3)).await;
    still_responsive(&t).await;
    assert!(t.up.seen().iter().all(|s| s.target != "/cont"));
}

#[tokio::test]
async fn ping_settings_and_empty_data_floods_leave_the_gate_responsive() {
    let t = tls_gate().await;
    let pings = (0..200_000u64).map(|i| frame(PING, 0, 0, &i.to_be_bytes()));
    flood(&t, pings, Duration::from_secs(2)).await;
    still_responsive(&t).await;

    let settings =
        (0..200_000).map(|_| frame(SETTINGS, 0, 0, &[0x00, 0x03, 0x00, 0x00, 0x00, 0x64]));
    flood(&t, settings, Duration::from_secs(2)).await;
    still_responsive(&t).await;

    // a POST whose body is an endless series of empty DATA frames
    let head = frame(HEADERS, END_HEADERS, 1, &{
        let mut h = hpack_get("/empty-data", &[]);
        h[0] = 0x83; // :method POST
        h
    });
    let data = std::iter::once(head).chain((0..200_000).map(|_| frame(DATA, 0, 1, &[])));
    flood(&t, data, Duration::from_secs(2)).await;
    still_responsive(&t).await;
    assert!(
        t.up.count() <= 4,
        "{:?}",
        t.up.seen().iter().map(|s| &s.target).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn forbidden_headers_oversized_lists_and_lying_content_length_are_refused() {
    let t = tls_gate().await;
    for (name, block) in [
        (
            "connection-specific header",
            hpack_get("/forbidden", &[("connection", "keep-alive")]),
        ),
        (
            "transfer-encoding",
            hpack_get("/forbidden", &[("transfer-encoding", "chunked")]),
        ),
    ] {
        let frames = std::iter::once(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
        flood(&t, frames, Duration::from_millis(500)).await;
        assert!(
            t.up.seen().iter().all(|s| s.target != "/forbidden"),
            "{name} reached the upstream"
        );
    }
    // a header list far over max_header_bytes, in one block split over CONTINUATION frames
    let big = hpack_get(
        "/big-headers",
        &(0..600)
            .map(|_| ("x-big", "b".repeat(120).leak() as &str))
            .collect::<Vec<_>>(),
    );
    let chunks: Vec<Vec<u8>> = big.chunks(16_000).map(|c| c.to_vec()).collect();
    let n = chunks.len();
    let frames = chunks.into_iter().enumerate().map(move |(i, c)| {
        if i == 0 {
            frame(
                HEADERS,
                END_STREAM | if n == 1 { END_HEADERS } else { 0 },
                1,
                &c,
            )
        } else {
            frame(
                CONTINUATION,
                if i == n - 1 { END_HEADERS } else { 0 },
                1,
                &c,
            )
        }
    });
    flood(&t, frames, Duration::from_millis(800)).await;
    assert!(t.up.seen().iter().all(|s| s.target != "/big-headers"));
    // content-length: 100 but 5 bytes of DATA and END_STREAM
    let head = frame(HEADERS, END_HEADERS, 1, &{
        let mut h = hpack_get("/lying", &[("content-length", "100")]);
        h[0] = 0x83;
        h
    });
    let frames = vec![head, frame(DATA, END_STREAM, 1, b"hello")].into_iter();
    flood(&t, frames, Duration::from_millis(800)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        t.up.seen()
            .iter()
            .all(|s| !(s.target == "/lying" && s.body_len == 100)),
        "a body that lied about its length arrived whole"
    );
    still_responsive(&t).await;
}
