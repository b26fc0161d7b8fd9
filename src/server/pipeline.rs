//! One request, as named phases (the pingora habit): guard (request-level checks) → route
//! (callback, ambiguous callback, other) → login (the callback only) → forward. A phase
//! that answers the client ends the path; each module is visited once per request.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::app::App;
use crate::config::GateMode;
use crate::login::route::{classify, Route};
use crate::login::Refusal as LoginRefusal;
use crate::proxy::body::{AccessLog, BodyStats, Logged, ReqBody, RespBody};
use crate::proxy::headers::{real_client, wants_upgrade};
use crate::proxy::pages::page;
use crate::telemetry::metrics::METRICS;

/// A refusal of the gate's own, before or after the login phase.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    detail: &'static str,
}

const fn refusal(status: StatusCode, code: &'static str, detail: &'static str) -> Refusal {
    Refusal {
        status,
        code,
        detail,
    }
}

/// One request, start to finish. Never fails: every outcome is a response.
pub(crate) async fn handle(
    app: &App,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Logged> {
    let mut resp = phases(app, req, peer).await;
    if let Some(h) = &app.hsts {
        resp.headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, h.clone());
    }
    resp
}

async fn phases(app: &App, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Logged> {
    let mut log = AccessLog {
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        client: peer,
        status: 0,
        start: Instant::now(),
        upstream: None,
        req_bytes: None,
        req_bytes_fixed: 0,
        reason: None,
    };
    let version = req.version();
    let cfg = &app.config;

    // guard
    if let Err(r) = guard(&req, cfg.listen.max_uri_bytes) {
        return refuse(r, log, version);
    }

    // route
    if is_sso(app, req.uri().path()) {
        return sso(app, req, peer, log, version).await;
    }
    let route = classify(req.uri().path(), &cfg.gate.callback_path);
    if let Some(r) = misrouted_callback(route) {
        return refuse(r, log, version);
    }
    let upgrade = route == Route::Other && wants_upgrade(req.headers());
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    // login
    let (body, identity, stats) = if route == Route::Callback {
        let client = real_client(&parts.headers, peer.ip(), &cfg.listen.trusted_proxies);
        let bodiless = http_body::Body::is_end_stream(&body);
        let decided = match cfg.gate.mode {
            GateMode::Enforce => match app.gate.decide(&parts, body, client).await {
                // with an IdP, GitLab gets the minted token in the IdP token's place; a
                // query that would not parse is refused, never sent on with the IdP's token
                Ok(a) => match a.query {
                    Some(q) if !set_query(&mut parts, &q) => {
                        Err(LoginRefusal::from(crate::login::Reason::MintFailed))
                    }
                    _ => Ok((a.identity, a.body)),
                },
                Err(r) => Err(r),
            },
            GateMode::Report => report_only(app, &mut parts, body, client).await,
        };
        match decided {
            Ok((identity, body)) => {
                log.req_bytes_fixed = body.as_ref().map_or(0, |b| b.len() as u64);
                (ReqBody::Full(body), identity, None)
            }
            Err(refusal) => return login_refused(app, refusal, bodiless, log, version),
        }
    } else if http_body::Body::is_end_stream(&body) {
        // no body (most requests): nothing to stream or count
        (ReqBody::Full(None), Vec::new(), None)
    } else {
        let stats = Arc::new(BodyStats::default());
        log.req_bytes = Some(stats.clone());
        (
            ReqBody::Stream(body, stats.clone()),
            Vec::new(),
            Some(stats),
        )
    };

    // forward
    let fwd = app
        .proxy
        .forward(parts, body, identity, peer, on_upgrade)
        .await;
    // the upstream exchange failed because the client's own body did: that is a 400
    if fwd.reason.is_some() && stats.is_some_and(|s| s.failed.load(Ordering::Relaxed)) {
        let r = refusal(
            StatusCode::BAD_REQUEST,
            "bad_request_body",
            "The request body was malformed or incomplete.",
        );
        return refuse(r, log, version);
    }
    log.status = fwd.response.status().as_u16();
    log.upstream = fwd.upstream;
    log.reason = fwd.reason;
    let (p, b) = fwd.response.into_parts();
    Response::from_parts(p, Logged::new(b, log))
}

/// Header-assertion sign-in is on and this is its path.
fn is_sso(app: &App, path: &str) -> bool {
    app.gate.takes_assertions() && app.config.idp.as_ref().is_some_and(|i| i.sso_path == path)
}

/// Header-assertion sign-in: the identity-aware proxy's assertion becomes a minted token,
/// and the gate itself sends GitLab the callback (GET callback_path?jwt=<minted>) with the
/// browser's headers and cookies; the browser gets GitLab's answer (its session cookie and
/// redirect). The minted token never reaches the browser.
async fn sso(
    app: &App,
    req: Request<Incoming>,
    peer: SocketAddr,
    log: AccessLog,
    version: http::Version,
) -> Response<Logged> {
    let mut log = log;
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let r = LoginRefusal::from(crate::login::Reason::MethodNotAllowed);
        return login_refused(app, r, false, log, version);
    }
    let bodiless = http_body::Body::is_end_stream(req.body());
    let (mut parts, _body) = req.into_parts();
    let cfg = &app.config;
    let client = real_client(&parts.headers, peer.ip(), &cfg.listen.trusted_proxies);
    let admitted = match app.gate.sso(&parts, peer.ip(), client).await {
        Ok(a) => a,
        Err(refusal) => return login_refused(app, refusal, bodiless, log, version),
    };
    parts.method = Method::GET;
    let query = admitted.query.unwrap_or_default();
    let target = format!("{}?{query}", cfg.gate.callback_path);
    match target.parse() {
        Ok(uri) => parts.uri = uri,
        Err(_) => {
            let r = LoginRefusal::from(crate::login::Reason::MintFailed);
            return login_refused(app, r, bodiless, log, version);
        }
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::TRANSFER_ENCODING);
    let fwd = app
        .proxy
        .forward(parts, ReqBody::Full(None), admitted.identity, peer, None)
        .await;
    log.status = fwd.response.status().as_u16();
    log.upstream = fwd.upstream;
    log.reason = fwd.reason;
    let (p, b) = fwd.response.into_parts();
    Response::from_parts(p, Logged::new(b, log))
}

/// Replace the request's query, keeping its path; false if the result is no URI.
fn set_query(parts: &mut http::request::Parts, query: &str) -> bool {
    let target = format!("{}?{query}", parts.uri.path());
    match target.parse() {
        Ok(uri) => {
            parts.uri = uri;
            true
        }
        Err(_) => false,
    }
}

/// A path that is a JWT callback only in a form the gate does not verify: refused, never
/// forwarded.
fn misrouted_callback(route: Route) -> Option<Refusal> {
    match route {
        Route::AmbiguousCallback => Some(refusal(
            StatusCode::BAD_REQUEST,
            "ambiguous_callback_path",
            "This is not a valid sign-in callback address.",
        )),
        Route::ForeignCallback => Some(refusal(
            StatusCode::BAD_REQUEST,
            "callback_path_mismatch",
            "This sign-in callback is not the one this gate guards (check gate.callback_path).",
        )),
        Route::Callback | Route::Other => None,
    }
}

/// Request-level checks, before anything is routed.
fn guard(req: &Request<Incoming>, max_uri_bytes: usize) -> Result<(), Refusal> {
    if req.method() == Method::CONNECT {
        return Err(refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            "connect_refused",
            "CONNECT is not supported.",
        ));
    }
    let headers = req.headers();
    if headers.get_all(header::HOST).iter().count() > 1 {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "duplicate_host",
            "The request has more than one Host header.",
        ));
    }
    // RFC 9112 §6.1/§6.3: a message with both Transfer-Encoding and Content-Length, or
    // with Transfer-Encoding repeated, is how requests are smuggled; no client needs it.
    // (hyper 1 already drops Content-Length next to Transfer-Encoding and closes the
    // connection afterwards; the first check guards against a parser that would not.)
    let te = headers.get_all(header::TRANSFER_ENCODING).iter().count();
    if te > 0 && headers.contains_key(header::CONTENT_LENGTH) {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "ambiguous_framing",
            "The request has both Transfer-Encoding and Content-Length.",
        ));
    }
    if te > 1 {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "bad_transfer_encoding",
            "The request repeats Transfer-Encoding.",
        ));
    }
    // RFC 9113 §8.3.1: an HTTP/2 :path is origin-form ("/…") or "*"; http < 1.5 let a
    // ":path: http://x/…" through in absolute form, which Workhorse and nginx route to the
    // callback unchecked. Held here, not only by the dependency.
    let path = req.uri().path();
    if !(path.starts_with('/') || path == "*") {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "bad_request_target",
            "The request target is not an absolute path.",
        ));
    }
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > max_uri_bytes {
        return Err(refusal(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            "The request URI is too long.",
        ));
    }
    Ok(())
}

/// The login phase refused: its page, with a way back to sign in.
fn login_refused(
    app: &App,
    refusal: LoginRefusal,
    bodiless: bool,
    log: AccessLog,
    version: http::Version,
) -> Response<Logged> {
    let reason = refusal.reason;
    let sign_in = Some(app.config.gate.sign_in_path.as_str());
    let mut resp = page(reason.status(), reason.code(), reason.describe(), sign_in);
    if let Some((name, value)) = reason.extra_header() {
        resp.headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    if let Some(wait) = refusal.retry_after {
        // RFC 9110 §10.2.3: whole seconds, rounded up so that a client that waits is let in
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    // a refused callback's body may be unread: never parse what follows it. A 401 has
    // read its body whole, and a request without a body leaves nothing behind, so those
    // keep the connection (a throttled flood then costs no reconnect per 429)
    let close = !(bodiless || reason.status() == StatusCode::UNAUTHORIZED);
    answer(resp, reason.code(), log, version, close)
}

/// Report mode: decide as always (verify, record, log, count), then forward the callback
/// whatever the decision — with identity headers only for a verified token. The body is read
/// first (bounded as always), so it can go on after the gate has looked at it; one that
/// cannot be read whole is refused even here, since it cannot be forwarded.
async fn report_only(
    app: &App,
    parts: &mut http::request::Parts,
    body: Incoming,
    client: std::net::IpAddr,
) -> Result<(Vec<(HeaderName, HeaderValue)>, Option<Bytes>), LoginRefusal> {
    let bytes = app.gate.read_body(body).await?;
    let decided = app
        .gate
        .decide(parts, Full::new(bytes.clone()), client)
        .await;
    let identity = match decided {
        Ok(admitted) => {
            // with an IdP, a verified callback goes on with the minted token, as enforced
            if let Some(q) = &admitted.query {
                set_query(parts, q);
            }
            if let Some(b) = admitted.body.filter(|b| *b != bytes) {
                return Ok((admitted.identity, Some(b)));
            }
            admitted.identity
        }
        Err(refusal) => {
            METRICS.report_would_refuse();
            tracing::warn!(
                target: "jwt_gate::audit",
                reason = refusal.reason.code(),
                client = %client,
                "report mode: forwarding a callback the gate would refuse"
            );
            Vec::new()
        }
    };
    Ok((identity, (!bytes.is_empty()).then_some(bytes)))
}

/// A refusal of the gate's own: its page, and the connection closed after it (the
/// request's body may be unread).
fn refuse(r: Refusal, log: AccessLog, version: http::Version) -> Response<Logged> {
    answer(
        page(r.status, r.code, r.detail, None),
        r.code,
        log,
        version,
        true,
    )
}

/// Send a page of the gate's own, logged with its reason.
fn answer(
    mut resp: Response<RespBody>,
    code: &'static str,
    mut log: AccessLog,
    version: http::Version,
    close: bool,
) -> Response<Logged> {
    log.status = resp.status().as_u16();
    log.reason = Some(code);
    if close {
        close_after(&mut resp, version);
    }
    let (p, b) = resp.into_parts();
    Response::from_parts(p, Logged::new(b, log))
}

/// Ask hyper to close an HTTP/1 connection after this response: the request's body may be
/// unread, and its bytes must never be parsed as a next request.
fn close_after<B>(resp: &mut Response<B>, version: http::Version) {
    if version <= http::Version::HTTP_11 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}
