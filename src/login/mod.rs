//! The JWT callback: extract the one unambiguous token, verify it, check-and-record it in
//! the replay store, and hand back a decision: [`Admitted`] (the identity to assert and the
//! body already read) or a [`Reason`]. It never forwards and never builds a proxy type; it
//! does no I/O beyond reading the callback body and asking the replay store.

pub mod encoding;
pub mod idp;
pub mod json;
pub mod jwks;
pub mod keys;
pub mod mint;
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
use crate::telemetry::audit::AuditLine;
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
    /// With an IdP: the callback's query with the IdP's token replaced by the minted one
    /// (when the token came in the query), or the callback to send for a header assertion.
    pub query: Option<String>,
}

/// An external identity provider: its tokens are verified with its key set, and GitLab
/// gets a token the gate minted instead.
pub struct IdpSide {
    pub verifier: idp::IdpVerifier,
    pub keys: Arc<dyn idp::KeySource>,
    pub minter: mint::Minter,
    /// The callback carries the IdP's token (`idp.callback`).
    pub callback: bool,
    /// Header-assertion sign-in: the header, and who may send it.
    pub assertion_header: Option<HeaderName>,
    pub trusted_peers: Vec<ipnet::IpNet>,
}

pub struct LoginGate {
    verifier: RwLock<Arc<Verifier>>,
    store: Arc<dyn ReplayStore>,
    throttle: Throttle,
    max_body: usize,
    body_timeout: Duration,
    idp: Option<IdpSide>,
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
            idp: None,
        }
    }

    /// Verify IdP tokens and mint GitLab's (`[idp]`).
    pub fn with_idp(mut self, idp: IdpSide) -> LoginGate {
        self.idp = Some(idp);
        self
    }

    /// Whether header-assertion sign-in is on.
    pub fn takes_assertions(&self) -> bool {
        self.idp
            .as_ref()
            .is_some_and(|i| i.assertion_header.is_some())
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
        if let Err(wait) = self.throttle.check(client) {
            return self.conclude(t0, client, &audit, accepted_as, Err(throttled(wait)));
        }
        let r = self
            .decide_inner(parts, body, client, &verifier, &mut audit)
            .await;
        let r = self.charge(client, &verifier, r);
        self.conclude(t0, client, &audit, accepted_as, r)
    }

    /// Header-assertion sign-in: `peer` (the TCP source) must be a trusted identity-aware
    /// proxy; its one assertion is verified with the IdP's keys, and a minted token makes
    /// the callback GitLab gets (`Admitted::query`). The assertion is not single-use (it
    /// lives as long as the proxy's session); the minted token is.
    pub async fn sso(
        &self,
        parts: &request::Parts,
        peer: IpAddr,
        client: IpAddr,
    ) -> Result<Admitted, Refusal> {
        let t0 = Instant::now();
        let mut audit = AuditInfo::default();
        let verifier = self.verifier();
        if let Err(wait) = self.throttle.check(client) {
            return self.conclude(t0, client, &audit, "forwarded", Err(throttled(wait)));
        }
        let r = self
            .sso_inner(parts, peer, client, &verifier, &mut audit)
            .await;
        let r = self.charge(client, &verifier, r);
        self.conclude(t0, client, &audit, "forwarded", r)
    }

    async fn sso_inner(
        &self,
        parts: &request::Parts,
        peer: IpAddr,
        client: IpAddr,
        verifier: &Verifier,
        audit: &mut AuditInfo,
    ) -> Result<Admitted, Reason> {
        let Some((idp, name)) = self
            .idp
            .as_ref()
            .and_then(|i| i.assertion_header.as_ref().map(|h| (i, h)))
        else {
            return Err(Reason::AssertionMissing);
        };
        if !idp.trusted_peers.iter().any(|n| n.contains(&peer)) {
            return Err(Reason::AssertionUntrustedPeer);
        }
        let mut values = parts.headers.get_all(name).iter();
        let (Some(v), None) = (values.next(), values.next()) else {
            return Err(Reason::AssertionMissing);
        };
        let value = v.to_str().map_err(|_| Reason::Malformed)?.trim();
        // oauth2-proxy passes the IdP's ID token as `Authorization: Bearer <jwt>`
        let token = match value.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("bearer ") => value[7..].trim_start(),
            _ => value,
        };
        let (minted, identity) = self
            .through_idp(idp, token, client, verifier, audit, false)
            .await?;
        Ok(Admitted {
            identity,
            body: None,
            query: Some(format!("jwt={minted}")),
        })
    }

    /// A refusal the client caused is charged to its budget (a bad signature costs more).
    fn charge(
        &self,
        client: IpAddr,
        verifier: &Verifier,
        r: Result<Admitted, Reason>,
    ) -> Result<Admitted, Refusal> {
        if let Err(reason) = r {
            if reason.charges_client() {
                let bad_sig = reason == Reason::BadSignature;
                self.throttle
                    .charge(client, throttle::cost(bad_sig, verifier.alg));
            }
        }
        r.map_err(Refusal::from)
    }

    /// Count the decision and write its audit line.
    fn conclude(
        &self,
        t0: Instant,
        client: IpAddr,
        audit: &AuditInfo,
        accepted_as: &'static str,
        result: Result<Admitted, Refusal>,
    ) -> Result<Admitted, Refusal> {
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
        crate::telemetry::audit::log(&AuditLine {
            outcome,
            reason,
            status,
            alg: audit.alg.as_deref().unwrap_or("-"),
            kid: audit.kid.as_deref().unwrap_or("-"),
            iss: audit.iss.as_deref().unwrap_or("-"),
            uid_hash: audit.uid_hash.as_deref().unwrap_or("-"),
            jti_hash: audit.jti_hash.as_deref().unwrap_or("-"),
            client,
            first_use: audit.first_use.map(|f| (f.at_ms, f.client)),
            latency_us: t0.elapsed().as_micros() as u64,
        });
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
        let Some(idp) = self.idp.as_ref().filter(|i| i.callback) else {
            let identity = self.admit(&token, client, verifier, audit).await?;
            return Ok(Admitted {
                identity,
                body,
                query: None,
            });
        };
        let (minted, identity) = self
            .through_idp(idp, &token, client, verifier, audit, true)
            .await?;
        // GitLab gets the callback as sent, with the minted token in the IdP token's place
        match body {
            Some(b) if !b.is_empty() && parts.uri.query().is_none_or(|q| !has_jwt(q)) => {
                Ok(Admitted {
                    identity,
                    body: Some(params::replace_token(&b, &minted).into()),
                    query: None,
                })
            }
            body => Ok(Admitted {
                identity,
                body,
                query: Some(
                    String::from_utf8_lossy(&params::replace_token(
                        parts.uri.query().unwrap_or("").as_bytes(),
                        &minted,
                    ))
                    .into_owned(),
                ),
            }),
        }
    }

    /// A GitLab-shaped token: every check, the store's epoch, single use, and its iat come.
    async fn admit(
        &self,
        token: &str,
        client: IpAddr,
        verifier: &Verifier,
        audit: &mut AuditInfo,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Reason> {
        let now = crate::clock::unix_now();
        let verified = verifier.verify(token, now, audit, &mut ())?;
        let times = TokenTimes {
            iat: verified.iat,
            expires_at: verified.expires_at,
        };
        self.record_once(&verified.replay_key, times, now, client, audit)
            .await?;
        wait_for_iat(verified.iat).await;
        Ok(verified.identity)
    }

    /// The store's epoch floor, then check-and-record.
    async fn record_once(
        &self,
        key: &[u8; 32],
        times: TokenTimes,
        now: i64,
        client: IpAddr,
        audit: &mut AuditInfo,
    ) -> Result<(), Reason> {
        if self
            .store
            .issued_floor()
            .is_some_and(|floor| times.iat < floor)
        {
            return Err(Reason::IssuedBeforeStoreEpoch);
        }
        let use_ = FirstUse {
            at_ms: crate::clock::unix_now_ms(),
            client,
        };
        self.record_first_use(key, times, now, use_, audit).await
    }

    /// An IdP's token: verified with its keys (recorded as used when `single_use`), then a
    /// minted token that passes GitLab's checks and is itself recorded. Returns the minted
    /// token and the identity headers it yields.
    async fn through_idp(
        &self,
        idp: &IdpSide,
        token: &str,
        client: IpAddr,
        verifier: &Verifier,
        audit: &mut AuditInfo,
        single_use: bool,
    ) -> Result<(String, Vec<(HeaderName, HeaderValue)>), Reason> {
        let now = crate::clock::unix_now();
        let v = idp.verifier.verify(token, &*idp.keys, now, audit).await?;
        if single_use {
            if verifier
                .not_issued_before
                .is_some_and(|start| v.iat < start)
            {
                return Err(Reason::IssuedBeforeStart);
            }
            let times = TokenTimes {
                iat: v.iat,
                expires_at: v.expires_at,
            };
            self.record_once(&v.replay_key, times, now, client, audit)
                .await?;
        }
        let minted = idp.minter.mint(&v.uid, &v.claims, now).map_err(|e| {
            tracing::error!(target: "jwt_gate::audit", error = %e, "minting GitLab's token failed");
            Reason::MintFailed
        })?;
        METRICS.token_minted();
        // the minted token passes the same checks and the same single-use record as any
        // callback token; its audit fields stay the IdP token's
        let mut minted_audit = AuditInfo::default();
        let identity = self
            .admit(&minted, client, verifier, &mut minted_audit)
            .await
            .map_err(|r| {
                tracing::error!(target: "jwt_gate::audit", reason = r.code(), "the minted token failed the gate's own checks");
                if r.charges_client() { Reason::MintFailed } else { r }
            })?;
        Ok((minted, identity))
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

fn throttled(wait: Duration) -> Refusal {
    Refusal {
        reason: Reason::Throttled,
        retry_after: Some(wait),
    }
}

/// Whether a query names `jwt` (only called on a query `extract` accepted).
fn has_jwt(query: &str) -> bool {
    query
        .split('&')
        .any(|p| p == "jwt" || p.starts_with("jwt="))
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
