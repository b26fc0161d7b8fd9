//! Forwarding to the upstream (GitLab Workhorse or GitLab's nginx). Knows nothing of JWTs.
//!
//! Towards a plain-HTTP/1.1 upstream, the gate's own pool (`pool.rs`): requests whose body
//! the gate holds whole on its own client codec (`codec.rs`, `wire.rs`), requests whose
//! body streams on hyper's `client::conn`. https:// and HTTP/2 upstreams, and upgrades, on
//! hyper-util's pooled client. Bodies stream both ways with backpressure; upgrades are
//! tunnelled only after the upstream answered 101.

pub mod body;
pub mod codec;
pub mod headers;
pub mod pages;
pub mod pool;
pub mod wire;

use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{request, Request, Response, StatusCode, Uri, Version};
use hyper::upgrade::OnUpgrade;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ipnet::IpNet;

use body::{ReqBody, RespBody};
pub use headers::IdentityHeaders;

use crate::config::UpstreamConfig;

pub struct Proxy {
    client: Client<HttpsConnector<HttpConnector>, ReqBody>,
    /// The gate's own pool for plain HTTP/1.1 upstreams (`None` for https:// or HTTP/2,
    /// which go through `client`, as do upgrades).
    pool: Option<Arc<pool::Pool>>,
    scheme: Scheme,
    authority: Authority,
    response_header_timeout: Duration,
    trusted: Vec<IpNet>,
    identity: IdentityHeaders,
    /// X-Forwarded-Proto for requests from the public listener.
    proto: &'static str,
}

/// What the proxy needs to know of the listener in front of it.
pub struct Front {
    /// Peers whose X-Forwarded-* headers are trusted (appended to instead of replaced).
    pub trusted_proxies: Vec<IpNet>,
    /// Whether the public listener speaks TLS (X-Forwarded-Proto).
    pub tls: bool,
}

/// What happened upstream, for the access log.
pub struct Forwarded {
    pub response: Response<RespBody>,
    pub upstream: Option<Duration>,
    pub reason: Option<&'static str>,
}

impl Proxy {
    /// Build the upstream client. `tls` is used for https:// upstreams only; `identity`
    /// names the headers only the gate may set.
    pub fn new(
        up: &UpstreamConfig,
        tls: rustls::ClientConfig,
        front: Front,
        identity: IdentityHeaders,
    ) -> Proxy {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(up.connect_timeout));
        conn.set_keepalive(Some(Duration::from_secs(60)));
        conn.enforce_http(false);
        let b = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1();
        let connector = if up.http2 {
            b.enable_http2().wrap_connector(conn)
        } else {
            b.wrap_connector(conn)
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(up.pool_idle_timeout)
            .pool_max_idle_per_host(up.pool_max_idle_per_host)
            // a fixed 32 KiB read buffer per upstream connection (hyper grows it adaptively up
            // to ~400 KB by default, and a 64 KiB cap still cost ~200 KiB per streaming
            // connection): 1,000 concurrent 1 MiB downloads took 204 MiB with the cap, 112
            // with this, at the same CPU per MiB (bench/, BENCHMARKS.md)
            .http1_read_buf_exact_size(32 * 1024)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        if up.http2 {
            builder.http2_only(true);
        }
        let plain_h1 = up.url.scheme() == Some(&Scheme::HTTP) && !up.http2;
        Proxy {
            client: builder.build(connector),
            pool: plain_h1.then(|| {
                pool::Pool::new(
                    up.authority.clone(),
                    up.connect_timeout,
                    up.pool_idle_timeout,
                    up.pool_max_idle_per_host,
                )
            }),
            scheme: up.url.scheme().cloned().unwrap_or(Scheme::HTTP),
            authority: up
                .url
                .authority()
                .cloned()
                .unwrap_or_else(|| Authority::from_static("127.0.0.1")),
            response_header_timeout: up.response_header_timeout,
            trusted: front.trusted_proxies,
            identity,
            proto: if front.tls { "https" } else { "http" },
        }
    }

    /// Forward one request: strip what the client may not send, inject the identity (empty
    /// except on a verified callback), rewrite for the upstream, send. With `client_upgrade`,
    /// a 101 answer opens a tunnel between the client's and the upstream's connections.
    pub async fn forward(
        &self,
        mut parts: request::Parts,
        body: ReqBody,
        identity: Vec<(HeaderName, HeaderValue)>,
        peer: SocketAddr,
        client_upgrade: Option<OnUpgrade>,
    ) -> Forwarded {
        self.strip(&mut parts, client_upgrade.is_some());
        for (name, value) in identity {
            parts.headers.insert(name, value);
        }
        if let ReqBody::Full(buffered) = &body {
            // the gate has read the body: nothing is left to continue, and its length is known
            parts.headers.remove(header::EXPECT);
            if let Some(b) = buffered {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
            }
        }
        let upgrade = client_upgrade.is_some();
        self.rewrite(&mut parts, peer, upgrade);
        let t0 = Instant::now();
        let bound = self.response_header_timeout;
        let head = match &self.pool {
            // the common case, on the gate's own codec: the parts go straight to it rather
            // than through a `Request` and back (callgrind: each move of the request and of
            // the futures holding it is a `memcpy`)
            Some(pool) if !upgrade && is_whole(&body) => {
                let whole = match body {
                    ReqBody::Full(b) => b,
                    ReqBody::Stream(..) => None,
                };
                let sent = pool.send_whole(parts, whole);
                tokio::time::timeout(bound, async {
                    sent.await
                        .map(|r| r.map(RespBody::Wire))
                        .map_err(pool_failure)
                })
                .await
            }
            _ => {
                let req = Request::from_parts(parts, body);
                tokio::time::timeout(bound, self.response_head(req, upgrade)).await
            }
        };
        self.settle(head, client_upgrade, t0)
    }

    /// Identity headers out (every spelling), hop-by-hop out.
    pub fn strip(&self, parts: &mut request::Parts, upgrade: bool) {
        self.identity.strip(&mut parts.headers);
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    }

    /// X-Forwarded-* set, Host from an absolute-form target, the target rewritten to the
    /// upstream: origin form for the gate's pool, absolute for hyper-util's client (https
    /// and HTTP/2 upstreams, and every `upgrade`, which that client carries).
    pub fn rewrite(&self, parts: &mut request::Parts, peer: SocketAddr, upgrade: bool) {
        // RFC 9112 §3.2.2: with an absolute-form target the Host field is ignored and
        // replaced by the target's authority (HTTP/2's :authority likewise).
        if let Some(a) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                parts.headers.insert(header::HOST, v);
            }
        }
        let host = parts.headers.get(header::HOST).cloned();
        headers::set_forwarded(
            &mut parts.headers,
            peer.ip(),
            self.proto,
            host,
            &self.trusted,
        );
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        if self.pool.is_some() && !upgrade {
            // the gate's pool writes the target as it is: origin form, as RFC 9112 §3.2.1
            // wants towards an origin server
            parts.uri = Uri::from(pq);
        } else {
            // hyper-util's client takes an absolute URI and writes the origin form itself
            let mut b = Uri::builder()
                .scheme(self.scheme.clone())
                .authority(self.authority.clone())
                .path_and_query(pq)
                .build();
            if let Ok(uri) = b.as_mut() {
                std::mem::swap(&mut parts.uri, uri);
            }
        }
        parts.version = Version::HTTP_11;
    }

    /// The outcome of waiting for the response head: the response, or the gate's page.
    fn settle(
        &self,
        head: Result<Result<Response<RespBody>, Failure>, tokio::time::error::Elapsed>,
        client_upgrade: Option<OnUpgrade>,
        t0: Instant,
    ) -> Forwarded {
        let elapsed = Some(t0.elapsed());
        match head {
            Err(_) => error_page(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", elapsed),
            Ok(Err(f)) => {
                tracing::warn!(target: "jwt_gate::upstream", error = %f.error, source = ?f.source, reason = f.reason, "upstream request failed");
                error_page(f.status, f.reason, elapsed)
            }
            Ok(Ok(resp)) => self.answer(resp, client_upgrade, elapsed),
        }
    }

    /// The upstream's response head: through the gate's pool (plain HTTP/1.1, no upgrade)
    /// or hyper-util's client.
    async fn response_head(
        &self,
        req: Request<ReqBody>,
        upgrade: bool,
    ) -> Result<Response<RespBody>, Failure> {
        match &self.pool {
            Some(pool) if !upgrade => pool
                .send(req)
                .await
                .map(|r| r.map(RespBody::Pooled))
                .map_err(pool_failure),
            _ => match self.client.request(req).await {
                Ok(resp) => Ok(resp.map(RespBody::Upstream)),
                Err(e) => {
                    let (status, reason) = classify_error(&e);
                    Err(Failure::new(status, reason, &e, e.source()))
                }
            },
        }
    }

    /// The upstream's response, hop-by-hop headers out; a 101 opens the tunnel when the
    /// client asked for an upgrade, and is refused otherwise.
    fn answer(
        &self,
        mut resp: Response<RespBody>,
        client_upgrade: Option<OnUpgrade>,
        elapsed: Option<Duration>,
    ) -> Forwarded {
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            let Some(client_up) = client_upgrade else {
                return error_page(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unexpected_upgrade",
                    elapsed,
                );
            };
            let upstream_up = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(client_up, upstream_up) {
                    Ok((c, u)) => {
                        let mut c = TokioIo::new(c);
                        let mut u = TokioIo::new(u);
                        let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                    }
                    Err(e) => {
                        tracing::debug!(target: "jwt_gate::upstream", error = %e, "upgrade failed")
                    }
                }
            });
        }
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, switching);
        Forwarded {
            response: Response::from_parts(parts, body),
            upstream: elapsed,
            reason: None,
        }
    }
}

/// Whether the gate holds the request's body whole (none, or the verified callback form):
/// such a request goes on the gate's own codec, one whose body streams on hyper's.
fn is_whole(body: &ReqBody) -> bool {
    match body {
        ReqBody::Full(_) => true,
        ReqBody::Stream(b, _) => hyper::body::Body::is_end_stream(b),
    }
}

fn pool_failure(e: pool::SendError) -> Failure {
    let (status, reason) = classify_pool_error(&e);
    Failure::new(status, reason, &e, None)
}

/// Why no response head came from the upstream, for the page and the warning.
struct Failure {
    status: StatusCode,
    reason: &'static str,
    error: String,
    source: Option<String>,
}

impl Failure {
    fn new(
        status: StatusCode,
        reason: &'static str,
        error: &dyn std::fmt::Display,
        source: Option<&(dyn std::error::Error + 'static)>,
    ) -> Failure {
        Failure {
            status,
            reason,
            error: error.to_string(),
            source: source.map(|s| format!("{s:?}")),
        }
    }
}

fn error_page(status: StatusCode, reason: &'static str, upstream: Option<Duration>) -> Forwarded {
    let detail = match status {
        StatusCode::GATEWAY_TIMEOUT => "GitLab did not answer in time. Try again in a moment.",
        _ => "The gate could not reach GitLab. Try again in a moment.",
    };
    Forwarded {
        response: pages::page(status, reason, detail, None),
        upstream,
        reason: Some(reason),
    }
}

fn classify_pool_error(e: &pool::SendError) -> (StatusCode, &'static str) {
    match e {
        pool::SendError::ConnectTimeout => {
            (StatusCode::GATEWAY_TIMEOUT, "upstream_connect_timeout")
        }
        pool::SendError::Connect(_) => (StatusCode::BAD_GATEWAY, "upstream_unreachable"),
        pool::SendError::Http(_) | pool::SendError::Wire(_) => {
            (StatusCode::BAD_GATEWAY, "upstream_bad_response")
        }
    }
}

/// 504 for timeouts (connect included), 502 for everything else (refused, reset, bad
/// response).
fn classify_error(e: &hyper_util::client::legacy::Error) -> (StatusCode, &'static str) {
    let mut src: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return (StatusCode::GATEWAY_TIMEOUT, "upstream_connect_timeout");
            }
        }
        if s.to_string().contains("timed out") {
            return (StatusCode::GATEWAY_TIMEOUT, "upstream_connect_timeout");
        }
        src = s.source();
    }
    if e.is_connect() {
        (StatusCode::BAD_GATEWAY, "upstream_unreachable")
    } else {
        (StatusCode::BAD_GATEWAY, "upstream_bad_response")
    }
}
