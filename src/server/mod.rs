//! Listeners and connections: the public listener (plain or TLS), the admin listener, the
//! plain-HTTP redirect listener, and graceful drain. [`start`] is the one entry point, for
//! `main` and for the tests alike. The request path itself is `pipeline`.

mod budget;
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
use crate::telemetry::metrics::METRICS;
use budget::{Budget, Tracked};

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
    if let Some(nib) = app.not_issued_before {
        // serve from the first second whose tokens the gate accepts (at most a second away)
        let wait = (nib * 1000)
            .saturating_sub(crate::clock::unix_now_ms())
            .max(0);
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        tracing::info!(
            not_issued_before = nib,
            "tokens issued before this start are refused: a restart must not reopen their replay window"
        );
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
        tokio::spawn(redirect::serve(l, https_port, app.clone(), stopped()));
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

/// Accept errors (EMFILE, ENFILE, ENOBUFS…): an exponential back-off from 10 ms to 1 s, and
/// one log line per episode plus one a minute while it lasts, not one per failure.
#[derive(Default)]
struct AcceptErrors {
    streak: u32,
    last_log: Option<std::time::Instant>,
    suppressed: u64,
}

impl AcceptErrors {
    fn failed(&mut self, e: &std::io::Error) -> Duration {
        self.streak = self.streak.saturating_add(1);
        let due = self
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
        if due {
            tracing::warn!(error = %e, suppressed = self.suppressed, "accept failed; backing off");
            self.last_log = Some(std::time::Instant::now());
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        Duration::from_millis(10u64 << self.streak.min(7)).min(Duration::from_secs(1))
    }

    fn recovered(&mut self) {
        if self.streak > 0 {
            tracing::info!(failures = self.streak, "accepting again");
            *self = AcceptErrors::default();
        }
    }
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
    let (first_request, idle) = (
        config.listen.header_read_timeout,
        config.listen.idle_timeout,
    );
    let max = config
        .listen
        .max_connections
        .unwrap_or_else(budget::default_max_connections);
    tracing::info!(
        max_connections = max,
        idle_timeout_s = idle.as_secs_f64(),
        "connection budget"
    );
    let budget = Budget::new(max);
    let mut accept_errors = AcceptErrors::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(s) => {
                accept_errors.recovered();
                s
            }
            Err(e) => {
                // EMFILE and friends: free idle descriptors, back off, log now and then
                budget.evict_idle(64);
                tokio::time::sleep(accept_errors.failed(&e)).await;
                continue;
            }
        };
        let Some(admitted) = budget.admit() else {
            // at the cap with every connection busy: refuse this one, keep the others
            METRICS.connection_refused();
            tracing::debug!(target: "jwt_gate::conn", client = %peer, "connection cap reached; refused");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let open = METRICS.connection();
        let state = admitted.state.clone();
        let app = app.clone();
        let svc = service_fn(move |req| {
            let app = app.clone();
            let in_flight = state.begin();
            async move {
                let resp = pipeline::handle(&app, req, peer).await;
                Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, in_flight)))
            }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.config()));
        tokio::spawn(async move {
            let _open = open;
            let state = admitted.state.clone();
            let serve = async {
                match tls {
                    None => {
                        let conn =
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                        watcher.watch(conn.into_owned()).await
                    }
                    Some(acceptor) => {
                        // each new handshake takes the current (possibly reloaded) config;
                        // the idle timer below bounds the handshake too
                        let stream = match tokio::time::timeout(
                            handshake_timeout,
                            acceptor.accept(stream),
                        )
                        .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(target: "jwt_gate::tls", error = %e, client = %peer, "TLS handshake failed");
                                return Ok(());
                            }
                            Err(_) => {
                                tracing::debug!(target: "jwt_gate::tls", client = %peer, "TLS handshake timed out");
                                return Ok(());
                            }
                        };
                        let conn =
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                        watcher.watch(conn.into_owned()).await
                    }
                }
            };
            tokio::select! {
                r = serve => {
                    if let Err(e) = r {
                        tracing::debug!(target: "jwt_gate::conn", error = %e, client = %peer, "connection ended with an error");
                    }
                }
                _ = budget::close_when_idle(&state, first_request, idle) => {
                    METRICS.connection_idle_closed();
                    tracing::debug!(target: "jwt_gate::conn", client = %peer, "idle connection closed");
                }
            }
            drop(admitted);
        });
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
