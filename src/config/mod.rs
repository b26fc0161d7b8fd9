//! Typed configuration: TOML in, a [`Config`] of plain data out. A leaf: it imports nothing
//! from the rest of the gate.
//!
//! The file is read in two steps (the sozu habit): TOML is parsed into a raw table, then
//! every section is read key by key into typed values, so that *every* problem — an
//! unknown key (a typo must never silently weaken a check), a wrong type, a value out of
//! range, an unreadable key file — is collected and reported at once, each naming its key.
//! Turning the data into runtime objects (keys, TLS configs, the replay store) is
//! `app::App::build`'s job, which collects its errors the same way.

mod admin;
mod algorithm;
mod gate;
mod idp;
mod listen;
mod provider;
mod reader;
mod replay;
mod upstream;

use std::path::Path;

use toml::Table;

pub use admin::AdminConfig;
pub use algorithm::{Algorithm, Family};
pub use gate::{GateConfig, GateMode};
pub use idp::{IdpAlg, IdpConfig, JwksSource};
pub use listen::{ListenConfig, ListenTls, TlsFiles};
pub use provider::{read_secret_file, ProviderConfig, Secret, SecretSource};
pub use replay::{EvictionCheck, RedisSettings, ReplayConfig, StoreKind};
pub use upstream::{UpstreamConfig, UpstreamTls};

/// A configuration read from TOML. Construct with [`Config::from_toml_str`] or [`Config::load`].
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: ListenConfig,
    pub admin: AdminConfig,
    pub upstream: UpstreamConfig,
    pub provider: ProviderConfig,
    pub gate: GateConfig,
    pub replay: ReplayConfig,
    /// `[idp]`: tokens from an external identity provider, verified with its JWKS.
    pub idp: Option<IdpConfig>,
    /// Things worth telling the operator that are not errors (`jwt-gate check` prints them).
    pub warnings: Vec<String>,
}

/// Every problem found in a configuration, one line each.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigErrors(pub Vec<String>);

impl Config {
    /// How far ahead an iat may lie: `max_future_skew`, bounded by `valid_within` because
    /// GitLab's own window (`|now - iat| <= valid_within`) is symmetric.
    pub fn future_skew(&self) -> u64 {
        self.gate.max_future_skew.min(self.provider.valid_within)
    }

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
            .map_err(|e: toml::de::Error| ConfigErrors(vec![syntax_error(text, &e)]))?;
        let mut errs = Vec::new();
        let mut warnings = Vec::new();
        let mut top = reader::Section::new("", &root, &mut errs);
        let listen_t = top.table("listen");
        let admin_t = top.table("admin");
        let upstream_t = top.table("upstream");
        let provider_t = top.table("provider");
        let gate_t = top.table("gate");
        let replay_t = top.table("replay");
        let idp_t = top.raw("idp").cloned();
        top.finish();

        // every section is read even when another failed, so that all errors show at once
        let listen = listen::read(&listen_t, base, &mut errs);
        let admin = admin::read(&admin_t, &mut errs);
        let upstream = upstream::read(&upstream_t, base, &mut errs);
        let gate_raw = gate::read(&gate_t, &mut errs);
        let provider = provider::read(&provider_t, base, &mut errs);
        let replay = replay::read(&replay_t, base, &mut errs);
        let gate = gate::finish(gate_raw, &provider, &mut errs);
        let idp = match idp_t {
            None => None,
            Some(toml::Value::Table(t)) => idp::read(&t, base, &provider, &mut errs),
            Some(other) => {
                errs.push(format!("idp: expected a table, found {}", other.type_str()));
                None
            }
        };
        // port 0 (any free port) cannot clash
        if admin
            .addr
            .is_some_and(|a| a == listen.addr && a.port() != 0)
        {
            errs.push("admin.addr: must differ from listen.addr (keep /metrics and /readyz off the public listener)".into());
        }
        if !errs.is_empty() {
            return Err(ConfigErrors(errs));
        }
        for net in &listen.trusted_proxies {
            if net.prefix_len() < if net.addr().is_ipv4() { 24 } else { 64 } {
                warnings.push(format!(
                    "listen.trusted_proxies: {net} is a wide range: every host in it may claim any client address (X-Forwarded-For); list the proxies themselves"
                ));
            }
        }
        if !gate.callback_path.ends_with(gate::DEFAULT_CALLBACK_PATH) {
            warnings.push(format!(
                "gate.callback_path {:?} is not OmniAuth's default shape (…/users/auth/jwt/callback): make sure it is exactly where GitLab serves the JWT callback (args.callback_path, relative URL root); a callback elsewhere is refused only when it ends in /users/auth/jwt/callback",
                gate.callback_path
            ));
        }
        if gate.mode == GateMode::Report {
            warnings.push("gate.mode = \"report\": callbacks the gate would refuse are forwarded to GitLab anyway (logged and counted as would_refuse); nothing is enforced until mode = \"enforce\"".into());
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
            idp,
            warnings,
        })
    }
}

/// A TOML syntax error by line and column, without the offending line: it may hold an
/// inline secret, and this message is printed and logged.
fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    let at = e.span().map(|span| {
        let before = &text.as_bytes()[..span.start.min(text.len())];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let col = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
        format!(" at line {line}, column {col}")
    });
    format!("TOML syntax{}: {}", at.unwrap_or_default(), e.message())
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
    fn errors_of_every_section_and_the_listener_clash_come_together() {
        // a broken provider must not hide the gate's header checks or the address clash
        let text = "[listen]\naddr = \"127.0.0.1:9000\"\n[admin]\naddr = \"127.0.0.1:9000\"\n\
                    [upstream]\nurl = \"http://127.0.0.1:1\"\n\
                    [provider]\nalgorithm = \"nope\"\ninfo_map = { user = \"sub\" }\n";
        let all = Config::from_toml_str(text).unwrap_err().0.join("\n");
        for needle in [
            "provider.algorithm",
            "provider.secret: required",
            "same header as the uid",
            "admin.addr: must differ",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn a_wide_trusted_range_is_warned_about_and_a_proxy_is_not() {
        let wide = format!(
            "{}[listen]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.1.2.3\"]\n",
            minimal()
        );
        let c = Config::from_toml_str(&wide).expect("valid");
        let w: Vec<&String> = c
            .warnings
            .iter()
            .filter(|w| w.contains("wide range"))
            .collect();
        assert_eq!(w.len(), 1, "{:?}", c.warnings);
        assert!(w[0].contains("10.0.0.0/8"));
    }

    #[test]
    fn a_syntax_error_names_the_place_but_never_the_line() {
        let text = "[provider]\nsecret = \"hunter2-very-secret-value\" oops\n";
        let e = Config::from_toml_str(text).unwrap_err().0.join("\n");
        assert!(e.contains("line 2"), "{e}");
        assert!(!e.contains("hunter2"), "the secret leaked: {e}");
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
        assert_eq!(c.provider.secret.0, SECRET.as_bytes());
        // two newlines: only one is dropped
        std::fs::write(&f, format!("{SECRET}\n\n")).unwrap();
        let c = Config::from_toml_str(&text).expect("valid");
        assert_eq!(c.provider.secret.0, format!("{SECRET}\n").as_bytes());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
