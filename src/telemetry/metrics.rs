//! Prometheus metrics, served on the admin listener at `/metrics` (OpenMetrics text).
//!
//! The request path only ever does relaxed atomic adds on fixed arrays: no lock, no map, no
//! allocation. Everything is turned into text at scrape time by one prometheus-client
//! [`Collector`], which also reads the values that live elsewhere (replay-store size,
//! certificate expiry). Every label set is fixed and always present, zeros included, so a
//! dashboard or an alert never waits for a series to appear.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// Method classes: the methods GitLab traffic uses, and everything else.
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Slots of the login-decision counter: the caller's reason index (0 is "ok", forwarded);
/// [`Sources::reasons`] names them at scrape time.
const MAX_REASONS: usize = 64;

/// Histogram upper bounds, seconds (the last bucket is +Inf).
const BOUNDS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// A fixed-bucket histogram of atomics.
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len() + 1],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BOUNDS.len() + 1],
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BOUNDS.iter().position(|&b| s <= b).unwrap_or(BOUNDS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    fn encode(&self, enc: &mut DescriptorEncoder, name: &str, help: &str) -> std::fmt::Result {
        let buckets: Vec<(f64, u64)> = BOUNDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets.iter().map(|b| b.load(Relaxed)))
            .collect();
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        let mut m =
            enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
        m.encode_histogram::<NoLabelSet>(sum, self.count.load(Relaxed), &buckets, None)
    }
}

/// Every counter of the process.
pub struct Metrics {
    requests: [[AtomicU64; STATUS_CLASSES.len()]; METHODS.len()],
    pub upstream_latency: Histogram,
    open_connections: AtomicI64,
    connections: AtomicU64,
    connections_refused: AtomicU64,
    connections_idle_closed: AtomicU64,
    upstream_connections_opened: AtomicU64,
    report_would_refuse: AtomicU64,
    replay_other_client: AtomicU64,
    logins: [AtomicU64; MAX_REASONS],
    pub login_latency: Histogram,
    store_errors_full: AtomicU64,
    store_errors_unavailable: AtomicU64,
    pub store_latency: Histogram,
    reloads: [[AtomicU64; 2]; 2],
    jwks_fetches: [[AtomicU64; 2]; JWKS_TRIGGERS.len()],
    /// Unix seconds at which the IdP key set in use was loaded; 0: none (no `[idp]`).
    jwks_loaded_at: AtomicI64,
    jwks_keys: AtomicI64,
    tokens_minted: AtomicU64,
}

/// Why the IdP's key set was fetched or read (the `trigger` label).
pub const JWKS_TRIGGERS: [&str; 4] = ["start", "refresh", "unknown_kid", "file_change"];

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum JwksTrigger {
    Start = 0,
    Refresh = 1,
    UnknownKid = 2,
    FileChange = 3,
}

/// The process's metrics.
pub static METRICS: Metrics = Metrics {
    requests: [const { [const { AtomicU64::new(0) }; STATUS_CLASSES.len()] }; METHODS.len()],
    upstream_latency: Histogram::new(),
    open_connections: AtomicI64::new(0),
    connections: AtomicU64::new(0),
    connections_refused: AtomicU64::new(0),
    connections_idle_closed: AtomicU64::new(0),
    upstream_connections_opened: AtomicU64::new(0),
    report_would_refuse: AtomicU64::new(0),
    replay_other_client: AtomicU64::new(0),
    logins: [const { AtomicU64::new(0) }; MAX_REASONS],
    login_latency: Histogram::new(),
    store_errors_full: AtomicU64::new(0),
    store_errors_unavailable: AtomicU64::new(0),
    store_latency: Histogram::new(),
    reloads: [const { [const { AtomicU64::new(0) }; 2] }; 2],
    jwks_fetches: [const { [const { AtomicU64::new(0) }; 2] }; JWKS_TRIGGERS.len()],
    jwks_loaded_at: AtomicI64::new(0),
    jwks_keys: AtomicI64::new(0),
    tokens_minted: AtomicU64::new(0),
};

/// What was reloaded.
#[derive(Clone, Copy)]
pub enum ReloadKind {
    TlsCertificate = 0,
    JwtKey = 1,
}

fn method_slot(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

impl Metrics {
    pub fn request(&self, method: &Method, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.requests[method_slot(method)][class].fetch_add(1, Relaxed);
    }

    pub fn requests(&self, method: &Method, status: StatusCode) -> u64 {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[method_slot(method)][class].load(Relaxed)
    }

    /// A client connection opened; the guard closes it when dropped.
    pub fn connection(&'static self) -> ConnectionGuard {
        self.connections.fetch_add(1, Relaxed);
        self.open_connections.fetch_add(1, Relaxed);
        ConnectionGuard(self)
    }

    /// A connection refused at the cap (every open one busy).
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Relaxed);
    }

    /// A connection closed for idling (or to make room at the cap).
    pub fn upstream_connection_opened(&self) {
        self.upstream_connections_opened.fetch_add(1, Relaxed);
    }

    pub fn connection_idle_closed(&self) {
        self.connections_idle_closed.fetch_add(1, Relaxed);
    }

    /// Report mode forwarded a callback that enforce mode would have refused.
    pub fn report_would_refuse(&self) {
        self.report_would_refuse.fetch_add(1, Relaxed);
    }

    /// A replay refused that came from another client than the first use.
    pub fn replay_other_client(&self) {
        self.replay_other_client.fetch_add(1, Relaxed);
    }

    /// A login decision: `slot` is the reason's index in [`Sources::reasons`] (0: forwarded).
    pub fn login(&self, slot: usize, took: Duration) {
        self.logins[slot.min(MAX_REASONS - 1)].fetch_add(1, Relaxed);
        self.login_latency.observe(took);
    }

    pub fn store_error(&self, full: bool) {
        if full {
            self.store_errors_full.fetch_add(1, Relaxed);
        } else {
            self.store_errors_unavailable.fetch_add(1, Relaxed);
        }
    }

    /// A fetch (or read) of the IdP's key set; on success, `keys` usable keys now in use.
    pub fn jwks_fetch(&self, trigger: JwksTrigger, ok: Option<usize>) {
        self.jwks_fetches[trigger as usize][usize::from(ok.is_some())].fetch_add(1, Relaxed);
        if let Some(n) = ok {
            self.jwks_keys.store(n as i64, Relaxed);
            self.jwks_loaded_at.store(unix_now().max(1), Relaxed);
        }
    }

    pub fn jwks_fetches(&self, trigger: JwksTrigger, ok: bool) -> u64 {
        self.jwks_fetches[trigger as usize][usize::from(ok)].load(Relaxed)
    }

    pub fn token_minted(&self) {
        self.tokens_minted.fetch_add(1, Relaxed);
    }

    pub fn reload(&self, kind: ReloadKind, ok: bool) {
        self.reloads[kind as usize][usize::from(!ok)].fetch_add(1, Relaxed);
    }

    pub fn reloads(&self, kind: ReloadKind, ok: bool) -> u64 {
        self.reloads[kind as usize][usize::from(!ok)].load(Relaxed)
    }
}

pub struct ConnectionGuard(&'static Metrics);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Relaxed);
    }
}

/// What the scrape reads from elsewhere, as narrow handles: the metrics know no app.
pub struct Sources {
    /// Names of the login-decision slots, in slot order: "ok" first, at most 64.
    pub reasons: &'static [&'static str],
    /// The replay store's kind (`memory`, `redis`).
    pub store_kind: &'static str,
    /// Live replay-store entries, where the store can tell cheaply.
    pub store_entries: Box<dyn Fn() -> Option<usize> + Send + Sync>,
    /// The serving certificate's notAfter (unix seconds), with TLS.
    pub cert_not_after: Box<dyn Fn() -> Option<i64> + Send + Sync>,
    /// `gate.mode = "report"`: refusals are only counted, never enforced.
    pub report_mode: bool,
}

/// The scrape-time view: the static counters plus the [`Sources`].
struct GateCollector {
    sources: Sources,
}

impl std::fmt::Debug for GateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GateCollector")
    }
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    v: i64,
) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, unit.as_ref(), g.metric_type())?)
}

impl GateCollector {
    /// The IdP's key set, only once one was configured and loaded.
    fn encode_idp(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let m = &METRICS;
        let loaded_at = m.jwks_loaded_at.load(Relaxed);
        let fetched: u64 = m
            .jwks_fetches
            .iter()
            .flatten()
            .map(|c| c.load(Relaxed))
            .sum();
        if fetched == 0 {
            return Ok(());
        }
        {
            let mut e = enc.encode_descriptor(
                "jwks_fetches",
                "Fetches (or reads) of the IdP's key set, by trigger and result.",
                None,
                MetricType::Counter,
            )?;
            for (ti, trigger) in JWKS_TRIGGERS.iter().enumerate() {
                for (ri, result) in ["error", "ok"].iter().enumerate() {
                    let labels = [("trigger", *trigger), ("result", *result)];
                    let v = m.jwks_fetches[ti][ri].load(Relaxed);
                    ConstCounter::new(v).encode(e.encode_family(&labels)?)?;
                }
            }
        }
        if loaded_at > 0 {
            gauge(
                enc,
                "jwks_age",
                "Seconds since the IdP key set in use was loaded.",
                Some(Unit::Seconds),
                unix_now().saturating_sub(loaded_at),
            )?;
        }
        gauge(
            enc,
            "jwks_keys",
            "Usable keys in the IdP key set in use.",
            None,
            m.jwks_keys.load(Relaxed),
        )?;
        counter(
            enc,
            "tokens_minted",
            "Tokens the gate minted for GitLab after verifying an IdP token.",
            m.tokens_minted.load(Relaxed),
        )
    }
}

impl Collector for GateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let m = &METRICS;

        // build
        {
            let mut e = enc.encode_descriptor(
                "build",
                "Version of this jwt-gate binary.",
                None,
                MetricType::Info,
            )?;
            e.encode_info(&[
                ("version", env!("CARGO_PKG_VERSION")),
                ("tls_provider", "aws-lc-rs"),
            ])?;
        }

        // traffic
        {
            let mut e = enc.encode_descriptor(
                "http_requests",
                "Requests answered, by method class and status class (gate pages included).",
                None,
                MetricType::Counter,
            )?;
            for (mi, method) in METHODS.iter().enumerate() {
                for (si, class) in STATUS_CLASSES.iter().enumerate() {
                    let labels = [("method", *method), ("status_class", *class)];
                    let v = m.requests[mi][si].load(Relaxed);
                    ConstCounter::new(v).encode(e.encode_family(&labels)?)?;
                }
            }
        }
        m.upstream_latency.encode(
            &mut enc,
            "upstream_response",
            "Time from sending a request upstream to its response head (or failure).",
        )?;
        gauge(
            &mut enc,
            "open_connections",
            "Client connections open now.",
            None,
            m.open_connections.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "connections",
            "Client connections accepted.",
            m.connections.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "connections_refused",
            "Client connections refused at max_connections with every open one busy.",
            m.connections_refused.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "connections_idle_closed",
            "Client connections closed with no request in flight: idle too long, or to make room at max_connections.",
            m.connections_idle_closed.load(Relaxed),
        )?;

        counter(
            &mut enc,
            "upstream_connections_opened",
            "Connections the gate opened to a plain-HTTP upstream; requests per connection is the keep-alive reuse.",
            m.upstream_connections_opened.load(Relaxed),
        )?;
        self.encode_idp(&mut enc)?;
        counter(
            &mut enc,
            "log_lines_dropped",
            "Log lines dropped because stdout stopped taking them (64 MiB waiting).",
            super::logbuf::dropped(),
        )?;

        // logins
        {
            let mut e = enc.encode_descriptor(
                "login_decisions",
                "Callback decisions: forwarded (reason ok) or rejected, by reason code.",
                None,
                MetricType::Counter,
            )?;
            for (i, reason) in self.sources.reasons.iter().enumerate().take(MAX_REASONS) {
                let outcome = if i == 0 { "forwarded" } else { "rejected" };
                let labels = [("outcome", outcome), ("reason", reason)];
                ConstCounter::new(m.logins[i].load(Relaxed)).encode(e.encode_family(&labels)?)?;
            }
        }
        gauge(
            &mut enc,
            "report_mode",
            "1 while gate.mode = \"report\": refused callbacks are forwarded anyway, nothing is enforced.",
            None,
            i64::from(self.sources.report_mode),
        )?;
        counter(
            &mut enc,
            "report_would_refuse",
            "Callbacks forwarded in report mode that enforce mode would have refused.",
            m.report_would_refuse.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "replay_other_client",
            "Replays refused that came from another client than the token's first use: the signature of a stolen token.",
            m.replay_other_client.load(Relaxed),
        )?;
        m.login_latency.encode(
            &mut enc,
            "login_decision",
            "Time to decide on a callback (body read, verification, replay store).",
        )?;

        // replay store
        let store_kind = self.sources.store_kind;
        if let Some(n) = (self.sources.store_entries)() {
            gauge(
                &mut enc,
                "replay_store_entries",
                "Live entries in the in-memory replay store.",
                None,
                n as i64,
            )?;
        }
        {
            let mut e = enc.encode_descriptor(
                "replay_store_errors",
                "Logins refused because the replay store could not answer (full or unavailable).",
                None,
                MetricType::Counter,
            )?;
            for (kind, v) in [
                ("full", &m.store_errors_full),
                ("unavailable", &m.store_errors_unavailable),
            ] {
                let labels = [("store", store_kind), ("error", kind)];
                ConstCounter::new(v.load(Relaxed)).encode(e.encode_family(&labels)?)?;
            }
        }
        m.store_latency.encode(
            &mut enc,
            "replay_store_check",
            "Time of one replay-store check-and-record.",
        )?;

        // reloads and certificate
        {
            let mut e = enc.encode_descriptor(
                "reloads",
                "Reloads of the TLS certificate and the JWT key, by result.",
                None,
                MetricType::Counter,
            )?;
            for (ki, kind) in ["tls_certificate", "jwt_key"].iter().enumerate() {
                for (ri, result) in ["success", "failure"].iter().enumerate() {
                    let labels = [("kind", *kind), ("result", *result)];
                    ConstCounter::new(m.reloads[ki][ri].load(Relaxed))
                        .encode(e.encode_family(&labels)?)?;
                }
            }
        }
        if let Some(expiry) = (self.sources.cert_not_after)() {
            gauge(
                &mut enc,
                "tls_certificate_expiry_timestamp",
                "Unix time at which the serving certificate expires (notAfter).",
                Some(Unit::Seconds),
                expiry,
            )?;
        }

        // process
        if let Some(rss) = resident_bytes() {
            gauge(
                &mut enc,
                "process_resident_memory",
                "Resident memory of the gate process.",
                Some(Unit::Bytes),
                rss,
            )?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge(
                &mut enc,
                "process_open_fds",
                "Open file descriptors of the gate process.",
                None,
                fds.count() as i64,
            )?;
        }
        Ok(())
    }
}

fn resident_bytes() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The registry served at `/metrics`: everything under the `jwt_gate_` prefix.
pub fn registry(sources: Sources) -> Registry {
    let mut r = Registry::with_prefix("jwt_gate");
    r.register_collector(Box::new(GateCollector { sources }));
    r
}

/// Render the registry as OpenMetrics text.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // writing into a String cannot fail
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Wall-clock unix seconds (the leaf's own: telemetry imports nothing of the product).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_by_upper_bound() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(100)); // exactly the first bound
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60)); // +Inf
        assert_eq!(h.buckets[0].load(Relaxed), 1);
        assert_eq!(h.buckets[5].load(Relaxed), 1); // (0.0025, 0.005]
        assert_eq!(h.buckets[BOUNDS.len()].load(Relaxed), 1);
        assert_eq!(h.count(), 3);
    }
}
