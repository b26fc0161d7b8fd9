//! Listeners and connections: the public listener (plain or TLS), the admin listener, the
//! plain-HTTP redirect listener, and graceful drain. [`start`] is the one entry point, for
//! `main` and for the tests alike. The request path itself is `pipeline`.

mod pipeline;
mod redirect;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::App;
use crate::config::Config;

/// A gate that is serving: the addresses it is bound to (port 0 in the config becomes the
/// real port here) and the app, for SIGHUP reloads.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub redirect_addr: Option<SocketAddr>,
    pub app: Arc<App>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Wait until the gate has drained after its shutdown signal.
    pub async fn wait(self) -> Result<(), String> {
        self.done.await.map_err(|e| e.to_string())
    }
}

async fn bind(addr: SocketAddr, what: &str) -> Result<(TcpListener, SocketAddr), String> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}{what}: {e}"))?;
    let bound = l.local_addr().map_err(|e| e.to_string())?;
    Ok((l, bound))
}

/// Build the app from `cfg` (every error listed), bind every listener, start serving, and
/// return at once with the bound addresses. When `shutdown` resolves, the listeners close
/// and in-flight requests drain within `listen.drain_timeout`.
pub async fn start<F>(cfg: Config, shutdown: F) -> Result<Running, String>
where
    F: Future<Output = ()> + Send + 'static,
{
    start_with(cfg, None, shutdown).await
}

/// As [`start`], on a public listener the caller has bound already (the demo needs its
/// address before the config exists).
pub async fn start_on<F>(listener: TcpListener, cfg: Config, shutdown: F) -> Result<Running, String>
where
    F: Future<Output = ()> + Send + 'static,
{
    start_with(cfg, Some(listener), shutdown).await
}

async fn start_with<F>(
    cfg: Config,
    public: Option<TcpListener>,
    shutdown: F,
) -> Result<Running, String>
where
    F: Future<Output = ()> + Send + 'static,
{
    let app = Arc::new(App::build(cfg).map_err(|e| e.to_string())?);
    let cfg = app.config.clone();
    for w in &app.warnings {
        tracing::warn!("{w}");
    }
    let (listener, addr) = match public {
        Some(l) => {
            let a = l.local_addr().map_err(|e| e.to_string())?;
            (l, a)
        }
        None => bind(cfg.listen.addr, "").await?,
    };
    let admin = match cfg.admin.addr {
        Some(a) => Some(bind(a, " (admin)").await?),
        None => None,
    };
    let redirect = match cfg.listen.http_redirect_addr {
        Some(a) => Some(bind(a, " (plain-HTTP redirect)").await?),
        None => None,
    };
    app.start_background();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let admin_addr = admin.as_ref().map(|(_, a)| *a);
    if let Some((l, a)) = admin {
        tracing::info!(addr = %a, "admin listening");
        tokio::spawn(crate::admin::serve(l, app.clone(), stopped()));
    }
    let redirect_addr = redirect.as_ref().map(|(_, a)| *a);
    if let Some((l, a)) = redirect {
        tracing::info!(addr = %a, "plain-HTTP redirect listener");
        let https_port = addr.port();
        let callback = cfg.gate.callback_path.clone();
        tokio::spawn(redirect::serve(l, https_port, callback, stopped()));
    }
    tracing::info!(addr = %addr, upstream = %cfg.upstream.url, "jwt-gate listening");
    let serving = app.clone();
    let done = tokio::spawn(async move {
        serve_public(listener, serving, shutdown).await;
        let _ = stop_tx.send(true);
    });
    Ok(Running {
        addr,
        admin_addr,
        redirect_addr,
        app,
        done,
    })
}

/// Serve the public listener until `shutdown` resolves, then drain: stop accepting, let
/// in-flight requests finish within `listen.drain_timeout`, and return.
async fn serve_public<F>(listener: TcpListener, app: Arc<App>, shutdown: F)
where
    F: Future<Output = ()> + Send,
{
    let config = app.config.clone();
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
                let open = crate::telemetry::metrics::METRICS.connection();
                let app = app.clone();
                let svc = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(pipeline::handle(&app, req, peer).await) }
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
}
