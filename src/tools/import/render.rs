//! Rendering what was found as the gate's `[provider]` TOML, checked by the gate's own rules.

use std::fmt::Write as _;

use super::{Found, Lit};

/// The provider keys GitLab's JWT strategy reads; the rest of `args` means nothing to it.
const KNOWN_ARGS: &[&str] = &[
    "secret",
    "algorithm",
    "uid_claim",
    "required_claims",
    "info_map",
    "auth_url",
    "valid_within",
    // OmniAuth's own option: where the callback is served (the gate must guard that path)
    "callback_path",
];

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_string()
    } else {
        toml_str(k)
    }
}

/// What the gate's own config check says of an imported `[provider]` (an unreadable
/// `secret_file` is left out: the file lives on the gate's machine, not necessarily here).
pub fn problems(imported: &str) -> Vec<String> {
    let text = format!("[upstream]\nurl = \"http://127.0.0.1:8181\"\n{imported}");
    match crate::config::Config::from_toml_str(&text) {
        // the key itself is checked as `run` checks it (size, PEM, curve)
        Ok(cfg) => crate::app::verify_key(&cfg).err().into_iter().collect(),
        Err(e) => {
            e.0.into_iter()
                .filter(|m| !m.starts_with("provider.secret_file"))
                .collect()
        }
    }
}

pub(super) fn render(found: &Found, source: &str) -> Result<String, String> {
    let args = found
        .entry
        .get("args")
        .ok_or("the jwt provider has no args")?;
    let Lit::Hash(pairs) = args else {
        return Err(format!(
            "the jwt provider's args is {}, not a hash",
            args.kind()
        ));
    };
    let mut errs = Vec::new();
    let mut out = String::new();
    let mut comments = found.notes.clone();
    let mut body = String::new();
    let want_str = |k: &str, v: &Lit, errs: &mut Vec<String>| match v {
        Lit::Str(s) => Some(s.clone()),
        Lit::Int(i) => Some(i.to_string()),
        other => {
            errs.push(format!("args.{k} is {}, expected a string", other.kind()));
            None
        }
    };
    let mut seen_valid_within = false;
    let mut callback_path = None;
    for (k, v) in pairs {
        match k.as_str() {
            "callback_path" => callback_path = want_str(k, v, &mut errs),
            "secret" => match v {
                Lit::FileRead(path) => {
                    let _ = writeln!(body, "secret_file = {}", toml_str(path));
                }
                v => {
                    if let Some(s) = want_str(k, v, &mut errs) {
                        let _ = writeln!(body, "secret = {}", toml_str(&s));
                        comments.push("the secret is inline, as it was in GitLab's file: consider moving it to a file and `secret_file`".to_string());
                    }
                }
            },
            "algorithm" | "uid_claim" | "auth_url" => {
                if let Some(s) = want_str(k, v, &mut errs) {
                    let _ = writeln!(body, "{k} = {}", toml_str(&s));
                }
            }
            "required_claims" => match v {
                Lit::Arr(items) => {
                    let names: Vec<String> = items
                        .iter()
                        .filter_map(|i| want_str("required_claims[]", i, &mut errs))
                        .map(|s| toml_str(&s))
                        .collect();
                    let _ = writeln!(body, "required_claims = [{}]", names.join(", "));
                }
                other => errs.push(format!(
                    "args.required_claims is {}, expected an array",
                    other.kind()
                )),
            },
            "info_map" => match v {
                Lit::Hash(map) => {
                    let items: Vec<String> = map
                        .iter()
                        .filter_map(|(mk, mv)| {
                            want_str(&format!("info_map.{mk}"), mv, &mut errs)
                                .map(|s| format!("{} = {}", toml_key(mk), toml_str(&s)))
                        })
                        .collect();
                    let _ = writeln!(body, "info_map = {{ {} }}", items.join(", "));
                }
                other => errs.push(format!(
                    "args.info_map is {}, expected a hash",
                    other.kind()
                )),
            },
            "valid_within" => match v {
                Lit::Nil => {}
                Lit::Int(i) => {
                    seen_valid_within = true;
                    let _ = writeln!(body, "valid_within = {i}");
                }
                Lit::Float(f) if f.fract() == 0.0 && *f >= 0.0 => {
                    seen_valid_within = true;
                    let _ = writeln!(body, "valid_within = {}", *f as i64);
                }
                other => errs.push(format!(
                    "args.valid_within is {}, expected a whole number of seconds",
                    other.kind()
                )),
            },
            other if !KNOWN_ARGS.contains(&other) => {
                comments.push(format!(
                    "args.{other} is not a setting of GitLab's JWT provider: not imported"
                ));
            }
            _ => {}
        }
    }
    if !pairs.iter().any(|(k, _)| k == "secret") {
        errs.push("args.secret is missing: GitLab cannot verify a token without it".to_string());
    }
    if !errs.is_empty() {
        return Err(errs.join("\n"));
    }
    if !seen_valid_within {
        comments.push("valid_within is unset in GitLab (no iat check): the gate enforces 300 s unless you set it here".to_string());
    }
    comments.push("issuer = \"...\" and audience = [\"...\"] are gate-only settings (GitLab checks neither iss nor aud): add them to refuse tokens the IdP signed for other applications".to_string());
    let _ = writeln!(
        out,
        "# [provider] imported by `jwt-gate import-gitlab` from {source}"
    );
    for c in &comments {
        let _ = writeln!(out, "# note: {c}");
    }
    let _ = writeln!(out, "[provider]\n{body}");
    let root = found.relative_root.as_deref().unwrap_or("");
    match (&callback_path, root) {
        // OmniAuth compares an explicit callback_path with the whole request path
        (Some(cb), _) => {
            let _ = writeln!(
                out,
                "[gate]\n# args.callback_path: OmniAuth serves the callback there\ncallback_path = {}\nsign_in_path = {}",
                toml_str(cb),
                toml_str(&format!("{root}/users/sign_in"))
            );
        }
        (None, "") => {}
        (None, root) => {
            let _ = writeln!(
                out,
                "[gate]\n# GitLab is served under {root}\ncallback_path = {}\nsign_in_path = {}",
                toml_str(&format!("{root}/users/auth/jwt/callback")),
                toml_str(&format!("{root}/users/sign_in"))
            );
        }
    }
    Ok(out)
}
