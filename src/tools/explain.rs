//! `jwt-gate explain`: every check in order with pass/fail, and the decoded header and
//! claims, so an administrator sees at once why a login fails (GitLab only says "Could not
//! authenticate you from Jwt"). No side effects: the replay store is not touched.

use std::fmt::Write as _;

use crate::config::{Config, IdpConfig};
use crate::idp::IdpKeys;
use crate::login::encoding::b64url_decode_canonical;
use crate::login::idp::{IdpVerifier, KeySource};
use crate::login::jwks::{KeySet, Lookup};
use crate::login::verify::{AuditInfo, Step, Trace, Verifier};

struct Collect(Vec<Step>);

impl Trace for Collect {
    fn pass(&mut self, step: Step) {
        self.0.push(step);
    }
}

/// Explain `token` against `cfg` at time `now`. Returns the report and whether the token
/// would be accepted (replay store aside).
pub fn explain(cfg: &Config, token: &str, now: i64) -> (String, bool) {
    let token = token.trim();
    let mut out = String::new();
    let p = &cfg.provider;
    let _ = writeln!(
        out,
        "provider: {}  uid_claim: {}  required_claims: [{}]  valid_within: {} s  max_future_skew: {} s  require_jti: {}",
        p.algorithm.name(),
        p.uid_claim,
        p.required_claims.join(", "),
        p.valid_within,
        cfg.gate.max_future_skew,
        cfg.gate.require_jti
    );
    let segs: Vec<&str> = token.split('.').collect();
    for (i, name) in ["header", "claims"].iter().enumerate() {
        let shown = segs
            .get(i)
            .and_then(|s| decode_for_display(s))
            .map(
                |bytes| match serde_json::from_slice::<serde_json::Value>(&bytes) {
                    Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
                    Err(_) => format!("(not JSON: {})", String::from_utf8_lossy(&bytes)),
                },
            )
            .unwrap_or_else(|| "(cannot be decoded)".to_string());
        let _ = writeln!(out, "{name}:\n{}", indent(&shown));
    }
    if let Some(claims) = segs.get(1).and_then(|s| decode_for_display(s)) {
        if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice(&claims) {
            for k in ["iat", "exp", "nbf"] {
                if let Some(t) = m.get(k).and_then(|v| v.as_i64()) {
                    let _ = writeln!(out, "{k}: {t} ({:+} s from now)", t - now);
                }
            }
        }
    }

    if let Some(idp) = cfg
        .idp
        .as_ref()
        .filter(|i| i.callback || i.assertion_header.is_some())
    {
        let ok = explain_idp(idp, token, now, &mut out);
        return (out, ok);
    }
    let key = match crate::app::verify_key(cfg) {
        Ok((k, _)) => k,
        Err(e) => return (format!("{out}cannot load the key: {e}\n"), false),
    };
    // explain runs in its own process: "issued before start" would be meaningless here
    let verifier = Verifier::new(cfg, key, None);
    let mut trace = Collect(Vec::new());
    let mut audit = AuditInfo::default();
    let result = verifier.verify(token, now, &mut audit, &mut trace);
    let _ = writeln!(out, "checks:");
    let mut failed_shown = false;
    for step in Step::ALL {
        let name = step.name();
        if trace.0.contains(&step) {
            let _ = writeln!(out, "  [pass] {name}");
        } else if !failed_shown {
            failed_shown = true;
            if let Err(r) = &result {
                let _ = writeln!(out, "  [FAIL] {name}: {} — {}", r.code(), r.describe());
            }
        } else {
            let _ = writeln!(out, "  [ -- ] {name} (not reached)");
        }
    }
    match &result {
        Ok(v) => {
            let _ = writeln!(
                out,
                "  [skip] replay store: not consulted (explain has no side effects); a first use would be recorded until {}",
                v.expires_at
            );
            if cfg.replay.reject_issued_before_start {
                let _ = writeln!(
                    out,
                    "  [note] a running gate also refuses tokens issued before it started (replay.reject_issued_before_start)"
                );
            }
            let _ = writeln!(out, "identity headers the gate would add:");
            for (h, v) in &v.identity {
                let _ = writeln!(out, "  {h}: {}", String::from_utf8_lossy(v.as_bytes()));
            }
            let _ = writeln!(out, "result: ACCEPTED (if unused)");
        }
        Err(r) => {
            let _ = writeln!(
                out,
                "result: REJECTED ({} {})",
                r.status().as_u16(),
                r.code()
            );
        }
    }
    (out, result.is_ok())
}

/// An IdP token: which key set, which key its kid and alg select, and the first check that
/// fails (or the identity the minted token would carry).
fn explain_idp(idp: &IdpConfig, token: &str, now: i64, out: &mut String) -> bool {
    let algs: Vec<&str> = idp.algorithms.iter().map(|a| a.name()).collect();
    let _ = writeln!(
        out,
        "idp: issuer {}  audience [{}]  algorithms [{}]  leeway {} s  uid_claim {}",
        idp.issuer,
        idp.audience.join(", "),
        algs.join(", "),
        idp.leeway,
        idp.uid_claim
    );
    let keys = match IdpKeys::new(idp) {
        Ok(k) => k,
        Err(e) => {
            let _ = writeln!(out, "cannot use the key set: {e}");
            return false;
        }
    };
    let loaded = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(keys.load_now()));
    let set = match loaded.and_then(|_| keys.current()) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(out, "key set {}: not loaded: {e}", keys.describe_source());
            let _ = writeln!(out, "result: REJECTED (503 idp_keys_unavailable)");
            return false;
        }
    };
    let _ = writeln!(out, "key set {}:", keys.describe_source());
    for k in &set.keys {
        let algs: Vec<&str> = k.algorithms().map(|a| a.name()).collect();
        let _ = writeln!(
            out,
            "  kid {}  {}  [{}]",
            k.kid.as_deref().unwrap_or("(none)"),
            k.kty,
            algs.join(", ")
        );
    }
    describe_key_choice(&set, token, out);
    let mut audit = AuditInfo::default();
    match IdpVerifier::new(idp).verify_with(token, &set, now, &mut audit) {
        Ok(v) => {
            let _ = writeln!(out, "the gate would mint GitLab's token for uid {}", v.uid);
            for (k, val) in &v.claims {
                let _ = writeln!(out, "  {k}: {val}");
            }
            let _ = writeln!(
                out,
                "result: ACCEPTED (if unused: callback mode records the IdP token until {})",
                v.expires_at
            );
            true
        }
        Err(r) => {
            let _ = writeln!(out, "  [FAIL] {} — {}", r.code(), r.describe());
            let _ = writeln!(
                out,
                "result: REJECTED ({} {})",
                r.status().as_u16(),
                r.code()
            );
            false
        }
    }
}

/// Which key the token's header selects.
fn describe_key_choice(set: &KeySet, token: &str, out: &mut String) {
    let header = token
        .split('.')
        .next()
        .and_then(decode_for_display)
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let Some(h) = header else { return };
    let kid = h.get("kid").and_then(|v| v.as_str());
    let Some(alg) = h
        .get("alg")
        .and_then(|v| v.as_str())
        .and_then(crate::config::IdpAlg::from_name)
    else {
        return;
    };
    let which = match set.lookup(kid, alg) {
        Lookup::Key(_) => "found",
        Lookup::UnknownKid => "no key with this kid (a running gate refetches the set once)",
        Lookup::WrongKeyType => "the kid names a key of another type",
        Lookup::KidRequired => "no kid, and several keys could serve",
    };
    let _ = writeln!(
        out,
        "key for kid {} and {}: {which}",
        kid.unwrap_or("(none)"),
        alg.name()
    );
}

/// Decode a segment for display: canonical first, then the lenient spellings ruby-jwt
/// would take (padding, standard alphabet), so a non-canonical token can still be read.
fn decode_for_display(seg: &str) -> Option<Vec<u8>> {
    b64url_decode_canonical(seg.as_bytes()).or_else(|| {
        let cleaned: String = seg
            .trim_end_matches('=')
            .chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| match c {
                '+' => '-',
                '/' => '_',
                c => c,
            })
            .collect();
        let mut bytes = cleaned.into_bytes();
        // clear non-zero trailing bits by re-trying with the last char's low bits dropped
        b64url_decode_canonical(&bytes).or_else(|| {
            bytes.pop();
            b64url_decode_canonical(&bytes)
        })
    })
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("  {l}\n"))
        .collect::<String>()
        .trim_end()
        .to_string()
}
