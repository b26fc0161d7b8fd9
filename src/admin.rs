//! The admin listener (kept off the public one): `/healthz` (the process is alive) and
//! `/readyz` (listeners bound; upstream reachable, unless configured not to matter) and
//! `/metrics` (Prometheus, OpenMetrics text: see `metrics.rs`).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use prometheus_client::registry::Registry;

use crate::app::App;
use crate::login::Reason;
use crate::telemetry::metrics::{self, Sources};

async fn route(
    req: Request<Incoming>,
    app: Arc<App>,
    registry: Arc<Registry>,
) -> Response<Full<Bytes>> {
    let cfg = &app.config;
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/metrics" => {
            let mut r = text(StatusCode::OK, metrics::render(&registry));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        "/readyz" => {
            let store = &app.store;
            let health = store.health().await;
            let entries = store
                .entries()
                .map_or(String::new(), |n| format!(" ({n} entries)"));
            let store_line = match &health {
                Ok(()) => format!("replay store: {}{entries} ok\n", store.kind()),
                Err(e) => format!("replay store: {} unavailable: {e}\n", store.kind()),
            };
            let mut ready = !(cfg.replay.ready_requires_store && health.is_err());
            let store_line = match store.readiness_problem() {
                Some((why, fatal)) => {
                    ready &= !fatal;
                    let label = if fatal { "not ready" } else { "warning" };
                    format!("{store_line}replay store {label}: {why}\n")
                }
                None => store_line,
            };
            let mut upstream_line = String::new();
            if cfg.admin.ready_requires_upstream {
                let probe = tokio::time::timeout(
                    Duration::from_secs(1),
                    TcpStream::connect(cfg.upstream.authority.as_str()),
                )
                .await;
                upstream_line = match probe {
                    Ok(Ok(_)) => "upstream: reachable\n".to_string(),
                    Ok(Err(e)) => {
                        ready = false;
                        format!("upstream: {e}\n")
                    }
                    Err(_) => {
                        ready = false;
                        "upstream: connect timed out\n".to_string()
                    }
                };
            }
            // the IdP's keys matter to sign-ins only: git, API and pages keep flowing without
            // them, so they never make the pod unready (sign-ins are refused meanwhile)
            let idp_line = match app.idp_keys.as_ref().map(|k| k.usable()) {
                None => String::new(),
                Some(Ok(())) => "idp keys: ok\n".to_string(),
                Some(Err(e)) => format!("idp keys warning: {e}; IdP sign-ins are refused\n"),
            };
            let (status, head) = if ready {
                (StatusCode::OK, "ready")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "not ready")
            };
            text(
                status,
                format!("{head}\n{upstream_line}{store_line}{idp_line}"),
            )
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// What `/metrics` reads beyond the counters: narrow handles on the store and the TLS state.
fn metric_sources(app: &App) -> Sources {
    let store = app.store.clone();
    let tls = app.tls.clone();
    Sources {
        reasons: Reason::LABELS,
        store_kind: app.store.kind(),
        store_entries: Box::new(move || store.entries()),
        cert_not_after: Box::new(move || tls.as_ref().and_then(|t| t.not_after())),
        report_mode: app.config.gate.mode == crate::config::GateMode::Report,
    }
}

/// Serve the admin endpoints until `shutdown` resolves.
pub async fn serve<F>(listener: TcpListener, app: Arc<App>, shutdown: F)
where
    F: Future<Output = ()> + Send,
{
    tokio::pin!(shutdown);
    let registry = Arc::new(metrics::registry(metric_sources(&app)));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (app, registry) = (app.clone(), registry.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (app, registry) = (app.clone(), registry.clone());
                        async move { Ok::<_, Infallible>(route(req, app, registry).await) }
                    });
                    let _ = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            _ = &mut shutdown => return,
        }
    }
}
