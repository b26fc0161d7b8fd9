//! TLS with rustls and the aws-lc-rs provider: the server side (certificate, key, optional
//! client CA, ALPN h2 and http/1.1), reloaded when its files change; and the client side for
//! https upstreams.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use aws_lc_rs::digest;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The process-wide provider: aws-lc-rs, installed explicitly so that a `ring` feature
/// enabled by some dependency can never make a config builder panic over an ambiguous
/// default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Install aws-lc-rs as the process default (idempotent).
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Files of the public listener's TLS.
#[derive(Debug, Clone)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl ServerFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut v = vec![self.cert.as_path(), self.key.as_path()];
        if let Some(ca) = &self.client_ca {
            v.push(ca);
        }
        v
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn certs_from_pem(pem: &[u8], what: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", what.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", what.display()));
    }
    Ok(certs)
}

fn key_from_pem(pem: &[u8], what: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| format!("{}: not a PEM private key: {e}", what.display()))
}

fn roots_from(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(&read(path)?, path)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// Build the server config from its files: TLS 1.2 and 1.3, ALPN h2 then http/1.1, the
/// certificate checked against its key, and client certificates required when a CA is set.
pub fn server_config(files: &ServerFiles) -> Result<ServerConfig, String> {
    let provider = provider();
    let certs = certs_from_pem(&read(&files.cert)?, &files.cert)?;
    let key = key_from_pem(&read(&files.key)?, &files.key)?;
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| format!("{}: unusable private key: {e}", files.key.display()))?;
    let certified = rustls::sign::CertifiedKey::new(certs.clone(), signing);
    certified.keys_match().map_err(|e| {
        format!(
            "{} does not match {}: {e}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots_from(ca)?), provider)
                    .build()
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The live server TLS config, swapped whole when its files change.
pub struct ServerTls {
    files: ServerFiles,
    current: RwLock<Arc<ServerConfig>>,
    digest: Mutex<Vec<u8>>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
}

/// SHA-256 over the contents of `paths` (a missing file counts as a marker): what the
/// reloaders compare to decide whether anything changed.
pub(crate) fn files_digest(paths: &[&Path]) -> Vec<u8> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in paths {
        match std::fs::read(p) {
            Ok(b) => {
                ctx.update(&(b.len() as u64).to_be_bytes());
                ctx.update(&b);
            }
            Err(_) => ctx.update(b"\0missing"),
        }
    }
    ctx.finish().as_ref().to_vec()
}

impl ServerTls {
    pub fn new(files: ServerFiles) -> Result<ServerTls, String> {
        let cfg = server_config(&files)?;
        let d = files_digest(&files.paths());
        Ok(ServerTls {
            files,
            current: RwLock::new(Arc::new(cfg)),
            digest: Mutex::new(d),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        })
    }

    /// The config for a new handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Re-read the files; rebuild when their contents changed (or `force`). A config that
    /// fails to build keeps the last good one. Returns `None` when nothing changed.
    pub fn reload_if_changed(&self, force: bool) -> Option<Result<(), String>> {
        let d = files_digest(&self.files.paths());
        {
            let last = self.digest.lock().unwrap_or_else(|p| p.into_inner());
            if !force && *last == d {
                return None;
            }
        }
        // remember the attempt either way, so a broken file is reported once, not every poll
        *self.digest.lock().unwrap_or_else(|p| p.into_inner()) = d;
        match server_config(&self.files) {
            Ok(cfg) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(cfg);
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                Some(Ok(()))
            }
            Err(e) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                Some(Err(e))
            }
        }
    }
}

/// Client TLS for an https upstream: system roots, or only `ca` when given; an optional
/// client certificate. ALPN is left empty: hyper-rustls sets it from the HTTP versions
/// enabled on the connector (and panics if it was set before).
pub fn client_config(
    ca: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> Result<ClientConfig, String> {
    let roots = match ca {
        Some(ca) => roots_from(ca)?,
        None => {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err("no system CA certificates found; set upstream.ca".into());
            }
            roots
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let certs = certs_from_pem(&read(cert)?, cert)?;
            let key = key_from_pem(&read(key)?, key)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("{}: {e}", cert.display()))
        }
    }
}

/// Make a development CA and a server certificate for `localhost`, `127.0.0.1` and `::1`
/// signed by it (and a client certificate, for trying `client_ca`). Writes PEM files into
/// `dir`: ca.crt, ca.key, tls.crt, tls.key, client.crt, client.key.
pub fn write_dev_certs(dir: &Path) -> Result<Vec<PathBuf>, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let err = |e: rcgen::Error| e.to_string();
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.distinguished_name
        .push(DnType::CommonName, "jwt-gate development CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = rcgen::Issuer::new(ca, &ca_key);

    let leaf = |names: Vec<String>,
                purpose: ExtendedKeyUsagePurpose|
     -> Result<(String, String), String> {
        let key = KeyPair::generate().map_err(err)?;
        let mut p = CertificateParams::new(names).map_err(err)?;
        p.extended_key_usages = vec![purpose];
        let cert = p.signed_by(&key, &issuer).map_err(err)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (tls_crt, tls_key) = leaf(
        vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (cl_crt, cl_key) = leaf(
        vec!["jwt-gate-client".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    let files = [
        ("ca.crt", ca_cert.pem()),
        ("ca.key", ca_key.serialize_pem()),
        ("tls.crt", tls_crt),
        ("tls.key", tls_key),
        ("client.crt", cl_crt),
        ("client.key", cl_key),
    ];
    let mut out = Vec::new();
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        out.push(p);
    }
    Ok(out)
}
