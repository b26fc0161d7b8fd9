//! `jwt-gate check`: read the config, build every runtime object as `run` would (so the two
//! can never disagree), and say what the gate enforces beyond GitLab.

use std::path::Path;

use crate::app::App;
use crate::config::Config;

/// Check the config file at `path`: the report to print, and whether it is valid. Errors
/// name their keys, never a secret.
pub fn check(path: &Path) -> (String, bool) {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return (e.to_string(), false),
    };
    let app = match App::build(cfg) {
        Ok(a) => a,
        Err(e) => return (e.to_string(), false),
    };
    let mut out = format!(
        "configuration OK: {}\nthe gate enforces, beyond GitLab:\n",
        path.display()
    );
    for line in beyond_gitlab(&app.config) {
        out.push_str(&format!("  - {line}\n"));
    }
    for w in &app.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    (out, true)
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
            p.valid_within,
            cfg.future_skew()
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
    if let Some(iss) = &p.issuer {
        v.push(format!(
            "iss must be {iss:?} (provider.issuer: a gate-only setting, GitLab checks no issuer)"
        ));
    }
    if !p.audience.is_empty() {
        v.push(format!(
            "aud must name one of {:?} (provider.audience: a gate-only setting, GitLab checks no audience)",
            p.audience
        ));
    }
    if g.require_jti {
        v.push("jti required".to_string());
    }
    if let Some(i) = &cfg.idp {
        v.push(format!(
            "[idp] (gate-only; GitLab's JWT provider never sees the IdP's token): tokens from issuer {:?} for audience {:?}, verified with the IdP's key set under [{}]; GitLab gets a token the gate mints with [provider]'s key, valid {} s, single-use",
            i.issuer,
            i.audience,
            i.algorithms.iter().map(|a| a.name()).collect::<Vec<_>>().join(", "),
            i.mint_ttl
        ));
        if let Some(h) = &i.assertion_header {
            v.push(format!(
                "header-assertion sign-in at {}: {h} accepted only from {:?}; GitLab's auth_url must point there",
                i.sso_path, i.trusted_peers.iter().map(|n| n.to_string()).collect::<Vec<_>>()
            ));
        }
    }
    if cfg.replay.reject_issued_before_start {
        v.push("tokens issued before the gate started are refused (a restart does not reopen the replay window)".to_string());
    }
    v
}
