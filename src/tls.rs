//! TLS with rustls and the aws-lc-rs provider: the server side (certificate, key, optional
//! client CA, ALPN h2 and http/1.1), reloaded when its files change; and the client side for
//! https upstreams.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};

use std::sync::{Arc, RwLock};

pub use crate::config::TlsFiles as ServerFiles;
use crate::reload::FileWatch;
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

/// A certificate and its key, checked against each other.
fn certified_key(
    provider: &CryptoProvider,
    cert: &Path,
    key: &Path,
) -> Result<rustls::sign::CertifiedKey, String> {
    let certs = certs_from_pem(&read(cert)?, cert)?;
    let der = key_from_pem(&read(key)?, key)?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("{}: unusable private key: {e}", key.display()))?;
    let certified = rustls::sign::CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .map_err(|e| format!("{} does not match {}: {e}", cert.display(), key.display()))?;
    Ok(certified)
}

/// Picks the certificate by the client's SNI: the first further certificate valid for the
/// name (its SANs, wildcards included, checked as a client would), else the default.
#[derive(Debug)]
struct BySni {
    default: Arc<rustls::sign::CertifiedKey>,
    more: Vec<Arc<rustls::sign::CertifiedKey>>,
}

impl BySni {
    fn valid_for(ck: &rustls::sign::CertifiedKey, name: &str) -> bool {
        let Ok(name) = rustls::pki_types::ServerName::try_from(name) else {
            return false;
        };
        ck.end_entity_cert()
            .ok()
            .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
            .is_some_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
    }
}

impl rustls::server::ResolvesServerCert for BySni {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let chosen = hello
            .server_name()
            .and_then(|name| self.more.iter().find(|ck| Self::valid_for(ck, name)));
        Some(chosen.unwrap_or(&self.default).clone())
    }
}

/// Build the server config from its files: TLS 1.2 and 1.3, ALPN h2 then http/1.1, each
/// certificate checked against its key, picked by SNI when there are several, and client
/// certificates required when a CA is set.
pub fn server_config(files: &ServerFiles) -> Result<ServerConfig, String> {
    let provider = provider();
    let default = Arc::new(certified_key(&provider, &files.cert, &files.key)?);
    let mut more = Vec::new();
    for (cert, key) in &files.more {
        more.push(Arc::new(certified_key(&provider, cert, key)?));
    }
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
    let mut cfg = builder.with_cert_resolver(Arc::new(BySni { default, more }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The live server TLS config, swapped whole when its files change.
pub struct ServerTls {
    files: ServerFiles,
    current: RwLock<Arc<ServerConfig>>,
    watch: FileWatch,
    /// notAfter of the serving certificate (unix seconds), 0 when it could not be read.
    not_after: AtomicI64,
}

impl ServerTls {
    pub fn new(files: ServerFiles) -> Result<ServerTls, String> {
        let cfg = server_config(&files)?;
        let watch = FileWatch::new(files.paths().into_iter().map(Path::to_path_buf).collect());
        Ok(ServerTls {
            current: RwLock::new(Arc::new(cfg)),
            watch,
            not_after: AtomicI64::new(leaf_not_after(&files.cert).unwrap_or(0)),
            files,
        })
    }

    /// When the serving certificate expires (unix seconds), if its notAfter could be read.
    pub fn not_after(&self) -> Option<i64> {
        Some(self.not_after.load(Ordering::Relaxed)).filter(|&t| t != 0)
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
        if !self.watch.changed(force) {
            return None;
        }
        let cfg = match server_config(&self.files) {
            Ok(cfg) => cfg,
            Err(e) => return Some(Err(e)),
        };
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(cfg);
        self.not_after.store(
            leaf_not_after(&self.files.cert).unwrap_or(0),
            Ordering::Relaxed,
        );
        Some(Ok(()))
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

/// notAfter of the first certificate in a PEM file.
fn leaf_not_after(path: &Path) -> Option<i64> {
    let pem = std::fs::read(path).ok()?;
    let certs = certs_from_pem(&pem, path).ok()?;
    cert_not_after(certs.first()?.as_ref())
}

/// One DER element: (tag, contents, rest).
fn der_next(d: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, d) = d.split_first()?;
    let (&first, mut d) = d.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || d.len() < n {
            return None;
        }
        let len = d[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        d = &d[n..];
        len
    };
    (d.len() >= len).then(|| (tag, &d[..len], &d[len..]))
}

/// notAfter (unix seconds) of a DER X.509 certificate:
/// Certificate → tbsCertificate → [version] serial signature issuer validity{notBefore notAfter}.
pub fn cert_not_after(der: &[u8]) -> Option<i64> {
    let (_, cert, _) = der_next(der)?;
    let (_, tbs, _) = der_next(cert)?;
    let (tag, _, mut rest) = der_next(tbs)?;
    if tag == 0xa0 {
        rest = der_next(rest)?.2; // the version was explicit: skip the serial too
    }
    let rest = der_next(rest)?.2; // signature algorithm
    let rest = der_next(rest)?.2; // issuer
    let (_, validity, _) = der_next(rest)?;
    let (_, _, after) = der_next(validity)?;
    let (tag, time, _) = der_next(after)?;
    let s = std::str::from_utf8(time).ok()?;
    let digits = s.strip_suffix('Z')?;
    // digits only: the slicing below is by byte index, and the file is the operator's
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // UTCTime YYMMDDHHMMSS (years 1950–2049, RFC 5280) or GeneralizedTime YYYYMMDDHHMMSS
    let (year, rest) = match tag {
        0x17 if digits.len() == 12 => {
            let yy: i64 = digits[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &digits[2..])
        }
        0x18 if digits.len() == 14 => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, h, m, sec) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod expiry_tests {
    use super::*;

    fn cert_with_not_after(year: i32, month: u8, day: u8) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["gate.test".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, month, day);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_not_after_in_both_time_forms() {
        // 2030 is a UTCTime, 2051 a GeneralizedTime (RFC 5280 §4.1.2.5)
        assert_eq!(
            cert_not_after(&cert_with_not_after(2030, 6, 1)),
            Some(1_906_502_400)
        );
        assert_eq!(
            cert_not_after(&cert_with_not_after(2051, 1, 2)),
            Some(2_556_230_400)
        );
    }

    #[test]
    fn garbage_is_none() {
        assert_eq!(cert_not_after(b""), None);
        assert_eq!(cert_not_after(&[0x30, 0x82, 0xff]), None);
        let good = cert_with_not_after(2030, 6, 1);
        assert_eq!(cert_not_after(&good[..good.len() / 2]), None);
    }

    #[test]
    fn a_non_ascii_date_is_none_not_a_panic() {
        // notAfter 2030-06-01 is the UTCTime "300601000000Z"; put a two-byte "é" where the
        // year's digits were: the byte-indexed slicing it guards against would cut the
        // character in half
        let mut der = cert_with_not_after(2030, 6, 1);
        let at = der
            .windows(13)
            .position(|w| w == b"300601000000Z")
            .expect("the notAfter time");
        der[at..at + 2].copy_from_slice("é".as_bytes());
        assert_eq!(cert_not_after(&der), None);
    }

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }
}
