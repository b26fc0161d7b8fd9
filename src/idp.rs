//! The identity provider's key set, kept current: fetched over HTTPS (`idp.jwks_url`) or
//! read from a file (`idp.jwks_file`), parsed by `login::jwks`, cached, refreshed in the
//! background before it expires (the IdP's `Cache-Control: max-age`, within bounds), and
//! fetched once more, rate-limited, when a token names a kid the set lacks. When the IdP
//! cannot be reached, the cached set serves until `jwks_max_age`; after that every IdP
//! login is refused (`idp_keys_unavailable`), never let through.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::{IdpAlg, IdpConfig, JwksSource};
use crate::login::idp::KeySource;
use crate::login::jwks::KeySet;
use crate::reload::FileWatch;
use crate::telemetry::metrics::{JwksTrigger, METRICS};

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

enum Source {
    Url {
        client: Box<HttpsClient>,
        url: http::Uri,
    },
    File {
        path: PathBuf,
        watch: FileWatch,
    },
}

/// A key set in use, and when it was loaded.
struct Loaded {
    set: Arc<KeySet>,
    at: Instant,
    /// When to fetch again (from the IdP's Cache-Control, bounded).
    refresh_after: Duration,
}

pub struct IdpKeys {
    source: Source,
    allowed: Vec<IdpAlg>,
    loaded: RwLock<Option<Loaded>>,
    max_age: Duration,
    refresh: Duration,
    min_refresh: Duration,
    max_refresh: Duration,
    timeout: Duration,
    max_bytes: usize,
    unknown_kid_interval: Duration,
    last_unknown_kid_fetch: Mutex<Option<Instant>>,
    /// One fetch at a time: a burst of unknown kids makes one request, not many.
    fetching: tokio::sync::Mutex<()>,
}

impl IdpKeys {
    /// The source as configured. A `jwks_file` is read now (a broken one fails the start);
    /// a `jwks_url` is first fetched by [`IdpKeys::start_background`].
    pub fn new(cfg: &IdpConfig) -> Result<IdpKeys, String> {
        let source = match &cfg.jwks {
            JwksSource::Url { url, ca } => {
                let tls = crate::tls::client_config(ca.as_deref(), None)
                    .map_err(|e| format!("idp.jwks_ca_file: {e}"))?;
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_connect_timeout(Some(cfg.fetch_timeout));
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_only()
                    .enable_http1()
                    .wrap_connector(http);
                let client = Client::builder(TokioExecutor::new()).build(connector);
                Source::Url {
                    client: Box::new(client),
                    url: url.clone(),
                }
            }
            JwksSource::File(path) => Source::File {
                path: path.clone(),
                watch: FileWatch::new(vec![path.clone()]),
            },
        };
        let keys = IdpKeys {
            source,
            allowed: cfg.algorithms.clone(),
            loaded: RwLock::new(None),
            max_age: cfg.max_age,
            refresh: cfg.refresh,
            min_refresh: cfg.min_refresh,
            max_refresh: cfg.max_refresh,
            timeout: cfg.fetch_timeout,
            max_bytes: cfg.max_bytes,
            unknown_kid_interval: cfg.unknown_kid_interval,
            last_unknown_kid_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        };
        if let Source::File { path, .. } = &keys.source {
            let n = keys
                .read_file(path)
                .map_err(|e| format!("idp.jwks_file: {}: {e}", path.display()))?;
            METRICS.jwks_fetch(JwksTrigger::Start, Some(n));
        }
        Ok(keys)
    }

    /// Load the set now, whatever the source (`explain`, which runs no background task).
    pub async fn load_now(&self) -> Result<usize, String> {
        match &self.source {
            Source::Url { .. } => self.fetch().await,
            Source::File { path, .. } => self.read_file(path),
        }
    }

    /// Where the set comes from, for people (never a URL's query).
    pub fn describe_source(&self) -> String {
        match &self.source {
            Source::Url { url, .. } => redacted(url),
            Source::File { path, .. } => path.display().to_string(),
        }
    }

    /// Whether a key set is loaded and young enough to trust (for `/readyz`).
    pub fn usable(&self) -> Result<(), String> {
        self.current().map(|_| ())
    }

    /// Fetch the key set now (URL) and keep it current: refresh before it expires, retry
    /// soon after a failure; poll the file for changes (file).
    pub fn start_background(self: &Arc<Self>, file_poll: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut trigger = JwksTrigger::Start;
            loop {
                let Some(keys) = weak.upgrade() else { return };
                let wait = match &keys.source {
                    Source::Url { .. } => {
                        let ok = keys.fetch_logged(trigger).await;
                        trigger = JwksTrigger::Refresh;
                        if ok {
                            keys.refresh_due()
                        } else {
                            // retry soon, but never hammer a struggling IdP
                            keys.min_refresh.min(Duration::from_secs(10))
                        }
                    }
                    Source::File { path, watch } => {
                        if trigger == JwksTrigger::Refresh && watch.changed(false) {
                            let r = keys.read_file(path);
                            report(JwksTrigger::FileChange, &r, &path.display().to_string());
                        }
                        trigger = JwksTrigger::Refresh;
                        file_poll
                    }
                };
                drop(keys);
                tokio::time::sleep(wait).await;
            }
        });
    }

    fn refresh_due(&self) -> Duration {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(self.refresh, |l| l.refresh_after)
    }

    fn install(&self, set: KeySet, refresh_after: Duration) -> usize {
        let n = set.keys.len();
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = Some(Loaded {
            set: Arc::new(set),
            at: Instant::now(),
            refresh_after,
        });
        n
    }

    fn parse(&self, doc: &[u8], from: &str) -> Result<KeySet, String> {
        let (set, notes) = KeySet::parse(doc, &self.allowed)?;
        for n in notes {
            tracing::warn!(target: "jwt_gate::idp", source = %from, "IdP key set: {n}");
        }
        if set.keys.is_empty() {
            return Err("no usable key in the set".into());
        }
        Ok(set)
    }

    fn read_file(&self, path: &std::path::Path) -> Result<usize, String> {
        let doc = std::fs::read(path).map_err(|e| e.to_string())?;
        if doc.len() > self.max_bytes {
            return Err(format!(
                "larger than idp.jwks_max_bytes ({})",
                self.max_bytes
            ));
        }
        let set = self.parse(&doc, &path.display().to_string())?;
        Ok(self.install(set, self.refresh.min(self.max_age / 2)))
    }

    /// One fetch, counted and logged; whether a new set was installed.
    async fn fetch_logged(&self, trigger: JwksTrigger) -> bool {
        let Source::Url { url, .. } = &self.source else {
            return false;
        };
        let _one = self.fetching.lock().await;
        let r = self.fetch().await;
        report(trigger, &r, &redacted(url));
        r.is_ok()
    }

    async fn fetch(&self) -> Result<usize, String> {
        let Source::Url { client, url } = &self.source else {
            return Err("not a URL source".into());
        };
        let req = Request::get(url.clone())
            .header(header::ACCEPT, "application/json, application/jwk-set+json")
            .header(
                header::USER_AGENT,
                concat!("jwt-gate/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let max_bytes = self.max_bytes;
        let exchange = async {
            let resp = client.request(req).await.map_err(|e| error_chain(&e))?;
            if resp.status() != StatusCode::OK {
                return Err(format!("HTTP {}", resp.status().as_u16()));
            }
            let max_age = cache_max_age(resp.headers());
            let body = Limited::new(resp.into_body(), max_bytes)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        format!("larger than idp.jwks_max_bytes ({max_bytes})")
                    } else {
                        e.to_string()
                    }
                })?
                .to_bytes();
            Ok((body, max_age))
        };
        let (body, max_age) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))??;
        let set = self.parse(&body, &redacted(url))?;
        // the IdP's max-age within bounds, and always well before the set would go stale
        let refresh_after = max_age
            .unwrap_or(self.refresh)
            .clamp(self.min_refresh, self.max_refresh)
            .min(self.max_age / 2);
        Ok(self.install(set, refresh_after))
    }
}

impl KeySource for IdpKeys {
    fn current(&self) -> Result<Arc<KeySet>, String> {
        let guard = self.loaded.read().unwrap_or_else(|p| p.into_inner());
        let Some(l) = guard.as_ref() else {
            return Err("the IdP's key set has not been loaded yet".into());
        };
        // a file is the operator's own copy: it does not age
        if matches!(self.source, Source::Url { .. }) && l.at.elapsed() > self.max_age {
            return Err(format!(
                "the IdP's key set is {}s old (idp.jwks_max_age {}s) and could not be refreshed",
                l.at.elapsed().as_secs(),
                self.max_age.as_secs()
            ));
        }
        Ok(l.set.clone())
    }

    fn refetch_for_unknown_kid(
        &self,
    ) -> Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            if !matches!(self.source, Source::Url { .. }) {
                return false;
            }
            {
                let mut last = self
                    .last_unknown_kid_fetch
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if last.is_some_and(|t| t.elapsed() < self.unknown_kid_interval) {
                    return false;
                }
                *last = Some(Instant::now());
            }
            self.fetch_logged(JwksTrigger::UnknownKid).await
        })
    }
}

fn report(trigger: JwksTrigger, r: &Result<usize, String>, from: &str) {
    match r {
        Ok(n) => {
            METRICS.jwks_fetch(trigger, Some(*n));
            tracing::info!(target: "jwt_gate::idp", source = %from, keys = n, "IdP key set loaded");
        }
        Err(e) => {
            METRICS.jwks_fetch(trigger, None);
            tracing::warn!(target: "jwt_gate::idp", source = %from, error = %e, "IdP key set not loaded; keeping the previous one");
        }
    }
}

/// `Cache-Control: max-age=N` (RFC 9111 §5.2.2.1); `no-store`/`no-cache` mean "ask again
/// soon", which the lower bound turns into `jwks_min_refresh`.
fn cache_max_age(h: &http::HeaderMap) -> Option<Duration> {
    let v = h.get(header::CACHE_CONTROL)?.to_str().ok()?;
    let mut out = None;
    for d in v.split(',').map(str::trim) {
        let lower = d.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(n) = lower.strip_prefix("max-age=") {
            out = n
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    out
}

/// The URL for logs: scheme, host and path, never a query (it may hold a token).
fn redacted(u: &http::Uri) -> String {
    format!(
        "{}://{}{}",
        u.scheme_str().unwrap_or("https"),
        u.authority().map_or("", |a| a.as_str()),
        u.path()
    )
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age_is_read_and_no_store_means_soon() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::CACHE_CONTROL,
            "public, max-age=600".parse().unwrap(),
        );
        assert_eq!(cache_max_age(&h), Some(Duration::from_secs(600)));
        h.insert(header::CACHE_CONTROL, "no-store".parse().unwrap());
        assert_eq!(cache_max_age(&h), Some(Duration::ZERO));
        h.insert(header::CACHE_CONTROL, "private".parse().unwrap());
        assert_eq!(cache_max_age(&h), None);
    }
}
