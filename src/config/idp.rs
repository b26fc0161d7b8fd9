//! `[idp]`: an external identity provider whose tokens the gate verifies with the IdP's
//! own keys (a JWKS), and for which it mints GitLab's token. Absent: the gate verifies
//! GitLab-shaped tokens with the `[provider]` key, as before.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use toml::{Table, Value};

use super::provider::ProviderConfig;
use super::reader::Section;

/// The IdP algorithms the gate verifies: never `none`, never an HMAC (a public key is not
/// a secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(clippy::upper_case_acronyms)]
pub enum IdpAlg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    ES512,
    EdDSA,
}

impl IdpAlg {
    pub const ALL: [IdpAlg; 10] = [
        IdpAlg::RS256,
        IdpAlg::RS384,
        IdpAlg::RS512,
        IdpAlg::PS256,
        IdpAlg::PS384,
        IdpAlg::PS512,
        IdpAlg::ES256,
        IdpAlg::ES384,
        IdpAlg::ES512,
        IdpAlg::EdDSA,
    ];

    pub fn name(self) -> &'static str {
        match self {
            IdpAlg::RS256 => "RS256",
            IdpAlg::RS384 => "RS384",
            IdpAlg::RS512 => "RS512",
            IdpAlg::PS256 => "PS256",
            IdpAlg::PS384 => "PS384",
            IdpAlg::PS512 => "PS512",
            IdpAlg::ES256 => "ES256",
            IdpAlg::ES384 => "ES384",
            IdpAlg::ES512 => "ES512",
            IdpAlg::EdDSA => "EdDSA",
        }
    }

    /// Exact, case-sensitive (RFC 7518 §3.1).
    pub fn from_name(name: &str) -> Option<IdpAlg> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The JWK `kty` a key for this algorithm has.
    pub fn kty(self) -> &'static str {
        match self {
            IdpAlg::RS256
            | IdpAlg::RS384
            | IdpAlg::RS512
            | IdpAlg::PS256
            | IdpAlg::PS384
            | IdpAlg::PS512 => "RSA",
            IdpAlg::ES256 | IdpAlg::ES384 | IdpAlg::ES512 => "EC",
            IdpAlg::EdDSA => "OKP",
        }
    }
}

pub const DEFAULT_SSO_PATH: &str = "/-/jwt-gate/sso";
pub const DEFAULT_LEEWAY: u64 = 30;
pub const DEFAULT_MINT_TTL: u64 = 10;
pub const MAX_MINT_TTL: u64 = 60;
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);
pub const DEFAULT_JWKS_MIN_REFRESH: Duration = Duration::from_secs(60);
pub const DEFAULT_JWKS_MAX_REFRESH: Duration = Duration::from_secs(86_400);
pub const DEFAULT_JWKS_MAX_AGE: Duration = Duration::from_secs(3_600);
pub const DEFAULT_JWKS_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_JWKS_MAX_BYTES: u64 = 256 * 1024;
/// An unknown kid refetches the set at most this often.
pub const DEFAULT_UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(30);

/// Where the key set comes from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// HTTPS only; `ca`: trust only this CA (else the system's roots).
    Url { url: http::Uri, ca: Option<PathBuf> },
    /// A local JWKS file, reloaded when it changes.
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct IdpConfig {
    pub jwks: JwksSource,
    pub issuer: String,
    pub audience: Vec<String>,
    pub algorithms: Vec<IdpAlg>,
    pub leeway: i64,
    /// The IdP claim whose value becomes GitLab's uid claim (`provider.uid_claim`).
    pub uid_claim: String,
    /// `(GitLab claim, IdP claim)`: what the minted token carries besides the uid.
    pub claims: Vec<(String, String)>,
    /// The IdP sends its token to the callback (`?jwt=`); the gate swaps in a minted one.
    pub callback: bool,
    /// Header-assertion SSO: the header an identity-aware proxy sets.
    pub assertion_header: Option<HeaderName>,
    pub sso_path: String,
    /// Peers (TCP source addresses) allowed to set the assertion header.
    pub trusted_peers: Vec<IpNet>,
    pub mint_ttl: i64,
    /// RS*/ES* providers: the private key the minted token is signed with.
    pub mint_key_file: Option<PathBuf>,
    pub refresh: Duration,
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    pub max_age: Duration,
    pub fetch_timeout: Duration,
    pub max_bytes: usize,
    pub unknown_kid_interval: Duration,
}

fn read_jwks_source(s: &mut Section, base: &Path) -> Option<JwksSource> {
    let url: Option<String> = s.opt("jwks_url");
    let file: Option<String> = s.opt("jwks_file");
    let ca: Option<String> = s.opt("jwks_ca_file");
    match (url, file) {
        (Some(_), Some(_)) => {
            s.err("jwks_url", "set either jwks_url or jwks_file, not both");
            None
        }
        (None, None) => {
            s.err("jwks_url", "required (or jwks_file)");
            None
        }
        (None, Some(f)) => {
            if ca.is_some() {
                s.err("jwks_ca_file", "only applies to jwks_url");
            }
            Some(JwksSource::File(base.join(f)))
        }
        (Some(u), None) => match u.parse::<http::Uri>() {
            Ok(url) if url.scheme_str() == Some("https") && url.host().is_some() => {
                let ca = ca.map(|c| base.join(c));
                if let Some(c) = ca.as_ref().filter(|c| !c.is_file()) {
                    s.err(
                        "jwks_ca_file",
                        format!("{}: not a readable file", c.display()),
                    );
                }
                Some(JwksSource::Url { url, ca })
            }
            Ok(_) => {
                s.err(
                    "jwks_url",
                    "must be an https:// URL (keys fetched in clear could be swapped)",
                );
                None
            }
            Err(e) => {
                s.err("jwks_url", format!("not a URL: {e}"));
                None
            }
        },
    }
}

fn read_algorithms(s: &mut Section) -> Vec<IdpAlg> {
    let names: Option<Vec<String>> = s.opt("algorithms");
    let Some(names) = names else {
        return IdpAlg::ALL.to_vec();
    };
    let mut algs = Vec::new();
    for n in names {
        match IdpAlg::from_name(&n) {
            Some(a) => algs.push(a),
            None => s.err(
                "algorithms",
                format!(
                    "{n:?} is not accepted (one of {}; never none or an HMAC)",
                    IdpAlg::ALL.map(|a| a.name()).join(", ")
                ),
            ),
        }
    }
    if algs.is_empty() {
        s.err("algorithms", "must name at least one algorithm");
    }
    algs
}

fn read_header(s: &mut Section) -> Option<HeaderName> {
    let name: Option<String> = s.opt("assertion_header");
    let name = name?;
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            s.err("assertion_header", format!("not a header name: {name:?}"));
            None
        }
    }
}

pub(crate) fn read(
    t: &Table,
    base: &Path,
    provider: &ProviderConfig,
    errs: &mut Vec<String>,
) -> Option<IdpConfig> {
    let mut s = Section::new("idp", t, errs);
    let jwks = read_jwks_source(&mut s, base);
    let issuer: String = s.get("issuer", String::new());
    if issuer.is_empty() {
        s.err(
            "issuer",
            "required: the iss the IdP puts in its tokens (without it, any issuer sharing the key set would pass)",
        );
    }
    let audience: Vec<String> = match s.raw("audience").cloned() {
        Some(Value::String(a)) => vec![a],
        Some(v) => v.try_into().unwrap_or_default(),
        None => Vec::new(),
    };
    if audience.is_empty() || audience.iter().any(String::is_empty) {
        s.err(
            "audience",
            "required: the aud the IdP gives GitLab's tokens (a token for another application must not sign in)",
        );
    }
    let algorithms = read_algorithms(&mut s);
    let leeway = s.get("leeway", DEFAULT_LEEWAY as i64);
    if !(0..=300).contains(&leeway) {
        s.err("leeway", "must be between 0 and 300 seconds");
    }
    let uid_claim: String = s.get("uid_claim", "email".to_string());
    let claims = s.claim_map("claims", &[("name", "name"), ("email", "email")]);
    let callback: bool = s.get("callback", true);
    let assertion_header = read_header(&mut s);
    let sso_path: String = s.get("sso_path", DEFAULT_SSO_PATH.to_string());
    if !sso_path.starts_with('/') || sso_path.contains(['?', '#', '%']) {
        s.err("sso_path", "must be a plain absolute path");
    }
    let trusted_peers = s.cidrs("trusted_peers");
    if assertion_header.is_some() && trusted_peers.is_empty() {
        s.err(
            "trusted_peers",
            "required with assertion_header: the addresses of the identity-aware proxy (anyone else could set the header)",
        );
    }
    let mint_ttl = s.positive("mint_ttl", DEFAULT_MINT_TTL, MAX_MINT_TTL) as i64;
    let mint_key_file: Option<String> = s.opt("mint_key_file");
    let mint_key_file = mint_key_file.map(|f| base.join(f));
    let refresh = s.secs("jwks_refresh", DEFAULT_JWKS_REFRESH);
    let min_refresh = s.secs("jwks_min_refresh", DEFAULT_JWKS_MIN_REFRESH);
    let max_refresh = s.secs("jwks_max_refresh", DEFAULT_JWKS_MAX_REFRESH);
    let max_age = s.secs("jwks_max_age", DEFAULT_JWKS_MAX_AGE);
    let fetch_timeout = s.secs("jwks_timeout", DEFAULT_JWKS_TIMEOUT);
    let max_bytes = s.positive("jwks_max_bytes", DEFAULT_JWKS_MAX_BYTES, 16 * 1024 * 1024) as usize;
    let unknown_kid_interval = s.secs("unknown_kid_interval", DEFAULT_UNKNOWN_KID_INTERVAL);
    if min_refresh > max_refresh {
        s.err("jwks_min_refresh", "must not exceed jwks_max_refresh");
    }
    if !callback && assertion_header.is_none() {
        s.err(
            "callback",
            "with callback = false, set assertion_header: otherwise no token can sign in",
        );
    }
    check_claims_cover_gitlab(&mut s, provider, &claims);
    if provider.algorithm.family() != super::Family::Hmac && mint_key_file.is_none() {
        s.err(
            "mint_key_file",
            format!(
                "required with provider.algorithm = {}: the private key whose public half GitLab's JWT provider holds",
                provider.algorithm.name()
            ),
        );
    }
    s.finish();
    Some(IdpConfig {
        jwks: jwks?,
        issuer,
        audience,
        algorithms,
        leeway,
        uid_claim,
        claims,
        callback,
        assertion_header,
        sso_path,
        trusted_peers,
        mint_ttl,
        mint_key_file,
        refresh,
        min_refresh,
        max_refresh,
        max_age,
        fetch_timeout,
        max_bytes,
        unknown_kid_interval,
    })
}

/// Every claim GitLab requires must be in the minted token: the uid claim is, the others
/// must be mapped.
fn check_claims_cover_gitlab(s: &mut Section, p: &ProviderConfig, claims: &[(String, String)]) {
    for req in &p.required_claims {
        if *req != p.uid_claim && !claims.iter().any(|(g, _)| g == req) {
            s.err(
                "claims",
                format!("GitLab requires the claim {req:?} (provider.required_claims): map it, e.g. {req} = \"<IdP claim>\""),
            );
        }
    }
    for (g, _) in claims {
        if ["iat", "exp", "nbf", "jti", "iss", "aud"].contains(&g.as_str()) {
            s.err(
                "claims",
                format!("{g}: the gate sets this claim of the minted token itself"),
            );
        }
    }
}
