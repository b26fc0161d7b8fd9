//! Request smuggling and malformed framing, in raw bytes through the gate against a
//! recording upstream. The upstream must only ever see well-formed requests that the gate
//! parsed itself, never bytes a client hid after an ambiguous body.

use std::time::Duration;

use crate::common::*;

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

async fn attack(gate: &Gate, raw_req: &str) -> String {
    raw(gate.addr, raw_req.as_bytes(), Duration::from_millis(800)).await
}

fn never_smuggled(up: &Upstream) {
    let seen = up.seen();
    assert!(
        seen.iter().all(|s| s.target != "/smuggled"),
        "a smuggled request reached the upstream: {:?}",
        seen.iter().map(|s| &s.target).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn ambiguous_or_malformed_framing_is_400_and_never_forwarded() {
    let up = Upstream::start().await;
    let gate = Gate::start(&config_text(up.addr, &hs256_provider())).await;
    let cases = [
        ("CL with a list", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!".to_string()),
        ("CL twice, different", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_string()),
        ("CL with a sign", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello".to_string()),
        ("CL in hex", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\nhello".to_string()),
        ("CL huge", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\nhello".to_string()),
        ("TE xchunked", format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{SMUGGLED}")),
        ("TE chunked, identity", format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{SMUGGLED}")),
        ("TE twice", format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}")),
        ("TE on HTTP/1.0", format!("POST /a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}")),
        ("obs-fold", "GET /a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n".to_string()),
        ("bare CR in a value", "GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n".to_string()),
        ("NUL in a value", "GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".to_string()),
        ("space before colon", "GET /a HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n".to_string()),
        ("bad chunk size", format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n{SMUGGLED}")),
    ];
    for (name, req) in &cases {
        let r = attack(&gate, req).await;
        assert!(r.starts_with("HTTP/1.1 400"), "{name}: {r}");
        assert_eq!(
            r.matches("HTTP/1.1 ").count(),
            1,
            "{name}: a second response means the tail was parsed: {r}"
        );
    }
    never_smuggled(&up);
    assert_eq!(
        up.count(),
        0,
        "{:?}",
        up.seen().iter().map(|s| &s.target).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn cl_te_is_processed_as_chunked_and_the_connection_closed() {
    // RFC 9112 §6.1: Transfer-Encoding overrides Content-Length; hyper drops the
    // Content-Length, and the connection is closed after the response, so nothing after
    // the chunked body is ever read as a request.
    let up = Upstream::start().await;
    let gate = Gate::start(&config_text(up.addr, &hs256_provider())).await;
    for req in [
        format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n{SMUGGLED}"),
    ] {
        let r = attack(&gate, &req).await;
        assert!(r.matches("HTTP/1.1 ").count() <= 1, "{r}");
    }
    never_smuggled(&up);
    for s in up.seen() {
        assert!(
            !(s.headers.contains_key("content-length")
                && s.headers.contains_key("transfer-encoding")),
            "{:?}",
            s.headers
        );
        assert_eq!(s.body.len(), 0);
    }
}

#[tokio::test]
async fn a_pipelined_replay_of_the_callback_is_refused() {
    let up = Upstream::start().await;
    let gate = Gate::start(&config_text(up.addr, &hs256_provider())).await;
    let t = hs256(&claims("pipe@x"));
    let one = format!("GET /users/auth/jwt/callback?jwt={t} HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = attack(
        &gate,
        &format!("{one}{one}GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await;
    let statuses: Vec<&str> = r
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &r[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, vec!["200", "401", "200"], "{r}");
    assert_eq!(up.callbacks().len(), 1);
    never_smuggled(&up);
}

#[tokio::test]
async fn a_client_aborting_mid_body_never_taints_the_next_request() {
    let up = Upstream::start().await;
    let gate = Gate::start(&config_text(up.addr, &hs256_provider())).await;
    // 10 bytes of a promised 1000, then the client goes away
    let r = attack(
        &gate,
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789",
    )
    .await;
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 4"), "{r}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // the next request, from someone else, arrives whole and on its own
    for i in 0..3 {
        let got = get(&gate.url(&format!("/after/{i}"))).await;
        assert_eq!(
            (got.status.as_u16(), got.text()),
            (200, format!("upstream saw GET /after/{i}"))
        );
    }
    let after: Vec<_> = up
        .seen()
        .into_iter()
        .filter(|s| s.target.starts_with("/after/"))
        .collect();
    assert_eq!(after.len(), 3);
    assert!(after.iter().all(|s| s.method == "GET" && s.body.is_empty()));
}

#[tokio::test]
async fn chunk_extensions_bare_lf_and_a_missing_last_chunk() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let gate = Gate::start(&config_text(up.addr, &hs256_provider())).await;

    // a valid extension is dropped; the body arrives exactly, once
    let r = attack(
        &gate,
        "POST /ext HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;name=\"v\"\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // a control byte inside an extension: hyper skips extensions without validating them;
    // the gate never forwards them (it re-frames the body), so the upstream sees one clean
    // request with the right body, or none
    let r = attack(
        &gate,
        "POST /ext-nul HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;a\0b\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.1 400"),
        "{r}"
    );
    // a line break inside a quoted extension: the body fails, and what follows is never parsed
    let r = attack(
        &gate,
        &format!("POST /badext HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\"x\nhello\r\n0\r\n\r\n{SMUGGLED}"),
    )
    .await;
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 4"), "{r}");
    assert!(r.matches("HTTP/1.1 ").count() <= 1, "{r}");

    // bare LF line endings: parsed as one request, forwarded as one well-formed request
    let r = attack(
        &gate,
        "GET /bare-lf HTTP/1.1\nHost: x\nConnection: close\n\n",
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.1 400"),
        "{r}"
    );

    // a chunked body that never gets its last chunk: the client half-closes after one chunk
    let mut s = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    s.write_all(b"POST /no-last-chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    let r = String::from_utf8_lossy(&out);
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 400"), "{r}");
    tokio::time::sleep(Duration::from_millis(200)).await;

    never_smuggled(&up);
    let seen = up.seen();
    // exactly one well-formed request per accepted client request
    let ext: Vec<_> = seen.iter().filter(|s| s.target == "/ext").collect();
    assert_eq!(ext.len(), 1);
    assert_eq!(&ext[0].body[..], b"hello");
    assert!(seen.iter().filter(|s| s.target == "/bare-lf").count() <= 1);
    let nul: Vec<_> = seen.iter().filter(|s| s.target == "/ext-nul").collect();
    assert!(nul.len() <= 1 && nul.iter().all(|s| &s.body[..] == b"hello"));
    assert!(ext[0].body_complete);
    // an incomplete body is never delivered as a complete request: the upstream may have
    // seen its head, but the body it got ended in an error, never in a clean end
    for s in seen
        .iter()
        .filter(|s| s.target == "/badext" || s.target == "/no-last-chunk")
    {
        assert!(
            !s.body_complete,
            "an upstream request completed from a broken body: {} {:?}",
            s.target, s.body
        );
    }
}
