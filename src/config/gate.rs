//! `[gate]`: what the gate enforces beyond GitLab, and the identity headers it sets.

use std::time::Duration;

use http::header::HeaderName;
use toml::Table;

use super::provider::ProviderConfig;
use super::reader::Section;

pub const DEFAULT_CALLBACK_PATH: &str = "/users/auth/jwt/callback";
pub const DEFAULT_MAX_FUTURE_SKEW: i64 = 60;
pub const DEFAULT_IDENTITY_HEADER_PREFIX: &str = "X-Auth-Request-";
pub const DEFAULT_MAX_CALLBACK_BODY: u64 = 16 * 1024;
pub const DEFAULT_CALLBACK_BODY_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(5);
/// Refused callbacks a client may have before it must wait: a person who mistypes or
/// double-clicks never comes near it; a forgery flood meets it within a second.
pub const DEFAULT_THROTTLE_BURST: u64 = 30;
/// Points a client earns back per second.
pub const DEFAULT_THROTTLE_PER_SECOND: f64 = 1.0;

/// Whether refusals are enforced, or only reported during a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateMode {
    /// A refused callback never reaches GitLab (the default).
    Enforce,
    /// Every callback is verified, recorded, logged and counted, and forwarded anyway;
    /// identity headers are still stripped from clients and set only for verified tokens.
    Report,
}

#[derive(Debug, Clone)]
pub struct GateConfig {
    pub mode: GateMode,
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
    /// Per-client budget of refused callbacks (points; a forged signature costs what
    /// verifying it cost), and the points earned back per second.
    pub throttle_burst: u64,
    pub throttle_per_second: f64,
}

/// The [gate] section before the provider is known (header names depend on info_map).
pub(crate) struct GateRaw {
    mode: GateMode,
    callback_path: String,
    sign_in_path: Option<String>,
    require_jti: bool,
    max_future_skew: u64,
    pub(crate) allow_weak_secret: bool,
    identity_header_prefix: String,
    max_callback_body: usize,
    callback_body_timeout: Duration,
    key_reload_interval: Duration,
    throttle_burst: u64,
    throttle_per_second: f64,
}

pub(crate) fn read(t: &Table, errs: &mut Vec<String>) -> GateRaw {
    let mut s = Section::new("gate", t, errs);
    let mode_name: String = s.get("mode", "enforce".to_string());
    let mode = match mode_name.as_str() {
        "enforce" => GateMode::Enforce,
        "report" => GateMode::Report,
        other => {
            s.err(
                "mode",
                format!("unknown mode {other:?} (expected \"enforce\" or \"report\")"),
            );
            GateMode::Enforce
        }
    };
    let mut callback_path: String = s.get("callback_path", DEFAULT_CALLBACK_PATH.to_string());
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
    let skew: i64 = s.get("max_future_skew", DEFAULT_MAX_FUTURE_SKEW);
    if !(0..=3600).contains(&skew) {
        s.err("max_future_skew", "must be between 0 and 3600 seconds");
    }
    let allow_weak_secret = s.get("allow_weak_secret", false);
    let identity_header_prefix: String = s.get(
        "identity_header_prefix",
        DEFAULT_IDENTITY_HEADER_PREFIX.to_string(),
    );
    if identity_header_prefix.len() < 3
        || HeaderName::from_bytes(format!("{identity_header_prefix}User").as_bytes()).is_err()
    {
        s.err(
            "identity_header_prefix",
            "must be a valid header-name prefix of at least 3 characters",
        );
    }
    let max_callback_body =
        s.positive("max_callback_body", DEFAULT_MAX_CALLBACK_BODY, 1024 * 1024) as usize;
    let callback_body_timeout = s.secs("callback_body_timeout", DEFAULT_CALLBACK_BODY_TIMEOUT);
    let key_reload_interval = s.secs("key_reload_interval", DEFAULT_KEY_RELOAD_INTERVAL);
    let throttle_burst = s.positive("throttle_burst", DEFAULT_THROTTLE_BURST, 1_000_000);
    let throttle_per_second: f64 = s.get("throttle_per_second", DEFAULT_THROTTLE_PER_SECOND);
    if !(throttle_per_second.is_finite() && throttle_per_second > 0.0) {
        s.err("throttle_per_second", "must be a positive number");
    }
    s.finish();
    GateRaw {
        mode,
        key_reload_interval,
        callback_path,
        sign_in_path,
        require_jti,
        max_future_skew: skew.clamp(0, 3600) as u64,
        allow_weak_secret,
        identity_header_prefix,
        max_callback_body,
        callback_body_timeout,
        throttle_burst,
        throttle_per_second: if throttle_per_second > 0.0 {
            throttle_per_second
        } else {
            DEFAULT_THROTTLE_PER_SECOND
        },
    }
}

/// The header for an info key: `<prefix>Title-Case`; an error (and a placeholder) when the
/// result is not a valid header name.
fn identity_header(prefix: &str, suffix: &str, errs: &mut Vec<String>) -> HeaderName {
    let name = format!("{prefix}{}", title_case(suffix));
    HeaderName::from_bytes(name.as_bytes()).unwrap_or_else(|_| {
        errs.push(format!(
            "provider.info_map: {suffix:?} does not make a valid header name ({name:?})"
        ));
        HeaderName::from_static("x-invalid")
    })
}

pub(crate) fn finish(g: GateRaw, p: &ProviderConfig, errs: &mut Vec<String>) -> GateConfig {
    let prefix = &g.identity_header_prefix;
    let user_header = identity_header(prefix, "user", errs);
    let mut info_headers = Vec::new();
    for (k, claim) in &p.info_map {
        let h = identity_header(prefix, k, errs);
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
            .strip_suffix(DEFAULT_CALLBACK_PATH)
            .unwrap_or("");
        format!("{root}/users/sign_in")
    });
    GateConfig {
        mode: g.mode,
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
        throttle_burst: g.throttle_burst,
        throttle_per_second: g.throttle_per_second,
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
