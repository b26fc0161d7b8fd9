//! Listener, accept loop, per-request routing and graceful shutdown.
//!
//! Request path, as named phases: request-level checks (CONNECT, duplicate Host, URI
//! length) → route (callback, ambiguous callback, other) → proxy header rules → the login
//! gate when it is the callback → upstream. A phase that answers the client ends the path.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::login::route::{classify, Route};
use crate::login::LoginGate;
use crate::proxy::body::{AccessLog, Logged, ReqBody};
use crate::proxy::pages::page;
use crate::proxy::Proxy;
use crate::replay::memory::MemoryStore;
use crate::replay::ReplayStore;

/// Everything a request needs, shared by all connections.
pub struct App {
    pub proxy: Proxy,
    pub gate: LoginGate,
    callback_path: String,
    max_uri_bytes: usize,
}

impl App {
    /// Build the app (and start the replay store's sweeper). Needs a tokio runtime.
    pub fn new(cfg: &Config) -> Arc<App> {
        let store = MemoryStore::new(cfg.replay.max_entries);
        store.spawn_sweeper(cfg.replay.sweep_interval);
        let store: Arc<dyn ReplayStore> = store;
        Arc::new(App {
            proxy: Proxy::new(cfg),
            gate: LoginGate::new(cfg, store, crate::process_start()),
            callback_path: cfg.gate.callback_path.clone(),
            max_uri_bytes: cfg.listen.max_uri_bytes,
        })
    }

    /// One request, start to finish. Never fails: every outcome is a response.
    pub async fn handle(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Logged> {
        let start = Instant::now();
        let mut log = AccessLog {
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            client: peer,
            status: 0,
            start,
            upstream: None,
            req_bytes: None,
            req_bytes_fixed: 0,
            reason: None,
        };
        let reject =
            |status: StatusCode, reason: &'static str, detail: &str, mut log: AccessLog| {
                log.status = status.as_u16();
                log.reason = Some(reason);
                let (parts, body) = page(status, reason, detail, None).into_parts();
                Response::from_parts(parts, Logged::new(body, log))
            };

        // request-level checks
        if req.method() == Method::CONNECT {
            return reject(
                StatusCode::METHOD_NOT_ALLOWED,
                "connect_refused",
                "CONNECT is not supported.",
                log,
            );
        }
        if req.headers().get_all(header::HOST).iter().count() > 1 {
            return reject(
                StatusCode::BAD_REQUEST,
                "duplicate_host",
                "The request has more than one Host header.",
                log,
            );
        }
        let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
        if uri_len > self.max_uri_bytes {
            return reject(
                StatusCode::URI_TOO_LONG,
                "uri_too_long",
                "The request URI is too long.",
                log,
            );
        }

        let route = classify(req.uri().path(), &self.callback_path);
        if route == Route::AmbiguousCallback {
            return reject(
                StatusCode::BAD_REQUEST,
                "ambiguous_callback_path",
                "This is not a valid sign-in callback address.",
                log,
            );
        }

        let upgrade = route == Route::Other && crate::proxy::headers::wants_upgrade(req.headers());
        let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        self.proxy.prepare(&mut parts, peer, upgrade);

        let (parts, body) = if route == Route::Callback {
            match self.gate.handle(parts, body, peer).await {
                Ok((parts, body)) => {
                    log.req_bytes_fixed = match &body {
                        ReqBody::Full(Some(b)) => b.len() as u64,
                        _ => 0,
                    };
                    (parts, body)
                }
                Err(r) => {
                    log.status = r.status.as_u16();
                    log.reason = Some(r.reason);
                    let mut resp =
                        page(r.status, r.reason, r.detail, Some(&self.gate.sign_in_path));
                    if r.status == StatusCode::METHOD_NOT_ALLOWED {
                        resp.headers_mut().insert(
                            header::ALLOW,
                            http::HeaderValue::from_static("GET, HEAD, POST"),
                        );
                    }
                    let (p, b) = resp.into_parts();
                    return Response::from_parts(p, Logged::new(b, log));
                }
            }
        } else {
            let counter = Arc::new(AtomicU64::new(0));
            log.req_bytes = Some(counter.clone());
            (parts, ReqBody::Stream(body, counter))
        };

        let fwd = self
            .proxy
            .send(Request::from_parts(parts, body), on_upgrade)
            .await;
        log.status = fwd.response.status().as_u16();
        log.upstream = fwd.upstream;
        log.reason = fwd.reason;
        let (p, b) = fwd.response.into_parts();
        Response::from_parts(p, Logged::new(b, log))
    }
}

/// Serve the public listener until `shutdown` resolves, then drain: stop accepting, let
/// in-flight requests finish within `listen.drain_timeout`, and return.
pub async fn serve<F>(
    listener: TcpListener,
    config: Arc<Config>,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send,
{
    let app = App::new(&config);
    serve_app(listener, app, config, shutdown).await
}

/// As [`serve`], with an [`App`] built by the caller.
pub async fn serve_app<F>(
    listener: TcpListener,
    app: Arc<App>,
    config: Arc<Config>,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.listen.header_read_timeout)
        .max_headers(config.listen.max_headers)
        // hyper answers 431 when the head outgrows its read buffer
        .max_buf_size(config.listen.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(128)
        .max_pending_accept_reset_streams(Some(32))
        .max_header_list_size(config.listen.max_header_bytes as u32);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let svc = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(app.handle(req, peer).await) }
                });
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(target: "jwt_gate::conn", error = %e, client = %peer, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(
        deadline_s = config.listen.drain_timeout.as_secs_f64(),
        "draining connections"
    );
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(config.listen.drain_timeout) => tracing::warn!("drain deadline reached; closing remaining connections"),
    }
    Ok(())
}
