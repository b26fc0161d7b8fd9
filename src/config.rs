//! Typed configuration: TOML in, a validated [`Config`] out.
//!
//! The file is read in two steps (the sozu habit): TOML is parsed into a raw table, then
//! every section is read key by key into typed values, so that *every* problem — an
//! unknown key (a typo must never silently weaken a check), a wrong type, a value out of
//! range, an unreadable key file — is collected and reported at once, each naming its key.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::HeaderName;
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

use crate::login::keys::{Algorithm, VerifyKey};

/// A validated configuration. Construct with [`Config::from_toml_str`] or [`Config::load`].
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: ListenConfig,
    pub admin: AdminConfig,
    pub upstream: UpstreamConfig,
    pub provider: ProviderConfig,
    pub gate: GateConfig,
    pub replay: ReplayConfig,
    /// Things worth telling the operator that are not errors (`jwt-gate check` prints them).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub addr: SocketAddr,
    /// Peers whose X-Forwarded-* headers are trusted (appended to instead of replaced).
    pub trusted_proxies: Vec<IpNet>,
    /// hyper runs one timer from the moment a connection waits for a request head until the
    /// head is complete: it bounds slowloris and idle keep-alive connections alike.
    pub header_read_timeout: Duration,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    pub drain_timeout: Duration,
    /// TLS termination; `None` serves plain HTTP.
    pub tls: Option<ListenTls>,
    /// An optional plain-HTTP listener that only redirects to https (308).
    pub http_redirect_addr: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct ListenTls {
    pub files: crate::tls::ServerFiles,
    /// How often the certificate, key and CA files are re-read.
    pub reload_interval: Duration,
    /// `Strict-Transport-Security: max-age=N` on every response when > 0.
    pub hsts_max_age: u64,
}

#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub ca: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `None` when `addr = ""`: no admin listener.
    pub addr: Option<SocketAddr>,
    pub ready_requires_upstream: bool,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub url: http::Uri,
    /// `host:port` of the upstream, for the TCP connect of `/readyz`.
    pub authority: String,
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// Set for `https://` upstreams.
    pub tls: Option<UpstreamTls>,
    /// Speak HTTP/2 to the upstream (ALPN over TLS, prior knowledge over plain HTTP).
    pub http2: bool,
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub algorithm: Algorithm,
    pub key: VerifyKey,
    pub secret_source: SecretSource,
    pub uid_claim: String,
    pub required_claims: Vec<String>,
    /// `(info key, claim name)`, in a stable order.
    pub info_map: Vec<(String, String)>,
    pub auth_url: Option<String>,
    pub valid_within: u64,
    /// Whether `valid_within` was set in the file (GitLab's own default is "off").
    pub valid_within_explicit: bool,
}

#[derive(Debug, Clone)]
pub enum SecretSource {
    Inline,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct GateConfig {
    /// Lower-cased, without a trailing `/`.
    pub callback_path: String,
    pub sign_in_path: String,
    pub require_jti: bool,
    pub max_future_skew: u64,
    pub allow_weak_secret: bool,
    /// Prefix of every identity header (default `X-Auth-Request-`), as configured.
    pub identity_header_prefix: String,
    /// The uid header (`<prefix>User`).
    pub user_header: HeaderName,
    /// `(header, claim)` for each info_map entry.
    pub info_headers: Vec<(HeaderName, String)>,
    pub max_callback_body: usize,
    pub callback_body_timeout: Duration,
    /// How often `provider.secret_file` is re-read (it also reloads on SIGHUP).
    pub key_reload_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct ReplayConfig {
    pub store: StoreKind,
    pub max_entries: usize,
    pub reject_issued_before_start: bool,
    pub sweep_interval: Duration,
    pub redis: Option<crate::replay::redis::RedisSettings>,
    /// Whether `/readyz` fails while the store cannot answer (default off: a Redis outage
    /// must not take every pod out of its Service and stop git traffic too).
    pub ready_requires_store: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Redis,
}

/// Every problem found in a configuration, one line each.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigErrors(pub Vec<String>);

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: cannot read: {e}", path.display())]))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml_str_in(&text, base)
    }

    /// Parse and validate TOML text; relative `*_file` paths resolve against the cwd.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigErrors> {
        Self::from_toml_str_in(text, Path::new("."))
    }

    fn from_toml_str_in(text: &str, base: &Path) -> Result<Config, ConfigErrors> {
        let root: Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigErrors(vec![format!("TOML syntax: {e}")]))?;
        let mut errs = Vec::new();
        let mut warnings = Vec::new();
        let mut top = Section::new("", &root, &mut errs);
        let listen_t = top.table("listen");
        let admin_t = top.table("admin");
        let upstream_t = top.table("upstream");
        let provider_t = top.table("provider");
        let gate_t = top.table("gate");
        let replay_t = top.table("replay");
        top.finish();

        let listen = read_listen(&listen_t, base, &mut errs);
        let admin = read_admin(&admin_t, &mut errs);
        let upstream = read_upstream(&upstream_t, base, &mut errs);
        let gate_raw = read_gate(&gate_t, &mut errs);
        let provider = read_provider(&provider_t, base, &gate_raw, &mut errs, &mut warnings);
        let replay = read_replay(&replay_t, base, &mut errs);

        let (Some(listen), Some(admin), Some(upstream), Some(provider), Some(replay)) =
            (listen, admin, upstream, provider, replay)
        else {
            return Err(ConfigErrors(errs));
        };
        let gate = finish_gate(gate_raw, &provider, &mut errs);
        if !errs.is_empty() {
            return Err(ConfigErrors(errs));
        }
        if let Some(a) = admin.addr {
            if a == listen.addr {
                return Err(ConfigErrors(vec![
                    "admin.addr: must differ from listen.addr (keep /metrics and /readyz off the public listener)".into(),
                ]));
            }
        }
        if !provider.valid_within_explicit {
            warnings.push(format!(
                "provider.valid_within is unset (GitLab then skips the iat window); the gate enforces {} s",
                provider.valid_within
            ));
        }
        Ok(Config {
            listen,
            admin,
            upstream,
            provider,
            gate,
            replay,
            warnings,
        })
    }
}

/// Read `provider.secret_file`. For HS* secrets, exactly one trailing newline is dropped: a
/// file made with `echo` or `kubectl create secret --from-file` ends in a newline that
/// GitLab's inline `secret` string never has.
pub fn read_secret_file(path: &Path, alg: Option<Algorithm>) -> std::io::Result<Vec<u8>> {
    let mut b = std::fs::read(path)?;
    if alg.is_some_and(|a| a.family() == crate::login::keys::Family::Hmac) {
        if b.ends_with(b"\r\n") {
            b.truncate(b.len() - 2);
        } else if b.ends_with(b"\n") {
            b.truncate(b.len() - 1);
        }
    }
    Ok(b)
}

/// What the gate enforces beyond GitLab's own JWT strategy for this configuration
/// (printed by `jwt-gate check`).
pub fn beyond_gitlab(cfg: &Config) -> Vec<String> {
    let p = &cfg.provider;
    let g = &cfg.gate;
    let mut v = vec![
        "single use: every token is accepted once (GitLab accepts it again and again)".to_string(),
        format!("alg pinned to exactly {:?} (GitLab compares case-insensitively)", p.algorithm.name()),
        "canonical base64url only, no duplicate JSON keys, no crit, no JWE or JSON serialisation (GitLab decodes leniently)".to_string(),
        "exp and nbf must be numbers when present (GitLab turns a non-numeric exp into 0)".to_string(),
        format!(
            "iat required and an integer, at most {} s old and at most {} s in the future (GitLab's window is symmetric)",
            p.valid_within, g.max_future_skew
        ),
        format!("{} must be a non-empty string; identity values free of control characters", p.uid_claim),
        "one unambiguous jwt parameter: no repeats, no ';', no Rack key spellings, no multipart, query or form body, not both".to_string(),
        format!("callback body at most {} bytes, read within {:?}", g.max_callback_body, g.callback_body_timeout),
        "client-sent identity headers removed on every path".to_string(),
    ];
    if !p.valid_within_explicit {
        v.push(format!(
            "valid_within is unset in GitLab (no iat check); the gate enforces {} s",
            p.valid_within
        ));
    }
    if g.require_jti {
        v.push("jti required".to_string());
    }
    if cfg.replay.reject_issued_before_start {
        v.push("tokens issued before the gate started are refused (a restart does not reopen the replay window)".to_string());
    }
    v
}

/// Reads one TOML table key by key, remembering which keys it knew, so that `finish`
/// can report the unknown ones. Errors go to the shared list, prefixed with the key path.
struct Section<'a> {
    prefix: &'static str,
    table: &'a Table,
    known: BTreeSet<&'static str>,
    errs: &'a mut Vec<String>,
}

impl<'a> Section<'a> {
    fn new(prefix: &'static str, table: &'a Table, errs: &'a mut Vec<String>) -> Self {
        Section {
            prefix,
            table,
            known: BTreeSet::new(),
            errs,
        }
    }

    fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    fn err(&mut self, key: &str, msg: impl std::fmt::Display) {
        let p = self.path(key);
        self.errs.push(format!("{p}: {msg}"));
    }

    fn raw(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.insert(key);
        self.table.get(key)
    }

    /// A sub-table (absent = empty).
    fn table(&mut self, key: &'static str) -> Table {
        match self.raw(key) {
            None => Table::new(),
            Some(Value::Table(t)) => t.clone(),
            Some(other) => {
                self.err(key, format!("expected a table, found {}", other.type_str()));
                Table::new()
            }
        }
    }

    fn opt<T: DeserializeOwned>(&mut self, key: &'static str) -> Option<T> {
        let v = self.raw(key)?.clone();
        match v.try_into::<T>() {
            Ok(t) => Some(t),
            Err(e) => {
                let msg = e.to_string();
                self.err(key, msg.trim());
                None
            }
        }
    }

    fn get<T: DeserializeOwned>(&mut self, key: &'static str, default: T) -> T {
        self.opt(key).unwrap_or(default)
    }

    /// Seconds as an integer or a float, > 0.
    fn secs(&mut self, key: &'static str, default: f64) -> Duration {
        let v: f64 = self.get(key, default);
        if !(v.is_finite() && v > 0.0 && v < 1e9) {
            self.err(key, "must be a positive number of seconds");
            return Duration::from_secs_f64(default);
        }
        Duration::from_secs_f64(v)
    }

    fn positive(&mut self, key: &'static str, default: u64, max: u64) -> u64 {
        let v: i64 = self.get(key, default as i64);
        if v < 1 || v as u64 > max {
            self.err(key, format!("must be between 1 and {max}"));
            return default;
        }
        v as u64
    }

    fn finish(self) {
        let unknown: Vec<String> = self
            .table
            .keys()
            .filter(|k| !self.known.contains(k.as_str()))
            .cloned()
            .collect();
        for k in unknown {
            let p = if self.prefix.is_empty() {
                format!("[{k}]")
            } else {
                format!("{}.{k}", self.prefix)
            };
            let expected: Vec<&str> = self.known.iter().copied().collect();
            self.errs.push(format!(
                "{p}: unknown key (expected one of: {})",
                expected.join(", ")
            ));
        }
    }
}

fn read_listen(t: &Table, base: &Path, errs: &mut Vec<String>) -> Option<ListenConfig> {
    let mut s = Section::new("listen", t, errs);
    let addr: String = s.get("addr", "0.0.0.0:8443".to_string());
    let addr = match addr.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            s.err("addr", format!("not an ip:port address: {addr:?}"));
            None
        }
    };
    let proxies: Vec<String> = s.get("trusted_proxies", Vec::new());
    let mut trusted_proxies = Vec::new();
    for p in proxies {
        match p
            .parse::<IpNet>()
            .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
        {
            Ok(n) => trusted_proxies.push(n),
            Err(_) => s.err(
                "trusted_proxies",
                format!("not a CIDR or IP address: {p:?}"),
            ),
        }
    }
    let header_read_timeout = s.secs("header_read_timeout", 30.0);
    let max_headers = s.positive("max_headers", 100, 10_000) as usize;
    let max_header_bytes = s.positive("max_header_bytes", 64 * 1024, 1024 * 1024) as usize;
    if max_header_bytes < 1024 {
        s.err("max_header_bytes", "must be at least 1024");
    }
    let max_uri_bytes = s.positive("max_uri_bytes", 16 * 1024, 1024 * 1024) as usize;
    let drain_timeout = s.secs("drain_timeout", 30.0);
    let redirect: Option<String> = s.opt("http_redirect_addr");
    let http_redirect_addr = match redirect.as_deref() {
        None | Some("") => None,
        Some(a) => match a.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                s.err(
                    "http_redirect_addr",
                    format!("not an ip:port address: {a:?}"),
                );
                None
            }
        },
    };
    let tls_t = s.raw("tls").cloned();
    s.finish();
    let tls = match tls_t {
        None => None,
        Some(Value::Table(t)) => read_listen_tls(&t, base, errs),
        Some(_) => {
            errs.push("listen.tls: expected a table".into());
            None
        }
    };
    if http_redirect_addr.is_some() && tls.is_none() {
        errs.push("listen.http_redirect_addr: only makes sense with [listen.tls]".into());
    }
    Some(ListenConfig {
        tls,
        http_redirect_addr,
        addr: addr?,
        trusted_proxies,
        header_read_timeout,
        max_headers,
        max_header_bytes,
        max_uri_bytes,
        drain_timeout,
    })
}

fn read_listen_tls(t: &Table, base: &Path, errs: &mut Vec<String>) -> Option<ListenTls> {
    let mut s = Section::new("listen.tls", t, errs);
    let cert: Option<String> = s.opt("cert");
    let key: Option<String> = s.opt("key");
    let client_ca: Option<String> = s.opt("client_ca");
    let reload_interval = s.secs("reload_interval", 5.0);
    let hsts: i64 = s.get("hsts_max_age", 0);
    if hsts < 0 {
        s.err("hsts_max_age", "must be 0 (off) or a number of seconds");
    }
    if cert.is_none() {
        s.err("cert", "required with [listen.tls] (PEM, full chain)");
    }
    if key.is_none() {
        s.err("key", "required with [listen.tls] (PEM)");
    }
    s.finish();
    let files = crate::tls::ServerFiles {
        cert: base.join(cert?),
        key: base.join(key?),
        client_ca: client_ca.map(|c| base.join(c)),
    };
    if let Err(e) = crate::tls::server_config(&files) {
        errs.push(format!("listen.tls: {e}"));
        return None;
    }
    Some(ListenTls {
        files,
        reload_interval,
        hsts_max_age: hsts.max(0) as u64,
    })
}

fn read_admin(t: &Table, errs: &mut Vec<String>) -> Option<AdminConfig> {
    let mut s = Section::new("admin", t, errs);
    let addr: String = s.get("addr", "127.0.0.1:9090".to_string());
    let ready_requires_upstream = s.get("ready_requires_upstream", true);
    let parsed = if addr.is_empty() {
        Some(None)
    } else {
        match addr.parse::<SocketAddr>() {
            Ok(a) => Some(Some(a)),
            Err(_) => {
                s.err("addr", format!("not an ip:port address: {addr:?}"));
                None
            }
        }
    };
    s.finish();
    Some(AdminConfig {
        addr: parsed?,
        ready_requires_upstream,
    })
}

fn read_upstream(t: &Table, base: &Path, errs: &mut Vec<String>) -> Option<UpstreamConfig> {
    let mut s = Section::new("upstream", t, errs);
    let url: Option<String> = s.opt("url");
    let connect_timeout = s.secs("connect_timeout", 5.0);
    let response_header_timeout = s.secs("response_header_timeout", 300.0);
    let pool_idle_timeout = s.secs("pool_idle_timeout", 90.0);
    let pool_max_idle_per_host = s.positive("pool_max_idle_per_host", 256, 65_536) as usize;
    let http2 = s.get("http2", false);
    let ca: Option<String> = s.opt("ca");
    let client_cert: Option<String> = s.opt("client_cert");
    let client_key: Option<String> = s.opt("client_key");
    let parsed = match url {
        None => {
            s.err("url", "required (e.g. \"http://127.0.0.1:8181\")");
            None
        }
        Some(u) => {
            match u.parse::<http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http") | Some("https"))
                        && uri.authority().is_some() =>
                {
                    let path = uri.path();
                    if path != "/" && !path.is_empty() || uri.query().is_some() {
                        s.err("url", "must be scheme://host:port only; the request path is forwarded as it came");
                        None
                    } else {
                        let auth = uri.authority().map(|a| a.as_str()).unwrap_or_default();
                        let default_port = if uri.scheme_str() == Some("https") {
                            443
                        } else {
                            80
                        };
                        let authority = if uri.port_u16().is_some() {
                            auth.to_string()
                        } else {
                            format!("{auth}:{default_port}")
                        };
                        Some((uri, authority))
                    }
                }
                _ => {
                    s.err("url", format!("not an http:// or https:// URL: {u:?}"));
                    None
                }
            }
        }
    };
    let https = parsed
        .as_ref()
        .is_some_and(|(u, _)| u.scheme_str() == Some("https"));
    let client_pair = match (client_cert, client_key) {
        (Some(c), Some(k)) => Some((base.join(c), base.join(k))),
        (None, None) => None,
        _ => {
            s.err("client_cert", "client_cert and client_key go together");
            None
        }
    };
    let ca = ca.map(|c| base.join(c));
    if !https && (ca.is_some() || client_pair.is_some()) {
        s.err("ca", "ca, client_cert and client_key need an https:// url");
    }
    let tls = if https {
        let pair = client_pair
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        match crate::tls::client_config(ca.as_deref(), pair) {
            Ok(_) => Some(UpstreamTls {
                ca,
                client_cert: client_pair,
            }),
            Err(e) => {
                s.err("ca", e);
                None
            }
        }
    } else {
        None
    };
    s.finish();
    let (url, authority) = parsed?;
    if https && tls.is_none() {
        return None;
    }
    Some(UpstreamConfig {
        url,
        authority,
        connect_timeout,
        response_header_timeout,
        pool_idle_timeout,
        pool_max_idle_per_host,
        tls,
        http2,
    })
}

/// The [gate] section before the provider is known (header names depend on info_map).
struct GateRaw {
    callback_path: String,
    sign_in_path: Option<String>,
    require_jti: bool,
    max_future_skew: u64,
    allow_weak_secret: bool,
    identity_header_prefix: String,
    max_callback_body: usize,
    callback_body_timeout: Duration,
    key_reload_interval: Duration,
}

fn read_gate(t: &Table, errs: &mut Vec<String>) -> GateRaw {
    let mut s = Section::new("gate", t, errs);
    let mut callback_path: String = s.get("callback_path", "/users/auth/jwt/callback".to_string());
    if !callback_path.starts_with('/') || callback_path.contains(['?', '#', '%', ' ']) {
        s.err(
            "callback_path",
            "must be an absolute path without query, fragment, spaces or percent-encoding",
        );
    }
    callback_path.make_ascii_lowercase();
    if callback_path.len() > 1 && callback_path.ends_with('/') {
        callback_path.pop();
    }
    let sign_in_path: Option<String> = s.opt("sign_in_path");
    let require_jti = s.get("require_jti", false);
    let skew: i64 = s.get("max_future_skew", 60);
    if !(0..=3600).contains(&skew) {
        s.err("max_future_skew", "must be between 0 and 3600 seconds");
    }
    let allow_weak_secret = s.get("allow_weak_secret", false);
    let identity_header_prefix: String =
        s.get("identity_header_prefix", "X-Auth-Request-".to_string());
    if identity_header_prefix.len() < 3
        || HeaderName::from_bytes(format!("{identity_header_prefix}User").as_bytes()).is_err()
    {
        s.err(
            "identity_header_prefix",
            "must be a valid header-name prefix of at least 3 characters",
        );
    }
    let max_callback_body = s.positive("max_callback_body", 16 * 1024, 1024 * 1024) as usize;
    let callback_body_timeout = s.secs("callback_body_timeout", 10.0);
    let key_reload_interval = s.secs("key_reload_interval", 5.0);
    s.finish();
    GateRaw {
        key_reload_interval,
        callback_path,
        sign_in_path,
        require_jti,
        max_future_skew: skew.clamp(0, 3600) as u64,
        allow_weak_secret,
        identity_header_prefix,
        max_callback_body,
        callback_body_timeout,
    }
}

fn read_provider(
    t: &Table,
    base: &Path,
    gate: &GateRaw,
    errs: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Option<ProviderConfig> {
    let mut s = Section::new("provider", t, errs);
    let alg_name: String = s.get("algorithm", "HS256".to_string());
    let algorithm = match Algorithm::from_name(&alg_name) {
        Some(a) => Some(a),
        None => {
            s.err(
                "algorithm",
                format!(
                    "unsupported {alg_name:?} (expected one of {})",
                    Algorithm::ALL.map(|a| a.name()).join(", ")
                ),
            );
            None
        }
    };
    let secret: Option<String> = s.opt("secret");
    let secret_file: Option<String> = s.opt("secret_file");
    let uid_claim: String = s.get("uid_claim", "email".to_string());
    let required_claims: Vec<String> = s.get(
        "required_claims",
        vec!["name".to_string(), "email".to_string()],
    );
    let info_map_t: Option<Table> = s.opt("info_map");
    let auth_url: Option<String> = s.opt("auth_url");
    let valid_within_raw: Option<i64> = s.opt("valid_within");
    let valid_within = match valid_within_raw {
        None => 300,
        Some(v) if (1..=86_400).contains(&v) => v as u64,
        Some(_) => {
            s.err("valid_within", "must be between 1 and 86400 seconds");
            300
        }
    };
    if uid_claim.is_empty() {
        s.err("uid_claim", "must not be empty");
    }
    let mut info_map = Vec::new();
    match info_map_t {
        None => {
            info_map.push(("name".to_string(), "name".to_string()));
            info_map.push(("email".to_string(), "email".to_string()));
        }
        Some(t) => {
            for (k, v) in t {
                match v {
                    Value::String(claim) => info_map.push((k, claim)),
                    other => s.err(
                        "info_map",
                        format!(
                            "{k}: expected a claim name string, found {}",
                            other.type_str()
                        ),
                    ),
                }
            }
        }
    }

    let (material, source) = match (secret, secret_file) {
        (Some(_), Some(_)) => {
            s.err("secret", "set either secret or secret_file, not both");
            (None, SecretSource::Inline)
        }
        (None, None) => {
            s.err("secret", "required (or secret_file)");
            (None, SecretSource::Inline)
        }
        (Some(v), None) => (Some(v.into_bytes()), SecretSource::Inline),
        (None, Some(f)) => {
            let p = base.join(&f);
            match read_secret_file(&p, algorithm) {
                Ok(b) => (Some(b), SecretSource::File(p)),
                Err(e) => {
                    s.err("secret_file", format!("{}: {e}", p.display()));
                    (None, SecretSource::File(p))
                }
            }
        }
    };
    let mut key = None;
    if let (Some(alg), Some(material)) = (algorithm, material) {
        match VerifyKey::load(alg, &material, gate.allow_weak_secret) {
            Ok((k, notes)) => {
                warnings.extend(notes);
                key = Some(k);
            }
            Err(e) => {
                let which = match source {
                    SecretSource::Inline => "secret",
                    SecretSource::File(_) => "secret_file",
                };
                s.err(which, e);
            }
        }
    }
    s.finish();
    Some(ProviderConfig {
        algorithm: algorithm?,
        key: key?,
        secret_source: source,
        uid_claim,
        required_claims,
        info_map,
        auth_url,
        valid_within,
        valid_within_explicit: valid_within_raw.is_some(),
    })
}

fn finish_gate(g: GateRaw, p: &ProviderConfig, errs: &mut Vec<String>) -> GateConfig {
    let header = |suffix: &str, errs: &mut Vec<String>| -> HeaderName {
        let name = format!("{}{}", g.identity_header_prefix, title_case(suffix));
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => h,
            Err(_) => {
                errs.push(format!(
                    "provider.info_map: {suffix:?} does not make a valid header name ({name:?})"
                ));
                HeaderName::from_static("x-invalid")
            }
        }
    };
    let user_header = header("user", errs);
    let mut info_headers = Vec::new();
    for (k, claim) in &p.info_map {
        let h = header(k, errs);
        if h == user_header {
            errs.push(format!(
                "provider.info_map: key {k:?} would produce the same header as the uid ({h})"
            ));
        }
        info_headers.push((h, claim.clone()));
    }
    let sign_in_path = g.sign_in_path.unwrap_or_else(|| {
        let root = g
            .callback_path
            .strip_suffix("/users/auth/jwt/callback")
            .unwrap_or("");
        format!("{root}/users/sign_in")
    });
    GateConfig {
        callback_path: g.callback_path,
        sign_in_path,
        require_jti: g.require_jti,
        max_future_skew: g.max_future_skew,
        allow_weak_secret: g.allow_weak_secret,
        identity_header_prefix: g.identity_header_prefix,
        user_header,
        info_headers,
        max_callback_body: g.max_callback_body,
        callback_body_timeout: g.callback_body_timeout,
        key_reload_interval: g.key_reload_interval,
    }
}

/// `email` -> `Email`, `given_name` -> `Given-Name` (header words, `_` as `-`).
fn title_case(key: &str) -> String {
    key.split(['_', '-'])
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_uppercase().chain(c).collect::<String>(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn read_replay(t: &Table, base: &Path, errs: &mut Vec<String>) -> Option<ReplayConfig> {
    let mut s = Section::new("replay", t, errs);
    let store_name: String = s.get("store", "memory".to_string());
    let store = match store_name.as_str() {
        "memory" => Some(StoreKind::Memory),
        "redis" => Some(StoreKind::Redis),
        other => {
            s.err(
                "store",
                format!("unknown store {other:?} (expected \"memory\" or \"redis\")"),
            );
            None
        }
    };
    let max_entries = s.positive("max_entries", 1_000_000, 1_000_000_000) as usize;
    // Redis outlives the gate: a restart does not reopen the replay window there
    let reject_issued_before_start = s.get(
        "reject_issued_before_start",
        store != Some(StoreKind::Redis),
    );
    let sweep_interval = s.secs("sweep_interval", 10.0);
    let ready_requires_store = s.get("ready_requires_store", false);
    let redis_url: Option<String> = s.opt("redis_url");
    let sentinels: Vec<String> = s.get("sentinels", Vec::new());
    let master_name: Option<String> = s.opt("master_name");
    let password_file: Option<String> = s.opt("redis_password_file");
    let key_prefix: String = s.get("key_prefix", "jwt-gate:replay:".to_string());
    let connect_timeout = s.secs("redis_connect_timeout", 0.25);
    let response_timeout = s.secs("redis_timeout", 0.25);
    let password = match &password_file {
        None => None,
        Some(f) => match std::fs::read_to_string(base.join(f)) {
            Ok(p) => Some(p.trim_end_matches(['\r', '\n']).to_string()),
            Err(e) => {
                s.err(
                    "redis_password_file",
                    format!("{}: {e}", base.join(f).display()),
                );
                None
            }
        },
    };
    let redis = if store == Some(StoreKind::Redis) {
        let settings = crate::replay::redis::RedisSettings {
            url: redis_url,
            sentinels,
            master_name,
            password,
            key_prefix,
            connect_timeout,
            response_timeout,
        };
        match crate::replay::redis::RedisStore::new(&settings) {
            Ok(_) => Some(settings),
            Err(e) => {
                // the message names its key
                s.errs.push(e);
                None
            }
        }
    } else {
        if redis_url.is_some() || !sentinels.is_empty() {
            s.err("redis_url", "set store = \"redis\" to use Redis");
        }
        None
    };
    s.finish();
    let store = store?;
    if store == StoreKind::Redis && redis.is_none() {
        return None;
    }
    Some(ReplayConfig {
        store,
        max_entries,
        reject_issued_before_start,
        sweep_interval,
        redis,
        ready_requires_store,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn minimal() -> String {
        format!("[upstream]\nurl = \"http://127.0.0.1:8181\"\n[provider]\nsecret = \"{SECRET}\"\n")
    }

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let c = Config::from_toml_str(&minimal()).expect("valid");
        assert_eq!(c.listen.addr, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(c.admin.addr, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(c.provider.algorithm, Algorithm::HS256);
        assert_eq!(c.provider.uid_claim, "email");
        assert_eq!(c.provider.required_claims, vec!["name", "email"]);
        assert_eq!(c.provider.valid_within, 300);
        assert_eq!(c.gate.callback_path, "/users/auth/jwt/callback");
        assert_eq!(c.gate.sign_in_path, "/users/sign_in");
        assert_eq!(c.gate.max_future_skew, 60);
        assert_eq!(c.gate.user_header.as_str(), "x-auth-request-user");
        assert_eq!(c.replay.store, StoreKind::Memory);
        assert!(c.replay.reject_issued_before_start);
        assert!(c.warnings.iter().any(|w| w.contains("valid_within")));
    }

    #[test]
    fn every_error_is_reported_at_once_with_its_key() {
        let text = "[listen]\naddr = \"nope\"\nbogus = 1\n[upstream]\nurl = \"ftp://x\"\n\
                    [provider]\nalgorithm = \"HS999\"\nsecret = \"short\"\nvalid_within = -5\n\
                    [gate]\nrequire_jit = true\n[replay]\nstore = \"disk\"\n[extra]\n";
        let e = Config::from_toml_str(text).unwrap_err().0;
        let all = e.join("\n");
        for needle in [
            "listen.addr",
            "listen.bogus: unknown key",
            "upstream.url",
            "provider.algorithm",
            "provider.valid_within",
            "gate.require_jit: unknown key",
            "replay.store",
            "[extra]: unknown key",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn weak_hmac_secret_is_refused_unless_allowed() {
        let text = "[upstream]\nurl = \"http://127.0.0.1:1\"\n[provider]\nsecret = \"short\"\n";
        let e = Config::from_toml_str(text).unwrap_err().0.join("\n");
        assert!(
            e.contains("provider.secret") && e.contains("32 bytes"),
            "{e}"
        );
        let ok = format!("{text}[gate]\nallow_weak_secret = true\n");
        assert!(Config::from_toml_str(&ok).is_ok());
    }

    #[test]
    fn info_map_makes_title_cased_headers_and_relative_root_moves_sign_in() {
        let text = format!(
            "{}info_map = {{ name = \"name\", given_name = \"gn\" }}\n[gate]\ncallback_path = \"/GitLab/users/auth/jwt/callback/\"\n",
            minimal()
        );
        let c = Config::from_toml_str(&text).expect("valid");
        let names: Vec<&str> = c
            .gate
            .info_headers
            .iter()
            .map(|(h, _)| h.as_str())
            .collect();
        assert_eq!(
            names,
            vec!["x-auth-request-given-name", "x-auth-request-name"]
        );
        assert_eq!(c.gate.callback_path, "/gitlab/users/auth/jwt/callback");
        assert_eq!(c.gate.sign_in_path, "/gitlab/users/sign_in");
    }

    #[test]
    fn hmac_secret_file_loses_exactly_one_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("jwt-gate-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("secret");
        std::fs::write(&f, format!("{SECRET}\n")).unwrap();
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[provider]\nsecret_file = \"{}\"\n",
            f.display()
        );
        let c = Config::from_toml_str(&text).expect("valid");
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET.as_bytes());
        let tag = aws_lc_rs::hmac::sign(&key, b"input");
        assert!(c.provider.key.verify(b"input", tag.as_ref()));
        // two newlines: only one is dropped, so the key differs
        std::fs::write(&f, format!("{SECRET}\n\n")).unwrap();
        let c = Config::from_toml_str(&text).expect("valid");
        assert!(!c.provider.key.verify(b"input", tag.as_ref()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
