//! `[provider]`: GitLab's own JWT provider settings (omniauth `args`), same names, same
//! meaning. The key material is read here as bytes; `app` turns it into a verification key.

use std::path::{Path, PathBuf};

use toml::Table;

use super::algorithm::{Algorithm, Family};
use super::reader::Section;

pub const DEFAULT_ALGORITHM: Algorithm = Algorithm::HS256;
pub const DEFAULT_UID_CLAIM: &str = "email";
pub const DEFAULT_REQUIRED_CLAIMS: [&str; 2] = ["name", "email"];
/// GitLab skips the iat window when `valid_within` is unset; the gate never does.
pub const DEFAULT_VALID_WITHIN: u64 = 300;
/// The text the shipped examples carry where the secret goes.
const PLACEHOLDER: &str = "replace-me";

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub algorithm: Algorithm,
    /// The secret (HS*) or PEM (RS*/ES*) as read; never printed.
    pub secret: Secret,
    pub secret_source: SecretSource,
    pub uid_claim: String,
    pub required_claims: Vec<String>,
    /// `(info key, claim name)`, in a stable order.
    pub info_map: Vec<(String, String)>,
    pub auth_url: Option<String>,
    pub valid_within: u64,
    /// Whether `valid_within` was set in the file (GitLab's own default is "off").
    pub valid_within_explicit: bool,
    /// Gate-only: the `iss` a token must carry (GitLab checks none).
    pub issuer: Option<String>,
    /// Gate-only: a token's `aud` (a string or a list) must name one of these (GitLab
    /// checks none). Empty: no audience check.
    pub audience: Vec<String>,
}

/// Key material, redacted in every `Debug` output.
#[derive(Clone, Default)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

#[derive(Debug, Clone)]
pub enum SecretSource {
    Inline,
    File(PathBuf),
}

impl SecretSource {
    /// The config key an error about the key material names.
    pub fn key(&self) -> &'static str {
        match self {
            SecretSource::Inline => "provider.secret",
            SecretSource::File(_) => "provider.secret_file",
        }
    }
}

/// Read `provider.secret_file`. For HS* secrets, exactly one trailing newline is dropped: a
/// file made with `echo` or `kubectl create secret --from-file` ends in a newline that
/// GitLab's inline `secret` string never has.
pub fn read_secret_file(path: &Path, alg: Option<Algorithm>) -> std::io::Result<Vec<u8>> {
    let mut b = std::fs::read(path)?;
    if alg.is_some_and(|a| a.family() == Family::Hmac) {
        if b.ends_with(b"\r\n") {
            b.truncate(b.len() - 2);
        } else if b.ends_with(b"\n") {
            b.truncate(b.len() - 1);
        }
    }
    Ok(b)
}

pub(crate) fn read(t: &Table, base: &Path, errs: &mut Vec<String>) -> ProviderConfig {
    let mut s = Section::new("provider", t, errs);
    let alg_name: String = s.get("algorithm", DEFAULT_ALGORITHM.name().to_string());
    let algorithm = Algorithm::from_name(&alg_name);
    if algorithm.is_none() {
        s.err(
            "algorithm",
            format!(
                "unsupported {alg_name:?} (expected one of {})",
                Algorithm::ALL.map(|a| a.name()).join(", ")
            ),
        );
    }
    let secret: Option<String> = s.opt("secret");
    let secret_file: Option<String> = s.opt("secret_file");
    let uid_claim: String = s.get("uid_claim", DEFAULT_UID_CLAIM.to_string());
    let required_claims: Vec<String> = s.get(
        "required_claims",
        DEFAULT_REQUIRED_CLAIMS.map(String::from).to_vec(),
    );
    let auth_url: Option<String> = s.opt("auth_url");
    let issuer: Option<String> = s.opt("issuer");
    if issuer.as_deref() == Some("") {
        s.err(
            "issuer",
            "must not be empty (leave it out for no issuer check)",
        );
    }
    let audience: Vec<String> = s.get("audience", Vec::new());
    if audience.iter().any(String::is_empty) {
        s.err("audience", "an empty audience would match nothing");
    }
    let valid_within_raw: Option<i64> = s.opt("valid_within");
    let valid_within = match valid_within_raw {
        None => DEFAULT_VALID_WITHIN,
        Some(v) if (1..=86_400).contains(&v) => v as u64,
        Some(_) => {
            s.err("valid_within", "must be between 1 and 86400 seconds");
            DEFAULT_VALID_WITHIN
        }
    };
    if uid_claim.is_empty() {
        s.err("uid_claim", "must not be empty");
    }
    let info_map = s.claim_map("info_map", &[("name", "name"), ("email", "email")]);
    let (secret, secret_source) = match (secret, secret_file) {
        (Some(_), Some(_)) => {
            s.err("secret", "set either secret or secret_file, not both");
            (Secret::default(), SecretSource::Inline)
        }
        (None, None) => {
            s.err("secret", "required (or secret_file)");
            (Secret::default(), SecretSource::Inline)
        }
        (Some(v), None) => (Secret(v.into_bytes()), SecretSource::Inline),
        (None, Some(f)) => {
            let p = base.join(&f);
            match read_secret_file(&p, algorithm) {
                Ok(b) => (Secret(b), SecretSource::File(p)),
                Err(e) => {
                    s.err("secret_file", format!("{}: {e}", p.display()));
                    (Secret::default(), SecretSource::File(p))
                }
            }
        }
    };
    // the shipped examples' placeholder: a gate with it would refuse every real login while
    // looking healthy
    if secret
        .0
        .windows(PLACEHOLDER.len())
        .any(|w| w == PLACEHOLDER.as_bytes())
    {
        let key = match secret_source {
            SecretSource::Inline => "secret",
            SecretSource::File(_) => "secret_file",
        };
        s.err(key, "is still the example's placeholder: put the identity provider's secret or public key here");
    }
    s.finish();
    ProviderConfig {
        algorithm: algorithm.unwrap_or(DEFAULT_ALGORITHM),
        secret,
        secret_source,
        uid_claim,
        required_claims,
        info_map,
        auth_url,
        valid_within,
        valid_within_explicit: valid_within_raw.is_some(),
        issuer,
        audience,
    }
}
