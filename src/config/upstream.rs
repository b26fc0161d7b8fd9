//! `[upstream]`: where verified callbacks and all other traffic go (Workhorse or GitLab's
//! nginx).

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Table;

use super::reader::Section;

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
pub const DEFAULT_POOL_MAX_IDLE_PER_HOST: u64 = 256;

#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub ca: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
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

/// A `scheme://host[:port]` URL and its `host:port`; `None` (with the error noted) otherwise.
fn parse_url(s: &mut Section, u: &str) -> Option<(http::Uri, String)> {
    let uri = match u.parse::<http::Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http") | Some("https"))
                && uri.authority().is_some() =>
        {
            uri
        }
        _ => {
            s.err("url", format!("not an http:// or https:// URL: {u:?}"));
            return None;
        }
    };
    let path = uri.path();
    if path != "/" && !path.is_empty() || uri.query().is_some() {
        s.err(
            "url",
            "must be scheme://host:port only; the request path is forwarded as it came",
        );
        return None;
    }
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

pub(crate) fn read(t: &Table, base: &Path, errs: &mut Vec<String>) -> UpstreamConfig {
    let mut s = Section::new("upstream", t, errs);
    let url: Option<String> = s.opt("url");
    let connect_timeout = s.secs("connect_timeout", DEFAULT_CONNECT_TIMEOUT);
    let response_header_timeout =
        s.secs("response_header_timeout", DEFAULT_RESPONSE_HEADER_TIMEOUT);
    let pool_idle_timeout = s.secs("pool_idle_timeout", DEFAULT_POOL_IDLE_TIMEOUT);
    let pool_max_idle_per_host = s.positive(
        "pool_max_idle_per_host",
        DEFAULT_POOL_MAX_IDLE_PER_HOST,
        65_536,
    ) as usize;
    let http2 = s.get("http2", false);
    let ca: Option<String> = s.opt("ca");
    let client_cert: Option<String> = s.opt("client_cert");
    let client_key: Option<String> = s.opt("client_key");
    let parsed = match url {
        None => {
            s.err("url", "required (e.g. \"http://127.0.0.1:8181\")");
            None
        }
        Some(u) => parse_url(&mut s, &u),
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
    s.finish();
    let tls = https.then_some(UpstreamTls {
        ca,
        client_cert: client_pair,
    });
    // on error the list already says so; the fallback is never used
    let (url, authority) = parsed.unwrap_or_else(|| {
        (
            http::Uri::from_static("http://127.0.0.1:80"),
            "127.0.0.1:80".to_string(),
        )
    });
    UpstreamConfig {
        url,
        authority,
        connect_timeout,
        response_header_timeout,
        pool_idle_timeout,
        pool_max_idle_per_host,
        tls,
        http2,
    }
}
