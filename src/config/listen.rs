//! `[listen]` and `[listen.tls]`: the public listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use toml::{Table, Value};

use super::reader::Section;

pub const DEFAULT_ADDR: &str = "0.0.0.0:8443";
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_HEADERS: u64 = 100;
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 64 * 1024;
pub const DEFAULT_MAX_URI_BYTES: u64 = 16 * 1024;
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// nginx's keepalive_timeout is 75 s; a minute keeps git's connection reuse and frees idle
/// sockets well before a flood of them matters.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

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
    /// How long a connection may stay open with no request in flight after its first
    /// request (HTTP/1 keep-alive, HTTP/2 with no open stream). Before the first request,
    /// `header_read_timeout` applies, from the accept (protocol detection included).
    pub idle_timeout: Duration,
    /// The most client connections open at once; `None`: derived from the descriptor limit
    /// and memory at start (`server::budget::default_max_connections`).
    pub max_connections: Option<usize>,
    /// TLS termination; `None` serves plain HTTP.
    pub tls: Option<ListenTls>,
    /// An optional plain-HTTP listener that only redirects to https (308).
    pub http_redirect_addr: Option<SocketAddr>,
}

/// Files of the public listener's TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The default certificate: for clients that send no name, or one no other matches.
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    /// More `(cert, key)` pairs, chosen by the client's SNI against each certificate's own
    /// names (SAN, wildcards): GitLab, registry, Pages and KAS hostnames on one port.
    pub more: Vec<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    /// Every file the config is built from (what a reload watches).
    pub fn paths(&self) -> Vec<&Path> {
        let mut v = vec![self.cert.as_path(), self.key.as_path()];
        if let Some(ca) = &self.client_ca {
            v.push(ca);
        }
        for (c, k) in &self.more {
            v.push(c);
            v.push(k);
        }
        v
    }
}

#[derive(Debug, Clone)]
pub struct ListenTls {
    pub files: TlsFiles,
    /// How often the certificate, key and CA files are re-read.
    pub reload_interval: Duration,
    /// `Strict-Transport-Security: max-age=N` on every response when > 0.
    pub hsts_max_age: u64,
}

fn parse_addr(s: &mut Section, key: &'static str, text: &str) -> Option<SocketAddr> {
    match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            s.err(key, format!("not an ip:port address: {text:?}"));
            None
        }
    }
}

/// `[[listen.tls.certificates]]`: `cert` and `key` of each further certificate.
fn read_more_certificates(s: &mut Section, base: &Path) -> Vec<(PathBuf, PathBuf)> {
    let Some(list) = s.opt::<Vec<Table>>("certificates") else {
        return Vec::new();
    };
    let mut more = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let path = |k: &str| t.get(k).and_then(|v| v.as_str()).map(|p| base.join(p));
        match (path("cert"), path("key")) {
            (Some(c), Some(k)) if t.len() == 2 => more.push((c, k)),
            _ => s.err(
                "certificates",
                format!("entry {}: needs exactly cert and key (paths)", i + 1),
            ),
        }
    }
    more
}

pub(crate) fn read(t: &Table, base: &Path, errs: &mut Vec<String>) -> ListenConfig {
    let mut s = Section::new("listen", t, errs);
    let addr: String = s.get("addr", DEFAULT_ADDR.to_string());
    let addr = parse_addr(&mut s, "addr", &addr);
    let trusted_proxies = s.cidrs("trusted_proxies");
    let header_read_timeout = s.secs("header_read_timeout", DEFAULT_HEADER_READ_TIMEOUT);
    let max_headers = s.positive("max_headers", DEFAULT_MAX_HEADERS, 10_000) as usize;
    let max_header_bytes =
        s.positive("max_header_bytes", DEFAULT_MAX_HEADER_BYTES, 1024 * 1024) as usize;
    if max_header_bytes < 1024 {
        s.err("max_header_bytes", "must be at least 1024");
    }
    let max_uri_bytes = s.positive("max_uri_bytes", DEFAULT_MAX_URI_BYTES, 1024 * 1024) as usize;
    let drain_timeout = s.secs("drain_timeout", DEFAULT_DRAIN_TIMEOUT);
    let idle_timeout = s.secs("idle_timeout", DEFAULT_IDLE_TIMEOUT);
    let max_connections = s.opt::<i64>("max_connections").and_then(|n| {
        if (1..=1_000_000).contains(&n) {
            Some(n as usize)
        } else {
            s.err("max_connections", "must be between 1 and 1000000");
            None
        }
    });
    let redirect: Option<String> = s.opt("http_redirect_addr");
    let http_redirect_addr = match redirect.as_deref() {
        None | Some("") => None,
        Some(a) => parse_addr(&mut s, "http_redirect_addr", a),
    };
    let tls_t = s.raw("tls").cloned();
    s.finish();
    let tls = match tls_t {
        None => None,
        Some(Value::Table(t)) => read_tls(&t, base, errs),
        Some(_) => {
            errs.push("listen.tls: expected a table".into());
            None
        }
    };
    if http_redirect_addr.is_some() && tls.is_none() {
        errs.push("listen.http_redirect_addr: only makes sense with [listen.tls]".into());
    }
    ListenConfig {
        tls,
        http_redirect_addr,
        // on error the list already says so; the fallback is never served
        addr: addr.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 8443))),
        trusted_proxies,
        header_read_timeout,
        max_headers,
        max_header_bytes,
        max_uri_bytes,
        drain_timeout,
        idle_timeout,
        max_connections,
    }
}

fn read_tls(t: &Table, base: &Path, errs: &mut Vec<String>) -> Option<ListenTls> {
    let mut s = Section::new("listen.tls", t, errs);
    let cert: Option<String> = s.opt("cert");
    let key: Option<String> = s.opt("key");
    let client_ca: Option<String> = s.opt("client_ca");
    let reload_interval = s.secs("reload_interval", DEFAULT_TLS_RELOAD_INTERVAL);
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
    let more = read_more_certificates(&mut s, base);
    s.finish();
    Some(ListenTls {
        files: TlsFiles {
            cert: base.join(cert?),
            key: base.join(key?),
            client_ca: client_ca.map(|c| base.join(c)),
            more,
        },
        reload_interval,
        hsts_max_age: hsts.max(0) as u64,
    })
}
