//! Startup: a [`Config`] (plain data) becomes the runtime objects a request needs — the
//! verification key, the TLS configs, the replay store, the upstream client — with every
//! error collected by key, as the config reader does. `jwt-gate check` runs this too, so
//! `check` and `run` can never disagree.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use crate::config::{read_secret_file, Config, SecretSource, StoreKind};
use crate::idp::IdpKeys;
use crate::login::keys::VerifyKey;
use crate::login::{idp::IdpVerifier, mint::Minter, IdpSide, LoginGate};
use crate::proxy::{Front, IdentityHeaders, Proxy};
use crate::reload::FileWatch;
use crate::replay::memory::MemoryStore;
use crate::replay::redis::RedisStore;
use crate::replay::ReplayStore;
use crate::telemetry::metrics::{ReloadKind, METRICS};
use crate::tls::ServerTls;

/// Every problem found while building the runtime objects, one line each, by key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct StartupErrors(pub Vec<String>);

/// Everything a request needs, shared by all connections.
pub struct App {
    pub config: Arc<Config>,
    pub proxy: Proxy,
    pub gate: LoginGate,
    pub store: Arc<dyn ReplayStore>,
    pub tls: Option<Arc<ServerTls>>,
    /// `Strict-Transport-Security` for every response, with TLS and `hsts_max_age > 0`.
    pub hsts: Option<HeaderValue>,
    /// Unix time (whole seconds) at which this app was built.
    pub started_at: i64,
    /// With `reject_issued_before_start`: tokens whose iat lies before this are refused.
    pub not_issued_before: Option<i64>,
    /// Things worth telling the operator: the config's, then the key's.
    pub warnings: Vec<String>,
    key_file: Option<KeyFile>,
    /// `[idp]`: the IdP's key set, kept current in the background.
    pub idp_keys: Option<Arc<IdpKeys>>,
}

/// `provider.secret_file`, watched for changes.
struct KeyFile {
    path: PathBuf,
    watch: FileWatch,
}

/// The verification key from `[provider]`, and notes about it for `check`. The error
/// names its key (`provider.secret` or `provider.secret_file`), never the material.
pub fn verify_key(cfg: &Config) -> Result<(VerifyKey, Vec<String>), String> {
    let p = &cfg.provider;
    VerifyKey::load(p.algorithm, &p.secret.0, cfg.gate.allow_weak_secret)
        .map_err(|e| format!("{}: {e}", p.secret_source.key()))
}

/// `[idp]`: the key set, the minting key (proved to match `[provider]`'s), the verifier.
fn idp_side(cfg: &Config, key: &VerifyKey) -> Result<Option<(IdpSide, Arc<IdpKeys>)>, String> {
    let Some(i) = &cfg.idp else {
        return Ok(None);
    };
    let keys = Arc::new(IdpKeys::new(i)?);
    let pem = match &i.mint_key_file {
        Some(p) => {
            Some(std::fs::read(p).map_err(|e| format!("idp.mint_key_file: {}: {e}", p.display()))?)
        }
        None => None,
    };
    let minter =
        Minter::new(cfg, pem.as_deref(), key).map_err(|e| format!("idp.mint_key_file: {e}"))?;
    let side = IdpSide {
        verifier: IdpVerifier::new(i),
        keys: keys.clone(),
        minter,
        callback: i.callback,
        assertion_header: i.assertion_header.clone(),
        trusted_peers: i.trusted_peers.clone(),
    };
    Ok(Some((side, keys)))
}

fn upstream_tls(cfg: &Config) -> Result<rustls::ClientConfig, String> {
    match &cfg.upstream.tls {
        Some(t) => {
            let pair = t
                .client_cert
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path()));
            crate::tls::client_config(t.ca.as_deref(), pair)
                .map_err(|e| format!("upstream.ca: {e}"))
        }
        // never used for http:// upstreams, but the connector wants a config
        None => rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            })
            .map_err(|e| format!("upstream: {e}")),
    }
}

fn replay_store(cfg: &Config) -> Result<Arc<dyn ReplayStore>, String> {
    match (&cfg.replay.store, &cfg.replay.redis) {
        (StoreKind::Redis, Some(settings)) => {
            let store: Arc<dyn ReplayStore> = RedisStore::new(settings)?;
            Ok(store)
        }
        _ => Ok(MemoryStore::new(cfg.replay.max_entries)),
    }
}

fn identity_headers(cfg: &Config) -> IdentityHeaders {
    let mut names = vec![&cfg.gate.user_header];
    names.extend(cfg.gate.info_headers.iter().map(|(h, _)| h));
    IdentityHeaders::new(&cfg.gate.identity_header_prefix, &names)
}

/// The first iat a restarted gate may accept without reopening a replay window: the next
/// whole second. Every token the gate forwarded before was forwarded no earlier than its
/// iat (a token dated ahead of the clock waits for it: `login`), so a token used before this
/// start has an iat of this second or earlier. `server::start` waits for that second before
/// it serves, so no token issued after the gate is up is refused.
fn first_unusable_before(started_at: i64) -> i64 {
    started_at.saturating_add(1)
}

/// Keep the `Ok` of `r`, or add its error to `errs`.
fn collect<T>(r: Result<T, String>, errs: &mut Vec<String>) -> Option<T> {
    r.map_err(|e| errs.push(e)).ok()
}

impl App {
    /// Build every runtime object; report every error at once. Starts nothing: see
    /// [`App::start_background`].
    pub fn build(cfg: Config) -> Result<App, StartupErrors> {
        crate::tls::install_default_provider();
        let mut errs = Vec::new();
        let key = collect(verify_key(&cfg), &mut errs);
        let tls = match &cfg.listen.tls {
            Some(t) => collect(
                ServerTls::new(t.files.clone()).map_err(|e| format!("listen.tls: {e}")),
                &mut errs,
            ),
            None => None,
        };
        let client_tls = collect(upstream_tls(&cfg), &mut errs);
        let store = collect(replay_store(&cfg), &mut errs);
        let idp = key
            .as_ref()
            .and_then(|(k, _)| collect(idp_side(&cfg, k), &mut errs));
        let (Some((key, key_notes)), Some(client_tls), Some(store), Some(idp)) =
            (key, client_tls, store, idp)
        else {
            return Err(StartupErrors(errs));
        };
        if !errs.is_empty() {
            return Err(StartupErrors(errs));
        }
        let started_at = crate::clock::unix_now();
        let not_issued_before = cfg
            .replay
            .reject_issued_before_start
            .then(|| first_unusable_before(started_at));
        let front = Front {
            trusted_proxies: cfg.listen.trusted_proxies.clone(),
            tls: cfg.listen.tls.is_some(),
        };
        let proxy = Proxy::new(&cfg.upstream, client_tls, front, identity_headers(&cfg));
        let gate = LoginGate::new(&cfg, key, store.clone(), not_issued_before);
        let (gate, idp_keys) = match idp {
            Some((side, keys)) => (gate.with_idp(side), Some(keys)),
            None => (gate, None),
        };
        let hsts = cfg
            .listen
            .tls
            .as_ref()
            .filter(|t| t.hsts_max_age > 0)
            .and_then(|t| HeaderValue::from_str(&format!("max-age={}", t.hsts_max_age)).ok());
        let key_file = match &cfg.provider.secret_source {
            SecretSource::File(path) => Some(KeyFile {
                path: path.clone(),
                watch: FileWatch::new(vec![path.clone()]),
            }),
            SecretSource::Inline => None,
        };
        let mut warnings = cfg.warnings.clone();
        warnings.extend(key_notes);
        Ok(App {
            config: Arc::new(cfg),
            proxy,
            gate,
            store,
            tls: tls.map(Arc::new),
            hsts,
            started_at,
            not_issued_before,
            warnings,
            key_file,
            idp_keys,
        })
    }

    /// Start what runs beside the requests: the memory store's sweeper and the file
    /// watcher. Needs a tokio runtime.
    pub fn start_background(self: &Arc<Self>) {
        self.store
            .clone()
            .start_maintenance(self.config.replay.sweep_interval);
        if let Some(keys) = &self.idp_keys {
            keys.start_background(self.config.gate.key_reload_interval);
        }
        if self.tls.is_some() || self.key_file.is_some() {
            let every = self.reload_interval();
            crate::clock::spawn_periodic(Arc::downgrade(self), every, |app: Arc<App>| async move {
                // file reads are small and rare, but keep them off the request workers
                let _ = tokio::task::spawn_blocking(move || app.reload(false)).await;
            });
        }
    }

    /// How often watched files are polled: the shorter of the TLS and key intervals.
    fn reload_interval(&self) -> Duration {
        let key = self.config.gate.key_reload_interval;
        self.config
            .listen
            .tls
            .as_ref()
            .map_or(key, |t| t.reload_interval.min(key))
    }

    /// Re-read the TLS files and the JWT key file; apply what changed and parses. With
    /// `force` (SIGHUP), rebuild even when nothing seems to have changed. A file that fails
    /// to parse keeps the last good version and is logged.
    pub fn reload(&self, force: bool) {
        if let Some(tls) = &self.tls {
            if let Some(result) = tls.reload_if_changed(force) {
                report_reload(ReloadKind::TlsCertificate, "TLS certificate", None, result);
            }
        }
        if let Some(k) = &self.key_file {
            if k.watch.changed(force) {
                let result = self.reload_key(&k.path).map(|key| self.gate.set_key(key));
                report_reload(
                    ReloadKind::JwtKey,
                    "JWT verification key",
                    Some(&k.path),
                    result,
                );
            }
        }
    }

    fn reload_key(&self, path: &std::path::Path) -> Result<VerifyKey, String> {
        let p = &self.config.provider;
        let material = read_secret_file(path, Some(p.algorithm)).map_err(|e| e.to_string())?;
        VerifyKey::load(p.algorithm, &material, self.config.gate.allow_weak_secret).map(|(k, _)| k)
    }
}

/// One place that counts and logs reloads, of the certificate and of the key alike.
fn report_reload(
    kind: ReloadKind,
    what: &str,
    path: Option<&std::path::Path>,
    result: Result<(), String>,
) {
    METRICS.reload(kind, result.is_ok());
    let path = path.map(|p| p.display().to_string()).unwrap_or_default();
    match result {
        Ok(()) => tracing::info!(target: "jwt_gate::reload", %path, "{what} reloaded"),
        Err(e) => {
            tracing::error!(target: "jwt_gate::reload", %path, error = %e, "{what} reload failed; keeping the previous one")
        }
    }
}
