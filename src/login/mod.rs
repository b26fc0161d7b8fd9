//! The JWT callback: extract the one unambiguous token, verify it, check-and-record it in
//! the replay store, and hand back a decision: [`Admitted`] (the identity to assert and the
//! body already read) or a [`Reason`]. It never forwards and never builds a proxy type; it
//! does no I/O beyond reading the callback body and asking the replay store.

pub mod encoding;
pub mod json;
pub mod keys;
pub mod params;
pub mod reason;
pub mod route;
pub mod throttle;
pub mod verify;

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{request, Method};
use http_body::Body;
use http_body_util::{BodyExt, Limited};

use crate::config::Config;
use crate::replay::{FirstUse, Recorded, ReplayStore, StoreError, TokenTimes};
use crate::telemetry::metrics::METRICS;
use params::{extract_token, ParamError, Part};
pub use reason::Reason;
use throttle::Throttle;
use verify::{AuditInfo, Verifier};

/// A refused callback: why, and for a throttled client how long to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub retry_after: Option<Duration>,
}

impl From<Reason> for Refusal {
    fn from(reason: Reason) -> Refusal {
        Refusal {
            reason,
            retry_after: None,
        }
    }
}

/// What the gate accepts as a callback body: the client's stream, or (report mode) the
/// bytes already read.
pub trait CallbackBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin {}
impl<B: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin> CallbackBody for B {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A callback that may go to GitLab: the identity headers to set (uid first) and the
/// callback body the gate has read, if it was a POST.
#[derive(Debug)]
pub struct Admitted {
    pub identity: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<Bytes>,
}

pub struct LoginGate {
    verifier: RwLock<Arc<Verifier>>,
    store: Arc<dyn ReplayStore>,
    throttle: Throttle,
    max_body: usize,
    body_timeout: Duration,
}

impl LoginGate {
    /// `not_issued_before`: the app's start time when `reject_issued_before_start` is on.
    pub fn new(
        cfg: &Config,
        key: keys::VerifyKey,
        store: Arc<dyn ReplayStore>,
        not_issued_before: Option<i64>,
    ) -> LoginGate {
        LoginGate {
            verifier: RwLock::new(Arc::new(Verifier::new(cfg, key, not_issued_before))),
            store,
            throttle: Throttle::new(cfg.gate.throttle_burst as f64, cfg.gate.throttle_per_second),
            max_body: cfg.gate.max_callback_body,
            body_timeout: cfg.gate.callback_body_timeout,
        }
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

    /// Decide on a callback as the client sent it; `client` is its address as the trusted
    /// proxies tell it. Counts the decision and writes the audit line.
    pub async fn decide(
        &self,
        parts: &request::Parts,
        body: impl CallbackBody,
        client: IpAddr,
    ) -> Result<Admitted, Refusal> {
        self.run(parts, body, client, "forwarded").await
    }

    /// A callback that crossed the network in clear (the plain-HTTP listener): its token is
    /// verified and recorded as used, so that whoever saw it cannot use it, and the caller
    /// refuses it anyway. A forgery burns nothing: it fails verification first.
    pub async fn burn(&self, parts: &request::Parts, body: impl CallbackBody, client: IpAddr) {
        let _ = self.run(parts, body, client, "burned").await;
    }

    /// `accepted_as`: what the audit line says of a token that passed ("forwarded" or
    /// "burned").
    async fn run(
        &self,
        parts: &request::Parts,
        body: impl CallbackBody,
        client: IpAddr,
        accepted_as: &'static str,
    ) -> Result<Admitted, Refusal> {
        let t0 = Instant::now();
        let mut audit = AuditInfo::default();
        let verifier = self.verifier();
        // a client out of budget is answered before anything is read or verified
        let result = match self.throttle.check(client) {
            Err(wait) => Err(Refusal {
                reason: Reason::Throttled,
                retry_after: Some(wait),
            }),
            Ok(()) => {
                let r = self
                    .decide_inner(parts, body, client, &verifier, &mut audit)
                    .await;
                if let Err(reason) = r {
                    if reason.charges_client() {
                        let bad_sig = reason == Reason::BadSignature;
                        self.throttle
                            .charge(client, throttle::cost(bad_sig, verifier.alg));
                    }
                }
                r.map_err(Refusal::from)
            }
        };
        let (outcome, reason, status, slot) = match &result {
            Ok(_) => (accepted_as, "ok", 0, 0),
            Err(r) => (
                "rejected",
                r.reason.code(),
                r.reason.status().as_u16(),
                r.reason.slot(),
            ),
        };
        METRICS.login(slot, t0.elapsed());
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
            client = %client,
            first_use_ms = audit.first_use.map_or(-1, |f| f.at_ms),
            first_use_client = %audit.first_use.map_or_else(|| "-".to_string(), |f| f.client.to_string()),
            latency_us = t0.elapsed().as_micros() as u64,
            "login decision"
        );
        result
    }

    async fn decide_inner(
        &self,
        parts: &request::Parts,
        body: impl CallbackBody,
        client: IpAddr,
        verifier: &Verifier,
        audit: &mut AuditInfo,
    ) -> Result<Admitted, Reason> {
        let (token, body) = self.extract(parts, body).await?;
        let now = crate::clock::unix_now();
        let verified = verifier.verify(&token, now, audit, &mut ())?;
        if self
            .store
            .issued_floor()
            .is_some_and(|floor| verified.iat < floor)
        {
            return Err(Reason::IssuedBeforeStoreEpoch);
        }
        let use_ = FirstUse {
            at_ms: crate::clock::unix_now_ms(),
            client,
        };
        let times = TokenTimes {
            iat: verified.iat,
            expires_at: verified.expires_at,
        };
        self.record_first_use(&verified.replay_key, times, now, use_, audit)
            .await?;
        wait_for_iat(verified.iat).await;
        Ok(Admitted {
            identity: verified.identity,
            body,
        })
    }

    /// The one `jwt` value, from the query or a form body (never both), and the body read.
    async fn extract(
        &self,
        parts: &request::Parts,
        body: impl CallbackBody,
    ) -> Result<(String, Option<Bytes>), Reason> {
        // GET, HEAD and POST complete a login in GitLab; the rest never reach it
        let is_post = match parts.method {
            Method::GET | Method::HEAD => false,
            Method::POST => true,
            _ => return Err(Reason::MethodNotAllowed),
        };
        // Rack parses form bodies on any method, and a POST without a content type as a form
        if parts.headers.get_all(header::CONTENT_TYPE).iter().count() > 1 {
            return Err(Reason::DuplicateContentType);
        }
        if !is_post && !body.is_end_stream() {
            return Err(Reason::BodyNotAllowed);
        }
        let query = parts.uri.query().unwrap_or("").as_bytes();
        let query_token = extract_token(query, Part::Query).map_err(param_reason)?;
        let (body_token, bytes) = if is_post {
            check_form_content_type(parts.headers.get(header::CONTENT_TYPE))?;
            let bytes = self.read_body(body).await?;
            let t = extract_token(&bytes, Part::Body).map_err(param_reason)?;
            (t, Some(bytes))
        } else {
            (None, None)
        };
        let token = match (query_token, body_token) {
            (Some(_), Some(_)) => return Err(Reason::DuplicateParam),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => return Err(Reason::TokenMissing),
        };
        Ok((token, bytes))
    }

    /// Single use: record the key, or refuse a replay; fail closed when the store cannot
    /// answer.
    async fn record_first_use(
        &self,
        key: &[u8; 32],
        times: TokenTimes,
        now: i64,
        use_: FirstUse,
        audit: &mut AuditInfo,
    ) -> Result<(), Reason> {
        let t_store = Instant::now();
        let recorded = self.store.check_and_record(key, times, now, use_).await;
        METRICS.store_latency.observe(t_store.elapsed());
        match recorded {
            Ok(Recorded::Fresh) => Ok(()),
            Ok(Recorded::BeforeEpoch) => Err(Reason::IssuedBeforeStoreEpoch),
            Ok(Recorded::Replayed(first)) => {
                // a replay from another client is the signature of a stolen token
                if first.is_some_and(|f| f.client != use_.client) {
                    METRICS.replay_other_client();
                }
                audit.first_use = first;
                Err(Reason::Replayed)
            }
            Err(e) => {
                METRICS.store_error(e == StoreError::Full);
                tracing::error!(target: "jwt_gate::replay", error = %e, "replay store refused a login");
                Err(match e {
                    StoreError::Full => Reason::StoreFull,
                    StoreError::Unavailable(_) => Reason::StoreUnavailable,
                })
            }
        }
    }

    /// Read the callback body with a hard size cap and a deadline.
    pub async fn read_body(&self, body: impl CallbackBody) -> Result<Bytes, Reason> {
        let limited = Limited::new(body, self.max_body);
        match tokio::time::timeout(self.body_timeout, limited.collect()).await {
            Err(_) => Err(Reason::BodyTimeout),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Reason::BodyTooLarge),
            Ok(Err(_)) => Err(Reason::BodyReadError),
            Ok(Ok(c)) => Ok(c.to_bytes()),
        }
    }
}

/// A token dated ahead of the gate's clock (within max_future_skew: an IdP whose clock runs
/// fast) is forwarded only once its iat has come. Recorded already, so no replay passes in
/// the meantime; and every token forwarded has an iat no later than its use, so a restart
/// needs to refuse only tokens dated up to its own second (`app::first_unusable_before`).
async fn wait_for_iat(iat: i64) {
    let wait_ms = iat
        .saturating_mul(1000)
        .saturating_sub(crate::clock::unix_now_ms());
    if wait_ms > 0 {
        tokio::time::sleep(Duration::from_millis(wait_ms as u64)).await;
    }
}

fn param_reason(e: ParamError) -> Reason {
    match e {
        ParamError::Duplicate => Reason::DuplicateParam,
        ParamError::Semicolon => Reason::SemicolonInQuery,
        ParamError::AmbiguousKey => Reason::AmbiguousParam,
        ParamError::BadEncoding => Reason::BadParamEncoding,
    }
}

/// A POST callback must be a urlencoded form: the only body the gate reads the way Rack does.
fn check_form_content_type(v: Option<&HeaderValue>) -> Result<(), Reason> {
    let Some(v) = v else {
        return Err(Reason::MissingContentType);
    };
    let s = v.to_str().map_err(|_| Reason::BadContentType)?;
    let media = s
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/x-www-form-urlencoded" => Ok(()),
        m if m.starts_with("multipart/") => Err(Reason::MultipartNotAllowed),
        _ => Err(Reason::UnsupportedContentType),
    }
}
