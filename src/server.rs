//! Listener, accept loop, per-request routing and graceful shutdown.
//!
//! Request path, as named phases: request-level checks (CONNECT, duplicate Host, URI
//! length) → route (callback, ambiguous callback, other) → proxy header rules → the login
//! gate when it is the callback → upstream. A phase that answers the client ends the path.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use std::sync::Mutex;
use std::time::Duration;

use http::HeaderValue;

use crate::config::{Config, SecretSource, StoreKind};
use crate::login::keys::{Algorithm, VerifyKey};
use crate::login::route::{classify, Route};
use crate::login::LoginGate;
use crate::metrics::{ReloadKind, METRICS};
use crate::proxy::body::{AccessLog, BodyStats, Logged, ReqBody};
use crate::proxy::pages::page;
use crate::proxy::Proxy;
use crate::replay::memory::MemoryStore;
use crate::replay::redis::RedisStore;
use crate::replay::ReplayStore;
use crate::tls::ServerTls;

/// Everything a request needs, shared by all connections.
pub struct App {
    pub proxy: Proxy,
    pub gate: LoginGate,
    pub tls: Option<Arc<ServerTls>>,
    callback_path: String,
    max_uri_bytes: usize,
    hsts: Option<HeaderValue>,
    key_file: Option<KeyFile>,
}

/// `provider.secret_file`, watched for changes.
struct KeyFile {
    path: std::path::PathBuf,
    alg: Algorithm,
    allow_weak: bool,
    digest: Mutex<Vec<u8>>,
}

impl App {
    /// Build the app (and start the replay store's sweeper). Needs a tokio runtime.
    pub fn new(cfg: &Config) -> Result<Arc<App>, String> {
        crate::tls::install_default_provider();
        let store: Arc<dyn ReplayStore> = match (&cfg.replay.store, &cfg.replay.redis) {
            (StoreKind::Redis, Some(settings)) => RedisStore::new(settings)?,
            _ => {
                let store = MemoryStore::new(cfg.replay.max_entries);
                store.spawn_sweeper(cfg.replay.sweep_interval);
                store
            }
        };
        let tls = match &cfg.listen.tls {
            Some(t) => Some(Arc::new(ServerTls::new(t.files.clone())?)),
            None => None,
        };
        let hsts = cfg
            .listen
            .tls
            .as_ref()
            .filter(|t| t.hsts_max_age > 0)
            .and_then(|t| HeaderValue::from_str(&format!("max-age={}", t.hsts_max_age)).ok());
        let key_file = match &cfg.provider.secret_source {
            SecretSource::File(path) => Some(KeyFile {
                path: path.clone(),
                alg: cfg.provider.algorithm,
                allow_weak: cfg.gate.allow_weak_secret,
                digest: Mutex::new(crate::tls::files_digest(&[path.as_path()])),
            }),
            SecretSource::Inline => None,
        };
        Ok(Arc::new(App {
            proxy: Proxy::new(cfg)?,
            gate: LoginGate::new(cfg, store, crate::process_start()),
            tls,
            callback_path: cfg.gate.callback_path.clone(),
            max_uri_bytes: cfg.listen.max_uri_bytes,
            hsts,
            key_file,
        }))
    }

    /// Re-read the TLS files and the JWT key file; apply what changed and parses. With
    /// `force` (SIGHUP), rebuild even when nothing seems to have changed. A file that fails
    /// to parse keeps the last good version and is logged.
    pub fn reload(&self, force: bool) {
        if let Some(tls) = &self.tls {
            match tls.reload_if_changed(force) {
                None => {}
                Some(Ok(())) => {
                    tracing::info!(target: "jwt_gate::reload", "TLS certificate reloaded")
                }
                Some(Err(e)) => {
                    tracing::error!(target: "jwt_gate::reload", error = %e, "TLS reload failed; keeping the previous certificate")
                }
            }
        }
        if let Some(k) = &self.key_file {
            let d = crate::tls::files_digest(&[k.path.as_path()]);
            {
                let mut last = k.digest.lock().unwrap_or_else(|p| p.into_inner());
                if !force && *last == d {
                    return;
                }
                *last = d;
            }
            let loaded = crate::config::read_secret_file(&k.path, Some(k.alg))
                .map_err(|e| e.to_string())
                .and_then(|m| VerifyKey::load(k.alg, &m, k.allow_weak));
            match loaded {
                Ok((key, _)) => {
                    self.gate.set_key(key);
                    METRICS.reload(ReloadKind::JwtKey, true);
                    tracing::info!(target: "jwt_gate::reload", path = %k.path.display(), "JWT verification key reloaded");
                }
                Err(e) => {
                    METRICS.reload(ReloadKind::JwtKey, false);
                    tracing::error!(target: "jwt_gate::reload", path = %k.path.display(), error = %e, "JWT key reload failed; keeping the previous key")
                }
            }
        }
    }

    /// Poll the watched files every `every` until the app is dropped.
    pub fn spawn_reloader(self: &Arc<Self>, every: Duration) {
        if self.tls.is_none() && self.key_file.is_none() {
            return;
        }
        crate::spawn_periodic(Arc::downgrade(self), every, |app: Arc<App>| async move {
            // file reads are small and rare, but keep them off the request workers
            let _ = tokio::task::spawn_blocking(move || app.reload(false)).await;
        });
    }

    /// One request, start to finish. Never fails: every outcome is a response.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Logged> {
        let mut resp = self.handle_inner(req, peer).await;
        if let Some(h) = &self.hsts {
            resp.headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, h.clone());
        }
        resp
    }

    async fn handle_inner(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Logged> {
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
        let version = req.version();
        let reject =
            |status: StatusCode, reason: &'static str, detail: &str, mut log: AccessLog| {
                log.status = status.as_u16();
                log.reason = Some(reason);
                let mut resp = page(status, reason, detail, None);
                close_after(&mut resp, version);
                let (parts, body) = resp.into_parts();
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
        // RFC 9112 §6.1/§6.3: a message with both Transfer-Encoding and Content-Length, or
        // with Transfer-Encoding repeated, is how requests are smuggled; no client needs it.
        // (hyper 1 already drops Content-Length next to Transfer-Encoding and closes the
        // connection afterwards; the first check guards against a parser that would not.)
        let te = req
            .headers()
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .count();
        if te > 0 && req.headers().contains_key(header::CONTENT_LENGTH) {
            return reject(
                StatusCode::BAD_REQUEST,
                "ambiguous_framing",
                "The request has both Transfer-Encoding and Content-Length.",
                log,
            );
        }
        if te > 1 {
            return reject(
                StatusCode::BAD_REQUEST,
                "bad_transfer_encoding",
                "The request repeats Transfer-Encoding.",
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
                    // a refused callback's body may be unread: never parse what follows it
                    if r.status != StatusCode::UNAUTHORIZED {
                        close_after(&mut resp, version);
                    }
                    let (p, b) = resp.into_parts();
                    return Response::from_parts(p, Logged::new(b, log));
                }
            }
        } else {
            let stats = Arc::new(BodyStats::default());
            log.req_bytes = Some(stats.clone());
            (parts, ReqBody::Stream(body, stats))
        };

        let stats = log.req_bytes.clone();
        let mut fwd = self
            .proxy
            .send(Request::from_parts(parts, body), on_upgrade)
            .await;
        // the upstream exchange failed because the client's own body did: that is a 400
        if fwd.reason.is_some()
            && stats.is_some_and(|s| s.failed.load(std::sync::atomic::Ordering::Relaxed))
        {
            fwd.response = page(
                StatusCode::BAD_REQUEST,
                "bad_request_body",
                "The request body was malformed or incomplete.",
                None,
            );
            close_after(&mut fwd.response, version);
            fwd.reason = Some("bad_request_body");
        }
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
    let app = App::new(&config).map_err(std::io::Error::other)?;
    app.spawn_reloader(reload_interval(&config));
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
        .max_header_list_size(config.listen.max_header_bytes as u32)
        .max_local_error_reset_streams(Some(256))
        // explicit flow-control windows: 1 MiB a stream, 4 MiB a connection
        .initial_stream_window_size(Some(1024 * 1024))
        .initial_connection_window_size(Some(4 * 1024 * 1024))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let graceful = GracefulShutdown::new();
    let tls = app.tls.clone();
    let handshake_timeout = config.listen.header_read_timeout;
    if let Some(addr) = config.listen.http_redirect_addr {
        let https_port = config.listen.addr.port();
        let callback = config.gate.callback_path.clone();
        let l = TcpListener::bind(addr).await?;
        tracing::info!(%addr, "plain-HTTP redirect listener");
        tokio::spawn(crate::redirect::serve(l, https_port, callback));
    }
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
                let open = crate::metrics::METRICS.connection();
                let app = app.clone();
                let svc = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(app.handle(req, peer).await) }
                });
                match &tls {
                    None => {
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                        let conn = graceful.watch(conn.into_owned());
                        tokio::spawn(async move {
                            let _open = open;
                            if let Err(e) = conn.await {
                                tracing::debug!(target: "jwt_gate::conn", error = %e, client = %peer, "connection ended with an error");
                            }
                        });
                    }
                    Some(tls) => {
                        // the handshake runs in the connection's own task, bounded in time;
                        // each new handshake takes the current (possibly reloaded) config
                        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
                        let builder = builder.clone();
                        let watcher = graceful.watcher();
                        let deadline = handshake_timeout;
                        tokio::spawn(async move {
                            let _open = open;
                            let stream = match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(target: "jwt_gate::tls", error = %e, client = %peer, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(target: "jwt_gate::tls", client = %peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                            if let Err(e) = watcher.watch(conn.into_owned()).await {
                                tracing::debug!(target: "jwt_gate::conn", error = %e, client = %peer, "connection ended with an error");
                            }
                        });
                    }
                }
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

/// Ask hyper to close an HTTP/1 connection after this response: the request's body may be
/// unread, and its bytes must never be parsed as a next request.
fn close_after<B>(resp: &mut Response<B>, version: http::Version) {
    if version <= http::Version::HTTP_11 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// How often watched files are polled: the shorter of the TLS and key intervals.
pub fn reload_interval(cfg: &Config) -> Duration {
    let key = cfg.gate.key_reload_interval;
    cfg.listen
        .tls
        .as_ref()
        .map_or(key, |t| t.reload_interval.min(key))
}
