//! The optional plain-HTTP listener: every request is redirected to https (308, same host
//! and path), except the JWT callback. A token that has crossed the network in clear must
//! not be used, so a plain-HTTP callback is verified and burned (recorded as used), then
//! refused, never redirected.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, HOST, LOCATION};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use std::net::IpAddr;
use std::sync::Arc;

use crate::app::App;
use crate::login::route::{classify, Route};
use crate::proxy::body::{BodyStats, ReqBody, RespBody};
use crate::proxy::headers::real_client;
use crate::proxy::pages::page;

async fn redirect(
    req: Request<Incoming>,
    peer: IpAddr,
    https_port: u16,
    app: &App,
) -> Response<RespBody> {
    let cfg = &app.config;
    if is_acme_challenge(req.uri().path()) {
        return acme_challenge(req, peer, app).await;
    }
    if classify(req.uri().path(), &cfg.gate.callback_path) != Route::Other {
        // the token crossed the network in clear: burn it, so that whoever saw it cannot
        // use it over https either, then refuse
        let (parts, body) = req.into_parts();
        let client = real_client(&parts.headers, peer, &cfg.listen.trusted_proxies);
        app.gate.burn(&parts, body, client).await;
        let mut resp = page(
            StatusCode::BAD_REQUEST,
            "callback_over_plain_http",
            "This sign-in link travelled unencrypted and cannot be used. Sign in again over https.",
            None,
        );
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("localhost");
    // drop any port the client used for plain HTTP; add the https one unless it is 443
    let bare = without_port(host);
    let authority = if https_port == 443 {
        bare.to_string()
    } else {
        format!("{bare}:{https_port}")
    };
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut resp = Response::new(RespBody::Full(Some(Bytes::new())));
    match HeaderValue::from_str(&format!("https://{authority}{pq}")) {
        Ok(v) => {
            *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
            resp.headers_mut().insert(LOCATION, v);
            resp
        }
        Err(_) => page(
            StatusCode::BAD_REQUEST,
            "bad_host",
            "The Host header is not valid.",
            None,
        ),
    }
}

/// RFC 8555 §8.3: an HTTP-01 challenge is fetched over plain HTTP on port 80, from this path
/// exactly; nothing else under `/.well-known/` is let through.
fn is_acme_challenge(path: &str) -> bool {
    path.strip_prefix("/.well-known/acme-challenge/")
        .is_some_and(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Omnibus renews its Let's Encrypt certificates with HTTP-01 through its own nginx: the
/// challenge goes upstream (as any request through the gate does) instead of to https.
async fn acme_challenge(req: Request<Incoming>, peer: IpAddr, app: &App) -> Response<RespBody> {
    let (parts, body) = req.into_parts();
    let stats = Arc::new(BodyStats::default());
    let peer = std::net::SocketAddr::new(peer, 0);
    app.proxy
        .forward(parts, ReqBody::Stream(body, stats), Vec::new(), peer, None)
        .await
        .response
}

/// `host` without a `:port`: `name:80` -> `name`, `[::1]:80` -> `[::1]`; an IPv6 literal
/// without a port keeps its colons.
fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Serve redirects until `shutdown` resolves.
pub(super) async fn serve<F: std::future::Future<Output = ()>>(
    listener: TcpListener,
    https_port: u16,
    app: Arc<App>,
    shutdown: F,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => return,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(redirect(req, peer.ip(), https_port, &app).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::without_port;

    #[test]
    fn only_the_acme_challenge_path_itself_is_forwarded() {
        use super::is_acme_challenge;
        assert!(is_acme_challenge(
            "/.well-known/acme-challenge/LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
        ));
        for p in [
            "/.well-known/acme-challenge/",
            "/.well-known/acme-challenge/../../users/auth/jwt/callback",
            "/.well-known/acme-challenge/a/b",
            "/.well-known/acme-challenge/%2e%2e",
            "/.well-known/security.txt",
            "/users/sign_in",
        ] {
            assert!(!is_acme_challenge(p), "{p}");
        }
    }

    #[test]
    fn ports_are_dropped_and_ipv6_literals_kept_whole() {
        assert_eq!(without_port("gitlab.example"), "gitlab.example");
        assert_eq!(without_port("gitlab.example:80"), "gitlab.example");
        assert_eq!(without_port("10.0.0.1:8080"), "10.0.0.1");
        assert_eq!(without_port("[::1]:80"), "[::1]");
        assert_eq!(without_port("[2001:db8::1]"), "[2001:db8::1]");
    }
}
