//! The JWT callback: classify the request, extract the one unambiguous token, verify it,
//! check-and-record it in the replay store, and hand back either the request to forward
//! (with identity headers) or a rejection. Does no I/O beyond reading the callback body
//! and asking the replay store.

pub mod encoding;
pub mod json;
pub mod keys;
pub mod params;
pub mod route;
pub mod verify;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{request, Method, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::config::Config;
use crate::proxy::body::ReqBody;
use crate::replay::{Recorded, ReplayStore};
use params::{extract_token, Part};
use verify::{AuditInfo, Reject, Verifier};

/// A refused callback: status, stable reason code, and a sentence for the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: StatusCode,
    pub reason: &'static str,
    pub detail: &'static str,
}

impl Rejection {
    fn new(status: StatusCode, reason: &'static str, detail: &'static str) -> Rejection {
        Rejection {
            status,
            reason,
            detail,
        }
    }
    fn bad(reason: &'static str, detail: &'static str) -> Rejection {
        Self::new(StatusCode::BAD_REQUEST, reason, detail)
    }
}

impl From<Reject> for Rejection {
    fn from(r: Reject) -> Rejection {
        let status = if r == Reject::TokenMissing {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNAUTHORIZED
        };
        Rejection::new(status, r.code(), r.describe())
    }
}

pub struct LoginGate {
    verifier: RwLock<Arc<Verifier>>,
    store: Arc<dyn ReplayStore>,
    pub sign_in_path: String,
    max_body: usize,
    body_timeout: Duration,
}

impl LoginGate {
    pub fn new(cfg: &Config, store: Arc<dyn ReplayStore>, process_start: i64) -> LoginGate {
        LoginGate {
            verifier: RwLock::new(Arc::new(Verifier::new(cfg, process_start))),
            store,
            sign_in_path: cfg.gate.sign_in_path.clone(),
            max_body: cfg.gate.max_callback_body,
            body_timeout: cfg.gate.callback_body_timeout,
        }
    }

    pub fn store(&self) -> &Arc<dyn ReplayStore> {
        &self.store
    }

    /// Swap in a reloaded verification key; logins already being verified finish with the
    /// old one.
    pub fn set_key(&self, key: keys::VerifyKey) {
        let next = Arc::new(self.verifier().with_key(key));
        *self.verifier.write().unwrap_or_else(|p| p.into_inner()) = next;
    }

    fn verifier(&self) -> Arc<Verifier> {
        match self.verifier.read() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Decide on a callback whose headers have already been through the proxy's rules
    /// (identity headers stripped). On success the request is ready to forward.
    pub async fn handle(
        &self,
        mut parts: request::Parts,
        body: Incoming,
        peer: SocketAddr,
    ) -> Result<(request::Parts, ReqBody), Rejection> {
        let t0 = Instant::now();
        let mut audit = AuditInfo::default();
        let verifier = self.verifier();
        let result = self.decide(&mut parts, body, &verifier, &mut audit).await;
        let (outcome, reason, status) = match &result {
            Ok(_) => ("forwarded", "ok", 0),
            Err(r) => ("rejected", r.reason, r.status.as_u16()),
        };
        crate::metrics::METRICS.login(reason, t0.elapsed());
        tracing::info!(
            target: "jwt_gate::audit",
            outcome,
            reason,
            status,
            alg = audit.alg.as_deref().unwrap_or("-"),
            kid = audit.kid.as_deref().unwrap_or("-"),
            iss = audit.iss.as_deref().unwrap_or("-"),
            uid_hash = audit.uid_hash.as_deref().unwrap_or("-"),
            jti_hash = audit.jti_hash.as_deref().unwrap_or("-"),
            client = %peer,
            latency_us = t0.elapsed().as_micros() as u64,
            "login decision"
        );
        result.map(|body| (parts, body))
    }

    async fn decide(
        &self,
        parts: &mut request::Parts,
        body: Incoming,
        verifier: &Verifier,
        audit: &mut AuditInfo,
    ) -> Result<ReqBody, Rejection> {
        // 1. method: GET, HEAD and POST complete a login in GitLab; the rest never reach it
        let is_post = match parts.method {
            Method::GET | Method::HEAD => false,
            Method::POST => true,
            _ => {
                return Err(Rejection::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "The sign-in callback accepts GET, HEAD and POST only.",
                ))
            }
        };
        // 2. where the token may come from (Rack parses form bodies on any method, and a
        // POST without a content type as a form)
        if parts.headers.get_all(header::CONTENT_TYPE).iter().count() > 1 {
            return Err(Rejection::bad(
                "duplicate_content_type",
                "The request has more than one Content-Type.",
            ));
        }
        let has_body = !body.is_end_stream();
        if !is_post && has_body {
            return Err(Rejection::bad(
                "body_not_allowed",
                "A GET or HEAD callback must not carry a body.",
            ));
        }
        let query_token = extract_token(parts.uri.query().unwrap_or("").as_bytes(), Part::Query)
            .map_err(param_rejection)?;
        let mut body_token = None;
        let mut buffered = None;
        if is_post {
            let media = media_type(parts.headers.get(header::CONTENT_TYPE))?;
            match media.as_deref() {
                Some("application/x-www-form-urlencoded") => {}
                None => {
                    return Err(Rejection::bad(
                        "missing_content_type",
                        "A POST callback needs Content-Type: application/x-www-form-urlencoded.",
                    ))
                }
                Some(m) if m.starts_with("multipart/") => {
                    return Err(Rejection::bad(
                        "multipart_not_allowed",
                        "Multipart callbacks are not accepted.",
                    ))
                }
                Some(_) => {
                    return Err(Rejection::bad(
                        "unsupported_content_type",
                        "A POST callback must be application/x-www-form-urlencoded.",
                    ))
                }
            }
            let bytes = self.read_body(body).await?;
            body_token = extract_token(&bytes, Part::Body).map_err(param_rejection)?;
            buffered = Some(bytes);
        }
        let token = match (query_token, body_token) {
            (Some(_), Some(_)) => return Err(param_rejection(params::ParamError::Duplicate)),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => return Err(Reject::TokenMissing.into()),
        };

        // 3. verify
        let now = crate::unix_now();
        let verified = verifier.verify(&token, now, audit, &mut ())?;

        // 4. single use
        let t_store = Instant::now();
        let recorded = self
            .store
            .check_and_record(&verified.replay_key, verified.expires_at, now)
            .await;
        crate::metrics::METRICS
            .store_latency
            .observe(t_store.elapsed());
        match recorded {
            Ok(Recorded::Fresh) => {}
            Ok(Recorded::Replayed) => {
                return Err(Rejection::new(
                    StatusCode::UNAUTHORIZED,
                    "replayed",
                    "This sign-in link has already been used. Sign in again.",
                ))
            }
            Err(e) => {
                crate::metrics::METRICS.store_error(e == crate::replay::StoreError::Full);
                tracing::error!(target: "jwt_gate::replay", error = %e, "replay store refused a login");
                return Err(Rejection::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    e.code(),
                    "Sign-in is temporarily unavailable. Try again in a moment.",
                ));
            }
        }

        // 5. forward: unchanged, plus exactly one of each identity header
        for (name, value) in verified.identity {
            parts.headers.insert(name, value);
        }
        // the body (if any) has been read: nothing is left to continue
        parts.headers.remove(header::EXPECT);
        Ok(match buffered {
            Some(b) => {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
                ReqBody::Full(Some(b))
            }
            None => ReqBody::Full(None),
        })
    }

    /// Read the callback body with a hard size cap and a deadline.
    async fn read_body(&self, body: Incoming) -> Result<Bytes, Rejection> {
        let limited = Limited::new(body, self.max_body);
        match tokio::time::timeout(self.body_timeout, limited.collect()).await {
            Err(_) => Err(Rejection::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "The request body did not arrive in time.",
            )),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Rejection::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "The callback body is too large.",
            )),
            Ok(Err(_)) => Err(Rejection::bad(
                "body_read_error",
                "The request body could not be read.",
            )),
            Ok(Ok(c)) => Ok(c.to_bytes()),
        }
    }
}

fn param_rejection(e: params::ParamError) -> Rejection {
    let detail = match e {
        params::ParamError::Duplicate => "The jwt parameter appears more than once.",
        params::ParamError::Semicolon => "The query string must not contain ';'.",
        params::ParamError::AmbiguousKey => "A parameter name could be read as jwt.",
        params::ParamError::BadEncoding => "The parameters are not validly percent-encoded.",
    };
    Rejection::bad(e.code(), detail)
}

/// The lower-cased media type of a Content-Type header (without parameters).
fn media_type(v: Option<&HeaderValue>) -> Result<Option<String>, Rejection> {
    let Some(v) = v else { return Ok(None) };
    let s = v
        .to_str()
        .map_err(|_| Rejection::bad("bad_content_type", "The Content-Type header is not valid."))?;
    Ok(Some(
        s.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    ))
}
